"""The browser's fetch for model files: `make_fetch(cache)` gives the `fetch` that model sources
take (formats.http describes its shape), backed by `js.fetch` and the engine's data cache.

Bodies stay JS ArrayBuffers, so weights never pass through the wasm heap: `view` hands a
Uint8Array over a range straight to the GPU upload, `bytes` copies a range (headers) to Python.
A model file (`file` names it) comes from the cache when the item being loaded has it there, and
what is fetched goes into that cache (see browser.datacache).
"""

from __future__ import annotations

import js  # type: ignore[import-not-found]

from ..formats.http import FetchError


class JsBody:
    """A fetched file held as a JS ArrayBuffer."""

    def __init__(self, url: str, data):
        self.url, self._data = url, data
        self.size = int(data.byteLength)

    def bytes(self, start: int = 0, end: int | None = None) -> bytes:
        end = self.size if end is None else end
        return js.Uint8Array.new(self._data, start, end - start).to_bytes()

    def view(self, start: int, end: int):
        return js.Uint8Array.new(self._data, start, end - start)

    def text(self) -> str:
        return self.bytes().decode("utf-8")


def make_fetch(cache):
    """A fetch that reads through `cache` (a browser.datacache.DataCache) while an item loads."""

    async def fetch(url: str, missing_ok: bool = False, file: str | None = None) -> JsBody | None:
        use_cache = file is not None and cache.item is not None
        if use_cache:
            found, data = await cache.lookup(url, file)
            if found:
                return None if data is None else JsBody(url, data)
        try:
            response = await js.fetch(url)
        except Exception as exc:  # a JsException: the network, CORS, a revoked blob: URL
            if not js.navigator.onLine:
                raise FetchError(f"{url}: this browser is offline and the file is not in its cache; connect once "
                                 "to fetch it, or load a model kept in this browser (Kept in this browser)") from None
            reason = str(exc).removeprefix("TypeError: ").removeprefix("Error: ")
            raise FetchError(f"{url}: could not be reached ({reason}); check the address, the hub setting "
                             "and the connection") from None
        if response.status == 404 and missing_ok:
            if use_cache:
                await cache.store(url, file, None)
            return None
        if not response.ok:
            raise FetchError(f"{url}: HTTP {response.status}")
        data = await response.arrayBuffer()
        if use_cache:
            await cache.store(url, file, data)
        return JsBody(url, data)

    return fetch
