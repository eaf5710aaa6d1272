"""The per-clip stages.

CheckLedger skips what the ledger holds as complete; ProcessClips makes the trimmed clip, the
resized clip and RGB frames from one decode of the clip's source; ComputeFlow adds optical flow
as a stage of its own. Every record is in the ledger before it is emitted.
"""
import functools
import os
import time

import apache_beam as beam
import av
import cv2
from apache_beam.metrics import Metrics

from transforms import storage, tally
from transforms.fetch import FetchError, Fetcher, source_url, windows
from transforms.flow import grey_frames, write_flow
from transforms.layout import PREFIXES, Layout, frame_counts
from transforms.ledger import Ledger, is_complete
from transforms.records import CORRUPT, EXISTS, FAILED, GOOD, MISSING, OK, ClipRecord
from transforms.sources import Found, find_local, materialize, write_member
from transforms.video import Segment, VideoError, VideoOptions, display_size, frame_size, probe, process

STEP_KINDS = (("fetch", "video"), ("resize", "resized"), ("rgb", "rgb"), ("flow", "flow"))
DECODED_KINDS = ("video", "resized", "rgb")
VERIFY_LEVELS = {"probe": 0, "full": 1}  # records of videos this pipeline made say nothing: it decoded them whole


def layout_for(settings):
    return Layout(settings.output, flat=settings.flat, scale=settings.scale, dense=settings.dense)


def video_options(settings):
    return VideoOptions(
        trim=settings.trim, trim_preset=settings.trim_preset, trim_crf=settings.trim_crf,
        scale=settings.scale, dense=settings.dense, remove_dup=settings.remove_dup,
        upscale=settings.upscale, preset=settings.x264_preset, crf=settings.crf,
        new_short=settings.new_short, new_width=settings.new_width, new_height=settings.new_height,
        frame_index_base=settings.frame_index_base, min_duration_ratio=settings.min_duration_ratio)


def expected_outputs(clip, settings):
    """{output kind: relative path} that this run's steps must leave for the clip."""
    layout = layout_for(settings)
    paths = {"video": layout.video(clip), "resized": layout.resized(clip),
             "rgb": layout.rawframes(clip), "flow": layout.rawframes(clip)}
    return {kind: paths[kind] for step, kind in STEP_KINDS if step in settings.steps}


def output_params(settings):
    """{output kind: the options that shape it}; an output made with other options is made again."""
    frames = {"new_short": settings.new_short, "new_width": settings.new_width,
              "new_height": settings.new_height, "frame_index_base": settings.frame_index_base,
              "remove_dup": settings.remove_dup}
    return {"video": {"trim": settings.trim, "trim_preset": settings.trim_preset, "trim_crf": settings.trim_crf},
            "resized": {"scale": settings.scale, "dense": settings.dense, "remove_dup": settings.remove_dup,
                        "upscale": settings.upscale, "x264_preset": settings.x264_preset, "crf": settings.crf},
            "rgb": frames,
            "flow": dict(frames, flow_algorithm=settings.flow_algorithm, flow_bound=settings.flow_bound)}


def complete(prev, clip, settings, look=True):
    """Whether the earlier record `prev` leaves this run nothing to do for `clip`. With file lists
    alone, a good record is trusted only if (`look`) its video is still where this run's layout
    puts it and was checked at least as closely as this run asks."""
    expected = expected_outputs(clip, settings)
    if is_complete(prev, expected, settings.retry_unavailable, output_params(settings)):
        return True
    return not expected and look and trusted_video(prev, clip, settings)


def trusted_video(prev, clip, settings):
    if not prev or prev["status"] not in GOOD:
        return False
    layout = layout_for(settings)
    rel = layout.video(clip)
    checked = VERIFY_LEVELS.get(prev.get("verified", "full"), 0)
    return ((prev.get("outputs") or {}).get("video") == rel and checked >= VERIFY_LEVELS[settings.verify]
            and storage.exists(layout.url(rel)))


def refreshed(prev, clip, status):
    """An earlier record under this run's annotation: label, index, order and times from `clip`."""
    return ClipRecord.from_dict(prev).refreshed(clip, status)


def count_frames(layout, clip):
    """(img_ count, flow pair count, note) in the clip's rawframes dir."""
    img, fx, fy = frame_counts(storage.listdir_names(layout.url(layout.rawframes(clip))))
    if fx != fy:
        return img, 0, f"flow ignored: {fx} flow_x_ but {fy} flow_y_ files"
    return img, fx, ""


def existing_outputs(clip, settings, prev=None):
    """Record what the tree holds for the clip now: `exists`, else `missing`. The facts of a good
    earlier record are kept, its outputs only where they are still there."""
    layout = layout_for(settings)
    rel = layout.video(clip)
    outputs, fields, notes = {}, {}, []
    try:
        fields = probe(layout.url(rel), clip.duration, full=settings.verify == "full",
                       min_ratio=settings.min_duration_ratio)
        outputs["video"] = rel
    except VideoError as e:
        notes.append(f"{rel}: {e.reason}")
    if storage.exists(layout.url(layout.resized(clip))):
        outputs["resized"] = layout.resized(clip)
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
        return ClipRecord.of(clip, MISSING, "; ".join(notes))
    earlier = ClipRecord.from_dict(prev) if prev else None
    return ClipRecord.in_tree(clip, earlier, "; ".join(notes), outputs, settings.verify, fields)


def kept_outputs(prev, expected, params):
    """The outputs of the earlier record at this run's paths, made with this run's options."""
    if not prev or prev["status"] not in GOOD:
        return {}
    made = prev.get("params") or {}
    return {k: v for k, v in (prev.get("outputs") or {}).items()
            if expected.get(k) == v and made.get(k, params.get(k)) == params.get(k)}


class LocalVideos:
    """Clips from existing files under --video-root."""

    def __init__(self, root):
        self.root = root

    def __call__(self, clip, workdir):
        found = find_local(self.root, clip)
        if found is None:
            raise VideoError(MISSING, f"no video for {clip.clip_id} under {self.root}")
        return segment_of(clip, found, workdir)


def not_in_parts(clip, workdir):
    raise VideoError(MISSING, f"no {clip.clip_id}.* in the CVDF parts")


def fetched_segment(result, url, clip, workdir):
    """The clip inside a fetched file whose t=0 lies at source time `result.offset`."""
    return Segment(result.path, clip.time_start - result.offset, clip.time_end - result.offset), url


def segment_of(clip, found, workdir):
    path = materialize(found.url, workdir)
    if found.whole:
        return Segment(path, 0.0, clip.duration, whole=True), found.url
    return Segment(path, clip.time_start, clip.time_end), found.url


def trimmed_in_tree(clip, layout, workdir):
    """The clip's own trimmed video, made earlier or by another tool, as the source."""
    url = layout.url(layout.video(clip))
    if not storage.exists(url):
        raise VideoError(MISSING, f"no video at {layout.video(clip)} (add the fetch step to make it)")
    return segment_of(clip, Found(url, True), workdir)


def publish(kind, local, url):
    """Put a finished output in place whole; returns its bytes."""
    if kind in PREFIXES:
        return storage.publish_dir(local, url, PREFIXES[kind])
    storage.put_file(local, url)
    return os.path.getsize(local)


def to_make(clip, settings, prev):
    """(outputs kept from the earlier record, decoded kinds still to make)."""
    expected = expected_outputs(clip, settings)
    have = kept_outputs(prev, expected, output_params(settings))
    return have, [k for k in DECODED_KINDS if k in expected and k not in have]


def process_clip(clip, settings, source=None, prev=None, payload=None):
    """Make the clip's trimmed clip, resized clip and RGB frames (whichever the steps ask for and
    are not already done) from one decode of its source; returns the clip's record."""
    expected = expected_outputs(clip, settings)
    have, todo = to_make(clip, settings, prev)
    if not todo:
        return refreshed(prev, clip, prev["status"]) if have else existing_outputs(clip, settings, prev)
    layout = layout_for(settings)
    started = time.perf_counter()
    with storage.local_staging() as work:
        try:
            if "video" not in todo:
                segment, name = trimmed_in_tree(clip, layout, work)
            elif payload is not None:
                member, data = payload
                segment, name = Segment(write_member(data, work, member), 0.0, clip.duration, whole=True), member
            else:
                segment, name = source(clip, work)
            fetched = time.perf_counter() - started
            result = process(segment, todo, video_options(settings), work)
        except VideoError as e:
            return ClipRecord.of(clip, e.status, e.reason)
        kept = ClipRecord.from_dict(prev) if have else None
        outputs, sizes = dict(have), dict(kept.sizes if kept else {})
        params = {k: v for k, v in (kept.params if kept else {}).items() if k in have}
        for kind, local in result.pop("files").items():
            sizes[kind] = publish(kind, local, layout.url(expected[kind]))
            outputs[kind] = expected[kind]
            params[kind] = output_params(settings)[kind]
    seconds = {"fetch": round(fetched, 3), **result.pop("seconds")}
    return ClipRecord.made(clip, kept, name, outputs, sizes, params, seconds, result)


def flow_source(record, settings, layout, work):
    """(relative path, local copy, frame size) of the clip flow is computed from: the resized clip,
    unless the frames are larger than it (--new-short 0 or above --scale) and the trimmed clip exists."""
    outputs = record.outputs
    source = outputs.get("resized") or outputs.get("video")
    path = materialize(layout.url(source), work, "flow-source")
    size = record.get("frame_size")
    if size is None:
        shown = (record.get("width"), record.get("height")) if record.get("width") else display_size(path)
        size = frame_size(*shown, video_options(settings))
    if source != outputs.get("resized"):
        return source, path, size
    small = record.get("resized_size") or display_size(path)
    trimmed = outputs.get("video") or layout.video(record.clip())
    if (size[0] > small[0] or size[1] > small[1]) and storage.exists(layout.url(trimmed)):
        return trimmed, materialize(layout.url(trimmed), work, "flow-trimmed"), size
    return source, path, size


def add_flow(record, settings):
    """Optical flow for a finished clip, from its resized clip, else (or when that is smaller than
    the frames) its trimmed clip; the record's flow_source says which. `record` itself when there
    is nothing to add."""
    expected = expected_outputs(record.clip(), settings)
    outputs = record.outputs
    params = output_params(settings)
    if "flow" not in expected or not record.good or "flow" in kept_outputs(record.to_dict(), expected, params):
        return record
    layout = layout_for(settings)
    if not (outputs.get("resized") or outputs.get("video")):
        return record.with_status(MISSING, "flow: no video to compute it from")
    started = time.perf_counter()
    with storage.local_staging() as work:
        source, path, size = flow_source(record, settings, layout, work)
        frames = grey_frames(path, size, remove_dup=settings.remove_dup and source != outputs.get("resized"))
        try:
            pairs, _ = write_flow(frames, os.path.join(work, "flow"), algorithm=settings.flow_algorithm,
                                  bound=settings.flow_bound, index_base=settings.frame_index_base)
        except av.error.FFmpegError as e:
            return record.with_status(CORRUPT, f"flow: cannot decode {source}: {e}")
        written = publish("flow", os.path.join(work, "flow"), layout.url(expected["flow"]))
    return record.with_flow(expected["flow"], pairs, source, size, written, params["flow"],
                            round(time.perf_counter() - started, 3))


def count(record, settings, skipped=False):
    """A clip's final record: Beam's counter and this worker's progress tally."""
    Metrics.counter("clips", f"{record['split']}.{record['status']}").inc()
    tally.note(settings, record, skipped)


class CheckLedger(beam.DoFn):
    """Clips in; `exists` records for clips the ledger holds as complete, (clip, earlier record)
    on the `todo` output for the rest."""

    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        self.ledger = Ledger(self.settings.output)

    def process(self, clip):
        prev = None if self.settings.redo else self.ledger.read(clip.key)
        if complete(prev, clip, self.settings):
            record = refreshed(prev, clip, EXISTS if prev["status"] == OK else prev["status"]).to_dict()
            count(record, self.settings, skipped=True)
            yield record
        else:
            yield beam.pvalue.TaggedOutput("todo", (clip, prev))

    def finish_bundle(self):
        tally.flush(self.settings)


class _Recording(beam.DoFn):
    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        cv2.setNumThreads(1)
        self.ledger = Ledger(self.settings.output)

    def finish_bundle(self):
        tally.flush(self.settings)

    def finish(self, record, started, last_step):
        """The ClipRecord as the ledger keeps it, written there; returns its dict."""
        record = record.finished(time.perf_counter() - started, self.settings.run_id)
        self.ledger.write(record)
        record = record.to_dict()
        if last_step:
            count(record, self.settings)
        return record


class ProcessClips(_Recording):
    """(clip, earlier record[, (source name, bytes)]) in; records out."""

    def setup(self):
        super().setup()
        s = self.settings
        self.source = {"local": LocalVideos(s.video_root), "cvdf": not_in_parts}.get(s.source)

    def process(self, job):
        clip, prev, *payload = job
        yield self.run(clip, prev, self.source, payload[0] if payload else None)

    def run(self, clip, prev, source, payload=None, fetched=None):
        started = time.perf_counter()
        try:
            record = process_clip(clip, self.settings, source, prev, payload)
        except Exception as e:  # noqa: BLE001 - one clip's bug must not stop the run
            record = ClipRecord.of(clip, FAILED, f"{type(e).__name__}: {e}")
        if fetched:
            record = record.with_fetch(**fetched)
        flow_pending = "flow" in self.settings.steps and record.good
        return self.finish(record, started, not flow_pending)


class FetchClips(ProcessClips):
    """(youtube id, [(clip, earlier record), ...]) in; records out. The clips of one id are fetched
    together: one segment-only download serves every clip whose padded ranges lie close together."""

    def setup(self):
        super().setup()
        self.fetcher = Fetcher(self.settings.fetch)

    def process(self, group):
        youtube_id, jobs = group
        need = []
        for clip, prev in jobs:
            if "video" in to_make(clip, self.settings, prev)[1]:
                need.append((clip, prev))
            else:
                yield self.run(clip, prev, None)
        for window in windows([(c.time_start, c.time_end) for c, _ in need], self.settings.fetch.pad):
            members = [(c, p) for c, p in need if (c.time_start, c.time_end) in window.ranges]
            with storage.local_staging() as work:
                yield from self.fetch_window(youtube_id, window, members, work)

    def fetch_window(self, youtube_id, window, members, work):
        started = time.perf_counter()
        try:
            result = self.fetcher.fetch(youtube_id, window.start, window.end, work)
        except Exception as e:  # noqa: BLE001 - a full disk or a bug fails these clips, not the bundle
            for clip, _ in members:
                yield self.finish(self.fetch_failure(clip, e), started, True)
            return
        url = source_url(self.settings.fetch.url_template, youtube_id)
        shared = {"result": result, "window": window, "seconds": round(time.perf_counter() - started, 3)}
        source = functools.partial(fetched_segment, result, url)
        for i, (clip, prev) in enumerate(members):
            fetched = dict(shared, bytes_fetched=result.bytes_fetched if i == 0 else 0,
                           fetched_with=members[0][0].clip_id if i else None)
            yield self.run(clip, prev, source, fetched=fetched)

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
