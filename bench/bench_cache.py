"""YouTube requests and bytes of a second dataset version with and without a shared --clip-cache.

    .venv/bin/python bench/bench_cache.py [--segments 8] [--shared 0.5] [--seconds 60]

A K400-style set of --segments clips (one YouTube id each, 10 s segments) is run with a fresh
--clip-cache; then a K600-style set of as many clips, of which --shared of the segments are the
K400 ones (same youtube id, start and end, other labels and CSV; the rest new ids, and one new
segment of a K400 id), is run twice: with the same cache, and without one into a fresh output. The
"YouTube" is tests/faultserver.py on 127.0.0.1 (real yt-dlp, pad 2 s, steps fetch); every id serves
the same synthetic source. Prints, for the second version, the server's requests and body bytes,
the records' bytes_fetched, and the clips per source_kind (from the manifests). Target: the second
version's YouTube requests fall by the share of segments it shares with the first (no request for
a cached segment).
"""
import argparse
import collections
import contextlib
import io
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import faultserver  # noqa: E402
from pipeline.cli import main as cli  # noqa: E402
from transforms import fetch  # noqa: E402

HEAD = "label,youtube_id,time_start,time_end,split\n"
NOTE = """\
How it is measured:
  requests      = HTTP requests the server got for the run's ids (all of yt-dlp's and of the ffmpeg it
                  runs: 3 per fetched clip here).
  server bytes  = body bytes the server wrote to its sockets; it overstates what the client read (abandoned
                  transfers still fill the loopback buffers), so it varies a little between identical runs.
  bytes_fetched = the records' sum (0 for a cache hit, and for a clip served by another clip's fetch).
  seconds       = wall clock of the run, on a shared machine: not a speed figure."""
LABELS = {"kinetics400": ("abseiling", "archery"), "kinetics600": ("air drumming", "answering questions")}


def sets(segments, shared):
    """(K400 rows, K600 rows, shared segments) as (label, youtube id, start, end)."""
    k400 = [(LABELS["kinetics400"][i % 2], f"bench4{i:05d}", 5 + 5 * (i % 8), 15 + 5 * (i % 8))
            for i in range(segments)]
    n_shared = round(segments * shared)
    k600 = [(LABELS["kinetics600"][i % 2], yid, s, e) for i, (_, yid, s, e) in enumerate(k400[:n_shared])]
    if n_shared < segments:  # a K400 id with another segment: shares the id, not the segment
        _, yid, s, e = k400[-1]
        start = (s + 20) % 40 + 2  # 10 s that do not overlap [s, e), inside the source's first minute
        k600.append((LABELS["kinetics600"][0], yid, start, start + 10))
    k600 += [(LABELS["kinetics600"][i % 2], f"bench6{i:05d}", 5 + 5 * (i % 8), 15 + 5 * (i % 8))
             for i in range(segments - len(k600))]
    return k400, k600, {(yid, s, e) for _, yid, s, e in k400[:n_shared]}


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEAD + "".join(f"{lab},{yid},{s},{e},val\n" for lab, yid, s, e in rows))
    return path


def records(out):
    return [json.loads(line) for p in sorted(pathlib.Path(out, "manifest").glob("*.jsonl"))
            for line in p.read_text().splitlines()]


def run(server, dataset, ann, out, clip_cache):
    """(server requests, server body bytes, records, seconds, {youtube id: requests}) of one run."""
    fetch._WORKER = fetch.WorkerState()
    server.reset_stats()
    argv = ["--dataset", dataset, "--annotations", str(ann), "--output", str(out), "--source", "youtube",
            "--url-template", server.url_template(), "--steps", "fetch", "--clip-timeout", "120"]
    if clip_cache:
        argv += ["--clip-cache", str(clip_cache)]
    began = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own summary table
        assert cli(argv) == 0
    seconds = time.monotonic() - began
    stats = {yid: server.stats(yid) for yid in {r["youtube_id"] for r in records(out)}}
    return (sum(s.requests for s in stats.values()), sum(s.bytes_sent for s in stats.values()), records(out),
            seconds, {yid: s.requests for yid, s in stats.items()})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--segments", type=int, default=8, help="clips in each version")
    ap.add_argument("--shared", type=float, default=0.5, help="share of the second version's segments in the first")
    ap.add_argument("--seconds", type=int, default=60, help="source length (s)")
    args = ap.parse_args(argv)
    k400, k600, shared = sets(args.segments, args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        source = faultserver.make_video(tmp / "source.mp4", args.seconds, fps=25, width=160, height=120)
        print(f"source: {args.seconds} s, 160x120, 25 fps, {os.path.getsize(source):,} bytes, served for every id; "
              f"clips 10 s, pad 2 s, steps fetch")
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}")
        print(f"first version (kinetics400): {len(k400)} segments; second (kinetics600): {len(k600)} segments, "
              f"{len(shared)} of them ({len(shared) / len(k600):.0%}) the first's")
        with faultserver.FaultServer() as server:
            for _, yid, _, _ in k400 + k600:
                server.add(yid, source)
            cache = tmp / "cache"
            first = run(server, "kinetics400", write_csv(tmp / "k400" / "val.csv", k400), tmp / "out400", cache)
            ann = write_csv(tmp / "k600" / "val.csv", k600)
            cached = run(server, "kinetics600", ann, tmp / "out600-cache", cache)
            plain = run(server, "kinetics600", ann, tmp / "out600-plain", None)

    print(f"\n{'run':<34}{'requests':>10}{'server bytes':>14}{'bytes_fetched':>15}{'seconds':>9}  clips by source_kind")
    for name, (requests, sent, recs, seconds, _) in (("first version, cache empty", first),
                                                  ("second version, without cache", plain),
                                                  ("second version, with cache", cached)):
        kinds = collections.Counter(r.get("source_kind") or r["status"] for r in recs)
        shown = ", ".join(f"{k} {n} ({n / len(recs):.0%})" for k, n in sorted(kinds.items()))
        fetched = sum(r.get("bytes_fetched") or 0 for r in recs)
        print(f"{name:<34}{requests:>10,}{sent:>14,}{fetched:>15,}{seconds:>9.1f}  {shown}")

    requests_plain, requests_cached = plain[0], cached[0]
    fall = 1 - requests_cached / requests_plain
    bytes_fall = 1 - cached[1] / plain[1]
    share = len(shared) / len(k600)
    hits = [r for r in cached[2] if r.get("source_kind") == "cache"]
    wrong = [r["clip_id"] for r in cached[2] if ((r["youtube_id"], r["time_start"], r["time_end"]) in shared)
             != (r.get("source_kind") == "cache")]
    print(f"\nsecond version: YouTube requests fall {fall:.1%} ({requests_plain} -> {requests_cached}), "
          f"server bytes fall {bytes_fall:.1%}; shared segments {share:.1%}; "
          f"{len(hits)} clips served by the cache with {sum(r['bytes_fetched'] for r in hits)} bytes fetched")
    asked = sum(cached[4].get(yid, 0) for yid, _, _ in shared)
    print(f"requests for the {len(shared)} shared segments' ids in the run with the cache: {asked}")
    verdict = "meets" if fall >= share - 1e-9 and not wrong and not asked else "MISSES"
    print(f"target: requests fall by the shared share ({share:.0%}), no request for a cached segment: {verdict} it"
          + (f" (not served as expected: {', '.join(wrong)})" if wrong else "") + "\n")
    print(NOTE)


if __name__ == "__main__":
    main()
