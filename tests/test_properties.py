"""Property-based tests (hypothesis) for every exported layer.

For random configurations, shapes and values, each layer satisfies:

1. its hand-derived gradient equals autodiff of the same forward (float64, ≤ 1e-9 relative);
2. its forward is deterministic (two runs are bitwise equal);
3. ``jax.vmap`` of ``apply`` over a stack of inputs equals a Python loop.

Every layer of the one registry, ``jaxnn.gradcheck.LAYER_CASES``, is drawn at its registered
configurations with random batch sizes and values; ``EXTRA_STRATEGIES`` adds random
configurations (kernel sizes, strides, rates) for the layers that have many. A layer added to
the registry is covered here without further edits.
"""

from __future__ import annotations

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn
from jaxnn import gradcheck
from jaxnn.gradcheck import LAYER_CASES, case_input

FLOATS = st.floats(-6, 6, allow_nan=False, allow_infinity=False, width=64)
SMALL = st.integers(1, 4)


def _array(shape, elements=FLOATS):
    return hnp.arrays(np.float64, shape, elements=elements)


@st.composite
def _features_input(draw, min_rank=2, max_rank=3):
    """(batch, [extra,] features) with small sizes."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(SMALL) for _ in range(rank))
    return draw(_array(shape))


def _activation(make):
    return st.builds(lambda x: (make(), x, {}), _features_input())


@st.composite
def _dense(draw):
    x = draw(_features_input())
    layer = jaxnn.dense(draw(SMALL), use_bias=draw(st.booleans()))
    return layer, x, {}


@st.composite
def _serial(draw):
    x = draw(_features_input(2, 2))
    widths = draw(st.lists(SMALL, min_size=1, max_size=3))
    acts = draw(st.lists(st.sampled_from([jaxnn.tanh, jaxnn.sigmoid, jaxnn.gelu, jaxnn.silu]),
                         min_size=len(widths), max_size=len(widths)))
    layers = [layer for w, a in zip(widths, acts, strict=True) for layer in (jaxnn.dense(w), a())]
    return jaxnn.serial(*layers), x, {}


UNIQUE = st.floats(-6, 6, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def _spatial_input(draw, rank, unique=False, min_size=1):
    """(batch, *spatial, channels) with small sizes; unique values where ties matter."""
    shape = (draw(SMALL), *(draw(st.integers(min_size, 5)) for _ in range(rank)), draw(SMALL))
    return draw(hnp.arrays(np.float64, shape, elements=UNIQUE, unique=unique))


@st.composite
def _conv(draw):
    rank = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    x = draw(_spatial_input(rank, min_size=3))
    channels = x.shape[-1] * groups
    x = np.concatenate([x] * groups, axis=-1) if groups > 1 else x
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    layer = jaxnn.conv(
        draw(st.integers(1, 2)) * groups, kernel,
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
    return make(window, strides=draw(st.integers(1, 2)), padding=padding), x, {}


@st.composite
def _global_pool(draw):
    return jaxnn.global_avg_pool(), draw(_spatial_input(draw(st.integers(1, 2)))), {}


@st.composite
def _reshape(draw):
    x = draw(_features_input(3, 3))
    return jaxnn.reshape((x.shape[2], x.shape[1])), x, {}


@st.composite
def _norm(draw, make, train_modes=(False,)):
    x = draw(_features_input(2, 3))
    train = draw(st.sampled_from(train_modes))
    if train:  # batch statistics need a spread per feature
        x = x + np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    return make(), x, {"train": train}


@st.composite
def _dropout(draw):
    x = draw(_features_input())
    rate = draw(st.sampled_from([0.0, 0.25, 0.5, 0.9]))
    return jaxnn.dropout(rate), x, {"train": True, "key": jax.random.key(draw(SMALL))}


@st.composite
def _embedding(draw):
    num, features = draw(st.integers(2, 6)), draw(SMALL)
    shape = tuple(draw(SMALL) for _ in range(draw(st.integers(1, 2))))
    ids = draw(hnp.arrays(np.int32, shape, elements=st.integers(0, num - 1)))
    return jaxnn.embedding(num, features), jnp.asarray(ids), {}


@st.composite
def _parallel(draw):
    x = draw(_features_input(2, 2))
    branches = [jaxnn.serial(jaxnn.dense(draw(SMALL)), jaxnn.tanh()) for _ in range(
        draw(st.integers(1, 3)))]
    return jaxnn.parallel(*branches), x, {}


@st.composite
def _concatenate(draw):
    batch = draw(SMALL)
    parts = tuple(draw(_array((batch, draw(SMALL)))) for _ in range(draw(st.integers(1, 3))))
    return jaxnn.concatenate(), parts, {"in_shape": tuple(p.shape for p in parts)}


@st.composite
def _residual(draw):
    x = draw(_features_input(2, 3))
    inner = jaxnn.serial(jaxnn.dense(draw(SMALL)), jaxnn.gelu(), jaxnn.dense(x.shape[-1]))
    return jaxnn.residual(inner), x, {}


@st.composite
def _remat(draw):
    layer, x, kwargs = draw(_serial())
    return jaxnn.remat(layer), x, kwargs


@st.composite
def _recurrent(draw, make, n_states):
    """A sequence ``(N, T, C)``, alone or with lengths in ``[0, T]`` and/or initial states."""
    n, t, c = draw(SMALL), draw(SMALL), draw(SMALL)
    hidden, with_lengths, initial = draw(SMALL), draw(st.booleans()), draw(st.booleans())
    layer = make(hidden, return_sequences=draw(st.booleans()), lengths=with_lengths,
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
    case = draw(st.sampled_from([c for c in LAYER_CASES[name] if "x" not in c.options]))
    # batch statistics need two examples or more
    batch = draw(st.integers(2, 4) if case.options.get("train") else SMALL)
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
    return case.make(), x, {**kwargs, "in_shape": shape}


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
    layer = jaxnn.multi_head_attention(heads, features=heads * head_width, causal=causal,
                                       block_size=draw(st.integers(1, 4)), use_bias=False)
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
    return jaxnn.transformer_block(heads, mlp_ratio=draw(st.integers(1, 2)),
                                   causal=draw(st.booleans()),
                                   block_size=draw(st.integers(1, 4))), x, {}


@st.composite
def _positional(draw):
    x = draw(_features_input(3, 3))
    return jaxnn.positional_embedding(x.shape[1] + draw(st.integers(0, 2))), x, {}


# random configurations beyond the registered ones, for the layers that have many
EXTRA_STRATEGIES = {
    "lstm": _recurrent(jaxnn.lstm, 2),
    "gru": _recurrent(jaxnn.gru, 1),
    # attention and transformers
    "multi_head_attention": _attention(),
    "transformer_block": _transformer_block(),
    "positional_embedding": _positional(),
    "sinusoidal_positional_embedding": st.builds(
        lambda x: (jaxnn.sinusoidal_positional_embedding(), x, {}), _features_input(3, 3)),
    "conv": _conv(),
    "max_pool": _pool(jaxnn.max_pool),
    "avg_pool": _pool(jaxnn.avg_pool),
    "global_avg_pool": _global_pool(),
    "flatten": st.builds(lambda x: (jaxnn.flatten(), x, {}), _features_input(2, 3)),
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
    "leaky_relu": st.builds(lambda s, x: (jaxnn.leaky_relu(s), x, {}),
                            st.floats(0.01, 0.5), _features_input()),
    "gelu": st.builds(lambda a, x: (jaxnn.gelu(approximate=a), x, {}), st.booleans(),
                      _features_input()),
    "elu": st.builds(lambda a, x: (jaxnn.elu(a), x, {}), st.floats(0.1, 2.0), _features_input()),
}


def layer_strategy(name):
    """The registered cases of ``name`` at random batch sizes, or its extra strategy."""
    registered = _registered(name)
    return st.one_of(registered, EXTRA_STRATEGIES[name]) if name in EXTRA_STRATEGIES else registered


def _float_input(x) -> bool:
    return all(jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) for a in jax.tree.leaves(x))


def _init(layer, x, kwargs):
    in_shape = kwargs["in_shape"] if "in_shape" in kwargs else x.shape
    _, params, state = layer.init(jax.random.key(0), in_shape)
    params = jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)
    state = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                         kwargs["state"]) if "state" in kwargs else jax.tree.map(
        lambda a: a.astype(jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return params, state


def _call_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k in ("key", "train")}


def check_gradient_equals_autodiff(layer, x, kwargs):
    params, state = _init(layer, x, kwargs)
    call = _call_kwargs(kwargs)
    y, _ = jaxnn.reference_apply(layer, params, state, x, **call)
    v = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size, dtype=jnp.float64)).reshape(a.shape), y)

    def scalar(path):
        def s(p, inp):
            out, _ = path(layer, p, state, inp, **call)
            return sum(jnp.sum(a * b) for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(v),
                                                       strict=True))
        return s

    argnums = (0, 1) if _float_input(x) else (0,)
    hand = jax.grad(scalar(jaxnn.apply), argnums=argnums)(params, x)
    auto = jax.grad(scalar(jaxnn.reference_apply), argnums=argnums)(params, x)
    # judged like the gradient check: relative to the whole check's largest entry, so an
    # exactly-zero gradient (attention's key bias) is not judged on its rounding noise
    scale = max((float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(auto) if a.size), default=0)
    for h, a in zip(jax.tree.leaves(hand), jax.tree.leaves(auto), strict=True):
        _, rel = gradcheck.compare(h, a, scale)
        assert rel <= 1e-9, (layer.name, rel)


def check_deterministic(layer, x, kwargs):
    params, state = _init(layer, x, kwargs)
    call = _call_kwargs(kwargs)
    a, _ = jaxnn.apply(layer, params, state, x, **call)
    b, _ = jaxnn.apply(layer, params, state, x, **call)
    for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))


def check_vmap_equals_loop(layer, x, kwargs):
    params, state = _init(layer, x, kwargs)
    call = _call_kwargs(kwargs)
    if _float_input(x):
        stack = jax.tree.map(lambda a: jnp.stack([a, a * 0.5, a - 1]), x)
    else:
        stack = jax.tree.map(lambda a: jnp.stack([a, a[::-1], a]), x)

    def one(inp):
        return jaxnn.apply(layer, params, state, inp, **call)[0]

    batched = jax.vmap(one)(stack)
    for i in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched),
                                    one(jax.tree.map(lambda a, i=i: a[i], stack)),
                                    rtol=1e-12, atol=1e-12)


PROFILE = settings(max_examples=6, deadline=None, derandomize=True, database=None)


def _properties(name):
    @PROFILE
    @given(layer_strategy(name))
    def run(case):
        layer, x, kwargs = case
        check_gradient_equals_autodiff(layer, x, kwargs)
        check_deterministic(layer, x, kwargs)
        check_vmap_equals_loop(layer, x, kwargs)

    run()


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_gradient_determinism_and_vmap_properties(name):
    _properties(name)


def test_extra_strategies_are_for_registered_layers():
    stale = sorted(EXTRA_STRATEGIES.keys() - LAYER_CASES.keys())
    assert not stale, f"property strategies for layers not in LAYER_CASES: {stale}"
