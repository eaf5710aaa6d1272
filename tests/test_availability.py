"""Availability per split against the published figures: summary.json's `availability`, the
report's table and its chart (report/availability.png), the figures kept in the dataset configs."""
import collections
import json

import cv2
import numpy as np
import pytest

from conftest import ROOT, make_video, read_records, run_cli, settings_of, write_csv
from pipeline import options
from test_report import Page, record, stats_of
from transforms import report, writers

LABELS = ["abseiling", "hurling (sport)", "zumba"]
HEAD = "label,youtube_id,time_start,time_end,split\n"
PUBLISHED = {"cvdf": {"source": "the mirror's count (example)", "train": 5, "val": 4},
             "mmaction2": {"source": "a copy's count (example)", "val": 3}}


def pixels(png_bytes):
    img = cv2.imdecode(np.frombuffer(png_bytes, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return img


# ---- a real run

@pytest.fixture
def run_dir(tmp_path):
    """val: 3 clips under --video-root, 2 nowhere, 1 invalid row; train: 1 under --video-root,
    1 only in the output tree (missing for --source local). The published figures come from a
    --config layer. Yields the output and the command's first arguments."""
    root, out = tmp_path / "videos", tmp_path / "out"
    val = [("abseiling", "aaaaaaaaaa1"), ("zumba", "aaaaaaaaaa2"), ("hurling (sport)", "aaaaaaaaaa3"),
           ("zumba", "nowhere0004"), ("abseiling", "nowhere0005")]
    for _, yid in val[:3] + [("abseiling", "tttttttttt1")]:
        make_video(root / f"{yid}_000000_000004.mp4", seconds=4)
    make_video(out / "videos_train" / "zumba" / "tttttttttt2_000000_000004.mp4", seconds=4)
    rows = ([f"{label},{yid},0,4,val" for label, yid in val] + ["zumba,badtime0006,x,4,val"]
            + ["abseiling,tttttttttt1,0,4,train", "zumba,tttttttttt2,0,4,train"])
    ann = write_csv(tmp_path / "ann.csv", HEAD + "\n".join(rows) + "\n")
    lm = write_csv(tmp_path / "labels.txt", "".join(f"{x}\n" for x in LABELS))
    config = write_csv(tmp_path / "figures.yaml", json.dumps({"published": PUBLISHED}))
    base = ("--dataset", "kinetics400", "--config", config, "--label-map", lm, "--annotations", ann,
            "--output", out, "--splits", "train,val")
    assert run_cli(*base, "--source", "local", "--video-root", root, "--steps", "fetch,filelists") == 0
    return out, base


def test_summary_availability_of_a_run(run_dir):
    run_dir, base = run_dir
    summary = json.loads((run_dir / "summary.json").read_text())
    # today's keys and values as they were
    assert summary["splits"] == {"train": {"missing": 1, "ok": 1}, "val": {"invalid": 1, "missing": 2, "ok": 3}}
    assert summary["total"] == {"invalid": 1, "missing": 3, "ok": 4}
    assert list(summary) == ["splits", "total", "availability"]
    assert summary["availability"] == {
        "splits": {
            "train": {"annotated": 2, "served": {"local": 1}, "missing": {"missing": 1},
                      "published": {"cvdf": 5}},
            "val": {"annotated": 6, "served": {"local": 3}, "missing": {"invalid": 1, "missing": 2},
                    "published": {"cvdf": 4, "mmaction2": 3}}},
        "references": {"cvdf": "the mirror's count (example)", "mmaction2": "a copy's count (example)"}}
    kinds = collections.Counter((r["split"], r.get("source_kind")) for r in read_records(run_dir)
                                if r["status"] in ("ok", "exists"))
    assert kinds == {("val", "local"): 3, ("train", "local"): 1}, "as the records say"

    page = Page((run_dir / "report.html").read_text())
    assert page.refs == [report.AVAILABILITY, report.SHEET]
    assert page.value({"availability": "val"}, {"col": "annotated"}) == "6"
    assert page.value({"availability": "val"}, {"col": "served-local"}) == "3"
    assert page.value({"availability": "val"}, {"col": "missing-missing"}) == "2"
    assert page.value({"availability": "val"}, {"col": "missing-invalid"}) == "1"
    assert page.value({"availability": "val"}, {"col": "published-mmaction2"}) == "3"
    assert page.value({"availability": "train"}, {"col": "missing-missing"}) == "1"
    assert page.value({"availability": "train"}, {"col": "published-mmaction2"}) == ""
    assert "the mirror&#x27;s count (example)" in (run_dir / "report.html").read_text()
    first = (run_dir / report.AVAILABILITY).read_bytes()
    splits = summary["availability"]["splits"]
    assert pixels(first).shape == (sum(panel_height(splits[s]) for s in ("train", "val")), report.CHART_W, 3)
    assert first == report.png_bytes(report.availability_chart(splits, "kinetics400")), \
        "the report's counts (from the records) are the summary's (from the manifest parts)"

    # file lists alone over the tree: the clips made before stay served by their source (their
    # records keep it), the one found in the tree alone is served by the tree
    assert run_cli(*base, "--steps", "filelists") == 0
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["splits"] == {"train": {"exists": 2}, "val": {"exists": 3, "invalid": 1, "missing": 2}}
    assert again["availability"]["splits"]["train"]["served"] == {"local": 1, "tree": 1}
    assert again["availability"]["splits"]["val"]["served"] == {"local": 3}
    assert again["availability"]["splits"]["val"]["missing"] == {"invalid": 1, "missing": 2}
    chart = (run_dir / report.AVAILABILITY).read_bytes()
    assert chart != first and chart == report.png_bytes(report.availability_chart(
        again["availability"]["splits"], "kinetics400"))


# ---- counting

def test_availability_counts():
    counts = {"val": collections.Counter(ok=5, exists=2, missing=3, unavailable=1), "test": collections.Counter(),
              "unknown": collections.Counter(invalid=2)}
    served = {"val": collections.Counter(cvdf=4, youtube=2, local=1, cache=0)}
    published = writers.published_figures({"mmaction2": {"source": "m", "val": 9}, "cvdf": {"source": " c ", "test": 7}})
    got = writers.availability(counts, served, published)
    assert got == {
        "splits": {"test": {"annotated": 0, "served": {}, "missing": {}, "published": {"cvdf": 7}},
                   "unknown": {"annotated": 2, "served": {}, "missing": {"invalid": 2}, "published": {}},
                   "val": {"annotated": 11, "served": {"cvdf": 4, "local": 1, "youtube": 2},
                           "missing": {"missing": 3, "unavailable": 1}, "published": {"mmaction2": 9}}},
        "references": {"cvdf": "c", "mmaction2": "m"}}
    assert writers.availability(counts, served, {})["references"] == {}
    assert json.dumps(got) == json.dumps(writers.availability(dict(reversed(counts.items())), served, published))


def test_entries_and_parts_count_source_kinds():
    """A manifest part's `served` counts its good records by source kind, guessed for older records."""
    recs = [record("val", "x", 1, source_kind="cvdf"), record("val", "x", 2, source="cvdf:part_1.tar.gz/a.mp4"),
            record("val", "x", 3, "exists"), record("val", "x", 4, source="/videos/b.mp4"),
            record("val", "x", 5, "missing", "gone", source_kind="local"), record("val", "x", 6, source_kind="youtube")]
    kinds = [writers.record_entry(r)[2].get(writers.SERVED, "") for r in recs]
    assert kinds == ["cvdf", "cvdf", "tree", writers.UNKNOWN_SOURCE, "", "youtube"]
    parts = [{"split": "val", "counts": {"ok": 2}, "served": {"cvdf": 2}},
             {"split": "val", "counts": {"ok": 1, "missing": 1}, "served": {"youtube": 1}},
             {"split": "train", "counts": {}, "served": {}}]
    assert writers.split_counts(parts, "served") == {"val": {"cvdf": 2, "youtube": 1}, "train": {}}
    assert writers.split_counts(parts) == {"val": {"ok": 3, "missing": 1}, "train": {}}


@pytest.mark.parametrize("bad, why", [
    ({"cvdf": {"train": 3}}, "published.cvdf: a mapping with a source"),
    ({"cvdf": {"source": "s", "validate": 3}}, "published.cvdf: validate: not a split"),
    ({"cvdf": {"source": "s", "train": -1}}, "published.cvdf: train: not a split"),
    ({"cvdf": {"source": "s", "train": "240,258"}}, "published.cvdf: train: not a split"),
    ({"cvdf": {"source": "s", "train": True}}, "published.cvdf: train: not a split"),
    (["cvdf"], "published: a mapping")])
def test_bad_published_figures_are_a_usage_error(tmp_path, bad, why):
    config = write_csv(tmp_path / "c.yaml", json.dumps({"published": bad}))
    with pytest.raises(options.UsageError, match=why):
        options.resolve(["--dataset", "kinetics400", "--config", str(config), "--annotations", "a.csv",
                         "--output", str(tmp_path / "out")])


def builtin(name):
    return writers.published_figures(
        options.load_yaml((ROOT / "configs" / f"{name}.yaml").read_text(), name).get("published"))


def test_dataset_configs_carry_the_published_figures_with_their_source():
    figures = {name: {ref: {k: v for k, v in f.items() if k != "source"} for ref, f in builtin(name).items()}
               for name in options.DATASETS}
    assert figures == {
        "kinetics400": {"cvdf": {"train": 240258, "val": 19881, "test": 38685},
                        "mmaction2": {"train": 240436, "val": 19796}},
        "kinetics600": {"mmaction2": {"train": 383393, "val": 27910}},
        "kinetics700": {"mmaction2": {"train": 542357, "val": 34824}},
        "kinetics700_2020": {}, "demo": {}}
    sources = {ref: f["source"] for name in options.DATASETS for ref, f in builtin(name).items()}
    assert "github.com/cvdfoundation/kinetics-dataset" in sources["cvdf"]
    assert "github.com/open-mmlab/mmaction2" in sources["mmaction2"]


def test_report_stats_count_served_like_the_summary():
    recs = [record("val", "a", i, source_kind="cvdf") for i in range(3)] + \
           [record("val", "b", 10, "exists"), record("train", "a", 11, source_kind="youtube"),
            record("train", "a", 12, "unavailable", "gone"), record("val", "b", 13, "missing", "no file")]
    stats = stats_of(recs)
    assert stats["served"] == {("val", "cvdf"): 3, ("val", "tree"): 1, ("train", "youtube"): 1}
    avail = report.stats_availability(stats, writers.published_figures(PUBLISHED))
    counts = collections.defaultdict(collections.Counter)
    served = collections.defaultdict(collections.Counter)
    for r in recs:
        counts[r["split"]][r["status"]] += 1
    for r in recs:
        kind = writers.record_entry(r)[2].get(writers.SERVED)
        if kind:
            served[r["split"]][kind] += 1
    assert avail == writers.availability(counts, served, writers.published_figures(PUBLISHED))
    assert avail["splits"]["val"] == {"annotated": 5, "served": {"cvdf": 3, "tree": 1}, "missing": {"missing": 1},
                                      "published": {"cvdf": 4, "mmaction2": 3}}


# ---- the chart

def panel_height(entry):
    return report.CHART_TITLE_H + report.CHART_ROW_H * len(report.chart_bars(entry)) + report.CHART_PAD


SPLITS = {"val": {"annotated": 100, "served": {"cvdf": 50, "youtube": 30}, "missing": {"unavailable": 20},
                  "published": {"cvdf": 90, "mmaction2": 80}},
          "train": {"annotated": 40, "served": {"local": 40}, "missing": {}, "published": {}}}


def bar_width(img, top, index, colour):
    """Pixels of `colour` across the middle of bar `index` of the panel starting at row `top`."""
    y = top + report.CHART_TITLE_H + index * report.CHART_ROW_H + report.CHART_ROW_H // 2
    return int((img[y] == colour).all(axis=1).sum())


def test_chart_size_bars_and_bytes():
    data = report.png_bytes(report.availability_chart(SPLITS, "kinetics400"))
    img = pixels(data)
    train, val = panel_height(SPLITS["train"]), panel_height(SPLITS["val"])
    assert img.shape == (train + val, report.CHART_W, 3)
    labels = [label for label, *_ in report.chart_bars(SPLITS["val"])]
    assert labels == ["annotated", "served: all sources", "served: cvdf", "served: youtube", "missing: unavailable",
                      "published: cvdf", "published: mmaction2"]
    assert [label for label, *_ in report.chart_bars(SPLITS["train"])] == ["annotated", "served: local"]
    # train's panel first; in val's, the bars share one scale (the largest count, 100, is the longest)
    widths = [bar_width(img, train, i, colour) for i, (_, _, colour, _) in enumerate(report.chart_bars(SPLITS["val"]))]
    assert widths[0] > 300
    for w, (_, n, _, _) in zip(widths, report.chart_bars(SPLITS["val"])):
        assert abs(w - widths[0] * n / 100) <= 1, widths
    assert bar_width(img, 0, 1, report.SERVED_COLOUR) == bar_width(img, 0, 0, report.ANNOTATED_COLOUR) > 300
    text = img[train:train + report.CHART_TITLE_H, :report.CHART_LABEL_W]
    assert text.std() > 0, "the panel has a title"

    assert report.png_bytes(report.availability_chart(json.loads(json.dumps(SPLITS)), "kinetics400")) == data
    changed = json.loads(json.dumps(SPLITS))
    changed["val"]["missing"]["unavailable"] = 21
    other = report.png_bytes(report.availability_chart(changed, "kinetics400"))
    assert other != data and pixels(other).shape == img.shape
    assert report.availability_chart({}) is None


def test_report_writes_the_chart_and_removes_a_stale_one(tmp_path):
    recs = [record("val", "a", 1, source_kind="local"), record("val", "a", 2, "missing", "no file")]
    s = settings_of(output=str(tmp_path), dataset="kinetics400", steps=("fetch",), flat=False,
                    frame_index_base=1, run_id="run1", published=writers.published_figures(PUBLISHED))
    stats = stats_of(recs)
    report.write_report(stats, s)
    data = (tmp_path / report.AVAILABILITY).read_bytes()
    avail = report.stats_availability(stats, s.published)
    assert data == report.png_bytes(report.availability_chart(avail["splits"], "kinetics400"))
    assert Page((tmp_path / "report.html").read_text()).refs == [report.AVAILABILITY]
    assert pixels(data).shape == (panel_height(avail["splits"]["val"]), report.CHART_W, 3)

    empty = report.ReportStats()
    report.write_report(empty.extract_output(empty.create_accumulator()), s)
    assert not (tmp_path / report.AVAILABILITY).exists()
    assert Page((tmp_path / "report.html").read_text()).refs == []
