"""Activations, each forward next to its hand-derived derivative.

Every activation ``g`` is written twice, side by side: ``g(z)`` and ``g'``, the latter as a
function of whatever is cheapest to keep for the way back (the output ``a = g(z)`` when ``g'``
can be written with it, which saves memory, since the next layer keeps ``a`` anyway; else ``z``).
The backward is the classic ``dZ = dA * g'(Z)``.

Each name has two faces:

* a function on arrays, ``jaxnn.activations.relu(x)``, whose ``jax.grad`` is the hand-derived
  rule (via [`jaxnn.apply`][jaxnn.apply]);
* a layer constructor, ``jaxnn.relu()``, to put in [`jaxnn.serial`][jaxnn.serial].
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnn.core import Array, Layer, apply, check_float, check_params, stateless_init

__all__ = [
    "elu",
    "gelu",
    "identity",
    "leaky_relu",
    "relu",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "tanh",
]


def _constructor(fn: Callable[..., Layer]) -> Callable[..., Layer]:
    """Marks a layer constructor, so that calling it on an array (``jaxnn.relu(x)``, a common
    slip for ``jaxnn.relu()(x)``) says what to write instead of failing on an argument."""
    name = fn.__name__.removesuffix("_layer")

    @functools.wraps(fn)
    def constructor(*args, **kwargs):
        if any(getattr(a, "ndim", 0) > 0 or isinstance(a, list | tuple) for a in args):
            raise TypeError(
                f"jaxnn.{name} is a layer constructor, not the function: write "
                f"jaxnn.{name}()(x) for the layer applied to x, or jaxnn.activations.{name}(x)"
            )
        return fn(*args, **kwargs)

    return constructor


def _elementwise(
    name: str,
    fn: Callable[[Array], Array],
    derivative: Callable[[Array, Array], Array],
    keep: str,
) -> Layer:
    """A parameter-free layer ``a = g(z)`` with ``dZ = dA * g'``.

    ``derivative(z_or_a, dy)`` returns ``dZ``; ``keep`` says which of ``"input"`` / ``"output"``
    is kept as the residual.
    """

    def forward(params, state, x, *, key=None, train=False):
        del key, train
        check_params(name, params, {})
        check_float(name, x)
        y = fn(x)
        return y, state, (x if keep == "input" else y)

    def backward(params, residual, dy):
        return (), derivative(residual, dy)

    return Layer(name, stateless_init(lambda s: s), forward, backward)


# --- sigmoid: a = 1 / (1 + e^{-z}),  g'(z) = a (1 - a) -------------------------------------

def _sigmoid(z: Array) -> Array:
    # jax.nn.sigmoid is the stable form: it never evaluates e^{+large}
    return jax.nn.sigmoid(z)


@_constructor
def sigmoid_layer() -> Layer:
    """Sigmoid ``a = 1 / (1 + e^{-z})``; backward ``dZ = dA * a * (1 - a)``."""
    return _elementwise("sigmoid", _sigmoid, lambda a, dy: dy * a * (1 - a), keep="output")


# --- tanh: g'(z) = 1 - a^2 -------------------------------------------------------------------

@_constructor
def tanh_layer() -> Layer:
    """Hyperbolic tangent; backward ``dZ = dA * (1 - a²)``."""
    return _elementwise("tanh", jnp.tanh, lambda a, dy: dy * (1 - a * a), keep="output")


# --- relu: a = max(z, 0), g'(z) = 1[z > 0] = 1[a > 0] --------------------------------------

@_constructor
def relu_layer() -> Layer:
    """Rectified linear unit ``a = max(z, 0)``; backward ``dZ = dA * 1[a > 0]``.

    At ``z = 0`` the derivative is taken as 0 (the sub-gradient JAX also uses).
    """
    return _elementwise(
        "relu", jax.nn.relu, lambda a, dy: jnp.where(a > 0, dy, 0), keep="output"
    )


# --- leaky relu: a = z if z > 0 else s z, g' = 1 or s ---------------------------------------

@_constructor
def leaky_relu_layer(negative_slope: float = 0.01) -> Layer:
    """Leaky ReLU ``a = z`` for ``z > 0``, ``s·z`` otherwise; backward ``dZ = dA`` or ``s·dA``.

    Args:
      negative_slope: ``s``, the slope for negative inputs (default 0.01). Must be positive, so
        that the sign of ``a`` is the sign of ``z`` and the output can be kept as the residual.

    At exactly ``z = 0`` the derivative is the slope ``s`` (``jax.nn.leaky_relu``'s autodiff
    gives 1 there; see docs/porting.md).
    """
    s = float(negative_slope)
    if not s > 0:
        raise ValueError(f"leaky_relu: negative_slope must be > 0, got {negative_slope}")
    return _elementwise(
        "leaky_relu",
        lambda z: jnp.where(z > 0, z, s * z),
        lambda a, dy: jnp.where(a > 0, dy, s * dy),
        keep="output",
    )


# --- elu: a = z if z > 0 else α(e^z − 1), g' = 1 or a + α ------------------------------------

@_constructor
def elu_layer(alpha: float = 1.0) -> Layer:
    """Exponential linear unit; backward ``dZ = dA`` for ``z > 0``, ``dA·(a + α)`` otherwise.

    The negative branch is computed with ``expm1`` on ``z`` with positive entries replaced by 0,
    so that large positive inputs never overflow the unused branch. (``jnp.minimum(z, 0)`` would
    give autodiff the tie derivative 1/2 at ``z = 0``; the ``where`` keeps the reference path's
    derivative at 0 equal to the hand-derived one, ``α``.)
    """
    a_ = float(alpha)
    if not a_ > 0:
        raise ValueError(f"elu: alpha must be > 0, got {alpha}")
    return _elementwise(
        "elu",
        lambda z: jnp.where(z > 0, z, a_ * jnp.expm1(jnp.where(z > 0, 0.0, z))),
        lambda a, dy: jnp.where(a > 0, dy, dy * (a + a_)),
        keep="output",
    )


# --- softplus: a = log(1 + e^z), g'(z) = sigmoid(z) ------------------------------------------

def _softplus(z: Array) -> Array:
    # log(1 + e^z) = log(e^0 + e^z), by logaddexp's stable max-shift: finite for every finite z.
    # (max(z, 0) + log1p(e^{-|z|}) is as stable, but autodiff takes jnp.abs'(0) = 1 and
    # max's tie as 1/2, so the reference derivative at z = 0 would be 0 instead of σ(0) = 1/2.)
    return jnp.logaddexp(z, 0.0)


@_constructor
def softplus_layer() -> Layer:
    """Softplus ``a = log(1 + e^z)`` (stable form); backward ``dZ = dA * sigmoid(z)``."""
    return _elementwise("softplus", _softplus, lambda z, dy: dy * _sigmoid(z), keep="input")


# --- silu: a = z σ(z), g' = σ(z)(1 + z(1 − σ(z))) --------------------------------------------

@_constructor
def silu_layer() -> Layer:
    """SiLU / swish ``a = z·σ(z)``; backward ``dZ = dA·σ(z)·(1 + z·(1 − σ(z)))``."""

    def derivative(z, dy):
        s = _sigmoid(z)
        return dy * s * (1 + z * (1 - s))

    return _elementwise("silu", lambda z: z * _sigmoid(z), derivative, keep="input")


# --- gelu ------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@_constructor
def gelu_layer(approximate: bool = False) -> Layer:
    """GELU ``a = z·Φ(z)``.

    Exact: ``Φ(z) = (1 + erf(z/√2)) / 2`` and ``g'(z) = Φ(z) + z·φ(z)`` with
    ``φ(z) = e^{-z²/2} / √(2π)``.

    Tanh approximation: ``a = z/2 · (1 + tanh(u))`` with ``u = √(2/π)(z + 0.044715 z³)``, so
    ``g'(z) = (1 + tanh u)/2 + z/2 · (1 − tanh² u) · √(2/π)(1 + 3·0.044715 z²)``.

    The default is the exact form, as in PyTorch; ``jax.nn.gelu`` and Flax default to the tanh
    approximation (``approximate=True`` here; see docs/porting.md).
    """
    if approximate:

        def inner(z):
            # tanh(u) is ±1 to every precision once |z| > 10; clipping keeps z³ from
            # overflowing in float16 (where it would give inf − inf)
            zc = jnp.clip(z, -10, 10)
            return _SQRT_2_OVER_PI * (zc + 0.044715 * zc**3), zc

        def fn(z):
            u, _ = inner(z)
            return 0.5 * z * (1 + jnp.tanh(u))

        def derivative(z, dy):
            u, zc = inner(z)
            t = jnp.tanh(u)
            du = jnp.where(jnp.abs(z) < 10, _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * zc * zc), 0)
            return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * du)

        return _elementwise("gelu_tanh", fn, derivative, keep="input")

    def fn_exact(z):
        return 0.5 * z * (1 + jax.lax.erf(z * _INV_SQRT_2))

    def derivative_exact(z, dy):
        cdf = 0.5 * (1 + jax.lax.erf(z * _INV_SQRT_2))
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
        return dy * (cdf + z * pdf)

    return _elementwise("gelu", fn_exact, derivative_exact, keep="input")


# --- identity --------------------------------------------------------------------------------

@_constructor
def identity_layer() -> Layer:
    """Identity ``a = z``; backward ``dZ = dA``."""

    def forward(params, state, x, *, key=None, train=False):
        check_params("identity", params, {})
        return x, state, ()

    def backward(params, residual, dy):
        return (), dy

    return Layer("identity", stateless_init(lambda s: s), forward, backward)


# --- softmax over the feature axis -----------------------------------------------------------

@_constructor
def softmax_layer(axis: int = -1) -> Layer:
    """Softmax ``p_i = e^{z_i} / Σ_j e^{z_j}`` over ``axis`` (computed with ``z − max z``).

    Backward (Jacobian ``diag(p) − p pᵀ`` applied to ``dA``): ``dZ = p ⊙ (dA − Σ_j dA_j p_j)``.
    For training a classifier use logits with
    [`jaxnn.softmax_cross_entropy`][jaxnn.softmax_cross_entropy], whose fused
    derivative is ``p − onehot``.
    """

    if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
        raise TypeError(f"softmax: axis must be an int, got {axis!r}")
    axis = int(axis)

    def forward(params, state, x, *, key=None, train=False):
        check_params("softmax", params, {})
        check_float("softmax", x)
        p = jax.nn.softmax(x, axis=axis)
        return p, state, p

    def backward(params, p, dy):
        return (), p * (dy - jnp.sum(dy * p, axis=axis, keepdims=True))

    return Layer("softmax", stateless_init(lambda s: s), forward, backward)


# --- the array faces ---------------------------------------------------------------------------

_SIGMOID, _TANH, _RELU = sigmoid_layer(), tanh_layer(), relu_layer()
_SOFTPLUS, _SILU, _IDENTITY = softplus_layer(), silu_layer(), identity_layer()


def _run(layer: Layer, x: Array) -> Array:
    """``layer`` on ``x``: these layers have no parameters or state, so ``apply`` runs them
    directly (``layer(x)`` would first check that, on every call)."""
    return apply(layer, (), (), x)[0]


def sigmoid(x: Array) -> Array:
    """``1 / (1 + e^{-x})`` with the hand-derived backward ``a (1 − a)``."""
    return _run(_SIGMOID, x)


def tanh(x: Array) -> Array:
    """``tanh x`` with the hand-derived backward ``1 − a²``."""
    return _run(_TANH, x)


def relu(x: Array) -> Array:
    """``max(x, 0)`` with the hand-derived backward ``1[a > 0]``."""
    return _run(_RELU, x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """``x`` for ``x > 0``, ``negative_slope·x`` otherwise, hand-derived backward."""
    return _run(leaky_relu_layer(negative_slope), x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """``x`` for ``x > 0``, ``α(e^x − 1)`` otherwise, hand-derived backward."""
    return _run(elu_layer(alpha), x)


def softplus(x: Array) -> Array:
    """``log(1 + e^x)`` in stable form, hand-derived backward ``σ(x)``."""
    return _run(_SOFTPLUS, x)


def silu(x: Array) -> Array:
    """``x·σ(x)``, hand-derived backward."""
    return _run(_SILU, x)


def gelu(x: Array, approximate: bool = False) -> Array:
    """``x·Φ(x)`` (exact, or the tanh approximation), hand-derived backward."""
    return _run(gelu_layer(approximate), x)


def identity(x: Array) -> Array:
    """``x``."""
    return _run(_IDENTITY, x)


def softmax(x: Array, axis: int = -1) -> Array:
    """Softmax over ``axis``, hand-derived backward ``p ⊙ (dA − Σ dA·p)``."""
    return _run(softmax_layer(axis), x)
