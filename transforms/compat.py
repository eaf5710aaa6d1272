"""The one place that uses private names of the libraries we build on (Beam, fsspec, gcsfs, yt-dlp).

Each wrapper does what no public API of its library does (as of the versions in setup.py); each
says which private name it uses and why. tests/test_compat.py checks every one of them against
the installed library and fails naming the library and its version when one changes, so that an
upgrade breaks a test here rather than a run. Nothing else in the project may use a private
library name: add it here, with its test. The libraries are imported when a wrapper is called,
not with this module (a fetch worker need not import Beam, the launcher not yt-dlp).
"""


def beam_unknown_args(argv):
    """The arguments in `argv` that no Beam PipelineOptions class knows, as argparse leaves them
    (`--flag`, `--flag=value` and the values that follow an unknown flag), in order.

    Beam has no public way to list them: `PipelineOptions.get_all_options()` parses with the
    same parser but only logs the unknown ones ("Discarding unparseable args") or keeps them as
    options. This builds that parser as get_all_options does, from the private
    `pipeline_options._BeamArgumentParser` (an ArgumentParser that also takes Beam's
    ValueProvider arguments) and each subclass's private `_add_argparse_args` classmethod.
    Where a subclass is defined twice (a main session re-imported), the last one counts.
    """
    from apache_beam.options import pipeline_options

    parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    for cls in {str(c): c for c in pipeline_options.PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(argv)
    return unknown


def strip_protocol(fs_class, url):
    """`url` as a path of the fsspec filesystem class `fs_class`, without making an instance
    (a gcsfs instance would search for credentials).

    fsspec's public `fsspec.core.strip_protocol(url)` picks the class from the url itself and
    reads a local path starting with `data:` as a data URL (`data:x/y` -> `x/y`); callers here
    pick the class themselves and need that path kept as a local path. So this calls the class's
    own `_strip_protocol` classmethod, the one every fsspec filesystem implements and
    `fsspec.core.strip_protocol` calls.
    """
    return fs_class._strip_protocol(url)


def gcs_location():
    """The http(s)://host[:port] gcsfs sends gs:// requests to: STORAGE_EMULATOR_HOST (http://
    added when it has no scheme), else Google's endpoint for the configured universe.

    gcsfs has it only as the private `gcsfs.core._location()` function, and on an instance
    (`GCSFileSystem(...)._location`, `.base`), whose making searches for credentials, which is
    what a quick reachability check must not wait on.
    """
    from gcsfs.core import _location

    return _location()


def set_ytdlp_ffmpeg_location(location):
    """Tell yt-dlp's FFmpeg code, in this context, that ffmpeg is `location`, as the yt-dlp CLI
    does for --ffmpeg-location. Returns False (and does nothing) where the yt-dlp in use has no
    such setting.

    The `ffmpeg_location` YoutubeDL parameter alone is not enough: yt-dlp chooses its ffmpeg
    downloader for ranged downloads by probing `FFmpegPostProcessor()` made without the
    YoutubeDL, which finds ffmpeg on PATH only (yt-dlp #2191), so a ranged fetch would fall back
    to a full download. The CLI sets the private ContextVar
    `FFmpegPostProcessor._ffmpeg_location`; there is no public API for it.
    """
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    var = getattr(FFmpegPostProcessor, "_ffmpeg_location", None)
    if var is None:
        return False
    var.set(location)
    return True
