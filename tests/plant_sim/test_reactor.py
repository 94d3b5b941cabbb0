"""Tests for plant_sim.reactor: kinetics adapter, balances, local PID, MSMPR.

The reactor is the KCl physics-chain plant of the default scenario. Checks are conservation
laws, steady states and limiting behaviour, not recorded trajectories.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from conf.contract.materials import get_material
from conf.contract.morphology import kinetic_wulff, volume_equivalent_growth_rate_m_per_s
from plant_sim.kinetics import facet_kinetics_for_material
from plant_sim.plant import build_reactor
from plant_sim.reactor import (
    I_ANTI,
    I_PID,
    I_SOLUTE,
    I_TJ,
    I_TR,
    I_WATER,
    Controls,
    Reactor,
    ReactorSettings,
    facet_rates_fn,
)
from plant_sim.scenarios import Scenario


@pytest.fixture(scope="module")
def reactor() -> Reactor:
    r, hkls = build_reactor(Scenario())
    assert len(hkls) == 3
    return r


@pytest.fixture()
def fresh_reactor() -> Reactor:
    """A reactor with no cached kinetics from earlier tests (advance caches the last state)."""
    return build_reactor(Scenario())[0]


@pytest.fixture(scope="module")
def kcl_facets():
    return facet_kinetics_for_material(get_material("KCl"))


def _temperature(r: Reactor, x: np.ndarray) -> float:
    return float(x[r.n + I_TR])


# --- kinetics adapter -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "t_c, sigma, ppm",
    [(25.0, 0.01, 0.0), (40.0, 0.05, 0.0), (30.0, 0.03, 20.0), (50.0, 0.2, 200.0), (35.0, -0.04, 0.0), (20.0, -0.3, 50.0)],
)
def test_scalar_path_matches_vectorised_reference(kcl_facets, t_c, sigma, ppm):
    fn = facet_rates_fn(kcl_facets)
    c_star = 370.0
    c = c_star * math.exp(sigma)
    m_t = 0.05
    rates = fn(t_c, c, c_star, ppm, m_t, 0.02)
    ref_family = kcl_facets.family_rates_m_per_s(t_c, sigma, ppm)
    np.testing.assert_allclose(rates.family_rates_m_per_s, ref_family, rtol=1e-10)
    ref_birth = float(kcl_facets.primary_nucleation_per_kg_s(t_c, sigma)) + float(
        kcl_facets.secondary_nucleation_per_kg_s(t_c, sigma, m_t)
    )
    if sigma <= 0:
        assert rates.nucleation_rate_per_kg_s == 0.0
        assert rates.growth_rate_m_per_s < 0.0
    else:
        assert rates.nucleation_rate_per_kg_s > 0.0
        assert rates.growth_rate_m_per_s > 0.0
    assert rates.nucleation_rate_per_kg_s == pytest.approx(ref_birth, rel=1e-9, abs=1e-300)
    # G from the kinetic Wulff habit: growing habit at sigma, or at sigma = 0.01 while dissolving.
    shape_rates = ref_family if sigma > 0 else kcl_facets.family_rates_m_per_s(t_c, 0.01, ppm)
    habit = kinetic_wulff(kcl_facets.hkls, shape_rates)
    ref_g = volume_equivalent_growth_rate_m_per_s(habit, ref_family)
    # the adapter caches habits keyed by rate ratios rounded to 3 decimals
    assert rates.growth_rate_m_per_s == pytest.approx(float(ref_g), rel=1e-2)
    assert rates.habit is not None


# --- mass balance ---------------------------------------------------------------------------


def test_seeds_charge_exact_mass(reactor):
    x = reactor.initial_state(50.0, 50.0)
    before = reactor.total_solute_kg(x)
    y = reactor.add_seeds(x, 80.0, 120.0, 25.0)
    assert reactor.crystal_mass_kg(y) == pytest.approx(0.080, rel=1e-9)
    assert reactor.total_solute_kg(y) - before == pytest.approx(0.080, rel=1e-9)
    assert np.all(y[: reactor.n] >= 0.0)
    np.testing.assert_array_equal(reactor.add_seeds(x, 0.0, 100.0, 20.0), x)


def test_closed_batch_conserves_solute(fresh_reactor):
    r = fresh_reactor
    x = r.add_seeds(r.initial_state(50.0, 50.0), 50.0, 100.0, 20.0)
    total0 = r.total_solute_kg(x)
    crystals0 = r.crystal_mass_kg(x)
    u = Controls(temperature_setpoint_c=38.0)
    for _ in range(12):
        x, step = r.advance(x, 300.0, u)
        assert abs(r.total_solute_kg(x) - total0) / total0 < 1e-9
        assert np.all(x[: r.n] >= 0.0)
    # something actually crystallised (not a trivial zero-rate conservation)
    assert r.crystal_mass_kg(x) > 3 * crystals0
    assert step.crystal_mass_kg == pytest.approx(r.crystal_mass_kg(x), rel=1e-12)
    assert step.concentration_g_per_kg == pytest.approx(1000 * x[r.n + I_SOLUTE] / 15.0, rel=1e-12)
    assert x[r.n + I_WATER] == 15.0 and x[r.n + I_ANTI] == 0.0


# --- temperature loop -----------------------------------------------------------------------


def _run_pid(r: Reactor, setpoint: float, duration_s: float, chunk_s: float = 30.0):
    x = r.initial_state(60.0, 30.0)  # undersaturated throughout: no crystals
    u = Controls(temperature_setpoint_c=setpoint)
    inlets = []
    for _ in range(int(duration_s / chunk_s)):
        x, step = r.advance(x, chunk_s, u)
        inlets.append(step.jacket_inlet_temperature_c)
    return x, np.array(inlets), step


def test_pid_settles_to_setpoint(fresh_reactor):
    r = fresh_reactor
    x, inlets, step = _run_pid(r, 50.0, 7200.0)
    assert abs(_temperature(r, x) - 50.0) < 0.1
    s = r.settings
    assert np.all(inlets >= s.jacket_inlet_min_c) and np.all(inlets <= s.jacket_inlet_max_c)
    # Steady state: the jacket must sit above the reactor to make up the ambient loss (T_amb = 20 C).
    assert float(x[r.n + I_TJ]) > 50.0
    q_loss = s.ambient_loss_w_per_k * (50.0 - s.ambient_temperature_c)
    assert float(x[r.n + I_TJ]) - _temperature(r, x) == pytest.approx(q_loss / s.heat_transfer_w_per_k, rel=0.05)
    assert step.crystal_mass_kg == 0.0


def test_pid_respects_clamp_and_still_settles():
    settings = dataclasses.replace(ReactorSettings(), jacket_inlet_min_c=45.0)
    r = build_reactor(Scenario(reactor=settings))[0]
    x, inlets, _ = _run_pid(r, 50.0, 3 * 3600.0)
    assert np.all(inlets >= 45.0 - 1e-12)
    assert np.any(inlets == 45.0)  # the clamp was active during the cool-down
    assert abs(_temperature(r, x) - 50.0) < 0.1  # anti-windup: no lasting overshoot


def test_the_sampled_pid_acts_on_the_measurement_and_holds_its_output(fresh_reactor):
    """A reading 2 K high: the loop puts the reading, not the reactor, on the setpoint."""
    r, s = fresh_reactor, fresh_reactor.settings
    x = r.initial_state(60.0, 30.0)
    for _ in range(720):  # 2 h of 10 s scans
        reading = _temperature(r, x) + 2.0
        x, _ = r.advance(x, 10.0, Controls(temperature_setpoint_c=50.0, temperature_measurement_c=reading))
    assert abs(_temperature(r, x) - 48.0) < 0.1
    # One scan per call: the output comes from the reading at the start and is held over the call.
    pv = _temperature(r, x) + 2.5
    integral = float(x[r.n + I_PID])
    y, step = r.advance(x, 10.0, Controls(temperature_setpoint_c=50.0, temperature_measurement_c=pv))
    expected = 50.0 + s.pid_gain * ((50.0 - pv) + integral / s.pid_integral_time_s)
    assert step.jacket_inlet_temperature_c == pytest.approx(expected, rel=1e-12)
    assert float(y[r.n + I_PID]) - integral == pytest.approx((50.0 - pv) * 10.0, rel=1e-9)
    # Manual (the DCS's answer to a bad PV): the output is the one given and the integral stops.
    u = Controls(temperature_setpoint_c=50.0, temperature_measurement_c=math.nan, pid_manual_output_c=30.0)
    z, step = r.advance(y, 60.0, u)
    assert step.jacket_inlet_temperature_c == 30.0 and z[r.n + I_PID] == y[r.n + I_PID]
    assert _temperature(r, z) < _temperature(r, y)


def test_a_demand_beyond_the_thermostat_range_is_reported_saturated():
    settings = dataclasses.replace(ReactorSettings(), jacket_inlet_min_c=45.0)
    r = build_reactor(Scenario(reactor=settings))[0]
    x = r.initial_state(60.0, 30.0)
    x, step = r.advance(x, 10.0, Controls(temperature_setpoint_c=40.0, temperature_measurement_c=60.0))
    assert step.jacket_saturated and step.jacket_inlet_temperature_c == 45.0
    x, step = r.advance(x, 10.0, Controls(temperature_setpoint_c=40.0))  # the continuous loop too
    assert step.jacket_saturated and step.jacket_inlet_temperature_c == 45.0
    x, step = r.advance(x, 10.0, Controls(temperature_setpoint_c=59.5, temperature_measurement_c=59.4))
    assert not step.jacket_saturated and step.jacket_inlet_temperature_c > 45.0


def test_undersaturated_clear_solution_stays_clear(fresh_reactor):
    r = fresh_reactor
    x, _, step = _run_pid(r, 50.0, 3600.0, chunk_s=600.0)
    np.testing.assert_array_equal(x[: r.n], 0.0)
    assert step.rates.nucleation_rate_per_kg_s == 0.0
    assert step.concentration_g_per_kg < step.solubility_g_per_kg


# --- desupersaturation and dissolution ------------------------------------------------------


def test_seeded_isothermal_desupersaturation(fresh_reactor):
    r = fresh_reactor
    x = r.add_seeds(r.initial_state(30.0, 33.0), 100.0, 100.0, 20.0)
    c_star0 = r.solubility_at(x)
    c0 = r.concentration_g_per_kg(x)
    assert c0 > c_star0
    u = Controls(temperature_setpoint_c=30.0)
    conc, excess = [c0], [c0 - c_star0]
    for _ in range(40):
        x, step = r.advance(x, 300.0, u)
        conc.append(step.concentration_g_per_kg)
        excess.append(step.concentration_g_per_kg - step.solubility_g_per_kg)
        assert abs(_temperature(r, x) - 30.0) < 0.2  # effectively isothermal
    conc, excess = np.array(conc), np.array(excess)
    assert np.all(np.diff(conc) <= 1e-9 * conc[0])  # C never rises
    assert np.all(np.diff(excess) < 0.02)  # excess falls (tolerance: C* wiggles with T by mK)
    assert excess[-1] > -0.01 * c_star0  # approaches C* from above, no overshoot
    assert excess[-1] < 0.03 * excess[0]
    assert abs(conc[-1] / step.solubility_g_per_kg - 1.0) < 0.01


def test_dissolution_of_seeds_in_undersaturated_solution(fresh_reactor):
    r = fresh_reactor
    x = r.add_seeds(r.initial_state(40.0, 30.0), 100.0, 150.0, 30.0)
    total0 = r.total_solute_kg(x)
    u = Controls(temperature_setpoint_c=40.0)
    masses = [r.crystal_mass_kg(x)]
    for _ in range(30):
        x, step = r.advance(x, 120.0, u)
        assert np.all(x[: r.n] >= 0.0)
        masses.append(step.crystal_mass_kg)
        assert step.rates.growth_rate_m_per_s <= 0.0
        assert step.rates.nucleation_rate_per_kg_s == 0.0
    masses = np.array(masses)
    assert np.all(np.diff(masses) <= 1e-12)
    assert masses[-1] < 0.5 * masses[0]
    assert r.total_solute_kg(x) == pytest.approx(total0, rel=1e-9)


# --- antisolvent ----------------------------------------------------------------------------


def test_antisolvent_lowers_solubility_log_linear(fresh_reactor):
    r = fresh_reactor
    x = r.initial_state(40.0, 25.0)
    c_water = float(r.solubility_g_per_kg(_temperature(r, x)))
    assert r.solubility_at(x) == pytest.approx(c_water, rel=1e-6)
    solute0 = float(x[r.n + I_SOLUTE])
    u = Controls(temperature_setpoint_c=40.0, antisolvent_rate_kg_per_min=0.5)
    x, step = r.advance(x, 600.0, u)
    anti = float(x[r.n + I_ANTI])
    assert anti == pytest.approx(5.0, rel=1e-9)
    assert float(x[r.n + I_WATER]) == 15.0
    assert step.solvent_mass_kg == pytest.approx(20.0, rel=1e-9)
    fraction = anti / 20.0
    k_as = r.settings.antisolvent_solubility_coefficient
    expected = float(r.solubility_g_per_kg(_temperature(r, x))) * math.exp(-k_as * fraction)
    assert r.solubility_at(x) == pytest.approx(expected, rel=1e-5)
    assert step.solubility_g_per_kg == pytest.approx(expected, rel=1e-5)
    assert r.solubility_at(x) < float(r.solubility_g_per_kg(_temperature(r, x)))
    # dilution: same solute in more solvent (unless it crystallised)
    if step.crystal_mass_kg == 0.0:
        assert step.concentration_g_per_kg == pytest.approx(1000 * solute0 / 20.0, rel=1e-9)


# --- fouling --------------------------------------------------------------------------------


def test_fouling_needs_colder_jacket():
    """Same setpoint step (60 -> 50 C) on a clean and a fouled wall (R_f = 0.01 m2K/W).

    During the first 30 min the fouled wall needs a much colder jacket for the cool-down; at steady
    state the jacket-reactor difference that carries the ambient loss grows as 1/UA_eff.
    """
    s = ReactorSettings()
    out = {}
    for rf in (0.0, 0.01):
        r = build_reactor(Scenario())[0]
        x = r.initial_state(60.0, 30.0)
        u = Controls(temperature_setpoint_c=50.0, fouling_resistance_m2k_per_w=rf)
        jacket, reactor_t = [], []
        for _ in range(12):  # 30 min
            x, _ = r.advance(x, 150.0, u)
            jacket.append(float(x[r.n + I_TJ]))
            reactor_t.append(_temperature(r, x))
        x, _ = r.advance(x, 4 * 3600.0, u)  # settle
        out[rf] = (min(jacket), reactor_t[1], float(x[r.n + I_TJ]) - _temperature(r, x), _temperature(r, x))
    assert out[0.01][0] < out[0.0][0] - 5.0  # colder jacket during the 30-min cool-down
    assert out[0.01][1] > out[0.0][1]  # and the reactor still cools more slowly at first
    q_loss = s.ambient_loss_w_per_k * (50.0 - s.ambient_temperature_c)
    for rf in (0.0, 0.01):
        ua = 1.0 / (1.0 / s.heat_transfer_w_per_k + rf / s.heat_transfer_area_m2)
        assert abs(out[rf][3] - 50.0) < 0.05
        assert out[rf][2] == pytest.approx(q_loss / ua, rel=0.05)


# --- MSMPR ----------------------------------------------------------------------------------


def test_msmpr_reaches_steady_state():
    settings = dataclasses.replace(ReactorSettings(), n_classes=100)
    r = build_reactor(Scenario(reactor=settings))[0]
    tau = 1800.0
    c_feed = float(r.solubility_g_per_kg(45.0))
    u = Controls(
        temperature_setpoint_c=30.0, residence_time_s=tau, feed_concentration_g_per_kg=c_feed, feed_temperature_c=45.0
    )
    x = r.initial_state(30.0, 30.0)
    masses = []
    for _ in range(int(25 * tau / 900.0)):
        x, step = r.advance(x, 900.0, u)
        masses.append(step.crystal_mass_kg)
        assert np.all(x[: r.n] >= 0.0)
    last = np.array(masses[-3:])  # the last residence time
    assert last[-1] > 0.05
    assert (last.max() - last.min()) / last[-1] < 0.005
    # Steady-state solute balance: feed in = slurry out, so dissolved + crystals equals the feed
    # solute per hold-up water.
    water = r.settings.water_mass_kg
    assert r.total_solute_kg(x) == pytest.approx(water * c_feed / 1000.0, rel=5e-3)
    assert step.crystal_mass_kg == pytest.approx(water * (c_feed - step.concentration_g_per_kg) / 1000.0, rel=1e-2)
    # and the liquid is supersaturated (growth needs a driving force) but below the feed
    assert step.solubility_g_per_kg < step.concentration_g_per_kg < c_feed
    assert abs(_temperature(r, x) - 30.0) < 0.2
