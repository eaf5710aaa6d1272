"""plan(): the per-clip policy as a pure function of the clip, its earlier record and the options."""
import pytest

from pipeline.options import resolve
from transforms import plan as policy, sources
from transforms.plan import CVDF, FETCH, LOCAL, MAKE, MISSING, REFRESH, SCAN, SKIP, TREE, flow_to_make, plan
from transforms.records import Clip

CLIP = Clip("val", "zumba", 399, "zumba", "abcdefghijk", 0.0, 10.0, "abcdefghijk_000000_000010", "val.csv", 2, (0, 2))
VIDEO = "videos_val/zumba/abcdefghijk_000000_000010.mp4"
RESIZED = "videos_val_256p_dense_cache/zumba/abcdefghijk_000000_000010.mp4"
FRAMES = "rawframes_val/zumba/abcdefghijk_000000_000010"


def settings(*args, steps="fetch,resize", source="local"):
    extra = ["--video-root", "v"] if source == "local" else []
    return resolve(["--dataset", "kinetics400", "--output", "out", "--steps", steps, "--source", source,
                    *extra, *args])[0]


def made(s, status="ok", **outputs):
    """A record of this run's outputs `outputs` ({kind: path}), made with the options of `s`."""
    params = policy.output_params(s)
    return CLIP.record(status, outputs=outputs, params={k: params[k] for k in outputs})


@pytest.mark.parametrize("source, kind", [("local", LOCAL), ("youtube", FETCH), ("cvdf", CVDF)])
def test_a_new_clip_is_made_from_its_source(source, kind):
    job = plan(CLIP, None, settings(source=source))
    assert (job.action, job.make, job.keep, job.source) == (MAKE, {"video": VIDEO, "resized": RESIZED}, {}, kind)
    assert (job.clip, job.prev, job.trust, job.reason) == (CLIP, None, "", "")


def test_a_complete_record_is_skipped_and_an_incomplete_one_keeps_what_it_has():
    s = settings()
    assert plan(CLIP, made(s, video=VIDEO, resized=RESIZED), s).action == SKIP
    assert plan(CLIP, made(s, "exists", video=VIDEO, resized=RESIZED), s).action == SKIP
    job = plan(CLIP, made(s, video=VIDEO), s)
    assert (job.action, job.keep, job.make, job.source) == (MAKE, {"video": VIDEO}, {"resized": RESIZED}, TREE)
    job = plan(CLIP, made(s, video=VIDEO), settings("--steps", "fetch,resize,rgb"))
    assert (job.make, job.source) == ({"resized": RESIZED, "rgb": FRAMES}, TREE)


def test_an_output_made_with_other_options_or_elsewhere_is_made_again():
    s = settings()
    job = plan(CLIP, made(s, video=VIDEO, resized=RESIZED), settings("--trim-crf", "30"))
    assert (job.keep, job.make, job.source) == ({"resized": RESIZED}, {"video": VIDEO}, LOCAL)
    flat = settings("--layout", "flat")
    job = plan(CLIP, made(s, video=VIDEO, resized=RESIZED), flat)
    assert job.keep == {} and job.make == {"video": "videos_val/abcdefghijk_000000_000010.mp4",
                                           "resized": "videos_val_256p_dense_cache/abcdefghijk_000000_000010.mp4"}
    unsaid = CLIP.record("ok", outputs={"video": VIDEO, "resized": RESIZED})  # an old record: no params
    assert plan(CLIP, unsaid, settings("--trim-crf", "30")).action == SKIP


def test_bad_records_and_redo_make_everything():
    s = settings()
    for prev in (made(s, "corrupt", video=VIDEO, resized=RESIZED), CLIP.record("network"), None):
        job = plan(CLIP, prev, s)
        assert (job.action, job.keep, sorted(job.make), job.source) == (MAKE, {}, ["resized", "video"], LOCAL)


def test_permanently_unavailable_is_skipped_unless_asked_to_retry():
    gone = CLIP.record("unavailable", "HTTP 404", attempts=1, permanent=True)
    s = settings(source="youtube")
    assert plan(CLIP, gone, s).action == SKIP
    assert plan(CLIP, gone, settings(steps="filelists", source="youtube")).action == SKIP
    assert plan(CLIP, gone, settings("--retry-unavailable", source="youtube")).source == FETCH
    assert plan(CLIP, CLIP.record("unavailable", "HTTP 404"), s).action == MAKE


def test_steps_without_fetch_work_from_the_tree_or_scan_it():
    job = plan(CLIP, None, settings(steps="resize,rgb"))
    assert (job.action, job.make, job.source) == (MAKE, {"resized": RESIZED, "rgb": FRAMES}, TREE)
    s = settings(steps="flow")
    assert (plan(CLIP, None, s).action, plan(CLIP, None, s).trust) == (SCAN, "")
    s = settings(steps="fetch,flow")
    job = plan(CLIP, made(s, video=VIDEO), s)
    assert (job.action, job.keep, job.make) == (REFRESH, {"video": VIDEO}, {})  # flow: ComputeFlow's


def test_file_lists_alone_trust_a_video_checked_closely_enough():
    s = settings(steps="filelists")
    job = plan(CLIP, made(s, video=VIDEO), s)
    assert (job.action, job.trust) == (SCAN, VIDEO)
    probed = dict(made(s, "exists", video=VIDEO), verified="probe")
    assert plan(CLIP, probed, s).trust == VIDEO
    assert plan(CLIP, probed, settings("--verify", "full", steps="filelists")).trust == ""
    assert plan(CLIP, made(s, video=VIDEO), settings("--verify", "full", steps="filelists")).trust == VIDEO
    assert plan(CLIP, made(s, video="elsewhere.mp4"), s).trust == ""
    assert plan(CLIP, made(s, "corrupt", video=VIDEO), s).trust == plan(CLIP, None, s).trust == ""


def test_a_job_takes_its_cvdf_member_or_a_reason():
    job = plan(CLIP, None, settings(source="cvdf"))
    got = job.with_member("cvdf:part_0.tar:val/x.mp4", b"bytes")
    assert (got.source, got.member, got.data) == (CVDF, "cvdf:part_0.tar:val/x.mp4", b"bytes")
    gone = job.missing("no abcdefghijk_000000_000010.* in the CVDF parts (1 part unreadable: x)")
    assert (gone.source, gone.reason, gone.make) == (MISSING, gone.reason, job.make) and gone.reason
    tree = plan(CLIP, made(settings(), video=VIDEO), settings(source="cvdf"))
    assert tree.with_member("m", b"x") == tree == tree.missing("why") and tree.source == TREE


def test_open_source_says_why_a_job_has_no_video(tmp_path):
    from transforms.video import VideoError
    s = settings(source="cvdf")
    for job, reason in ((plan(CLIP, None, s), "no abcdefghijk_000000_000010.* in the CVDF parts"),
                        (plan(CLIP, None, s).missing("why not"), "why not"),
                        (plan(CLIP, None, settings(steps="resize")), f"no video at {VIDEO} (add the fetch step "
                                                                      "to make it)")):
        with pytest.raises(VideoError) as e:
            sources.open_source(job, s, str(tmp_path))
        assert (e.value.status, e.value.reason) == ("missing", reason)


def test_flow_to_make():
    s = settings(steps="fetch,flow")
    assert flow_to_make(made(s, video=VIDEO), s) == FRAMES
    assert flow_to_make(made(s, video=VIDEO, flow=FRAMES), s) == ""
    assert flow_to_make(made(s, video=VIDEO, flow=FRAMES), settings("--flow-bound", "15", steps="fetch,flow")) \
        == FRAMES
    assert flow_to_make(made(s, "corrupt"), s) == flow_to_make(made(s, video=VIDEO), settings()) == ""
