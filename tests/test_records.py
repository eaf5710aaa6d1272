"""ClipRecord: the one record type. Its JSON form round-trips byte for byte, and every event keeps
the field order the ledger and the manifests have always written."""
import json
from types import SimpleNamespace

import pytest

from transforms import ledger
from transforms.records import STATUSES, Clip, ClipRecord, invalid_record

CLIP = Clip("val", "arm wrestling", 6, "arm_wrestling", "demo0000000", 0.0, 10.5, "demo0000000_000000_000010",
            "val.csv", 2, (0, 2))
IDENTITY = ["clip_id", "split", "label", "label_index", "class_dir", "youtube_id", "time_start", "time_end",
            "status", "reason", "annotation", "line", "order"]
FACTS = {"frames": 280, "width": 340, "height": 256, "duration": 10.0, "fps": 30.0, "resized_size": [340, 256],
         "resized_frames": 280, "frame_size": [340, 256], "rgb_frames": 280}
RESULT = SimpleNamespace(format_id="18", ytdlp_version="2025.01.01", attempts=2, segment=True,
                         fetch_range=(0.0, 12.0), bytes_fetched=1234)
WINDOW = SimpleNamespace(start=0.0, end=12.0)


def old_ledger_records():
    """Records as older versions wrote them: fields missing, unknown fields, other orders, non-ASCII."""
    base = CLIP.record("ok", outputs={"video": "videos_val/arm_wrestling/x.mp4"}, rgb_frames=3)
    no_params = {k: v for k, v in base.items() if k not in ("order", "annotation")}
    extra = dict(base, legacy={"z": 1, "a": [2, 3]}, notes="café ✓", width=None)
    reordered = dict(reversed(list(base.items())))
    return [no_params, extra, reordered, {"status": "ok"}]


def every_record():
    made = ClipRecord.made(CLIP, None, "/videos/x.mp4", {"video": "v.mp4"}, {"video": 10}, {"video": {"trim": True}},
                           {"fetch": 0.1, "decode": 0.2}, FACTS)
    records = [ClipRecord.of(CLIP, status, f"why {status}") for status in STATUSES]
    records += [made, made.with_fetch(RESULT, WINDOW, 0.5, 0, fetched_with="other"), made.finished(1.25, "run1"),
                made.with_flow("rawframes_val/arm_wrestling/x", 279, "v.mp4", (340, 256), 99, {"flow_bound": 20}, 3.5),
                ClipRecord.fetch_failed(CLIP, "unavailable", "gone", 1, permanent=True),
                ClipRecord.invalid("", {"label": "zumba", "youtube_id": "x"}, "bad time", "val.csv", 7, (0, 7))]
    return records + [ClipRecord.from_dict(r) for r in old_ledger_records()]


@pytest.mark.parametrize("record", every_record(), ids=lambda r: r.status)
def test_json_round_trip_is_byte_identical(record):
    data = record.to_json()
    assert ClipRecord.from_json(data) == record
    assert ClipRecord.from_json(data).to_json() == data
    assert ClipRecord.from_dict(json.loads(data)).to_json() == data
    assert ledger.dump(record.to_dict()) == data == ledger.dump(record)
    assert ledger.parse(data) == record.to_dict() and list(ledger.parse(data)) == list(record.to_dict())
    assert data == json.dumps(record.to_dict(), ensure_ascii=False).encode("utf-8")


def test_old_ledger_records_keep_every_field_as_it_is():
    for old in old_ledger_records():
        data = json.dumps(old, ensure_ascii=False).encode("utf-8")
        record = ClipRecord.from_json(data)
        assert list(record.to_dict().items()) == list(old.items())
        assert record.to_json() == data


def test_not_a_record():
    for data in (b"", b"not json", b"[1]", b'{"clip_id": "x"}', b"\xff\xfe"):
        assert ClipRecord.from_json(data) is None and ledger.parse(data) is None


def test_the_clip_and_invalid_dicts_are_the_records():
    assert list(CLIP.record("ok", "", outputs={}, x=1)) == IDENTITY + ["outputs", "x"]
    assert CLIP.record("ok")["time_end"] == 10.5 and CLIP.record("ok")["time_start"] == 0
    assert isinstance(CLIP.record("ok")["time_start"], int)
    inv = invalid_record(None, {"label": "zumba"}, "why", "val.csv", 7, (0, 7))
    assert list(inv) == IDENTITY + ["raw"]
    assert (inv["clip_id"], inv["split"], inv["label_index"], inv["youtube_id"]) == ("line-7", "unknown", None, "")
    assert ClipRecord.of(CLIP, "ok").clip() == CLIP


def test_events_keep_the_field_order():
    made = ClipRecord.made(CLIP, None, "src", {"video": "v"}, {"video": 1}, {"video": {}}, {"fetch": 0.1}, FACTS)
    assert list(made.to_dict()) == IDENTITY + ["source", "outputs", "sizes", "params", "seconds"] + list(FACTS)
    fetched = made.with_fetch(RESULT, WINDOW, 0.5, 1234)
    assert list(fetched.to_dict())[len(made.to_dict()):] == [
        "format_id", "ytdlp_version", "attempts", "fetch_window", "fetch_segment", "fetch_range", "bytes_fetched"]
    assert fetched.get("fetch_range") == [0.0, 12.0] and fetched.seconds == {"fetch": 0.5}
    shared = made.with_fetch(RESULT, WINDOW, 0.5, 0, fetched_with="first")
    assert list(shared.to_dict())[-2:] == ["bytes_fetched", "fetched_with"]
    failed = ClipRecord.of(CLIP, "failed", "boom").with_fetch(RESULT, WINDOW, 0.5, 0)
    assert list(failed.to_dict())[-1] == "seconds"  # a record with no seconds gets them last
    done = fetched.finished(1.0, "r").finished(0.5, "r2")
    assert list(done.to_dict())[-1] == "run_id" and done.get("run_id") == "r2"
    assert done.seconds == {"fetch": 0.5, "total": 1.5}
    flow = done.with_flow("d", 9, "v", (4, 2), 7, {"b": 1}, 2.0)
    assert list(flow.to_dict()) == list(done.to_dict()) + ["flow_frames", "flow_source"]
    assert (flow.status, flow.outputs, flow.sizes, flow.params["flow"], flow.get("frame_size"), flow.seconds["flow"]) \
        == ("ok", {"video": "v", "flow": "d"}, {"video": 1, "flow": 7}, {"b": 1}, [4, 2], 2.0)
    assert list(done.with_status("corrupt", "x").to_dict()) == list(done.to_dict())
    gone = ClipRecord.fetch_failed(CLIP, "unavailable", "gone", 3)
    assert list(gone.to_dict()) == IDENTITY + ["attempts"] and not gone.permanent
    assert list(ClipRecord.fetch_failed(CLIP, "unavailable", "gone", 3, True).to_dict())[-1] == "permanent"


def test_events_over_an_earlier_record_keep_its_order_and_fields():
    old = ClipRecord.from_dict(dict(reversed(list(CLIP.record("ok", "", params={"video": 1}, legacy=2).items()))))
    later = Clip(*[getattr(CLIP, f) for f in ("split", "label")], 9, *[getattr(CLIP, f) for f in (
        "class_dir", "youtube_id", "time_start", "time_end", "clip_id", "annotation")], 5, (1, 5))
    refreshed = old.refreshed(later, "exists")
    assert list(refreshed.to_dict()) == list(old.to_dict())
    assert (refreshed.status, refreshed.get("label_index"), refreshed.get("order"), refreshed.get("legacy")) == \
        ("exists", 9, [1, 5], 2)
    made = ClipRecord.made(later, old, "s", {}, {}, {}, {}, {"frames": 1})
    assert list(made.to_dict()) == list(old.to_dict()) + ["source", "outputs", "sizes", "seconds", "frames"]
    tree = ClipRecord.in_tree(later, old, "note", {"video": "v"}, "probe", {"frames": 2})
    assert "params" not in tree.to_dict() and tree.get("legacy") == 2 and tree.status == "exists"
    assert list(tree.to_dict()) == [k for k in old.to_dict() if k != "params"] + ["outputs", "verified", "frames"]
    bad = ClipRecord.of(CLIP, "corrupt", "x", legacy=1)
    assert list(ClipRecord.in_tree(CLIP, bad, "", {}, "probe", {}).to_dict()) == IDENTITY + ["outputs", "verified"]
    assert list(ClipRecord.in_tree(CLIP, None, "", {}, "probe", {}).to_dict()) == IDENTITY + ["outputs", "verified"]


def test_source_kind_from_the_field_or_from_an_older_record():
    from transforms.records import CVDF_SOURCE, EXISTS, OK, TREE_SOURCE, ClipRecord
    assert ClipRecord({"status": OK, "source": "/v/a.mp4", "source_kind": "local"}).source_kind == "local"
    assert ClipRecord({"status": OK, "source": "cvdf:part.tar.gz:a.mp4"}).source_kind == CVDF_SOURCE
    assert ClipRecord({"status": EXISTS}).source_kind == TREE_SOURCE
    assert ClipRecord({"status": OK, "source": "https://www.youtube.com/watch?v=x"}).source_kind == ""


def test_made_records_say_their_source_kind_after_their_source():
    from transforms.records import Clip, ClipRecord
    clip = Clip("val", "zumba", 399, "zumba", "abcdefghijk", 1.0, 11.0, "abcdefghijk_000001_000011", "val.csv", 2, (0, 2))
    rec = ClipRecord.made(clip, None, "/v/a.mp4", {"video": "v.mp4"}, {"video": 9}, {}, {}, {}, "local")
    keys = list(rec.to_dict())
    assert rec.source_kind == "local" and keys.index("source_kind") == keys.index("source") + 1
