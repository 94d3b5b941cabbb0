"""The simulated plant as its DCS presents it: reactor, instruments, batch logic and protection.

:class:`Plant` wraps the physics (:mod:`plant_sim.reactor`) and the instruments
(:mod:`plant_sim.sensors`) in what a distributed control system adds around a crystallizer:

- **Batch state machine** (ISA-88 / MTP style): Idle, Execute, Held, Completed, Aborted, driven
  by the ``batch_command`` tag (start, hold, resume, abort, reset, complete). Invalid transitions
  are rejected. The recipe clock runs only in Execute; Completed follows the recipe's last step,
  or an earlier ``complete`` (MTP's Complete command: the supervisor ends the batch when its
  product is done).
- **Setpoint protection, as a DCS does it:** writes that are not finite, outside the engineering
  range or of the wrong type are rejected; accepted writes are clamped to the plant limits; the
  working setpoint moves towards its target no faster than ``max_rate_per_min``.
- **Remote cascade and shedding:** the agent drives the temperature setpoint only while the batch
  executes, the agent reports automatic mode (``agent_mode`` = 2) and its heartbeat keeps changing.
  If the heartbeat stops changing for ``shed_timeout_s`` of plant time, the loop sheds to local
  control (hold the working setpoint, or follow the recipe) and ``shed_active`` latches. It clears
  when the agent writes ``agent_mode`` = 2 again with a live heartbeat, the explicit re-entry an
  operator expects after a communication loss.

The plant never raises on a write: every outcome is a :class:`WriteResult`, which the OPC UA and
Modbus servers map to their status and exception codes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from plant_sim import validate
from plant_sim.kinetics import FacetKinetics, GrowthCalibration, PowerLawKinetics, facet_kinetics_for_material
from plant_sim.materials import Material, SolubilityPolynomial, get_material
from plant_sim.pbe import size_statistics
from plant_sim.reactor import Controls, Reactor, Step, facet_rates_fn, power_law_rates_fn
from plant_sim.scenarios import (
    KineticsModel,
    Operation,
    Scenario,
    fouling_resistance_m2k_per_w,
    impurity_ppm_at,
    recipe_setpoint,
)
from plant_sim.sensors import MEASURED_SIGNALS, SensorSuite, Truth
from plant_sim.tagmap import TagMap, TagMapError

N_FACET_SLOTS = 4


class BatchState(enum.IntEnum):
    IDLE = 0
    EXECUTE = 1
    HELD = 2
    COMPLETED = 3
    ABORTED = 4


class BatchCommand(enum.IntEnum):
    NONE = 0
    START = 1
    HOLD = 2
    RESUME = 3
    ABORT = 4
    RESET = 5
    COMPLETE = 6


class AgentMode(enum.IntEnum):
    MANUAL = 0
    ADVISORY = 1
    AUTOMATIC = 2


class ShedAction(str, enum.Enum):
    """What the local loop does after heartbeat loss: hold the setpoint or run the recipe."""

    hold = "hold"
    recipe = "recipe"


# Integer signals whose values are codes; anything else is rejected as out of range.
_ENUM_SIGNALS: dict[str, type[enum.IntEnum]] = {"batch_command": BatchCommand, "agent_mode": AgentMode}

# (state, command) -> next state. Anything else is an invalid transition.
_TRANSITIONS: dict[tuple[BatchState, BatchCommand], BatchState] = {
    (BatchState.IDLE, BatchCommand.START): BatchState.EXECUTE,
    (BatchState.EXECUTE, BatchCommand.HOLD): BatchState.HELD,
    (BatchState.HELD, BatchCommand.RESUME): BatchState.EXECUTE,
    (BatchState.EXECUTE, BatchCommand.ABORT): BatchState.ABORTED,
    (BatchState.HELD, BatchCommand.ABORT): BatchState.ABORTED,
    (BatchState.EXECUTE, BatchCommand.COMPLETE): BatchState.COMPLETED,
    (BatchState.COMPLETED, BatchCommand.RESET): BatchState.IDLE,
    (BatchState.ABORTED, BatchCommand.RESET): BatchState.IDLE,
}


class WriteStatus(str, enum.Enum):
    ok = "ok"
    clamped = "clamped"
    rejected_read_only = "rejected_read_only"
    rejected_unknown = "rejected_unknown"
    rejected_not_finite = "rejected_not_finite"
    rejected_out_of_range = "rejected_out_of_range"
    rejected_type = "rejected_type"
    rejected_invalid_state = "rejected_invalid_state"
    failed = "failed"  # the plant could not process the write (an internal error); nothing applied


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one write. ``applied`` is the value the tag now holds (None if rejected)."""

    status: WriteStatus
    applied: float | None
    message: str

    @property
    def accepted(self) -> bool:
        return self.status in (WriteStatus.ok, WriteStatus.clamped)


@dataclass(frozen=True)
class PlantSettings:
    """Runtime settings of the plant's DCS layer.

    Attributes:
        step_s: physics step; the served plant steps 1 s of plant time.
        shed_timeout_s: plant seconds without a heartbeat change before shedding.
        shed_action: hold or recipe after shedding.
        autostart: start the batch at plant start (offline simulation).
        batch_report_dir: where a completed batch's report (``batch_<n>.json``, see
            :meth:`Plant.batch_report`) is written; None: kept in memory only.
    """

    step_s: float = 1.0
    shed_timeout_s: float = 120.0
    shed_action: ShedAction = ShedAction.hold
    autostart: bool = False
    batch_report_dir: str | None = None

    def __post_init__(self) -> None:
        validate.positive(self, "step_s", "shed_timeout_s")


# Signals the simulated plant produces besides the instruments, and the commands it accepts.
STATUS_SIGNALS = (
    "plant_time_s",
    "reactor_temperature_setpoint_active_c",
    "batch_state",
    "batch_time_s",
    "control_source",
    "shed_active",
) + tuple(f"facet_{k}_hkl" for k in range(1, N_FACET_SLOTS + 1))
WRITABLE_SIGNALS = (
    "reactor_temperature_setpoint_c",
    "antisolvent_rate_setpoint_kg_per_min",
    "agent_heartbeat",
    "agent_mode",
    "operator_mode_request",
    "batch_command",
)
KNOWN_SIGNALS = frozenset(MEASURED_SIGNALS) | frozenset(STATUS_SIGNALS) | frozenset(WRITABLE_SIGNALS)


class PlantConfigError(ValueError):
    """A scenario the simulated plant cannot run (unknown material, not a solution system...)."""


def hkl_code(hkl: tuple[int, int, int]) -> int:
    """{hkl} as the integer the facet_k_hkl tags carry: 100 h + 10 k + l (indices 0..9)."""
    return 100 * hkl[0] + 10 * hkl[1] + hkl[2]


def build_reactor(scenario: Scenario) -> tuple[Reactor, tuple[tuple[int, int, int], ...]]:
    """The scenario's reactor with its kinetics. Returns (reactor, facet families shown)."""
    k = scenario.kinetics
    if k.model is KineticsModel.power_law:
        try:
            return _power_law_reactor(scenario)
        except ValueError as exc:
            raise PlantConfigError(f"scenario.kinetics.power_law: {exc}") from None
    try:
        material: Material = get_material(scenario.material)
    except KeyError as exc:
        raise PlantConfigError(f"scenario.material: {exc.args[0]}") from None
    try:
        facets = _facet_kinetics(material, k)
    except ValueError as exc:
        raise PlantConfigError(f"scenario.material={material.name}: {exc}") from None
    reactor = Reactor(
        scenario.reactor, facet_rates_fn(facets), material.solubility.g_per_kg, material.density_kg_per_m3
    )
    return reactor, facets.hkls[:N_FACET_SLOTS]


def _power_law_reactor(scenario: Scenario) -> tuple[Reactor, tuple]:
    k = scenario.kinetics
    p = k.power_law
    law = PowerLawKinetics(
        name=p.name,
        growth_rate_m_per_s=p.growth_rate_um_per_min * 1e-6 / 60.0,
        growth_exponent=p.growth_exponent,
        dissolution_rate_m_per_s=p.dissolution_rate_um_per_min * 1e-6 / 60.0,
        dissolution_exponent=p.dissolution_exponent,
        nucleation_rate_per_kg_s=p.nucleation_rate_per_kg_s,
        nucleation_exponent=p.nucleation_exponent,
        suspension_exponent=p.suspension_exponent,
        growth_activation_j_per_mol=p.growth_activation_kj_per_mol * 1e3,
        nucleation_activation_j_per_mol=p.nucleation_activation_kj_per_mol * 1e3,
        nucleation_basis=p.nucleation_basis,
        volume_shape_factor=p.volume_shape_factor,
        reference=p.reference,
    )
    solubility = SolubilityPolynomial(tuple(p.solubility_coefficients_g_per_kg), source=p.reference)
    reactor = Reactor(
        scenario.reactor,
        power_law_rates_fn(law),
        solubility.g_per_kg,
        crystal_density_kg_per_m3=p.crystal_density_kg_per_m3,
        volume_shape_factor=p.volume_shape_factor,
    )
    return reactor, ()


def _facet_kinetics(material: Material, k) -> FacetKinetics:
    return facet_kinetics_for_material(
        material,
        GrowthCalibration(
            bcf_rate_m_per_s=k.bcf_rate_m_per_s,
            critical_supersaturation=k.critical_supersaturation,
            birth_spread_rate_m_per_s=k.birth_spread_rate_m_per_s,
            dislocation_activity=k.dislocation_activity,
        ),
        heterogeneous_factor=k.heterogeneous_factor,
        primary_prefactor_per_kg_s=k.primary_prefactor_per_kg_s,
        secondary_rate_per_kg_s=k.secondary_rate_per_kg_s,
    )


class Plant:
    """The simulated reactor behind its DCS. See the module docstring.

    Args:
        tagmap: the signals served; every one must be a signal this plant produces or accepts.
        scenario: what is charged and what happens.
        settings: DCS runtime settings.
    """

    def __init__(self, tagmap: TagMap, scenario: Scenario, settings: PlantSettings = PlantSettings()) -> None:
        unknown = sorted(s.name for s in tagmap if s.name not in KNOWN_SIGNALS)
        if unknown:
            raise TagMapError(
                f"tag map {tagmap.reactor}: the simulated plant does not produce {unknown}; "
                f"known signals are {sorted(KNOWN_SIGNALS)}"
            )
        self.tagmap = tagmap
        self.scenario = scenario
        self.settings = settings
        self.reactor, self.facet_hkls = build_reactor(scenario)
        self.sensors = SensorSuite(scenario.sensors, scenario.faults)
        self._facet_codes = [hkl_code(h) for h in self.facet_hkls] + [0] * (N_FACET_SLOTS - len(self.facet_hkls))
        self._plant_time_s = 0.0
        self._pending_s = 0.0
        self._batch_index = 0
        self._charge()
        self._heartbeat = 0.0
        self._heartbeat_changed_s = -math.inf
        self._agent_mode = AgentMode.MANUAL
        self._operator_mode = 0.0
        self._last_command = 0.0
        self._shed = False
        self._remote = False
        self._measured: dict[str, float] = {}
        self._step_physics_and_measure(record=False, n_steps=0)
        if settings.autostart:
            self.write("batch_command", float(BatchCommand.START))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, tagmap_dict: dict, scenario: Scenario, settings: PlantSettings = PlantSettings()) -> "Plant":
        return cls(TagMap.from_dict(tagmap_dict), scenario, settings)

    def _charge(self) -> None:
        """A fresh batch: clear solution saturated at the scenario's temperature, heated."""
        sc = self.scenario
        self.x = self.reactor.initial_state(sc.initial_temperature_c, sc.initial_saturation_temperature_c)
        self.state = BatchState.IDLE
        self._recipe_time_s = 0.0
        self._batch_time_s = 0.0
        self._recipe_start_c = sc.initial_temperature_c
        self._working_setpoint_c = sc.initial_temperature_c
        self._working_antisolvent = 0.0
        # Remote setpoints start at (and, while the local loop drives, track) the working ones, so
        # entering automatic is bumpless until the agent writes something new.
        self._remote_setpoint_c = self._working_setpoint_c
        self._remote_antisolvent = 0.0
        self._seeded = sc.seeding.mass_g <= 0.0
        self.seed_mass_charged_g = 0.0
        self._last_step: Step | None = None
        self._charged_solute_kg = self.reactor.total_solute_kg(self.x)
        self._peak_sigma = -math.inf
        #: the report of the batch once it completed (None before)
        self.last_batch_report: dict | None = None

    # ------------------------------------------------------------------ properties
    @property
    def plant_time_s(self) -> float:
        return self._plant_time_s

    @property
    def control_source_remote(self) -> bool:
        return self._remote

    @property
    def shed_active(self) -> bool:
        return self._shed

    @property
    def last_step(self) -> Step | None:
        """True (unmeasured) reactor quantities after the last step."""
        return self._last_step

    # ------------------------------------------------------------------ writes
    def write(self, name: str, value: float) -> WriteResult:
        """Validate and apply a write from a client. Never raises."""
        try:
            signal = self.tagmap[name]
        except KeyError:
            return WriteResult(WriteStatus.rejected_unknown, None, f"unknown signal {name!r}")
        if not signal.writable:
            return WriteResult(WriteStatus.rejected_read_only, None, f"{name} is read-only")
        try:
            value = float(value)
        except (TypeError, ValueError):
            return WriteResult(WriteStatus.rejected_type, None, f"{name}: {value!r} is not a number")
        if not math.isfinite(value):
            return WriteResult(WriteStatus.rejected_not_finite, None, f"{name}: {value} is not finite")
        if signal.is_integer and value != round(value):
            return WriteResult(WriteStatus.rejected_type, None, f"{name} takes integers, got {value}")
        if not signal.in_range(value):
            return WriteResult(
                WriteStatus.rejected_out_of_range,
                None,
                f"{name}: {value} outside the engineering range [{signal.low}, {signal.high}] {signal.unit}",
            )
        enum_type = _ENUM_SIGNALS.get(name)
        if enum_type is not None and int(value) not in enum_type._value2member_map_:
            # A tag map may declare a wider range than the codes the plant knows.
            codes = {m.name.lower(): int(m) for m in enum_type}
            return WriteResult(WriteStatus.rejected_out_of_range, None, f"{name}: {value:g} is not one of {codes}")
        if name == "batch_command":
            return self._command(BatchCommand(int(value)))
        applied = signal.clamp(value)
        status = WriteStatus.ok if applied == value else WriteStatus.clamped
        message = "" if status is WriteStatus.ok else f"{name}: {value} clamped to {applied} {signal.unit}"
        if name == "reactor_temperature_setpoint_c":
            self._remote_setpoint_c = applied
        elif name == "antisolvent_rate_setpoint_kg_per_min":
            self._remote_antisolvent = applied
        elif name == "agent_heartbeat":
            if applied != self._heartbeat:
                self._heartbeat_changed_s = self._plant_time_s
            self._heartbeat = applied
        elif name == "agent_mode":
            self._agent_mode = AgentMode(int(value))
            if self._agent_mode is AgentMode.AUTOMATIC and self._heartbeat_fresh():
                self._shed = False  # explicit re-entry into remote cascade
        elif name == "operator_mode_request":
            self._operator_mode = applied
        return WriteResult(status, applied, message)

    def _command(self, command: BatchCommand) -> WriteResult:
        if command is BatchCommand.NONE:
            return WriteResult(WriteStatus.ok, 0.0, "")
        nxt = _TRANSITIONS.get((self.state, command))
        if nxt is None:
            allowed = [c.name.lower() for (s, c) in _TRANSITIONS if s is self.state]
            return WriteResult(
                WriteStatus.rejected_invalid_state,
                None,
                f"{command.name.lower()} is not allowed in state {self.state.name.title()}; allowed: {allowed}",
            )
        if command is BatchCommand.RESET:
            self._batch_index += 1
            self._charge()
        elif command is BatchCommand.START:
            self._recipe_start_c = self._working_setpoint_c
        self.state = nxt
        self._last_command = float(command)
        return WriteResult(WriteStatus.ok, float(command), "")

    # ------------------------------------------------------------------ stepping
    def _heartbeat_fresh(self) -> bool:
        return self._plant_time_s - self._heartbeat_changed_s <= self.settings.shed_timeout_s

    def _targets(self) -> tuple[float, float]:
        """Target temperature setpoint and antisolvent rate for the next step."""
        sc = self.scenario
        executing = self.state is BatchState.EXECUTE
        recipe_c, recipe_anti = self._working_setpoint_c, 0.0
        if executing:
            # The setpoint for the step ending at recipe time t + dt.
            recipe_min = (self._recipe_time_s + self.settings.step_s) / 60.0
            recipe_c, recipe_anti, finished = recipe_setpoint(sc.recipe, self._recipe_start_c, recipe_min)
            if finished and sc.operation is Operation.batch:
                # The batch ends on its recipe time whoever drives the setpoint (a DCS phase
                # timer); this step is its last.
                self.state = BatchState.COMPLETED
        wants_remote = self._agent_mode is AgentMode.AUTOMATIC
        if wants_remote and executing and not self._heartbeat_fresh():
            self._shed = True
        self._remote = executing and wants_remote and not self._shed
        if self._remote:
            return self._remote_setpoint_c, self._remote_antisolvent
        if executing and (not self._shed or self.settings.shed_action is ShedAction.recipe):
            return recipe_c, recipe_anti
        return self._working_setpoint_c, 0.0

    def _ramp(self, current: float, target: float, name: str, dt_s: float) -> float:
        rate = self.tagmap[name].max_rate_per_min if name in self.tagmap else None
        if rate is None:
            return target
        max_move = rate * dt_s / 60.0
        return current + min(max(target - current, -max_move), max_move)

    def _one_step(self) -> Step:
        sc, dt = self.scenario, self.settings.step_s
        target_c, target_anti = self._targets()
        self._working_setpoint_c = self._ramp(self._working_setpoint_c, target_c, "reactor_temperature_setpoint_c", dt)
        self._working_antisolvent = self._ramp(
            self._working_antisolvent, target_anti, "antisolvent_rate_setpoint_kg_per_min", dt
        )
        if not self._remote:
            # Setpoint tracking: the remote setpoints follow the local loop (bumpless transfer).
            self._remote_setpoint_c = self._working_setpoint_c
            self._remote_antisolvent = self._working_antisolvent
        executing = self.state is BatchState.EXECUTE
        if executing and not self._seeded and self._recipe_time_s >= sc.seeding.at_min * 60.0:
            self.seed_mass_charged_g = sc.drawn_seed_mass_g(self._batch_index)
            self.x = self.reactor.add_seeds(
                self.x, self.seed_mass_charged_g, sc.seeding.mean_size_um, sc.seeding.std_size_um
            )
            self._seeded = True
        batch_min = self._batch_time_s / 60.0
        continuous = sc.operation is Operation.continuous and executing
        controls = Controls(
            temperature_setpoint_c=self._working_setpoint_c,
            antisolvent_rate_kg_per_min=self._working_antisolvent if executing else 0.0,
            impurity_ppm=impurity_ppm_at(sc.impurity, batch_min),
            fouling_resistance_m2k_per_w=fouling_resistance_m2k_per_w(sc.fouling, batch_min),
            residence_time_s=sc.continuous.residence_time_min * 60.0 if continuous else None,
            feed_concentration_g_per_kg=sc.continuous.feed_concentration_g_per_kg,
            feed_temperature_c=sc.continuous.feed_temperature_c,
        )
        self.x, step = self.reactor.advance(self.x, dt, controls)
        self._plant_time_s += dt
        if self.state in (BatchState.EXECUTE, BatchState.HELD):
            self._batch_time_s += dt
        if self.state is BatchState.EXECUTE:
            self._recipe_time_s += dt
        self._last_step = step
        self._antisolvent_flow = controls.antisolvent_rate_kg_per_min
        if executing and step.concentration_g_per_kg > 0 and step.solubility_g_per_kg > 0:
            self._peak_sigma = max(self._peak_sigma, math.log(step.concentration_g_per_kg / step.solubility_g_per_kg))
        if self.state is BatchState.COMPLETED and self.last_batch_report is None:
            self._complete_batch()
        return step

    # ------------------------------------------------------------------ batch report
    def batch_report(self) -> dict:
        """Product and batch figures from the true state (what the lab and the batch record give).

        Keys: batch_index, batch_time_h, d43_um (volume-weighted mean size), d10_um, cv (of the
        volume distribution), fines_mass_fraction (below 100 um), yield (crystallised solute /
        the most the recipe's end temperature allows, seeds excluded), peak_sigma (largest ln(C/C*)
        while executing), crystal_mass_kg, final_temperature_c, target_mean_size_um.
        """
        r, x = self.reactor, self.x
        stats = size_statistics(r.csd_per_m_per_kg(x), r.grid.centers_m, r.grid.widths_m)
        solvent_kg = r.solvent_mass_kg(x)
        # Yield against what the recipe's end temperature allows, so a batch that stops cooling
        # early shows the solute it left in solution.
        end_c = self.scenario.recipe[-1].temperature_c if self.scenario.recipe else None
        recoverable_kg = self._charged_solute_kg - r.solubility_at(x, end_c) * solvent_kg / 1000.0
        grown_kg = r.crystal_mass_kg(x) - self.seed_mass_charged_g / 1000.0
        return {
            "batch_index": self._batch_index,
            "batch_state": self.state.name.lower(),
            "batch_time_h": self._batch_time_s / 3600.0,
            **stats,
            "yield": grown_kg / recoverable_kg if recoverable_kg > 0 else math.nan,
            "peak_sigma": self._peak_sigma if math.isfinite(self._peak_sigma) else math.nan,
            "crystal_mass_kg": r.crystal_mass_kg(x),
            "final_temperature_c": float(x[r.n + 1]),
            "target_mean_size_um": self.scenario.target_mean_size_um or None,
        }

    def _complete_batch(self) -> None:
        self.last_batch_report = self.batch_report()
        if self.settings.batch_report_dir:
            import json
            import os
            from pathlib import Path

            folder = Path(self.settings.batch_report_dir)
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"batch_{self._batch_index}.json"
            tmp = path.with_suffix(".tmp")
            r = self.reactor
            n = np.asarray(r.csd_per_m_per_kg(self.x))
            volume = n * r.grid.widths_m * r.grid.centers_m**3
            total = float(volume.sum())
            # The final CSD travels with the file (plots of the batch record), not the dict.
            csd = {"size_um": (r.grid.centers_m * 1e6).round(3).tolist(),
                   "volume_fraction": (volume / total if total > 0 else volume).tolist()}
            tmp.write_text(json.dumps({**self.last_batch_report, "csd": csd}, indent=2, allow_nan=True))
            os.replace(tmp, path)  # readers never see half a report

    def _truth_row(self, step: Step) -> dict:
        r = self.reactor
        n = r.n
        fractions = np.zeros(N_FACET_SLOTS)
        growth = np.zeros(N_FACET_SLOTS)
        aspect = 1.0
        habit = step.rates.habit
        if habit is not None:
            k = len(self.facet_hkls)
            fractions[:k] = habit.family_area_fractions[:k]
            growth[:k] = np.where(habit.family_area_fractions[:k] > 0, step.rates.family_rates_m_per_s[:k], 0.0)
            aspect = habit.aspect_ratio
        else:
            fractions[:] = np.nan
            growth[:] = np.nan
        return dict(
            plant_time_s=self._plant_time_s,
            reactor_temperature_c=float(self.x[n + 1]),
            jacket_temperature_c=float(self.x[n + 2]),
            jacket_inlet_temperature_c=step.jacket_inlet_temperature_c,
            concentration_g_per_kg=step.concentration_g_per_kg,
            antisolvent_flow_kg_per_min=self._antisolvent_flow,
            csd_per_m_per_kg=r.csd_per_m_per_kg(self.x),
            solvent_mass_kg=step.solvent_mass_kg,
            facet_area_fractions=fractions,
            facet_growth_rates_m_per_s=growth,
            aspect_ratio=aspect,
            setpoint_c=self._working_setpoint_c,
            batch_state=float(self.state),
            control_source=1.0 if self._remote else 0.0,
            shed_active=1.0 if self._shed else 0.0,
            solubility_g_per_kg=step.solubility_g_per_kg,
            crystal_mass_kg=step.crystal_mass_kg,
            growth_rate_m_per_s=step.rates.growth_rate_m_per_s,
            nucleation_rate_per_kg_s=step.rates.nucleation_rate_per_kg_s,
        )

    def _step_physics_and_measure(self, record: bool, n_steps: int) -> dict[str, np.ndarray] | None:
        rows = []
        if n_steps == 0:
            # Initial reading: measure the state as charged, without advancing time.
            self._antisolvent_flow = 0.0
            step = self.reactor.advance(self.x, 0.0, Controls(self._working_setpoint_c))[1]
            self._last_step = step
            rows.append(self._truth_row(step))
        for _ in range(n_steps):
            rows.append(self._truth_row(self._one_step()))
        truth = Truth(
            plant_time_s=np.array([r["plant_time_s"] for r in rows]),
            reactor_temperature_c=np.array([r["reactor_temperature_c"] for r in rows]),
            jacket_temperature_c=np.array([r["jacket_temperature_c"] for r in rows]),
            jacket_inlet_temperature_c=np.array([r["jacket_inlet_temperature_c"] for r in rows]),
            concentration_g_per_kg=np.array([r["concentration_g_per_kg"] for r in rows]),
            antisolvent_flow_kg_per_min=np.array([r["antisolvent_flow_kg_per_min"] for r in rows]),
            csd_per_m_per_kg=np.stack([r["csd_per_m_per_kg"] for r in rows]),
            size_centers_m=self.reactor.grid.centers_m,
            size_widths_m=self.reactor.grid.widths_m,
            solvent_mass_kg=np.array([r["solvent_mass_kg"] for r in rows]),
            facet_area_fractions=np.stack([r["facet_area_fractions"] for r in rows]),
            facet_growth_rates_m_per_s=np.stack([r["facet_growth_rates_m_per_s"] for r in rows]),
            aspect_ratio=np.array([r["aspect_ratio"] for r in rows]),
        )
        measured = self.sensors.measure(truth) if n_steps > 0 or not self._measured else None
        if measured is not None and not self.facet_hkls:
            # Kinetics without facet resolution (power law): the imaging facet signals have no
            # source, so they read as bad rather than as a made-up habit.
            for name in measured:
                if name.startswith("facet_") or name == "image_aspect_ratio":
                    measured[name] = np.full_like(measured[name], np.nan)
        if measured is not None:
            self._measured = {k: float(v[-1]) for k, v in measured.items()}
        if not record or measured is None:
            return None
        out = {"plant_time_s": truth.plant_time_s}
        for name in ("batch_state", "control_source", "shed_active"):
            out[name] = np.array([r[name] for r in rows])
        out["reactor_temperature_setpoint_active_c"] = np.array([r["setpoint_c"] for r in rows])
        out.update(measured)
        # True values next to the measurements, for analysis and plots (not served).
        out["true_reactor_temperature_c"] = truth.reactor_temperature_c
        out["true_concentration_g_per_kg"] = truth.concentration_g_per_kg
        for name in ("solubility_g_per_kg", "crystal_mass_kg", "growth_rate_m_per_s", "nucleation_rate_per_kg_s"):
            out[f"true_{name}"] = np.array([r[name] for r in rows])
        return out

    def advance(self, duration_s: float, record: bool = False) -> dict[str, np.ndarray] | None:
        """Advance plant time by ``duration_s`` in fixed steps of ``settings.step_s``.

        A remainder shorter than one step is carried to the next call, so many short calls add
        up to the same plant time as one long one.

        Args:
            duration_s: plant seconds.
            record: return every step's measured signals (arrays of shape (n_steps,)).
        """
        self._pending_s += duration_s
        n_steps = int(self._pending_s / self.settings.step_s + 1e-9)
        if n_steps <= 0:
            return None
        self._pending_s -= n_steps * self.settings.step_s
        return self._step_physics_and_measure(record=record, n_steps=n_steps)

    # ------------------------------------------------------------------ reading
    def values(self) -> dict[str, float]:
        """Every tag-map signal's current value; NaN marks a bad instrument reading."""
        status = {
            "plant_time_s": self._plant_time_s,
            "reactor_temperature_setpoint_active_c": self._working_setpoint_c,
            "batch_state": float(self.state),
            "batch_time_s": self._recipe_time_s,
            "control_source": 1.0 if self._remote else 0.0,
            "shed_active": 1.0 if self._shed else 0.0,
            "reactor_temperature_setpoint_c": self._remote_setpoint_c,
            "antisolvent_rate_setpoint_kg_per_min": self._remote_antisolvent,
            "agent_heartbeat": self._heartbeat,
            "agent_mode": float(self._agent_mode),
            "operator_mode_request": self._operator_mode,
            "batch_command": self._last_command,
        }
        for k, code in enumerate(self._facet_codes, start=1):
            status[f"facet_{k}_hkl"] = float(code)
        out = {}
        for signal in self.tagmap:
            name = signal.name
            out[name] = status[name] if name in status else self._measured.get(name, math.nan)
        return out
