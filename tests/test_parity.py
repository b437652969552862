"""fit and tape are twins: same config and seed, same per-epoch metrics (tape with include_reg_loss=true)."""

from typing import Dict

import pytest

from src.experiments.train import train

PARITY_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy")
# Measured on CPU (TF 2.21, Keras 3.15): the two loops agree bit for bit for every regularizer,
# both in this fast check and in the slow 5-epoch large-model one, so any difference is a regression.
MAX_ABS_DIFF = 0.0


def parity(make_cfg, reg: str, *overrides: str) -> Dict[str, float]:
    """The largest per-epoch |fit - tape| of each PARITY_METRICS for one regularizer."""
    fit = train(make_cfg("loop=fit", f"reg={reg}", *overrides)).history
    tape = train(make_cfg("loop=tape", "loop.include_reg_loss=true", f"reg={reg}", *overrides)).history
    diffs = {}
    for key in PARITY_METRICS:
        assert len(fit[key]) == len(tape[key]), key
        diffs[key] = max(abs(a - b) for a, b in zip(fit[key], tape[key]))
    return diffs


@pytest.mark.parametrize("reg", ["l2", "l2_dropout"])
def test_fit_and_tape_are_twins(make_cfg, reg):
    diffs = parity(make_cfg, reg, "model=large", "train.epochs=2")
    assert max(diffs.values()) <= MAX_ABS_DIFF, diffs


def test_twins_when_an_epoch_is_not_a_whole_number_of_calls(make_cfg):
    # 2000 rows in batches of 16: 125 steps an epoch, run by tape as calls of 50, 50 and 25 and by fit as five
    # of 25. A call that fetched a batch past the epoch's end would shift the tape loop's stream from epoch 1 on.
    diffs = parity(make_cfg, "l2_dropout", "train.batch_size=16", "train.epochs=2")
    assert max(diffs.values()) <= MAX_ABS_DIFF, diffs


@pytest.mark.slow
def test_fit_and_tape_are_twins_large_model_full_sample(make_cfg, capsys):
    """The README's figures: 5 epochs of the large model on the whole sample, every regularizer."""
    full = ("model=large", "train.epochs=5", "data.n_validation=1000", "data.n_train=9984")
    table = {reg: parity(make_cfg, reg, *full) for reg in ("none", "l2", "dropout", "l2_dropout")}
    with capsys.disabled():
        print("\nmax |fit - tape| per epoch, large model, 5 epochs, 1000 validation + 9984 training rows")
        print(f"{'reg':<12}" + "".join(f"{k:>14}" for k in PARITY_METRICS))
        for reg, diffs in table.items():
            print(f"{reg:<12}" + "".join(f"{diffs[k]:>14.3g}" for k in PARITY_METRICS))
    for reg, diffs in table.items():
        assert max(diffs.values()) <= MAX_ABS_DIFF, (reg, diffs)


def test_fit_runs_whole_epochs_of_calls_of_at_most_max_steps():
    # fit runs whole executions of steps_per_execution steps: a divisor of the epoch's steps keeps each epoch
    # exactly steps_per_epoch steps (the twins' parity above checks that end to end)
    from src.training.loop_settings import MAX_STEPS_PER_CALL, steps_per_call

    assert MAX_STEPS_PER_CALL == 50
    assert [steps_per_call(n) for n in (1, 19, 50, 100, 21_000, 97, 4)] == [1, 19, 50, 50, 50, 1, 4]
