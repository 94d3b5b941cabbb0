"""``xtalpilot bench plant``: accuracy and speed of the simulated plant, as JSON.

Accuracy (pure computations, :mod:`plant_sim.pbe_checks` and a simulated batch):
- ``msmpr_rel_l2_error``: finite volumes at MSMPR steady state vs n0 exp(-L/(G tau)), 0..5 G tau.
- ``growth_translation_rel_error``: pure growth of a Gaussian vs the exactly shifted one.
- ``moment_rel_error``: finite-volume moments vs the method of moments, seeded batch.
- ``mass_closure_rel_error``: solute + crystal mass after the scenario's batch vs the charge.

Speed (wall clock on this machine; compare ratios from one run, the machine is shared):
- ``offline_realtime_factor``: plant seconds per wall second of the scenario's offline batch
  (median of several runs).
- ``served_realtime_factor``: plant seconds per wall second that ``xtalpilot plant speed=1000``
  actually delivers, stepping 1 s of plant time per step, read back from its plant-time tag;
  ``served_max_realtime_factor`` the same with the clock unthrottled.
- ``opcua_read_ms`` / ``modbus_read_ms``: latency of reading the full tag set from a client on
  loopback while the plant runs at 1000x (OPC UA: one read_values of every node; Modbus: one
  input-register and one holding-register read covering every register), p50 and p99.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Iterator

import numpy as np

from conf.contract.tagmap import ModbusTable, TagMap
from plant_sim import pbe_checks

READY_RE = re.compile(r"plant \S+ serving ")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_plant(overrides: list[str], start_timeout_s: float = 60.0) -> Iterator[subprocess.Popen]:
    """Run ``xtalpilot plant`` in a subprocess until the block exits (always stopped)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "plant", *overrides],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    ready = threading.Event()
    log: list[str] = []

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip())
            if READY_RE.search(line):
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + start_timeout_s
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("xtalpilot plant did not start:\n" + "\n".join(log[-20:]))
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _percentiles_ms(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


async def _measure_clients(tagmap: TagMap, opcua_port: int, modbus_port: int, reads: int, rtf_window_s: float) -> dict:
    from asyncua import Client, ua
    from pymodbus.client import AsyncModbusTcpClient

    out: dict = {}
    async with Client(f"opc.tcp://127.0.0.1:{opcua_port}", timeout=10) as client:
        ns = await client.get_namespace_index(tagmap.namespace_uri)
        nodes = [client.get_node(ua.NodeId(s.opcua_node, ns)) for s in tagmap]
        time_node = client.get_node(ua.NodeId(tagmap["plant_time_s"].opcua_node, ns))
        for _ in range(50):  # warm-up
            await client.read_values(nodes)
        samples = []
        for _ in range(reads):
            t0 = time.perf_counter()
            await client.read_values(nodes)
            samples.append(time.perf_counter() - t0)
        out["opcua_read_ms"] = _percentiles_ms(samples)
        out["opcua_tags"] = len(nodes)

        plant0, wall0 = float(await time_node.read_value()), time.perf_counter()
        await asyncio.sleep(rtf_window_s)
        plant1, wall1 = float(await time_node.read_value()), time.perf_counter()
        out["realtime_factor"] = (plant1 - plant0) / (wall1 - wall0)

    spans = {t: tagmap.register_span(t) for t in ModbusTable}
    client = AsyncModbusTcpClient("127.0.0.1", port=modbus_port, timeout=5, reconnect_delay=0)
    await client.connect()
    try:
        device = tagmap.modbus_device_id

        async def read_all() -> None:
            lo, hi = spans[ModbusTable.input]
            rr = await client.read_input_registers(lo, count=hi - lo, device_id=device)
            if rr.isError():
                raise RuntimeError(f"Modbus input read failed: {rr}")
            lo, hi = spans[ModbusTable.holding]
            rr = await client.read_holding_registers(lo, count=hi - lo, device_id=device)
            if rr.isError():
                raise RuntimeError(f"Modbus holding read failed: {rr}")

        for _ in range(50):
            await read_all()
        samples = []
        for _ in range(reads):
            t0 = time.perf_counter()
            await read_all()
            samples.append(time.perf_counter() - t0)
        out["modbus_read_ms"] = _percentiles_ms(samples)
    finally:
        client.close()
    return out


# Settings the served benchmark chooses itself: its clients connect insecurely on loopback to
# free ports, at the speed being measured, with the batch running.
_BENCH_OWNED_KEYS = frozenset({"speed", "host", "opcua_port", "modbus_port", "autostart", "security"})


def served_overrides(user: Sequence[str], speed: float, opcua_port: int, modbus_port: int) -> list[str]:
    """Overrides of the benchmark's ``xtalpilot plant``: the user's, less the benchmark's own keys."""
    kept = [o for o in user if o.split("=", 1)[0].lstrip("+~") not in _BENCH_OWNED_KEYS]
    return [*kept, f"speed={speed}", f"opcua_port={opcua_port}", f"modbus_port={modbus_port}", "autostart=true"]


def served_benchmark(
    tagmap: TagMap, speed: float, reads: int = 2000, rtf_window_s: float = 10.0, overrides: Sequence[str] = ()
) -> dict:
    """Start the served plant at ``speed`` and measure it from loopback clients.

    ``overrides`` (the user's, e.g. ``scenario=msmpr``) reach the served plant, except the
    keys in :data:`_BENCH_OWNED_KEYS`.
    """
    opcua_port, modbus_port = _free_port(), _free_port()
    with served_plant(served_overrides(overrides, speed, opcua_port, modbus_port)):
        return asyncio.run(_measure_clients(tagmap, opcua_port, modbus_port, reads, rtf_window_s))


def offline_benchmark(cfg, runs: int = 5) -> dict:
    """Median wall time of the scenario's offline batch, and its mass closure."""
    from plant_sim.simulate import simulate

    walls, summary = [], {}
    for _ in range(runs):
        summary = simulate(cfg, progress=False).summary
        walls.append(summary["wall_s"])
    wall = statistics.median(walls)
    return {
        "offline_realtime_factor": summary["plant_time_s"] / wall,
        "offline_wall_s": {"median": wall, "min": min(walls), "max": max(walls), "runs": runs},
        "mass_closure_rel_error": summary.get("mass_closure_rel_error"),
        "offline_batch": {
            k: summary[k]
            for k in ("scenario", "plant_time_s", "size_classes", "output_interval_s", "d43_um", "cv", "crystal_mass_kg")
        },
    }


def run_plant_benchmark(cfg, served: bool = True, overrides: Sequence[str] = ()) -> dict:
    """All plant figures as one JSON-ready dict (top-level keys as the README documents).

    Args:
        cfg: the composed config (offline batch).
        served: also measure the served plant.
        overrides: the overrides ``cfg`` was composed with, passed on to the served plant.
    """
    tagmap = TagMap.from_dict(cfg.plant)
    t0 = time.perf_counter()
    result: dict = {
        "msmpr_rel_l2_error": pbe_checks.msmpr_rel_l2_error(200),
        "growth_translation_rel_error": pbe_checks.growth_translation_rel_error(200),
        "moment_rel_error": pbe_checks.moment_rel_error(200),
    }
    offline = offline_benchmark(cfg)
    result["mass_closure_rel_error"] = offline.pop("mass_closure_rel_error")
    result["offline_realtime_factor"] = offline.pop("offline_realtime_factor")
    if served:
        at_target = served_benchmark(tagmap, speed=1000.0, overrides=overrides)
        unthrottled = served_benchmark(tagmap, speed=1e6, reads=200, rtf_window_s=5.0, overrides=overrides)
        result["served_realtime_factor"] = at_target["realtime_factor"]
        result["served_max_realtime_factor"] = unthrottled["realtime_factor"]
        result["opcua_read_ms"] = at_target["opcua_read_ms"]
        result["modbus_read_ms"] = at_target["modbus_read_ms"]
        result["served"] = {"requested_speed": 1000.0, "opcua_tags": at_target["opcua_tags"]}
    result["details"] = {
        **offline,
        "msmpr_classes": 200,
        "scenario": cfg.scenario.name,
        "process": cfg.process.name,
        "overrides": list(overrides),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "bench_wall_s": time.perf_counter() - t0,
    }
    return result
