"""Positional embeddings and the transformer block; a whole language model checked end to end."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn.layers._transformer import sinusoidal_table
from tests.gradcases import registered, run_layer_case

GRADCHECK_CASES = registered("positional_embedding", "sinusoidal_positional_embedding",
                             "transformer_block")


@pytest.mark.parametrize("case", [c for cases in GRADCHECK_CASES.values() for c in cases],
                         ids=repr)
def test_backward_matches_autodiff_and_finite_differences(case):
    run_layer_case(case)


def test_learned_positions_add_the_first_rows_and_only_those_get_gradient(key):
    layer = jaxnn.positional_embedding(6)
    _, params, _ = layer.init(key, (-1, 4, 3))
    x = jnp.arange(24.0).reshape(2, 4, 3)
    y, _ = jaxnn.apply(layer, params, (), x)
    chex.assert_trees_all_close(y, x + params["positions"][None, :4])
    grads = jax.grad(lambda p: jnp.sum(jaxnn.apply(layer, p, (), x)[0]))(params)
    np.testing.assert_array_equal(grads["positions"][:4], 2.0)  # two examples
    np.testing.assert_array_equal(grads["positions"][4:], 0.0)
    assert layer.weights == ()


def test_sinusoidal_table_values():
    table = sinusoidal_table(3, 4)
    np.testing.assert_allclose(table[:, 0], np.sin(np.arange(3)))
    np.testing.assert_allclose(table[:, 1], np.cos(np.arange(3)))
    np.testing.assert_allclose(table[:, 2], np.sin(np.arange(3) / 100.0))
    y = jaxnn.sinusoidal_positional_embedding()(jnp.zeros((2, 3, 4)))
    chex.assert_trees_all_close(y[1], jnp.asarray(table))


def test_sequence_longer_than_the_table_is_a_clear_error(key):
    layer = jaxnn.positional_embedding(4)
    with pytest.raises(ValueError, match="positional_embedding: in_shape has 5 positions"):
        layer.init(key, (-1, 5, 3))
    _, params, _ = layer.init(key, (-1, 4, 3))
    with pytest.raises(ValueError, match="positional_embedding: the sequence has 6 positions"):
        jaxnn.apply(layer, params, (), jnp.ones((1, 6, 3)))


def test_block_is_pre_norm_residual_attention_then_residual_mlp(key):
    block = jaxnn.transformer_block(2, mlp_ratio=3, causal=True)
    out_shape, params, _ = block.init(key, (-1, 5, 4))
    assert out_shape == (-1, 5, 4)
    assert repr(block) == ("transformer_block(residual(serial(layer_norm, multi_head_attention)),"
                           " residual(serial(layer_norm, dense, gelu, dense)))")
    mlp = params[1][0]
    chex.assert_shape([mlp[1]["W"], mlp[3]["W"]], [(4, 12), (12, 4)])
    x = jax.random.normal(key, (2, 5, 4))
    attention, norm = block.sublayers[0].sublayers[0].sublayers[::-1]
    h = x + jaxnn.apply(jaxnn.serial(norm, attention), params[0][0], ((), ()), x)[0]
    expected = h + jaxnn.apply(block.sublayers[1].sublayers[0], mlp, ((),) * 4, h)[0]
    chex.assert_trees_all_close(jaxnn.apply(block, params, ((),) * 2, x)[0], expected,
                                rtol=1e-6, atol=1e-6)


def test_causal_block_output_does_not_depend_on_later_positions(key):
    block = jaxnn.transformer_block(2, causal=True, block_size=2)
    _, params, state = block.init(key, (-1, 6, 4))
    x = jax.random.normal(key, (1, 6, 4))
    y, _ = jaxnn.apply(block, params, state, x)
    y_changed, _ = jaxnn.apply(block, params, state, x.at[:, 4:].set(7.0))
    chex.assert_trees_all_close(y[:, :4], y_changed[:, :4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(y[:, 4:], y_changed[:, 4:])


def test_block_rejects_a_width_not_divisible_by_the_heads(key):
    with pytest.raises(ValueError, match=r"multi_head_attention: features .*num_heads"):
        jaxnn.transformer_block(3).init(key, (-1, 5, 4))
    with pytest.raises(ValueError, match="transformer_block: mlp_ratio"):
        jaxnn.transformer_block(2, mlp_ratio=0)


def test_language_model_hand_gradient_equals_autodiff_on_ids_and_targets():
    vocab, width, context = 11, 8, 6
    model = jaxnn.serial(jaxnn.embedding(vocab, width), jaxnn.positional_embedding(context),
                         jaxnn.transformer_block(2, causal=True, block_size=4),
                         jaxnn.transformer_block(2, causal=True), jaxnn.layer_norm(),
                         jaxnn.dense(vocab))
    _, params, _ = model.init(jax.random.key(0), (-1, context))
    ids = jax.random.randint(jax.random.key(1), (3, context), 0, vocab)
    targets = jax.random.randint(jax.random.key(2), (3, context), 0, vocab)
    report = jaxnn.gradcheck.check_model(model, jaxnn.softmax_cross_entropy, params, ids,
                                         targets)
    assert report.comparisons and report.passed, "\n" + report.table()
