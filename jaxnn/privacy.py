r"""Per-example clipping and Gaussian noise: differentially private SGD (DP-SGD).

For a batch of ``B`` examples with per-example gradients ``g_i`` (every parameter of the model
together, one vector per example, by ``jax.vmap`` of the hand-derived chain):

* clip each example to global norm ``C``: ``ĝ_i = g_i · min(1, C / ‖g_i‖₂)``, written
  ``g_i · C / max(‖g_i‖₂, C)`` so that a zero gradient stays zero;
* sum, add Gaussian noise of standard deviation ``σ·C`` to every entry and divide by ``B``:
  ``g̃ = (Σ_i ĝ_i + N(0, σ²C² I)) / B``.

In formulas, with $g_i$ the gradient of example $i$'s loss with respect to all the parameters
(one long vector):

$$
\hat{g}_i = \frac{g_i}{\max\left(1, \lVert g_i \rVert_2 / C\right)}
$$

$$
\tilde{g} = \frac{1}{B} \left( \sum_{i=1}^{B} \hat{g}_i + \mathcal{N}(0, \sigma^2 C^2 I)
\right)
$$

Clipping bounds what one example can change in the sum, $\lVert \hat{g}_i \rVert_2 \le C$,
and the noise's standard deviation $\sigma C$ is measured in that bound; $\tilde{g}$ then
goes to the optimizer in place of the batch gradient.

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
  depends on no example, so it is added after the noise, unclipped.

Together (a runnable version is [`private_aggregate`][jaxnn.privacy.private_aggregate]'s
example):

```python
optimizer = optax.chain(private_aggregate(1.0, 1.1, key), optax.sgd(0.1))
step = jaxnn.make_train_step(model, loss, optimizer,
                             gradients=per_example_value_and_grad(model, loss))
```
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
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

    Raises:
      ValueError: if ``clip_norm`` is not positive or the leaves' batch axes differ.

    Examples:
      >>> grads = {"W": jnp.array([[3.0, 0.0], [0.3, 0.0]]), "b": jnp.array([[4.0], [0.4]])}
      >>> clipped, norms = jaxnn.privacy.clip_per_example(grads, 1.0)
      >>> [round(float(n), 4) for n in norms]
      [5.0, 0.5]
      >>> [round(float(v), 4) for v in clipped["W"][:, 0]]  # 3/5, and 0.3 untouched
      [0.6, 0.3]
      >>> [round(float(v), 4) for v in clipped["b"][:, 0]]
      [0.8, 0.4]
    """
    _check_positive("clip_norm", clip_norm)
    leaves = jax.tree.leaves(grads)
    sizes = {leaf.shape[0] for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"clip_per_example: every leaf needs the same leading batch axis, got "
                         f"sizes {sorted(sizes)}; pass per-example gradients (those of "
                         f"privacy.per_example_value_and_grad), not the batch gradient")
    squares = sum(jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1)
                  for leaf in leaves)
    norms = jnp.sqrt(squares)
    factor = clip_norm / jnp.maximum(norms, clip_norm)

    def scale(leaf):
        return leaf * factor.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype)

    return jax.tree.map(scale, grads), norms


def clipped_noisy_mean(grads: Any, clip_norm: float, noise_multiplier: float,
                       key: jax.Array) -> Any:
    r"""``(Σ_i clip(g_i, C) + N(0, σ²C² I)) / B`` for per-example gradients ``g_i``.

    Each leaf draws its noise from its own key, ``split(key, n_leaves)[j]`` for leaf ``j`` in
    ``jax.tree.leaves`` order.

    $$
    \tilde{g} = \frac{1}{B} \left( \sum_{i=1}^{B} \frac{g_i}{\max(1, \lVert g_i \rVert_2 / C)}
    + \mathcal{N}(0, \sigma^2 C^2 I) \right)
    $$

    Args:
      grads: per-example gradients, every leaf with the batch on its leading axis.
      clip_norm: ``C``.
      noise_multiplier: ``σ``, non-negative (``0``: clipping alone, no privacy).
      key: the PRNG key of the noise.

    Returns:
      The noisy mean, with the structure of one example's gradient.

    Raises:
      ValueError: if ``noise_multiplier`` is negative or ``clip_norm`` not positive.

    Examples:
      >>> grads = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}  # norms 5 and 0.5
      >>> mean = jaxnn.privacy.clipped_noisy_mean(grads, 1.0, 0.0, jax.random.key(0))
      >>> [round(float(v), 4) for v in mean["w"]]  # ((0.6, 0.8) + (0.3, 0.4)) / 2
      [0.45, 0.6]
      >>> noisy = jaxnn.privacy.clipped_noisy_mean(grads, 1.0, 1.1, jax.random.key(0))
      >>> noisy["w"].shape, bool(jnp.allclose(noisy["w"], mean["w"]))
      ((2,), False)
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
    step's noise.

    Attributes:
      key: the PRNG key the next ``update`` splits its noise key from.

    Examples:
      >>> tx = jaxnn.privacy.private_aggregate(1.0, 1.1, jax.random.key(0))
      >>> state = tx.init({"w": jnp.zeros(2)})
      >>> type(state).__name__
      'PrivateAggregateState'
      >>> _, after = tx.update({"w": jnp.ones((3, 2))}, state)
      >>> bool(jnp.array_equal(jax.random.key_data(after.key), jax.random.key_data(state.key)))
      False
    """

    key: jax.Array


def private_aggregate(clip_norm: float, noise_multiplier: float,
                      key: jax.Array) -> optax.GradientTransformation:
    """DP-SGD's aggregation as an optax transformation.

    ``update`` takes per-example gradients (leading batch axis) and returns
    [`clipped_noisy_mean`][jaxnn.privacy.clipped_noisy_mean] of them with a fresh key each step
    (``key, noise_key = split(state.key)``). Chain it before the optimizer:
    ``optax.chain(private_aggregate(1.0, 1.1, key), optax.sgd(0.1))``, and give the training
    step the per-example gradient function
    ([`per_example_value_and_grad`][jaxnn.privacy.per_example_value_and_grad]).

    **How it tells per-example gradients from the batch gradient.** A per-example gradient has
    one more axis than its parameter: every leaf of ``updates`` must have the shape
    ``(B,) + parameter.shape``, with the same ``B`` for every leaf. ``update`` compares the
    shapes with ``params`` when it is given them (``make_train_step`` and ``optax.chain`` pass
    them), else with the parameters ``init`` saw. So the batch gradient (shaped like the
    parameters) is refused while tracing, with an error naming
    ``privacy.per_example_value_and_grad``, even when every parameter's first axis happens to
    equal the batch size (which a check of the leading axes alone would take for ``B``
    examples, and silently train on).

    Args:
      clip_norm: ``C``, positive.
      noise_multiplier: ``σ``, non-negative.
      key: the PRNG key of the first step's noise.

    Returns:
      An ``optax.GradientTransformation`` whose state is a
        [`PrivateAggregateState`][jaxnn.privacy.PrivateAggregateState].

    Raises:
      ValueError: if ``clip_norm`` is not positive or ``noise_multiplier`` negative; from
        ``update``, if ``updates`` are not per-example gradients of the parameters.

    Examples:
      One DP-SGD step: per-example gradients by the hand-derived chain, then the noisy mean,
      then SGD:

      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (8, 2))
      >>> y = x[:, :1]
      >>> optimizer = optax.chain(jaxnn.privacy.private_aggregate(1.0, 1.1, jax.random.key(2)),
      ...                         optax.sgd(0.1))
      >>> gradients = jaxnn.privacy.per_example_value_and_grad(net, jaxnn.mean_squared_error)
      >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer,
      ...                              gradients=gradients)
      >>> new_params, _, opt_state, loss = step(params, (), optimizer.init(params), x, y)
      >>> jax.tree.map(jnp.shape, new_params) == jax.tree.map(jnp.shape, params)
      True

      The step's default gradient (the batch mean) is refused, naming what to pass:

      >>> plain = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
      >>> plain(params, (), optimizer.init(params), x, y)
      Traceback (most recent call last):
      ...
      ValueError: private_aggregate: expected per-example gradients, got the batch gradient: ...
    """
    _check_positive("clip_norm", clip_norm)
    _check_positive("noise_multiplier", noise_multiplier, allow_zero=True)

    seen = {}  # the parameters' shapes init saw, for an update called without params

    def init(params):
        seen["shapes"] = _shapes(params)
        return PrivateAggregateState(key)

    def update(updates, state, params=None):
        _check_per_example(updates, _shapes(params) if params is not None else seen.get("shapes"))
        next_key, noise_key = jax.random.split(state.key)
        mean = clipped_noisy_mean(updates, clip_norm, noise_multiplier, noise_key)
        return mean, PrivateAggregateState(next_key)

    return optax.GradientTransformation(init, update)


def _shapes(tree: Any) -> tuple[Any, list[tuple[str, tuple[int, ...]]]]:
    """``(treedef, [(path, shape), …])`` of a pytree of arrays: static, kept across traces."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef, [(jax.tree_util.keystr(path), tuple(jnp.shape(a))) for path, a in leaves]


_HINT = ("pass gradients=privacy.per_example_value_and_grad(model, loss) to "
         "make_train_step (or fit), whose gradients carry the batch on a new leading axis")


def _check_per_example(updates: Any, params_shapes) -> None:
    """Every leaf of ``updates`` is ``(B,) + its parameter's shape``, one ``B`` for all; else
    an error naming ``privacy.per_example_value_and_grad`` (see ``private_aggregate``)."""
    if params_shapes is None:  # neither params nor init: clip_per_example checks the axes
        return
    treedef, expected = params_shapes
    got_leaves, got_treedef = jax.tree.flatten(updates)
    if got_treedef != treedef:
        raise ValueError(f"private_aggregate: the gradients' structure {got_treedef} differs "
                         f"from the parameters' {treedef}")
    batch: dict[int, str] = {}
    for leaf, (name, shape) in zip(got_leaves, expected, strict=True):
        got = tuple(jnp.shape(leaf))
        if got == shape:
            raise ValueError(f"private_aggregate: expected per-example gradients, got the batch "
                             f"gradient: {name} has shape {got}, the parameter's own shape, "
                             f"where one gradient per example, (B,) + {shape}, is needed; "
                             f"{_HINT}")
        if len(got) != len(shape) + 1 or got[1:] != shape:
            raise ValueError(f"private_aggregate: expected per-example gradients of shape "
                             f"(B,) + {shape} at {name}, got {got}; {_HINT}")
        batch.setdefault(got[0], name)
    if len(batch) > 1:
        sizes = ", ".join(f"{size} at {name}" for size, name in batch.items())
        raise ValueError(f"private_aggregate: per-example gradients need one batch size B for "
                         f"every leaf, got {sizes}; {_HINT}")


def epsilon(*, noise_multiplier: float, sampling_rate: float, steps: int,
            delta: float) -> float:
    """The privacy spent: ``ε`` at ``δ`` after ``steps`` DP-SGD steps, by the RDP accountant of
    the ``dp-accounting`` package (``pip install "jaxnn[privacy]"``).

    Each step is the Poisson-subsampled Gaussian mechanism (each example in the batch with
    probability ``q = sampling_rate``, e.g. ``B / n``; noise multiplier ``σ``), composed
    ``steps`` times; Rényi DP is converted to ``(ε, δ)``-DP, the minimum over the accountant's
    Rényi orders. For large ``q`` the series of some orders close to 1 does not converge and
    the accountant leaves them out of the minimum (``ε`` stays an upper bound); its
    ``failed to converge`` warnings, one per order, are not printed. Its other warnings are.

    Args:
      noise_multiplier: ``σ`` of [`private_aggregate`][jaxnn.privacy.private_aggregate] (positive).
      sampling_rate: ``q`` in ``(0, 1]``.
      steps: the number of steps taken (non-negative int).
      delta: ``δ`` in ``(0, 1)``.

    Returns:
      ``ε``, a float (``0.0`` after no step).

    Raises:
      ValueError: if an argument is out of range.
      ImportError: if ``dp-accounting`` is not installed.

    Examples:
      >>> eps = jaxnn.privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=1000,
      ...                             delta=1e-5)
      >>> round(eps, 1)
      1.7
      >>> eps < jaxnn.privacy.epsilon(noise_multiplier=1.1, sampling_rate=0.01, steps=10000,
      ...                             delta=1e-5)  # every step spends more
      True
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
    with _quiet_orders_excluded():
        accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))


class _OrderExcluded(logging.Filter):
    """Drops dp-accounting's "_compute_log_a_frac failed to converge … Excluding this order"
    records: the accountant leaves that Rényi order out of the minimum over orders, so ``ε``
    stays a valid upper bound and the user has nothing to act on. Every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextlib.contextmanager
def _quiet_orders_excluded() -> Iterator[None]:
    """Filters those records out of the ``absl`` logger for the ``with`` block only; the
    logger's level and filters are as they were afterwards."""
    logger, quiet = logging.getLogger("absl"), _OrderExcluded()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
