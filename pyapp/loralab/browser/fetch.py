"""The browser's fetch for model files: `make_fetch(cache)` gives the `fetch` that model sources
take (formats.http describes its shape), backed by `js.fetch` and the engine's data cache.

Bodies stay JS ArrayBuffers, so weights never pass through the wasm heap: `view` hands a
Uint8Array over a range straight to the GPU upload, `bytes` copies a range (headers) to Python.
A model file (`file` names it) comes from the cache when the item being loaded has it there, and
what is fetched goes into that cache (see browser.datacache).
"""

from __future__ import annotations

import js  # type: ignore[import-not-found]
from pyodide.ffi import to_js  # type: ignore[import-not-found]

from ..errors import Cancelled, one_line
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


def make_fetch(cache, on_bytes=None, signal=None):
    """A fetch that reads through `cache` (a browser.datacache.DataCache) while an item loads.
    `on_bytes(name, done, total)` follows a model file's body as it arrives; `signal()` is the
    AbortSignal of the operation the person may cancel now (or None): it stops the download."""

    async def fetch(url: str, missing_ok: bool = False, file: str | None = None) -> JsBody | None:
        use_cache = file is not None and cache.item is not None
        if use_cache:
            found, data = await cache.lookup(url, file)
            if found:
                return None if data is None else JsBody(url, data)
        abort = signal() if signal is not None else None
        try:
            response = await (js.fetch(url) if abort is None else
                              js.fetch(url, to_js({"signal": abort}, dict_converter=js.Object.fromEntries)))
        except Exception as exc:  # a JsException: the network, CORS, a revoked blob: URL
            if abort is not None and abort.aborted:
                raise Cancelled(f"{file or url}: the download was cancelled") from None
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
        try:
            data = await read_body(response, file or url.rsplit("/", 1)[-1],
                                   on_bytes if file is not None else None)
        except Exception as exc:
            if abort is not None and abort.aborted:
                raise Cancelled(f"{file or url}: the download was cancelled") from None
            raise FetchError(f"{url}: the download broke off ({one_line(exc)})") from None
        if use_cache:
            await cache.store(url, file, data)
        return JsBody(url, data)

    return fetch


async def read_body(response, name: str, on_bytes=None):
    """A response's body as an ArrayBuffer. With `on_bytes` and a known length it is read chunk
    by chunk into one JS buffer (the bytes never enter the wasm heap), reporting as it goes."""
    total = int(response.headers.get("content-length") or 0)
    if on_bytes is None or not total or response.body is None or response.headers.get("content-encoding"):
        return await response.arrayBuffer()  # (a compressed body's length is not its size)
    out, done = js.Uint8Array.new(total), 0
    reader = response.body.getReader()
    on_bytes(name, 0, total)
    while True:
        chunk = await reader.read()
        if chunk.done:
            break
        if done + chunk.value.length > out.length:  # a server that said less than it sent
            bigger = js.Uint8Array.new(max(2 * out.length, done + chunk.value.length))
            bigger.set(out)
            out = bigger
        out.set(chunk.value, done)
        done += chunk.value.length
        on_bytes(name, done, max(total, done))
    return out.buffer if done == out.length else out.slice(0, done).buffer

