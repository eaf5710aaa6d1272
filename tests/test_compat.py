"""transforms.compat, the one place that uses private library names, against the installed libraries.

Each test fails naming the library and its version when the private name it wraps is gone or
does something else, so that an upgrade shows here what to adapt (see the wrapper's docstring).
"""
import argparse
import contextvars
import importlib.metadata
import os

import fsspec
import imageio_ffmpeg
import pytest

from transforms import compat, storage


def broken(dist, what):
    version = importlib.metadata.version(dist)
    pytest.fail(f"{dist} {version} changed a private API that transforms/compat.py wraps: {what}", pytrace=False)


def test_beam_argument_parser_and_add_argparse_args():
    from apache_beam.options import pipeline_options

    parser = getattr(pipeline_options, "_BeamArgumentParser", None)
    if not (isinstance(parser, type) and issubclass(parser, argparse.ArgumentParser)
            and hasattr(parser, "add_value_provider_argument")):
        broken("apache-beam", "pipeline_options._BeamArgumentParser is no longer a ValueProvider ArgumentParser")
    lacking = [c.__name__ for c in pipeline_options.PipelineOptions.__subclasses__()
               if not callable(getattr(c, "_add_argparse_args", None))]
    if lacking:
        broken("apache-beam", f"no _add_argparse_args classmethod on {', '.join(lacking)}")
    argv = ["--runner=DirectRunner", "--direct_num_workers", "2", "--bogus-flag", "x", "--temp_location=gs://b/t",
            "--projekt=p", "--region", "us-central1", "--streaming"]
    got = compat.beam_unknown_args(argv)
    if got != ["--bogus-flag", "x", "--projekt=p"]:
        broken("apache-beam", f"the Beam option parser left {got} of {argv} unknown")


@pytest.mark.parametrize("url,protocol,path", [
    ("gs://bkt/a/b/", "gs", "bkt/a/b/"),
    ("gcs://bkt/a", "gcs", "bkt/a"),
    ("memory://x/y", "memory", "/x/y"),
    ("https://h:8/a/b", "https", "https://h:8/a/b"),
    ("file:///tmp/a/", "file", "/tmp/a"),
    ("data:x/y", "file", os.path.abspath("data:x/y")),  # a local path, not a data URL
])
def test_fsspec_strip_protocol(url, protocol, path):
    cls = fsspec.get_filesystem_class(protocol)
    if not callable(getattr(cls, "_strip_protocol", None)):
        broken("fsspec", f"{cls.__name__} has no _strip_protocol classmethod")
    got = compat.strip_protocol(cls, url)
    if got != path:
        broken("fsspec", f"{cls.__name__}._strip_protocol({url!r}) is {got!r}, not {path!r}")


@pytest.mark.parametrize("url,normal", [
    ("gs://bkt/a/", "gs://bkt/a"), ("gcs://bkt/a", "gs://bkt/a"), ("memory://x/y/", "memory:///x/y"),
    ("https://h:8/a/", "https://h:8/a"), ("file:///tmp/a/", "/tmp/a"), ("data:x/y", os.path.abspath("data:x/y")),
])
def test_normalize_through_the_wrapper(url, normal):
    assert storage.normalize(url) == normal


@pytest.mark.parametrize("emulator,location,endpoint", [
    ("127.0.0.1:9023", "http://127.0.0.1:9023", ("127.0.0.1", 9023)),
    ("https://gcs.test:8443", "https://gcs.test:8443", ("gcs.test", 8443)),
    ("http://gcs.test", "http://gcs.test", ("gcs.test", 80)),
    (None, "https://storage.googleapis.com", ("storage.googleapis.com", 443)),
])
def test_gcsfs_location(monkeypatch, emulator, location, endpoint):
    import gcsfs.core

    if not callable(getattr(gcsfs.core, "_location", None)):
        broken("gcsfs", "gcsfs.core._location() is gone")
    monkeypatch.delenv("GOOGLE_CLOUD_UNIVERSE_DOMAIN", raising=False)
    if emulator is None:
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    else:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    got = compat.gcs_location()
    if got != location:
        broken("gcsfs", f"gcsfs.core._location() is {got!r} with STORAGE_EMULATOR_HOST={emulator!r}, not {location!r}")
    assert storage.gcs_endpoint() == endpoint


def test_ytdlp_ffmpeg_location():
    """The ContextVar the yt-dlp CLI sets for --ffmpeg-location is what FFmpegPostProcessor() made
    without a YoutubeDL (yt-dlp's choice of downloader for ranges) runs; set in a copied context."""
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    if not isinstance(getattr(FFmpegPostProcessor, "_ffmpeg_location", None), contextvars.ContextVar):
        broken("yt-dlp", "FFmpegPostProcessor._ffmpeg_location is no longer a ContextVar")
    exe = imageio_ffmpeg.get_ffmpeg_exe()

    def chosen():
        assert compat.set_ytdlp_ffmpeg_location(exe) is True
        return FFmpegPostProcessor().executable, FFmpegPostProcessor().available

    executable, available = contextvars.copy_context().run(chosen)
    if (executable, available) != (exe, True):
        broken("yt-dlp", f"FFmpegPostProcessor() runs {executable!r} (available {available}) after "
                         f"_ffmpeg_location.set({exe!r})")
    assert FFmpegPostProcessor._ffmpeg_location.get() is None  # this context untouched
