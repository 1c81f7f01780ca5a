"""Combinators: layers made of layers. A network is itself a :class:`jaxnn.Layer`.

``serial(f1, …, fL)`` is the composition ``fL ∘ … ∘ f1``. Its backward is the seed's chain rule
walked in reverse: ``dA[L]`` goes into ``fL.backward``, whose ``dx`` is ``dA[L-1]`` for
``f(L-1).backward``, and so on down to ``dA[0] = dx``.
"""

from __future__ import annotations

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
    if not layers:
        raise ValueError("serial: needs at least one layer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            hint = ""
            if callable(layer):
                hint = " (did you forget the parentheses, e.g. jaxnn.relu()?)"
            raise TypeError(f"serial: argument {i} is {layer!r}, not a jaxnn.Layer{hint}")
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
        _check_tuple("serial", "params", params, n)
        state = _expand_empty_state(state, n)
        _check_tuple("serial", "state", state, n)
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
