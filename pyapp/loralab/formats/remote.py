"""Model files fetched over HTTP(S): a Hugging Face folder served by any static host or hub.

`fetch_bytes` uses the browser's fetch in Pyodide (the body stays a JS ArrayBuffer, so weights
never pass through the wasm heap) and urllib on CPython. Browser-only imports are guarded.
"""

from __future__ import annotations

import asyncio
import sys

from ..checks import loads, weight_map_shards
from ..errors import UserError
from ..model.config import ModelConfig, ModelConfigError
from .safetensors import TensorInfo, header_length, parse_header

IN_BROWSER = sys.platform == "emscripten"


class FetchError(UserError):
    pass


class Body:
    """A fetched file: its size, Python bytes of a range, and (browser) a JS view of a range."""

    def __init__(self, url: str, data):
        self.url, self._data = url, data
        self.size = int(data.byteLength) if IN_BROWSER else len(data)

    def bytes(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.size if end is None else end
        if IN_BROWSER:
            import js  # type: ignore[import-not-found]

            return js.Uint8Array.new(self._data, start, end - start).to_bytes()
        return self._data[start:end]

    def view(self, start: int, end: int):
        """What device.write_buffer takes: a JS Uint8Array over the range (no copy) or bytes."""
        if IN_BROWSER:
            import js  # type: ignore[import-not-found]

            return js.Uint8Array.new(self._data, start, end - start)
        return memoryview(self._data)[start:end]

    def text(self) -> str:
        return self.bytes().decode("utf-8")


async def fetch(url: str, missing_ok: bool = False, file: str | None = None) -> Body | None:
    """The body at `url` (None for a 404 with missing_ok). In the browser, a model file (`file`
    names it) comes from the engine's cache when the model being loaded has it there, and what
    is fetched goes into that cache (see loralab.datacache)."""
    if IN_BROWSER:
        import js  # type: ignore[import-not-found]

        from ..datacache import CACHE_INSTANCE as cache

        use_cache = file is not None and cache.item is not None
        if use_cache:
            found, data = await cache.lookup(url, file)
            if found:
                return None if data is None else Body(url, data)
        try:
            response = await js.fetch(url)
        except Exception as exc:
            offline = "" if js.navigator.onLine else "; this browser is offline and the file is not in its cache"
            raise FetchError(f"{url}: could not be fetched ({exc}{offline})") from None
        if response.status == 404 and missing_ok:
            if use_cache:
                await cache.store(url, file, None)
            return None
        if not response.ok:
            raise FetchError(f"{url}: HTTP {response.status}")
        data = await response.arrayBuffer()
        if use_cache:
            await cache.store(url, file, data)
        return Body(url, data)

    import urllib.error
    import urllib.request

    def get() -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            raise FetchError(f"{url}: HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            raise FetchError(f"{url}: could not be fetched ({exc.reason})") from None

    data = await asyncio.get_running_loop().run_in_executor(None, get)
    return None if data is None else Body(url, data)


class RemoteFolder:
    """A Hugging Face model folder whose files are fetched by URL: under `base_url` (a static
    host, a hub's resolve/main/), or from a {file name: URL} map (files a person dropped, as
    blob: URLs)."""

    def __init__(self, base_url: str, files: dict[str, str] | None = None, name: str | None = None):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
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
        return await fetch(url, missing_ok=missing_ok, file=file)

    @classmethod
    async def open(cls, base_url: str, files: dict[str, str] | None = None, name: str | None = None) -> "RemoteFolder":
        self = cls(base_url, files, name)
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
