"""The per-clip ledger: one small JSON file per finished clip under {output}/_ledger/.

Written whole as soon as a clip finishes, so a crashed or cancelled run loses no result,
and a re-run knows which clips are complete.
"""
from transforms import storage
from transforms.records import GOOD, UNAVAILABLE, ClipRecord


class Ledger:
    def __init__(self, output):
        self.root = storage.join(output, "_ledger")

    def url(self, key):
        split, class_dir, clip_id = key
        return storage.join(self.root, split, class_dir, f"{clip_id}.json")

    def read(self, key):
        try:
            return parse(storage.read_bytes(self.url(key)))
        except FileNotFoundError:
            return None

    def write(self, record, prev=None):
        """Write the clip's record (a dict or a ClipRecord), unless `prev` (the record the ledger
        holds) says the same but for VOLATILE fields: a re-run that finds a clip as it was rewrites
        nothing (replacing a file costs a local disk several times more than reading it, and an
        object store a PUT)."""
        record = ClipRecord.from_dict(record)
        if prev is not None and same_record(record.to_dict(), prev):
            return
        storage.write_bytes(self.url(record.key), record.to_json())


VOLATILE = ("run_id", "seconds")  # which run made a record, and how long it took


def same_record(a, b):
    """Whether two records say the same of a clip, whichever run made them."""
    return {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}


def dump(record):
    """A record's JSON bytes (a dict or a ClipRecord), its fields in their order."""
    return ClipRecord.from_dict(record).to_json()


def parse(data):
    """The record dict in `data`, or None when it is not a JSON object with a status."""
    record = ClipRecord.from_json(data)
    return record.to_dict() if record is not None else None


def has_outputs(record, expected_outputs, params=None):
    """Whether a good record holds every expected output at its path, made with this run's options
    (`params` by kind; a record that does not say how an output was made is taken as made so)."""
    if record is None or record["status"] not in GOOD:
        return False
    have, made, params = record.get("outputs") or {}, record.get("params") or {}, params or {}
    return all(have.get(kind) == rel and made.get(kind, params.get(kind)) == params.get(kind)
               for kind, rel in expected_outputs.items())


def is_complete(record, expected_outputs, retry_unavailable=False, params=None):
    """Whether a ledger record means this run has nothing left to do for the clip. With no outputs
    expected (file lists alone), the tree is checked again on every run."""
    if record is None:
        return False
    if record["status"] == UNAVAILABLE and record.get("permanent") and not retry_unavailable:
        return True
    return bool(expected_outputs) and has_outputs(record, expected_outputs, params)
