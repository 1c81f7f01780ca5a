"""Sharded parameters over a ``("data", "model")`` mesh: FSDP, tensor parallel, replicated.

Data parallelism ([`jaxnn.data_parallel`][jaxnn.data_parallel]) keeps a full copy of the parameters
and the
optimizer state on every device. This module splits them instead, with JAX's own machinery: a
``jax.sharding.PartitionSpec`` for every parameter, ``jax.device_put`` to place them, and
``jax.jit`` (GSPMD) to partition the unchanged training step — the hand-derived backward runs as
written, and XLA inserts the collectives.

Strategies ([`param_specs`][jaxnn.sharding.param_specs]):

* ``"replicated"``: ``P()`` everywhere (plain data parallelism).
* ``"fsdp"`` (fully sharded data parallel): every parameter split over ``"data"`` along its
  largest axis whose size the ``"data"`` axis divides; a parameter with no such axis stays
  replicated. XLA all-gathers a weight where the forward needs it whole and reduce-scatters its
  gradient, so each device keeps ``1/devices`` of the parameters and of the optimizer state.
* ``"tensor"`` (Megatron-style tensor parallelism over ``"model"``): the layers with a rule in
  [`TENSOR_RULES`][jaxnn.sharding.TENSOR_RULES] alternate, in network order, between a *column*
  split (the output features:
  ``W[:, j]`` and ``b[j]`` on the device holding column block ``j``) and a *row* split (the input
  features: ``W[i, :]``, the bias replicated). A column-split layer followed by a row-split one
  needs no gather in between: each device computes its block of hidden units, and the row-split
  product's partial sums are all-reduced once. A parameter whose split axis the ``"model"``
  axis does not divide stays replicated.

Every strategy is overridable per parameter: ``overrides(path, leaf_layer, name, array)`` returns
a ``PartitionSpec`` to use instead, or ``None`` to keep the rule's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnn.core import Layer, children
from jaxnn.data_parallel import DATA_AXIS

__all__ = [
    "MODEL_AXIS",
    "SELF_CONTAINED",
    "STRATEGIES",
    "TENSOR_RULES",
    "bytes_per_device_fraction",
    "layout",
    "make_mesh",
    "opt_state_specs",
    "param_specs",
    "place",
    "shard_train_step",
    "shardings",
    "to_host",
]

#: The name of the mesh axis tensor parallelism splits weights over.
MODEL_AXIS = "model"
STRATEGIES = ("replicated", "fsdp", "tensor")

Overrides = Callable[[str, Layer, str, Any], P | None]


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default every device of every process).

    ``data`` defaults to ``len(devices) // model``; ``data · model`` must equal the device count.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(model, int) or model < 1 or len(devices) % model:
        raise ValueError(f"make_mesh: model={model!r} must be a positive int dividing the "
                         f"{len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data * model != len(devices):
        raise ValueError(f"make_mesh: data × model = {data} × {model} = {data * model}, but "
                         f"there are {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


# --- tensor-parallel rules: one per layer name --------------------------------------------------


def _column(ndim_w: int) -> dict[str, P]:
    """Output features split: ``W[..., j]``, ``b[j]``."""
    return {"W": P(*([None] * (ndim_w - 1)), MODEL_AXIS), "b": P(MODEL_AXIS)}


def _row(ndim_w: int) -> dict[str, P]:
    """Input features split: ``W[..., i, :]``; the bias is added after the all-reduce, whole."""
    return {"W": P(*([None] * (ndim_w - 2)), MODEL_AXIS, None), "b": P()}


def _matrix_rule(params: dict, column: bool) -> dict[str, P]:
    ndim = np.ndim(params["W"])
    return _column(ndim) if column else _row(ndim)


def _attention_rule(params: dict, column: bool) -> dict[str, P]:
    """Q, K, V projections split by output features (heads), the output projection by rows."""
    del column  # attention is a column-then-row pair on its own
    split_out, split_in = P(None, MODEL_AXIS), P(MODEL_AXIS, None)
    specs = {}
    for name in params:
        if name in ("Wq", "Wk", "Wv"):
            specs[name] = split_out
        elif name in ("bq", "bk", "bv"):
            specs[name] = P(MODEL_AXIS)
        elif name == "Wo":
            specs[name] = split_in
    return specs


#: Layers whose rule is a complete column-then-row pair (the next layer starts a new pair).
SELF_CONTAINED = frozenset({"multi_head_attention"})

#: Tensor-parallel rules by leaf-layer name: ``rule(params, column) -> {param name: spec}``;
#: ``column`` alternates over the layers that have a rule (the first is column-split). A rule
#: may leave parameters out (replicated).
TENSOR_RULES: dict[str, Callable[[dict, bool], dict[str, P]]] = {
    "dense": _matrix_rule,
    "conv": _matrix_rule,
    "multi_head_attention": _attention_rule,
}


# --- walking the network ------------------------------------------------------------------------


def _leaf_params(model: Layer, params: Any, path: str) -> Iterator[tuple[str, Layer, Any]]:
    """``(path, leaf layer, leaf params)`` in network order."""
    if not model.sublayers:
        yield path, model, params
        return
    for label, sub, sub_params in children(model, params):
        yield from _leaf_params(sub, sub_params, f"{path}/{label}:{sub.name}")


def _fits(spec: P, shape: tuple[int, ...], mesh: Mesh) -> bool:
    """Every split axis of ``shape`` is divisible by the mesh axes it is split over."""
    if len(spec) > len(shape):
        return False
    for size, axes in zip(shape, spec, strict=False):
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            if size % mesh.shape[axis]:
                return False
    return True


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh) -> P:
    n = mesh.shape[DATA_AXIS]
    candidates = [i for i, d in enumerate(shape) if d % n == 0 and d >= n]
    if n == 1 or not candidates:
        return P()
    axis = max(candidates, key=lambda i: (shape[i], -i))
    return P(*[DATA_AXIS if i == axis else None for i in range(len(shape))])


def _leaf_specs(leaf: Layer, params: Any, strategy: str, mesh: Mesh, column: bool) -> Any:
    if strategy == "fsdp":
        return jax.tree.map(lambda a: _fsdp_spec(np.shape(a), mesh), params)
    rule = TENSOR_RULES.get(leaf.name) if strategy == "tensor" else None
    if rule is None or not isinstance(params, dict):
        return jax.tree.map(lambda a: P(), params)
    wanted = rule(params, column)
    return {name: (wanted[name] if name in wanted and _fits(wanted[name], np.shape(a), mesh)
                   else P())
            for name, a in params.items()}


def _rebuild_like(model: Layer, params: Any, leaf_specs: Iterator[Any]) -> Any:
    """``params``' container structure with every leaf layer's entry from ``leaf_specs``."""
    if not model.sublayers:
        return next(leaf_specs)
    entries = [(label, _rebuild_like(sub, p, leaf_specs))
               for label, sub, p in children(model, params)]
    if isinstance(params, dict):
        return dict(entries)
    return tuple(entry for _, entry in entries)


def param_specs(model: Layer, params: Any, mesh: Mesh, strategy: str = "fsdp", *,
                overrides: Overrides | None = None) -> Any:
    """A ``PartitionSpec`` for every parameter of ``model`` (module doc).

    Args:
      model: the network.
      params: its parameters (arrays or ``jax.ShapeDtypeStruct``).
      mesh: a mesh with a ``"data"`` axis (``"fsdp"``) or a ``"model"`` axis (``"tensor"``),
        e.g. [`make_mesh`][jaxnn.sharding.make_mesh].
      strategy: ``"replicated"``, ``"fsdp"`` or ``"tensor"``.
      overrides: ``(path, leaf_layer, param_name, array) -> PartitionSpec | None`` per
        parameter; ``None`` keeps the strategy's choice.

    Returns:
      A pytree of ``PartitionSpec`` with the structure of ``params``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"param_specs: strategy must be one of {STRATEGIES}, got {strategy!r}")
    needed = {"fsdp": DATA_AXIS, "tensor": MODEL_AXIS}.get(strategy)
    if needed is not None and needed not in mesh.axis_names:
        raise ValueError(f"param_specs: strategy {strategy!r} needs a mesh axis named "
                         f"{needed!r}, got axes {mesh.axis_names}")
    specs, column = [], True
    for path, leaf, p in _leaf_params(model, params, model.name):
        leaf_spec = _leaf_specs(leaf, p, strategy, mesh, column)
        if strategy == "tensor" and leaf.name in TENSOR_RULES:
            # a matrix layer flips column/row; attention is a whole column-row pair by itself,
            # so the layer after it starts a new pair with a column split
            column = leaf.name in SELF_CONTAINED or not column
        if overrides is not None and isinstance(p, dict):
            for name, array in p.items():
                chosen = overrides(path, leaf, name, array)
                if chosen is not None:
                    leaf_spec[name] = chosen
        specs.append(leaf_spec)
    return _rebuild_like(model, params, iter(specs))


def opt_state_specs(optimizer: optax.GradientTransformation, opt_state: Any,
                    specs: Any) -> Any:
    """The specs of an optimizer state: the parameters' spec for every entry shaped like a
    parameter (Adam's moments, say), ``P()`` for the rest (step counts, scalars)."""
    return optax.tree_map_params(optimizer, lambda _, spec: spec, opt_state, specs,
                                 transform_non_params=lambda _: P(),
                                 is_leaf=lambda x: isinstance(x, P))


def layout(model: Layer, optimizer: optax.GradientTransformation, params: Any, opt_state: Any,
           mesh: Mesh, strategy: str = "fsdp") -> tuple[Any, Any]:
    """The specs of the parameters and of the optimizer state under ``strategy``."""
    specs = param_specs(model, params, mesh, strategy)
    return specs, opt_state_specs(optimizer, opt_state, specs)


def shardings(specs: Any, mesh: Mesh) -> Any:
    """The ``NamedSharding`` on ``mesh`` of every spec in a tree of ``PartitionSpec``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


def place(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf put on ``mesh`` by its spec."""
    return jax.device_put(tree, shardings(specs, mesh))


def bytes_per_device_fraction(tree: Any) -> float:
    """The largest share of ``tree``'s bytes any one device holds, measured from the arrays'
    ``addressable_shards`` (``1/devices`` when everything is evenly split, ``1`` when
    replicated)."""
    total, per_device = 0, {}
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
    """

    def one(leaf):
        if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
            return np.asarray(leaf)
        if leaf.is_fully_replicated:
            return np.asarray(leaf.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(leaf, tiled=True))

    return jax.tree.map(one, tree)


def shard_train_step(step: Callable, mesh: Mesh, param_specs_: Any,
                     opt_state_specs_: Any) -> Callable:
    """``step(params, state, opt_state, x, y, key)`` compiled over ``mesh`` with sharded
    parameters and optimizer state.

    The parameters and optimizer state are taken and returned with the given specs (so they stay
    split from step to step), the batch ``x``, ``y`` is split over ``"data"``, the model state,
    key and loss are replicated. The step itself is unchanged: GSPMD partitions it, gathering a
    split weight where the forward needs it whole and reducing each gradient to its shard.
    """
    batch = NamedSharding(mesh, P(DATA_AXIS))
    replicated = NamedSharding(mesh, P())
    params_sh = shardings(param_specs_, mesh)
    opt_sh = shardings(opt_state_specs_, mesh)
    return jax.jit(step,
                   in_shardings=(params_sh, replicated, opt_sh, batch, batch, replicated),
                   out_shardings=(params_sh, replicated, opt_sh, replicated))
