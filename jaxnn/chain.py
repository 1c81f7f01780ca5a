"""The explicit hand-derived chain: no autodiff anywhere between the loss and the parameters.

:func:`value_and_grad` is the classic backward propagation: forward through the network,
``dA[L] = loss.grad(A[L], Y)``, then every layer's ``backward`` in reverse. :func:`fuse` turns a
sigmoid output with binary cross-entropy into logits with the stable ``dZ[L] = (a − y)/m``;
:func:`per_example_grads` is the chain under ``jax.vmap``; :func:`weight_mask` and
:func:`l2_penalty` say which parameters are weights and what ``(λ/2) Σ ‖W‖²`` costs.

Layers never import this module: it sits above ``layers/`` and :mod:`jaxnn.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxnn.core import Layer
from jaxnn.layers import identity
from jaxnn.losses import Loss

__all__ = ["fuse", "l2_penalty", "per_example_grads", "value_and_grad", "weight_mask"]


def value_and_grad(
    model: Layer, loss: Loss, *, has_state: bool = False, train: bool = True
) -> Callable:
    """The loss and its gradient by the explicit hand-derived chain (no autodiff).

    ``forward`` → ``dA[L] = loss.grad(A[L], Y)`` → ``model.backward`` (for a ``serial``, every
    layer's backward in reverse order).

    Args:
      model: the network.
      loss: the loss on the network's output.
      has_state: if false the function is ``(params, x, y) -> (value, grads)``; if true it is
        ``(params, state, x, y, key=None) -> ((value, new_state), grads)``, mirroring
        ``jax.value_and_grad(..., has_aux=True)``.
      train: the mode handed to ``forward`` (batch statistics, dropout).

    >>> import jax, jax.numpy as jnp, jaxnn
    >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
    >>> x, y = jnp.ones((5, 3)), jnp.zeros((5, 1))
    >>> value, grads = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, x, y)
    >>> jax.tree.map(jnp.shape, grads[0])
    {'W': (3, 2), 'b': (2,)}
    """

    def with_state(params, state, x, y, key=None):
        a, new_state, residuals = model.forward(params, state, x, key=key, train=train)
        value = loss.value(a, y)
        grads, _ = model.backward(params, residuals, loss.grad(a, y))
        return (value, new_state), grads

    if has_state:
        return with_state

    def stateless(params, x, y):
        (value, _), grads = with_state(params, (), x, y)
        return value, grads

    return stateless


def weight_mask(params: Any) -> Any:
    """``True`` for the leaves that L2 regularizes: weights and kernels, i.e. dict entries
    named ``"W"``; ``False`` for biases, normalization scales and offsets."""

    def is_weight(path, _):
        last = path[-1] if path else None
        return isinstance(last, jax.tree_util.DictKey) and last.key == "W"

    return jax.tree_util.tree_map_with_path(is_weight, params)


def l2_penalty(params: Any, l2: float) -> jax.Array:
    """``(λ/2) Σ_W ‖W‖²`` over the weights (not the biases); its gradient is ``λ·W``.

    With the mean loss ``J = (1/m) Σ L_i`` this is the classic ``(λ_classic / 2m) Σ ‖W‖²`` with
    ``λ = λ_classic / m``.
    """
    mask = weight_mask(params)
    terms = [jnp.sum(jnp.square(w)) for w, m in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(mask), strict=True) if m]
    return 0.5 * l2 * sum(terms) if terms else jnp.zeros(())


def _add_l2_grads(grads: Any, params: Any, l2: float) -> Any:
    mask = weight_mask(params)
    return jax.tree.map(lambda g, w, m: g + l2 * w if m else g, grads, params, mask)


def per_example_grads(model: Layer, loss: Loss, params: Any, x: jax.Array, y: jax.Array) -> Any:
    """The gradient of the loss on each example alone, stacked on a new leading axis.

    ``jax.vmap`` of the explicit chain over examples: entry ``i`` equals the gradient on the
    batch ``(x[i:i+1], y[i:i+1])``.
    """
    model, loss = fuse(model, loss)
    chain = value_and_grad(model, loss, train=True)

    def one(xi, yi):
        return chain(params, xi[None], yi[None])[1]

    return jax.vmap(one)(x, y)


def fuse(model: Layer, loss: Loss) -> tuple[Layer, Loss]:
    """Replaces a final activation and a loss on its output by the stable loss on logits.

    ``fuse(serial(…, sigmoid()), binary_cross_entropy)`` is
    ``(serial(…, identity()), binary_cross_entropy_with_logits)``: the same objective, with the
    fused derivative ``dZ[L] = (1/m)(a − y)`` and no ``log(0)`` at saturated outputs. Any other
    pair is returned unchanged.
    """
    if loss.fused is None:
        return model, loss
    activation, fused_loss = loss.fused
    if model.name == "serial" and len(model.sublayers) > 1:
        if model.sublayers[-1].name == activation:
            # identity keeps the params/state tuples aligned with the original model's
            return model.rebuild((*model.sublayers[:-1], identity())), fused_loss
    return model, loss
