"""gs:// end to end against a real GCS emulator process: every output read back through gcsfs
and compared with a local run of the same input, and a run whose every input is on gs:// too."""
import io
import json
import os
import pathlib
import re

import apache_beam as beam
import av
import cv2
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from gcs_emulator import gcs  # noqa: F401  (fixture)
from conftest import make_video, run_cli, settings_of, write_csv
from pipeline import demo
from pipeline import options as cli_options
from transforms import report, shards, storage

VOLATILE = ("run_id", "seconds")  # differ between any two runs


def snapshot(root):
    """{path relative to root: bytes} of every file under root, read through fsspec."""
    fs, path = storage.filesystem(root)
    files = fs.find(path)
    data = fs.cat(files) if files else {}
    if not isinstance(data, dict):
        data = {files[0]: data}
    return {p[len(path.rstrip("/")) + 1:]: b for p, b in data.items()}


def stable(record, root):
    rec = {k: v for k, v in record.items() if k not in VOLATILE}
    return json.loads(json.dumps(rec).replace(root, "<out>"))


def records_of(files, root):
    return [stable(json.loads(line), root) for name, data in sorted(files.items()) if name.startswith("manifest/")
            for line in data.decode().splitlines()]


def report_text(data, root):
    """The report without this run's timings and with the output root abstracted."""
    return re.sub(r'<table id="throughput">.*?</table>', "", data.decode()).replace(root, "<out>")


def assert_same_outputs(expected_root, actual_root):
    """Every file under actual_root equals the one under expected_root, up to run ids, timings and
    the roots themselves; every output a record names is there. Returns actual_root's files."""
    expected, actual = snapshot(expected_root), snapshot(actual_root)
    assert sorted(actual) == sorted(expected) and actual
    for name, data in expected.items():
        if name.startswith(("manifest/", "_ledger/")):
            want = [stable(json.loads(x), expected_root) for x in data.decode().splitlines()]
            assert [stable(json.loads(x), actual_root) for x in actual[name].decode().splitlines()] == want, name
        elif name == "report.html":
            assert report_text(actual[name], actual_root) == report_text(data, expected_root)
        else:
            assert actual[name] == data, name
    for rec in records_of(actual, actual_root):
        for kind, rel in (rec.get("outputs") or {}).items():
            if kind in ("rgb", "flow"):
                names = [n.rsplit("/", 1)[-1] for n in actual if n.startswith(rel + "/")]
                prefix, count = ("img_", rec["rgb_frames"]) if kind == "rgb" else ("flow_x_", rec["flow_frames"])
                assert sum(n.startswith(prefix) for n in names) == count, rel
            else:
                assert rel in actual, rel
    return actual


def test_existing_tree_on_gcs_matches_local(gcs, tmp_path):
    """Local annotations, a crawled tree (videos, rawframes) on gs://; the run writes gs:// only."""
    ann = write_csv(tmp_path / "kinetics_val.csv", "label,youtube_id,time_start,time_end,split\n" + "".join(
        f"{label},{label[:3]}{i:08d},{i},{i + 10},val\n" for label in ("abseiling", "zumba") for i in range(3)))
    local = tmp_path / "local"
    for label in ("abseiling", "zumba"):
        for i in range(2):
            make_video(local / "videos_val" / label / f"{label[:3]}{i:08d}_{i:06d}_{i + 10:06d}.mp4", seconds=10)
        frames = local / "rawframes_val" / label / f"{label[:3]}00000001_000001_000011"
        frames.mkdir(parents=True)
        for k in range(1, 4):
            cv2.imwrite(str(frames / f"img_{k:05d}.jpg"), np.full((32, 48, 3), 60 * k, np.uint8))
    gs_root = "gs://bucket/tree"
    gcs.put(str(local), gs_root.removeprefix("gs://"), recursive=True)
    args = ("--dataset", "kinetics400", "--annotations", ann, "--splits", "val", "--steps", "filelists")
    assert run_cli(*args, "--output", local) == 0
    assert run_cli(*args, "--output", gs_root) == 0
    remote = assert_same_outputs(str(local), gs_root)
    assert {"summary.json", "failures.csv", "label_map.txt", "manifest/val.jsonl"} <= set(remote)
    summary = json.loads(remote["summary.json"])
    assert summary["total"] == {"exists": 4, "missing": 2}
    assert remote["kinetics400_val_list_rawframes.txt"].decode().splitlines() == \
        ["abseiling/abs00000001_000001_000011 3 0", "zumba/zum00000001_000001_000011 3 399"]


def test_shards_and_report_on_gcs(gcs, tmp_path):
    """WriteShards and WriteReport write to gs:// what they write locally, byte for byte."""
    gs_root = "gs://bucket/sr"
    recs = []
    for i, label in enumerate(("abseiling", "zumba", "yoga")):
        clip = f"{label[:3]}{i:08d}_000000_000010"
        video = f"videos_train/{label}/{clip}.mp4"
        frames = f"rawframes_train/{label}/{clip}"
        src = make_video(tmp_path / "local" / video, seconds=2 + i)
        storage.put_file(str(src), storage.join(gs_root, video))
        for k in range(1, 3):
            for name in (f"img_{k:05d}.jpg", f"flow_x_{k:05d}.jpg", f"flow_y_{k:05d}.jpg"):
                data = cv2.imencode(".jpg", np.full((32, 48, 3), 40 * k + i, np.uint8))[1].tobytes()
                for root in (str(tmp_path / "local"), gs_root):
                    storage.write_bytes(storage.join(root, frames, name), data)
        recs.append({"clip_id": clip, "split": "train", "label": label, "label_index": i, "class_dir": label,
                     "youtube_id": clip[:11], "time_start": 0, "time_end": 10, "status": "ok", "reason": "",
                     "outputs": {"video": video, "rgb": frames, "flow": frames}, "rgb_frames": 2,
                     "flow_frames": 2, "seconds": {"total": 1.0}, "run_id": "r"})
    recs.append(dict(recs[0], clip_id="gone", status="unavailable", reason="Video unavailable"))
    for root in (str(tmp_path / "local"), gs_root):
        s = settings_of(output=root, dataset="k400", steps=("shards",), flat=False, shard_frames=True,
                        shard_size_mb=1024, clips_per_shard=2, frame_index_base=1, run_id="r")
        with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
            records = p | beam.Create(recs)
            _ = records | shards.WriteShards(s)
            _ = records | report.WriteReport(s)
    remote = assert_same_outputs(str(tmp_path / "local"), gs_root)
    index = json.loads(remote["shards/train/index.json"])
    assert list(index) == ["k400-train-000000.tar", "k400-train-000001.tar"]
    assert [k for v in index.values() for k in v["keys"]] == ["abseiling/abs00000000_000000_000010",
                                                             "yoga/yog00000002_000000_000010",
                                                             "zumba/zum00000001_000000_000010"]
    sheet = cv2.imdecode(np.frombuffer(remote[report.SHEET], np.uint8), cv2.IMREAD_COLOR)
    assert sheet.shape == (4 * report.CELL_H, report.COLUMNS * report.CELL_W, 3)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """The working directory demo runs start in: its inputs (data/demo/inputs) are made once per session."""
    path = tmp_path_factory.getbasetemp() / "demo-workdir"
    path.mkdir(exist_ok=True)
    return path


def demo_args():
    """A small demo: two train clips, one val clip and the val clip with no video, every available step."""
    steps = list(cli_options.builtin_config("demo")["steps"])
    steps += [s for s in ("shards",) if s not in steps]
    return ("--dataset", "demo", "--classes", "abseiling", "--limit", "2", "--steps", ",".join(steps))


def test_demo_on_gcs_matches_local(gcs, demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(demo_dir)
    assert run_cli(*demo_args(), "--output", tmp_path / "local") == 0
    assert run_cli(*demo_args(), "--output", "gs://bucket/prefix") == 0
    remote = assert_same_outputs(str(tmp_path / "local"), "gs://bucket/prefix")
    assert json.loads(remote["summary.json"])["total"] == {"ok": 3, "missing": 1}
    for name in ("failures.csv", "label_map.txt", "manifest/train.jsonl", "manifest/val.jsonl",
                 "demo_train_list_videos.txt", "demo_val_list_rawframes.txt", "demo_val_list_flow.txt"):
        assert name in remote, name
    assert sum(n.startswith("_ledger/") for n in remote) == 4
    for rec in records_of(remote, "gs://bucket/prefix"):
        if rec["status"] == "ok":
            assert set(rec["outputs"]) == {"video", "resized", "rgb", "flow"}
    assert {"report.html", report.SHEET} <= set(remote)
    indexes = [json.loads(remote[f"shards/{split}/index.json"]) for split in ("train", "val")]
    good = [r for r in records_of(remote, "gs://bucket/prefix") if r["status"] == "ok"]
    assert sorted(k for index in indexes for v in index.values() for k in v["keys"]) == \
        sorted(f"{r['class_dir']}/{r['clip_id']}" for r in good)


@pytest.fixture(scope="module")
def demo_inputs(demo_dir):
    """The demo's annotation CSVs and source videos (written once, in demo_dir/data/demo/inputs)."""
    cwd = os.getcwd()
    os.chdir(demo_dir)
    try:
        settings = cli_options.resolve(["--dataset", "demo"])[0]
        demo.prepare(settings)
    finally:
        os.chdir(cwd)
    return pathlib.Path(settings.reading.annotations[0]).parent, list(reversed(settings.reading.labels))


def test_every_input_on_gcs(gcs, demo_inputs):
    """Annotations, --config, the label map it names and --video-root on gs://, the output too."""
    inputs, labels = demo_inputs
    gcs.put(str(inputs), "bucket/in", recursive=True)
    gcs.pipe("bucket/in/labels.txt", "".join(f"{label}\n" for label in labels).encode())
    gcs.pipe("bucket/in/demo.yaml", b"name: demo\nlabel_map: gs://bucket/in/labels.txt\nsplits: train,val\n"
                                    b"source: local\n")
    out = "gs://bucket/all-gs"
    assert run_cli("--config", "gs://bucket/in/demo.yaml", "--annotations", "gs://bucket/in/train.csv",
                   "--annotations", "gs://bucket/in/validate.csv", "--video-root", "gs://bucket/in/videos",
                   "--steps", "fetch", "--output", out) == 0
    files = snapshot(out)
    assert json.loads(files["summary.json"])["total"] == {"ok": 12, "missing": 1, "short": 1}
    assert files["label_map.txt"].decode().splitlines() == labels
    records = records_of(files, out)
    assert len(records) == 14
    for rec in records:
        assert rec["label_index"] == labels.index(rec["label"])
        if rec["status"] == "ok":
            with av.open(io.BytesIO(files[rec["outputs"]["video"]])) as container:
                assert sum(1 for _ in container.decode(video=0)) == rec["frames"] > 0


def test_source_object_deleted_between_listing_and_reading(gcs, tmp_path, monkeypatch):
    """--video-root on gs://: a source object that find_local listed and someone deleted before it
    was read is one `missing` record saying so; the other clip is made and the run completes."""
    from transforms import sources

    for yid in ("keepclip000", "goneclip000"):
        src = make_video(tmp_path / "videos" / f"{yid}_000000_000002.mp4", seconds=2)
        gcs.put_file(str(src), f"bucket/race/{yid}_000000_000002.mp4")
    listed = []

    find_local = sources.find_local

    def find_then_delete(root, clip):
        found = find_local(root, clip)
        listed.append(found.url)
        if clip.youtube_id == "goneclip000":
            gcs.rm_file(found.url)  # another client deletes it: this run's listing still had it
        return found

    monkeypatch.setattr(sources, "find_local", find_then_delete)
    ann = write_csv(tmp_path / "val.csv", "label,youtube_id,time_start,time_end,split\n"
                                          "abseiling,keepclip000,0,2,val\nzumba,goneclip000,0,2,val\n")
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--source", "local", "--video-root",
                   "gs://bucket/race", "--steps", "fetch", "--output", out) == 0
    assert sorted(listed) == ["gs://bucket/race/goneclip000_000000_000002.mp4",
                              "gs://bucket/race/keepclip000_000000_000002.mp4"]
    recs = {r["youtube_id"]: r for r in map(json.loads, (out / "manifest" / "val.jsonl").read_text().splitlines())}
    assert (recs["keepclip000"]["status"], recs["keepclip000"]["frames"]) == ("ok", 20)
    assert (recs["goneclip000"]["status"], recs["goneclip000"]["reason"]) == (
        "missing", "gs://bucket/race/goneclip000_000000_000002.mp4 is gone: it was listed, then not found when read")
    assert not (out / "videos_val" / "zumba").exists()
