"""Per-example clipping and Gaussian noise: differentially private SGD (DP-SGD).

For a batch of ``B`` examples with per-example gradients ``g_i`` (every parameter of the model
together, one vector per example, by ``jax.vmap`` of the hand-derived chain):

* clip each example to global norm ``C``: ``ĝ_i = g_i · min(1, C / ‖g_i‖₂)``, written
  ``g_i · C / max(‖g_i‖₂, C)`` so that a zero gradient stays zero;
* sum, add Gaussian noise of standard deviation ``σ·C`` to every entry and divide by ``B``:
  ``g̃ = (Σ_i ĝ_i + N(0, σ²C² I)) / B``.

``σ`` is the noise multiplier; [`epsilon`][jaxnn.privacy.epsilon] turns ``(σ, q = B/n, steps)``
into the ``ε``
spent at a given ``δ`` with the ``dp-accounting`` package's RDP accountant (the ``privacy``
extra).

DP-SGD is two pieces of the one training step, for stateless and stateful models alike:

* the gradient function [`per_example_value_and_grad`][jaxnn.chain.per_example_value_and_grad]
  (``jax.vmap`` of the hand-derived
  chain over examples; each example gets its own key; the new model state is the mean over
  examples);
* [`private_aggregate`][jaxnn.privacy.private_aggregate], an ``optax.GradientTransformation`` that
  takes those per-example
  gradients and returns the noisy mean, keeping its PRNG key in its state; chain it before any
  optimizer. An L2 term ([`jaxnn.l2_regularization`][jaxnn.l2_regularization]) chained after it
  depends on no
  example, so it is added after the noise, unclipped::

    optimizer = optax.chain(private_aggregate(1.0, 1.1, key), optax.sgd(0.1))
    step = jaxnn.make_train_step(model, loss, optimizer,
                                 gradients=per_example_value_and_grad(model, loss))
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnn.chain import per_example_value_and_grad

__all__ = [
    "PrivateAggregateState",
    "clip_per_example",
    "clipped_noisy_mean",
    "epsilon",
    "per_example_value_and_grad",
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
    """The state of [`private_aggregate`][jaxnn.privacy.private_aggregate]: the key of the next
    step's noise."""

    key: jax.Array


def private_aggregate(clip_norm: float, noise_multiplier: float,
                      key: jax.Array) -> optax.GradientTransformation:
    """DP-SGD's aggregation as an optax transformation.

    ``update`` takes per-example gradients (leading batch axis) and returns
    [`clipped_noisy_mean`][jaxnn.privacy.clipped_noisy_mean] of them with a fresh key each step
    (``key, noise_key =
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


def epsilon(*, noise_multiplier: float, sampling_rate: float, steps: int,
            delta: float) -> float:
    """The privacy spent: ``ε`` at ``δ`` after ``steps`` DP-SGD steps, by the RDP accountant of
    the ``dp-accounting`` package (``pip install "jaxnn[privacy]"``).

    Each step is the Poisson-subsampled Gaussian mechanism (each example in the batch with
    probability ``q = sampling_rate``, e.g. ``B / n``; noise multiplier ``σ``), composed
    ``steps`` times; Rényi DP is converted to ``(ε, δ)``-DP.

    Args:
      noise_multiplier: ``σ`` of [`private_aggregate`][jaxnn.privacy.private_aggregate] (positive).
      sampling_rate: ``q`` in ``(0, 1]``.
      steps: the number of steps taken (non-negative int).
      delta: ``δ`` in ``(0, 1)``.
    """
    _check_positive("noise_multiplier", noise_multiplier)
    if not 0 < sampling_rate <= 1:
        raise ValueError(f"privacy: sampling_rate must be in (0, 1], got {sampling_rate!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"privacy: steps must be a non-negative int, got {steps!r}")
    if not 0 < delta < 1:
        raise ValueError(f"privacy: delta must be in (0, 1), got {delta!r}")
    try:
        import dp_accounting  # an optional extra: imported only when ε is asked for
    except ImportError as error:
        raise ImportError("privacy.epsilon needs the dp-accounting package: "
                          "pip install 'jaxnn[privacy]' (or pip install dp-accounting)") from error
    if steps == 0:
        return 0.0
    event = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))
