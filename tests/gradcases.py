"""Shared pieces of the gradient-check tests.

Each test module of a layer family declares ``GRADCHECK_CASES``: a dict from the exported name
(``"dense"``, ``"binary_cross_entropy"``) to a list of cases, and runs them with
:func:`run_layer_case` / :func:`run_loss_case`. ``tests/test_registry.py`` fails when an exported
layer or loss has no entry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

import jaxnn


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """A layer, the input shape to check it at, and extra arguments for ``check_layer``."""

    make: Callable[[], jaxnn.Layer]
    in_shape: tuple[int, ...]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    away_from_zero: bool = False  # inputs at least 0.05 from 0, for layers with a kink there

    def __repr__(self) -> str:
        return f"{self.make().name}{self.in_shape}"


@dataclasses.dataclass(frozen=True)
class LossCase:
    loss: jaxnn.Loss
    prediction: Any
    target: Any

    def __repr__(self) -> str:
        return f"{self.loss.name}{tuple(np.shape(self.prediction))}"


def kink_free_input(shape: tuple[int, ...], seed: int = 0) -> jnp.ndarray:
    """Standard normal entries pushed at least 0.05 away from 0 (finite differences use ±2e-3)."""
    u = np.random.default_rng(seed).normal(size=shape)
    return jnp.asarray(np.sign(u) * (0.05 + np.abs(u)))


def run_layer_case(case: LayerCase, seed: int = 0) -> jaxnn.gradcheck.GradcheckReport:
    kwargs = dict(case.kwargs)
    if case.away_from_zero:
        kwargs.setdefault("x", kink_free_input(case.in_shape, seed))
    report = jaxnn.gradcheck.check_layer(case.make(), case.in_shape, seed=seed, **kwargs)
    assert report.comparisons, "the check compared nothing"
    assert report.passed, "\n" + report.table()
    return report


def run_loss_case(case: LossCase, seed: int = 0) -> jaxnn.gradcheck.GradcheckReport:
    report = jaxnn.gradcheck.check_loss(case.loss, case.prediction, case.target, seed=seed)
    assert report.comparisons, "the check compared nothing"
    assert report.passed, "\n" + report.table()
    return report
