"""Clips (valid annotation rows) and ClipRecord, the JSON result record every stage adds to.

ClipRecord is the one place records are built and the field names they are built with are
spelled: each event of a stage is one method returning a new record. A record keeps its fields in
the order they were first set (the ledger and the manifests write them so), and an old ledger
record's fields, known or not, are kept as they are.
"""
import dataclasses
import json
import math

OK, EXISTS, INVALID, MISSING = "ok", "exists", "invalid", "missing"
UNAVAILABLE, RATE_LIMITED, NETWORK = "unavailable", "rate_limited", "network"
CORRUPT, SHORT, FAILED = "corrupt", "short", "failed"
STATUSES = (OK, EXISTS, INVALID, MISSING, UNAVAILABLE, RATE_LIMITED, NETWORK, CORRUPT, SHORT, FAILED)
GOOD = (OK, EXISTS)

# Where a record's video came from (the record's `source_kind`): a file under --video-root, a
# member of the CVDF parts, the shared --clip-cache, a YouTube fetch, or the output tree itself.
LOCAL_SOURCE, CVDF_SOURCE, CACHE_SOURCE, YOUTUBE_SOURCE, TREE_SOURCE = "local", "cvdf", "cache", "youtube", "tree"
SOURCE_KINDS = (LOCAL_SOURCE, CVDF_SOURCE, CACHE_SOURCE, YOUTUBE_SOURCE, TREE_SOURCE)

SPLITS = ("train", "val", "test")
UNKNOWN_SPLIT = "unknown"


def number(x):
    """A time as JSON shows it: 417 rather than 417.0."""
    if isinstance(x, float) and math.isfinite(x) and x.is_integer():
        return int(x)
    return x


@dataclasses.dataclass(frozen=True)
class Clip:
    split: str
    label: str
    label_index: int
    class_dir: str
    youtube_id: str
    time_start: float
    time_end: float
    clip_id: str
    annotation: str
    line: int
    order: tuple

    def __reduce__(self):
        """Pickled as its values alone (no field names): Beam's coder pickles a Clip, and every
        clip of a run goes through a shuffle, so this is ~200 bytes a clip rather than ~320."""
        return Clip, tuple(getattr(self, f.name) for f in dataclasses.fields(self))

    @property
    def key(self):
        return (self.split, self.class_dir, self.clip_id)

    @property
    def duration(self):
        return self.time_end - self.time_start

    def record(self, status, reason="", **fields):
        """The clip's record as a dict (ClipRecord.of)."""
        return ClipRecord.of(self, status, reason, **fields).to_dict()

    @classmethod
    def from_record(cls, rec):
        return cls(rec["split"], rec["label"], rec["label_index"], rec["class_dir"], rec["youtube_id"],
                   float(rec["time_start"]), float(rec["time_end"]), rec["clip_id"], rec["annotation"],
                   rec["line"], tuple(rec["order"]))


def invalid_record(split, raw, reason, annotation, line, order):
    """A row that cannot become a clip, kept with its raw fields and why (ClipRecord.invalid)."""
    return ClipRecord.invalid(split, raw, reason, annotation, line, order).to_dict()


def record_key(rec):
    return (rec["split"], rec["class_dir"], rec["clip_id"])


def _mapping(name):
    """A record field that holds a mapping, read as {} when absent or null."""
    return property(lambda self: self._fields.get(name) or {})


class ClipRecord:
    """One clip's result record. Built only by the constructors and events below; read through
    the properties; `to_dict`/`from_dict` and `to_json`/`from_json` give and take its JSON form
    with every field, and the fields' order, as they are."""

    __slots__ = ("_fields",)

    def __init__(self, fields=()):
        self._fields = dict(fields)

    # ---- the JSON form

    def to_dict(self):
        return dict(self._fields)

    @classmethod
    def from_dict(cls, fields):
        return fields if isinstance(fields, cls) else cls(fields)

    def to_json(self):
        return json.dumps(self._fields, sort_keys=False, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data):
        """The record in `data`, or None when it is not a JSON object with a status."""
        try:
            fields = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        return cls(fields) if isinstance(fields, dict) and "status" in fields else None

    def __eq__(self, other):
        return isinstance(other, ClipRecord) and list(self._fields.items()) == list(other._fields.items())

    def __repr__(self):
        return f"ClipRecord({self._fields!r})"

    # ---- reading

    def get(self, name, default=None):
        return self._fields.get(name, default)

    @property
    def status(self):
        return self._fields["status"]

    @property
    def reason(self):
        return self._fields.get("reason", "")

    @property
    def good(self):
        return self.status in GOOD

    @property
    def key(self):
        return record_key(self._fields)

    outputs = _mapping("outputs")  # {kind: relative path}
    params = _mapping("params")  # {kind: the options it was made with}
    sizes = _mapping("sizes")  # {kind: bytes}
    seconds = _mapping("seconds")  # {phase: seconds}

    @property
    def source_kind(self):
        """Which kind of source the record's video came from (SOURCE_KINDS), or "" when it says
        nothing. Records written before the field existed: a CVDF member's `source` names it, and
        an `exists` record without a source found its video in the tree."""
        kind = self._fields.get("source_kind")
        if kind:
            return kind
        source = self._fields.get("source") or ""
        if source.startswith("cvdf:"):
            return CVDF_SOURCE
        if not source and self.status == EXISTS:
            return TREE_SOURCE
        return ""

    @property
    def permanent(self):
        return bool(self._fields.get("permanent"))

    def clip(self):
        return Clip.from_record(self._fields)

    # ---- building

    def _with(self, *updates, **fields):
        merged = dict(self._fields)
        for update in updates:
            merged.update(update)
        merged.update(fields)
        return ClipRecord(merged)

    @classmethod
    def of(cls, clip, status, reason="", **fields):
        """A new record of `clip`: its annotation, status and reason, then `fields` in order."""
        return cls({
            "clip_id": clip.clip_id,
            "split": clip.split,
            "label": clip.label,
            "label_index": clip.label_index,
            "class_dir": clip.class_dir,
            "youtube_id": clip.youtube_id,
            "time_start": number(clip.time_start),
            "time_end": number(clip.time_end),
            "status": status,
            "reason": reason,
            "annotation": clip.annotation,
            "line": clip.line,
            "order": list(clip.order),
            **fields,
        })

    @classmethod
    def invalid(cls, split, raw, reason, annotation, line, order):
        """A row that cannot become a clip, kept with its raw fields and why."""
        return cls({
            "clip_id": f"line-{line}",
            "split": split or UNKNOWN_SPLIT,
            "label": raw.get("label", ""),
            "label_index": None,
            "class_dir": "",
            "youtube_id": raw.get("youtube_id", ""),
            "time_start": raw.get("time_start", ""),
            "time_end": raw.get("time_end", ""),
            "status": INVALID,
            "reason": reason,
            "annotation": annotation,
            "line": line,
            "order": list(order),
            "raw": raw,
        })

    @classmethod
    def fetch_failed(cls, clip, status, reason, attempts, permanent=False):
        """A clip whose source could not be fetched (`permanent`: no retry will help)."""
        return cls.of(clip, status, reason, attempts=attempts, **({"permanent": True} if permanent else {}))

    @classmethod
    def made(cls, clip, kept, source, outputs, sizes, params, seconds, facts, source_kind=""):
        """Outputs made from `source` (of `source_kind`, SOURCE_KINDS): over the earlier record
        `kept` (None: a new record), with the video stage's `facts` (its result dict, less files
        and seconds) last."""
        earlier = kept.to_dict() if kept is not None else {}
        kind = {"source_kind": source_kind} if source_kind else {}
        return cls(earlier)._with(cls.of(clip, OK, "", source=source, **kind, outputs=outputs, sizes=sizes,
                                         params=params, seconds=seconds, **facts)._fields)

    @classmethod
    def in_tree(cls, clip, earlier, reason, outputs, verified, facts, rgb_frames=0, flow_frames=0):
        """What the tree holds for the clip (`exists`): `facts` of its video (probe's), the frames
        and flow pairs counted, over the facts of a good earlier record (its params dropped: this
        run did not make those outputs)."""
        base = dict(earlier._fields) if earlier is not None and earlier.good else {}
        base.pop("params", None)
        facts = dict(facts, **({"rgb_frames": rgb_frames} if rgb_frames else {}),
                     **({"flow_frames": flow_frames} if flow_frames else {}))
        return cls(base)._with(cls.of(clip, EXISTS, reason, outputs=outputs, verified=verified, **facts)._fields)

    def refreshed(self, clip, status):
        """This record under the run's annotation of `clip`: label, index, order and times from it."""
        return self._with(ClipRecord.of(clip, status, self.reason)._fields)

    def with_status(self, status, reason):
        return self._with(status=status, reason=reason)

    def with_fetch(self, result, window, seconds, bytes_fetched, fetched_with=None):
        """The facts of the fetch that gave the clip's source (`fetched_with`: the clip whose
        download it shared), its `seconds` under seconds.fetch."""
        fields = {"format_id": result.format_id, "ytdlp_version": result.ytdlp_version,
                  "attempts": result.attempts, "fetch_window": [window.start, window.end],
                  "fetch_segment": result.segment,
                  "fetch_range": list(result.fetch_range) if result.fetch_range else None,
                  "bytes_fetched": bytes_fetched}
        if fetched_with is not None:
            fields["fetched_with"] = fetched_with
        return self._with(fields, seconds=dict(self.seconds, fetch=seconds))

    def served_by_cache(self):
        """A clip served by its --clip-cache entry: nothing was fetched for it."""
        return self._with(bytes_fetched=0)

    def with_flow(self, rel, pairs, source, size, written, params, seconds):
        """Optical flow made at `rel` from `source`: `pairs` pairs of `size`, `written` bytes."""
        return self._with(status=OK, outputs=dict(self.outputs, flow=rel), flow_frames=pairs, flow_source=source,
                          frame_size=list(size), sizes=dict(self.sizes, flow=written),
                          params=dict(self.params, flow=params), seconds=dict(self.seconds, flow=seconds))

    def finished(self, spent, run_id):
        """The record as the ledger keeps it: `spent` seconds added to seconds.total, and the run."""
        seconds = dict(self.seconds)
        seconds["total"] = round(seconds.get("total", 0) + spent, 3)
        return self._with(seconds=seconds, run_id=run_id)
