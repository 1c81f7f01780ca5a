"""A long ``jaxnn train``: how long the command takes past its training, and how fast Ctrl-C
or SIGTERM ends it.

Two measurements on the default run (the planar flower, layers 2,20,7,5,1, full batch, so one
step is one epoch of ``jaxnn.fit``), each ``jaxnn train`` in a process of its own:

* ``--steps N``: the command's wall time against the training time it reports
  (``N steps in X s``): the ratio, and the seconds from the last cost line to the exit;
* a signal after ``K`` steps (the ``cost after step K`` line): seconds from the signal to the
  exit, with the checkpoint written.

::

    python benchmarks/long_run.py                  # --steps 100000, signals after 20000, 100000
    python benchmarks/long_run.py --quick          # --steps 5000, a signal after 2000
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time


def _train(folder: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "jaxnn", "train", *args], cwd=folder,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)


def whole_run(folder: str, steps: int) -> dict[str, float]:
    """Wall time of ``jaxnn train --steps steps`` (progress bar on) and its reported time."""
    began = time.perf_counter()
    proc = _train(folder, "--steps", str(steps), "--out", "whole")
    last_cost = reported = None
    for line in proc.stdout:
        if line.startswith("cost after step"):
            last_cost = time.perf_counter()
        match = re.match(r"\d+ steps in ([\d.]+) s", line)
        if match:
            reported = float(match.group(1))
    proc.wait()
    ended = time.perf_counter()
    if proc.returncode != 0 or reported is None:
        raise SystemExit(f"jaxnn train --steps {steps} failed (exit {proc.returncode})")
    return {"wall": ended - began, "training": reported, "tail": ended - last_cost}


def signal_after(folder: str, steps: int, signum: int) -> float:
    """Seconds from ``signum``, sent after ``steps`` steps, to the end of the process."""
    out = f"cut{steps}{signal.Signals(signum).name}"
    proc = _train(folder, "--steps", str(10**9), "--print-every", str(steps), "--no-progress",
                  "--out", out)
    for line in proc.stdout:
        if line.startswith(f"cost after step {steps}:"):
            break
    proc.send_signal(signum)
    sent = time.perf_counter()
    proc.communicate()
    took = time.perf_counter() - sent
    if proc.returncode != 128 + signum:
        raise SystemExit(f"the run stopped by {signal.Signals(signum).name} exited "
                         f"{proc.returncode}, expected {128 + signum}")
    if not os.path.isfile(os.path.join(folder, out, "checkpoint.npz")):
        raise SystemExit("the interrupted run wrote no checkpoint")
    return took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5000 steps, a signal after 2000")
    parser.add_argument("--steps", type=int, help="length of the whole run (default 100000)")
    parser.add_argument("--signal-after", type=int, nargs="*",
                        help="steps after which a signal is sent (default 20000 100000)")
    args = parser.parse_args(argv)
    steps = args.steps or (5000 if args.quick else 100_000)
    cuts = args.signal_after or ([2000] if args.quick else [20_000, 100_000])
    with tempfile.TemporaryDirectory() as folder:
        run = whole_run(folder, steps)
        print(f"jaxnn train --steps {steps}: {run['wall']:.1f} s wall, {run['training']:.1f} s "
              f"training (reported), ratio {run['wall'] / run['training']:.2f}; "
              f"{run['tail']:.1f} s from the last cost line to the exit")
        stops = {}
        for cut in cuts:
            for signum in (signal.SIGINT, signal.SIGTERM):
                took = signal_after(folder, cut, signum)
                stops[f"{signal.Signals(signum).name}_{cut}"] = took
                print(f"{signal.Signals(signum).name} after {cut} steps: exit {took:.2f} s "
                      f"later, checkpoint written")
    result = {"wall_over_training": run["wall"] / run["training"], "tail_s": run["tail"],
              **{f"stop_{k}_s": v for k, v in stops.items()}}
    print("RESULT " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
