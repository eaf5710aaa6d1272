"""Whole-file reads and writes through fsspec, for local paths and object stores alike.

Local files are written under a temporary name and renamed into place; object stores
(gs://, s3://, memory://) commit an object only when its single upload completes.
Either way a reader never sees a half-written file where a finished one belongs.

A local temporary file (TEMP_NAME) is only ever made beside the file it becomes, or, for a
frames dir, beside that dir, so a killed run can leave them only in dirs a bounded number of
levels below --output, and sweep_temp_files finds them without walking the frames.
"""
import contextlib
import errno
import logging
import os
import posixpath
import re
import shutil
import socket
import tempfile
import urllib.parse
import uuid

import fsspec

from transforms import compat

OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "az", "abfs", "memory"}
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")
TREE_PREFIXES = ("videos_", "rawframes_")  # per-clip outputs: {top}/{class}/{clip}... ({top}/{clip} flat)
RUN_DIR_DEPTHS = {"_ledger": 2, "manifest": 0, "report": 0, "shards": 1}  # dirs below each that get files

log = logging.getLogger(__name__)


class WriteError(OSError):
    """A write (or removal) under an output that failed: says which file and why, in the system's
    words ("cannot write /data/out/videos_val/zumba/x.mp4: No space left on device"); keeps the errno."""

    def __init__(self, message, code=None):
        super().__init__(message)
        self.errno = code

    def __reduce__(self):
        return type(self), (str(self), self.errno)


def _plain(e):
    return e.strerror or str(e) or type(e).__name__


@contextlib.contextmanager
def failing_as(path, verb="write"):
    """Turn an OSError inside into a WriteError naming `path` (the finished file, not a temp)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot {verb} {path}: {_plain(e)}", e.errno) from e


def _discard(path):
    """Remove a temp file of ours if it is there; a failure to do so must not hide the real error
    (the next run's sweep removes what is left)."""
    with contextlib.suppress(OSError):
        os.remove(path)


def filesystem(url):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def protocol(url):
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url):
    return protocol(url) in ("file", "local")


def normalize(url):
    """One spelling per location: absolute local paths, protocol-qualified remote urls.

    Works on the string alone: making a gcsfs instance would search for credentials. A scheme
    fsspec does not know, or one whose package is not installed, is a ValueError saying so.
    """
    try:
        cls = fsspec.get_filesystem_class(protocol(url))
    except ValueError:
        raise ValueError(f"unknown URL scheme {protocol(url) + '://'!r} in {url!r}") from None
    except ImportError as e:
        raise ValueError(f"{protocol(url)}:// needs a package that is not installed ({e})") from None
    path = compat.strip_protocol(cls, url)
    if is_local(url):
        return os.path.abspath(path)
    if "://" in path:
        return path.rstrip("/")
    name = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    return f"{name}://{path}".rstrip("/")


def join(base, *parts):
    base = base.rstrip("/")
    return posixpath.join(base, *parts) if parts else base


def temp_path(path, folder=None):
    """Where a local file is written before it is renamed to `path`: a TEMP_NAME in `folder`
    (default: beside it), which must be on the same filesystem."""
    folder = os.path.dirname(path) if folder is None else folder
    return os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")


def _entries(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:  # gone, not a dir, a dangling link: nothing of ours to remove there
        return []


def _remove_if_temp(entry):
    """1 if `entry` was a temp file of ours (a regular file named TEMP_NAME) and is now removed."""
    name = entry.name
    if not (name.startswith(".") and name.endswith(".tmp") and TEMP_NAME.fullmatch(name)
            and entry.is_file(follow_symlinks=False)):
        return 0
    try:
        os.remove(entry.path)
    except FileNotFoundError:
        return 0
    return 1


def _sweep(path, depth):
    """Remove the temp files in `path` and in its dirs down to `depth` levels below. Follows
    symlinked dirs (writes go through them; `depth` bounds a loop), never removes a link."""
    removed = 0
    for entry in _entries(path):
        if _remove_if_temp(entry):
            removed += 1
        elif depth and entry.is_dir():
            removed += _sweep(entry.path, depth - 1)
    return removed


def sweep_temp_files(url, flat=False):
    """Remove the temporary files a killed run left in the local output tree `url`; returns how many.

    Looks only where this pipeline makes them: --output itself, manifest/ and report/, each
    shards/{split}/, _ledger/{split}/{class}/, and every videos_*/rawframes_* dir down to its class
    dirs ({class}/, or the top dir itself with `flat`), where a clip's video and its frames' temps
    sit. So it reads about one directory entry per clip and output kind, never a frame's. Only
    names matching TEMP_NAME exactly, only regular files; symlinked dirs (another disk) included."""
    if not is_local(url):
        return 0
    root = filesystem(url)[1]
    removed = 0
    for entry in _entries(root):
        depth = RUN_DIR_DEPTHS.get(entry.name)
        if depth is None and entry.name.startswith(TREE_PREFIXES):
            depth = 0 if flat else 1
        if _remove_if_temp(entry):
            removed += 1
        elif depth is not None and entry.is_dir():
            removed += _sweep(entry.path, depth)
    if removed:
        log.info("removed %d temporary files a killed run left under %s", removed, root)
    return removed


def write_bytes(url, data):
    """Write `data` to `url` whole."""
    fs, path = filesystem(url)
    if protocol(url) in OBJECT_STORES:
        fs.pipe_file(path, data)
        return
    if not is_local(url):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = temp_path(path)
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            fs.mv(tmp, path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
        return
    with failing_as(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_path(path)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            _discard(tmp)


def write_text(url, text):
    write_bytes(url, text.encode("utf-8"))


@contextlib.contextmanager
def local_staging(prefix="kinetics-prep-"):
    """A private local temp dir, removed on every path out."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _put_local(local_path, path, folder=None):
    tmp = temp_path(path, folder)
    try:
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, path)
    finally:
        _discard(tmp)


def put_file(local_path, url):
    """Copy a finished local file to `url` whole (rename locally, one upload remotely)."""
    if is_local(url):
        _, path = filesystem(url)
        with failing_as(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _put_local(local_path, path)
        return
    fs, path = filesystem(url)
    fs.put_file(local_path, path)


def open_input(url):
    """A binary file object for reading `url`; http(s) gets connect and read timeouts."""
    kwargs = {}
    if protocol(url) in ("http", "https"):
        import aiohttp
        kwargs["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30,
                                                                    sock_read=120)}
    return fsspec.open(url, "rb", **kwargs).open()


def gcs_endpoint():
    """(host, port) gcsfs sends gs:// requests to: STORAGE_EMULATOR_HOST, else Google's."""
    parts = urllib.parse.urlsplit(compat.gcs_location())
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def check_reachable(url, timeout=10.0):
    """Raise OSError at once when gs:// cannot be connected to, where gcsfs would retry for ~30 s."""
    if protocol(url) not in ("gs", "gcs"):
        return
    host, port = gcs_endpoint()
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise OSError(f"cannot connect to {host}:{port}") from e


def publish_dir(local_dir, url, prefixes):
    """Put every file of local_dir into the directory `url`, each whole, then remove the files
    there with one of `prefixes` that the new set lacks (left by an earlier run). Returns bytes.

    Locally each file's temp sits beside the dir (in its class dir), not in it, and temps an older
    version left inside the dir are removed. If a local file cannot be put (disk full, read-only)
    once part of the new set is in, the files with `prefixes` are removed from the dir (and the
    dir, if that empties it) before the WriteError goes up, so no partial set is left where a
    finished one belongs. On an object store each object is whole, but a failed or killed put
    can leave part of a set until the clip is made again."""
    names = sorted(os.listdir(local_dir))
    present = listdir_names(url)
    stale = [n for n in present if n.startswith(tuple(prefixes)) and n not in set(names)]
    if is_local(url):
        _publish_local(local_dir, filesystem(url)[1], names, present, stale, prefixes)
    else:
        fs, path = filesystem(url)
        fs.put([os.path.join(local_dir, n) for n in names], [f"{path}/{n}" for n in names])
        for name in stale:
            remove(join(url, name))
    return sum(os.path.getsize(os.path.join(local_dir, n)) for n in names)


def _publish_local(local_dir, path, names, present, stale, prefixes):
    for name in present:
        if TEMP_NAME.fullmatch(name):
            _discard(os.path.join(path, name))
    folder, changed = os.path.dirname(path), False
    try:
        with failing_as(path):
            os.makedirs(path, exist_ok=True)
        for name in names:
            target = os.path.join(path, name)
            with failing_as(target):
                try:
                    _put_local(os.path.join(local_dir, name), target, folder)
                except OSError as e:
                    if e.errno != errno.EXDEV or folder == path:
                        raise
                    folder = path  # the dir links to another filesystem: its temps go inside it
                    _put_local(os.path.join(local_dir, name), target, folder)
            changed = True
        for name in stale:
            with failing_as(os.path.join(path, name), "remove"), contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
    except Exception:
        if changed:  # part of a new set is in: remove the set, it is neither the old one nor the new
            for entry in _entries(path):
                if entry.name.startswith(tuple(prefixes)):
                    _discard(entry.path)
        with contextlib.suppress(OSError):
            os.rmdir(path)  # only if that left it empty
        raise


def read_bytes(url):
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_range(url, start, length):
    """`length` bytes of the file at `url` from byte `start`."""
    fs, path = filesystem(url)
    return fs.cat_file(path, start=start, end=start + length)


def read_bytes_many(urls):
    """{url: bytes} for the urls that could be read (concurrently where the filesystem can)."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = [filesystem(u)[1] for u in urls]
    got = fs.cat(paths, on_error="omit")
    if not isinstance(got, dict):
        got = {paths[0]: got}
    by_path = dict(zip(paths, urls))
    return {by_path[p]: data for p, data in got.items() if not isinstance(data, Exception)}


def exists(url):
    fs, path = filesystem(url)
    return fs.exists(path)


def listdir_names(url):
    """Names directly under a directory url; empty if it does not exist."""
    fs, path = filesystem(url)
    try:
        entries = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [posixpath.basename(e.rstrip("/")) for e in entries]


def find_files(url, detail=False):
    """All files under a directory url, recursively: a sorted list, or {url: info} with detail."""
    fs, path = filesystem(url)
    try:
        found = fs.find(path, detail=True)
    except FileNotFoundError:
        found = {}
    name = (lambda p: p) if is_local(url) else fs.unstrip_protocol
    out = {name(p): info for p, info in found.items()}
    return out if detail else sorted(out)


def remove(url):
    fs, path = filesystem(url)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def remove_tree(url, prune_parent=False):
    """Remove a folder and everything under it (nothing if it is not there); with `prune_parent`,
    its parent folder too if that leaves it empty (local disk: object stores have no folders)."""
    fs, path = filesystem(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    if prune_parent and is_local(url):
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path.rstrip("/")))
