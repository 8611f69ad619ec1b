"""The worker's model lock (loralab.browser.modeluse), on CPython's asyncio."""

from __future__ import annotations

import asyncio

from loralab.browser.modeluse import ModelUse

# (`run` is conftest's: a loop of its own thread, since pytest-playwright may hold this thread's)


def test_users_share_and_a_change_waits_for_them_then_holds_off_new_users(run):
    async def main():
        lock, log = ModelUse(), []

        async def use(name, hold):
            async with lock.using():
                log.append(f"{name} in")
                await asyncio.sleep(hold)
                log.append(f"{name} out")

        async def change():
            async with lock.changing():
                log.append("change in")
                await asyncio.sleep(0.02)
                log.append("change out")

        first = asyncio.create_task(use("a", 0.05))
        second = asyncio.create_task(use("b", 0.01))
        await asyncio.sleep(0.001)
        changer = asyncio.create_task(change())
        await asyncio.sleep(0.001)
        late = asyncio.create_task(use("c", 0))  # arrives while the change waits: goes after it
        await asyncio.gather(first, second, changer, late)
        return log

    log = run(main())
    assert log[:2] == ["a in", "b in"]  # users share
    assert log.index("change in") > log.index("a out") and log.index("change in") > log.index("b out")
    assert log.index("c in") > log.index("change out")


def test_a_change_that_fails_releases_the_model(run):
    async def main():
        lock = ModelUse()
        try:
            async with lock.changing():
                raise ValueError("bad file")
        except ValueError:
            pass
        async with asyncio.timeout(1):
            async with lock.using():
                pass
            async with lock.changing():
                return True

    assert run(main())
