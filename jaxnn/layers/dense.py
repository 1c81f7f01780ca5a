"""The fully connected layer, forward beside its hand-derived backward.

Forward (examples first, ``x`` of shape ``(m, n_in)``): ``Z = x W + b`` with ``W`` of shape
``(n_in, n_out)`` and ``b`` of shape ``(n_out,)``.

Backward, the seed's formulas transposed to the examples-first layout:

* ``dW = xᵀ dZ``      (seed: ``dW[l] = dZ[l] A[l-1]ᵀ``)
* ``db = Σ_rows dZ``  (seed: ``db[l] = Σ_i dZ[l][:, i]``)
* ``dx = dZ Wᵀ``      (seed: ``dA[l-1] = W[l]ᵀ dZ[l]``)

Leading axes beyond the batch (a sequence axis, say) are allowed: they are summed over in ``dW``
and ``db`` just like examples.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnn import initializers
from jaxnn.core import Layer, check_features, check_float


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
      w_init: initializer of ``W`` (default :func:`jaxnn.initializers.lecun_normal`, the seed's
        ``randn(n_out, n_in)/sqrt(n_in)`` in the transposed layout).
      b_init: initializer of ``b`` (default zeros).
      dtype: dtype of the parameters.

    Returns:
      A :class:`jaxnn.Layer` with params ``{"W": (n_in, n_out), "b": (n_out,)}``.
    """
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(f"dense: features must be a positive int, got {features!r}")
    w_init = initializers.lecun_normal() if w_init is None else w_init
    name = "dense"

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) < 2:
            raise ValueError(
                f"{name}: in_shape must be (batch, ..., features), got {in_shape}"
            )
        n_in = in_shape[-1]
        k_w, k_b = jax.random.split(key)
        params = {"W": w_init(k_w, (n_in, features), dtype)}
        if use_bias:
            params["b"] = b_init(k_b, (features,), dtype)
        return in_shape[:-1] + (features,), params, ()

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_float(name, x)
        check_features(name, x, params["W"].shape[0])
        z = x @ params["W"]
        if use_bias:
            # an explicit reshape: jaxnn never relies on implicit rank promotion
            z = z + params["b"].reshape((1,) * (z.ndim - 1) + (-1,))
        return z, state, x

    def backward(params, x, dz):
        w = params["W"]
        x2 = x.reshape(-1, x.shape[-1])
        dz2 = dz.reshape(-1, dz.shape[-1])
        grads = {"W": (x2.T @ dz2).astype(w.dtype)}
        if use_bias:
            grads["b"] = jnp.sum(dz2, axis=0).astype(params["b"].dtype)
        dx = (dz @ w.T).astype(x.dtype)
        return grads, dx

    return Layer(name, init, forward, backward)
