"""A Hugging Face model folder whose files are fetched by URL: a static host, a hub's
resolve/main/, or files a person dropped (blob: URLs in the browser).

The fetch is handed in (formats.http.fetch on CPython; the browser's, with its cache, from
loralab.browser.fetch), so this reads headers and ranges the same way in both runtimes.
"""

from __future__ import annotations

from ..checks import loads, weight_map_shards
from ..config import ModelConfig, ModelConfigError
from ..formats.http import Body, FetchError
from ..formats.http import fetch as http_fetch
from ..formats.safetensors import TensorInfo, header_length, parse_header


class RemoteFolder:
    """A Hugging Face model folder whose files are fetched by URL: under `base_url` (a static
    host, a hub's resolve/main/), or from a {file name: URL} map (files a person dropped, as
    blob: URLs)."""

    def __init__(self, base_url: str, files: dict[str, str] | None = None, name: str | None = None, fetch=http_fetch):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._fetch = fetch
        self.files = files
        self.name = name or self.base_url.rstrip("/").rsplit("/", 1)[-1]
        self.config: ModelConfig | None = None
        self._infos: dict[str, TensorInfo] = {}
        self._bodies: dict[str, Body] = {}

    def url(self, file: str) -> str | None:
        if self.files is not None:
            return self.files.get(file)
        return self.base_url + file

    async def fetch_file(self, file: str, missing_ok: bool = False) -> Body | None:
        url = self.url(file)
        if url is None:
            if missing_ok:
                return None
            raise FetchError(f"{self.name}: {file} is missing")
        return await self._fetch(url, missing_ok=missing_ok, file=file)

    async def read_file(self, name: str) -> bytes | None:
        """One of the folder's small files (tokenizer.json, …) by its plain name, or None."""
        body = await self.fetch_file(name, missing_ok=True)
        return None if body is None else body.bytes()

    @classmethod
    async def open(cls, base_url: str, files: dict[str, str] | None = None, name: str | None = None,
                   fetch=http_fetch) -> "RemoteFolder":
        self = cls(base_url, files, name, fetch)
        cfg = await self.fetch_file("config.json", missing_ok=True)
        if cfg is None:
            raise ModelConfigError(f"{self.name}: config.json is missing")
        self.config_dict = loads(cfg.bytes(), f"{self.name}/config.json", ModelConfigError)
        self.config = ModelConfig.from_dict(self.config_dict, f"{self.name}/config.json")
        index = await self.fetch_file("model.safetensors.index.json", missing_ok=True)
        where = f"{self.name}/model.safetensors.index.json"
        shards = weight_map_shards(loads(index.bytes(), where, FetchError), where, FetchError) if index else ["model.safetensors"]
        for shard in shards:
            body = await self.fetch_file(shard)
            n = header_length(body.bytes(0, min(8, body.size)), body.size, shard)
            for name, info in parse_header(body.bytes(0, 8 + n), body.size, shard).tensors.items():
                if name in self._infos:
                    raise FetchError(f"{self.name}: tensor {name} is in two shards")
                self._infos[name] = info
                self._bodies[name] = body
        self.config.check_layers(self._infos, f"{self.name}/config.json")
        return self

    def tensors(self) -> dict[str, TensorInfo]:
        return self._infos

    async def read(self, info: TensorInfo):
        return self._bodies[info.name].view(info.start, info.end)
