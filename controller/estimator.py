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
3. **Growth from the probes' sizes** where there is no mass balance (the concentration analyser
   is out): the relative trend of the imaging mean size and of the FBRM mean chord is the
   crystals' (:func:`growth_from_size_trends`), and the step grows the population by it.
4. **Correct nucleation from FBRM.** Chord counts are proportional to sum N_i L_i, the first
   moment (plant_sim/sensors.py documents the probe: counts = k_s sum_i N_i L_i P_ij). The
   factor counts / mu_1 is calibrated while the seeds alone are in suspension (the first
   ``fbrm_calibration_s`` after seeding); afterwards the counts above what the seeds explain are
   the nuclei's mu_1, and their ratio to the estimated nuclei's mu_1 corrects B (filtered over
   ``nucleation_time_s``) and rescales the nuclei moments (at most a factor e per step).
5. **Estimate the seed charge** in the first ``seed_window_s`` after seeding: the imaging probe's
   mean size, relative to its first settled reading, says how far the seeds grew; the mass
   balance says how much mass they took up; the two give the number of seeds
   (:func:`_correct_seed_charge`), so a charge off its sheet is read neither as growth nor as
   nucleation.

States are bounded physically: moments finite and >= 0, mu_3 of the nuclei no more than the
crystal mass allows, corrections within +-``max_ln_correction``. Without a valid concentration
there is no supersaturation, so no model rate: the step grows the population by the probes' size
trend (births stop, corrections frozen) and the solute follows the consumption of the moments;
without a trend either the estimate waits.

The estimate is a frozen dataclass that serialises to JSON (:meth:`PopulationEstimate.to_dict`), so
the agent persists it per batch and an agent restarted mid-batch continues where it was.

**The plant state.** :func:`estimate` is the agent's whole state estimator, one pure step per
cycle: ``estimate(previous, view, laws, facts) -> PlantState``. From the cycle's validated signals
(:class:`PlantView`), the last state and the model's local laws it makes the frozen
:class:`PlantState` every strategy decides on: the batch (ISA-88 state, start, batch time), the
validated temperature and concentration, the reactor temperature the analyser's sample saw (its
dead time, :func:`aligned`), the solubility and the supersaturation from them, the antisolvent
totalised from the flowmeter, and the population above (seeded at the recipe's seeding time).
Held freezes what integrates (population, totaliser) while the measured part stays current; Idle,
Completed and Aborted end the batch's state; a state of another batch (another start) is not
carried into this one. What the process is, the estimator is told (:class:`ProcessFacts`).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Mapping

import numpy as np

from conf.contract import signals
from conf.contract.codes import BatchState
from controller.state import ChordStatistics, aligned, chord_statistics

__all__ = ["EstimatorSettings", "Measurement", "PlantState", "PlantView", "PopulationEstimate", "ProcessFacts",
           "aligned", "carried_over_delay", "concentration_now_g_per_kg", "crystal_mass_kg_per_kg", "estimate",
           "growth_from_size_trends", "seed", "size_trend_per_min", "smoothed_image_size_um", "step"]

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
        fbrm_settle_s: FBRM counts of the first seconds after seeding are left out (the counts,
            read back over the analyser's delay, are interpolated between the clear solution's
            and the suspension's there).
        min_sigma_for_growth: below this supersaturation the growth correction is not updated
            (G -> 0 and the ratio is noise).
        max_log10_nucleation_per_kg_s: cap on log10 B (per kg solvent per s).
        max_ln_correction: bound of each correction, ln units.
        suspension_ref_kg_per_kg: suspension density at which the nucleation law holds.
        max_step_s: longest step integrated at once (a longer gap is cut to this).
        seed_time_s: time constant of the seed-charge correction.
        seed_window_s: plant seconds after seeding over which the seed charge is estimated
            (the seeds are most of what the imaging probe sees then).
        min_relative_growth: the imaging size must have grown this share of the seeds' size
            before it says how far they grew (below it, the probe's noise would).
        image_settle_s: imaging readings in the first seconds after seeding are left out (the
            probe's view fills with the charge).
        max_image_fines_rise: the seed charge is no longer estimated once the number fraction in
            the imaging probe's smallest size bin rose this much above its lowest since seeding
            (seeds only leave that bin as they grow: what comes into it was born there).
        max_ln_seed_correction: bound of the seed-charge correction, ln units.
        charge_window_s: the solute the mass balance is anchored on when the seeds go in is the
            mean of the analyser's readings over this long before (a closed batch's solution
            does not change before there are crystals; one reading's noise, half a percent of
            the yield on the simulated ATR, stayed in every yield and size the balance gave).
    """

    mass_balance_time_s: float = 120.0
    growth_time_s: float = 600.0
    nucleation_time_s: float = 900.0
    fbrm_calibration_s: float = 300.0
    fbrm_settle_s: float = 60.0
    min_sigma_for_growth: float = 0.002
    max_log10_nucleation_per_kg_s: float = 9.0
    max_ln_correction: float = 4.0
    suspension_ref_kg_per_kg: float = 0.05
    max_step_s: float = 600.0
    seed_time_s: float = 300.0
    seed_window_s: float = 2400.0
    min_relative_growth: float = 0.1
    image_settle_s: float = 120.0
    max_image_fines_rise: float = 0.05
    max_ln_seed_correction: float = 0.7
    charge_window_s: float = 300.0

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
        fbrm_total_per_s: FBRM total chord count rate (NaN: no probe), as of ``fbrm_time_s``.
        fbrm_time_s: the plant time those counts are of (NaN: ``time_s``). :func:`estimate`
            reads the probe back by the concentration analyser's delay, the instant the mass
            balance, and with it the estimate's moments, is of.
        growth_trend_um_per_min: growth seen in the trend of the imaging and FBRM mean sizes
            (:func:`growth_from_size_trends`; NaN: none). Used where the mass balance is not
            (the concentration analyser is out).
        image_size_um: the imaging probe's mean size now, smoothed over its recent readings
            (:func:`smoothed_image_size_um`; NaN: none).
        image_fines_fraction: number fraction in the imaging probe's smallest size bin (NaN: none).
    """

    time_s: float
    temperature_c: float
    concentration_g_per_kg: float
    solubility_g_per_kg: float
    antisolvent_per_water: float = 0.0
    fbrm_total_per_s: float = math.nan
    growth_trend_um_per_min: float = math.nan
    image_size_um: float = math.nan
    image_fines_fraction: float = math.nan
    fbrm_time_s: float = math.nan

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
        fbrm_calibration_m2: their sum of squared deviations from the mean (Welford), counts per s
            per um squared: the counts' scatter.
        ln_seed_correction: the seed charge estimated against the recipe's, ln (the seed
            moments, the mass-balance anchor and the FBRM calibration are scaled by it).
        image_reference_um / image_reference_seed_um: the imaging size when it was first
            usable after seeding, and the seeds' estimated mean size then (NaN: not yet).
        seed_start_mean_um: the seeds' number-mean size as charged.
        image_fines_floor: the lowest number fraction in the imaging probe's smallest size bin
            since seeding (NaN: none seen).
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
    fbrm_calibration_m2: float = 0.0
    ln_seed_correction: float = 0.0
    image_reference_um: float = math.nan
    image_reference_seed_um: float = math.nan
    seed_start_mean_um: float = math.nan
    image_fines_floor: float = math.nan

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PopulationEstimate":
        """The estimate from :meth:`to_dict`'s output. Raises ValueError on anything malformed."""
        names = {f.name for f in fields(cls)}
        # a field added since the estimate was saved takes its default (an agent upgraded mid-batch)
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        if not required <= set(data) or not set(data) <= names:
            raise ValueError(f"estimate fields differ: missing {sorted(required - set(data))}, "
                             f"unknown {sorted(set(data) - names)}")
        out = {}
        for f in fields(cls):
            if f.name not in data:
                continue
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
                "seed_charge_correction": math.exp(self.ln_seed_correction),
                "growth_observed_um_per_min": self.growth_observed_um_per_min}


def crystal_mass_kg_per_kg(estimate: PopulationEstimate, solute_g_per_kg_water: float) -> float:
    """The crystal mass the mass balance gives for a measured solute (kg per kg water)."""
    return estimate.seed_mass_kg_per_kg + (estimate.seed_solute_g_per_kg_water - solute_g_per_kg_water) / 1000.0


def seed(time_s: float, seed_moments: tuple[float, ...], seed_mass_kg_per_kg: float,
         solute_g_per_kg_water: float) -> PopulationEstimate:
    """The estimate when the seeds go in (the solute measured then anchors the mass balance)."""
    return PopulationEstimate(time_s, tuple(float(v) for v in seed_moments), (0.0,) * N_MOMENTS,
                              float(solute_g_per_kg_water), float(seed_mass_kg_per_kg), float(solute_g_per_kg_water),
                              float(time_s), seed_start_mean_um=_mean_size(seed_moments))


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
    # Total mu_3 after growing by L is a cubic in L (the k = 3 row of _translate, plus the births'
    # B dt L^3 / 4); evaluated as such, the bisection costs microseconds, not 60 matrix products.
    m = np.asarray(est.seeds, dtype=float) + np.asarray(est.nuclei, dtype=float)
    c0, c1, c2, c3 = float(m[3]), 3.0 * float(m[2]), 3.0 * float(m[1]), float(m[0]) + births * dt_s / 4.0

    def mu3(length: float) -> float:
        return ((c3 * length + c2) * length + c1) * length + c0

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
    elif math.isfinite(m.growth_trend_um_per_min) and m.growth_trend_um_per_min >= 0:
        # No mass balance this step: the sizes' trend says how far the crystals grew.
        length = m.growth_trend_um_per_min / 60.0 * dt
        observed = m.growth_trend_um_per_min
        if g_model > 0 and sigma > settings.min_sigma_for_growth and length > 0:
            alpha = 1.0 - math.exp(-dt / settings.growth_time_s)
            ln_growth = ln_growth + alpha * (math.log(length / (g_model * dt)) - ln_growth)
    seeds, nuclei = _grown(est, length, births, dt)
    if measured:
        solute = m.solute_g_per_kg_water
    else:  # the model alone: the solute pays for what the moments grew
        grown_kg = mass_per_um3_kg * float((seeds[3] + nuclei[3]) - est.total()[3])
        solute = max(est.solute_g_per_kg_water - 1000.0 * grown_kg, 0.0)
    out = replace(est, time_s=m.time_s, seeds=_bounded(seeds), nuclei=_bounded(nuclei), solute_g_per_kg_water=solute,
                  ln_growth_correction=_clip(ln_growth, settings.max_ln_correction), growth_observed_um_per_min=observed)
    if measured:
        out = _correct_seed_charge(out, m, dt, settings)
    return _correct_nucleation(out, m, dt, settings)


def _mean_size(moments) -> float:
    return float(moments[1] / moments[0]) if moments[0] > 0 else math.nan


def _correct_seed_charge(est: PopulationEstimate, m: Measurement, dt: float, settings: EstimatorSettings
                         ) -> PopulationEstimate:
    """The seed charge from how far the seeds grew (a plant's charge is off its sheet by the
    lot's crystal content or the dosing; the recipe's is what the estimate starts from).

    The mass balance fixes the mass the crystals took up; shared by N seeds it grows each by a
    length that depends on N. The imaging probe sees how far they grew: its mean size relative to
    its first usable reading after seeding (a ratio, so the probe's projected-size factor drops
    out), times the seeds' estimated mean size then. With q(dL) the third moment of one seed grown
    by dL (the seeds' shape, translated), the mass per seed the estimate gives over the mass per
    seed the probe shows is the real number of seeds over the assumed:

        N_real / N = (q(dL_est) - q(0)) / (q(dL_seen) - q(0))

    An integrator filtered over ``seed_time_s`` drives that ratio to one while the seeds are most
    of what the probe sees (``seed_window_s``, from the end of the FBRM calibration, once they
    grew ``min_relative_growth`` of their size); the seed moments, the seed mass the balance is
    anchored on and the FBRM's counts per mu_1 are scaled together, so the mass balance and the
    counts stay consistent. Nuclei in the probe's view pull its mean down: the estimate then
    errs towards more seeds, the side on which the plan predicts the smaller product.
    """
    since = m.time_s - est.seeded_at_s
    seed_mean = _mean_size(est.seeds)
    fines = m.image_fines_fraction
    if math.isfinite(fines):
        floor = min(est.image_fines_floor, fines) if math.isfinite(est.image_fines_floor) else fines
        est = replace(est, image_fines_floor=floor)
        if fines - floor > settings.max_image_fines_rise:
            return est  # crystals born in the probe's view: its mean is no longer the seeds'
    if not (math.isfinite(m.image_size_um) and m.image_size_um > 0 and math.isfinite(seed_mean)):
        return est
    if not math.isfinite(est.image_reference_um):
        return replace(est, image_reference_um=m.image_size_um, image_reference_seed_um=seed_mean)
    if not settings.fbrm_calibration_s < since <= settings.seed_window_s:
        return est
    start_mean = est.seed_start_mean_um
    if not math.isfinite(start_mean):
        return est
    grown_est = seed_mean - start_mean
    grown_seen = est.image_reference_seed_um * m.image_size_um / est.image_reference_um - start_mean
    if not (grown_seen >= settings.min_relative_growth * start_mean and grown_est > 0):
        return est
    per_seed = np.asarray(est.seeds, dtype=float) / est.seeds[0]
    start = _translate(per_seed, -grown_est)  # one seed as charged
    gain_est = float(_translate(start, grown_est)[3] - start[3])
    gain_seen = float(_translate(start, grown_seen)[3] - start[3])
    alpha = 1.0 - math.exp(-dt / settings.seed_time_s)
    ln_seed = _clip(est.ln_seed_correction + alpha * math.log(gain_est / gain_seen), settings.max_ln_seed_correction)
    scale = math.exp(ln_seed - est.ln_seed_correction)
    counts = est.fbrm_counts_per_mu1 / scale if math.isfinite(est.fbrm_counts_per_mu1) else est.fbrm_counts_per_mu1
    return replace(est, seeds=tuple(v * scale for v in est.seeds), seed_mass_kg_per_kg=est.seed_mass_kg_per_kg * scale,
                   fbrm_counts_per_mu1=counts, fbrm_calibration_m2=est.fbrm_calibration_m2 / (scale * scale),
                   ln_seed_correction=ln_seed)


def _correct_nucleation(est: PopulationEstimate, m: Measurement, dt: float, settings: EstimatorSettings
                        ) -> PopulationEstimate:
    counts = m.fbrm_total_per_s
    if not (math.isfinite(counts) and counts > 0):
        return est
    total_mu1 = float(est.total()[1])
    counts_time_s = m.fbrm_time_s if math.isfinite(m.fbrm_time_s) else m.time_s
    if counts_time_s < est.seeded_at_s + settings.fbrm_settle_s:
        # Counts of the clear solution, or read back between it and the suspension (a fraction
        # of the charge): calibrated on them, every later count read high, as nuclei.
        return est
    if counts_time_s - est.seeded_at_s <= settings.fbrm_calibration_s:
        if est.seeds[1] <= 0:
            return est
        ratio = counts / float(est.seeds[1])  # seeds alone: nuclei are few and tiny yet
        n = est.calibration_samples
        if n == 0 or not math.isfinite(est.fbrm_counts_per_mu1):
            return replace(est, fbrm_counts_per_mu1=ratio, calibration_samples=1, fbrm_calibration_m2=0.0)
        # Welford: the mean and the scatter of the readings about it (the counts' own noise)
        mean = est.fbrm_counts_per_mu1 + (ratio - est.fbrm_counts_per_mu1) / (n + 1)
        m2 = est.fbrm_calibration_m2 + (ratio - est.fbrm_counts_per_mu1) * (ratio - mean)
        return replace(est, fbrm_counts_per_mu1=mean, calibration_samples=n + 1, fbrm_calibration_m2=m2)
    k = est.fbrm_counts_per_mu1
    if not (math.isfinite(k) and k > 0) or total_mu1 <= 0:
        return est
    nuclei_mu1_measured = max(counts / k - est.seeds[1], 0.0)
    nuclei_mu1 = est.nuclei[1]
    # Only where the nuclei are a visible share of the counts: below that the ratio is the
    # counts' noise, not the nuclei.
    if nuclei_mu1 <= 1e-3 * total_mu1 and nuclei_mu1_measured <= 1e-3 * total_mu1:
        return est
    # The nuclei's mu_1 is what the counts leave over the seeds', a small difference of large
    # numbers: a reading's noise and the calibration's own error, both a share of all counts,
    # are in it. Each side of the ratio carries that uncertainty, so a difference within it says
    # little (the ratio stays near 1) and a clear one is read in full: unshrunk, one noisy
    # stretch early in a KCl batch (nuclei under 1 % of mu_1, counts 3 % noise) drove the
    # correction to its bound e^4 where the plant's B was within 1.5x of the model's.
    uncertainty = _count_uncertainty_rel(est, dt, settings) * total_mu1
    ln_ratio = math.log(max(nuclei_mu1_measured + uncertainty, 1e-6 * total_mu1)
                        / max(nuclei_mu1 + uncertainty, 1e-6 * total_mu1))
    alpha = 1.0 - math.exp(-dt / settings.nucleation_time_s)
    ln_b = _clip(est.ln_nucleation_correction + alpha * ln_ratio, settings.max_ln_correction)
    scale = math.exp(_clip(alpha * ln_ratio, 1.0))
    nuclei = tuple(v * scale for v in est.nuclei)
    return replace(est, nuclei=nuclei, ln_nucleation_correction=ln_b)


def _count_uncertainty_rel(est: PopulationEstimate, dt: float, settings: EstimatorSettings) -> float:
    """The relative uncertainty of the mu_1 the FBRM counts say, as the nucleation correction
    sees it: the readings' scatter in the calibration (a share of the counts), averaged over the
    correction's time constant (``2 tau / dt`` readings), and the calibration mean's own
    standard error, which no averaging removes. 0 before two calibration readings."""
    n = est.calibration_samples
    k = est.fbrm_counts_per_mu1
    if n < 2 or not (math.isfinite(k) and k > 0):
        return 0.0
    scatter_rel = math.sqrt(max(est.fbrm_calibration_m2, 0.0) / (n - 1)) / k
    readings = max(2.0 * settings.nucleation_time_s / max(dt, 1e-9), 1.0)
    return scatter_rel * math.sqrt(1.0 / readings + 1.0 / n)


def _bounded(moments: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) if math.isfinite(v) and v > 0 else 0.0 for v in moments)


def _clip(x: float, bound: float) -> float:
    return float(min(max(x, -bound), bound))



# ----------------------------------------------------------------------------- the plant state
@dataclass(frozen=True)
class PlantView:
    """The validated signals of one cycle (controller.state validates them).

    Attributes:
        plant_time_s: plant time of the cycle.
        batch_time_s: plant seconds since the batch started executing (None: not executing).
        values: filtered value per signal (a signal that is not ok keeps its last good value
            here, so read through :meth:`value`); status tags as read (``batch_state``).
        ok: whether each signal passed validation this cycle.
    """

    plant_time_s: float
    batch_time_s: float | None
    values: Mapping[str, float]
    ok: Mapping[str, bool]

    def value(self, name: str) -> float:
        """The validated value, NaN when the signal is not ok or absent."""
        return float(self.values.get(name, math.nan)) if self.ok.get(name, False) else math.nan


@dataclass(frozen=True)
class ProcessFacts:
    """What the estimator is told of the process (the process definition, not measurements).

    Attributes:
        material: :class:`controller.rollout.MaterialConstants` (solubility C*(T, antisolvent) in
            g per kg solvent, crystal kg per um^3).
        seed_moments: moments mu_0..mu_5 of the seed charge, um^k per kg water (zeros: unseeded).
        seed_mass_kg_per_kg: seed mass per kg water.
        seed_at_min: batch time of seeding (the population estimate starts then).
        solvent_mass_kg: solvent charged (the antisolvent totaliser's basis).
        concentration_delay_s: how far the concentration analyser lags the reactor RTD.
        antisolvent_low_flow_cutoff_kg_per_min: flows below this are not totalised (meter noise).
        settings: how the population follows the measurements.
        same_batch_tolerance_s: a previous state whose batch started further from this one's
            start belongs to another batch.
        fbrm_bin_edges_um: the FBRM's chord bin edges (empty: its bins are not used).
        size_trend_window_s: the span of imaging and FBRM mean sizes a growth trend is fitted on.
        size_trend_sample_s: plant seconds between the sizes recorded for the trend.
    """

    material: object
    seed_moments: tuple[float, ...]
    seed_mass_kg_per_kg: float
    seed_at_min: float
    solvent_mass_kg: float
    concentration_delay_s: float = 0.0
    antisolvent_low_flow_cutoff_kg_per_min: float = 0.0
    settings: EstimatorSettings = field(default_factory=EstimatorSettings)
    same_batch_tolerance_s: float = 60.0
    fbrm_bin_edges_um: tuple[float, ...] = ()
    size_trend_window_s: float = 900.0
    size_trend_sample_s: float = 10.0

    def __post_init__(self) -> None:
        if not (self.size_trend_window_s > 0 and self.size_trend_sample_s >= 0):
            raise ValueError(f"size_trend_window_s must be > 0 and size_trend_sample_s >= 0, got "
                             f"{self.size_trend_window_s}, {self.size_trend_sample_s}")
        if len(self.seed_moments) != N_MOMENTS:
            raise ValueError(f"seed_moments needs {N_MOMENTS} moments, got {len(self.seed_moments)}")
        for name in ("seed_mass_kg_per_kg", "seed_at_min", "concentration_delay_s",
                     "antisolvent_low_flow_cutoff_kg_per_min", "same_batch_tolerance_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.solvent_mass_kg > 0:
            raise ValueError(f"solvent_mass_kg must be > 0, got {self.solvent_mass_kg}")

    @classmethod
    def from_recipe(cls, recipe, material, **kwargs) -> "ProcessFacts":
        """Facts from a batch recipe (``seed_mass_g``, ``seed_mean_size_um``, ``seed_std_size_um``,
        ``seed_at_min``, ``solvent_mass_kg``: :class:`controller.strategy.BatchRecipe`)."""
        from controller.rollout import seed_moments

        mass = recipe.seed_mass_g / 1000.0 / recipe.solvent_mass_kg
        moments = seed_moments(mass, recipe.seed_mean_size_um, recipe.seed_std_size_um, material)
        return cls(material, tuple(float(v) for v in moments), mass, float(recipe.seed_at_min),
                   float(recipe.solvent_mass_kg), **kwargs)


_IDLE, _HELD, _COMPLETED, _ABORTED = (float(BatchState.IDLE), float(BatchState.HELD), float(BatchState.COMPLETED),
                                      float(BatchState.ABORTED))


@dataclass(frozen=True)
class PlantState:
    """The plant as the agent estimates it at one cycle (module docstring; made by :func:`estimate`).

    Attributes:
        plant_time_s: plant time of the cycle.
        batch_time_s: plant seconds since the batch started executing (None: not executing).
        batch_state: ISA-88 batch state as read (NaN: unknown).
        batch_start_s: plant time the batch started, moved on by the time it was held (the phase
            timer stops while held): plant time minus batch time (None: no batch).
        batch_id_s: the batch's identity: its start as first seen (None: no batch).
        view: the cycle's validated signals.
        temperature_c / concentration_g_per_kg: validated reactor temperature and concentration
            (NaN: not valid this cycle).
        aligned_temperature_c: the reactor temperature the analyser's sample saw.
        solubility_g_per_kg: C* at that temperature and the antisolvent fed (per kg solvent).
        sigma: ln(C / C*) (NaN without valid data or material).
        antisolvent_per_water: antisolvent fed in this batch, kg per kg water.
        population: the population estimate (None: before seeding, or no batch).
        temperature_history: recent (plant time, reactor temperature) for the alignment.
        fbrm_history: recent (plant time, FBRM total counts per s), read back as of the
            analyser's sample (the nucleation correction compares them with the mass balance's
            moments, which are of that instant).
        antisolvent_clock_s: when the totaliser last counted (None: stopped).
        last_batch_time_s: the batch time last seen executing (None: none yet).
        size_history: recent (plant time, imaging mean size um, FBRM mean chord um), NaN where
            not valid.
        growth_trend_um_per_min: growth seen in the trend of those sizes (NaN: none).
        chords: the FBRM's chord statistics this cycle (None: no FBRM bins).
        charge_history: (plant time, solute g per kg water) read in the executing batch before
            seeding, over ``charge_window_s``: the mass balance's anchor.
    """

    plant_time_s: float
    batch_time_s: float | None = None
    batch_state: float = math.nan
    batch_start_s: float | None = None
    batch_id_s: float | None = None
    view: PlantView | None = None
    temperature_c: float = math.nan
    concentration_g_per_kg: float = math.nan
    aligned_temperature_c: float = math.nan
    solubility_g_per_kg: float = math.nan
    sigma: float = math.nan
    antisolvent_per_water: float = 0.0
    population: PopulationEstimate | None = None
    temperature_history: tuple[tuple[float, float], ...] = ()
    fbrm_history: tuple[tuple[float, float], ...] = ()
    antisolvent_clock_s: float | None = None
    last_batch_time_s: float | None = None
    size_history: tuple[tuple[float, float, float], ...] = ()
    growth_trend_um_per_min: float = math.nan
    chords: ChordStatistics | None = None
    charge_history: tuple[tuple[float, float], ...] = ()

    @property
    def executing(self) -> bool:
        return self.batch_time_s is not None

    @property
    def held(self) -> bool:
        return self.batch_state == _HELD

    @property
    def data_ok(self) -> bool:
        """Temperature and concentration are valid this cycle."""
        return math.isfinite(self.temperature_c) and math.isfinite(self.concentration_g_per_kg)

    def value(self, name: str) -> float:
        """A validated signal of the cycle (NaN when not ok)."""
        return self.view.value(name) if self.view is not None else math.nan

    def summary(self) -> dict[str, float]:
        """What the state says, for the decision log."""
        out = {"sigma": self.sigma, "solubility_g_per_kg": self.solubility_g_per_kg,
               "antisolvent_kg_per_kg_water": self.antisolvent_per_water,
               "growth_size_trend_um_per_min": self.growth_trend_um_per_min}
        if self.held:
            out["batch_held"] = 1.0
        return out

    def to_dict(self) -> dict:
        """What survives an agent restart within the batch (JSON-ready)."""
        return {"batch_start_s": self.batch_start_s, "batch_id_s": self.batch_id_s, "plant_time_s": self.plant_time_s,
                "antisolvent_per_water": self.antisolvent_per_water,
                "estimate": self.population.to_dict() if self.population is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PlantState":
        """The state :meth:`to_dict` saved. Raises ValueError (or KeyError, TypeError) on anything
        malformed."""
        start = data["batch_start_s"]
        batch_id = data.get("batch_id_s", start)
        population = data.get("estimate")
        anti = float(data["antisolvent_per_water"])
        time_s = float(data["plant_time_s"])
        if not (math.isfinite(anti) and anti >= 0 and math.isfinite(time_s)):
            raise ValueError("antisolvent_per_water and plant_time_s must be finite (antisolvent >= 0)")
        return cls(time_s, batch_start_s=float(start) if start is not None else None,
                   batch_id_s=float(batch_id) if batch_id is not None else None, antisolvent_per_water=anti,
                   population=PopulationEstimate.from_dict(population) if population is not None else None)


def estimate(previous: PlantState | None, view: PlantView, laws, facts: ProcessFacts | None) -> PlantState:
    """The plant state of this cycle (module docstring). Pure; never raises on data.

    Args:
        previous: last cycle's state, or one restored after a restart (:meth:`PlantState.from_dict`),
            or None.
        view: this cycle's validated signals.
        laws: the model's local laws (:class:`controller.kinetics_service.KineticsLaws`) or None
            (growth from the mass balance alone).
        facts: the process; None: the measured part only (no solubility, no population).
    """
    now = view.plant_time_s
    prev = previous if previous is not None else PlantState(now)
    code = view.value(signals.BATCH_STATE)
    temperature = view.value(signals.REACTOR_TEMPERATURE)
    concentration = view.value(signals.CONCENTRATION)
    delay = facts.concentration_delay_s if facts is not None else 0.0
    history, seen_c = aligned(prev.temperature_history, now, temperature, delay)
    # The estimate's moments follow the mass balance of the analyser's sample, a delay old; the
    # FBRM counts now. Compared unaligned, the seeds' growth over the delay (5 % of their first
    # moment early in a KCl batch) read as nuclei: the nucleation correction rose to e^3.4 at
    # 32 min where the plant's B was a thirtieth of what it then predicted.
    counts_now = view.value("fbrm_counts_total_per_s")
    fbrm_history, seen_counts = aligned(prev.fbrm_history, now, counts_now, delay)
    if not math.isfinite(counts_now):
        seen_counts = math.nan  # a probe that is out now says nothing (its history would stand in)
    state = replace(prev, plant_time_s=now, batch_time_s=view.batch_time_s, batch_state=code, view=view,
                    temperature_c=temperature, concentration_g_per_kg=concentration,
                    aligned_temperature_c=seen_c, temperature_history=history, fbrm_history=fbrm_history)
    if view.batch_time_s is None:
        if code == _HELD:
            # Held is a freeze: nothing integrates; the totaliser restarts its clock on resume.
            state = replace(state, antisolvent_clock_s=None)
        elif code in (_IDLE, _COMPLETED, _ABORTED) or not math.isfinite(code):
            state = replace(state, batch_start_s=None, batch_id_s=None, population=None, antisolvent_per_water=0.0,
                            antisolvent_clock_s=None, last_batch_time_s=None, charge_history=())
        return _with_sigma(state, facts)
    start = now - view.batch_time_s
    if not _same_batch(prev, start, view.batch_time_s, now, facts):
        state = replace(state, batch_id_s=start, population=None, antisolvent_per_water=0.0, antisolvent_clock_s=None,
                        charge_history=())
    # The start moves on by the time the batch was held (the phase timer stops while held).
    state = replace(state, batch_start_s=start, last_batch_time_s=view.batch_time_s)
    if facts is None:
        return _with_sigma(state, facts)
    state = _totalised(state, view, facts)
    state = _with_sigma(state, facts)
    state = _size_trend(state, view, facts)
    population = state.population
    if not state.data_ok:
        if population is None or not math.isfinite(state.growth_trend_um_per_min):
            return state  # nothing to advance it by: the estimate waits (its age shows in the log)
    elif population is None:
        solute = concentration * (1.0 + state.antisolvent_per_water)
        charge = tuple(p for p in state.charge_history if p[0] > now - facts.settings.charge_window_s) + ((now, solute),)
        state = replace(state, charge_history=charge)
        if view.batch_time_s / 60.0 >= facts.seed_at_min:
            population = seed(now, facts.seed_moments, facts.seed_mass_kg_per_kg, float(np.mean([v for _, v in charge])))
    if population is not None:
        m = Measurement(now, temperature, concentration, state.solubility_g_per_kg, state.antisolvent_per_water,
                        seen_counts, state.growth_trend_um_per_min,
                        smoothed_image_size_um(state.size_history, now,
                                               population.seeded_at_s + facts.settings.image_settle_s),
                        view.value(signals.IMAGE_SIZE_FRACTIONS[0]), fbrm_time_s=now - delay)
        population = step(population, m, laws, facts.material.mass_per_um3_kg, facts.settings)
    return replace(state, population=population)


def size_trend_per_min(points, min_points: int = 4, min_span_s: float = 120.0) -> float:
    """Least-squares slope of a signal over plant time (signal units per minute).

    Args:
        points: (plant time s, value) pairs; non-finite values are left out.
        min_points: fewest valid points a slope is fitted on.
        min_span_s: shortest time span a slope is fitted over (a slope over a few seconds is
            the probe's noise); points at one instant never give one.

    Returns:
        The slope, NaN with too few points or too short a span.
    """
    pts = np.array([(t, v) for t, v in points if math.isfinite(t) and math.isfinite(v)], dtype=float).reshape(-1, 2)
    if pts.shape[0] < min_points:
        return math.nan
    span = pts[:, 0].max() - pts[:, 0].min()
    if span < min_span_s or not span > 0:
        return math.nan
    t = pts[:, 0] - pts[:, 0].mean()
    return float(np.dot(t, pts[:, 1] - pts[:, 1].mean()) / np.dot(t, t) * 60.0)


def smoothed_image_size_um(history, now_s: float, since_s: float, window_s: float = 300.0,
                           min_points: int = 6, min_span_s: float = 60.0) -> float:
    """The imaging mean size at ``now_s``: a straight line through its readings of the last
    ``window_s`` (none before ``since_s``, the seed charge), evaluated now (the probe's noise
    averaged, the growth kept). NaN with too few readings.

    Args:
        history: (plant time s, imaging mean um, FBRM mean chord um), NaN where not valid.
    """
    pts = np.array([(t, v) for t, v, _ in history if t >= max(since_s, now_s - window_s) and math.isfinite(v)
                    and v > 0], dtype=float).reshape(-1, 2)
    if pts.shape[0] < min_points or pts[:, 0].max() - pts[:, 0].min() < min_span_s:
        return math.nan
    slope, intercept = np.polyfit(pts[:, 0] - now_s, pts[:, 1], 1)
    return float(intercept)


def growth_from_size_trends(history, mean_size_um: float) -> float:
    """Growth (um/min) from the trend of the imaging and FBRM mean sizes.

    A probe's mean size is proportional to the crystals' size (the imaging probe's projected
    size through a shape factor, the FBRM's mean chord through the chord-to-size ratio), so its
    relative trend is the crystals' (G = L d ln(size)/dt for the mean size L of the estimated
    population), whatever the factor. The mean of the probes that give one; NaN when none does.

    Args:
        history: (plant time s, imaging mean um, FBRM mean chord um), NaN where not valid.
        mean_size_um: number-mean size of the estimated population.
    """
    if not (math.isfinite(mean_size_um) and mean_size_um > 0):
        return math.nan
    rates = []
    for k in (1, 2):
        slope = size_trend_per_min([(p[0], math.log(p[k]) if p[k] > 0 else math.nan) for p in history])
        if math.isfinite(slope):
            rates.append(max(slope, 0.0) * mean_size_um)  # a mean that falls is nucleation, not dissolution
    return float(np.mean(rates)) if rates else math.nan


def _size_trend(state: PlantState, view: PlantView, facts: ProcessFacts) -> PlantState:
    """The imaging and FBRM mean sizes recorded, and the growth their trend shows."""
    chords, chord = None, math.nan
    if facts.fbrm_bin_edges_um:
        counts = [view.value(f"fbrm_counts_bin{k}_per_s") for k in range(1, len(facts.fbrm_bin_edges_um))]
        chords = chord_statistics(counts, facts.fbrm_bin_edges_um)  # a bin not valid counts as missing
        if all(math.isfinite(c) for c in counts):
            chord = chords.mean_size_um
    image = view.value(signals.IMAGE_MEAN_SIZE)
    now = view.plant_time_s
    history = tuple(p for p in state.size_history if p[0] > now - facts.size_trend_window_s)
    # One point per imaging update (10 s) is all a trend over minutes needs; every cycle of a
    # fast loop would only repeat held values and cost the loop its time.
    if not history or now >= history[-1][0] + facts.size_trend_sample_s:
        history = history + ((now, image, chord),)
    population = state.population
    mean = math.nan
    if population is not None and population.seeds[0] > 0:
        mean = population.seeds[1] / population.seeds[0]
    return replace(state, size_history=history, growth_trend_um_per_min=growth_from_size_trends(history, mean),
                   chords=chords)


def _same_batch(prev: PlantState, start_s: float, batch_time_s: float, now_s: float, facts: ProcessFacts | None) -> bool:
    """Whether ``prev`` is of the batch executing now (started ``start_s``, ``batch_time_s`` in).

    Followed cycle by cycle, a batch is the same as long as its time does not go back (Idle,
    Completed and Aborted end it in between; Held stops its timer, which moves the start on). A
    state restored after an agent restart (no view yet) is of this batch when the batch started
    at the same plant time and the state does not run ahead of the plant clock (a restarted
    plant's clock starts over, so its batches can start at the same plant time); an agent
    restarted after the batch was held in its absence starts the estimate afresh."""
    if prev.batch_start_s is None:
        return False
    tolerance_s = facts.same_batch_tolerance_s if facts is not None else 60.0
    if prev.population is not None and prev.population.time_s > now_s + 1e-6:
        return False
    if prev.view is None:
        return abs(prev.batch_start_s - start_s) <= tolerance_s
    return prev.last_batch_time_s is None or batch_time_s >= prev.last_batch_time_s - tolerance_s


def _totalised(state: PlantState, view: PlantView, facts: ProcessFacts) -> PlantState:
    """Antisolvent fed, totalised from the flowmeter above its low-flow cut-off. While the
    flowmeter is not valid nothing is added: the estimate then lags the plant, as the log shows."""
    last, now = state.antisolvent_clock_s, view.plant_time_s
    flow = view.value(signals.ANTISOLVENT_FLOW)
    anti = state.antisolvent_per_water
    if (last is not None and math.isfinite(flow) and now > last
            and flow >= facts.antisolvent_low_flow_cutoff_kg_per_min):
        anti += max(flow, 0.0) * min(now - last, 600.0) / 60.0 / facts.solvent_mass_kg
    return replace(state, antisolvent_per_water=anti, antisolvent_clock_s=now)


def concentration_now_g_per_kg(state: PlantState, facts: ProcessFacts | None, laws=None) -> float:
    """The measured concentration carried over the analyser's delay by the estimate's uptake:
    less 1000 rho k_v 3 G mu_2 per kg water and second over ``concentration_delay_s``, mu_2 the
    population estimate's and G its growth (the model's ``laws`` at the measured supersaturation
    with the estimate's growth correction; without laws the mass balance's last step). The
    reading as it is without a population estimate, a growth or a delay. g per kg solvent.
    (See :func:`carried_over_delay` for the reading's own trend, and why.)"""
    c = state.concentration_g_per_kg
    population = state.population
    if facts is None or population is None or not (math.isfinite(c) and facts.concentration_delay_s > 0):
        return c
    if laws is not None:
        g_model, _ = _kinetics(laws, state.aligned_temperature_c, state.sigma, population,
                               facts.material.mass_per_um3_kg, state.antisolvent_per_water, facts.settings)
        growth_um_per_s = g_model * math.exp(population.ln_growth_correction)
    else:
        growth_um_per_s = population.growth_observed_um_per_min / 60.0
    if not (math.isfinite(growth_um_per_s) and growth_um_per_s > 0):
        return c
    mu2 = float(population.seeds[2] + population.nuclei[2])
    uptake = 1000.0 * facts.material.mass_per_um3_kg * 3.0 * growth_um_per_s * mu2  # g per kg water per s
    return max(c - uptake * facts.concentration_delay_s / (1.0 + state.antisolvent_per_water), 0.0)


def carried_over_delay(points, now_s: float, delay_s: float, window_s: float = 300.0, min_points: int = 6,
                       min_span_s: float = 120.0) -> float:
    """A delayed signal's value now: the straight line through its readings of the last
    ``window_s`` (least squares, the noise averaged), carried ``delay_s`` past now (a reading now
    shows the process as it was ``delay_s`` ago). NaN with too few readings.

    Why, for the concentration analyser: under cooling its reading is the solution of a delay
    ago; paired with the reactor's temperature now it overstates the supersaturation by what the
    crystals took up since (measured on the nominal KCl batch: 91 s, ~0.003 in ln S at 0.3 K/min,
    a fifth of the metastable width). Its own trend needs no model (at low supersaturation the
    model's G ~ sigma^g turns the reading's noise into a wild uptake) but lags a change of pace
    (:func:`concentration_now_g_per_kg` carries it by the model's uptake instead).

    Args:
        points: (plant time s, reading), oldest first; non-finite readings are skipped.
    """
    pts = np.array([(t, v) for t, v in points if t >= now_s - window_s and math.isfinite(v)], dtype=float).reshape(-1, 2)
    if pts.shape[0] < min_points or pts[:, 0].max() - pts[:, 0].min() < min_span_s:
        return math.nan
    slope, intercept = np.polyfit(pts[:, 0] - now_s, pts[:, 1], 1)
    return float(intercept + slope * delay_s)


def _with_sigma(state: PlantState, facts: ProcessFacts | None) -> PlantState:
    """Solubility at the temperature the analyser saw, and sigma = ln(C / C*)."""
    csat = math.nan
    if facts is not None and math.isfinite(state.aligned_temperature_c):
        csat = float(facts.material.solubility_g_per_kg(state.aligned_temperature_c, state.antisolvent_per_water))
    c = state.concentration_g_per_kg
    sigma = math.log(c / csat) if math.isfinite(c) and c > 0 and math.isfinite(csat) and csat > 0 else math.nan
    return replace(state, solubility_g_per_kg=csat, sigma=sigma)
