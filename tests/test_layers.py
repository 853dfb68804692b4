"""The package's shape: every import (top-level, inside functions, for type checking only)
goes from a later stage to an earlier one, and no modules import each other in a ring."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "search"

# Earliest first: a module may import its own layer and those above it in this list.
LAYERS = [
    ["search", "search.errors", "search.safe_text"],
    ["search.model.protocol", "search.model.tokens"],
    ["search.notes"],
    ["search.model"],
    ["search.storage"],
    ["search.store"],
    ["search.qdrant"],
    ["search.backends"],
    ["search.rank"],
    ["search.indexing"],
    ["search.service"],
    ["search.display"],
    ["search.mcp"],
    ["search.http"],
    ["search.cli", "search.__main__"],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """The layer of the longest prefix that names `module` (search.model.tokens before search.model)."""
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), i
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def imports_of(module: str) -> set[str]:
    """The package's modules `module` imports, wherever in the file the import is (a name that is
    no module of the package but sits inside it, as after a move, is kept to fail the tests)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import late` imports a module; `from .late import x` imports from one
            names = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
        else:
            continue
        found |= {n for n in names if (n in MODULES or n.startswith("search.")) and n != module}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_import_names_a_module_of_the_package(module: str):
    missing = sorted(i for i in GRAPH[module] if i not in MODULES)
    assert not missing, f"{module} imports modules that do not exist: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_to_earlier_layers(module: str):
    later = sorted(i for i in GRAPH[module] if i in MODULES and layer(i) > layer(module))
    assert not later, f"{module} (layer {layer(module)}) imports later stages: {later}"


def test_no_import_cycles():
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        if m in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        for n in sorted(GRAPH[m] & MODULES.keys()):
            visit(n, path + [m])
        done.add(m)

    for m in sorted(GRAPH):
        visit(m, [])


def test_the_walk_sees_imports_inside_functions():
    # cli imports nearly everything lazily, for start-up time; the walk must still see it
    assert {"search.indexing.build", "search.http.server", "search.mcp"} <= GRAPH["search.cli"]


def engine_imports(module: str) -> set[str]:
    """The storage engines' modules and libraries `module` imports, wherever in the file."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    engines = {n for n in found if n in ("faiss", "sqlite3") or n.startswith("qdrant")}
    return engines | {m for m in GRAPH[module] if m == "search.store" or m.startswith("search.store.")}


# Above the storage interface (storage.py, backends.py) nothing may know which engine holds the index (#20).
ABOVE_THE_INTERFACE = sorted(m for m in MODULES if layer(m) > layer("search.backends"))


@pytest.mark.parametrize("module", ABOVE_THE_INTERFACE)
def test_nothing_above_the_storage_interface_imports_an_engine(module: str):
    assert not engine_imports(module), f"{module} imports {sorted(engine_imports(module))}"


def test_the_engine_check_sees_an_engine_import():
    assert {"faiss", "sqlite3"} <= engine_imports("search.store.index")
    assert "search.store.update" in engine_imports("search.backends")
