"""Run-level outputs written in parts: a split's manifest as several files written in parallel,
whose concatenation is the one-file manifest; file lists, failures.csv and summary.json unchanged."""
import json
import random

import pytest

from conftest import ROOT, run_cli, write_csv
from transforms import writers
from transforms.ledger import Ledger
from transforms.reader import clean_class_dir
from transforms.records import Clip

ROWS = 3000
VOLATILE = ("run_id", "seconds")


def synthetic_rows(n, seed=7):
    """Val and train rows of real K400 labels with random ids; every 97th row has a bad id."""
    labels = (ROOT / "configs" / "label_map_k400.txt").read_text().splitlines()
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rows = []
    for i in range(n):
        yid = "".join(rng.choice(alphabet) for _ in range(11)) if i % 97 else "bad id"
        start = rng.randrange(0, 300)
        rows.append((labels[rng.randrange(len(labels))], yid, start, start + 10, "val" if i % 5 else "train"))
    return labels, rows


def plant_finished(out, labels, rows, every=3):
    """Every `every`-th clip as a finished earlier run leaves it: its video and its ledger record."""
    ledger = Ledger(str(out))
    for i, (label, yid, start, end, split) in enumerate(rows):
        if i % every or yid == "bad id":
            continue
        cls = clean_class_dir(label)
        clip_id = f"{yid}_{start:06d}_{end:06d}"
        rel = f"videos_{split}/{cls}/{clip_id}.mp4"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"planted")
        clip = Clip(split, label, labels.index(label), cls, yid, float(start), float(end), clip_id,
                    "x.csv", i + 2, (0, i + 2))
        ledger.write(dict(clip.record("ok", outputs={"video": rel}, rgb_frames=100 + i % 7), run_id="before"))


def run(tmp_path, name, ann, labels, rows, *extra):
    out = tmp_path / name
    plant_finished(out, labels, rows)
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--steps", "filelists", "--splits", "train,val",
                   *extra) == 0
    return out


def stable(data):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in data.splitlines()]


@pytest.mark.parametrize("extra", [(), ("--shuffle", "--seed", "3", "--filelist-format", "json")])
def test_manifest_in_parallel_parts_equals_one_file(tmp_path, monkeypatch, extra):
    labels, rows = synthetic_rows(ROWS)
    text = "label,youtube_id,time_start,time_end,split\n" + "".join(
        f'"{label}",{yid},{s},{e},{split}\n' for label, yid, s, e, split in rows)
    ann = write_csv(tmp_path / "kinetics.csv", text)
    one = run(tmp_path, "one", ann, labels, rows, *extra)
    monkeypatch.setattr(writers, "FAILURES_PER_RANGE", 300)  # ~2,000 failures: failures.csv from 7 ranges
    parts = run(tmp_path, "parts", ann, labels, rows, "--manifest-file-records", "400",
                "--direct_running_mode", "multi_processing", "--direct_num_workers", "2", *extra)

    assert sorted(p.name for p in (one / "manifest").iterdir()) == ["train.jsonl", "val.jsonl"]
    names = sorted(p.name for p in (parts / "manifest").iterdir())
    val_parts = [n for n in names if n.startswith("val")]
    train_parts = [n for n in names if n.startswith("train")]
    assert val_parts == [f"val-{i:05d}-of-00006.jsonl" for i in range(6)], names  # 2400 val records / 400
    assert train_parts == [f"train-{i:05d}-of-00002.jsonl" for i in range(2)], names
    for split, files in (("val", val_parts), ("train", train_parts)):
        whole = (one / "manifest" / f"{split}.jsonl").read_bytes()
        joined = b"".join((parts / "manifest" / n).read_bytes() for n in files)
        assert stable(joined) == stable(whole) and len(stable(whole)) == sum(r[4] == split for r in rows)
        sizes = [len((parts / "manifest" / n).read_bytes().splitlines()) for n in files]
        even = sum(sizes) / len(sizes)
        assert max(sizes) <= even * 1.1 and min(sizes) >= even * 0.9, sizes
    statuses = {r["status"] for n in val_parts for r in stable((parts / "manifest" / n).read_bytes())}
    assert statuses == {"exists", "missing", "invalid"}

    for name in ("failures.csv", "summary.json", "label_map.txt"):
        assert (parts / name).read_bytes() == (one / name).read_bytes(), name
    fmt = "json" if extra else "txt"
    lists = sorted(p.name for p in one.iterdir() if p.name.endswith(f".{fmt}") and "_list_" in p.name)
    assert lists == [f"kinetics400_{s}_list_{k}.{fmt}" for s in ("train", "val") for k in ("rawframes", "videos")]
    for name in lists:
        assert (parts / name).read_bytes() == (one / name).read_bytes(), name
    videos = (one / f"kinetics400_val_list_videos.{fmt}").read_bytes()
    assert videos.count(b".mp4") == sum(1 for i, r in enumerate(rows) if r[4] == "val" and i % 3 == 0
                                        and r[1] != "bad id")
    assert not (parts / "_progress").exists() and not (one / "_progress").exists()

    # a re-run whose splits fit one file each removes the parts
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", parts, "--steps", "filelists", "--splits", "train,val",
                   *extra) == 0
    assert sorted(p.name for p in (parts / "manifest").iterdir()) == ["train.jsonl", "val.jsonl"]
    assert stable((parts / "manifest" / "val.jsonl").read_bytes()) == stable((one / "manifest" / "val.jsonl").read_bytes())


def test_split_plan_cuts_ranges_at_the_quantiles():
    quantiles = [(0, i) for i in range(0, 1001)]
    assert writers.split_plan(10, quantiles, 20) == {"files": 1, "bounds": []}
    plan = writers.split_plan(1000, quantiles, 250)
    assert plan == {"files": 4, "bounds": [(0, 250), (0, 500), (0, 750)]}
    assert writers.manifest_name("val", 2, 4) == "manifest/val-00002-of-00004.jsonl"
    assert writers.manifest_name("val") == "manifest/val.jsonl"
    plans = {"val": plan}
    rec = Clip("val", "a", 0, "a", "x" * 11, 0.0, 1.0, "c", "a.csv", 600, (0, 600)).record("missing")
    (key, (sort_key, (json_line, status, lines))) = writers.part_of(rec, plans)
    assert key == ("val", 2) and sort_key == ((0, 600), "a", "c") and (status, lines) == ("missing", {})
    assert json.loads(json_line) == rec
    index, (_, line) = writers.failure_of(rec, {writers.FAILURES: plan})
    assert index == 2 and line.startswith("val,a,")
