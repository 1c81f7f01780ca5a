"""Every dotted ``jaxnn.…`` name the documentation uses resolves by attribute access from
``import jaxnn``: the pages under ``docs/``, the README, and the docstrings' cross-references
``[text][jaxnn.x.y]`` (issue 20, item 11: ``jaxnn.fit.fit``, ``jaxnn.fit.epoch_batches`` and
``jaxnn.summary.summary`` raised ``AttributeError``, the functions hiding their modules).

The docs' own build resolves names by importing module paths, which finds ``jaxnn.fit.fit`` in
the module even where a user's ``jaxnn.fit.fit`` fails; this test walks attributes as a user's
code does.
"""

from __future__ import annotations

import pathlib
import re

import pytest

import jaxnn
import jaxnn.cli  # the command's package: `import jaxnn` leaves it out, the guides import it

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: ``jaxnn.a.b`` in prose or code, not inside a path (``src/jaxnn.x``) or a longer dotted name
DOTTED = re.compile(r"(?<![\w/.-])jaxnn(?:\.[A-Za-z_]\w*)+")
#: a docstring's cross-reference: ``[`fit`][jaxnn.fit.fit]``
CROSS_REFERENCE = re.compile(r"\]\[(jaxnn(?:\.\w+)*)\]")


def _doc_pages() -> list[pathlib.Path]:
    return [*sorted(ROOT.glob("docs/**/*.md")), ROOT / "README.md"]


def documented_names() -> dict[str, list[str]]:
    """Dotted name -> the files that use it (pages: every ``jaxnn.x.y``; the library's
    sources: cross-references)."""
    names: dict[str, set[str]] = {}
    for page in _doc_pages():
        for match in DOTTED.finditer(page.read_text()):
            names.setdefault(match.group(0), set()).add(str(page.relative_to(ROOT)))
    for source in sorted((ROOT / "jaxnn").rglob("*.py")):
        for match in CROSS_REFERENCE.finditer(source.read_text()):
            names.setdefault(match.group(1), set()).add(str(source.relative_to(ROOT)))
    return {name: sorted(files) for name, files in sorted(names.items())}


def resolve(name: str):
    """``jaxnn.a.b`` as user code reaches it: ``getattr(getattr(jaxnn, "a"), "b")``."""
    obj = jaxnn
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


NAMES = documented_names()


def test_the_collection_finds_the_names_of_each_kind():
    """The collector sees the pages' names, the README's and the cross-references (so the test
    below cannot pass by collecting nothing)."""
    assert len(NAMES) > 100
    assert any(f.startswith("docs/api/") for f in NAMES["jaxnn.fit.epoch_batches"])
    assert "README.md" in NAMES["jaxnn.fit"]
    assert "jaxnn/fit.py" in NAMES["jaxnn.fit.make_epoch"]
    assert not any(name.endswith(".") for name in NAMES)


@pytest.mark.parametrize("name", list(NAMES))
def test_every_documented_name_resolves_by_attribute_access(name):
    """Each dotted name of the docs, the README and the cross-references is an attribute path
    from the ``jaxnn`` package."""
    try:
        resolve(name)
    except AttributeError as err:
        pytest.fail(f"{name} (used in {', '.join(NAMES[name])}) does not resolve: {err}")


def test_functions_that_hide_their_modules_keep_the_modules_names_and_stay_functions():
    """``jaxnn.fit`` and ``jaxnn.summary`` are the functions (signature, help, type unchanged),
    carry their modules' public names, and the modules still import by path."""
    import inspect
    import sys
    import types

    for function, module_name in ((jaxnn.fit, "jaxnn.fit"), (jaxnn.summary, "jaxnn.summary")):
        module = sys.modules[module_name]
        assert isinstance(function, types.FunctionType)
        assert function is getattr(module, function.__name__)
        assert "model" in inspect.signature(function).parameters
        for name in module.__all__:
            assert getattr(function, name) is getattr(module, name)
    from jaxnn.fit import epoch_batches, make_epoch

    assert jaxnn.fit.epoch_batches is epoch_batches
    assert jaxnn.fit.make_epoch is make_epoch
