r"""Positions and the transformer block, each forward beside its hand-derived backward.

Positional embeddings add a ``(T, D)`` table to a ``(N, T, D)`` sequence, ``y = x + P[:T]``:

$$ y_{n,t} = x_{n,t} + P_t \qquad dx = dy $$

* learned ([`positional_embedding`][jaxnn.positional_embedding]): ``P`` is a parameter;
  ``dP[:T] = Σ_batch dy``, the rows past ``T`` get 0; ``dx = dy``;
* sinusoidal ([`sinusoidal_positional_embedding`][jaxnn.sinusoidal_positional_embedding]):
  ``P[t, 2i] = sin(t / 10000^(2i/D))``, ``P[t, 2i+1] = cos(t / 10000^(2i/D))``, fixed;
  ``dx = dy``.

[`transformer_block`][jaxnn.transformer_block] is the pre-norm block made of the library's own
layers: ``x + attention(layer_norm(x))``, then ``x + dense(D)(gelu(dense(r·D)(layer_norm(x))))``,
that is, with $\operatorname{LN}$ the layer norm and $\operatorname{MHA}$ the attention,

$$ u = x + \operatorname{MHA}\left(\operatorname{LN}_1(x)\right) $$

$$ y = u + \operatorname{gelu}\left(\operatorname{LN}_2(u)\, W_1 + b_1\right) W_2 + b_2 $$

($W_1$ is $(D, rD)$, $W_2$ is $(rD, D)$), so its backward is the chain of their hand-derived
backward passes, each residual adding its identity path:

$$ du = dy + J_{\text{mlp}}^\top\, dy \qquad dx = du + J_{\text{attn}}^\top\, du $$

where $J_{\text{mlp}}$ and $J_{\text{attn}}$ are the Jacobians of the two branches
(layer norm included).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn import initializers
from jaxnn.core import MATRIX_SPLIT, Layer, check_float, check_params
from jaxnn.layers._activations import gelu_layer
from jaxnn.layers._attention import multi_head_attention
from jaxnn.layers._combinators import residual, serial
from jaxnn.layers._dense import dense
from jaxnn.layers._norm import layer_norm

__all__ = ["positional_embedding", "sinusoidal_positional_embedding", "transformer_block"]


def _check_sequence(name: str, x, max_length: int | None) -> None:
    check_float(name, x)
    if x.ndim != 3:
        raise ValueError(f"{name}: expected a sequence of shape (batch, time, features), got "
                         f"shape {tuple(x.shape)}")
    if max_length is not None and x.shape[1] > max_length:
        raise ValueError(f"{name}: the sequence has {x.shape[1]} positions, more than "
                         f"max_length={max_length}")


def _sequence_shape(name: str, in_shape, max_length: int | None) -> tuple:
    in_shape = tuple(in_shape)
    if len(in_shape) != 3 or not all(isinstance(d, int) for d in in_shape):
        raise ValueError(f"{name}: in_shape must be (batch, time, features), got {in_shape}")
    if max_length is not None and in_shape[1] > max_length:
        raise ValueError(f"{name}: in_shape has {in_shape[1]} positions, more than "
                         f"max_length={max_length}")
    return in_shape


def positional_embedding(
    max_length: int,
    *,
    w_init: initializers.Initializer | None = None,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A learned position table added to a sequence: ``y[n, t] = x[n, t] + P[t]``.

    Backward: ``dP[t] = Σ_n dy[n, t]`` for ``t < T`` (0 for the rows past ``T``), ``dx = dy``:

    $$
    y_{n,t} = x_{n,t} + P_t \qquad
    dP_t = \sum_{n} dy_{n,t} \;\; (t < T), \quad dP_t = 0 \;\; (t \geq T) \qquad dx = dy
    $$

    The table is not a weight: L2 does not act on it.

    Args:
      max_length: the number of rows of ``P``; sequences may be shorter.
      w_init: initializer of ``P`` (default normal with stddev 0.02).
      dtype: dtype of ``P``.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"positions": (max_length, D)}``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxnn
      >>> layer = jaxnn.positional_embedding(16)
      >>> _, params, _ = layer.init(jax.random.key(0), (-1, 5, 3))
      >>> params["positions"].shape
      (16, 3)
      >>> y, _ = jaxnn.apply(layer, params, (), jnp.zeros((2, 5, 3)))
      >>> bool((y[1] == params["positions"][:5]).all())
      True

      The table's gradient sums over the batch; the rows past the sequence get 0:

      >>> def total(params):
      ...     return jaxnn.apply(layer, params, (), jnp.zeros((2, 5, 3)))[0].sum()
      >>> d_positions = jax.grad(total)(params)["positions"]
      >>> d_positions[:5].min().item(), d_positions[:5].max().item(), d_positions[5:].max().item()
      (2.0, 2.0, 0.0)
    """
    name = "positional_embedding"
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"{name}: max_length must be a positive int, got {max_length!r}")
    w_init = initializers.normal(0.02) if w_init is None else w_init

    def init(key, in_shape):
        in_shape = _sequence_shape(name, in_shape, max_length)
        return in_shape, {"positions": w_init(key, (max_length, in_shape[2]), dtype)}, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        _check_sequence(name, x, max_length)
        check_params(name, params, {"positions": (max_length, x.shape[2])})
        table = params["positions"]
        if is_position_state(state):  # decoding: the positions after those already seen
            rows = jax.lax.dynamic_slice_in_dim(table, state["length"], x.shape[1])
            return x + rows[None].astype(x.dtype), advance(state, x.shape[1]), None
        return x + table[None, : x.shape[1]].astype(x.dtype), state, x.shape[1]

    def backward(params, length, dy):
        table = params["positions"]
        d_rows = jnp.sum(dy, axis=0).astype(table.dtype)
        return {"positions": jnp.zeros_like(table).at[:length].set(d_rows)}, dy

    def init_cache(params, batch_size, cache_length, dtype=None):
        del batch_size, dtype
        if params["positions"].shape[0] < cache_length:
            raise ValueError(
                f"init_cache: max_length={cache_length} is past the context limit of the "
                f"model's positional_embedding table ({params['positions'].shape[0]} "
                f"positions); a model with rope=True attention has no such limit")
        return position_state()

    return Layer(name, init, forward, backward, init_cache=init_cache)


def sinusoidal_table(length: int, features: int) -> np.ndarray:
    """``P[t, 2i] = sin(t / 10000^(2i/D))``, ``P[t, 2i+1] = cos(t / 10000^(2i/D))``."""
    positions = np.arange(length)[:, None]
    frequencies = 1.0 / 10000.0 ** (np.arange(0, features, 2) / features)
    table = np.zeros((length, features))
    table[:, 0::2] = np.sin(positions * frequencies)
    table[:, 1::2] = np.cos(positions * frequencies[: features // 2])
    return table


def _sinusoids(positions, features: int, dtype):
    """``sinusoidal_table``'s rows at traced ``positions`` (the decode form)."""
    compute = jnp.promote_types(dtype, jnp.float32)
    frequencies = 1.0 / 10000.0 ** (jnp.arange(0, features, 2, dtype=compute) / features)
    angles = positions.astype(compute)[:, None] * frequencies[None, :]
    table = jnp.zeros((positions.shape[0], features), compute)
    table = table.at[:, 0::2].set(jnp.sin(angles))
    table = table.at[:, 1::2].set(jnp.cos(angles[:, : features // 2]))
    return table.astype(dtype)


def position_state() -> dict:
    """The decode state of a position layer: how many positions were seen, ``{"length": 0}``
    (made by [`jaxnn.init_cache`][jaxnn.init_cache])."""
    return {"length": jnp.zeros((), jnp.int32)}


def is_position_state(state) -> bool:
    return isinstance(state, dict) and set(state) == {"length"}


def advance(state: dict, steps: int) -> dict:
    return {"length": state["length"] + steps}


def sinusoidal_positional_embedding() -> Layer:
    r"""The fixed sinusoidal positions added to a sequence: ``y = x + P[:T]`` (no parameters).

    For a width $D$, position $t$ and $i = 0, 1, \ldots$:

    $$
    P_{t,2i} = \sin\left(\frac{t}{10000^{2i/D}}\right) \qquad
    P_{t,2i+1} = \cos\left(\frac{t}{10000^{2i/D}}\right)
    $$

    Backward: ``dx = dy``.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] without params or state, so it can be called directly.

    Examples:
      >>> import jax.numpy as jnp, jaxnn
      >>> layer = jaxnn.sinusoidal_positional_embedding()
      >>> layer(jnp.zeros((1, 3, 2)))[0, 0].tolist()     # t = 0: sin 0, cos 0
      [0.0, 1.0]
      >>> y = layer(jnp.zeros((1, 3, 4)))
      >>> [round(v, 4) for v in y[0, 1].tolist()]        # t = 1: sin 1, cos 1, sin 0.01, cos 0.01
      [0.8415, 0.5403, 0.01, 1.0]
    """
    name = "sinusoidal_positional_embedding"

    def init(key, in_shape):
        del key
        return _sequence_shape(name, in_shape, None), (), ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        _check_sequence(name, x, None)
        check_params(name, params, {})
        if is_position_state(state):  # decoding: the positions after those already seen
            positions = state["length"] + jnp.arange(x.shape[1])
            return x + _sinusoids(positions, x.shape[2], x.dtype)[None], advance(
                state, x.shape[1]), None
        table = jnp.asarray(sinusoidal_table(x.shape[1], x.shape[2]), x.dtype)
        return x + table[None], state, None

    def backward(params, residuals, dy):
        return (), dy

    def init_cache(params, batch_size, max_length, dtype=None):
        del params, batch_size, max_length, dtype
        return position_state()

    return Layer(name, init, forward, backward, init_cache=init_cache)


def _width_dense(ratio: int, widen: bool) -> Layer:
    """The library's [`dense`][jaxnn.dense] whose output width is ``ratio ×`` (or ``1/ratio ×``) its
    input's: ``init``, ``forward`` and ``backward`` are those of ``dense(width)`` with the
    width that follows from the input (so its parameters are checked as any dense layer's)."""

    def width(n_in: int) -> int:
        return n_in * ratio if widen else n_in // ratio

    def init(key, in_shape):
        return dense(width(in_shape[-1])).init(key, in_shape)

    def forward(params, state, x, *, key=None, train=False):
        return dense(width(x.shape[-1])).forward(params, state, x, key=key, train=train)

    def backward(params, residuals, dy):
        return dense(dy.shape[-1]).backward(params, residuals, dy)

    return Layer("dense", init, forward, backward, weights=("W",), tensor_split=MATRIX_SPLIT)


def transformer_block(
    num_heads: int,
    mlp_ratio: int = 4,
    *,
    num_kv_heads: int | None = None,
    causal: bool = False,
    rope: bool = False,
    block_size: int = 128,
) -> Layer:
    r"""A pre-norm transformer block on ``(N, T, D)``, made of the library's own layers.

    ``x ← x + multi_head_attention(layer_norm(x))``, then
    ``x ← x + dense(D)(gelu(dense(mlp_ratio·D)(layer_norm(x))))``; ``D`` is the input's width
    (divisible by ``num_heads``):

    $$ u = x + \operatorname{MHA}\left(\operatorname{LN}_1(x)\right) \qquad
    y = u + \operatorname{gelu}\left(\operatorname{LN}_2(u)\, W_1 + b_1\right) W_2 + b_2 $$

    It is a [`jaxnn.serial`][jaxnn.serial] of two [`jaxnn.residual`][jaxnn.residual] branches
    (params nest the same way), so its backward is theirs.

    Args:
      num_heads: the attention's heads.
      mlp_ratio: the MLP's hidden width as a multiple of ``D``.
      num_kv_heads: the attention's key/value heads (grouped-query attention; default
        ``num_heads``).
      causal: causal attention (a language model).
      rope: rotary positions inside the attention (then the model needs no position table).
      block_size: the attention's key block size.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] named ``"transformer_block"``.

    Examples:
      >>> import jax, jaxnn
      >>> block = jaxnn.transformer_block(2, causal=True)
      >>> out_shape, params, state = block.init(jax.random.key(0), (-1, 6, 8))
      >>> out_shape
      (-1, 6, 8)
      >>> block
      transformer_block(residual(serial(layer_norm, multi_head_attention)),
                        residual(serial(layer_norm, dense, gelu, dense)))
      >>> attention_params, mlp_params = params[0][0], params[1][0]
      >>> mlp_params[1]["W"].shape, mlp_params[3]["W"].shape     # W_1 (D, 4D), W_2 (4D, D)
      ((8, 32), (32, 8))
      >>> y, _ = jaxnn.apply(block, params, state, jnp.ones((2, 6, 8)))
      >>> y.shape
      (2, 6, 8)
    """
    if not isinstance(mlp_ratio, int) or isinstance(mlp_ratio, bool) or mlp_ratio < 1:
        raise ValueError(f"transformer_block: mlp_ratio must be a positive int, got "
                         f"{mlp_ratio!r}")
    attention = multi_head_attention(num_heads, num_kv_heads=num_kv_heads, causal=causal,
                                     rope=rope, block_size=block_size)
    mlp = serial(layer_norm(), _width_dense(mlp_ratio, True), gelu_layer(),
                 _width_dense(mlp_ratio, False))
    return _named_block(residual(serial(layer_norm(), attention)), residual(mlp))


def _named_block(*branches: Layer) -> Layer:
    block = serial(*branches)
    return block._replace(name="transformer_block",
                          rebuild=lambda subs: _named_block(*subs))
