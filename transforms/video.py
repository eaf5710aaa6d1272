"""Opening, probing and verifying videos with PyAV."""
import contextlib

import av

from transforms import storage


class VideoError(Exception):
    """A video that cannot be used; `status` says how (corrupt, short, missing)."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


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


def probe(url, expected_duration, *, full=False, min_ratio=0.8):
    """Check that `url` is a usable clip of about `expected_duration` seconds.

    The quick probe opens it, decodes the first frame and reads the duration from the
    container; `full=True` decodes every frame instead. Returns facts for the record
    (frames, width, height, duration) or raises VideoError.
    """
    try:
        with open_container(url) as container:
            if not container.streams.video:
                raise VideoError("corrupt", "no video stream")
            stream = container.streams.video[0]
            stream.thread_count = 1
            frames, first, last = 0, None, None
            try:
                for frame in container.decode(stream):
                    if frame.pts is not None:
                        t = float(frame.pts * frame.time_base)
                        first = t if first is None else first
                        last = t
                    frames += 1
                    if not full:
                        break
            except av.error.FFmpegError as e:
                raise VideoError("corrupt", f"decode error after {frames} frames: {e}") from None
            if frames == 0:
                raise VideoError("corrupt", "no decodable frame")
            if full:
                rate = stream.average_rate or stream.guessed_rate
                step = 1 / float(rate) if rate else 0.0
                duration = (last - first + step) if first is not None else None
            else:
                duration = _duration(container, stream)
                frames = stream.frames or None
            info = {"width": stream.codec_context.width, "height": stream.codec_context.height,
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
    return info
