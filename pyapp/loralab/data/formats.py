"""Datasets: reading records from .jsonl/.json/.txt/.csv, detecting their format, and turning
them into token sequences with loss masks.

Formats: tokens {"input_ids", "labels"?}; text {"text"} (or plain text, one document per
blank-line-separated block); completion {"prompt", "completion"}; chat {"messages": [{"role",
"content"}]} (content a string or a list of text parts) or ShareGPT {"conversations": [{"from",
"value"}]}; alpaca {"instruction"?, "input"?, "output"} (one of the first two at least). By
default the loss covers completions and assistant turns only (TRL's convention, the end-of-turn
token included); `train_on_prompt` takes it on every token.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..checks import loads
from ..config import DATASET_FORMATS
from ..errors import UserError, one_line
from .batches import IGNORE, Sequence

FORMATS = DATASET_FORMATS
# ShareGPT speaker names seen in real dumps, by the chat role they stand for.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "system": "system", "tool": "tool", "function": "tool", "observation": "tool",
    **{name: "assistant" for name in ("gpt", "chatgpt", "bard", "bing", "claude", "gemini", "assistant", "model",
                                      "bot", "ai", "llm")},
}
TURN_MARK = "LoRALabTurnMark7f3a"  # stands in for an assistant turn's text to find where it starts


class DatasetError(UserError):
    """A dataset that cannot be used; the message names the file and, where it helps, the line."""


class Tokenizer(Protocol):
    eos_id: int | None
    pad_id: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False) -> str: ...


class SkipRecord(Exception):
    """A record with nothing to train on by its nature (an empty conversation, no speaker we
    know): counted and left out, not fatal. The message is the reason, as counted."""


@dataclass
class DatasetSummary:
    format: str
    detected: bool
    records: int  # records used
    tokens: int
    trained_tokens: int
    truncated: int  # of the records used, those longer than the sequence
    read: int = 0  # records in the file
    skipped: dict = field(default_factory=dict)  # {reason: count} of records left out as they are
    dropped: int = 0  # records truncated to no trained token (records with none at all are skipped)

    def as_dict(self) -> dict:
        return dict(self.__dict__, trained_fraction=self.trained_tokens / max(1, self.tokens), notes=self.notes(),
                    cuts_most=self.cuts_most())

    def notes(self) -> list[str]:
        """What a person should know about how the file was used, one sentence each."""
        out = []
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items(), key=lambda x: -x[1]))
            out.append(f"{sum(self.skipped.values()):,} records skipped ({reasons})")
        if self.truncated or self.dropped:
            considered = self.records + self.dropped
            out.append(f"{self.truncated + self.dropped:,} of {considered:,} truncated"
                       + (f", {self.dropped:,} with no trained tokens left, dropped" if self.dropped else ""))
        return out

    def cuts_most(self) -> bool:
        """Whether the sequence length cuts most examples (the plan warns)."""
        return self.truncated + self.dropped > (self.records + self.dropped) / 2


def read_records(name: str, text: str) -> list[dict]:
    """Records of a file by its extension; errors name the file and line. A byte-order mark
    (Windows editors and spreadsheets write one) is not part of the first record."""
    text = text.removeprefix("\ufeff")
    lower = name.lower()
    if lower.endswith(".jsonl"):
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            value = loads(line, f"{name} line {number}", DatasetError)
            if not isinstance(value, dict):
                raise DatasetError(f"{name} line {number}: expected a JSON object, found {type(value).__name__}")
            records.append(value)
    elif lower.endswith(".json"):
        value = loads(text, name, DatasetError)
        if isinstance(value, dict):
            value = next((v for v in value.values() if isinstance(v, list)), [value])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise DatasetError(f"{name}: expected a JSON array of objects")
        records = value
    elif lower.endswith(".csv"):
        records = _csv_records(name, text)
    elif lower.endswith(".txt") or "." not in lower.rsplit("/", 1)[-1]:
        blocks = [b.strip() for b in text.replace("\r\n", "\n").split("\n\n")]
        records = [{"text": b} for b in blocks if b]
    else:
        raise DatasetError(f"{name}: unsupported file type; use .jsonl, .json, .csv or .txt")
    if not records:
        raise DatasetError(f"{name}: the dataset is empty")
    return records


def _csv_records(name: str, text: str) -> list[dict]:
    """Rows of a CSV file with a header line. A field may be as long as the file (the csv
    module's own limit is 131,072 characters); rows with too many fields are refused."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.DictReader(io.StringIO(text))
    records = []
    try:
        for row in reader:
            if None in row:
                raise DatasetError(f"{name} line {reader.line_num}: more fields than the header names")
            records.append(dict(row))
    except csv.Error as exc:
        raise DatasetError(f"{name} line {reader.line_num}: not valid CSV ({exc})") from None
    return records


def detect_format(record: dict) -> str | None:
    keys = set(record)
    if "input_ids" in keys:
        return "tokens"
    if "messages" in keys or "conversations" in keys:
        return "chat"
    if {"prompt", "completion"} <= keys:
        return "completion"
    if {"instruction", "output"} <= keys or {"input", "output"} <= keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    return None


def _messages(record: dict, where: str) -> list[dict]:
    """The conversation as chat messages. Each message is {"role", "content"} or ShareGPT's
    {"from", "value"}, whichever list holds it (dumps mix them: "conversations" of role/content)."""
    raw = record["messages"] if "messages" in record else record["conversations"]
    if raw == [] or raw is None:
        raise SkipRecord("with an empty conversation")
    if not isinstance(raw, list):
        raise DatasetError(f"{where}: the conversation must be a list of messages")
    out = []
    for m in raw:
        sharegpt = isinstance(m, dict) and "from" in m and "role" not in m
        role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
        if not isinstance(m, dict) or role_key not in m or content_key not in m:
            raise DatasetError(f"{where}: each message needs 'role' and 'content' (or ShareGPT's 'from' and 'value')")
        role = SHAREGPT_ROLES.get(str(m[role_key]).lower()) if sharegpt else str(m[role_key])
        if role is None:
            raise SkipRecord("with an unknown speaker")
        out.append({"role": role, "content": _content(m[content_key], where)})
    return out


def _content(value, where: str) -> str:
    """A message's text: a string; OpenAI's list of parts ([{"type": "text", "text": …}], joined);
    null (an assistant turn that only calls tools) as empty. Images and other media are for
    models this engine does not train: such records are skipped and counted."""
    if value is None:
        return ""
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("type"), str):
                raise SkipRecord(f"with a part of type {part['type'][:40]!r} (text models only)")
            else:
                raise DatasetError(f"{where}: a message's content is a string or a list of text parts")
        return "".join(texts)
    if isinstance(value, dict):
        raise DatasetError(f"{where}: a message's content is a string or a list of text parts")
    return str(value)


def _need(tok: Tokenizer | None, fmt: str, where: str) -> Tokenizer:
    if tok is None:
        raise DatasetError(f"{where}: the {fmt} format needs the model's tokenizer (tokenizer.json)")
    return tok


def _with_eos(ids: list[int], tok: Tokenizer) -> list[int]:
    return ids + [tok.eos_id] if tok.eos_id is not None and (not ids or ids[-1] != tok.eos_id) else ids


def cut_text(text: str, max_chars: int | None) -> str:
    """`text` cut to at most `max_chars` characters, before a whitespace character in the last
    half of that window when there is one (so no word is split), for tokenizing long examples
    in bounded time: the caller picks max_chars so that what is cut lies past the sequence length."""
    if max_chars is None or len(text) <= max_chars:
        return text
    space = max(text.rfind(c, max_chars // 2, max_chars) for c in " \n\t")
    return text[: space if space > 0 else max_chars]


def encode_record(record: dict, fmt: str, tok: Tokenizer | None, where: str, train_on_prompt: bool = False,
                  max_chars: int | None = None) -> Sequence:
    if fmt == "tokens":
        ids = record.get("input_ids")
        labels = record.get("labels", ids)
        if not isinstance(ids, list) or not ids or not all(type(i) is int and i >= 0 for i in ids):
            raise DatasetError(f"{where}: input_ids must be a non-empty list of non-negative integers")
        if not isinstance(labels, list) or len(labels) != len(ids) or not all(type(i) is int and (i >= 0 or i == IGNORE) for i in labels):
            raise DatasetError(f"{where}: labels must be a list as long as input_ids of token ids or {IGNORE}")
        return Sequence(list(ids), list(labels))
    if fmt == "text":
        if not isinstance(record.get("text"), str):
            raise DatasetError(f"{where}: 'text' must be a string")
        ids = _with_eos(_need(tok, fmt, where).encode(cut_text(record["text"], max_chars)), tok)
        return Sequence(ids, list(ids))
    if fmt in ("completion", "alpaca"):
        if fmt == "alpaca":
            if "output" not in record:
                raise DatasetError(f"{where}: an alpaca record needs 'output' and an 'instruction' or 'input'")
            _need(tok, fmt, where)
            instruction, extra = str(record.get("instruction") or ""), str(record.get("input") or "")
            user = "\n\n".join(part for part in (instruction, extra) if part)
            try:
                chat = [{"role": "user", "content": user}, {"role": "assistant", "content": str(record["output"])}]
                return _encode_chat(chat, tok, where, train_on_prompt, max_chars)
            except DatasetError:
                prompt, completion = f"### Instruction:\n{user}\n\n### Response:\n", str(record["output"])
        else:
            prompt, completion = record.get("prompt"), record.get("completion")
            if not isinstance(prompt, str) or not isinstance(completion, str):
                raise DatasetError(f"{where}: 'prompt' and 'completion' must be strings")
        p = _need(tok, fmt, where).encode(cut_text(prompt, max_chars))
        c = _with_eos(tok.encode(cut_text(completion, max_chars), add_special_tokens=False), tok)
        return Sequence(p + c, (p if train_on_prompt else [IGNORE] * len(p)) + c)
    if fmt == "chat":
        messages = _messages(record, where)
        return _encode_chat(messages, _need(tok, fmt, where), where, train_on_prompt, max_chars)
    raise DatasetError(f"{where}: unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _render(tok: Tokenizer, messages: list[dict], where: str, add_generation_prompt: bool = False) -> str:
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
    except UserError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    except Exception as exc:  # the template's own failure (raise_exception, a bad field) on this record
        raise DatasetError(f"{where}: the chat template failed ({one_line(exc)})") from None


def _encode_chat(messages: list[dict], tok: Tokenizer, where: str, train_on_prompt: bool,
                 max_chars: int | None = None) -> Sequence:
    """Render with the model's template; the loss covers each assistant turn's characters, found by
    rendering the conversation up to that turn with and without it."""
    try:
        tracked = tok.assistant_spans(messages) if hasattr(tok, "assistant_spans") else None
    except UserError as exc:
        raise DatasetError(f"{where}: {exc}") from None
    if tracked is not None:  # the template marks the assistant's text ({% generation %}), as transformers reads it
        full, spans = tracked
        return _labelled(tok, full, spans, train_on_prompt, max_chars)
    full = _render(tok, messages, where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = _render(tok, messages[: i + 1], where)
        if not full.startswith(upto):
            continue
        before = _render(tok, messages[:i], where, add_generation_prompt=True)
        if upto.startswith(before):
            spans.append((len(before), len(upto)))
            continue
        # The conversation so far renders differently without this turn (a default system prompt
        # that an empty conversation does not get): find where the turn's text starts instead.
        probe = _render(tok, messages[:i] + [{**m, "content": TURN_MARK}], where)
        start = probe.find(TURN_MARK)
        if start >= 0 and upto.startswith(probe[:start]):
            spans.append((start, len(upto)))
    return _labelled(tok, full, spans, train_on_prompt, max_chars)


def _labelled(tok: Tokenizer, text: str, spans: list[tuple[int, int]], train_on_prompt: bool,
              max_chars: int | None) -> Sequence:
    """Tokens of `text`, trained where a token overlaps one of the character spans (the rule of
    transformers' return_assistant_tokens_mask), or everywhere with train_on_prompt."""
    ids, offsets = tok.encode_with_offsets(cut_text(text, max_chars))
    if train_on_prompt:
        return Sequence(ids, list(ids))
    labels = [i if any(start < b and end > a for a, b in spans) else IGNORE for i, (start, end) in zip(ids, offsets)]
    return Sequence(ids, labels)


def load_dataset(name: str, text: str, fmt: str = "auto", tokenizer: Tokenizer | None = None, seq_len: int | None = None,
                 vocab_size: int | None = None, train_on_prompt: bool = False,
                 on_progress: Callable[[float], None] | None = None) -> tuple[list[Sequence], DatasetSummary]:
    """The records of a dataset file tokenized for training, and their summary; on_progress gets
    the fraction of records done (every 1%)."""
    records = read_records(name, text)
    detected = fmt == "auto"
    if detected:
        fmt = detect_format(records[0]) or ""
        if not fmt:
            raise DatasetError(f"{name}: cannot tell the format of the first record (keys {sorted(records[0])}); "
                               f"pass a format: {', '.join(FORMATS)}")
    sequences, tokens, trained, truncated, dropped, skipped = [], 0, 0, 0, 0, {}
    # Examples longer than the sequence are cut before tokenizing: no token spans more than
    # max_token_chars characters, so twice (seq_len + 1) of them leaves every kept token intact.
    max_chars = 2 * (seq_len + 1) * getattr(tokenizer, "max_token_chars", 1024) if seq_len else None
    every = max(1, len(records) // 100)
    for number, record in enumerate(records, 1):
        if on_progress is not None and number % every == 0:
            on_progress(number / len(records))
        where = f"{name} record {number}"
        try:
            seq = encode_record(record, fmt, tokenizer, where, train_on_prompt, max_chars)
        except SkipRecord as reason:
            skipped[str(reason)] = skipped.get(str(reason), 0) + 1
            continue
        if vocab_size is not None:
            bad = next((i for i in seq.input_ids if i >= vocab_size), None)
            if bad is not None:
                raise DatasetError(f"{where}: token id {bad} is outside the model's vocabulary ({vocab_size})")
            bad = next((i for i in seq.labels if i != IGNORE and not 0 <= i < vocab_size), None)
            if bad is not None:
                raise DatasetError(f"{where}: label {bad} is outside the model's vocabulary ({vocab_size}); "
                                   f"use {IGNORE} for tokens without loss")
        n = min(len(seq.input_ids), seq_len or len(seq.input_ids))
        learned = sum(1 for label in seq.labels[1:n] if label != IGNORE)
        if learned == 0:  # nothing to learn from (in what fits): a step on it would teach nothing
            if seq_len is not None and len(seq.input_ids) > seq_len:
                dropped += 1
            else:
                skipped["with no trained tokens"] = skipped.get("with no trained tokens", 0) + 1
            continue
        if seq_len is not None and len(seq.input_ids) > seq_len:
            truncated += 1
        tokens += n
        trained += learned
        sequences.append(seq)
    summary = DatasetSummary(fmt, detected, len(sequences), tokens, trained, truncated, len(records), skipped, dropped)
    if trained == 0:
        notes = "; ".join(summary.notes())
        raise DatasetError(f"{name}: no token is trained on (every label is masked{'; ' + notes if notes else ''})")
    return sequences, summary
