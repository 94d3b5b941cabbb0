"""Offline simulation: run a scenario as fast as possible, no servers.

:func:`simulate` is pure (returns data frames and a summary); :func:`simulate_to_files` adds
the I/O: Parquet (or CSV) time series of every signal, the final size distribution and a PNG
summary plot. The plant object is the same one the servers run, stepped at the output interval,
so offline and served runs share the recipe, protection and physics.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plant_sim.pbe import size_statistics, top_class_warning  # noqa: F401  (re-exported: product figures)
from plant_sim.plant import Plant
from plant_sim.reactor import IntegrationError

#: Relative error of the closed batch's solute balance above which a run fails (a stable
#: integration closes to round-off, ~1e-12).
MASS_CLOSURE_TOLERANCE = 1e-6
from plant_sim.scenarios import Operation

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulationResult:
    """Output of :func:`simulate`.

    Attributes:
        timeseries: one row per output step; measured signals (tag names), status tags and
            ``true_*`` columns (simulator truth, for analysis).
        csd: final size distribution, one row per size class.
        summary: product and run figures (JSON-serialisable).
    """

    timeseries: pd.DataFrame
    csd: pd.DataFrame
    summary: dict


def simulate(cfg, progress: bool | None = None) -> SimulationResult:
    """Run ``cfg.scenario`` (which runs ``cfg.process``) for its duration.

    Args:
        cfg: :class:`conf.simulator.SimulatorConfig`.
        progress: show a progress bar (default: ``cfg.simulate.progress``).
    """
    sc = cfg.scenario
    step_s = cfg.simulate.output_interval_s
    plant = Plant.from_config(cfg.plant, sc, cfg.plant_settings(step_s=step_s, autostart=True))
    reactor = plant.reactor
    total0 = reactor.total_solute_kg(plant.x)
    duration_s = sc.duration_min * 60.0
    n_chunks = max(1, min(100, int(duration_s / step_s)))
    chunk_s = duration_s / n_chunks
    show = cfg.simulate.progress if progress is None else progress
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=round(sc.duration_min), unit="plant min", desc=sc.name, leave=False)
    pieces = []
    wall0 = time.perf_counter()
    for _ in range(n_chunks):
        rec = plant.advance(chunk_s, record=True)
        if rec is not None:
            pieces.append(rec)
        if bar is not None:
            bar.update(round(plant.plant_time_s / 60.0) - bar.n)
    wall_s = time.perf_counter() - wall0
    if bar is not None:
        bar.close()
    columns = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
    timeseries = pd.DataFrame(columns)

    x = plant.x
    grid = reactor.grid
    n_final = reactor.csd_per_m_per_kg(x)
    csd = pd.DataFrame(
        {
            "size_um": grid.centers_m * 1e6,
            "width_um": grid.widths_m * 1e6,
            "number_density_per_um_per_kg": n_final * 1e-6,
            "volume_fraction": n_final * grid.centers_m**3 * grid.widths_m
            / max(float(np.sum(n_final * grid.centers_m**3 * grid.widths_m)), 1e-300),
        }
    )
    stats = size_statistics(n_final, grid.centers_m, grid.widths_m)
    sigma = np.log(
        np.maximum(timeseries["true_concentration_g_per_kg"], 1e-12) / timeseries["true_solubility_g_per_kg"]
    )
    summary = {
        "scenario": sc.name,
        "process": cfg.process.name,
        "material": sc.material if sc.kinetics.model.value == "physics" else sc.kinetics.power_law.name,
        # a material given as data runs power laws whatever the scenario's kinetics say
        "kinetics": "power_law" if sc.material_data is not None else sc.kinetics.model.value,
        "plant_time_s": plant.plant_time_s,
        "wall_s": wall_s,
        "realtime_factor": plant.plant_time_s / wall_s if wall_s > 0 else math.inf,
        "size_classes": reactor.n,
        "output_interval_s": step_s,
        "batch_state": plant.state.name.lower(),
        "seed_mass_charged_g": plant.seed_mass_charged_g,
        "final_temperature_c": float(x[reactor.n + 1]),
        "final_concentration_g_per_kg": reactor.concentration_g_per_kg(x),
        "crystal_mass_kg": reactor.crystal_mass_kg(x),
        "peak_sigma": float(np.max(sigma)),
        **stats,
        "target_mean_size_um": sc.target_mean_size_um or None,
    }
    warning = top_class_warning(stats, grid.edges_m[-1] * 1e6)
    if warning:
        _log.warning("%s: %s", sc.name, warning)
        summary["warnings"] = [warning]
    if sc.operation is Operation.batch:
        # Closed batch: dissolved + crystallised solute stays what was charged (solution + seeds).
        charged = total0 + plant.seed_mass_charged_g / 1000.0
        summary["mass_closure_rel_error"] = abs(reactor.total_solute_kg(x) - charged) / charged
        if not summary["mass_closure_rel_error"] <= MASS_CLOSURE_TOLERANCE:
            raise IntegrationError(
                f"{sc.name}: the batch's solute does not close: {reactor.total_solute_kg(x):.4g} kg dissolved and "
                f"crystallised against {charged:.4g} kg charged (relative error "
                f"{summary['mass_closure_rel_error']:.2g}); the integration is not to be trusted: lower "
                "scenario.reactor.max_substep_s or scenario.reactor.cfl")
    return SimulationResult(timeseries, csd, summary)


def simulate_to_files(cfg) -> dict:
    """Run :func:`simulate` and write the results under ``cfg.simulate.output_dir``.

    Returns:
        The summary, with the paths written.
    """
    result = simulate(cfg)
    out = Path(cfg.simulate.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = cfg.scenario.name
    fmt = cfg.simulate.format.value
    ts_path = out / f"{name}_timeseries.{fmt}"
    csd_path = out / f"{name}_final_csd.{fmt}"
    if fmt == "parquet":
        result.timeseries.to_parquet(ts_path, index=False)
        result.csd.to_parquet(csd_path, index=False)
    else:
        result.timeseries.to_csv(ts_path, index=False)
        result.csd.to_csv(csd_path, index=False)
    summary = dict(result.summary)
    summary["files"] = {"timeseries": str(ts_path), "final_csd": str(csd_path)}
    if cfg.simulate.plot:
        png = out / f"{name}_summary.png"
        plot_summary(result, png)
        summary["files"]["plot"] = str(png)
    _log.info("%s: %.0f plant s in %.2f s wall; wrote %s", name, summary["plant_time_s"], summary["wall_s"], out)
    return summary


def plot_summary(result: SimulationResult, path: Path) -> None:
    """A one-page PNG: temperatures, concentration vs solubility, FBRM, imaging, habit, CSD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts, csd, summary = result.timeseries, result.csd, result.summary
    t_min = ts["plant_time_s"] / 60.0
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), constrained_layout=True)
    ax = axes[0, 0]
    ax.plot(t_min, ts["reactor_temperature_c"], label="reactor TT-101")
    ax.plot(t_min, ts["jacket_temperature_c"], label="jacket TT-102", alpha=0.7)
    ax.plot(t_min, ts["reactor_temperature_setpoint_active_c"], "k--", label="working setpoint")
    ax.set_ylabel("temperature / C")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    ax.plot(t_min, ts["concentration_g_per_kg"], label="ATR-FTIR (measured)", alpha=0.7)
    ax.plot(t_min, ts["true_concentration_g_per_kg"], label="true C")
    ax.plot(t_min, ts["true_solubility_g_per_kg"], "k--", label="solubility C*")
    ax.set_ylabel("g per kg solvent")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for k in range(1, 7):
        ax.plot(t_min, ts[f"fbrm_counts_bin{k}_per_s"], label=f"FBRM bin {k}", lw=0.8)
    ax.set_ylabel("chord counts / s")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 1]
    ax.plot(t_min, ts["image_mean_size_um"], label="imaging mean size")
    ax.set_ylabel("size / um")
    ax2 = ax.twinx()
    ax2.plot(t_min, ts["image_aspect_ratio"], "C1", label="aspect ratio", lw=0.8)
    ax2.set_ylabel("aspect ratio")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2, 0]
    for k in range(1, 5):
        col = f"facet_{k}_area_fraction"
        if ts[col].notna().any() and ts[col].max() > 0:
            ax.plot(t_min, ts[col], label=f"facet slot {k}")
    ax.set_ylabel("facet area fraction")
    ax.set_xlabel("plant time / min")
    ax.legend(fontsize=8)
    ax = axes[2, 1]
    ax.plot(csd["size_um"], csd["volume_fraction"] / csd["width_um"], label="final")
    ax.set_xlabel("volume-equivalent size / um")
    ax.set_ylabel("volume density / 1/um")
    if summary.get("target_mean_size_um"):
        ax.axvline(summary["target_mean_size_um"], color="k", ls="--", label="target")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"{summary['scenario']} (simulated): d43 = {summary['d43_um']:.0f} um, CV = {summary['cv']:.2f}, "
        f"crystals {summary['crystal_mass_kg']:.2f} kg"
    )
    fig.savefig(path, dpi=90)
    plt.close(fig)
