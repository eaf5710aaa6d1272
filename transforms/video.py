"""One decode of a source clip into the trimmed clip, the resized clip and RGB frames.

The source is decoded once at full resolution; every frame whose timestamp lies in
[start, end) goes to the outputs that were asked for:

* video:   the exact segment as H.264 at source resolution, audio kept (copied when the
           codec fits MP4, else AAC); a source that already is the segment is remuxed.
* resized: short edge `scale` after rotation, the other side as ffmpeg's `scale=-2:S` rounds it,
           a keyframe every 16 frames when dense, no audio.
* rgb:     img_00001.jpg... at MMAction2's OpenCV size rules, JPEG quality 95.
"""
import contextlib
import ctypes
import dataclasses
import functools
import os
import time
from fractions import Fraction

import av
import cv2
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from transforms import layout, storage
from transforms.optionfields import option, rule

MP4_AUDIO = {"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}
STORES_PTS = {"mov", "mp4", "matroska", "webm", "mpegts", "flv"}
EPS = 1e-6
# A decoded frame keeps its source's picture type (I/P/B), which x264 takes as a forced type; the
# encoders get frames without one, as the ffmpeg CLI gives them (x264 then chooses, B-frames too).
NO_PICTURE_TYPE = PictureType.NONE


class VideoError(Exception):
    """A video that cannot be used; `status` says how (corrupt, short, missing)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class VideoOptions:
    """The video group: how the trimmed clip, the resized clip and the RGB frames are made.

    The field order is the order of each output's options in a record's `params` (plan.output_params):
    keep it when adding one. The launcher checks these options in the order of their rules' ranks,
    the order it has always checked them in (the first broken rule is the error it reports)."""
    trim: str = option("exact", "exact: frames in [start, end), re-encoded unless the source already is the clip; "
                                "copy: stream copy from the keyframe before start (faster, not exact)",
                       choices=("exact", "copy"), shapes=("video",))
    trim_preset: str = option("veryfast", "x264 preset of the trimmed clip's re-encode", shapes=("video",))
    trim_crf: float = option(21.5, "x264 CRF of the trimmed clip's re-encode", shapes=("video",),
                             refuse=rule(lambda v: v < 0, "--trim-crf must be >= 0", rank=5))
    scale: int = option(256, "short edge of the resized clip", shapes=("resized",),
                        refuse=(rule(lambda v: v < 0, "--scale must be >= 0", rank=4),
                                rule(lambda v: v < 2, "--scale must be >= 2 and --flow-bound > 0", rank=10)))
    dense: bool = option(True, "resized clip with a keyframe every 16 frames (MMAction2 --dense); --no-dense for "
                               "x264's default and the videos_{split}_{S}p dir", shapes=("resized",))
    new_short: int = option(256, "short edge of RGB/flow frames (MMAction2's OpenCV rounding); 0 = original size",
                            shapes=("rgb", "flow"), refuse=rule(lambda v: v < 0, "--new-short must be >= 0", rank=7))
    new_width: int = option(0, "fixed frame width (with --new-height)", shapes=("rgb", "flow"),
                            refuse=rule(lambda v: v < 0, "--new-width must be >= 0", rank=8))
    new_height: int = option(0, "fixed frame height (with --new-width)", shapes=("rgb", "flow"),
                             refuse=rule(lambda v: v < 0, "--new-height must be >= 0", rank=9))
    frame_index_base: int = option(1, "number of the first img_/flow_ file: 1 (MMAction2) or 0 (denseflow)",
                                   shapes=("rgb", "flow"),
                                   refuse=rule(lambda v: v not in (0, 1), "--frame-index-base must be 0 or 1", rank=2))
    remove_dup: bool = option(False, "drop duplicate frames from the resized clip, frames and flow (mpdecimate, "
                                     "variable frame rate)", shapes=("resized", "rgb", "flow"))
    upscale: bool = option(True, "upscale inputs smaller than --scale as ffmpeg does; --no-upscale keeps them "
                                 "(denseflow)", shapes=("resized",))
    preset: str = option("veryfast", "x264 preset of the resized clip", name="x264_preset", shapes=("resized",))
    crf: float = option(21.5, "x264 CRF of the resized clip", shapes=("resized",),
                        refuse=rule(lambda v: v < 0, "--crf must be >= 0", rank=6))
    jpeg_quality: int = 95
    min_duration_ratio: float = option(0.8, "a clip shorter than this fraction of its annotated length is 'short'",
                                       refuse=rule(lambda v: not 0 <= v <= 1,
                                                   "--min-duration-ratio must be between 0 and 1", rank=1))

    RULES = (rule(lambda m: bool(m["new_width"]) != bool(m["new_height"]), "--new-width and --new-height go together",
                  rank=3),)


@dataclasses.dataclass(frozen=True)
class Segment:
    """Where a clip lies in a local media file: [start, end) in seconds from its first timestamp."""
    path: str
    start: float
    end: float
    whole: bool = False  # the file already is the clip: remux it rather than re-encode


def scaled_size(w, h, short, upscale=True):
    """ffmpeg's `scale=-2:S` for landscape, `scale=S:-2` otherwise (av_rescale rounding)."""
    if not upscale and min(w, h) <= short:
        return w - w % 2, h - h % 2
    if w > h:
        return (short * w + h) // (2 * h) * 2, short
    return short, (short * h + w) // (2 * w) * 2


def frame_size(w, h, opts):
    """MMAction2's OpenCV rules: a fixed W x H, short edge S with the long side truncated, or as is."""
    if opts.new_width and opts.new_height:
        return opts.new_width, opts.new_height
    s = opts.new_short
    if not s:
        return w, h
    return (s, int(s * h / w)) if w < h else (int(s * w / h), s)


def frame_name(prefix, i, base):
    """The JPEG name of the i-th frame (from 0) numbered from `base`: layout's name for it."""
    return layout.frame_name(prefix, i + base)


def _rotated(rotation):
    return rotation % 180 != 0


def frame_rate(stream):
    """The stream's frame rate: its average, unless that is under 1 fps while the rate its timestamps
    show (FFmpeg's r_frame_rate) is a plausible one (1-240 fps): a timestamp jump or a bogus duration
    that makes a clip of a few seconds claim hours leaves an average of a frame every few minutes."""
    average, guessed = stream.average_rate, stream.guessed_rate
    if average and guessed and average < 1 <= guessed <= 240:
        return guessed
    return average or guessed


def _sar(stream):
    """The source's sample aspect ratio, or None when it has none (0/1 or unset)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar else None


def _rows(plane):
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)


def copy_frame(frame):
    """A new frame holding a copy of `frame`'s pictures, for a writer that must not touch the original."""
    new = av.VideoFrame(frame.width, frame.height, frame.format.name)
    for src, dst in zip(frame.planes, new.planes):
        a, b = _rows(src), _rows(dst)
        n = min(a.shape[1], b.shape[1])
        b[:, :n] = a[:, :n]
    new.colorspace, new.color_range = frame.colorspace, frame.color_range
    return new


class Scaler:
    """Frames to one displayed size, rotation applied, with swscale contexts kept across frames.

    YUV 4:2:0 bicubic for x264 (as ffmpeg's scale filter); BGR bilinear (as cv2.resize) for JPEGs
    and flow, scaled in planar 4:2:2 first because swscale's scaling to packed RGB is slow.
    swscale runs on the calling thread (threads=1). yuv420 always returns a frame of its own.
    """

    def __init__(self, width, height, rotation=0):
        self.size, self.rotation = (width, height), rotation
        self.coded = (height, width) if _rotated(rotation) else (width, height)
        self.scale, self.convert, self.pack = VideoReformatter(), VideoReformatter(), VideoReformatter()

    def yuv420(self, frame):
        if self.rotation:
            turned = av.VideoFrame.from_ndarray(self._turn(self._bgr(frame, "BICUBIC")), format="bgr24")
            return self.pack.reformat(turned, format="yuv420p", threads=1)
        small = self.scale.reformat(frame, *self.size, "yuv420p", interpolation="BICUBIC", threads=1)
        return copy_frame(small) if small is frame else small

    def bgr(self, frame):
        img = self._bgr(frame, "BILINEAR")
        return self._turn(img) if self.rotation else img

    def _bgr(self, frame, interpolation):
        small = self.scale.reformat(frame, *self.coded, "yuv422p", interpolation=interpolation, threads=1)
        return self.convert.reformat(small, *self.coded, "bgr24", threads=1).to_ndarray()

    def _turn(self, img):
        return np.ascontiguousarray(np.rot90(img, k=self.rotation // 90))


def _view(plane):
    return _rows(plane)[:, :plane.width]


MPDECIMATE_FORMATS = {"yuv444p", "yuv422p", "yuv420p", "yuv411p", "yuv410p", "yuv440p", "yuvj444p", "yuvj422p",
                      "yuvj420p", "yuvj440p", "yuva420p", "gbrp", "yuva444p", "yuva422p"}


def planes(frame, rotation=0):
    """The planes mpdecimate compares (other formats as yuv420p), as displayed (rotation applied)."""
    if frame.format.name not in MPDECIMATE_FORMATS:
        frame = frame.reformat(format="yuv420p", threads=1)
    views = [_view(p) for p in frame.planes]
    if not rotation:
        return views
    return [np.ascontiguousarray(np.rot90(v, k=rotation // 90)) for v in views]


def block_sads(cur, ref):
    """mpdecimate's 8x8 sums of absolute differences: blocks every 4 pixels, from row 0 and column 8."""
    h, w = cur.shape
    if h < 8 or w < 16:
        return np.zeros(0, np.int32)
    s = cv2.integral(cv2.absdiff(cur, ref))
    return s[8::4, 16::4] - s[:-8:4, 16::4] - s[8::4, 8:-8:4] + s[:-8:4, 8:-8:4]


class Decimate:
    """ffmpeg's mpdecimate with its defaults (hi 64*12, lo 64*5, frac 0.33, max 0, keep 0): a frame is
    dropped when, on every plane, no 8x8 block differs from the last kept frame by more than hi and
    no more than (w/16)*(h/16)*frac blocks differ by more than lo."""

    def __init__(self, hi=64 * 12, lo=64 * 5, frac=0.33):
        self.hi, self.lo, self.frac = hi, lo, np.float32(frac)
        self.ref = None

    def keep(self, *planes):
        if self.ref is not None and not self._differs(planes):
            return False
        self.ref = [p.copy() for p in planes]
        return True

    def _differs(self, planes):
        if [p.shape for p in planes] != [r.shape for r in self.ref]:
            return True
        return any(self._plane_differs(p, r) for p, r in zip(planes, self.ref))

    def _plane_differs(self, cur, ref):
        h, w = cur.shape
        sad = block_sads(cur, ref)
        limit = int(np.float32((w // 16) * (h // 16)) * self.frac)
        return sad.size > 0 and (sad.max() > self.hi or np.count_nonzero(sad > self.lo) > limit)


class BestEffort:
    """ffmpeg's frame timestamps: libavcodec's guess_correct_pts (pts unless it has gone backwards
    more often than dts), then, as the ffmpeg CLI, a missing one extrapolated from the last frame's
    duration. Frames timed by dts alone (AVI) carry the dts of the packet that made the decoder
    return them, so they lag by the decoder's delay: that lag is taken off, which puts the first
    frame at the first packet's dts (the stream's start) rather than a frame or two after it.
    A timestamp that does not advance is bumped one tick, since encoders need increasing ones."""

    def __init__(self, step=1):
        self.pts_faults = self.dts_faults = 0
        self.last_pts = self.last_dts = self.last = self.first_dts = None
        self.step = self.duration = step
        self.lag = 0

    def saw(self, packet):
        if self.first_dts is None:
            self.first_dts = packet.dts

    def __call__(self, frame):
        ts = self._guess(frame.pts, frame.dts)
        if ts is None:
            ts = 0 if self.last is None else self.last + self.duration
        if self.last is None and frame.pts is None and self.first_dts is not None:
            self.lag = max(0, ts - self.first_dts)
        self.duration = self._duration(frame, -1 if self.last is None else ts - self.last)
        if self.last is not None:
            ts = max(ts, self.last + 1)
        self.last = ts
        return ts - self.lag

    def _guess(self, pts, dts):
        if dts is not None:
            self.dts_faults += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.pts_faults += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        return pts if pts is not None and (self.pts_faults <= self.dts_faults or dts is None) else dts

    def _duration(self, frame, gap):
        if frame.duration and frame.duration > 0 and not (frame.duration == 1 and gap > 2):
            return frame.duration
        return gap if gap > 0 else self.step


class WriteError(Exception):
    """An output could not be encoded or written (our side, not the source's)."""


class _Timer:
    """Times an output's work, and tells its errors apart from the source's decode errors."""

    def __init__(self, kind):
        self.kind = kind
        self.seconds = 0.0

    @contextlib.contextmanager
    def __call__(self):
        t = time.perf_counter()
        try:
            yield
        except (av.error.FFmpegError, OSError, ValueError) as e:
            raise WriteError(f"cannot write the {self.kind}: {e}") from None
        finally:
            self.seconds += time.perf_counter() - t


def _standard_layout(layout):
    """A named channel layout AAC accepts (sources sometimes carry only a channel count)."""
    if not layout.name.endswith("channels"):
        return layout.name
    return {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}.get(
        layout.nb_channels, "stereo")


M_PERTURB = -6  # glibc's mallopt parameter; byte 0xff: malloc fills with 0x00, free with 0xff


@functools.cache
def zero_filled_heap():
    """Make every malloc of this process return zeros, as a fresh mmap does; True where it took.

    x264 reads memory it allocated but did not write yet (the bitstreams differ only in the first
    GOP, while its frame pool fills, and not without its x86 assembly), so what it made depended on
    what the process's heap held before: a resized clip came out differently after other clips
    (2 to 10 distinct files of one source). With allocations zero-filled the bitstream is the
    one a fresh process makes, whatever ran before. glibc only (mallopt M_PERTURB; 1.01x the CPU
    per clip, bench/bench_heap.py); elsewhere nothing changes and False is returned."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return bool(mallopt and mallopt(M_PERTURB, 0xFF) == 1)


def x264_stream(out, rate):
    """A libx264 stream in `out`, one encoder thread; the heap zero-filled first (zero_filled_heap)."""
    zero_filled_heap()
    stream = out.add_stream("libx264", rate=rate)
    stream.codec_context.thread_count = 1
    return stream


def _x264(out, vs, width, height, preset, crf, sar):
    stream = x264_stream(out, frame_rate(vs) or 25)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = vs.time_base
    stream.options = {"preset": preset, "crf": f"{crf:g}", "threads": "1"}
    if sar is not None and sar != 1:
        stream.sample_aspect_ratio = sar
    return stream


class _Trimmed:
    """The exact segment, timestamps from 0: re-encoded frames, or copied packets (`remux`: the
    whole file; `copy`: from the keyframe at or before start), plus audio copied or as AAC."""

    def __init__(self, path, vs, audio, opts, mode, span):
        self.timer = _Timer("trimmed clip")
        self.mode = mode  # encode | remux | copy
        self.time_base = vs.time_base
        self.a, self.b, self.t0 = span
        with self.timer():
            self._open(path, vs, audio, opts)
        self.gop, self.kept = [], []
        self.copying = self.done = False

    def _open(self, path, vs, audio, opts):
        self.out = av.open(path, "w", format="mp4")
        if self.mode == "encode":
            cc = vs.codec_context
            self.video = _x264(self.out, vs, cc.width, cc.height, opts.trim_preset, opts.trim_crf, _sar(vs))
        else:
            self.video = self.out.add_stream_from_template(vs)
        self.audio = self.transcode = None
        if audio is not None:
            if audio.codec_context.codec.canonical_name in MP4_AUDIO:
                self.audio = self.out.add_stream_from_template(audio)
            else:
                layout = _standard_layout(audio.layout)
                self.audio = self.transcode = self.out.add_stream("aac", rate=audio.rate)
                self.audio.layout, self.audio.format = layout, "fltp"
                self.resampler = av.AudioResampler(format="fltp", layout=layout, rate=audio.rate)

    def _time(self, ts, packet):
        return Fraction(ts) * packet.time_base - self.t0

    def set_rotation(self, rotation):
        if rotation and self.mode == "encode":
            self.video.set_display_rotation(rotation)

    def frame(self, frame, pts):
        with self.timer():
            frame.pts, frame.time_base, frame.pict_type = pts, self.time_base, NO_PICTURE_TYPE
            for p in self.video.encode(frame):
                self.out.mux(p)

    def video_packet(self, packet):
        """Keep the packets a copy needs: all for remux; for copy the GOP holding start, to end."""
        if self.mode == "remux":
            self.kept.append(packet)
        elif self.mode == "copy" and not self.done:
            t = self._time(packet.dts, packet)
            if self.copying:
                if t >= self.b - EPS:
                    self.done = True
                else:
                    self.kept.append(packet)
                return
            if packet.is_keyframe:
                self.gop = [packet]
            elif self.gop:
                self.gop.append(packet)
            if self.gop and t >= self.a - EPS:
                self.copying, self.kept, self.gop = True, self.gop, []

    def audio_packet(self, packet):
        if self.audio is None or packet.pts is None:
            return
        t = self._time(packet.pts, packet)
        lead = 30 if self.mode == "copy" else 0
        if self.mode != "remux" and not (self.a - lead - EPS <= t < self.b - EPS):
            return
        if self.transcode is None:
            self.kept.append(packet)
            return
        for frame in packet.decode():
            with self.timer():
                for chunk in self.resampler.resample(frame):
                    chunk.pts = None
                    for p in self.transcode.encode(chunk):
                        self.out.mux(p)

    def close(self):
        with self.timer():
            if self.mode == "encode":
                for p in self.video.encode(None):
                    self.out.mux(p)
            if self.transcode is not None:
                for p in self.transcode.encode(None):
                    self.out.mux(p)
            self._mux_kept()
            self.out.close()

    def _mux_kept(self):
        """Copied packets, shifted so that the clip (or the snapped keyframe) starts at 0."""
        videos = [p for p in self.kept if p.stream.type == "video"]
        if self.mode == "remux":
            start = self.t0
        elif self.mode == "copy" and videos:
            start = self.t0 + min(self._time(p.pts, p) for p in videos if p.pts is not None)
        else:
            start = self.t0 + self.a
        for p in sorted(self.kept, key=lambda p: self._time(p.dts if p.dts is not None else p.pts, p)):
            if p.stream.type == "audio" and self.mode == "copy" and self._time(p.pts, p) + self.t0 < start - EPS:
                continue
            shift = int(round(start / p.time_base))
            target = self.video if p.stream.type == "video" else self.audio
            p.pts = None if p.pts is None else p.pts - shift
            p.dts = None if p.dts is None else p.dts - shift
            p.stream = target
            self.out.mux(p)


class _Resized:
    def __init__(self, path, w, h, sar, vs, opts, rotation):
        self.timer = _Timer("resized clip")
        self.size = (w, h)
        self.time_base = vs.time_base
        self.scaler = Scaler(w, h, rotation)
        self.frames = 0
        with self.timer():
            self.out = av.open(path, "w", format="mp4")
            self.video = _x264(self.out, vs, w, h, opts.preset, opts.crf, sar)
            if opts.dense:
                self.video.codec_context.gop_size = 16

    def frame(self, frame, pts):
        with self.timer():
            small = self.scaler.yuv420(frame)
            small.pts, small.time_base, small.pict_type = pts, self.time_base, NO_PICTURE_TYPE
            for p in self.video.encode(small):
                self.out.mux(p)
            self.frames += 1

    def close(self):
        with self.timer():
            for p in self.video.encode(None):
                self.out.mux(p)
            self.out.close()


class _Frames:
    def __init__(self, folder, w, h, opts, rotation):
        self.timer = _Timer("RGB frames")
        self.folder, self.size, self.opts = folder, (w, h), opts
        self.scaler = Scaler(w, h, rotation)
        os.makedirs(folder, exist_ok=True)
        self.count = 0
        self.bytes = 0
        self.params = [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality]

    def frame(self, frame):
        with self.timer():
            ok, data = cv2.imencode(".jpg", self.scaler.bgr(frame), self.params)
            name = layout.rgb_name(self.count + self.opts.frame_index_base)
            with open(os.path.join(self.folder, name), "wb") as f:
                f.write(data)
            self.count += 1
            self.bytes += len(data)


class _PastEnd:
    """When reading a segment's source can stop: a frame at or after the segment's end has been
    decoded (frame times only increase, so none that follows is wanted), the packets a copy keeps
    are all in, and the audio has reached the end too, or the video is AUDIO_SLACK s past it (audio
    that ends early). The rest of a long source, hours of it perhaps, is never read. `end` None: a
    whole clip, read to its end."""

    AUDIO_SLACK = 10

    def __init__(self, end, audio, copy):
        self.end, self.copy = end, copy
        self.audio_done = not audio
        self.last = None

    def video(self, t):
        if self.end is not None and t >= self.end - EPS:
            self.last = t

    def audio(self, packet, t0):
        if self.end is not None and packet.pts is not None and \
                Fraction(packet.pts) * packet.time_base - t0 >= self.end - EPS:
            self.audio_done = True

    def done(self, trimmed):
        if self.last is None or (self.copy and not trimmed.done):
            return False
        return self.audio_done or self.last >= self.end + self.AUDIO_SLACK


def _is_whole(container, vs, segment):
    """A file that already is the clip (named by clip id) and not much longer than it."""
    if not segment.whole:
        return False
    duration = vs.duration * vs.time_base if vs.duration else (container.duration or 0) / 1e6
    return float(duration) <= segment.end - segment.start + 0.5


def _stores_pts(container):
    """Containers whose packets carry presentation times (AVI has decode times only)."""
    return bool(STORES_PTS & set(container.format.name.split(",")))


def _plan(container, vs, whole, opts):
    """How the trimmed clip is made: remux a whole H.264 clip, copy packets, or encode."""
    h264 = vs.codec_context.name == "h264" and _stores_pts(container)
    if whole and h264:
        return "remux"
    if opts.trim == "copy" and h264:
        return "copy"
    return "encode"


@dataclasses.dataclass(frozen=True)
class VideoResult:
    """What one decode of a segment made: facts for the record and the local files.

    `files` {kind: local path} holds the outputs made (video, resized, rgb); the resized_* and
    frame_size/rgb_frames facts are there exactly when the resized clip and the RGB frames were
    made. `seconds` is {step: seconds} (trim, resize, rgb, decode), rounded to ms.
    """
    frames: int
    width: int
    height: int
    duration: float
    fps: float | None
    files: dict
    seconds: dict
    resized_size: tuple | None = None
    resized_frames: int | None = None
    frame_size: tuple | None = None
    rgb_frames: int | None = None

    def as_dict(self):
        """The dict `process` returns (and the record takes), keys in their record order."""
        out = {"frames": self.frames, "width": self.width, "height": self.height, "duration": self.duration,
               "fps": self.fps}
        if self.resized_size is not None:
            out["resized_size"] = list(self.resized_size)
            out["resized_frames"] = self.resized_frames
        if self.frame_size is not None:
            out["frame_size"] = list(self.frame_size)
            out["rgb_frames"] = self.rgb_frames
        out["seconds"] = dict(self.seconds)
        out["files"] = dict(self.files)
        return out


def process(segment, want, opts, workdir):
    """Decode `segment` once and write the outputs in `want` (video, resized, rgb) under workdir.

    Returns {"files": {kind: local path}, facts for the record...} (`process_segment(...).as_dict()`);
    raises VideoError for a clip that is corrupt, short or absent, leaving whatever it wrote for
    the caller to delete.
    """
    return process_segment(segment, want, opts, workdir).as_dict()


def process_segment(segment, want, opts, workdir):
    """As `process`, the result as a VideoResult."""
    try:
        return _process(segment, set(want), opts, workdir)
    except av.error.FileNotFoundError:
        raise VideoError("missing", "no such file") from None
    except WriteError as e:
        raise VideoError("failed", str(e)) from None
    except av.error.FFmpegError as e:
        raise VideoError("corrupt", f"cannot read the source: {e}") from None


def _process(segment, want, opts, workdir):
    started = time.perf_counter()
    with av.open(segment.path, metadata_errors="ignore") as container:
        source = _open_source(container, segment, want, opts)
        writers = _Writers(source, want, opts, workdir)
        decoded = _decode(source, writers, opts)
        return _summary(source, decoded, writers, opts, started)


@dataclasses.dataclass(frozen=True)
class _Source:
    """An open source and the segment in its terms: [a, b) in seconds from its first timestamp t0
    (exact fractions), whether it already is the clip, how the trimmed clip is made (None: not
    asked for), its frame rate and the pts shift that puts the segment's start at 0."""
    container: object
    vs: object
    audio: object
    t0: Fraction
    a: Fraction
    b: Fraction
    whole: bool
    mode: str | None
    rate: object
    shift: int


def _open_source(container, segment, want, opts):
    container.flags &= ~av.container.Flags.gen_pts.value  # as the ffmpeg CLI: no guessed pts
    if not container.streams.video:
        raise VideoError("corrupt", "no video stream")
    vs = container.streams.video[0]
    vs.codec_context.thread_count = 1
    audio = container.streams.audio[0] if container.streams.audio else None
    t0 = Fraction(container.start_time or 0, 1_000_000)
    a, b = Fraction(segment.start).limit_denominator(10**6), Fraction(segment.end).limit_denominator(10**6)
    whole = _is_whole(container, vs, segment)
    mode = _plan(container, vs, whole, opts) if "video" in want else None
    shift = int(round((a + t0) / vs.time_base))
    return _Source(container, vs, audio, t0, a, b, whole, mode, frame_rate(vs), shift)


def displayed(width, height, rotation):
    """(width, height) of a coded width x height picture as displayed with `rotation` degrees."""
    return (height, width) if _rotated(rotation) else (width, height)


def resized_sar(sar, rotation, displayed_size, resized_size):
    """The resized clip's sample aspect ratio: the source's (None: none, and none is written), turned
    with the picture, times the change of shape scaling makes, so that the display aspect is kept."""
    if sar is None:
        return None
    (dw, dh), (rw, rh) = displayed_size, resized_size
    return (1 / sar if _rotated(rotation) else sar) * Fraction(rh * dw, rw * dh)


class _Writers:
    """The outputs asked for. The trimmed clip is opened at once (how it is made is known from the
    source); the resized clip and the frames at the first frame of the segment, whose rotation
    fixes their sizes. `files` {kind: local path} of the outputs opened."""

    def __init__(self, source, want, opts, workdir):
        self.source, self.want, self.opts, self.workdir = source, want, opts, workdir
        self.files = {}
        self.trimmed = self.resized = self.frames = None
        if source.mode:
            self.files["video"] = os.path.join(workdir, "video.mp4")
            self.trimmed = _Trimmed(self.files["video"], source.vs, source.audio, opts, source.mode,
                                    (source.a, source.b, source.t0))

    def start(self, rotation):
        """At the segment's first frame, displayed with `rotation`: open the resized clip and frames."""
        vs, opts = self.source.vs, self.opts
        if self.trimmed:
            self.trimmed.set_rotation(rotation)
        dw, dh = displayed(vs.codec_context.width, vs.codec_context.height, rotation)
        if "resized" in self.want:
            self.files["resized"] = os.path.join(self.workdir, "resized.mp4")
            rw, rh = scaled_size(dw, dh, opts.scale, opts.upscale)
            sar = resized_sar(_sar(vs), rotation, (dw, dh), (rw, rh))
            self.resized = _Resized(self.files["resized"], rw, rh, sar, vs, opts, rotation)
        if "rgb" in self.want:
            self.files["rgb"] = os.path.join(self.workdir, "rgb")
            self.frames = _Frames(self.files["rgb"], *frame_size(dw, dh, opts), opts, rotation)

    def frame(self, frame, pts, kept):
        """One frame of the segment at `pts` (source time base); `kept`: not a dropped duplicate."""
        shifted = pts - self.source.shift
        if kept:
            if self.resized:
                self.resized.frame(frame, shifted)
            if self.frames:
                self.frames.frame(frame)
        if self.source.mode == "encode":
            self.trimmed.frame(frame, shifted)

    def _closing(self):
        return [w for w in (self.trimmed, self.resized) if w]

    def close(self):
        for writer in self._closing():
            writer.close()

    def close_quietly(self):
        _close_quietly(self._closing())


@dataclasses.dataclass
class Decoded:
    """What the decode loop saw: frames in the segment (`count`), frames decoded in all, the
    segment's first and last frame times (s) and the rotation of its first frame."""
    count: int = 0
    decoded: int = 0
    first: Fraction | None = None
    last: Fraction | None = None
    rotation: int = 0


def _decode(source, writers, opts):
    """Demux and decode until the segment is past (see _PastEnd), feeding the writers; closes them.
    A decode error part-way is `corrupt`, naming how far it got."""
    vs, t0, a, b, mode, trimmed = source.vs, source.t0, source.a, source.b, source.mode, writers.trimmed
    got = Decoded()
    decimate = Decimate() if opts.remove_dup else None
    timestamp = BestEffort(max(1, round(1 / (source.rate * vs.time_base))) if source.rate else 1)
    with_audio = source.audio is not None and trimmed is not None
    streams = [vs] + ([source.audio] if with_audio else [])
    past = _PastEnd(None if source.whole else b, with_audio, mode == "copy")
    try:
        for packet in source.container.demux(*streams):
            if packet.stream.type == "audio":
                trimmed.audio_packet(packet)
                past.audio(packet, t0)
                if past.done(trimmed):
                    break
                continue
            if mode in ("remux", "copy") and packet.dts is not None:
                trimmed.video_packet(packet)
            if packet.dts is not None:
                timestamp.saw(packet)
            for frame in packet.decode():
                got.decoded += 1
                pts = timestamp(frame)
                t = Fraction(pts) * vs.time_base - t0
                if t < a - EPS or (not source.whole and t >= b - EPS):
                    past.video(t)
                    continue
                if got.first is None:
                    got.first, got.rotation = t, frame.rotation or 0
                    writers.start(got.rotation)
                got.last = t
                got.count += 1
                kept = decimate is None or decimate.keep(*planes(frame, got.rotation))
                writers.frame(frame, pts, kept)
            if past.done(trimmed):
                break
    except av.error.FFmpegError as e:
        writers.close_quietly()
        at = f" at {float(got.last):.2f} s" if got.last is not None else ""
        raise VideoError("corrupt", f"decode error after {got.decoded} frames{at}: {e}") from None
    except BaseException:
        writers.close_quietly()
        raise
    writers.close()
    return got


def covered_seconds(decoded, a, b, rate, min_ratio):
    """The seconds the segment's frames cover (first to last frame, plus one frame's duration at
    `rate`) once the loop has seen `decoded` (Decoded) for [a, b); VideoError when no frame lies
    in it (`corrupt` when none decoded at all) or they cover less than `min_ratio` of it (`short`)."""
    if decoded.count == 0:
        if decoded.decoded == 0:
            raise VideoError("corrupt", "no decodable video frame")
        raise VideoError("short", f"no frame in [{float(a):g}, {float(b):g}) s of the source")
    step = 1 / Fraction(rate) if rate else Fraction(0)
    covered = float(decoded.last - decoded.first + step)
    wanted = float(b - a)
    if covered < min_ratio * wanted:
        raise VideoError("short", f"{covered:.2f} s of {wanted:g} s annotated")
    return covered


def _summary(source, decoded, writers, opts, started):
    """The VideoResult of a finished decode (the checks of covered_seconds first); `started` is
    when the decode began (perf_counter), the writers' own time is taken off it for `decode`."""
    covered = covered_seconds(decoded, source.a, source.b, source.rate, opts.min_duration_ratio)
    cc, rate = source.vs.codec_context, source.rate
    dw, dh = displayed(cc.width, cc.height, decoded.rotation)
    trimmed, resized, frames = writers.trimmed, writers.resized, writers.frames
    seconds = {}
    if trimmed:
        seconds["trim"] = trimmed.timer.seconds
    if resized:
        seconds["resize"] = resized.timer.seconds
    if frames:
        seconds["rgb"] = frames.timer.seconds
    seconds["decode"] = time.perf_counter() - started - sum(seconds.values())
    return VideoResult(
        frames=decoded.count, width=dw, height=dh, duration=round(covered, 3),
        fps=round(float(rate), 3) if rate else None, files=writers.files,
        seconds={k: round(v, 3) for k, v in seconds.items()},
        resized_size=tuple(resized.size) if resized else None, resized_frames=resized.frames if resized else None,
        frame_size=tuple(frames.size) if frames else None, rgb_frames=frames.count if frames else None)


def display_size(path):
    """(width, height) of a video's first frame as displayed (rotation applied)."""
    with av.open(path) as container:
        container.streams.video[0].codec_context.thread_count = 1
        frame = next(container.decode(video=0))
        return displayed(frame.width, frame.height, frame.rotation or 0)


def _close_quietly(writers):
    for writer in writers:
        with contextlib.suppress(Exception):
            writer.close()


def probe(url, expected_duration, *, full=False, min_ratio=0.8):
    """Check that `url` is a usable clip of about `expected_duration` seconds.

    The quick probe opens it, decodes the first frame and reads the duration from the
    container; a duration longer than the clip could last (longest_clip) is checked, not believed:
    the probe seeks to where the clip must have ended and decodes on from the keyframe there, so a
    header or a timestamp jump that claims hours costs a GOP, not hours. `full=True` decodes every
    frame instead, stopping at the first one past that bound. Returns facts for the record
    (frames, width, height, duration) or raises VideoError.
    """
    longest = longest_clip(expected_duration)
    try:
        with open_container(url) as container:
            if not container.streams.video:
                raise VideoError("corrupt", "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            frames, first, last, rotation = 0, None, None, 0
            try:
                for frame in container.decode(stream):
                    rotation = rotation or frame.rotation or 0
                    if frame.pts is not None:
                        t = float(frame.pts * frame.time_base)
                        first = t if first is None else first
                        last = t
                        if t - first > longest:
                            raise VideoError("corrupt", f"more than {longest:g} s long (a frame at {t:.2f} s), "
                                                        f"{expected_duration:g} s annotated: not the trimmed clip")
                    frames += 1
                    if not full:
                        break
            except av.error.FFmpegError as e:
                raise VideoError("corrupt", f"decode error after {frames} frames: {e}") from None
            if frames == 0:
                raise VideoError("corrupt", "no decodable frame")
            rate = frame_rate(stream)
            step = 1 / float(rate) if rate else 0.0
            if full:
                duration = (last - first + step) if first is not None else None
            else:
                duration = _duration(container, stream)
                frames = stream.frames or None
                if duration is not None and duration > longest and first is not None:
                    end = _last_frame_by(container, stream, first + longest)
                    if end is not None:  # the header overstates it: the frames end in time
                        duration, frames = end - first + step, None
            w, h = stream.codec_context.width, stream.codec_context.height
            info = {"width": h if _rotated(rotation) else w, "height": w if _rotated(rotation) else h,
                    "duration": round(duration, 3) if duration is not None else None}
            if frames:
                info["frames"] = frames
    except FileNotFoundError:
        raise VideoError("missing", "no such file") from None
    except av.error.FFmpegError as e:
        raise VideoError("corrupt", f"decode error: {e}") from None
    if duration is None:
        raise VideoError("corrupt", "unknown duration")
    if duration < min_ratio * expected_duration:
        raise VideoError("short", f"{duration:.2f} s of {expected_duration:g} s annotated")
    if duration > longest:
        raise VideoError("corrupt", f"{duration:.2f} s long, {expected_duration:g} s annotated: not the trimmed clip")
    return info


def _last_frame_by(container, stream, limit):
    """The time of the stream's last frame when none lies past `limit` (seconds), else None (also when
    the source cannot seek): decoded from the keyframe at or before `limit`."""
    try:
        container.seek(int(limit / stream.time_base), stream=stream)
    except (av.error.FFmpegError, OSError, ValueError):
        return None
    last = None
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        t = float(frame.pts * frame.time_base)
        if t > limit:
            return None
        last = t
    return last


def longest_clip(annotated):
    """The longest a trimmed clip may plausibly last (a keyframe-snapped copy starts early)."""
    return max(2 * annotated, annotated + 10)


@contextlib.contextmanager
def open_container(url):
    """av.open on a local path directly, or on an fsspec file object for remote urls."""
    if storage.is_local(url):
        _, path = storage.filesystem(url)
        with av.open(path, metadata_errors="ignore") as container:
            yield container
        return
    fs, path = storage.filesystem(url)
    with fs.open(path, "rb") as f, av.open(f, metadata_errors="ignore") as container:
        yield container


def _duration(container, stream):
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return None
