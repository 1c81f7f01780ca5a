"""multi_head_attention: the blockwise forward equals softmax(QKᵀ/√d)V, the hand-derived
backward equals autodiff, masks and causality, no T×T residual, clear errors."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn.layers._attention import attention_backward, attention_forward
from tests.gradcases import registered, run_layer_case


def _inputs(*shapes, seed=0):
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return tuple(jax.random.normal(k, s, jnp.float64) for k, s in zip(keys, shapes, strict=True))


def _mask(n, t, seed=0, empty_row=True):
    mask = np.random.default_rng(seed).random((n, t)) > 0.4
    if empty_row:
        mask[-1] = False  # one example attends to nothing
    return jnp.asarray(mask)


GRADCHECK_CASES = registered("multi_head_attention")


@pytest.mark.parametrize("case", GRADCHECK_CASES["multi_head_attention"], ids=repr)
def test_backward_matches_autodiff_and_finite_differences(case):
    report = run_layer_case(case)
    names = {c.parameter for c in report.comparisons}
    assert {"Wq", "Wk", "Wv", "Wo", "bq", "bk", "bv", "bo"} <= names


def _dense_attention(params, queries, keys_values, num_heads, key_mask, causal):
    """The textbook computation with the whole T_q × T_k score matrix."""
    def heads(z):
        n, t, width = z.shape
        return z.reshape(n, t, num_heads, width // num_heads).transpose(0, 2, 1, 3)

    q = heads(queries @ params["Wq"] + params["bq"][None, None])
    k = heads(keys_values @ params["Wk"] + params["bk"][None, None])
    v = heads(keys_values @ params["Wv"] + params["bv"][None, None])
    s = jnp.einsum("nhqd,nhkd->nhqk", q, k) / math.sqrt(q.shape[-1])
    visible = jnp.ones(s.shape, bool)
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    if causal:
        visible = visible & jnp.tril(jnp.ones(s.shape[-2:], bool))[None, None]
    p = jnp.where(visible, jax.nn.softmax(jnp.where(visible, s, -jnp.inf), axis=-1), 0.0)
    p = jnp.nan_to_num(p)  # rows with no visible key
    o = jnp.einsum("nhqk,nhkd->nhqd", p, v).transpose(0, 2, 1, 3).reshape((*queries.shape[:2], -1))
    return o @ params["Wo"] + params["bo"][None, None]


@pytest.mark.parametrize(("t_q", "t_k", "block_size", "causal", "masked"), [
    (5, 5, 2, True, False), (7, 7, 3, False, True), (6, 6, 6, True, True),
    (4, 9, 4, False, True), (3, 8, 256, False, False), (8, 8, 1, True, False)])
def test_forward_equals_the_whole_score_matrix_computation(t_q, t_k, block_size, causal,
                                                           masked):
    layer = jaxnn.multi_head_attention(2, causal=causal, block_size=block_size)
    self_attention = t_q == t_k and causal
    queries, keys_values = _inputs((3, t_q, 4), (3, t_k, 4))
    keys_values = queries if self_attention else keys_values
    mask = _mask(3, t_k) if masked else None
    x = queries if self_attention else (queries, keys_values)
    if masked:
        x = (x, mask) if self_attention else (*x, mask)
    _, params, _ = layer.init(jax.random.key(1), jax.tree.map(jnp.shape, x))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    y, _ = jaxnn.apply(layer, params, (), x)
    if masked and self_attention:  # a masked position is padding: its row enters as zeros
        queries = keys_values = jnp.where(mask[..., None], queries, 0.0)
    expected = _dense_attention(params, queries, keys_values, 2, mask, causal)
    chex.assert_trees_all_close(y, expected, rtol=1e-12, atol=1e-12)


def test_rows_with_no_visible_key_output_the_bias_and_give_no_nan(key):
    layer = jaxnn.multi_head_attention(2, causal=True, block_size=2)
    x = _inputs((2, 5, 4))[0]
    mask = jnp.zeros((2, 5), bool).at[0, 2:].set(True)  # example 0: rows 0, 1 see nothing
    _, params, _ = layer.init(key, (x.shape, mask.shape))
    params = jax.tree.map(lambda a: a + 0.1, params)

    def objective(p, inp):
        return jnp.sum(jaxnn.apply(layer, p, (), (inp, mask))[0] ** 2)

    y, _ = jaxnn.apply(layer, params, (), (x, mask))
    chex.assert_trees_all_close(y[1], jnp.broadcast_to(params["bo"], (5, 4)))
    chex.assert_trees_all_close(y[0, :2], jnp.broadcast_to(params["bo"], (2, 4)))
    grads = jax.grad(objective, argnums=(0, 1))(params, x)
    chex.assert_tree_all_finite(grads)
    chex.assert_tree_all_finite(jax.grad(lambda p, i: jnp.sum(
        jaxnn.reference_apply(layer, p, (), (i, mask))[0] ** 2), argnums=(0, 1))(params, x))
    np.testing.assert_array_equal(grads[1][1], 0.0)  # nothing flows back from example 1


def test_residuals_hold_no_time_by_time_array(key):
    n, t, width, heads = 2, 64, 8, 2
    layer = jaxnn.multi_head_attention(heads, causal=True, block_size=16)
    _, params, _ = layer.init(key, (n, t, width))
    _, _, residuals = layer.forward(params, (), jnp.ones((n, t, width)))
    sizes = [a.size for a in jax.tree.leaves(residuals)]
    assert max(sizes) <= n * t * width < n * heads * t * t


def test_block_backward_formulas_equal_autodiff_of_softmax_attention():
    q, k, v, do = _inputs((2, 3, 6, 4), (2, 3, 7, 4), (2, 3, 7, 4), (2, 3, 6, 4))
    mask = _mask(2, 7, empty_row=False)
    o, stats = attention_forward(q, k, v, mask, True, 3)

    def reference(q, k, v):
        s = jnp.einsum("nhqd,nhkd->nhqk", q, k) / 2.0
        visible = mask[:, None, None, :] & jnp.tril(jnp.ones((6, 7), bool))[None, None]
        p = jax.nn.softmax(jnp.where(visible, s, -1e300), axis=-1)
        return jnp.sum(jnp.einsum("nhqk,nhkd->nhqd", p, v) * do)

    expected = jax.grad(reference, argnums=(0, 1, 2))(q, k, v)
    got = attention_backward(q, k, v, o, stats, do, mask, True, 3)
    chex.assert_trees_all_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("causal", "masked"), list(itertools.product([False, True], repeat=2)))
def test_vmap_equals_a_loop(causal, masked):
    layer = jaxnn.multi_head_attention(2, causal=causal, block_size=3)
    x = _inputs((3, 2, 5, 4))[0]
    masks = jnp.stack([_mask(2, 5, seed=s) for s in range(3)])
    _, params, _ = layer.init(jax.random.key(0), (2, 5, 4))

    def one(inp, mask):
        return jaxnn.apply(layer, params, (), (inp, mask) if masked else inp)[0]

    batched = jax.vmap(one)(x, masks)
    for i in range(3):
        chex.assert_trees_all_close(batched[i], one(x[i], masks[i]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("masked", [False, True])
def test_per_example_gradients_by_vmap_equal_a_loop(masked):
    """Per-example gradients (``vmap`` of ``grad``) through causal self-attention that skips
    the tiles above the diagonal (T = 10 in blocks of at most 4: four blocks, so the backward
    takes its pairs of query blocks' rows) equal the gradients one example at a time, with
    GQA, RoPE and a key mask."""
    layer = jaxnn.multi_head_attention(4, num_kv_heads=2, rope=True, causal=True, block_size=4)
    x = _inputs((3, 1, 10, 8))[0]
    # the third example's mask hides every key: its gradients are zeros, not NaN
    masks = jnp.stack([_mask(1, 10, seed=s, empty_row=s == 2) for s in range(3)])
    _, params, _ = layer.init(jax.random.key(0), (1, 10, 8))
    cotangent = jax.random.normal(jax.random.key(3), (1, 10, 8), jnp.float64)

    def gradient(inp, mask):
        def objective(p, inp):
            out = jaxnn.apply(layer, p, (), (inp, mask) if masked else inp)[0]
            return jnp.sum(out * cotangent)
        return jax.grad(objective, argnums=(0, 1))(params, inp)

    batched = jax.vmap(gradient)(x, masks)
    for i in range(3):
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], batched),
                                    gradient(x[i], masks[i]), rtol=1e-12, atol=1e-12)


def test_train_step_is_traced_once(key):
    model = jaxnn.serial(jaxnn.multi_head_attention(2, causal=True, block_size=4),
                         jaxnn.dense(3))
    _, params, _ = model.init(key, (-1, 6, 4))
    optimizer = optax.adam(1e-2)
    step = jaxnn.make_train_step(model, jaxnn.softmax_cross_entropy, optimizer, jit=False)
    step = jax.jit(chex.assert_max_traces(step, n=1))
    opt_state = optimizer.init(params)
    x = _inputs((5, 6, 4))[0]
    y = jnp.asarray(np.random.default_rng(0).integers(0, 3, (5, 6)))
    losses = []
    for _ in range(4):
        params, _, opt_state, loss = step(params, (), opt_state, x, y, None)
        losses.append(float(loss))
    assert losses[-1] < losses[0]


def test_width_not_divisible_by_heads_is_a_clear_error(key):
    with pytest.raises(ValueError, match=r"multi_head_attention: features .*divisible by "
                                         r"num_heads \(3\)"):
        jaxnn.multi_head_attention(3).init(key, (-1, 5, 4))
    with pytest.raises(ValueError, match="multi_head_attention: features"):
        jaxnn.multi_head_attention(4, features=6)


def test_mask_of_the_wrong_shape_or_dtype_is_a_clear_error(key):
    layer = jaxnn.multi_head_attention(2)
    _, params, _ = layer.init(key, (2, 5, 4))
    x = jnp.ones((2, 5, 4))
    with pytest.raises(ValueError, match=r"multi_head_attention: key_mask must have shape "
                                         r"\(batch, keys\) = \(2, 5\), got \(2, 4\)"):
        jaxnn.apply(layer, params, (), (x, jnp.ones((2, 4), bool)))
    with pytest.raises(TypeError, match="multi_head_attention: the key_mask"):
        jaxnn.apply(layer, params, (), (x, x, jnp.ones((2, 5))))


def test_causal_cross_attention_of_different_lengths_is_an_error(key):
    layer = jaxnn.multi_head_attention(2, causal=True)
    _, params, _ = layer.init(key, ((2, 5, 4), (2, 6, 4)))
    with pytest.raises(ValueError, match="causal=True needs as many queries as keys"):
        jaxnn.apply(layer, params, (), (jnp.ones((2, 5, 4)), jnp.ones((2, 6, 4))))


@pytest.mark.parametrize("in_shape", [(-1, 5, 4), (3, 1, 6), ((2, 3, 4), (2, 7, 5)),
                                      ((2, 3, 4), (2, 3)), ((2, 3, 4), (2, 6, 2), (2, 6))])
def test_init_shape_equals_forward_shape(in_shape, key):
    layer = jaxnn.multi_head_attention(2)
    out_shape, params, state = layer.init(key, in_shape)
    concrete = jax.tree.map(lambda d: 2 if d == -1 else d, in_shape)
    shapes = concrete if isinstance(concrete[0], tuple) else (concrete,)
    x = tuple(jnp.ones(s) if len(s) == 3 else jnp.ones(s, bool) for s in shapes)
    y, _ = jaxnn.apply(layer, params, state, x if len(x) > 1 else x[0])
    assert out_shape[1:] == y.shape[1:]
    assert out_shape[0] in (-1, y.shape[0])
    assert layer.weights == ("Wq", "Wk", "Wv", "Wo")


def _plain_softmax_attention(params, x, num_heads, causal):
    """Softmax attention as a user would write it in plain JAX, differentiated by autodiff."""
    def heads(z):
        n, t, width = z.shape
        return z.reshape(n, t, num_heads, width // num_heads).transpose(0, 2, 1, 3)

    q, k, v = (heads(x @ params[w] + params[b][None, None])
               for w, b in (("Wq", "bq"), ("Wk", "bk"), ("Wv", "bv")))
    s = jnp.einsum("nhqd,nhkd->nhqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        s = jnp.where(jnp.tril(jnp.ones(s.shape[-2:], bool))[None, None], s, -jnp.inf)
    o = jnp.einsum("nhqk,nhkd->nhqd", jax.nn.softmax(s, axis=-1), v)
    return o.transpose(0, 2, 1, 3).reshape(x.shape) @ params["Wo"] + params["bo"][None, None]


@pytest.mark.parametrize(("scale", "causal", "block_size"),
                         [(100.0, True, 4), (100.0, False, 4), (1e4, True, 4),
                          (100.0, True, 16), (1e4, False, 16)])
def test_float32_gradients_at_large_logits_are_as_accurate_as_plain_softmax_attention(
        scale, causal, block_size):
    """Issue 20 item 2: at inputs × 100 (and × 1e4) in float32 under jit, every gradient's
    error against float64 truth is within 2× that of plain float32 softmax attention, up to the
    float32 noise floor of the scores (4·eps·max|S| of the gradient's size). It was 1e18 times
    dWq's size: the backward's softmax row term did not cancel where a row is one-hot. Blocks
    of 4 take the blockwise loops; a block of 16 holds all 16 keys (one tile, P kept)."""
    layer = jaxnn.multi_head_attention(2, causal=causal, block_size=block_size)
    _, params, _ = layer.init(jax.random.key(0), (-1, 16, 8))
    x = jax.random.normal(jax.random.key(1), (2, 16, 8), jnp.float64) * scale
    dy = jax.random.normal(jax.random.key(2), (2, 16, 8), jnp.float64)

    def gradients(forward, dtype):
        cast = jax.tree.map(lambda a: a.astype(dtype), (params, x))
        return jax.jit(jax.grad(lambda p, inp: jnp.sum(forward(p, inp) * dy.astype(dtype)),
                                argnums=(0, 1)))(*cast)

    def hand(p, inp):
        return jaxnn.apply(layer, p, (), inp)[0]

    def plain(p, inp):
        return _plain_softmax_attention(p, inp, 2, causal)

    truth = gradients(plain, jnp.float64)
    errors = {name: jax.tree.map(lambda g, t: float(jnp.max(jnp.abs(g - t))),
                                 gradients(forward, jnp.float32), truth)
              for name, forward in (("hand", hand), ("plain", plain))}
    # rounding the scores to float32 moves every probability by eps·|S| of itself (|S| ~ 1e4 at
    # inputs × 100): the noise floor of any float32 attention where a gradient (dWk ~ 1e-19)
    # comes only from the probabilities that the saturated softmax leaves (~e^-40)
    q = x @ params["Wq"].astype(jnp.float64)
    k = x @ params["Wk"].astype(jnp.float64)
    largest_score = float(jnp.max(jnp.abs(jnp.einsum("nqd,nkd->nqk", q, k)))) / 2.0
    floor = jax.tree.map(lambda t: float(4 * jnp.finfo(jnp.float32).eps * largest_score
                                         * jnp.max(jnp.abs(t))), truth)
    for path, hand_error in jax.tree_util.tree_leaves_with_path(errors["hand"]):
        plain_error = _at(errors["plain"], path)
        assert hand_error <= 2 * plain_error + _at(floor, path), (
            f"{jax.tree_util.keystr(path)}: error {hand_error:.3g}, plain float32 attention "
            f"{plain_error:.3g}")


def _at(tree, path):
    for entry in path:
        tree = tree[entry.key if hasattr(entry, "key") else entry.idx]
    return tree


@pytest.mark.parametrize("cross", [False, True])
def test_a_nan_at_a_masked_key_reaches_no_output_and_no_gradient(cross, key):
    """Issue 20 item 3: a masked key's inputs are selected away, never multiplied by 0, so a
    NaN there leaves every output and every gradient (hand-derived and autodiff) finite and
    equal to those with zeros in its place."""
    layer = jaxnn.multi_head_attention(2, causal=not cross, block_size=3)
    queries, keys_values = _inputs((2, 5, 4), (2, 7, 4), seed=3)
    if not cross:
        keys_values = queries
    mask = jnp.ones((2, keys_values.shape[1]), bool).at[0, 1].set(False).at[1, 3:].set(False)
    poisoned = jnp.where(mask[..., None], keys_values, jnp.nan)
    zeroed = jnp.where(mask[..., None], keys_values, 0.0)

    def inputs(kv):
        return (kv, mask) if not cross else (queries, kv, mask)

    _, params, _ = layer.init(key, jax.tree.map(jnp.shape, inputs(keys_values)))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    for run in (jaxnn.apply, jaxnn.reference_apply):
        def objective(p, kv, run=run):
            return jnp.sum(jnp.sin(run(layer, p, (), inputs(kv))[0]))

        y = run(layer, params, (), inputs(poisoned))[0]
        chex.assert_tree_all_finite(y)
        chex.assert_trees_all_close(y, run(layer, params, (), inputs(zeroed))[0])
        grads = jax.grad(objective, argnums=(0, 1))(params, poisoned)
        chex.assert_tree_all_finite(grads)
        chex.assert_trees_all_close(grads, jax.grad(objective, argnums=(0, 1))(params, zeroed),
                                    rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(jnp.where(mask[..., None], 0.0, grads[1]), 0.0)


def test_an_integer_key_mask_is_read_as_boolean(key):
    """Issue 20 item 9: a 0/1 integer key mask (as tokenizers give) means what the boolean
    mask means, in self- and cross-attention."""
    layer = jaxnn.multi_head_attention(2, block_size=2)
    x, kv = _inputs((2, 5, 4), (2, 5, 4))
    mask = _mask(2, 5, empty_row=False)
    _, params, _ = layer.init(key, (x.shape, mask.shape))
    for inputs in ((x, mask), (x, kv, mask)):
        as_int = (*inputs[:-1], mask.astype(jnp.int32))
        chex.assert_trees_all_close(jaxnn.apply(layer, params, (), as_int)[0],
                                    jaxnn.apply(layer, params, (), inputs)[0])


def test_a_float_key_mask_and_an_empty_sequence_are_named(key):
    """Issue 20 item 9: a floating key mask names the key_mask and the dtypes it accepts; a
    sequence of length 0 names the empty sequence (it raised ZeroDivisionError)."""
    layer = jaxnn.multi_head_attention(2)
    _, params, _ = layer.init(key, (2, 5, 4))
    x = jnp.ones((2, 5, 4))
    with pytest.raises(TypeError, match=r"multi_head_attention: the key_mask must be a boolean "
                                        r"\(or 0/1 integer\) array .* got dtype float"):
        jaxnn.apply(layer, params, (), (x, jnp.ones((2, 5))))
    with pytest.raises(ValueError, match=r"multi_head_attention: queries is an empty sequence "
                                         r"\(shape \(2, 0, 4\)"):
        jaxnn.apply(layer, params, (), jnp.ones((2, 0, 4)))
    with pytest.raises(ValueError, match="multi_head_attention: keys_values is an empty"):
        jaxnn.apply(layer, params, (), (x, jnp.ones((2, 0, 4))))


def test_the_public_docstring_states_every_input_form():
    """Issue 20 item 16: help(jaxnn.multi_head_attention) states its input forms itself."""
    doc = jaxnn.multi_head_attention.__doc__
    for form in ("``x`` of shape ``(N, T, D_in)``", "``(x, key_mask)``",
                 "``(queries, keys_values)``", "``(queries, keys_values, key_mask)``",
                 "boolean", "integer"):
        assert form in doc, form


def _rotate_as_complex(z, positions, base=10000.0):
    """RoPE written independently: the pair ``(z_i, z_{i+d/2})`` as the complex number
    ``z_i + i·z_{i+d/2}`` multiplied by ``exp(i·t·base^(−2i/d))``."""
    half = z.shape[-1] // 2
    angles = positions[:, None] * base ** (-np.arange(0, 2 * half, 2) / (2 * half))[None, :]
    rotated = (z[..., :half] + 1j * z[..., half:]) * jnp.exp(1j * angles)[None, None]
    return jnp.concatenate([rotated.real, rotated.imag], axis=-1)


def _peer_gqa_rope(params, x, num_heads, num_kv_heads, rope, causal):
    """Grouped-query attention with rotary positions in plain JAX: the whole score matrix, each
    key/value head repeated for the query heads it serves. (``jax.nn.dot_product_attention``
    takes GQA too, but computes its logits in float32.)"""
    n, t, _ = x.shape
    d = params["Wq"].shape[1] // num_heads

    def heads(w, b, count):
        z = (x @ params[w] + params[b][None, None]).reshape(n, t, count, d)
        if rope:  # (N, T, heads, d) -> rotate over T
            z = _rotate_as_complex(z.transpose(0, 2, 1, 3), np.arange(t)).transpose(0, 2, 1, 3)
        return z

    group = num_heads // num_kv_heads  # key/value head j serves query heads j·g … j·g + g − 1
    q = heads("Wq", "bq", num_heads)
    k = jnp.repeat(heads("Wk", "bk", num_kv_heads), group, axis=2)
    v = jnp.repeat((x @ params["Wv"] + params["bv"][None, None]).reshape(n, t, num_kv_heads, d),
                   group, axis=2)
    s = jnp.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(d)
    if causal:
        s = jnp.where(jnp.tril(jnp.ones((t, t), bool))[None, None], s, -jnp.inf)
    o = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(s, axis=-1), v)
    return o.reshape(n, t, -1) @ params["Wo"] + params["bo"][None, None]


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "rope", "causal"), [
    (4, 2, False, True), (4, 1, True, True), (2, 2, True, False), (6, 3, True, True)])
def test_gqa_and_rope_equal_a_plain_jax_peer_forward_and_gradients(num_heads, num_kv_heads,
                                                                   rope, causal, key):
    """Issue 21 item 2: grouped-query attention (num_kv_heads key/value heads, query head i
    on key/value head i // (h / c)) and RoPE (the rotate-half pairing) equal the same math in
    plain JAX, forward and every gradient (hand-derived and autodiff), in float64."""
    layer = jaxnn.multi_head_attention(num_heads, num_kv_heads=num_kv_heads, rope=rope,
                                       causal=causal, block_size=3)
    x = _inputs((2, 7, 2 * num_heads))[0]
    _, params, _ = layer.init(key, x.shape)
    params = jax.tree.map(lambda a: jax.random.normal(key, a.shape, jnp.float64) * 0.5, params)
    assert params["Wk"].shape == (2 * num_heads, 2 * num_kv_heads)

    def peer(p, inp):
        return _peer_gqa_rope(p, inp, num_heads, num_kv_heads, rope, causal)

    _assert_layer_matches(layer, params, x, peer, lambda y: jnp.sum(jnp.sin(y)))


def test_rope_makes_scores_depend_only_on_relative_position(key):
    """RoPE's defining property: shifting every position by the same offset leaves q·k (so the
    attention output) unchanged; the rotation's transpose undoes it."""
    from jaxnn.layers._attention import rotate
    q, k = _inputs((1, 2, 5, 8), (1, 2, 5, 8))
    positions = jnp.arange(5)
    scores = jnp.einsum("nhqd,nhkd->nhqk", rotate(q, positions, 1e4), rotate(k, positions, 1e4))
    shifted = jnp.einsum("nhqd,nhkd->nhqk", rotate(q, positions + 7, 1e4),
                         rotate(k, positions + 7, 1e4))
    chex.assert_trees_all_close(scores, shifted, rtol=1e-12, atol=1e-12)
    chex.assert_trees_all_close(rotate(rotate(q, positions, 1e4), positions, 1e4,
                                       transpose=True), q, rtol=1e-12, atol=1e-12)


def test_gqa_and_rope_bad_configurations_are_named(key):
    """num_kv_heads not dividing num_heads, and an odd RoPE head width, are clear errors naming
    the argument."""
    with pytest.raises(ValueError, match=r"multi_head_attention: num_kv_heads \(3\) must "
                                         r"divide num_heads \(4\)"):
        jaxnn.multi_head_attention(4, num_kv_heads=3)
    with pytest.raises(ValueError, match=r"multi_head_attention: rope=True .* head width "
                                         r"features / num_heads must be even, got 6 / 2 = 3"):
        jaxnn.multi_head_attention(2, rope=True).init(key, (-1, 5, 6))
    with pytest.raises(ValueError, match="multi_head_attention: rope_base must be"):
        jaxnn.multi_head_attention(2, rope=True, rope_base=0.5)


# --- causal block skipping: only the tiles on and below the diagonal are computed ----------


def _dense_causal_reference(params, x, key_mask, num_heads, num_kv_heads, rope):
    """Causal self-attention in plain JAX with the whole T × T score matrix: a masked
    position's input row is zeros (it is padding) and its key is hidden; a row that sees no
    key outputs the bias."""
    n, t, _ = x.shape
    if key_mask is not None:
        x = jnp.where(key_mask[..., None], x, 0.0)
    d = params["Wq"].shape[1] // num_heads

    def heads(w, b, count, rotate):
        z = (x @ params[w] + params[b][None, None]).reshape(n, t, count, d).transpose(0, 2, 1, 3)
        return _rotate_as_complex(z, np.arange(t)) if rotate else z

    group = num_heads // num_kv_heads
    q = heads("Wq", "bq", num_heads, rope)
    k = jnp.repeat(heads("Wk", "bk", num_kv_heads, rope), group, axis=1)
    v = jnp.repeat(heads("Wv", "bv", num_kv_heads, False), group, axis=1)
    visible = jnp.tril(jnp.ones((t, t), bool))[None, None]
    if key_mask is not None:
        visible = visible & key_mask[:, None, None, :]
    s = jnp.where(visible, jnp.einsum("nhqd,nhkd->nhqk", q, k) / np.sqrt(d), -jnp.inf)
    p = jnp.where(visible, jax.nn.softmax(s, axis=-1), 0.0)
    p = jnp.where(jnp.any(visible, axis=-1, keepdims=True), p, 0.0)  # rows seeing nothing
    o = jnp.einsum("nhqk,nhkd->nqhd", p, v).reshape(n, t, -1)
    return o @ params["Wo"] + params["bo"][None, None]


@pytest.mark.parametrize(("t", "block_size", "num_heads", "num_kv_heads", "rope", "masked"), [
    (8, 4, 2, 2, False, False),    # 2 blocks, T a multiple of the block
    (16, 4, 4, 2, True, True),     # 4 blocks
    (12, 4, 2, 1, False, True),    # 3 blocks of 4 -> 4 blocks of 3 (an odd count made even)
    (10, 4, 4, 4, True, False),    # 3 blocks -> 4 of 3, the last padded by 2
    (5, 2, 2, 1, True, True),      # 3 blocks -> 4 of 2: the last block is all padding
    (17, 4, 6, 3, True, True),     # 5 blocks -> 6 of 3, padded by 1
    (23, 4, 2, 2, False, True),    # 6 blocks of 4, padded by 1
    (9, 8, 2, 2, False, False),    # 2 blocks -> 2 of 5, padded by 1
])
def test_causal_tile_skipping_equals_the_dense_softmax_forward_and_gradients(
        t, block_size, num_heads, num_kv_heads, rope, masked, key):
    """Causal self-attention longer than a block computes only the tiles on and below the
    diagonal, in pairs of query blocks. At lengths that are and are not multiples of the
    block, odd and even block counts, with a key mask (one sequence seeing nothing in its
    first rows), GQA and RoPE, its output and every gradient (hand-derived and autodiff)
    equal plain softmax attention over the whole score matrix, in float64. A wrong, missing
    or doubled tile changes some row's output or gradient."""
    from jaxnn.layers._attention import _paired_geometry
    assert _paired_geometry(t, block_size) is not None  # the skipping path runs
    layer = jaxnn.multi_head_attention(num_heads, num_kv_heads=num_kv_heads, rope=rope,
                                       causal=True, block_size=block_size)
    x = _inputs((2, t, 2 * num_heads), seed=t)[0]
    mask = None
    if masked:
        mask = jnp.asarray(np.random.default_rng(t).random((2, t)) > 0.3).at[1, :2].set(False)
    _, params, _ = layer.init(key, (x.shape, mask.shape) if masked else x.shape)
    params = jax.tree.map(lambda a: jax.random.normal(key, a.shape, jnp.float64) * 0.7, params)
    cotangent = jax.random.normal(jax.random.key(t), (2, t, 2 * num_heads), jnp.float64)

    def reference(p, inp):
        return _dense_causal_reference(p, inp, mask, num_heads, num_kv_heads, rope)

    _assert_layer_matches(layer, params, x, reference, lambda y: jnp.sum(y * cotangent),
                          mask if masked else None)


def _assert_layer_matches(layer, params, x, reference, loss, mask=None):
    """The layer's output equals ``reference(params, x)`` to 1e-12 and the gradients of
    ``loss(output)`` with respect to the params and ``x`` equal the reference's to 1e-10, both
    the hand-derived ones (``jaxnn.apply``) and autodiff of the layer's forward
    (``jaxnn.reference_apply``); ``mask``, when given, is the layer's key mask."""
    def inputs(inp):
        return inp if mask is None else (inp, mask)

    def objective(forward):
        return lambda p, inp: loss(forward(p, inp))

    expected = jax.grad(objective(reference), argnums=(0, 1))(params, x)
    chex.assert_trees_all_close(jaxnn.apply(layer, params, (), inputs(x))[0],
                                reference(params, x), rtol=1e-12, atol=1e-12)
    for run in (jaxnn.apply, jaxnn.reference_apply):
        def forward(p, inp, run=run):
            return run(layer, p, (), inputs(inp))[0]

        got = jax.grad(objective(forward), argnums=(0, 1))(params, x)
        chex.assert_trees_all_close(got, expected, rtol=1e-10, atol=1e-12)


def _product_flops(jaxpr) -> int:
    """The FLOPs of every matrix product a jaxpr runs, a scan's body counted once per step."""
    flops = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            flops += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                lhs[i] for i in contracting)
        repeat = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if isinstance(inner, jax.extend.core.Jaxpr):
                    flops += repeat * _product_flops(inner)
    return flops


@pytest.mark.parametrize(("case", "budget", "chunk"), [
    ((16, 4, 4, 2, True, True), 1, 1), ((16, 4, 4, 2, True, True), 320, 2),
    ((17, 4, 6, 3, True, True), 1, 1), ((17, 4, 6, 3, True, True), 300, 2)])
def test_the_causal_backward_in_chunks_of_rows_equals_the_dense_gradients(
        case, budget, chunk, key, monkeypatch):
    """The causal backward takes the ``N·c`` sequence-head rows in chunks, as many per step as
    a budget of score entries allows (32 tiles of 128 × 128 by default, one chunk at these
    sizes). With the budget cut to chunks of one and of two rows, a key mask, GQA and RoPE,
    every gradient still equals plain softmax attention's (a row written to another chunk's
    place, or a mask read for the wrong sequence, would not)."""
    from jaxnn.layers import _attention

    t, block_size, num_heads, num_kv_heads = case[:4]
    monkeypatch.setattr(_attention, "_ROW_TILE_BUDGET", budget)
    blocks, size = _attention._paired_geometry(t, block_size)
    assert _attention._row_chunk(2 * num_kv_heads, num_heads // num_kv_heads, blocks,
                                 size) == chunk
    test_causal_tile_skipping_equals_the_dense_softmax_forward_and_gradients(*case, key)


@pytest.mark.parametrize("t", [512, 1000])
def test_causal_training_step_does_about_half_the_tile_work_of_the_non_causal_one(t, key):
    """The product FLOPs of the attention's hand-derived gradient step (forward and
    backward), scan steps counted: causal self-attention does the ``nb (nb + 1) / 2`` tiles on
    and below the diagonal, about half the ``nb²`` of non-causal attention (``(nb + 1) / 2nb``:
    0.56 with 8 blocks, where computing every key block gives 1), and each with 7 products
    (2 forward, 5 backward: a pair's whole rows per step, so the softmax row term needs no pass
    of its own) where the non-causal step's take 9 (its backward's first pass over the key
    blocks sums the row term)."""
    def tile_flops(causal):
        layer = jaxnn.multi_head_attention(4, causal=causal, block_size=64, use_bias=False)
        _, params, _ = layer.init(key, (1, t, 32))
        step = jax.grad(lambda p, x: jnp.sum(jaxnn.apply(layer, p, (), x)[0]), argnums=(0, 1))
        return _product_flops(jax.make_jaxpr(step)(params, jnp.ones((1, t, 32))).jaxpr)

    projections = 4 * 2 * 3 * t * 32 * 32  # Q, K, V, output: forward, dW and dx each
    causal, full = tile_flops(True) - projections, tile_flops(False) - projections
    blocks = -(-t // 64) + (-(-t // 64)) % 2
    assert causal / full == pytest.approx((blocks + 1) / (2 * blocks) * 7 / 9, rel=0.05)
    assert causal / full < 0.45
