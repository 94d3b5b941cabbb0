"""`xtalpilot bench model` on a tiny budget: the protocol runs and the JSON has the documented shape."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from conf.schema import load_config
from models.bench import run_model_benchmark

TINY = ["data.materials=[NaCl,KCl,KBr,Cu,Al,Ni,Si,Ge,Fe,W,CsCl,CsI]", "data.variants_per_material=1",
        "data.conditions_per_variant=4", "split.n_test_materials=2", "bench_model.trials=2", "bench_model.q=1",
        "bench_model.seeds=[0]", "bench_model.tune_epochs=1", "bench_model.epochs=1",
        "bench_model.bhpo_seeds=[0,1]", "bench_model.bhpo_model=svr",
        "bench_model.learning_curve_fractions=[0.5,1.0]", "train.ensemble_size=2"]


def test_the_model_benchmark_reports_every_documented_key(tmp_path):
    cfg = load_config([*TINY, f"bench_model.output_dir={tmp_path}"])
    with ThreadPoolExecutor(1) as pool:
        result = run_model_benchmark(cfg, progress=False, executor=pool)
    for split in ("heldout_materials", "heldout_families", "heldout_conditions"):
        for model in ("msgnn", "mlp", "svr", "gp", "msgnn_no_cross_scale"):
            for target in ("G", "log10_B", "lambda", "facet_R"):
                assert result[split]["rmse"][model][target] > 0
                assert result[split]["mae"][model][target] <= result[split]["rmse"][model][target]
    assert result["bhpo"]["random_trials"] == 2
    assert len(result["bhpo"]["trials_to_match_random_best_per_seed"]) == 2
    inference = result["inference"]
    assert 0 < inference["cached_query_ms"]["p50"] <= inference["cached_query_ms"]["p99"]
    assert inference["batch64_graphs_per_s"] > 0 and inference["ensemble_size"] == 2
    assert len(result["learning_curve"]["msgnn"]) == 2 and result["details"]["synthetic"] is True
    assert json.loads((tmp_path / "result.json").read_text())["bhpo"] == result["bhpo"]
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "bhpo_regret.png").stat().st_size > 1000
