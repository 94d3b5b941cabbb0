"""Batch-to-batch learning: a recipe-level Gaussian process over a campaign of batches.

Within a batch the agent corrects its model online (:mod:`controller.estimator`); what it cannot
change within a batch is what was charged. Between batches it can: a plant makes one product in
campaigns, and a persistent error (a seed lot that holds less crystal than the sheet says, growth
slower than the model's) shows in every batch's record. Run-to-run optimisation, as a process
engineer would set it up:

**The decision** x: the seed charge, as a multiple of the recipe's, one of ``candidates`` evenly
spaced over ``bench_campaign.seed_mass_rel``. Without nucleation the seed charge and the mass
balance fix d43 whatever the cooling path, so where the size target is missed, seed loading is
the lever; the agent runs the batch, its cooling and its end, as it always does.

**The prior mean** m(x): what the model predicts a batch with charge x makes
(:meth:`controller.strategy.ModelPredictive.recipe_forecast`: the agent's own cascade plan where
its programme starts, rolled out with the MS-GNN's laws): d43, batch time, CV, fines, yield and
peak supersaturation (:data:`OUTCOMES`).

**The GP.** Per outcome j, a BoTorch ``SingleTaskGP`` over x of the model's error in units of
its prior scale s_j (``residual_scale``)::

    r_j(x) = (log o_j - log m_j(x)) / s_j     d43 and batch time (the model is off by a factor)
    r_j(x) = (o_j - m_j(x)) / s_j             CV, fines, yield, peak supersaturation

with a constant mean fitted to the batches (one batch off by a persistent bias moves the whole
curve), an RBF kernel of unit variance (so s_j is the error expected before any batch) and a
learned noise (batches differ by their noise and disturbance draws). So the outcome is
o_j(x) = m_j(x) (+) s_j r_j(x): a GP whose prior mean is the model's prediction.

**The acquisition.** The benchmark's own objective (:func:`controller.scoring.batch_cost_h`:
batch time per yield, the release window, the metastable limit) of outcomes sampled from the
posterior, as a ``GenericMCObjective``, in ``qLogNoisyExpectedImprovement`` over the batches run
(their records are noisy), evaluated on every candidate: the highest within a trust region
around the incumbent (``max_step_rel``: change control moves a recipe in steps) wins. The first batch
runs the recipe as written (``first_batch=recipe``) or the model's best charge (``model``).

``xtalpilot bench campaign`` (:func:`run_campaign_benchmark`) runs a campaign on the simulated
plant under a persistent mismatch (``bench_campaign.mismatch``), beside the same batches (paired
seeds) at the recipe's charge with the agent alone, and prints JSON: cost per batch number of
both, the charges chosen, batch N against batch 1; and a figure. The selection
(:func:`next_charge`) is pure; the campaign's I/O is the benchmark harness's.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["OUTCOMES", "Choice", "Prior", "forecast_prior", "next_charge", "observed_outcomes", "outcome_cost",
           "run_campaign_benchmark"]

_log = logging.getLogger("xtalpilot.campaign")

#: The outcomes the campaign models, in this order (the batch record's names in RECORD_KEYS).
OUTCOMES = ("d43_um", "batch_time_h", "cv", "fines", "yield", "peak_sigma")
#: Outcomes whose model error is a factor (modelled as a log ratio), not a difference.
_LOG = np.array([True, True, False, False, False, False])


@dataclass(frozen=True)
class Prior:
    """The model's forecast on the candidates.

    Attributes:
        seed_mass_rel: (n,) candidate seed charges, multiples of the recipe's, ascending.
        outcomes: (n, 6) predicted outcomes per candidate, in :data:`OUTCOMES` order.
    """

    seed_mass_rel: np.ndarray
    outcomes: np.ndarray

    def __post_init__(self) -> None:
        x, o = np.asarray(self.seed_mass_rel, dtype=float), np.asarray(self.outcomes, dtype=float)
        if x.ndim != 1 or x.size < 1 or o.shape != (x.size, len(OUTCOMES)):
            raise ValueError(f"a prior needs (n,) candidates and (n, {len(OUTCOMES)}) outcomes, got {x.shape}, "
                             f"{o.shape}")
        if x.size > 1 and not np.all(np.diff(x) > 0):
            raise ValueError("the candidates must ascend")
        if not np.all(np.isfinite(o)) or np.any(o[:, _LOG] <= 0):
            raise ValueError("the model's forecast has a non-finite or non-positive outcome")


@dataclass(frozen=True)
class Choice:
    """The campaign's next batch (:func:`next_charge`).

    Attributes:
        index: the candidate chosen.
        seed_mass_rel: its seed charge, a multiple of the recipe's.
        expected_cost: (n,) posterior mean cost per candidate (h): the prior's cost before any batch.
        acquisition: (n,) log expected improvement per candidate (empty for the first batch).
    """

    index: int
    seed_mass_rel: float
    expected_cost: np.ndarray
    acquisition: np.ndarray


def outcome_cost(outcomes, target_um: float, specification, metastable_sigma_limit: float,
                 time_limit_h: float = math.inf) -> np.ndarray:
    """The benchmark's cost (h) of outcomes (..., 6) in :data:`OUTCOMES` order: (...). A batch
    that reaches the plant's batch time limit ``time_limit_h`` is charged as failed (it was cut off)."""
    from controller.scoring import batch_cost_h

    o = np.asarray(outcomes, dtype=float)
    failed = o[..., 1] >= time_limit_h * (1.0 - 1e-3)
    return batch_cost_h(o[..., 1], o[..., 4], o[..., 0], o[..., 2], o[..., 3], o[..., 5], target_um, specification,
                        metastable_sigma_limit, failed)[0]


def observed_outcomes(record: dict) -> np.ndarray:
    """A batch's outcomes (6,) in :data:`OUTCOMES` order from its record (the plant's batch
    report, or a benchmark batch): the peak from the seed charge on where the record has it."""
    peak = record.get("peak_sigma_controlled")
    peak = record.get("peak_sigma") if peak is None else peak
    values = [record.get("d43_um"), record.get("batch_time_h"), record.get("cv"), record.get("fines_mass_fraction"),
              record.get("yield"), peak]
    return np.array([float(v) if v is not None else math.nan for v in values])


def _residuals(observed: np.ndarray, predicted: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(k, 6) model errors in units of their prior scale (module docstring)."""
    diff = np.where(_LOG, np.log(np.maximum(observed, 1e-12)) - np.log(predicted), observed - predicted)
    return diff / scale


def next_charge(prior: Prior, tried: Sequence[int], observed, target_um: float, specification,
                metastable_sigma_limit: float, residual_scale: Sequence[float], mc_samples: int = 256,
                seed: int = 0, time_limit_h: float = math.inf, first: int | None = None,
                max_step_rel: float = math.inf) -> Choice:
    """The next batch's seed charge (module docstring). Pure; deterministic for its inputs.

    Args:
        prior: the model's forecast on the candidates.
        tried: the candidate index of each batch run so far (k,).
        observed: (k, 6) their outcomes in :data:`OUTCOMES` order (a non-finite outcome: that
            batch is left out of the outcome's GP).
        target_um, specification, metastable_sigma_limit: what the cost judges by (the process's).
        time_limit_h: the plant's batch time limit (a batch predicted to reach it is failed).
        residual_scale: the prior scale of the model's error per outcome (6,).
        mc_samples: posterior samples of the acquisition.
        seed: the samples' seed.
        first: the first batch's candidate (None: the prior's best).
        max_step_rel: the next charge lies within this share of the incumbent's (the batch run
            whose posterior mean cost is lowest): a trust region, as change control moves a recipe.
    """
    import torch

    scale = np.asarray(residual_scale, dtype=float)
    prior_cost = outcome_cost(prior.outcomes, target_um, specification, metastable_sigma_limit, time_limit_h)
    x = prior.seed_mass_rel
    if len(tried) == 0:
        pick = int(np.argmin(prior_cost)) if first is None else int(first)
        return Choice(pick, float(x[pick]), prior_cost, np.zeros(0))
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.acquisition.objective import GenericMCObjective
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import ModelListGP, SingleTaskGP
    from botorch.exceptions.warnings import InputDataWarning
    from botorch.sampling import SobolQMCNormalSampler
    from gpytorch.mlls import ExactMarginalLogLikelihood

    n = x.size
    dtype = torch.float64
    span = float(x[-1] - x[0]) if n > 1 else 1.0
    grid = torch.as_tensor((x - x[0]) / span, dtype=dtype).unsqueeze(-1)  # (n, 1): candidates, normalised
    tried = [int(i) for i in tried]
    observed = np.asarray(observed, dtype=float).reshape(len(tried), len(OUTCOMES))
    residual = _residuals(observed, prior.outcomes[tried], scale)
    models = []
    for j in range(len(OUTCOMES)):
        rows = [k for k in range(len(tried)) if math.isfinite(residual[k, j])]
        if not rows:  # never observed: the prior alone (a GP of zero error, its prior scale)
            rows, values = [0], np.zeros(1)
        else:
            values = residual[rows, j]
        with warnings.catch_warnings():
            # scaled by the error expected, not standardised: one batch has no spread to standardise by
            warnings.simplefilter("ignore", InputDataWarning)
            gp = SingleTaskGP(grid[[tried[k] for k in rows]], torch.as_tensor(values, dtype=dtype).unsqueeze(-1),
                              outcome_transform=None)
            try:
                fit_gpytorch_mll(ExactMarginalLogLikelihood(gp.likelihood, gp))
            except Exception as exc:  # a fit that fails keeps the kernel's prior hyperparameters
                _log.warning("campaign GP of %s not fitted (%s): its prior hyperparameters stand", OUTCOMES[j], exc)
        models.append(gp)
    model = ModelListGP(*models)
    means = torch.as_tensor(prior.outcomes, dtype=dtype)
    scale_t = torch.as_tensor(scale, dtype=dtype)
    log_mask = torch.as_tensor(_LOG)

    def negative_cost(samples, X):  # samples (S, b, q, 6), X (b, q, 1) -> (S, b, q)
        index = torch.argmin((X[..., :1] - grid[:, 0]).abs(), dim=-1)  # every X is a candidate
        m = means[index]
        error = samples * scale_t
        outcomes = torch.where(log_mask, m * torch.exp(error), m + error)
        cost = outcome_cost(outcomes.detach().cpu().numpy(), target_um, specification, metastable_sigma_limit,
                            time_limit_h)
        return -torch.as_tensor(cost, dtype=dtype)

    objective = GenericMCObjective(negative_cost)
    sampler = SobolQMCNormalSampler(torch.Size([mc_samples]), seed=seed)
    baseline = grid[sorted(set(tried))]
    acquisition = qLogNoisyExpectedImprovement(model, baseline, sampler=sampler, objective=objective,
                                               prune_baseline=False, cache_root=False)
    with torch.no_grad():
        values = acquisition(grid.unsqueeze(1)).numpy()  # (n,)
        samples = sampler(model.posterior(grid))  # (S, n, 6)
        expected = -negative_cost(samples.unsqueeze(-2), grid.unsqueeze(1)).mean(dim=0)[:, 0].numpy()
    incumbent = min(set(tried), key=lambda i: expected[i])
    allowed = np.abs(x / x[incumbent] - 1.0) <= max_step_rel + 1e-9
    scores = np.where(allowed & np.isfinite(values), values, -np.inf)
    if np.any(np.isfinite(scores)):
        pick = int(np.argmax(scores))
    else:  # no improvement computable: the lowest posterior mean within reach
        pick = int(np.argmin(np.where(allowed, expected, np.inf)))
    return Choice(pick, float(x[pick]), expected, values)


def forecast_prior(strategy, seed_mass_rel: Sequence[float]) -> Prior:
    """The model's forecast (:class:`Prior`) for charges ``seed_mass_rel`` x the recipe's, from
    a :class:`controller.strategy.ModelPredictive` (its :meth:`recipe_forecast`)."""
    from controller.baselines import program_start

    recipe = strategy.recipe
    x = np.asarray(seed_mass_rel, dtype=float)
    start_h = program_start(recipe)[0] / 60.0
    rows = [[e["d43_um"], start_h + e["batch_time_left_h"], e["cv"], e["fines"], e["yield"], e["peak_sigma"]]
            for e in strategy.recipe_forecast(x * recipe.seed_mass_g)]
    return Prior(x, np.array(rows, dtype=float))


# ----------------------------------------------------------------------------- the command
def run_campaign_benchmark(cfg, overrides: Sequence[str] = ()) -> dict:
    """``xtalpilot bench campaign`` (module docstring). Returns the JSON summary."""
    import concurrent.futures
    import multiprocessing

    from tqdm import tqdm

    from conf.schema import load_config
    from controller.agent import discard_run_files, make_strategy
    from controller.bench_control import run_task
    from controller.demo import ensure_checkpoint
    from controller.strategy import metastable_limit

    b = cfg.bench_campaign
    checkpoint = b.checkpoint or ensure_checkpoint(cfg, overrides)
    user = [o for o in overrides if not o.lstrip("+~").startswith("bench_campaign.")]
    # The agent's view of the process: the recipe sheet, not the plant's persistent error.
    agent_cfg = load_config([*user, f"agent.checkpoint={checkpoint}"], simulator=True)
    recipe_g = float(agent_cfg.process.seeding.mass_g)
    if not recipe_g > 0:
        raise ValueError("bench campaign chooses the seed charge: the process must be seeded (process.seeding.mass_g)")
    target = float(agent_cfg.process.target_mean_size_um or 0.0)
    spec, limit = agent_cfg.process.specification, metastable_limit(agent_cfg)
    out_dir = Path(b.output_dir)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()

    def task(arm: str, k: int, rel: float) -> dict:
        log = logs / f"{arm}_{k + 1:02d}.sqlite"
        discard_run_files(log)
        return {"controller": "agent", "scenario": arm, "class": "campaign", "seed": b.first_seed + k,
                "overrides": [*b.mismatch, *user, f"process.seeding.mass_g={rel * recipe_g:.6g}"],
                "checkpoint": checkpoint, "decision_log": str(log)}

    from controller.proposer import watch_parent

    context = multiprocessing.get_context("spawn")  # torch and asyncio in workers: no forked state
    fixed_pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=watch_parent)
    learn_pool = fixed_pool if b.workers < 2 else concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=watch_parent)
    try:
        # The arm without learning needs no forecast: it starts while the model forecasts.
        fixed = [fixed_pool.submit(run_task, task("recipe", k, 1.0)) for k in range(b.batches)]
        strategy = make_strategy(agent_cfg)
        try:
            _log.info("the model forecasts %d seed charges (the campaign's prior mean)", b.candidates)
            grid = np.linspace(*b.seed_mass_rel, b.candidates)
            if b.seed_mass_rel[0] <= 1.0 <= b.seed_mass_rel[1] and not np.any(np.isclose(grid, 1.0)):
                grid = np.sort(np.append(grid, 1.0))  # the recipe's own charge is a candidate
            prior = forecast_prior(strategy, grid)
        finally:
            if hasattr(strategy, "close"):
                strategy.close()
        # the campaign starts from the recipe as written, or from the model's choice
        first = int(np.argmin(np.abs(prior.seed_mass_rel - 1.0))) if b.first_batch == "recipe" else None
        tried, observed, learned, choices = [], [], [], []
        time_limit_h = math.inf  # the plant's, from its first batch record
        for k in tqdm(range(b.batches), unit="batch", desc="campaign", leave=False):
            choice = next_charge(prior, tried, observed, target, spec, limit, b.residual_scale, b.mc_samples,
                                 seed=b.first_seed + k, time_limit_h=time_limit_h, first=first,
                                 max_step_rel=b.max_step_rel)
            result = learn_pool.submit(run_task, task("campaign", k, choice.seed_mass_rel)).result()
            time_limit_h = float(result.get("batch_time_limit_h") or math.inf)
            tried.append(choice.index)
            observed.append(observed_outcomes(result))
            learned.append({**result, "batch": k + 1, "seed_mass_rel": choice.seed_mass_rel,
                            "seed_mass_g": choice.seed_mass_rel * recipe_g,
                            "expected_cost": float(choice.expected_cost[choice.index])})
            choices.append(choice)
        without = [{**f.result(), "batch": k + 1, "seed_mass_rel": 1.0, "seed_mass_g": recipe_g}
                   for k, f in enumerate(fixed)]
    finally:
        fixed_pool.shutdown(cancel_futures=True)
        if learn_pool is not fixed_pool:
            learn_pool.shutdown(cancel_futures=True)
    summary = summarise_campaign(learned, without)
    summary.update(
        mismatch=list(b.mismatch), recipe_seed_mass_g=recipe_g, target_um=target, checkpoint=checkpoint,
        prior={"seed_mass_rel": prior.seed_mass_rel.tolist(),
               "cost": outcome_cost(prior.outcomes, target, spec, limit).tolist(),
               "d43_um": prior.outcomes[:, 0].tolist()},
        wall_s=time.monotonic() - wall0,
        data="SYNTHETIC: simulated plant (plant_sim), in-process lockstep harness")
    (out_dir / "batches.json").write_text(json.dumps({"campaign": learned, "without_learning": without}, indent=1,
                                                     allow_nan=True))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
    summary["figure"] = str(_figure(summary, learned, without, prior, choices, out_dir / "campaign.png"))
    return summary


def summarise_campaign(learned: Sequence[dict], without: Sequence[dict]) -> dict:
    """The campaign's JSON from the batches of both arms (each with ``cost``, ``on_spec``,
    ``seed_mass_g``, the outcomes)."""
    def arm(batches):
        cost = [float(x["cost"]) for x in batches]
        tail = cost[-3:]
        return {"cost_per_batch": cost, "on_spec_per_batch": [bool(x["on_spec"]) for x in batches],
                "seed_mass_g_per_batch": [float(x["seed_mass_g"]) for x in batches],
                "d43_um_per_batch": [x.get("d43_um") for x in batches],
                "batch_time_h_per_batch": [x.get("batch_time_h") for x in batches],
                "last_vs_first": cost[-1] / cost[0] if cost and cost[0] > 0 else None,
                "mean_cost_last3": float(np.mean(tail)) if tail else None,
                "mean_cost": float(np.mean(cost)) if cost else None,
                "spec_compliance": sum(bool(x["on_spec"]) for x in batches) / len(batches) if batches else None}

    out = {"batches": len(learned), "campaign": arm(learned), "without_learning": arm(without)}
    a, w = out["campaign"], out["without_learning"]
    out["last_batch_vs_without"] = (a["cost_per_batch"][-1] / w["cost_per_batch"][-1]
                                    if learned and without and w["cost_per_batch"][-1] > 0 else None)
    return out


def _figure(summary: dict, learned, without, prior: Prior, choices, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_p) = plt.subplots(1, 2, figsize=(12, 4.2))
    batch = np.arange(1, len(learned) + 1)
    ax_c.plot(batch, summary["campaign"]["cost_per_batch"], "o-", label="agent + campaign learning")
    ax_c.plot(np.arange(1, len(without) + 1), summary["without_learning"]["cost_per_batch"], "s--",
              label="agent, recipe's seed charge")
    ax_c.set(xlabel="batch number", ylabel="cost (h per unit yield + penalties)",
             title="Campaign under persistent mismatch (SYNTHETIC plant)")
    ax_c.legend(fontsize=8)
    grams = prior.seed_mass_rel * summary["recipe_seed_mass_g"]
    ax_p.plot(grams, summary["prior"]["cost"], color="0.5", label="model's forecast (prior mean)")
    if choices:
        ax_p.plot(grams, choices[-1].expected_cost, color="C0", label="posterior mean before the last batch")
    for k, x in enumerate(learned):
        ax_p.annotate(str(k + 1), (x["seed_mass_g"], x["cost"]), fontsize=8, color="C1")
    ax_p.scatter([x["seed_mass_g"] for x in learned], [x["cost"] for x in learned], color="C1", s=14,
                 label="batches run (number)")
    ax_p.set(xlabel="seed charge (g, as the recipe sheet counts it)", ylabel="cost (h)",
             title="What the campaign learned")
    ax_p.set_ylim(0, max(12.0, float(np.nanmin(summary["prior"]["cost"])) * 2))
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
