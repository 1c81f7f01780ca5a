"""Data parallelism: a sharded step over 4 devices equals the one-device step.

The number of CPU devices is fixed when JAX starts, so the 4-device checks run in one child
process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``; that process runs
this very file as a script (the ``_child_*`` functions below) and reports each check's outcome
as JSON. Checks that need a single device run in the test process.
"""

import json
import os
import pathlib
import subprocess
import sys
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import data_parallel
from jaxnn.fit import make_epoch

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHILD_ENV = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
             "JAX_ENABLE_X64": "1"}


def _problem(m=16, n_in=3, seed=0):
    net = jaxnn.serial(jaxnn.dense(8), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    _, params, _ = net.init(k1, (-1, n_in))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(k2, (m, n_in), jnp.float64)
    y = (jax.random.uniform(k3, (m, 1)) > 0.5).astype(jnp.float64)
    return net, params, x, y


def _run_steps(step, params, opt_state, x, y, n=3):
    for _ in range(n):
        params, _, opt_state, value = step(params, (), opt_state, x, y, None)
    return params, opt_state, value


# --- checks run in the 4-device child process ------------------------------------------------


def _child_four_devices_are_visible():
    assert jax.device_count() == 4, jax.devices()
    assert data_parallel.data_mesh().shape == {"data": 4}


def _child_sharded_step_equals_one_device():
    net, params, x, y = _problem()
    optimizer = optax.adam(0.01)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    one_device = jax.devices()[0]
    single = _run_steps(step, *jax.device_put((params, optimizer.init(params), x, y),
                                              one_device))
    sharded_step = data_parallel.shard_train_step(step)
    sharded = _run_steps(sharded_step, params, optimizer.init(params), x, y)
    chex.assert_trees_all_close(sharded, single, rtol=1e-12, atol=1e-14)
    new_params = sharded[0]
    assert new_params[0]["W"].sharding.is_fully_replicated
    assert len(new_params[0]["W"].sharding.device_set) == 4


def _child_batch_is_split_on_its_leading_axis():
    mesh = data_parallel.data_mesh()
    _, _, x, _ = _problem(m=12)
    sharded = data_parallel.shard_batch(x, mesh)
    shapes = sorted(s.data.shape for s in sharded.addressable_shards)
    assert shapes == [(3, 3)] * 4, shapes
    np.testing.assert_array_equal(np.asarray(sharded), np.asarray(x))
    replicated = data_parallel.replicate({"W": x}, mesh)
    assert all(s.data.shape == (12, 3) for s in replicated["W"].addressable_shards)


def _child_indivisible_batch_is_a_clear_error():
    net, params, x, y = _problem(m=10)
    optimizer = optax.sgd(0.1)
    step = data_parallel.shard_train_step(jaxnn.make_train_step(net, jaxnn.binary_cross_entropy,
                                                           optimizer))
    try:
        step(params, (), optimizer.init(params), x, y)
    except ValueError as error:
        message = str(error)
        assert "argument 3" in message and "10 examples" in message, message
        assert "4 devices" in message and "multiple of 4 (e.g. 8 or 12)" in message, message
    else:
        raise AssertionError("no error for a batch of 10 on 4 devices")


def _child_stateful_step_with_keys_equals_one_device():
    net, params, x, y = _problem()
    optimizer = optax.sgd(0.3)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    args = (params, ((),) * 4, optimizer.init(params), x, y, jax.random.key(3))
    single = step(*jax.device_put(args, jax.devices()[0]))
    sharded = data_parallel.shard_train_step(step)(*args)
    chex.assert_trees_all_close(sharded, single, rtol=1e-12, atol=1e-14)


def _child_fit_style_scan_on_sharded_data_equals_one_device():
    net, params, x, y = _problem(m=32)
    optimizer = optax.sgd(0.3)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    single = jaxnn.run_steps(step, *jax.device_put((params, (), optimizer.init(params), x, y),
                                                   jax.devices()[0]), n_steps=5)
    mesh = data_parallel.data_mesh()
    replicated = data_parallel.replicate((params, (), optimizer.init(params)), mesh)
    sharded = jaxnn.run_steps(step, *replicated, *data_parallel.shard_batch((x, y), mesh),
                              n_steps=5)
    chex.assert_trees_all_close(sharded, single, rtol=1e-12, atol=1e-14)


def _child_fit_over_the_mesh_equals_one_device():
    net, params, x, y = _problem(m=36)
    optimizer = optax.adam(0.02)
    kw = dict(epochs=2, batch_size=8, key=jax.random.key(1))
    single = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer,
                       *jax.device_put((params, x, y), jax.devices()[0]), **kw)
    sharded = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y,
                        mesh=data_parallel.data_mesh(), **kw)
    chex.assert_trees_all_close(sharded.params, single.params, rtol=1e-12, atol=1e-14)
    chex.assert_trees_all_close(sharded.losses, single.losses, rtol=1e-12)
    assert len(sharded.params[0]["W"].sharding.device_set) == 4
    # the mini-batches really are split: the gradient sums become all-reduces
    mesh = data_parallel.data_mesh()
    epoch_fn = make_epoch(net, jaxnn.binary_cross_entropy, optimizer, batch_size=8, mesh=mesh)
    args = data_parallel.replicate((params, (), optimizer.init(params), x, y, jax.random.key(1),
                                    jnp.asarray(0, jnp.int32)), mesh)
    assert "all-reduce" in epoch_fn.lower(*args).compile().as_text()
    try:
        jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=1,
                  batch_size=6, key=jax.random.key(1), mesh=data_parallel.data_mesh())
    except ValueError as error:
        assert "batch_size 6 does not divide over the 4 devices" in str(error), str(error)
    else:
        raise AssertionError("no error for batch_size 6 on 4 devices")


def _child_main() -> None:
    results = {}
    for name, fn in list(globals().items()):
        if name.startswith("_child_") and name != "_child_main":
            try:
                fn()
                results[name] = "ok"
            except Exception:  # reported to the parent test, which fails with the traceback
                results[name] = traceback.format_exc()
    print(json.dumps(results))


@pytest.fixture(scope="module")
def four_device_results():
    env = {**os.environ, **CHILD_ENV}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHILD_CHECKS = [
    "_child_four_devices_are_visible",
    "_child_sharded_step_equals_one_device",
    "_child_batch_is_split_on_its_leading_axis",
    "_child_indivisible_batch_is_a_clear_error",
    "_child_stateful_step_with_keys_equals_one_device",
    "_child_fit_style_scan_on_sharded_data_equals_one_device",
    "_child_fit_over_the_mesh_equals_one_device",
]


@pytest.mark.parametrize("check", CHILD_CHECKS)
def test_on_four_forced_cpu_devices(four_device_results, check):
    assert four_device_results[check] == "ok", four_device_results[check]


def test_every_child_check_is_listed():
    defined = {n for n in globals() if n.startswith("_child_") and n != "_child_main"}
    assert defined == set(CHILD_CHECKS)


# --- checks in the test process (one device) ---------------------------------------------------


def test_sharded_step_on_the_default_mesh_equals_the_plain_step():
    net, params, x, y = _problem()
    optimizer = optax.sgd(0.2)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    expected = step(params, (), optimizer.init(params), x, y)
    got = data_parallel.shard_train_step(step)(params, (), optimizer.init(params), x, y)
    chex.assert_trees_all_close(got, expected, rtol=1e-12)


def test_a_mesh_without_a_data_axis_is_a_clear_error():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("model",))
    with pytest.raises(ValueError, match="axis named 'data', got axes \\('model',\\)"):
        data_parallel.shard_train_step(lambda *a: a, mesh)


def test_a_missing_batch_argument_is_a_clear_error():
    net, params, x, y = _problem()
    step = data_parallel.shard_train_step(jaxnn.make_train_step(net, jaxnn.binary_cross_entropy,
                                                           optax.sgd(0.1)))
    with pytest.raises(ValueError, match="batch argument 4 is missing"):
        step(params, (), x, y)


@pytest.mark.slow
def test_example_runs_on_forced_cpu_devices_and_matches_one_device():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # the example sets it itself
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "data_parallel.py")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert "devices: 4" in proc.stdout
    name, value = lines[-1].split("=")
    assert name == "max_abs_diff_vs_single_device"
    assert float(value) < 1e-5
    fraction = float(proc.stdout.split("param_bytes_per_device_fraction=")[1].split()[0])
    assert 1 / 4 <= fraction < 1 / 4 + 0.01  # 4 devices; the output bias (1,) stays whole


if __name__ == "__main__":
    jax.config.update("jax_numpy_rank_promotion", "raise")
    _child_main()
