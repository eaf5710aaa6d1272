"""The spine at full scale: wall time, clips/s and peak RSS of the largest SDK worker and of the
launcher, for Kinetics-700-sized train splits, side by side in one run.

Input: synthetic train rows (the K700 labels, random 11-character ids, 10 s segments). Runs are
`kinetics-prep --dataset kinetics700 --steps filelists` on `--runner=FnApiRunner
--direct_running_mode=multi_processing --direct_num_workers=2`, each a subprocess of this script:

* `missing`: over an empty tree (every clip probed and recorded missing; ~450-byte records),
  for each --rows size, then the largest of --rerun-rows run again over its own finished output;
* `ok`: over a tree whose ledger holds a finished run's records (~1.6 kB each, every field a real
  `ok` record has: outputs, sizes, params, seconds, fetch fields) and a placeholder file at each
  video path, so the records flow through as `exists` at full size; for each --ok-rows size.

Peak RSS: every 0.2 s the command's process tree is walked in /proc and each process's VmHWM
kept (bench_scale.py's sampler). Ledger bytes: the launcher runs under an audit hook that adds
up the size of every file under `_ledger/` it opens for reading (it should be 0: progress reads
the workers' tallies under `_progress/`, whose bytes are printed too).

    .venv/bin/python bench/bench_spine_scale.py [--rows 20000,200000,545000] [--ok-rows 20000,200000]
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_scale import sample_peaks  # noqa: E402
from transforms.ledger import Ledger  # noqa: E402
from transforms.reader import clean_class_dir  # noqa: E402
from transforms.records import Clip  # noqa: E402

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# The launcher: kinetics-prep with an audit hook counting what it opens under _ledger/ and _progress/.
LAUNCH = """
import atexit, os, runpy, sys
read = {"_ledger": 0, "_progress": 0}
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and (args[1] in (None, "r", "rb") or "r" in str(args[1])):
        for part in read:
            if f"/{part}/" in args[0] and os.path.isfile(args[0]):
                read[part] += os.path.getsize(args[0])
sys.addaudithook(hook)
atexit.register(lambda: print("LAUNCHER_READ", read["_ledger"], read["_progress"], file=sys.stderr, flush=True))
sys.argv = ["kinetics-prep"] + sys.argv[1:]
runpy.run_module("pipeline", run_name="__main__")
"""


def make_rows(n, labels, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start = rng.randrange(0, 600)
        rows.append((rng.choice(labels), "".join(rng.choice(ALPHABET) for _ in range(11)), start, start + 10))
    return rows


def write_csv(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("label,youtube_id,time_start,time_end,split\n")
        for label, yid, start, end in rows:
            f.write(f'"{label}",{yid},{start},{end},train\n')
    return path


def ok_record(clip, i):
    """A finished clip's record with every field a fetched, resized, framed and flowed clip has."""
    base = f"{clip.class_dir}/{clip.clip_id}"
    video, resized, frames = f"videos_train/{base}.mp4", f"videos_train_256p_dense_cache/{base}.mp4", f"rawframes_train/{base}"
    params = {"video": {"trim": "exact", "trim_preset": "veryfast", "trim_crf": 18.0},
              "resized": {"scale": 256, "dense": True, "remove_dup": False, "upscale": True,
                          "x264_preset": "veryfast", "crf": 21.5},
              "rgb": {"new_short": 256, "new_width": 0, "new_height": 0, "frame_index_base": 1, "remove_dup": False},
              "flow": {"new_short": 256, "new_width": 0, "new_height": 0, "frame_index_base": 1, "remove_dup": False,
                       "flow_algorithm": "dis", "flow_bound": 20.0}}
    return clip.record(
        "ok", "", source=f"https://www.youtube.com/watch?v={clip.youtube_id}",
        outputs={"video": video, "resized": resized, "rgb": frames, "flow": frames},
        sizes={"video": 912345 + i, "resized": 312345 + i, "rgb": 4123456 + i, "flow": 2123456 + i},
        params=params, frames=300, width=640, height=360, duration=10.0, fps=29.97, resized_size=[455, 256],
        resized_frames=300, frame_size=[455, 256], rgb_frames=300, flow_frames=299, flow_source=resized,
        seconds={"fetch": 3.412, "decode": 0.811, "trim": 1.102, "resize": 0.523, "rgb": 0.377, "flow": 2.913,
                 "total": 9.216},
        format_id="18", ytdlp_version="2026.10.21", attempts=1, fetch_window=[clip.time_start - 1, clip.time_end + 1],
        fetch_segment=True, fetch_range=[clip.time_start - 1, clip.time_end + 1], bytes_fetched=1234567 + i,
        run_id="0" * 32, verified="full")


def plant_ok(out, rows, labels):
    """A finished run's ledger and a placeholder at each video path; returns one record's JSON size."""
    ledger = Ledger(str(out))
    index = {label: i for i, label in enumerate(labels)}
    size = 0
    for line, (label, yid, start, end) in enumerate(rows, 2):
        cls = clean_class_dir(label)
        clip = Clip("train", label, index[label], cls, yid, float(start), float(end),
                    f"{yid}_{start:06d}_{end:06d}", "train.csv", line, (0, line))
        rec = ok_record(clip, line)
        ledger.write(rec)
        path = out / rec["outputs"]["video"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        size = size or len(json.dumps(rec))
    return size


def run(ann, out):
    cmd = [sys.executable, "-c", LAUNCH, "--dataset", "kinetics700", "--annotations", str(ann), "--splits", "train",
           "--steps", "filelists", "--output", str(out), "--runner=FnApiRunner",
           "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    start = time.monotonic()
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:  # a file, not a pipe: a long log must not block the command
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, text=True)
        peaks, names = sample_peaks(proc)
    wall = time.monotonic() - start
    stderr = log.read_text()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}):\n{stderr[-3000:]}")
    read = next(line.split()[1:] for line in stderr.splitlines() if line.startswith("LAUNCHER_READ"))
    workers = [kib / 1024 for pid, kib in peaks.items() if "sdk_worker_main" in names[pid]]
    summary = json.loads((out / "summary.json").read_text())
    lines = [line for line in stderr.splitlines() if line.startswith("[progress]")]
    return {"wall": wall, "clips": summary["total"], "worker": max(workers, default=0.0), "workers": len(workers),
            "launcher": peaks.get(proc.pid, 0) / 1024, "ledger_bytes": int(read[0]), "progress_bytes": int(read[1]),
            "manifests": len(list((out / "manifest").iterdir())), "last_progress": lines[-1] if lines else "-"}


def show(kind, n, r):
    clips = sum(r["clips"].values())
    statuses = ",".join(f"{s} {c}" for s, c in sorted(r["clips"].items()))
    print(f"{kind:>8} {n:>8} {r['wall']:>8.1f} {clips / r['wall']:>8.0f} {r['worker']:>11.0f} {r['launcher']:>13.0f} "
          f"{r['ledger_bytes']:>13} {r['progress_bytes']:>15} {r['manifests']:>10}  {statuses}", flush=True)
    print(f"{'':>8} last progress line: {r['last_progress']}", flush=True)
    if clips != n:
        print(f"{'':>8} MISMATCH: summary.json counts {clips} records for {n} rows", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="20000,200000,545000", help="train rows of the `missing` runs")
    ap.add_argument("--rerun-rows", type=int, default=200000, help="the `missing` run to run again (0: none)")
    ap.add_argument("--ok-rows", default="20000,200000", help="train rows of the `ok` runs ('' for none)")
    ap.add_argument("--work", help="work dir (default: a temp dir, removed)")
    args = ap.parse_args()
    labels = (ROOT / "configs" / "label_map_k700.txt").read_text().splitlines()
    sizes = [int(x) for x in args.rows.split(",") if x]
    ok_sizes = [int(x) for x in args.ok_rows.split(",") if x]
    with tempfile.TemporaryDirectory(prefix="bench-spine-", dir=args.work) as tmp:
        work = Path(tmp)
        print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}; --steps filelists, 2 "
              "multi_processing workers, K700 labels, random ids", flush=True)
        print(f"{'records':>8} {'rows':>8} {'wall s':>8} {'clips/s':>8} {'worker MiB':>11} {'launcher MiB':>13} "
              f"{'ledger bytes':>13} {'progress bytes':>15} {'manifests':>10}  statuses", flush=True)
        results = {}
        for n in sizes:
            ann = write_csv(work / f"train_{n}.csv", make_rows(n, labels))
            results[n] = run(ann, work / f"missing_{n}")
            show("missing", n, results[n])
        if args.rerun_rows in results:
            n = args.rerun_rows
            again = run(work / f"train_{n}.csv", work / f"missing_{n}")
            show("re-run", n, again)
            print(f"re-run of {n}: {again['wall']:.1f} s vs first run {results[n]['wall']:.1f} s = "
                  f"{again['wall'] / results[n]['wall']:.2f}x (target <= 1.0x)", flush=True)
        ok = {}
        for n in ok_sizes:
            rows = make_rows(n, labels, seed=1)
            ann = write_csv(work / f"ok_{n}.csv", rows)
            size = plant_ok(work / f"ok_{n}", rows, labels)
            ok[n] = run(ann, work / f"ok_{n}")
            show("ok", n, ok[n])
            print(f"{'':>8} (one planted record: {size} bytes of JSON)", flush=True)
        for name, res in (("missing", results), ("ok", ok)):
            if len(res) > 1:
                small, large = min(res), sorted(res)[1]
                print(f"{name}: largest worker at {large} rows = {res[large]['worker'] / res[small]['worker']:.2f}x "
                      f"its peak at {small} (target <= 1.5x); launcher {res[large]['launcher'] / res[small]['launcher']:.2f}x",
                      flush=True)
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
