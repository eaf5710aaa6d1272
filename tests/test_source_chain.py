"""--source as an ordered list (local,cvdf,youtube): each clip served by the first source with a
usable video; the rest go on to the next source; a clip no source serves keeps the most telling
status and a reason naming what each source said. The pipeline test runs real Beam over a local
root, CVDF parts streamed from a loopback HTTP server, and real yt-dlp against the fault server."""
import functools
import http.server
import json
import os
import threading

import av
import pytest

import faultserver as fs
from conftest import make_video, read_records, run_cli, write_csv, write_tar
from option_checks import check_fetch
from pipeline.options import UsageError, resolve
from transforms import fetch
from transforms.plan import CVDF, FETCH, LOCAL, MOVES_ON, TELLING, chain, most_telling, plan, settled
from transforms.records import CORRUPT, MISSING, NETWORK, OK, SHORT, UNAVAILABLE, Clip, ClipRecord

HEAD = "label,youtube_id,time_start,time_end,split\n"
CLIP = Clip("val", "zumba", 399, "zumba", "abcdefghijk", 0.0, 10.0, "abcdefghijk_000000_000010", "val.csv", 2, (0, 2))


def settings(*args, source="local,cvdf,youtube"):
    return resolve(["--dataset", "kinetics400", "--output", "out", "--steps", "fetch", "--source", source,
                    "--video-root", "v", *map(str, args)])[0]


# ---- the policy: pure functions

def test_most_telling_status_ranks_unavailable_first_and_missing_last():
    assert most_telling([MISSING, MISSING, UNAVAILABLE]) == UNAVAILABLE  # YouTube's word beats the mirrors'
    assert most_telling([UNAVAILABLE, CORRUPT]) == UNAVAILABLE
    assert most_telling([CORRUPT, MISSING, NETWORK]) == CORRUPT
    assert most_telling([MISSING, SHORT]) == SHORT
    assert most_telling([MISSING, NETWORK]) == NETWORK
    assert most_telling([MISSING]) == MISSING
    assert most_telling(["something-new", MISSING]) == MISSING  # a status it does not know ranks last
    assert set(TELLING) == set(MOVES_ON) and OK not in MOVES_ON


def test_a_list_of_sources_plans_the_first_and_keeps_the_rest_in_order():
    s = settings()
    assert s.sources.source == "local,cvdf,youtube" and chain(s) == ("local", "cvdf", "youtube")
    job = plan(CLIP, None, s)
    assert (job.source, job.then, job.tried) == (LOCAL, (CVDF, FETCH), ())
    cvdf = job.next_source("local", MISSING, "no video")
    assert (cvdf.source, cvdf.then, cvdf.tried) == (CVDF, (FETCH,), (("local", MISSING, "no video"),))
    assert (cvdf.make, cvdf.clip, cvdf.prev) == (job.make, job.clip, job.prev)
    youtube = cvdf.with_member("m.mp4", b"x").next_source("cvdf", CORRUPT, "bad member")
    assert (youtube.source, youtube.then, youtube.member, youtube.data) == (FETCH, (), "", None)
    assert youtube.tried == (("local", MISSING, "no video"), ("cvdf", CORRUPT, "bad member"))
    assert youtube.next_source("youtube", UNAVAILABLE, "gone") is None  # the last source records it
    assert job.next_source("local", OK, "") is None
    one = plan(CLIP, None, settings(source="youtube"))
    assert (one.source, one.then, one.tried) == (FETCH, (), ())


def test_settled_record_names_every_source_and_keeps_the_deciding_records_fields():
    job = plan(CLIP, None, settings())
    job = job.next_source("local", MISSING, "no video under /v").next_source("cvdf", MISSING, "no clip in the parts")
    gone = ClipRecord.fetch_failed(CLIP, UNAVAILABLE, "HTTP Error 404", attempts=1, permanent=True)
    rec = settled(job, "youtube", gone)
    assert rec.status == UNAVAILABLE and rec.permanent and rec.get("attempts") == 1
    assert rec.reason == "local: no video under /v; cvdf: no clip in the parts; youtube: HTTP Error 404"
    job = plan(CLIP, None, settings()).next_source("local", CORRUPT, "cannot decode")
    job = job.next_source("cvdf", MISSING, "not in the parts")
    rec = settled(job, "youtube", ClipRecord.fetch_failed(CLIP, NETWORK, "timed out", attempts=3))
    assert (rec.status, rec.get("attempts")) == (CORRUPT, None)
    assert rec.reason == "local: cannot decode; cvdf: not in the parts; youtube: timed out"
    alone = ClipRecord.of(CLIP, MISSING, "no video for x under /v")
    assert settled(plan(CLIP, None, settings(source="local")), "local", alone) is alone  # one source: as today


# ---- the options

def test_source_list_options():
    repeated = resolve(["--dataset", "kinetics400", "--output", "o", "--source", "cvdf", "--source", "youtube"])[0]
    assert repeated.sources.source == "cvdf,youtube"  # a repeated flag: in order
    assert settings(source=" youtube , local ").sources.source == "youtube,local"
    assert settings(source="youtube").sources.source == "youtube"
    for bad, message in (("local,local", "--source: local named twice in local,local (each source at most once)"),
                         ("local,ftp", "--source: unknown source 'ftp' (choose from youtube, local, cvdf)"),
                         (",", "--source: name at least one source (youtube, local, cvdf)")):
        with pytest.raises(UsageError) as e:
            settings(source=bad)
        assert str(e.value) == message


def test_source_list_from_yaml_and_the_one_line_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source: [cvdf, youtube]\n")
    assert settings("--config", cfg, source="youtube").sources.source == "youtube"  # the flag beats the config
    s = resolve(["--dataset", "kinetics400", "--output", "out", "--steps", "fetch", "--config", str(cfg),
                 "--video-root", "parts"])[0]
    assert (s.sources.source, s.sources.cvdf_parts) == ("cvdf,youtube", "parts")  # no local: --video-root holds the parts
    assert run_cli("--dataset", "kinetics400", "--annotations", "a.csv", "--output", tmp_path / "o",
                   "--source", "youtube,cvdf,youtube") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kinetics-prep: error: --source: youtube named twice in youtube,cvdf,youtube "
                   "(each source at most once)"]


def test_cvdf_parts_with_a_local_source(tmp_path):
    layer = {"name": "k", "cvdf_parts": {"val": "https://h/val.txt"}}

    def merged(**values):
        from pipeline.options import OPTIONS
        m = {name: default for name, (_, default, _) in OPTIONS.items()}
        m.update(values)
        return m
    # --video-root is local's: the parts come from --cvdf-parts, else the dataset config
    assert check_fetch(merged(source="local,cvdf", video_root="v"), ["fetch"], [layer], "k")[1] == \
        {"val": "https://h/val.txt"}
    got = check_fetch(merged(source="local,cvdf", video_root="v", cvdf_parts=str(tmp_path / "p")), ["fetch"],
                      [layer], "k")
    assert got[:2] == (os.path.abspath("v"), str(tmp_path / "p"))
    assert check_fetch(merged(source="cvdf", video_root="v", cvdf_parts="gs://b/parts"), ["fetch"], [layer],
                       "k")[1] == "gs://b/parts"
    with pytest.raises(UsageError) as e:
        check_fetch(merged(source="local,cvdf", video_root="v"), ["fetch"], [{"name": "k"}], "k")
    assert str(e.value) == ("--source local,cvdf: k has no CVDF part lists; pass --cvdf-parts with a folder of "
                            "parts (--video-root is local's)")
    with pytest.raises(UsageError) as e:
        check_fetch(merged(source="cvdf,local"), ["fetch"], [layer], "k")
    assert str(e.value) == "--source cvdf,local needs --video-root DIR_OR_URL"


# ---- the pipeline: local,cvdf,youtube

class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, log, **kwargs):
        self.requests_log = log
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests_log.append(self.path)
        super().do_GET()




@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """One run of --source local,cvdf,youtube over six clips: two only local (one also in the parts and
    on "YouTube"), one only in the CVDF parts (also on "YouTube"), one only on "YouTube", one corrupt
    locally but fine in the parts (also on "YouTube"), one nowhere. Returns (records by youtube id,
    fault server stats by id, CVDF server request paths, the local root, the output)."""
    tmp = tmp_path_factory.mktemp("chain")
    clip = make_video(tmp / "clip.mp4", seconds=3, fps=10, width=96, height=64)
    data = clip.read_bytes()
    root = tmp / "local"
    root.mkdir()
    for yid in ("localonly01", "bothlocal01"):
        (root / f"{yid}_000000_000003.mp4").write_bytes(data)
    (root / "corrupt0001_000000_000003.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 200)
    parts = tmp / "parts"
    parts.mkdir()
    write_tar(parts / "part_0.tar.gz", {f"val/{yid}_000000_000003.mp4": data
                                    for yid in ("cvdfonly001", "corrupt0001", "bothlocal01")})
    write_tar(parts / "part_1.tar.gz", {"val/unwanted000_000000_000003.mp4": data})
    youtube = fs.make_video(tmp / "youtube.mp4", 6, fps=10, width=96, height=64)
    mirrored = ("localonly01", "bothlocal01", "cvdfonly001", "corrupt0001", "nowhere0001")
    rows = [f"abseiling,{yid},0,3,val" for yid in mirrored] + ["archery,ytonly00001,1,3,val"]
    ann = write_csv(tmp / "val.csv", HEAD + "\n".join(rows) + "\n")
    out = tmp / "out"
    log = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_LoggingHandler, directory=str(parts), log=log))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    fetch._WORKER = fetch.WorkerState()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        (parts / "val.txt").write_text(f"{base}/part_0.tar.gz\n{base}/part_1.tar.gz\n")
        cfg = tmp / "cvdf.yaml"
        cfg.write_text(f"cvdf_parts:\n  val: {base}/val.txt\n")
        with fs.FaultServer() as server:
            for yid in ("ytonly00001", "bothlocal01", "cvdfonly001", "corrupt0001"):
                server.add(yid, youtube)
            assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--config", cfg,
                           "--source", "local,cvdf,youtube", "--video-root", root,
                           "--url-template", server.url_template(), "--retries", "1", "--clip-timeout", "60",
                           "--socket-timeout", "5", "--steps", "fetch") == 0
            stats = {yid: server.stats(yid) for yid in ("ytonly00001", "bothlocal01", "cvdfonly001",
                                                         "corrupt0001", "nowhere0001", "localonly01")}
    finally:
        httpd.shutdown()
        httpd.server_close()
        fetch._WORKER = fetch.WorkerState()
    records = read_records(out)
    assert len(records) == 6
    return {r["youtube_id"]: r for r in records}, stats, log, root, out


def test_each_clip_is_served_once_by_the_first_source_that_has_it(chain_run):
    recs, _, _, root, out = chain_run
    got = {yid: (r["status"], r.get("source_kind")) for yid, r in recs.items()}
    assert got == {"localonly01": ("ok", "local"), "bothlocal01": ("ok", "local"),
                   "cvdfonly001": ("ok", "cvdf"), "corrupt0001": ("ok", "cvdf"),
                   "ytonly00001": ("ok", "youtube"), "nowhere0001": ("unavailable", None)}
    assert recs["localonly01"]["source"] == str(root / "localonly01_000000_000003.mp4")
    assert recs["bothlocal01"]["source"] == str(root / "bothlocal01_000000_000003.mp4")
    assert recs["corrupt0001"]["source"] == "cvdf:part_0.tar.gz:val/corrupt0001_000000_000003.mp4"
    assert recs["cvdfonly001"]["source"] == "cvdf:part_0.tar.gz:val/cvdfonly001_000000_000003.mp4"
    assert recs["ytonly00001"]["source"].endswith("/ytonly00001.mp4") and recs["ytonly00001"]["bytes_fetched"] > 0
    for yid in ("localonly01", "bothlocal01", "cvdfonly001", "corrupt0001"):
        with av.open(str(out / recs[yid]["outputs"]["video"])) as c:
            assert sum(1 for _ in c.decode(video=0)) == 30
    with av.open(str(out / recs["ytonly00001"]["outputs"]["video"])) as c:  # source frames 10..29: [1 s, 3 s)
        assert [fs.frame_index(f) for f in c.decode(video=0)] == list(range(10, 30))
    kept = json.loads((out / "_ledger" / "val" / "abseiling" / "corrupt0001_000000_000003.json").read_text())
    assert (kept["status"], kept["source_kind"], kept["source"]) == ("ok", "cvdf", recs["corrupt0001"]["source"])
    assert not list(out.rglob("unwanted*")) and not list(out.rglob("nowhere0001*.mp4"))


def test_later_sources_are_asked_only_for_what_earlier_ones_lacked(chain_run):
    _, stats, log, _, _ = chain_run
    for yid in ("bothlocal01", "cvdfonly001", "corrupt0001", "localonly01"):  # served before YouTube
        assert stats[yid].requests == 0, (yid, stats[yid].log)
    assert stats["ytonly00001"].requests > 0 and stats["nowhere0001"].requests > 0
    assert sorted(path for path in log if path.endswith(".tar.gz")) == ["/part_0.tar.gz", "/part_1.tar.gz"]  # once each


def test_a_clip_no_source_serves_says_what_each_source_said(chain_run):
    recs, _, _, root, _ = chain_run
    gone = recs["nowhere0001"]
    mirrors = (f"local: no video for nowhere0001_000000_000003 under {root}; "
               "cvdf: no nowhere0001_000000_000003.* in the CVDF parts; youtube: ")
    assert gone["reason"].startswith(mirrors) and "404" in gone["reason"][len(mirrors):]
    assert gone["permanent"] is True and gone["attempts"] == 1  # YouTube's word, whose status it keeps


def test_the_graph_of_a_list_chains_one_stage_a_source_and_a_single_source_keeps_its_own():
    import apache_beam as beam

    from pipeline import build

    def transforms(*argv):
        s = resolve(["--dataset", "kinetics400", "--annotations", "a.csv", "--output", "o", "--steps", "fetch",
                     "--video-root", "v", *argv])[0]
        p = beam.Pipeline()
        build.build(p, s)
        return {t.unique_name: t for t in p.to_runner_api().components.transforms.values()}
    chained = transforms("--source", "local,cvdf,youtube")
    outputs = {name: set(chained[name].outputs) for name in ("LocalClips", "ProcessClips", "FetchClips")}
    assert outputs == {"LocalClips": {"None", "next"}, "ProcessClips": {"None", "next"},
                       "FetchClips": {"None"}}  # the last source passes nothing on
    # the CVDF stage reads the jobs local passed on; YouTube groups those CVDF passed on
    assert set(chained["CVDF/ById"].inputs.values()) == {chained["LocalClips"].outputs["next"]}
    assert set(chained["ByYouTubeId"].inputs.values()) == {chained["ProcessClips"].outputs["next"]}
    alone = transforms("--source", "youtube")
    assert "LocalClips" not in alone and "CVDF" not in alone and set(alone["FetchClips"].outputs) == {"None"}


def test_youtube_first_passes_what_it_cannot_fetch_to_local(tmp_path):
    """--source youtube,local: a clip YouTube does not have (HTTP 404, a fetch failure) goes on to local."""
    root = tmp_path / "local"
    make_video(root / "notonyt0001_000000_000003.mp4", seconds=3, fps=10, width=96, height=64)
    youtube = fs.make_video(tmp_path / "youtube.mp4", 6, fps=10, width=96, height=64)
    ann = write_csv(tmp_path / "val.csv", HEAD + "abseiling,onyoutube01,1,3,val\nabseiling,notonyt0001,0,3,val\n"
                                                 "abseiling,nowhere0002,0,3,val\n")
    out = tmp_path / "out"
    fetch._WORKER = fetch.WorkerState()
    try:
        with fs.FaultServer() as server:
            server.add("onyoutube01", youtube)
            assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out,
                           "--source", "youtube,local", "--video-root", root, "--url-template", server.url_template(),
                           "--retries", "1", "--clip-timeout", "60", "--socket-timeout", "5", "--steps", "fetch") == 0
            assert server.stats("notonyt0001").requests > 0
    finally:
        fetch._WORKER = fetch.WorkerState()
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert {k: (r["status"], r.get("source_kind")) for k, r in recs.items()} == {
        "onyoutube01": ("ok", "youtube"), "notonyt0001": ("ok", "local"), "nowhere0002": ("unavailable", None)}
    assert recs["notonyt0001"]["source"] == str(root / "notonyt0001_000000_000003.mp4")
    assert "bytes_fetched" not in recs["notonyt0001"]  # served by local: no fetch facts
    gone = recs["nowhere0002"]["reason"]
    assert gone.startswith("youtube: not found (HTTP 404)") and gone.endswith(
        f"; local: no video for nowhere0002_000000_000003 under {root}")
    assert recs["nowhere0002"].get("permanent") is None  # local's missing was last; YouTube's status ranks first


def test_dataflow_refuses_local_cvdf_parts():
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.cli import check_remote_paths

    def refused(*argv):
        s = resolve(["--dataset", "kinetics400", "--annotations", "gs://b/a.csv", "--output", "gs://b/o",
                     "--steps", "fetch", *argv])[0]
        try:
            check_remote_paths(s, PipelineOptions(["--runner=DataflowRunner"]))
        except UsageError as e:
            return str(e)
        return ""
    assert refused("--source", "local,cvdf", "--video-root", "gs://b/v", "--cvdf-parts", "parts").endswith(
        f"upload them and pass gs:// URLs: --cvdf-parts {os.path.abspath('parts')}")
    assert refused("--source", "local,cvdf", "--video-root", "gs://b/v", "--cvdf-parts", "gs://b/parts") == ""
    assert refused("--source", "cvdf,youtube") == ""  # the dataset config's part lists are https URLs
