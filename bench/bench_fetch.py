"""Segment-only fetch vs full download of one 10 s clip from a 5-minute source served on 127.0.0.1.

    .venv/bin/python bench/bench_fetch.py [--reps 3] [--seconds 300] [--clip 150] [--link-mbps 50]

Generates an H.264 source (2 s GOP, moov at the front like YouTube's progressive mp4) once into a
temp dir, serves it with tests/faultserver.py, and fetches the clip [clip, clip + 10] with
transforms.fetch (real yt-dlp, pad 2 s), alternating segment-only and full downloads. The server
paces every response at about --link-mbps (0: loopback speed, where the ~0.7 s start-up of each
fetch's worker process dominates the seconds). Prints medians and the segment/full ratios; the
target is a byte ratio of at most 25 %.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import faultserver  # noqa: E402
from transforms import fetch  # noqa: E402

YOUTUBE_ID = "benchsource"
TARGET = 0.25
NOTE = """\
How bytes are measured:
  client  = FetchResult.bytes_fetched: the size of the file yt-dlp wrote (for a segment: the packets from
            the keyframe before start-pad to end+pad, stream-copied; the index ffmpeg reads is not in it).
  server  = body bytes the server wrote to its sockets for this fetch, the extractor's content-type sniff
            included. It overstates what the client read: a transfer the client abandons (the sniff, each
            ffmpeg seek) was still filling the loopback socket buffers (server send buffer 64 KiB, client
            receive buffer up to several MiB) until the client closed it.
  seconds = FetchResult.seconds: wall clock of fetch(), the ~0.7 s start-up of its worker process included."""


def fetch_once(server, options, clip):
    before = server.stats(YOUTUBE_ID).bytes_sent
    with tempfile.TemporaryDirectory() as workdir:
        result = fetch.Fetcher(options, worker=fetch.WorkerState()).fetch(YOUTUBE_ID, clip, clip + 10, workdir)
    return result, server.stats(YOUTUBE_ID).bytes_sent - before


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=300, help="source length (s)")
    ap.add_argument("--clip", type=float, default=150.0, help="clip start (s); the clip is 10 s")
    ap.add_argument("--link-mbps", type=float, default=50.0, help="pace responses at this many Mbit/s (0: unpaced)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        began = time.monotonic()
        source = faultserver.make_video(os.path.join(tmp, "source.mp4"), args.seconds, fps=25, width=160,
                                        height=120, gop_seconds=2.0)
        size = os.path.getsize(source)
        print(f"source: {args.seconds} s, 160x120, 25 fps, 2 s GOP, {size:,} bytes "
              f"(generated in {time.monotonic() - began:.1f} s); clip [{args.clip:g}, {args.clip + 10:g}] s, pad 2 s; "
              f"link {f'{args.link_mbps:g} Mbit/s' if args.link_mbps else 'unpaced loopback'}")
        runs = {"segment": [], "full": []}
        with faultserver.FaultServer() as server:
            server.add(YOUTUBE_ID, source)
            if args.link_mbps:
                server.plan(YOUTUBE_ID, then=faultserver.trickle(args.link_mbps * 1e6 / 8))
            for _ in range(args.reps):
                for mode in runs:
                    options = fetch.FetchOptions(url_template=server.url_template(), segment=mode == "segment")
                    result, served = fetch_once(server, options, args.clip)
                    assert result.segment == (mode == "segment")
                    runs[mode].append((result.bytes_fetched, served, result.seconds))

    med = {mode: [statistics.median(col) for col in zip(*rows)] for mode, rows in runs.items()}
    print(f"\n{'median of ' + str(args.reps):<14}{'client bytes':>14}{'server bytes':>14}{'seconds':>10}")
    for mode, (client, served, seconds) in med.items():
        print(f"{mode:<14}{client:>14,.0f}{served:>14,.0f}{seconds:>10.2f}")
    ratio = [s / f for s, f in zip(med["segment"], med["full"])]
    print(f"{'segment/full':<14}{ratio[0]:>14.1%}{ratio[1]:>14.1%}{ratio[2]:>10.1%}")
    verdict = "meets" if ratio[0] <= TARGET and ratio[1] <= TARGET else "MISSES"
    print(f"\ntarget segment/full <= {TARGET:.0%}: {verdict} it (client {ratio[0]:.1%}, server {ratio[1]:.1%})\n")
    print(NOTE)
    return 0 if verdict == "meets" else 1


if __name__ == "__main__":
    sys.exit(main())
