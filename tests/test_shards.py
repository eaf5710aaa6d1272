"""WebDataset shards: packing, determinism, members, index, stale shards, local disk and memory://."""
import io
import json
import logging
import os
import random
import re
import shutil
import tarfile

import apache_beam as beam
import av
import cv2
import fsspec
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import make_video, run_cli, settings_of
from transforms import shards, storage
from transforms.records import Clip

CLASSES = ("abseiling", "playing_guitar", "zumba")
RESIZED = (48, 32)


def settings(output, **kw):
    values = dict(output=storage.normalize(str(output)), dataset="demo", flat=False,
                  shard_frames=False, shard_size_mb=1024, clips_per_shard=None, frame_index_base=1)
    values.update(kw)
    return settings_of(**values)


def write_file(url, data):
    storage.write_bytes(url, data)
    return len(data)


def jpeg(seed, shape=(24, 32)):
    img = np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def make_clip(output, split, class_dir, n, source, *, resized=False, frames=0):
    """A good clip's files under `output` and its record (facts and sizes as the video stage records them)."""
    clip = Clip(split, class_dir.replace("_", " "), CLASSES.index(class_dir), class_dir, f"yid{n:08d}",
                10, 20, f"yid{n:08d}_000010_000020", "a.csv", n + 2, (0, n + 2))
    outputs, sizes, fields = {}, {}, {}
    rel = f"videos_{split}/{class_dir}/{clip.clip_id}.mp4"
    outputs["video"], sizes["video"] = rel, write_file(storage.join(output, rel), source["video"])
    if resized:
        rel = f"videos_{split}_256p_dense_cache/{class_dir}/{clip.clip_id}.mp4"
        outputs["resized"], sizes["resized"] = rel, write_file(storage.join(output, rel), source["resized"])
        fields.update(resized_size=list(RESIZED), resized_frames=source["frames"])
    if frames:
        rel = f"rawframes_{split}/{class_dir}/{clip.clip_id}"
        outputs["rgb"] = outputs["flow"] = rel
        sizes["rgb"] = sum(write_file(storage.join(output, rel, f"img_{i:05d}.jpg"), jpeg(i))
                           for i in range(1, frames + 1))
        sizes["flow"] = sum(write_file(storage.join(output, rel, f"flow_{a}_{i:05d}.jpg"), jpeg(100 + i))
                            for i in range(1, frames) for a in "xy")
        fields.update(rgb_frames=frames, flow_frames=frames - 1, frame_size=[32, 24])
    return clip.record("ok", outputs=outputs, sizes=sizes, frames=source["frames"], width=96, height=64,
                       duration=source["frames"] / 10, fps=10.0, **fields)


def build_tree(out, sources):
    """Nine train clips over three classes (some resized, some with frames), two val clips, one invalid row."""
    recs = [make_clip(out, "train", c, 10 * i + j, sources[(i + j) % 2], resized=j == 0, frames=3 if j == 1 else 0)
            for i, c in enumerate(CLASSES) for j in range(3)]
    recs.append(make_clip(out, "val", "zumba", 99, sources[0]))
    recs.append(dict(make_clip(out, "val", "abseiling", 98, sources[1]), status="corrupt", reason="bad"))
    recs.append({"clip_id": "line-7", "split": "unknown", "class_dir": "", "status": "invalid"})
    return recs


def run(records, s):
    """WriteShards over `records`; the pipeline result (for its counters)."""
    p = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = p | beam.Create(records, reshuffle=False) | shards.WriteShards(s)
    result = p.run()
    result.wait_until_finish()
    return result


def counter(result, name):
    found = result.metrics().query(MetricsFilter().with_namespace("shards").with_name(name))["counters"]
    return sum(c.committed for c in found)


def tar_bytes(output, split):
    fs, path = storage.filesystem(storage.join(output, "shards", split))
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.find(path)) if p.endswith(".tar")}


def wds_samples(data):
    """Group a tar's members into samples exactly as WebDataset does (key: up to the basename's first dot)."""
    samples = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            prefix, suffix = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", m.name).groups()
            if not samples or samples[-1]["__key__"] != prefix:
                samples.append({"__key__": prefix})
            assert suffix.lower() not in samples[-1]
            samples[-1][suffix.lower()] = tar.extractfile(m).read()
            assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")
    return samples


def decoded(mp4):
    """(width, height, frame count) of an mp4, decoded with PyAV."""
    with av.open(io.BytesIO(mp4)) as container:
        frames = list(container.decode(video=0))
    return frames[0].width, frames[0].height, len(frames)


def index(output, split):
    return json.loads(storage.read_bytes(storage.join(output, "shards", split, "index.json")))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    return [{"video": make_video(d / f"{n}.mp4", seconds=n).read_bytes(), "frames": 10 * n,
             "resized": make_video(d / f"{n}r.mp4", seconds=n, width=RESIZED[0], height=RESIZED[1]).read_bytes()}
            for n in (2, 4)]


@pytest.fixture
def tree(tmp_path, sources):
    out = storage.normalize(str(tmp_path / "out"))
    return out, build_tree(out, sources)


def test_plan_packs_greedily_in_clip_order():
    entries = [("b", "c2", "b/c2", 300), ("a", "c1", "a/c1", 600), ("a", "c0", "a/c0", 500),
               ("c", "c3", "c/c3", 5000), ("c", "c4", "c/c4", 10), ("a", "c1", "a/c1", 600)]
    mib = shards.MIB
    by_size = shards.plan([(c, k, key, n * mib // 1000) for c, k, key, n in entries], "k400", "val", size_mb=1)
    assert by_size == [("k400-val-000000.tar", ["a/c0"]), ("k400-val-000001.tar", ["a/c1", "b/c2"]),
                       ("k400-val-000002.tar", ["c/c3"]), ("k400-val-000003.tar", ["c/c4"])]
    by_count = shards.plan(entries, "k400", "val", per_shard=2)
    assert [keys for _, keys in by_count] == [["a/c0", "a/c1"], ["b/c2", "c/c3"], ["c/c4"]]
    assert shards.plan([], "k400", "val") == []


def test_keys_have_no_dots_and_stay_unique():
    keys = {shards.sample_key(c, k) for c, k in [("a.b", "x"), ("a%2Eb", "x"), ("a", "x.1"), ("a", "x_1")]}
    assert len(keys) == 4 and not any("." in k for k in keys)
    assert shards.sample_key("zumba", "abc_000001_000011", flat=True) == "abc_000001_000011"
    assert shards.frame_names(2, 1, base=0) == ["flow_x_00000.jpg", "flow_y_00000.jpg",
                                                "img_00000.jpg", "img_00001.jpg"]


def test_sizes_missing_from_a_record_are_taken_from_the_files(tree):
    out, recs = tree
    for r in recs[:3]:
        bare = {k: v for k, v in r.items() if k != "sizes"}
        assert shards.sample(bare, out, frames=True) == shards.sample(r, out, frames=True)


def test_shards_on_local_disk(tree):
    out, recs = tree
    run(recs, settings(out, clips_per_shard=4))
    train = tar_bytes(out, "train")
    assert list(train) == ["demo-train-000000.tar", "demo-train-000001.tar", "demo-train-000002.tar"]
    samples = [s for name in train for s in wds_samples(train[name])]
    good = [r for r in recs if r["split"] == "train"]
    assert [s["__key__"] for s in samples] == [f"{r['class_dir']}/{r['clip_id']}" for r in
                                              sorted(good, key=lambda r: (r["class_dir"], r["clip_id"]))]
    by_key = {s["__key__"]: s for s in samples}
    for r in good:
        s = by_key[f"{r['class_dir']}/{r['clip_id']}"]
        assert set(s) == {"__key__", "mp4", "json"}
        mp4 = r["outputs"].get("resized", r["outputs"]["video"])
        assert s["mp4"] == storage.read_bytes(storage.join(out, mp4))
        meta = json.loads(s["json"])
        assert set(meta) == set(shards.META_FIELDS) | {"video"}
        assert (meta["label"], meta["label_index"], meta["clip_id"], meta["fps"]) == \
            (r["label"], r["label_index"], r["clip_id"], 10.0)
        assert meta["video"] == ("resized" if "resized" in r["outputs"] else "trimmed")
        assert (meta["width"], meta["height"], meta["frames"]) == decoded(s["mp4"])
    assert {json.loads(s["json"])["video"] for s in samples} == {"resized", "trimmed"}
    idx = index(out, "train")
    assert {n: v["bytes"] for n, v in idx.items()} == {n: len(b) for n, b in train.items()}
    assert [k for v in idx.values() for k in v["keys"]] == [s["__key__"] for s in samples]
    assert [s["__key__"] for s in wds_samples(tar_bytes(out, "val")["demo-val-000000.tar"])] == \
        ["zumba/yid00000099_000010_000020"]
    assert not storage.exists(storage.join(out, "shards", "unknown"))


def test_same_clips_give_identical_shards_in_any_order_and_store(tree, sources):
    out, recs = tree
    s = settings(out, shard_size_mb=0.05, shard_frames=True)
    run(recs, s)
    first = tar_bytes(out, "train")
    shuffled = list(recs)
    random.Random(3).shuffle(shuffled)
    run(shuffled, s)
    assert tar_bytes(out, "train") == first
    mem = "memory://shards-test/out"
    try:
        run(build_tree(mem, sources)[::-1], settings(mem, shard_size_mb=0.05, shard_frames=True))
        assert tar_bytes(mem, "train") == first
        assert index(mem, "train") == index(out, "train")
    finally:
        fsspec.filesystem("memory").rm("/shards-test", recursive=True)


def test_size_target_and_frames(tree):
    out, recs = tree
    s = settings(out, shard_size_mb=0.05, shard_frames=True)
    run(recs, s)
    train, idx = tar_bytes(out, "train"), index(out, "train")
    estimate = {smp["key"]: smp["bytes"] for r in recs if r["split"] == "train"
                for smp in [shards.sample(r, out, frames=True)]}
    limit = 0.05 * shards.MIB
    names = list(idx)
    assert len(names) >= 3 and names == list(train)
    for name, following in zip(names, names[1:]):
        filled = sum(estimate[k] for k in idx[name]["keys"])
        assert filled <= limit or len(idx[name]["keys"]) == 1
        assert filled + estimate[idx[following]["keys"][0]] > limit
        assert abs(len(train[name]) - filled) < 20480  # estimate vs tar: padding, end blocks
    framed = [smp for data in train.values() for smp in wds_samples(data) if "img_00001.jpg" in smp]
    assert len(framed) == 3
    for smp in framed:
        assert sorted(smp) == ["__key__", "flow_x_00001.jpg", "flow_x_00002.jpg", "flow_y_00001.jpg",
                               "flow_y_00002.jpg", "img_00001.jpg", "img_00002.jpg", "img_00003.jpg",
                               "json", "mp4"]
        assert smp["img_00002.jpg"] == jpeg(2) and smp["flow_y_00002.jpg"] == jpeg(102)
        meta = json.loads(smp["json"])
        assert (meta["rgb_frames"], meta["flow_frames"], meta["frame_size"]) == (3, 2, [32, 24])
    plain = [json.loads(smp["json"]) for data in train.values() for smp in wds_samples(data)
             if "img_00001.jpg" not in smp]
    assert plain and not any({"rgb_frames", "flow_frames", "frame_size"} & set(m) for m in plain)


def test_rerun_with_fewer_clips_removes_stale_shards(tree):
    out, recs = tree
    run(recs, settings(out, clips_per_shard=2))
    assert len(tar_bytes(out, "train")) == 5
    kept = [r for r in recs if r["split"] != "train" or r["class_dir"] == "zumba"]
    kept += [dict(r, status="missing") for r in recs if r["split"] == "val"]
    run(kept, settings(out, clips_per_shard=2))
    assert list(tar_bytes(out, "train")) == ["demo-train-000000.tar", "demo-train-000001.tar"]
    assert [k for v in index(out, "train").values() for k in v["keys"]] == \
        sorted(f"zumba/{r['clip_id']}" for r in kept if r["split"] == "train")
    run([r for r in kept if r["split"] != "train"] +
        [dict(r, status="failed") for r in kept if r["split"] == "train"], settings(out))
    assert tar_bytes(out, "train") == {} and index(out, "train") == {}


def test_a_clip_whose_files_vanished_is_left_out_whole(tree):
    out, recs = tree
    gone = next(r for r in recs if "rgb" in r.get("outputs", {}))
    storage.remove(storage.join(out, gone["outputs"]["rgb"], "img_00002.jpg"))
    unsized = next(r for r in recs if r["split"] == "train" and "rgb" not in r["outputs"])
    del unsized["sizes"]
    storage.remove(storage.join(out, unsized["outputs"].get("resized", unsized["outputs"]["video"])))
    run(recs, settings(out, shard_frames=True))
    keys = [s["__key__"] for s in wds_samples(tar_bytes(out, "train")["demo-train-000000.tar"])]
    assert len(keys) == 7 and not {f"{r['class_dir']}/{r['clip_id']}" for r in (gone, unsized)} & set(keys)
    assert index(out, "train")["demo-train-000000.tar"]["keys"] == keys


def test_webdataset_reads_the_shards(tree):
    wds = pytest.importorskip("webdataset")
    out, recs = tree
    run(recs, settings(out, shard_frames=True, clips_per_shard=5))
    urls = [storage.join(out, "shards", "train", n) for n in tar_bytes(out, "train")]
    got = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in got] == [k for v in index(out, "train").values() for k in v["keys"]]
    assert all({"mp4", "json"} <= set(s) for s in got)
    assert sum("img_00003.jpg" in s for s in got) == 3


def stamps(output, split):
    """{shard name: (inode, mtime_ns)}: a shard rebuilt and uploaded again gets a new inode."""
    folder = storage.join(output, "shards", split)
    return {n: (st.st_ino, st.st_mtime_ns) for n in os.listdir(folder) if n.endswith(".tar")
            for st in [os.stat(os.path.join(folder, n))]}


def test_unchanged_shards_are_kept_and_changed_ones_rebuilt(tree, sources):
    out, recs = tree
    s = settings(out, clips_per_shard=2, shard_frames=True)
    first = run(recs, s)
    before, data = stamps(out, "train"), tar_bytes(out, "train")
    assert len(before) == 5 and all(len(v["fingerprint"]) == 64 for v in index(out, "train").values())
    assert counter(first, "written") == 6 and counter(first, "unchanged") == 0
    second = run(recs, s)
    assert stamps(out, "train") == before and tar_bytes(out, "train") == data
    assert counter(second, "written") == 0 and counter(second, "unchanged") == 6
    changed = next(r for r in recs if r["class_dir"] == "playing_guitar" and "resized" not in r["outputs"]
                   and "rgb" not in r["outputs"])
    other = sources[1] if changed["sizes"]["video"] == len(sources[0]["video"]) else sources[0]
    changed["sizes"]["video"] = write_file(storage.join(out, changed["outputs"]["video"]), other["video"])
    changed["frames"] = other["frames"]
    key = f"playing_guitar/{changed['clip_id']}"
    run(recs, s)
    after = stamps(out, "train")
    rebuilt = {n for n in after if after[n] != before[n]}
    assert rebuilt == {n for n, v in index(out, "train").items() if key in v["keys"]}
    assert tar_bytes(out, "train")[rebuilt.pop()] != data
    fresh = out + "-fresh"
    shutil.copytree(out, fresh, ignore=shutil.ignore_patterns("shards"))
    run(recs, settings(fresh, clips_per_shard=2, shard_frames=True))
    assert tar_bytes(out, "train") == tar_bytes(fresh, "train") and index(out, "train") == index(fresh, "train")


def test_a_damaged_or_incomplete_shard_is_rebuilt(tree):
    out, recs = tree
    s = settings(out, clips_per_shard=4)
    gone = max((r for r in recs if r["split"] == "train"), key=lambda r: (r["class_dir"], r["clip_id"]))
    video = storage.join(out, gone["outputs"]["video"])
    data = storage.read_bytes(video)
    storage.remove(video)
    run(recs, s)
    assert index(out, "train")["demo-train-000002.tar"] == {"keys": [], "bytes": 10240, "fingerprint": None}
    good = tar_bytes(out, "train")
    with open(storage.join(out, "shards", "train", "demo-train-000001.tar"), "r+b") as f:
        f.truncate(1024)
    storage.write_bytes(video, data)
    before = stamps(out, "train")
    run(recs, s)
    after = stamps(out, "train")
    assert {n for n in after if after[n] != before[n]} == {"demo-train-000001.tar", "demo-train-000002.tar"}
    assert tar_bytes(out, "train")["demo-train-000001.tar"] == good["demo-train-000001.tar"]
    assert index(out, "train")["demo-train-000002.tar"]["keys"] == [f"zumba/{gone['clip_id']}"]


def test_flat_layout_duplicate_keys_are_counted_and_listed(tmp_path, sources, caplog):
    out = storage.normalize(str(tmp_path / "out"))
    recs = [make_clip(out, "train", c, n, sources[0]) for c in CLASSES for n in (1, 2)]
    recs += [make_clip(out, "val", "zumba", 1, sources[0])]
    with caplog.at_level(logging.WARNING, logger="transforms.shards"):
        result = run(recs, settings(out, flat=True))
    assert counter(result, "duplicate_keys") == 4
    idx = index(out, "train")
    (entry,) = idx.values()
    assert entry["keys"] == ["yid00000001_000010_000020", "yid00000002_000010_000020"]
    assert entry["skipped_duplicates"] == [
        {"key": f"yid0000000{n}_000010_000020", "class_dir": c, "clip_id": f"yid0000000{n}_000010_000020"}
        for c in CLASSES[1:] for n in (1, 2)]
    (only,) = wds_samples(next(iter(tar_bytes(out, "train").values())))[:1]
    assert json.loads(only["json"])["class_dir"] == "abseiling"
    assert "skipped_duplicates" not in next(iter(index(out, "val").values()))
    warned = [r.getMessage() for r in caplog.records if "is taken by" in r.getMessage()]
    assert len(warned) == 4 and "zumba/yid00000002_000010_000020" in " ".join(warned)


def test_demo_shards_describe_their_mp4_and_a_rerun_keeps_them(tmp_path, monkeypatch):
    """The real pipeline: each sample's JSON matches its mp4 as decoded; a second run rebuilds nothing."""
    monkeypatch.chdir(tmp_path)
    args = ("--dataset", "demo", "--classes", "abseiling,playing guitar", "--limit", "2",
            "--steps", "fetch,resize,rgb,shards", "--shard-frames", "--output", tmp_path / "out")
    assert run_cli(*args) == 0
    out = str(tmp_path / "out")
    samples = [s for data in tar_bytes(out, "train").values() for s in wds_samples(data)]
    assert len(samples) == 2
    for s in samples:
        meta = json.loads(s["json"])
        assert meta["video"] == "resized" and (meta["width"], meta["height"], meta["frames"]) == decoded(s["mp4"])
        assert meta["rgb_frames"] == sum(k.startswith("img_") for k in s) > 0
        assert meta["frame_size"] == list(cv2.imdecode(np.frombuffer(s["img_00001.jpg"], np.uint8), 1).shape[1::-1])
    trimmed = storage.read_bytes(storage.join(out, "videos_train", "abseiling",
                                              samples[0]["__key__"].split("/")[1] + ".mp4"))
    assert decoded(trimmed)[:2] != decoded(samples[0]["mp4"])[:2]
    before = {split: stamps(out, split) for split in ("train", "val")}
    assert run_cli(*args) == 0
    assert {split: stamps(out, split) for split in ("train", "val")} == before
