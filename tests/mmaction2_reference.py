"""What MMAction2's tools/data/build_file_list.py writes for Kinetics, re-stated for the tests
from its documented behaviour (shared/docs/incumbent-spec.md section 8): CSVs read by position,
classes from the sorted train labels, a glob of the tree, rgb then flow lists shuffled from one
random stream (train before val), txt lines or lines2dictlist JSON."""
import csv
import fnmatch
import glob
import json
import os
import random


def convert_label(s):
    return s.replace('"', "").replace(" ", "_")


def _scan_videos(src, level):
    pattern = os.path.join(src, *(["*"] * level))
    info = {}
    for path in glob.glob(pattern):
        rel = os.path.relpath(path, src)
        info[os.path.splitext(rel)[0]] = (rel, -1, -1)
    return info


def _scan_rawframes(src, level):
    pattern = os.path.join(src, *(["*"] * level))
    info = {}
    for path in glob.glob(pattern):
        if not os.path.isdir(path):
            continue
        names = os.listdir(path)
        rgb = len(fnmatch.filter(names, "img_*"))
        fx = len(fnmatch.filter(names, "flow_x_*"))
        fy = len(fnmatch.filter(names, "flow_y_*"))
        if fx != fy:
            raise ValueError("x and y direction have different number of flow images")
        info[os.path.relpath(path, src)] = (path, rgb, fx)
    return info


def _rows(path):
    with open(path) as f:
        reader = csv.reader(f)
        next(reader)
        return list(reader)


def _splits(train_csv, val_csv, level):
    mapping = {c: i for i, c in enumerate(sorted({convert_label(r[0]) for r in _rows(train_csv)}))}

    def to_item(x):
        video = f"{x[1]}_{int(float(x[2])):06d}_{int(float(x[3])):06d}"
        if level == 2:
            video = f"{convert_label(x[0])}/{video}"
        return video, mapping[convert_label(x[0])]

    return [to_item(x) for x in _rows(train_csv)], [to_item(x) for x in _rows(val_csv)]


def _build_list(items, info, shuffle):
    rgb, flow = [], []
    for key, label in items:
        if key not in info:
            continue
        if info[key][1] > 0:
            rgb.append(f"{key} {info[key][1]} {label}\n")
            flow.append(f"{key} {info[key][2]} {label}\n")
        else:
            rgb.append(f"{info[key][0]} {label}\n")
            flow.append(f"{info[key][0]} {label}\n")
    if shuffle:
        random.shuffle(rgb)
        random.shuffle(flow)
    return rgb, flow


def build_file_list(src, train_csv, val_csv, *, subset, fmt="videos", level=2, shuffle=False,
                    seed=None, output_format="txt"):
    """The bytes of {dataset}_{subset}_list_{fmt}.{txt,json} for `src`."""
    if seed is not None:
        random.seed(seed)
    info = _scan_rawframes(src, level) if fmt == "rawframes" else _scan_videos(src, level)
    train, val = _splits(train_csv, val_csv, level)
    lists = [_build_list(train, info, shuffle)[0], _build_list(val, info, shuffle)[0]]
    lines = lists[{"train": 0, "val": 1}[subset]]
    if output_format == "txt":
        return "".join(lines).encode()
    parts = [x.split() for x in lines]
    if fmt == "rawframes":
        data = [dict(frame_dir=p[0], total_frames=int(p[1]), label=[int(x) for x in p[2:]]) for p in parts]
    else:
        data = [dict(filename=p[0], label=[int(x) for x in p[1:]]) for p in parts]
    return json.dumps(data).encode()
