"""Pipeline assembly: annotations -> clips -> results -> outputs."""
import apache_beam as beam

from transforms.clips import ProcessClips
from transforms.reader import AnnotationReader, ReadAnnotations
from transforms.writers import WriteOutputs


def annotation_reader(settings):
    return AnnotationReader(settings.label_map, splits=settings.splits, classes=settings.classes,
                            limit=settings.limit, trim_format=settings.trim_format,
                            class_dirs=settings.class_dirs, dataset=settings.dataset)


def build(p, settings):
    read = p | "ReadAnnotations" >> ReadAnnotations(settings.annotations, annotation_reader(settings))
    results = (read.clips
               | "Reshuffle" >> beam.Reshuffle()
               | "ProcessClips" >> beam.ParDo(ProcessClips(settings)))
    records = (results, read.invalid) | "AllRecords" >> beam.Flatten()
    return records | "WriteOutputs" >> WriteOutputs(settings, settings.label_map.text())
