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

from transforms import storage
from transforms.fetch import FetchError, Fetcher, source_url, windows
from transforms.flow import grey_frames, write_flow
from transforms.layout import Layout
from transforms.ledger import Ledger, is_complete
from transforms.records import CORRUPT, EXISTS, FAILED, GOOD, MISSING, OK, Clip
from transforms.sources import Found, find_local, materialize, write_member
from transforms.video import Segment, VideoError, VideoOptions, display_size, frame_size, probe, process

STEP_KINDS = (("fetch", "video"), ("resize", "resized"), ("rgb", "rgb"), ("flow", "flow"))
DECODED_KINDS = ("video", "resized", "rgb")
PREFIXES = {"rgb": ("img_",), "flow": ("flow_x_", "flow_y_")}


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


def kept_outputs(prev, expected):
    if not prev or prev["status"] not in GOOD:
        return {}
    return {k: v for k, v in (prev.get("outputs") or {}).items() if expected.get(k) == v}


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
    have = kept_outputs(prev, expected)
    return have, [k for k in DECODED_KINDS if k in expected and k not in have]


def process_clip(clip, settings, source=None, prev=None, payload=None):
    """Make the clip's trimmed clip, resized clip and RGB frames (whichever the steps ask for and
    are not already done) from one decode of its source; returns the clip's record."""
    expected = expected_outputs(clip, settings)
    have, todo = to_make(clip, settings, prev)
    if not todo:
        return prev if have else existing_outputs(clip, settings)
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
            return clip.record(e.status, e.reason)
        record = dict(prev) if have else {}
        outputs, sizes = dict(have), dict(record.get("sizes") or {})
        for kind, local in result.pop("files").items():
            sizes[kind] = publish(kind, local, layout.url(expected[kind]))
            outputs[kind] = expected[kind]
    seconds = {"fetch": round(fetched, 3), **result.pop("seconds")}
    record.update(clip.record(OK, "", source=name, outputs=outputs, sizes=sizes, seconds=seconds, **result))
    return record


def add_flow(record, settings):
    """Optical flow for a finished clip, from its resized clip (else its trimmed clip)."""
    expected = expected_outputs(Clip.from_record(record), settings)
    outputs = record.get("outputs") or {}
    if "flow" not in expected or record["status"] not in GOOD or outputs.get("flow") == expected["flow"]:
        return record
    layout = layout_for(settings)
    source = outputs.get("resized") or outputs.get("video")
    if not source:
        return dict(record, status=MISSING, reason="flow: no video to compute it from")
    started = time.perf_counter()
    size = record.get("frame_size")
    with storage.local_staging() as work:
        path = materialize(layout.url(source), work)
        if size is None:
            shown = (record["width"], record["height"]) if record.get("width") else display_size(path)
            size = frame_size(*shown, video_options(settings))
        frames = grey_frames(path, size, remove_dup=settings.remove_dup and "resized" not in outputs)
        try:
            pairs, _ = write_flow(frames, os.path.join(work, "flow"), algorithm=settings.flow_algorithm,
                                  bound=settings.flow_bound, index_base=settings.frame_index_base)
        except av.error.FFmpegError as e:
            return dict(record, status=CORRUPT, reason=f"flow: cannot decode {source}: {e}")
        written = publish("flow", os.path.join(work, "flow"), layout.url(expected["flow"]))
    seconds = dict(record.get("seconds") or {}, flow=round(time.perf_counter() - started, 3))
    return dict(record, status=OK, outputs=dict(outputs, flow=expected["flow"]), flow_frames=pairs,
                frame_size=list(size), sizes=dict(record.get("sizes") or {}, flow=written), seconds=seconds)


def count(record):
    Metrics.counter("clips", f"{record['split']}.{record['status']}").inc()


class CheckLedger(beam.DoFn):
    """Clips in; `exists` records for clips the ledger holds as complete, (clip, earlier record)
    on the `todo` output for the rest."""

    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        self.ledger = Ledger(self.settings.output)

    def process(self, clip):
        prev = None if self.settings.redo else self.ledger.read(clip.key)
        if is_complete(prev, expected_outputs(clip, self.settings), self.settings.retry_unavailable):
            record = dict(prev, status=EXISTS if prev["status"] == OK else prev["status"])
            count(record)
            yield record
        else:
            yield beam.pvalue.TaggedOutput("todo", (clip, prev))


class _Recording(beam.DoFn):
    def __init__(self, settings):
        self.settings = settings

    def setup(self):
        cv2.setNumThreads(1)
        self.ledger = Ledger(self.settings.output)

    def finish(self, record, started, last_step):
        seconds = dict(record.get("seconds") or {})
        seconds["total"] = round(seconds.get("total", 0) + time.perf_counter() - started, 3)
        record = dict(record, seconds=seconds, run_id=self.settings.run_id)
        self.ledger.write(record)
        if last_step:
            count(record)
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
            record = clip.record(FAILED, f"{type(e).__name__}: {e}")
        if fetched:
            fields = dict(fetched)
            seconds = dict(record.get("seconds") or {}, fetch=fields.pop("seconds"))
            record.update(fields, seconds=seconds)
        flow_pending = "flow" in self.settings.steps and record["status"] in GOOD
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
        pad = self.settings.fetch.pad
        for window in windows([(c.time_start, c.time_end) for c, _ in need], pad):
            members = [(c, p) for c, p in need if (c.time_start, c.time_end) in window.ranges]
            with storage.local_staging() as work:
                started = time.perf_counter()
                try:
                    result = self.fetcher.fetch(youtube_id, window.start, window.end, work)
                except FetchError as e:
                    for clip, _ in members:
                        record = clip.record(e.status, e.reason, attempts=e.attempts,
                                             **({"permanent": True} if e.permanent else {}))
                        yield self.finish(record, started, True)
                    continue
                url = source_url(self.settings.fetch.url_template, youtube_id)
                shared = {"format_id": result.format_id, "ytdlp_version": result.ytdlp_version,
                          "attempts": result.attempts, "fetch_window": [window.start, window.end],
                          "seconds": round(time.perf_counter() - started, 3)}
                source = functools.partial(fetched_segment, result, url)
                for i, (clip, prev) in enumerate(members):
                    fetched = dict(shared, bytes_fetched=result.bytes_fetched if i == 0 else 0)
                    if i:
                        fetched["fetched_with"] = members[0][0].clip_id
                    yield self.run(clip, prev, source, fetched=fetched)


class ComputeFlow(_Recording):
    """Records in; records with optical flow out."""

    def process(self, record):
        started = time.perf_counter()
        try:
            updated = add_flow(record, self.settings)
        except Exception as e:  # noqa: BLE001
            updated = dict(record, status=FAILED, reason=f"flow: {type(e).__name__}: {e}")
        if updated is record:
            count(record)
            yield record
        else:
            yield self.finish(updated, started, True)
