r"""Multi-head attention, memory-linear: a blockwise forward beside its hand-derived backward.

Per head, with ``Q = x_q Wq``, ``K = x_kv Wk``, ``V = x_kv Wv`` split into ``h`` heads of width
``d`` and the output ``y = concat_heads(O) Wo``:

$$ Q = x_q W_q + b_q \qquad K = x_{kv} W_k + b_k \qquad V = x_{kv} W_v + b_v $$

$$ S = \frac{Q K^\top}{\sqrt{d}} \qquad P = \operatorname{softmax}(S) \qquad O = P V $$

$$ y = \operatorname{concat}_{\text{heads}}(O)\, W_o + b_o $$

with the softmax taken along each row of $S$ (over the keys) and masked entries of $S$ set to
$-\infty$.

The forward never forms ``S`` whole: it runs over tiles, a block of query rows against a
block of keys, keeping per query row the running maximum ``m``, the running sum
``l = Σ exp(S − m)`` and the running ``Σ exp(S − m) V``, rescaling all three by
``exp(m_old − m_new)`` when the maximum grows. For the tile of key block $j$, with
$S_j = Q K_j^\top / \sqrt{d}$ (the tile's rows of $Q$) and $a$ the running sum of rows of $V$,
each query row updates

$$ m' = \max\left(m, \max_{k} (S_j)_k\right) $$

$$ l' = e^{m - m'}\, l + \sum_{k} e^{(S_j)_k - m'} $$

$$ a' = e^{m - m'}\, a + e^{S_j - m'}\, V_j $$

starting from $m = -\infty$, $l = 0$, $a = 0$, and ends with

$$ O = \frac{a}{l} $$

In causal self-attention (``T_q = T_k``, longer than one block) the sequence is cut into an
even number $n_b$ of equal blocks of at most ``block_size`` positions, and only the tiles
$(i, j)$ of query block $i$ and key block $j \le i$ are computed: $n_b (n_b + 1) / 2$ of the
$n_b^2$. The $n_b$ diagonal tiles, under the element mask (key $\le$ row), take two scan
steps; the tiles below the diagonal, which the causal mask does not touch, take one scan of
$n_b - 1$ steps over the pairs of query blocks $(p,\ n_b - 1 - p)$, which need
$p + (n_b - 1 - p) = n_b - 1$ such tiles each, so every step does the same work. Otherwise
(non-causal, cross-attention, a decode step) a tile is one block of keys against all the
query rows.

It saves ``Q, K, V, O`` and, per query row, the final maximum ``m`` and sum ``l``, nothing of
size ``T × T`` (``m`` and ``l`` are kept apart: in float32 at large logits ``m + log l`` would
round ``log l`` away).

The backward recomputes ``P = exp(S − m) / l`` over the forward's tiles, with ``S`` computed by
the same expression as in the forward, so ``S − m`` is exact (``dO`` the gradient of ``O``):

$$ P = \frac{\exp(S - m)}{l} \qquad dP = dO\, V^\top \qquad D = \operatorname{rowsum}(P \odot dP) $$

$$ dV = P^\top dO \qquad dS = P \odot (dP - D) \qquad
dQ = \frac{dS\, K}{\sqrt{d}} \qquad dK = \frac{dS^\top Q}{\sqrt{d}} $$

$D$ is the softmax backward's row term. In exact arithmetic it equals
$\operatorname{rowsum}(dO \odot O)$ (for query row $i$,
$\sum_k P_{ik}\, dP_{ik} = dO_i \cdot \sum_k P_{ik} V_k = dO_i \cdot O_i$), but only the sum of
the very products $P \odot dP$ cancels $dP$ exactly in a row whose softmax is one-hot, as at
large logits; so it is summed from the tiles' own $P \odot dP$. In causal self-attention each
backward step takes the whole rows of a pair of query blocks ($n_b + 1$ tiles, for a chunk of
the sequences and heads), so $D$ is complete within the step and each tile's $P$ and $dP$ are
computed once: five tile products. Otherwise a first pass over the key blocks sums $D$ and a
second forms $dS$ (seven). Each tile's part of $dQ$ is added into its query block and of
$dK$, $dV$ into its key block.

Then come the projections' classic dense backward (``dWq = x_qᵀ dQ``, ``dx_q = dQ Wqᵀ``, ...):

$$ dW_q = x_q^\top dQ \qquad db_q = \sum_{i} dQ_{i} \qquad dx_q = dQ\, W_q^\top $$

and the same for $K$, $V$ and the output projection (with $dy$ and $\operatorname{concat}(O)$);
in self-attention $x_q = x_{kv} = x$ and $dx = dx_q + dx_k + dx_v$.
A query row whose keys are all masked outputs ``O = 0`` and passes no gradient.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import initializers
from jaxnn.core import Layer, TensorSplit, check_float, check_params, check_positive_int
from jaxnn.layers._dense import _backward as dense_layer_backward

__all__ = ["multi_head_attention"]

_NAME = "multi_head_attention"


# --- inputs: x, (x, key_mask), (queries, keys_values), (queries, keys_values, key_mask) -------


def _is_mask(a) -> bool:
    """A key mask is the rank-2 ``(N, T_k)`` input (queries and keys_values are rank 3)."""
    return getattr(a, "ndim", None) == 2


def _as_mask(mask):
    """The key mask as booleans: a boolean array as is, an integer one as ``mask != 0`` (the
    0/1 masks tokenizers give); anything else is a clear error."""
    dtype = getattr(mask, "dtype", None)
    if dtype is not None and dtype == jnp.bool_:
        return mask
    if dtype is not None and jnp.issubdtype(dtype, jnp.integer):
        return mask != 0
    raise TypeError(f"{_NAME}: the key_mask must be a boolean (or 0/1 integer) array of shape "
                    f"(batch, keys), True for the keys that may be attended to, got dtype "
                    f"{dtype if dtype is not None else type(mask).__name__}")


def _split_inputs(x):
    """``(queries, keys_values or None, key_mask or None)``; ``None`` keys mean self-attention."""
    if not isinstance(x, tuple | list):
        return x, None, None
    if len(x) == 2:
        return (x[0], None, _as_mask(x[1])) if _is_mask(x[1]) else (x[0], x[1], None)
    if len(x) == 3:
        return x[0], x[1], _as_mask(x[2])
    raise ValueError(f"{_NAME}: expected x, (x, key_mask), (queries, keys_values) or (queries, "
                     f"keys_values, key_mask), got a tuple of {len(x)} inputs")


def _split_shapes(in_shape):
    """The same split for ``init``'s shapes: the rank-2 entry is the key mask ``(N, T_k)``."""
    in_shape = tuple(in_shape)
    if all(isinstance(d, int) for d in in_shape):
        return in_shape, None, None
    shapes = [tuple(s) for s in in_shape]
    if len(shapes) == 2:
        return (shapes[0], None, shapes[1]) if len(shapes[1]) == 2 else (*shapes, None)
    if len(shapes) == 3:
        return tuple(shapes)
    raise ValueError(f"{_NAME}: in_shape must be a shape or a tuple of 2 or 3 shapes, got "
                     f"{in_shape}")


def _check_inputs(queries, keys_values, key_mask, causal: bool) -> None:
    """Trace-time checks naming the layer and the argument."""
    for arg, a in (("queries", queries), ("keys_values", keys_values)):
        check_float(_NAME, a, arg)
        if a.ndim != 3:
            raise ValueError(f"{_NAME}: {arg} must be (batch, time, features), got shape "
                             f"{tuple(a.shape)}")
    if queries.shape[0] != keys_values.shape[0]:
        raise ValueError(f"{_NAME}: queries and keys_values must have the same batch size, got "
                         f"{tuple(queries.shape)} and {tuple(keys_values.shape)}")
    for arg, a in (("queries", queries), ("keys_values", keys_values)):
        if a.shape[1] == 0:
            raise ValueError(f"{_NAME}: {arg} is an empty sequence (shape {tuple(a.shape)}: "
                             f"time axis of length 0); attention needs at least one position")
    if causal and queries.shape[1] != keys_values.shape[1]:
        raise ValueError(f"{_NAME}: causal=True needs as many queries as keys, got "
                         f"{queries.shape[1]} and {keys_values.shape[1]}")
    if key_mask is not None:
        expected = (keys_values.shape[0], keys_values.shape[1])
        if tuple(key_mask.shape) != expected:
            raise ValueError(f"{_NAME}: key_mask must have shape (batch, keys) = {expected}, "
                             f"got {tuple(key_mask.shape)}")


# --- the constructor ------------------------------------------------------------------------


def multi_head_attention(
    num_heads: int,
    *,
    num_kv_heads: int | None = None,
    features: int | None = None,
    causal: bool = False,
    rope: bool = False,
    rope_base: float = 10000.0,
    block_size: int = 128,
    use_bias: bool = True,
    w_init: initializers.Initializer | None = None,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""Multi-head scaled dot-product attention, ``softmax(QKᵀ/√d) V``, memory-linear in time.

    With $h$ heads of width $d = D / h$ (head $k$ takes columns $(k - 1)d + 1$ to $kd$ of the
    projections $Q$, $K$, $V$):

    $$
    y = \operatorname{concat}_{k=1}^{h}\left(\operatorname{softmax}\left(
    \frac{Q_k K_k^\top}{\sqrt{d}}\right) V_k\right) W_o + b_o
    $$

    Inputs, one of four forms:

    * ``x`` of shape ``(N, T, D_in)``: self-attention;
    * ``(x, key_mask)``: self-attention over the keys where ``key_mask`` is ``True``;
    * ``(queries, keys_values)``: cross-attention, ``queries (N, T_q, D_q)`` attending to
      ``keys_values (N, T_k, D_kv)``;
    * ``(queries, keys_values, key_mask)``: cross-attention with a key mask.

    ``key_mask`` is a boolean ``(N, T_k)`` array, ``True`` for the keys that may be attended
    to (a 0/1 integer mask is read as ``mask != 0``). A masked key's inputs are replaced by
    zeros (a select, so a NaN there reaches no output and no gradient); in self-attention a
    masked position is padding, and its own output row is that of a zero input row.
    Output: ``(N, T_q, features)``. With ``causal=True`` query ``i`` sees keys ``j ≤ i``. A
    query row with no visible key outputs the bias ``bo`` (its attention output is 0).

    Grouped-query attention: with ``num_kv_heads = c`` (dividing ``h``), ``K`` and ``V``
    have ``c`` heads of width ``d`` and query head $k$ uses key/value head
    $\lfloor k / (h/c) \rfloor$ (``c = 1`` is multi-query attention; ``c = h``, the default,
    is classic multi-head attention); ``dK``, ``dV`` sum over the query heads a key/value
    head serves.

    Rotary positions (``rope=True``): each head's queries and keys at position $t$ are
    rotated pair by pair, $(z_i, z_{i+d/2})$ by the angle $\theta_{t,i} = t\, b^{-2i/d}$
    ($b$ = ``rope_base``), so that $q_t \cdot k_s$ depends on $t - s$ only; the backward
    rotates ``dQ``, ``dK`` back by $-\theta$ (a rotation's transpose). Positions count from 0
    in the queries and in the keys.

    The forward runs over blocks of at most ``block_size`` keys (the last block padded with
    masked keys) and keeps only ``Q, K, V``, the attention output and each row's maximum and
    sum for the backward, which recomputes the probabilities block by block (derivation in
    the module docstring and docs/design.md). Causal self-attention also blocks the queries
    and computes only the blocks on and below the diagonal, about half the work. ``Q, K, V``
    come from one product ``x [Wq Wk Wv]`` (``x_kv [Wk Wv]`` in cross-attention), and the
    projections' backward is the [`dense`][jaxnn.dense] layer's own.

    Args:
      num_heads: the number of query heads ``h``; ``features`` must be divisible by it.
      num_kv_heads: the number of key/value heads ``c`` (default ``h``); must divide ``h``.
      features: the width ``D`` of ``Q`` and the output (default: the queries' width); ``K``
        and ``V`` have width ``D_kv = c · D / h``.
      causal: mask the keys after each query.
      rope: rotate queries and keys by position (RoPE); the head width ``D / h`` must be even.
      rope_base: the base $b$ of the rotation frequencies.
      block_size: keys (and, in causal self-attention, query rows) per block of the forward
        and backward loops, at most; causal self-attention uses an even number of equal
        blocks. Larger blocks run faster at long sequences and keep more temporaries: on a
        2-core CPU the causal training step at T = 2048 took 58, 52 and 47 ms with blocks of
        128, 256 and 512 (15, 19 and 27 MiB), while at T = 512 a block of 256 was 1.5×
        slower than 128 (``benchmarks/README.md``).
      use_bias: add biases ``bq, bk, bv, bo``.
      w_init: initializer of ``Wq, Wk, Wv, Wo`` (default lecun normal).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params
      ``{"Wq": (D_q, D), "Wk": (D_in_kv, D_kv), "Wv": (D_in_kv, D_kv), "Wo": (D, D)}`` and
      biases ``"bq", "bo"`` of shape ``(D,)``, ``"bk", "bv"`` of shape ``(D_kv,)``.

    Examples:
      Causal self-attention:

      >>> import jax, jax.numpy as jnp, jaxnn
      >>> layer = jaxnn.multi_head_attention(2, causal=True)
      >>> out_shape, params, _ = layer.init(jax.random.key(0), (-1, 5, 4))
      >>> y, _ = jaxnn.apply(layer, params, (), jnp.ones((3, 5, 4)))
      >>> out_shape, y.shape
      ((-1, 5, 4), (3, 5, 4))
      >>> sorted(jax.tree.map(jnp.shape, params).items())
      [('Wk', (4, 4)), ('Wo', (4, 4)), ('Wq', (4, 4)), ('Wv', (4, 4)),
       ('bk', (4,)), ('bo', (4,)), ('bq', (4,)), ('bv', (4,))]

      Cross-attention with a key mask (``True`` for the keys that may be attended to):

      >>> cross = jaxnn.multi_head_attention(2, features=8, block_size=2)
      >>> shapes = ((-1, 3, 4), (-1, 6, 5), (-1, 6))
      >>> out_shape, params, _ = cross.init(jax.random.key(0), shapes)
      >>> queries, keys_values = jnp.ones((2, 3, 4)), jnp.ones((2, 6, 5))
      >>> mask = jnp.arange(6).reshape(1, 6) < jnp.array([[6], [2]])   # 6 and 2 valid keys
      >>> y, _ = jaxnn.apply(cross, params, (), (queries, keys_values, mask))
      >>> out_shape, y.shape, params["Wk"].shape
      ((-1, 3, 8), (2, 3, 8), (5, 8))

      Grouped-query attention with rotary positions: 4 query heads share 2 key/value heads:

      >>> gqa = jaxnn.multi_head_attention(4, num_kv_heads=2, rope=True, causal=True)
      >>> _, params, _ = gqa.init(jax.random.key(0), (-1, 5, 8))
      >>> params["Wq"].shape, params["Wk"].shape, params["Wv"].shape
      ((8, 8), (8, 4), (8, 4))
      >>> jaxnn.apply(gqa, params, (), jnp.ones((3, 5, 8)))[0].shape
      (3, 5, 8)
    """
    config = _config(num_heads, num_kv_heads, features, causal, rope, rope_base, block_size,
                     use_bias)
    w_init = initializers.lecun_normal() if w_init is None else w_init

    def init(key, in_shape):
        return _attention_init(key, in_shape, config, w_init, dtype)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        if is_cache(state):  # the decode form: state is this layer's KV cache
            return _decode(params, state, x, config)
        y, residuals = _forward(params, x, config)
        return y, state, residuals

    def backward(params, residuals, dy):
        return _backward(params, residuals, dy, config)

    return Layer(_NAME, init, forward, backward, weights=("Wq", "Wk", "Wv", "Wo"),
                 tensor_split=TensorSplit(column=(("Wq", -1), ("Wk", -1), ("Wv", -1), ("bq", -1),
                                                  ("bk", -1), ("bv", -1)),
                                          row=(("Wo", -2),), pair=True),
                 init_cache=functools.partial(_init_cache, config))


class _Config(NamedTuple):
    num_heads: int
    num_kv_heads: int
    features: int | None
    causal: bool
    rope: bool
    rope_base: float
    block_size: int
    use_bias: bool


def _config(num_heads, num_kv_heads, features, causal, rope, rope_base, block_size,
            use_bias) -> _Config:
    num_heads = check_positive_int(_NAME, "num_heads", num_heads)
    num_kv_heads = (num_heads if num_kv_heads is None
                    else check_positive_int(_NAME, "num_kv_heads", num_kv_heads))
    if num_heads % num_kv_heads:
        raise ValueError(f"{_NAME}: num_kv_heads ({num_kv_heads}) must divide num_heads "
                         f"({num_heads}): each key/value head serves num_heads / num_kv_heads "
                         f"query heads")
    if not isinstance(rope_base, int | float) or isinstance(rope_base, bool) or rope_base <= 1:
        raise ValueError(f"{_NAME}: rope_base must be a number > 1, got {rope_base!r}")
    config = _Config(num_heads, num_kv_heads, features, bool(causal), bool(rope),
                     float(rope_base), check_positive_int(_NAME, "block_size", block_size),
                     bool(use_bias))
    if features is not None:
        _check_width(features, config)
    return config


def _attention_init(key, in_shape, config: _Config, w_init, dtype):
    """``init``: the output shape ``(N, T_q, D)`` and the projections (``state`` is ``()``)."""
    q_shape, kv_shape, _ = _split_shapes(in_shape)
    kv_shape = q_shape if kv_shape is None else kv_shape
    for arg, shape in (("queries", q_shape), ("keys_values", kv_shape)):
        if len(shape) != 3:
            raise ValueError(f"{_NAME}: {arg} must be (batch, time, features), got in_shape "
                             f"{shape}")
    width = q_shape[-1] if config.features is None else config.features
    _check_width(width, config)
    params = _init_params(key, q_shape[-1], kv_shape[-1], width, config, w_init, dtype)
    return (*q_shape[:-1], width), params, ()


def _check_width(width, config: _Config) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{_NAME}: features must be a positive int, got {width!r}")
    if width % config.num_heads:
        raise ValueError(f"{_NAME}: features (the width, {width}) must be divisible by "
                         f"num_heads ({config.num_heads})")
    if config.rope and (width // config.num_heads) % 2:
        raise ValueError(f"{_NAME}: rope=True rotates pairs of a head's features, so the head "
                         f"width features / num_heads must be even, got {width} / "
                         f"{config.num_heads} = {width // config.num_heads}")


def _kv_width(width: int, config: _Config) -> int:
    """``D_kv = num_kv_heads · d``: the width of ``K`` and ``V``."""
    return width // config.num_heads * config.num_kv_heads


def _init_params(key, q_width, kv_width, width, config: _Config, w_init, dtype) -> dict:
    k_q, k_k, k_v, k_o = jax.random.split(key, 4)
    width_kv = _kv_width(width, config)
    params = {"Wq": w_init(k_q, (q_width, width), dtype),
              "Wk": w_init(k_k, (kv_width, width_kv), dtype),
              "Wv": w_init(k_v, (kv_width, width_kv), dtype),
              "Wo": w_init(k_o, (width, width), dtype)}
    if config.use_bias:
        params.update({"bq": jnp.zeros((width,), dtype), "bk": jnp.zeros((width_kv,), dtype),
                       "bv": jnp.zeros((width_kv,), dtype), "bo": jnp.zeros((width,), dtype)})
    return params


# --- projections: Q, K, V from one product, each a dense layer ------------------------------


def _fused(params, names, use_bias: bool) -> dict:
    """The dense params ``{"W", "b"}`` of the projections ``names`` side by side: one product
    ``x [Wq Wk Wv]`` instead of three, whose dense backward gives ``[dWq dWk dWv]`` at once."""
    fused = {"W": jnp.concatenate([params["W" + n] for n in names], axis=1)}
    if use_bias:
        fused["b"] = jnp.concatenate([params["b" + n] for n in names])
    return fused


def _dense(params, x):
    z = x @ params["W"]
    if "b" in params:
        z = z + params["b"].reshape(1, 1, -1)
    return z


def _split_columns(z, widths):
    return jnp.split(z, list(itertools.accumulate(widths[:-1])), axis=-1)


def _project_qkv(params, queries, keys_values, self_attention: bool, use_bias: bool):
    """``(Q, K, V)``: in self-attention one product ``x [Wq Wk Wv]``, else ``x_q Wq`` and one
    ``x_kv [Wk Wv]``."""
    width, width_kv = params["Wq"].shape[1], params["Wk"].shape[1]
    if self_attention:
        return _split_columns(_dense(_fused(params, "qkv", use_bias), queries),
                              (width, width_kv, width_kv))
    k, v = _split_columns(_dense(_fused(params, "kv", use_bias), keys_values),
                          (width_kv, width_kv))
    return _dense(_fused(params, "q", use_bias), queries), k, v


def _backward_qkv(params, queries, keys_values, dq, dk, dv, self_attention: bool,
                  use_bias: bool):
    """The dense layer's own backward for the fused projections: ``(grads, dx_q, dx_kv)``
    (``dx_kv`` is ``None`` in self-attention, where ``dx_q`` holds the whole ``dx``)."""
    grads = {}

    def dense_backward(names, x, dz):
        dense_grads, dx = dense_layer_backward(_fused(params, names, use_bias), x, dz)
        widths = [params["W" + n].shape[1] for n in names]
        for kind in ("W", "b") if use_bias else ("W",):
            parts = _split_columns(dense_grads[kind], widths)
            grads.update({kind + n: part for n, part in zip(names, parts, strict=True)})
        return dx

    if self_attention:
        return grads, dense_backward("qkv", queries, jnp.concatenate([dq, dk, dv], -1)), None
    dx_kv = dense_backward("kv", keys_values, jnp.concatenate([dk, dv], -1))
    return grads, dense_backward("q", queries, dq), dx_kv


def _to_heads(z, num_heads: int):
    n, t, width = z.shape
    return z.reshape(n, t, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def _from_heads(z):
    n, h, t, d = z.shape
    return z.transpose(0, 2, 1, 3).reshape(n, t, h * d)


# --- rotary positions: a rotation forward, its transpose backward ----------------------------


def _rope_angles(positions, d: int, base: float, dtype):
    """``(cos, sin)`` of ``θ_{t,i} = t · base^(−2i/d)``, each ``(T, d/2)``."""
    compute = jnp.promote_types(dtype, jnp.float32)
    frequencies = base ** (-jnp.arange(0, d, 2, dtype=compute) / d)
    angles = positions.astype(compute)[:, None] * frequencies[None, :]
    return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


def rotate(z, positions, base: float, *, transpose: bool = False):
    r"""RoPE: each head's feature pairs ``(z_i, z_{i+d/2})`` rotated by ``θ_{t,i}``.

    $$ z'_i = z_i \cos\theta_{t,i} - z_{i+d/2} \sin\theta_{t,i} \qquad
    z'_{i+d/2} = z_i \sin\theta_{t,i} + z_{i+d/2} \cos\theta_{t,i} $$

    ``z``: ``(N, h, T, d)``; ``positions``: ``(T,)``. A rotation is orthogonal, so the
    backward is the transpose, the rotation by ``−θ`` (``transpose=True``).
    """
    half = z.shape[-1] // 2
    cos, sin = _rope_angles(positions, z.shape[-1], base, z.dtype)
    cos, sin = cos[None, None], (-sin if transpose else sin)[None, None]
    first, second = z[..., :half], z[..., half:]
    return jnp.concatenate([first * cos - second * sin, first * sin + second * cos], axis=-1)


# --- the layer's forward and backward --------------------------------------------------------


def _forward(params, x, config: _Config):
    queries, keys_values, key_mask = _split_inputs(x)
    self_attention = keys_values is None
    keys_values = queries if self_attention else keys_values
    _check_inputs(queries, keys_values, key_mask, config.causal)
    _check_params(params, queries, keys_values, config)
    if key_mask is not None:
        # select, never multiply: a NaN at a masked key must reach nothing (0 · NaN = NaN)
        keys_values = _select_rows(key_mask, keys_values)
        queries = keys_values if self_attention else queries
    q, k, v = _project_qkv(params, queries, keys_values, self_attention, config.use_bias)
    q = _to_heads(q, config.num_heads)
    k, v = _to_heads(k, config.num_kv_heads), _to_heads(v, config.num_kv_heads)
    if config.rope:
        q = rotate(q, jnp.arange(q.shape[2]), config.rope_base)
        k = rotate(k, jnp.arange(k.shape[2]), config.rope_base)
    o, stats = attention_forward(q, k, v, key_mask, config.causal, config.block_size)
    y = _dense(_fused(params, "o", config.use_bias), _from_heads(o))
    residuals = (queries, None if self_attention else keys_values, key_mask, q, k, v, o, stats)
    return y, residuals


# --- the decode form: an explicit KV cache as the layer's state -------------------------------


def _init_cache(config: _Config, params, batch_size: int, max_length: int, dtype=None) -> dict:
    """An empty KV cache for one attention layer: ``{"keys", "values": (N·c, max_length, d),
    "length": 0}``, row ``i·c + j`` holding sequence ``i``'s key/value head ``j`` (``c``
    heads of width ``d``). Sequences and heads share one leading axis because that is the one
    batch axis of the step's products ``Q Kᵀ`` and ``P V``: they read the cache as it is, so
    the compiled decode loop updates it in place (with a separate batch and head axis, XLA
    reshapes the updated cache for the product, and on CPU that reshape duplicates the update
    and copies the whole cache every step). Passed as the layer's state, it makes ``forward``
    the decode form; a whole model's caches come from [`jaxnn.init_cache`][jaxnn.init_cache]."""
    head_width = params["Wk"].shape[1] // config.num_kv_heads
    dtype = params["Wk"].dtype if dtype is None else dtype
    empty = jnp.zeros((batch_size * config.num_kv_heads, max_length, head_width), dtype)
    return {"keys": empty, "values": empty, "length": jnp.zeros((), jnp.int32)}


def is_cache(state) -> bool:
    return isinstance(state, dict) and set(state) == {"keys", "values", "length"}


def _check_cache(cache, x, k) -> None:
    """``k``: the new keys, ``(N, c, T_new, d)``."""
    keys = cache["keys"]
    n, c, _, d = k.shape
    if keys.ndim != 3 or keys.shape[2] != d or keys.shape[0] % c:
        raise ValueError(f"{_NAME}: the KV cache's keys have shape {tuple(keys.shape)}, not "
                         f"(sequences · {c} heads, max_length, {d}) as this layer's: the cache "
                         f"belongs to another layer")
    if keys.shape[0] != n * c:
        raise ValueError(f"{_NAME}: the KV cache holds {keys.shape[0] // c} sequences (keys of "
                         f"shape {tuple(keys.shape)}: sequences · {c} heads first), the input "
                         f"{n} (shape {tuple(x.shape)}); make the cache with jaxnn.init_cache "
                         f"for this batch size")
    if keys.dtype != k.dtype or cache["values"].dtype != k.dtype:
        raise TypeError(f"{_NAME}: the KV cache has dtype {keys.dtype}, the layer computes its "
                        f"keys in {k.dtype}; make the cache with jaxnn.init_cache(..., "
                        f"dtype={jnp.dtype(k.dtype).name})")
    if x.shape[1] > keys.shape[1]:
        raise ValueError(f"{_NAME}: {x.shape[1]} new positions (a prompt of length "
                         f"{x.shape[1]}) do not fit a KV cache of max_length {keys.shape[1]}")


def _decode(params, cache, x, config: _Config):
    """The decode form: ``x (N, T_new, D)`` holds the positions after the ``length`` already
    cached. Their keys and values are written into the cache at ``length …`` and each new query
    attends causally to the cache; returns ``(y, new_cache, None)`` (no backward: decoding is
    for inference).

    The cache is read only after the update (the updated arrays are what the products read),
    so XLA writes the new position in place and copies no cache."""
    if isinstance(x, tuple | list):
        raise ValueError(f"{_NAME}: the decode form (a KV cache as state) takes the "
                         f"self-attention input x only, got a tuple of {len(x)} inputs")
    if not config.causal:
        raise ValueError(f"{_NAME}: decoding with a KV cache needs causal=True (each position "
                         f"attends only to the ones before it)")
    _check_inputs(x, x, None, config.causal)
    _check_params(params, x, x, config)
    q, k, v = _project_qkv(params, x, x, True, config.use_bias)
    start = cache["length"]
    positions = start + jnp.arange(x.shape[1])
    q = _to_heads(q, config.num_heads)
    k, v = _to_heads(k, config.num_kv_heads), _to_heads(v, config.num_kv_heads)
    _check_cache(cache, x, k)
    if config.rope:
        q = rotate(q, positions, config.rope_base)
        k = rotate(k, positions, config.rope_base)
    n, c, t_new, d = k.shape
    zero = jnp.zeros((), start.dtype)
    keys = jax.lax.dynamic_update_slice(cache["keys"], k.reshape(n * c, t_new, d),
                                        (zero, start, zero))
    values = jax.lax.dynamic_update_slice(cache["values"], v.reshape(n * c, t_new, d),
                                          (zero, start, zero))
    if t_new == 1:
        o = _attend_one(q, keys, values, start)
    else:  # a prompt: the blockwise forward, once per generation
        as_heads = functools.partial(jnp.reshape, shape=(n, c, keys.shape[1], d))
        o, _ = attention_forward(q, as_heads(keys), as_heads(values), None, True,
                                 config.block_size, q_start=start)
    y = _dense(_fused(params, "o", config.use_bias), _from_heads(o))
    new_cache = {"keys": keys, "values": values, "length": start + t_new}
    return y, new_cache, None


def _attend_one(q, keys, values, position):
    """One new query per sequence, ``q (N, h, 1, d)`` at ``position``, attending to the cache
    ``keys, values (N·c, L, d)`` that already holds its own key (the keys at positions
    ``≤ position`` are visible): ``softmax(q Kᵀ / √d) V``.

    One row of scores needs no blockwise loop: a decode step is bound by its count of
    operations and copies, not by arithmetic, so the scores over the whole cache are one
    product, then one maximum, one ``exp`` and one product with ``V``. Both products take the
    cache as it is stored, ``K`` as the left operand of ``K q`` (rows of ``K`` against ``q``)
    and ``V`` as the right one of ``P V``, so neither transposes nor copies it."""
    n, h, _, d = q.shape
    rows, length, _ = keys.shape
    q = _scaled(q).reshape(rows, h * n // rows, d)  # (N·c, g, d): query head i uses KV head i // g
    s = jnp.einsum("bld,bgd->blg", keys, q)
    s = jnp.where((jnp.arange(length) <= position)[:, None], s, -jnp.inf)
    m = jnp.max(s, axis=1, keepdims=True)  # finite: a query always sees its own key
    p = jnp.exp(s - m)
    o = jnp.einsum("blg,bld->bgd", p, values) / jnp.sum(p, axis=1)[..., None]
    return o.reshape(n, h, 1, d)


def _select_rows(key_mask, x):
    """``x`` with the masked positions' rows replaced by zeros (a select)."""
    return jnp.where(key_mask[..., None], x, jnp.zeros((), x.dtype))


def _check_params(params, queries, keys_values, config: _Config) -> None:
    """``Wq (D_q, D)``, ``Wk``/``Wv (D_kv_in, D_kv)``, ``Wo (D, D)`` and, with biases,
    ``bq, bo (D,)``, ``bk, bv (D_kv,)``; ``D`` the configured width (``features``, by default
    the queries' width), ``D_kv = num_kv_heads · D / num_heads``."""
    width = queries.shape[-1] if config.features is None else config.features
    _check_width(width, config)
    width_kv = _kv_width(width, config)
    expected: dict[str, tuple[int, ...]] = {
        "Wq": (queries.shape[-1], width), "Wk": (keys_values.shape[-1], width_kv),
        "Wv": (keys_values.shape[-1], width_kv), "Wo": (width, width)}
    if config.use_bias:
        expected.update({"bq": (width,), "bk": (width_kv,), "bv": (width_kv,), "bo": (width,)})
    check_params(_NAME, params, expected)


def _backward(params, residuals, dy, config: _Config):
    queries, keys_values, key_mask, q, k, v, o, stats = residuals
    self_attention = keys_values is None
    o_grads, d_merged = dense_layer_backward(_fused(params, "o", config.use_bias),
                                             _from_heads(o), dy)
    dq, dk, dv = attention_backward(q, k, v, o, stats, _to_heads(d_merged, config.num_heads),
                                    key_mask, config.causal, config.block_size)
    if config.rope:  # the rotation's transpose
        dq = rotate(dq, jnp.arange(dq.shape[2]), config.rope_base, transpose=True)
        dk = rotate(dk, jnp.arange(dk.shape[2]), config.rope_base, transpose=True)
    grads, dx_q, dx_kv = _backward_qkv(params, queries, keys_values, _from_heads(dq),
                                       _from_heads(dk), _from_heads(dv), self_attention,
                                       config.use_bias)
    grads.update({kind + "o": g for kind, g in o_grads.items()})
    grads = {name: grads[name] for name in params}  # the params' own order
    if self_attention:
        return grads, (dx_q if key_mask is None else (_select_rows(key_mask, dx_q), None))
    if key_mask is None:
        return grads, (dx_q, dx_kv)
    return grads, (dx_q, _select_rows(key_mask, dx_kv), None)


# --- the blockwise core ---------------------------------------------------------------------
#
# Heads are grouped: ``q`` is ``(N, c, g, T_q, d)`` with ``c = num_kv_heads`` key/value heads
# each serving ``g`` query heads, ``k, v`` are ``(N, c, T_k, d)``, so GQA copies no K or V.
# A tile is one block of query rows against one block of keys, ``S`` of shape
# ``(..., c, g, B_q, B_k)``. The tile functions take any leading axes (``...``): ``(N,)`` when
# a tile holds all the queries, ``(blocks, N)`` for several tiles at once. Each of the five
# products of the backward reads its operands in the layout the matrix-product kernel takes
# (rows by contraction, contraction by columns), so no tile is copied transposed per step:
# ``Kᵀ``, ``Vᵀ``, ``Qᵀ`` and ``dOᵀ`` are laid out once, and ``dK``, ``dV`` accumulate
# transposed, ``dKᵀ = (Q/√d)ᵀ dS``, ``dVᵀ = dOᵀ P``.


def _scores(q_scaled, k_t):
    """``S = (Q/√d) K_bᵀ`` for one tile (``k_t = K_bᵀ``): the one expression the forward and
    the backward share, so that the backward's ``S − m`` is the forward's to the last bit."""
    return jnp.einsum("...cgqd,...cdk->...cgqk", q_scaled, k_t)


def _scaled(q):
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def _grouped(q, num_kv_heads: int):
    n, h, t, d = q.shape
    return q.reshape(n, num_kv_heads, h // num_kv_heads, t, d)


def _visible(valid, cols, rows):
    """``(..., N, 1, 1, B_q, B_k)``: which keys of a tile each query row may attend to, or
    ``None`` when all may. ``valid (..., N, B_k)``: the keys' validity, or ``None`` (all
    valid); ``cols (..., B_k)``: their positions; ``rows (..., B_q)``: the query rows'
    positions, or ``None`` (no causal mask)."""
    visible = None if valid is None else valid[..., None, None, None, :]
    if rows is not None:
        causal = cols[..., None, :] <= rows[..., :, None]
        causal = causal.reshape((*causal.shape[:-2], 1, 1, 1, *causal.shape[-2:]))
        visible = causal if visible is None else visible & causal
    return visible


def _select(visible, a, fill):
    return a if visible is None else jnp.where(visible, a, fill)


def _tile_forward(state, q_scaled, k_t, v_b, visible):
    """One tile of the online softmax: ``(m, l, a)`` updated by the keys ``k_t = K_bᵀ`` and
    the values ``v_b``."""
    m, row_sum, acc = state
    s = _select(visible, _scores(q_scaled, k_t), -jnp.inf)
    # the maximum only keeps exp() in range: the result does not depend on it
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s - m_safe[..., None])
    rescale = jnp.exp(m - m_safe)
    return (m_new, rescale * row_sum + jnp.sum(p, axis=-1),
            rescale[..., None] * acc + jnp.einsum("...cgqk,...ckd->...cgqd", p, v_b))


def _tile_probabilities(q_scaled, k_t, v_t, do, m, l_safe, visible):
    """``(P, dP)`` of one tile: ``P = exp(S − m) / l`` (0 where not visible), ``dP = dO Vᵀ``
    (``v_t = V_bᵀ``)."""
    s = _select(visible, _scores(q_scaled, k_t), -jnp.inf)
    p = jnp.exp(s - m[..., None]) / l_safe[..., None]
    return p, jnp.einsum("...cgqd,...cdk->...cgqk", do, v_t)


def _tile_row_term(p, dp, visible):
    """The tile's part of ``D = rowsum(P ⊙ dP)``."""
    return jnp.einsum("...k,k->...", _select(visible, p * dp, 0.0), jnp.ones(p.shape[-1], p.dtype))


def _tile_gradients(q_t, k_b, do_t, p, dp, row_dot, visible):
    """The tile's parts of ``dQ·√d``, ``dKᵀ``, ``dVᵀ``: ``dS = P ⊙ (dP − D)``, ``dS K_b``,
    ``(Q/√d)ᵀ dS`` and ``dVᵀ = dOᵀ P`` (``q_t``, ``do_t`` the transposed query rows; summed
    over the ``g`` query heads of a key/value head)."""
    ds = _select(visible, p * (dp - row_dot[..., None]), 0.0)
    return (jnp.einsum("...cgqk,...ckd->...cgqd", ds, k_b),
            jnp.einsum("...cdgq,...cgqk->...cdk", q_t, ds),
            jnp.einsum("...cdgq,...cgqk->...cdk", do_t, p))


def _pad_time(a, pad: int, axis: int, value=0):
    """``a`` with ``pad`` entries of ``value`` after the end of its time axis ``axis``."""
    if not pad:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis % a.ndim] = (0, pad)
    return jnp.pad(a, widths, constant_values=value)


def _split_time(a, blocks: int, axis: int, pad: int = 0, value=0):
    """``(blocks, ...)``: ``a``'s time axis ``axis``, padded by ``pad`` entries of ``value``,
    cut into ``blocks`` equal blocks, the blocks axis first."""
    a = _pad_time(a, pad, axis, value)
    axis = axis % a.ndim
    a = a.reshape((*a.shape[:axis], blocks, a.shape[axis] // blocks, *a.shape[axis + 1:]))
    return jnp.moveaxis(a, axis, 0)


def _merge_time(blocks, axis: int, length: int):
    """The inverse of ``_split_time``, trimmed to the first ``length`` positions."""
    axis = axis % (blocks.ndim - 1)
    a = jnp.moveaxis(blocks, 0, axis)
    a = a.reshape((*a.shape[:axis], -1, *a.shape[axis + 2:]))
    return jax.lax.slice_in_dim(a, 0, length, axis=axis)


class _KeyBlocks(NamedTuple):
    """K, ``Kᵀ``, V, ``Vᵀ`` as ``(blocks, N, c, B, d)`` / ``(blocks, N, c, d, B)``, the keys'
    validity ``(blocks, N, B)`` (``None``: all valid) and positions ``(blocks, B)``; the
    last block padded with invalid zero keys."""
    keys: Any
    keys_t: Any
    values: Any
    values_t: Any
    valid: Any
    cols: Any


def _key_blocks(k, v, key_mask, blocks: int, size: int, always_valid: bool = False):
    """The keys in ``blocks`` blocks of ``size``; ``valid`` is ``None`` when there is no key
    mask and no padding, or when ``always_valid`` says the caller never reaches a padding key
    (causal self-attention: only its diagonal tiles do, and those mask by position)."""
    n, t_k = k.shape[0], k.shape[2]
    pad = blocks * size - t_k
    valid = None
    if key_mask is not None or (pad and not always_valid):
        valid = jnp.ones((n, t_k), bool) if key_mask is None else key_mask
        valid = _split_time(valid, blocks, -1, pad, False)
    keys, values = (_split_time(a, blocks, -2, pad) for a in (k, v))
    return _KeyBlocks(keys, jnp.swapaxes(keys, -1, -2), values, jnp.swapaxes(values, -1, -2),
                      valid, jnp.arange(blocks * size).reshape(blocks, size))


def _query_positions(causal: bool, t_q: int, q_start):
    """``None`` (no causal mask) or each query row's position: ``0 … T_q − 1``, or
    ``q_start + 0 … q_start + T_q − 1`` when decoding after ``q_start`` cached positions."""
    if not causal:
        return None
    return jnp.arange(t_q) if q_start is None else q_start + jnp.arange(t_q)


def _empty_state(q_scaled):
    """The online softmax's start, ``m = −∞``, ``l = 0``, ``a = 0``, for the rows of
    ``q_scaled (..., c, g, B_q, d)``."""
    rows = q_scaled.shape[:-1]
    return (jnp.full(rows, -jnp.inf, q_scaled.dtype), jnp.zeros(rows, q_scaled.dtype),
            jnp.zeros_like(q_scaled))


def _transposed(a):
    """Query rows ``(..., c, g, B_q, d)`` as ``(..., c, d, g, B_q)``."""
    return jnp.moveaxis(a, -1, -3)


# --- causal self-attention: the tiles on and below the diagonal ------------------------------
#
# With ``nb`` (even) blocks, query block ``i`` needs key blocks ``0 … i``: the diagonal tile
# ``(i, i)``, under the causal element mask, and ``i`` tiles wholly below the diagonal, which
# need none (only the key mask). The ``nb`` diagonal tiles take two scan steps of ``nb / 2``
# tiles each. For the ``nb (nb − 1) / 2`` tiles below, pair ``p`` joins query blocks ``p`` and
# ``nb − 1 − p``: ``p + (nb − 1 − p) = nb − 1`` tiles, so ``nb − 1`` scan steps over all
# ``nb / 2`` pairs at once do exactly those, every step the same work. At step ``t`` pair
# ``p`` computes the tile (query block ``p``, key block ``t``) while ``t < p``, then
# (``nb − 1 − p``, ``t − p``). Each forward step reads its blocks by index (``jnp.take``)
# from the arrays as they are, ``(…, nb, B, …)`` views of the time axis, and writes its query
# blocks' state back by index (a step's query blocks are distinct). The backward takes whole
# rows instead (below), reading the keys as one window of their mirrored blocks.


def _paired_geometry(t: int, block_size: int) -> tuple[int, int] | None:
    """``(blocks, size)``: an even number of equal blocks of at most ``block_size`` positions
    covering ``t``, or ``None`` when one block covers it (nothing to skip)."""
    blocks = -(-t // block_size)
    if blocks < 2:
        return None
    blocks += blocks % 2
    return blocks, -(-t // blocks)


def _pair_schedules(blocks: int):
    """``(diagonal, below)``: each a ``(query_block, key_block)`` pair of ``(steps, nb / 2)``
    index arrays, the tiles of each step: 2 steps on the diagonal, ``nb − 1`` below it."""
    half = blocks // 2
    diagonal = np.arange(blocks).reshape(2, half)
    step = np.arange(blocks - 1)[:, None]
    pair = np.arange(half)[None, :]
    first = step < pair
    below = (np.where(first, pair, blocks - 1 - pair), np.where(first, step, step - pair))
    return ((jnp.asarray(diagonal), jnp.asarray(diagonal)),
            tuple(jnp.asarray(a) for a in below))


def _blocked(a, blocks: int, axis: int, pad: int = 0, value=0):
    """``a``'s time axis ``axis`` padded by ``pad`` entries of ``value`` and split into
    ``(blocks, B)`` in place (a view: no copy when nothing is padded)."""
    a = _pad_time(a, pad, axis, value)
    axis = axis % a.ndim
    return a.reshape((*a.shape[:axis], blocks, a.shape[axis] // blocks, *a.shape[axis + 1:]))


def _take(a, index, axis: int):
    """The blocks ``index`` of ``a`` along its blocks axis ``axis``, that axis first."""
    return jnp.moveaxis(jnp.take(a, index, axis=axis, mode="clip"), axis, 0)


def _put(a, index, axis: int, blocks, *, add: bool, unique: bool):
    """``a`` with ``blocks`` (blocks axis first) written, or added, at ``index`` along its
    blocks axis ``axis``."""
    at = a.at[(slice(None),) * (axis % a.ndim) + (index,)]
    blocks = jnp.moveaxis(blocks, 0, axis)
    return at.add(blocks, unique_indices=unique) if add else at.set(blocks, unique_indices=unique)


def _paired_visible(valid, t: int, size: int, diagonal: bool):
    """``visible(query_block, key_block)`` of a step's tiles: on the diagonal key ``j ≤`` row
    ``i`` (a padding row, at position −1, sees nothing), and the key mask ``valid
    (N, nb, B)`` if any."""
    def visible(qb, kb):
        valid_b = None if valid is None else _take(valid, kb, -2)
        if not diagonal:
            return _visible(valid_b, None, None)
        cols = kb[:, None] * size + jnp.arange(size)[None, :]
        rows = qb[:, None] * size + jnp.arange(size)[None, :]
        return _visible(valid_b, cols, jnp.where(rows < t, rows, -1))

    return visible


def _paired_forward(q_scaled, k, v, key_mask, blocks: int, size: int):
    """``(m, l, a)`` of causal self-attention over the tiles on and below the diagonal."""
    t = q_scaled.shape[-2]
    pad = blocks * size - t
    queries = _blocked(q_scaled, blocks, -2, pad)  # padding rows are zeros: finite scores
    keys_t = _blocked(jnp.swapaxes(k, -1, -2), blocks, -1, pad)
    values = _blocked(v, blocks, -2, pad)
    valid = None if key_mask is None else _blocked(key_mask, blocks, -1, pad, False)

    def steps(diagonal: bool):
        visible_of = _paired_visible(valid, t, size, diagonal)

        def step(state, tile):
            qb, kb = tile
            m, row_sum, acc = state
            new = _tile_forward((_take(m, qb, -2), _take(row_sum, qb, -2), _take(acc, qb, -3)),
                                _take(queries, qb, -3), _take(keys_t, kb, -2),
                                _take(values, kb, -3), visible_of(qb, kb))
            return tuple(_put(s, qb, axis, x, add=False, unique=True)
                         for s, x, axis in zip(state, new, (-2, -2, -3), strict=True)), None

        return step

    state = _empty_state(queries)
    for diagonal, schedule in zip((True, False), _pair_schedules(blocks), strict=True):
        state, _ = jax.lax.scan(steps(diagonal), state, schedule)
    m, row_sum, acc = (_merge_blocks(a, axis, t) for a, axis in zip(state, (-2, -2, -3),
                                                                    strict=True))
    return m, row_sum, acc


def _merge_blocks(a, axis: int, length: int):
    """The inverse of ``_blocked``: the ``(blocks, B)`` axes at ``axis`` joined, trimmed to
    ``length``."""
    axis = axis % a.ndim
    a = a.reshape((*a.shape[:axis], -1, *a.shape[axis + 2:]))
    return jax.lax.slice_in_dim(a, 0, length, axis=axis)


# The backward takes each pair's whole rows at once: the ``nb + 1`` tiles of query blocks ``p``
# (key blocks ``0 … p``) and ``nb − 1 − p`` (key blocks ``0 … nb − 1 − p``), so the softmax
# row term ``D = rowsum(P ⊙ dP)`` is complete within the step and each tile's ``P``, ``dP``
# are computed once (five products per tile; a separate pass for ``D`` would take seven). So
# that a step's temporaries stay about as large as the forward's, the sequences and key/value
# heads go through in chunks, as many per step as ``_ROW_TILE_BUDGET`` score entries allow.
_ROW_TILE_BUDGET = 1 << 19  # score entries per backward step: 32 tiles of 128 × 128


def _row_chunk(rows: int, group: int, blocks: int, size: int) -> int:
    """How many of the ``rows`` sequence-head rows (each with ``group`` query heads) one
    backward step takes: the most that divide ``rows`` and keep the step's ``nb + 1`` tiles
    within ``_ROW_TILE_BUDGET`` score entries (at least one)."""
    fits = max(1, _ROW_TILE_BUDGET // ((blocks + 1) * group * size * size))
    return max(r for r in range(1, min(rows, fits) + 1) if rows % r == 0)


def _paired_backward(q_scaled, k, v, do, m, l_safe, key_mask, blocks: int, size: int):
    """``(dQ·√d, dKᵀ, dVᵀ)`` of causal self-attention over the tiles on and below the
    diagonal, one pass over the pairs of query blocks (for a chunk of the ``N·c`` sequence and
    key/value-head rows at a time)."""
    n, c, g, t, _ = q_scaled.shape
    rows = n * c
    chunk = _row_chunk(rows, g, blocks, size)

    def chunked(a):  # (N, c, …) → (rows / chunk, chunk, 1, …): each chunk N = chunk, c = 1
        return a.reshape((rows // chunk, chunk, 1, *a.shape[2:]))

    operands = tuple(chunked(a) for a in (q_scaled, k, v, do, m, l_safe))
    if key_mask is not None:  # (N, T) → (rows / chunk, chunk, T): one row per sequence-head
        valid = jnp.broadcast_to(key_mask[:, None], (n, c, t)).reshape(rows // chunk, chunk, t)
        operands = (*operands, valid)

    def rows_pass(chunk_operands):
        return _paired_rows_backward(*chunk_operands[:6],
                                     chunk_operands[6] if key_mask is not None else None,
                                     blocks, size)

    grads = jax.lax.map(rows_pass, operands)
    return tuple(a.reshape((n, c, *a.shape[3:])) for a in grads)


def _mirrored(blocks):
    """``(2nb, …)``: the blocks ``nb − 1 … 0`` then ``0 … nb − 1`` (blocks axis first), so that
    pair ``p``'s ``nb + 1`` key blocks ``p … 0, 0 … nb − 1 − p`` are one contiguous window, at
    ``nb − 1 − p``."""
    return jnp.concatenate([jnp.flip(blocks, 0), blocks], axis=0)


def _paired_rows_backward(q_scaled, k, v, do, m, l_safe, valid, blocks: int, size: int):
    """``_paired_backward`` for one chunk: a ``lax.scan`` over the ``nb / 2`` pairs, each step
    the ``nb + 1`` tiles of its two query blocks' rows, under one element mask (key ``j ≤``
    row ``i``, all true below the diagonal; a padding row, at position −1, sees nothing).

    The keys are read as one window of their mirrored blocks (``_mirrored``) and ``dK``,
    ``dV`` are added back into the same window: no gather, no scatter. ``dO`` is divided by
    ``l`` once, so that a tile needs only ``E = exp(S − m)``: with ``dP' = (dO / l) Vᵀ``,
    ``P ⊙ dP = E ⊙ dP'``, ``D = rowsum(E ⊙ dP')``, ``dS = E ⊙ (dP' − D / l)`` and
    ``dVᵀ = (dO / l)ᵀ E``. ``E`` is exactly 0 where a key is hidden, so ``dS`` is too (``dP'``
    is finite there: hidden keys are zeros, or the key mask's zeroed rows)."""
    t = q_scaled.shape[-2]
    pad = blocks * size - t
    do = do / l_safe[..., None]
    # blocks first: (nb, N, c, g, B, d) and, transposed, (nb, N, c, d, g, B)
    queries, douts = (_split_time(a, blocks, -2, pad) for a in (q_scaled, do))
    queries_t, douts_t = (_split_time(_transposed(a), blocks, -1, pad) for a in (q_scaled, do))
    # a padding row has dO = 0 (so it adds nothing) and any finite m, l > 0
    maxima, sums = (_split_time(a, blocks, -1, pad, fill) for a, fill in ((m, 0.0),
                                                                         (l_safe, 1.0)))
    keys = _mirrored(_split_time(k, blocks, -2, pad))  # (2nb, N, c, B, d)
    keys_t, values_t = (_mirrored(_split_time(jnp.swapaxes(a, -1, -2), blocks, -1, pad))
                        for a in (k, v))  # (2nb, N, c, d, B)
    valid = None if valid is None else _mirrored(_split_time(valid, blocks, -1, pad, False))
    tile = jnp.arange(blocks + 1)
    positions = jnp.arange(size)

    def step(grads, p):
        dq, dk_t, dv_t = grads
        other = blocks - 1 - p  # the pair's second query block, and the keys' window start
        first = tile <= p  # the tiles of query block p
        qb = jnp.where(first, p, other)
        kb = jnp.where(first, p - tile, tile - p - 1)

        def window(a):
            return jax.lax.dynamic_slice_in_dim(a, other, blocks + 1, axis=0)

        def rows(a):  # each tile's query rows
            return jnp.take(a, qb, axis=0, mode="clip")

        rows_at = qb[:, None] * size + positions[None, :]
        visible = _visible(None if valid is None else window(valid),
                           kb[:, None] * size + positions[None, :],
                           jnp.where(rows_at < t, rows_at, -1))
        s = _select(visible, _scores(rows(queries), window(keys_t)), -jnp.inf)
        e = jnp.exp(s - rows(maxima)[..., None])
        dp = jnp.einsum("...cgqd,...cdk->...cgqk", rows(douts), window(values_t))
        # D / l of each of the two rows, the sum of its tiles' parts, back on each of its tiles
        rows_of = jnp.stack([first, ~first]).astype(e.dtype)  # (2, nb + 1)
        row_dot = jnp.einsum("rt,t...->r...", rows_of,
                             jnp.einsum("...k,k->...", e * dp, jnp.ones(size, e.dtype)))
        row_dot = row_dot / jnp.stack([sums[p], sums[other]])
        row_dot = jnp.where(first.reshape((-1,) + (1,) * (row_dot.ndim - 1)), row_dot[0],
                            row_dot[1])
        ds = e * (dp - row_dot[..., None])
        dq_t = jnp.einsum("...cgqk,...ckd->...cgqd", ds, window(keys))
        dk_b = jnp.einsum("...cdgq,...cgqk->...cdk", rows(queries_t), ds)
        dv_b = jnp.einsum("...cdgq,...cgqk->...cdk", rows(douts_t), e)
        dq_rows = jnp.einsum("rt,t...->r...", rows_of, dq_t)  # each row's whole dQ
        dq = dq.at[p].set(dq_rows[0]).at[other].set(dq_rows[1])
        return (dq, jax.lax.dynamic_update_slice_in_dim(dk_t, window(dk_t) + dk_b, other, 0),
                jax.lax.dynamic_update_slice_in_dim(dv_t, window(dv_t) + dv_b, other, 0)), None

    grads = (jnp.zeros_like(queries), jnp.zeros_like(keys_t), jnp.zeros_like(values_t))
    (dq, dk_t, dv_t), _ = jax.lax.scan(step, grads, jnp.arange(blocks // 2))
    dk_t, dv_t = (jnp.flip(a[:blocks], 0) + a[blocks:] for a in (dk_t, dv_t))
    return (_merge_time(dq, -2, t), _merge_time(dk_t, -1, t), _merge_time(dv_t, -1, t))


# --- one tile: every key in one block ----------------------------------------------------------
#
# When all the keys fit in one block (``T_k ≤ block_size``, training), the scores are one tile
# per query row block, ``N·h·T_q·T_k`` entries: no larger than the blockwise loop's own
# temporaries. The forward keeps ``P`` itself, so the backward needs no second ``exp`` and no
# recomputed scores: four products, ``dP = dO Vᵀ``, ``dQ = dS K``, ``dKᵀ = Qᵀ dS`` and
# ``dVᵀ = dOᵀ P``, with ``D = rowsum(P ⊙ dP)`` from the same ``P`` and ``dP``.


def _one_tile_forward(q_scaled, k, v, key_mask, causal: bool, shape):
    """``(O, (m, l, P))`` over one tile of all the keys (``P`` for the backward)."""
    n, h, t_q, d = shape
    t_k = k.shape[2]
    visible = _visible(key_mask, jnp.arange(t_k), jnp.arange(t_q) if causal else None)
    s = _select(visible, _scores(q_scaled, jnp.swapaxes(k, -1, -2)), -jnp.inf)
    m = jnp.max(s, axis=-1)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))  # 0 where nothing is seen
    e = jnp.exp(s - m[..., None])
    row_sum = jnp.sum(e, axis=-1)
    p = e / jnp.where(row_sum > 0, row_sum, 1.0)[..., None]
    o = jnp.einsum("...cgqk,...ckd->...cgqd", p, v)
    return o.reshape(n, h, t_q, d), (m.reshape(n, h, t_q), row_sum.reshape(n, h, t_q),
                                     p.reshape(n, h, t_q, t_k))


def _one_tile_backward(q_scaled, k, v, p, do, shape):
    """``(dQ, dK, dV)`` from the kept ``P``: ``dS = P ⊙ (dP − rowsum(P ⊙ dP))``."""
    n, h, t_q, d = shape
    p = p.reshape((*q_scaled.shape[:-1], p.shape[-1]))
    dp = jnp.einsum("...cgqd,...cdk->...cgqk", do, jnp.swapaxes(v, -1, -2))
    dq, dk_t, dv_t = _tile_gradients(_transposed(q_scaled), k, _transposed(do), p, dp,
                                     _tile_row_term(p, dp, None), None)
    return (_scaled(dq).reshape(n, h, t_q, d), jnp.swapaxes(dk_t, -1, -2),
            jnp.swapaxes(dv_t, -1, -2))


# --- the two entry points ---------------------------------------------------------------------


def _skips(causal: bool, t_q: int, t_k: int, q_start) -> bool:
    """Whether the tiles above the diagonal can be skipped: causal self-attention (training,
    prefill), not a decode step after cached positions."""
    return causal and q_start is None and t_q == t_k


def attention_forward(q, k, v, key_mask, causal: bool, block_size: int, q_start=None):
    """``(O, (m, l))``: ``O = softmax(QKᵀ/√d) V``, each row's maximum score ``m`` and its sum
    ``l = Σ exp(S − m)``, over tiles of at most ``block_size`` keys; ``(O, (m, l, P))`` when
    every key fits in one block (``T_k ≤ block_size``, no ``q_start``): one tile, whose
    probabilities ``P`` the backward then reuses (``_one_tile_forward``).

    ``q``: ``(N, h, T_q, d)``; ``k, v``: ``(N, c, T_k, d)`` with ``c`` dividing ``h`` (query
    head ``i`` uses key/value head ``i // (h / c)``). With ``causal=True`` query row ``r`` sits
    at position ``r`` (or ``q_start + r`` when ``q_start`` is given, as in decoding) and sees
    the keys at positions ``≤`` its own. Causal self-attention (``T_q = T_k``, no ``q_start``)
    longer than one block computes only the tiles on and below the diagonal
    (``_paired_forward``); otherwise all the queries meet each key block in turn. Rows with no
    visible key get ``O = 0``, ``m = 0`` and ``l = 0``. ``m`` and ``l`` are kept apart rather
    than as ``L = m + log l``: in float32 at large logits, ``m + log l`` rounds away ``log l``
    and the backward's ``exp(S − L)`` would no longer sum to 1.
    """
    n, h, t_q, d = q.shape
    t_k = k.shape[2]
    q_scaled = _scaled(_grouped(q, k.shape[1]))
    paired = _paired_geometry(t_q, block_size) if _skips(causal, t_q, t_k, q_start) else None
    if paired is None and t_k <= block_size and q_start is None:
        return _one_tile_forward(q_scaled, k, v, key_mask, causal, (n, h, t_q, d))
    if paired is not None:
        m, row_sum, acc = _paired_forward(q_scaled, k, v, key_mask, *paired)
    else:
        size = min(block_size, t_k)
        kb_ = _key_blocks(k, v, key_mask, -(-t_k // size), size)
        rows = _query_positions(causal, t_q, q_start)

        def step(state, block):
            k_t, v_b, valid_b, cols_b = block
            visible = _visible(valid_b, cols_b, rows)
            return _tile_forward(state, q_scaled, k_t, v_b, visible), None

        (m, row_sum, acc), _ = jax.lax.scan(step, _empty_state(q_scaled),
                                            (kb_.keys_t, kb_.values, kb_.valid, kb_.cols))
    seen = row_sum > 0
    o = acc / jnp.where(seen, row_sum, 1.0)[..., None]
    stats = (jnp.where(seen, m, 0.0).reshape(n, h, t_q), row_sum.reshape(n, h, t_q))
    return o.reshape(n, h, t_q, d), stats


def attention_backward(q, k, v, o, stats, do, key_mask, causal: bool, block_size: int,
                       q_start=None):
    """``(dQ, dK, dV)`` from the saved ``Q, K, V, O`` and ``(m, l)``, recomputing
    ``P = exp(S − m) / l`` tile by tile (the forward's tiles), with the softmax backward's row
    term ``D = rowsum(P ⊙ dP)`` and ``dS = P ⊙ (dP − D)``.

    ``D`` equals ``rowsum(dO ⊙ O)`` in exact arithmetic, but in floating point only the sum of
    the very products ``P ⊙ dP`` cancels ``dP`` exactly where a row's softmax is one-hot (large
    logits): with ``rowsum(dO ⊙ O)`` float32 gradients at inputs × 100 were off by 100 % of
    their size. Causal self-attention takes a pair of query blocks' whole rows per step
    (``_paired_backward``), so ``D`` comes from the same ``P``, ``dP`` as the gradients: five
    tile products. With one tile's ``P`` kept (``stats`` of three), four products and no
    recomputed scores. Otherwise two passes over the key blocks, the first summing ``D``
    (seven).
    With GQA a key/value head's ``dK``, ``dV`` sum over the query heads it serves.
    """
    del o  # D comes from P ⊙ dP, not from O (see above)
    n, h, t_q, d = q.shape
    c, t_k = k.shape[1], k.shape[2]
    q_scaled = _scaled(_grouped(q, c))
    do = _grouped(do, c)
    if len(stats) == 3:  # one tile, its P kept by the forward
        return _one_tile_backward(q_scaled, k, v, stats[2], do, (n, h, t_q, d))
    m, row_sum = (a.reshape(q_scaled.shape[:-1]) for a in stats)
    l_safe = jnp.where(row_sum > 0, row_sum, 1.0)
    paired = _paired_geometry(t_q, block_size) if _skips(causal, t_q, t_k, q_start) else None
    if paired is not None:
        dq, dk_t, dv_t = _paired_backward(q_scaled, k, v, do, m, l_safe, key_mask, *paired)
    else:
        size = min(block_size, t_k)
        kb_ = _key_blocks(k, v, key_mask, -(-t_k // size), size)
        rows = _query_positions(causal, t_q, q_start)
        q_t, do_t = _transposed(q_scaled), _transposed(do)

        def tile(block):
            _, k_t, v_t, valid_b, cols_b = block
            visible = _visible(valid_b, cols_b, rows)
            return (visible, *_tile_probabilities(q_scaled, k_t, v_t, do, m, l_safe, visible))

        blocks = (kb_.keys, kb_.keys_t, kb_.values_t, kb_.valid, kb_.cols)

        def row_term(row_dot, block):
            visible, p, dp = tile(block)
            return row_dot + _tile_row_term(p, dp, visible), None

        row_dot, _ = jax.lax.scan(row_term, jnp.zeros_like(m), blocks)  # D = rowsum(P ⊙ dP)

        def step(dq, block):
            visible, p, dp = tile(block)
            dq_t, dk_t, dv_t = _tile_gradients(q_t, block[0], do_t, p, dp, row_dot, visible)
            return dq + dq_t, (dk_t, dv_t)

        dq, (dk_t, dv_t) = jax.lax.scan(step, jnp.zeros_like(q_scaled), blocks)
        dk_t, dv_t = _merge_time(dk_t, -1, t_k), _merge_time(dv_t, -1, t_k)
    return (_scaled(dq).reshape(n, h, t_q, d), jnp.swapaxes(dk_t, -1, -2),
            jnp.swapaxes(dv_t, -1, -2))
