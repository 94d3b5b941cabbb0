"""Strategies: the recipe baseline and the model-predictive agent's decisions per cycle."""

from __future__ import annotations

import math

import pytest

from conf.schema import load_config
from controller.proposer import Problem, Proposal
from controller.rollout import MaterialConstants
from controller.settings import ProposerSettings
from controller.strategy import (
    ANTISOLVENT_SP,
    TEMPERATURE_SP,
    BatchRecipe,
    LinearCooling,
    ModelPredictive,
    PlantView,
    observed_growth,
)

RECIPE = BatchRecipe.from_scenario(load_config([]).scenario)  # seeded_cooling: 55 -> 49 C, seeds at 12 min, -> 20 C


def view(batch_min: float | None, **values: float) -> PlantView:
    base = {"reactor_temperature_c": 48.0, "concentration_g_per_kg": 428.0,
            "reactor_temperature_setpoint_active_c": 48.0,
            "facet_1_hkl": 100.0, "facet_1_area_fraction": 0.9, "facet_1_growth_rate_um_per_min": 0.5,
            "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.1, "facet_2_growth_rate_um_per_min": 0.8,
            "facet_3_hkl": 0.0, "facet_3_area_fraction": 0.0, "facet_3_growth_rate_um_per_min": 0.0,
            "facet_4_hkl": 0.0, "facet_4_area_fraction": 0.0, "facet_4_growth_rate_um_per_min": 0.0}
    base.update(values)
    t = 0.0 if batch_min is None else batch_min * 60.0
    return PlantView(1000.0 + t, None if batch_min is None else t, base,
                     {k: math.isfinite(v) for k, v in base.items()})


def test_the_recipe_as_setpoints():
    lc = LinearCooling(RECIPE)
    assert lc.advise(view(None)).setpoints is None
    assert lc.advise(view(0.0)).setpoints[TEMPERATURE_SP] == pytest.approx(55.0)
    assert lc.advise(view(12.0)).setpoints[TEMPERATURE_SP] == pytest.approx(49.0)
    assert lc.advise(view(32.0)).setpoints[TEMPERATURE_SP] == pytest.approx(49.0 - 0.2 * 10.0)
    assert lc.advise(view(1000.0)).setpoints[TEMPERATURE_SP] == pytest.approx(20.0)
    assert RECIPE.final_temperature_c == 20.0 and RECIPE.seed_at_min == 12.0


def test_observed_growth_is_the_rate_of_the_volume_equivalent_size():
    v = {"facet_1_area_fraction": 0.75, "facet_1_growth_rate_um_per_min": 1.0,
         "facet_2_area_fraction": 0.25, "facet_2_growth_rate_um_per_min": 3.0}
    assert observed_growth(v) == pytest.approx(2.0 * 1.5)  # no {hkl}: a sphere, dL/dt = 2 R
    assert math.isnan(observed_growth({}))
    # a cube of edge a: L = (6/pi)^(1/3) a and R = (da/dt) / 2, so G = 2 (6/pi)^(1/3) R
    cube = {"facet_1_hkl": 100.0, "facet_1_area_fraction": 1.0, "facet_1_growth_rate_um_per_min": 0.5}
    assert observed_growth(cube) == pytest.approx(2.0 * (6.0 / math.pi) ** (1.0 / 3.0) * 0.5, rel=1e-6)


@pytest.fixture(scope="module")
def agent(tiny_checkpoint):
    from controller.kinetics_service import KineticsService

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    return ModelPredictive(RECIPE, service, MaterialConstants.for_material("KCl"), ProposerSettings(),
                           max_heating_k_per_min=0.0)


def test_before_the_seeds_the_recipe_decides_without_the_model(agent):
    advice = agent.advise(view(5.0))
    assert advice.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(5.0))
    assert advice.problem is None and advice.predictions == {} and advice.model_ok


def test_after_the_seeds_it_poses_a_problem_and_follows_the_proposal(agent):
    agent.advise(view(11.0))
    first = agent.advise(view(12.5))  # the model is asked in the background: hold until it answers
    assert not first.model_ok and "waiting" in first.inputs["model_error"]
    agent.wait_for_model()
    advice = agent.advise(view(13.0))
    assert isinstance(advice.problem, Problem) and advice.model_ok and advice.data_ok
    assert advice.problem.state.seeds[3] > 0 and advice.problem.state.setpoint_c == 48.0
    assert advice.problem.plan.cooling_left_s == pytest.approx((RECIPE.cooling_end_min - 13.0) * 60.0)
    assert {"G_um_per_min", "log10_B", "lambda", "spread_log10_G"} <= set(advice.predictions)
    # no proposal yet: the recipe
    assert advice.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(13.0))
    agent.accept(Proposal(advice.problem.plant_time_s, 48.0, (-3.0, -3.0, -3.0), 600.0, {"d43_um": 300.0}))
    later = agent.advise(view(18.0))
    assert later.setpoints[TEMPERATURE_SP] == pytest.approx(48.0 - 1.5)
    assert later.proposal_time_s == advice.problem.plant_time_s and later.inputs["expected_d43_um"] == 300.0


def test_bad_data_is_reported_not_hidden(agent):
    advice = agent.advise(view(20.0, concentration_g_per_kg=math.nan))
    assert not advice.data_ok and advice.problem is None


def _model_agent(tiny_checkpoint, **settings) -> ModelPredictive:
    from controller.kinetics_service import KineticsService

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    return ModelPredictive(RECIPE, service, MaterialConstants.for_material("KCl"), ProposerSettings(**settings),
                           max_heating_k_per_min=0.0, max_antisolvent_kg_per_min=1.0)


def _answered(agent: ModelPredictive, batch_min: float, **values):
    agent.advise(view(batch_min - 1.0, **values))
    agent.advise(view(batch_min - 0.5, **values))
    agent.wait_for_model()
    return agent.advise(view(batch_min, **values))


def test_antisolvent_is_totalised_above_the_low_flow_cutoff_and_proposed(tiny_checkpoint):
    agent = _model_agent(tiny_checkpoint)
    assert agent.setpoints == (TEMPERATURE_SP, ANTISOLVENT_SP)
    advice = _answered(agent, 13.0, antisolvent_flow_kg_per_min=0.004)  # transmitter noise: below the cut-off
    assert agent.antisolvent_per_water == 0.0
    assert advice.problem.max_antisolvent_kg_per_min == 1.0 and advice.problem.uses_antisolvent
    for k in range(1, 11):  # 0.5 kg/min for 10 min
        advice = agent.advise(view(13.0 + k, antisolvent_flow_kg_per_min=0.5))
    assert agent.antisolvent_per_water == pytest.approx(0.5 * 10.0 / RECIPE.solvent_mass_kg)
    assert advice.problem.state.antisolvent_per_water == agent.antisolvent_per_water
    # the mixture dissolves less: the same concentration is a higher driving force
    plain = agent.material.solubility_g_per_kg(48.0)
    assert advice.inputs["solubility_g_per_kg"] < plain
    agent.accept(Proposal(advice.problem.plant_time_s, 48.0, (-1.0, -1.0, -1.0), 600.0,
                          antisolvent_kg_per_min=(0.3, 0.0, 0.0)))
    later = agent.advise(view(24.0, antisolvent_flow_kg_per_min=0.3))
    assert later.setpoints[ANTISOLVENT_SP] == pytest.approx(0.3)
    agent.close()


def test_with_batch_time_in_the_objective_it_completes_the_batch_a_final_hold_after_cooling(tiny_checkpoint):
    agent = _model_agent(tiny_checkpoint, weight_batch_time_per_h=0.1, antisolvent=False)
    assert agent.setpoints == (TEMPERATURE_SP,)
    advice = _answered(agent, 13.0)
    agent.accept(Proposal(advice.problem.plant_time_s, 48.0, (-10.0, -10.0, -10.0), 600.0))
    hot = agent.advise(view(60.0, reactor_temperature_setpoint_active_c=30.0))
    assert hot.problem is not None and not hot.complete_batch
    cold = agent.advise(view(70.0, reactor_temperature_setpoint_active_c=20.0))
    assert cold.problem is None and cold.setpoints[TEMPERATURE_SP] == 20.0 and not cold.complete_batch
    hold_min = RECIPE.final_hold_min
    assert not agent.advise(view(70.0 + hold_min - 1.0, reactor_temperature_setpoint_active_c=20.0)).complete_batch
    assert agent.advise(view(70.0 + hold_min, reactor_temperature_setpoint_active_c=20.0)).complete_batch
    # without batch time in the objective the recipe ends the batch
    recipe_led = _model_agent(tiny_checkpoint, weight_batch_time_per_h=0.0)
    _answered(recipe_led, 13.0)
    recipe_led.accept(Proposal(1000.0, 48.0, (-10.0, -10.0, -10.0), 600.0))
    recipe_led.advise(view(70.0, reactor_temperature_setpoint_active_c=20.0))
    assert not recipe_led.advise(view(70.0 + hold_min, reactor_temperature_setpoint_active_c=20.0)).complete_batch
    agent.close()
    recipe_led.close()
