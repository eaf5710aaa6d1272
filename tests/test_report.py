"""The run report: counts, reasons, throughput, contact sheet grid and self-contained HTML."""
import html.parser
import pathlib
import random

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from conftest import make_video, settings_of
from transforms import report, shards, storage
from transforms.records import Clip

COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255), 4: (255, 255, 0)}  # BGR per rgb frame index


def settings(output, **kw):
    values = dict(output=str(output), dataset="demo", steps=("fetch", "rgb", "flow"), flat=False,
                  frame_index_base=1, run_id="run1")
    values.update(kw)
    return settings_of(**values)


def record(split, class_dir, n, status="ok", reason="", **fields):
    clip = Clip(split, class_dir.replace("_", " "), n % 5, class_dir, f"yid{n:08d}", 0, 10,
                f"yid{n:08d}_000000_000010", "a.csv", n, (0, n))
    return clip.record(status, reason, **{"run_id": "run1", **fields})


@pytest.fixture
def outputs(tmp_path):
    """Good clips with rgb+flow JPEGs, with an mp4 only, one whose files are gone, and failures."""
    out = tmp_path / "out"
    recs = []
    for n, cls in enumerate(["abseiling", "zumba"]):
        rel = f"rawframes_train/{cls}/yid{n:08d}_000000_000010"
        for i, colour in COLOURS.items():
            img = np.zeros((64, 96, 3), np.uint8)
            img[:] = colour
            (out / rel).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / rel / f"img_{i:05d}.jpg"), img)
            if i < 4:
                cv2.imwrite(str(out / rel / f"flow_x_{i:05d}.jpg"), np.full((64, 96), 250, np.uint8))
                cv2.imwrite(str(out / rel / f"flow_y_{i:05d}.jpg"), np.full((64, 96), 128, np.uint8))
        recs.append(record("train", cls, n, outputs={"rgb": rel, "flow": rel}, rgb_frames=4, flow_frames=3,
                           sizes={"rgb": 4000, "flow": 3000}, seconds={"rgb": 1.0, "flow": 9.0, "total": 10.0}))
    rel = "videos_val_256p_dense_cache/playing_guitar/yid00000002_000000_000010.mp4"
    make_video(out / rel, seconds=2, fps=10, width=96, height=64)
    recs.append(record("val", "playing_guitar", 2, "exists", outputs={"resized": rel}, sizes={"resized": 1000},
                       seconds={"total": 0.5}, run_id="old"))
    recs.append(record("val", "yoga", 3, outputs={"video": "videos_val/yoga/gone.mp4"}, seconds={"total": 1.0}))
    recs.append(record("train", "zumba", 10, "missing", "videos_train/zumba/x_000001.mp4: no such file"))
    recs.append(record("train", "zumba", 11, "missing", "videos_train/zumba/y_000002.mp4: no such file"))
    recs.append(record("val", "abseiling", 12, "corrupt", "decode error after 17 frames: x", seconds={"total": 2.0}))
    recs.append({"clip_id": "line-9", "split": "unknown", "class_dir": "", "status": "invalid",
                 "reason": "bad time_start", "label_index": None})
    return out, recs


def stats_of(recs, rows=report.SHEET_ROWS):
    fn = report.ReportStats("run1", rows)
    half = len(recs) // 2
    parts = [fn.create_accumulator(), fn.create_accumulator()]
    for i, r in enumerate(recs):
        fn.add_input(parts[i >= half], r)
    return fn.extract_output(fn.merge_accumulators(parts))


class Page(html.parser.HTMLParser):
    """References (src/href) and table rows: [(row data-* attrs, [(cell data-* attrs, text)])]."""

    def __init__(self, text):
        super().__init__()
        self.refs, self.rows, self.cell = [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.refs += [attrs[k] for k in ("src", "href") if k in attrs]
        data = {k[5:]: v for k, v in attrs.items() if k.startswith("data-")}
        if tag == "tr":
            self.rows.append((data, []))
        if tag == "td":
            self.cell = [data, ""]
            self.rows[-1][1].append(self.cell)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None

    def value(self, row, cell=None, column=None):
        """The text of the cell in the row whose data-* include `row`, by data-* or by column."""
        for attrs, cells in self.rows:
            if row.items() <= attrs.items():
                return cells[column][1] if cell is None else next(t for a, t in cells if cell.items() <= a.items())
        raise KeyError(row)


def test_stats_count_and_sample_independent_of_order(outputs):
    _, recs = outputs
    stats = stats_of(recs)
    assert stats["counts"][("train", "zumba", "missing")] == 2
    assert stats["counts"][("unknown", "", "invalid")] == 1
    assert stats["reasons"][("missing", "<path>: no such file")] == 2
    assert stats["reasons"][("corrupt", "decode error after # frames: x")] == 1
    assert stats["seconds"]["flow"] == (18.0, 2) and stats["seconds"]["total"] == (23.0, 4)
    assert stats["bytes"] == {"rgb": 8000, "flow": 6000, "resized": 1000}
    assert [s["class_dir"] for s in stats["sample"]] == ["abseiling", "playing_guitar", "yoga", "zumba"]
    for seed in range(3):
        shuffled = list(recs)
        random.Random(seed).shuffle(shuffled)
        assert stats_of(shuffled) == stats
    assert len(stats_of(recs, rows=2)["sample"]) == 2


def test_reason_kinds_bounded():
    fn = report.ReportStats()
    acc = fn.create_accumulator()
    for i in range(report.MAX_REASONS + 50):
        fn.add_input(acc, record("val", "x", i, "failed", f"error {'ab'[i % 2]}{'x' * (i % 700)}"))
    assert len(acc["reasons"]) <= report.MAX_REASONS + 1
    assert sum(acc["reasons"].values()) == report.MAX_REASONS + 50


def test_contact_sheet_grid(outputs):
    out, recs = outputs
    stats = stats_of(recs)
    report.write_report(stats, settings(out))
    png = cv2.imread(str(out / report.SHEET))
    rows = 1 + len(stats["sample"])
    assert png.shape == (rows * report.CELL_H, report.COLUMNS * report.CELL_W, 3)

    def cell(r, c):
        return png[r * report.CELL_H:(r + 1) * report.CELL_H, c * report.CELL_W:(c + 1) * report.CELL_W]

    def centre(r, c):
        return cell(r, c)[report.CELL_H // 2, report.CELL_W // 2].astype(int)

    # row 1: abseiling from its JPEGs: frames 1..4 in order, flow pointing right -> red
    for c, colour in enumerate(COLOURS.values(), start=1):
        assert np.abs(centre(1, c) - colour).max() < 40
    b, g, r = centre(1, 1 + report.RGB_COLS)
    assert r > 150 and b < 60 and g < 60
    # row 2: playing_guitar decoded from its mp4, no flow
    assert all(cell(2, c).std() > 10 for c in range(1, 1 + report.RGB_COLS))
    assert centre(2, 1 + report.RGB_COLS).tolist() == [70, 70, 70]
    # row 3: yoga, whose video is gone: an error row, not a failed report
    assert cell(3, 1).mean() > 60 and cell(3, 2).std() == 0
    assert cell(0, 0).std() > 0 and cell(1, 0).std() > 0  # header and text cells carry writing


def test_html_counts_and_references(outputs):
    out, recs = outputs
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        _ = p | beam.Create(recs) | report.WriteReport(settings(str(out)))
    page = Page((out / "report.html").read_text())
    assert page.refs == [report.AVAILABILITY, report.SHEET]
    assert all((out / ref).is_file() for ref in page.refs)
    assert page.value({"split": "train"}, {"status": "ok"}) == "2"
    assert page.value({"split": "train"}, {"status": "missing"}) == "2"
    assert page.value({"split": "val"}, {"status": "all"}) == "3"
    assert page.value({"split": "total"}, {"status": "all"}) == "8"
    assert page.value({"class": "zumba"}, {"split": "train"}) == "1/3"
    assert page.value({"class": "abseiling"}, column=-1) == "corrupt 1"
    assert [page.value({"step": "flow"}, column=c) for c in range(5)] == ["flow", "2", "18.0", "9.000", "0.11"]
    assert page.value({"kind": "rgb"}, column=1) == "8000"
    text = (out / "report.html").read_text()
    assert "&lt;path&gt;: no such file" in text and "http" not in text.lower().replace("http-equiv", "")
    assert 'id="shards"' not in text and not any(a.get("step") == "shards" for a, _ in page.rows)


def run_with_shards(recs, s):
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        records = p | beam.Create(recs)
        _ = records | report.WriteReport(s, records | shards.WriteShards(s))
    return Page((pathlib.Path(s.outputs.output) / "report.html").read_text())


def test_html_shards_table(outputs):
    out, recs = outputs
    s = settings(str(out), steps=("rgb", "flow", "shards"), shard_frames=True, shard_size_mb=1024,
                 clips_per_shard=1)
    page = run_with_shards(recs, s)
    tars = {split: sorted((out / "shards" / split).glob("*.tar")) for split in ("train", "val")}
    assert [len(tars["train"]), len(tars["val"])] == [2, 1]
    for split, clips in (("train", 2), ("val", 1), ("total", 3)):
        files = tars.get(split, tars["train"] + tars["val"])
        assert page.value({"shards": split}, {"col": "shards"}) == str(len(files))
        assert page.value({"shards": split}, {"col": "clips"}) == str(clips)
        assert page.value({"shards": split}, {"col": "bytes"}) == str(sum(f.stat().st_size for f in files))
        assert page.value({"shards": split}, {"col": "built"}) == str(len(files))
    assert page.value({"step": "shards"}, column=1) == "3"
    again = run_with_shards(recs, s)
    assert again.value({"shards": "total"}, {"col": "clips"}) == "3"
    assert again.value({"shards": "total"}, {"col": "built"}) == "0"
    assert [again.value({"step": "shards"}, column=c) for c in (1, 3, 4)] == ["0", "-", "-"]


def test_empty_run_writes_a_report_without_a_sheet(tmp_path):
    (tmp_path / "report").mkdir()
    (tmp_path / report.SHEET).write_bytes(b"stale")
    fn = report.ReportStats()
    url = report.write_report(fn.extract_output(fn.create_accumulator()), settings(tmp_path))
    page = Page(pathlib.Path(url).read_text())
    assert page.refs == [] and page.value({"split": "total"}, {"status": "all"}) == "0"
    assert not (tmp_path / report.SHEET).exists()
    assert storage.exists(url)
