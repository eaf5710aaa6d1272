"""Where a clip's video comes from when it is not fetched from YouTube.

* local: existing files under --video-root (a local dir or any fsspec URL): the CVDF flat
  layout {root}/{clip}.{ext}, MMAction2 class dirs {root}/{class}/{clip}.{ext}, or a
  full-length source {root}/{youtube_id}.{ext} that is cut to [start, end).
* cvdf: the CVDF .tar.gz parts, each streamed once; members are matched to clips by name.
"""
import dataclasses
import glob
import os
import posixpath
import tarfile

import apache_beam as beam

from transforms import storage

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "flv", "3gp", "mpg", "mpeg", "ts")


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
    """The .tar.gz part URLs for `splits`: from CVDF part-list files (one URL per line) or a
    folder of parts; `lists` maps split -> list URL, or is one folder URL for all splits."""
    if isinstance(lists, str):
        fs, base = storage.filesystem(lists)
        return sorted(fs.unstrip_protocol(p) if not storage.is_local(lists) else p
                      for p in fs.glob(f"{base}/**/*.tar.gz"))
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


class ReadParts(beam.DoFn):
    """Part URL in; (clip, earlier record, (source name, video bytes)) out for each wanted member,
    and the matched clip keys on the `found` output. The (clip, earlier record) pairs that need a
    video come as a side input keyed by clip id."""

    def process(self, url, jobs):
        name = posixpath.basename(url)
        for member, data in read_part(url, lambda cid: bool(jobs[cid])):
            for clip, prev in jobs[clip_id_of(member)]:
                yield clip, prev, (f"cvdf:{name}:{member}", data)
                yield beam.pvalue.TaggedOutput("found", clip.key)


def write_member(data, workdir, member):
    path = os.path.join(workdir, "source" + posixpath.splitext(member)[1])
    with open(path, "wb") as f:
        f.write(data)
    return path
