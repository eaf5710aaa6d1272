"""Kinetics annotation CSVs in, validated clips (and invalid-row records) out.

Every official variant is read by header name: 2017 ActivityNet (quoted labels, is_cc),
DeepMind re-releases (`validate`, id-sorted), unlabelled test CSVs, BOM/CRLF files, from a
local path, http(s)://, gs:// or the train/validate/test.csv members of the official tarball.
"""
import collections
import csv
import dataclasses
import hashlib
import io
import math
import posixpath
import re
import socket
import tarfile
import typing
import unicodedata
import zlib

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import runs, storage, tally
from transforms.optionfields import Refused, as_list, option
from transforms.records import SPLITS, Clip, invalid_record, number

YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
SAFE_PART = re.compile(r"[0-9A-Za-z._-]+")
MAX_SECONDS = 1e7
TRIM_FORMAT_PROBES = (0, 17, 417.5)
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "validate": "val",
               "validation": "val", "test": "test", "testing": "test"}
TAR_MEMBERS = {"train.csv", "validate.csv", "val.csv", "test.csv"}
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
REQUIRED = ("youtube_id", "time_start", "time_end")
HEADER_BYTES = 1 << 16
MAX_LINE = 1 << 16  # bytes a CSV line may hold (a Kinetics row has ~60); under csv's field limit
CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
ROOT_CAUSES = ((ConnectionRefusedError, "connection refused"), (socket.gaierror, "name resolution failed"),
               (TimeoutError, "timed out"))
UNSAID = ((FileNotFoundError, "not found"), (PermissionError, "permission denied"))


class AnnotationError(Exception):
    """An annotation source cannot be opened or read at all."""


def describe(e):
    """One line saying why `e` happened: its message and its causes' (__cause__/__context__),
    each said once, led by a plain phrase for a known root cause (connection refused, ...)."""
    chain = []
    while e is not None and e not in chain and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    parts = []
    for text in filter(None, map(_message, chain)):
        if not any(text in p for p in parts):
            parts = [p for p in parts if p not in text] + [text]
    phrase = next((p for cls, p in ROOT_CAUSES if isinstance(chain[-1], cls)), "")
    if phrase and not any(phrase in p.lower() for p in parts):
        parts.insert(0, phrase)
    if not parts:
        parts = [next((p for cls, p in UNSAID if isinstance(chain[0], cls)), type(chain[0]).__name__)]
    return ": ".join(parts)[:300]


def _message(e):
    status = getattr(e, "status", None)
    if isinstance(status, int) and getattr(e, "message", None):
        return f"{status} {e.message}"
    text = str(e)
    if isinstance(e, OSError) and e.strerror and text.startswith("[Errno"):
        text = str(e.strerror)
    lines = text.strip().splitlines()
    text = lines[0].strip().rstrip(":") if lines else ""
    return "" if " " not in text and ("://" in text or "/" in text) else text


def clean_class_dir(label):
    """MMAction2's convert_label: drop `"`, spaces to `_`; `(`, `)` and `'` stay."""
    return label.replace('"', "").replace(" ", "_")


def class_dir_for(label, mode):
    return label if mode == "raw" else clean_class_dir(label)


def format_time(seconds, trim_format="%06d"):
    """A time as clip ids show it: `trim_format` of the value (an int when whole, as the crawler's
    CSV values were), so %06d truncates and %.1f keeps tenths."""
    return trim_format % number(seconds)


def _unsafe_part(text):
    return not SAFE_PART.fullmatch(text) or text in (".", "..")


def check_trim_format(trim_format):
    """Raise ValueError unless `trim_format` turns seconds into a safe file-name part."""
    for seconds in TRIM_FORMAT_PROBES:
        try:
            out = format_time(seconds, trim_format)
        except (TypeError, ValueError) as e:
            raise ValueError(f"--trim-format {trim_format!r} cannot format {seconds}: {e}") from None
        if _unsafe_part(out):
            raise ValueError(f"--trim-format {trim_format!r} gives {out!r}, not a safe file-name part")


def split_from_name(name):
    base = posixpath.basename(name).lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):
        if word in base:
            return split
    return None


def short_name(name):
    """An annotation's name for messages: 'kinetics_val.csv', 'kinetics400.tar.gz:k400/train.csv'."""
    url, _, member = name.rpartition(":")
    if url.lower().endswith(TAR_SUFFIXES):
        return f"{posixpath.basename(url)}:{member}"
    return posixpath.basename(name.split("?", 1)[0])


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
    if value < 0:
        return None, f"{what} {text!r} is not a non-negative number"
    if not math.isfinite(value) or value > MAX_SECONDS:
        return None, f"{what} {text!r} is out of range"
    return abs(value), ""


def open_sources(urls):
    """Yield (name, binary file) for every annotation CSV behind `urls`, in order."""
    for url in urls:
        try:
            f = storage.open_input(url)
        except Exception as e:  # noqa: BLE001 - any opener failure is the same user error
            raise AnnotationError(f"cannot read annotations {url}: {describe(e)}") from None
        with f:
            if url.lower().split("?", 1)[0].endswith(TAR_SUFFIXES):
                yield from _tar_members(url, f)
            else:
                yield url, f


def _tar_members(url, f):
    found = False
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and posixpath.basename(member.name) in TAR_MEMBERS:
                    found = True
                    yield f"{url}:{member.name}", io.BytesIO(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise AnnotationError(f"cannot read annotation archive {url}: {describe(e)}") from None
    if not found:
        raise AnnotationError(f"{url} holds no train.csv, validate.csv or test.csv")


def read_header(f):
    """The first row of one CSV, read only as far as it goes (preflight: is the source readable?)."""
    return f.read(HEADER_BYTES).split(b"\n", 1)[0]


def _split_field(columns, values):
    """The split a row with the wrong field count names, if its split field can be found
    (counting from the left or from the right) and is a split name."""
    if "split" not in columns:
        return None
    i = columns.index("split")
    for j in (i, i + len(values) - len(columns)):
        if 0 <= j < len(values) and values[j].lower() in SPLIT_NAMES:
            return values[j]
    return None


def malformed_fields(columns, values):
    """A wrong-length row's raw values: every field, the columns a short row matches from the
    left, and its split field where it can be found."""
    raw = dict(zip(columns, values)) if len(values) < len(columns) else {}
    raw.pop("split", None)
    split = _split_field(columns, values)
    if split is not None:
        raw["split"] = split
    return {**raw, "fields": values}


def _line_end(buf, pos, eof):
    """(where the line from `pos` ends, where the next starts) in buf, or None if not in buf yet
    (a \r that ends buf may be the first half of a \r\n)."""
    n = buf.find(b"\n", pos)
    r = buf.find(b"\r", pos, n if n >= 0 else len(buf))
    if r < 0:
        return (n, n + 1) if n >= 0 else None
    if r + 1 < len(buf):
        return r, r + 2 if buf[r + 1] == 10 else r + 1
    return (r, r + 1) if eof else None


class Line(typing.NamedTuple):
    """One line of a CSV file: its bytes without the line end (None when longer than the limit)."""
    number: int
    offset: int  # in the file
    data: typing.Optional[bytes]
    length: int
    end: bytes  # b"\n", b"\r\n", b"\r", or b"" at the end of the file


def physical_lines(f, limit=MAX_LINE):
    """Yield a Line for each line of the binary file `f` (a line ends at \\n, \\r\\n or a lone \\r,
    as csv reads them); a line longer than `limit` bytes is read through once and not kept. A
    UTF-8 BOM at the start is dropped. Memory holds at most `limit` + CHUNK bytes, whatever the file
    holds."""
    buf, pos, offset, number = b"", 0, 0, 0  # offset: the file offset of buf[pos]
    skipped = None  # [offset, length so far] of an over-long line being read through
    eof, first = False, True
    while True:
        end = _line_end(buf, pos, eof)
        if end:
            stop, after = end
            number += 1
            if skipped:
                yield Line(number, skipped[0], None, skipped[1] + stop - pos, buf[stop:after])
                skipped = None
            else:
                yield Line(number, offset, buf[pos:stop] if stop - pos <= limit else None, stop - pos,
                           buf[stop:after])
            offset += after - pos
            pos = after
            continue
        rest = buf[pos:]
        if eof:
            if skipped or rest:
                number += 1
                yield Line(number, skipped[0], None, skipped[1] + len(rest), b"") if skipped else \
                    Line(number, offset, rest if len(rest) <= limit else None, len(rest), b"")
            return
        keep = rest[-1:] if rest.endswith(b"\r") else b""
        if skipped or len(rest) - len(keep) > limit:
            skipped = skipped or [offset, 0]
            skipped[1] += len(rest) - len(keep)
            offset += len(rest) - len(keep)
            rest = keep
        chunk = f.read(CHUNK)
        eof = not chunk
        if first:
            first = False
            while chunk and len(chunk) < len(BOM) and BOM.startswith(chunk):
                more = f.read(CHUNK)
                if not more:
                    break
                chunk += more
            if chunk.startswith(BOM):
                chunk, offset = chunk[len(BOM):], len(BOM)
        buf, pos = rest + chunk, 0


def _is_bad(ch):
    return "\udc80" <= ch <= "\udcff"


def _shown(value):
    """A field as text: its bytes that are not UTF-8 text as \\xNN, NULs as \\x00."""
    return "".join(f"\\x{ord(ch) - 0xdc00:02x}" if _is_bad(ch) else "\\x00" if ch == "\x00" else ch
                   for ch in value)


def _decode(line):
    """(the line's text, its undecodable bytes as U+DC80-U+DCFF; "" or why it is not text, with
    "{field}" where the bad field is to be named)."""
    if line.data is None:
        return "", f"line is {line.length:,} bytes long, more than the {MAX_LINE:,} a row may have"
    if line.number == 1 and line.data.startswith(UTF16_BOMS):
        return "", "the file is UTF-16; save it as UTF-8"
    try:
        text = line.data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = f"byte {e.start + 1} of the line, offset {line.offset + e.start} of the file"
        return (line.data.decode("utf-8", "surrogateescape"),
                f"not UTF-8 (byte 0x{line.data[e.start]:02x} at {where}{{field}}); save the file as UTF-8")
    if "\x00" in text:
        nul = line.data.find(b"\x00")
        return text, f"contains a NUL byte (byte {nul + 1} of the line, offset {line.offset + nul} of the file{{field}})"
    return text, ""


def _fields(text):
    """(the fields of one record's text, "" or why csv cannot read it)."""
    try:
        return next(csv.reader([text]), []), ""
    except csv.Error as e:
        return [], f"unreadable CSV row: {e}"


_FIELD = r'(?:"(?:[^"]|"")*"(?!")[^,]*|[^,"][^,]*|)'  # as csv's excel dialect reads a field (not strict)
CLOSED = re.compile(rf"{_FIELD}(?:,{_FIELD})*", re.S)  # text that leaves no quote open
CLOSES = re.compile(rf'(?:[^"]|"")*"(?!")[^,]*(?:,{_FIELD})*', re.S)  # the same, from inside a quoted field


def _record(first, text, lines, width):
    """(lines, text) of the record that starts at `first`: one line, or, when it leaves a quote
    open, the lines up to the one that closes it, if together they are at most MAX_LINE bytes of
    text and `width` fields in csv's strict reading (a quote that only closes at the start of a
    later row's quoted field is not); else `first` alone. Lines read and not used go back on `lines`."""
    if '"' not in text or CLOSED.fullmatch(text):
        return [first], text
    taken, parts, size = [first], [text], first.length
    while True:
        line = lines.next()
        if line is None:
            break
        more, why = _decode(line)
        size += len(taken[-1].end) + line.length
        if why or size > MAX_LINE:
            lines.back(line)
            break
        taken.append(line)
        parts += [taken[-2].end.decode(), more]
        if CLOSES.fullmatch(more):
            joined = "".join(parts)
            if _strict_width(joined) == width:
                return taken, joined
            break
    for line in reversed(taken[1:]):
        lines.back(line)
    return [first], text


def _strict_width(text):
    """The number of fields of a record that csv reads in strict mode (each closing quote followed by
    a comma or the end, as a real multi-line field's is), or None."""
    try:
        return len(next(csv.reader([text], strict=True), []))
    except csv.Error:
        return None


class _Lines:
    """An iterator of Lines that can be given back (to read them again)."""

    def __init__(self, lines):
        self.lines, self.given = lines, []

    def next(self):
        return self.given.pop() if self.given else next(self.lines, None)

    def back(self, line):
        self.given.append(line)


def _not_text(columns, values, why):
    """(raw values, reason) of a row holding bytes that are not text or NULs: its fields by column
    (those that are not text only under "fields", every field there with bad bytes as \\xNN), and
    the reason naming the first bad field."""
    matched = len(values) == len(columns)
    raw = dict(zip(columns, values)) if matched else malformed_fields(columns, values)
    if any(_is_bad(ch) for v in values for ch in v):
        raw = {k: v for k, v in raw.items() if k != "fields" and not any(map(_is_bad, v))}
        raw["fields"] = [_shown(v) for v in values]
    at = next((i for i, v in enumerate(values) if "\x00" in v or any(map(_is_bad, v))), None)
    field = ""
    if at is not None:
        field = f", in {columns[at] if matched else f'field {at + 1}'} '{_shown(values[at])}'"
    return raw, why.replace("{field}", field)


def parse_rows(f):
    """Yield (line, {column: value}, "") for each data row of one CSV, or (line, raw values, why)
    for a row (or header) that cannot be read as one. A row is one line, or the lines a quoted
    field spans; a line that is not UTF-8, holds a NUL byte, is longer than MAX_LINE or leaves a
    quote open that no later line closes into a row is one invalid row, and the lines after it
    are read as usual."""
    lines = _Lines(physical_lines(f))
    first = lines.next()
    if first is None:
        yield 1, {}, "empty annotation file"
        return
    text, why = _decode(first)
    header, error = _fields(text) if not why else ([], "")
    if why or error:
        yield 1, {}, f"unreadable header: {(why or error).replace('{field}', '')}"
        return
    columns = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        yield 1, {"fields": header}, f"header {','.join(columns)!r} lacks column(s) {', '.join(missing)}"
        return
    while True:
        line = lines.next()
        if line is None:
            return
        text, why = _decode(line)
        if line.data is None:
            yield line.number, {}, why
            continue
        if not why:
            taken, text = _record(line, text, lines, len(columns))
            line = taken[-1]  # a row is numbered by its last line, as csv counts them
        row, error = _fields(text)
        if error:
            yield line.number, {}, error
            continue
        if not row or all(not v.strip() for v in row):
            continue
        values = [v.strip() for v in row]
        if why:
            yield (line.number, *_not_text(columns, values, why))
        elif len(values) != len(columns):
            unclosed = "" if CLOSED.fullmatch(text) else " (a quote is not closed)"
            yield (line.number, malformed_fields(columns, values),
                   f"expected {len(columns)} fields, got {len(values)}{unclosed}")
        else:
            yield line.number, dict(zip(columns, values)), ""


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


def label_lines(lines, where):
    """Labels, one a line: trailing blank lines are ignored, an interior one is refused (a label's
    index is its line number)."""
    labels = [str(label).strip() for label in lines]
    while labels and not labels[-1]:
        labels.pop()
    blank = next((n for n, label in enumerate(labels, 1) if not label), None)
    if blank:
        raise Refused(f"label map {where}: line {blank} is blank (a label's index is its line number)")
    return tuple(labels)


def _annotation_urls(value, context):
    """--annotations: paths or URLs, a name of the dataset's `annotation_sets` standing for its list."""
    sets = context["annotation_sets"]
    urls = []
    for item in as_list(value) or []:
        urls.extend(as_list(sets[item]) if item in sets else [item])
    if not urls:
        raise Refused("no annotations: pass --annotations PATH_OR_URL")
    return tuple(storage.normalize(url) for url in urls)


def _splits(value, _):
    splits = []
    for split in as_list(value):
        split = {"validate": "val"}.get(split, split)
        if split not in SPLITS:
            raise Refused(f"--splits: unknown split {split!r} (train, val, test)")
        splits.append(split)
    return tuple(splits)


def _trim_format(value, _):
    try:
        check_trim_format(value)
    except ValueError as e:
        raise Refused(str(e)) from None
    return value


def _labels(value, context):
    """The labels of --label-map (a path or URL, read) or of the dataset config (its lines)."""
    dataset = context["dataset"]
    if value is None:
        raise Refused(f"dataset {dataset!r} has no label map: pass --label-map FILE")
    where = value if isinstance(value, str) else f"of {dataset}"
    if isinstance(value, str):
        try:
            value = storage.read_bytes(value).decode("utf-8").splitlines()
        except (OSError, ValueError) as e:
            raise Refused(f"cannot read label map {value}: {e}") from None
    return label_lines(value, where)


def _classes(value, context):
    classes = as_list(value)
    label_map = LabelMap(context["labels"])
    unknown = [c for c in classes if label_map.lookup(c) is None]
    if unknown:
        raise Refused(f"--classes: not in the {context['dataset']} label map: {', '.join(unknown)}")
    return tuple(classes)


@dataclasses.dataclass(frozen=True)
class AnnotationOptions:
    """The annotations group: which annotation rows become clips, and how the clips are named.
    Built with the dataset's name (`dataset`) and its config's `annotation_sets` as context."""
    annotations: tuple = option(None, "annotation CSVs or tarballs (path, http(s)://, gs://), or the name of a set "
                                      "in the dataset config (deepmind, mmaction2, cvdf); repeatable",
                                kind=list, convert=_annotation_urls)
    splits: tuple = option(list(SPLITS), "splits to process, comma separated (train,val,test; validate = val)",
                           convert=_splits)
    limit: int = option(None, "only the first N valid rows per split, in annotation order, after --classes",
                        refuse=(lambda v: v is not None and v < 0, "--limit must be >= 0"))
    trim_format: str = option("%06d", "printf format of the start/end seconds in clip ids", convert=_trim_format)
    class_dirs: str = option("clean", "clean: spaces to _ and quotes dropped (MMAction2); raw: the label as the "
                                      "crawler wrote it", choices=("clean", "raw"))
    labels: tuple = option(None, "label map file (one label per line); default: the dataset's own",
                           name="label_map", kind=str, passes=(list,), convert=_labels)
    classes: tuple = option([], "only these classes (raw labels or class-dir names), comma separated",
                            convert=_classes)

    @property
    def label_map(self):
        return LabelMap(self.labels)


def _split_of(row, name):
    raw_split = row.get("split")
    return SPLIT_NAMES.get(raw_split.lower()) if raw_split is not None else split_from_name(name)


def invalid_row(split, raw, why, name, line, order):
    """An invalid record whose reason says where the row is: 'kinetics_val.csv line 7: ...'."""
    return invalid_record(split, raw, f"{short_name(name)} line {line}: {why}", name, line, order)


def _digest64(*parts):
    return int.from_bytes(hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest(), "big")


First = collections.namedtuple("First", "line annotation")


class Seen:
    """The clips read so far, for de-duplication, in about 120 bytes a clip whatever the row: a
    64-bit digest of the clip's key maps to one int packing a 64-bit digest of what makes two rows
    the same clip (label and times), the row's line and its source's index. (Two keys share a
    digest once in ~10^8 runs of 650k clips.)"""

    def __init__(self):
        self.by_key = {}
        self.names = {}

    def add(self, clip, index):
        """None for the first clip with its key; else (whether it is the same clip, First)."""
        same = _digest64(clip.label, clip.youtube_id, clip.time_start, clip.time_end)
        packed = self.by_key.setdefault(_digest64(*clip.key), same | clip.line << 64 | index << 104)
        self.names.setdefault(index, clip.annotation)
        if packed >> 64 == clip.line | index << 40:
            return None
        first_index = packed >> 104
        return packed & (1 << 64) - 1 == same, First((packed >> 64) & (1 << 40) - 1, self.names[first_index])


def duplicate(clip, first, row):
    """The invalid record of a row whose clip id (split, class dir) an earlier, different row has."""
    why = f"duplicates the clip id {clip.clip_id} of line {first.line} of {short_name(first.annotation)}"
    return invalid_row(clip.split, row, why, clip.annotation, clip.line, clip.order)


class AnnotationReader:
    """Turns annotation rows into Clips, or invalid records saying why not.

    Applies the split and class filters to every row, valid or not; keeps the first `limit`
    valid rows per split in annotation order; processes an exact duplicate (same split, class
    dir and clip id, same label and times) once, and makes a row that only shares the clip id
    of an earlier one invalid.
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
        """Clips and invalid records of every source, in order."""
        taken = {}
        seen = Seen()
        for index, (name, f) in enumerate(open_sources(urls)):
            for line, row, error in parse_rows(f):
                order = (index, line)
                if error:
                    item = invalid_row(_split_of(row, name), row, error, name, line, order)
                else:
                    item = self.row(row, name, line, order)
                split = item.split if isinstance(item, Clip) else item["split"]
                if not self._wanted(item, split, taken):
                    continue
                if isinstance(item, Clip):
                    earlier = seen.add(item, index)
                    if earlier:
                        same, first = earlier
                        if same:
                            continue
                        item = duplicate(item, first, row)
                    else:
                        taken[split] = taken.get(split, 0) + 1
                yield item

    def _wanted(self, item, split, taken):
        if split not in self.splits and split in SPLITS:
            return False
        if not self._wanted_class(item):
            return False
        return self.limit is None or taken.get(split, 0) < self.limit

    def _wanted_class(self, item):
        """A clip of the named classes; an invalid row whose label is one, or whose label is unknown."""
        if self.classes is None:
            return True
        label = item.label if isinstance(item, Clip) else item["label"]
        if not label:
            return not isinstance(item, Clip)
        return label in self.classes or clean_class_dir(label) in self.classes

    def row(self, row, name, line, order):
        """One CSV row as a Clip, or an invalid record."""
        raw_split = row.get("split")
        split = _split_of(row, name)

        def bad(reason):
            return invalid_row(split, row, reason, name, line, order)

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
        try:
            times = [format_time(t, self.trim_format) for t in (start, end)]
        except (TypeError, ValueError) as e:
            return bad(f"--trim-format {self.trim_format!r} cannot format the times: {e}")
        unsafe = [t for t in times if _unsafe_part(t)]
        if unsafe:
            return bad(f"--trim-format {self.trim_format!r} gives {unsafe[0]!r}, not a safe file-name part")
        clip_id = f"{youtube_id}_{times[0]}_{times[1]}"
        return Clip(split, label, index, class_dir, youtube_id, start, end, clip_id, name, line, order)


class ReadAnnotations(beam.PTransform):
    """All annotation sources read in one pass, so `--limit` and de-duplication follow file order.

    The rows (a Clip for each valid row, the `invalid` record of each other, in one output, so that
    a runner which materializes a Flatten never has to join them again) are spilled, as they are
    read, to files under the run's scratch folder {output}/_runs/{run_id}/ (transforms/runs.py:
    Spill). Two outputs: `pieces`, tiny (file, offset, length) triples of those files, for a
    Reshuffle to spread over the workers and `ReadRows` to turn back into the rows there (so no
    row crosses a shuffle, and no worker is handed more of them than its pieces'); and `rows`,
    every row as it is read, for what is computed from all of them in the reader's own step
    (build.rows_of: the compact (split, order) pairs the outputs' ranges come from, known before
    any clip is processed). `run` is (output, run_id); the clips read are counted in the
    worker's progress tally.
    """

    def __init__(self, urls, reader, run):
        super().__init__()
        self.urls = list(urls)
        self.reader = reader
        self.run = run

    def expand(self, pbegin):
        return (pbegin
                | "Sources" >> beam.Create([self.urls], reshuffle=False)
                | "Parse" >> beam.ParDo(_ReadFn(self.reader, self.run)).with_outputs("rows", main="pieces"))


class ReadRows(beam.PTransform):
    """The rows of ReadAnnotations' pieces, each piece's in annotation order."""

    def expand(self, pieces):
        return pieces | "Rows" >> beam.FlatMap(runs.read_spilled)


class _ReadFn(beam.DoFn):
    def __init__(self, reader, run):
        self.reader = reader
        self.run = run

    def process(self, urls):
        counts = tally.tally(*self.run)
        spill = runs.Spill(runs.runs_dir(*self.run))
        for item in self.reader.read(urls):
            if isinstance(item, Clip):
                Metrics.counter("annotations", "clips").inc()
                counts.add(annotated=1)
            else:
                Metrics.counter("clips", f"{item['split']}.invalid").inc()
            spill.add(item)
            yield beam.pvalue.TaggedOutput("rows", item)
        pieces = list(spill.pieces())  # every file written before the reader says it is done
        counts.add(read_done=1)
        counts.flush(every=0)
        yield from pieces
