"""The classic L-layer binary classifier, end to end.

An L-layer network (ReLU hidden layers, sigmoid output) is trained by full-batch gradient
descent on the planar "flower" data set, generated in code. The training step fuses the sigmoid
with binary cross-entropy, so it back-propagates the classic ``dZ[L] = (1/m)(A[L] − Y)``.

    python examples/binary_classifier.py --layers 2,20,7,5,1 --steps 5000 --lr 0.3
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

import jaxnn


def build(layer_sizes: list[int]) -> jaxnn.Layer:
    """``[n_x, n_1, …, n_L]`` → dense/relu … dense/sigmoid, the classic L-layer network."""
    layers = []
    for n in layer_sizes[1:-1]:
        layers += [jaxnn.dense(n), jaxnn.relu()]
    layers += [jaxnn.dense(layer_sizes[-1]), jaxnn.sigmoid()]
    return jaxnn.serial(*layers)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="2,20,7,5,1", help="layer sizes, input first")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=0.3)
    parser.add_argument("--print-every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    sizes = [int(n) for n in args.layers.split(",")]
    x, y = jaxnn.data.planar_flower(400)
    if sizes[0] != x.shape[1]:
        parser.error(f"--layers must start with the input size {x.shape[1]}, got {sizes[0]}")
    model = build(sizes)
    _, params, _ = model.init(jax.random.key(args.seed), (-1, sizes[0]))
    optimizer = optax.sgd(args.lr)
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(model, jaxnn.binary_cross_entropy, optimizer)

    start = time.perf_counter()
    for i in range(args.steps):
        params, _, opt_state, cost = step(params, (), opt_state, x, y)
        if i % args.print_every == 0 or i == args.steps - 1:
            print(f"cost after step {i}: {float(cost):.6f}")
    elapsed = time.perf_counter() - start
    acc = float(jaxnn.accuracy(jaxnn.predict(model, params, x), y))
    print(f"train accuracy: {acc:.4f} ({args.steps} steps in {elapsed:.2f}s)")
    return acc


if __name__ == "__main__":
    main()
