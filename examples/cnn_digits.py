"""A small convolutional network on scikit-learn's 8×8 handwritten digits.

conv 3×3 → relu → max-pool 2×2 → conv 3×3 → relu → max-pool 2×2 → flatten → dense → relu →
dense (10 logits), trained with Adam on mini-batches by the hand-derived backward passes
(``jaxnn.make_train_step``) and softmax cross-entropy. The digits ship with scikit-learn (no
download); install it with ``pip install "jaxnn[data]"``.

    python examples/cnn_digits.py --epochs 30
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import jaxnn


def build(width: int = 16) -> jaxnn.Layer:
    """The network for ``(N, 8, 8, 1)`` images: two conv/pool stages, then two dense layers."""
    return jaxnn.serial(
        jaxnn.conv(width, (3, 3)), jaxnn.relu(), jaxnn.max_pool((2, 2)),  # → (N, 4, 4, width)
        jaxnn.conv(2 * width, (3, 3)), jaxnn.relu(), jaxnn.max_pool((2, 2)),  # → (N, 2, 2, 2w)
        jaxnn.flatten(),  # → (N, 8·width)
        jaxnn.dense(64), jaxnn.relu(),
        jaxnn.dense(10),
    )


def load(test_fraction: float, seed: int):
    """Train and test sets: images ``(m, 8, 8, 1)`` with pixels in [0, 1], int labels ``(m,)``."""
    try:
        x, y = jaxnn.data.digits()
    except ImportError as err:  # scikit-learn is an optional extra
        raise SystemExit(f"cnn_digits: {err}") from err
    x = x.reshape(-1, 8, 8, 1)
    y = y.reshape(-1)
    return jaxnn.data.train_test_split(x, y, test_fraction=test_fraction, seed=seed)


def main(argv: list[str] | None = None) -> float:
    """Trains the network and returns its accuracy on the held-out digits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load(args.test_fraction, args.seed)
    model = build(args.width)
    key = jax.random.key(args.seed)
    init_key, data_key = jax.random.split(key)
    _, params, _ = model.init(init_key, (-1, 8, 8, 1))
    optimizer = optax.adam(args.lr)
    opt_state = optimizer.init(params)
    step = jaxnn.make_train_step(model, jaxnn.softmax_cross_entropy, optimizer)

    print(jaxnn.summary(model, (-1, 8, 8, 1)))
    start = time.perf_counter()
    for epoch in range(args.epochs):
        losses = []
        # drop_last: every batch has the same shape, so the jitted step compiles once
        for xb, yb in jaxnn.data.batches(jax.random.fold_in(data_key, epoch), x_train, y_train,
                                         args.batch_size, drop_last=True):
            params, _, opt_state, loss = step(params, (), opt_state, xb, yb)
            losses.append(loss)
        mean_loss = float(jnp.mean(jnp.stack(losses)))
        print(f"epoch {epoch + 1:3d}: mean training loss {mean_loss:.4f}")
    elapsed = time.perf_counter() - start
    acc = float(jaxnn.accuracy(jaxnn.predict(model, params, x_test), y_test))
    print(f"test accuracy: {acc:.4f} on {x_test.shape[0]} digits ({args.epochs} epochs in "
          f"{elapsed:.1f}s)")
    return acc


if __name__ == "__main__":
    main()
