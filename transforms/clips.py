"""The per-clip stages: DoFns that run each clip's Job (transforms/plan.py).

CheckLedger plans every clip and passes on those with work left; ProcessClips makes the trimmed
clip, the resized clip and RGB frames from one decode of the clip's source (transforms/sources.py);
FetchClips fetches the sources of one YouTube id together first; ComputeFlow adds optical flow as a
stage of its own. Every record is in the ledger before it is emitted.

With several sources (--source local,cvdf,youtube), each source's stage is one of these DoFns, told
its --source name (`stage`): a clip its source has no usable video for goes on, not recorded, as
the Job for the next source on the NEXT output (Job.next_source); the last source tried records
the clip, its status and reason settled over every source tried (plan.settled).
"""
import dataclasses
import functools
import logging
import os
import time

import apache_beam as beam
import av
import cv2
from apache_beam.metrics import Metrics

from transforms import cache, scan, sources, storage, tally
from transforms.fetch import BOT_CHECK_COUNTER, BotCheckStop, FetchError, Fetcher, source_url, windows
from transforms.flow import grey_frames, write_flow
from transforms.layout import PREFIXES
from transforms.ledger import Ledger
from transforms.plan import (CACHE, FETCH, MAKE, REFRESH, SKIP, SOURCE_KIND, flow_to_make, layout_for, output_params,
                             plan, settled)
from transforms.records import CORRUPT, EXISTS, FAILED, MISSING, OK, YOUTUBE_SOURCE, Clip, ClipRecord
from transforms.video import VideoError, display_size, frame_size, process

log = logging.getLogger(__name__)


def refreshed(prev, clip, status):
    """An earlier record under this run's annotation: label, index, order and times from `clip`."""
    return ClipRecord.from_dict(prev).refreshed(clip, status)


def publish(kind, local, url):
    """Put a finished output in place whole; returns its bytes."""
    if kind in PREFIXES:
        return storage.publish_dir(local, url, PREFIXES[kind])
    storage.put_file(local, url)
    return os.path.getsize(local)


def process_clip(job, settings, fetched=None):
    """Run a clip's Job: make its trimmed clip, resized clip and RGB frames (those it names) from one
    decode of its source (`fetched`: the fetched window's, for a job whose source is fetched);
    returns the clip's ClipRecord."""
    clip, prev = job.clip, job.prev
    if job.action != MAKE:
        return refreshed(prev, clip, prev["status"]) if job.action == REFRESH else \
            scan.existing_outputs(clip, settings, prev)
    layout = layout_for(settings)
    started = time.perf_counter()
    with storage.local_staging() as work:
        try:
            segment, name = sources.open_source(job, settings, work, fetched)
            took = time.perf_counter() - started
            result = process(segment, list(job.make), settings.video, work)
        except VideoError as e:
            return ClipRecord.of(clip, e.status, e.reason)
        kept = ClipRecord.from_dict(prev) if job.keep else None
        outputs, sizes = dict(job.keep), dict(kept.sizes if kept else {})
        params = {k: v for k, v in (kept.params if kept else {}).items() if k in job.keep}
        made_with = output_params(settings)
        for kind, local in result.pop("files").items():
            sizes[kind] = publish(kind, local, layout.url(job.make[kind]))
            outputs[kind] = job.make[kind]
            params[kind] = made_with[kind]
    seconds = {"fetch": round(took, 3), **result.pop("seconds")}
    return ClipRecord.made(clip, kept, name, outputs, sizes, params, seconds, result, SOURCE_KIND[job.source])


def flow_source(record, video, layout, work):
    """(relative path, local copy, frame size) of the clip flow is computed from: the resized clip,
    unless the frames are larger than it (--new-short 0 or above --scale) and the trimmed clip exists.
    `video`: the VideoOptions."""
    outputs = record.outputs
    source = outputs.get("resized") or outputs.get("video")
    path = sources.materialize(layout.url(source), work, "flow-source")
    size = record.get("frame_size")
    if size is None:
        shown = (record.get("width"), record.get("height")) if record.get("width") else display_size(path)
        size = frame_size(*shown, video)
    if source != outputs.get("resized"):
        return source, path, size
    small = record.get("resized_size") or display_size(path)
    trimmed = outputs.get("video") or layout.video(record.clip())
    if (size[0] > small[0] or size[1] > small[1]) and storage.exists(layout.url(trimmed)):
        return trimmed, sources.materialize(layout.url(trimmed), work, "flow-trimmed"), size
    return source, path, size


def add_flow(record, settings):
    """Optical flow for a finished clip, from its resized clip, else (or when that is smaller than
    the frames) its trimmed clip; the record's flow_source says which. `record` itself when there
    is nothing to add."""
    rel = flow_to_make(record, settings)
    if not rel:
        return record
    outputs = record.outputs
    layout = layout_for(settings)
    if not (outputs.get("resized") or outputs.get("video")):
        return record.with_status(MISSING, "flow: no video to compute it from")
    video, flow = settings.video, settings.flow
    started = time.perf_counter()
    with storage.local_staging() as work:
        source, path, size = flow_source(record, video, layout, work)
        frames = grey_frames(path, size, remove_dup=video.remove_dup and source != outputs.get("resized"))
        try:
            pairs, _ = write_flow(frames, os.path.join(work, "flow"), algorithm=flow.flow_algorithm,
                                  bound=flow.flow_bound, index_base=video.frame_index_base)
        except av.error.FFmpegError as e:
            return record.with_status(CORRUPT, f"flow: cannot decode {source}: {e}")
        written = publish("flow", os.path.join(work, "flow"), layout.url(rel))
    return record.with_flow(rel, pairs, source, size, written, output_params(settings)["flow"],
                            round(time.perf_counter() - started, 3))


def count(record, settings, skipped=False):
    """A clip's final record: Beam's counter and this worker's progress tally."""
    Metrics.counter("clips", f"{record['split']}.{record['status']}").inc()
    tally.note(settings.outputs.output, settings.run_id, record, skipped)


def check(clip, ledger, settings):
    """(its `exists` record, None) for a clip whose plan leaves nothing to do (the ledger holds it
    as complete, or, with file lists alone, its trusted video is still there), counted as skipped;
    else (None, its Job). An invalid row's record is passed on as it is: (record, None)."""
    if not isinstance(clip, Clip):
        return clip, None
    prev = None if settings.outputs.redo else ledger.read(clip.key)
    job = plan(clip, prev, settings)
    if job.action == SKIP or scan.still_there(job, settings):
        record = refreshed(prev, clip, EXISTS if prev["status"] == OK else prev["status"]).to_dict()
        count(record, settings, skipped=True)
        return record, None
    return None, job


class CheckLedger(beam.DoFn):
    """Rows in (clips, and invalid rows' records, passed on); `exists` records for clips whose
    plan leaves nothing to do (see `check`), their Job on the `todo` output for the rest."""

    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        self.ledger = Ledger(self.settings.outputs.output)

    def process(self, row):
        record, job = check(row, self.ledger, self.settings)
        yield record if record is not None else beam.pvalue.TaggedOutput("todo", job)

    def finish_bundle(self):
        tally.flush(self.settings.outputs.output, self.settings.run_id)


class _Recording(beam.DoFn):
    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        cv2.setNumThreads(1)
        self.ledger = Ledger(self.settings.outputs.output)

    def finish_bundle(self):
        tally.flush(self.settings.outputs.output, self.settings.run_id)

    def finish(self, record, started, last_step, prev=None):
        """The ClipRecord as the ledger keeps it, written there unless `prev`, the ledger's record
        of the clip, already says the same; returns its dict."""
        record = record.finished(time.perf_counter() - started, self.settings.run_id)
        self.ledger.write(record, prev)
        record = record.to_dict()
        if last_step:
            count(record, self.settings)
        return record


NEXT = "next"  # the output of a source's stage for the clips it did not serve


class ProcessClips(_Recording):
    """Jobs in; records out (and, for the stage of source `stage` in a list of sources, the Jobs of
    the clips it did not serve on NEXT, for the next source)."""

    def __init__(self, settings, stage=""):
        super().__init__(settings)
        self.stage = stage

    def process(self, job):
        yield self.run(job)

    def run(self, job, source=None, fetched=None):
        started = time.perf_counter()
        try:
            record = process_clip(job, self.settings, source)
        except Exception as e:  # noqa: BLE001 - one clip's bug must not stop the run
            record = ClipRecord.of(job.clip, FAILED, f"{type(e).__name__}: {e}")
        if fetched:
            record = record.with_fetch(**fetched)
        return self.settle(job, record, started)

    def settle(self, job, record, started):
        """The clip's final record (finished: in the ledger, counted), or, when this source did not
        serve it and a next one is left, a TaggedOutput of its Job for the next source."""
        if not record.good:
            moved = job.next_source(self.stage, record.status, record.reason)
            if moved is not None:
                return beam.pvalue.TaggedOutput(NEXT, moved)
            record = settled(job, self.stage, record)
        flow_pending = "flow" in self.settings.outputs.steps and record.good
        return self.finish(record, started, not flow_pending, job.prev)


class CheckAndProcess(ProcessClips):
    """Rows in (clips, and invalid rows' records, passed on); records out: the ledger check and
    the clip's Job in one step, for the runs whose clips need no grouping (no fetch from YouTube or
    CVDF parts). Every record then comes out of this one step, so no Flatten joins them again
    (a runner such as Beam's local one would hold the joined records whole)."""

    def process(self, row):
        record, job = check(row, self.ledger, self.settings)
        yield record if record is not None else self.run(job)


class FetchClips(ProcessClips):
    """(youtube id, [job, ...]) in; records out. The clips of one id are fetched together: one
    segment-only download serves every clip whose padded ranges lie close together."""

    def setup(self):
        super().setup()
        self.fetcher = Fetcher(self.settings.fetch)

    def process(self, group):
        youtube_id, jobs = group
        need = []
        for job in jobs:
            if job.source == FETCH:
                hit = self.from_cache(job)
                if hit is None:
                    need.append(job)
                else:
                    yield hit
            else:
                yield self.run(job)
        for window in windows([(j.clip.time_start, j.clip.time_end) for j in need], self.settings.fetch.pad):
            members = [j for j in need if (j.clip.time_start, j.clip.time_end) in window.ranges]
            with storage.local_staging() as work:
                yield from self.fetch_window(youtube_id, window, members, work)

    def fetch_window(self, youtube_id, window, members, work):
        started = time.perf_counter()
        try:
            result = self.fetcher.fetch(youtube_id, window.start, window.end, work)
        except Exception as e:  # noqa: BLE001 - a full disk or a bug fails these clips, not the bundle
            if isinstance(e, BotCheckStop):
                Metrics.counter(*BOT_CHECK_COUNTER).inc(len(members))
            for job in members:
                yield self.settle(job, self.fetch_failure(job.clip, e), started)
            return
        url = source_url(self.settings.fetch.url_template, youtube_id)
        shared = {"result": result, "window": window, "seconds": round(time.perf_counter() - started, 3)}
        source = functools.partial(sources.fetched_segment, result, url)
        for i, job in enumerate(members):
            fetched = dict(shared, bytes_fetched=result.bytes_fetched if i == 0 else 0,
                           fetched_with=members[0].clip.clip_id if i else None)
            yield self.run(job, source, fetched=fetched)

    def from_cache(self, job):
        """The finished record of a clip made from its --clip-cache entry (0 bytes fetched), or None:
        no cache, no entry, or one the video stage cannot use (the clip is then fetched, and its
        entry replaced)."""
        clip_cache = self.settings.sources.clip_cache
        if not clip_cache or not cache.lookup(clip_cache, job.clip):
            return None
        started = time.perf_counter()
        try:
            record = process_clip(dataclasses.replace(job, source=CACHE), self.settings)
        except Exception as e:  # noqa: BLE001 - a bad entry is fetched again, not the run's end
            record = ClipRecord.of(job.clip, FAILED, f"{type(e).__name__}: {e}")
        if not record.good:
            Metrics.counter("cache", "unusable").inc()
            log.warning("clip cache: entry %s not used (%s): %s; fetching the clip",
                        cache.entry_url(clip_cache, job.clip), record.status, record.reason)
            return None
        Metrics.counter("cache", "hits").inc()
        flow_pending = "flow" in self.settings.outputs.steps
        return self.finish(record.served_by_cache(), started, not flow_pending, job.prev)

    def finish(self, record, started, last_step, prev=None):
        """As _Recording.finish; a fetched clip's trimmed video goes into the --clip-cache first
        (to_cache), so a run killed before it is there has no ledger record of the clip either."""
        if record.source_kind == YOUTUBE_SOURCE:
            self.to_cache(record)
        return super().finish(record, started, last_step, prev)

    def to_cache(self, record):
        """Put the trimmed clip of a good fetched record into the --clip-cache, when the run has one
        and trims exactly (a --trim copy clip starts at a keyframe before the segment). A cache that
        cannot be written is logged and counted; the clip stands."""
        video, clip_cache = record.outputs.get("video"), self.settings.sources.clip_cache
        if not (clip_cache and self.settings.video.trim == "exact" and record.status == OK and video):
            return
        try:
            cache.write_from(clip_cache, record.clip(), layout_for(self.settings).url(video))
            Metrics.counter("cache", "written").inc()
        except Exception as e:  # noqa: BLE001 - the clip is made; only its cache entry is not
            Metrics.counter("cache", "write_failed").inc()
            log.warning("clip cache: cannot write %s: %s", cache.entry_url(clip_cache, record.clip()), e)

    @staticmethod
    def fetch_failure(clip, error):
        if isinstance(error, FetchError):
            return ClipRecord.fetch_failed(clip, error.status, error.reason, error.attempts, error.permanent)
        return ClipRecord.of(clip, FAILED, f"{type(error).__name__}: {error}")


class ComputeFlow(_Recording):
    """Records in; records with optical flow out."""

    def process(self, record):
        started = time.perf_counter()
        given = ClipRecord.from_dict(record)
        try:
            updated = add_flow(given, self.settings)
        except Exception as e:  # noqa: BLE001
            updated = given.with_status(FAILED, f"flow: {type(e).__name__}: {e}")
        if updated is given:
            count(record, self.settings)
            yield record
        else:
            yield self.finish(updated, started, True)
