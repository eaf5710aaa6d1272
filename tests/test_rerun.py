"""Re-runs over an output that an earlier run (or another tool) left: what the ledger may be
trusted for, and what must be made or checked again."""
import json
import os

from conftest import by_clip, make_video, read_records, run_cli, write_csv

LABELS = ["abseiling", "hurling (sport)", "zumba"]
ROWS = [("abseiling", "aaaaaaaaaa1", 0, 4), ("hurling (sport)", "bbbbbbbbbb2", 1, 5), ("zumba", "ccccccccc_3", 0, 4)]


def setup(tmp_path, rows=ROWS, labels=LABELS):
    lm = write_csv(tmp_path / "labels.txt", "".join(f"{x}\n" for x in labels))
    ann = write_csv(tmp_path / "kinetics_val.csv", "label,youtube_id,time_start,time_end,split\n"
                    + "".join(f"{a},{b},{c},{d},val\n" for a, b, c, d in rows))
    root = tmp_path / "videos"
    for _, yid, _, _ in ROWS:
        make_video(root / f"{yid}.mp4", seconds=6)
    return lm, ann, root, tmp_path / "out"


def run(lm, ann, out, *args, root=None):
    extra = ("--source", "local", "--video-root", root) if root else ()
    assert run_cli("--dataset", "kinetics400", "--label-map", lm, "--annotations", ann, "--output", out, "--splits", "val", *extra, *args) == 0
    return by_clip(read_records(out))


def mtimes(folder):
    return {p: os.stat(os.path.join(d, p)).st_mtime_ns for d, _, files in os.walk(folder) for p in files}


def test_a_rerun_takes_labels_and_order_from_this_runs_annotations(tmp_path):
    lm, ann, root, out = setup(tmp_path)
    run(lm, ann, out, "--steps", "fetch,filelists", root=root)
    lm2 = write_csv(tmp_path / "labels2.txt", "zumba\nhurling (sport)\nabseiling\n")
    ann2 = write_csv(tmp_path / "kinetics_val2.csv", "label,youtube_id,time_start,time_end,split\n"
                     + "".join(f"{a},{b},{c},{d},val\n" for a, b, c, d in reversed(ROWS)))
    before = mtimes(out / "videos_val")
    records = run(lm2, ann2, out, "--steps", "fetch,filelists", root=root)
    assert {r["status"] for r in records.values()} == {"exists"}
    assert mtimes(out / "videos_val") == before, "nothing is made again"
    assert {r["label"]: r["label_index"] for r in records.values()} == {"zumba": 0, "hurling (sport)": 1, "abseiling": 2}
    assert all(r["annotation"] == str(ann2) for r in records.values())
    assert (out / "kinetics400_val_list_videos.txt").read_text() == (
        "zumba/ccccccccc_3_000000_000004.mp4 0\n"
        "hurling_(sport)/bbbbbbbbbb2_000001_000005.mp4 1\n"
        "abseiling/aaaaaaaaaa1_000000_000004.mp4 2\n")


def test_file_lists_alone_check_the_tree_again(tmp_path):
    lm, ann, root, out = setup(tmp_path)
    first = run(lm, ann, out, "--steps", "fetch,filelists", root=root)
    gone = next(r for r in first.values() if r["youtube_id"] == "bbbbbbbbbb2")
    os.remove(out / gone["outputs"]["video"])
    records = run(lm, ann, out, "--steps", "filelists")
    statuses = {r["youtube_id"]: r["status"] for r in records.values()}
    assert statuses == {"aaaaaaaaaa1": "exists", "bbbbbbbbbb2": "missing", "ccccccccc_3": "exists"}
    kept = next(r for r in records.values() if r["youtube_id"] == "aaaaaaaaaa1")
    assert kept["source"] == first[next(k for k in first if k[2] == kept["clip_id"])]["source"], \
        "the facts of the earlier record are kept"
    assert "bbbbbbbbbb2" not in (out / "kinetics400_val_list_videos.txt").read_text()

    probed = {r["clip_id"]: r["run_id"] for r in run(lm, ann, out, "--steps", "filelists", "--redo").values()
              if r["status"] == "exists"}
    again = run(lm, ann, out, "--steps", "filelists")
    assert {r["clip_id"]: r["run_id"] for r in again.values() if r["status"] == "exists"} == probed, \
        "a video checked before and still there is not checked again"
    full = run(lm, ann, out, "--steps", "filelists", "--verify", "full")
    assert all(r["run_id"] != probed.get(r["clip_id"]) for r in full.values()), \
        "a closer check than the earlier one looks again"
    assert all(r["verified"] == "full" for r in full.values() if r["status"] == "exists")

    flat = run(lm, ann, out, "--steps", "filelists", "--layout", "flat")
    assert {r["status"] for r in flat.values()} == {"missing"}, "the flat layout's paths hold nothing"
    assert not (out / "kinetics400_val_list_videos.txt").exists()


def test_outputs_made_with_other_options_are_made_again(tmp_path):
    lm, ann, root, out = setup(tmp_path)
    first = run(lm, ann, out, "--steps", "fetch,rgb,filelists", "--new-short", "32", root=root)
    assert {tuple(r["frame_size"]) for r in first.values()} == {(48, 32)}
    videos = mtimes(out / "videos_val")
    again = run(lm, ann, out, "--steps", "fetch,rgb,filelists", "--new-short", "32", root=root)
    assert {r["status"] for r in again.values()} == {"exists"}
    changed = run(lm, ann, out, "--steps", "fetch,rgb,filelists", "--new-short", "48", root=root)
    assert {r["status"] for r in changed.values()} == {"ok"}
    assert {tuple(r["frame_size"]) for r in changed.values()} == {(72, 48)}
    assert all(r["params"]["rgb"]["new_short"] == 48 for r in changed.values())
    assert mtimes(out / "videos_val") == videos, "the trimmed clips were kept, only the frames made again"


def test_an_untrimmed_source_at_the_clip_path_is_not_a_clip(tmp_path):
    lm, ann, root, out = setup(tmp_path, rows=ROWS[:1])
    make_video(out / "videos_val" / "abseiling" / "aaaaaaaaaa1_000000_000004.mp4", seconds=30)
    records = run(lm, ann, out, "--steps", "filelists")
    (rec,) = records.values()
    assert rec["status"] == "missing" and "not the trimmed clip" in rec["reason"]


def ledger_files(out):
    return {p.relative_to(out): (p.stat().st_ino, p.read_bytes()) for p in (out / "_ledger").rglob("*.json")}


def test_a_rerun_rewrites_only_the_ledger_records_that_changed(tmp_path):
    """A clip found as it was (missing again) keeps its ledger file untouched, same inode and
    bytes; this run's manifest still carries this run's id. A clip whose state changed is rewritten."""
    lm, ann, root, out = setup(tmp_path)
    first = run(lm, ann, out, "--steps", "filelists")
    assert {r["status"] for r in first.values()} == {"missing"}
    before = ledger_files(out)
    assert len(before) == 3
    again = run(lm, ann, out, "--steps", "filelists")
    assert {r["status"] for r in again.values()} == {"missing"}
    assert ledger_files(out) == before, "no ledger record was rewritten"
    assert {r["run_id"] for r in again.values()}.isdisjoint({r["run_id"] for r in first.values()})

    changed = run(lm, ann, out, "--steps", "fetch,filelists", root=root)
    assert {r["status"] for r in changed.values()} == {"ok"}
    after = ledger_files(out)
    assert after.keys() == before.keys() and all(after[k][1] != before[k][1] for k in before)
    assert {json.loads(data)["run_id"] for _, data in after.values()} == {r["run_id"] for r in changed.values()}
