"""The oracle: the best cooling trajectory of a scenario with the plant known in advance.

The attainable limit every controller is measured against (``xtalpilot bench control``): for
one scenario and seed, the temperature-setpoint trajectory that minimises the benchmark's
objective (:func:`controller.scoring.score_batch`) on the simulator's own equations and real
kinetics, with the scenario's disturbances and noise draws known, under the constraints every
controller has (cooling only, the guard's cooling-rate limit, the recipe's final temperature,
a final hold no longer than the recipe's; the metastable limit a hard constraint). Direct
single shooting:

- the recipe runs until its last ramp starts (charge, seeding, its hold: every controller's);
- from there a piecewise-linear, non-increasing profile over ``knots`` equal segments of a
  free cooling time D reaches the final temperature; the share of the temperature drop per
  segment is w_k / sum(w), w_k = exp(z_k), so every profile is monotone;
- the final hold is a share h of the recipe's, clipped to [0, 1] (the agent decides its hold
  too: an oracle held to the recipe's would not bound it);
- decision variables (log D, z_1..z_K, h), searched by Nelder-Mead from the linear recipe's
  profile, from the same at half its rate and from a slow-first (cubic) one, each with the
  recipe's hold, each batch simulated by the plant in steps of ``step_s``, setpoints written
  at every control interval as the agent's writes reach it; then restarted from the best point
  with a fresh simplex until a restart gains less than ``restart_tolerance_rel`` (Nelder-Mead's
  simplex collapses short of the optimum in these 8 dimensions: one restart of the 6-knot
  nominal solution gained 6.3 %, more than doubling the knots did).

How close to optimal it is: :func:`refinement_gap` re-solves with twice the knots from the
coarse solution; the relative change of cost says what the parametrisation leaves.

Results are cached on disk per scenario content and seed (:func:`oracle_cached`), the cache build
time reported apart. Command glue: the simulator is imported inside the functions that run it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["OracleResult", "OracleSettings", "cache_key", "oracle_cached", "profile_path", "solve_oracle"]

ORACLE_VERSION = 3  # part of the cache key: a change of the method invalidates old entries
HARD_PENALTY = 1000.0  # hours per unit of relative excess over the metastable limit, in the search


@dataclass(frozen=True)
class OracleSettings:
    """How the oracle searches.

    Attributes:
        knots: profile segments of the cooling time.
        max_evaluations: simulated batches per start of the search.
        step_s: the plant's physics step during the search (the harness's plant steps 1 s; the
            final trajectory is scored there, through the guard, like every controller).
        max_cooling_k_per_min: the fastest segment (the agent's guard: 1 K/min).
        limit_margin_rel: the search keeps the peak this far under the metastable limit: its
            plant steps ``step_s``, the harness's 1 s with noise-fed writes through the guard, and
            a trajectory that grazes the limit in one can cross it in the other.
        max_restarts: restarts from the best point after the starts (each ``max_evaluations``).
        restart_tolerance_rel: restarting stops once one gains less than this share of the cost.
    """

    knots: int = 6
    max_evaluations: int = 80
    max_restarts: int = 4
    restart_tolerance_rel: float = 0.002
    step_s: float = 10.0
    max_cooling_k_per_min: float = 1.0
    limit_margin_rel: float = 0.03


@dataclass(frozen=True)
class OracleResult:
    """The oracle of one scenario and seed.

    Attributes:
        cooling_min: the cooling time D of the programme.
        temperatures_c: the profile's knot temperatures, knots + 1 values from the programme's
            start temperature down to the final one.
        cost: the objective of the searched batch (the search's plant).
        penalized_cost: what the search minimised: the objective plus the hard constraints'
            penalties (the metastable limit, the rate limit); equal to ``cost`` when feasible.
        record: that batch's record.
        evaluations: batches simulated.
        wall_s: seconds the search took.
        final_hold_min: the final hold after the final temperature is reached (None: the
            recipe's).
    """

    cooling_min: float
    temperatures_c: tuple[float, ...]
    cost: float
    penalized_cost: float
    record: dict
    evaluations: int
    wall_s: float
    final_hold_min: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def profile_path(start_c: float, final_c: float, cooling_min: float, weights) -> tuple[float, ...]:
    """Knot temperatures of a monotone profile (module docstring): start_c - drop x cumulative
    share of the weights."""
    w = np.asarray(weights, dtype=float)
    share = np.concatenate([[0.0], np.cumsum(w) / w.sum()])
    return tuple(float(start_c - (start_c - final_c) * s) for s in share)


def _path_at(temperatures_c, cooling_min: float, elapsed_min: float) -> float:
    knots = np.linspace(0.0, cooling_min, len(temperatures_c))
    return float(np.interp(elapsed_min, knots, temperatures_c))


def simulate_profile(cfg, temperatures_c, cooling_min: float, step_s: float, final_hold_min: float | None = None
                     ) -> dict:
    """The batch record of the plant driven by the profile after the recipe's part (the
    plant's own DCS handshake written directly: agent mode automatic, a live heartbeat), the
    batch completed ``final_hold_min`` (default the recipe's) after the final temperature."""
    from conf.contract import signals
    from conf.contract.codes import AgentMode, BatchCommand
    from controller.baselines import program_start
    from controller.strategy import BatchRecipe
    from plant_sim.plant import Plant

    recipe = BatchRecipe.from_process(cfg.process)
    start_min, _ = program_start(recipe)
    hold_min = recipe.final_hold_min if final_hold_min is None else final_hold_min
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=step_s, autostart=False))
    interval = cfg.agent.control_interval_s
    plant.write(signals.AGENT_MODE, float(AgentMode.AUTOMATIC))
    plant.write(signals.AGENT_HEARTBEAT, 1.0)
    plant.write(signals.BATCH_COMMAND, float(BatchCommand.START))
    final_at = None
    heartbeat = 1.0
    limit_s = plant.batch_time_limit_s
    horizon_s = (limit_s if math.isfinite(limit_s) else 12 * 3600.0) + 3600.0
    while plant.last_batch_report is None and plant.plant_time_s < horizon_s:
        batch_min = plant.values()[signals.BATCH_TIME] / 60.0
        # as the baselines write it: the recipe, then the profile, at this cycle's batch time
        if batch_min < start_min:
            setpoint = recipe.setpoint_c(batch_min)
        else:
            setpoint = _path_at(temperatures_c, cooling_min, batch_min - start_min)
        if final_at is None and setpoint <= recipe.final_temperature_c + 0.05 and batch_min >= start_min:
            final_at = batch_min
        heartbeat += 1.0
        plant.write(signals.AGENT_HEARTBEAT, heartbeat)
        plant.write(signals.TEMPERATURE_SETPOINT, setpoint)
        if final_at is not None and batch_min - final_at >= hold_min:
            plant.write(signals.BATCH_COMMAND, float(BatchCommand.COMPLETE))
        plant.advance(interval)
    return plant.last_batch_report or plant.batch_report()


def solve_oracle(cfg, settings: OracleSettings = OracleSettings(), start: OracleResult | None = None) -> OracleResult:
    """Search the best profile (module docstring) for the scenario and seed of ``cfg`` (the
    simulator's root config). ``start``: a coarser solution to refine from."""
    from scipy.optimize import minimize

    from controller.baselines import program_start
    from controller.bench_control import score_record
    from controller.strategy import BatchRecipe, metastable_limit

    wall0 = time.monotonic()
    recipe = BatchRecipe.from_process(cfg.process)
    start_min, start_c = program_start(recipe)
    final_c = recipe.final_temperature_c
    drop = max(start_c - final_c, 1e-6)
    recipe_cooling_min = max(recipe.cooling_end_min - start_min, 1.0)
    k = settings.knots
    limit = metastable_limit(cfg)
    evaluations = 0
    best: dict = {"cost": math.inf}

    def evaluate(x):
        nonlocal evaluations
        cooling_min = float(np.exp(np.clip(x[0], -5.0, 8.0)))
        weights = np.exp(np.clip(x[1:-1], -8.0, 8.0))
        hold_min = recipe.final_hold_min * float(np.clip(x[-1], 0.0, 1.0))
        temps = profile_path(start_c, final_c, cooling_min, weights)
        # the guard's rate limit: a segment faster than it is not a trajectory any controller has
        rate = drop * weights / weights.sum() / (cooling_min / k)
        excess = float(np.maximum(rate / settings.max_cooling_k_per_min - 1.0, 0.0).sum())
        record = simulate_profile(cfg, temps, cooling_min, settings.step_s, hold_min)
        evaluations += 1
        # The metastable limit is a hard constraint here (the objective only charges for it):
        # the optimum every controller is held to keeps inside it.
        peak = record.get("peak_sigma_controlled")
        ceiling = limit * (1.0 - settings.limit_margin_rel)
        over = max(peak / ceiling - 1.0, 0.0) if peak is not None and math.isfinite(peak) else 0.0
        objective = score_record(cfg, record).cost
        cost = objective + 10.0 * excess + HARD_PENALTY * over
        if cost < best["cost"]:
            best.update(cost=cost, objective=objective, temps=temps, cooling_min=cooling_min, record=record,
                        hold_min=hold_min, x=np.array(x, dtype=float))
        return cost

    starts = []
    if start is not None:
        knots_old = np.linspace(0.0, 1.0, len(start.temperatures_c))
        fine = np.interp(np.linspace(0.0, 1.0, k + 1), knots_old, start.temperatures_c)
        steps = np.maximum(-np.diff(fine), 1e-6 * drop)
        share = (start.final_hold_min / recipe.final_hold_min if start.final_hold_min is not None
                 and recipe.final_hold_min > 0 else 1.0)
        starts.append(np.concatenate([[math.log(start.cooling_min)], np.log(steps / steps.sum() * k), [share]]))
    else:
        starts.append(np.concatenate([[math.log(recipe_cooling_min)], np.zeros(k), [1.0]]))  # the linear recipe
        # half its rate: feasible where the recipe itself crosses the limit (a recipe too fast)
        starts.append(np.concatenate([[math.log(2.0 * recipe_cooling_min)], np.zeros(k), [1.0]]))
        cubic = np.diff((np.linspace(0.0, 1.0, k + 1)) ** 3)  # slow first, as Mullin-Nyvlt
        starts.append(np.concatenate([[math.log(recipe_cooling_min)], np.log(np.maximum(cubic, 1e-3) * k), [1.0]]))

    def search(x0):
        # the hold's step goes down from the recipe's (the share is clipped at 1)
        steps = np.concatenate([np.full(k + 1, 0.4), [-0.4]])
        simplex = np.vstack([x0] + [x0 + steps[i] * np.eye(k + 2)[i] for i in range(k + 2)])
        minimize(evaluate, x0, method="Nelder-Mead",
                 options={"maxfev": settings.max_evaluations, "initial_simplex": simplex, "xatol": 1e-3,
                          "fatol": 1e-4})

    for x0 in starts:
        search(x0)
    for _ in range(settings.max_restarts):
        before = best["cost"]
        search(best["x"].copy())
        if before - best["cost"] <= settings.restart_tolerance_rel * before:
            break
    return OracleResult(best["cooling_min"], tuple(best["temps"]), float(best["objective"]), float(best["cost"]),
                        best["record"], evaluations, time.monotonic() - wall0, float(best["hold_min"]))


def cache_key(cfg, settings: OracleSettings) -> str:
    """The scenario's content (the composed process and scenario, seeds included), the search's
    settings and the method's version, hashed."""
    process = dataclasses.asdict(cfg.process)
    # A specification field added after this cache version enters the key only when it is set:
    # at its default it changes nothing the oracle computes, and the cache stays valid.
    if process.get("specification", {}).get("max_yield_loss") == 1.0:
        del process["specification"]["max_yield_loss"]
    payload = {"process": process, "scenario": dataclasses.asdict(cfg.scenario),
               "plant": cfg.plant, "control_interval_s": cfg.agent.control_interval_s,
               "proposer_limit": cfg.proposer.metastable_sigma_limit, "settings": dataclasses.asdict(settings),
               "version": ORACLE_VERSION}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def oracle_cached(cfg, cache_dir: str | Path, settings: OracleSettings = OracleSettings()) -> tuple[OracleResult, bool]:
    """The oracle of ``cfg``'s scenario and seed from the cache, or solved and cached:
    (result, whether it came from the cache). A cache entry that cannot be read is solved again."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{cache_key(cfg, settings)}.json"
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            raw["temperatures_c"] = tuple(raw["temperatures_c"])
            return OracleResult(**raw), True
        except (OSError, ValueError, TypeError, KeyError):
            pass
    result = solve_oracle(cfg, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), allow_nan=True))
    tmp.replace(path)
    return result, False


def refinement_gap(cfg, coarse: OracleResult, settings: OracleSettings = OracleSettings()) -> dict:
    """Re-solve with twice the knots from the coarse solution: the relative change of cost is
    how much the parametrisation leaves on the table."""
    fine = solve_oracle(cfg, dataclasses.replace(settings, knots=2 * settings.knots), start=coarse)
    return {"coarse_cost": coarse.cost, "fine_cost": fine.cost,
            "relative_change": (coarse.cost - fine.cost) / coarse.cost if coarse.cost else 0.0,
            "fine": fine.to_dict()}
