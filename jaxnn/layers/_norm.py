r"""Normalization layers, each forward beside its hand-derived backward.

All three normalize, then scale and shift per feature:

* [`batch_norm`][jaxnn.batch_norm]: statistics over the batch (every axis but the feature axis),
  running statistics kept as explicit state for evaluation;
* [`layer_norm`][jaxnn.layer_norm]: mean and variance over the features of each example;
* [`rms_norm`][jaxnn.rms_norm]: the root mean square over the features of each example (no
  centring).

**The forward.** Over the $N$ entries that share the statistics (one feature across the batch
for batch norm, one example's features for layer norm), with $\gamma$ the scale and $\beta$
the offset:

$$
\mu = \frac{1}{N} \sum x \qquad \sigma^2 = \frac{1}{N} \sum (x - \mu)^2 \qquad
s = \frac{1}{\sqrt{\sigma^2 + \varepsilon}}
$$

$$
\hat{x} = (x - \mu)\, s \qquad y = \gamma \odot \hat{x} + \beta
$$

**The backward of a normalization by its own statistics.** Write $d\hat{x} = dy \odot \gamma$.
Since $\partial \mu / \partial x_j = 1/N$ and $\partial \sigma^2 / \partial x_j = (2/N)(x_j - \mu)$,

$$
dx = \frac{s}{N} \left( N\, d\hat{x} - \sum d\hat{x} - \hat{x} \sum d\hat{x} \odot \hat{x} \right)
$$

(the mean subtracts the gradient's mean, the variance its component along $\hat{x}$). The code
computes it in the equivalent form with means, written $\overline{\,\cdot\,}$, over the same
$N$ entries:

$$
dx = s \left( d\hat{x} - \overline{d\hat{x}} - \hat{x}\, \overline{d\hat{x} \odot \hat{x}} \right)
$$

[`batch_norm`][jaxnn.batch_norm] in training mode and [`layer_norm`][jaxnn.layer_norm] both use
it, over different axes. With fixed statistics (batch norm in evaluation mode) the map is
affine: $dx = d\hat{x}\, s$.

For ``rms_norm``, no centring:

$$
r = \frac{1}{\sqrt{\frac{1}{N} \sum x^2 + \varepsilon}} \qquad \hat{x} = x\, r \qquad
dx = r \left( d\hat{x} - \hat{x}\, \overline{d\hat{x} \odot \hat{x}} \right)
$$

In every case the parameter gradients sum over all axes but the feature axis:

$$
d\gamma = \sum dy \odot \hat{x} \qquad d\beta = \sum dy
$$

Statistics are computed in at least float32, so half-precision inputs are normalized stably;
the output has the input's dtype.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.core import Array, Layer, check_features, check_float, check_params

__all__ = ["batch_norm", "layer_norm", "rms_norm"]


# --- shared pieces -----------------------------------------------------------------------------


def _check_epsilon(name: str, epsilon: float) -> float:
    epsilon = float(epsilon)
    if not epsilon > 0:
        raise ValueError(f"{name}: epsilon must be > 0, got {epsilon}")
    return epsilon


def _along(v: Array, ndim: int, axis: int) -> Array:
    """``v`` of shape ``(F,)`` reshaped to broadcast along ``axis`` of a rank-``ndim`` array.

    An explicit reshape: jaxnn never relies on implicit rank promotion.
    """
    shape = [1] * ndim
    shape[axis] = v.shape[0]
    return v.reshape(shape)


def _other_axes(ndim: int, axis: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a != axis)


def _compute_dtype(x: Array):
    return jnp.promote_types(x.dtype, jnp.float32)


def _scale_and_offset(params: dict, xhat: Array, axis: int) -> Array:
    """``y = γ ⊙ x̂ + β`` with whichever of ``γ`` (scale) and ``β`` (offset) the layer has."""
    y = xhat
    if "scale" in params:
        y = y * _along(params["scale"].astype(xhat.dtype), xhat.ndim, axis)
    if "offset" in params:
        y = y + _along(params["offset"].astype(xhat.dtype), xhat.ndim, axis)
    return y


def _scale_and_offset_backward(params: dict, xhat: Array, dy: Array, axis: int
                               ) -> tuple[dict, Array]:
    """``(dparams, dx̂)``: ``dγ = Σ dy ⊙ x̂``, ``dβ = Σ dy`` over all axes but ``axis``;
    ``dx̂ = dy·γ``."""
    others = _other_axes(dy.ndim, axis)
    grads = {}
    if "scale" in params:
        grads["scale"] = jnp.sum(dy * xhat, axis=others).astype(params["scale"].dtype)
    if "offset" in params:
        grads["offset"] = jnp.sum(dy, axis=others).astype(params["offset"].dtype)
    dxhat = dy
    if "scale" in params:
        dxhat = dy * _along(params["scale"].astype(dy.dtype), dy.ndim, axis)
    return grads, dxhat


def _normalized_backward(dxhat: Array, xhat: Array, inv_std: Array, axes: tuple[int, ...]
                         ) -> Array:
    """``dx = s · (dx̂ − mean(dx̂) − x̂ · mean(dx̂ ⊙ x̂))``, the means over ``axes``.

    The same as ``(s/N)(N·dx̂ − Σ dx̂ − x̂ Σ dx̂ ⊙ x̂)``: the backward through the mean and the
    (biased) variance of the entries that share the statistics.
    """
    mean_dxhat = jnp.mean(dxhat, axis=axes, keepdims=True)
    mean_dxhat_xhat = jnp.mean(dxhat * xhat, axis=axes, keepdims=True)
    return inv_std * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)


def _affine_params(key, features: int, use_scale: bool, use_offset: bool, scale_init,
                   offset_init, dtype) -> dict:
    k_scale, k_offset = jax.random.split(key)
    params = {}
    if use_scale:
        params["scale"] = scale_init(k_scale, (features,), dtype)
    if use_offset:
        params["offset"] = offset_init(k_offset, (features,), dtype)
    return params


def _affine_shapes(use_scale: bool, use_offset: bool, features: int | None) -> dict:
    """The expected params: ``"scale"`` and ``"offset"`` of shape ``(features,)`` as configured
    (``None``: the input's number of features)."""
    entries = ("scale",) * use_scale + ("offset",) * use_offset
    return dict.fromkeys(entries, (features,))


def _feature_count(name: str, in_shape: tuple, axis: int) -> int:
    if len(in_shape) < 2:
        raise ValueError(f"{name}: in_shape must be (batch, ..., features), got {in_shape}")
    features = in_shape[axis]
    if features < 1:
        raise ValueError(
            f"{name}: the feature axis {axis} of in_shape {in_shape} must have a known size, "
            f"got {features}"
        )
    return features


# --- batch norm --------------------------------------------------------------------------------


def _check_state(name: str, params, state, x: Array, ax: int) -> None:
    """The running statistics must be init's dict and fit the input; the error says which of
    input and state is wrong, and how to carry the state."""
    if not isinstance(state, dict) or set(state) != {"mean", "var"}:
        raise ValueError(
            f"{name}: state must be the dict {{'mean', 'var'}} made by init, got {state!r}; a "
            f"model with batch norm carries state: keep the state init returns "
            f"(_, params, state = model.init(key, in_shape)), pass it to apply or to the train "
            f"step, and pass the new state it returns to the next call"
        )
    sizes = {entry: tuple(jnp.shape(state[entry])) for entry in ("mean", "var")}
    reference = next((params[e] for e in ("scale", "offset") if e in params), None)
    # the one that disagrees with the other two is blamed: input, state or (later) params
    features = sizes["mean"][0] if reference is None else jnp.shape(reference)[0]
    for entry, size in sizes.items():
        if size != (features,) and (x.shape[ax] == features or reference is None):
            raise ValueError(
                f"{name}: state[{entry!r}] has shape {size}, but the input and the parameters "
                f"have {features} features (expected ({features},)); the state belongs to "
                f"another network: use the state init made for this one"
            )
    check_features(name, x, sizes["mean"][0], ax)


def batch_norm(
    *,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_offset: bool = True,
    axis: int = -1,
    scale_init: initializers.Initializer = initializers.ones,
    offset_init: initializers.Initializer = initializers.zeros,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Batch normalization with running statistics as explicit state.

    Forward, with $\mu_B$, $\sigma^2_B$ the mean and (biased) variance over every axis but the
    feature axis ($N$ entries per feature) in training mode, and the running $\mu_{run}$,
    $\sigma^2_{run}$ in evaluation mode:

    $$
    \text{train: } \hat{x} = \frac{x - \mu_B}{\sqrt{\sigma^2_B + \varepsilon}} \qquad
    \text{eval: } \hat{x} = \frac{x - \mu_{run}}{\sqrt{\sigma^2_{run} + \varepsilon}} \qquad
    y = \gamma \odot \hat{x} + \beta
    $$

    Backward, with $s = 1/\sqrt{\sigma^2 + \varepsilon}$, $d\hat{x} = dy \odot \gamma$, the sums
    over the $N$ entries of a feature:

    $$
    \text{train: } dx = \frac{s}{N} \left( N\, d\hat{x} - \sum d\hat{x}
    - \hat{x} \sum d\hat{x} \odot \hat{x} \right) \qquad
    \text{eval: } dx = d\hat{x}\, s
    $$

    $$
    d\gamma = \sum dy \odot \hat{x} \qquad d\beta = \sum dy
    $$

    In training mode the state is updated as

    $$
    \text{running} \leftarrow \text{momentum} \cdot \text{running}
    + (1 - \text{momentum}) \cdot \text{batch}
    $$

    (so ``momentum`` is the weight of the past: 0.99 averages over about 100 batches) with the
    batch mean and the **unbiased** batch variance $\sigma^2_B \cdot N / (N - 1)$, the estimate of
    the population variance the original batch-norm paper uses at inference (and PyTorch keeps;
    Flax's ``BatchNorm`` keeps the biased $\sigma^2_B$, see docs/guides/porting.md).
    The normalization itself uses the biased $\sigma^2_B$. In evaluation mode the running
    statistics are used and the state is returned unchanged. The state's cotangent is dropped,
    as for all state.
    The forward and backward are ``_batch_norm_forward`` and ``_batch_norm_backward``.

    Args:
      momentum: weight of the old running statistics, in ``[0, 1]``.
      epsilon: $\varepsilon$ added to the variance.
      use_scale: learn $\gamma$ (params entry ``"scale"``).
      use_offset: learn $\beta$ (params entry ``"offset"``).
      axis: the feature axis (default the last, NHWC images and ``(batch, features)`` alike);
        not the batch axis 0.
      scale_init: initializer of $\gamma$ (ones).
      offset_init: initializer of $\beta$ (zeros).
      dtype: dtype of the parameters and the running statistics.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"scale": (F,), "offset": (F,)}`` and state
        ``{"mean": (F,), "var": (F,)}`` (zeros and ones at init). Neither is decayed by L2.

    Examples:
        Training mode normalizes with the batch's statistics and updates the running ones:

        >>> layer = jaxnn.batch_norm(momentum=0.9)
        >>> _, params, state = layer.init(jax.random.key(0), (-1, 2))
        >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
        >>> y, new_state = jaxnn.apply(layer, params, state, x, train=True)
        >>> [[round(v, 4) for v in row] for row in y.tolist()]
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> [round(m, 4) for m in new_state["mean"].tolist()]  # 0.9 · 0 + 0.1 · (2, 20)
        [0.2, 2.0]

        The running variance takes the unbiased batch variance, $(1, 100) \cdot 2/1$:

        >>> [round(v, 4) for v in new_state["var"].tolist()]  # 0.9 · 1 + 0.1 · (2, 200)
        [1.1, 20.9]

        A gradient that is the same for every example is removed by the mean: with $L = \sum y$,
        $d\hat{x} = 1$ and $dx = 0$, while $d\gamma = \sum \hat{x} = 0$ and $d\beta = N = 2$:

        >>> def loss(params, x):
        ...     return jaxnn.apply(layer, params, state, x, train=True)[0].sum()
        >>> dparams, dx = jax.grad(loss, argnums=(0, 1))(params, x)
        >>> bool(jnp.allclose(dx, 0.0, atol=1e-6)), dparams["offset"].tolist()
        (True, [2.0, 2.0])

        Evaluation mode (the default) uses the running statistics and leaves them unchanged:

        >>> y, same_state = jaxnn.apply(layer, params, new_state, x)
        >>> [round(v, 4) for v in y[0].tolist()]  # (1 − 0.2) / √1.1, (10 − 2) / √20.9
        [0.7628, 1.7499]
        >>> bool((same_state["mean"] == new_state["mean"]).all())
        True
    """
    config = _batch_norm_config(momentum, epsilon, axis, use_scale, use_offset)
    init = functools.partial(_batch_norm_init, config, scale_init, offset_init, dtype)
    forward = functools.partial(_batch_norm_forward, config)
    backward = functools.partial(_batch_norm_backward, config)
    return Layer("batch_norm", init, forward, backward)


class _BatchNorm(NamedTuple):
    """A batch norm's checked configuration."""

    momentum: float
    epsilon: float
    axis: int
    use_scale: bool
    use_offset: bool

    def feature_axis(self, ndim: int) -> int:
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"batch_norm: axis {self.axis} is out of range for an input of "
                             f"rank {ndim}")
        ax = self.axis % ndim
        if ax == 0:
            raise ValueError(f"batch_norm: axis {self.axis} is the batch axis; the feature axis "
                             f"must be another one")
        return ax


def _batch_norm_config(momentum, epsilon, axis, use_scale: bool, use_offset: bool
                       ) -> _BatchNorm:
    name = "batch_norm"
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum}")
    epsilon = _check_epsilon(name, epsilon)
    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")
    return _BatchNorm(momentum, epsilon, int(axis), use_scale, use_offset)


def _batch_norm_init(config: _BatchNorm, scale_init, offset_init, dtype, key, in_shape):
    """``γ`` (ones) and ``β`` (zeros) of shape ``(F,)``; running mean 0 and variance 1."""
    name = "batch_norm"
    in_shape = tuple(in_shape)
    if len(in_shape) < 2:
        raise ValueError(f"{name}: in_shape must be (batch, ..., features), got {in_shape}")
    features = _feature_count(name, in_shape, config.feature_axis(len(in_shape)))
    params = _affine_params(key, features, config.use_scale, config.use_offset, scale_init,
                            offset_init, dtype)
    state = {"mean": jnp.zeros((features,), dtype), "var": jnp.ones((features,), dtype)}
    return in_shape, params, state


def _batch_norm_forward(config: _BatchNorm, params, state, x: Array, *, key=None,
                        train: bool = False):
    """``x̂ = (x − μ)·s``, ``s = 1/sqrt(σ² + ε)``, ``y = γ ⊙ x̂ + β``.

    Training mode: ``μ = μ_B``, ``σ² = σ²_B``, the mean and biased variance of the batch, and
    the running statistics updated; evaluation mode: ``μ_run``, ``σ²_run``, state unchanged.
    """
    del key
    name = "batch_norm"
    check_float(name, x)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected an input (batch, ..., features), got shape "
                         f"{tuple(x.shape)}")
    ax = config.feature_axis(x.ndim)
    _check_state(name, params, state, x, ax)
    features = state["mean"].shape[0]
    check_params(name, params, _affine_shapes(config.use_scale, config.use_offset, features))
    xc = x.astype(_compute_dtype(x))
    if train:
        xhat, inv_std, new_state = _batch_statistics(config, state, xc, ax)
    else:
        mean = _along(state["mean"].astype(xc.dtype), x.ndim, ax)
        inv_std = _along(jax.lax.rsqrt(state["var"].astype(xc.dtype) + config.epsilon),
                         x.ndim, ax)
        xhat = (xc - mean) * inv_std
        new_state = state
    y = _scale_and_offset(params, xhat, ax).astype(x.dtype)
    # `train` rides along as a Python bool: the backward depends on the mode
    return y, new_state, (xhat, inv_std, bool(train))


def _batch_statistics(config: _BatchNorm, state, xc: Array, ax: int):
    """``(x̂, s, new_state)`` from the batch's mean and biased variance over all axes but
    ``ax``; the running variance takes the unbiased ``σ²_B · N/(N − 1)``."""
    others = _other_axes(xc.ndim, ax)
    n = math.prod(xc.shape[a] for a in others)
    if n < 2:
        raise ValueError(
            f"batch_norm: training mode needs more than one value per feature to compute "
            f"batch statistics, got shape {tuple(xc.shape)}"
        )
    features, momentum = xc.shape[ax], config.momentum
    mean = jnp.mean(xc, axis=others, keepdims=True)
    centered = xc - mean
    var = jnp.mean(centered * centered, axis=others, keepdims=True)
    inv_std = jax.lax.rsqrt(var + config.epsilon)
    unbiased = var.reshape(features) * (n / (n - 1))
    new_state = {
        "mean": (momentum * state["mean"]
                 + (1 - momentum) * mean.reshape(features)).astype(state["mean"].dtype),
        "var": (momentum * state["var"]
                + (1 - momentum) * unbiased).astype(state["var"].dtype),
    }
    return centered * inv_std, inv_std, new_state


def _batch_norm_backward(config: _BatchNorm, params, residuals, dy: Array):
    """With ``dx̂ = dy·γ`` and ``N`` entries per feature::

        train:  dx = (s/N)(N·dx̂ − Σ dx̂ − x̂ Σ dx̂ ⊙ x̂)   eval:  dx = dx̂·s
        dγ = Σ dy ⊙ x̂,   dβ = Σ dy
    """
    xhat, inv_std, batch_statistics = residuals
    ax = config.feature_axis(dy.ndim)
    grads, dxhat = _scale_and_offset_backward(params, xhat, dy.astype(xhat.dtype), ax)
    if batch_statistics:
        dx = _normalized_backward(dxhat, xhat, inv_std, _other_axes(dy.ndim, ax))
    else:
        dx = dxhat * inv_std
    return grads, dx.astype(dy.dtype)


# --- layer norm --------------------------------------------------------------------------------


def layer_norm(
    *,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    use_offset: bool = True,
    scale_init: initializers.Initializer = initializers.ones,
    offset_init: initializers.Initializer = initializers.zeros,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Layer normalization over the feature (last) axis of each example.

    Forward, with $\mu$, $\sigma^2$ the mean and (biased) variance of the $F$ features of each
    example:

    $$
    \hat{x} = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}} \qquad y = \gamma \odot \hat{x} + \beta
    $$

    Backward, with $s = 1/\sqrt{\sigma^2 + \varepsilon}$, $d\hat{x} = dy \odot \gamma$, the sums in
    $dx$ over the features of the example and those in $d\gamma$, $d\beta$ over the examples:

    $$
    dx = \frac{s}{F} \left( F\, d\hat{x} - \sum d\hat{x} - \hat{x} \sum d\hat{x} \odot \hat{x}
    \right)
    $$

    $$
    d\gamma = \sum_{\text{examples}} dy \odot \hat{x} \qquad d\beta = \sum_{\text{examples}} dy
    $$

    The same in training and evaluation; no state.

    Args:
      epsilon: $\varepsilon$ added to the variance. The default 1e-5 is PyTorch's; Flax's
        ``LayerNorm`` uses 1e-6 (see docs/guides/porting.md).
      use_scale: learn $\gamma$ (params entry ``"scale"``, shape ``(F,)``).
      use_offset: learn $\beta$ (params entry ``"offset"``, shape ``(F,)``).
      scale_init: initializer of $\gamma$ (ones).
      offset_init: initializer of $\beta$ (zeros).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"scale": (F,), "offset": (F,)}`` and no
        state.

    Examples:
        >>> layer = jaxnn.layer_norm()
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 2))
        >>> out_shape, params["scale"].shape, params["offset"].shape, state
        ((-1, 2), (2,), (2,), ())
        >>> y, _ = jaxnn.apply(layer, params, (), jnp.array([[1.0, 3.0]]))
        >>> [round(v, 4) for v in y[0].tolist()]
        [-1.0, 1.0]

        Each example (here each position of a sequence) is normalized on its own: every row
        of the output has mean 0 and variance 1 (up to $\varepsilon$):

        >>> x = jax.random.normal(jax.random.key(1), (2, 5, 8)) * 3.0 + 1.0
        >>> _, params, _ = layer.init(jax.random.key(0), (-1, 5, 8))
        >>> y, _ = jaxnn.apply(layer, params, (), x)
        >>> y.shape
        (2, 5, 8)
        >>> bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-5))
        True
        >>> bool(jnp.allclose(y.var(-1), 1.0, atol=1e-3))
        True
    """
    name = "layer_norm"
    epsilon = _check_epsilon(name, epsilon)

    def init(key, in_shape):
        features = _feature_count(name, tuple(in_shape), -1)
        params = _affine_params(key, features, use_scale, use_offset, scale_init, offset_init,
                                dtype)
        return tuple(in_shape), params, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_float(name, x)
        _check_params_features(name, params, x, _affine_shapes(use_scale, use_offset, None))
        y, residuals = _layer_norm_forward(params, x, epsilon)
        return y, state, residuals

    return Layer(name, init, forward, _layer_norm_backward)


def _layer_norm_forward(params, x: Array, epsilon: float):
    """``(y, (x̂, s))`` with ``x̂ = (x − μ)·s`` over the last axis, ``y = γ ⊙ x̂ + β``."""
    xc = x.astype(_compute_dtype(x))
    mean = jnp.mean(xc, axis=-1, keepdims=True)
    centered = xc - mean
    inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
    xhat = centered * inv_std
    y = _scale_and_offset(params, xhat, x.ndim - 1).astype(x.dtype)
    return y, (xhat, inv_std)


def _layer_norm_backward(params, residuals, dy: Array):
    """``dx = (s/F)(F·dx̂ − Σ dx̂ − x̂ Σ dx̂ ⊙ x̂)``, ``dγ``, ``dβ`` summed over the examples."""
    xhat, inv_std = residuals
    grads, dxhat = _scale_and_offset_backward(params, xhat, dy.astype(xhat.dtype), dy.ndim - 1)
    dx = _normalized_backward(dxhat, xhat, inv_std, (dy.ndim - 1,))
    return grads, dx.astype(dy.dtype)


def _check_params_features(name: str, params, x: Array, expected: dict) -> None:
    """``params`` hold the ``expected`` entries, each with ``x``'s number of features."""
    check_params(name, params, expected)
    if x.ndim < 1:
        raise ValueError(f"{name}: expected an input with a feature axis, got a scalar")
    for entry in expected:
        check_features(name, x, params[entry].shape[0])


# --- RMS norm ----------------------------------------------------------------------------------


def rms_norm(
    *,
    epsilon: float = 1e-6,
    use_scale: bool = True,
    scale_init: initializers.Initializer = initializers.ones,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Root-mean-square normalization over the feature (last) axis of each example.

    Forward, with $r$ the inverse root mean square of the $F$ features of each example:

    $$
    r = \frac{1}{\sqrt{\frac{1}{F} \sum x^2 + \varepsilon}} \qquad \hat{x} = x\, r \qquad
    y = \gamma \odot \hat{x}
    $$

    Backward, with $d\hat{x} = dy \odot \gamma$ and the sum in $dx$ over the features (since
    $\partial \hat{x}_i / \partial x_j = r \left( \delta_{ij} - \hat{x}_i \hat{x}_j / F \right)$):

    $$
    dx = r \left( d\hat{x} - \hat{x} \cdot \frac{1}{F} \sum d\hat{x} \odot \hat{x} \right) \qquad
    d\gamma = \sum_{\text{examples}} dy \odot \hat{x}
    $$

    No centring and no offset; no state.

    Args:
      epsilon: $\varepsilon$ added to the mean square.
      use_scale: learn $\gamma$ (params entry ``"scale"``, shape ``(F,)``).
      scale_init: its initializer (ones).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"scale": (F,)}`` and no state.

    Examples:
        $x = (3, 4)$ has mean square $12.5$, so $\hat{x} = x / \sqrt{12.5}$:

        >>> layer = jaxnn.rms_norm()
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 2))
        >>> out_shape, params["scale"].shape, state
        ((-1, 2), (2,), ())
        >>> y, _ = jaxnn.apply(layer, params, (), jnp.array([[3.0, 4.0]]))
        >>> [round(v, 4) for v in y[0].tolist()]
        [0.8485, 1.1314]

        The backward removes the gradient's component along $\hat{x}$: a gradient proportional
        to $\hat{x}$ (here from $L = \frac{1}{2} \sum y^2$, $dy = \hat{x}$) gives $dx = 0$:

        >>> x = jnp.array([[3.0, 4.0]])
        >>> dx = jax.grad(lambda x: 0.5 * (jaxnn.apply(layer, params, (), x)[0] ** 2).sum())(x)
        >>> bool(jnp.allclose(dx, 0.0, atol=1e-6))
        True
    """
    name = "rms_norm"
    epsilon = _check_epsilon(name, epsilon)

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        features = _feature_count(name, in_shape, -1)
        params = _affine_params(key, features, use_scale, False, scale_init, None, dtype)
        return in_shape, params, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_float(name, x)
        _check_params_features(name, params, x, _affine_shapes(use_scale, False, None))
        xc = x.astype(_compute_dtype(x))
        inv_rms = jax.lax.rsqrt(jnp.mean(xc * xc, axis=-1, keepdims=True) + epsilon)
        xhat = xc * inv_rms
        y = _scale_and_offset(params, xhat, x.ndim - 1).astype(x.dtype)
        return y, state, (xhat, inv_rms)

    def backward(params, residuals, dy):
        xhat, inv_rms = residuals
        grads, dxhat = _scale_and_offset_backward(params, xhat, dy.astype(xhat.dtype),
                                                  dy.ndim - 1)
        dx = inv_rms * (dxhat - xhat * jnp.mean(dxhat * xhat, axis=-1, keepdims=True))
        return grads, dx.astype(dy.dtype)

    return Layer(name, init, forward, backward)
