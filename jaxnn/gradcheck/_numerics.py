"""The numbers of a check: relative errors, the finite-difference stencil and its smoothness
test, and the comparison of a hand-derived gradient with its references (module doc of
[`jaxnn.gradcheck`][jaxnn.gradcheck])."""

from __future__ import annotations

import functools
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
    return _lowest_precision(jax.make_jaxpr(fn)(*args).jaxpr)


def _lowest_precision(jaxpr) -> Precision:
    found = _float_dtypes(jaxpr, set())
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
    """Floating-point leaves as float64 arrays, cast on the host (an eager ``astype`` compiles
    a program per shape)."""

    def cast(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == jnp.float64:
            return x
        if isinstance(x, jax.core.Tracer):
            return x.astype(jnp.float64)
        return jnp.asarray(np.asarray(x, np.float64))

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


# --- random draws without compiling: the checker's inputs and cotangents ------------------------


def host_rng(key: jax.Array) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key's bits. The checker draws its inputs and
    cotangents with it: ``jax.random.normal`` compiles a program per shape (about 0.2 s each in
    float64 on a CPU, half of a whole ``jaxnn gradcheck`` run), NumPy compiles nothing."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def standard_normal(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Standard normal float64 entries of ``shape``, drawn on the host from ``key``."""
    return jnp.asarray(host_rng(key).standard_normal(tuple(shape)), jnp.float64)


# --- compiled once: one jitted function per (what is checked, mode), cached --------------------

_TRACED: dict = {}  # (key, shapes, dtypes) -> a check's compiled program and what its trace says
_CACHE_SIZE = 512
# A check's program runs once, on small arrays, and its compilation is nearly all of its time:
# LLVM's optimization passes are turned off for it (about half the compile time of a
# `jaxnn gradcheck` run), and on a CPU XLA emits its fusions the classic way rather than
# through its MLIR fusion emitters (0.6x the compile time of the attention, recurrent and conv
# checks). No figure in a report changes beyond float64 rounding.
CHECK_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
CHECK_CPU_COMPILER_OPTIONS = {**CHECK_COMPILER_OPTIONS, "xla_cpu_use_fusion_emitters": False}


def _remember(cache: dict, key: Any, build: Callable) -> Any:
    """``cache[key]``, built by ``build()`` on a miss; an unhashable key is never cached."""
    try:
        hash(key)
    except TypeError:
        return build()
    if key not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[key] = build()
    return cache[key]


def _avals(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(jnp.shape(x)), str(jnp.result_type(x))) for x in leaves)


_FD_BATCH = 128  # perturbed entries evaluated together (one vmapped evaluation)


def _batched_map(fn: Callable, index: jax.Array, batch: int) -> jax.Array:
    """``lax.map(fn, index, batch_size=batch)`` without its remainder: ``index`` padded with its
    last entry to a whole number of batches (``lax.map`` compiles a second copy of the vmapped
    ``fn`` for a remainder), the padded results dropped."""
    n = index.shape[0]
    if n <= batch:
        return jax.vmap(fn)(index)
    batches = -(-n // batch)
    padded = jnp.concatenate([index, jnp.full(batches * batch - n, index[-1], index.dtype)])
    out = jax.lax.map(jax.vmap(fn), padded.reshape(batches, batch))
    return jax.tree.map(lambda a: a.reshape(batches * batch, *a.shape[2:])[:n], out)


class Evaluated(NamedTuple):
    """What one compiled evaluation of a check returns, in NumPy."""

    hand: list  # the hand-derived gradient per differentiated array
    auto: list | None  # autodiff of the reference, or None without one
    estimates: list  # finite-difference Estimates per differentiated array
    bad_outputs: int  # output entries NaN/inf at the point
    precision: Precision
    note: str = ""  # how the reference was differentiated, when not in reverse mode


def _evaluate(key: Any, make: Callable, arrays: list, context: Any, wrt: Sequence[int],
              tolerances: Tolerances, seed: int) -> Evaluated:
    """The gradients and finite differences of one check, from one compiled function.

    ``make(context)`` returns ``(hand, reference, fd, magnitude)``: scalar functions of
    ``*arrays`` (``reference`` may be None; ``magnitude`` returns ``[Σ |v ⊙ f|, non-finite
    outputs]``). Everything the scalars depend on besides ``arrays`` is in ``context`` (arrays:
    cotangents, state, keys, fixed arguments), so that one jitted function serves every call
    with the same ``key`` — which names ``make``'s static behaviour (the layer or function, tree
    structures, mode) — at the same shapes and dtypes, across seeds: nothing is closed over as
    a constant. The hand-derived gradient, autodiff, every finite-difference point (one
    vmapped evaluation over the perturbation directions) and the magnitude are computed in it;
    it is traced once, and its computing precision is read from that trace.
    """
    wrt = tuple(wrt)

    def gradients(arrays, context, mode="reverse"):
        hand, reference, _, _ = make(context)
        if mode == "values":  # the reference's forward alone: its own errors are the user's
            return None, None if reference is None else reference(*arrays)
        g = (tuple(hand.gradients(*arrays)) if isinstance(hand, GradientsOf)
             else jax.grad(hand, argnums=wrt)(*arrays))
        if reference is None or mode == "none":
            return g, None
        differentiate = jax.grad if mode == "reverse" else jax.jacfwd
        return g, differentiate(reference, argnums=wrt)(*arrays)

    sizes = [int(np.size(arrays[i])) for i in wrt]
    rng = np.random.default_rng(seed)
    positions = [np.arange(n) if n <= tolerances.max_fd_entries else
                 np.sort(rng.choice(n, size=tolerances.max_fd_entries, replace=False))
                 for n in sizes]
    starts = np.cumsum([0, *sizes[:-1]])
    flat_index = jnp.asarray(np.concatenate([p + s for p, s in zip(positions, starts,
                                                                    strict=True)]))

    def body(arrays, context, index, eps, mode):  # everything shape-dependent is computed here
        hand_grads, auto_grads = gradients(arrays, context, mode)
        _, _, fd, magnitude = make(context)
        sizes = [int(np.size(arrays[i])) for i in wrt]
        starts = np.cumsum([0, *sizes[:-1]])

        def at(theta):
            args = list(arrays)
            for i, start, n in zip(wrt, starts, sizes, strict=True):
                args[i] = theta[start:start + n].reshape(jnp.shape(arrays[i])).astype(
                    arrays[i].dtype)
            return fd(*args)

        def perturbed(theta, k):
            steps = eps * jnp.asarray(_OFFSETS, theta.dtype)
            return jax.vmap(lambda h: at(theta.at[k].add(h)))(steps)

        theta = jnp.concatenate([jnp.ravel(arrays[i]).astype(jnp.float64) for i in wrt])
        table = _batched_map(lambda k: perturbed(theta, k), index, _FD_BATCH)
        size = (jnp.stack([jnp.abs(table[0, _OFFSETS.index(0.0)]), jnp.zeros((), theta.dtype)])
                if magnitude is None else magnitude(*arrays))
        return hand_grads, auto_grads, table, size

    precision, _, note, compiled = _remember(
        _TRACED, (key, wrt, _avals((arrays, context, flat_index))),
        lambda: _compile_check(gradients, body, arrays, context, flat_index))
    eps = finite_difference_step(tolerances, precision)
    hand, auto, table, (magnitude, bad) = compiled(arrays, context, flat_index,
                                                   jnp.asarray(eps, jnp.float64))
    hand = [np.asarray(g, np.float64) for g in hand]
    auto = None if auto is None else [np.asarray(g, np.float64) for g in auto]
    scale = _largest(hand if auto is None else auto)
    unit = tolerances.noise_factor * precision.epsilon * float(magnitude)
    estimates = _stencils(np.asarray(table, np.float64), eps, tolerances.rtol_fd / 2, scale,
                          unit)
    bounds = np.cumsum([0, *(len(p) for p in positions)])
    fd = [Estimates(p, *(e[a:b] for e in estimates))
          for p, a, b in zip(positions, bounds[:-1], bounds[1:], strict=True)]
    return Evaluated(hand, auto, fd, int(bad), precision, note)


def _compile_check(gradients: Callable, body: Callable, arrays: list, context: Any,
                   index: jax.Array) -> tuple:
    """``(precision, mode, note, compiled)``: the check's program traced once and compiled, its
    computing precision read from that same trace. Autodiff of the reference runs in reverse
    mode; where that fails (a ``while_loop`` with a dynamic bound, a ``pallas_call``), in
    forward mode (``jax.jacfwd``, which ``while_loop`` supports); where that fails too, none
    (finite differences only). The note says which, and why. An error of the reference's
    forward itself (a wrong output shape) is raised, never taken for a differentiation
    failure."""
    eps = jnp.zeros((), jnp.float64)  # the step is an argument: its value is set per call
    first_error: Exception | None = None
    for mode in ("reverse", "forward", "none"):
        try:
            traced = jax.jit(functools.partial(body, mode=mode)).trace(arrays, context, index,
                                                                       eps)
        except Exception as error:  # any failure: try the next mode
            if first_error is None:  # unless the reference's forward itself fails: raised
                jax.eval_shape(lambda a, c: gradients(a, c, "values"), arrays, context)
                first_error = error
            continue
        note = ""
        if first_error is not None:
            why = _first_line(first_error)
            note = (f"reference differentiated in forward mode (jax.jacfwd): reverse mode "
                    f"failed ({why})" if mode == "forward" else
                    f"finite differences only: autodiff of the reference failed in both modes "
                    f"({why})")
        compiled = traced.lower().compile(CHECK_CPU_COMPILER_OPTIONS
                                          if jax.default_backend() == "cpu"
                                          else CHECK_COMPILER_OPTIONS)
        return _lowest_precision(traced.jaxpr.jaxpr), mode, note, compiled
    assert first_error is not None
    raise first_error


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {(lines or [''])[0][:140]}"


class GradientsOf(NamedTuple):
    """Marks a hand-derived side that returns the gradients itself (the explicit chain of
    ``check_model``) rather than a scalar to differentiate."""

    gradients: Callable


def _run_check(key: Any, make: Callable, arrays: list, context: Any, names: Sequence,
               layer: str | None, tolerances: Tolerances, seed: int,
               in_shape: tuple = ()) -> GradcheckReport:
    """``_evaluate`` then ``_judge``: the report of one check, rows ``(layer, names[j])`` for
    the floating-point arrays (``names[j]`` itself, a ``(layer, parameter)`` pair, when
    ``layer`` is None)."""
    wrt = [i for i, a in enumerate(arrays) if _is_float(a) and np.size(a)]
    result = _evaluate(key, make, arrays, context, wrt, tolerances, seed)
    scale = _largest(result.hand if result.auto is None else result.auto)
    rows = [names[i] if layer is None else (layer, names[i]) for i in wrt]
    layer = layer or (rows[0][0] if rows else "")
    report = _judge(rows, result.hand, result.auto,
                    result.estimates, tolerances, result.precision, scale, in_shape,
                    result.bad_outputs)
    if result.note:
        report.notes.insert(0, f"{layer}: {result.note}")
    if result.bad_outputs:
        report.notes.insert(0, f"{layer}: {result.bad_outputs} output entries are NaN/inf at "
                               f"these arguments: left out of S; gradient entries NaN there "
                               f"not compared")
    return report
