"""Strategies: the decision-making part of the agent (plant state -> proposed setpoints).

A strategy sits behind one small interface, so another (a fixed recipe, supersaturation
control, direct nucleation control) can run in the agent's place over the same I/O, guard,
decision log and metrics::

    strategy.setpoints                  # the setpoints it drives (the guard's)
    advice = strategy.advise(view)      # every cycle, fast, no I/O
    strategy.written(values, t)         # what the guard let through this cycle
    strategy.accept(proposal)           # when a background proposal arrives

:class:`Advice` carries the setpoints for this cycle (or None), what they rest on (predictions
and their uncertainty, for the guard and the log) and, optionally, a :class:`Problem` for the
background proposer.

``advise`` must be fast (it runs on the agent's event loop): the model-predictive strategy asks
the MS-GNN in a background thread and uses its latest answer.

- :class:`LinearCooling`: the batch recipe (ramps and holds) as remote setpoints.
- :class:`ModelPredictive`: the MS-GNN + BoTorch agent. It follows the recipe until the seeds
  are in, then estimates the population (controller/estimator.py: moments reconciled with the
  measured mass balance, growth and nucleation corrected online), poses a proposal problem from
  this cycle's setpoint each time the worker is free, and follows the latest proposal's
  trajectory bumplessly (temperature and, where the plant has one, antisolvent rate); the
  recipe when the model cannot answer. When batch time is in its objective it asks the plant to
  complete the batch once cooling has reached the final temperature and the recipe's final hold
  has passed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol

import numpy as np

from conf.contract import signals
from conf.contract.codes import N_FACET_SLOTS, BatchState
from controller import estimator
from controller.estimator import EstimatorSettings, Measurement, PopulationEstimate
from controller.proposer import Problem, Proposal
from controller.rollout import BatchPlan, MaterialConstants, PopulationState, seed_moments
from controller.settings import ProposerSettings
from controller.state import DeadTimeAligner

__all__ = ["ANTISOLVENT_SP", "Advice", "BatchRecipe", "LinearCooling", "ModelPredictive", "PathFollower", "PlantView",
           "Strategy", "observed_growth", "product_target_um"]

_log = logging.getLogger("xtalpilot.strategy")

TEMPERATURE_SP = signals.TEMPERATURE_SETPOINT
ANTISOLVENT_SP = signals.ANTISOLVENT_RATE_SETPOINT
ANTISOLVENT_FLOW = signals.ANTISOLVENT_FLOW
# The setpoint counts as at the final temperature within this (K): cooling is over.
FINAL_TEMPERATURE_TOLERANCE_K = 0.05


@dataclass(frozen=True)
class PlantView:
    """What a strategy sees each cycle.

    Attributes:
        plant_time_s: plant time of the cycle.
        batch_time_s: plant seconds since the batch started executing (None: not executing).
        values: filtered value per signal (NaN when the signal is not ok); status tags as read
            (``batch_state`` among them: Held freezes a strategy, Idle/Completed/Aborted reset it).
        ok: whether each signal passed validation this cycle.
    """

    plant_time_s: float
    batch_time_s: float | None
    values: Mapping[str, float]
    ok: Mapping[str, bool]

    def value(self, name: str) -> float:
        return float(self.values.get(name, math.nan)) if self.ok.get(name, False) else math.nan


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

    def advise(self, view: PlantView) -> Advice: ...

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
    def from_scenario(cls, scenario, target_size_um: float | None = None) -> "BatchRecipe":
        s = scenario.seeding
        return cls(scenario.initial_temperature_c, tuple(scenario.recipe), s.mass_g, s.mean_size_um, s.std_size_um,
                   s.at_min, scenario.reactor.water_mass_kg, scenario.initial_saturation_temperature_c,
                   target_size_um or scenario.target_mean_size_um or 300.0)

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


def product_target_um(cfg) -> float:
    """The product's d43 target: the process's specification where it gives one (the recipe
    sheet's ``target_mean_size_um``), else ``proposer.target_size_um``."""
    return float(cfg.scenario.target_mean_size_um or cfg.proposer.target_size_um)


class LinearCooling:
    """The recipe's linear ramps and holds, written as remote setpoints (the baseline)."""

    name = "linear_cooling"

    def __init__(self, recipe: BatchRecipe, lead_s: float = 0.0) -> None:
        self.recipe = recipe
        self.lead_s = lead_s  # write where the recipe will be by the next cycle
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if recipe.uses_antisolvent else (TEMPERATURE_SP,)

    def advise(self, view: PlantView) -> Advice:
        if view.batch_time_s is None:
            return Advice(None, None)
        batch_min = (view.batch_time_s + self.lead_s) / 60.0
        setpoints = self.recipe.setpoints(batch_min, self.recipe.uses_antisolvent)
        # The recipe's end is the batch's end: ask the plant to complete it (under remote control
        # the plant waits for Complete, up to its batch time limit).
        return Advice(setpoints, view.plant_time_s, reference=setpoints,
                      complete_batch=batch_min >= self.recipe.duration_min)

    def accept(self, proposal: Proposal) -> None:  # no background work
        pass

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None:  # a fixed path
        pass


def observed_growth(values: Mapping[str, float], slots: int = N_FACET_SLOTS) -> float:
    """Volume-equivalent growth rate seen by imaging (um/min); NaN if no facet slot is usable.

    G = dL/dt = (2 / (pi L^2)) sum_f A_f R_f (conf.contract.morphology; the training data of
    models/data.py use the same), with A_f the face areas at unit volume-equivalent size. The
    probe gives area fractions a_j, so A = S a_j with S the habit's total area at L = 1: from
    the kinetic Wulff habit of the observed family rates where the slots carry their {hkl}
    (3.90 for a cube), else a sphere's pi (G = 2 R then). Area fractions alone would make G
    4-5x too small.
    """
    from conf.contract.codes import decode_hkl

    total, area, hkls, rates = 0.0, 0.0, [], []
    for j in range(1, slots + 1):
        a = values.get(f"facet_{j}_area_fraction", math.nan)
        r = values.get(f"facet_{j}_growth_rate_um_per_min", math.nan)
        if math.isfinite(a) and math.isfinite(r) and a > 0:
            total += a * r
            area += a
            hkl = decode_hkl(values.get(f"facet_{j}_hkl", math.nan))
            if hkl is not None and r > 0 and hkl not in hkls:
                hkls.append(hkl)
                rates.append(r)
    if area <= 0:
        return math.nan
    surface = math.pi
    if hkls:
        try:
            from conf.contract.morphology import kinetic_wulff

            surface = float(np.sum(kinetic_wulff(hkls, rates).face_areas))
        except ValueError:  # families that close no polyhedron: keep the sphere
            pass
    return (2.0 / math.pi) * surface * total / area


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


# ISA-88 batch states as the plant reports them (tag map ``batch_state``).
BATCH_IDLE, BATCH_HELD, BATCH_COMPLETED, BATCH_ABORTED = (int(BatchState.IDLE), int(BatchState.HELD),
                                                          int(BatchState.COMPLETED), int(BatchState.ABORTED))


class ModelPredictive:
    """The agent's strategy: MS-GNN kinetics, population estimate, BoTorch proposals.

    Each cycle, once the seeds are in: the population estimate advances one step
    (:mod:`controller.estimator`: moments reconciled with the measured mass balance, growth and
    nucleation corrected online), a proposal problem is posed from *this cycle's* setpoint (what
    is written now, not what was read back from the last write), and the latest proposal is
    followed through a :class:`PathFollower` (bumpless when a plan switches). At the end of
    cooling the setpoint ramps to the final temperature at the plan's rate. When the model cannot
    answer (no checkpoint answer yet, nothing it can use) the recipe is followed instead
    (``inputs["fallback"]``), so a batch the model cannot see still cools.

    Batch states: Held freezes everything (no advice, the estimate and the antisolvent
    totaliser stop); only Idle, Completed and Aborted reset. With ``state_path`` the estimate is
    saved every cycle and restored by an agent restarted within the same batch.

    Args:
        recipe: the batch plan.
        service: a :class:`controller.kinetics_service.KineticsService`.
        material: constants for the moment model.
        settings: proposer settings.
        stirring_rpm: impeller speed (model input).
        max_cooling_k_per_min / max_heating_k_per_min: rates the proposer may use.
        max_antisolvent_kg_per_min: upper limit of the antisolvent setpoint (0: the plant has
            none the agent may write).
        estimator_settings: how the estimate follows the measurements.
        concentration_delay_s: how far the concentration analyser lags the reactor RTD: the
            solubility of sigma is taken at the temperature of that long ago, so sigma compares
            like with like (controller.state.alignment_delay_s).
        state_path: JSON file for the estimate (None: not persisted).
        blend_s: plant seconds over which a plan switch is blended.
    """

    name = "model_predictive"

    def __init__(self, recipe: BatchRecipe, service, material: MaterialConstants, settings: ProposerSettings,
                 stirring_rpm: float = 300.0, max_cooling_k_per_min: float = 1.0,
                 max_heating_k_per_min: float = 0.2, setpoint_low_c: float = -math.inf,
                 max_antisolvent_kg_per_min: float = 0.0, estimator_settings: EstimatorSettings | None = None,
                 state_path: str | None = None, blend_s: float | None = None,
                 concentration_delay_s: float = 0.0) -> None:
        self.recipe, self.service, self.material, self.settings = recipe, service, material, settings
        self.stirring_rpm = stirring_rpm
        self.max_cooling, self.max_heating, self.setpoint_low_c = max_cooling_k_per_min, max_heating_k_per_min, setpoint_low_c
        self.max_antisolvent = max_antisolvent_kg_per_min if settings.antisolvent or recipe.uses_antisolvent else 0.0
        self.antisolvent = self.max_antisolvent > 0  # drives the antisolvent setpoint
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if self.antisolvent else (TEMPERATURE_SP,)
        self.estimator_settings = estimator_settings or EstimatorSettings(
            suspension_ref_kg_per_kg=settings.nucleation_suspension_kg_per_kg)
        self.state_path = Path(state_path) if state_path else None
        self.concentration_delay_s = concentration_delay_s
        self.follower = PathFollower(blend_s if blend_s is not None else settings.move_interval_min * 60.0,
                                     non_increasing=max_heating_k_per_min <= 0)
        self.proposal: Proposal | None = None
        # The MS-GNN answers in a background thread; a cycle takes the latest answer.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgnn")
        self._pending: concurrent.futures.Future | None = None
        self._submitted_wall_s = 0.0
        self._reset()

    def _reset(self) -> None:
        self._kinetics, self._model_error = None, None
        self._asked_at_s = self._kinetics_asked_s = -math.inf
        self.estimate: PopulationEstimate | None = None
        self.proposal = None
        self.antisolvent_per_water = 0.0  # kg fed per kg water since the batch started
        self._anti_time_s: float | None = None
        self._cooled_at_s: float | None = None  # plant time a proposal's setpoint reached the final temperature
        self._final_at_s: float | None = None  # plant time any setpoint reached the final temperature
        self._batch_start_s: float | None = None
        self._advised: dict[str, float] = {}
        self._advised_at_s: float | None = None
        self._restored = False
        self._aligner = DeadTimeAligner(self.concentration_delay_s)
        self.follower.reset()

    # ------------------------------------------------------------------ interface
    def accept(self, proposal: Proposal) -> None:
        # A proposal posed before this batch started belongs to the last one.
        if self._batch_start_s is not None and proposal.plant_time_s >= self._batch_start_s - 1e-6:
            self.proposal = proposal

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None:
        """What the guard let through this cycle: where the path continues from."""
        value = values.get(TEMPERATURE_SP)
        advised = self._advised.get(TEMPERATURE_SP)
        if value is not None and advised is not None and abs(value - advised) > 1e-6:
            self.follower.rebase(float(value), plant_time_s)
            self._advised[TEMPERATURE_SP] = float(value)
        if ANTISOLVENT_SP in values:
            self._advised[ANTISOLVENT_SP] = float(values[ANTISOLVENT_SP])

    def advise(self, view: PlantView) -> Advice:
        state = view.values.get("batch_state", math.nan) if view.ok.get("batch_state", False) else math.nan
        if state == BATCH_HELD:
            # Held is a freeze: nothing moves, nothing is forgotten; the totaliser restarts its
            # clock on resume so the held time feeds nothing.
            self._anti_time_s = None
            return Advice(None, None, inputs={"batch_held": 1.0})
        if view.batch_time_s is None:
            if state in (BATCH_IDLE, BATCH_COMPLETED, BATCH_ABORTED) or not math.isfinite(state):
                self._reset()
            return Advice(None, None)
        self._batch_start_s = view.plant_time_s - view.batch_time_s
        self._now_s = view.plant_time_s
        if not self._restored:
            self._restore()
        self._track_antisolvent(view)
        temperature = view.value("reactor_temperature_c")
        concentration = view.value("concentration_g_per_kg")
        data_ok = math.isfinite(temperature) and math.isfinite(concentration)
        anti = self.antisolvent_per_water
        # the temperature the analyser's sample had (its dead time and lag), for C*
        seen_c = self._aligner.update(view.plant_time_s, temperature) if math.isfinite(temperature) else math.nan
        csat = float(self.material.solubility_g_per_kg(seen_c, anti)) if math.isfinite(seen_c) else math.nan
        sigma = math.log(concentration / csat) if data_ok and concentration > 0 else math.nan
        inputs: dict = {"sigma": sigma, "solubility_g_per_kg": csat, "antisolvent_kg_per_kg_water": anti}
        batch_min = view.batch_time_s / 60.0
        if not data_ok:
            return self._advice(view, self._recipe_path_key(), inputs, data_ok=False)
        if self.estimate is None and batch_min < self.recipe.seed_at_min:
            # Before the seeds are in the recipe decides: there is nothing to steer yet.
            return self._advice(view, self._recipe_path_key(), inputs)
        if self.estimate is None:
            self.estimate = estimator.seed(view.plant_time_s, self._seed_moments(), self._seed_mass(),
                                           concentration * (1.0 + anti))

        kinetics = self._latest_kinetics(view, temperature, sigma)
        laws = kinetics.laws if kinetics is not None and self._model_error is None else None
        measurement = Measurement(view.plant_time_s, temperature, concentration, csat, anti,
                                  view.value("fbrm_counts_total_per_s"))
        self.estimate = estimator.step(self.estimate, measurement, laws, self.material.mass_per_um3_kg,
                                       self.estimator_settings)
        inputs.update(self.estimate.summary(self.material.mass_per_um3_kg))
        self._save()
        if laws is None:
            inputs["fallback"] = "recipe"
            inputs["model_error"] = self._model_error or "waiting for the model's first answer"
            return self._advice(view, self._recipe_path_key(), inputs)
        corrected = _corrected(laws, self.estimate)
        g_members = corrected.growth_um_per_min(temperature, sigma)
        predictions = {"G_um_per_min": float(np.exp(np.log(g_members).mean())) if sigma > 0 else 0.0,
                       "G_model_um_per_min": float(kinetics.growth_um_per_min),
                       "log10_B": float(corrected.log10_nucleation(temperature, sigma).mean()),
                       "log10_B_model": float(kinetics.log10_nucleation),
                       "lambda": kinetics.morphology_lambda, "model_age_s": view.plant_time_s - self._kinetics_asked_s,
                       **{f"spread_{k}": v for k, v in kinetics.spread.items()}}
        plan = self._plan(batch_min)
        key = ("proposal", self.proposal.plant_time_s) if self.proposal is not None else self._recipe_path_key()
        # The gate is on what the constraint depends on: growth and nucleation near the limit.
        uncertainty = float(getattr(kinetics, "uncertainty_constraint", kinetics.uncertainty))
        predictions["uncertainty_log10_G"] = float(kinetics.uncertainty)
        predictions["uncertainty_constraint"] = uncertainty
        inputs["facet_source"] = getattr(getattr(kinetics, "facet_source", None), "value", "imaging")
        advice = self._advice(view, key, inputs, uncertainty=uncertainty, predictions=predictions)
        if plan.cooling_left_s > 0 and self._cooled_at_s is None:
            setpoint_now = advice.setpoints[TEMPERATURE_SP]
            anti_now = advice.setpoints.get(ANTISOLVENT_SP, 0.0)
            state_now = PopulationState(temperature, concentration, self.estimate.seeds, self.estimate.nuclei,
                                        setpoint_c=setpoint_now, antisolvent_per_water=anti,
                                        antisolvent_rate_kg_per_min=anti_now)
            problem = Problem(view.plant_time_s, state_now, plan, self.material, corrected.growth, corrected.nucleation,
                              self.settings, self.max_cooling, self.max_heating, self.setpoint_low_c,
                              self.max_antisolvent)
            advice = dataclasses.replace(advice, problem=problem)
        if self.proposal is not None:
            inputs.update({f"expected_{k}": float(v) for k, v in self.proposal.expected.items()
                           if isinstance(v, (int, float))})
        return advice

    def _product_done(self, view: PlantView) -> bool:
        """A recipe final hold after the setpoint reached the final temperature: with batch time
        in the objective as soon as that is so, otherwise not before the recipe's end either. A
        plan that is still above the final temperature at the recipe's end ramps on, and the
        batch ends a final hold later (the plant's batch time limit bounds it)."""
        if self._final_at_s is None or view.plant_time_s - self._final_at_s < self.recipe.final_hold_min * 60.0:
            return False
        return self.settings.weight_batch_time_per_h > 0 or view.batch_time_s / 60.0 >= self.recipe.duration_min

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

    def _advice(self, view: PlantView, key, inputs: dict, **kwargs) -> Advice:
        """This cycle's setpoints on the plan ``key``, remembered as what is written now."""
        now = view.plant_time_s
        batch_min = view.batch_time_s / 60.0
        final = self.recipe.final_temperature_c
        previous, previous_s = self._advised.get(TEMPERATURE_SP), self._advised_at_s
        cooling_over = batch_min * 60.0 >= self.recipe.cooling_end_min * 60.0 or self._cooled_at_s is not None
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
        kwargs.setdefault("complete_batch", self._product_done(view))
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

    def _seed_mass(self) -> float:
        return self.recipe.seed_mass_g / 1000.0 / self.recipe.solvent_mass_kg

    def _seed_moments(self) -> tuple[float, ...]:
        return seed_moments(self._seed_mass(), self.recipe.seed_mean_size_um, self.recipe.seed_std_size_um,
                            self.material)

    def _track_antisolvent(self, view: PlantView) -> None:
        """Antisolvent fed so far, totalised from the flowmeter (kg per kg water), with a
        low-flow cut-off. While the flowmeter is not valid nothing is added: the estimate then
        lags the plant, which the log shows."""
        last, self._anti_time_s = self._anti_time_s, view.plant_time_s
        flow = view.value(ANTISOLVENT_FLOW)
        if (last is None or not math.isfinite(flow) or view.plant_time_s <= last
                or flow < self.settings.antisolvent_low_flow_cutoff_kg_per_min):
            return
        dt_s = min(view.plant_time_s - last, 600.0)
        self.antisolvent_per_water += max(flow, 0.0) * dt_s / 60.0 / self.recipe.solvent_mass_kg

    # ------------------------------------------------------------------ persistence
    def _save(self) -> None:
        if self.state_path is None or self.estimate is None:
            return
        record = {"batch_start_s": self._batch_start_s, "estimate": self.estimate.to_dict(),
                  "antisolvent_per_water": self.antisolvent_per_water, "cooled_at_s": self._cooled_at_s,
                  "final_at_s": self._final_at_s}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.state_path)  # atomic: a crash leaves the old or the new file
        except OSError as exc:
            _log.warning("cannot save the estimator state to %s: %s", self.state_path, exc)

    def _restore(self) -> None:
        """The saved estimate, when it belongs to this batch (same start within a minute)."""
        self._restored = True
        if self.state_path is None or not self.state_path.is_file() or self._batch_start_s is None:
            return
        try:
            record = json.loads(self.state_path.read_text())
            start = float(record["batch_start_s"])
            estimate = PopulationEstimate.from_dict(record["estimate"])
            anti = float(record["antisolvent_per_water"])
            cooled = record.get("cooled_at_s")
            final_at = record.get("final_at_s")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring the estimator state in %s (%s): starting the estimate afresh", self.state_path, exc)
            return
        # Another batch's: it started elsewhen, or its estimate runs ahead of this plant clock (a
        # restarted plant's clock starts over, so its batches can start at the same plant time).
        if abs(start - self._batch_start_s) > 60.0 or estimate.time_s > self._now_s + 1e-6:
            return
        self.estimate, self.antisolvent_per_water = estimate, anti
        self._cooled_at_s = float(cooled) if cooled is not None else None
        self._final_at_s = float(final_at) if final_at is not None else None
        _log.info("estimator state restored from %s (batch started at plant time %.0f s)", self.state_path, start)

    # ------------------------------------------------------------------ the model
    def _latest_kinetics(self, view: PlantView, temperature: float, sigma: float):
        """The latest MS-GNN answer; asks again in the background every ``model_refresh_s``."""
        from controller.facet_graph import imaging_from_values

        if (self._pending is not None and not self._pending.done()
                and time.monotonic() - self._submitted_wall_s > self.settings.model_timeout_s):
            # A hung query (a stuck device, a deadlock) cannot be killed in a thread: abandon it to
            # its thread and give the model a fresh one; the recipe meanwhile (fallback).
            self._model_error = (f"model query timed out after {self.settings.model_timeout_s:.0f} s; "
                                 "model thread restarted")
            _log.warning(self._model_error)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgnn")
            self._pending = None
        if self._pending is not None and self._pending.done():
            try:
                self._kinetics, self._model_error = self._pending.result(), None
                self._kinetics_asked_s = self._asked_at_s
            except Exception as exc:  # ModelUnavailable, or a model bug: the recipe until it answers
                self._model_error = f"{type(exc).__name__}: {exc}"
            self._pending = None
        due = (self._kinetics is None or self._model_error is not None
               or view.plant_time_s - self._asked_at_s >= self.settings.model_refresh_s)
        if self._pending is None and due:
            from controller.kinetics_service import batch_sigma_range

            # Stale imaging slots are masked, not carried at their last good values; the laws are
            # fitted over the supersaturations the batch visits (up to the metastable limit).
            limit = self.settings.metastable_sigma_limit
            self._pending = self._executor.submit(self.service.estimate, imaging_from_values(view.values, view.ok),
                                                  temperature, sigma, stirring_rpm=self.stirring_rpm,
                                                  sigma_range=batch_sigma_range(sigma, limit), constraint_sigma=limit)
            self._asked_at_s = view.plant_time_s
            self._submitted_wall_s = time.monotonic()
        return self._kinetics

    def close(self) -> None:
        """Stop the model thread (a pending query is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_for_model(self, timeout_s: float = 10.0) -> None:
        """Block until the pending model query is answered (tests, benchmarks)."""
        if self._pending is not None:
            concurrent.futures.wait([self._pending], timeout=timeout_s)


def _corrected(laws, estimate: PopulationEstimate):
    """The model's laws with the estimator's online growth and nucleation corrections."""
    from controller.kinetics_service import KineticsLaws

    nucleation = np.array(laws.nucleation, dtype=float, copy=True)
    nucleation[:, 0] += estimate.ln_nucleation_correction / math.log(10.0)
    return KineticsLaws(laws.growth, nucleation, laws.reference_temperature_k).with_growth_bias(
        estimate.ln_growth_correction)
