import json
import subprocess
import sys

import pytest

from conftest import ROOT, make_video, read_records, run_cli, write_csv
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


def test_missing_file_and_unreachable_url_are_one_line_exit_1(tmp_path):
    for source in (tmp_path / "nope.csv", "http://127.0.0.1:9/kinetics400.tar.gz"):
        proc = run_process("--dataset", "kinetics400", "--annotations", source, "--output", tmp_path / "o")
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot read annotations" in lines[0] and "Traceback" not in proc.stderr


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
    assert settings.limit == 7 and settings.splits == ("val",) and settings.flat
    assert settings.annotations[0].endswith("kinetics400/annotations/kinetics_train.csv")
    assert len(settings.labels) == 400
    settings, _, _ = resolve(["--dataset", "kinetics600", "--output", "o"])
    assert settings.annotations == ("https://storage.googleapis.com/deepmind-media/Datasets/kinetics600.tar.gz",)
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
