r"""Data parallelism over every visible device with ``jax.sharding``.

[`shard_train_step`][jaxnn.data_parallel.shard_train_step] turns a train step into a data-parallel
one: a one-axis
``jax.sharding.Mesh`` over the devices (axis ``"data"``), the parameters, model state and
optimizer state replicated on every device (``NamedSharding(mesh, P())``), the batch split on
its leading axis (``NamedSharding(mesh, P("data"))``). The step itself is unchanged: ``jax.jit``
partitions it (GSPMD), each device computes the forward and backward on its part of the batch,
and the sums over examples inside the losses' means and the backward's ``dW = xᵀ dZ`` become
all-reduces across devices. The result equals the one-device step up to the order of floating-
point summation: with the batch $x$ split into the parts $x_{(1)}, \dots, x_{(D)}$ of the $D$
devices, a dense layer's weight gradient is

$$dW = x^\top dZ = \sum_{d=1}^{D} x_{(d)}^\top \, dZ_{(d)}$$

each device computing one term on its own part and the sum being the all-reduce.

Several hosts. Call ``jax.distributed.initialize()`` at the start of every process (with
``coordinator_address``, ``num_processes`` and ``process_id``, or from the cluster's
environment on Cloud TPU, SLURM and similar); ``jax.devices()`` then lists the devices of every
process, so [`data_mesh`][jaxnn.data_parallel.data_mesh] spans all hosts. Each process passes its
own part of the global
batch (its ``local batch``, examples
``[p·b, (p+1)·b)`` for process ``p``, say): [`shard_batch`][jaxnn.data_parallel.shard_batch]
assembles the global array with ``jax.make_array_from_process_local_data``. Everything else is
the same program on every process; the library adds no orchestration of its own.
``examples/multi_process.py`` is the recipe (CPU collectives through gloo), and
``tests/test_multi_process.py`` runs it as 2 and 4 processes against one. To split the
parameters and optimizer state themselves instead of replicating them, see
[`jaxnn.sharding`][jaxnn.sharding].

The examples below run on whatever devices the process sees, one CPU device included (a 1-device
mesh: everything is "split" into one part). To try several devices on one CPU, start Python with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.

Examples:
    >>> from jaxnn import data_parallel
    >>> mesh = data_parallel.data_mesh()
    >>> mesh.axis_names, mesh.size == jax.device_count()
    (('data',), True)
    >>> x = data_parallel.shard_batch(jnp.ones((4 * jax.device_count(), 3)), mesh)
    >>> x.sharding.spec == jax.sharding.PartitionSpec("data")
    True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DATA_AXIS", "data_mesh", "replicate", "shard_batch", "shard_train_step"]

DATA_AXIS = "data"
"""The name of the mesh axis the batch is split on (and that
[`jaxnn.sharding`][jaxnn.sharding]'s FSDP strategy splits parameters over)."""


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over ``devices`` (default: ``jax.devices()``, every
    device of every process).

    Args:
      devices: the devices, in mesh order.

    Returns:
      A ``jax.sharding.Mesh`` with the one axis [`DATA_AXIS`][jaxnn.data_parallel.DATA_AXIS].

    Raises:
      ValueError: ``devices`` is empty.

    Examples:
        >>> from jaxnn.data_parallel import data_mesh
        >>> mesh = data_mesh()
        >>> mesh.axis_names, mesh.size == jax.device_count()
        (('data',), True)
        >>> data_mesh(jax.devices()[:1]).size  # a 1-device mesh
        1
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh: no devices given")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts a full copy of every leaf of ``tree`` on every device of ``mesh``.

    Args:
      tree: a pytree of arrays (parameters, optimizer state).
      mesh: the mesh.

    Returns:
      ``tree`` with every leaf sharded ``NamedSharding(mesh, P())``.

    Examples:
        >>> from jaxnn.data_parallel import data_mesh, replicate
        >>> params = replicate({"W": jnp.ones((2, 3)), "b": jnp.zeros(3)}, data_mesh())
        >>> params["W"].sharding.is_fully_replicated
        True
    """
    return jax.device_put(tree, NamedSharding(mesh, P()))


def _check_divisible(what: str, leaf: Any, devices: int) -> None:
    if np.ndim(leaf) == 0:
        raise ValueError(f"{what}: a batch argument must have a leading example axis, got a "
                         f"scalar")
    n = np.shape(leaf)[0]
    if n % devices:
        lower, upper = (n // devices) * devices, (n // devices + 1) * devices
        hint = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"{what}: the batch's leading axis has {n} examples, which does not divide over the "
            f"{devices} devices of mesh axis {DATA_AXIS!r}; use a batch size that is a multiple "
            f"of {devices} (e.g. {hint})"
        )


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    r"""Splits every leaf of ``tree`` on its leading (example) axis over the mesh's devices.

    In a single process the leaves are the whole batch. With several processes
    (``jax.process_count() > 1``) each process passes its local part, and the global batch is
    the concatenation over processes (``jax.make_array_from_process_local_data``).

    Args:
      tree: a pytree of arrays with a leading example axis (``x``, ``y``).
      mesh: a mesh with a ``"data"`` axis.

    Returns:
      ``tree`` with every leaf sharded ``NamedSharding(mesh, P("data"))``: device $d$ of $D$
      holds examples $[d \cdot m / D, (d + 1) \cdot m / D)$.

    Raises:
      ValueError: when the leading axis does not divide evenly over the devices.

    Examples:
        >>> from jaxnn.data_parallel import data_mesh, shard_batch
        >>> mesh = data_mesh()
        >>> m = 4 * jax.device_count()  # a multiple of the device count
        >>> x, y = shard_batch((jnp.ones((m, 3)), jnp.zeros((m, 1))), mesh)
        >>> x.shape == (m, 3), x.sharding.spec
        (True, P('data',))
        >>> len(x.addressable_shards) == jax.device_count()
        True
    """
    return _shard_batch(tree, mesh, "shard_batch")


def _shard_batch(tree: Any, mesh: Mesh, what: str) -> Any:
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if jax.process_count() > 1:
        local = len(mesh.local_devices)
        jax.tree.map(lambda leaf: _check_divisible(what, leaf, local), tree)
        return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf),
                            tree)
    jax.tree.map(lambda leaf: _check_divisible(what, leaf, mesh.size), tree)
    return jax.device_put(tree, sharding)


def shard_train_step(
    step: Callable,
    mesh: Mesh | None = None,
    *,
    batch_argnums: Sequence[int] = (3, 4),
) -> Callable:
    """Makes ``step`` data-parallel over the devices of ``mesh``.

    Args:
      step: a train step from [`jaxnn.make_train_step`][jaxnn.make_train_step] (jitted or not),
        whatever its
        gradient function and optimizer (mixed precision, DP-SGD).
      mesh: the mesh; default [`data_mesh`][jaxnn.data_parallel.data_mesh] over every visible
        device.
      batch_argnums: the positions of the batch arguments: ``x``, ``y`` of
        ``step(params, state, opt_state, x, y, key)``, arguments 3 and 4. Every other argument
        is replicated.

    Returns:
      A function with ``step``'s signature. It replicates the non-batch arguments, splits the
      batch arguments on their leading axis (raising a clear ``ValueError`` when that axis does
      not divide by the device count), and runs one compiled step; its outputs are replicated.

    Examples:
        One step over every visible device (one CPU device is a 1-device mesh):

        >>> import jax, jax.numpy as jnp, optax, jaxnn
        >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
        >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optax.sgd(0.1))
        >>> parallel_step = jaxnn.data_parallel.shard_train_step(step)
        >>> x = jnp.ones((8 * jax.device_count(), 2)); y = jnp.zeros((x.shape[0], 1))
        >>> params, _, opt_state, loss = parallel_step(params, (), optax.sgd(0.1).init(params),
        ...                                            x, y)
        >>> loss.shape, loss.sharding.is_fully_replicated
        ((), True)
    """
    mesh = data_mesh() if mesh is None else mesh
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"shard_train_step: the mesh needs an axis named {DATA_AXIS!r}, got "
                         f"axes {mesh.axis_names}")
    batch_argnums = tuple(batch_argnums)
    replicated = NamedSharding(mesh, P())
    compiled = jax.jit(step, out_shardings=replicated)

    @functools.wraps(step)
    def sharded_step(*args):
        for i in batch_argnums:
            if i >= len(args):
                raise ValueError(f"shard_train_step: batch argument {i} is missing; the step got "
                                 f"{len(args)} arguments; it expects (params, state, opt_state, "
                                 f"x, y, key) or batch_argnums=")
        placed = [
            _shard_batch(a, mesh, f"shard_train_step (argument {i})") if i in batch_argnums
            else jax.device_put(a, replicated)
            for i, a in enumerate(args)
        ]
        return compiled(*placed)

    return sharded_step
