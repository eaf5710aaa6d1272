import json

import fsspec
import pytest

from pipeline.progress import Progress, next_wait
from transforms import storage
from transforms.ledger import Ledger, is_complete
from transforms.records import Clip


def clip(i, split="val"):
    yid = f"abcdefghi{i:02d}"
    return Clip(split, "abseiling", 0, "abseiling", yid, 0.0, 10.0, f"{yid}_000000_000010", "a.csv", i + 2, (0, i + 2))


class S:
    def __init__(self, output, run_id="now"):
        self.output, self.run_id, self.progress_interval = output, run_id, 10


@pytest.mark.parametrize("root", ["local", "memory"])
def test_ledger_round_trip_and_whole_writes(tmp_path, root):
    out = str(tmp_path / "out") if root == "local" else "memory:///ledger-test"
    ledger = Ledger(out)
    c = clip(1)
    assert ledger.read(c.key) is None
    ledger.write(c.record("ok", outputs={"video": "videos_val/abseiling/x.mp4"}))
    assert ledger.read(c.key)["status"] == "ok"
    listing = ledger.listing()
    assert list(listing) == [ledger.url(c.key)]
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


def test_progress_counts_this_run_and_what_was_complete(tmp_path):
    out = str(tmp_path / "out")
    ledger = Ledger(out)
    clips = [clip(i) for i in range(6)]
    ledger.write(dict(clips[0].record("ok"), run_id="before"))
    ledger.write(dict(clips[1].record("exists"), run_id="before"))
    ledger.write(dict(clips[2].record("network"), run_id="before"))
    progress = Progress(S(out), lambda: clips, lambda c: {}, lambda rec, c: rec["status"] in ("ok", "exists"))
    progress.prime()
    assert progress.counts() == {"total": 6, "done": 2, "skipped": 2, "failed": 0, "rate": 0.0}
    ledger.write(dict(clips[2].record("ok"), run_id="now"))
    ledger.write(dict(clips[3].record("corrupt"), run_id="now"))
    c = progress.counts()
    assert (c["done"], c["failed"], c["skipped"]) == (4, 1, 2) and c["rate"] > 0
    line = progress.line()
    assert line.startswith("[progress] 4/6 clips done (2 already complete), 1 failed") and "ETA" in line
    storage.write_bytes(ledger.url(clips[4].key), json.dumps(dict(clips[4].record("ok"), run_id="now")).encode())
    assert progress.counts()["done"] == 5


def test_progress_waits_longer_when_reading_the_ledger_is_slow():
    assert next_wait(10, 0.5) == 10
    assert next_wait(10, 60) == 180, "a listing that takes a minute is read at most every 3 minutes"
