"""Command line and configuration: built-in dataset YAML <- user YAML <- flags, resolved once.

The launcher resolves everything into a Settings value that travels to the workers, so
workers never read YAML or the command line.
"""
import argparse
import dataclasses
import importlib.resources
import pathlib
import os
import uuid

import apache_beam as beam
import yaml

from transforms import compat, storage, writers
from transforms.reader import LabelMap, check_trim_format
from transforms.records import SPLITS
from transforms.fetch import FetchOptions, parse_ytdlp_opts
from transforms.video import VideoOptions

STEPS = ("fetch", "resize", "rgb", "flow", "shards", "filelists")
SOURCES = ("youtube", "local", "cvdf")
DATASETS = ("kinetics400", "kinetics600", "kinetics700", "kinetics700_2020", "demo")


class UsageError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    dataset: str
    published: dict  # the dataset config's published availability figures (writers.published_figures)
    labels: tuple
    annotations: tuple
    output: str
    splits: tuple
    classes: tuple
    limit: int
    steps: tuple
    trim_format: str
    class_dirs: str
    flat: bool
    verify: str
    min_duration_ratio: float
    shuffle: bool
    seed: int
    filelist_format: str
    manifest_file_records: int
    progress_interval: float
    redo: bool
    retry_unavailable: bool
    source: str
    video_root: str
    cvdf_parts: object
    fetch: FetchOptions
    trim: str
    trim_preset: str
    trim_crf: float
    scale: int
    dense: bool
    remove_dup: bool
    upscale: bool
    x264_preset: str
    crf: float
    new_short: int
    new_width: int
    new_height: int
    frame_index_base: int
    flow_algorithm: str
    flow_bound: float
    flow_resource_hints: tuple
    shard_size_mb: float
    clips_per_shard: int
    shard_frames: bool
    demo: bool
    run_id: str
    clip_cache: str = None

    @property
    def label_map(self):
        return LabelMap(self.labels)


# name: (type, default, help). Every one may also be set in a YAML config under the same name.
OPTIONS = {
    "annotations": (list, None, "annotation CSVs or tarballs (path, http(s)://, gs://), or the name of "
                                "a set in the dataset config (deepmind, mmaction2, cvdf); repeatable"),
    "output": (str, None, "output root: a local directory or gs://bucket/prefix"),
    "splits": (list, list(SPLITS), "splits to process, comma separated (train,val,test; validate = val)"),
    "classes": (list, [], "only these classes (raw labels or class-dir names), comma separated"),
    "limit": (int, None, "only the first N valid rows per split, in annotation order, after --classes"),
    "steps": (list, ["filelists"], f"comma list of steps from {','.join(STEPS)}"),
    "trim_format": (str, "%06d", "printf format of the start/end seconds in clip ids"),
    "class_dirs": (("clean", "raw"), "clean", "clean: spaces to _ and quotes dropped (MMAction2); "
                                              "raw: the label as the crawler wrote it"),
    "layout": (("classes", "flat"), "classes", "classes: videos_{split}/{class}/{clip}.mp4 (level 2); "
                                                "flat: videos_{split}/{clip}.mp4 (level 1)"),
    "verify": (("probe", "full"), "probe", "how to check an existing video: probe (open, duration) "
                                           "or full (decode every frame)"),
    "min_duration_ratio": (float, 0.8, "a clip shorter than this fraction of its annotated length "
                                       "is 'short'"),
    "shuffle": (bool, False, "shuffle the file lists as MMAction2's --shuffle does"),
    "seed": (int, None, "random seed for --shuffle (random.seed(N); random.shuffle(lines))"),
    "filelist_format": (("txt", "json"), "txt", "file list format"),
    "manifest_file_records": (int, 20000, "most records in one manifest file: a split with more is "
                                          "written in parallel as manifest/{split}-NNNNN-of-NNNNN.jsonl"),
    "redo": (bool, False, "ignore the ledger and redo every clip (re-verify a tree that changed)"),
    "retry_unavailable": (bool, False, "also retry clips the ledger holds as permanently unavailable"),
    "source": (list, ["youtube"], "where the fetch step gets clips, an ordered comma list of sources, each "
                                  "at most once (e.g. local,cvdf,youtube): each clip from the first that has a "
                                  "usable video. youtube (yt-dlp, only the annotated segment), local (files "
                                  "under --video-root: {clip}.*, {class}/{clip}.* or full-length "
                                  "{youtube_id}.*), cvdf (the CVDF .tar.gz parts: --cvdf-parts, else a "
                                  "folder of parts given as --video-root unless local is listed too, else "
                                  "the dataset's part lists)"),
    "url_template": (str, FetchOptions.url_template, "URL of a clip's video; {youtube_id} is replaced by "
                                                     "the validated id"),
    "max_height": (int, FetchOptions.max_height, "tallest video format to download (mp4, then webm)"),
    "fetch_pad": (float, FetchOptions.pad, "seconds fetched before and after each annotated segment"),
    "cookies": (str, None, "Netscape cookies file, local or any URL (gs://...), for YouTube's "
                           "'confirm you're not a bot' checks"),
    "proxy": (str, None, "proxy URL for yt-dlp and ffmpeg"),
    "ytdlp_opt": (dict, {}, "extra yt-dlp option KEY=VALUE (Python API names, JSON values); repeatable; "
                            "overrides ours"),
    "fetch_rate": (float, FetchOptions.fetch_rate, "most clips per second per worker process (0 = no "
                                                   "limit); halved on each HTTP 429, then recovered"),
    "retries": (int, FetchOptions.retries, "retries of network and HTTP 429 failures, with backoff"),
    "socket_timeout": (float, FetchOptions.socket_timeout, "seconds without data before a transfer fails"),
    "clip_timeout": (float, FetchOptions.clip_timeout, "hard bound in seconds on one clip's fetch, "
                                                       "retries included; then it is killed, recorded network"),
    "bot_check_limit": (int, FetchOptions.bot_check_limit, "consecutive bot checks after which a worker "
                                                           "stops fetching"),
    "video_root": (str, None, "local dir or URL holding the source videos (or CVDF parts)"),
    "cvdf_parts": (str, None, "local dir or URL of a folder of CVDF parts (.tar.gz, .tgz, .tar) for "
                              "--source cvdf; default: --video-root when --source lists no local, else "
                              "the dataset config's part lists"),
    "clip_cache": (str, None, "clip cache shared across runs and datasets: a local dir or URL (gs://...) of "
                              "trimmed clips {youtube_id}_{start:06d}_{end:06d}.mp4 (a CVDF download is one), "
                              "looked in before each YouTube fetch and written after it"),
    "trim": (("exact", "copy"), VideoOptions.trim, "exact: frames in [start, end), re-encoded unless the source "
                                         "already is the clip; copy: stream copy from the keyframe "
                                         "before start (faster, not exact)"),
    "trim_preset": (str, VideoOptions.trim_preset, "x264 preset of the trimmed clip's re-encode"),
    "trim_crf": (float, VideoOptions.trim_crf, "x264 CRF of the trimmed clip's re-encode"),
    "scale": (int, VideoOptions.scale, "short edge of the resized clip"),
    "dense": (bool, VideoOptions.dense, "resized clip with a keyframe every 16 frames (MMAction2 --dense); "
                          "--no-dense for x264's default and the videos_{split}_{S}p dir"),
    "remove_dup": (bool, VideoOptions.remove_dup, "drop duplicate frames from the resized clip, frames and flow "
                                "(mpdecimate, variable frame rate)"),
    "upscale": (bool, VideoOptions.upscale, "upscale inputs smaller than --scale as ffmpeg does; --no-upscale keeps "
                            "them (denseflow)"),
    "x264_preset": (str, VideoOptions.preset, "x264 preset of the resized clip"),
    "crf": (float, VideoOptions.crf, "x264 CRF of the resized clip"),
    "new_short": (int, VideoOptions.new_short, "short edge of RGB/flow frames (MMAction2's OpenCV rounding); 0 = "
                            "original size"),
    "new_width": (int, 0, "fixed frame width (with --new-height)"),
    "new_height": (int, 0, "fixed frame height (with --new-width)"),
    "frame_index_base": (int, VideoOptions.frame_index_base, "number of the first img_/flow_ file: 1 (MMAction2) or 0 (denseflow)"),
    "flow_algorithm": (("tvl1", "tvl1-fast", "farneback", "dis"), "tvl1",
                       "optical flow: tvl1 (OpenCV DualTVL1 defaults, denseflow-compatible), tvl1-fast "
                       "(epsilon 0.03), farneback, dis (DIS, fast preset)"),
    "flow_bound": (float, 20.0, "flow quantisation bound (denseflow -b)"),
    "flow_resource_hint": (dict, {}, "Beam resource hint KEY=VALUE for the flow stage alone (min_ram, "
                                     "cpu_count, accelerator); repeatable"),
    "shard_size_mb": (float, 1024.0, "target size of a WebDataset shard in MiB"),
    "clips_per_shard": (int, None, "clips per WebDataset shard (instead of --shard-size-mb)"),
    "shard_frames": (bool, False, "also put each clip's RGB and flow JPEGs in the shards"),
    "label_map": (str, None, "label map file (one label per line); default: the dataset's own"),
    "progress_interval": (float, 10.0, "seconds between progress lines (at least 10)"),
}
DATASET_KEYS = {"name", "label_map", "annotation_sets", "cvdf_parts", "demo", "published"}


def config_dir():
    """The dataset configs: the `configs/` of the source checkout this code runs from (setup.py
    beside `pipeline/`), so a checkout never reads another one's installed configs; else the
    installed package's."""
    checkout = pathlib.Path(__file__).resolve().parent.parent
    if (checkout / "setup.py").is_file() and (checkout / "configs" / "__init__.py").is_file():
        return checkout / "configs"
    try:
        return importlib.resources.files("pipeline.configs")
    except ModuleNotFoundError:
        return importlib.resources.files("pipeline").joinpath("..", "configs")


def load_yaml(text, where):
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: a config must be a mapping of option: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(OPTIONS) - DATASET_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return {k: _coerce(k, v, where) if k in OPTIONS else v for k, v in data.items()}


def _coerce(name, value, where):
    kind = OPTIONS[name][0]
    if value is None or (name == "label_map" and isinstance(value, list)) or \
            (name == "cvdf_parts" and isinstance(value, dict)):  # a dataset config's {split: part list URL}
        return value
    if kind is list:
        return _as_list(value)
    if kind is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: {name} must be a mapping of yt-dlp option: value")
        return value
    if isinstance(kind, tuple):
        if value not in kind:
            raise UsageError(f"{where}: {name} must be one of {', '.join(kind)}, not {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {name} must be true or false")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: {name} must be a {kind.__name__}, not {value!r}") from None


def builtin_config(name):
    if name not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}, not {name!r}")
    res = config_dir().joinpath(f"{name}.yaml")
    data = load_yaml(res.read_text(encoding="utf-8"), f"{name}.yaml")
    lm = data.get("label_map")
    if isinstance(lm, str) and "://" not in lm:
        data["label_map"] = config_dir().joinpath(lm).read_text(encoding="utf-8").splitlines()
    return data


def user_config(path):
    try:
        text = storage.read_bytes(path).decode("utf-8")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read --config {path}: {e}") from None
    data = load_yaml(text, path)
    lm = data.get("label_map")
    if isinstance(lm, str) and "://" not in lm and not os.path.isabs(lm) and "://" not in path:
        data["label_map"] = os.path.join(os.path.dirname(os.path.abspath(path)), lm)
    return data


def _shown(value):
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def dataset_defaults():
    """{option: {value as --help shows it: [built-in datasets whose config sets it]}}."""
    out = {}
    for name in DATASETS:
        data = load_yaml(config_dir().joinpath(f"{name}.yaml").read_text(encoding="utf-8"), f"{name}.yaml")
        for key, value in data.items():
            if key in OPTIONS and key not in ("label_map", "cvdf_parts") and OPTIONS[key][0] is not bool:
                out.setdefault(key, {}).setdefault(_shown(value), []).append(name)
    return out


def default_text(default, by_value):
    """' (default: X)', or, where built-in dataset configs set the option to something else, what
    each of them uses and X otherwise."""
    builtin = _shown(default) if default not in (None, [], {}, False) else None
    own = [f"{value} for {', '.join(names)}" for value, names in by_value.items() if value != builtin]
    if not own:
        return f" (default: {builtin})" if builtin else ""
    otherwise = [f"{builtin} otherwise"] if builtin else []
    return f" (default from the dataset config: {'; '.join(own + otherwise)})"


def label_lines(lines, where):
    """Labels, one a line: trailing blank lines are ignored, an interior one is an error (a label's
    index is its line number)."""
    labels = [str(label).strip() for label in lines]
    while labels and not labels[-1]:
        labels.pop()
    blank = next((n for n, label in enumerate(labels, 1) if not label), None)
    if blank:
        raise UsageError(f"label map {where}: line {blank} is blank (a label's index is its line number)")
    return tuple(labels)


def _flag(name):
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    parser = _Parser(
        prog="kinetics-prep", allow_abbrev=False,
        description="Prepare the Kinetics datasets: annotations in; clips, frames, flow, shards, "
                    "manifest, ledger and MMAction2 file lists out. Any Apache Beam pipeline "
                    "option (--runner, --direct_num_workers, Dataflow or Flink flags) passes through.")
    parser.add_argument("--dataset", help=f"built-in dataset config: {', '.join(DATASETS)}")
    parser.add_argument("--config", help="a YAML config applied on top of the dataset's")
    configs = dataset_defaults()
    for name, (kind, default, text) in OPTIONS.items():
        shown = default_text(default, configs.get(name, {}))
        text = text.replace("%", "%%")
        shown = shown.replace("%", "%%")
        if kind is bool:
            no = "--no-" + name.replace("_", "-")
            parser.add_argument(_flag(name), dest=name, action="store_true", default=None,
                                help=argparse.SUPPRESS if default else text)
            parser.add_argument(no, dest=name, action="store_false",
                                help=text + " (default on)" if default else argparse.SUPPRESS)
        elif isinstance(kind, tuple):
            parser.add_argument(_flag(name), dest=name, choices=kind, help=text + shown)
        elif kind in (list, dict):
            parser.add_argument(_flag(name), dest=name, action="append", help=text + shown)
        else:
            parser.add_argument(_flag(name), dest=name, type=kind, help=text + shown)
    parser.add_argument("--log-level", default="WARNING",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level (default WARNING)")
    return parser


def _as_list(value):
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        out.extend(p.strip() for p in str(item).split(",") if p.strip())
    return out


def _ytdlp_opts(value):
    """--ytdlp-opt KEY=VALUE flags (a list) or a YAML mapping, as FetchOptions.ytdlp_opts."""
    return tuple(value.items()) if isinstance(value, dict) else parse_ytdlp_opts(value)


def _resource_hints(value):
    pairs = value.items() if isinstance(value, dict) else (v.partition("=")[::2] for v in value)
    hints = {k.strip(): str(v).strip() for k, v in pairs}
    try:
        beam.Map(lambda x: x).with_resource_hints(**hints)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--flow-resource-hint: {e}") from None
    return tuple(sorted(hints.items()))


def check_beam_args(beam_args):
    """Refuse flags that neither we nor any Beam PipelineOptions class know (typos)."""
    flags = [a for a in compat.beam_unknown_args(beam_args) if a.startswith("-")]
    if flags:
        raise UsageError(f"unrecognized arguments: {' '.join(flags)}")


def resolve(argv):
    """(Settings, parsed args, Beam args) from the command line; raises UsageError on bad input."""
    parser = build_parser()
    args, beam_args = parser.parse_known_args(argv)
    check_beam_args(beam_args)

    merged = {name: default for name, (_, default, _) in OPTIONS.items()}
    layers = []
    if args.dataset:
        layers.append(builtin_config(args.dataset))
    if args.config:
        layers.append(user_config(args.config))
    for layer in layers:
        merged.update(layer)
    for name in OPTIONS:
        value = getattr(args, name)
        if value is not None:
            merged[name] = value
    settings = _settings(merged, args, layers)
    return settings, args, beam_args


def _settings(m, args, layers):
    """The Settings of the merged options `m` (and the config `layers`): each stage group's options
    checked, and what they name resolved, by that group's check_* function, in the order annotations,
    outputs, fetch, video, flow; the first rule broken is the UsageError raised."""
    annotations = check_annotations(m, layers)
    steps = check_outputs(m)
    video_root, cvdf_parts, fetch = check_fetch(m, steps, layers, annotations["dataset"])
    check_video(m)
    flow_resource_hints = check_flow(m)
    video = {k: m[k] for k in ("trim", "trim_preset", "trim_crf", "scale", "dense", "remove_dup",
                               "upscale", "x264_preset", "crf", "new_short", "new_width", "new_height",
                               "frame_index_base", "flow_algorithm", "flow_bound")}
    return Settings(
        **video, **annotations, source=",".join(check_sources(m)), video_root=video_root, cvdf_parts=cvdf_parts,
        fetch=fetch,
        flow_resource_hints=flow_resource_hints,
        shard_size_mb=m["shard_size_mb"], clips_per_shard=m["clips_per_shard"],
        shard_frames=bool(m["shard_frames"]),
        output=storage.normalize(m["output"]), limit=m["limit"], steps=tuple(steps), trim_format=m["trim_format"],
        class_dirs=m["class_dirs"], flat=m["layout"] == "flat", verify=m["verify"],
        min_duration_ratio=m["min_duration_ratio"], shuffle=bool(m["shuffle"]), seed=m["seed"],
        filelist_format=m["filelist_format"], manifest_file_records=m["manifest_file_records"],
        redo=bool(m["redo"]), retry_unavailable=bool(m["retry_unavailable"]),
        progress_interval=max(10.0, m["progress_interval"]),
        clip_cache=storage.normalize(m["clip_cache"]) if m["clip_cache"] else None,
        demo=any(layer.get("demo") for layer in layers), run_id=uuid.uuid4().hex, published=check_published(layers))


def check_published(layers):
    """The published availability figures of the last config layer that has them ({} if none)."""
    figures = next((layer["published"] for layer in reversed(layers) if "published" in layer), None)
    try:
        return writers.published_figures(figures)
    except ValueError as e:
        raise UsageError(str(e)) from None


def check_annotations(m, layers):
    """The annotation group: the dataset's name (from the last config layer naming one), the
    annotation CSVs (a name of the dataset's annotation_sets stands for its list), splits
    (`validate` is val), --limit, --trim-format, the label map (read when it is a path or URL)
    and --classes (each in it). Returns {dataset, annotations, splits, labels, classes} as Settings
    takes them; raises UsageError."""
    name = next((layer["name"] for layer in reversed(layers) if "name" in layer), None)
    if not name:
        raise UsageError("name a dataset: --dataset NAME, or --config FILE with a 'name:' key")
    sets = {}
    for layer in layers:
        sets.update(layer.get("annotation_sets") or {})
    annotations = []
    for item in _as_list(m["annotations"]) or []:
        annotations.extend(_as_list(sets[item]) if item in sets else [item])
    if not annotations:
        raise UsageError("no annotations: pass --annotations PATH_OR_URL")
    splits = []
    for s in _as_list(m["splits"]):
        s = {"validate": "val"}.get(s, s)
        if s not in SPLITS:
            raise UsageError(f"--splits: unknown split {s!r} (train, val, test)")
        splits.append(s)
    if m["limit"] is not None and m["limit"] < 0:
        raise UsageError("--limit must be >= 0")
    try:
        check_trim_format(m["trim_format"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    labels = _label_map(m["label_map"], name)
    label_map = LabelMap(labels)
    classes = _as_list(m["classes"])
    unknown = [c for c in classes if label_map.lookup(c) is None]
    if unknown:
        raise UsageError(f"--classes: not in the {name} label map: {', '.join(unknown)}")
    return {"dataset": name, "annotations": tuple(storage.normalize(a) for a in annotations),
            "splits": tuple(splits), "labels": labels, "classes": tuple(classes)}


def _label_map(labels, dataset):
    """The labels of --label-map (a path or URL, read) or of the dataset config (its lines)."""
    if labels is None:
        raise UsageError(f"dataset {dataset!r} has no label map: pass --label-map FILE")
    where = labels if isinstance(labels, str) else f"of {dataset}"
    if isinstance(labels, str):
        try:
            labels = storage.read_bytes(labels).decode("utf-8").splitlines()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read label map {labels}: {e}") from None
    return label_lines(labels, where)


def check_outputs(m):
    """The output group: --output given, --steps known, manifest and shard sizes. Returns the steps."""
    if not m["output"]:
        raise UsageError("no output: pass --output DIR_OR_URL")
    steps = _as_list(m["steps"])
    for step in steps:
        if step not in STEPS:
            raise UsageError(f"--steps: unknown step {step!r} (choose from {','.join(STEPS)})")
    if m["manifest_file_records"] < 1:
        raise UsageError("--manifest-file-records must be >= 1")
    if m["shard_size_mb"] <= 0 or (m["clips_per_shard"] is not None and m["clips_per_shard"] < 1):
        raise UsageError("--shard-size-mb must be > 0 and --clips-per-shard >= 1")
    return steps


def check_sources(m):
    """--source: the ordered source names (each of SOURCES, each at most once). Returns them as a tuple."""
    names = _as_list(m["source"]) or []
    if not names:
        raise UsageError(f"--source: name at least one source ({', '.join(SOURCES)})")
    for name in names:
        if name not in SOURCES:
            raise UsageError(f"--source: unknown source {name!r} (choose from {', '.join(SOURCES)})")
        if names.count(name) > 1:
            raise UsageError(f"--source: {name} named twice in {','.join(names)} (each source at most once)")
    return tuple(names)


def check_fetch(m, steps, layers, dataset):
    """The fetch group: the sources (check_sources), where `local` and `cvdf` get clips from (when
    the fetch step runs) and the yt-dlp options, as FetchOptions checks them. The CVDF parts:
    --cvdf-parts (or a config's `cvdf_parts` folder URL), else --video-root when the sources have no
    `local` (whose root it is), else the dataset config's part lists. Returns (video_root, cvdf_parts,
    FetchOptions)."""
    sources = check_sources(m)
    if "fetch" in steps and "local" in sources and not m["video_root"]:
        raise UsageError(f"--source {','.join(sources)} needs --video-root DIR_OR_URL")
    cvdf_parts = None
    if "cvdf" in sources and "fetch" in steps:
        given = m.get("cvdf_parts")
        if isinstance(given, str) and given:
            cvdf_parts = storage.normalize(given)
        elif "local" not in sources and m["video_root"]:
            cvdf_parts = m["video_root"]
        else:
            cvdf_parts = next((layer["cvdf_parts"] for layer in reversed(layers)
                               if isinstance(layer.get("cvdf_parts"), dict) and layer["cvdf_parts"]), None)
        if not cvdf_parts:
            if "local" in sources:
                raise UsageError(f"--source {','.join(sources)}: {dataset} has no CVDF part lists; pass "
                                 "--cvdf-parts with a folder of parts (--video-root is local's)")
            raise UsageError(f"--source cvdf: {dataset} has no CVDF part lists; pass --video-root with "
                             "a folder of parts")
    video_root = storage.normalize(m["video_root"]) if m["video_root"] else None
    try:
        fetch = FetchOptions(
            url_template=m["url_template"], max_height=m["max_height"], pad=m["fetch_pad"],
            cookies=storage.normalize(m["cookies"]) if m["cookies"] else None, proxy=m["proxy"],
            ytdlp_opts=_ytdlp_opts(m["ytdlp_opt"]), fetch_rate=m["fetch_rate"], retries=m["retries"],
            socket_timeout=m["socket_timeout"], clip_timeout=m["clip_timeout"],
            bot_check_limit=m["bot_check_limit"])
    except ValueError as e:
        raise UsageError(str(e)) from None
    return video_root, cvdf_parts, fetch


def check_video(m):
    """The video group: --min-duration-ratio, --frame-index-base, the frame size and the x264 and
    resize numbers."""
    if not 0 <= m["min_duration_ratio"] <= 1:
        raise UsageError("--min-duration-ratio must be between 0 and 1")
    if m["frame_index_base"] not in (0, 1):
        raise UsageError("--frame-index-base must be 0 or 1")
    if bool(m["new_width"]) != bool(m["new_height"]):
        raise UsageError("--new-width and --new-height go together")
    for key in ("scale", "trim_crf", "crf", "new_short", "new_width", "new_height"):
        if m[key] < 0:
            raise UsageError(f"--{key.replace('_', '-')} must be >= 0")
    if m["scale"] < 2:
        raise UsageError("--scale must be >= 2 and --flow-bound > 0")


def check_flow(m):
    """The flow group: --flow-bound and the flow stage's Beam resource hints. Returns the hints."""
    if m["flow_bound"] <= 0:
        raise UsageError("--scale must be >= 2 and --flow-bound > 0")
    return _resource_hints(m["flow_resource_hint"])
