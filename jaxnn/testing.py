"""Test helpers: assert that gradients match, and hypothesis strategies for inputs away from kinks.

For a test suite, pytest or otherwise::

    from jaxnn.testing import assert_gradients_match

    def test_my_rule():
        assert_gradients_match(my_custom_vjp_function, x, w)    # AssertionError: the report
        assert_gradients_match(my_layer, (4, 3))                 # a jaxnn Layer and its in_shape

The strategies need ``hypothesis`` (imported when a strategy is made, so this module imports
without it)::

    @hypothesis.given(inputs_away_from_kinks((4, 3), (3,), kinks=(0.0,)))
    def test_my_rule(args):
        assert_gradients_match(my_function, *args)

>>> import jax, jaxnn
>>> assert_gradients_match(jax.nn.relu, jax.numpy.array([1.0, -2.0])).passed
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxnn import gradcheck
from jaxnn.core import Layer

__all__ = ["arrays_away_from_kinks", "assert_gradients_match", "inputs_away_from_kinks"]


def assert_gradients_match(fn_or_layer: Callable | Layer, *args: Any,
                           **kwargs: Any) -> gradcheck.GradcheckReport:
    """Checks a layer's or a function's derivative and fails the test with the report's table.

    A [`jaxnn.Layer`][jaxnn.Layer] goes to
    [`jaxnn.gradcheck.check_layer`][jaxnn.gradcheck.check_layer] (``args``: its
    ``in_shape``, if any), anything else to
    [`jaxnn.gradcheck.check_function`][jaxnn.gradcheck.check_function] (``args``:
    the function's arguments); ``kwargs`` go along unchanged (``argnums=``, ``reference=``,
    ``seed=``, ``x=``, ``train=``, ...).

    Returns:
      The report, when every comparison passed.

    Raises:
      AssertionError: some comparison failed; the message is the report's table, so the
        failing leaf, its error against each reference and its worst entry are in the test's
        output.
    """
    if isinstance(fn_or_layer, Layer):
        report = gradcheck.check_layer(fn_or_layer, *args, **kwargs)
        what = f"layer {fn_or_layer.name}"
    else:
        report = gradcheck.check_function(fn_or_layer, *args, **kwargs)
        what = gradcheck._function_name(fn_or_layer)
    if not report.passed:
        raise AssertionError(f"gradients of {what} do not match:\n{report.table()}")
    return report


def _away_from(values: np.ndarray, kinks: Sequence[float], margin: float) -> np.ndarray:
    """Moves each entry closer than ``margin`` to a kink out to ``kink ± margin`` (its side)."""
    out = np.array(values, dtype=np.float64)
    push = margin * (1 + 1e-12)  # a hair beyond, so that rounding of kink ± margin stays out
    for kink in kinks:
        offset = out - kink
        near = np.abs(offset) < margin
        out = np.where(near, kink + np.where(offset < 0, -push, push), out)
    return out


def arrays_away_from_kinks(shape: Sequence[int], *, kinks: Sequence[float] = (0.0,),
                           margin: float = 0.05, bound: float = 3.0) -> Any:
    """A hypothesis strategy of float64 arrays of ``shape``, every entry at least ``margin``
    from each of ``kinks`` and within ``[-bound - 2·margin, bound + 2·margin]``.

    Finite differences with step ``ε`` see a kink only within ``2ε`` of it (``ε = 1e-3`` by
    default), so ``margin = 0.05`` keeps every stencil on one side. The kinks must lie at least
    ``2·margin`` apart, or moving an entry away from one can bring it to another.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    kinks = tuple(float(k) for k in kinks)
    gaps = np.diff(np.sort(kinks))
    if gaps.size and float(gaps.min()) < 2 * margin:
        raise ValueError(f"arrays_away_from_kinks: kinks {kinks} closer than 2·margin "
                         f"({2 * margin}) to each other")
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, width=64)
    shape = tuple(int(d) for d in shape)
    return hnp.arrays(np.float64, shape, elements=elements).map(
        lambda a: _away_from(a, kinks, margin))


def inputs_away_from_kinks(*shapes: Sequence[int], kinks: Sequence[float] = (0.0,),
                           margin: float = 0.05, bound: float = 3.0) -> Any:
    """A hypothesis strategy of tuples of arrays, one of each shape in ``shapes``, drawn by
    [`arrays_away_from_kinks`][jaxnn.testing.arrays_away_from_kinks]: the arguments of a function
    to check."""
    from hypothesis import strategies as st

    return st.tuples(*(arrays_away_from_kinks(s, kinks=kinks, margin=margin, bound=bound)
                       for s in shapes))
