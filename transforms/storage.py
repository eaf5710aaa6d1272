"""Whole-file reads and writes through fsspec, for local paths and object stores alike.

Local files are written under a temporary name and renamed into place; object stores
(gs://, s3://, memory://) commit an object only when its single upload completes.
Either way a reader never sees a half-written file where a finished one belongs.
"""
import contextlib
import os
import posixpath
import re
import shutil
import socket
import tempfile
import urllib.parse
import uuid

import fsspec

OBJECT_STORES = {"gs", "gcs", "s3", "s3a", "az", "abfs", "memory"}
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def filesystem(url):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def protocol(url):
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url):
    return protocol(url) in ("file", "local")


def normalize(url):
    """One spelling per location: absolute local paths, protocol-qualified remote urls.

    Works on the string alone: making a gcsfs instance would search for credentials.
    """
    cls = fsspec.get_filesystem_class(protocol(url))
    path = cls._strip_protocol(url)
    if is_local(url):
        return os.path.abspath(path)
    if "://" in path:
        return path.rstrip("/")
    name = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
    return f"{name}://{path}".rstrip("/")


def join(base, *parts):
    base = base.rstrip("/")
    return posixpath.join(base, *parts) if parts else base


def temp_path(path):
    """Where a local file is written before it is renamed to `path` (a TEMP_NAME in its dir)."""
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")


def sweep_temp_files(url):
    """Remove the temporary files a killed run left under a local dir url; returns how many."""
    if not is_local(url):
        return 0
    removed = 0
    for parent, _, names in os.walk(filesystem(url)[1]):
        for name in names:
            if TEMP_NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(parent, name))
                    removed += 1
    return removed


def write_bytes(url, data):
    """Write `data` to `url` whole."""
    fs, path = filesystem(url)
    if protocol(url) in OBJECT_STORES:
        fs.pipe_file(path, data)
        return
    parent = os.path.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    tmp = temp_path(path)
    try:
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp)


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


def put_file(local_path, url):
    """Copy a finished local file to `url` whole (rename locally, one upload remotely)."""
    if is_local(url):
        _, path = filesystem(url)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = temp_path(path)
        try:
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
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
    from gcsfs.core import _location
    parts = urllib.parse.urlsplit(_location())
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
    there with one of `prefixes` that the new set lacks (left by an earlier run). Returns bytes."""
    names = sorted(os.listdir(local_dir))
    stale = [n for n in listdir_names(url) if n.startswith(tuple(prefixes)) and n not in set(names)]
    if is_local(url):
        for name in names:
            put_file(os.path.join(local_dir, name), join(url, name))
    else:
        fs, path = filesystem(url)
        fs.put([os.path.join(local_dir, n) for n in names], [f"{path}/{n}" for n in names])
    for name in stale:
        remove(join(url, name))
    return sum(os.path.getsize(os.path.join(local_dir, n)) for n in names)


def read_bytes(url):
    fs, path = filesystem(url)
    return fs.cat_file(path)


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
