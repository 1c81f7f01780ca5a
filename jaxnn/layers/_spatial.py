"""Shared arithmetic of windowed layers (convolution, pooling): arguments, padding, shapes.

Inputs are channels-last with the batch first: ``(N, W, C)`` in 1-D, ``(N, H, W, C)`` in 2-D,
``(N, D, H, W, C)`` in 3-D. Along one spatial axis of length ``n`` a window of ``k`` taps with
dilation ``d`` spans ``k_eff = (k − 1)·d + 1`` entries; with padding ``(lo, hi)`` and stride
``s`` there are

    ``out = ⌊(n + lo + hi − k_eff) / s⌋ + 1``

windows, window ``o`` covering the padded positions ``o·s + j·d`` (``j = 0 … k − 1``). This is
``jax.lax``'s own formula. ``"VALID"`` pads nothing; ``"SAME"`` pads
``max((⌈n/s⌉ − 1)·s + k_eff − n, 0)`` entries in all, half in front and the odd one at the end,
so that ``out = ⌈n / s⌉``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

SPATIAL_NAMES = {1: "(batch, width, channels)", 2: "(batch, height, width, channels)",
                 3: "(batch, depth, height, width, channels)"}
Padding = str | Sequence[tuple[int, int]]


def _is_int(value) -> bool:
    """Any integer type (``3``, ``np.int64(3)``) but ``bool``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def window_rank(name: str, argument: str, window) -> int:
    """The number of spatial axes a window tuple such as ``kernel_size=(3, 3)`` stands for."""
    if _is_int(window) or not isinstance(window, Sequence):
        raise TypeError(
            f"{name}: {argument} must be a tuple with one entry per spatial axis, e.g. (3,) for "
            f"1-D or (3, 3) for 2-D inputs, got {window!r}"
        )
    rank = len(window)
    if rank not in SPATIAL_NAMES:
        raise ValueError(f"{name}: {argument} must have 1, 2 or 3 entries, got {window!r}")
    return rank


def positive_tuple(name: str, argument: str, value, rank: int) -> tuple[int, ...]:
    """``value`` (an int, or a tuple of ``rank`` ints) as a tuple of ``rank`` positive ints."""
    values = (value,) * rank if _is_int(value) else value
    if (
        not isinstance(values, Sequence)
        or len(values) != rank
        or not all(_is_int(v) and v >= 1 for v in values)
    ):
        raise ValueError(
            f"{name}: {argument} must be a positive int or a tuple of {rank} positive ints, got "
            f"{value!r}"
        )
    return tuple(int(v) for v in values)


def check_padding(name: str, padding, rank: int) -> Padding:
    """Validates ``"SAME"``, ``"VALID"`` or ``rank`` pairs ``(lo, hi)`` of ints >= 0."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise ValueError(f"{name}: padding must be 'SAME', 'VALID' or {rank} (low, high) "
                             f"pairs, got {padding!r}")
        return padding.upper()
    ok = isinstance(padding, Sequence) and len(padding) == rank and all(
        isinstance(p, Sequence) and len(p) == 2
        and all(_is_int(v) and v >= 0 for v in p)
        for p in padding
    )
    if not ok:
        raise ValueError(f"{name}: padding must be 'SAME', 'VALID' or {rank} (low, high) pairs "
                         f"of ints >= 0, got {padding!r}")
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def effective_window(window: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """``k_eff = (k − 1)·d + 1`` per axis."""
    return tuple((k - 1) * d + 1 for k, d in zip(window, dilation, strict=True))


def explicit_padding(padding: Padding, spatial: Sequence[int], window_eff: Sequence[int],
                     strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``(lo, hi)`` per spatial axis; ``"SAME"`` and ``"VALID"`` resolved as ``jax.lax`` does."""
    if padding == "VALID":
        return tuple((0, 0) for _ in spatial)
    if padding == "SAME":
        pads = []
        for n, k, s in zip(spatial, window_eff, strides, strict=True):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    assert not isinstance(padding, str), padding  # the strings are resolved above
    return tuple(padding)


def output_spatial(name: str, spatial: Sequence[int], window_eff: Sequence[int],
                   strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """``out = ⌊(n + lo + hi − k_eff) / s⌋ + 1`` per axis; an error if a window does not fit."""
    out = []
    for n, k, s, (lo, hi) in zip(spatial, window_eff, strides, pads, strict=True):
        if n + lo + hi < k:
            raise ValueError(
                f"{name}: a window spanning {tuple(window_eff)} entries does not fit the "
                f"spatial shape {tuple(spatial)} padded by {tuple(pads)}"
            )
        out.append((n + lo + hi - k) // s + 1)
    return tuple(out)


def check_spatial_input(name: str, x_shape: Sequence[int], rank: int,
                        channels: int | None = None) -> None:
    """A clear error unless ``x`` has ``rank`` spatial axes (and ``channels`` channels)."""
    shape = tuple(x_shape)
    if len(shape) != rank + 2:
        raise ValueError(
            f"{name}: expected an input of rank {rank + 2} {SPATIAL_NAMES[rank]} for a "
            f"{rank}-D window, got shape {shape} (rank {len(shape)})"
        )
    if channels is not None and shape[-1] != channels:
        raise ValueError(
            f"{name}: expected {channels} input channels on the last axis, got shape {shape} "
            f"({shape[-1]} channels)"
        )


def check_in_shape(name: str, in_shape: Sequence[int], rank: int) -> tuple[int, ...]:
    """``init``'s ``in_shape`` checked: ``rank`` concrete spatial sizes, then the channels."""
    in_shape = tuple(in_shape)
    check_spatial_input(name, in_shape, rank)
    if any(d < 1 for d in in_shape[1:]):
        raise ValueError(f"{name}: in_shape must have concrete spatial and channel sizes (only "
                         f"the batch may be -1), got {in_shape}")
    return in_shape
