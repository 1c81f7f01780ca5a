"""Data: generated 2-D data sets (no download) and shuffled mini-batches.

Every generator is deterministic given its ``seed`` and returns ``(x, y)`` with ``x`` of shape
``(m, 2)`` (examples first) and ``y`` of shape ``(m, 1)`` holding 0/1 labels.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["batches", "planar_flower", "two_moons"]


def planar_flower(m: int = 400, *, petals: int = 4, noise: float = 0.2, seed: int = 1):
    """The planar "flower": two classes of points on the petals of a rose curve.

    Half the points of each class lie on alternating petals of ``r = a·sin(petals·θ)``, with
    Gaussian noise on ``θ`` and ``r``; a linear classifier gets about half right.
    """
    if m < 2 or m % 2:
        raise ValueError(f"planar_flower: m must be an even number >= 2, got {m}")
    rng = np.random.default_rng(seed)
    per_class = m // 2
    x = np.zeros((m, 2), np.float32)
    y = np.zeros((m, 1), np.float32)
    a = 4.0
    for label in range(2):
        idx = slice(per_class * label, per_class * (label + 1))
        t = np.linspace(label * 3.12, (label + 1) * 3.12, per_class) + rng.normal(
            0, noise, per_class
        )
        r = a * np.sin(petals * t) + rng.normal(0, noise, per_class)
        x[idx] = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
        y[idx] = label
    return jnp.asarray(x), jnp.asarray(y)


def two_moons(m: int = 400, *, noise: float = 0.1, seed: int = 1):
    """Two interleaving half circles, one per class."""
    if m < 2:
        raise ValueError(f"two_moons: m must be >= 2, got {m}")
    rng = np.random.default_rng(seed)
    n0 = m // 2
    n1 = m - n0
    t0 = np.linspace(0, np.pi, n0)
    t1 = np.linspace(0, np.pi, n1)
    outer = np.stack([np.cos(t0), np.sin(t0)], 1)
    inner = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    x = np.concatenate([outer, inner]) + rng.normal(0, noise, (m, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n1)])[:, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def batches(
    key: jax.Array,
    x: jax.Array,
    y: jax.Array,
    batch_size: int,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Shuffled mini-batches of ``(x, y)`` drawn with ``key``.

    The examples are permuted by ``jax.random.permutation(key, m)`` and cut into batches of
    ``batch_size``. When ``batch_size`` does not divide ``m`` the last, shorter batch is kept
    (``drop_last=False``, the default: no example is lost) or dropped (``drop_last=True``: every
    batch has the same shape, so a jitted step compiles once).
    """
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(f"batches: x has {m} examples but y has {y.shape[0]}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    if m == 0:
        raise ValueError("batches: empty data set (0 examples)")
    order = jax.random.permutation(key, m)
    stop = m - m % batch_size if drop_last else m
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield x[idx], y[idx]
