"""The layer rule of docs/design.md, read from the source with ast (nothing is imported): imports point down.

Top level:  graphs <- runtime;  graphs <- exporter <- validate <- benchmarks  (validate may use runtime too).
Inside exporter, units (a subpackage, or a leaf module) in layers, each importing only its own unit and lower
layers; units of one layer never import each other. No import cycle between any two of our modules. Imports
inside functions count: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graphs", "runtime", "exporter", "validate", "benchmarks")
TOP_ALLOWED = {
    "graphs": set(),
    "runtime": {"graphs"},
    "exporter": {"graphs"},
    "validate": {"graphs", "runtime", "exporter"},
    "benchmarks": {"graphs", "runtime", "exporter", "validate"},
}
EXPORTER_LAYERS = (
    ("errors",),                        # the one-line error users see
    ("options", "files"),               # every option and its check; files written whole
    ("codec",),                         # the codes: containers, files, quantizer math, packing
    ("model",),                         # HF model, compact decoder, folding
    ("calib", "eval"),                  # text, capture, statistics; the scoring loop
    ("projectors",),                    # fitting the codes
    ("quant", "ranks"),                 # the quantized cache's design; per-layer ranks
    ("export",),                        # model.onnx and the export directory
    ("job", "analyze"),                 # the export job; the analysis
    ("__main__",),                      # python -m exporter
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module of ours that `path` imports, anywhere in it, resolved to an absolute name."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}      # `from pkg import module`
    return found


def tree() -> dict[str, set[str]]:
    """{module: the modules of ours it imports} for every module of the five packages."""
    paths = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {module_name(p): p for p in paths}
    return {m: {i for i in imports_of(p) if i in modules and i != m} for m, p in modules.items()}


def exporter_unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "exporter" and len(parts) > 1 else None


def exporter_layer(unit: str) -> int:
    for i, units in enumerate(EXPORTER_LAYERS):
        if unit in units:
            return i
    raise KeyError(f"exporter unit {unit!r} has no layer in EXPORTER_LAYERS: add it there and to docs/design.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the rule, one line each."""
    bad = []
    for module, deps in sorted(graph.items()):
        top = module.split(".")[0]
        for dep in sorted(deps):
            dep_top = dep.split(".")[0]
            if dep_top != top and dep_top not in TOP_ALLOWED[top]:
                bad.append(f"{module} imports {dep}: {top} may import only {sorted(TOP_ALLOWED[top]) or 'nothing'}")
            unit, dep_unit = exporter_unit(module), exporter_unit(dep)
            if top == dep_top == "exporter" and unit and dep_unit and unit != dep_unit \
                    and exporter_layer(dep_unit) >= exporter_layer(unit):
                bad.append(f"{module} imports {dep}: exporter.{dep_unit} is not below exporter.{unit}")
    bad += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return bad


def test_the_tree_keeps_the_layer_rule():
    assert violations(tree()) == []


def test_every_exporter_unit_has_a_layer():
    for module in tree():
        unit = exporter_unit(module)
        if unit:
            exporter_layer(unit)


@pytest.mark.parametrize("module,planted,expected", [
    ("graphs.contract", "runtime.cache", "graphs may import only nothing"),
    ("runtime.generator", "exporter.options", "runtime may import only ['graphs']"),
    ("exporter.model.attention", "validate.parity", "exporter may import only ['graphs']"),
    ("exporter.codec.linear", "exporter.model.config", "exporter.model is not below exporter.codec"),
    ("exporter.quant.design", "exporter.ranks.auto", "exporter.ranks is not below exporter.quant"),
    ("exporter.model.weights", "exporter.model.fold", "import cycle"),     # fold imports weights already
])
def test_a_planted_upward_import_or_cycle_is_caught(module, planted, expected):
    graph = tree()
    graph[module] = graph[module] | {planted}
    assert any(expected in v for v in violations(graph)), violations(graph)
