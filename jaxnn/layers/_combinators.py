r"""Combinators: layers made of layers. A network is itself a [`jaxnn.Layer`][jaxnn.Layer].

``serial(f1, …, fL)`` is the composition ``fL ∘ … ∘ f1``:

$$ A^{[0]} = x, \qquad A^{[l]} = f_l\left(A^{[l-1]}\right), \qquad y = A^{[L]} $$

Its backward is the classic chain rule walked in reverse: ``dA[L]`` goes into ``fL.backward``,
whose ``dx`` is ``dA[L-1]`` for ``f(L-1).backward``, and so on down to ``dA[0] = dx``. With
$J_{f_l}$ the Jacobian of layer $l$ with respect to its input and $\theta_l$ its parameters,
each ``backward`` computes

$$
dA^{[l-1]} = J_{f_l}^\top \, dA^{[l]}, \qquad
d\theta_l = \left(\frac{\partial A^{[l]}}{\partial \theta_l}\right)^\top dA^{[l]}
$$

for $l = L, \ldots, 1$, starting from $dA^{[L]} = dy$ and ending with $dx = dA^{[0]}$.

``parallel`` (fan-out to branches, a tuple of outputs), ``concatenate`` (a tuple back into one
array) and ``residual`` (``x + f(x)``) compose their branches' backward the same way: the input
gradient of a fan-out is the sum of the branches' ones,

$$ dx = \sum_{i} J_{f_i}^\top \, dy_i $$
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn.core import Layer, children, split_key

_NAME_RULE = "a non-empty str without '/', ':' or whitespace that is not all digits"


def serial(*layers: Layer | tuple[str, Layer], **named_layers: Layer) -> Layer:
    r"""The layers applied one after another.

    ``serial(f1, …, fL)`` takes positional layers: params and state are tuples with one entry
    per layer. ``serial(("enc", f1), ("head", f2))`` or ``serial(enc=f1, head=f2)`` names them:
    params and state are dicts keyed by the names, in order, and paths read
    ``"serial/head:dense"``. A name is a non-empty str without ``/``, ``:`` or whitespace that is
    not all digits (those would make paths ambiguous); duplicates and a mix of named and
    positional layers are errors. A network whose layers have no state has state ``()``. In
    ``forward`` each layer gets its own key split from ``key`` (when one is given).

    Forward and backward (the chain rule, last layer first):

    $$ y = f_L(\cdots f_2(f_1(x))) $$

    $$ dA^{[L]} = dy, \qquad dA^{[l-1]} = J_{f_l}^\top \, dA^{[l]}, \qquad dx = dA^{[0]} $$

    Args:
      *layers: the layers in order, or ``(name, layer)`` pairs.
      **named_layers: the layers by name, in order (instead of ``*layers``).

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] whose ``sublayers`` are the given layers.

    Raises:
      TypeError: an argument is not a layer (``jaxnn.relu`` without parentheses, say), or
        named and positional layers are mixed.
      ValueError: no layers, an invalid name, or a name given twice.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
      >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 3))
      >>> out_shape, state
      ((-1, 1), ())
      >>> [jax.tree.map(jnp.shape, p) for p in params]
      [{'W': (3, 4), 'b': (4,)}, (), {'W': (4, 1), 'b': (1,)}]
      >>> y, _ = jaxnn.apply(net, params, state, jnp.ones((2, 3)))
      >>> y.shape
      (2, 1)

      Named layers give params keyed by name:

      >>> named = jaxnn.serial(enc=jaxnn.dense(4), head=jaxnn.dense(1))
      >>> list(named.init(jax.random.key(0), (-1, 3))[1])
      ['enc', 'head']
    """
    layers, names = _sublayers("serial", layers, named_layers)
    n = len(layers)

    def init(key, in_shape):
        params, states = [], []
        shape = tuple(in_shape)
        for layer, k in zip(layers, split_key(key, n), strict=True):
            shape, p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
        return shape, _pack(names, params), _pack_state(names, states)

    def forward(params, state, x, *, key=None, train=False):
        entries = _entries(net, params, state)
        residuals, new_states = [], []
        for (layer, p, s), k in zip(entries, split_key(key, n), strict=True):
            x, s, r = layer.forward(p, s, x, key=k, train=train)
            residuals.append(r)
            new_states.append(s)
        return x, _pack_state(names, new_states), tuple(residuals)

    def backward(params, residuals, dy):
        params = [p for _, _, p in children(net, params)]
        grads = [None] * n
        for i in reversed(range(n)):
            grads[i], dy = layers[i].backward(params[i], residuals[i], dy)
        return _pack(names, grads), dy

    net = Layer("serial", init, forward, backward, layers,
                lambda subs: serial(*_relabel(names, subs)), names=names)
    return net


def _sublayers(name: str, layers: tuple, named: dict) -> tuple[tuple[Layer, ...], tuple[str, ...]]:
    """A combinator's arguments as ``(sublayers, names)``; ``names`` is ``()`` when positional.

    Accepts positional layers, ``(name, layer)`` pairs, or keyword arguments, not a mix.
    """
    pairs = [isinstance(a, tuple) and not isinstance(a, Layer) and len(a) == 2
             and isinstance(a[1], Layer) for a in layers]
    if named and layers:
        raise TypeError(f"{name}: give the layers either all by position or all by name "
                        f"(keywords or (name, layer) pairs), not both")
    if any(pairs) and not all(pairs):
        raise TypeError(f"{name}: argument {pairs.index(False)} is not a (name, layer) pair, "
                        f"but others are: name every layer or none")
    if not named and not any(pairs):
        _check_layers(name, layers)
        return tuple(layers), ()
    entries = list(named.items()) if named else [tuple(pair) for pair in layers]
    for label, _ in entries:
        if not _valid_name(label):
            raise ValueError(f"{name}: layer name {label!r} is invalid: a name is {_NAME_RULE}")
    names = tuple(label for label, _ in entries)
    duplicated = sorted({label for label in names if names.count(label) > 1})
    if duplicated:
        raise ValueError(f"{name}: duplicate layer names {duplicated}: every name must be unique")
    sublayers = tuple(layer for _, layer in entries)
    _check_layers(name, sublayers, names)
    return sublayers, names


def _valid_name(label) -> bool:
    return (isinstance(label, str) and bool(label) and not label.isdigit()
            and not any(c in label for c in "/:") and not any(c.isspace() for c in label))


def _relabel(names: tuple[str, ...], subs) -> tuple:
    """Arguments that rebuild a combinator over ``subs`` with the same names."""
    return tuple(zip(names, subs, strict=True)) if names else tuple(subs)


def _pack(names: tuple[str, ...], values: list):
    """One entry per sublayer: a dict keyed by ``names`` in order, or a tuple."""
    return dict(zip(names, values, strict=True)) if names else tuple(values)


def _is_empty(state) -> bool:
    return isinstance(state, tuple) and not state


def _pack_state(names: tuple[str, ...], states: list):
    """A combinator's state: ``()`` when no sublayer has state (the one meaning of "no state"),
    else one entry per sublayer."""
    return () if all(_is_empty(s) for s in states) else _pack(names, states)


def _entries(net: Layer, params, state) -> list[tuple[Layer, object, object]]:
    """``(sublayer, params, state)`` per sublayer, checking ``params`` and ``state`` against
    the combinator; state ``()`` gives ``()`` to every sublayer (a network without state)."""
    if _is_empty(params):  # unlike state, a combinator's params are never () as a whole
        want = (f"a dict with keys {list(net.names)}" if net.names
                else f"a tuple of {len(net.sublayers)} entries")
        raise ValueError(f"{net.name}: params must be {want} (one per layer), got ()")
    ps = children(net, params, "params")
    ss = children(net, state, "state")
    return [(sub, p, s) for (_, sub, p), (_, _, s) in zip(ps, ss, strict=True)]


# --- branches: parallel, concatenate, residual -------------------------------------------------
#
# A layer's input or output may be a tuple of arrays. `parallel` produces one (a branch's output
# per entry), `concatenate` consumes one; `init` then reports, or receives, a tuple of shapes.
# `apply`, `jax.grad` and the gradient check treat the tuple as a pytree.


def _check_layers(name: str, layers: tuple, names: tuple[str, ...] = ()) -> None:
    if not layers:
        raise ValueError(f"{name}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer):
                hint = " (did you forget the parentheses, e.g. jaxnn.relu()?)"
            which = f"layer {names[i]!r}" if names else f"argument {i}"
            raise TypeError(f"{name}: {which} is {layer!r}, not a jaxnn.Layer{hint}")


def _add_gradients(a, b):
    """``a + b`` for input gradients that may be tuples (tuple inputs) or ``None`` (ids)."""
    if a is None:
        return b
    if b is None:
        return a
    return jax.tree.map(jnp.add, a, b)


def parallel(*layers: Layer | tuple[str, Layer], **named_layers: Layer) -> Layer:
    r"""Fan-out: the same input to every branch; the output is the tuple of their outputs.

    ``parallel(f1, …, fk)(x) = (f1(x), …, fk(x))``. Backward: each branch gets its own entry of
    ``dy`` and, since ``x`` feeds every branch, ``dx = Σ_i dx_i`` (the multivariate chain rule):

    $$ y = \left(f_1(x), \ldots, f_k(x)\right), \qquad dx = \sum_{i=1}^{k} J_{f_i}^\top \, dy_i $$

    Params and state are tuples with one entry per branch, or dicts keyed by the branches'
    names when they are named as in [`serial`][jaxnn.serial] (``parallel(a=f1, b=f2)``); the
    output and ``dy`` stay tuples in branch order. State is ``()`` when no branch has state;
    each branch gets its own key. Follow it with [`concatenate`][jaxnn.concatenate] (or any
    layer taking a tuple) to merge the branches.

    Args:
      *layers: the branches in order, or ``(name, layer)`` pairs.
      **named_layers: the branches by name, in order (instead of ``*layers``).

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] whose ``init`` reports a tuple of output shapes.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> branches = jaxnn.parallel(jaxnn.dense(2), jaxnn.dense(3))
      >>> branches.init(jax.random.key(0), (-1, 4))[0]
      ((-1, 2), (-1, 3))
      >>> net = jaxnn.serial(branches, jaxnn.concatenate())
      >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 4))
      >>> out_shape
      (-1, 5)
      >>> jaxnn.apply(net, params, state, jnp.ones((6, 4)))[0].shape
      (6, 5)
    """
    layers, names = _sublayers("parallel", layers, named_layers)
    n = len(layers)

    def init(key, in_shape):
        shapes, params, states = [], [], []
        for layer, k in zip(layers, split_key(key, n), strict=True):
            shape, p, s = layer.init(k, in_shape)
            shapes.append(tuple(shape))
            params.append(p)
            states.append(s)
        return tuple(shapes), _pack(names, params), _pack_state(names, states)

    def forward(params, state, x, *, key=None, train=False):
        ys, new_states, residuals = [], [], []
        for (layer, p, s), k in zip(_entries(net, params, state), split_key(key, n), strict=True):
            y, s, r = layer.forward(p, s, x, key=k, train=train)
            ys.append(y)
            new_states.append(s)
            residuals.append(r)
        return tuple(ys), _pack_state(names, new_states), tuple(residuals)

    def backward(params, residuals, dy):
        if not isinstance(dy, tuple) or len(dy) != n:
            got = f"{len(dy)} entries" if isinstance(dy, tuple | list) else type(dy).__name__
            raise ValueError(f"parallel: dy must be a tuple of {n} entries (one per branch), "
                             f"got {got}")
        grads, dx = [], None
        for (_, layer, p), r, d in zip(children(net, params), residuals, dy, strict=True):
            g, dx_branch = layer.backward(p, r, d)
            grads.append(g)
            dx = _add_gradients(dx, dx_branch)
        return _pack(names, grads), dx

    net = Layer("parallel", init, forward, backward, layers,
                lambda subs: parallel(*_relabel(names, subs)), names=names)
    return net


def _as_tuple(what: str, value) -> tuple:
    if not isinstance(value, tuple | list) or not value:
        raise TypeError(f"concatenate: expects a non-empty tuple of {what} (e.g. from "
                        f"jaxnn.parallel), got {value!r}")
    return tuple(value)


def _normalized_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"concatenate: axis {axis} is out of range for inputs of rank {ndim}")
    return axis % ndim


def _concatenation_axis(axis: int, shapes: list[tuple]) -> int:
    """The non-negative axis to join ``shapes`` along, after checking that they can be."""
    ranks = {len(s) for s in shapes}
    if len(ranks) != 1:
        raise ValueError(f"concatenate: the inputs must have the same rank, got shapes {shapes}")
    ax = _normalized_axis(axis, ranks.pop())
    if len({s[:ax] + s[ax + 1:] for s in shapes}) != 1:
        raise ValueError(f"concatenate: the inputs must agree on every axis but {axis}, got "
                         f"shapes {shapes}")
    return ax


def concatenate(axis: int = -1) -> Layer:
    r"""Joins a tuple of arrays (the output of [`parallel`][jaxnn.parallel], say) along ``axis``.

    ``y = concat(x_1, …, x_k)`` along ``axis``; backward splits ``dy`` back into the pieces:
    ``dx_i = dy[…, o_i : o_i + n_i, …]`` with ``n_i`` the size of ``x_i`` on ``axis`` and ``o_i``
    the sum of the sizes before it,

    $$ y = \left[\, x_1 \;\; x_2 \;\; \cdots \;\; x_k \,\right], \qquad o_i = \sum_{j < i} n_j $$

    Its ``init`` takes the tuple of the inputs' shapes. The arrays must have the same rank,
    dtype and sizes on every other axis (nothing is broadcast or promoted). No params or state.

    Args:
      axis: the axis to join along (negative counts from the end).

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] taking a tuple of arrays.

    Examples:
      >>> layer = jaxnn.concatenate()
      >>> layer.init(jax.random.key(0), ((-1, 2), (-1, 3)))[0]
      (-1, 5)
      >>> a, b = jnp.zeros((4, 2)), jnp.ones((4, 3))
      >>> layer((a, b)).shape
      (4, 5)

      The backward hands each input its slice of ``dy``:

      >>> weights = jnp.arange(5.0).reshape(1, 5)     # dy: 0, 1, 2, 3, 4 in every row
      >>> da, db = jax.grad(lambda xs: (layer(xs) * weights).sum())((a, b))
      >>> da[0].tolist(), db[0].tolist()
      ([0.0, 1.0], [2.0, 3.0, 4.0])
    """
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"concatenate: axis must be an int, got {axis!r}")

    def init(key, in_shape):
        del key
        shapes = [tuple(s) if isinstance(s, tuple | list) else s
                  for s in _as_tuple("input shapes", in_shape)]
        if not all(isinstance(s, tuple) for s in shapes):
            raise TypeError(f"concatenate: init expects a tuple of input shapes (e.g. from "
                            f"jaxnn.parallel), got {in_shape!r}")
        ax = _concatenation_axis(axis, shapes)
        sizes = [s[ax] for s in shapes]
        total = -1 if any(d < 0 for d in sizes) else sum(sizes)
        return (*shapes[0][:ax], total, *shapes[0][ax + 1:]), (), ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        xs = _as_tuple("arrays", x)
        dtypes = [str(jnp.asarray(a).dtype) for a in xs]
        if len(set(dtypes)) != 1:
            raise TypeError(f"concatenate: the inputs must share one dtype, got {dtypes}")
        ax = _concatenation_axis(axis, [tuple(jnp.shape(a)) for a in xs])
        # the sizes are static Python ints: they say where backward splits dy
        sizes = tuple(int(jnp.shape(a)[ax]) for a in xs)
        return jnp.concatenate(xs, axis=ax), state, sizes

    def backward(params, sizes, dy):
        offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return (), tuple(jnp.split(dy, offsets, axis=_normalized_axis(axis, dy.ndim)))

    return Layer("concatenate", init, forward, backward)


def residual(layer: Layer) -> Layer:
    r"""The skip connection ``y = x + f(x)`` around ``layer`` (``f``).

    Backward: ``dx = dy + dx_f``, where ``(dparams, dx_f) = f.backward(…, dy)``; the identity
    path passes ``dy`` through unchanged:

    $$
    y = x + f(x), \qquad dx = dy + J_f^\top dy, \qquad
    d\theta_f = \left(\frac{\partial f}{\partial \theta_f}\right)^\top dy
    $$

    ``f`` must map its input shape to itself (checked at ``init`` and, at trace time, in
    ``forward``). Params are a 1-tuple aligned with ``sublayers == (f,)``; so is state, or
    ``()`` when ``f`` has none.

    Args:
      layer: the branch ``f``; it must keep the shape of its input.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with ``sublayers == (layer,)``.

    Examples:
      >>> import jax, jaxnn
      >>> block = jaxnn.residual(jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4)))
      >>> out_shape, params, state = block.init(jax.random.key(0), (-1, 4))
      >>> out_shape, len(params)
      ((-1, 4), 1)

      Around ``f = 0`` (a dense layer with zero weights) the block is the identity, and
      $dx = dy$:

      >>> zero = {"W": jnp.zeros((4, 4)), "b": jnp.zeros(4)}
      >>> identity = jaxnn.residual(jaxnn.dense(4))
      >>> x = jnp.arange(8.0).reshape(2, 4)
      >>> bool((jaxnn.apply(identity, (zero,), (), x)[0] == x).all())
      True
      >>> jax.grad(lambda x: jaxnn.apply(identity, (zero,), (), x)[0].sum())(x).tolist()
      [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    """
    _check_layers("residual", (layer,))

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        if not all(isinstance(d, int) for d in in_shape):
            raise TypeError(f"residual: expects a single array input, got in_shape {in_shape}")
        out_shape, p, s = layer.init(key, in_shape)
        if tuple(out_shape) != in_shape:
            raise ValueError(
                f"residual: x + f(x) needs f to keep the shape, but {layer!r} maps {in_shape} "
                f"to {tuple(out_shape)}"
            )
        return in_shape, (p,), _pack_state((), [s])

    def forward(params, state, x, *, key=None, train=False):
        [(_, p, s)] = _entries(net, params, state)
        fx, s, r = layer.forward(p, s, x, key=key, train=train)
        if jnp.shape(fx) != jnp.shape(x):
            raise ValueError(f"residual: x + f(x) needs f to keep the shape, but {layer!r} maps "
                             f"{tuple(jnp.shape(x))} to {tuple(jnp.shape(fx))}")
        return x + fx, _pack_state((), [s]), r

    def backward(params, r, dy):
        [(_, _, p)] = children(net, params)
        grads, dx_f = layer.backward(p, r, dy)
        return (grads,), _add_gradients(dy, dx_f)

    net = Layer("residual", init, forward, backward, (layer,), lambda subs: residual(*subs))
    return net
