"""Strategies: the decision-making part of the agent (plant state -> proposed setpoints).

A strategy sits behind one small interface, so another (a fixed recipe, supersaturation
control, direct nucleation control) can run in the agent's place over the same I/O, guard,
decision log and metrics::

    strategy.setpoints                  # the setpoints it drives (the guard's)
    advice = strategy.advise(view)      # every cycle, fast, no I/O
    strategy.accept(proposal)           # when a background proposal arrives

:class:`Advice` carries the setpoints for this cycle (or None), what they rest on (predictions
and their uncertainty, for the guard and the log) and, optionally, a :class:`Problem` for the
background proposer.

``advise`` must be fast (it runs on the agent's event loop): the model-predictive strategy asks
the MS-GNN in a background thread and uses its latest answer.

- :class:`LinearCooling`: the batch recipe (ramps and holds) as remote setpoints.
- :class:`ModelPredictive`: the MS-GNN + BoTorch agent. It follows the recipe until the seeds
  are in, then estimates the population (moment model driven by the measured temperature and
  concentration, kinetics from the model with a growth bias learnt online from imaging),
  poses a proposal problem each time the worker is free, and writes the latest proposal's
  trajectory (temperature and, where the plant has one, antisolvent rate). When batch time is
  in its objective it asks the plant to complete the batch once cooling has reached the final
  temperature and the recipe's final hold has passed.
"""

from __future__ import annotations

import concurrent.futures
import math
from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

from controller.proposer import Problem, Proposal
from controller.rollout import BatchPlan, MaterialConstants, PopulationState, seed_moments
from controller.settings import ProposerSettings

__all__ = ["ANTISOLVENT_SP", "Advice", "BatchRecipe", "LinearCooling", "ModelPredictive", "PlantView", "Strategy",
           "observed_growth"]

TEMPERATURE_SP = "reactor_temperature_setpoint_c"
ANTISOLVENT_SP = "antisolvent_rate_setpoint_kg_per_min"
ANTISOLVENT_FLOW = "antisolvent_flow_kg_per_min"
# The setpoint counts as at the final temperature within this (K): cooling is over.
FINAL_TEMPERATURE_TOLERANCE_K = 0.05


@dataclass(frozen=True)
class PlantView:
    """What a strategy sees each cycle.

    Attributes:
        plant_time_s: plant time of the cycle.
        batch_time_s: plant seconds since the batch started executing (None: not executing).
        values: filtered value per signal (NaN when the signal is not ok).
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


class Strategy(Protocol):
    name: str
    setpoints: tuple[str, ...]

    def advise(self, view: PlantView) -> Advice: ...

    def accept(self, proposal: Proposal) -> None: ...


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
        from plant_sim.scenarios import recipe_duration_min

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
        from plant_sim.scenarios import recipe_setpoint

        return recipe_setpoint(self.steps, self.start_temperature_c, batch_min)[0]

    def antisolvent_kg_per_min(self, batch_min: float) -> float:
        from plant_sim.scenarios import recipe_setpoint

        return recipe_setpoint(self.steps, self.start_temperature_c, batch_min)[1]

    def setpoints(self, batch_min: float, antisolvent: bool) -> dict[str, float]:
        """The recipe's remote setpoints at a batch time (antisolvent only where driven)."""
        out = {TEMPERATURE_SP: self.setpoint_c(batch_min)}
        if antisolvent:
            out[ANTISOLVENT_SP] = self.antisolvent_kg_per_min(batch_min)
        return out


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
        return Advice(self.recipe.setpoints(batch_min, self.recipe.uses_antisolvent), view.plant_time_s)

    def accept(self, proposal: Proposal) -> None:  # no background work
        pass


def observed_growth(values: Mapping[str, float], slots: int = 4) -> float:
    """Volume-equivalent growth rate seen by imaging (um/min); NaN if no facet slot is usable.

    G = dL/dt = (2 / (pi L^2)) sum_f A_f R_f (plant_sim.morphology; the training data of
    models/data.py use the same), with A_f the face areas at unit volume-equivalent size. The
    probe gives area fractions a_j, so A = S a_j with S the habit's total area at L = 1: from
    the kinetic Wulff habit of the observed family rates where the slots carry their {hkl}
    (3.90 for a cube), else a sphere's pi (G = 2 R then). Area fractions alone would make G
    4-5x too small.
    """
    from controller.facet_graph import decode_hkl

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
            from plant_sim.morphology import kinetic_wulff

            surface = float(np.sum(kinetic_wulff(hkls, rates).face_areas))
        except ValueError:  # families that close no polyhedron: keep the sphere
            pass
    return (2.0 / math.pi) * surface * total / area


class ModelPredictive:
    """The agent's strategy: MS-GNN kinetics, population estimate, BoTorch proposals.

    Args:
        recipe: the batch plan.
        service: a :class:`controller.kinetics_service.KineticsService`.
        material: constants for the moment model.
        settings: proposer settings.
        stirring_rpm: impeller speed (model input).
        max_cooling_k_per_min / max_heating_k_per_min: rates the proposer may use.
        max_antisolvent_kg_per_min: upper limit of the antisolvent setpoint (0: the plant has
            none the agent may write).
    """

    name = "model_predictive"
    MIN_SIGMA_FOR_BIAS = 0.002

    def __init__(self, recipe: BatchRecipe, service, material: MaterialConstants, settings: ProposerSettings,
                 stirring_rpm: float = 300.0, max_cooling_k_per_min: float = 1.0,
                 max_heating_k_per_min: float = 0.2, setpoint_low_c: float = -math.inf,
                 max_antisolvent_kg_per_min: float = 0.0) -> None:
        self.recipe, self.service, self.material, self.settings = recipe, service, material, settings
        self.stirring_rpm = stirring_rpm
        self.max_cooling, self.max_heating, self.setpoint_low_c = max_cooling_k_per_min, max_heating_k_per_min, setpoint_low_c
        self.max_antisolvent = max_antisolvent_kg_per_min if settings.antisolvent or recipe.uses_antisolvent else 0.0
        self.antisolvent = self.max_antisolvent > 0  # drives the antisolvent setpoint
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if self.antisolvent else (TEMPERATURE_SP,)
        self.proposal: Proposal | None = None
        self.ln_growth_bias = 0.0
        # The MS-GNN answers in a background thread; a cycle takes the latest answer.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgnn")
        self._pending: concurrent.futures.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self._estimate, self._model_error = None, None
        self._asked_at_s = self._estimate_asked_s = -math.inf
        self.seeds = (0.0,) * 6
        self.nuclei = (0.0,) * 6
        self._seeded = False
        self._last_time_s: float | None = None
        self.proposal = None
        self.antisolvent_per_water = 0.0  # kg fed per kg water since the batch started
        self._anti_time_s: float | None = None
        self._cooled_at_s: float | None = None  # plant time the setpoint reached the final temperature

    def accept(self, proposal: Proposal) -> None:
        self.proposal = proposal

    def advise(self, view: PlantView) -> Advice:
        if view.batch_time_s is None:
            self._reset()
            return Advice(None, None)
        self._track_antisolvent(view)
        temperature = view.value("reactor_temperature_c")
        concentration = view.value("concentration_g_per_kg")
        data_ok = math.isfinite(temperature) and math.isfinite(concentration)
        anti = self.antisolvent_per_water
        csat = float(self.material.solubility_g_per_kg(temperature, anti)) if data_ok else math.nan
        sigma = math.log(concentration / csat) if data_ok and concentration > 0 else math.nan
        inputs = {"sigma": sigma, "solubility_g_per_kg": csat, "growth_bias": math.exp(self.ln_growth_bias),
                  "antisolvent_kg_per_kg_water": anti}
        batch_min = view.batch_time_s / 60.0
        recipe_sp = self.recipe.setpoints(batch_min, self.antisolvent)
        if not data_ok:
            return Advice(recipe_sp, view.plant_time_s, data_ok=False, inputs=inputs)

        if not self._seeded and batch_min < self.recipe.seed_at_min:
            # Before the seeds are in the recipe decides: there is nothing to steer yet, and no
            # crystals for imaging to see, so the model is not asked.
            self._last_time_s = view.plant_time_s
            return Advice(recipe_sp, view.plant_time_s, inputs=inputs)

        est = self._latest_kinetics(view, temperature, sigma)
        if est is None or self._model_error is not None:
            inputs["model_error"] = self._model_error or "waiting for the model's first answer"  # type: ignore[assignment]
            self._last_time_s = view.plant_time_s
            return Advice(recipe_sp, view.plant_time_s, model_ok=False, inputs=inputs)
        # kinetics now: the latest answer's laws at the current conditions (geometric mean over members)
        g_members = est.laws.growth_um_per_min(temperature, sigma)
        g_model = float(np.exp(np.log(g_members).mean())) if sigma > 0 else 0.0
        predictions = {"G_um_per_min": g_model * math.exp(self.ln_growth_bias), "G_model_um_per_min": g_model,
                       "log10_B": float(est.laws.log10_nucleation(temperature, sigma).mean()),
                       "lambda": est.morphology_lambda, "model_age_s": view.plant_time_s - self._estimate_asked_s,
                       **{f"spread_{k}": v for k, v in est.spread.items()}}
        self._update_bias(view, g_model, sigma)
        laws = est.laws.with_growth_bias(self.ln_growth_bias)
        self._integrate(view, temperature, concentration, laws)
        inputs.update(self._population_summary())

        plan = BatchPlan(
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
        active = view.value("reactor_temperature_setpoint_active_c")
        cooled = self._cooling_over(view, active)
        problem = None
        if plan.cooling_left_s > 0 and not cooled:
            flow = view.value(ANTISOLVENT_FLOW)
            state = PopulationState(temperature, concentration, self.seeds, self.nuclei,
                                    setpoint_c=active if math.isfinite(active) else None,
                                    antisolvent_per_water=anti,
                                    antisolvent_rate_kg_per_min=flow if math.isfinite(flow) else 0.0)
            problem = Problem(view.plant_time_s, state, plan, self.material, laws.growth, laws.nucleation,
                              self.settings, self.max_cooling, self.max_heating, self.setpoint_low_c,
                              self.max_antisolvent)
        if self.proposal is None and not cooled:
            setpoints, when = recipe_sp, view.plant_time_s
        elif plan.cooling_left_s <= 0 or cooled:
            setpoints, when = {TEMPERATURE_SP: self.recipe.final_temperature_c}, view.plant_time_s
            if self.antisolvent:
                setpoints[ANTISOLVENT_SP] = 0.0
        else:
            setpoints = {TEMPERATURE_SP: max(self.proposal.setpoint_at(view.plant_time_s),
                                             self.recipe.final_temperature_c)}
            rate = self.proposal.antisolvent_at(view.plant_time_s)
            if self.antisolvent:
                setpoints[ANTISOLVENT_SP] = rate if rate is not None else recipe_sp[ANTISOLVENT_SP]
            when = self.proposal.plant_time_s
            # what the proposal in use expects of the batch (for the log and the operator)
            inputs.update({f"expected_{k}": float(v) for k, v in self.proposal.expected.items()
                           if isinstance(v, (int, float))})
        complete = (self.settings.weight_batch_time_per_h > 0 and self._cooled_at_s is not None
                    and view.plant_time_s - self._cooled_at_s >= self.recipe.final_hold_min * 60.0)
        return Advice(setpoints, when, uncertainty=est.uncertainty, predictions=predictions, inputs=inputs,
                      problem=problem, complete_batch=complete)

    def _cooling_over(self, view: PlantView, active_setpoint_c: float) -> bool:
        """Whether cooling has ended on the agent's own plan: with batch time in the objective,
        once the plant's active setpoint reached the final temperature (latched for the batch).
        The end of the recipe's cooling is the caller's other test."""
        if self._cooled_at_s is None and self.settings.weight_batch_time_per_h > 0 and self.proposal is not None:
            if (math.isfinite(active_setpoint_c)
                    and active_setpoint_c <= self.recipe.final_temperature_c + FINAL_TEMPERATURE_TOLERANCE_K):
                self._cooled_at_s = view.plant_time_s
        return self._cooled_at_s is not None

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

    # ------------------------------------------------------------------ estimation
    def _latest_kinetics(self, view: PlantView, temperature: float, sigma: float):
        """The latest MS-GNN answer; asks again in the background every ``model_refresh_s``."""
        from controller.facet_graph import imaging_from_values

        if self._pending is not None and self._pending.done():
            try:
                self._estimate, self._model_error = self._pending.result(), None
                self._estimate_asked_s = self._asked_at_s
            except Exception as exc:  # ModelUnavailable, or a model bug: hold until it answers
                self._model_error = f"{type(exc).__name__}: {exc}"
            self._pending = None
        due = (self._estimate is None or self._model_error is not None
               or view.plant_time_s - self._asked_at_s >= self.settings.model_refresh_s)
        if self._pending is None and due:
            self._pending = self._executor.submit(self.service.estimate, imaging_from_values(view.values),
                                                  temperature, sigma, stirring_rpm=self.stirring_rpm)
            self._asked_at_s = view.plant_time_s
        return self._estimate

    def close(self) -> None:
        """Stop the model thread (a pending query is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def wait_for_model(self, timeout_s: float = 10.0) -> None:
        """Block until the pending model query is answered (tests, benchmarks)."""
        if self._pending is not None:
            concurrent.futures.wait([self._pending], timeout=timeout_s)

    def _update_bias(self, view: PlantView, g_model: float, sigma: float) -> None:
        """Online model-plant correction: filtered ln(G imaging / G model)."""
        observed = observed_growth({k: view.value(k) for k in view.values if k.startswith("facet_")})
        if not (math.isfinite(observed) and observed > 0 and sigma > self.MIN_SIGMA_FOR_BIAS and g_model > 0):
            return
        dt = view.plant_time_s - self._last_time_s if self._last_time_s is not None else 0.0
        alpha = 1.0 - math.exp(-max(dt, 0.0) / self.settings.bias_time_constant_s) if dt > 0 else 0.2
        residual = math.log(observed / g_model)
        self.ln_growth_bias = float(np.clip(self.ln_growth_bias + alpha * (residual - self.ln_growth_bias), -3, 3))

    def _integrate(self, view: PlantView, temperature: float, concentration: float, laws) -> None:
        import torch

        from controller.rollout import step_moments

        batch_min = view.batch_time_s / 60.0
        if not self._seeded and batch_min >= self.recipe.seed_at_min:
            mass = self.recipe.seed_mass_g / 1000.0 / self.recipe.solvent_mass_kg
            self.seeds = seed_moments(mass, self.recipe.seed_mean_size_um, self.recipe.seed_std_size_um, self.material)
            self._seeded = True
        last, self._last_time_s = self._last_time_s, view.plant_time_s
        if last is None or not self._seeded:
            return
        dt = min(max(view.plant_time_s - last, 0.0), 600.0)
        if dt <= 0:
            return
        growth = torch.as_tensor(laws.growth.mean(axis=0, keepdims=True))
        nucleation = torch.as_tensor(laws.nucleation.mean(axis=0, keepdims=True))
        seeds = torch.tensor([self.seeds], dtype=torch.float64)
        nuclei = torch.tensor([self.nuclei], dtype=torch.float64)
        n_sub = max(1, int(math.ceil(dt / 60.0)))
        anti = self.antisolvent_per_water
        solute = torch.tensor([concentration * (1.0 + anti)], dtype=torch.float64)  # g per kg water
        for _ in range(n_sub):
            _, seeds, nuclei, _ = step_moments(torch.tensor([temperature], dtype=torch.float64), solute, seeds,
                                               nuclei, growth, nucleation, self.material, dt / n_sub,
                                               self.settings.nucleation_suspension_kg_per_kg, anti)
        self.seeds = tuple(float(v) for v in seeds[0])
        self.nuclei = tuple(float(v) for v in nuclei[0])

    def _population_summary(self) -> dict:
        total = np.add(self.seeds, self.nuclei)
        d43 = total[4] / total[3] if total[3] > 0 else math.nan
        return {"estimated_d43_um": float(d43),
                "estimated_fines": float(self.nuclei[3] / total[3]) if total[3] > 0 else math.nan,
                "estimated_crystal_kg_per_kg": float(self.material.mass_per_um3_kg * total[3])}
