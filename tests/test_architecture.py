"""The package's layers, read from the code's own imports (function-local ones included).

Layers, bottom to top (docs/architecture.md): ``dpo_toolkit.core`` → ``dpo_toolkit.recipes`` →
``dpo_toolkit.studies`` → ``dpo_toolkit.plotting`` and the package facade → ``tools`` →
``benchmarks``. A module may import its own layer and the layers below it; never a higher one
(an upward arrow). A study never imports another study. The whole graph has no cycle. Each rule
is also shown to fail on a planted package that breaks it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("dpo_toolkit", "tools", "benchmarks")
LAYERS = (  # bottom first; a module's layer is the longest prefix that names it
    "dpo_toolkit.core",
    "dpo_toolkit.recipes",
    "dpo_toolkit.studies",
    "dpo_toolkit",  # plotting and the facade (dpo_toolkit/__init__.py loads names lazily)
    "tools",
    "benchmarks",
)
STUDIES = "dpo_toolkit.studies"


def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} of every .py file under the packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _targets(node: ast.ImportFrom | ast.Import, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load: for ``from a import b``, ``a.b`` (b may be a
    module) and ``a``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    """{module: the modules of the tree it imports}, every import statement read, at any depth."""
    files = module_files(root, packages)
    graph = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, name, path.name == "__init__.py"):
                while target and target not in files:  # a name inside a module: the module itself
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """The index in LAYERS of the longest prefix naming module (-1 if none)."""
    named = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS.index(max(named, key=len)) if named else -1


def upward_arrows(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Imports from a module into a higher layer than its own."""
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a))


def study_of(module: str) -> str | None:
    """The chapter a studies module belongs to (its first name under studies), or None."""
    if not module.startswith(STUDIES + "."):
        return None
    return module[len(STUDIES) + 1 :].split(".")[0]


def study_to_study(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (a, b) for a, targets in graph.items() for b in targets if study_of(a) and study_of(b) and study_of(a) != study_of(b)
    )


@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT)


def test_the_import_graph_reads_function_local_imports(graph):
    # tools/float_order.py imports the claims module inside a function body only
    assert "dpo_toolkit.core.claims" in graph["tools.float_order"]
    assert "dpo_toolkit.core.validate" in graph["dpo_toolkit.core.config"]
    assert len(graph) > 60


def test_no_import_cycle(graph):
    assert cycles(graph) == []


def test_no_upward_arrow(graph):
    assert upward_arrows(graph) == []


def test_no_study_imports_another(graph):
    assert study_to_study(graph) == []


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer(m) < 0] == []


def _plant(root: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(root)


def test_a_planted_cycle_through_a_function_local_import_is_found(tmp_path):
    graph = _plant(
        tmp_path,
        {
            "dpo_toolkit/__init__.py": "",
            "dpo_toolkit/core/__init__.py": "",
            "dpo_toolkit/core/a.py": "from .b import thing\n",
            "dpo_toolkit/core/b.py": "def thing():\n    from dpo_toolkit.core import c\n",
            "dpo_toolkit/core/c.py": "import dpo_toolkit.core.a\n",
            "tools/__init__.py": "",
            "benchmarks/__init__.py": "",
        },
    )
    assert cycles(graph) == [["dpo_toolkit.core.a", "dpo_toolkit.core.b", "dpo_toolkit.core.c"]]


def test_a_planted_upward_arrow_and_study_to_study_import_are_found(tmp_path):
    graph = _plant(
        tmp_path,
        {
            "dpo_toolkit/__init__.py": "",
            "dpo_toolkit/core/__init__.py": "",
            "dpo_toolkit/core/low.py": "def f():\n    from dpo_toolkit.studies.one import x\n",
            "dpo_toolkit/studies/__init__.py": "",
            "dpo_toolkit/studies/one.py": "x = 1\n",
            "dpo_toolkit/studies/two/__init__.py": "from ..one import x\n",
            "tools/__init__.py": "import benchmarks\n",
            "benchmarks/__init__.py": "",
        },
    )
    assert upward_arrows(graph) == [("dpo_toolkit.core.low", "dpo_toolkit.studies.one"), ("tools", "benchmarks")]
    assert study_to_study(graph) == [("dpo_toolkit.studies.two", "dpo_toolkit.studies.one")]


LONGEST = 50  # lines of a function, def to last line
LONG_ALLOWED = {"dpo_toolkit/core/train.py:optimize"}  # the one trainer reads best as one loop


def long_functions(root: Path, package: str = "dpo_toolkit") -> list[str]:
    """'path:name (lines)' of every function under package longer than LONGEST lines."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                where = f"{path.relative_to(root)}:{node.name}"
                if lines > LONGEST and where not in LONG_ALLOWED:
                    found.append(f"{where} ({lines})")
    return found


def test_no_function_in_the_toolkit_is_longer_than_fifty_lines():
    assert long_functions(ROOT) == []


def test_a_planted_long_function_is_found(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(LONGEST))
    _plant(tmp_path, {"dpo_toolkit/core/long.py": f"def long():\n{body}"})
    assert long_functions(tmp_path) == [f"dpo_toolkit/core/long.py:long ({LONGEST + 1})"]
