"""The explicit hand-derived chain: no autodiff anywhere between the loss and the parameters.

[`value_and_grad`][jaxnn.value_and_grad] is the classic backward propagation: forward through the
network,
``dA[L] = loss.grad(A[L], Y)``, then every layer's ``backward`` in reverse. [`fuse`][jaxnn.fuse]
turns a
sigmoid output with binary cross-entropy into logits with the stable ``dZ[L] = (a − y)/m``;
[`per_example_grads`][jaxnn.per_example_grads] is the chain under ``jax.vmap``;
[`weight_mask`][jaxnn.weight_mask] and
[`l2_penalty`][jaxnn.l2_penalty] say which parameters are weights (as each leaf layer declares in
``Layer.weights``) and what ``(λ/2) Σ ‖W‖²`` costs; [`l2_regularization`][jaxnn.l2_regularization]
is its gradient as
an optax transformation.

Layers never import this module: it sits above ``layers/`` and [`jaxnn.losses`][jaxnn.losses].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.core import Layer, children
from jaxnn.layers import identity
from jaxnn.losses import Loss

__all__ = [
    "fuse",
    "l2_penalty",
    "l2_regularization",
    "per_example_grads",
    "per_example_value_and_grad",
    "value_and_grad",
    "weight_mask",
]


def value_and_grad(model: Layer, loss: Loss, *, train: bool = True) -> Callable:
    """The loss and its gradient by the explicit hand-derived chain (no autodiff).

    ``forward`` → ``dA[L] = loss.grad(A[L], Y)`` → ``model.backward`` (for a ``serial``, every
    layer's backward in reverse order).

    Args:
      model: the network.
      loss: the loss on the network's output.
      train: the mode handed to ``forward`` (batch statistics, dropout).

    Returns:
      ``fn(params, state, x, y, key=None, opt_state=None) -> ((value, new_state), grads)``,
      mirroring ``jax.value_and_grad(..., has_aux=True)``; a stateless network takes
      ``state=()``. ``opt_state`` is ignored: every gradient function a training step takes
      has this signature, and some (mixed precision's) read the optimizer state.

    >>> import jax, jax.numpy as jnp, jaxnn
    >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
    >>> x, y = jnp.ones((5, 3)), jnp.zeros((5, 1))
    >>> (value, _), grads = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, (), x, y)
    >>> jax.tree.map(jnp.shape, grads[0])
    {'W': (3, 2), 'b': (2,)}
    """

    def fn(params, state, x, y, key=None, opt_state=None):
        del opt_state
        a, new_state, residuals = model.forward(params, state, x, key=key, train=train)
        value = loss.value(a, y)
        grads, _ = model.backward(params, residuals, loss.grad(a, y))
        return (value, new_state), grads

    return fn


def weight_mask(model: Layer, params: Any) -> Any:
    """``True`` for the parameters L2 regularizes, as each leaf layer declares.

    A leaf's params are a dict: an entry is a weight when its name is in the leaf's
    ``Layer.weights`` (dense and conv: ``("W",)``; biases, normalization scales and embedding
    tables are not). A combinator's params are a tuple aligned with its ``sublayers``, or a dict
    keyed by the sublayers' names in the same order; the mask has the structure of ``params``.

    >>> import jax, jaxnn
    >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
    >>> jaxnn.weight_mask(net, params)
    ({'W': True, 'b': False}, ())
    """
    if model.sublayers:
        masks = [(label, weight_mask(sub, p)) for label, sub, p in children(model, params)]
        if isinstance(params, dict):
            return dict(masks)
        return tuple(mask for _, mask in masks)
    weights = frozenset(model.weights)
    if isinstance(params, dict):
        return {name: jax.tree.map(lambda _, w=name in weights: w, p)
                for name, p in params.items()}
    return jax.tree.map(lambda _: False, params)


def l2_penalty(model: Layer, params: Any, l2: float) -> jax.Array:
    """``(λ/2) Σ_W ‖W‖²`` over the weights of [`weight_mask`][jaxnn.weight_mask]; its gradient is
    ``λ·W``.

    With the mean loss ``J = (1/m) Σ L_i`` this is the classic ``(λ_classic / 2m) Σ ‖W‖²`` with
    ``λ = λ_classic / m``. Training adds the gradient with
    [`jaxnn.l2_regularization`][jaxnn.l2_regularization].
    """
    mask = weight_mask(model, params)
    terms = [jnp.sum(jnp.square(w)) for w, m in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(mask), strict=True) if m]
    return 0.5 * l2 * sum(terms) if terms else jnp.zeros(())


def l2_regularization(model: Layer, l2: float) -> optax.GradientTransformation:
    """L2 on the weights as an optax transformation: ``g ← g + λ·W`` where
    [`weight_mask`][jaxnn.weight_mask] says ``W`` is a weight (``optax.add_decayed_weights`` with
    that mask).

    Chain it before the optimizer: ``optax.chain(jaxnn.l2_regularization(model, 1e-3),
    optax.adam(1e-3))``. It is the gradient of [`l2_penalty`][jaxnn.l2_penalty]; the loss a step
    reports is
    the data loss alone.
    """
    if not l2 >= 0:
        raise ValueError(f"l2_regularization: l2 must be non-negative, got {l2!r}")
    return optax.add_decayed_weights(l2, mask=lambda params: weight_mask(model, params))


def per_example_value_and_grad(model: Layer, loss: Loss, *, train: bool = True) -> Callable:
    """The explicit chain on each example alone, by ``jax.vmap`` (after [`fuse`][jaxnn.fuse]).

    Returns:
      ``fn(params, state, x, y, key=None, opt_state=None) -> ((value, new_state), grads)``
      where every leaf of ``grads`` has the batch on a new leading axis (entry ``i`` is the
      gradient on the batch ``(x[i:i+1], y[i:i+1])``), ``value`` is the mean of the examples'
      losses, and each example gets its own key ``split(key, B)[i]``. Each example runs through
      the network alone, so ``new_state`` is the mean over examples of the states they return,
      in the state's own dtype (a step counter advances by one; ``batch_norm`` in training
      mode, whose statistics mix examples, refuses a batch of one). ``opt_state`` is ignored.
    """
    model, loss = fuse(model, loss)
    chain = value_and_grad(model, loss, train=train)

    def fn(params, state, x, y, key=None, opt_state=None):
        del opt_state
        batch = jax.tree.leaves(x)[0].shape[0]
        keys = None if key is None else jax.random.split(key, batch)

        def one(xi, yi, ki):
            xi, yi = jax.tree.map(lambda a: a[None], (xi, yi))
            return chain(params, state, xi, yi, ki)

        (values, states), grads = jax.vmap(one, in_axes=(0, 0, None if key is None else 0))(
            x, y, keys)
        new_state = jax.tree.map(lambda s: jnp.mean(s, axis=0).astype(s.dtype), states)
        return (jnp.mean(values), new_state), grads

    return fn


def per_example_grads(model: Layer, loss: Loss, params: Any, x: jax.Array, y: jax.Array) -> Any:
    """The gradient of the loss on each example alone, stacked on a new leading axis, for a
    stateless network ([`per_example_value_and_grad`][jaxnn.chain.per_example_value_and_grad] with
    ``state=()``)."""
    return per_example_value_and_grad(model, loss)(params, (), x, y)[1]


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
