"""Training over several processes with ``jax.distributed``: each process feeds its own data.

Every process runs this same script. Each one joins the job with
``jax.distributed.initialize`` (a coordinator address, the number of processes and its own
index), sees every device of every process in ``jax.devices()``, and holds only *its* part of the
training set: process ``p`` of ``P`` reads examples ``[p·N/P, (p+1)·N/P)`` of the ``N``. It then
calls :func:`jaxnn.fit` with a mesh over every device (:func:`jaxnn.sharding.make_mesh`) and its
local part; ``fit`` first checks that every process runs the same configuration (a hash exchanged
between them: a process started with another ``--epochs`` ends the run with a message naming
the difference), assembles the global training set from the processes' parts, lays the
parameters and Adam's state out by ``--strategy`` (FSDP by default: each device keeps its share)
and trains, JAX's collectives (gloo on CPU, NCCL on GPU) joining the processes. A process that
does not arrive within ``--timeout`` seconds ends the run with a message instead of hanging it.

At the end every process writes its shards of a sharded checkpoint
(:func:`jaxnn.checkpoint.save_sharded`, ``OUT/checkpoint``), reads it back onto the same mesh,
and writes the parameters it holds to ``OUT/params_<p>.npz``, so the processes can be compared
with each other and with ``--single`` (the same training set and batches in one process).
``--restore OUT/checkpoint`` reads such a checkpoint back in one process, onto one device.

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
import time

import jax

# CPU collectives across processes go through gloo (JAX's own implementation); GPUs use NCCL.
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxnn  # noqa: E402
from jaxnn import checkpoint, sharding  # noqa: E402


def make_problem(examples: int, seed: int = 0):
    """The model, its initial parameters, the optimizer and the whole training set (the same
    in every process: everything derives from ``seed``)."""
    net = jaxnn.serial(jaxnn.dense(32), jaxnn.tanh(), jaxnn.dense(16), jaxnn.relu(),
                       jaxnn.dense(1), jaxnn.sigmoid())
    _, params, _ = net.init(jax.random.key(seed), (-1, 8))
    x = np.asarray(jax.random.normal(jax.random.key(seed + 1), (examples, 8)), np.float32)
    y = (x[:, :4].sum(axis=1, keepdims=True) > 0).astype(np.float32)
    return net, params, optax.adam(1e-2), x, y


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"))
    parser.add_argument("--num-processes", type=int, default=None)
    parser.add_argument("--process-id", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=256, help="training examples in all")
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    parser.add_argument("--strategy", default="fsdp", choices=sharding.STRATEGIES)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the other processes before ending the run")
    parser.add_argument("--out", default="multi-process-out")
    parser.add_argument("--single", action="store_true", help="one process, no distribution")
    parser.add_argument("--restore", help="read this sharded checkpoint in one process")
    parser.add_argument("--stall", action="store_true",
                        help="(testing) join the job, then never arrive at training")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    if args.restore:  # one process, one device: the template is the fresh run's state
        net, params, optimizer, x, y = make_problem(args.examples)
        params, _ = checkpoint.load_sharded(args.restore, (params, optimizer.init(params)))
        np.savez(os.path.join(args.out, "restored.npz"), **flat(params))
        print(f"restored step {checkpoint.load_sharded_metadata(args.restore)['step']}")
        return 0
    if not args.single:
        # before any other JAX call; a process that never joins ends the run after --timeout
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id,
                                   initialization_timeout=max(1, int(args.timeout)))
    net, params, optimizer, x, y = make_problem(args.examples)
    me, processes = jax.process_index(), jax.process_count()
    print(f"process {me} of {processes}: {jax.local_device_count()} local devices, "
          f"{jax.device_count()} in all", flush=True)
    if args.stall:
        time.sleep(3600)
    if args.examples % processes:
        raise SystemExit(f"--examples {args.examples} does not divide over {processes} "
                         f"processes")
    local = args.examples // processes
    x, y = x[me * local:(me + 1) * local], y[me * local:(me + 1) * local]  # this process's part
    mesh = None if args.single else sharding.make_mesh()
    result = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y,
                       epochs=args.epochs, batch_size=args.batch, key=jax.random.key(7),
                       mesh=mesh, shard_params=args.strategy if mesh else "replicated",
                       timeout=None if args.single else args.timeout)
    host = sharding.to_host(result.params)
    if not args.single:
        path = os.path.join(os.path.abspath(args.out), "checkpoint")
        steps = args.epochs * (args.examples // args.batch)
        with sharding.collective_timeout(args.timeout, "saving the checkpoint"):
            checkpoint.save_sharded(path, (result.params, result.opt_state), step=steps)
            specs = sharding.layout(net, optimizer, params, optimizer.init(params), mesh,
                                    args.strategy)
            restored, _ = checkpoint.load_sharded(path, (params, optimizer.init(params)),
                                                  mesh=mesh, specs=specs)
            same = all(np.array_equal(a, b) for a, b in zip(
                jax.tree.leaves(sharding.to_host(restored)), jax.tree.leaves(host), strict=True))
        print(f"process {me}: checkpoint read back equal: {same}", flush=True)
        if not same:
            return 1
    name = "single" if args.single else f"params_{me}"
    np.savez(os.path.join(args.out, f"{name}.npz"), **flat(host))
    print(f"process {me}: loss={float(sharding.to_host(result.losses)[-1].mean()):.6f}",
          flush=True)
    if not args.single:
        jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
