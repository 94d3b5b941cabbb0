"""The strategies plants run today, behind the agent's :class:`controller.strategy.Strategy`
interface: they run live over OPC UA or Modbus with the same guard, decision log and metrics as
the agent (``agent.strategy=<name>``), and are what the agent is measured against.

Every one follows the recipe until its last ramp starts (charge, cooling to the seeding
temperature, seeding and its hold are the recipe's, as on a plant), runs its programme from
there down to the recipe's final temperature, holds the recipe's final hold and asks the plant
to complete the batch. Held gives no advice and forgets nothing; another batch starts afresh.

- :class:`LinearCooling` (in :mod:`controller.strategy`): the recipe's linear ramps.
- :class:`NaturalCooling`: the jacket on coolant, no control: a first-order decay towards a
  coolant a little below the final temperature, cut off there (fast first, slow last: the
  industrial default that nucleates most).
- :class:`CubicCooling`: the programmed curve of Mullin & Nyvlt (1971), slow first and fast
  last, T = T0 - (T0 - Tf) (t / tc)^3 over the recipe's cooling time, so that the crystal
  surface area grows with the cooling rate and the supersaturation stays about constant.
- :class:`SupersaturationControl` (SSC, concentration feedback): PI on the supersaturation
  sigma = ln(C / C*) from the measured concentration and the solubility curve (the estimator's,
  on the dead-time-aligned temperature), its output the cooling rate, holding a setpoint inside
  the metastable zone (Gron, Borissova & Roberts 2003; Fujiwara et al. 2005). Without a valid
  concentration it holds.
- :class:`DirectNucleationControl` (DNC): on the FBRM total count, cools while the count is in
  hand and heats to dissolve fines when it rises past a band over its target, until it is back
  at the target (Nagy et al. 2008; Abu Bakar et al. 2009). It needs the guard to permit heating
  and never heats above the programme's start (the seeds would dissolve).

Each is a pure function of the cycle's :class:`controller.estimator.PlantState` and what the
guard let through (:meth:`written`); tuning in :class:`controller.settings.BaselineSettings`.

References:
    - Mullin, J. W. & Nyvlt, J. (1971) Chem. Eng. Sci. 26, 369-377 (programmed cooling).
    - Gron, H., Borissova, A. & Roberts, K. J. (2003) Ind. Eng. Chem. Res. 42, 198-206 (SSC).
    - Fujiwara, M., Nagy, Z. K., Chew, J. W. & Braatz, R. D. (2005) J. Process Control 15,
      493-504 (first-principles and direct design approaches, SSC).
    - Nagy, Z. K., Chew, J. W., Fujiwara, M. & Braatz, R. D. (2008) J. Process Control 18,
      399-407 (direct nucleation control).
    - Abu Bakar, M. R., Nagy, Z. K., Saleemi, A. N. & Rielly, C. D. (2009) Cryst. Growth Des. 9,
      1378-1384 (DNC with FBRM).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from controller.estimator import PlantState
from controller.model_client import ModelAnswer
from controller.proposer import Proposal
from controller.settings import BaselineSettings
from controller.strategy import (
    ANTISOLVENT_SP,
    FINAL_TEMPERATURE_TOLERANCE_K,
    TEMPERATURE_SP,
    Advice,
    BatchRecipe,
    supersaturation_pi,
)

__all__ = ["CubicCooling", "DirectNucleationControl", "NaturalCooling", "ProgrammedPath", "SupersaturationControl",
           "program_start"]


def program_start(recipe: BatchRecipe) -> tuple[float, float]:
    """Where a cooling programme takes over from the recipe: (recipe minute, temperature C),
    the start of the recipe's last ramp (after charge, seeding and its hold)."""
    from conf.contract.process import recipe_duration_min

    steps = recipe.steps
    if not steps:
        return 0.0, recipe.start_temperature_c
    before = steps[-2].temperature_c if len(steps) > 1 else recipe.start_temperature_c
    return recipe_duration_min(steps[:-1], recipe.start_temperature_c), before


class _Programme:
    """The part every baseline shares (module docstring): the recipe before the programme, the
    final hold and completion after it, the batch's identity, what was last written."""

    name = "programme"

    def __init__(self, recipe: BatchRecipe, settings: BaselineSettings) -> None:
        self.recipe, self.settings = recipe, settings
        self.start_min, self.start_c = program_start(recipe)
        self.final_c = recipe.final_temperature_c
        self.final_hold_min = recipe.final_hold_min
        # Antisolvent, where the recipe feeds it, stays the recipe's: these are cooling designs.
        self.setpoints = (TEMPERATURE_SP, ANTISOLVENT_SP) if recipe.uses_antisolvent else (TEMPERATURE_SP,)
        self._reset()

    def _reset(self) -> None:
        self._batch_id_s: float | None = None
        self._final_at_s: float | None = None  # plant time the setpoint reached the final temperature
        self._last_c: float | None = None  # the temperature setpoint last written (or advised)
        self._last_s: float | None = None

    # ------------------------------------------------------------------ interface
    def accept(self, proposal: Proposal) -> None:  # no background work
        pass

    def written(self, values: Mapping[str, float], plant_time_s: float) -> None:
        """What the guard let through: a feedback law continues from it (a hold, a rate limit)."""
        value = values.get(TEMPERATURE_SP)
        if value is not None and math.isfinite(value):
            self._last_c = float(value)

    def advise(self, state: PlantState, model: ModelAnswer | None = None) -> Advice:
        if state.held:
            return Advice(None, None, inputs=state.summary())
        if not state.executing:
            if state.batch_start_s is None:
                self._reset()
            return Advice(None, None)
        if state.batch_id_s != self._batch_id_s:
            self._reset()
            self._batch_id_s = state.batch_id_s
        now, batch_min = state.plant_time_s, state.batch_time_s / 60.0
        inputs = dict(state.summary())
        reference = self.recipe.setpoints(batch_min, self.recipe.uses_antisolvent)
        data_ok = True
        if batch_min < self.start_min:
            temperature = reference[TEMPERATURE_SP]
            self._begin(state)
        else:
            previous = self._last_c if self._last_c is not None else self.start_c
            dt_s = max(now - self._last_s, 0.0) if self._last_s is not None else 0.0
            temperature, data_ok = self._programme(state, (batch_min - self.start_min) * 60.0, previous, dt_s, inputs)
            temperature = max(float(temperature), self.final_c)
        self._last_c, self._last_s = temperature, now
        if temperature <= self.final_c + FINAL_TEMPERATURE_TOLERANCE_K and self._final_at_s is None:
            self._final_at_s = now
        done = self._final_at_s is not None and now - self._final_at_s >= self.final_hold_min * 60.0
        setpoints = {TEMPERATURE_SP: temperature}
        if self.recipe.uses_antisolvent:
            setpoints[ANTISOLVENT_SP] = reference[ANTISOLVENT_SP]
        inputs["programme"] = 1.0 if batch_min >= self.start_min else 0.0
        return Advice(setpoints, now, data_ok=data_ok, inputs=inputs, reference=reference, complete_batch=done)

    # ------------------------------------------------------------------ the law
    def _begin(self, state: PlantState) -> None:
        """A cycle before the programme starts (for laws that calibrate on it)."""

    def _programme(self, state: PlantState, elapsed_s: float, previous_c: float, dt_s: float,
                   inputs: dict) -> tuple[float, bool]:
        """The setpoint ``elapsed_s`` into the programme: (temperature C, data ok)."""
        raise NotImplementedError


class NaturalCooling(_Programme):
    """Natural cooling (module docstring): T = Tc + (T0 - Tc) exp(-t / tau), Tc below the final
    temperature by ``natural_coolant_offset_k``, cut off at the final temperature."""

    name = "natural_cooling"

    def _programme(self, state, elapsed_s, previous_c, dt_s, inputs):
        s = self.settings
        coolant = self.final_c - s.natural_coolant_offset_k
        decay = math.exp(-elapsed_s / (s.natural_time_constant_min * 60.0))
        return coolant + (self.start_c - coolant) * decay, True


class CubicCooling(_Programme):
    """Programmed cooling (module docstring): T = T0 - (T0 - Tf) (t / tc)^3 over the recipe's
    cooling time tc (the same batch time as the linear recipe)."""

    name = "cubic_cooling"

    def _programme(self, state, elapsed_s, previous_c, dt_s, inputs):
        duration_s = max((self.recipe.cooling_end_min - self.start_min) * 60.0, 1.0)
        fraction = min(elapsed_s / duration_s, 1.0)
        return self.start_c - (self.start_c - self.final_c) * fraction**3, True


class SupersaturationControl(_Programme):
    """SSC (module docstring): the PI law of :func:`controller.strategy.supersaturation_pi`
    (velocity form, cooling only, anti-windup) at a fixed setpoint; the agent's cascade runs the
    same loop at the setpoints it chooses.

    Args:
        metastable_sigma_limit: the material's metastable limit (ln S); the setpoint is a
            fraction of it.
    """

    name = "supersaturation_control"

    def __init__(self, recipe: BatchRecipe, settings: BaselineSettings, metastable_sigma_limit: float) -> None:
        if not metastable_sigma_limit > 0:
            raise ValueError(f"supersaturation control needs the metastable limit (> 0), got {metastable_sigma_limit}")
        self.sigma_setpoint = settings.ssc_sigma_setpoint_rel_limit * metastable_sigma_limit
        super().__init__(recipe, settings)

    def _reset(self) -> None:
        super()._reset()
        self._integral_min = 0.0  # integral of the error over time, minutes

    def _programme(self, state, elapsed_s, previous_c, dt_s, inputs):
        s = self.settings
        inputs["sigma_setpoint"] = self.sigma_setpoint
        if not (state.data_ok and math.isfinite(state.sigma)):
            return previous_c, False  # no concentration, no feedback: hold
        dt_min = dt_s / 60.0
        rate, self._integral_min = supersaturation_pi(self.sigma_setpoint - state.sigma, self._integral_min, dt_min, s)
        inputs["ssc_cooling_rate_k_per_min"] = rate
        return previous_c - rate * dt_min, True


class DirectNucleationControl(_Programme):
    """DNC (module docstring): cool at ``dnc_cooling_k_per_min`` while the FBRM total count is in
    hand; past target x (1 + band) heat at ``dnc_heating_k_per_min`` until it is back at the
    target; the target is ``dnc_target_counts_rel`` x the count when the programme starts (or,
    unseeded, when the probe first counts crystals; a clear solution before that cools). No
    valid count: hold."""

    name = "direct_nucleation_control"

    def _reset(self) -> None:
        super()._reset()
        self._reference_counts: float | None = None
        self._heating = False

    def _begin(self, state: PlantState) -> None:
        counts = state.chords.total_per_s if state.chords is not None else math.nan
        if math.isfinite(counts) and counts >= self.settings.dnc_detect_counts_per_s:
            self._reference_counts = counts  # the seeds in suspension, last seen before the programme

    def _programme(self, state, elapsed_s, previous_c, dt_s, inputs):
        s = self.settings
        counts = state.chords.total_per_s if state.chords is not None else math.nan
        if not (math.isfinite(counts) and counts >= 0):
            return previous_c, False
        if self._reference_counts is None and counts >= s.dnc_detect_counts_per_s:
            self._reference_counts = counts  # unseeded: the first crystals the probe sees
        dt_min = dt_s / 60.0
        if self._reference_counts is None:  # a clear solution: nothing to count yet, cool
            return previous_c - s.dnc_cooling_k_per_min * dt_min, True
        target = s.dnc_target_counts_rel * self._reference_counts
        if counts > target * (1.0 + s.dnc_band_rel):
            self._heating = True
        elif counts <= target:
            self._heating = False
        inputs.update(dnc_target_counts_per_s=target, dnc_heating=1.0 if self._heating else 0.0)
        if self._heating:
            return min(previous_c + s.dnc_heating_k_per_min * dt_min, self.start_c), True
        return previous_c - s.dnc_cooling_k_per_min * dt_min, True


class ProgrammedPath(_Programme):
    """A given cooling profile after the recipe's part: knot temperatures at equal times over a
    cooling time, and a final hold (the oracle's trajectory, :mod:`controller.oracle`, replayed
    through the guard like every controller's)."""

    name = "programmed_path"

    def __init__(self, recipe: BatchRecipe, settings: BaselineSettings, temperatures_c, cooling_min: float,
                 final_hold_min: float | None = None) -> None:
        if len(temperatures_c) < 2 or not cooling_min > 0:
            raise ValueError("a programmed path needs at least 2 knot temperatures and a cooling time > 0")
        self.temperatures_c, self.cooling_min = tuple(float(t) for t in temperatures_c), float(cooling_min)
        self._knots_min = np.linspace(0.0, self.cooling_min, len(self.temperatures_c))
        super().__init__(recipe, settings)
        if final_hold_min is not None:
            self.final_hold_min = float(final_hold_min)

    def _programme(self, state, elapsed_s, previous_c, dt_s, inputs):
        return float(np.interp(elapsed_s / 60.0, self._knots_min, self.temperatures_c)), True
