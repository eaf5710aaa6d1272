"""A launcher thread that prints a progress line at most every 10 s.

The runner's own metrics arrive only at the end on the local runners, so workers publish
their counts themselves (transforms/tally.py: one small object per worker process under
{output}/_progress/{run_id}/). A line costs one listing of those objects and a read of each:
the launcher holds counts, never clips, and reads no ledger record and no annotation.
"""
import sys
import threading
import time

from transforms import tally


def _duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def next_wait(interval, took):
    """Seconds to the next line: `interval`, or longer when reading the counts took long (a slow
    object store), so that reading them never takes more than a quarter of the time."""
    return max(interval, 3 * took)


def counts(totals, elapsed):
    """The progress figures from the workers' summed tallies after `elapsed` seconds."""
    recorded = totals.get("recorded", 0)
    skipped = totals.get("skipped", 0)
    rate = recorded / elapsed if elapsed > 0 else 0.0
    return {"total": totals.get("annotated", 0), "reading": not totals.get("read_done"),
            "done": skipped + recorded, "skipped": skipped, "failed": totals.get("failed", 0), "rate": rate}


def line(c):
    """[progress] done/total clips done (N already complete), F failed, R clips/s, ETA T; while the
    annotations are still being read, the total so far is shown with a '+'."""
    total = max(c["total"], c["done"])
    left = total - c["done"]
    eta = _duration(left / c["rate"]) if c["rate"] > 0 and left > 0 and not c["reading"] else "-"
    shown = f"{total:,}+" if c["reading"] else f"{total:,}"
    return (f"[progress] {c['done']:,}/{shown} clips done ({c['skipped']:,} already complete), "
            f"{c['failed']:,} failed, {c['rate']:.2f} clips/s, ETA {eta}")


class Progress(threading.Thread):
    def __init__(self, settings, out=sys.stderr, clock=time.monotonic):
        super().__init__(name="kinetics-prep-progress", daemon=True)
        self.settings = settings
        self.out = out
        self.clock = clock
        self.halt = threading.Event()
        self.started = clock()

    def stop(self):
        self.halt.set()
        self.join(timeout=30)

    def run(self):
        try:
            wait = self.settings.progress_interval
            while not self.halt.wait(wait):
                started = self.clock()
                print(self.line(), file=self.out, flush=True)
                wait = next_wait(self.settings.progress_interval, self.clock() - started)
        except Exception as e:  # noqa: BLE001 - progress must never break the run
            print(f"[progress] stopped: {type(e).__name__}: {e}", file=self.out, flush=True)

    def counts(self):
        totals = tally.read_all(self.settings.outputs.output, self.settings.run_id)
        return counts(totals, self.clock() - self.started)

    def line(self):
        return line(self.counts())
