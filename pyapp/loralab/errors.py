"""The two kinds of failure, kept apart so each is reported the right way.

`UserError`: the person's input or machine is the cause (a malformed file, an adapter for another
model, a GPU that lacks a feature). Its message is one line that names the file, the record or
tensor, and the problem; the CLI prints it and exits 2, the app shows it and stays usable.

Anything else that escapes is a bug in LoRA Lab: the CLI prints a traceback and exits 1, the app
says "internal error" and keeps the traceback for the report.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the person can act on; the message is the whole story."""


class UsageError(UserError):
    """A request that does not fit the current state or the options given ("load a model first")."""


class Cancelled(UserError):
    """The person cancelled a long operation (a model load, an export) while it ran."""


def short(value, limit: int = 60) -> str:
    """A value as it may appear in a one-line message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(exc: BaseException) -> str:
    """An exception as one line for a person: its message on a single line, or its type's name
    when it has none (a bare KeyError says nothing by itself)."""
    message = " ".join(str(exc).split())
    return message or type(exc).__name__
