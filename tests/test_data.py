"""Data: generated sets, scikit-learn sets, HDF5 and IDX loaders, splits, standardization."""

import gzip

import chex
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnn
from jaxnn import data

GENERATORS = [data.planar_flower, data.two_moons, data.circles, data.spirals]


@pytest.mark.parametrize("make", GENERATORS, ids=lambda f: f.__name__)
def test_generated_sets_are_deterministic_balanced_and_shaped(make):
    x, y = make(100, seed=3)
    chex.assert_shape(x, (100, 2))
    chex.assert_shape(y, (100, 1))
    assert x.dtype == jnp.float32
    assert y.dtype == jnp.float32
    assert set(np.unique(y).tolist()) == {0.0, 1.0}
    assert int(y.sum()) == 50
    x2, y2 = make(100, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = make(100, seed=4)
    assert not np.array_equal(x, x3)


def test_circles_put_class_1_on_the_inner_circle():
    x, y = data.circles(400, factor=0.4, noise=0.0)
    radius = np.linalg.norm(np.asarray(x), axis=1)
    np.testing.assert_allclose(radius[np.asarray(y)[:, 0] == 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(radius[np.asarray(y)[:, 0] == 1], 0.4, rtol=1e-6)


def test_spiral_arms_are_point_reflections_of_each_other():
    x, _y = data.spirals(200, noise=0.0)
    arm0, arm1 = np.asarray(x[:100]), np.asarray(x[100:])
    np.testing.assert_allclose(arm1, -arm0, atol=1e-6)  # turned by π
    radius = np.linalg.norm(arm0, axis=1)
    assert radius[0] == pytest.approx(0.1)
    assert radius[-1] == pytest.approx(1.0)
    assert np.all(np.diff(radius) > 0)


@pytest.mark.parametrize(("make", "bad"), [(data.circles, {"factor": 1.5}),
                                      (data.spirals, {"turns": 0}), (data.two_moons, {"m": 1})])
def test_generators_reject_bad_arguments_by_name(make, bad):
    with pytest.raises(ValueError, match=make.__name__):
        make(**bad)


def test_builtin_names_and_an_unknown_name_lists_the_choices():
    x, _y = data.load_builtin("moons", seed=2)
    np.testing.assert_array_equal(x, data.two_moons(400, seed=2)[0])
    with pytest.raises(ValueError, match="flower, moons, circles, spirals"):
        data.load_builtin("mnist")


def test_scikit_learn_digits_and_breast_cancer():
    x, y = data.digits()
    chex.assert_shape(x, (1797, 64))
    chex.assert_shape(y, (1797, 1))
    assert y.dtype == jnp.int32
    assert sorted(np.unique(y).tolist()) == list(range(10))
    assert float(x.min()) == 0.0
    assert float(x.max()) == 1.0
    x, y = data.breast_cancer()
    chex.assert_shape(x, (569, 30))
    assert y.dtype == jnp.float32
    assert int(y.sum()) == 357


def test_missing_optional_package_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(ImportError, match=r'digits needs .*pip install "jaxnn\[data\]"'):
        data.digits()


# --- HDF5 ------------------------------------------------------------------------------------


def write_cat_file(path, split, m, seed=0, size=8):
    """A file in the classic layout: uint8 (m, size, size, 3) images, labels of shape (m,)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(m) % 2).astype(np.int64)
    x = rng.integers(0, 200, (m, size, size, 3), dtype=np.uint8)
    x[y == 1, :, :, 0] += 55  # a learnable signal: cats are redder
    with h5py.File(path, "w") as f:
        f[f"{split}_set_x"] = x
        f[f"{split}_set_y"] = y
        f["list_classes"] = np.array([b"non-cat", b"cat"])
    return x, y


def test_h5_loader_flattens_scales_and_shapes_labels(tmp_path):
    raw_x, raw_y = write_cat_file(tmp_path / "train.h5", "train", 6)
    x, y, classes = data.load_h5(tmp_path / "train.h5")
    chex.assert_shape(x, (6, 8 * 8 * 3))
    chex.assert_shape(y, (6, 1))
    np.testing.assert_allclose(x, raw_x.reshape(6, -1) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(y)[:, 0], raw_y)
    assert classes == ["non-cat", "cat"]


def test_h5_loader_accepts_row_labels_of_shape_1_by_m(tmp_path):
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f["test_set_x"] = np.zeros((3, 2, 2, 3), np.uint8)
        f["test_set_y"] = np.array([[0, 1, 1]])
    _, y, classes = data.load_h5(tmp_path / "t.h5")
    np.testing.assert_array_equal(np.asarray(y), [[0], [1], [1]])
    assert classes is None


def test_h5_loader_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(data.DataFileError, match=r"nothing.h5: no such file"):
        data.load_h5(tmp_path / "nothing.h5")
    (tmp_path / "junk.h5").write_bytes(b"this is not HDF5")
    with pytest.raises(data.DataFileError, match=r"junk.h5: not a readable HDF5 file"):
        data.load_h5(tmp_path / "junk.h5")
    write_cat_file(tmp_path / "good.h5", "train", 4)
    blob = (tmp_path / "good.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(data.DataFileError, match=r"cut.h5"):
        data.load_h5(tmp_path / "cut.h5")
    with h5py.File(tmp_path / "layout.h5", "w") as f:
        f["images"] = np.zeros((2, 3))
    with pytest.raises(data.DataFileError, match=r"layout.h5: expected one pair.*found: images"):
        data.load_h5(tmp_path / "layout.h5")
    with h5py.File(tmp_path / "count.h5", "w") as f:
        f["train_set_x"] = np.zeros((4, 2, 2, 3), np.uint8)
        f["train_set_y"] = np.zeros(3)
    with pytest.raises(data.DataFileError, match=r"count.h5: train_set_y has shape \(3,\), "
                       r"expected 4 labels"):
        data.load_h5(tmp_path / "count.h5")


# --- IDX -------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                        (np.int32, 0x0C), (np.float32, 0x0D),
                                        (np.float64, 0x0E)])
@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trips_every_type_raw_and_gzip(tmp_path, dtype, code, compress):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    blob = idx_bytes(array, code)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    path.write_bytes(gzip.compress(blob) if compress else blob)
    loaded = data.load_idx(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.shape == (2, 3, 4)
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize(("blob", "message"), [
    (b"\x00\x00", "too short for an IDX header"),
    (b"\x1f\x00\x08\x01" + b"\x00" * 8, "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX data type 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated header: 3 dimensions need 16 bytes"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", r"truncated: dimensions \(5,\) of uint8 need "
                                                  r"5 data bytes, found 2"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "has trailing bytes"),
    (b"\x1f\x8b\x08\x00garbage", "corrupted or truncated gzip"),
])
def test_idx_errors_name_the_file_and_the_problem(tmp_path, blob, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(blob)
    with pytest.raises(data.DataFileError, match=f"bad-idx: .*{message}"):
        data.load_idx(path)


def test_idx_truncated_gzip_stream_is_named(tmp_path):
    blob = gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8), 0x08))
    (tmp_path / "cut.gz").write_bytes(blob[:-12])
    with pytest.raises(data.DataFileError, match=r"cut.gz: corrupted or truncated gzip"):
        data.load_idx(tmp_path / "cut.gz")
    with pytest.raises(data.DataFileError, match="absent: no such file"):
        data.load_idx(tmp_path / "absent")


def test_mnist_pair_scales_images_and_checks_counts(tmp_path):
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4) * 5
    (tmp_path / "img").write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    (tmp_path / "lab").write_bytes(idx_bytes(np.array([3, 0, 7], np.uint8), 0x08))
    x, y = data.load_mnist(tmp_path / "img", tmp_path / "lab")
    chex.assert_shape(x, (3, 16))
    np.testing.assert_allclose(x, images.reshape(3, 16) / 255.0, rtol=1e-6)
    assert y.dtype == jnp.int32
    assert np.asarray(y)[:, 0].tolist() == [3, 0, 7]
    (tmp_path / "lab2").write_bytes(idx_bytes(np.array([1, 0], np.uint8), 0x08))
    with pytest.raises(data.DataFileError, match=r"has 3 images but .*lab2 has 2 labels"):
        data.load_mnist(tmp_path / "img", tmp_path / "lab2")
    with pytest.raises(data.DataFileError, match="expected a 1-D label file"):
        data.load_mnist(tmp_path / "img", tmp_path / "img")


def _h5_with_labels(path, labels):
    x = np.zeros((len(labels), 2, 2), np.uint8)
    with h5py.File(path, "w") as f:
        f["train_set_x"] = x
        f["train_set_y"] = labels


@pytest.mark.parametrize(("labels", "message"), [
    (np.array([b"cat", b"dog", b"cat"]), r"labels must be class numbers 0, 1, …, got dtype "
                                          r"\|S3 \(convert text labels to class numbers\)"),
    (np.array([-1.0, 1.0, 1.0]), r"labels must be class numbers 0, 1, …, got -1; map −1/\+1 "
                                 r"labels to 0/1 with \(y \+ 1\) / 2"),
    (np.array([0.1, 0.9, 0.9]), r"labels must be whole class numbers 0, 1, …, got 0.1; "
                                r"threshold soft labels first"),
    (np.array([0.0, np.nan, 1.0]), r"labels must be class numbers 0, 1, …, got NaN or inf"),
], ids=["strings", "minus-one-plus-one", "fractional", "nan"])
def test_h5_labels_that_are_not_class_numbers_are_refused_naming_the_fix(tmp_path, labels,
                                                                          message):
    _h5_with_labels(tmp_path / "bad.h5", labels)
    with pytest.raises(data.DataFileError, match="bad.h5: train_set_y: " + message):
        data.load_h5(tmp_path / "bad.h5")


def test_idx_labels_minus_one_plus_one_and_fractions_are_refused(tmp_path):
    (tmp_path / "img").write_bytes(idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08))
    (tmp_path / "pm").write_bytes(idx_bytes(np.array([-1, 1, 1], np.int8), 0x09))
    with pytest.raises(data.DataFileError, match=r"pm: labels .* map −1/\+1 labels to 0/1"):
        data.load_mnist(tmp_path / "img", tmp_path / "pm")
    (tmp_path / "soft").write_bytes(idx_bytes(np.array([0.1, 0.9, 0.9], np.float32), 0x0D))
    with pytest.raises(data.DataFileError, match="soft: labels must be whole class numbers"):
        data.load_mnist(tmp_path / "img", tmp_path / "soft")


def test_an_h5_group_where_a_dataset_is_expected_is_named(tmp_path):
    with h5py.File(tmp_path / "group.h5", "w") as f:
        f.create_group("train_set_x")
        f["train_set_y"] = np.array([0, 1])
    with pytest.raises(data.DataFileError,
                       match=r"group.h5: train_set_x is an HDF5 group, expected a dataset"):
        data.load_h5(tmp_path / "group.h5")


def test_an_idx_header_whose_sizes_overflow_is_named(tmp_path):
    # 65536⁴ = 2⁶⁴ elements: the product wraps to 0 in 64-bit integers
    (tmp_path / "huge").write_bytes(bytes([0, 0, 0x08, 4]) + np.full(4, 65536, ">u4").tobytes())
    with pytest.raises(data.DataFileError, match=r"huge: truncated: dimensions \(65536, 65536, "
                                                 r"65536, 65536\) of uint8 need 1844674407"):
        data.load_idx(tmp_path / "huge")


# --- preparation ------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 60), fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**16))
def test_split_is_a_reproducible_partition(m, fraction, seed):
    x = np.arange(m, dtype=np.float32)[:, None]  # numpy arrays work too (and fast)
    y = x * 10
    n_test = round(fraction * m)
    if n_test in (0, m):
        with pytest.raises(ValueError, match="leaves"):
            data.train_test_split(x, y, test_fraction=fraction, seed=seed)
        return
    x_tr, y_tr, x_te, _y_te = data.train_test_split(x, y, test_fraction=fraction, seed=seed)
    assert x_te.shape[0] == n_test
    together = np.concatenate([x_tr, x_te])[:, 0]
    assert sorted(together.tolist()) == list(range(m))
    np.testing.assert_array_equal(y_tr, x_tr * 10)  # pairs kept
    again = data.train_test_split(x, y, test_fraction=fraction, seed=seed)
    np.testing.assert_array_equal(again[2], x_te)


def test_standardize_uses_the_training_statistics():
    x = jnp.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    z, (mean, std) = data.standardize(x)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    np.testing.assert_allclose(z[:, [0, 2]].std(0), 1, rtol=1e-6)
    np.testing.assert_array_equal(z[:, 1], 0)  # a constant feature is only shifted
    test = jnp.array([[3.0, 6.0, 5.0]])
    z_test, _ = data.standardize(test, (mean, std))
    np.testing.assert_allclose(z_test, (test - mean) / std)
    with pytest.raises(ValueError, match="stats are for 3 features, x has 2"):
        data.standardize(jnp.ones((2, 2)), (mean, std))


def test_one_hot_rows_and_range_errors():
    np.testing.assert_array_equal(data.one_hot(jnp.array([[2], [0], [1]])),
                                  [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert data.one_hot(jnp.array([1, 0]), 4).shape == (2, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got \[0, 3\]"):
        data.one_hot(jnp.array([0, 3]), 3)


def test_batches_in_an_epoch_key_order_are_reproducible(key):
    x = jnp.arange(12.0)[:, None]
    first = [b[0] for b in data.batches(jax.random.fold_in(key, 3), x, x, 5)]
    again = [b[0] for b in data.batches(jax.random.fold_in(key, 3), x, x, 5)]
    chex.assert_trees_all_equal(first, again)
    other = [b[0] for b in data.batches(jax.random.fold_in(key, 4), x, x, 5)]
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))


def test_data_module_is_reachable_from_the_package():
    assert jaxnn.data.circles is data.circles


def test_batches_take_any_integer_batch_size_but_not_a_bool(key):
    x = jnp.arange(10.0).reshape(10, 1)
    sizes = [b[0].shape[0] for b in data.batches(key, x, x, np.int64(4))]
    assert sizes == [4, 4, 2]
    with pytest.raises(ValueError, match="batches: batch_size must be a positive int, got True"):
        list(data.batches(key, x, x, True))


# --- load_file: every format --data reads, unscaled ---------------------------------------------


def _same_set_in_every_format(folder, x, y):
    """``(x, y)`` written as CSV, an .npy pair, two .npz layouts and HDF5; the paths."""
    lines = ["a,b,label"] + [f"{r[0]!r},{r[1]!r},{label}" for r, label in zip(x.tolist(), y)]
    (folder / "set.csv").write_text("\n".join(lines) + "\n")
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    np.savez(folder / "xy.npz", x=x, y=y)
    np.savez(folder / "classic.npz", train_set_x=x, train_set_y=y)
    with h5py.File(folder / "set.h5", "w") as f:
        f["train_set_x"] = x
        f["train_set_y"] = y
    return [folder / "set.csv", f"{folder / 'x.npy'},{folder / 'y.npy'}", folder / "xy.npz",
            folder / "classic.npz", folder / "set.h5"]


def test_load_file_reads_csv_npy_pairs_npz_and_h5_alike_and_unscaled(tmp_path):
    """Every format gives the same features, as stored (values far above 255, not divided),
    and the same labels, (m, 1) class indices."""
    x = np.array([[1.5, 300.0], [-2.0, 1e4], [0.25, 7.0], [3.0, 0.0]])
    y = np.array([0, 2, 1, 2])
    for path in _same_set_in_every_format(tmp_path, x, y):
        got_x, got_y = data.load_file(path)
        np.testing.assert_array_equal(got_x, x)
        assert got_x.dtype == np.float64, path
        np.testing.assert_array_equal(np.asarray(got_y), y[:, None])
        assert got_y.dtype == jnp.int32


def test_load_file_keeps_uint8_pixels_as_stored_and_flattens_images(tmp_path):
    """uint8 images stay uint8 (their dtype says: divide by 255), flattened to (m, h·w·c);
    load_h5 still scales them itself."""
    images = np.arange(2 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 2, 3)
    np.savez(tmp_path / "img.npz", x=images, y=np.array([0, 1]))
    x, _y = data.load_file(tmp_path / "img.npz")
    assert x.dtype == np.uint8
    assert x.shape == (2, 12)
    np.testing.assert_array_equal(x, images.reshape(2, -1))
    with h5py.File(tmp_path / "img.h5", "w") as f:
        f["train_set_x"] = images
        f["train_set_y"] = np.array([0, 1])
    assert data.load_file(tmp_path / "img.h5")[0].dtype == np.uint8
    assert float(data.load_h5(tmp_path / "img.h5")[0].max()) == pytest.approx(23 / 255)


def test_load_file_label_column_by_name_or_index_and_only_for_csv(tmp_path):
    """label_column names the CSV's label column or gives its index; other formats refuse it."""
    (tmp_path / "t.csv").write_text("y,a,b\n1,2.0,3.0\n0,4.0,5.0\n")
    for column in ("y", "0", "-3"):
        x, y = data.load_file(tmp_path / "t.csv", label_column=column)
        np.testing.assert_array_equal(x, [[2.0, 3.0], [4.0, 5.0]])
        np.testing.assert_array_equal(np.asarray(y), [[1.0], [0.0]])
    np.savez(tmp_path / "s.npz", x=np.zeros((2, 2)), y=np.zeros(2))
    with pytest.raises(ValueError, match="label_column is for CSV files"):
        data.load_file(tmp_path / "s.npz", label_column="y")


@pytest.mark.parametrize(("content", "message"), [
    ("a,b,y\n1,x,0\n", "line 2, column 'b': 'x' is not a number"),
    ("a,b,y\n1,2,0.5\n", "labels must be whole class numbers 0, 1, …, got 0.5"),
    ("a,b,y\n1,2,-1\n3,4,1\n", "map −1/+1 labels to 0/1"),
    ("a,b,y\n", "a header row and no examples"),
    ("", "empty: expected a header row"),
    ("label\n1\n", "one column ('label'); expected feature columns and a label column"),
])
def test_load_file_csv_problems_name_the_file_and_the_place(tmp_path, content, message):
    """A CSV file's problems raise DataFileError naming the file, the line or column, and the
    fix (the same label checks as every loader)."""
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(data.DataFileError, match=r"bad.csv") as caught:
        data.load_file(tmp_path / "bad.csv")
    assert message in str(caught.value)


def test_load_file_unknown_formats_and_missing_files_are_named(tmp_path):
    """An unknown extension lists the formats; a missing file is named."""
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(data.DataFileError, match=r"notes.txt: cannot tell the format: give a "
                                                 "CSV file"):
        data.load_file(tmp_path / "notes.txt")
    for missing in ("gone.csv", "gone.npz", "gone.npy,y.npy"):
        with pytest.raises(data.DataFileError, match=r"gone.np[yz]: no such file|gone.csv: no "
                                                     "such file"):
            data.load_file(f"{tmp_path}/{missing}")


def test_batches_take_pytree_inputs_leaf_by_leaf(key):
    """data.batches cuts (x, mask) and (x, lengths) inputs leaf by leaf with the same rows,
    and names leaves whose leading sizes differ."""
    x = jnp.arange(10 * 4 * 2, dtype=jnp.float32).reshape(10, 4, 2)
    mask = jnp.arange(10 * 4).reshape(10, 4) % 3 > 0
    y = jnp.arange(10)[:, None]
    seen = []
    for (xb, mb), yb in data.batches(key, (x, mask), y, 4):
        rows = np.asarray(yb)[:, 0]
        np.testing.assert_array_equal(np.asarray(xb), np.asarray(x)[rows])
        np.testing.assert_array_equal(np.asarray(mb), np.asarray(mask)[rows])
        seen += rows.tolist()
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match=r"batches: every leaf of x holds the examples on its "
                                         r"leading axis, but x\[0\] has 10 and x\[1\] has 9"):
        next(data.batches(key, (x, mask[:9]), y, 4))
    with pytest.raises(ValueError, match="batches: x has 10 examples but y has 9"):
        next(data.batches(key, (x, mask), y[:9], 4))
