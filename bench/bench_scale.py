"""Local scale-up: clips/s with 1 vs 2 multi_processing workers, and peak RSS per worker for
a small vs a 10x larger input, side by side in one run.

Input: synthetic full-length sources (pipeline.demo.synthetic_video), a few distinct ones
hard-linked under one YouTube-style id per clip, and a Kinetics-400 style CSV; the run is
`kinetics-prep --dataset kinetics400 --source local --video-root SRC --steps STEPS` on
`--runner=FnApiRunner --direct_running_mode=multi_processing --direct_num_workers=W`, each in
a fresh output dir (nothing skipped by the ledger), as a subprocess of this script.

Throughput: end to end = clips / wall time of the whole command (includes ~5 s of start-up
and the final writes); steady = clips finished per second between the first and the last
ledger write (the per-clip rate once workers are busy); and the median of the records'
seconds.total (one clip's time inside a worker).

Memory: every 0.2 s the command's process tree is walked in /proc and each process's VmHWM
(the kernel's peak resident set size for that process) is kept; the last value read before
a process exits is its peak, missing at most the last 0.2 s. SDK workers are the processes
running apache_beam.runners.worker.sdk_worker_main; each one's peak is printed (and the
largest compared between input sizes); the launcher is reported apart.

    .venv/bin/python bench/bench_scale.py [--clips 200] [--rss-clips 100,1000] [--steps fetch,resize,rgb]
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pipeline.demo import synthetic_video  # noqa: E402

LABELS = ("abseiling", "air drumming", "archery", "bowling", "juggling balls", "yoga", "zumba", "surfing water")


def make_input(work, clips, distinct, seconds, size):
    """CSV with `clips` rows (one per YouTube-style id) and the sources they point at."""
    src = work / "sources"
    src.mkdir(parents=True, exist_ok=True)
    pool = []
    for i in range(distinct):
        path = src / f"_pool{i}.mp4"
        if not path.exists():
            synthetic_video(str(path), seconds + 2, width=size[0], height=size[1], seed=i)
        pool.append(path)
    ann = work / f"train_{clips}.csv"
    with open(ann, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for n in range(clips):
            yid = f"b{n:010d}"
            link = src / f"{yid}.mp4"
            if not link.exists():
                os.link(pool[n % distinct], link)
            w.writerow([LABELS[n % len(LABELS)], yid, 1, 1 + seconds, "train"])
    return ann, src


def _tree(root):
    """{pid: cmdline} of `root` and its descendants."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        todo += children.get(pid, [])
    return out


def _hwm_kib(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def sample_peaks(proc, every=0.2):
    """({pid: peak RSS in KiB}, {pid: cmdline}) of `proc` and its descendants, sampled until it exits."""
    peaks, names = {}, {}
    while proc.poll() is None:
        for pid, cmdline in _tree(proc.pid).items():
            hwm = _hwm_kib(pid)
            if hwm:
                peaks[pid] = max(peaks.get(pid, 0), hwm)
                names[pid] = cmdline
        time.sleep(every)
    return peaks, names


def run(ann, src, out, workers, steps, extra):
    cmd = [sys.executable, "-m", "pipeline", "--dataset", "kinetics400", "--annotations", str(ann),
           "--splits", "train", "--source", "local", "--video-root", str(src), "--steps", steps,
           "--output", str(out), "--runner=FnApiRunner", "--direct_running_mode=multi_processing",
           f"--direct_num_workers={workers}", *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks, names = sample_peaks(proc)
    wall = time.monotonic() - start
    log = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{log[-3000:]}")
    ledger = [p for p in (out / "_ledger").rglob("*.json")]
    stamps = sorted(p.stat().st_mtime for p in ledger)
    records = [json.loads(p.read_text()) for p in ledger]
    statuses = [r["status"] for r in records]
    per_clip = sorted(r.get("seconds", {}).get("total", 0) for r in records)
    worker_rss = [kib / 1024 for pid, kib in sorted(peaks.items())
                  if "sdk_worker_main" in names[pid] and Path(names[pid].split()[0]).name.startswith("python")]
    return {"wall": wall, "clips": len(ledger), "ok": statuses.count("ok"), "median_s": per_clip[len(per_clip) // 2],
            "steady": (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"),
            "workers_seen": len(worker_rss), "worker_rss_mib": max(worker_rss, default=0),
            "each_worker_mib": worker_rss, "launcher_rss_mib": peaks.get(proc.pid, 0) / 1024}


def each(r):
    """Every worker's peak RSS in MiB, in process start (pid) order."""
    return " ".join(f"{mib:.1f}" for mib in r["each_worker_mib"]) or "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=200, help="clips for the 1 vs 2 worker runs")
    ap.add_argument("--rss-clips", default="100,1000", help="the two input sizes for peak RSS (2 workers)")
    ap.add_argument("--steps", default="fetch,resize,rgb", help="kinetics-prep --steps")
    ap.add_argument("--seconds", type=int, default=10, help="clip length")
    ap.add_argument("--size", default="320x240", help="source frame size WxH")
    ap.add_argument("--distinct", type=int, default=4, help="distinct source videos (hard-linked)")
    ap.add_argument("--work", help="work dir (default: a temp dir, removed)")
    ap.add_argument("extra", nargs="*", help="more kinetics-prep options, after --")
    args = ap.parse_args()
    size = tuple(int(x) for x in args.size.split("x"))
    rss_sizes = [int(x) for x in args.rss_clips.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scale-", dir=args.work) as tmp:
        work = Path(tmp)
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; steps {args.steps}; "
              f"{args.seconds} s clips from {args.distinct} distinct synthetic {args.size} sources", flush=True)
        ann, src = make_input(work, max([args.clips] + rss_sizes), args.distinct, args.seconds, size)

        def subset(n):
            lines = ann.read_text().splitlines(keepends=True)
            path = work / f"train_{n}.csv"
            path.write_text("".join(lines[:n + 1]))
            return path

        speed = {}
        print(f"\nthroughput, {args.clips} clips, same input:", flush=True)
        print(f"{'workers':>7} {'wall s':>8} {'clips/s end-to-end':>19} {'clips/s steady':>15} {'ok':>6} "
              f"{'worker processes':>17} {'median s/clip in worker':>24}  peak MiB of each worker")
        for workers in (1, 2):
            r = run(subset(args.clips), src, work / f"out_w{workers}", workers, args.steps, args.extra)
            speed[workers] = r
            print(f"{workers:>7} {r['wall']:>8.1f} {args.clips / r['wall']:>19.2f} {r['steady']:>15.2f} "
                  f"{r['ok']:>6} {r['workers_seen']:>17} {r['median_s']:>24.3f}  {each(r)}", flush=True)
        print(f"speed-up 2 vs 1 workers: end-to-end {speed[1]['wall'] / speed[2]['wall']:.2f}x, "
              f"steady {speed[2]['steady'] / speed[1]['steady']:.2f}x (target >= 1.7x)")

        print("\npeak RSS, 2 workers:", flush=True)
        print(f"{'clips':>7} {'wall s':>8} {'workers seen':>13} {'max worker MiB':>15} {'launcher MiB':>13}  "
              f"peak MiB of each worker")
        rss = {}
        for n in rss_sizes:
            r = run(subset(n), src, work / f"out_rss{n}", 2, args.steps, args.extra)
            rss[n] = r
            print(f"{n:>7} {r['wall']:>8.1f} {r['workers_seen']:>13} {r['worker_rss_mib']:>15.1f} "
                  f"{r['launcher_rss_mib']:>13.1f}  {each(r)}", flush=True)
        small, large = rss[rss_sizes[0]], rss[rss_sizes[-1]]
        print(f"peak RSS {rss_sizes[-1]} vs {rss_sizes[0]} clips: worker "
              f"{large['worker_rss_mib'] / small['worker_rss_mib']:.3f}x, launcher "
              f"{large['launcher_rss_mib'] / small['launcher_rss_mib']:.3f}x (target: within 10 %)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
