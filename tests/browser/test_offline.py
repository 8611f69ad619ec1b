"""Issue 7 in Chromium: a plain static host (no COOP/COEP headers), the site with the network
gone after one visit, and the model cache's manager (sizes, delete, LRU size limit)."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from loralab.devserver import IsolatedHandler, Server, serve_in_background
from tests.browser.app import App
from tests.browser.test_app_flow import chat_jsonl, make_chat_model
from tests.rig import DIST

pytestmark = pytest.mark.browser
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return make_chat_model(tmp_path_factory.mktemp("tiny-chat"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_briefly(page, records: str = "records", batch_size: int = 2) -> None:
    """Two short steps on the dataset in use, once its summary mentions `records`."""
    app = App(page)
    app.wait_text("dataset-summary", records)
    app.train({"steps": 2, "batch-size": batch_size, "seq-len": 32, "report-every": 1})


def test_a_plain_static_server_without_headers_reaches_ready_and_trains(page, page_guard, model_folder, tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(DIST)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        page.goto(f"http://127.0.0.1:{port}/?autoload=0")
        assert App(page).engine_up(timeout_ms=180_000) == "No model loaded"
        assert page.evaluate("window.crossOriginIsolated")  # the service worker's headers
        assert page.evaluate("navigator.serviceWorker.controller !== null")
        App(page).load_model_files(model_folder)
        App(page).use_dataset_file(chat_jsonl(tmp_path / "chat.jsonl", repeats=1))
        train_briefly(page)
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.slow
def test_offline_after_one_visit_default_model_trains_and_downloads(page, page_guard, tmp_path):
    """The first visit online; then the server is gone and the browser offline: a reload reaches
    ready with the default model from the cache, trains and downloads an adapter."""
    server, url = serve_in_background(DIST)
    page.goto(url)
    App(page).ready()  # the default model loaded (and kept)
    page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=120_000)
    page.evaluate("navigator.serviceWorker.ready")
    server.shutdown()
    server.server_close()
    page.context.set_offline(True)
    page_guard.allow_console = ("Failed to load resource", "ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION_REFUSED")

    page.reload()
    App(page).ready()
    assert "SmolLM2" in page.inner_text("[data-testid=model-card]") or "llama" in page.inner_text(
        "[data-testid=model-card]").lower()
    App(page).paste_dataset(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]}\n' * 4,
        "4 records")
    train_briefly(page, records="4 records", batch_size=1)
    assert App(page).download("export-adapter").stat().st_size > 1000


class CountingHub(IsolatedHandler):
    """A model hub on another origin (CORS + cross-origin resource policy) that counts requests."""

    cross_origin = True
    quiet = True
    paths: list[str] = []

    def do_GET(self):
        CountingHub.paths.append(self.path)
        super().do_GET()


@pytest.fixture
def hub(tmp_path, model_folder):
    for repo in ("lab/first", "lab/second"):
        shutil.copytree(model_folder, tmp_path / "hub" / repo / "resolve" / "main")
    CountingHub.paths = []
    server = Server(("127.0.0.1", 0), functools.partial(CountingHub, directory=str(tmp_path / "hub")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def load_repo(page, hub_url: str, repo: str) -> None:
    page.select_option("[data-testid=model-select]", "repo")
    page.fill("[data-testid=model-repo]", repo)
    page.fill("[data-testid=hub-endpoint]", hub_url)
    page.evaluate("document.querySelector('[data-testid=model-card]').textContent = ''")
    page.click("[data-testid=model-load]")
    page.wait_for_function(f"document.querySelector('[data-testid=model-card]').textContent.includes('{repo}')"
                           " && document.querySelector('[data-testid=status]').textContent.trim() === 'ready'",
                           timeout=120_000)


def cached(page) -> dict[str, int]:
    """{item id: bytes} of the models in the cache manager."""
    return page.evaluate("""Object.fromEntries([...document.querySelectorAll('[data-testid=cache-item]')]
        .filter(r => r.dataset.kind === 'model').map(r => [r.dataset.id, parseInt(r.dataset.bytes)]))""")


def weights_requests(repo: str) -> int:
    return sum(1 for p in CountingHub.paths if p.startswith(f"/{repo}/") and p.endswith("model.safetensors"))


def test_cache_manager_reuses_deletes_and_evicts_least_recently_used(app_page, hub):
    page = app_page
    App(page).engine_up()
    load_repo(page, hub, "lab/first")
    first = f"model:hub:{hub}/lab/first"
    page.wait_for_function(f"[...document.querySelectorAll('[data-testid=cache-item]')].some(r => r.dataset.id === '{first}')")
    size = cached(page)[first]
    assert size > 50_000  # the weights are kept
    assert weights_requests("lab/first") == 1

    for text in ('{"text": "one"}\n', '{"text": "one two"}\n{"text": "three"}\n'):  # edited: one item, replaced
        page.fill("[data-testid=dataset-text]", text)
        page.click("[data-testid=dataset-use]")
        page.wait_for_function("document.querySelector('[data-testid=dataset-summary]').textContent.includes('records')")
    page.wait_for_function("""[...document.querySelectorAll('[data-testid=cache-item]')]
        .some(r => r.dataset.id === 'dataset:pasted' && parseInt(r.dataset.bytes) === 38)""")
    assert page.locator("[data-testid=cache-item][data-kind=dataset]").count() == 1

    page.reload()  # a cached model starts without downloading again
    App(page).engine_up()
    load_repo(page, hub, "lab/first")
    assert weights_requests("lab/first") == 1

    usage_before = int(page.get_attribute("[data-testid=storage-usage]", "data-usage"))
    page.click(f"[data-testid=cache-item][data-id='{first}'] [data-testid=cache-delete]")
    page.wait_for_function(f"![...document.querySelectorAll('[data-testid=cache-item]')].some(r => r.dataset.id === '{first}')")
    page.wait_for_function(f"parseInt(document.querySelector('[data-testid=storage-usage]').dataset.usage) < {usage_before}",
                           timeout=30_000)
    load_repo(page, hub, "lab/first")  # fetched again after the delete
    assert weights_requests("lab/first") == 2

    # A limit that holds one model: loading a second evicts the least recently used (the first).
    page.fill("[data-testid=cache-limit]", f"{size * 1.5 / 2**20:.3f}")
    page.dispatch_event("[data-testid=cache-limit]", "change")
    page.wait_for_function("parseFloat(document.querySelector('[data-testid=cache-limit]').value) > 0")
    load_repo(page, hub, "lab/second")
    second = f"model:hub:{hub}/lab/second"
    page.wait_for_function(f"[...document.querySelectorAll('[data-testid=cache-item]')].some(r => r.dataset.id === '{second}')")
    assert set(cached(page)) == {second}
    # The field shows the limit rounded; a change event on it unedited (a blur) keeps the exact limit.
    limit = int(float(f"{size * 1.5 / 2**20:.3f}") * 2**20)
    engine_limit = "window.loralabEngine('cache_list', '{}').then(r => JSON.parse(r).limit)"
    assert page.evaluate(engine_limit) == limit
    page.wait_for_function("document.querySelector('[data-testid=cache-limit]').value.length > 0")
    page.dispatch_event("[data-testid=cache-limit]", "change")
    assert page.evaluate(engine_limit) == limit  # (the handler's call, had it made one, went first)


class StallingHub(IsolatedHandler):
    """A hub whose weights arrive halfway and then stall (a slow or stuck network), until `go`."""

    cross_origin = True
    quiet = True
    go = threading.Event()

    def copyfile(self, source, outputfile):
        if not self.path.endswith("model.safetensors"):
            return super().copyfile(source, outputfile)
        data = source.read()
        outputfile.write(data[: len(data) // 2])
        outputfile.flush()
        StallingHub.go.wait(120)
        outputfile.write(data[len(data) // 2:])


def test_a_model_load_is_cancelled_while_its_weights_download_and_the_loaded_model_stays(app_page, model_folder,
                                                                                        tmp_path):
    page = app_page
    app = App(page)
    app.engine_up()
    app.load_model_files(model_folder)
    shutil.copytree(model_folder, tmp_path / "hub" / "lab" / "slow" / "resolve" / "main")
    StallingHub.go.clear()
    server = Server(("127.0.0.1", 0), functools.partial(StallingHub, directory=str(tmp_path / "hub")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.select_option("[data-testid=model-select]", "repo")
        page.fill("[data-testid=model-repo]", "lab/slow")
        page.fill("[data-testid=hub-endpoint]", f"http://127.0.0.1:{server.server_port}")
        page.click("[data-testid=model-load]")
        # The bar says how much of the weights came, and offers Cancel.
        page.wait_for_function("""(() => { const bar = document.querySelector('[data-testid=progress]');
            return bar.textContent.includes('model.safetensors') && bar.textContent.includes('MiB')
                && parseFloat(bar.dataset.progress) > 0; })()""", timeout=60_000)
        assert float(page.get_attribute("[data-testid=progress]", "data-progress")) < 1
        assert page.is_visible("[data-testid=progress-cancel]")
        page.click("[data-testid=progress-cancel]")
        app.wait_text("notice", "Cancelled")
        app.ready()
        assert page.is_hidden("[data-testid=progress]") and page.is_hidden("[data-testid=progress-cancel]")
        assert page.is_hidden("[data-testid=error]")
        assert "llama model" in app.text("model-card")  # the model loaded before is still the one loaded
        kept = page.evaluate("window.loralabEngine('model_info', '{}').then(JSON.parse)")
        assert kept["model"]["name"] == "llama model"
        assert not [i for i in cached(page) if "lab/slow" in i]  # a cancelled load is not kept
    finally:
        StallingHub.go.set()
        server.shutdown()
    app.use_dataset_file(chat_jsonl(tmp_path / "c.jsonl"))  # and it trains
    app.train({"steps": 1, "batch-size": 2, "seq-len": 32, "report-every": 1})


def test_a_new_build_is_announced_and_replaces_the_old_cache(page, page_guard, tmp_path):
    import build

    site = tmp_path / "site"
    shutil.copytree(DIST, site, ignore=shutil.ignore_patterns("models"))
    server, url = serve_in_background(site)
    try:
        page.goto(url + "?autoload=0")
        App(page).engine_up()
        page.wait_for_function("navigator.serviceWorker.controller !== null")
        shells = "caches.keys().then(keys => keys.filter(k => k.startsWith('loralab-shell-')))"
        (old,) = page.evaluate(shells)
        css = site / "static" / "app.css"
        css.write_text(css.read_text() + "\n/* the next build */\n")
        build.write_manifest(site)  # what `build.py build` does: new hashes, a new version
        page.evaluate("navigator.serviceWorker.getRegistration().then(r => r.update())")
        page.wait_for_selector("[data-testid=update-ready]:not([hidden])", timeout=60_000)
        page.click("[data-testid=update-reload]")
        page.wait_for_function(f"{shells}.then(keys => keys.length === 1 && keys[0] !== '{old}')", timeout=60_000)
        App(page).engine_up()
        assert "the next build" in page.evaluate("fetch('static/app.css').then(r => r.text())")
    finally:
        server.shutdown()
