"""Really several processes: ``examples/multi_process.py`` started 2 and 4 times on this machine.

Each process calls ``jax.distributed.initialize`` with a coordinator on localhost (a free port),
feeds its own part of every global batch, and trains 20 steps; CPU collectives go through gloo.
The test checks that every process ends with the same parameters, that they equal a
single-process run on the same global batches within 1e-6 (float32), and that the checkpoint
process 0 wrote was read back equal by every process. Processes run in their own process group
under a time limit and are killed, all of them, when anything fails.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "multi_process.py"
TIME_LIMIT = 240  # seconds for the whole group (the machine may be busy)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    env.update(JAX_PLATFORMS="cpu", JAX_ENABLE_X64="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    return env


def _start(args: list[str], log: pathlib.Path) -> subprocess.Popen:
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                start_new_session=True)


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def _run_group(n: int, out: pathlib.Path) -> list[str]:
    """Starts ``n`` processes, waits for all (bounded), returns their logs; kills on failure."""
    port = _free_port()
    procs, logs = [], [out / f"log_{i}.txt" for i in range(n)]
    try:
        for i in range(n):
            procs.append(_start(["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                 str(n), "--process-id", str(i), "--out", str(out)], logs[i]))
        deadline = time.monotonic() + TIME_LIMIT
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        texts = [log.read_text() for log in logs]
        codes = [p.poll() for p in procs]
        assert codes == [0] * n, f"exit codes {codes}; logs:\n" + "\n---\n".join(texts)
        return texts
    finally:
        _kill(procs)


def _params(path: pathlib.Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def single_process(tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("single")
    log = out / "log.txt"
    proc = _start(["--single", "--out", str(out)], log)
    try:
        assert proc.wait(timeout=TIME_LIMIT) == 0, log.read_text()
    finally:
        _kill([proc])
    return _params(out / "single.npz")


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_processes_agree_with_each_other_and_with_one_process(n, tmp_path, single_process):
    logs = _run_group(n, tmp_path)
    for i, text in enumerate(logs):
        assert f"process {i} of {n}" in text
        assert f"process {i}: checkpoint read back equal: True" in text
    first = _params(tmp_path / "params_0.npz")
    assert first.keys() == single_process.keys()
    for i in range(1, n):
        other = _params(tmp_path / f"params_{i}.npz")
        for name in first:
            np.testing.assert_array_equal(other[name], first[name], err_msg=f"process {i} {name}")
    for name, value in first.items():
        np.testing.assert_allclose(value, single_process[name], rtol=0, atol=1e-6,
                                   err_msg=f"{n} processes vs one: {name}")


@pytest.mark.slow
def test_a_process_that_fails_takes_the_group_down_in_bounded_time(tmp_path):
    # a global batch that does not divide over 3 processes: every process exits with an error,
    # and the harness returns (no process left behind) well within its limit
    port = _free_port()
    procs = [_start(["--coordinator", f"127.0.0.1:{port}", "--num-processes", "3",
                     "--process-id", str(i), "--batch", "64", "--out", str(tmp_path)],
                    tmp_path / f"log_{i}.txt") for i in range(3)]
    try:
        codes = [p.wait(timeout=TIME_LIMIT) for p in procs]
    finally:
        _kill(procs)
    assert all(code != 0 for code in codes)
    assert "does not divide over 3 processes" in (tmp_path / "log_0.txt").read_text()
