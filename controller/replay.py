"""``xtalpilot replay``: the agent in shadow mode over a recorded batch, with a report.

A historian export (CSV or Parquet, long or wide form: :mod:`controller.recorded_io`) is read
behind the plant I/O interface and the configured strategy runs over it exactly as it would
beside the plant, in advisory mode: every cycle validates the signals, asks the model,
proposes, and the guard decides what it would let through in automatic (logged as
``shadow_reasons`` and ``would_write_<setpoint>``); nothing is written anywhere (the
recording is read-only).
Between recorded instants nothing waits; the model's answer and each proposal are awaited
before the next cycle, as they arrive within one control interval on a live plant.

Without ``replay.recording`` a batch of the configured process is first recorded from the
simulated plant, running the configured scenario (every tag, one row per
``agent.control_interval_s``), into ``<output_dir>/recording.csv``: **synthetic** data, to try replay without a historian.

Out (``replay.output_dir``): ``decisions.sqlite`` (the decision log), ``decisions.csv`` (one
row per cycle), ``summary.json`` (what is printed) and ``report.png``:

- recorded reactor temperature and setpoint against the setpoint the agent would have written;
- recorded concentration against the solubility and the metastable limit;
- supersaturation against its limit;
- the guard's verdicts in automatic over time (why it would have held, clamped, rate-limited).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from conf.contract.signals import TEMPERATURE_SETPOINT as TEMPERATURE_SP
from conf.contract.signals import TEMPERATURE_SETPOINT_ACTIVE as ACTIVE_SP
from controller.guard import Mode
from controller.settings import SetupError

__all__ = ["record_simulated_batch", "run_replay"]


def record_simulated_batch(cfg, path: Path, interval_s: float) -> Path:
    """Record every tag of a simulated batch of ``cfg.process`` on ``cfg.scenario`` (wide CSV,
    synthetic data)."""
    import pandas as pd

    from plant_sim.plant import Plant

    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=min(interval_s, 10.0),
                                                                          autostart=True))
    rows = []
    steps = int(math.ceil(cfg.scenario.duration_min * 60.0 / interval_s))
    for _ in range(steps + 1):
        values = plant.values()
        rows.append({"timestamp": values["plant_time_s"], **values})
        plant.advance(interval_s)
    frame = pd.DataFrame(rows).drop(columns=["plant_time_s"])
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def _recorded_io(cfg, path: Path):
    from controller.recorded_io import RecordedIO, RecordingError
    from conf.contract.tagmap import TagMap

    try:
        return RecordedIO(TagMap.from_dict(cfg.plant), path, cfg.replay.time_column, cfg.replay.day_first)
    except RecordingError as exc:
        raise SetupError(f"{exc}; replay.recording must name a CSV or Parquet historian export") from None


def run_replay(cfg) -> dict:
    """Replay ``cfg.replay.recording`` (or a simulated batch) in shadow mode; returns the summary."""
    from controller.agent import run_agent
    from controller.decision_log import read_decisions
    from controller.report import batch_frame

    r = cfg.replay
    out = Path(r.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if r.recording is None:
        recording = record_simulated_batch(cfg, out / "recording.csv", cfg.agent.control_interval_s)
        source = f"{recording} (recorded now from the simulated plant: synthetic)"
    else:
        recording = Path(r.recording)
        source = str(recording)
    io = _recorded_io(cfg, recording)
    log_path = out / "decisions.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(str(log_path) + suffix).unlink(missing_ok=True)
    agent = dataclasses.replace(cfg.agent, mode=Mode.advisory, start_batch=False, stop_after_batch=False,
                                decision_log=str(log_path), metrics_port=0)
    report = asyncio.run(run_agent(dataclasses.replace(cfg, agent=agent), io=io, metrics_server=False))
    decisions = read_decisions(log_path)  # read once: the summary, the CSV and the plots share it
    frame = batch_frame(decisions)
    summary = replay_summary(cfg, frame, decisions["signal_status"], report.summary(), source, io)
    frame.to_csv(out / "decisions.csv", index=False)
    summary["report"] = str(write_replay_report(out / "report.png", frame, cfg))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def replay_summary(cfg, frame, signal_statuses, agent_summary: dict, source: str, io) -> dict:
    """What the agent would have done over the recording, against what the plant did.

    ``frame``: :func:`controller.report.batch_frame` of the decision log; ``signal_statuses``
    its ``signal_status`` column."""
    from controller.rollout import MaterialConstants

    material = (MaterialConstants.for_material(cfg.agent.material) if cfg.agent.material
                else MaterialConstants.for_process(cfg.process))
    proposed = _would_write(frame)
    recorded_sp = np.asarray(frame.get(ACTIVE_SP, np.full(len(frame), math.nan)), dtype=float)
    both = np.isfinite(proposed) & np.isfinite(recorded_sp)
    temperature = np.asarray(frame.get("reactor_temperature_c", np.full(len(frame), math.nan)), dtype=float)
    conc = np.asarray(frame.get("concentration_g_per_kg", np.full(len(frame), math.nan)), dtype=float)
    ok = np.isfinite(temperature) & np.isfinite(conc) & (conc > 0)
    sigma = np.full(len(frame), math.nan)
    sigma[ok] = np.log(conc[ok] / material.solubility_g_per_kg(temperature[ok]))
    statuses: Counter = Counter()
    for st in signal_statuses:
        statuses.update(s for s in st.values() if s != "ok")
    expected = {k[len("expected_"):]: float(frame[k].dropna().iloc[-1]) for k in frame.columns
                if k.startswith("expected_") and frame[k].notna().any() and k != "expected_chose_reference"}
    shadow = [r for r in frame.get("shadow_reasons", []) if isinstance(r, str)]
    verdicts = Counter(reason for rs in shadow for reason in rs.split(",") if reason)
    held = sum(any(x in rs.split(",") for x in _HOLDS) for rs in shadow)
    return {
        "recording": source,
        "ignored_tags": list(io.ignored),
        "recording_quirks": dict(io.quirks),
        "instants": io.instants,
        "recorded_h": float(frame["plant_time_s"].max() - frame["plant_time_s"].min()) / 3600.0 if len(frame) else 0.0,
        "strategy": cfg.agent.strategy.value,
        "process": cfg.process.name,
        # whose solubility and metastable limit the supersaturation figures are judged against
        "material": cfg.agent.material or cfg.process.material,
        "cycles": agent_summary["cycles"],
        "proposals": agent_summary["proposal_s"]["n"],
        "guard_verdicts_in_automatic": dict(verdicts),
        "held_fraction": held / len(shadow) if shadow else math.nan,
        "signal_problems": dict(statuses),
        "setpoint_vs_recorded_k": {
            "cycles_compared": int(both.sum()),
            "mean_abs": float(np.mean(np.abs(proposed[both] - recorded_sp[both]))) if both.any() else math.nan,
            "max_abs": float(np.max(np.abs(proposed[both] - recorded_sp[both]))) if both.any() else math.nan,
        },
        "recorded_peak_supersaturation": float(np.nanmax(sigma)) if np.isfinite(sigma).any() else math.nan,
        "supersaturation_limit": cfg.proposer.metastable_sigma_limit,
        "last_expected": expected,
        "stopped_by": agent_summary["stopped_by"],
        "writes": agent_summary["writes"],
    }


_HOLDS = ("data_bad", "model_failed", "uncertainty_high", "proposal_stale", "proposal_missing",
          "proposal_not_finite")


def _would_write(frame) -> np.ndarray:
    """The temperature setpoint the guard would have written each cycle (NaN where none)."""
    column = f"would_write_{TEMPERATURE_SP}"
    return np.asarray(frame[column], dtype=float) if column in frame else np.full(len(frame), math.nan)


def write_replay_report(path: Path, frame, cfg) -> Path:
    """The four panels of the module docstring, over the recording's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controller.rollout import MaterialConstants

    material = (MaterialConstants.for_material(cfg.agent.material) if cfg.agent.material
                else MaterialConstants.for_process(cfg.process))
    limit = cfg.proposer.metastable_sigma_limit
    t_h = np.asarray(frame["plant_time_s"], dtype=float) / 3600.0 if len(frame) else np.zeros(0)

    def col(name: str) -> np.ndarray:
        return np.asarray(frame[name], dtype=float) if name in frame else np.full(len(frame), math.nan)

    temperature, conc = col("reactor_temperature_c"), col("concentration_g_per_kg")
    csat = material.solubility_g_per_kg(temperature)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(t_h, temperature, label="reactor (recorded)")
    ax.plot(t_h, col(ACTIVE_SP), "--", label="setpoint (recorded)")
    ax.plot(t_h, _would_write(frame), ":", lw=2, label="setpoint the agent would have written")
    ax.set(xlabel="plant time (h)", ylabel="temperature (C)", title="Temperatures and setpoints")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(t_h, conc, label="concentration (recorded)")
    name = cfg.agent.material or cfg.process.material
    ax.plot(t_h, csat, label=f"solubility C* ({name})")
    ax.plot(t_h, csat * math.exp(limit), "--", label=f"metastable limit (ln S {limit:g})")
    ax.set(xlabel="plant time (h)", ylabel="g per kg solvent", title="Concentration")
    ax.legend()
    ax = axes[1, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        ax.plot(t_h, np.log(conc / csat), label="ln(C/C*) (recorded)")
    ax.axhline(limit, color="r", ls="--", label="limit")
    ax.set(xlabel="plant time (h)", ylabel="supersaturation", title="Supersaturation")
    ax.legend()
    ax = axes[1, 1]
    reasons = [r if isinstance(r, str) else "" for r in frame["shadow_reasons"]] if "shadow_reasons" in frame else []
    kinds = sorted({r for rs in reasons for r in rs.split(",") if r})
    for k, kind in enumerate(kinds):
        hit = np.array([kind in rs.split(",") for rs in reasons])
        ax.plot(t_h[hit], np.full(hit.sum(), k), "|", ms=12)
    ax.set(yticks=range(len(kinds)), yticklabels=kinds, xlabel="plant time (h)",
           title="Guard verdicts, had it been in automatic")
    fig.suptitle(f"xtalpilot replay (shadow mode): {cfg.agent.strategy.value}, process {cfg.process.name}, "
                 f"material {name}")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
