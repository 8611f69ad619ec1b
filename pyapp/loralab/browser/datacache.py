"""Models and datasets kept in the browser between visits (engine worker, Pyodide only).

File bodies live in Cache Storage ("loralab-data"), one entry per file: a model fetched by URL
(the built-in default, a hub repo) under its URL, a person's own files and datasets under a
synthetic same-origin key. The index (OPFS `loralab/cache-index.json`) groups the files into
items ({id, kind, name, bytes, last_used, source, files}) for the cache manager, and enforces a
size limit by deleting the least recently used items.

While an item loads (`async with cache.loading(...)`), `browser.fetch`'s fetch asks `lookup`
before the network and hands what it fetched to `store`, so a cached model starts without
downloading or re-reading anything, and a model loaded offline comes from here.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from urllib.parse import quote

import js  # type: ignore[import-not-found]

from ..errors import UsageError
from . import opfs

CACHE = "loralab-data"
INDEX = "loralab/cache-index.json"
DEFAULT_LIMIT = 4 << 30
ABSENT = "absent"  # a file the source did not have (an optional tokenizer file, say)


class DataCache:
    def __init__(self):
        self.index: dict | None = None
        self.item: dict | None = None  # the item being loaded
        self.base = ""  # the site's address (the page's, handed over by the worker's probe)

    async def _index(self) -> dict:
        if self.index is None:
            raw = await opfs.read(INDEX)
            try:
                self.index = json.loads(raw) if raw else {}
            except json.JSONDecodeError:
                self.index = {}
            self.index.setdefault("items", {})
            self.index.setdefault("limit", DEFAULT_LIMIT)
        return self.index

    async def _save(self) -> None:
        await opfs.write(INDEX, json.dumps(self.index).encode())

    @staticmethod
    async def _cache():
        return await js.caches.open(CACHE)

    # -- loading ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def loading(self, item_id: str, kind: str, name: str, source: dict):
        """Fetches inside this block belong to the item; on success it is recorded as used now
        and the size limit is enforced (never by evicting this item)."""
        index = await self._index()
        # A copy: the index changes only when the load succeeds.
        item = dict(index["items"].get(item_id) or {"id": item_id, "kind": kind, "name": name, "files": {}, "bytes": 0})
        item.update(files=dict(item["files"]), source=source, name=name)
        self.item, known = item, set(item["files"])
        try:
            yield item
        except BaseException:  # a model that did not load is not kept
            cache = await self._cache()
            for key in set(item["files"]) - known:
                await cache.delete(key)
            raise
        finally:
            self.item = None
        item["last_used"] = time.time()
        index["items"][item_id] = item
        await self.evict(keep=item_id)
        await self._save()

    def key(self, url: str, file: str | None) -> str:
        if url.startswith(("http://", "https://")) and not self.item["source"].get("files"):
            return url
        name = file or url.rsplit("/", 1)[-1]
        return js.URL.new(f"__loralab-cache__/{quote(self.item['id'], safe='')}/{quote(name, safe='')}",
                          self.base).href

    async def lookup(self, url: str, file: str | None):
        """(True, ArrayBuffer | None) when the loading item has this file (None: known absent);
        (False, None) when it must be fetched."""
        if self.item is None:
            return False, None
        key = self.key(url, file)
        entry = self.item["files"].get(key)
        if entry == ABSENT:
            return True, None
        if entry is None:
            return False, None
        response = await (await self._cache()).match(key)
        if response is None or response is js.undefined:
            return False, None  # evicted by the browser: fetch again
        return True, await response.arrayBuffer()

    async def store(self, url: str, file: str | None, data) -> None:
        """Keep a fetched body (an ArrayBuffer), or note that the file is absent (data None)."""
        if self.item is None:
            return
        key = self.key(url, file)
        if data is None:
            self.item["files"][key] = ABSENT
            return
        try:
            await (await self._cache()).put(key, js.Response.new(data))
        except Exception as exc:  # quota: the model still loads, it just is not kept
            js.console.warn(f"LoRA Lab: could not keep {file or url} in the browser cache: {exc}")
            return
        before = self.item["files"].get(key)
        self.item["bytes"] += int(data.byteLength) - (before if isinstance(before, int) else 0)
        self.item["files"][key] = int(data.byteLength)

    # -- the manager -----------------------------------------------------------------------------
    async def items(self) -> list[dict]:
        index = await self._index()
        return sorted(({k: v for k, v in item.items() if k != "files"} for item in index["items"].values()),
                      key=lambda item: -item.get("last_used", 0))

    async def get(self, item_id: str) -> dict | None:
        return (await self._index())["items"].get(item_id)

    async def limit(self) -> int:
        return int((await self._index())["limit"])

    async def set_limit(self, limit: int, keep: str | None = None) -> list[str]:
        index = await self._index()
        index["limit"] = max(0, int(limit))
        evicted = await self.evict(keep)
        await self._save()
        return evicted

    async def delete(self, item_id: str) -> int:
        index = await self._index()
        item = index["items"].pop(item_id, None)
        if item is None:
            raise UsageError(f"{item_id}: no such item in the browser cache")
        await self._drop_files(item)
        await self._save()
        return int(item["bytes"])

    async def evict(self, keep: str | None = None) -> list[str]:
        """Delete least recently used items until the total fits the limit. They leave the index
        at once, so a list read while their files go never shows more than the limit."""
        index = await self._index()
        total = sum(i["bytes"] for i in index["items"].values())
        gone = []
        for item in sorted(index["items"].values(), key=lambda i: i.get("last_used", 0)):
            if total <= index["limit"]:
                break
            if item["id"] != keep:
                gone.append(index["items"].pop(item["id"]))
                total -= item["bytes"]
        for item in gone:
            await self._drop_files(item)
        if gone:
            await self._save()
        return [item["id"] for item in gone]

    async def _drop_files(self, item: dict) -> None:
        cache = await self._cache()
        for key, entry in item["files"].items():
            if entry != ABSENT:
                await cache.delete(key)

    async def keep_text(self, item_id: str, name: str, text: str) -> None:
        """A dataset as its own item (one file)."""
        async with self.loading(item_id, "dataset", name, {"kind": "dataset"}):
            data = js.TextEncoder.new().encode(text).buffer
            await self.store("dataset", "data", data)

    async def read_text(self, item_id: str) -> tuple[str, str]:
        item = await self.get(item_id)
        if item is None or item["kind"] != "dataset":
            raise UsageError(f"{item_id}: this dataset is no longer in the browser cache")
        async with self.loading(item_id, "dataset", item["name"], item["source"]):
            found, data = await self.lookup("dataset", "data")
        if not found or data is None:
            raise UsageError(f"{item['name']}: the browser dropped this dataset from its cache")
        return item["name"], js.TextDecoder.new().decode(data)

