"""The spine end to end on the in-process runner: annotations -> ledger, manifest, summary,
failures.csv, label_map.txt and MMAction2 file lists."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import mmaction2_reference as mm
from conftest import ANNOTATIONS, ROOT, make_video, read_records, run_cli, write_csv
from transforms.reader import clean_class_dir

K400_VAL = ANNOTATIONS / "activitynet_kinetics-400_val.csv"
WANTED = ["abseiling", "air drumming", "hurling (sport)", "massaging person's head", "zumba", "archery"]


def k400_rows(per_class=3):
    """Lines of the real 2017 K400 val CSV (kept verbatim, quotes and all) for a few classes."""
    lines = K400_VAL.read_text().splitlines()
    picked, seen = [], {}
    for line in lines[1:]:
        label = next(csv.reader([line]))[0]
        if label in WANTED and seen.get(label, 0) < per_class:
            seen[label] = seen.get(label, 0) + 1
            picked.append(line)
    return lines[0], picked


def train_csv(tmp_path):
    """A kinetics_train.csv for the reference: every K400 class once, none of its clips on disk."""
    labels = (ROOT / "configs" / "label_map_k400.txt").read_text().splitlines()
    rows = "".join(f'"{label}",zzzzzzzzzzz,{i},{i + 10},train,0\n' for i, label in enumerate(labels))
    return write_csv(tmp_path / "kinetics_train.csv", "label,youtube_id,time_start,time_end,split,is_cc\n" + rows)


def clip_path(line):
    label, yid, start, end = next(csv.reader([line]))[:4]
    return clean_class_dir(label), f"{yid}_{int(start):06d}_{int(end):06d}"


@pytest.fixture
def tree(tmp_path, fixtures):
    """An existing MMAction2 tree: videos for some rows, rawframes for others, some rows with nothing."""
    header, rows = k400_rows()
    ann = write_csv(tmp_path / "kinetics_val.csv", "\n".join([header] + rows) + "\n")
    out = tmp_path / "out"
    for i, line in enumerate(rows):
        cls, clip = clip_path(line)
        if i % 4 != 3:
            make_video(out / "videos_val" / cls / f"{clip}.mp4")
        if i % 3 == 0:
            d = out / "rawframes_val" / cls / clip
            d.mkdir(parents=True)
            for k in range(1, 6 + i):
                (d / f"img_{k:05d}.jpg").write_bytes(b"")
                if k > 1:
                    (d / f"flow_x_{k - 1:05d}.jpg").write_bytes(b"")
                    (d / f"flow_y_{k - 1:05d}.jpg").write_bytes(b"")
    return ann, out, rows, train_csv(tmp_path)


def test_filelists_over_existing_tree(tree):
    ann, out, rows, train = tree
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--splits", "val",
                   "--output", out, "--steps", "filelists") == 0
    for fmt, src in (("videos", "videos_val"), ("rawframes", "rawframes_val")):
        want = mm.build_file_list(str(out / src), train, ann, subset="val", fmt=fmt)
        assert (out / f"kinetics400_val_list_{fmt}.txt").read_bytes() == want
        assert want
    flow = (out / "kinetics400_val_list_flow.txt").read_text().splitlines()
    assert flow and all(int(n) == int(img) - 1 for (_, n, _), (_, img, _) in zip(
        (x.split() for x in flow),
        (x.split() for x in (out / "kinetics400_val_list_rawframes.txt").read_text().splitlines())))

    records = read_records(out)
    assert len(records) == len(rows)
    summary = json.loads((out / "summary.json").read_text())
    del summary["availability"]  # its keys: tests/test_availability.py
    n_missing = sum(1 for i in range(len(rows)) if i % 4 == 3 and i % 3 != 0)
    assert summary == {"splits": {"val": {"exists": len(rows) - n_missing, "missing": n_missing}},
                       "total": {"exists": len(rows) - n_missing, "missing": n_missing}}
    failures = list(csv.reader((out / "failures.csv").open()))
    assert failures[0] == ["split", "label", "youtube_id", "time_start", "time_end", "status", "reason"]
    assert len(failures) == 1 + n_missing and all(r[5] == "missing" for r in failures[1:])
    assert (out / "label_map.txt").read_bytes() == (ROOT / "configs" / "label_map_k400.txt").read_bytes()
    ledger = list((out / "_ledger" / "val").glob("*/*.json"))
    assert len(ledger) == len(rows)
    hurling = [r for r in records if r["label"] == "hurling (sport)"]
    assert hurling and all(r["label_index"] == 161 and r["class_dir"] == "hurling_(sport)" for r in hurling)


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_filelists_shuffled_with_seed(tree, fmt):
    ann, out, _, train = tree
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--splits", "val", "--output", out,
                   "--steps", "filelists", "--shuffle", "--seed", "7", "--filelist-format", fmt) == 0
    for kind, src in (("videos", "videos_val"), ("rawframes", "rawframes_val")):
        want = mm.build_file_list(str(out / src), train, ann, subset="val", fmt=kind,
                                  shuffle=True, seed=7, output_format=fmt)
        assert (out / f"kinetics400_val_list_{kind}.{fmt}").read_bytes() == want


def test_flat_layout_and_unlabelled_test_list(tmp_path, fixtures):
    rows = (ANNOTATIONS / "activitynet_kinetics-400_test.csv").read_text().splitlines()[:5]
    ann = write_csv(tmp_path / "test.csv", "\n".join(rows) + "\n")
    out = tmp_path / "out"
    ids = [r.split(",") for r in rows[1:]]
    for yid, s, e, _ in ids[:3]:
        make_video(out / "videos_test" / f"{yid}_{int(s):06d}_{int(e):06d}.mp4")
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out,
                   "--layout", "flat", "--steps", "filelists") == 0
    assert (out / "kinetics400_test_list_videos.txt").read_text() == "".join(
        f"{yid}_{int(s):06d}_{int(e):06d}.mp4 -1\n" for yid, s, e, _ in ids[:3])
    want = mm.build_file_list(str(out / "videos_test"), train_csv(tmp_path), K400_VAL, subset="val", level=1)
    assert want == b""  # MMAction2 cannot list test clips at all; we can
    assert not (out / "kinetics400_test_list_rawframes.txt").exists()


def test_rerun_replaces_outputs_whole(tree):
    ann, out, rows, _ = tree
    base = ["--dataset", "kinetics400", "--annotations", ann, "--output", out, "--steps", "filelists"]
    assert run_cli(*base, "--splits", "val") == 0
    first = {r["clip_id"]: r for r in read_records(out)}
    stale = out / "manifest" / "train.jsonl"
    stale.write_text("{}\n")
    assert run_cli(*base, "--splits", "val", "--limit", "4") == 0
    assert sorted(p.name for p in (out / "manifest").iterdir()) == ["val.jsonl"]
    again = read_records(out)
    assert len(again) == 4
    assert all(r["status"] == first[r["clip_id"]]["status"] for r in again)
    assert all(r["run_id"] == first[r["clip_id"]]["run_id"] for r in again
               if "video" in (r.get("outputs") or {}))  # nothing redone; clips without a video are looked at again


def test_verify_full_catches_a_corrupt_existing_video(tmp_path, fixtures):
    ann = write_csv(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\n"
                                          "abseiling,abcdefghijk,0,5,val\n")
    target = tmp_path / "out" / "videos_val" / "abseiling" / "abcdefghijk_000000_000005.mp4"
    target.parent.mkdir(parents=True)
    target.write_bytes((fixtures / "videos" / "decord_corrupted.mp4").read_bytes())
    args = ["--dataset", "kinetics400", "--annotations", ann, "--output", tmp_path / "out", "--steps", "filelists"]
    assert run_cli(*args, "--verify", "full") == 0
    (rec,) = read_records(tmp_path / "out")
    assert rec["status"] == "missing" and "decode error after 28 frames" in rec["reason"]
    assert not (tmp_path / "out" / "kinetics400_val_list_videos.txt").exists()


def test_done_when_command_on_real_k400_val(tmp_path, fixtures):
    """The issue's acceptance command over the real 19,906-row K400 val CSV and a partial tree."""
    out = tmp_path / "out"
    header, rows = k400_rows(per_class=2)
    for line in rows:
        cls, clip = clip_path(line)
        make_video(out / "videos_val" / cls / f"{clip}.mp4")
    assert run_cli("--dataset", "kinetics400", "--annotations", K400_VAL, "--splits", "val",
                   "--output", out, "--steps", "filelists") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total"] == {"exists": len(rows), "missing": 19906 - len(rows)}
    assert len(list((out / "_ledger" / "val").glob("*/*.json"))) == 19906
    assert len((out / "failures.csv").read_text().splitlines()) == 1 + 19906 - len(rows)
    videos = (out / "kinetics400_val_list_videos.txt").read_bytes()
    assert videos == mm.build_file_list(str(out / "videos_val"), train_csv(tmp_path), K400_VAL, subset="val")


ADVERSARIAL_CSV = (
    "label,youtube_id,time_start,time_end,split\n"
    "abseiling,../../../x1,1,11,val\n"
    "../../escape,abcdefghijk,1,11,val\n"
    "/abs/olute,abcdefghijk,1,11,val\n"
    '"$(touch pwned)",abcdefghijk,1,11,val\n'
    "abseiling;rm -rf ~,abcdefghijk,1,11,val\n"
    "abseiling,`id`_______,1,11,val\n"
    "abseiling,abcdefghijk,20,10,val\n"
    "abseiling,abcdefghijk,-5,10,val\n"
    "abseiling,abcdefghijk,ten,20,val\n"
    "abseiling,abcdefghijk,inf,20,val\n"
    "abseiling,abcdefghijk,1\n"
    "abseiling,good_id_abc,1,11,val\n"
)


def test_adversarial_csvs_write_nothing_outside_output(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    ann = write_csv(work / "bad.csv", ADVERSARIAL_CSV.replace("\n", "\r\n").encode("utf-8-sig"))
    empty = write_csv(work / "val.csv", "")
    nocols = write_csv(work / "val2.csv", "label,youtube_id\nabseiling,abcdefghijk\n")
    before = sorted(p for p in tmp_path.rglob("*"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--annotations", empty,
                       "--annotations", nocols, "--output", work / "out", "--steps", "filelists") == 0
    finally:
        os.chdir(cwd)
    after = sorted(p for p in tmp_path.rglob("*") if not str(p).startswith(str(work / "out")))
    assert after == before
    records = read_records(work / "out")
    statuses = [(r["annotation"].rsplit("/", 1)[-1], r["clip_id"], r["status"]) for r in records]
    assert ("bad.csv", "good_id_abc_000001_000011", "missing") in statuses
    invalid = [s for s in statuses if s[2] == "invalid"]
    assert len(invalid) == 11 + 1 + 1
    assert {s[1] for s in invalid if s[0] == "bad.csv"} == {f"line-{n}" for n in range(2, 13)}
    assert not list((work / "out" / "_ledger").rglob("line-*"))


def test_killed_run_resumes_without_redoing(tmp_path, fixtures):
    header, _ = k400_rows()
    rows = K400_VAL.read_text().splitlines()[1:301]
    ann = write_csv(tmp_path / "val.csv", "\n".join([header] + rows) + "\n")
    out = tmp_path / "out"
    for line in rows:
        cls, clip = clip_path(line)
        make_video(out / "videos_val" / cls / f"{clip}.mp4", width=320, height=240, fps=25)
    args = ["--dataset", "kinetics400", "--annotations", str(ann), "--output", str(out),
            "--steps", "filelists", "--verify", "full"]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ledger = out / "_ledger"
    deadline = time.time() + 600  # a guard only: the loop ends at 20 records (or the run's end)
    while time.time() < deadline and len(list(ledger.rglob("*.json"))) < 20 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p: p.read_bytes() for p in ledger.rglob("*.json")}
    assert 20 <= len(first) < len(rows), "the run was not killed part-way"
    assert not (out / "summary.json").exists()
    assert not [p for p in out.rglob("*.tmp")]

    assert run_cli(*args) == 0
    records = read_records(out)
    keys = [(r["class_dir"], r["clip_id"]) for r in records]
    assert len(keys) == len(set(keys)) == len(rows)
    assert all(r["status"] == "exists" for r in records)
    for path, data in first.items():
        assert path.read_bytes() == data  # not redone
    runs = {r["run_id"] for r in records}
    assert len(runs) == 2


HEAD = "label,youtube_id,time_start,time_end,split\n"


def lists(out):
    return sorted(p.name for p in out.glob("kinetics400_*_list_*"))


def test_lists_of_other_splits_survive_and_stale_lists_go(tmp_path):
    train = write_csv(tmp_path / "kinetics_train.csv", HEAD + "abseiling,abcdefghijk,0,10,train\nabseiling,x\n")
    val = write_csv(tmp_path / "kinetics_val.csv", HEAD + "zumba,bbcdefghijk,0,10,val\n")
    nowhere = write_csv(tmp_path / "more.csv", HEAD + "x,y\n")
    out = tmp_path / "out"
    make_video(out / "videos_train" / "abseiling" / "abcdefghijk_000000_000010.mp4")
    make_video(out / "videos_val" / "zumba" / "bbcdefghijk_000000_000010.mp4")
    base = ["--dataset", "kinetics400", "--output", out, "--steps", "filelists"]
    assert run_cli(*base, "--annotations", train, "--annotations", val, "--splits", "train,val") == 0
    train_list = out / "kinetics400_train_list_videos.txt"
    assert train_list.read_text() == "abseiling/abcdefghijk_000000_000010.mp4 0\n"

    assert run_cli(*base, "--annotations", train, "--annotations", val, "--annotations", nowhere,
                   "--splits", "val", "--filelist-format", "json") == 0
    assert lists(out) == ["kinetics400_train_list_videos.txt", "kinetics400_val_list_videos.json"]
    assert train_list.read_text() == "abseiling/abcdefghijk_000000_000010.mp4 0\n"
    assert sorted(p.name for p in (out / "manifest").iterdir()) == ["unknown.jsonl", "val.jsonl"]
    (unknown,) = [json.loads(line) for line in (out / "manifest" / "unknown.jsonl").read_text().splitlines()]
    assert unknown["reason"] == "more.csv line 2: expected 5 fields, got 2" and unknown["split"] == "unknown"
    summary = json.loads((out / "summary.json").read_text())
    del summary["availability"]  # its keys: tests/test_availability.py
    assert summary == {"splits": {"unknown": {"invalid": 1}, "val": {"exists": 1}},
                       "total": {"exists": 1, "invalid": 1}}

    assert run_cli(*base, "--annotations", val, "--splits", "train,val") == 0
    assert lists(out) == ["kinetics400_val_list_videos.txt"]
    assert (out / "manifest" / "train.jsonl").read_bytes() == b""
    assert sorted(p.name for p in (out / "manifest").iterdir()) == ["train.jsonl", "val.jsonl"]
    summary = json.loads((out / "summary.json").read_text())
    del summary["availability"]  # its keys: tests/test_availability.py
    assert summary == {"splits": {"train": {}, "val": {"exists": 1}}, "total": {"exists": 1}}


def test_failures_csv_escapes_control_characters(tmp_path):
    rows = ['"ab\x00seiling",abcdefghijk,0,10,val', '"a\x1eb\rc",bbcdefghijk,0,10,val',
            '"x\u2028y\x85z",cbcdefghijk,0,10,val', "abseiling,dbcdefghi\x0bk,0,10,val"]
    ann = write_csv(tmp_path / "val.csv", HEAD + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--steps", "filelists") == 0
    text = (out / "failures.csv").read_text(encoding="utf-8")
    assert len(text.splitlines()) == 1 + len(rows)
    assert not [ch for ch in text if ch != "\n" and not ch.isprintable()]
    got = list(csv.reader(text.splitlines()))
    assert [r[1] for r in got[1:]] == ["ab\\x00seiling", "a\\x1eb\\x0dc", "x\\u2028y\\x85z", "abseiling"]
    assert got[4][2] == "dbcdefghi\\x0bk" and all(r[5] == "invalid" for r in got[1:])


def test_start_sweeps_temporary_files_a_killed_run_left_in_the_ledger(tmp_path):
    ann = write_csv(tmp_path / "val.csv", HEAD + "abseiling,abcdefghijk,0,10,val\n")
    out = tmp_path / "out"
    ledger = out / "_ledger" / "val" / "abseiling"
    ledger.mkdir(parents=True)
    left = [ledger / ".bbcdefghijk_000000_000010.json.0123456789ab.tmp", out / "_ledger" / ".x.json.a1b2c3d4e5f6.tmp"]
    kept = [ledger / "bbcdefghijk_000000_000010.json", ledger / "notes.tmp", ledger / ".x.json.tmp"]
    for path in left + kept:
        path.write_text("{}")
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--steps", "filelists") == 0
    assert not [p for p in left if p.exists()]
    assert all(p.read_text() == "{}" for p in kept)
    assert (ledger / "abcdefghijk_000000_000010.json").exists()
