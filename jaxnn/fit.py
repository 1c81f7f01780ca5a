r"""Whole epochs in one compiled ``lax.scan``: shuffle, mini-batches and steps without Python.

[`fit`][jaxnn.fit.fit] trains for a number of epochs. Each epoch is one call of a function
compiled once ([`make_epoch`][jaxnn.fit.make_epoch]): it draws the epoch's permutation, gathers
the mini-batches and runs every step of [`jaxnn.make_train_step`][jaxnn.make_train_step] inside a
``lax.scan``. Python only runs between epochs, to report progress (``on_epoch``) or to stop
early.

Randomness is a pure function of ``(key, epoch)``, so an epoch can be replayed on its own:

* ``epoch_key = fold_in(key, epoch)``, ``perm_key, step_key = split(epoch_key)``;
* the permutation is ``jax.random.permutation(perm_key, n)``; batch ``s`` holds the examples
  ``perm[s·B : (s+1)·B]``;
* step ``s`` gets the model key ``split(step_key, steps_per_epoch)[s]`` (dropout, say).

With $\pi$ the epoch's permutation of the $n$ examples, step $s$ of the epoch descends on the
mean loss of its batch $\mathcal{B}_s$:

$$
\mathcal{B}_s = \{\pi(sB), \dots, \pi(sB + B - 1)\} \qquad
J_s(\theta) = \frac{1}{B} \sum_{i \in \mathcal{B}_s} \mathcal{L}(f_{\theta}(x_i), y_i)
\qquad s = 0, \dots, \lfloor n / B \rfloor - 1
$$

Last-batch policy: the remainder is dropped. An epoch has ``⌊n / B⌋`` steps of exactly ``B``
examples, so every step's loss is the plain mean of the losses' own reduction and the step
compiles once; the ``n mod B`` examples left out differ from epoch to epoch because the
permutation does, so none is left out for good. (A padded, masked last batch would need every
loss to take example weights; dropping is what ``drop_remainder=True`` input pipelines do.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxnn import sharding
from jaxnn.core import Layer
from jaxnn.data import _examples_in
from jaxnn.losses import Loss
from jaxnn.train import _as_transformation, make_train_step

__all__ = ["FitResult", "epoch_batches", "fit", "make_epoch"]


class FitResult(NamedTuple):
    """What [`fit`][jaxnn.fit.fit] returns.

    Attributes:
      params: the trained parameters.
      state: the model's final state (``()`` for stateless models).
      opt_state: the optimizer's final state (pass it back to [`fit`][jaxnn.fit.fit] to resume).
      losses: the loss of every step, shape ``(epochs_run, steps_per_epoch)``: one NumPy array
        on the host, filled as the epochs run (its cost is linear in the number of epochs).

    Examples:
      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (8, 2))
      >>> result = jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x,
      ...                    x[:, :1], epochs=2, batch_size=4, key=jax.random.key(2))
      >>> result._fields
      ('params', 'state', 'opt_state', 'losses')
      >>> params, state, opt_state, losses = result  # a NamedTuple: it unpacks
      >>> losses.shape, state
      ((2, 2), ())
    """

    params: Any
    state: Any
    opt_state: Any
    losses: np.ndarray


def epoch_batches(key: jax.Array, epoch: jax.Array | int, n: int,
                  batch_size: int) -> tuple[jax.Array, jax.Array]:
    """The example indices and model keys of one epoch (see the module doc).

    Args:
      key: the run's PRNG key (the ``key`` given to [`fit`][jaxnn.fit.fit]).
      epoch: the epoch's index; folded into ``key``.
      n: the number of training examples.
      batch_size: ``B``, examples per step.

    Returns:
      ``(indices, step_keys)``: ``indices`` of shape ``(n // batch_size, batch_size)``, one row
        per step; ``step_keys`` with one key per step.

    Examples:
      ``jaxnn.fit`` is the function [`fit`][jaxnn.fit.fit]; import the module's other names
      from ``jaxnn.fit``:

      >>> from jaxnn.fit import epoch_batches
      >>> indices, step_keys = epoch_batches(jax.random.key(0), 0, n=10, batch_size=4)
      >>> indices.shape, step_keys.shape  # 10 // 4 = 2 steps; 2 examples left out
      ((2, 4), (2,))
      >>> len(set(indices.ravel().tolist()))  # no example twice in an epoch
      8
      >>> again, _ = epoch_batches(jax.random.key(0), 0, n=10, batch_size=4)
      >>> bool(jnp.array_equal(indices, again))  # a pure function of (key, epoch)
      True
    """
    steps = n // batch_size
    perm_key, step_key = jax.random.split(jax.random.fold_in(key, epoch))
    indices = jax.random.permutation(perm_key, n)[: steps * batch_size]
    return indices.reshape(steps, batch_size), jax.random.split(step_key, steps)


def _check_batching(n: int, batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive int, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(
            f"fit: batch_size {batch_size} is larger than the {n} training examples; the "
            f"remainder is dropped, so no step would run (use batch_size <= {n})"
        )


def make_epoch(
    model: Layer,
    loss: Loss,
    optimizer: optax.GradientTransformation,
    *,
    batch_size: int,
    gradients: str | Callable = "hand",
    mesh: Mesh | None = None,
    carry_specs: tuple[Any, Any] | None = None,
) -> Callable:
    """One epoch as a single jitted function.

    The steps are [`jaxnn.make_train_step`][jaxnn.make_train_step]'s (built from ``model``,
    ``loss``, ``optimizer`` and ``gradients``, not jitted on their own), run inside one
    ``lax.scan`` over the batches of [`epoch_batches`][jaxnn.fit.epoch_batches].

    With a ``mesh`` ([`jaxnn.sharding.make_mesh`][jaxnn.sharding.make_mesh]), ``x`` and ``y``
    are expected split over the mesh's ``"data"`` axis
    ([`jaxnn.sharding.shard_batch`][jaxnn.sharding.shard_batch]) and every mini-batch is
    gathered from the devices' parts onto the same axis (each device keeps its part of the
    training set, never the whole): data-parallel steps. With
    ``carry_specs``, the ``PartitionSpec`` trees of the parameters and of the optimizer state
    ([`jaxnn.sharding.param_specs`][jaxnn.sharding.param_specs]), both stay split that way from
    step to step.

    Returns:
      ``epoch_fn(params, state, opt_state, x, y, key, epoch) -> (params, state, opt_state,
        losses)`` with ``losses`` of shape ``(n // batch_size,)``. ``epoch`` is an integer array,
        so the function compiles once for given shapes and serves every epoch.

    Examples:
      >>> import optax
      >>> from jaxnn.fit import make_epoch
      >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> optimizer = optax.sgd(0.1)
      >>> epoch_fn = make_epoch(net, jaxnn.mean_squared_error, optimizer, batch_size=4)
      >>> x = jax.random.normal(jax.random.key(1), (10, 2))
      >>> params, state, opt_state, losses = epoch_fn(
      ...     params, (), optimizer.init(params), x, x[:, :1], jax.random.key(2), jnp.asarray(0))
      >>> losses.shape
      (2,)
    """
    step = make_train_step(model, loss, optimizer, gradients=gradients, jit=False)

    @jax.jit
    def epoch_fn(params, state, opt_state, x, y, key, epoch):
        n = _examples_in(x, "x", "fit")
        _check_batching(n, batch_size)
        indices, step_keys = epoch_batches(key, epoch, n, batch_size)

        def body(carry, batch):
            params, state, opt_state = carry
            rows, step_key = batch
            if mesh is None:
                xb, yb = jax.tree.map(lambda a: jnp.take(a, rows, axis=0), (x, y))
            else:
                xb, yb = jax.tree.map(lambda a: _gather_rows(a, rows, mesh), (x, y))
            params, state, opt_state, value = step(params, state, opt_state, xb, yb, step_key)
            if carry_specs is not None:
                params, opt_state = jax.lax.with_sharding_constraint(
                    (params, opt_state), sharding.shardings(carry_specs, mesh))
            return (params, state, opt_state), value

        (params, state, opt_state), losses = jax.lax.scan(
            body, (params, state, opt_state), (indices, step_keys))
        return params, state, opt_state, losses

    return epoch_fn


def _gather_rows(data: jax.Array, rows: jax.Array, mesh: Mesh) -> jax.Array:
    """``data[rows]`` for ``data`` split over ``"data"`` on its leading axis, the result split
    the same way: each device picks the requested rows it holds (zeros elsewhere) and a
    reduce-scatter sums the parts, one nonzero term per row, so the values are exact."""
    axis = sharding.DATA_AXIS

    def local(part, rows):
        n_local = part.shape[0]
        local_rows = rows - jax.lax.axis_index(axis) * n_local
        inside = (local_rows >= 0) & (local_rows < n_local)
        picked = jnp.take(part, jnp.clip(local_rows, 0, n_local - 1), axis=0)
        keep = inside.reshape((-1,) + (1,) * (part.ndim - 1))
        boolean = part.dtype == jnp.bool_  # booleans do not sum: as int8 and back
        picked = jnp.where(keep, picked, jnp.zeros((), part.dtype))
        if boolean:
            picked = picked.astype(jnp.int8)
        gathered = jax.lax.psum_scatter(picked, axis, scatter_dimension=0, tiled=True)
        return gathered.astype(jnp.bool_) if boolean else gathered

    return jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P()), out_specs=P(axis))(
        data, rows)


@functools.lru_cache(maxsize=8)
def _cached_epoch(model, loss, optimizer, batch_size, gradients, mesh) -> Callable:
    return make_epoch(model, loss, optimizer, batch_size=batch_size, gradients=gradients,
                      mesh=mesh)


def _epoch_for(model, loss, optimizer, batch_size, gradients, mesh, carry_specs) -> Callable:
    """[`make_epoch`][jaxnn.fit.make_epoch], the same compiled function for the same pieces, so
    that training in several [`fit`][jaxnn.fit.fit] calls (between checkpoints, say) compiles
    once."""
    if carry_specs is None:
        try:
            return _cached_epoch(model, loss, optimizer, batch_size, gradients, mesh)
        except TypeError:  # an unhashable piece: a fresh epoch function
            pass
    return make_epoch(model, loss, optimizer, batch_size=batch_size, gradients=gradients,
                      mesh=mesh, carry_specs=carry_specs)


def _check_fit_arguments(x: Any, y: Any, epochs: int, batch_size: int, mesh: Mesh | None,
                         shard_params: str) -> int:
    """The number of examples of the whole run (every process's part on a mesh), after
    checking the arguments against it."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    sharding.check_strategy(shard_params, "fit: shard_params")
    if mesh is None and shard_params != "replicated":
        raise ValueError(f"fit: shard_params={shard_params!r} lays parameters out over a mesh; "
                         f"pass mesh= (jaxnn.sharding.make_mesh()) or leave shard_params out")
    n, n_y = _examples_in(x, "x", "fit"), _examples_in(y, "y", "fit")
    if n != n_y:
        raise ValueError(f"fit: x has {n} examples but y has {n_y}")
    n *= jax.process_count() if mesh is not None else 1
    _check_batching(n, batch_size)
    if mesh is not None:
        if sharding.DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"fit: the mesh needs an axis named 'data', got axes "
                             f"{tuple(mesh.axis_names)} (make one with jaxnn.sharding.make_mesh)")
        parts = mesh.shape[sharding.DATA_AXIS]
        if batch_size % parts:
            raise ValueError(f"fit: batch_size {batch_size} does not divide over the {parts} "
                             f"devices of mesh axis 'data'; use a multiple of {parts}")
    return n


def _fit_config(model, loss, params, opt_state, x, y, epochs, batch_size, start_epoch,
                gradients, mesh, shard_params) -> dict:
    """What every process of a multi-process run must agree on (compared by hash)."""

    def shapes(tree):
        return {jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
                for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}

    return {"model": repr(model), "loss": getattr(loss, "name", type(loss).__name__),
            "params": shapes(params), "optimizer state": shapes(opt_state),
            "epochs": epochs, "start_epoch": start_epoch, "batch_size": batch_size,
            "x (this process's part)": shapes(x),
            "y (this process's part)": shapes(y),
            "gradients": gradients if isinstance(gradients, str) else repr(gradients),
            "mesh": {str(k): int(v) for k, v in mesh.shape.items()},
            "shard_params": shard_params}


def fit(model: Layer, loss: Loss, optimizer: optax.GradientTransformation, params: Any,
        x: Any, y: Any, *, epochs: int, batch_size: int, key: jax.Array,
        state: Any = (), opt_state: Any = None, start_epoch: int = 0,
        gradients: str | Callable = "hand", mesh: Mesh | None = None,
        shard_params: str = "replicated",
        on_epoch: Callable[[int, jax.Array, Any, Any], bool | None] | None = None,
        timeout: float | None = None) -> FitResult:
    """Trains ``model`` by mini-batch steps, one compiled ``lax.scan`` per epoch.

    Every step is [`jaxnn.make_train_step`][jaxnn.make_train_step]'s (the model's state is carried
    from step to step, each step gets its own key), on the batches of
    [`epoch_batches`][jaxnn.fit.epoch_batches]. The result equals the Python loop over the same
    batches.

    Args:
      model: the network, as for [`jaxnn.make_train_step`][jaxnn.make_train_step].
      loss: the loss, as for [`jaxnn.make_train_step`][jaxnn.make_train_step].
      optimizer: the optax optimizer; L2, loss scaling or DP-SGD's aggregation are chained into
        it. ``optax.MultiSteps(optimizer, k)`` accumulates: one update every ``k`` steps, by
        the mean of their gradients.
      params: the initial parameters.
      x: the whole training set's inputs, examples on the leading axis (kept on the device):
        an array, or a pytree of arrays (``(x, lengths)``, ``(x, mask)``) whose leaves are
        batched together along their leading axis.
      y: its targets, examples on the leading axis (an array or a pytree likewise).
      epochs: the number of epochs to run.
      batch_size: examples per step; the ``n mod batch_size`` remainder is dropped (module doc).
      key: the PRNG key that shuffling and the model's randomness derive from.
      state: the model's initial state (batch-norm statistics); ``()`` for stateless models.
      opt_state: the optimizer state to resume from; ``optimizer.init(params)`` if ``None``.
      start_epoch: the index of the first epoch (to resume a run with the same shuffles).
      gradients: ``"hand"``, ``"autodiff"`` or a gradient function, as for
        [`jaxnn.make_train_step`][jaxnn.make_train_step].
      mesh: train over this mesh ([`jaxnn.sharding.make_mesh`][jaxnn.sharding.make_mesh]):
        ``x`` and ``y`` are split over its ``"data"`` axis (each device keeps its part of the
        training set) and so is each mini-batch, so ``batch_size`` and the number of examples
        must be multiples of the ``"data"`` axis's size. In several processes
        (``jax.distributed``) each process passes *its own part* of ``x`` and ``y`` (the same
        number of examples in each); the training set is their concatenation in process order,
        the processes first check that they run the same configuration
        ([`jaxnn.sharding.check_same_config`][jaxnn.sharding.check_same_config]).
      shard_params: with a ``mesh``, how parameters and optimizer state are laid out over it:
        ``"replicated"`` (a full copy on every device), ``"fsdp"`` (split over ``"data"``) or
        ``"tensor"`` (split over ``"model"``, Megatron style); see
        [`jaxnn.sharding`][jaxnn.sharding].
      on_epoch: called in Python after every epoch as ``on_epoch(epoch, losses, params,
        state)`` with that epoch's step losses; returning ``True`` stops training.
      timeout: with a ``mesh``, the seconds an epoch may take before the run ends with a
        message ([`jaxnn.sharding.collective_timeout`][jaxnn.sharding.collective_timeout]): a
        process that never arrives at a collective ends the run instead of hanging it. ``None``:
        no limit on epochs, and 300 s for the start-up configuration check of a multi-process
        run.

    Returns:
      A [`FitResult`][jaxnn.FitResult].

    Raises:
      TypeError: if ``optimizer`` is not an optax optimizer (the message names the fix).
      ValueError: if ``epochs`` or ``batch_size`` is not a valid count, ``x`` and ``y`` (or
        the leaves of either) hold different numbers of examples, ``batch_size`` exceeds them,
        ``shard_params`` is not one of
        [`jaxnn.sharding.STRATEGIES`][jaxnn.sharding.STRATEGIES] (or not ``"replicated"``
        without a mesh), or the batch or the examples do not divide over the ``mesh``.

    Examples:
      >>> import optax
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (10, 2))
      >>> y = x[:, :1] * 2
      >>> optimizer = optax.sgd(0.1)
      >>> result = jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y,
      ...                    epochs=3, batch_size=4, key=jax.random.key(2))
      >>> result.losses.shape  # 3 epochs of 10 // 4 = 2 steps
      (3, 2)

      Resuming from the result continues the same run (same shuffles, same steps; the same
      pieces reuse the compiled epoch):

      >>> more = jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, result.params, x, y,
      ...                  epochs=2, batch_size=4, key=jax.random.key(2),
      ...                  opt_state=result.opt_state, start_epoch=3)
      >>> whole = jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y,
      ...                   epochs=5, batch_size=4, key=jax.random.key(2))
      >>> bool(jnp.allclose(more.losses, whole.losses[3:]))
      True

      ``on_epoch`` sees each epoch's losses and can stop early:

      >>> stop = lambda epoch, losses, params, state: epoch == 1
      >>> jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=10,
      ...           batch_size=4, key=jax.random.key(2), on_epoch=stop).losses.shape
      (2, 2)
    """
    n = _check_fit_arguments(x, y, epochs, batch_size, mesh, shard_params)
    transformation = _as_transformation(optimizer, "fit")  # optax.MultiSteps: the one it holds
    if opt_state is None:
        opt_state = transformation.init(params)
    carry_specs = None
    if mesh is not None:
        if jax.process_count() > 1:
            sharding.check_same_config(
                _fit_config(model, loss, params, opt_state, x, y, epochs, batch_size,
                            start_epoch, gradients, mesh, shard_params),
                what="fit", timeout=300.0 if timeout is None else timeout)
        carry_specs = sharding.layout(model, transformation, params, opt_state, mesh,
                                      shard_params)
        params, opt_state = sharding.place((params, opt_state), carry_specs, mesh)
        x = sharding.shard_batch(x, mesh, name="fit: x")
        y = sharding.shard_batch(y, mesh, name="fit: y")
        state, key = sharding.place((state, key), None, mesh)
    epoch_fn = _epoch_for(model, loss, optimizer, batch_size, gradients, mesh, carry_specs)
    history = _LossHistory(epochs, n // batch_size)
    bounded = timeout if mesh is not None else None  # else epochs are dispatched ahead
    for epoch in range(start_epoch, start_epoch + epochs):
        with sharding.collective_timeout(bounded, f"fit's epoch {epoch}"):
            params, state, opt_state, losses = epoch_fn(params, state, opt_state, x, y, key,
                                                        np.int32(epoch))  # no dispatch
            if bounded is not None:
                jax.block_until_ready(losses)
        history.append(losses)
        if on_epoch is not None and on_epoch(epoch, losses, params, state):
            break
    return FitResult(params, state, opt_state, history.values())


def _to_host(losses: jax.Array) -> jax.Array:
    """A replicated array that other processes also hold (multi-process data parallelism) is
    read from this process's copy."""
    if not losses.is_fully_addressable and losses.sharding.is_fully_replicated:
        return losses.addressable_data(0)
    return losses


class _LossHistory:
    """Every epoch's step losses in one host array, allocated once for the epochs asked for.

    An epoch's losses stay on the device until ``FETCH_EVERY`` epochs are pending, then all of
    them come over in one ``jax.device_get``: the host never waits for each epoch in turn (the
    next epochs are already dispatched), and the cost is linear in epochs. (A ``jnp.stack`` of
    one array per epoch compiled a concatenate with one operand per epoch: minutes for 30 000
    epochs.)
    """

    FETCH_EVERY = 256

    def __init__(self, epochs: int, steps_per_epoch: int) -> None:
        self._epochs, self._steps = epochs, steps_per_epoch
        self._rows: np.ndarray | None = None
        self._size = 0
        self._pending: list[jax.Array] = []

    def append(self, losses: jax.Array) -> None:
        self._pending.append(_to_host(losses))
        if len(self._pending) >= self.FETCH_EVERY:
            self._fetch()

    def _fetch(self) -> None:
        if not self._pending:
            return
        fetched = jax.device_get(self._pending)
        if self._rows is None:
            self._rows = np.empty((self._epochs, self._steps), fetched[0].dtype)
        self._rows[self._size: self._size + len(fetched)] = fetched
        self._size += len(fetched)
        self._pending = []

    def values(self) -> np.ndarray:
        """The ``(epochs_run, steps_per_epoch)`` losses."""
        self._fetch()
        if self._rows is None:  # no epoch ran
            return np.zeros((0, self._steps), jax.dtypes.canonicalize_dtype(float))
        return self._rows[: self._size]
