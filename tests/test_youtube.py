"""--source youtube in the pipeline: real yt-dlp against the fault server on 127.0.0.1."""
import json
import os

import av
import pytest

import faultserver as fs
from conftest import read_records, run_cli, write_csv
from transforms import fetch, storage

HEAD = "label,youtube_id,time_start,time_end,split\n"
ROWS = {  # youtube id: (plan, then)
    "okvideo0001": ((), None),
    "gone0000404": ((), fs.status(404)),
    "busy0000429": ((fs.status(429, retry_after=1),), None),
    "flaky000500": ((fs.status(500),), None),
    "stalled0001": ((), fs.STALL),
}


pytestmark = pytest.mark.usefixtures("fresh_fetch_worker")  # its own rate governor and breaker


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fs.make_video(tmp_path_factory.mktemp("yt") / "source.mp4", 60, fps=10, width=96, height=64)


def args(server, ann, out, *extra):
    return ["--dataset", "kinetics400", "--annotations", ann, "--output", out, "--source", "youtube",
            "--url-template", server.url_template(), "--retries", "2", "--clip-timeout", "60",
            "--socket-timeout", "3", "--steps", "fetch,rgb,filelists", *extra]


def plain_gets(server, youtube_id):
    return sum(1 for method, rng, _ in server.stats(youtube_id).log if method == "GET" and rng is None)


def test_fetch_taxonomy_grouping_and_reruns(tmp_path, source):
    rows = [f"abseiling,{yid},20,30,val" for yid in ROWS] + ["archery,okvideo0001,33,38,val"]
    ann = write_csv(tmp_path / "val.csv", HEAD + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    with fs.FaultServer() as server:
        for yid, (once, then) in ROWS.items():
            server.add(yid, source)
            server.plan(yid, *once, then=then)
        assert run_cli(*args(server, ann, out)) == 0
        recs = {(r["youtube_id"], r["time_start"]): r for r in read_records(out)}
        status = {k: (r["status"], r.get("attempts")) for k, r in recs.items()}
        assert status.pop(("stalled0001", 20))[0] == "network"  # socket timeouts (or the clip timeout)
        assert status == {("okvideo0001", 20): ("ok", 1), ("okvideo0001", 33): ("ok", 1),
                          ("gone0000404", 20): ("unavailable", 1), ("busy0000429", 20): ("ok", 2),
                          ("flaky000500", 20): ("ok", 2)}
        first, second = recs[("okvideo0001", 20)], recs[("okvideo0001", 33)]
        assert plain_gets(server, "okvideo0001") == 1  # one fetch served both clips of the id
        assert first["bytes_fetched"] > 0 and second["bytes_fetched"] == 0
        assert second["fetched_with"] == first["clip_id"] and first["fetch_window"] == [20.0, 38.0]
        assert first["fetch_segment"] is second["fetch_segment"] is True
        assert first["fetch_range"] == second["fetch_range"] == [18.0, 40.0]  # padded by 2 s
        assert first["bytes_fetched"] < 0.7 * os.path.getsize(source)
        assert first["format_id"] and first["ytdlp_version"] and first["rgb_frames"] == 100
        assert second["rgb_frames"] == 50
        gone = recs[("gone0000404", 20)]
        assert gone["permanent"] is True and "HTTP 404" in gone["reason"]
        # each attempt ends at ffmpeg's 3 s read timeout, well inside the 60 s clip timeout (which
        # only a very busy machine could reach first)
        stalled = recs[("stalled0001", 20)]["reason"]
        assert stalled.startswith("timed out: no data for 3 s from 127.0.0.1:") or stalled == "timed out after 60 s"
        assert not list(out.rglob("gone0000404*.mp4")) and not list(out.rglob("stalled0001*.mp4"))
        assert not [p for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".fetch-")]
        with av.open(str(out / first["outputs"]["video"])) as c:
            assert [fs.frame_index(f) for f in c.decode(video=0)] == list(range(200, 300))

        before = {yid: server.stats(yid).requests for yid in ROWS}
        assert run_cli(*args(server, ann, out)) == 0
        again = {(r["youtube_id"], r["time_start"]): r["status"] for r in read_records(out)}
        assert again[("okvideo0001", 20)] == "exists" and again[("gone0000404", 20)] == "unavailable"
        assert server.stats("gone0000404").requests == before["gone0000404"]  # permanent: not asked again
        assert server.stats("okvideo0001").requests == before["okvideo0001"]
        assert server.stats("stalled0001").requests > before["stalled0001"]  # transient: retried

        assert run_cli(*args(server, ann, out, "--retry-unavailable", "--limit", "2")) == 0
        assert server.stats("gone0000404").requests > before["gone0000404"]


def test_bot_checks_stop_the_worker_and_say_so_first(tmp_path, source, capsys, monkeypatch):
    ids = [f"botcheck{i:03d}" for i in range(5)]
    ann = write_csv(tmp_path / "val.csv", HEAD + "".join(f"abseiling,{yid},5,15,val\n" for yid in ids))
    out = tmp_path / "out"
    with fs.FaultServer() as server:
        for yid in ids:
            server.add(yid, source)
            server.plan(yid, then=fs.status(403, reason="Sign in to confirm you're not a bot"))
        real_read = storage.read_bytes
        monkeypatch.setattr(storage, "read_bytes", lambda url, *a, **k: pytest.fail(f"launcher read {url}")
                            if url.endswith("failures.csv") else real_read(url, *a, **k))
        assert run_cli(*args(server, ann, out, "--bot-check-limit", "2")) == 0  # counted from the run's metrics
        monkeypatch.undo()
        asked = sum(1 for yid in ids if server.stats(yid).requests)
    records = read_records(out)
    assert {r["status"] for r in records} == {"rate_limited"}
    stopped = [r for r in records if r["reason"].startswith(fetch.BOT_CHECK_REASON_PREFIX)]
    assert asked == 2 and len(stopped) == 3 and all("--cookies" in r["reason"] for r in stopped)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("YouTube bot checks stopped fetching: 3 clips") and "--cookies" in printed[0]
    assert json.loads((out / "summary.json").read_text())["total"] == {"rate_limited": 5}


def test_an_unexpected_fetch_error_fails_its_clips_not_the_run(tmp_path, source, monkeypatch):
    real_fetch = fetch.Fetcher.fetch

    def disk_full_for_one_id(self, youtube_id, *args):
        if youtube_id == "diskfull001":
            raise OSError(28, "No space left on device")
        return real_fetch(self, youtube_id, *args)

    monkeypatch.setattr(fetch.Fetcher, "fetch", disk_full_for_one_id)
    ann = write_csv(tmp_path / "val.csv", HEAD + "abseiling,diskfull001,5,15,val\nabseiling,okvideo0001,5,15,val\n"
                    "archery,diskfull001,7,17,val\n")
    out = tmp_path / "out"
    with fs.FaultServer() as server:
        server.add("okvideo0001", source)
        assert run_cli(*args(server, ann, out)) == 0
    recs = {(r["youtube_id"], r["time_start"]): r for r in read_records(out)}
    assert recs[("okvideo0001", 5)]["status"] == "ok"
    for key in (("diskfull001", 5), ("diskfull001", 7)):
        assert recs[key]["status"] == "failed" and not recs[key].get("permanent")
        assert recs[key]["reason"] == "OSError: [Errno 28] No space left on device"
    ok = recs[("okvideo0001", 5)]
    assert ok["fetch_segment"] is True and ok["fetch_range"] == [3.0, 17.0]


def test_full_downloads_record_no_fetch_range(tmp_path, source):
    ann = write_csv(tmp_path / "val.csv", HEAD + "abseiling,okvideo0001,5,15,val\n")
    out = tmp_path / "out"
    refuse_ranges = '{"generic": {"fragment_query": ["token=1"]}}'
    with fs.FaultServer() as server:
        server.add("okvideo0001", source)
        assert run_cli(*args(server, ann, out, "--ytdlp-opt", f"extractor_args={refuse_ranges}")) == 0
    (record,) = read_records(out)
    assert record["status"] == "ok" and record["fetch_segment"] is False and record["fetch_range"] is None
    assert record["bytes_fetched"] == os.path.getsize(source)


def test_preflight_names_the_missing_tool(tmp_path):
    ann = write_csv(tmp_path / "val.csv", HEAD + "abseiling,okvideo0001,5,15,val\n")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("cookies: /nonexistent/cookies.txt\n")
    code = run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", tmp_path / "out",
                   "--config", cfg, "--steps", "fetch")
    assert code == 1 and not (tmp_path / "out" / "manifest").exists()
