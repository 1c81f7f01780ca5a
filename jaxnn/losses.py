r"""Losses, each a value and its hand-derived derivatives.

The classic derivation keeps ``dJ/dA[L]`` apart from the network, because it depends on the task: a
[`Loss`][jaxnn.Loss] is ``value(prediction, target)`` next to ``grad(prediction, target)``, both by
hand, and ``target_grad(prediction, target)``, the derivative with respect to the target (for
distillation from a learned teacher, or a loss between two network outputs). Calling a loss,
``loss(prediction, target)``, gives the value with both derivatives attached through
``jax.custom_vjp``; ``loss.value`` alone is the plain-autodiff reference.

Reductions: every loss is a mean over examples (axis 0). The elementwise losses
(binary cross-entropy, mean squared error) average over every entry, so with one output per
example this is the classic ``J = (1/m) Σ_i L_i``; softmax cross-entropy sums over the class axis
and averages over examples. Below, $n$ is the number of entries of the prediction and $m$ the
number of examples (rows); $a$ is a probability, $z$ a logit, $p$ a prediction, $y$ the target.

Each loss below gives its $J$ and its derivatives by hand; in short, binary cross-entropy on
probabilities, on logits, softmax cross-entropy on logits and mean squared error:

$$
J = -\frac{1}{n} \sum \left[y \log a + (1 - y) \log(1 - a)\right] \qquad
\frac{\partial J}{\partial a} = -\frac{1}{n} \left(\frac{y}{a} - \frac{1 - y}{1 - a}\right)
\qquad \frac{\partial J}{\partial y} = -\frac{1}{n} \log \frac{a}{1 - a}
$$

$$
J = \frac{1}{n} \sum \left[\operatorname{softplus}(z) - z y\right] \qquad
\frac{\partial J}{\partial z} = \frac{1}{n} \left(\sigma(z) - y\right) \qquad
\frac{\partial J}{\partial y} = -\frac{1}{n} z
$$

$$
J = -\frac{1}{m} \sum_{i} \sum_{j} y_{ij} \log p_{ij} \qquad
\frac{\partial J}{\partial z} = \frac{1}{m} (p - y) \qquad
\frac{\partial J}{\partial y} = -\frac{1}{m} \log p
$$

$$
J = \frac{1}{n} \sum (p - y)^2 \qquad
\frac{\partial J}{\partial p} = \frac{2}{n} (p - y) \qquad
\frac{\partial J}{\partial y} = -\frac{2}{n} (p - y)
$$

(for softmax cross-entropy $p = \operatorname{softmax}(z)$ row by row).

Targets never broadcast: a target whose shape differs from the prediction's is an error.

Stable fused forms. A sigmoid output followed by
[`binary_cross_entropy`][jaxnn.binary_cross_entropy] has
``dZ[L] = (1/m)(A[L] − Y)``: with $a = \sigma(z)$ and $\sigma'(z) = a(1 - a)$, the chain rule
cancels the denominators,

$$
\frac{\partial J}{\partial z} = \frac{\partial J}{\partial a} \odot a (1 - a)
= -\frac{1}{n}\left(y (1 - a) - (1 - y) a\right) = \frac{1}{n} (a - y)
$$

[`binary_cross_entropy_with_logits`][jaxnn.binary_cross_entropy_with_logits] computes exactly
that from the logits without ever forming ``log(0)``. [`jaxnn.fuse`][jaxnn.fuse] rewrites
``serial(…, sigmoid())`` with ``binary_cross_entropy`` into ``serial(…)`` with
``binary_cross_entropy_with_logits``, and the training functions apply it, so training always
uses the stable ``a − y``. Softmax cross-entropy takes logits and its derivative is
``(p − onehot)/m``: for a target row that sums to 1,

$$
\frac{\partial J}{\partial z_{ij}} = \frac{1}{m}\left(p_{ij} \sum_{k} y_{ik} - y_{ij}\right)
= \frac{1}{m} \left(p_{ij} - y_{ij}\right)
$$

which is $\frac{1}{m}(p - \text{onehot})$ for class labels.

The target gradient $\partial J / \partial y$ (``target_grad``) is what makes a loss between
two learned outputs trainable on both sides (a student against a learned teacher): calling
``jax.grad(loss, argnums=1)`` runs it, by hand like ``grad``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import pathlib
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

BCE_EPSILON = 1e-7
"""The clipping of [`binary_cross_entropy`][jaxnn.binary_cross_entropy]: probabilities are
kept in ``[ε, 1 − ε]`` with ``ε = max(BCE_EPSILON, machine epsilon of the prediction's
dtype)`` (1e-7 in float32 and float64; 2⁻¹⁰ in float16, 2⁻⁷ in bfloat16, so the derivative
``1/ε`` stays representable)."""


def _bce_epsilon(dtype) -> float:
    return max(BCE_EPSILON, float(jnp.finfo(dtype).eps))


@dataclasses.dataclass(frozen=True, repr=False)
class Loss(Record):
    r"""A loss: a value and its hand-derived derivatives.

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

    Examples:
      A loss of one's own, mean absolute error $J = \frac{1}{n} \sum |p - y|$ with
      $\partial J / \partial p = \frac{1}{n} \operatorname{sign}(p - y)$:

      >>> mae = jaxnn.Loss(
      ...     "mean_absolute_error",
      ...     value=lambda p, y: jnp.mean(jnp.abs(p - y)),
      ...     grad=lambda p, y: jnp.sign(p - y) / p.size)
      >>> p, y = jnp.array([[0.5], [3.0]]), jnp.array([[1.0], [1.0]])
      >>> round(float(mae(p, y)), 4)
      1.25
      >>> jax.grad(mae)(p, y).ravel().tolist()          # runs the grad given above
      [-0.5, 0.5]

      It has no ``target_grad``, so its target may only be a constant:

      >>> jax.grad(mae, argnums=1)(p, y)
      Traceback (most recent call last):
      ...
      TypeError: mean_absolute_error: this loss has no hand-derived derivative with respect ...

      The built-in losses are such records:

      >>> jaxnn.mean_squared_error.name, jaxnn.mean_squared_error._fields
      ('mean_squared_error', ('name', 'value', 'grad', 'fused', 'target_grad'))
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


binary_cross_entropy_with_logits = Loss(
    _BCE_LOGITS, _bce_logits_value, _bce_logits_grad, target_grad=_bce_logits_target_grad)
r"""Binary cross-entropy on logits: ``J = (1/n) Σ [softplus(z) − z·y]``.

$$ J = \frac{1}{n} \sum_{k} \left[\operatorname{softplus}(z_k) - z_k y_k\right] \qquad
\operatorname{softplus}(z) = \log\left(1 + e^{z}\right) $$

over the $n$ entries of $z$: the stable fused form of a sigmoid followed by
[`binary_cross_entropy`][jaxnn.binary_cross_entropy], averaged over
every entry. Labels lie in ``[0, 1]`` (soft labels allowed); concrete labels outside it or
NaN are an error, traced ones (under ``jit``) give NaN.

Derivatives: ``dJ/dz = (1/n)(σ(z) − y)``, ``dJ/dy = −z/n``:

$$ \frac{\partial J}{\partial z} = \frac{1}{n} \left(\sigma(z) - y\right) \qquad
\frac{\partial J}{\partial y} = -\frac{1}{n} z $$

Examples:
  >>> z, y = jnp.array([[2.0], [-1.0]]), jnp.array([[1.0], [0.0]])
  >>> round(float(jaxnn.binary_cross_entropy_with_logits(z, y)), 4)
  0.2201
  >>> dz = jax.grad(jaxnn.binary_cross_entropy_with_logits)(z, y)     # (σ(z) − y)/n
  >>> [round(v, 4) for v in dz.ravel().tolist()]
  [-0.0596, 0.1345]
  >>> jax.grad(jaxnn.binary_cross_entropy_with_logits, argnums=1)(z, y).ravel().tolist()
  [-1.0, 0.5]

  The same value as a sigmoid followed by binary cross-entropy on probabilities:

  >>> round(float(jaxnn.binary_cross_entropy(jax.nn.sigmoid(z), y)), 4)
  0.2201
"""

binary_cross_entropy = Loss(
    _BCE, _bce_value, _bce_grad, target_grad=_bce_target_grad,
    fused=("sigmoid", binary_cross_entropy_with_logits))
r"""Binary cross-entropy on probabilities: ``J = −(1/n) Σ [y log a + (1 − y) log(1 − a)]``.

$$ J = -\frac{1}{n} \sum_{k} \left[y_k \log a_k + (1 - y_k) \log(1 - a_k)\right] $$

over the $n$ entries of $a$. ``a`` is clipped to ``[ε, 1 − ε]`` (``BCE_EPSILON``) with a
straight-through derivative.
Predictions must be probabilities: concrete values outside ``[0, 1]`` (logits by mistake)
are an error, traced ones give NaN; labels as for
[`binary_cross_entropy_with_logits`][jaxnn.binary_cross_entropy_with_logits].
Training rewrites a final sigmoid with this loss into the fused form
([`jaxnn.fuse`][jaxnn.fuse]), whose derivative with respect to the logits is
$\frac{1}{n}(a - y)$.

Derivatives: ``dJ/da = −(1/n)(y/a − (1 − y)/(1 − a))``, ``dJ/dy = −(1/n) log(a/(1 − a))``:

$$ \frac{\partial J}{\partial a} = -\frac{1}{n} \left(\frac{y}{a} - \frac{1 - y}{1 - a}\right)
\qquad \frac{\partial J}{\partial y} = -\frac{1}{n} \log \frac{a}{1 - a} $$

Examples:
  >>> a, y = jnp.array([[0.8], [0.4]]), jnp.array([[1.0], [0.0]])
  >>> round(float(jaxnn.binary_cross_entropy(a, y)), 4)      # −(log 0.8 + log 0.6)/2
  0.367
  >>> da = jax.grad(jaxnn.binary_cross_entropy)(a, y)        # −(1/2)(1/0.8), (1/2)(1/0.6)
  >>> [round(v, 4) for v in da.ravel().tolist()]
  [-0.625, 0.8333]
  >>> dy = jax.grad(jaxnn.binary_cross_entropy, argnums=1)(a, y)
  >>> [round(v, 4) for v in dy.ravel().tolist()]
  [-0.6931, 0.2027]

  The last layer and the stable loss that replace a sigmoid followed by this loss:

  >>> jaxnn.binary_cross_entropy.fused
  ('sigmoid', binary_cross_entropy_with_logits)
"""

softmax_cross_entropy = Loss(
    _SOFTMAX_CE, _softmax_ce_value, _softmax_ce_grad, target_grad=_softmax_ce_target_grad)
r"""Softmax cross-entropy on logits: ``J = −(1/m) Σ_i Σ_j y_ij log softmax(z_i)_j``.

$$ p_{ij} = \frac{e^{z_{ij}}}{\sum_{k} e^{z_{ik}}} \qquad
J = -\frac{1}{m} \sum_{i} \sum_{j} y_{ij} \log p_{ij} $$

with $i$ over the $m$ rows (the examples, times any axes between batch and classes) and $j$
over the classes; $\log p$ is computed stably (``log_softmax``).
Logits are ``(batch, ..., classes)``; targets are integer class ids of shape
``z.shape[:-1]`` or one-hot/probability rows of ``z``'s shape. Concrete ids out of range are
an error; traced ones give a row of NaN.

Derivatives: ``dJ/dz = (1/m)(p − onehot)``; ``dJ/dy = −(1/m) log p`` for float targets
(class ids take no gradient):

$$ \frac{\partial J}{\partial z_{ij}} = \frac{1}{m}\left(p_{ij} \sum_{k} y_{ik} - y_{ij}\right)
\qquad \frac{\partial J}{\partial y_{ij}} = -\frac{1}{m} \log p_{ij} $$

(the first is $\frac{1}{m}(p_{ij} - y_{ij})$ when the target row sums to 1).

Examples:
  >>> z = jnp.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
  >>> labels = jnp.array([2, 0])
  >>> round(float(jaxnn.softmax_cross_entropy(z, labels)), 4)
  0.7531
  >>> dz = jax.grad(jaxnn.softmax_cross_entropy)(z, labels)     # (p − onehot)/2
  >>> [[round(v, 4) for v in row] for row in dz.tolist()]
  [[0.045, 0.1224, -0.1674], [-0.3333, 0.1667, 0.1667]]

  One-hot (or soft) targets give the same value, and a gradient of their own:

  >>> onehot = jax.nn.one_hot(labels, 3)
  >>> round(float(jaxnn.softmax_cross_entropy(z, onehot)), 4)
  0.7531
  >>> dy = jax.grad(jaxnn.softmax_cross_entropy, argnums=1)(z, onehot)   # −(log p)/2
  >>> [round(v, 4) for v in dy[1].tolist()]
  [0.5493, 0.5493, 0.5493]
"""

mean_squared_error = Loss(_MSE, _mse_value, _mse_grad, target_grad=_mse_target_grad)
r"""Mean squared error over every entry: ``J = (1/n) Σ (p − y)²``.

$$ J = \frac{1}{n} \sum_{k} (p_k - y_k)^2 $$

over the $n$ entries of $p$.
Half-precision predictions are reduced in float32, so the value is finite wherever
``(p − y)²`` fits float32. The gradient comes back in the prediction's dtype: in float16 it
is finite while ``2|p − y|/n ≤ 65504``, i.e. ``|p − y| ≤ 32752·n`` (at ``p − y = 6e4`` a
batch of one entry overflows to inf; two entries do not).

Derivatives: ``dJ/dp = (2/n)(p − y)``, ``dJ/dy = −(2/n)(p − y)``:

$$ \frac{\partial J}{\partial p} = \frac{2}{n} (p - y) \qquad
\frac{\partial J}{\partial y} = -\frac{2}{n} (p - y) $$

Examples:
  >>> p, y = jnp.array([[0.5], [2.0]]), jnp.array([[0.0], [1.0]])
  >>> float(jaxnn.mean_squared_error(p, y))                  # (0.25 + 1)/2
  0.625
  >>> jax.grad(jaxnn.mean_squared_error)(p, y).ravel().tolist()             # (2/n)(p − y)
  [0.5, 1.0]
  >>> jax.grad(jaxnn.mean_squared_error, argnums=1)(p, y).ravel().tolist()  # −(2/n)(p − y)
  [-0.5, -1.0]

  In a training step, the loss of a network's output:

  >>> net = jaxnn.dense(1)
  >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
  >>> x = jnp.ones((2, 3))
  >>> def cost(params):
  ...     return jaxnn.mean_squared_error(jaxnn.apply(net, params, (), x)[0], y)
  >>> jax.tree.map(jnp.shape, jax.grad(cost)(params))
  {'W': (3, 1), 'b': (1,)}
"""


def _attribute_docstrings() -> dict[str, str]:
    """The string literal written right under each module-level assignment of this file, by
    name.

    That literal is where a built-in loss is documented: mkdocstrings reads it from the source
    (a ``Loss`` instance has no docstring of its own to read statically); setting it as the
    instance's ``__doc__`` gives ``help()``, ``inspect.getdoc`` and doctest the same text.
    """
    try:
        source = pathlib.Path(__file__).read_text(encoding="utf-8")
    except OSError:  # no source shipped: the losses keep the Loss class's docstring
        return {}
    body = ast.parse(source).body
    found = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            found[node.targets[0].id] = inspect.cleandoc(after.value.value)
    return found


_BUILT_IN = (binary_cross_entropy_with_logits, binary_cross_entropy, softmax_cross_entropy,
             mean_squared_error)
_DOCS = _attribute_docstrings()
for _loss in _BUILT_IN:
    if _loss.name in _DOCS:
        object.__setattr__(_loss, "__doc__", _DOCS[_loss.name])

__test__ = {_loss.name: _loss.__doc__ for _loss in _BUILT_IN if _loss.name in _DOCS}
"""doctest runs the examples of the losses' docstrings from here: it looks for examples in
functions and classes, and a loss is an instance."""
