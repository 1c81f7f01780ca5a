r"""Dropout, forward beside its hand-derived backward.

Forward in training mode, with $p$ = ``rate`` the probability of **dropping** an entry (not the
keep probability, as in stax) and a mask $k$ drawn from the PRNG key, one independent draw per
entry:

$$
k_i \sim \operatorname{Bernoulli}(1 - p) \qquad y = \frac{k \odot x}{1 - p}
\qquad dx = \frac{k \odot dy}{1 - p}
$$

(inverted dropout: $\mathbb{E}[y] = x$, so evaluation needs no rescaling). The backward uses
the same mask $k$ as the forward. In evaluation mode $y = x$ and $dx = dy$.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxnn.core import Layer, check_float, check_params, stateless_init

__all__ = ["dropout"]


def dropout(rate: float) -> Layer:
    r"""Inverted dropout: zeroes each entry with probability ``rate`` in training mode.

    With $p$ = ``rate`` and the mask $k_i \sim \operatorname{Bernoulli}(1 - p)$, in training
    mode:

    $$
    y = \frac{k \odot x}{1 - p} \qquad dx = \frac{k \odot dy}{1 - p}
    $$

    Training mode needs a PRNG key (``jaxnn.apply(..., key=k, train=True)``, or the last
    argument of a training step, ``step(params, state, opt_state, x, y, key)``); each call with
    the same key drops the same entries. Evaluation mode is the identity. ``rate=0`` is the
    identity in both modes and needs no key.

    The backward keeps the **mask** from the forward as its residual (one bool per entry)
    rather than the key to draw it again: the way back then uses exactly the entries the way
    forward dropped by construction, whatever the PRNG implementation, and costs no second
    draw of random bits; the memory is a quarter of a float32 activation.

    Args:
      rate: the probability of dropping an entry, in ``[0, 1)``.

    Returns:
      A [`jaxnn.Layer`][jaxnn.Layer] without params or state.

    Examples:
        >>> layer = jaxnn.dropout(0.5)
        >>> out_shape, params, state = layer.init(jax.random.key(0), (-1, 6))
        >>> out_shape, params, state
        ((-1, 6), (), ())
        >>> x, key = jnp.ones((1, 6)), jax.random.key(0)
        >>> y, _ = jaxnn.apply(layer, (), (), x, key=key, train=True)
        >>> sorted(set(y.ravel().tolist()))  # kept entries are scaled by 1/(1 − 0.5)
        [0.0, 2.0]

        The backward applies the same mask and scale to the gradient ($dy$ all ones here, so
        $dx = y$):

        >>> dx = jax.grad(lambda x: jaxnn.apply(layer, (), (), x, key=key, train=True)[0].sum())(x)
        >>> bool((dx == y).all())
        True

        Evaluation mode (the default) is the identity:

        >>> jaxnn.apply(layer, (), (), jnp.ones((1, 3)))[0].tolist()
        [[1.0, 1.0, 1.0]]
    """
    name = "dropout"
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool):
        raise TypeError(f"dropout: rate must be a float in [0, 1), got {rate!r}")
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout: rate (the probability of dropping) must be in [0, 1), "
                         f"got {rate}")
    keep_probability = 1.0 - rate
    # a multiplication by 1/(1 − rate), which is what XLA makes of a division by a constant
    # anyway: the kept entries are exactly x · (1/(1 − rate)), within an ulp of x / (1 − rate)
    scale = 1.0 / keep_probability

    def forward(params, state, x, *, key=None, train=False):
        check_params(name, params, {})
        check_float(name, x)
        if not train or rate == 0.0:
            return x, state, None
        if key is None:
            raise ValueError(
                "dropout: training mode needs a PRNG key, got key=None; pass "
                "jaxnn.apply(..., key=jax.random.key(seed), train=True), or "
                "give the training step a key: step(params, state, opt_state, x, y, key)"
            )
        keep = jax.random.bernoulli(key, keep_probability, x.shape)
        y = jnp.where(keep, x * scale, jnp.zeros((), x.dtype))
        return y, state, keep

    def backward(params, keep, dy):
        if keep is None:  # evaluation mode (or rate 0): the identity
            return (), dy
        return (), jnp.where(keep, dy * scale, jnp.zeros((), dy.dtype))

    return Layer(name, stateless_init(lambda s: s), forward, backward)
