"""Where a clip's video comes from: the source adapters that turn a Job's source into a Segment.

* fetch: the window FetchClips fetched from YouTube for the clip (fetched_segment).
* tree: the clip's trimmed video already in the output tree (trimmed_in_tree).
* cache: the clip's entry in the --clip-cache (transforms/cache.py), the clip itself (cached_segment).
* local: existing files under --video-root (a local dir or any fsspec URL): the CVDF flat
  layout {root}/{clip}.{ext}, MMAction2 class dirs {root}/{class}/{clip}.{ext}, or a
  full-length source {root}/{youtube_id}.{ext} that is cut to [start, end).
* cvdf: the CVDF .tar.gz parts, each streamed once; members are matched to clips by name. A part
  that cannot be read (after retries for transient errors) leaves its clips `missing`, and says so.
  A member that is a link, not a regular file, or whose path is absolute or climbs out with `..`
  is never read or followed: a clip with no other member is `missing`, naming the part and member.

With several sources (--source local,cvdf,youtube) a clip whose source raises VideoError here (or
whose fetch fails) is not recorded: its Job goes on to the next source (Job.next_source).

Nothing is ever written outside the clip's private staging dir: a member's bytes go to
`{workdir}/source.{ext}` whatever its name says.
"""
import dataclasses
import glob
import gzip
import logging
import os
import posixpath
import stat
import tarfile
import time
import zlib

import apache_beam as beam

from transforms import cache, plan, storage
from transforms.layout import source_stems
from transforms.optionfields import Refused, as_list, option
from transforms.records import FAILED, MISSING
from transforms.video import Segment, VideoError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "flv", "3gp", "mpg", "mpeg", "ts")
PART_PATTERNS = ("*.tar.gz", "*.tgz", "*.tar")
SOURCE_NAMES = ("youtube", "local", "cvdf")  # --source: the sources of the fetch step


def source_names(value, _=None):
    """--source: the ordered source names (each of SOURCE_NAMES, each at most once), comma-joined."""
    names = as_list(value) or []
    if not names:
        raise Refused(f"--source: name at least one source ({', '.join(SOURCE_NAMES)})")
    for name in names:
        if name not in SOURCE_NAMES:
            raise Refused(f"--source: unknown source {name!r} (choose from {', '.join(SOURCE_NAMES)})")
        if names.count(name) > 1:
            raise Refused(f"--source: {name} named twice in {','.join(names)} (each source at most once)")
    return ",".join(names)


def _video_root(value, context):
    """--video-root, which `local` needs when the fetch step runs."""
    sources = context["source"].split(",")
    if "fetch" in context["steps"] and "local" in sources and not value:
        raise Refused(f"--source {','.join(sources)} needs --video-root DIR_OR_URL")
    return storage.normalize(value) if value else None


def _cvdf_parts(value, context):
    """Where `cvdf` finds the parts when the fetch step runs (else None): --cvdf-parts (or a config's
    `cvdf_parts` folder URL), else --video-root when the sources have no `local` (whose root it is),
    else the dataset config's part lists (context["config_parts"])."""
    sources, dataset = context["source"].split(","), context["dataset"]
    if "cvdf" not in sources or "fetch" not in context["steps"]:
        return None
    root = context["values"]["video_root"]
    if isinstance(value, str) and value:
        parts = storage.normalize(value)
    elif "local" not in sources and root:
        parts = root
    else:
        parts = context["config_parts"]
    if not parts:
        if "local" in sources:
            raise Refused(f"--source {','.join(sources)}: {dataset} has no CVDF part lists; pass "
                          "--cvdf-parts with a folder of parts (--video-root is local's)")
        raise Refused(f"--source cvdf: {dataset} has no CVDF part lists; pass --video-root with "
                      "a folder of parts")
    return parts


@dataclasses.dataclass(frozen=True)
class SourceOptions:
    """The sources group: where the fetch step gets each clip from. Built with the run's `steps`,
    `dataset` and the dataset config's `config_parts` ({split: part list URL} or None) as context."""
    source: str = option(["youtube"], "where the fetch step gets clips, an ordered comma list of sources, each at "
                                      "most once (e.g. local,cvdf,youtube): each clip from the first that has a "
                                      "usable video. youtube (yt-dlp, only the annotated segment), local (files "
                                      "under --video-root: {clip}.*, {class}/{clip}.* or full-length "
                                      "{youtube_id}.*), cvdf (the CVDF .tar.gz parts: --cvdf-parts, else a "
                                      "folder of parts given as --video-root unless local is listed too, else "
                                      "the dataset's part lists)", value="youtube", convert=source_names)
    video_root: str = option(None, "local dir or URL holding the source videos (or CVDF parts)",
                             convert=_video_root)
    cvdf_parts: object = option(None, "local dir or URL of a folder of CVDF parts (.tar.gz, .tgz, .tar) for "
                                      "--source cvdf; default: --video-root when --source lists no local, else "
                                      "the dataset config's part lists", kind=str, passes=(dict,), convert=_cvdf_parts)
    clip_cache: str = option(None, "clip cache shared across runs and datasets: a local dir or URL (gs://...) of "
                                   "trimmed clips {youtube_id}_{start:06d}_{end:06d}.mp4 (a CVDF download is one), "
                                   "looked in before each YouTube fetch and written after it",
                             convert=lambda value, _: storage.normalize(value) if value else None)

    @property
    def names(self):
        """The --source names, in order."""
        return tuple(self.source.split(","))


@dataclasses.dataclass(frozen=True)
class Found:
    url: str
    whole: bool  # named by clip id: the file already is the segment


def local_file(path):
    """"" when `path` is a regular file (symlinks followed) that can be read, None when nothing is
    there, else (status, why not). Never opens what is not a regular file: a FIFO would block."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return MISSING, f"a symbolic link to {os.readlink(path)!r}, which does not exist"
        return None
    except OSError as e:  # a symlink loop (ELOOP), a dir that cannot be searched (EACCES)...
        return MISSING, e.strerror or type(e).__name__
    if not stat.S_ISREG(st.st_mode):
        return MISSING, "not a regular file"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:
        return FAILED, f"cannot be read: {e.strerror or type(e).__name__}"
    return ""


def find_local(root, clip):
    """The first existing candidate for `clip` under `root`, or None. Locally, a candidate that is
    there but cannot be used (a broken link or a symlink loop, not a regular file, unreadable)
    raises VideoError when no other candidate can be: `failed` if the file cannot be read, else
    `missing`, naming the candidate and why."""
    stems = source_stems(clip)
    if storage.is_local(root):
        notes = []
        for stem, whole in stems:
            for ext in VIDEO_EXTENSIONS:
                path = os.path.join(root, f"{stem}.{ext}")
                state = local_file(path)
                if state == "":
                    return Found(path, whole)
                if state and not any(os.path.realpath(path) == real for real, _, _ in notes):
                    notes.append((os.path.realpath(path), state[0], f"{stem}.{ext}: {state[1]}"))
        if notes:
            status = FAILED if any(s == FAILED for _, s, _ in notes) else MISSING
            raise VideoError(status, f"no usable video for {clip.clip_id} under {root} "
                                     f"({'; '.join(note for _, _, note in notes)})")
        return None
    fs, base = storage.filesystem(root)
    for stem, whole in stems:
        hits = {posixpath.splitext(p)[1][1:].lower(): p for p in fs.glob(f"{base}/{glob.escape(stem)}.*")}
        for ext in VIDEO_EXTENSIONS:
            if ext in hits:
                return Found(fs.unstrip_protocol(hits[ext]), whole)
    return None


def local_segment(root, clip, workdir):
    """The clip's source under --video-root `root`."""
    found = find_local(root, clip)
    if found is None:
        raise VideoError(MISSING, f"no video for {clip.clip_id} under {root}")
    return segment_of(clip, found, workdir)


def fetched_segment(result, url, clip, workdir):
    """The clip inside a fetched file whose t=0 lies at source time `result.offset`."""
    return Segment(result.path, clip.time_start - result.offset, clip.time_end - result.offset), url


def segment_of(clip, found, workdir):
    path = materialize(found.url, workdir)
    if found.whole:
        return Segment(path, 0.0, clip.duration, whole=True), found.url
    return Segment(path, clip.time_start, clip.time_end), found.url


def trimmed_in_tree(clip, layout, workdir):
    """The clip's own trimmed video, made earlier or by another tool, as the source."""
    url = layout.url(layout.video(clip))
    if not storage.exists(url):
        raise VideoError(MISSING, f"no video at {layout.video(clip)} (add the fetch step to make it)")
    return segment_of(clip, Found(url, True), workdir)


def cached_segment(cache_url, clip, workdir):
    """The clip's entry in the clip cache `cache_url` (trimmed by an earlier run, or a CVDF flat
    clip), which already is the segment, as the source."""
    url = cache.entry_url(cache_url, clip)
    if not storage.exists(url):
        raise VideoError(MISSING, f"no {posixpath.basename(url)} in the clip cache {cache_url}")
    return segment_of(clip, Found(url, True), workdir)


def member_segment(clip, member, data, workdir):
    """A CVDF member's bytes, the clip itself, as the source."""
    if data is None:
        raise VideoError(MISSING, f"no {clip.clip_id}.* in the CVDF parts")
    return Segment(write_member(data, workdir, member), 0.0, clip.duration, whole=True), member


def open_source(job, settings, workdir, fetched=None):
    """(Segment, source name) of the video a Job's outputs are made from, copied into `workdir`
    where it is not local (`fetched`: the fetched window's adapter); raises VideoError when there
    is none."""
    clip = job.clip
    if job.source == plan.TREE:
        return trimmed_in_tree(clip, plan.layout_for(settings), workdir)
    if job.source == plan.CVDF:
        return member_segment(clip, job.member, job.data, workdir)
    if job.source == plan.CACHE:
        return cached_segment(settings.sources.clip_cache, clip, workdir)
    if job.source == plan.LOCAL:
        return local_segment(settings.sources.video_root, clip, workdir)
    if job.source == plan.FETCH:
        return fetched(clip, workdir)
    if job.source == plan.MISSING:
        raise VideoError(MISSING, job.reason)
    raise ValueError(f"a job with no source to make {', '.join(job.make)} from")


def materialize(url, workdir, name="source"):
    """A local path for `url`: itself when local, else a copy downloaded into workdir. A remote
    object that is gone by now (deleted after it was listed) raises VideoError `missing`."""
    if storage.is_local(url):
        return storage.filesystem(url)[1]
    path = os.path.join(workdir, name + posixpath.splitext(url)[1])
    fs, remote = storage.filesystem(url)
    try:
        fs.get_file(remote, path)
    except FileNotFoundError:
        raise VideoError(MISSING, f"{url} is gone: it was listed, then not found when read") from None
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


def unsafe_member(member):
    """Why a tar member cannot be a clip's video (a link, not a regular file, a path that is
    absolute or climbs out with `..`), or ""."""
    if member.issym():
        return f"is a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"is a hard link to {member.linkname!r}"
    if not member.isfile():
        return "is not a regular file"
    if member.name.startswith("/"):
        return "has an absolute path"
    if ".." in member.name.split("/"):
        return "has a '..' in its path"
    return ""


def read_part(url, wanted):
    """Stream one part and yield (member name, bytes) for members whose clip id is `wanted`; a
    wanted member that is not safe to use (unsafe_member) is not read: it is logged, and comes
    with an Absent payload naming the part and the member."""
    part = posixpath.basename(url)
    with storage.open_input(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            cid = clip_id_of(member.name)
            if not wanted(cid):
                continue
            why = unsafe_member(member)
            if why:
                log.warning("CVDF part %s: member %r %s; skipped", url, member.name, why)
                yield member.name, skipped_members(cid, [f"{part} member {member.name!r} {why}"])
            else:
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
    """Part URL in; (clip key, (part URL, (clip, job, (source name, video bytes)))) out
    for each wanted member (an Absent in place of the bytes for a member not safe to use), the
    matched clip keys on `found`, and "URL: error" on `failed` for a part
    that could not be read: at once for a permanent error, else after `attempts` tries with
    exponential backoff (a retry skips the members already emitted). The (clip, job) pairs of the
    clips still to do come as a side input keyed by clip id."""

    def __init__(self, attempts=4, backoff=5.0):
        self.attempts, self.backoff = attempts, backoff

    def process(self, url, jobs):
        name, emitted = posixpath.basename(url), set()
        for attempt in range(1, self.attempts + 1):
            try:
                for member, data in read_part(url, lambda cid: bool(jobs[cid])):
                    if (member, isinstance(data, Absent)) in emitted:
                        continue
                    emitted.add((member, isinstance(data, Absent)))
                    for clip, job in jobs[clip_id_of(member)]:
                        yield clip.key, (url, (clip, job, (f"cvdf:{name}:{member}", data)))
                        yield beam.pvalue.TaggedOutput("found", clip.key)
                return
            except Exception as e:  # noqa: BLE001 - one bad part must not stop the run
                if permanent(e) or attempt == self.attempts:
                    log.warning("CVDF part %s unreadable after %d attempt(s): %s", url, attempt, describe(e))
                    yield beam.pvalue.TaggedOutput("failed", f"{url}: {describe(e)}")
                    return
                log.warning("CVDF part %s: %s; retrying", url, describe(e))
                time.sleep(self.backoff * 2 ** (attempt - 1))


@dataclasses.dataclass(frozen=True)
class Absent:
    """What ReadParts gives in place of a member's bytes when the member cannot be used (`skipped`:
    what each such member was); `reason` says why."""
    reason: str
    skipped: tuple = ()


def skipped_members(clip_id, notes):
    notes = tuple(sorted(set(notes)))
    return Absent(f"no usable {clip_id}.* in the CVDF parts: {'; '.join(notes)}; not used", notes)


def pick_part(keyed):
    """The clip's job with its one member, for a clip found in several parts: a member that can be
    used wins over those that cannot (links, unsafe paths); then a replacement part's member, else
    the first part URL in sorted order (then the first member name). With none usable, the job is
    missing, its reason naming them all."""
    def rank(item):
        url, (_, _, (source, data)) = item
        return isinstance(data, Absent), "replacement" not in posixpath.basename(url), url, source
    items = list(keyed[1])
    clip, job, (source, data) = min(items, key=rank)[1]
    if isinstance(data, Absent):
        notes = [n for _, (_, _, (_, d)) in items for n in d.skipped]
        return job.missing(skipped_members(clip.clip_id, notes).reason)
    return job.with_member(source, data)


def unmatched(grouped, failed):
    """The jobs of a clip found in no part (none if found): as they are, or, when some parts could
    not be read, missing with a reason that names them."""
    _, got = grouped
    if got["found"]:
        return []
    if not failed:
        return got["job"]
    shown = "; ".join(sorted(failed)[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
    unread = f"{len(failed)} part{'s' if len(failed) > 1 else ''} unreadable: {shown}"
    return [job.missing(f"no {job.clip.clip_id}.* in the CVDF parts ({unread})") for job in got["job"]]


def write_member(data, workdir, member):
    path = os.path.join(workdir, "source" + posixpath.splitext(member)[1])
    with open(path, "wb") as f:
        f.write(data)
    return path
