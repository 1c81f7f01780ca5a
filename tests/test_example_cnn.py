"""examples/cnn_digits.py: a small CNN learns scikit-learn's 8×8 digits."""

import sys

import pytest

from tests.test_examples import load_example


def test_a_shortened_run_reaches_95_percent_on_held_out_digits(capsys):
    # 10 epochs instead of 30 (≈ 97% across seeds 0-3; the full run reaches ≈ 99%)
    acc = load_example("cnn_digits").main(["--epochs", "10"])
    out = capsys.readouterr().out
    assert "epoch   1: mean training loss" in out and "epoch  10:" in out
    assert "total parameters: 13,706" in out  # the summary printed before training
    assert acc >= 0.95


@pytest.mark.slow
def test_the_full_run_reaches_98_percent():
    assert load_example("cnn_digits").main([]) >= 0.98


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now fails
    with pytest.raises(SystemExit, match=r'pip install "jaxnn\[data\]"'):
        load_example("cnn_digits").main(["--epochs", "1"])
