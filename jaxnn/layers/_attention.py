r"""Multi-head attention, memory-linear: a blockwise forward beside its hand-derived backward.

Per head, with ``Q = x_q Wq``, ``K = x_kv Wk``, ``V = x_kv Wv`` split into ``h`` heads of width
``d`` and the output ``y = concat_heads(O) Wo``:

$$ Q = x_q W_q + b_q \qquad K = x_{kv} W_k + b_k \qquad V = x_{kv} W_v + b_v $$

$$ S = \frac{Q K^\top}{\sqrt{d}} \qquad P = \operatorname{softmax}(S) \qquad O = P V $$

$$ y = \operatorname{concat}_{\text{heads}}(O)\, W_o + b_o $$

with the softmax taken along each row of $S$ (over the keys) and masked entries of $S$ set to
$-\infty$.

The forward never forms ``S`` whole: it runs over blocks of keys keeping, per query row, the
running maximum ``m``, the running sum ``l = Σ exp(S − m)`` and the running ``Σ exp(S − m) V``,
rescaling all three by ``exp(m_old − m_new)`` when the maximum grows. For the key block $j$,
with $S_j = Q K_j^\top / \sqrt{d}$ and $a$ the running sum of rows of $V$, each query row
updates

$$ m' = \max\left(m, \max_{k} (S_j)_k\right) $$

$$ l' = e^{m - m'}\, l + \sum_{k} e^{(S_j)_k - m'} $$

$$ a' = e^{m - m'}\, a + e^{S_j - m'}\, V_j $$

starting from $m = -\infty$, $l = 0$, $a = 0$, and ends with

$$ O = \frac{a}{l} $$

It saves ``Q, K, V, O`` and, per query row, the final maximum ``m`` and sum ``l``, nothing of
size ``T × T`` (``m`` and ``l`` are kept apart: in float32 at large logits ``m + log l`` would
round ``log l`` away).

The backward recomputes ``P = exp(S − m) / l`` block by block, with ``S`` computed by the same
expression as in the forward, so ``S − m`` is exact (``dO`` the gradient of ``O``):

$$ P = \frac{\exp(S - m)}{l} \qquad dP = dO\, V^\top \qquad D = \operatorname{rowsum}(P \odot dP) $$

$$ dV = P^\top dO \qquad dS = P \odot (dP - D) \qquad
dQ = \frac{dS\, K}{\sqrt{d}} \qquad dK = \frac{dS^\top Q}{\sqrt{d}} $$

$D$ is the softmax backward's row term. In exact arithmetic it equals
$\operatorname{rowsum}(dO \odot O)$ (for query row $i$,
$\sum_k P_{ik}\, dP_{ik} = dO_i \cdot \sum_k P_{ik} V_k = dO_i \cdot O_i$), but only the sum of
the very products $P \odot dP$ cancels $dP$ exactly in a row whose softmax is one-hot, as at
large logits; so a first pass over the key blocks sums it, and a second forms $dS$.

Then come the projections' classic dense backward (``dWq = x_qᵀ dQ``, ``dx_q = dQ Wqᵀ``, ...):

$$ dW_q = x_q^\top dQ \qquad db_q = \sum_{i} dQ_{i} \qquad dx_q = dQ\, W_q^\top $$

and the same for $K$, $V$ and the output projection (with $dy$ and $\operatorname{concat}(O)$);
in self-attention $x_q = x_{kv} = x$ and $dx = dx_q + dx_k + dx_v$.
A query row whose keys are all masked outputs ``O = 0`` and passes no gradient.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.core import Layer, TensorSplit, check_float, check_params, check_positive_int

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
    features: int | None = None,
    causal: bool = False,
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

    The forward runs over blocks of ``block_size`` keys (the last block padded with masked
    keys) and keeps only ``Q, K, V``, the attention output and each row's log-sum-exp for the
    backward, which recomputes the probabilities block by block (derivation in the module
    docstring and docs/design.md).

    Args:
      num_heads: the number of heads ``h``; ``features`` must be divisible by it.
      features: the width ``D`` of ``Q``, ``K``, ``V`` and the output (default: the queries'
        width).
      causal: mask the keys after each query.
      block_size: keys per block of the forward and backward loops.
      use_bias: add biases ``bq, bk, bv, bo``.
      w_init: initializer of ``Wq, Wk, Wv, Wo`` (default lecun normal).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params
      ``{"Wq": (D_q, D), "Wk": (D_kv, D), "Wv": (D_kv, D), "Wo": (D, D)}`` and biases
      ``"bq", "bk", "bv", "bo"`` of shape ``(D,)``.

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
    """
    num_heads = check_positive_int(_NAME, "num_heads", num_heads)
    block_size = check_positive_int(_NAME, "block_size", block_size)
    if features is not None:
        _check_width(features, num_heads)
    w_init = initializers.lecun_normal() if w_init is None else w_init

    def init(key, in_shape):
        return _attention_init(key, in_shape, features, num_heads, use_bias, w_init, dtype)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        y, residuals = _forward(params, x, num_heads, causal, block_size, use_bias,
                                features)
        return y, state, residuals

    def backward(params, residuals, dy):
        return _backward(params, residuals, dy, num_heads, causal, block_size, use_bias)

    return Layer(_NAME, init, forward, backward, weights=("Wq", "Wk", "Wv", "Wo"),
                 tensor_split=TensorSplit(column=(("Wq", -1), ("Wk", -1), ("Wv", -1), ("bq", -1),
                                                  ("bk", -1), ("bv", -1)),
                                          row=(("Wo", -2),), pair=True))


def _attention_init(key, in_shape, features, num_heads: int, use_bias: bool, w_init, dtype):
    """``init``: the output shape ``(N, T_q, D)`` and the projections (``state`` is ``()``)."""
    q_shape, kv_shape, _ = _split_shapes(in_shape)
    kv_shape = q_shape if kv_shape is None else kv_shape
    for arg, shape in (("queries", q_shape), ("keys_values", kv_shape)):
        if len(shape) != 3:
            raise ValueError(f"{_NAME}: {arg} must be (batch, time, features), got in_shape "
                             f"{shape}")
    width = q_shape[-1] if features is None else features
    _check_width(width, num_heads)
    params = _init_params(key, q_shape[-1], kv_shape[-1], width, use_bias, w_init, dtype)
    return q_shape[:-1] + (width,), params, ()


def _check_width(width, num_heads: int) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{_NAME}: features must be a positive int, got {width!r}")
    if width % num_heads:
        raise ValueError(f"{_NAME}: features (the width, {width}) must be divisible by "
                         f"num_heads ({num_heads})")


def _init_params(key, q_width, kv_width, width, use_bias, w_init, dtype) -> dict:
    k_q, k_k, k_v, k_o = jax.random.split(key, 4)
    params = {"Wq": w_init(k_q, (q_width, width), dtype),
              "Wk": w_init(k_k, (kv_width, width), dtype),
              "Wv": w_init(k_v, (kv_width, width), dtype),
              "Wo": w_init(k_o, (width, width), dtype)}
    if use_bias:
        params.update({b: jnp.zeros((width,), dtype) for b in ("bq", "bk", "bv", "bo")})
    return params


# --- projections: a dense per Q, K, V, O ---------------------------------------------------


def _project(params, x, w: str, b: str, use_bias: bool):
    z = x @ params[w]
    if use_bias:
        z = z + params[b].reshape(1, 1, -1)
    return z


def _to_heads(z, num_heads: int):
    n, t, width = z.shape
    return z.reshape(n, t, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def _from_heads(z):
    n, h, t, d = z.shape
    return z.transpose(0, 2, 1, 3).reshape(n, t, h * d)


def _forward(params, x, num_heads, causal, block_size, use_bias, features=None):
    queries, keys_values, key_mask = _split_inputs(x)
    self_attention = keys_values is None
    keys_values = queries if self_attention else keys_values
    _check_inputs(queries, keys_values, key_mask, causal)
    _check_params(params, queries, keys_values, num_heads, use_bias,
                  queries.shape[-1] if features is None else features)
    if key_mask is not None:
        # select, never multiply: a NaN at a masked key must reach nothing (0 · NaN = NaN)
        keys_values = _select_rows(key_mask, keys_values)
        queries = keys_values if self_attention else queries
    q = _to_heads(_project(params, queries, "Wq", "bq", use_bias), num_heads)
    k = _to_heads(_project(params, keys_values, "Wk", "bk", use_bias), num_heads)
    v = _to_heads(_project(params, keys_values, "Wv", "bv", use_bias), num_heads)
    o, stats = attention_forward(q, k, v, key_mask, causal, block_size)
    y = _project(params, _from_heads(o), "Wo", "bo", use_bias)
    residuals = (queries, None if self_attention else keys_values, key_mask, q, k, v, o, stats)
    return y, residuals


def _select_rows(key_mask, x):
    """``x`` with the masked positions' rows replaced by zeros (a select)."""
    return jnp.where(key_mask[..., None], x, jnp.zeros((), x.dtype))


def _check_params(params, queries, keys_values, num_heads: int, use_bias: bool,
                  width: int) -> None:
    """``Wq (D_q, D)``, ``Wk``/``Wv (D_kv, D)``, ``Wo (D, D)`` and, with biases, ``b* (D,)``,
    ``D`` the configured width (``features``, by default the queries' width)."""
    expected = {"Wq": (queries.shape[-1], width), "Wk": (keys_values.shape[-1], width),
                "Wv": (keys_values.shape[-1], width), "Wo": (width, width)}
    if use_bias:
        expected.update({b: (width,) for b in ("bq", "bk", "bv", "bo")})
    check_params(_NAME, params, expected)
    _check_width(width, num_heads)


def _backward(params, residuals, dy, num_heads, causal, block_size, use_bias):
    queries, keys_values, key_mask, q, k, v, o, stats = residuals
    self_attention = keys_values is None
    keys_values = queries if self_attention else keys_values
    grads = {}
    d_merged = _dense_backward(params, _from_heads(o), dy, "Wo", "bo", use_bias, grads)
    dq, dk, dv = attention_backward(q, k, v, o, stats, _to_heads(d_merged, num_heads),
                                    key_mask, causal, block_size)
    dx_q = _dense_backward(params, queries, _from_heads(dq), "Wq", "bq", use_bias, grads)
    dx_k = _dense_backward(params, keys_values, _from_heads(dk), "Wk", "bk", use_bias, grads)
    dx_v = _dense_backward(params, keys_values, _from_heads(dv), "Wv", "bv", use_bias, grads)
    grads = {name: grads[name] for name in params}  # the params' own order
    if self_attention:
        dx = dx_q + dx_k + dx_v
        return grads, (dx if key_mask is None else (_select_rows(key_mask, dx), None))
    if key_mask is None:
        return grads, (dx_q, dx_k + dx_v)
    return grads, (dx_q, _select_rows(key_mask, dx_k + dx_v), None)


def _dense_backward(params, x, dz, w: str, b: str, use_bias: bool, grads: dict):
    """The classic dense backward: ``dW = xᵀ dZ``, ``db = Σ dZ`` into ``grads``; returns
    ``dx = dZ Wᵀ``."""
    x2 = x.reshape(-1, x.shape[-1])
    dz2 = dz.reshape(-1, dz.shape[-1])
    grads[w] = (x2.T @ dz2).astype(params[w].dtype)
    if use_bias:
        grads[b] = jnp.sum(dz2, axis=0).astype(params[b].dtype)
    return (dz @ params[w].T).astype(x.dtype)


# --- the blockwise core ---------------------------------------------------------------------


def _key_blocks(k, v, key_mask, block_size: int):
    """K, V and the key-validity mask as ``(blocks, N, h, B, d)`` / ``(blocks, N, B)``; the last
    block padded with masked keys."""
    n, h, t_k, d = k.shape
    size = min(block_size, t_k)
    blocks = -(-t_k // size)
    pad = blocks * size - t_k
    valid = jnp.ones((n, t_k), bool) if key_mask is None else key_mask
    if pad:
        k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
        valid = jnp.pad(valid, ((0, 0), (0, pad)))

    def split(a):
        return jnp.moveaxis(a.reshape(n, h, blocks, size, d), 2, 0)

    return split(k), split(v), jnp.moveaxis(valid.reshape(n, blocks, size), 1, 0), size


def _visible(valid_block, start, t_q: int, size: int, causal: bool):
    """``(N, 1, T_q, B)``: which keys of the block each query row may attend to."""
    visible = valid_block[:, None, None, :]
    if causal:
        rows = jnp.arange(t_q)[:, None]
        cols = start + jnp.arange(size)[None, :]
        visible = visible & (cols <= rows)[None, None]
    return visible


def _scores(q_scaled, k_block):
    """``S = (Q/√d) K_bᵀ`` for one key block: the one expression the forward and the backward
    share, so that the backward's ``S − m`` is the forward's to the last bit."""
    return jnp.einsum("nhqd,nhkd->nhqk", q_scaled, k_block)


def _scaled(q):
    return q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)


def attention_forward(q, k, v, key_mask, causal: bool, block_size: int):
    """``(O, (m, l))``: ``O = softmax(QKᵀ/√d) V``, each row's maximum score ``m`` and its sum
    ``l = Σ exp(S − m)``, over key blocks.

    ``q``: ``(N, h, T_q, d)``; ``k, v``: ``(N, h, T_k, d)``. Rows with no visible key get
    ``O = 0``, ``m = 0`` and ``l = 0``. ``m`` and ``l`` are kept apart rather than as
    ``L = m + log l``: in float32 at large logits, ``m + log l`` rounds away ``log l`` and the
    backward's ``exp(S − L)`` would no longer sum to 1.
    """
    n, h, t_q, d = q.shape
    q_scaled = _scaled(q)
    k_blocks, v_blocks, valid_blocks, size = _key_blocks(k, v, key_mask, block_size)
    starts = jnp.arange(k_blocks.shape[0]) * size

    def step(carry, block):
        m, row_sum, acc = carry
        k_b, v_b, valid_b, start = block
        visible = _visible(valid_b, start, t_q, size, causal)
        s = jnp.where(visible, _scores(q_scaled, k_b), -jnp.inf)
        # the maximum only keeps exp() in range: the result does not depend on it
        m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(s, axis=-1)))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        p = jnp.exp(s - m_safe[..., None])
        rescale = jnp.exp(m - m_safe)
        row_sum = rescale * row_sum + jnp.sum(p, axis=-1)
        acc = rescale[..., None] * acc + jnp.einsum("nhqk,nhkd->nhqd", p, v_b)
        return (m_new, row_sum, acc), None

    init = (jnp.full((n, h, t_q), -jnp.inf, q.dtype), jnp.zeros((n, h, t_q), q.dtype),
            jnp.zeros_like(q))
    (m, row_sum, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, valid_blocks, starts))
    seen = row_sum > 0
    o = acc / jnp.where(seen, row_sum, 1.0)[..., None]
    return o, (jnp.where(seen, m, 0.0), row_sum)


def attention_backward(q, k, v, o, stats, do, key_mask, causal: bool, block_size: int):
    """``(dQ, dK, dV)`` from the saved ``Q, K, V, O`` and ``(m, l)``, recomputing
    ``P = exp(S − m) / l`` block by block, in two passes: the first sums the softmax backward's
    row term ``D = rowsum(P ⊙ dP)``, the second forms ``dS = P ⊙ (dP − D)`` and the gradients.

    ``D`` equals ``rowsum(dO ⊙ O)`` in exact arithmetic, but in floating point only the sum of
    the very products ``P ⊙ dP`` cancels ``dP`` exactly where a row's softmax is one-hot (large
    logits): with ``rowsum(dO ⊙ O)`` float32 gradients at inputs × 100 were off by 100 % of
    their size. The first pass costs two of the backward's seven block products.
    """
    n, h, t_q, d = q.shape
    t_k = k.shape[2]
    m, row_sum = stats
    q_scaled = _scaled(q)
    l_safe = jnp.where(row_sum > 0, row_sum, 1.0)
    k_blocks, v_blocks, valid_blocks, size = _key_blocks(k, v, key_mask, block_size)
    blocks = (k_blocks, v_blocks, valid_blocks, jnp.arange(k_blocks.shape[0]) * size)

    def probabilities(k_b, v_b, valid_b, start):
        """``(visible, P, dP)`` of one key block: ``P = exp(S − m) / l``, ``dP = dO Vᵀ``."""
        visible = _visible(valid_b, start, t_q, size, causal)
        s = jnp.where(visible, _scores(q_scaled, k_b), -jnp.inf)
        p = jnp.exp(s - m[..., None]) / l_safe[..., None]
        return visible, p, jnp.einsum("nhqd,nhkd->nhqk", do, v_b)

    def row_term(row_dot, block):
        visible, p, dp = probabilities(*block)
        return row_dot + jnp.sum(jnp.where(visible, p * dp, 0.0), axis=-1), None

    row_dot, _ = jax.lax.scan(row_term, jnp.zeros_like(m), blocks)  # D = rowsum(P ⊙ dP)

    def step(dq, block):
        k_b = block[0]
        visible, p, dp = probabilities(*block)
        dv_b = jnp.einsum("nhqk,nhqd->nhkd", p, do)  # dV = Pᵀ dO
        ds = jnp.where(visible, p * (dp - row_dot[..., None]), 0.0)  # dS = P ⊙ (dP − D)
        dq = dq + jnp.einsum("nhqk,nhkd->nhqd", ds, k_b)
        dk_b = jnp.einsum("nhqk,nhqd->nhkd", ds, q_scaled)
        return dq, (dk_b, dv_b)

    dq, (dk_blocks, dv_blocks) = jax.lax.scan(step, jnp.zeros_like(q), blocks)

    def merge(blocks):
        return jnp.moveaxis(blocks, 0, 2).reshape(n, h, -1, d)[:, :, :t_k]

    return _scaled(dq), merge(dk_blocks), merge(dv_blocks)
