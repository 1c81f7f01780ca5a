"""Data-parallel training over every visible device, checked against one device.

On a CPU-only machine the script asks XLA for 4 host devices (unless ``XLA_FLAGS`` is already
set), so the batch really is split; on a GPU or TPU host it runs unchanged over the
accelerators. It trains a small classifier for a few steps twice — once with the step sharded
over all devices by :func:`jaxnn.sharding.shard_train_step` (everything replicated, the batch
split), once on a single device — and
trains it a third time with :func:`jaxnn.fit` and its parameters and optimizer state split over
the devices (FSDP, :mod:`jaxnn.sharding`), printing each device's share of their bytes
(``param_bytes_per_device_fraction=``), and prints the largest parameter difference from the
single device as its last line.

Several hosts: start the same script on every host after ``jax.distributed.initialize()``
(see ``examples/multi_process.py``); ``jax.devices()`` then spans all of them.

    python examples/data_parallel.py
"""

import os

# The device count is fixed when JAX starts: ask for 4 CPU devices before importing it. The flag
# only affects the host (CPU) platform, so it changes nothing on a GPU or TPU host.
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnn


def main(steps: int = 20, per_device_batch: int = 32) -> float:
    devices = jax.devices()
    print(f"devices: {len(devices)} ({devices[0].platform})")
    batch = per_device_batch * len(devices)

    net = jaxnn.serial(jaxnn.dense(32), jaxnn.relu(), jaxnn.dense(32), jaxnn.relu(),
                       jaxnn.dense(1), jaxnn.sigmoid())
    key_init, key_x = jax.random.split(jax.random.key(0))
    _, params, _ = net.init(key_init, (-1, 8))
    x = jax.random.normal(key_x, (batch, 8))
    y = (jnp.sum(x[:, :4], axis=1, keepdims=True) > 0).astype(jnp.float32)

    optimizer = optax.adam(1e-2)
    step = jaxnn.make_train_step(net, jaxnn.binary_cross_entropy, optimizer)
    parallel_step = jaxnn.sharding.shard_train_step(step, jaxnn.sharding.make_mesh())

    sharded = (params, (), optimizer.init(params))  # (params, model state, optimizer state)
    single = jax.device_put((params, (), optimizer.init(params)), devices[0])
    x_single, y_single = jax.device_put((x, y), devices[0])
    for i in range(steps):
        *sharded, loss = parallel_step(*sharded, x, y)
        *single, _ = step(*single, x_single, y_single)
        if i % 5 == 0 or i == steps - 1:
            print(f"step {i:3d}  loss {float(loss):.4f}")

    # The same model with its parameters and Adam's moments split over the devices (FSDP):
    # each device keeps 1/devices of them, and the result is the replicated run's.
    fsdp = jaxnn.fit(net, jaxnn.binary_cross_entropy, optimizer, params, x, y, epochs=steps,
                     batch_size=batch, key=jax.random.key(1),
                     mesh=jaxnn.sharding.make_mesh(), shard_params="fsdp")
    fraction = jaxnn.sharding.bytes_per_device_fraction((fsdp.params, fsdp.opt_state))
    print(f"param_bytes_per_device_fraction={fraction:.4f}")

    diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                         (sharded[0], fsdp.params), (single[0], single[0]))
    max_diff = max(jax.tree.leaves(diffs))
    print(f"max_abs_diff_vs_single_device={max_diff:.3e}")
    return max_diff


if __name__ == "__main__":
    main()
