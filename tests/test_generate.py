"""Decoding with an explicit KV cache and jaxnn.generate: prefill + single steps equal the full
forward at every position, greedy generation equals re-running the window, sampling filters,
one compilation, and the bad inputs named."""

import itertools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn.generate import cache_lengths

VOCAB = 13


def _lm(positions: str, *, num_kv_heads=None, block_size=3):
    """A small causal LM; ``positions`` is ``"rope"``, ``"learned"`` or ``"sinusoidal"``."""
    table = {"learned": [jaxnn.positional_embedding(16)],
             "sinusoidal": [jaxnn.sinusoidal_positional_embedding()], "rope": []}[positions]
    blocks = [jaxnn.transformer_block(4, mlp_ratio=2, num_kv_heads=num_kv_heads, causal=True,
                                      rope=positions == "rope", block_size=block_size)
              for _ in range(2)]
    return jaxnn.serial(jaxnn.embedding(VOCAB, 8), *table, *blocks, jaxnn.layer_norm(),
                        jaxnn.dense(VOCAB))


def _model(positions="rope", dtype=jnp.float64, **kwargs):
    lm = _lm(positions, **kwargs)
    _, params, state = lm.init(jax.random.key(0), (-1, 4))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    return lm, params, state


def _ids(n, t, seed=1):
    return jax.random.randint(jax.random.key(seed), (n, t), 0, VOCAB)


def _decode_in_pieces(lm, params, state, ids, cuts, max_length):
    cache = jaxnn.init_cache(lm, params, state, ids.shape[0], max_length)
    outputs = []
    for a, b in itertools.pairwise(cuts):
        y, cache, _ = lm.forward(params, cache, ids[:, a:b])
        outputs.append(y)
    return jnp.concatenate(outputs, axis=1), cache


@pytest.mark.parametrize(("positions", "num_kv_heads", "dtype", "tolerance"), [
    ("rope", 2, jnp.float64, 1e-12), ("rope", None, jnp.float32, 2e-5),
    ("learned", 1, jnp.float64, 1e-12), ("sinusoidal", None, jnp.float64, 1e-12)])
def test_prefill_then_one_position_at_a_time_equals_the_full_forward(positions, num_kv_heads,
                                                                     dtype, tolerance):
    """Issue 21 item 1: a prompt of 5 run at once, then 6 single positions, give at every
    position the logits of the full causal forward over all 11 (to rounding: 1e-12 in float64,
    float32 rounding in float32), with RoPE and GQA or with a position table; the cache counts
    the positions it holds."""
    lm, params, state = _model(positions, dtype, num_kv_heads=num_kv_heads)
    ids = _ids(3, 11)
    full = jaxnn.apply(lm, params, state, ids)[0]
    decoded, cache = _decode_in_pieces(lm, params, state, ids, [0, 5, *range(6, 12)], 14)
    chex.assert_trees_all_close(decoded, full, rtol=tolerance, atol=tolerance)
    assert {int(c["length"]) for c in jax.tree.leaves(cache, is_leaf=lambda c: isinstance(
        c, dict) and "length" in c)} == {11}


@pytest.mark.parametrize(("positions", "num_kv_heads"), [("rope", 2), ("sinusoidal", None)])
def test_a_whole_prompt_decoded_at_once_is_the_full_forward_to_the_last_bits(positions,
                                                                       num_kv_heads):
    """In float64 the decode form run on the whole sequence at once (prefill into a longer
    cache) gives the full forward's logits to within a few units in the last place (bit for
    bit under some compiler settings, not all: the two are different programs, whose fusions
    XLA may emit and round differently). Prefill then single steps agree only to rounding (1e-12
    above), and cannot do better: the full forward itself is not exact across lengths, its
    logits at the first 5 positions over 5 ids and over 11 ids can differ in the last bits
    (XLA's CPU products sum in an order that depends on their shapes)."""
    lm, params, state = _model(positions, jnp.float64, num_kv_heads=num_kv_heads)
    ids = _ids(3, 11)
    full = jaxnn.apply(lm, params, state, ids)[0]
    decoded, _ = _decode_in_pieces(lm, params, state, ids, [0, 11], 14)
    ulp = np.finfo(np.float64).eps * float(jnp.max(jnp.abs(full)))
    np.testing.assert_allclose(decoded, full, rtol=0, atol=8 * ulp)


def test_generate_greedy_equals_rerunning_the_window_and_is_batched_over_prompts():
    """top_k=1 generation equals the argmax loop that re-runs the whole window from Python, and
    a batch of prompts gives what each prompt gives alone."""
    lm, params, state = _model("rope", jnp.float64)
    prompts = _ids(3, 4)
    tokens = jaxnn.generate(lm, params, state, prompts, 6, jax.random.key(2), top_k=1)
    window = prompts
    for _ in range(6):
        logits = jaxnn.apply(lm, params, state, window)[0]
        window = jnp.concatenate([window, jnp.argmax(logits[:, -1], -1)[:, None]], axis=1)
    np.testing.assert_array_equal(tokens, window[:, 4:])
    for i in range(3):
        alone = jaxnn.generate(lm, params, state, prompts[i:i + 1], 6, jax.random.key(2),
                               top_k=1)
        np.testing.assert_array_equal(alone[0], tokens[i])


def test_sampling_stays_inside_top_k_and_top_p():
    """Every sampled token is among the top_k most likely of its step; a tiny top_p keeps only
    the most likely token (greedy); a different key gives a different sample."""
    lm, params, state = _model("rope", jnp.float32)
    prompts = _ids(4, 3)
    greedy = jaxnn.generate(lm, params, state, prompts, 8, jax.random.key(0), top_k=1)
    nucleus = jaxnn.generate(lm, params, state, prompts, 8, jax.random.key(5), top_p=1e-6)
    np.testing.assert_array_equal(nucleus, greedy)
    tokens = jaxnn.generate(lm, params, state, prompts, 8, jax.random.key(3), top_k=3,
                            temperature=2.0)
    window = jnp.concatenate([prompts, tokens], axis=1)
    logits = jaxnn.apply(lm, params, state, window)[0][:, 2:-1]
    top3 = jax.lax.top_k(logits, 3)[1]
    assert bool(jnp.all(jnp.any(top3 == tokens[..., None], axis=-1)))
    other = jaxnn.generate(lm, params, state, prompts, 8, jax.random.key(4), top_k=3,
                           temperature=2.0)
    assert not bool(jnp.all(other == tokens))


def test_sampling_draws_what_categorical_draws_with_each_steps_key():
    """generate draws each step's noise before its loop: the tokens are those of
    jax.random.categorical(keys[i], z / τ) with keys = jax.random.split(key, steps), step by
    step through the decode form."""
    lm, params, state = _model("rope", jnp.float64)
    prompts, steps, key = _ids(3, 4), 7, jax.random.key(11)
    tokens = jaxnn.generate(lm, params, state, prompts, steps, key, temperature=1.5)
    cache = jaxnn.init_cache(lm, params, state, 3, 4 + steps)
    logits, cache, _ = lm.forward(params, cache, prompts)
    expected = []
    for step_key in jax.random.split(key, steps):
        token = jax.random.categorical(step_key, logits[:, -1] / 1.5).astype(jnp.int32)
        expected.append(token)
        logits, cache, _ = lm.forward(params, cache, token[:, None])
    np.testing.assert_array_equal(tokens, jnp.stack(expected, axis=1))


def test_init_cache_calls_each_leafs_own_hook():
    """A leaf declares its decode state with Layer(init_cache=...): jaxnn.init_cache calls it
    with (params, batch_size, max_length, dtype), for a user's own layer too, and a layer
    whose forward is wrapped (as jaxnn.debug and jaxnn.precision wrap leaves) keeps it."""
    attention = jaxnn.multi_head_attention(2, causal=True)
    _, params, _ = attention.init(jax.random.key(0), (-1, 3, 4))
    wrapped = attention._replace(forward=lambda *a, **k: attention.forward(*a, **k))
    cache = jaxnn.init_cache(wrapped, params, (), 3, 5)
    assert cache["keys"].shape == (6, 5, 2) and int(cache["length"]) == 0
    y, cache, _ = wrapped.forward(params, cache, jnp.ones((3, 2, 4), jnp.float32))
    assert y.shape == (3, 2, 4) and int(cache["length"]) == 2

    def init(key, in_shape):
        return in_shape, (), ()

    def forward(params, state, x, *, key=None, train=False):
        return x, state, None

    counter = jaxnn.Layer("counter", init, forward, lambda p, r, dy: ((), dy),
                          init_cache=lambda p, n, length, dtype: {"seen": jnp.zeros(n)})
    net = jaxnn.serial(counter, jaxnn.relu())
    assert jax.tree.map(jnp.shape, jaxnn.init_cache(net, ((), ()), ((), ()), 4, 8)) == (
        {"seen": (4,)}, ())


def test_generate_compiles_once_for_repeated_calls():
    """The whole loop is one compiled function: a second call with the same shapes and
    settings does not trace the model again."""
    lm, params, state = _model("rope", jnp.float32)
    traces = []
    counting = lm._replace(forward=lambda *a, **k: traces.append(1) or lm.forward(*a, **k))
    jaxnn.generate(counting, params, state, _ids(2, 3), 5, jax.random.key(0))
    first = len(traces)
    jaxnn.generate(counting, params, state, _ids(2, 3, seed=7), 5, jax.random.key(1))
    assert first == 2
    assert len(traces) == first


def test_bad_sampling_settings_are_named():
    """temperature ≤ 0, top_k < 1, top_p outside (0, 1], steps < 1 and prompts that are not
    (N, T) integers are clear errors naming the argument."""
    lm, params, state = _model("rope", jnp.float32)
    prompts, key = _ids(2, 3), jax.random.key(0)
    for kwargs, match in [({"temperature": 0.0}, "generate: temperature must be a number > 0"),
                          ({"top_k": 0}, "generate: top_k must be a positive int"),
                          ({"top_p": 1.5}, r"generate: top_p must be a number in \(0, 1\]")]:
        with pytest.raises(ValueError, match=match):
            jaxnn.generate(lm, params, state, prompts, 4, key, **kwargs)
    with pytest.raises(ValueError, match="generate: steps must be a positive int"):
        jaxnn.generate(lm, params, state, prompts, 0, key)
    with pytest.raises(ValueError, match=r"generate: prompt_ids must be integer ids of shape "
                                         r"\(prompts, length\)"):
        jaxnn.generate(lm, params, state, prompts.astype(jnp.float32), 4, key)


def test_context_limit_and_caches_that_do_not_fit_are_named():
    """Past a position table's length is a clear error naming the context limit; a prompt
    longer than the cache, a cache of another batch size or dtype, and a non-causal attention
    in the decode form are clear errors naming the layer."""
    lm, params, state = _model("learned", jnp.float32)
    with pytest.raises(ValueError, match=r"max_length=20 is past the context limit of the "
                                         r"model's positional_embedding table \(16 positions\)"):
        jaxnn.generate(lm, params, state, _ids(2, 4), 16, jax.random.key(0))
    lm, params, state = _model("rope", jnp.float32)
    cache = jaxnn.init_cache(lm, params, state, 2, 4)
    with pytest.raises(ValueError, match=r"multi_head_attention: 6 new positions \(a prompt of "
                                         r"length 6\) do not fit a KV cache of max_length 4"):
        lm.forward(params, cache, _ids(2, 6))
    with pytest.raises(ValueError, match="multi_head_attention: the KV cache holds 2 sequences"):
        lm.forward(params, cache, _ids(3, 2))
    cache64 = jaxnn.init_cache(lm, params, state, 2, 8, dtype=jnp.float64)
    with pytest.raises(TypeError, match="multi_head_attention: the KV cache has dtype float64"):
        lm.forward(params, cache64, _ids(2, 2))
    layer = jaxnn.multi_head_attention(2)
    _, attention_params, _ = layer.init(jax.random.key(0), (-1, 3, 4))
    with pytest.raises(ValueError, match="decoding with a KV cache needs causal=True"):
        layer.forward(attention_params, jaxnn.init_cache(layer, attention_params, (), 1, 4),
                      jnp.ones((1, 2, 4)))


def _loop_body(hlo: str, trip_count: int) -> str:
    """The text of the body of the compiled while loop that runs ``trip_count`` times."""
    bodies = [m.group(1) for m in re.finditer(r" while\(.*?body=%?([\w.\-]+).*", hlo)
              if f'"known_trip_count":{{"n":"{trip_count}"}}' in m.group(0)]
    assert len(bodies) == 1, f"expected one loop of {trip_count} steps, found {bodies}"
    start = hlo.index(f"\n%{bodies[0]} ") + 1
    return hlo[start:hlo.index("\n}\n", start)]


@pytest.mark.parametrize(("batch_size", "num_kv_heads"), [
    (1, None), (3, None), (3, 1),
    pytest.param(1, 1, marks=pytest.mark.xfail(strict=True, reason=(
        "one sequence with one key/value head: the cache's leading axis has length 1, XLA "
        "drops it from the products with a reshape, and on CPU that reshape still duplicates "
        "the update and copies the cache each step")))])
def test_the_compiled_loop_updates_each_cache_in_place(batch_size, num_kv_heads):
    """Issue 21 item 1: a decode step writes one position into each KV cache where it lies.
    The body of each of generate's compiled loops (here two segments, 64 and 36 steps, the
    caches 67 then 103 positions long) has no `copy` of an array of its caches' shape (with
    one prompt, copying the caches every step made generation twice as slow), with multi-head
    and multi-query attention, for one prompt and for several (but one prompt with one
    key/value head, a known exception)."""
    # heads of width 32: XLA turns the products of narrower heads into elementwise loops
    lm = jaxnn.serial(jaxnn.embedding(VOCAB, 64),
                      jaxnn.transformer_block(2, num_kv_heads=num_kv_heads, causal=True,
                                              rope=True),
                      jaxnn.layer_norm(), jaxnn.dense(VOCAB))
    _, params, state = lm.init(jax.random.key(0), (-1, 4))
    prompts, steps = _ids(batch_size, 3), 100
    assert cache_lengths(3, steps) == (67, 103)
    run = jax.jit(lambda p, ids, key: jaxnn.generate(lm, p, state, ids, steps, key, top_k=3))
    hlo = run.lower(params, prompts, jax.random.key(0)).compile().as_text()
    for length, count in ((67, 64), (103, 36)):
        caches = jaxnn.init_cache(lm, params, state, batch_size, length)
        shapes = {tuple(a.shape) for a in jax.tree.leaves(caches) if a.ndim}
        assert len(shapes) == 1 and len(jax.tree.leaves(caches)) == 3  # keys, values, length
        copies = [line.strip() for line in _loop_body(hlo, count).splitlines()
                  if (match := re.search(r"= f32\[([\d,]*)\]\S* copy\(", line))
                  and tuple(int(d) for d in match.group(1).split(",")) in shapes]
        assert not copies, "the decode loop copies a KV cache every step:\n" + "\n".join(copies)


def test_the_caches_grow_with_the_sequence_and_change_no_token():
    """Each step reads every cached position, so generate runs in segments over caches just
    long enough for them (a quarter longer each time, at least 64 positions more), growing
    them between segments: a few compiled loops, O(log steps). The tokens are those of one
    cache of the whole length, stepped through the decode form."""
    assert cache_lengths(4, 300) == (68, 132, 196, 260, 304)
    assert cache_lengths(3, 17) == (20,)
    long = cache_lengths(1, 100_000)
    assert long[-1] == 100_001 and len(long) < 40
    assert all(b - a >= min(64, 100_001 - a) for a, b in itertools.pairwise((1, *long)))
    lm, params, state = _model("rope", jnp.float64)
    prompts, steps, key = _ids(2, 3), 150, jax.random.key(5)
    tokens = jaxnn.generate(lm, params, state, prompts, steps, key, temperature=0.7)
    step = jax.jit(lm.forward)
    logits, cache, _ = step(params, jaxnn.init_cache(lm, params, state, 2, 3 + steps), prompts)
    expected = []
    for step_key in jax.random.split(key, steps):
        token = jax.random.categorical(step_key, logits[:, -1] / 0.7).astype(jnp.int32)
        expected.append(token)
        logits, cache, _ = step(params, cache, token[:, None])
    np.testing.assert_array_equal(tokens, jnp.stack(expected, axis=1))
