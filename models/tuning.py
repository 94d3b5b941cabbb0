"""What is tuned and how a trial is scored: search spaces and objectives of every model.

Each model (``msgnn``, ``mlp``, ``svr``, ``gp``) has a :data:`SPACES` entry; a trial fits the
model on a split's training samples and returns its validation loss, the mean standardised MSE
over G, log10 B, lambda and facet R (the same number for every model, see
:class:`models.msgnn.TargetScaler`). Test samples are never seen while tuning.

Objectives are small frozen dataclasses, so a process pool can pickle them; each worker
generates the (deterministic) dataset once and keeps it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from models.bhpo import Param, SearchSpace
from models.data import Split, generate, split
from models.graphs import MultiScaleDataset
from models.settings import MODELS, DataSettings, MSGNNSettings, SplitSettings, TrainSettings

__all__ = ["MODELS", "SPACES", "Objective", "SplitSettings", "fit_model", "dataset_for", "make_split"]


SPACES: dict[str, SearchSpace] = {
    "msgnn": SearchSpace((
        Param("hidden", "int", 16, 64, log=True),
        Param("atom_layers", "int", 0, 3),
        Param("cluster_layers", "int", 0, 3),
        Param("facet_layers", "int", 1, 3),
        Param("heads", "int", 1, 4),
        Param("pooling", "cat", choices=("mean", "attention")),
        Param("dropout", "real", 0.0, 0.2),
        Param("learning_rate", "real", 1e-3, 1e-2, log=True),
        Param("weight_decay", "real", 1e-6, 1e-3, log=True),
        Param("batch_size", "int", 32, 128, log=True),
    )),
    "mlp": SearchSpace((
        Param("hidden", "int", 32, 256, log=True),
        Param("layers", "int", 1, 4),
        Param("dropout", "real", 0.0, 0.2),
        Param("learning_rate", "real", 3e-4, 1e-2, log=True),
        Param("weight_decay", "real", 1e-6, 1e-3, log=True),
        Param("batch_size", "int", 32, 256, log=True),
    )),
    "svr": SearchSpace((
        Param("C", "real", 0.1, 100.0, log=True),
        Param("epsilon", "real", 0.01, 0.3, log=True),
        Param("gamma", "real", 1e-3, 0.3, log=True),
    )),
    "gp": SearchSpace((
        Param("kernel", "cat", choices=("rbf", "matern52")),
        Param("length_scale", "real", 0.3, 30.0, log=True),
        Param("noise", "real", 1e-4, 1e-1, log=True),
    )),
}

#: Configs used when nothing was tuned (the settings' defaults).
DEFAULTS: dict[str, dict] = {
    "msgnn": {"hidden": 32, "atom_layers": 2, "cluster_layers": 2, "facet_layers": 2, "heads": 2,
              "pooling": "mean", "dropout": 0.0, "learning_rate": 3e-3, "weight_decay": 1e-4, "batch_size": 64},
    "mlp": {"hidden": 128, "layers": 2, "dropout": 0.0, "learning_rate": 3e-3, "weight_decay": 1e-4, "batch_size": 128},
    "svr": {"C": 10.0, "epsilon": 0.05, "gamma": 0.02},
    "gp": {"kernel": "matern52", "length_scale": 3.0, "noise": 1e-2},
}


@functools.lru_cache(maxsize=4)
def dataset_for(settings: DataSettings) -> MultiScaleDataset:
    """The generated dataset, once per process."""
    return generate(settings)


def make_split(dataset: MultiScaleDataset, settings: SplitSettings, name: str | None = None) -> Split:
    return split(dataset, name or settings.name, seed=settings.seed, n_test_materials=settings.n_test_materials,
                 family=settings.family, condition_quantile=settings.condition_quantile)


def _msgnn_settings(config: dict, cross_scale: bool = True) -> MSGNNSettings:
    names = {f.name for f in fields(MSGNNSettings)}
    return MSGNNSettings(**{k: v for k, v in config.items() if k in names}, cross_scale=cross_scale)


@dataclass
class FittedModel:
    """Any fitted model behind one interface (physical predictions and the validation loss)."""

    kind: str
    model: Any
    val_loss: float
    wall_s: float

    def predict(self, dataset: MultiScaleDataset, indices) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "msgnn":
            from models.train import predict_dataset

            return predict_dataset(self.model, dataset, indices)
        return self.model.predict(dataset, indices)


def fit_model(kind: str, config: dict, dataset: MultiScaleDataset, train_idx, val_idx, seed: int = 0,
              epochs: int = 60, ensemble_size: int = 1, cross_scale: bool = True, progress: bool = False,
              device: str = "auto") -> FittedModel:
    """Fit model ``kind`` with hyperparameters ``config``; the validation loss comes back with it."""
    import time

    from models.baselines import make_flat_model
    from models.train import fit_ensemble

    config = {**DEFAULTS[kind], **config}
    t0 = time.perf_counter()
    if kind == "msgnn":
        train = TrainSettings(epochs=epochs, patience=max(5, epochs // 4), batch_size=int(config["batch_size"]),
                              learning_rate=float(config["learning_rate"]),
                              weight_decay=float(config["weight_decay"]), ensemble_size=ensemble_size, seed=seed,
                              device=device)
        result = fit_ensemble(dataset, train_idx, val_idx, _msgnn_settings(config, cross_scale), train,
                              progress=progress, info={"hyperparameters": config})
        return FittedModel(kind, result.ensemble, result.val_loss, time.perf_counter() - t0)
    model = make_flat_model(kind, dataset, train_idx, config, seed=seed)
    return FittedModel(kind, model, model.val_loss(dataset, val_idx), time.perf_counter() - t0)


@dataclass(frozen=True)
class Objective:
    """A picklable trial: fit ``model`` with a config on the split, return the validation loss.

    Attributes:
        model: msgnn, mlp, svr or gp.
        data: dataset settings (regenerated once per worker).
        split: which split's train/val.
        seed: model seed.
        epochs: MS-GNN epochs per trial.
        train_fraction: share of the training materials' samples used (learning-curve and
            cheap searches); 1 uses all.
    """

    model: str
    data: DataSettings
    split: SplitSettings
    seed: int = 0
    epochs: int = 30
    train_fraction: float = 1.0

    def __call__(self, config: dict) -> float:
        import torch

        torch.set_num_threads(1)  # one core per worker: q workers share the machine
        dataset = dataset_for(self.data)
        s = make_split(dataset, self.split)
        train = subsample(s.train, self.train_fraction, self.seed)
        return fit_model(self.model, config, dataset, train, s.val, seed=self.seed, epochs=self.epochs,
                         device="cpu").val_loss


def subsample(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded share of ``indices`` (all of them when fraction >= 1)."""
    if fraction >= 1.0:
        return indices
    n = max(1, int(round(fraction * indices.size)))
    return np.sort(np.random.default_rng([seed, 17]).choice(indices, size=n, replace=False))


def tune_command(cfg) -> dict:
    """``xtalpilot tune``: BHPO (and/or random and Sobol search) of one model on the split.

    Writes ``<output_dir>/<model>/trials_<method>.jsonl`` (resumable), ``best.json`` and
    ``regret.png``; returns a summary.
    """
    import json
    from pathlib import Path

    from models.bhpo import best_so_far, plot_regret, run_search

    t = cfg.tune
    out = Path(t.output_dir) / t.model
    objective = Objective(t.model, cfg.data, cfg.split, seed=t.seed, epochs=t.epochs)
    methods = ("bo", "random", "sobol") if t.method == "all" else (t.method,)
    curves, best = {}, {}
    for method in methods:
        trials = run_search(objective, SPACES[t.model], method, t.trials, out / f"trials_{method}.jsonl",
                            q=t.q, n_init=t.n_init, seed=t.seed, progress=True)
        curves[method] = best_so_far(trials)
        top = min(trials, key=lambda tr: tr.loss)
        best[method] = {"loss": top.loss, "config": top.config, "trial": top.index}
    overall = min(best.values(), key=lambda b: b["loss"])
    (out / "best.json").write_text(json.dumps(overall, indent=2))
    plot = plot_regret(curves, out / "regret.png", title=f"{t.model}: best validation loss")
    return {"model": t.model, "split": cfg.split.name, "trials": t.trials, "q": t.q, "best": best,
            "best_overall": overall, "regret_plot": str(plot),
            "best_so_far": {m: c.tolist() for m, c in curves.items()}}
