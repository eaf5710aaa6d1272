"""--clip-cache: transforms/cache.py's functions, and runs that share a cache (real yt-dlp against
the fault server on 127.0.0.1, as tests/test_youtube.py)."""
import os
import subprocess
import sys
import time

import av
import fsspec
import pytest

import faultserver as fs
from conftest import ROOT, read_records, run_cli, write_csv
from transforms import cache, fetch, storage
from transforms.records import Clip

HEAD = "label,youtube_id,time_start,time_end,split\n"
# (youtube id, start, end): K400-style rows, then K600-style ones sharing the first two segments
# under other labels; `cachec00003` is shared as an id only, with another segment.
K400 = [("abseiling", "cachea00001", 20, 30), ("archery", "cacheb00002", 5, 15),
        ("abseiling", "cachec00003", 10, 20), ("archery", "cached00004", 30, 40)]
K600 = [("air drumming", "cachea00001", 20, 30), ("answering questions", "cacheb00002", 5, 15),
        ("air drumming", "cachec00003", 30, 40), ("answering questions", "cachee00005", 40, 50)]
SHARED = {("cachea00001", 20), ("cacheb00002", 5)}


pytestmark = pytest.mark.usefixtures("fresh_fetch_worker")  # its own rate governor and breaker


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return fs.make_video(tmp_path_factory.mktemp("yt") / "source.mp4", 60, fps=10, width=96, height=64)


def clip(youtube_id="abcdefghijk", start=417, end=427, label="abseiling", clip_id=None):
    cid = clip_id or f"{youtube_id}_{start:06d}_{end:06d}"
    return Clip("val", label, 0, label.replace(" ", "_"), youtube_id, start, end, cid, "val.csv", 2, (0, 2))


def csv_of(tmp_path, name, rows):
    return write_csv(tmp_path / name, HEAD + "".join(f"{lab},{yid},{s},{e},val\n" for lab, yid, s, e in rows))


def args(server, dataset, ann, out, clip_cache, *extra):
    return ["--dataset", dataset, "--annotations", ann, "--output", out, "--source", "youtube",
            "--url-template", server.url_template(), "--retries", "2", "--clip-timeout", "60",
            "--socket-timeout", "10", "--steps", "fetch", *(["--clip-cache", clip_cache] if clip_cache else []),
            *extra]


def frames_of(path):
    with av.open(str(path)) as c:
        return [fs.frame_index(f) for f in c.decode(video=0)]


def entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def temps(folder):
    return [n for n in entries(folder) if storage.TEMP_NAME.fullmatch(n)]


# ---- transforms/cache.py


def test_entry_names_follow_the_segment_alone():
    assert cache.entry_name("abcdefghijk", 417, 427) == "abcdefghijk_000417_000427.mp4"
    assert cache.entry_name("abcdefghijk", 417.0, 427.0) == "abcdefghijk_000417_000427.mp4"
    assert cache.entry_name("abcdefghijk", -0.0, 10) == "abcdefghijk_000000_000010.mp4"
    assert cache.entry_name("abcdefghijk", 1234567, 1234577) == "abcdefghijk_1234567_1234577.mp4"
    # not whole seconds: the decimals stay, so [417.5, 427) never takes [417, 427)'s entry
    assert cache.entry_name("abcdefghijk", 417.5, 427) == "abcdefghijk_000417.5_000427.mp4"
    assert cache.entry_name("abcdefghijk", 0.1, 1e-7 + 3) == "abcdefghijk_000000.1_000003.0000001.mp4"
    # labels, class dirs and the clip id (--trim-format) play no part
    a = clip(label="abseiling")
    b = clip(label="air drumming", clip_id="abcdefghijk_417.0_427.0")
    assert cache.entry_url("/c", a) == cache.entry_url("/c", b) == "/c/abcdefghijk_000417_000427.mp4"
    assert cache.entry_url("gs://bucket/cache/", a) == "gs://bucket/cache/abcdefghijk_000417_000427.mp4"


def test_lookup_and_write_locally(tmp_path, source):
    root = tmp_path / "cache"
    c = clip()
    assert cache.lookup(str(root), c) == ""  # no folder yet
    url = cache.write(str(root), c, source)
    assert url == str(root / "abcdefghijk_000417_000427.mp4") and cache.lookup(str(root), c) == url
    assert (root / "abcdefghijk_000417_000427.mp4").read_bytes() == open(source, "rb").read()
    assert temps(root) == []
    # replaced whole
    other = tmp_path / "other.mp4"
    other.write_bytes(b"new bytes")
    cache.write(str(root), c, str(other))
    assert (root / "abcdefghijk_000417_000427.mp4").read_bytes() == b"new bytes" and temps(root) == []
    # a dir (or anything not a regular file) at the name is no entry
    os.makedirs(root / "abcdefghijk_000001_000011.mp4")
    assert cache.lookup(str(root), clip(start=1, end=11)) == ""
    # write_from: a file in the output tree
    cache.write_from(str(root), clip(start=2, end=12), source)
    assert (root / "abcdefghijk_000002_000012.mp4").stat().st_size == os.path.getsize(source)


def test_a_write_that_fails_part_way_leaves_no_entry_and_no_temp(tmp_path, source, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    real = storage.shutil.copyfile

    def half_then_full_disk(src, dst):
        with open(src, "rb") as f, open(dst, "wb") as out:
            out.write(f.read()[:1000])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.shutil, "copyfile", half_then_full_disk)
    with pytest.raises(storage.WriteError, match="No space left on device"):
        cache.write(str(root), clip(), source)
    monkeypatch.setattr(storage.shutil, "copyfile", real)
    assert entries(root) == []


def test_an_object_store_cache(source):
    root = "memory://clip-cache-test"
    c = clip(youtube_id="memoryid001")
    try:
        assert cache.lookup(root, c) == ""
        url = cache.write(root, c, source)
        assert url == "memory://clip-cache-test/memoryid001_000417_000427.mp4" and cache.lookup(root, c) == url
        assert storage.read_bytes(url) == open(source, "rb").read()
        assert cache.sweep(root) == 0  # an object store holds no temporaries
    finally:
        fsspec.filesystem("memory").rm("/clip-cache-test", recursive=True)


def test_sweep_removes_only_stale_temporaries(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    names = ["x_000001_000011.mp4", ".x_000001_000011.mp4.0123456789ab.tmp",
             ".x_000002_000012.mp4.ba9876543210.tmp", ".notours.tmp", "x_000003_000013.mp4.0123456789ab.tmp"]
    for name in names:
        (root / name).write_bytes(b"x")
    (root / ".dir.mp4.0123456789ab.tmp").mkdir()
    now = time.time()
    old = now - cache.STALE_TEMP_SECONDS - 60
    for name in names[:2] + names[3:] + [".dir.mp4.0123456789ab.tmp"]:
        os.utime(root / name, (old, old))
    # the fresh temp may be another run's write in progress: kept
    assert cache.sweep(str(root), now=now) == 1
    assert ".x_000001_000011.mp4.0123456789ab.tmp" not in entries(root)
    assert set(entries(root)) == set(names + [".dir.mp4.0123456789ab.tmp"]) - {names[1]}
    assert cache.sweep(str(root), older_than=0, now=now + 1) == 1  # the other, once it is old too
    assert cache.sweep(str(tmp_path / "nothing-there")) == 0 and cache.sweep(None) == 0


# ---- runs sharing a cache


def test_a_second_dataset_fetches_only_the_segments_the_first_lacked(tmp_path, source):
    cache_dir = tmp_path / "cache"
    k400 = csv_of(tmp_path / "k400", "val.csv", K400)
    k600 = csv_of(tmp_path / "k600", "val.csv", K600)
    with fs.FaultServer() as server:
        for _, yid, _, _ in K400 + K600:
            server.add(yid, source)
        assert run_cli(*args(server, "kinetics400", k400, tmp_path / "out400", cache_dir)) == 0
        first = {(r["youtube_id"], r["time_start"]): r for r in read_records(tmp_path / "out400")}
        assert {k: (r["status"], r["source_kind"]) for k, r in first.items()} == {
            (yid, s): ("ok", "youtube") for _, yid, s, _ in K400}
        assert all(r["bytes_fetched"] > 0 for r in first.values())
        assert entries(cache_dir) == sorted(cache.entry_name(yid, s, e) for _, yid, s, e in K400)
        for _, yid, s, e in K400:  # each entry is the run's trimmed clip, byte for byte
            rec = first[(yid, s)]
            assert (cache_dir / cache.entry_name(yid, s, e)).read_bytes() == \
                (tmp_path / "out400" / rec["outputs"]["video"]).read_bytes()

        server.reset_stats()
        # another dataset, labels and clip-id format: only the segment names the entries
        assert run_cli(*args(server, "kinetics600", k600, tmp_path / "out600", cache_dir,
                             "--trim-format", "%.1f")) == 0
        asked = {yid: server.stats(yid).requests for _, yid, _, _ in K600}
    second = {(r["youtube_id"], r["time_start"]): r for r in read_records(tmp_path / "out600")}
    assert asked["cachea00001"] == asked["cacheb00002"] == 0  # no request for a cached segment
    assert asked["cachec00003"] > 0 and asked["cachee00005"] > 0
    for label, yid, s, e in K600:
        rec = second[(yid, s)]
        assert rec["status"] == "ok" and rec["label"] == label and rec["clip_id"] == f"{yid}_{s:.1f}_{e:.1f}"
        assert frames_of(tmp_path / "out600" / rec["outputs"]["video"]) == list(range(10 * s, 10 * e))
        if (yid, s) in SHARED:
            assert rec["source_kind"] == "cache" and rec["bytes_fetched"] == 0
            assert rec["source"] == str(cache_dir / cache.entry_name(yid, s, e))
            assert "fetch_range" not in rec and "attempts" not in rec
        else:
            assert rec["source_kind"] == "youtube" and rec["bytes_fetched"] > 0
    assert len(entries(cache_dir)) == 6 and temps(cache_dir) == []


def test_a_corrupt_entry_is_fetched_again_and_replaced(tmp_path, source):
    cache_dir = tmp_path / "cache"
    name = cache.entry_name("cachea00001", 20, 30)
    write_csv(cache_dir / name, b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    good = cache.entry_name("cacheb00002", 5, 15)
    ann = csv_of(tmp_path, "val.csv", K400[:2])
    with fs.FaultServer() as server:
        for _, yid, _, _ in K400[:2]:
            server.add(yid, source)
        # the other entry is a good one, from an earlier run of another dataset
        assert run_cli(*args(server, "kinetics400", csv_of(tmp_path / "k", "val.csv", K400[1:2]),
                             tmp_path / "first", cache_dir)) == 0
        server.reset_stats()
        assert run_cli(*args(server, "kinetics400", ann, tmp_path / "out", cache_dir)) == 0
        assert server.stats("cachea00001").requests > 0 and server.stats("cacheb00002").requests == 0
    recs = {r["youtube_id"]: r for r in read_records(tmp_path / "out")}
    bad = recs["cachea00001"]
    assert bad["status"] == "ok" and bad["source_kind"] == "youtube" and bad["bytes_fetched"] > 0
    assert recs["cacheb00002"]["source_kind"] == "cache"
    # the entry now is the clip just made
    assert (cache_dir / name).read_bytes() == (tmp_path / "out" / bad["outputs"]["video"]).read_bytes()
    assert frames_of(cache_dir / name) == list(range(200, 300))
    assert sorted(entries(cache_dir)) == sorted([name, good])


KILL_IN_CACHE_WRITE = """
import os, shutil, sys
sys.path[:0] = [{root!r}, {tests!r}]
cache_dir, argv = sys.argv[1], sys.argv[2:]
real = shutil.copyfile

def dies_half_way(src, dst, *a, **k):
    if os.path.dirname(os.path.abspath(dst)) == cache_dir:  # the write of a cache entry
        with open(src, "rb") as f, open(dst, "wb") as out:
            out.write(f.read()[:4096])
            out.flush()
            os.fsync(out.fileno())
        os._exit(137)  # as SIGKILL: no cleanup runs
    return real(src, dst, *a, **k)

shutil.copyfile = dies_half_way
from pipeline.cli import main
sys.exit(main(argv))
"""


def test_a_run_killed_while_writing_the_cache_leaves_no_partial_entry(tmp_path, source):
    cache_dir = tmp_path / "cache"
    out = tmp_path / "out"
    rows = K400[:1]
    name = cache.entry_name("cachea00001", 20, 30)
    ann = csv_of(tmp_path, "val.csv", rows)
    with fs.FaultServer() as server:
        server.add("cachea00001", source)
        script = KILL_IN_CACHE_WRITE.format(root=str(ROOT), tests=str(ROOT / "tests"))
        proc = subprocess.run([sys.executable, "-c", script, str(cache_dir),
                               *map(str, args(server, "kinetics400", ann, out, cache_dir))],
                              capture_output=True, text=True, timeout=600, cwd=str(ROOT))
        assert proc.returncode == 137, proc.stderr[-2000:]
        # killed with part of the clip written: only under a temporary name, never the entry's
        left = entries(cache_dir)
        assert name not in left and len(left) == 1 and temps(cache_dir) == left
        assert 0 < (cache_dir / left[0]).stat().st_size <= 4096
        assert not list((out / "_ledger").rglob("*.json"))  # the clip is not recorded as done
        assert server.stats("cachea00001").requests > 0
        server.reset_stats()
        # a later run (once the temp is older than any write could take) sweeps it and makes the entry
        old = time.time() - cache.STALE_TEMP_SECONDS - 60
        os.utime(cache_dir / left[0], (old, old))
        assert run_cli(*args(server, "kinetics400", ann, out, cache_dir)) == 0
        assert server.stats("cachea00001").requests > 0  # fetched again: the cache had no entry
    (rec,) = read_records(out)
    assert rec["status"] == "ok" and rec["source_kind"] == "youtube"
    assert entries(cache_dir) == [name]
    assert (cache_dir / name).read_bytes() == (out / rec["outputs"]["video"]).read_bytes()
    assert frames_of(cache_dir / name) == list(range(200, 300))


def test_a_cache_that_cannot_be_written_leaves_the_clip_made(tmp_path, source):
    not_a_dir = write_csv(tmp_path / "cache", b"a file where the cache folder should be")
    ann = csv_of(tmp_path, "val.csv", K400[:1])
    with fs.FaultServer() as server:
        server.add("cachea00001", source)
        assert run_cli(*args(server, "kinetics400", ann, tmp_path / "out", not_a_dir)) == 0
    (rec,) = read_records(tmp_path / "out")
    assert rec["status"] == "ok" and rec["source_kind"] == "youtube" and rec["bytes_fetched"] > 0
    assert frames_of(tmp_path / "out" / rec["outputs"]["video"]) == list(range(200, 300))
    assert not_a_dir.read_bytes() == b"a file where the cache folder should be"


def test_the_option_from_flags_yaml_and_help(tmp_path, capsys):
    from pipeline.options import build_parser, resolve
    base = ["--dataset", "kinetics400", "--annotations", "val.csv", "--output", str(tmp_path / "out")]
    assert resolve(base)[0].sources.clip_cache is None
    assert resolve(base + ["--clip-cache", "gs://bkt/clips/"])[0].sources.clip_cache == "gs://bkt/clips"
    cfg = write_csv(tmp_path / "c.yaml", f"clip_cache: {tmp_path / 'cache'}\n")
    assert resolve(base + ["--config", str(cfg)])[0].sources.clip_cache == str(tmp_path / "cache")
    assert "--clip-cache CLIP_CACHE" in build_parser().format_help()
    # Dataflow workers cannot see a local cache
    pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")
    assert run_cli("--dataset", "kinetics400", "--steps", "fetch", "--runner=DataflowRunner", "--dry_run=True",
                   "--project=p", "--region=us-central1", "--temp_location=gs://bkt/tmp", "--annotations",
                   "gs://bkt/val.csv", "--output", "gs://bkt/out", "--clip-cache", tmp_path / "cache") == 2
    assert f"--clip-cache {tmp_path / 'cache'}" in capsys.readouterr().err
