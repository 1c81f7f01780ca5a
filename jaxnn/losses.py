"""Losses, each a value and its hand-derived derivative with respect to the prediction.

The classic derivation keeps ``dJ/dA[L]`` apart from the network, because it depends on the task: a
:class:`Loss` is ``value(prediction, target)`` next to ``grad(prediction, target)``, both by
hand. Calling a loss, ``loss(prediction, target)``, gives the value with ``grad`` attached
through ``jax.custom_vjp``; ``loss.value`` alone is the plain-autodiff reference.

Reductions: every loss is a mean over examples (axis 0). The elementwise losses
(binary cross-entropy, mean squared error) average over every entry, so with one output per
example this is the classic ``J = (1/m) Σ_i L_i``; softmax cross-entropy sums over the class axis
and averages over examples.

Targets never broadcast: a target whose shape differs from the prediction's is an error.

Stable fused forms. A sigmoid output followed by :func:`binary_cross_entropy` has
``dZ[L] = (1/m)(A[L] − Y)``; :func:`binary_cross_entropy_with_logits` computes exactly that from
the logits without ever forming ``log(0)``. :func:`jaxnn.chain.fuse` rewrites
``serial(…, sigmoid())`` with ``binary_cross_entropy`` into ``serial(…)`` with
``binary_cross_entropy_with_logits``, and the training functions apply it, so training always
uses the stable ``a − y``. Softmax
cross-entropy takes logits and its derivative is ``(p − onehot)/m``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.core import Array

__all__ = [
    "Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mean_squared_error",
    "softmax_cross_entropy",
]

#: The clipping of :func:`binary_cross_entropy`: probabilities are kept in ``[ε, 1 − ε]`` with
#: ``ε = max(BCE_EPSILON, machine epsilon of the prediction's dtype)`` (1e-7 in float32 and
#: float64; 2⁻¹⁰ in float16, 2⁻⁷ in bfloat16, so the derivative ``1/ε`` stays representable).
BCE_EPSILON = 1e-7


def _bce_epsilon(dtype) -> float:
    return max(BCE_EPSILON, float(jnp.finfo(dtype).eps))


class Loss(NamedTuple):
    """A loss: a value and its hand-derived gradient with respect to the prediction.

    Attributes:
      name: shown in reports.
      value: ``(prediction, target) -> scalar``.
      grad: ``(prediction, target) -> dJ/dprediction``, derived by hand.
      fused: for a loss on probabilities, ``(activation_name, loss_on_logits)``: the last layer
        and the stable loss that replaces the pair (see :func:`jaxnn.chain.fuse`).
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    fused: tuple[str, Loss] | None = None

    def __call__(self, prediction: Array, target: Array) -> Array:
        """The loss value, with ``jax.grad`` running the hand-derived ``grad``."""
        return _loss_rule(self)(prediction, target)

    def __repr__(self) -> str:
        return self.name


def _loss_rule(loss: Loss):
    @jax.custom_vjp
    def rule(prediction, target):
        return loss.value(prediction, target)

    def rule_fwd(prediction, target):
        return loss.value(prediction, target), (prediction, target)

    def rule_bwd(saved, g):
        prediction, target = saved
        return (g * loss.grad(prediction, target)).astype(prediction.dtype), None

    rule.defvjp(rule_fwd, rule_bwd)
    return rule


def _same_shape(name: str, prediction: Array, target: Array) -> None:
    if prediction.ndim == 0:
        raise ValueError(f"{name}: prediction must have a batch axis, got a scalar")
    if tuple(prediction.shape) != tuple(target.shape):
        raise ValueError(
            f"{name}: target shape {tuple(target.shape)} does not match prediction shape "
            f"{tuple(prediction.shape)}; targets are never broadcast (reshape them, e.g. "
            f"y.reshape(-1, 1))"
        )
    if prediction.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (0 examples)")


def _at_least_float32(x: Array) -> Array:
    """Half-precision predictions are reduced in float32: sums of many float16 terms overflow
    and ``1 − ε`` rounds to 1 there."""
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return x.astype(jnp.float32)
    return x


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_binary_labels(name: str, target: Array) -> None:
    """Labels must lie in [0, 1]; checked when the array is concrete (outside jit)."""
    if _is_concrete(target) and target.size:
        values = np.asarray(target)
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise ValueError(f"{name}: labels must lie in [0, 1], got values in [{lo}, {hi}]")


# --- binary cross-entropy on probabilities ---------------------------------------------------


def _clip_straight_through(a: Array, eps: float) -> Array:
    # the value uses the clipped probability; its derivative passes through unchanged, so that a
    # saturated wrong prediction still gets the gradient of the clipped point (never zero)
    return a + jax.lax.stop_gradient(jnp.clip(a, eps, 1 - eps) - a)


def _bce_value(a: Array, y: Array) -> Array:
    eps = _bce_epsilon(a.dtype)
    a = _at_least_float32(a)
    _same_shape("binary_cross_entropy", a, y)
    _check_binary_labels("binary_cross_entropy", y)
    a = _clip_straight_through(a, eps)
    y = y.astype(a.dtype)
    return -jnp.mean(y * jnp.log(a) + (1 - y) * jnp.log1p(-a))


def _bce_grad(a: Array, y: Array) -> Array:
    eps = _bce_epsilon(a.dtype)
    a = _at_least_float32(a)
    # dJ/dA = -(1/n) (y/a - (1-y)/(1-a)), at the clipped a
    a = jnp.clip(a, eps, 1 - eps)
    y = y.astype(a.dtype)
    return -(y / a - (1 - y) / (1 - a)) / a.size


# --- binary cross-entropy on logits -----------------------------------------------------------


def _bce_logits_value(z: Array, y: Array) -> Array:
    z = _at_least_float32(z)
    # -[y log σ(z) + (1-y) log(1-σ(z))] = log(1 + e^z) − z·y
    _same_shape("binary_cross_entropy_with_logits", z, y)
    _check_binary_labels("binary_cross_entropy_with_logits", y)
    y = y.astype(z.dtype)
    # = softplus(z) − z·y, with softplus by logaddexp (autodiff-exact at z = 0 too)
    return jnp.mean(jnp.logaddexp(z, 0.0) - z * y)


def _bce_logits_grad(z: Array, y: Array) -> Array:
    z = _at_least_float32(z)
    # the fused derivative: dZ[L] = (1/n)(σ(z) − y) = (1/n)(a − y)
    return (jax.nn.sigmoid(z) - y.astype(z.dtype)) / z.size


# --- softmax cross-entropy on logits ----------------------------------------------------------


def _class_targets(name: str, z: Array, y: Array) -> Array:
    """Integer labels of shape ``z.shape[:-1]`` become one-hot; one-hot/probabilities pass."""
    if z.ndim < 2:
        raise ValueError(f"{name}: logits must be (batch, ..., classes), got shape {z.shape}")
    if z.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (0 examples)")
    k = z.shape[-1]
    if jnp.issubdtype(y.dtype, jnp.integer):
        if tuple(y.shape) != tuple(z.shape[:-1]):
            raise ValueError(
                f"{name}: integer labels must have shape {tuple(z.shape[:-1])} (logits "
                f"{tuple(z.shape)} without the class axis), got {tuple(y.shape)}"
            )
        if _is_concrete(y) and y.size:
            values = np.asarray(y)
            lo, hi = int(values.min()), int(values.max())
            if lo < 0 or hi >= k:
                raise ValueError(
                    f"{name}: class labels must lie in [0, {k - 1}] for {k} classes, got values "
                    f"in [{lo}, {hi}]"
                )
            return jax.nn.one_hot(y, k, dtype=z.dtype)
        # traced labels cannot be checked while tracing: an out-of-range label gets a row of
        # NaN (loss and gradient NaN, which jaxnn.debug's check mode names) instead of the
        # all-zero row one_hot gives, which would drop the example without a trace
        valid = (y >= 0) & (y < k)
        onehot = jax.nn.one_hot(y, k, dtype=z.dtype)
        return jnp.where(valid[..., None], onehot, jnp.nan)
    if tuple(y.shape) != tuple(z.shape):
        raise ValueError(
            f"{name}: one-hot targets must have the logits' shape {tuple(z.shape)}, got "
            f"{tuple(y.shape)}; pass integer labels of shape {tuple(z.shape[:-1])} instead"
        )
    return y.astype(z.dtype)


def _softmax_ce_value(z: Array, y: Array) -> Array:
    z = _at_least_float32(z)
    # J = (1/m) Σ_i Σ_j y_ij (logsumexp(z_i) − z_ij), with logsumexp taken stably
    onehot = _class_targets("softmax_cross_entropy", z, y)
    log_p = jax.nn.log_softmax(z, axis=-1)
    m = z.size // z.shape[-1]
    return -jnp.sum(onehot * log_p) / m


def _softmax_ce_grad(z: Array, y: Array) -> Array:
    z = _at_least_float32(z)
    # dJ/dz_ij = (1/m)(p_ij Σ_k y_ik − y_ij) = (1/m)(p − onehot) for targets summing to 1
    onehot = _class_targets("softmax_cross_entropy", z, y)
    p = jax.nn.softmax(z, axis=-1)
    m = z.size // z.shape[-1]
    return (p * jnp.sum(onehot, axis=-1, keepdims=True) - onehot) / m


# --- mean squared error -----------------------------------------------------------------------


def _mse_value(p: Array, y: Array) -> Array:
    p = _at_least_float32(p)
    _same_shape("mean_squared_error", p, y)
    return jnp.mean((p - y.astype(p.dtype)) ** 2)


def _mse_grad(p: Array, y: Array) -> Array:
    p = _at_least_float32(p)
    # dJ/dp = (2/n)(p − y)
    return 2 * (p - y.astype(p.dtype)) / p.size


binary_cross_entropy_with_logits = Loss(
    "binary_cross_entropy_with_logits", _bce_logits_value, _bce_logits_grad
)

binary_cross_entropy = Loss(
    "binary_cross_entropy",
    _bce_value,
    _bce_grad,
    fused=("sigmoid", binary_cross_entropy_with_logits),
)
softmax_cross_entropy = Loss("softmax_cross_entropy", _softmax_ce_value, _softmax_ce_grad)
mean_squared_error = Loss("mean_squared_error", _mse_value, _mse_grad)
