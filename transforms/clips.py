"""The per-clip stage: skip what the ledger says is done, do the clip's steps, record the result."""
import time

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import storage
from transforms.layout import Layout
from transforms.ledger import Ledger, is_complete
from transforms.records import EXISTS, FAILED, MISSING, OK
from transforms.video import VideoError, probe


def layout_for(settings):
    return Layout(settings.output, flat=settings.flat)


def count_frames(layout, clip):
    """(img_ count, flow pair count, note) in the clip's rawframes dir."""
    names = storage.listdir_names(layout.url(layout.rawframes(clip)))
    img = sum(n.startswith("img_") for n in names)
    fx = sum(n.startswith("flow_x_") for n in names)
    fy = sum(n.startswith("flow_y_") for n in names)
    if fx != fy:
        return img, 0, f"flow ignored: {fx} flow_x_ but {fy} flow_y_ files"
    return img, fx, ""


def existing_outputs(clip, settings):
    """Record what an earlier run or tree already holds for the clip: `exists`, else `missing`."""
    layout = layout_for(settings)
    rel = layout.video(clip)
    outputs, fields, notes = {}, {}, []
    try:
        fields = probe(layout.url(rel), clip.duration, full=settings.verify == "full",
                       min_ratio=settings.min_duration_ratio)
        outputs["video"] = rel
    except VideoError as e:
        notes.append(f"{rel}: {e.reason}")
    img, flow, note = count_frames(layout, clip)
    if note:
        notes.append(note)
    if img:
        outputs["rgb"] = layout.rawframes(clip)
        fields["rgb_frames"] = img
    if flow:
        outputs["flow"] = layout.rawframes(clip)
        fields["flow_frames"] = flow
    if not outputs:
        return clip.record(MISSING, "; ".join(notes))
    return clip.record(EXISTS, "", outputs=outputs, **fields)


def expected_outputs(clip, settings):
    """{output kind: relative path} that this run's steps must leave for the clip."""
    return {}


def process_clip(clip, settings):
    """Run the clip's steps; a plain function returning the clip's record."""
    return existing_outputs(clip, settings)


def count(record):
    Metrics.counter("clips", f"{record['split']}.{record['status']}").inc()


class ProcessClips(beam.DoFn):
    """Clips in, records out; every record is in the ledger before it is emitted."""

    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        self.ledger = Ledger(self.settings.output)

    def process(self, clip):
        prev = None if self.settings.redo else self.ledger.read(clip.key)
        if is_complete(prev, expected_outputs(clip, self.settings)):
            record = dict(prev, status=EXISTS if prev["status"] == OK else prev["status"])
            count(record)
            yield record
            return
        started = time.monotonic()
        try:
            record = process_clip(clip, self.settings)
        except Exception as e:  # noqa: BLE001 - one clip's bug must not stop the run
            record = clip.record(FAILED, f"{type(e).__name__}: {e}")
        record.setdefault("seconds", {})["total"] = round(time.monotonic() - started, 3)
        record["run_id"] = self.settings.run_id
        self.ledger.write(record)
        count(record)
        yield record
