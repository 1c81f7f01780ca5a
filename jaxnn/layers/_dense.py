"""The fully connected layer, forward beside its hand-derived backward.

Forward (examples first, ``x`` of shape ``(m, n_in)``): ``Z = x W + b`` with ``W`` of shape
``(n_in, n_out)`` and ``b`` of shape ``(n_out,)``.

Backward, the classic formulas transposed to the examples-first layout:

* ``dW = xᵀ dZ``      (classic: ``dW[l] = dZ[l] A[l-1]ᵀ``)
* ``db = Σ_rows dZ``  (classic: ``db[l] = Σ_i dZ[l][:, i]``)
* ``dx = dZ Wᵀ``      (classic: ``dA[l-1] = W[l]ᵀ dZ[l]``)

Leading axes beyond the batch (a sequence axis, say) are allowed: they are summed over in ``dW``
and ``db`` just like examples.

``dW`` is computed as ``(dZᵀ x)ᵀ`` when the layer narrows its input four-fold or more (see
[`weight_gradient`][jaxnn.layers.weight_gradient]): the same sums, in the operand order XLA's CPU
backend runs fastest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.core import Layer, check_features, check_float, check_params, check_positive_int


def dense(
    features: int,
    *,
    use_bias: bool = True,
    w_init: initializers.Initializer | None = None,
    b_init: initializers.Initializer = initializers.zeros,
    dtype=jnp.float32,
) -> Layer:
    """A fully connected layer ``Z = x W + b``.

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

    return Layer("dense", init, forward, _backward, weights=("W",))


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
    return in_shape[:-1] + (features,), params, ()


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
    """``dW = xᵀ dZ`` for ``x`` of shape ``(m, n_in)`` and ``dZ`` of shape ``(m, n_out)``.

    Every entry is the sum over examples ``dW[i, j] = Σ_k x[k, i] dZ[k, j]``; only the operand
    order of the matrix product depends on the backend. When lowering for XLA's CPU backend, a
    layer that narrows its input four-fold or more (``4·n_out ≤ n_in``) computes
    ``(dZᵀ x)ᵀ``, which that backend runs several times faster than ``xᵀ dZ`` (figures in
    ``benchmarks/README.md``); an ``optimization_barrier`` keeps XLA's simplifier from folding
    the transpose back into the slow product. Every other backend (GPU, TPU) gets the plain
    ``xᵀ dZ``: the choice is made at lowering time by ``jax.lax.platform_dependent``.
    """
    n_in, n_out = x.shape[-1], dz.shape[-1]
    if 4 * n_out > n_in:
        return x.T @ dz
    return jax.lax.platform_dependent(
        x, dz,
        cpu=lambda x, dz: jax.lax.optimization_barrier(dz.T @ x).T,
        default=lambda x, dz: x.T @ dz,
    )
