"""Several replicas (the CPU split into logical devices) train like one, for both loops, with and without L2."""

import pytest
from mlflow import MlflowClient

from tests.helpers import history, run_cli, split_runs

KEYS = ("loss", "val_loss", "accuracy", "val_accuracy", "reg_loss", "val_binary_crossentropy")
# Two replicas sum two half-batch gradients instead of one full-batch gradient:
# the same arithmetic in another order, so only float rounding may differ.
TOLERANCE = 1e-5


def _sweep(higgs_file, tmp_path, logical_cpus):
    uri = f"sqlite:///{tmp_path}/cpus{logical_cpus}/mlflow.db"
    args = [
        "-m", "loop=fit,tape", "reg=none,l2", "model=medium", "train.epochs=3", f"train.logical_cpus={logical_cpus}",
        f"data.path={higgs_file}", "data.n_validation=500", "data.n_train=2000", "quiet=true",
        f"mlflow.tracking_uri={uri}", f"mlflow.artifact_location={tmp_path}/cpus{logical_cpus}/artifacts",
        f"hydra.sweep.dir={tmp_path}/cpus{logical_cpus}/sweep",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    _, children = split_runs(uri)
    return {
        run.info.run_name: (run.data.tags, history(client, run.info.run_id, KEYS))
        for run in children
    }


@pytest.mark.slow
def test_two_replicas_match_one_for_fit_and_tape_with_and_without_l2(higgs_file, tmp_path):
    one = _sweep(higgs_file, tmp_path, 1)
    two = _sweep(higgs_file, tmp_path, 2)
    assert set(one) == set(two) == {"fit-none-medium", "fit-l2-medium", "tape-none-medium", "tape-l2-medium"}
    for name in one:
        tags_one, history_one = one[name]
        tags_two, history_two = two[name]
        assert (tags_one["replicas"], tags_two["replicas"]) == ("1", "2")
        assert tags_two["strategy"] == "mirrored"
        assert tags_two["devices"] == "/device:CPU:0,/device:CPU:1"
        for key in KEYS:
            assert history_two[key] == pytest.approx(history_one[key], abs=TOLERANCE), (name, key)
    # The penalty counts once in the 2-replica objective, not once per replica:
    # validation runs on fixed weights, so val_loss - val_bce is exactly the penalty.
    for name in ("fit-l2-medium", "tape-l2-medium"):
        _, l2 = two[name]
        assert l2["reg_loss"][-1] > 0.01
        assert l2["val_loss"][-1] - l2["val_binary_crossentropy"][-1] == pytest.approx(l2["reg_loss"][-1], rel=1e-4)
