r"""The Layer protocol and the wiring of hand-derived backward passes into JAX.

A [`Layer`][jaxnn.Layer] is four pure functions in a frozen record (read like a NamedTuple: fields,
tuple unpacking, ``_replace``), in the spirit of optax's ``GradientTransformation`` and stax's
``(init, apply)`` pairs:

* ``init(key, in_shape) -> (out_shape, params, state)`` makes the parameters and infers the
  output shape before any data runs. Shapes include the batch axis first (``-1`` stands for
  "any batch size").
* ``forward(params, state, x, *, key, train) -> (y, new_state, residuals)`` computes the output
  and what the way back needs.
* ``backward(params, residuals, dy) -> (dparams, dx)`` is the layer's derivative, written by
  hand (the classic ``dZ = dA * g'(Z)``, ``dW = A_prevᵀ dZ``, ``db = Σ dZ``, ``dA_prev = dZ Wᵀ``).
  It never calls ``jax.vjp`` or ``jax.grad``.

For a dense layer followed by an activation $g$, in jaxnn's examples-first layout (the rows of
$A_{\text{prev}}$ are the $m$ examples, $W$ is $(n_{\text{in}}, n_{\text{out}})$), ``forward``
computes

$$ Z = A_{\text{prev}} W + b, \qquad A = g(Z) $$

and ``backward`` turns the gradient $dA = \partial J / \partial A$ of whatever comes after into
the classic four formulas, transposed for this layout:

$$
dZ = dA \odot g'(Z) \qquad dW = A_{\text{prev}}^\top dZ \qquad
db = \sum_{i} dZ_{i} \qquad dA_{\text{prev}} = dZ\, W^\top
$$

In general ``backward`` is the vector-Jacobian product of ``forward``: given
$dy = \partial J / \partial y$ it returns

$$
d\theta = \left(\frac{\partial y}{\partial \theta}\right)^\top dy, \qquad
dx = \left(\frac{\partial y}{\partial x}\right)^\top dy
$$

with $d\theta$ shaped like ``params`` and $dx$ like the input.

[`apply`][jaxnn.apply] attaches ``backward`` to ``forward`` with ``jax.custom_vjp``, so
``jax.grad``, ``jax.vjp`` and ``jax.value_and_grad`` of any function of the output use the
hand-derived rule. [`reference_apply`][jaxnn.reference_apply] runs the very same ``forward``
under plain autodiff; the gradient check compares the two.

State (batch-norm running statistics, say) flows forward only: its cotangent is dropped, as if
``new_state`` went through ``jax.lax.stop_gradient``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "MATRIX_SPLIT",
    "Layer",
    "Record",
    "TensorSplit",
    "apply",
    "check_features",
    "check_float",
    "check_params",
    "check_positive_int",
    "children",
    "leaf_layer",
    "map_leaves",
    "map_params",
    "reference_apply",
    "split_key",
    "stateless_init",
    "sublayer_labels",
]

Array = jax.Array
PRNGKey = jax.Array
Shape = tuple[int, ...]
Params = Any  # a pytree of arrays
State = Any  # a pytree of arrays, () for stateless layers
Residuals = Any  # whatever forward hands to backward

InitFn = Callable[[PRNGKey, Shape], tuple[Shape, Params, State]]
ForwardFn = Callable[..., tuple[Array, State, Residuals]]
BackwardFn = Callable[[Params, Residuals, Array], tuple[Params, Any]]


class Record:
    """The NamedTuple reading of a frozen dataclass: ``_fields``, ``_replace``, ``_asdict``,
    tuple unpacking and indexing.

    A NamedTuple instance cannot be weakly referenced, and ``jax.jit`` (like other function
    caches) needs that; a frozen dataclass can, so layers and losses are usable wherever JAX
    expects a function (``jax.jit(jaxnn.relu())``, ``jax.jit(jaxnn.mean_squared_error)``).

    Examples:
      A user's own record is a frozen dataclass deriving from it:

      >>> import dataclasses
      >>> @dataclasses.dataclass(frozen=True)
      ... class Pair(jaxnn.core.Record):
      ...     first: int
      ...     second: int
      >>> pair = Pair(1, 2)
      >>> pair._fields, tuple(pair), pair[1], len(pair)
      (('first', 'second'), (1, 2), 2, 2)
      >>> first, second = pair._replace(second=5)
      >>> second, pair._asdict()
      (5, {'first': 1, 'second': 2})
    """

    @property
    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]

    def _replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._fields}

    def __iter__(self) -> Iterator[Any]:
        return iter(tuple(getattr(self, name) for name in self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def __getitem__(self, index):
        return tuple(self)[index]


@dataclasses.dataclass(frozen=True)
class TensorSplit(Record):
    r"""How a leaf layer's parameters split over the ``"model"`` mesh axis in tensor parallelism
    (Megatron style), declared beside its ``weights`` (``Layer(..., tensor_split=...)``).

    Tensor parallelism pairs layers: the first of a pair splits its *output* features (a
    *column* split, $W_{:, j}$ and $b_j$ on the device holding block $j$), the second its
    *input* features (a *row* split, $W_{i, :}$, the bias whole). Each device then computes its
    block of the hidden units, and the second product's partial sums are all-reduced once:

    $$ Y = \sigma(X W_1) W_2 = \sum_{j} \sigma(X W_{1, :, j})\, W_{2, j, :} $$

    Attributes:
      column: ``(parameter name, axis)`` pairs: the axis holding the output features, split
        when the layer opens a pair (``(("W", -1), ("b", -1))`` for ``dense`` and ``conv``).
      row: ``(parameter name, axis)`` pairs: the axis holding the input features, split when the
        layer closes a pair (``(("W", -2),)``); a parameter not listed stays whole.
      pair: ``True`` for a layer that is a whole column-then-row pair by itself (attention: the
        Q, K, V projections split by heads, the output projection by rows): both lists apply at
        once, and the next layer opens a new pair.

    [`jaxnn.sharding.param_specs`][jaxnn.sharding.param_specs] reads it; a parameter whose axis
    the ``"model"`` axis does not divide stays whole.

    Examples:
      The split ``dense`` declares, and a user's own layer declaring the same:

      >>> jaxnn.dense(4).tensor_split
      TensorSplit(column=(('W', -1), ('b', -1)), row=(('W', -2),), pair=False)
      >>> split = jaxnn.core.TensorSplit(column=(("W", -1),), row=(("W", -2),))
      >>> split.pair
      False
    """

    column: tuple[tuple[str, int], ...]
    row: tuple[tuple[str, int], ...]
    pair: bool = False


MATRIX_SPLIT = TensorSplit(column=(("W", -1), ("b", -1)), row=(("W", -2),))
"""The tensor-parallel split of a layer computing ``x @ W + b`` (``dense``, ``conv``): ``W``'s
last axis and ``b`` in a column split, ``W``'s second to last in a row split."""


@dataclasses.dataclass(frozen=True, repr=False)
class Layer(Record):
    """A layer: ``init``, ``forward`` and a hand-derived ``backward``.

    Attributes:
      name: a short name shown in summaries and gradient-check reports (``"dense"``).
      init: ``(key, in_shape) -> (out_shape, params, state)``.
      forward: ``(params, state, x, *, key, train) -> (y, new_state, residuals)``.
      backward: ``(params, residuals, dy) -> (dparams, dx)``; ``dparams`` has the structure of
        ``params``; ``dx`` is ``None`` for inputs that take no gradient (integer ids).
      sublayers: the layers a combinator is made of, in order; ``()`` for a leaf layer. A
        combinator's params and state are tuples aligned with ``sublayers`` (or dicts keyed by
        ``names``); [`children`][jaxnn.core.children] pairs their entries with the sublayers.
      rebuild: for a combinator, ``rebuild(new_sublayers)`` makes the same combinator over other
        layers (used to wrap every leaf, e.g. to record inputs or to rematerialize); ``None``
        for a leaf.
      weights: for a leaf, the names of its parameters that are weights, i.e. that L2
        regularization and weight decay act on (``("W",)`` for ``dense`` and ``conv``); biases,
        normalization scales and embedding tables are not listed. A user's own layer lists its
        own (``weights=("Wq", "Wk")``): no naming convention is assumed.
      names: for a combinator whose sublayers were given names (``serial(enc=…, head=…)``),
        the names aligned with ``sublayers``; its params and state are then dicts keyed by
        them, and paths read ``"serial/head:dense"``. ``()`` for positional sublayers (params
        and state are tuples, paths read ``"serial/1:dense"``) and for leaves.
      tensor_split: for a leaf, how its parameters split in tensor parallelism (a
        [`TensorSplit`][jaxnn.core.TensorSplit]); ``None`` keeps them whole.
      init_cache: for a leaf with a decode form, its decode state:
        ``(params, batch_size, max_length, dtype) -> state`` (an attention layer's empty KV
        cache, a position table's counter), which makes ``forward`` run the positions after
        those already seen; [`jaxnn.init_cache`][jaxnn.init_cache] calls it for every leaf
        that has one. ``None``: the layer decodes with its own state.

    Examples:
      A built-in layer is such a record; its functions can be called one by one:

      >>> layer = jaxnn.dense(3)
      >>> layer.name, layer._fields[:4], layer.weights
      ('dense', ('name', 'init', 'forward', 'backward'), ('W',))
      >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 2))
      >>> out_shape, jax.tree.map(jnp.shape, params), state
      ((-1, 3), {'W': (2, 3), 'b': (3,)}, ())
      >>> x = jnp.ones((4, 2))
      >>> y, new_state, residuals = layer.forward(params, state, x, key=None, train=False)
      >>> dparams, dx = layer.backward(params, residuals, jnp.ones_like(y))
      >>> y.shape, jax.tree.map(jnp.shape, dparams), dx.shape
      ((4, 3), {'W': (2, 3), 'b': (3,)}, (4, 2))

      A combinator lists its sublayers:

      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu())
      >>> net, [sub.name for sub in net.sublayers]
      (serial(dense, relu), ['dense', 'relu'])
    """

    name: str
    init: InitFn
    forward: ForwardFn
    backward: BackwardFn
    sublayers: tuple[Layer, ...] = ()
    rebuild: Callable[[tuple[Layer, ...]], Layer] | None = None
    weights: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    tensor_split: TensorSplit | None = None
    init_cache: Callable[[Params, int, int, Any], State] | None = None

    def __call__(self, x: Array) -> Array:
        """Applies a layer without parameters or state (an activation) to ``x``.

        ``jaxnn.relu()(x)`` is ``jnp.maximum(x, 0)`` with the hand-derived backward attached.
        A layer with parameters or state (``jaxnn.dense(3)(x)``) is an error that says what to
        write instead: ``init`` then [`apply`][jaxnn.apply].
        """
        _refuse_parameters(self, x)
        y, _ = apply(self, (), (), x)
        return y

    def __repr__(self) -> str:
        if self.sublayers:
            prefixes = [f"{name}=" for name in self.names] or [""] * len(self.sublayers)
            inner = ", ".join(f"{prefix}{sub!r}"
                              for prefix, sub in zip(prefixes, self.sublayers, strict=True))
            return f"{self.name}({inner})"
        return self.name


def _refuse_parameters(layer: Layer, x: Any) -> None:
    """``layer(x)`` is for layers without parameters or state; others are told what to write."""
    try:
        shape = jax.tree.map(lambda a: tuple(jnp.shape(a)), x)  # a tuple of shapes for branches
        made = jax.eval_shape(lambda key: layer.init(key, shape)[1:], jax.random.key(0))
    except Exception:  # an input init refuses is reported by forward below
        return
    params, state = made
    if not jax.tree.leaves((params, state)):
        return
    what = "parameters" if jax.tree.leaves(params) else "state"
    raise TypeError(
        f"{layer.name}: this layer has {what}, so layer(x) cannot run it (calling a layer works "
        f"only for layers without parameters or state, such as jaxnn.relu()). Make them once and "
        f"pass them in:\n"
        f"    _, params, state = layer.init(jax.random.key(0), x.shape)\n"
        f"    y, state = jaxnn.apply(layer, params, state, x)"
    )


def _is_integer(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and not jnp.issubdtype(dtype, jnp.inexact)


def _describe(value: Any) -> str:
    """What ``value`` is, for an error message: ``a tuple of 2 values``, ``a dict``, …"""
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} values"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    return f"a {type(value).__name__}"


def _forward_result(layer: Layer, result: Any) -> tuple[Array, State, Residuals]:
    """``result`` if it is the protocol's ``(y, new_state, residuals)``, else a named error."""
    if not isinstance(result, tuple) or len(result) != 3:
        raise TypeError(
            f"{layer.name}: forward must return a tuple (y, new_state, residuals), got "
            f"{_describe(result)}; a layer without state returns (y, (), residuals)"
        )
    return result


def _check_cotangent(layer: Layer, what: str, reference: Any, cotangent: Any) -> None:
    """``cotangent`` must have ``reference``'s structure and leaf shapes (``None`` stands for
    zeros, for a whole subtree)."""
    ref_leaves = jax.tree_util.tree_flatten_with_path(reference)[0]
    got_structure = jax.tree.structure(cotangent, is_leaf=lambda v: v is None)
    if cotangent is not None and got_structure != jax.tree.structure(reference):  # type: ignore[operator]
        raise TypeError(
            f"{layer.name}: backward must return (dparams, dx) with {what} shaped like "
            f"{'params' if what == 'dparams' else 'the input'}: expected the structure "
            f"{jax.tree.structure(reference)}, got {got_structure}"
        )
    got_leaves = jax.tree.leaves(cotangent, is_leaf=lambda v: v is None)
    for (path, ref), got in zip(ref_leaves, got_leaves, strict=False):
        got_shape = None if got is None else tuple(jnp.shape(got))
        if got_shape is not None and got_shape != tuple(jnp.shape(ref)):
            raise ValueError(
                f"{layer.name}: backward returned {what}{jax.tree_util.keystr(path)} of shape "
                f"{got_shape}, expected {tuple(jnp.shape(ref))} (the shape of "
                f"{'params' if what == 'dparams' else 'x'}{jax.tree_util.keystr(path)})"
            )


def _backward_result(layer: Layer, result: Any, params: Params, x_spec: Any) -> tuple:
    """``result`` if it is the protocol's ``(dparams, dx)`` matching params and the input."""
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(
            f"{layer.name}: backward must return a tuple (dparams, dx), got {_describe(result)}"
        )
    dparams, dx = result
    _check_cotangent(layer, "dparams", params, dparams)
    if x_spec is not None:
        _check_cotangent(layer, "dx", x_spec, dx)
    return result


def _apply_rule(layer: Layer, train: bool, x_spec: Any = None) -> Callable[..., tuple]:
    """The custom_vjp function ``(params, state, x, key) -> (y, new_state)`` of one layer.

    Arrays travel as ordinary arguments (never ``nondiff_argnums``), so the rule is safe under
    ``jit``, ``scan`` and ``vmap``; ``train`` is a Python bool baked into the rule, and
    ``x_spec`` (shapes of the input, ``None`` for integer ids) checks the ``dx`` backward returns.
    Results that break the protocol are errors naming the layer, not JAX's internal ones.
    """

    def run_forward(params, state, x, key):
        return _forward_result(layer, layer.forward(params, state, x, key=key, train=train))

    @jax.custom_vjp
    def rule(params, state, x, key):
        y, new_state, _ = run_forward(params, state, x, key)
        return y, new_state

    def rule_fwd(params, state, x, key):
        y, new_state, residuals = run_forward(params, state, x, key)
        return (y, new_state), (params, residuals)

    def rule_bwd(saved, cotangents):
        params, residuals = saved
        dy, _ = cotangents  # the new state's cotangent is dropped: state flows forward only
        result = layer.backward(params, residuals, dy)
        dparams, dx = _backward_result(layer, result, params, x_spec)
        return dparams, None, (None if x_spec is None else dx), None

    rule.defvjp(rule_fwd, rule_bwd)
    return rule


def _input_spec(x: Any) -> Any:
    """Shapes and dtypes of a (pytree) input; ``None`` for integer ids (they take no gradient)."""
    if _is_integer(x):
        return None
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), x)


def apply(
    layer: Layer,
    params: Params,
    state: State,
    x: Array,
    *,
    key: PRNGKey | None = None,
    train: bool = False,
) -> tuple[Array, State]:
    r"""Runs ``layer`` forward with its hand-derived backward attached.

    Args:
      layer: the layer (or whole network).
      params: its parameters, as made by ``layer.init``.
      state: its state (``()`` for stateless layers).
      x: the input, batch axis first.
      key: a PRNG key for layers that draw random numbers in training (dropout).
      train: training mode (batch statistics, dropout) or evaluation mode.

    Returns:
      ``(y, new_state)``. ``jax.grad`` of any function of ``y`` runs ``layer.backward``.

    Reverse mode only: JAX refuses forward mode (``jax.jvp``, ``jax.jacfwd``,
    ``jax.linearize``) through a ``custom_vjp`` function, so for forward-mode derivatives use
    [`reference_apply`][jaxnn.reference_apply] (the same forward under plain autodiff). Second
    derivatives work here, because they differentiate the hand-derived backward, which is plain JAX:
    ``jax.hessian`` (forward over reverse) and ``jax.jacrev(jax.jacrev(f))``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> layer = jaxnn.dense(3)
      >>> _, params, state = layer.init(jax.random.key(0), (-1, 2))
      >>> y, _ = jaxnn.apply(layer, params, state, jnp.ones((4, 2)))
      >>> y.shape
      (4, 3)

      ``jax.grad`` of a function of ``y`` runs ``dense``'s hand-derived backward
      ($dW = x^\top dZ$, $db = \sum_i dZ_i$, with $dZ$ all ones here):

      >>> def total(params, x):
      ...     return jaxnn.apply(layer, params, (), x)[0].sum()
      >>> grads = jax.grad(total)(params, jnp.ones((4, 2)))
      >>> grads["W"].tolist(), grads["b"].tolist()
      ([[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]], [4.0, 4.0, 4.0])
    """
    return _apply_rule(layer, train, _input_spec(x))(params, state, x, key)


def reference_apply(
    layer: Layer,
    params: Params,
    state: State,
    x: Array,
    *,
    key: PRNGKey | None = None,
    train: bool = False,
) -> tuple[Array, State]:
    """Runs the same ``forward`` as [`apply`][jaxnn.apply] under plain JAX autodiff.

    ``jax.grad`` through this path differentiates the forward's own operations and never calls
    ``layer.backward``: it is the reference the hand-derived gradients are checked against.

    Examples:
      The hand-derived gradient and the autodiff reference agree:

      >>> layer = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = layer.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (5, 2))
      >>> def cost(run, params):
      ...     return jnp.sum(run(layer, params, (), x)[0] ** 2)
      >>> by_hand = jax.grad(lambda p: cost(jaxnn.apply, p))(params)
      >>> by_autodiff = jax.grad(lambda p: cost(jaxnn.reference_apply, p))(params)
      >>> jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=1e-5)),
      ...                           by_hand, by_autodiff))
      True

      Unlike [`apply`][jaxnn.apply], it supports forward mode:

      >>> jax.jacfwd(lambda x: jaxnn.reference_apply(layer, params, (), x)[0])(x).shape
      (5, 1, 5, 2)
    """
    y, new_state, _ = layer.forward(params, state, x, key=key, train=train)
    return y, new_state


def split_key(key: PRNGKey | None, n: int) -> Sequence[PRNGKey | None]:
    """``n`` independent keys from ``key``, or ``n`` Nones when there is no key.

    Combinators use it to give each sublayer its own key in ``forward`` (``key`` is ``None``
    outside training).

    Examples:
      >>> keys = jaxnn.core.split_key(jax.random.key(0), 3)
      >>> len(keys), bool((jax.random.key_data(keys[0]) != jax.random.key_data(keys[1])).any())
      (3, True)
      >>> jaxnn.core.split_key(None, 2)
      (None, None)
    """
    if key is None:
        return (None,) * n
    return tuple(jax.random.split(key, n))


def leaf_layer(
    name: str,
    init: InitFn,
    forward: ForwardFn,
    backward: BackwardFn,
    weights: tuple[str, ...] = (),
    tensor_split: TensorSplit | None = None,
) -> Layer:
    r"""Makes a leaf [`Layer`][jaxnn.Layer] (a convenience for users' own layers); ``weights``
    names the parameters L2 regularization acts on, ``tensor_split`` how they split in tensor
    parallelism ([`TensorSplit`][jaxnn.core.TensorSplit]).

    Examples:
      A layer of one's own, $y = x^2$ with the hand-derived $dx = 2x \odot dy$:

      >>> def forward(params, state, x, *, key=None, train=False):
      ...     return x ** 2, state, x          # residuals: what backward needs
      >>> def backward(params, x, dy):
      ...     return (), 2 * x * dy            # (dparams, dx)
      >>> square = jaxnn.core.leaf_layer(
      ...     "square", jaxnn.core.stateless_init(lambda shape: shape), forward, backward)
      >>> square
      square
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> jax.grad(lambda x: jaxnn.apply(square, (), (), x)[0].sum())(x).tolist()
      [2.0, 4.0, 6.0]

      [`jaxnn.gradcheck.check_layer`][jaxnn.gradcheck.check_layer] verifies such a backward
      against autodiff and finite differences.
    """
    return Layer(name=name, init=init, forward=forward, backward=backward,
                 weights=tuple(weights), tensor_split=tensor_split)


def sublayer_labels(layer: Layer) -> tuple[str, ...]:
    """How ``layer``'s sublayers are labelled in paths: their names, or ``"0"``, ``"1"``, …

    Examples:
      >>> jaxnn.core.sublayer_labels(jaxnn.serial(jaxnn.dense(2), jaxnn.relu()))
      ('0', '1')
      >>> jaxnn.core.sublayer_labels(jaxnn.serial(enc=jaxnn.dense(2), head=jaxnn.dense(1)))
      ('enc', 'head')
      >>> jaxnn.core.sublayer_labels(jaxnn.dense(2))
      ()
    """
    return layer.names or tuple(str(i) for i in range(len(layer.sublayers)))


def children(layer: Layer, tree: Any, what: str = "params") -> list[tuple[str, Layer, Any]]:
    """The entries of a combinator's params or state, aligned with its sublayers.

    Code that walks a network's params or state (a weight mask, per-block optimizer labels)
    goes through here rather than indexing by position, so it works for named layers too.

    Args:
      layer: a combinator (``serial``, ``parallel``, ``residual``, ``remat``, a user's own).
      tree: its params or state: a tuple with one entry per sublayer (positional sublayers) or
        a dict keyed by ``layer.names`` (looked up by name, so a dict that ``jax.tree.map``
        rebuilt in sorted key order is fine). ``()`` stands for a tree with nothing in it (the
        state of a network without state) and gives ``()`` to every sublayer.
      what: how ``tree`` is called in error messages (``"params"``, ``"state"``).

    Returns:
      ``[(label, sublayer, subtree), …]`` in sublayer order; ``label`` is the name or the
      position as a string.

    Raises:
      ValueError: ``tree`` does not have one entry per sublayer; the message names the
        combinator and says what was expected.

    Examples:
      >>> import jax, jaxnn
      >>> net = jaxnn.serial(enc=jaxnn.dense(2), head=jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> [(label, sub.name, p["W"].shape) for label, sub, p in jaxnn.core.children(net, params)]
      [('enc', 'dense', (3, 2)), ('head', 'dense', (2, 1))]
    """
    subs, n = layer.sublayers, len(layer.sublayers)
    if isinstance(tree, tuple) and not tree:
        return [(label, sub, ()) for label, sub in zip(sublayer_labels(layer), subs, strict=True)]
    if layer.names:
        if not isinstance(tree, dict) or set(tree) != set(layer.names):
            got = f"keys {list(tree)}" if isinstance(tree, dict) else _describe(tree)
            raise ValueError(f"{layer.name}: {what} must be a dict with keys {list(layer.names)} "
                             f"(one per named layer), got {got}")
        return [(name, sub, tree[name]) for name, sub in zip(layer.names, subs, strict=True)]
    if not isinstance(tree, tuple) or len(tree) != n:
        raise ValueError(f"{layer.name}: {what} must be a tuple of {n} entries (one per layer), "
                         f"got {_describe(tree)}")
    return [(str(i), sub, t) for i, (sub, t) in enumerate(zip(subs, tree, strict=True))]


def map_params(fn: Callable[[str, Layer, Any], Any], model: Layer, params: Any,
               path: str | None = None) -> Any:
    """``params``' container structure with every leaf layer's entry replaced by
    ``fn(path, leaf, leaf_params)``, ``fn`` called in network order.

    The one walk over (layer, params): a weight mask, sharding specs and parameter names are
    each one ``fn``. Paths are those of [`map_leaves`][jaxnn.map_leaves] (``"serial/2:dense"``,
    ``"serial/head:dense"``); a combinator's tuple or named dict is rebuilt as it was.

    Args:
      fn: ``(path, leaf layer, its params) -> anything``.
      model: the network.
      params: its parameters (arrays, ``jax.ShapeDtypeStruct``, or anything of that structure:
        a tree of specs or gradients).
      path: the model's own path; default its name.

    Returns:
      The tree of ``fn``'s results.

    Raises:
      ValueError: a combinator's entry does not have one item per sublayer
        ([`children`][jaxnn.core.children]).

    Examples:
      The number of parameters of each layer, and every leaf's path:

      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
      >>> jaxnn.core.map_params(lambda path, leaf, p: sum(a.size for a in jax.tree.leaves(p)),
      ...                       net, params)
      (16, 0, 5)
      >>> paths = []
      >>> _ = jaxnn.core.map_params(lambda path, leaf, p: paths.append(path), net, params)
      >>> paths
      ['serial/0:dense', 'serial/1:relu', 'serial/2:dense']
    """
    path = model.name if path is None else path
    if not model.sublayers:
        return fn(path, model, params)
    entries = [(label, map_params(fn, sub, p, f"{path}/{label}:{sub.name}"))
               for label, sub, p in children(model, params)]
    if isinstance(params, dict):
        return dict(entries)
    return tuple(entry for _, entry in entries)


def map_leaves(fn: Callable[[Layer, str], Layer], layer: Layer, path: str | None = None) -> Layer:
    """Rebuilds ``layer`` with every leaf layer replaced by ``fn(leaf, path)``.

    ``path`` names where the leaf sits: ``"serial/2:dense"`` for the third layer of a serial,
    ``"serial/head:dense"`` for the layer named ``head``; combinators are kept (with their
    names).

    Examples:
      The paths of a network's leaves, and the network with every ``relu`` made a ``tanh``:

      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(),
      ...                    jaxnn.residual(jaxnn.serial(jaxnn.dense(4), jaxnn.relu())))
      >>> paths = []
      >>> _ = jaxnn.map_leaves(lambda leaf, path: paths.append(path) or leaf, net)
      >>> paths  # doctest: +NORMALIZE_WHITESPACE
      ['serial/0:dense', 'serial/1:relu', 'serial/2:residual/0:serial/0:dense',
       'serial/2:residual/0:serial/1:relu']
      >>> jaxnn.map_leaves(lambda leaf, path: jaxnn.tanh() if leaf.name == "relu" else leaf, net)
      serial(dense, tanh, residual(serial(dense, tanh)))
    """
    path = layer.name if path is None else path
    if not layer.sublayers:
        return fn(layer, path)
    if layer.rebuild is None:
        raise ValueError(f"combinator {layer.name!r} has sublayers but no rebuild function")
    rebuilt = tuple(
        map_leaves(fn, sub, f"{path}/{label}:{sub.name}")
        for label, sub in zip(sublayer_labels(layer), layer.sublayers, strict=True)
    )
    return layer.rebuild(rebuilt)


def stateless_init(
    out_shape_fn: Callable[[Shape], Shape],
) -> InitFn:
    """An ``init`` for layers with no parameters and no state.

    Args:
      out_shape_fn: maps the input shape (a tuple, batch axis first) to the output shape.

    Returns:
      ``init(key, in_shape) -> (out_shape_fn(in_shape), (), ())``.

    Examples:
      >>> init = jaxnn.core.stateless_init(lambda shape: shape[:-1] + (2 * shape[-1],))
      >>> init(jax.random.key(0), (-1, 3))
      ((-1, 6), (), ())
    """

    def init(key: PRNGKey, in_shape: Shape) -> tuple[Shape, Params, State]:
        del key
        return tuple(out_shape_fn(tuple(in_shape))), (), ()

    return init


def check_features(layer_name: str, x: Array, expected: int, axis: int = -1) -> None:
    """Raises a clear error when ``x``'s feature axis does not have ``expected`` entries.

    Called in ``forward`` at trace time, so a mismatch is a Python error naming the layer
    rather than an XLA shape error.

    Examples:
      >>> jaxnn.core.check_features("dense", jnp.zeros((4, 3)), 3)  # fine: returns None
      >>> jaxnn.core.check_features("dense", jnp.zeros((4, 5)), 3)
      Traceback (most recent call last):
      ...
      ValueError: dense: expected input with 3 features on axis -1, got shape (4, 5) (5 features)
    """
    if x.ndim == 0:
        raise ValueError(f"{layer_name}: expected an input with a feature axis, got a scalar")
    got = x.shape[axis]
    if got != expected:
        raise ValueError(
            f"{layer_name}: expected input with {expected} features on axis {axis}, got shape "
            f"{tuple(x.shape)} ({got} features)"
        )


def check_float(layer_name: str, x: Array, argument: str = "input") -> None:
    """Raises a clear error when ``x`` is not a floating-point array.

    Examples:
      >>> jaxnn.core.check_float("dense", jnp.zeros(3))  # fine: returns None
      >>> jaxnn.core.check_float("dense", jnp.arange(3, dtype=jnp.int32))
      Traceback (most recent call last):
      ...
      TypeError: dense: expected a floating-point input, got dtype int32; convert it with ...
    """
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{layer_name}: expected a floating-point {argument}, got dtype {dtype}; "
            f"convert it with x.astype(jnp.float32)"
        )


def check_positive_int(layer_name: str, argument: str, value: Any) -> int:
    """``value`` as a Python int, or a clear error unless it is an integer ``>= 1``.

    Any integer type is accepted (``3``, ``np.int64(3)``); ``True`` is refused, as are floats
    (``3.0``) and arrays.

    Examples:
      >>> import numpy as np
      >>> jaxnn.core.check_positive_int("dense", "features", np.int64(3))
      3
      >>> jaxnn.core.check_positive_int("dense", "features", 3.0)
      Traceback (most recent call last):
      ...
      ValueError: dense: features must be a positive int, got 3.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{layer_name}: {argument} must be a positive int, got {value!r}")
    return int(value)


def _shape_text(shape: Sequence[int | None]) -> str:
    inner = ", ".join("any" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_params(layer_name: str, params: Params,
                 expected: Mapping[str, Sequence[int | None]]) -> None:
    """A clear error unless ``params`` holds exactly the entries ``expected`` describes.

    Called in ``forward`` while tracing (so under ``jit`` too). ``expected`` maps each entry's
    name to its shape, ``None`` standing for a size the input decides (checked against the
    input by [`check_features`][jaxnn.core.check_features]). Every entry must be a
    floating-point array. A layer without parameters passes ``{}`` and accepts any pytree
    without arrays (``()``, ``{}``).

    Raises:
      ValueError: naming the layer and the missing, extra or mis-shaped entry, with the
        expected and the actual shape.
      TypeError: naming the layer and the entry that is not a floating-point array.

    Examples:
      >>> expected = {"W": (None, 2), "b": (2,)}   # W's first axis: the input's width
      >>> jaxnn.core.check_params("dense", {"W": jnp.zeros((3, 2)), "b": jnp.zeros(2)},
      ...                         expected)  # fine: returns None
      >>> jaxnn.core.check_params("dense", {"W": jnp.zeros((3, 2))}, expected)
      Traceback (most recent call last):
      ...
      ValueError: dense: params lack the entry 'b'; expected the entries 'W' (any, 2), 'b' (2,), ...
      >>> jaxnn.core.check_params("dense", {"W": jnp.zeros((3, 4)), "b": jnp.zeros(2)},
      ...                         expected)
      Traceback (most recent call last):
      ...
      ValueError: dense: params['W'] must have shape (any, 2), got (3, 4)
    """
    if not expected:
        leaves = jax.tree_util.tree_leaves(params)
        if leaves:
            raise ValueError(f"{layer_name}: takes no parameters, got params with "
                             f"{len(leaves)} array(s): {params!r:.200}; pass ()")
        return
    wanted = ", ".join(f"{name!r} {_shape_text(shape)}" for name, shape in expected.items())
    if not isinstance(params, Mapping):
        raise ValueError(f"{layer_name}: params must be a dict with the entries {wanted}, got "
                         f"{type(params).__name__}")
    for name in expected:
        if name not in params:
            raise ValueError(f"{layer_name}: params lack the entry {name!r}; expected the "
                             f"entries {wanted}, got {sorted(params)}")
    for name in params:
        if name not in expected:
            raise ValueError(f"{layer_name}: params have an unexpected entry {name!r}; expected "
                             f"the entries {wanted}")
    for name, shape in expected.items():
        _check_param_entry(layer_name, name, params[name], tuple(shape))


def _check_param_entry(layer_name: str, name: str, value: Any,
                       shape: tuple[int | None, ...]) -> None:
    dtype = getattr(value, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{layer_name}: params[{name!r}] must be a floating-point array, got "
                        f"{'dtype ' + str(dtype) if dtype is not None else type(value).__name__}")
    got = tuple(value.shape)
    if len(got) != len(shape) or any(
        e is not None and e != g for e, g in zip(shape, got, strict=True)
    ):
        raise ValueError(f"{layer_name}: params[{name!r}] must have shape "
                         f"{_shape_text(shape)}, got {got}")
