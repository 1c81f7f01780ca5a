"""docs/guides/reliability.md names a test for every bad input; every test it names exists; the
messages it shows are the ones its code prints."""

import ast
import contextlib
import io
import os
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


_FENCES = re.compile(r"(?P<before>[^\n]*\n)?^```(?P<lang>python|text)[^\n]*\n(?P<code>.*?)^```",
                     re.S | re.M)


def shown_and_printed(page: pathlib.Path, workdir: pathlib.Path) -> list[tuple[str, str]]:
    """Runs a guide's Python blocks in order, in one namespace, inside ``workdir``; for each
    Python block followed by a ```` ```text ```` block, returns (the text shown, what the block
    printed)."""
    fences = list(_FENCES.finditer(page.read_text()))
    namespace: dict = {"__name__": f"guide_{page.stem}"}
    pairs = []
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for i, fence in enumerate(fences):
            before = fence.group("before") or ""
            if fence.group("lang") != "python" or before.startswith("<!-- not run"):
                continue
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(fence.group("code"), f"{page.name} (block at {fence.start()})",
                             "exec"), namespace)
            following = fences[i + 1] if i + 1 < len(fences) else None
            if following is not None and following.group("lang") == "text":
                pairs.append((following.group("code"), out.getvalue()))
    finally:
        os.chdir(old)
    return pairs


def test_the_reliability_guide_shows_the_messages_its_code_prints(tmp_path):
    """Under each Python block of docs/guides/reliability.md, the ```text block is exactly what
    that block prints: the error messages on the page are the library's, not retyped."""
    pairs = shown_and_printed(ROOT / "docs" / "guides" / "reliability.md", tmp_path)
    assert len(pairs) >= 8
    for shown, printed in pairs:
        assert shown == printed
