"""Configuration machinery: dataclass schemas filled from YAML files and `key=value` command-line overrides.

Defaults live once, in the schema dataclasses (`schema.py`). `load_config(cls, yaml, overrides)` merges
defaults ← YAML ← command line, rejects unknown keys and values of the wrong type with one clear message
(a `ConfigError`, exit status 2 on the command line) before anything is built, and returns the typed tree.
A `base` tree (e.g. the resolved configuration of an earlier run) can take the place of the defaults.
`save_config` writes the resolved tree back as YAML (atomically), so a run folder always holds the exact
configuration it ran with.

Merging rules:
- a nested dataclass merges key by key; a missing key keeps its default;
- an optional section (`X | None`) is switched off with `null` and on with a mapping (its defaults fill the
  rest); sections marked "whole" (the loss terms) are replaced as a whole by the YAML, so a loss term left
  out of the YAML file is off — on the command line `losses.koleo=null` turns one off and
  `losses.koleo.weight=0.2` sets (or adds) one;
- command-line values are parsed as YAML (`train.steps=100`, `crops.global_scale=[0.4,1.0]`, `init.backbone=null`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..atomic import atomic_write_text
from ..errors import ConfigError


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a mapping, strictly: unknown keys and wrong types raise `ConfigError`."""
    return _convert(cls, data, where)


def check_value(tp: Any, value: Any, where: str) -> Any:
    """`value` converted to type `tp` (a scalar, list, union, dataclass …), or a `ConfigError` naming `where`."""
    return _convert(tp, value, where)


def to_dict(obj: Any) -> Any:
    """A dataclass tree → plain dicts / lists / scalars (YAML-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def parse_overrides(items: Sequence[str]) -> list[tuple[list[str], Any]]:
    """`["a.b=1", "c=[1,2]"]` → `[(["a", "b"], 1), (["c"], [1, 2])]` with values parsed as YAML."""
    parsed = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"override {item!r} is not of the form key.sub=value (e.g. train.steps=100)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse the value of override {item!r}: {e}") from None
        parsed.append((key.strip().split("."), value))
    return parsed


def read_yaml(path: str | os.PathLike) -> dict:
    """A YAML file holding a mapping (`{}` when empty), or a `ConfigError` saying what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of sections (got {type(data).__name__})")
    return data


def load_config(
    cls: type, path: str | os.PathLike | None = None, overrides: Sequence[str] = (), base: dict | None = None
) -> Any:
    """defaults (or `base`) ← YAML file ← `key=value` overrides, key- and type-checked; returns an instance of
    `cls`. (Checks across fields are the schema's own `validate()`.)"""
    data = read_yaml(path) if path is not None else {}
    # Resolve the YAML first so that an override edits the resolved tree (e.g. one loss term of the defaults).
    try:
        tree = to_dict(from_dict(cls, merge_trees(cls, base, data) if base is not None else data))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for keys, value in parse_overrides(overrides):
        node = tree
        for i, k in enumerate(keys[:-1]):
            if node.get(k) is None and _is_section(cls, keys[: i + 1]):
                node[k] = {}  # switching an optional section on
            node = node.get(k)
            if not isinstance(node, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
        node[keys[-1]] = value
    return from_dict(cls, tree)


def merge_trees(cls: type, base: dict, update: dict) -> dict:
    """`update` merged into `base` key by key, with the schema's rules: a section marked "whole" in `update`
    replaces the base's; a scalar, list or `null` replaces what was there."""
    out = dict(base)
    for key, value in update.items():
        section = _section_type(cls, key)
        whole = section is not None and getattr(section, "_replace_as_whole", False)
        if section is not None and not whole and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_trees(section, dict(out[key]), dict(value))
        else:
            out[key] = value
    return out


def save_config(obj: Any, path: str | os.PathLike) -> Path:
    """Write the resolved configuration as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None))


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (dataclasses or dicts)."""
    a, b = to_dict(old), to_dict(new)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix]
    out = []
    for k in sorted(set(a) | set(b)):
        out += changed_keys(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
    return out


def _is_section(cls: type, keys: list[str]) -> bool:
    tp: Any = cls
    for k in keys:
        tp = _section_type(tp, k)
        if tp is None:
            return False
    return True


def _section_type(cls: Any, key: str) -> type | None:
    """The dataclass of section `key` of dataclass `cls` (optional or not), or None when it is no section."""
    cls = _strip_optional(cls)
    if not dataclasses.is_dataclass(cls):
        return None
    tp = typing.get_type_hints(cls).get(key)
    tp = _strip_optional(tp) if tp is not None else None
    return tp if dataclasses.is_dataclass(tp) else None


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if _is_union(tp) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if _is_union(tp):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _kind_matches(tp: Any, value: Any) -> bool:
    """Whether a union member is the kind of thing `value` is (mapping, list or scalar)."""
    tp = _strip_optional(tp)
    origin = typing.get_origin(tp)
    if isinstance(value, Mapping):
        return dataclasses.is_dataclass(tp) or origin in (dict, Mapping)
    if isinstance(value, list | tuple):
        return origin in (list, tuple, Sequence)
    return not (dataclasses.is_dataclass(tp) or origin in (dict, Mapping, list, tuple, Sequence))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if _is_union(tp):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                if _kind_matches(option, value):
                    errors.append(str(e))
        if len(errors) == 1:  # the member of the right kind explains best what is wrong
            raise ConfigError(errors[0])
        raise ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where or 'config'}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where or 'config'}: expected a list of {len(args)} values, got {value!r}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _convert(vt, v, _join(where, k)) for k, v in value.items()}
    return _convert_scalar(tp, value, where)


def _convert_scalar(tp: Any, value: Any, where: str) -> Any:
    bad = ConfigError(f"{where or 'config'}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float | str):  # 1e5 (YAML reads it as a string) or 1000.0
            try:
                f = float(value)
            except ValueError:
                raise bad from None
            if f.is_integer():
                return int(f)
        raise bad
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise bad
        try:
            number = float(value)  # PyYAML reads 1e-6 (no dot) as a string
        except ValueError:
            raise bad from None
        if not math.isfinite(number):  # `.inf` / `.nan` would train to NaN weights without another error
            raise ConfigError(f"{where or 'config'}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    raise TypeError(f"config schema uses an unsupported type {tp!r} at {where}")


def _convert_dataclass(cls: type, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value) and isinstance(value, cls):
        value = to_dict(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of options, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    whole = getattr(cls, "_replace_as_whole", False)
    for name in fields:
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], _join(where, name))
        elif whole:
            kwargs[name] = None  # a term left out of the section is off
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None
    return obj


