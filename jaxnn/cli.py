"""The ``jaxnn`` command: train, verify and report.

``jaxnn train`` trains the classic L-layer classifier (dense/activation … dense, sigmoid or
softmax output) with :func:`jaxnn.make_train_step` on a built-in data set or a user's files,
prints the cost and the accuracy, draws ``cost.png`` (and ``decision_boundary.png`` for 2-D data)
and saves a checkpoint it can resume from. ``jaxnn gradcheck`` checks every built-in layer and
loss (or a model given by flags) against ``jax.grad`` and finite differences. ``jaxnn summary``
prints a model's table; ``jaxnn bench`` runs the speed benchmark in its short mode.

Also ``python -m jaxnn``. Run ``jaxnn COMMAND --help`` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

CHECKPOINT_FILE = "checkpoint.npz"
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "gelu", "silu", "softplus")
OPTIMIZERS = ("sgd", "momentum", "adam")
DEFAULT_LR = {"sgd": 0.2, "momentum": 0.02, "adam": 0.01}
DEFAULT_HIDDEN = (20, 7, 5)
DEFAULT_STEPS = 3000
# the options that define a run: a resumed run must keep them
RUN_OPTIONS = ("dataset", "data", "test_data", "layers", "activation", "optimizer", "lr",
               "batch_size", "seed", "l2", "dropout")


class CommandError(Exception):
    """A problem the user can fix (bad option, missing file): printed, exit status 1."""


def _require(module: str, extra: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CommandError(f"{what} needs the optional package {module!r}: install it with "
                           f'pip install "jaxnn[{extra}]"') from err


# --- models -----------------------------------------------------------------------------------


def parse_layers(text: str) -> list[int]:
    """``"2,20,7,5,1"`` → ``[2, 20, 7, 5, 1]`` (input size first, at least two sizes)."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise CommandError(f"--layers: expected comma-separated positive integers such as "
                           f"2,20,7,5,1, got {text!r}") from None
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise CommandError(f"--layers: expected at least two positive sizes (input first, output "
                           f"last), got {text!r}")
    return sizes


def build_model(sizes: Sequence[int], activation: str = "relu", dropout: float = 0.0):
    """The classic L-layer network for ``sizes = [n_x, n_1, …, n_L]``.

    Hidden layers are ``dense(n_l)`` and ``activation`` (then ``dropout(rate)`` when
    ``dropout > 0``); the output is ``dense(1), sigmoid()`` for one unit (binary
    cross-entropy) or ``dense(n_L)`` logits for several (softmax cross-entropy).
    """
    import jaxnn

    if activation not in ACTIVATIONS:
        raise CommandError(f"unknown activation {activation!r}; choose one of "
                           f"{', '.join(ACTIVATIONS)}")
    if dropout and not hasattr(jaxnn, "dropout"):
        raise CommandError("--dropout: this version of jaxnn has no dropout layer")
    if not 0 <= dropout < 1:
        raise CommandError(f"--dropout: the rate must lie in [0, 1), got {dropout}")
    layers = []
    for n in sizes[1:-1]:
        layers += [jaxnn.dense(n), getattr(jaxnn, activation)()]
        if dropout:
            layers.append(jaxnn.dropout(dropout))
    layers.append(jaxnn.dense(sizes[-1]))
    if sizes[-1] == 1:
        layers.append(jaxnn.sigmoid())
    return jaxnn.serial(*layers)


def loss_for(sizes: Sequence[int]):
    import jaxnn

    return jaxnn.binary_cross_entropy if sizes[-1] == 1 else jaxnn.softmax_cross_entropy


def make_optimizer(name: str, lr: float):
    import optax

    if name == "sgd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=0.9)
    if name == "adam":
        return optax.adam(lr)
    raise CommandError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# --- data -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    n_classes: int
    prepare: Callable[[Any], Any]  # raw features -> the network's input (standardization)
    raw_train: Any  # for plotting, in the data's own coordinates


def _load_file(path: str):
    from jaxnn import data

    if "," in path:
        images, labels = path.split(",", 1)
        return data.load_mnist(images, labels)
    if path.endswith((".h5", ".hdf5")):
        x, y, _ = data.load_h5(path)
        return x, y
    raise CommandError(f"--data/--test-data: cannot tell the format of {path!r}: give an HDF5 "
                       f"file (.h5, .hdf5) or an IDX pair 'IMAGES,LABELS' (MNIST format, raw or "
                       f"gzip)")


def _n_classes(*ys) -> int:
    import jax.numpy as jnp

    if all(jnp.issubdtype(y.dtype, jnp.floating) for y in ys):
        return 2
    return int(max(int(np.max(np.asarray(y))) for y in ys)) + 1


def load_dataset(dataset: str | None, data_path: str | None, test_path: str | None,
                 seed: int) -> Dataset:
    """The training and test sets: built-in (split 80/20 by ``seed`` and standardized with the
    training statistics) or from files (a test file, else a split of the training file)."""
    import jax.numpy as jnp

    from jaxnn import data

    if data_path is None:
        if test_path is not None:
            raise CommandError("--test-data needs --data")
        name = dataset or "flower"
        x, y = data.load_builtin(name)
        x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.2, seed=seed)
        _, stats = data.standardize(x_tr)
        prepare = lambda raw: data.standardize(raw, stats)[0]  # noqa: E731
        return Dataset(name, prepare(x_tr), y_tr, prepare(x_te), y_te, _n_classes(y),
                       prepare, x_tr)
    if dataset is not None:
        raise CommandError("give either --dataset or --data, not both")
    x, y = _load_file(data_path)
    if test_path is None:
        x_tr, y_tr, x_te, y_te = data.train_test_split(x, y, test_fraction=0.2, seed=seed)
    else:
        x_tr, y_tr = x, y
        x_te, y_te = _load_file(test_path)
        if x_te.shape[1] != x_tr.shape[1]:
            raise CommandError(f"--test-data {test_path} has {x_te.shape[1]} features per "
                               f"example, --data {data_path} has {x_tr.shape[1]}")
    if jnp.issubdtype(y_tr.dtype, jnp.floating) != jnp.issubdtype(y_te.dtype, jnp.floating):
        # one file holds only two of several classes: use class indices for both
        y_tr, y_te = y_tr.astype(jnp.int32), y_te.astype(jnp.int32)
    name = ",".join(os.path.basename(part) for part in data_path.split(","))
    return Dataset(name, x_tr, y_tr, x_te, y_te, _n_classes(y_tr, y_te),
                   lambda raw: raw, x_tr)


# --- train ------------------------------------------------------------------------------------


def _resolve_run_config(args: argparse.Namespace) -> tuple[dict, dict | None]:
    """The run's configuration; on ``--resume`` the saved one, which explicit options must
    agree with."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS}
    for k in ("data", "test_data"):  # absolute, so that a run resumes from any folder
        if given[k] is not None:
            given[k] = ",".join(os.path.abspath(p) for p in given[k].split(","))
    if args.resume is None:
        config = dict(given)
        config["activation"] = config["activation"] or "relu"
        config["optimizer"] = config["optimizer"] or "sgd"
        if config["lr"] is None:
            config["lr"] = DEFAULT_LR[config["optimizer"]]
        config["seed"] = 0 if config["seed"] is None else config["seed"]
        config["l2"] = config["l2"] or 0.0
        config["dropout"] = config["dropout"] or 0.0
        return config, None
    from jaxnn import checkpoint

    path = os.path.join(args.resume, CHECKPOINT_FILE)
    meta = checkpoint.load_metadata(path)
    saved = meta.get("config")
    if not isinstance(saved, dict):
        raise CommandError(f"{path}: no training configuration in the checkpoint (was it written "
                           f"by jaxnn train?)")
    for k, value in given.items():
        if value is not None and value != saved.get(k):
            raise CommandError(f"--{k.replace('_', '-')} {value} differs from the resumed run's "
                               f"{saved.get(k)} ({path}); leave it out to continue that run")
    return dict(saved), meta


def _plot_cost(path: str, costs: np.ndarray, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(np.arange(len(costs)), costs, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cost")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_decision_boundary(path: str, predict_fn: Callable, raw_x: np.ndarray,
                            labels: np.ndarray, title: str) -> None:
    import matplotlib.pyplot as plt

    lo, hi = raw_x.min(axis=0), raw_x.max(axis=0)
    pad = 0.1 * (hi - lo)
    g0, g1 = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 200),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], 200))
    grid = np.stack([g0.ravel(), g1.ravel()], 1).astype(np.float32)
    z = np.asarray(predict_fn(grid))
    classes = (z[:, 0] > 0.5) if z.shape[1] == 1 else np.argmax(z, 1)
    fig, ax = plt.subplots(figsize=(5, 4.5), dpi=100)
    ax.contourf(g0, g1, classes.reshape(g0.shape).astype(float), alpha=0.35, cmap="coolwarm")
    ax.scatter(raw_x[:, 0], raw_x[:, 1], c=labels, s=10, cmap="coolwarm", edgecolors="k",
               linewidths=0.3)
    ax.set_title(title)
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def train(args: argparse.Namespace) -> int:
    """``jaxnn train``: see ``jaxnn train --help``."""
    matplotlib = _require("matplotlib", "cli", "jaxnn train (its pictures)")
    matplotlib.use("Agg")
    tqdm = _require("tqdm", "cli", "jaxnn train (its progress bar)").tqdm
    import jax
    import jax.numpy as jnp

    import jaxnn
    from jaxnn import checkpoint

    if args.steps is not None and args.epochs is not None:
        raise CommandError("give --steps or --epochs, not both")
    config, resumed = _resolve_run_config(args)
    out = args.out or args.resume or "jaxnn-out"
    ds = load_dataset(config["dataset"], config["data"], config["test_data"], config["seed"])
    n_x = ds.x_train.shape[1]
    sizes = (parse_layers(config["layers"]) if config["layers"]
             else [n_x, *DEFAULT_HIDDEN, 1 if ds.n_classes == 2 else ds.n_classes])
    if sizes[0] != n_x:
        raise CommandError(f"--layers starts with {sizes[0]} inputs but the data have {n_x} "
                           f"features per example")
    want_out = 1 if ds.n_classes == 2 else ds.n_classes
    if sizes[-1] != want_out and not (ds.n_classes == 2 and sizes[-1] == 2):
        raise CommandError(f"--layers ends with {sizes[-1]} outputs but the data have "
                           f"{ds.n_classes} classes: end with {want_out}")
    config["layers"] = ",".join(map(str, sizes))
    y_train, y_test = ds.y_train, ds.y_test
    if sizes[-1] > 1:  # softmax cross-entropy on integer class indices
        y_train, y_test = (y[:, 0].astype(jnp.int32) for y in (y_train, y_test))

    for option, value, low in (("batch-size", config["batch_size"], 1),
                               ("print-every", args.print_every, 1),
                               ("save-every", args.save_every, 0)):
        if value is not None and value < low:
            raise CommandError(f"--{option} must be at least {low}, got {value}")
    if config["lr"] <= 0 or config["l2"] < 0:
        raise CommandError(f"--lr must be positive and --l2 non-negative, got {config['lr']} "
                           f"and {config['l2']}")
    m = ds.x_train.shape[0]
    batch_size = min(config["batch_size"] or m, m)
    steps_per_epoch = -(-m // batch_size)
    if args.epochs is not None:
        total = args.epochs * steps_per_epoch
    elif args.steps is not None:
        total = args.steps
    else:
        total = DEFAULT_STEPS if resumed is None else None
    if total is None:
        raise CommandError("--resume: say how far to train with --steps N or --epochs N (the "
                           "total, counted from the start of the run)")
    if total < 1:
        raise CommandError(f"--steps/--epochs must be positive, got {total}")

    model = build_model(sizes, config["activation"], config["dropout"])
    loss = loss_for(sizes)
    optimizer = make_optimizer(config["optimizer"], config["lr"])
    root = jax.random.key(config["seed"])
    init_key, data_key, dropout_key = (jax.random.fold_in(root, i) for i in range(3))
    _, params, state = model.init(init_key, (-1, n_x))
    opt_state = optimizer.init(params)
    stateful = bool(config["dropout"])
    step_fn = jaxnn.make_train_step(model, loss, optimizer, l2=config["l2"], stateful=stateful)

    ckpt_path = os.path.join(out, CHECKPOINT_FILE)
    costs: list = []
    start = 0
    if resumed is not None:
        template = {"params": params, "state": state, "opt_state": opt_state}
        restored = checkpoint.load(os.path.join(args.resume, CHECKPOINT_FILE), template)
        params, state, opt_state = restored["params"], restored["state"], restored["opt_state"]
        saved_m = resumed.get("train_examples")
        if saved_m != m:
            raise CommandError(f"the run in {args.resume} trained on {saved_m} examples, the "
                               f"data now have {m}: the data changed")
        start = int(resumed["step"])
        costs = list(np.asarray(resumed.get("costs", []), np.float32))
        if start >= total:
            raise CommandError(f"the checkpoint in {args.resume} is at step {start}; ask for "
                               f"more with --steps N (N > {start})")
    os.makedirs(out, exist_ok=True)

    def save(step: int, recorded: list) -> None:
        history = [float(c) for c in np.asarray(jnp.stack(recorded))] if recorded else []
        checkpoint.save(ckpt_path, {"params": params, "state": state, "opt_state": opt_state},
                        step=step, metadata={"config": config, "costs": history,
                                             "train_examples": m,
                                             "steps_per_epoch": steps_per_epoch})

    print(f"data: {ds.name}, {m} training and {ds.x_test.shape[0]} test examples, {n_x} "
          f"features, {ds.n_classes} classes")
    print(f"model: {config['layers']} ({config['activation']} hidden, "
          f"{'sigmoid' if sizes[-1] == 1 else 'softmax'} output, {loss.name})"
          + (f", dropout {config['dropout']}" if stateful else "")
          + (f", l2 {config['l2']}" if config["l2"] else ""))
    print(f"training: {config['optimizer']} lr {config['lr']}, steps {start}→{total}, batch "
          f"{batch_size}{' (full batch)' if batch_size == m else ''}, seed {config['seed']}")

    print_every = args.print_every or max(1, total // 10)
    bar = tqdm(total=total, initial=start, disable=args.no_progress, desc="train", unit="step",
               file=sys.stderr, dynamic_ncols=True)
    epoch_batches: list = []
    current_epoch = -1
    recorded = [jnp.asarray(c) for c in costs]
    s = start
    began = time.perf_counter()
    try:
        while s < total:
            epoch, index = divmod(s, steps_per_epoch)
            if batch_size == m:
                # one batch of everything: its gradient does not depend on the order
                xb, yb = ds.x_train, y_train
            else:
                if epoch != current_epoch:
                    # the order of epoch e is a pure function of (seed, e): resumable anywhere
                    epoch_batches = list(jaxnn.data.batches(
                        jax.random.fold_in(data_key, epoch), ds.x_train, y_train, batch_size))
                    current_epoch = epoch
                xb, yb = epoch_batches[index]
            if stateful:
                params, state, opt_state, cost = step_fn(
                    params, state, opt_state, xb, yb, jax.random.fold_in(dropout_key, s))
            else:
                params, opt_state, cost = step_fn(params, opt_state, xb, yb)
            recorded.append(cost)
            if s % print_every == 0 or s == total - 1:
                bar.write(f"cost after step {s}: {float(cost):.6f}")
                bar.set_postfix(loss=f"{float(cost):.4f}")
            s += 1
            bar.update(1)
            if args.save_every and s % args.save_every == 0 and s < total:
                save(s, recorded)
    except KeyboardInterrupt:
        bar.close()
        save(s, recorded)
        print(f"interrupted at step {s}; checkpoint saved to {ckpt_path}; continue with "
              f"jaxnn train --resume {out} --steps {total}", file=sys.stderr)
        return 130
    bar.close()
    elapsed = time.perf_counter() - began
    save(total, recorded)
    cost_history = np.asarray(jnp.stack(recorded))

    def predict(x):
        return jaxnn.predict(model, params, x, state=state)

    train_acc = float(jaxnn.accuracy(predict(ds.x_train), y_train))
    test_acc = float(jaxnn.accuracy(predict(ds.x_test), y_test))
    print(f"{total - start} steps in {elapsed:.2f} s")
    print(f"train accuracy: {train_acc:.4f}")
    print(f"test accuracy: {test_acc:.4f}")

    written = [os.path.join(out, "cost.png")]
    _plot_cost(written[0], cost_history,
               f"{ds.name}: {config['layers']}, {config['optimizer']} lr {config['lr']}")
    if n_x == 2:
        written.append(os.path.join(out, "decision_boundary.png"))
        raw = np.asarray(ds.raw_train)
        _plot_decision_boundary(
            written[-1], lambda g: predict(ds.prepare(jnp.asarray(g))), raw,
            np.asarray(ds.y_train).reshape(-1),
            f"{ds.name}: train accuracy {train_acc:.2f}, test {test_acc:.2f}")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump({"step": total, "train_accuracy": train_acc, "test_accuracy": test_acc,
                   "final_cost": float(cost_history[-1]), "config": config}, f, indent=1)
    print("wrote " + ", ".join([*written, ckpt_path, os.path.join(out, "metrics.json")]))
    return 0


# --- gradcheck --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LayerCheck:
    """A default configuration to check an exported layer at."""

    make: Callable[[], Any]
    in_shape: tuple[int, ...]
    label: str
    kwargs: dict = dataclasses.field(default_factory=dict)
    away_from_zero: bool = False  # inputs ≥ 0.05 from 0, for layers with a kink there


@dataclasses.dataclass(frozen=True)
class LossCheck:
    loss: Any
    make_inputs: Callable[[], tuple[Any, Any]]  # () -> (prediction, target)
    label: str


def _default_layer_checks() -> dict[str, Callable[[], LayerCheck]]:
    """One configuration per exported layer, made lazily (only exported names are built).

    ``jaxnn gradcheck`` fails for an exported layer missing here, so a new layer cannot ship
    without being verified by the command.
    """
    import jax.numpy as jnp

    from jaxnn import layers as L

    kinked = ("relu", "leaky_relu", "elu")  # inputs kept ≥ 0.05 from the kink at 0

    def activation(name):
        return lambda: LayerCheck(lambda: getattr(L, name)(), (4, 5), name,
                                  away_from_zero=name in kinked)

    checks = {name: activation(name) for name in (
        "elu", "gelu", "identity", "leaky_relu", "relu", "sigmoid", "silu", "softmax",
        "softplus", "tanh")}
    checks.update({
        "dense": lambda: LayerCheck(lambda: L.dense(3), (4, 5), "dense(3)"),
        "serial": lambda: LayerCheck(
            lambda: L.serial(L.dense(4), L.tanh(), L.dense(3), L.sigmoid()), (5, 3),
            "serial(dense(4), tanh, dense(3), sigmoid)"),
        "parallel": lambda: LayerCheck(
            lambda: L.serial(L.parallel(L.dense(3), L.tanh()), L.concatenate()), (4, 5),
            "serial(parallel(dense(3), tanh), concatenate)"),
        "concatenate": lambda: LayerCheck(
            lambda: L.serial(L.parallel(L.sigmoid(), L.dense(2)), L.concatenate(axis=-1)),
            (3, 4), "serial(parallel(sigmoid, dense(2)), concatenate(-1))"),
        "remat": lambda: LayerCheck(
            lambda: L.remat(L.serial(L.dense(4), L.tanh(), L.dense(3))), (4, 5),
            "remat(serial(dense(4), tanh, dense(3)))"),
        "residual": lambda: LayerCheck(
            lambda: L.residual(L.serial(L.dense(5), L.tanh())), (4, 5),
            "residual(serial(dense(5), tanh))"),
        "conv": lambda: LayerCheck(lambda: L.conv(3, (3, 3), strides=(2, 1), padding="SAME"),
                                   (2, 6, 5, 2), "conv(3, (3, 3), strides (2, 1), SAME)"),
        "max_pool": lambda: LayerCheck(lambda: L.max_pool((2, 2)), (2, 4, 4, 3),
                                       "max_pool((2, 2))"),
        "avg_pool": lambda: LayerCheck(lambda: L.avg_pool((3, 3), strides=2, padding="SAME"),
                                       (2, 5, 5, 2), "avg_pool((3, 3), strides 2, SAME)"),
        "global_avg_pool": lambda: LayerCheck(L.global_avg_pool, (2, 3, 4, 3),
                                              "global_avg_pool"),
        "flatten": lambda: LayerCheck(L.flatten, (2, 3, 4, 2), "flatten"),
        "reshape": lambda: LayerCheck(lambda: L.reshape((3, -1)), (2, 12), "reshape((3, -1))"),
        "batch_norm": lambda: LayerCheck(L.batch_norm, (6, 4), "batch_norm, train",
                                         {"train": True}),
        "layer_norm": lambda: LayerCheck(L.layer_norm, (4, 5), "layer_norm"),
        "rms_norm": lambda: LayerCheck(L.rms_norm, (4, 5), "rms_norm"),
        "dropout": lambda: LayerCheck(lambda: L.dropout(0.3), (4, 5), "dropout(0.3), train",
                                      {"train": True}),
        "embedding": lambda: LayerCheck(lambda: L.embedding(6, 3), (4, 5), "embedding(6, 3)",
                                        {"input_dtype": jnp.int32}),
    })
    checks.update({  # attention and transformers
        "multi_head_attention": lambda: LayerCheck(
            lambda: L.multi_head_attention(2, causal=True, block_size=2), (2, 5, 4),
            "multi_head_attention(2, causal, block_size 2)"),
        "positional_embedding": lambda: LayerCheck(lambda: L.positional_embedding(6), (2, 5, 3),
                                                   "positional_embedding(6)"),
        "sinusoidal_positional_embedding": lambda: LayerCheck(
            L.sinusoidal_positional_embedding, (2, 5, 4), "sinusoidal_positional_embedding"),
        "transformer_block": lambda: LayerCheck(
            lambda: L.transformer_block(2, causal=True, block_size=2), (2, 5, 4),
            "transformer_block(2, causal)"),
    })
    return checks


def _default_loss_checks() -> dict[str, Callable[[], LossCheck]]:
    import jax
    import jax.numpy as jnp

    from jaxnn import losses

    def binary():
        k1, k2 = jax.random.split(jax.random.key(1))
        p = jax.random.uniform(k1, (6, 1), minval=0.05, maxval=0.95)
        return p, (jax.random.uniform(k2, (6, 1)) > 0.5).astype(jnp.float32)

    def logits():
        k1, k2 = jax.random.split(jax.random.key(2))
        return jax.random.normal(k1, (6, 1)), (jax.random.uniform(k2, (6, 1)) > 0.5).astype(
            jnp.float32)

    def classes():
        k1, k2 = jax.random.split(jax.random.key(3))
        return jax.random.normal(k1, (6, 4)), jax.random.randint(k2, (6,), 0, 4)

    def regression():
        k1, k2 = jax.random.split(jax.random.key(4))
        return jax.random.normal(k1, (6, 3)), jax.random.normal(k2, (6, 3))

    return {
        "binary_cross_entropy": lambda: LossCheck(losses.binary_cross_entropy, binary,
                                                  "binary_cross_entropy"),
        "binary_cross_entropy_with_logits": lambda: LossCheck(
            losses.binary_cross_entropy_with_logits, logits,
            "binary_cross_entropy_with_logits"),
        "softmax_cross_entropy": lambda: LossCheck(losses.softmax_cross_entropy, classes,
                                                   "softmax_cross_entropy"),
        "mean_squared_error": lambda: LossCheck(losses.mean_squared_error, regression,
                                                "mean_squared_error"),
    }


NOT_LAYERS_OR_LOSSES = frozenset({"Loss", "weight_gradient"})


def gradcheck_table(layer_names: Sequence[str] | None = None,
                    loss_names: Sequence[str] | None = None,
                    layer_checks: dict[str, Callable[[], LayerCheck]] | None = None,
                    loss_checks: dict[str, Callable[[], LossCheck]] | None = None) -> list:
    """The checks to run: one per exported layer and loss (``jaxnn.layers.__all__``,
    ``jaxnn.losses.__all__`` by default).

    Raises:
      CommandError: an exported name has no default configuration (listing all of them).
    """
    import jaxnn

    if layer_names is None:
        layer_names = [n for n in jaxnn.layers.__all__ if n not in NOT_LAYERS_OR_LOSSES]
    if loss_names is None:
        loss_names = [n for n in jaxnn.losses.__all__ if n not in NOT_LAYERS_OR_LOSSES]
    layer_checks = _default_layer_checks() if layer_checks is None else layer_checks
    loss_checks = _default_loss_checks() if loss_checks is None else loss_checks
    missing = [n for n in layer_names if n not in layer_checks]
    missing += [n for n in loss_names if n not in loss_checks]
    if missing:
        raise CommandError(f"no default gradient-check configuration for the exported "
                           f"{', '.join(missing)}: add one to jaxnn/cli.py "
                           f"(_default_layer_checks / _default_loss_checks)")
    return [layer_checks[n]() for n in layer_names] + [loss_checks[n]() for n in loss_names]


def run_gradchecks(checks: Sequence) -> Any:
    """Runs each check in float64 and gathers one :class:`~jaxnn.gradcheck.GradcheckReport`."""
    import numpy as np

    from jaxnn import gradcheck

    report = gradcheck.GradcheckReport()
    for check in checks:
        if isinstance(check, LossCheck):
            prediction, target = check.make_inputs()
            part = gradcheck.check_loss(check.loss, prediction, target)
            part = dataclasses.replace(part, comparisons=[
                dataclasses.replace(c, layer=check.label) for c in part.comparisons])
        else:
            kwargs = dict(check.kwargs)
            if check.away_from_zero:
                u = np.random.default_rng(0).normal(size=check.in_shape)
                kwargs["x"] = np.sign(u) * (0.05 + np.abs(u))
            part = gradcheck.check_layer(check.make(), check.in_shape, name=check.label,
                                         **kwargs)
        report.extend(part)
    return report


def _gradcheck_model(args: argparse.Namespace) -> Any:
    import jax

    import jaxnn

    sizes = parse_layers(args.layers)
    model = build_model(sizes, args.activation or "relu")
    _, params, state = model.init(jax.random.key(args.seed), (-1, sizes[0]))
    kx, ky = jax.random.split(jax.random.key(args.seed + 1))
    x = jax.random.normal(kx, (8, sizes[0]))
    if sizes[-1] == 1:
        y = (jax.random.uniform(ky, (8, 1)) > 0.5).astype(x.dtype)
    else:
        y = jax.random.randint(ky, (8,), 0, sizes[-1])
    return jaxnn.gradcheck.check_model(model, loss_for(sizes), params, x, y, state=state)


def gradcheck(args: argparse.Namespace) -> int:
    """``jaxnn gradcheck``: every built-in layer and loss, or the model given by ``--layers``."""
    began = time.perf_counter()
    if args.layers:
        report = _gradcheck_model(args)
        what = f"model {args.layers} ({args.activation or 'relu'})"
    elif args.only:
        import jaxnn

        names = [n.strip() for n in args.only.split(",") if n.strip()]
        exported = set(jaxnn.layers.__all__) | set(jaxnn.losses.__all__)
        unknown = [n for n in names if n not in exported or n in NOT_LAYERS_OR_LOSSES]
        if unknown or not names:
            valid = sorted(exported - NOT_LAYERS_OR_LOSSES)
            raise CommandError(f"--only: unknown {', '.join(unknown) or 'empty list'}; choose "
                               f"among {', '.join(valid)}")
        report = run_gradchecks(gradcheck_table(
            [n for n in names if n in jaxnn.layers.__all__],
            [n for n in names if n in jaxnn.losses.__all__]))
        what = ", ".join(names)
    else:
        report = run_gradchecks(gradcheck_table())
        what = "every built-in layer and loss"
    print(report.table())
    n_failed = len(report.failing_layers)
    verdict = "passed" if report.passed else f"FAILED in {n_failed}: " + ", ".join(
        report.failing_layers)
    print(f"\ngradient check of {what} (float64; ≤ 1e-9 vs jax.grad, ≤ 1e-6 vs finite "
          f"differences): {verdict} ({time.perf_counter() - began:.1f} s)")
    return 0 if report.passed else 1


# --- summary ----------------------------------------------------------------------------------


def summary(args: argparse.Namespace) -> int:
    """``jaxnn summary``: the model's layers, output shapes and parameter counts."""
    import jaxnn

    sizes = parse_layers(args.layers)
    model = build_model(sizes, args.activation or "relu", args.dropout or 0.0)
    if not hasattr(jaxnn, "summary"):
        raise CommandError("jaxnn summary needs jaxnn.summary, which this version lacks")
    table = jaxnn.summary(model, (-1, sizes[0]))
    if table is not None:
        print(table)
    return 0


# --- bench ------------------------------------------------------------------------------------

BENCHMARK = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "train_step.py"


def bench(args: argparse.Namespace) -> int:
    """``jaxnn bench``: ``benchmarks/train_step.py --quick`` (from a source checkout)."""
    if not BENCHMARK.is_file():
        raise CommandError(f"jaxnn bench runs the benchmark of a source checkout, and "
                           f"{BENCHMARK} is not there (install jaxnn with pip install -e from a "
                           f"clone of the repository)")
    name = "jaxnn_benchmark_train_step"
    spec = importlib.util.spec_from_file_location(name, BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except ImportError as err:  # a peer library of the full comparison, say
        raise CommandError(f"{BENCHMARK}: {err}") from err
    if not hasattr(module, "main"):
        raise CommandError(f"{BENCHMARK} has no main(argv) to run")
    extra = [a for a in args.bench_args if a != "--"]
    argv = extra if args.full else ["--quick", *extra]
    result = module.main(argv)
    return result if isinstance(result, int) else 0


# --- the command line -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from jaxnn import data

    parser = argparse.ArgumentParser(
        prog="jaxnn", description="Train, verify and report jaxnn networks.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "train", help="train the classic L-layer classifier; draw its cost and decision boundary",
        description="Train the classic L-layer classifier with jaxnn.make_train_step. With no "
        "options: the built-in planar flower (2 features, 2 classes), layers 2,20,7,5,1, relu, "
        "gradient descent. Writes cost.png, decision_boundary.png (2-D data), metrics.json and "
        "checkpoint.npz into --out.")
    p.add_argument("--layers", help="sizes, input first, e.g. 2,20,7,5,1 (default: n_x,20,7,5,"
                   "1 or the number of classes)")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd (gradient descent)")
    p.add_argument("--lr", type=float, help="learning rate (default: sgd "
                   f"{DEFAULT_LR['sgd']}, momentum {DEFAULT_LR['momentum']}, adam "
                   f"{DEFAULT_LR['adam']})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"optimizer steps in all (default "
                        f"{DEFAULT_STEPS}); with --resume, the total to reach")
    length.add_argument("--epochs", type=int, help="passes over the training set instead")
    p.add_argument("--batch-size", type=int, help="examples per step (default: all of them)")
    p.add_argument("--seed", type=int, help="seeds the initialization, the train/test split, "
                   "the batch order and dropout (default 0)")
    p.add_argument("--dataset", choices=tuple(data.BUILTIN),
                   help="a built-in data set (default flower); digits and breast-cancer need "
                   'pip install "jaxnn[data]"')
    p.add_argument("--data", help="training data: an HDF5 file (train_set_x/train_set_y) or an "
                   "MNIST-format pair IMAGES,LABELS (IDX, raw or gzip)")
    p.add_argument("--test-data", help="test data in the same formats (default: 20%% of --data)")
    p.add_argument("--out", help="output folder (default jaxnn-out, or the --resume folder)")
    p.add_argument("--l2", type=float, help="λ of the penalty (λ/2)·Σ‖W‖² on weights")
    p.add_argument("--dropout", type=float, help="drop rate after each hidden activation")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    p.add_argument("--print-every", type=int, help="print the cost every N steps")
    p.add_argument("--save-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=train)

    p = commands.add_parser(
        "gradcheck", help="verify every built-in layer and loss (or a model) in float64",
        description="Check hand-derived gradients against jax.grad (≤ 1e-9 relative) and "
        "finite differences (≤ 1e-6), in float64. Exit status 1 on any failure.")
    p.add_argument("--only", metavar="NAMES", help="check only these exported layers and "
                   "losses, e.g. dense,relu,binary_cross_entropy")
    p.add_argument("--layers", help="check this model instead, e.g. 2,4,1")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation of --layers")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=gradcheck)

    p = commands.add_parser("summary", help="the model's layers, shapes and parameter counts")
    p.add_argument("--layers", required=True, help="sizes, input first, e.g. 2,20,7,5,1")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    p.add_argument("--dropout", type=float, help="drop rate after each hidden activation")
    p.set_defaults(run=summary)

    p = commands.add_parser("bench", help="the training-step speed benchmark, short mode",
                            description="Runs benchmarks/train_step.py --quick; other "
                            "arguments (e.g. --rounds 7) go to the benchmark.")
    p.add_argument("--full", action="store_true", help="the full benchmark, not --quick")
    p.set_defaults(run=bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``jaxnn`` and ``python -m jaxnn``; returns the exit status."""
    from jaxnn.checkpoint import CheckpointError
    from jaxnn.data import DataFileError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.bench_args = extra
    try:
        return args.run(args)
    except (CommandError, CheckpointError, DataFileError) as err:
        print(f"jaxnn {args.command}: error: {err}", file=sys.stderr)
        return 1
    except ImportError as err:  # an optional package, named by the data loaders
        print(f"jaxnn {args.command}: error: {err}", file=sys.stderr)
        return 1
