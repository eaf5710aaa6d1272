"""The pieces of the video stage's decode (transforms/video.py) that are plain functions and values:
the typed result and its dict, display sizes, the resized clip's aspect ratio, the coverage check."""
import os
from fractions import Fraction

import pytest

from conftest import make_video
from transforms.video import (Decoded, Segment, VideoError, VideoOptions, VideoResult, covered_seconds, displayed,
                              process, process_segment, resized_sar)


def test_result_as_dict_in_record_order():
    r = VideoResult(frames=30, width=96, height=64, duration=3.0, fps=10.0, files={"video": "/w/video.mp4"},
                    seconds={"trim": 0.1, "decode": 0.2})
    d = r.as_dict()
    assert list(d) == ["frames", "width", "height", "duration", "fps", "seconds", "files"]
    assert d == {"frames": 30, "width": 96, "height": 64, "duration": 3.0, "fps": 10.0,
                 "seconds": {"trim": 0.1, "decode": 0.2}, "files": {"video": "/w/video.mp4"}}
    d["files"]["rgb"] = "x"
    assert r.files == {"video": "/w/video.mp4"}  # the dict is the caller's to pop from


def test_result_as_dict_with_resized_and_frames():
    r = VideoResult(frames=30, width=96, height=64, duration=3.0, fps=None, files={}, seconds={},
                    resized_size=(384, 256), resized_frames=28, frame_size=(384, 256), rgb_frames=28)
    d = r.as_dict()
    assert list(d) == ["frames", "width", "height", "duration", "fps", "resized_size", "resized_frames",
                       "frame_size", "rgb_frames", "seconds", "files"]
    assert d["resized_size"] == [384, 256] and d["frame_size"] == [384, 256] and d["fps"] is None
    assert (d["resized_frames"], d["rgb_frames"]) == (28, 28)
    with pytest.raises(AttributeError):
        r.frames = 1  # frozen


@pytest.mark.parametrize("rotation,size", [(0, (640, 360)), (90, (360, 640)), (-90, (360, 640)),
                                           (180, (640, 360)), (270, (360, 640))])
def test_displayed(rotation, size):
    assert displayed(640, 360, rotation) == size


def test_resized_sar_keeps_the_display_aspect():
    assert resized_sar(None, 0, (176, 144), (312, 256)) is None
    sar = Fraction(128, 117)
    assert resized_sar(sar, 0, (176, 144), (312, 256)) == sar * Fraction(256 * 176, 312 * 144)
    assert resized_sar(sar, 90, (144, 176), (256, 312)) == (1 / sar) * Fraction(312 * 144, 256 * 176)
    # display aspect of the source (w * sar / h) equals that of the resized clip
    out = resized_sar(sar, 0, (176, 144), (312, 256))
    assert Fraction(176, 144) * sar == Fraction(312, 256) * out


def test_covered_seconds():
    one, two = Fraction(1), Fraction(2)
    assert covered_seconds(Decoded(count=10, decoded=12, first=one, last=Fraction(19, 10)), one, two, 10, 0.8) == 1.0
    assert covered_seconds(Decoded(count=1, decoded=1, first=one, last=one), one, Fraction(11, 10), None, 0) == 0.0
    with pytest.raises(VideoError) as e:
        covered_seconds(Decoded(), one, two, 10, 0.8)
    assert (e.value.status, e.value.reason) == ("corrupt", "no decodable video frame")
    with pytest.raises(VideoError) as e:
        covered_seconds(Decoded(decoded=5), Fraction(3, 2), two, 10, 0.8)
    assert (e.value.status, e.value.reason) == ("short", "no frame in [1.5, 2) s of the source")
    with pytest.raises(VideoError) as e:
        covered_seconds(Decoded(count=7, decoded=7, first=one, last=Fraction(16, 10)), one, two, 10, 0.8)
    assert (e.value.status, e.value.reason) == ("short", "0.70 s of 1 s annotated")


def test_process_is_the_typed_result_as_a_dict(tmp_path):
    src = make_video(tmp_path / "src.mp4", seconds=3, fps=10)
    want = ("video", "resized", "rgb")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    typed = process_segment(Segment(str(src), 0.5, 2.5), want, VideoOptions(), str(tmp_path / "a"))
    plain = process(Segment(str(src), 0.5, 2.5), want, VideoOptions(), str(tmp_path / "b"))
    assert isinstance(typed, VideoResult) and typed.frames == 20 == typed.rgb_frames == typed.resized_frames
    assert (typed.width, typed.height, typed.duration, typed.fps) == (96, 64, 2.0, 10.0)
    assert typed.resized_size == (384, 256) and typed.frame_size == (384, 256)
    assert set(typed.seconds) == {"trim", "resize", "rgb", "decode"}
    assert set(typed.files) == set(want) and all(os.path.exists(p) for p in typed.files.values())
    expected = typed.as_dict()
    for d in (expected, plain):
        d.pop("seconds")
        d["files"] = {k: os.path.basename(v) for k, v in d["files"].items()}
    assert plain == expected
