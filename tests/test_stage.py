"""The video stage inside the pipeline: local and CVDF sources, ledger, re-runs, whole writes."""
import io
import json
import shutil
import tarfile

import apache_beam as beam
import cv2
import fsspec
import numpy as np
import pytest

from conftest import VIDEOS, make_video, read_records, run_cli, serve_dir, write_csv
from transforms.flow import grey_frames, write_flow

HEAD = "label,youtube_id,time_start,time_end,split\n"
FAST = ["--flow-algorithm", "dis"]


def k400(*args):
    return ["--dataset", "kinetics400", *args]


@pytest.fixture
def cvdf_root(tmp_path, fixtures):
    """Real videos laid out as a CVDF mirror ({clip}.mp4 and friends), a class-dir copy, a full-length
    source named by youtube id, and one corrupt clip."""
    root = tmp_path / "mirror"
    root.mkdir()
    shutil.copy(VIDEOS / "mmaction2_demo.mp4", root / "demo0000000_000000_000010.mp4")
    shutil.copy(VIDEOS / "decord_flipping_a_pancake.mkv", root / "pancake0000_000000_000010.mkv")
    shutil.copy(VIDEOS / "decord_corrupted.mp4", root / "corrupt0000_000000_000005.mp4")
    (root / "hurling_(sport)").mkdir()
    shutil.copy(VIDEOS / "ntu_S001C001P001R001A001_rgb.avi", root / "hurling_(sport)" / "ntuclip0000_000000_000003.avi")
    make_video(root / "fulllength1.mp4", seconds=12, fps=10, width=160, height=120, audio=True)
    ann = write_csv(tmp_path / "val.csv", HEAD
                    + "arm wrestling,demo0000000,0,10,val\n"
                    + "flipping pancake,pancake0000,0,10,val\n"
                    + "abseiling,corrupt0000,0,5,val\n"
                    + "hurling (sport),ntuclip0000,0,3,val\n"
                    + "\"massaging person's head\",fulllength1,4,9,val\n"
                    + "zumba,nosuchclip0,0,10,val\n")
    return root, ann


def test_local_source_end_to_end(tmp_path, cvdf_root, monkeypatch):
    root, ann = cvdf_root
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    assert run_cli(*k400("--annotations", ann, "--output", out, "--source", "local", "--video-root", root,
                         "--steps", "fetch,resize,rgb,flow,filelists", *FAST)) == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert {k: r["status"] for k, r in recs.items()} == {
        "demo0000000": "ok", "pancake0000": "ok", "corrupt0000": "corrupt", "ntuclip0000": "ok",
        "fulllength1": "ok", "nosuchclip0": "missing"}
    demo = recs["demo0000000"]
    assert (demo["frames"], demo["rgb_frames"], demo["flow_frames"]) == (280, 280, 279)
    assert demo["outputs"] == {"video": "videos_val/arm_wrestling/demo0000000_000000_000010.mp4",
                               "resized": "videos_val_256p_dense_cache/arm_wrestling/demo0000000_000000_000010.mp4",
                               "rgb": "rawframes_val/arm_wrestling/demo0000000_000000_000010",
                               "flow": "rawframes_val/arm_wrestling/demo0000000_000000_000010"}
    assert demo["source"] == str(root / "demo0000000_000000_000010.mp4")
    assert set(demo["seconds"]) >= {"fetch", "trim", "resize", "rgb", "decode", "flow", "total"}
    frames = out / demo["outputs"]["rgb"]
    assert len(list(frames.glob("img_*.jpg"))) == 280 and len(list(frames.glob("flow_y_*.jpg"))) == 279
    assert cv2.imread(str(frames / "flow_x_00001.jpg"), cv2.IMREAD_UNCHANGED).shape == (256, 340)
    ntu = recs["ntuclip0000"]
    assert ntu["resized_size"] == [456, 256] and ntu["frame_size"] == [455, 256]
    full = recs["fulllength1"]
    assert full["frames"] == 50 and full["duration"] == 5.0 and full["source"].endswith("fulllength1.mp4")
    assert "decode error after 28 frames" in recs["corrupt0000"]["reason"]
    assert not (out / "videos_val" / "abseiling").exists()  # nothing where a good clip would go
    assert not list((tmp_path / "tmp").iterdir())  # staging removed on every path
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    videos = (out / "kinetics400_val_list_videos.txt").read_text().splitlines()
    assert videos == ["arm_wrestling/demo0000000_000000_000010.mp4 6",
                      "flipping_pancake/pancake0000_000000_000010.mp4 129",
                      "hurling_(sport)/ntuclip0000_000000_000003.mp4 161",
                      "massaging_person's_head/fulllength1_000004_000009.mp4 196"]
    flow = (out / "kinetics400_val_list_flow.txt").read_text().splitlines()
    assert flow[0] == "arm_wrestling/demo0000000_000000_000010 279 6"


def test_rerun_skips_complete_clips_and_adds_missing_steps(tmp_path, cvdf_root):
    root, ann = cvdf_root
    out = tmp_path / "out"
    base = k400("--annotations", ann, "--output", out, "--source", "local", "--video-root", root, *FAST)
    assert run_cli(*base, "--steps", "fetch,resize") == 0
    first = {r["clip_id"]: r for r in read_records(out)}
    video = out / first["demo0000000_000000_000010"]["outputs"]["video"]
    stamp = video.stat().st_mtime_ns
    assert run_cli(*base, "--steps", "fetch,resize") == 0
    again = {r["clip_id"]: r for r in read_records(out)}
    assert again["demo0000000_000000_000010"]["status"] == "exists"
    assert again["corrupt0000_000000_000005"]["status"] == "corrupt"  # retried, still corrupt
    assert video.stat().st_mtime_ns == stamp
    assert run_cli(*base, "--steps", "fetch,resize,rgb,flow") == 0
    third = {r["clip_id"]: r for r in read_records(out)}
    demo = third["demo0000000_000000_000010"]
    assert demo["status"] == "ok" and demo["rgb_frames"] == 280 and demo["flow_frames"] == 279
    assert demo["source"] == str(out / first["demo0000000_000000_000010"]["outputs"]["video"])
    assert video.stat().st_mtime_ns == stamp  # the trimmed clip was reused, not remade


def test_steps_without_fetch_work_on_an_existing_tree(tmp_path, fixtures):
    ann = write_csv(tmp_path / "val.csv", HEAD + "arm wrestling,demo0000000,0,10,val\nzumba,nosuchclip0,0,10,val\n")
    out = tmp_path / "out"
    (out / "videos_val" / "arm_wrestling").mkdir(parents=True)
    shutil.copy(VIDEOS / "mmaction2_demo.mp4", out / "videos_val" / "arm_wrestling" / "demo0000000_000000_000010.mp4")
    assert run_cli(*k400("--annotations", ann, "--output", out, "--steps", "resize,flow", "--no-dense",
                         "--scale", "128", "--new-short", "0", *FAST)) == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert recs["nosuchclip0"]["status"] == "missing"
    demo = recs["demo0000000"]
    assert demo["status"] == "ok" and demo["outputs"]["resized"].startswith("videos_val_128p/")
    assert demo["flow_frames"] == 279 and demo["frame_size"] == [340, 256]
    assert (out / demo["outputs"]["resized"]).exists()
    trimmed = "videos_val/arm_wrestling/demo0000000_000000_000010.mp4"
    assert demo["flow_source"] == trimmed  # the 170x128 resized clip would be upscaled
    got = (out / demo["outputs"]["flow"] / "flow_x_00101.jpg").read_bytes()
    assert cv2.imdecode(np.frombuffer(got, np.uint8), cv2.IMREAD_UNCHANGED).shape == (256, 340)
    for source, same in ((trimmed, True), (demo["outputs"]["resized"], False)):
        frames = list(grey_frames(str(out / source), (340, 256)))[100:102]
        write_flow(frames, tmp_path / source, algorithm="dis")
        assert ((tmp_path / source / "flow_x_00001.jpg").read_bytes() == got) is same


def test_memory_filesystem_output(tmp_path, cvdf_root):
    root, ann = cvdf_root
    url = "memory:///stage-test/out"
    try:
        assert run_cli(*k400("--annotations", ann, "--output", url, "--source", "local", "--video-root", root,
                             "--limit", "2", "--steps", "fetch,rgb,filelists")) == 0
        fs = fsspec.filesystem("memory")
        recs = [json.loads(line) for line in fs.cat("/stage-test/out/manifest/val.jsonl").decode().splitlines()]
        assert [r["status"] for r in recs] == ["ok", "ok"]
        frames = fs.ls(f"/stage-test/out/{recs[0]['outputs']['rgb']}", detail=False)
        assert len(frames) == 280
        assert fs.cat(f"/stage-test/out/{recs[0]['outputs']['video']}")[4:8] == b"ftyp"
    finally:
        fsspec.filesystem("memory").rm("/stage-test", recursive=True)


def _part(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("how", ["part-lists", "folder"])
def test_cvdf_parts_streamed_over_http(tmp_path, fixtures, how):
    parts = tmp_path / "s3"
    (parts / "val").mkdir(parents=True)
    demo = (VIDEOS / "mmaction2_demo.mp4").read_bytes()
    pancake = (VIDEOS / "decord_flipping_a_pancake.mkv").read_bytes()
    _part(parts / "val" / "part_0.tar.gz", {"val/demo0000000_000000_000010.mp4": demo,
                                             "val/unwanted000_000001_000011.mp4": demo})
    _part(parts / "val" / "part_1.tar.gz", {"val/pancake0000_000000_000010.mkv": pancake})
    ann = write_csv(tmp_path / "val.csv", HEAD + "arm wrestling,demo0000000,0,10,val\n"
                                                 "flipping pancake,pancake0000,0,10,val\n"
                                                 "zumba,nosuchclip0,0,10,val\n")
    out = tmp_path / "out"
    with serve_dir(parts) as base:
        if how == "part-lists":
            (parts / "val" / "k400_val_path.txt").write_text(f"{base}/val/part_0.tar.gz\n{base}/val/part_1.tar.gz\n")
            cfg = tmp_path / "cvdf.yaml"
            cfg.write_text(f"cvdf_parts:\n  val: {base}/val/k400_val_path.txt\n")
            extra = ["--config", cfg]
        else:
            extra = ["--video-root", parts]
        assert run_cli(*k400("--annotations", ann, "--output", out, "--source", "cvdf", *extra,
                             "--steps", "fetch,rgb")) == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert {k: r["status"] for k, r in recs.items()} == {"demo0000000": "ok", "pancake0000": "ok",
                                                         "nosuchclip0": "missing"}
    assert recs["demo0000000"]["source"] == "cvdf:part_0.tar.gz:val/demo0000000_000000_000010.mp4"
    assert recs["demo0000000"]["rgb_frames"] == 280 and recs["pancake0000"]["rgb_frames"] == 310
    assert "CVDF parts" in recs["nosuchclip0"]["reason"]
    assert not (out / "videos_val" / "arm_wrestling" / "unwanted000_000001_000011.mp4").exists()
    assert not list(out.rglob("unwanted*"))


def test_cvdf_unreadable_parts_leave_their_clips_missing_and_the_run_completes(tmp_path, fixtures):
    parts = tmp_path / "s3"
    parts.mkdir()
    _part(parts / "part_0.tar.gz", {"val/demo0000000_000000_000010.mp4": (VIDEOS / "mmaction2_demo.mp4").read_bytes()})
    (parts / "part_2.tar.gz").write_bytes(b"not a gzip stream at all")
    ann = write_csv(tmp_path / "val.csv", HEAD + "arm wrestling,demo0000000,0,10,val\nzumba,nosuchclip0,0,10,val\n")
    out = tmp_path / "out"
    with serve_dir(parts) as base:
        (parts / "val.txt").write_text("".join(f"{base}/part_{i}.tar.gz\n" for i in range(3)))  # part_1: 404
        cfg = tmp_path / "cvdf.yaml"
        cfg.write_text(f"cvdf_parts:\n  val: {base}/val.txt\n")
        assert run_cli(*k400("--annotations", ann, "--output", out, "--source", "cvdf", "--config", cfg,
                             "--steps", "fetch")) == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert recs["demo0000000"]["status"] == "ok"
    assert recs["demo0000000"]["source"] == "cvdf:part_0.tar.gz:val/demo0000000_000000_000010.mp4"
    assert recs["nosuchclip0"]["status"] == "missing"
    assert recs["nosuchclip0"]["reason"] == (
        "no nosuchclip0_000000_000010.* in the CVDF parts (2 parts unreadable: "
        f"{base}/part_1.tar.gz: HTTP 404; {base}/part_2.tar.gz: ReadError: truncated header)")


def test_cvdf_clip_in_two_parts_gives_one_record_and_replacement_parts_win(tmp_path, fixtures):
    parts = tmp_path / "parts"
    (parts / "val").mkdir(parents=True)
    demo = (VIDEOS / "mmaction2_demo.mp4").read_bytes()
    pancake = (VIDEOS / "decord_flipping_a_pancake.mkv").read_bytes()
    _part(parts / "val" / "part_0.tar.gz", {"val/demo0000000_000000_000010.mp4": demo,
                                             "val/pancake0000_000000_000010.mkv": pancake})
    _part(parts / "val" / "part_1.tar", {"val/pancake0000_000000_000010.mp4": demo,
                                         "val/ntu00000000_000000_000003.mp4": demo}, mode="w")
    _part(parts / "val" / "replacement_for_corrupted_k400.tgz", {"r/demo0000000_000000_000010.mkv": pancake})
    ann = write_csv(tmp_path / "val.csv", HEAD + "arm wrestling,demo0000000,0,10,val\n"
                                                 "flipping pancake,pancake0000,0,10,val\n"
                                                 "hurling (sport),ntu00000000,0,3,val\n")
    out = tmp_path / "out"
    assert run_cli(*k400("--annotations", ann, "--output", out, "--source", "cvdf", "--video-root", parts,
                         "--steps", "fetch,rgb")) == 0
    recs = read_records(out)
    assert sorted(r["youtube_id"] for r in recs) == ["demo0000000", "ntu00000000", "pancake0000"]
    assert all(r["status"] == "ok" for r in recs)
    got = {r["youtube_id"]: (r["source"], r["rgb_frames"]) for r in recs}
    assert got == {  # 310 frames: the pancake clip's bytes
        "demo0000000": ("cvdf:replacement_for_corrupted_k400.tgz:r/demo0000000_000000_000010.mkv", 310),
        "pancake0000": ("cvdf:part_0.tar.gz:val/pancake0000_000000_000010.mkv", 310),
        "ntu00000000": ("cvdf:part_1.tar:val/ntu00000000_000000_000003.mp4", 84)}


def test_read_parts_retries_a_transient_error_without_repeating_members(monkeypatch):
    from transforms import sources
    from transforms.records import Clip

    clip = Clip("val", "zumba", 0, "zumba", "a", 0.0, 10.0, "a_000000_000010", "x.csv", 2, (0, 2))
    other = Clip("val", "zumba", 0, "zumba", "b", 0.0, 10.0, "b_000000_000010", "x.csv", 3, (0, 3))
    calls = []

    def flaky(url, wanted):
        calls.append(url)
        yield "val/a_000000_000010.mp4", b"A"
        if len(calls) == 1:
            raise ConnectionResetError("reset by peer")
        yield "val/b_000000_000010.mp4", b"B"

    monkeypatch.setattr(sources, "read_part", flaky)
    jobs = {"a_000000_000010": [(clip, None)], "b_000000_000010": [(other, None)]}
    out = list(sources.ReadParts(attempts=3, backoff=0).process("http://h/part_0.tar.gz", jobs))
    members = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
    assert [(key[2], source) for key, (_, (_, _, (source, _))) in members] == [
        ("a_000000_000010", "cvdf:part_0.tar.gz:val/a_000000_000010.mp4"),
        ("b_000000_000010", "cvdf:part_0.tar.gz:val/b_000000_000010.mp4")]
    assert len(calls) == 2 and not [o for o in out if getattr(o, "tag", None) == "failed"]


def test_part_errors_permanent_or_worth_a_retry(tmp_path):
    from transforms.sources import describe, permanent, read_part

    def error(url):
        try:
            list(read_part(url, lambda cid: True))
        except Exception as e:  # noqa: BLE001
            return e
    (tmp_path / "bad.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated gzip")
    with serve_dir(tmp_path) as base:
        gone, bad = error(f"{base}/gone.tar.gz"), error(f"{base}/bad.tar.gz")
    refused = error(f"{base}/gone.tar.gz")  # the server is down now
    assert (permanent(gone), describe(gone)) == (True, "HTTP 404")
    assert permanent(bad) and permanent(error(str(tmp_path / "nothing.tar.gz")))
    assert not permanent(refused) and describe(refused).startswith("ClientConnectorError")
