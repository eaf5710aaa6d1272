"""Crashes, links and full or read-only disks: a killed run's temporary files are swept at the
next start (and only they, without listing the frames), a symlinked rawframes/videos dir on
another disk works end to end, a disk that fills up or turns read-only gives per-clip records that
name the file and the cause, with no partial output left where a finished one belongs, and a
ledger or manifest that cannot be written stops the run with an error that names it.

The tests on a real full or read-only filesystem mount a small tmpfs (we run as root); where
mounting is not allowed they skip saying so, and the in-process ENOSPC/EROFS tests still run."""
import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from conftest import ROOT, by_clip, make_video, read_records, run_cli, write_csv
from transforms import storage

HEAD = "label,youtube_id,time_start,time_end,split\n"
LABELS = ["abseiling", "hurling (sport)", "zumba"]
FAST = ("--flow-algorithm", "dis")


def dataset(tmp_path, n, seconds=4, width=96, height=64, fps=10):
    """A label map, a val CSV of `n` clips over LABELS and their trimmed sources under videos/."""
    lm = write_csv(tmp_path / "labels.txt", "".join(f"{x}\n" for x in LABELS))
    root = tmp_path / "videos"
    rows = []
    for i in range(n):
        yid = f"crash{i:06d}"
        make_video(root / f"{yid}_000000_{seconds:06d}.mp4", seconds=seconds, fps=fps, width=width, height=height)
        rows.append(f"{LABELS[i % len(LABELS)]},{yid},0,{seconds},val\n")
    ann = write_csv(tmp_path / "kinetics_val.csv", HEAD + "".join(rows))
    return ["--dataset", "kinetics400", "--label-map", lm, "--annotations", ann, "--splits", "val",
            "--source", "local", "--video-root", root]


def files(root):
    """Every file under `root` (through symlinked dirs) as sorted relative paths."""
    root = str(root)
    return sorted(os.path.relpath(os.path.join(d, n), root)
                  for d, _, names in os.walk(root, followlinks=True) for n in names)


def temp_name(name):
    return f".{name}.{uuid.uuid4().hex[:12]}.tmp"


def temps(root):
    return [p for p in files(root) if storage.TEMP_NAME.fullmatch(os.path.basename(p))]


def test_temp_name_pattern():
    assert storage.TEMP_NAME.fullmatch(os.path.basename(storage.temp_path("/o/videos_val/zumba/x.mp4")))
    assert storage.TEMP_NAME.fullmatch(temp_name("img_00001.jpg"))
    for name in ("notes.tmp", ".x.mp4.tmp", ".x.mp4.0123456789AB.tmp", ".x.mp4.0123456789a.tmp",
                 "x.mp4.0123456789ab.tmp", ".x.mp4.0123456789ab.tmp.bak", "..0123456789ab.tmp"):
        assert not storage.TEMP_NAME.fullmatch(name), name


LOOKALIKES = ("notes.tmp", ".x.mp4.tmp", ".x.mp4.0123456789AB.tmp", ".x.mp4.0123456789a.tmp",
              "x.mp4.0123456789ab.tmp", ".x.mp4.0123456789ab.tmp.bak")


def test_resumed_run_leaves_exactly_what_a_clean_run_leaves(tmp_path):
    """Temp files planted where a killed run leaves them, in every kind of output dir, are gone
    after the next run; files that merely look like them, a dir and a link with the exact name,
    and the link's target are untouched; the tree is a clean run's tree plus those."""
    base = dataset(tmp_path, 4) + ["--steps", "fetch,resize,rgb,flow,shards,filelists", *FAST]
    clean = tmp_path / "clean"
    assert run_cli(*base, "--output", clean) == 0
    out = tmp_path / "out"
    assert run_cli(*base, "--output", out) == 0
    assert files(out) == files(clean)

    # As if killed while the last clip was being published: no ledger record, half its frames.
    killed = "crash000003_000000_000004"
    (out / "_ledger" / "val" / "abseiling" / f"{killed}.json").unlink()
    frames = out / "rawframes_val" / "abseiling" / killed
    for p in sorted(frames.glob("flow_*"))[::2]:
        p.unlink()
    planted = {
        "": ["failures.csv", "kinetics400_val_list_videos.txt", "report.html"],
        "manifest": ["val.jsonl"], "report": ["contact_sheet.png"], "shards/val": ["kinetics400-val-000000.tar"],
        "_ledger": [".writable"], "_ledger/val/zumba": ["crash000002_000000_000004.json"],
        "videos_val/abseiling": [f"{killed}.mp4"], "videos_val/zumba": ["crash000002_000000_000004.mp4"],
        "videos_val_256p_dense_cache/hurling_(sport)": ["crash000001_000000_000004.mp4"],
        "rawframes_val/abseiling": ["img_00007.jpg", "flow_x_00003.jpg"],  # where this version puts them
        f"rawframes_val/abseiling/{killed}": ["img_00012.jpg", "flow_y_00002.jpg"],  # where older ones did
    }
    left = []
    for folder, names in planted.items():
        for name in names:
            path = out / folder / temp_name(name)
            path.write_bytes(b"partial")
            left.append(path)
    kept = []
    for folder in planted:
        if folder == "manifest":
            continue  # the run keeps only manifests there (removes any other file), as before
        for name in LOOKALIKES:
            (out / folder / name).write_bytes(b"mine")
            kept.append(out / folder / name)
    precious = tmp_path / "precious.mp4"
    precious.write_bytes(b"not ours")
    link = out / "videos_val" / "zumba" / ".precious.mp4.0123456789ab.tmp"
    link.symlink_to(precious)
    tmp_dir = out / "videos_val" / "zumba" / ".folder.0123456789ab.tmp"
    tmp_dir.mkdir()
    (tmp_dir / "inside.txt").write_bytes(b"mine")
    assert len(temps(out)) == len(left) + 1  # the link's target is listed under the link's name

    assert run_cli(*base, "--output", out) == 0
    assert not [p for p in left if p.exists()]
    assert all(p.read_bytes() == b"mine" for p in kept)
    assert link.is_symlink() and precious.read_bytes() == b"not ours"
    assert (tmp_dir / "inside.txt").read_bytes() == b"mine"
    ours = {str(p.relative_to(out)) for p in kept} | {str(link.relative_to(out)),
                                                      str((tmp_dir / "inside.txt").relative_to(out))}
    assert [p for p in files(out) if p not in ours] == files(clean)
    records = by_clip(read_records(out))
    assert {k[2]: r["status"] for k, r in records.items()} == {
        "crash000000_000000_000004": "exists", "crash000001_000000_000004": "exists",
        "crash000002_000000_000004": "exists", killed: "ok"}
    clean_frames = clean / "rawframes_val" / "abseiling" / killed
    assert sorted(p.name for p in frames.iterdir() if p.name not in LOOKALIKES) == \
        sorted(p.name for p in clean_frames.iterdir())
    assert records[("val", "abseiling", killed)]["rgb_frames"] == 40
    assert records[("val", "abseiling", killed)]["flow_frames"] == 39


def test_flat_layout_sweeps_its_top_dirs(tmp_path):
    base = dataset(tmp_path, 2) + ["--steps", "fetch,rgb", "--layout", "flat"]
    out = tmp_path / "out"
    assert run_cli(*base, "--output", out) == 0
    left = [out / "videos_val" / temp_name("crash000000_000000_000004.mp4"),
            out / "rawframes_val" / temp_name("img_00001.jpg")]
    for p in left:
        p.write_bytes(b"partial")
    kept = out / "rawframes_val" / "crash000000_000000_000004" / ".img_00001.jpg.tmp"
    kept.write_bytes(b"mine")
    assert storage.sweep_temp_files(str(out), flat=True) == 2
    assert not [p for p in left if p.exists()] and kept.read_bytes() == b"mine"


def ledger_count(out):
    return len(list((out / "_ledger").rglob("*.json"))) if (out / "_ledger").is_dir() else 0


def in_flight(out):
    """Temp files beside the frames dirs: a frames dir is being published."""
    raw = out / "rawframes_val"
    return [e.name for d in (raw.iterdir() if raw.is_dir() else ()) for e in os.scandir(d)
            if storage.TEMP_NAME.fullmatch(e.name)]


def kill_while_publishing(command, out, n, timeout=300):
    """Start `command` in its own process group and SIGKILL the group as soon as a frames dir is
    being published and at least two more clips are recorded, or half of the `n` clips left are."""
    start = ledger_count(out)
    recorded = start + (n - start) // 2
    proc = subprocess.Popen(command, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if in_flight(out) and ledger_count(out) >= start + 2 or ledger_count(out) >= recorded:
                break
            time.sleep(0.001)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_two_worker_run_killed_part_way_resumes_to_a_clean_tree(tmp_path):
    """A real 2-worker run, SIGKILLed (its process group) while it publishes frames, resumed and
    killed again (at most three times, until a kill leaves a temp file behind); the run that then
    completes leaves the tree a clean run leaves, every clip's frames complete, finished clips
    not redone."""
    n = 20
    base = dataset(tmp_path, n, seconds=6, width=320, height=240, fps=25) + ["--steps", "fetch,rgb,filelists"]
    workers = ["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", *map(str, base), "--output", str(out), *workers]
    left = []
    for _ in range(3):
        kill_while_publishing(command, out, n)
        left = temps(out)
        if left:
            break
    first = {p: p.read_bytes() for p in (out / "_ledger").rglob("*.json")}
    assert 2 <= len(first) < n, "the run was not killed part-way"
    assert not (out / "summary.json").exists()
    print(f"killed with {len(first)} of {n} clips recorded; left {left}")

    assert run_cli(*base, "--output", out, *workers) == 0
    clean = tmp_path / "clean"
    assert run_cli(*base, "--output", clean) == 0
    assert files(out) == files(clean)
    assert not temps(out)
    records = by_clip(read_records(out))
    assert len(records) == n
    for key, rec in records.items():
        assert rec["status"] in ("ok", "exists") and rec["rgb_frames"] == 150
        assert len(list((out / rec["outputs"]["rgb"]).glob("img_*.jpg"))) == 150
    for path, data in first.items():
        assert path.read_bytes() == data  # finished clips not redone
    assert sum(r["status"] == "exists" for r in records.values()) == len(first)


def test_symlinked_rawframes_and_videos_dirs_on_another_disk(tmp_path):
    """rawframes_val and videos_val as links to dirs outside --output (MMAction2's SSD advice):
    the outputs land there, a re-run finds them (exists), the sweep clears temps inside them and
    deletes nothing that is not a temp file of ours."""
    base = dataset(tmp_path, 3) + ["--steps", "fetch,rgb,filelists"]
    out, ssd = tmp_path / "out", tmp_path / "ssd"
    (ssd / "rawframes_val").mkdir(parents=True)
    (ssd / "videos_val").mkdir()
    out.mkdir()
    (out / "rawframes_val").symlink_to(ssd / "rawframes_val", target_is_directory=True)
    (out / "videos_val").symlink_to(ssd / "videos_val", target_is_directory=True)
    assert run_cli(*base, "--output", out) == 0
    assert (out / "rawframes_val").is_symlink() and (out / "videos_val").is_symlink()
    assert len(list((ssd / "rawframes_val" / "zumba" / "crash000002_000000_000004").glob("img_*.jpg"))) == 40
    assert (ssd / "videos_val" / "abseiling" / "crash000000_000000_000004.mp4").stat().st_size > 0
    before = files(out)

    left = [ssd / "rawframes_val" / "zumba" / temp_name("img_00003.jpg"),
            ssd / "videos_val" / "abseiling" / temp_name("crash000000_000000_000004.mp4")]
    kept = [ssd / "rawframes_val" / "zumba" / ".img_00003.jpg.tmp", ssd / "videos_val" / "abseiling" / "x.mp4.tmp"]
    for p in left:
        p.write_bytes(b"partial")
    for p in kept:
        p.write_bytes(b"mine")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.mp4").write_bytes(b"not ours")
    link = ssd / "videos_val" / "abseiling" / ".keep.mp4.abcdef012345.tmp"
    link.symlink_to(elsewhere / "keep.mp4")

    assert run_cli(*base, "--output", out) == 0
    assert {r["status"] for r in read_records(out)} == {"exists"}
    assert not [p for p in left if p.exists()]
    assert all(p.read_bytes() == b"mine" for p in kept)
    assert link.is_symlink() and (elsewhere / "keep.mp4").read_bytes() == b"not ours"
    assert (out / "rawframes_val").is_symlink() and (out / "videos_val").is_symlink()
    extra = {str(p.relative_to(ssd)) for p in kept + [link]}
    assert [p for p in files(out) if p not in extra] == before
    lists = (out / "kinetics400_val_list_rawframes.txt").read_text().splitlines()
    assert lists == ["abseiling/crash000000_000000_000004 40 0", "hurling_(sport)/crash000001_000000_000004 40 1",
                     "zumba/crash000002_000000_000004 40 2"]


def test_a_write_that_fails_part_way_removes_the_partial_frames_set(tmp_path, monkeypatch):
    """In process, at the storage layer: the 4th file of a frames dir hits ENOSPC. The error names
    the file and says why; the dir holds no partial set (neither a new one nor an earlier one it
    was replacing), no temp file is left; a later publish succeeds."""
    src = tmp_path / "new"
    src.mkdir()
    for k in range(1, 9):
        (src / f"img_{k:05d}.jpg").write_bytes(b"new%d" % k)
    frames = tmp_path / "out" / "rawframes_val" / "zumba" / "clip"
    frames.mkdir(parents=True)
    for k in range(1, 11):  # an earlier, longer set
        (frames / f"img_{k:05d}.jpg").write_bytes(b"old")
    (frames / "flow_x_00001.jpg").write_bytes(b"flow")
    real = storage.shutil.copyfile
    calls = []

    def full_after_three(src_path, dst):
        calls.append(dst)
        if len(calls) > 3:
            with open(dst, "wb") as f:
                f.write(b"par")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src_path, dst)

    monkeypatch.setattr(storage.shutil, "copyfile", full_after_three)
    with pytest.raises(storage.WriteError) as caught:
        storage.publish_dir(str(src), str(frames), ("img_",))
    assert str(caught.value) == f"cannot write {frames}/img_00004.jpg: No space left on device"
    assert caught.value.errno == errno.ENOSPC
    assert all(os.path.dirname(c) == str(frames.parent) for c in calls)  # temps beside the dir
    assert sorted(p.name for p in frames.iterdir()) == ["flow_x_00001.jpg"]
    assert not temps(tmp_path / "out")
    monkeypatch.setattr(storage.shutil, "copyfile", real)
    assert storage.publish_dir(str(src), str(frames), ("img_",)) == sum(len(b"new%d" % k) for k in range(1, 9))
    assert sorted(p.name for p in frames.iterdir()) == ["flow_x_00001.jpg"] + [f"img_{k:05d}.jpg" for k in range(1, 9)]


def test_write_errors_name_the_file_and_survive_pickling(tmp_path, monkeypatch):
    import pickle
    target = tmp_path / "out" / "manifest" / "val.jsonl"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(storage.os, "replace", read_only)
    with pytest.raises(storage.WriteError) as caught:
        storage.write_bytes(str(target), b"x\n")
    monkeypatch.undo()
    assert str(caught.value) == f"cannot write {target}: Read-only file system"
    assert not target.exists() and not temps(tmp_path / "out")
    again = pickle.loads(pickle.dumps(caught.value))
    assert (type(again), str(again), again.errno) == (storage.WriteError, str(caught.value), errno.EROFS)


@contextlib.contextmanager
def tmpfs(path, size):
    """A real small filesystem at `path` (a tmpfs mount); skips, saying why, where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if got.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({got.stderr.strip() or got.returncode}); the in-process "
                    "ENOSPC/EROFS tests cover the storage layer")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path, option):
    subprocess.run(["mount", "-o", f"remount,{option}", str(path)], check=True)


def tree_bytes(path):
    return sum(-(-os.path.getsize(os.path.join(d, n)) // 4096) * 4096
               for d, _, names in os.walk(path) for n in names)


def test_a_disk_that_fills_part_way(tmp_path, monkeypatch):
    """rawframes_val on a real small filesystem that fills up after some clips: those clips are ok,
    the rest are failed with a reason naming the frame and 'No space left on device', no partial
    frames dir is left, nothing is written outside --output (and the disk it links to), and once
    there is room the same command finishes the rest."""
    n = 6
    base = dataset(tmp_path, n, seconds=4, width=320, height=240, fps=10) + ["--steps", "fetch,rgb,filelists"]
    probe = tmp_path / "probe"
    assert run_cli(*dataset(probe, 1, seconds=4, width=320, height=240, fps=10), "--steps", "rgb,fetch",
                   "--output", probe / "out") == 0
    per_clip = tree_bytes(probe / "out" / "rawframes_val")
    staging = tmp_path / "staging"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    out = tmp_path / "out"
    out.mkdir()
    with tmpfs(tmp_path / "small", f"{(per_clip * 5 // 2) // 1024}k") as small:
        (out / "rawframes_val").symlink_to(small, target_is_directory=True)
        around = sorted(os.listdir(tmp_path))
        assert run_cli(*base, "--output", out) == 0
        records = by_clip(read_records(out))
        ok = {k[2] for k, r in records.items() if r["status"] == "ok"}
        failed = {k: r for k, r in records.items() if r["status"] == "failed"}
        assert len(ok) == 2 and len(failed) == n - 2
        for (_, cls, clip), rec in failed.items():
            frame = re.escape(f"{out}/rawframes_val/{cls}/{clip}/") + r"img_\d{5}\.jpg"
            assert re.fullmatch(rf"WriteError: cannot write {frame}: No space left on device",
                                              rec["reason"]), rec["reason"]
            assert not (out / "rawframes_val" / cls / clip).exists()
        assert sorted(p.name for d in small.iterdir() for p in d.iterdir()) == sorted(ok)
        assert all(len(list(d.iterdir())) == 40 for c in small.iterdir() for d in c.iterdir())
        assert not temps(out) and not list(staging.iterdir())
        assert sorted(os.listdir(tmp_path)) == around
        listed = (out / "kinetics400_val_list_rawframes.txt").read_text().splitlines()
        assert sorted(line.split()[0].split("/")[1] for line in listed) == sorted(ok)

        remount(small, f"size={per_clip * (n + 1) // 1024}k")
        assert run_cli(*base, "--output", out) == 0
        records = by_clip(read_records(out))
        assert {k[2]: r["status"] for k, r in records.items()} == {
            k[2]: "exists" if k[2] in ok else "ok" for k in records}
        assert all(len(list(d.iterdir())) == 40 for c in small.iterdir() for d in c.iterdir())
        assert len(list(small.glob("*/*"))) == n


def test_a_disk_that_turns_read_only(tmp_path):
    """videos_val on a real filesystem that is remounted read-only between runs: the new clips are
    failed with a reason naming the clip's path and 'read-only file system', the old ones exist,
    the run completes."""
    base = dataset(tmp_path, 4) + ["--steps", "fetch,filelists"]
    out = tmp_path / "out"
    out.mkdir()
    with tmpfs(tmp_path / "disk", "8m") as disk:
        (out / "videos_val").symlink_to(disk, target_is_directory=True)
        assert run_cli(*base, "--limit", "2", "--output", out) == 0
        before = files(disk)
        assert len(before) == 2
        remount(disk, "ro")
        assert run_cli(*base, "--output", out) == 0
        records = by_clip(read_records(out))
        statuses = sorted(r["status"] for r in records.values())
        assert statuses == ["exists", "exists", "failed", "failed"]
        for (_, cls, clip), rec in records.items():
            if rec["status"] == "failed":
                assert rec["reason"] == \
                    f"WriteError: cannot write {out}/videos_val/{cls}/{clip}.mp4: Read-only file system"
        assert files(disk) == before
        assert len((out / "kinetics400_val_list_videos.txt").read_text().splitlines()) == 2


def test_the_sweep_lists_no_frames_dir(tmp_path, monkeypatch):
    """The sweep's cost does not grow with the frames: it lists --output, the run-level dirs, the
    videos_*/rawframes_* dirs and their class dirs, and no clip's frames dir (nor unknown dirs)."""
    out = tmp_path / "out"
    for cls in ("abseiling", "zumba"):
        for i in range(3):
            clip = f"crash{i:06d}_000000_000004"
            make_video(out / "videos_val" / cls / f"{clip}.mp4")
            (out / "_ledger" / "val" / cls).mkdir(parents=True, exist_ok=True)
            (out / "_ledger" / "val" / cls / f"{clip}.json").write_text("{}")
            frames = out / "rawframes_val" / cls / clip
            frames.mkdir(parents=True)
            for k in range(1, 6):
                (frames / f"img_{k:05d}.jpg").write_bytes(b"")
            (frames / temp_name("img_00006.jpg")).write_bytes(b"left by an older version")
    for folder in ("manifest", "report", "shards/val", "elsewhere/deep"):
        (out / folder).mkdir(parents=True)
    (out / "elsewhere" / "deep" / temp_name("mine")).write_bytes(b"not in a dir the run writes")
    listed = []
    real = os.scandir

    def recording(path):
        listed.append(os.path.relpath(path, out))
        return real(path)

    monkeypatch.setattr(os, "scandir", recording)
    assert storage.sweep_temp_files(str(out)) == 0
    monkeypatch.undo()
    assert sorted(listed) == sorted([".", "_ledger", "_ledger/val", "_ledger/val/abseiling", "_ledger/val/zumba",
                                     "manifest", "report", "shards", "shards/val", "videos_val",
                                     "videos_val/abseiling", "videos_val/zumba", "rawframes_val",
                                     "rawframes_val/abseiling", "rawframes_val/zumba"])
    assert len(temps(out)) == 7  # an older version's temps in frames dirs: removed when the clip is made again


def run_error(capsys, *args):
    """The one error line (no traceback) a run that cannot write its ledger or run outputs ends with."""
    rc = run_cli(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("kinetics-prep: error: ")
    assert not any("Traceback" in line for line in err), err
    return err[-1].removeprefix("kinetics-prep: error: ")


@pytest.mark.parametrize("folder", ["_ledger", "manifest"])
def test_a_ledger_or_manifest_that_cannot_be_written_stops_the_run_naming_the_file(tmp_path, capsys, folder):
    """_ledger on a disk that fills after a few records, or manifest/ on a read-only one: the run
    stops with an error naming the file and the cause; the records written are whole JSON, no
    temp file is left."""
    base = dataset(tmp_path, 6) + ["--steps", "fetch"]
    out = tmp_path / "out"
    out.mkdir()
    with tmpfs(tmp_path / "disk", "12k" if folder == "_ledger" else "1m") as disk:
        (out / folder).symlink_to(disk, target_is_directory=True)
        if folder == "manifest":
            remount(disk, "ro")
        message = run_error(capsys, *base, "--output", out)
        if folder == "_ledger":
            assert re.fullmatch(re.escape(f"cannot write {out}/_ledger/val/") + r"[a-z_()]+/crash\d{6}_000000_000004"
                                r"\.json: No space left on device", message or ""), message
            records = list(disk.rglob("*.json"))
            assert 1 <= len(records) < 6
            assert all(json.loads(p.read_text())["status"] == "ok" for p in records)
        else:
            assert message == f"cannot write {out}/manifest/val.jsonl: Read-only file system"
            assert len(list((out / "_ledger").rglob("*.json"))) == 6
        assert not temps(out) and not (out / "summary.json").exists()


def test_a_frames_dir_linked_to_another_filesystem(tmp_path):
    """A clip's frames dir that is itself a link to another filesystem: a rename from its class dir
    cannot cross to it (EXDEV), so its temps go inside it; the frames are all there, no temp left."""
    base = dataset(tmp_path, 1) + ["--steps", "fetch,rgb"]
    out = tmp_path / "out"
    (out / "rawframes_val" / "abseiling").mkdir(parents=True)
    with tmpfs(tmp_path / "disk", "8m") as disk:
        (out / "rawframes_val" / "abseiling" / "crash000000_000000_000004").symlink_to(disk, target_is_directory=True)
        assert run_cli(*base, "--output", out) == 0
        (record,) = read_records(out)
        assert record["status"] == "ok" and record["rgb_frames"] == 40
        assert sorted(p.name for p in disk.iterdir()) == [f"img_{k:05d}.jpg" for k in range(1, 41)]
        assert not temps(out)
