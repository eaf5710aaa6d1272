"""MMAction2 file lists, byte for byte as tools/data/build_file_list.py writes them.

videos:    "<class>/<clip>.mp4 <label>\\n"
rawframes: "<class>/<clip> <number of img_ files> <label>\\n"
flow:      "<class>/<clip> <number of flow_x_ files> <label>\\n"   (no MMAction2 tool writes this one)

Lines follow annotation order; `--shuffle --seed N` is random.seed(N); random.shuffle(lines).
"""
import json
import random

from transforms import layout
from transforms.records import GOOD

KINDS = ("videos", "rawframes", "flow")
FORMATS = ("txt", "json")


def list_name(dataset, split, kind, fmt="txt"):
    return f"{dataset}_{split}_list_{kind}.{fmt}"


def line(rec, kind, flat=False):
    """The record's line in the `kind` list, or None when it has no such output (or is not good)."""
    if rec["status"] not in GOOD:
        return None
    path = layout.list_path(rec["class_dir"], rec["clip_id"], kind, flat)
    outputs = rec.get("outputs") or {}
    label = rec["label_index"]
    if kind == "videos" and ("video" in outputs or "resized" in outputs):
        return f"{path} {label}\n"
    if kind == "rawframes" and rec.get("rgb_frames"):
        return f"{path} {rec['rgb_frames']} {label}\n"
    if kind == "flow" and rec.get("flow_frames"):
        return f"{path} {rec['flow_frames']} {label}\n"
    return None


def shuffled(lines, seed):
    lines = list(lines)
    random.Random(seed).shuffle(lines)
    return lines


def render(lines, kind, fmt="txt"):
    """The list file's bytes: plain lines, or MMAction2's lines2dictlist JSON."""
    if fmt == "txt":
        return "".join(lines).encode("utf-8")
    items = []
    for line in lines:
        parts = line.split()
        if kind == "videos":
            items.append({"filename": parts[0], "label": [int(x) for x in parts[1:]]})
        else:
            items.append({"frame_dir": parts[0], "total_frames": int(parts[1]),
                          "label": [int(x) for x in parts[2:]]})
    return json.dumps(items).encode("utf-8")

