r"""Rematerialization: trade compute for memory by recomputing a block's forward on the way back.

A network's backward needs what every layer's forward kept (its residuals: inputs, pre-
activations, masks). For a deep network these residuals, alive from the forward until the
backward reaches them, dominate memory. ``remat(block)`` keeps only the block's *input*:

* forward: ``y = block.forward(params, state, x)``; the block's residuals are dropped, the
  residual of ``remat(block)`` is ``(x, state, key)``;
* backward: recompute ``block.forward(params, state, x)`` to get its residuals back, then run
  ``block.backward`` — the hand-derived backward, never ``jax.vjp``.

With $r$ the block's residuals and $f$ its forward:

$$ \text{forward:} \quad (y, r) = f(\theta, s, x), \quad \text{keep } (x, s, \text{key}) $$

$$
\text{backward:} \quad (\cdot, r) = f(\theta, s, x), \qquad
(d\theta, dx) = f.\text{backward}(\theta, r, dy)
$$

This is ``jax.checkpoint`` for hand-derived backward passes. Like ``jax.checkpoint`` it puts
the recomputation's inputs through ``jax.lax.optimization_barrier``, so that XLA cannot merge
the recomputed forward with the original one (common-subexpression elimination would keep the
residuals alive and undo the saving). Wrapping every block of ``√L`` layers of an ``L``-layer
network keeps ``√L`` block inputs plus one block's residuals alive instead of all ``L``
layers' residuals, for one extra forward pass: peak residual memory goes from $O(L)$ layers'
worth to $O(\sqrt{L})$. ``benchmarks/remat_memory.py`` measures it.

The recomputed forward runs with the same ``key`` and ``train`` flag, so a block with dropout
draws the same mask again; state updates of the recomputation are discarded (the forward's own
new state is the one returned).
"""

from __future__ import annotations

import jax

from jaxnn.core import Layer, children
from jaxnn.layers._combinators import _entries, _pack_state

__all__ = ["remat"]


@jax.tree_util.register_pytree_node_class
class _Saved:
    """The residual of a rematerialized block: its inputs, with ``train`` as static data."""

    def __init__(self, state, x, key, train: bool):
        self.state, self.x, self.key, self.train = state, x, key, train

    def tree_flatten(self):
        return (self.state, self.x, self.key), self.train

    @classmethod
    def tree_unflatten(cls, train, children):
        return cls(*children, train)


def remat(block: Layer) -> Layer:
    """``block`` with its residuals recomputed in the backward instead of stored.

    A combinator like [`jaxnn.residual`][jaxnn.residual]: params are a 1-tuple aligned with
    ``sublayers == (block,)``, and so is state (``()`` when ``block`` has none), so
    [`jaxnn.map_leaves`][jaxnn.map_leaves] (precision policies, the gradient check's per-layer
    report)
    reaches the layers inside. The gradients are those of ``block``;
    only memory (less) and compute (one more forward of ``block``) change.

    Args:
      block: the layer (usually a [`jaxnn.serial`][jaxnn.serial] of several) whose residuals
        are recomputed.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with ``sublayers == (block,)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> block = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(8), jaxnn.relu())
      >>> net = jaxnn.serial(jaxnn.remat(block), jaxnn.remat(block), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 4))
      >>> x, y = jnp.ones((2, 4)), jnp.zeros((2, 1))
      >>> loss_and_grad = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)
      >>> (value, _), grads = loss_and_grad(params, (), x, y)
      >>> jax.tree.map(jnp.shape, grads[0][0][0])
      {'W': (4, 8), 'b': (8,)}

      The same gradients as without ``remat``:

      >>> plain = jaxnn.serial(block, block, jaxnn.dense(1))
      >>> plain_params = (params[0][0], params[1][0], params[2])
      >>> (_, _), plain_grads = jaxnn.value_and_grad(plain, jaxnn.mean_squared_error)(
      ...     plain_params, (), x, y)
      >>> bool(jnp.allclose(grads[2]["W"], plain_grads[2]["W"], atol=1e-6))
      True
    """
    if not isinstance(block, Layer):
        hint = " (did you forget the parentheses?)" if callable(block) else ""
        raise TypeError(f"remat: expected a jaxnn.Layer, got {block!r}{hint}")

    def init(key, in_shape):
        out_shape, params, state = block.init(key, in_shape)
        return out_shape, (params,), _pack_state((), [state])

    def forward(params, state, x, *, key=None, train=False):
        [(_, p, s)] = _entries(net, params, state)
        y, new_state, _ = block.forward(p, s, x, key=key, train=train)
        return y, _pack_state((), [new_state]), _Saved(s, x, key, train)

    def backward(params, saved, dy):
        [(_, _, p)] = children(net, params)
        # dy in the barrier ties the recomputation to the backward reaching this block: XLA
        # can neither merge it with the forward (as jax.checkpoint's prevent_cse) nor hoist it
        p, state, x, key, dy = jax.lax.optimization_barrier(
            (p, saved.state, saved.x, saved.key, dy))
        _, _, residuals = block.forward(p, state, x, key=key, train=saved.train)
        grads, dx = block.backward(p, residuals, dy)
        return (grads,), dx

    net = Layer("remat", init, forward, backward, (block,), lambda subs: remat(*subs))
    return net
