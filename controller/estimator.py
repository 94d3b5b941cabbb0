"""The population estimator: seed and nucleated moments reconciled with the measured mass balance.

One pure step per control cycle, ``step(estimate, measurement, kinetics, settings) -> estimate``,
on two populations described by their moments mu_0..mu_5 (um^k per kg of the water charged, as
controller/rollout.py), with the local kinetic laws of the model and two online corrections:

1. **Predict.** Over the step the populations grow by L = G dt and nuclei are born at
   B (1 + a) dt, with G and B of the laws at the measured temperature and supersaturation,
   times the corrections exp(ln_growth) and exp(ln_nucleation); log10 B is capped at
   ``max_log10_nucleation_per_kg_s`` (no real solution nucleates faster; without the cap a
   sustained high supersaturation drove an uncorrected estimate to 1e87).
2. **Reconcile with the mass balance.** The solute measured now fixes the crystal mass:

       M_bal = M_seed + (s_seed - s_now) / 1000          (kg crystal per kg water)

   with s the solute per kg water (C (1 + a)) and s_seed the solute measured when the seeds went
   in. The crystal mass of the moments, rho k_v mu_3 (seeds + nuclei), is pulled towards M_bal
   with the gain ``1 - exp(-dt / mass_balance_time_s)`` (a low-pass on the analyser's noise) by
   solving for the growth length L of the step that gives that mu_3 (mu_3 grows monotonically
   in L, so bisection). The growth the mass balance implies, L / dt, is the observed G
   (desupersaturation, as an APC engineer would estimate it); its ratio to the model's G is the
   growth correction, filtered over ``growth_time_s``. The solute state is the measured one
   (C is measured; the moments were made to agree with it), so crystals never grow without
   drawing solute.
3. **Correct nucleation from FBRM.** Chord counts are proportional to sum N_i L_i, the first
   moment (plant_sim/sensors.py documents the probe: counts = k_s sum_i N_i L_i P_ij). The
   factor counts / mu_1 is calibrated while the seeds alone are in suspension (the first
   ``fbrm_calibration_s`` after seeding); afterwards the counts above what the seeds explain are
   the nuclei's mu_1, and their ratio to the estimated nuclei's mu_1 corrects B (filtered over
   ``nucleation_time_s``) and rescales the nuclei moments (at most a factor e per step).

States are bounded physically: moments finite and >= 0, mu_3 of the nuclei no more than the
crystal mass allows, corrections within +-``max_ln_correction``. Without a valid concentration
the step predicts with the model alone (corrections frozen) and the solute follows the
consumption of the moments.

The estimate is a frozen dataclass that serialises to JSON (:meth:`PopulationEstimate.to_dict`), so
the agent persists it per batch and an agent restarted mid-batch continues where it was.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Mapping

import numpy as np

__all__ = ["EstimatorSettings", "Measurement", "PopulationEstimate", "crystal_mass_kg_per_kg", "seed", "step"]

N_MOMENTS = 6
T_REF_K = 298.15
_BINOMIAL = np.array([[math.comb(k, j) for j in range(N_MOMENTS)] for k in range(N_MOMENTS)], dtype=float)


@dataclass(frozen=True)
class EstimatorSettings:
    """How the estimate follows the measurements.

    Attributes:
        mass_balance_time_s: time constant with which the moments' crystal mass follows the
            measured mass balance (a filter on the concentration analyser's noise).
        growth_time_s: time constant of the growth correction (observed / model G).
        nucleation_time_s: time constant of the nucleation correction from FBRM.
        fbrm_calibration_s: plant seconds after seeding over which counts per mu_1 are calibrated
            (the seeds alone are in suspension then).
        min_sigma_for_growth: below this supersaturation the growth correction is not updated
            (G -> 0 and the ratio is noise).
        max_log10_nucleation_per_kg_s: cap on log10 B (per kg solvent per s).
        max_ln_correction: bound of each correction, ln units.
        suspension_ref_kg_per_kg: suspension density at which the nucleation law holds.
        max_step_s: longest step integrated at once (a longer gap is cut to this).
    """

    mass_balance_time_s: float = 120.0
    growth_time_s: float = 600.0
    nucleation_time_s: float = 900.0
    fbrm_calibration_s: float = 300.0
    min_sigma_for_growth: float = 0.002
    max_log10_nucleation_per_kg_s: float = 9.0
    max_ln_correction: float = 4.0
    suspension_ref_kg_per_kg: float = 0.05
    max_step_s: float = 600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"estimator setting {f.name} must be finite and > 0, got {value}")


@dataclass(frozen=True)
class Measurement:
    """What one cycle measured (NaN where the signal is not valid).

    Attributes:
        time_s: plant time.
        temperature_c: reactor temperature.
        concentration_g_per_kg: solute per kg solvent.
        solubility_g_per_kg: C* at the temperature and solvent composition (per kg solvent).
        antisolvent_per_water: antisolvent fed so far, kg per kg water.
        fbrm_total_per_s: FBRM total chord count rate (NaN: no probe).
    """

    time_s: float
    temperature_c: float
    concentration_g_per_kg: float
    solubility_g_per_kg: float
    antisolvent_per_water: float = 0.0
    fbrm_total_per_s: float = math.nan

    @property
    def solute_g_per_kg_water(self) -> float:
        return self.concentration_g_per_kg * (1.0 + self.antisolvent_per_water)

    @property
    def sigma(self) -> float:
        c, cs = self.concentration_g_per_kg, self.solubility_g_per_kg
        return math.log(c / cs) if math.isfinite(c) and math.isfinite(cs) and c > 0 and cs > 0 else math.nan


@dataclass(frozen=True)
class PopulationEstimate:
    """The estimated population of a seeded batch (per kg water).

    Attributes:
        time_s: plant time of the estimate.
        seeds / nuclei: moments mu_0..mu_5, um^k per kg water.
        solute_g_per_kg_water: solute in solution.
        seed_mass_kg_per_kg: seed mass charged per kg water.
        seed_solute_g_per_kg_water: solute measured when the seeds went in (mass-balance anchor).
        seeded_at_s: plant time of seeding.
        ln_growth_correction / ln_nucleation_correction: online corrections of the model.
        growth_observed_um_per_min: G the mass balance implied over the last step (NaN: none).
        fbrm_counts_per_mu1: calibrated counts per s per um of mu_1 (NaN: not yet).
        calibration_samples: readings in the FBRM calibration so far.
    """

    time_s: float
    seeds: tuple[float, ...]
    nuclei: tuple[float, ...]
    solute_g_per_kg_water: float
    seed_mass_kg_per_kg: float
    seed_solute_g_per_kg_water: float
    seeded_at_s: float
    ln_growth_correction: float = 0.0
    ln_nucleation_correction: float = 0.0
    growth_observed_um_per_min: float = math.nan
    fbrm_counts_per_mu1: float = math.nan
    calibration_samples: int = 0

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PopulationEstimate":
        """The estimate from :meth:`to_dict`'s output. Raises ValueError on anything malformed."""
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"estimate fields differ: missing {sorted(names - set(data))}, "
                             f"unknown {sorted(set(data) - names)}")
        out = {}
        for f in fields(cls):
            value = data[f.name]
            if f.name in ("seeds", "nuclei"):
                value = tuple(float(v) for v in value)
                if len(value) != N_MOMENTS or not all(math.isfinite(v) and v >= 0 for v in value):
                    raise ValueError(f"{f.name}: need {N_MOMENTS} finite moments >= 0")
            elif f.name == "calibration_samples":
                value = int(value)
            else:
                value = float(value)
            out[f.name] = value
        return cls(**out)

    def total(self) -> np.ndarray:
        return np.add(self.seeds, self.nuclei)

    def summary(self, mass_per_um3_kg: float) -> dict[str, float]:
        """d43, fines (nuclei mass share) and crystal mass (kg per kg water) for the log."""
        total = self.total()
        mu3 = total[3]
        return {"estimated_d43_um": float(total[4] / mu3) if mu3 > 0 else math.nan,
                "estimated_fines": float(self.nuclei[3] / mu3) if mu3 > 0 else math.nan,
                "estimated_crystal_kg_per_kg": float(mass_per_um3_kg * mu3),
                "growth_correction": math.exp(self.ln_growth_correction),
                "nucleation_correction": math.exp(self.ln_nucleation_correction),
                "growth_observed_um_per_min": self.growth_observed_um_per_min}


def crystal_mass_kg_per_kg(estimate: PopulationEstimate, solute_g_per_kg_water: float) -> float:
    """The crystal mass the mass balance gives for a measured solute (kg per kg water)."""
    return estimate.seed_mass_kg_per_kg + (estimate.seed_solute_g_per_kg_water - solute_g_per_kg_water) / 1000.0


def seed(time_s: float, seed_moments: tuple[float, ...], seed_mass_kg_per_kg: float,
         solute_g_per_kg_water: float) -> PopulationEstimate:
    """The estimate when the seeds go in (the solute measured then anchors the mass balance)."""
    return PopulationEstimate(time_s, tuple(float(v) for v in seed_moments), (0.0,) * N_MOMENTS,
                              float(solute_g_per_kg_water), float(seed_mass_kg_per_kg), float(solute_g_per_kg_water),
                              float(time_s))


def _translate(moments: np.ndarray, length_um: float) -> np.ndarray:
    """Moments of a population all grown by L: mu_k' = sum_j C(k, j) L^(k-j) mu_j."""
    powers = length_um ** np.maximum(np.arange(N_MOMENTS)[:, None] - np.arange(N_MOMENTS)[None, :], 0)
    return (np.tril(_BINOMIAL * powers) @ moments)


def _births(rate_per_kg_water: float, dt_s: float, length_um: float) -> np.ndarray:
    """Moments of nuclei born uniformly over a step in which sizes grow by L: B dt L^k / (k + 1)."""
    k = np.arange(N_MOMENTS)
    return rate_per_kg_water * dt_s * length_um**k / (k + 1.0)


def _grown(est: PopulationEstimate, length_um: float, births_per_kg_water: float, dt_s: float):
    seeds = _translate(np.asarray(est.seeds), length_um)
    nuclei = _translate(np.asarray(est.nuclei), length_um) + _births(births_per_kg_water, dt_s, length_um)
    return seeds, nuclei


def _length_for_mu3(est: PopulationEstimate, target_mu3: float, births: float, dt_s: float, guess_um: float) -> float:
    """Growth length of the step that makes total mu_3 equal ``target_mu3`` (>= 0; bisection)."""
    def mu3(length: float) -> float:
        s, n = _grown(est, length, births, dt_s)
        return float(s[3] + n[3])

    if mu3(0.0) >= target_mu3:
        return 0.0
    high = max(guess_um, 1e-3)
    while mu3(high) < target_mu3 and high < 1e4:
        high *= 2.0
    low = 0.0
    for _ in range(60):
        mid = 0.5 * (low + high)
        if mu3(mid) < target_mu3:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def _kinetics(laws, temperature_c: float, sigma: float, est: PopulationEstimate, mass_per_um3_kg: float,
              antisolvent_per_water: float, settings: EstimatorSettings) -> tuple[float, float]:
    """Model G (um/s) and B (per kg solvent per s), ensemble geometric means, uncorrected."""
    if laws is None or not (math.isfinite(sigma) and sigma > 0 and math.isfinite(temperature_c)):
        return 0.0, 0.0
    inv_t = 1.0 / T_REF_K - 1.0 / (temperature_c + 273.15)
    growth = np.asarray(laws.growth, dtype=float)
    nucleation = np.asarray(laws.nucleation, dtype=float)
    ln_g = growth[:, 0] + growth[:, 1] * math.log(sigma) + growth[:, 2] * inv_t
    log_b = nucleation[:, 0] + nucleation[:, 1] * math.log10(sigma) + nucleation[:, 2] * inv_t
    suspension = mass_per_um3_kg * float(est.total()[3]) / (1.0 + antisolvent_per_water)
    g = math.exp(float(ln_g.mean())) / 60.0
    b = 10.0 ** float(log_b.mean()) * suspension / settings.suspension_ref_kg_per_kg
    return g, b


def step(est: PopulationEstimate, m: Measurement, laws, mass_per_um3_kg: float,
         settings: EstimatorSettings = EstimatorSettings()) -> PopulationEstimate:
    """Advance the estimate to ``m.time_s`` (module docstring). Pure; never raises on data.

    Args:
        est: the estimate at the previous cycle.
        m: this cycle's measurement.
        laws: :class:`controller.kinetics_service.KineticsLaws` (or anything with ``growth`` and
            ``nucleation`` arrays, (S, 3)), or None: no model (growth from the mass balance only).
        mass_per_um3_kg: rho k_v 1e-18, crystal kg per um^3.
    """
    dt = min(m.time_s - est.time_s, settings.max_step_s)
    if not dt > 0:
        return est
    sigma = m.sigma
    g_model, b_model = _kinetics(laws, m.temperature_c, sigma, est, mass_per_um3_kg, m.antisolvent_per_water, settings)
    cap = 10.0 ** settings.max_log10_nucleation_per_kg_s
    births = min(b_model * math.exp(est.ln_nucleation_correction), cap) * (1.0 + m.antisolvent_per_water)
    g = g_model * math.exp(est.ln_growth_correction)
    length = g * dt
    ln_growth = est.ln_growth_correction
    observed = math.nan
    measured = math.isfinite(m.solute_g_per_kg_water) and m.solute_g_per_kg_water > 0
    if measured:
        seeds0, nuclei0 = _grown(est, length, births, dt)
        predicted_mu3 = float(seeds0[3] + nuclei0[3])
        balance_mu3 = max(crystal_mass_kg_per_kg(est, m.solute_g_per_kg_water), 0.0) / mass_per_um3_kg
        gain = 1.0 - math.exp(-dt / settings.mass_balance_time_s)
        target = predicted_mu3 + gain * (balance_mu3 - predicted_mu3)
        length = _length_for_mu3(est, target, births, dt, max(length, 1e-3))
        observed = length / dt * 60.0
        if g_model > 0 and sigma > settings.min_sigma_for_growth and length > 0:
            alpha = 1.0 - math.exp(-dt / settings.growth_time_s)
            residual = math.log(length / (g_model * dt))
            ln_growth = ln_growth + alpha * (residual - ln_growth)
    seeds, nuclei = _grown(est, length, births, dt)
    if measured:
        solute = m.solute_g_per_kg_water
    else:  # the model alone: the solute pays for what the moments grew
        grown_kg = mass_per_um3_kg * float((seeds[3] + nuclei[3]) - est.total()[3])
        solute = max(est.solute_g_per_kg_water - 1000.0 * grown_kg, 0.0)
    out = replace(est, time_s=m.time_s, seeds=_bounded(seeds), nuclei=_bounded(nuclei), solute_g_per_kg_water=solute,
                  ln_growth_correction=_clip(ln_growth, settings.max_ln_correction), growth_observed_um_per_min=observed)
    return _correct_nucleation(out, m, dt, settings)


def _correct_nucleation(est: PopulationEstimate, m: Measurement, dt: float, settings: EstimatorSettings
                        ) -> PopulationEstimate:
    counts = m.fbrm_total_per_s
    if not (math.isfinite(counts) and counts > 0):
        return est
    total_mu1 = float(est.total()[1])
    if m.time_s - est.seeded_at_s <= settings.fbrm_calibration_s:
        if est.seeds[1] <= 0:
            return est
        ratio = counts / float(est.seeds[1])  # seeds alone: nuclei are few and tiny yet
        n = est.calibration_samples
        mean = ratio if n == 0 or not math.isfinite(est.fbrm_counts_per_mu1) else (
            est.fbrm_counts_per_mu1 + (ratio - est.fbrm_counts_per_mu1) / (n + 1))
        return replace(est, fbrm_counts_per_mu1=mean, calibration_samples=n + 1)
    k = est.fbrm_counts_per_mu1
    if not (math.isfinite(k) and k > 0) or total_mu1 <= 0:
        return est
    nuclei_mu1_measured = max(counts / k - est.seeds[1], 0.0)
    nuclei_mu1 = est.nuclei[1]
    # Only where the nuclei are a visible share of the counts: below that the ratio is the
    # counts' noise, not the nuclei.
    if nuclei_mu1 <= 1e-3 * total_mu1 and nuclei_mu1_measured <= 1e-3 * total_mu1:
        return est
    ln_ratio = math.log(max(nuclei_mu1_measured, 1e-6 * total_mu1) / max(nuclei_mu1, 1e-6 * total_mu1))
    alpha = 1.0 - math.exp(-dt / settings.nucleation_time_s)
    ln_b = _clip(est.ln_nucleation_correction + alpha * ln_ratio, settings.max_ln_correction)
    scale = math.exp(_clip(alpha * ln_ratio, 1.0))
    nuclei = tuple(v * scale for v in est.nuclei)
    return replace(est, nuclei=nuclei, ln_nucleation_correction=ln_b)


def _bounded(moments: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) if math.isfinite(v) and v > 0 else 0.0 for v in moments)


def _clip(x: float, bound: float) -> float:
    return float(min(max(x, -bound), bound))
