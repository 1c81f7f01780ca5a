"""Data-parallel training over several processes with ``jax.distributed``.

Every process runs this same script. Each one joins the job with
``jax.distributed.initialize`` (a coordinator address, the number of processes and its own
index), sees every device of every process in ``jax.devices()``, and feeds only *its* part of
each global batch: process ``p`` of ``P`` reads examples ``[p·B/P, (p+1)·B/P)`` of the global
batch of ``B`` examples. :func:`jaxnn.sharding.shard_train_step` assembles the global batch
from the processes' parts (``jax.make_array_from_process_local_data``) and runs one compiled
step over all devices; JAX's collectives (gloo on CPU, NCCL on GPU) sum the gradients across
processes. At the end process 0 writes a checkpoint, every process reads it back, and each
process writes the parameters it holds to ``OUT/params_<p>.npz``, so the processes can be
compared with each other and with ``--single`` (the same global batches in one process).

Two processes on one machine:

    python examples/multi_process.py --coordinator 127.0.0.1:12355 \
        --num-processes 2 --process-id 0 --out run &
    python examples/multi_process.py --coordinator 127.0.0.1:12355 \
        --num-processes 2 --process-id 1 --out run

Two hosts: the same two commands, one on each host, with ``--coordinator`` naming host 0's
address (a port that both hosts can reach). On a SLURM allocation (``srun``) or a Kubernetes
indexed Job, ``jax.distributed.initialize()`` with no arguments reads the job's environment
(SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; or the
Kubernetes API with ``JOB_COMPLETION_INDEX``): start the script with no ``--coordinator``.
``JAX_COORDINATOR_ADDRESS`` may stand for ``--coordinator``.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

# CPU collectives across processes go through gloo (JAX's own implementation); GPUs use NCCL.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

import jaxnn  # noqa: E402
from jaxnn import checkpoint, sharding  # noqa: E402


def make_problem(seed: int = 0):
    """The model, its initial parameters and a generator of global batches (the same in
    every process: everything derives from ``seed``)."""
    net = jaxnn.serial(jaxnn.dense(32), jaxnn.tanh(), jaxnn.dense(16), jaxnn.relu(),
                       jaxnn.dense(1), jaxnn.sigmoid())
    _, params, _ = net.init(jax.random.key(seed), (-1, 8))

    def global_batch(step: int, size: int):
        kx = jax.random.fold_in(jax.random.key(seed + 1), step)
        x = np.asarray(jax.random.normal(kx, (size, 8)), np.float32)
        y = (x[:, :4].sum(axis=1, keepdims=True) > 0).astype(np.float32)
        return x, y

    return net, params, global_batch


def train(steps: int, global_batch_size: int, single: bool):
    """Trains ``steps`` steps; returns the parameters as host arrays and the last loss."""
    net, params, global_batch = make_problem()
    optimizer = optax.adam(1e-2)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    opt_state = optimizer.init(params)
    processes, me = (1, 0) if single else (jax.process_count(), jax.process_index())
    if global_batch_size % processes:
        raise SystemExit(f"--batch {global_batch_size} does not divide over {processes} "
                         f"processes")
    local = global_batch_size // processes
    if not single:
        step = sharding.shard_train_step(step, sharding.make_mesh())
    state = ()
    for i in range(steps):
        x, y = global_batch(i, global_batch_size)
        x, y = x[me * local:(me + 1) * local], y[me * local:(me + 1) * local]
        params, state, opt_state, loss = step(params, state, opt_state, x, y, None)
    return sharding.to_host(params), float(sharding.to_host(loss))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"))
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64, help="global batch size")
    parser.add_argument("--out", default="multi-process-out")
    parser.add_argument("--single", action="store_true", help="one process, no distribution")
    args = parser.parse_args(argv)

    if not args.single:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    me = 0 if args.single else jax.process_index()
    print(f"process {me} of {jax.process_count()}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all", flush=True)
    params, loss = train(args.steps, args.batch, args.single)
    os.makedirs(args.out, exist_ok=True)
    name = "single" if args.single else f"params_{me}"

    if not args.single:
        # process 0 writes the checkpoint; every process reads it back after a barrier
        path = os.path.join(args.out, "checkpoint.npz")
        if me == 0:
            checkpoint.save(path, params, step=args.steps)
        multihost_utils.sync_global_devices("checkpoint written")
        restored = checkpoint.load(path, params)
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(restored),
                                                        jax.tree.leaves(params), strict=True))
        print(f"process {me}: checkpoint read back equal: {same}", flush=True)
        if not same:
            return 1
    flat = {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(os.path.join(args.out, f"{name}.npz"), **flat)
    print(f"process {me}: loss={loss:.6f}", flush=True)
    if not args.single:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
