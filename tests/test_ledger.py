import json
import os

import fsspec
import pytest

from conftest import settings_of
from pipeline.progress import Progress, line, next_wait
from transforms import storage, tally
from transforms.ledger import Ledger, is_complete
from transforms.records import Clip


def clip(i, split="val"):
    yid = f"abcdefghi{i:02d}"
    return Clip(split, "abseiling", 0, "abseiling", yid, 0.0, 10.0, f"{yid}_000000_000010", "a.csv", i + 2, (0, i + 2))


def S(output, run_id="now"):
    return settings_of(output=output, run_id=run_id, progress_interval=10)


@pytest.mark.parametrize("root", ["local", "memory"])
def test_ledger_round_trip_and_whole_writes(tmp_path, root):
    out = str(tmp_path / "out") if root == "local" else "memory:///ledger-test"
    ledger = Ledger(out)
    c = clip(1)
    assert ledger.read(c.key) is None
    ledger.write(c.record("ok", outputs={"video": "videos_val/abseiling/x.mp4"}))
    assert ledger.read(c.key)["status"] == "ok"
    assert storage.find_files(ledger.root) == [ledger.url(c.key)]
    assert ledger.url(c.key).endswith("_ledger/val/abseiling/abcdefghi01_000000_000010.json")
    if root == "local":
        assert [p.name for p in (tmp_path / "out" / "_ledger" / "val" / "abseiling").iterdir()] == \
            ["abcdefghi01_000000_000010.json"]  # no temp file left beside it
    else:
        fsspec.filesystem("memory").rm("/ledger-test", recursive=True)


def test_is_complete():
    rec = clip(1).record("ok", outputs={"video": "v.mp4"})
    assert is_complete(rec, {"video": "v.mp4"})
    assert not is_complete(rec, {}), "with file lists alone the tree is checked again"
    assert not is_complete(rec, {"video": "other.mp4"}) and not is_complete(rec, {"rgb": "d"})
    assert not is_complete(clip(1).record("network"), {"video": "v.mp4"}) and not is_complete(None, {})
    gone = clip(1).record("unavailable", permanent=True)
    assert is_complete(gone, {}) and not is_complete(gone, {}, retry_unavailable=True)


def test_is_complete_only_for_outputs_made_with_this_runs_options():
    made = {"video": {"trim": "exact"}, "rgb": {"new_short": 256}}
    rec = clip(1).record("ok", outputs={"video": "v.mp4", "rgb": "d"}, params=made)
    expected = {"video": "v.mp4", "rgb": "d"}
    assert is_complete(rec, expected, params=made)
    assert not is_complete(rec, expected, params=dict(made, rgb={"new_short": 320}))
    assert is_complete(clip(1).record("exists", outputs=expected), expected, params=made), \
        "outputs of a tree made elsewhere say nothing of their options: taken as they are"


def test_progress_counts_this_run_and_what_was_complete(tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    settings = S(out)
    reader = tally.tally(out, "now")
    for _ in range(6):
        reader.add(annotated=1)
    reader.add(read_done=1)
    reader.flush(every=0)
    worker = tally.Tally(storage.join(tally.progress_dir(out, "now"), "other-worker.json"))
    for rec in (clip(0).record("exists"), clip(1).record("exists")):
        tally.note(out, settings.run_id, rec, skipped=True)
    tally.flush(out, settings.run_id)
    tally.tally(out, "now").flush(every=0)
    progress = Progress(settings)
    assert progress.counts() == {"total": 6, "reading": False, "done": 2, "skipped": 2, "failed": 0,
                                 "rate": 0.0}
    worker.add(recorded=1)
    worker.add(recorded=1, failed=1)
    worker.flush(every=0)
    c = progress.counts()
    assert (c["done"], c["failed"], c["skipped"]) == (4, 1, 2) and c["rate"] > 0

    reads = []
    real_read = storage.read_bytes_many
    monkeypatch.setattr(storage, "read_bytes_many", lambda urls: reads.extend(urls) or real_read(urls))
    monkeypatch.setattr(storage, "read_bytes", lambda url: pytest.fail(f"progress read {url}"))
    line = progress.line()
    assert line.startswith("[progress] 4/6 clips done (2 already complete), 1 failed") and "ETA" in line
    assert reads and all("/_progress/now/" in u for u in reads), "no ledger record, no annotation is read"
    assert len(reads) == 2, "one object per worker process"
    worker.add(recorded=1)
    worker.flush(every=0)
    assert progress.counts()["done"] == 5
    tally.remove(out, "now")
    assert not os.path.exists(os.path.join(out, "_progress", "now"))


def test_progress_line_while_the_annotations_are_read():
    c = {"total": 40, "reading": True, "done": 3, "skipped": 1, "failed": 0, "rate": 1.5}
    assert line(c) == "[progress] 3/40+ clips done (1 already complete), 0 failed, 1.50 clips/s, ETA -"
    assert line(dict(c, reading=False)).endswith("ETA 24s")


def test_tally_writes_at_most_every_few_seconds(tmp_path):
    now = [100.0]
    t = tally.Tally(str(tmp_path / "p.json"), clock=lambda: now[0])
    t.add(recorded=1)
    assert json.loads((tmp_path / "p.json").read_text())["recorded"] == 1, "the first clip is shown at once"
    t.add(recorded=1)
    t.flush()
    assert json.loads((tmp_path / "p.json").read_text())["recorded"] == 1
    now[0] += tally.FLUSH_EVERY
    t.flush()
    assert json.loads((tmp_path / "p.json").read_text())["recorded"] == 2
    t.add(recorded=1)
    now[0] += tally.PUBLISH_EVERY
    t.add(recorded=1, failed=1)
    assert json.loads((tmp_path / "p.json").read_text()) == {"annotated": 0, "failed": 1, "read_done": 0,
                                                             "recorded": 4, "skipped": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_progress_waits_longer_when_reading_the_ledger_is_slow():
    assert next_wait(10, 0.5) == 10
    assert next_wait(10, 60) == 180, "a listing that takes a minute is read at most every 3 minutes"
