"""The layers, enforced: features <- models <- training / serving, and no import cycles.

Every import in the four packages counts, including those inside functions (a lazy import is
still a dependency). features imports none of the others; models imports features only;
training and serving import features and models, never each other. The commands of both are
put together by the `ontrack` entry point through the `ontrack.commands` entry-point group
(pyproject.toml), not by one package importing the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("features", "models", "training", "serving")
#: What each package may import (of the four).
ALLOWED = {
    "features": {"features"},
    "models": {"features", "models"},
    "training": {"features", "models", "training"},
    "serving": {"features", "models", "serving"},
}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported top-level package) for every import in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def violations(root: Path) -> list[str]:
    """Every import from one of the four packages into one it may not use."""
    found = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            for line, target in imports_of(path):
                if target in LAYERS and target not in ALLOWED[layer]:
                    found.append(f"{path.relative_to(root)}:{line} imports {target}")
    return found


def module_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the modules of the four packages it imports (lazy imports included; those
    under ``if TYPE_CHECKING:`` are annotations only and left out)."""
    mods = {}
    for layer in LAYERS:
        for path in (root / layer).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in names:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(module_graph(REPO)) == []


def test_the_cycle_check_finds_a_lazy_cycle(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "training" / "a.py").write_text("from training.b import x\n")
    (tmp_path / "training" / "b.py").write_text("def x():\n    from training import a\n")
    (tmp_path / "training" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from training.a import y\n")
    assert cycles(module_graph(tmp_path)) == [["training.a", "training.b"]]


def test_no_package_imports_a_layer_above_or_beside_it():
    assert violations(REPO) == []


def test_the_contract_fails_on_a_deliberate_upward_import(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "features" / "bad.py").write_text(
        "def f():\n    from models.assess import assess  # lazy, still upward\n")
    (tmp_path / "serving" / "worse.py").write_text("import training.train\n")
    (tmp_path / "models" / "sneaky.py").write_text(
        "import importlib\nm = importlib.import_module('serving.service')\n")
    assert violations(tmp_path) == ["features/bad.py:2 imports models",
                                    "models/sneaky.py:2 imports serving",
                                    "serving/worse.py:1 imports training"]
