"""The BoTorch proposer: bounds, the supersaturation constraint, the reference path, the worker."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import numpy as np
import pytest

from controller.proposer import Problem, Proposal, ProposerWorker, propose, reference_moves
from controller.rollout import BatchPlan, MaterialConstants, PopulationState, seed_moments
from controller.settings import ProposerSettings

KCL = MaterialConstants.for_material("KCl")
GROWTH = np.array([[math.log(60.0), 1.2, 2000.0], [math.log(40.0), 1.0, 2000.0]])
NUCLEATION = np.array([[4.0, 2.0, 0.0], [3.5, 2.0, 0.0]])


def problem(max_antisolvent_kg_per_min: float = 0.0, **settings) -> Problem:
    csat50 = float(KCL.solubility_g_per_kg(50.0))
    state = PopulationState(47.0, float(KCL.solubility_g_per_kg(47.5)), seed_moments(4e-3, 100.0, 20.0, KCL),
                            (0.0,) * 6)
    plan = BatchPlan(time_left_s=3.0 * 3600, cooling_left_s=2.5 * 3600, final_temperature_c=20.0,
                     charged_concentration_g_per_kg=csat50, move_interval_s=600.0, step_s=120.0,
                     target_size_um=300.0)
    s = dataclasses.replace(ProposerSettings(time_budget_s=2.0), **settings)
    return Problem(1000.0, state, plan, KCL, GROWTH, NUCLEATION, s, max_cooling_k_per_min=1.0,
                   max_heating_k_per_min=0.2, max_antisolvent_kg_per_min=max_antisolvent_kg_per_min)


def test_setpoint_at_interpolates_within_each_move_and_holds_after():
    p = Proposal(100.0, 40.0, (-2.0, -1.0), 600.0)
    assert p.setpoint_at(50.0) == 40.0  # before it was made: where it starts
    assert p.setpoint_at(400.0) == pytest.approx(39.0)
    assert p.setpoint_at(700.0) == pytest.approx(38.0)
    assert p.setpoint_at(1000.0) == pytest.approx(37.5)
    assert p.setpoint_at(5000.0) == pytest.approx(37.0)
    # with the end of cooling known, after the moves it ramps on to the final temperature as rolled out
    ramp = Proposal(100.0, 40.0, (-2.0, -1.0), 600.0, cooling_end_s=2300.0, final_temperature_c=20.0)
    assert ramp.setpoint_at(1300.0) == pytest.approx(37.0)
    assert ramp.setpoint_at(1800.0) == pytest.approx(37.0 - 17.0 * 500.0 / 1000.0)
    assert ramp.setpoint_at(2300.0) == pytest.approx(20.0) and ramp.setpoint_at(9000.0) == pytest.approx(20.0)


def test_reference_moves_are_the_linear_ramp_to_the_final_temperature():
    pr = problem()
    rate = (20.0 - 47.0) / (2.5 * 3600)  # K per s
    np.testing.assert_allclose(reference_moves(pr), np.full(3, rate * 600.0))


def test_proposal_stays_within_the_rate_bounds_and_is_deterministic():
    pr = problem()
    a, b = propose(pr), propose(pr)
    assert len(a.moves_k) == 3
    assert all(-10.0 - 1e-9 <= m <= 2.0 + 1e-9 for m in a.moves_k)  # 1 K/min cooling, 0.2 K/min heating
    assert a.moves_k == b.moves_k
    assert set(a.expected) >= {"d43_um", "cv", "fines", "yield", "peak_sigma", "cost", "feasibility"}


def test_the_supersaturation_limit_holds_back_what_the_objective_wants():
    # Batch time is dear here, so without a real limit the best is to cool as fast as allowed.
    loose = propose(problem(metastable_sigma_limit=0.5, weight_batch_time_per_h=0.5))
    tight = propose(problem(metastable_sigma_limit=0.08, weight_batch_time_per_h=0.5))
    assert loose.expected["peak_sigma"] > 0.08
    assert tight.expected["peak_sigma"] <= 0.8 * 0.08 and tight.expected["feasibility"] == 1.0  # with the margin
    assert tight.cooling_end_s > loose.cooling_end_s + 1000.0  # it cools for longer


@pytest.mark.parametrize("in_process", [False, True], ids=["process", "thread"])
def test_the_worker_answers_like_the_function(in_process):
    # in_process: the lockstep harness's thread in the agent's own process
    pr = problem(time_budget_s=1.0)

    async def go():
        worker = ProposerWorker(in_process=in_process)
        try:
            await worker.warm_up()
            return await worker.propose(pr)
        finally:
            worker.close()

    remote = asyncio.run(go())
    assert remote.moves_k == propose(pr).moves_k


def test_antisolvent_rates_stay_in_bounds_and_cost_what_they_cost():
    free = propose(problem(max_antisolvent_kg_per_min=1.0, weight_antisolvent=0.0, metastable_sigma_limit=0.5))
    assert len(free.antisolvent_kg_per_min) == 3
    assert all(0.0 <= f <= 1.0 for f in free.antisolvent_kg_per_min)
    dear = propose(problem(max_antisolvent_kg_per_min=1.0, weight_antisolvent=100.0, metastable_sigma_limit=0.5))
    assert dear.antisolvent_kg_per_min == (0.0, 0.0, 0.0) or max(dear.antisolvent_kg_per_min) < 1e-3
    assert dear.expected["antisolvent_kg_per_kg"] < 1e-3
    # no writable antisolvent setpoint, or switched off: the rate is no decision variable
    assert propose(problem()).antisolvent_kg_per_min == ()
    assert propose(problem(max_antisolvent_kg_per_min=1.0, antisolvent=False)).antisolvent_kg_per_min == ()


def test_batch_time_in_the_objective_ends_cooling_sooner():
    pr = problem(weight_batch_time_per_h=0.0, metastable_sigma_limit=0.5)
    recipe_end = pr.plant_time_s + pr.plan.cooling_left_s
    assert propose(pr).cooling_end_s == pytest.approx(recipe_end)  # not a decision: the recipe's end
    hurried = propose(problem(weight_batch_time_per_h=0.5, metastable_sigma_limit=0.5))
    assert hurried.cooling_end_s < recipe_end - 1800.0
    assert hurried.expected["batch_time_left_h"] < pr.plan.time_left_s / 3600.0 - 0.5
    # never faster than the allowed cooling rate: 27 K at 1 K/min
    assert hurried.cooling_end_s - pr.plant_time_s >= 27.0 * 60.0 - 1e-6


def test_when_nothing_is_feasible_the_smaller_overshoot_is_chosen():
    pr = problem(metastable_sigma_limit=1e-4)  # below what any path can keep
    out = propose(pr)
    assert out.expected["feasibility"] == 0.0
    from controller.proposer import _evaluate
    import torch

    ref = torch.tensor([list(reference_moves(pr)) + [1.0]], dtype=torch.float64)
    ref_out, _, _ = _evaluate(pr, ref, torch.as_tensor(GROWTH), torch.as_tensor(NUCLEATION))
    assert out.expected["peak_sigma"] <= float(ref_out.peak_sigma.max()) + 1e-12


def test_a_hung_worker_is_killed_and_replaced():
    from controller.proposer import ProposerTimeout

    slow = problem(time_budget_s=1.0, proposal_timeout_s=0.05)  # no proposal is that fast

    async def go():
        worker = ProposerWorker()
        try:
            await worker.warm_up()
            first_pid = next(iter(worker._pool._processes))
            with pytest.raises(ProposerTimeout):
                await worker.propose(slow)
            assert worker.restarts == 1
            answer = await worker.propose(problem(time_budget_s=0.5))  # the new worker answers
            return first_pid, next(iter(worker._pool._processes)), answer
        finally:
            worker.close()

    old, new, answer = asyncio.run(go())
    assert old != new and answer.moves_k


def cascade_problem(nucleation=NUCLEATION, held_s: float = 0.0, **settings) -> Problem:
    from conf.contract.process import ProductSpecification
    from controller.proposer import Cascade

    base = problem(**settings)
    cascade = Cascade(metastable_sigma_limit=0.015, specification=ProductSpecification(), target_size_um=0.0,
                      elapsed_s=1800.0, horizon_s=24 * 3600.0, recipe_hold_s=1800.0, switch_c=35.0,
                      max_cooling_k_per_min=0.5, held_s=held_s)
    return dataclasses.replace(base, nucleation=np.asarray(nucleation, dtype=float), cascade=cascade)


def test_a_cascade_plan_chooses_setpoints_and_a_hold_from_its_grid_by_the_benchmark_s_objective():
    from controller.proposer import propose_cascade

    p = cascade_problem()
    plan = propose(p)
    again = propose_cascade(p)  # deterministic, and propose dispatches on the problem
    assert dataclasses.replace(again, duration_s=plan.duration_s) == plan
    s = p.settings
    allowed = {round(f * 0.015, 12) for f in s.cascade_sigma_rel_limit}
    assert {round(v, 12) for v in plan.sigma_setpoints} <= allowed and len(plan.sigma_setpoints) == 2
    assert any(plan.final_hold_s == pytest.approx(f * 1800.0) for f in s.cascade_hold_fractions)
    assert plan.sigma_setpoint_at(40.0) == plan.sigma_setpoints[0] and plan.sigma_setpoint_at(30.0) == plan.sigma_setpoints[1]
    assert plan.moves_k == () and math.isfinite(plan.expected["cost"])
    # little nucleation: nothing to fear from driving force, so the plan drives hardest
    assert tuple(round(v, 12) for v in plan.sigma_setpoints) == (max(allowed), max(allowed))


def test_a_cascade_plan_backs_off_where_the_model_says_the_driving_force_makes_fines():
    calm = propose(cascade_problem())
    # nucleation that climbs steeply with the driving force (primary-like, sigma^8): the top
    # setpoint would breed fines past the release window, a lower one does not
    steep = np.array([[19.0, 8.0, 0.0], [18.7, 8.0, 0.0]])
    violent = propose(cascade_problem(nucleation=steep))
    assert max(violent.sigma_setpoints) < min(calm.sigma_setpoints)
    assert violent.expected["fines"] < 0.01  # inside the window


def test_a_cascade_plan_keeps_its_setpoints_the_loop_s_tracking_error_from_the_limit():
    ideal = propose(cascade_problem())
    p = cascade_problem()
    # the loop wanders 0.001 (rms) about its setpoint: two of those are charged on the peak
    wandering = propose(dataclasses.replace(p, cascade=dataclasses.replace(p.cascade, peak_margin=0.002)))
    assert max(wandering.sigma_setpoints) + 0.002 <= 0.015 < max(ideal.sigma_setpoints) + 0.002
    # the levels above the clear top come down to it, not to the grid's next level under it
    # (0.85 x 0.015 would leave 0.0005 unused)
    assert max(wandering.sigma_setpoints) == pytest.approx(0.015 - 0.002)
    # a loop so loose that no level keeps clear runs at the lowest, not at whatever is cheapest
    loose = propose(dataclasses.replace(p, cascade=dataclasses.replace(p.cascade, peak_margin=0.009)))
    lowest = min(p.settings.cascade_sigma_rel_limit) * 0.015
    assert loose.sigma_setpoints == pytest.approx((lowest, lowest))


def test_a_proposal_without_setpoints_is_a_moves_plan():
    plan = Proposal(0.0, 40.0, (-1.0,), 600.0)
    assert plan.sigma_setpoint_at(40.0) is None


def test_the_proposer_worker_dies_with_its_agent(tmp_path):
    """SIGKILL the process that owns a ProposerWorker: its spawned worker (and the resource
    tracker that lives while the worker holds its pipe) does not run on as an orphan."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "owner.py"
    script.write_text(
        "import asyncio, sys, time\n"
        "from controller.proposer import ProposerWorker\n"
        "if __name__ == '__main__':\n"
        "    worker = ProposerWorker()\n"
        "    asyncio.run(worker.warm_up())\n"
        "    print(*[p.pid for p in worker._pool._processes.values()], flush=True)\n"
        "    time.sleep(600)\n")
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    owner = subprocess.Popen([sys.executable, str(script)], cwd=repo, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert pids
        children = subprocess.run(["pgrep", "-P", str(owner.pid)], capture_output=True, text=True).stdout.split()
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)

        def alive(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            # a zombie is dead: only its exit status is left for its (new) parent
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ")[-1].split()[0] != "Z"

        deadline = time.monotonic() + 15.0
        survivors = [int(p) for p in children] + pids
        while time.monotonic() < deadline and any(alive(p) for p in survivors):
            time.sleep(0.2)
        assert not [p for p in survivors if alive(p)]
    finally:
        if owner.poll() is None:
            owner.kill()
