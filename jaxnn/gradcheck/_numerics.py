"""The numbers of a check: relative errors, the finite-difference stencil and its smoothness
test, and the comparison of a hand-derived gradient with its references (module doc of
[`jaxnn.gradcheck`][jaxnn.gradcheck])."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

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


# --- the precision a computation really runs in ------------------------------------------------


class Precision(NamedTuple):
    """The lowest floating-point precision among the values a computation produces."""

    dtype: str  # "float64", "float32", "bfloat16", "float16"
    epsilon: float  # its machine epsilon (2⁻⁵² for float64)

    @property
    def reduced(self) -> bool:
        """Whether it is below float64."""
        return self.dtype != "float64"


FLOAT64 = Precision("float64", float(np.finfo(np.float64).eps))


def _sub_jaxprs(value) -> list:
    """The jaxprs held by one equation parameter (a jit's, a scan's, a cond's branches...)."""
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, tuple | list):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _float_dtypes(jaxpr, found: set) -> set:
    for var in [*jaxpr.invars, *jaxpr.constvars]:
        _add_float(var, found)
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            _add_float(var, found)
        for value in eqn.params.values():
            for inner in _sub_jaxprs(value):
                _float_dtypes(inner, found)
    return found


def _add_float(var, found: set) -> None:
    dtype = getattr(getattr(var, "aval", None), "dtype", None)
    if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
        found.add(np.dtype(dtype))


def computing_precision(fn: Callable, *args: Any) -> Precision:
    r"""The lowest floating-point precision ``fn(*args)`` computes in, read from its traced
    program: every value of every equation, inside ``jit``, ``scan``, ``while_loop``, ``cond``,
    ``checkpoint`` and kernel bodies too. A float64 call whose softmax runs in float32
    (``jax.nn.dot_product_attention``) computes in float32.
    """
    found = _float_dtypes(jax.make_jaxpr(fn)(*args).jaxpr, set())
    if not found:
        return FLOAT64
    worst = max(found, key=lambda d: float(jnp.finfo(d).eps))
    return Precision(str(worst), float(jnp.finfo(worst).eps))


def autodiff_tolerance(tolerances: Tolerances, precision: Precision) -> float:
    r"""The tolerance against autodiff: $\max(\text{rtol\_autodiff}, \nu\,\epsilon_c)$, with
    $\nu$ = ``noise_factor`` and $\epsilon_c$ the machine epsilon of the computing precision."""
    return max(tolerances.rtol_autodiff, tolerances.noise_factor * precision.epsilon)


def finite_difference_step(tolerances: Tolerances, precision: Precision) -> float:
    r"""The step $h$: ``fd_eps`` in float64; below it
    $h = \text{fd\_eps}\,(\epsilon_c / \epsilon_{64})^{1/5}$ (the step that balances the
    stencil's $h^4$ truncation against its $\epsilon_c / h$ rounding), rounded to a power of two
    so that $\theta \pm h$ is exact in the arguments' own dtype."""
    if not precision.reduced:
        return tolerances.fd_eps
    h = tolerances.fd_eps * (precision.epsilon / FLOAT64.epsilon) ** 0.2
    return float(2.0 ** np.round(np.log2(h)))


# --- finite differences ------------------------------------------------------------------------


class Estimates(NamedTuple):
    """Finite-difference estimates of one array's gradient, at the entries sampled."""

    positions: np.ndarray  # flat positions estimated
    value: np.ndarray  # the fourth-order estimate
    smooth: np.ndarray  # the function is smooth within the step there
    finite: np.ndarray  # every point of the stencil is finite
    noise: np.ndarray  # the estimate's rounding-noise floor (absolute)
    left: np.ndarray  # the one-sided slopes at step ε/2, for a kink's valid choices
    right: np.ndarray


# offsets of the evaluated points, in steps ε: two central stencils (ε and ε/2) share ±ε
_OFFSETS = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)


def _finite_differences(fn: Callable, arrays: list, wrt: Sequence[int],
                        tolerances: Tolerances, scale: float, rng: np.random.Generator,
                        precision: Precision = FLOAT64,
                        magnitude_fn: Callable | None = None) -> tuple[list[Estimates], int]:
    """Fourth-order central differences of scalar ``fn(*arrays)`` w.r.t. each ``arrays[i]``.

    Every perturbed point of every array is evaluated by one compiled, vmapped function, which
    also evaluates ``magnitude_fn`` (``[Σ |v ⊙ f|, non-finite output entries]``: the size of
    the terms summed into ``S``, for the rounding-noise floor; ``[|S|, 0]`` when omitted).
    Returns one ``Estimates`` per array of ``wrt``, and the number of non-finite output
    entries.
    """
    eps, max_entries = finite_difference_step(tolerances, precision), tolerances.max_fd_entries
    sizes = [int(arrays[i].size) for i in wrt]
    positions = [np.arange(n) if n <= max_entries else
                 np.sort(rng.choice(n, size=max_entries, replace=False)) for n in sizes]
    starts = np.cumsum([0, *sizes[:-1]])
    flat_index = np.concatenate([p + s for p, s in zip(positions, starts, strict=True)])

    def at(theta):
        args = list(arrays)
        for i, start, n in zip(wrt, starts, sizes, strict=True):
            args[i] = theta[start:start + n].reshape(arrays[i].shape).astype(arrays[i].dtype)
        return fn(*args)

    def perturbed(theta, index):
        steps = eps * jnp.asarray(_OFFSETS, theta.dtype)
        return jax.vmap(lambda h: at(theta.at[index].add(h)))(steps)

    def table(t, idx):
        rows = jax.lax.map(lambda k: perturbed(t, k), idx, batch_size=128)
        if magnitude_fn is None:
            return rows, jnp.stack([jnp.abs(at(t)), jnp.zeros((), t.dtype)])
        return rows, magnitude_fn(*arrays)

    theta = jnp.concatenate([jnp.ravel(arrays[i]).astype(jnp.float64) for i in wrt])
    values, (magnitude, bad_outputs) = jax.jit(table)(theta, jnp.asarray(flat_index))
    unit = tolerances.noise_factor * precision.epsilon * float(magnitude)
    estimates = _stencils(np.asarray(values, np.float64), eps, tolerances.rtol_fd / 2, scale,
                          unit)
    bounds = np.cumsum([0, *(len(p) for p in positions)])
    return [Estimates(p, *(e[a:b] for e in estimates))
            for p, a, b in zip(positions, bounds[:-1], bounds[1:], strict=True)], int(bad_outputs)


def _stencils(table: np.ndarray, eps: float, tolerance: float, scale: float,
              unit: float = 0.0) -> tuple[np.ndarray, ...]:
    """The derivative estimates of a row of ``S`` at ``_OFFSETS``, and where they can be trusted.

    The estimate is the fourth-order stencil at step ``ε``. The point counts as smooth when
    (a) the same stencil at ``ε/2`` agrees with it, and (b) the gap between the right and left
    slopes, ``(S(ε) − S(0))/ε − (S(0) − S(−ε))/ε``, halves with the step, as ``ε·S''`` does
    for a smooth ``S``; at a kink it stays the jump of the slope. Both are judged on
    ``tolerance·max(|estimate|, 1e-3·scale)`` plus what rounding noise of size ``unit`` in each
    value of ``S`` can make of them (4.5·unit/ε and 20·unit/ε); the estimate's own noise floor
    is 1.5·unit/ε.

    Returns ``(estimate, smooth, finite, noise, left, right)``.
    """
    m2, m1, mh, center, ph, p1, p2 = table.T
    finite = np.all(np.isfinite(table), axis=1)
    with np.errstate(invalid="ignore"):
        estimate = (8 * (p1 - m1) - (p2 - m2)) / (12 * eps)
        half_step = (8 * (ph - mh) - (p1 - m1)) / (6 * eps)
        gap_change = (p1 - 2 * center + m1) / eps - 2 * (ph - 2 * center + mh) / (eps / 2)
        size = np.maximum(np.abs(estimate),
                          1e-3 * max(scale, _largest([estimate[finite]])))
        limit = tolerance * np.where(size == 0, 1.0, size)
        smooth = finite & (np.abs(estimate - half_step) <= limit + 4.5 * unit / eps) & (
            np.abs(gap_change) <= limit + 20 * unit / eps)
        left, right = (center - mh) / (eps / 2), (ph - center) / (eps / 2)
    noise = np.full(estimate.shape, 1.5 * unit / eps)
    return estimate, smooth, finite, noise, left, right


def _largest(arrays: Sequence) -> float:
    """The largest finite ``|entry|``: a NaN or inf in one reference entry (autodiff of ``‖x‖``
    at 0, say) must not turn the scale, and with it every comparison, into NaN."""
    return max((float(np.max(np.abs(a[np.isfinite(a)]), initial=0.0))
                for a in map(np.asarray, arrays) if np.size(a)), default=0.0)


# --- judging: every entry compared with every reference that is finite there ------------------


def _located_comparison(layer: str, parameter: str, reference: str, errors: np.ndarray,
                        abs_error: float, tolerance: float, in_shape: tuple = (),
                        **counts: Any) -> Comparison:
    """A [`Comparison`][jaxnn.gradcheck.Comparison] of per-entry ``errors`` (NaN where not
    compared), with the index of the worst entry, the number compared and the errors kept for
    plotting."""
    compared = ~np.isnan(errors)
    n = int(np.sum(compared))
    if not n:
        return Comparison(layer, parameter, reference, 0.0, 0.0, tolerance, in_shape,
                          errors=errors, compared=0, **counts)
    worst = int(np.argmax(np.where(compared, errors, -1.0)))
    index = tuple(int(i) for i in np.unravel_index(worst, errors.shape))
    return Comparison(layer, parameter, reference, abs_error, float(errors.flat[worst]),
                      tolerance, in_shape, worst_index=index, errors=errors, compared=n,
                      **counts)


def _autodiff_comparison(layer: str, parameter: str, hand: np.ndarray, auto: np.ndarray,
                         fd: Estimates | None, tolerance: float, scale: float, in_shape: tuple,
                         rtol_fd: float) -> Comparison:
    """The hand-derived gradient against autodiff at every entry where autodiff is finite.

    Where the two differ at an entry the finite differences found a kink at, the hand-derived
    value is accepted when it lies between the one-sided slopes there (any of them is a valid
    derivative at a kink: ``jax.nn.relu``'s rule says 0 at 0, autodiff of ``max(x, 0)`` 0.5),
    and counted in ``kinks``.
    """
    finite = np.isfinite(auto)
    errors = _relative_errors(hand, auto, scale)
    errors[~finite] = np.nan
    kinks = 0
    if fd is not None:
        flat = errors.reshape(-1)
        kink = fd.finite & ~fd.smooth
        at = fd.positions[kink]
        wrong = flat[at] > tolerance
        lo = np.minimum(fd.left[kink], fd.right[kink])
        hi = np.maximum(fd.left[kink], fd.right[kink])
        slack = rtol_fd * np.maximum(np.abs(hi) + np.abs(lo), 1e-3 * scale) + fd.noise[kink]
        value = hand.reshape(-1)[at]
        valid = wrong & (value >= lo - slack) & (value <= hi + slack)
        flat[at[valid]] = 0.0
        kinks = int(np.sum(valid))
    diff = np.abs(hand - auto)[~np.isnan(errors)]
    return _located_comparison(
        layer, parameter, "jax.grad", errors, float(np.max(diff, initial=0.0)), tolerance,
        in_shape, skipped=int(np.sum(~finite)), not_finite=int(np.sum(~finite)), kinks=kinks)


def _fd_comparison(layer: str, parameter: str, hand: np.ndarray, fd: Estimates,
                   tolerance: float, scale: float, in_shape: tuple, precision: Precision,
                   outputs_not_finite: bool = False) -> Comparison:
    """The hand-derived gradient against finite differences where they are finite and smooth,
    judged on the error beyond the estimate's rounding-noise floor.

    With ``outputs_not_finite`` (some output entries NaN/inf, left out of ``S``), a hand-derived
    entry that is not finite is not compared either: its zero cotangent times the infinite
    local derivative there makes it NaN, as autodiff's is."""
    finite = fd.finite & (np.isfinite(hand.reshape(-1)[fd.positions]) | (not outputs_not_finite))
    fd = fd._replace(finite=finite)
    ok = fd.finite & fd.smooth
    at, estimate, noise = hand.reshape(-1)[fd.positions[ok]], fd.value[ok], fd.noise[ok]
    floor = 1e-3 * max(_largest([estimate]), scale)
    denom = np.maximum(np.maximum(np.abs(at), np.abs(estimate)), floor)
    denom = np.where(denom == 0, 1.0, denom)
    excess = np.maximum(np.abs(at - estimate) - noise, 0.0)
    with np.errstate(invalid="ignore"):
        rel = np.where(np.isfinite(at), excess / denom, np.inf)
    errors = np.full(hand.shape, np.nan)
    errors.reshape(-1)[fd.positions[ok]] = rel
    noisy = int(np.sum(noise > tolerance * denom))
    kinks = int(np.sum(fd.finite & ~fd.smooth))
    not_finite = int(np.sum(~fd.finite))
    abs_error = float(np.max(np.abs(at - estimate), initial=0.0)) if np.all(
        np.isfinite(at)) else math.inf
    return _located_comparison(
        layer, parameter, "finite differences", errors, abs_error, tolerance, in_shape,
        skipped=kinks + not_finite, kinks=kinks, noisy=noisy, not_finite=not_finite,
        computes_in=precision.dtype)


def _judge(names: Sequence[tuple[str, str]], hand: Sequence, auto: Sequence | None,
           estimates: Sequence[Estimates], tolerances: Tolerances, precision: Precision,
           scale: float, in_shape: tuple = (), outputs_not_finite: int = 0) -> GradcheckReport:
    """One comparison per leaf and reference: against autodiff (when there is one) at every
    entry where it is finite, and against finite differences where they can be trusted."""
    report = GradcheckReport()
    tolerance = autodiff_tolerance(tolerances, precision)
    for j, ((layer, parameter), h, fd) in enumerate(zip(names, hand, estimates, strict=True)):
        h = np.asarray(h, np.float64)
        if auto is not None:
            a = np.asarray(auto[j], np.float64)
            report.comparisons.append(_autodiff_comparison(
                layer, parameter, h, a, fd, tolerance, scale, in_shape, tolerances.rtol_fd))
        report.comparisons.append(_fd_comparison(layer, parameter, h, fd, tolerances.rtol_fd,
                                                 scale, in_shape, precision,
                                                 bool(outputs_not_finite)))
    if precision.reduced and names:
        report.notes.append(
            f"{names[0][0]}: computes in {precision.dtype} inside: tolerance vs jax.grad "
            f"{tolerance:.1e}, finite-difference step "
            f"{finite_difference_step(tolerances, precision):g}")
    return report


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


def _check_scalar(layer_name: str, hand_fn: Callable, reference_fn: Callable, arrays: list,
                  names: list[str], tolerances: Tolerances, seed: int,
                  in_shape: tuple = (), magnitude_fn: Callable | None = None) -> GradcheckReport:
    """Checks the gradient of scalar ``fn(*arrays)`` w.r.t. every floating-point array."""
    wrt = [i for i, a in enumerate(arrays) if _is_float(a) and a.size]

    def both(*a):  # one compilation for the hand-derived gradient and jax.grad
        return jax.grad(hand_fn, argnums=wrt)(*a), jax.grad(reference_fn, argnums=wrt)(*a)

    precision = computing_precision(both, *arrays)
    hand, auto = jax.jit(both)(*arrays)
    return _compare_with_references([(layer_name, names[i]) for i in wrt], hand, auto,
                                    reference_fn, arrays, tolerances, seed, wrt, in_shape,
                                    precision, magnitude_fn)


def _compare_with_references(names: Sequence[tuple[str, str]], hand: Sequence,
                             auto: Sequence, reference_fn: Callable, arrays: list,
                             tolerances: Tolerances, seed: int, wrt: Sequence[int] | None = None,
                             in_shape: tuple = (), precision: Precision = FLOAT64,
                             magnitude_fn: Callable | None = None) -> GradcheckReport:
    """Compares ``hand[j]``, the gradient w.r.t. ``arrays[wrt[j]]`` named ``names[j]`` (layer,
    parameter), with ``auto[j]`` (``jax.grad`` of ``reference_fn``) and with finite differences
    of ``reference_fn`` (``_judge``)."""
    wrt = list(range(len(arrays))) if wrt is None else list(wrt)
    hand = [np.asarray(h, np.float64) for h in hand]
    auto = [np.asarray(a, np.float64) for a in auto]
    scale = _largest(auto)
    estimates, bad_outputs = _finite_differences(reference_fn, arrays, wrt, tolerances, scale,
                                                 np.random.default_rng(seed), precision,
                                                 magnitude_fn)
    return _judge(names, hand, auto, estimates, tolerances, precision, scale, in_shape,
                  bad_outputs)
