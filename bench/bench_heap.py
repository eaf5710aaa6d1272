"""What the zero-filled heap (video.zero_filled_heap, for x264's same-bytes output) costs per clip.

    .venv/bin/python bench/bench_heap.py [--rounds 6] [--clips 5] [--seconds 10]

A synthetic 640x360 25 fps source of --seconds is made once; each round runs two fresh Python
processes side by side in turn, one with the heap zero-filled (as the pipeline runs) and one with
zero_filled_heap() made a no-op, each putting the clip through video.process (trimmed, resized,
RGB frames) --clips times after one warm-up. Prints each process's median CPU seconds per clip and
how many distinct resized clips it made, then the ratio of the medians over all rounds (target: at
most 1.05) and the distinct resized clips over all processes of each kind (with it: 1).
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

CHILD = """
import hashlib, json, os, shutil, statistics, sys, time
sys.path[:0] = [sys.argv[1]]
import transforms.video as video
if sys.argv[2] == "off":
    video.zero_filled_heap = lambda: False
src, n, work = sys.argv[3], int(sys.argv[4]), sys.argv[5]
seconds, digests = [], set()
for i in range(n + 1):
    folder = os.path.join(work, str(i))
    os.makedirs(folder)
    t = time.process_time()
    r = video.process(video.Segment(src, 0, float(sys.argv[6]), True), ("video", "resized", "rgb"),
                      video.VideoOptions(), folder)
    if i:
        seconds.append(time.process_time() - t)
    digests.add(hashlib.md5(open(r["files"]["resized"], "rb").read()).hexdigest())
    shutil.rmtree(folder)
print(json.dumps({"median": statistics.median(seconds), "digests": sorted(digests)}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    from pipeline.demo import synthetic_video
    work = tempfile.mkdtemp(prefix="bench-heap-")
    try:
        src = os.path.join(work, "src.mp4")
        synthetic_video(src, args.seconds, fps=25, width=640, height=360, seed=11, audio=True)
        medians, digests = {"on": [], "off": []}, {"on": set(), "off": set()}
        print(f"load average before: {os.getloadavg()[0]:.2f}; {args.clips} clips of {args.seconds:g} s per process")
        for r in range(args.rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                out = subprocess.run([sys.executable, "-c", CHILD, ROOT, mode, src, str(args.clips),
                                      os.path.join(work, f"{r}-{mode}"), str(args.seconds)],
                                     capture_output=True, text=True, check=True)
                got = json.loads(out.stdout.strip().splitlines()[-1])
                medians[mode].append(got["median"])
                digests[mode].update(got["digests"])
                print(f"round {r} zero-filled {mode:3}: {got['median']:.3f} CPU s per clip, "
                      f"{len(got['digests'])} distinct resized clip(s)")
        on, off = statistics.median(medians["on"]), statistics.median(medians["off"])
        print(f"median CPU s per clip: zero-filled {on:.3f}, not {off:.3f}; ratio {on / off:.3f} (target <= 1.05)")
        print(f"distinct resized clips over all processes: zero-filled {len(digests['on'])}, "
              f"not {len(digests['off'])} (target: 1 zero-filled)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
