"""`xtalpilot train`: data -> ensemble -> checkpoint -> metrics, and its settings."""

from __future__ import annotations

import json

import pytest

from controller.cli import main
from models.msgnn import KineticsPredictor
from models.settings import TrainSettings
from models.train import regression_metrics

TINY = ["data.materials=[NaCl,KCl,Cu,Si]", "data.variants_per_material=1", "data.conditions_per_variant=6",
        "split.name=heldout_conditions", "train.epochs=2", "train.ensemble_size=2", "msgnn.hidden=8",
        "train_command.progress=false"]


def test_train_command_writes_a_loadable_checkpoint_and_metrics(tmp_path, capsys):
    ckpt, metrics = tmp_path / "model" / "msgnn", tmp_path / "metrics.json"
    assert main(["train", *TINY, f"train_command.checkpoint={ckpt}", f"train_command.metrics_file={metrics}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["test"]) == {"G", "log10_B", "lambda", "facet_R"}
    assert summary["split"]["name"] == "heldout_conditions" and "SYNTHETIC" in summary["data"]
    assert json.loads(metrics.read_text())["test"] == summary["test"]
    predictor = KineticsPredictor.load(ckpt, device="cpu")
    assert predictor.ensemble.size == 2 and predictor.ensemble.settings.hidden == 8


def test_train_command_refuses_a_bad_setting_in_one_line(caplog):
    assert main(["train", "train.epochs=0"]) == 2
    assert "invalid configuration: train.epochs must be >= 1, got 0" in caplog.text


def test_regression_metrics_are_exact_on_a_known_case():
    m = regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 5.0])
    assert m["rmse"] == pytest.approx((4 / 3) ** 0.5) and m["mae"] == pytest.approx(2 / 3)
    assert m["r2"] == pytest.approx(1 - 4 / 2)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(learning_rate=0.0), dict(device="tpu"), dict(patience=-1)])
def test_bad_train_settings_are_refused(bad):
    with pytest.raises(ValueError):
        TrainSettings(**bad)
