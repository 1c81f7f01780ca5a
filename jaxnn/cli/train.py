"""``jaxnn train``: the classic L-layer classifier trained with [`jaxnn.fit`][jaxnn.fit] on a
built-in data set or a user's files; cost lines, pictures, metrics, checkpoints and resume."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxnn
from jaxnn import checkpoint, data, plots
from jaxnn.cli.common import (
    ACTIVATIONS,
    DEFAULT_LR,
    OPTIMIZERS,
    CommandError,
    build_model,
    loss_for,
    make_optimizer,
    parse_layers,
    require,
)

CHECKPOINT_FILE = "checkpoint.npz"
# --checkpoint-format sharded: OUT/checkpoint/step_N/ (an Orbax folder, one per save) and
# OUT/checkpoint/LATEST naming the last complete one (see _save_sharded)
CHECKPOINT_FOLDER = "checkpoint"
CHECKPOINT_FORMATS = ("npz", "sharded")
_LATEST = "LATEST"
_STEP_FOLDER = re.compile(r"step_\d+(_\d+)?")

DEFAULT_HIDDEN = (20, 7, 5)
DEFAULT_STEPS = 3000
# the options that define a run: a resumed run must keep them
RUN_OPTIONS = ("dataset", "data", "test_data", "label_column", "scale", "layers", "activation",
               "optimizer", "lr", "batch_size", "seed", "l2", "dropout")



# --- data -------------------------------------------------------------------------------------

SCALES = ("auto", "none", "255", "standardize")


@dataclasses.dataclass
class Scaling:
    """How stored features become the network's input, decided on the training set and applied
    to every set (and to the plot's grid): ``"255"`` divides by 255 (uint8 pixels → [0, 1]),
    ``"standardize"`` subtracts the training set's ``mean`` and divides by its ``std`` (``(1,
    n)`` float32, saved in the checkpoint), ``"none"`` only converts to float32."""

    method: str
    mean: Any = None
    std: Any = None
    automatic: bool = False  # chosen from the features' dtype (no --scale)

    @classmethod
    def choose(cls, scale: str | None, x_train: Any) -> Scaling:
        """``scale`` (``None`` or ``"auto"``: by the training features' dtype) fitted to
        ``x_train``."""
        automatic = scale in (None, "auto")
        method = ("255" if np.asarray(x_train).dtype == np.uint8 else "standardize"
                  ) if automatic else scale
        assert method is not None
        if method != "standardize":
            return cls(method, automatic=automatic)
        _, (mean, std) = data.standardize(jnp.asarray(x_train, jnp.float32))
        return cls(method, mean, std, automatic)

    @classmethod
    def from_metadata(cls, saved: dict, n_features: int, where: str) -> Scaling:
        """The scaling a checkpoint's metadata holds (its statistics, not the data's)."""
        method = saved.get("method")
        if method not in SCALES[1:]:
            raise CommandError(f"{where}: the checkpoint's scaling {method!r} is not one of "
                               f"{', '.join(SCALES[1:])}")
        if method != "standardize":
            return cls(method)
        mean, std = (np.asarray(saved.get(k, ()), np.float32).reshape(1, -1)
                     for k in ("mean", "std"))
        if mean.shape[1] != n_features or std.shape[1] != n_features:
            raise CommandError(f"{where}: the checkpoint standardizes {mean.shape[1]} features, "
                               f"the data now have {n_features}: the data changed")
        return cls(method, jnp.asarray(mean), jnp.asarray(std))

    def __call__(self, raw: Any) -> jax.Array:
        if self.method == "255":
            return jnp.asarray(np.asarray(raw).astype(np.float32) / 255.0)
        x = jnp.asarray(raw, jnp.float32)
        if self.method == "standardize":
            return data.standardize(x, (self.mean, self.std))[0]
        return x

    def metadata(self) -> dict:
        saved: dict = {"method": self.method}
        if self.method == "standardize":
            saved["mean"] = np.asarray(self.mean, np.float32).ravel().tolist()
            saved["std"] = np.asarray(self.std, np.float32).ravel().tolist()
        return saved

    def describe(self, dtype: Any) -> str:
        what = {"255": "divided by 255 (pixels 0…255 → [0, 1])",
                "standardize": "standardized with the training set's mean and standard "
                               "deviation, per feature",
                "none": "none, the features as stored"}[self.method]
        how = (f"chosen for {np.dtype(dtype).name} features; --scale none|255|standardize to "
               f"choose" if self.automatic else f"--scale {self.method}")
        return f"scaling: {what} ({how})"


@dataclasses.dataclass
class Dataset:
    name: str
    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    n_classes: int
    prepare: Scaling  # stored features -> the network's input
    raw_train: Any  # for plotting, in the data's own coordinates


def _load_file(path: str, label_column: str | None, option: str):
    if label_column is not None and (len(path.split(",")) != 1
                                     or not path.lower().endswith(".csv")):
        raise CommandError(f"--label-column is for CSV files; {option} {path} is not one (.csv)")
    return data.load_file(path, label_column=label_column)


def _n_classes(*ys) -> int:

    if all(jnp.issubdtype(y.dtype, jnp.floating) for y in ys):
        return 2
    return int(max(int(np.max(np.asarray(y))) for y in ys)) + 1


def _split(x, y, seed: int, what: str):
    """80/20 split by ``seed``; too few examples to split is the user's to fix."""
    if x.shape[0] < 5:
        raise CommandError(f"{what}: {x.shape[0]} examples are too few to hold 20% out for "
                           f"testing; give at least 5, or a separate --test-data file")
    return data.train_test_split(x, y, test_fraction=0.2, seed=seed)


def load_dataset(dataset: str | None, data_path: str | None, test_path: str | None,
                 seed: int, scale: str | None = None, label_column: str | None = None,
                 saved_scaling: dict | None = None, where: str = "") -> Dataset:
    """The training and test sets, built-in (split 80/20 by ``seed``) or from files (a test
    file, else a split of the training file), scaled as ``scale`` says (``None``: by the
    training features' dtype) with statistics of the training set, or those ``saved_scaling``
    holds (a checkpoint's)."""


    if data_path is None:
        if test_path is not None:
            raise CommandError("--test-data needs --data")
        name = dataset or "flower"
        x, y = data.load_builtin(name)
        x_tr, y_tr, x_te, y_te = _split(x, y, seed, "--dataset " + name)
        n_classes = _n_classes(y)
    else:
        if dataset is not None:
            raise CommandError("give either --dataset or --data, not both")
        x, y = _load_file(data_path, label_column, "--data")
        if test_path is None:
            x_tr, y_tr, x_te, y_te = _split(x, y, seed, "--data " + data_path)
        else:
            x_tr, y_tr = x, y
            x_te, y_te = _load_file(test_path, label_column, "--test-data")
            if x_te.shape[1] != x_tr.shape[1]:
                raise CommandError(f"--test-data {test_path} has {x_te.shape[1]} features per "
                                   f"example, --data {data_path} has {x_tr.shape[1]}")
        if jnp.issubdtype(y_tr.dtype, jnp.floating) != jnp.issubdtype(y_te.dtype, jnp.floating):
            # one file holds only two of several classes: use class indices for both
            y_tr, y_te = y_tr.astype(jnp.int32), y_te.astype(jnp.int32)
        name = ",".join(os.path.basename(part) for part in data_path.split(","))
        n_classes = _n_classes(y_tr, y_te)
    if saved_scaling is not None:
        scaling = Scaling.from_metadata(saved_scaling, x_tr.shape[1], where)
    else:
        scaling = Scaling.choose(scale, x_tr)
    return Dataset(name, scaling(x_tr), y_tr, scaling(x_te), y_te, n_classes, scaling, x_tr)


# --- checkpoints ------------------------------------------------------------------------------
#
# A run saves its params, model state, optimizer state and cost history, with its step and
# metadata (the configuration, the scaling statistics, the number of training examples), in one
# of two formats: ``OUT/checkpoint.npz`` (checkpoint.save: one file, replaced atomically) or,
# with --checkpoint-format sharded, ``OUT/checkpoint/`` (checkpoint.save_sharded: Orbax, each
# process writing its own shards). Orbax writes a new folder per save and refuses an existing
# one, so every save goes to a fresh ``step_N`` folder and only then does the small ``LATEST``
# file, replaced atomically, point to it: a crash at any moment leaves ``LATEST`` naming a
# complete checkpoint. The folders it no longer names are removed after.


@dataclasses.dataclass(frozen=True)
class SavedRun:
    """A checkpoint of ``jaxnn train`` found by ``--resume``."""

    format: str  # "npz" or "sharded"
    path: str  # the .npz file, or the step folder that checkpoint/LATEST names
    meta: dict  # {"step": int, "config": …, "scaling": …, "train_examples": …, …}


def _sharded_error(where: str, err: BaseException) -> CommandError:
    # tensorstore says "CODE: Error opening …: Error reading …: detail [tensorstore_spec=…]":
    # keep the code and the innermost error
    text = str(err).split(" [tensorstore_spec", 1)[0].strip()
    first = (text.splitlines() or [type(err).__name__])[0]
    code, colon, rest = first.partition(": ")
    if colon and code.isupper() and "Error " in rest:
        first = f"{code}: {rest[rest.rindex('Error '):]}"
    return CommandError(f"{where}: not a readable sharded checkpoint (corrupted or incomplete: "
                        f"{first[:200]})")


class _QuietClosedLoop:
    """An unraisable hook that drops what Orbax leaves behind when one of its reads fails:
    tensorstore callbacks posting to the event loop Orbax has already closed (``RuntimeError:
    Event loop is closed``, a traceback each, printed after the error itself, during and after
    the exit). Anything else goes to the hook it replaced."""

    def __init__(self, previous: Callable[[Any], Any]) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if not (unraisable.exc_type is RuntimeError
                and str(unraisable.exc_value) == "Event loop is closed"):
            self.previous(unraisable)

    @classmethod
    def install(cls) -> None:
        """For the rest of the process (the callbacks come late), once."""
        if not isinstance(sys.unraisablehook, cls):
            sys.unraisablehook = cls(sys.unraisablehook)


def _read_sharded(where: str, read: Callable[[], Any]) -> Any:
    """``read()`` of a sharded checkpoint; what Orbax raises on a damaged folder (JSON, key,
    tensorstore errors) becomes one line naming ``where``."""
    _QuietClosedLoop.install()
    try:
        return read()
    except checkpoint.CheckpointError as err:
        cause = err.__cause__  # the library's wrapping of Orbax's error: named as given here
        if cause is not None and not isinstance(cause, checkpoint.CheckpointError):
            raise _sharded_error(where, cause) from None
        raise
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as err:
        raise _sharded_error(where, err) from None


def _latest_sharded(folder: str) -> str:
    """The step folder that ``folder/LATEST`` names."""
    pointer = os.path.join(folder, _LATEST)
    try:
        with open(pointer) as f:
            name = f.read().strip()
    except OSError as err:
        raise CommandError(f"{folder}: not a readable sharded checkpoint (no {_LATEST} file "
                           f"naming its last step: {err.strerror or err})") from None
    if not _STEP_FOLDER.fullmatch(name) or not os.path.isdir(os.path.join(folder, name)):
        raise CommandError(f"{folder}: not a readable sharded checkpoint ({_LATEST} names "
                           f"{name[:60]!r}, which is not a step folder there)")
    return os.path.join(folder, name)


def _find_saved_run(folder: str) -> SavedRun:
    """The checkpoint in ``folder``: ``checkpoint.npz`` or a sharded ``checkpoint/``; when it
    holds both (a run continued in the other format, or a new run written over an old one),
    the one written last (only that one is read)."""
    npz = os.path.join(folder, CHECKPOINT_FILE)
    sharded = os.path.join(folder, CHECKPOINT_FOLDER)
    pointer = os.path.join(sharded, _LATEST)  # replaced at every save
    written = {fmt: os.stat(path).st_mtime_ns for fmt, path, there in (
        ("npz", npz, os.path.exists(npz)),
        ("sharded", pointer if os.path.exists(pointer) else sharded, os.path.isdir(sharded)))
        if there}
    if not written:
        raise CommandError(f"--resume {folder}: no checkpoint there (neither {CHECKPOINT_FILE} "
                           f"nor a {CHECKPOINT_FOLDER}/ folder of sharded checkpoints)")
    if max(written, key=written.__getitem__) == "npz":
        saved = SavedRun("npz", npz, checkpoint.load_metadata(npz))
    else:
        path = _latest_sharded(sharded)
        saved = SavedRun("sharded", path,
                         _read_sharded(path, lambda: checkpoint.load_sharded_metadata(path)))
    if not (isinstance(saved.meta.get("config"), dict) and isinstance(saved.meta["step"], int)):
        raise CommandError(f"{saved.path}: no training configuration or step in the "
                           f"checkpoint (was it written by jaxnn train?)")
    return saved


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_sharded(folder: str, tree: Any, *, step: int, metadata: dict) -> None:
    """Saves ``tree`` into a new ``folder/step_N`` with ``checkpoint.save_sharded``, then points
    ``folder/LATEST`` to it (written to a temporary file, flushed and renamed over the old
    one), then removes the step folders ``LATEST`` no longer names (and any a killed save
    left)."""
    os.makedirs(folder, exist_ok=True)
    name, again = f"step_{step}", 0
    while os.path.exists(os.path.join(folder, name)):  # the same step saved twice
        again += 1
        name = f"step_{step}_{again}"
    checkpoint.save_sharded(os.path.join(folder, name), tree, step=step, metadata=metadata)
    pointer = os.path.join(folder, _LATEST)
    with open(pointer + ".tmp", "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer + ".tmp", pointer)
    _fsync_folder(folder)
    for entry in os.listdir(folder):
        # Orbax writes step_N.orbax-checkpoint-tmp-… before renaming it step_N
        if entry != name and _STEP_FOLDER.match(entry):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


# --- train ------------------------------------------------------------------------------------
#
# ``train`` is four steps: plan the run (options, data, model sizes, run length), restore or
# initialize its state, loop (``jaxnn.fit`` by segments between checkpoints), report (accuracy,
# pictures, metrics.json, the last checkpoint).

SEED_LIMIT = 2**32  # seeds are uint32, like numpy's


@dataclasses.dataclass
class RunPlan:
    """Everything a run needs, decided before the first step."""
    config: dict  # the options that define the run, saved in the checkpoint
    typed: dict  # option → the text the user typed, to quote it back
    out: str
    data: Dataset
    sizes: list[int]
    y_train: Any  # as the loss wants them: (m, 1) floats, or (m,) class indices
    y_test: Any
    batch_size: int
    steps_per_epoch: int
    total: int  # the step to reach, a whole number of epochs
    resumed: SavedRun | None  # the checkpoint resumed from
    checkpoint_format: str = "npz"  # what this run writes: "npz" or "sharded"

    @property
    def checkpoint_path(self) -> str:
        """``OUT/checkpoint.npz``, or the folder of sharded checkpoints ``OUT/checkpoint``."""
        name = CHECKPOINT_FILE if self.checkpoint_format == "npz" else CHECKPOINT_FOLDER
        return os.path.join(self.out, name)


class CostHistory:
    """The cost of every step, kept on the host in a buffer that doubles when full, so that
    recording an epoch and saving cost no more than the new values (no stack of scalars)."""

    def __init__(self, costs: Any = ()) -> None:
        self._buffer = np.array(costs, np.float32).reshape(-1)
        self._size = self._buffer.size

    def extend(self, costs: Any) -> None:
        new = np.asarray(costs, np.float32).reshape(-1)
        if self._size + new.size > self._buffer.size:
            grown = np.empty(max(2 * self._buffer.size, self._size + new.size, 1024), np.float32)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        self._buffer[self._size: self._size + new.size] = new
        self._size += new.size

    @property
    def values(self) -> np.ndarray:
        return self._buffer[: self._size]

    def __len__(self) -> int:
        return self._size


class StopSignals:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM asks the run to stop at the end of the
    current epoch and save a checkpoint (``signum`` is that signal; ``None`` if none came). A
    second one stops the process at once, without saving, even in the middle of a compiled call
    (the signals' default action is back in place), so a stop that takes too long is never stuck;
    the last checkpoint stays whole, since every save replaces its file atomically. Inside
    ``holding()``, while a checkpoint or the report is written, signals are only noted: that
    work is finished first."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._holding = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            name = signal.Signals(signum).name
            print(f"\n{name}: saving a checkpoint at the end of this epoch (a second {name} "
                  f"stops at once, without saving)", file=sys.stderr, flush=True)
        if not self._holding:
            self._install(signal.SIG_DFL)

    def _install(self, handler) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, handler)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        """Notes signals without acting on them until the block ends (then a signal after the
        first one stops the process at once again)."""
        self._holding = True
        self._install(self._handle)
        try:
            yield
        finally:
            self._holding = False
            self._install(self._handle if self.signum is None else signal.SIG_DFL)

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class RunState:
    """Where a run is: its parameters, model and optimizer state, step and cost history. The
    loop updates all of them together, between epochs, so that a checkpoint of it agrees."""

    params: Any
    state: Any
    opt_state: Any
    step: int
    history: CostHistory


class _Typed(argparse.Action):
    """Stores an option converted by ``kind``, and the text as typed in ``namespace.typed``
    (messages quote options as the user wrote them)."""

    def __init__(self, *args, kind: Callable[[str], Any] = str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kind = kind

    def __call__(self, parser, namespace, text, option_string=None) -> None:
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentError(
                self, f"invalid {self.kind.__name__} value: {text!r}") from None
        setattr(namespace, self.dest, value)
        namespace.typed = {**namespace.typed, self.dest: text}


def _as_typed(args: argparse.Namespace, option: str, value: Any = None) -> str:
    """``--option TEXT`` as the user typed it (``value`` when it was not typed)."""
    text = args.typed.get(option, value)
    return f"--{option.replace('_', '-')} {text}"


def _given_options(args: argparse.Namespace) -> dict:
    """The run options given on the command line, in the form they are saved in."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS}
    for k in ("data", "test_data"):  # absolute, so that a run resumes from any folder
        if given[k] is not None:
            given[k] = ",".join(os.path.abspath(p) for p in given[k].split(","))
    if given["layers"] is not None:  # "2, 4, 1" is "2,4,1"
        given["layers"] = ",".join(map(str, parse_layers(given["layers"])))
    if given["scale"] == "auto":  # the default: chosen from the data, saved as chosen
        given["scale"] = None
    return given


def _resolve_run_config(args: argparse.Namespace) -> tuple[dict, SavedRun | None]:
    """The run's configuration; on ``--resume`` the saved one, which explicit options must
    agree with. Returns ``(config, the checkpoint resumed from or None)``."""
    given = _given_options(args)
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

    resumed = _find_saved_run(args.resume)
    saved = resumed.meta["config"]
    for k, value in given.items():
        if value is not None and value != saved.get(k):
            raise CommandError(f"{_as_typed(args, k, value)} differs from the resumed run's "
                               f"{saved.get(k)} ({resumed.path}); leave it out to continue "
                               f"that run")
    return dict(saved), resumed


def _check_numbers(config: dict, args: argparse.Namespace) -> None:
    """Refuses counts below their minimum, a non-finite or non-positive ``--lr``, a non-finite
    or negative ``--l2`` and a seed outside ``[0, 2**32)``, quoting the option as typed."""
    for option, value, low in (("batch_size", config["batch_size"], 1),
                               ("print_every", args.print_every, 1),
                               ("save_every", args.save_every, 0),
                               ("steps", args.steps, 1), ("epochs", args.epochs, 1)):
        if value is not None and value < low:
            raise CommandError(f"{_as_typed(args, option, value)}: must be at least {low}")
    if not (math.isfinite(config["lr"]) and config["lr"] > 0):
        raise CommandError(f"{_as_typed(args, 'lr', config['lr'])}: the learning rate must be "
                           f"a positive finite number")
    if not (math.isfinite(config["l2"]) and config["l2"] >= 0):
        raise CommandError(f"{_as_typed(args, 'l2', config['l2'])}: λ must be a finite number "
                           f">= 0")
    if not 0 <= config["seed"] < SEED_LIMIT:
        raise CommandError(f"{_as_typed(args, 'seed', config['seed'])}: a random seed must lie in "
                           f"[0, {SEED_LIMIT - 1}]")


def _model_sizes(config: dict, ds: Dataset) -> list[int]:
    """``--layers`` checked against the data, or the default sizes for them."""
    n_x = ds.x_train.shape[1]
    want_out = 1 if ds.n_classes == 2 else ds.n_classes
    if not config["layers"]:
        return [n_x, *DEFAULT_HIDDEN, want_out]
    sizes = parse_layers(config["layers"])
    if sizes[0] != n_x:
        raise CommandError(f"--layers starts with {sizes[0]} inputs but the data have {n_x} "
                           f"features per example")
    if sizes[-1] != want_out and not (ds.n_classes == 2 and sizes[-1] == 2):
        raise CommandError(f"--layers ends with {sizes[-1]} outputs but the data have "
                           f"{ds.n_classes} classes: end with {want_out}")
    return sizes


def _run_length(args: argparse.Namespace, resumed: SavedRun | None,
                steps_per_epoch: int) -> int:
    """The step to reach: ``--epochs`` whole epochs, or ``--steps`` rounded up to whole
    epochs (``jaxnn.fit`` runs whole epochs)."""
    if args.epochs is not None:
        return args.epochs * steps_per_epoch
    steps = args.steps if args.steps is not None else DEFAULT_STEPS if resumed is None else None
    if steps is None:
        raise CommandError("--resume: say how far to train with --steps N or --epochs N (the "
                           "total, counted from the start of the run)")
    return -(-steps // steps_per_epoch) * steps_per_epoch


def _prepare_out(out: str) -> None:
    """Creates the output folder, or says why it cannot be written into."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f"--out {out}: exists and is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise CommandError(f"--out {out}: cannot create the folder ({err.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CommandError(f"--out {out}: this folder is not writable")


def _plan_run(args: argparse.Namespace) -> RunPlan:
    """Every decision of a run, made and checked before anything is trained."""
    config, resumed = _resolve_run_config(args)
    _check_numbers(config, args)
    saved_scaling = None
    if resumed is not None:
        # a checkpoint written before --scale: files were divided by 255, built-in sets
        # standardized with the (same, seeded) training split's statistics
        legacy = {"method": "255"} if config.get("data") else None
        saved_scaling = resumed.meta.get("scaling", legacy)
    ds = load_dataset(config.get("dataset"), config.get("data"), config.get("test_data"),
                      config["seed"], config.get("scale"), config.get("label_column"),
                      saved_scaling, where=args.resume or "")
    config["scale"] = ds.prepare.method
    sizes = _model_sizes(config, ds)
    config["layers"] = ",".join(map(str, sizes))
    y_train, y_test = ds.y_train, ds.y_test
    if sizes[-1] > 1:  # softmax cross-entropy on integer class indices
        y_train, y_test = (np.asarray(y)[:, 0].astype(np.int32) for y in (y_train, y_test))
    m = ds.x_train.shape[0]
    batch_size = min(config["batch_size"] or m, m)
    steps_per_epoch = m // batch_size
    total = _run_length(args, resumed, steps_per_epoch)
    out = args.out or args.resume or "jaxnn-out"
    _prepare_out(out)
    # a resumed run keeps writing the format it was resumed from, unless told otherwise
    fmt = args.checkpoint_format or (resumed.format if resumed else "npz")
    folder = os.path.join(out, CHECKPOINT_FOLDER)
    if fmt == "sharded":  # said now, not after training
        require("orbax.checkpoint", "distributed", "--checkpoint-format sharded")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise CommandError(f"--checkpoint-format sharded: {folder} exists and is not a "
                               f"folder")
    return RunPlan(config, args.typed, out, ds, sizes, y_train, y_test, batch_size,
                   steps_per_epoch, total, resumed, fmt)


def _restore(plan: RunPlan, model: Any, optimizer: Any) -> RunState:
    """A fresh run's initial state, or the one saved in the ``--resume`` checkpoint."""

    key = jax.random.fold_in(jax.random.key(plan.config["seed"]), 0)
    _, params, state = model.init(key, (-1, plan.sizes[0]))
    opt_state = optimizer.init(params)
    if plan.resumed is None:
        return RunState(params, state, opt_state, 0, CostHistory())
    resumed, m = plan.resumed, plan.data.x_train.shape[0]
    where = os.path.dirname(resumed.path) if resumed.format == "npz" else resumed.path
    if resumed.meta.get("train_examples") != m:
        raise CommandError(f"the run in {where} trained on {resumed.meta.get('train_examples')} "
                           f"examples, the data now have {m}: the data changed")
    start = int(resumed.meta["step"])
    if start >= plan.total:
        raise CommandError(f"the checkpoint in {where} is at step {start}; ask for more with "
                           f"--steps N (N > {start})")
    if start % plan.steps_per_epoch:
        raise CommandError(f"the checkpoint in {where} is at step {start}, inside an epoch of "
                           f"{plan.steps_per_epoch} steps; it was written by an older jaxnn")
    template = _checkpoint_tree(params, state, opt_state, np.zeros(start, np.float32),
                                resumed.format)
    if resumed.format == "npz":
        saved = checkpoint.load(resumed.path, template)
    else:
        saved = _read_sharded(resumed.path, lambda: checkpoint.load_sharded(resumed.path,
                                                                            template))
    return RunState(saved["params"], saved["state"], saved["opt_state"], start,
                    CostHistory(saved.get("costs", ())))


def _checkpoint_tree(params: Any, state: Any, opt_state: Any, costs: np.ndarray,
                     fmt: str) -> dict:
    tree = {"params": params, "state": state, "opt_state": opt_state, "costs": costs}
    if fmt == "sharded" and not costs.size:  # Orbax refuses arrays of size 0 (a step-0 save)
        del tree["costs"]
    return tree


def _save(plan: RunPlan, run: RunState) -> None:
    """Checkpoints the run: parameters, states, the cost history (an array), step and config,
    in the run's format."""
    tree = _checkpoint_tree(run.params, run.state, run.opt_state, run.history.values,
                            plan.checkpoint_format)
    metadata = {"config": plan.config, "train_examples": plan.data.x_train.shape[0],
                "steps_per_epoch": plan.steps_per_epoch,
                "scaling": plan.data.prepare.metadata()}
    if plan.checkpoint_format == "npz":
        checkpoint.save(plan.checkpoint_path, tree, step=run.step, metadata=metadata)
    else:
        _save_sharded(plan.checkpoint_path, tree, step=run.step, metadata=metadata)


def _progress_bar(plan: RunPlan, start: int, disable: bool):
    tqdm = require("tqdm", "cli", "jaxnn train (its progress bar)").tqdm
    # smoothing=0: the rate is steps / time since the count was last restarted
    return tqdm(total=plan.total, initial=start, disable=disable, desc="train", unit="step",
                file=sys.stderr, dynamic_ncols=True, smoothing=0)


def _restart_rate(bar) -> None:
    """Counts the bar's rate from now on, so that it leaves out the first epoch's compilation."""
    if not bar.disable:
        bar.initial = bar.n
        bar.start_t = bar.last_print_t = bar._time()


def _segment_end(step: int, plan: RunPlan, save_every: int) -> int:
    """The step at which the segment starting at ``step`` stops to save: the end of the first
    epoch at or past the next multiple of ``save_every``, or the end of the run."""
    if not save_every:
        return plan.total
    next_save = (step // save_every + 1) * save_every
    return min(plan.total, -(-next_save // plan.steps_per_epoch) * plan.steps_per_epoch)


def _train_loop(plan: RunPlan, model: Any, loss: Any, optimizer: Any, run: RunState,
                stop: StopSignals, args: argparse.Namespace) -> None:
    """Trains ``run`` up to ``plan.total`` with [`jaxnn.fit`][jaxnn.fit], one call per segment
    between
    checkpoints; stops at the end of an epoch when ``stop`` has caught a signal."""


    key = jax.random.fold_in(jax.random.key(plan.config["seed"]), 1)
    print_every = args.print_every or max(1, plan.total // 10)
    bar = _progress_bar(plan, run.step, args.no_progress)
    compiled = False

    def on_epoch(epoch, losses, params, state):
        nonlocal compiled
        costs = np.asarray(losses)
        run.history.extend(costs)
        for s in range(run.step, run.step + costs.size):
            if s % print_every == 0 or s == plan.total - 1:
                bar.write(f"cost after step {s}: {costs[s - run.step]:.6f}")
        run.step += costs.size
        bar.set_postfix(loss=f"{costs[-1]:.4f}", refresh=False)
        if compiled:
            bar.update(costs.size)
        else:  # the first epoch's time is mostly compilation: count the rate from its end
            bar.n += costs.size
            _restart_rate(bar)
            bar.refresh()
            compiled = True
        return stop.signum is not None

    try:
        while run.step < plan.total and stop.signum is None:
            end = _segment_end(run.step, plan, args.save_every)
            result = jaxnn.fit(model, loss, optimizer, run.params, plan.data.x_train,
                               plan.y_train, epochs=(end - run.step) // plan.steps_per_epoch,
                               batch_size=plan.batch_size, key=key,
                               state=run.state, opt_state=run.opt_state,
                               start_epoch=run.step // plan.steps_per_epoch, on_epoch=on_epoch)
            run.params, run.state, run.opt_state = result.params, result.state, result.opt_state
            if run.step < plan.total and stop.signum is None:
                with stop.holding():
                    _save(plan, run)
    finally:
        bar.close()


def _print_plan(plan: RunPlan, start: int, loss: Any) -> None:
    config, ds, m = plan.config, plan.data, plan.data.x_train.shape[0]
    print(f"data: {ds.name}, {m} training and {ds.x_test.shape[0]} test examples, "
          f"{ds.x_train.shape[1]} features, {ds.n_classes} classes")
    print(ds.prepare.describe(np.asarray(ds.raw_train).dtype))
    print(f"model: {config['layers']} ({config['activation']} hidden, "
          f"{'sigmoid' if plan.sizes[-1] == 1 else 'softmax'} output, {loss.name})"
          + (f", dropout {config['dropout']}" if config["dropout"] else "")
          + (f", l2 {config['l2']}" if config["l2"] else ""))
    batches = ("full batch" if plan.batch_size == m else
               f"{plan.steps_per_epoch} steps per epoch, the last {m % plan.batch_size} "
               f"examples of each shuffle left out")
    print(f"training: {config['optimizer']} lr {config['lr']}, steps {start}→{plan.total}, "
          f"batch {plan.batch_size} ({batches}), seed {config['seed']}")


def _interrupted(plan: RunPlan, run: RunState, signum: int) -> int:
    """Saves the run stopped by ``signum``; the exit status is 128 + the signal's number."""
    try:
        _save(plan, run)
    except OSError as err:
        raise CommandError(f"interrupted at step {run.step}, and the checkpoint could not be "
                           f"written: {plan.checkpoint_path}: {err.strerror or err}") from None
    print(f"interrupted ({signal.Signals(signum).name}) at step {run.step}; checkpoint saved to "
          f"{plan.checkpoint_path}; continue with jaxnn train --resume {plan.out} --steps "
          f"{plan.total}", file=sys.stderr)
    return 128 + signum


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _write_metrics(path: str, plan: RunPlan, run: RunState, accuracies: tuple) -> None:
    costs = run.history.values
    metrics = {"step": run.step, "train_accuracy": accuracies[0],
               "test_accuracy": accuracies[1],
               "final_cost": _finite_or_none(float(costs[-1])) if costs.size else None,
               "config": plan.config}
    with open(path, "w") as f:  # strict JSON: a NaN cost is written as null
        json.dump(metrics, f, indent=1, allow_nan=False)


def _report(plan: RunPlan, model: Any, run: RunState, elapsed: float, start: int) -> int:
    """Prints the accuracies; writes the checkpoint, metrics.json and the pictures, each one
    whatever happens to the others (a full disk: exit 1 with one line naming what failed)."""


    ds = plan.data

    def predict(x):
        return jaxnn.predict(model, run.params, x, state=run.state)

    accuracies = tuple(float(jaxnn.accuracy(predict(x), y)) for x, y in
                       ((ds.x_train, plan.y_train), (ds.x_test, plan.y_test)))
    print(f"{run.step - start} steps in {elapsed:.2f} s")
    print(f"train accuracy: {accuracies[0]:.4f}\ntest accuracy: {accuracies[1]:.4f}")
    title = f"{ds.name}: {plan.config['layers']}, {plan.config['optimizer']} lr " \
            f"{plan.config['lr']}"
    writers = {os.path.basename(plan.checkpoint_path): lambda path: _save(plan, run),
               "metrics.json": lambda path: _write_metrics(path, plan, run, accuracies),
               "cost.png": lambda path: plots.cost_curve(path, run.history.values, title=title)}
    if ds.x_train.shape[1] == 2:
        writers["decision_boundary.png"] = lambda path: plots.decision_boundary(
            path, lambda g: predict(ds.prepare(jnp.asarray(g))), np.asarray(ds.raw_train),
            np.asarray(ds.y_train).reshape(-1),
            title=f"{ds.name}: train accuracy {accuracies[0]:.2f}, test {accuracies[1]:.2f}")
    written, failed = [], []
    for name, write in writers.items():
        path = os.path.join(plan.out, name)
        try:
            write(path)
            written.append(path)
        except OSError as err:
            failed.append(f"{path} ({err.strerror or err})")
    if written:
        print("wrote " + ", ".join(written))
    if failed:
        raise CommandError("could not write " + ", ".join(failed))
    return 0


def run(args: argparse.Namespace) -> int:
    """``jaxnn train``: plan, restore, loop, report (see ``jaxnn train --help``)."""
    require("matplotlib", "cli", "jaxnn train (its pictures)").use("Agg")
    require("tqdm", "cli", "jaxnn train (its progress bar)")
    plan = _plan_run(args)
    model = build_model(plan.sizes, plan.config["activation"], plan.config["dropout"])
    loss = loss_for(plan.sizes)
    optimizer = make_optimizer(plan.config["optimizer"], plan.config["lr"], model,
                               plan.config["l2"])
    run = _restore(plan, model, optimizer)
    start = run.step
    _print_plan(plan, start, loss)
    began = time.perf_counter()
    with StopSignals() as stop:  # until everything is written: one signal never loses the run
        _train_loop(plan, model, loss, optimizer, run, stop, args)
        elapsed = time.perf_counter() - began
        with stop.holding():
            if stop.signum is not None and run.step < plan.total:
                return _interrupted(plan, run, stop.signum)
            return _report(plan, model, run, elapsed, start)




def add_command(commands) -> None:
    """Adds ``jaxnn train`` to the sub-command parser."""

    p = commands.add_parser(
        "train", help="train the classic L-layer classifier; draw its cost and decision boundary",
        description="Train the classic L-layer classifier with jaxnn.fit. With no options: the "
        "built-in planar flower (2 features, 2 classes), layers 2,20,7,5,1, relu, full-batch "
        "gradient descent. Writes cost.png, decision_boundary.png (2-D data), metrics.json and "
        "checkpoint.npz (or a sharded checkpoint/ folder) into --out. Ctrl-C or SIGTERM saves "
        "a checkpoint at the end of the epoch and stops; a second one stops at once, without "
        "saving.")
    p.set_defaults(run=run, typed={})

    def typed(name, kind, help):
        p.add_argument(name, action=_Typed, kind=kind, help=help)

    typed("--layers", str, "sizes, input first, e.g. 2,20,7,5,1 (default: n_x,20,7,5,1 or the "
          "number of classes)")
    p.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation (default relu)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="default sgd (gradient descent)")
    typed("--lr", float, f"learning rate (default: sgd {DEFAULT_LR['sgd']}, momentum "
          f"{DEFAULT_LR['momentum']}, adam {DEFAULT_LR['adam']})")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", action=_Typed, kind=int, help=f"optimizer steps in all "
                        f"(default {DEFAULT_STEPS}), rounded up to whole epochs; with --resume, "
                        f"the total to reach")
    length.add_argument("--epochs", action=_Typed, kind=int, help="passes over the training set")
    typed("--batch-size", int, "examples per step (default: all of them); each epoch leaves "
          "out the remainder of its shuffle")
    typed("--seed", int, "seeds the initialization, the train/test split, the batch order and "
          "dropout (default 0)")
    p.add_argument("--dataset", choices=tuple(data.BUILTIN), help="a built-in data set (default "
                   'flower); digits and breast-cancer need pip install "jaxnn[data]"')
    typed("--data", str, "training data: a CSV file with a header row (labels in the last "
          "column, or --label-column), NumPy arrays x.npy,y.npy or an .npz (x/y or "
          "train_set_x/train_set_y), an HDF5 file (train_set_x/train_set_y) or an "
          "MNIST-format pair IMAGES,LABELS (IDX, raw or gzip)")
    typed("--test-data", str, "test data in the same formats (default: 20%% of --data)")
    typed("--label-column", str, "CSV: the labels' column, by name or index (default: the "
          "last)")
    p.add_argument("--scale", choices=SCALES, help="how features are scaled, with the "
                   "training set's statistics (saved in the checkpoint): 255 divides by 255, "
                   "standardize subtracts the mean and divides by the standard deviation, none "
                   "leaves them; default auto: 255 for uint8 pixels, standardize otherwise")
    p.add_argument("--out", help="output folder (default jaxnn-out, or the --resume folder)")
    typed("--l2", float, "λ of the penalty (λ/2)·Σ‖W‖² on weights")
    typed("--dropout", float, "drop rate after each hidden activation")
    p.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR (its "
                   "checkpoint.npz or sharded checkpoint/, whichever it holds)")
    p.add_argument("--checkpoint-format", choices=CHECKPOINT_FORMATS, help="npz: one file, "
                   "checkpoint.npz (the default); sharded: an Orbax folder, checkpoint/, each "
                   "process writing its own shards (pip install \"jaxnn[distributed]\"); "
                   "with --resume, default: the format resumed from")
    typed("--print-every", int, "print the cost every N steps")
    p.add_argument("--save-every", action=_Typed, kind=int, default=0,
                   help="also checkpoint every N steps (at the end of that epoch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


