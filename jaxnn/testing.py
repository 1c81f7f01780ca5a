r"""Test helpers: assert that gradients match, and hypothesis strategies for inputs away from kinks.

For a test suite, pytest or otherwise:

```python
from jaxnn.testing import assert_gradients_match

def test_my_rule():
    assert_gradients_match(my_custom_vjp_function, x, w)    # AssertionError: the report
    assert_gradients_match(my_layer, (4, 3))                 # a jaxnn Layer and its in_shape
```

The strategies need ``hypothesis`` (imported when a strategy is made, so this module imports
without it):

```python
@hypothesis.given(inputs_away_from_kinks((4, 3), (3,), kinks=(0.0,)))
def test_my_rule(args):
    assert_gradients_match(my_function, *args)
```

Why keep away from kinks: the finite differences of
[`jaxnn.gradcheck`][jaxnn.gradcheck] evaluate the function at $\theta_i \pm \varepsilon$ and
$\theta_i \pm 2\varepsilon$ ($\varepsilon$ = 1e-3 by default), so an entry $\theta_i$ with
$\lvert \theta_i - k \rvert > 2\varepsilon$ for every kink $k$ has its whole stencil on one
side of the kink. The checker would skip the others (and count them), checking less.

Examples:
    >>> import jax, jaxnn
    >>> from jaxnn.testing import assert_gradients_match
    >>> assert_gradients_match(jax.nn.relu, jax.numpy.array([1.0, -2.0])).passed
    True
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxnn import gradcheck
from jaxnn.core import Layer

__all__ = ["GradientCheckFailure", "arrays_away_from_kinks", "assert_gradients_match",
           "inputs_away_from_kinks"]


def assert_gradients_match(fn_or_layer: Callable | Layer, *args: Any,
                           allow_unverified: bool = False,
                           **kwargs: Any) -> gradcheck.GradcheckReport:
    """Checks a layer's or a function's derivative and fails the test with the report's table.

    A [`jaxnn.Layer`][jaxnn.Layer] goes to
    [`jaxnn.gradcheck.check_layer`][jaxnn.gradcheck.check_layer] (``args``: its
    ``in_shape``, if any), anything else to
    [`jaxnn.gradcheck.check_function`][jaxnn.gradcheck.check_function] (``args``:
    the function's arguments); ``kwargs`` go along unchanged (``argnums=``, ``reference=``,
    ``seed=``, ``x=``, ``train=``, ...).

    A leaf no reference could judge (every finite-difference entry at a kink or not finite,
    and no finite autodiff) is ``unverified``: it fails the assertion unless
    ``allow_unverified=True``.

    Returns:
      The report, when every comparison passed.

    Raises:
      AssertionError: some comparison failed, or a leaf is unverified; the message names the
        arguments' shapes and the worst entry, then the report's table, so the failing leaf,
        its error against each reference and its worst entry are in the test's output.
      GradientCheckFailure: the same, inside a ``hypothesis`` test: it is not an
        ``Exception``, so hypothesis reports the first failing input at once instead of
        shrinking it for minutes.

    Examples:
        A function with a custom rule, and a rule that is wrong:

        >>> from jaxnn.testing import assert_gradients_match
        >>> @jax.custom_vjp
        ... def square(x):
        ...     return x ** 2
        >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (2 * x * g,))
        >>> assert_gradients_match(square, jnp.array([0.5, -1.5])).passed
        True
        >>> square.defvjp(lambda x: (x ** 2, x), lambda x, g: (x * g,))
        >>> assert_gradients_match(square, jnp.array([0.5, -1.5]))
        Traceback (most recent call last):
        ...
        AssertionError: gradients of square do not match at (2,) float64; worst entry x[0] ...
        ...

        A layer, with its input shape:

        >>> assert_gradients_match(jaxnn.tanh(), (2, 3)).passed
        True
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's source
    if isinstance(fn_or_layer, Layer):
        report = gradcheck.check_layer(fn_or_layer, *args, **kwargs)
        what = f"layer {fn_or_layer.name}"
    else:
        report = gradcheck.check_function(fn_or_layer, *args, **kwargs)
        what = report.comparisons[0].layer if report.comparisons else repr(fn_or_layer)
    if report.failures:
        _fail(f"gradients of {what} do not match at {_shapes(args, kwargs)}; "
              f"{_worst(report)}:\n{report.table()}")
    if report.unverified and not allow_unverified:
        _fail(f"gradients of {what} unverified at {_shapes(args, kwargs)} (no entry of "
              f"{', '.join(p for _, p in report.unverified)} compared with any reference; "
              f"allow_unverified=True accepts it):\n{report.table()}")
    return report


class GradientCheckFailure(BaseException):
    """A failed [`assert_gradients_match`][jaxnn.testing.assert_gradients_match] inside a
    ``hypothesis`` test.

    A ``BaseException``, not an ``AssertionError``: hypothesis shrinks a failing example by
    re-running the test on smaller inputs, which for a gradient check means minutes of fresh
    compilations; this exception passes through hypothesis at once, and pytest reports the
    first failing input, whose shapes and worst entry the message names.

    Examples:
        >>> from jaxnn.testing import GradientCheckFailure
        >>> issubclass(GradientCheckFailure, Exception)
        False
    """


def _fail(message: str) -> None:
    """Raises ``AssertionError``, or ``GradientCheckFailure`` inside a hypothesis test."""
    __tracebackhide__ = True
    hypothesis = sys.modules.get("hypothesis")
    inside = hypothesis is not None and hypothesis.control.currently_in_test_context()
    if inside:
        raise GradientCheckFailure(message + "\n(raised past hypothesis: no shrinking)")
    raise AssertionError(message)


def _shapes(args: tuple, kwargs: dict) -> str:
    """The arguments' shapes and dtypes, in one line: ``(4, 3) float64, (3,) float64``."""
    leaves = jax.tree.leaves((args, kwargs.get("x")))
    return ", ".join(f"{tuple(np.shape(a))} {getattr(a, 'dtype', type(a).__name__)}"
                     for a in leaves) or "no array arguments"


def _worst(report: gradcheck.GradcheckReport) -> str:
    """The worst failing entry in words."""
    worst = max(report.failures, key=lambda c: c.max_relative_error / max(c.tolerance, 1e-300))
    where = "" if worst.worst_index is None else f"{list(worst.worst_index)}"
    return (f"worst entry {worst.parameter}{where} vs {worst.reference}: relative error "
            f"{worst.max_relative_error:.2e} > {worst.tolerance:.0e}")


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
    r"""A hypothesis strategy of float64 arrays of ``shape``, every entry at least ``margin``
    from each of ``kinks`` and within ``[-bound - 2·margin, bound + 2·margin]``.

    Entries are drawn in $[-\text{bound}, \text{bound}]$; an entry $x$ closer than ``margin``
    to a kink $k$ is moved out to $k \pm \text{margin}$, on its own side ($k + \text{margin}$
    when $x \ge k$), a hair beyond so that rounding keeps it out.

    Finite differences with step $\varepsilon$ see a kink only within $2\varepsilon$ of it
    ($\varepsilon$ = 1e-3 by default), so ``margin = 0.05`` keeps every stencil on one side. The
    kinks must lie at least ``2·margin`` apart, or moving an entry away from one can bring it to
    another.

    Args:
      shape: the arrays' shape.
      kinks: where the function checked is not smooth.
      margin: the smallest distance of an entry from a kink.
      bound: the range entries are drawn from, before moving.

    Returns:
      A ``hypothesis`` search strategy.

    Raises:
      ValueError: two kinks lie closer than ``2·margin``.

    Examples:
        Every array drawn keeps 0.05 away from the kinks of ``clip(x, 0, 1)``:

        >>> import hypothesis
        >>> from jaxnn.testing import arrays_away_from_kinks
        >>> @hypothesis.settings(max_examples=20, deadline=None, database=None, derandomize=True,
        ...                      suppress_health_check=[hypothesis.HealthCheck.too_slow])
        ... @hypothesis.given(arrays_away_from_kinks((2, 3), kinks=(0.0, 1.0)))
        ... def test_away(x):
        ...     assert x.shape == (2, 3) and x.dtype == np.float64
        ...     assert np.all(np.abs(x) >= 0.05) and np.all(np.abs(x - 1.0) >= 0.05)
        >>> test_away()
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
    to check.

    Args:
      *shapes: one shape per argument.
      kinks: as for [`arrays_away_from_kinks`][jaxnn.testing.arrays_away_from_kinks].
      margin: as for [`arrays_away_from_kinks`][jaxnn.testing.arrays_away_from_kinks].
      bound: as for [`arrays_away_from_kinks`][jaxnn.testing.arrays_away_from_kinks].

    Returns:
      A ``hypothesis`` search strategy of tuples of float64 arrays.

    Examples:
        >>> import hypothesis
        >>> from jaxnn.testing import inputs_away_from_kinks
        >>> @hypothesis.settings(max_examples=10, deadline=None, database=None, derandomize=True,
        ...                      suppress_health_check=[hypothesis.HealthCheck.too_slow])
        ... @hypothesis.given(inputs_away_from_kinks((4, 3), (3,)))
        ... def test_args(args):
        ...     x, b = args
        ...     assert (x.shape, b.shape) == ((4, 3), (3,))
        ...     assert np.all(np.abs(x) >= 0.05) and np.all(np.abs(b) >= 0.05)
        >>> test_args()

        In a test, each drawn tuple is the arguments of the function checked, as
        ``assert_gradients_match(fn, *args)``.
    """
    from hypothesis import strategies as st

    return st.tuples(*(arrays_away_from_kinks(s, kinks=kinks, margin=margin, bound=bound)
                       for s in shapes))
