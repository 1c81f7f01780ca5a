"""Test configuration: float64 for gradient checks, loud mistakes, fresh PRNG keys, hypothesis
profiles, and JAX's persistent compilation cache for the session.

Hypothesis profiles (``HYPOTHESIS_PROFILE=dev|ci``, default ``dev``): ``dev`` runs few examples
per property, derandomized, so a run is quick and repeatable; ``ci`` runs more (``.ci/run`` runs
the property tests under it as a command of its own). Tests that pin ``max_examples`` themselves
keep it under both.

A persistent compilation cache (``.pytest_cache/d/jax-compilation-cache``, shared by the xdist
workers and by the ``jaxnn``/Python processes tests start) can keep compiled programs between
runs: a second run then skips XLA's compilation of every program it has compiled before. It is
on by default; ``JAXNN_TEST_COMPILATION_CACHE=off`` turns it off (``.ci/run`` does: a clean
machine has nothing to reuse), a folder puts it there, ``pytest --cache-clear`` empties it.

The suite's programs are tiny and most run once, so LLVM's optimization of the machine code costs
more than it saves: the session compiles with ``--xla_backend_optimization_level=0`` in
``XLA_FLAGS`` (XLA's own graph passes, fusion included, still run), inherited by the processes
tests start. ``JAXNN_TEST_FAST_COMPILE=off``, or an optimization level already in ``XLA_FLAGS``,
keeps the default (``.ci/run`` runs the property tests' deeper profile that way).

A worker process compiles thousands of programs, and JAX keeps every one loaded: on Linux each
costs about six memory mappings, and at the kernel's limit (``vm.max_map_count``, 65 530 by
default: about 10 000 programs) XLA's next compilation or cache read dies with a segmentation
fault. ``_release_compiled_programs`` empties JAX's caches whenever a worker holds more than half
the limit, between tests.
"""

import os
import pathlib
import shutil

import jax
import pytest
from hypothesis import settings

FAST_COMPILE_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
if os.environ.get("JAXNN_TEST_FAST_COMPILE", "on") != "off":
    # read when JAX first starts its backend, which nothing has done yet; a flag the user set
    # in XLA_FLAGS is kept
    flags = os.environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value in FAST_COMPILE_FLAGS.items() if name not in flags]
    os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

settings.register_profile("dev", max_examples=6, deadline=None, derandomize=True, database=None)
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Every compilation is kept: most of the suite's are small (an eager operation, a doctest's
# jit), each quick alone but together most of the run's time, and a read is quicker still.
CACHE_MIN_COMPILE_SECONDS = 0.0
# The cache is emptied at the start of a session once it outgrows this (every change to the code
# makes new entries; nothing else ever removes the old ones).
CACHE_MAX_BYTES = 2 * 1024**3


def _cache_folder(config: pytest.Config) -> pathlib.Path | None:
    chosen = os.environ.get("JAXNN_TEST_COMPILATION_CACHE", "on")
    if chosen == "off":
        return None
    if chosen != "on":
        return pathlib.Path(chosen).resolve()
    cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
    return None if cache is None else cache.mkdir("jax-compilation-cache")


def _size(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def pytest_configure(config: pytest.Config) -> None:
    folder = _cache_folder(config)
    if folder is None:
        return
    is_controller = not hasattr(config, "workerinput")  # xdist workers run this too
    if is_controller and folder.is_dir() and _size(folder) > CACHE_MAX_BYTES:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
    # the processes tests start (``jaxnn train``, the examples, device-count children) share it
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(folder)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(CACHE_MIN_COMPILE_SECONDS)


def _map_limit() -> int | None:
    try:
        return int(pathlib.Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):  # not Linux: no such limit to keep under
        return None


MAP_LIMIT = _map_limit()


def _mappings() -> int:
    with open("/proc/self/maps", "rb") as maps:
        return maps.read().count(b"\n")


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """After a test, empties JAX's caches of compiled programs (``jax.clear_caches``) when this
    process holds more than half of ``vm.max_map_count`` memory mappings (see the module doc).
    A later test that needs a program again compiles it again, or reads it from the
    persistent cache."""
    yield
    if MAP_LIMIT is not None and _mappings() > MAP_LIMIT // 2:
        jax.clear_caches()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--extended", action="store_true",
                     help="also run the tests marked extended (minutes each; .ci/run does)")


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    """Tests marked ``extended`` are skipped, with the reason shown, unless ``--extended``."""
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended: minutes of training; run with --extended "
                                   "(.ci/run does)")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def key(request):
    """A PRNG key that differs per test, derived from the test's name (reproducible)."""
    seed = sum(map(ord, request.node.name)) % (2**31)
    return jax.random.key(seed)
