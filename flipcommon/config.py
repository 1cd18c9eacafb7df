"""Stage configs: one dataclass per stage, loaded from YAML with ``key=value`` overrides.

Overrides use dotted paths (``download.timeout=5``); the value is parsed as YAML so numbers,
booleans and lists keep their types. Every mistake is a ``ConfigError`` naming the key: an
unknown key, a YAML syntax error, a value of the wrong type (a bool is not a number), a number
out of its field's range. Numbers are never negative unless a field declares a ``Range`` that
allows it (``threads: Annotated[int, Range(1)]``); a field may also declare a ``Check`` that
parses its value at load (a CIDR, a model spec).

Scalars are read as YAML 1.2 reads them, not as PyYAML's YAML 1.1 does: ``010`` is not 8,
``on``/``yes`` are not booleans, ``1:20`` is not 80, ``2024-01-01`` is not a date. Such a
literal stays a string, so a number field refuses it instead of taking a surprising value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from flipcommon.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the stage's config dataclass."""


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars."""


_YAML11_ONLY = (":bool", ":int", ":float", ":timestamp")
Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith(_YAML11_ONLY)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _firsts in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    (
        "tag:yaml.org,2002:int",
        r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$",  # 010 is ten
        "-+0123456789",
    ),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
):
    Yaml12Loader.add_implicit_resolver(_tag, re.compile(_pattern), list(_firsts))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return int(text, 16) if text.startswith("0x") else int(text)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    text = loader.construct_scalar(node).lower()
    return float(text.replace(".inf", "inf").replace(".nan", "nan"))


def _construct_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    return loader.construct_scalar(node).lower() == "true"


Yaml12Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Yaml12Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
Yaml12Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 - a safe loader's subclass
    # explicit tags (!!int abc), 4,300-digit ints and deep nesting fail as these
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError) as exc:
        lines = str(exc).splitlines()
        raise ConfigError(f"{where}: not valid YAML ({lines[0] if lines else exc!r})") from exc


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number field takes, declared beside it: ``Annotated[int, Range(1)]``.
    ``low_open`` / ``high_open``: that end itself is excluded (a duration of 0 is no duration,
    a mask ratio of 1 leaves no patch)."""

    low: float | None = 0
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, (int, float)):
            return
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {value} is not a number a config takes")
        too_low = self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        )
        too_high = self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        )
        if too_low or too_high:
            low = high = ""
            if self.low is not None:
                low = ("> " if self.low_open else "≥ ") + f"{self.low:g}"
            if self.high is not None:
                high = ("< " if self.high_open else "≤ ") + f"{self.high:g}"
            bounds = ", ".join(filter(None, [low, high]))
            raise ConfigError(f"{where}: {value!r} is out of range ({bounds})")


DEFAULT_RANGE = Range()  # numbers without a declared range: not negative


@dataclasses.dataclass(frozen=True)
class Check:
    """A parse run on a field's value at load: ``Annotated[str, Check(parse, "a CIDR")]``.
    ``parse`` raises ``ValueError`` on a bad value."""

    parse: Callable[[Any], Any]
    expected: str

    def check(self, value: Any, where: str) -> None:
        try:
            self.parse(value)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: {value!r} is not {self.expected} ({exc})") from exc


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}``."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        node = nested
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError(f"override {item!r}: {where} was given a value, not keys")
        value = load_yaml(raw, f"override {item!r}") if raw.strip() else ""
        if isinstance(node.get(leaf), dict) and not isinstance(value, dict):
            raise ConfigError(f"override {item!r}: {key} was given keys already")
        node[leaf] = value
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a dict, recursing into nested dataclasses and lists of them."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=repr)  # YAML keys may be numbers too
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(names)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str, default_range: bool = True) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        declared = any(isinstance(rule, Range) for rule in hint.__metadata__)
        value = _coerce(args[0], value, where, default_range=not declared)
        for rule in hint.__metadata__:
            if value is not None:
                rule.check(value, where)
        return value
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin is typing.Literal:  # a field with fixed choices: a typo fails at load
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(non_none[0], value, where) if len(non_none) == 1 else value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return (
            [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is float and isinstance(value, int):
        try:
            value = float(value)
        except OverflowError as exc:
            raise ConfigError(f"{where}: {value} is too large") from exc
    if hint in (int, float, str, bool) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint in (int, float) and default_range:
        DEFAULT_RANGE.check(value, where)
    return value


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise ConfigError(f"config file {path} {what}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        loaded = load_yaml(text, str(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
