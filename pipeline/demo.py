"""The built-in demo: a small synthetic Kinetics-style set, generated offline with PyAV."""
import base64
import csv
import hashlib
import os
from fractions import Fraction

import av
import cv2
import numpy as np

from transforms.video import x264_stream

CLIPS_PER_CLASS = {"train": 2, "val": 1}
SPLIT_FILES = {"train": "train.csv", "val": "validate.csv"}
DEAD = "dead-video1"   # annotated, but no source exists: a removed YouTube video
SHORT = "short-video"  # the source ends 4 s into the annotated 10 s segment


BARCODE_BITS = 12


def synthetic_video(path, seconds, *, fps=25, width=320, height=240, seed=0, audio=True, crf=20):
    """Write an H.264 (+AAC) mp4 of moving shapes with the frame number drawn in each frame,
    in digits and as a barcode of BARCODE_BITS blocks along the top (see read_barcode)."""
    rng = np.random.default_rng(seed)
    colour = tuple(int(c) for c in rng.integers(40, 220, 3))
    background = np.zeros((height, width, 3), np.uint8)
    background[:] = rng.integers(0, 60, 3)
    cv2.rectangle(background, (0, height - 40), (width, height), (90, 90, 90), -1)
    speed = rng.uniform(1.5, 3.5, 2)
    n = int(round(seconds * fps))
    with av.open(path, "w") as out:
        v = x264_stream(out, fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"preset": "ultrafast", "crf": str(crf), "threads": "1"}
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i in range(n):
            img = background.copy()
            x = int((width / 2 + i * speed[0]) % width)
            y = int((height / 2 + 40 * np.sin(i * speed[1] / fps)) % (height - 60))
            cv2.circle(img, (x, y + 10), 22, colour, -1)
            cv2.rectangle(img, ((x * 2) % width, 20), ((x * 2) % width + 30, 60), colour[::-1], -1)
            cv2.putText(img, f"{i:05d}", (8, height - 10), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (255, 255, 255), 2)
            block = width // BARCODE_BITS
            for bit in range(BARCODE_BITS):
                img[:block // 2, bit * block:(bit + 1) * block] = 255 if i >> bit & 1 else 0
            frame = av.VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            samples = int(seconds * 44100)
            t = np.arange(samples) / 44100
            wave = (0.2 * np.sin(2 * np.pi * (220 + 40 * seed % 5) * t)).astype(np.float32)
            for start in range(0, samples, 1024):
                chunk = wave[start:start + 1024].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = 44100
                frame.pts = start
                frame.time_base = Fraction(1, 44100)
                out.mux(a.encode(frame))
            out.mux(a.encode(None))


def read_barcode(bgr):
    """The frame number synthetic_video drew into a decoded frame (any size, same aspect)."""
    h, w = bgr.shape[:2]
    block = w / BARCODE_BITS
    row = bgr[max(0, int(block / 4) - 1), :, :].mean(axis=1)
    return sum(1 << bit for bit in range(BARCODE_BITS) if row[int((bit + 0.5) * block)] > 127)


def demo_id(label, split, i):
    """A stable YouTube-style id (11 characters of [A-Za-z0-9_-])."""
    digest = hashlib.sha1(f"{label}/{split}/{i}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()[:11]


def rows(labels):
    out = []
    for split, per_class in CLIPS_PER_CLASS.items():
        for label in labels:
            for i in range(per_class):
                start = 2 + 3 * i
                out.append((label, demo_id(label, split, i), start, start + 10, split))
    out.append((labels[0], DEAD, 5, 15, "val"))
    out.append((labels[-1], SHORT, 2, 12, "val"))
    return out


def prepare(settings):
    """Write the demo's annotation CSVs and full-length source videos, unless already there."""
    inputs = os.path.dirname(settings.reading.annotations[0])
    videos = settings.sources.video_root or os.path.join(inputs, "videos")
    os.makedirs(videos, exist_ok=True)
    all_rows = rows(list(settings.reading.labels))
    for n, (label, yid, start, end, split) in enumerate(all_rows):
        path = os.path.join(videos, f"{yid}.mp4")
        if yid == DEAD or os.path.exists(path):
            continue
        synthetic_video(path + ".tmp.mp4", 6 if yid == SHORT else end + 2, fps=15, seed=n)
        os.replace(path + ".tmp.mp4", path)
    for split, name in SPLIT_FILES.items():
        path = os.path.join(inputs, name)
        if os.path.exists(path):
            continue
        with open(path + ".tmp", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows((lab, yid, s, e, "validate" if sp == "val" else sp)
                        for lab, yid, s, e, sp in all_rows if sp == split)
        os.replace(path + ".tmp", path)
