"""The package's import graph: every arrow points down, and layers see only the core.

The modules of ``jaxnn`` are ranked (docs/design.md, "Architecture"): a module may import only
modules of a lower rank (and, inside ``jaxnn.layers``, its sibling modules). A new module gets a
rank here; an import that goes back up, or a ``jaxnn`` import hidden inside a function to dodge a
cycle, fails this test.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxnn"

#: module → rank; a module imports only modules of a lower rank
RANKS = {
    "jaxnn.core": 0,
    "jaxnn.initializers": 1,
    "jaxnn.layers": 2,
    "jaxnn.losses": 3,
    "jaxnn.activations": 4,
    "jaxnn.chain": 5,
    "jaxnn.train": 6,
    "jaxnn.data_parallel": 8,
    "jaxnn.data": 6,
    "jaxnn.plots": 6,
    "jaxnn.checkpoint": 6,
    "jaxnn.sharding": 7,
    "jaxnn.fit": 8,
    "jaxnn.generate": 6,
    "jaxnn.precision": 7,
    "jaxnn.privacy": 7,
    "jaxnn.ensemble": 7,
    "jaxnn.debug": 7,
    "jaxnn.gradcheck": 7,
    "jaxnn.summary": 7,
    "jaxnn.testing": 8,
    "jaxnn": 10,
    "jaxnn.cli": 11,
    "jaxnn.__main__": 12,
}


def _module_name(path: pathlib.Path) -> str:
    parts = ("jaxnn", *path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _ranked(module: str) -> str:
    """The entry of :data:`RANKS` a module falls under (``jaxnn.layers._dense``: layers)."""
    while module not in RANKS:
        if "." not in module:
            raise KeyError(module)
        module = module.rsplit(".", 1)[0]
    return module


def _jaxnn_imports(tree: ast.AST, module: str):
    """``(line, imported module, at module level)`` for every import of a jaxnn module."""
    top_level = set(map(id, tree.body))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                names = [f"{base}.{node.module}" if node.module else base]
            elif node.module == "jaxnn":
                names = [f"jaxnn.{alias.name}" for alias in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name == "jaxnn" or name.startswith("jaxnn."):
                yield node.lineno, name, id(node) in top_level


MODULES = sorted(PACKAGE.rglob("*.py"))

#: packages whose modules share one rank and may import each other
PACKAGES = {"jaxnn.layers", "jaxnn.cli", "jaxnn.gradcheck"}


def test_every_module_has_a_rank():
    unranked = []
    for path in MODULES:
        try:
            _ranked(_module_name(path))
        except KeyError:
            unranked.append(_module_name(path))
    assert not unranked, f"give these modules a rank in tests/test_layout.py: {unranked}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_and_sit_at_module_level(path):
    module = _module_name(path)
    own = _ranked(module)
    tree = ast.parse(path.read_text())
    for line, imported, at_top in _jaxnn_imports(tree, module):
        target = _ranked(imported)
        where = f"{path.name}:{line} imports {imported}"
        assert at_top, f"{where} inside a function; import it at the top of the module"
        if own == target and own in PACKAGES:
            continue  # a package's modules may use each other (serial of denses, say)
        assert RANKS[target] < RANKS[own], (
            f"{where}: {own} (rank {RANKS[own]}) may import only lower ranks, and "
            f"{target} has rank {RANKS[target]}"
        )


def test_layers_depend_only_on_core_and_initializers():
    allowed = {"jaxnn.core", "jaxnn.initializers", "jaxnn.layers"}
    for path in sorted((PACKAGE / "layers").glob("*.py")):
        module = _module_name(path)
        for line, imported, _ in _jaxnn_imports(ast.parse(path.read_text()), module):
            assert _ranked(imported) in allowed, f"{path.name}:{line} imports {imported}"
