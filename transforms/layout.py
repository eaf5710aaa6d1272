"""Where each output of a clip lives under --output (MMAction2's layout), and what its files are named.

The one place that builds a clip's paths and file names: the trimmed clip (output kind `video`,
step `fetch`, file list `videos`, shard label `trimmed`: each name is in outputs or flags, so they
stay), the resized clip, the rawframes dir and the frame and flow JPEG names in it, the paths in
MMAction2's file lists, the WebDataset shard keys and the file stems a local source is looked up by.
(transforms/video.py and flow.py name their frames through frame_name / rgb_name here.)
"""
import dataclasses

from transforms.storage import join

RGB_PREFIX = "img_"
FLOW_PREFIXES = ("flow_x_", "flow_y_")
PREFIXES = {"rgb": (RGB_PREFIX,), "flow": FLOW_PREFIXES}  # the files of each frames output kind
VIDEO_SUFFIX = ".mp4"


def clip_path(class_dir, clip_id, flat=False):
    """The clip's path below a split's folder, without suffix: {class}/{clip}, flat: {clip}."""
    return clip_id if flat else f"{class_dir}/{clip_id}"


def frame_name(prefix, number):
    """A frame's JPEG name: img_00001.jpg, flow_x_00001.jpg ... (`number` as it is written)."""
    return f"{prefix}{number:05d}.jpg"


def rgb_name(number):
    return frame_name(RGB_PREFIX, number)


def flow_names(number):
    """(flow_x_, flow_y_) names of one flow pair."""
    return tuple(frame_name(prefix, number) for prefix in FLOW_PREFIXES)


def frame_names(rgb, flow, base=1):
    """The JPEG names of `rgb` frames and `flow` flow pairs, numbered from `base`, sorted."""
    names = [rgb_name(i) for i in range(base, base + rgb)]
    names += [frame_name(prefix, i) for prefix in FLOW_PREFIXES for i in range(base, base + flow)]
    return sorted(names)


def frame_counts(names):
    """(img_, flow_x_, flow_y_) counts among the file names of a rawframes dir."""
    return (sum(n.startswith(RGB_PREFIX) for n in names),
            *(sum(n.startswith(prefix) for n in names) for prefix in FLOW_PREFIXES))


def list_path(class_dir, clip_id, kind, flat=False):
    """The clip's path in MMAction2's `kind` file list (relative to the split folder)."""
    path = clip_path(class_dir, clip_id, flat)
    return path + VIDEO_SUFFIX if kind == "videos" else path


def shard_key(class_dir, clip_id, flat=False):
    """The clip's WebDataset sample key: its path, with no dot ("." is written "%2E")."""
    return clip_path(class_dir, clip_id, flat).replace("%", "%25").replace(".", "%2E")


def source_stems(clip):
    """(file stem under a --video-root, whether that file already is the clip) in the order a local
    source is looked up: CVDF's {clip}, MMAction2's {class}/{clip}, a full-length {youtube_id}."""
    return [(clip_path(clip.class_dir, clip.clip_id, True), True),
            (clip_path(clip.class_dir, clip.clip_id), True), (clip.youtube_id, False)]


@dataclasses.dataclass(frozen=True)
class Layout:
    root: str
    flat: bool = False
    scale: int = 256
    dense: bool = True

    def rel_in(self, top, clip, suffix=""):
        return f"{top}/{clip_path(clip.class_dir, clip.clip_id, self.flat)}{suffix}"

    def video(self, clip):
        return self.rel_in(f"videos_{clip.split}", clip, VIDEO_SUFFIX)

    def resized(self, clip):
        top = f"videos_{clip.split}_{self.scale}p" + ("_dense_cache" if self.dense else "")
        return self.rel_in(top, clip, VIDEO_SUFFIX)

    def rawframes(self, clip):
        return self.rel_in(f"rawframes_{clip.split}", clip)

    def url(self, rel):
        return join(self.root, rel)
