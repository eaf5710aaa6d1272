import collections
import io
import tarfile

import pytest

from conftest import ANNOTATIONS, ROOT, serve_dir, write_csv
from pipeline.options import builtin_config
from transforms.reader import AnnotationError, AnnotationReader, LabelMap, check_trim_format, clean_class_dir
from transforms.records import Clip


def label_map(name):
    return LabelMap((ROOT / "configs" / f"label_map_{name}.txt").read_text().splitlines())


def read(urls, lm="k400", **kw):
    return list(AnnotationReader(label_map(lm), **kw).read([str(u) for u in urls]))


def clips(items):
    return [i for i in items if isinstance(i, Clip)]


# file, label map, rows, classes, split, labelled
REAL = [
    ("activitynet_kinetics-400_val.csv", "k400", 19906, 400, "val", True),
    ("activitynet_kinetics-400_test.csv", "k400", 38685, 1, "test", False),
    ("activitynet_kinetics-600_val.csv", "k600", 30000, 600, "val", True),
    ("deepmind_k400_validate.csv", "k400", 18035, 400, "val", True),
    ("deepmind_k400_test.csv", "k400", 35357, 400, "test", True),
    ("deepmind_k700_2020_validate.csv", "k700", 34173, 700, "val", True),
    ("deepmind_k700_2020_test.csv", "k700", 67714, 1, "test", False),
]


@pytest.mark.parametrize("name,lm,rows,classes,split,labelled", REAL)
def test_real_csvs_parse(fixtures, name, lm, rows, classes, split, labelled):
    items = read([ANNOTATIONS / name], lm)
    got = clips(items)
    assert len(got) == len(items) == rows
    assert len({c.class_dir for c in got}) == classes
    assert {c.split for c in got} == {split}
    if labelled:
        names = label_map(lm).labels
        assert all(names[c.label_index] == c.label for c in got)
    else:
        assert {(c.class_dir, c.label_index, c.label) for c in got} == {("test", -1, "")}


def test_known_rows_of_k400_val(fixtures):
    got = {c.clip_id: c for c in clips(read([ANNOTATIONS / "activitynet_kinetics-400_val.csv"]))}
    c = got["0wR5jVB-WPk_000417_000427"]
    assert (c.class_dir, c.label_index, c.split, c.line) == ("abseiling", 0, "val", 2)
    massaging = [c for c in got.values() if c.label == "massaging person's head"]
    assert massaging and {(c.class_dir, c.label_index) for c in massaging} == {("massaging_person's_head", 196)}
    hurling = [c for c in got.values() if c.label == "hurling (sport)"]
    assert hurling and {(c.class_dir, c.label_index) for c in hurling} == {("hurling_(sport)", 161)}


def test_k700_2020_short_clips_and_repeated_ids(fixtures):
    got = clips(read([ANNOTATIONS / "deepmind_k700_2020_validate.csv"], "k700"))
    assert sum(1 for c in got if c.duration < 10) == 6
    ids = collections.Counter(c.youtube_id for c in got)
    assert sum(1 for n in ids.values() if n > 1) == 53


def test_label_maps_equal_mmaction2s(fixtures):
    for name in ("k400", "k600", "k700"):
        assert (ROOT / "configs" / f"label_map_{name}.txt").read_bytes() == \
            (fixtures / f"label_map_{name}.txt").read_bytes()
    assert builtin_config("kinetics700_2020")["label_map"] == label_map("k700").labels


def test_quoting_bom_crlf_and_validate(tmp_path):
    text = ('\ufefflabel,youtube_id,time_start,time_end,split,is_cc\r\n'
            '"air drumming",abcdefghijk,17.9,27.2,validate,1\r\n'
            'abseiling,-bcdefghijk,0,10,train,0\r\n')
    got = clips(read([write_csv(tmp_path / "a.csv", text)]))
    assert [(c.class_dir, c.clip_id, c.split, c.label_index) for c in got] == [
        ("air_drumming", "abcdefghijk_000017_000027", "val", 1),
        ("abseiling", "-bcdefghijk_000000_000010", "train", 0)]


def test_columns_by_name_not_position(tmp_path):
    text = "split,time_end,youtube_id,label,time_start\ntrain,20,abcdefghijk,abseiling,10\n"
    (c,) = clips(read([write_csv(tmp_path / "a.csv", text)]))
    assert (c.clip_id, c.label) == ("abcdefghijk_000010_000020", "abseiling")


def test_split_from_file_name_when_no_column(tmp_path):
    text = "label,youtube_id,time_start,time_end\nabseiling,abcdefghijk,1,11\n"
    (c,) = clips(read([write_csv(tmp_path / "kinetics_val.csv", text)]))
    assert c.split == "val"


def test_trim_format_and_raw_class_dirs(tmp_path):
    text = "label,youtube_id,time_start,time_end,split\nair drumming,abcdefghijk,5,15,train\n"
    (c,) = clips(read([write_csv(tmp_path / "a.csv", text)], trim_format="%d", class_dirs="raw"))
    assert (c.clip_id, c.class_dir) == ("abcdefghijk_5_15", "air drumming")


def test_duplicates_once_and_same_id_under_two_labels(tmp_path):
    text = ("label,youtube_id,time_start,time_end,split\n"
            "abseiling,abcdefghijk,1,11,train\n"
            "abseiling,abcdefghijk,1,11,train\n"
            "archery,abcdefghijk,1,11,train\n")
    got = clips(read([write_csv(tmp_path / "a.csv", text)]))
    assert [(c.class_dir, c.line) for c in got] == [("abseiling", 2), ("archery", 4)]


def test_filters_and_limit_in_annotation_order(fixtures):
    items = read([ANNOTATIONS / "deepmind_k400_validate.csv"], classes=["hurling (sport)", "abseiling"],
                 limit=3)
    got = clips(items)
    assert len(got) == 3 and {c.class_dir for c in got} <= {"hurling_(sport)", "abseiling"}
    lines = [c.line for c in got]
    assert lines == sorted(lines)
    every = [c for c in clips(read([ANNOTATIONS / "deepmind_k400_validate.csv"]))
             if c.class_dir in ("hurling_(sport)", "abseiling")]
    assert [c.clip_id for c in every[:3]] == [c.clip_id for c in got]
    assert read([ANNOTATIONS / "deepmind_k400_validate.csv"], splits=["train"]) == []


ADVERSARIAL = [
    ("abseiling,../../etc/pw,1,11,train", "youtube_id"),
    ("abseiling,abcdefghij/,1,11,train", "youtube_id"),
    ("../../../tmp/evil,abcdefghijk,1,11,train", "path separator"),
    ("..,abcdefghijk,1,11,train", "not a usable directory name"),
    ('"a\\b",abcdefghijk,1,11,train', "path separator"),
    ('"bad\x01label",abcdefghijk,1,11,train', "control character"),
    ("$(touch pwned),abcdefghijk,1,11,train", "not in"),
    ("abseiling,abcdefghijk,11,1,train", "not before"),
    ("abseiling,abcdefghijk,5,5,train", "not before"),
    ("abseiling,abcdefghijk,-1,9,train", "non-negative"),
    ("abseiling,abcdefghijk,abc,9,train", "non-negative"),
    ("abseiling,abcdefghijk,nan,9,train", "non-negative"),
    ("abseiling,abcdefghijk,1,inf,train", "non-negative"),
    ("abseiling,abcdefghijk,1,1e400,train", "out of range"),
    ("abseiling,abcdefghijk,1_0,20,train", "non-negative"),
    ("abseiling,abcdefghijk,1,11,holdout", "unknown split"),
    ("abseiling,abcdefghijk,1,11", "expected 5 fields"),
    (",abcdefghijk,1,11,train", "no label"),
    ("not a class,abcdefghijk,1,11,train", "not in the label map"),
]


@pytest.mark.parametrize("row,why", ADVERSARIAL)
def test_bad_rows_are_invalid_records(tmp_path, row, why):
    text = "label,youtube_id,time_start,time_end,split\n" + row + "\n"
    (item,) = read([write_csv(tmp_path / "a.csv", text)])
    assert item["status"] == "invalid" and item["clip_id"] == "line-2"
    assert why in item["reason"]


def test_missing_columns_and_empty_file(tmp_path):
    (a,) = read([write_csv(tmp_path / "a.csv", "label,youtube_id,time_start\nx,abcdefghijk,1\n")])
    assert a["status"] == "invalid" and "time_end" in a["reason"] and a["clip_id"] == "line-1"
    (b,) = read([write_csv(tmp_path / "val.csv", "")])
    assert b["status"] == "invalid" and b["reason"] == "val.csv line 1: empty annotation file" and b["split"] == "val"


def _tarball(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_members_of_the_official_tarball_at_any_depth(tmp_path):
    head = "label,youtube_id,time_start,time_end,split\n"
    tgz = _tarball(tmp_path / "kinetics400.tar.gz", {
        "kinetics400/train.csv": head + "abseiling,abcdefghijk,1,11,train\n",
        "kinetics400/train.json": "{}",
        "kinetics400/deeper/validate.csv": head + "archery,bbcdefghijk,2,12,validate\n",
        "test.csv": "youtube_id,time_start,time_end,split\ncbcdefghijk,3,13,test\n",
    })
    got = clips(read([tgz]))
    assert [(c.split, c.class_dir) for c in got] == [("train", "abseiling"), ("val", "archery"), ("test", "test")]
    assert got[1].annotation.endswith("kinetics400.tar.gz:kinetics400/deeper/validate.csv")
    with pytest.raises(AnnotationError, match="holds no"):
        read([_tarball(tmp_path / "empty.tar.gz", {"readme.txt": "hi"})])


def test_http_and_fsspec_sources(tmp_path, fixtures):
    import fsspec
    with serve_dir(ANNOTATIONS) as base:
        got = clips(read([f"{base}/activitynet_kinetics-400_val.csv"]))
    assert len(got) == 19906
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/ann/val.csv", (ANNOTATIONS / "deepmind_k400_validate.csv").read_bytes())
    assert len(clips(read(["memory:///ann/val.csv"]))) == 18035
    with pytest.raises(AnnotationError, match="cannot read annotations .*nope.csv: No such file"):
        read([tmp_path / "nope.csv"])


def test_clean_class_dir_matches_mmaction2():
    assert clean_class_dir('"massaging person\'s head"') == "massaging_person's_head"
    assert clean_class_dir("hurling (sport)") == "hurling_(sport)"


HEAD = "label,youtube_id,time_start,time_end,split\n"


def test_malformed_rows_are_filtered_by_split_and_keep_their_fields(tmp_path):
    train = write_csv(tmp_path / "kinetics_train.csv", HEAD + "abseiling,abcdefghijk,1,11,train\nabseiling,x\n")
    val = write_csv(tmp_path / "kinetics_val.csv", HEAD + "abseiling,bbcdefghijk,1,11,val\nzumba,cbcdefghijk\n")
    other = write_csv(tmp_path / "more.csv", HEAD + "air, drumming,dbcdefghijk,1,11,train\n"
                                                  "air, drumming,ebcdefghijk,1,11,val\nx,y\n")
    bad_header = write_csv(tmp_path / "test.csv", "id,start\nabcdefghijk,1\n")
    items = read([train, val, other, bad_header], splits=["val"])
    invalid = [(i["split"], i["reason"], i["raw"]) for i in items if isinstance(i, dict)]
    assert invalid == [
        ("val", "kinetics_val.csv line 3: expected 5 fields, got 2",
         {"label": "zumba", "youtube_id": "cbcdefghijk", "fields": ["zumba", "cbcdefghijk"]}),
        ("val", "more.csv line 3: expected 5 fields, got 6",
         {"split": "val", "fields": ["air", "drumming", "ebcdefghijk", "1", "11", "val"]}),
        ("unknown", "more.csv line 4: expected 5 fields, got 2", {"label": "x", "youtube_id": "y", "fields": ["x", "y"]}),
    ]
    assert [c.clip_id for c in clips(items)] == ["bbcdefghijk_000001_000011"]
    by_class = read([val, other], splits=["val"], classes=["abseiling"])
    assert [i["reason"].split(":")[0] for i in by_class if isinstance(i, dict)] == ["more.csv line 3"]
    (header,) = [i for i in read([bad_header]) if isinstance(i, dict)]
    assert header["split"] == "test" and header["raw"] == {"fields": ["id", "start"]}
    assert header["reason"].startswith("test.csv line 1: header 'id,start' lacks")


def test_same_clip_id_with_other_times_is_invalid(tmp_path):
    a = write_csv(tmp_path / "a.csv", HEAD + "abseiling,abcdefghijk,0,10,val\nzumba,abcdefghijk,0,10,val\n"
                                              "abseiling,abcdefghijk,0,10,val\nabseiling,abcdefghijk,0.5,10.2,val\n")
    b = write_csv(tmp_path / "b.csv", HEAD + "abseiling,abcdefghijk,0.0,10,val\n")
    items = read([a, b])
    assert [(c.class_dir, c.line) for c in clips(items)] == [("abseiling", 2), ("zumba", 3)]
    (dup,) = [i for i in items if isinstance(i, dict)]
    assert dup["clip_id"] == "line-5" and dup["raw"]["time_start"] == "0.5"
    assert dup["reason"] == "a.csv line 5: duplicates the clip id abcdefghijk_000000_000010 of line 2 of a.csv"
    assert len(clips(read([a, b], trim_format="%.1f"))) == 3


def test_negative_zero_and_trim_format_of_the_time_value(tmp_path):
    text = HEAD + "abseiling,abcdefghijk,-0,10,val\nabseiling,bbcdefghijk,417.5,427.9,val\n"
    ann = write_csv(tmp_path / "a.csv", text)
    assert [(c.clip_id, c.time_start) for c in clips(read([ann]))] == [
        ("abcdefghijk_000000_000010", 0), ("bbcdefghijk_000417_000427", 417.5)]
    assert str(clips(read([ann]))[0].time_start) == "0.0"
    assert [c.clip_id for c in clips(read([ann], trim_format="%.1f"))] == [
        "abcdefghijk_0.0_10.0", "bbcdefghijk_417.5_427.9"]
    assert [c.clip_id for c in clips(read([ann], trim_format="%s"))] == [
        "abcdefghijk_0_10", "bbcdefghijk_417.5_427.9"]
    for bad, why in (("%x", "cannot format 417.5"), ("%s/..", "not a safe"), ("%c", "not a safe"),
                     ("%e", "not a safe")):
        with pytest.raises(ValueError, match=why):
            check_trim_format(bad)


def test_unreadable_sources_say_why(tmp_path):
    with serve_dir(tmp_path) as base:
        with pytest.raises(AnnotationError, match=r"nope.csv: 404 File not found$"):
            read([f"{base}/nope.csv"])
    with pytest.raises(AnnotationError, match=r"x.csv: connection refused: Cannot connect to host 127.0.0.1:9"):
        read(["http://127.0.0.1:9/x.csv"])
    (tmp_path / "bad.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(AnnotationError, match="cannot read annotation archive .*bad.tar.gz: "):
        read([tmp_path / "bad.tar.gz"])
