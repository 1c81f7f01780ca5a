"""Parameter initializers: ``init(key, shape, dtype) -> array``.

Fans follow the layout of jaxnn's weights: a dense ``W`` has shape ``(n_in, n_out)``; a
convolution kernel has shape ``(*window, in_features, out_features)``. So
``fan_in = prod(shape[:-1])`` and ``fan_out = prod(shape[:-2]) * shape[-1]``.

=========================  ==============================================================
initializer                distribution
=========================  ==============================================================
``lecun_normal()``         ``N(0, 1/fan_in)`` — the classic ``randn(n, n_prev)/sqrt(n_prev)``
``lecun_uniform()``        ``U(±sqrt(3/fan_in))``
``glorot_normal()``        ``N(0, 2/(fan_in + fan_out))`` (Xavier)
``glorot_uniform()``       ``U(±sqrt(6/(fan_in + fan_out)))``
``he_normal()``            ``N(0, 2/fan_in)`` (Kaiming), for ReLU layers
``he_uniform()``           ``U(±sqrt(6/fan_in))``
``normal(stddev)``         ``N(0, stddev²)``
``uniform(scale)``         ``U(−scale, scale)``
``zeros`` / ``ones``       constants
=========================  ==============================================================

The normal variants are plain (not truncated) normals, so ``lecun_normal`` reproduces the classic
initialization exactly in distribution. [`jaxnn.dense`][jaxnn.dense] uses ``lecun_normal`` for
``W`` and
``zeros`` for ``b``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

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


def zeros(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """All zeros (the default for biases)."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """All ones (the default for normalization scales)."""
    del key
    return jnp.ones(shape, dtype)


def normal(stddev: float = 1e-2) -> Initializer:
    """``N(0, stddev²)``."""

    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    """``U(−scale, scale)``."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-scale, maxval=scale)

    return init


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of ``shape`` (see the module docstring)."""
    if len(shape) < 2:
        raise ValueError(f"fans need a weight of rank >= 2, got shape {shape}")
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def variance_scaling(
    scale: float,
    mode: Literal["fan_in", "fan_out", "fan_avg"],
    distribution: Literal["normal", "uniform"],
) -> Initializer:
    """Zero-mean weights of variance ``scale / n`` where ``n`` is the fan chosen by ``mode``."""
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
    """``N(0, 1/fan_in)``: the classic ``randn(n, n_prev) / sqrt(n_prev)``."""
    return variance_scaling(1.0, "fan_in", "normal")


def lecun_uniform() -> Initializer:
    """``U(±sqrt(3/fan_in))``."""
    return variance_scaling(1.0, "fan_in", "uniform")


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal, ``N(0, 2/(fan_in + fan_out))``."""
    return variance_scaling(1.0, "fan_avg", "normal")


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform, ``U(±sqrt(6/(fan_in + fan_out)))``."""
    return variance_scaling(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    """He/Kaiming normal, ``N(0, 2/fan_in)``."""
    return variance_scaling(2.0, "fan_in", "normal")


def he_uniform() -> Initializer:
    """He/Kaiming uniform, ``U(±sqrt(6/fan_in))``."""
    return variance_scaling(2.0, "fan_in", "uniform")


xavier_normal = glorot_normal
xavier_uniform = glorot_uniform
kaiming_normal = he_normal
kaiming_uniform = he_uniform
