"""Run outputs: manifest, failures.csv, summary.json, label_map.txt and the file lists.

Each file is written whole and replaced whole, so a re-run leaves no stale part behind.
"""
import collections
import csv
import io
import json

import apache_beam as beam

from transforms import filelists, storage
from transforms.ledger import dump
from transforms.records import GOOD, SPLITS

FAILURE_COLUMNS = ("split", "label", "youtube_id", "time_start", "time_end", "status", "reason")


def in_order(records):
    return sorted(records, key=lambda r: (tuple(r["order"]), r["class_dir"], r["clip_id"]))


def manifest_bytes(records):
    return b"".join(dump(r) + b"\n" for r in records)


def failures_csv(rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue().encode("utf-8")


def summary(counts_by_split):
    splits = {s: dict(sorted(c.items())) for s, c in sorted(counts_by_split.items())}
    total = collections.Counter()
    for c in counts_by_split.values():
        total.update(c)
    return {"splits": splits, "total": dict(sorted(total.items()))}


def write_split(split_records, settings):
    """Write one split's manifest and file lists; return what the run-level step needs."""
    split, records = split_records
    records = in_order(records)
    manifest = f"manifest/{split}.jsonl"
    storage.write_bytes(storage.join(settings.output, manifest), manifest_bytes(records))
    if "filelists" in settings.steps and split in SPLITS:
        lists = filelists.build(records, settings.dataset, split, flat=settings.flat,
                                shuffle=settings.shuffle, seed=settings.seed,
                                fmt=settings.filelist_format)
        for name, data in lists.items():
            url = storage.join(settings.output, name)
            if data is None:
                storage.remove(url)
            else:
                storage.write_bytes(url, data)
    counts = collections.Counter(r["status"] for r in records)
    return {"split": split, "manifest": manifest, "counts": dict(counts),
            "failures": [(r["order"], [r.get(c, "") for c in FAILURE_COLUMNS])
                         for r in records if r["status"] not in GOOD]}


def write_run(parts, settings, label_map_text):
    """failures.csv, summary.json and label_map.txt; drop manifest files of earlier runs."""
    out = settings.output
    rows = [row for part in parts for row in part["failures"]]
    rows.sort(key=lambda x: tuple(x[0]))
    storage.write_bytes(storage.join(out, "failures.csv"), failures_csv([row for _, row in rows]))
    result = summary({p["split"]: p["counts"] for p in parts})
    storage.write_text(storage.join(out, "summary.json"), json.dumps(result, indent=2) + "\n")
    storage.write_text(storage.join(out, "label_map.txt"), label_map_text)
    keep = {storage.join(out, p["manifest"]) for p in parts}
    for url in storage.find_files(storage.join(out, "manifest")):
        if url not in keep:
            storage.remove(url)
    return result


class WriteOutputs(beam.PTransform):
    """Records in; manifest, file lists, failures.csv, summary.json and label_map.txt out."""

    def __init__(self, settings, label_map_text):
        super().__init__()
        self.settings = settings
        self.label_map_text = label_map_text

    def expand(self, records):
        settings = self.settings
        return (records
                | "BySplit" >> beam.Map(lambda r: (r["split"], r))
                | "GroupSplit" >> beam.GroupByKey()
                | "WriteSplit" >> beam.Map(write_split, settings)
                | "AllSplits" >> beam.combiners.ToList()
                | "WriteRun" >> beam.Map(write_run, settings, self.label_map_text))
