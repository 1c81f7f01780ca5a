r"""The fully connected layer, forward beside its hand-derived backward.

Forward, examples first: $x$ has shape $(m, n_{in})$ (one example per row), $W$ has shape
$(n_{in}, n_{out})$ and $b$ has shape $(n_{out},)$:

$$
Z = x W + b \qquad Z_{kj} = \sum_{i} x_{ki} W_{ij} + b_j
$$

Backward: given $dZ = \partial L / \partial Z$ of shape $(m, n_{out})$, the classic formulas
transposed to the examples-first layout:

| gradient | jaxnn (examples in rows) | classic (examples in columns) |
| --- | --- | --- |
| weights | $dW = x^\top dZ$ | $dW^{[l]} = dZ^{[l]} A^{[l-1]\top}$ |
| bias | $db = \sum_{\text{rows}} dZ$ | $db^{[l]} = \sum_{i} dZ^{[l]}_{:,i}$ |
| input | $dx = dZ\, W^\top$ | $dA^{[l-1]} = W^{[l]\top} dZ^{[l]}$ |

Entry by entry (the parameter gradients sum over the examples $k$, the input gradient over the
output features $j$):

$$
dW_{ij} = \sum_{k} x_{ki}\, dZ_{kj} \qquad db_j = \sum_{k} dZ_{kj} \qquad
dx_{ki} = \sum_{j} dZ_{kj} W_{ij}
$$

Leading axes beyond the batch (a sequence axis, say) are allowed: they are summed over in $dW$
and $db$ just like examples.

$dW$ is computed as $(dZ^\top x)^\top$ when the layer narrows its input four-fold or more (see
[`weight_gradient`][jaxnn.layers.weight_gradient]): the same sums, in the operand order XLA's CPU
backend runs fastest.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.core import (
    MATRIX_SPLIT,
    Layer,
    check_features,
    check_float,
    check_params,
    check_positive_int,
)


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
    dtype: Any = jnp.float32,
) -> Layer:
    r"""A fully connected layer $Z = x W + b$.

    For $x$ of shape $(m, n_{in})$ and the upstream gradient $dZ$ of shape $(m, n_{out})$, the
    hand-derived backward is

    $$
    dW = x^\top dZ \qquad db = \sum_{\text{rows}} dZ \qquad dx = dZ\, W^\top
    $$

    (the classic $dW = dZ\, A_{prev}^\top$, $db = \sum dZ$, $dA_{prev} = W^\top dZ$ transposed).
    Inputs may have more leading axes, ``(m, ..., n_in)``; they are flattened into rows.

    Args:
      features: ``n_out``, the number of output features.
      use_bias: whether to add ``b``.
      w_init: initializer of ``W`` (default
        [`jaxnn.initializers.lecun_normal`][jaxnn.initializers.lecun_normal], the classic
        ``randn(n_out, n_in)/sqrt(n_in)`` in the transposed layout).
      b_init: initializer of ``b`` (default zeros).
      dtype: dtype of the parameters.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] with params ``{"W": (n_in, n_out), "b": (n_out,)}``.

    Examples:
        Build, initialize for inputs of 4 features (the batch size is left open, ``-1``), apply:

        >>> layer = jaxnn.dense(3)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 4))
        >>> out_shape, params["W"].shape, params["b"].shape
        ((-1, 3), (4, 3), (3,))
        >>> x = jnp.arange(8.0).reshape(2, 4)
        >>> z, state = jaxnn.apply(layer, params, state, x)
        >>> z.shape
        (2, 3)

        ``jax.grad`` runs the hand-derived backward. With $L = \sum Z$, $dZ$ is all ones, so
        $dW = x^\top dZ$ and $db = \sum_{\text{rows}} dZ = (2, 2, 2)$:

        >>> grads = jax.grad(lambda p: jaxnn.apply(layer, p, state, x)[0].sum())(params)
        >>> bool(jnp.allclose(grads["W"], x.T @ jnp.ones((2, 3))))
        True
        >>> grads["b"].tolist()
        [2.0, 2.0, 2.0]
    """
    features = check_positive_int("dense", "features", features)
    w_init = initializers.lecun_normal() if w_init is None else w_init

    def init(key, in_shape):
        return _init(key, in_shape, features, use_bias, w_init, b_init, dtype)

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        _check_params_and_input(params, x, features, use_bias)
        z = x @ params["W"]
        if use_bias:
            # an explicit reshape: jaxnn never relies on implicit rank promotion
            z = z + params["b"].reshape((1,) * (z.ndim - 1) + (-1,))
        return z, state, x

    return Layer("dense", init, forward, _backward, weights=("W",), tensor_split=MATRIX_SPLIT)


def _init(key, in_shape, features: int, use_bias: bool, w_init, b_init, dtype):
    """``W`` of shape ``(n_in, features)`` and ``b`` of shape ``(features,)``."""
    in_shape = tuple(in_shape)
    if len(in_shape) < 2:
        raise ValueError(f"dense: in_shape must be (batch, ..., features), got {in_shape}")
    n_in = in_shape[-1]
    k_w, k_b = jax.random.split(key)
    params = {"W": w_init(k_w, (n_in, features), dtype)}
    if use_bias:
        params["b"] = b_init(k_b, (features,), dtype)
    return (*in_shape[:-1], features), params, ()


def _check_params_and_input(params, x: jax.Array, features: int, use_bias: bool) -> None:
    """``W (n_in, features)``, ``b (features,)`` and ``x (batch, ..., n_in)``, or a clear error."""
    expected = {"W": (None, features), "b": (features,)} if use_bias else {"W": (None, features)}
    check_params("dense", params, expected)
    check_float("dense", x)
    if x.ndim < 2:
        raise ValueError(
            f"dense: expected input of shape (batch, ..., {params['W'].shape[0]}), got shape "
            f"{tuple(x.shape)} (rank {x.ndim}); add a batch axis, e.g. x[None]"
        )
    check_features("dense", x, params["W"].shape[0])


def _backward(params, x: jax.Array, dz: jax.Array):
    """``dW = xᵀ dZ``, ``db = Σ_rows dZ``, ``dx = dZ Wᵀ``, leading axes flattened into rows."""
    w = params["W"]
    x2 = x.reshape(-1, x.shape[-1])
    dz2 = dz.reshape(-1, dz.shape[-1])
    grads = {"W": weight_gradient(x2, dz2).astype(w.dtype)}
    if "b" in params:
        grads["b"] = jnp.sum(dz2, axis=0).astype(params["b"].dtype)
    dx = (dz @ w.T).astype(x.dtype)
    return grads, dx


def weight_gradient(x: jax.Array, dz: jax.Array) -> jax.Array:
    r"""$dW = x^\top dZ$ for $x$ of shape $(m, n_{in})$ and $dZ$ of shape $(m, n_{out})$.

    Every entry is the sum over examples

    $$
    dW_{ij} = \sum_{k} x_{ki}\, dZ_{kj}
    $$

    and only the operand order of the matrix product depends on the backend. When lowering for
    XLA's CPU backend, a layer that narrows its input four-fold or more
    ($4\, n_{out} \le n_{in}$) computes
    $(dZ^\top x)^\top$, which that backend runs several times faster than $x^\top dZ$ (figures in
    ``benchmarks/README.md``); an ``optimization_barrier`` keeps XLA's simplifier from folding
    the transpose back into the slow product. Every other backend (GPU, TPU) gets the plain
    $x^\top dZ$: the choice is made at lowering time by ``jax.lax.platform_dependent``.

    Args:
      x: the layer's input, flattened to rows: shape ``(m, n_in)``.
      dz: the gradient of the layer's output: shape ``(m, n_out)``.

    Returns:
      $dW$, of shape ``(n_in, n_out)`` (the shape of ``W``).

    Examples:
        >>> x = jnp.arange(6.0).reshape(3, 2)
        >>> dz = jnp.ones((3, 1))
        >>> jaxnn.layers.weight_gradient(x, dz).tolist()  # column sums of x
        [[6.0], [9.0]]

        A layer narrowing 8 features to 2 (four-fold or more) gets the same sums:

        >>> x, dz = jnp.ones((5, 8)), jnp.ones((5, 2))
        >>> dw = jaxnn.layers.weight_gradient(x, dz)
        >>> dw.shape, bool(jnp.allclose(dw, x.T @ dz))
        ((8, 2), True)
    """
    n_in, n_out = x.shape[-1], dz.shape[-1]
    if 4 * n_out > n_in:
        return x.T @ dz
    return jax.lax.platform_dependent(
        x, dz,
        cpu=lambda x, dz: jax.lax.optimization_barrier(dz.T @ x).T,
        default=lambda x, dz: x.T @ dz,
    )
