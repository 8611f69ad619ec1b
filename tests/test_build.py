"""dist/ is a complete, self-contained static site."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile

import pytest

from tests.rig import DIST, ROOT

pytestmark = pytest.mark.usefixtures("site")  # builds dist/ when it is missing

URL_ATTR = re.compile(r'(?:src|href|config)="([^"]+)"')


def test_index_references_resolve_inside_dist():
    html = (DIST / "index.html").read_text()
    urls = URL_ATTR.findall(html)
    assert urls, "index.html references nothing?"
    for url in urls:
        if url.startswith("#"):  # a link within the page (the step bar's)
            continue
        assert not re.match(r"^[a-z]+:", url), f"index.html loads {url} from outside the site"
        assert (DIST / url).resolve().is_file(), f"index.html references {url}, missing from dist/"


def test_pyscript_config_is_local():
    config = json.loads((DIST / "pyscript.json").read_text())
    assert (DIST / config["interpreter"]).is_file()
    for source in config["files"]:
        assert (DIST / source).is_file(), source
    assert "packages" not in config, "packages would make Pyodide reach for its CDN"


def test_pyodide_runtime_is_shipped():
    lock = json.loads((DIST / "pyodide" / "pyodide-lock.json").read_text())
    assert lock["info"]["python"].startswith("3.14")
    assert json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/pyodide"]["version"] == "314.0.7"
    for name in ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip"):
        assert (DIST / "pyodide" / name).stat().st_size > 0


def test_python_package_zip_has_the_whole_package():
    with zipfile.ZipFile(DIST / "loralab.zip") as zf:
        names = set(zf.namelist())
    sources = {p.relative_to(ROOT / "pyapp").as_posix() for p in (ROOT / "pyapp" / "loralab").rglob("*.py")}
    assert sources == {n for n in names if n.startswith("loralab/")}
    assert {"jinja2/sandbox.py", "markupsafe/_native.py"} <= names  # chat templates in the browser
    assert {n.split("/")[0] for n in names} == {"loralab", "jinja2", "markupsafe"}


def test_kernels_and_vendor_libraries_are_shipped():
    for wgsl in (ROOT / "wgsl").rglob("*.wgsl"):  # (includes too)
        assert (DIST / "wgsl" / wgsl.relative_to(ROOT / "wgsl")).read_bytes() == wgsl.read_bytes()
    for path in ("vendor/tokenizers/tokenizers.min.mjs", "pyscript/core.js"):
        assert (DIST / path).is_file(), path


def test_manifest_lists_every_file_with_its_hash():
    manifest = json.loads((DIST / "build.json").read_text())
    on_disk = {p.relative_to(DIST).as_posix() for p in DIST.rglob("*") if p.is_file()} - {"build.json"}
    assert set(manifest["files"]) == on_disk
    entry = manifest["files"]["index.html"]
    assert entry["sha256"] == hashlib.sha256((DIST / "index.html").read_bytes()).hexdigest()


def test_no_runtime_url_outside_the_site():
    pattern = re.compile(r"https?://(?!127\.0\.0\.1|localhost|www\.w3\.org/)[\w.-]+\.[a-z]{2,}/", re.I)
    for path in [DIST / "index.html", DIST / "pyscript.json", *(DIST / "static").rglob("*")]:
        if path.is_file():
            found = pattern.findall(path.read_text(errors="ignore"))
            assert not found, f"{path.name} refers to {found}"
