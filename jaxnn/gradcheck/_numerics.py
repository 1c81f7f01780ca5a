"""The numbers of a check: relative errors, the finite-difference stencil and its smoothness
test, and the comparison of a hand-derived gradient with its references (module doc of
[`jaxnn.gradcheck`][jaxnn.gradcheck])."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.gradcheck._reports import Comparison, GradcheckReport, Tolerances

__all__ = ["compare"]


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
