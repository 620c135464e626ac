"""The layout is the architecture: uad's subpackages are layers, and an import only ever goes down.

Every import under uad/ is read (module level and inside functions), so a lazy import cannot hide an
upward dependency or a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

UAD = Path(__file__).resolve().parents[1] / "uad"

# Bottom to top. A module may import modules of its own package and of any lower layer, never higher.
# Packages on one layer are independent of each other.
LAYERS = [
    {"uad.core"},
    {"uad.data", "uad.models"},
    {"uad.checkpoints"},
    {"uad.runs"},
    {"uad.scoring"},
    {"uad.training"},
    {"uad.evaluation"},
    {"uad.jobs"},
    {"uad.cli"},
    {"uad.__main__"},
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(UAD.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every uad module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = _module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # "from uad.x import module"
    return {m for m in found if m == "uad" or m.startswith("uad.")}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in UAD.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _layer(module: str) -> int:
    pkg = _package(module)
    for i, layer in enumerate(LAYERS):
        if pkg in layer:
            return i
    raise AssertionError(f"{module}: its package {pkg} is in no layer of tests/test_architecture.py (add it)")


def test_every_module_lives_in_a_layer_and_uad_has_no_flat_modules():
    graph = _graph()
    flat = sorted(m for m in graph if m.count(".") == 1 and m not in ("uad.cli", "uad.__main__")
                  and not (UAD / m.split(".")[1]).is_dir())
    assert not flat, f"modules at the top of uad/ outside a subpackage: {flat}"
    for module in graph:
        if module != "uad":
            _layer(module)


def test_no_import_goes_up_a_layer_or_across_one():
    graph = _graph()
    wrong = []
    for module, imported in graph.items():
        if module == "uad":
            continue
        for target in imported:
            if target == "uad":
                continue
            a, b = _layer(module), _layer(target)
            if b > a or (b == a and _package(module) != _package(target)):
                wrong.append(f"{module} (layer {a}) imports {target} (layer {b})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_uad_never_imports_the_app_or_streamlit():
    offenders = []
    for path in UAD.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] in ("streamlit", "app") for n in names):
                offenders.append(str(path.relative_to(UAD.parent)))
    assert not offenders, offenders


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The rule above can fail: a data module importing the evaluation layer is reported."""
    fake = tmp_path / "uad"
    (fake / "data").mkdir(parents=True)
    (fake / "evaluation").mkdir()
    for p in (fake / "__init__.py", fake / "data" / "__init__.py", fake / "evaluation" / "__init__.py"):
        p.write_text("")
    (fake / "evaluation" / "metrics.py").write_text("X = 1\n")
    (fake / "data" / "bad.py").write_text("def f():\n    from uad.evaluation import metrics\n    return metrics.X\n")
    monkeypatch.setattr(sys.modules[__name__], "UAD", fake)
    with pytest.raises(AssertionError, match="uad.data.bad"):
        test_no_import_goes_up_a_layer_or_across_one()
