r"""An opt-in check mode that names the first layer whose output is not finite.

Normal training never pays for it: the checks exist only in a model rebuilt by
[`checked`][jaxnn.debug.checked]. They are ``jax.experimental.checkify`` checks, which are
functionalized
into the compiled program (an error value returned next to the result), not host callbacks, so
they work under ``jax.jit``, ``jax.vmap`` and ``lax.scan`` and cost one ``isfinite`` reduction
per layer.

Each leaf layer checks, in execution order, that its input, its parameters and its output are
finite, and (in the backward pass) that its $dW$, $db$ and $dx$ are; the loss checks its value
and its derivative. A check of a tree $t$ is one reduction,
$\bigwedge_{a \in t} \bigwedge_i \operatorname{isfinite}(a_i)$.

Examples:
    >>> import jax, jax.numpy as jnp, jaxnn
    >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
    >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
    >>> x = jnp.array([[1.0, jnp.inf, 0.0]])
    >>> try:
    ...     jaxnn.debug.checked_apply(net, params, (), x)
    ... except jaxnn.debug.NonFiniteError as e:
    ...     print(e)
    non-finite values in the input of serial/0:dense (first non-finite point in the network)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxnn.chain import fuse, value_and_grad
from jaxnn.core import Layer, apply, map_leaves
from jaxnn.losses import Loss

__all__ = ["NonFiniteError", "checked", "checked_apply", "checked_value_and_grad"]

_FIRST = " (first non-finite point in the network)"


class NonFiniteError(FloatingPointError):
    """Raised by the check mode; the message names the layer.

    A ``FloatingPointError`` (so also an ``ArithmeticError``).

    Examples:
        >>> from jaxnn.debug import NonFiniteError, checked_apply
        >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> bad = ({"W": params[0]["W"].at[1, 0].set(jnp.nan), "b": params[0]["b"]}, ())
        >>> try:
        ...     checked_apply(net, bad, (), jnp.ones((4, 3)))
        ... except NonFiniteError as e:
        ...     print(e)
        non-finite values in the parameters of serial/0:dense
        (first non-finite point in the network)
        >>> issubclass(NonFiniteError, FloatingPointError)
        True
    """


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def checked(model: Layer) -> Layer:
    """``model`` with every leaf layer checking its input and output for NaN and Inf.

    Run the result under ``jax.experimental.checkify.checkify`` (or use
    [`checked_apply`][jaxnn.debug.checked_apply] /
    [`checked_value_and_grad`][jaxnn.debug.checked_value_and_grad], which do). The first failing
    check
    in execution order is reported, so the message names the first layer that produced (or
    received) a non-finite value. Backward passes are checked too: a non-finite ``dx`` names
    the layer whose backward produced it.

    Args:
      model: any [`jaxnn.Layer`][jaxnn.Layer].

    Returns:
      A layer with ``model``'s structure, names and parameters, whose leaf layers run
      ``checkify.check`` on their input, parameters, output and gradients.

    Examples:
        Run under ``checkify`` by hand; the error value carries the message:

        >>> from jax.experimental import checkify
        >>> from jaxnn.debug import checked
        >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> safe = checked(net)
        >>> safe.name
        'serial'
        >>> run = checkify.checkify(lambda x: jaxnn.apply(safe, params, (), x))
        >>> err, (y, _) = run(jnp.ones((4, 3)))
        >>> err.get() is None, y.shape
        (True, (4, 2))
        >>> err, _ = run(jnp.array([[1.0, jnp.nan, 0.0]]))
        >>> err.get().startswith("non-finite values in the input of serial/0:dense")
        True
    """

    def wrap(leaf: Layer, path: str) -> Layer:
        def forward(params, state, x, *, key=None, train=False):
            checkify.check(_all_finite(x), f"non-finite values in the input of {path}{_FIRST}")
            checkify.check(_all_finite(params),
                           f"non-finite values in the parameters of {path}{_FIRST}")
            y, new_state, residuals = leaf.forward(params, state, x, key=key, train=train)
            checkify.check(_all_finite(y), f"non-finite values in the output of {path}{_FIRST}")
            return y, new_state, residuals

        def backward(params, residuals, dy):
            dparams, dx = leaf.backward(params, residuals, dy)
            checkify.check(_all_finite((dparams, dx)),
                           f"non-finite gradient from the backward of {path}{_FIRST}")
            return dparams, dx

        return leaf._replace(forward=forward, backward=backward)

    return map_leaves(wrap, model)


def _checked_loss(loss: Loss) -> Loss:
    """``loss`` whose value and derivative are checked (they run before the backward pass)."""

    def value(a, y):
        v = loss.value(a, y)
        checkify.check(jnp.isfinite(v), f"non-finite value of the loss {loss.name}{_FIRST}")
        return v

    def grad(a, y):
        g = loss.grad(a, y)
        checkify.check(_all_finite(g),
                       f"non-finite derivative of the loss {loss.name}{_FIRST}")
        return g

    return loss._replace(value=value, grad=grad)


def _raise(err: checkify.Error) -> None:
    message = err.get()
    if message is not None:
        raise NonFiniteError(message.split("\n")[0].split(" (`check` failed")[0]
                             .removesuffix(".").strip())


def checked_apply(model: Layer, params: Any, state: Any, x: jax.Array, *,
                  key: jax.Array | None = None, train: bool = False) -> tuple[jax.Array, Any]:
    """[`jaxnn.apply`][jaxnn.apply] in check mode: raises
    [`NonFiniteError`][jaxnn.debug.NonFiniteError] naming the layer.

    Args:
      model: the network.
      params: its parameters.
      state: its state (``()`` for none).
      x: the input.
      key: the PRNG key of the forward pass (dropout).
      train: the mode.

    Returns:
      ``(y, new_state)``, as [`jaxnn.apply`][jaxnn.apply] returns them, when every value is
      finite.

    Raises:
      NonFiniteError: the first layer (in execution order) whose input, parameters or output
        is not finite.

    Examples:
        >>> from jaxnn.debug import checked_apply
        >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.relu())
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> y, new_state = checked_apply(net, params, (), jnp.ones((4, 3)))
        >>> y.shape, new_state
        ((4, 2), ())
    """
    checked_model = checked(model)

    def run(params, state, x, key):
        return apply(checked_model, params, state, x, key=key, train=train)

    err, out = jax.jit(checkify.checkify(run))(params, state, x, key)
    _raise(err)
    return out


def checked_value_and_grad(model: Layer, loss: Loss, params: Any, x: jax.Array, y: jax.Array,
                           *, state: Any = (), key: jax.Array | None = None,
                           train: bool = True) -> tuple[tuple[jax.Array, Any], Any]:
    """The explicit hand-derived chain in check mode, forward and backward.

    Returns ``((value, new_state), grads)`` like
    ``jaxnn.value_and_grad(model, loss)``; raises [`NonFiniteError`][jaxnn.debug.NonFiniteError]
    naming the first layer whose output or backward is not finite, or the loss.

    Args:
      model: the network.
      loss: its loss.
      params: the network's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      state: the network's state (``()`` for none).
      key: the PRNG key of the forward pass (dropout).
      train: the mode (training by default, as in a train step).

    Returns:
      ``((value, new_state), grads)``, ``grads`` with the structure of ``params``.

    Raises:
      NonFiniteError: the first non-finite point, forward or backward.

    Examples:
        >>> from jaxnn.debug import checked_value_and_grad
        >>> net = jaxnn.serial(jaxnn.dense(1), jaxnn.sigmoid())
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> x, y = jnp.ones((4, 3)), jnp.ones((4, 1))
        >>> (value, new_state), grads = checked_value_and_grad(
        ...     net, jaxnn.binary_cross_entropy, params, x, y)
        >>> value.shape, jax.tree.map(jnp.shape, grads)
        ((), ({'W': (3, 1), 'b': (1,)}, ()))
        >>> try:
        ...     checked_value_and_grad(net, jaxnn.binary_cross_entropy, params,
        ...                            x.at[2, 1].set(jnp.inf), y)
        ... except jaxnn.debug.NonFiniteError as e:
        ...     print(e)
        non-finite values in the input of serial/0:dense (first non-finite point in the network)
    """
    model, loss = fuse(model, loss)
    chain = value_and_grad(checked(model), _checked_loss(loss), train=train)

    def run(params, state, x, y, key):
        return chain(params, state, x, y, key)

    err, out = jax.jit(checkify.checkify(run))(params, state, x, y, key)
    _raise(err)
    return out
