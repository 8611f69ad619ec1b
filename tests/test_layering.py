"""The package's layers, read from its imports with `ast`.

Rules: a module imports only its own layer and lower ones; the packages (and top-level modules)
form no import cycle; only the browser side (gpu/browser.py, browser/, app/) imports
js/pyodide/pyscript; and the page (app/) imports nothing but the base layer, since it reaches
the engine only through the worker protocol. The tests of the test add a forbidden edge to the
real graph and expect it to be caught."""

from __future__ import annotations

import ast
from fnmatch import fnmatch
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pyapp" / "loralab"

# Low to high. A module's layer is the first pattern it matches.
LAYERS = [
    ("base", ["errors", "checks", "patterns", "config", "ref", "devserver", "recipe_train", "presets"]),
    ("io", ["gpu.device", "gpu.native", "gpu.counting", "formats.*", "data.*"]),
    ("kernels", ["kernels", "ops", "selftest"]),
    ("lora", ["lora"]),
    ("model", ["model.*"]),
    ("train", ["train", "generate", "merge", "onnx_export", "onnx_decode", "plan", "bench", "bench_torch", "recipe"]),
    ("entry", ["session", "cli"]),
    ("browser", ["gpu.browser", "browser.*"]),
    ("app", ["app.*"]),
]
BROWSER_SIDE = ("gpu.browser", "browser.*", "app.*")
# The CLI and the worker are adapters over session.Session: they reach the run, the model's
# network, generation and merging only through it.
ADAPTERS = ("cli", "browser.worker")
BEHIND_SESSION = ("train", "generate", "merge", "onnx_export", "plan", "lora", "model.transformer")
BROWSER_MODULES = ("js", "pyodide", "pyscript")


def layer_of(module: str) -> int:
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch(module, p) for p in patterns):
            return rank
    raise AssertionError(f"loralab.{module} belongs to no layer: add it to LAYERS")


def unit(module: str) -> str:
    """The package a module belongs to (or the module itself at the top level)."""
    return module.split(".")[0]


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """{module: modules it imports}, names relative to loralab; outside packages by top name."""
    modules = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".").removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        edges = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    edges.add(alias.name.removeprefix("loralab.") if top == "loralab" else "@" + top)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module.split(".")[0] == "loralab":
                    target = node.module.removeprefix("loralab").lstrip(".")
                else:
                    edges.add("@" + node.module.split(".")[0])
                    continue
                for alias in node.names:  # `from . import opfs` names a module
                    sub = f"{target}.{alias.name}" if target else alias.name
                    edges.add(sub if sub in modules else target)
        graph[name] = {e for e in edges if e and e != name}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    return {name: edges - packages for name, edges in graph.items() if name not in packages}


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, imports in sorted(graph.items()):
        for target in sorted(imports):
            if target.startswith("@"):
                if target[1:] in BROWSER_MODULES and not any(fnmatch(module, p) for p in BROWSER_SIDE):
                    found.append(f"{module} imports {target[1:]}: only the browser side may")
                continue
            if target not in graph:
                continue  # a package's __init__
            if layer_of(target) > layer_of(module):
                found.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]}), a higher layer")
            if module in ADAPTERS and target in BEHIND_SESSION:
                found.append(f"{module} imports {target}: the adapters go through session.Session")
            if fnmatch(module, "app.*") and not fnmatch(target, "app.*") and layer_of(target) != 0:
                found.append(f"{module} imports {target}: the page reaches the engine only through the worker")
    units: dict[str, set[str]] = {}
    for module, imports in graph.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in imports if not t.startswith("@"))
    for start in sorted(units):  # a cycle between packages: a path from a unit back to itself
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(units.get(node, ())):
                if nxt == start and len(path) > 1:
                    found.append("import cycle: " + " -> ".join(path + [start]))
                elif nxt != node and nxt not in seen and nxt in units:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    return sorted(set(found))


def test_the_package_keeps_its_layers():
    assert violations(import_graph()) == []


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_a_forbidden_import_is_caught():
    graph = import_graph()
    upward = {**graph, "lora": graph["lora"] | {"model.transformer"}}
    assert any("lora (lora) imports model.transformer" in v for v in violations(upward))
    assert any(v.startswith("import cycle") for v in violations(upward))
    js_in_engine = {**graph, "train": graph["train"] | {"@js"}}
    assert "train imports js: only the browser side may" in violations(js_in_engine)
    around_session = {**graph, "cli": graph["cli"] | {"train"}}
    assert "cli imports train: the adapters go through session.Session" in violations(around_session)
    engine_in_page = {**graph, "app.main": graph["app.main"] | {"train"}}
    assert any("the page reaches the engine only through the worker" in v for v in violations(engine_in_page))
