"""Combinators: layers made of layers. A network is itself a :class:`jaxnn.Layer`.

``serial(f1, …, fL)`` is the composition ``fL ∘ … ∘ f1``. Its backward is the classic chain rule
walked in reverse: ``dA[L]`` goes into ``fL.backward``, whose ``dx`` is ``dA[L-1]`` for
``f(L-1).backward``, and so on down to ``dA[0] = dx``.

``parallel`` (fan-out to branches, a tuple of outputs), ``concatenate`` (a tuple back into one
array) and ``residual`` (``x + f(x)``) compose their branches' backward the same way: the input
gradient of a fan-out is the sum of the branches' ones.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn.core import Layer, split_key


def serial(*layers: Layer) -> Layer:
    """The layers applied one after another.

    Params and state are tuples with one entry per layer (``()`` may stand for the state of a
    network without stateful layers). In ``forward`` each layer gets its own key split from
    ``key`` (when one is given).

    >>> import jax, jax.numpy as jnp, jaxnn
    >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 3))
    >>> out_shape
    (-1, 1)
    """
    _check_layers("serial", layers)
    n = len(layers)

    def init(key, in_shape):
        params, states = [], []
        shape = tuple(in_shape)
        for layer, k in zip(layers, split_key(key, n), strict=True):
            shape, p, s = layer.init(k, shape)
            params.append(p)
            states.append(s)
        return shape, tuple(params), tuple(states)

    def forward(params, state, x, *, key=None, train=False):
        state = _children_state("serial", params, state, n)
        residuals, new_states = [], []
        for layer, p, s, k in zip(layers, params, state, split_key(key, n), strict=True):
            x, s, r = layer.forward(p, s, x, key=k, train=train)
            residuals.append(r)
            new_states.append(s)
        return x, tuple(new_states), tuple(residuals)

    def backward(params, residuals, dy):
        grads = [None] * n
        for i in reversed(range(n)):
            grads[i], dy = layers[i].backward(params[i], residuals[i], dy)
        return tuple(grads), dy

    return Layer("serial", init, forward, backward, tuple(layers), lambda subs: serial(*subs))


def _children_state(name: str, params, state, n: int):
    """Checks a combinator's params and state (one entry per sublayer) and returns the state,
    with ``()`` expanded to one ``()`` per sublayer."""
    _check_tuple(name, "params", params, n)
    state = _expand_empty_state(state, n)
    _check_tuple(name, "state", state, n)
    return state


def _expand_empty_state(state, n: int):
    """``()`` stands for "no state anywhere": the state of a network of stateless layers."""
    return ((),) * n if state == () else state


def _check_tuple(name: str, what: str, value, n: int) -> None:
    if not isinstance(value, tuple) or len(value) != n:
        got = f"{type(value).__name__} of length {len(value)}" if isinstance(
            value, tuple | list
        ) else type(value).__name__
        raise ValueError(
            f"{name}: {what} must be a tuple of {n} entries (one per layer), got {got}"
        )


# --- branches: parallel, concatenate, residual -------------------------------------------------
#
# A layer's input or output may be a tuple of arrays. `parallel` produces one (a branch's output
# per entry), `concatenate` consumes one; `init` then reports, or receives, a tuple of shapes.
# `apply`, `jax.grad` and the gradient check treat the tuple as a pytree.


def _check_layers(name: str, layers: tuple) -> None:
    if not layers:
        raise ValueError(f"{name}: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer):
                hint = " (did you forget the parentheses, e.g. jaxnn.relu()?)"
            raise TypeError(f"{name}: argument {i} is {layer!r}, not a jaxnn.Layer{hint}")


def _add_gradients(a, b):
    """``a + b`` for input gradients that may be tuples (tuple inputs) or ``None`` (ids)."""
    if a is None:
        return b
    if b is None:
        return a
    return jax.tree.map(jnp.add, a, b)


def parallel(*layers: Layer) -> Layer:
    """Fan-out: the same input to every branch; the output is the tuple of their outputs.

    ``parallel(f1, …, fk)(x) = (f1(x), …, fk(x))``. Backward: each branch gets its own entry of
    ``dy`` and, since ``x`` feeds every branch, ``dx = Σ_i dx_i`` (the multivariate chain rule).
    Params and state are tuples with one entry per branch; each branch gets its own key. Follow
    it with :func:`concatenate` (or any layer taking a tuple) to merge the branches.

    >>> import jax, jax.numpy as jnp, jaxnn
    >>> net = jaxnn.serial(jaxnn.parallel(jaxnn.dense(2), jaxnn.dense(3)), jaxnn.concatenate())
    >>> out_shape, params, state = net.init(jax.random.key(0), (-1, 4))
    >>> out_shape
    (-1, 5)
    """
    _check_layers("parallel", layers)
    n = len(layers)

    def init(key, in_shape):
        shapes, params, states = [], [], []
        for layer, k in zip(layers, split_key(key, n), strict=True):
            shape, p, s = layer.init(k, in_shape)
            shapes.append(tuple(shape))
            params.append(p)
            states.append(s)
        return tuple(shapes), tuple(params), tuple(states)

    def forward(params, state, x, *, key=None, train=False):
        state = _children_state("parallel", params, state, n)
        ys, new_states, residuals = [], [], []
        for layer, p, s, k in zip(layers, params, state, split_key(key, n), strict=True):
            y, s, r = layer.forward(p, s, x, key=k, train=train)
            ys.append(y)
            new_states.append(s)
            residuals.append(r)
        return tuple(ys), tuple(new_states), tuple(residuals)

    def backward(params, residuals, dy):
        _check_tuple("parallel", "dy", dy, n)
        grads, dx = [], None
        for layer, p, r, d in zip(layers, params, residuals, dy, strict=True):
            g, dx_branch = layer.backward(p, r, d)
            grads.append(g)
            dx = _add_gradients(dx, dx_branch)
        return tuple(grads), dx

    return Layer("parallel", init, forward, backward, tuple(layers),
                 lambda subs: parallel(*subs))


def concatenate(axis: int = -1) -> Layer:
    """Joins a tuple of arrays (the output of :func:`parallel`, say) along ``axis``.

    ``y = concat(x_1, …, x_k)`` along ``axis``; backward splits ``dy`` back into the pieces:
    ``dx_i = dy[…, o_i : o_i + n_i, …]`` with ``n_i`` the size of ``x_i`` on ``axis`` and ``o_i``
    the sum of the sizes before it. Its ``init`` takes the tuple of the inputs' shapes. The
    arrays must have the same rank, dtype and sizes on every other axis (nothing is broadcast or
    promoted). No params or state.
    """
    name = "concatenate"
    if not isinstance(axis, int) or isinstance(axis, bool):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")

    def normalized(ndim: int) -> int:
        if not -ndim <= axis < ndim:
            raise ValueError(f"{name}: axis {axis} is out of range for inputs of rank {ndim}")
        return axis % ndim

    def check_shapes(shapes: list[tuple]) -> int:
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(f"{name}: the inputs must have the same rank, got shapes {shapes}")
        ax = normalized(ranks.pop())
        others = {s[:ax] + s[ax + 1:] for s in shapes}
        if len(others) != 1:
            raise ValueError(f"{name}: the inputs must agree on every axis but {axis}, got "
                             f"shapes {shapes}")
        return ax

    def as_tuple(what: str, value) -> tuple:
        if not isinstance(value, tuple | list) or not value:
            raise TypeError(f"{name}: expects a non-empty tuple of {what} (e.g. from "
                            f"jaxnn.parallel), got {value!r}")
        return tuple(value)

    def init(key, in_shape):
        del key
        shapes = [tuple(s) if isinstance(s, tuple | list) else s
                  for s in as_tuple("input shapes", in_shape)]
        if not all(isinstance(s, tuple) for s in shapes):
            raise TypeError(f"{name}: init expects a tuple of input shapes (e.g. from "
                            f"jaxnn.parallel), got {in_shape!r}")
        ax = check_shapes(shapes)
        sizes = [s[ax] for s in shapes]
        total = -1 if any(d < 0 for d in sizes) else sum(sizes)
        return shapes[0][:ax] + (total,) + shapes[0][ax + 1:], (), ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        xs = as_tuple("arrays", x)
        dtypes = {jnp.asarray(a).dtype for a in xs}
        if len(dtypes) != 1:
            raise TypeError(f"{name}: the inputs must share one dtype, got "
                            f"{[str(jnp.asarray(a).dtype) for a in xs]}")
        ax = check_shapes([tuple(jnp.shape(a)) for a in xs])
        # the sizes are static Python ints: they say where backward splits dy
        sizes = tuple(int(jnp.shape(a)[ax]) for a in xs)
        return jnp.concatenate(xs, axis=ax), state, sizes

    def backward(params, sizes, dy):
        ax = normalized(dy.ndim)
        offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
        return (), tuple(jnp.split(dy, offsets, axis=ax))

    return Layer(name, init, forward, backward)


def residual(layer: Layer) -> Layer:
    """The skip connection ``y = x + f(x)`` around ``layer`` (``f``).

    Backward: ``dx = dy + dx_f``, where ``(dparams, dx_f) = f.backward(…, dy)``; the identity
    path passes ``dy`` through unchanged. ``f`` must map its input shape to itself (checked at
    ``init`` and, at trace time, in ``forward``). Params and state are 1-tuples, aligned with
    ``sublayers == (f,)``.

    >>> import jax, jaxnn
    >>> block = jaxnn.residual(jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(4)))
    >>> block.init(jax.random.key(0), (-1, 4))[0]
    (-1, 4)
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
        return in_shape, (p,), (s,)

    def forward(params, state, x, *, key=None, train=False):
        state = _children_state("residual", params, state, 1)
        fx, s, r = layer.forward(params[0], state[0], x, key=key, train=train)
        if jnp.shape(fx) != jnp.shape(x):
            raise ValueError(f"residual: x + f(x) needs f to keep the shape, but {layer!r} maps "
                             f"{tuple(jnp.shape(x))} to {tuple(jnp.shape(fx))}")
        return x + fx, (s,), r

    def backward(params, r, dy):
        grads, dx_f = layer.backward(params[0], r, dy)
        return (grads,), _add_gradients(dy, dx_f)

    return Layer("residual", init, forward, backward, (layer,), lambda subs: residual(*subs))
