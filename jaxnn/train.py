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

[`jaxnn.fit.fit`][jaxnn.fit.fit], [`jaxnn.ensemble`][jaxnn.ensemble] and
[`jaxnn.sharding`][jaxnn.sharding] wrap this same step.
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
    r"""The training step: gradients, then ``optimizer``, then the parameter update.

    With parameters $\theta$, model state $s$ and optimizer state $o$, one step on a batch
    $(x, y)$ is

    $$
    \bigl((J, s'), g\bigr) = \operatorname{gradient}(\theta, s, x, y) \qquad
    (u, o') = \operatorname{optimizer.update}(g, o, \theta) \qquad \theta' = \theta + u
    $$

    so with ``optax.sgd(η)`` ($u = -\eta g$) it is classic gradient descent,
    $\theta' = \theta - \eta \, \partial J / \partial \theta$.

    Args:
      model: the network.
      loss: the loss; a final ``sigmoid`` with [`binary_cross_entropy`][jaxnn.binary_cross_entropy]
        is fused into the
        stable logits form first ([`jaxnn.fuse`][jaxnn.fuse]).
      optimizer: an ``optax.GradientTransformation`` (``optax.sgd(0.0075)`` is the classic
        gradient descent); chain L2, loss scaling or DP-SGD's aggregation into it. Gradient
        accumulation, ``optax.MultiSteps(optimizer, k)``, is taken as it is (its
        ``.gradient_transformation()``): ``k`` calls of the step make one update with the mean
        of their ``k`` gradients.
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

    Raises:
      TypeError: if ``optimizer`` is not an ``optax.GradientTransformation`` (nor an
        ``optax.MultiSteps``); the message names the fix for an uncalled factory
        (``optax.adam``), a bare learning rate or an object with ``init``/``update`` of its own.
      ValueError: if ``gradients`` is neither ``"hand"``, ``"autodiff"`` nor callable.

    Examples:
      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (16, 2))
      >>> y = (x[:, :1] > 0).astype(x.dtype)
      >>> optimizer = optax.sgd(0.5)
      >>> step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
      >>> opt_state = optimizer.init(params)
      >>> losses = []
      >>> for _ in range(20):
      ...     params, _, opt_state, loss = step(params, (), opt_state, x, y)
      ...     losses.append(float(loss))
      >>> losses[-1] < losses[0]
      True

      The hand-derived step and the autodiff reference take the same step:

      >>> reference = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer,
      ...                                   gradients="autodiff")
      >>> hand_params = step(params, (), opt_state, x, y)[0]
      >>> auto_params = reference(params, (), opt_state, x, y)[0]
      >>> bool(jnp.allclose(hand_params[0]["W"], auto_params[0]["W"], atol=1e-6))
      True

      Gradient accumulation: with ``optax.MultiSteps`` every second step updates the
      parameters, by the mean of the two gradients:

      >>> accumulate = optax.MultiSteps(optax.sgd(0.5), every_k_schedule=2)
      >>> step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, accumulate)
      >>> opt_state = accumulate.init(params)
      >>> first, _, opt_state, _ = step(params, (), opt_state, x[:8], y[:8])
      >>> bool(jnp.array_equal(first[0]["W"], params[0]["W"]))  # the gradient is kept
      True
      >>> second, _, opt_state, _ = step(first, (), opt_state, x[8:], y[8:])
      >>> bool(jnp.array_equal(second[0]["W"], params[0]["W"]))  # one update
      False
    """
    optimizer = _as_transformation(optimizer, "make_train_step")
    gradient = _gradient_function(model, loss, gradients)

    def step(params, state, opt_state, x, y, key=None):
        (value, new_state), grads = gradient(params, state, x, y, key, opt_state)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, new_state, opt_state, value

    if jit:
        step = jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())
    return step


def _as_transformation(optimizer: Any, where: str) -> optax.GradientTransformation:
    """``optimizer`` as an ``optax.GradientTransformation``, or a ``TypeError`` that says what to
    pass instead.

    An object that wraps a transformation and hands it out by ``.gradient_transformation()``
    (``optax.MultiSteps``, optax's gradient accumulation) is taken as that transformation.

    Args:
      optimizer: what the user gave as the optimizer.
      where: the function's name, for the message.

    Raises:
      TypeError: anything else; an optax factory given uncalled (``optax.adam``), a number (the
        learning rate alone) and an object with ``init``/``update`` of its own get a message
        naming the fix.
    """
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    unwrap = getattr(optimizer, "gradient_transformation", None)
    if callable(unwrap):
        transformation = unwrap()
        if isinstance(transformation, optax.GradientTransformation):
            return transformation
    expected = f"{where}: optimizer must be an optax.GradientTransformation"
    name = type(optimizer).__name__
    if callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update",
                                                                           None)):
        raise TypeError(f"{expected}, got a {name} with init and update of its own: wrap it as "
                        f"optax.GradientTransformation(opt.init, opt.update), or give the "
                        f"transformation it holds (opt.gradient_transformation() for optax "
                        f"wrappers such as optax.MultiSteps)")
    if callable(optimizer) and not isinstance(optimizer, type):
        function = getattr(optimizer, "__name__", name)
        raise TypeError(f"{expected}, got the function {function} itself: call it to make the "
                        f"optimizer, e.g. {function}(learning_rate)")
    if isinstance(optimizer, (int, float)) and not isinstance(optimizer, bool):
        raise TypeError(f"{expected}, got the number {optimizer!r}: give an optimizer made "
                        f"with that learning rate, e.g. optax.sgd({optimizer!r})")
    raise TypeError(f"{expected} (optax.sgd(0.1), optax.adam(1e-3), …; an "
                    f"optax.MultiSteps too), got {name}")


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

    Args:
      step: the training step (static: one compilation per step function and ``n_steps``).
      params: the initial parameters.
      state: the model's initial state (``()`` for a stateless model).
      opt_state: the initial optimizer state.
      x: the whole training set's inputs, examples on the leading axis.
      y: its targets.
      n_steps: the number of steps (static).
      key: the PRNG key the steps' keys are split from, or ``None``.

    Returns:
      ``(params, state, opt_state, losses)`` after the last step.

    Examples:
      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (16, 2))
      >>> y = x[:, :1] - 2 * x[:, 1:]
      >>> optimizer = optax.sgd(0.1)
      >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
      >>> params, _, opt_state, losses = jaxnn.run_steps(step, params, (), optimizer.init(params),
      ...                                                x, y, 50)
      >>> losses.shape
      (50,)
      >>> bool(losses[-1] < 0.5 * losses[0])
      True
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
    """The network's output in evaluation mode (running statistics, no dropout).

    Args:
      model: the network.
      params: its parameters.
      x: the input, batch axis first.
      state: the model's state (``()`` for a stateless model).

    Returns:
      The output of the last layer (probabilities after a final ``sigmoid``).

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dropout(0.5), jaxnn.dense(1),
      ...                    jaxnn.sigmoid())
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jnp.ones((4, 2))
      >>> p = jaxnn.predict(net, params, x)
      >>> p.shape
      (4, 1)
      >>> bool(jnp.all((p > 0) & (p < 1)))
      True
      >>> bool(jnp.array_equal(p, jaxnn.predict(net, params, x)))  # no dropout: deterministic
      True
    """
    y, _ = apply(model, params, state, x, train=False)
    return y


def accuracy(prediction: jax.Array, target: jax.Array, *, threshold: float = 0.5) -> jax.Array:
    r"""Fraction of correct predictions.

    $$
    \operatorname{accuracy} = \frac{1}{m} \sum_{i=1}^{m} \mathbf{1}[\hat{y}_i = y_i]
    $$

    where $\hat{y}_i = \mathbf{1}[p_i > \text{threshold}]$ for one output per example and
    $\hat{y}_i = \arg\max_j p_{ij}$ for $K > 1$ outputs.

    With one output per example ``prediction`` holds probabilities, compared with
    ``threshold``, and ``target`` has its shape. With ``K > 1`` outputs the arg-max is compared
    with integer class ids of shape ``prediction.shape[:-1]`` or ``prediction.shape[:-1] + (1,)``
    (the ``(m, 1)`` labels [`jaxnn.data`][jaxnn.data] returns), or with one-hot rows of
    ``prediction``'s shape. Any other target shape is an error: targets are never broadcast.

    Args:
      prediction: ``(m, 1)`` (or any shape) probabilities, or ``(m, K)`` class scores.
      target: the targets, as above.
      threshold: the probability above which a single output counts as class 1.

    Returns:
      The fraction, a scalar in ``[0, 1]``.

    Raises:
      ValueError: if the target's shape or dtype does not fit the prediction.

    Examples:
      >>> probs = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
      >>> float(jaxnn.accuracy(probs, jnp.array([[1], [0], [0]])))
      0.666...
      >>> float(jaxnn.accuracy(jnp.array([[0.9], [0.2], [0.6]]), jnp.array([[1.0], [0.0], [1.0]])))
      1.0
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
        if tuple(target.shape) == (*batch_shape, 1):
            return target[..., 0]
        if tuple(target.shape) == batch_shape:
            return target
    elif tuple(target.shape) == tuple(prediction.shape):
        return jnp.argmax(target, -1)
    raise ValueError(
        f"accuracy: for predictions of shape {tuple(prediction.shape)} ({prediction.shape[-1]} "
        f"classes) the target must be integer class ids of shape {batch_shape} or "
        f"{(*batch_shape, 1)}, or one-hot rows of shape {tuple(prediction.shape)}; got "
        f"{target.dtype} of shape {tuple(target.shape)}. Targets are never broadcast"
    )
