"""What each worker process has done in this run, for the launcher's progress line.

Every worker process keeps one small JSON object of counts per run,
{output}/_progress/{run_id}/{host}-{pid}-{random}.json, and rewrites it whole at most every
PUBLISH_EVERY seconds while it works (and at the end of a bundle when it has been longer than
FLUSH_EVERY). A progress line is then one listing of a few hundred objects, whatever the
number of clips: no ledger record and no annotation is read for it.

Counts: `annotated` (clips read from the annotations), `read_done` (1 when the reader has read
them all), `skipped` (clips the ledger held as complete), `recorded` (clips this run finished, any
status), `failed` (those not ok/exists).
"""
import collections
import json
import os
import socket
import threading
import time
import uuid

from transforms import storage
from transforms.records import GOOD

PUBLISH_EVERY = 5.0
FLUSH_EVERY = 1.0
FIELDS = ("annotated", "read_done", "skipped", "recorded", "failed")


def progress_dir(output, run_id=None):
    root = storage.join(output, "_progress")
    return storage.join(root, run_id) if run_id else root


class Tally:
    """One process's counts for one run, published to `url`."""

    def __init__(self, url, clock=time.monotonic):
        self.url = url
        self.clock = clock
        self.counts = collections.Counter()
        self.lock = threading.Lock()
        self.published = None  # clock time of the last write; None: never written
        self.dirty = False

    def add(self, **counts):
        with self.lock:
            self.counts.update(counts)
            self.dirty = True
            if self.published is None or self.clock() - self.published >= PUBLISH_EVERY:
                self._publish()

    def flush(self, every=FLUSH_EVERY):
        """Publish unwritten counts if the last write is at least `every` seconds old."""
        with self.lock:
            if self.dirty and (self.published is None or self.clock() - self.published >= every):
                self._publish()

    def _publish(self):
        data = json.dumps({k: self.counts.get(k, 0) for k in FIELDS}, sort_keys=True).encode()
        try:
            storage.write_bytes(self.url, data)
        except OSError:  # progress must never fail a clip; the next write tries again
            return
        self.published, self.dirty = self.clock(), False


_TALLIES = {}
_LOCK = threading.Lock()


def tally(output, run_id):
    """This process's Tally for the run (one per process: a forked child makes its own)."""
    key = (output, run_id, os.getpid())
    with _LOCK:
        if key not in _TALLIES:
            name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            _TALLIES[key] = Tally(storage.join(progress_dir(output, run_id), name))
        return _TALLIES[key]


def note(output, run_id, record, skipped=False):
    """Count a clip's final record in this process's tally (of the run `run_id` writing to `output`)."""
    if skipped:
        tally(output, run_id).add(skipped=1)
    else:
        tally(output, run_id).add(recorded=1, failed=int(record["status"] not in GOOD))


def flush(output, run_id):
    tally(output, run_id).flush()


def read_all(output, run_id):
    """The counts of every process of the run, summed: one listing and one small read per process."""
    folder = progress_dir(output, run_id)
    fs, path = storage.filesystem(folder)
    fs.invalidate_cache(path)  # object-store clients cache listings
    total = collections.Counter()
    for data in storage.read_bytes_many(storage.find_files(folder)).values():
        try:
            counts = json.loads(data)
        except ValueError:
            continue
        if isinstance(counts, dict):
            total.update({k: int(counts.get(k) or 0) for k in FIELDS})
    return total


def remove(output, run_id=None):
    """Remove the run's tallies (all runs' when `run_id` is None: left by killed runs); then the
    _progress folder if no other run's tallies are in it."""
    storage.remove_tree(progress_dir(output, run_id), prune_parent=bool(run_id))
