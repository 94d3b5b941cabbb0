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


def problem(**settings) -> Problem:
    csat50 = float(KCL.solubility_g_per_kg(50.0))
    state = PopulationState(47.0, float(KCL.solubility_g_per_kg(47.5)), seed_moments(4e-3, 100.0, 20.0, KCL),
                            (0.0,) * 6)
    plan = BatchPlan(time_left_s=3.0 * 3600, cooling_left_s=2.5 * 3600, final_temperature_c=20.0,
                     charged_concentration_g_per_kg=csat50, move_interval_s=600.0, step_s=120.0,
                     target_size_um=300.0)
    s = dataclasses.replace(ProposerSettings(time_budget_s=2.0), **settings)
    return Problem(1000.0, state, plan, KCL, GROWTH, NUCLEATION, s, max_cooling_k_per_min=1.0,
                   max_heating_k_per_min=0.2)


def test_setpoint_at_interpolates_within_each_move_and_holds_after():
    p = Proposal(100.0, 40.0, (-2.0, -1.0), 600.0)
    assert p.setpoint_at(50.0) == 40.0  # before it was made: where it starts
    assert p.setpoint_at(400.0) == pytest.approx(39.0)
    assert p.setpoint_at(700.0) == pytest.approx(38.0)
    assert p.setpoint_at(1000.0) == pytest.approx(37.5)
    assert p.setpoint_at(5000.0) == pytest.approx(37.0)


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
    # A small size target rewards nucleation, so without a real limit the best is to crash-cool.
    wants_fines = dict(proximal_weight=0.0, weight_fines=0.0, weight_cv=0.0, target_size_um=150.0)
    loose = propose(problem(metastable_sigma_limit=0.5, **wants_fines))
    tight = propose(problem(metastable_sigma_limit=0.05, **wants_fines))
    assert loose.expected["peak_sigma"] > 0.05
    assert tight.expected["peak_sigma"] <= 0.05 and tight.expected["feasibility"] == 1.0
    assert sum(tight.moves_k) > sum(loose.moves_k) + 1.0  # it cools less over its moves


def test_the_worker_process_answers_like_the_function():
    pr = problem(time_budget_s=1.0)

    async def go():
        worker = ProposerWorker()
        try:
            await worker.warm_up()
            return await worker.propose(pr)
        finally:
            worker.close()

    remote = asyncio.run(go())
    assert remote.moves_k == propose(pr).moves_k
