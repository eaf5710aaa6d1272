"""The clip cache (--clip-cache): a flat folder, local or any fsspec URL, of trimmed clips at source
resolution shared by every run and dataset version that names it.

An entry is named by its segment alone, `{youtube_id}_{start:06d}_{end:06d}.mp4` (the CVDF flat
layout, so a CVDF download already is a cache): labels, class dirs and --trim-format play no part.
A time that is not a whole second keeps its decimals (`abc_000417.5_000427.mp4`), so it never
shares an entry with the whole-second segment it would truncate to.

An entry is written whole: locally under a temporary name beside it (storage.TEMP_NAME) that is
renamed into place, on an object store in one upload, elsewhere under the temporary name then
moved. The temporaries a killed run leaves in a local cache are removed by `sweep` once they are
older than any write could take, so a run sharing the cache never loses the temp it is writing.
"""
import decimal
import logging
import os
import posixpath
import time

from transforms import storage

log = logging.getLogger(__name__)

STALE_TEMP_SECONDS = 3600.0  # a cache temp untouched for this long belongs to a run that died


def time_text(seconds):
    """A segment time as an entry name spells it: whole seconds as %06d, as CVDF's names do (417 is
    000417); otherwise with the decimals of its shortest repr (417.5 is 000417.5)."""
    value = float(seconds)
    if value.is_integer():
        return f"{int(value):06d}"
    whole, _, decimals = format(decimal.Decimal(repr(value)), "f").partition(".")
    return f"{int(whole):06d}.{decimals}"


def entry_name(youtube_id, start, end):
    """The file name of the segment [start, end) of `youtube_id` in a clip cache."""
    return f"{youtube_id}_{time_text(start)}_{time_text(end)}.mp4"


def entry_url(cache, clip):
    """Where the clip's segment lives in the cache `cache`, whatever its label or clip id."""
    return storage.join(cache, entry_name(clip.youtube_id, clip.time_start, clip.time_end))


def lookup(cache, clip):
    """The URL of the clip's entry in `cache`, or "" when it has none. A local entry must be a
    regular file (a FIFO or a dir is never opened); a cache that cannot be looked at is a miss, logged."""
    url = entry_url(cache, clip)
    try:
        if storage.is_local(url):
            found = os.path.isfile(storage.filesystem(url)[1])
        else:
            found = storage.exists(url)
    except OSError as e:
        log.warning("clip cache: cannot look for %s: %s; fetching the clip", url, e)
        return ""
    return url if found else ""


def write(cache, clip, local_path):
    """Put the finished local file `local_path` into `cache` as the clip's entry, whole, replacing
    what was there; returns the entry's URL. Never leaves a partial file at the entry's name."""
    url = entry_url(cache, clip)
    if storage.is_local(url) or storage.protocol(url) in storage.OBJECT_STORES:
        storage.put_file(local_path, url)  # local: temp beside it, renamed; object store: one upload
        return url
    fs, path = storage.filesystem(url)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = storage.temp_path(path)
    try:
        fs.put_file(local_path, tmp)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)
    return url


def write_from(cache, clip, url):
    """Put the finished file at `url` (the clip's trimmed video in the output tree) into `cache` as
    the clip's entry, whole; a remote file is first copied to a private local dir."""
    if storage.is_local(url):
        return write(cache, clip, storage.filesystem(url)[1])
    with storage.local_staging() as work:
        local = os.path.join(work, "clip" + posixpath.splitext(url)[1])
        fs, path = storage.filesystem(url)
        fs.get_file(path, local)
        return write(cache, clip, local)


def sweep(cache, older_than=STALE_TEMP_SECONDS, now=None):
    """Remove the temporaries (storage.TEMP_NAME, regular files) a killed run left in the local
    cache `cache`, those not modified for `older_than` seconds (another run may be writing the
    others); returns how many. An object store holds none: nothing to do there."""
    if not cache or not storage.is_local(cache):
        return 0
    root = storage.filesystem(cache)[1]
    now = time.time() if now is None else now
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        if not storage.TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime <= now - older_than:
                os.remove(entry.path)
                removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d temporary files a killed run left in the clip cache %s", removed, root)
    return removed
