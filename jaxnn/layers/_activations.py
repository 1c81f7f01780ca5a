r"""Activations, each forward next to its hand-derived derivative.

Every activation $g$ is written twice, side by side: $a = g(z)$ and $g'$, the latter as a
function of whatever is cheapest to keep for the way back (the output $a = g(z)$ when $g'$
can be written with it, which saves memory, since the next layer keeps $a$ anyway; else $z$).
The backward is the classic

$$
dZ = dA \odot g'(Z)
$$

| activation | $a = g(z)$ | $g'(z)$, as the backward computes it | kept |
| --- | --- | --- | --- |
| ``sigmoid`` | $\sigma(z) = \frac{1}{1 + e^{-z}}$ | $a (1 - a)$ | $a$ |
| ``tanh`` | $\tanh z$ | $1 - a^2$ | $a$ |
| ``relu`` | $\max(z, 0)$ | $\mathbf{1}[a > 0]$ | $a$ |
| ``leaky_relu`` | $z$ if $z > 0$, else $s z$ | $1$ if $a > 0$, else $s$ | $a$ |
| ``elu`` | $z$ if $z > 0$, else $\alpha (e^{z} - 1)$ | $1$ if $a > 0$, else $a + \alpha$ | $a$ |
| ``softplus`` | $\log(1 + e^{z})$ | $\sigma(z)$ | $z$ |
| ``silu`` | $z\, \sigma(z)$ | $\sigma(z) \left(1 + z (1 - \sigma(z))\right)$ | $z$ |
| ``gelu`` | $z\, \Phi(z)$ | $\Phi(z) + z\, \phi(z)$ | $z$ |
| ``identity`` | $z$ | $1$ | nothing |
| ``softmax`` | $p_i = e^{z_i} / \sum_j e^{z_j}$ | $\operatorname{diag}(p) - p p^\top$ | $p$ |

($\Phi$ and $\phi$ are the standard normal CDF and density; [`gelu`][jaxnn.gelu] also has a
tanh approximation; [`softmax`][jaxnn.softmax]'s backward is
$dZ = p \odot \left(dA - \sum_j dA_j\, p_j\right)$.)

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
    r"""Sigmoid $a = \sigma(z) = 1 / (1 + e^{-z})$; backward $dZ = dA \odot a (1 - a)$.

    $$
    g(z) = \frac{1}{1 + e^{-z}} \qquad g'(z) = a (1 - a)
    $$

    The forward is the stable form (``jax.nn.sigmoid``), which never evaluates $e^{+z}$ for a
    large $z$; the backward keeps the output $a$.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.sigmoid()
        >>> x = jnp.array([-2.0, 0.0, 2.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [0.1192, 0.5, 0.8808]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [0.105, 0.25, 0.105]
    """
    return _elementwise("sigmoid", _sigmoid, lambda a, dy: dy * a * (1 - a), keep="output")


# --- tanh: g'(z) = 1 - a^2 -------------------------------------------------------------------

@_constructor
def tanh_layer() -> Layer:
    r"""Hyperbolic tangent $a = \tanh z$; backward $dZ = dA \odot (1 - a^2)$.

    $$
    g(z) = \tanh z = \frac{e^{z} - e^{-z}}{e^{z} + e^{-z}} \qquad g'(z) = 1 - a^2
    $$

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.tanh()
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [-0.7616, 0.0, 0.7616]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [0.42, 1.0, 0.42]
    """
    return _elementwise("tanh", jnp.tanh, lambda a, dy: dy * (1 - a * a), keep="output")


# --- relu: a = max(z, 0), g'(z) = 1[z > 0] = 1[a > 0] --------------------------------------

@_constructor
def relu_layer() -> Layer:
    r"""Rectified linear unit $a = \max(z, 0)$; backward $dZ = dA \odot \mathbf{1}[a > 0]$.

    $$
    g(z) = \max(z, 0) \qquad g'(z) = \mathbf{1}[z > 0] = \mathbf{1}[a > 0]
    $$

    At $z = 0$ the derivative is taken as 0 (the sub-gradient JAX also uses).

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.relu()
        >>> x = jnp.array([-1.0, 0.0, 2.0])
        >>> layer(x).tolist()
        [0.0, 0.0, 2.0]
        >>> jax.grad(lambda x: layer(x).sum())(x).tolist()
        [0.0, 0.0, 1.0]

        In a network:

        >>> model = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1))
        >>> model.init(jax.random.key(0), (-1, 3))[0]
        (-1, 1)
    """
    return _elementwise(
        "relu", jax.nn.relu, lambda a, dy: jnp.where(a > 0, dy, 0), keep="output"
    )


# --- leaky relu: a = z if z > 0 else s z, g' = 1 or s ---------------------------------------

@_constructor
def leaky_relu_layer(negative_slope: float = 0.01) -> Layer:
    r"""Leaky ReLU $a = z$ for $z > 0$, $s z$ otherwise; backward $dZ = dA$ or $s\, dA$.

    $$
    g(z) = \begin{cases} z & z > 0 \\ s z & z \le 0 \end{cases} \qquad
    g'(z) = \begin{cases} 1 & a > 0 \\ s & a \le 0 \end{cases}
    $$

    Args:
      negative_slope: ``s``, the slope for negative inputs (default 0.01). Must be positive, so
        that the sign of ``a`` is the sign of ``z`` and the output can be kept as the residual.

    At exactly $z = 0$ the derivative is the slope $s$ (``jax.nn.leaky_relu``'s autodiff
    gives 1 there; see docs/guides/porting.md).

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.leaky_relu(0.1)
        >>> x = jnp.array([-2.0, 0.0, 3.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [-0.2, 0.0, 3.0]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [0.1, 0.1, 1.0]
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
    r"""Exponential linear unit; backward $dZ = dA$ for $z > 0$, $dA \odot (a + \alpha)$ otherwise.

    $$
    g(z) = \begin{cases} z & z > 0 \\ \alpha (e^{z} - 1) & z \le 0 \end{cases} \qquad
    g'(z) = \begin{cases} 1 & a > 0 \\ \alpha e^{z} = a + \alpha & a \le 0 \end{cases}
    $$

    The negative branch is computed with ``expm1`` on ``z`` with positive entries replaced by 0,
    so that large positive inputs never overflow the unused branch. (``jnp.minimum(z, 0)`` would
    give autodiff the tie derivative 1/2 at ``z = 0``; the ``where`` keeps the reference path's
    derivative at 0 equal to the hand-derived one, $\alpha$.)

    Args:
      alpha: $\alpha$, the scale of the negative branch, which tends to $-\alpha$ (default 1).
        Must be positive, so that the sign of $a$ is the sign of $z$.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.elu()
        >>> x = jnp.array([-1.0, 0.0, 2.0])
        >>> [round(v, 4) for v in layer(x).tolist()]  # e^{-1} - 1 for z = -1
        [-0.6321, 0.0, 2.0]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]  # a + 1
        [0.3679, 1.0, 1.0]
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
    r"""Softplus $a = \log(1 + e^{z})$ (stable form); backward $dZ = dA \odot \sigma(z)$.

    $$
    g(z) = \log(1 + e^{z}) \qquad g'(z) = \sigma(z) = \frac{1}{1 + e^{-z}}
    $$

    The forward is ``logaddexp(z, 0)``, finite for every finite $z$; the backward keeps $z$.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.softplus()
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [0.3133, 0.6931, 1.3133]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [0.2689, 0.5, 0.7311]
    """
    return _elementwise("softplus", _softplus, lambda z, dy: dy * _sigmoid(z), keep="input")


# --- silu: a = z σ(z), g' = σ(z)(1 + z(1 − σ(z))) --------------------------------------------

@_constructor
def silu_layer() -> Layer:
    r"""SiLU / swish $a = z\, \sigma(z)$; backward $dZ = dA \odot g'(z)$.

    $$
    g(z) = z\, \sigma(z) \qquad g'(z) = \sigma(z) + z\, \sigma(z) (1 - \sigma(z))
    = \sigma(z) \left(1 + z (1 - \sigma(z))\right)
    $$

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.silu()
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [-0.2689, 0.0, 0.7311]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [0.0723, 0.5, 0.9277]
    """

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
    r"""GELU $a = z\, \Phi(z)$.

    Exact, with $\Phi$ the standard normal CDF and $\phi$ its density:

    $$
    \Phi(z) = \frac{1}{2} \left(1 + \operatorname{erf}\left(\frac{z}{\sqrt{2}}\right)\right)
    \qquad \phi(z) = \frac{e^{-z^2/2}}{\sqrt{2\pi}} \qquad g'(z) = \Phi(z) + z\, \phi(z)
    $$

    The backward takes $\Phi(z) = \tfrac{1}{2} \operatorname{erfc}(-z/\sqrt{2})$, the same
    function with no cancellation for $z \ll 0$; written differently from the forward's
    $\operatorname{erf}$, it is recomputed in the backward's fusion rather than kept as a
    residual array (one pass fewer over the activations in a compiled training step).

    Tanh approximation:

    $$
    a = \frac{z}{2} \left(1 + \tanh u\right) \qquad
    u = \sqrt{2/\pi} \left(z + 0.044715\, z^3\right)
    $$

    so that

    $$
    g'(z) = \frac{1 + \tanh u}{2}
    + \frac{z}{2} \left(1 - \tanh^2 u\right) \sqrt{2/\pi} \left(1 + 3 \cdot 0.044715\, z^2\right)
    $$

    (for $|z| > 10$, where $\tanh u = \pm 1$ to every precision, the code clips $z$ inside $u$
    and takes the second term as 0, so that $z^3$ cannot overflow in float16).

    The default is the exact form, as in PyTorch; ``jax.nn.gelu`` and Flax default to the tanh
    approximation (``approximate=True`` here; see docs/guides/porting.md).

    Args:
      approximate: use the tanh approximation instead of the exact $\operatorname{erf}$ form.

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer].

    Examples:
        >>> layer = jaxnn.gelu()
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in layer(x).tolist()]
        [-0.1587, 0.0, 0.8413]
        >>> [round(v, 4) for v in jax.grad(lambda x: layer(x).sum())(x).tolist()]
        [-0.0833, 0.5, 1.0833]

        The tanh approximation agrees to about $10^{-3}$:

        >>> [round(v, 4) for v in jaxnn.gelu(approximate=True)(x).tolist()]
        [-0.1588, 0.0, 0.8412]
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
        cdf = 0.5 * jax.lax.erfc(-z * _INV_SQRT_2)
        pdf = _INV_SQRT_2PI * jnp.exp(-0.5 * z * z)
        return dy * (cdf + z * pdf)

    return _elementwise("gelu", fn_exact, derivative_exact, keep="input")


# --- identity --------------------------------------------------------------------------------

@_constructor
def identity_layer() -> Layer:
    r"""Identity $a = z$; backward $dZ = dA$.

    $$
    g(z) = z \qquad g'(z) = 1
    $$

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer] (a placeholder where a network expects an
        activation).

    Examples:
        >>> layer = jaxnn.identity()
        >>> x = jnp.array([-1.0, 2.0])
        >>> layer(x).tolist(), jax.grad(lambda x: layer(x).sum())(x).tolist()
        ([-1.0, 2.0], [1.0, 1.0])
    """

    def forward(params, state, x, *, key=None, train=False):
        check_params("identity", params, {})
        return x, state, ()

    def backward(params, residual, dy):
        return (), dy

    return Layer("identity", stateless_init(lambda s: s), forward, backward)


# --- softmax over the feature axis -----------------------------------------------------------

@_constructor
def softmax_layer(axis: int = -1) -> Layer:
    r"""Softmax $p_i = e^{z_i} / \sum_j e^{z_j}$ over ``axis`` (computed with $z - \max z$).

    $$
    p_i = \frac{e^{z_i}}{\sum_j e^{z_j}} \qquad
    \frac{\partial p_i}{\partial z_k} = p_i (\delta_{ik} - p_k)
    $$

    Backward (the Jacobian $\operatorname{diag}(p) - p p^\top$ applied to $dA$):

    $$
    dZ = p \odot \left(dA - \sum_j dA_j\, p_j\right)
    $$

    For training a classifier use logits with
    [`jaxnn.softmax_cross_entropy`][jaxnn.softmax_cross_entropy], whose fused
    derivative is $p - \operatorname{onehot}(y)$.

    Args:
      axis: the axis the probabilities are normalized over (default the last).

    Returns:
      A parameter-free [`jaxnn.Layer`][jaxnn.Layer] whose backward keeps $p$.

    Examples:
        $z = (0, \log 3)$ gives $p = (1/4, 3/4)$; the gradient of $p_0$ is
        $p \odot (e_0 - p_0) = (3/16, -3/16)$:

        >>> layer = jaxnn.softmax()
        >>> z = jnp.array([[0.0, jnp.log(3.0)]])
        >>> [round(v, 4) for v in layer(z)[0].tolist()]
        [0.25, 0.75]
        >>> [round(v, 4) for v in jax.grad(lambda z: layer(z)[0, 0])(z)[0].tolist()]
        [0.1875, -0.1875]
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
    r"""$\sigma(x) = 1 / (1 + e^{-x})$ with the hand-derived backward $a (1 - a)$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-2.0, 0.0, 2.0])
        >>> [round(v, 4) for v in jaxnn.activations.sigmoid(x).tolist()]
        [0.1192, 0.5, 0.8808]
        >>> grad = jax.grad(lambda x: jaxnn.activations.sigmoid(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.105, 0.25, 0.105]
    """
    return _run(_SIGMOID, x)


def tanh(x: Array) -> Array:
    r"""$\tanh x$ with the hand-derived backward $1 - a^2$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in jaxnn.activations.tanh(x).tolist()]
        [-0.7616, 0.0, 0.7616]
        >>> grad = jax.grad(lambda x: jaxnn.activations.tanh(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.42, 1.0, 0.42]
    """
    return _run(_TANH, x)


def relu(x: Array) -> Array:
    r"""$\max(x, 0)$ with the hand-derived backward $\mathbf{1}[a > 0]$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 2.0])
        >>> jaxnn.activations.relu(x).tolist()
        [0.0, 0.0, 2.0]
        >>> grad = jax.grad(lambda x: jaxnn.activations.relu(x).sum())
        >>> grad(x).tolist()
        [0.0, 0.0, 1.0]
    """
    return _run(_RELU, x)


def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    r"""$x$ for $x > 0$, $s x$ otherwise, hand-derived backward $1$ or $s$.

    Args:
      x: the input, any shape.
      negative_slope: $s$, the slope for negative inputs (default 0.01), positive.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-2.0, 0.0, 3.0])
        >>> [round(v, 4) for v in jaxnn.activations.leaky_relu(x).tolist()]
        [-0.02, 0.0, 3.0]
        >>> grad = jax.grad(lambda x: jaxnn.activations.leaky_relu(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.01, 0.01, 1.0]
    """
    return _run(leaky_relu_layer(negative_slope), x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    r"""$x$ for $x > 0$, $\alpha (e^{x} - 1)$ otherwise, hand-derived backward $1$ or $a + \alpha$.

    Args:
      x: the input, any shape.
      alpha: $\alpha$, the scale of the negative branch (default 1), positive.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 2.0])
        >>> [round(v, 4) for v in jaxnn.activations.elu(x).tolist()]
        [-0.6321, 0.0, 2.0]
        >>> grad = jax.grad(lambda x: jaxnn.activations.elu(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.3679, 1.0, 1.0]
    """
    return _run(elu_layer(alpha), x)


def softplus(x: Array) -> Array:
    r"""$\log(1 + e^{x})$ in stable form, hand-derived backward $\sigma(x)$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in jaxnn.activations.softplus(x).tolist()]
        [0.3133, 0.6931, 1.3133]
        >>> grad = jax.grad(lambda x: jaxnn.activations.softplus(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.2689, 0.5, 0.7311]
    """
    return _run(_SOFTPLUS, x)


def silu(x: Array) -> Array:
    r"""$x\, \sigma(x)$, hand-derived backward $\sigma(x) (1 + x (1 - \sigma(x)))$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in jaxnn.activations.silu(x).tolist()]
        [-0.2689, 0.0, 0.7311]
        >>> grad = jax.grad(lambda x: jaxnn.activations.silu(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [0.0723, 0.5, 0.9277]
    """
    return _run(_SILU, x)


def gelu(x: Array, approximate: bool = False) -> Array:
    r"""$x\, \Phi(x)$ (exact, or the tanh approximation), hand-derived backward.

    Exact: $g'(x) = \Phi(x) + x\, \phi(x)$; [`jaxnn.gelu`][jaxnn.gelu] has both forms' formulas.

    Args:
      x: the input, any shape.
      approximate: use the tanh approximation instead of the exact form.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 0.0, 1.0])
        >>> [round(v, 4) for v in jaxnn.activations.gelu(x).tolist()]
        [-0.1587, 0.0, 0.8413]
        >>> grad = jax.grad(lambda x: jaxnn.activations.gelu(x).sum())
        >>> [round(v, 4) for v in grad(x).tolist()]
        [-0.0833, 0.5, 1.0833]
    """
    return _run(gelu_layer(approximate), x)


def identity(x: Array) -> Array:
    r"""$x$, with the backward $dZ = dA$.

    Args:
      x: the input, any shape.

    Returns:
      An array of the shape of ``x``.

    Examples:
        >>> x = jnp.array([-1.0, 2.0])
        >>> jaxnn.activations.identity(x).tolist()
        [-1.0, 2.0]
        >>> grad = jax.grad(lambda x: jaxnn.activations.identity(x).sum())
        >>> grad(x).tolist()
        [1.0, 1.0]
    """
    return _run(_IDENTITY, x)


def softmax(x: Array, axis: int = -1) -> Array:
    r"""Softmax over ``axis``, hand-derived backward $p \odot (dA - \sum_j dA_j\, p_j)$.

    Args:
      x: the input (logits), any shape.
      axis: the axis the probabilities are normalized over (default the last).

    Returns:
      An array of the shape of ``x``: probabilities summing to 1 along ``axis``.

    Examples:
        >>> z = jnp.array([[0.0, jnp.log(3.0)]])
        >>> [round(v, 4) for v in jaxnn.activations.softmax(z)[0].tolist()]
        [0.25, 0.75]
        >>> [round(v, 4) for v in jaxnn.activations.softmax(z, axis=0)[0].tolist()]
        [1.0, 1.0]
    """
    return _run(softmax_layer(axis), x)
