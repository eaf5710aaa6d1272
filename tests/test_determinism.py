"""Same input, options and library versions, same bytes: whatever the process did before, whichever
worker (a fresh interpreter, another thread) runs the clip. Every output kind of the video stage
(trimmed clip re-encoded and remuxed, resized clip, RGB frames) and the flow stage (dis, farneback,
tvl1 on a tiny clip), through the stage functions and through the pipeline."""
import ctypes
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import av
import pytest

from conftest import ROOT, read_records, run_cli, write_csv
from pipeline.demo import synthetic_video
from transforms.flow import grey_frames, write_flow
from transforms.video import Segment, VideoOptions, process, x264_stream, zero_filled_heap

HEAD = "label,youtube_id,time_start,time_end,split\n"


def digest(path):
    """md5 of a file, or of a folder's file names and bytes in name order."""
    h = hashlib.md5()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(name.encode() + b"\0")
            with open(os.path.join(path, name), "rb") as f:
                h.update(f.read())
    else:
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def run_job(job, workdir):
    """One clip through the video stage, then flow from its resized clip with each of job["flow"];
    {output kind: digest}."""
    os.makedirs(workdir)
    seg = Segment(job["path"], job["start"], job["end"], job.get("whole", False))
    opts = VideoOptions(**job.get("opts", {}))
    r = process(seg, job.get("want", ("video", "resized", "rgb")), opts, workdir)
    out = {kind: digest(path) for kind, path in r["files"].items()}
    for algorithm in job.get("flow", ()):
        folder = os.path.join(workdir, f"flow-{algorithm}")
        pairs, _ = write_flow(grey_frames(r["files"]["resized"], r["frame_size"]), folder, algorithm=algorithm)
        assert pairs == r["frames"] - 1
        out[f"flow-{algorithm}"] = digest(folder)
    shutil.rmtree(workdir)
    return out


def run_jobs(jobs, workdir):
    return [run_job(job, os.path.join(workdir, str(i))) for i, job in enumerate(jobs)]


def in_fresh_interpreter(jobs, workdir):
    """run_jobs in a new Python process: the clips processed alone, by another worker."""
    code = ("import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import test_determinism as t; "
            "print(json.dumps(t.run_jobs(json.loads(sys.argv[3]), sys.argv[4])))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), str(ROOT / "tests"), json.dumps(jobs), str(workdir)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("sources")
    make = {
        "clip": (2, 25, 640, 360, True),     # a CVDF clip: remuxed
        "long": (6, 25, 640, 360, True),     # a longer source: the segment is re-encoded
        "tiny": (0.4, 10, 96, 64, False),    # for TV-L1
        "qvga": (1.5, 30, 320, 240, True),   # the others: other sizes, rates and lengths
        "hd": (1, 15, 1280, 720, False),
        "qcif": (2, 10, 176, 144, True),
        "same": (1, 25, 456, 256, False),    # already the resized size
    }
    paths = {}
    for i, (name, (seconds, fps, w, h, audio)) in enumerate(make.items()):
        paths[name] = str(d / f"{name}.mp4")
        synthetic_video(paths[name], seconds, fps=fps, width=w, height=h, seed=i, audio=audio)
    return paths


def target_jobs(s):
    return [
        {"path": s["clip"], "start": 0, "end": 2, "whole": True, "flow": ["dis", "farneback"]},  # remux
        {"path": s["long"], "start": 1.5, "end": 3.5, "flow": ["dis"]},  # exact trim, re-encoded
        {"path": s["tiny"], "start": 0, "end": 0.4, "want": ["resized", "rgb"], "flow": ["tvl1"],
         "opts": {"scale": 48, "new_short": 48}},
    ]


def other_jobs(s):
    return [
        {"path": s["qvga"], "start": 0, "end": 1.5, "whole": True, "flow": ["farneback"]},
        {"path": s["hd"], "start": 0.2, "end": 0.9, "flow": ["dis"]},
        {"path": s["qcif"], "start": 0, "end": 2, "whole": True, "opts": {"remove_dup": True}},
        {"path": s["same"], "start": 0, "end": 1, "whole": True, "flow": ["dis"]},
        {"path": s["long"], "start": 0, "end": 6, "opts": {"trim": "copy", "scale": 320}},
    ]


def test_each_output_kind_is_the_same_alone_after_other_clips_and_in_another_thread(tmp_path, sources):
    targets, others = target_jobs(sources), other_jobs(sources)
    alone = in_fresh_interpreter(targets, tmp_path / "alone")
    assert [sorted(d) for d in alone] == [["flow-dis", "flow-farneback", "resized", "rgb", "video"],
                                          ["flow-dis", "resized", "rgb", "video"],
                                          ["flow-tvl1", "resized", "rgb"]]
    work = tmp_path / "here"
    for round_, history in enumerate((others, others[::-1])):
        run_jobs(history, str(work / f"others{round_}"))
        assert run_jobs(targets, str(work / f"targets{round_}")) == alone
    video_only = [dict(job, flow=[j for j in job["flow"] if j == "dis"]) for job in targets[:2]]
    mixed = [video_only[0], others[1], video_only[1], others[0], video_only[0], others[2], video_only[1]]
    with ThreadPoolExecutor(3) as pool:  # clips side by side in threads of one worker
        got = list(pool.map(run_job, mixed, [str(work / "threads" / str(i)) for i in range(len(mixed))]))
    expect = [{k: v for k, v in a.items() if k != "flow-farneback"} for a in alone[:2]]
    assert [got[i] for i in (0, 2, 4, 6)] == [expect[0], expect[1], expect[0], expect[1]]


def test_identical_sources_in_one_run_give_identical_files(tmp_path, sources):
    """The report: byte-identical 10 s 640x360 CVDF clips, one run, --source local; other clips in
    between, two worker threads. Every resized mp4 (and every other output) is the same, and the
    same as the stage makes of the clip alone in a fresh interpreter."""
    src = tmp_path / "src.mp4"
    synthetic_video(str(src), 10, fps=25, width=640, height=360, seed=11, audio=True)
    root = tmp_path / "mirror"
    root.mkdir()
    rows, same = HEAD, []
    others = [("qvga", 1), ("hd", 1), ("qcif", 2)]  # annotated lengths (qvga lasts 1.5 s: still the clip)
    for i in range(8):
        yid = f"same{i:07d}"
        shutil.copy(src, root / f"{yid}_000000_000010.mp4")
        rows += f"abseiling,{yid},0,10,val\n"
        same.append(yid)
        if i < len(others):
            name, seconds = others[i]
            oid = f"{name:0<11}"
            shutil.copy(sources[name], root / f"{oid}_000000_{seconds:06d}.mp4")
            rows += f"zumba,{oid},0,{seconds},val\n"
    ann = write_csv(tmp_path / "val.csv", rows)
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--source", "local",
                   "--video-root", root, "--steps", "fetch,resize,rgb,flow", "--flow-algorithm", "dis",
                   "--direct_num_workers", "2", "--direct_running_mode", "multi_threading") == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert {r["status"] for r in recs.values()} == {"ok"} and len(recs) == len(same) + len(others)
    kinds = {"video": "videos_val/abseiling/{}_000000_000010.mp4",
             "resized": "videos_val_256p_dense_cache/abseiling/{}_000000_000010.mp4",
             "rgb": "rawframes_val/abseiling/{}_000000_000010"}
    got = {kind: {digest(out / pattern.format(y)) if kind != "rgb" else
                  digest_prefixed(out / pattern.format(y), "img_") for y in same} for kind, pattern in kinds.items()}
    got["flow"] = {digest_prefixed(out / kinds["rgb"].format(y), "flow_") for y in same}
    assert {k: len(v) for k, v in got.items()} == {"video": 1, "resized": 1, "rgb": 1, "flow": 1}
    alone = in_fresh_interpreter([{"path": str(src), "start": 0, "end": 10, "whole": True, "flow": ["dis"]}],
                                 tmp_path / "alone")[0]
    assert got["resized"] == {alone["resized"]} and got["video"] == {alone["video"]}
    assert got["rgb"] == {alone["rgb"]} and got["flow"] == {alone["flow-dis"]}


def digest_prefixed(folder, prefix):
    """digest() of the files in `folder` whose names start with `prefix`, as one folder of them."""
    h = hashlib.md5()
    for name in sorted(n for n in os.listdir(folder) if n.startswith(prefix)):
        h.update(name.encode() + b"\0")
        h.update(pathlib.Path(folder, name).read_bytes())
    return h.hexdigest()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="zero_filled_heap needs glibc's mallopt")
def test_after_an_x264_stream_is_made_malloc_returns_zeros_whatever_was_freed_before():
    """The mechanism behind the bitstreams above: x264 reads memory it allocated and had not
    written, so a heap that hands back freed bytes as they were made each clip's first GOP depend
    on the clips before it."""
    with av.open(io.BytesIO(), "w", format="mp4") as out:
        x264_stream(out, 25)
    assert zero_filled_heap()
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    for size in (4096, 64 << 10, 1 << 20):
        block = libc.malloc(size)
        ctypes.memset(block, 0xAB, size)
        libc.free(block)
        again = libc.malloc(size)
        assert ctypes.string_at(again, size) == bytes(size)
        libc.free(again)
