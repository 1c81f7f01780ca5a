"""examples/cnn_digits.py: a small CNN learns scikit-learn's 8×8 digits."""

import math
import sys

import pytest

from tests.test_examples import load_example


def test_one_epoch_prints_the_summary_a_finite_loss_and_the_accuracy(capsys):
    """Smoke (default run): the summary before training, one finite loss line, the accuracy."""
    acc = load_example("cnn_digits").main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert "total parameters: 13,706" in out  # the summary printed before training
    loss_line = next(line for line in out.splitlines() if line.startswith("epoch   1:"))
    assert math.isfinite(float(loss_line.split("mean training loss")[1]))
    assert f"test accuracy: {acc:.4f} on " in out and 0.0 <= acc <= 1.0


@pytest.mark.slow
def test_the_full_run_reaches_98_percent(capsys):
    """The full run (30 epochs) prints every epoch and reaches 98% on held-out digits."""
    acc = load_example("cnn_digits").main([])
    out = capsys.readouterr().out
    assert "epoch   1: mean training loss" in out and "epoch  30:" in out
    assert acc >= 0.98


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(SystemExit, match=r'pip install "jaxnn\[data\]"'):
        load_example("cnn_digits").main(["--epochs", "1"])
