"""The strategies plants run today: their laws per cycle (pure), and each on the simulated plant."""

from __future__ import annotations

import dataclasses
import math

import pytest

from conf.schema import load_config
from controller.baselines import (
    CubicCooling,
    DirectNucleationControl,
    NaturalCooling,
    SupersaturationControl,
    program_start,
)
from controller.estimator import PlantState
from controller.settings import BaselineSettings, SetupError
from controller.state import ChordStatistics
from controller.strategy import TEMPERATURE_SP, BatchRecipe

RECIPE = BatchRecipe.from_process(load_config([], simulator=False).process)  # 55 -> 49 C, hold, -> 20 C at 0.2
SETTINGS = BaselineSettings()
START_MIN = 12.0 + 10.0  # 55 -> 49 C at 0.5 K/min, then the seeding hold
LIMIT = 0.015


def state(batch_min: float | None, sigma: float = 0.01, counts: float | None = None, held: bool = False,
          temperature_c: float = 40.0, concentration: float = 400.0) -> PlantState:
    chords = None if counts is None else ChordStatistics(counts, (counts, 0.0, 0.0, 0.0, 0.0), 100.0, 200.0, 0.0)
    t = 0.0 if batch_min is None else batch_min * 60.0
    return PlantState(plant_time_s=1000.0 + t, batch_time_s=None if batch_min is None or held else t,
                      batch_state=2.0 if held else (0.0 if batch_min is None else 1.0),
                      batch_start_s=None if batch_min is None else 1000.0, batch_id_s=None if batch_min is None else 1000.0,
                      temperature_c=temperature_c, concentration_g_per_kg=concentration, sigma=sigma, chords=chords)


def run(strategy, minutes, step_min: float = 0.5, **kwargs):
    """Advise every ``step_min`` over ``minutes`` (the guard lets everything through)."""
    out = []
    for m in minutes:
        advice = strategy.advise(state(m, **{k: (v(m) if callable(v) else v) for k, v in kwargs.items()}))
        if advice.setpoints is not None:
            strategy.written(advice.setpoints, 1000.0 + m * 60.0)
        out.append(advice)
    return out


def minutes(end: float, step: float = 0.5, start: float = 0.0):
    n = int(round((end - start) / step))
    return [start + step * k for k in range(n + 1)]


def temperatures(advices):
    return [a.setpoints[TEMPERATURE_SP] for a in advices]


def test_the_programme_starts_where_the_recipe_s_last_ramp_starts():
    assert program_start(RECIPE) == (pytest.approx(START_MIN), 49.0)
    unseeded = BatchRecipe.from_process(load_config(["process=kcl_unseeded_cooling"], simulator=False).process)
    assert program_start(unseeded) == (0.0, 55.0)


@pytest.mark.parametrize("make", [lambda: NaturalCooling(RECIPE, SETTINGS), lambda: CubicCooling(RECIPE, SETTINGS),
                                  lambda: SupersaturationControl(RECIPE, SETTINGS, LIMIT),
                                  lambda: DirectNucleationControl(RECIPE, SETTINGS)])
def test_every_baseline_runs_the_recipe_first_then_cools_without_a_step_and_completes_after_the_final_hold(make):
    strategy = make()
    advices = run(strategy, minutes(600.0), counts=500.0, sigma=0.002)
    temps = temperatures(advices)
    before = [a for m, a in zip(minutes(600.0), advices) if m < START_MIN]
    assert all(a.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(k * 0.5)) for k, a in enumerate(before))
    assert max(abs(b - a) for a, b in zip(temps, temps[1:])) < 1.0  # no step anywhere (0.5 min cycles)
    assert min(temps) == pytest.approx(20.0) and temps[-1] == pytest.approx(20.0)
    done = [m for m, a in zip(minutes(600.0), advices) if a.complete_batch]
    reached = next(m for m, t in zip(minutes(600.0), temps) if t <= 20.0 + 0.05)
    assert done and done[0] == pytest.approx(reached + RECIPE.final_hold_min, abs=0.51)
    assert all(a.reference[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(m)) for m, a in zip(minutes(600.0), advices))
    assert strategy.advise(state(None)).setpoints is None
    held = strategy.advise(state(100.0, held=True))
    assert held.setpoints is None and held.inputs["batch_held"] == 1.0


def test_natural_cooling_decays_fast_first_and_cubic_cooling_cools_slow_first():
    natural = temperatures(run(NaturalCooling(RECIPE, SETTINGS), minutes(300.0)))
    cubic = temperatures(run(CubicCooling(RECIPE, SETTINGS), minutes(300.0)))
    at = {m: k for k, m in enumerate(minutes(300.0))}
    tau, coolant = SETTINGS.natural_time_constant_min, 20.0 - SETTINGS.natural_coolant_offset_k
    assert natural[at[START_MIN + 40.0]] == pytest.approx(coolant + (49.0 - coolant) * math.exp(-40.0 / tau))
    cooling_min = (49.0 - 20.0) / 0.2  # the recipe's cooling time: cubic takes the same
    assert cubic[at[START_MIN + cooling_min / 2]] == pytest.approx(49.0 - 29.0 / 8.0)
    assert cubic[at[START_MIN + cooling_min]] == pytest.approx(20.0)
    # first 30 min of the programme: natural cools far more than linear, cubic far less
    linear = 49.0 - 0.2 * 30.0
    assert natural[at[START_MIN + 30.0]] < linear - 5.0 and cubic[at[START_MIN + 30.0]] > linear + 5.0


def test_supersaturation_control_cools_faster_below_its_setpoint_slower_above_and_never_heats():
    sp = SETTINGS.ssc_sigma_setpoint_rel_limit * LIMIT
    low = temperatures(run(SupersaturationControl(RECIPE, SETTINGS, LIMIT), minutes(60.0), sigma=0.2 * sp))
    high = temperatures(run(SupersaturationControl(RECIPE, SETTINGS, LIMIT), minutes(60.0), sigma=1.5 * sp))
    at = {m: k for k, m in enumerate(minutes(60.0))}
    # below the setpoint it saturates at its fastest cooling; above it stops cooling (cooling only)
    assert low[at[60.0]] == pytest.approx(49.0 - SETTINGS.ssc_max_cooling_k_per_min * (60.0 - START_MIN), abs=0.3)
    assert high[at[60.0]] == pytest.approx(49.0)
    assert all(b <= a + 1e-12 for a, b in zip(low, low[1:])) and all(b <= a + 1e-12 for a, b in zip(high, high[1:]))
    # at the setpoint a converged PI holds the rate the integral carries; no data: it holds
    ssc = SupersaturationControl(RECIPE, SETTINGS, LIMIT)
    run(ssc, minutes(40.0), sigma=0.5 * sp)
    blind = ssc.advise(state(40.5, concentration=math.nan))
    assert not blind.data_ok and blind.setpoints[TEMPERATURE_SP] == pytest.approx(ssc._last_c)
    with pytest.raises(ValueError, match="metastable limit"):
        SupersaturationControl(RECIPE, SETTINGS, 0.0)


def test_supersaturation_control_does_not_wind_up_while_saturated():
    """After a long time far below the setpoint, the rate comes off its clamp as soon as sigma
    passes the setpoint (the integral did not grow while the output was clamped)."""
    sp = SETTINGS.ssc_sigma_setpoint_rel_limit * LIMIT
    ssc = SupersaturationControl(RECIPE, SETTINGS, LIMIT)
    run(ssc, minutes(100.0), sigma=0.0)
    before = ssc._last_c
    after = run(ssc, minutes(102.0, start=100.5), sigma=sp * 1.3)
    assert after[-1].setpoints[TEMPERATURE_SP] == pytest.approx(before, abs=0.3)


def test_direct_nucleation_control_heats_past_its_band_until_the_count_is_back_at_target():
    dnc = DirectNucleationControl(RECIPE, SETTINGS)
    seeds = 500.0
    target = SETTINGS.dnc_target_counts_rel * seeds
    high = target * (1.0 + SETTINGS.dnc_band_rel) * 1.05

    def counts(m):  # in hand, then fines appear at 60 min, dissolve back below target at 75 min
        return seeds if m < START_MIN else (high if 60.0 <= m < 75.0 else 0.9 * target)

    advices = run(dnc, minutes(100.0), counts=counts)
    temps = temperatures(advices)
    at = {m: k for k, m in enumerate(minutes(100.0))}
    assert advices[at[59.5]].inputs["dnc_target_counts_per_s"] == pytest.approx(target)
    # cooling from the last cycle before the programme (the recipe's hold at 49 C)
    assert temps[at[59.5]] == pytest.approx(49.0 - SETTINGS.dnc_cooling_k_per_min * (59.5 - START_MIN + 0.5))
    assert temps[at[74.5]] == pytest.approx(temps[at[59.5]] + SETTINGS.dnc_heating_k_per_min * 15.0)  # heating
    assert temps[at[100.0]] < temps[at[75.0]]  # cooling again
    assert max(temps[at[START_MIN]:]) <= 49.0  # never above the programme's start (the seeds)
    # inside the band it keeps the direction it has (hysteresis)
    between = target * (1.0 + 0.5 * SETTINGS.dnc_band_rel)
    dnc2 = DirectNucleationControl(RECIPE, SETTINGS)
    t2 = temperatures(run(dnc2, minutes(60.0), counts=lambda m: seeds if m < START_MIN else (
        0.9 * target if m < 35.0 else (high if m < 40.0 else between))))
    assert t2[at[40.0]] > t2[at[35.0]] and t2[-1] > t2[at[40.0]]  # still heating inside the band
    blind = dnc2.advise(state(60.5, counts=None))
    assert not blind.data_ok and blind.setpoints[TEMPERATURE_SP] == pytest.approx(t2[-1])


def test_direct_nucleation_control_on_a_clear_solution_cools_until_it_counts_crystals():
    unseeded = BatchRecipe.from_process(load_config(["process=kcl_unseeded_cooling"], simulator=False).process)
    dnc = DirectNucleationControl(unseeded, SETTINGS)
    temps = temperatures(run(dnc, minutes(20.0), counts=1e-90))  # numerical dust is no crystal
    assert temps[-1] == pytest.approx(55.0 - SETTINGS.dnc_cooling_k_per_min * 20.0)
    advice = dnc.advise(state(20.5, counts=50.0))
    assert advice.inputs["dnc_target_counts_per_s"] == pytest.approx(SETTINGS.dnc_target_counts_rel * 50.0)


def test_a_baseline_is_chosen_by_name_and_refuses_what_the_plant_cannot_do():
    from controller.agent import make_strategy

    for name, kind in (("natural_cooling", NaturalCooling), ("cubic_cooling", CubicCooling),
                       ("supersaturation_control", SupersaturationControl)):
        assert isinstance(make_strategy(load_config([f"agent.strategy={name}"], simulator=False)), kind)
    ssc = make_strategy(load_config(["agent.strategy=supersaturation_control", "process=kno3_seeded_cooling"],
                                    simulator=False))
    assert ssc.sigma_setpoint == pytest.approx(SETTINGS.ssc_sigma_setpoint_rel_limit * 0.02)  # the material's limit
    with pytest.raises(SetupError, match="allow_heating"):
        make_strategy(load_config(["agent.strategy=direct_nucleation_control"], simulator=False))
    dnc = make_strategy(load_config(["agent.strategy=direct_nucleation_control", "agent.allow_heating=true"],
                                    simulator=False))
    assert isinstance(dnc, DirectNucleationControl)
    minimal = load_config(["agent.strategy=supersaturation_control", "plant=minimal"], simulator=False)
    assert isinstance(make_strategy(minimal), SupersaturationControl)  # temperature and concentration suffice
    blind = {**minimal.plant, "signals": {k: v for k, v in minimal.plant["signals"].items()
                                          if k != "concentration_g_per_kg"}}
    with pytest.raises(SetupError, match="concentration"):
        make_strategy(dataclasses.replace(minimal, plant=blind))
    with pytest.raises(SetupError, match="FBRM"):
        make_strategy(load_config(["agent.strategy=direct_nucleation_control", "agent.allow_heating=true",
                                   "plant=minimal"], simulator=False))
