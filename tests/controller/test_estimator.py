"""The population estimator on a simulated batch (synthetic): the mass balance closes, injected
growth and nucleation mismatches are recovered, states stay bounded, the estimate persists."""

from __future__ import annotations

import dataclasses
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


def run(cfg, ts, laws, settings=EstimatorSettings(), imaging: bool = False) -> PopulationEstimate:
    """The estimator over a simulated batch from the recipe's seeding on; with ``imaging`` it
    also gets the imaging probe's smoothed mean size and smallest-bin fraction."""
    sc = cfg.scenario
    water = sc.reactor.water_mass_kg
    seed_mass = sc.seeding.mass_g / 1000.0 / water  # the recipe's charge: what the agent is told
    est, history = None, []
    for row in ts.itertuples():
        if row.batch_state != 1 or row.plant_time_s < sc.seeding.at_min * 60.0:
            continue
        extra = {}
        if imaging:
            history.append((row.plant_time_s, row.image_mean_size_um, math.nan))
            extra = {"image_fines_fraction": row.image_size_bin1_number_fraction,
                     "image_size_um": math.nan if est is None else estimator.smoothed_image_size_um(
                         history, row.plant_time_s, est.seeded_at_s + settings.image_settle_s)}
        m = Measurement(row.plant_time_s, row.reactor_temperature_c, row.concentration_g_per_kg,
                        float(MATERIAL.solubility_g_per_kg(row.reactor_temperature_c)),
                        fbrm_total_per_s=row.fbrm_counts_total_per_s, **extra)
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
    true_mass = result.summary["crystal_mass_kg"] / cfg.scenario.reactor.water_mass_kg  # seeds included
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


def test_the_concentration_carried_over_the_analyser_delay_is_nearer_the_solution_now(batch):
    # The analyser reads the solution of a delay ago; under cooling the crystals have taken up
    # solute since. Carried over the delay by its own trend, the reading lands on the simulator's
    # true concentration at the same time, and scatters less (synthetic batch). The delay is the
    # series' own: its readings' lag behind the truth on the cooling ramp (the offline series
    # samples every 30 s, which shortens the analyser's filter lag against the served plant's).
    cfg, result = batch
    ts = result.timeseries
    t = ts.plant_time_s.to_numpy()
    reading, truth = ts.concentration_g_per_kg.to_numpy(), ts.true_concentration_g_per_kg.to_numpy()
    ramp = (t > 40 * 60) & (t < 165 * 60)
    delay_s = float(np.mean((reading - truth)[ramp]) / np.mean(-np.gradient(truth, t)[ramp]))
    assert 20.0 < delay_s < 120.0
    raw_error, carried_error = [], []
    for k in np.flatnonzero(ramp):
        carried = estimator.carried_over_delay(list(zip(t[: k + 1], reading[: k + 1])), t[k], delay_s)
        raw_error.append(reading[k] - truth[k])
        carried_error.append(carried - truth[k])
    assert np.mean(raw_error) > 0.2  # the reading stands above the solution now
    assert abs(np.mean(carried_error)) < 0.3 * np.mean(raw_error)
    assert np.std(carried_error) < np.std(raw_error)


def test_the_concentration_carried_by_the_estimate_s_uptake_is_nearer_the_solution_now(batch):
    # The same, carried by the estimate's uptake (3 G mu_2 with the model's growth) instead of
    # the reading's trend: the uptake matches what the solution lost.
    cfg, result = batch
    ts = result.timeseries
    laws = true_laws(cfg, ts)
    sc = cfg.scenario
    t = ts.plant_time_s.to_numpy()
    ramp = (t > 40 * 60) & (t < 165 * 60)
    truth = ts.true_concentration_g_per_kg.to_numpy()
    delay_s = float(np.mean((ts.concentration_g_per_kg.to_numpy() - truth)[ramp]) / np.mean(-np.gradient(truth, t)[ramp]))
    seed_mass = sc.seeding.mass_g / 1000.0 / sc.reactor.water_mass_kg
    facts = estimator.ProcessFacts(MATERIAL, seed_moments(seed_mass, sc.seeding.mean_size_um, sc.seeding.std_size_um,
                                                          MATERIAL),
                                   seed_mass, seed_at_min=sc.seeding.at_min, solvent_mass_kg=sc.reactor.water_mass_kg,
                                   concentration_delay_s=delay_s)
    est, raw_error, carried_error, state = None, [], [], None
    for k, row in enumerate(ts.itertuples()):
        if row.batch_state != 1 or row.plant_time_s < sc.seeding.at_min * 60.0:
            continue
        m = Measurement(row.plant_time_s, row.reactor_temperature_c, row.concentration_g_per_kg,
                        float(MATERIAL.solubility_g_per_kg(row.reactor_temperature_c)))
        if est is None:
            est = estimator.seed(m.time_s, facts.seed_moments, seed_mass, m.solute_g_per_kg_water)
            continue
        est = estimator.step(est, m, laws, MATERIAL.mass_per_um3_kg)
        state = estimator.PlantState(row.plant_time_s, temperature_c=row.reactor_temperature_c,
                                     concentration_g_per_kg=row.concentration_g_per_kg,
                                     aligned_temperature_c=row.reactor_temperature_c, sigma=m.sigma, population=est)
        carried = estimator.concentration_now_g_per_kg(state, facts, laws)
        assert carried <= row.concentration_g_per_kg
        if ramp[k]:
            raw_error.append(row.concentration_g_per_kg - row.true_concentration_g_per_kg)
            carried_error.append(carried - row.true_concentration_g_per_kg)
    assert len(raw_error) > 100 and np.mean(raw_error) > 0.2
    assert abs(np.mean(carried_error)) < 0.3 * np.mean(raw_error)
    without = estimator.PlantState(0.0, concentration_g_per_kg=400.0)
    assert estimator.concentration_now_g_per_kg(without, facts, laws) == 400.0  # no population: the reading
    no_delay = dataclasses.replace(facts, concentration_delay_s=0.0)
    assert estimator.concentration_now_g_per_kg(state, no_delay, laws) == state.concentration_g_per_kg


def test_a_reading_carried_over_its_delay_follows_its_line_and_needs_enough_of_it():
    line = [(60.0 * k, 400.0 - 0.5 * k) for k in range(10)]  # -0.5 per minute
    assert estimator.carried_over_delay(line, 540.0, 90.0) == pytest.approx(400.0 - 0.5 * 9 - 0.75)
    assert estimator.carried_over_delay(line, 540.0, 0.0) == pytest.approx(400.0 - 0.5 * 9)
    assert math.isnan(estimator.carried_over_delay(line[-3:], 540.0, 90.0))  # too few readings
    noisy = [(p[0], math.nan if k % 2 else p[1]) for k, p in enumerate(line + [(600.0, 397.0), (660.0, 394.5)])]
    assert math.isfinite(estimator.carried_over_delay(noisy, 660.0, 90.0, window_s=600.0, min_points=4))  # NaN readings skipped


def test_an_injected_nucleation_mismatch_is_corrected_from_fbrm(batch):
    cfg, result = batch
    laws = true_laws(cfg, result.timeseries)
    wrong = Laws(laws.growth, laws.nucleation + [[2.0, 0, 0]])  # B x100
    est = run(cfg, result.timeseries, wrong)
    assert math.isfinite(est.fbrm_counts_per_mu1) and est.calibration_samples > 3
    assert est.ln_nucleation_correction < -math.log(10.0)  # at least one of the two decades taken back
    uncorrected = run(cfg, result.timeseries, wrong, EstimatorSettings(nucleation_time_s=1e12))
    assert est.nuclei[3] < 0.5 * uncorrected.nuclei[3]


@pytest.mark.parametrize("offset", [-0.3, 0.0, 0.3])
def test_a_seed_charge_off_its_sheet_is_estimated_from_how_far_the_seeds_grew(offset):
    """SYNTHETIC: the plant charges (1 + offset) of the recipe's seed; the estimate starts from the
    recipe's and finds the plant's within 15 % (the recipe's batch: 0.79, 1.08, 1.34 measured),
    and its crystal mass still closes the balance."""
    from conf.schema import load_config
    from plant_sim.simulate import simulate

    cfg = load_config(["simulate.output_interval_s=30", f"scenario.seed_mass_rel_offset={offset}"])
    result = simulate(cfg, progress=False)
    ts = result.timeseries
    est = run(cfg, ts, true_laws(cfg, ts), imaging=True)
    assert math.exp(est.ln_seed_correction) == pytest.approx(1.0 + offset, rel=0.15)
    true_mass = result.summary["crystal_mass_kg"] / cfg.scenario.reactor.water_mass_kg  # seeds included
    summary = est.summary(MATERIAL.mass_per_um3_kg)
    assert summary["estimated_crystal_kg_per_kg"] == pytest.approx(true_mass, rel=0.03)
    assert summary["estimated_d43_um"] == pytest.approx(result.summary["d43_um"], rel=0.05)
    # without the probe's sizes the charge stays the recipe's
    assert run(cfg, ts, true_laws(cfg, ts)).ln_seed_correction == 0.0


def test_the_seed_charge_is_not_estimated_once_crystals_are_born_in_the_probe_s_view():
    seeds = seed_moments(0.002, 100.0, 20.0, MATERIAL)
    est = estimator.seed(0.0, seeds, 0.002, 430.0)
    laws = Laws(np.array([[math.log(2.0), 1.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    fines = iter([0.2, 0.1, 0.05] + [0.2] * 100)  # the seeds leave the smallest bin, then nuclei fill it
    for k in range(1, 40):
        # the probe says the crystals hardly grow: many more seeds than the recipe's, if they were the seeds
        m = Measurement(60.0 * k, 40.0, 430.0 - 0.5 * k, 400.0, image_size_um=110.0 + 0.1 * k,
                        image_fines_fraction=next(fines))
        est = estimator.step(est, m, laws, MATERIAL.mass_per_um3_kg)
    assert est.ln_seed_correction == 0.0 and est.image_fines_floor == pytest.approx(0.05)


def test_an_estimate_saved_before_the_seed_charge_was_estimated_still_loads():
    est = estimator.seed(10.0, seed_moments(0.002, 100.0, 20.0, MATERIAL), 0.002, 430.0)
    old = {k: v for k, v in est.to_dict().items()
           if k not in ("ln_seed_correction", "image_reference_um", "image_reference_seed_um", "seed_start_mean_um",
                        "image_fines_floor")}
    loaded = PopulationEstimate.from_dict(old)
    assert loaded.ln_seed_correction == 0.0 and math.isnan(loaded.seed_start_mean_um)


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


# ----------------------------------------------------------------------------- the plant state
def _facts(delay_s: float = 0.0) -> estimator.ProcessFacts:
    mass = 0.04 / 15.0
    return estimator.ProcessFacts(MATERIAL, seed_moments(mass, 100.0, 20.0, MATERIAL), mass, seed_at_min=12.0,
                                  solvent_mass_kg=15.0, concentration_delay_s=delay_s,
                                  antisolvent_low_flow_cutoff_kg_per_min=0.01)


def _view(t_s: float, batch_min: float | None, state: float = 1.0, **values: float) -> estimator.PlantView:
    base = {"batch_state": state, "reactor_temperature_c": 45.0, "concentration_g_per_kg": 420.0} | values
    return estimator.PlantView(t_s, None if batch_min is None else batch_min * 60.0, base,
                               {k: math.isfinite(v) for k, v in base.items()})


def _run(state, start_s: float, minutes, facts, **values):
    for m in minutes:
        state = estimator.estimate(state, _view(start_s + m * 60.0, m, **values), None, facts)
    return state


def test_the_state_seeds_at_the_recipe_time_and_gives_sigma_on_the_aligned_temperature():
    facts = _facts(delay_s=120.0)
    state = _run(None, 1000.0, [10.0, 11.0], facts)
    assert state.population is None and state.executing and state.batch_start_s == state.batch_id_s == 1000.0
    state = _run(state, 1000.0, [12.0], facts)
    assert state.population is not None and state.population.seeded_at_s == 1000.0 + 12.0 * 60.0
    # a falling temperature: the analyser's sample saw the reactor two minutes ago
    for k, temperature in enumerate((44.0, 43.0, 42.0)):
        state = estimator.estimate(state, _view(1000.0 + (13.0 + k) * 60.0, 13.0 + k, reactor_temperature_c=temperature),
                                   None, facts)
    assert state.aligned_temperature_c == pytest.approx(44.0)
    assert state.sigma == pytest.approx(math.log(420.0 / float(MATERIAL.solubility_g_per_kg(44.0))))
    assert state.data_ok and state.summary()["sigma"] == state.sigma


def test_the_mass_balance_is_anchored_on_the_charge_s_readings_before_seeding_not_one():
    """A closed batch's solution does not change before the seeds go in: the solute the mass
    balance starts from is the mean of the analyser's readings over ``charge_window_s`` before,
    not the one reading at seeding (its noise would stay in every yield and size after it)."""
    facts = _facts()
    state = None
    # the charge at 420 g/kg, read +-0.5 about it; the reading at seeding is a high one
    for k, minutes in enumerate([7.5 + 0.5 * j for j in range(10)]):
        noise = 0.5 if k % 2 == 1 else -0.5
        state = estimator.estimate(state, _view(1000.0 + minutes * 60.0, minutes, concentration_g_per_kg=420.0 + noise),
                                   None, facts)
    assert state.population is not None and state.population.seeded_at_s == 1000.0 + 12.0 * 60.0
    # the 10 readings of the window's 5 minutes, the last one 420.5
    assert state.population.seed_solute_g_per_kg_water == pytest.approx(420.0)
    assert len(state.charge_history) == 10 and state.charge_history[-1][1] == 420.5
    # readings older than the window (12 min earlier, a solution still dissolving) are not in it
    early = estimator.estimate(None, _view(1000.0, 0.0, concentration_g_per_kg=380.0), None, facts)
    later = estimator.estimate(early, _view(1000.0 + 12.0 * 60.0, 12.0), None, facts)
    assert later.population.seed_solute_g_per_kg_water == pytest.approx(420.0)
    # a new batch starts its own charge
    other = estimator.estimate(state, _view(90_000.0, 1.0, concentration_g_per_kg=300.0), None, facts)
    assert other.population is None and other.charge_history == ((90_000.0, 300.0),)


def test_held_freezes_the_population_and_the_totaliser_and_idle_ends_the_batch():
    facts = _facts()
    state = _run(None, 1000.0, [12.0 + k for k in range(6)], facts, antisolvent_flow_kg_per_min=0.5)
    assert state.antisolvent_per_water == pytest.approx(0.5 * 5.0 / 15.0)
    frozen, total = state.population, state.antisolvent_per_water
    for k in range(60):  # an hour held, the pump still reading a flow
        state = estimator.estimate(state, _view(1000.0 + (18.0 + k) * 60.0, None, state=2.0,
                                                antisolvent_flow_kg_per_min=0.5, reactor_temperature_c=40.0), None, facts)
    assert state.held and not state.executing and state.population is frozen and state.antisolvent_per_water == total
    assert state.temperature_c == 40.0 and math.isfinite(state.sigma)  # the measured part stays current
    resumed = estimator.estimate(state, _view(1000.0 + 78.0 * 60.0, 18.0, antisolvent_flow_kg_per_min=0.5), None, facts)
    assert resumed.antisolvent_per_water == total  # the totaliser's clock restarted on resume: nothing fed while held
    assert resumed.population.seeded_at_s == frozen.seeded_at_s  # not seeded again
    assert resumed.batch_id_s == 1000.0 and resumed.batch_start_s == 1000.0 + 60 * 60.0  # held an hour
    idle = estimator.estimate(resumed, _view(1000.0 + 80.0 * 60.0, None, state=0.0), None, facts)
    assert idle.population is None and idle.antisolvent_per_water == 0.0 and idle.batch_start_s is None


def test_a_state_of_another_batch_is_not_carried_into_this_one():
    facts = _facts()
    old = _run(None, 1000.0, [12.0 + k for k in range(4)], facts)
    assert old.population is not None
    same = estimator.estimate(estimator.PlantState.from_dict(old.to_dict()), _view(1000.0 + 16.0 * 60.0, 16.0),
                              None, facts)
    assert same.population.seeded_at_s == old.population.seeded_at_s  # restored within the batch
    other = estimator.estimate(old, _view(50_000.0, 5.0), None, facts)  # another start
    assert other.population is None and other.batch_start_s == other.batch_id_s == 50_000.0 - 300.0
    # a restarted plant whose clock starts over: a batch at the same start, but the saved state
    # runs ahead of the plant clock
    ahead = estimator.estimate(old, _view(1000.0 + 5.0 * 60.0, 5.0), None, facts)
    assert ahead.population is None


def test_the_fbrm_counts_are_read_back_to_the_analyser_s_sample_before_they_calibrate():
    """The population follows the mass balance of the analyser's sample, a delay old: the counts it
    is compared with are read back by the same delay, so those of the clear solution (here still
    seen two minutes after the seeds went in) never calibrate the probe; a probe that is out now
    gives nothing, not its history."""
    facts = _facts(delay_s=120.0)
    state = None
    for m in (10.0, 11.0, 12.0, 13.0):  # seeded at 12: the counts jump to 1000 then
        state = estimator.estimate(state, _view(1000.0 + m * 60.0, m, fbrm_counts_total_per_s=0.0 if m < 12 else 1000.0),
                                   None, facts)
    assert state.population is not None and state.population.calibration_samples == 0
    for m in (14.0, 15.0):  # read back: 12 and 13 min, the second a settled minute after seeding
        state = estimator.estimate(state, _view(1000.0 + m * 60.0, m, fbrm_counts_total_per_s=1000.0), None, facts)
    est = state.population
    assert est.calibration_samples == 1
    assert est.fbrm_counts_per_mu1 == pytest.approx(1000.0 / est.seeds[1], rel=0.05)
    out = estimator.estimate(state, _view(1000.0 + 16.0 * 60.0, 16.0, fbrm_counts_total_per_s=math.nan), None, facts)
    assert out.population.calibration_samples == 1


def test_bad_data_does_not_move_the_population_and_no_facts_give_the_measured_part_only():
    facts = _facts()
    state = _run(None, 1000.0, [12.0, 13.0], facts)
    bad = estimator.estimate(state, _view(1000.0 + 14.0 * 60.0, 14.0, concentration_g_per_kg=math.nan), None, facts)
    assert not bad.data_ok and bad.population is state.population and math.isnan(bad.sigma)
    bare = estimator.estimate(None, _view(1000.0, 13.0), None, None)
    assert bare.executing and bare.population is None and math.isnan(bare.sigma) and bare.temperature_c == 45.0


def test_the_alignment_interpolates_and_ignores_what_does_not_advance():
    history, value = estimator.aligned((), 0.0, 10.0, 60.0)
    assert value == 10.0  # nothing older yet: the oldest stands in
    history, _ = estimator.aligned(history, 30.0, 13.0, 60.0)
    history, value = estimator.aligned(history, 90.0, 19.0, 60.0)
    assert value == pytest.approx(13.0)
    history2, value = estimator.aligned(history, 90.0, math.nan, 60.0)
    assert history2 == history and value == pytest.approx(13.0)
    assert estimator.aligned((), 0.0, math.nan, 0.0) == ((), math.nan) or math.isnan(estimator.aligned((), 0.0, math.nan, 0.0)[1])


def test_in_an_analyser_outage_the_probes_size_trend_keeps_the_population_growing(batch):
    """Concentration lost for 40 min of strong growth: the population grows by the imaging and
    FBRM size trend instead of waiting (measured against the same batch with the analyser on)."""
    from controller.settings import AgentSettings

    cfg, result = batch
    ts = result.timeseries
    laws = true_laws(cfg, ts)
    sc = cfg.scenario
    mass = sc.seeding.mass_g / 1000.0 / sc.reactor.water_mass_kg
    edges = tuple(AgentSettings().fbrm_bin_edges_um)
    bins = [f"fbrm_counts_bin{k}_per_s" for k in range(1, len(edges))]
    start_s = float(ts.plant_time_s[ts.batch_state == 1].iloc[0]) - 30.0
    outage = (2400.0 + start_s, 4800.0 + start_s)

    def run_state(probes: bool, lost: bool):
        facts = estimator.ProcessFacts(MATERIAL, seed_moments(mass, sc.seeding.mean_size_um, sc.seeding.std_size_um,
                                                              MATERIAL), mass, sc.seeding.at_min,
                                       sc.reactor.water_mass_kg, fbrm_bin_edges_um=edges if probes else ())
        state = None
        for row in ts.itertuples():
            if row.plant_time_s > outage[1]:
                break
            values = {"batch_state": float(row.batch_state), "reactor_temperature_c": row.reactor_temperature_c,
                      "concentration_g_per_kg": row.concentration_g_per_kg,
                      "image_mean_size_um": row.image_mean_size_um if probes else math.nan,
                      **{b: getattr(row, b) for b in bins}}
            if lost and outage[0] <= row.plant_time_s:
                values["concentration_g_per_kg"] = math.nan
            batch_s = row.plant_time_s - start_s if row.batch_state == 1 else None
            view = estimator.PlantView(row.plant_time_s, batch_s, values, {k: math.isfinite(v) for k, v in values.items()})
            state = estimator.estimate(state, view, laws, facts)
        return state

    def d43(state):
        return state.population.summary(MATERIAL.mass_per_um3_kg)["estimated_d43_um"]

    reference, waited, trended = run_state(True, False), run_state(False, True), run_state(True, True)
    assert math.isfinite(trended.growth_trend_um_per_min) and trended.growth_trend_um_per_min > 0
    assert math.isnan(waited.growth_trend_um_per_min)
    grown = d43(reference) - d43(waited)
    assert grown > 20.0  # the outage is long enough to matter
    assert abs(d43(trended) - d43(reference)) < 0.5 * grown  # the trend takes back most of what waiting lost


def test_the_size_trend_is_a_least_squares_slope_and_needs_enough_points():
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 900.0, 10.0)
    points = list(zip(t, 100.0 + 0.5 * t / 60.0 + rng.normal(0.0, 0.5, t.size)))
    assert estimator.size_trend_per_min(points) == pytest.approx(0.5, rel=0.1)
    assert math.isnan(estimator.size_trend_per_min(points[:3]))  # too few
    assert math.isnan(estimator.size_trend_per_min([(0.0, 1.0), (10.0, 2.0), (20.0, 3.0), (30.0, 4.0)]))  # too short
    assert math.isnan(estimator.size_trend_per_min([(s, math.nan) for s in t]))
    # relative trends: G = L d ln(size)/dt, whatever the probe's factor on size
    history = [(s, 2.0 * (100.0 + s / 60.0), 0.7 * (100.0 + s / 60.0)) for s in t]
    assert estimator.growth_from_size_trends(history, 105.0) == pytest.approx(1.0, rel=0.1)
    assert math.isnan(estimator.growth_from_size_trends(history, math.nan))


def _calibrated(scatter_rel: float, samples: int = 10) -> PopulationEstimate:
    """An estimate 20 min after seeding, its FBRM calibrated on ``samples`` readings scattering by
    ``scatter_rel``, with few nuclei (0.1 % of mu_1)."""
    seeds = seed_moments(0.002, 150.0, 20.0, MATERIAL)
    est = estimator.seed(0.0, seeds, 0.002, 430.0)
    k = 2.0
    m2 = (scatter_rel * k) ** 2 * (samples - 1)
    nuclei = (1.0, 1e-3 * seeds[1], 0.0, 0.0, 0.0, 0.0)
    return dataclasses.replace(est, time_s=1200.0, nuclei=nuclei, fbrm_counts_per_mu1=k, calibration_samples=samples,
                               fbrm_calibration_m2=m2)


def test_a_count_excess_within_the_calibration_s_scatter_hardly_moves_the_nucleation_correction():
    """The nuclei's mu_1 is the counts less the seeds': an excess of a share of the counts that the
    calibration's own scatter explains moves the correction far less than its raw ratio would,
    one far beyond it by at least half as much."""
    settings = EstimatorSettings()
    dt = 30.0
    alpha = 1.0 - math.exp(-dt / settings.nucleation_time_s)
    for scatter, excess_rel, at_most in ((0.03, 0.005, 0.3), (0.03, 0.2, 1.0), (0.0, 0.005, 1.0)):
        est = _calibrated(scatter)
        total_mu1 = float(est.total()[1])
        counts = est.fbrm_counts_per_mu1 * (est.seeds[1] + est.nuclei[1] + excess_rel * total_mu1)
        m = Measurement(1230.0, 40.0, 430.0, 420.0, fbrm_total_per_s=counts)
        out = estimator._correct_nucleation(est, m, dt, settings)
        raw = math.log((est.nuclei[1] + excess_rel * total_mu1) / est.nuclei[1])
        moved = out.ln_nucleation_correction / (alpha * raw)
        assert 0.0 < moved <= at_most + 1e-9, (scatter, excess_rel, moved)
        if at_most == 1.0:
            assert moved > 0.5  # a clear excess (or a calibration without scatter): at least half of it


def test_counts_read_back_to_before_the_seeds_settled_neither_calibrate_nor_correct():
    """The counts are read back over the analyser's delay: those of the clear solution, or of the
    first seconds of the charge, are left out of the calibration."""
    seeds = seed_moments(0.002, 150.0, 20.0, MATERIAL)
    est = estimator.seed(600.0, seeds, 0.002, 430.0)
    settings = EstimatorSettings()
    for counts_time_s in (500.0, 600.0 + 0.5 * settings.fbrm_settle_s):
        m = Measurement(690.0, 40.0, 430.0, 420.0, fbrm_total_per_s=3.0, fbrm_time_s=counts_time_s)
        assert estimator._correct_nucleation(est, m, 30.0, settings) == est
    m = Measurement(690.0 + settings.fbrm_settle_s, 40.0, 430.0, 420.0, fbrm_total_per_s=1e4,
                    fbrm_time_s=600.0 + settings.fbrm_settle_s)
    out = estimator._correct_nucleation(est, m, 30.0, settings)
    assert out.calibration_samples == 1 and out.fbrm_counts_per_mu1 == pytest.approx(1e4 / seeds[1])
