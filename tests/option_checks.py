"""The option groups' checks as tests/test_options_groups.py and test_source_chain.py look at them:
each builds its group(s) from merged option values through pipeline.options, as a run does, and
returns the values the tests compare."""
from pipeline.options import build_group, annotation_options, fetch_options
from transforms.flow import FlowOptions
from transforms.video import VideoOptions
from transforms.writers import OutputOptions


def check_annotations(m, layers):
    """{dataset, annotations, splits, labels, classes} of the annotation group; raises UsageError."""
    dataset, group = annotation_options(m, layers)
    return {"dataset": dataset, "annotations": group.annotations, "splits": group.splits, "labels": group.labels,
            "classes": group.classes}


def check_outputs(m):
    """The output group's steps (a list); raises UsageError."""
    return list(build_group(OutputOptions, m).steps)


def check_fetch(m, steps, layers, dataset):
    """(video_root, cvdf_parts, FetchOptions) of the sources and fetch groups; raises UsageError."""
    sources, fetch = fetch_options(m, steps, layers, dataset)
    return sources.video_root, sources.cvdf_parts, fetch


def check_video(m):
    """None once the video group's rules pass; raises UsageError."""
    build_group(VideoOptions, m)


def check_flow(m):
    """The flow stage's Beam resource hints; raises UsageError."""
    return build_group(FlowOptions, m).flow_resource_hints
