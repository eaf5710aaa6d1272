"""WebDataset tar shards of the finished clips: shards/{split}/{dataset}-{split}-{NNNNNN}.tar.

One sample per good clip, keyed `{class_dir}/{clip_id}` (flat layout: `{clip_id}`), with
members `{key}.mp4` (resized if present, else trimmed), `{key}.json` (metadata) and, when
frames are sharded, `{key}.img_00001.jpg`, `{key}.flow_x_00001.jpg`, ... WebDataset splits a
member name at the first dot of its basename, so keys carry no dot ("." is written "%2E").

Clips are packed greedily in (class_dir, clip_id) order up to a byte target or a clip count,
and tar headers are fixed (mtime 0, uid/gid 0, mode 0644, POSIX pax), so the same finished
clips always give byte-identical shards. Each shard is built in a local temp file, streamed
member by member, and uploaded whole. shards/{split}/index.json lists each shard's keys and
bytes; shards of earlier runs that are no longer planned are removed.
"""
import io
import json
import logging
import os
import tarfile

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import storage
from transforms.records import GOOD, SPLITS

MIB = 1 << 20
META_FIELDS = ("label", "label_index", "youtube_id", "time_start", "time_end", "fps", "frames",
               "width", "height", "duration", "split", "clip_id", "class_dir")
MEMBER_OVERHEAD = 768  # one 512-byte header plus, on average, half a block of padding

log = logging.getLogger(__name__)


def sample_key(class_dir, clip_id, flat=False):
    key = clip_id if flat else f"{class_dir}/{clip_id}"
    return key.replace("%", "%25").replace(".", "%2E")


def shard_name(dataset, split, index):
    return f"{dataset}-{split}-{index:06d}.tar"


def shard_dir(output, split):
    return storage.join(output, "shards", split)


def _stat_size(url):
    fs, path = storage.filesystem(url)
    return fs.size(path)


def frame_names(rgb, flow, base=1):
    """The JPEG names of `rgb` frames and `flow` flow pairs, numbered from `base`, sorted."""
    names = [f"img_{i:05d}.jpg" for i in range(base, base + rgb)]
    names += [f"flow_{a}_{i:05d}.jpg" for a in "xy" for i in range(base, base + flow)]
    return sorted(names)


def sample(record, output, *, flat=False, frames=False, frame_base=1):
    """What a good clip contributes to a shard, or None if it has nothing to shard.

    `bytes` estimates the clip's share of the tar from the record's `sizes` (a stat when
    they are missing); it drives packing only, the tar holds the files as they are.
    """
    outputs = record.get("outputs") or {}
    sizes = record.get("sizes") or {}
    video_kind = next((k for k in ("resized", "video") if k in outputs), None)
    counts = {"rgb": record.get("rgb_frames") or 0, "flow": record.get("flow_frames") or 0}
    kinds = tuple(k for k in ("rgb", "flow") if frames and k in outputs and counts[k])
    if video_kind is None and not kinds:
        return None
    meta = json.dumps({f: record.get(f) for f in META_FIELDS}, sort_keys=True,
                      separators=(",", ":")).encode("utf-8")
    total = len(meta) + MEMBER_OVERHEAD
    if video_kind:
        size = sizes.get(video_kind)
        total += (size if size is not None else _stat_size(storage.join(output, outputs[video_kind]))) \
            + MEMBER_OVERHEAD
    frame_counts = [counts[k] if k in kinds else 0 for k in ("rgb", "flow")] + [frame_base]
    if kinds:
        names = frame_names(*frame_counts)
        if all(k in sizes for k in kinds):
            total += sum(sizes[k] for k in kinds)
        else:
            listed = storage.find_files(storage.join(output, outputs[kinds[0]]), detail=True)
            wanted = set(names)
            total += sum(i["size"] for u, i in listed.items() if u.rsplit("/", 1)[-1] in wanted)
        total += len(names) * MEMBER_OVERHEAD
    return {"split": record["split"], "class_dir": record["class_dir"], "clip_id": record["clip_id"],
            "key": sample_key(record["class_dir"], record["clip_id"], flat), "bytes": total,
            "meta": meta.decode("utf-8"), "video": outputs.get(video_kind),
            "frames": outputs[kinds[0]] if kinds else None, "frame_counts": frame_counts}


def plan(entries, dataset, split, *, size_mb=1024, per_shard=None):
    """Pack (class_dir, clip_id, key, bytes) entries into shards: [(shard name, [key, ...])].

    Entries are taken in (class_dir, clip_id) order, a repeated key keeps its first entry;
    a new shard starts when `per_shard` clips are in, or (without `per_shard`) when the next
    clip would take the shard past `size_mb` MiB. A clip larger than the target gets its own.
    """
    limit = size_mb * MIB
    shards, keys, filled, seen = [], [], 0, set()
    for _, _, key, size in sorted(entries):
        if key in seen:
            continue
        seen.add(key)
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


def write_shard(split, name, samples, output):
    """Build one shard locally and upload it whole; {"split", "name", "keys", "bytes"}."""
    with storage.local_staging() as tmp:
        path = os.path.join(tmp, name)
        keys = write_tar(path, samples, output)
        size = os.path.getsize(path)
        storage.put_file(path, storage.join(shard_dir(output, split), name))
    Metrics.counter("shards", "written").inc()
    Metrics.distribution("shards", "bytes").update(size)
    return {"split": split, "name": name, "keys": keys, "bytes": size}


def write_index(split, planned, written, output):
    """shards/{split}/index.json ({name: {"keys", "bytes"}}); remove tars that are not planned."""
    folder = shard_dir(output, split)
    index = {w["name"]: {"keys": w["keys"], "bytes": w["bytes"]} for w in sorted(written, key=lambda w: w["name"])}
    storage.write_text(storage.join(folder, "index.json"), json.dumps(index, indent=1) + "\n")
    keep = set(planned)
    for url in storage.find_files(folder):
        name = url.rsplit("/", 1)[-1]
        if name.endswith(".tar") and name not in keep:
            storage.remove(url)
    return index


def _entry(record, settings):
    """(split, sample or None): every split with records gets a plan, even an empty one."""
    smp = None
    if record["status"] in GOOD:
        try:
            smp = sample(record, settings.output, flat=settings.flat, frames=settings.shard_frames,
                         frame_base=settings.frame_index_base)
        except FileNotFoundError as e:
            log.warning("shard: leaving out %s/%s: %s", record["class_dir"], record["clip_id"], e)
            Metrics.counter("shards", "samples_left_out").inc()
    return record["split"], smp


def _packing(entry):
    split, smp = entry
    return split, smp and (smp["class_dir"], smp["clip_id"], smp["key"], smp["bytes"])


def _plan_split(split_entries, settings):
    split, entries = split_entries
    entries = [e for e in entries if e]
    return split, plan(entries, settings.dataset, split, size_mb=settings.shard_size_mb,
                       per_shard=settings.clips_per_shard)


def _assignments(split_plan):
    split, shards = split_plan
    for name, keys in shards:
        for position, key in enumerate(keys):
            yield (split, key), (name, position)


def _placed(joined):
    (split, _), groups = joined
    if groups["shard"] and groups["sample"]:
        (name, position), = groups["shard"]
        smp = min(groups["sample"], key=lambda s: (s["class_dir"], s["meta"]))
        yield (split, name), (position, smp)


def _write(shard, settings):
    (split, name), placed = shard
    return write_shard(split, name, [s for _, s in sorted(placed, key=lambda p: p[0])], settings.output)


def _index(joined, settings):
    split, groups = joined
    planned = [name for names in groups["planned"] for name in names]
    return split, write_index(split, planned, groups["written"], settings.output)


class WriteShards(beam.PTransform):
    """All records in (every split and status); (split, index) out, once its shards are written.

    Packing sees only (key, bytes) per clip, so a split's plan stays small; each shard is then
    gathered by key and written by whichever worker gets it.
    """

    def __init__(self, settings):
        super().__init__()
        self.settings = settings

    def expand(self, records):
        settings = self.settings
        entries = (records
                   | "InSplits" >> beam.Filter(lambda r: r["split"] in SPLITS)
                   | "Sample" >> beam.Map(_entry, settings))
        plans = (entries
                 | "Packing" >> beam.Map(_packing)
                 | "BySplit" >> beam.GroupByKey()
                 | "Plan" >> beam.Map(_plan_split, settings))
        assigned = plans | "Assign" >> beam.FlatMap(_assignments)
        samples = (entries
                   | "Good" >> beam.Filter(lambda e: e[1] is not None)
                   | "ByKey" >> beam.Map(lambda e: ((e[0], e[1]["key"]), e[1])))
        written = ({"shard": assigned, "sample": samples}
                   | "Place" >> beam.CoGroupByKey()
                   | "ToShard" >> beam.FlatMap(_placed)
                   | "ByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(_write, settings)
                   | "WrittenBySplit" >> beam.Map(lambda w: (w["split"], w)))
        planned = plans | "Names" >> beam.Map(lambda p: (p[0], [name for name, _ in p[1]]))
        return ({"planned": planned, "written": written}
                | "JoinSplit" >> beam.CoGroupByKey()
                | "WriteIndex" >> beam.Map(_index, settings))
