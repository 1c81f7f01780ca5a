"""Sharded parameters: FSDP and tensor parallelism over a ("data", "model") mesh.

The rules (which parameter is split how) are checked here on abstract meshes. The runs on 8
host devices (meshes 8×1, 4×2, 2×4) happen in one child process started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which runs this file as a script (the
``_child_*`` functions) and reports each check as JSON, like tests/test_data_parallel.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import traceback

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import jaxnn
from jaxnn import sharding

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


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


PROBLEMS = {"mlp": (_mlp, (16,)), "cnn": (_cnn, (8, 8, 2)), "transformer": (_transformer, (6, 16))}


def _problem(name: str, batch: int = 32):
    make, feature_shape = PROBLEMS[name]
    net = make()
    out_shape, params, state = net.init(jax.random.key(0), (-1, *feature_shape))
    x = jax.random.normal(jax.random.key(1), (batch, *feature_shape))
    y = jax.random.normal(jax.random.key(2), (batch, *out_shape[1:]))
    return net, params, state, x, y


def _abstract(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), (sharding.DATA_AXIS, sharding.MODEL_AXIS))


# --- the rules -----------------------------------------------------------------------------


def test_fsdp_splits_every_parameter_over_data_along_its_largest_divisible_axis():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(8, 1), "fsdp")
    assert specs[0] == {"W": P(None, "data"), "b": P("data")}      # W (16, 32): axis 1
    assert specs[2] == {"W": P("data", None), "b": P("data")}      # W (32, 16): axis 0
    assert specs[4] == {"W": P("data", None), "b": P("data")}      # W (16, 8), b (8,)
    assert specs[1] == () and specs[3] == ()


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
    assert attention["Wq"] == P(None, "model") and attention["bq"] == P("model")
    assert attention["Wo"] == P("model", None) and attention["bo"] == P()
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
    with pytest.raises(ValueError, match="strategy must be one of"):
        sharding.param_specs(net, params, _abstract(8, 1), "zero3")
    with pytest.raises(ValueError, match="needs a mesh axis named 'model'"):
        sharding.param_specs(net, params, AbstractMesh((8,), ("data",)), "tensor")
    with pytest.raises(ValueError, match="data × model"):
        sharding.make_mesh(data=3, model=1)


def test_optimizer_state_follows_the_parameters_specs():
    net, params, *_ = _problem("mlp")
    specs = sharding.param_specs(net, params, _abstract(8, 1), "fsdp")
    optimizer = optax.adam(1e-3)
    opt_specs = sharding.opt_state_specs(optimizer, optimizer.init(params), specs)
    assert opt_specs[0].mu == specs and opt_specs[0].nu == specs
    assert opt_specs[0].count == P()


# --- runs on 8 host devices (child process) ------------------------------------------------


def _train(net, params, state, x, y, mesh=None, strategy=None, steps=20, optimizer=None):
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, optimizer, jit=False)
    opt_state = optimizer.init(params)
    if mesh is None:
        run = jax.jit(step)
    else:
        specs = sharding.param_specs(net, params, mesh, strategy)
        opt_specs = sharding.opt_state_specs(optimizer, opt_state, specs)
        params = sharding.place(params, specs, mesh)
        opt_state = sharding.place(opt_state, opt_specs, mesh)
        run = sharding.shard_train_step(step, mesh, specs, opt_specs)
    for _ in range(steps):
        params, state, opt_state, _ = run(params, state, opt_state, x, y, None)
    return params, opt_state, run


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
            diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree.leaves(trained), jax.tree.leaves(reference), strict=True))
            results[f"{name} {strategy} {data}x{model}"] = diff
    assert max(results.values()) <= 1e-5, results
    return results


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
    _, opt_state, run = _train(net, params, state, x, y, mesh, "fsdp", steps=1)
    specs = sharding.param_specs(net, params, mesh, "fsdp")
    placed = sharding.place(params, specs, mesh)
    hlo = run.lower(placed, state, opt_state, x, y, None).compile().as_text()
    counts = {op: hlo.count(f"{op}(") for op in
              ("all-gather", "reduce-scatter", "all-reduce", "dynamic-slice")}
    assert counts["all-gather"] >= 3, counts  # each split weight gathered for the forward
    # gradients summed over the data axis and cut to each device's shard: reduce-scatters, or
    # (XLA's CPU pipeline does not fuse the pair) an all-reduce, which XLA combines into one
    # over all gradients, followed by one dynamic-slice per split parameter
    assert counts["reduce-scatter"] >= 1 or (counts["all-reduce"] >= 1
                                             and counts["dynamic-slice"] >= 6), counts
    return counts


def _child_fit_with_sharded_parameters_equals_one_device():
    net, params, state, x, y = _problem("cnn", batch=64)
    optimizer = optax.adam(1e-2)

    def run(**mesh_args):
        return jaxnn.fit(net, jaxnn.mean_squared_error, optimizer, params, x, y, epochs=2,
                         batch_size=16, key=jax.random.key(3), state=state, **mesh_args)

    reference = run()
    fractions = {}
    for strategy, data, model in [("fsdp", 8, 1), ("tensor", 2, 4), ("replicated", 4, 2)]:
        result = run(mesh=sharding.make_mesh(data, model), shard_params=strategy)
        chex_close(result.params, reference.params, 1e-5)
        chex_close(result.losses, reference.losses, 1e-5)
        fractions[strategy] = sharding.bytes_per_device_fraction(
            (result.params, result.opt_state))
    assert fractions["replicated"] == 1.0 and fractions["fsdp"] < 0.2, fractions
    assert fractions["tensor"] < 0.5, fractions
    return fractions


def chex_close(a, b, atol):
    chex.assert_trees_all_close(a, b, atol=atol, rtol=0)


CHILD_CHECKS = [name for name in list(globals()) if name.startswith("_child_")]


@pytest.fixture(scope="module")
def child_results():
    env = {**os.environ, **CHILD_ENV,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("check", CHILD_CHECKS)
def test_on_eight_host_devices(child_results, check):
    outcome = child_results[check]
    assert outcome["ok"], outcome["error"]


def _main():
    assert jax.device_count() == 8, jax.devices()
    results = {}
    for name in CHILD_CHECKS:
        try:
            value = globals()[name]()
            results[name] = {"ok": True, "value": value}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    _main()
