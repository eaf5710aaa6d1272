"""Options declared once, as dataclass fields.

Each stage's options are a frozen dataclass, its option group; a field made with `option(...)` is
the one definition of an option: its name (the field's, unless `name` says otherwise), type,
default, help, the rules that refuse a value (each with its error line), how a command-line or
config value becomes the field's value, and which outputs' `params` it enters (`shapes`). From the
fields come the option table (name: (kind, default, help)), the argparse arguments, the coercion of
a YAML config's values, the construction of a group from merged values with its rules
(`build`), and each output's params (`output_params`). Adding an option is adding a field.

A group may also hold plain fields (not options: nothing derives a flag or a key from them), made
with `plain(default, valid=...)` when a validity rule goes with them, or with dataclasses.field.
"""
import argparse
import dataclasses
import functools

OPTION = "kinetics_prep.option"  # the metadata key of an option field
VALID = "kinetics_prep.valid"    # the metadata key of a field's validity predicate (see `invalid`)
KINDS = (bool, int, float, str, list, dict)


class Refused(Exception):
    """A value an option's rule refuses; the message is the error line the user sees."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Refuse a value when `when(value)` is true, saying `message` (a string, or a function of the
    value giving it). `rank`: the rule's place among its group's rules, lower first (by default its
    field's place: the field's rules run in turn with the fields, before the field's `convert`)."""
    when: object
    message: object
    rank: float = None

    def check(self, value):
        if self.when(value):
            raise Refused(self.message(value) if callable(self.message) else self.message)


def rule(when, message, rank=None):
    return Rule(when, message, rank)


@dataclasses.dataclass(frozen=True)
class Option:
    """What an option field declares (see `option`), with the field it belongs to."""
    name: str       # --flag (dashes for underscores), YAML key, params key
    field: str      # the dataclass field it sets
    kind: object    # bool, int, float, str, list, dict, or a tuple of choices
    default: object  # the default as the command line and configs see it (before `convert`)
    help: str
    rules: tuple = ()
    convert: object = None
    shapes: tuple = ()
    passes: tuple = ()

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


_NO_VALUE = object()


def option(default, help, *, name=None, kind=None, choices=None, refuse=(), convert=None, shapes=(), passes=(),
           value=_NO_VALUE, valid=None):
    """A dataclass field that is an option.

    `default`: the option's default as a command line or config would give it (a list for a list
    option, a dict for a KEY=VALUE one); the field's own default is `value`, else that default
    frozen (a list as a tuple, a dict as a tuple of its items). `help`: the --help text, without the
    default (the parser adds it). `name`: the option's name where it is not the field's (the
    --flag, the YAML key and the `params` key). `kind`: bool, int, float, str, list (comma lists,
    repeatable) or dict (KEY=VALUE, repeatable; a mapping in YAML); by default the type of the
    default, else the field's type. `choices`: the values allowed (the kind is then that tuple).
    `refuse`: a Rule, a (when, message) pair or a sequence of them, checked on the merged value.
    `convert(value, context)`: the field's value from the merged one (default: as it is); it may
    raise Refused; `context` holds what `build` was given, the fields converted before this one
    (by field name) and the merged values (under "values"). `shapes`: the output kinds whose
    `params` hold this option. `passes`: config value types taken as they are (a dataset config's
    own form: its label list, its {split: part list URL}); --help does not show them as defaults.
    `valid`: a predicate the group's own check (`invalid`) applies to the field's value."""
    if isinstance(refuse, Rule) or (isinstance(refuse, tuple) and len(refuse) == 2 and callable(refuse[0])):
        refuse = (refuse,)
    rules = tuple(r if isinstance(r, Rule) else Rule(*r) for r in refuse)
    spec = {"name": name, "kind": tuple(choices) if choices else kind, "default": default, "help": help,
            "rules": rules, "convert": convert, "shapes": tuple(shapes), "passes": tuple(passes)}
    if value is _NO_VALUE:
        value = tuple(default) if isinstance(default, list) else \
            tuple(default.items()) if isinstance(default, dict) else default
    metadata = {OPTION: spec}
    if valid is not None:
        metadata[VALID] = valid
    return dataclasses.field(default=value, metadata=metadata)


def plain(default, *, valid=None):
    """A field that is not an option, with the predicate `invalid` applies to it."""
    return dataclasses.field(default=default, metadata={VALID: valid} if valid else {})


def _kind(spec, field):
    if spec["kind"] is not None:
        return spec["kind"]
    for candidate in (type(spec["default"]) if spec["default"] is not None else None, field.type):
        if candidate in KINDS:
            return candidate
    raise TypeError(f"option {field.name}: say its kind (kind=...): neither its default nor its type is one of "
                    f"{', '.join(k.__name__ for k in KINDS)}")


@functools.lru_cache(maxsize=None)
def options(cls):
    """The Options of the group class `cls` (its option fields, in field order)."""
    out = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(OPTION)
        if spec is not None:
            out.append(Option(name=spec["name"] or field.name, field=field.name, kind=_kind(spec, field),
                              default=spec["default"], help=spec["help"], rules=spec["rules"],
                              convert=spec["convert"], shapes=spec["shapes"], passes=spec["passes"]))
    return tuple(out)


def _fields(cls):
    return dataclasses.fields(cls) if dataclasses.is_dataclass(cls) and isinstance(cls, type) else ()


@functools.lru_cache(maxsize=None)
def walk(cls):
    """((field path, Option), ...) of `cls` and of the groups among its fields, depth first in field
    order: the options a configuration made of groups (as Settings) holds."""
    own = {o.field: o for o in options(cls)}
    out = []
    for field in _fields(cls):
        if field.name in own:
            out.append(((field.name,), own[field.name]))
        elif isinstance(field.type, type) and dataclasses.is_dataclass(field.type):
            out.extend(((field.name, *path), o) for path, o in walk(field.type))
    return tuple(out)


def by_name(cls):
    """{option name: Option} over `cls` and its groups (see `walk`); a name twice is an error."""
    out = {}
    for _, o in walk(cls):
        if o.name in out:
            raise TypeError(f"option {o.name} is declared twice")
        out[o.name] = o
    return out


def table(opts):
    """{name: (kind, default, help)} of the Options `opts`."""
    return {o.name: (o.kind, o.default, o.help) for o in opts}


# ---- the command line

def add_arguments(parser, opts, shown=lambda o: ""):
    """An argparse argument for each Option: `dest` is its name and an unset flag leaves None (so
    config layers show through). A bool option is --NAME and --no-NAME (only the one that changes
    the default is listed in --help), a list or dict one is repeatable, a choice one lists its
    choices. `shown(option)`: what --help says of its default after its help text."""
    for o in opts:
        text = o.help.replace("%", "%%")
        suffix = shown(o).replace("%", "%%")
        if o.kind is bool:
            parser.add_argument(o.flag, dest=o.name, action="store_true", default=None,
                                help=argparse.SUPPRESS if o.default else text)
            parser.add_argument("--no-" + o.name.replace("_", "-"), dest=o.name, action="store_false",
                                help=text + " (default on)" if o.default else argparse.SUPPRESS)
        elif isinstance(o.kind, tuple):
            parser.add_argument(o.flag, dest=o.name, choices=o.kind, help=text + suffix)
        elif o.kind in (list, dict):
            parser.add_argument(o.flag, dest=o.name, action="append", help=text + suffix)
        else:
            parser.add_argument(o.flag, dest=o.name, type=o.kind, help=text + suffix)


def as_list(value):
    """A comma list option's items: comma-separated strings (or a list of them) split and stripped."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        out.extend(p.strip() for p in str(item).split(",") if p.strip())
    return out


# ---- configs

def coerce(o, value, where):
    """A config's value for the Option `o` as the command line would give it; raises Refused."""
    if value is None or isinstance(value, o.passes):
        return value
    if o.kind is list:
        return as_list(value)
    if o.kind is dict:
        if not isinstance(value, dict):
            raise Refused(f"{where}: {o.name} must be a mapping of yt-dlp option: value")
        return value
    if isinstance(o.kind, tuple):
        if value not in o.kind:
            raise Refused(f"{where}: {o.name} must be one of {', '.join(o.kind)}, not {value!r}")
        return value
    if o.kind is bool:
        if not isinstance(value, bool):
            raise Refused(f"{where}: {o.name} must be true or false")
        return value
    try:
        return o.kind(value)
    except (TypeError, ValueError):
        raise Refused(f"{where}: {o.name} must be a {o.kind.__name__}, not {value!r}") from None


# ---- building a group

def converted(cls, values, **context):
    """{field: value} of the option fields of the group class `cls`, from the merged option values
    `values` ({option name: value}): its rules checked (the group's own `RULES` too: Rules whose
    `when` takes `values`) and each value converted, in rank order (a rule's rank, else its field's
    place; a field's rules before its convert); the first rule broken raises Refused."""
    opts = options(cls)
    steps = []
    for i, o in enumerate(opts):
        for j, r in enumerate(o.rules):
            steps.append(((i if r.rank is None else r.rank, 0, i, j), o, r))
        steps.append(((i, 1, i, 0), o, None))
    for j, r in enumerate(getattr(cls, "RULES", ())):
        steps.append(((len(opts) if r.rank is None else r.rank, 0, len(opts), j), None, r))
    out = {}
    ctx = dict(context, values=values)
    for _, o, r in sorted(steps, key=lambda step: step[0]):
        if o is None:
            r.check(values)
        elif r is not None:
            r.check(values[o.name])
        else:
            value = values[o.name]
            try:
                out[o.field] = o.convert(value, ctx) if o.convert else value
            except ValueError as e:  # a value no rule foresaw (a URL of an unknown scheme): one line
                raise Refused(f"{o.flag}: {e}") from None
            ctx[o.field] = out[o.field]
    return out


def build(cls, values, **context):
    """The group `cls` from the merged option values (see `converted`); its plain fields keep
    their defaults. The group's own check of the values (a ValueError from its constructor, as
    FetchOptions' `invalid` fields) is refused with its message."""
    fields = converted(cls, values, **context)
    try:
        return cls(**fields)
    except ValueError as e:
        raise Refused(str(e)) from None


def invalid(group):
    """'field=value' for each field of `group` whose `valid` predicate (option(valid=) or
    plain(valid=)) its value fails, in field order."""
    return [f"{f.name}={getattr(group, f.name)!r}" for f in dataclasses.fields(group)
            if VALID in f.metadata and not f.metadata[VALID](getattr(group, f.name))]


# ---- what shapes each output

@functools.lru_cache(maxsize=None)
def _shaping(cls):
    return tuple((path, o) for path, o in walk(cls) if o.shapes)


def output_params(config):
    """{output kind: {option name: value}} of the options whose `shapes` name that output, over
    `config` and its groups: kinds in the order they are first named, options in field order."""
    out = {}
    for path, o in _shaping(type(config)):
        value = functools.reduce(getattr, path, config)
        for kind in o.shapes:
            out.setdefault(kind, {})[o.name] = value
    return out
