"""Run outputs: manifest, failures.csv, summary.json, label_map.txt and the file lists.

Each file is written whole and replaced whole, so a re-run leaves no stale part behind.

No worker holds a whole split. A split's records are cut into ranges of annotation order (by
approximate quantiles of their `order`, a few kB whatever the split's size), at most about
`manifest_file_records` records a range, and each range is sorted and written by whichever
worker gets it: manifest/{split}.jsonl when one range holds the split, else
manifest/{split}-{i:05d}-of-{n:05d}.jsonl. Concatenated in name order (`manifest/{split}*.jsonl`)
they are the split's records in annotation order. The same pass renders each record's file-list
lines; failures.csv (one file, in annotation order across splits) gets ranges of its own. A
range's records reach its worker as sorted runs in storage (transforms/runs.py), never through a
shuffle. What is gathered afterwards is only each range's text (the lists' and failures.csv's
own bytes) and counts, and the run refuses to write its lists, failures.csv and summary.json
unless every annotation row it kept has its record (IncompleteRun).
"""
import bisect
import collections
import csv
import dataclasses
import io
import json
import math
import os
import re

import apache_beam as beam
from apache_beam.transforms.stats import ApproximateQuantilesCombineFn

from transforms import filelists, runs, storage
from transforms.ledger import dump
from transforms.optionfields import Refused, as_list, option
from transforms.records import GOOD, SPLITS, ClipRecord

FAILURE_COLUMNS = ("split", "label", "youtube_id", "time_start", "time_end", "status", "reason")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
QUANTILES = 1000  # order ranges known per split: enough for 1000 manifest files a split
# Ranks within 0.2 % of a split's size (a 20k range of 545k clips is off by at most ~1.1k), for
# splits of up to 10M records: the combiner then keeps at most ~59k orders (a few MB), however
# large the split (Beam sizes its buffers from these two).
QUANTILE_ERROR, QUANTILE_ELEMENTS = 0.002, 10 ** 7
FAILURES = "failures"  # failures.csv is one file in annotation order across splits: its own ranges
FAILURES_PER_RANGE = 50000
STEPS = ("fetch", "resize", "rgb", "flow", "shards", "filelists")
SHARD_SIZES = "--shard-size-mb must be > 0 and --clips-per-shard >= 1"


def _steps(value, _):
    steps = as_list(value)
    for step in steps:
        if step not in STEPS:
            raise Refused(f"--steps: unknown step {step!r} (choose from {','.join(STEPS)})")
    return tuple(steps)


def _truth(value, _):
    return bool(value)


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """The outputs group: where the outputs go, which steps make them, how an existing tree is
    trusted, and the manifest, file list and shard formats."""
    output: str = option(None, "output root: a local directory or gs://bucket/prefix",
                         refuse=(lambda v: not v, "no output: pass --output DIR_OR_URL"),
                         convert=lambda value, _: storage.normalize(value))
    steps: tuple = option(["filelists"], f"comma list of steps from {','.join(STEPS)}", convert=_steps)
    flat: bool = option("classes", "classes: videos_{split}/{class}/{clip}.mp4 (level 2); flat: "
                                   "videos_{split}/{clip}.mp4 (level 1)",
                        name="layout", choices=("classes", "flat"), value=False,
                        convert=lambda value, _: value == "flat")
    verify: str = option("probe", "how to check an existing video: probe (open, duration) or full (decode every "
                                  "frame)", choices=("probe", "full"))
    shuffle: bool = option(False, "shuffle the file lists as MMAction2's --shuffle does", convert=_truth)
    seed: int = option(None, "random seed for --shuffle (random.seed(N); random.shuffle(lines))")
    filelist_format: str = option("txt", "file list format", choices=("txt", "json"))
    manifest_file_records: int = option(20000, "most records in one manifest file: a split with more is written in "
                                               "parallel as manifest/{split}-NNNNN-of-NNNNN.jsonl",
                                        refuse=(lambda v: v < 1, "--manifest-file-records must be >= 1"))
    redo: bool = option(False, "ignore the ledger and redo every clip (re-verify a tree that changed)",
                        convert=_truth)
    retry_unavailable: bool = option(False, "also retry clips the ledger holds as permanently unavailable",
                                     convert=_truth)
    shard_size_mb: float = option(1024.0, "target size of a WebDataset shard in MiB",
                                  refuse=(lambda v: v <= 0, SHARD_SIZES))
    clips_per_shard: int = option(None, "clips per WebDataset shard (instead of --shard-size-mb)",
                                  refuse=(lambda v: v is not None and v < 1, SHARD_SIZES))
    shard_frames: bool = option(False, "also put each clip's RGB and flow JPEGs in the shards", convert=_truth)


def sort_key(record):
    """A record's place in annotation order."""
    return tuple(record["order"]), record["class_dir"], record["clip_id"]


def _escape_char(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def text_clean(value):
    """`value` with control characters and line separators escaped (\\x00, \\u2028), as JSON would."""
    return CONTROL.sub(_escape_char, value) if isinstance(value, str) else value


def _csv_line(values):
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([text_clean(v) for v in values])
    return buf.getvalue()


def failure_line(record):
    """The record's failures.csv line."""
    return _csv_line([record.get(c, "") for c in FAILURE_COLUMNS])


def write_failures(url, ranges):
    """failures.csv at `url`: its header, then the files of its ranges (index, file URL) in order,
    copied one at a time into a local file that is put in place whole."""
    with storage.local_staging() as work:
        local = os.path.join(work, "failures.csv")
        with open(local, "wb") as f:
            f.write(_csv_line(FAILURE_COLUMNS).encode("utf-8"))
            for _, piece in sorted(ranges):
                f.write(storage.read_bytes(piece))
        storage.put_file(local, url)


UNKNOWN_SOURCE = "unknown"  # a good record that does not say where its video came from
SERVED = "served"  # a manifest entry's source kind, beside its file-list lines (not a file-list kind)


def published_figures(config):
    """The dataset config's `published` mapping checked: {reference: {"source": citation, split: count}}
    ({} when absent). Raises ValueError naming what is wrong."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError("published: a mapping of reference: {source: ..., train: N, ...}")
    out = {}
    for ref, entry in config.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise ValueError(f"published.{ref}: a mapping with a source (where the figures are published)")
        wrong = [k for k, v in entry.items() if k != "source" and (k not in SPLITS or isinstance(v, bool)
                                                                   or not isinstance(v, int) or v < 0)]
        if wrong:
            raise ValueError(f"published.{ref}: {', '.join(map(str, wrong))}: not a split with a clip count "
                             f"(train, val, test: N >= 0)")
        out[str(ref)] = {"source": entry["source"].strip(),
                         **{split: entry[split] for split in SPLITS if split in entry}}
    return out


def availability(counts_by_split, served_by_split, published):
    """{split: {"annotated", "served", "missing", "published"}} and the references' sources:

    annotated: the split's annotation rows (records) in the run; served: {source kind: good
    records}; missing: {status: records} of the rest; published: {reference: count} of the
    `published` figures (published_figures) for the split, none when it has none."""
    splits = {}
    for split, counts in sorted(counts_by_split.items()):
        served = served_by_split.get(split) or {}
        splits[split] = {
            "annotated": sum(counts.values()),
            "served": {kind: n for kind, n in sorted(served.items()) if n},
            "missing": {status: n for status, n in sorted(counts.items()) if status not in GOOD and n},
            "published": {ref: figures[split] for ref, figures in sorted(published.items()) if split in figures}}
    return {"splits": splits, "references": {ref: figures["source"] for ref, figures in sorted(published.items())}}


def summary(counts_by_split):
    splits = {s: dict(sorted(c.items())) for s, c in sorted(counts_by_split.items())}
    total = collections.Counter()
    for c in counts_by_split.values():
        total.update(c)
    return {"splits": splits, "total": dict(sorted(total.items()))}


def manifest_name(split, index=0, files=1):
    """manifest/{split}.jsonl, or the index-th of `files` parts: manifest/{split}-00001-of-00004.jsonl."""
    if files == 1:
        return f"manifest/{split}.jsonl"
    return f"manifest/{split}-{index:05d}-of-{files:05d}.jsonl"


def split_plan(count, quantiles, per_file):
    """{"files": n, "bounds": n - 1 orders}: `count` records cut into n ranges of about `per_file`,
    at `quantiles` (approximate quantiles of their orders, smallest first, largest last)."""
    files = max(1, math.ceil(count / per_file))
    steps = len(quantiles) - 1
    return {"files": files, "bounds": [tuple(quantiles[round(i * steps / files)]) for i in range(1, files)]}


def _plans(joined, per_file):
    split, groups = joined
    (count,), (quantiles,) = groups["count"], groups["quantiles"]
    return split, dict(split_plan(count, quantiles, per_file), rows=count)


class IncompleteRun(Exception):
    """The records that reached the outputs are not one per annotation row the run kept."""


def check_complete(counts_by_split, plans):
    """Raise IncompleteRun unless each split has exactly as many records as rows were planned."""
    got = {split: sum(counts.values()) for split, counts in counts_by_split.items()}
    rows = {split: plan["rows"] for split, plan in plans.items()}
    wrong = [(split, got.get(split, 0), rows.get(split, 0)) for split in sorted(set(rows) | set(got))
             if got.get(split, 0) != rows.get(split, 0)]
    if wrong:
        raise IncompleteRun(
            "the runner delivered " + "; ".join(f"{got:,} records of {n:,} rows of split {split}"
                                                for split, got, n in wrong)
            + " to the outputs, so its file lists, failures.csv and summary.json were not written; the "
              "ledger keeps every finished clip: run the same command again")


def part_of(record, plans, flat=False):
    """((split, index of its manifest part), (sort key, what the part writes of the record))."""
    plan = plans[record["split"]]
    index = bisect.bisect_right(plan["bounds"], tuple(record["order"]))
    return (record["split"], index), (sort_key(record), record_entry(record, flat))


def record_entry(record, flat=False):
    """What a manifest part needs of one record: [manifest line, status, what a good record adds
    (its file-list lines by kind, and its source kind under SERVED; {} for the rest)]. Made before
    the records of a part are sorted, so a part holds text, not records."""
    good = record["status"] in GOOD
    return [dump(record).decode("utf-8") + "\n", record["status"],
            {**{kind: filelists.line(record, kind, flat) for kind in filelists.KINDS},
             SERVED: ClipRecord.from_dict(record).source_kind or UNKNOWN_SOURCE} if good else {}]


def entry_size(entry):
    json_line, _, lines = entry
    return len(json_line) + sum(len(line or "") for line in lines.values())


def failure_of(record, plans):
    """(index of its failures.csv range, (sort key, line)) of a record that is not ok/exists."""
    key = sort_key(record)
    return bisect.bisect_right(plans[FAILURES]["bounds"], key[0]), (key, failure_line(record))


def failure_range(grouped, folder):
    """(index, URL) of the file under the run's scratch `folder` that holds the range's
    failures.csv lines, in order, from its pieces (so that no worker holds every failure line)."""
    index, pieces = grouped
    url = storage.join(folder, f"failures-{index:05d}.csv")
    storage.write_bytes(url, "".join(line for _, line in runs.merged(pieces)).encode("utf-8"))
    return index, url


class WritePart(beam.DoFn):
    """One range of a split's records in; its manifest file written. Yields the part's name, its
    counts by status and its good records' counts by source kind (`served`); tagged `lists`:
    ((split, kind), (index, its lines)) when the run lists the split. `outputs`: the OutputOptions;
    `splits`: the splits the run reads."""

    def __init__(self, outputs, splits):
        self.outputs, self.splits = outputs, splits

    def process(self, joined, plans):
        (split, index), groups = joined
        entries = [entry for _, entry in runs.merged(groups["pieces"])]
        name = manifest_name(split, index, plans[split]["files"])
        storage.write_text(storage.join(self.outputs.output, name), "".join(json for json, _, _ in entries))
        yield {"split": split, "manifest": name, "counts": dict(collections.Counter(s for _, s, _ in entries)),
               "served": dict(collections.Counter(lines[SERVED] for _, _, lines in entries if SERVED in lines))}
        if split in self.splits and "filelists" in self.outputs.steps:
            for kind in filelists.KINDS:
                text = "".join(lines.get(kind) or "" for _, _, lines in entries)
                yield beam.pvalue.TaggedOutput("lists", ((split, kind), (index, text, len(entries))))


def write_list(grouped, plans, outputs, dataset):
    """One file list of `dataset` from its parts' lines (in part order), as the OutputOptions
    `outputs` ask; its name, or None when it has no line.
    Refuses (IncompleteRun) unless its parts hold one record per planned row of the split."""
    (split, kind), parts = grouped
    parts = sorted(parts)
    check_complete({split: {"records": sum(n for _, _, n in parts)}}, {split: plans[split]})
    text = "".join(text for _, text, _ in parts)
    if not text:
        return None
    fmt = outputs.filelist_format
    if outputs.shuffle or fmt != "txt":
        lines = text.splitlines(keepends=True)
        data = filelists.render(filelists.shuffled(lines, outputs.seed) if outputs.shuffle else lines, kind, fmt)
    else:
        data = text.encode("utf-8")
    name = filelists.list_name(dataset, split, kind, fmt)
    storage.write_bytes(storage.join(outputs.output, name), data)
    return name


def empty_parts(parts, splits, output):
    """A part for each requested split (of `splits`) that had no records: an empty manifest under `output`."""
    have = {p["split"] for p in parts}
    out = []
    for split in splits:
        if split not in have:
            storage.write_bytes(storage.join(output, manifest_name(split)), b"")
            out.append({"split": split, "manifest": manifest_name(split), "counts": {}, "served": {}})
    return out


def remove_stale_lists(written, dataset, splits, output):
    """Remove the requested splits' file lists (either format) of `dataset` under `output` that this
    run did not write."""
    ours = {filelists.list_name(dataset, split, kind, fmt)
            for split in splits for kind in filelists.KINDS for fmt in filelists.FORMATS}
    for name in storage.listdir_names(output):
        if name in ours and name not in written:
            storage.remove(storage.join(output, name))


def split_counts(parts, field="counts"):
    """{split: Counter of statuses} over manifest parts (a split whose parts are empty: {});
    field="served": {split: Counter of the good records' source kinds}."""
    counts = collections.defaultdict(collections.Counter)
    for part in parts:
        counts[part["split"]].update(part.get(field) or {})
    return counts


def write_run(_, parts, lists, failures, plans, settings, label_map_text):
    """failures.csv, summary.json and label_map.txt; empty manifests for requested splits without
    records; drop manifests and the requested splits' file lists that this run did not write.
    Refuses (IncompleteRun) when the records that came are not one per planned row."""
    out, splits = settings.outputs.output, settings.reading.splits
    check_complete(split_counts(parts), plans)
    parts = list(parts) + empty_parts(parts, splits, out)
    write_failures(storage.join(out, "failures.csv"), failures)
    counts = split_counts(parts)
    result = summary(counts)
    result["availability"] = availability(counts, split_counts(parts, "served"), settings.published)
    storage.write_text(storage.join(out, "summary.json"), json.dumps(result, indent=2) + "\n")
    storage.write_text(storage.join(out, "label_map.txt"), label_map_text)
    keep = {storage.join(out, p["manifest"]) for p in parts}
    for url in storage.find_files(storage.join(out, "manifest")):
        if url not in keep:
            storage.remove(url)
    if "filelists" in settings.outputs.steps:
        remove_stale_lists({name for name in lists if name}, settings.dataset, splits, out)
    return result


class WriteOutputs(beam.PTransform):
    """Records in; manifest, file lists, failures.csv, summary.json and label_map.txt out.

    `rows`: (split, order) of every annotation row the run keeps, one per record to come, so the
    ranges are known from the annotations (a count and approximate quantiles of the orders, per
    split and over all rows for failures.csv) while the clips are processed, and each record goes
    to its range as it is made, never gathered or held as a whole. Every range, even an empty
    one, gets its manifest part; each file list is gathered from its parts' lines; failures.csv
    from its ranges' lines. The summary is the result."""

    def __init__(self, settings, label_map_text, rows):
        super().__init__()
        self.settings = settings
        self.label_map_text = label_map_text
        self.rows = rows

    def expand(self, records):
        s = self.settings
        outputs = s.outputs
        plan = self.rows | "Ranges" >> Ranges(outputs.manifest_file_records)
        plans = beam.pvalue.AsDict(plan)
        folder = runs.runs_dir(outputs.output, s.run_id)
        pieces = (records
                  | "ToPart" >> beam.Map(part_of, plans, outputs.flat)
                  | "WritePartRuns" >> beam.ParDo(runs.WriteRuns(folder, entry_size)))
        slots = plan | "Slots" >> beam.FlatMap(lambda p: [((p[0], i), None) for i in range(p[1]["files"])])
        parts = ({"pieces": pieces, "slot": slots}
                 | "GatherPart" >> beam.CoGroupByKey()
                 | "WritePart" >> beam.ParDo(WritePart(outputs, s.reading.splits), plans).with_outputs("lists", main="parts"))
        lists = (parts.lists
                 | "GatherList" >> beam.GroupByKey()
                 | "WriteList" >> beam.Map(write_list, plans, outputs, s.dataset))
        failing = records | "Failing" >> beam.Filter(lambda r: r["status"] not in GOOD)
        failure_plans = beam.pvalue.AsDict(
            self.rows
            | "AllRows" >> beam.Map(lambda row: (FAILURES, row[1]))
            | "FailureRanges" >> Ranges(FAILURES_PER_RANGE))
        failures = (failing
                    | "ToFailureRange" >> beam.Map(failure_of, failure_plans)
                    | "WriteFailureRuns" >> beam.ParDo(runs.WriteRuns(folder, len))
                    | "GatherFailures" >> beam.GroupByKey()
                    | "FailureLines" >> beam.Map(failure_range, folder))
        return (records.pipeline
                | "Run" >> beam.Create([None])
                | "WriteRun" >> beam.Map(write_run, beam.pvalue.AsList(parts.parts), beam.pvalue.AsList(lists),
                                         beam.pvalue.AsList(failures), plans, s, self.label_map_text))


class Ranges(beam.PTransform):
    """(group, order) pairs in; (group, split_plan) out: a count and approximate quantiles per
    group (combiners: a few kB whatever the group's size) cut it into ranges of about `per_range`."""

    def __init__(self, per_range):
        super().__init__()
        self.per_range = per_range

    def expand(self, orders):
        counts = orders | "Count" >> beam.combiners.Count.PerKey()
        quantiles = orders | "Quantiles" >> beam.CombinePerKey(ApproximateQuantilesCombineFn.create(
            num_quantiles=QUANTILES + 1, epsilon=QUANTILE_ERROR, max_num_elements=QUANTILE_ELEMENTS))
        return ({"count": counts, "quantiles": quantiles}
                | "Join" >> beam.CoGroupByKey()
                | "Plan" >> beam.Map(_plans, self.per_range))

