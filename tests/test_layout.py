"""The package's shape: no import cycles, no function so long it hides what it does, every import at the
top of its file unless it would load a heavy library (torch and the like) where none is needed yet."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[1] / "runner"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(RUNNER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(RUNNER.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> list[str]:
    """What an import statement names: ``from a.b import c`` -> a.b and a.b.c (c may be a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    """Module -> the runner modules it imports, at the top or inside a function (both are dependencies)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                deps |= {t for t in _targets(node, _package(name, path)) if t in modules and t != name}
        graph[name] = deps
    return graph


# Libraries that take from a tenth of a second to seconds to import: a module that needs one only in some
# functions (the command line's pre-flight, the reports) may import it, or a runner module that loads it,
# inside those functions. Every other import sits at the top of its file.
HEAVY = {"torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface_hub",
         "wandb", "matplotlib", "pandas", "numpy", "scipy", "sklearn", "lm_eval"}


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported (``if TYPE_CHECKING:`` blocks excluded)."""
    out: list = []

    def visit(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(tree.body)
    return out


def _function_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    found = {id(node): node for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}  # nested functions: once
    return sorted(found.values(), key=lambda node: node.lineno)


def heavy_on_import() -> dict[str, set[str]]:
    """Runner module -> the heavy libraries importing it loads (through runner modules too)."""
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    direct: dict[str, tuple[set[str], set[str]]] = {}
    for name, path in modules.items():
        targets = [t for node in _top_level_imports(trees[name]) for t in _targets(node, _package(name, path))]
        inner = {t for t in targets if t in modules} | {name}
        inner |= {".".join(t.split(".")[:i]) for t in inner for i in range(2, t.count(".") + 1)}  # their packages run first
        direct[name] = ({t.split(".")[0] for t in targets} & HEAVY, inner - {name})

    def heavy(name: str) -> set[str]:
        reached, todo = {name}, [name]
        while todo:  # every runner module importing ``name`` runs (package __init__ cycles included)
            for m in direct[todo.pop()][1] - reached:
                reached.add(m)
                todo.append(m)
        return {lib for m in reached for lib in direct[m][0]}

    return {name: heavy(name) for name in modules}


def light_imports_inside_functions() -> list[str]:
    """Imports inside functions that load no heavy library the module does not load already: they hide a
    dependency and could sit at the top."""
    modules, heavy = _modules(), heavy_on_import()
    out = []
    for name, path in modules.items():
        for node in _function_imports(ast.parse(path.read_text())):
            loads = set()
            for t in _targets(node, _package(name, path)):
                loads |= ({t.split(".")[0]} & HEAVY) | heavy.get(t, set())
            if not loads - heavy[name]:
                out.append(f"{path.relative_to(RUNNER.parent)}:{node.lineno} {ast.unparse(node)}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_of_runner_has_no_cycles():
    graph = import_graph()
    assert graph["runner.train"] >= {"runner.runs", "runner.methods"}  # the walk sees real imports
    # a package's __init__ importing its own submodules is not a cycle worth a refactor
    found = [c for c in cycles(graph) if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert found == [], f"import cycles: {found}"


def test_every_import_sits_at_the_top_unless_it_loads_something_heavy():
    heavy = heavy_on_import()
    assert "torch" in heavy["runner.train"] and "torch" in heavy["runner.arch.bert"]  # the walk sees real imports
    assert not heavy["runner.preflight.validate"] and not heavy["runner.sweep"]
    assert light_imports_inside_functions() == []


def test_the_rule_flags_a_light_import_inside_a_function(tmp_path, monkeypatch):
    package = tmp_path / "runner"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "heavy.py").write_text("import torch\n")
    (package / "light.py").write_text("import json\n\n\ndef f():\n    import json\n    from runner import heavy\n"
                                      "    import numpy\n    from runner.light import f\n    return heavy, numpy, f\n")
    monkeypatch.setattr(sys.modules[__name__], "RUNNER", package)
    assert heavy_on_import()["runner.heavy"] == {"torch"}
    assert light_imports_inside_functions() == ["runner/light.py:5 import json", "runner/light.py:8 from runner.light import f"]


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def long_functions() -> list[str]:
    """Functions over MAX_FUNCTION_LINES lines whose docstring gives no reason ("Long because ...")."""
    out = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and "Long because" not in (ast.get_docstring(node) or ""):
                    out.append(f"{name}.{node.name} ({lines} lines)")
    return out


def test_no_function_in_runner_is_over_60_lines_without_a_reason():
    assert long_functions() == []
