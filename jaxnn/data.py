"""Data: generated data sets (no download), loaders for users' files, splits and batches.

Every loader returns ``(x, y)`` with examples first: ``x`` of shape ``(m, n_x)`` (float32) and
``y`` of shape ``(m, 1)``. Two-class labels come as float32 0/1 (ready for binary
cross-entropy); labels of more than two classes come as int32 class indices (for softmax
cross-entropy, after ``y[:, 0]``, or [`one_hot`][jaxnn.data.one_hot]).

* Generated in code, deterministic given ``seed``, ``x`` of shape ``(m, 2)``:
  [`planar_flower`][jaxnn.data.planar_flower], [`two_moons`][jaxnn.data.two_moons],
  [`circles`][jaxnn.data.circles], [`spirals`][jaxnn.data.spirals].
* scikit-learn's bundled sets (the ``data`` extra): [`digits`][jaxnn.data.digits],
  [`breast_cancer`][jaxnn.data.breast_cancer].
* Users' files: [`load_h5`][jaxnn.data.load_h5] (the classic ``train_set_x`` / ``train_set_y`` /
  ``test_set_x``
  / ``test_set_y`` / ``list_classes`` layout; the ``data`` extra),
  [`load_idx`][jaxnn.data.load_idx] and
  [`load_mnist`][jaxnn.data.load_mnist] (MNIST-format IDX files, raw or gzip);
  [`load_file`][jaxnn.data.load_file] reads any of them, CSV and NumPy files too, unscaled
  (what ``jaxnn train --data`` reads).
* Preparation: [`train_test_split`][jaxnn.data.train_test_split],
  [`standardize`][jaxnn.data.standardize], [`one_hot`][jaxnn.data.one_hot],
  [`batches`][jaxnn.data.batches].

A file that is missing, truncated or corrupted raises [`DataFileError`][jaxnn.data.DataFileError],
naming the file and what is wrong with it.

Examples:
    A generated set, split, standardized with the training set's statistics, in batches:

    >>> from jaxnn import data
    >>> x, y = data.two_moons(200, seed=0)
    >>> x.shape, y.shape
    ((200, 2), (200, 1))
    >>> x_train, y_train, x_test, y_test = data.train_test_split(x, y, test_fraction=0.25)
    >>> x_train, stats = data.standardize(x_train)
    >>> x_test, _ = data.standardize(x_test, stats)
    >>> [xb.shape[0] for xb, yb in data.batches(jax.random.key(0), x_train, y_train, 64)]
    [64, 64, 22]
"""

from __future__ import annotations

import csv
import gzip
import importlib
import math
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnn.core import check_positive_int

__all__ = [
    "BUILTIN",
    "DataFileError",
    "batches",
    "breast_cancer",
    "circles",
    "digits",
    "load_builtin",
    "load_file",
    "load_h5",
    "load_idx",
    "load_mnist",
    "one_hot",
    "planar_flower",
    "spirals",
    "standardize",
    "train_test_split",
    "two_moons",
]


class DataFileError(ValueError):
    """A data file that is missing, truncated, corrupted or laid out unexpectedly.

    A ``ValueError``; the message starts with the file's path.

    Examples:
        >>> import os, tempfile
        >>> from jaxnn.data import DataFileError, load_idx
        >>> path = os.path.join(tempfile.mkdtemp(), "labels.idx")
        >>> with open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 5, 7, 1]))  # 5 labels declared, 2 given
        >>> try:
        ...     load_idx(path)
        ... except DataFileError as e:
        ...     print(str(e).replace(path, "labels.idx"))
        labels.idx: truncated: dimensions (5,) of uint8 need 5 data bytes, found 2
    """


def _require(module: str, extra: str, what: str):
    """Imports an optional dependency, or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"{what} needs the optional package {module!r}: install it with "
            f'pip install "jaxnn[{extra}]"'
        ) from err


def _labels(y: np.ndarray, where: str = "labels") -> jax.Array:
    """``(m, 1)`` labels: float32 0/1 for two classes, int32 class indices otherwise.

    Raises:
      DataFileError: labels that are not class numbers 0, 1, …: text, NaN, fractions (0.1/0.9
        would otherwise truncate to 0) or negative values (−1/+1 files), naming the fix.
    """
    y = np.asarray(y).reshape(-1, 1)
    if y.dtype == np.bool_:
        y = y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataFileError(f"{where}: labels must be class numbers 0, 1, …, got dtype {y.dtype} "
                            f"(convert text labels to class numbers)")
    if not np.all(np.isfinite(y)):
        raise DataFileError(f"{where}: labels must be class numbers 0, 1, …, got NaN or inf")
    fractional = y[y != np.round(y)]
    if fractional.size:
        raise DataFileError(f"{where}: labels must be whole class numbers 0, 1, …, got "
                            f"{fractional[0]}; threshold soft labels first (y > 0.5)")
    if y.size and y.min() < 0:
        hint = ("; map −1/+1 labels to 0/1 with (y + 1) / 2"
                if set(np.unique(y).tolist()) == {-1, 1} else "")
        raise DataFileError(f"{where}: labels must be class numbers 0, 1, …, got "
                            f"{y.min():g}{hint}")
    if y.size and set(np.unique(y).tolist()) <= {0, 1}:
        return jnp.asarray(y, jnp.float32)
    return jnp.asarray(y, jnp.int32)


# --- generated 2-D data sets ------------------------------------------------------------------


def planar_flower(m: int = 400, *, petals: int = 4, noise: float = 0.2,
                  seed: int = 1) -> tuple[jax.Array, jax.Array]:
    r"""The planar "flower": two classes of points on the petals of a rose curve.

    Half the points of each class lie on alternating petals of $r = a \sin(k \theta)$
    ($a = 4$, $k$ = ``petals``), with Gaussian noise on $\theta$ and $r$; a point is
    $(r \sin \theta, r \cos \theta)$. A linear classifier gets about half right.

    Args:
      m: the number of points, even (``m // 2`` per class).
      petals: $k$, the rose's frequency.
      noise: the standard deviation of the noise on $\theta$ and on $r$.
      seed: seeds the noise.

    Returns:
      ``(x, y)``: ``x`` (m, 2) float32, ``y`` (m, 1) float32 0/1, class 0 first.

    Examples:
        >>> x, y = jaxnn.data.planar_flower(400)
        >>> x.shape, x.dtype, y.shape, int(y.sum())
        ((400, 2), dtype('float32'), (400, 1), 200)
    """
    if m < 2 or m % 2:
        raise ValueError(f"planar_flower: m must be an even number >= 2, got {m}")
    rng = np.random.default_rng(seed)
    per_class = m // 2
    x = np.zeros((m, 2), np.float32)
    y = np.zeros((m, 1), np.float32)
    a = 4.0
    for label in range(2):
        idx = slice(per_class * label, per_class * (label + 1))
        t = np.linspace(label * 3.12, (label + 1) * 3.12, per_class) + rng.normal(
            0, noise, per_class
        )
        r = a * np.sin(petals * t) + rng.normal(0, noise, per_class)
        x[idx] = np.stack([r * np.sin(t), r * np.cos(t)], axis=1)
        y[idx] = label
    return jnp.asarray(x), jnp.asarray(y)


def two_moons(m: int = 400, *, noise: float = 0.1,
              seed: int = 1) -> tuple[jax.Array, jax.Array]:
    r"""Two interleaving half circles, one per class.

    Class 0 lies on $(\cos t, \sin t)$, class 1 on $(1 - \cos t, 0.5 - \sin t)$, $t$ evenly
    spaced in $[0, \pi]$, plus Gaussian noise of standard deviation ``noise``.

    Args:
      m: the number of points (``m // 2`` in class 0, the rest in class 1).
      noise: the standard deviation of the noise on each coordinate.
      seed: seeds the noise.

    Returns:
      ``(x, y)``: ``x`` (m, 2) float32, ``y`` (m, 1) float32 0/1, class 0 first.

    Examples:
        >>> x, y = jaxnn.data.two_moons(100, noise=0.05)
        >>> x.shape, y.shape, int(y.sum())
        ((100, 2), (100, 1), 50)
    """
    if m < 2:
        raise ValueError(f"two_moons: m must be >= 2, got {m}")
    rng = np.random.default_rng(seed)
    n0 = m // 2
    n1 = m - n0
    t0 = np.linspace(0, np.pi, n0)
    t1 = np.linspace(0, np.pi, n1)
    outer = np.stack([np.cos(t0), np.sin(t0)], 1)
    inner = np.stack([1 - np.cos(t1), 0.5 - np.sin(t1)], 1)
    x = np.concatenate([outer, inner]) + rng.normal(0, noise, (m, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n1)])[:, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def circles(m: int = 400, *, factor: float = 0.5, noise: float = 0.08,
            seed: int = 1) -> tuple[jax.Array, jax.Array]:
    """Two concentric circles: class 0 on the outer one (radius 1), class 1 on the inner one
    (radius ``factor``), with Gaussian noise of standard deviation ``noise``.

    Args:
      m: the number of points (``m // 2`` on the outer circle, the rest on the inner one).
      factor: the inner radius, in (0, 1).
      noise: the standard deviation of the noise on each coordinate.
      seed: seeds the noise.

    Returns:
      ``(x, y)``: ``x`` (m, 2) float32, ``y`` (m, 1) float32 0/1, class 0 first.

    Examples:
        >>> x, y = jaxnn.data.circles(200, factor=0.3, noise=0.0)
        >>> radius = jnp.sqrt(jnp.sum(x ** 2, axis=1))
        >>> round(float(radius[0]), 4), round(float(radius[-1]), 4)
        (1.0, 0.3)
    """
    if m < 2:
        raise ValueError(f"circles: m must be >= 2, got {m}")
    if not 0 < factor < 1:
        raise ValueError(f"circles: factor must lie in (0, 1), got {factor}")
    rng = np.random.default_rng(seed)
    n0 = m // 2
    n1 = m - n0
    t0 = np.linspace(0, 2 * np.pi, n0, endpoint=False)
    t1 = np.linspace(0, 2 * np.pi, n1, endpoint=False)
    outer = np.stack([np.cos(t0), np.sin(t0)], 1)
    inner = factor * np.stack([np.cos(t1), np.sin(t1)], 1)
    x = np.concatenate([outer, inner]) + rng.normal(0, noise, (m, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n1)])[:, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def spirals(m: int = 400, *, turns: float = 1.5, noise: float = 0.05,
            seed: int = 1) -> tuple[jax.Array, jax.Array]:
    r"""Two interleaved Archimedean spirals, one per class (the second is the first turned by
    π); radius grows from 0.1 to 1 over ``turns`` turns.

    With $s$ evenly spaced in $[0, 1]$, a point of class $c$ is $(r \cos t, r \sin t)$ with
    $r = 0.1 + 0.9 s$ and $t = 2 \pi \cdot \text{turns} \cdot s + c \pi$, plus Gaussian noise.

    Args:
      m: the number of points (``m // 2`` in class 0, the rest in class 1).
      turns: how many times each arm winds around, > 0.
      noise: the standard deviation of the noise on each coordinate.
      seed: seeds the noise.

    Returns:
      ``(x, y)``: ``x`` (m, 2) float32, ``y`` (m, 1) float32 0/1, class 0 first.

    Examples:
        >>> x, y = jaxnn.data.spirals(300, turns=2.0)
        >>> x.shape, int(y.sum())
        ((300, 2), 150)
    """
    if m < 2:
        raise ValueError(f"spirals: m must be >= 2, got {m}")
    if turns <= 0:
        raise ValueError(f"spirals: turns must be > 0, got {turns}")
    rng = np.random.default_rng(seed)
    n0 = m // 2
    n1 = m - n0
    arms = []
    for n, phase in ((n0, 0.0), (n1, np.pi)):
        s = np.linspace(0.0, 1.0, n)
        t = 2 * np.pi * turns * s + phase
        r = 0.1 + 0.9 * s
        arms.append(np.stack([r * np.cos(t), r * np.sin(t)], 1))
    x = np.concatenate(arms) + rng.normal(0, noise, (m, 2))
    y = np.concatenate([np.zeros(n0), np.ones(n1)])[:, None]
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


# --- scikit-learn's bundled data sets ---------------------------------------------------------


def digits() -> tuple[jax.Array, jax.Array]:
    """scikit-learn's 8×8 handwritten digits: ``x`` (1797, 64) with pixel values 0…16 scaled to
    [0, 1], ``y`` (1797, 1) int32 classes 0…9. Needs the ``data`` extra.

    Examples:
        >>> x, y = jaxnn.data.digits()
        >>> x.shape, y.shape, y.dtype, float(x.max())
        ((1797, 64), (1797, 1), dtype('int32'), 1.0)
        >>> jaxnn.data.one_hot(y).shape  # for softmax cross-entropy
        (1797, 10)
    """
    datasets = _require("sklearn.datasets", "data", "jaxnn.data.digits")
    bunch = datasets.load_digits()
    return jnp.asarray(bunch.data / 16.0, jnp.float32), _labels(bunch.target)


def breast_cancer() -> tuple[jax.Array, jax.Array]:
    """scikit-learn's Wisconsin breast-cancer set: ``x`` (569, 30) raw features (standardize
    them), ``y`` (569, 1) float32, 1 = benign. Needs the ``data`` extra.

    Examples:
        >>> x, y = jaxnn.data.breast_cancer()
        >>> x.shape, y.dtype, int(y.sum())
        ((569, 30), dtype('float32'), 357)
        >>> x, _ = jaxnn.data.standardize(x)
    """
    datasets = _require("sklearn.datasets", "data", "jaxnn.data.breast_cancer")
    bunch = datasets.load_breast_cancer()
    return jnp.asarray(bunch.data, jnp.float32), _labels(bunch.target)


BUILTIN: dict[str, Callable[[int], tuple[jax.Array, jax.Array]]] = {
    "flower": lambda seed: planar_flower(400, seed=seed),
    "moons": lambda seed: two_moons(400, seed=seed),
    "circles": lambda seed: circles(400, seed=seed),
    "spirals": lambda seed: spirals(400, seed=seed),
    "digits": lambda seed: digits(),
    "breast-cancer": lambda seed: breast_cancer(),
}
"""The built-in data sets by name: a function ``seed -> (x, y)``. The generated ones have 400
examples; scikit-learn's ignore their seed argument (they are fixed files). ``jaxnn train
--data NAME`` and [`load_builtin`][jaxnn.data.load_builtin] pick from it: ``"flower"``,
``"moons"``, ``"circles"``, ``"spirals"``, ``"digits"``, ``"breast-cancer"``."""


def load_builtin(name: str, seed: int = 1) -> tuple[jax.Array, jax.Array]:
    """The built-in data set ``name`` (one of [`BUILTIN`][jaxnn.data.BUILTIN]).

    Args:
      name: a key of [`BUILTIN`][jaxnn.data.BUILTIN].
      seed: seeds a generated set (ignored by scikit-learn's).

    Returns:
      ``(x, y)``.

    Raises:
      ValueError: an unknown name (the message lists the known ones).

    Examples:
        >>> from jaxnn.data import BUILTIN, load_builtin
        >>> sorted(BUILTIN)
        ['breast-cancer', 'circles', 'digits', 'flower', 'moons', 'spirals']
        >>> x, y = load_builtin("spirals", seed=3)
        >>> x.shape, y.shape
        ((400, 2), (400, 1))
    """
    if name not in BUILTIN:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(BUILTIN)}")
    return BUILTIN[name](seed)


# --- HDF5 files -------------------------------------------------------------------------------


def _h5_split(f, path: str, split: str | None) -> str:
    """The split to read: ``split``, or the only one the file holds."""
    present = [s for s in ("train", "test") if f"{s}_set_x" in f and f"{s}_set_y" in f]
    if split is None:
        if len(present) != 1:
            found = ", ".join(sorted(f.keys())) or "nothing"
            raise DataFileError(
                f"{path}: expected one pair of datasets train_set_x/train_set_y or "
                f"test_set_x/test_set_y (or pass split=), found: {found}"
            )
        return present[0]
    if split not in present:
        raise DataFileError(f"{path}: no {split}_set_x/{split}_set_y datasets; found "
                            f"{', '.join(sorted(f.keys()))}")
    return split


def _h5_dataset(f, path: str, name: str) -> np.ndarray:
    """The array of dataset ``name`` (an error naming it when it is a group)."""
    h5py = _require("h5py", "data", "jaxnn.data.load_h5")
    node = f[name]
    if not isinstance(node, h5py.Dataset):
        raise DataFileError(f"{path}: {name} is an HDF5 {type(node).__name__.lower()}, "
                            f"expected a dataset")
    try:
        return np.asarray(node[()])
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DataFileError(f"{path}: cannot read {name} ({err})") from err


def _h5_features(x: np.ndarray, path: str, split: str) -> np.ndarray:
    """``(m, ...)`` numbers → ``(m, features)`` as stored."""
    if x.ndim < 2 or x.shape[0] == 0:
        raise DataFileError(f"{path}: {split}_set_x must hold (m, ...) examples with m >= 1, "
                            f"got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise DataFileError(f"{path}: {split}_set_x has non-numeric dtype {x.dtype}")
    return x.reshape(x.shape[0], -1)


def _pixels(x: np.ndarray, where: str) -> jax.Array:
    """Pixel values 0…255 → float32 in [0, 1]."""
    x = x.astype(np.float32)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise DataFileError(f"{where} values must lie in [0, 255], got [{x.min()}, {x.max()}]")
    return jnp.asarray(x / 255.0)


def _read_h5(path: str | os.PathLike, split: str | None
             ) -> tuple[np.ndarray, jax.Array, list[str] | None, str]:
    """``(x as stored, (m, features); labels; classes; the split read)``."""
    h5py = _require("h5py", "data", "jaxnn.data.load_h5")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DataFileError(f"{path}: not a readable HDF5 file ({err})") from err
    with f:
        split = _h5_split(f, path, split)
        x = _h5_dataset(f, path, f"{split}_set_x")
        y = _h5_dataset(f, path, f"{split}_set_y")
        classes = ([c.decode() if isinstance(c, bytes) else str(c)
                    for c in _h5_dataset(f, path, "list_classes")]
                   if "list_classes" in f else None)
    x = _h5_features(x, path, split)
    m = x.shape[0]
    if y.ndim == 2 and y.shape[0] == 1 and y.shape[1] == m and m != 1:
        y = y.reshape(-1)
    if y.size != m or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise DataFileError(f"{path}: {split}_set_y has shape {y.shape}, expected {m} labels "
                            f"for the {m} examples of {split}_set_x")
    return x, _labels(y, f"{path}: {split}_set_y"), classes, split


def load_h5(path: str | os.PathLike,
            split: str | None = None) -> tuple[jax.Array, jax.Array, list[str] | None]:
    """Images and labels from an HDF5 file in the classic cat-vs-non-cat layout.

    The file holds ``{split}_set_x`` (``m`` images, ``(m, h, w, c)`` or ``(m, h, w)``, pixel
    values 0…255), ``{split}_set_y`` (``m`` class numbers, shape ``(m,)``, ``(m, 1)`` or
    ``(1, m)``) and optionally ``list_classes``. Images are flattened to ``(m, h·w·c)`` and
    scaled to [0, 1]; labels become ``(m, 1)``.

    Args:
      path: the ``.h5`` file.
      split: ``"train"`` or ``"test"``; by default the one the file holds (an error if it holds
        both or neither).

    Returns:
      ``(x, y, classes)``, ``classes`` the decoded ``list_classes`` (``None`` when absent).

    Raises:
      DataFileError: the file is missing or unreadable, holds no (or both) splits, or its
        images and labels do not match.

    Examples:
        A file in that layout, written with ``h5py``:

        >>> import os, tempfile, h5py
        >>> path = os.path.join(tempfile.mkdtemp(), "train.h5")
        >>> with h5py.File(path, "w") as f:
        ...     f["train_set_x"] = np.full((3, 2, 2, 3), 255, np.uint8)
        ...     f["train_set_y"] = np.array([0, 1, 1])
        ...     f["list_classes"] = np.array([b"non-cat", b"cat"])
        >>> x, y, classes = jaxnn.data.load_h5(path)
        >>> x.shape, float(x.max()), y[:, 0].tolist(), classes
        ((3, 12), 1.0, [0.0, 1.0, 1.0], ['non-cat', 'cat'])
    """
    x, y, classes, split = _read_h5(path, split)
    return _pixels(x, f"{os.fspath(path)}: {split}_set_x"), y, classes


# --- IDX (MNIST-format) files -----------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """An array from an IDX file (the MNIST format), raw or gzip-compressed.

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B
    int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions, then each
    dimension as a big-endian uint32; the data follows, big-endian, and must fill exactly the
    product of the dimensions. Gzip is recognized by its magic bytes, whatever the file name.

    Args:
      path: the file.

    Returns:
      A NumPy array of the declared shape and type, in native byte order.

    Raises:
      DataFileError: the file is missing, not IDX, truncated, has trailing bytes, or its gzip
        data is corrupted.

    Examples:
        >>> import gzip, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "images.idx.gz")
        >>> header = bytes([0, 0, 0x08, 3]) + np.array([2, 2, 3], ">u4").tobytes()
        >>> with open(path, "wb") as f:
        ...     _ = f.write(gzip.compress(header + bytes(range(12))))
        >>> a = jaxnn.data.load_idx(path)
        >>> a.shape, a.dtype, a[1, 1].tolist()
        ((2, 2, 3), dtype('uint8'), [9, 10, 11])
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as err:
        raise DataFileError(f"{path}: no such file") from err
    except OSError as err:
        raise DataFileError(f"{path}: cannot read ({err})") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataFileError(f"{path}: corrupted or truncated gzip data ({err})") from err
    if len(raw) < 4:
        raise DataFileError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataFileError(f"{path}: not an IDX file (magic number starts with "
                            f"{raw[:4].hex()}, expected 0000 then type and rank bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataFileError(f"{path}: unknown IDX data type 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataFileError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, "
                            f"the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # a Python int: no overflow
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataFileError(f"{path}: {what}: dimensions {dims} of {dtype.name} need {expected} "
                            f"data bytes, found {got}")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def load_mnist(images: str | os.PathLike,
               labels: str | os.PathLike) -> tuple[jax.Array, jax.Array]:
    """MNIST-format images and labels (IDX files, raw or gzip).

    Returns ``x`` of shape ``(m, h·w)`` (pixel values scaled to [0, 1]) and ``y`` of shape
    ``(m, 1)`` (int32 classes; float32 0/1 when only two classes occur).

    Args:
      images: the images' IDX file, ``(m, h, w)`` (e.g. ``train-images-idx3-ubyte.gz``).
      labels: the labels' IDX file, ``(m,)`` (e.g. ``train-labels-idx1-ubyte.gz``).

    Returns:
      ``(x, y)``.

    Raises:
      DataFileError: a file is unreadable (see [`load_idx`][jaxnn.data.load_idx]), or the two
        do not match.

    Examples:
        Two images of 2×2 pixels and their labels, written in the IDX format:

        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> def idx(name, dims, data):
        ...     path = os.path.join(folder, name)
        ...     with open(path, "wb") as f:
        ...         header = bytes([0, 0, 0x08, len(dims)]) + np.array(dims, ">u4").tobytes()
        ...         _ = f.write(header + bytes(data))
        ...     return path
        >>> images = idx("images.idx", [2, 2, 2], [0, 255, 0, 255, 51, 0, 0, 0])
        >>> labels = idx("labels.idx", [2], [7, 3])
        >>> x, y = jaxnn.data.load_mnist(images, labels)
        >>> x.shape, round(float(x[1, 0]), 4), y[:, 0].tolist()
        ((2, 4), 0.2, [7, 3])
    """
    x, y = _read_idx_pair(images, labels)
    if x.dtype == np.uint8:
        x = x / 255.0
    return jnp.asarray(x, jnp.float32), y


def _read_idx_pair(images: str | os.PathLike,
                   labels: str | os.PathLike) -> tuple[np.ndarray, jax.Array]:
    """``(x as stored, (m, h·w); labels)`` from an IDX pair."""
    x = load_idx(images)
    y = load_idx(labels)
    if x.ndim < 2:
        raise DataFileError(f"{os.fspath(images)}: expected images (m, rows, cols), got "
                            f"dimensions {x.shape}")
    if y.ndim != 1:
        raise DataFileError(f"{os.fspath(labels)}: expected a 1-D label file, got dimensions "
                            f"{y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataFileError(f"{os.fspath(images)} has {x.shape[0]} images but "
                            f"{os.fspath(labels)} has {y.shape[0]} labels")
    return x.reshape(x.shape[0], -1), _labels(y, os.fspath(labels))


# --- any supported file: CSV, NumPy, HDF5, IDX ----------------------------------------------


def load_file(path: str | os.PathLike, *,
              label_column: str | None = None) -> tuple[np.ndarray, jax.Array]:
    r"""Features and labels from a user's file, in any format ``jaxnn train --data`` reads.

    The format follows the path:

    * ``data.csv``: comma-separated, a header row of column names, one example per line; the
      labels are the column named ``label_column`` (or its index, ``"0"``, ``"-1"``; the last
      column by default), the features every other column;
    * ``x.npy,y.npy``: two NumPy arrays, the features and the labels;
    * ``data.npz``: arrays ``x`` and ``y``, or ``train_set_x`` / ``train_set_y`` (or
      ``test_set_x`` / ``test_set_y``), as ``numpy.savez`` writes them;
    * ``data.h5``: the HDF5 layout of [`load_h5`][jaxnn.data.load_h5];
    * ``IMAGES,LABELS``: an MNIST-format IDX pair ([`load_mnist`][jaxnn.data.load_mnist]).

    The features come back **as stored**, flattened to ``(m, n)``: nothing is scaled, so the
    dtype still tells uint8 pixels (divide by 255) from real-valued features (standardize them,
    [`standardize`][jaxnn.data.standardize]). Labels are checked and converted as by every
    loader (module doc). Nothing is unpickled.

    Args:
      path: the file, or the two files joined by a comma.
      label_column: CSV only: the labels' column, by name or index.

    Returns:
      ``(x, y)``: ``x`` a NumPy array ``(m, n)`` in the file's dtype (float64 for CSV), ``y``
        ``(m, 1)`` labels.

    Raises:
      DataFileError: the file is missing or unreadable, of an unknown format, holds no or
        non-numeric features, NaN or infinite features, labels that are not class numbers, or
        features and labels of different lengths; the message names the file and the place.
      ValueError: ``label_column`` for a file that is not CSV.

    Examples:
        >>> import os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> path = os.path.join(folder, "flowers.csv")
        >>> with open(path, "w") as f:
        ...     _ = f.write("kind,length,width\n0,5.1,3.5\n1,7.0,3.2\n2,6.3,3.3\n")
        >>> x, y = jaxnn.data.load_file(path, label_column="kind")  # default: the last column
        >>> x.tolist(), y[:, 0].tolist()
        ([[5.1, 3.5], [7.0, 3.2], [6.3, 3.3]], [0, 1, 2])

        A pair of ``.npy`` files, and the same arrays in one ``.npz``:

        >>> np.save(os.path.join(folder, "x.npy"), np.arange(6, dtype=np.uint8).reshape(3, 2))
        >>> np.save(os.path.join(folder, "y.npy"), np.array([0, 1, 1]))
        >>> x, y = jaxnn.data.load_file(os.path.join(folder, "x.npy") + ","
        ...                             + os.path.join(folder, "y.npy"))
        >>> x.dtype, y[:, 0].tolist()
        (dtype('uint8'), [0.0, 1.0, 1.0])
        >>> np.savez(os.path.join(folder, "set.npz"), x=x, y=np.asarray(y))
        >>> jaxnn.data.load_file(os.path.join(folder, "set.npz"))[0].shape
        (3, 2)
    """
    path = os.fspath(path)
    parts = path.split(",")
    is_csv = len(parts) == 1 and path.lower().endswith(".csv")
    if label_column is not None and not is_csv:
        raise ValueError(f"load_file: label_column is for CSV files; {path} is not one (.csv)")
    if len(parts) == 2 and all(p.lower().endswith(".npy") for p in parts):
        return _checked(_read_npy(parts[0]), _read_npy(parts[1]), parts[0], parts[1])
    if len(parts) == 2:
        return _checked(*_read_idx_pair(*parts), parts[0], parts[1])
    if len(parts) > 2:
        raise DataFileError(f"{path}: expected one file or a pair FEATURES,LABELS, got "
                            f"{len(parts)} names")
    lower = path.lower()
    if is_csv:
        return _read_csv(path, label_column)
    if lower.endswith(".npz"):
        return _read_npz(path)
    if lower.endswith((".h5", ".hdf5")):
        x, y, _, split = _read_h5(path, None)
        return _checked(x, y, f"{path}: {split}_set_x", f"{path}: {split}_set_y")
    if lower.endswith(".npy"):
        raise DataFileError(f"{path}: a .npy file holds one array: give the features and the "
                            f"labels as a pair x.npy,y.npy")
    raise DataFileError(f"{path}: cannot tell the format: give a CSV file (.csv, a header "
                        f"row), NumPy arrays (x.npy,y.npy or .npz), an HDF5 file (.h5, .hdf5) "
                        f"or an IDX pair IMAGES,LABELS (MNIST format, raw or gzip)")


def _checked(x: np.ndarray, y: Any, x_where: str, y_where: str) -> tuple[np.ndarray, jax.Array]:
    """Features ``(m, n)`` as stored, numeric and finite, and as many labels ``(m, 1)``."""
    if x.dtype == np.bool_:  # 0/1 features, not pixels
        x = x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataFileError(f"{x_where}: features must be real numbers, got dtype {x.dtype}")
    if x.ndim == 1:  # one feature
        x = x[:, None]
    if x.ndim == 0 or x.shape[0] == 0 or x.size == 0:
        raise DataFileError(f"{x_where}: expected (m, features) with m >= 1 examples and at "
                            f"least one feature, got shape {x.shape}")
    x = x.reshape(x.shape[0], -1)
    if np.issubdtype(x.dtype, np.floating):
        bad = np.argwhere(~np.isfinite(x))
        if bad.size:
            i, j = bad[0]
            raise DataFileError(f"{x_where}: feature {j} of example {i} is {x[i, j]} ({len(bad)} "
                                f"non-finite values); fill in or drop missing values first")
    if not isinstance(y, jax.Array):
        y = np.asarray(y)
        if not (y.ndim == 1 or (y.ndim == 2 and 1 in y.shape)):
            raise DataFileError(f"{y_where}: expected one class number per example, shape (m,) "
                                f"or (m, 1), got {y.shape} (one-hot rows: y.argmax(1))")
        y = _labels(y, y_where)
    if y.shape[0] != x.shape[0]:
        raise DataFileError(f"{x_where} has {x.shape[0]} examples but {y_where} has "
                            f"{y.shape[0]} labels")
    return x, y


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DataFileError(f"{path}: holds Python objects (a pickled array), which jaxnn "
                                f"does not load; save a numeric array") from None
        raise DataFileError(f"{path}: not a readable .npy file ({err})") from None
    except OSError as err:
        raise DataFileError(f"{path}: cannot read ({err})") from None


def _read_npz(path: str) -> tuple[np.ndarray, jax.Array]:
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise DataFileError(f"{path}: not a readable .npz file ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: holds a single array, expected an .npz archive of x and y")
    with archive:
        names = set(archive.files)
        pairs = [(a, b) for a, b in (("x", "y"), ("train_set_x", "train_set_y"),
                                     ("test_set_x", "test_set_y")) if {a, b} <= names]
        if len(pairs) != 1:
            found = ", ".join(sorted(names)) or "nothing"
            raise DataFileError(f"{path}: expected one pair of arrays x/y, train_set_x/"
                                f"train_set_y or test_set_x/test_set_y, found: {found}")
        (x_name, y_name), = pairs
        try:
            x, y = archive[x_name], archive[y_name]
        except ValueError as err:
            if "allow_pickle" in str(err):
                raise DataFileError(f"{path}: holds Python objects (pickled arrays), which "
                                    f"jaxnn does not load; save numeric arrays") from None
            raise DataFileError(f"{path}: cannot read its arrays ({err})") from None
        except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as err:
            raise DataFileError(f"{path}: corrupted or truncated ({err})") from None
    return _checked(x, y, f"{path}: {x_name}", f"{path}: {y_name}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: str, label_column: str | None) -> tuple[np.ndarray, jax.Array]:
    """A CSV file with a header row: the label column and the feature columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    except FileNotFoundError:
        raise DataFileError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise DataFileError(f"{path}: not a text CSV file (not UTF-8)") from None
    except (OSError, csv.Error) as err:
        raise DataFileError(f"{path}: cannot read as CSV ({err})") from None
    if not rows:
        raise DataFileError(f"{path}: empty: expected a header row, then one example per line")
    header = [name.strip() for name in rows[0]]
    if all(_is_number(name) for name in header):
        raise DataFileError(f"{path}: the first line holds numbers, expected a header row of "
                            f"column names (add one, e.g. {','.join(_names(len(header)))})")
    if len(header) < 2:
        raise DataFileError(f"{path}: one column ({header[0]!r}); expected feature columns and "
                            f"a label column, separated by commas")
    if len(rows) == 1:
        raise DataFileError(f"{path}: a header row and no examples")
    label = _column_index(path, header, label_column)
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataFileError(f"{path}: line {number} has {len(row)} fields, the header has "
                                f"{len(header)}")
    features = [j for j in range(len(header)) if j != label]
    cells = np.array([[cell.strip() for cell in row] for row in rows[1:]])
    x = np.empty((len(rows) - 1, len(features)), np.float64)
    for k, j in enumerate(features):
        try:
            x[:, k] = cells[:, j].astype(np.float64)
        except ValueError:
            i = next(i for i, cell in enumerate(cells[:, j]) if not _is_number(cell))
            what = repr(str(cells[i, j])) if cells[i, j] else "empty"
            raise DataFileError(f"{path}: line {i + 2}, column {header[j]!r}: {what} is not a "
                                f"number; fill in or drop missing values first") from None
    y = cells[:, label]
    where = f"{path}: column {header[label]!r}"
    text = [str(cell) for cell in y if not _is_number(cell)]
    if text:
        raise DataFileError(f"{where}: labels must be class numbers 0, 1, …, got "
                            f"{text[0]!r} (convert text labels to class numbers)")
    return _checked(x, y.astype(np.float64), f"{path}: features", where)


def _names(n: int) -> list[str]:
    return [f"x{j}" for j in range(n - 1)] + ["label"]


def _column_index(path: str, header: list[str], label_column: str | None) -> int:
    if label_column is None:
        return len(header) - 1
    if label_column in header:
        return header.index(label_column)
    try:
        index = int(label_column)
    except ValueError:
        index = None
    if index is not None and -len(header) <= index < len(header):
        return index % len(header)
    raise DataFileError(f"{path}: no column {label_column!r} for the labels; the header has "
                        f"{', '.join(map(repr, header))} (or give an index from "
                        f"{-len(header)} to {len(header) - 1})")


# --- preparation ------------------------------------------------------------------------------


def train_test_split(x: jax.Array, y: jax.Array, *, test_fraction: float = 0.2,
                     seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Splits ``(x, y)`` at random into ``(x_train, y_train, x_test, y_test)``.

    ``round(test_fraction · m)`` examples go to the test set; the permutation is drawn from
    ``seed``, so the split is reproducible.

    Args:
      x: the inputs, examples first.
      y: the targets, examples first.
      test_fraction: the share of examples to test on, in (0, 1).
      seed: seeds the permutation.

    Returns:
      ``(x_train, y_train, x_test, y_test)``.

    Raises:
      ValueError: ``x`` and ``y`` differ in length, or one side would be empty.

    Examples:
        >>> x, y = jaxnn.data.circles(50)
        >>> x_train, y_train, x_test, y_test = jaxnn.data.train_test_split(x, y, test_fraction=0.2)
        >>> x_train.shape, y_train.shape, x_test.shape, y_test.shape
        ((40, 2), (40, 1), (10, 2), (10, 1))
    """
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(f"train_test_split: x has {m} examples but y has {y.shape[0]}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"train_test_split: test_fraction must lie in (0, 1), got "
                         f"{test_fraction}")
    n_test = round(test_fraction * m)
    if n_test == 0 or n_test == m:
        raise ValueError(f"train_test_split: test_fraction {test_fraction} of {m} examples "
                         f"leaves {m - n_test} to train on and {n_test} to test on")
    order = np.random.default_rng(seed).permutation(m)
    train, test = order[n_test:], order[:n_test]
    return x[train], y[train], x[test], y[test]


def standardize(x: jax.Array,
                stats: tuple | None = None) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    r"""Features shifted to mean 0 and scaled to standard deviation 1.

    For each feature $j$ over the $m$ examples (the population standard deviation):

    $$\hat{x}_{ij} = \frac{x_{ij} - \mu_j}{\sigma_j} \qquad
    \mu_j = \frac{1}{m} \sum_{i} x_{ij} \qquad
    \sigma_j = \sqrt{\frac{1}{m} \sum_{i} (x_{ij} - \mu_j)^2}$$

    with $\sigma_j$ replaced by 1 where it is 0.

    Args:
      x: ``(m, n)`` features.
      stats: ``(mean, std)`` to use (those of the training set, for a test set); computed from
        ``x`` when omitted. A constant feature (std 0) is only shifted.

    Returns:
      ``((x − mean) / std, (mean, std))``, ``mean`` and ``std`` of shape ``(1, n)``.

    Raises:
      ValueError: ``stats`` are for another number of features.

    Examples:
        >>> x = jnp.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
        >>> z, (mean, std) = jaxnn.data.standardize(x)
        >>> z[:, 0].tolist(), z[:, 1].tolist()  # the constant feature is only shifted
        ([-1.224744..., 0.0, 1.224744...], [0.0, 0.0, 0.0])
        >>> mean.tolist()
        [[3.0, 5.0]]

        A test set uses the training set's statistics:

        >>> z_test, _ = jaxnn.data.standardize(jnp.array([[3.0, 6.0]]), (mean, std))
        >>> z_test.tolist()
        [[0.0, 1.0]]
    """
    x = jnp.asarray(x)
    if stats is None:
        mean = jnp.mean(x, axis=0, keepdims=True)
        std = jnp.std(x, axis=0, keepdims=True)
        stats = (mean, jnp.where(std > 0, std, 1.0).astype(x.dtype))
    mean, std = stats
    if mean.shape[-1] != x.shape[-1]:
        raise ValueError(f"standardize: stats are for {mean.shape[-1]} features, x has "
                         f"{x.shape[-1]}")
    return (x - mean) / std, stats


def one_hot(labels: Any, num_classes: int | None = None, dtype: Any = jnp.float32) -> jax.Array:
    r"""Integer labels (shape ``(m,)`` or ``(m, 1)``) as one-hot rows ``(m, num_classes)``.

    ``num_classes`` defaults to ``max(labels) + 1``; labels outside ``[0, num_classes)`` raise.
    Row $i$ is the indicator of label $y_i$:

    $$Y_{ik} = \mathbf{1}[y_i = k] \qquad k = 0, \dots, K - 1$$

    Args:
      labels: whole class numbers, ``(m,)`` or ``(m, 1)`` (``y`` as the loaders return it).
      num_classes: $K$.
      dtype: the result's dtype.

    Returns:
      An ``(m, num_classes)`` array of 0 and 1.

    Raises:
      ValueError: labels of another shape, fractional, or outside ``[0, num_classes)``.

    Examples:
        >>> jaxnn.data.one_hot(jnp.array([[2], [0], [1]])).tolist()
        [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
        >>> jaxnn.data.one_hot(np.array([1, 0]), num_classes=4).shape
        (2, 4)
    """
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"one_hot: labels must have shape (m,) or (m, 1), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError("one_hot: labels must be whole numbers")
        labels = labels.astype(np.int64)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"one_hot: labels must lie in [0, {num_classes - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    return jax.nn.one_hot(jnp.asarray(labels), num_classes, dtype=dtype)


def _examples_in(tree: Any, name: str, where: str) -> int:
    """The number of examples of a pytree of arrays: the leading size its leaves share.

    Inputs may be pytrees, ``(x, lengths)`` or ``(x, mask)`` for sequences, as the layers
    take them; every leaf holds the examples on its leading axis.

    Args:
      tree: an array or a pytree of arrays.
      name: what it is, for the message (``"x"``).
      where: the function asking, for the message.

    Returns:
      The leading size of every leaf.

    Raises:
      ValueError: no leaf, a leaf without a leading axis, or leaves of different leading sizes
        (each named by its path).
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    if not leaves:
        raise ValueError(f"{where}: {name} holds no array")
    named = [(name + jax.tree_util.keystr(path), np.shape(leaf)) for path, leaf in leaves]
    for leaf_name, shape in named:
        if len(shape) == 0:
            raise ValueError(f"{where}: {leaf_name} is a scalar; every leaf of {name} needs the "
                             f"examples on a leading axis")
    first_name, first_shape = named[0]
    for leaf_name, shape in named[1:]:
        if shape[0] != first_shape[0]:
            raise ValueError(f"{where}: every leaf of {name} holds the examples on its leading "
                             f"axis, but {first_name} has {first_shape[0]} and {leaf_name} has "
                             f"{shape[0]} (shapes {tuple(first_shape)} and {tuple(shape)})")
    return first_shape[0]


def batches(
    key: jax.Array,
    x: Any,
    y: Any,
    batch_size: int,
    *,
    drop_last: bool = False,
) -> Iterator[tuple[Any, Any]]:
    """Shuffled mini-batches of ``(x, y)`` drawn with ``key``.

    The examples are permuted by ``jax.random.permutation(key, m)`` and cut into batches of
    ``batch_size``. When ``batch_size`` does not divide ``m`` the last, shorter batch is kept
    (``drop_last=False``, the default: no example is lost) or dropped (``drop_last=True``: every
    batch has the same shape, so a jitted step compiles once). The order is a pure function of
    ``key``: derive the key of epoch ``e`` as ``jax.random.fold_in(key, e)`` and a run can
    resume at any epoch.

    Args:
      key: the PRNG key of the permutation.
      x: the inputs, examples first: an array, or a pytree of arrays (``(x, lengths)``,
        ``(x, mask)``) batched leaf by leaf along the leading axis.
      y: the targets, examples first (an array or a pytree likewise).
      batch_size: examples per batch, a positive int.
      drop_last: drop the last, shorter batch.

    Yields:
      ``(x_batch, y_batch)`` pairs.

    Raises:
      ValueError: ``x`` and ``y`` differ in length, the leaves of ``x`` (or ``y``) differ in
        leading size, the set is empty, or ``batch_size`` is not a positive int.

    Examples:
        >>> x, y = jaxnn.data.two_moons(10)
        >>> key = jax.random.key(0)
        >>> [xb.shape for xb, yb in jaxnn.data.batches(key, x, y, 4)]
        [(4, 2), (4, 2), (2, 2)]
        >>> [xb.shape for xb, yb in jaxnn.data.batches(key, x, y, 4, drop_last=True)]
        [(4, 2), (4, 2)]
        >>> epoch_3 = jaxnn.data.batches(jax.random.fold_in(key, 3), x, y, 4)

        Padded sequences with their lengths, batched together:

        >>> sequences, lengths = jnp.zeros((10, 6, 3)), jnp.arange(10) % 6 + 1
        >>> [(xb.shape, lb.shape) for (xb, lb), yb in jaxnn.data.batches(
        ...     key, (sequences, lengths), y, 4, drop_last=True)]
        [((4, 6, 3), (4,)), ((4, 6, 3), (4,))]
    """
    m = _examples_in(x, "x", "batches")
    n_y = _examples_in(y, "y", "batches")
    if n_y != m:
        raise ValueError(f"batches: x has {m} examples but y has {n_y}")
    batch_size = check_positive_int("batches", "batch_size", batch_size)  # np.int64 too
    if m == 0:
        raise ValueError("batches: empty data set (0 examples)")
    order = jax.random.permutation(key, m)
    stop = m - m % batch_size if drop_last else m
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield jax.tree.map(lambda a, idx=idx: a[idx], (x, y))
