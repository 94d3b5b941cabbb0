"""Strategies: the recipe baseline and the model-predictive agent's decisions per cycle."""

from __future__ import annotations

import json
import math

import pytest

from conf.schema import load_config
from controller.estimator import estimate
from controller.model_client import ModelClient
from controller.proposer import Problem, Proposal
from controller.rollout import MaterialConstants
from controller.settings import BaselineSettings, ProposerSettings
from controller.strategy import (
    ANTISOLVENT_SP,
    TEMPERATURE_SP,
    BatchRecipe,
    LinearCooling,
    ModelPredictive,
    PlantView,
)

RECIPE = BatchRecipe.from_process(load_config([]).process)  # seeded_cooling: 55 -> 49 C, seeds at 12 min, -> 20 C


def view(batch_min: float | None, held: bool = False, **values: float) -> PlantView:
    base = {"reactor_temperature_c": 48.0, "concentration_g_per_kg": 428.0,
            "reactor_temperature_setpoint_active_c": 48.0,
            "facet_1_hkl": 100.0, "facet_1_area_fraction": 0.9,
            "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.1,
            "facet_3_hkl": 0.0, "facet_3_area_fraction": 0.0,
            "facet_4_hkl": 0.0, "facet_4_area_fraction": 0.0}
    base["batch_state"] = 0.0 if batch_min is None else 1.0
    base.update(values)
    t = 0.0 if batch_min is None else batch_min * 60.0
    if held:
        base["batch_state"] = 2.0
    return PlantView(1000.0 + t, None if batch_min is None or held else t, base,
                     {k: math.isfinite(v) for k, v in base.items()})


def test_the_recipe_as_setpoints():
    lc = LinearCooling(RECIPE)

    def advise(batch_min):
        return lc.advise(estimate(None, view(batch_min), None, None))

    assert not advise(RECIPE.duration_min - 0.5).complete_batch
    assert advise(RECIPE.duration_min).complete_batch  # the plant waits for Complete
    assert advise(None).setpoints is None
    assert advise(0.0).setpoints[TEMPERATURE_SP] == pytest.approx(55.0)
    assert advise(12.0).setpoints[TEMPERATURE_SP] == pytest.approx(49.0)
    assert advise(32.0).setpoints[TEMPERATURE_SP] == pytest.approx(49.0 - 0.2 * 10.0)
    assert advise(1000.0).setpoints[TEMPERATURE_SP] == pytest.approx(20.0)
    assert RECIPE.final_temperature_c == 20.0 and RECIPE.seed_at_min == 12.0


class Loop:
    """The agent's sequence for one cycle without I/O: the state estimated with the model's newest
    laws, the model asked in the background, the strategy advised (controller.agent.Agent)."""

    def __init__(self, strategy: ModelPredictive, state=None) -> None:
        self.strategy = strategy
        s = strategy.settings
        self.model = ModelClient(strategy.service, s.model_refresh_s, s.model_timeout_s, s.metastable_sigma_limit)
        self.state = state

    def advise(self, v):
        answer = self.model.answer()
        previous = self.state
        self.state = estimate(previous, v, answer.laws, self.strategy.facts)
        if previous is not None and previous.batch_id_s is not None and self.state.batch_id_s != previous.batch_id_s:
            self.model.reset()
            answer = self.model.answer()
        self.model.ask(self.state)
        return self.strategy.advise(self.state, answer)

    @property
    def estimate(self):
        return self.state.population if self.state is not None else None

    @property
    def antisolvent_per_water(self):
        return self.state.antisolvent_per_water if self.state is not None else 0.0

    def __getattr__(self, name):  # accept, written, proposal, setpoints, material, ...
        return getattr(self.strategy, name)

    def wait_for_model(self):
        self.model.wait()

    def close(self):
        self.model.close()


def _model_agent(tiny_checkpoint, service=None, state=None, **settings) -> Loop:
    from controller.kinetics_service import KineticsService

    service = service or KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    return Loop(ModelPredictive(RECIPE, service, MaterialConstants.for_material("KCl"), ProposerSettings(**settings),
                                max_heating_k_per_min=0.0, max_antisolvent_kg_per_min=1.0), state)


@pytest.fixture()
def agent(tiny_checkpoint):
    a = _model_agent(tiny_checkpoint, antisolvent=False)
    yield a
    a.close()


def _answered(agent: Loop, batch_min: float, **values):
    agent.advise(view(batch_min - 1.0, **values))
    agent.advise(view(batch_min - 0.5, **values))
    agent.wait_for_model()
    return agent.advise(view(batch_min, **values))


def test_before_the_seeds_the_recipe_decides_without_the_model(agent):
    advice = agent.advise(view(5.0))
    assert advice.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(5.0))
    assert advice.problem is None and advice.predictions == {} and advice.model_ok


def test_after_a_bumpless_entry_the_recipe_is_rejoined_not_blended_back(agent):
    """The guard writes the present setpoint on entering automatic; the next cycle asks for the
    recipe's own value again (the guard rate-limits the way back), as the recipe and every
    baseline do: blended back over a move interval, the approach to seeding lagged the recipe."""
    first = agent.advise(view(1.0))
    assert first.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(1.0))
    agent.written({TEMPERATURE_SP: 55.0}, first.proposal_time_s)  # bumpless entry: the standing setpoint
    nxt = agent.advise(view(1.5))
    assert nxt.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(1.5))


def test_after_the_seeds_it_poses_a_problem_from_this_cycles_setpoint(agent):
    agent.advise(view(11.0))
    first = agent.advise(view(12.5))  # the model is asked in the background: the recipe meanwhile
    assert first.model_ok and first.inputs["fallback"] == "recipe" and "waiting" in first.inputs["model_error"]
    assert first.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(12.5))
    agent.wait_for_model()
    advice = agent.advise(view(13.0))
    assert isinstance(advice.problem, Problem) and advice.model_ok and advice.data_ok
    # anchored on what is written now, not on the read-back of the last write (48.0 in the view)
    assert advice.problem.state.setpoint_c == advice.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(13.0))
    assert advice.problem.state.seeds[3] > 0
    assert advice.problem.plan.cooling_left_s == pytest.approx((RECIPE.cooling_end_min - 13.0) * 60.0)
    assert {"G_um_per_min", "log10_B", "lambda", "spread_log10_G"} <= set(advice.predictions)
    start = advice.problem.state.setpoint_c
    agent.accept(Proposal(advice.problem.plant_time_s, start, (-3.0, -3.0, -3.0), 600.0, {"d43_um": 300.0}))
    switched = agent.advise(view(14.0))  # bumpless: the first value on the new plan is the old plan's
    assert switched.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(14.0))
    later = agent.advise(view(25.0))  # blended in over one move interval
    assert later.setpoints[TEMPERATURE_SP] == pytest.approx(start - 3.0 - 0.6)
    assert later.proposal_time_s == later.proposal_time_s and later.inputs["expected_d43_um"] == 300.0


def test_arriving_proposals_never_step_the_setpoint(agent):
    """A proposer that answers each problem one cycle later with the recipe's own rate: the written
    path must be the plain ramp (the old anchoring on the read-back stepped up at every arrival)."""
    _answered(agent, 23.0)  # on the recipe's 0.2 K/min ramp
    rate_k_per_min = 0.2
    written, pending = [], None
    for k in range(60):
        batch_min = 23.5 + 0.5 * k
        if pending is not None:
            agent.accept(pending)
        active = written[-1] if written else 48.0
        advice = agent.advise(view(batch_min, reactor_temperature_setpoint_active_c=active))
        value = advice.setpoints[TEMPERATURE_SP]
        agent.written(advice.setpoints, 1000.0 + batch_min * 60.0)
        written.append(value)
        pending = None
        if advice.problem is not None:
            p = advice.problem
            pending = Proposal(p.plant_time_s, p.state.setpoint_c, (-rate_k_per_min * 10.0,) * 3, 600.0)
    steps = [b - a for a, b in zip(written, written[1:])]
    assert max(steps) <= 1e-9  # never heats
    assert min(steps) >= -rate_k_per_min * 0.5 - 1e-6  # never faster than the plan's ramp


def test_at_the_end_of_cooling_the_setpoint_ramps_to_the_final_temperature(agent):
    advice = _answered(agent, 13.0)
    p = advice.problem
    # a plan that is still 3 K above the final temperature when the recipe's cooling ends
    end_min = RECIPE.cooling_end_min
    agent.accept(Proposal(p.plant_time_s, p.state.setpoint_c, (-1.0, -1.0, -1.0), 600.0,
                          cooling_end_s=1000.0 + (end_min + 15.0) * 60.0, final_temperature_c=RECIPE.final_temperature_c))
    values = []
    for k in range(int((end_min + 40.0 - 14.0) * 2)):
        batch_min = 14.0 + 0.5 * k
        a = agent.advise(view(batch_min))
        agent.written(a.setpoints, 1000.0 + batch_min * 60.0)
        values.append((batch_min, a.setpoints[TEMPERATURE_SP]))
    at_end = [v for t, v in values if t >= end_min]
    steps = [b - a for a, b in zip(at_end, at_end[1:])]
    assert at_end[0] > RECIPE.final_temperature_c + 1.0  # still above when the recipe's cooling ends
    assert min(steps) >= -0.5 * max(RECIPE.steps[-1].rate_k_per_min, 1.0) - 1e-9  # a ramp, not a step
    assert at_end[-1] == pytest.approx(RECIPE.final_temperature_c)


def test_held_freezes_and_only_idle_resets(agent, tmp_path):
    _answered(agent, 13.0)
    for k in range(10):
        agent.advise(view(14.0 + k, antisolvent_flow_kg_per_min=0.5))
    frozen = agent.estimate
    total = agent.antisolvent_per_water
    assert frozen is not None and total > 0
    held = agent.advise(view(None, held=True))
    assert held.setpoints is None and agent.estimate is frozen and agent.antisolvent_per_water == total
    # an hour held, then resumed: nothing was fed meanwhile, the seeds are not charged again
    resumed = agent.advise(view(24.0, antisolvent_flow_kg_per_min=0.5))
    assert resumed.setpoints is not None
    assert agent.estimate.seeded_at_s == frozen.seeded_at_s and agent.antisolvent_per_water == pytest.approx(total, rel=0.1)
    agent.advise(view(None))  # Idle
    assert agent.estimate is None and agent.antisolvent_per_water == 0.0


def test_the_estimate_survives_an_agent_restart_within_the_batch(tiny_checkpoint, tmp_path):
    from controller.agent import LogOnce, Recorder

    recorder = Recorder(None, tmp_path / "estimate.json", LogOnce())
    first = _model_agent(tiny_checkpoint, antisolvent=False)
    _answered(first, 13.0)
    for k in range(5):
        first.advise(view(14.0 + k))
        recorder.save_state(first.state, first.strategy.memory())
    saved = first.estimate
    first.close()
    restored, memory = recorder.load_state()
    assert json.dumps(restored.population.to_dict()) == json.dumps(saved.to_dict())
    assert memory["batch_start_s"] == restored.batch_start_s == 1000.0
    second = _model_agent(tiny_checkpoint, state=restored, antisolvent=False)
    second.advise(view(19.0))
    assert second.estimate is not None and second.estimate.seeded_at_s == saved.seeded_at_s
    second.close()
    # a later batch that starts at the same plant time (a restarted plant's clock) is not this one
    later = _model_agent(tiny_checkpoint, state=restored, antisolvent=False)
    later.advise(view(13.0))
    assert later.estimate is None or later.estimate.seeded_at_s != saved.seeded_at_s
    later.close()
    (tmp_path / "estimate.json").write_text("{not json")  # a corrupt file: a fresh estimate, no crash
    assert recorder.load_state() == (None, None)
    third = _model_agent(tiny_checkpoint, antisolvent=False)
    assert third.advise(view(19.0)).setpoints is not None and third.estimate.seeded_at_s == 1000.0 + 19.0 * 60.0
    third.close()


class _BlindModel:
    """A model that cannot answer (no facet graph, nothing it can use)."""

    version = "blind"

    def estimate(self, *args, **kwargs):
        from controller.kinetics_service import ModelUnavailable

        raise ModelUnavailable("no usable imaging facet statistics for the facet graph")


def test_when_the_model_cannot_answer_the_recipe_cools_the_batch(tiny_checkpoint):
    agent = _model_agent(tiny_checkpoint, service=_BlindModel(), antisolvent=False)
    for k in range(40):
        batch_min = 10.0 + k
        advice = agent.advise(view(batch_min))
        agent.wait_for_model()
        assert advice.model_ok and advice.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(batch_min))
    assert advice.inputs["fallback"] == "recipe" and "facet" in advice.inputs["model_error"]
    assert advice.setpoints[TEMPERATURE_SP] < RECIPE.setpoint_c(12.0)  # it cools
    agent.close()


def test_a_proposal_from_the_last_batch_is_not_followed_in_the_next(agent):
    old = _answered(agent, 13.0).problem
    agent.advise(view(None))  # the batch ended (Idle)
    fresh = agent.advise(view(5.0))
    stale = Proposal(old.plant_time_s - 10_000.0, 40.0, (-5.0, -5.0, -5.0), 600.0)
    agent.accept(stale)
    assert agent.proposal is None
    assert agent.advise(view(6.0)).setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(6.0))
    assert fresh.setpoints is not None


def test_bad_data_is_reported_not_hidden(agent):
    advice = agent.advise(view(20.0, concentration_g_per_kg=math.nan))
    assert not advice.data_ok and advice.problem is None


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
    # anchored on the rate written this cycle, not on the noisy flowmeter
    assert advice.problem.state.antisolvent_rate_kg_per_min == advice.setpoints[ANTISOLVENT_SP]
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
    agent.accept(Proposal(advice.problem.plant_time_s, advice.problem.state.setpoint_c, (-10.0, -10.0, -10.0), 600.0,
                          final_temperature_c=RECIPE.final_temperature_c, cooling_end_s=1000.0 + 50 * 60.0))
    batch_min, cold_at = 13.5, None
    while batch_min < 150.0:
        a = agent.advise(view(batch_min))
        if a.complete_batch:
            break
        if cold_at is None and a.setpoints[TEMPERATURE_SP] <= RECIPE.final_temperature_c + 0.05:
            cold_at = batch_min
            assert a.problem is None or True
        batch_min += 0.5
    assert cold_at is not None and cold_at < RECIPE.cooling_end_min
    assert batch_min == pytest.approx(cold_at + RECIPE.final_hold_min, abs=0.51)
    # without batch time in the objective the recipe ends the batch
    recipe_led = _model_agent(tiny_checkpoint, weight_batch_time_per_h=0.0, antisolvent=False)
    p = _answered(recipe_led, 13.0).problem
    recipe_led.accept(Proposal(p.plant_time_s, p.state.setpoint_c, (-10.0, -10.0, -10.0), 600.0))
    assert not any(recipe_led.advise(view(14.0 + k)).complete_batch for k in range(0, 180, 5))
    # at the recipe's end the batch is done (under remote control the plant waits for Complete)
    assert recipe_led.advise(view(RECIPE.duration_min)).complete_batch
    agent.close()
    recipe_led.close()


def test_a_plan_still_above_the_final_temperature_at_the_recipe_end_ramps_on_before_completing(agent):
    p = _answered(agent, 13.0).problem
    agent.accept(Proposal(p.plant_time_s, p.state.setpoint_c, (-0.5, -0.5, -0.5), 600.0))  # slow, holds after
    batch_min, done = 14.0, None
    while batch_min < RECIPE.duration_min + 200.0 and done is None:
        a = agent.advise(view(batch_min))
        agent.written(a.setpoints, 1000.0 + batch_min * 60.0)
        if a.complete_batch:
            done = (batch_min, a.setpoints[TEMPERATURE_SP])
        batch_min += 0.5
    assert done is not None and done[0] > RECIPE.duration_min  # not cut off at the recipe's end
    assert done[1] == pytest.approx(RECIPE.final_temperature_c)  # at the final temperature


class _HungModel:
    """A model whose first query never returns (a stuck device); later ones answer."""

    version = "hung"

    def __init__(self, real) -> None:
        import threading

        self.real, self.calls, self.release = real, 0, threading.Event()

    def estimate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            self.release.wait(30.0)
        return self.real.estimate(*args, **kwargs)


def test_a_hung_model_query_is_abandoned_and_the_recipe_followed_meanwhile(tiny_checkpoint):
    import time

    from controller.kinetics_service import KineticsService

    hung = _HungModel(KineticsService.load(tiny_checkpoint, "KCl", device="cpu"))
    agent = _model_agent(tiny_checkpoint, service=hung, antisolvent=False, model_timeout_s=0.2)
    agent.advise(view(13.0))  # asks; the query hangs
    time.sleep(0.3)
    timed_out = agent.advise(view(13.5))
    assert "timed out" in timed_out.inputs["model_error"] and timed_out.inputs["fallback"] == "recipe"
    assert timed_out.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(13.5))
    agent.advise(view(14.0))  # asks again, on a fresh thread
    agent.wait_for_model()
    answered = agent.advise(view(14.5))
    assert answered.problem is not None and "fallback" not in answered.inputs and hung.calls >= 2
    hung.release.set()
    agent.close()


def test_switching_to_a_slower_plan_blends_without_heating():
    from controller.strategy import PathFollower

    fast = lambda t: 50.0 - 0.02 * t  # noqa: E731  (1.2 K/min)
    slow = lambda t: 50.2 - 0.0001 * t  # noqa: E731  (0.006 K/min, above the fast plan at the switch)
    plain, cooling = PathFollower(600.0), PathFollower(600.0, non_increasing=True)
    for follower in (plain, cooling):
        follower.value("fast", fast, 0.0)
        follower.value("fast", fast, 10.0)
    path = {f: [f.value("slow", slow, 10.0 + k) for k in range(0, 300, 5)] for f in (plain, cooling)}
    assert path[plain][0] == pytest.approx(fast(10.0)) == path[cooling][0]  # bumpless at the switch
    assert max(b - a for a, b in zip(path[plain], path[plain][1:])) > 0  # blending alone heats here
    assert max(b - a for a, b in zip(path[cooling], path[cooling][1:])) <= 0.0  # a cooling design does not


# ---------------------------------------------------------------------------- the cascade
KCL_CONSTANTS = MaterialConstants.for_material("KCl")


def _cascade_agent(tiny_checkpoint, **kwargs) -> Loop:
    from controller.kinetics_service import KineticsService
    from controller.settings import BaselineSettings

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    return Loop(ModelPredictive(RECIPE, service, KCL_CONSTANTS, ProposerSettings(antisolvent=False),
                                max_heating_k_per_min=0.0, inner=BaselineSettings(), **kwargs))


def _at_sigma(temperature_c: float, sigma: float, **values) -> dict:
    """Signals of a reactor at ``temperature_c`` whose solution sits at ``sigma``."""
    c = float(KCL_CONSTANTS.solubility_g_per_kg(temperature_c)) * math.exp(sigma)
    return {"reactor_temperature_c": temperature_c, "reactor_temperature_setpoint_active_c": temperature_c,
            "concentration_g_per_kg": c, **values}


def test_the_cascade_runs_the_recipe_then_the_supersaturation_loop_at_its_own_setpoint_without_a_plan(tiny_checkpoint):
    from controller.baselines import program_start
    from controller.settings import BaselineSettings

    a = _cascade_agent(tiny_checkpoint)
    try:
        assert a.strategy.cascade
        start_min, start_c = program_start(RECIPE)
        before = a.advise(view(start_min - 2.0, **_at_sigma(49.0, 0.002)))
        assert before.setpoints[TEMPERATURE_SP] == pytest.approx(RECIPE.setpoint_c(start_min - 2.0))
        limit = a.strategy.settings.metastable_sigma_limit
        # in the programme, the solution below the loop's setpoint: it cools, within its rate
        first = a.advise(view(start_min, **_at_sigma(49.0, 0.002)))
        second = a.advise(view(start_min + 1.0, **_at_sigma(49.0, 0.002)))
        assert second.inputs["sigma_setpoint"] == pytest.approx(BaselineSettings().ssc_sigma_setpoint_rel_limit * limit)
        drop = first.setpoints[TEMPERATURE_SP] - second.setpoints[TEMPERATURE_SP]
        assert 0.0 < drop <= BaselineSettings().ssc_max_cooling_k_per_min + 1e-9
        # above the setpoint it stops cooling; with no concentration it holds
        over = a.advise(view(start_min + 2.0, **_at_sigma(49.0, 1.5 * limit)))
        assert over.setpoints[TEMPERATURE_SP] <= second.setpoints[TEMPERATURE_SP]
        assert over.inputs["ssc_cooling_rate_k_per_min"] < 0.5 * BaselineSettings().ssc_max_cooling_k_per_min
        blind = a.advise(view(start_min + 3.0, **_at_sigma(49.0, 0.002, concentration_g_per_kg=math.nan)))
        assert blind.setpoints[TEMPERATURE_SP] == pytest.approx(over.setpoints[TEMPERATURE_SP])
        assert not blind.data_ok and blind.problem is None
    finally:
        a.close()


def test_the_cascade_follows_its_plan_s_setpoints_poses_cascade_problems_and_ends_after_the_plan_s_hold(tiny_checkpoint):
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint)
    try:
        start_min, _ = program_start(RECIPE)
        limit = a.strategy.settings.metastable_sigma_limit
        a.advise(view(start_min - 1.0, **_at_sigma(49.0, 0.002)))
        a.advise(view(start_min - 0.5, **_at_sigma(49.0, 0.002)))
        a.wait_for_model()
        posed = a.advise(view(start_min, **_at_sigma(49.0, 0.002)))
        assert posed.problem is not None and posed.problem.cascade is not None
        assert posed.problem.cascade.switch_c == pytest.approx(0.5 * (49.0 + 20.0))
        plan = Proposal(posed.problem.plant_time_s, 49.0, (), 600.0, {"cost": 1.0},
                        sigma_setpoints=(0.5 * limit, 0.8 * limit), switch_c=34.5, final_hold_s=600.0)
        a.accept(plan)
        hot = a.advise(view(start_min + 1.0, **_at_sigma(45.0, 0.002)))
        cold = a.advise(view(start_min + 2.0, **_at_sigma(30.0, 0.002)))
        assert hot.inputs["sigma_setpoint"] == pytest.approx(0.5 * limit)
        assert cold.inputs["sigma_setpoint"] == pytest.approx(0.8 * limit)
        # at the final temperature: the plan's hold, then the batch is complete
        a.strategy._advised[TEMPERATURE_SP] = 20.0
        t = start_min + 10.0
        arrived = a.advise(view(t, **_at_sigma(20.0, 0.002)))
        assert arrived.setpoints[TEMPERATURE_SP] == pytest.approx(20.0) and not arrived.complete_batch
        assert not a.advise(view(t + 9.0, **_at_sigma(20.0, 0.002))).complete_batch
        assert a.advise(view(t + 10.5, **_at_sigma(20.0, 0.002))).complete_batch
    finally:
        a.close()


def _cascade_with_plan(tiny_checkpoint, setpoint_rel_limit: float, **kwargs) -> tuple[Loop, float, float]:
    """A cascade agent at its programme's start with a plan at a fraction of the limit and a
    10-minute hold: (the agent, the programme's start in batch minutes, the limit)."""
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint, **kwargs)
    start_min, _ = program_start(RECIPE)
    limit = a.strategy.settings.metastable_sigma_limit
    a.advise(view(start_min, **_at_sigma(49.0, 0.002)))
    a.accept(Proposal(1000.0 + start_min * 60.0, 49.0, (), 600.0, {"cost": 1.0},
                      sigma_setpoints=(setpoint_rel_limit * limit,) * 2, switch_c=34.5, final_hold_s=600.0))
    return a, start_min, limit


def test_the_cascade_s_hold_starts_when_the_reactor_is_there_and_a_stalled_reactor_ends_the_batch(tiny_checkpoint):
    a, start_min, _ = _cascade_with_plan(tiny_checkpoint, 0.8)
    try:
        a.strategy._advised[TEMPERATURE_SP] = 20.0  # the setpoint is at the final temperature
        t = start_min + 100.0
        # a jacket that cannot follow: the reactor 3 K above, the solution still crystallising
        # fast (its concentration falling 1 g/kg a minute): the batch goes on
        c0 = float(KCL_CONSTANTS.solubility_g_per_kg(23.0)) + 5.0
        falling = [a.advise(view(t + k, reactor_temperature_c=23.0, concentration_g_per_kg=c0 - 1.0 * k))
                   for k in range(0, 10)]
        assert not any(adv.complete_batch for adv in falling)
        assert falling[-1].inputs["creep_yield_gain_times_batch_time"] > 1.0
        # then the solution stops falling (the reactor stalled): hours per yield would only
        # rise from here, and the batch ends
        stalled = [a.advise(view(t + 10 + k, reactor_temperature_c=23.0, concentration_g_per_kg=c0 - 9.0))
                   for k in range(0, 12)]
        assert stalled[-1].complete_batch
        assert stalled[-1].inputs["creep_yield_gain_times_batch_time"] < 1.0
    finally:
        a.close()

    # a jacket that never gets there while the solution keeps crystallising: the recipe's final
    # hold from the setpoint's arrival is the wait, and the batch ends with it (not the plan's
    # 10-minute hold once more after it)
    a, start_min, _ = _cascade_with_plan(tiny_checkpoint, 0.8)
    try:
        a.strategy._advised[TEMPERATURE_SP] = 20.0
        t = start_min + 100.0
        hold_min = RECIPE.final_hold_min
        c0 = float(KCL_CONSTANTS.solubility_g_per_kg(23.0)) + 1.0 * hold_min + 5.0
        creeping = [a.advise(view(t + 0.5 * k, reactor_temperature_c=23.0, concentration_g_per_kg=c0 - 0.5 * k))
                    for k in range(0, int(2 * hold_min) + 2)]
        ended = [k for k, adv in enumerate(creeping) if adv.complete_batch]
        assert ended and 0.5 * ended[0] == pytest.approx(hold_min, abs=0.51)
    finally:
        a.close()

    # a reactor that gets there starts the plan's hold, and the batch completes after it
    a, start_min, _ = _cascade_with_plan(tiny_checkpoint, 0.8)
    try:
        a.strategy._advised[TEMPERATURE_SP] = 20.0
        t = start_min + 100.0
        there = [a.advise(view(t + k, **_at_sigma(20.2, 0.002))) for k in range(0, 10)]
        assert not any(adv.complete_batch for adv in there)
        assert a.advise(view(t + 10.5, **_at_sigma(20.2, 0.002))).complete_batch
    finally:
        a.close()


@pytest.mark.parametrize("time_limited", [False, True])
def test_a_yield_floor_holds_the_batch_until_the_analyser_reads_it(tiny_checkpoint, time_limited):
    """With a yield floor in the specification the plan's hold is not the end: the batch ends
    once the measured liquor is within the floor of what the colder of the final temperature
    and the reactor's allows (the plant's batch record counts an undershoot's colder liquor), or
    on the plant's time limit."""
    from conf.contract.process import ProductSpecification

    a, start_min, _ = _cascade_with_plan(tiny_checkpoint, 0.8, specification=ProductSpecification(max_yield_loss=0.01))
    try:
        a.strategy._advised[TEMPERATURE_SP] = 20.0
        t = start_min + 100.0
        if time_limited:  # the plant's limit half a minute after the last of these cycles
            a.strategy.batch_time_limit_s = (t + 14.5) * 60.0 + 30.0
        # the jacket's loop undershot to 19.6 C; the liquor still 0.006 over its solubility there:
        # 2 g/kg of some 90 recoverable, a loss twice the floor
        still = [a.advise(view(t + 0.5 * k, **_at_sigma(19.6, 0.006))) for k in range(0, 30)]
        if time_limited:  # the plan's hold is over and the plant's limit less than a minute away
            assert still[-1].complete_batch
            return
        assert not any(adv.complete_batch for adv in still)  # the plan's 10-minute hold is long over
        assert 0.97 < still[-1].inputs["measured_yield"] < 0.99
        # the liquor at a yield of 0.992, read +-0.6 g/kg: over the floor by less than two of the
        # reading's standard errors, which the first noisy reading over it is not taken for
        c0 = a.state.population.seed_solute_g_per_kg_water
        c_star = float(KCL_CONSTANTS.solubility_g_per_kg(19.6))
        at_floor = c0 - 0.992 * (c0 - c_star)
        noisy = [a.advise(view(t + 15.0 + 0.5 * k, reactor_temperature_c=19.6, reactor_temperature_setpoint_active_c=19.6,
                               concentration_g_per_kg=at_floor + (0.6 if k % 2 else -0.6)))
                 for k in range(0, 12)]
        assert not any(adv.complete_batch for adv in noisy)
        assert noisy[-1].inputs["measured_yield"] > 0.99 - noisy[-1].inputs["measured_yield_std"]
        assert noisy[-1].inputs["measured_yield_std"] > 0.002
        t += 6.0
        # the liquor desupersaturates at 19.6 C: the floor is read, the batch ends
        done = [a.advise(view(t + 15.0 + 0.5 * k, **_at_sigma(19.6, 0.0005))) for k in range(0, 16)]
        assert done[-1].complete_batch
        assert done[-1].inputs["measured_yield"] > 0.99
    finally:
        a.close()


def _cascade_at_its_programme(tiny_checkpoint, final_hold_s: float = 600.0) -> tuple[Loop, float, float]:
    """A cascade agent a minute before its programme starts, its model answered, with a plan at
    0.9 of the limit and ``final_hold_s``: (the agent, the programme's start in batch minutes,
    the limit)."""
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint)
    start_min, _ = program_start(RECIPE)
    limit = a.strategy.settings.metastable_sigma_limit
    a.advise(view(start_min - 1.0, **_at_sigma(49.0, 0.002)))
    a.wait_for_model()
    a.accept(Proposal(1000.0 + start_min * 60.0, 49.0, (), 600.0, {"cost": 1.0},
                      sigma_setpoints=(0.9 * limit, 0.9 * limit), switch_c=34.5, final_hold_s=final_hold_s))
    return a, start_min, limit


def test_the_cascade_tapers_into_the_final_temperature_and_charges_its_plan_the_loop_s_tracking_error(tiny_checkpoint):
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint)
    try:
        start_min, _ = program_start(RECIPE)
        limit = a.strategy.settings.metastable_sigma_limit
        a.advise(view(start_min - 1.0, **_at_sigma(49.0, 0.002)))  # before the programme: no trend yet
        a.wait_for_model()
        a.accept(Proposal(1000.0 + start_min * 60.0, 49.0, (), 600.0, {"cost": 1.0},
                          sigma_setpoints=(0.9 * limit, 0.9 * limit), switch_c=34.5, final_hold_s=600.0))
        # the approach (far below the setpoint) is not tracking: no margin yet
        t = start_min
        approach = a.advise(view(t, **_at_sigma(45.0, 0.002)))
        assert approach.inputs["sigma_tracking_std"] == 0.0
        assert approach.problem is not None and approach.problem.cascade.peak_margin == 0.0
        # tracking: readings that flip +-10 % about the setpoint each cycle are the analyser's
        # noise (averaged over 2 min: less of it counts); a solution that wanders +-10 % for
        # minutes at a time is the loop's
        def at(k: int, relative: float):  # the reactor where the loop's setpoint is
            reactor_c = a.strategy._advised.get(TEMPERATURE_SP, 45.0)
            return a.advise(view(t + 0.5 * k, **_at_sigma(reactor_c, 0.9 * limit * (1.0 + relative))))

        for k in range(1, 80):
            adv = at(k, 0.1 if k % 2 else -0.1)
        noise_only = adv.inputs["sigma_tracking_std"]
        for k in range(80, 240):
            adv = at(k, 0.1 if (k // 16) % 2 else -0.1)
        assert adv.inputs["sigma_tracking_std"] == pytest.approx(0.1 * 0.9 * limit, rel=0.3)
        assert adv.inputs["sigma_tracking_std"] > 1.2 * noise_only
        assert adv.problem.cascade.peak_margin == pytest.approx(
            2.0 * math.hypot(adv.inputs["sigma_tracking_std"], adv.inputs["sigma_jitter_std"]))
        # a kelvin above the final temperature with the solution far under its setpoint, the loop
        # would cool at its fastest; it tapers in (rate <= distance left / cascade_final_approach_min)
        a.strategy._advised[TEMPERATURE_SP] = 21.0
        for k in range(12):
            previous = a.strategy._advised[TEMPERATURE_SP]
            near = a.advise(view(t + 121.0 + 0.5 * k, **_at_sigma(previous, 0.001)))
            allowed = (previous - 20.0 + 0.05) / a.strategy.settings.cascade_final_approach_min
            assert near.inputs["ssc_cooling_rate_k_per_min"] <= allowed + 1e-9
        assert 0.0 < near.inputs["ssc_cooling_rate_k_per_min"] < BaselineSettings().ssc_max_cooling_k_per_min
        assert 20.0 < near.setpoints[TEMPERATURE_SP] < 20.5
    finally:
        a.close()


@pytest.mark.parametrize("jitter_k", [0.0, 0.2])
def test_the_plan_keeps_the_supersaturation_the_loop_s_temperature_jitter_makes_from_the_limit(tiny_checkpoint,
                                                                                                jitter_k):
    """What the loop feeds back sits at its setpoint (no tracking error), but the reactor jitters
    about its ramp: the true supersaturation moves by the solubility's log-slope times that, which
    the plan's margin keeps clear of the limit; a reactor on a steady ramp adds nothing."""
    a, start_min, limit = _cascade_at_its_programme(tiny_checkpoint)
    try:
        for k in range(1, 120):
            reactor_c = 45.0 - 0.3 * 0.5 * k + (jitter_k if (k // 2) % 2 else -jitter_k)
            adv = a.advise(view(start_min + 0.5 * k, **_at_sigma(reactor_c, 0.9 * limit)))
        log_slope = math.log(float(KCL_CONSTANTS.solubility_g_per_kg(reactor_c + 0.5))
                             / float(KCL_CONSTANTS.solubility_g_per_kg(reactor_c - 0.5)))
        jitter = adv.inputs["sigma_jitter_std"]
        assert jitter == pytest.approx(log_slope * jitter_k, rel=0.15, abs=1e-6)
        assert adv.problem.cascade.peak_margin >= 2.0 * jitter
        if jitter_k:
            assert jitter > 0.1 * limit  # 0.2 K on KCl near 30 C: a tenth of the metastable width
    finally:
        a.close()


def test_a_plan_that_ends_on_arrival_is_not_tapered_into_the_final_temperature(tiny_checkpoint):
    a, start_min, limit = _cascade_at_its_programme(tiny_checkpoint, final_hold_s=0.0)
    try:
        a.strategy._advised[TEMPERATURE_SP] = 20.5
        t = start_min + 120.0
        near = a.advise(view(t, **_at_sigma(20.5, 0.001)))
        # half a kelvin left: the taper would allow (0.5 + 0.05) / 4 K/min; a batch that ends on
        # arrival ends before the overshoot the taper is for, and the loop cools at its own pace
        taper = (0.5 + 0.05) / a.strategy.settings.cascade_final_approach_min
        assert near.inputs["ssc_cooling_rate_k_per_min"] > 1.5 * taper
    finally:
        a.close()


def test_only_the_loop_s_overshoots_while_it_tracks_take_the_limit_s_margin(tiny_checkpoint):
    a, start_min, limit = _cascade_at_its_programme(tiny_checkpoint)
    try:
        t = start_min

        def at(k: int, relative: float):
            reactor_c = a.strategy._advised.get(TEMPERATURE_SP, 45.0)
            return a.advise(view(t + 0.5 * k, **_at_sigma(reactor_c, 0.9 * limit * (1.0 + relative))))

        # a loop that wanders under its setpoint (5-20 % under, for minutes at a time) keeps
        # further from the limit, not closer: no margin
        for k in range(1, 120):
            under = at(k, -0.05 if (k // 16) % 2 else -0.2)
        assert under.inputs["sigma_tracking_std"] == pytest.approx(0.0, abs=1e-12)
        # a drifting analyser reads the solution far over its setpoint (more than the loop's
        # integral band) for half an hour: the loop holds; it is not tracking, and the margin
        # is not charged for it (only the minutes its average passes through the band: charged,
        # the overshoot of 0.9 x limit would be a margin of 2 x 1.3 x that)
        for k in range(120, 180):
            fault = at(k, 1.0)
        assert fault.inputs["sigma_tracking_std"] < 0.1 * limit
        # overshoots within the band while it tracks are the loop's
        for k in range(180, 300):
            wander = at(k, 0.1 if (k // 16) % 2 else -0.1)
        assert wander.inputs["sigma_tracking_std"] == pytest.approx(0.1 * 0.9 * limit, rel=0.3)
    finally:
        a.close()


def test_the_loop_judges_where_the_reactor_heads_net_of_the_uptake_on_the_way(tiny_checkpoint):
    """The reactor lags its setpoint: the loop feeds back the supersaturation the solution
    reaches once the reactor gets there, which counts the crystals' uptake meanwhile (measured
    as the concentration's fall) as well as the cooling."""
    a, start_min, limit = _cascade_at_its_programme(tiny_checkpoint)
    try:
        # a reactor cooling at 0.3 K/min, its solution at 0.01, the concentration falling
        # 1.5 g/kg a minute (its solubility's pace at this rate, near the same supersaturation)
        rate, sigma, uptake = 0.3, 0.01, 1.5
        for k in range(16):
            reactor_c = 45.0 - rate * 0.5 * k
            c = float(KCL_CONSTANTS.solubility_g_per_kg(45.0)) * math.exp(sigma) - uptake * 0.5 * k
            a.strategy._advised[TEMPERATURE_SP] = reactor_c - 0.5  # the setpoint 0.5 K ahead of the reactor
            adv = a.advise(view(start_min + 0.5 * k, reactor_temperature_c=reactor_c,
                                reactor_temperature_setpoint_active_c=reactor_c - 0.5, concentration_g_per_kg=c))
        heading_c = reactor_c - a.strategy.settings.cascade_lookahead_k  # the setpoint is further
        now_c = a.strategy._concentration_now(a.state, None)
        by_cooling_only = math.log(now_c / float(KCL_CONSTANTS.solubility_g_per_kg(heading_c)))
        by_uptake_too = math.log((now_c - uptake * a.strategy.settings.cascade_lookahead_k / rate)
                                 / float(KCL_CONSTANTS.solubility_g_per_kg(heading_c)))
        assert adv.inputs["sigma_at_setpoint"] == pytest.approx(by_uptake_too, abs=2e-4)
        assert by_uptake_too < by_cooling_only - 0.0015  # 0.75 g/kg taken up on the way: a tenth of the limit
    finally:
        a.close()


@pytest.mark.parametrize("heating", [False, True])
def test_over_the_limit_the_cascade_heats_only_where_the_guard_lets_it_and_holds_once_back_under(tiny_checkpoint,
                                                                                                heating):
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint, cascade_heating=heating)
    try:
        start_min, _ = program_start(RECIPE)
        limit = a.strategy.settings.metastable_sigma_limit
        most = a.strategy.settings.cascade_max_heating_k_per_min

        def at(minutes: float, sigma: float, lag_k: float = 3.0):  # the reactor lagging its setpoint
            reactor_c = a.strategy._advised.get(TEMPERATURE_SP, 45.0) + lag_k
            return a.advise(view(start_min + minutes, **_at_sigma(reactor_c, sigma)))

        for k in range(6):
            before = at(0.5 * k, 0.5 * limit)  # cooling, the solution under the setpoint
        # a growth stall: the solution stops falling while the reactor, lagging its setpoint,
        # cools on past the limit
        c_stalled = float(a.state.concentration_g_per_kg)
        reactor_c = float(a.state.temperature_c)
        previous, rises, minutes = before, [], 3.0
        while math.log(c_stalled / float(KCL_CONSTANTS.solubility_g_per_kg(reactor_c))) < 1.6 * limit:
            reactor_c -= 0.1
            minutes += 0.5
            over = a.advise(view(start_min + minutes, reactor_temperature_c=reactor_c,
                                 reactor_temperature_setpoint_active_c=reactor_c, concentration_g_per_kg=c_stalled))
            rises.append(over.setpoints[TEMPERATURE_SP] - previous.setpoints[TEMPERATURE_SP])
            previous = over
        rise = max(rises)
        if heating:
            assert 0.0 < rise <= 0.5 * most + 1e-9  # one cycle's heating at most
        else:
            assert rise <= 1e-9  # cooling only: it stops
        back = at(minutes + 0.5, 0.5 * limit, lag_k=0.0)  # under the setpoint again: it cools, never heats
        assert back.setpoints[TEMPERATURE_SP] <= over.setpoints[TEMPERATURE_SP] + 1e-9
    finally:
        a.close()


def test_the_cascade_never_heats_on_a_concentration_that_rises(tiny_checkpoint):
    """A closed cooling batch's solution only loses solute: a reading that climbs over the limit
    is the analyser drifting (a drifting ATR once had the loop heat the batch 8 K and dissolve
    product). The loop stops cooling and holds; it does not heat."""
    from controller.baselines import program_start

    a = _cascade_agent(tiny_checkpoint, cascade_heating=True)
    try:
        start_min, _ = program_start(RECIPE)
        limit = a.strategy.settings.metastable_sigma_limit
        setpoints, crossed = [], False
        for k in range(24):  # the reactor lags its setpoint by 3 K; the reading climbs 1 g/kg a cycle
            reactor_c = a.strategy._advised.get(TEMPERATURE_SP, 45.0) + 3.0
            c = float(KCL_CONSTANTS.solubility_g_per_kg(reactor_c)) * math.exp(0.5 * limit) + 1.0 * k
            adv = a.advise(view(start_min + 0.5 * k, reactor_temperature_c=reactor_c,
                                reactor_temperature_setpoint_active_c=reactor_c, concentration_g_per_kg=c))
            setpoints.append(adv.setpoints[TEMPERATURE_SP])
            crossed = crossed or math.log(c / float(KCL_CONSTANTS.solubility_g_per_kg(reactor_c))) > 1.2 * limit
        assert crossed
        assert all(b <= a_ + 1e-9 for a_, b in zip(setpoints, setpoints[1:]))  # never up
    finally:
        a.close()
