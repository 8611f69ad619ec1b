"""Who may use the engine's model while the page's calls run at once (engine worker).

The worker serves each call as its own task, so a call that awaits (a plan measuring the GPU, an
answer streaming, an export) can find the model replaced under it by a load the person started
meanwhile. `ModelUse` is a readers-writer lock: calls that use the model share it; a call that
replaces it (a load, new weights) waits until they are done and holds off new ones, which then
see the new model. Plain asyncio: it runs on CPython too (tests/test_modeluse.py).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager


class ModelUse:
    def __init__(self):
        self._changed = asyncio.Condition()
        self._users = 0
        self._changing = False
        self._waiting = 0  # changes waiting: new users queue behind them

    @asynccontextmanager
    async def using(self):
        async with self._changed:
            await self._changed.wait_for(lambda: not self._changing and not self._waiting)
            self._users += 1
        try:
            yield
        finally:
            async with self._changed:
                self._users -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def changing(self):
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._changing and not self._users)
            finally:
                self._waiting -= 1
            self._changing = True
        try:
            yield
        finally:
            async with self._changed:
                self._changing = False
                self._changed.notify_all()
