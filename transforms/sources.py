"""Where a clip's video comes from when it is not fetched from YouTube.

* local: existing files under --video-root (a local dir or any fsspec URL): the CVDF flat
  layout {root}/{clip}.{ext}, MMAction2 class dirs {root}/{class}/{clip}.{ext}, or a
  full-length source {root}/{youtube_id}.{ext} that is cut to [start, end).
* cvdf: the CVDF .tar.gz parts, each streamed once; members are matched to clips by name. A part
  that cannot be read (after retries for transient errors) leaves its clips `missing`, and says so.
"""
import dataclasses
import glob
import gzip
import logging
import os
import posixpath
import tarfile
import time
import zlib

import apache_beam as beam

from transforms import storage
from transforms.records import MISSING
from transforms.video import VideoError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "flv", "3gp", "mpg", "mpeg", "ts")
PART_PATTERNS = ("*.tar.gz", "*.tgz", "*.tar")


@dataclasses.dataclass(frozen=True)
class Found:
    url: str
    whole: bool  # named by clip id: the file already is the segment


def find_local(root, clip):
    """The first existing candidate for `clip` under `root`, or None."""
    stems = [(clip.clip_id, True), (f"{clip.class_dir}/{clip.clip_id}", True), (clip.youtube_id, False)]
    if storage.is_local(root):
        for stem, whole in stems:
            for ext in VIDEO_EXTENSIONS:
                path = os.path.join(root, f"{stem}.{ext}")
                if os.path.isfile(path):
                    return Found(path, whole)
        return None
    fs, base = storage.filesystem(root)
    for stem, whole in stems:
        hits = {posixpath.splitext(p)[1][1:].lower(): p for p in fs.glob(f"{base}/{glob.escape(stem)}.*")}
        for ext in VIDEO_EXTENSIONS:
            if ext in hits:
                return Found(fs.unstrip_protocol(hits[ext]), whole)
    return None


def materialize(url, workdir, name="source"):
    """A local path for `url`: itself when local, else a copy downloaded into workdir."""
    if storage.is_local(url):
        return storage.filesystem(url)[1]
    path = os.path.join(workdir, name + posixpath.splitext(url)[1])
    fs, remote = storage.filesystem(url)
    fs.get_file(remote, path)
    return path


def part_urls(lists, splits):
    """The part URLs for `splits`: from CVDF part-list files (one URL per line) or a folder of
    .tar.gz, .tgz and .tar parts; `lists` maps split -> list URL, or is one folder URL for all splits."""
    if isinstance(lists, str):
        fs, base = storage.filesystem(lists)
        found = {p for pattern in PART_PATTERNS for p in fs.glob(f"{base}/**/{pattern}")}
        return sorted(fs.unstrip_protocol(p) if not storage.is_local(lists) else p for p in found)
    urls = []
    for split in splits:
        if split in lists:
            text = storage.read_bytes(lists[split]).decode("utf-8")
            urls.extend(line.strip() for line in text.splitlines() if line.strip())
    return urls


def clip_id_of(member_name):
    stem = posixpath.basename(member_name)
    return stem.rsplit(".", 1)[0] if "." in stem else stem


def read_part(url, wanted):
    """Stream one part and yield (member name, bytes) for members whose clip id is `wanted`."""
    with storage.open_input(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and wanted(clip_id_of(member.name)):
                yield member.name, tar.extractfile(member).read()


def permanent(error):
    """Whether reading a part again cannot help: absent or refused (4xx), or not a readable tar."""
    status = getattr(error.__cause__, "status", getattr(error, "status", None))
    if isinstance(status, int):
        return 400 <= status < 500 and status not in (408, 429)
    if isinstance(error, (FileNotFoundError, PermissionError)):
        return error.__cause__ is None
    return isinstance(error, (tarfile.TarError, zlib.error, gzip.BadGzipFile))


def describe(error):
    status = getattr(error.__cause__, "status", getattr(error, "status", None))
    if isinstance(status, int):
        return f"HTTP {status}"
    shown = error.__cause__ or error
    return f"{type(shown).__name__}: {shown}"


class ReadParts(beam.DoFn):
    """Part URL in; (clip key, (part URL, (clip, earlier record, (source name, video bytes)))) out
    for each wanted member, the matched clip keys on `found`, and "URL: error" on `failed` for a part
    that could not be read: at once for a permanent error, else after `attempts` tries with
    exponential backoff (a retry skips the members already emitted). The (clip, earlier record)
    pairs that need a video come as a side input keyed by clip id."""

    def __init__(self, attempts=4, backoff=5.0):
        self.attempts, self.backoff = attempts, backoff

    def process(self, url, jobs):
        name, emitted = posixpath.basename(url), set()
        for attempt in range(1, self.attempts + 1):
            try:
                for member, data in read_part(url, lambda cid: bool(jobs[cid])):
                    if member in emitted:
                        continue
                    emitted.add(member)
                    for clip, prev in jobs[clip_id_of(member)]:
                        yield clip.key, (url, (clip, prev, (f"cvdf:{name}:{member}", data)))
                        yield beam.pvalue.TaggedOutput("found", clip.key)
                return
            except Exception as e:  # noqa: BLE001 - one bad part must not stop the run
                if permanent(e) or attempt == self.attempts:
                    log.warning("CVDF part %s unreadable after %d attempt(s): %s", url, attempt, describe(e))
                    yield beam.pvalue.TaggedOutput("failed", f"{url}: {describe(e)}")
                    return
                log.warning("CVDF part %s: %s; retrying", url, describe(e))
                time.sleep(self.backoff * 2 ** (attempt - 1))


def pick_part(keyed):
    """The one job for a clip found in several parts: a replacement part's member wins, else the
    first part URL in sorted order (then the first member name)."""
    def rank(item):
        url, (_, _, (source, _)) = item
        return "replacement" not in posixpath.basename(url), url, source
    return min(keyed[1], key=rank)[1]


@dataclasses.dataclass(frozen=True)
class Absent:
    """A payload in place of a member's bytes: the clip is in no part that could be read."""
    reason: str


def unmatched(grouped, failed):
    """The jobs of a clip found in no part (none if found): as they are, or, when some parts could
    not be read, with an Absent payload whose reason names them."""
    _, got = grouped
    if got["found"]:
        return []
    if not failed:
        return got["job"]
    shown = "; ".join(sorted(failed)[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
    unread = f"{len(failed)} part{'s' if len(failed) > 1 else ''} unreadable: {shown}"
    return [(clip, prev, ("cvdf:", Absent(f"no {clip.clip_id}.* in the CVDF parts ({unread})")))
            for clip, prev in got["job"]]


def write_member(data, workdir, member):
    if isinstance(data, Absent):
        raise VideoError(MISSING, data.reason)
    path = os.path.join(workdir, "source" + posixpath.splitext(member)[1])
    with open(path, "wb") as f:
        f.write(data)
    return path
