"""Reliability: the check mode for NaN/Inf, determinism, and jit hygiene.

Each bad input the library guards against has a test; ``docs/guides/reliability.md`` lists
them with the error each one gets.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn.core import Layer, stateless_init
from jaxnn.debug import NonFiniteError, checked_apply, checked_value_and_grad


def _log_layer():
    """A user's layer ``log(x)``: NaN for negative inputs (a deliberate hazard)."""

    def forward(params, state, x, *, key=None, train=False):
        return jnp.log(x), state, x

    def backward(params, x, dy):
        return (), dy / x

    return Layer("log", stateless_init(lambda s: s), forward, backward)


def _net():
    return jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), _log_layer(), jaxnn.dense(1))


def test_check_mode_names_the_first_layer_with_a_non_finite_output():
    net = _net()
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    x = jnp.array([[1.0, -2.0], [0.5, 0.5]])  # tanh gives negatives: log is NaN there
    with pytest.raises(NonFiniteError, match=r"output of serial/2:log"):
        checked_apply(net, params, (), x)


def test_check_mode_names_the_input_when_the_data_is_not_finite():
    net = _net()
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    with pytest.raises(NonFiniteError, match=r"input of serial/0:dense"):
        checked_apply(net, params, (), jnp.array([[jnp.nan, 1.0]]))


def test_check_mode_names_non_finite_parameters():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1))
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    params = (params[0], (), {**params[2], "b": jnp.array([jnp.inf])})
    with pytest.raises(NonFiniteError, match=r"parameters of serial/2:dense"):
        checked_apply(net, params, (), jnp.ones((1, 2)))


def _sqrt_layer():
    """``sqrt(x)``: finite at 0, but its derivative ``1/(2 sqrt x)`` is not."""

    def forward(params, state, x, *, key=None, train=False):
        y = jnp.sqrt(x)
        return y, state, y

    def backward(params, y, dy):
        return (), dy / (2 * y)

    return Layer("sqrt", stateless_init(lambda s: s), forward, backward)


def test_check_mode_names_the_layer_whose_backward_is_not_finite():
    net = jaxnn.serial(jaxnn.dense(1), _sqrt_layer())
    params = ({"W": jnp.ones((1, 1)), "b": jnp.zeros(1)}, ())
    x = jnp.array([[0.0], [1.0]])  # sqrt(0) = 0 is fine; its derivative is inf
    with pytest.raises(NonFiniteError, match=r"backward of serial/1:sqrt"):
        checked_value_and_grad(net, jaxnn.mean_squared_error, params, x, jnp.ones((2, 1)))


def test_check_mode_names_the_loss_when_only_the_loss_overflows():
    net = jaxnn.serial(jaxnn.dense(1))
    params = ({"W": jnp.full((1, 1), 1e30, jnp.float32), "b": jnp.zeros(1, jnp.float32)},)
    x = jnp.ones((2, 1), jnp.float32)  # outputs 1e30 are finite; their squares are not
    with pytest.raises(NonFiniteError, match=r"loss mean_squared_error"):
        checked_value_and_grad(net, jaxnn.mean_squared_error, params, x,
                               jnp.zeros((2, 1), jnp.float32))


def test_check_mode_passes_finite_runs_and_returns_the_same_values():
    net = jaxnn.serial(jaxnn.dense(3), jaxnn.tanh(), jaxnn.dense(1), jaxnn.sigmoid())
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    x = jax.random.normal(jax.random.key(1), (5, 2))
    y = (x[:, :1] > 0).astype(x.dtype)
    out, _ = checked_apply(net, params, (), x)
    chex.assert_trees_all_close(out, jaxnn.predict(net, params, x))
    (value, _), grads = checked_value_and_grad(net, jaxnn.binary_cross_entropy, params, x, y)
    (value2, _), grads2 = jaxnn.value_and_grad(*jaxnn.fuse(net, jaxnn.binary_cross_entropy))(
        params, (), x, y)
    chex.assert_trees_all_close((value, grads), (value2, grads2), rtol=1e-12)


def _train(seed, steps=30):
    net = jaxnn.serial(jaxnn.dense(8), jaxnn.relu(), jaxnn.dense(1), jaxnn.sigmoid())
    x, y = jaxnn.data.two_moons(64, seed=3)
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    _, params, _ = net.init(jax.random.key(seed), (-1, 2))
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, opt)
    key = jax.random.key(seed)
    for epoch in range(3):
        for bx, by in jaxnn.data.batches(jax.random.fold_in(key, epoch), x, y, 16):
            params, _, opt_state, _ = step(params, (), opt_state, bx, by)
    return params


def test_same_seed_gives_bitwise_identical_parameters():
    a, b = _train(0), _train(0)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    c = _train(1)
    assert not np.array_equal(np.asarray(a[0]["W"]), np.asarray(c[0]["W"]))


def test_train_step_makes_no_host_transfer_and_is_traced_once():
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(3))
    _, params, _ = net.init(jax.random.key(0), (-1, 5))
    opt = optax.sgd(0.1)
    opt_state = opt.init(params)
    step = jaxnn.make_train_step(net, jaxnn.softmax_cross_entropy, opt, jit=False)
    step = jax.jit(chex.assert_max_traces(step, n=1))
    x = jax.device_put(jax.random.normal(jax.random.key(1), (8, 5)))
    y = jax.device_put(jnp.arange(8) % 3)
    params, opt_state = jax.device_put((params, opt_state))
    step(params, (), opt_state, x, y)  # compile outside the guard
    with jax.transfer_guard("disallow"):
        for _ in range(3):
            params, _, opt_state, loss = step(params, (), opt_state, x, y)
    assert np.isfinite(float(loss))


def test_a_step_given_host_data_under_the_guard_is_refused():
    # the guard is what the previous test relies on: it does catch implicit transfers
    net = jaxnn.serial(jaxnn.dense(2))
    _, params, _ = net.init(jax.random.key(0), (-1, 2))
    opt = optax.sgd(0.1)
    step = jaxnn.make_train_step(net, jaxnn.mean_squared_error, opt)
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="host-to-device"):
        step(params, (), opt.init(params), np.ones((2, 2)), np.ones((2, 2)))


# --- checkpoints -----------------------------------------------------------------------------


def test_a_pickled_payload_in_a_checkpoint_is_refused_and_never_run(tmp_path):
    from jaxnn import checkpoint

    tree = {"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    checkpoint.save(tmp_path / "good.npz", tree)
    arrays = dict(np.load(tmp_path / "good.npz", allow_pickle=False))
    marker = tmp_path / "payload-ran"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arrays["['W']"] = np.array([Payload()], dtype=object)  # np.savez pickles object arrays
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(checkpoint.CheckpointError, match=r"evil\.npz: not a readable checkpoint"):
        checkpoint.load(tmp_path / "evil.npz", tree)
    assert not marker.exists()


_CRASH_MID_WRITE = """
import os, sys
import numpy as np
import jax.numpy as jnp
from jaxnn import checkpoint

path = sys.argv[1]
checkpoint.save(path, {"W": jnp.ones(1000)}, step=1)

def dies_half_way(file, **arrays):
    file.write(b"PK\\x03\\x04" + b"\\0" * 5000)  # the start of a zip, then the process dies
    file.flush()
    os._exit(3)  # no exception handler, no clean-up: as if the machine lost power

checkpoint.np.savez = dies_half_way
checkpoint.save(path, {"W": jnp.zeros(1000)}, step=2)
"""


def test_a_save_killed_mid_write_leaves_the_old_checkpoint_and_the_next_save_cleans_up(tmp_path):
    import subprocess
    import sys

    from jaxnn import checkpoint

    path = tmp_path / "c.npz"
    done = subprocess.run([sys.executable, "-c", _CRASH_MID_WRITE, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    # the half-written temporary file is left behind (nothing could remove it) ...
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "c.npz"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp-")
    # ... and the destination is still the complete previous checkpoint
    assert checkpoint.load_metadata(path)["step"] == 1
    restored = checkpoint.load(path, {"W": jnp.zeros(1000, jnp.float32)})
    np.testing.assert_array_equal(restored["W"], np.ones(1000))
    # the next save removes the dead writer's leftover, and only its own
    (tmp_path / ".tmp-other.npz.1.x.npz").write_bytes(b"")
    checkpoint.save(path, {"W": jnp.zeros(1000)}, step=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other.npz.1.x.npz", "c.npz"]


# --- jaxnn train under real signals -------------------------------------------------------------

_RUN = ["--layers", "2,6,1", "--batch-size", "8", "--optimizer", "adam", "--seed", "2",
        "--print-every", "1", "--no-progress"]


def _trained(folder):
    from jaxnn import checkpoint
    from jaxnn.cli import common as cli_common

    meta = checkpoint.load_metadata(folder / "checkpoint.npz")
    model = cli_common.build_model([2, 6, 1])
    _, params, state = model.init(jax.random.key(0), (-1, 2))
    template = {"params": params, "state": state, "opt_state": optax.adam(0.01).init(params),
                "costs": np.zeros(meta["step"], np.float32)}
    return checkpoint.load(folder / "checkpoint.npz", template), meta


@pytest.mark.slow
def test_real_signals_at_many_moments_save_checkpoints_that_resume_bit_for_bit(tmp_path):
    """SIGINT/SIGTERM sent to a real ``jaxnn train`` at several moments, often while a cost
    line prints: each checkpoint's step, parameters and history agree, and the resumed run ends
    bit for bit where the uninterrupted one does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}

    def jaxnn_train(*args):  # in a process of its own, as the interrupted runs (no x64)
        done = subprocess.run([sys.executable, "-m", "jaxnn", "train", *args], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    jaxnn_train(*_RUN, "--epochs", "100", "--out", str(tmp_path / "whole"))
    whole, _ = _trained(tmp_path / "whole")
    interrupted = 0
    for i, (signum, delay) in enumerate([(signal.SIGINT, 0.02), (signal.SIGINT, 0.2),
                                         (signal.SIGTERM, 0.5), (signal.SIGINT, 1.0)]):
        out = tmp_path / f"cut{i}"
        proc = subprocess.Popen([sys.executable, "-m", "jaxnn", "train", *_RUN, "--epochs",
                                 "100", "--out", str(out)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:  # wait for training to start printing costs
            if line.startswith("cost after step"):
                break
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            continue  # finished before the signal arrived
        assert proc.returncode == 128 + signum and "Traceback" not in err, err
        interrupted += 1
        cut, meta = _trained(out)
        assert meta["step"] % 40 == 0 and cut["costs"].shape == (meta["step"],)
        np.testing.assert_array_equal(cut["costs"], whole["costs"][: meta["step"]])
        jaxnn_train("--resume", str(out), "--epochs", "100", "--no-progress")
        resumed, _ = _trained(out)
        for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert interrupted >= 2
