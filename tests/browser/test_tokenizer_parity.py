"""Tokenization and chat templates: @huggingface/tokenizers + @huggingface/jinja in the browser's
worker give the same ids (and loss masks) as tokenizers + jinja2 on CPython."""

from __future__ import annotations

import json

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from loralab.data.formats import encode_record
from loralab.data.tokenizer import HFTokenizer
from loralab.formats.gguf import read as read_gguf
from loralab.model.gguf_model import default_model_path, tokenizer_files
from tests.browser.app import App

pytestmark = pytest.mark.browser

CORPUS = [
    "Hello world! How are you today?",
    "  leading spaces,   runs   of spaces\tand\ttabs\n\n\nand newlines\r\n",
    "unicode: naïve café, Ελληνικά, 中文字符, русский, العربية",
    "emoji 🎉🚀👩‍👩‍👧 and symbols ∑∫√ ≠ ≤",
    "numbers 1234567890 3.14159 1e-10 and code: def f(x): return x**2  # comment",
    "special tokens inline <|im_start|>user\nhi<|im_end|> and <|endoftext|>",
    "",
    "a" * 300,
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3? 🎲"},
     {"role": "assistant", "content": "6, naïvely."}],
]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def trained_bpe(split: str, specials: list[str], nfc: bool) -> str:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20 + [json.dumps(c) for c in CHATS] * 20, trainer)
    return tok.to_str()


def tokenizers_under_test():
    smol = tokenizer_files(read_gguf(default_model_path()))
    yield "smollm2", smol
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    yield "llama3-style", (trained_bpe(LLAMA3_SPLIT, specials, False), config, CHATML)
    yield "qwen2-style", (trained_bpe(QWEN2_SPLIT, specials, True), config, CHATML)


@pytest.mark.parametrize("name, files", list(tokenizers_under_test()), ids=lambda x: x if isinstance(x, str) else "")
def test_browser_and_cpython_tokenize_alike(app_page, site, name, files):
    tokenizer_json, config, template = files
    App(app_page).engine_up()
    request = {"base_url": site, "tokenizer_json": tokenizer_json, "config": config, "chat_template": template,
               "texts": CORPUS, "chats": CHATS}
    answer = json.loads(app_page.evaluate("([n, r]) => window.loralabEngine(n, r)", ["tokenize", json.dumps(request)]))
    assert answer["ok"], answer.get("error")
    native = HFTokenizer(tokenizer_json, config, template)
    for text, ids in zip(CORPUS, answer["ids"]):
        assert ids == native.encode(text), text
    for messages, got in zip(CHATS, answer["chats"]):
        assert got["text"] == native.apply_chat_template(messages)
        seq = encode_record({"messages": messages}, "chat", native, "chat")
        assert got["ids"] == seq.input_ids
        assert got["labels"] == seq.labels
        assert any(label != -100 for label in seq.labels) and seq.labels[0] == -100
