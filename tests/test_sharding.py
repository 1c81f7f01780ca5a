"""Distribution over a ("data", "model") mesh: replicated, FSDP and tensor parallel layouts.

The layouts (which parameter is split how) are checked here on abstract meshes, with the
arguments' errors. The runs on 8 host devices (meshes 8×1, 4×2, 2×4, and 4 of the 8 for plain
data parallelism) are the ``_child_*`` functions, run in one child process by
``tests/devices.py`` in float64.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import jaxnn
from jaxnn import sharding
from tests import devices


def _mlp():
    return jaxnn.serial(jaxnn.dense(32), jaxnn.relu(), jaxnn.dense(16), jaxnn.tanh(),
                        jaxnn.dense(8))


def _cnn():
    return jaxnn.serial(jaxnn.conv(8, (3, 3), padding="SAME"), jaxnn.relu(),
                        jaxnn.max_pool((2, 2)), jaxnn.flatten(), jaxnn.dense(16), jaxnn.relu(),
                        jaxnn.dense(8))


def _transformer():
    return jaxnn.serial(jaxnn.transformer_block(4, mlp_ratio=2, causal=True, block_size=4),
                        jaxnn.dense(8))


def _lstm():
    return jaxnn.serial(jaxnn.lstm(16), jaxnn.dense(8))


PROBLEMS = {"mlp": (_mlp, (16,)), "cnn": (_cnn, (8, 8, 2)), "transformer": (_transformer, (6, 16)),
            "lstm": (_lstm, (5, 4))}


def _problem(name: str, batch: int = 32):
    """``(net, params, state, x, y)`` in float64 (the test process and the child enable x64)."""
    make, feature_shape = PROBLEMS[name]
    net = make()
    out_shape, params, state = net.init(jax.random.key(0), (-1, *feature_shape))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (batch, *feature_shape), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (batch, *out_shape[1:]), jnp.float64)
    return net, params, state, x, y


def _abstract(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), (sharding.DATA_AXIS, sharding.MODEL_AXIS))


# --- the layouts ----------------------------------------------------------------------------


def test_fsdp_splits_every_parameter_over_data_along_its_largest_divisible_axis():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(8, 1), "fsdp")
    assert specs[0] == {"W": P(None, "data"), "b": P("data")}      # W (16, 32): axis 1
    assert specs[2] == {"W": P("data", None), "b": P("data")}      # W (32, 16): axis 0
    assert specs[4] == {"W": P("data", None), "b": P("data")}      # W (16, 8), b (8,)
    assert specs[1] == ()
    assert specs[3] == ()


def test_fsdp_keeps_a_parameter_no_axis_of_which_divides_replicated():
    net = jaxnn.serial(jaxnn.dense(3))
    _, params, _ = net.init(jax.random.key(0), (-1, 5))
    specs = sharding.param_specs(net, params, _abstract(4, 1), "fsdp")
    assert specs == ({"W": P(), "b": P()},)


def test_tensor_parallel_alternates_column_and_row_splits_megatron_style():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(2, 4), "tensor")
    assert specs[0] == {"W": P(None, "model"), "b": P("model")}    # column: output features
    assert specs[2] == {"W": P("model", None), "b": P()}           # row: input features
    assert specs[4] == {"W": P(None, "model"), "b": P("model")}    # column again


def test_tensor_parallel_splits_a_conv_kernel_on_its_channel_axes():
    net, params, *_ = _problem("cnn")
    specs = sharding.param_specs(net, params, _abstract(1, 8), "tensor")
    assert specs[0] == {"W": P(None, None, None, "model"), "b": P("model")}
    assert specs[4] == {"W": P("model", None), "b": P()}


def test_tensor_parallel_splits_attention_by_heads_and_pairs_the_mlp():
    net, params, *_ = _problem("transformer")
    specs = sharding.param_specs(net, params, _abstract(2, 4), "tensor")
    attention = specs[0][0][0][1]        # residual(serial(layer_norm, attention))
    assert attention["Wq"] == P(None, "model")
    assert attention["bq"] == P("model")
    assert attention["Wo"] == P("model", None)
    assert attention["bo"] == P()
    mlp = specs[0][1][0]                 # residual(serial(layer_norm, dense, gelu, dense))
    assert mlp[1] == {"W": P(None, "model"), "b": P("model")}  # column first
    assert mlp[3] == {"W": P("model", None), "b": P()}         # then row


def test_overrides_choose_per_parameter():
    net, params, *_ = _problem("mlp")

    def keep_last_layer_whole(path, leaf, name, array):
        return P() if path.endswith("4:dense") else None

    specs = sharding.param_specs(net, params, _abstract(8, 1), "fsdp",
                                 overrides=keep_last_layer_whole)
    assert specs[4] == {"W": P(), "b": P()}
    assert specs[0]["W"] == P(None, "data")


def test_replicated_and_bad_arguments():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(8, 1), "replicated")
    assert all(s == P() for s in jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P)))
    with pytest.raises(ValueError, match=r"strategy must be one of \('replicated', 'fsdp', "
                                         r"'tensor'\), got 'zero3'"):
        sharding.param_specs(net, params, _abstract(8, 1), "zero3")
    with pytest.raises(ValueError,
                       match=r"the mesh needs an axis named 'model', got axes \('data',\)"):
        sharding.param_specs(net, params, AbstractMesh((8,), ("data",)), "tensor")
    with pytest.raises(ValueError, match="data × model"):
        sharding.make_mesh(data=3, model=1)


def test_optimizer_state_follows_the_parameters_specs():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(8, 1), "fsdp")
    optimizer = optax.adam(1e-3)
    opt_specs = sharding.opt_state_specs(optimizer, optimizer.init(params), specs)
    assert opt_specs[0].mu == specs
    assert opt_specs[0].nu == specs
    assert opt_specs[0].count == P()


def test_a_layer_declares_its_tensor_split_beside_its_weights():
    """A user's own leaf layer with ``tensor_split=`` is split as it declares; one without stays
    whole, and the pairing continues past it (no string-keyed rule table)."""
    dense = jaxnn.dense(8)
    mine = jaxnn.core.leaf_layer("my_matmul", dense.init, dense.forward, dense.backward,
                                 weights=("W",), tensor_split=jaxnn.core.MATRIX_SPLIT)
    plain = jaxnn.core.leaf_layer("plain_matmul", dense.init, dense.forward, dense.backward)
    net = jaxnn.serial(mine, plain, jaxnn.dense(8))
    _, params, _ = net.init(jax.random.key(0), (-1, 4))
    specs = sharding.param_specs(net, params, _abstract(1, 4), "tensor")
    assert specs[0] == {"W": P(None, "model"), "b": P("model")}
    assert specs[1] == {"W": P(), "b": P()}
    assert specs[2] == {"W": P("model", None), "b": P()}
    assert not hasattr(sharding, "TENSOR_RULES")


def test_an_override_that_does_not_divide_its_parameter_is_named():
    """An override's spec is checked against the parameter's shape and the mesh."""
    net, params, *_ = _problem("mlp")
    with pytest.raises(ValueError, match=r"override for serial/0:dense 'b': axis 0 of shape "
                                         r"\(32,\) has size 32, which does not divide over the 3"):
        sharding.param_specs(net, params, _abstract(3, 1), "replicated",
                             overrides=lambda path, leaf, name, a: P("data") if name == "b"
                             else None)


def test_bad_strategies_and_meshes_are_clear_errors_in_fit_and_shard_train_step():
    """``fit`` names the valid strategies with or without a mesh; a layout needs a mesh; a
    mesh without a "data" axis and specs that are not a pair are named."""
    net, params, _, x, y = _problem("mlp", batch=8)
    kw = {"epochs": 1, "batch_size": 4, "key": jax.random.key(0)}
    for mesh in (None, sharding.make_mesh()):
        with pytest.raises(ValueError, match=r"fit: shard_params must be one of \('replicated', "
                                             r"'fsdp', 'tensor'\), got 'bogus'"):
            jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x, y, mesh=mesh,
                      shard_params="bogus", **kw)
    with pytest.raises(ValueError, match="shard_params='fsdp' lays parameters out over a mesh"):
        jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x, y,
                  shard_params="fsdp", **kw)
    model_only = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("model",))
    with pytest.raises(ValueError, match=r"shard_train_step: the mesh needs an axis named "
                                         r"'data', got axes \('model',\)"):
        sharding.shard_train_step(lambda *a: a, model_only)
    with pytest.raises(ValueError, match=r"fit: the mesh needs an axis named 'data'"):
        jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x, y,
                  mesh=model_only, **kw)
    with pytest.raises(ValueError, match=r"specs must be \(param_specs, opt_state_specs\)"):
        sharding.shard_train_step(lambda *a: a, sharding.make_mesh(), {"W": P()})


def test_the_replicated_step_on_one_device_equals_the_plain_step():
    """``specs=None`` is plain data parallelism; on one device it is the plain step."""
    net, params, state, x, y = _problem("mlp", batch=8)
    optimizer = optax.sgd(0.2)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    expected = step(params, state, optimizer.init(params), x, y)
    got = sharding.shard_train_step(step, sharding.make_mesh())(params, state,
                                                                optimizer.init(params), x, y)
    chex.assert_trees_all_close(got, expected, rtol=1e-12)


def test_collective_timeout_ends_a_stuck_process_with_a_message():
    """A block that outlives the limit ends the process (exit 75) with a message naming it,
    within seconds; a block that finishes in time is left alone."""
    code = ("import time; from jaxnn import sharding\n"
            "with sharding.collective_timeout(5.0, 'a quick block'):\n    pass\n"
            "with sharding.collective_timeout(0.5, 'a stuck all-reduce'):\n    time.sleep(60)\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=devices.child_env(1), cwd=devices.ROOT)
    assert proc.returncode == sharding.EXIT_CODE, proc.stderr
    assert time.monotonic() - start < 30
    assert re.search(r"process 0 of 1: waited more than 0.5 s for the other processes in a "
                     r"stuck all-reduce", proc.stderr), proc.stderr
    with pytest.raises(ValueError, match="seconds must be a positive number"), \
            sharding.collective_timeout(0):
        pass


@pytest.mark.slow
def test_example_runs_on_forced_cpu_devices_and_matches_one_device():
    """examples/data_parallel.py: replicated and FSDP over 4 devices equal one device; FSDP keeps
    a quarter of the parameter and optimizer bytes per device."""
    env = devices.child_env(1)
    env.pop("XLA_FLAGS")  # the example sets it itself
    proc = subprocess.run([sys.executable, str(devices.ROOT / "examples" / "data_parallel.py")],
                          env=env, cwd=devices.ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "devices: 4" in proc.stdout
    name, value = lines[-1].split("=")
    assert name == "max_abs_diff_vs_single_device"
    assert float(value) < 1e-5
    fraction = float(proc.stdout.split("param_bytes_per_device_fraction=")[1].split()[0])
    assert 1 / 4 <= fraction < 1 / 4 + 0.01  # 4 devices; the output bias (1,) stays whole


# --- runs on 8 host devices (child process) ------------------------------------------------


def _train(net, params, state, x, y, mesh=None, strategy=None, steps=20, optimizer=None):
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer, jit=False)
    opt_state = optimizer.init(params)
    if mesh is None:
        run = jax.jit(step)
        params, state, opt_state, x, y = jax.device_put((params, state, opt_state, x, y),
                                                        jax.devices()[0])
    else:
        specs = (None if strategy is None else
                 sharding.layout(net, optimizer, params, opt_state, mesh, strategy))
        run = sharding.shard_train_step(step, mesh, specs)
    for _ in range(steps):
        params, state, opt_state, _ = run(params, state, opt_state, x, y)
    return params, opt_state, run


def _max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _child_sharded_training_equals_one_device():
    # SGD with momentum: Adam divides by √v, so a gradient that is 0 in exact arithmetic
    # (attention's key bias) turns its rounding noise, which differs with the summation order
    # of a partitioned program, into steps of ±lr; SGD keeps the comparison about gradients
    optimizer = optax.sgd(0.05, momentum=0.9)
    results = {}
    for name in PROBLEMS:
        net, params, state, x, y = _problem(name)
        reference, _, _ = _train(net, params, state, x, y, optimizer=optimizer)
        for strategy, data, model in [("fsdp", 8, 1), ("fsdp", 4, 2), ("tensor", 4, 2),
                                      ("tensor", 2, 4)]:
            mesh = sharding.make_mesh(data, model)
            trained, _, _ = _train(net, params, state, x, y, mesh, strategy,
                                   optimizer=optimizer)
            results[f"{name} {strategy} {data}x{model}"] = _max_diff(trained, reference)
    assert max(results.values()) <= 1e-9, results
    return results


def _child_replicated_data_parallel_on_four_devices_equals_one_device():
    net, params, state, x, y = _problem("mlp", batch=16)
    reference, ref_opt, _ = _train(net, params, state, x, y, steps=3)
    mesh = sharding.make_mesh(devices=jax.devices()[:4])
    trained, opt_state, _ = _train(net, params, state, x, y, mesh, steps=3)
    chex.assert_trees_all_close(jax.device_get((trained, opt_state)),
                                jax.device_get((reference, ref_opt)), rtol=1e-12, atol=1e-14)
    assert trained[0]["W"].sharding.is_fully_replicated
    assert len(trained[0]["W"].sharding.device_set) == 4
    return _max_diff(trained, reference)


def _child_every_strategy_names_a_batch_that_does_not_divide():
    net, params, state, x, y = _problem("mlp", batch=10)
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer)
    for strategy, (data, model) in [(None, (8, 1)), ("fsdp", (8, 1)), ("tensor", (8, 1)),
                                    ("tensor", (4, 2))]:
        mesh = sharding.make_mesh(data, model)
        specs = (None if strategy is None else
                 sharding.layout(net, optimizer, params, opt_state, mesh, strategy))
        try:
            sharding.shard_train_step(step, mesh, specs)(params, state, opt_state, x, y)
        except ValueError as error:
            message = str(error)
            assert message.startswith("shard_train_step: argument 3 (x): the leading axis has "
                                      "10 examples, which does not divide over the "
                                      f"{data} devices of mesh axis 'data'"), message
        else:
            raise AssertionError(f"no error for a batch of 10 on {data} devices ({strategy})")


def _child_a_parameter_axis_that_does_not_divide_is_named():
    net = jaxnn.serial(jaxnn.dense(3))
    _, params, _ = net.init(jax.random.key(0), (-1, 5))
    mesh = sharding.make_mesh(8, 1)
    specs = ({"W": P(None, "data"), "b": P()},)
    expected = ("[0]['W']: axis 1 of shape (5, 3) has size 3, which does not divide over the 8 "
                "devices of mesh axis 'data'")
    for call in (lambda: sharding.place(params, specs, mesh),
                 lambda: sharding.shard_train_step(
                     jaxnn.make_train_step(net, jaxnn.mean_squared_error, optax.sgd(0.1)), mesh,
                     (specs, ()))(params, (), (optax.EmptyState(), optax.EmptyState()),
                                  jnp.ones((8, 5)), jnp.ones((8, 3)))):
        try:
            call()
        except ValueError as error:
            assert expected in str(error), str(error)  # noqa: PT017 (a child process)
        else:
            raise AssertionError("no error for a weight axis of 3 split over 8 devices")


def _child_fsdp_keeps_one_eighth_per_device():
    net, params, state, x, y = _problem("mlp")
    mesh = sharding.make_mesh(8, 1)
    trained, opt_state, _ = _train(net, params, state, x, y, mesh, "fsdp", steps=2)
    fraction = sharding.bytes_per_device_fraction((trained, opt_state))
    # every parameter divides by 8 here; only Adam's scalar step count is replicated
    assert 1 / 8 <= fraction <= 1 / 8 + 1e-3, fraction
    replicated = sharding.bytes_per_device_fraction(
        _train(net, params, state, x, y, mesh, "replicated", steps=1)[:2])
    assert replicated == 1.0
    return fraction


def _child_fsdp_gathers_weights_and_reduces_gradients_to_shards():
    net, params, state, x, y = _problem("mlp")
    mesh = sharding.make_mesh(8, 1)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    specs = sharding.layout(net, optimizer, params, opt_state, mesh, "fsdp")
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer, jit=False)
    sharding.shard_train_step(step, mesh, specs)  # the layout it compiles is the one below
    compiled = jax.jit(step, out_shardings=(sharding.shardings(specs[0], mesh), None,
                                            sharding.shardings(specs[1], mesh), None))
    placed = sharding.place((params, opt_state), specs, mesh)
    hlo = compiled.lower(placed[0], state, placed[1], sharding.shard_batch(x, mesh),
                         sharding.shard_batch(y, mesh), None).compile().as_text()
    counts = {op: hlo.count(f"{op}(") for op in
              ("all-gather", "reduce-scatter", "all-reduce", "dynamic-slice")}
    assert counts["all-gather"] >= 3, counts  # each split weight gathered for the forward
    # gradients summed over the data axis and cut to each device's shard: reduce-scatters, or
    # (XLA's CPU pipeline does not fuse the pair) an all-reduce, which XLA combines into one
    # over all gradients, followed by one dynamic-slice per split parameter
    assert counts["reduce-scatter"] >= 1 or (counts["all-reduce"] >= 1
                                             and counts["dynamic-slice"] >= 6), counts
    return counts


def _child_fit_splits_the_training_set_and_equals_one_device():
    net, params, state, x, y = _problem("cnn", batch=64)
    optimizer = optax.adam(1e-2)
    seen = []
    fit_module = importlib.import_module("jaxnn.fit")  # jaxnn.fit is the function
    make = fit_module._epoch_for

    def recording(*args):
        epoch_fn = make(*args)

        def run(params, state, opt_state, x, y, *rest):
            seen.append((x.sharding, y.sharding))
            return epoch_fn(params, state, opt_state, x, y, *rest)

        return run

    def run(**mesh_args):
        return jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=2,
                         batch_size=16, key=jax.random.key(3), state=state, **mesh_args)

    reference = run()
    fractions = {}
    fit_module._epoch_for = recording
    try:
        for strategy, data, model in [("fsdp", 8, 1), ("tensor", 2, 4), ("replicated", 4, 2)]:
            result = run(mesh=sharding.make_mesh(data, model), shard_params=strategy)
            chex.assert_trees_all_close(result.params, reference.params, atol=1e-9, rtol=0)
            chex.assert_trees_all_close(result.losses, reference.losses, atol=1e-9, rtol=0)
            fractions[strategy] = sharding.bytes_per_device_fraction(
                (result.params, result.opt_state))
    finally:
        fit_module._epoch_for = make
    assert fractions["replicated"] == 1.0, fractions
    assert fractions["fsdp"] < 0.2, fractions
    assert fractions["tensor"] < 0.5, fractions
    for x_sharding, y_sharding in seen:  # each device holds its part of the training set
        assert x_sharding.spec == P("data")
        assert y_sharding.spec == P("data")
        assert x_sharding.shard_shape(x.shape)[0] == 64 // x_sharding.mesh.shape["data"]
    # the epoch never gathers the whole training set onto a device
    mesh = sharding.make_mesh(8, 1)
    epoch_fn = fit_module.make_epoch(net, jaxnn.mean_squared_error, optimizer, batch_size=16,
                                    mesh=mesh)
    args = (params, state, optimizer.init(params), sharding.shard_batch(x, mesh),
            sharding.shard_batch(y, mesh), jax.random.key(3), jnp.asarray(0, jnp.int32))
    hlo = epoch_fn.lower(*args).compile().as_text()
    whole = [line for line in hlo.splitlines() if "all-gather(" in line and "[64," in line]
    assert not whole, whole
    return fractions


def _child_fit_names_a_training_set_that_does_not_divide():
    net, params, _state, x, y = _problem("mlp", batch=36)
    try:
        jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x, y, epochs=1,
                  batch_size=8, key=jax.random.key(0), mesh=sharding.make_mesh(8, 1))
    except ValueError as error:
        assert str(error).startswith(  # noqa: PT017 (a child process, no pytest.raises)
            "fit: x: the leading axis has 36 examples, which does not divide over the 8 devices "
            "of mesh axis 'data'; use a multiple of 8 (e.g. 32 or 40)"), str(error)
    else:
        raise AssertionError("no error for 36 examples on 8 devices")
    try:
        jaxnn.fit(net, jaxnn.mean_squared_error, optax.sgd(0.1), params, x[:32], y[:32],
                  epochs=1, batch_size=6, key=jax.random.key(0), mesh=sharding.make_mesh(8, 1))
    except ValueError as error:
        message = str(error)  # a child process: no pytest.raises
        assert "fit: batch_size 6 does not divide over the 8 devices" in message, message
    else:
        raise AssertionError("no error for batch_size 6 on 8 devices")


CHILD_CHECKS = devices.child_checks(globals())


@pytest.fixture(scope="module")
def child_results():
    return devices.run_child_checks(__file__, 8)


@pytest.mark.slow
@pytest.mark.parametrize("check", CHILD_CHECKS)
def test_on_eight_host_devices(child_results, check):
    """Each ``_child_*`` check above passed in the 8-device child process."""
    outcome = child_results[check]
    assert outcome["ok"], outcome["error"]


if __name__ == "__main__":
    devices.child_main(globals())
