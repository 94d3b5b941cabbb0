"""Batch report plots from decision logs and the plant's batch records (demo, replay).

One PNG of six panels, each strategy's batch drawn over its batch time:

- reactor temperature and the setpoint written;
- concentration against solubility and the metastable limit (C* exp(sigma_limit));
- supersaturation against its limit;
- final CSD (volume fraction per size class, from the plant's batch record);
- facet habit over time (imaging area fractions of each facet slot);
- predicted growth rate (model, and after the online bias correction) against the growth seen
  in the plant's size signals: the trend of the imaging probe's mean size
  (:func:`trend_growth_um_per_min`), and of the FBRM mean chord for comparison. No in-line
  instrument measures a growth rate; a size trend is one where growth dominates (new nuclei
  entering the probe's view pull a number mean down).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from controller.estimator import size_trend_per_min

__all__ = ["batch_frame", "trend_growth_um_per_min", "write_report"]

#: Trailing window of the size trend: a growing crystal gains ~1 um/min, the imaging mean size
#: scatters ~2 % (3 um at 150 um), so 15 min of 30 s cycles put the slope's noise near 0.1 um/min.
TREND_WINDOW_S = 900.0


def trend_growth_um_per_min(time_s, size_um, window_s: float = TREND_WINDOW_S, min_points: int = 5) -> np.ndarray:
    """Growth rate seen in the trend of a size signal: at each sample, the least-squares slope of
    the valid sizes over the trailing window ``(t - window_s, t]``.

    For size-independent growth of a fixed population the number mean size moves at G exactly,
    so the slope of the imaging mean size is the growth the plant shows. It is not G where
    nuclei enter the probe's view (they pull the number mean down) or crystals leave it, and an
    FBRM chord mean moves in proportion to the size, not at G (chords of a sphere of size L
    average 2 L / 3, weighted towards large crystals).

    Args:
        time_s: sample times, non-decreasing, (T,).
        size_um: the size signal, um, (T,); NaN (a bad or absent reading) is skipped.
        window_s: length of the trailing window, plant seconds (> 0).
        min_points: fewest valid samples (at two or more distinct times) a slope needs (>= 2).

    Returns:
        dL/dt in um/min, (T,); NaN where the window holds too few valid samples.
    """
    if not (window_s > 0 and min_points >= 2):
        raise ValueError(f"need window_s > 0 and min_points >= 2, got {window_s}, {min_points}")
    t = np.asarray(time_s, dtype=float).reshape(-1)
    y = np.asarray(size_um, dtype=float).reshape(-1)
    if t.shape != y.shape:
        raise ValueError(f"time_s and size_um differ in shape: {t.shape} vs {y.shape}")
    valid = np.isfinite(t) & np.isfinite(y)
    tv, yv = t[valid], y[valid]
    out = np.full(t.shape, math.nan)
    for k in range(t.size):
        if not math.isfinite(t[k]):
            continue
        lo, hi = np.searchsorted(tv, [t[k] - window_s, t[k]], side="right")
        if hi - lo < min_points:
            continue
        out[k] = size_trend_per_min(zip(tv[lo:hi], yv[lo:hi]), min_points=min_points, min_span_s=0.0)
    return out


def batch_frame(decision_log):
    """A decision log flattened to one row per cycle: plant and batch time, every logged input,
    prediction, proposed and written value (``proposal_<name>``, ``written_<name>``), mode and
    reasons. ``decision_log``: its path, or what :func:`read_decisions` already read from it."""
    import pandas as pd

    from controller.decision_log import read_decisions

    raw = decision_log if isinstance(decision_log, pd.DataFrame) else read_decisions(decision_log)
    rows = []
    for rec in raw.itertuples():
        row = {"plant_time_s": rec.plant_time_s, "mode": rec.mode, "reasons": ",".join(rec.reasons),
               "held": rec.held}
        row.update({k: v for k, v in rec.inputs.items() if not isinstance(v, (dict, list))})
        row.update({f"pred_{k}": v for k, v in rec.predictions.items()})
        row.update({f"proposal_{k}": v for k, v in rec.proposal.items()})
        row.update({f"written_{k}": v for k, v in rec.written.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _col(frame, name: str) -> np.ndarray:
    if name not in frame:
        return np.full(len(frame), math.nan)
    return np.asarray(frame[name], dtype=float)


def write_report(out_dir: Path, logs: Mapping[str, str], records: Mapping[str, dict], cfg) -> Path:
    """Write ``report.png`` (and ``<strategy>_decisions.csv``) into ``out_dir``; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from controller.rollout import MaterialConstants
    from controller.strategy import product_target_um

    material = (MaterialConstants.for_material(cfg.agent.material) if cfg.agent.material
                else MaterialConstants.for_process(cfg.process))
    limit = cfg.proposer.metastable_sigma_limit
    frames = {}
    for name, path in logs.items():
        frame = batch_frame(path)
        frame.to_csv(out_dir / f"{name}_decisions.csv", index=False)
        frames[name] = frame[np.isfinite(_col(frame, "batch_time_s"))]
    colors = {"model_predictive": "tab:blue", "linear_cooling": "tab:orange", "natural_cooling": "tab:brown",
              "cubic_cooling": "tab:purple", "supersaturation_control": "tab:green",
              "direct_nucleation_control": "tab:red"}
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax_t, ax_c, ax_s, ax_csd, ax_habit, ax_g = axes.ravel()
    for name, f in frames.items():
        hours = _col(f, "batch_time_s") / 3600.0
        color = colors.get(name)
        temp = _col(f, "reactor_temperature_c")
        ax_t.plot(hours, temp, color=color, label=f"{name}: reactor")
        ax_t.plot(hours, _col(f, "written_reactor_temperature_setpoint_c"), color=color, ls="--", lw=0.9,
                  label=f"{name}: setpoint written")
        conc = _col(f, "concentration_g_per_kg")
        csat = material.solubility_g_per_kg(temp)
        ax_c.plot(hours, conc, color=color, label=f"{name}: concentration")
        ax_c.plot(hours, csat, color=color, ls=":", label=f"{name}: solubility")
        ax_c.plot(hours, csat * math.exp(limit), color=color, ls="-.", lw=0.8, label=f"{name}: metastable limit")
        with np.errstate(divide="ignore", invalid="ignore"):
            ax_s.plot(hours, np.log(conc / csat), color=color, label=name)
        rec = records.get(name, {}).get("csd")
        if rec:
            ax_csd.plot(rec["size_um"], rec["volume_fraction"], color=color,
                        label=f"{name}: d43 {records[name]['d43_um']:.0f} um")
    ax_s.axhline(limit, color="red", lw=1.0, ls="--", label="metastable limit")
    ax_csd.axvline(product_target_um(cfg), color="grey", ls="--", label="target d43")

    agent = frames.get("model_predictive")
    if agent is not None and len(agent):
        hours = _col(agent, "batch_time_s") / 3600.0
        for k in range(1, 5):
            fraction = _col(agent, f"facet_{k}_area_fraction")
            if np.isfinite(fraction).any():
                ax_habit.plot(hours, fraction, label=f"facet slot {k}")
        plant_s = _col(agent, "plant_time_s")
        ax_g.plot(hours, trend_growth_um_per_min(plant_s, _col(agent, "image_mean_size_um")), color="black", lw=1.0,
                  label="imaging mean-size trend (plant)")
        chords = trend_growth_um_per_min(plant_s, _col(agent, "fbrm_chord_mean_um"))
        if np.isfinite(chords).any():
            ax_g.plot(hours, chords, color="grey", lw=0.8, ls=":", label="FBRM mean-chord trend (chords, not sizes)")
        ax_g.plot(hours, _col(agent, "pred_G_model_um_per_min"), color="tab:green", label="MS-GNN")
        ax_g.plot(hours, _col(agent, "pred_G_um_per_min"), color="tab:blue", ls="--", label="MS-GNN x online bias")
    titles = [
        (ax_t, "Temperature (C)"), (ax_c, "Concentration (g/kg solvent)"), (ax_s, "Supersaturation ln(C/C*)"),
        (ax_csd, "Final CSD (volume fraction)"), (ax_habit, "Facet area fractions (imaging)"),
        (ax_g, "Growth rate (um/min)"),
    ]
    for ax, title in titles:
        ax.set_title(title)
        ax.set_xlabel("size (um)" if ax is ax_csd else "batch time (h)")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.suptitle(f"xtalpilot demo on the simulated plant ({cfg.process.name} on {cfg.scenario.name}, "
                 f"{cfg.agent.material or cfg.process.material})")
    fig.tight_layout()
    path = out_dir / "report.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
