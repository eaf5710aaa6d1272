"""The video stage against the incumbent, side by side in one run, on one core.

Incumbent per clip: `ffmpeg -i IN -vf scale=-2:256 -c:v libx264 -g 16 -an OUT` (a subprocess),
then MMAction2's OpenCV frame pass over OUT (--new-short 256, cv2.imwrite q95), then CPU TV-L1
(denseflow: grey frames of OUT, DualTVL1 defaults, bound 20, JPEG). Ours: one PyAV decode of IN
into the resized clip and RGB frames (transforms.video.process), then the flow stage (a decode of
the resized clip to grey, transforms.flow.write_flow). Sources: a real Kinetics clip (the
MMAction2/decord "flipping pancake" fixture, 300 frames at 30 fps) scaled to 360p and 720p and
encoded as YouTube does (x264 high, CRF 23, 5 s GOP).

Flow is timed on pairs spread through the clip (the middles of equal stretches, never the static
first pair alone), after one untimed warm-up pair, ours and raw OpenCV TV-L1 interleaved pair by
pair (each side makes a fresh DualTVL1 per pair); a clip's flow time is the per-pair median
times its pair count. Times are CPU seconds (user + sys of this process and its children, on
one pinned core), so other load on the machine does not skew them. PSNR is on luma (Y).

    .venv/bin/python bench/bench_video.py [--reps 3] [--flow-pairs 6]
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

os.sched_setaffinity(0, {0})  # every figure is one core; children inherit it

import av  # noqa: E402
import cv2  # noqa: E402
import imageio_ffmpeg  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from transforms.flow import grey_frames, make_flow, quantize, write_flow  # noqa: E402
from transforms.video import Segment, VideoOptions, process, scaled_size  # noqa: E402

cv2.setNumThreads(1)
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
FIXTURE = ROOT.parent / "shared" / "fixtures" / "videos" / "decord_flipping_a_pancake.mkv"


def make_source(path, width, height, frames=300, fps=30):
    """Real footage scaled to width x height (played back and forth if it has fewer frames)."""
    with av.open(str(FIXTURE)) as c:
        src = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    order = []
    while len(order) < frames:
        order += list(range(len(src))) + list(range(len(src) - 2, 0, -1))
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"crf": "23", "preset": "medium", "profile": "high", "g": "150"}
        for i, k in enumerate(order[:frames]):
            f = av.VideoFrame.from_ndarray(cv2.resize(src[k], (width, height), interpolation=cv2.INTER_CUBIC),
                                           format="bgr24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(v.encode(f))
        out.mux(v.encode(None))


def cpu_seconds():
    """User + sys time of this process and its finished children: other load on the machine does not count."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args):
    t = cpu_seconds()
    out = fn(*args)
    return cpu_seconds() - t, out


def incumbent_resize(src, out):
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(src), "-vf", "scale=-2:256",
                    "-c:v", "libx264", "-g", "16", "-an", str(out), "-y"], check=True)


def incumbent_frames(video, folder):
    """MMAction2 build_rawframes --use-opencv --new-short 256 (mmcv VideoReader + imrescale + imwrite)."""
    os.makedirs(folder, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    i = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        h, w = img.shape[:2]
        size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
        img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        i += 1
        cv2.imwrite(os.path.join(folder, f"img_{i:05d}.jpg"), img)
    return i


def flow_pairs(video, count):
    """(`count` consecutive-frame pairs at the middles of equal stretches of the clip, as grey frames
    of its size; the clip's pair count)."""
    with av.open(str(video)) as c:
        size = (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height)
    frames = list(grey_frames(str(video), size))
    n = len(frames) - 1
    return [(frames[i], frames[i + 1]) for i in (int((k + 0.5) * n / count) for k in range(count))], n


def grey_opencv(video):
    """denseflow's decode: VideoCapture frames converted to grey."""
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            return frames
        frames.append(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))


def raw_tvl1(a, b, folder):
    """denseflow's CPU work per pair: OpenCV TV-L1 defaults, bound-20 quantisation, two JPEGs."""
    os.makedirs(folder, exist_ok=True)
    flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None)
    for axis, prefix in ((0, "flow_x_"), (1, "flow_y_")):
        cv2.imwrite(os.path.join(folder, f"{prefix}00001.jpg"), quantize(flow[..., axis], 20))
    return flow


def ours_flow(a, b, folder, algorithm):
    return write_flow([a, b], folder, algorithm=algorithm)


def time_flows(pairs, work):
    """{name: [seconds per pair]} and the raw TV-L1 flows (the reference for end-point errors)."""
    raw_tvl1(*pairs[0], work / "warm")
    ours_flow(*pairs[0], work / "warm", "tvl1")
    times, reference = defaultdict(list), []
    for i, (a, b) in enumerate(pairs):
        steps = [("raw OpenCV TV-L1", raw_tvl1, ()), ("ours tvl1", ours_flow, ("tvl1",))]
        for name, fn, extra in steps if i % 2 == 0 else steps[::-1]:
            t, out = timed(fn, a, b, work / f"{name}-{i}", *extra)
            times[name].append(t)
            if fn is raw_tvl1:
                reference.append(out)
        for alg in ("tvl1-fast", "farneback", "dis"):
            times[f"ours {alg}"].append(timed(ours_flow, a, b, work / f"{alg}-{i}", alg)[0])
    return times, reference


def end_point_errors(pairs, reference):
    epe = {}
    for alg in ("tvl1-fast", "farneback", "dis"):
        fn = make_flow(alg)
        epe[alg] = float(np.mean([np.mean(np.linalg.norm(fn(a, b) - r, axis=2))
                                  for (a, b), r in zip(pairs, reference)]))
    return epe


def reference_frames(src, size):
    """Uncompressed bicubic downscale of the source: the yardstick for both resized clips."""
    with av.open(str(src)) as c:
        return [f.reformat(*size, "yuv420p", interpolation="BICUBIC").to_ndarray()[:size[1]] for f in c.decode(video=0)]


def psnr(video, reference):
    with av.open(str(video)) as c:
        got = [f.reformat(format="yuv420p").to_ndarray()[:reference[0].shape[0]] for f in c.decode(video=0)]
    n = min(len(got), len(reference))
    mse = np.mean([np.mean((got[i].astype(np.float64) - reference[i]) ** 2) for i in range(n)])
    return 10 * np.log10(255 ** 2 / mse)


def median(xs):
    return statistics.median(xs)


def bench(label, src, reps, flow_pairs_count, work):
    opts = VideoOptions()
    with av.open(str(src)) as c:
        cc = c.streams.video[0].codec_context
        size = scaled_size(cc.width, cc.height, 256)
    rows = {k: [] for k in ("inc_resize", "inc_frames", "ours_resize_rgb", "ours_trim")}
    for rep in range(reps):
        d = Path(work) / f"{label}-{rep}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        t, _ = timed(incumbent_resize, src, d / "inc.mp4")
        rows["inc_resize"].append(t)
        t, n = timed(incumbent_frames, d / "inc.mp4", d / "inc_rgb")
        rows["inc_frames"].append(t)
        (d / "ours").mkdir()
        t, r = timed(process, Segment(str(src), 0, 10), {"resized", "rgb"}, opts, str(d / "ours"))
        rows["ours_resize_rgb"].append(t)
        (d / "trim").mkdir()
        t, _ = timed(process, Segment(str(src), 0, 10), {"video"}, opts, str(d / "trim"))
        rows["ours_trim"].append(t)
    last = Path(work) / f"{label}-{reps - 1}"
    ref = reference_frames(src, size)
    quality = {"incumbent (medium, crf 23)": psnr(last / "inc.mp4", ref),
               f"ours ({opts.preset}, crf {opts.crf})": psnr(last / "ours" / "resized.mp4", ref)}

    pairs, n = flow_pairs(last / "inc.mp4", flow_pairs_count)
    times, reference = time_flows(pairs, last / "flow")
    flows = {name: median(ts) for name, ts in times.items()}
    paired = median(o / r for o, r in zip(times["ours tvl1"], times["raw OpenCV TV-L1"]))
    decode = {"incumbent": timed(grey_opencv, last / "inc.mp4")[0],
              "ours": timed(lambda: list(grey_frames(str(last / "ours" / "resized.mp4"), size)))[0]}
    return rows, quality, flows, end_point_errors(pairs, reference), r, {"pairs": n, "decode": decode,
                                                                         "tvl1_ratio": paired}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flow-pairs", type=int, default=6, help="flow pairs timed per algorithm, spread over "
                                                             "the clip (TV-L1 costs ~1-2 s a pair)")
    args = ap.parse_args()
    if not FIXTURE.exists():
        sys.exit(f"needs the real footage at {FIXTURE}")
    work = tempfile.mkdtemp(prefix="bench-video-")
    try:
        for label, (w, h) in (("360p", (640, 360)), ("720p", (1280, 720))):
            src = Path(work) / f"{label}.mp4"
            make_source(src, w, h)
            report(label, *bench(label, src, args.reps, args.flow_pairs, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(label, rows, quality, flows, epe, r, clip):
    m = {k: median(v) for k, v in rows.items()}
    inc = m["inc_resize"] + m["inc_frames"]
    print(f"\n== {label} source, 10 s, 300 frames, one core, CPU seconds (median of {len(rows['inc_resize'])}) ==")
    print(f"incumbent resize (ffmpeg CLI, medium crf 23)   {m['inc_resize']:.3f} s")
    print(f"incumbent frames (OpenCV pass over the 256p)   {m['inc_frames']:.3f} s")
    print(f"incumbent resize + frames                      {inc:.3f} s   {1 / inc:.2f} clips/s/core")
    print(f"ours resize + rgb, one decode                  {m['ours_resize_rgb']:.3f} s   "
          f"{1 / m['ours_resize_rgb']:.2f} clips/s/core   (wall: decode {r['seconds']['decode']:.2f}, "
          f"resize {r['seconds']['resize']:.2f}, rgb {r['seconds']['rgb']:.2f})")
    print(f"  speed-up resize+rgb: {inc / m['ours_resize_rgb']:.2f}x  (target >= 1.6x on 360p)")
    print(f"ours exact trim (re-encode at source size)     {m['ours_trim']:.3f} s")
    for name, value in quality.items():
        print(f"PSNR (Y) of the resized clip, {name:27s} {value:.2f} dB")
    a, b = quality.values()
    print(f"  PSNR (Y) difference: {b - a:+.2f} dB (target within 0.3 dB)")
    n = clip["pairs"]
    for name, seconds in flows.items():
        print(f"flow {name:20s} {seconds * 1000:9.1f} ms/pair   ~{seconds * n:7.1f} s/clip ({n} pairs)")
    print(f"  ours tvl1 / raw OpenCV TV-L1, median of the per-pair ratios: {clip['tvl1_ratio']:.3f} "
          "(target within 5 %)")
    print(f"  dis speed-up over ours tvl1: {flows['ours tvl1'] / flows['ours dis']:.0f}x (target >= 100x)")
    print("  mean end-point error against TV-L1 defaults: " + ", ".join(f"{k} {v:.2f} px" for k, v in epe.items()))
    print(f"overall per clip, resize + rgb + flow ({n} flow pairs; decode to grey: incumbent "
          f"{clip['decode']['incumbent']:.2f} s, ours {clip['decode']['ours']:.2f} s):")
    total_inc = inc + clip["decode"]["incumbent"] + flows["raw OpenCV TV-L1"] * n
    print(f"  incumbent (TV-L1)     {total_inc:8.1f} s   {1 / total_inc:.4f} clips/s/core")
    for alg in ("tvl1", "tvl1-fast", "farneback", "dis"):
        total = m["ours_resize_rgb"] + clip["decode"]["ours"] + flows[f"ours {alg}"] * n
        print(f"  ours {alg:16s} {total:8.1f} s   {1 / total:.4f} clips/s/core   {total_inc / total:6.2f}x")


if __name__ == "__main__":
    main()
