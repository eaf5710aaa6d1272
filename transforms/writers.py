"""Run outputs: manifest, failures.csv, summary.json, label_map.txt and the file lists.

Each file is written whole and replaced whole, so a re-run leaves no stale part behind.
"""
import collections
import csv
import io
import json
import re

import apache_beam as beam

from transforms import filelists, storage
from transforms.ledger import dump
from transforms.records import GOOD

FAILURE_COLUMNS = ("split", "label", "youtube_id", "time_start", "time_end", "status", "reason")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def in_order(records):
    return sorted(records, key=lambda r: (tuple(r["order"]), r["class_dir"], r["clip_id"]))


def manifest_bytes(records):
    return b"".join(dump(r) + b"\n" for r in records)


def _escape_char(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text_clean(value):
    """`value` with control characters and line separators escaped (\\x00, \\u2028), as JSON would."""
    return CONTROL.sub(_escape_char, value) if isinstance(value, str) else value


def failures_csv(rows):
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FAILURE_COLUMNS)
    writer.writerows([text_clean(v) for v in row] for row in rows)
    return buf.getvalue().encode("utf-8")


def summary(counts_by_split):
    splits = {s: dict(sorted(c.items())) for s, c in sorted(counts_by_split.items())}
    total = collections.Counter()
    for c in counts_by_split.values():
        total.update(c)
    return {"splits": splits, "total": dict(sorted(total.items()))}


def manifest_name(split):
    return f"manifest/{split}.jsonl"


def write_lists(split, records, settings):
    """The split's file lists that have lines; returns their names."""
    lists = filelists.build(records, settings.dataset, split, flat=settings.flat,
                            shuffle=settings.shuffle, seed=settings.seed, fmt=settings.filelist_format)
    written = []
    for name, data in lists.items():
        if data is not None:
            storage.write_bytes(storage.join(settings.output, name), data)
            written.append(name)
    return written


def write_split(split_records, settings):
    """Write one split's manifest, and its file lists if the run asked for the split; return what
    the run-level step needs."""
    split, records = split_records
    records = in_order(records)
    manifest = manifest_name(split)
    storage.write_bytes(storage.join(settings.output, manifest), manifest_bytes(records))
    listed = split in settings.splits and "filelists" in settings.steps
    counts = collections.Counter(r["status"] for r in records)
    return {"split": split, "manifest": manifest, "counts": dict(counts),
            "lists": write_lists(split, records, settings) if listed else [],
            "failures": [(r["order"], [r.get(c, "") for c in FAILURE_COLUMNS])
                         for r in records if r["status"] not in GOOD]}


def empty_parts(parts, settings):
    """A part for each requested split that had no records: an empty manifest, no lists."""
    have = {p["split"] for p in parts}
    out = []
    for split in settings.splits:
        if split not in have:
            storage.write_bytes(storage.join(settings.output, manifest_name(split)), b"")
            out.append({"split": split, "manifest": manifest_name(split), "counts": {}, "lists": [],
                        "failures": []})
    return out


def remove_stale_lists(parts, settings):
    """Remove the requested splits' file lists (either format) that this run did not write."""
    written = {name for p in parts for name in p["lists"]}
    ours = {filelists.list_name(settings.dataset, split, kind, fmt)
            for split in settings.splits for kind in filelists.KINDS for fmt in filelists.FORMATS}
    for name in storage.listdir_names(settings.output):
        if name in ours and name not in written:
            storage.remove(storage.join(settings.output, name))


def write_run(parts, settings, label_map_text):
    """failures.csv, summary.json and label_map.txt; empty manifests for requested splits without
    records; drop manifests and the requested splits' file lists that this run did not write."""
    out = settings.output
    parts = list(parts) + empty_parts(parts, settings)
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
    if "filelists" in settings.steps:
        remove_stale_lists(parts, settings)
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
