"""docs/guides/reliability.md names a test for every bad input; every test it names exists."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _test_names(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_named_in_the_reliability_doc_exists():
    text = (ROOT / "docs" / "guides" / "reliability.md").read_text()
    named, current = [], None
    for file, name in re.findall(r"(test_\w+\.py)?::(test_\w+)", text):
        current = file or current
        assert current, f"{name} is named before any test file"
        named.append((current, name))
    assert len(named) > 40
    missing = [f"{file}::{name}" for file, name in named
               if name not in _test_names(ROOT / "tests" / file)]
    assert not missing, f"docs/guides/reliability.md names tests that do not exist: {missing}"
