"""The Dataflow job, built offline: `--runner=DataflowRunner --dry_run=True` translates the whole
pipeline (overrides, portable proto, environments, staged packages) and stops before any upload
or API call, so no credentials are needed and nothing beyond this machine may be contacted."""
import ast
import re
import socket
import sys
import tarfile
import tempfile

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, WorkerOptions
from apache_beam.portability.api import beam_runner_api_pb2

from conftest import ROOT, run_cli
from pipeline import build
from pipeline.options import STEPS, resolve

pytest.importorskip("apache_beam.runners.dataflow.dataflow_runner")  # needs apache-beam[gcp]

IMAGE = "us-central1-docker.pkg.dev/test-project/beam/kinetics-prep:test"


@pytest.fixture
def offline(monkeypatch):
    """Refuse, and record, every connection or name lookup that is not for this machine."""
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kw):
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(host)
            raise socket.gaierror(f"test: no name lookups ({host})")
        return real_getaddrinfo(host, *args, **kw)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def dry_run(argv):
    settings, _, beam_args = resolve(argv)
    p = beam.Pipeline(options=PipelineOptions(beam_args))
    build.build(p, settings)
    return p.run()


def test_dataflow_dry_run_builds_the_job(tmp_path, offline, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the staged files stay behind in a dry run
    steps = ",".join(STEPS)
    result = dry_run([
        "--dataset", "kinetics400", "--annotations", "gs://bkt/ann/train.csv", "--output", "gs://bkt/k400",
        "--steps", steps, "--source", "cvdf,youtube", "--clip-cache", "gs://bkt/clip-cache",  # the README's
        "--flow-resource-hint", "min_ram=8GB",
        "--runner=DataflowRunner", "--dry_run=True", "--project=test-project", "--region=us-central1",
        "--temp_location=gs://bkt/tmp", f"--setup_file={ROOT / 'setup.py'}", f"--sdk_container_image={IMAGE}",
        "--machine_type=n2-highcpu-16", "--max_num_workers=4"])
    assert offline == []
    assert result.state == "DONE"
    assert result.job.proto.name.startswith("beamapp-")
    cloud, workers = result.job.options.view_as(GoogleCloudOptions), result.job.options.view_as(WorkerOptions)
    assert cloud.region == "us-central1" and cloud.temp_location.startswith("gs://bkt/tmp/beamapp-")
    assert (workers.machine_type, workers.max_num_workers) == ("n2-highcpu-16", 4)

    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    top = {n.split("/", 1)[0] for n in names}
    wanted = {"ReadAnnotations", "Reshuffle", "CheckLedger", "CVDF", "ProcessClips", "GroupByYouTubeId", "FetchClips",
              "ComputeFlow", "WriteOutputs", "WriteShards", "WriteReport"}
    assert wanted <= top, wanted - top
    # run-level outputs by ranges of a split (no step gathers a split's records)
    assert any(n.startswith("WriteOutputs/GatherPart") for n in names)
    assert any(n.startswith("WriteOutputs/Ranges/Quantiles") for n in names)
    assert not any("GroupSplit" in n for n in names)

    envs = list(proto.components.environments.values())
    hinted = [e for e in envs if e.resource_hints.get("beam:resources:min_ram_bytes:v1") == b"8000000000"]
    flow = next(t for t in proto.components.transforms.values()
                if t.unique_name.startswith("ComputeFlow") and t.environment_id)
    assert len(hinted) == 1 and proto.components.environments[flow.environment_id] == hinted[0]
    for env in envs:
        assert beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image == IMAGE
        staged = {beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(a.role_payload).staged_name: a
                  for a in env.dependencies}
        assert {"workflow.tar.gz", "pickled_main_session", "submission_environment_dependencies.txt"} <= set(staged)
        sdist = beam_runner_api_pb2.ArtifactFilePayload.FromString(staged["workflow.tar.gz"].type_payload).path
        with tarfile.open(sdist) as tar:
            files = {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}
        assert {"setup.py", "pipeline/build.py", "transforms/clips.py", "transforms/shards.py",
                "transforms/report.py", "configs/demo.yaml", "configs/label_map_k400.txt"} <= files
        deps = open(beam_runner_api_pb2.ArtifactFilePayload.FromString(
            staged["submission_environment_dependencies.txt"].type_payload).path).read()
        assert "apache-beam==2.77" in deps


def test_dataflow_refuses_local_paths_and_dry_runs_from_the_cli(tmp_path, offline, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    common = ["--dataset", "kinetics400", "--steps", "fetch,resize", "--runner=DataflowRunner", "--dry_run=True",
              "--project=test-project", "--region=us-central1", "--temp_location=gs://bkt/tmp"]
    assert run_cli(*common, "--annotations", tmp_path / "train.csv", "--output", "gs://bkt/out",
                   "--cookies", "cookies.txt") == 2
    err = capsys.readouterr().err
    assert "upload them and pass gs:// URLs" in err
    assert f"--annotations {tmp_path / 'train.csv'}" in err and "--cookies /" in err
    assert run_cli(*common, "--annotations", "gs://bkt/ann/train.csv", "--output", "gs://bkt/out") == 0
    assert "dry run: the DataflowRunner job was built and validated" in capsys.readouterr().out
    assert offline == []


def dockerfile():
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ")


def test_dockerfile_versions_match_this_environment():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile(), re.M))
    assert args["BEAM_VERSION"] == beam.__version__
    assert args["PY_VERSION"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert re.search(r"^FROM apache/beam_python\$\{PY_VERSION\}_sdk:\$\{BEAM_VERSION\}$", dockerfile(), re.M)


def setup_keywords():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("packages", "package_dir")}


def test_dockerfile_copies_everything_setup_py_packages():
    text = dockerfile()
    copies = [line.split() for line in re.findall(r"^COPY (.+)$", text, re.M)]
    assert all(dest in ("./", srcs[0]) for *srcs, dest in copies if len(srcs) == 1)  # the layout stays
    copied = {src.rstrip("/") for *srcs, _ in copies for src in srcs}
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    kw = setup_keywords()
    dirs = {kw["package_dir"].get(pkg, pkg.replace(".", "/")) for pkg in kw["packages"]}
    needed = {"setup.py", "README.md"} | {d.split("/")[0] for d in dirs}
    assert needed <= copied and needed <= allowed, (needed - copied, needed - allowed)
    check = text[text.index("pip check"):]
    assert re.search(r"&& cd / && python -c", check) and "builtin_config('kinetics400')" in check
