"""Sharded checkpoints through Orbax: save on 8 forced devices under FSDP, restore on 4, on a
tensor-parallel layout and on one device, continue training, equal to an uninterrupted run.

The 8-device checks are the ``_child_*`` functions, run in one child process by
``tests/devices.py``; the errors are checked here, on one device. Saving from 2 processes and
restoring in 1 is in tests/test_multi_process.py.
"""

from __future__ import annotations

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jaxnn
from jaxnn import checkpoint, sharding
from tests import devices


def _problem():
    net = jaxnn.serial(jaxnn.dense(32), jaxnn.relu(), jaxnn.dense(16), jaxnn.tanh(),
                       jaxnn.dense(8))
    _, params, _ = net.init(jax.random.key(0), (-1, 16))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (64, 16), jnp.float64)
    y = jax.random.normal(jax.random.key(2), (64, 8), jnp.float64)
    return net, params, x, y


def _fit(params, x, y, epochs, **kw):
    net, *_ = _problem()
    return jaxnn.fit(net, jaxnn.mean_squared_error, optax.adam(1e-2), params, x, y,
                     epochs=epochs, batch_size=16, key=jax.random.key(3), **kw)


def _child_fsdp_on_eight_saved_restored_on_four_one_and_tensor_then_continued():
    import tempfile

    net, params, x, y = _problem()
    optimizer = optax.adam(1e-2)
    whole = _fit(params, x, y, 4, mesh=sharding.make_mesh(8, 1), shard_params="fsdp")
    first = _fit(params, x, y, 2, mesh=sharding.make_mesh(8, 1), shard_params="fsdp")
    assert first.params[0]["W"].sharding.spec == P(None, "data")
    directory = os.path.join(tempfile.mkdtemp(), "step_2")
    checkpoint.save_sharded(directory, (first.params, first.opt_state), step=2,
                            metadata={"strategy": "fsdp"})
    meta = checkpoint.load_sharded_metadata(directory)
    assert meta == {"step": 2, "mesh": "{'data': 8, 'model': 1}", "strategy": "fsdp"}, meta
    template = (params, optimizer.init(params))
    results = {}
    targets = {"4 devices fsdp": (sharding.make_mesh(4, 1, devices=jax.devices()[:4]), "fsdp"),
               "2x2 tensor": (sharding.make_mesh(2, 2, devices=jax.devices()[:4]), "tensor"),
               "one device": (None, None)}
    for label, (mesh, strategy) in targets.items():
        specs = (None if mesh is None else
                 sharding.layout(net, optimizer, *template, mesh, strategy))
        restored_params, restored_opt = checkpoint.load_sharded(directory, template, mesh=mesh,
                                                                specs=specs)
        # exactly what was saved, laid out as asked
        chex.assert_trees_all_equal(jax.device_get((restored_params, restored_opt)),
                                    jax.device_get((first.params, first.opt_state)))
        leaf = restored_params[0]["W"]
        if mesh is None:
            assert leaf.sharding.device_set == {jax.local_devices()[0]}
        else:
            assert leaf.sharding.spec == specs[0][0]["W"]
            assert leaf.sharding.mesh == mesh
            assert len(leaf.sharding.device_set) == 4
        rest = _fit(restored_params, x, y, 2, opt_state=restored_opt, start_epoch=2,
                    **({} if mesh is None else {"mesh": mesh, "shard_params": strategy}))
        diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax.tree.leaves(rest.params), jax.tree.leaves(whole.params), strict=True))
        chex.assert_trees_all_close(jax.device_get(rest.losses),
                                    jax.device_get(whole.losses[2:]), atol=1e-12, rtol=0)
        results[label] = diff
    assert max(results.values()) <= 1e-12, results
    return results


def test_a_template_of_another_architecture_is_named(tmp_path):
    """A template whose structure, shapes or dtypes differ from the saved tree is a
    CheckpointError naming the first leaf that differs."""
    _net, params, *_ = _problem()
    directory = tmp_path / "ckpt"
    checkpoint.save_sharded(directory, params, step=1)
    wider = jaxnn.serial(jaxnn.dense(32), jaxnn.relu(), jaxnn.dense(16), jaxnn.tanh(),
                         jaxnn.dense(9))
    _, wider_params, _ = wider.init(jax.random.key(0), (-1, 16))
    wider_params = jax.tree.map(lambda a: a.astype(jnp.float64), wider_params)
    with pytest.raises(checkpoint.CheckpointError, match=r"shape mismatch at \[4\]\['W'\]: "
                                                         r"expected \(16, 9\), got \(16, 8\)"):
        checkpoint.load_sharded(directory, wider_params)
    with pytest.raises(checkpoint.CheckpointError, match=r"structure differs from the saved one "
                                                         r"at leaf 5: expected \(nothing more\), "
                                                         r"got \[4\]\['b'\]"):
        checkpoint.load_sharded(directory, (*params[:4], {"W": params[4]["W"]}))
    as32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    with pytest.raises(checkpoint.CheckpointError, match="dtype mismatch at"):
        checkpoint.load_sharded(directory, as32)


def test_specs_that_do_not_fit_the_mesh_are_named(tmp_path):
    """A spec naming an axis the mesh lacks, or with more entries than its array's rank."""
    directory = tmp_path / "ckpt"
    tree = {"W": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    checkpoint.save_sharded(directory, tree)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    with pytest.raises(checkpoint.CheckpointError, match="names the mesh axis 'rows'"):
        checkpoint.load_sharded(directory, tree, mesh=mesh, specs={"W": P("rows"), "b": P()})
    with pytest.raises(checkpoint.CheckpointError, match=r"\['b'\] has rank 1, but its spec"):
        checkpoint.load_sharded(directory, tree, mesh=mesh,
                                specs={"W": P(), "b": P("data", "model")})


def test_a_sharded_checkpoint_is_written_once_and_read_back_exactly(tmp_path):
    """Round trip on one device (values, NamedTuple optimizer state); an existing folder is
    refused rather than overwritten; a missing one and an .npz file are named; the .npz format
    stays for small runs."""
    _net, params, *_ = _problem()
    tree = (params, optax.adam(1e-3).init(params))
    directory = tmp_path / "step_0"
    checkpoint.save_sharded(directory, tree, step=0)
    restored = checkpoint.load_sharded(directory, tree)
    chex.assert_trees_all_equal(restored, tree)
    assert type(restored[1][0]) is type(tree[1][0])
    with pytest.raises(checkpoint.CheckpointError, match="exists; save each sharded checkpoint"):
        checkpoint.save_sharded(directory, tree)
    with pytest.raises(checkpoint.CheckpointError, match="no sharded checkpoint here"):
        checkpoint.load_sharded(tmp_path / "nothing", tree)
    with pytest.raises(checkpoint.CheckpointError, match="typed PRNG key"):
        checkpoint.save_sharded(tmp_path / "keys", {"key": jax.random.key(0)})
    checkpoint.save(tmp_path / "small.npz", tree, step=0)
    chex.assert_trees_all_equal(checkpoint.load(tmp_path / "small.npz", tree), tree)



def test_a_damaged_sharded_checkpoint_is_a_checkpoint_error_naming_the_folder(tmp_path):
    """Metadata that is not JSON and JSON of the wrong shape each give one CheckpointError naming
    the folder, not Orbax's own error. (Garbled array data fails inside tensorstore's reads,
    whose callbacks outlive the call: tests/test_cli.py checks that case in a process of its
    own.)"""
    _net, params, *_ = _problem()
    for damage in ("not json", "wrong shape"):
        directory = tmp_path / damage.replace(" ", "_")
        checkpoint.save_sharded(directory, params, step=1)
        metadata = directory / "jaxnn_metadata" / "metadata"  # save_sharded's own JSON
        assert metadata.is_file(), sorted(map(str, directory.rglob("*")))
        metadata.write_text("{not json" if damage == "not json" else "[1, 2]")
        with pytest.raises(checkpoint.CheckpointError, match=str(directory.name)):
            checkpoint.load_sharded(directory, params)

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
