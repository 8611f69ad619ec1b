"""The model's tokenizer on CPython (`tokenizers`) and its chat template (data.template).

The browser uses @huggingface/tokenizers and the same chat template code through the same
interface (data.formats.Tokenizer).
"""

from __future__ import annotations

from ..errors import UserError, one_line, short
from .template import ChatTemplate


class TokenizerError(UserError):
    pass


def longest_token(spec: dict) -> int:
    """Characters in the longest token of a tokenizer.json (its vocabulary and added tokens):
    no token covers more characters of text, so a text cut after (n + 1) · this many characters
    tokenizes to the same first n tokens as the whole text."""
    vocab = (spec.get("model") or {}).get("vocab") or {}
    tokens = vocab.keys() if isinstance(vocab, dict) else [v[0] for v in vocab if isinstance(v, list) and v]
    added = [t.get("content", "") for t in spec.get("added_tokens") or [] if isinstance(t, dict)]
    return max((len(t) for t in [*tokens, *added] if isinstance(t, str)), default=1)


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
            self.chat_template = next((t.get("template") for t in self.chat_template
                                       if isinstance(t, dict) and t.get("name") == "default"), None)
        for name in ("bos_token", "eos_token", "pad_token"):
            if token_text(self.config.get(name)) is not None and not isinstance(token_text(self.config[name]), str):
                raise TokenizerError(f"tokenizer_config.json: {name} must be a token (text), not {short(self.config[name])}")
        self.bos_token = token_text(self.config.get("bos_token"))
        self.eos_token = token_text(self.config.get("eos_token"))
        self.eos_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        pad = token_text(self.config.get("pad_token"))
        pad_id = self._tok.token_to_id(pad) if pad else None
        self.pad_id = pad_id if pad_id is not None else (self.eos_id or 0)
        self._template = None

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
        if self._template is None:
            self._template = ChatTemplate(self.chat_template)
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]] | None:
        """The rendered conversation and its {% generation %} spans, when the template marks them."""
        if not self.chat_template:
            return None
        if self._template is None:
            self._template = ChatTemplate(self.chat_template)
        return self._template.render_with_spans(messages=messages, add_generation_prompt=False,
                                                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
