"""The ``jaxnn`` command, run as a subprocess the way users run it."""

import json
import os
import subprocess
import sys

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnn
from jaxnn import checkpoint, cli

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
    model = cli.build_model(sizes, activation, dropout)
    _, params, state = model.init(jax.random.key(seed), (-1, sizes[0]))
    meta = checkpoint.load_metadata(folder / "checkpoint.npz")
    opt = cli.make_optimizer(meta["config"]["optimizer"], meta["config"]["lr"])
    template = {"params": params, "state": state, "opt_state": opt.init(params)}
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
    assert "cost after step 0:" in out and "cost after step 40:" in out
    assert "cost after step 59:" in out
    assert "train accuracy:" in out and "test accuracy:" in out
    assert "train:" in proc.stderr  # the progress bar


def test_train_writes_both_pictures_metrics_and_a_checkpoint(short_run):
    cwd, proc = short_run
    run = cwd / "run"
    for picture in ("cost.png", "decision_boundary.png"):
        assert (run / picture).read_bytes()[:8] == PNG_MAGIC
        assert (run / picture).stat().st_size > 5000  # a drawn figure, not an empty canvas
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == 60 and 0 <= metrics["test_accuracy"] <= 1
    restored, meta = _load_params(run, [2, 20, 7, 5, 1])
    assert meta["step"] == 60 and len(meta["costs"]) == 60
    assert meta["config"]["layers"] == "2,20,7,5,1" and meta["config"]["dataset"] is None
    # the saved parameters are the trained ones: they reproduce the reported accuracy
    ds = cli.load_dataset(None, None, None, seed=0)
    model = cli.build_model([2, 20, 7, 5, 1])
    acc = jaxnn.accuracy(jaxnn.predict(model, restored["params"], ds.x_test), ds.y_test)
    assert float(acc) == pytest.approx(metrics["test_accuracy"])
    # and the costs went down
    assert meta["costs"][-1] < meta["costs"][0]


@pytest.mark.slow
def test_the_readme_main_job_reaches_90_percent_test_accuracy(tmp_path):
    proc = jaxnn_cmd(tmp_path, "train")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "jaxnn-out" / "metrics.json").read_text())
    assert metrics["step"] == cli.DEFAULT_STEPS
    assert metrics["train_accuracy"] >= 0.9 and metrics["test_accuracy"] >= 0.9


@pytest.mark.parametrize("extra", [["--batch-size", "64", "--optimizer", "adam"],
                                   ["--dropout", "0.2", "--batch-size", "100", "--l2", "0.01"]],
                         ids=["minibatch-adam", "dropout-l2"])
def test_resume_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, monkeypatch, capsys,
                                                           extra):
    sizes = [2, 8, 1]
    common = ["--layers", "2,8,1", "--seed", "3", "--no-progress", *extra]
    assert run_main(monkeypatch, tmp_path, "train", *common, "--steps", 14, "--out",
                    "whole") == 0
    assert run_main(monkeypatch, tmp_path, "train", *common, "--steps", 7, "--out",
                    "split") == 0
    capsys.readouterr()
    # 7 steps, then resumed up to 14: the same batches, dropout masks and optimizer state
    assert run_main(monkeypatch, tmp_path, "train", "--resume", "split", "--steps", 14,
                    "--no-progress") == 0
    assert "steps 7→14" in capsys.readouterr().out
    dropout = 0.2 if "--dropout" in extra else 0.0
    a, meta_a = _load_params(tmp_path / "whole", sizes, seed=3, dropout=dropout)
    b, meta_b = _load_params(tmp_path / "split", sizes, seed=3, dropout=dropout)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta_a["costs"] == meta_b["costs"] and len(meta_b["costs"]) == 14


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
    assert metrics["train_accuracy"] == 1.0 and metrics["test_accuracy"] >= 0.8
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
    assert "16 features, 3 classes" in out and "16,20,7,5,3" in out
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


@pytest.mark.parametrize("args,message", [
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


@pytest.mark.parametrize("args,message", [
    (["--layers", "3,4,1"], "--layers starts with 3 inputs but the data have 2 features"),
    (["--layers", "2,4,3"], "--layers ends with 3 outputs but the data have 2 classes: end "
                            "with 1"),
    (["--layers", "2,x,1"], "--layers: expected comma-separated positive integers"),
    (["--data", "missing.h5"], "missing.h5: no such file"),
    (["--data", "notes.txt"], "notes.txt': give an HDF5 file (.h5, .hdf5) or an IDX pair"),
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
                                "err", "vs", "finite", "diff."]
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
    assert "every built-in layer and loss" in proc.stdout and "FAIL" not in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.endswith("pass")]) >= len(
        exported)


def test_every_exported_layer_and_loss_has_a_default_check():
    table = cli.gradcheck_table()
    exported = (set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)) - cli.NOT_LAYERS_OR_LOSSES
    assert len(table) == len(exported)


def test_an_exported_layer_without_a_default_check_fails_loudly():
    with pytest.raises(cli.CommandError, match="no default gradient-check configuration for "
                       "the exported brand_new_layer"):
        cli.gradcheck_table(["dense", "brand_new_layer"], [])


def _wrong_relu():
    relu = jaxnn.relu()
    return relu._replace(backward=lambda p, r, dy: ((), 2.0 * dy * (r > 0)))


def test_gradcheck_exits_1_naming_a_layer_with_a_wrong_backward(monkeypatch, capsys):
    layer_checks = cli._default_layer_checks()
    layer_checks["relu"] = lambda: jaxnn.gradcheck.LayerCase(_wrong_relu, (4, 5), "relu (wrong)",
                                                             inputs="away_from_zero")
    real_table = cli.gradcheck_table
    monkeypatch.setattr(cli, "gradcheck_table", lambda *a, **k: real_table(
        ["identity", "relu"], [], layer_checks=layer_checks))
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "FAILED in 1: relu (wrong)" in out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("relu (wrong)")] == [
        "FAIL"]


@pytest.mark.slow
def test_gradcheck_of_a_model_given_by_flags():
    report = cli._gradcheck_model(cli.build_parser().parse_args(
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
    model = cli.build_model([2, 4, 3, 1], "tanh")
    assert [layer.name for layer in model.sublayers] == ["dense", "tanh", "dense", "tanh",
                                                         "dense", "sigmoid"]
    assert [layer.name for layer in cli.build_model([5, 3], "relu").sublayers] == ["dense"]
    x = jnp.ones((2, 2))
    _, params, _ = model.init(jax.random.key(0), (-1, 2))
    assert jaxnn.predict(model, params, x).shape == (2, 1)


def test_bench_runs_the_benchmark_in_its_quick_mode(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "train_step.py"
    fake.write_text("import dataclasses\n\n\n@dataclasses.dataclass\nclass Sizes:\n    n: int = 1\n"
                    "\n\ndef main(argv):\n    print('benchmark argv', argv)\n    return 0\n")
    monkeypatch.setattr(cli, "BENCHMARK", fake)
    assert cli.main(["bench"]) == 0
    assert "benchmark argv ['--quick']" in capsys.readouterr().out
    assert cli.main(["bench", "--full", "--rounds", "7"]) == 0
    assert "benchmark argv ['--rounds', '7']" in capsys.readouterr().out


def test_bench_without_the_benchmark_file_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "BENCHMARK", tmp_path / "benchmarks" / "train_step.py")
    assert cli.main(["bench"]) == 1
    err = capsys.readouterr().err
    assert "jaxnn bench: error:" in err and "benchmarks/train_step.py is not there" in err


def test_the_real_benchmark_exposes_main_with_a_quick_mode():
    assert cli.BENCHMARK.is_file()
    source = cli.BENCHMARK.read_text()
    assert "def main(argv" in source and '"--quick"' in source


def test_epochs_count_steps_per_pass_over_the_training_set(tmp_path, monkeypatch, capsys):
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--epochs", 2,
                    "--batch-size", 100, "--no-progress") == 0
    assert "steps 0→8, batch 100" in capsys.readouterr().out  # 320 examples: 4 batches/epoch
    assert checkpoint.load_metadata(tmp_path / "jaxnn-out" / "checkpoint.npz")["step"] == 8


def test_an_interrupted_run_saves_a_checkpoint_it_can_resume_from(tmp_path, monkeypatch,
                                                                  capsys):
    real = jaxnn.make_train_step

    def interrupted_after_5(*args, **kwargs):
        step, calls = real(*args, **kwargs), []

        def wrapped(*a):
            calls.append(1)
            if len(calls) > 5:
                raise KeyboardInterrupt
            return step(*a)

        return wrapped

    monkeypatch.setattr(jaxnn, "make_train_step", interrupted_after_5)
    assert run_main(monkeypatch, tmp_path, "train", "--layers", "2,4,1", "--steps", 10,
                    "--no-progress") == 130
    assert "interrupted at step 5" in capsys.readouterr().err
    meta = checkpoint.load_metadata(tmp_path / "jaxnn-out" / "checkpoint.npz")
    assert meta["step"] == 5 and len(meta["costs"]) == 5


def test_summary_prints_the_layers_and_the_parameter_count(capsys):
    sizes = [2, 20, 7, 5, 1]
    assert cli.main(["summary", "--layers", ",".join(map(str, sizes))]) == 0
    out = capsys.readouterr().out
    expected = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:]))
    assert f"total parameters: {expected}" in out
    assert out.count("dense") == 4 and out.count("relu") == 3 and "sigmoid" in out


@pytest.mark.parametrize("args,message", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--print-every", "0"], "--print-every must be at least 1, got 0"),
    (["--lr", "-0.1"], "--lr must be positive and --l2 non-negative, got -0.1 and 0.0"),
    (["--steps", "0"], "--steps/--epochs must be positive, got 0"),
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
