"""The demo through PortableRunner: Beam's Python job service and an EXTERNAL worker pool, each
its own process started in its own directory (the job API, artifact staging and cross-process
pickling that a Flink cluster uses), compared with an in-process run."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from gcs_emulator import free_port
from test_gcs import assert_same_outputs, demo_args, demo_dir  # noqa: F401  (fixture)


def _wait_for_port(proc, port, log, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[2]} exited: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(job endpoint, worker pool endpoint); both processes and their workers are ended after."""
    cwd = tmp_path_factory.mktemp("cluster")
    # the pool starts each SDK worker as `python -c ...`, so this interpreter must come first on PATH
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    job_port, pool_port = free_port(), free_port()
    services = [("apache_beam.runners.portability.local_job_service_main", f"--port={job_port}", job_port),
                ("apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}", pool_port)]
    procs = []
    try:
        for module, flag, port in services:
            log = cwd / f"{module.rsplit('.', 1)[-1]}.log"
            with open(log, "wb") as out:
                procs.append(subprocess.Popen([sys.executable, "-m", module, flag], cwd=cwd, env=env,
                                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for_port(procs[-1], port, log)
        yield f"localhost:{job_port}", f"localhost:{pool_port}"
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_demo_through_portable_runner_matches_in_process(cluster, demo_dir, tmp_path, monkeypatch):
    job, pool = cluster
    monkeypatch.chdir(demo_dir)
    assert run_cli(*demo_args(), "--output", tmp_path / "direct") == 0
    assert run_cli(*demo_args(), "--output", tmp_path / "portable", "--runner=PortableRunner",
                   f"--job_endpoint={job}", "--environment_type=EXTERNAL", f"--environment_config={pool}") == 0
    files = assert_same_outputs(str(tmp_path / "direct"), str(tmp_path / "portable"))
    assert b'"ok": 3' in files["summary.json"]
    assert any(n.endswith("_list_flow.txt") for n in files)
