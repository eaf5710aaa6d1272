import contextlib
import functools
import http.server
import io
import json
import os
import pathlib
import shutil
import tarfile
import tempfile
import threading

import pytest

from pipeline.cli import main
from pipeline.demo import synthetic_video

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = pathlib.Path(os.environ.get("KINETICS_PREP_FIXTURES", ROOT.parent / "shared" / "fixtures"))
ANNOTATIONS = FIXTURES / "annotations"
VIDEOS = FIXTURES / "videos"


@pytest.fixture
def fixtures():
    if not FIXTURES.is_dir():
        pytest.skip(f"real-file fixtures not found at {FIXTURES} (they sit in ../shared/fixtures "
                    "beside the checkout; set KINETICS_PREP_FIXTURES to point elsewhere)")
    return FIXTURES


def run_cli(*args):
    """Run kinetics-prep in-process on the in-process runner; returns the exit code."""
    return main([str(a) for a in args])


def read_records(output):
    out = []
    for path in sorted(pathlib.Path(output, "manifest").glob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def by_clip(records):
    return {(r["split"], r["class_dir"], r["clip_id"]): r for r in records}


_VIDEO_CACHE = tempfile.TemporaryDirectory(prefix="kinetics-prep-test-videos-")  # removed at exit


@functools.lru_cache(maxsize=None)
def _cached_video(seconds, fps, width, height, audio):
    path = pathlib.Path(_VIDEO_CACHE.name) / f"{seconds}-{fps}-{width}x{height}-{int(audio)}.mp4"
    synthetic_video(str(path), seconds, fps=fps, width=width, height=height, audio=audio)
    return path


def make_video(path, seconds=10, fps=10, width=96, height=64, audio=False):
    """A small real H.264 video at `path` (generated once per shape, then copied)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_cached_video(seconds, fps, width, height, audio), path)
    return path


def write_tar(path, members):
    """A .tar.gz at `path` of {member name: bytes}; returns `path`."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fresh_fetch_worker():
    """The rate governor and bot-check breaker are per process; a test using this gets its own."""
    from transforms import fetch
    fetch._WORKER = fetch.WorkerState()
    yield
    fetch._WORKER = fetch.WorkerState()


def write_csv(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_dir(directory):
    """A loopback HTTP server over `directory`; yields its base URL."""
    handler = functools.partial(_Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def settings_of(**values):
    """A stand-in for a resolved options.Settings: each value given goes under the option group of
    Settings that has the field (output= -> .outputs.output, frame_index_base= -> .video...), the
    rest (dataset, run_id, published, ...) at the top."""
    import dataclasses
    import types
    from pipeline import options
    owner = {}
    groups = {}
    for group in dataclasses.fields(options.Settings):
        if dataclasses.is_dataclass(group.type):
            groups[group.name] = {}
            for field in dataclasses.fields(group.type):
                assert field.name not in owner, f"{field.name} is in two groups"
                owner[field.name] = group.name
    top = {}
    for name, value in values.items():
        (groups[owner[name]] if name in owner else top)[name] = value
    return types.SimpleNamespace(**top, **{name: types.SimpleNamespace(**v) for name, v in groups.items()})
