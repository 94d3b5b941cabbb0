"""Strategies: the decision-making part of the agent (plant state -> proposed setpoints).

A strategy sits behind one small interface, so another (a fixed recipe, supersaturation
control, direct nucleation control) can run in the agent's place over the same I/O, guard,
decision log and metrics::

    strategy.setpoints                    # the setpoints it drives (the guard's)
    advice = strategy.advise(state, model) # every cycle, fast, no I/O
    strategy.written(values, t)           # what the guard let through this cycle
    strategy.accept(proposal)             # when a background proposal arrives

``state`` is the cycle's :class:`controller.estimator.PlantState` (validated signals,
supersaturation, the population reconciled with the mass balance), ``model`` the model's latest
answer (:class:`controller.model_client.ModelAnswer`, None for strategies without one): the agent
estimates the state and owns the model's background queries, the strategy only decides.
:class:`Advice` carries the setpoints for this cycle (or None), what they rest on (predictions
and their uncertainty, for the guard and the log) and, optionally, a :class:`Problem` for the
background proposer. ``advise`` must be fast (it runs on the agent's event loop).

- :class:`LinearCooling`: the batch recipe (ramps and holds) as remote setpoints.
- :class:`ModelPredictive`: the MS-GNN + BoTorch agent. It follows the recipe until the seeds
  are in, then poses a proposal problem from this cycle's setpoint and the estimated population
  each time the worker is free, and follows the latest proposal's trajectory bumplessly
  (temperature and, where the plant has one, antisolvent rate); the recipe when the model
  cannot answer. When batch time is in its objective it asks the plant to
  complete the batch once cooling has reached the final temperature and the recipe's final hold
  has passed. In cascade (``proposer.cascade``, the default) it supervises supersaturation
  control instead: the recipe until its last ramp starts, then the PI loop of
  :func:`supersaturation_pi` on the measured supersaturation, its setpoints and the final hold
  chosen by the latest cascade plan; without a plan (no model answer yet, a model error) the
  loop runs at supersaturation control's own setpoint, so the agent is never worse placed than
  the strategy plants run.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import numpy as np

from conf.contract import signals
from conf.contract.process import ProductSpecification
from controller.estimator import (EstimatorSettings, PlantState, PlantView, PopulationEstimate, ProcessFacts,
                                  carried_over_delay, concentration_now_g_per_kg, size_trend_per_min)
from controller.model_client import ModelAnswer
from controller.proposer import Cascade, Problem, Proposal
from controller.rollout import BatchPlan, MaterialConstants, PopulationState
from controller.settings import BaselineSettings, ProposerSettings

__all__ = ["ANTISOLVENT_SP", "Advice", "BatchRecipe", "LinearCooling", "ModelPredictive", "PathFollower", "PlantView",
           "Strategy", "metastable_limit", "product_target_um", "supersaturation_pi"]

_log = logging.getLogger("xtalpilot.strategy")

TEMPERATURE_SP = signals.TEMPERATURE_SETPOINT
ANTISOLVENT_SP = signals.ANTISOLVENT_RATE_SETPOINT
# The setpoint counts as at the final temperature within this (K): cooling is over.
FINAL_TEMPERATURE_TOLERANCE_K = 0.05
#: minutes of concentration readings whose trend carries the analyser's reading over its delay
CARRY_WINDOW_MIN = 5.0
#: The reactor's cooling rate (for how long it takes to get where its setpoint heads) is fitted
#: over this window: a few cycles, the ramp it is on now.
REACTOR_RATE_WINDOW_MIN = 2.0
#: A yield floor is read as met this many standard errors of the measured yield above it (a
#: release decision on a noisy analyser).
YIELD_FLOOR_Z = 2.0
#: The loop's temperature jitter (its moves about a steady ramp) is measured over this window:
#: longer than the loop's response to a reading (a few cycles), short enough that the ramp's own
#: curvature (the cooling speeding up as the crystals grow) stays under the jitter.
JITTER_WINDOW_MIN = 8.0


@dataclass(frozen=True)
class Advice:
    """A strategy's answer for one cycle.

    Attributes:
        setpoints: setpoints to propose now (None: nothing to propose).
        proposal_time_s: plant time the setpoints were decided for.
        model_ok: the model answered (always True for strategies without one).
        uncertainty: the model's uncertainty (guard measure).
        data_ok: the signals the advice rests on are valid.
        predictions: model outputs (G um/min, log10 B, lambda) and their spread, for the log.
        inputs: summary of what the strategy used (driving force, estimated sizes, ...).
        problem: work for the background proposer, or None.
        complete_batch: the batch's product is done: ask the plant to complete it.
        reference: the recipe's setpoints now (the guard's envelope band is around them).
    """

    setpoints: Mapping[str, float] | None
    proposal_time_s: float | None
    model_ok: bool = True
    uncertainty: float = 0.0
    data_ok: bool = True
    predictions: Mapping[str, float] = field(default_factory=dict)
    inputs: Mapping[str, float] = field(default_factory=dict)
    problem: Problem | None = None
    complete_batch: bool = False
    reference: Mapping[str, float] | None = None


class Strategy(Protocol):
    name: str
    setpoints: tuple[str, ...]

    def advise(self, state: PlantState, model: ModelAnswer | None = None) -> Advice: ...

    def accept(self, proposal: Proposal) -> None: ...

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None: ...


@dataclass(frozen=True)
class BatchRecipe:
    """The batch as its recipe describes it (the agent's knowledge of the plan).

    Attributes:
        start_temperature_c: setpoint at batch start (where the first ramp begins).
        steps: the recipe's (temperature_c, rate_k_per_min, hold_min) steps.
        seed_mass_g / seed_mean_size_um / seed_std_size_um / seed_at_min: seeding.
        solvent_mass_kg: solvent charged.
        saturation_temperature_c: the charge is saturated at this temperature.
        target_size_um: product d43 wanted.
    """

    start_temperature_c: float
    steps: tuple
    seed_mass_g: float
    seed_mean_size_um: float
    seed_std_size_um: float
    seed_at_min: float
    solvent_mass_kg: float
    saturation_temperature_c: float
    target_size_um: float

    @classmethod
    def from_process(cls, process, target_size_um: float | None = None) -> "BatchRecipe":
        """The recipe of a process (:class:`conf.contract.process.BatchProcess`, ``cfg.process``)."""
        s = process.seeding
        return cls(process.initial_temperature_c, tuple(process.recipe), s.mass_g, s.mean_size_um, s.std_size_um,
                   s.at_min, process.solvent_mass_kg, process.initial_saturation_temperature_c,
                   target_size_um or process.target_mean_size_um or 300.0)

    @property
    def duration_min(self) -> float:
        from conf.contract.process import recipe_duration_min

        return recipe_duration_min(self.steps, self.start_temperature_c)

    @property
    def cooling_end_min(self) -> float:
        """Recipe time at which the last ramp ends (its final hold excluded)."""
        return self.duration_min - (self.steps[-1].hold_min if self.steps else 0.0)

    @property
    def final_temperature_c(self) -> float:
        return self.steps[-1].temperature_c if self.steps else self.start_temperature_c

    @property
    def final_hold_min(self) -> float:
        return self.steps[-1].hold_min if self.steps else 0.0

    @property
    def uses_antisolvent(self) -> bool:
        return any(getattr(step, "antisolvent_rate_kg_per_min", 0.0) > 0 for step in self.steps)

    def setpoint_c(self, batch_min: float) -> float:
        from conf.contract.process import recipe_setpoint

        return recipe_setpoint(self.steps, self.start_temperature_c, batch_min)[0]

    def antisolvent_kg_per_min(self, batch_min: float) -> float:
        from conf.contract.process import recipe_setpoint

        return recipe_setpoint(self.steps, self.start_temperature_c, batch_min)[1]

    def setpoints(self, batch_min: float, antisolvent: bool) -> dict[str, float]:
        """The recipe's remote setpoints at a batch time (antisolvent only where driven)."""
        out = {TEMPERATURE_SP: self.setpoint_c(batch_min)}
        if antisolvent:
            out[ANTISOLVENT_SP] = self.antisolvent_kg_per_min(batch_min)
        return out


def metastable_limit(cfg) -> float:
    """The metastable limit (ln S) of the process's material: its data's where it gives one
    (``process.material_data.metastable_sigma_limit``), else ``proposer.metastable_sigma_limit``."""
    data = cfg.process.material_data
    return float(data.metastable_sigma_limit if data is not None and data.metastable_sigma_limit > 0
                 else cfg.proposer.metastable_sigma_limit)


def product_target_um(cfg) -> float:
    """The product's d43 target: the process's specification where it gives one
    (``process.target_mean_size_um``), else ``proposer.target_size_um``."""
    return float(cfg.process.target_mean_size_um or cfg.proposer.target_size_um)


def supersaturation_pi(error: float, integral_min: float, dt_min: float, settings: BaselineSettings,
                       integral_band: float = math.inf) -> tuple[float, float]:
    """Supersaturation control's law, velocity-form PI: cooling rate = Kp (e + I / Ti) with
    e = sigma_sp - sigma, clamped to [0, ``ssc_max_cooling_k_per_min``] (cooling only), the
    integral frozen while the output is clamped and would wind further (anti-windup), and
    while |e| > ``integral_band`` (conditional integration: a cooling-only loop cannot take
    back an overshoot, so the integral must not build up on the approach to the setpoint).

    Returns:
        (cooling rate K/min, the integral of the error after this step, minutes).
    """
    rate = settings.ssc_gain_k_per_min * (error + (integral_min + error * dt_min) / settings.ssc_integral_time_min)
    clamped = min(max(rate, 0.0), settings.ssc_max_cooling_k_per_min)
    if (clamped == rate or (rate > clamped) != (error > 0)) and abs(error) <= integral_band:
        integral_min += error * dt_min  # integrate unless it winds the clamp further
    return clamped, integral_min


class LinearCooling:
    """The recipe's linear ramps and holds, written as remote setpoints (the baseline)."""

    name = "linear_cooling"

    def __init__(self, recipe: BatchRecipe, lead_s: float = 0.0) -> None:
        self.recipe = recipe
        self.lead_s = lead_s  # write where the recipe will be by the next cycle
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if recipe.uses_antisolvent else (TEMPERATURE_SP,)

    def advise(self, state: PlantState, model: ModelAnswer | None = None) -> Advice:
        if state.batch_time_s is None:
            return Advice(None, None)
        batch_min = (state.batch_time_s + self.lead_s) / 60.0
        setpoints = self.recipe.setpoints(batch_min, self.recipe.uses_antisolvent)
        # The recipe's end is the batch's end: ask the plant to complete it (under remote control
        # the plant waits for Complete, up to its batch time limit).
        return Advice(setpoints, state.plant_time_s, reference=setpoints, inputs=state.summary(),
                      complete_batch=batch_min >= self.recipe.duration_min)

    def accept(self, proposal: Proposal) -> None:  # no background work
        pass

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None:  # a fixed path
        pass


class PathFollower:
    """One continuous setpoint path from successive plans (pure; time passed in).

    A plan is a path of plant time (a proposal's trajectory, or the recipe). When the plan
    changes, the offset between the path in use and the new one at that instant is blended out
    over ``blend_s``, so a new plan never steps the setpoint: the first value after a switch is
    the one the old plan gave. When the guard wrote something else than advised (a hold, a rate
    limit), the path restarts from what was written and blends back to the plan the same way.
    """

    def __init__(self, blend_s: float, non_increasing: bool = False) -> None:
        self.blend_s = max(float(blend_s), 1e-9)
        # A cooling-only design: blending out an offset towards a slower plan must not heat,
        # so the path then holds until the plan comes down to it.
        self.non_increasing = non_increasing
        self._key: object = None
        self._path = None
        self._offset = 0.0
        self._switch_s = 0.0
        self._last: float | None = None

    @property
    def key(self) -> object:
        """The plan followed now (None: none yet)."""
        return self._key

    def _current(self, now_s: float) -> float:
        weight = max(0.0, 1.0 - (now_s - self._switch_s) / self.blend_s)
        return self._path(now_s) + self._offset * weight

    def value(self, key: object, path, now_s: float) -> float:
        """The setpoint at ``now_s`` on the plan ``key`` (``path``: plant time -> value)."""
        if key != self._key or self._path is None:
            old = self._current(now_s) if self._path is not None else None
            self._key, self._path, self._switch_s = key, path, now_s
            self._offset = 0.0 if old is None or not math.isfinite(old) else old - path(now_s)
        value = self._current(now_s)
        if self.non_increasing and self._last is not None and math.isfinite(self._last):
            value = min(value, self._last)
        self._last = value
        return value

    def rebase(self, written: float, now_s: float) -> None:
        """The plant got ``written`` instead of the advised value: continue from it."""
        if self._path is not None and math.isfinite(written):
            self._offset, self._switch_s = written - self._path(now_s), now_s
            self._last = written

    def reset(self) -> None:
        self._key, self._path, self._offset, self._last = None, None, 0.0, None


class ModelPredictive:
    """The agent's strategy: MS-GNN kinetics, the estimated population, BoTorch proposals.

    A function of the cycle's :class:`controller.estimator.PlantState` and the model's latest
    answer (:class:`controller.model_client.ModelAnswer`: the agent owns the model's background
    queries and the state estimator). Once the seeds are in, each cycle poses a proposal problem
    from *this cycle's* setpoint (what is written now, not what was read back from the last
    write) with the model's laws as the estimator corrected them, and follows the latest proposal
    through a :class:`PathFollower` (bumpless when a plan switches). At the end of cooling the
    setpoint ramps to the final temperature at the plan's rate. When the model cannot answer (no
    answer yet, an error, a timeout) the recipe is followed instead (``inputs["fallback"]``), so
    a batch the model cannot see still cools.

    What the strategy itself remembers is its plan: the latest proposal, the path it follows, and
    when cooling reached the final temperature (:meth:`memory`, persisted by the agent with the
    state). Held gives no advice and forgets nothing; a new batch starts the plan afresh.

    Args:
        recipe: the batch plan.
        service: a :class:`controller.kinetics_service.KineticsService` (the agent asks it
            through a :class:`controller.model_client.ModelClient`).
        material: constants for the moment model.
        settings: proposer settings.
        stirring_rpm: impeller speed (model input).
        max_cooling_k_per_min / max_heating_k_per_min: rates the proposer may use.
        max_antisolvent_kg_per_min: upper limit of the antisolvent setpoint (0: the plant has
            none the agent may write).
        estimator_settings: how the estimate follows the measurements.
        concentration_delay_s: how far the concentration analyser lags the reactor RTD
            (controller.state.alignment_delay_s), for the estimator's facts.
        blend_s: plant seconds over which a plan switch is blended.
        inner: the supersaturation loop's tuning (``baselines``); None: no cascade.
        cascade_heating: the cascade's loop may heat (the guard lets the setpoint rise) at up to
            ``settings.cascade_max_heating_k_per_min`` over the metastable limit.
        specification: the product's release window, for the cascade plan's objective.
        batch_time_limit_s: the plant's batch time limit (the cascade plan's horizon).
    """

    name = "model_predictive"

    def __init__(self, recipe: BatchRecipe, service, material: MaterialConstants, settings: ProposerSettings,
                 stirring_rpm: float = 300.0, max_cooling_k_per_min: float = 1.0,
                 max_heating_k_per_min: float = 0.2, setpoint_low_c: float = -math.inf,
                 max_antisolvent_kg_per_min: float = 0.0, estimator_settings: EstimatorSettings | None = None,
                 blend_s: float | None = None, concentration_delay_s: float = 0.0,
                 inner: BaselineSettings | None = None, specification=None,
                 batch_time_limit_s: float = math.inf, cascade_heating: bool = False) -> None:
        self.recipe, self.service, self.material, self.settings = recipe, service, material, settings
        # The cascade supervises a cooling loop on seeds' surface: a recipe that feeds antisolvent
        # or charges no seeds keeps the moves (a supersaturation loop inside the metastable zone
        # never nucleates an unseeded batch).
        self.inner = inner if settings.cascade and not recipe.uses_antisolvent and recipe.seed_mass_g > 0 else None
        self.specification, self.batch_time_limit_s = specification, batch_time_limit_s
        self.stirring_rpm = stirring_rpm
        self.cascade_heating_k_per_min = settings.cascade_max_heating_k_per_min if cascade_heating else 0.0
        self.max_cooling, self.max_heating, self.setpoint_low_c = max_cooling_k_per_min, max_heating_k_per_min, setpoint_low_c
        self.max_antisolvent = max_antisolvent_kg_per_min if settings.antisolvent or recipe.uses_antisolvent else 0.0
        self.antisolvent = self.max_antisolvent > 0  # drives the antisolvent setpoint
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if self.antisolvent else (TEMPERATURE_SP,)
        self.facts = ProcessFacts.from_recipe(
            recipe, material, concentration_delay_s=concentration_delay_s,
            antisolvent_low_flow_cutoff_kg_per_min=settings.antisolvent_low_flow_cutoff_kg_per_min,
            settings=estimator_settings or EstimatorSettings(suspension_ref_kg_per_kg=settings.nucleation_suspension_kg_per_kg))
        self.follower = PathFollower(blend_s if blend_s is not None else settings.move_interval_min * 60.0,
                                     non_increasing=max_heating_k_per_min <= 0)
        self.proposal: Proposal | None = None
        self._saved: Mapping | None = None
        self._reset()

    def _reset(self) -> None:
        self.proposal = None
        self._cooled_at_s: float | None = None  # plant time a proposal's setpoint reached the final temperature
        self._final_at_s: float | None = None  # plant time any setpoint reached the final temperature
        self._batch_start_s: float | None = None  # plant time minus batch time (recipe time base)
        self._batch_id_s: float | None = None  # the batch's identity (PlantState.batch_id_s)
        self._advised: dict[str, float] = {}
        self._advised_at_s: float | None = None
        self.follower.reset()
        self._integral_min = 0.0  # the cascade's inner loop
        self._tracking_var = 0.0  # its overshoots' doubled mean square (ln S)^2, once it has reached its setpoint
        self._jitter_var = 0.0  # the supersaturation its temperature jitter makes, mean square (ln S)^2
        self._tracking = False
        self._tracking_since_s: float | None = None  # plant time the loop first tracked
        self._recent_errors: collections.deque = collections.deque()
        self._concentration_trend: collections.deque = collections.deque()  # (plant time s, g/kg), recent
        self._temperature_trend: collections.deque = collections.deque()  # (plant time s, reactor C), recent
        self._setpoint_final_at_s: float | None = None  # the cascade's setpoint reached the final temperature

    @property
    def cascade(self) -> bool:
        return self.inner is not None

    # ------------------------------------------------------------------ interface
    def accept(self, proposal: Proposal) -> None:
        # A proposal posed before this batch started belongs to the last one.
        if self._batch_id_s is not None and proposal.plant_time_s >= self._batch_id_s - 1e-6:
            self.proposal = proposal

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None:
        """What the guard let through this cycle: where the path continues from."""
        value = values.get(TEMPERATURE_SP)
        advised = self._advised.get(TEMPERATURE_SP)
        # A plan's path continues from what was written; the recipe is a fixed path, rejoined at
        # the rate the guard allows, as the recipe itself and every baseline do (blended back
        # over a move interval after the bumpless entry, the approach to seeding lagged the
        # recipe by a cycle's ramp: KNO3 was seeded 0.25 K warmer and overshot the limit).
        following_plan = self.follower.key is not None and self.follower.key[0] == "proposal"
        if value is not None and advised is not None and abs(value - advised) > 1e-6 and following_plan:
            self.follower.rebase(float(value), plant_time_s)
            self._advised[TEMPERATURE_SP] = float(value)
        if ANTISOLVENT_SP in values:
            self._advised[ANTISOLVENT_SP] = float(values[ANTISOLVENT_SP])

    def memory(self) -> dict:
        """The plan's milestones, for the agent to persist with the state (JSON-ready)."""
        return {"batch_start_s": self._batch_start_s, "cooled_at_s": self._cooled_at_s, "final_at_s": self._final_at_s}

    def restore(self, memory: Mapping) -> None:
        """Milestones saved by an earlier run: applied if they belong to the batch it next sees."""
        self._saved = dict(memory)

    def advise(self, state: PlantState, model: ModelAnswer | None = None) -> Advice:
        if state.held:
            return Advice(None, None, inputs=state.summary())  # a freeze: nothing moves, nothing is forgotten
        if not state.executing:
            if state.batch_start_s is None:
                self._reset()
            return Advice(None, None)
        if state.batch_id_s != self._batch_id_s:
            self._reset()
            self._batch_id_s = state.batch_id_s
            self._batch_start_s = state.batch_start_s
            self._apply_saved()
        self._batch_start_s = state.batch_start_s  # moves on by the time the batch was held
        now = state.plant_time_s
        inputs: dict = state.summary()
        if self.cascade and state.population is not None:
            # the loop decides what bad data means (it holds), not the recipe
            inputs.update(state.population.summary(self.material.mass_per_um3_kg))
            return self._cascade_advice(state, model if model is not None else ModelAnswer(), inputs)
        if not state.data_ok:
            return self._advice(state, self._recipe_path_key(), inputs, data_ok=False)
        population = state.population
        if population is None:
            # Before the seeds are in the recipe decides: there is nothing to steer yet.
            return self._advice(state, self._recipe_path_key(), inputs)
        inputs.update(population.summary(self.material.mass_per_um3_kg))
        model = model if model is not None else ModelAnswer()
        laws = model.laws
        if laws is None:
            inputs["fallback"] = "recipe"
            inputs["model_error"] = model.error or "no answer"
            return self._advice(state, self._recipe_path_key(), inputs)
        temperature = state.temperature_c
        corrected = _corrected(laws, population)
        predictions, uncertainty = self._predictions(state, model, corrected, inputs)
        plan = self._plan(state.batch_time_s / 60.0)
        key = ("proposal", self.proposal.plant_time_s) if self.proposal is not None else self._recipe_path_key()
        advice = self._advice(state, key, inputs, uncertainty=uncertainty, predictions=predictions)
        if plan.cooling_left_s > 0 and self._cooled_at_s is None:
            anti = state.antisolvent_per_water
            state_now = PopulationState(temperature, state.concentration_g_per_kg, population.seeds, population.nuclei,
                                        setpoint_c=advice.setpoints[TEMPERATURE_SP], antisolvent_per_water=anti,
                                        antisolvent_rate_kg_per_min=advice.setpoints.get(ANTISOLVENT_SP, 0.0))
            problem = Problem(now, state_now, plan, self.material, corrected.growth, corrected.nucleation,
                              self.settings, self.max_cooling, self.max_heating, self.setpoint_low_c,
                              self.max_antisolvent)
            advice = dataclasses.replace(advice, problem=problem)
        if self.proposal is not None:
            inputs.update({f"expected_{k}": float(v) for k, v in self.proposal.expected.items()
                           if isinstance(v, (int, float))})
        return advice

    def _predictions(self, state: PlantState, model: ModelAnswer, corrected, inputs: dict) -> tuple[dict, float]:
        """What the corrected model says now, for the log and the guard: (predictions, the
        uncertainty the guard gates on)."""
        kinetics, now = model.kinetics, state.plant_time_s
        temperature, sigma = state.temperature_c, state.sigma
        g_members = corrected.growth_um_per_min(temperature, sigma)
        predictions = {"G_um_per_min": float(np.exp(np.log(g_members).mean())) if sigma > 0 else 0.0,
                       "G_model_um_per_min": float(kinetics.growth_um_per_min),
                       "log10_B": float(corrected.log10_nucleation(temperature, sigma).mean()),
                       "log10_B_model": float(kinetics.log10_nucleation),
                       "lambda": kinetics.morphology_lambda, "model_age_s": model.age_s(now),
                       **{f"spread_{k}": v for k, v in kinetics.spread.items()}}
        # The gate is on what the constraint depends on: growth and nucleation near the limit.
        uncertainty = float(getattr(kinetics, "uncertainty_constraint", kinetics.uncertainty))
        predictions["uncertainty_log10_G"] = float(kinetics.uncertainty)
        predictions["uncertainty_constraint"] = uncertainty
        inputs["facet_source"] = getattr(getattr(kinetics, "facet_source", None), "value", "imaging")
        return predictions, uncertainty

    # ------------------------------------------------------------------ cascade
    def _cascade_advice(self, state: PlantState, model: ModelAnswer, inputs: dict) -> Advice:
        """The cascade (module docstring): the recipe until its last ramp starts, then the PI
        loop on the measured supersaturation at the plan's setpoint, the plan's final hold, and
        completion. The model only chooses setpoints: without it the loop runs at supersaturation
        control's own."""
        from controller.baselines import program_start

        now, batch_min = state.plant_time_s, state.batch_time_s / 60.0
        final = self.recipe.final_temperature_c
        start_min, start_c = program_start(self.recipe)
        trend = self._concentration_trend
        if state.data_ok and math.isfinite(state.concentration_g_per_kg):
            trend.append((now, state.concentration_g_per_kg))
        while trend and trend[0][0] < now - max(self.settings.cascade_creep_window_min, CARRY_WINDOW_MIN) * 60.0:
            trend.popleft()
        reactor = self._temperature_trend
        if state.data_ok and math.isfinite(state.temperature_c):
            reactor.append((now, state.temperature_c))
        while reactor and reactor[0][0] < now - max(REACTOR_RATE_WINDOW_MIN, JITTER_WINDOW_MIN) * 60.0:
            reactor.popleft()
        kwargs: dict = {"reference": {TEMPERATURE_SP: self.recipe.setpoint_c(batch_min)}}
        corrected = None
        if model.laws is not None and state.data_ok:
            corrected = _corrected(model.laws, state.population)
            kwargs["predictions"], kwargs["uncertainty"] = self._predictions(state, model, corrected, inputs)
        elif model.laws is None:
            inputs["fallback"] = "supersaturation_control"
            inputs["model_error"] = model.error or "no answer"
        previous = self._advised.get(TEMPERATURE_SP)
        dt_min = max(now - self._advised_at_s, 0.0) / 60.0 if self._advised_at_s is not None else 0.0
        data_ok = True
        if batch_min < start_min:
            temperature = self.recipe.setpoint_c(batch_min)
        else:
            limit = self.settings.metastable_sigma_limit
            sigma_sp = self.proposal.sigma_setpoint_at(state.temperature_c) if self.proposal is not None else None
            if sigma_sp is None:
                sigma_sp = self.inner.ssc_sigma_setpoint_rel_limit * limit
            inputs["sigma_setpoint"] = sigma_sp
            previous = previous if previous is not None else start_c
            if state.data_ok and math.isfinite(state.sigma):
                # The reactor lags its setpoint (jacket, thermal mass): fed back the
                # supersaturation the solution reaches once the reactor gets there, a setpoint
                # already written is not cooled past the limit by the lag (a cooling-only loop
                # cannot take an overshoot back). At most ``cascade_lookahead_k`` below the
                # reactor: a jacket that saturates leaves the setpoint far below it, and that is
                # not where it is heading soon. The concentration is the analyser's carried to
                # now (its reading is the solution of a delay ago, before the crystals took up
                # what they have since): the stale one held the loop a fifth of the metastable
                # width below its setpoint.
                heading_c = max(previous, state.temperature_c - self.settings.cascade_lookahead_k)
                ahead = math.log(max(self._concentration_when_there(state, model.laws, heading_c), 1e-9)
                                 / float(self.material.solubility_g_per_kg(heading_c, state.antisolvent_per_water)))
                sigma_fed = max(state.sigma, ahead) if math.isfinite(ahead) else state.sigma
                inputs["sigma_at_setpoint"] = ahead
                self._track(sigma_sp - sigma_fed, sigma_sp, dt_min)
                inputs["sigma_tracking_std"] = math.sqrt(self._tracking_var)
                self._jitter(state, now, dt_min)
                inputs["sigma_jitter_std"] = math.sqrt(self._jitter_var)
                rate, self._integral_min = supersaturation_pi(
                    sigma_sp - sigma_fed, self._integral_min, dt_min, self.inner,
                    integral_band=self.settings.cascade_integral_band_rel * sigma_sp)
                if (sigma_fed > limit and self.cascade_heating_k_per_min > 0 and math.isfinite(ahead)
                        and self._solution_not_gaining(now)):
                    # Over the limit (a growth stall: the solution stops being drawn while the
                    # reactor still cools): a cooling-only loop can only stop, heating takes it back.
                    # Judged where the setpoint heads (the reading is a delay old: on it the loop
                    # heated 2 K too far), the loop holds once that is under its setpoint. Only on a
                    # concentration known not to rise: a closed cooling batch's solution only loses
                    # solute, so a rise is the analyser (a drifting ATR read 0.027 and the loop
                    # heated the batch 8 K, dissolving product), and stopping is enough.
                    rate = -min(max(self.inner.ssc_gain_k_per_min * (ahead - sigma_sp), 0.0),
                                self.cascade_heating_k_per_min)
                approach_min = self.settings.cascade_final_approach_min
                if approach_min > 0 and self._planned_hold_s() > 0:
                    # Taper into the final temperature (settings: the loop overshoots a stop).
                    # Only for a hold there: a batch that ends on arrival ends before the
                    # overshoot, and the taper would only add its minutes.
                    rate = min(rate, (previous - final + FINAL_TEMPERATURE_TOLERANCE_K) / approach_min)
                inputs["ssc_cooling_rate_k_per_min"] = rate
                temperature = previous - rate * dt_min
            else:
                temperature, data_ok = previous, False  # no concentration, no feedback: hold
        temperature = max(float(temperature), final)
        setpoints = {TEMPERATURE_SP: temperature}
        if self.antisolvent:
            setpoints[ANTISOLVENT_SP] = self.recipe.antisolvent_kg_per_min(batch_min)
        self._advised, self._advised_at_s = dict(setpoints), now
        # The hold starts when the reactor is there, not the setpoint (a saturated jacket lags),
        # or a recipe's final hold after the setpoint got there, when the plant's supersaturation
        # strategies complete (a jacket that cannot get there is not waited for longer): that
        # hold then counts from the setpoint's arrival, and is over (the plan's holds are at most
        # the recipe's; counted from the wait's end, a fouled jacket's batch ran the plan's hold
        # again, 13 minutes past a product in its window).
        if batch_min >= start_min and temperature <= final + FINAL_TEMPERATURE_TOLERANCE_K:
            if self._setpoint_final_at_s is None:
                self._setpoint_final_at_s = now
            there = state.temperature_c <= final + self.settings.cascade_final_reached_k
            waited = now - self._setpoint_final_at_s >= self.recipe.final_hold_min * 60.0
            if (there or waited) and self._final_at_s is None:
                self._final_at_s = now if there else self._setpoint_final_at_s
        done = self._final_at_s is not None and now - self._final_at_s >= self._planned_hold_s()
        if self._setpoint_final_at_s is not None and self._final_at_s is None and not done:
            # The setpoint is there, the reactor is not (a saturated jacket): it creeps down and
            # the solution crystallises as it does. Worth going on only while that gains yield
            # faster, relative to the yield so far, than the batch's time grows relative to
            # itself: hours per yield, the objective, falls while t Y'/Y > 1.
            gain_per_h = self._creeping_yield_gain_per_h(state)
            inputs["creep_yield_gain_times_batch_time"] = gain_per_h * state.batch_time_s / 3600.0
            done = inputs["creep_yield_gain_times_batch_time"] < 1.0 and not self._below_size_window(state)
        if done and self._yield_floor_unmet(state, inputs):
            done = False  # the analyser says the liquor still holds more than the floor allows
        advice = Advice(setpoints, now, data_ok=data_ok, inputs=inputs, complete_batch=done, **kwargs)
        if corrected is not None and not done and state.data_ok:
            # posed in the hold too: there the plan decides when the batch ends
            population = state.population
            now_state = PopulationState(state.temperature_c, state.concentration_g_per_kg, population.seeds,
                                        population.nuclei, setpoint_c=temperature)
            held_s = now - self._final_at_s if self._final_at_s is not None else 0.0
            advice = dataclasses.replace(advice, problem=self._cascade_problem(
                now_state, corrected, state.batch_time_s, now, start_c, held_s))
        if self.proposal is not None:
            inputs.update({f"expected_{k}": float(v) for k, v in self.proposal.expected.items()
                           if isinstance(v, (int, float))})
        return advice

    def _planned_hold_s(self) -> float:
        """The cascade's final hold: the plan's, or the recipe's without one."""
        if self.proposal is not None and math.isfinite(self.proposal.final_hold_s):
            return self.proposal.final_hold_s
        return self.recipe.final_hold_min * 60.0

    def _solution_not_gaining(self, now_s: float) -> bool:
        """The measured concentration did not rise over the last ``CARRY_WINDOW_MIN`` (least
        squares). In a closed cooling batch (no antisolvent: the cascade runs none) the solution
        cannot gain solute; a rise is the analyser. Too short a trend: not known, False."""
        return self._concentration_slope_per_min(now_s) <= 0.0

    def _concentration_slope_per_min(self, now_s: float) -> float:
        """The measured concentration's least-squares slope over the last ``CARRY_WINDOW_MIN``
        (g/kg per min; NaN: too short a trend)."""
        recent = [(t, c) for t, c in self._concentration_trend if t >= now_s - CARRY_WINDOW_MIN * 60.0]
        return size_trend_per_min(recent)

    def _concentration_when_there(self, state: PlantState, laws, heading_c: float) -> float:
        """The solution's concentration when the reactor gets to ``heading_c``: the analyser's
        reading carried to now (:meth:`_concentration_now`), then on by the measured uptake (its
        trend; only a fall: a closed cooling batch's solution cannot gain) for as long as the
        reactor takes at its measured cooling rate, at most ``CARRY_WINDOW_MIN`` (the trend's own
        window). Without the uptake, the supersaturation where the reactor heads counts the
        cooling to come but not the growth meanwhile: on KNO3, whose crystals draw the solution
        down within a minute, it read three times the true supersaturation and held the loop at
        a third of its setpoint."""
        now_s = state.plant_time_s
        concentration = self._concentration_now(state, laws)
        uptake_per_min = self._concentration_slope_per_min(now_s)
        recent = [(t, c) for t, c in self._temperature_trend if t >= now_s - REACTOR_RATE_WINDOW_MIN * 60.0]
        cooling_k_per_min = -size_trend_per_min(recent, min_span_s=60.0)
        to_go_k = state.temperature_c - heading_c
        if not (math.isfinite(uptake_per_min) and math.isfinite(cooling_k_per_min)) or to_go_k <= 0:
            return concentration
        lag_min = min(to_go_k / cooling_k_per_min, CARRY_WINDOW_MIN) if cooling_k_per_min > 0 else CARRY_WINDOW_MIN
        return concentration + min(uptake_per_min, 0.0) * lag_min

    def _concentration_now(self, state: PlantState, laws=None) -> float:
        """The analyser's reading carried over its delay: the higher of the reading carried by its
        own recent trend (:func:`controller.estimator.carried_over_delay`: lags a change of pace)
        and by the estimate's uptake (:func:`controller.estimator.concentration_now_g_per_kg`:
        noisy at low supersaturation), so the loop judges the solution by the more cautious of
        two imperfect views (a higher concentration, a higher supersaturation)."""
        by_model = concentration_now_g_per_kg(state, self.facts, laws)
        by_trend = carried_over_delay(self._concentration_trend, state.plant_time_s, self.facts.concentration_delay_s,
                                      window_s=CARRY_WINDOW_MIN * 60.0)
        return max(by_model, by_trend) if math.isfinite(by_trend) else by_model

    def _yield_floor_unmet(self, state: PlantState, inputs: dict) -> bool:
        """A specification with a yield floor (``max_yield_loss`` < 1) and a measured yield under
        it: the batch holds on. Measured as the plant's batch record counts it, against the
        colder of the final temperature and the reactor's (an undershoot of the jacket's loop
        leaves 1-2 % of the solute its colder liquor could give up: the plan's rollout ends on the
        setpoint), with the concentration's least-squares value now over ``CARRY_WINDOW_MIN``
        (a reading's noise is half a percent of yield). The plant's time limit still ends the
        batch; without a yield floor, a population or a trend: not judged (False)."""
        spec = self.specification
        max_loss = getattr(spec, "max_yield_loss", 1.0) if spec is not None else 1.0
        population = state.population
        if not max_loss < 1.0 or population is None or not math.isfinite(state.temperature_c):
            return False
        if math.isfinite(self.batch_time_limit_s) and state.batch_time_s >= self.batch_time_limit_s - 60.0:
            return False
        recent = np.array([(t, c) for t, c in self._concentration_trend if t >= state.plant_time_s - CARRY_WINDOW_MIN * 60.0],
                          dtype=float).reshape(-1, 2)
        if recent.shape[0] < 4 or recent[-1, 0] - recent[0, 0] < 120.0:
            return False
        now_g_per_kg, _, at_end = _line_at_end(recent)
        liquor_g_per_kg = now_g_per_kg * (1.0 + state.antisolvent_per_water)
        reference_c = min(self.recipe.final_temperature_c, state.temperature_c)
        equilibrium = float(self.material.solubility_g_per_kg(reference_c, 0.0))
        recoverable = population.seed_solute_g_per_kg_water - equilibrium
        if not recoverable > 0:
            return False
        measured_yield = (population.seed_solute_g_per_kg_water - liquor_g_per_kg) / recoverable
        # The line's standard error at its end (the readings' scatter about it), and the same for
        # the anchor (the charge's readings averaged over a like window, estimator.charge_window_s):
        # ending on the first reading over the floor, the noise ended it, and half such batches
        # were under it (0.986-0.989 against 0.99 on the nominal batch).
        yield_std = math.sqrt(2.0) * at_end * (1.0 + state.antisolvent_per_water) / recoverable
        inputs["measured_yield"], inputs["measured_yield_std"] = measured_yield, yield_std
        return measured_yield - YIELD_FLOOR_Z * yield_std < 1.0 - max_loss

    def _below_size_window(self, state: PlantState) -> bool:
        """The estimated d43 is still below the release window (the crystals growing on pays the
        specification, which the yield rule does not see)."""
        target = self.settings.target_size_um
        population = state.population
        if not target > 0 or population is None:
            return False
        spec = self.specification if self.specification is not None else ProductSpecification()
        d43 = population.summary(self.material.mass_per_um3_kg).get("estimated_d43_um", math.nan)
        return math.isfinite(d43) and d43 < target * (1.0 - spec.d43_tolerance_rel)

    def _creeping_yield_gain_per_h(self, state: PlantState) -> float:
        """Y'/Y of a batch whose reactor creeps down (1/h): the solute it crystallises per hour,
        the measured concentration's fall (least squares over ``cascade_creep_window_min``), over
        the solute crystallised since seeding by the reading (a delay old: the yield so far reads
        a little low, the rule a little patient). NaN: not measurable (too short a trend, no
        population); +inf before any yield."""
        population = state.population
        falling_g_per_kg_h = -60.0 * size_trend_per_min(self._concentration_trend)  # NaN: too short a trend
        if population is None or not math.isfinite(falling_g_per_kg_h):
            return math.nan
        grown = population.seed_solute_g_per_kg_water - state.concentration_g_per_kg
        return max(falling_g_per_kg_h, 0.0) / grown if grown > 0 else math.inf

    def _track(self, error: float, sigma_sp: float, dt_min: float) -> None:
        """The loop's overshoots over its setpoint, a running mean square (twice the semivariance
        of the error above it) over ``cascade_tracking_min``, while the loop tracks: within its
        integral band of the setpoint. Outside it the loop is not tracking but saturated, holding
        or cooling at its fastest: on the approach, or on a fault or a stall (a drifting
        analyser read the solution 0.02 over its setpoint for half an hour, and the margin it
        left barred every setpoint but the lowest for the rest of the batch). The plan keeps the
        setpoints that far from the limit (its rollout takes the loop as ideal; measured, the
        true supersaturation wanders with the loop's error)."""
        if not math.isfinite(error):
            return
        band = self.settings.cascade_integral_band_rel * sigma_sp
        if not self._tracking:
            self._tracking = abs(error) <= band
            if not self._tracking:
                return
        # The error's average over the last minutes, not each reading's: the analyser's noise is
        # in every reading, the true supersaturation (the process's time constants) only wanders
        # slower; squared raw, noise x3 read as a loop three times as loose.
        self._recent_errors.append(error)
        while len(self._recent_errors) > max(int(round(self.settings.cascade_tracking_smooth_min / max(dt_min, 1e-9))), 1):
            self._recent_errors.popleft()
        smoothed = sum(self._recent_errors) / len(self._recent_errors)
        if abs(smoothed) > band:
            return
        # Only overshoots (the solution above its setpoint) take the limit's margin: a loop that
        # runs under its setpoint (it feeds back the more cautious of two views of the solution)
        # is further from the limit, not closer; counted twice, so that a loop that errs both ways
        # alike has its mean square.
        over = min(smoothed, 0.0)
        weight = 1.0 - math.exp(-dt_min / self.settings.cascade_tracking_min) if dt_min > 0 else 0.0
        self._tracking_var += weight * (2.0 * over * over - self._tracking_var)

    def _jitter(self, state: PlantState, now_s: float, dt_min: float) -> None:
        """The supersaturation the loop's own temperature jitter makes, a running mean square
        over ``cascade_tracking_min``, while the loop tracks. The loop holds what it feeds back
        at its setpoint, so its tracking error (:meth:`_track`) cannot see what the reading's
        noise does: each noisy reading moves the cooling rate, and the reactor's moves about a
        steady ramp move the true supersaturation by the solubility's log-slope times the
        excursion (over minutes the concentration barely follows). Measured on the reactor
        temperature (a Pt100: a hundredth of the analyser's noise in supersaturation terms) as
        its residual about the least-squares line over ``JITTER_WINDOW_MIN``: on a nominal batch
        0.0008 against the plant's true wander of 0.0009, where the tracking error read 0.0001
        (with that alone in the margin, 17 of the five-seed benchmark's 120 agent batches ended
        0.01-1.8 % over the limit)."""
        if not (self._tracking and dt_min > 0 and math.isfinite(state.temperature_c)):
            return
        if self._tracking_since_s is None:
            self._tracking_since_s = now_s
        # only the minutes it has tracked: the approach's kink into the loop's ramp is not jitter
        since_s = max(now_s - JITTER_WINDOW_MIN * 60.0, self._tracking_since_s)
        window = [(t, c) for t, c in self._temperature_trend if t >= since_s]
        if len(window) < 6 or window[-1][0] - window[0][0] < 0.75 * JITTER_WINDOW_MIN * 60.0:
            return
        _, jitter_k, _ = _line_at_end(np.asarray(window, dtype=float))
        here = state.temperature_c
        log_slope_per_k = math.log(float(self.material.solubility_g_per_kg(here + 0.5, state.antisolvent_per_water))
                                   / float(self.material.solubility_g_per_kg(here - 0.5, state.antisolvent_per_water)))
        weight = 1.0 - math.exp(-dt_min / self.settings.cascade_tracking_min)
        self._jitter_var += weight * ((log_slope_per_k * jitter_k) ** 2 - self._jitter_var)

    def _cascade_problem(self, now_state: PopulationState, laws, batch_time_s: float, plant_time_s: float,
                         start_c: float, held_s: float = 0.0) -> Problem:
        """The cascade plan's problem from a population state at a batch time (``held_s``: how
        long the batch has held at the final temperature)."""
        final = self.recipe.final_temperature_c
        limit_s = self.batch_time_limit_s
        horizon_s = (limit_s - batch_time_s if math.isfinite(limit_s)
                     else 2.0 * self.recipe.duration_min * 60.0)
        cascade = Cascade(
            metastable_sigma_limit=self.settings.metastable_sigma_limit,
            specification=self.specification if self.specification is not None else ProductSpecification(),
            target_size_um=self.settings.target_size_um,
            elapsed_s=batch_time_s,
            horizon_s=max(horizon_s, self.settings.rollout_step_s),
            recipe_hold_s=self.recipe.final_hold_min * 60.0,
            switch_c=start_c - self.settings.cascade_switch_rel * (start_c - final),
            max_cooling_k_per_min=min(self.inner.ssc_max_cooling_k_per_min, self.max_cooling),
            held_s=held_s,
            # the loop's error in what it feeds back and the error of what it feeds back, independent
            peak_margin=self.settings.cascade_tracking_z * math.sqrt(self._tracking_var + self._jitter_var),
        )
        return Problem(plant_time_s, now_state, self._plan(batch_time_s / 60.0), self.material,
                       laws.growth, laws.nucleation, self.settings, self.max_cooling, 0.0,
                       self.setpoint_low_c, 0.0, cascade=cascade)

    def recipe_forecast(self, seed_masses_g: Sequence[float]) -> list[dict]:
        """What the model expects of this recipe with other seed charges: per charge, the
        cascade plan the agent would make where its programme starts (the recipe's seeds scaled
        to the charge, the solution as charged, the model's laws there with no online
        correction) and its expected outcome (:attr:`controller.proposer.Proposal.expected`:
        ``cost`` in the benchmark's hours, d43, CV, fines, yield, batch time left). The prior
        mean of batch-to-batch learning (:mod:`controller.campaign`).

        Raises:
            ValueError: the strategy runs no cascade (an unseeded or antisolvent recipe, no
                concentration analyser), whose plan this forecast is.
            controller.kinetics_service.ModelUnavailable: the model cannot answer.
        """
        from controller.baselines import program_start
        from controller.kinetics_service import batch_sigma_range
        from controller.proposer import propose_cascade
        from controller.rollout import seed_moments

        if not self.cascade:
            raise ValueError("a recipe forecast is the cascade's plan: this strategy runs none (an unseeded or "
                             "antisolvent recipe, or no concentration analyser)")
        recipe, material = self.recipe, self.material
        start_min, start_c = program_start(recipe)
        concentration = float(material.solubility_g_per_kg(recipe.saturation_temperature_c))
        sigma = math.log(concentration / float(material.solubility_g_per_kg(start_c)))
        limit = self.settings.metastable_sigma_limit
        laws = self.service.estimate([], start_c, sigma, stirring_rpm=self.stirring_rpm,
                                     sigma_range=batch_sigma_range(sigma, limit), constraint_sigma=limit).laws
        out = []
        for mass_g in seed_masses_g:
            seeds = seed_moments(float(mass_g) / 1000.0 / recipe.solvent_mass_kg, recipe.seed_mean_size_um,
                                 recipe.seed_std_size_um, material)
            state = PopulationState(start_c, concentration, seeds, (0.0,) * len(seeds), setpoint_c=start_c)
            proposal = propose_cascade(self._cascade_problem(state, laws, start_min * 60.0, start_min * 60.0, start_c))
            out.append(dict(proposal.expected))
        return out

    def _apply_saved(self) -> None:
        saved, self._saved = self._saved, None
        if not saved or saved.get("batch_start_s") is None:
            return
        try:
            same = abs(float(saved["batch_start_s"]) - self._batch_start_s) <= self.facts.same_batch_tolerance_s
            cooled, final = saved.get("cooled_at_s"), saved.get("final_at_s")
            if same:
                self._cooled_at_s = float(cooled) if cooled is not None else None
                self._final_at_s = float(final) if final is not None else None
        except (TypeError, ValueError) as exc:
            _log.warning("ignoring the strategy's saved milestones (%s)", exc)

    def _product_done(self, state: PlantState) -> bool:
        """A recipe final hold after the setpoint reached the final temperature: with batch time
        in the objective as soon as that is so, otherwise not before the recipe's end either. A
        plan that is still above the final temperature at the recipe's end ramps on, and the
        batch ends a final hold later (the plant's batch time limit bounds it)."""
        if self._final_at_s is None or state.plant_time_s - self._final_at_s < self.recipe.final_hold_min * 60.0:
            return False
        return self.settings.weight_batch_time_per_h > 0 or state.batch_time_s / 60.0 >= self.recipe.duration_min

    # ------------------------------------------------------------------ setpoints
    def _recipe_path_key(self):
        return ("recipe", self._batch_start_s)

    def _path(self, key):
        if key[0] == "recipe":
            start = self._batch_start_s or 0.0
            return lambda t: self.recipe.setpoint_c((t - start) / 60.0)
        proposal = self.proposal
        final = self.recipe.final_temperature_c
        return lambda t: max(proposal.setpoint_at(t), final)

    def _advice(self, state: PlantState, key, inputs: dict, **kwargs) -> Advice:
        """This cycle's setpoints on the plan ``key``, remembered as what is written now."""
        now = state.plant_time_s
        batch_min = state.batch_time_s / 60.0
        final = self.recipe.final_temperature_c
        previous, previous_s = self._advised.get(TEMPERATURE_SP), self._advised_at_s
        cooling_over = batch_min >= self.recipe.cooling_end_min or self._cooled_at_s is not None
        if cooling_over and key[0] == "proposal" and previous is not None and previous_s is not None:
            # Cooling is over on the plan: ramp on to the final temperature at the plan's rate
            # (never a step: the reactor would undershoot and the supersaturation overshoot).
            rate = max(self._plan_rate_k_per_s(key, now), self._recipe_final_rate_k_per_s())
            temperature = max(final, previous - rate * max(now - previous_s, 0.0))
        else:
            temperature = self.follower.value(key, self._path(key), now)
        setpoints = {TEMPERATURE_SP: float(temperature)}
        if self.antisolvent:
            rate = self.proposal.antisolvent_at(now) if key[0] == "proposal" and self.proposal is not None else None
            setpoints[ANTISOLVENT_SP] = rate if rate is not None and not cooling_over else (
                0.0 if cooling_over and key[0] == "proposal" else self.recipe.antisolvent_kg_per_min(batch_min))
        self._advised, self._advised_at_s = dict(setpoints), now
        if temperature <= final + FINAL_TEMPERATURE_TOLERANCE_K:
            if self._final_at_s is None:
                self._final_at_s = now
            if self._cooled_at_s is None and key[0] == "proposal" and self.settings.weight_batch_time_per_h > 0:
                self._cooled_at_s = now
        kwargs.setdefault("reference", {TEMPERATURE_SP: self.recipe.setpoint_c(batch_min)})
        kwargs.setdefault("complete_batch", self._product_done(state))
        return Advice(setpoints, now, inputs=inputs, **kwargs)

    def _plan_rate_k_per_s(self, key, now: float) -> float:
        """Cooling rate of the plan in use just before ``now`` (K/s, >= 0)."""
        path = self._path(key)
        span = 60.0
        return max((path(now - span) - path(now)) / span, 0.0)

    def _recipe_final_rate_k_per_s(self) -> float:
        return max(self.recipe.steps[-1].rate_k_per_min, 0.0) / 60.0 if self.recipe.steps else 1.0 / 60.0

    def _plan(self, batch_min: float) -> BatchPlan:
        return BatchPlan(
            time_left_s=max((self.recipe.duration_min - batch_min) * 60.0, 0.0),
            cooling_left_s=max((self.recipe.cooling_end_min - batch_min) * 60.0, 0.0),
            final_temperature_c=self.recipe.final_temperature_c,
            charged_concentration_g_per_kg=float(self.material.solubility_g_per_kg(self.recipe.saturation_temperature_c)),
            move_interval_s=self.settings.move_interval_min * 60.0,
            step_s=self.settings.rollout_step_s,
            target_size_um=self.settings.target_size_um,
            suspension_ref_kg_per_kg=self.settings.nucleation_suspension_kg_per_kg,
            water_mass_kg=self.recipe.solvent_mass_kg,
        )


def _line_at_end(points: np.ndarray) -> tuple[float, float, float]:
    """A least-squares line through ``points`` ((n, 2): time, value; n >= 3, times not all one):
    (its value at the last time, the points' scatter about it with the line's two degrees of
    freedom taken, the standard error of that value)."""
    t = points[:, 0] - points[-1, 0]
    slope, intercept = np.polyfit(t, points[:, 1], 1)
    residual = points[:, 1] - (slope * t + intercept)
    n = points.shape[0]
    scatter = math.sqrt(float(np.dot(residual, residual)) / (n - 2))
    centred = t - t.mean()
    return float(intercept), scatter, scatter * math.sqrt(1.0 / n + t.mean() ** 2 / float(np.dot(centred, centred)))


def _corrected(laws, estimate: PopulationEstimate):
    """The model's laws with the estimator's online growth and nucleation corrections."""
    from controller.kinetics_service import KineticsLaws

    nucleation = np.array(laws.nucleation, dtype=float, copy=True)
    nucleation[:, 0] += estimate.ln_nucleation_correction / math.log(10.0)
    return KineticsLaws(laws.growth, nucleation, laws.reference_temperature_k).with_growth_bias(
        estimate.ln_growth_correction)
