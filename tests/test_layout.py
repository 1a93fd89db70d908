"""The package's floors (issue: the cluster layer as its own floor): imports flow one way.

Every import of the package's own modules is read from the source (top-level and inside
functions alike), so a lazy import that points upward counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import wheretolearn

ROOT = Path(wheretolearn.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ``wheretolearn.*`` modules that ``path`` imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("wheretolearn")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("wheretolearn"):
                found.add(mod)
                found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (ROOT / parts[1]).is_dir()) \
        else ""


# floor -> the floors it must not import (upward)
_NOT_ABOVE = {
    "cluster": {"online", "datasets", "design", "report", "cli"},
    "datasets": {"online", "design", "report", "cli"},
    "design": {"online", "cli"},
    "report": {"online", "design", "cli"},
    "online": {"cli"},
}


def test_lower_floors_import_nothing_above_them():
    bad = []
    for mod, deps in _graph().items():
        forbidden = _NOT_ABOVE.get(_subpackage(mod), set())
        bad += [f"{mod} -> {d}" for d in deps if _subpackage(d) in forbidden]
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


def test_no_import_circles_between_modules():
    graph = _graph()
    # package __init__ files re-export their modules: leave them out of the circles
    graph = {m: {d for d in ds if not (ROOT.parent / d.replace(".", "/")).is_dir()}
             for m, ds in graph.items() if not (ROOT.parent / m.replace(".", "/")).is_dir()}
    circles = set()
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    circles.add(" -> ".join(sorted(path)))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + (nxt,)))
    assert not circles, "import circles:\n" + "\n".join(sorted(circles))


def _private_imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` of every ``from module import _name`` in ``path`` (relative
    imports resolved; dunder names are not private)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                mod = ".".join(base[:len(base) - node.level + 1]
                               + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out += [(mod, a.name, node.lineno) for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                    and mod.startswith("wheretolearn")]
    return out


def test_no_module_imports_a_private_name_of_another_subpackage():
    """A private name (``_x``) is private to its sub-package: ``online`` may not read
    ``problems.base._REGISTRY`` (it asks ``problem_factory``) nor ``report``'s helpers."""
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        here = _subpackage(_module_name(path))
        for mod, name, line in _private_imports(path):
            if _subpackage(mod) != here:
                bad.append(f"{_module_name(path)}:{line}: from {mod} import {name}")
    assert not bad, "private names read across sub-packages:\n" + "\n".join(bad)
