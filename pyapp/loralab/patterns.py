"""PEFT's module-name patterns (rank_pattern, alpha_pattern), matched without backtracking blowups.

PEFT matches a key against a module's full name as `re.match(rf"(.*\\.)?({key})$", name)`:
the key is a regular expression for the end of the name. Keys come from files we did not write,
and a key such as `(.|.)*z` makes Python's backtracking engine run for hours. So a key is checked
before use: a plain name (the common case) matches as PEFT's regex would, with no quantifier at
all; a key with quantifiers is accepted only when no repetition contains another repetition or
an alternation (the shapes that backtrack exponentially) and it has at most two open-ended
repetitions (module names are short, so the polynomial cases stay small).
"""

from __future__ import annotations

import functools
import re

from .errors import UserError, short

MAX_KEY = 256
MAX_OPEN_REPEATS = 2


class PatternError(UserError):
    """A rank_pattern / alpha_pattern key that is not a usable pattern."""


def _unsafe(pattern: str) -> str | None:
    """Why matching `pattern` could take exponential (or large polynomial) time, else None."""
    try:
        from re import (
            _parser as sre,  # the parser `re` itself uses (CPython 3.11+, Pyodide)
        )
        from re._constants import (
            BRANCH,
            GROUPREF,
            GROUPREF_EXISTS,
            MAX_REPEAT,
            MAXREPEAT,
            MIN_REPEAT,
        )
    except ImportError:  # pragma: no cover - a Python without the parser: accept plain names only
        return None if re.escape(pattern).replace("\\.", ".") == pattern else "it is not a plain module name"
    repeat_ops = {MAX_REPEAT, MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", MAX_REPEAT)}
    open_repeats = 0

    def walk(items, in_repeat: bool) -> str | None:
        nonlocal open_repeats
        for op, av in items:
            if op in repeat_ops:
                lo, hi, body = av
                many = hi == MAXREPEAT or hi > 1
                if many and in_repeat:
                    return "it repeats a repetition"
                if hi == MAXREPEAT or hi > 16:
                    open_repeats += 1
                found = walk(body, in_repeat or many)
            elif op is BRANCH:
                if in_repeat:
                    return "it repeats an alternation"
                found = next((w for w in (walk(b, in_repeat) for b in av[1]) if w), None)
            elif op in (GROUPREF, GROUPREF_EXISTS):
                return "it uses a back-reference"
            elif isinstance(av, tuple) and av and isinstance(av[-1], sre.SubPattern):
                found = walk(av[-1], in_repeat)  # groups, assertions
            elif isinstance(av, sre.SubPattern):
                found = walk(av, in_repeat)  # atomic groups
            else:
                found = None
            if found:
                return found
        return None

    found = walk(sre.parse(pattern), False)
    if found is None and open_repeats > MAX_OPEN_REPEATS:
        found = f"it has more than {MAX_OPEN_REPEATS} open-ended repetitions"
    return found


@functools.lru_cache(maxsize=1024)
def compile_key(key: str, what: str = "rank_pattern") -> re.Pattern:
    """PEFT's regex for `key`, after checking that matching it is cheap; PatternError otherwise."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY:
        raise PatternError(f"{what} key {short(key)} must be a module name of 1 to {MAX_KEY} characters")
    try:
        re.compile(key)
        compiled = re.compile(rf"(.*\.)?({key})$")
    except re.error as exc:
        raise PatternError(f"{what} key {short(key)} is not a valid pattern ({exc})") from None
    why = _unsafe(key)
    if why:
        raise PatternError(f"{what} key {short(key)} could take a very long time to match ({why}); "
                           f"use module names such as model.layers.3.self_attn.q_proj or simpler patterns")
    return compiled


def compile_whole(pattern: str, what: str) -> re.Pattern:
    """A regular expression PEFT matches against a whole module name (a string target_modules or
    exclude_modules), after the same check as compile_key's; PatternError otherwise."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > 4 * MAX_KEY:
        raise PatternError(f"{what} {short(pattern)} must be a pattern of 1 to {4 * MAX_KEY} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PatternError(f"{what} {short(pattern)} is not a valid pattern ({exc})") from None
    why = _unsafe(pattern)
    if why:
        raise PatternError(f"{what} {short(pattern)} could take a very long time to match ({why})")
    return compiled


def first_match(keys, name: str, what: str = "rank_pattern"):
    """PEFT's get_pattern_key: the first key whose pattern matches the end of `name`, else None."""
    for key in keys:
        if compile_key(key, what).match(name):
            return key
    return None
