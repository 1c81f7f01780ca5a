"""The one list of gradient-check cases: each exported layer and loss at its default configurations.

``jaxnn gradcheck``, ``tests/test_registry.py``, the layer families' gradient tests and the
property tests all draw from [`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] and
[`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES]. A new layer is
registered by adding one entry to [`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] (at least three
configurations); the
registry test fails for an exported layer or loss without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from jaxnn import layers as L
from jaxnn import losses
from jaxnn.core import Layer
from jaxnn.losses import Loss

__all__ = ["LAYER_CASES", "LOSS_CASES", "NOT_LAYERS_OR_LOSSES", "LayerCase", "LossCase",
           "case_input"]

NOT_LAYERS_OR_LOSSES = frozenset({"Loss", "weight_gradient"})
"""Names in ``jaxnn.layers.__all__`` / ``jaxnn.losses.__all__`` that are helpers, not layers:
every other name there must have an entry in [`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] or
[`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES] (``tests/test_registry.py`` checks it)."""


class LayerCase(NamedTuple):
    """A layer and the input shape to check it at.

    Attributes:
      make: builds the layer (called afresh for each check).
      in_shape: the input shape, batch axis first; a tuple of shapes for a tuple input.
      label: the name in ``jaxnn gradcheck``'s table (default: the layer's name and shape).
      options: extra keyword arguments of
        [`jaxnn.gradcheck.check_layer`][jaxnn.gradcheck.check_layer] (``train``,
        ``state``, ``input_dtype``), and fields of
        [`jaxnn.gradcheck.Tolerances`][jaxnn.gradcheck.Tolerances]
        (``max_fd_entries``).
      inputs: how [`case_input`][jaxnn.gradcheck.case_input] draws the input: ``"normal"``
        (standard normal),
        ``"away_from_zero"`` (at least 0.05 from 0, for a kink there) or ``"distinct"`` (a
        shuffled ramp without ties, for a maximum).

    Examples:
        A case for a user's layer, checked like the registered ones:

        >>> from jaxnn.gradcheck import LayerCase, check_case
        >>> case = LayerCase(lambda: jaxnn.dense(3), (4, 2))
        >>> case
        dense[4x2]
        >>> case.inputs, dict(case.options)
        ('normal', {})
        >>> LayerCase(lambda: jaxnn.dense(3), (4, 2), "my dense")
        my dense
    """

    make: Callable[[], Layer]
    in_shape: tuple
    label: str | None = None
    options: Mapping[str, Any] = MappingProxyType({})
    inputs: str = "normal"

    def __repr__(self) -> str:
        return self.label or f"{self.make().name}[{_shape_text(self.in_shape)}]"


def _shape_text(shape: tuple) -> str:
    """``(4, 3)`` as ``4x3``, a tuple of shapes as ``4x3,4x2`` (no spaces: a table cell)."""
    if shape and isinstance(shape[0], tuple):
        return ",".join(_shape_text(s) for s in shape)
    return "x".join(str(d) for d in shape)


class LossCase(NamedTuple):
    """A loss and a function drawing ``(prediction, target)`` from a numpy generator.

    Attributes:
      loss: the [`jaxnn.Loss`][jaxnn.Loss] checked.
      make_inputs: ``rng -> (prediction, target)``, ``rng`` a ``numpy.random.Generator``
        (seeded by [`check_case`][jaxnn.gradcheck.check_case]'s ``seed``).
      label: the name in ``jaxnn gradcheck``'s table (default: the loss's name).

    Examples:
        >>> from jaxnn.gradcheck import LossCase, check_case
        >>> case = LossCase(jaxnn.mean_squared_error,
        ...                 lambda rng: (rng.normal(size=(4, 1)), rng.normal(size=(4, 1))))
        >>> case
        mean_squared_error
        >>> prediction, target = case.make_inputs(np.random.default_rng(0))
        >>> prediction.shape, target.shape
        ((4, 1), (4, 1))
        >>> check_case(case).passed
        True
    """

    loss: Loss
    make_inputs: Callable[[np.random.Generator], tuple[Any, Any]]
    label: str | None = None

    def __repr__(self) -> str:
        return self.label or self.loss.name


def case_input(case: LayerCase, seed: int = 0, in_shape: tuple | None = None) -> Any:
    """The input a case is checked at, as ``case.inputs`` asks; ``None`` for ``"normal"``.

    ``None`` lets [`jaxnn.gradcheck.check_layer`][jaxnn.gradcheck.check_layer] draw its own input
    (and check at batch 1 too). ``in_shape`` overrides ``case.in_shape`` (the property tests vary
    it).

    Args:
      case: the case.
      seed: seeds ``numpy.random.default_rng``.
      in_shape: the shape to draw instead of ``case.in_shape``.

    Returns:
      A NumPy array of the case's shape, or ``None`` for ``inputs="normal"``.

    Raises:
      ValueError: ``case.inputs`` is none of the three.

    Examples:
        >>> from jaxnn.gradcheck import LAYER_CASES, case_input
        >>> case_input(LAYER_CASES["dense"][0]) is None
        True
        >>> x = case_input(LAYER_CASES["relu"][0])
        >>> x.shape, bool(np.all(np.abs(x) >= 0.05))
        ((3, 4), True)
        >>> x = case_input(LAYER_CASES["max_pool"][0])
        >>> x.shape, len(np.unique(x)) == x.size
        ((2, 6, 3), True)
    """
    shape = case.in_shape if in_shape is None else in_shape
    rng = np.random.default_rng(seed)
    if case.inputs == "normal":
        return None
    if case.inputs == "away_from_zero":
        u = rng.normal(size=shape)
        return np.sign(u) * (0.05 + np.abs(u))
    if case.inputs == "distinct":
        n = int(np.prod(shape))
        return rng.permutation(n).reshape(shape) / n * 4.0 - 2.0  # in [-2, 2)
    raise ValueError(f"LayerCase.inputs: expected 'normal', 'away_from_zero' or 'distinct', "
                     f"got {case.inputs!r}")


def _activation_cases(make: Callable[[], Layer], inputs: str = "normal") -> tuple:
    return tuple(LayerCase(make, shape, inputs=inputs) for shape in ((3, 4), (1, 7), (2, 3, 5)))


_TRAIN = MappingProxyType({"train": True})
_FEW_FD = MappingProxyType({"max_fd_entries": 48})  # the stencil over a batched conv is slow
_RUNNING = MappingProxyType({"state": {"mean": np.array([0.3, -1.2, 2.0]),
                                       "var": np.array([0.5, 2.0, 1.5])}})


def _sequence_input(shape, lengths, hidden=None, states=0, seed=0) -> tuple:
    """``(x[, lengths][, h0[, c0]])`` for a recurrent layer built with ``lengths=`` /
    ``initial_state=True``; ``lengths=None`` leaves them out."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(size=shape)]
    if lengths is not None:
        parts.append(np.asarray(lengths, np.int32))
    parts += [rng.normal(size=(shape[0], hidden)) for _ in range(states)]
    return tuple(parts)


def _attention_input(*shapes, mask, seed=0) -> tuple:
    """``(queries[, keys_values], key_mask)``: normal inputs and a boolean ``(N, T_k)`` mask
    whose last row is all False (an example that attends to no key)."""
    rng = np.random.default_rng(seed)
    key_mask = rng.random(mask) > 0.4
    key_mask[-1] = False
    return (*(rng.normal(size=s) for s in shapes), key_mask)


def _conv(*args, **kwargs) -> Callable[[], Layer]:
    return lambda: L.conv(*args, **kwargs)


def _pool(make, *args, **kwargs) -> Callable[[], Layer]:
    return lambda: make(*args, **kwargs)


LAYER_CASES: dict[str, tuple[LayerCase, ...]] = {
    "dense": (
        LayerCase(lambda: L.dense(3), (4, 2), "dense(3)"),
        LayerCase(lambda: L.dense(1), (7, 5)),
        LayerCase(lambda: L.dense(6, use_bias=False), (3, 4)),
        LayerCase(lambda: L.dense(2), (2, 3, 4)),  # a sequence axis besides the batch
    ),
    "sigmoid": _activation_cases(L.sigmoid),
    "tanh": _activation_cases(L.tanh),
    "relu": _activation_cases(L.relu, "away_from_zero"),
    "leaky_relu": _activation_cases(lambda: L.leaky_relu(0.2), "away_from_zero")
    + _activation_cases(L.leaky_relu, "away_from_zero"),
    "softmax": (*_activation_cases(L.softmax), LayerCase(lambda: L.softmax(axis=1), (2, 3, 5))),
    "gelu": _activation_cases(L.gelu) + _activation_cases(lambda: L.gelu(approximate=True)),
    "elu": _activation_cases(L.elu, "away_from_zero")
    + _activation_cases(lambda: L.elu(alpha=0.5), "away_from_zero"),
    "softplus": _activation_cases(L.softplus),
    "silu": _activation_cases(L.silu),
    "identity": _activation_cases(L.identity),
    "serial": (
        LayerCase(lambda: L.serial(L.dense(4), L.tanh(), L.dense(2)), (3, 5)),
        LayerCase(lambda: L.serial(L.dense(3), L.sigmoid()), (6, 2)),
        LayerCase(lambda: L.serial(L.dense(5), L.gelu(), L.dense(4), L.softplus(), L.dense(3),
                                   L.softmax()), (2, 4)),
        LayerCase(lambda: L.serial(L.serial(L.dense(3), L.silu()), L.dense(2)), (4, 3)),
    ),
    "parallel": (
        LayerCase(lambda: L.parallel(L.dense(2), L.tanh()), (4, 3)),
        LayerCase(lambda: L.parallel(L.dense(3), L.identity(), L.sigmoid()), (2, 5, 3)),
        LayerCase(lambda: L.parallel(L.batch_norm(), L.dense(2)), (5, 3),
                  options=_TRAIN),
    ),
    "concatenate": (
        LayerCase(lambda: L.concatenate(), ((4, 3), (4, 2))),
        LayerCase(lambda: L.concatenate(axis=1), ((2, 3, 4), (2, 1, 4), (2, 2, 4))),
        LayerCase(lambda: L.concatenate(), ((3, 1),)),
    ),
    "residual": (
        LayerCase(lambda: L.residual(L.serial(L.dense(4), L.tanh(), L.dense(3))), (5, 3)),
        LayerCase(lambda: L.residual(L.layer_norm()), (2, 3, 4)),
        LayerCase(lambda: L.residual(L.serial(L.dense(4, use_bias=False), L.batch_norm(),
                                              L.tanh(), L.dropout(0.3), L.dense(3))),
                  (6, 3), options=_TRAIN),
    ),
    "remat": (
        LayerCase(lambda: L.remat(L.dense(3)), (4, 2)),
        LayerCase(lambda: L.remat(L.serial(L.dense(4), L.tanh(), L.dense(2))), (3, 5)),
        LayerCase(lambda: L.remat(L.serial(L.remat(L.serial(L.dense(3), L.sigmoid())),
                                           L.dense(2), L.softplus())), (2, 4)),
    ),
    "conv": (
        LayerCase(_conv(3, (3,)), (2, 7, 2), options=_FEW_FD),
        LayerCase(_conv(2, (3,), strides=2, padding="VALID", dilation=2), (2, 9, 3),
                  options=_FEW_FD),
        LayerCase(_conv(4, (2,), strides=3, padding=((2, 3),), feature_group_count=2),
                  (2, 8, 4), options=_FEW_FD),
        LayerCase(_conv(3, (3, 3)), (2, 5, 5, 2), options=_FEW_FD),
        LayerCase(_conv(2, (3, 2), strides=(2, 1), padding="VALID"), (2, 6, 5, 2),
                  options=_FEW_FD),
        LayerCase(_conv(4, (2, 3), strides=2, padding="SAME", dilation=(2, 1),
                        feature_group_count=2), (2, 6, 5, 4), options=_FEW_FD),
        # padding larger than the kernel reach: the transposed convolution pads negatively
        LayerCase(_conv(2, (2, 2), strides=(1, 2), padding=((3, 1), (0, 2)), use_bias=False),
                  (1, 4, 5, 2), options=_FEW_FD),
        # depthwise: one group per input channel, two outputs each
        LayerCase(_conv(6, (3, 3), strides=2, feature_group_count=3), (2, 5, 4, 3),
                  options=_FEW_FD),
        LayerCase(_conv(2, (2, 2, 2), strides=(1, 2, 1)), (1, 3, 4, 3, 2), options=_FEW_FD),
    ),
    "max_pool": (
        LayerCase(_pool(L.max_pool, (2,)), (2, 6, 3), inputs="distinct"),
        LayerCase(_pool(L.max_pool, (3,), strides=1, padding="SAME"), (2, 5, 2),
                  inputs="distinct"),
        LayerCase(_pool(L.max_pool, (2, 2)), (2, 4, 6, 2), inputs="distinct"),
        # overlapping windows: an entry may win several windows and collect their gradients
        LayerCase(_pool(L.max_pool, (3, 2), strides=(2, 1), padding="SAME"), (2, 5, 4, 2),
                  inputs="distinct"),
        LayerCase(_pool(L.max_pool, (3, 3), strides=2, padding=((1, 2), (2, 0))),
                  (1, 6, 5, 2), inputs="distinct"),
    ),
    "avg_pool": (
        LayerCase(_pool(L.avg_pool, (2,)), (2, 6, 3)),
        LayerCase(_pool(L.avg_pool, (3,), strides=2, padding="SAME"), (2, 7, 2)),
        LayerCase(_pool(L.avg_pool, (2, 2)), (2, 4, 6, 2)),
        LayerCase(_pool(L.avg_pool, (3, 2), strides=(2, 1), padding="SAME"), (2, 5, 4, 2)),
        LayerCase(_pool(L.avg_pool, (3, 3), strides=2, padding=((1, 2), (2, 0)),
                        count_include_pad=True), (1, 6, 5, 2)),
    ),
    "global_avg_pool": (
        LayerCase(L.global_avg_pool, (2, 5, 3)),
        LayerCase(L.global_avg_pool, (2, 3, 4, 2)),
        LayerCase(L.global_avg_pool, (1, 2, 3, 2, 4)),
    ),
    "flatten": (
        LayerCase(L.flatten, (2, 3, 4)),
        LayerCase(L.flatten, (3, 2, 2, 3)),
        LayerCase(L.flatten, (4, 5)),
    ),
    "reshape": (
        LayerCase(lambda: L.reshape((3, 4)), (2, 12)),
        LayerCase(lambda: L.reshape((-1, 2)), (2, 3, 4)),
        LayerCase(lambda: L.reshape((2, 1, 3)), (3, 3, 2)),
    ),
    "batch_norm": (
        LayerCase(L.batch_norm, (5, 3), options=_TRAIN),
        LayerCase(L.batch_norm, (2, 4, 4, 3), options=_TRAIN),  # NHWC
        LayerCase(lambda: L.batch_norm(axis=1, use_offset=False), (4, 3, 2),
                  options=_TRAIN),  # NCW
        LayerCase(L.batch_norm, (5, 3), options=_RUNNING),  # evaluation
        LayerCase(lambda: L.batch_norm(use_offset=False), (2, 4, 3), options=_RUNNING),
    ),
    "layer_norm": (
        LayerCase(L.layer_norm, (4, 5)),
        LayerCase(L.layer_norm, (2, 3, 6)),
        LayerCase(lambda: L.layer_norm(use_offset=False, epsilon=1e-3), (5, 2)),
    ),
    "rms_norm": (
        LayerCase(L.rms_norm, (4, 5)),
        LayerCase(L.rms_norm, (2, 3, 6)),
        LayerCase(lambda: L.rms_norm(epsilon=1e-2), (5, 1)),
    ),
    "dropout": (
        LayerCase(lambda: L.dropout(0.5), (4, 6), options=_TRAIN),
        LayerCase(lambda: L.dropout(0.1), (2, 3, 5), options=_TRAIN),
        LayerCase(lambda: L.dropout(0.9), (8, 4), options=_TRAIN),
        LayerCase(lambda: L.dropout(0.5), (4, 6)),  # evaluation: the identity
    ),
    "embedding": (
        LayerCase(lambda: L.embedding(4, 3), (6,), options={"input_dtype": np.int32}),
        LayerCase(lambda: L.embedding(7, 2), (3, 5), options={"input_dtype": np.int32}),
        LayerCase(lambda: L.embedding(5, 4), (2, 3, 4), options={"input_dtype": np.int64}),
    ),
    "lstm": (
        LayerCase(lambda: L.lstm(3), (2, 4, 5)),
        LayerCase(lambda: L.lstm(2, return_sequences=False, forget_bias=0.0), (3, 6, 1)),
        LayerCase(lambda: L.lstm(4, lengths=True, initial_state=True), (3, 5, 2),
                  options={"x": _sequence_input((3, 5, 2), [5, 2, 0], hidden=4, states=2)}),
        LayerCase(lambda: L.lstm(3, lengths=True, return_sequences=False), (4, 3, 2),
                  options={"x": _sequence_input((4, 3, 2), [3, 1, 2, 0])}),
    ),
    "gru": (
        LayerCase(lambda: L.gru(3), (2, 4, 5)),
        LayerCase(lambda: L.gru(2, return_sequences=False), (3, 6, 1)),
        LayerCase(lambda: L.gru(4, lengths=True, initial_state=True), (3, 5, 2),
                  options={"x": _sequence_input((3, 5, 2), [5, 2, 0], hidden=4, states=1)}),
        LayerCase(lambda: L.gru(3, initial_state=True, return_sequences=False), (2, 3, 2),
                  options={"x": _sequence_input((2, 3, 2), None, hidden=3, states=1)}),
    ),
    "multi_head_attention": (
        LayerCase(lambda: L.multi_head_attention(2, causal=True, block_size=2), (2, 5, 4)),
        LayerCase(lambda: L.multi_head_attention(3, block_size=3), (1, 7, 6)),
        LayerCase(lambda: L.multi_head_attention(2, features=4, block_size=4),
                  ((2, 3, 5), (2, 6, 3))),
        # cross-attention with a key padding mask; the last example attends to no key
        LayerCase(lambda: L.multi_head_attention(2, block_size=4), ((2, 5, 4), (2, 6, 3)),
                  options={"x": _attention_input((2, 5, 4), (2, 6, 3), mask=(2, 6))}),
        LayerCase(lambda: L.multi_head_attention(1, causal=True, block_size=3),
                  ((3, 4, 2), (3, 4)),
                  options={"x": _attention_input((3, 4, 2), mask=(3, 4), seed=1)}),
        # grouped-query attention (2 key/value heads for 4 query heads) and multi-query
        LayerCase(lambda: L.multi_head_attention(4, num_kv_heads=2, causal=True, block_size=2),
                  (2, 5, 8)),
        # rotary positions with multi-query attention, and with a key mask
        LayerCase(lambda: L.multi_head_attention(2, num_kv_heads=1, rope=True, causal=True,
                                                 block_size=3), (2, 7, 4)),
        LayerCase(lambda: L.multi_head_attention(2, rope=True, block_size=2),
                  ((2, 5, 4), (2, 5)),
                  options={"x": _attention_input((2, 5, 4), mask=(2, 5), seed=2)}),
    ),
    "positional_embedding": (
        LayerCase(lambda: L.positional_embedding(5), (2, 5, 3)),
        LayerCase(lambda: L.positional_embedding(9), (3, 4, 2)),
        LayerCase(lambda: L.positional_embedding(2), (1, 1, 5)),
    ),
    "sinusoidal_positional_embedding": (
        LayerCase(L.sinusoidal_positional_embedding, (2, 5, 4)),
        LayerCase(L.sinusoidal_positional_embedding, (1, 3, 3)),
        LayerCase(L.sinusoidal_positional_embedding, (3, 1, 1)),
    ),
    "transformer_block": (
        LayerCase(lambda: L.transformer_block(2, causal=True, block_size=2), (2, 5, 4)),
        LayerCase(lambda: L.transformer_block(1, mlp_ratio=2), (1, 3, 3)),
        LayerCase(lambda: L.transformer_block(3, mlp_ratio=1, causal=True), (2, 4, 6)),
        LayerCase(lambda: L.transformer_block(2, mlp_ratio=1, num_kv_heads=1, causal=True,
                                              rope=True, block_size=2), (2, 5, 4)),
    ),
}
"""Exported layer name -> its configurations. Register a new layer here, and nowhere else.

Each entry is a tuple of [`LayerCase`][jaxnn.gradcheck.LayerCase] (at least three), checked by
[`check_case`][jaxnn.gradcheck.check_case]; e.g. ``LAYER_CASES["dense"][0]`` is ``dense(3)`` at
input shape ``(4, 2)``."""


def _probabilities(shape):
    return lambda rng: (rng.uniform(0.05, 0.95, shape),
                        (rng.uniform(size=shape) > 0.5).astype(np.float64))


def _logits(shape, soft=False):
    return lambda rng: (rng.normal(size=shape),
                        rng.uniform(size=shape) if soft
                        else (rng.uniform(size=shape) > 0.5).astype(np.float64))


def _classes(shape, one_hot=False):
    def draw(rng):
        ids = rng.integers(0, shape[-1], shape[:-1])
        return rng.normal(size=shape), np.eye(shape[-1])[ids] if one_hot else ids

    return draw


def _regression(shape):
    return lambda rng: (rng.normal(size=shape), rng.normal(size=shape))


_LOSS_SHAPES = ((4, 1), (7,), (3, 5))

LOSS_CASES: dict[str, tuple[LossCase, ...]] = {
    "binary_cross_entropy": tuple(LossCase(losses.binary_cross_entropy, _probabilities(s))
                                  for s in _LOSS_SHAPES),
    "binary_cross_entropy_with_logits": (
        *(LossCase(losses.binary_cross_entropy_with_logits, _logits(s)) for s in _LOSS_SHAPES),
        LossCase(losses.binary_cross_entropy_with_logits, _logits((6, 1), soft=True),
                 "binary_cross_entropy_with_logits, soft labels"),
    ),
    "softmax_cross_entropy": (
        LossCase(losses.softmax_cross_entropy, _classes((4, 3))),
        LossCase(losses.softmax_cross_entropy, _classes((2, 5, 4))),
        LossCase(losses.softmax_cross_entropy, _classes((3, 6), one_hot=True),
                 "softmax_cross_entropy, one-hot targets"),
    ),
    "mean_squared_error": tuple(LossCase(losses.mean_squared_error, _regression(s))
                                for s in ((4, 1), (5,), (3, 4))),
}
"""Exported loss name -> its configurations: tuples of
[`LossCase`][jaxnn.gradcheck.LossCase], checked by [`check_case`][jaxnn.gradcheck.check_case]."""
