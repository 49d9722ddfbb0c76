"""Import structure of saturn/ (issue 32 item 4): no import circle between modules, and no private
name (`from saturn.x import _y`) imported across modules. Read from the source with `ast`, imports
inside functions included (a lazy import is still an arrow between two modules).

PENDING lists the packages whose restructuring (issue 32 items 1-3, `saturn/data`) is still under
way; a circle or private import that touches one of them is left to that change. Remove a package
from PENDING when its change lands: the tests then hold it too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator

from tests.helpers.paths import ROOT

PENDING = ("saturn.data",)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} for every module under root/saturn (packages by their name)."""
    out = {}
    for path in sorted((root / "saturn").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> Iterator[tuple[str, str, str]]:
    """(importing module, imported saturn module, imported name or '') for every import."""
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [(a.name, "") for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [(f"{base}.{a.name}", "") if f"{base}.{a.name}" in mods else (base, a.name)
                           for a in node.names]
            else:
                continue
            for target, name in targets:
                while target not in mods and "." in target:
                    target = target.rpartition(".")[0]
                if target in mods and target != mod:
                    yield mod, target, name


def circles(mods: dict[str, Path]) -> list[list[str]]:
    """The strongly connected components of the import graph with more than one module (Tarjan)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _ in imports(mods):
        edges[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in mods:  # iterative, so deep chains need no recursion limit
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _pending(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in PENDING)


def test_no_import_circle_between_modules():
    found = [c for c in circles(module_files()) if not any(_pending(m) for m in c)]
    assert not found, f"import circles (break them: move the shared code down, or pass it in): {found}"


def test_no_private_name_imported_across_modules():
    found = sorted({f"{a} imports {b}.{n}" for a, b, n in imports(module_files())
                    if n.startswith("_") and not n.startswith("__") and not (_pending(a) or _pending(b))})
    assert not found, f"make these public names of the module that owns them, or move the code: {found}"


def test_the_graph_sees_lazy_imports_and_circles(tmp_path):
    """The checker itself: a circle closed by an import inside a function, and a private import."""
    pkg = tmp_path / "saturn" / "p"
    pkg.mkdir(parents=True)
    (tmp_path / "saturn" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from saturn.p.b import _x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n_x = 1\n")
    mods = module_files(tmp_path)
    assert circles(mods) == [["saturn.p.a", "saturn.p.b"]]
    assert ("saturn.p.a", "saturn.p.b", "_x") in set(imports(mods))
