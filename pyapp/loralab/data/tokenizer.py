"""The model's tokenizer and chat template on CPython (`tokenizers` and `jinja2`).

The browser uses @huggingface/tokenizers and @huggingface/jinja through the same interface
(data.formats.Tokenizer).
"""

from __future__ import annotations

import json
import os
from datetime import datetime

from ..checks import loads
from ..errors import UserError, one_line


class TokenizerError(UserError):
    pass


MAX_RENDER = 1 << 26  # characters a chat template may produce for one conversation
MAX_LOOP_STEPS = 1_000_000  # items range() may hand a template's loops in one render
MAX_INT_BITS = 1 << 12  # the largest integer a template's arithmetic may build


def longest_token(spec: dict) -> int:
    """Characters in the longest token of a tokenizer.json (its vocabulary and added tokens):
    no token covers more characters of text, so a text cut after (n + 1) · this many characters
    tokenizes to the same first n tokens as the whole text."""
    vocab = (spec.get("model") or {}).get("vocab") or {}
    tokens = vocab.keys() if isinstance(vocab, dict) else [v[0] for v in vocab if isinstance(v, list) and v]
    added = [t.get("content", "") for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    return max((len(t) for t in [*tokens, *added] if isinstance(t, str)), default=1)


def budgeted_sandbox():
    """Jinja's immutable sandbox with budgets, for chat templates we did not write: `range` hands
    out at most MAX_LOOP_STEPS items per render, `*` and `**` may not build huge strings, lists
    or numbers, and the caller stops reading output past MAX_RENDER characters."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**"])
        steps = 0

        def call_binop(self, context, operator, left, right):
            sized = [v for v in (left, right) if isinstance(v, (str, list, tuple))]
            ints = [v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool)]
            if operator == "*" and sized and ints and len(sized[0]) * max(ints[0], 0) > MAX_RENDER:
                raise TemplateError("the chat template builds a string or list that is too large")
            if operator == "*" and len(ints) == 2 and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateError("the chat template builds a number that is too large")
            if operator == "**" and len(ints) == 2 and abs(left) > 1 and left.bit_length() * abs(right) > MAX_INT_BITS:
                raise TemplateError("the chat template raises a number to too high a power")
            return super().call_binop(context, operator, left, right)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def budget_range(*args):
        for value in range(*args):
            env.steps += 1
            if env.steps > MAX_LOOP_STEPS:
                raise TemplateError(f"the chat template loops more than {MAX_LOOP_STEPS:,} times")
            yield value

    env.globals["range"] = budget_range
    return env


def token_text(value) -> str | None:
    """A special token from tokenizer_config.json: a string, or {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer:
    def __init__(self, tokenizer_json: str, config: dict | None = None, chat_template: str | None = None):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # the Rust library raises plain Exception for any malformed file
            raise TokenizerError(f"tokenizer.json cannot be read: {one_line(exc)}") from None
        self.max_token_chars = max([len(t) for t in self._tok.get_vocab(with_added_tokens=True)], default=1)
        self.config = config or {}
        self.chat_template = chat_template or self.config.get("chat_template")
        if isinstance(self.chat_template, list):  # named templates: take "default"
            self.chat_template = next((t["template"] for t in self.chat_template if t.get("name") == "default"), None)
        self.bos_token = token_text(self.config.get("bos_token"))
        self.eos_token = token_text(self.config.get("eos_token"))
        self.eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        pad = token_text(self.config.get("pad_token"))
        pad_id = self._tok.token_to_id(pad) if pad else None
        self.pad_id = pad_id if pad_id is not None else (self.eos_id or 0)
        self._template = None

    @classmethod
    def from_folder(cls, path: str) -> "HFTokenizer":
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise TokenizerError(f"{path}: tokenizer.json is missing; text datasets need the model's tokenizer")
        with open(file, encoding="utf-8") as f:
            tokenizer_json = f.read()
        config, template = {}, None
        cfg_file = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(cfg_file):
            with open(cfg_file, "rb") as f:
                config = loads(f.read(), cfg_file, TokenizerError)
            if not isinstance(config, dict):
                raise TokenizerError(f"{cfg_file}: expected a JSON object")
        jinja_file = os.path.join(path, "chat_template.jinja")
        if os.path.isfile(jinja_file):
            with open(jinja_file, encoding="utf-8") as f:
                template = f.read()
        return cls(tokenizer_json, config, template)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(o) for o in enc.offsets]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if not self.chat_template:
            raise TokenizerError("this model has no chat template")
        from jinja2.exceptions import TemplateError

        if self._template is None:
            def raise_exception(message):
                raise TemplateError(message)

            self._env = env = budgeted_sandbox()
            env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, indent=indent, ensure_ascii=False)
            env.globals["raise_exception"] = raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            try:
                self._template = env.from_string(self.chat_template)
            except TemplateError as exc:
                raise TokenizerError(f"the chat template is not valid Jinja ({exc})") from None
        self._env.steps = 0
        parts, size = [], 0
        try:
            for part in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=self.bos_token or "", eos_token=self.eos_token or ""):
                size += len(part)
                if size > MAX_RENDER:
                    raise TokenizerError(f"the chat template produced more than {MAX_RENDER:,} characters")
                parts.append(part)
        except RecursionError:
            raise TokenizerError("the chat template recursed too deeply") from None
        except (TemplateError, TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
            raise TokenizerError(f"the chat template failed: {one_line(exc)}") from None
        return "".join(parts)
