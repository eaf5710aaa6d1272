"""Kinetics annotation CSVs in, validated clips (and invalid-row records) out.

Every official variant is read by header name: 2017 ActivityNet (quoted labels, is_cc),
DeepMind re-releases (`validate`, id-sorted), unlabelled test CSVs, BOM/CRLF files, from a
local path, http(s)://, gs:// or the train/validate/test.csv members of the official tarball.
"""
import csv
import io
import math
import posixpath
import re
import tarfile
import unicodedata

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import storage
from transforms.records import SPLITS, Clip, invalid_record

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
NUMBER = re.compile(r"\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
MAX_SECONDS = 1e7
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validate": "val",
               "validation": "val", "test": "test", "testing": "test"}
TAR_MEMBERS = {"train.csv", "validate.csv", "val.csv", "test.csv"}
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
REQUIRED = ("youtube_id", "time_start", "time_end")


class AnnotationError(Exception):
    """An annotation source cannot be opened or read at all."""


def clean_class_dir(label):
    """MMAction2's convert_label: drop `"`, spaces to `_`; `(`, `)` and `'` stay."""
    return label.replace('"', "").replace(" ", "_")


def class_dir_for(label, mode):
    return label if mode == "raw" else clean_class_dir(label)


def format_clip_id(youtube_id, start, end, trim_format="%06d"):
    return f"{youtube_id}_{trim_format % int(start)}_{trim_format % int(end)}"


def check_trim_format(trim_format):
    """Raise ValueError unless `trim_format` turns seconds into a safe file-name part."""
    try:
        out = trim_format % 17
    except (TypeError, ValueError) as e:
        raise ValueError(f"--trim-format {trim_format!r} cannot format an integer: {e}") from None
    if not re.fullmatch(r"[0-9A-Za-z._-]+", out) or out in (".", ".."):
        raise ValueError(f"--trim-format {trim_format!r} gives {out!r}, not a safe file-name part")


def split_from_name(name):
    base = posixpath.basename(name).lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if word in base:
            return split
    return None


def _unsafe_name(name):
    if name in ("", ".", ".."):
        return f"{name!r} is not a usable directory name"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        return "contains a control character"
    return ""


def _seconds(text, what):
    if not NUMBER.fullmatch(text):
        return None, f"{what} {text!r} is not a non-negative number"
    value = float(text)
    if not math.isfinite(value) or value > MAX_SECONDS:
        return None, f"{what} {text!r} is out of range"
    return value, ""


def open_sources(urls):
    """Yield (name, binary file) for every annotation CSV behind `urls`, in order."""
    for url in urls:
        try:
            f = storage.open_input(url)
        except Exception as e:  # noqa: BLE001 - any opener failure is the same user error
            raise AnnotationError(f"cannot open annotations {url}: {e}") from None
        with f:
            if url.lower().split("?", 1)[0].endswith(TAR_SUFFIXES):
                yield from _tar_members(url, f)
            else:
                yield url, f


def _tar_members(url, f):
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            found = False
            for member in tar:
                if member.isfile() and posixpath.basename(member.name) in TAR_MEMBERS:
                    found = True
                    yield f"{url}:{member.name}", io.BytesIO(tar.extractfile(member).read())
    except tarfile.TarError as e:
        raise AnnotationError(f"cannot read annotation archive {url}: {e}") from None
    if not found:
        raise AnnotationError(f"{url} holds no train.csv, validate.csv or test.csv")


def parse_rows(name, f):
    """Yield (line, {column: value}) or (line, error) for each data row of one CSV."""
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        yield 1, "empty annotation file"
        return
    columns = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        yield 1, f"header {','.join(columns)!r} lacks column(s) {', '.join(missing)}"
        return
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, f"unreadable CSV row: {e}"
            continue
        if not row or all(not v.strip() for v in row):
            continue
        values = [v.strip() for v in row]
        if len(values) != len(columns):
            yield reader.line_num, f"expected {len(columns)} fields, got {len(values)}"
            continue
        yield reader.line_num, dict(zip(columns, values))


class LabelMap:
    def __init__(self, labels):
        self.labels = list(labels)
        self.index = {}
        for i, label in enumerate(self.labels):
            self.index.setdefault(label, i)
            self.index.setdefault(clean_class_dir(label), i)

    def __len__(self):
        return len(self.labels)

    def lookup(self, label):
        return self.index.get(label, self.index.get(clean_class_dir(label)))

    def text(self):
        return "".join(f"{label}\n" for label in self.labels)


class AnnotationReader:
    """Turns annotation rows into Clips, or invalid records saying why not.

    Applies the split and class filters, keeps the first `limit` valid rows per split in
    annotation order, and drops exact duplicates (same split, class dir and clip id).
    """

    def __init__(self, label_map, *, splits=SPLITS, classes=None, limit=None,
                 trim_format="%06d", class_dirs="clean", dataset=""):
        self.label_map = label_map
        self.splits = set(splits)
        self.classes = set(classes) if classes else None
        self.limit = limit
        self.trim_format = trim_format
        self.class_dirs = class_dirs
        self.dataset = dataset

    def read(self, urls):
        taken = {}
        seen = set()
        for index, (name, f) in enumerate(open_sources(urls)):
            for line, row in parse_rows(name, f):
                order = (index, line)
                if isinstance(row, str):
                    yield invalid_record(split_from_name(name), {}, row, name, line, order)
                    continue
                item = self.row(row, name, line, order)
                split = item.split if isinstance(item, Clip) else item["split"]
                if split not in self.splits and split in SPLITS:
                    continue
                if not self._wanted_class(row, item):
                    continue
                if self.limit is not None and taken.get(split, 0) >= self.limit:
                    continue
                if isinstance(item, Clip):
                    if item.key in seen:
                        continue
                    seen.add(item.key)
                    taken[split] = taken.get(split, 0) + 1
                yield item

    def _wanted_class(self, row, item):
        if self.classes is None:
            return True
        label = item.label if isinstance(item, Clip) else row.get("label", "")
        return bool(label) and (label in self.classes or clean_class_dir(label) in self.classes)

    def row(self, row, name, line, order):
        """One CSV row as a Clip, or an invalid record."""
        raw_split = row.get("split")
        split = SPLIT_NAMES.get(raw_split.lower()) if raw_split is not None else split_from_name(name)

        def bad(reason):
            return invalid_record(split, row, reason, name, line, order)

        if split is None:
            if raw_split is None:
                return bad("no split column, and the file name names no split")
            return bad(f"unknown split {raw_split!r}")
        youtube_id = row["youtube_id"]
        if not YOUTUBE_ID.fullmatch(youtube_id):
            return bad(f"youtube_id {youtube_id!r} is not 11 characters of [A-Za-z0-9_-]")
        start, why = _seconds(row["time_start"], "time_start")
        if why:
            return bad(why)
        end, why = _seconds(row["time_end"], "time_end")
        if why:
            return bad(why)
        if not start < end:
            return bad(f"time_start {row['time_start']} is not before time_end {row['time_end']}")
        label = row.get("label", "")
        if label:
            why = _unsafe_name(label)
            if why:
                return bad(f"label {label!r} {why}")
            class_dir = class_dir_for(label, self.class_dirs)
            why = _unsafe_name(class_dir)
            if why:
                return bad(f"label {label!r} gives class dir {class_dir!r}, which {why}")
            index = self.label_map.lookup(label)
            if index is None:
                where = f"the {self.dataset} label map" if self.dataset else "the label map"
                return bad(f"label {label!r} is not in {where}")
        elif split == "test":
            class_dir, index = "test", -1
        else:
            return bad(f"no label; only test rows may be unlabelled (split {split})")
        clip_id = format_clip_id(youtube_id, start, end, self.trim_format)
        return Clip(split, label, index, class_dir, youtube_id, start, end, clip_id, name, line, order)


class ReadAnnotations(beam.PTransform):
    """All annotation sources read in one pass, so `--limit` and de-duplication follow file order.

    Returns a PCollection of Clips with an `invalid` side output of records.
    """

    def __init__(self, urls, reader):
        super().__init__()
        self.urls = list(urls)
        self.reader = reader

    def expand(self, pbegin):
        return (pbegin
                | "Sources" >> beam.Create([self.urls], reshuffle=False)
                | "Parse" >> beam.ParDo(_ReadFn(self.reader)).with_outputs("invalid", main="clips"))


class _ReadFn(beam.DoFn):
    def __init__(self, reader):
        self.reader = reader

    def process(self, urls):
        for item in self.reader.read(urls):
            if isinstance(item, Clip):
                Metrics.counter("annotations", "clips").inc()
                yield item
            else:
                Metrics.counter("clips", f"{item['split']}.invalid").inc()
                yield beam.pvalue.TaggedOutput("invalid", item)
