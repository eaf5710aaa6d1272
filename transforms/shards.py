"""WebDataset tar shards of the finished clips: shards/{split}/{dataset}-{split}-{NNNNNN}.tar.

One sample per good clip, keyed `{class_dir}/{clip_id}` (flat layout: `{clip_id}`), with
members `{key}.mp4` (resized if present, else trimmed), `{key}.json` (metadata of what the
sample holds: width/height/frames are the packed mp4's) and, when
frames are sharded, `{key}.img_00001.jpg`, `{key}.flow_x_00001.jpg`, ... WebDataset splits a
member name at the first dot of its basename, so keys carry no dot ("." is written "%2E").
With the flat layout a clip id in two classes keeps the first class's clip; the others are
logged, counted (shards/duplicate_keys) and listed in the index beside the kept one.

Clips are packed greedily in (class_dir, clip_id) order up to a byte target or a clip count,
and tar headers are fixed (mtime 0, uid/gid 0, mode 0644, POSIX pax), so the same finished
clips always give byte-identical shards. Each shard is built in a local temp file, streamed
member by member, and uploaded whole. shards/{split}/index.json lists each shard's keys, bytes
and a fingerprint of its inputs; a shard whose fingerprint and size match the previous index is
kept as it is. Shards of earlier runs that are no longer planned are removed.
"""
import hashlib
import io
import json
import logging
import os
import tarfile
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import layout, storage
from transforms.records import GOOD, SPLITS

MIB = 1 << 20
META_FIELDS = ("label", "label_index", "youtube_id", "time_start", "time_end", "fps", "frames",
               "width", "height", "duration", "split", "clip_id", "class_dir")
MEMBER_OVERHEAD = 768  # one 512-byte header plus, on average, half a block of padding
VIDEO_NAMES = {"resized": "resized", "video": "trimmed"}
SHARD_FORMAT = 1  # bump when the bytes a sample gives change, so every fingerprint changes

log = logging.getLogger(__name__)


sample_key = layout.shard_key
frame_names = layout.frame_names


def shard_name(dataset, split, index):
    return f"{dataset}-{split}-{index:06d}.tar"


def shard_dir(output, split):
    return storage.join(output, "shards", split)


def _stat_size(url):
    fs, path = storage.filesystem(url)
    return fs.size(path)


def metadata(record, video_kind, kinds):
    """The sample's JSON fields: width/height/frames describe the mp4 it holds (`video` names it)."""
    meta = {f: record.get(f) for f in META_FIELDS}
    meta["video"] = VIDEO_NAMES.get(video_kind)
    if video_kind == "resized":
        meta["width"], meta["height"] = record.get("resized_size") or (None, None)
        meta["frames"] = record.get("resized_frames")
    for kind in kinds:
        meta[f"{kind}_frames"] = record.get(f"{kind}_frames")
    if kinds and record.get("frame_size"):
        meta["frame_size"] = record["frame_size"]
    return meta


def _video_bytes(record, output, kind):
    size = (record.get("sizes") or {}).get(kind)
    return size if size is not None else _stat_size(storage.join(output, record["outputs"][kind]))


def _frame_bytes(record, output, kinds, names):
    sizes = record.get("sizes") or {}
    if all(k in sizes for k in kinds):
        return sum(sizes[k] for k in kinds)
    listed = storage.find_files(storage.join(output, record["outputs"][kinds[0]]), detail=True)
    wanted = set(names)
    return sum(i["size"] for u, i in listed.items() if u.rsplit("/", 1)[-1] in wanted)


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sample(record, output, *, flat=False, frames=False, frame_base=1):
    """What a good clip contributes to a shard, or None if it has nothing to shard.

    `bytes` estimates the clip's share of the tar from the record's `sizes` (a stat when
    they are missing); it drives packing only, the tar holds the files as they are.
    `fingerprint` digests the sample's inputs: key, JSON, member paths, counts and sizes.
    """
    outputs = record.get("outputs") or {}
    video_kind = next((k for k in ("resized", "video") if k in outputs), None)
    counts = {"rgb": record.get("rgb_frames") or 0, "flow": record.get("flow_frames") or 0}
    kinds = tuple(k for k in ("rgb", "flow") if frames and k in outputs and counts[k])
    if video_kind is None and not kinds:
        return None
    meta = json.dumps(metadata(record, video_kind, kinds), sort_keys=True, separators=(",", ":"))
    video_bytes = _video_bytes(record, output, video_kind) if video_kind else 0
    frame_counts = [counts[k] if k in kinds else 0 for k in ("rgb", "flow")] + [frame_base]
    names = frame_names(*frame_counts) if kinds else []
    frame_bytes = _frame_bytes(record, output, kinds, names) if kinds else 0
    key = sample_key(record["class_dir"], record["clip_id"], flat)
    video, frames_dir = outputs.get(video_kind), outputs[kinds[0]] if kinds else None
    members = 1 + bool(video_kind) + len(names)
    return {"split": record["split"], "class_dir": record["class_dir"], "clip_id": record["clip_id"],
            "key": key, "bytes": len(meta.encode()) + video_bytes + frame_bytes + members * MEMBER_OVERHEAD,
            "meta": meta, "video": video, "frames": frames_dir, "frame_counts": frame_counts,
            "fingerprint": _digest([key, meta, video, video_bytes, frames_dir, frame_counts, frame_bytes])}


def dedupe(entries):
    """(entries in (class_dir, clip_id) order, each key's first only; the other clips that had a
    taken key, as {"key", "class_dir", "clip_id"}). A repeated (class_dir, clip_id) is dropped silently."""
    kept, skipped, owner = [], [], {}
    for entry in sorted(entries):
        class_dir, clip_id, key, _ = entry
        if key not in owner:
            owner[key] = (class_dir, clip_id)
            kept.append(entry)
        elif owner[key] != (class_dir, clip_id):
            skipped.append({"key": key, "class_dir": class_dir, "clip_id": clip_id})
    return kept, skipped


def plan(entries, dataset, split, *, size_mb=1024, per_shard=None):
    """Pack (class_dir, clip_id, key, bytes) entries into shards: [(shard name, [key, ...])].

    Entries are taken in (class_dir, clip_id) order, a repeated key keeps its first entry;
    a new shard starts when `per_shard` clips are in, or (without `per_shard`) when the next
    clip would take the shard past `size_mb` MiB. A clip larger than the target gets its own.
    """
    limit = size_mb * MIB
    shards, keys, filled = [], [], 0
    for _, _, key, size in dedupe(entries)[0]:
        full = len(keys) >= per_shard if per_shard else filled + size > limit
        if keys and full:
            shards.append(keys)
            keys, filled = [], 0
        keys.append(key)
        filled += size
    if keys:
        shards.append(keys)
    return [(shard_name(dataset, split, i), ks) for i, ks in enumerate(shards)]


def _info(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _members(smp, output):
    """The sample's members, sorted by name: (name, size, url or bytes). Raises FileNotFoundError."""
    key = smp["key"]
    meta = smp["meta"].encode("utf-8")
    members = [(f"{key}.json", len(meta), meta)]
    if smp["video"]:
        url = storage.join(output, smp["video"])
        members.append((f"{key}.mp4", _stat_size(url), url))
    if smp["frames"]:
        base = storage.join(output, smp["frames"])
        names = frame_names(*smp["frame_counts"])
        urls = [storage.join(base, n) for n in names]
        data = storage.read_bytes_many(urls)
        if len(data) != len(urls):
            raise FileNotFoundError(f"{base}: {len(urls) - len(data)} of {len(urls)} frame files missing")
        members.extend((f"{key}.{n}", len(data[u]), data[u]) for n, u in zip(names, urls))
    return sorted(members)


def _add(tar, name, size, source):
    if isinstance(source, bytes):
        tar.addfile(_info(name, size), io.BytesIO(source))
        return
    fs, path = storage.filesystem(source)
    with fs.open(path, "rb") as f:
        tar.addfile(_info(name, size), f)


def write_tar(path, samples, output):
    """Write `samples` (in the given order) to a local tar at `path`; return the keys written.

    A sample whose files cannot be read is left out whole (and logged), never in part.
    """
    keys = []
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for smp in samples:
            try:
                members = _members(smp, output)
            except FileNotFoundError as e:
                log.warning("shard: leaving out %s: %s", smp["key"], e)
                Metrics.counter("shards", "samples_left_out").inc()
                continue
            for name, size, source in members:
                _add(tar, name, size, source)
            keys.append(smp["key"])
    return keys


def shard_fingerprint(samples):
    return _digest([SHARD_FORMAT] + [s["fingerprint"] for s in samples])


def reusable(url, previous, fingerprint):
    """Whether the shard at `url` is the one `previous` (its index entry) describes, with these inputs."""
    if not previous or previous.get("fingerprint") != fingerprint:
        return False
    try:
        return _stat_size(url) == previous.get("bytes")
    except FileNotFoundError:
        return False


def write_shard(split, name, samples, output, previous=None):
    """Build one shard locally and upload it whole, unless `previous` (its entry in the last index)
    shows the same inputs and the shard is there at that size. {"split", "name", "keys", "bytes",
    "fingerprint", "built", "seconds"}; a shard that left a sample out gets no fingerprint."""
    started = time.perf_counter()
    url = storage.join(shard_dir(output, split), name)
    fingerprint = shard_fingerprint(samples)
    built = not reusable(url, previous, fingerprint)
    if built:
        with storage.local_staging() as tmp:
            path = os.path.join(tmp, name)
            keys = write_tar(path, samples, output)
            size = os.path.getsize(path)
            storage.put_file(path, url)
        fingerprint = fingerprint if len(keys) == len(samples) else None
        Metrics.distribution("shards", "bytes").update(size)
    else:
        keys, size = [s["key"] for s in samples], previous["bytes"]
    Metrics.counter("shards", "written" if built else "unchanged").inc()
    return {"split": split, "name": name, "keys": keys, "bytes": size, "fingerprint": fingerprint,
            "built": built, "seconds": round(time.perf_counter() - started, 3)}


def read_index(output, split):
    """The split's index.json as {name: entry}, or {} when there is none (or it is unreadable)."""
    try:
        data = json.loads(storage.read_bytes(storage.join(shard_dir(output, split), "index.json")))
    except (FileNotFoundError, ValueError):
        return {}
    return {n: e for n, e in data.items() if isinstance(e, dict)} if isinstance(data, dict) else {}


def write_index(split, planned, written, output, skipped=None):
    """shards/{split}/index.json ({name: {"keys", "bytes", "fingerprint"[, "skipped_duplicates"]}});
    remove tars that are not planned. `skipped`: {name: clips whose key that shard holds for another}."""
    folder = shard_dir(output, split)
    skipped = skipped or {}
    index = {}
    for w in sorted(written, key=lambda w: w["name"]):
        index[w["name"]] = {"keys": w["keys"], "bytes": w["bytes"], "fingerprint": w["fingerprint"]}
        if skipped.get(w["name"]):
            index[w["name"]]["skipped_duplicates"] = skipped[w["name"]]
    storage.write_text(storage.join(folder, "index.json"), json.dumps(index, indent=1) + "\n")
    keep = set(planned)
    for url in storage.find_files(folder):
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".tar") and name not in keep:
            storage.remove(url)
    return index


def summary(split, index, written):
    """What the report shows of a split's shards: all of them, and those built by this run."""
    built = [w for w in written if w["built"]]
    return {"split": split, "shards": len(index), "clips": sum(len(e["keys"]) for e in index.values()),
            "bytes": sum(e["bytes"] for e in index.values()), "built": len(built),
            "built_clips": sum(len(w["keys"]) for w in built),
            "seconds": round(sum(w["seconds"] for w in written), 3)}


def _entry(record, outputs, frame_base):
    """(split, sample or None): every split with records gets a plan, even an empty one. `outputs`:
    the OutputOptions; `frame_base`: the first frame's index."""
    smp = None
    if record["status"] in GOOD:
        try:
            smp = sample(record, outputs.output, flat=outputs.flat, frames=outputs.shard_frames,
                         frame_base=frame_base)
        except FileNotFoundError as e:
            log.warning("shard: leaving out %s/%s: %s", record["class_dir"], record["clip_id"], e)
            Metrics.counter("shards", "samples_left_out").inc()
    return record["split"], smp


def _packing(entry):
    split, smp = entry
    return split, smp and (smp["class_dir"], smp["clip_id"], smp["key"], smp["bytes"])


def _plan_split(split_entries, outputs, dataset):
    """(split, {"shards": plan, "skipped": {name: duplicates}, "previous": the last index's entries})."""
    split, entries = split_entries
    kept, skipped = dedupe([e for e in entries if e])
    shards = plan(kept, dataset, split, size_mb=outputs.shard_size_mb,
                  per_shard=outputs.clips_per_shard)
    where = {key: name for name, keys in shards for key in keys}
    by_shard = {}
    for dup in skipped:
        log.warning("shard: leaving out %s/%s: its key %s is taken by another clip of %s",
                    dup["class_dir"], dup["clip_id"], dup["key"], split)
        by_shard.setdefault(where[dup["key"]], []).append(dup)
    Metrics.counter("shards", "duplicate_keys").inc(len(skipped))
    previous = {n: {"bytes": e.get("bytes"), "fingerprint": e.get("fingerprint")}
                for n, e in read_index(outputs.output, split).items()}
    return split, {"shards": shards, "skipped": by_shard, "previous": previous}


def _assignments(split_plan):
    split, planned = split_plan
    for name, keys in planned["shards"]:
        previous = planned["previous"].get(name)
        for position, key in enumerate(keys):
            yield (split, key), (name, position, previous)


def _placed(joined):
    (split, _), groups = joined
    if groups["shard"] and groups["sample"]:
        (name, position, previous), = groups["shard"]
        smp = min(groups["sample"], key=lambda s: (s["class_dir"], s["meta"]))
        yield (split, name), (position, smp, previous)


def _write(shard, outputs):
    (split, name), placed = shard
    placed = sorted(placed, key=lambda p: p[0])
    return write_shard(split, name, [s for _, s, _ in placed], outputs.output, placed[0][2])


def _index(joined, outputs):
    split, groups = joined
    (planned,) = groups["planned"]
    written = list(groups["written"])
    index = write_index(split, planned["names"], written, outputs.output, planned["skipped"])
    return summary(split, index, written)


class WriteShards(beam.PTransform):
    """All records in (every split and status); one summary per split out (see `summary`), once
    its shards and index are written.

    Packing sees only (key, bytes) per clip, so a split's plan stays small; each shard is then
    gathered by key and written (or found unchanged) by whichever worker gets it.
    """

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def expand(self, records):
        settings = self.settings
        outputs = settings.outputs
        entries = (records
                   | "InSplits" >> beam.Filter(lambda r: r["split"] in SPLITS)
                   | "Sample" >> beam.Map(_entry, outputs, settings.video.frame_index_base))
        plans = (entries
                 | "Packing" >> beam.Map(_packing)
                 | "BySplit" >> beam.GroupByKey()
                 | "Plan" >> beam.Map(_plan_split, outputs, settings.dataset))
        assigned = plans | "Assign" >> beam.FlatMap(_assignments)
        samples = (entries
                   | "Good" >> beam.Filter(lambda e: e[1] is not None)
                   | "ByKey" >> beam.Map(lambda e: ((e[0], e[1]["key"]), e[1])))
        written = ({"shard": assigned, "sample": samples}
                   | "Place" >> beam.CoGroupByKey()
                   | "ToShard" >> beam.FlatMap(_placed)
                   | "ByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(_write, outputs)
                   | "WrittenBySplit" >> beam.Map(lambda w: (w["split"], w)))
        planned = plans | "Names" >> beam.Map(
            lambda p: (p[0], {"names": [name for name, _ in p[1]["shards"]], "skipped": p[1]["skipped"]}))
        return ({"planned": planned, "written": written}
                | "JoinSplit" >> beam.CoGroupByKey()
                | "WriteIndex" >> beam.Map(_index, outputs))
