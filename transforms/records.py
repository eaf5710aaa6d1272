"""Clips (valid annotation rows) and the JSON result records every stage adds to."""
import dataclasses
import math

OK, EXISTS, INVALID, MISSING = "ok", "exists", "invalid", "missing"
UNAVAILABLE, RATE_LIMITED, NETWORK = "unavailable", "rate_limited", "network"
CORRUPT, SHORT, FAILED = "corrupt", "short", "failed"
STATUSES = (OK, EXISTS, INVALID, MISSING, UNAVAILABLE, RATE_LIMITED, NETWORK, CORRUPT, SHORT, FAILED)
GOOD = (OK, EXISTS)

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
        rec = {
            "clip_id": self.clip_id,
            "split": self.split,
            "label": self.label,
            "label_index": self.label_index,
            "class_dir": self.class_dir,
            "youtube_id": self.youtube_id,
            "time_start": number(self.time_start),
            "time_end": number(self.time_end),
            "status": status,
            "reason": reason,
            "annotation": self.annotation,
            "line": self.line,
            "order": list(self.order),
        }
        rec.update(fields)
        return rec

    @classmethod
    def from_record(cls, rec):
        return cls(rec["split"], rec["label"], rec["label_index"], rec["class_dir"], rec["youtube_id"],
                   float(rec["time_start"]), float(rec["time_end"]), rec["clip_id"], rec["annotation"],
                   rec["line"], tuple(rec["order"]))


def invalid_record(split, raw, reason, annotation, line, order):
    """A row that cannot become a clip, kept with its raw fields and why."""
    return {
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
    }


def record_key(rec):
    return (rec["split"], rec["class_dir"], rec["clip_id"])
