"""The browser's Origin Private File System (OPFS), from the engine worker (Pyodide only).

Paths are "folder/name" strings under the origin's root. `write` replaces a file in one step
(a writable stream commits on close, so a crash mid-write keeps the old file); `SyncFile` is a
seekable file object over a synchronous access handle (dedicated workers only), for writers
such as zipfile that stream large outputs without holding them in memory.
"""

from __future__ import annotations

import js  # type: ignore[import-not-found]
from pyodide.ffi import JsException, to_js  # type: ignore[import-not-found]

from ..errors import UserError


class StorageError(UserError):
    """The browser refused storage (private mode, quota exceeded, no OPFS)."""


def _opts(**values):
    return to_js(values, dict_converter=js.Object.fromEntries)


async def _folder(parts: list[str], create: bool):
    storage = getattr(js.navigator, "storage", None)
    if storage is None or not hasattr(storage, "getDirectory"):
        raise StorageError("this browser has no private file system (OPFS) for saving checkpoints")
    handle = await storage.getDirectory()
    for part in parts:
        handle = await handle.getDirectoryHandle(part, _opts(create=create))
    return handle


async def _file(path: str, create: bool):
    *parts, name = path.split("/")
    try:
        folder = await _folder(parts, create)
        return await folder.getFileHandle(name, _opts(create=create))
    except JsException as exc:
        if "NotFoundError" in str(exc) and not create:
            return None
        raise StorageError(f"browser storage: {path}: {exc}") from None


CHUNK = 8 << 20  # a large write goes in pieces of this size, so its progress can be followed


async def write(path: str, data, progress=None) -> None:
    """Replace `path` with `data` (bytes-like or a JS typed array); `progress(fraction written)`
    after each piece when given."""
    handle = await _file(path, create=True)
    try:
        stream = await handle.createWritable()
        if isinstance(data, (bytes, bytearray, memoryview)):
            view = memoryview(data).cast("B")
            for start in range(0, len(view), CHUNK):
                await stream.write(to_js(view[start:start + CHUNK]))
                if progress is not None:
                    progress(min(1.0, (start + CHUNK) / len(view)))
        else:
            await stream.write(data)
        await stream.close()
        if progress is not None:
            progress(1.0)
    except JsException as exc:
        raise StorageError(f"browser storage: could not write {path} ({exc}); free some space and try again") from None


async def read(path: str) -> bytes | None:
    handle = await _file(path, create=False)
    if handle is None:
        return None
    file = await handle.getFile()
    return (await file.arrayBuffer()).to_bytes()


async def read_js(path: str):
    """`path`'s bytes as a JS Uint8Array (never copied into Python), or None when it is absent."""
    handle = await _file(path, create=False)
    if handle is None:
        return None
    file = await handle.getFile()
    return js.Uint8Array.new(await file.arrayBuffer())


async def remove(path: str) -> None:
    *parts, name = path.split("/")
    try:
        folder = await _folder(parts, create=False)
        await folder.removeEntry(name, _opts(recursive=True))
    except JsException as exc:
        if "NotFoundError" not in str(exc):
            raise StorageError(f"browser storage: could not delete {path} ({exc})") from None


class SyncFile:
    """A writable, seekable binary file in OPFS (the minimum zipfile needs)."""

    def __init__(self, handle, path: str):
        self.handle, self.path, self.pos = handle, path, 0

    @classmethod
    async def create(cls, path: str) -> "SyncFile":
        handle = await _file(path, create=True)
        try:
            sync = await handle.createSyncAccessHandle()
        except JsException as exc:
            raise StorageError(f"browser storage: could not open {path} for writing ({exc})") from None
        sync.truncate(0)
        return cls(sync, path)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = self.handle.write(to_js(view), _opts(at=self.pos))
        if written != len(view):
            raise StorageError(f"browser storage: {self.path}: the disk is full (wrote {written} of {len(view)} bytes)")
        self.pos += written
        return written

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else int(self.handle.getSize()) + pos
        return self.pos

    def seekable(self) -> bool:
        return True

    def flush(self) -> None:
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            self.handle.close()
            self.handle = None
