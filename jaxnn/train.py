"""Training: the one step, composed from a gradient function and any optax transformation.

[`make_train_step`][jaxnn.make_train_step] is the only training step: ``step(params, state,
opt_state, x, y, key)
-> (params, state, opt_state, loss)`` for every model (a stateless one passes ``state=()`` and
``key=None``). Every feature plugs into it as one of two pieces:

* a gradient function ``(params, state, x, y, key, opt_state) -> ((value, new_state), grads)``:
  the explicit hand-derived chain (``"hand"``, [`jaxnn.value_and_grad`][jaxnn.value_and_grad], after
  [`jaxnn.fuse`][jaxnn.fuse], so a sigmoid output with binary cross-entropy trains on the stable
  ``dZ[L] = (a − y)/m``), plain autodiff of the same forward (``"autodiff"``), mixed precision
  ([`jaxnn.precision.value_and_grad`][jaxnn.precision.value_and_grad]) or per-example gradients for
  DP-SGD
  ([`jaxnn.chain.per_example_value_and_grad`][jaxnn.chain.per_example_value_and_grad]);
* an optax ``GradientTransformation``: the optimizer, chained after L2
  ([`jaxnn.l2_regularization`][jaxnn.l2_regularization]), loss scaling
  ([`jaxnn.precision.loss_scaling`][jaxnn.precision.loss_scaling]) or
  DP-SGD's aggregation ([`jaxnn.privacy.private_aggregate`][jaxnn.privacy.private_aggregate]).

[`jaxnn.fit`][jaxnn.fit], [`jaxnn.ensemble`][jaxnn.ensemble] and
[`jaxnn.data_parallel`][jaxnn.data_parallel] wrap this same step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.chain import fuse, value_and_grad
from jaxnn.core import Layer, apply, reference_apply
from jaxnn.losses import Loss

__all__ = ["accuracy", "make_train_step", "predict", "run_steps"]


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    gradients: str | Callable = "hand",
    jit: bool = True,
    donate: bool = False,
) -> Callable:
    """The training step: gradients, then ``optimizer``, then the parameter update.

    Args:
      model: the network.
      loss: the loss; a final ``sigmoid`` with [`binary_cross_entropy`][jaxnn.binary_cross_entropy]
        is fused into the
        stable logits form first ([`jaxnn.fuse`][jaxnn.fuse]).
      optimizer: an ``optax.GradientTransformation`` (``optax.sgd(0.0075)`` is the classic
        gradient descent); chain L2, loss scaling or DP-SGD's aggregation into it.
      gradients: ``"hand"`` (the explicit hand-derived chain, the default), ``"autodiff"``
        (``jax.grad`` of the same forward, the reference path: for comparisons), or a gradient
        function ``(params, state, x, y, key, opt_state) -> ((value, new_state), grads)``
        (then ``model`` and ``loss`` are those it was built from).
      jit: compile the step with ``jax.jit`` (it is traced once for given shapes and dtypes).
      donate: donate the params, state and optimizer-state buffers to the step (the caller must
        not reuse the arrays it passed in).

    Returns:
      ``step(params, state, opt_state, x, y, key=None) -> (params, state, opt_state, loss)``:
      the model runs in training mode; ``key`` is its randomness (dropout); ``loss`` is the value
      the gradient function reports (the data loss, before any L2 penalty).
    """
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"make_train_step: optimizer must be an optax.GradientTransformation, "
                        f"got {type(optimizer).__name__}")
    gradient = _gradient_function(model, loss, gradients)

    def step(params, state, opt_state, x, y, key=None):
        (value, new_state), grads = gradient(params, state, x, y, key, opt_state)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, value

    if jit:
        step = jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())
    return step


def _gradient_function(model: Layer, loss: Loss, gradients: str | Callable) -> Callable:
    if callable(gradients):
        return gradients
    if gradients == "hand":
        return value_and_grad(*fuse(model, loss), train=True)
    if gradients == "autodiff":
        model, loss = fuse(model, loss)

        def objective(params, state, x, y, key):
            a, new_state = reference_apply(model, params, state, x, key=key, train=True)
            return loss.value(a, y), new_state

        autodiff = jax.value_and_grad(objective, has_aux=True)
        return lambda params, state, x, y, key=None, opt_state=None: autodiff(
            params, state, x, y, key)
    raise ValueError(f"make_train_step: gradients must be 'hand', 'autodiff' or a gradient "
                     f"function, got {gradients!r}")


@functools.partial(jax.jit, static_argnames=("step", "n_steps"))
def run_steps(step: Callable, params: Any, state: Any, opt_state: Any, x: jax.Array,
              y: jax.Array, n_steps: int, key: jax.Array | None = None
              ) -> tuple[Any, Any, Any, jax.Array]:
    """``n_steps`` full-batch steps fused into one compiled ``lax.scan``.

    ``step`` is a step from [`make_train_step`][jaxnn.make_train_step]; step ``s`` gets the key
    ``split(key, n_steps)[s]`` (``None`` without a key). Returns the final params, model state
    and optimizer state and the loss of every step, shape ``(n_steps,)``. Equal to calling
    ``step`` ``n_steps`` times from Python, without a dispatch per step.
    """
    keys = None if key is None else jax.random.split(key, n_steps)

    def body(carry, step_key):
        p, s, o = carry
        p, s, o, value = step(p, s, o, x, y, step_key)
        return (p, s, o), value

    (params, state, opt_state), losses = jax.lax.scan(
        body, (params, state, opt_state), keys, length=n_steps)
    return params, state, opt_state, losses


def predict(model: Layer, params: Any, x: jax.Array, *, state: Any = ()) -> jax.Array:
    """The network's output in evaluation mode (running statistics, no dropout)."""
    y, _ = apply(model, params, state, x, train=False)
    return y


def accuracy(prediction: jax.Array, target: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """Fraction of correct predictions.

    With one output per example ``prediction`` holds probabilities, compared with
    ``threshold``, and ``target`` has its shape. With ``K > 1`` outputs the arg-max is compared
    with integer class ids of shape ``prediction.shape[:-1]`` or ``prediction.shape[:-1] + (1,)``
    (the ``(m, 1)`` labels [`jaxnn.data`][jaxnn.data] returns), or with one-hot rows of
    ``prediction``'s shape. Any other target shape is an error: targets are never broadcast.

    >>> import jax.numpy as jnp, jaxnn
    >>> probs = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    >>> float(jaxnn.accuracy(probs, jnp.array([[1], [0], [0]])))
    0.666...
    """
    if prediction.ndim >= 2 and prediction.shape[-1] > 1:
        return jnp.mean(jnp.argmax(prediction, -1) == _class_ids(prediction, target))
    if prediction.shape != target.shape:
        raise ValueError(f"accuracy: target shape {target.shape} does not match prediction shape "
                         f"{prediction.shape}; targets are never broadcast")
    return jnp.mean((prediction > threshold) == (target > 0.5))


def _class_ids(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """``target`` as class ids of shape ``prediction.shape[:-1]``, or a named error."""
    batch_shape = tuple(prediction.shape[:-1])
    if jnp.issubdtype(target.dtype, jnp.integer):
        if tuple(target.shape) == batch_shape + (1,):
            return target[..., 0]
        if tuple(target.shape) == batch_shape:
            return target
    elif tuple(target.shape) == tuple(prediction.shape):
        return jnp.argmax(target, -1)
    raise ValueError(
        f"accuracy: for predictions of shape {tuple(prediction.shape)} ({prediction.shape[-1]} "
        f"classes) the target must be integer class ids of shape {batch_shape} or "
        f"{batch_shape + (1,)}, or one-hot rows of shape {tuple(prediction.shape)}; got "
        f"{target.dtype} of shape {tuple(target.shape)}. Targets are never broadcast"
    )
