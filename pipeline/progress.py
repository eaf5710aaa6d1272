"""A launcher thread that reads the ledger and prints a progress line at most every 10 s.

The runner's own metrics arrive only at the end on the local runners; the ledger is
written as each clip finishes, on every runner, so it is what progress is read from.
"""
import sys
import threading
import time

from transforms.ledger import Ledger, has_outputs
from transforms.records import GOOD


def _duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def next_wait(interval, took):
    """Seconds to the next line: `interval`, or longer when reading the ledger took long (a large
    ledger on an object store), so that listing it never takes more than a quarter of the time."""
    return max(interval, 3 * took)


class Progress(threading.Thread):
    """`clips` is a callable giving this run's clips (read in the thread, off the launch path);
    `expected` maps a clip to the outputs its steps must leave, `complete(record, clip)` says
    whether an earlier record leaves the clip nothing to do."""

    def __init__(self, settings, clips, expected, complete, out=sys.stderr):
        super().__init__(name="kinetics-prep-progress", daemon=True)
        self.settings = settings
        self.clips = clips
        self.expected = expected
        self.complete = complete
        self.out = out
        self.halt = threading.Event()
        self.started = time.monotonic()
        self.ledger = Ledger(settings.output)
        self.wanted, self.seen, self.skipped, self.this_run = {}, {}, set(), {}

    def stop(self):
        self.halt.set()
        self.join(timeout=30)

    def run(self):
        try:
            self.prime()
            wait = self.settings.progress_interval
            while not self.halt.wait(wait):
                started = time.monotonic()
                print(self.line(), file=self.out, flush=True)
                wait = next_wait(self.settings.progress_interval, time.monotonic() - started)
        except Exception as e:  # noqa: BLE001 - progress must never break the run
            print(f"[progress] stopped: {type(e).__name__}: {e}", file=self.out, flush=True)

    def prime(self):
        """Learn this run's clips and which of them the ledger already holds as complete."""
        self.wanted = {self.ledger.url(c.key): c for c in self.clips()}
        self._absorb(baseline=True)

    def _absorb(self, baseline=False):
        listing = {u: s for u, s in self.ledger.listing().items() if u in self.wanted}
        changed = [u for u, s in listing.items() if self.seen.get(u) != s]
        for url, rec in self.ledger.read_many(changed).items():
            if rec.get("run_id") == self.settings.run_id:
                if rec["status"] not in GOOD or has_outputs(rec, self.expected(self.wanted[url])):
                    self.this_run[url] = rec["status"]
                    self.skipped.discard(url)
            elif baseline and self.complete(rec, self.wanted[url]):
                self.skipped.add(url)
        self.seen.update(listing)

    def counts(self):
        self._absorb()
        total = len(self.wanted)
        recorded = len(self.this_run)
        failed = sum(1 for s in self.this_run.values() if s not in GOOD)
        elapsed = time.monotonic() - self.started
        rate = recorded / elapsed if elapsed > 0 else 0.0
        return {"total": total, "done": len(self.skipped) + recorded, "skipped": len(self.skipped),
                "failed": failed, "rate": rate}

    def line(self):
        c = self.counts()
        left = c["total"] - c["done"]
        eta = _duration(left / c["rate"]) if c["rate"] > 0 and left > 0 else "-"
        return (f"[progress] {c['done']:,}/{c['total']:,} clips done ({c['skipped']:,} already complete), "
                f"{c['failed']:,} failed, {c['rate']:.2f} clips/s, ETA {eta}")
