"""The undecorated form of a function: every ``jax.custom_vjp`` / ``jax.custom_jvp`` rule removed.

``jax.grad`` of a function that uses a custom derivative rule runs the rule. To check the rule,
[`jaxnn.gradcheck.check_function`][jaxnn.gradcheck.check_function] needs the same forward
differentiated by plain autodiff.
``fn.fun`` gives it for a decorated function, but rules sit at any depth: under ``jax.jit``
(``jax.nn.relu`` is a ``custom_jvp`` of a jitted function), or inside a plain function
(``jax.nn.softplus`` calls ``jnp.logaddexp``, whose rule is a ``custom_jvp``;
``jnp.linalg.pinv`` calls one too). ``undecorated`` therefore traces the function once and
evaluates the traced program with each custom call replaced by the primal computation it wraps
(its ``call_jaxpr``), looking inside nested ``jit`` calls and ``jax.checkpoint`` bodies (evaluated
in place: the values are the same) and rewriting the bodies of ``lax.scan``, ``lax.while_loop``,
``lax.fori_loop`` and ``lax.cond`` (each body re-traced with its rules removed), so that
``jax.grad`` differentiates every primitive itself.

>>> import jax, jax.numpy as jnp
>>> plain, rules = undecorated(jax.nn.relu, jnp.array([1.0, -2.0]))
>>> rules
('custom_jvp_call',)
>>> plain(jnp.array([1.0, -2.0])).tolist()
[1.0, 0.0]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jax_core

__all__ = ["foreign_primitives", "undecorated"]

# the primitives a custom rule is staged out as; "call_jaxpr" holds the undecorated primal
_CUSTOM_RULE_PRIMITIVES = frozenset({"custom_jvp_call", "custom_vjp_call",
                                     "custom_vjp_call_jaxpr"})
_JIT_PRIMITIVES = frozenset({"pjit", "jit"})
# evaluated in place (only memory differs); loops and branches get rewritten bodies instead
_INLINED_PRIMITIVES = _JIT_PRIMITIVES | {"remat2", "checkpoint"}
_BODY_PARAMS = ("jaxpr", "body_jaxpr", "cond_jaxpr", "branches")


def undecorated(fn: Callable, *args: Any) -> tuple[Callable, tuple[str, ...]]:
    """``fn`` with every custom derivative rule removed, traced at ``args``' shapes and dtypes.

    Args:
      fn: any traceable function of positional pytree arguments, returning a pytree.
      *args: example arguments; the returned function accepts arguments of the same structure,
        shapes and dtypes only.

    Returns:
      ``(plain, rules)``: ``plain(*args)`` computes the same values as ``fn(*args)`` through
      the primal computations of its custom rules, so ``jax.grad(plain)`` is plain autodiff;
      ``rules`` names the custom calls removed, one entry per call (empty when ``fn`` has none).
    """
    flat_args, in_tree = jax.tree.flatten(args)

    def flat_fn(*leaves):
        return jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, leaves)))

    closed = jax.make_jaxpr(flat_fn)(*flat_args)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))

    def plain(*call_args):
        leaves, tree = jax.tree.flatten(call_args)
        if tree != in_tree:
            raise ValueError(f"undecorated {_name(fn)}: arguments of structure {tree}, "
                             f"expected {in_tree} (the structure it was traced at)")
        return jax.tree.unflatten(out_tree, _evaluate(closed.jaxpr, closed.consts, leaves))

    return plain, _custom_calls(closed.jaxpr)


def _bodies(eqn) -> list:
    """The open jaxprs in an equation's body parameters (a scan's, a while's, a cond's...)."""
    out = []
    for name in _BODY_PARAMS:
        value = eqn.params.get(name)
        for v in value if isinstance(value, tuple) else (value,):
            if hasattr(v, "eqns"):
                out.append(v)
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                out.append(v.jaxpr)
    return out


def _custom_calls(jaxpr) -> tuple[str, ...]:
    """The custom calls ``_evaluate`` replaces: at the top level and inside ``jit``,
    ``checkpoint``, loop and branch bodies (a kernel's body, ``pallas_call``, is left alone)."""
    found: list[str] = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in _CUSTOM_RULE_PRIMITIVES:
            found.append(eqn.primitive.name)
        elif eqn.primitive.name != "pallas_call":
            for body in _bodies(eqn):
                found.extend(_custom_calls(body))
    return tuple(found)


def _primitives(jaxpr) -> dict[int, Any]:
    """Every primitive of ``jaxpr``, by identity, bodies included (not inside a kernel)."""
    found: dict[int, Any] = {}
    for eqn in jaxpr.eqns:
        found[id(eqn.primitive)] = eqn.primitive
        if eqn.primitive.name != "pallas_call":
            for body in _bodies(eqn):
                found.update(_primitives(body))
    return found


_OWNERS: dict[int, tuple[str, ...]] = {}


def _owners(primitive: Any) -> tuple[str, ...]:
    """The modules that hold ``primitive`` as a module-level name (cached by identity)."""
    if id(primitive) not in _OWNERS:
        owners = []
        for name, module in list(sys.modules.items()):
            try:
                attributes = vars(module)
            except TypeError:
                continue
            if any(value is primitive for value in list(attributes.values())):
                owners.append(name)
        _OWNERS[id(primitive)] = tuple(owners)
    return _OWNERS[id(primitive)]


def foreign_primitives(fn: Callable, *args: Any) -> tuple[str, ...]:
    """The primitives ``fn`` runs at ``args`` that a package other than JAX defines, as
    ``"package's name"``: such a primitive carries its own differentiation rule (lineax's
    ``linear_solve``, say), which no undecorating removes, so it stays in the autodiff reference.

    A primitive counts as JAX's when a ``jax`` module holds it; one that only another package's
    module holds is foreign.
    """
    flat_args, in_tree = jax.tree.flatten(args)

    def flat_fn(*leaves):
        return jax.tree.leaves(fn(*jax.tree.unflatten(in_tree, leaves)))

    closed = jax.make_jaxpr(flat_fn)(*flat_args)
    names = []
    for primitive in _primitives(closed.jaxpr).values():
        owners = _owners(primitive)
        if owners and not any(o == "jax" or o.startswith(("jax.", "jaxlib")) for o in owners):
            names.append(f"{owners[0].split('.')[0]}'s {primitive.name}")
    return tuple(sorted(set(names)))


def _without_rules(closed):
    """A closed jaxpr re-traced with its custom calls replaced (itself when it has none)."""
    if not _custom_calls(closed.jaxpr):
        return closed
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in closed.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: _evaluate(closed.jaxpr, closed.consts, list(a)))(*avals)


def _evaluate(jaxpr, consts, args) -> list:
    """Evaluates ``jaxpr``, running each custom call's primal jaxpr in place of the call."""
    env: dict = {}

    def read(var):
        return var.val if isinstance(var, jax_core.Literal) else env[var]

    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name in _CUSTOM_RULE_PRIMITIVES or (name in _INLINED_PRIMITIVES
                                               and _custom_calls(_bodies(eqn)[0])):
            inner = eqn.params["call_jaxpr" if name in _CUSTOM_RULE_PRIMITIVES else "jaxpr"]
            outputs = _evaluate(getattr(inner, "jaxpr", inner), getattr(inner, "consts", ()),
                                inputs)
        else:
            params = dict(eqn.params)
            if name in ("scan", "while", "cond") and any(map(_custom_calls, _bodies(eqn))):
                for key in ("jaxpr", "body_jaxpr", "cond_jaxpr"):
                    if key in params and name != "cond":
                        params[key] = _without_rules(params[key])
                if name == "cond":
                    params["branches"] = tuple(map(_without_rules, params["branches"]))
            with eqn.ctx.manager:  # the equation's own context (e.g. its precision settings)
                outputs = eqn.primitive.bind(*inputs, **eqn.primitive.get_bind_params(params))
            if not eqn.primitive.multiple_results:
                outputs = [outputs]
        for var, value in zip(eqn.outvars, outputs, strict=True):
            env[var] = value
    return [read(v) for v in jaxpr.outvars]


def _name(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
