"""``xtalpilot bench loop``: the agent's control cycle over real OPC UA and real Modbus, as JSON.

For each protocol a fresh simulated plant is served as ``xtalpilot plant`` on loopback and the
model-predictive agent runs in automatic mode at a control interval of ``interval_s`` plant
seconds (1 s), with the BoTorch proposer working in its process meanwhile. The plant runs at
``speed`` (default 20x: one cycle every 50 wall ms); the agent starts the batch once it is
ready, and the window measured begins when the seeds are in (from then on proposals run back
to back) and lasts ``window_plant_s`` of batch time. The plant publishes every 10 wall ms (a
fifth of a control interval): with its default 50 ms a late plant tick alone would advance
the clock by two intervals and count as a missed cycle of the agent.

``opcua`` reads every node each cycle (one batched Read); ``opcua_subscription`` (when
``bench_loop.opcua_subscription``) repeats the run with the subscription client. On the
accelerated plant every value changes every publication, so the subscription delivers ~50
notifications per 10 ms that the agent's loop must decode; on a real plant, where values
change about once a second, it is the cheaper way. Both are reported.

Keys per protocol (``opcua``, ``opcua_subscription``, ``modbus``):
- ``cycle_ms``: p50 / p99 / max of one cycle, read to write (validation, facet graph, MS-GNN
  query, guard, write, decision log);
- ``loop_lag_ms.max``: the largest lateness of a 10 ms sleep on the agent's event loop;
- ``proposal_s``: p50 / p95 of a proposal (worker process, wall time);
- ``missed_cycles``: control intervals the plant clock passed without a cycle;
- ``overruns``: cycles longer than their interval's wall time.

Wall-clock figures of this machine (shared, noisy); compare within one run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import platform
import time
from pathlib import Path
from typing import Sequence

from controller.guard import Mode
from controller.settings import Protocol, StrategyName

__all__ = ["run_loop_benchmark"]


def _one_protocol(cfg, overrides: Sequence[str], protocol: Protocol, out_dir: Path, subscribe: bool = False,
                  label: str | None = None) -> dict:
    from controller.demo import _plant_overrides, free_port_pair, run_agent_in_automatic
    from plant_sim.bench import served_plant

    b = cfg.bench_loop
    opcua_port, modbus_port = free_port_pair()
    seeded_s = cfg.process.seeding.at_min * 60.0
    log_path = out_dir / f"{label or protocol.value}_decisions.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(log_path) + suffix).unlink(missing_ok=True)
    agent = dataclasses.replace(
        cfg.agent, protocol=protocol, strategy=StrategyName.model_predictive, mode=Mode.automatic,
        control_interval_s=b.interval_s, metrics_port=0, start_batch=True, stop_after_batch=False,
        decision_log=str(log_path), opcua_url=None, opcua_subscribe=subscribe,
    )
    run_cfg = dataclasses.replace(cfg, agent=agent, opcua_port=opcua_port, modbus_port=modbus_port, speed=b.speed)
    plant_args = [*_plant_overrides(overrides), f"opcua_port={opcua_port}", f"modbus_port={modbus_port}",
                  f"speed={b.speed}", f"publish_interval_s={b.plant_publish_interval_s}", "autostart=false"]
    with served_plant(plant_args):
        report = asyncio.run(run_agent_in_automatic(run_cfg, measure_from_batch_s=seeded_s,
                                                    stop_at_batch_s=seeded_s + b.window_plant_s))
    out = report.summary()
    window = report.window
    return {
        "cycle_ms": window["cycle_ms"],
        "loop_lag_ms": window["loop_lag_ms"],
        "proposal_s": window["proposal_s"],
        "missed_cycles": window["missed_cycles"],
        "overruns": window["overruns"],
        "cycles": window["cycles"],
        "whole_run": {k: out[k] for k in ("cycles", "cycle_ms", "loop_lag_ms", "missed_cycles", "verdicts",
                                         "writes")},
    }


def run_loop_benchmark(cfg, overrides: Sequence[str] = ()) -> dict:
    """Both protocols, one after the other (module docstring)."""
    out_dir = Path(cfg.bench_loop.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    b = cfg.bench_loop
    result: dict = {
        "interval_plant_s": b.interval_s,
        "plant_speed": b.speed,
        "window_plant_s": b.window_plant_s,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    wall0 = time.monotonic()
    result["opcua"] = _one_protocol(cfg, overrides, Protocol.opcua, out_dir, subscribe=False)
    if b.opcua_subscription:
        result["opcua_subscription"] = _one_protocol(cfg, overrides, Protocol.opcua, out_dir, subscribe=True,
                                                     label="opcua_subscription")
    result["modbus"] = _one_protocol(cfg, overrides, Protocol.modbus, out_dir)
    result["wall_s"] = round(time.monotonic() - wall0, 1)
    return result
