"""Every exported layer and loss has gradient-check cases, in the one registry.

``jaxnn.gradcheck.LAYER_CASES`` / ``LOSS_CASES`` (``jaxnn/gradcheck/_cases.py``) map each exported
name to its configurations; ``jaxnn gradcheck``, the families' gradient tests and the property
tests draw from them. This test fails when a name in ``jaxnn.layers.__all__`` or
``jaxnn.losses.__all__`` (other than the helpers in ``NOT_LAYERS_OR_LOSSES``) has no cases, so
a new layer cannot land without its check.
"""

import importlib
import pathlib

import pytest

import jaxnn
from jaxnn.gradcheck import LAYER_CASES, LOSS_CASES, NOT_LAYERS_OR_LOSSES
from tests.gradcases import run_layer_case


def test_every_exported_layer_and_loss_has_gradient_check_cases():
    layers = set(jaxnn.layers.__all__) - NOT_LAYERS_OR_LOSSES
    losses = set(jaxnn.losses.__all__) - NOT_LAYERS_OR_LOSSES
    assert not sorted(layers - LAYER_CASES.keys()), "exported layers without gradient-check cases"
    assert not sorted(losses - LOSS_CASES.keys()), "exported losses without gradient-check cases"


def test_registry_has_no_stale_names():
    exported = set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)
    stale = sorted((LAYER_CASES.keys() | LOSS_CASES.keys()) - exported)
    assert not stale, f"gradient-check cases for names that are not exported: {stale}"


def test_layers_and_losses_are_checked_at_three_or_more_configurations():
    for name, cases in {**LAYER_CASES, **LOSS_CASES}.items():
        assert len(cases) >= 3, f"{name} is checked at {len(cases)} configurations, want >= 3"


def _run_by_family_modules() -> set[str]:
    """Names whose cases a family's module runs (``GRADCHECK_CASES = registered(...)``)."""
    names: set[str] = set()
    for path in sorted(pathlib.Path(__file__).parent.glob("test_*.py")):
        if path.stem != "test_registry":
            module = importlib.import_module(f"tests.{path.stem}")
            names |= getattr(module, "GRADCHECK_CASES", {}).keys()
    return names


# a layer registered in jaxnn/gradcheck/_cases.py alone is checked here, at every configuration
_CLAIMED = _run_by_family_modules()
UNCLAIMED = [case for name, cases in {**LAYER_CASES, **LOSS_CASES}.items()
             if name not in _CLAIMED for case in cases]


@pytest.mark.parametrize("case", UNCLAIMED, ids=repr)
def test_registered_cases_no_family_module_runs_pass(case):
    run_layer_case(case)
