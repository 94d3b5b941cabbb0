"""``xtalpilot bench model``: the MS-GNN against flat baselines, measured on SYNTHETIC data.

Protocol (every number in the JSON comes from this run):

1. Generate the dataset (:func:`models.data.generate`, synthetic labels from the physics chain).
2. Tune every model (msgnn, mlp, svr, gp) with BHPO on the same budget (``trials`` trials,
   ``q`` in parallel), scored on the validation materials of the held-out-materials split.
3. Refit each tuned model with every seed on each split (held-out materials, held-out
   structure family, held-out conditions) and score the test samples: RMSE, MAE and R2 per
   target (G and facet R in um/min, log10 B, lambda); mean and standard deviation over seeds.
   The MS-GNN ablation without cross-scale (cluster -> facet) messages is refitted the same way.
4. Learning curve on the held-out-materials split: test RMSE against the share of training
   samples, for the MS-GNN and the baseline with the best tuning (validation) loss.
5. BHPO against random search on the same budget, one search pair per seed: best validation
   loss after n trials (median over seeds) and the trials BO needed to match random search's
   final best.
6. Inference on this CPU: a control-cycle query with cached material embeddings (p50, p99),
   one full sample, and graphs per second for a batch of 64 (weights do not change the
   cost, so the tuned architecture is timed with fresh weights).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from models.bhpo import best_so_far, plot_regret, run_search
from models.data import generate
from models.graphs import GRAPH_TARGETS
from models.settings import MODELS, SPLITS
from models.train import metrics_by_target, truth
from models.tuning import SPACES, Objective, fit_model, make_split, subsample

__all__ = ["run_model_benchmark"]

TARGET_KEYS = (*GRAPH_TARGETS, "facet_R")


def _aggregate(per_seed: list[dict]) -> dict:
    """{target: {metric: mean}} and a parallel std block over seeds."""
    out, std = {}, {}
    for target in TARGET_KEYS:
        out[target], std[target] = {}, {}
        for metric in ("rmse", "mae", "r2"):
            values = [m[target][metric] for m in per_seed]
            out[target][metric] = float(np.mean(values))
            std[target][metric] = float(np.std(values))
    return {"mean": out, "std": std}


def _percentile_ms(samples_s: list[float]) -> dict:
    arr = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


def _inference(cfg, config: dict, dataset, indices) -> dict:
    from models.msgnn import Ensemble, KineticsPredictor, TargetScaler, collate
    from models.tuning import _msgnn_settings

    settings = _msgnn_settings(config)
    ensemble = Ensemble(settings, TargetScaler((0.0,) * 4, (1.0,) * 4), size=cfg.train.ensemble_size)
    predictor = KineticsPredictor(ensemble, device="cpu")
    q = dataset.queries[int(indices[0])]
    material = dataset.materials[q.material_index]
    conditions = np.array([[35.0, 0.03, 5.0, 300.0]])
    embedding = predictor.embed_material(material)
    for _ in range(20):
        predictor.query(embedding, q, conditions)
    cached = []
    for _ in range(300):
        t0 = time.perf_counter()
        predictor.query(embedding, q, conditions)
        cached.append(time.perf_counter() - t0)
    full = []
    for _ in range(50):
        t0 = time.perf_counter()
        predictor.predict(material, q, conditions)
        full.append(time.perf_counter() - t0)
    batch = collate(dataset, list(indices[:64]))
    ensemble.predict(batch)
    t0, reps = time.perf_counter(), 5
    for _ in range(reps):
        ensemble.predict(batch)
    forward_s = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        collate(dataset, list(indices[:64]))
    collate_s = (time.perf_counter() - t0) / reps
    return {
        "cached_query_ms": _percentile_ms(cached),
        "full_sample_ms": _percentile_ms(full),
        "batch64_graphs_per_s": 64.0 / forward_s,
        "batch64_graphs_per_s_with_collate": 64.0 / (forward_s + collate_s),
        "ensemble_size": ensemble.size,
        "threads": torch.get_num_threads(),
        "device": "cpu",
    }


def run_model_benchmark(cfg, progress: bool = True, executor=None) -> dict:
    """Run the whole protocol (module docstring); returns the JSON-ready result.

    Args:
        cfg: :class:`conf.schema.XtalpilotConfig` (``data``, ``split``, ``train``, ``bench_model``).
        progress: progress bars.
        executor: runs tuning trials (default: a process pool of ``bench_model.q`` workers per search).
    """
    b = cfg.bench_model
    out_dir = Path(b.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dataset = generate(cfg.data, progress=progress)
    splits = {name: make_split(dataset, cfg.split, name) for name in SPLITS}
    tune_split = dataclasses.replace(cfg.split, name="heldout_materials")

    # 2. BHPO of every model, the same budget.
    tuned: dict[str, dict] = {}
    for model in MODELS:
        objective = Objective(model, cfg.data, tune_split, seed=0, epochs=b.tune_epochs)
        trials = run_search(objective, SPACES[model], "bo", b.trials, out_dir / f"tune_{model}.jsonl",
                            q=b.q, n_init=min(4, b.trials), seed=0, executor=executor, progress=progress)
        top = min(trials, key=lambda t: t.loss)
        tuned[model] = {"config": top.config, "val_loss": top.loss, "trial": top.index}

    # 3. Final fits: every split, every seed, every model (+ the ablation).
    results: dict = {name: {"rmse": {}, "mae": {}, "r2": {}, "rmse_std": {}} for name in SPLITS}
    fit_wall: dict[str, list[float]] = {}
    variants = [*MODELS, "msgnn_no_cross_scale"]
    for name, s in splits.items():
        true_g, true_f = truth(dataset, s.test)
        for variant in variants:
            kind = "msgnn" if variant.startswith("msgnn") else variant
            per_seed = []
            for seed in b.seeds:
                fitted = fit_model(kind, tuned[kind]["config"], dataset, s.train, s.val, seed=seed, epochs=b.epochs,
                                   cross_scale=variant != "msgnn_no_cross_scale", progress=progress)
                fit_wall.setdefault(variant, []).append(fitted.wall_s)
                pred_g, pred_f = fitted.predict(dataset, s.test)
                per_seed.append(metrics_by_target(true_g, pred_g, true_f, pred_f))
            agg = _aggregate(per_seed)
            for metric in ("rmse", "mae", "r2"):
                results[name][metric][variant] = {t: agg["mean"][t][metric] for t in TARGET_KEYS}
            results[name]["rmse_std"][variant] = {t: agg["std"][t]["rmse"] for t in TARGET_KEYS}
        results[name]["held_out"] = list(s.held_out)
        results[name]["n"] = {"train": int(s.train.size), "val": int(s.val.size), "test": int(s.test.size)}
        best_flat = {t: min(results[name]["rmse"][m][t] for m in ("mlp", "svr", "gp")) for t in TARGET_KEYS}
        results[name]["msgnn_rmse_reduction_vs_best_flat"] = {
            t: 1.0 - results[name]["rmse"]["msgnn"][t] / best_flat[t] for t in TARGET_KEYS}

    # 4. Learning curve (held-out materials, first seed).
    best_baseline = min(("mlp", "svr", "gp"), key=lambda m: tuned[m]["val_loss"])
    s = splits["heldout_materials"]
    true_g, true_f = truth(dataset, s.test)
    curve: dict = {"fractions": list(b.learning_curve_fractions), "train_samples": [], "msgnn": [], best_baseline: []}
    for fraction in b.learning_curve_fractions:
        train = subsample(s.train, fraction, b.seeds[0])
        curve["train_samples"].append(int(train.size))
        for kind in ("msgnn", best_baseline):
            fitted = fit_model(kind, tuned[kind]["config"], dataset, train, s.val, seed=b.seeds[0], epochs=b.epochs)
            pred_g, pred_f = fitted.predict(dataset, s.test)
            m = metrics_by_target(true_g, pred_g, true_f, pred_f)
            curve[kind].append({t: m[t]["rmse"] for t in TARGET_KEYS})
    _plot_learning_curve(curve, best_baseline, out_dir / "learning_curve.png")

    # 5. BHPO vs random search on the same budget.
    bo_curves, random_curves, to_match = [], [], []
    for seed in b.bhpo_seeds:
        objective = Objective(b.bhpo_model, cfg.data, tune_split, seed=seed, epochs=b.tune_epochs)
        logs = {m: out_dir / f"bhpo_{b.bhpo_model}_{m}_seed{seed}.jsonl" for m in ("bo", "random")}
        bo = best_so_far(run_search(objective, SPACES[b.bhpo_model], "bo", b.trials, logs["bo"], q=b.q,
                                    n_init=min(4, b.trials), seed=seed, executor=executor, progress=progress))
        rnd = best_so_far(run_search(objective, SPACES[b.bhpo_model], "random", b.trials, logs["random"], q=b.q,
                                     seed=seed, executor=executor, progress=progress))
        bo_curves.append(bo)
        random_curves.append(rnd)
        hit = np.nonzero(bo <= rnd[-1])[0]
        to_match.append(int(hit[0]) + 1 if hit.size else None)
    plot_regret({"BO (qLogEI)": np.stack(bo_curves), "random": np.stack(random_curves)},
                out_dir / "bhpo_regret.png", title=f"{b.bhpo_model}: best validation loss, {len(b.bhpo_seeds)} seeds")
    matched = [t for t in to_match if t is not None]

    # 6. Inference.
    inference = _inference(cfg, tuned["msgnn"]["config"], dataset, splits["heldout_materials"].test)

    result = {
        **results,
        "tuned": tuned,
        "learning_curve": {**curve, "baseline": best_baseline},
        "bhpo": {
            "model": b.bhpo_model,
            "random_trials": b.trials,
            "trials_to_match_random_best": statistics.median(matched) if matched else None,
            "trials_to_match_random_best_per_seed": to_match,
            "best_after_n": {"bo": np.median(np.stack(bo_curves), 0).tolist(),
                             "random": np.median(np.stack(random_curves), 0).tolist()},
            "final_best": {"bo": [float(c[-1]) for c in bo_curves], "random": [float(c[-1]) for c in random_curves]},
        },
        "inference": inference,
        "details": {
            "data": dataset.description,
            "synthetic": dataset.synthetic,
            "samples": len(dataset),
            "seeds": list(b.seeds),
            "budget": {"trials": b.trials, "q": b.q, "tune_epochs": b.tune_epochs, "epochs": b.epochs},
            "fit_wall_s_median": {k: float(np.median(v)) for k, v in fit_wall.items()},
            "plots": [str(out_dir / "learning_curve.png"), str(out_dir / "bhpo_regret.png")],
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
            "bench_wall_s": time.perf_counter() - t_start,
        },
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def _plot_learning_curve(curve: dict, baseline: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TARGET_KEYS), figsize=(4 * len(TARGET_KEYS), 3.5))
    for ax, target in zip(axes, TARGET_KEYS):
        for kind in ("msgnn", baseline):
            ax.plot(curve["train_samples"], [p[target] for p in curve[kind]], marker="o", label=kind)
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.set_title(f"test RMSE {target}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
