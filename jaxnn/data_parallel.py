"""Deprecated: data parallelism is [`jaxnn.sharding`][jaxnn.sharding]'s ``"replicated"`` layout.

This module stays for one release so that existing code keeps running; each of its functions
warns (``DeprecationWarning``) and calls [`jaxnn.sharding`][jaxnn.sharding]:

| was | is |
|---|---|
| ``data_parallel.data_mesh(devices)`` | ``sharding.make_mesh(devices=devices)`` |
| ``data_parallel.shard_batch(tree, mesh)`` | ``sharding.shard_batch(tree, mesh)`` |
| ``data_parallel.replicate(tree, mesh)`` | ``sharding.place(tree, None, mesh)`` |
| ``data_parallel.shard_train_step(step, mesh)`` | ``sharding.shard_train_step(step, mesh)`` |
| ``data_parallel.DATA_AXIS`` | ``sharding.DATA_AXIS`` |

The one behaviour that changed: ``data_mesh`` returns ``make_mesh``'s two-axis
``("data", "model")`` mesh (the ``"model"`` axis of size 1), and ``shard_train_step`` no longer
takes ``batch_argnums`` (the batch is always ``x``, ``y``, arguments 3 and 4).

Examples:
    >>> import warnings
    >>> from jaxnn import data_parallel
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     mesh = data_parallel.data_mesh()
    >>> caught[0].category.__name__, mesh.axis_names
    ('DeprecationWarning', ('data', 'model'))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import Mesh

from jaxnn import sharding

__all__ = ["data_mesh", "replicate", "shard_batch", "shard_train_step"]


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"jaxnn.data_parallel.{old} is deprecated and goes in the next release; use "
                  f"jaxnn.sharding.{new}", DeprecationWarning, stacklevel=3)


def __getattr__(name: str) -> Any:
    if name == "DATA_AXIS":
        _deprecated("DATA_AXIS", "DATA_AXIS")
        return sharding.DATA_AXIS
    raise AttributeError(f"module 'jaxnn.data_parallel' has no attribute {name!r}")


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Deprecated: [`jaxnn.sharding.make_mesh`][jaxnn.sharding.make_mesh]``(devices=devices)``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     jaxnn.data_parallel.data_mesh().size == jax.device_count()
        True
    """
    _deprecated("data_mesh", "make_mesh")
    return sharding.make_mesh(devices=devices)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Deprecated: [`jaxnn.sharding.place`][jaxnn.sharding.place]``(tree, None, mesh)``.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     w = jaxnn.data_parallel.replicate(jnp.ones(3), jaxnn.sharding.make_mesh())
        >>> w.sharding.is_fully_replicated
        True
    """
    _deprecated("replicate", "place(tree, None, mesh)")
    return sharding.place(tree, None, mesh)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Deprecated: [`jaxnn.sharding.shard_batch`][jaxnn.sharding.shard_batch].

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     x = jaxnn.data_parallel.shard_batch(jnp.ones((jax.device_count(), 2)),
        ...                                         jaxnn.sharding.make_mesh())
        >>> x.sharding.spec
        P('data',)
    """
    _deprecated("shard_batch", "shard_batch")
    return sharding.shard_batch(tree, mesh)


def shard_train_step(step: Callable, mesh: Mesh | None = None) -> Callable:
    """Deprecated: [`jaxnn.sharding.shard_train_step`][jaxnn.sharding.shard_train_step]
    ``(step, mesh)``, everything replicated; ``mesh`` defaults to ``make_mesh()``.

    Examples:
        >>> import optax, warnings
        >>> net = jaxnn.dense(1)
        >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optax.sgd(0.1))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     parallel = jaxnn.data_parallel.shard_train_step(step)
        >>> caught[0].category.__name__
        'DeprecationWarning'
    """
    _deprecated("shard_train_step", "shard_train_step(step, mesh)")
    return sharding.shard_train_step(step, sharding.make_mesh() if mesh is None else mesh)
