"""Training of the MS-GNN ensemble: mini-batches, early stopping, metrics.

Loss: mean squared error on the standardised targets (:class:`models.msgnn.TargetScaler`),
the three graph targets and the facet growth rates weighted equally. Each member trains from
its own initialisation and batch order; the best validation epoch is kept (early stopping with
``patience``).

Metrics (:func:`regression_metrics`) are in physical units: G and facet R in um/min, log10 B,
lambda: RMSE, MAE and R2 per target.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from models.graphs import GRAPH_TARGETS, MultiScaleDataset
from models.msgnn import TARGETS, Batch, Ensemble, MSGNN, TargetScaler, collate
from models.settings import MSGNNSettings, TrainSettings

__all__ = ["TrainSettings", "TrainResult", "fit_ensemble", "regression_metrics", "evaluate"]


@dataclass
class TrainResult:
    """What :func:`fit_ensemble` returns.

    Attributes:
        ensemble: the trained ensemble (best validation epoch of every member).
        val_loss: mean over members of the best validation loss (standardised MSE).
        history: per member, the validation loss after each epoch.
        epochs: per member, epochs run.
        wall_s: training wall time.
    """

    ensemble: Ensemble
    val_loss: float
    history: list[list[float]] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    wall_s: float = 0.0


def _batches(n: int, batch_size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i: i + batch_size] for i in range(0, n, batch_size)]


def material_batches(dataset: MultiScaleDataset, indices: np.ndarray, batch_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of whole materials: all samples of a few material states per step.

    Why: levels 1-2 (hundreds of atoms) cost far more than a facet graph, and every sample of
    a material state shares them. Random batches of 64 samples touch ~50 states and embed each;
    grouped batches embed each state once per epoch (measured: 3.6 s vs 1.1 s per epoch on
    3,840 samples, 2 CPU cores).
    """
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(dataset.queries[i].material_index, []).append(int(i))
    keys = list(groups)
    rng.shuffle(keys)
    batches, current = [], []
    for key in keys:
        current.extend(groups[key])
        if len(current) >= batch_size:
            batches.append(np.asarray(current))
            current = []
    if current:
        batches.append(np.asarray(current))
    return batches


def _loss(model: MSGNN, b: Batch, scaler: TargetScaler) -> torch.Tensor:
    g_pred, f_pred = model(b)
    g_true, f_true = scaler.scale(b.y, b.facet_y)
    per_target = torch.cat([((g_pred - g_true) ** 2).mean(0), ((f_pred - f_true) ** 2).mean().unsqueeze(0)])
    return per_target.mean()


def _prepare(dataset: MultiScaleDataset, indices: np.ndarray, batch_size: int, device: torch.device) -> list[Batch]:
    rng = np.random.default_rng(0)
    return [collate(dataset, chunk).to(device) for chunk in material_batches(dataset, indices, batch_size, rng)]


@torch.no_grad()
def _val_loss(model: MSGNN, batches: list[Batch], scaler: TargetScaler) -> float:
    model.eval()
    total, count = 0.0, 0
    for b in batches:
        n = b.conditions.shape[0]
        total += float(_loss(model, b, scaler)) * n
        count += n
    return total / max(count, 1)


def fit_ensemble(
    dataset: MultiScaleDataset,
    train_idx: Sequence[int],
    val_idx: Sequence[int],
    model_settings: MSGNNSettings = MSGNNSettings(),
    settings: TrainSettings = TrainSettings(),
    progress: bool = False,
    info: dict | None = None,
    on_epoch: Callable[[int, int, float], None] | None = None,
) -> TrainResult:
    """Train a deep ensemble on ``train_idx`` with early stopping on ``val_idx``.

    Args:
        dataset: the samples.
        train_idx: indices to fit.
        val_idx: indices for early stopping (may be empty: then the last epoch is kept).
        model_settings: architecture.
        settings: optimisation.
        progress: show a progress bar (members x epochs).
        info: provenance stored in the checkpoint.
        on_epoch: called with (member, epoch, validation loss).
    """
    device = settings.torch_device()
    train_idx = np.asarray(train_idx, dtype=int)
    val_idx = np.asarray(val_idx, dtype=int)
    if train_idx.size == 0:
        raise ValueError("no training samples")
    y = torch.stack([dataset.queries[i].y for i in train_idx])
    fy = torch.cat([dataset.queries[i].facet_y for i in train_idx])
    scaler = TargetScaler.fit(y, fy)
    ensemble = Ensemble(model_settings, scaler, size=settings.ensemble_size, seed=settings.seed, info=info)
    ensemble.to(device)
    val_batches = _prepare(dataset, val_idx, 256, device) if val_idx.size else []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.ensemble_size * settings.epochs, unit="epoch", desc="training", leave=False)
    t0 = time.perf_counter()
    histories, epochs_run, best_losses = [], [], []
    for k, model in enumerate(ensemble.members):
        rng = np.random.default_rng([settings.seed, k])
        torch.manual_seed(settings.seed * 1000 + k)
        opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
        best, best_state, since, history = math.inf, None, 0, []
        epoch = 0
        for epoch in range(1, settings.epochs + 1):
            model.train()
            for chunk in material_batches(dataset, train_idx, settings.batch_size, rng):
                b = collate(dataset, chunk).to(device)
                opt.zero_grad(set_to_none=True)
                loss = _loss(model, b, scaler)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
            sched.step()
            val = _val_loss(model, val_batches, scaler) if val_batches else float(loss)
            history.append(val)
            if on_epoch is not None:
                on_epoch(k, epoch, val)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(member=k, val=f"{val:.4f}")
            if val < best - 1e-6:
                best, best_state, since = val, copy.deepcopy(model.state_dict()), 0
            else:
                since += 1
                if since > settings.patience:
                    if bar is not None:
                        bar.update(settings.epochs - epoch)
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
        histories.append(history)
        epochs_run.append(epoch)
        best_losses.append(best)
    if bar is not None:
        bar.close()
    ensemble.eval()
    return TrainResult(ensemble, float(np.mean(best_losses)), histories, epochs_run, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- metrics
def regression_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R2 of one target."""
    true = np.asarray(true, dtype=float).reshape(-1)
    pred = np.asarray(pred, dtype=float).reshape(-1)
    err = pred - true
    ss_tot = float(np.sum((true - true.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1.0 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
    }


@torch.no_grad()
def predict_dataset(ensemble: Ensemble, dataset: MultiScaleDataset, indices: Sequence[int],
                    batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Physical predictions: graph targets (N, 3) and facet rates (sum of facets,)."""
    device = next(ensemble.parameters()).device
    indices = np.asarray(indices, dtype=int)
    graph, facet = [], []
    for chunk in _batches(indices.size, batch_size, None):
        pred = ensemble.predict(collate(dataset, indices[chunk]).to(device))
        graph.append(pred.graph_mean.cpu().numpy())
        facet.append(pred.facet_mean.cpu().numpy())
    return np.concatenate(graph), np.concatenate(facet)


def truth(dataset: MultiScaleDataset, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Physical targets: graph (N, 3) and facet rates."""
    qs = [dataset.queries[i] for i in indices]
    return torch.stack([q.y for q in qs]).numpy(), torch.cat([q.facet_y for q in qs]).numpy()


def metrics_by_target(true_graph: np.ndarray, pred_graph: np.ndarray, true_facet: np.ndarray,
                      pred_facet: np.ndarray) -> dict[str, dict[str, float]]:
    """{target: {rmse, mae, r2}} for G, log10_B, lambda, facet_R."""
    out = {name: regression_metrics(true_graph[:, i], pred_graph[:, i]) for i, name in enumerate(GRAPH_TARGETS)}
    out["facet_R"] = regression_metrics(true_facet, pred_facet)
    assert tuple(out) == TARGETS
    return out


def evaluate(ensemble: Ensemble, dataset: MultiScaleDataset, indices: Sequence[int]) -> dict[str, dict[str, float]]:
    """Metrics of ``ensemble`` on ``indices``."""
    pred_g, pred_f = predict_dataset(ensemble, dataset, indices)
    true_g, true_f = truth(dataset, indices)
    return metrics_by_target(true_g, pred_g, true_f, pred_f)


def train_command(cfg) -> dict:
    """``xtalpilot train``: generate data, fit the ensemble on the split, test, write a checkpoint.

    Args:
        cfg: :class:`conf.schema.XtalpilotConfig` (``data``, ``split``, ``msgnn``, ``train``,
            ``train_command``).

    Returns:
        Summary with test metrics (also written to ``train_command.metrics_file``).
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from models.data import generate
    from models.tuning import make_split

    out = cfg.train_command
    dataset = generate(cfg.data, progress=out.progress)
    s = make_split(dataset, cfg.split)
    result = fit_ensemble(dataset, s.train, s.val, cfg.msgnn, cfg.train, progress=out.progress, info={
        "data": dataset.description, "split": s.name, "held_out": list(s.held_out),
        "train_samples": int(s.train.size),
    })
    metrics = evaluate(result.ensemble, dataset, s.test)
    weights, config = result.ensemble.save(out.checkpoint)
    summary = {
        "checkpoint": {"weights": str(weights), "config": str(config)},
        "data": dataset.description,
        "split": {"name": s.name, "held_out": list(s.held_out), "train": int(s.train.size),
                  "val": int(s.val.size), "test": int(s.test.size)},
        "val_loss": result.val_loss,
        "epochs": result.epochs,
        "train_wall_s": result.wall_s,
        "test": metrics,
        "settings": {"msgnn": asdict(cfg.msgnn), "train": asdict(cfg.train)},
    }
    path = Path(out.metrics_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return summary
