"""The run report: report.html beside the outputs, report/availability.png and report/contact_sheet.png.

The HTML is self-contained (inline CSS, no script) and references only the PNGs. It shows
counts per split and status, the availability per split (rows annotated, served by each source
kind, missing by status, and the dataset's published reference counts: a table and a bar
chart), per class, the most common failure reasons, seconds and throughput per step, bytes per
output kind, the shards per split (when the run wrote them), and the contact sheet.

Availability chart: one panel per split, CHART_W pixels wide, CHART_TITLE_H + CHART_ROW_H per
bar + CHART_PAD high; one horizontal bar per count (chart_bars), all on one scale within the
panel, each labelled with its name and number (served and missing also as a share of the rows
annotated).

Contact sheet: a grid of cells CELL_W x CELL_H pixels, COLUMNS wide and 1 + rows high. The
top row names the columns; then one row per sampled clip: a text cell (class, clip id,
split), RGB_COLS frames spread over the clip (its RGB JPEGs, else decoded from its mp4) and
FLOW_COLS flow pairs as HSV colour (hue = direction, brightness = magnitude, full at a quarter
of the flow bound),
or a grey "no flow" cell. The sample is at most SHEET_ROWS clips, one per class, chosen by a
hash of the clip's key, so it does not depend on the order records arrive in.
"""
import collections
import hashlib
import html
import re

import apache_beam as beam
import av
import cv2
import numpy as np

from transforms import layout, storage
from transforms.records import GOOD, SPLITS, STATUSES, ClipRecord
from transforms.writers import UNKNOWN_SOURCE, availability

CELL_W, CELL_H = 160, 120
RGB_COLS, FLOW_COLS = 4, 2
COLUMNS = 1 + RGB_COLS + FLOW_COLS
SHEET_ROWS = 8
TOP_REASONS = 20
MAX_REASONS = 500
STEPS = ("fetch", "decode", "trim", "resize", "rgb", "flow", "total", "shards")
SHEET = "report/contact_sheet.png"
AVAILABILITY = "report/availability.png"
CHART_W, CHART_LABEL_W, CHART_ROW_H, CHART_TITLE_H, CHART_PAD = 800, 190, 22, 30, 10
FLOW_ZERO = 127.5  # quantised flow: 128 is no motion, 0/255 are -/+ the bound (20 px by default)
FLOW_FULL = FLOW_ZERO / 4  # full brightness at a quarter of the bound (5 px)


def reason_kind(reason):
    """A failure reason with the clip-specific parts (paths, anything with a digit) masked, for counting."""
    text = re.sub(r"[^\s:;,]*/[^\s:;,]*", "<path>", reason or "")
    return re.sub(r"[^\s:;,'\"()]*\d[^\s:;,'\"()]*", "#", text).strip()[:200] or "(no reason given)"


def _clip_hash(rec):
    return hashlib.sha1(f"{rec['split']}/{rec['class_dir']}/{rec['clip_id']}".encode()).hexdigest()


def _sampleable(rec):
    outputs = rec.get("outputs") or {}
    return rec["status"] in GOOD and any(k in outputs for k in ("resized", "video", "rgb"))


class ReportStats(beam.CombineFn):
    """Records in; counts, good records per (split, source kind), failure reasons, seconds per
    step, bytes and a contact-sheet sample out.

    Seconds count only for records of `run_id` (earlier runs' results reused from the ledger
    carry old timings). Reasons are counted by `reason_kind`; past MAX_REASONS kinds the
    rarest fold into "(other reasons)", so memory stays bounded.
    """

    def __init__(self, run_id=None, rows=SHEET_ROWS):
        self.run_id = run_id
        self.rows = rows

    def create_accumulator(self):
        return {"counts": collections.Counter(), "reasons": collections.Counter(),
                "seconds": {}, "bytes": collections.Counter(), "sample": {}, "served": collections.Counter()}

    def add_input(self, acc, rec):
        status = rec["status"]
        acc["counts"][(rec["split"], rec.get("class_dir") or "", status)] += 1
        if status not in GOOD:
            acc["reasons"][(status, reason_kind(rec.get("reason")))] += 1
            self._bound(acc["reasons"])
        if self.run_id is None or rec.get("run_id") == self.run_id:
            for step, seconds in (rec.get("seconds") or {}).items():
                total, n = acc["seconds"].get(step, (0.0, 0))
                acc["seconds"][step] = (total + seconds, n + 1)
        if status in GOOD:
            acc["bytes"].update(rec.get("sizes") or {})
            acc["served"][(rec["split"], ClipRecord.from_dict(rec).source_kind or UNKNOWN_SOURCE)] += 1
        if _sampleable(rec):
            entry = (_clip_hash(rec), {k: rec.get(k) for k in ("split", "class_dir", "clip_id", "label",
                                                                  "outputs", "rgb_frames", "flow_frames")})
            best = acc["sample"].get(rec["class_dir"])
            if best is None or entry[0] < best[0]:
                acc["sample"][rec["class_dir"]] = entry
        return acc

    @staticmethod
    def _bound(reasons):
        if len(reasons) > MAX_REASONS:
            ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
            for key, n in ranked[MAX_REASONS // 2:]:
                del reasons[key]
                reasons[(key[0], "(other reasons)")] += n

    def merge_accumulators(self, accs):
        out = self.create_accumulator()
        for acc in accs:
            out["counts"].update(acc["counts"])
            out["reasons"].update(acc["reasons"])
            self._bound(out["reasons"])
            out["bytes"].update(acc["bytes"])
            out["served"].update(acc["served"])
            for step, (total, n) in acc["seconds"].items():
                t0, n0 = out["seconds"].get(step, (0.0, 0))
                out["seconds"][step] = (t0 + total, n0 + n)
            for cls, entry in acc["sample"].items():
                if cls not in out["sample"] or entry[0] < out["sample"][cls][0]:
                    out["sample"][cls] = entry
        return out

    def extract_output(self, acc):
        picked = sorted(acc["sample"].values(), key=lambda e: e[0])[:self.rows]
        return {"counts": dict(acc["counts"]), "reasons": dict(acc["reasons"]),
                "seconds": dict(acc["seconds"]), "bytes": dict(acc["bytes"]), "served": dict(acc["served"]),
                "sample": sorted((e for _, e in picked), key=lambda e: (e["class_dir"], e["split"], e["clip_id"]))}


# ---- contact sheet

def _fit(img):
    """`img` letterboxed into one cell."""
    cell = np.full((CELL_H, CELL_W, 3), 24, np.uint8)
    h, w = img.shape[:2]
    scale = min((CELL_W - 4) / w, (CELL_H - 4) / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    y, x = (CELL_H - nh) // 2, (CELL_W - nw) // 2
    cell[y:y + nh, x:x + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return cell


FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.34


def _text_cell(lines, shade=48):
    cell = np.full((CELL_H, CELL_W, 3), shade, np.uint8)
    for i, line in enumerate(lines[:8]):
        cv2.putText(cell, line, (4, 14 + 14 * i), FONT, FONT_SCALE, (235, 235, 235), 1, cv2.LINE_AA)
    return cell


def _wrap(text):
    """`text` cut into lines that fit a cell."""
    lines = [""]
    for ch in text:
        if lines[-1] and cv2.getTextSize(lines[-1] + ch, FONT, FONT_SCALE, 1)[0][0] > CELL_W - 8:
            lines.append("")
        lines[-1] += ch
    return lines


def _spread(n, k):
    """k indices spread evenly over range(n) (fewer if n < k)."""
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)}) if n else []


def _decode(data, flags=cv2.IMREAD_COLOR):
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
    if img is None:
        raise ValueError("undecodable JPEG")
    return img


def _jpegs(base, names, flags=cv2.IMREAD_COLOR):
    urls = [storage.join(base, n) for n in names]
    got = storage.read_bytes_many(urls)
    return [_decode(got[u], flags) if u in got else None for u in urls]


def _video_frames(url, k):
    """k frames spread over the video at `url` (decoded with PyAV, thumbnails kept)."""
    thumbs = []
    with storage.open_input(url) as f, av.open(f) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            thumbs.append(_fit(frame.to_ndarray(format="bgr24")))
    return [thumbs[i] for i in _spread(len(thumbs), k)]


def flow_colour(fx, fy):
    """HSV colour coding of one quantised flow pair (uint8 images, 128 = still)."""
    dx = fx.astype(np.float32) - FLOW_ZERO
    dy = fy.astype(np.float32) - FLOW_ZERO
    mag, ang = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    hsv = np.zeros((*fx.shape, 3), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag * 255 / FLOW_FULL, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _row(smp, output, frame_base):
    outputs = smp["outputs"] or {}
    label = _text_cell(_wrap(smp["class_dir"]) + _wrap(smp["clip_id"]) + [smp["split"]])
    try:
        if "rgb" in outputs and smp.get("rgb_frames"):
            names = [layout.rgb_name(frame_base + i) for i in _spread(smp["rgb_frames"], RGB_COLS)]
            rgb = [_fit(img) for img in _jpegs(storage.join(output, outputs["rgb"]), names) if img is not None]
        else:
            rgb = _video_frames(storage.join(output, outputs.get("resized") or outputs["video"]), RGB_COLS)
        flow = []
        if "flow" in outputs and smp.get("flow_frames"):
            base = storage.join(output, outputs["flow"])
            for i in _spread(smp["flow_frames"], FLOW_COLS):
                fx, fy = _jpegs(base, layout.flow_names(frame_base + i), cv2.IMREAD_GRAYSCALE)
                if fx is not None and fy is not None:
                    flow.append(_fit(flow_colour(fx, fy)))
    except (OSError, ValueError, IndexError, av.error.FFmpegError, cv2.error) as e:
        return [label, _text_cell(_wrap(f"unreadable: {e}"), shade=70)] + \
            [_text_cell([], shade=70)] * (COLUMNS - 2)
    rgb += [_text_cell(["no frame"], shade=70)] * (RGB_COLS - len(rgb))
    flow += [_text_cell(["no flow"], shade=70)] * (FLOW_COLS - len(flow))
    return [label] + rgb + flow


def contact_sheet(sample, output, frame_base=1):
    """The grid as a BGR image: a header row, then one row per sampled clip."""
    header = [_text_cell(["clip"], 96)] + [_text_cell([f"rgb {i + 1}"], 96) for i in range(RGB_COLS)] + \
        [_text_cell([f"flow {i + 1}"], 96) for i in range(FLOW_COLS)]
    rows = [header] + [_row(smp, output, frame_base) for smp in sample]
    return np.vstack([np.hstack(cells) for cells in rows])


# ---- availability

def stats_availability(stats, published):
    """writers.availability of the report's stats: {"splits": {split: {...}}, "references": {...}}."""
    counts, served = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for (split, _, status), n in stats["counts"].items():
        counts[split][status] += n
    for (split, kind), n in (stats.get("served") or {}).items():
        served[split][kind] += n
    return availability(counts, served, published or {})


ANNOTATED_COLOUR, SERVED_COLOUR, MISSING_COLOUR, PUBLISHED_COLOUR = (
    (150, 150, 150), (80, 160, 60), (60, 60, 200), (190, 120, 40))  # BGR: grey, green, red, blue


def chart_bars(entry):
    """[(label, count, colour, share of the rows annotated or None)] of one split's availability:
    annotated, served (all sources, when more than one served), served by each source kind,
    missing by status, then each published reference."""
    annotated = entry["annotated"]
    share = (lambda n: n / annotated) if annotated else (lambda n: None)
    served = entry["served"]
    bars = [("annotated", annotated, ANNOTATED_COLOUR, None)]
    if len(served) > 1:
        total = sum(served.values())
        bars.append(("served: all sources", total, SERVED_COLOUR, share(total)))
    bars += [(f"served: {kind}", n, SERVED_COLOUR, share(n)) for kind, n in served.items()]
    bars += [(f"missing: {status}", n, MISSING_COLOUR, share(n)) for status, n in entry["missing"].items()]
    bars += [(f"published: {ref}", n, PUBLISHED_COLOUR, None) for ref, n in entry["published"].items()]
    return bars


def _panel(split, entry, dataset):
    bars = chart_bars(entry)
    img = np.full((CHART_TITLE_H + CHART_ROW_H * len(bars) + CHART_PAD, CHART_W, 3), 255, np.uint8)
    cv2.putText(img, f"{dataset} {split}: availability", (8, 20), FONT, 0.55, (30, 30, 30), 1, cv2.LINE_AA)
    cv2.line(img, (0, 0), (CHART_W - 1, 0), (200, 200, 200), 1)
    top = max((n for _, n, _, _ in bars), default=0) or 1
    numbers_w = 150
    span = CHART_W - CHART_LABEL_W - numbers_w - 8
    for i, (label, n, colour, part) in enumerate(bars):
        y = CHART_TITLE_H + i * CHART_ROW_H
        cv2.putText(img, _fitted(label, 0.42, CHART_LABEL_W - 14), (8, y + 15), FONT, 0.42, (30, 30, 30), 1,
                    cv2.LINE_AA)
        width = round(span * n / top)
        if width:
            cv2.rectangle(img, (CHART_LABEL_W, y + 3), (CHART_LABEL_W + width - 1, y + CHART_ROW_H - 4), colour, -1)
        text = f"{n:,}" + (f" ({_percent(part)})" if part is not None else "")
        cv2.putText(img, text, (CHART_LABEL_W + width + 6, y + 15), FONT, 0.42, (30, 30, 30), 1, cv2.LINE_AA)
    return img


def _fitted(text, scale, width):
    """`text`, cut short with ".." when it is wider than `width` pixels."""
    if cv2.getTextSize(text, FONT, scale, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "..", FONT, scale, 1)[0][0] > width:
        text = text[:-1]
    return text + ".."


def _percent(part):
    return "<0.1 %" if 0 < part < 0.0005 else f"{100 * part:.1f} %"


def in_split_order(splits):
    """[(split, entry)] of {split: entry}: train, val, test, then any other (unknown) by name."""
    return sorted(splits.items(), key=lambda kv: (SPLITS.index(kv[0]) if kv[0] in SPLITS else len(SPLITS), kv[0]))


def availability_chart(splits, dataset=""):
    """The chart as a BGR image: one panel per split of `splits` ({split: availability entry}),
    train, val, test, then the others; None when there is no split."""
    if not splits:
        return None
    return np.vstack([_panel(split, entry, dataset) for split, entry in in_split_order(splits)])


def png_bytes(img):
    return cv2.imencode(".png", img)[1].tobytes()


def _availability(avail):
    """The availability table: a row per split; served by kind, missing by status, published by
    reference (blank where the split has no figure)."""
    splits = avail["splits"]
    kinds = sorted({k for e in splits.values() for k in e["served"]})
    statuses = [s for s in STATUSES if any(s in e["missing"] for e in splits.values())]
    refs = sorted(avail["references"])
    header = (["split", "annotated"] + [f"served: {k}" for k in kinds] + ["served"]
              + [f"missing: {s}" for s in statuses] + [f"published: {r}" for r in refs])
    rows = []
    for split, e in in_split_order(splits):
        cells = ([("", split), (_attr(col="annotated"), e["annotated"])]
                 + [(_attr(col=f"served-{k}"), e["served"].get(k, 0)) for k in kinds]
                 + [(_attr(col="served"), sum(e["served"].values()))]
                 + [(_attr(col=f"missing-{s}"), e["missing"].get(s, 0)) for s in statuses]
                 + [(_attr(col=f"published-{r}"), f"{e['published'][r]:,}" if r in e["published"] else "")
                    for r in refs])
        rows.append((_attr(availability=split), cells))
    sources = "".join(f"<li>{html.escape(r)}: {html.escape(src)}</li>" for r, src in avail["references"].items())
    cited = (f"<p>Published reference counts (clips of the split a known copy holds):</p><ul>{sources}</ul>"
             if sources else "<p>No published reference counts for this dataset.</p>")
    return _table("availability", header, rows) + cited


# ---- HTML

CSS = ("body{font:14px sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:0 0 1.5em}"
       "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child"
       "{text-align:left}th{background:#f0f0f0}img{max-width:100%;image-rendering:pixelated}")


def _table(table_id, header, rows):
    """rows: [(attrs for <tr>, [(attrs for <td>, text), ...])]."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr{tr}>" + "".join(f"<td{td}>{html.escape(str(v))}</td>" for td, v in cells) + "</tr>"
                   for tr, cells in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def _attr(**kw):
    return "".join(f' data-{k}="{html.escape(str(v))}"' for k, v in kw.items())


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _summary(counts, splits, statuses):
    by_split = collections.defaultdict(collections.Counter)
    for (split, _, status), n in counts.items():
        by_split[split][status] += n
    total = sum(by_split.values(), collections.Counter())
    rows = []
    for name, c in [(s, by_split[s]) for s in splits] + [("total", total)]:
        cells = [("", name)] + [(_attr(status=s), c[s]) for s in statuses]
        rows.append((_attr(split=name), cells + [(_attr(status="all"), sum(c.values()))]))
    return _table("summary", ["split"] + statuses + ["clips"], rows)


def _classes(counts, splits):
    by_class = collections.defaultdict(collections.Counter)
    for (split, cls, status), n in counts.items():
        by_class[cls][(split, status)] += n
    rows = []
    for cls, c in sorted(by_class.items()):
        cells = [("", cls or "(invalid rows)")]
        for split in splits:
            good = sum(c[(split, s)] for s in GOOD)
            cells.append((_attr(split=split), f"{good}/{sum(n for (sp, _), n in c.items() if sp == split)}"))
        bad = collections.Counter()
        for (_, status), n in c.items():
            bad[status] += n * (status not in GOOD)
        cells.append(("", ", ".join(f"{s} {bad[s]}" for s in STATUSES if bad[s])))
        rows.append((_attr(**{"class": cls}), cells))
    return _table("classes", ["class"] + [f"{s} good/all" for s in splits] + ["failures"], rows)


def _throughput(seconds):
    rows = []
    for step in sorted(seconds, key=lambda s: (STEPS.index(s) if s in STEPS else len(STEPS), s)):
        total, n = seconds[step]
        rows.append((_attr(step=step), [("", step), ("", n), ("", f"{total:.1f}"),
                                        ("", f"{total / n:.3f}" if n else "-"),
                                        ("", f"{n / total:.2f}" if total and n else "-")]))
    return _table("throughput", ["step", "clips", "seconds", "s/clip", "clips/s per worker"], rows)


def shard_seconds(shards):
    """The time table's shards row: (seconds, clips in the shards this run built)."""
    return sum(s["seconds"] for s in shards), sum(s["built_clips"] for s in shards)


def _shards(shards):
    splits = sorted(shards, key=lambda s: s["split"])
    total = {"split": "total", **{k: sum(s[k] for s in splits) for k in ("shards", "clips", "bytes", "built")}}
    rows = [(_attr(shards=s["split"]), [("", s["split"])] + [(_attr(col=k), s[k]) for k in ("shards", "clips", "bytes")]
             + [("", _human(s["bytes"])), (_attr(col="built"), s["built"])]) for s in splits + [total]]
    return _table("shards", ["split", "shards", "clips", "bytes", "size", "built this run"], rows)


def render_html(stats, settings, sheet, shards=None, chart=False):
    """The page; `shards`: WriteShards' summaries, or None when the run had no shards step;
    `chart`: whether report/availability.png was written."""
    counts = stats["counts"]
    splits = sorted({s for s, _, _ in counts})
    statuses = [s for s in STATUSES if any(st == s for _, _, st in counts)]
    top = sorted(stats["reasons"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    reasons = _table("reasons", ["status", "reason", "clips"],
                     [("", [("", st), ("", why), ("", n)]) for (st, why), n in top])
    sizes = _table("bytes", ["output", "bytes", "size"], [
        (_attr(kind=k), [("", k), ("", n), ("", _human(n))]) for k, n in sorted(stats["bytes"].items())])
    picture = (f'<p><img src="{SHEET}" alt="contact sheet" width="{CELL_W * COLUMNS}"></p>' if sheet
               else "<p>No finished clip to show.</p>")
    seconds = dict(stats["seconds"], **({"shards": shard_seconds(shards)} if shards is not None else {}))
    timing = _throughput(seconds) if seconds else "<p>No step ran.</p>"
    packed = (f"<h2>Shards</h2><p>WebDataset tars under <code>shards/</code>; a shard whose inputs did not "
              f"change since the last run is kept as it is.</p>{_shards(shards)}" if shards is not None else "")
    avail = stats_availability(stats, getattr(settings, "published", None))
    drawn = (f'<p><img src="{AVAILABILITY}" alt="availability per split" width="{CHART_W}"></p>' if chart
             else "")
    title = html.escape(f"kinetics-prep report: {settings.dataset}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{CSS}</style></head><body><h1>{title}</h1>"
            f"<p>Output <code>{html.escape(settings.outputs.output)}</code>; steps "
            f"{html.escape(', '.join(settings.outputs.steps))}. Every failure is listed in "
            f"<code>failures.csv</code>, every clip in <code>manifest/</code>.</p>"
            f"<h2>Clips per split and status</h2>{_summary(counts, splits, statuses)}"
            f"<h2>Availability</h2><p>Per split: the rows annotated, the clips each kind of source served, "
            f"the rest by status, and the published reference counts.</p>{_availability(avail)}{drawn}"
            f"<h2>Contact sheet</h2><p>One sampled clip per row: RGB frames spread over the clip, then "
            f"optical flow (hue = direction, brightness = magnitude).</p>{picture}"
            f"<h2>Failure reasons</h2>{reasons if top else '<p>None.</p>'}"
            f"<h2>Time per step (this run)</h2>{timing}"
            f"<h2>Bytes per output</h2>{sizes}{packed}"
            f"<h2>Clips per class</h2>{_classes(counts, splits)}</body></html>\n")


def write_report(stats, settings, shards=None):
    """Write report/availability.png (when the run has a split), report/contact_sheet.png (when a
    clip can be shown) and report.html; return the html url. A PNG not drawn is removed."""
    output = settings.outputs.output
    chart_url = storage.join(output, AVAILABILITY)
    chart = availability_chart(stats_availability(stats, getattr(settings, "published", None))["splits"],
                               settings.dataset)
    if chart is not None:
        storage.write_bytes(chart_url, png_bytes(chart))
    else:
        storage.remove(chart_url)
    sheet_url = storage.join(output, SHEET)
    sheet = None
    if stats["sample"]:
        sheet = contact_sheet(stats["sample"], output, settings.video.frame_index_base)
        storage.write_bytes(sheet_url, cv2.imencode(".png", sheet)[1].tobytes())
    else:
        storage.remove(sheet_url)
    url = storage.join(output, "report.html")
    storage.write_text(url, render_html(stats, settings, sheet is not None, shards, chart is not None))
    return url


class WriteReport(beam.PTransform):
    """All records in; report.html, report/availability.png and report/contact_sheet.png written;
    the html url out.
    `shards`: WriteShards' output (one summary per split), read as a side input, or None."""

    def __init__(self, settings, shards=None):
        super().__init__()
        self.settings = settings
        self.shards = shards

    def expand(self, records):
        shards = beam.pvalue.AsList(self.shards) if self.shards is not None else None
        return (records
                | "Stats" >> beam.CombineGlobally(ReportStats(self.settings.run_id))
                | "Write" >> beam.Map(write_report, self.settings, shards))
