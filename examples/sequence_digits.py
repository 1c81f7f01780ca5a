"""A recurrent network reads scikit-learn's 8×8 handwritten digits row by row.

Each image is a sequence of 8 steps of 8 features (one pixel row per step); an LSTM (or a GRU,
``--cell gru``) reads it and a dense layer turns its last hidden state into 10 logits:

    lstm(H, return_sequences=False) → dense(10)

trained with Adam on mini-batches through the hand-derived back-propagation through time
(``jaxnn.make_train_step``) and softmax cross-entropy. The digits ship with scikit-learn (no
download); install it with ``pip install "jaxnn[data]"``.

    python examples/sequence_digits.py --epochs 40
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import jaxnn


def build(cell: str = "lstm", hidden: int = 64) -> jaxnn.Layer:
    """The network for ``(N, 8, 8)`` sequences: a recurrent layer's last state, then 10 logits."""
    recurrent = {"lstm": jaxnn.lstm, "gru": jaxnn.gru}[cell]
    return jaxnn.serial(recurrent(hidden, return_sequences=False), jaxnn.dense(10))


def load(test_fraction: float, seed: int):
    """Train and test sets: sequences ``(m, 8, 8)`` (time = image row), int labels ``(m,)``."""
    try:
        x, y = jaxnn.data.digits()
    except ImportError as err:  # scikit-learn is an optional extra
        raise SystemExit(f"sequence_digits: {err}") from err
    return jaxnn.data.train_test_split(x.reshape(-1, 8, 8), y.reshape(-1),
                                       test_fraction=test_fraction, seed=seed)


def main(argv: list[str] | None = None) -> float:
    """Trains the network and returns its accuracy on the held-out digits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load(args.test_fraction, args.seed)
    model = build(args.cell, args.hidden)
    init_key, data_key = jax.random.split(jax.random.key(args.seed))
    _, params, state = model.init(init_key, (-1, 8, 8))
    steps_per_epoch = x_train.shape[0] // args.batch_size
    optimizer = optax.adam(optax.cosine_decay_schedule(args.lr, args.epochs * steps_per_epoch))

    def report(epoch, losses, params, state):
        if (epoch + 1) % 10 == 0 or epoch == 0:
            print(f"epoch {epoch + 1:3d}: mean training loss {float(jnp.mean(losses)):.4f}")

    start = time.perf_counter()
    # whole epochs in one compiled scan; the remainder batch is dropped, so shapes never change
    result = jaxnn.fit(model, jaxnn.softmax_cross_entropy, optimizer, params, x_train, y_train,
                       epochs=args.epochs, batch_size=args.batch_size, key=data_key,
                       state=state, on_epoch=report)
    params = result.params
    elapsed = time.perf_counter() - start
    acc = float(jaxnn.accuracy(jaxnn.predict(model, params, x_test), y_test))
    print(f"{args.cell}({args.hidden}), {args.epochs} epochs in {elapsed:.1f}s")
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main()
