"""The README's set-up commands stay true: CI runs the very test command it shows."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _ci_test_command() -> str:
    script = (ROOT / ".ci" / "run").read_text()
    block = re.search(r"# --- the README's test command.*?\n(.*?)\n# --- end ---", script, re.S)
    assert block, ".ci/run lost its marked test command"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert _ci_test_command() in readme


def test_readme_has_the_main_job_and_the_test_set_up_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    setup = [b for b in blocks if "pip install" in b]
    assert len(setup) == 2, "the README must keep exactly two set-up commands"
    assert "-m venv" in setup[0] and "pip install -e ." in setup[0]
    assert _ci_test_command() in setup[1]
