"""The control benchmark's harness: one batch of any strategy on an in-process simulated plant.

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
import time
from pathlib import Path

from conf.contract import signals
from controller.settings import Mode, StrategyName

__all__ = ["simulated_batch"]


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
