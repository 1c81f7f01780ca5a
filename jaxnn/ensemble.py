r"""Ensembles: K independent models trained in one compiled step by ``jax.vmap``.

The K members' parameters are stacked on a new leading axis (every leaf gets shape
``(K, *leaf.shape)``); one step is [`jaxnn.make_train_step`][jaxnn.make_train_step]'s step under
``jax.vmap`` over that axis, so the K models train together in one compiled program and each
member's update equals the update of a separate run.

For members $k = 1, \dots, K$ with parameters $\theta_k$, model states $s_k$ and optimizer
states $o_k$, the ensemble step maps the one step over the member axis:

$$
(\theta_k', s_k', o_k', J_k) = \operatorname{step}(\theta_k, s_k, o_k, x, y)
\qquad k = 1, \dots, K
$$

(with $x_k, y_k$ in place of $x, y$ when every member has its own data). Nothing is shared
between members but the batch: member $k$'s gradient is $\partial J_k / \partial \theta_k$
alone.

Members differ by their initialization (one key each, [`init`][jaxnn.ensemble.init]) and,
optionally, by hyperparameters: build the optimizer with ``optax.inject_hyperparams`` and give
[`init_optimizer`][jaxnn.ensemble.init_optimizer] one value per member, e.g. a vector of learning
rates.

Examples:
  >>> import optax
  >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
  >>> _, params, state = jaxnn.ensemble.init(net, jax.random.key(0), (-1, 2), members=3)
  >>> params[0]["W"].shape
  (3, 2, 4)
  >>> optimizer = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  >>> opt_state = jaxnn.ensemble.init_optimizer(optimizer, params,
  ...                                           learning_rate=jnp.array([0.1, 0.03, 0.01]))
  >>> step = jaxnn.ensemble.make_train_step(net, jaxnn.mean_squared_error, optimizer)
  >>> x, y = jnp.ones((5, 2)), jnp.zeros((5, 1))
  >>> params, state, opt_state, losses = step(params, state, opt_state, x, y)
  >>> losses.shape
  (3,)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnn.core import Layer, Shape, apply
from jaxnn.losses import Loss
from jaxnn.train import make_train_step as _make_train_step

__all__ = ["init", "init_optimizer", "make_train_step", "member", "predict"]


def init(model: Layer, key: jax.Array, in_shape: Shape, *,
         members: int | None = None) -> tuple[Shape, Any, Any]:
    """Initializes ``members`` copies of ``model``, each from its own key, stacked.

    Args:
      model: the network.
      key: one key (split into ``members`` keys) or a batch of keys, one per member.
      in_shape: the input shape, as for ``model.init``.
      members: the ensemble size K; required with a single key, else taken from ``key``.

    Returns:
      ``(out_shape, params, state)`` with every leaf of ``params`` and ``state`` stacked on a
        leading axis of size K. Member ``k`` equals ``model.init(keys[k], in_shape)``.

    Raises:
      ValueError: if ``members`` is missing with a single key, or disagrees with the keys.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
      >>> keys = jax.random.split(jax.random.key(0), 3)
      >>> out_shape, params, state = jaxnn.ensemble.init(net, keys, (-1, 2))
      >>> out_shape, jax.tree.map(jnp.shape, params[0]), state
      ((-1, 1), {'W': (3, 2, 4), 'b': (3, 4)}, ())
      >>> _, alone, _ = net.init(keys[1], (-1, 2))
      >>> bool(jnp.array_equal(params[0]["W"][1], alone[0]["W"]))
      True
    """
    if key.ndim == 0:
        if members is None or not isinstance(members, int) or members < 1:
            raise ValueError(f"ensemble.init: with a single key, members must be a positive int, "
                             f"got {members!r}")
        keys = jax.random.split(key, members)
    else:
        if members is not None and members != key.shape[0]:
            raise ValueError(f"ensemble.init: members={members} but {key.shape[0]} keys given")
        keys = key
    out_shape, _, _ = model.init(keys[0], in_shape)
    params, state = jax.vmap(lambda k: model.init(k, in_shape)[1:])(keys)
    return out_shape, params, state


def _ensemble_size(params: Any) -> int:
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in jax.tree.leaves(params)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"ensemble: every parameter must be stacked on a leading member axis of "
                         f"one size, got leading sizes {sorted(map(str, sizes))}")
    size = sizes.pop()
    assert size is not None
    return size


def init_optimizer(optimizer: optax.GradientTransformation, params: Any,
                   **hyperparams: Any) -> Any:
    """The stacked optimizer state of every member, with per-member hyperparameters.

    Args:
      optimizer: the optimizer; to vary hyperparameters build it with
        ``optax.inject_hyperparams`` (their values live in its state, so ``vmap`` maps them).
      params: stacked parameters from [`init`][jaxnn.ensemble.init].
      **hyperparams: ``name=values`` with one value per member (shape ``(K,)``), e.g.
        ``learning_rate=jnp.array([1e-1, 1e-2, 1e-3])``.

    Returns:
      The optimizer state, every leaf stacked on the member axis.

    Raises:
      ValueError: if the parameters are not stacked on one member axis, or a hyperparameter is
        unknown, not injected, or not one value per member.

    Examples:
      >>> import optax
      >>> net = jaxnn.dense(1)
      >>> _, params, _ = jaxnn.ensemble.init(net, jax.random.key(0), (-1, 2), members=3)
      >>> optimizer = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)
      >>> opt_state = jaxnn.ensemble.init_optimizer(optimizer, params,
      ...                                           learning_rate=jnp.array([1e-1, 1e-2, 1e-3]))
      >>> [round(float(v), 4) for v in opt_state.hyperparams["learning_rate"]]
      [0.1, 0.01, 0.001]
      >>> opt_state.inner_state[0].mu["W"].shape  # Adam's first moment, per member
      (3, 2, 1)
    """
    k = _ensemble_size(params)
    opt_state = jax.vmap(optimizer.init)(params)
    if not hyperparams:
        return opt_state
    injected = getattr(opt_state, "hyperparams", None)
    if injected is None:
        raise ValueError("ensemble.init_optimizer: per-member hyperparameters need an optimizer "
                         "built with optax.inject_hyperparams, e.g. "
                         "optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)")
    new = dict(injected)
    for name, values in hyperparams.items():
        if name not in injected:
            raise ValueError(f"ensemble.init_optimizer: unknown hyperparameter {name!r}; the "
                             f"optimizer injects {sorted(injected)}")
        values = jnp.asarray(values)
        if values.shape != (k,):
            raise ValueError(f"ensemble.init_optimizer: {name} needs one value per member, "
                             f"shape ({k},), got shape {values.shape}")
        new[name] = values.astype(injected[name].dtype)
    return opt_state._replace(hyperparams=new)


def make_train_step(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    shared_data: bool = True,
    gradients: str | Callable = "hand",
) -> Callable:
    """One jitted step of every member: [`jaxnn.make_train_step`][jaxnn.make_train_step]'s step
    under ``jax.vmap``.

    Args:
      model: the network (one member), as for [`jaxnn.make_train_step`][jaxnn.make_train_step].
      loss: the loss, as for [`jaxnn.make_train_step`][jaxnn.make_train_step].
      optimizer: the optax optimizer (one member's), as for
        [`jaxnn.make_train_step`][jaxnn.make_train_step].
      shared_data: if true every member trains on the same batch ``(x, y)``; if false ``x`` and
        ``y`` carry a leading member axis (a bootstrap sample per member, say).
      gradients: ``"hand"``, ``"autodiff"`` or a gradient function, as for
        [`jaxnn.make_train_step`][jaxnn.make_train_step].

    Returns:
      ``step(params, state, opt_state, x, y, key=None) -> (params, state, opt_state, loss)`` on
        stacked params, model state and optimizer state; the loss comes back per member, shape
        ``(K,)``. ``state`` is ``()`` for stateless members (shared) or stacked; ``key`` is
        ``None`` or one key per member (shape ``(K,)``).

    Examples:
      Each member on its own bootstrap sample, and each member's update equal to its own run:

      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, state = jaxnn.ensemble.init(net, jax.random.key(0), (-1, 2), members=2)
      >>> optimizer = optax.sgd(0.1)
      >>> opt_state = jaxnn.ensemble.init_optimizer(optimizer, params)
      >>> x = jax.random.normal(jax.random.key(1), (2, 8, 2))  # (K, m, n_in)
      >>> y = x[..., :1] ** 2
      >>> step = jaxnn.ensemble.make_train_step(net, jaxnn.mean_squared_error, optimizer,
      ...                                       shared_data=False)
      >>> new_params, _, _, losses = step(params, state, opt_state, x, y)
      >>> losses.shape
      (2,)
      >>> one = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
      >>> p1 = jaxnn.ensemble.member(params, 1)
      >>> alone, _, _, _ = one(p1, (), optimizer.init(p1), x[1], y[1])
      >>> bool(jnp.allclose(jaxnn.ensemble.member(new_params, 1)[0]["W"], alone[0]["W"]))
      True
    """
    step = _make_train_step(model, loss, optimizer, gradients=gradients, jit=False)
    data = None if shared_data else 0

    @jax.jit
    def ensemble_step(params, state, opt_state, x, y, key=None):
        state_axis = 0 if jax.tree.leaves(state) else None
        in_axes = (0, state_axis, 0, data, data, None if key is None else 0)
        return jax.vmap(step, in_axes=in_axes, out_axes=(0, state_axis, 0, 0))(
            params, state, opt_state, x, y, key)

    return ensemble_step


def predict(model: Layer, params: Any, x: jax.Array, *, state: Any = ()) -> jax.Array:
    """Every member's output in evaluation mode, shape ``(K, *output_shape)``.

    Args:
      model: the network (one member).
      params: the stacked parameters.
      x: the input, shared by every member.
      state: the stacked model state (``()`` for a stateless model).

    Returns:
      The members' outputs stacked on a leading axis of size K; average it over axis 0 for
        the ensemble's prediction.

    Examples:
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1), jaxnn.sigmoid())
      >>> _, params, state = jaxnn.ensemble.init(net, jax.random.key(0), (-1, 2), members=4)
      >>> outputs = jaxnn.ensemble.predict(net, params, jnp.ones((5, 2)), state=state)
      >>> outputs.shape, outputs.mean(axis=0).shape
      ((4, 5, 1), (5, 1))
    """
    state_axis = 0 if jax.tree.leaves(state) else None

    def one(p, s):
        return apply(model, p, s, x, train=False)[0]

    return jax.vmap(one, in_axes=(0, state_axis))(params, state)


def member(tree: Any, k: int) -> Any:
    """Member ``k`` of a stacked pytree (params, state or optimizer state).

    Args:
      tree: a pytree whose every leaf has the member axis first.
      k: the member's index.

    Returns:
      The same structure with leaf ``leaf[k]``: what a single model's functions take.

    Examples:
      >>> net = jaxnn.dense(2)
      >>> _, params, _ = jaxnn.ensemble.init(net, jax.random.key(0), (-1, 3), members=4)
      >>> jax.tree.map(jnp.shape, jaxnn.ensemble.member(params, 2))
      {'W': (3, 2), 'b': (2,)}
      >>> y, _ = jaxnn.apply(net, jaxnn.ensemble.member(params, 2), (), jnp.ones((1, 3)))
      >>> y.shape
      (1, 2)
    """
    return jax.tree.map(lambda leaf: leaf[k], tree)
