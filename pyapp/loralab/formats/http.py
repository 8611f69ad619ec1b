"""Files fetched over HTTP(S) on CPython (urllib): the `fetch` that model sources take by default.

A fetch is `async fetch(url, missing_ok=False, file=None) -> Body | None` (None for a 404 with
missing_ok; `file` names the model file, for fetches that keep a cache). The browser's fetch,
whose bodies stay JS ArrayBuffers, lives in loralab.browser.fetch and has the same shape.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from ..errors import UserError


class FetchError(UserError):
    """A file that could not be fetched; the message names the URL and the problem."""


class Body:
    """A fetched file held as bytes: its size, a range as bytes, a range as a buffer view."""

    def __init__(self, url: str, data: bytes):
        self.url, self._data, self.size = url, data, len(data)

    def bytes(self, start: int = 0, end: int | None = None) -> bytes:
        return self._data[start : self.size if end is None else end]

    def view(self, start: int, end: int):
        """What device.write_buffer takes, without a copy."""
        return memoryview(self._data)[start:end]

    def text(self) -> str:
        return self.bytes().decode("utf-8")


def open_url(url: str, missing_ok: bool = False, error: type[UserError] = FetchError):
    """The response for `url` (a context manager), None for a 404 with missing_ok; any other
    failure is `error` naming the URL."""
    try:
        return urllib.request.urlopen(url, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 404 and missing_ok:
            return None
        raise error(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise error(f"{url}: could not be fetched ({exc.reason})") from None


async def fetch(url: str, missing_ok: bool = False, file: str | None = None) -> Body | None:
    def get() -> bytes | None:
        response = open_url(url, missing_ok)
        if response is None:
            return None
        with response:
            return response.read()

    data = await asyncio.get_running_loop().run_in_executor(None, get)
    return None if data is None else Body(url, data)
