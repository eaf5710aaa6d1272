"""pipeline/options.py's checks of each stage group's options (annotations, outputs, fetch, video, flow),
on merged option values as resolve() makes them: what each returns, and each rule's one error line."""
import os

import pytest

from pipeline import options
from option_checks import check_annotations, check_fetch, check_flow, check_outputs, check_video
from pipeline.options import OPTIONS, UsageError
from transforms.fetch import FetchOptions

LABELS = ["abseiling", "air drumming", "answering questions"]
LAYER = {"name": "k", "label_map": LABELS, "annotation_sets": {"mine": ["a.csv", "gs://b/c.csv"]},
         "cvdf_parts": {"train": "https://h/train.txt"}}


def merged(**values):
    """The defaults, with `values` and the output, the annotations and the label map set as a run would."""
    m = {name: default for name, (_, default, _) in OPTIONS.items()}
    m.update(output="o", annotations=["x.csv"], label_map=LABELS)
    m.update(values)
    return m


def refused(check, *args, message):
    with pytest.raises(UsageError) as e:
        check(*args)
    assert str(e.value) == message


def test_annotations():
    got = check_annotations(merged(annotations=["mine", "d.csv"], splits=["validate", "train"],
                                   classes=["air drumming", "abseiling"]), [LAYER])
    assert got == {"dataset": "k", "annotations": (os.path.abspath("a.csv"), "gs://b/c.csv", os.path.abspath("d.csv")),
                   "splits": ("val", "train"), "labels": tuple(LABELS), "classes": ("air drumming", "abseiling")}
    assert check_annotations(merged(), [{"name": "first"}, {"name": "last"}])["dataset"] == "last"


def test_annotations_label_map_read_from_a_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n\n")
    assert check_annotations(merged(label_map=str(path)), [LAYER])["labels"] == ("a", "b")
    path.write_text("a\n\nb\n")
    refused(check_annotations, merged(label_map=str(path)), [LAYER],
            message=f"label map {path}: line 2 is blank (a label's index is its line number)")
    missing = tmp_path / "none.txt"
    with pytest.raises(UsageError, match=rf"^cannot read label map {missing}: .*No such file"):
        check_annotations(merged(label_map=str(missing)), [LAYER])


@pytest.mark.parametrize("values,layers,message", [
    ({}, [{}], "name a dataset: --dataset NAME, or --config FILE with a 'name:' key"),
    ({"annotations": None}, [LAYER], "no annotations: pass --annotations PATH_OR_URL"),
    ({"annotations": [","]}, [LAYER], "no annotations: pass --annotations PATH_OR_URL"),
    ({"splits": ["train", "holdout"]}, [LAYER], "--splits: unknown split 'holdout' (train, val, test)"),
    ({"limit": -1}, [LAYER], "--limit must be >= 0"),
    ({"trim_format": "%s/.."}, [LAYER], "--trim-format '%s/..' gives '0/..', not a safe file-name part"),
    ({"label_map": None}, [LAYER], "dataset 'k' has no label map: pass --label-map FILE"),
    ({"classes": ["abseiling", "juggling cats", "x"]}, [LAYER], "--classes: not in the k label map: juggling cats, x"),
])
def test_annotations_refused(values, layers, message):
    refused(check_annotations, merged(**values), layers, message=message)


def test_outputs():
    assert check_outputs(merged(steps=["fetch", "flow"], clips_per_shard=1)) == ["fetch", "flow"]


@pytest.mark.parametrize("values,message", [
    ({"output": None}, "no output: pass --output DIR_OR_URL"),
    ({"output": ""}, "no output: pass --output DIR_OR_URL"),
    ({"steps": ["fetch", "dance"]}, "--steps: unknown step 'dance' (choose from fetch,resize,rgb,flow,shards,filelists)"),
    ({"manifest_file_records": 0}, "--manifest-file-records must be >= 1"),
    ({"shard_size_mb": 0.0}, "--shard-size-mb must be > 0 and --clips-per-shard >= 1"),
    ({"clips_per_shard": 0}, "--shard-size-mb must be > 0 and --clips-per-shard >= 1"),
])
def test_outputs_refused(values, message):
    refused(check_outputs, merged(**values), message=message)


def test_fetch():
    root, parts, fetch = check_fetch(merged(video_root="videos/", cookies="gs://b/cookies.txt/", retries=2,
                                            ytdlp_opt=["ratelimit=1000"]), ["fetch"], [LAYER], "k")
    assert root == os.path.abspath("videos") and parts is None
    assert fetch == FetchOptions(cookies="gs://b/cookies.txt", retries=2, ytdlp_opts=(("ratelimit", 1000),))
    assert check_fetch(merged(), ["fetch"], [LAYER], "k") == (None, None, FetchOptions())
    # where the clips come from is checked only when the fetch step runs
    assert check_fetch(merged(source="local"), ["rgb"], [LAYER], "k")[:2] == (None, None)
    assert check_fetch(merged(source="cvdf"), ["fetch"], [LAYER], "k")[1] == {"train": "https://h/train.txt"}
    assert check_fetch(merged(source="cvdf", video_root="parts"), ["fetch"], [LAYER], "k")[1] == "parts"
    assert check_fetch(merged(source="cvdf"), ["rgb"], [LAYER, {"cvdf_parts": None}], "k")[1] is None


@pytest.mark.parametrize("values,layers,message", [
    ({"source": "local"}, [LAYER], "--source local needs --video-root DIR_OR_URL"),
    ({"source": "cvdf"}, [{"name": "k"}], "--source cvdf: k has no CVDF part lists; pass --video-root with "
                                          "a folder of parts"),
    ({"retries": -1}, [LAYER], "invalid fetch options: retries=-1"),
    ({"url_template": "http://x/"}, [LAYER], "url template 'http://x/': it lacks {youtube_id}"),
])
def test_fetch_refused(values, layers, message):
    refused(check_fetch, merged(**values), ["fetch"], layers, "k", message=message)


def test_video():
    assert check_video(merged(new_width=340, new_height=256, frame_index_base=0, min_duration_ratio=1, scale=2)) \
        is None


@pytest.mark.parametrize("values,message", [
    ({"min_duration_ratio": 1.5}, "--min-duration-ratio must be between 0 and 1"),
    ({"min_duration_ratio": -0.1}, "--min-duration-ratio must be between 0 and 1"),
    ({"frame_index_base": 2}, "--frame-index-base must be 0 or 1"),
    ({"new_width": 340}, "--new-width and --new-height go together"),
    ({"new_height": 256}, "--new-width and --new-height go together"),
    ({"scale": -1}, "--scale must be >= 0"),
    ({"trim_crf": -1}, "--trim-crf must be >= 0"),
    ({"crf": -0.5}, "--crf must be >= 0"),
    ({"new_short": -2}, "--new-short must be >= 0"),
    ({"new_width": -2, "new_height": -2}, "--new-width must be >= 0"),
    ({"scale": 1}, "--scale must be >= 2 and --flow-bound > 0"),
])
def test_video_refused(values, message):
    refused(check_video, merged(**values), message=message)


def test_flow():
    assert check_flow(merged()) == ()
    assert check_flow(merged(flow_resource_hint=["min_ram=8GB", "cpu_count = 2"])) == \
        (("cpu_count", "2"), ("min_ram", "8GB"))
    assert check_flow(merged(flow_resource_hint={"min_ram": "4GB"})) == (("min_ram", "4GB"),)


@pytest.mark.parametrize("values,message", [
    ({"flow_bound": 0.0}, "--scale must be >= 2 and --flow-bound > 0"),
    ({"flow_resource_hint": ["bogus=1"]}, "--flow-resource-hint: Unknown resource hint: bogus."),
])
def test_flow_refused(values, message):
    refused(check_flow, merged(**values), message=message)


def test_settings_takes_each_group(tmp_path):
    layers = [LAYER]
    m = merged(annotations=["mine"], output="gs://out/run/", steps=["fetch", "rgb"], source="cvdf",
               flow_resource_hint=["min_ram=8GB"], progress_interval=3)
    s = options._settings(m, None, layers)
    assert (s.dataset, s.reading.annotations, s.outputs.output, s.outputs.steps) == ("k", (os.path.abspath("a.csv"), "gs://b/c.csv"),
                                                             "gs://out/run", ("fetch", "rgb"))
    assert s.sources.cvdf_parts == {"train": "https://h/train.txt"} and s.fetch == FetchOptions()
    assert s.flow.flow_resource_hints == (("min_ram", "8GB"),) and s.progress_interval == 10.0
    assert s.reading.labels == tuple(LABELS) and s.reading.splits == ("train", "val", "test")
