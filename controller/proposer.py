"""The proposer: the agent's plan, chosen by rolling the batch forward with the model.

Two kinds of plan. In cascade (``settings.cascade``, :class:`Cascade` on the problem) the agent
supervises supersaturation control: it chooses the supersaturation setpoints of the inner loop
(one above a switch temperature, one below) and the final hold, by enumerating them on a grid
and rolling each out under ideal supersaturation control
(:func:`controller.rollout.rollout_supersaturation`), scored by the benchmark's own objective
(:func:`controller.scoring.batch_cost_h`: batch time per yield, the release window, the limit);
see :func:`propose_cascade`. The inner loop measures what the constraint is on, so model error
costs time, not safety. Otherwise it chooses temperature moves with BoTorch:

Decision variables x = (dT_1, ..., dT_H [, F_1, ..., F_H] [, s]):

- dT_j, the temperature-setpoint change over each of H move intervals; after them the setpoint
  cools linearly to the final temperature by the end of cooling
  (:func:`controller.rollout.setpoint_path`). Bounds: the allowed cooling and heating rates
  over one move interval.
- F_j, the antisolvent rate over each move interval (kg/min), where the plant has a writable
  antisolvent setpoint and ``settings.antisolvent``. Bounds: 0 and the setpoint's limit.
- s, the share of the recipe's remaining cooling time the cooling takes (batch time: the
  recipe's final hold follows the end of cooling, and the agent completes the batch then),
  when ``settings.weight_batch_time_per_h`` > 0. Bounds: ``min_cooling_scale`` (and no faster
  than the allowed cooling rate, and not inside the moves) to 1 (the recipe's own end).

Each candidate is scored by :func:`controller.rollout.rollout` with every ensemble member's
kinetic laws (DESIGN.md, "Proposals"). The rollout is wrapped as a BoTorch
``EnsembleModel`` whose outputs per member are

    y_0 = -cost = -(w_size ((d43 - target)/target)^2 + w_cv CV + w_fines fines
                    + w_yield (1 - yield) + w_anti (antisolvent added, kg/kg water)
                    + w_time (batch time left, h) + w_prox |dT - dT_ref|^2 / H)
    y_1 = peak sigma - metastable limit          (feasible when <= 0)

and ``qSimpleRegret`` with a ``ConstrainedMCObjective`` turns them into the expected
objective weighted by the probability of feasibility over the members (a sigmoid of y_1 of
width ``feasibility_eta``). dT_ref is the plain linear continuation to the final temperature,
so the proximal term keeps the agent near what an operator would do unless the model says
otherwise. ``optimize_acqf`` (L-BFGS-B from Sobol raw samples, gradients through the rollout)
runs with a wall-time budget.

:func:`propose` is pure (a :class:`Problem` in, a :class:`Proposal` out) so it runs in a worker
process: :class:`ProposerWorker` keeps one spawned process, so a proposal never stalls the
agent's event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import contextlib
import math
import multiprocessing
import time
from dataclasses import dataclass, field

import numpy as np

from controller.rollout import BatchPlan, MaterialConstants, PopulationState
from controller.settings import ProposerSettings

__all__ = ["Cascade", "Problem", "Proposal", "ProposerTimeout", "ProposerWorker", "propose", "propose_cascade",
           "watch_parent"]

INFEASIBLE_COST = 10.0


@dataclass(frozen=True)
class Cascade:
    """What a cascade plan needs beyond the moves problem (:func:`propose_cascade`).

    Attributes:
        metastable_sigma_limit: the limit the setpoints are fractions of (ln S).
        specification: the product's release window
            (:class:`conf.contract.process.ProductSpecification`).
        target_size_um: the d43 target (0: none).
        elapsed_s: batch time so far (the objective charges the whole batch's time).
        horizon_s: the longest the rest of the batch may run (the plant's time limit).
        recipe_hold_s: the recipe's final hold; the plan's hold is a fraction of it.
        switch_c: temperature below which the second setpoint holds.
        max_cooling_k_per_min: the inner loop's fastest cooling.
        held_s: how long the batch has held at the final temperature (0: not there yet): in
            the hold the plan decides when it ends.
        peak_margin: the inner loop's measured tracking error (ln S; the rollout's ideal loop
            has none): setpoints within it of the limit are out (while any are not), and it is
            added to every rolled-out peak the objective charges.
    """

    metastable_sigma_limit: float
    specification: object
    target_size_um: float
    elapsed_s: float
    horizon_s: float
    recipe_hold_s: float
    switch_c: float
    max_cooling_k_per_min: float
    held_s: float = 0.0
    peak_margin: float = 0.0


@dataclass(frozen=True)
class Problem:
    """Everything one proposal needs (picklable: it crosses to the worker process).

    Attributes:
        plant_time_s: plant time the problem was posed at.
        state: estimated population state.
        plan: where the batch is and must end.
        material: material constants.
        growth / nucleation: (S, 3) kinetic laws per ensemble member.
        settings: proposer settings.
        max_cooling_k_per_min / max_heating_k_per_min: allowed setpoint rates.
        setpoint_low_c: lowest setpoint the agent may write.
        max_antisolvent_kg_per_min: the antisolvent setpoint's upper limit (0: the plant has
            none the agent may write, and the rate is no decision variable).
        cascade: pose a cascade plan instead of moves (None: moves).
    """

    plant_time_s: float
    state: PopulationState
    plan: BatchPlan
    material: MaterialConstants
    growth: np.ndarray
    nucleation: np.ndarray
    settings: ProposerSettings
    max_cooling_k_per_min: float = 1.0
    max_heating_k_per_min: float = 0.2
    setpoint_low_c: float = -math.inf
    max_antisolvent_kg_per_min: float = 0.0
    cascade: Cascade | None = None

    @property
    def uses_antisolvent(self) -> bool:
        return self.settings.antisolvent and self.max_antisolvent_kg_per_min > 0

    @property
    def scale_bounds(self) -> tuple[float, float] | None:
        """Bounds of the cooling-time scale, or None when batch time is no decision variable.

        Not below ``min_cooling_scale``, not so short that the ramp after the moves must cool
        faster than allowed, and not ending inside the moves."""
        s, p = self.settings, self.plan
        horizon_s = s.moves * p.move_interval_s
        if s.weight_batch_time_per_h <= 0 or p.cooling_left_s <= horizon_s:
            return None
        span_k = max(self.state.path_start_c - p.final_temperature_c, 0.0)
        fastest_s = span_k / max(self.max_cooling_k_per_min, 1e-9) * 60.0
        low = max(s.min_cooling_scale, fastest_s / p.cooling_left_s, horizon_s / p.cooling_left_s)
        return (low, 1.0) if low < 1.0 else None


@dataclass(frozen=True)
class Proposal:
    """A proposed setpoint trajectory and what the model expects of it.

    Attributes:
        plant_time_s: the plant time it was made for.
        start_c: temperature the moves start from.
        moves_k: the H setpoint moves (K per move interval).
        move_interval_s: plant seconds per move.
        expected: mean outcomes over members (d43_um, cv, fines, yield, peak_sigma, cost,
            antisolvent_kg_per_kg, batch_time_left_h), ``feasibility`` (share of members under
            the metastable limit) and ``chose_reference``.
        duration_s: wall seconds the optimisation took.
        antisolvent_kg_per_min: antisolvent rate per move (empty: not decided).
        cooling_end_s: plant time at which cooling ends on this plan (the batch ends a final
            hold later).
        final_temperature_c: where cooling ends (after the moves the path ramps to it).
        sigma_setpoints: a cascade plan's supersaturation setpoints (ln S), above and below
            ``switch_c`` (empty: a moves plan).
        switch_c: where the second setpoint takes over.
        final_hold_s: a cascade plan's final hold.
    """

    plant_time_s: float
    start_c: float
    moves_k: tuple[float, ...]
    move_interval_s: float
    expected: dict = field(default_factory=dict)
    duration_s: float = 0.0
    antisolvent_kg_per_min: tuple[float, ...] = ()
    cooling_end_s: float = math.inf
    final_temperature_c: float = math.nan
    sigma_setpoints: tuple[float, ...] = ()
    switch_c: float = math.nan
    final_hold_s: float = math.nan

    def sigma_setpoint_at(self, temperature_c: float) -> float | None:
        """A cascade plan's supersaturation setpoint at a reactor temperature (None: a moves plan)."""
        if not self.sigma_setpoints:
            return None
        return self.sigma_setpoints[0] if temperature_c > self.switch_c else self.sigma_setpoints[-1]

    def antisolvent_at(self, plant_time_s: float) -> float | None:
        """The proposed antisolvent rate at ``plant_time_s`` (None: not decided); none after the moves."""
        if not self.antisolvent_kg_per_min:
            return None
        j = int(max(plant_time_s - self.plant_time_s, 0.0) // self.move_interval_s)
        return self.antisolvent_kg_per_min[j] if j < len(self.antisolvent_kg_per_min) else 0.0

    def setpoint_at(self, plant_time_s: float) -> float:
        """The proposed temperature setpoint at ``plant_time_s``: linear within each move, then
        (when ``final_temperature_c`` is known) linear to it by ``cooling_end_s`` as the rollout
        assumed, then held; without it the last move's end is held."""
        elapsed = max(plant_time_s - self.plant_time_s, 0.0)
        value = self.start_c
        for move in self.moves_k:
            part = min(elapsed / self.move_interval_s, 1.0)
            value += part * move
            elapsed -= self.move_interval_s
            if elapsed <= 0:
                return value
        if math.isfinite(self.final_temperature_c) and math.isfinite(self.cooling_end_s):
            horizon_end_s = self.plant_time_s + len(self.moves_k) * self.move_interval_s
            span_s = self.cooling_end_s - horizon_end_s
            part = min(elapsed / span_s, 1.0) if span_s > 0 else 1.0
            value += part * (self.final_temperature_c - value)
        return value


def reference_moves(problem: Problem) -> np.ndarray:
    """The linear continuation to the final temperature, as H moves (the proximal centre)."""
    p = problem.plan
    rate = (p.final_temperature_c - problem.state.path_start_c) / max(p.cooling_left_s, p.move_interval_s)
    return np.full(problem.settings.moves, min(rate * p.move_interval_s, 0.0))


def _outcomes_to_y(problem: Problem, moves, outcomes):
    """(n, S) outcomes -> (n, S, 2) [-cost, constraint] and the (n, S) cost. ``moves`` (n, H)."""
    import torch

    s = problem.settings
    ref = torch.as_tensor(reference_moves(problem), dtype=moves.dtype)
    size_err = ((outcomes.d43_um - s.target_size_um) / s.target_size_um) ** 2
    prox = ((moves - ref) ** 2).mean(dim=-1, keepdim=True)
    cost = (s.weight_size * size_err + s.weight_cv * outcomes.cv + s.weight_fines * outcomes.fines
            + s.weight_yield * (1.0 - outcomes.yield_fraction).clamp_min(0.0) + s.proximal_weight * prox
            + s.weight_antisolvent * outcomes.antisolvent_added
            + s.weight_batch_time_per_h * outcomes.time_left_s[:, None] / 3600.0)
    constraint = outcomes.peak_sigma - (1.0 - s.constraint_margin) * s.metastable_sigma_limit
    return torch.stack([-cost, constraint], dim=-1), cost


def _split(problem: Problem, x):
    """x (n, D) -> (moves (n, H), antisolvent (n, H) or None, cooling scale (n,) or None)."""
    h = problem.settings.moves
    moves, rest = x[:, :h], x[:, h:]
    anti = None
    if problem.uses_antisolvent:
        anti, rest = rest[:, :h], rest[:, h:]
    scale = rest[:, 0] if problem.scale_bounds is not None else None
    return moves, anti, scale


def _evaluate(problem: Problem, x, growth, nucleation):
    from controller.rollout import rollout

    moves, anti, scale = _split(problem, x)
    out = rollout(moves, problem.state, growth, nucleation, problem.material, problem.plan,
                  antisolvent_kg_per_min=anti, cooling_scale=scale)
    y, cost = _outcomes_to_y(problem, moves, out)
    return out, y, cost


def _product_expected(out, pick: int) -> dict:
    """What candidate ``pick`` is expected to make: member means (the peak: the members' worst)."""
    return {"d43_um": float(out.d43_um[pick].mean()), "cv": float(out.cv[pick].mean()),
            "fines": float(out.fines[pick].mean()), "yield": float(out.yield_fraction[pick].mean()),
            "peak_sigma": float(out.peak_sigma[pick].max())}


def propose_cascade(problem: Problem) -> Proposal:
    """The cascade plan (module docstring): every combination of the setpoints above and below
    the switch temperature (fractions ``settings.cascade_sigma_rel_limit`` of the limit) and the
    final hold (fractions ``settings.cascade_hold_fractions`` of the recipe's), rolled out with
    every member's laws and charged the benchmark's objective; the lowest mean cost over the
    members wins, among those whose setpoints plus the loop's tracking margin stay under the
    limit (levels above the highest such setpoint are brought down to it; where none is, the
    lowest level). Pure; deterministic for a problem."""
    import itertools

    import torch

    from controller.rollout import rollout_supersaturation
    from controller.scoring import batch_cost_h

    wall0 = time.perf_counter()
    c, s = problem.cascade, problem.settings
    # Setpoints above the highest that keeps the loop's tracking margin clear of the limit come
    # down to it (the grid's next level under it can leave a tenth of the limit unused); with
    # none clear, the lowest level is the most cautious there is.
    clear_top = max((c.metastable_sigma_limit - c.peak_margin) / c.metastable_sigma_limit,
                    min(s.cascade_sigma_rel_limit))
    fractions = sorted({min(f, clear_top) for f in s.cascade_sigma_rel_limit})
    holds = s.cascade_hold_fractions
    grid = np.array(list(itertools.product(fractions, fractions, holds)), dtype=float)  # (n, 3)
    dtype = torch.float64
    setpoints = torch.tensor(grid[:, :2] * c.metastable_sigma_limit, dtype=dtype)
    hold_s = torch.tensor(grid[:, 2] * c.recipe_hold_s, dtype=dtype)
    with torch.no_grad():
        out = rollout_supersaturation(setpoints, hold_s, problem.state, torch.as_tensor(problem.growth, dtype=dtype),
                                      torch.as_tensor(problem.nucleation, dtype=dtype), problem.material, problem.plan,
                                      c.max_cooling_k_per_min, c.switch_c, c.horizon_s, held_s=c.held_s)
    left_s = out.time_left_s.numpy()
    failed = left_s >= c.horizon_s - 1e-6  # never reached the final temperature
    cost = batch_cost_h((c.elapsed_s + left_s) / 3600.0, out.yield_fraction.numpy(), out.d43_um.numpy(),
                        out.cv.numpy(), out.fines.numpy(), out.peak_sigma.numpy() + c.peak_margin, c.target_size_um,
                        c.specification, c.metastable_sigma_limit, failed)[0]  # (n, S)
    mean_cost = cost.mean(axis=1)
    # The limit is a hard constraint for the plan (the objective only charges a batch that
    # crossed it): setpoints within the loop's tracking margin of it are out while some
    # candidate keeps clear. (Judged on the setpoints, not the rolled-out peak: that starts from
    # the solution as it is now, which no candidate can take back.)
    clear = grid[:, :2].max(axis=1) * c.metastable_sigma_limit + c.peak_margin <= c.metastable_sigma_limit * (1 + 1e-9)
    if clear.any():
        mean_cost = np.where(clear, mean_cost, np.inf)
    pick = int(np.argmin(mean_cost))
    expected = {
        **_product_expected(out, pick),
        "batch_time_left_h": float(left_s[pick].mean()) / 3600.0,
        "cost": float(mean_cost[pick]),
        "cost_spread": float(cost[pick].std()),
        "sigma_setpoint_hot_rel_limit": float(grid[pick, 0]),
        "sigma_setpoint_cold_rel_limit": float(grid[pick, 1]),
        "final_hold_min": float(hold_s[pick]) / 60.0,
        "candidates": float(grid.shape[0]),
    }
    return Proposal(problem.plant_time_s, problem.state.path_start_c, (), problem.plan.move_interval_s, expected,
                    time.perf_counter() - wall0, cooling_end_s=problem.plant_time_s + float(left_s[pick].mean()) - float(hold_s[pick]),
                    final_temperature_c=problem.plan.final_temperature_c,
                    sigma_setpoints=tuple(float(v) for v in setpoints[pick]), switch_c=float(c.switch_c),
                    final_hold_s=float(hold_s[pick]))


def propose(problem: Problem) -> Proposal:
    """Optimise the agent's plan (module docstring): a cascade plan where the problem poses one
    (:func:`propose_cascade`), else the next setpoint moves. Pure; deterministic for a problem."""
    if problem.cascade is not None:
        return propose_cascade(problem)
    import torch
    from botorch.acquisition.monte_carlo import qSimpleRegret
    from botorch.acquisition.objective import ConstrainedMCObjective
    from botorch.models.ensemble import EnsembleModel
    from botorch.optim import optimize_acqf
    from botorch.sampling.index_sampler import IndexSampler

    import warnings

    from botorch.exceptions.warnings import BadInitialCandidatesWarning

    # When every raw sample is infeasible under every member the acquisition is flat; BoTorch
    # then starts from random points and warns each time. The reference path still competes
    # below, and ``expected["feasibility"]`` reports the outcome, so the warning adds nothing.
    warnings.filterwarnings("ignore", category=BadInitialCandidatesWarning)
    wall0 = time.perf_counter()
    torch.manual_seed(0)
    s, p = problem.settings, problem.plan
    dtype = torch.float64
    growth = torch.as_tensor(problem.growth, dtype=dtype)
    nucleation = torch.as_tensor(problem.nucleation, dtype=dtype)
    members = growth.shape[0]

    def evaluate(x):  # (n, D) -> (n, S, 2)
        return _evaluate(problem, x, growth, nucleation)[1]

    class RolloutModel(EnsembleModel):
        _num_outputs = 2

        def forward(self, X):  # (batch, q, D) -> (batch, S, q, 2)
            batch_shape, q = X.shape[:-2], X.shape[-2]
            y = evaluate(X.reshape(-1, X.shape[-1]))  # (n, S, 2)
            return y.reshape(*batch_shape, q, members, 2).movedim(-2, -3)

    move_min = p.move_interval_s / 60.0
    lower = [-s_rate(problem.max_cooling_k_per_min) * move_min] * s.moves
    upper = [s_rate(problem.max_heating_k_per_min) * move_min] * s.moves
    ref = list(np.clip(reference_moves(problem), lower[0], upper[0]))
    if problem.uses_antisolvent:
        lower += [0.0] * s.moves
        upper += [float(problem.max_antisolvent_kg_per_min)] * s.moves
        ref += [0.0] * s.moves  # the operator's recipe feeds none
    if problem.scale_bounds is not None:
        lower.append(problem.scale_bounds[0])
        upper.append(problem.scale_bounds[1])
        ref.append(1.0)  # the recipe's own end
    bounds = torch.tensor([lower, upper], dtype=dtype)
    objective = ConstrainedMCObjective(objective=lambda y, X=None: y[..., 0], constraints=[lambda y: y[..., 1]],
                                       infeasible_cost=INFEASIBLE_COST, eta=s.feasibility_eta)
    acqf = qSimpleRegret(RolloutModel(), sampler=IndexSampler(torch.Size([4 * members]), seed=0),
                         objective=objective)
    candidate, _ = optimize_acqf(
        acqf, bounds=bounds, q=1, num_restarts=s.restarts, raw_samples=s.raw_samples,
        options={"maxiter": 60, "seed": 0}, timeout_sec=s.time_budget_s, retry_on_optimization_warning=False,
    )
    best = candidate.reshape(1, -1)
    # The reference path competes too: the optimiser must beat the operator's plain ramp.
    both = torch.cat([best, torch.tensor([ref], dtype=dtype)], dim=0)
    with torch.no_grad():
        out, y, cost = _evaluate(problem, both, growth, nucleation)
        feasible = (y[..., 1] <= 0).to(dtype)
        score = ((-cost + INFEASIBLE_COST) * feasible).mean(dim=-1) - INFEASIBLE_COST
    pick = int(torch.argmax(score))
    if not bool(feasible.any()):
        # No member finds either path feasible: take the one that overshoots the limit least.
        pick = int(torch.argmin(out.peak_sigma.max(dim=-1).values))
    moves, anti, scale = _split(problem, both[pick : pick + 1])
    cooling_left_s = p.cooling_left_s * (float(scale[0]) if scale is not None else 1.0)
    expected = {
        **_product_expected(out, pick),
        "antisolvent_kg_per_kg": float(out.antisolvent_added[pick].mean()),
        "batch_time_left_h": float(out.time_left_s[pick]) / 3600.0,
        "cost": float(cost[pick].mean()),
        "feasibility": float(feasible[pick].mean()),
        "chose_reference": pick == 1,
    }
    return Proposal(problem.plant_time_s, problem.state.path_start_c, tuple(float(m) for m in moves[0]),
                    p.move_interval_s, expected, time.perf_counter() - wall0,
                    antisolvent_kg_per_min=() if anti is None else tuple(float(a) for a in anti[0]),
                    cooling_end_s=problem.plant_time_s + cooling_left_s, final_temperature_c=p.final_temperature_c)


def s_rate(value: float) -> float:
    return max(float(value), 0.0)


def watch_parent(poll_s: float = 1.0) -> None:
    """In a spawned worker (a pool's initializer): exit once the process that started it is
    gone. A SIGKILLed agent cannot shut its pool down, and its proposer worker (and with it
    multiprocessing's resource tracker, which lives while any holder of its pipe does) went on
    as an orphan of pid 1, using CPU. Checked every ``poll_s`` by a daemon thread: the parent's
    pid changes when the worker is re-parented."""
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_init() -> None:
    import torch

    watch_parent()
    torch.set_num_threads(1)  # one core for the proposer, the other for the agent's loop


class ProposerTimeout(RuntimeError):
    """A proposal took longer than ``settings.proposal_timeout_s``; the worker was restarted."""


class ProposerWorker:
    """One spawned worker process for :func:`propose` (the event loop only awaits it).

    A proposal that outlasts ``problem.settings.proposal_timeout_s`` (a hung worker) kills the
    process and starts a new one; so does a worker that died.

    ``in_process``: a thread of this process instead, for runs whose plant waits for the agent
    (the benchmark's lockstep harness, replay), where the loop awaits every proposal anyway: it
    saves the worker's spawn and its imports of torch and BoTorch (measured: 1.4 s of a 19 s
    harness batch). A thread cannot be killed: a timeout there abandons it.
    """

    def __init__(self, in_process: bool = False) -> None:
        self.in_process = in_process
        self._pool = self._new_pool()
        self.restarts = 0

    def _new_pool(self) -> concurrent.futures.Executor:
        if self.in_process:
            return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="proposer")
        ctx = multiprocessing.get_context("spawn")
        return concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_worker_init)

    async def propose(self, problem: Problem) -> Proposal:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, propose, problem),
                                          problem.settings.proposal_timeout_s)
        except asyncio.TimeoutError:
            self.restart()
            raise ProposerTimeout(f"no proposal within {problem.settings.proposal_timeout_s:.0f} s: "
                                  "worker restarted") from None
        except concurrent.futures.process.BrokenProcessPool:
            self.restart()
            raise

    def restart(self) -> None:
        """Kill the worker process (hung or dead) and start a fresh one."""
        # ProcessPoolExecutor offers no kill; its processes are the only handle on a hung worker.
        for process in list(getattr(self._pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.kill()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._new_pool()
        self.restarts += 1

    async def warm_up(self) -> None:
        """Import torch and BoTorch in the worker before the first real problem."""
        await asyncio.get_running_loop().run_in_executor(self._pool, _warm)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _warm() -> bool:
    import botorch.acquisition.monte_carlo  # noqa: F401  (import cost paid once)

    return True
