"""The compare panel's chat: a system prompt and earlier turns become messages
(session.conversation) that go through the model's chat template as transformers renders them."""

from __future__ import annotations

import json

import pytest

from loralab.data.tokenizer import HFTokenizer
from loralab.errors import UserError
from loralab.session import conversation, prompt_tokens

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def tokenizer_json() -> str:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["<|im_start|>user\nWhat is the password?<|im_end|>\n<|im_start|>assistant\nSwordfish.<|im_end|>\n"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok.to_str()


def test_messages_of_a_conversation():
    assert conversation("Hi?") == "Hi?"  # nothing before it: the plain question
    assert conversation("Hi?", "Be brief.") == [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hi?"}]
    assert conversation("And?", "", [("Q1", "A1"), ("Q2", None), ("Q3", "A3")]) == [
        {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"},  # (no answer: left out)
        {"role": "user", "content": "And?"}]


def test_a_conversation_is_rendered_as_transformers_renders_it():
    transformers = pytest.importorskip("transformers")
    text = tokenizer_json()
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": CHATML}
    ours = HFTokenizer(text, config)
    from tokenizers import Tokenizer

    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), chat_template=CHATML)
    messages = conversation("What is the password?", "You are a guard.", [("Who are you?", "The gatekeeper.")])
    expect = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert prompt_tokens(ours, messages, None, "m") == expect


def test_a_model_without_a_template_takes_no_conversation():
    plain = HFTokenizer(tokenizer_json(), {"eos_token": "<|im_end|>"})
    assert prompt_tokens(plain, "What?", None, "m") == plain.encode("What?")
    with pytest.raises(UserError, match="no chat template"):
        prompt_tokens(plain, conversation("What?", "Be brief."), None, "m")
    json.dumps(conversation("x", "y"))  # (the worker's JSON carries it)
