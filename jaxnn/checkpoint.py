"""Checkpoints: any pytree of arrays to one ``.npz`` file and back, with no pickle anywhere.

A checkpoint holds one array per leaf, keyed by the leaf's tree path (``"[0]['W']"``,
``"[1].mu[0]['b']"``), and a small JSON entry (``__metadata__``) with the format version, the
step, the dtype and shape of every leaf, and whatever the caller adds (a training
configuration, say). Files are read with ``allow_pickle=False``.

Loading takes a *template*, a pytree of the same structure (``model.init``'s params and
``optimizer.init(params)``, for instance): the loaded arrays are put back into the template's
tree, so NamedTuples (optax states), tuples and dicts come back as they were. Structure,
shapes and dtypes are checked against the template first, and the first mismatch is named
(its path, what the template expects and what the file holds).

Writes are atomic: the file is written to a temporary file in the same folder, flushed to
disk (``fsync``) and renamed over the destination (``os.replace``), so a crash leaves either
the old checkpoint or the new one, never half of one. The next save to the same file removes
what a killed one left behind, and a checkpoint written over keeps its file mode.

Examples:
    >>> import jax.numpy as jnp, optax, tempfile, os
    >>> from jaxnn import checkpoint
    >>> params = {"W": jnp.ones((2, 3)), "b": jnp.zeros(3)}
    >>> tree = (params, optax.adam(1e-3).init(params))
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> checkpoint.save(path, tree, step=7)
    >>> restored = checkpoint.load(path, tree)
    >>> checkpoint.load_metadata(path)["step"]
    7
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FORMAT_VERSION", "CheckpointError", "load", "load_metadata", "save"]
__all__ += ["SHARDED_FORMAT_VERSION", "load_sharded", "load_sharded_metadata", "save_sharded"]

FORMAT_VERSION = 1
"""The checkpoint format this jaxnn writes and reads, kept in every file's metadata; a file of
another version raises [`CheckpointError`][jaxnn.checkpoint.CheckpointError] on loading."""
_METADATA_KEY = "__metadata__"
_TMP_PREFIX = ".tmp-"  # then the destination's name, the writer's pid, a random part


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, or does not match the template.

    A ``ValueError``; the message names the file and the first leaf that differs.

    Examples:
        >>> import os, tempfile
        >>> from jaxnn import checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> checkpoint.save(path, {"W": jnp.ones((2, 3))})
        >>> try:
        ...     checkpoint.load(path, {"W": jnp.ones((3, 2))})
        ... except checkpoint.CheckpointError as e:
        ...     print(str(e).replace(path, "ckpt.npz"))
        ckpt.npz: shape mismatch at ['W']: expected (3, 2), got (2, 3)
    """


def _leaf_path(path) -> str:
    return jax.tree_util.keystr(path)


def _is_key_array(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _flatten(tree) -> list[tuple[str, Any]]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = []
    seen = set()
    for path, leaf in leaves:
        name = _leaf_path(path)
        if name == _METADATA_KEY or name in seen:
            raise CheckpointError(f"checkpoint: tree path {name!r} is not a unique leaf name")
        seen.add(name)
        out.append((name, leaf))
    return out


def _dtype_name(x) -> str:
    if _is_key_array(x):
        return f"key<{jax.random.key_impl(x)}>"
    return np.dtype(np.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype).name


def _storable(x) -> np.ndarray:
    """The array as stored: typed PRNG keys as their raw uint32 data; dtypes numpy cannot read
    back without pickle (bfloat16, float8) as unsigned integers of the same width."""
    if _is_key_array(x):
        return np.asarray(jax.random.key_data(x))
    a = np.asarray(x)
    if a.dtype.kind == "V" or a.dtype.type.__module__.startswith("ml_dtypes"):
        return a.view(f"u{a.dtype.itemsize}")
    return a


def save(path: str | os.PathLike, tree: Any, *, step: int | None = None,
         metadata: dict | None = None) -> None:
    """Writes every leaf of ``tree`` to ``path`` (a ``.npz`` file), atomically.

    Args:
      path: the destination file; its folder must exist.
      tree: any pytree of arrays (params, layer state, optax state, PRNG keys).
      step: the training step, kept in the metadata.
      metadata: more JSON-serializable information to keep (see
        [`load_metadata`][jaxnn.checkpoint.load_metadata]).

    Raises:
      TypeError: ``metadata`` is not JSON-serializable.
      CheckpointError: two leaves of ``tree`` have the same path name.

    Examples:
        Parameters, optimizer state and a PRNG key in one file:

        >>> import os, tempfile, optax
        >>> from jaxnn import checkpoint
        >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
        >>> opt_state = optax.adam(1e-3).init(params)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> checkpoint.save(path, (params, opt_state, jax.random.key(1)), step=100,
        ...                 metadata={"lr": 1e-3, "layers": [3, 1]})
        >>> checkpoint.load_metadata(path)
        {'step': 100, 'lr': 0.001, 'layers': [3, 1]}
    """
    path = os.fspath(path)
    leaves = _flatten(tree)
    meta = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "leaves": {name: {"dtype": _dtype_name(leaf), "shape": list(np.shape(leaf))}
                   for name, leaf in leaves},
        "user": metadata or {},
    }
    try:
        meta_bytes = json.dumps(meta).encode()
    except TypeError as err:
        raise TypeError(f"checkpoint.save: metadata must be JSON-serializable ({err})") from err
    arrays = {name: _storable(leaf) for name, leaf in leaves}
    arrays[_METADATA_KEY] = np.frombuffer(meta_bytes, np.uint8)

    folder = os.path.dirname(os.path.abspath(path))
    _remove_stale_temporaries(path)
    prefix = f"{_TMP_PREFIX}{os.path.basename(path)}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".npz", dir=folder)
    try:
        os.chmod(tmp, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _mode_for(path: str) -> int:
    """The mode of the checkpoint ``path`` replaces (0600 stays 0600), else that of a new file
    (mkstemp's 0600 would make every checkpoint private)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _remove_stale_temporaries(path: str) -> None:
    """Removes the temporary files of saves to ``path`` by processes that no longer run (a save
    killed mid-write leaves one); a running process's save in progress is left alone."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f"{_TMP_PREFIX}{name}."
    for entry in os.listdir(folder):
        if not (entry.startswith(prefix) and entry.endswith(".npz")):
            continue
        pid = entry[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, entry))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, say: it exists
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _read(path: str) -> tuple[dict[str, np.ndarray], dict]:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error) as err:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted or truncated: "
                              f"{err})") from err
    if _METADATA_KEY not in arrays:
        raise CheckpointError(f"{path}: not a jaxnn checkpoint (no {_METADATA_KEY} entry)")
    try:
        meta = json.loads(arrays.pop(_METADATA_KEY).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: corrupted metadata ({err})") from err
    _check_metadata(path, meta, arrays)
    return arrays, meta


def _check_metadata(path: str, meta: Any, arrays: dict[str, np.ndarray]) -> None:
    """Valid JSON of the wrong shape (a list, a string, a dict lacking an entry) is a
    ``CheckpointError`` naming the file and what is wrong, never an ``AttributeError`` or a
    ``KeyError`` from reading it: ``{"format_version": 1, "step": int or null, "leaves":
    {name: {"dtype": str, "shape": [int, …]}} for every stored array, "user": {…}}``."""

    def corrupted(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupted metadata: {what}")

    if not isinstance(meta, dict):
        raise corrupted(f"expected a JSON object, got {type(meta).__name__} {meta!r:.60}")
    if "format_version" not in meta:
        raise corrupted("no 'format_version' entry")
    version = meta["format_version"]
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this jaxnn reads "
                              f"version {FORMAT_VERSION}")
    missing = [key for key in ("step", "leaves", "user") if key not in meta]
    if missing:
        raise corrupted(f"no {missing[0]!r} entry (a format-{FORMAT_VERSION} checkpoint has "
                        f"'format_version', 'step', 'leaves' and 'user')")
    step = meta["step"]
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        raise corrupted(f"'step' must be an integer or null, got {step!r:.60}")
    if not isinstance(meta["user"], dict):
        raise corrupted(f"'user' must be a JSON object, got {type(meta['user']).__name__}")
    leaves = meta["leaves"]
    if not isinstance(leaves, dict):
        raise corrupted(f"'leaves' must be a JSON object, got {type(leaves).__name__}")
    for name in arrays:
        record = leaves.get(name)
        if not (isinstance(record, dict) and isinstance(record.get("dtype"), str)
                and isinstance(record.get("shape"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                        for d in record["shape"])):
            raise corrupted(f"the record of entry {name} must be {{'dtype': str, 'shape': "
                            f"[int, ...]}}, got {record!r:.80}")


def load_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint: ``{"step": …, **metadata given to save}``.

    Args:
      path: a file written by [`save`][jaxnn.checkpoint.save].

    Returns:
      A dict: ``"step"`` (``None`` when not given) and the entries of ``metadata``.

    Raises:
      CheckpointError: the file is missing, unreadable, of another format version, or its
        metadata is not what [`save`][jaxnn.checkpoint.save] writes (valid JSON of another
        shape included).

    Examples:
        >>> import os, tempfile
        >>> from jaxnn import checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> checkpoint.save(path, {"W": jnp.zeros(2)}, metadata={"data": "moons"})
        >>> checkpoint.load_metadata(path)
        {'step': None, 'data': 'moons'}
    """
    path = os.fspath(path)
    _, meta = _read(path)
    return {"step": meta["step"], **meta["user"]}


def load(path: str | os.PathLike, template: Any) -> Any:
    """Reads a checkpoint into the structure of ``template``.

    Args:
      path: a file written by [`save`][jaxnn.checkpoint.save].
      template: a pytree with the structure, shapes and dtypes of the saved one (its values
        are not used).

    Returns:
      A pytree like ``template`` holding the saved arrays (``jax.Array``; PRNG keys as typed
      keys).

    Raises:
      CheckpointError: the file is missing or unreadable, its metadata is not what
        [`save`][jaxnn.checkpoint.save] writes (valid JSON of another shape included), or the
        first leaf (in tree order) that is missing, extra, or of another shape or dtype, with
        the expected and the found.

    Examples:
        The template is what ``init`` makes; NamedTuples (optax states) come back as they were:

        >>> import os, tempfile, optax
        >>> from jaxnn import checkpoint
        >>> net = jaxnn.serial(jaxnn.dense(3), jaxnn.relu(), jaxnn.dense(1))
        >>> _, params, _ = net.init(jax.random.key(0), (-1, 2))
        >>> opt_state = optax.adam(1e-3).init(params)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> checkpoint.save(path, (params, opt_state), step=5)
        >>> _, template, _ = net.init(jax.random.key(1), (-1, 2))
        >>> p, s = checkpoint.load(path, (template, optax.adam(1e-3).init(template)))
        >>> bool(jnp.all(p[0]["W"] == params[0]["W"])), type(s[0]).__name__
        (True, 'ScaleByAdamState')
    """
    path = os.fspath(path)
    arrays, meta = _read(path)
    leaves = _flatten(template)
    info = meta["leaves"]
    expected_names = [name for name, _ in leaves]
    for name in expected_names:
        if name not in arrays:
            raise CheckpointError(f"{path}: structure mismatch at {name}: the template has this "
                                  f"leaf, the checkpoint does not (it has {len(arrays)} leaves)")
    extra = [name for name in arrays if name not in set(expected_names)]
    if extra:
        raise CheckpointError(f"{path}: structure mismatch at {extra[0]}: the checkpoint has "
                              f"this leaf, the template does not")
    restored = []
    for name, leaf in leaves:
        want_dtype, want_shape = _dtype_name(leaf), tuple(np.shape(leaf))
        got_dtype, got_shape = info[name]["dtype"], tuple(info[name]["shape"])
        if got_shape != want_shape:
            raise CheckpointError(f"{path}: shape mismatch at {name}: expected {want_shape}, "
                                  f"got {got_shape}")
        if got_dtype != want_dtype:
            raise CheckpointError(f"{path}: dtype mismatch at {name}: expected {want_dtype}, "
                                  f"got {got_dtype}")
        stored = arrays[name]
        if _is_key_array(leaf):
            restored.append(jax.random.wrap_key_data(jnp.asarray(stored),
                                                     impl=jax.random.key_impl(leaf)))
            continue
        want = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        if stored.dtype != want:
            if stored.dtype.itemsize != want.itemsize or stored.shape != want_shape:
                raise CheckpointError(f"{path}: corrupted entry {name}: stored as "
                                      f"{stored.dtype}{stored.shape}, metadata says "
                                      f"{got_dtype}{got_shape}")
            stored = stored.view(want)
        if stored.shape != want_shape:
            raise CheckpointError(f"{path}: corrupted entry {name}: holds shape {stored.shape}, "
                                  f"metadata says {got_shape}")
        restored.append(jnp.asarray(stored))
    treedef = jax.tree.structure(template)
    return jax.tree.unflatten(treedef, restored)


# --- sharded checkpoints through Orbax (several processes, arrays split over a mesh) -------------

SHARDED_FORMAT_VERSION = 1
"""The format of the sharded checkpoints [`save_sharded`][jaxnn.checkpoint.save_sharded] writes
(an Orbax checkpoint folder plus a JSON entry), kept in their metadata."""
_SHARDED_META = "jaxnn_metadata"
_SHARDED_ARRAYS = "arrays"


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # an optional dependency: the message says which extra
        raise ImportError("jaxnn.checkpoint's sharded checkpoints need orbax-checkpoint: pip "
                          "install 'jaxnn[distributed]'") from err
    return ocp


def _sharded_leaves(tree: Any, what: str) -> list[tuple[str, Any]]:
    leaves = _flatten(tree)
    for name, leaf in leaves:
        if _is_key_array(leaf):
            raise CheckpointError(f"{what}: {name} is a typed PRNG key; keep keys in a .npz "
                                  f"checkpoint (checkpoint.save) or as jax.random.key_data")
    return leaves


def save_sharded(directory: str | os.PathLike, tree: Any, *, step: int | None = None,
                 metadata: dict | None = None) -> None:
    """Writes ``tree`` (params and optimizer state, split over a mesh or not) to a new
    ``directory`` with Orbax: each process writes the shards it holds, nothing is gathered.

    Call it from every process with the same tree of global ``jax.Array`` (what a sharded
    step or [`jaxnn.fit`][jaxnn.fit.fit] over a mesh returns). The folder is written under a
    temporary name and renamed when every process has finished (Orbax's atomic commit), so a
    crash leaves no half-written checkpoint under ``directory``. Next to the arrays it keeps
    a JSON entry: the format version
    ([`SHARDED_FORMAT_VERSION`][jaxnn.checkpoint.SHARDED_FORMAT_VERSION]), the step, every
    leaf's path, shape and dtype, the mesh shape it was saved from, and ``metadata``.
    [`load_sharded`][jaxnn.checkpoint.load_sharded] restores it onto any mesh.

    Args:
      directory: a folder that does not exist yet (one per step: ``run/step_100``); its
        parent must exist.
      tree: a pytree of arrays (no typed PRNG keys).
      step: the training step, kept in the metadata.
      metadata: more JSON-serializable information to keep.

    Raises:
      CheckpointError: ``directory`` exists, or a leaf is a typed PRNG key.
      TypeError: ``metadata`` is not JSON-serializable.

    Examples:
        >>> import os, tempfile, optax
        >>> from jaxnn import checkpoint
        >>> params = {"W": jnp.ones((2, 3)), "b": jnp.zeros(3)}
        >>> directory = os.path.join(tempfile.mkdtemp(), "step_7")
        >>> checkpoint.save_sharded(directory, (params, optax.adam(1e-3).init(params)), step=7)
        >>> checkpoint.load_sharded_metadata(directory)["step"]
        7
    """
    ocp = _orbax()
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory):
        raise CheckpointError(f"{directory}: exists; save each sharded checkpoint to a new "
                              f"folder (one per step, say)")
    leaves = _sharded_leaves(tree, "checkpoint.save_sharded")
    meshes = sorted({str(dict(leaf.sharding.mesh.shape)) for _, leaf in leaves
                     if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding)})
    entry = {"format_version": SHARDED_FORMAT_VERSION, "step": step,
             "leaves": [{"path": name, "shape": list(np.shape(leaf)), "dtype": _dtype_name(leaf)}
                        for name, leaf in leaves],
             "mesh": meshes[0] if len(meshes) == 1 else None,
             "process_count": jax.process_count(), "user": metadata or {}}
    try:
        json.dumps(entry)
    except TypeError as err:
        raise TypeError(f"checkpoint.save_sharded: metadata must be JSON-serializable "
                        f"({err})") from err
    arrays = {f"{i:05d}": leaf for i, (_, leaf) in enumerate(leaves)}
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, args=ocp.args.Composite(**{
            _SHARDED_ARRAYS: ocp.args.StandardSave(arrays),
            _SHARDED_META: ocp.args.JsonSave(entry)}))


@contextlib.contextmanager
def _unreadable_as_checkpoint_error(directory: str):
    """Orbax's and tensorstore's errors on a damaged folder (a JSON decode error, a missing item,
    a tensorstore status) become one ``CheckpointError`` naming the folder and the first line of
    the cause."""
    try:
        yield
    except CheckpointError:
        raise
    except (ValueError, KeyError, OSError, TypeError) as err:
        # tensorstore says "CODE: Error opening …: detail [tensorstore_spec=…]": the first line
        cause = (str(err).split(" [tensorstore_spec", 1)[0].strip().splitlines()
                 or [type(err).__name__])[0][:300]
        raise CheckpointError(f"{directory}: not a readable sharded checkpoint (corrupted or "
                              f"incomplete: {cause})") from err


def _sharded_entry(directory: str) -> dict:
    ocp = _orbax()
    if not os.path.isdir(os.path.join(directory, _SHARDED_META)):
        raise CheckpointError(f"{directory}: no sharded checkpoint here (written by "
                              f"checkpoint.save_sharded?)")
    with _unreadable_as_checkpoint_error(directory), \
            ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        entry = checkpointer.restore(directory, args=ocp.args.Composite(**{
            _SHARDED_META: ocp.args.JsonRestore()}))[_SHARDED_META]
    if not isinstance(entry, dict) or not isinstance(entry.get("leaves"), list):
        raise CheckpointError(f"{directory}: corrupted metadata: expected an object with a list "
                              f"of leaves, got {type(entry).__name__}")
    version = entry.get("format_version")
    if version != SHARDED_FORMAT_VERSION:
        raise CheckpointError(f"{directory}: sharded checkpoint format version {version!r}; this "
                              f"jaxnn reads version {SHARDED_FORMAT_VERSION}")
    return entry


def load_sharded_metadata(directory: str | os.PathLike) -> dict:
    """The metadata of a sharded checkpoint: ``{"step": …, **metadata given to save_sharded}``,
    and ``"mesh"``, the shape of the mesh it was saved from (``None`` when not one mesh).

    Examples:
        >>> import os, tempfile
        >>> from jaxnn import checkpoint
        >>> directory = os.path.join(tempfile.mkdtemp(), "ckpt")
        >>> checkpoint.save_sharded(directory, {"W": jnp.zeros(2)}, metadata={"data": "moons"})
        >>> meta = checkpoint.load_sharded_metadata(directory)
        >>> meta["step"], meta["data"]
        (None, 'moons')
    """
    entry = _sharded_entry(os.path.abspath(os.fspath(directory)))
    return {"step": entry["step"], "mesh": entry["mesh"], **entry["user"]}


def _target(directory: str, name: str, leaf: Any, stored: dict, mesh: Any, spec: Any) -> Any:
    """The restore target of one leaf, after checking it against what was saved and the mesh."""
    shape, dtype = tuple(np.shape(leaf)), _dtype_name(leaf)
    if tuple(stored["shape"]) != shape:
        raise CheckpointError(f"{directory}: shape mismatch at {name}: expected {shape}, got "
                              f"{tuple(stored['shape'])} (saved from another architecture?)")
    if stored["dtype"] != dtype:
        raise CheckpointError(f"{directory}: dtype mismatch at {name}: expected {dtype}, got "
                              f"{stored['dtype']}")
    sharding: jax.sharding.Sharding
    if mesh is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    else:
        if len(spec) > len(shape):
            raise CheckpointError(f"{directory}: {name} has rank {len(shape)}, but its spec "
                                  f"{spec} has {len(spec)} entries")
        for i, (size, axes) in enumerate(zip(shape, spec, strict=False)):
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            missing = [a for a in axes if a not in mesh.axis_names]
            if missing:
                raise CheckpointError(f"{directory}: the spec {spec} of {name} names the mesh "
                                      f"axis {missing[0]!r}; the mesh has axes "
                                      f"{tuple(mesh.axis_names)}")
            parts = int(np.prod([mesh.shape[a] for a in axes]))
            if size % parts:
                raise CheckpointError(f"{directory}: axis {i} of {name} {shape} has size {size}, "
                                      f"which does not divide over the {parts} devices of mesh "
                                      f"axis {spec[i]!r}")
        sharding = jax.sharding.NamedSharding(mesh, spec)
    return jax.ShapeDtypeStruct(shape, np.dtype(leaf.dtype), sharding=sharding)


def load_sharded(directory: str | os.PathLike, template: Any, *,
                 mesh: jax.sharding.Mesh | None = None, specs: Any = None) -> Any:
    """Restores a [`save_sharded`][jaxnn.checkpoint.save_sharded] checkpoint onto ``mesh`` laid
    out by ``specs``, or onto one device: each process reads only the shards its devices hold.

    The mesh and layout may differ from the ones saved from (8 devices → 4, FSDP → tensor
    parallel, a mesh → one device): Orbax reads whatever slices each new shard needs. The
    template's structure, shapes and dtypes are checked against the saved ones first, and the
    first mismatch is named.

    Args:
      directory: the checkpoint folder.
      template: a pytree of the same structure (arrays or ``jax.ShapeDtypeStruct``: params and
        ``optimizer.init(params)``, or ``jax.eval_shape`` of them).
      mesh: the mesh to restore onto; ``None``: this process's first device.
      specs: with a mesh, a pytree of ``PartitionSpec`` of the template's structure (a spec
        may stand for a subtree, ``(param_specs, opt_state_specs)`` from
        [`jaxnn.sharding.layout`][jaxnn.sharding.layout]); ``None``: replicated.

    Returns:
      The template's tree of global ``jax.Array``, each sharded as asked.

    Raises:
      CheckpointError: no checkpoint, another format version, another structure, shape or
        dtype, or a spec that does not fit its array or the mesh.

    Examples:
        >>> import os, tempfile
        >>> from jax.sharding import PartitionSpec as P
        >>> from jaxnn import checkpoint, sharding
        >>> directory = os.path.join(tempfile.mkdtemp(), "ckpt")
        >>> checkpoint.save_sharded(directory, {"W": jnp.arange(6.0).reshape(2, 3)})
        >>> mesh = sharding.make_mesh(devices=jax.devices()[:1])
        >>> tree = checkpoint.load_sharded(directory, {"W": jnp.zeros((2, 3))}, mesh=mesh,
        ...                                specs={"W": P("data", None)})
        >>> tree["W"].sharding.spec, tree["W"].tolist()
        (P('data', None), [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    ocp = _orbax()
    directory = os.path.abspath(os.fspath(directory))
    entry = _sharded_entry(directory)
    leaves = _sharded_leaves(template, "checkpoint.load_sharded")
    stored = entry["leaves"]
    names = [name for name, _ in leaves]
    if names != [s["path"] for s in stored]:
        saved = [s["path"] for s in stored]
        first = next((i for i, (a, b) in enumerate(zip(names, saved, strict=False)) if a != b),
                     min(len(names), len(saved)))
        expected = names[first] if first < len(names) else "(nothing more)"
        got = saved[first] if first < len(saved) else "(nothing more)"
        raise CheckpointError(f"{directory}: the template's structure differs from the saved "
                              f"one at leaf {first}: expected {expected}, got {got} (saved from "
                              f"another architecture or optimizer?)")
    if mesh is None:
        leaf_specs = [None] * len(leaves)
    else:
        spec_tree = jax.sharding.PartitionSpec() if specs is None else specs
        is_spec = lambda s: isinstance(s, jax.sharding.PartitionSpec)  # noqa: E731
        try:
            per_leaf = jax.tree.map(
                lambda s, sub: jax.tree.map(lambda _: s, sub), spec_tree, template,
                is_leaf=is_spec)
        except ValueError as err:
            raise CheckpointError(f"{directory}: the specs do not have the template's structure "
                                  f"({err})") from None
        leaf_specs = jax.tree.leaves(per_leaf, is_leaf=is_spec)
    targets = {f"{i:05d}": _target(directory, name, leaf, saved, mesh, spec)
               for i, ((name, leaf), saved, spec) in enumerate(zip(leaves, stored, leaf_specs,
                                                                   strict=True))}
    with _unreadable_as_checkpoint_error(directory), \
            ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        arrays = checkpointer.restore(directory, args=ocp.args.Composite(**{
            _SHARDED_ARRAYS: ocp.args.StandardRestore(targets)}))[_SHARDED_ARRAYS]
    return jax.tree.unflatten(jax.tree.structure(template),
                              [arrays[f"{i:05d}"] for i in range(len(leaves))])
