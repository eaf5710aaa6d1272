"""Pipeline assembly: annotations -> clips -> results -> outputs."""
import apache_beam as beam

from transforms.clips import CheckAndProcess, CheckLedger, ComputeFlow, FetchClips, ProcessClips
from transforms.reader import AnnotationReader, ReadAnnotations, ReadRows
from transforms.records import Clip
from transforms.report import WriteReport
from transforms.shards import WriteShards
from transforms.sources import ReadParts, part_urls, pick_part, unmatched
from transforms.writers import WriteOutputs


def annotation_reader(settings):
    return AnnotationReader(settings.label_map, splits=settings.splits, classes=settings.classes,
                            limit=settings.limit, trim_format=settings.trim_format,
                            class_dirs=settings.class_dirs, dataset=settings.dataset)


def build(p, settings):
    read = p | "ReadAnnotations" >> ReadAnnotations(settings.annotations, annotation_reader(settings),
                                                    (settings.output, settings.run_id))
    rows = read.rows  # as read: rows_of's pairs come from the reader's step, before any clip is processed
    shuffled = read.pieces | "Reshuffle" >> beam.Reshuffle() | "ReadRows" >> ReadRows()  # rows spread, not shuffled
    fetching = "fetch" in settings.steps and settings.source in ("youtube", "cvdf")
    if fetching:
        checked = shuffled | "CheckLedger" >> beam.ParDo(CheckLedger(settings)).with_outputs("todo", main="done")
        if settings.source == "youtube":
            results = (checked.todo
                       | "ByYouTubeId" >> beam.Map(lambda job: (job.clip.youtube_id, job))
                       | "GroupByYouTubeId" >> beam.GroupByKey()
                       | "FetchClips" >> beam.ParDo(FetchClips(settings)))
        else:
            results = (p | "CVDF" >> FromCVDF(settings, checked.todo)
                       | "ProcessClips" >> beam.ParDo(ProcessClips(settings)))
        records = (checked.done, results) | "AllRecords" >> beam.Flatten()
    else:  # every record comes out of one step: no Flatten for a runner to hold whole
        records = shuffled | "ProcessClips" >> beam.ParDo(CheckAndProcess(settings))
    if "flow" in settings.steps:
        records = (records
                   | "ReshuffleFlow" >> beam.Reshuffle()
                   | "ComputeFlow" >> beam.ParDo(ComputeFlow(settings)).with_resource_hints(
                       **dict(settings.flow_resource_hints)))
    shards = records | "WriteShards" >> WriteShards(settings) if "shards" in settings.steps else None
    _ = records | "WriteReport" >> WriteReport(settings, shards)
    return records | "WriteOutputs" >> WriteOutputs(settings, settings.label_map.text(), rows_of(rows))


def row_of(row):
    """(split, order) of a clip or an invalid row's record."""
    if isinstance(row, Clip):
        return row.split, tuple(row.order)
    return row["split"], tuple(row["order"])


def rows_of(rows):
    """(split, order) of every row read: one per record the run will write."""
    return rows | "Rows" >> beam.Map(row_of)


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
                 | "PartURLs" >> beam.FlatMap(lambda _, s: part_urls(s.cvdf_parts, s.splits), self.settings)
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
