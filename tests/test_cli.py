import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_video, read_records, run_cli, serve_dir, write_csv, write_tar
from pipeline.options import UsageError, resolve

CSV = "label,youtube_id,time_start,time_end,split\nabseiling,abcdefghijk,1,11,val\n"


def run_process(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_options():
    proc = run_process("--help")
    assert proc.returncode == 0
    for flag in ("--dataset", "--config", "--annotations", "--output", "--splits", "--classes",
                 "--limit", "--steps", "--trim-format", "--class-dirs", "--layout", "--verify",
                 "--shuffle", "--seed", "--filelist-format", "--redo"):
        assert flag in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--dataset", "kinetics9"], "--dataset must be one of"),
    (["--dataset", "kinetics400", "--output", "o", "--limt", "3"], "unrecognized arguments: --limt"),
    (["--dataset", "kinetics400", "--output", "o", "--steps", "fetch,dance"], "unknown step 'dance'"),
    (["--dataset", "kinetics400", "--output", "o", "--splits", "holdout"], "unknown split"),
    (["--dataset", "kinetics400", "--output", "o", "--classes", "juggling cats"], "not in the kinetics400"),
    (["--dataset", "kinetics400", "--output", "o", "--trim-format", "%s/.."], "not a safe file-name"),
    (["--dataset", "kinetics400", "--output", "o", "--limit", "many"], "invalid int value"),
    (["--dataset", "kinetics400", "--output", "o", "--clips-per-shard", "0"], "--clips-per-shard >= 1"),
    (["--dataset", "kinetics400"], "no output"),
    (["--output", "o", "--annotations", "a.csv"], "name a dataset"),
])
def test_usage_errors_are_one_line_exit_2(args, message):
    proc = run_process(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinetics-prep: error:") and message in lines[0]


def one_line_error(proc):
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kinetics-prep: error: "), proc.stderr
    return lines[0]


def test_missing_file_and_unreachable_url_are_one_line_exit_1(tmp_path):
    with serve_dir(tmp_path) as base:
        for source, why in ((tmp_path / "nope.csv", "No such file or directory"),
                            ("http://127.0.0.1:9/kinetics400.tar.gz", "connection refused"),
                            (f"{base}/gone.csv", "404 File not found")):
            proc = run_process("--dataset", "kinetics400", "--annotations", source, "--output", tmp_path / "o")
            assert one_line_error(proc).startswith(f"kinetics-prep: error: cannot read annotations {source}: {why}")




def test_bad_and_non_kinetics_tarballs_are_one_line(tmp_path):
    bad = write_csv(tmp_path / "bad.tar.gz", b"\x1f\x8b not really gzip")
    other = write_tar(tmp_path / "other.tar.gz", {"readme.txt": b"hi", "data/train.json": b"{}"})
    truncated = write_csv(tmp_path / "cut.tar.gz", write_tar(tmp_path / "k.tar.gz", {
        "k/train.csv": CSV.encode() * 2000}).read_bytes()[:600])
    for path, why in ((bad, f"cannot read annotation archive {bad}: "),
                      (other, f"{other} holds no train.csv, validate.csv or test.csv"),
                      (truncated, f"cannot read annotation archive {truncated}: ")):
        proc = run_process("--dataset", "kinetics400", "--annotations", path, "--output", tmp_path / "o")
        assert why in one_line_error(proc)


def test_annotation_errors_inside_the_run_are_one_line(tmp_path):
    """The backstop: an archive that fails only once the pipeline reads it (no preflight here)."""
    bad = write_csv(tmp_path / "bad.tar.gz", b"\x1f\x8b not really gzip")
    code = "import sys; from pipeline import cli; cli.preflight = lambda s: None; sys.exit(cli.main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "--dataset", "kinetics400", "--annotations", str(bad),
                           "--output", str(tmp_path / "o"), "--steps", "filelists"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"kinetics-prep: error: cannot read annotation archive {bad}: ")
    assert len(proc.stderr.strip().splitlines()) == 2  # the start line and the error


def _closed_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_gcs_is_fast_and_one_line(tmp_path):
    port = _closed_port()
    env = dict(os.environ, STORAGE_EMULATOR_HOST=f"http://127.0.0.1:{port}",
               GCE_METADATA_HOST=f"127.0.0.1:{port}", GCE_METADATA_IP=f"127.0.0.1:{port}")

    def run(*args):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "--dataset", "kinetics400", *map(str, args)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        return proc, time.monotonic() - started

    # the same start-up failing on a local file, before and after: what the machine's load costs,
    # retries aside (the slower of the two, as a busy machine's load varies from run to run)
    local = ("--annotations", tmp_path / "nope.csv", "--output", tmp_path / "o")
    _, before = run(*local)
    runs = [run(*args) for args in (
        ["--annotations", "gs://bucket/a.csv", "--output", tmp_path / "o"],
        ["--annotations", write_csv(tmp_path / "a.csv", CSV), "--output", "gs://bucket/out"])]
    _, after = run(*local)
    baseline = max(before, after)
    for proc, elapsed in runs:
        assert elapsed < baseline + 15, "no gcsfs retries (~30 s)"
        assert one_line_error(proc).endswith(f"cannot connect to 127.0.0.1:{port}: Connection refused")


def test_missing_gcs_object_is_one_line_without_client_logging(tmp_path):
    """gcsfs and google.auth log credential warnings for every bucket they look at; not in preflight."""
    from gcs_emulator import emulator
    env = {k: v for k, v in os.environ.items() if k not in (
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "FSSPEC_GS_TOKEN", "FSSPEC_GCS_TOKEN")}
    with emulator() as endpoint:
        env.update(STORAGE_EMULATOR_HOST=endpoint, NO_GCE_CHECK="true", GCE_METADATA_HOST="127.0.0.1:9",
                   GCE_METADATA_IP="127.0.0.1:9")
        proc = subprocess.run([sys.executable, "-m", "pipeline", "--dataset", "kinetics400", "--annotations",
                               "gs://bucket/nope.csv", "--output", str(tmp_path / "o")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert one_line_error(proc) == "kinetics-prep: error: cannot read annotations gs://bucket/nope.csv: not found"


def test_help_says_which_defaults_the_dataset_configs_set():
    text = " ".join(run_process("--help").stdout.split())
    assert "(default: filelists)" not in text
    assert ("(default from the dataset config: fetch,filelists for kinetics400, kinetics600, kinetics700, "
            "kinetics700_2020; fetch,resize,rgb,flow,shards,filelists for demo; filelists otherwise)") in text
    assert "(default from the dataset config: local for demo; youtube otherwise)" in text
    assert "(default from the dataset config: train,val for demo; train,val,test otherwise)" in text
    assert "(default from the dataset config: dis for demo; tvl1 otherwise)" in text
    assert re.search(r"--filelist-format \{txt,json\} file list format \(default: txt\)", text)


def test_label_map_blank_lines(tmp_path):
    lm = tmp_path / "labels.txt"
    lm.write_text("abseiling\nzumba\n\n \n")
    settings, _, _ = resolve(["--dataset", "kinetics400", "--label-map", str(lm), "--output", "o"])
    assert settings.reading.labels == ("abseiling", "zumba")
    lm.write_text("abseiling\n\nzumba\n")
    with pytest.raises(UsageError, match=r"label map .*labels.txt: line 2 is blank"):
        resolve(["--dataset", "kinetics400", "--label-map", str(lm), "--output", "o"])
    cfg = tmp_path / "mini.yaml"
    cfg.write_text("name: mini\nlabel_map: [abseiling, '', zumba]\n")
    with pytest.raises(UsageError, match="line 2 is blank"):
        resolve(["--config", str(cfg), "--output", "o", "--annotations", "a.csv"])


def test_unwritable_output_is_one_line(tmp_path):
    ann = write_csv(tmp_path / "a.csv", CSV)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_process("--dataset", "kinetics400", "--annotations", ann, "--output", blocker / "out")
    assert proc.returncode == 1 and "cannot write to --output" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_config_layers_and_flags(tmp_path):
    user = tmp_path / "mine.yaml"
    user.write_text("limit: 5\nsplits: [val]\nlayout: flat\nannotations: mmaction2\n")
    settings, _, _ = resolve(["--dataset", "kinetics400", "--config", str(user), "--output", "o",
                              "--limit", "7"])
    assert settings.reading.limit == 7 and settings.reading.splits == ("val",) and settings.outputs.flat
    assert settings.reading.annotations[0].endswith("kinetics400/annotations/kinetics_train.csv")
    assert len(settings.reading.labels) == 400
    settings, _, _ = resolve(["--dataset", "kinetics600", "--output", "o"])
    assert settings.reading.annotations == ("https://storage.googleapis.com/deepmind-media/Datasets/kinetics600.tar.gz",)
    bad = tmp_path / "bad.yaml"
    bad.write_text("limmit: 3\n")
    with pytest.raises(UsageError, match="unknown key"):
        resolve(["--dataset", "kinetics400", "--config", str(bad), "--output", "o"])
    bad.write_text("layout: diagonal\n")
    with pytest.raises(UsageError, match="layout must be one of"):
        resolve(["--dataset", "kinetics400", "--config", str(bad), "--output", "o"])


def test_user_config_defines_its_own_dataset(tmp_path):
    (tmp_path / "labels.txt").write_text("abseiling\nzumba\n")
    ann = write_csv(tmp_path / "a.csv", CSV + "zumba,bbcdefghijk,2,12,val\n")
    cfg = tmp_path / "mini.yaml"
    cfg.write_text(f"name: mini\nlabel_map: labels.txt\nannotations: [{ann}]\noutput: {tmp_path / 'out'}\n")
    make_video(tmp_path / "out" / "videos_val" / "zumba" / "bbcdefghijk_000002_000012.mp4")
    assert run_cli("--config", cfg) == 0
    assert (tmp_path / "out" / "mini_val_list_videos.txt").read_text() == "zumba/bbcdefghijk_000002_000012.mp4 1\n"
    assert {r["status"] for r in read_records(tmp_path / "out")} == {"exists", "missing"}


def test_console_script_and_module_agree(tmp_path):
    ann = write_csv(tmp_path / "a.csv", CSV)
    script = ROOT / ".venv" / "bin" / "kinetics-prep"
    if not script.exists():
        pytest.skip("console script not installed in .venv")
    proc = subprocess.run([str(script), "--dataset", "kinetics400", "--annotations", str(ann),
                           "--output", str(tmp_path / "out"), "--steps", "filelists"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["total"] == {"missing": 1}


def test_builtin_configs_load_from_an_installed_package(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, timeout=300)
    site = tmp_path / "site"
    (wheel,) = wheels.glob("kinetics_prep-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, timeout=300)
    code = (f"import sys; sys.path[:] = [p for p in sys.path if p not in ('', {str(ROOT)!r})]; "
            f"sys.path.insert(0, {str(site)!r}); import pipeline.options as o; "
            "assert o.__file__.startswith(sys.path[0]), o.__file__; "
            "print(*(len(o.builtin_config(d)['label_map']) for d in o.DATASETS))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["400", "600", "700", "700", "4"]
