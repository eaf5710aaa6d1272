"""The per-clip policy, as pure functions: what this run must make for a clip, given its earlier
ledger record and the run's settings, and from which source.

plan() gives a Job. CheckLedger, the progress count, the file-lists-only path and the video stage
all follow the same Job; nothing here reads or writes storage.
"""
import dataclasses
import typing

from transforms import optionfields
from transforms.layout import Layout
from transforms.ledger import is_complete
from transforms.records import (CACHE_SOURCE, CORRUPT, CVDF_SOURCE, FAILED, LOCAL_SOURCE, MISSING as MISSING_STATUS,
                                NETWORK, RATE_LIMITED, SHORT, TREE_SOURCE, UNAVAILABLE, YOUTUBE_SOURCE, Clip,
                                ClipRecord)

STEP_KINDS = (("fetch", "video"), ("resize", "resized"), ("rgb", "rgb"), ("flow", "flow"))
DECODED_KINDS = ("video", "resized", "rgb")
VERIFY_LEVELS = {"probe": 0, "full": 1}  # records of videos this pipeline made say nothing: it decoded them whole

# Where a job's source video comes from.
LOCAL = "local"      # a file under --video-root
FETCH = "fetch"      # a window fetched from YouTube (the clips of one id share it)
CVDF = "cvdf"        # a member of the CVDF parts (`member`, `data`)
TREE = "tree"        # the clip's trimmed video already in the output tree
CACHE = "cache"      # an entry of the shared --clip-cache
MISSING = "missing"  # none: `reason` says why
SOURCES = {"local": LOCAL, "youtube": FETCH, "cvdf": CVDF}  # --source: the source of a clip to fetch
# The record's source_kind for each job source.
SOURCE_KIND = {LOCAL: LOCAL_SOURCE, CVDF: CVDF_SOURCE, FETCH: YOUTUBE_SOURCE, TREE: TREE_SOURCE, CACHE: CACHE_SOURCE}

# The statuses a source's attempt ends with that move a clip on to the next source of --source:
# every failure of the video stage, since a later source may have a usable copy.
MOVES_ON = (MISSING_STATUS, CORRUPT, SHORT, FAILED, UNAVAILABLE, NETWORK, RATE_LIMITED)
# A clip no source served gets the most telling of their statuses, the earliest here: what the
# video is (gone from YouTube, a broken or short copy), then what went wrong, then mere absence.
TELLING = (UNAVAILABLE, CORRUPT, SHORT, FAILED, RATE_LIMITED, NETWORK, MISSING_STATUS)

# What a job does.
SKIP = "skip"        # the earlier record leaves nothing to do
REFRESH = "refresh"  # nothing to make: the earlier record stands, under this run's annotation
SCAN = "scan"        # nothing to make: record what the tree holds for the clip
MAKE = "make"        # decode the source once and make `make`


@dataclasses.dataclass(frozen=True)
class Job:
    """One clip's work: `action`; the outputs kept from the earlier record `prev` (`keep`) and the
    decoded outputs to make (`make`), each {kind: relative path}; where their source comes from.
    `trust` (file lists alone): the trimmed video whose presence lets the earlier record stand.
    `then`: the job sources still to try, in --source order, when this one has no usable video;
    `tried`: (--source name, status, reason) of each source tried before this one."""
    clip: Clip
    prev: typing.Optional[dict]
    action: str
    keep: dict = dataclasses.field(default_factory=dict)
    make: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    member: str = ""
    data: typing.Optional[bytes] = None
    reason: str = ""
    trust: str = ""
    then: tuple = ()
    tried: tuple = ()

    def with_member(self, name, data, missing=""):
        """The job once the CVDF parts are read: the member `name` and its bytes, or, when
        `missing` says why, none. Only a job whose source is the parts takes it."""
        if self.source != CVDF:
            return self
        if missing:
            return dataclasses.replace(self, source=MISSING, reason=missing)
        return dataclasses.replace(self, member=name, data=data)

    def missing(self, reason):
        return self.with_member("", None, reason)

    def next_source(self, name, status, reason):
        """The job for the next source, once the source `name` (a --source name) ended with
        `status` and `reason`; None when none is left or the status is not one that moves on."""
        if not self.then or status not in MOVES_ON:
            return None
        return dataclasses.replace(self, source=self.then[0], then=self.then[1:], member="", data=None, reason="",
                                   tried=self.tried + ((name, status, reason),))


def chain(settings):
    """The --source names of the run, in order."""
    return settings.sources.names


def most_telling(statuses):
    """The status a clip no source served keeps, of the statuses its sources ended with (in
    --source order): the first in TELLING (a status not in it ranks last)."""
    rank = {status: i for i, status in enumerate(TELLING)}
    return min(statuses, key=lambda status: rank.get(status, len(TELLING)))


def settled(job, name, record):
    """The final record of a clip whose last source tried, `name`, ended with `record`, not good:
    itself when no other source was tried; else the most telling status of them all, with a reason
    naming what each said ("local: ...; cvdf: ...; youtube: ..."), the last record's own fields
    (attempts, permanent) kept when its status is that one."""
    if record.good or not job.tried:
        return record
    said = job.tried + ((name, record.status, record.reason),)
    status = most_telling(s for _, s, _ in said)
    reason = "; ".join(f"{n}: {r}" for n, _, r in said)
    if status == record.status:
        return record.with_status(status, reason)
    return ClipRecord.of(job.clip, status, reason)


def layout_for(settings):
    outputs, video = settings.outputs, settings.video
    return Layout(outputs.output, flat=outputs.flat, scale=video.scale, dense=video.dense)


def expected_outputs(clip, settings):
    """{output kind: relative path} that this run's steps must leave for the clip."""
    layout = layout_for(settings)
    paths = {"video": layout.video(clip), "resized": layout.resized(clip),
             "rgb": layout.rawframes(clip), "flow": layout.rawframes(clip)}
    return {kind: paths[kind] for step, kind in STEP_KINDS if step in settings.outputs.steps}


def output_params(settings):
    """{output kind: the options that shape it (their fields' `shapes`)}; an output made with other
    options is made again."""
    return optionfields.output_params(settings)


def kept_outputs(prev, expected, params):
    """The outputs of the earlier record at this run's paths, made with this run's options."""
    if not prev:
        return {}
    prev = ClipRecord.from_dict(prev)
    if not prev.good:
        return {}
    made = prev.params
    return {k: v for k, v in prev.outputs.items()
            if expected.get(k) == v and made.get(k, params.get(k)) == params.get(k)}


def trusted_video(prev, clip, settings):
    """The trimmed video path of a good earlier record that this run may trust without decoding it
    again (at this run's path, checked at least as closely as this run asks), or ""."""
    if not prev:
        return ""
    prev = ClipRecord.from_dict(prev)
    if not prev.good:
        return ""
    rel = layout_for(settings).video(clip)
    checked = VERIFY_LEVELS.get(prev.get("verified", "full"), 0)
    return rel if prev.outputs.get("video") == rel and checked >= VERIFY_LEVELS[settings.outputs.verify] else ""


def plan(clip, prev, settings):
    """The Job for `clip` given its earlier record `prev` (None: none, or --redo)."""
    expected = expected_outputs(clip, settings)
    params = output_params(settings)
    if is_complete(prev, expected, settings.outputs.retry_unavailable, params):
        return Job(clip, prev, SKIP)
    keep = kept_outputs(prev, expected, params)
    make = {k: expected[k] for k in DECODED_KINDS if k in expected and k not in keep}
    if not make:
        if keep:
            return Job(clip, prev, REFRESH, keep)
        return Job(clip, prev, SCAN, trust="" if expected else trusted_video(prev, clip, settings))
    if "video" not in make:
        return Job(clip, prev, MAKE, keep, make, TREE)
    sources = tuple(SOURCES.get(name, "") for name in chain(settings))
    return Job(clip, prev, MAKE, keep, make, sources[0], then=sources[1:])


def flow_to_make(record, settings):
    """The path optical flow is still to be made at for a finished clip's record, or "" (none:
    not asked for, the clip is not good, or flow made with this run's options is there)."""
    record = ClipRecord.from_dict(record)
    expected = expected_outputs(record.clip(), settings)
    if "flow" not in expected or not record.good or "flow" in kept_outputs(record, expected, output_params(settings)):
        return ""
    return expected["flow"]
