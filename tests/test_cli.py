"""The ``jaxnn`` command, run as a subprocess the way users run it."""

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn import checkpoint, cli, data
from jaxnn.cli import common as cli_common
from jaxnn.cli import gradcheck as cli_gradcheck
from jaxnn.cli import train as cli_train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def jaxnn_cmd(cwd, *args, timeout=300):
    """``python -m jaxnn ARGS`` in ``cwd``; returns the completed process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "jaxnn", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def run_main(monkeypatch, cwd, *args):
    """``jaxnn ARGS`` in this process (faster than a subprocess), in folder ``cwd``."""
    monkeypatch.chdir(cwd)
    return cli.main([str(a) for a in args])


def _load_params(folder, sizes, seed=0, activation="relu", dropout=0.0):
    """The params saved in ``folder``'s checkpoint, read against a freshly built template."""
    meta = checkpoint.load_metadata(folder / "checkpoint.npz")
    model = cli_common.build_model(sizes, activation, meta["config"]["dropout"])
    _, params, state = model.init(jax.random.key(seed), (-1, sizes[0]))
    opt = cli_common.make_optimizer(meta["config"]["optimizer"], meta["config"]["lr"], model,
                             meta["config"]["l2"])
    template = {"params": params, "state": state, "opt_state": opt.init(params),
                "costs": np.zeros(meta["step"], np.float32)}
    return checkpoint.load(folder / "checkpoint.npz", template), meta


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("train")
    proc = jaxnn_cmd(cwd, "train", "--steps", 60, "--out", "run", "--print-every", 20)
    return cwd, proc


def test_train_on_built_in_data_prints_cost_and_accuracy(short_run):
    _, proc = short_run
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "data: flower, 320 training and 80 test examples, 2 features, 2 classes" in out
    assert "cost after step 0:" in out
    assert "cost after step 40:" in out
    assert "cost after step 59:" in out
    assert "train accuracy:" in out
    assert "test accuracy:" in out
    assert "train:" in proc.stderr  # the progress bar


def test_train_writes_both_pictures_metrics_and_a_checkpoint(short_run):
    cwd, _proc = short_run
    run = cwd / "run"
    for picture in ("cost.png", "decision_boundary.png"):
        assert (run / picture).read_bytes()[:8] == PNG_MAGIC
        assert (run / picture).stat().st_size > 5000  # a drawn figure, not an empty canvas
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 60
    assert 0 <= metrics["test_accuracy"] <= 1
    restored, meta = _load_params(run, [2, 20, 7, 5, 1])
    assert meta["step"] == 60
    assert restored["costs"].shape == (60,)
    assert meta["config"]["layers"] == "2,20,7,5,1"
    assert meta["config"]["dataset"] is None
    # the saved parameters are the trained ones: they reproduce the reported accuracy
    ds = cli_train.load_dataset(None, None, None, seed=0)
    model = cli_common.build_model([2, 20, 7, 5, 1])
    acc = jaxnn.accuracy(jaxnn.predict(model, restored["params"], ds.x_test), ds.y_test)
    assert float(acc) == pytest.approx(metrics["test_accuracy"])
    # and the costs went down
    assert restored["costs"][-1] < restored["costs"][0]


@pytest.mark.slow
def test_the_readme_main_job_reaches_90_percent_test_accuracy(tmp_path):
    proc = jaxnn_cmd(tmp_path, "train")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "jaxnn-out" / "metrics.json").read_text())
    assert metrics["step"] == cli_train.DEFAULT_STEPS
    assert metrics["train_accuracy"] >= 0.9
    assert metrics["test_accuracy"] >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--batch-size", "64", "--optimizer", "adam"],
                                   ["--dropout", "0.2", "--batch-size", "100", "--l2", "0.01"]],
                         ids=["minibatch-adam", "dropout-l2"])
def test_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, monkeypatch, capsys,
                                                           extra):
    sizes = [2, 8, 1]
    common = ["--layers", "2,8,1", "--seed", "3", "--no-progress", *extra]
    steps_per_epoch = 320 // int(extra[extra.index("--batch-size") + 1])
    assert run_main(monkeypatch, tmp_path, "train", *common, "--epochs", 4, "--out",
                    "whole") == 0
    assert run_main(monkeypatch, tmp_path, "train", *common, "--epochs", 2, "--out",
                    "split") == 0
    capsys.readouterr()
    # 2 epochs, then resumed up to 4: the same batches, dropout masks and optimizer state
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "split", "--epochs", 4,
                    "--no-progress") == 0
    assert f"steps {2 * steps_per_epoch}→{4 * steps_per_epoch}" in capsys.readouterr().out
    dropout = 0.2 if "--dropout" in extra else 0.0
    a, meta_a = _load_params(tmp_path / "whole", sizes, seed=3, dropout=dropout)
    b, meta_b = _load_params(tmp_path / "split", sizes, seed=3, dropout=dropout)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta_a["step"] == meta_b["step"] == len(b["costs"]) == 4 * steps_per_epoch


def test_resume_refuses_changed_options(short_run, tmp_path, monkeypatch, capsys):
    cwd, _ = short_run
    assert run_main(monkeypatch, cwd, "train", "--resume", "run", "--steps", 80, "--lr", "0.9",
                    "--out", tmp_path) == 1
    assert "--lr 0.9 differs from the resumed run's 0.2" in capsys.readouterr().err
    assert run_main(monkeypatch, cwd, "train", "--resume", "run", "--out", tmp_path) == 1
    assert "say how far to train with --steps N" in capsys.readouterr().err
    assert run_main(monkeypatch, cwd, "train", "--resume", "run", "--steps", 60, "--out",
                    tmp_path) == 1
    assert "is at step 60; ask for more with --steps N (N > 60)" in capsys.readouterr().err


def test_a_corrupted_checkpoint_gives_a_clear_message_and_exit_1(short_run, tmp_path):
    cwd, _ = short_run
    broken = tmp_path / "broken"
    broken.mkdir()
    blob = (cwd / "run" / "checkpoint.npz").read_bytes()
    (broken / "checkpoint.npz").write_bytes(blob[: len(blob) // 2])
    proc = jaxnn_cmd(tmp_path, "train", "--resume", "broken", "--steps", 100)
    assert proc.returncode == 1
    assert "broken/checkpoint.npz: not a readable checkpoint (corrupted or truncated" in (
        proc.stderr)
    assert "Traceback" not in proc.stderr


def test_train_on_an_hdf5_cat_file_pair(tmp_path):
    rng = np.random.default_rng(0)

    def write(name, split, m):
        y = (np.arange(m) % 2).astype(np.int64)
        x = rng.integers(0, 160, (m, 64, 64, 3), dtype=np.uint8)
        x[y == 1, :, :, 0] += 90  # cats are redder: a learnable signal
        with h5py.File(tmp_path / name, "w") as f:
            f[f"{split}_set_x"] = x
            f[f"{split}_set_y"] = y
            f["list_classes"] = np.array([b"non-cat", b"cat"])

    write("train.h5", "train", 24)
    write("test.h5", "test", 10)
    proc = jaxnn_cmd(tmp_path, "train", "--data", "train.h5", "--test-data", "test.h5",
                     "--layers", "12288,20,7,5,1", "--optimizer", "adam", "--lr", "0.001",
                     "--steps", 25, "--no-progress", "--out", "cats")
    assert proc.returncode == 0, proc.stderr
    assert "24 training and 10 test examples, 12288 features, 2 classes" in proc.stdout
    metrics = json.loads((tmp_path / "cats" / "metrics.json").read_text())
    assert metrics["train_accuracy"] == 1.0
    assert metrics["test_accuracy"] >= 0.8
    assert (tmp_path / "cats" / "cost.png").exists()
    assert not (tmp_path / "cats" / "decision_boundary.png").exists()  # not 2-D data


def test_train_on_mnist_format_idx_files_with_softmax_output(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    labels = np.arange(60) % 3
    images = rng.integers(0, 100, (60, 4, 4), dtype=np.uint8)
    images[np.arange(60), labels, labels] = 255  # class k lights pixel (k, k)

    def idx(array):
        return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + (
            array.astype(np.uint8).tobytes())

    import gzip
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx(images)))
    (tmp_path / "lab").write_bytes(idx(labels))
    assert run_main(monkeypatch, tmp_path, "train", "--data", "img.gz,lab", "--optimizer",
                    "adam", "--lr", "0.05", "--steps", 40, "--no-progress") == 0
    out = capsys.readouterr().out
    assert "16 features, 3 classes" in out
    assert "16,20,7,5,3" in out
    assert "softmax output, softmax_cross_entropy" in out
    metrics = json.loads((tmp_path / "jaxnn-out" / "metrics.json").read_text())
    assert metrics["train_accuracy"] >= 0.9
    # the data paths are kept absolute: the run resumes from another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_main(monkeypatch, elsewhere, "train", "--resume", tmp_path / "jaxnn-out",
                    "--steps", 45, "--no-progress") == 0
    assert "data: img.gz,lab" in capsys.readouterr().out
    assert checkpoint.load_metadata(tmp_path / "jaxnn-out" / "checkpoint.npz")["step"] == 45
    # data that changed under a saved run are refused
    (tmp_path / "img.gz").write_bytes(gzip.compress(idx(images[:30])))
    (tmp_path / "lab").write_bytes(idx(labels[:30]))
    assert run_main(monkeypatch, elsewhere, "train", "--resume", tmp_path / "jaxnn-out",
                    "--steps", 50) == 1
    assert "trained on 48 examples, the data now have 24: the data changed" in (
        capsys.readouterr().err)


# --- users' own files: formats and scaling ----------------------------------------------------


def _sklearn_set(name):
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    return bunch.data, bunch.target


def _write(folder, fmt, x, y, names=None):
    """``(x, y)`` written as ``fmt``; returns the ``--data`` argument."""
    if fmt == "h5":
        _h5(folder / "set.h5", x, y)
        return "set.h5"
    if fmt == "csv":
        names = names or [f"f{j}" for j in range(x.shape[1])]
        lines = [",".join([*names, "label"])]
        lines += [",".join([*map(repr, row.tolist()), str(label)]) for row, label in zip(x, y)]
        (folder / "set.csv").write_text("\n".join(lines) + "\n")
        return "set.csv"
    if fmt == "npy":
        np.save(folder / "x.npy", x)
        np.save(folder / "y.npy", y)
        return "x.npy,y.npy"
    np.savez(folder / "set.npz", train_set_x=x, train_set_y=y)
    return "set.npz"


@pytest.mark.parametrize(("name", "fmt"), [("iris", "h5"), ("iris", "csv"),
                                       ("breast_cancer", "npz")])
def test_raw_floating_features_are_standardized_and_train_well(tmp_path, monkeypatch, capsys,
                                                               name, fmt):
    """scikit-learn's raw iris and breast-cancer features, given as files with the default
    options: standardized with the training set's statistics, said on the run's second line,
    and trained to >= 0.9 test accuracy (divided by 255, iris ended at 0.167, and breast
    cancer's values above 255 were refused)."""
    x, y = _sklearn_set(name)
    data_arg = _write(tmp_path, fmt, x, y)
    assert run_main(monkeypatch, tmp_path, "train", "--data", data_arg, "--no-progress") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("scaling: standardized with the training set's mean and standard "
                        "deviation, per feature (chosen for float64 features; --scale "
                        "none|255|standardize to choose)")
    metrics = json.loads((tmp_path / "jaxnn-out" / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.9
    assert metrics["config"]["scale"] == "standardize"
    # the statistics are the training split's, saved with the run
    x_train = data.train_test_split(jnp.asarray(x), jnp.asarray(y)[:, None], seed=0)[0]
    saved = checkpoint.load_metadata(tmp_path / "jaxnn-out" / "checkpoint.npz")["scaling"]
    np.testing.assert_allclose(saved["mean"], np.mean(np.asarray(x_train), 0), rtol=1e-5)
    np.testing.assert_allclose(saved["std"], np.std(np.asarray(x_train), 0), rtol=1e-4)


def _plan(cwd, monkeypatch, *args):
    monkeypatch.chdir(cwd)
    return cli_train._plan_run(cli.build_parser().parse_args(["train", *map(str, args)]))


def test_the_test_data_and_a_resumed_run_use_the_training_statistics(tmp_path, monkeypatch):
    """The test file is standardized with the training file's mean and deviation (not its
    own), and a resumed run takes the statistics saved in the checkpoint, not recomputed."""
    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 10.0, (40, 3))
    y = (x[:, 0] > 50).astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x[:30], y=y[:30])
    np.savez(tmp_path / "test.npz", x=x[30:] + 100.0, y=y[30:])
    plan = _plan(tmp_path, monkeypatch, "--data", "train.npz", "--test-data", "test.npz")
    mean, std = x[:30].mean(0), x[:30].std(0)
    np.testing.assert_allclose(plan.data.x_test, (x[30:] + 100.0 - mean) / std, rtol=1e-5)
    assert float(jnp.mean(plan.data.x_test)) > 5  # shifted: the training statistics
    assert run_main(monkeypatch, tmp_path, "train", "--data", "train.npz", "--test-data",
                    "test.npz", "--steps", 3, "--no-progress") == 0
    # a checkpoint whose statistics differ from the data's: the resumed run uses the saved ones
    path = tmp_path / "jaxnn-out" / "checkpoint.npz"
    meta = checkpoint.load_metadata(path)
    tree = _load_params(tmp_path / "jaxnn-out", [3, 20, 7, 5, 1])[0]
    meta["scaling"]["mean"] = [0.0, 0.0, 0.0]
    checkpoint.save(path, tree, step=meta["step"],
                    metadata={k: v for k, v in meta.items() if k not in ("step", "format",
                                                                         "leaves")})
    monkeypatch.setattr(cli_train.Scaling, "choose", None)  # never recomputed on resume
    plan = _plan(tmp_path, monkeypatch, "--resume", "jaxnn-out", "--steps", 6)
    np.testing.assert_allclose(plan.data.x_train, x[:30] / std, rtol=1e-5)


@pytest.mark.parametrize(("scale", "dtype", "first", "line"), [
    ("none", np.float64, 7.0, "scaling: none, the features as stored (--scale none)"),
    ("255", np.float64, 7.0 / 255, "scaling: divided by 255 (pixels 0…255 → [0, 1]) "
                                   "(--scale 255)"),
    (None, np.uint8, 7.0 / 255, "scaling: divided by 255 (pixels 0…255 → [0, 1]) (chosen "
                                "for uint8 features; --scale none|255|standardize to choose)"),
    ("standardize", np.uint8, None, "scaling: standardized with the training set's mean and "
                                    "standard deviation, per feature (--scale standardize)"),
])
def test_scale_chooses_the_scaling_and_the_first_lines_say_it(tmp_path, monkeypatch, capsys,
                                                              scale, dtype, first, line):
    """--scale none|255|standardize is applied as asked; without it uint8 pixels are divided
    by 255 and other features standardized; the second line of the run says which."""
    x = np.arange(7, 7 + 40 * 2).reshape(40, 2).astype(dtype)
    y = np.arange(40) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["--data", "x.npy,y.npy", "--layers", "2,3,1", "--steps", 2, "--no-progress"]
    args += ["--scale", scale] if scale else []
    assert run_main(monkeypatch, tmp_path, "train", *args) == 0
    assert capsys.readouterr().out.splitlines()[1] == line
    plan = _plan(tmp_path, monkeypatch, "--data", "x.npy,y.npy", *(["--scale", scale]
                                                                   if scale else []))
    order = np.argsort(np.asarray(plan.data.raw_train)[:, 0])
    if first is not None:
        assert float(plan.data.x_train[order[0], 0]) == pytest.approx(first)
    else:
        assert float(jnp.mean(plan.data.x_train)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("fmt", ["csv", "npy", "npz"])
def test_train_on_csv_and_numpy_files(tmp_path, monkeypatch, capsys, fmt):
    """--data takes a CSV file with a header row, an x.npy,y.npy pair and an .npz archive, and
    the data line names them."""
    x, y = _sklearn_set("iris")
    data_arg = _write(tmp_path, fmt, x, y)
    assert run_main(monkeypatch, tmp_path, "train", "--data", data_arg, "--steps", 5,
                    "--no-progress") == 0
    out = capsys.readouterr().out
    assert f"data: {data_arg}, 120 training and 30 test examples, 4 features, 3 classes" in out


def test_the_label_column_is_chosen_by_name_or_index(tmp_path, monkeypatch, capsys):
    """--label-column picks the CSV's label column by name or index (default: the last)."""
    x, y = _sklearn_set("iris")
    rows = ["species,a,b,c,d"] + [",".join([str(label), *map(repr, row.tolist())])
                                  for row, label in zip(x, y)]
    (tmp_path / "first.csv").write_text("\n".join(rows) + "\n")
    for column in ("species", "0", "-5"):
        assert run_main(monkeypatch, tmp_path, "train", "--data", "first.csv", "--steps", 2,
                        "--label-column", column, "--no-progress") == 0
        assert "4 features, 3 classes" in capsys.readouterr().out


@pytest.mark.parametrize(("case", "files", "args", "message"), [
    ("csv-text-labels", {"t.csv": "a,b,kind\n1,2,setosa\n3,4,versicolor\n"}, ["t.csv"],
     "t.csv: column 'kind': labels must be class numbers 0, 1, …, got 'setosa' (convert text "
     "labels to class numbers)"),
    ("csv-missing-value", {"m.csv": "a,b,y\n1,2,0\n3,,1\n"}, ["m.csv"],
     "m.csv: line 3, column 'b': empty is not a number; fill in or drop missing values first"),
    ("csv-nan", {"n.csv": "a,b,y\n1,2,0\n3,nan,1\n"}, ["n.csv"],
     "n.csv: features: feature 1 of example 1 is nan"),
    ("csv-no-header", {"h.csv": "1,2,0\n3,4,1\n"}, ["h.csv"],
     "h.csv: the first line holds numbers, expected a header row of column names"),
    ("csv-ragged", {"r.csv": "a,b,y\n1,2,0\n3,1\n"}, ["r.csv"],
     "r.csv: line 3 has 2 fields, the header has 3"),
    ("csv-unknown-column", {"u.csv": "a,b,y\n1,2,0\n"}, ["u.csv", "--label-column", "kind"],
     "u.csv: no column 'kind' for the labels; the header has 'a', 'b', 'y'"),
    ("label-column-not-csv", {}, ["x.npy,y.npy", "--label-column", "y"],
     "--label-column is for CSV files; --data "),
    ("npy-sizes", {"x.npy": np.zeros((6, 2)), "y.npy": np.zeros(5)}, ["x.npy,y.npy"],
     "x.npy has 6 examples but"),
    ("npy-alone", {"x.npy": np.zeros((6, 2))}, ["x.npy"],
     "x.npy: a .npy file holds one array: give the features and the labels as a pair "
     "x.npy,y.npy"),
    ("npy-objects", {"x.npy": np.array([{}, {}], dtype=object), "y.npy": np.zeros(2)},
     ["x.npy,y.npy"], "x.npy: holds Python objects (a pickled array), which jaxnn does not load"),
    ("npz-names", {"a.npz": {"features": np.zeros((6, 2)), "labels": np.zeros(6)}}, ["a.npz"],
     "a.npz: expected one pair of arrays x/y, train_set_x/train_set_y or test_set_x/"
     "test_set_y, found: features, labels"),
    ("npz-one-hot", {"o.npz": {"x": np.zeros((6, 2)), "y": np.eye(3)[[0, 1, 2, 0, 1, 2]]}},
     ["o.npz"], "o.npz: y: expected one class number per example, shape (m,) or (m, 1), got "
                "(6, 3) (one-hot rows: y.argmax(1))"),
    ("npz-inf", {"i.npz": {"x": np.array([[1.0], [np.inf]] * 3), "y": np.zeros(6)}}, ["i.npz"],
     "i.npz: x: feature 0 of example 1 is inf (3 non-finite values)"),
])
def test_csv_and_numpy_files_with_problems_get_one_line_and_exit_1(
        tmp_path, monkeypatch, capsys, case, files, args, message):
    """Each problem of a CSV or NumPy file gets one line naming the file, the place and the
    fix, and exit status 1 before training."""
    for name, content in files.items():
        if isinstance(content, str):
            (tmp_path / name).write_text(content)
        elif isinstance(content, dict):
            np.savez(tmp_path / name, **content)
        else:
            np.save(tmp_path / name, content, allow_pickle=True)
    assert run_main(monkeypatch, tmp_path, "train", "--steps", 1, "--data", *args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(("args", "message"), [
    (["--activation", "swish"], "invalid choice: 'swish' (choose from 'relu', 'tanh'"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop' (choose from 'sgd', 'momentum', "
                                 "'adam')"),
    (["--dataset", "mnist"], "invalid choice: 'mnist' (choose from 'flower', 'moons'"),
])
def test_unknown_names_list_the_valid_choices(tmp_path, monkeypatch, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        run_main(monkeypatch, tmp_path, "train", *args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--layers", "3,4,1"], "--layers starts with 3 inputs but the data have 2 features"),
    (["--layers", "2,4,3"], "--layers ends with 3 outputs but the data have 2 classes: end "
                            "with 1"),
    (["--layers", "2,x,1"], "--layers: expected comma-separated positive integers"),
    (["--data", "missing.h5"], "missing.h5: no such file"),
    (["--data", "notes.txt"], "notes.txt: cannot tell the format: give a CSV file (.csv, a "
                              "header row), NumPy arrays (x.npy,y.npy or .npz), an HDF5 file"),
])
def test_bad_options_and_files_give_a_clear_error(tmp_path, monkeypatch, capsys, args,
                                                  message):
    assert run_main(monkeypatch, tmp_path, "train", "--steps", 1, *args) == 1
    assert message in capsys.readouterr().err


# --- gradcheck --------------------------------------------------------------------------------


def test_gradcheck_of_chosen_layers_exits_0_and_prints_the_table(tmp_path):
    proc = jaxnn_cmd(tmp_path, "gradcheck", "--only", "dense,binary_cross_entropy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["layer", "parameter", "rel.", "err", "vs", "jax.grad", "rel.",
                                "err", "vs", "finite", "diff.", "worst", "entry"]
    rows = [line.split() for line in lines[2:] if line.strip() and ":" not in line]
    assert [(r[0], r[1], r[-1]) for r in rows] == [
        ("dense(3)", "W", "pass"), ("dense(3)", "b", "pass"), ("dense(3)", "input", "pass"),
        ("binary_cross_entropy", "prediction", "pass")]
    assert "passed" in lines[-1]


@pytest.mark.slow
def test_gradcheck_of_every_built_in_layer_and_loss_exits_0(tmp_path):
    proc = jaxnn_cmd(tmp_path, "gradcheck", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exported = (set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)) - {"Loss", "fuse"}
    assert "every built-in layer and loss" in proc.stdout
    assert "FAIL" not in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.endswith("pass")]) >= len(
        exported)


def test_every_exported_layer_and_loss_has_a_default_check():
    table = cli_gradcheck.gradcheck_table()
    exported = ((set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__))
                - cli_gradcheck.NOT_LAYERS_OR_LOSSES)
    assert len(table) == len(exported)


def test_an_exported_layer_without_a_default_check_fails_loudly():
    with pytest.raises(cli.CommandError, match="no default gradient-check configuration for "
                       "the exported brand_new_layer"):
        cli_gradcheck.gradcheck_table(["dense", "brand_new_layer"], [])


def _wrong_relu():
    relu = jaxnn.relu()
    return relu._replace(backward=lambda p, r, dy: ((), 2.0 * dy * (r > 0)))


def test_gradcheck_exits_1_naming_a_layer_with_a_wrong_backward(monkeypatch, capsys):
    layer_checks = cli_gradcheck._default_layer_checks()
    layer_checks["relu"] = lambda: jaxnn.gradcheck.LayerCase(_wrong_relu, (4, 5), "relu (wrong)",
                                                             inputs="away_from_zero")
    real_table = cli_gradcheck.gradcheck_table
    monkeypatch.setattr(cli_gradcheck, "gradcheck_table", lambda *a, **k: real_table(
        ["identity", "relu"], [], layer_checks=layer_checks))
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAILED in 1: relu (wrong)" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("relu (wrong)")] == [
        "FAIL"]


@pytest.mark.slow
def test_gradcheck_of_a_model_given_by_flags():
    report = cli_gradcheck._gradcheck_model(cli.build_parser().parse_args(
        ["gradcheck", "--layers", "3,4,2", "--activation", "tanh"]))
    assert report.passed
    names = {c.layer for c in report.comparisons}
    assert {"serial/0:dense", "serial/2:dense", "softmax_cross_entropy"} <= names


# --- summary, bench, entry points ------------------------------------------------------------


def test_console_script_is_declared():
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["jaxnn"] == "jaxnn.cli:main"


def test_build_model_is_the_classic_network():
    model = cli_common.build_model([2, 4, 3, 1], "tanh")
    assert [layer.name for layer in model.sublayers] == ["dense", "tanh", "dense", "tanh",
                                                         "dense", "sigmoid"]
    assert [layer.name for layer in cli_common.build_model([5, 3], "relu").sublayers] == ["dense"]
    x = jnp.ones((2, 2))
    _, params, _ = model.init(jax.random.key(0), (-1, 2))
    assert jaxnn.predict(model, params, x).shape == (2, 1)


def test_every_command_runs_from_an_installed_package():
    """The commands are train, gradcheck and summary, and none reads a file outside the
    package: ``jaxnn bench`` ran ``../benchmarks/train_step.py``, which a wheel does not hold,
    so the benchmarks stay scripts of a source checkout."""
    commands = cli.build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "gradcheck", "summary"}
    package = Path(cli.__file__).parent
    for module in package.glob("*.py"):  # no path to a file of the source checkout
        source = module.read_text()
        assert '"benchmarks"' not in source and "spec_from_file_location" not in source, module


def test_bench_is_not_a_command(capsys):
    """``jaxnn bench`` is refused by the parser, listing the commands there are."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench"])
    assert exit_.value.code == 2
    assert "invalid choice: 'bench' (choose from" in capsys.readouterr().err


def test_epochs_count_steps_per_pass_over_the_training_set(tmp_path, monkeypatch, capsys):
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--epochs", 2,
                    "--batch-size", 100, "--no-progress") == 0
    # 320 examples: 3 batches of 100 per epoch, 20 examples of each shuffle left out
    assert "steps 0→6, batch 100 (3 steps per epoch" in capsys.readouterr().out
    assert checkpoint.load_metadata(tmp_path / "jaxnn-out" / "checkpoint.npz")["step"] == 6


def test_steps_round_up_to_whole_epochs(tmp_path, monkeypatch, capsys):
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--steps", 7,
                    "--batch-size", 100, "--no-progress") == 0
    assert "steps 0→9, batch 100" in capsys.readouterr().out


def _signal_after_epochs(monkeypatch, signum, epochs):
    """Delivers ``signum`` to this process at the end of epoch ``epochs`` of ``jaxnn.fit``."""
    real = jaxnn.fit

    def fit(*args, on_epoch, **kwargs):
        def on_epoch_then_signal(epoch, *rest):
            if epoch + 1 == epochs:
                os.kill(os.getpid(), signum)
            return on_epoch(epoch, *rest)

        return real(*args, on_epoch=on_epoch_then_signal, **kwargs)

    monkeypatch.setattr(jaxnn, "fit", fit)


def test_an_interrupted_run_saves_a_checkpoint_it_can_resume_from(tmp_path, monkeypatch,
                                                                  capsys):
    _signal_after_epochs(monkeypatch, signal.SIGINT, 5)
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--steps", 10,
                    "--no-progress") == 130
    assert "interrupted (SIGINT) at step 5" in capsys.readouterr().err
    params, meta = _load_params(tmp_path / "jaxnn-out", [2, 4, 1])
    assert meta["step"] == 5
    assert len(params["costs"]) == 5


def test_summary_prints_the_layers_and_the_parameter_count(capsys):
    sizes = [2, 20, 7, 5, 1]
    assert cli.main(["summary", "--layers", ",".join(map(str, sizes))]) == 0
    out = capsys.readouterr().out
    expected = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))
    assert f"total parameters: {expected}" in out
    assert out.count("dense") == 4
    assert out.count("relu") == 3
    assert "sigmoid" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--batch-size", "0"], "--batch-size 0: must be at least 1"),
    (["--print-every", "0"], "--print-every 0: must be at least 1"),
    (["--lr", "-0.1"], "--lr -0.1: the learning rate must be a positive finite number"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--epochs", "-1"], "--epochs -1: must be at least 1"),
])
def test_out_of_range_numbers_are_refused_by_name(tmp_path, monkeypatch, capsys, args, message):
    assert run_main(monkeypatch, tmp_path, "train", *args) == 1
    assert message in capsys.readouterr().err


def test_train_without_the_cli_extra_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
    assert run_main(monkeypatch, tmp_path, "train", "--steps", 1) == 1
    err = capsys.readouterr().err
    assert "needs the optional package 'matplotlib'" in err
    assert 'install it with pip install "jaxnn[cli]"' in err


# --- runs that never lose work ----------------------------------------------------------------

TINY = ["--layers", "2,4,1", "--no-progress"]


def _run_and_read(monkeypatch, cwd, out, *args):
    status = run_main(monkeypatch, cwd, "train", *TINY, "--out", out, *args)
    params, meta = _load_params(cwd / out, [2, 4, 1])
    return status, params, meta


def test_the_cost_history_grows_on_the_host_and_is_saved_as_an_array(tmp_path, monkeypatch):
    history = cli_train.CostHistory()
    chunks = [np.full(n, n, np.float32) for n in (3, 1000, 1, 5000, 7)]
    buffers = set()
    for chunk in chunks:
        history.extend(chunk)
        buffers.add(id(history._buffer))
    np.testing.assert_array_equal(history.values, np.concatenate(chunks))
    assert len(buffers) <= 4  # regrown by doubling, not once per epoch
    # the checkpoint holds the history as one float32 array, not as JSON numbers
    _, params, meta = _run_and_read(monkeypatch, tmp_path, "run", "--steps", 12,
                                    "--save-every", 5)
    assert "costs" not in meta
    assert params["costs"].dtype == np.float32
    assert params["costs"].shape == (12,)


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "epochs"), [(signal.SIGINT, 1), (signal.SIGINT, 3),
                                           (signal.SIGINT, 8), (signal.SIGTERM, 4)])
def test_a_signal_after_any_epoch_saves_a_checkpoint_that_resumes_bit_for_bit(
        tmp_path, monkeypatch, capsys, signum, epochs):
    common = ["--batch-size", "100", "--optimizer", "adam", "--dropout", "0.1", "--seed", "5"]
    _signal_after_epochs(monkeypatch, signum, epochs)
    status, cut, meta = _run_and_read(monkeypatch, tmp_path, "cut", *common, "--epochs", 9)
    assert status == 128 + signum
    name = signal.Signals(signum).name
    assert f"interrupted ({name}) at step {3 * epochs}" in capsys.readouterr().err
    # step, parameters and history agree: the history has exactly `step` costs
    assert meta["step"] == 3 * epochs
    assert cut["costs"].shape == (3 * epochs,)
    monkeypatch.undo()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "cut", "--epochs", 9,
                    "--no-progress") == 0
    status, whole, _ = _run_and_read(monkeypatch, tmp_path, "whole", *common, "--epochs", 9)
    resumed, _ = _load_params(tmp_path / "cut", [2, 4, 1])
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_second_signal_while_saving_is_held_until_the_checkpoint_is_written(
        tmp_path, monkeypatch, capsys):
    """A first SIGINT after epoch 1 stops the run; a second one arriving in the middle of the
    checkpoint's save is held: the save completes, the run exits 130 without a traceback."""
    real_fit, real_save = jaxnn.fit, checkpoint.save

    def fit(*args, on_epoch, **kwargs):
        def signal_once(epoch, *rest):
            os.kill(os.getpid(), signal.SIGINT)
            return on_epoch(epoch, *rest)

        return real_fit(*args, on_epoch=signal_once, **kwargs)

    def save(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the second signal, while saving
        return real_save(*args, **kwargs)

    monkeypatch.setattr(jaxnn, "fit", fit)
    monkeypatch.setattr(checkpoint, "save", save)
    status, params, meta = _run_and_read(monkeypatch, tmp_path, "run", "--steps", 10)
    assert status == 130
    assert meta["step"] == 1
    assert params["costs"].shape == (1,)
    err = capsys.readouterr().err
    assert "a second SIGINT stops at once, without saving" in err
    assert "Traceback" not in err


def _popen_train(cwd, *args, script=None):
    """``jaxnn train ARGS`` in a process of its own (``script``: Python run before ``main``)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore",
           "PYTHONUNBUFFERED": "1"}
    code = (script or "") + "\nimport sys\nfrom jaxnn import cli\nsys.exit(cli.main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "train", *map(str, args)], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {proc.stderr.read()}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_20000_epochs_stops_the_run_within_seconds(tmp_path, signum):
    """Ctrl-C or SIGTERM after 20 000 full-batch epochs: the run saves and exits within seconds
    of the epoch's end (the target is 5 s; the bound leaves room for a loaded machine). It used
    to spend minutes compiling a stack of one loss array per epoch first."""
    proc = _popen_train(tmp_path, "--layers", "2,4,1", "--steps", 10**8, "--print-every",
                        1000, "--no-progress", "--out", "run")
    try:
        _wait_for(proc, "cost after step 20000:")
        proc.send_signal(signum)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert took < 15, f"{took:.1f} s from the signal to the exit"
    meta = checkpoint.load_metadata(tmp_path / "run" / "checkpoint.npz")
    assert meta["step"] > 20000


STUCK_EPOCH = """
import jax, jaxnn
real = jaxnn.fit
def fit(*args, on_epoch, **kwargs):
    def then_stuck(*rest):
        stop = on_epoch(*rest)
        if stop:  # the first signal came: one compiled call that takes minutes
            print("stuck", flush=True)
            jax.jit(lambda: jax.lax.fori_loop(0, 2**31 - 1, lambda i, a: a * 1.0000001,
                                              jax.numpy.ones(1000)))().block_until_ready()
        return stop
    return real(*args, on_epoch=then_stuck, **kwargs)
jaxnn.fit = fit
"""


def test_a_second_signal_stops_at_once_even_inside_a_long_compiled_call(tmp_path):
    """A second Ctrl-C is never swallowed: after the first, while the process sits in one long
    compiled call (Python handlers cannot run there), the second one ends it at once."""
    proc = _popen_train(tmp_path, "--layers", "2,4,1", "--steps", 10**6, "--no-progress",
                        "--out", "run", script=STUCK_EPOCH)
    try:
        _wait_for(proc, "cost after step 0:")
        proc.send_signal(signal.SIGINT)
        _wait_for(proc, "stuck")
        time.sleep(0.5)  # inside the compiled call
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGINT, err
    assert "a second SIGINT stops at once, without saving" in err


def test_a_full_disk_at_the_end_writes_what_it_can_and_exits_1_with_one_line(
        tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", disk_full)
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--steps", 3) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxnn train: error: could not write jaxnn-out/checkpoint.npz (No space "
                   "left on device)"]
    out = tmp_path / "jaxnn-out"
    assert json.loads((out / "metrics.json").read_text())["step"] == 3
    assert (out / "cost.png").exists()
    assert (out / "decision_boundary.png").exists()


def _h5(path, x, y):
    with h5py.File(path, "w") as f:
        f["train_set_x"] = x
        if isinstance(y, str):
            f.create_group("train_set_y")
        else:
            f["train_set_y"] = y


@pytest.mark.parametrize(("case", "args", "message"), [
    ("out-is-a-file", ["--out", "afile"], "--out afile: exists and is not a folder"),
    ("out-under-a-file", ["--out", "afile/run"], "--out afile/run: cannot create the folder"),
    ("seed-negative", ["--seed", "-1"], "--seed -1: a random seed must lie in [0, 4294967295]"),
    ("seed-huge", ["--seed", str(2**70)], f"--seed {2**70}: a random seed must lie in"),
    ("lr-nan", ["--lr", "nan"], "--lr nan: the learning rate must be a positive finite number"),
    ("lr-inf", ["--lr", "inf"], "--lr inf: the learning rate must be a positive finite number"),
    ("l2-nan", ["--l2", "nan"], "--l2 nan: λ must be a finite number >= 0"),
    ("two-examples", ["--data", "two.h5", "--layers", "4,1"],
     "two.h5: 2 examples are too few to hold 20% out for testing"),
    ("string-labels", ["--data", "text.h5", "--layers", "4,1"],
     "text.h5: train_set_y: labels must be class numbers 0, 1, …, got dtype |S3"),
    ("minus-one-plus-one", ["--data", "pm.h5", "--layers", "4,1"],
     "map −1/+1 labels to 0/1 with (y + 1) / 2"),
    ("fractional-labels", ["--data", "soft.h5", "--layers", "4,1"],
     "labels must be whole class numbers 0, 1, …, got 0.1"),
    ("group", ["--data", "group.h5", "--layers", "4,1"],
     "group.h5: train_set_y is an HDF5 group, expected a dataset"),
    ("idx-overflow", ["--data", "huge,lab", "--layers", "4,1"], "huge: truncated: dimensions"),
])
def test_bad_places_seeds_numbers_and_files_get_one_line_and_exit_1(
        tmp_path, monkeypatch, capsys, case, args, message):
    (tmp_path / "afile").write_text("")
    x = np.zeros((10, 2, 2), np.uint8)
    _h5(tmp_path / "two.h5", x[:2], np.array([0, 1]))
    _h5(tmp_path / "text.h5", x, np.array([b"cat", b"dog"] * 5))
    _h5(tmp_path / "pm.h5", x, np.array([-1, 1] * 5))
    _h5(tmp_path / "soft.h5", x, np.array([0.1, 0.9] * 5))
    _h5(tmp_path / "group.h5", x, "group")
    (tmp_path / "huge").write_bytes(bytes([0, 0, 8, 4]) + np.full(4, 65536, ">u4").tobytes())
    (tmp_path / "lab").write_bytes(bytes([0, 0, 8, 1]) + np.array([1], ">u4").tobytes() + b"\0")
    assert run_main(monkeypatch, tmp_path, "train", *TINY[2:], "--steps", 2, *args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_metrics_json_is_strict_json_when_the_cost_is_not_finite(tmp_path, monkeypatch):
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--steps", 3, "--lr", "1e30") == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    metrics = json.loads((tmp_path / "jaxnn-out" / "metrics.json").read_text(),
                         parse_constant=refuse)
    assert metrics["final_cost"] is None


def test_the_progress_rate_leaves_out_the_first_epoch(tmp_path, monkeypatch):
    clock = [0.0]
    bars = []
    real = cli_train._progress_bar

    def bar_on_a_fake_clock(*args):
        bar = real(*args)
        bar._time = lambda: clock[0]
        bar.start_t = bar.last_print_t = 0.0
        bars.append(bar)
        return bar

    real_fit = jaxnn.fit

    def fit(*args, on_epoch, **kwargs):
        def timed(epoch, *rest):
            clock[0] += 100.0 if epoch == 0 else 0.01  # compilation, then 100 steps/s
            return on_epoch(epoch, *rest)

        return real_fit(*args, on_epoch=timed, **kwargs)

    monkeypatch.setattr(cli_train, "_progress_bar", bar_on_a_fake_clock)
    monkeypatch.setattr(jaxnn, "fit", fit)
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--steps", 11) == 0
    meter = bars[0].format_meter(**{**bars[0].format_dict, "ncols": 200})
    assert "100.00step/s" in meter, meter


def test_resume_messages_quote_options_as_typed_and_accept_equal_values(tmp_path, monkeypatch,
                                                                         capsys):
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--lr", "0.2",
                    "--steps", 2, "--no-progress") == 0
    capsys.readouterr()
    # the same values written differently are the same run
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--layers",
                    "2, 4, 1", "--lr", "0.20", "--steps", 3, "--no-progress") == 0
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--lr", "2e-1",
                    "--layers", " 2,4 ,1", "--steps", 4, "--no-progress") == 0
    capsys.readouterr()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--layers",
                    "2, 5, 1", "--steps", 5) == 1
    assert "--layers 2, 5, 1 differs from the resumed run's 2,4,1" in capsys.readouterr().err
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--epochs",
                    "-1") == 1
    assert "--epochs -1: must be at least 1" in capsys.readouterr().err


def test_checkpoints_between_epochs_do_not_recompile_the_epoch(tmp_path, monkeypatch):
    fit_module = sys.modules["jaxnn.fit"]
    made = []
    real = fit_module.make_epoch

    def counted(*args, **kwargs):
        made.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "make_epoch", counted)
    fit_module._cached_epoch.cache_clear()
    status, _params, meta = _run_and_read(monkeypatch, tmp_path, "run", "--steps", 6,
                                         "--save-every", 2)
    assert status == 0
    assert meta["step"] == 6
    assert len(made) == 1


# --- sharded checkpoints (--checkpoint-format sharded) ----------------------------------------


@pytest.fixture
def keep_unraisablehook(monkeypatch):
    """Puts back ``sys.unraisablehook`` after the test (reading a sharded checkpoint installs a
    filter for the process's lifetime)."""
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)


def _load_run(folder, sizes, seed=0, fmt="npz"):
    """The run saved in ``folder`` (``checkpoint.npz``, or the step folder that
    ``checkpoint/LATEST`` names), read against a freshly built template."""
    if fmt == "npz":
        return _load_params(folder, sizes, seed=seed)
    step_folder = folder / "checkpoint" / (folder / "checkpoint" / "LATEST").read_text().strip()
    meta = checkpoint.load_sharded_metadata(step_folder)
    config = meta["config"]
    model = cli_common.build_model(sizes, config["activation"], config["dropout"])
    _, params, state = model.init(jax.random.key(seed), (-1, sizes[0]))
    opt = cli_common.make_optimizer(config["optimizer"], config["lr"], model, config["l2"])
    template = {"params": params, "state": state, "opt_state": opt.init(params),
                "costs": np.zeros(meta["step"], np.float32)}
    if not meta["step"]:
        del template["costs"]
    return checkpoint.load_sharded(step_folder, template), meta


def _assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


SHARDED_RUN = ["--layers", "2,8,1", "--seed", "3", "--no-progress", "--batch-size", "100",
               "--optimizer", "adam", "--dropout", "0.2"]


def test_the_help_names_the_checkpoint_formats(capsys):
    """``jaxnn train --help`` lists ``--checkpoint-format {npz,sharded}``."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    assert "--checkpoint-format {npz,sharded}" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(("first", "then"), [("sharded", None), ("npz", "sharded"),
                                        ("sharded", "npz")])
def test_a_sharded_resume_ends_bitwise_equal_to_an_uninterrupted_run(
        tmp_path, monkeypatch, capsys, keep_unraisablehook, first, then):
    """``--checkpoint-format sharded`` saves into OUT/checkpoint/; ``--resume`` reads whichever
    format the folder holds (the one written last when it holds both), keeps writing it unless
    told otherwise, and ends bit for bit where the uninterrupted run ends: params, model and
    optimizer state, cost history."""
    assert run_main(monkeypatch, tmp_path, "train", *SHARDED_RUN, "--epochs", 4, "--out",
                    "whole") == 0
    assert run_main(monkeypatch, tmp_path, "train", *SHARDED_RUN, "--epochs", 2, "--out",
                    "split", "--checkpoint-format", first) == 0
    split = tmp_path / "split"
    assert (split / "checkpoint.npz").exists() == (first == "npz")
    assert (split / "checkpoint").is_dir() == (first == "sharded")
    capsys.readouterr()
    switch = ["--checkpoint-format", then] if then else []
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "split", "--epochs", 4,
                    "--no-progress", *switch) == 0
    out = capsys.readouterr().out
    assert "steps 6→12" in out
    written = then or first
    assert f"wrote split/{'checkpoint.npz' if written == 'npz' else 'checkpoint'}," in out
    whole, _ = _load_params(tmp_path / "whole", [2, 8, 1], seed=3)
    resumed, meta = _load_run(split, [2, 8, 1], seed=3, fmt=written)
    _assert_bitwise_equal(whole, resumed)
    assert meta["step"] == len(resumed["costs"]) == 12
    if written == "sharded":  # one step folder, and the pointer to it
        assert sorted(os.listdir(split / "checkpoint")) == ["LATEST", "step_12"]
    assert cli_train._find_saved_run(str(split)).format == written


def test_resume_takes_the_checkpoint_written_last_when_a_folder_holds_both(
        tmp_path, monkeypatch, capsys, keep_unraisablehook):
    """A new run written over an old one in the other format: ``--resume`` continues the new
    run (the one written last), not the old one's later step, and reads only it (the old file
    may be damaged)."""
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--epochs", 3, "--out", "f") == 0
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--epochs", 1, "--out", "f",
                    "--checkpoint-format", "sharded") == 0
    old = tmp_path / "f" / "checkpoint.npz"
    old.write_bytes(old.read_bytes()[:100])
    os.utime(old, ns=(0, 0))  # damaged, and still the older one
    capsys.readouterr()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "f", "--epochs", 4,
                    "--no-progress") == 0
    assert "steps 1→4" in capsys.readouterr().out
    _, meta = _load_run(tmp_path / "f", [2, 4, 1], fmt="sharded")
    assert meta["step"] == 4


def test_signals_and_save_every_write_sharded_checkpoints_that_resume_bit_for_bit(
        tmp_path, monkeypatch, capsys, keep_unraisablehook):
    """With ``--checkpoint-format sharded``, ``--save-every`` saves replace one another (one
    step folder stays) and Ctrl-C saves too: exit 130 naming OUT/checkpoint; the resumed run
    ends bit for bit where the uninterrupted one does."""
    _signal_after_epochs(monkeypatch, signal.SIGINT, 3)
    assert run_main(monkeypatch, tmp_path, "train", *SHARDED_RUN, "--epochs", 9, "--out", "cut",
                    "--save-every", 3, "--checkpoint-format", "sharded") == 130
    err = capsys.readouterr().err
    assert "interrupted (SIGINT) at step 9; checkpoint saved to cut/checkpoint;" in err
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoint")) == ["LATEST", "step_9"]
    cut, meta = _load_run(tmp_path / "cut", [2, 8, 1], seed=3, fmt="sharded")
    assert meta["step"] == 9
    assert cut["costs"].shape == (9,)
    monkeypatch.undo()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "cut", "--epochs", 9,
                    "--no-progress") == 0
    assert run_main(monkeypatch, tmp_path, "train", *SHARDED_RUN, "--epochs", 9, "--out",
                    "whole") == 0
    whole, _ = _load_params(tmp_path / "whole", [2, 8, 1], seed=3)
    resumed, _ = _load_run(tmp_path / "cut", [2, 8, 1], seed=3, fmt="sharded")
    _assert_bitwise_equal(whole, resumed)


def test_a_sharded_checkpoint_at_step_0_saves_and_resumes(tmp_path, monkeypatch, capsys,
                                                          keep_unraisablehook):
    """A signal before the first epoch ends saves a step-0 sharded checkpoint, whose cost
    history is empty (Orbax refuses arrays of size 0: it is left out); it resumes."""
    real = cli_train._progress_bar

    def signal_first(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_train, "_progress_bar", signal_first)
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--steps", 2,
                    "--checkpoint-format", "sharded") == 128 + signal.SIGTERM
    assert "interrupted (SIGTERM) at step 0" in capsys.readouterr().err
    _, meta = _load_run(tmp_path / "jaxnn-out", [2, 4, 1], fmt="sharded")
    assert meta["step"] == 0
    monkeypatch.undo()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--steps", 2,
                    "--no-progress") == 0
    resumed, meta = _load_run(tmp_path / "jaxnn-out", [2, 4, 1], fmt="sharded")
    assert meta["step"] == 2
    assert resumed["costs"].shape == (2,)


class _Killed(BaseException):
    """Stands for the process dying in the middle of a save."""


def test_a_sharded_save_that_dies_leaves_the_previous_checkpoint_and_is_cleaned_up(
        tmp_path, monkeypatch, capsys, keep_unraisablehook):
    """A save that dies after Orbax wrote its folder, or while it writes one, leaves LATEST
    naming the previous complete checkpoint, which resumes; the next save removes what the
    dead one left."""
    real = checkpoint.save_sharded
    calls = []

    def dies_on_the_second_save(directory, *args, **kwargs):
        calls.append(directory)
        real(directory, *args, **kwargs)
        if len(calls) == 2:  # complete, not yet pointed to; and another half-written
            os.makedirs(f"{directory}_1.orbax-checkpoint-tmp-17")
            raise _Killed

    monkeypatch.setattr(checkpoint, "save_sharded", dies_on_the_second_save)
    with pytest.raises(_Killed):
        run_main(monkeypatch, tmp_path, "train", *TINY, "--batch-size", 100, "--epochs", 4,
                 "--save-every", 3, "--checkpoint-format", "sharded")
    folder = tmp_path / "jaxnn-out" / "checkpoint"
    assert sorted(os.listdir(folder)) == ["LATEST", "step_3", "step_6",
                                          "step_6_1.orbax-checkpoint-tmp-17"]
    assert (folder / "LATEST").read_text().strip() == "step_3"
    monkeypatch.undo()
    capsys.readouterr()
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "jaxnn-out", "--epochs", 4,
                    "--no-progress") == 0
    assert "steps 3→12" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == ["LATEST", "step_12"]


def test_resume_from_a_folder_without_a_checkpoint_or_a_damaged_sharded_one_is_one_line(
        tmp_path, monkeypatch, capsys, keep_unraisablehook):
    """``--resume DIR`` holding neither format, or a sharded checkpoint that is incomplete or
    corrupted (no LATEST, LATEST naming nothing, damaged metadata, damaged array data): exit 1
    with one line naming the folder, never a traceback."""
    assert run_main(monkeypatch, tmp_path, "train", *TINY, "--batch-size", 100, "--epochs", 2,
                    "--checkpoint-format", "sharded") == 0
    good = tmp_path / "jaxnn-out" / "checkpoint"

    def damaged(name, damage):
        folder = tmp_path / name
        folder.mkdir()
        if damage is not None:
            shutil.copytree(good, folder / "checkpoint")
            damage(folder / "checkpoint")
        return name

    def garble(path):
        path.write_bytes(b"x" * max(1, path.stat().st_size))

    cases = {
        damaged("empty", None): "--resume empty: no checkpoint there (neither checkpoint.npz "
                                "nor a checkpoint/ folder of sharded checkpoints)",
        damaged("no_latest", lambda f: (f / "LATEST").unlink()):
            "no_latest/checkpoint: not a readable sharded checkpoint (no LATEST file naming "
            "its last step: No such file or directory)",
        damaged("latest_elsewhere", lambda f: (f / "LATEST").write_text("step_99\n")):
            "latest_elsewhere/checkpoint: not a readable sharded checkpoint (LATEST names "
            "'step_99', which is not a step folder there)",
        damaged("metadata", lambda f: garble(f / "step_6" / "jaxnn_metadata" / "metadata")):
            "metadata/checkpoint/step_6: not a readable sharded checkpoint (corrupted or "
            "incomplete: Expecting value",
    }
    for name, message in cases.items():
        capsys.readouterr()
        assert run_main(monkeypatch, tmp_path, "train", "--resume", name, "--epochs", 4) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"jaxnn train: error: {message}") and err.count("\n") == 1, err
    # damaged array data fails inside Orbax's reads: a process of its own shows all it prints
    damaged("data", lambda f: [garble(p) for p in (f / "step_6" / "arrays" / "d").iterdir()])
    proc = jaxnn_cmd(tmp_path, "train", "--resume", "data", "--epochs", 4)
    assert proc.returncode == 1
    assert proc.stderr.startswith("jaxnn train: error: data/checkpoint/step_6: not a readable "
                                  "sharded checkpoint (corrupted or incomplete: DATA_LOSS: ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
