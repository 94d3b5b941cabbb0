"""The control benchmark: every controller on every scenario of a suite, scored alike.

``xtalpilot bench control`` runs the controllers (the agent, the strategies plants run today,
:mod:`controller.baselines`, and the oracle's trajectory, :mod:`controller.oracle`, built once
per scenario and seed into a cache) on the scenario suite (``conf/suite/control.yaml``: scenarios
as Hydra overrides, grouped into classes) for paired seeds, in parallel on the machine's cores,
scores every batch with one objective (:mod:`controller.scoring`, from the plant's batch record)
and prints JSON: per controller the median cost, spec compliance, hard violations, the classes
it loses to some baseline, per-metric medians; per class the median cost per controller. It
writes a figure of cost per controller per class and an HTML page of the batches' trajectories.

The harness: one batch of any strategy on an in-process simulated plant.

The plant object sits behind the agent's I/O interface (:class:`controller.lockstep_io.LockstepIO`)
and advances one control interval per cycle, so a batch is deterministic for its scenario and
seed and runs as fast as the machine allows; everything else is the daemon as deployed
(``run_agent``: the same validation, estimator, strategy, guard, decision log and mode
handshake, a simulated operator requesting automatic after the agent's first cycle). The
result is the plant's batch record (the truth: product, yield, batch time, peak supersaturation)
beside the agent's report.

Command glue: the simulator is imported inside the function that runs it (the agent's own
modules never import it, tests/controller/test_import_graph.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from conf.contract import signals
from controller.settings import Mode, StrategyName

__all__ = ["CONTROLLERS", "SuiteScenario", "load_suite", "run_control_benchmark", "run_task", "score_record",
           "simulated_batch", "summarise"]

_log = logging.getLogger("xtalpilot.bench_control")

#: Benchmark controller name -> the strategy that runs it (and the overrides it needs).
CONTROLLERS: dict[str, tuple[StrategyName, tuple[str, ...]]] = {
    # heating allowed as for DNC: the cascade's loop heats back over the metastable limit
    "agent": (StrategyName.model_predictive, ("agent.allow_heating=true",)),
    "natural": (StrategyName.natural_cooling, ()),
    "linear": (StrategyName.linear_cooling, ()),
    "cubic": (StrategyName.cubic_cooling, ()),
    "ssc": (StrategyName.supersaturation_control, ()),
    "dnc": (StrategyName.direct_nucleation_control, ("agent.allow_heating=true",)),
    # the oracle's trajectory (controller.oracle), replayed through the guard as a programmed path
    "oracle": (StrategyName.linear_cooling, ()),
}
BASELINES = ("natural", "linear", "cubic", "ssc", "dnc")


def simulated_batch(cfg, strategy: StrategyName | str | None = None, decision_log: str | Path | None = None,
                    strategy_object=None) -> dict:
    """Run one batch of ``strategy`` (default ``cfg.agent.strategy``) in automatic mode on a fresh
    simulated plant of ``cfg`` (the simulator's config: ``load_config(..., simulator=True)``).

    Args:
        cfg: the simulator's root config (process, scenario, plant, agent, baselines, proposer).
        strategy: which strategy decides.
        decision_log: where the agent logs (default: a scratch file beside nothing, removed).
        strategy_object: a strategy to run instead of building one from the config.

    Returns:
        ``{"record": the plant's batch record, "report": the agent's AgentReport,
        "wall_s": seconds taken, "decision_log": path}``; the record is the plant's state at the
        end of the run when the batch did not complete (``record["batch_state"]`` says).
    """
    import tempfile

    from controller.agent import MODE_CODES, run_agent
    from controller.lockstep_io import LockstepIO
    from plant_sim.plant import Plant

    name = StrategyName(strategy) if strategy is not None else cfg.agent.strategy
    scratch = None
    if decision_log is None:
        scratch = tempfile.TemporaryDirectory(prefix="xtalpilot-batch-")
        decision_log = Path(scratch.name) / "decisions.sqlite"
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(autostart=False))
    limit_s = plant.batch_time_limit_s
    # The run ends with the batch, or an hour past its time limit (a strategy that never
    # completes is cut off, not waited for).
    agent = dataclasses.replace(cfg.agent, strategy=name, mode=Mode.automatic, start_batch=True,
                                stop_after_batch=True, decision_log=str(decision_log), metrics_port=0,
                                max_plant_time_s=(limit_s if limit_s < float("inf") else 12 * 3600.0) + 3600.0)
    run_cfg = dataclasses.replace(cfg, agent=agent)
    io = LockstepIO(plant, agent.control_interval_s)

    async def go():
        ready = asyncio.Event()

        async def operator():
            await ready.wait()  # the agent has seen the standing request: this one is new
            await io.write({signals.OPERATOR_MODE_REQUEST: float(MODE_CODES[Mode.automatic])})

        task = asyncio.create_task(operator())
        try:
            return await run_agent(run_cfg, strategy=strategy_object, metrics_server=False, io=io, ready=ready)
        finally:
            task.cancel()

    wall0 = time.monotonic()
    try:
        report = asyncio.run(go())
        record = getattr(plant, "last_batch_report", None) or plant.batch_report()
        return {"record": record, "report": report, "wall_s": time.monotonic() - wall0,
                "decision_log": None if scratch is not None else str(decision_log)}
    finally:
        if scratch is not None:
            scratch.cleanup()


# ----------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class SuiteScenario:
    """One scenario of the suite.

    Attributes:
        name: unique name.
        scenario_class: what it tests (controllers are compared per class).
        overrides: Hydra overrides on top of the suite's base ones.
    """

    name: str
    scenario_class: str
    overrides: tuple[str, ...] = ()


def load_suite(path: str | Path) -> tuple[tuple[str, ...], tuple[SuiteScenario, ...]]:
    """(base overrides, scenarios) of a suite file (see ``conf/suite/control.yaml``).

    Raises:
        ValueError: naming the file and what is wrong with it.
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the scenario suite {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("scenarios"), list) or not raw["scenarios"]:
        raise ValueError(f"scenario suite {path}: needs a non-empty `scenarios:` list")
    base = raw.get("base") or []
    if not isinstance(base, list) or not all(isinstance(o, str) for o in base):
        raise ValueError(f"scenario suite {path}: `base` must be a list of overrides (strings)")
    out, seen = [], set()
    for k, entry in enumerate(raw["scenarios"]):
        where = f"scenario suite {path}: scenarios[{k}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(
                entry.get("class"), str):
            raise ValueError(f"{where}: needs a `name` and a `class` (strings)")
        overrides = entry.get("overrides") or []
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"{where} ({entry['name']}): `overrides` must be a list of strings")
        if entry["name"] in seen:
            raise ValueError(f"{where}: the name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        out.append(SuiteScenario(entry["name"], entry["class"], tuple(overrides)))
    return tuple(base), tuple(out)


# ----------------------------------------------------------------------------- one task
def score_record(cfg, record: dict):
    """A batch record of ``cfg``'s process scored by the benchmark's objective
    (:func:`controller.scoring.score_batch`: the process's target and specification, the
    material's metastable limit)."""
    from controller.scoring import score_batch
    from controller.strategy import metastable_limit

    return score_batch(record, float(cfg.process.target_mean_size_um or 0.0), cfg.process.specification,
                       metastable_limit(cfg))



def run_task(task: dict) -> dict:
    """One batch of one controller on one scenario and seed, scored (a worker process's job; the
    control benchmark's and the campaign's)."""
    from conf.schema import load_config
    from controller.strategy import metastable_limit

    logging.getLogger("xtalpilot").setLevel(logging.ERROR)  # a benchmark's batches are many; the summary speaks
    strategy, extra = CONTROLLERS[task["controller"]]
    overrides = [*task["overrides"], *extra, f"scenario.seed={task['seed']}", f"scenario.sensors.seed={task['seed']}"]
    if task.get("checkpoint"):
        overrides.append(f"agent.checkpoint={task['checkpoint']}")
    cfg = load_config(overrides, simulator=True)
    strategy_object = None
    if task["controller"] == "oracle":
        from controller.baselines import ProgrammedPath
        from controller.oracle import oracle_cached
        from controller.strategy import BatchRecipe

        oracle, _ = oracle_cached(cfg, task["oracle_cache"], task["oracle_settings"])
        strategy_object = ProgrammedPath(BatchRecipe.from_process(cfg.process), cfg.baselines, oracle.temperatures_c,
                                         oracle.cooling_min, oracle.final_hold_min)
    result = simulated_batch(cfg, strategy, decision_log=task.get("decision_log"), strategy_object=strategy_object)
    record = result["record"]
    target, limit = float(cfg.process.target_mean_size_um or 0.0), metastable_limit(cfg)
    score = score_record(cfg, record)
    keep = ("batch_state", "batch_time_h", "d43_um", "cv", "fines_mass_fraction", "yield", "peak_sigma",
            "peak_sigma_controlled", "time_limit_hit", "batch_time_limit_h")
    return {"controller": task["controller"], "scenario": task["scenario"], "class": task["class"],
            "seed": task["seed"], **{k: record.get(k) for k in keep}, "target_um": target,
            "metastable_sigma_limit": limit, **dataclasses.asdict(score), "wall_s": result["wall_s"],
            "decision_log": result["decision_log"]}


# ----------------------------------------------------------------------------- the summary
def _median(values) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(values)) if values else None


def _mean_interval(values) -> tuple[float | None, float | None, float | None]:
    """(mean, 95 % interval low, high) by the normal approximation (t for small n)."""
    from scipy import stats

    v = np.array([float(x) for x in values if x is not None and math.isfinite(float(x))])
    if v.size == 0:
        return None, None, None
    if v.size == 1:
        return float(v[0]), float(v[0]), float(v[0])
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def _solve_task(task: dict) -> dict:
    """The oracle of one scenario and seed, solved or from the cache (a worker's job)."""
    from conf.schema import load_config
    from controller.oracle import oracle_cached, refinement_gap

    logging.getLogger("xtalpilot").setLevel(logging.ERROR)
    cfg = load_config([*task["overrides"], f"scenario.seed={task['seed']}", f"scenario.sensors.seed={task['seed']}"],
                      simulator=True)
    t0 = time.monotonic()
    result, cached = oracle_cached(cfg, task["oracle_cache"], task["oracle_settings"])
    out = {"scenario": task["scenario"], "seed": task["seed"], "cached": cached, "wall_s": time.monotonic() - t0,
           "evaluations": result.evaluations, "search_cost": result.cost}
    if task.get("refine"):
        out["refinement"] = {k: v for k, v in refinement_gap(cfg, result, task["oracle_settings"]).items()
                             if k != "fine"}
    return out


def _pair_costs(batches, controller):
    return {(b["scenario"], b["seed"]): b["cost"] for b in batches if b["controller"] == controller}


def summarise(batches: Sequence[dict]) -> dict:
    """The benchmark's JSON from its batches (see the module docstring)."""
    controllers = sorted({b["controller"] for b in batches}, key=lambda c: list(CONTROLLERS).index(c))
    classes = sorted({b["class"] for b in batches})
    oracle = _pair_costs(batches, "oracle")
    per_class = {cls: {c: _median(b["cost"] for b in batches if b["class"] == cls and b["controller"] == c)
                       for c in controllers} for cls in classes}
    out: dict = {"controllers": {}, "classes": per_class}
    for c in controllers:
        mine = [b for b in batches if b["controller"] == c]
        lost = sorted(cls for cls in classes if c != "oracle" and per_class[cls][c] is not None and any(
            per_class[cls][o] is not None and per_class[cls][o] < per_class[cls][c]
            for o in controllers if o in BASELINES and o != c))
        mean, low, high = _mean_interval(b["cost"] for b in mine)
        vs_oracle = [b["cost"] / oracle[(b["scenario"], b["seed"])] for b in mine
                     if oracle.get((b["scenario"], b["seed"]), 0) > 0]
        out["controllers"][c] = {
            "median_cost": _median(b["cost"] for b in mine),
            "median_cost_vs_oracle": _median(vs_oracle) if oracle else None,
            "mean_cost": mean, "mean_cost_95": [low, high],
            "worst_cost": max(b["cost"] for b in mine),
            "spec_compliance": sum(b["on_spec"] for b in mine) / len(mine),
            "hard_violations": sum(b["hard_violation"] for b in mine),
            "failed_batches": sum(bool(b["time_limit_hit"]) or b["batch_state"] != "completed" for b in mine),
            "scenarios": len({b["scenario"] for b in mine}),
            "batches": len(mine),
            "classes_lost": lost,
            "median_size_error_um": _median(b["size_error_um"] for b in mine),
            "median_cv": _median(b["cv"] for b in mine),
            "median_fines_mass_fraction": _median(b["fines_mass_fraction"] for b in mine),
            "median_yield": _median(b["yield"] for b in mine),
            "median_batch_time_h": _median(b["batch_time_h"] for b in mine),
            "median_peak_sigma_rel_limit": _median(
                (b.get("peak_sigma_controlled") or b["peak_sigma"] or math.nan) / b["metastable_sigma_limit"]
                for b in mine),
            "median_wall_s_per_batch": _median(b["wall_s"] for b in mine),
        }
    baselines = [c for c in controllers if c in BASELINES]
    if oracle and "agent" in controllers and baselines:
        out["agent_gap_closed"] = _gap_closed(batches, baselines)
    return out


def _gap_closed(batches, baselines) -> dict:
    """Per scenario (medians over seeds): the share of the gap between the best baseline and the
    oracle that the agent closes, (best - agent) / (best - oracle); and its median."""
    per = {}
    for scenario in sorted({b["scenario"] for b in batches}):
        cost = {c: _median(b["cost"] for b in batches if b["scenario"] == scenario and b["controller"] == c)
                for c in (*baselines, "agent", "oracle")}
        ran = [v for c, v in cost.items() if c in baselines and v is not None]
        if not ran or cost["agent"] is None or cost["oracle"] is None:
            per[scenario] = None
            continue
        best = min(ran)
        gap = best - cost["oracle"]
        per[scenario] = (best - cost["agent"]) / gap if gap > 1e-9 else None
    values = [v for v in per.values() if v is not None]
    return {"median": float(np.median(values)) if values else None, "per_scenario": per}


def _figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = list(summary["classes"])
    controllers = list(summary["controllers"])
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(classes)), 4.5))
    width = 0.8 / max(len(controllers), 1)
    for k, c in enumerate(controllers):
        values = [summary["classes"][cls][c] or np.nan for cls in classes]
        ax.bar(np.arange(len(classes)) + (k - (len(controllers) - 1) / 2) * width, values, width, label=c)
    ax.set_xticks(np.arange(len(classes)), classes, rotation=20)
    ax.set_ylabel("median cost (h per unit yield + penalties)")
    ax.set_title("Control benchmark: cost per controller per scenario class (SYNTHETIC simulated plant)")
    ax.legend(ncol=len(controllers), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trajectories_page(batches: Sequence[dict], out_dir: Path) -> Path:
    """An HTML page: per scenario, reactor temperature and measured supersaturation of every
    controller's first-seed batch, and the table of every batch's scores."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controller.report import batch_frame

    figures = out_dir / "trajectories"
    figures.mkdir(parents=True, exist_ok=True)
    sections = []
    for scenario in sorted({b["scenario"] for b in batches}):
        logged = [b for b in batches if b["scenario"] == scenario and b.get("decision_log")]
        if not logged:
            continue
        fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 3.6))
        for b in logged:
            try:
                frame = batch_frame(b["decision_log"])
            except Exception as exc:  # a log that cannot be read leaves its line out, and says so
                _log.warning("cannot plot %s: %s", b["decision_log"], exc)
                continue
            hours = frame["batch_time_s"].to_numpy(dtype=float) / 3600.0
            ax_t.plot(hours, frame["reactor_temperature_c"].to_numpy(dtype=float), label=b["controller"], lw=1)
            if "sigma" in frame:
                ax_s.plot(hours, frame["sigma"].to_numpy(dtype=float), lw=0.8)
        ax_s.axhline(logged[0]["metastable_sigma_limit"], color="k", ls="--", lw=0.8)
        ax_t.set(xlabel="batch time (h)", ylabel="reactor temperature (C)", title=scenario)
        ax_s.set(xlabel="batch time (h)", ylabel="measured sigma = ln(C/C*)", title="supersaturation (limit dashed)")
        ax_t.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(figures / f"{scenario}.png", dpi=90)
        plt.close(fig)
        sections.append(f"<h2>{html.escape(scenario)}</h2><img src='trajectories/{html.escape(scenario)}.png'>")
    keys = ("controller", "scenario", "class", "seed", "cost", "on_spec", "hard_violation", "batch_time_h", "d43_um",
            "cv", "fines_mass_fraction", "yield", "peak_sigma")
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(b.get(k)))}</td>" for k in keys) + "</tr>"
                   for b in batches)
    page = out_dir / "batches.html"
    page.write_text("<html><head><meta charset='utf-8'><title>xtalpilot control benchmark</title></head><body>"
                    "<h1>Control benchmark (SYNTHETIC: simulated plant)</h1>" + "".join(sections)
                    + "<h2>Every batch</h2><table border=1 cellpadding=3><tr>"
                    + "".join(f"<th>{k}</th>" for k in keys) + f"</tr>{rows}</table></body></html>")
    return page


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ----------------------------------------------------------------------------- the command
def run_control_benchmark(cfg, overrides: Sequence[str] = ()) -> dict:
    """``xtalpilot bench control`` (module docstring). Returns the JSON summary."""
    import concurrent.futures
    import multiprocessing

    from tqdm import tqdm

    b = cfg.bench_control
    unknown = [c for c in b.controllers if c not in CONTROLLERS]
    if unknown:
        raise ValueError(f"bench_control.controllers: unknown {unknown}; known: {list(CONTROLLERS)}")
    suite_path = Path(b.suite)
    if not suite_path.is_absolute() and not suite_path.exists():
        suite_path = Path(__file__).resolve().parents[1] / "conf" / b.suite
    base, scenarios = load_suite(suite_path)
    if b.scenarios:
        missing = sorted(set(b.scenarios) - {s.name for s in scenarios})
        if missing:
            raise ValueError(f"bench_control.scenarios: {missing} not in {suite_path}")
        scenarios = tuple(s for s in scenarios if s.name in b.scenarios)
    checkpoint = None
    if "agent" in b.controllers:
        from controller.demo import ensure_checkpoint

        checkpoint = b.checkpoint or ensure_checkpoint(cfg, overrides)
    from controller.agent import discard_run_files

    out_dir = Path(b.output_dir)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    user = [o for o in overrides if not o.lstrip("+~").startswith("bench_control.")]
    tasks = []
    for scenario in scenarios:
        for seed in range(b.first_seed, b.first_seed + b.seeds):
            for controller in b.controllers:
                log = None
                if seed == b.first_seed:  # the trajectories page shows the first seed
                    log = logs / f"{scenario.name}_{controller}.sqlite"
                    discard_run_files(log)
                tasks.append({"controller": controller, "scenario": scenario.name, "class": scenario.scenario_class,
                              "overrides": [*base, *scenario.overrides, *user], "seed": seed,
                              "checkpoint": checkpoint if controller == "agent" else None,
                              "decision_log": None if log is None else str(log)})
    wall0 = time.monotonic()
    batches = []
    oracle_build = None
    context = multiprocessing.get_context("spawn")  # torch and asyncio in workers: no forked state
    from controller.proposer import watch_parent

    # workers die with the benchmark (a killed run left them solving on as orphans)
    with concurrent.futures.ProcessPoolExecutor(max_workers=b.workers, mp_context=context,
                                                initializer=watch_parent) as pool:
        if "oracle" in b.controllers:
            from controller.oracle import OracleSettings

            oracle_settings = OracleSettings(knots=b.oracle_knots, max_evaluations=b.oracle_evaluations)
            solves = [{"scenario": s.name, "overrides": [*base, *s.overrides, *user], "seed": seed,
                       "oracle_cache": b.oracle_cache, "oracle_settings": oracle_settings,
                       "refine": b.oracle_refinement and k == 0 and seed == b.first_seed}
                      for k, s in enumerate(scenarios) for seed in range(b.first_seed, b.first_seed + b.seeds)]
            for t in tasks:
                t.update(oracle_cache=b.oracle_cache, oracle_settings=oracle_settings)
            t_build = time.monotonic()
            with tqdm(total=len(solves), unit="oracle", desc="oracle cache", leave=False) as bar:
                built = []
                for future in concurrent.futures.as_completed([pool.submit(_solve_task, t) for t in solves]):
                    built.append(future.result())
                    bar.update(1)
            refined = next((x["refinement"] for x in built if "refinement" in x), None)
            oracle_build = {"wall_s": time.monotonic() - t_build, "solved": sum(not x["cached"] for x in built),
                            "cached": sum(x["cached"] for x in built), "knots": b.oracle_knots,
                            "refinement": None if refined is None else {**refined, "scenario": solves[0]["scenario"]}}
        # Longest first (the agent's batches take about three times a baseline's): the last
        # batches to finish are then short ones, and neither core idles long at the end.
        longest_first = sorted(tasks, key=lambda t: t["controller"] != "agent")
        futures = [pool.submit(run_task, t) for t in longest_first]
        with tqdm(total=len(futures), unit="batch", desc="bench control", leave=False) as bar:
            for future in concurrent.futures.as_completed(futures):
                batches.append(future.result())
                bar.update(1)
    order = {(t["controller"], t["scenario"], t["seed"]): k for k, t in enumerate(tasks)}
    batches.sort(key=lambda x: order[(x["controller"], x["scenario"], x["seed"])])
    summary = summarise(batches)
    summary.update(
        suite=str(suite_path), seeds=b.seeds, scenarios=len(scenarios), workers=b.workers, checkpoint=checkpoint,
        wall_s=time.monotonic() - wall0, data="SYNTHETIC: simulated plant (plant_sim), in-process lockstep harness",
        oracle_cache_build=oracle_build)
    if oracle_build is not None:
        summary["wall_s_without_oracle_build"] = summary["wall_s"] - oracle_build["wall_s"]
    (out_dir / "batches.json").write_text(json.dumps(batches, indent=1, allow_nan=True))
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=True))
    _figure(summary, out_dir / "cost_per_class.png")
    summary["page"] = str(_trajectories_page(batches, out_dir))
    summary["figure"] = str(out_dir / "cost_per_class.png")
    return summary
