"""Typed reads of untrusted JSON-like values (config files, file headers, metadata).

Every field of a file we did not write is checked for type, range and consistency before use:
integers are real integers (not bools, strings or floats) within limits, floats are finite, and
the message names the source and the field. Callers pass the error class of their format.
"""

from __future__ import annotations

import math
import re

from .errors import UserError, short

MISSING = object()


def integer(value, what: str, error: type[UserError], lo: int = 0, hi: int = 2**53) -> int:
    """`value` as an int in [lo, hi]; JSON's true/false, strings and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} must be an integer, not {short(value)}")
    if not lo <= value <= hi:
        raise error(f"{what} is {value:,}; it must lie between {lo:,} and {hi:,}")
    return value


def number(value, what: str, error: type[UserError], lo: float = -math.inf, hi: float = math.inf,
           open_lo: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi] with open_lo)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{what} must be a number, not {short(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise error(f"{what} is too large") from None
    if not math.isfinite(value):
        raise error(f"{what} must be a finite number, not {value}")
    if value < lo or value > hi or (open_lo and value == lo):
        if hi == math.inf:
            bound = f"greater than {lo:g}" if open_lo else f"at least {lo:g}"
        else:
            bound = f"greater than {lo:g} and at most {hi:g}" if open_lo else f"between {lo:g} and {hi:g}"
        raise error(f"{what} is {value:g}; it must be {bound}")
    return value


def boolean(value, what: str, error: type[UserError]) -> bool:
    if not isinstance(value, bool):
        raise error(f"{what} must be true or false, not {short(value)}")
    return value


def text(value, what: str, error: type[UserError], limit: int = 1 << 20) -> str:
    if not isinstance(value, str):
        raise error(f"{what} must be a string, not {short(value)}")
    if len(value) > limit:
        raise error(f"{what} is {len(value):,} characters long; at most {limit:,} are accepted")
    return value


def mapping(value, what: str, error: type[UserError]) -> dict:
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def field(d: dict, key: str, kind, source: str, error: type[UserError], default=MISSING, **limits):
    """d[key] read through `kind` (integer, number, boolean, text): `default` when the key is
    absent or null, an error naming `source` and the key when required and absent."""
    value = d.get(key)
    if value is None:
        if default is MISSING:
            raise error(f"{source}: {key} is missing")
        return default
    return kind(value, f"{source}: {key}", error, **limits)


def no_duplicate_keys(error: type[UserError], source: str):
    """An object_pairs_hook for json.loads that refuses an object naming a key twice (where the
    json module would keep the last value silently)."""

    def hook(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise error(f"{source}: the key {short(key)} appears twice")
            out[key] = value
        return out

    return hook


MAX_JSON_DEPTH = 256  # model files nest a few levels; Pyodide's stack gives out near a few thousand
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` deep. json's C parser
    recurses on the machine stack, which under Pyodide overflows (a fatal error, not an
    exception) long before Python's recursion limit, so depth is checked before parsing.
    Strings are skipped whole by the regex (brackets inside them do not count); text with
    fewer brackets than the limit needs no scan at all."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > limit:
                return True
        elif token in "]}":
            depth -= 1
    return False


def loads(data, source: str, error: type[UserError], unique: bool = False):
    """json.loads of untrusted text with one-line errors: invalid JSON, invalid UTF-8, nesting too
    deep for the parser (RecursionError), NaN/Infinity and numbers out of range all name `source`;
    with `unique`, an object that repeats a key is refused too."""
    import json

    def constant(name: str):  # NaN, Infinity, -Infinity: Python accepts them, JSON does not
        raise error(f"{source}: {name} is not a JSON value")

    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        if too_deep(data):
            raise error(f"{source}: the JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
        hook = no_duplicate_keys(error, source) if unique else None
        return json.loads(data, object_pairs_hook=hook, parse_constant=constant)
    except UnicodeDecodeError:
        raise error(f"{source}: not valid UTF-8 text") from None
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno} column {exc.colno}"
        raise error(f"{source}: invalid JSON ({exc.msg} at {where})") from None
    except RecursionError:
        raise error(f"{source}: the JSON is nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal with more digits than Python converts
        raise error(f"{source}: invalid JSON ({exc})") from None


def relative_name(value, what: str, error: type[UserError]) -> str:
    """A file name from a file we did not write (a shard index, a zip), checked to be a plain
    relative path inside its folder: no '..' or '.' parts, no absolute path, drive letter,
    backslash, control character or empty part. Used before the name is joined to any path or URL."""
    name = text(value, what, error, limit=1024)
    parts = name.split("/")
    bad = (not name or name.startswith("/") or "\\" in name or ":" in name
           or any(ord(ch) < 32 or ch == "\x7f" for ch in name)
           or any(part in ("", ".", "..") for part in parts))
    if bad:
        raise error(f"{what}: {short(name)} is not a plain file name inside the model folder")
    return name


def path_inside(folder: str, name: str, what: str, error: type[UserError]) -> str:
    """os.path.join(folder, name), refused unless the resolved path (links followed) stays in folder."""
    import os

    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, relative_name(name, what, error)))
    if os.path.commonpath([root, path]) != root:
        raise error(f"{what}: {short(name)} points outside {folder}")
    return path


def weight_map_shards(index, source: str, error: type[UserError]) -> list[str]:
    """The shard file names of a model.safetensors.index.json, each a checked relative name."""
    if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict) or not index["weight_map"]:
        raise error(f"{source}: weight_map must be a JSON object mapping tensor names to shard files")
    return sorted({relative_name(v, f"{source}: weight_map", error) for v in index["weight_map"].values()})


def typed(value, kind, what: str, error: type[UserError]):
    """`value` checked against the type annotation `kind`: int, float, bool, str, dict, list,
    tuple[T, ...], tuple[A, B], X | None, or a dataclass (built with `build`). Anything else
    passes through for the dataclass's own checks."""
    import dataclasses
    import types
    import typing

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return typed(value, rest[0], what, error) if len(rest) == 1 else value
    if kind is bool:
        return boolean(value, what, error)
    if kind is int:
        return integer(value, what, error, -(2**53))
    if kind is float:
        return number(value, what, error)
    if kind is str:  # (whole datasets and tokenizer files arrive as strings)
        return text(value, what, error, limit=1 << 31)
    if kind is dict or origin is dict:
        value = mapping(value, what, error)
        if args:
            return {typed(k, args[0], f"{what} key", error): typed(v, args[1], f"{what}[{short(k)}]", error)
                    for k, v in value.items()}
        return value
    if kind is list or origin is list:
        if not isinstance(value, list):
            raise error(f"{what} must be a JSON list, not {type(value).__name__}")
        return [typed(v, args[0], f"{what}[{i}]", error) for i, v in enumerate(value)] if args else value
    if origin is tuple:
        if isinstance(value, dict) and len(args) == 2 and typing.get_origin(args[0]) is tuple:
            value = list(value.items())  # PEFT writes per-module patterns as an object
        if not isinstance(value, (list, tuple)):
            raise error(f"{what} must be a JSON list, not {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(typed(v, args[0], f"{what}[{i}]", error) for i, v in enumerate(value))
        if len(value) != len(args):
            raise error(f"{what} must be a list of {len(args)} values, not {len(value)}")
        return tuple(typed(v, a, f"{what}[{i}]", error) for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(kind):
        return build(kind, value, what, error)
    return value


def build(cls, value, what: str, error: type[UserError]):
    """The dataclass `cls` from a JSON object, each field read through `typed`: an unknown field,
    a field of the wrong type or a required field that is absent is `error` naming `what` and the
    field (where `cls(**value)` would raise a TypeError, which reads as a bug). Nulls leave a
    field at its default."""
    import dataclasses
    import typing

    value = mapping(value, what, error)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in known]
    if unknown:
        raise error(f"{what}: unknown field {short(unknown[0])}; expected {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        if value.get(name) is not None:
            values[name] = typed(value[name], hints[name], f"{what}: {name}", error)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise error(f"{what}: {name} is missing")
    return cls(**values)
