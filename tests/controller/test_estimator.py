"""The population estimator on a simulated batch (synthetic): the mass balance closes, injected
growth and nucleation mismatches are recovered, states stay bounded, the estimate persists."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from controller import estimator
from controller.estimator import EstimatorSettings, Measurement, PopulationEstimate
from controller.rollout import MaterialConstants, seed_moments

T_REF_K = 298.15
MATERIAL = MaterialConstants.for_material("KCl")


@dataclass(frozen=True)
class Laws:
    growth: np.ndarray
    nucleation: np.ndarray


@pytest.fixture(scope="module")
def batch():
    """The demo's seeded KCl batch, simulated offline at 30 s (sensor noise on)."""
    from conf.schema import load_config
    from plant_sim.simulate import simulate

    cfg = load_config(["simulate.output_interval_s=30"])
    result = simulate(cfg, progress=False)
    return cfg, result


def true_laws(cfg, ts) -> Laws:
    """Power laws fitted to the simulator's own G and B over the batch (what a perfect model gives)."""
    sigma = np.log(ts.true_concentration_g_per_kg / ts.true_solubility_g_per_kg)
    inv_t = 1.0 / T_REF_K - 1.0 / (ts.true_reactor_temperature_c + 273.15)
    water = cfg.scenario.reactor.water_mass_kg
    suspension = ts.true_crystal_mass_kg / water
    use = (sigma > 0.002) & (ts.true_growth_rate_m_per_s > 0) & (ts.true_nucleation_rate_per_kg_s > 0) & (suspension > 0)
    design = np.column_stack([np.ones(use.sum()), np.log(sigma[use]), inv_t[use]])
    ln_g = np.log(ts.true_growth_rate_m_per_s[use] * 1e6 * 60.0)
    growth = np.linalg.lstsq(design, ln_g, rcond=None)[0]
    design_b = np.column_stack([np.ones(use.sum()), np.log10(sigma[use]), inv_t[use]])
    log_b = np.log10(ts.true_nucleation_rate_per_kg_s[use] / (suspension[use] / 0.05))
    nucleation = np.linalg.lstsq(design_b, log_b, rcond=None)[0]
    return Laws(growth[None, :], nucleation[None, :])


def run(cfg, ts, laws, settings=EstimatorSettings()) -> PopulationEstimate:
    sc = cfg.scenario
    water = sc.reactor.water_mass_kg
    seed_mass = sc.seeding.mass_g / 1000.0 / water
    est = None
    for row in ts.itertuples():
        if row.batch_state != 1 or row.plant_time_s < sc.seeding.at_min * 60.0:
            continue
        m = Measurement(row.plant_time_s, row.reactor_temperature_c, row.concentration_g_per_kg,
                        float(MATERIAL.solubility_g_per_kg(row.reactor_temperature_c)),
                        fbrm_total_per_s=row.fbrm_counts_total_per_s)
        if est is None:
            seeds = seed_moments(seed_mass, sc.seeding.mean_size_um, sc.seeding.std_size_um, MATERIAL)
            est = estimator.seed(m.time_s, seeds, seed_mass, m.solute_g_per_kg_water)
            continue
        est = estimator.step(est, m, laws, MATERIAL.mass_per_um3_kg, settings)
    return est


def test_the_crystal_mass_follows_the_mass_balance_whatever_the_model_says(batch):
    cfg, result = batch
    ts = result.timeseries
    laws = true_laws(cfg, ts)
    wrong = Laws(laws.growth + [[math.log(3.0), 0, 0]], laws.nucleation + [[2.0, 0, 0]])  # G x3, B x100
    water = cfg.scenario.reactor.water_mass_kg
    true_mass = result.summary["crystal_mass_kg"] / water + cfg.scenario.seeding.mass_g / 1000.0 / water
    for model in (laws, wrong):
        est = run(cfg, ts, model)
        summary = est.summary(MATERIAL.mass_per_um3_kg)
        assert summary["estimated_crystal_kg_per_kg"] == pytest.approx(true_mass, rel=0.03)
        assert summary["estimated_d43_um"] == pytest.approx(result.summary["d43_um"], rel=0.05)
        assert summary["estimated_fines"] < 0.05  # the plant's: 0.0009 (the old estimate said 0.46)


def test_an_injected_growth_mismatch_is_recovered_from_the_desupersaturation(batch):
    cfg, result = batch
    laws = true_laws(cfg, result.timeseries)
    for factor in (0.3, 3.0):
        wrong = Laws(laws.growth + [[math.log(factor), 0, 0]], laws.nucleation)
        est = run(cfg, result.timeseries, wrong)
        # the correction undoes the injected factor (within the fit of a power law to the plant's BCF)
        assert math.exp(est.ln_growth_correction) * factor == pytest.approx(1.0, rel=0.35)


def test_an_injected_nucleation_mismatch_is_corrected_from_fbrm(batch):
    cfg, result = batch
    laws = true_laws(cfg, result.timeseries)
    wrong = Laws(laws.growth, laws.nucleation + [[2.0, 0, 0]])  # B x100
    est = run(cfg, result.timeseries, wrong)
    assert math.isfinite(est.fbrm_counts_per_mu1) and est.calibration_samples > 3
    assert est.ln_nucleation_correction < -math.log(10.0)  # at least one of the two decades taken back
    uncorrected = run(cfg, result.timeseries, wrong, EstimatorSettings(nucleation_time_s=1e12))
    assert est.nuclei[3] < 0.5 * uncorrected.nuclei[3]


def test_nucleation_is_bounded_under_a_sustained_high_supersaturation():
    seeds = seed_moments(0.002, 100.0, 20.0, MATERIAL)
    est = estimator.seed(0.0, seeds, 0.002, 500.0)
    absurd = Laws(np.array([[0.0, 1.0, 0.0]]), np.array([[80.0, 8.0, 0.0]]))
    for k in range(1, 200):
        # no valid concentration: the model alone drives, at sigma ~0.4
        m = Measurement(60.0 * k, 30.0, math.nan, 350.0)
        est = estimator.step(est, m, absurd, MATERIAL.mass_per_um3_kg)
    assert all(math.isfinite(v) and v >= 0 for v in est.seeds + est.nuclei)
    assert est.nuclei[0] <= 10.0 ** EstimatorSettings().max_log10_nucleation_per_kg_s * 200 * 60.0
    assert est.solute_g_per_kg_water >= 0.0
    summary = est.summary(MATERIAL.mass_per_um3_kg)
    # the crystals cannot hold more solute than there was
    assert summary["estimated_crystal_kg_per_kg"] <= 0.002 + 0.5 + 1e-9


def test_the_estimate_round_trips_and_rejects_a_malformed_record():
    est = estimator.seed(10.0, seed_moments(0.002, 100.0, 20.0, MATERIAL), 0.002, 430.0)
    assert PopulationEstimate.from_dict(est.to_dict()) == est
    data = est.to_dict()
    for broken in ({**data, "seeds": [1.0, 2.0]}, {**data, "nuclei": [math.nan] * 6},
                   {k: v for k, v in data.items() if k != "time_s"}, {**data, "extra": 1}):
        with pytest.raises(ValueError):
            PopulationEstimate.from_dict(broken)


def test_a_step_back_in_time_or_of_zero_length_changes_nothing():
    est = estimator.seed(100.0, seed_moments(0.002, 100.0, 20.0, MATERIAL), 0.002, 430.0)
    m = Measurement(100.0, 40.0, 420.0, 400.0)
    assert estimator.step(est, m, None, MATERIAL.mass_per_um3_kg) is est
