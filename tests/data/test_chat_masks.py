"""Which tokens of a chat are trained: our masks against transformers' return_assistant_tokens_mask
(the reference TRL's assistant_only_loss uses), for SmolLM2, Llama-3 and Qwen2 style templates.

Each template comes twice: with {% generation %} tags (transformers' reference, and our reading
of the tags) and as the model ships it, without tags (our own span finding must agree)."""

from __future__ import annotations

import json

import pytest

from loralab.data.batches import IGNORE
from loralab.data.formats import DatasetError, encode_record, load_dataset
from loralab.data.tokenizer import HFTokenizer
from loralab.formats.gguf import read
from loralab.model.gguf_model import default_model_path, tokenizer_files

transformers = pytest.importorskip("transformers")

CHATML_SYSTEM = ("{{% for message in messages %}}{{% if loop.first and messages[0]['role'] != 'system' %}}"
                 "{{{{ '<|im_start|>system\\n{system}<|im_end|>\\n' }}}}{{% endif %}}{body}{{% endfor %}}"
                 "{{% if add_generation_prompt %}}{{{{ '<|im_start|>assistant\\n' }}}}{{% endif %}}")
CHATML_PLAIN = "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
# As TRL's training templates mark a turn: its text, the end-of-turn token and the newline after it.
CHATML_TAGGED = ("{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}{% generation %}"
                 "{{ message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}{% else %}" + CHATML_PLAIN
                 + "{% endif %}")
SMOL = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QWEN = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA3_PLAIN = ("{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
                "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
LLAMA3_TAGGED = ("{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
                 "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
                 "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}"
                 "{% endgeneration %}{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
TEMPLATES = {
    "smollm2": (CHATML_SYSTEM.format(system=SMOL, body=CHATML_PLAIN), CHATML_SYSTEM.format(system=SMOL, body=CHATML_TAGGED)),
    "llama3": (LLAMA3_PLAIN, LLAMA3_TAGGED),
    "qwen2": (CHATML_SYSTEM.format(system=QWEN, body=CHATML_PLAIN), CHATML_SYSTEM.format(system=QWEN, body=CHATML_TAGGED)),
}
CONVERSATIONS = {
    "user first": {"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]},
    "assistant first": {"messages": [{"role": "assistant", "content": "Hello! How can I help?"},
                                     {"role": "user", "content": "Name a colour."},
                                     {"role": "assistant", "content": "Blue."}]},
    "system first": {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello there."}]},
    "multi-turn": {"messages": [{"role": "user", "content": "One?"}, {"role": "assistant", "content": "1"},
                                {"role": "user", "content": "Two?"}, {"role": "assistant", "content": "2"},
                                {"role": "user", "content": "Three?"}, {"role": "assistant", "content": " 3 "}]},
    "sharegpt aliases": {"conversations": [{"from": "bing", "value": "Hi, I am Bing."}, {"from": "human", "value": "Hi"},
                                           {"from": "chatgpt", "value": "Hello."}, {"from": "user", "value": "Bye"},
                                           {"from": "bard", "value": "Goodbye!"}]},
}


@pytest.fixture(scope="module")
def tokenizer_parts():
    tokenizer_json, config, _ = tokenizer_files(read(default_model_path()))
    return tokenizer_json, {**config, "bos_token": "<|im_start|>"}


def reference_mask(tokenizer_parts, template: str, record: dict) -> tuple[list[int], list[int]]:
    from tokenizers import Tokenizer

    tokenizer_json, config = tokenizer_parts
    ref = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json),
                                               bos_token=config["bos_token"], eos_token=config["eos_token"])
    messages = record.get("messages") or [
        {"role": {"human": "user", "user": "user"}.get(m["from"], "assistant"), "content": m["value"]}
        for m in record["conversations"]]
    out = ref.apply_chat_template(messages, chat_template=template, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    return list(out["input_ids"]), list(out["assistant_masks"])


@pytest.mark.parametrize("family", TEMPLATES)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("tagged", [False, True], ids=["as shipped", "with generation tags"])
def test_masks_match_transformers(tokenizer_parts, family, conversation, tagged):
    plain, with_tags = TEMPLATES[family]
    ids, mask = reference_mask(tokenizer_parts, with_tags, CONVERSATIONS[conversation])
    assert sum(mask) > 0
    tok = HFTokenizer(tokenizer_parts[0], tokenizer_parts[1], with_tags if tagged else plain)
    seq = encode_record(CONVERSATIONS[conversation], "chat", tok, "test")
    assert seq.input_ids == ids
    ours = [int(label != IGNORE) for label in seq.labels]
    assert ours == mask, [(tok.decode([i]), a, b) for i, a, b in zip(ids, ours, mask) if a != b]


def test_records_with_nothing_to_learn_are_counted_not_fatal(tokenizer_parts):
    tok = HFTokenizer(tokenizer_parts[0], tokenizer_parts[1], TEMPLATES["smollm2"][0])
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    rows = [good, {"conversations": []}, {"conversations": [{"from": "narrator", "value": "Once"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}, long, good]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    sequences, summary = load_dataset("d.jsonl", text, "auto", tok, 64, 49152)
    assert len(sequences) == summary.records == 2 and summary.read == 6
    assert summary.skipped == {"with an empty conversation": 1, "with an unknown speaker": 1, "with no trained tokens": 1}
    assert summary.dropped == 1 and summary.truncated == 0
    assert summary.notes() == ["3 records skipped (1 with an empty conversation, 1 with an unknown speaker, "
                               "1 with no trained tokens)", "1 of 3 truncated, 1 with no trained tokens left, dropped"]
    with pytest.raises(DatasetError, match="no token is trained on.*3 records skipped"):
        load_dataset("d.jsonl", "".join(json.dumps(r) + "\n" for r in rows[1:4]), "auto", tok, 64, 49152)


def test_openai_content_parts_null_content_and_a_byte_order_mark(tokenizer_parts):
    """Content as OpenAI's list of text parts trains as the joined string; null content (a turn that
    only calls tools) as empty; a turn with an image is skipped and counted; a byte-order mark
    before the first record (Notepad, Excel) is not part of it, in JSONL and in a CSV's header."""
    from loralab.data.formats import read_records

    tok = HFTokenizer(tokenizer_parts[0], tokenizer_parts[1], TEMPLATES["qwen2"][0])
    plain = {"messages": [{"role": "user", "content": "Two parts"}, {"role": "assistant", "content": "Joined."}]}
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Two "}, {"type": "text", "text": "parts"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Joined."}]}]}
    want = encode_record(plain, "chat", tok, "test")
    got = encode_record(parts, "chat", tok, "test")
    assert (got.input_ids, got.labels) == (want.input_ids, want.labels)
    tool_call = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None},
                              {"role": "assistant", "content": "done"}]}
    assert "None" not in tok.decode(encode_record(tool_call, "chat", tok, "test").input_ids)
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "A cat."}]}
    _, summary = load_dataset("d.jsonl", "".join(json.dumps(r) + "\n" for r in (plain, image)), "auto", tok, 64, 49152)
    assert summary.skipped == {"with a part of type 'image_url' (text models only)": 1}
    with pytest.raises(DatasetError, match="d.jsonl record 1: a message's content is a string or a list of text parts"):
        load_dataset("d.jsonl", json.dumps({"messages": [{"role": "user", "content": {"a": 1}}]}), "auto", tok, 64, 49152)

    mixed = {"conversations": plain["messages"]}  # (dumps put role/content lists under ShareGPT's key)
    again = encode_record(mixed, "chat", tok, "test")
    assert (again.input_ids, again.labels) == (want.input_ids, want.labels)
    with pytest.raises(DatasetError, match="each message needs 'role' and 'content' \\(or ShareGPT's"):
        encode_record({"messages": [{"speaker": "user", "text": "x"}]}, "chat", tok, "test")

    assert read_records("d.jsonl", "\ufeff" + json.dumps(plain) + "\n") == [plain]
    rows = read_records("d.csv", "\ufeffinstruction,input,output\nSay hi,,hello\n")
    assert rows == [{"instruction": "Say hi", "input": "", "output": "hello"}]
    sequences, summary = load_dataset("d.jsonl", json.dumps({"input": "Say hi", "output": "hello"}), "auto", tok, 64, 49152)
    assert summary.format == "alpaca"
    assert tok.decode(sequences[0].input_ids).count("Say hi") == 1 and "\n\nSay hi" not in tok.decode(sequences[0].input_ids)
