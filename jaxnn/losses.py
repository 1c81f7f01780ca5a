"""Losses, each a value and its hand-derived derivatives.

The classic derivation keeps ``dJ/dA[L]`` apart from the network, because it depends on the task: a
[`Loss`][jaxnn.Loss] is ``value(prediction, target)`` next to ``grad(prediction, target)``, both by
hand, and ``target_grad(prediction, target)``, the derivative with respect to the target (for
distillation from a learned teacher, or a loss between two network outputs). Calling a loss,
``loss(prediction, target)``, gives the value with both derivatives attached through
``jax.custom_vjp``; ``loss.value`` alone is the plain-autodiff reference.

Reductions: every loss is a mean over examples (axis 0). The elementwise losses
(binary cross-entropy, mean squared error) average over every entry, so with one output per
example this is the classic ``J = (1/m) Σ_i L_i``; softmax cross-entropy sums over the class axis
and averages over examples.

Targets never broadcast: a target whose shape differs from the prediction's is an error.

Stable fused forms. A sigmoid output followed by
[`binary_cross_entropy`][jaxnn.binary_cross_entropy] has
``dZ[L] = (1/m)(A[L] − Y)``;
[`binary_cross_entropy_with_logits`][jaxnn.binary_cross_entropy_with_logits] computes exactly that
from
the logits without ever forming ``log(0)``. [`jaxnn.fuse`][jaxnn.fuse] rewrites
``serial(…, sigmoid())`` with ``binary_cross_entropy`` into ``serial(…)`` with
``binary_cross_entropy_with_logits``, and the training functions apply it, so training always
uses the stable ``a − y``. Softmax
cross-entropy takes logits and its derivative is ``(p − onehot)/m``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.core import Array, Record

__all__ = [
    "Loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "mean_squared_error",
    "softmax_cross_entropy",
]

#: The clipping of [`binary_cross_entropy`][jaxnn.binary_cross_entropy]: probabilities are
#: kept in ``[ε, 1 − ε]`` with ``ε = max(BCE_EPSILON, machine epsilon of the prediction's
#: dtype)`` (1e-7 in float32 and float64; 2⁻¹⁰ in float16, 2⁻⁷ in bfloat16, so the derivative
#: ``1/ε`` stays representable).
BCE_EPSILON = 1e-7


def _bce_epsilon(dtype) -> float:
    return max(BCE_EPSILON, float(jnp.finfo(dtype).eps))


@dataclasses.dataclass(frozen=True, repr=False)
class Loss(Record):
    """A loss: a value and its hand-derived derivatives.

    A frozen record read like a NamedTuple (fields, ``_replace``); unlike a NamedTuple it can be
    weakly referenced, so ``jax.jit(loss)`` works.

    Attributes:
      name: shown in reports.
      value: ``(prediction, target) -> scalar``.
      grad: ``(prediction, target) -> dJ/dprediction``, derived by hand.
      fused: for a loss on probabilities, ``(activation_name, loss_on_logits)``: the last layer
        and the stable loss that replaces the pair (see [`jaxnn.fuse`][jaxnn.fuse]).
      target_grad: ``(prediction, target) -> dJ/dtarget``, derived by hand (``None`` for integer
        targets). A loss without one refuses to be differentiated with respect to its target
        (an error, never a silent zero); its target may still be a constant.
    """

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    fused: tuple[str, Loss] | None = None
    target_grad: Callable[[Array, Array], Array | None] | None = None

    def __call__(self, prediction: Array, target: Array) -> Array:
        """The loss value, with ``jax.grad`` running the hand-derived derivatives."""
        return _loss_rule(self)(prediction, target)

    def __repr__(self) -> str:
        return self.name


def _primal(x):
    return x.value, x.perturbed


def _loss_rule(loss: Loss):
    @jax.custom_vjp
    def rule(prediction, target):
        return loss.value(prediction, target)

    def rule_fwd(prediction, target):
        (prediction, _), (target, target_perturbed) = _primal(prediction), _primal(target)
        if target_perturbed and loss.target_grad is None:
            raise TypeError(
                f"{loss.name}: this loss has no hand-derived derivative with respect to its "
                f"target (target_grad), so it cannot be differentiated through the target; "
                f"give it one (Loss(..., target_grad=...)) or pass "
                f"jax.lax.stop_gradient(target)"
            )
        return loss.value(prediction, target), (prediction, target, target_perturbed)

    def rule_bwd(saved, g):
        prediction, target, target_perturbed = saved
        if isinstance(g, jax.custom_derivatives.SymbolicZero):
            g = jnp.zeros((), prediction.dtype)
        dprediction = (g * loss.grad(prediction, target)).astype(prediction.dtype)
        dtarget = None
        if target_perturbed:
            derivative = loss.target_grad(prediction, target)
            dtarget = None if derivative is None else (g * derivative).astype(target.dtype)
        return dprediction, dtarget

    rule.defvjp(rule_fwd, rule_bwd, symbolic_zeros=True)
    return rule


def _make_loss(name, value, grad, target_grad, doc, fused=None) -> Loss:
    """A built-in loss, with its own documentation for ``help()``."""
    loss = Loss(name, value, grad, fused=fused, target_grad=target_grad)
    object.__setattr__(loss, "__doc__", doc)
    return loss


def _check_prediction(name: str, prediction: Array) -> None:
    dtype = getattr(prediction, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{name}: predictions must be floating-point, got dtype {dtype}; a loss compares "
            f"the network's real-valued output with the target (convert integer predictions "
            f"with .astype(jnp.float32))"
        )


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


def _binary_labels(name: str, y: Array, dtype) -> Array:
    """Labels in ``[0, 1]`` as ``dtype``. Concrete labels outside it, or NaN, are an error (a
    −1/+1 file convention, say); traced ones (under ``jit``) become NaN there, so the loss and
    its gradient are NaN (which [`jaxnn.debug`][jaxnn.debug]'s check mode names), never a wrong
    number."""
    if _is_concrete(y) and y.size:
        values = np.asarray(y, np.float64)
        if np.isnan(values).any():
            raise ValueError(f"{name}: labels must lie in [0, 1], got NaN labels")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"{name}: labels must lie in [0, 1], got values in [{lo}, {hi}]"
                + ("; for −1/+1 labels pass (y + 1) / 2" if lo == -1 else "")
            )
        return y.astype(dtype)
    y = y.astype(dtype)
    return jnp.where((y >= 0) & (y <= 1), y, jnp.nan)


def _probabilities(name: str, a: Array) -> Array:
    """Predictions in ``[0, 1]``. Concrete ones outside it (logits passed by mistake) are an
    error; traced ones become NaN there (not the finite loss of the clipped point, nor inf).
    NaN predictions pass through as NaN."""
    if _is_concrete(a) and a.size:
        values = np.asarray(a, np.float64)
        finite = values[~np.isnan(values)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(
                f"{name}: predictions must be probabilities in [0, 1], got values in "
                f"[{finite.min()}, {finite.max()}]; for logits use "
                f"binary_cross_entropy_with_logits (or end the model with jaxnn.sigmoid())"
            )
        return a
    return jnp.where((a >= 0) & (a <= 1), a, jnp.nan)


# --- binary cross-entropy on probabilities ---------------------------------------------------

_BCE = "binary_cross_entropy"


def _clip_straight_through(a: Array, eps: float) -> Array:
    # the value uses the clipped probability; its derivative passes through unchanged, so that a
    # saturated wrong prediction still gets the gradient of the clipped point (never zero)
    return a + jax.lax.stop_gradient(jnp.clip(a, eps, 1 - eps) - a)


def _bce_inputs(a: Array, y: Array) -> tuple[Array, Array, float]:
    _check_prediction(_BCE, a)
    eps = _bce_epsilon(a.dtype)
    a = _probabilities(_BCE, _at_least_float32(a))
    _same_shape(_BCE, a, y)
    return a, _binary_labels(_BCE, y, a.dtype), eps


def _bce_value(a: Array, y: Array) -> Array:
    a, y, eps = _bce_inputs(a, y)
    a = _clip_straight_through(a, eps)
    return -jnp.mean(y * jnp.log(a) + (1 - y) * jnp.log1p(-a))


def _bce_grad(a: Array, y: Array) -> Array:
    a, y, eps = _bce_inputs(a, y)
    # dJ/dA = -(1/n) (y/a - (1-y)/(1-a)), at the clipped a
    a = jnp.clip(a, eps, 1 - eps)
    return -(y / a - (1 - y) / (1 - a)) / a.size


def _bce_target_grad(a: Array, y: Array) -> Array:
    a, y, eps = _bce_inputs(a, y)
    # dJ/dY = -(1/n) (log a − log(1 − a)), at the clipped a
    a = jnp.clip(a, eps, 1 - eps)
    return -(jnp.log(a) - jnp.log1p(-a)) / a.size


# --- binary cross-entropy on logits -----------------------------------------------------------

_BCE_LOGITS = "binary_cross_entropy_with_logits"


def _bce_logits_inputs(z: Array, y: Array) -> tuple[Array, Array]:
    _check_prediction(_BCE_LOGITS, z)
    z = _at_least_float32(z)
    _same_shape(_BCE_LOGITS, z, y)
    return z, _binary_labels(_BCE_LOGITS, y, z.dtype)


def _bce_logits_value(z: Array, y: Array) -> Array:
    z, y = _bce_logits_inputs(z, y)
    # -[y log σ(z) + (1-y) log(1-σ(z))] = log(1 + e^z) − z·y
    # = softplus(z) − z·y, with softplus by logaddexp (autodiff-exact at z = 0 too)
    return jnp.mean(jnp.logaddexp(z, 0.0) - z * y)


def _bce_logits_grad(z: Array, y: Array) -> Array:
    z, y = _bce_logits_inputs(z, y)
    # the fused derivative: dZ[L] = (1/n)(σ(z) − y) = (1/n)(a − y)
    return (jax.nn.sigmoid(z) - y) / z.size


def _bce_logits_target_grad(z: Array, y: Array) -> Array:
    z, y = _bce_logits_inputs(z, y)
    # dJ/dY = −(1/n) z  (plus 0·y, which keeps a NaN label NaN)
    return -(z + 0 * y) / z.size


# --- softmax cross-entropy on logits ----------------------------------------------------------

_SOFTMAX_CE = "softmax_cross_entropy"


def _class_targets(name: str, z: Array, y: Array) -> Array:
    """Integer labels of shape ``z.shape[:-1]`` become one-hot; one-hot/probabilities pass."""
    _check_prediction(name, z)
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
    onehot = _class_targets(_SOFTMAX_CE, z, y)
    log_p = jax.nn.log_softmax(z, axis=-1)
    m = z.size // z.shape[-1]
    return -jnp.sum(onehot * log_p) / m


def _softmax_ce_grad(z: Array, y: Array) -> Array:
    z = _at_least_float32(z)
    # dJ/dz_ij = (1/m)(p_ij Σ_k y_ik − y_ij) = (1/m)(p − onehot) for targets summing to 1
    onehot = _class_targets(_SOFTMAX_CE, z, y)
    p = jax.nn.softmax(z, axis=-1)
    m = z.size // z.shape[-1]
    return (p * jnp.sum(onehot, axis=-1, keepdims=True) - onehot) / m


def _softmax_ce_target_grad(z: Array, y: Array) -> Array | None:
    z = _at_least_float32(z)
    onehot = _class_targets(_SOFTMAX_CE, z, y)
    if jnp.issubdtype(y.dtype, jnp.integer):
        return None  # class ids take no gradient
    # dJ/dy_ij = −(1/m) log p_ij  (plus 0·y, which keeps a NaN target NaN)
    m = z.size // z.shape[-1]
    return -(jax.nn.log_softmax(z, axis=-1) + 0 * onehot) / m


# --- mean squared error -----------------------------------------------------------------------

_MSE = "mean_squared_error"


def _mse_inputs(p: Array, y: Array) -> tuple[Array, Array]:
    _check_prediction(_MSE, p)
    p = _at_least_float32(p)
    _same_shape(_MSE, p, y)
    return p, y.astype(p.dtype)


def _mse_value(p: Array, y: Array) -> Array:
    p, y = _mse_inputs(p, y)
    return jnp.mean((p - y) ** 2)


def _mse_grad(p: Array, y: Array) -> Array:
    p, y = _mse_inputs(p, y)
    # dJ/dp = (2/n)(p − y)
    return 2 * (p - y) / p.size


def _mse_target_grad(p: Array, y: Array) -> Array:
    p, y = _mse_inputs(p, y)
    # dJ/dy = −(2/n)(p − y)
    return -2 * (p - y) / p.size


binary_cross_entropy_with_logits = _make_loss(
    _BCE_LOGITS, _bce_logits_value, _bce_logits_grad, _bce_logits_target_grad,
    """Binary cross-entropy on logits: ``J = (1/n) Σ [softplus(z) − z·y]``.

    The stable fused form of a sigmoid followed by
    [`binary_cross_entropy`][jaxnn.binary_cross_entropy], averaged over
    every entry. Labels lie in ``[0, 1]`` (soft labels allowed); concrete labels outside it or
    NaN are an error, traced ones (under ``jit``) give NaN.

    Derivatives: ``dJ/dz = (1/n)(σ(z) − y)``, ``dJ/dy = −z/n``.
    """,
)

binary_cross_entropy = _make_loss(
    _BCE, _bce_value, _bce_grad, _bce_target_grad,
    """Binary cross-entropy on probabilities: ``J = −(1/n) Σ [y log a + (1 − y) log(1 − a)]``.

    ``a`` is clipped to ``[ε, 1 − ε]`` (``BCE_EPSILON``) with a straight-through derivative.
    Predictions must be probabilities: concrete values outside ``[0, 1]`` (logits by mistake)
    are an error, traced ones give NaN; labels as for
    [`binary_cross_entropy_with_logits`][jaxnn.binary_cross_entropy_with_logits].
    Training rewrites a final sigmoid with this loss into the fused form
    ([`jaxnn.fuse`][jaxnn.fuse]).

    Derivatives: ``dJ/da = −(1/n)(y/a − (1 − y)/(1 − a))``, ``dJ/dy = −(1/n) log(a/(1 − a))``.
    """,
    fused=("sigmoid", binary_cross_entropy_with_logits),
)

softmax_cross_entropy = _make_loss(
    _SOFTMAX_CE, _softmax_ce_value, _softmax_ce_grad, _softmax_ce_target_grad,
    """Softmax cross-entropy on logits: ``J = −(1/m) Σ_i Σ_j y_ij log softmax(z_i)_j``.

    Logits are ``(batch, ..., classes)``; targets are integer class ids of shape
    ``z.shape[:-1]`` or one-hot/probability rows of ``z``'s shape. Concrete ids out of range are
    an error; traced ones give a row of NaN.

    Derivatives: ``dJ/dz = (1/m)(p − onehot)``; ``dJ/dy = −(1/m) log p`` for float targets
    (class ids take no gradient).
    """,
)

mean_squared_error = _make_loss(
    _MSE, _mse_value, _mse_grad, _mse_target_grad,
    """Mean squared error over every entry: ``J = (1/n) Σ (p − y)²``.

    Half-precision predictions are reduced in float32, so the value is finite wherever
    ``(p − y)²`` fits float32. The gradient comes back in the prediction's dtype: in float16 it
    is finite while ``2|p − y|/n ≤ 65504``, i.e. ``|p − y| ≤ 32752·n`` (at ``p − y = 6e4`` a
    batch of one entry overflows to inf; two entries do not).

    Derivatives: ``dJ/dp = (2/n)(p − y)``, ``dJ/dy = −(2/n)(p − y)``.
    """,
)
