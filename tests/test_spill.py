"""The annotation rows spilled to the run's scratch folder: the reader writes them to files under
{output}/_runs/{run_id}/ as it reads, only (file, offset, length) pieces go through the Reshuffle,
and each worker reads its pieces' rows back. Every row once, in annotation order, --limit and
de-duplication as before; nothing left in the output tree after a run, a failed run or a killed one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, write_csv
from test_scale import plant_finished, stable, synthetic_rows
from transforms import runs, storage
from transforms.records import Clip


def csv_text(rows, duplicates=()):
    """The rows as a CSV, each row of `duplicates` (indexes) written twice more: once as it is (an exact
    duplicate, read once) and once with another label's clip id clash (an invalid row)."""
    lines = []
    for i, (label, yid, s, e, split) in enumerate(rows):
        lines.append(f'"{label}",{yid},{s},{e},{split}\n')
        if i in duplicates:
            lines.append(f'"{label}",{yid},{s},{e},{split}\n')
            lines.append(f'"{label}",{yid},{s},{e}.5,{split}\n')  # the same clip id (%06d), other times
    return "label,youtube_id,time_start,time_end,split\n" + "".join(lines)


@pytest.fixture
def spilled(monkeypatch):
    """The spill files written (url, bytes), with small files and pieces (so a few hundred rows make
    many of each)."""
    sizes(monkeypatch, 3000, 7)
    written = []
    real = storage.write_bytes

    def write_bytes(url, data):
        if os.path.basename(url).startswith("rows-"):
            written.append((url, len(data)))
        return real(url, data)

    monkeypatch.setattr(storage, "write_bytes", write_bytes)
    return written


def sizes(monkeypatch, flush_bytes, piece_elements, pieces=100):
    monkeypatch.setattr(runs, "FLUSH_BYTES", flush_bytes)
    monkeypatch.setattr(runs, "PIECE_ELEMENTS", piece_elements)
    monkeypatch.setattr(runs, "PIECES", pieces)


def tree(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names)


def outputs(out):
    """{name: bytes} of every run-level output but the report (it shows timings and the output root),
    manifests as their records without run ids and timings."""
    got = {}
    for name in tree(out):
        if name.startswith(("_ledger/", "report")):
            continue
        data = (out / name).read_bytes()
        got[name] = stable(data) if name.startswith("manifest/") else data
    return got


def test_a_spill_cuts_its_elements_into_pieces_in_order(tmp_path):
    folder = str(tmp_path / "_runs" / "r1")
    items = [Clip("train", "a", 0, "a", f"{i:011d}", 1.0, 2.0, f"{i:011d}_000001_000002", "x.csv", i + 2, (0, i + 2))
             if i % 3 else {"split": "val", "reason": "é\u2028" * (i % 11), "order": (0, i + 2)} for i in range(500)]
    spill = runs.Spill(folder, flush_bytes=4000, pieces=40, piece_elements=9)
    for item in items:
        spill.add(item)
    pieces = list(spill.pieces())
    files = sorted(os.listdir(folder))
    assert len(files) > 10 and all(n.startswith("rows-") and n.endswith(".pickle") for n in files)
    back = [list(runs.read_spilled(p)) for p in pieces]
    assert [x for piece in back for x in piece] == items  # every element once, in order, as it was
    assert type(back[0][0]) is dict and isinstance(back[0][1], Clip) and back[0][0]["order"] == (0, 2)
    assert max(map(len, back)) == 9 and sum(map(len, back)) == 500  # 500 / 40 pieces: 13, capped at 9
    assert sorted({os.path.basename(url) for url, _, _ in pieces}) == files  # no piece spans two files

    few = runs.Spill(str(tmp_path / "few"))
    for item in items[:5]:
        few.add(item)
    assert [list(runs.read_spilled(p)) for p in few.pieces()] == [[x] for x in items[:5]]  # a small run: one each
    empty = runs.Spill(str(tmp_path / "none"))
    assert list(empty.pieces()) == [] and not (tmp_path / "none").exists()


def test_rows_across_many_spill_files_keep_every_row_once_and_in_order(tmp_path, monkeypatch, spilled):
    """A CSV spilled to ~100 files in ~180 pieces gives the outputs a run with one file and one piece a
    row gives: file lists, failures.csv, summary.json, manifests' records (exact duplicates once,
    clashes invalid); with --limit too, which takes the first valid rows of each split in file order."""
    labels, rows = synthetic_rows(1200)
    ann = write_csv(tmp_path / "kinetics.csv", csv_text(rows, duplicates=range(5, 1200, 50)))
    args = ("--dataset", "kinetics400", "--annotations", ann, "--steps", "filelists", "--splits", "train,val")
    got = {}
    for name, extra, small in (("one", (), False), ("many", (), True),
                               ("one_limit", ("--limit", "300"), False), ("many_limit", ("--limit", "300"), True)):
        out = tmp_path / name
        plant_finished(out, labels, rows)
        sizes(monkeypatch, *((3000, 7) if small else (1 << 30, 1)))
        spilled.clear()
        assert run_cli(*args, "--output", out, *extra) == 0
        files = {url for url, _ in spilled}
        assert len(files) > 50 if small and not extra else len(files) >= 1
        assert not any(os.path.exists(url) for url in files)
        assert not (out / "_runs").exists() and not [n for n in tree(out) if "rows-" in n]
        got[name] = outputs(out)

    assert got["many"] == got["one"] and got["many_limit"] == got["one_limit"]
    records = [r for name, recs in got["many"].items() if name.startswith("manifest/") for r in recs]
    assert len(records) == len(rows) + 24  # every row once, the 24 clashes as invalid rows
    assert sum("duplicates the clip id" in r.get("reason", "") for r in records) == 24
    val = got["many"]["manifest/val.jsonl"]
    assert [r["line"] for r in val] == sorted(r["line"] for r in val)  # annotation order
    valid = {split: sum(1 for r in rows if r[4] == split and r[1] != "bad id") for split in ("train", "val")}
    assert valid["train"] < 300 < valid["val"]
    limited = [r for r in got["many_limit"]["manifest/val.jsonl"] if r["status"] != "invalid"]
    first = [f"{yid}_{s:06d}_{e:06d}" for _, yid, s, e, split in rows if split == "val" and yid != "bad id"][:300]
    assert [r["clip_id"] for r in limited] == first


def test_a_source_that_cannot_be_read_after_others_were_spilled_leaves_no_spill_files(tmp_path, monkeypatch, spilled,
                                                                                     capsys):
    """The second source is deleted after the preflight read its header: the run stops in one line
    after the first source's rows were spilled, and no spill file is left."""
    from pipeline import cli
    labels, rows = synthetic_rows(400)
    first = write_csv(tmp_path / "kinetics_val.csv", csv_text(rows))
    second = write_csv(tmp_path / "kinetics_train.csv", csv_text(rows[:10]))
    real = cli.check_annotations

    def check_then_delete(url):
        real(url)
        if url == str(second):
            os.remove(second)

    monkeypatch.setattr(cli, "check_annotations", check_then_delete)
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--annotations", f"{first},{second}", "--output", out,
                   "--steps", "filelists", "--splits", "train,val") == 1
    assert f"cannot read annotations {second}" in capsys.readouterr().err
    files = {url for url, _ in spilled}
    assert len(files) > 10 and not any(os.path.exists(url) for url in files)
    assert not (out / "_runs").exists() and not (out / "summary.json").exists()


KILLED = """
import sys, time
from transforms import runs
runs.FLUSH_BYTES = 2000
flush = runs.Spill._flush
def slow_flush(self):
    time.sleep(0.05)  # a slow store: the read takes a while, for the test to kill it part-way
    flush(self)
runs.Spill._flush = slow_flush
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_while_reading_leaves_spill_files_a_rerun_sweeps(tmp_path):
    """A run SIGKILLed while its reader spills rows leaves rows-*.pickle under _runs/{run_id}/; the
    next run removes them, and its tree is the tree a clean run leaves."""
    labels, rows = synthetic_rows(3000, seed=3)
    ann = write_csv(tmp_path / "kinetics.csv", csv_text(rows))
    out = tmp_path / "out"
    args = ["--dataset", "kinetics400", "--annotations", str(ann), "--steps", "filelists", "--splits", "train,val"]
    plant_finished(out, labels, rows)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, *args, "--output", str(out)], cwd=ROOT,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left = []
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None and len(left) < 3:
            left = [n for n in tree(out) if os.path.basename(n).startswith("rows-")]
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(left) >= 3 and all(n.startswith("_runs/") for n in left), left
    assert not (out / "summary.json").exists() and not (out / "manifest").exists()  # killed while reading

    assert run_cli(*args, "--output", out) == 0
    clean = tmp_path / "clean"
    plant_finished(clean, labels, rows)
    assert run_cli(*args, "--output", clean) == 0
    assert tree(out) == tree(clean) and not (out / "_runs").exists()
    assert outputs(out) == outputs(clean)
