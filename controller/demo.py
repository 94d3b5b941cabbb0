"""``xtalpilot demo``: the agent beside the linear-cooling recipe and supersaturation control, one batch
each, on the simulated plant.

1. A model: ``agent.checkpoint`` if it exists (``make model``); otherwise a quick demo
   checkpoint is trained now on synthetic data (fewer epochs, said in the log) and kept for
   the next run.
2. For each strategy (``demo.strategies``: the agent, the recipe's linear cooling, SSC): the
   simulated plant is started as ``xtalpilot plant`` on free loopback ports with the same
   process, scenario and seed (the agent reads the same ``process``), the batch starts, and
   the agent runs in automatic mode over OPC UA until the batch completes. Metrics are served meanwhile; decisions go to a decision log.
3. The plant's batch record (product size, CV, fines, yield, peak supersaturation, final CSD)
   and the decision logs give the JSON summary, each batch scored as ``bench control`` scores
   it, and a report with plots in ``demo.output_dir``.

Everything the summary reports comes from the plant's own batch record (the simulated truth),
not from the agent's estimates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from controller.guard import Mode
from controller.settings import StrategyName

__all__ = ["demo_summary", "run_demo"]

_log = logging.getLogger("xtalpilot.demo")

# Quick demo model when no checkpoint exists: fewer epochs of the default recipe, so that the
# first `make demo` stays within minutes on 2 CPU cores (`make model` trains the full one).
QUICK_TRAIN_EPOCHS = 10
QUICK_CHECKPOINT = "runs/model/demo_msgnn"


def demo_summary(report: dict, cfg) -> dict:
    """The demo's figures of one batch from the plant's batch record, with the control
    benchmark's cost (hours: batch time per yield plus the release window's and the limit's
    penalties, controller/scoring.py), so the demo and ``bench control`` judge alike."""
    from controller.bench_control import score_record
    from controller.strategy import metastable_limit, product_target_um

    score = score_record(cfg, report)
    return {
        "mean_size_um": report["d43_um"],
        "target_size_um": product_target_um(cfg),
        "cv": report["cv"],
        "fines_fraction": report["fines_mass_fraction"],
        "yield": report["yield"],
        "batch_time_h": report["batch_time_h"],
        "peak_supersaturation": report.get("peak_sigma_controlled", report["peak_sigma"]),
        "supersaturation_limit": metastable_limit(cfg),
        "cost": score.cost,
        "on_spec": score.on_spec,
    }


def ensure_checkpoint(cfg, overrides: Sequence[str]) -> str:
    """The checkpoint the demo uses: the configured one, else a quick one trained now."""
    if Path(cfg.agent.checkpoint + ".safetensors").exists():
        return cfg.agent.checkpoint
    quick = Path(QUICK_CHECKPOINT)
    if quick.with_suffix(".safetensors").exists():
        _log.info("using the quick demo checkpoint %s (make model trains the full one)", quick)
        return str(quick)
    from conf.schema import load_config
    from models.train import train_command

    _log.info("no checkpoint at %s: training a quick demo model (%d epochs per member, synthetic data; "
              "`make model` trains the full one)", cfg.agent.checkpoint, QUICK_TRAIN_EPOCHS)
    train_cfg = load_config([*_root_overrides(overrides), f"train.epochs={QUICK_TRAIN_EPOCHS}",
                             f"train_command.checkpoint={quick}",
                             f"train_command.metrics_file={quick.parent / 'demo_train_metrics.json'}"])
    train_command(train_cfg)
    return str(quick)


async def operator_requests(cfg, mode, ready: asyncio.Event) -> None:
    """The simulated operator: once the agent has run its first cycle (so it has seen the
    standing request), request ``mode`` at the HMI (``operator_mode_request``), as an operator
    does after starting the agent. Over a connection of its own, the agent's protocol."""
    from controller.agent import MODE_CODES, make_io

    await ready.wait()
    io = make_io(dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, opcua_subscribe=False)))
    await io.connect()
    try:
        await io.write({"operator_mode_request": float(MODE_CODES[mode])})
    finally:
        await io.close()


async def run_agent_in_automatic(cfg, *args, **kwargs):
    """``run_agent`` with the simulated operator requesting automatic after its first cycle
    (demo, loop benchmark, tests: the agent itself never starts in automatic)."""
    from controller.agent import run_agent

    ready = asyncio.Event()
    operator = asyncio.create_task(operator_requests(cfg, Mode.automatic, ready))
    try:
        return await run_agent(cfg, *args, ready=ready, **kwargs)
    finally:
        operator.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await operator


def free_port_pair() -> tuple[int, int]:
    """Two distinct free loopback ports (OPC UA, Modbus) for a plant of our own."""
    from plant_sim.bench import _free_port

    opcua_port, modbus_port = _free_port(), _free_port()
    while modbus_port == opcua_port:
        modbus_port = _free_port()
    return opcua_port, modbus_port


def _root_overrides(overrides: Sequence[str]) -> list[str]:
    """The user's overrides minus those the demo sets itself."""
    own = ("opcua_port=", "modbus_port=", "autostart=", "batch_report_dir=", "speed=", "shed_timeout_s=")
    return [o for o in overrides if not o.startswith(own)]


def _plant_overrides(overrides: Sequence[str]) -> list[str]:
    """What the plant subprocess shares with the demo: process, scenario, kinetics, speed, plant knobs."""
    agent_only = ("agent.", "proposer.", "demo.", "train", "data.", "split.", "msgnn.", "tune.", "bench")
    return [o for o in _root_overrides(overrides) if not o.lstrip("+~").startswith(agent_only)]


def run_batch(cfg, overrides: Sequence[str], strategy: StrategyName, out_dir: Path, checkpoint: str) -> dict:
    """Serve a fresh plant, run one strategy's batch in automatic mode, return what happened."""
    from controller.agent import discard_run_files
    from plant_sim.bench import served_plant

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("batch_*.json"):
        old.unlink()
    log_path = out_dir / "decisions.sqlite"
    discard_run_files(log_path)
    opcua_port, modbus_port = free_port_pair()
    d = cfg.demo
    plant_args = [*_plant_overrides(overrides), f"opcua_port={opcua_port}", f"modbus_port={modbus_port}",
                  f"speed={d.speed}", f"shed_timeout_s={d.shed_timeout_s}", "autostart=false",
                  f"batch_report_dir={out_dir}"]
    # The agent starts the batch once it is connected and its model and proposer are warm.
    agent = dataclasses.replace(cfg.agent, strategy=strategy, mode=Mode.automatic, start_batch=True,
                                stop_after_batch=True, decision_log=str(log_path), checkpoint=checkpoint,
                                opcua_url=None)
    run_cfg = dataclasses.replace(cfg, agent=agent, opcua_port=opcua_port, modbus_port=modbus_port, speed=d.speed)
    wall0 = time.monotonic()
    with served_plant(plant_args):
        _log.info("%s batch on the simulated plant at %gx (OPC UA port %d)", strategy.value, d.speed, opcua_port)
        report = asyncio.run(run_agent_in_automatic(run_cfg))
        deadline = time.monotonic() + 30.0
        while not (files := sorted(out_dir.glob("batch_*.json"))) and time.monotonic() < deadline:
            time.sleep(0.1)
    if not files:
        raise RuntimeError(f"the {strategy.value} batch did not complete ({report.stopped_by}); "
                           f"see the log above and {log_path}")
    record = json.loads(files[-1].read_text())
    return {"record": record, "agent": report, "wall_s": time.monotonic() - wall0, "decision_log": str(log_path)}


def run_demo(cfg, overrides: Sequence[str] = ()) -> dict:
    """``xtalpilot demo`` (module docstring). Returns the JSON summary."""
    out = Path(cfg.demo.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    wall0 = time.monotonic()
    checkpoint = ensure_checkpoint(cfg, overrides)
    runs = {}
    names = [StrategyName(n) for n in cfg.demo.strategies]
    if StrategyName.model_predictive not in names:
        names.insert(0, StrategyName.model_predictive)  # the demo is the agent's
    for name in names:
        runs[name.value] = run_batch(cfg, overrides, name, out / name.value, checkpoint)
    agent_run = runs["model_predictive"]["agent"]
    summary = {
        "agent": demo_summary(runs["model_predictive"]["record"], cfg),
        **{n: demo_summary(r["record"], cfg) for n, r in runs.items() if n != "model_predictive"},
        "guard_verdicts": dict(agent_run.verdicts),
        "agent_loop": {
            "cycles": agent_run.cycles,
            "writes": agent_run.writes,
            "missed_cycles": agent_run.missed_cycles,
            "proposals": len(agent_run.proposal_s),
            "proposal_s_p50": float(np.median(agent_run.proposal_s)) if agent_run.proposal_s else None,
            "cycle_ms_p99": float(np.percentile(agent_run.cycle_ms, 99)) if agent_run.cycle_ms else None,
        },
        "process": cfg.process.name,
        "scenario": cfg.scenario.name,
        "material": cfg.agent.material or cfg.process.material,
        "checkpoint": checkpoint,
        "plant_speed": cfg.demo.speed,
        "wall_s": round(time.monotonic() - wall0, 1),
        "data": "simulated plant (plant_sim); the model was trained on synthetic data",
    }
    from controller.report import write_report

    summary["report"] = str(write_report(out, {k: v["decision_log"] for k, v in runs.items()},
                                         {k: v["record"] for k, v in runs.items()}, cfg))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
