"""transforms/optionfields.py: an option declared once, as a dataclass field, and what derives from it
(the option table, argparse arguments and --help, YAML coercion, building a group with its rules,
each output's params); and that a new option added as one field reaches the CLI, YAML and --help."""
import argparse
import dataclasses
import importlib.util
import re

import pytest

from pipeline import options
from conftest import run_cli
from pipeline.options import UsageError, resolve
from transforms import optionfields, plan
from transforms.fetch import FetchOptions
from transforms.optionfields import Refused, build, coerce, option, plain, rule
from transforms.video import VideoOptions


def _twice(value, context):
    return value * context.get("factor", 2)


@dataclasses.dataclass(frozen=True)
class Toy:
    size: int = option(3, "size of it (100%)", refuse=(lambda v: v < 1, "--size must be >= 1"), shapes=("thing",),
                       convert=_twice)
    mode: str = option("a", "how", choices=("a", "b"), shapes=("thing", "other"))
    tags: tuple = option([], "tags, comma separated")
    pad: float = option(1.5, "padding", name="toy_pad", valid=lambda v: v >= 0, shapes=("other",))
    loud: bool = option(False, "be loud")
    quiet: bool = option(True, "be quiet")
    pairs: tuple = option({}, "KEY=VALUE; repeatable")
    limit: int = option(None, "at most this many")
    retries: int = plain(2, valid=lambda v: v >= 0)
    hidden: int = 7

    RULES = (rule(lambda m: m["loud"] and m["quiet"], "--loud and --quiet do not go together"),)


def parser_of(cls, shown=lambda o: ""):
    parser = argparse.ArgumentParser(prog="toy", allow_abbrev=False)
    optionfields.add_arguments(parser, optionfields.options(cls), shown)
    return parser


def defaults(cls, **values):
    return {**{o.name: o.default for o in optionfields.options(cls)}, **values}


def test_a_field_declares_its_option():
    opts = {o.name: o for o in optionfields.options(Toy)}
    assert list(opts) == ["size", "mode", "tags", "toy_pad", "loud", "quiet", "pairs", "limit"]  # plain fields are not
    assert (opts["toy_pad"].field, opts["toy_pad"].flag, opts["toy_pad"].kind) == ("pad", "--toy-pad", float)
    assert (opts["mode"].kind, opts["tags"].kind, opts["pairs"].kind, opts["limit"].kind) == \
        (("a", "b"), list, dict, int)
    assert optionfields.table(optionfields.options(Toy))["tags"] == (list, [], "tags, comma separated")
    # the field's own default: the option's, frozen
    assert (Toy().tags, Toy().pairs, Toy().size, Toy().pad) == ((), (), 3, 1.5)


def test_argparse_flag_help_and_choices():
    parser = parser_of(Toy, shown=lambda o: f" (default: {o.default})" if o.name == "size" else "")
    text = parser.format_help()
    assert re.search(r"--size SIZE\s+size of it \(100%\) \(default: 3\)\n", text)
    assert re.search(r"--mode \{a,b\}\s+how\n", text) and "--toy-pad TOY_PAD" in text
    assert "--loud " in text and "--no-loud" not in text  # a bool lists the flag that changes its default
    assert re.search(r"--no-quiet\s+be quiet \(default on\)\n", text) and "--quiet " not in text
    args = parser.parse_args(["--size", "4", "--toy-pad", "0.5", "--tags", "x,y", "--tags", "z", "--mode", "b",
                              "--no-quiet", "--pairs", "k=1"])
    assert (args.size, args.toy_pad, args.tags, args.mode, args.quiet, args.pairs) == \
        (4, 0.5, ["x,y", "z"], "b", False, ["k=1"])
    assert (args.loud, args.limit) == (None, None)  # unset: the config layers show through
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


@pytest.mark.parametrize("name,value,message", [
    ("size", "big", "t.yaml: size must be a int, not 'big'"),
    ("mode", "c", "t.yaml: mode must be one of a, b, not 'c'"),
    ("loud", "yes", "t.yaml: loud must be true or false"),
    ("pairs", ["k"], "t.yaml: pairs must be a mapping of yt-dlp option: value"),
])
def test_yaml_coercion_errors(name, value, message):
    with pytest.raises(Refused) as e:
        coerce({o.name: o for o in optionfields.options(Toy)}[name], value, "t.yaml")
    assert str(e.value) == message


def test_yaml_coercion():
    opts = {o.name: o for o in optionfields.options(Toy)}
    assert coerce(opts["size"], "5", "t.yaml") == 5 and coerce(opts["toy_pad"], 1, "t.yaml") == 1.0
    assert coerce(opts["tags"], "a, b,,c", "t.yaml") == ["a", "b", "c"] and coerce(opts["tags"], ["a,b", "c"], "") == \
        ["a", "b", "c"]
    assert coerce(opts["pairs"], {"k": 1}, "") == {"k": 1} and coerce(opts["size"], None, "") is None
    labels = options.FIELDS["label_map"]  # a dataset config's own form passes as it is
    assert coerce(labels, ["a", "b"], "") == ["a", "b"] and coerce(labels, "x.txt", "") == "x.txt"


def test_a_rule_says_its_message_and_build_converts():
    # a value without a convert is taken as merged
    assert build(Toy, defaults(Toy, size=4, tags=["x"])) == Toy(size=8, tags=["x"], pairs={})
    assert build(Toy, defaults(Toy, size=4), factor=3).size == 12  # convert sees the context
    with pytest.raises(Refused) as e:
        build(Toy, defaults(Toy, size=0))
    assert str(e.value) == "--size must be >= 1"
    with pytest.raises(Refused) as e:
        build(Toy, defaults(Toy, loud=True))
    assert str(e.value) == "--loud and --quiet do not go together"  # the group's own rule


def test_rules_run_by_rank_then_field_order():
    @dataclasses.dataclass(frozen=True)
    class Ranked:
        a: int = option(0, "a", refuse=(lambda v: v < 0, "a first"))
        b: int = option(0, "b", refuse=(rule(lambda v: v < 0, "b before a", rank=-1),
                                        rule(lambda v: v < -5, "b's second")))
    with pytest.raises(Refused, match="^b before a$"):
        build(Ranked, {"a": -1, "b": -1})
    with pytest.raises(Refused, match="^a first$"):
        build(Ranked, {"a": -1, "b": 0})
    # today's order of the video group's rules: the first broken one is the error
    broken = {"scale": 1, "crf": -1, "frame_index_base": 2, "new_width": 3}
    m = {**{o.name: o.default for o in optionfields.options(VideoOptions)}, **broken}
    messages = []
    while True:
        try:
            build(VideoOptions, m)
            break
        except Refused as e:
            messages.append(str(e))
            fixed = {"--frame-index-base must be 0 or 1": {"frame_index_base": 1},
                     "--new-width and --new-height go together": {"new_width": 0},
                     "--crf must be >= 0": {"crf": 0}, "--scale must be >= 2 and --flow-bound > 0": {"scale": 2}}
            m.update(fixed[str(e)])
    assert messages == ["--frame-index-base must be 0 or 1", "--new-width and --new-height go together",
                        "--crf must be >= 0", "--scale must be >= 2 and --flow-bound > 0"]


def test_valid_rules_name_every_bad_field():
    assert optionfields.invalid(Toy(pad=-1.0, retries=-2)) == ["pad=-1.0", "retries=-2"]
    with pytest.raises(ValueError, match=r"^invalid fetch options: pad=-1, backoff_cap=-1$"):
        FetchOptions(pad=-1, backoff_cap=-1)


def test_shapes_give_output_params():
    assert optionfields.output_params(Toy(size=5, mode="b", pad=0.5)) == \
        {"thing": {"size": 5, "mode": "b"}, "other": {"mode": "b", "toy_pad": 0.5}}

    @dataclasses.dataclass(frozen=True)
    class Root:
        toy: Toy
        name: str = "x"
    assert optionfields.output_params(Root(Toy(size=5))) == {"thing": {"size": 5, "mode": "a"},
                                                            "other": {"mode": "a", "toy_pad": 1.5}}


def test_output_params_of_a_run_keep_the_record_format():
    """The params a record stores, key for key in order (records are JSON)."""
    s = resolve(["--dataset", "kinetics400", "--output", "o", "--x264-preset", "fast"])[0]
    params = plan.output_params(s)
    assert list(params) == ["video", "resized", "rgb", "flow"]
    assert {kind: list(p) for kind, p in params.items()} == {
        "video": ["trim", "trim_preset", "trim_crf"],
        "resized": ["scale", "dense", "remove_dup", "upscale", "x264_preset", "crf"],
        "rgb": ["new_short", "new_width", "new_height", "frame_index_base", "remove_dup"],
        "flow": ["new_short", "new_width", "new_height", "frame_index_base", "remove_dup", "flow_algorithm",
                 "flow_bound"]}
    assert params["resized"]["x264_preset"] == "fast" == s.video.preset


# ---- a new option is one field

@dataclasses.dataclass(frozen=True)
class SharperVideo(VideoOptions):
    sharpen: float = option(0.0, "unsharp mask amount of the resized clip", shapes=("resized",),
                            refuse=(lambda v: v < 0, "--sharpen must be >= 0"))


@dataclasses.dataclass(frozen=True)
class SharperSettings(options.Settings):
    video: SharperVideo


@pytest.fixture
def sharper(monkeypatch):
    for name, value in zip(("FIELDS", "ORDERED", "OPTIONS"), options.option_tables(SharperSettings)):
        monkeypatch.setattr(options, name, value)


def test_a_new_field_is_an_option_on_the_command_line_in_yaml_and_in_help(sharper):
    text = options.build_parser().format_help()
    assert "--sharpen SHARPEN" in text and "unsharp mask amount of the resized clip" in text
    assert text.index("--sharpen") > text.index("--progress-interval")  # after the options HELP_ORDER names
    assert options.build_parser().parse_known_args(["--sharpen", "0.5"])[0].sharpen == 0.5
    assert options.load_yaml("sharpen: 2", "c.yaml") == {"sharpen": 2.0}
    with pytest.raises(UsageError, match=r"^c.yaml: sharpen must be a float, not 'x'$"):
        options.load_yaml("sharpen: x", "c.yaml")
    assert options.OPTIONS["sharpen"] == (float, 0.0, "unsharp mask amount of the resized clip")
    m = {**{name: default for name, (_, default, _) in options.OPTIONS.items()}, "sharpen": 1.5}
    video = build(SharperVideo, m)
    assert video.sharpen == 1.5 and list(optionfields.output_params(video)["resized"])[-1] == "sharpen"
    with pytest.raises(Refused, match="^--sharpen must be >= 0$"):
        build(SharperVideo, dict(m, sharpen=-1))


def test_every_option_is_in_help_order_once():
    assert sorted(options.HELP_ORDER) == sorted(options.FIELDS) and len(set(options.HELP_ORDER)) == \
        len(options.HELP_ORDER)


@pytest.mark.parametrize("args, message", [
    (["--output", "foo://x"], "--output: unknown URL scheme 'foo://' in 'foo://x'"),
    (["--output", "o", "--clip-cache", "foo://x"], "--clip-cache: unknown URL scheme 'foo://' in 'foo://x'"),
    (["--output", "o", "--annotations", "foo://a.csv"], "--annotations: unknown URL scheme 'foo://' in 'foo://a.csv'"),
    (["--output", "o", "--cookies", "foo://c"], "--cookies: unknown URL scheme 'foo://' in 'foo://c'"),
    (["--output", "o", "--source", "local", "--steps", "fetch", "--video-root", "foo://v"],
     "--video-root: unknown URL scheme 'foo://' in 'foo://v'"),
    (["--output", "s3://bucket/x"], "--output: s3:// needs a package that is not installed (Install s3fs to access S3)"),
])
def test_a_url_no_filesystem_serves_is_one_usage_error(args, message, capsys):
    """A value no rule foresaw (here a URL of a scheme fsspec lacks) is the option's one error line,
    never a traceback: exit 2."""
    if args[1].startswith("s3:") and importlib.util.find_spec("s3fs"):
        pytest.skip("s3fs is installed here: s3:// is a usable scheme")
    with pytest.raises(UsageError) as e:
        resolve(["--dataset", "demo", *args])
    assert str(e.value) == message
    assert run_cli("--dataset", "demo", *args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"kinetics-prep: error: {message}"
