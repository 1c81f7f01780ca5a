"""Training: the explicit hand-derived chain, jitted optax steps, L2, per-example gradients.

:func:`value_and_grad` is the classic backward propagation with no autodiff at all: forward
through the network, ``dA[L] = loss.grad(A[L], Y)``, then every layer's ``backward`` in reverse.
:func:`make_train_step` wraps it (after :func:`jaxnn.losses.fuse`, so a sigmoid output with
binary cross-entropy trains on the stable ``dZ[L] = (a − y)/m``) with any optax
``GradientTransformation`` into one jitted, pure step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.chain import fuse, l2_penalty, value_and_grad, weight_mask
from jaxnn.core import Layer, apply, reference_apply
from jaxnn.losses import Loss

__all__ = ["accuracy", "make_train_step", "predict", "run_steps"]


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    l2: float = 0.0,
    stateful: bool = False,
    gradients: str = "hand",
    jit: bool = True,
    donate: bool = False,
) -> Callable:
    """One jitted, pure training step with any optax optimizer.

    Args:
      model: the network.
      loss: the loss; a final ``sigmoid`` with :data:`binary_cross_entropy` is fused into the
        stable logits form first (:func:`jaxnn.losses.fuse`).
      optimizer: an ``optax.GradientTransformation`` (``optax.sgd(0.0075)`` is the classic
        gradient descent).
      l2: λ of the penalty ``(λ/2) Σ ‖W‖²`` on weights only (biases are not regularized); the
        gradient gets ``+ λ·W`` and the returned loss includes the penalty.
      stateful: if false the step is ``(params, opt_state, x, y) -> (params, opt_state, loss)``
        and the model runs in train mode with empty state and no key. If true it is
        ``(params, state, opt_state, x, y, key) -> (params, state, opt_state, loss)``, for layers
        with state (batch norm) or randomness (dropout).
      gradients: ``"hand"`` (the explicit hand-derived chain, the default) or ``"autodiff"``
        (``jax.grad`` of the same forward, the reference path: for comparisons).
      jit: compile the step with ``jax.jit`` (it is traced once for given shapes and dtypes).
      donate: donate the params and optimizer-state buffers to the step (the caller must not
        reuse the arrays it passed in).
    """
    if gradients not in ("hand", "autodiff"):
        raise ValueError(f"make_train_step: gradients must be 'hand' or 'autodiff', got "
                         f"{gradients!r}")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"make_train_step: optimizer must be an optax.GradientTransformation, "
                        f"got {type(optimizer).__name__}")
    model, loss = fuse(model, loss)

    if gradients == "hand":
        chain = value_and_grad(model, loss, has_state=True, train=True)
    else:

        def objective(params, state, x, y, key):
            a, new_state = reference_apply(model, params, state, x, key=key, train=True)
            return loss.value(a, y), new_state

        chain = jax.value_and_grad(objective, has_aux=True)

    def step_with_state(params, state, opt_state, x, y, key):
        (value, new_state), grads = chain(params, state, x, y, key)
        if l2:
            value = value + l2_penalty(params, l2)
            mask = weight_mask(params)
            grads = jax.tree.map(lambda g, w, m: g + l2 * w if m else g, grads, params, mask)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, value

    if stateful:
        step = step_with_state
        donated = (0, 1, 2)
    else:

        def step(params, opt_state, x, y):
            params, _, opt_state, value = step_with_state(params, (), opt_state, x, y, None)
            return params, opt_state, value

        donated = (0, 1)
    if jit:
        step = jax.jit(step, donate_argnums=donated if donate else ())
    return step


@functools.partial(jax.jit, static_argnames=("step", "n_steps"))
def run_steps(step: Callable, params: Any, opt_state: Any, x: jax.Array, y: jax.Array,
              n_steps: int) -> tuple[Any, Any, jax.Array]:
    """``n_steps`` full-batch steps fused into one compiled ``lax.scan``.

    ``step`` is a step from :func:`make_train_step` (``stateful=False``). Returns the final
    params and optimizer state and the loss of every step, shape ``(n_steps,)``. Equal to calling
    ``step`` ``n_steps`` times from Python, without a dispatch per step.
    """

    def body(carry, _):
        p, s = carry
        p, s, value = step(p, s, x, y)
        return (p, s), value

    (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), None, length=n_steps)
    return params, opt_state, losses


def predict(model: Layer, params: Any, x: jax.Array, *, state: Any = ()) -> jax.Array:
    """The network's output in evaluation mode (running statistics, no dropout)."""
    y, _ = apply(model, params, state, x, train=False)
    return y


def accuracy(prediction: jax.Array, target: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    """Fraction of correct predictions.

    With one output per example ``prediction`` holds probabilities, compared with
    ``threshold``, and ``target`` has its shape. With ``K > 1`` outputs the arg-max is compared
    with integer class ids of shape ``prediction.shape[:-1]`` or ``prediction.shape[:-1] + (1,)``
    (the ``(m, 1)`` labels :mod:`jaxnn.data` returns), or with one-hot rows of
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
