r"""Gradient verification: hand-derived backward passes against autodiff and finite differences.

Everything runs in float64. For a layer $f$ the check draws a fixed random cotangent $v$ (standard
normal, the shape of the output) and differentiates the scalar

$$S(\theta) = \sum_{k} v_k \, f_k(\theta)$$

where $\theta$ stands for every parameter and the input, three ways:

* **hand-derived**: ``jax.grad`` of $S$ through [`jaxnn.apply`][jaxnn.apply], i.e. the layer's own
  ``backward`` reached through ``jax.custom_vjp``;
* **jax.grad**: ``jax.grad`` of $S$ through [`jaxnn.reference_apply`][jaxnn.reference_apply], the
  same forward under plain autodiff;
* **finite differences**: the fourth-order central difference below, for each entry $\theta_i$
  of every parameter and of the input (at most ``max_fd_entries`` entries per array, sampled at
  random beyond that). All perturbed points of a check are evaluated by one compiled, vmapped
  function.

With $e_i$ the unit vector of entry $i$ and the step $\varepsilon$ = ``fd_eps`` = 1e-3, the
finite-difference estimate is

$$\hat{g}_i(\varepsilon) = \frac{8\,[S(\theta + \varepsilon e_i) - S(\theta - \varepsilon e_i)] -
[S(\theta + 2\varepsilon e_i) - S(\theta - 2\varepsilon e_i)]}{12\varepsilon}$$

the Richardson combination $\frac{4 D(\varepsilon) - D(2\varepsilon)}{3}$ of two plain central
differences $D(h) = \frac{S(\theta + h e_i) - S(\theta - h e_i)}{2h}$: their $h^2$ error terms
cancel, leaving an error of order $\varepsilon^4$.

An entry where the function is not smooth within the step (a ReLU's kink, a tie of
``max_pool``) is detected and skipped, counted in
[`Comparison.skipped`][jaxnn.gradcheck.Comparison.skipped]; it never fails the check.
``jax.grad`` still sees it. Seven points are evaluated per entry, at the offsets
$-2\varepsilon, -\varepsilon, -\varepsilon/2, 0, \varepsilon/2, \varepsilon, 2\varepsilon$, and
the entry counts as smooth when both of these hold. First, the same stencil at half the step
agrees: $\lvert \hat{g}_i(\varepsilon) - \hat{g}_i(\varepsilon/2) \rvert \le \tau s_i$. Second,
the gap between the right and the left one-sided slopes

$$\Delta(h) = \frac{S(\theta + h e_i) - S(\theta)}{h} - \frac{S(\theta) - S(\theta - h e_i)}{h}$$

halves with the step, as $h \, \partial_i^2 S$ does for a smooth $S$ (at a kink it stays the
jump of the slope): $\lvert \Delta(\varepsilon) - 2\Delta(\varepsilon/2) \rvert \le \tau s_i$.

Both use $\tau$ = ``rtol_fd / 2`` and
$s_i = \max(\lvert \hat{g}_i \rvert, 10^{-3} \max(\text{scale}, \max_j \lvert \hat{g}_j \rvert))$,
``scale`` being the largest ``jax.grad`` entry of the whole check (every parameter and the input).

[`check_layer`][jaxnn.gradcheck.check_layer] checks at the given input shape and at batch 1 (2 in
training mode), since a backward can be right at one batch size and wrong at another.

The error of one array $a$ (hand-derived) against its reference $b$ is reported as the largest
absolute difference $\max_i \lvert a_i - b_i \rvert$ and the largest relative difference

$$\text{rel}(a, b) = \max_i \frac{\lvert a_i - b_i \rvert}
{\max(\lvert a_i \rvert, \lvert b_i \rvert, \text{floor})}
\qquad \text{floor} = 10^{-3} \max(\max_j \lvert b_j \rvert, \text{scale})$$

where ``scale`` is the largest reference entry of the whole check (every parameter and the
input): entries tiny next to the rest of the gradient — rounding noise around an exact zero,
such as the bias gradient of a layer followed by batch normalization — are judged on the
gradient's scale instead of dividing by ~0 (an entry where $a_i = b_i$ has error 0, one where
either is not finite has error $\infty$). A real error still shows: against ``jax.grad`` an entry
of size $g$ that is wrong by 100% gives a relative error of at least
$\min(1, 1000 g / \text{scale})$. A comparison passes when the relative error is within
``rtol_autodiff`` (default 1e-9) against ``jax.grad`` and ``rtol_fd`` (default 1e-6) against
finite differences (both fields of [`Tolerances`][jaxnn.gradcheck.Tolerances]).

Every exported layer and loss is checked at the configurations of
[`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] and
[`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES] (``jaxnn/_gradcases.py``), by
[`check_case`][jaxnn.gradcheck.check_case].

Any JAX function with a ``jax.custom_vjp`` / ``jax.custom_jvp`` rule, a user's or a library's,
is checked by [`check_function`][jaxnn.gradcheck.check_function]: the rule against autodiff of the
function with its rules removed and against finite differences. Every report has one row per
parameter or argument leaf with the index of its worst entry, and renders as text
([`GradcheckReport.table`][jaxnn.gradcheck.GradcheckReport.table]),
Markdown ([`GradcheckReport.markdown`][jaxnn.gradcheck.GradcheckReport.markdown]) and HTML
(in notebooks; see [the verification page](../../verification.md)).

Examples:
    A user's own layer is checked by the same call:

    >>> import jaxnn
    >>> report = jaxnn.gradcheck.check_layer(jaxnn.dense(3), (4, 2))
    >>> report.passed
    True
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import _report_render
from jaxnn._gradcases import (
    LAYER_CASES,
    LOSS_CASES,
    NOT_LAYERS_OR_LOSSES,
    LayerCase,
    LossCase,
    case_input,
)
from jaxnn._undecorated import undecorated
from jaxnn.chain import value_and_grad
from jaxnn.core import Layer, apply, map_leaves, reference_apply, sublayer_labels
from jaxnn.losses import Loss

__all__ = [
    "LAYER_CASES",
    "LOSS_CASES",
    "NOT_LAYERS_OR_LOSSES",
    "Comparison",
    "GradcheckReport",
    "LayerCase",
    "LossCase",
    "Tolerances",
    "case_input",
    "check_case",
    "check_function",
    "check_layer",
    "check_loss",
    "check_model",
    "compare",
]


class Tolerances(NamedTuple):
    r"""The pass thresholds of a check and its finite-difference settings.

    Attributes:
      rtol_autodiff: the largest relative error against ``jax.grad``.
      rtol_fd: the largest relative error against finite differences.
      fd_eps: the finite-difference step $\varepsilon$.
      max_fd_entries: entries per array estimated by finite differences (sampled beyond it).

    Examples:
        The defaults, and looser ones for a check that compares fewer entries:

        >>> from jaxnn.gradcheck import Tolerances
        >>> Tolerances()
        Tolerances(rtol_autodiff=1e-09, rtol_fd=1e-06, fd_eps=0.001, max_fd_entries=1024)
        >>> Tolerances(rtol_fd=1e-5, max_fd_entries=64).rtol_fd
        1e-05

        Every check takes them as ``tolerances=``; a
        [`LayerCase`][jaxnn.gradcheck.LayerCase] sets fields of them in its ``options``.
    """

    rtol_autodiff: float = 1e-9
    rtol_fd: float = 1e-6
    fd_eps: float = 1e-3
    max_fd_entries: int = 1024


DEFAULT_TOLERANCES = Tolerances()


@dataclasses.dataclass(frozen=True)
class Comparison:
    r"""One array's hand-derived gradient against one reference: one row of a
    [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    ``max_relative_error`` is the $\text{rel}(a, b)$ of the [module doc][jaxnn.gradcheck], with
    $a$ the hand-derived gradient and $b$ the reference; the comparison passes when it is at
    most ``tolerance``.

    Examples:
        Checks make them; here is one by hand:

        >>> from jaxnn.gradcheck import Comparison
        >>> c = Comparison("dense", "W", "jax.grad", max_abs_error=3e-12,
        ...                max_relative_error=2e-10, tolerance=1e-9, in_shape=(4, 2))
        >>> c.passed
        True
        >>> c.layer, c.parameter, c.reference
        ('dense', 'W', 'jax.grad')
        >>> import dataclasses
        >>> dataclasses.replace(c, max_relative_error=1e-6).passed
        False
    """

    layer: str
    """The layer (or function) checked; ``"serial/2:dense"`` inside a model."""
    parameter: str
    """The parameter or input leaf: ``"W"``, ``"b"``, ``"input"``, ``"params.W"``, ``"x"``."""
    reference: str
    """What the hand-derived gradient is compared with: ``"jax.grad"`` or
    ``"finite differences"``."""
    max_abs_error: float
    r"""The largest absolute difference $\max_i \lvert a_i - b_i \rvert$."""
    max_relative_error: float
    """The largest relative difference (module doc), the number judged."""
    tolerance: float
    """The threshold ``max_relative_error`` is judged against (``rtol_autodiff`` or
    ``rtol_fd`` of [`Tolerances`][jaxnn.gradcheck.Tolerances])."""
    in_shape: tuple = ()
    """The input's shape at which the gradient was checked (``()`` for a function check)."""
    skipped: int = 0
    """Finite-difference entries at non-smooth points (a kink within the step), left out of
    the comparison and counted here (0 in the rows against ``jax.grad``)."""
    worst_index: tuple[int, ...] | None = None
    """The index of the entry with the largest relative error (``None`` when nothing was
    compared)."""
    errors: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    """Per-entry relative errors (NaN where not compared), for plots; not part of equality."""

    @property
    def passed(self) -> bool:
        """``max_relative_error <= tolerance``."""
        return bool(self.max_relative_error <= self.tolerance)


@dataclasses.dataclass
class GradcheckReport:
    """The comparisons of a check, one per layer, parameter and reference.

    Every check of this module returns one. It renders as a table, one row per (layer,
    parameter) with its error against each reference: ``str(report)`` and
    [`table`][jaxnn.gradcheck.GradcheckReport.table] as plain text,
    [`markdown`][jaxnn.gradcheck.GradcheckReport.markdown] for GitHub, and as HTML in notebooks.

    Examples:
        A report of two comparisons, one failing (checks fill them in; these are by hand):

        >>> from jaxnn.gradcheck import Comparison, GradcheckReport
        >>> report = GradcheckReport([
        ...     Comparison("dense", "W", "jax.grad", 1e-12, 1e-11, 1e-9, (4, 2)),
        ...     Comparison("dense", "W", "finite differences", 1e-3, 2e-4, 1e-6, (4, 2),
        ...                worst_index=(1, 0)),
        ... ])
        >>> report.passed, report.failing_layers
        (False, ['dense'])
        >>> print(report.table())
        layer  parameter  rel. err vs jax.grad  rel. err vs finite diff.  worst entry
        -----  ---------  --------------------  ------------------------  -----------  ----
        dense  W          1.00e-11              2.00e-04                  (1, 0)       FAIL
        >>> report.raise_if_failed()
        Traceback (most recent call last):
        ...
        AssertionError: gradient check failed:
        ...
    """

    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    """Every [`Comparison`][jaxnn.gradcheck.Comparison], in the order checked."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What was left out, and why (printed below the table)."""

    @property
    def passed(self) -> bool:
        """Whether every comparison passed."""
        return all(c.passed for c in self.comparisons)

    @property
    def failures(self) -> list[Comparison]:
        """The comparisons that failed."""
        return [c for c in self.comparisons if not c.passed]

    @property
    def failing_layers(self) -> list[str]:
        """Names of the layers with a failing comparison, in report order, without repeats."""
        return list(dict.fromkeys(c.layer for c in self.failures))

    def extend(self, other: GradcheckReport) -> None:
        """Appends ``other``'s comparisons and notes to this report."""
        self.comparisons.extend(other.comparisons)
        self.notes.extend(other.notes)

    def table(self) -> str:
        """A plain-text table: layer, parameter, error vs jax.grad, error vs finite differences,
        the worst entry's index, pass/fail; notes below.

        A row holds the largest error over the input shapes checked; finite-difference entries
        skipped at non-smooth points are counted below the table.
        """
        return _report_render.text(self)

    def markdown(self) -> str:
        """The table in GitHub-flavoured Markdown."""
        return _report_render.markdown(self)

    def _repr_html_(self) -> str:
        """The table in HTML, as notebooks show it."""
        return _report_render.html(self)

    def __str__(self) -> str:
        return self.table()

    def raise_if_failed(self) -> None:
        """Raises ``AssertionError`` with the table when some comparison failed."""
        if not self.passed:
            raise AssertionError("gradient check failed:\n" + self.table())


# --- comparing arrays ---------------------------------------------------------------------------


def compare(actual: Any, expected: Any, scale: float = 0.0) -> tuple[float, float]:
    r"""``(max_abs_error, max_relative_error)`` of two arrays, as defined in the module doc.

    With $a$ = ``actual`` and $b$ = ``expected``:

    $$\max_i \lvert a_i - b_i \rvert \qquad
    \max_i \frac{\lvert a_i - b_i \rvert}
    {\max(\lvert a_i \rvert, \lvert b_i \rvert, \text{floor})}$$

    ``scale`` is the largest gradient entry of the whole check (all parameters and the input);
    the floor of the relative error's denominator is
    $\text{floor} = 10^{-3} \max(\max_j \lvert b_j \rvert, \text{scale})$. Entries that are
    equal count 0; if any difference is not finite both errors are ``inf``; empty arrays give
    ``(0.0, 0.0)``.

    Args:
      actual: the gradient judged (the hand-derived one).
      expected: the reference (``jax.grad`` or finite differences), of the same shape.
      scale: the largest gradient entry of the whole check (0: ``expected``'s own).

    Returns:
      ``(max_abs_error, max_relative_error)`` as floats.

    Raises:
      ValueError: the shapes differ.

    Examples:
        >>> from jaxnn.gradcheck import compare
        >>> abs_err, rel_err = compare(np.array([1.0, 2.0]), np.array([1.0, 2.002]))
        >>> round(abs_err, 6), round(rel_err, 6)
        (0.002, 0.000999)

        An entry near an exact zero is judged on the floor, not on its own size:

        >>> abs_err, rel_err = compare(np.array([1e-9, 1.0]), np.array([0.0, 1.0]))
        >>> round(rel_err, 9)
        1e-06
    """
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"compare: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0, 0.0
    diff = np.abs(a - b)
    if not np.all(np.isfinite(diff)):
        return math.inf, math.inf
    return float(np.max(diff)), float(np.max(_relative_errors(a, b, scale)))


def _relative_errors(actual, expected, scale: float = 0.0) -> np.ndarray:
    """Entry-wise ``|a − b| / max(|a|, |b|, floor)`` as in [`compare`][jaxnn.gradcheck.compare]
    (``inf`` where either
    is not finite)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    diff = np.abs(a - b)
    floor = 1e-3 * max(float(np.max(np.abs(b[np.isfinite(b)]), initial=0.0)), scale)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.where(denom == 0, 1.0, denom))
    return np.where(np.isfinite(diff), rel, np.inf)


def _located_comparison(layer: str, parameter: str, reference: str, errors: np.ndarray,
                        abs_error: float, tolerance: float, in_shape: tuple = (),
                        skipped: int = 0) -> Comparison:
    """A [`Comparison`][jaxnn.gradcheck.Comparison] of per-entry ``errors`` (NaN where not
    compared), with the index
    of the worst entry and the errors kept for plotting."""
    compared = ~np.isnan(errors)
    if not compared.any():
        return Comparison(layer, parameter, reference, 0.0, 0.0, tolerance, in_shape, skipped,
                          errors=errors)
    worst = int(np.argmax(np.where(compared, errors, -1.0)))
    index = tuple(int(i) for i in np.unravel_index(worst, errors.shape))
    return Comparison(layer, parameter, reference, abs_error, float(errors.flat[worst]),
                      tolerance, in_shape, skipped, index, errors)


def _fd_errors(hand: np.ndarray, positions: np.ndarray, estimates: np.ndarray,
               smooth: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
    """Per-entry errors of ``hand`` against finite differences (NaN where none was taken or the
    point is not smooth), and the largest absolute difference."""
    at, fd = hand.reshape(-1)[positions[smooth]], estimates[smooth]
    errors = np.full(hand.shape, np.nan)
    errors.reshape(-1)[positions[smooth]] = _relative_errors(at, fd, scale)
    return errors, float(np.max(np.abs(at - fd), initial=0.0))


# offsets of the evaluated points, in steps ε: two central stencils (ε and ε/2) share ±ε
_OFFSETS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def _finite_differences(fn: Callable, arrays: list, wrt: Sequence[int],
                        tolerances: Tolerances, scale: float,
                        rng: np.random.Generator) -> list[tuple]:
    """Fourth-order central differences of scalar ``fn(*arrays)`` w.r.t. each ``arrays[i]``.

    Every perturbed point of every array is evaluated by one compiled, vmapped function. Returns
    ``(flat_positions, estimates, smooth)`` per array of ``wrt``; ``smooth`` is false where the
    function is not smooth within the step (``_stencils``).
    """
    eps, max_entries = tolerances.fd_eps, tolerances.max_fd_entries
    sizes = [int(arrays[i].size) for i in wrt]
    positions = [np.arange(n) if n <= max_entries else
                 np.sort(rng.choice(n, size=max_entries, replace=False)) for n in sizes]
    starts = np.cumsum([0, *sizes[:-1]])
    flat_index = np.concatenate([p + s for p, s in zip(positions, starts, strict=True)])

    def at(theta):
        args = list(arrays)
        for i, start, n in zip(wrt, starts, sizes, strict=True):
            args[i] = theta[start:start + n].reshape(arrays[i].shape)
        return fn(*args)

    def perturbed(theta, index):
        steps = eps * jnp.asarray(_OFFSETS, theta.dtype)
        return jax.vmap(lambda h: at(theta.at[index].add(h)))(steps)

    theta = jnp.concatenate([jnp.ravel(arrays[i]) for i in wrt])
    table = jax.jit(lambda t, idx: jax.lax.map(lambda k: perturbed(t, k), idx, batch_size=128))(
        theta, jnp.asarray(flat_index))
    estimates, smooth = _stencils(np.asarray(table), eps, tolerances.rtol_fd / 2, scale)
    bounds = np.cumsum([0, *(len(p) for p in positions)])
    return [(p, estimates[a:b], smooth[a:b])
            for p, a, b in zip(positions, bounds[:-1], bounds[1:], strict=True)]


def _stencils(table: np.ndarray, eps: float, tolerance: float,
              scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The derivative estimates of a row of ``S`` at ``_OFFSETS``, and where they can be trusted.

    The estimate is the fourth-order stencil at step ``ε``. The point counts as smooth when
    (a) the same stencil at ``ε/2`` agrees with it, and (b) the gap between the right and left
    slopes, ``(S(ε) − S(0))/ε − (S(0) − S(−ε))/ε``, halves with the step, as ``ε·S''`` does
    for a smooth ``S``; at a kink it stays the jump of the slope. Both are judged on
    ``tolerance·max(|estimate|, 1e-3·scale)``, as [`compare`][jaxnn.gradcheck.compare] judges
    errors.
    """
    m2, m1, mh, center, ph, p1, p2 = table.T
    estimate = (8 * (p1 - m1) - (p2 - m2)) / (12 * eps)
    half_step = (8 * (ph - mh) - (p1 - m1)) / (6 * eps)
    gap_change = (p1 - 2 * center + m1) / eps - 2 * (ph - 2 * center + mh) / (eps / 2)
    size = np.maximum(np.abs(estimate), 1e-3 * max(scale, _largest([estimate])))
    limit = tolerance * np.where(size == 0, 1.0, size)
    smooth = (np.abs(estimate - half_step) <= limit) & (np.abs(gap_change) <= limit)
    return estimate, smooth


def _draw_input(key: jax.Array, in_shape: Sequence[int], input_dtype: Any) -> jax.Array:
    """Standard normal entries, or integer ids in ``[0, 4)`` for an integer ``input_dtype``."""
    shape = tuple(int(d) for d in in_shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"check_layer: in_shape must be concrete, got {shape}")
    if input_dtype is not None and jnp.issubdtype(input_dtype, jnp.integer):
        return jax.random.randint(key, shape, 0, 4).astype(input_dtype)
    return jax.random.normal(key, shape, jnp.float64)


def _shape_of(x) -> tuple:
    """``x.shape``, or the tuple of the shapes of a tuple input (what ``init`` takes)."""
    if isinstance(x, tuple | list):
        return tuple(_shape_of(a) for a in x)
    return tuple(jnp.shape(x))


def _to_float64(tree):
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, tree)


def _leaf_names(tree) -> list[str]:
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        names.append("".join(_key_name(k) for k in path).lstrip(".") or "(array)")
    return names


def _key_name(k) -> str:
    if isinstance(k, jax.tree_util.DictKey):
        return f".{k.key}"
    if isinstance(k, jax.tree_util.SequenceKey):
        return f"[{k.idx}]"
    if isinstance(k, jax.tree_util.GetAttrKey):
        return f".{k.name}"
    return str(k)


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def _largest(arrays: Sequence) -> float:
    """The largest finite ``|entry|``: a NaN or inf in one reference entry (autodiff of ``‖x‖``
    at 0, say) must not turn the scale, and with it every comparison, into NaN."""
    return max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
                for a in map(np.asarray, arrays) if np.size(a)), default=0.0)


def _check_scalar(layer_name: str, hand_fn: Callable, reference_fn: Callable, arrays: list,
                  names: list[str], tolerances: Tolerances, seed: int,
                  in_shape: tuple = ()) -> GradcheckReport:
    """Checks the gradient of scalar ``fn(*arrays)`` w.r.t. every floating-point array."""
    wrt = [i for i, a in enumerate(arrays) if _is_float(a) and a.size]
    both = jax.jit(lambda *a: (jax.grad(hand_fn, argnums=wrt)(*a),
                               jax.grad(reference_fn, argnums=wrt)(*a)))  # one compilation
    hand, auto = both(*arrays)
    return _compare_with_references([(layer_name, names[i]) for i in wrt], hand, auto,
                                    reference_fn, arrays, tolerances, seed, wrt, in_shape)


def _compare_with_references(names: Sequence[tuple[str, str]], hand: Sequence,
                             auto: Sequence, reference_fn: Callable, arrays: list,
                             tolerances: Tolerances, seed: int, wrt: Sequence[int] | None = None,
                             in_shape: tuple = ()) -> GradcheckReport:
    """Compares ``hand[j]``, the gradient w.r.t. ``arrays[wrt[j]]`` named ``names[j]`` (layer,
    parameter), with ``auto[j]`` (``jax.grad`` of ``reference_fn``) and with finite differences
    of ``reference_fn``.

    Finite-difference entries at a point where ``reference_fn`` is not smooth within the step
    are skipped and counted in [`Comparison.skipped`][jaxnn.gradcheck.Comparison.skipped], never
    failed.
    """
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    scale = _largest(auto)
    estimates = _finite_differences(reference_fn, arrays, wrt, tolerances, scale,
                                    np.random.default_rng(seed))
    report = GradcheckReport()
    for (layer, parameter), h, a, (positions, fd, smooth) in zip(names, hand, auto, estimates,
                                                                 strict=True):
        h, a = np.asarray(h), np.asarray(a)
        report.comparisons.append(_located_comparison(
            layer, parameter, "jax.grad", _relative_errors(h, a, scale),
            float(np.max(np.abs(h - a), initial=0.0)), tolerances.rtol_autodiff, in_shape))
        errors, abs_err = _fd_errors(h, positions, fd, smooth, scale)
        report.comparisons.append(_located_comparison(
            layer, parameter, "finite differences", errors, abs_err, tolerances.rtol_fd,
            in_shape, int(np.sum(~smooth))))
    return report


# --- layers ------------------------------------------------------------------------------------


def check_layer(
    layer: Layer,
    in_shape: Sequence[int] | None = None,
    *,
    params: Any = None,
    state: Any = None,
    x: Any = None,
    key: jax.Array | None = None,
    train: bool = False,
    seed: int = 0,
    input_dtype: Any = None,
    name: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> GradcheckReport:
    r"""Checks ``layer.backward`` against ``jax.grad`` and finite differences, in float64.

    Args:
      layer: any [`jaxnn.Layer`][jaxnn.Layer], a user's own included.
      in_shape: the input shape, batch axis first (all entries concrete); a tuple of shapes for
        a layer taking a tuple of arrays ([`jaxnn.concatenate`][jaxnn.concatenate]). Not needed
        when ``x`` is
        given.
      params: the layer's parameters; made by ``layer.init`` when omitted.
      state: the layer's state; made by ``layer.init`` when omitted.
      x: the input, an array or a tuple of arrays; standard normal entries when omitted
        (integer ids in ``[0, 4)`` when ``input_dtype`` is an integer type: then only the
        parameters' gradients are checked).
      key: the PRNG key handed to ``forward`` (dropout); from ``seed`` when omitted in training.
      train: the mode to check (batch statistics, dropout masks).
      seed: seeds the parameters, input, cotangent and finite-difference sampling.
      name: the name used in the report (default ``layer.name``).
      batch_sizes: further batch sizes to check at besides ``in_shape``'s, since a backward can
        be right at one and wrong at another; by default the smallest the mode allows, 1 (2 in
        training mode: batch statistics need two examples). Ignored when ``x`` is given.
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport]: a row per parameter and input
      (``"input[i]"`` per entry of a tuple), for $S = \sum_k \sum v_k \odot y_k$ with a random
      cotangent $v_k$ per output $y_k$.

    Examples:
        A dense layer checked at input shape ``(3, 2)`` and, by default, at batch 1:

        >>> from jaxnn.gradcheck import check_layer
        >>> report = check_layer(jaxnn.dense(2), (3, 2))
        >>> report.passed
        True
        >>> sorted({c.in_shape for c in report.comparisons})
        [(1, 2), (3, 2)]
        >>> print(report.table())
        layer  parameter  rel. err vs jax.grad  rel. err vs finite diff.  worst entry
        -----  ---------  --------------------  ------------------------  -----------  ----
        dense  W          ...  pass
        dense  b          ...  pass
        dense  input      ...  pass
    """
    with jax.enable_x64(True):
        k_init, k_x, k_v, k_fwd = jax.random.split(jax.random.key(seed), 4)
        shapes = [] if x is not None else _batch_variants(in_shape, batch_sizes, train)
        inputs = [x] if x is not None else [_draw_layer_input(k_x, shape, input_dtype)
                                             for shape in shapes]
        inputs = [_to_float64(inp) for inp in inputs]
        if params is None or state is None:
            _, p0, s0 = layer.init(k_init, _shape_of(inputs[0]))
            params = p0 if params is None else params
            state = s0 if state is None else state
        params, state = _to_float64(params), _to_float64(state)
        if key is None and train:
            key = k_fwd
        report = GradcheckReport()
        for inp in inputs:
            call = functools.partial(_layer_scalar, layer, params, state, inp, k_v, key, train)
            leaves = [*jax.tree.leaves(params), *jax.tree.leaves(inp)]
            input_names = ["input" + ("" if n == "(array)" else n) for n in _leaf_names(inp)]
            names = [*_leaf_names(params), *input_names]
            report.extend(_check_scalar(name or layer.name, call(apply), call(reference_apply),
                                        leaves, names, tolerances, seed, _shape_of(inp)))
        return report


def _batch_variants(in_shape: Sequence | None, batch_sizes: Sequence[int] | None,
                    train: bool) -> list:
    """``in_shape``, then ``in_shape`` with each other batch size (every entry of a tuple)."""
    if in_shape is None:
        raise ValueError("check_layer: give in_shape or x")
    if batch_sizes is None:
        batch_sizes = (2,) if train else (1,)
    tuple_input = bool(in_shape) and all(isinstance(d, Sequence) for d in in_shape)
    first = in_shape[0][0] if tuple_input else in_shape[0]

    def with_batch(b):
        return tuple((b, *s[1:]) for s in in_shape) if tuple_input else (b, *in_shape[1:])

    return [tuple(in_shape), *(with_batch(b) for b in dict.fromkeys(batch_sizes) if b != first)]


def _draw_layer_input(key: jax.Array, in_shape: Sequence, input_dtype: Any) -> Any:
    """An input of ``in_shape``: one array, or a tuple of arrays for a tuple of shapes."""
    if in_shape and all(isinstance(d, Sequence) for d in in_shape):  # a tuple input
        keys = jax.random.split(key, len(in_shape))
        return tuple(_draw_input(k, s, input_dtype) for k, s in zip(keys, in_shape, strict=True))
    return _draw_input(key, in_shape, input_dtype)


def _layer_scalar(layer: Layer, params, state, x, cotangent_key: jax.Array, key, train: bool,
                  path_fn: Callable) -> Callable:
    """``S(*param_leaves, *input_leaves) = Σ_i Σ v_i ⊙ y_i`` through ``path_fn``.

    ``path_fn`` is [`jaxnn.apply`][jaxnn.apply] (the hand-derived backward) or
    [`jaxnn.reference_apply`][jaxnn.reference_apply]; the cotangents ``v_i`` are drawn once from
    ``cotangent_key``
    for the reference output's leaves.
    """
    y, _ = reference_apply(layer, params, state, x, key=key, train=train)
    y_leaves, y_def = jax.tree.flatten(y)
    keys = jax.random.split(cotangent_key, len(y_leaves)) if len(y_leaves) > 1 else [
        cotangent_key]
    cotangents = [jax.random.normal(k, leaf.shape, jnp.float64)
                  for k, leaf in zip(keys, y_leaves, strict=True)]
    treedef, n_params = jax.tree.structure(params), len(jax.tree.leaves(params))
    x_def = jax.tree.structure(x)

    def scalar(*arrays):
        p = jax.tree.unflatten(treedef, arrays[:n_params])
        inp = jax.tree.unflatten(x_def, arrays[n_params:])
        out, _ = path_fn(layer, p, state, inp, key=key, train=train)
        out_leaves, out_def = jax.tree.flatten(out)
        if out_def != y_def:
            raise ValueError(f"check_layer: the output's structure {out_def} differs from the "
                             f"reference's {y_def}")
        return sum(jnp.sum(v * o) for v, o in zip(cotangents, out_leaves, strict=True))

    return scalar


# --- losses ------------------------------------------------------------------------------------


def check_loss(loss: Loss, prediction: Any, target: Any, *, seed: int = 0,
               tolerances: Tolerances = DEFAULT_TOLERANCES) -> GradcheckReport:
    r"""Checks ``loss.grad`` (the hand-derived $\partial J / \partial a$) in float64.

    The hand-derived side is ``loss(prediction, target)``, whose ``jax.custom_vjp`` runs
    ``loss.grad``; the references are ``jax.grad`` of ``loss.value`` and finite differences of
    it, as in the module doc. The report has one row, named ``loss.name`` / ``"prediction"``.

    Args:
      loss: a [`jaxnn.Loss`][jaxnn.Loss] (``jaxnn.mean_squared_error``, a user's own).
      prediction: the network's output $a$ at which to differentiate.
      target: the labels $y$ (held fixed).
      seed: seeds the finite-difference sampling.
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    Examples:
        >>> from jaxnn.gradcheck import check_loss
        >>> a = jnp.array([[0.2], [0.9], [0.4]])
        >>> y = jnp.array([[0.0], [1.0], [1.0]])
        >>> report = check_loss(jaxnn.binary_cross_entropy, a, y)
        >>> report.passed
        True
        >>> [(c.layer, c.parameter, c.reference) for c in report.comparisons]
        [('binary_cross_entropy', 'prediction', 'jax.grad'),
         ('binary_cross_entropy', 'prediction', 'finite differences')]
    """
    with jax.enable_x64(True):
        prediction, target = _to_float64(prediction), _to_float64(target)

        def hand(p):
            return loss(p, target)

        def reference(p):
            return loss.value(p, target)

        return _check_scalar(loss.name, hand, reference, [prediction], ["prediction"],
                             tolerances, seed)


# --- the registered cases ----------------------------------------------------------------------


def check_case(case: LayerCase | LossCase, seed: int = 0) -> GradcheckReport:
    """Checks one case of [`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] /
    [`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES] (or a user's own case).

    A [`LayerCase`][jaxnn.gradcheck.LayerCase] goes to
    [`check_layer`][jaxnn.gradcheck.check_layer] with its input shape, its ``options``
    (those naming [`Tolerances`][jaxnn.gradcheck.Tolerances] fields set the tolerances) and the
    input [`case_input`][jaxnn.gradcheck.case_input] draws; a
    [`LossCase`][jaxnn.gradcheck.LossCase] goes to [`check_loss`][jaxnn.gradcheck.check_loss]
    with the inputs it draws from ``numpy.random.default_rng(seed)``.

    Args:
      case: the case.
      seed: seeds the inputs, parameters, cotangent and finite-difference sampling.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    Examples:
        >>> from jaxnn.gradcheck import LAYER_CASES, LOSS_CASES, check_case
        >>> case = LAYER_CASES["relu"][0]
        >>> case, case.inputs
        (relu[3x4], 'away_from_zero')
        >>> check_case(case).passed
        True
        >>> check_case(LOSS_CASES["mean_squared_error"][0]).passed
        True
    """
    if isinstance(case, LossCase):
        prediction, target = case.make_inputs(np.random.default_rng(seed))
        return check_loss(case.loss, prediction, target, seed=seed)
    options = {k: v for k, v in case.options.items() if k not in Tolerances._fields}
    tolerances = DEFAULT_TOLERANCES._replace(
        **{k: v for k, v in case.options.items() if k in Tolerances._fields})
    x = case_input(case, seed)
    if x is not None:
        options.setdefault("x", x)
    return check_layer(case.make(), case.in_shape, seed=seed, tolerances=tolerances, **options)


# --- whole models ------------------------------------------------------------------------------


def _record_inputs(model: Layer, params, state, x, key, train) -> list[tuple]:
    """Runs ``model.forward`` once and returns ``(path, leaf, params, state, x, key)`` per leaf."""
    records: list[tuple] = []

    def wrap(leaf: Layer, path: str) -> Layer:
        def forward(p, s, inp, *, key=None, train=False):
            records.append((path, leaf, p, s, inp, key))
            return leaf.forward(p, s, inp, key=key, train=train)

        return leaf._replace(forward=forward)

    recorder = map_leaves(wrap, model)
    recorder.forward(params, state, x, key=key, train=train)
    return records


def check_model(
    model: Layer,
    loss: Loss,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = (),
    key: jax.Array | None = None,
    train: bool = False,
    seed: int = 0,
    per_layer: bool = True,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> GradcheckReport:
    """Checks a whole network and its loss, and names the layer whose backward is wrong.

    Three parts, all in float64:

    1. the gradient of ``J = loss(model(x), y)`` for every parameter, from the explicit
       hand-derived chain ([`jaxnn.value_and_grad`][jaxnn.value_and_grad], no autodiff), against
       ``jax.grad`` of
       the reference path and against finite differences; rows are named
       ``"<path>"`` / ``"<parameter>"``, e.g. ``"serial/2:dense"`` / ``"W"``;
    2. with ``per_layer``, each leaf layer on its own, at the very input it receives inside the
       model (so a wrong backward in a layer without parameters is named too);
    3. the loss's own derivative at the model's output.

    Args:
      model: the network.
      loss: its loss.
      params: the network's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      state: the network's state (``()`` for none).
      key: the PRNG key of the forward pass (dropout).
      train: the mode to check.
      seed: seeds the cotangents and the finite-difference sampling.
      per_layer: also check each leaf layer alone (part 2).
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport]; ``report.failing_layers`` names
      the layers at fault.

    Examples:
        >>> from jaxnn.gradcheck import check_model
        >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
        >>> y = jnp.ones((4, 1))
        >>> report = check_model(net, jaxnn.mean_squared_error, params, x, y)
        >>> report.passed, report.failing_layers
        (True, [])
        >>> list(dict.fromkeys(c.layer for c in report.comparisons))
        ['serial/0:dense', 'serial/2:dense', 'serial/0:dense (alone)', 'serial/1:tanh (alone)',
         'serial/2:dense (alone)', 'mean_squared_error']
    """
    with jax.enable_x64(True):
        params, state = _to_float64(params), _to_float64(state)
        x, y = _to_float64(x), _to_float64(y)
        report = _check_model_parameters(model, loss, params, state, x, y, key, train,
                                         tolerances, seed)
        if per_layer:
            for path, leaf, p, s, inp, k in _record_inputs(model, params, state, x, key, train):
                report.extend(check_layer(leaf, params=p, state=s, x=inp, key=k, train=train,
                                          seed=seed, name=f"{path} (alone)",
                                          tolerances=tolerances))
        out, _ = reference_apply(model, params, state, x, key=key, train=train)
        report.extend(check_loss(loss, out, y, seed=seed, tolerances=tolerances))
        return report


def _check_model_parameters(model: Layer, loss: Loss, params, state, x, y, key, train: bool,
                            tolerances: Tolerances, seed: int) -> GradcheckReport:
    """Part 1 of [`check_model`][jaxnn.gradcheck.check_model]: every parameter's gradient through
    the explicit chain."""
    leaves, treedef = jax.tree.flatten(params)
    explicit = value_and_grad(model, loss, train=train)

    def reference(*arrays):
        out, _ = reference_apply(model, jax.tree.unflatten(treedef, arrays), state, x, key=key,
                                 train=train)
        return loss.value(out, y)

    def both(p):  # one compilation for the explicit chain and jax.grad
        (_, _), hand_grads = explicit(p, state, x, y, key)
        leaves = jax.tree.leaves(p)
        return jax.tree.leaves(hand_grads), jax.grad(reference, argnums=tuple(range(len(leaves))))(
            *leaves)

    hand, auto = jax.jit(both)(params)
    return _compare_with_references(_parameter_names(model, params), hand, auto, reference,
                                    leaves, tolerances, seed, in_shape=_shape_of(x))


def _parameter_names(model: Layer, params) -> list[tuple[str, str]]:
    """``(layer_path, parameter_name)`` for every leaf of ``params``, in flattening order.

    The layer path names each sublayer by its name in a named combinator
    (``serial/head:dense``) or by its position (``serial/1:dense``).
    """
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        layer, where, keys = model, model.name, list(path)
        while keys and layer.sublayers:
            label = _sublayer_key(layer, keys[0])
            if label is None:
                break
            keys.pop(0)
            i = sublayer_labels(layer).index(label)
            layer = layer.sublayers[i]
            where = f"{where}/{label}:{layer.name}"
        param = "".join(_key_name(k) for k in keys).lstrip(".") or "(array)"
        out.append((where, param))
    return out


def _sublayer_key(layer: Layer, key) -> str | None:
    """The label of the sublayer a tree-path key selects in a combinator's params, or None."""
    if layer.names and isinstance(key, jax.tree_util.DictKey) and key.key in layer.names:
        return key.key
    if not layer.names and isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    return None


# --- any function with a custom derivative rule -----------------------------------------------


def check_function(
    fn: Callable,
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    reference: Callable | None = None,
    seed: int = 0,
    name: str | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> GradcheckReport:
    """Checks the derivative JAX uses for ``fn`` (its custom rule) at ``args``, in float64.

    ``fn`` is any function of positional pytree arguments returning a pytree, typically a
    ``jax.custom_vjp`` or ``jax.custom_jvp`` function, possibly under ``jax.jit``, or a function
    calling such rules. With a fixed random cotangent ``v`` per output leaf the check
    differentiates ``S = Σ v ⊙ fn(*args)`` three ways:

    * **the rule**: ``jax.grad`` of ``S`` through ``fn`` as JAX runs it;
    * **jax.grad**: plain autodiff of ``S`` through ``reference``, by default ``fn`` with every
      custom rule replaced by the computation it wraps (``fn.fun``, at any depth, also inside
      ``jax.jit``: see ``jaxnn._undecorated``);
    * **finite differences** of ``S`` through ``fn`` (kink-safe: an entry within a step of a
      non-smooth point is skipped and counted, never failed; the stencil and the test are the
      module doc's).

    At a non-smooth point any one-sided slope is a valid derivative, and the rule and plain
    autodiff may pick different ones: entries the finite differences find non-smooth are left
    out of the comparison with ``jax.grad`` too.

    Args:
      fn: the function whose derivative is checked.
      *args: where to check it; floating-point leaves are cast to float64.
      argnums: the arguments to differentiate (default: all). Integer and boolean leaves are
        held fixed and named in the report's notes.
      reference: another implementation of the same function to differentiate by autodiff.
        When omitted and ``fn`` uses no custom rule, only finite differences are compared (a
        note says so).
      seed: seeds the cotangent and the finite-difference sampling.
      name: the name in the report's first column (default ``fn.__name__``).
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport] with one row per differentiated leaf,
      named by the argument
      (``"x"``, ``"params.W"``, ``"args[1][0]"``), with the index of its worst entry.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxnn.gradcheck import check_function
        >>> @jax.custom_vjp
        ... def cube(x):
        ...     return x ** 3
        >>> cube.defvjp(lambda x: (x ** 3, x), lambda x, g: (3 * x ** 2 * g,))
        >>> report = check_function(cube, jnp.arange(1.0, 4.0))
        >>> report.passed
        True
        >>> [(c.parameter, c.reference) for c in report.comparisons]
        [('x', 'jax.grad'), ('x', 'finite differences')]

        A wrong rule fails, and the report names the argument:

        >>> @jax.custom_vjp
        ... def wrong(x):
        ...     return x ** 3
        >>> wrong.defvjp(lambda x: (x ** 3, x), lambda x, g: (2 * x ** 2 * g,))
        >>> check_function(wrong, jnp.arange(1.0, 4.0)).failing_layers
        ['wrong']
    """
    with jax.enable_x64(True):
        name = name or _function_name(fn)
        args = tuple(_to_float64_leaves(a) for a in args)
        target = _differentiated_leaves(fn, name, args, argnums)
        if not target.names:
            raise ValueError(f"check_function({name}): no floating-point leaf to differentiate "
                             f"among the arguments {argnums if argnums is not None else 'given'}"
                             + "".join(f"; {note}" for note in target.notes))
        report = GradcheckReport(notes=list(target.notes))
        arrays = [target.leaves[i] for i in target.indices]
        checked = target.bind(fn)  # a function of the differentiated leaves only
        out_tree, cotangents = _cotangents(checked, name, arrays, jax.random.key(seed))
        scalar = _cotangent_scalar(checked, name, out_tree, cotangents)
        ref_scalar = _reference_scalar(target, checked, reference, name, arrays, out_tree,
                                       cotangents, report)
        report.extend(_compare_leaves(name, target.names, arrays, scalar, ref_scalar,
                                      tolerances, seed))
        return report


def _reference_scalar(target, checked, reference, name, arrays, out_tree, cotangents, report):
    """``S`` through the user's ``reference`` when given, else through ``fn`` undecorated."""
    if reference is not None:
        return _cotangent_scalar(target.bind(reference), "reference", out_tree, cotangents)
    return _undecorated_scalar(checked, name, arrays, out_tree, cotangents, report)


def _undecorated_scalar(checked: Callable, name: str, arrays: list, out_tree, cotangents: list,
                        report: GradcheckReport) -> Callable | None:
    """``S`` through ``checked`` with its custom rules removed; None, and a note in ``report``,
    when it has no rule to remove (then only finite differences are compared)."""
    plain, rules = undecorated(checked, *arrays)
    if rules:
        return _cotangent_scalar(plain, name, out_tree, cotangents)
    report.notes.append(f"{name}: no custom_vjp/custom_jvp rule found (outside scan/while/cond "
                        f"bodies), compared with finite differences only; pass reference= to "
                        f"compare with another implementation's autodiff")
    return None


class _Target(NamedTuple):
    """The arguments of a function check, flattened: which leaves are differentiated."""

    leaves: list  # every leaf of every argument
    tree: Any  # the treedef of the argument tuple
    indices: list[int]  # positions in ``leaves`` of the differentiated leaves
    names: list[str]  # their row names
    notes: list[str]  # the leaves left out, and why

    def bind(self, fn: Callable) -> Callable:
        """``fn`` as a function of the differentiated leaves; the other leaves are closed over,
        so that they stay what they are (a Python int stays static, never a tracer)."""

        def bound(*differentiated):
            leaves = list(self.leaves)
            for i, value in zip(self.indices, differentiated, strict=True):
                leaves[i] = value
            return fn(*jax.tree.unflatten(self.tree, leaves))

        return bound


def _function_name(fn: Callable) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


def _to_float64_leaves(tree):
    """Floating-point leaves (Python floats included) as float64 arrays; others unchanged."""

    def cast(x):
        if isinstance(x, float) or (hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)):
            return jnp.asarray(x, jnp.float64)
        return x

    return jax.tree.map(cast, tree)


def _argument_names(fn: Callable, count: int) -> list[str]:
    """The names of ``fn``'s first ``count`` positional parameters, ``args[i]`` where unknown."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = []
    for i in range(count):
        p = parameters[min(i, len(parameters) - 1)] if parameters else None
        if p is not None and p.kind == p.VAR_POSITIONAL:
            names.append(f"{p.name}[{i - parameters.index(p)}]")
        elif p is not None and i < len(parameters) and p.kind in (p.POSITIONAL_ONLY,
                                                                  p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        else:
            names.append(f"args[{i}]")
    return names


def _differentiated_leaves(fn: Callable, name: str, args: tuple,
                           argnums: int | Sequence[int] | None) -> _Target:
    """Flattens ``args`` and picks the floating-point leaves of the arguments in ``argnums``."""
    positions = range(len(args)) if argnums is None else (
        [argnums] if isinstance(argnums, int) else list(argnums))
    for p in positions:
        if not -len(args) <= p < len(args):
            raise ValueError(f"check_function({name}): argnums {p} out of range for "
                             f"{len(args)} argument(s)")
    wanted = {p % len(args) for p in positions}
    arg_names = _argument_names(fn, len(args))
    with_paths, tree = jax.tree_util.tree_flatten_with_path(args)
    leaves, indices, names, notes = [], [], [], []
    for i, (path, leaf) in enumerate(with_paths):
        leaves.append(leaf)
        position = path[0].idx
        row = arg_names[position] + "".join(_key_name(k) for k in path[1:])
        if position not in wanted:
            continue
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            if leaf.size:
                indices.append(i)
                names.append(row)
        elif isinstance(leaf, bool | int) or (dtype is not None and (
                jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_))):
            notes.append(f"{row} ({dtype or type(leaf).__name__}) skipped: integer, no gradient")
        elif dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating):
            notes.append(f"{row} ({dtype}) skipped: complex arguments are not checked")
    return _Target(leaves, tree, indices, names, notes)


def _cotangents(fn: Callable, name: str, arrays: list, key: jax.Array) -> tuple[Any, list]:
    """The output's structure and a standard normal cotangent per floating-point output leaf
    (``None`` for the others, which do not enter ``S``)."""
    out = jax.eval_shape(fn, *arrays)
    out_leaves, out_tree = jax.tree.flatten(out)
    keys = jax.random.split(key, max(len(out_leaves), 1))
    cotangents = [jax.random.normal(k, o.shape, jnp.float64)
                  if jnp.issubdtype(o.dtype, jnp.floating) else None
                  for k, o in zip(keys, out_leaves, strict=False)]
    if not any(v is not None for v in cotangents):
        raise ValueError(f"check_function({name}): the output has no floating-point leaf")
    return out_tree, cotangents


def _cotangent_scalar(f: Callable, label: str, out_tree, cotangents: list) -> Callable:
    """``S(*differentiated) = Σ v ⊙ f(*differentiated)`` over the floating-point output
    leaves."""

    def scalar(*differentiated):
        out = f(*differentiated)
        out_leaves, tree = jax.tree.flatten(out)
        if tree != out_tree:
            raise ValueError(f"check_function: {label} returns structure {tree}, expected "
                             f"{out_tree} (the checked function's)")
        for v, o in zip(cotangents, out_leaves, strict=True):
            if v is not None and jnp.shape(o) != v.shape:
                raise ValueError(f"check_function: {label} returns an output of shape "
                                 f"{jnp.shape(o)}, expected {v.shape} (the checked function's)")
        return sum(jnp.sum(v * o) for v, o in zip(cotangents, out_leaves, strict=True)
                   if v is not None)

    return scalar


def _compare_leaves(name: str, names: Sequence[str], arrays: list, scalar: Callable,
                    reference: Callable | None, tolerances: Tolerances,
                    seed: int) -> GradcheckReport:
    """Compares ``jax.grad(scalar)`` with ``jax.grad(reference)`` and with finite differences
    of ``scalar``, one pair of rows per differentiated leaf.

    At a non-smooth point any one-sided slope is a valid derivative, and the rule and plain
    autodiff may pick different ones (``jax.nn.relu``'s rule says 0 at 0, autodiff of
    ``max(x, 0)`` says 0.5): entries the finite differences find non-smooth are left out of
    both comparisons, and counted.
    """
    wrt = tuple(range(len(arrays)))
    hand = [np.asarray(g) for g in jax.jit(jax.grad(scalar, argnums=wrt))(*arrays)]
    auto = None if reference is None else [
        np.asarray(g) for g in jax.jit(jax.grad(reference, argnums=wrt))(*arrays)]
    scale = _largest(hand if auto is None else auto)
    estimates = _finite_differences(scalar, arrays, list(wrt), tolerances, scale,
                                    np.random.default_rng(seed))
    report = GradcheckReport()
    for parameter, h, a, (positions, fd, smooth) in zip(
            names, hand, auto or [None] * len(hand), estimates, strict=True):
        if a is not None:
            errors, diff = _relative_errors(h, a, scale), np.abs(h - a)
            errors.reshape(-1)[positions[~smooth]] = np.nan
            report.comparisons.append(_located_comparison(
                name, parameter, "jax.grad", errors,
                float(np.max(diff[~np.isnan(errors)], initial=0.0)), tolerances.rtol_autodiff))
        errors, abs_err = _fd_errors(h, positions, fd, smooth, scale)
        report.comparisons.append(_located_comparison(
            name, parameter, "finite differences", errors, abs_err, tolerances.rtol_fd,
            skipped=int(np.sum(~smooth))))
    return report
