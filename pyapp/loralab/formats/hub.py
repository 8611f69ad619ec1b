"""Hugging Face Hub repo ids: files fetched from {endpoint}/{repo}/resolve/main/{file} into a
local cache, then read as a model folder (CPython; the browser reads repos through model.remote with its own fetch).
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse

from ..checks import loads, path_inside, weight_map_shards
from ..errors import UserError
from .http import open_url

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SAFE_HOST = re.compile(r"[^A-Za-z0-9.-]")
REQUIRED = ("config.json",)
OPTIONAL = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
            "special_tokens_map.json")


class HubError(UserError):
    """A repo that cannot be fetched; the message names the URL and the problem."""


def is_repo_id(spec: str) -> bool:
    return bool(REPO_ID.match(spec)) and ".." not in spec and not os.path.exists(spec)


def cache_dir() -> str:
    return os.environ.get("LORALAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "loralab")


def file_url(endpoint: str, repo: str, name: str) -> str:
    return f"{endpoint.rstrip('/')}/{repo}/resolve/main/{urllib.parse.quote(name)}"


def _download(url: str, dest: str, missing_ok: bool) -> bool:
    """Stream url to dest (via a temporary file) with progress on stderr; False if 404 and missing_ok."""
    response = open_url(url, missing_ok, HubError)
    if response is None:
        return False
    total = int(response.headers.get("Content-Length") or 0)
    done = 0
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with response, open(dest + ".part", "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            if total > (8 << 20):
                print(f"\rloralab: {os.path.basename(dest)} {done / total:5.1%}", end="", file=sys.stderr)
    if total > (8 << 20):
        print(file=sys.stderr)
    os.replace(dest + ".part", dest)
    return True


def fetch_repo(repo: str, endpoint: str = DEFAULT_HUB_ENDPOINT) -> str:
    """The local folder holding `repo`'s model files, downloading what the cache lacks."""
    if not REPO_ID.match(repo) or ".." in repo:
        raise HubError(f"{repo!r} is not a repo id (ORG/NAME)")
    host = SAFE_HOST.sub("_", urllib.parse.urlparse(endpoint).netloc).strip(".") or "local"
    folder = os.path.join(cache_dir(), "hub", host, *repo.split("/"))

    def get(name: str, missing_ok: bool = False) -> bool:
        # Shard names come from the repo: never trusted as paths (checks.path_inside).
        dest = path_inside(folder, name, f"{repo}: model.safetensors.index.json", HubError)
        return os.path.exists(dest) or _download(file_url(endpoint, repo, name), dest, missing_ok)

    for name in REQUIRED:
        get(name)
    if get("model.safetensors.index.json", missing_ok=True):
        with open(os.path.join(folder, "model.safetensors.index.json"), "rb") as f:
            index = loads(f.read(), f"{repo}/model.safetensors.index.json", HubError)
        shards = weight_map_shards(index, f"{repo}/model.safetensors.index.json", HubError)
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        get(shard)
    for name in OPTIONAL:
        get(name, missing_ok=True)
    return folder
