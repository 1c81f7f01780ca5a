r"""Sharded parameters over a ``("data", "model")`` mesh: FSDP, tensor parallel, replicated.

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
    >>> specs, opt_specs = sharding.layout(net, optimizer, params, opt_state, mesh, "tensor")
    >>> specs
    ({'W': P(None, 'model'), 'b': P('model',)}, (), {'W': P('model', None), 'b': P()})
    >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    >>> sharded_step = sharding.shard_train_step(step, mesh, specs, opt_specs)
    >>> params = sharding.place(params, specs, mesh)
    >>> opt_state = sharding.place(opt_state, opt_specs, mesh)
    >>> x, y = jnp.ones((4, 6)), jnp.zeros((4, 4))
    >>> params, _, opt_state, loss = sharded_step(params, (), opt_state, x, y, None)
    >>> params[0]["W"].sharding.spec
    P(None, 'model')
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

MODEL_AXIS = "model"
"""The name of the mesh axis tensor parallelism splits weights over (the other axis of
[`make_mesh`][jaxnn.sharding.make_mesh]'s meshes is ``"data"``,
[`jaxnn.data_parallel.DATA_AXIS`][jaxnn.data_parallel.DATA_AXIS])."""
STRATEGIES = ("replicated", "fsdp", "tensor")
"""The strategies [`param_specs`][jaxnn.sharding.param_specs] knows (module doc)."""

Overrides = Callable[[str, Layer, str, Any], P | None]


def make_mesh(data: int | None = None, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``(data, model)`` mesh over ``devices`` (default every device of every process).

    ``data`` defaults to ``len(devices) // model``; ``data · model`` must equal the device count.

    Args:
      data: the size of the ``"data"`` axis.
      model: the size of the ``"model"`` axis, a positive int dividing the device count.
      devices: the devices, filling the mesh row by row (a row is one ``"data"`` index).

    Returns:
      A ``jax.sharding.Mesh`` of shape ``(data, model)``, axes ``("data", "model")``.

    Raises:
      ValueError: the sizes do not multiply to the device count.

    Examples:
        >>> from jaxnn.sharding import make_mesh
        >>> mesh = make_mesh(devices=jax.devices()[:1])  # a 1-device mesh
        >>> mesh.axis_names, dict(mesh.shape)
        (('data', 'model'), {'data': 1, 'model': 1})
        >>> make_mesh().size == jax.device_count()  # every device, all on "data"
        True
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


SELF_CONTAINED = frozenset({"multi_head_attention"})
"""Layers whose rule is a complete column-then-row pair (the next layer starts a new pair):
attention splits its Q, K, V projections by heads and its output projection by rows."""

TENSOR_RULES: dict[str, Callable[[dict, bool], dict[str, P]]] = {
    "dense": _matrix_rule,
    "conv": _matrix_rule,
    "multi_head_attention": _attention_rule,
}
"""Tensor-parallel rules by leaf-layer name: ``rule(params, column) -> {param name: spec}``;
``column`` alternates over the layers that have a rule (the first is column-split). A rule
may leave parameters out (replicated). A new layer gets tensor parallelism by adding its rule
here: ``TENSOR_RULES["dense"]({"W": W, "b": b}, True)`` is
``{"W": P(None, "model"), "b": P("model")}``, with ``False`` it is
``{"W": P("model", None), "b": P()}``."""


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

    Raises:
      ValueError: an unknown strategy, or a mesh without the axis it needs.

    Examples:
        On a 1-device mesh FSDP has nothing to split (``P()``); the tensor rules still say
        which axis each weight would be split on:

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


def place(tree: Any, specs: Any, mesh: Mesh) -> Any:
    """``tree`` with every leaf put on ``mesh`` by its spec.

    Args:
      tree: a pytree of arrays.
      specs: a pytree of ``PartitionSpec`` of the same structure.
      mesh: the mesh.

    Returns:
      ``tree``, every leaf a ``jax.Array`` sharded as its spec says.

    Examples:
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn.sharding import make_mesh, place
        >>> mesh = make_mesh(devices=jax.devices()[:1])
        >>> tree = place({"W": jnp.ones((6, 8))}, {"W": P(None, "model")}, mesh)
        >>> tree["W"].sharding.spec
        P(None, 'model')
    """
    return jax.device_put(tree, shardings(specs, mesh))


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


def shard_train_step(step: Callable, mesh: Mesh, param_specs_: Any,
                     opt_state_specs_: Any) -> Callable:
    """``step(params, state, opt_state, x, y, key)`` compiled over ``mesh`` with sharded
    parameters and optimizer state.

    The parameters and optimizer state are taken and returned with the given specs (so they stay
    split from step to step), the batch ``x``, ``y`` is split over ``"data"``, the model state,
    key and loss are replicated. The step itself is unchanged: GSPMD partitions it, gathering a
    split weight where the forward needs it whole and reducing each gradient to its shard.

    Args:
      step: a train step from [`jaxnn.make_train_step`][jaxnn.make_train_step].
      mesh: the ``(data, model)`` mesh.
      param_specs_: the parameters' specs ([`param_specs`][jaxnn.sharding.param_specs]).
      opt_state_specs_: the optimizer state's specs
        ([`opt_state_specs`][jaxnn.sharding.opt_state_specs]).

    Returns:
      The jitted step, called with all six arguments (``key`` may be ``None``) and returning
      ``(params, state, opt_state, loss)``.

    Examples:
        FSDP over a 1-device mesh (the module example shows the tensor strategy):

        >>> import optax
        >>> from jaxnn import sharding
        >>> mesh = sharding.make_mesh(devices=jax.devices()[:1])
        >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> optimizer = optax.sgd(0.1)
        >>> opt_state = optimizer.init(params)
        >>> specs, opt_specs = sharding.layout(net, optimizer, params, opt_state, mesh, "fsdp")
        >>> step = sharding.shard_train_step(
        ...     jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer),
        ...     mesh, specs, opt_specs)
        >>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 1))
        >>> params, state, opt_state, loss = step(params, (), opt_state, x, y, None)
        >>> loss.shape, jax.tree.map(jnp.shape, params)
        ((), ({'W': (3, 4), 'b': (4,)}, (), {'W': (4, 1), 'b': (1,)}))
    """
    batch = NamedSharding(mesh, P(DATA_AXIS))
    replicated = NamedSharding(mesh, P())
    params_sh = shardings(param_specs_, mesh)
    opt_sh = shardings(opt_state_specs_, mesh)
    return jax.jit(step,
                   in_shardings=(params_sh, replicated, opt_sh, batch, batch, replicated),
                   out_shardings=(params_sh, replicated, opt_sh, replicated))
