"""The process schema: the recipe program, and the agent's reading of every scenario."""

from __future__ import annotations

from pathlib import Path

import pytest

from conf.contract.process import BatchProcess, RecipeStep, Seeding, Vessel, recipe_duration_min, recipe_setpoint
from conf.schema import ConfigError, XtalpilotConfig, load_config

SCENARIOS = sorted(p.stem for p in (Path(__file__).resolve().parents[3] / "conf" / "scenario").glob("*.yaml"))
RECIPE = (RecipeStep(49.0, 0.5, 10.0), RecipeStep(20.0, 0.2, 30.0, antisolvent_rate_kg_per_min=0.1))


def test_the_recipe_ramps_holds_and_finishes():
    assert recipe_duration_min(RECIPE, 55.0) == pytest.approx(12.0 + 10.0 + 145.0 + 30.0)
    assert recipe_setpoint(RECIPE, 55.0, 6.0) == (pytest.approx(52.0), 0.0, False)
    assert recipe_setpoint(RECIPE, 55.0, 20.0) == (49.0, 0.0, False)
    t, anti, done = recipe_setpoint(RECIPE, 55.0, 22.0 + 50.0)
    assert t == pytest.approx(39.0) and anti == 0.1 and not done
    assert recipe_setpoint(RECIPE, 55.0, 500.0) == (20.0, 0.0, True)


@pytest.mark.parametrize("make", [lambda: RecipeStep(20.0, rate_k_per_min=0.0), lambda: Seeding(std_size_um=0.0),
                                  lambda: Vessel(water_mass_kg=-1.0), lambda: BatchProcess(duration_min=0.0)])
def test_out_of_range_values_are_refused(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_agent_reads_every_scenario_as_a_batch_process(scenario):
    cfg = load_config([f"scenario={scenario}"], simulator=False)
    assert type(cfg) is XtalpilotConfig and isinstance(cfg.scenario, BatchProcess)
    assert cfg.scenario.name == scenario and all(isinstance(s, RecipeStep) for s in cfg.scenario.recipe)
    full = load_config([f"scenario={scenario}"], simulator=True).scenario
    for name in ("material", "initial_temperature_c", "initial_saturation_temperature_c", "target_mean_size_um",
                 "duration_min"):
        assert getattr(cfg.scenario, name) == getattr(full, name)
    assert cfg.scenario.reactor.water_mass_kg == full.reactor.water_mass_kg
    assert [(s.temperature_c, s.rate_k_per_min, s.hold_min) for s in cfg.scenario.recipe] == [
        (s.temperature_c, s.rate_k_per_min, s.hold_min) for s in full.recipe]


def test_the_agent_s_config_checks_what_it_reads_and_lets_the_simulator_s_keys_through():
    cfg = load_config(["scenario.reactor.n_classes=150", "scenario.seeding.mass_g=55"], simulator=False)
    assert cfg.scenario.seeding.mass_g == 55.0
    for override, words in ((["scenario.seeding.mass_g=lots"], ["mass_g"]),
                            (["scenario.seeding.mas_g=3"], ["mas_g"]),
                            (["scenario.recipe.1.rate_k_per_min=0"], ["scenario.recipe[1].rate_k_per_min"]),
                            (["scenario.reactor.water_mass_kg=nan"], ["scenario.reactor.water_mass_kg"]),
                            (["shed_action=panic"], ["hold", "recipe"])):
        with pytest.raises(ConfigError) as info:
            load_config(override, simulator=False)
        assert all(w in str(info.value) for w in words), str(info.value)


def test_a_material_as_data_needs_one_solubility_and_samples_a_polynomial():
    import math

    from conf.contract.process import MaterialData

    poly = MaterialData(solubility_coefficients_g_per_kg=(128.6, 5.88, 0.1721))
    temps, values = poly.solubility_table()
    assert temps[0] == 0.0 and temps[-1] == 100.0 and values[8] == pytest.approx(128.6 + 5.88 * 20 + 0.1721 * 400)
    table = MaterialData(solubility_temperatures_c=(10.0, 30.0, 50.0), solubility_g_per_kg=(300.0, 370.0, 430.0))
    assert table.solubility_table() == ((10.0, 30.0, 50.0), (300.0, 370.0, 430.0))
    for bad in (dict(), dict(solubility_temperatures_c=(10.0, 20.0), solubility_g_per_kg=(1.0, 2.0),
                             solubility_coefficients_g_per_kg=(1.0,)),
                dict(solubility_temperatures_c=(10.0,), solubility_g_per_kg=(1.0,)),
                dict(solubility_temperatures_c=(20.0, 10.0), solubility_g_per_kg=(1.0, 2.0)),
                dict(solubility_coefficients_g_per_kg=(1.0,), crystal_density_kg_per_m3=-1.0)):
        with pytest.raises(ValueError):
            MaterialData(**bad)
    with pytest.raises(ValueError, match="not positive"):
        MaterialData(solubility_coefficients_g_per_kg=(10.0, -1.0)).solubility_table()
    assert math.isclose(MaterialData(solubility_coefficients_g_per_kg=(1.0,)).volume_shape_factor, math.pi / 6)
