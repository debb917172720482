"""The package's shape, read from its imports with `ast`: the layers of ../DESIGN.md hold.

utilities -> darknet, data -> eval -> train, deploy -> report -> experiment -> reproduce -> cli. A module may
import its own package and any lower layer, never a layer above it nor another package of its own layer; no
cycle between modules or packages; no darktune import inside a function outside cli/ (optional heavy
dependencies stay lazy, they are not darktune modules); at most 10 modules at the top of darktune/; no file
over 450 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "darktune"

# unit (a subpackage of darktune/ or a top-level module) -> layer; a unit imports only units of lower layers
LAYERS = {
    "__init__": 0, "errors": 0,
    "plural": 1, "devices": 1, "files": 1, "machine": 1, "numbers": 1,
    "records": 1.5,  # a utility over files (the schema check of files read back); below darknet and data
    "darknet": 2, "data": 2,
    "eval": 3,
    "train": 4, "deploy": 4,
    "report": 5,
    "experiment": 6,
    "reproduce": 7,
    "cli": 8, "api": 8,  # the Python API: a face beside the command line (neither imports the other)
    "__main__": 9,
}
MAX_TOP_LEVEL = 10
MAX_LINES = 450


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def unit(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(imported darktune module, line, inside a function) for every import of a darktune module."""
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            candidates = [f"{mod}.{a.name}" for a in node.names] + [mod]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        targets = set()
        for c in candidates:
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name and c != "darktune":
                targets.add(c)
        found.extend((c, node.lineno, id(node) in in_function) for c in sorted(targets))
    return found


def graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], list[str], list[str]]:
    known = modules(package)
    edges: dict[str, set[str]] = {m: set() for m in known}
    upward, lazy = [], []
    for name, path in known.items():
        src = unit(name)
        for target, line, inside in imports(name, path, known):
            edges[name].add(target)
            where = f"{path.relative_to(package.parent)}:{line}"
            if inside and src != "cli":
                lazy.append(f"{where} imports {target} inside a function")
            dst = unit(target)
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                upward.append(f"{where}: {src} (layer {LAYERS[src]}) imports {target} (layer {LAYERS[dst]})")
    return edges, upward, lazy


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_every_unit_has_a_layer():
    assert {unit(m) for m in modules()} <= set(LAYERS), "a new top-level module or package needs a layer here"


def test_no_upward_or_sideways_import():
    _, upward, _ = graph()
    assert upward == []


def test_no_darktune_import_inside_a_function_outside_cli():
    _, _, lazy = graph()
    assert lazy == []


def test_no_module_or_package_cycle():
    edges, _, _ = graph()
    assert cycles(edges) == []
    packages: dict[str, set[str]] = {}
    for a, targets in edges.items():
        for b in targets:
            if unit(a) != unit(b):
                packages.setdefault(unit(a), set()).add(unit(b))
    assert cycles(packages) == []


def test_nothing_imports_the_python_api():
    """darktune/api is a face over the layers for notebooks and scripts: it may import any layer, nothing
    imports it (not even cli or __main__)."""
    edges, _, _ = graph()
    importers = sorted(a for a, targets in edges.items() if unit(a) != "api" and any(unit(t) == "api" for t in targets))
    assert importers == []


def test_few_top_level_modules_and_short_files():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, top
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_can_fail(tmp_path):
    """On a made-up package: a function-level upward import, and a cycle, are both reported."""
    pkg = tmp_path / "darktune"
    for rel, text in {"__init__.py": "", "darknet/__init__.py": "", "train/__init__.py": "",
                      "darknet/cfg.py": "def f():\n    from darktune.train.loop import g\n",
                      "train/loop.py": "from darktune.train.steps import h\n",
                      "train/steps.py": "from darktune.train.loop import g\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    edges, upward, lazy = graph(pkg)
    assert upward == ["darktune/darknet/cfg.py:2: darknet (layer 2) imports darktune.train.loop (layer 4)"]
    assert lazy == ["darktune/darknet/cfg.py:2 imports darktune.train.loop inside a function"]
    assert cycles(edges) == [["darktune.train.loop", "darktune.train.steps"]]
