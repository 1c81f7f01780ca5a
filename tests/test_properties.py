"""Property-based tests (hypothesis) for every exported layer.

For random configurations, shapes and values, each layer satisfies:

1. its hand-derived gradient equals autodiff of the same forward (float64, ≤ 1e-9 relative);
2. its forward is deterministic (two runs are bitwise equal);
3. ``jax.vmap`` of ``apply`` over a stack of inputs equals a Python loop.

The three are computed by one jitted function per example. Axis sizes come from a few fixed
buckets and layers are built once per configuration, so examples that share a configuration and
a bucket share one compilation (and the persistent compilation cache keeps it between runs). The
number of examples per layer is the hypothesis profile's (``tests/conftest.py``): ``dev`` by
default, ``HYPOTHESIS_PROFILE=ci`` for more.

Every layer of the one registry, ``jaxnn.gradcheck.LAYER_CASES``, is drawn at its registered
configurations with random batch sizes and values; ``EXTRA_STRATEGIES`` adds random
configurations (kernel sizes, strides, rates) for the layers that have many. A layer added to
the registry is covered here without further edits.
"""

from __future__ import annotations

import functools

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxnn
from jaxnn import gradcheck
from jaxnn.gradcheck import LAYER_CASES, case_input

pytestmark = pytest.mark.slow  # hypothesis over every layer: the full run's, not the quick loop's

FLOATS = st.floats(-6, 6, allow_nan=False, allow_infinity=False, width=64)
# the buckets a small axis is drawn from: one (the edge case), and a few (odd)
SMALL = st.sampled_from((1, 3))
# for batch statistics: two examples or more
BATCH_FOR_STATISTICS = st.sampled_from((2, 3))


@functools.cache
def _made(make, *args, **kwargs):
    """``make(*args, **kwargs)``, built once per configuration: the jitted property takes the
    layer as a static argument, so one object per configuration lets examples share its
    compilation."""
    return make(*args, **kwargs)


def _array(shape, elements=FLOATS):
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def _features_input(draw, min_rank=2, max_rank=3):
    """(batch, [extra,] features) with small sizes."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(SMALL) for _ in range(rank))
    return draw(_array(shape))


def _activation(make):
    return st.builds(lambda x: (_made(make), x, {}), _features_input())


@st.composite
def _dense(draw):
    x = draw(_features_input())
    layer = _made(jaxnn.dense, draw(SMALL), use_bias=draw(st.booleans()))
    return layer, x, {}


@st.composite
def _serial(draw):
    x = draw(_features_input(2, 2))
    widths = draw(st.lists(SMALL, min_size=1, max_size=3))
    acts = draw(st.lists(st.sampled_from([jaxnn.tanh, jaxnn.sigmoid, jaxnn.gelu, jaxnn.silu]),
                         min_size=len(widths), max_size=len(widths)))
    layers = [layer for w, a in zip(widths, acts, strict=True)
              for layer in (_made(jaxnn.dense, w), _made(a))]
    return _made(jaxnn.serial, *layers), x, {}


UNIQUE = st.floats(-6, 6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def _spatial_input(draw, rank, unique=False, min_size=1):
    """(batch, *spatial, channels) with small sizes; unique values where ties matter."""
    sizes = st.sampled_from(sorted({min_size, 3, 5}))
    shape = (draw(SMALL), *(draw(sizes) for _ in range(rank)), draw(SMALL))
    return draw(hnp.arrays(np.float64, shape, elements=UNIQUE, unique=unique))


@st.composite
def _conv(draw):
    rank = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    x = draw(_spatial_input(rank, min_size=3))
    channels = x.shape[-1] * groups
    x = np.concatenate([x] * groups, axis=-1) if groups > 1 else x
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    layer = _made(
        jaxnn.conv, draw(st.integers(1, 2)) * groups, kernel,
        strides=draw(st.integers(1, 2)), padding=draw(st.sampled_from(["SAME", "VALID"])),
        dilation=draw(st.integers(1, 2)) if max(kernel) * 2 <= min(x.shape[1:-1]) + 1 else 1,
        feature_group_count=groups, use_bias=draw(st.booleans()),
    )
    assert channels == x.shape[-1]
    return layer, x, {}


@st.composite
def _pool(draw, make):
    rank = draw(st.integers(1, 2))
    x = draw(_spatial_input(rank, unique=True, min_size=2))
    window = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = draw(st.sampled_from(["VALID", "SAME"]))
    return _made(make, window, strides=draw(st.integers(1, 2)), padding=padding), x, {}


@st.composite
def _global_pool(draw):
    return _made(jaxnn.global_avg_pool), draw(_spatial_input(draw(st.integers(1, 2)))), {}


@st.composite
def _reshape(draw):
    x = draw(_features_input(3, 3))
    return _made(jaxnn.reshape, (x.shape[2], x.shape[1])), x, {}


@st.composite
def _norm(draw, make, train_modes=(False,)):
    x = draw(_features_input(2, 3))
    train = draw(st.sampled_from(train_modes))
    if train:  # batch statistics need a spread per feature
        x = x + np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    return _made(make), x, {"train": train}


@st.composite
def _dropout(draw):
    x = draw(_features_input())
    rate = draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    return _made(jaxnn.dropout, rate), x, {"train": True,
                                           "key": jax.random.key(draw(st.integers(1, 4)))}


@st.composite
def _embedding(draw):
    num, features = draw(st.sampled_from((2, 5))), draw(SMALL)
    shape = tuple(draw(SMALL) for _ in range(draw(st.integers(1, 2))))
    ids = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, num - 1)))
    return _made(jaxnn.embedding, num, features), jnp.asarray(ids), {}


@st.composite
def _parallel(draw):
    x = draw(_features_input(2, 2))
    branches = [_made(jaxnn.serial, _made(jaxnn.dense, draw(SMALL)), _made(jaxnn.tanh))
                for _ in range(draw(st.integers(1, 3)))]
    return _made(jaxnn.parallel, *branches), x, {}


@st.composite
def _concatenate(draw):
    batch = draw(SMALL)
    parts = tuple(draw(_array((batch, draw(SMALL)))) for _ in range(draw(st.integers(1, 3))))
    return _made(jaxnn.concatenate), parts, {"in_shape": tuple(p.shape for p in parts)}


@st.composite
def _residual(draw):
    x = draw(_features_input(2, 3))
    inner = _made(jaxnn.serial, _made(jaxnn.dense, draw(SMALL)), _made(jaxnn.gelu),
                  _made(jaxnn.dense, x.shape[-1]))
    return _made(jaxnn.residual, inner), x, {}


@st.composite
def _remat(draw):
    layer, x, kwargs = draw(_serial())
    return _made(jaxnn.remat, layer), x, kwargs


@st.composite
def _recurrent(draw, make, n_states):
    """A sequence ``(N, T, C)``, alone or with lengths in ``[0, T]`` and/or initial states."""
    n, t, c = draw(SMALL), draw(SMALL), draw(SMALL)
    hidden, with_lengths, initial = draw(SMALL), draw(st.booleans()), draw(st.booleans())
    layer = _made(make, hidden, return_sequences=draw(st.booleans()), lengths=with_lengths,
                  initial_state=initial)
    parts = [draw(_array((n, t, c), st.floats(-2, 2, width=64)))]
    if with_lengths:
        parts.append(jnp.asarray(draw(hnp.arrays(np.int32, (n,), elements=st.integers(0, t)))))
    if initial:
        parts += [draw(_array((n, hidden), st.floats(-1, 1, width=64))) for _ in range(n_states)]
    if len(parts) == 1:
        return layer, parts[0], {}
    return layer, tuple(parts), {"in_shape": tuple(jnp.shape(p) for p in parts)}


@st.composite
def _registered(draw, name):
    """A registered case of ``name`` (jaxnn/gradcheck/_cases.py), at a random batch size and
    values."""
    # cases with a fixed input (a recurrent layer's lengths) keep it: their strategy is extra
    index = draw(st.sampled_from([i for i, c in enumerate(LAYER_CASES[name])
                                  if "x" not in c.options]))
    case = LAYER_CASES[name][index]
    batch = draw(BATCH_FOR_STATISTICS if case.options.get("train") else SMALL)
    shape = case.in_shape
    if shape and isinstance(shape[0], tuple):  # a tuple input: every entry gets the batch
        shape = tuple((batch, *s[1:]) for s in shape)
        x = tuple(_normal(s, draw(SEEDS)) for s in shape)
    else:
        shape = (batch, *shape[1:])
        x = _case_values(case, shape, draw(SEEDS))
    kwargs = {k: v for k, v in case.options.items() if k in ("train", "state")}
    if kwargs.get("train"):
        kwargs["key"] = jax.random.key(draw(SEEDS))
    return _registered_layer(name, index), x, {**kwargs, "in_shape": shape}


@functools.cache
def _registered_layer(name, index):
    """The layer of ``LAYER_CASES[name][index]``, built once."""
    return LAYER_CASES[name][index].make()


SEEDS = st.integers(0, 2**16)


def _normal(shape, seed):
    return np.random.default_rng(seed).normal(size=shape)


def _case_values(case, shape, seed):
    """Values as the case draws them (ties avoided, kinks kept clear), or integer ids."""
    dtype = case.options.get("input_dtype")
    if dtype is not None and np.issubdtype(dtype, np.integer):
        return jnp.asarray(np.random.default_rng(seed).integers(0, 4, shape), dtype)
    x = case_input(case, seed, shape)
    return _normal(shape, seed) if x is None else x


@st.composite
def _attention(draw):
    """Shapes, heads, causal on/off, block sizes that do and do not divide T, optional cross
    inputs and key masks (rows with no visible key included)."""
    n, heads, head_width, t_q = draw(SMALL), draw(st.integers(1, 2)), draw(SMALL), draw(SMALL)
    causal = draw(st.booleans())
    t_k = t_q if causal else draw(SMALL)
    # no biases here: softmax ignores a shift shared by a row's scores, so bk's gradient is
    # exactly 0 and its rounding noise fails any per-leaf relative comparison (the gradcheck
    # cases in tests/test_attention.py check the biases against the report-wide scale)
    layer = _made(jaxnn.multi_head_attention, heads, features=heads * head_width,
                  causal=causal, block_size=draw(st.sampled_from((1, 2, 4))), use_bias=False)
    queries = draw(_array((n, t_q, draw(SMALL))))
    cross = draw(st.booleans())
    x = (queries, draw(_array((n, t_k, draw(SMALL))))) if cross else (queries,)
    if draw(st.booleans()):
        x = (*x, jnp.asarray(draw(hnp.arrays(np.bool_, (n, x[-1].shape[1])))))
    x = x[0] if len(x) == 1 else x
    return layer, x, {"in_shape": jax.tree.map(jnp.shape, x)}


@st.composite
def _transformer_block(draw):
    heads = draw(st.integers(1, 2))
    # widths ≥ 3: layer_norm over 2 features outputs ±1 whatever the input, a zero gradient
    # whose rounding noise no relative comparison can pass
    x = draw(_array((draw(SMALL), draw(SMALL), heads * draw(st.integers(3, 4))),
                    st.floats(-2, 2, allow_nan=False, width=64)))
    return _made(jaxnn.transformer_block, heads, mlp_ratio=draw(st.integers(1, 2)),
                 causal=draw(st.booleans()), block_size=draw(st.sampled_from((1, 2, 4)))), x, {}


@st.composite
def _positional(draw):
    x = draw(_features_input(3, 3))
    return _made(jaxnn.positional_embedding, x.shape[1] + draw(st.integers(0, 2))), x, {}


# random configurations beyond the registered ones, for the layers that have many
EXTRA_STRATEGIES = {
    "lstm": _recurrent(jaxnn.lstm, 2),
    "gru": _recurrent(jaxnn.gru, 1),
    # attention and transformers
    "multi_head_attention": _attention(),
    "transformer_block": _transformer_block(),
    "positional_embedding": _positional(),
    "sinusoidal_positional_embedding": st.builds(
        lambda x: (_made(jaxnn.sinusoidal_positional_embedding), x, {}),
        _features_input(3, 3)),
    "conv": _conv(),
    "max_pool": _pool(jaxnn.max_pool),
    "avg_pool": _pool(jaxnn.avg_pool),
    "global_avg_pool": _global_pool(),
    "flatten": st.builds(lambda x: (_made(jaxnn.flatten), x, {}), _features_input(2, 3)),
    "reshape": _reshape(),
    "batch_norm": _norm(jaxnn.batch_norm, (False, True)),
    "layer_norm": _norm(jaxnn.layer_norm),
    "rms_norm": _norm(jaxnn.rms_norm),
    "dropout": _dropout(),
    "embedding": _embedding(),
    "parallel": _parallel(),
    "concatenate": _concatenate(),
    "residual": _residual(),
    "remat": _remat(),
    "dense": _dense(),
    "serial": _serial(),
    "relu": _activation(jaxnn.relu),
    "leaky_relu": st.builds(lambda s, x: (_made(jaxnn.leaky_relu, s), x, {}),
                            st.floats(0.01, 0.5), _features_input()),
    "gelu": st.builds(lambda a, x: (_made(jaxnn.gelu, approximate=a), x, {}), st.booleans(),
                      _features_input()),
    "elu": st.builds(lambda a, x: (_made(jaxnn.elu, a), x, {}), st.floats(0.1, 2.0),
                     _features_input()),
}


def layer_strategy(name):
    """The registered cases of ``name`` at random batch sizes, or its extra strategy."""
    registered = _registered(name)
    return st.one_of(registered, EXTRA_STRATEGIES[name]) if name in EXTRA_STRATEGIES else registered


def _float_input(x) -> bool:
    return all(jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) for a in jax.tree.leaves(x))


def _init(layer, x, kwargs):
    # not kwargs.get(..., x.shape): a tuple input has no .shape, and its in_shape is given
    in_shape = kwargs["in_shape"] if "in_shape" in kwargs else x.shape  # noqa: SIM401
    _, params, state = layer.init(jax.random.key(0), in_shape)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
    state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                         kwargs["state"]) if "state" in kwargs else jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return params, state


def _stack(x):
    """Three inputs stacked on a new leading axis (ids: reversed, so still valid ids)."""
    if _float_input(x):
        return jax.tree.map(lambda a: jnp.stack([a, a * 0.5, a - 1]), x)
    return jax.tree.map(lambda a: jnp.stack([a, a[::-1], a]), x)


@functools.partial(jax.jit, static_argnames=("layer", "train"))
def _property_values(layer, params, state, x, key, direction, *, train):
    """Everything the three properties compare, in one compiled program: the gradients of
    ``<apply(x), direction>`` by hand and by autodiff, the forward, and ``vmap`` of the forward
    over a stack of inputs beside the same three inputs one at a time."""

    def scalar(run):
        def s(p, inp):
            out, _ = run(layer, p, state, inp, key=key, train=train)
            return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out),
                                                       jax.tree.leaves(direction), strict=True))
        return s

    argnums = (0, 1) if _float_input(x) else (0,)
    hand = jax.grad(scalar(jaxnn.apply), argnums=argnums)(params, x)
    auto = jax.grad(scalar(jaxnn.reference_apply), argnums=argnums)(params, x)

    def one(inp):
        return jaxnn.apply(layer, params, state, inp, key=key, train=train)[0]

    stack = _stack(x)
    looped = [one(jax.tree.map(lambda a, i=i: a[i], stack)) for i in range(3)]
    return hand, auto, one(x), jax.vmap(one)(stack), looped


def _bits(a) -> np.ndarray:
    """An array's values as NumPy, a PRNG key's as its key data."""
    if jnp.issubdtype(jnp.result_type(a), jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    return np.asarray(a)


def check_properties(layer, x, kwargs):
    """The three properties of the module docstring, for one layer at one input."""
    params, state = _init(layer, x, kwargs)
    key, train = kwargs.get("key"), kwargs.get("train", False)
    y = jax.eval_shape(lambda: jaxnn.reference_apply(layer, params, state, x, key=key,
                                                     train=train)[0])
    direction = jax.tree.map(
        lambda a: jnp.cos(jnp.arange(a.size, dtype=jnp.float64)).reshape(a.shape), y)
    hand, auto, forward, batched, looped = _property_values(
        layer, params, state, x, key, direction, train=train)

    # 1. hand-derived gradient == autodiff, judged like the gradient check: relative to the
    # whole check's largest entry, so an exactly-zero gradient (attention's key bias) is not
    # judged on its rounding noise
    scale = max((float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(auto) if a.size), default=0)
    for h, a in zip(jax.tree.leaves(hand), jax.tree.leaves(auto), strict=True):
        _, rel = gradcheck.compare(h, a, scale)
        assert rel <= 1e-9, (layer.name, rel)

    # 2. deterministic: a second run of the forward is bitwise equal, and tracing the forward
    # twice gives the same program (a hidden random number or counter would show in either)
    again = _property_values(layer, params, state, x, key, direction, train=train)[2]
    for u, w in zip(jax.tree.leaves(forward), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))
    first, second = (jax.make_jaxpr(lambda p, s, i, k: jaxnn.reference_apply(
        layer, p, s, i, key=k, train=train))(params, state, x, key) for _ in range(2))
    assert str(first.jaxpr) == str(second.jaxpr), layer.name
    for u, w in zip(first.consts, second.consts, strict=True):
        np.testing.assert_array_equal(_bits(u), _bits(w))

    # 3. vmap of apply over a stack of inputs equals a Python loop
    for i in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched), looped[i],
                                    rtol=1e-12, atol=1e-12)


def _properties(name):
    @given(layer_strategy(name))
    def run(case):
        check_properties(*case)

    run()


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_gradient_determinism_and_vmap_properties(name):
    """Every registered layer: hand gradient == autodiff, deterministic forward, vmap == loop."""
    _properties(name)


def test_extra_strategies_are_for_registered_layers():
    stale = sorted(EXTRA_STRATEGIES.keys() - LAYER_CASES.keys())
    assert not stale, f"property strategies for layers not in LAYER_CASES: {stale}"
