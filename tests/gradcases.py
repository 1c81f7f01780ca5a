"""Shared pieces of the gradient-check tests.

The cases themselves live once, in the library (``jaxnn.gradcheck.LAYER_CASES`` /
``LOSS_CASES``, in ``jaxnn/gradcheck/_cases.py``). Each test module of a layer family runs the cases
of its layers, ``GRADCHECK_CASES = registered("dense")``, through :func:`run_layer_case` /
:func:`run_loss_case`.
"""

from __future__ import annotations

from jaxnn import gradcheck
from jaxnn.gradcheck import LAYER_CASES, LOSS_CASES


def registered(*names: str) -> dict[str, tuple]:
    """``{name: its registered cases}`` for the given exported layer or loss names."""
    return {name: LAYER_CASES[name] if name in LAYER_CASES else LOSS_CASES[name]
            for name in names}


def run_layer_case(case: gradcheck.LayerCase, seed: int = 0) -> gradcheck.GradcheckReport:
    report = gradcheck.check_case(case, seed)
    assert report.comparisons, "the check compared nothing"
    assert report.passed, "\n" + report.table()
    return report


run_loss_case = run_layer_case
