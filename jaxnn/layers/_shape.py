r"""Shape layers: [`flatten`][jaxnn.flatten] and [`reshape`][jaxnn.reshape], the batch axis kept.

Forward and backward, with $N$ the batch size:

$$
y = \operatorname{reshape}(x, (N, \text{shape})) \qquad
dx = \operatorname{reshape}(dy, \operatorname{shape}(x))
$$

A reshape moves no entry relative to the row-major order, so its derivative is the reshape
back.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from jaxnn.core import Layer, check_params


def _shape_layer(name: str, target_of) -> Layer:
    """A layer reshaping the non-batch axes to ``target_of(non_batch_shape)``."""

    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        if len(in_shape) < 1:
            raise ValueError(f"{name}: in_shape must have a batch axis, got {in_shape}")
        if any(d < 0 for d in in_shape[1:]):
            raise ValueError(f"{name}: in_shape must be concrete beyond the batch axis (only "
                             f"the batch may be -1), got {in_shape}")
        return (in_shape[0], *target_of(in_shape[1:])), (), ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {})
        if x.ndim < 1:
            raise ValueError(f"{name}: expected an input with a batch axis, got a scalar")
        y = x.reshape((x.shape[0], *target_of(tuple(x.shape[1:]))))
        return y, state, tuple(x.shape)

    def backward(params, x_shape, dy):
        return (), dy.reshape(x_shape)

    return Layer(name, init, forward, backward)


def flatten() -> Layer:
    """All axes after the batch axis flattened into one: ``(N, d1, …, dk) → (N, d1·…·dk)``.

    Row-major order (the last axis varies fastest), as ``x.reshape(N, -1)``; the backward is
    ``dy.reshape(x.shape)``.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.flatten()
        >>> layer(jnp.ones((2, 3, 4, 5))).shape
        (2, 60)
        >>> layer.init(jax.random.key(0), (-1, 7, 7, 16))[0]  # before a dense head
        (-1, 784)
        >>> layer(jnp.arange(8.0).reshape(2, 2, 2)).tolist()  # the last axis varies fastest
        [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
        >>> jax.grad(lambda x: layer(x).sum())(jnp.ones((2, 3, 4))).shape
        (2, 3, 4)
    """
    return _shape_layer("flatten", lambda shape: (math.prod(shape),))


def reshape(shape: Sequence[int]) -> Layer:
    """The axes after the batch axis reshaped to ``shape`` (row-major order).

    Args:
      shape: the new non-batch shape; one entry may be ``-1``, inferred from the size. The
        number of entries per example must not change.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer]; its backward is ``dy.reshape(x.shape)``.

    Examples:
        >>> layer = jaxnn.reshape((4, -1))
        >>> layer(jnp.ones((2, 12))).shape
        (2, 4, 3)
        >>> layer.init(jax.random.key(0), (-1, 12))[0]
        (-1, 4, 3)
        >>> jax.grad(lambda x: layer(x).sum())(jnp.ones((2, 12))).shape
        (2, 12)
    """
    name = "reshape"
    if isinstance(shape, int) or not isinstance(shape, Sequence):
        raise TypeError(f"{name}: shape must be a tuple of ints (the non-batch shape), got "
                        f"{shape!r}")
    shape = tuple(shape)
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and (d >= 1 or d == -1)
               for d in shape) or shape.count(-1) > 1:
        raise ValueError(f"{name}: shape must hold positive ints and at most one -1, got "
                         f"{shape!r}")
    shape = tuple(int(d) for d in shape)

    def target_of(in_shape):
        size = math.prod(in_shape)
        known = math.prod(d for d in shape if d != -1)
        if -1 in shape:
            if size % known:
                raise ValueError(f"{name}: cannot reshape non-batch shape {in_shape} ({size} "
                                 f"entries per example) to {shape}: {size} is not a multiple "
                                 f"of {known}")
            return tuple(size // known if d == -1 else d for d in shape)
        if known != size:
            raise ValueError(f"{name}: cannot reshape non-batch shape {in_shape} ({size} "
                             f"entries per example) to {shape} ({known} entries)")
        return shape

    return _shape_layer(name, target_of)
