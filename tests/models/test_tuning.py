"""`xtalpilot tune`: every model's search space and objective, the command's files."""

from __future__ import annotations

import json

import pytest

from controller.cli import main
from models.settings import DataSettings, SplitSettings
from models.tuning import DEFAULTS, SPACES, Objective

TINY_DATA = DataSettings(materials=("NaCl", "KCl", "Cu", "Si"), variants_per_material=1, conditions_per_variant=6)


@pytest.mark.parametrize("model", ["mlp", "svr", "gp", "msgnn"])
def test_defaults_lie_in_the_search_space_and_score(model):
    space = SPACES[model]
    assert set(DEFAULTS[model]) == {p.name for p in space.params}
    assert space.decode(space.encode(DEFAULTS[model])) == pytest.approx(DEFAULTS[model])
    loss = Objective(model, TINY_DATA, SplitSettings(name="heldout_conditions"), epochs=1)(
        {**DEFAULTS[model], "hidden": 8} if model in ("msgnn",) else DEFAULTS[model])
    assert loss > 0 and loss < 100


def test_tune_command_runs_all_methods_and_resumes(tmp_path, capsys):
    args = ["tune", "tune.model=svr", "tune.trials=3", "tune.q=1", "tune.n_init=2", f"tune.output_dir={tmp_path}",
            "data.materials=[NaCl,KCl,Cu,Si]", "data.variants_per_material=1", "data.conditions_per_variant=6",
            "split.name=heldout_conditions"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["best"]) == {"bo", "random", "sobol"}
    for method in ("bo", "random", "sobol"):
        assert len((tmp_path / "svr" / f"trials_{method}.jsonl").read_text().splitlines()) == 3
    assert (tmp_path / "svr" / "regret.png").stat().st_size > 1000
    best = json.loads((tmp_path / "svr" / "best.json").read_text())
    assert best["loss"] == min(b["loss"] for b in summary["best"].values())
    # Resuming with a larger budget adds trials, it does not redo them.
    assert main([*args[:2], "tune.trials=4", *args[3:]]) == 0
    assert len((tmp_path / "svr" / "trials_bo.jsonl").read_text().splitlines()) == 4
