"""A real GCS emulator process (gcp-storage-emulator) on 127.0.0.1 for tests.

Import this module from a test module and use the `gcs` fixture. At import it sets, for this
process and every process it starts:
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false: otherwise `import gcsfs` picks a filesystem that
  probes a gRPC API for every bucket and waits 60 s against the emulator. If gcsfs was
  imported earlier in this process, the plain GCSFileSystem is registered for gs:// instead.
- NO_GCE_CHECK=true and FSSPEC_GS_TOKEN=anon: no credential search, no metadata-server probe,
  so nothing beyond 127.0.0.1 is contacted.
The fixture also marks Beam's credentials as already looked up (private API: Beam's own gs://
client would otherwise retry Application Default Credentials for ~20 s once per process).
"""
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "true",
       "FSSPEC_GS_TOKEN": "anon", "FSSPEC_GCS_TOKEN": "anon"}
os.environ.update(ENV)

import fsspec  # noqa: E402  (after the environment above)
import gcsfs.core  # noqa: E402
import pytest  # noqa: E402

BUCKET = "bucket"
# The emulator serves one request at a time from a listen backlog of 5; gcsfs uploads many files
# at once and dropped connections wait for TCP retransmits (a 200-file put took 55 s), so the
# emulator runs with a deeper backlog.
LAUNCH = ("import http.server, sys; http.server.HTTPServer.request_queue_size = 1024; "
          "from gcp_storage_emulator.__main__ import main; sys.exit(main())")


def plain_gcsfs():
    """Make gs:// use gcsfs' plain GCSFileSystem, anonymously, with no cached instances."""
    for proto in ("gs", "gcs"):
        fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
        fsspec.config.conf.setdefault(proto, {})["token"] = "anon"
    gcsfs.core.GCSFileSystem.clear_instance_cache()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc, url, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"GCS emulator did not answer at {url}")


@contextlib.contextmanager
def emulator(bucket=BUCKET):
    """Run the emulator (in memory, `bucket` created); yields its http://127.0.0.1:PORT endpoint."""
    for _ in range(3):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory",
                                 f"--default-bucket={bucket}", "--quiet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            if _wait(proc, f"{endpoint}/storage/v1/b/{bucket}"):
                break
        except TimeoutError:
            proc.kill()
            proc.wait()
            raise
    else:
        raise RuntimeError("GCS emulator exited at start three times")
    try:
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def gcs():
    """A gcsfs filesystem on a fresh emulator with bucket BUCKET; STORAGE_EMULATOR_HOST set meanwhile."""
    from apache_beam.internal.gcp import auth

    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    saved_init = auth._Credentials._credentials_init
    with emulator() as endpoint:
        os.environ["STORAGE_EMULATOR_HOST"] = endpoint
        auth._Credentials._credentials_init = True
        plain_gcsfs()
        try:
            yield gcsfs.core.GCSFileSystem(token="anon")
        finally:
            auth._Credentials._credentials_init = saved_init
            if saved is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = saved
            gcsfs.core.GCSFileSystem.clear_instance_cache()
