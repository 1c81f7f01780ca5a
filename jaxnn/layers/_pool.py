r"""Pooling layers (1-D, 2-D, 3-D windows, channels last), forward beside the hand-derived backward.

Notation as in [`jaxnn.conv`][jaxnn.conv], in 1-D and per channel: window $o$ reads the padded
positions $o s + j$ for the taps $j = 0, \dots, k - 1$ (stride $s$); $\tilde{x}$ is the input
padded by $\ell$ entries in front; $dy$ is the gradient of the output.

* **max**: the largest entry of each window (padding is $-\infty$, never chosen):

    $$
    y_o = \max_{j} \tilde{x}_{o s + j} \qquad
    j^*_o = \operatorname{argmax}_{j} \tilde{x}_{o s + j}
    $$

    Backward: each window's gradient goes to the one entry that won it, and an entry that wins
    several overlapping windows adds their gradients:

    $$
    dx_i = \sum_{o \,:\, o s + j^*_o - \ell = i} dy_o
    $$

    **Ties**: the first maximum in row-major order of the window (smallest $j$; in 2-D, the
    top-most row, then the left-most column) gets all of the gradient, the other tied entries
    none.

* **average**: the window's sum divided by $c_o$, the number of its real (unpadded) entries,
  or by all $k$ taps with ``count_include_pad=True``:

    $$
    y_o = \frac{1}{c_o} \sum_{j} \tilde{x}_{o s + j}
    $$

    Backward: every entry of a window gets an equal share $dy_o / c_o$ of its gradient (padded
    positions take their share away only when they are counted), summed over the windows the
    entry belongs to:

    $$
    dx_i = \sum_{(o,\,j) \,:\, o s + j - \ell = i} \frac{dy_o}{c_o}
    $$

* **global average**: the mean over the $P$ spatial positions $p$; the gradient is spread
  evenly back over them:

    $$
    y_{n,c} = \frac{1}{P} \sum_{p} x_{n,p,c} \qquad dx_{n,p,c} = \frac{dy_{n,c}}{P}
    $$

Both window backward passes are one scatter, written with public ``lax`` operations: the
per-tap gradient ($dy$ masked by the arg-max for max, $dy / c$ for average) is placed back at
positions $o s + j$ by ``lax.pad`` with $s - 1$ interior zeros, the taps are summed, and the
padding is cut off.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from jaxnn.core import Array, Layer, check_float, check_params, stateless_init
from jaxnn.layers import _spatial


def _window_arguments(name: str, window, strides, padding):
    rank = _spatial.window_rank(name, "window", window)
    window = _spatial.positive_tuple(name, "window", tuple(window), rank)
    strides = window if strides is None else _spatial.positive_tuple(name, "strides", strides,
                                                                     rank)
    padding = _spatial.check_padding(name, padding, rank)
    if not isinstance(padding, str) and any(
        lo >= k or hi >= k for (lo, hi), k in zip(padding, window, strict=True)
    ):
        # a window made of padding only would have no entry to take its maximum or mean from
        raise ValueError(f"{name}: each explicit padding must be smaller than the window "
                         f"{window}, got {padding}")
    return rank, window, strides, padding


def _pool_init(name, rank, window, strides, padding):
    def out_shape(in_shape):
        in_shape = _spatial.check_in_shape(name, in_shape, rank)
        spatial = in_shape[1:-1]
        pads = _spatial.explicit_padding(padding, spatial, window, strides)
        out = _spatial.output_spatial(name, spatial, window, strides, pads)
        return (in_shape[0], *out, in_shape[-1])

    return stateless_init(out_shape)


def _checked_geometry(name, x, rank, window, strides, padding):
    """A pooling forward's checks and geometry: ``(spatial, pads, out)`` of input ``x``."""
    check_float(name, x)
    _spatial.check_spatial_input(name, x.shape, rank)
    spatial = x.shape[1:-1]
    pads = _spatial.explicit_padding(padding, spatial, window, strides)
    out = _spatial.output_spatial(name, spatial, window, strides, pads)
    return spatial, pads, out


def _pads_on_all_axes(pads: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Spatial ``(lo, hi)`` pairs extended with ``(0, 0)`` for the batch and channel axes."""
    return ((0, 0), *pads, (0, 0))


def _taps(window: Sequence[int]):
    """The window offsets ``j`` in row-major order (the order that breaks max ties)."""
    return list(itertools.product(*(range(k) for k in window)))


def _window_slices(x_pad: Array, window, strides, out) -> list[Array]:
    """For each tap ``j``, the entries ``x̃[o·s + j]`` of every window ``o``: shape of ``y``."""
    n, c = x_pad.shape[0], x_pad.shape[-1]
    slices = []
    for tap in _taps(window):
        limit = tuple(j + (o - 1) * s + 1 for j, o, s in zip(tap, out, strides, strict=True))
        slices.append(lax.slice(x_pad, (0, *tap, 0), (n, *limit, c), (1, *strides, 1)))
    return slices


def _scatter_to_windows(per_tap: Sequence[Array], window, strides, spatial, pads) -> Array:
    """``dx[i] = Σ_{o, j: o·s + j − lo = i} g_j[o]``, the adjoint of ``_window_slices``."""
    padded = [n + lo + hi for n, (lo, hi) in zip(spatial, pads, strict=True)]
    total = None
    for tap, g in zip(_taps(window), per_tap, strict=True):
        out = g.shape[1:-1]
        config = [(0, 0, 0)]
        for j, o, s, p in zip(tap, out, strides, padded, strict=True):
            config.append((j, p - j - ((o - 1) * s + 1), s - 1))
        config.append((0, 0, 0))
        placed = lax.pad(g, jnp.zeros((), g.dtype), config)
        total = placed if total is None else total + placed
    assert total is not None  # a window has at least one tap
    n, c = total.shape[0], total.shape[-1]
    start = tuple(lo for lo, _ in pads)
    limit = tuple(lo + m for (lo, _), m in zip(pads, spatial, strict=True))
    return lax.slice(total, (0, *start, 0), (n, *limit, c))


def max_pool(
    window: Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: _spatial.Padding = "VALID",
) -> Layer:
    r"""Max pooling: the largest entry of each window, per channel.

    In 1-D, with $\tilde{x}$ the input padded by $\ell$ entries of $-\infty$ in front, stride $s$
    and $j^*_o$ the first arg-max tap of window $o$:

    $$
    y_o = \max_{j} \tilde{x}_{o s + j} \qquad dx_i = \sum_{o \,:\, o s + j^*_o - \ell = i} dy_o
    $$

    Args:
      window: the window, one entry per spatial axis: ``(2,)`` for ``(N, W, C)`` inputs,
        ``(2, 2)`` for ``(N, H, W, C)`` inputs.
      strides: the step between windows (default: the window, i.e. non-overlapping windows,
        as in PyTorch; Flax's default is 1, see docs/guides/porting.md).
      padding: ``"VALID"`` (default), ``"SAME"`` or explicit ``(low, high)`` pairs, each smaller
        than the window; padded positions are ``−∞`` and never win.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer]. Its backward routes each window's gradient to
        the window's arg-max; on a tie the first maximum in row-major window order gets it all.

    Examples:
        Windows of 2 entries, stride 2, on one example of 4 positions and one channel:

        >>> layer = jaxnn.max_pool((2,))
        >>> x = jnp.array([1.0, 3.0, 2.0, 0.0]).reshape(1, 4, 1)
        >>> layer(x).ravel().tolist()
        [3.0, 2.0]

        The gradient goes to each window's winner only (here $dy$ is all ones), and on a tie
        to the first maximum:

        >>> jax.grad(lambda x: layer(x).sum())(x).ravel().tolist()
        [0.0, 1.0, 1.0, 0.0]
        >>> jax.grad(lambda x: layer(x).sum())(jnp.ones((1, 2, 1))).ravel().tolist()
        [1.0, 0.0]

        In 2-D, ``(N, H, W, C)`` inputs; each channel is pooled on its own:

        >>> out_shape, params, state = jaxnn.max_pool((2, 2)).init(jax.random.key(0),
        ...                                                        (-1, 4, 4, 3))
        >>> out_shape, params, state
        ((-1, 2, 2, 3), (), ())
    """
    name = "max_pool"
    rank, window, strides, padding = _window_arguments(name, window, strides, padding)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {})
        spatial, pads, out = _checked_geometry(name, x, rank, window, strides, padding)
        low = jnp.array(-jnp.inf, x.dtype)
        # the init value as a Python scalar: reduce_window has a reverse-mode rule only for a
        # constant init, and an array here breaks jax.grad of the reference path under jit
        y = lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                              _pads_on_all_axes(pads))
        x_pad = lax.pad(x, low, [(lo, hi, 0) for lo, hi in _pads_on_all_axes(pads)])
        # jnp.argmax returns the first maximum: the documented tie-breaking rule
        winner = jnp.argmax(jnp.stack(_window_slices(x_pad, window, strides, out)), axis=0)
        return y, state, (winner.astype(jnp.int32), spatial)

    def backward(params, residuals, dy):
        winner, spatial = residuals
        pads = _spatial.explicit_padding(padding, spatial, window, strides)
        zero = jnp.zeros((), dy.dtype)
        per_tap = [jnp.where(winner == t, dy, zero) for t in range(len(_taps(window)))]
        return (), _scatter_to_windows(per_tap, window, strides, spatial, pads)

    return Layer(name, _pool_init(name, rank, window, strides, padding), forward, backward)


def avg_pool(
    window: Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: _spatial.Padding = "VALID",
    count_include_pad: bool = False,
) -> Layer:
    r"""Average pooling: the mean of each window, per channel.

    In 1-D, with $\tilde{x}$ the input padded by $\ell$ zeros in front, stride $s$ and $c_o$ the
    number of entries window $o$ divides by:

    $$
    y_o = \frac{1}{c_o} \sum_{j} \tilde{x}_{o s + j} \qquad
    dx_i = \sum_{(o,\,j) \,:\, o s + j - \ell = i} \frac{dy_o}{c_o}
    $$

    Args:
      window: the window, one entry per spatial axis.
      strides: the step between windows (default: the window, as in PyTorch; Flax's default
        is 1, see docs/guides/porting.md).
      padding: ``"VALID"`` (default), ``"SAME"`` or explicit ``(low, high)`` pairs, each smaller
        than the window; padded positions hold zeros.
      count_include_pad: if false (default) a window's sum is divided by the number of its real
        entries, so padding never dilutes the mean; if true, by the full window size (Flax's
        ``avg_pool`` and PyTorch's ``AvgPool2d`` default to including the padding, see
        docs/guides/porting.md).

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer]. Its backward gives each entry of a window
        $dy / c$ of that window, $c$ its count (summed over the windows the entry belongs to).

    Examples:
        >>> layer = jaxnn.avg_pool((2,))
        >>> x = jnp.array([1.0, 3.0, 2.0, 0.0]).reshape(1, 4, 1)
        >>> layer(x).ravel().tolist()
        [2.0, 1.0]

        Every entry gets $dy / 2$ of its window's gradient ($dy$ all ones):

        >>> jax.grad(lambda x: layer(x).sum())(x).ravel().tolist()
        [0.5, 0.5, 0.5, 0.5]

        With padding, the edge windows hold fewer real entries. By default their mean is over
        those only; ``count_include_pad=True`` divides by the full window of 3:

        >>> same = jaxnn.avg_pool((3,), strides=1, padding="SAME")
        >>> [round(v, 4) for v in same(x).ravel().tolist()]
        [2.0, 2.0, 1.6667, 1.0]
        >>> padded = jaxnn.avg_pool((3,), strides=1, padding="SAME", count_include_pad=True)
        >>> [round(v, 4) for v in padded(x).ravel().tolist()]
        [1.3333, 2.0, 1.6667, 0.6667]
    """
    name = "avg_pool"
    rank, window, strides, padding = _window_arguments(name, window, strides, padding)

    def counts(spatial, pads, dtype):
        """``c[o]``: entries per window, shape ``(1, *out, 1)`` (or a scalar); shapes only."""
        if count_include_pad:
            return jnp.array(math.prod(window), dtype)
        ones = jnp.ones((1, *spatial, 1), dtype)
        return lax.reduce_window(ones, 0.0, lax.add, (1, *window, 1), (1, *strides, 1),
                                 _pads_on_all_axes(pads))

    def divide(total, count):
        if count.ndim == 0:
            return total / count
        return total / jnp.broadcast_to(count, total.shape)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {})
        spatial, pads, _ = _checked_geometry(name, x, rank, window, strides, padding)
        # a Python-scalar init: the only form reduce_window can differentiate under jit
        total = lax.reduce_window(x, 0.0, lax.add, (1, *window, 1), (1, *strides, 1),
                                  _pads_on_all_axes(pads))
        return divide(total, counts(spatial, pads, x.dtype)), state, spatial

    def backward(params, spatial, dy):
        pads = _spatial.explicit_padding(padding, spatial, window, strides)
        share = divide(dy, counts(spatial, pads, dy.dtype))
        per_tap = [share] * len(_taps(window))
        return (), _scatter_to_windows(per_tap, window, strides, spatial, pads)

    return Layer(name, _pool_init(name, rank, window, strides, padding), forward, backward)


def global_avg_pool() -> Layer:
    r"""The mean over all spatial axes: ``(N, *spatial, C) → (N, C)``.

    Forward and backward, with $P$ the number of spatial positions $p$:

    $$
    y_{n,c} = \frac{1}{P} \sum_{p} x_{n,p,c} \qquad dx_{n,p,c} = \frac{dy_{n,c}}{P}
    $$

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        Three positions, two channels: the mean per channel, and a gradient of $1/3$ to every
        position:

        >>> layer = jaxnn.global_avg_pool()
        >>> x = jnp.arange(6.0).reshape(1, 3, 2)
        >>> layer(x).tolist()
        [[2.0, 3.0]]
        >>> dx = jax.grad(lambda x: layer(x).sum())(x)
        >>> dx.shape, sorted({round(v, 4) for v in dx.ravel().tolist()})
        ((1, 3, 2), [0.3333])

        Images ``(N, H, W, C)`` become ``(N, C)``, ready for a [`jaxnn.dense`][jaxnn.dense]
        head:

        >>> layer.init(jax.random.key(0), (-1, 7, 7, 16))[0]
        (-1, 16)
    """
    name = "global_avg_pool"

    def out_shape(in_shape):
        if len(in_shape) < 3:
            raise ValueError(f"{name}: in_shape must be (batch, *spatial, channels) with at "
                             f"least one spatial axis, got {in_shape}")
        return (in_shape[0], in_shape[-1])

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {})
        check_float(name, x)
        if x.ndim < 3:
            raise ValueError(f"{name}: expected an input (batch, *spatial, channels) with at "
                             f"least one spatial axis, got shape {tuple(x.shape)}")
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1))), state, tuple(x.shape)

    def backward(params, x_shape, dy):
        positions = math.prod(x_shape[1:-1])
        share = (dy / positions).reshape((x_shape[0],) + (1,) * (len(x_shape) - 2) + (-1,))
        return (), jnp.broadcast_to(share, x_shape)

    return Layer(name, stateless_init(out_shape), forward, backward)
