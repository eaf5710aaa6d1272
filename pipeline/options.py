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

import yaml

from transforms import compat, optionfields, storage, writers
from transforms.fetch import FetchOptions
from transforms.flow import FlowOptions
from transforms.optionfields import option
from transforms.reader import AnnotationOptions
from transforms.sources import SourceOptions
from transforms.video import VideoOptions
from transforms.writers import STEPS, OutputOptions  # noqa: F401 - STEPS: the steps, known here as before

DATASETS = ("kinetics400", "kinetics600", "kinetics700", "kinetics700_2020", "demo")


class UsageError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Settings:
    """The resolved configuration that travels to the workers: one option group per stage and the
    run's own values. Its groups' fields (and its own option fields) are the options: their
    flags, YAML keys and --help come from them."""
    dataset: str
    reading: AnnotationOptions
    outputs: OutputOptions
    sources: SourceOptions
    fetch: FetchOptions
    video: VideoOptions
    flow: FlowOptions
    published: dict  # the dataset config's published availability figures (writers.published_figures)
    demo: bool
    run_id: str
    progress_interval: float = option(10.0, "seconds between progress lines (at least 10)",
                                      convert=lambda value, _: max(10.0, value))


# The order of the options in --help (and in OPTIONS); an option not named here comes after these,
# in the order of Settings' groups.
HELP_ORDER = (
    "annotations", "output", "splits", "classes", "limit", "steps", "trim_format", "class_dirs", "layout", "verify",
    "min_duration_ratio", "shuffle", "seed", "filelist_format", "manifest_file_records", "redo", "retry_unavailable",
    "source", "url_template", "max_height", "fetch_pad", "cookies", "proxy", "ytdlp_opt", "fetch_rate", "retries",
    "socket_timeout", "clip_timeout", "bot_check_limit", "video_root", "cvdf_parts", "clip_cache", "trim",
    "trim_preset", "trim_crf", "scale", "dense", "remove_dup", "upscale", "x264_preset", "crf", "new_short",
    "new_width", "new_height", "frame_index_base", "flow_algorithm", "flow_bound", "flow_resource_hint",
    "shard_size_mb", "clips_per_shard", "shard_frames", "label_map", "progress_interval")


def option_tables(root):
    """({option name: optionfields.Option}, the Options in --help order, the OPTIONS table) of the
    configuration class `root` (Settings)."""
    fields = optionfields.by_name(root)
    ordered = tuple(fields[name] for name in HELP_ORDER) + \
        tuple(o for o in fields.values() if o.name not in HELP_ORDER)
    return fields, ordered, optionfields.table(ordered)


# OPTIONS: name: (type, default, help). Every one may also be set in a YAML config under the same name.
FIELDS, ORDERED, OPTIONS = option_tables(Settings)
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
    try:
        return {k: optionfields.coerce(FIELDS[k], v, where) if k in FIELDS else v for k, v in data.items()}
    except optionfields.Refused as e:
        raise UsageError(str(e)) from None


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
            option = FIELDS.get(key)
            if option and not option.passes and option.kind is not bool:
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
    optionfields.add_arguments(parser, ORDERED, shown=lambda o: default_text(o.default, configs.get(o.name, {})))
    parser.add_argument("--log-level", default="WARNING",
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level (default WARNING)")
    return parser


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
    """The Settings of the merged options `m` (and the config `layers`): each stage group built
    from them with its rules checked, in the order annotations, outputs, sources and fetch, video,
    flow; the first rule broken is the UsageError raised."""
    dataset, reading = annotation_options(m, layers)
    outputs = build_group(OutputOptions, m)
    sources, fetch = fetch_options(m, outputs.steps, layers, dataset)
    video = build_group(VideoOptions, m)
    flow = build_group(FlowOptions, m)
    return Settings(dataset=dataset, reading=reading, outputs=outputs, sources=sources, fetch=fetch, video=video,
                    flow=flow, **optionfields.converted(Settings, m), demo=any(layer.get("demo") for layer in layers),
                    run_id=uuid.uuid4().hex, published=check_published(layers))


def build_group(cls, m, **context):
    """The option group `cls` from the merged options `m` (optionfields.build); a rule it breaks
    is a UsageError."""
    try:
        return optionfields.build(cls, m, **context)
    except optionfields.Refused as e:
        raise UsageError(str(e)) from None


def check_published(layers):
    """The published availability figures of the last config layer that has them ({} if none)."""
    figures = next((layer["published"] for layer in reversed(layers) if "published" in layer), None)
    try:
        return writers.published_figures(figures)
    except ValueError as e:
        raise UsageError(str(e)) from None


def annotation_options(m, layers):
    """(the dataset's name, the AnnotationOptions): the name from the last config layer naming one,
    the annotation sets of every layer (a name of one stands for its list)."""
    name = next((layer["name"] for layer in reversed(layers) if "name" in layer), None)
    if not name:
        raise UsageError("name a dataset: --dataset NAME, or --config FILE with a 'name:' key")
    sets = {}
    for layer in layers:
        sets.update(layer.get("annotation_sets") or {})
    return name, build_group(AnnotationOptions, m, dataset=name, annotation_sets=sets)


def fetch_options(m, steps, layers, dataset):
    """(SourceOptions, FetchOptions): the sources (what `local` and `cvdf` need is checked when the
    fetch step is in `steps`; the CVDF part lists of the last config layer that has them) and the
    yt-dlp options, as FetchOptions checks them."""
    config_parts = next((layer["cvdf_parts"] for layer in reversed(layers)
                         if isinstance(layer.get("cvdf_parts"), dict) and layer["cvdf_parts"]), None)
    sources = build_group(SourceOptions, m, steps=steps, dataset=dataset, config_parts=config_parts)
    return sources, build_group(FetchOptions, m)
