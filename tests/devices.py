"""One child-process harness for checks that need several (forced) CPU devices.

The number of CPU devices is fixed when JAX starts, and the test process has already started
it with one. A test file defines its multi-device checks as module-level functions named
``_child_*`` and ends with ``if __name__ == "__main__": devices.child_main(globals())``; its
fixture calls :func:`run_child_checks`, which runs the file once as a script in a child
process with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` and returns every check's
outcome (``{"ok": True, "value": ...}`` or ``{"ok": False, "error": traceback}``). One child per
file: JAX's start-up is paid once for all its checks.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import traceback
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent


def child_env(devices: int, x64: bool = True) -> dict[str, str]:
    """The environment of a child with ``devices`` CPU devices, importing this checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", JAX_ENABLE_X64="1" if x64 else "0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def run_child_checks(script: str, devices: int, *, x64: bool = True,
                     timeout: float = 600) -> dict[str, dict]:
    """Runs ``script``'s ``_child_*`` checks in one child process with ``devices`` devices."""
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True,
                          env=child_env(devices, x64), cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_checks(namespace: dict) -> list[str]:
    """The names of a test module's ``_child_*`` checks, in definition order."""
    return [name for name, fn in namespace.items()
            if name.startswith("_child_") and isinstance(fn, Callable)]


def child_main(namespace: dict) -> None:
    """The child's side: runs every check and prints the outcomes as one JSON line."""
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    results = {}
    for name in child_checks(namespace):
        try:
            results[name] = {"ok": True, "value": namespace[name]()}
        except Exception:  # reported to the parent test, which fails with the traceback
            results[name] = {"ok": False, "error": traceback.format_exc()}
    print(json.dumps(results, default=str))
