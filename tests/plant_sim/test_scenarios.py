"""Tests for plant_sim.scenarios: the recipe program it runs (conf.contract.process), impurity
pulses, fouling, seed-mass draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conf.contract.process import RecipeStep, Seeding, recipe_duration_min, recipe_setpoint
from plant_sim.scenarios import Fouling, ImpurityPulse, Operation, Scenario, fouling_resistance_m2k_per_w, impurity_ppm_at

# Heat to dissolve, cool to seed point, cool slowly, hold (50 -> 60 -> 45 -> 20).
RECIPE = (
    RecipeStep(temperature_c=60.0, rate_k_per_min=2.0, hold_min=10.0),  # ramp 5 min, hold 10
    RecipeStep(temperature_c=45.0, rate_k_per_min=1.0, hold_min=5.0, antisolvent_rate_kg_per_min=0.2),  # 15 + 5
    RecipeStep(temperature_c=20.0, rate_k_per_min=0.25, hold_min=30.0),  # ramp 100, hold 30
)
START_C = 50.0


def test_recipe_duration_is_ramps_plus_holds():
    assert recipe_duration_min(RECIPE, START_C) == pytest.approx(5 + 10 + 15 + 5 + 100 + 30)
    assert recipe_duration_min((), START_C) == 0.0


def test_ramp_up_at_stated_rate():
    for t in (0.0, 1.0, 2.5, 4.9):
        sp, anti, done = recipe_setpoint(RECIPE, START_C, t)
        assert sp == pytest.approx(START_C + 2.0 * t)
        assert anti == 0.0 and not done


def test_hold_after_ramp():
    for t in (5.0, 10.0, 14.99):
        sp, _, done = recipe_setpoint(RECIPE, START_C, t)
        assert sp == pytest.approx(60.0) and not done


def test_ramp_down_at_stated_rate_with_antisolvent():
    for dt in (0.0, 3.0, 14.0):
        sp, anti, done = recipe_setpoint(RECIPE, START_C, 15.0 + dt)
        assert sp == pytest.approx(60.0 - 1.0 * dt)
        assert anti == pytest.approx(0.2) and not done
    sp, anti, _ = recipe_setpoint(RECIPE, START_C, 32.0)  # hold of step 2 keeps its feed
    assert sp == pytest.approx(45.0) and anti == pytest.approx(0.2)


def test_slow_cooling_ramp_slope():
    times = np.linspace(35.0, 134.0, 25)
    sps = np.array([recipe_setpoint(RECIPE, START_C, t)[0] for t in times])
    np.testing.assert_allclose(np.diff(sps) / np.diff(times), -0.25, rtol=1e-9)
    assert recipe_setpoint(RECIPE, START_C, 135.0)[0] == pytest.approx(20.0)


def test_finished_after_duration():
    total = recipe_duration_min(RECIPE, START_C)
    sp, anti, done = recipe_setpoint(RECIPE, START_C, total - 1e-6)
    assert not done and sp == pytest.approx(20.0)
    for t in (total, total + 1.0, 1e6):
        sp, anti, done = recipe_setpoint(RECIPE, START_C, t)
        assert done and sp == pytest.approx(20.0) and anti == 0.0


def test_empty_recipe_finished_at_start_temperature():
    assert recipe_setpoint((), 42.0, 0.0) == (42.0, 0.0, True)


def test_setpoint_continuous_over_recipe():
    total = recipe_duration_min(RECIPE, START_C)
    times = np.linspace(0.0, total + 5.0, 2001)
    sps = np.array([recipe_setpoint(RECIPE, START_C, t)[0] for t in times])
    max_rate = max(s.rate_k_per_min for s in RECIPE)
    assert np.all(np.abs(np.diff(sps)) <= max_rate * (times[1] - times[0]) + 1e-9)


def test_impurity_pulses_sum_active_in_half_open_interval():
    pulses = (ImpurityPulse(10.0, 20.0, 5.0), ImpurityPulse(15.0, 30.0, 2.0))
    assert impurity_ppm_at(pulses, 9.99) == 0.0
    assert impurity_ppm_at(pulses, 10.0) == 5.0  # start inclusive
    assert impurity_ppm_at(pulses, 15.0) == 7.0  # overlap sums
    assert impurity_ppm_at(pulses, 19.99) == 7.0
    assert impurity_ppm_at(pulses, 20.0) == 2.0  # end exclusive
    assert impurity_ppm_at(pulses, 30.0) == 0.0
    assert impurity_ppm_at((), 12.0) == 0.0


def test_fouling_grows_linearly_from_start():
    f = Fouling(start_min=30.0, resistance_m2k_per_w_per_h=0.002)
    assert fouling_resistance_m2k_per_w(f, 0.0) == 0.0
    assert fouling_resistance_m2k_per_w(f, 30.0) == 0.0
    assert fouling_resistance_m2k_per_w(f, 90.0) == pytest.approx(0.002)
    assert fouling_resistance_m2k_per_w(f, 150.0) == pytest.approx(0.004)
    t = np.linspace(30.0, 600.0, 20)
    r = np.array([fouling_resistance_m2k_per_w(f, x) for x in t])
    np.testing.assert_allclose(np.diff(r) / np.diff(t), 0.002 / 60.0, rtol=1e-9)
    assert fouling_resistance_m2k_per_w(Fouling(), 1000.0) == 0.0


def test_seed_mass_nominal_without_variation():
    sc = Scenario(seeding=Seeding(mass_g=50.0), seed_mass_rel_std=0.0)
    assert all(sc.drawn_seed_mass_g(i) == 50.0 for i in range(5))


def test_seed_mass_deterministic_per_seed_and_batch():
    sc = Scenario(seed=3, seeding=Seeding(mass_g=50.0), seed_mass_rel_std=0.1)
    again = Scenario(seed=3, seeding=Seeding(mass_g=50.0), seed_mass_rel_std=0.1)
    draws = [sc.drawn_seed_mass_g(i) for i in range(10)]
    assert draws == [again.drawn_seed_mass_g(i) for i in range(10)]
    assert draws == [sc.drawn_seed_mass_g(i) for i in range(10)]  # no hidden state
    assert len(set(draws)) == len(draws)  # differs across batch indices
    other = Scenario(seed=4, seeding=Seeding(mass_g=50.0), seed_mass_rel_std=0.1)
    assert [other.drawn_seed_mass_g(i) for i in range(10)] != draws


def test_seed_mass_statistics():
    sc = Scenario(seed=11, seeding=Seeding(mass_g=50.0), seed_mass_rel_std=0.1)
    draws = np.array([sc.drawn_seed_mass_g(i) for i in range(2000)])
    # mean 50, std 5: 4-sigma bounds on the sample mean and std
    assert abs(draws.mean() - 50.0) < 4 * 5.0 / np.sqrt(2000)
    assert draws.std() == pytest.approx(5.0, rel=0.1)


def test_seed_mass_never_negative():
    sc = Scenario(seed=1, seeding=Seeding(mass_g=50.0), seed_mass_rel_std=2.0)
    draws = np.array([sc.drawn_seed_mass_g(i) for i in range(500)])
    assert np.all(draws >= 0.0)
    assert np.any(draws == 0.0)  # z < -0.5 happens ~30 % of the time and must clamp to zero


def test_batch_time_limit_defaults_to_one_and_a_half_recipes():
    sc = Scenario(recipe=RECIPE, initial_temperature_c=START_C)
    assert sc.max_batch_time_min is None
    assert sc.batch_time_limit_min() == pytest.approx(1.5 * recipe_duration_min(RECIPE, START_C))
    assert sc.batch_time_limit_min(60.0) == pytest.approx(1.5 * recipe_duration_min(RECIPE, 60.0))
    assert Scenario(recipe=RECIPE, max_batch_time_min=200.0).batch_time_limit_min() == 200.0
    assert Scenario().batch_time_limit_min() == math.inf  # nothing to time without a recipe
    assert Scenario(recipe=RECIPE, operation=Operation.continuous).batch_time_limit_min() == math.inf
    for bad in (0.0, -5.0, math.nan):
        with pytest.raises(ValueError, match="max_batch_time_min"):
            Scenario(recipe=RECIPE, max_batch_time_min=bad)


def test_a_systematic_seed_error_shifts_what_is_charged_not_what_the_recipe_says():
    sc = Scenario(seeding=Seeding(mass_g=40.0, mean_size_um=100.0, std_size_um=20.0), seed_mass_rel_offset=-0.3,
                  seed_size_rel_offset=0.3)
    assert sc.drawn_seed_mass_g(0) == pytest.approx(28.0) and sc.seeding.mass_g == 40.0
    assert sc.charged_seed_size_um() == (pytest.approx(130.0), pytest.approx(26.0))
    varied = Scenario(seed=2, seeding=Seeding(mass_g=40.0), seed_mass_rel_std=0.1, seed_mass_rel_offset=0.3)
    plain = Scenario(seed=2, seeding=Seeding(mass_g=40.0), seed_mass_rel_std=0.1)
    assert varied.drawn_seed_mass_g(1) - plain.drawn_seed_mass_g(1) == pytest.approx(12.0)
    for bad in (dict(seed_mass_rel_offset=-1.5), dict(seed_size_rel_offset=-0.95)):
        with pytest.raises(ValueError):
            Scenario(**bad)
