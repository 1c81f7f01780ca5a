r"""Mixed precision: a dtype policy for every layer, and loss scaling for float16.

A [`Policy`][jaxnn.Policy] names three dtypes: parameters are stored (and updated by the optimizer)
in ``param_dtype``, layers compute in ``compute_dtype``, and each layer hands ``output_dtype`` to
the next. [`apply_policy`][jaxnn.precision.apply_policy] wraps every leaf layer of a network
([`jaxnn.map_leaves`][jaxnn.map_leaves]):

* forward: the leaf's floating parameters and inputs are cast to ``compute_dtype``, the leaf
  runs, its output is cast to ``output_dtype``, its new state back to the state's own dtype;
* backward: ``dy`` is cast to ``compute_dtype``, the leaf's own hand-derived backward runs in
  it, then ``dparams`` are cast to the parameters' dtype and ``dx`` to the input's dtype.

So the matrix products of forward *and* backward run in bfloat16 or float16 while gradients
arrive in float32, where the optimizer accumulates them. Losses reduce half-precision
predictions in float32 (``jaxnn.losses``).

Loss scaling. float16's smallest subnormal is ``2⁻²⁴ ≈ 6e-8``: a backward signal below it
flushes to zero. Scaling multiplies the loss's derivative ``dJ/dA[L]`` by ``S`` before the
backward, in float32, and divides the float32 parameter gradients by ``S`` after it; every
intermediate ``dZ``, ``dA`` is ``S`` times larger and stays representable. With a dynamic scale a
step whose gradients are not finite (the scale was too large, float16 overflowed past 65504) is
skipped — parameters and optimizer state unchanged — and ``S`` is divided by ``factor``; after
``growth_interval`` finite steps in a row ``S`` is multiplied by ``factor``.

In formulas, the backward starts from $S$ times the loss's derivative and the parameter
gradients are divided by $S$ at the end; between the two, by linearity of the backward, every
signal is $S$ times the true one:

$$
dA^{[L]} = S \, \frac{\partial J}{\partial A^{[L]}} \qquad
dZ^{[l]} = S \, \frac{\partial J}{\partial Z^{[l]}} \qquad
g = \frac{1}{S} \, dW = \frac{\partial J}{\partial W}
$$

and a dynamic scale $S_t$ with factor $f$ and growth interval $N$ moves as

$$
S_{t+1} = \begin{cases} \max(S_t / f, 1) & \text{if } g_t \text{ is not finite (step skipped)} \\
f \, S_t & \text{after } N \text{ finite steps in a row} \\
S_t & \text{otherwise} \end{cases}
$$

Both plug into the one training step, for stateless and stateful models alike: the gradient
function [`value_and_grad`][jaxnn.precision.value_and_grad] and the optax transformation
[`loss_scaling`][jaxnn.precision.loss_scaling] (which keeps
``S`` and skips non-finite steps with ``optax.apply_if_finite``):

```python
step = jaxnn.make_train_step(model, loss, loss_scaling(optax.adam(1e-3), dynamic_loss_scale()),
                             gradients=value_and_grad(model, loss, policy))
```

(a runnable version is [`value_and_grad`][jaxnn.precision.value_and_grad]'s example).

Gradient checks stay float64: [`jaxnn.gradcheck`][jaxnn.gradcheck] casts everything to float64 and
checks the
layers' own backward passes; a policy whose compute dtype is float64 is a pure wrapper the check
passes through (see the tests), while a half-precision policy is judged by training, not by the
1e-9 tolerances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxnn.chain import fuse
from jaxnn.chain import value_and_grad as chain_value_and_grad
from jaxnn.core import Layer, map_leaves
from jaxnn.losses import Loss

__all__ = [
    "LossScale",
    "LossScalingState",
    "Policy",
    "apply_policy",
    "dynamic_loss_scale",
    "loss_scaling",
    "static_loss_scale",
    "value_and_grad",
]


def _is_float(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _cast_floats(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda a: a.astype(dtype) if _is_float(a) else a, tree)


class Policy(NamedTuple):
    """The dtypes of parameters, computation and layer outputs.

    Attributes:
      param_dtype: the dtype parameters are stored and updated in (``float32``).
      compute_dtype: the dtype every layer's forward and backward run in (``bfloat16`` or
        ``float16``).
      output_dtype: the dtype each layer's output is handed on in; ``None`` means
        ``compute_dtype`` (activations between layers stay in half precision).

    Examples:
      >>> policy = jaxnn.Policy(compute_dtype=jnp.float16)
      >>> [jnp.dtype(d).name for d in (policy.param_dtype, policy.compute_dtype)]
      ['float32', 'float16']
      >>> _, params, _ = jaxnn.dense(2, dtype=jnp.float16).init(jax.random.key(0), (-1, 3))
      >>> jax.tree.map(lambda p: p.dtype.name, policy.cast_params(params))
      {'W': 'float32', 'b': 'float32'}
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.bfloat16
    output_dtype: Any = None

    def cast_params(self, params: Any) -> Any:
        """Casts the floating leaves of ``params`` to ``param_dtype`` (after ``init``)."""
        return _cast_floats(params, self.param_dtype)


@jax.tree_util.register_pytree_node_class
class _Static:
    """A pytree with no leaves carrying a Python value (dtypes) from forward to backward."""

    def __init__(self, value):
        self.value = value

    def tree_flatten(self):
        return (), self.value

    @classmethod
    def tree_unflatten(cls, value, children):
        del children
        return cls(value)


def _policy_leaf(leaf: Layer, policy: Policy) -> Layer:
    compute = jnp.dtype(policy.compute_dtype)
    output = compute if policy.output_dtype is None else jnp.dtype(policy.output_dtype)

    def forward(params, state, x, *, key=None, train=False):
        y, new_state, residuals = leaf.forward(_cast_floats(params, compute), state,
                                               _cast_floats(x, compute), key=key, train=train)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)
        in_dtypes = jax.tree.map(lambda a: getattr(a, "dtype", None), x)
        return _cast_floats(y, output), new_state, (residuals, _Static(in_dtypes))

    def backward(params, residuals, dy):
        residuals, in_dtypes = residuals
        dparams, dx = leaf.backward(_cast_floats(params, compute), residuals,
                                    _cast_floats(dy, compute))
        dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
        if dx is not None:
            dx = jax.tree.map(lambda d, t: d if d is None or t is None else d.astype(t),
                              dx, in_dtypes.value, is_leaf=lambda a: a is None)
        return dparams, dx

    return leaf._replace(forward=forward, backward=backward)


def apply_policy(model: Layer, policy: Policy) -> Layer:
    """``model`` with every leaf layer running under ``policy`` (module doc).

    The parameters keep their structure; cast them with ``policy.cast_params`` once.

    Args:
      model: the network.
      policy: the dtypes.

    Returns:
      The network with every leaf wrapped; its params and state are those of ``model``.

    Raises:
      TypeError: if ``policy`` is not a [`jaxnn.Policy`][jaxnn.Policy].

    Examples:
      >>> policy = jaxnn.Policy(compute_dtype=jnp.bfloat16)
      >>> net = jaxnn.precision.apply_policy(jaxnn.serial(jaxnn.dense(3), jaxnn.relu()), policy)
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> y, _ = jaxnn.apply(net, params, (), jnp.ones((4, 2), jnp.float32))
      >>> y.dtype
      dtype(bfloat16)

      The gradients come back in the parameters' dtype, the backward having run in bfloat16:

      >>> grads = jax.grad(lambda p: jnp.sum(jaxnn.apply(net, p, (), jnp.ones((4, 2)))[0]))(
      ...     params)
      >>> grads[0]["W"].dtype
      dtype('float32')
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"apply_policy: policy must be a jaxnn.Policy, got {type(policy).__name__}")
    return map_leaves(lambda leaf, path: _policy_leaf(leaf, policy), model)


# --- loss scaling --------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class LossScale:
    """A loss scale ``S`` and, when dynamic, the count of finite steps since it last changed.

    Make one with [`static_loss_scale`][jaxnn.precision.static_loss_scale] or
    [`dynamic_loss_scale`][jaxnn.precision.dynamic_loss_scale]; it is a pytree (its
    arrays are ``scale`` and ``good_steps``; ``dynamic``, ``growth_interval`` and ``factor`` are
    static), carried from step to step in [`loss_scaling`][jaxnn.precision.loss_scaling]'s
    optimizer state.

    Examples:
      >>> loss_scale = jaxnn.precision.dynamic_loss_scale(8.0, growth_interval=2)
      >>> float(loss_scale.scale), int(loss_scale.good_steps), loss_scale.dynamic
      (8.0, 0, True)
      >>> grads = loss_scale.unscale({"W": jnp.array([8.0, 16.0])})
      >>> [round(float(g), 4) for g in grads["W"]]
      [1.0, 2.0]
      >>> for finite in (True, True, False):  # grows after 2 finite steps, shrinks at a bad one
      ...     loss_scale = loss_scale.adjust(jnp.asarray(finite))
      ...     print(float(loss_scale.scale), int(loss_scale.good_steps))
      8.0 1
      16.0 0
      8.0 0
    """

    scale: jax.Array
    good_steps: jax.Array
    dynamic: bool = False
    growth_interval: int = 2000
    factor: float = 2.0

    def tree_flatten(self):
        return (self.scale, self.good_steps), (self.dynamic, self.growth_interval, self.factor)

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children, *aux)

    def unscale(self, grads: Any) -> Any:
        """``grads / S``, in each gradient's own dtype."""
        return jax.tree.map(lambda g: g / self.scale.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> LossScale:
        """The scale for the next step, after a step whose gradients were ``finite`` or not."""
        if not self.dynamic:
            return self
        grown = self.good_steps + 1 >= self.growth_interval
        scale = jnp.where(finite, jnp.where(grown, self.scale * self.factor, self.scale),
                          jnp.maximum(self.scale / self.factor, 1.0))
        good = jnp.where(finite & ~grown, self.good_steps + 1, 0)
        return dataclasses.replace(self, scale=scale, good_steps=good)


def static_loss_scale(scale: float = 1.0) -> LossScale:
    """A fixed loss scale (a power of two keeps scaling exact).

    Args:
      scale: ``S``, positive; ``1.0`` is no scaling (enough for bfloat16).

    Returns:
      A [`LossScale`][jaxnn.precision.LossScale] that never changes.

    Raises:
      ValueError: if ``scale`` is not positive.

    Examples:
      >>> loss_scale = jaxnn.precision.static_loss_scale(1024.0)
      >>> float(loss_scale.scale), loss_scale.dynamic
      (1024.0, False)
      >>> float(loss_scale.adjust(jnp.asarray(False)).scale)  # never adjusted
      1024.0
    """
    if not scale > 0:
        raise ValueError(f"static_loss_scale: scale must be positive, got {scale!r}")
    return LossScale(jnp.asarray(scale, jnp.float32), jnp.zeros((), jnp.int32))


def dynamic_loss_scale(initial: float = 2.0**15, *, growth_interval: int = 2000,
                       factor: float = 2.0) -> LossScale:
    """A scale halved (÷ ``factor``) at every non-finite step, doubled after
    ``growth_interval`` finite steps in a row; never below 1.

    Args:
      initial: the first scale, at least 1 (``2¹⁵`` by default).
      growth_interval: the number of finite steps in a row after which ``S`` grows.
      factor: what ``S`` is multiplied by when it grows and divided by when it shrinks (> 1).

    Returns:
      A dynamic [`LossScale`][jaxnn.precision.LossScale].

    Raises:
      ValueError: if an argument is out of range.

    Examples:
      >>> loss_scale = jaxnn.precision.dynamic_loss_scale(2.0)
      >>> loss_scale.growth_interval, loss_scale.factor
      (2000, 2.0)
      >>> for _ in range(3):  # three overflowing steps: 2 -> 1, and never below 1
      ...     loss_scale = loss_scale.adjust(jnp.asarray(False))
      >>> float(loss_scale.scale)
      1.0
    """
    if not initial >= 1:
        raise ValueError(f"dynamic_loss_scale: initial must be >= 1, got {initial!r}")
    if not factor > 1:
        raise ValueError(f"dynamic_loss_scale: factor must be > 1, got {factor!r}")
    if not isinstance(growth_interval, int) or growth_interval < 1:
        raise ValueError(f"dynamic_loss_scale: growth_interval must be a positive int, got "
                         f"{growth_interval!r}")
    return LossScale(jnp.asarray(initial, jnp.float32), jnp.zeros((), jnp.int32), True,
                     growth_interval, float(factor))


class LossScalingState(NamedTuple):
    """The state of [`loss_scaling`][jaxnn.precision.loss_scaling]: the loss scale and
    ``optax.apply_if_finite``'s state around the inner optimizer's.

    Attributes:
      loss_scale: the current [`LossScale`][jaxnn.precision.LossScale].
      guarded: ``optax.apply_if_finite``'s state, which holds the inner optimizer's.

    Examples:
      >>> import optax
      >>> _, params, _ = jaxnn.dense(1).init(jax.random.key(0), (-1, 2))
      >>> optimizer = jaxnn.precision.loss_scaling(
      ...     optax.sgd(0.1), jaxnn.precision.dynamic_loss_scale(1024.0))
      >>> opt_state = optimizer.init(params)
      >>> type(opt_state).__name__, float(opt_state.loss_scale.scale)
      ('LossScalingState', 1024.0)
      >>> int(opt_state.guarded.total_notfinite)
      0
    """

    loss_scale: LossScale
    guarded: optax.ApplyIfFiniteState


def loss_scaling(optimizer: optax.GradientTransformation,
                 loss_scale: LossScale) -> optax.GradientTransformation:
    """``optimizer`` with a loss scale in its state and non-finite steps skipped.

    ``update`` runs ``optimizer`` inside ``optax.apply_if_finite``: when a gradient is not
    finite the update is zero (parameters unchanged) and the inner optimizer state is kept.
    Then the scale is adjusted ([`LossScale.adjust`][jaxnn.precision.LossScale.adjust]).
    [`value_and_grad`][jaxnn.precision.value_and_grad] reads ``S``
    from this state; make it the outermost transformation (the one given to
    [`jaxnn.make_train_step`][jaxnn.make_train_step]).

    Args:
      optimizer: the optimizer (L2 may be chained into it).
      loss_scale: [`static_loss_scale`][jaxnn.precision.static_loss_scale]
        (``static_loss_scale(1.0)``: no scaling, enough
        for bfloat16) or [`dynamic_loss_scale`][jaxnn.precision.dynamic_loss_scale] (float16).

    Returns:
      An ``optax.GradientTransformation`` whose state is a
        [`LossScalingState`][jaxnn.precision.LossScalingState].

    Raises:
      TypeError: if ``loss_scale`` is not a [`LossScale`][jaxnn.precision.LossScale].

    Examples:
      A step whose gradients overflowed changes nothing and halves the scale:

      >>> import optax
      >>> _, params, _ = jaxnn.dense(1).init(jax.random.key(0), (-1, 2))
      >>> optimizer = jaxnn.precision.loss_scaling(
      ...     optax.sgd(0.1), jaxnn.precision.dynamic_loss_scale(1024.0))
      >>> opt_state = optimizer.init(params)
      >>> overflowed = jax.tree.map(lambda p: jnp.full_like(p, jnp.inf), params)
      >>> updates, opt_state = optimizer.update(overflowed, opt_state, params)
      >>> all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
      True
      >>> float(opt_state.loss_scale.scale)
      512.0
    """
    if not isinstance(loss_scale, LossScale):
        raise TypeError(f"loss_scaling: loss_scale must be a jaxnn.precision.LossScale, got "
                        f"{type(loss_scale).__name__}")
    # never give up on skipping: a dynamic scale comes down until steps are finite again
    guarded = optax.apply_if_finite(optimizer, max_consecutive_errors=jnp.iinfo(jnp.int32).max)

    def init(params):
        return LossScalingState(loss_scale, guarded.init(params))

    def update(grads, state, params=None):
        updates, inner = guarded.update(grads, state.guarded, params)
        return updates, LossScalingState(state.loss_scale.adjust(inner.last_finite), inner)

    return optax.GradientTransformation(init, update)


def _loss_scale_in(opt_state: Any) -> LossScale:
    found = [node for node in jax.tree.leaves(
        opt_state, is_leaf=lambda n: isinstance(n, LossScalingState))
        if isinstance(node, LossScalingState)]
    if len(found) > 1:
        raise ValueError(f"precision.value_and_grad: the optimizer state holds {len(found)} "
                         f"loss_scaling states; use one")
    return found[0].loss_scale if found else static_loss_scale(1.0)


def value_and_grad(model: Layer, loss: Loss, policy: Policy) -> Callable:
    """The loss and its float32 gradients under ``policy``, with the loss scale of the
    optimizer state: a gradient function for [`jaxnn.make_train_step`][jaxnn.make_train_step].

    Returns:
      ``fn(params, state, x, y, key=None, opt_state=None) -> ((value, new_state), grads)``:
        the explicit hand-derived chain ([`jaxnn.value_and_grad`][jaxnn.value_and_grad])
        through [`apply_policy`][jaxnn.precision.apply_policy]'s model (after
        [`jaxnn.fuse`][jaxnn.fuse]) with ``dJ/dA[L]`` multiplied by ``S`` (in float32, before any
        cast to the compute dtype) and the parameter gradients divided by ``S``. ``S`` is read
        from the [`loss_scaling`][jaxnn.precision.loss_scaling] state inside ``opt_state``
        (``1`` when there is none). The model may have state (batch norm) and randomness.

    Examples:
      A float16 network trained with a dynamic loss scale; gradients arrive in float32:

      >>> import optax
      >>> policy = jaxnn.Policy(compute_dtype=jnp.float16)
      >>> net = jaxnn.serial(jaxnn.dense(4), jaxnn.tanh(), jaxnn.dense(1))
      >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
      >>> x = jax.random.normal(jax.random.key(1), (8, 2), jnp.float32)
      >>> y = x[:, :1]
      >>> optimizer = jaxnn.precision.loss_scaling(
      ...     optax.sgd(0.1), jaxnn.precision.dynamic_loss_scale(1024.0))
      >>> opt_state = optimizer.init(params)
      >>> fn = jaxnn.precision.value_and_grad(net, jaxnn.mean_squared_error, policy)
      >>> (value, _), grads = fn(params, (), x, y, None, opt_state)
      >>> grads[0]["W"].dtype
      dtype('float32')
      >>> (_, _), exact = jaxnn.value_and_grad(net, jaxnn.mean_squared_error)(params, (), x, y)
      >>> bool(jnp.allclose(grads[0]["W"], exact[0]["W"], atol=1e-2))  # float16's precision
      True
      >>> step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer, gradients=fn)
      >>> params, _, opt_state, loss = step(params, (), opt_state, x, y)
      >>> float(opt_state.loss_scale.scale)
      1024.0
    """
    model, loss = fuse(apply_policy(model, policy), loss)

    def fn(params, state, x, y, key=None, opt_state=None):
        loss_scale = _loss_scale_in(opt_state)
        scale = loss_scale.scale

        def scaled_grad(a, t):
            g = loss.grad(a, t)
            return g * scale.astype(g.dtype)

        chain = chain_value_and_grad(model, loss._replace(grad=scaled_grad), train=True)
        (value, new_state), grads = chain(params, state, x, y, key)
        return (value, new_state), loss_scale.unscale(grads)

    return fn
