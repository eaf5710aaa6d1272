"""Pipeline assembly: annotations -> clips -> results -> outputs."""
import apache_beam as beam

from transforms.clips import CheckLedger, ComputeFlow, FetchClips, ProcessClips
from transforms.reader import AnnotationReader, ReadAnnotations
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
    checked = (read.clips
               | "Reshuffle" >> beam.Reshuffle()
               | "CheckLedger" >> beam.ParDo(CheckLedger(settings)).with_outputs("todo", main="done"))
    fetching = "fetch" in settings.steps
    if fetching and settings.source == "youtube":
        results = (checked.todo
                   | "ByYouTubeId" >> beam.Map(lambda job: (job.clip.youtube_id, job))
                   | "GroupByYouTubeId" >> beam.GroupByKey()
                   | "FetchClips" >> beam.ParDo(FetchClips(settings)))
    else:
        jobs = p | "CVDF" >> FromCVDF(settings, checked.todo) if fetching and settings.source == "cvdf" \
            else checked.todo
        results = jobs | "ProcessClips" >> beam.ParDo(ProcessClips(settings))
    if "flow" in settings.steps:
        results = (results
                   | "ReshuffleFlow" >> beam.Reshuffle()
                   | "ComputeFlow" >> beam.ParDo(ComputeFlow(settings)).with_resource_hints(
                       **dict(settings.flow_resource_hints)))
    records = (checked.done, results, read.invalid) | "AllRecords" >> beam.Flatten()
    shards = records | "WriteShards" >> WriteShards(settings) if "shards" in settings.steps else None
    _ = records | "WriteReport" >> WriteReport(settings, shards)
    return records | "WriteOutputs" >> WriteOutputs(settings, settings.label_map.text(), rows_of(read))


def rows_of(read):
    """(split, order) of every clip and invalid row read: one per record the run will write."""
    clips = read.clips | "ClipRows" >> beam.Map(lambda c: (c.split, tuple(c.order)))
    invalid = read.invalid | "InvalidRows" >> beam.Map(lambda r: (r["split"], tuple(r["order"])))
    return (clips, invalid) | "Rows" >> beam.Flatten()


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
