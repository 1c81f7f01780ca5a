"""Every guide's code runs: the Python blocks of the front page and of each page under
docs/guides/, in order.

The blocks of one page share a namespace and run in a scratch folder, exactly as the docs build
runs the guides that draw pictures (``docs/hooks.py``); a block under ``<!-- not run: why -->``
is shown but not run. A guide that lists ``pictures:`` in its front matter must write them.
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


@pytest.mark.slow  # each guide trains something end to end: 10-70 s of CPU
@pytest.mark.parametrize("guide", PAGES, ids=lambda p: p.stem)
def test_guide_code_runs(guide, tmp_path):
    text = guide.read_text()
    blocks = hooks.python_blocks(text)
    assert blocks, f"{guide.name} has no Python to run"
    hooks.run_guide(guide, tmp_path)
    for picture in hooks.front_matter(text).get("pictures", []):
        assert (tmp_path / picture).is_file(), f"{guide.name} did not draw {picture}"


def test_every_guide_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for guide in GUIDES:
        assert f"guides/{guide.name}" in nav, f"{guide.name} is not in mkdocs.yml's nav"


def test_a_block_marked_not_run_is_skipped_and_the_rest_run_in_order():
    text = ("intro\n```python\nx = 1\n```\n<!-- not run: needs PyTorch -->\n```python\n"
            "import torch\n```\n```python\nx += 1\n```\n")
    assert hooks.python_blocks(text) == ["x = 1\n", "x += 1\n"]
