r"""Parameter initializers: ``init(key, shape, dtype) -> array``.

Fans follow the layout of jaxnn's weights: a dense ``W`` has shape ``(n_in, n_out)``; a
convolution kernel has shape ``(*window, in_features, out_features)``. So the fans,
written $f_{in}$ and $f_{out}$ below, are ``fan_in = prod(shape[:-1])`` and
``fan_out = prod(shape[:-2]) * shape[-1]``:

$$
f_{in} = \prod \text{shape}[:-1] \qquad
f_{out} = \prod \text{shape}[:-2] \cdot \text{shape}[-1]
$$

| initializer | distribution | variance |
| --- | --- | --- |
| ``lecun_normal()`` | $\mathcal{N}(0, 1/f_{in})$ | $1/f_{in}$ |
| ``lecun_uniform()`` | $\mathcal{U}(\pm\sqrt{3/f_{in}})$ | $1/f_{in}$ |
| ``glorot_normal()`` | $\mathcal{N}(0, 2/(f_{in} + f_{out}))$ | $2/(f_{in} + f_{out})$ |
| ``glorot_uniform()`` | $\mathcal{U}(\pm\sqrt{6/(f_{in} + f_{out})})$ | $2/(f_{in} + f_{out})$ |
| ``he_normal()``, for ReLU layers | $\mathcal{N}(0, 2/f_{in})$ | $2/f_{in}$ |
| ``he_uniform()`` | $\mathcal{U}(\pm\sqrt{6/f_{in}})$ | $2/f_{in}$ |
| ``normal(stddev)`` | $\mathcal{N}(0, \text{stddev}^2)$ | $\text{stddev}^2$ |
| ``uniform(scale)`` | $\mathcal{U}(-\text{scale}, \text{scale})$ | $\text{scale}^2 / 3$ |
| ``zeros`` / ``ones`` | constants | $0$ |

``lecun_normal()`` is the classic ``randn(n, n_prev) / sqrt(n_prev)``. Glorot's are also
known as Xavier's (``xavier_normal``, ``xavier_uniform``), He's as Kaiming's
(``kaiming_normal``, ``kaiming_uniform``): the same functions under both names.
All six scaled initializers are [`variance_scaling`][jaxnn.initializers.variance_scaling] with a
scale $\kappa$ and a fan $n$: weights of variance $\kappa / n$, drawn from
$\mathcal{N}(0, \kappa / n)$ or from $\mathcal{U}(\pm\sqrt{3 \kappa / n})$ (a uniform on
$[-l, l]$ has variance $l^2 / 3$).

The normal variants are plain (not truncated) normals, so ``lecun_normal`` reproduces the classic
initialization exactly in distribution. [`jaxnn.dense`][jaxnn.dense] uses ``lecun_normal`` for
$W$ and ``zeros`` for $b$.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import jax
import jax.numpy as jnp


class Initializer(Protocol):
    r"""The type of an initializer: a function ``init(key, shape, dtype) -> array``.

    The layers call it with a PRNG key, the shape of the parameter and its dtype, e.g.
    [`jaxnn.dense`][jaxnn.dense] as ``w_init(key, (n_in, n_out), dtype)``. Every function of this
    module is one (``zeros``, ``ones``) or returns one (``he_normal()``); any function of that
    signature is one too: the type is structural, there is nothing to subclass.

    Examples:
        >>> init = jaxnn.initializers.he_normal()
        >>> init(jax.random.key(0), (3, 2), jnp.float32).shape
        (3, 2)

        A function of your own, here all entries $0.5$, passed to a layer:

        >>> def constant(key, shape, dtype=jnp.float32):
        ...     return jnp.full(shape, 0.5, dtype)
        >>> layer = jaxnn.dense(2, w_init=constant)
        >>> _, params, _ = layer.init(jax.random.key(0), (-1, 3))
        >>> params["W"].tolist()
        [[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]
    """

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any, /) -> jax.Array:
        """Parameters of ``shape`` and ``dtype`` drawn with ``key``."""
        ...

__all__ = [
    "Initializer",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "kaiming_normal",
    "kaiming_uniform",
    "lecun_normal",
    "lecun_uniform",
    "normal",
    "ones",
    "uniform",
    "variance_scaling",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]


def zeros(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """All zeros (the default for biases).

    Args:
      key: unused (an initializer's signature).
      shape: the shape of the parameter.
      dtype: its dtype.

    Returns:
      An array of zeros.

    Examples:
        >>> jaxnn.initializers.zeros(jax.random.key(0), (2, 3)).tolist()
        [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    """
    del key
    return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """All ones (the default for normalization scales).

    Args:
      key: unused (an initializer's signature).
      shape: the shape of the parameter.
      dtype: its dtype.

    Returns:
      An array of ones.

    Examples:
        >>> jaxnn.initializers.ones(jax.random.key(0), (3,)).tolist()
        [1.0, 1.0, 1.0]
    """
    del key
    return jnp.ones(shape, dtype)


def normal(stddev: float = 1e-2) -> Initializer:
    r"""Normal entries $\mathcal{N}(0, \text{stddev}^2)$, whatever the shape.

    Args:
      stddev: the standard deviation (default 0.01).

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        >>> w = jaxnn.initializers.normal(0.5)(jax.random.key(0), (200, 200), jnp.float32)
        >>> w.shape, bool(abs(float(w.std()) - 0.5) < 0.01)
        ((200, 200), True)
    """

    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    r"""Uniform entries $\mathcal{U}(-\text{scale}, \text{scale})$ (variance
    $\text{scale}^2 / 3$), whatever the shape.

    Args:
      scale: the bound (default 0.01).

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        >>> w = jaxnn.initializers.uniform(0.2)(jax.random.key(0), (200, 200), jnp.float32)
        >>> bool(w.min() >= -0.2), bool(w.max() <= 0.2)
        (True, True)
    """

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    r"""$(f_{in}, f_{out})$ of a weight of ``shape`` (see the module docstring).

    Args:
      shape: the weight's shape, rank 2 or more: ``(n_in, n_out)`` or
        ``(*window, in_features, out_features)``.

    Returns:
      ``(fan_in, fan_out)``, both including the window's size.

    Raises:
      ValueError: for a shape of rank below 2.

    Examples:
        >>> jaxnn.initializers.fans((400, 100))
        (400, 100)
        >>> jaxnn.initializers.fans((3, 3, 16, 32))  # a conv kernel: 3·3·16, 3·3·32
        (144, 288)
    """
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of rank >= 2, got shape {shape}")
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def variance_scaling(
    scale: float,
    mode: Literal["fan_in", "fan_out", "fan_avg"],
    distribution: Literal["normal", "uniform"],
) -> Initializer:
    r"""Zero-mean weights of variance ``scale / n`` where ``n`` is the fan chosen by ``mode``.

    With $\kappa$ = ``scale`` and $n$ = $f_{in}$, $f_{out}$ or their mean
    $(f_{in} + f_{out}) / 2$:

    $$
    w \sim \mathcal{N}\left(0, \frac{\kappa}{n}\right) \qquad \text{or} \qquad
    w \sim \mathcal{U}\left(-\sqrt{\frac{3 \kappa}{n}}, \sqrt{\frac{3 \kappa}{n}}\right)
    $$

    Both have variance $\kappa / n$.

    Args:
      scale: $\kappa$, the variance times the fan.
      mode: which fan: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
      distribution: ``"normal"`` or ``"uniform"``.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Raises:
      ValueError: for an unknown ``mode`` or ``distribution``.

    Examples:
        ``he_normal()`` is ``variance_scaling(2.0, "fan_in", "normal")``: variance $2 / 500$
        for 500 inputs:

        >>> init = jaxnn.initializers.variance_scaling(2.0, "fan_in", "normal")
        >>> w = init(jax.random.key(0), (500, 200), jnp.float32)
        >>> round(float(w.var()) * 500, 1)
        2.0
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: unknown mode {mode!r}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"variance_scaling: unknown distribution {distribution!r}")

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / n
        if distribution == "normal":
            return math.sqrt(variance) * jax.random.normal(key, shape, dtype)
        limit = math.sqrt(3 * variance)
        return jax.random.uniform(key, shape, dtype, minval=-limit, maxval=limit)

    return init


def lecun_normal() -> Initializer:
    r"""$\mathcal{N}(0, 1/f_{in})$: the classic ``randn(n, n_prev) / sqrt(n_prev)``.

    $$
    w \sim \mathcal{N}\left(0, \frac{1}{f_{in}}\right)
    $$

    The default of [`jaxnn.dense`][jaxnn.dense] and [`jaxnn.conv`][jaxnn.conv]: it keeps the
    variance of $Z = x W$ equal to that of the inputs.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For 400 inputs the standard deviation is $1/\sqrt{400} = 0.05$:

        >>> w = jaxnn.initializers.lecun_normal()(jax.random.key(0), (400, 100), jnp.float32)
        >>> round(float(w.var()) * 400, 1)  # the variance, times 400
        1.0
    """
    return variance_scaling(1.0, "fan_in", "normal")


def lecun_uniform() -> Initializer:
    r"""$\mathcal{U}(\pm\sqrt{3/f_{in}})$, of variance $1/f_{in}$.

    $$
    w \sim \mathcal{U}\left(-\sqrt{\frac{3}{f_{in}}}, \sqrt{\frac{3}{f_{in}}}\right)
    $$

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For 300 inputs the bound is $\sqrt{3/300} = 0.1$:

        >>> w = jaxnn.initializers.lecun_uniform()(jax.random.key(0), (300, 100), jnp.float32)
        >>> round(float(w.var()) * 300, 1)  # the variance, times 300
        1.0
        >>> bool(abs(w).max() <= 0.1)
        True
    """
    return variance_scaling(1.0, "fan_in", "uniform")


def glorot_normal() -> Initializer:
    r"""Glorot/Xavier normal, $\mathcal{N}(0, 2/(f_{in} + f_{out}))$.

    $$
    w \sim \mathcal{N}\left(0, \frac{2}{f_{in} + f_{out}}\right)
    $$

    Also available as ``xavier_normal``.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For a ``(300, 100)`` weight the variance is $2/400$:

        >>> w = jaxnn.initializers.glorot_normal()(jax.random.key(0), (300, 100), jnp.float32)
        >>> round(float(w.var()) * 200, 1)  # the variance, times 200
        1.0
        >>> jaxnn.initializers.xavier_normal is jaxnn.initializers.glorot_normal
        True
    """
    return variance_scaling(1.0, "fan_avg", "normal")


def glorot_uniform() -> Initializer:
    r"""Glorot/Xavier uniform, $\mathcal{U}(\pm\sqrt{6/(f_{in} + f_{out})})$.

    $$
    w \sim \mathcal{U}\left(-\sqrt{\frac{6}{f_{in} + f_{out}}},
    \sqrt{\frac{6}{f_{in} + f_{out}}}\right)
    $$

    Also available as ``xavier_uniform``.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For a ``(300, 100)`` weight the variance is $2/400$ and the bound $\sqrt{6/400}$:

        >>> w = jaxnn.initializers.glorot_uniform()(jax.random.key(0), (300, 100), jnp.float32)
        >>> round(float(w.var()) * 200, 1)  # the variance, times 200
        1.0
        >>> bool(abs(w).max() <= (6 / 400) ** 0.5)
        True
    """
    return variance_scaling(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    r"""He/Kaiming normal, $\mathcal{N}(0, 2/f_{in})$, for ReLU layers.

    $$
    w \sim \mathcal{N}\left(0, \frac{2}{f_{in}}\right)
    $$

    The factor 2 makes up for the half of its inputs a ReLU zeroes. Also available as
    ``kaiming_normal``.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For 200 inputs the variance is $2/200$:

        >>> w = jaxnn.initializers.he_normal()(jax.random.key(0), (200, 100), jnp.float32)
        >>> round(float(w.var()) * 100, 1)  # the variance, times 100
        1.0
        >>> layer = jaxnn.conv(8, (3, 3), w_init=jaxnn.initializers.he_normal())
        >>> layer.init(jax.random.key(0), (-1, 8, 8, 3))[1]["W"].shape  # fan_in = 3·3·3
        (3, 3, 3, 8)
    """
    return variance_scaling(2.0, "fan_in", "normal")


def he_uniform() -> Initializer:
    r"""He/Kaiming uniform, $\mathcal{U}(\pm\sqrt{6/f_{in}})$, of variance
    $2/f_{in}$.

    $$
    w \sim \mathcal{U}\left(-\sqrt{\frac{6}{f_{in}}}, \sqrt{\frac{6}{f_{in}}}\right)
    $$

    Also available as ``kaiming_uniform``.

    Returns:
      An [`Initializer`][jaxnn.initializers.Initializer].

    Examples:
        For 200 inputs the variance is $2/200$ and the bound $\sqrt{6/200}$:

        >>> w = jaxnn.initializers.he_uniform()(jax.random.key(0), (200, 100), jnp.float32)
        >>> round(float(w.var()) * 100, 1)  # the variance, times 100
        1.0
        >>> bool(abs(w).max() <= (6 / 200) ** 0.5)
        True
    """
    return variance_scaling(2.0, "fan_in", "uniform")


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform
