"""Checks of any JAX function's custom derivative rules, a user's or a library's."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn.gradcheck._numerics import (
    _TRACED,
    _avals,
    _key_name,
    _remember,
    _run_check,
    standard_normal,
)
from jaxnn.gradcheck._reports import DEFAULT_TOLERANCES, GradcheckReport, Tolerances
from jaxnn.gradcheck._undecorated import foreign_primitives, undecorated

__all__ = ["check_function", "function_name"]


def check_function(
    fn: Callable,
    *args: Any,
    argnums: int | Sequence[int] | None = None,
    reference: Callable | None = None,
    seed: int = 0,
    name: str | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    dtype: str | None = "float64",
) -> GradcheckReport:
    """Checks the derivative JAX uses for ``fn`` (its custom rule) at ``args``, in float64.

    ``fn`` is any function of positional pytree arguments returning a pytree, typically a
    ``jax.custom_vjp`` or ``jax.custom_jvp`` function, possibly under ``jax.jit``, or a function
    calling such rules. With a fixed random cotangent ``v`` per output leaf the check
    differentiates ``S = Σ v ⊙ fn(*args)`` three ways:

    * **the rule**: ``jax.grad`` of ``S`` through ``fn`` as JAX runs it;
    * **jax.grad**: plain autodiff of ``S`` through ``reference``, by default ``fn`` with every
      custom rule replaced by the computation it wraps (``fn.fun``, at any depth, also inside
      ``jax.jit``: see ``jaxnn.gradcheck._undecorated``);
    * **finite differences** of ``S`` through ``fn`` (kink-safe: an entry within a step of a
      non-smooth point is skipped and counted, never failed; the stencil and the test are the
      module doc's).

    Every entry is compared with ``jax.grad`` wherever autodiff is finite, kinks included: at a
    non-smooth point any one-sided slope is a valid derivative, and the rule and plain autodiff
    may pick different ones (``jax.nn.relu``'s rule says 0 at 0, autodiff of ``max(x, 0)``
    says 0.5), so there a rule between the one-sided slopes the finite differences measured is
    accepted. Output entries that are NaN or infinite at ``args`` are left out of ``S`` (and
    counted in a note); a leaf with no entry compared by any reference is ``unverified``.

    A function that computes in a lower precision inside (a float32 softmax in a float64 call)
    is judged at that precision's rounding (``Tolerances.noise_factor``).

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
      dtype: ``"float64"`` casts the floating-point leaves to float64; a function that cannot
        run in float64 (a float32-only kernel) then runs in its arguments' own dtypes, with a
        note, as it does with ``dtype=None``. Tolerances and the finite-difference step follow
        the precision the function computes in ([`Tolerances`][jaxnn.gradcheck.Tolerances]).

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
        name = name or function_name(fn)
        args, dtype_notes = _in_checking_dtype(fn, name, args, dtype)
        target = _differentiated_leaves(fn, name, args, argnums)
        if not target.names:
            raise ValueError(f"check_function({name}): no floating-point leaf to differentiate "
                             f"among the arguments {argnums if argnums is not None else 'given'}"
                             + "".join(f"; {note}" for note in target.notes))
        report = GradcheckReport(notes=dtype_notes + list(target.notes))
        arrays = [target.leaves[i] for i in target.indices]
        checked = target.bind(fn)  # a function of the differentiated leaves only
        out_tree, cotangents = _cotangents(checked, name, arrays, jax.random.key(seed))
        fixed = [i for i, leaf in enumerate(target.leaves)
                 if i not in target.indices and hasattr(leaf, "shape")]  # arrays: arguments
        static = tuple((i, leaf) for i, leaf in enumerate(target.leaves)
                       if i not in target.indices and not hasattr(leaf, "shape"))
        key = ("function", fn, _rules_of(fn), reference, _rules_of(reference), name,
               target.tree, tuple(target.indices), tuple(fixed), static, out_tree)
        undecorate = False
        if reference is None:
            rules = _remember(_TRACED, ("rules", key, _avals((arrays, cotangents))),
                              lambda: undecorated(checked, *arrays)[1])
            undecorate = bool(rules)
            if not rules:
                report.notes.append(
                    f"{name}: no custom_vjp/custom_jvp rule found (at any depth, loop bodies "
                    f"included), compared with finite differences only; pass reference= to "
                    f"compare with another implementation's autodiff")
            foreign = _remember(_TRACED, ("foreign", key, _avals(arrays)),
                                lambda: foreign_primitives(checked, *arrays))
            if foreign:
                report.notes.append(
                    f"{name}: {', '.join(foreign)} is a primitive with its own differentiation "
                    f"rule, which stays in the autodiff reference: the 'vs jax.grad' column "
                    f"compares that rule with itself, and only finite differences judge it")
        make = functools.partial(_function_scalars, fn, reference, undecorate, name, target,
                                 tuple(fixed), out_tree)
        context = (cotangents, [target.leaves[i] for i in fixed])
        part = _run_check((*key, undecorate), make, arrays, context, target.names, name,
                          tolerances, seed)
        report.extend(part)
        return report


def _rules_of(fn: Any) -> tuple:
    """What ``defvjp`` / ``defjvp`` set on a custom-rule function (so that redefining its rule
    is a new cache entry: the compiled check is cached by the function's identity, as
    ``jax.jit`` caches)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return tuple(getattr(fn, name, None) for name in ("fun", "fwd", "bwd", "jvp"))


def _function_scalars(fn: Callable, reference: Callable | None, undecorate: bool, name: str,
                      target: _Target, fixed: tuple, out_tree, context) -> tuple:
    """``(hand, reference, fd, magnitude)`` for ``_run_check``: ``S = Σ v ⊙ fn`` through
    ``fn`` as JAX runs it, through ``reference`` (or ``fn`` undecorated), finite differences
    through ``fn``, and ``[Σ |v ⊙ fn|, non-finite outputs]``. ``context`` holds the cotangents
    and the fixed array arguments, arguments of the compiled check."""
    cotangents, fixed_values = context
    leaves = list(target.leaves)
    for i, value in zip(fixed, fixed_values, strict=True):
        leaves[i] = value
    target = target._replace(leaves=leaves)
    checked = target.bind(fn)
    scalar = _cotangent_scalar(checked, name, out_tree, cotangents)
    magnitude = _cotangent_scalar(checked, name, out_tree, cotangents, magnitude=True)
    if reference is not None:
        ref = _cotangent_scalar(target.bind(reference), "reference", out_tree, cotangents)
    elif undecorate:
        def ref(*arrays):  # traced where the compiled check first runs, at its shapes
            plain, _ = undecorated(checked, *arrays)
            return _cotangent_scalar(plain, name, out_tree, cotangents)(*arrays)
    else:
        ref = None
    return scalar, ref, scalar, magnitude


def _in_checking_dtype(fn: Callable, name: str, args: tuple,
                       dtype: str | None) -> tuple[tuple, list[str]]:
    """``args`` with floating-point leaves in float64 when ``dtype="float64"`` and ``fn`` runs
    so; else as given, with a note naming why."""
    if dtype is None:
        return args, []
    if dtype != "float64":
        raise ValueError(f"check_function({name}): dtype must be 'float64' or None, got "
                         f"{dtype!r}")
    wide = tuple(_to_float64_leaves(a) for a in args)
    try:
        leaves, tree = jax.tree.flatten(wide)
        floating = [i for i, x in enumerate(leaves) if _is_floating(x)]

        def traced(*values):  # other leaves stay what they are (a Python int stays static)
            filled = list(leaves)
            for i, v in zip(floating, values, strict=True):
                filled[i] = v
            return fn(*jax.tree.unflatten(tree, filled))

        jax.eval_shape(traced, *(leaves[i] for i in floating))
    except Exception as e:  # any failure to trace in float64 means: not float64
        own = sorted({str(x.dtype) for x in jax.tree.leaves(args) if _is_floating(x)})
        if not own or own == ["float64"]:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        return args, [f"{name}: cannot run in float64 ({type(e).__name__}: {first}); checked "
                      f"in its arguments' own dtype ({', '.join(own)})"]
    return wide, []


def _is_floating(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return isinstance(x, float) or (dtype is not None and jnp.issubdtype(dtype, jnp.floating))


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


def function_name(fn: Callable) -> str:
    """The name a report gives ``fn``: its ``__name__`` (through ``functools.partial``)."""
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
    cotangents = [standard_normal(k, o.shape) if jnp.issubdtype(o.dtype, jnp.floating) else None
                  for k, o in zip(keys, out_leaves, strict=False)]
    if not any(v is not None for v in cotangents):
        raise ValueError(f"check_function({name}): the output has no floating-point leaf")
    return out_tree, cotangents


def _cotangent_scalar(f: Callable, label: str, out_tree, cotangents: list,
                      magnitude: bool = False) -> Callable:
    """``S(*differentiated) = Σ v ⊙ f(*differentiated)`` over the floating-point output
    leaves and their finite entries (a NaN or inf output entry is left out, so that it does not
    make every entry of ``S`` NaN); with ``magnitude``, ``[Σ |v ⊙ f|, number of non-finite
    output entries]`` instead, for the finite differences' noise floor and the report."""

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
        pairs = [(v, jnp.asarray(o)) for v, o in zip(cotangents, out_leaves, strict=True)
                 if v is not None]
        if magnitude:
            size = sum(jnp.sum(jnp.where(jnp.isfinite(o), jnp.abs(v * o), 0.0)) for v, o in pairs)
            bad = sum(jnp.sum(~jnp.isfinite(o)) for _, o in pairs)
            return jnp.stack([size, bad.astype(size.dtype)])
        return sum(jnp.sum(jnp.where(jnp.isfinite(o), v * o, 0.0)) for v, o in pairs)

    return scalar
