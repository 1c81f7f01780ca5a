r"""The convolution layer (1-D, 2-D, 3-D), forward beside its hand-derived backward.

Layout: inputs are channels-last (``NWC``, ``NHWC``, ``NDHWC``), kernels are ``WIO``, ``HWIO``,
``DHWIO``: ``W`` has shape ``(*window, C_in / G, C_out)`` where $G$ is ``feature_group_count``.

Forward, in 1-D to keep the indices short (the other ranks repeat it per spatial axis), with
$\tilde{x}$ the input padded by $\ell$ zeros in front, stride $s$, dilation $d$, kernel taps
$j = 0, \dots, k - 1$, and $c$ running over the input channels of output channel $f$'s group.
Like every deep-learning "convolution" it is a cross-correlation: the kernel is not flipped.

$$
Z_{n,o,f} = \sum_{j=0}^{k-1} \sum_{c} \tilde{x}_{n,\, o s + j d,\, c}\, W_{j,c,f} + b_f
$$

The output has $L_{out} = \lfloor (L + \ell + h - k_{eff}) / s \rfloor + 1$ positions for an input
of $L$ positions padded by $\ell$ in front and $h$ behind, with the dilated window
$k_{eff} = (k - 1) d + 1$ (``"SAME"`` padding gives $L_{out} = \lceil L / s \rceil$).

Backward, by the chain rule on that sum (each is one more ``lax.conv_general_dilated``):

* the bias gradient, the classic $db = \sum dZ$:

    $$
    db_f = \sum_{n,o} dZ_{n,o,f}
    $$

* the weight gradient, the classic $dW = A_{prev}^\top dZ$: a convolution of $x$ with $dZ$ as the
  kernel, the examples $n$ contracted, the window offset $j$ as output position (stride $d$) and
  $o$ as kernel tap (dilation $s$); the groups pair input-channel group $g$ with output-channel
  group $g$ (``batch_group_count``):

    $$
    dW_{j,c,f} = \sum_{n,o} \tilde{x}_{n,\, o s + j d,\, c}\, dZ_{n,o,f}
    $$

* the input gradient, the classic $dA_{prev} = W^\top dZ$: the transposed convolution, i.e.
  $dZ$ spread out by the stride ($s - 1$ zeros between entries: ``lhs_dilation = s``) and
  correlated with the spatially flipped kernel whose input and output channels are swapped
  within each group, with padding $(k_{eff} - 1 - \ell,\; L + \ell - 1 - (L_{out} - 1) s)$ so
  that exactly $L$ positions come out:

    $$
    dx_{n,i,c} = \sum_{(o,\,j) \,:\, o s + j d - \ell = i} \; \sum_{f} dZ_{n,o,f}\, W_{j,c,f}
    $$

``docs/design.md`` has the derivation of the paddings.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnn import initializers
from jaxnn.core import MATRIX_SPLIT, Layer, check_float, check_params, check_positive_int
from jaxnn.layers import _spatial

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


def conv(
    features: int,
    kernel_size: Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: _spatial.Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    feature_group_count: int = 1,
    use_bias: bool = True,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A convolution $Z = x \star W + b$ over 1, 2 or 3 spatial axes (channels last).

    The number of spatial axes is ``len(kernel_size)``: ``conv(16, (3,))`` takes ``(N, W, C)``
    inputs, ``conv(16, (3, 3))`` takes ``(N, H, W, C)`` inputs.

    In 1-D, with $\tilde{x}$ the padded input, stride $s$, dilation $d$ and $\ell$ zeros of
    padding in front, the forward and the hand-derived gradients are (the module docstring above
    derives them):

    $$
    Z_{n,o,f} = \sum_{j} \sum_{c} \tilde{x}_{n,\, o s + j d,\, c}\, W_{j,c,f} + b_f
    $$

    $$
    dW_{j,c,f} = \sum_{n,o} \tilde{x}_{n,\, o s + j d,\, c}\, dZ_{n,o,f} \qquad
    db_f = \sum_{n,o} dZ_{n,o,f}
    $$

    $$
    dx_{n,i,c} = \sum_{(o,\,j) \,:\, o s + j d - \ell = i} \; \sum_{f} dZ_{n,o,f}\, W_{j,c,f}
    $$

    Args:
      features: ``C_out``, the number of output channels.
      kernel_size: the window, one entry per spatial axis, e.g. ``(3, 3)``.
      strides: the step between windows: an int for every axis or one per axis.
      padding: ``"SAME"`` (``out = ⌈n / s⌉``), ``"VALID"`` (no padding) or explicit
        ``(low, high)`` pairs of zeros per spatial axis, e.g. ``((1, 1), (2, 0))``.
      dilation: the kernel dilation (``d − 1`` skipped entries between taps).
      feature_group_count: ``G``; input and output channels are split in ``G`` groups and group
        ``g`` of the outputs sees only group ``g`` of the inputs (``G = C_in`` is a depthwise
        convolution). Both ``C_in`` and ``features`` must be divisible by ``G``.
      use_bias: whether to add ``b``.
      w_init: initializer of ``W`` (default
        [`jaxnn.initializers.lecun_normal`][jaxnn.initializers.lecun_normal], as for
        [`jaxnn.dense`][jaxnn.dense], with ``fan_in = prod(kernel_size) · C_in / G``; pass
        [`jaxnn.initializers.he_normal`][jaxnn.initializers.he_normal] for deep ReLU stacks).
      b_init: initializer of ``b`` (default zeros).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"W": (*kernel_size, C_in / G, features),
        "b": (features,)}``.

    Examples:
        A 2-D convolution with stride 2 on 28 × 28 single-channel images (``"SAME"`` padding:
        $\lceil 28 / 2 \rceil = 14$ positions per axis):

        >>> layer = jaxnn.conv(8, (3, 3), strides=2)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 28, 28, 1))
        >>> out_shape, params["W"].shape, params["b"].shape
        ((-1, 14, 14, 8), (3, 3, 1, 8), (8,))
        >>> z, _ = jaxnn.apply(layer, params, state, jnp.ones((2, 28, 28, 1)))
        >>> z.shape
        (2, 14, 14, 8)

        The formulas on a 1-D example with one channel and the kernel taps $(1, -1)$:
        $Z_o = x_o - x_{o+1}$ (a correlation: the kernel is not flipped), and with $dZ$ all
        ones, $dW_j = \sum_o x_{o+j}$ and $dx_i = \sum_{o + j = i} W_j$:

        >>> layer = jaxnn.conv(1, (2,), padding="VALID", use_bias=False)
        >>> params = {"W": jnp.array([1.0, -1.0]).reshape(2, 1, 1)}
        >>> x = jnp.array([1.0, 2.0, 4.0]).reshape(1, 3, 1)
        >>> jaxnn.apply(layer, params, (), x)[0].ravel().tolist()
        [-1.0, -2.0]
        >>> def loss(params, x):
        ...     return jaxnn.apply(layer, params, (), x)[0].sum()
        >>> dparams, dx = jax.grad(loss, argnums=(0, 1))(params, x)
        >>> dparams["W"].ravel().tolist(), dx.ravel().tolist()
        ([3.0, 6.0], [1.0, 0.0, -1.0])
    """
    features = check_positive_int("conv", "features", features)
    geometry = _geometry(features, kernel_size, strides, padding, dilation, feature_group_count)
    w_init = initializers.lecun_normal() if w_init is None else w_init
    init = functools.partial(_init, geometry, features, use_bias, w_init, b_init, dtype)
    forward = functools.partial(_forward, geometry, features, use_bias)
    backward = functools.partial(_backward, geometry)
    return Layer("conv", init, forward, backward, weights=("W",), tensor_split=MATRIX_SPLIT)


class _Geometry(NamedTuple):
    """A convolution's checked arguments and the ``lax`` dimension numbers they imply."""

    rank: int
    window: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: _spatial.Padding
    groups: int
    window_eff: tuple[int, ...]
    image: tuple[str, str, str]
    kernel_grad: tuple[str, str, str]

    def pads(self, spatial) -> tuple[tuple[int, int], ...]:
        return _spatial.explicit_padding(self.padding, spatial, self.window_eff, self.strides)


def _geometry(features: int, kernel_size, strides, padding, dilation, feature_group_count
              ) -> _Geometry:
    """The checked arguments; ``features`` must be divisible by the number of groups."""
    name = "conv"
    rank = _spatial.window_rank(name, "kernel_size", kernel_size)
    window = _spatial.positive_tuple(name, "kernel_size", tuple(kernel_size), rank)
    strides = _spatial.positive_tuple(name, "strides", strides, rank)
    dilation = _spatial.positive_tuple(name, "dilation", dilation, rank)
    padding = _spatial.check_padding(name, padding, rank)
    groups = check_positive_int(name, "feature_group_count", feature_group_count)
    if features % groups:
        raise ValueError(f"{name}: features ({features}) must be divisible by "
                         f"feature_group_count ({groups})")
    letters = _SPATIAL_LETTERS[rank]
    # forward and dx: x is (N, *spatial, C), the kernel (*window, I, O)
    image = ("N" + letters + "C", letters + "IO", "N" + letters + "C")
    # dW: x's examples are contracted (feature "C") and its channels run free (batch "N");
    # dZ is the kernel, examples as "I", output channels as "O"; the result is (*window, I, O)
    kernel_grad = ("C" + letters + "N", "I" + letters + "O", letters + "NC")
    return _Geometry(rank, window, strides, dilation, padding, groups,
                     _spatial.effective_window(window, dilation), image, kernel_grad)


def _init(geometry: _Geometry, features: int, use_bias: bool, w_init, b_init, dtype, key,
          in_shape):
    """``W`` of shape ``(*window, C_in / G, features)``, ``b`` of shape ``(features,)``."""
    g = geometry
    in_shape = _spatial.check_in_shape("conv", in_shape, g.rank)
    spatial, channels = in_shape[1:-1], in_shape[-1]
    if channels % g.groups:
        raise ValueError(f"conv: input channels ({channels}) must be divisible by "
                         f"feature_group_count ({g.groups}), got in_shape {in_shape}")
    out = _spatial.output_spatial("conv", spatial, g.window_eff, g.strides, g.pads(spatial))
    k_w, k_b = jax.random.split(key)
    params = {"W": w_init(k_w, (*g.window, channels // g.groups, features), dtype)}
    if use_bias:
        params["b"] = b_init(k_b, (features,), dtype)
    return (in_shape[0], *out, features), params, ()


def _check_params_and_input(geometry: _Geometry, params, x, features: int, use_bias: bool):
    """Checks ``params`` and ``x`` against the layer; returns the ``(lo, hi)`` paddings."""
    kernel = (*geometry.window, None, features)
    check_params("conv", params, {"W": kernel, "b": (features,)} if use_bias else {"W": kernel})
    check_float("conv", x)
    _spatial.check_spatial_input("conv", x.shape, geometry.rank,
                                 params["W"].shape[-2] * geometry.groups)
    spatial = x.shape[1:-1]
    pads = geometry.pads(spatial)
    _spatial.output_spatial("conv", spatial, geometry.window_eff, geometry.strides, pads)
    return pads


def _forward(geometry: _Geometry, features: int, use_bias: bool, params, state, x, *, key=None,
             train=False):
    """``Z = x ⋆ W + b``: one ``lax.conv_general_dilated``, the bias added per channel."""
    del key, train
    pads = _check_params_and_input(geometry, params, x, features, use_bias)
    w = params["W"]
    dtype_ = jnp.result_type(x, w)
    z = lax.conv_general_dilated(
        x.astype(dtype_), w.astype(dtype_), window_strides=geometry.strides, padding=pads,
        rhs_dilation=geometry.dilation, dimension_numbers=geometry.image,
        feature_group_count=geometry.groups,
    )
    if use_bias:
        # an explicit reshape: jaxnn never relies on implicit rank promotion
        z = z + params["b"].reshape((1,) * (z.ndim - 1) + (-1,))
    return z, state, x


def _backward(geometry: _Geometry, params, x, dz):
    """``dW``, ``db`` and ``dx`` as derived in the module docstring."""
    g, w = geometry, params["W"]
    spatial, out = x.shape[1:-1], dz.shape[1:-1]
    pads = g.pads(spatial)
    dtype_ = jnp.result_type(x, w, dz)
    x_, w_, dz_ = x.astype(dtype_), w.astype(dtype_), dz.astype(dtype_)
    dx = _input_gradient(g, w_, dz_, spatial, out, pads)

    # dW: x convolved with dZ; the padded input is cut to exactly what the windows read
    pads_dw = tuple(
        (lo, k - 1 + (o - 1) * s + 1 - n - lo)
        for k, (lo, _), n, o, s in zip(g.window_eff, pads, spatial, out, g.strides, strict=True)
    )
    dw = lax.conv_general_dilated(
        x_, dz_, window_strides=g.dilation, padding=pads_dw, rhs_dilation=g.strides,
        dimension_numbers=g.kernel_grad, batch_group_count=g.groups,
    )
    grads = {"W": dw.astype(w.dtype)}
    if "b" in params:
        grads["b"] = jnp.sum(dz, axis=tuple(range(dz.ndim - 1))).astype(params["b"].dtype)
    return grads, dx.astype(x.dtype)


def _input_gradient(geometry: _Geometry, w, dz, spatial, out, pads):
    """``dx``: ``dZ`` dilated by the stride, correlated with the flipped, I/O-swapped kernel."""
    g = geometry
    c_group, c_out = w.shape[-2], w.shape[-1]
    w_t = jnp.flip(w, axis=tuple(range(g.rank)))
    w_t = w_t.reshape((*g.window, c_group, g.groups, c_out // g.groups))
    w_t = jnp.swapaxes(w_t, g.rank, g.rank + 2)  # (*window, C_out/G, G, C_in/G)
    w_t = w_t.reshape((*g.window, c_out // g.groups, g.groups * c_group))
    pads_dx = tuple(
        (k - 1 - lo, n + lo - 1 - (o - 1) * s)
        for k, (lo, _), n, o, s in zip(g.window_eff, pads, spatial, out, g.strides, strict=True)
    )
    return lax.conv_general_dilated(
        dz, w_t, window_strides=(1,) * g.rank, padding=pads_dx, lhs_dilation=g.strides,
        rhs_dilation=g.dilation, dimension_numbers=g.image, feature_group_count=g.groups,
    )
