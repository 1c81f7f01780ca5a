"""Per-example clipping and Gaussian noise: differentially private SGD (DP-SGD).

For a batch of ``B`` examples with per-example gradients ``g_i`` (every parameter of the model
together, one vector per example, by ``jax.vmap`` of the hand-derived chain):

* clip each example to global norm ``C``: ``ĝ_i = g_i · min(1, C / ‖g_i‖₂)``, written
  ``g_i · C / max(‖g_i‖₂, C)`` so that a zero gradient stays zero;
* sum, add Gaussian noise of standard deviation ``σ·C`` to every entry and divide by ``B``:
  ``g̃ = (Σ_i ĝ_i + N(0, σ²C² I)) / B``.

``σ`` is the noise multiplier; the privacy accounting that turns ``(σ, B/n, steps)`` into
``(ε, δ)`` is outside this module (e.g. the ``dp_accounting`` package). An L2 penalty's gradient
``λ·W`` depends on no example, so it is added after the noise, unclipped.

Two forms, one computation (:func:`clipped_noisy_mean`):

* :func:`make_private_train_step` — a jitted step ``(params, opt_state, x, y, key) ->
  (params, opt_state, loss)`` with any optax optimizer after the aggregation;
* :func:`private_aggregate` — an ``optax.GradientTransformation`` that takes per-example
  gradients (leading batch axis, e.g. from :func:`jaxnn.per_example_grads`) and returns the
  noisy mean, keeping its PRNG key in its state; chain it before any optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnn.chain import fuse, l2_penalty, value_and_grad, weight_mask
from jaxnn.core import Layer
from jaxnn.losses import Loss

__all__ = [
    "PrivateAggregateState",
    "clip_per_example",
    "clipped_noisy_mean",
    "make_private_train_step",
    "private_aggregate",
]


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"privacy: {name} must be {bound}, got {value!r}")


def clip_per_example(grads: Any, clip_norm: float) -> tuple[Any, jax.Array]:
    """Clips each example's gradient to global norm ``clip_norm``.

    Args:
      grads: per-example gradients, every leaf with the batch on its leading axis.
      clip_norm: ``C``.

    Returns:
      ``(clipped, norms)``: the gradients scaled by ``C / max(‖g_i‖, C)`` and the norms
      ``‖g_i‖`` before clipping (shape ``(B,)``), the norm taken over all leaves together.
    """
    _check_positive("clip_norm", clip_norm)
    leaves = jax.tree.leaves(grads)
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"clip_per_example: every leaf needs the same leading batch axis, got "
                         f"sizes {sorted(sizes)}")
    squares = sum(jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1)
                  for leaf in leaves)
    norms = jnp.sqrt(squares)
    factor = clip_norm / jnp.maximum(norms, clip_norm)

    def scale(leaf):
        return leaf * factor.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)

    return jax.tree.map(scale, grads), norms


def clipped_noisy_mean(grads: Any, clip_norm: float, noise_multiplier: float,
                       key: jax.Array) -> Any:
    """``(Σ_i clip(g_i, C) + N(0, σ²C² I)) / B`` for per-example gradients ``g_i``.

    Each leaf draws its noise from its own key, ``split(key, n_leaves)[j]`` for leaf ``j`` in
    ``jax.tree.leaves`` order.
    """
    _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    clipped, _ = clip_per_example(grads, clip_norm)
    leaves, treedef = jax.tree.flatten(clipped)
    batch = leaves[0].shape[0]
    keys = jax.random.split(key, len(leaves))
    std = noise_multiplier * clip_norm
    noisy = [
        (jnp.sum(leaf, axis=0)
         + std * jax.random.normal(k, leaf.shape[1:], leaf.dtype)) / batch
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, noisy)


class PrivateAggregateState(NamedTuple):
    """The state of :func:`private_aggregate`: the key of the next step's noise."""

    key: jax.Array


def private_aggregate(clip_norm: float, noise_multiplier: float,
                      key: jax.Array) -> optax.GradientTransformation:
    """DP-SGD's aggregation as an optax transformation.

    ``update`` takes per-example gradients (leading batch axis) and returns
    :func:`clipped_noisy_mean` of them with a fresh key each step (``key, noise_key =
    split(state.key)``). Chain it before the optimizer:
    ``optax.chain(private_aggregate(1.0, 1.1, key), optax.sgd(0.1))``.
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)

    def init(params):
        del params
        return PrivateAggregateState(key)

    def update(updates, state, params=None):
        del params
        next_key, noise_key = jax.random.split(state.key)
        mean = clipped_noisy_mean(updates, clip_norm, noise_multiplier, noise_key)
        return mean, PrivateAggregateState(next_key)

    return optax.GradientTransformation(init, update)


def _per_example_values_and_grads(model: Layer, loss: Loss) -> Callable:
    chain = value_and_grad(*fuse(model, loss), train=True)

    def per_example(params, x, y):
        return jax.vmap(lambda xi, yi: chain(params, xi[None], yi[None]))(x, y)

    return per_example


def make_private_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    clip_norm: float,
    noise_multiplier: float,
    l2: float = 0.0,
    jit: bool = True,
) -> Callable:
    """A DP-SGD training step: per-example gradients, clipping, noise, then ``optimizer``.

    Args:
      model, loss, optimizer: as for :func:`jaxnn.make_train_step` (stateless models).
      clip_norm: ``C``, the bound on each example's gradient norm.
      noise_multiplier: ``σ``; the noise has standard deviation ``σ·C`` before the division
        by the batch size. ``0`` gives clipping alone.
      l2: λ of ``(λ/2) Σ ‖W‖²``; its gradient ``λ·W`` is added after the noise.
      jit: compile the step.

    Returns:
      ``step(params, opt_state, x, y, key) -> (params, opt_state, loss)``; ``key`` draws this
      step's noise (:func:`clipped_noisy_mean`), ``loss`` is the mean per-example loss (plus
      the penalty).
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)
    per_example = _per_example_values_and_grads(model, loss)

    def step(params, opt_state, x, y, key):
        values, grads = per_example(params, x, y)
        grads = clipped_noisy_mean(grads, clip_norm, noise_multiplier, key)
        value = jnp.mean(values)
        if l2:
            value = value + l2_penalty(params, l2)
            grads = jax.tree.map(lambda g, w, m: g + l2 * w if m else g, grads, params,
                                 weight_mask(params))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return jax.jit(step) if jit else step
