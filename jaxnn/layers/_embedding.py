r"""Embedding: integer ids to learned vectors, forward beside its hand-derived backward.

Forward: a row lookup in the table $E$ of shape ``(num_embeddings, features)``, for every
position $p$ of the ids (of any shape):

$$
y_{p,:} = E_{\text{ids}_p,:}
$$

Backward: each row $r$ of the table receives the sum of the output gradients of the positions
that looked it up (a scatter-add, ``dE = zeros.at[ids].add(dy)``); the integer ids get no
gradient:

$$
dE_{r,:} = \sum_{p \,:\, \text{ids}_p = r} dy_{p,:}
\qquad \text{i.e.} \qquad dE = \sum_{p} \operatorname{onehot}(\text{ids}_p) \otimes dy_{p,:}
$$
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import initializers
from jaxnn.core import Layer, check_params, check_positive_int

__all__ = ["embedding"]


def embedding(
    num_embeddings: int,
    features: int,
    *,
    w_init: initializers.Initializer | None = None,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A lookup table mapping integer ids of any shape to vectors: ``ids.shape + (features,)``.

    Forward and backward, for every position $p$ of the ids and every row $r$ of the table $E$:

    $$
    y_{p,:} = E_{\text{ids}_p,:} \qquad dE_{r,:} = \sum_{p \,:\, \text{ids}_p = r} dy_{p,:}
    $$

    The table is the params entry ``"embedding"``, deliberately not ``"W"``, so L2
    ([`jaxnn.weight_mask`][jaxnn.weight_mask]) does not decay it: the penalty's gradient
    $\lambda E$ would shrink every row at every step, while a row's data gradient is non-zero
    only in the steps whose batch holds its id, so rare ids would be pulled to zero by the
    penalty alone. (Leaving embeddings out of weight decay is the usual practice for the same
    reason.) To decay it anyway, add $\lambda E$ to its gradient yourself.

    Ids must lie in ``[0, num_embeddings)``; negative ids do **not** count from the end. When
    the ids are concrete (outside ``jit``) an id out of range raises a ``ValueError``. Under
    ``jit`` they are unknown at trace time and cannot be checked: an out-of-range id then gives
    a row of NaN (rather than the silently clamped row plain JAX indexing would read), so the
    mistake shows in the loss, and it contributes no gradient to the table.

    Args:
      num_embeddings: the number of ids (rows of the table).
      features: the length of each vector.
      w_init: initializer of the table (default
        [`jaxnn.initializers.normal`][jaxnn.initializers.normal] with ``stddev=1``: entries
        of unit variance, the scale a following ``dense`` with its ``lecun_normal``
        initialization expects of its input, as PyTorch's default).
      dtype: dtype of the table.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"embedding": (num_embeddings, features)}``.

    Examples:
        >>> layer = jaxnn.embedding(10, 3)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 5))
        >>> out_shape, params["embedding"].shape
        ((-1, 5, 3), (10, 3))
        >>> ids = jnp.array([[1, 2, 3, 4, 1]])
        >>> y, _ = jaxnn.apply(layer, params, state, ids)
        >>> y.shape, bool((y[0, 0] == params["embedding"][1]).all())
        ((1, 5, 3), True)

        The backward scatter-adds $dy$ into the rows that were looked up: with $dy$ all ones,
        row 1 (looked up twice) gets 2 per feature, rows never looked up get 0:

        >>> dE = jax.grad(lambda p: jaxnn.apply(layer, p, state, ids)[0].sum())(params)
        >>> dE["embedding"][:, 0].tolist()
        [0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    num_embeddings = check_positive_int("embedding", "num_embeddings", num_embeddings)
    features = check_positive_int("embedding", "features", features)
    w_init = initializers.normal(1.0) if w_init is None else w_init

    init = functools.partial(_init, num_embeddings, features, w_init, dtype)
    forward = functools.partial(_forward, num_embeddings, features)
    return Layer("embedding", init, forward, _backward)


def _init(num_embeddings: int, features: int, w_init, dtype, key, in_shape):
    """The table ``E`` of shape ``(num_embeddings, features)``; the output appends ``features``."""
    in_shape = tuple(in_shape)
    if len(in_shape) < 1:
        raise ValueError(f"embedding: in_shape must be (batch, ...) of ids, got {in_shape}")
    table = w_init(key, (num_embeddings, features), dtype)
    return (*in_shape, features), {"embedding": table}, ()


def _forward(num_embeddings: int, features: int, params, state, ids, *, key=None, train=False):
    """``y[..., :] = E[ids[...], :]``; an out-of-range id under ``jit`` reads a row of NaN."""
    del key, train
    check_params("embedding", params, {"embedding": (num_embeddings, features)})
    _check_ids(ids, num_embeddings)
    # out-of-range ids (only possible under jit) read the fill value, NaN
    rows = jnp.where((ids >= 0) & (ids < num_embeddings), ids, num_embeddings)
    y = jnp.take(params["embedding"], rows, axis=0, mode="fill", fill_value=jnp.nan)
    return y, state, rows


def _backward(params, rows, dy):
    """``dE = zeros.at[ids].add(dy)``; the ids get no gradient."""
    table = params["embedding"]
    flat_rows = rows.reshape(-1)
    flat_dy = dy.reshape(-1, table.shape[1]).astype(table.dtype)
    # the scatter-add of dy into the table; rows == num_embeddings (out of range) drop out
    d_table = jnp.zeros_like(table).at[flat_rows].add(flat_dy, mode="drop")
    return {"embedding": d_table}, None


def _check_ids(ids, num_embeddings: int) -> None:
    """Integer ids, and in range when they are concrete, or a clear error."""
    dtype_ = getattr(ids, "dtype", None)
    if dtype_ is None or not jnp.issubdtype(dtype_, jnp.integer):
        raise TypeError(f"embedding: expected integer ids, got dtype {dtype_}; convert them "
                        f"with ids.astype(jnp.int32)")
    _check_range_if_concrete(ids, num_embeddings)


def _check_range_if_concrete(ids, num_embeddings: int) -> None:
    if isinstance(ids, jax.core.Tracer) or ids.size == 0:
        return
    values = np.asarray(ids)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_embeddings:
        raise ValueError(f"embedding: ids must be in [0, {num_embeddings}), got ids from {low} "
                         f"to {high}")
