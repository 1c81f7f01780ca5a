r"""The explicit hand-derived chain: no autodiff anywhere between the loss and the parameters.

[`value_and_grad`][jaxnn.value_and_grad] is the classic backward propagation: forward through the
network, ``dA[L] = loss.grad(A[L], Y)``, then every layer's ``backward`` in reverse.
[`fuse`][jaxnn.fuse] turns a sigmoid output with binary cross-entropy into logits with the stable
``dZ[L] = (a − y)/m``; [`per_example_grads`][jaxnn.per_example_grads] is the chain under
``jax.vmap``; [`weight_mask`][jaxnn.weight_mask] and [`l2_penalty`][jaxnn.l2_penalty] say which
parameters are weights (as each leaf layer declares in ``Layer.weights``) and what
``(λ/2) Σ ‖W‖²`` costs; [`l2_regularization`][jaxnn.l2_regularization] is its gradient as an
optax transformation.

In formulas, for a dense network in jaxnn's examples-first layout (``x`` of shape
``(m, n_in)``, ``W[l]`` of shape ``(n[l-1], n[l])``, ``A[0] = x``), the forward is

$$
Z^{[l]} = A^{[l-1]} W^{[l]} + b^{[l]} \qquad A^{[l]} = g^{[l]}(Z^{[l]}) \qquad
J = \frac{1}{m} \sum_{i=1}^{m} \mathcal{L}(A^{[L]}_{i}, Y_{i})
$$

and the backward starts from the loss's own derivative (it carries the $\frac{1}{m}$ of the mean)

$$
dA^{[L]} = \frac{\partial J}{\partial A^{[L]}}
$$

then runs, for $l = L, \dots, 1$, the classic loop transposed to this layout:

$$
dZ^{[l]} = dA^{[l]} \odot g^{[l]\prime}(Z^{[l]})
$$

$$
dW^{[l]} = A^{[l-1]\top} dZ^{[l]} \qquad db^{[l]} = \sum_{i=1}^{m} dZ^{[l]}_{i} \qquad
dA^{[l-1]} = dZ^{[l]} W^{[l]\top}
$$

(classic: $dW^{[l]} = dZ^{[l]} A^{[l-1]\top}$, $dA^{[l-1]} = W^{[l]\top} dZ^{[l]}$ with examples
in columns). In jaxnn the activation and the affine map are separate layers, so the first line
is the activation's ``backward`` and the second the dense layer's; any other layer (convolution,
normalization, attention) brings its own hand-derived ``backward`` into the same loop. With a
sigmoid output and binary cross-entropy, [`fuse`][jaxnn.fuse] replaces the first two steps by the
fused derivative

$$
dZ^{[L]} = \frac{1}{m} (A^{[L]} - Y)
$$

Layers never import this module: it sits above ``layers/`` and ``jaxnn.losses``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.core import Layer, map_params
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
    r"""The loss and its gradient by the explicit hand-derived chain (no autodiff).

    ``forward`` → ``dA[L] = loss.grad(A[L], Y)`` → ``model.backward`` (for a ``serial``, every
    layer's backward in reverse order): the loop of the module doc,

    $$
    dZ^{[l]} = dA^{[l]} \odot g^{[l]\prime}(Z^{[l]}) \qquad dW^{[l]} = A^{[l-1]\top} dZ^{[l]}
    \qquad db^{[l]} = \sum_{i} dZ^{[l]}_{i} \qquad dA^{[l-1]} = dZ^{[l]} W^{[l]\top}
    $$

    for $l = L, \dots, 1$. The pair is not fused here: train through
    [`fuse`][jaxnn.fuse] (as [`jaxnn.make_train_step`][jaxnn.make_train_step] does) for the
    stable sigmoid/cross-entropy derivative.

    Args:
      model: the network.
      loss: the loss on the network's output.
      train: the mode handed to ``forward`` (batch statistics, dropout).

    Returns:
      ``fn(params, state, x, y, key=None, opt_state=None) -> ((value, new_state), grads)``,
        mirroring ``jax.value_and_grad(..., has_aux=True)``; a stateless network takes
        ``state=()``. ``opt_state`` is ignored: every gradient function a training step takes
        has this signature, and some (mixed precision's) read the optimizer state.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> x = jax.random.normal(jax.random.key(1), (5, 3))
      >>> y = jnp.zeros((5, 1))
      >>> fn = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)
      >>> (value, state), grads = fn(params, (), x, y)
      >>> jax.tree.map(jnp.shape, grads)
      ({'W': (3, 2), 'b': (2,)}, (), {'W': (2, 1), 'b': (1,)})

      The same numbers as plain autodiff of the same forward:

      >>> def cost(p):
      ...     a, _ = jaxnn.reference_apply(net, p, (), x)
      ...     return jaxnn.mean_squared_error.value(a, y)
      >>> auto = jax.grad(cost)(params)
      >>> all(bool(jnp.allclose(g, h, atol=1e-6))
      ...     for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(auto)))
      True
      >>> bool(jnp.isclose(value, cost(params)))
      True
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

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> jaxnn.weight_mask(net, params)
      ({'W': True, 'b': False}, ())
    """

    def leaf_mask(path: str, leaf: Layer, p: Any) -> Any:
        del path
        if isinstance(p, dict):
            return {name: jax.tree.map(lambda _, w=name in leaf.weights: w, entry)
                    for name, entry in p.items()}
        return jax.tree.map(lambda _: False, p)

    return map_params(leaf_mask, model, params)


def l2_penalty(model: Layer, params: Any, l2: float) -> jax.Array:
    r"""``(λ/2) Σ_W ‖W‖²`` over the weights of [`weight_mask`][jaxnn.weight_mask]; its gradient is
    ``λ·W``.

    $$
    P(\theta) = \frac{\lambda}{2} \sum_{W} \lVert W \rVert^2 \qquad
    \frac{\partial P}{\partial W} = \lambda W
    $$

    where the sum runs over the weights only ($\lVert W \rVert^2$ is the sum of the squared
    entries) and every other parameter's gradient is zero.

    With the mean loss ``J = (1/m) Σ L_i`` this is the classic ``(λ_classic / 2m) Σ ‖W‖²`` with
    ``λ = λ_classic / m``. Training adds the gradient with
    [`jaxnn.l2_regularization`][jaxnn.l2_regularization].

    Args:
      model: the network.
      params: its parameters.
      l2: $\lambda$.

    Returns:
      The penalty, a scalar (zero when the network has no weights).

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> penalty = jaxnn.l2_penalty(net, params, 0.1)
      >>> by_hand = 0.1 / 2 * (jnp.sum(params[0]["W"] ** 2) + jnp.sum(params[2]["W"] ** 2))
      >>> bool(jnp.isclose(penalty, by_hand))
      True
      >>> g = jax.grad(lambda p: jaxnn.l2_penalty(net, p, 0.1))(params)
      >>> bool(jnp.allclose(g[0]["W"], 0.1 * params[0]["W"])), bool(jnp.all(g[0]["b"] == 0))
      (True, True)
    """
    mask = weight_mask(model, params)
    terms = [jnp.sum(jnp.square(w)) for w, m in zip(jax.tree.leaves(params),
                                                     jax.tree.leaves(mask), strict=True) if m]
    return jnp.asarray(0.5 * l2 * sum(terms)) if terms else jnp.zeros(())


def l2_regularization(model: Layer, l2: float) -> optax.GradientTransformation:
    r"""L2 on the weights as an optax transformation: ``g ← g + λ·W`` where
    [`weight_mask`][jaxnn.weight_mask] says ``W`` is a weight (``optax.add_decayed_weights`` with
    that mask).

    $$
    g_W \leftarrow g_W + \lambda W
    $$

    for every weight $W$; every other gradient passes unchanged. Chain it before the optimizer:
    ``optax.chain(jaxnn.l2_regularization(model, 1e-3), optax.adam(1e-3))``. It is the gradient
    of [`l2_penalty`][jaxnn.l2_penalty]; the loss a step reports is the data loss alone.

    Args:
      model: the network (its layers say which parameters are weights).
      l2: $\lambda$, non-negative.

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: if ``l2`` is negative.

    Examples:
      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> tx = jaxnn.l2_regularization(net, 0.1)
      >>> zero = jax.tree.map(jnp.zeros_like, params)
      >>> updates, _ = tx.update(zero, tx.init(params), params)
      >>> bool(jnp.allclose(updates[0]["W"], 0.1 * params[0]["W"]))
      True
      >>> bool(jnp.all(updates[0]["b"] == 0))
      True
      >>> optimizer = optax.chain(jaxnn.l2_regularization(net, 1e-3), optax.sgd(0.1))
      >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    """
    if not l2 >= 0:
        raise ValueError(f"l2_regularization: l2 must be non-negative, got {l2!r}")
    return optax.add_decayed_weights(l2, mask=lambda params: weight_mask(model, params))


def per_example_value_and_grad(model: Layer, loss: Loss, *, train: bool = True) -> Callable:
    r"""The explicit chain on each example alone, by ``jax.vmap`` (after [`fuse`][jaxnn.fuse]).

    For examples $(x_i, y_i)$, $i = 1, \dots, B$, entry $i$ is

    $$
    g_i = \nabla_{\theta} \mathcal{L}(f_{\theta}(x_i), y_i)
    $$

    computed by the hand-derived chain on a batch of one, for all $B$ examples at once by
    ``jax.vmap``; for a mean loss the batch gradient is their mean $\frac{1}{B} \sum_i g_i$.
    DP-SGD ([`jaxnn.privacy`][jaxnn.privacy]) clips each $g_i$ before averaging.

    Args:
      model: the network.
      loss: the loss on its output.
      train: the mode handed to ``forward``.

    Returns:
      ``fn(params, state, x, y, key=None, opt_state=None) -> ((value, new_state), grads)``
        where every leaf of ``grads`` has the batch on a new leading axis (entry ``i`` is the
        gradient on the batch ``(x[i:i+1], y[i:i+1])``), ``value`` is the mean of the examples'
        losses, and each example gets its own key ``split(key, B)[i]``. Each example runs through
        the network alone, so ``new_state`` is the mean over examples of the states they return,
        in the state's own dtype (a step counter advances by one; ``batch_norm`` in training
        mode, whose statistics mix examples, refuses a batch of one). ``opt_state`` is ignored.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> x = jax.random.normal(jax.random.key(1), (4, 3))
      >>> y = jnp.zeros((4, 1))
      >>> fn = jaxnn.chain.per_example_value_and_grad(net, jaxnn.mean_squared_error)
      >>> (value, state), grads = fn(params, (), x, y)
      >>> grads[0]["W"].shape  # one (3, 2) gradient per example
      (4, 3, 2)
      >>> (_, _), batch = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, (), x, y)
      >>> bool(jnp.allclose(grads[0]["W"].mean(axis=0), batch[0]["W"]))
      True
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
    ``state=()``).

    Args:
      model: the network (stateless).
      loss: the loss on its output.
      params: its parameters.
      x: the inputs, examples on the leading axis.
      y: the targets, examples on the leading axis.

    Returns:
      The gradients: the structure of ``params``, every leaf with a leading axis of ``B``
        examples.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> x = jax.random.normal(jax.random.key(1), (4, 3))
      >>> grads = jaxnn.per_example_grads(net, jaxnn.mean_squared_error, params, x,
      ...                                 jnp.zeros((4, 1)))
      >>> jax.tree.map(jnp.shape, grads)
      ({'W': (4, 3, 2), 'b': (4, 2)}, (), {'W': (4, 2, 1), 'b': (4, 1)})
    """
    return per_example_value_and_grad(model, loss)(params, (), x, y)[1]


def fuse(model: Layer, loss: Loss) -> tuple[Layer, Loss]:
    r"""Replaces a final activation and a loss on its output by the stable loss on logits.

    ``fuse(serial(…, sigmoid()), binary_cross_entropy)`` is
    ``(serial(…, identity()), binary_cross_entropy_with_logits)``: the same objective, with the
    fused derivative ``dZ[L] = (1/m)(a − y)`` and no ``log(0)`` at saturated outputs. Any other
    pair is returned unchanged.

    With $a = \sigma(z)$ and $\mathcal{L} = -y \log a - (1 - y) \log(1 - a)$, the two classic
    steps $dA^{[L]} = \frac{1}{m}\left(-\frac{y}{a} + \frac{1 - y}{1 - a}\right)$ and
    $dZ^{[L]} = dA^{[L]} \odot a (1 - a)$ collapse into

    $$
    dZ^{[L]} = \frac{1}{m} (a - y)
    $$

    which the logits loss computes from $z$ directly.

    Args:
      model: the network.
      loss: the loss on its output.

    Returns:
      ``(model, loss)``, fused when the pair has a fused form.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(1), jaxnn.sigmoid())
      >>> fused_net, fused_loss = jaxnn.fuse(net, jaxnn.binary_cross_entropy)
      >>> [layer.name for layer in fused_net.sublayers], fused_loss.name
      (['dense', 'identity'], 'binary_cross_entropy_with_logits')
      >>> z = jnp.array([[2.0], [-1.0]])
      >>> y = jnp.array([[1.0], [0.0]])
      >>> bool(jnp.allclose(fused_loss.grad(z, y), (jax.nn.sigmoid(z) - y) / 2))
      True
      >>> jaxnn.fuse(net, jaxnn.mean_squared_error) == (net, jaxnn.mean_squared_error)
      True
    """
    if loss.fused is None:
        return model, loss
    activation, fused_loss = loss.fused
    if (model.name == "serial" and len(model.sublayers) > 1
            and model.sublayers[-1].name == activation):
        # identity keeps the params/state tuples aligned with the original model's
        assert model.rebuild is not None  # serial always has one
        return model.rebuild((*model.sublayers[:-1], identity())), fused_loss
    return model, loss
