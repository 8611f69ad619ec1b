"""The test rig every issue uses.

- `run(coro)`: runs a coroutine on one long-lived asyncio loop in its own thread, so native GPU
  code can be awaited from any test, including tests that also drive Playwright (whose sync API
  owns the main thread's loop).
- `gpu`, `kernels`: a native wgpu device (lavapipe here) and its kernel library.
- `site`: the built `dist/` served on a free 127.0.0.1 port with the COOP/COEP headers.
- `app_page`: a Playwright page in Debian's Chromium with WebGPU on, opened on the site; the test
  fails on any page error, console error, or request that leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from tests.rig import CHROMIUM, CHROMIUM_FLAGS, DIST, ROOT, PageGuard


@pytest.fixture(scope="session")
def run():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="native-gpu-loop", daemon=True)
    thread.start()

    def run_coroutine(coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    yield run_coroutine
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(scope="session")
def gpu(run):
    from loralab.gpu.native import NativeDevice

    return run(NativeDevice.create())


@pytest.fixture(scope="session")
def kernels(gpu):
    from loralab.kernels import KernelLibrary, directory_reader

    return KernelLibrary(gpu, directory_reader())


@pytest.fixture(scope="session")
def site():
    """Base URL of the built site (built here if `python3 build.py build` has not run)."""
    if not (DIST / "index.html").exists():
        subprocess.run([sys.executable, str(ROOT / "build.py"), "build"], check=True)
    from loralab.devserver import serve_in_background

    server, url = serve_in_background(DIST)
    yield url
    server.shutdown()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_FLAGS}


@pytest.fixture
def page_guard(context, page):
    guard = PageGuard(context, page)
    yield guard
    guard.check()


@pytest.fixture
def app_page(page, page_guard, site):
    """The app without loading the default model (tests that bring their own model, or none), with
    the engine's debugging commands."""
    page.goto(site + "?autoload=0&debug=1")
    return page


@pytest.fixture
def app(app_page):
    """The page object over app_page (tests/browser/app.py)."""
    from tests.browser.app import App

    return App(app_page)


@pytest.fixture(scope="session")
def ops(gpu, kernels, run):
    from loralab.ops import Ops

    ops = run(Ops.load(gpu, kernels))
    run(ops.prepare_all())  # every product's pipeline, so the tests reach every path
    return ops


class GpuArrays:
    """numpy <-> GPU buffers for kernel tests."""

    def __init__(self, gpu, run):
        self.gpu, self.run = gpu, run

    def up(self, array, label: str = "test"):
        import numpy as np

        return self.gpu.create_buffer_with_data(np.ascontiguousarray(array).tobytes(), label=label)

    def empty(self, count: int, label: str = "out"):
        return self.gpu.create_buffer(count * 4, label=label)

    def submit(self, *dispatches):
        flat = []
        for d in dispatches:
            flat.extend(d if isinstance(d, list) else [d])
        self.gpu.submit(flat)

    def down(self, buffer, shape, dtype="float32"):
        import numpy as np

        return np.frombuffer(self.run(self.gpu.read_buffer(buffer)), dtype).reshape(shape).copy()


@pytest.fixture(scope="session")
def arrays(gpu, run):
    return GpuArrays(gpu, run)
