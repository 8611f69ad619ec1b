"""The model's tokenizer in the browser: @huggingface/tokenizers through Pyodide's JS FFI, and
the chat template through data.template (jinja2, as on CPython), behind the same interface as
data.tokenizer.

Browser-only (it imports `js`); loaded by the engine worker. The tokenizer library is served
from the site's own vendor/ folder, jinja2 travels in loralab.zip.
"""

from __future__ import annotations

import json

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from ..checks import loads
from ..data.template import ChatTemplate
from ..data.tokenizer import TokenizerError, longest_token, token_text
from ..errors import one_line

_modules: dict[str, object] = {}


async def _import(url: str):
    if url not in _modules:
        _modules[url] = await js.Function.new("url", "return import(url)")(url)
    return _modules[url]


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: each printable stand-in character -> its byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


class BrowserTokenizer:
    def __init__(self, tok, template, config: dict, added: set[str]):
        self._tok, self._template, self.config, self._added = tok, template, config, added
        self.bos_token = token_text(config.get("bos_token"))
        self.eos_token = token_text(config.get("eos_token"))
        self.eos_id = self._id(self.eos_token)
        pad_id = self._id(token_text(config.get("pad_token")))
        self.pad_id = pad_id if pad_id is not None else (self.eos_id or 0)
        self.chat_template = template.text if template is not None else None  # (the model card shows it)
        self._bytes = _byte_decoder()

    @classmethod
    async def create(cls, base_url: str, tokenizer_json: str, config: dict, chat_template: str | None = None):
        tokenizers = await _import(js.URL.new("vendor/tokenizers/tokenizers.min.mjs", base_url).href)
        spec = loads(tokenizer_json, "tokenizer.json", TokenizerError)
        if not isinstance(spec, dict):
            raise TokenizerError("tokenizer.json: expected a JSON object")
        template_text = chat_template or config.get("chat_template")
        try:
            tok = tokenizers.Tokenizer.new(js.JSON.parse(tokenizer_json), js.JSON.parse(json.dumps(config)))
        except Exception as exc:  # a JsException from @huggingface/tokenizers
            raise TokenizerError(f"tokenizer.json cannot be read: {one_line(exc)}") from None
        template = ChatTemplate(template_text) if template_text else None
        self = cls(tok, template, config, {t["content"] for t in spec.get("added_tokens", [])})
        self.max_token_chars = longest_token(spec)
        return self

    def _id(self, token: str | None) -> int | None:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        return None if i is None else int(i)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        options = to_js({"add_special_tokens": add_special_tokens}, dict_converter=js.Object.fromEntries)
        return [int(i) for i in self._tok.encode(text, options).ids]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Character offsets rebuilt from the byte-level tokens (the JS library has none)."""
        options = to_js({"add_special_tokens": False}, dict_converter=js.Object.fromEntries)
        encoding = self._tok.encode(text, options)
        ids, tokens = [int(i) for i in encoding.ids], [str(t) for t in encoding.tokens]
        data = text.encode("utf-8")
        char_at = [0] * (len(data) + 1)  # byte position -> character index
        position = 0
        for index, ch in enumerate(text):
            width = len(ch.encode("utf-8"))
            for k in range(width):
                char_at[position + k] = index
            position += width
        char_at[len(data)] = len(text)
        offsets, cursor = [], 0
        for token in tokens:
            raw = token.encode("utf-8") if token in self._added else bytes(self._bytes.get(c, 0) for c in token)
            offsets.append((char_at[min(cursor, len(data))], char_at[min(cursor + len(raw), len(data))]))
            cursor += len(raw)
        return ids, offsets

    def decode(self, ids: list[int]) -> str:
        if not ids:  # (an answer that ended at once; the JS library refuses an empty list)
            return ""
        options = to_js({"skip_special_tokens": True}, dict_converter=js.Object.fromEntries)
        return str(self._tok.decode(to_js(ids), options))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self._template is None:
            raise TokenizerError("this model has no chat template")
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def assistant_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]] | None:
        """The rendered conversation and its {% generation %} spans, when the template marks them."""
        if self._template is None:
            return None
        return self._template.render_with_spans(messages=messages, add_generation_prompt=False,
                                                bos_token=self.bos_token or "", eos_token=self.eos_token or "")
