"""The README's set-up commands stay true: CI runs the very test command it shows."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ci_test_command() -> str:
    script = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"# --- the README's test command.*?\n(.*?)\n# --- end ---", script, re.S)
    assert block, ".ci/run lost its marked test command"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert _ci_test_command() in readme


def _section(readme: str, title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def test_readme_has_the_main_job_and_the_test_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", _section(readme, "Set up"), re.S)
    setup = [b for b in blocks if "pip install" in b]
    assert len(setup) == 2, "the README must keep exactly two set-up commands"
    assert "-m venv" in setup[0]
    assert 'pip install -e ".[cli]"' in setup[0]
    assert setup[0].strip().endswith("&& jaxnn train"), "the main job is `jaxnn train`"
    assert _ci_test_command() in setup[1]


def test_readme_shows_every_subcommand_and_the_pictures_it_makes():
    from jaxnn import cli

    readme = (ROOT / "README.md").read_text()
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    for command in commands:
        assert f"jaxnn {command}" in readme, f"the README does not show `jaxnn {command}`"
    for picture in re.findall(r"\]\((docs/[^)]+\.png)\)", readme):
        assert (ROOT / picture).is_file(), f"{picture} is shown but missing"
    assert "docs/train_cost.png" in readme
    assert "docs/train_decision_boundary.png" in readme


@pytest.mark.slow
def test_readme_python_examples_run():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_readme_shows_the_docs_build_command_that_ci_runs():
    docs = re.findall(r"```bash\n(.*?)```", _section((ROOT / "README.md").read_text(),
                                                     "Documentation"), re.S)
    assert docs == ['pip install -e ".[docs]" && mkdocs build --strict\n']
    assert docs[0].strip() in (ROOT / ".ci" / "run").read_text()
