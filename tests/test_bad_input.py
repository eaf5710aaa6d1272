"""Bad input end to end: bytes that are not text, NULs, a 100 MB line and a quote left open in the
annotation CSVs; CVDF parts whose members are links or climb out of the part; a local video root
with symlink loops, broken links, FIFOs and files that cannot be read. Each gives one record
saying where and why, the rest of the run goes on, and nothing is written outside --output."""
import io
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import tracemalloc

import pytest

from conftest import ANNOTATIONS, ROOT, make_video, read_records, run_cli, write_csv
from transforms import reader
from transforms.reader import AnnotationReader, LabelMap, parse_rows
from transforms.records import Clip

HEAD = b"label,youtube_id,time_start,time_end,split\n"
LABELS = ["abseiling", "caf\u00e9", "zumba"]


def read(paths, labels=LABELS, **kw):
    return list(AnnotationReader(LabelMap(labels), **kw).read([str(p) for p in paths]))


def invalid(items):
    return [i for i in items if isinstance(i, dict)]


def clips(items):
    return [(c.youtube_id, c.line) for c in items if isinstance(c, Clip)]


def tree(root, skip=()):
    """{path: (kind, size, mtime_ns)} of everything under root but `skip`, links not followed."""
    skip = set(map(str, skip))
    out = {}
    for parent, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(parent, d) not in skip]
        for path in (os.path.join(parent, n) for n in dirs + files):
            if path not in skip:
                st = os.lstat(path)
                out[path] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def assert_only_output_written(tmp_path, before, out, private_tmp):
    """Nothing under tmp_path but --output was made, changed or touched; the private temp dir is
    empty again."""
    assert out.is_dir() and tree(tmp_path, skip=(out, private_tmp)) == before
    assert not list(private_tmp.iterdir())


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temp dir every staging dir of the run is made in (empty before and after the run)."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


# ---------------------------------------------------------------------------- annotation CSVs

def test_latin1_row_is_invalid_naming_file_line_and_byte(tmp_path):
    data = (HEAD + "caf\u00e9,abcdefghijk,1,11,train\n".encode()  # UTF-8: fine
            + b"caf\xe9,bbcdefghijk,1,11,train\n"  # Latin-1
            + b"zumba,cbcdefghijk,1,11,train\n")
    items = read([write_csv(tmp_path / "a.csv", data)])
    assert clips(items) == [("abcdefghijk", 2), ("cbcdefghijk", 4)]
    (bad,) = invalid(items)
    offset = len(HEAD) + len("caf\u00e9,abcdefghijk,1,11,train\n".encode()) + 3
    assert bad["reason"] == (f"a.csv line 3: not UTF-8 (byte 0xe9 at byte 4 of the line, offset {offset} of the "
                             "file, in label 'caf\\xe9'); save the file as UTF-8")
    assert (bad["clip_id"], bad["split"], bad["label"], bad["youtube_id"]) == ("line-3", "train", "", "bbcdefghijk")
    assert bad["raw"]["fields"] == ["caf\\xe9", "bbcdefghijk", "1", "11", "train"]
    # the label cannot be known, so --classes keeps the row, as any row whose label is unknown
    assert [i["line"] for i in invalid(read([tmp_path / "a.csv"], classes=["zumba"]))] == [3]


def test_latin1_byte_in_a_real_k700_csv_leaves_every_other_row(tmp_path, fixtures):
    lines = (ANNOTATIONS / "deepmind_k700_2020_validate.csv").read_bytes().split(b"\n")
    assert lines[99].startswith(b"testifying,")
    lines[99] = lines[99].replace(b"testifying", b"t\xe9stifying", 1)
    path = write_csv(tmp_path / "validate.csv", b"\n".join(lines))
    labels = (ROOT / "configs" / "label_map_k700.txt").read_text().splitlines()
    items = read([path], labels)
    (bad,) = invalid(items)
    assert bad["line"] == 100 and bad["reason"].startswith("validate.csv line 100: not UTF-8 (byte 0xe9 at byte 2")
    assert "in label 't\\xe9stifying'" in bad["reason"]
    assert len(items) == 34173


def test_nul_bytes_make_their_row_invalid_wherever_they_are(tmp_path):
    data = (b"label,youtube_id,time_start,time_end,split,is_cc\n"
            b"abseiling,abcdefghijk,1,11,train,0\n"
            b"zum\x00ba,bbcdefghijk,1,11,train,0\n"
            b"zumba,cbcdefghijk,1,11,train,\x00\n"  # a NUL in a column nothing reads
            b"zumba,dbcdefghijk,1,11,train,0\n")
    items = read([write_csv(tmp_path / "kinetics_train.csv", data)])
    assert clips(items) == [("abcdefghijk", 2), ("dbcdefghijk", 5)]
    lines = data.split(b"\n")
    at = [(data.index(b"\x00"), lines[2].index(b"\x00")), (data.rindex(b"\x00"), lines[3].index(b"\x00"))]
    assert [(i["line"], i["reason"]) for i in invalid(items)] == [
        (3, f"kinetics_train.csv line 3: contains a NUL byte (byte {at[0][1] + 1} of the line, offset {at[0][0]} "
            "of the file, in label 'zum\\x00ba')"),
        (4, f"kinetics_train.csv line 4: contains a NUL byte (byte {at[1][1] + 1} of the line, offset {at[1][0]} "
            "of the file, in is_cc '\\x00')")]
    assert invalid(items)[1]["raw"]["label"] == "zumba"


def test_a_quote_left_open_is_one_invalid_row(tmp_path):
    """A quote no later line closes into a row of the header's width takes no other line along
    (here a later quoted label would close it, into a row of the wrong width)."""
    data = HEAD + b'"abseiling,abcdefghijk,1,11,train\n' + b"zumba,bbcdefghijk,1,11,train\n" \
        + b'"zumba",cbcdefghijk,1,11,train\n' + b'zumba,"dbcdefghijk,1,11,train\n'
    items = read([write_csv(tmp_path / "a.csv", data)])
    assert clips(items) == [("bbcdefghijk", 3), ("cbcdefghijk", 4)]
    assert [i["reason"] for i in invalid(items)] == [
        "a.csv line 2: expected 5 fields, got 1 (a quote is not closed)",
        "a.csv line 5: expected 5 fields, got 2 (a quote is not closed)"]


def test_a_quoted_field_may_span_lines(tmp_path):
    data = (b"label,youtube_id,time_start,time_end,split,is_cc\n"
            b'abseiling,abcdefghijk,1,11,train,"a note\r\non two lines"\r\n'
            b'"zumba\rx",bbcdefghijk,1,11,train,0\n'
            b"zumba,cbcdefghijk,1,11,train,0\n")
    items = read([write_csv(tmp_path / "a.csv", data)])
    assert clips(items) == [("abcdefghijk", 3), ("cbcdefghijk", 6)]
    assert items[0].line == 3 and items[0].label == "abseiling"  # numbered by its last line, as csv does
    (bad,) = invalid(items)
    assert bad["line"] == 5 and bad["raw"]["label"] == "zumba\rx" and "control character" in bad["reason"]


class CountingFile(io.FileIO):
    """A file that counts the bytes read from it."""
    read_bytes = 0

    def readinto(self, b):
        n = super().readinto(b)
        self.read_bytes += n or 0
        return n

    def read(self, size=-1):
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def test_a_100_mb_line_is_one_invalid_row_read_once_in_bounded_memory(tmp_path):
    path = tmp_path / "kinetics_val.csv"
    with open(path, "wb") as f:
        f.write(HEAD + b"abseiling,abcdefghijk,1,11,val\n" + b"zumba,")
        for _ in range(100):
            f.write(b"x" * (1 << 20))
        f.write(b",1,11,val\nzumba,bbcdefghijk,1,11,val\n")
    size = path.stat().st_size
    f = CountingFile(path)
    tracemalloc.start()
    try:
        rows = list(parse_rows(io.BufferedReader(f)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(line, why) for line, _, why in rows] == [
        (2, ""), (3, f"line is {len('zumba,') + (100 << 20) + len(',1,11,val'):,} bytes long, more than the 65,536 "
                     "a row may have"), (4, "")]
    assert rows[2][1]["youtube_id"] == "bbcdefghijk"
    assert f.read_bytes == size  # read once
    assert peak < 4 << 20, peak  # a few chunks, never the line
    items = read([path])
    assert clips(items) == [("abcdefghijk", 2), ("bbcdefghijk", 4)]
    (bad,) = invalid(items)
    assert bad["split"] == "val" and bad["reason"].startswith("kinetics_val.csv line 3: line is 104,857,615 bytes")


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64])
def test_lines_split_as_csv_splits_them_at_any_chunk_size(monkeypatch, chunk):
    data = b"\xef\xbb\xbfa,b\r\nc\rd\n\ne,f\r\r\ng" + b"h" * 70 + b"\r\ni"
    monkeypatch.setattr(reader, "CHUNK", chunk)
    got = [tuple(x) for x in reader.physical_lines(io.BytesIO(data), limit=64)]
    assert got == [(1, 3, b"a,b", 3, b"\r\n"), (2, 8, b"c", 1, b"\r"), (3, 10, b"d", 1, b"\n"), (4, 12, b"", 0, b"\n"),
                   (5, 13, b"e,f", 3, b"\r"), (6, 17, b"", 0, b"\r\n"), (7, 19, None, 71, b"\r\n"),
                   (8, 92, b"i", 1, b"")]
    assert list(reader.physical_lines(io.BytesIO(b"\xef\xbb\xbf"))) == []
    assert [(x.data, x.end) for x in reader.physical_lines(io.BytesIO(b"a\r"))] == [(b"a", b"\r")]
    for data in (b"x" * 64, b"x" * 64 + b"\r\n", b"x" * 65, b"x" * 65 + b"\n"):  # the limit is on the line, not its end
        assert [(x.data, x.length) for x in reader.physical_lines(io.BytesIO(data), limit=64)] == \
            [(b"x" * 64 if len(data.strip()) == 64 else None, len(data.strip()))]


def test_headers_that_are_not_text(tmp_path):
    nul = b"label,youtube_id,time\x00_start\n"
    cases = {"utf16.csv": HEAD.decode().encode("utf-16"), "nul.csv": nul,
             "long.csv": b"x" * 70000 + b"\n" + HEAD}
    got = {name: [(i["line"], i["reason"]) for i in read([write_csv(tmp_path / name, data)])]
           for name, data in cases.items()}
    assert got == {
        "utf16.csv": [(1, "utf16.csv line 1: unreadable header: the file is UTF-16; save it as UTF-8")],
        "nul.csv": [(1, f"nul.csv line 1: unreadable header: contains a NUL byte (byte {nul.index(0) + 1} of the line, "
                        f"offset {nul.index(0)} of the file)")],
        "long.csv": [(1, "long.csv line 1: unreadable header: line is 70,000 bytes long, more than the 65,536 a "
                         "row may have")]}


def test_bad_rows_through_the_cli(tmp_path, private_tmp):
    """One CSV with every kind of bad row beside good ones, run end to end with local videos."""
    videos = tmp_path / "videos"
    for yid in ("goodclip001", "goodclip002"):
        make_video(videos / f"{yid}_000000_000002.mp4", seconds=2)
    ann = write_csv(tmp_path / "ann" / "val.csv", HEAD
                    + b"abseiling,goodclip001,0,2,val\n"
                    + b"caf\xe9,latin100001,0,2,val\n"
                    + b"zumba,nul0000\x00001,0,2,val\n"
                    + b"zumba," + b"y" * (1 << 20) + b",0,2,val\n"
                    + b'"zumba,openquote01,0,2,val\n'
                    + b"zumba,goodclip002,0,2,val\n")
    labels = write_csv(tmp_path / "ann" / "labels.txt", "".join(f"{x}\n" for x in LABELS))
    before = tree(tmp_path, skip=(private_tmp,))
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--label-map", labels, "--annotations", ann, "--output", out,
                   "--source", "local", "--video-root", videos, "--steps", "fetch") == 0
    recs = {r["line"]: r for r in read_records(out)}
    assert {line: r["status"] for line, r in recs.items()} == {
        2: "ok", 3: "invalid", 4: "invalid", 5: "invalid", 6: "invalid", 7: "ok"}
    assert recs[3]["reason"].startswith("val.csv line 3: not UTF-8 (byte 0xe9 at byte 4")
    assert recs[4]["reason"].startswith("val.csv line 4: contains a NUL byte (byte 14")
    assert recs[5]["reason"] == "val.csv line 5: line is 1,048,590 bytes long, more than the 65,536 a row may have"
    assert recs[6]["reason"] == "val.csv line 6: expected 5 fields, got 1 (a quote is not closed)"
    assert json.loads((out / "summary.json").read_text())["total"] == {"ok": 2, "invalid": 4}
    failures = (out / "failures.csv").read_text()
    assert "nul0000\\x00001" in failures and "\x00" not in failures
    assert_only_output_written(tmp_path, before, out, private_tmp)


# ---------------------------------------------------------------------------- CVDF parts

def _member(tar, name, data=None, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if data is not None else 0
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def test_cvdf_links_and_escaping_paths_are_never_followed_or_written(tmp_path, private_tmp, caplog):
    video = make_video(tmp_path / "src.mp4", seconds=2).read_bytes()
    parts = tmp_path / "parts"
    parts.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret0000a_000000_000002.mp4").write_bytes(video)
    with tarfile.open(parts / "part_0.tar.gz", "w:gz") as tar:
        _member(tar, "val/symlink0000_000000_000002.mp4", kind=tarfile.SYMTYPE,
                link=str(outside / "secret0000a_000000_000002.mp4"))
        _member(tar, "../../escape00000_000000_000002.mp4", video)
        _member(tar, str(tmp_path / "abspath0000_000000_000002.mp4"), video)
        _member(tar, "val/hardlink000_000000_000002.mp4", kind=tarfile.LNKTYPE, link="val/x.mp4")
        _member(tar, "val/twomember00_000000_000002.mp4", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _member(tar, "val/twomember00_000000_000002.mkv", video)
        _member(tar, "val/directory00_000000_000002.mp4", kind=tarfile.DIRTYPE)
    with tarfile.open(parts / "part_1.tar", "w") as tar:
        _member(tar, "val/symlink0000_000000_000002.mkv", kind=tarfile.SYMTYPE, link="../x.mkv")
    ann = write_csv(tmp_path / "val.csv", HEAD + b"".join(
        b"abseiling,%s,0,2,val\n" % yid for yid in (b"symlink0000", b"escape00000", b"abspath0000", b"hardlink000",
                                                    b"twomember00", b"directory00")))
    before = tree(tmp_path, skip=(private_tmp,))
    out = tmp_path / "out"
    caplog.set_level(logging.WARNING, logger="transforms.sources")
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--source", "cvdf",
                   "--video-root", parts, "--steps", "fetch") == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert {k: r["status"] for k, r in recs.items()} == {
        "symlink0000": "missing", "escape00000": "missing", "abspath0000": "missing", "hardlink000": "missing",
        "twomember00": "ok", "directory00": "missing"}
    assert recs["twomember00"]["source"] == "cvdf:part_0.tar.gz:val/twomember00_000000_000002.mkv"
    secret = outside / "secret0000a_000000_000002.mp4"
    assert recs["symlink0000"]["reason"] == (
        "no usable symlink0000_000000_000002.* in the CVDF parts: part_0.tar.gz member "
        f"'val/symlink0000_000000_000002.mp4' is a symbolic link to '{secret}'; part_1.tar member "
        "'val/symlink0000_000000_000002.mkv' is a symbolic link to '../x.mkv'; not used")
    assert recs["escape00000"]["reason"] == (
        "no usable escape00000_000000_000002.* in the CVDF parts: part_0.tar.gz member "
        "'../../escape00000_000000_000002.mp4' has a '..' in its path; not used")
    assert "has an absolute path" in recs["abspath0000"]["reason"]
    assert "is a hard link to 'val/x.mp4'" in recs["hardlink000"]["reason"]
    assert "'val/directory00_000000_000002.mp4' is not a regular file" in recs["directory00"]["reason"]
    warned = [r.getMessage() for r in caplog.records if r.name == "transforms.sources"]
    assert sum("symlink0000_000000_000002" in m and "skipped" in m for m in warned) == 2
    assert sum("escape00000" in m for m in warned) == 1
    assert_only_output_written(tmp_path, before, out, private_tmp)
    assert not (tmp_path.parent / "escape00000_000000_000002.mp4").exists()
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.m*")] == [
        "videos_val/abseiling/twomember00_000000_000002.mp4"]


# ---------------------------------------------------------------------------- a local video root

def test_local_root_loops_broken_links_fifos_and_unreadable_files(tmp_path, private_tmp):
    root = tmp_path / "root"
    make_video(root / "goodclip000_000000_000002.mp4", seconds=2)
    (root / "loopclip000_000000_000002.mp4").symlink_to("loopclip000_000000_000002.mp4")  # loops on itself
    (root / "loopa").symlink_to("loopb")
    (root / "loopb").symlink_to("loopa")
    (root / "twoloops000_000000_000002.mkv").symlink_to("loopa")
    (root / "brokenlink0_000000_000002.mp4").symlink_to("nowhere/x.mp4")
    os.mkfifo(root / "fifoclip000_000000_000002.mp4")
    (root / "dirclip0000_000000_000002.mp4").mkdir()
    (root / "unreadable0_000000_000002.mp4").symlink_to("/proc/self/mem")  # regular; reading it: EIO
    (root / "abseiling").symlink_to(".")  # a class dir linking back to the root: a cycle for a tree walk
    make_video(root / "viaclassdir_000000_000002.mp4", seconds=2)
    ids = ["goodclip000", "loopclip000", "twoloops000", "brokenlink0", "fifoclip000", "dirclip0000",
           "unreadable0", "viaclassdir"]
    ann = write_csv(tmp_path / "val.csv", HEAD + b"".join(b"abseiling,%s,0,2,val\n" % i.encode() for i in ids))
    before = tree(tmp_path, skip=(private_tmp,))
    out = tmp_path / "out"
    assert run_cli("--dataset", "kinetics400", "--annotations", ann, "--output", out, "--source", "local",
                   "--video-root", root, "--steps", "fetch") == 0
    recs = {r["youtube_id"]: r for r in read_records(out)}
    got = {k: (r["status"], r["reason"].replace(str(root), "ROOT")) for k, r in recs.items()}
    assert got == {
        "goodclip000": ("ok", ""), "viaclassdir": ("ok", ""),
        "loopclip000": ("missing", "no usable video for loopclip000_000000_000002 under ROOT "
                                   "(loopclip000_000000_000002.mp4: Too many levels of symbolic links)"),
        "twoloops000": ("missing", "no usable video for twoloops000_000000_000002 under ROOT "
                                   "(twoloops000_000000_000002.mkv: Too many levels of symbolic links)"),
        "brokenlink0": ("missing", "no usable video for brokenlink0_000000_000002 under ROOT "
                                   "(brokenlink0_000000_000002.mp4: a symbolic link to 'nowhere/x.mp4', which "
                                   "does not exist)"),
        "fifoclip000": ("missing", "no usable video for fifoclip000_000000_000002 under ROOT "
                                   "(fifoclip000_000000_000002.mp4: not a regular file)"),
        "dirclip0000": ("missing", "no usable video for dirclip0000_000000_000002 under ROOT "
                                   "(dirclip0000_000000_000002.mp4: not a regular file)"),
        "unreadable0": ("failed", "no usable video for unreadable0_000000_000002 under ROOT "
                                  "(unreadable0_000000_000002.mp4: cannot be read: Input/output error)")}
    assert recs["viaclassdir"]["frames"] == 20
    assert_only_output_written(tmp_path, before, out, private_tmp)


DROP_ROOTS_READ_ALL = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                       "--inh-caps=-dac_override,-dac_read_search"]


def test_a_file_without_read_permission(tmp_path):
    """A video the run may not read, end to end in a child process; as root (who reads every file)
    the child runs without the capabilities that let root ignore file modes."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root and setpriv (util-linux) is absent: cannot make a file unreadable")
        prefix = DROP_ROOTS_READ_ALL
    root = tmp_path / "root"
    make_video(root / "goodclip000_000000_000002.mp4", seconds=2)
    make_video(root / "noaccess000_000000_000002.mp4", seconds=2).chmod(0)
    ann = write_csv(tmp_path / "val.csv", HEAD + b"abseiling,goodclip000,0,2,val\nzumba,noaccess000,0,2,val\n")
    out = tmp_path / "out"
    proc = subprocess.run([*prefix, sys.executable, "-m", "pipeline", "--dataset", "kinetics400", "--annotations",
                           str(ann), "--output", str(out), "--source", "local", "--video-root", str(root),
                           "--steps", "fetch"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    recs = {r["youtube_id"]: r for r in read_records(out)}
    assert (recs["goodclip000"]["status"], recs["goodclip000"]["frames"]) == ("ok", 20)
    assert (recs["noaccess000"]["status"], recs["noaccess000"]["reason"]) == (
        "failed", f"no usable video for noaccess000_000000_000002 under {root} "
                  "(noaccess000_000000_000002.mp4: cannot be read: Permission denied)")
