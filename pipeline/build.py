"""Pipeline assembly: annotations -> clips -> results -> outputs."""
import apache_beam as beam

from transforms.clips import NEXT, CheckAndProcess, CheckLedger, ComputeFlow, FetchClips, ProcessClips
from transforms.plan import chain
from transforms.reader import AnnotationReader, ReadAnnotations, ReadRows
from transforms.records import Clip
from transforms.report import WriteReport
from transforms.shards import WriteShards
from transforms.sources import ReadParts, part_urls, pick_part, unmatched
from transforms.writers import WriteOutputs


def annotation_reader(settings):
    reading = settings.reading
    return AnnotationReader(reading.label_map, splits=reading.splits, classes=reading.classes, limit=reading.limit,
                            trim_format=reading.trim_format, class_dirs=reading.class_dirs, dataset=settings.dataset)


def build(p, settings):
    steps = settings.outputs.steps
    read = p | "ReadAnnotations" >> ReadAnnotations(settings.reading.annotations, annotation_reader(settings),
                                                    (settings.outputs.output, settings.run_id))
    rows = read.rows  # as read: rows_of's pairs come from the reader's step, before any clip is processed
    shuffled = read.pieces | "Reshuffle" >> beam.Reshuffle() | "ReadRows" >> ReadRows()  # rows spread, not shuffled
    sources = chain(settings)
    fetching = "fetch" in steps and sources != ("local",)
    if fetching:
        checked = shuffled | "CheckLedger" >> beam.ParDo(CheckLedger(settings)).with_outputs("todo", main="done")
        served, todo = [checked.done], checked.todo
        for i, name in enumerate(sources):
            last = i == len(sources) - 1
            results = source_stage(p, todo, settings, name, last)
            if last:
                served.append(results)
            else:
                served.append(results.records)
                todo = results[NEXT]
        records = tuple(served) | "AllRecords" >> beam.Flatten()
    else:  # every record comes out of one step: no Flatten for a runner to hold whole
        records = shuffled | "ProcessClips" >> beam.ParDo(CheckAndProcess(settings))
    if "flow" in steps:
        records = (records
                   | "ReshuffleFlow" >> beam.Reshuffle()
                   | "ComputeFlow" >> beam.ParDo(ComputeFlow(settings)).with_resource_hints(
                       **dict(settings.flow.flow_resource_hints)))
    shards = records | "WriteShards" >> WriteShards(settings) if "shards" in steps else None
    _ = records | "WriteReport" >> WriteReport(settings, shards)
    return records | "WriteOutputs" >> WriteOutputs(settings, settings.reading.label_map.text(), rows_of(rows))


def row_of(row):
    """(split, order) of a clip or an invalid row's record."""
    if isinstance(row, Clip):
        return row.split, tuple(row.order)
    return row["split"], tuple(row["order"])


def rows_of(rows):
    """(split, order) of every row read: one per record the run will write."""
    return rows | "Rows" >> beam.Map(row_of)


def source_stage(p, todo, settings, name, last):
    """The stage of the source `name` of --source over the Jobs `todo` that reach it: its records,
    or, unless it is the `last` source, a DoOutputsTuple of them (`records`) and the Jobs of the
    clips it did not serve, for the next source (NEXT). A source's steps are named as in a run with
    that source alone: YouTube groups the Jobs by id for FetchClips (so it is asked only for the
    clips earlier sources lacked); CVDF streams each part once (FromCVDF) for ProcessClips."""
    if name == "youtube":
        todo = (todo
                | "ByYouTubeId" >> beam.Map(lambda job: (job.clip.youtube_id, job))
                | "GroupByYouTubeId" >> beam.GroupByKey())
        label, step = "FetchClips", beam.ParDo(FetchClips(settings, name))
    elif name == "cvdf":
        todo = p | "CVDF" >> FromCVDF(settings, todo)
        label, step = "ProcessClips", beam.ParDo(ProcessClips(settings, name))
    else:
        label, step = "LocalClips", beam.ParDo(ProcessClips(settings, name))
    return todo | label >> (step if last else step.with_outputs(NEXT, main="records"))


class FromCVDF(beam.PTransform):
    """The Jobs still to do, each with its member of the CVDF parts: each part streamed once, the
    jobs as a side input by clip id; a clip in several parts keeps one member (pick_part); clips
    found in no part go on with none (missing), or missing with a reason naming the unreadable parts."""

    def __init__(self, settings, todo):
        super().__init__()
        self.settings = settings
        self.todo = todo

    def expand(self, pbegin):
        by_id = self.todo | "ById" >> beam.Map(lambda job: (job.clip.clip_id, (job.clip, job)))
        parts = (pbegin
                 | "PartLists" >> beam.Create([None])
                 | "PartURLs" >> beam.FlatMap(lambda _, s: part_urls(s.sources.cvdf_parts, s.reading.splits),
                                              self.settings)
                 | "ReshuffleParts" >> beam.Reshuffle()
                 | "ReadParts" >> beam.ParDo(ReadParts(), beam.pvalue.AsMultiMap(by_id)).with_outputs(
                     "found", "failed", main="members"))
        jobs = parts.members | "ByClip" >> beam.GroupByKey() | "PickPart" >> beam.Map(pick_part)
        found = parts.found | "FoundKeys" >> beam.Map(lambda key: (key, True))
        keyed = self.todo | "ByKey" >> beam.Map(lambda job: (job.clip.key, job))
        missing = (({"job": keyed, "found": found})
                   | "Match" >> beam.CoGroupByKey()
                   | "Unmatched" >> beam.FlatMap(unmatched, beam.pvalue.AsList(parts.failed)))
        return (jobs, missing) | "CVDFJobs" >> beam.Flatten()
