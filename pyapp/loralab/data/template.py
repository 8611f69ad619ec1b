"""Chat templates: Jinja (jinja2, pure Python) in a budgeted sandbox, the same in both runtimes.

Templates come inside model files we did not write. Jinja's immutable sandbox already blocks
attribute tricks; on top of it: `range` hands out at most MAX_LOOP_STEPS items per render, `*`
and `**` may not build huge strings, lists or numbers, recursion ends in a one-line error, and
rendering stops past MAX_RENDER characters. transformers renders chat templates with jinja2 too,
so the text (and so the loss masks) matches what it would produce.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

from ..errors import UserError, one_line

MAX_RENDER = 1 << 26  # characters a chat template may produce for one conversation
MAX_LOOP_STEPS = 1_000_000  # items range() may hand a template's loops in one render
MAX_INT_BITS = 1 << 12  # the largest integer a template's arithmetic may build


class TemplateError(UserError):
    """A chat template that is not valid Jinja, or failed or ran over a budget while rendering."""


# While tracking, {% generation %} blocks are wrapped in these (private-use) characters, then
# cut out again with their positions: the spans transformers' return_assistant_tokens_mask uses.
GEN_OPEN, GEN_CLOSE = "\ue000", "\ue001"
GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")


def _sandbox():
    from jinja2 import nodes
    from jinja2.exceptions import TemplateError as JinjaError
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlocks(Extension):
        """{% generation %}...{% endgeneration %}: the assistant's own text, as transformers marks it."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_block"), [], [], body).set_lineno(lineno)

        def _block(self, caller):
            text = caller()
            return GEN_OPEN + text + GEN_CLOSE if self.environment.tracking else text

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])
        steps = 0
        tracking = False

        def call_binop(self, context, operator, left, right):
            sized = [v for v in (left, right) if isinstance(v, (str, list, tuple))]
            ints = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
            if operator == "*" and sized and ints and len(sized[0]) * max(ints[0], 0) > MAX_RENDER:
                raise JinjaError("the chat template builds a string or list that is too large")
            if operator == "*" and len(ints) == 2 and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise JinjaError("the chat template builds a number that is too large")
            if operator == "**" and len(ints) == 2 and abs(left) > 1 and left.bit_length() * abs(right) > MAX_INT_BITS:
                raise JinjaError("the chat template raises a number to too high a power")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", GenerationBlocks])

    def budget_range(*args):
        for value in range(*args):
            env.steps += 1
            if env.steps > MAX_LOOP_STEPS:
                raise JinjaError(f"the chat template loops more than {MAX_LOOP_STEPS:,} times")
            yield value

    def raise_exception(message):
        raise JinjaError(message)

    env.globals.update(range=budget_range, raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, indent=indent, ensure_ascii=False)
    return env


class ChatTemplate:
    """A model's chat template, compiled once; `render` as transformers' apply_chat_template."""

    def __init__(self, text: str):
        from jinja2.exceptions import TemplateError as JinjaError

        if not isinstance(text, str):
            raise TemplateError(f"the chat template must be text, not {type(text).__name__}")
        self.text = text
        self._env = _sandbox()
        self.has_generation = bool(GENERATION_TAG.search(text))
        try:
            self._template = self._env.from_string(text)
        except (JinjaError, RecursionError) as exc:
            raise TemplateError(f"the chat template is not valid Jinja ({one_line(exc)})") from None

    def render_with_spans(self, **context) -> tuple[str, list[tuple[int, int]]] | None:
        """The text and the character spans of its {% generation %} blocks, or None when the
        template has none (or the conversation itself holds the marker characters)."""
        if not self.has_generation:
            return None
        self._env.tracking = True
        try:
            marked = self.render(**context)
        finally:
            self._env.tracking = False
        text, spans, start = [], [], None
        at = 0
        for piece in re.split(f"([{GEN_OPEN}{GEN_CLOSE}])", marked):
            if piece == GEN_OPEN:
                if start is not None:
                    return None
                start = at
            elif piece == GEN_CLOSE:
                if start is None:
                    return None
                spans.append((start, at))
                start = None
            else:
                text.append(piece)
                at += len(piece)
        return ("".join(text), spans) if start is None else None

    def render(self, **context) -> str:
        from jinja2.exceptions import TemplateError as JinjaError

        self._env.steps = 0
        parts, size = [], 0
        try:
            for part in self._template.generate(**context):
                size += len(part)
                if size > MAX_RENDER:
                    raise TemplateError(f"the chat template produced more than {MAX_RENDER:,} characters")
                parts.append(part)
        except RecursionError:
            raise TemplateError("the chat template recursed too deeply") from None
        except (JinjaError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TemplateError(f"the chat template failed: {one_line(exc)}") from None
        return "".join(parts)
