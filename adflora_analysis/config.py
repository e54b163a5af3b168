"""Typed experiment configs from TOML files with ``key=value`` overrides (docs/architecture.md §8).

A config schema is a (nested) dataclass. :func:`load_config` reads a TOML file, applies dotted
overrides (``topology.q=0.2``), and builds the dataclass, refusing unknown keys (with the closest
valid name) and ill-typed values with one-line :class:`~adflora_analysis.errors.AdfloraError`\\ s.
Checks that span fields live in the dataclass's ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from adflora_analysis.errors import AdfloraError, unknown_name

T = TypeVar("T")


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; a missing or corrupt file is an :class:`AdfloraError`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "study.toml"
    ...     _ = p.write_text('rounds = 5\\n[topology]\\ngraph = "ring"\\n')
    ...     read_toml(p)
    {'rounds': 5, 'topology': {'graph': 'ring'}}
    >>> read_toml("missing.toml")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: config file 'missing.toml' does not exist ...
    """
    p = Path(path)
    if not p.is_file():
        raise AdfloraError(f"config file {str(p)!r} does not exist", "check the path")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise AdfloraError(f"config file {str(p)!r} is not valid TOML: {e}",
                           "fix the syntax at the position named") from None
    except RecursionError:
        raise AdfloraError(f"config file {str(p)!r} nests tables or arrays too deeply",
                           "a study config is a few levels deep: flatten it") from None
    except OSError as e:
        raise AdfloraError(f"cannot read config file {str(p)!r} ({e.strerror})",
                           "check the path and its permissions") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"topology.q=0.2"`` -> ``(["topology", "q"], 0.2)``; values parse as TOML, else string.

    >>> parse_override("methods=['lora','rolora']")
    (['methods'], ['lora', 'rolora'])
    >>> parse_override("task=sst2")
    (['task'], 'sst2')
    """
    if "=" not in item:
        raise AdfloraError(f"override {item!r} is not key=value", "write e.g. rounds=50")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise AdfloraError(f"override {item!r} has an empty key", "write e.g. rounds=50")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override set (dotted keys nest).

    >>> apply_overrides({"rounds": 5, "topology": {"q": 0.1}}, ["topology.q=0.2", "seeds=[1, 2]"])
    {'rounds': 5, 'topology': {'q': 0.2}, 'seeds': [1, 2]}
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides or []:
        keys, value = parse_override(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise AdfloraError(f"override {item!r}: {k!r} is not a table",
                                   f"set a key of a table, e.g. topology.q=0.2; {k!r} has no "
                                   "keys below it")
        node[keys[-1]] = value
    return out


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively.

    >>> from adflora_analysis.topology import TopologyConfig
    >>> from_dict(TopologyConfig, {"graph": "ring", "weights": "max-degree"}).weights
    'max-degree'
    >>> from_dict(TopologyConfig, {"graph": "ring", "wieghts": "max-degree"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    adflora_analysis.errors.AdfloraError: unknown config key 'wieghts'; valid: ...
    """
    if not isinstance(data, dict):
        raise AdfloraError(f"{where or 'config'} must be a table, got {type(data).__name__}",
                           "write key = value lines (a TOML table)")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            err = unknown_name(f"config key{' in [' + where + ']' if where else ''}", key, fields)
            raise err
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, path)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required key is missing
        raise AdfloraError(f"{where or 'config'}: {e}", "add the missing key") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _coerce(arg, value, path)
            except AdfloraError as e:
                errors.append(e)
        raise AdfloraError(f"config key {path!r} = {value!r} has the wrong type; "
                           f"expected {_type_name(tp)}", f"give {path} a {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise unknown_name(f"value for {path!r}", value, [str(a) for a in get_args(tp)])
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise AdfloraError(f"config key {path!r} = {value!r} must be a list",
                               f"write e.g. {path.split('.')[-1]} = [...]")
        (arg, *_rest) = get_args(tp) or (Any,)
        return [_coerce(arg, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise AdfloraError(f"config key {path!r} must be a table",
                               f"write it as [{path}] with key = value lines below")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise AdfloraError(f"config key {path!r} = {value!r} must be true or false",
                               f"write {path} = true or {path} = false (no quotes)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AdfloraError(f"config key {path!r} = {value!r} must be an integer",
                               f"write {path} as a whole number, e.g. {path} = 5")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AdfloraError(f"config key {path!r} = {value!r} must be a number",
                               f"write {path} as a number, e.g. {path} = 0.1")
        if not math.isfinite(float(value)):
            raise AdfloraError(f"config key {path!r} = {value!r} must be finite",
                               f"give {path} a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise AdfloraError(f"config key {path!r} = {value!r} must be a string",
                               f'quote it: {path} = "..."')
        return value
    return value


def _type_name(tp: Any) -> str:
    args = [a for a in get_args(tp) if a is not type(None)]
    return " or ".join(getattr(a, "__name__", str(a)) for a in args)


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None, data: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from a TOML file (or ``data``), then apply ``key=value`` overrides.

    >>> from adflora_analysis.topology import TopologyConfig
    >>> cfg = load_config(TopologyConfig, data={"graph": "encounter"}, overrides=["q=0.3"])
    >>> cfg.graph, cfg.q
    ('encounter', 0.3)
    """
    base = read_toml(path) if path is not None else dict(data or {})
    return from_dict(cls, apply_overrides(base, overrides))


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as a plain (nested) dict, for ``config.toml`` and comparisons.

    >>> from adflora_analysis.topology import TopologyConfig
    >>> to_dict(TopologyConfig(graph="ring"))
    {'graph': 'ring', 'weights': 'metropolis', 'q': None, 'params': {}, 'matrix': None}
    """
    return dataclasses.asdict(cfg)


def dump_toml(data: dict[str, Any]) -> str:
    """Serialize a nested dict of scalars, lists and tables as TOML (with tomli-w).

    None values are omitted (at any depth); paths are written as strings, tuples as arrays.
    Keys keep their order, scalars before tables; a list of tables is an array of inline
    tables. Every string round-trips through :mod:`tomllib`, any Unicode included.

    >>> print(dump_toml({"n": 3, "t": {"q": 0.1, "g": "ring"}, "skip": None}).strip())
    n = 3
    <BLANKLINE>
    [t]
    q = 0.1
    g = "ring"
    >>> tomllib.loads(dump_toml({"label": "\U0001d702 small"}))["label"]
    '\U0001d702 small'
    """
    import tomli_w

    return tomli_w.dumps(_plain(data, ""))


def _plain(v: Any, where: str) -> Any:
    """``v`` with None values dropped from tables and paths/tuples made TOML-ready."""
    if isinstance(v, dict):
        return {str(k): _plain(x, f"{where}.{k}" if where else str(k))
                for k, x in v.items() if x is not None}
    if isinstance(v, list | tuple):
        if any(x is None for x in v):
            raise TypeError(f"cannot write None inside the array {where!r} to TOML")
        return [_plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, bool | int | float | str):
        return v
    raise TypeError(f"cannot write {type(v).__name__} ({where!r}) to TOML")


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "",
                defaults: dict[str, Any] | None = None) -> list[str]:
    """Dotted keys whose values differ between two nested dicts (for refusing a resume).

    ``a`` is the config a run was started with, ``b`` the new one. With ``defaults`` (the
    config class's default values, same nesting), a key ``a`` lacks — a run written before the
    key existed — is no difference when ``b`` holds its default (a new key's default reproduces
    the old behaviour).

    >>> config_diff({"a": 1, "t": {"q": 0.1}}, {"a": 1, "t": {"q": 0.2}})
    ['t.q']
    >>> config_diff({"a": 1}, {"a": 1, "new": 0}, defaults={"new": 0})
    []
    >>> config_diff({"a": 1}, {"a": 1, "new": 2}, defaults={"new": 0})
    ['new']
    """
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    defaults = defaults or {}
    for k in keys:
        p = f"{prefix}{k}"
        va, vb, vd = a.get(k), b.get(k), defaults.get(k)
        if k not in a and k in defaults and vb == vd:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, p + ".", vd if isinstance(vd, dict) else None)
        elif va != vb:
            out.append(p)
    return out
