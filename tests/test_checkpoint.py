"""Checkpoints: exact round trips of any pytree, no pickle, atomic writes, named mismatches."""

import os
import pathlib
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnn
from jaxnn import checkpoint


def _training_tree(key):
    net = jaxnn.serial(jaxnn.dense(4), jaxnn.relu(), jaxnn.dense(1), jaxnn.sigmoid())
    _, params, state = net.init(key, (-1, 3))
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = opt.init(params)
    # one real update so the optimizer state holds non-trivial values
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = opt.update(grads, opt_state, params)
    return {"params": params, "state": state, "opt_state": opt_state,
            "extras": {"rng": jax.random.key(7), "half": jnp.arange(3, dtype=jnp.bfloat16),
                       "count": jnp.int32(5)}}


def test_round_trip_restores_structure_values_and_dtypes_exactly(tmp_path, key):
    tree = _training_tree(key)
    path = tmp_path / "ckpt.npz"
    checkpoint.save(path, tree, step=12, metadata={"note": "hello"})
    template = _training_tree(jax.random.fold_in(key, 1))  # other values, same structure
    restored = checkpoint.load(path, template)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    assert isinstance(restored["opt_state"][1][0], optax.ScaleByAdamState)  # NamedTuples back
    plain = lambda t: jax.tree.map(  # noqa: E731
        lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
        t)
    chex.assert_trees_all_equal(plain(restored), plain(tree))
    chex.assert_trees_all_equal_dtypes(plain(restored), plain(tree))
    assert jax.random.key_impl(restored["extras"]["rng"]) == jax.random.key_impl(
        tree["extras"]["rng"])
    assert checkpoint.load_metadata(path) == {"step": 12, "note": "hello"}


def test_file_is_an_npz_keyed_by_tree_paths_readable_without_pickle(tmp_path, key):
    tree = {"params": ({"W": jnp.ones((2, 3)), "b": jnp.zeros(3)}, ())}
    checkpoint.save(tmp_path / "c.npz", tree)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(["['params'][0]['W']", "['params'][0]['b']",
                                            "__metadata__"])
        np.testing.assert_array_equal(npz["['params'][0]['W']"], np.ones((2, 3)))


def test_no_pickle_anywhere_in_the_module():
    source = pathlib.Path(checkpoint.__file__).read_text()
    assert "import pickle" not in source
    assert "allow_pickle=True" not in source


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: {**t, "b": jnp.zeros(4, jnp.float32)},
     r"shape mismatch at \['b'\]: expected \(4,\), got \(3,\)"),
    (lambda t: {**t, "b": jnp.zeros(3, jnp.int32)},
     r"dtype mismatch at \['b'\]: expected int32, got float32"),
    (lambda t: {**t, "extra": jnp.zeros(1)},
     r"structure mismatch at \['extra'\]: the template has this leaf"),
    (lambda t: {"W": t["W"]}, r"structure mismatch at \['b'\]: the checkpoint has this leaf"),
])
def test_load_names_the_first_mismatch_with_expected_and_got(tmp_path, change, message):
    tree = {"W": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    checkpoint.save(tmp_path / "c.npz", tree)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(tmp_path / "c.npz", change(tree))


def test_corrupted_truncated_and_foreign_files_are_named(tmp_path):
    tree = {"W": jnp.arange(1000.0)}
    good = tmp_path / "good.npz"
    checkpoint.save(good, tree)
    blob = good.read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint at all")
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0xFF  # inside W's data: the zip's CRC catches it
    (tmp_path / "flipped.npz").write_bytes(bytes(flipped))
    np.savez(tmp_path / "foreign.npz", W=np.arange(1000.0))
    for name in ("cut", "junk", "flipped"):
        with pytest.raises(checkpoint.CheckpointError, match=f"{name}.npz: not a readable "
                           f"checkpoint"):
            checkpoint.load(tmp_path / f"{name}.npz", tree)
    with pytest.raises(checkpoint.CheckpointError, match=r"foreign.npz: not a jaxnn checkpoint"):
        checkpoint.load(tmp_path / "foreign.npz", tree)
    with pytest.raises(checkpoint.CheckpointError, match=r"absent.npz: no such checkpoint"):
        checkpoint.load(tmp_path / "absent.npz", tree)



def _with_metadata(path, meta_json: str):
    """Rewrites the checkpoint at ``path`` with its arrays and ``meta_json`` as the metadata."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["__metadata__"] = np.frombuffer(meta_json.encode(), np.uint8)
    np.savez(path, **arrays)


_LEAVES = '"leaves": {"[\'W\']": {"dtype": "float32", "shape": [2]}}'


@pytest.mark.parametrize(("meta", "message"), [
    ("[1, 2]", r"expected a JSON object, got list \[1, 2\]"),
    ('"a string"', "expected a JSON object, got str"),
    ("null", "expected a JSON object, got NoneType"),
    ("{}", "no 'format_version' entry"),
    ('{"format_version": 1}', "no 'step' entry"),
    ('{"format_version": 1, "step": 3, "user": {}}', "no 'leaves' entry"),
    ('{"format_version": 1, "step": 3, ' + _LEAVES + "}", "no 'user' entry"),
    ('{"format_version": 1, "step": "3", "user": {}, ' + _LEAVES + "}",
     "'step' must be an integer or null"),
    ('{"format_version": 1, "step": 3, "user": [], ' + _LEAVES + "}",
     "'user' must be a JSON object, got list"),
    ('{"format_version": 1, "step": 3, "user": {}, "leaves": [1]}',
     "'leaves' must be a JSON object, got list"),
    ('{"format_version": 1, "step": 3, "user": {}, "leaves": {}}',
     r"the record of entry \[\'W\'\] must be"),
    ('{"format_version": 1, "step": 3, "user": {}, "leaves": {"[\'W\']": [2]}}',
     r"the record of entry \[\'W\'\] must be"),
    ('{"format_version": 1, "step": 3, "user": {}, "leaves": {"[\'W\']": '
     '{"dtype": "float32", "shape": "2"}}}', r"the record of entry \[\'W\'\] must be"),
])
def test_valid_json_metadata_of_the_wrong_shape_is_a_checkpoint_error(tmp_path, meta, message):
    """Issue 20 item 12: metadata that parses as JSON but is not what ``save`` writes (a list, a
    string, null, a dict lacking an entry or with an entry of the wrong type) is a
    ``CheckpointError`` naming the file, from ``load`` and ``load_metadata`` alike (it was
    ``AttributeError: 'list' object has no attribute 'get'``)."""
    tree = {"W": jnp.ones(2, jnp.float32)}
    path = tmp_path / "odd.npz"
    checkpoint.save(path, tree, step=3)
    _with_metadata(path, meta)
    for read in (lambda: checkpoint.load(path, tree), lambda: checkpoint.load_metadata(path)):
        with pytest.raises(checkpoint.CheckpointError,
                           match=rf"odd\.npz: corrupted metadata: {message}"):
            read()


def test_rewritten_valid_metadata_still_loads(tmp_path):
    """The helper of the test above changes only the metadata: the file's own metadata, written
    back, loads as before."""
    tree = {"W": jnp.ones(2, jnp.float32)}
    path = tmp_path / "same.npz"
    checkpoint.save(path, tree, step=3, metadata={"note": "kept"})
    with np.load(path, allow_pickle=False) as npz:
        meta = npz["__metadata__"].tobytes().decode()
    _with_metadata(path, meta)
    chex.assert_trees_all_equal(checkpoint.load(path, tree), tree)
    assert checkpoint.load_metadata(path) == {"step": 3, "note": "kept"}

def test_a_failed_write_leaves_the_previous_checkpoint_and_no_temporary_file(tmp_path,
                                                                             monkeypatch):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"W": jnp.ones(3)}, step=1)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"W": jnp.zeros(3)}, step=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["c.npz"]
    assert checkpoint.load_metadata(path)["step"] == 1
    np.testing.assert_array_equal(checkpoint.load(path, {"W": jnp.zeros(3)})["W"], np.ones(3))


def test_save_goes_through_a_temporary_file_renamed_over_the_destination(tmp_path,
                                                                         monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.path.dirname(src), os.path.basename(src), zipfile.is_zipfile(src)))
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", spy)
    checkpoint.save(tmp_path / "c.npz", {"W": jnp.ones(2)})
    (folder, name, complete), = seen
    assert folder == str(tmp_path)
    assert name != "c.npz"
    assert complete


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON-serializable"):
        checkpoint.save(tmp_path / "c.npz", {"W": jnp.ones(1)}, metadata={"x": object()})
    assert not (tmp_path / "c.npz").exists()


def test_a_checkpoint_gets_the_mode_of_an_ordinary_new_file(tmp_path):
    checkpoint.save(tmp_path / "c.npz", {"W": jnp.ones(1)})
    (tmp_path / "plain").write_bytes(b"")
    assert (tmp_path / "c.npz").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_overwriting_a_checkpoint_keeps_its_file_mode(tmp_path):
    path = tmp_path / "c.npz"
    checkpoint.save(path, {"W": jnp.ones(1)}, step=1)
    os.chmod(path, 0o600)
    checkpoint.save(path, {"W": jnp.ones(1)}, step=2)
    assert path.stat().st_mode & 0o777 == 0o600
    os.chmod(path, 0o640)
    checkpoint.save(path, {"W": jnp.ones(1)}, step=3)
    assert path.stat().st_mode & 0o777 == 0o640
