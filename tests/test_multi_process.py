"""Really several processes: ``examples/multi_process.py`` started 2 and 4 times on this machine.

Each process calls ``jax.distributed.initialize`` with a coordinator on localhost (a free port),
holds only its own part of the training set, and trains with ``jaxnn.fit`` over a mesh of every
process's device (FSDP); CPU collectives go through gloo. The tests check that every process
ends with the same parameters, that they equal a single-process ``fit`` on the same data within
1e-6 (float32), that the sharded checkpoint the processes wrote together was read back equal by
each and restores in one process; that processes started with different ``--epochs`` end with a
message naming it, and that a process that never arrives ends the run after ``--timeout``
instead of hanging it. Processes run in their own process group under a time limit and are
killed, all of them, when anything fails.
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


def _group(n: int, out: pathlib.Path, per_process: list[list[str]]) -> list[subprocess.Popen]:
    port = _free_port()
    return [_start(["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                    "--process-id", str(i), "--out", str(out), *per_process[i]],
                   out / f"log_{i}.txt") for i in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4])
def test_processes_agree_with_each_other_and_with_one_process(n, tmp_path, single_process):
    """n processes, each feeding its own part of the data to fit, end with the same parameters,
    equal to one process's fit on the whole set; their sharded checkpoint reads back equal in
    every process and, restored in one process on one device, equals them exactly."""
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
    restore = _start(["--restore", str(tmp_path / "checkpoint"), "--out", str(tmp_path)],
                     tmp_path / "restore.txt")
    try:
        assert restore.wait(timeout=TIME_LIMIT) == 0, (tmp_path / "restore.txt").read_text()
    finally:
        _kill([restore])
    restored = _params(tmp_path / "restored.npz")
    for name, value in first.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=f"restored {name}")


@pytest.mark.slow
def test_processes_with_different_configurations_end_with_a_message_naming_it(tmp_path):
    """Process 0 with --epochs 3 and process 1 with --epochs 2: both exit (status 75) within
    seconds, each naming 'epochs' and both values, instead of waiting for each other."""
    procs = _group(2, tmp_path, [["--epochs", "3"], ["--epochs", "2"]])
    try:
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        _kill(procs)
    texts = [(tmp_path / f"log_{i}.txt").read_text() for i in range(2)]
    assert codes == [75, 75], texts
    for text in texts:
        assert ("fit: the processes run different configurations: process 1 differs from "
                "process 0 first at 'epochs': 2 in process 1, 3 in process 0") in text, text


@pytest.mark.slow
def test_a_process_that_never_arrives_ends_the_run_after_the_timeout(tmp_path):
    """Process 1 joins the job but never reaches training: process 0 waits --timeout 3 s at
    fit's configuration check, then exits (status 75) with a message, instead of hanging."""
    procs = _group(2, tmp_path, [["--timeout", "3"], ["--stall"]])
    start = time.monotonic()
    try:
        code = procs[0].wait(timeout=60)
    finally:
        _kill(procs)
    text = (tmp_path / "log_0.txt").read_text()
    assert code == 75, text
    assert time.monotonic() - start < 50
    assert ("process 0 of 2: waited more than 3 s for the other processes in fit (the "
            "configuration check)") in text, text


@pytest.mark.slow
def test_a_process_that_fails_takes_the_group_down_in_bounded_time(tmp_path):
    """A training set that does not divide over 3 processes: every process exits with an
    error, and the harness returns (no process left behind) well within its limit."""
    procs = _group(3, tmp_path, [["--examples", "256"]] * 3)
    try:
        codes = [p.wait(timeout=TIME_LIMIT) for p in procs]
    finally:
        _kill(procs)
    assert all(code != 0 for code in codes)
    assert "does not divide over 3 processes" in (tmp_path / "log_0.txt").read_text()
