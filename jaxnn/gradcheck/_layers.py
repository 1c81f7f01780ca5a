"""Checks of layers, losses, the registered cases and whole models."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.chain import fuse, value_and_grad
from jaxnn.core import Layer, apply, map_leaves, reference_apply, sublayer_labels
from jaxnn.gradcheck._cases import LayerCase, LossCase, case_input
from jaxnn.gradcheck._numerics import (
    GradientsOf,
    _key_name,
    _leaf_names,
    _run_check,
    _shape_of,
    _to_float64,
    host_rng,
    standard_normal,
)
from jaxnn.gradcheck._reports import DEFAULT_TOLERANCES, GradcheckReport, Tolerances
from jaxnn.losses import Loss

__all__ = ["check_case", "check_layer", "check_loss", "check_model"]


def _draw_input(key: jax.Array, in_shape: Sequence[int], input_dtype: Any) -> jax.Array:
    """Standard normal entries, or integer ids in ``[0, 4)`` for an integer ``input_dtype``."""
    shape = tuple(int(d) for d in in_shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"check_layer: in_shape must be concrete, got {shape}")
    if input_dtype is not None and jnp.issubdtype(input_dtype, jnp.integer):
        return jnp.asarray(host_rng(key).integers(0, 4, shape), input_dtype)
    return standard_normal(key, shape)


# --- layers ------------------------------------------------------------------------------------


def check_layer(
    layer: Layer,
    in_shape: Sequence[int] | None = None,
    *,
    params: Any = None,
    state: Any = None,
    x: Any = None,
    key: jax.Array | None = None,
    train: bool = False,
    seed: int = 0,
    input_dtype: Any = None,
    name: str | None = None,
    batch_sizes: Sequence[int] | None = None,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
) -> GradcheckReport:
    r"""Checks ``layer.backward`` against ``jax.grad`` and finite differences, in float64.

    Args:
      layer: any [`jaxnn.Layer`][jaxnn.Layer], a user's own included.
      in_shape: the input shape, batch axis first (all entries concrete); a tuple of shapes for
        a layer taking a tuple of arrays ([`jaxnn.concatenate`][jaxnn.concatenate]). Not needed
        when ``x`` is
        given.
      params: the layer's parameters; made by ``layer.init`` when omitted.
      state: the layer's state; made by ``layer.init`` when omitted.
      x: the input, an array or a tuple of arrays; standard normal entries when omitted
        (integer ids in ``[0, 4)`` when ``input_dtype`` is an integer type: then only the
        parameters' gradients are checked).
      key: the PRNG key handed to ``forward`` (dropout); from ``seed`` when omitted in training.
      train: the mode to check (batch statistics, dropout masks).
      seed: seeds the parameters, input, cotangent and finite-difference sampling.
      name: the name used in the report (default ``layer.name``).
      batch_sizes: further batch sizes to check at besides ``in_shape``'s, since a backward can
        be right at one and wrong at another; by default the smallest the mode allows, 1 (2 in
        training mode: batch statistics need two examples). Ignored when ``x`` is given.
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport]: a row per parameter and input
      (``"input[i]"`` per entry of a tuple), for $S = \sum_k \sum v_k \odot y_k$ with a random
      cotangent $v_k$ per output $y_k$.

    Examples:
        A dense layer checked at input shape ``(3, 2)`` and, by default, at batch 1:

        >>> from jaxnn.gradcheck import check_layer
        >>> report = check_layer(jaxnn.dense(2), (3, 2))
        >>> report.passed
        True
        >>> sorted({c.in_shape for c in report.comparisons})
        [(1, 2), (3, 2)]
        >>> print(report.table())
        layer  parameter  rel. err vs jax.grad  rel. err vs finite diff.  worst entry
        -----  ---------  --------------------  ------------------------  -----------  ----
        dense  W          ...  pass
        dense  b          ...  pass
        dense  input      ...  pass
    """
    with jax.enable_x64(True):
        k_init, k_x, k_v, k_fwd = jax.random.split(jax.random.key(seed), 4)
        shapes = [] if x is not None else _batch_variants(in_shape, batch_sizes, train)
        inputs = [x] if x is not None else [_draw_layer_input(k_x, shape, input_dtype)
                                             for shape in shapes]
        inputs = [_to_float64(inp) for inp in inputs]
        if params is None or state is None:
            _, p0, s0 = layer.init(k_init, _shape_of(inputs[0]))
            params = p0 if params is None else params
            state = s0 if state is None else state
        params, state = _to_float64(params), _to_float64(state)
        if key is None and train:
            key = k_fwd
        report = GradcheckReport()
        for inp in inputs:
            leaves = [*jax.tree.leaves(params), *jax.tree.leaves(inp)]
            input_names = ["input" + ("" if n == "(array)" else n) for n in _leaf_names(inp)]
            names = [*_leaf_names(params), *input_names]
            y, _ = jax.eval_shape(lambda inp=inp: reference_apply(layer, params, state, inp,
                                                                  key=key, train=train))
            y_leaves, y_def = jax.tree.flatten(y)
            keys = jax.random.split(k_v, len(y_leaves)) if len(y_leaves) > 1 else [k_v]
            cotangents = [standard_normal(k, leaf.shape)
                          for k, leaf in zip(keys, y_leaves, strict=True)]
            structure = (jax.tree.structure(params), jax.tree.structure(inp), y_def)
            make = functools.partial(_layer_scalars, layer, *structure, train)
            cache_key = ("layer", layer, *structure, jax.tree.structure(state), train,
                         key is None)
            report.extend(_run_check(cache_key, make, leaves, (state, cotangents, key), names,
                                     name or layer.name, tolerances, seed, _shape_of(inp)))
        return report


def _batch_variants(in_shape: Sequence | None, batch_sizes: Sequence[int] | None,
                    train: bool) -> list:
    """``in_shape``, then ``in_shape`` with each other batch size (every entry of a tuple)."""
    if in_shape is None:
        raise ValueError("check_layer: give in_shape or x")
    if batch_sizes is None:
        batch_sizes = (2,) if train else (1,)
    tuple_input = bool(in_shape) and all(isinstance(d, Sequence) for d in in_shape)
    first = in_shape[0][0] if tuple_input else in_shape[0]

    def with_batch(b):
        return tuple((b, *s[1:]) for s in in_shape) if tuple_input else (b, *in_shape[1:])

    return [tuple(in_shape), *(with_batch(b) for b in dict.fromkeys(batch_sizes) if b != first)]


def _draw_layer_input(key: jax.Array, in_shape: Sequence, input_dtype: Any) -> Any:
    """An input of ``in_shape``: one array, or a tuple of arrays for a tuple of shapes."""
    if in_shape and all(isinstance(d, Sequence) for d in in_shape):  # a tuple input
        keys = jax.random.split(key, len(in_shape))
        return tuple(_draw_input(k, s, input_dtype) for k, s in zip(keys, in_shape, strict=True))
    return _draw_input(key, in_shape, input_dtype)


def _layer_scalars(layer: Layer, params_def, x_def, y_def, train: bool, context) -> tuple:
    """``(hand, reference, fd, magnitude)`` for [`_run_check`]: ``S(*param_leaves,
    *input_leaves) = Σ_i Σ v_i ⊙ y_i`` through [`jaxnn.apply`][jaxnn.apply] (the hand-derived
    backward) and [`jaxnn.reference_apply`][jaxnn.reference_apply], finite differences through
    the reference, and ``[Σ |v ⊙ y|, non-finite outputs]``. ``context`` holds the state, the
    cotangents ``v_i`` and the forward's key, as arguments of the compiled check."""
    state, cotangents, key = context
    n_params = params_def.num_leaves

    def outputs(path_fn, arrays):
        p = jax.tree.unflatten(params_def, arrays[:n_params])
        inp = jax.tree.unflatten(x_def, arrays[n_params:])
        out, _ = path_fn(layer, p, state, inp, key=key, train=train)
        out_leaves, out_def = jax.tree.flatten(out)
        if out_def != y_def:
            raise ValueError(f"check_layer: the output's structure {out_def} differs from the "
                             f"reference's {y_def}")
        return out_leaves

    def scalar(path_fn):
        return lambda *arrays: sum(jnp.sum(v * o) for v, o in zip(
            cotangents, outputs(path_fn, arrays), strict=True))

    def magnitude(*arrays):
        out = outputs(reference_apply, arrays)
        size = sum(jnp.sum(jnp.abs(v * o)) for v, o in zip(cotangents, out, strict=True))
        bad = sum(jnp.sum(~jnp.isfinite(o)) for o in out)
        return jnp.stack([size, bad.astype(size.dtype)])

    reference = scalar(reference_apply)
    return scalar(apply), reference, reference, magnitude


# --- losses ------------------------------------------------------------------------------------


def check_loss(loss: Loss, prediction: Any, target: Any, *, seed: int = 0,
               tolerances: Tolerances = DEFAULT_TOLERANCES) -> GradcheckReport:
    r"""Checks ``loss.grad`` (the hand-derived $\partial J / \partial a$) in float64.

    The hand-derived side is ``loss(prediction, target)``, whose ``jax.custom_vjp`` runs
    ``loss.grad``; the references are ``jax.grad`` of ``loss.value`` and finite differences of
    it, as in the module doc. The report has one row, named ``loss.name`` / ``"prediction"``.

    Args:
      loss: a [`jaxnn.Loss`][jaxnn.Loss] (``jaxnn.mean_squared_error``, a user's own).
      prediction: the network's output $a$ at which to differentiate.
      target: the labels $y$ (held fixed).
      seed: seeds the finite-difference sampling.
      tolerances: the pass thresholds and finite-difference settings.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    Examples:
        >>> from jaxnn.gradcheck import check_loss
        >>> a = jnp.array([[0.2], [0.9], [0.4]])
        >>> y = jnp.array([[0.0], [1.0], [1.0]])
        >>> report = check_loss(jaxnn.binary_cross_entropy, a, y)
        >>> report.passed
        True
        >>> [(c.layer, c.parameter, c.reference) for c in report.comparisons]
        [('binary_cross_entropy', 'prediction', 'jax.grad'),
         ('binary_cross_entropy', 'prediction', 'finite differences')]
    """
    with jax.enable_x64(True):
        prediction, target = _to_float64(prediction), _to_float64(target)
        key = ("loss", loss, jax.tree.structure(target))
        return _run_check(key, functools.partial(_loss_scalars, loss), [prediction], target,
                          ["prediction"], loss.name, tolerances, seed)


def _loss_scalars(loss: Loss, target) -> tuple:
    """``(hand, reference, fd, magnitude)`` for ``_run_check``: the loss through its rule and
    through its value, at the ``target`` held fixed."""

    def reference(p):
        return loss.value(p, target)

    return (lambda p: loss(p, target)), reference, reference, None


# --- the registered cases ----------------------------------------------------------------------


def check_case(case: LayerCase | LossCase, seed: int = 0) -> GradcheckReport:
    """Checks one case of [`LAYER_CASES`][jaxnn.gradcheck.LAYER_CASES] /
    [`LOSS_CASES`][jaxnn.gradcheck.LOSS_CASES] (or a user's own case).

    A [`LayerCase`][jaxnn.gradcheck.LayerCase] goes to
    [`check_layer`][jaxnn.gradcheck.check_layer] with its input shape, its ``options``
    (those naming [`Tolerances`][jaxnn.gradcheck.Tolerances] fields set the tolerances) and the
    input [`case_input`][jaxnn.gradcheck.case_input] draws; a
    [`LossCase`][jaxnn.gradcheck.LossCase] goes to [`check_loss`][jaxnn.gradcheck.check_loss]
    with the inputs it draws from ``numpy.random.default_rng(seed)``.

    Args:
      case: the case.
      seed: seeds the inputs, parameters, cotangent and finite-difference sampling.

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport].

    Examples:
        >>> from jaxnn.gradcheck import LAYER_CASES, LOSS_CASES, check_case
        >>> case = LAYER_CASES["relu"][0]
        >>> case, case.inputs
        (relu[3x4], 'away_from_zero')
        >>> check_case(case).passed
        True
        >>> check_case(LOSS_CASES["mean_squared_error"][0]).passed
        True
    """
    if isinstance(case, LossCase):
        prediction, target = case.make_inputs(np.random.default_rng(seed))
        return check_loss(case.loss, prediction, target, seed=seed)
    options = {k: v for k, v in case.options.items() if k not in Tolerances._fields}
    tolerances = DEFAULT_TOLERANCES._replace(
        **{k: v for k, v in case.options.items() if k in Tolerances._fields})
    x = case_input(case, seed)
    if x is not None:
        options.setdefault("x", x)
    return check_layer(_case_layer(case), case.in_shape, seed=seed, tolerances=tolerances,
                       **options)


_CASE_LAYERS: dict[int, tuple] = {}


def _case_layer(case: LayerCase) -> Layer:
    """``case.make()``, made once per case, so that checking a case again (another seed, the
    test suite and the command line) reuses the compiled check of its layer."""
    held = _CASE_LAYERS.get(id(case))
    if held is None or held[0] is not case:
        held = _CASE_LAYERS[id(case)] = (case, case.make())
    return held[1]


# --- whole models ------------------------------------------------------------------------------


def _record_inputs(model: Layer, params, state, x, key, train) -> list[tuple]:
    """Runs ``model.forward`` once and returns ``(path, leaf, params, state, x, key)`` per leaf."""
    records: list[tuple] = []

    def wrap(leaf: Layer, path: str) -> Layer:
        def forward(p, s, inp, *, key=None, train=False):
            records.append((path, leaf, p, s, inp, key))
            return leaf.forward(p, s, inp, key=key, train=train)

        return leaf._replace(forward=forward)

    recorder = map_leaves(wrap, model)
    recorder.forward(params, state, x, key=key, train=train)
    return records


def check_model(
    model: Layer,
    loss: Loss,
    params: Any,
    x: Any,
    y: Any,
    *,
    state: Any = (),
    key: jax.Array | None = None,
    train: bool = False,
    seed: int = 0,
    per_layer: bool = True,
    tolerances: Tolerances = DEFAULT_TOLERANCES,
    fused: bool = True,
) -> GradcheckReport:
    """Checks a whole network and its loss, and names the layer whose backward is wrong.

    With ``fused`` (the default) a final activation and its loss that have a stable fused form
    (sigmoid + ``binary_cross_entropy``, softmax + ``softmax_cross_entropy``) are checked as
    [`jaxnn.fuse`][jaxnn.fuse] makes them, the form training uses: the separate pair clips
    saturated probabilities in its value but not in its straight-through derivative, so finite
    differences of it are flat where an output saturates and disagree with every correct rule.
    The activation is still checked alone in part 2; ``fused=False`` checks the pair as given.

    Three parts, all in float64:

    1. the gradient of ``J = loss(model(x), y)`` for every parameter, from the explicit
       hand-derived chain ([`jaxnn.value_and_grad`][jaxnn.value_and_grad], no autodiff), against
       ``jax.grad`` of
       the reference path and against finite differences; rows are named
       ``"<path>"`` / ``"<parameter>"``, e.g. ``"serial/2:dense"`` / ``"W"``;
    2. with ``per_layer``, each leaf layer on its own, at the very input it receives inside the
       model (so a wrong backward in a layer without parameters is named too);
    3. the loss's own derivative at the model's output.

    Args:
      model: the network.
      loss: its loss.
      params: the network's parameters.
      x: a batch of inputs.
      y: the batch's targets.
      state: the network's state (``()`` for none).
      key: the PRNG key of the forward pass (dropout).
      train: the mode to check.
      seed: seeds the cotangents and the finite-difference sampling.
      per_layer: also check each leaf layer alone (part 2).
      tolerances: the pass thresholds and finite-difference settings.
      fused: check parts 1 and 3 on ``jaxnn.fuse(model, loss)`` (a note says when it fused).

    Returns:
      A [`GradcheckReport`][jaxnn.gradcheck.GradcheckReport]; ``report.failing_layers`` names
      the layers at fault.

    Examples:
        >>> from jaxnn.gradcheck import check_model
        >>> net = jaxnn.serial(jaxnn.dense(2), jaxnn.tanh(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 3))
        >>> x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
        >>> y = jnp.ones((4, 1))
        >>> report = check_model(net, jaxnn.mean_squared_error, params, x, y)
        >>> report.passed, report.failing_layers
        (True, [])
        >>> list(dict.fromkeys(c.layer for c in report.comparisons))
        ['serial/0:dense', 'serial/2:dense', 'serial/0:dense (alone)', 'serial/1:tanh (alone)',
         'serial/2:dense (alone)', 'mean_squared_error']
    """
    with jax.enable_x64(True):
        params, state = _to_float64(params), _to_float64(state)
        x, y = _to_float64(x), _to_float64(y)
        checked_model, checked_loss = fuse(model, loss) if fused else (model, loss)
        report = _check_model_parameters(checked_model, checked_loss, params, state, x, y, key,
                                         train, tolerances, seed)
        if checked_loss is not loss:
            report.notes.append(f"{model.sublayers[-1].name} + {loss.name} checked fused as "
                                f"{checked_loss.name}, what training uses (fused=False: as "
                                f"given)")
        if per_layer:
            for path, leaf, p, s, inp, k in _record_inputs(model, params, state, x, key, train):
                report.extend(check_layer(leaf, params=p, state=s, x=inp, key=k, train=train,
                                          seed=seed, name=f"{path} (alone)",
                                          tolerances=tolerances))
        out, _ = reference_apply(checked_model, params, state, x, key=key, train=train)
        report.extend(check_loss(checked_loss, out, y, seed=seed, tolerances=tolerances))
        return report


def _check_model_parameters(model: Layer, loss: Loss, params, state, x, y, key, train: bool,
                            tolerances: Tolerances, seed: int) -> GradcheckReport:
    """Part 1 of [`check_model`][jaxnn.gradcheck.check_model]: every parameter's gradient through
    the explicit chain, against autodiff and finite differences of the reference path."""
    leaves, treedef = jax.tree.flatten(params)
    cache_key = ("model", model, loss, treedef, jax.tree.structure((state, x, y)), train,
                 key is None)
    make = functools.partial(_model_scalars, model, loss, treedef, train)
    return _run_check(cache_key, make, leaves, (state, x, y, key),
                      _parameter_names(model, params), None, tolerances, seed, _shape_of(x))


def _model_scalars(model: Layer, loss: Loss, treedef, train: bool, context) -> tuple:
    """``(hand, reference, fd, magnitude)`` for ``_run_check``: the explicit hand-derived chain
    ([`jaxnn.value_and_grad`][jaxnn.value_and_grad], no autodiff) as the hand-derived
    gradients, and ``J = loss(model(x), y)`` through the reference path."""
    state, x, y, key = context
    explicit = value_and_grad(model, loss, train=train)

    def reference(*arrays):
        out, _ = reference_apply(model, jax.tree.unflatten(treedef, arrays), state, x, key=key,
                                 train=train)
        return loss.value(out, y)

    def hand(*arrays):
        (_, _), grads = explicit(jax.tree.unflatten(treedef, arrays), state, x, y, key)
        return jax.tree.leaves(grads)

    return GradientsOf(hand), reference, reference, None


def _parameter_names(model: Layer, params) -> list[tuple[str, str]]:
    """``(layer_path, parameter_name)`` for every leaf of ``params``, in flattening order.

    The layer path names each sublayer by its name in a named combinator
    (``serial/head:dense``) or by its position (``serial/1:dense``).
    """
    out = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        layer, where, keys = model, model.name, list(path)
        while keys and layer.sublayers:
            label = _sublayer_key(layer, keys[0])
            if label is None:
                break
            keys.pop(0)
            i = sublayer_labels(layer).index(label)
            layer = layer.sublayers[i]
            where = f"{where}/{label}:{layer.name}"
        param = "".join(_key_name(k) for k in keys).lstrip(".") or "(array)"
        out.append((where, param))
    return out


def _sublayer_key(layer: Layer, key) -> str | None:
    """The label of the sublayer a tree-path key selects in a combinator's params, or None."""
    if layer.names and isinstance(key, jax.tree_util.DictKey) and key.key in layer.names:
        return key.key
    if not layer.names and isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    return None
