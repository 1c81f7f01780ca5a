r"""Distribution over a ``("data", "model")`` mesh: data parallel, FSDP, tensor parallel, several
processes. The one module for training on more than one device.

Everything uses JAX's own machinery: a ``jax.sharding.Mesh`` of devices
([`make_mesh`][jaxnn.sharding.make_mesh]), a ``jax.sharding.PartitionSpec`` for every parameter
([`param_specs`][jaxnn.sharding.param_specs]), ``jax.device_put`` to place arrays
([`place`][jaxnn.sharding.place]) and ``jax.jit`` (GSPMD) to partition the unchanged training
step ([`shard_train_step`][jaxnn.sharding.shard_train_step]) — the hand-derived backward runs as
written, and XLA inserts the collectives.

The batch is always split over ``"data"`` on its leading (example) axis
([`shard_batch`][jaxnn.sharding.shard_batch]). With the batch $x$ split into the parts
$x_{(1)}, \dots, x_{(D)}$ of the $D$ devices, a dense layer's weight gradient is

$$dW = x^\top dZ = \sum_{d=1}^{D} x_{(d)}^\top \, dZ_{(d)}$$

each device computing one term on its own part and the sum being an all-reduce. The parameters
and optimizer state are laid out by a strategy ([`STRATEGIES`][jaxnn.sharding.STRATEGIES]):

* ``"replicated"``: ``P()`` everywhere, a full copy on every device (plain data parallelism;
  ``specs=None`` in [`shard_train_step`][jaxnn.sharding.shard_train_step]).
* ``"fsdp"`` (fully sharded data parallel): every parameter split over ``"data"`` along its
  largest axis whose size the ``"data"`` axis divides; a parameter with no such axis stays
  replicated. XLA all-gathers a weight where the forward needs it whole and reduce-scatters its
  gradient, so each device keeps ``1/devices`` of the parameters and of the optimizer state.
* ``"tensor"`` (Megatron-style tensor parallelism over ``"model"``): each leaf layer declares its
  split beside its weights ([`jaxnn.core.TensorSplit`][jaxnn.core.TensorSplit],
  ``Layer.tensor_split``); the layers that declare one alternate, in network order, between a
  *column* split (output features: ``W[:, j]`` and ``b[j]`` on the device holding block ``j``)
  and a *row* split (input features: ``W[i, :]``, the bias whole). A column-split layer followed
  by a row-split one needs no gather in between: each device computes its block of hidden
  units, and the row-split product's partial sums are all-reduced once. Attention is a whole
  pair by itself. A parameter whose split axis the ``"model"`` axis does not divide stays
  replicated.

Every strategy is overridable per parameter: ``overrides(path, leaf_layer, name, array)`` returns
a ``PartitionSpec`` to use instead, or ``None`` to keep the strategy's.

Several processes. Call ``jax.distributed.initialize()`` at the start of every process;
``jax.devices()`` then lists the devices of every process, so ``make_mesh()`` spans all hosts.
Each process passes *its own part* of every batch (and of the training set, in
[`jaxnn.fit`][jaxnn.fit.fit]): [`shard_batch`][jaxnn.sharding.shard_batch] assembles the global
array with ``jax.make_array_from_process_local_data``, process ``p``'s rows following process
``p - 1``'s. Everything else is the same program on every process;
[`check_same_config`][jaxnn.sharding.check_same_config] makes sure it is, and
[`collective_timeout`][jaxnn.sharding.collective_timeout] bounds how long a process waits for the
others. [`to_host`][jaxnn.sharding.to_host] gathers split arrays into NumPy;
[`jaxnn.checkpoint.save_sharded`][jaxnn.checkpoint.save_sharded] saves them without gathering.

What a strategy saves is measured by
[`bytes_per_device_fraction`][jaxnn.sharding.bytes_per_device_fraction]: the largest share of a
tree's bytes that one device holds, $1/D$ when every leaf is evenly split over $D$ devices and 1
when replicated.

The examples below build their mesh from ``jax.devices()[:1]``: a 1-device mesh, so they print
the same on any machine (every split axis has one part). On a CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` and pass ``make_mesh(data=2, model=4)``
to see real splits.

Examples:
    Tensor-parallel specs of a two-layer MLP (column split, then row split) and one sharded step:

    >>> import optax
    >>> from jaxnn import sharding
    >>> mesh = sharding.make_mesh(devices=jax.devices()[:1])
    >>> net = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4))
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 6))
    >>> optimizer = optax.adam(1e-3)
    >>> opt_state = optimizer.init(params)
    >>> specs = sharding.layout(net, optimizer, params, opt_state, mesh, "tensor")
    >>> specs[0]
    ({'W': P(None, 'model'), 'b': P('model',)}, (), {'W': P('model', None), 'b': P()})
    >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    >>> sharded_step = sharding.shard_train_step(step, mesh, specs)
    >>> x, y = jnp.ones((4, 6)), jnp.zeros((4, 4))
    >>> params, _, opt_state, loss = sharded_step(params, (), opt_state, x, y)
    >>> params[0]["W"].sharding.spec
    P(None, 'model')
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn.core import Layer, map_params

__all__ = [
    "DATA_AXIS",
    "EXIT_CODE",
    "MODEL_AXIS",
    "STRATEGIES",
    "bytes_per_device_fraction",
    "check_same_config",
    "check_strategy",
    "collective_timeout",
    "layout",
    "make_mesh",
    "opt_state_specs",
    "param_specs",
    "place",
    "shard_batch",
    "shard_train_step",
    "shardings",
    "to_host",
]

DATA_AXIS = "data"
"""The name of the mesh axis the batch is split on (and that the ``"fsdp"`` strategy splits
parameters over)."""
MODEL_AXIS = "model"
"""The name of the mesh axis tensor parallelism splits weights over (the other axis of
[`make_mesh`][jaxnn.sharding.make_mesh]'s meshes is [`DATA_AXIS`][jaxnn.sharding.DATA_AXIS])."""
STRATEGIES = ("replicated", "fsdp", "tensor")
"""The strategies [`param_specs`][jaxnn.sharding.param_specs] knows (module doc)."""

Overrides = Callable[[str, Layer, str, Any], P | None]


def check_strategy(strategy: Any, what: str) -> str:
    """``strategy`` if it is one of [`STRATEGIES`][jaxnn.sharding.STRATEGIES], else a
    ``ValueError`` naming ``what`` (the function or argument) and the valid strategies.

    Args:
      strategy: the strategy asked for.
      what: how the caller is named in the message (``"fit: shard_params"``).

    Returns:
      ``strategy``.

    Raises:
      ValueError: an unknown strategy.

    Examples:
        >>> from jaxnn.sharding import check_strategy
        >>> check_strategy("fsdp", "fit: shard_params")
        'fsdp'
        >>> check_strategy("zero3", "fit: shard_params")
        Traceback (most recent call last):
        ...
        ValueError: fit: shard_params must be one of ('replicated', 'fsdp', 'tensor'), got 'zero3'
    """
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"{what} must be one of {STRATEGIES}, got {strategy!r}")
    return strategy


def _check_axes(mesh: Any, needed: Sequence[str], what: str) -> None:
    missing = [axis for axis in needed if axis not in mesh.axis_names]
    if missing:
        raise ValueError(f"{what}: the mesh needs an axis named {missing[0]!r}, got axes "
                         f"{tuple(mesh.axis_names)} (make one with jaxnn.sharding.make_mesh)")


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default every device of every process).

    ``data`` defaults to ``len(devices) // model``; ``data · model`` must equal the device count.
    ``make_mesh()`` is plain data parallelism over every device.

    Args:
      data: the size of the ``"data"`` axis.
      model: the size of the ``"model"`` axis, a positive int dividing the device count.
      devices: the devices, filling the mesh row by row (a row is one ``"data"`` index).

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(data, model)``, axes ``("data", "model")``.

    Raises:
      ValueError: no devices, or the sizes do not multiply to the device count.

    Examples:
        >>> from jaxnn.sharding import make_mesh
        >>> mesh = make_mesh(devices=jax.devices()[:1])  # a 1-device mesh
        >>> mesh.axis_names, dict(mesh.shape)
        (('data', 'model'), {'data': 1, 'model': 1})
        >>> make_mesh().size == jax.device_count()  # every device, all on "data"
        True
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("make_mesh: no devices given")
    if not isinstance(model, int) or model < 1 or len(devices) % model:
        raise ValueError(f"make_mesh: model={model!r} must be a positive int dividing the "
                         f"{len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data * model != len(devices):
        raise ValueError(f"make_mesh: data × model = {data} × {model} = {data * model}, but "
                         f"there are {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


# --- the specs of a strategy ---------------------------------------------------------------------


def _mesh_axes(entry: Any) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry or ())


def _misfit(spec: P, shape: tuple[int, ...], mesh: Any) -> str | None:
    """Why ``spec`` cannot split an array of ``shape`` over ``mesh``, or ``None`` if it can."""
    if len(spec) > len(shape):
        return f"the spec {spec} has {len(spec)} entries for an array of rank {len(shape)}"
    for i, (size, entry) in enumerate(zip(shape, spec, strict=False)):
        parts = 1
        for axis in _mesh_axes(entry):
            if axis not in mesh.axis_names:
                return (f"the spec {spec} names the mesh axis {axis!r}, but the mesh has axes "
                        f"{tuple(mesh.axis_names)}")
            parts *= mesh.shape[axis]
        if size % parts:
            return (f"axis {i} of shape {shape} has size {size}, which does not divide over the "
                    f"{parts} devices of mesh axis {entry!r}")
    return None


def _fsdp_spec(shape: tuple[int, ...], mesh: Any) -> P:
    n = mesh.shape[DATA_AXIS]
    candidates = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if n == 1 or not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], -i))
    return P(*[DATA_AXIS if i == axis else None for i in range(len(shape))])


def _split_spec(array: Any, axis: int) -> P:
    ndim = np.ndim(array)
    return P(*[MODEL_AXIS if i == axis % ndim else None for i in range(ndim)])


def _tensor_specs(leaf: Layer, params: dict, column: bool) -> dict[str, P]:
    """The specs a leaf's ``tensor_split`` asks for, opening (``column``) or closing a pair."""
    split = leaf.tensor_split
    assert split is not None, leaf.name  # only layers that declare a split come here
    wanted = split.column + split.row if split.pair else (split.column if column else split.row)
    return {name: _split_spec(params[name], axis) for name, axis in wanted if name in params}


def param_specs(model: Layer, params: Any, mesh: Any, strategy: str = "fsdp", *,
                overrides: Overrides | None = None) -> Any:
    """A ``PartitionSpec`` for every parameter of ``model`` (module doc).

    Args:
      model: the network.
      params: its parameters (arrays or ``jax.ShapeDtypeStruct``).
      mesh: a mesh with a ``"data"`` axis (``"fsdp"``) or a ``"model"`` axis (``"tensor"``),
        e.g. [`make_mesh`][jaxnn.sharding.make_mesh]; a ``jax.sharding.AbstractMesh`` plans a
        layout for devices this process does not have.
      strategy: ``"replicated"``, ``"fsdp"`` or ``"tensor"``.
      overrides: ``(path, leaf_layer, param_name, array) -> PartitionSpec | None`` per
        parameter; ``None`` keeps the strategy's choice.

    Returns:
      A pytree of ``PartitionSpec`` with the structure of ``params``.

    Raises:
      ValueError: an unknown strategy, a mesh without the axis it needs, or an override that
        does not divide its parameter.

    Examples:
        On a 1-device mesh FSDP has nothing to split (``P()``); the tensor split each layer
        declares still says which axis each weight would be split on:

        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import make_mesh, param_specs
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> net = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 6))
        >>> param_specs(net, params, mesh, "fsdp")
        ({'W': P(), 'b': P()}, (), {'W': P(), 'b': P()})
        >>> param_specs(net, params, mesh, "tensor")
        ({'W': P(None, 'model'), 'b': P('model',)}, (), {'W': P('model', None), 'b': P()})

        An override keeps the last layer's weight whole:

        >>> def keep_head(path, leaf, name, array):
        ...     return P() if path == "serial/2:dense" and name == "W" else None
        >>> param_specs(net, params, mesh, "tensor", overrides=keep_head)[2]
        {'W': P(), 'b': P()}
    """
    check_strategy(strategy, "param_specs: strategy")
    needed = {"fsdp": [DATA_AXIS], "tensor": [MODEL_AXIS]}.get(strategy, [])
    _check_axes(mesh, needed, f"param_specs (strategy {strategy!r})")
    column = True

    def leaf_specs(path: str, leaf: Layer, p: Any) -> Any:
        nonlocal column
        if strategy == "fsdp":
            specs = jax.tree.map(lambda a: _fsdp_spec(np.shape(a), mesh), p)
        else:
            specs = jax.tree.map(lambda a: P(), p)
        if strategy == "tensor" and leaf.tensor_split is not None and isinstance(p, dict):
            for name, spec in _tensor_specs(leaf, p, column).items():
                if _misfit(spec, np.shape(p[name]), mesh) is None:
                    specs[name] = spec
            # a matrix layer flips column/row; a whole pair (attention) is followed by a new pair
            column = leaf.tensor_split.pair or not column
        if overrides is not None and isinstance(p, dict):
            for name, array in p.items():
                chosen = overrides(path, leaf, name, array)
                if chosen is not None:
                    problem = _misfit(chosen, np.shape(array), mesh)
                    if problem:
                        raise ValueError(f"param_specs: the override for {path} {name!r}: "
                                         f"{problem}")
                    specs[name] = chosen
        return specs

    return map_params(leaf_specs, model, params)


def opt_state_specs(optimizer: optax.GradientTransformation, opt_state: Any,
                    specs: Any) -> Any:
    """The specs of an optimizer state: the parameters' spec for every entry shaped like a
    parameter (Adam's moments, say), ``P()`` for the rest (step counts, scalars).

    Args:
      optimizer: the optax optimizer that made ``opt_state``.
      opt_state: its state (arrays or ``jax.ShapeDtypeStruct``).
      specs: the parameters' specs ([`param_specs`][jaxnn.sharding.param_specs]).

    Returns:
      A pytree of ``PartitionSpec`` with the structure of ``opt_state``.

    Examples:
        >>> import optax
        >>> from jaxnn.sharding import make_mesh, opt_state_specs, param_specs
        >>> net = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 6))
        >>> specs = param_specs(net, params, make_mesh(devices=jax.devices()[:1]), "tensor")
        >>> optimizer = optax.adam(1e-3)
        >>> adam_state, _ = opt_state_specs(optimizer, optimizer.init(params), specs)
        >>> adam_state.count, adam_state.mu == specs
        (P(), True)
    """
    return optax.tree_map_params(optimizer, lambda _, spec: spec, opt_state, specs,
                                 transform_non_params=lambda _: P(),
                                 is_leaf=lambda x: isinstance(x, P))

def layout(model: Layer, optimizer: optax.GradientTransformation, params: Any, opt_state: Any,
           mesh: Mesh, strategy: str = "fsdp") -> tuple[Any, Any]:
    """The specs of the parameters and of the optimizer state under ``strategy``.

    [`param_specs`][jaxnn.sharding.param_specs] then
    [`opt_state_specs`][jaxnn.sharding.opt_state_specs], without overrides.

    Args:
      model: the network.
      optimizer: the optax optimizer.
      params: the network's parameters.
      opt_state: the optimizer's state.
      mesh: the mesh.
      strategy: ``"replicated"``, ``"fsdp"`` or ``"tensor"``.

    Returns:
      ``(param_specs, opt_state_specs)``.

    Examples:
        >>> import optax
        >>> from jaxnn.sharding import layout, make_mesh
        >>> net = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 6))
        >>> optimizer = optax.sgd(0.1)
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> specs, opt_specs = layout(net, optimizer, params, optimizer.init(params), mesh,
        ...                           "replicated")
        >>> specs
        ({'W': P(), 'b': P()}, (), {'W': P(), 'b': P()})
    """
    specs = param_specs(model, params, mesh, strategy)
    return specs, opt_state_specs(optimizer, opt_state, specs)

def shardings(specs: Any, mesh: Mesh) -> Any:
    """The ``NamedSharding`` on ``mesh`` of every spec in a tree of ``PartitionSpec``.

    Args:
      specs: a pytree of ``PartitionSpec``.
      mesh: the mesh.

    Returns:
      The same tree with a ``jax.sharding.NamedSharding`` for every spec (what ``jax.jit``'s
      ``in_shardings`` / ``out_shardings`` and ``jax.device_put`` take).

    Examples:
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import make_mesh, shardings
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> s = shardings({"W": P(None, "model"), "b": P()}, mesh)
        >>> s["W"].spec, s["W"].mesh is mesh
        (P(None, 'model'), True)
    """
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def _check_fits(tree: Any, specs: Any, mesh: Mesh, what: str) -> None:
    """Every leaf of ``tree`` can be split as its spec says, else a ``ValueError`` naming it."""

    def check(path, spec, subtree):
        for sub_path, leaf in jax.tree_util.tree_flatten_with_path(subtree)[0]:
            problem = _misfit(spec, np.shape(leaf), mesh)
            if problem:
                where = jax.tree_util.keystr(tuple(path) + tuple(sub_path)) or "(the array)"
                raise ValueError(f"{what}: {where}: {problem}")

    try:
        jax.tree_util.tree_map_with_path(check, specs, tree, is_leaf=lambda x: isinstance(x, P))
    except ValueError as error:
        if str(error).startswith(what):
            raise
        raise ValueError(f"{what}: the specs do not have the structure of the tree: "
                         f"{error}") from None


def _put_leaf(leaf: Any, target: jax.sharding.Sharding) -> Any:
    if isinstance(leaf, jax.Array) and jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put_leaf(jax.random.key_data(leaf), target),
                                        impl=jax.random.key_impl(leaf))
    if (isinstance(leaf, jax.Array) and leaf.is_fully_addressable
            and not target.is_fully_addressable):
        # an array on this process's devices cannot be put on a mesh spanning other
        # processes; its host value can (every process passes the same one)
        leaf = np.asarray(leaf)
    return jax.device_put(leaf, target)


def _put(tree: Any, targets: Any) -> Any:
    """``jax.device_put(tree, targets)`` that also works in several processes for arrays living
    on this process's devices and for typed PRNG keys (``targets``: a sharding or a tree of
    them, a prefix of ``tree``)."""
    if jax.process_count() == 1:
        return jax.device_put(tree, targets)
    is_sharding = lambda s: isinstance(s, jax.sharding.Sharding)  # noqa: E731
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda leaf: _put_leaf(leaf, s), sub),
                        targets, tree, is_leaf=is_sharding)


def place(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf put on ``mesh`` by its spec (``None``: replicated).

    In several processes every process passes the same whole values; each keeps its shards.

    Args:
      tree: a pytree of arrays.
      specs: a pytree of ``PartitionSpec`` of the same structure (a spec may stand for a whole
        subtree), or ``None`` for a full copy on every device.
      mesh: the mesh.

    Returns:
      ``tree``, every leaf a ``jax.Array`` sharded as its spec says.

    Raises:
      ValueError: a spec names an axis the mesh lacks, or does not divide its array; the
        message names the leaf.

    Examples:
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import make_mesh, place
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> tree = place({"W": jnp.ones((6, 8))}, {"W": P(None, "model")}, mesh)
        >>> tree["W"].sharding.spec
        P(None, 'model')
        >>> place({"W": jnp.ones((6, 8))}, None, mesh)["W"].sharding.is_fully_replicated
        True
    """
    if specs is None:
        return _put(tree, NamedSharding(mesh, P()))
    _check_fits(tree, specs, mesh, "place")
    return _put(tree, shardings(specs, mesh))


def _local_data_parts(mesh: Mesh) -> int:
    """How many slices of the ``"data"`` axis this process's devices hold."""
    axis = mesh.axis_names.index(DATA_AXIS)
    me = jax.process_index()
    return len({index[axis] for index, device in np.ndenumerate(mesh.devices)
                if device.process_index == me})


def _check_divisible(what: str, leaf: Any, parts: int, whose: str) -> None:
    if np.ndim(leaf) == 0:
        raise ValueError(f"{what}: a batch must have a leading example axis, got a scalar")
    n = np.shape(leaf)[0]
    if n % parts:
        lower, upper = (n // parts) * parts, (n // parts + 1) * parts
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{what}: the leading axis has {n} examples{whose}, which does not divide over the "
            f"{parts} devices of mesh axis {DATA_AXIS!r}; use a multiple of {parts} "
            f"(e.g. {hint})"
        )


def _shard_batch(tree: Any, mesh: Mesh, what: str) -> Any:
    _check_axes(mesh, [DATA_AXIS], what)
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() > 1:
        parts = _local_data_parts(mesh)
        whose = f" in process {jax.process_index()}"
        jax.tree.map(lambda leaf: _check_divisible(what, leaf, parts, whose), tree)
        return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf),
                            tree)
    jax.tree.map(lambda leaf: _check_divisible(what, leaf, mesh.shape[DATA_AXIS], ""), tree)
    return jax.device_put(tree, sharding)


def shard_batch(tree: Any, mesh: Mesh, *, name: str = "shard_batch") -> Any:
    r"""Splits every leaf of ``tree`` on its leading (example) axis over the mesh's ``"data"``
    axis (replicated over ``"model"``).

    In a single process the leaves are the whole batch. With several processes
    (``jax.process_count() > 1``) each process passes its local part, and the global batch is
    the concatenation over processes (``jax.make_array_from_process_local_data``).

    Args:
      tree: a pytree of arrays with a leading example axis (``x``, ``y``).
      mesh: a mesh with a ``"data"`` axis.
      name: how the batch is named in error messages (``"fit: x"``).

    Returns:
      ``tree`` with every leaf sharded ``NamedSharding(mesh, P("data"))``: with $D$ slices of
      ``"data"``, slice $d$ holds examples $[d \cdot m / D, (d + 1) \cdot m / D)$.

    Raises:
      ValueError: the mesh has no ``"data"`` axis, or the leading axis does not divide over it
        (the message says which multiples would).

    Examples:
        >>> from jaxnn.sharding import make_mesh, shard_batch
        >>> mesh = make_mesh()
        >>> m = 4 * jax.device_count()  # a multiple of the device count
        >>> x, y = shard_batch((jnp.ones((m, 3)), jnp.zeros((m, 1))), mesh)
        >>> x.shape == (m, 3), x.sharding.spec
        (True, P('data',))
        >>> len(x.addressable_shards) == jax.device_count()
        True
    """
    return _shard_batch(tree, mesh, name)


def shard_train_step(step: Callable, mesh: Mesh, specs: tuple[Any, Any] | None = None
                     ) -> Callable:
    """``step(params, state, opt_state, x, y, key=None)`` compiled over ``mesh``: the batch split
    over ``"data"``, the parameters and optimizer state laid out by ``specs``.

    The parameters and optimizer state are taken and returned with the given specs (so they stay
    split from step to step), the batch ``x``, ``y`` is split over ``"data"``
    ([`shard_batch`][jaxnn.sharding.shard_batch]: in several processes each passes its local
    part), the model state, key and loss are replicated. The step itself is unchanged: GSPMD
    partitions it, gathering a split weight where the forward needs it whole and reducing each
    gradient to its shard. The result equals the one-device step up to the order of
    floating-point summation.

    Args:
      step: a train step from [`jaxnn.make_train_step`][jaxnn.make_train_step] (jitted or not),
        whatever its gradient function and optimizer (mixed precision, DP-SGD).
      mesh: a mesh with a ``"data"`` axis ([`make_mesh`][jaxnn.sharding.make_mesh]).
      specs: ``(param_specs, opt_state_specs)`` as [`layout`][jaxnn.sharding.layout] returns, or
        ``None``: everything replicated (plain data parallelism).

    Returns:
      A function with ``step``'s signature returning ``(params, state, opt_state, loss)``.

    Raises:
      ValueError: the mesh lacks a ``"data"`` axis, ``specs`` is not a pair; at the call, a
        batch or parameter axis that does not divide over its mesh axis (the message names the
        argument or parameter).

    Examples:
        FSDP over a 1-device mesh (the module example shows the tensor strategy):

        >>> import optax
        >>> from jaxnn import sharding
        >>> mesh = sharding.make_mesh(devices=jax.devices()[:1])
        >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> optimizer = optax.sgd(0.1)
        >>> opt_state = optimizer.init(params)
        >>> specs = sharding.layout(net, optimizer, params, opt_state, mesh, "fsdp")
        >>> step = sharding.shard_train_step(
        ...     jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer), mesh, specs)
        >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))
        >>> params, state, opt_state, loss = step(params, (), opt_state, x, y)
        >>> loss.shape, jax.tree.map(jnp.shape, params)
        ((), ({'W': (3, 4), 'b': (4,)}, (), {'W': (4, 1), 'b': (1,)}))

        Replicated (``specs=None``) over every device:

        >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
        >>> parallel = sharding.shard_train_step(step, sharding.make_mesh())
        >>> m = 4 * jax.device_count()
        >>> _, _, _, loss = parallel(params, (), opt_state, jnp.ones((m, 3)), jnp.zeros((m, 1)))
        >>> loss.sharding.is_fully_replicated
        True
    """
    _check_axes(mesh, [DATA_AXIS], "shard_train_step")
    replicated = NamedSharding(mesh, P())
    if specs is None:
        params_sh = opt_sh = replicated
    elif isinstance(specs, tuple) and len(specs) == 2:
        params_sh, opt_sh = shardings(specs[0], mesh), shardings(specs[1], mesh)
    else:
        raise ValueError("shard_train_step: specs must be (param_specs, opt_state_specs), as "
                         "jaxnn.sharding.layout returns, or None (replicated); got "
                         f"{type(specs).__name__}")
    batch = NamedSharding(mesh, P(DATA_AXIS))
    compiled = jax.jit(step,
                       in_shardings=(params_sh, replicated, opt_sh, batch, batch, replicated),
                       out_shardings=(params_sh, replicated, opt_sh, replicated))
    checked = specs is None

    @functools.wraps(step)
    def sharded_step(params, state, opt_state, x, y, key=None):
        nonlocal checked
        if not checked:  # once: the shapes of params and opt_state do not change
            _check_fits(params, specs[0], mesh, "shard_train_step: params")
            _check_fits(opt_state, specs[1], mesh, "shard_train_step: opt_state")
            checked = True
        x = _shard_batch(x, mesh, "shard_train_step: argument 3 (x)")
        y = _shard_batch(y, mesh, "shard_train_step: argument 4 (y)")
        params, opt_state = _put((params, opt_state), (params_sh, opt_sh))
        state, key = _put((state, key), replicated)
        return compiled(params, state, opt_state, x, y, key)

    return sharded_step


def bytes_per_device_fraction(tree: Any) -> float:
    r"""The largest share of ``tree``'s bytes any one device holds, measured from the arrays'
    ``addressable_shards`` (``1/devices`` when everything is evenly split, ``1`` when
    replicated).

    Summing over the leaves $\ell$ of ``tree`` and, for device $d$, over the shards $s$ of
    $\ell$ that $d$ holds:

    $$\text{fraction} = \frac{\max_d \sum_{\ell} \sum_{s \in \ell \text{ on } d}
    \operatorname{bytes}(s)}{\sum_{\ell} \operatorname{bytes}(\ell)}$$

    (0 for an empty tree). Only this process's devices are counted.

    Args:
      tree: a pytree of ``jax.Array``.

    Returns:
      The fraction, in (0, 1].

    Examples:
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import bytes_per_device_fraction, make_mesh, place
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> tree = place({"W": jnp.ones((6, 8))}, {"W": P(None, "model")}, mesh)
        >>> bytes_per_device_fraction(tree)  # one device holds everything
        1.0
    """
    total, per_device = 0, dict[Any, int]()
    for leaf in jax.tree.leaves(tree):
        total += leaf.nbytes
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values()) / total if total else 0.0

def to_host(tree: Any) -> Any:
    """Every leaf of ``tree`` as a NumPy array holding the whole value, in every process.

    A replicated array gives its local copy; an array split over devices of several processes
    is gathered (``multihost_utils.process_allgather``). Use it before saving or printing what
    a multi-process run holds.

    Args:
      tree: a pytree of arrays.

    Returns:
      ``tree`` with every leaf a ``numpy.ndarray``.

    Examples:
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import make_mesh, place, to_host
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> host = to_host(place({"W": jnp.ones((6, 8))}, {"W": P(None, "model")}, mesh))
        >>> type(host["W"]).__name__, host["W"].shape
        ('ndarray', (6, 8))
    """

    def one(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(one, tree)

# --- several processes: the same configuration, bounded waits ------------------------------------

EXIT_CODE = 75
"""The exit status of a process that [`collective_timeout`][jaxnn.sharding.collective_timeout] or
[`check_same_config`][jaxnn.sharding.check_same_config] ends (``EX_TEMPFAIL``)."""


def _end_run(message: str) -> None:
    """Prints ``message`` and ends this process at once: a process stuck in a collective cannot
    be unwound by an exception, and the normal exit would wait for the others at a barrier."""
    print(f"jaxnn: process {jax.process_index()} of {jax.process_count()}: {message}",
          file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


@contextlib.contextmanager
def collective_timeout(seconds: float | None, what: str = "a collective"
                       ) -> Iterator[None]:
    """Ends the run with a message when the block has not finished within ``seconds``.

    A collective (an all-reduce in a sharded step, a gather of the configuration) waits for every
    process; when one never arrives (stopped, stalled reading its data, started with another
    configuration) the others would wait for ever. Inside this context a watchdog thread prints
    ``"... waited more than N s for the other processes in WHAT ..."`` to stderr and exits the
    process with [`EXIT_CODE`][jaxnn.sharding.EXIT_CODE] (``os._exit``: a blocked collective
    cannot be interrupted). Block on the result inside the context
    (``jax.block_until_ready``), since JAX dispatches asynchronously.

    Args:
      seconds: the limit; ``None`` for none (the context does nothing).
      what: what is waited for, named in the message.

    Yields:
      Nothing; the body runs under the watchdog.

    Examples:
        >>> from jaxnn.sharding import collective_timeout
        >>> with collective_timeout(60.0, "one step"):
        ...     total = jax.block_until_ready(jnp.ones(3).sum())
        >>> float(total)
        3.0
    """
    if seconds is None:
        yield
        return
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
        raise ValueError(f"collective_timeout: seconds must be a positive number or None, got "
                         f"{seconds!r}")
    timer = threading.Timer(seconds, _end_run, args=(
        f"waited more than {seconds:g} s for the other processes in {what}; ending the run "
        f"(a process stopped, stalled, or runs another configuration)",))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _canonical(config: Mapping[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=repr, separators=(",", ":"))


def _first_difference(mine: dict, theirs: dict) -> str | None:
    for key in sorted(set(mine) | set(theirs)):
        if key not in theirs or key not in mine or mine[key] != theirs[key]:
            return key
    return None


def check_same_config(config: Mapping[str, Any], *, what: str = "check_same_config",
                      timeout: float | None = 300.0) -> None:
    """Checks that every process runs with the same ``config``; ends the run with a message
    naming the first difference otherwise.

    Each process hashes its ``config`` (JSON with sorted keys; values that are not JSON by
    ``repr``) and the hashes are exchanged through ``jax.experimental.multihost_utils``. When
    they differ, the configurations themselves are exchanged and every process prints which
    entry differs from process 0's (``'epochs': 10 here, 20 in process 0``) and exits with
    [`EXIT_CODE`][jaxnn.sharding.EXIT_CODE], instead of the processes running different
    programs and waiting for each other for ever. A process that never arrives ends the run
    after ``timeout`` seconds ([`collective_timeout`][jaxnn.sharding.collective_timeout]). In a
    single process it does nothing.

    Args:
      config: what must be the same everywhere (model, optimizer, steps, batch, mesh).
      what: the caller, named in the message.
      timeout: seconds to wait for the other processes; ``None`` for no limit.

    Examples:
        >>> from jaxnn.sharding import check_same_config
        >>> check_same_config({"epochs": 3, "batch_size": 32})  # one process: nothing to do
    """
    if jax.process_count() == 1:
        return
    text = _canonical(config)
    digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
    with collective_timeout(timeout, f"{what} (the configuration check)"):
        digests = np.asarray(multihost_utils.process_allgather(digest))
        if (digests == digests[0]).all():
            return
        data = np.frombuffer(text.encode(), np.uint8)
        lengths = np.asarray(multihost_utils.process_allgather(np.asarray([data.size])))
        padded = np.zeros(int(lengths.max()), np.uint8)
        padded[:data.size] = data
        texts = np.asarray(multihost_utils.process_allgather(padded))
    configs = [json.loads(bytes(row[:int(n)]).decode()) for row, n in
               zip(texts, lengths.reshape(-1), strict=True)]
    me, first = jax.process_index(), configs[0]
    others = [p for p in range(len(configs)) if configs[p] != first]
    p = me if me in others else others[0]
    key = _first_difference(configs[p], first)
    _end_run(f"{what}: the processes run different configurations: process {p} differs from "
             f"process 0 first at {key!r}: {configs[p].get(key, '(missing)')!r} in process {p}, "
             f"{first.get(key, '(missing)')!r} in process 0")
