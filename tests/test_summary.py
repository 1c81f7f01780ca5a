"""jaxnn.summary: layer paths, output shapes and exact parameter counts, for any combinator."""

import jax
import jax.numpy as jnp
import pytest

import jaxnn
from jaxnn.core import Layer, stateless_init


def _rows(text: str) -> dict[str, list[str]]:
    """``{path: [output shape, parameters, count]}`` parsed back from the table."""
    lines = text.splitlines()
    header = lines[0]
    shape_at, params_at = header.index("output shape"), header.index("parameters")
    rows = {}
    for line in lines[2:]:
        if line.startswith("-"):
            break
        count = line.split()[-1]  # right-aligned, may be wider than its header
        cells = [line[:shape_at], line[shape_at:params_at], line[params_at:-len(count)], count]
        rows[cells[0].strip()] = [c.strip() for c in cells[1:]]
    return rows


def test_cnn_rows_shapes_and_exact_parameter_counts():
    net = jaxnn.serial(
        jaxnn.conv(8, (3, 3)), jaxnn.relu(), jaxnn.max_pool((2, 2)),
        jaxnn.conv(16, (3, 3), strides=2, padding="VALID"), jaxnn.relu(),
        jaxnn.flatten(), jaxnn.dense(10),
    )
    text = jaxnn.summary(net, (-1, 12, 12, 3))
    rows = _rows(text)
    conv1 = 3 * 3 * 3 * 8 + 8  # kernel (3, 3, 3, 8) and bias (8,)
    conv2 = 3 * 3 * 8 * 16 + 16
    dense = 2 * 2 * 16 * 10 + 10  # (6 − 3)//2 + 1 = 2 → 2·2·16 features in
    assert rows["serial/0:conv"] == ["(-1, 12, 12, 8)", "W (3, 3, 3, 8), b (8,)", f"{conv1:,}"]
    assert rows["serial/2:max_pool"] == ["(-1, 6, 6, 8)", "", "0"]
    assert rows["serial/3:conv"] == ["(-1, 2, 2, 16)", "W (3, 3, 8, 16), b (16,)",
                                     f"{conv2:,}"]
    assert rows["serial/5:flatten"] == ["(-1, 64)", "", "0"]
    assert rows["serial/6:dense"][0] == "(-1, 10)"
    assert rows["serial"] == ["(-1, 10)", "", f"{conv1 + conv2 + dense:,}"]
    assert list(rows) == ["serial"] + [f"serial/{i}:{layer.name}"
                                       for i, layer in enumerate(net.sublayers)]
    assert text.splitlines()[-1] == f"total parameters: {conv1 + conv2 + dense:,}"
    # the same total as the parameters init really makes
    _, params, _ = net.init(jax.random.key(0), (-1, 12, 12, 3))
    assert sum(p.size for p in jax.tree.leaves(params)) == conv1 + conv2 + dense


def test_the_classic_four_layer_network():
    # [12288, 20, 7, 5, 1]: n[l]·n[l-1] weights and n[l] biases per layer
    sizes = [12288, 20, 7, 5, 1]
    layers = []
    for n in sizes[1:-1]:
        layers += [jaxnn.dense(n), jaxnn.relu()]
    net = jaxnn.serial(*layers, jaxnn.dense(1), jaxnn.sigmoid())
    text = jaxnn.summary(net, (-1, 12288))
    rows = _rows(text)
    assert rows["serial/0:dense"] == ["(-1, 20)", "W (12288, 20), b (20,)", "245,780"]
    assert rows["serial/2:dense"][2] == "147"
    assert rows["serial/4:dense"][2] == "40"
    assert rows["serial/6:dense"][2] == "6"
    assert text.splitlines()[-1] == "total parameters: 245,973"


def test_shapes_only_no_parameter_is_allocated():
    # 10¹¹ weights (400 GB in float32) would not fit: summary must only trace init
    text = jaxnn.summary(jaxnn.dense(100_000), (-1, 1_000_000))
    assert text.splitlines()[-1] == "total parameters: 100,000,100,000"


def _twice(first: Layer, second: Layer) -> Layer:
    """A user's own combinator: ``second`` after ``first`` (only ``init`` matters here)."""

    def init(key, in_shape):
        k1, k2 = jax.random.split(key)
        shape, p1, s1 = first.init(k1, in_shape)
        shape, p2, s2 = second.init(k2, shape)
        return shape, (p1, p2), (s1, s2)

    return Layer("twice", init, None, None, (first, second), lambda subs: _twice(*subs))


def _counter() -> Layer:
    """A leaf with state only (like running statistics): 3 entries, no parameters."""

    def init(key, in_shape):
        return tuple(in_shape), (), {"seen": jnp.zeros((3,))}

    return Layer("counter", init, None, None)


def test_a_users_own_combinator_is_walked_through_its_sublayers():
    block = jaxnn.serial(jaxnn.dense(4), _counter())
    net = jaxnn.serial(jaxnn.dense(4), _twice(block, block))
    text = jaxnn.summary(net, (-1, 2))
    rows = _rows(text)
    assert list(rows) == [
        "serial", "serial/0:dense", "serial/1:twice",
        "serial/1:twice/0:serial", "serial/1:twice/0:serial/0:dense",
        "serial/1:twice/0:serial/1:counter",
        "serial/1:twice/1:serial", "serial/1:twice/1:serial/0:dense",
        "serial/1:twice/1:serial/1:counter",
    ]
    assert rows["serial/1:twice"] == ["(-1, 4)", "", f"{2 * (4 * 4 + 4)}"]
    assert rows["serial/1:twice/1:serial/0:dense"][2] == "20"
    lines = text.splitlines()
    assert lines[-2] == f"total parameters: {2 * 4 + 4 + 2 * 20}"
    assert lines[-1] == "total state entries (not trained): 6"
    # indentation follows the nesting
    assert next(line for line in lines if "0:serial/0:dense" in line).startswith(" " * 6)


def test_several_outputs_are_listed():
    def split_init(key, in_shape):
        return [tuple(in_shape), tuple(in_shape)], (), ()

    fork = Layer("fork", split_init, None, None)
    rows = _rows(jaxnn.summary(jaxnn.serial(jaxnn.dense(3), fork), (-1, 2)))
    assert rows["serial/1:fork"][0] == "[(-1, 3), (-1, 3)]"


def test_a_single_layer_is_a_one_row_table():
    rows = _rows(jaxnn.summary(jaxnn.relu(), (-1, 5)))
    assert rows == {"relu": ["(-1, 5)", "", "0"]}


def test_an_input_the_layers_cannot_take_is_named_by_the_layer():
    with pytest.raises(ValueError, match=r"conv: expected an input of rank 4"):
        jaxnn.summary(jaxnn.serial(jaxnn.conv(4, (3, 3))), (-1, 8, 3))


def test_model_must_be_a_layer():
    with pytest.raises(TypeError, match=r"summary: model must be a jaxnn.Layer, got function"):
        jaxnn.summary(jaxnn.relu, (-1, 3))


def test_a_combinator_without_rebuild_is_an_error():
    broken = Layer("broken", stateless_init(lambda s: s), None, None, (jaxnn.relu(),))
    with pytest.raises(ValueError, match="summary: combinator 'broken' has sublayers but no "
                                         "rebuild"):
        jaxnn.summary(broken, (-1, 3))


def test_parallel_residual_and_concatenate_rows():
    net = jaxnn.serial(
        jaxnn.dense(4),
        jaxnn.residual(jaxnn.serial(jaxnn.dense(4), jaxnn.relu())),
        jaxnn.parallel(jaxnn.dense(2), jaxnn.dense(3)),
        jaxnn.concatenate(),
    )
    rows = _rows(jaxnn.summary(net, (-1, 3)))
    assert list(rows) == [
        "serial", "serial/0:dense",
        "serial/1:residual", "serial/1:residual/0:serial",
        "serial/1:residual/0:serial/0:dense", "serial/1:residual/0:serial/1:relu",
        "serial/2:parallel", "serial/2:parallel/0:dense", "serial/2:parallel/1:dense",
        "serial/3:concatenate",
    ]
    assert rows["serial/1:residual"] == ["(-1, 4)", "", f"{4 * 4 + 4}"]
    assert rows["serial/2:parallel"] == ["[(-1, 2), (-1, 3)]", "", f"{4 * 2 + 2 + 4 * 3 + 3}"]
    assert rows["serial/3:concatenate"] == ["(-1, 5)", "", "0"]
    assert rows["serial"][2] == f"{3 * 4 + 4 + 20 + 10 + 15}"


def test_named_layers_are_rows_named_by_their_names():
    net = jaxnn.serial(
        enc=jaxnn.serial(jaxnn.dense(4), jaxnn.batch_norm()),
        heads=jaxnn.parallel(("score", jaxnn.dense(1)), ("mask", jaxnn.dense(2))),
        join=jaxnn.concatenate(),
    )
    text = jaxnn.summary(net, (-1, 3))
    rows = _rows(text)
    assert list(rows) == [
        "serial", "serial/enc:serial", "serial/enc:serial/0:dense",
        "serial/enc:serial/1:batch_norm", "serial/heads:parallel",
        "serial/heads:parallel/score:dense", "serial/heads:parallel/mask:dense",
        "serial/join:concatenate",
    ]
    assert rows["serial/heads:parallel/mask:dense"] == ["(-1, 2)", "W (4, 2), b (2,)", "10"]
    assert text.splitlines()[-1] == "total state entries (not trained): 8"  # mean and var
