"""Every guide's code runs: the Python blocks of the front page and of each page under
docs/guides/, in order.

The blocks of one page share a namespace and run in a scratch folder, exactly as the docs build
runs the guides that draw pictures (``docs/hooks.py``); a block under ``<!-- not run: why -->``
is shown but not run.

A guide that lists ``pictures:`` in its front matter is run by the documentation build itself,
which fails (strict) when its code raises or leaves a picture unwritten; so
``tests/test_docs_site.py::test_the_strict_build_makes_every_page_and_the_guides_pictures`` is
its test, and it is not run a second time here.
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
PAGES = [ROOT / "docs" / "index.md", *GUIDES]


def _hooks():
    spec = importlib.util.spec_from_file_location("jaxnn_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _hooks()


def _draws_pictures(page: pathlib.Path) -> bool:
    return bool(hooks.front_matter(page.read_text()).get("pictures"))


RUN_HERE = [page for page in PAGES if not _draws_pictures(page)]
RUN_BY_THE_BUILD = [page for page in PAGES if _draws_pictures(page)]


@pytest.mark.slow  # each guide trains something end to end: 10-70 s of CPU
@pytest.mark.parametrize("guide", RUN_HERE, ids=lambda p: p.stem)
def test_guide_code_runs(guide, tmp_path):
    """The page's Python blocks run, in order, in one namespace."""
    blocks = hooks.python_blocks(guide.read_text())
    assert blocks, f"{guide.name} has no Python to run"
    hooks.run_guide(guide, tmp_path)


def test_the_guides_that_draw_pictures_are_run_by_the_docs_build():
    """The build's hook runs exactly the guides this file leaves out, so every page with Python
    runs once: here, or in the build that tests/test_docs_site.py checks."""
    assert RUN_BY_THE_BUILD, "no guide draws pictures: run them all here"
    assert "guides/classic.md" in {p.relative_to(ROOT / "docs").as_posix()
                                   for p in RUN_BY_THE_BUILD}
    for page in RUN_BY_THE_BUILD:
        assert page.parent.name == "guides", f"{page.name}: the build runs only docs/guides/"
        assert hooks.python_blocks(page.read_text()), f"{page.name} has no Python to run"


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for guide in GUIDES:
        assert f"guides/{guide.name}" in nav, f"{guide.name} is not in mkdocs.yml's nav"


def test_a_block_marked_not_run_is_skipped_and_the_rest_run_in_order():
    text = ("intro\n```python\nx = 1\n```\n<!-- not run: needs PyTorch -->\n```python\n"
            "import torch\n```\n```python\nx += 1\n```\n")
    assert hooks.python_blocks(text) == ["x = 1\n", "x += 1\n"]
