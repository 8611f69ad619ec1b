"""Which base model an adapter belongs to, as PEFT and transformers name it.

`adapter_config.json`'s `base_model_name_or_path` is what `AutoPeftModelForCausalLM` loads, so it
must be something transformers can open: the hub id for the built-in default and for hub repos
(with the revision fetched), the folder for a local Hugging Face folder, and for a GGUF file the
hub id its `general.*` metadata names (llama.cpp's converter records where the weights came
from), else the file itself.
"""

from __future__ import annotations

import os
import re

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the built-in GGUF was converted from
HUB_URL = re.compile(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([A-Za-z0-9][\w.-]*/[\w.-]+?)/?$")
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def gguf_hub_id(metadata: dict) -> str | None:
    """The hub id of the model a GGUF file was converted from, if its metadata says."""
    repo = metadata.get("general.source.huggingface.repository")
    if isinstance(repo, str) and REPO_ID.match(repo) and ".." not in repo:
        return repo
    for key in ("general.source.url", "general.source.repo_url", "general.repo_url", "general.url"):
        url = metadata.get(key)
        match = HUB_URL.match(url) if isinstance(url, str) else None
        if match and ".." not in match.group(1):
            return match.group(1)
    return None


def base_model_reference(kind: str, spec: str, gguf_metadata: dict | None = None) -> tuple[str, str | None]:
    """(base_model_name_or_path, revision or None) for a model opened as `kind`: "default",
    "repo" (spec = the repo id), "folder" (spec = its path), "gguf" (spec = its path or name)."""
    if kind == "default":
        return DEFAULT_MODEL_ID, None
    if kind == "repo":
        return spec, "main"  # hub files are fetched from resolve/main
    if kind == "gguf":
        hub_id = gguf_hub_id(gguf_metadata or {})
        if hub_id:
            return hub_id, None
    return (os.path.abspath(spec) if os.path.exists(spec) else spec), None
