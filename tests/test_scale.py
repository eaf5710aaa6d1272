"""Run-level outputs written in parts: a split's manifest as several files written in parallel,
whose concatenation is the one-file manifest; file lists, failures.csv and summary.json unchanged."""
import json
import random

import pytest

import apache_beam as beam
import apache_beam.testing.util

from conftest import ROOT, run_cli, write_csv
from pipeline import build
from pipeline.options import resolve
from transforms import runs, writers
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


def test_a_record_the_runner_does_not_deliver_stops_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    """When fewer records reach the outputs than the annotations have rows (simulated: one row more
    planned than read), the run exits 1 with one error line, writes no file list, failures.csv or
    summary.json, and a plain re-run writes them all."""
    labels, rows = synthetic_rows(60)
    text = "label,youtube_id,time_start,time_end,split\n" + "".join(
        f'"{label}",{yid},{s},{e},{split}\n' for label, yid, s, e, split in rows)
    ann = write_csv(tmp_path / "kinetics.csv", text)
    out = tmp_path / "out"
    plant_finished(out, labels, rows)
    real = build.rows_of

    def one_row_more(read):
        extra = read.pipeline | "PhantomRow" >> beam.Create([("val", (0, 10 ** 6))])
        return (real(read), extra) | "WithPhantom" >> beam.Flatten()

    monkeypatch.setattr(build, "rows_of", one_row_more)
    args = ("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--steps", "filelists", "--splits", "train,val")
    capsys.readouterr()
    assert run_cli(*args) == 1
    err = capsys.readouterr().err
    val_rows = sum(r[4] == "val" for r in rows)
    message = (f"kinetics-prep: error: the runner delivered {val_rows:,} records of {val_rows + 1:,} rows of split "
               "val to the outputs, so its file lists, failures.csv and summary.json were not written; the ledger "
               "keeps every finished clip: run the same command again")
    assert message in err.splitlines() and "Traceback" not in err, err
    assert not list(out.glob("kinetics400_val_list_*")) and not (out / "summary.json").exists()
    assert not (out / "failures.csv").exists()

    monkeypatch.setattr(build, "rows_of", real)
    assert run_cli(*args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["total"].values()) == len(rows)
    assert (out / "kinetics400_val_list_videos.txt").exists() and (out / "failures.csv").exists()


def test_check_complete_names_each_split_that_is_off():
    plans = {"train": {"rows": 3}, "val": {"rows": 2}}
    writers.check_complete({"train": {"ok": 2, "missing": 1}, "val": {"exists": 2}}, plans)
    with pytest.raises(writers.IncompleteRun, match=r"2 records of 3 rows of split train; 3 records of 2 rows of split val"):
        writers.check_complete({"train": {"ok": 2}, "val": {"exists": 3}}, plans)
    with pytest.raises(writers.IncompleteRun, match=r"1 records of 0 rows of split test"):
        writers.check_complete({"train": {"ok": 3}, "val": {"ok": 2}, "test": {"ok": 1}}, plans)


def test_sorted_runs_through_storage_merge_in_key_order(tmp_path):
    """WriteRuns in a real pipeline: each bundle's elements land in files of its own (a new file
    every flush), a piece per group and file; a group's pieces merge into its elements in key order;
    remove() leaves nothing behind."""
    rng = random.Random(3)
    keys = list(range(2000))
    rng.shuffle(keys)
    elements = [(k % 3, ([k // 7, f"c{k}"], {"n": k, "text": "é\u2028\x1c\x85\r" * (k % 5)})) for k in keys]
    out = tmp_path / "out"
    folder = runs.runs_dir(str(out), "r1")
    with beam.Pipeline() as p:
        pieces = (p | beam.Create(elements)
                  | beam.ParDo(runs.WriteRuns(folder, lambda payload: len(payload["text"]) + 40, flush_bytes=20000))
                  | beam.GroupByKey()
                  | beam.Map(lambda g: (g[0], [(payload["n"], payload["text"]) for _, payload in runs.merged(g[1])], len(g[1]))))
        beam.testing.util.assert_that(pieces, check_groups)
    files = list((out / "_runs" / "r1").iterdir())
    assert len(files) >= 2000 * 104 // 20000, files  # a file per flush
    runs.remove(str(out), "r1")
    assert not (out / "_runs").exists()


def check_groups(groups):
    assert sorted(g for g, _, _ in groups) == [0, 1, 2]
    for group, ns, pieces in groups:
        expected = sorted((k for k in range(2000) if k % 3 == group), key=lambda k: [k // 7, f"c{k}"])
        assert ns == [(k, "é\u2028\x1c\x85\r" * (k % 5)) for k in expected] and pieces > 1


@pytest.mark.parametrize("extra", [("--steps", "filelists"), ("--steps", "fetch,resize,rgb,flow,shards,filelists", "--source", "local",
                                                              "--video-root", "/videos")])
def test_runs_without_a_fetch_grouping_join_no_records_in_a_flatten(tmp_path, extra):
    """Beam's local runner holds a multi-input Flatten's elements whole and hands each worker its
    share at once: for runs whose clips need no grouping, every record comes out of one step and
    no Flatten takes records (the plan's orders and the small per-range pieces only)."""
    settings, _, _ = resolve(["--dataset", "kinetics400", "--annotations", str(tmp_path / "a.csv"), "--output",
                              str(tmp_path / "out"), *extra])
    p = beam.Pipeline()
    build.build(p, settings)
    proto = p.to_runner_api()
    flattens = [t.unique_name for t in proto.components.transforms.values()
                if t.spec.urn == "beam:transform:flatten:v1" and len(t.inputs) > 1]
    # the CoGroupByKeys inside WriteOutputs join plans and pieces; WriteShards' join compact samples
    assert flattens and not [n for n in flattens if not n.startswith(("WriteOutputs/", "WriteShards/"))], flattens
    names = {t.unique_name.split("/", 1)[0] for t in proto.components.transforms.values()}
    assert "ProcessClips" in names and "CheckLedger" not in names and "AllRecords" not in names


def test_a_clip_pickles_as_its_values():
    from apache_beam.coders import coders
    clip = Clip("train", "abseiling", 0, "abseiling", "abcdefghijk", 12.0, 22.0, "abcdefghijk_000012_000022",
                "gs://bucket/kinetics700/train.csv", 123456, (0, 123456))
    coder = coders.FastPrimitivesCoder()
    data = coder.encode(clip)
    assert coder.decode(data) == clip and len(data) < 200
