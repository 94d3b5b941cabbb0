"""The simulated plant as its DCS presents it: reactor, instruments, batch logic and protection.

:class:`Plant` wraps the physics (:mod:`plant_sim.reactor`) and the instruments
(:mod:`plant_sim.sensors`) in what a distributed control system adds around a crystallizer:

- **Batch state machine** (ISA-88 / MTP style): Idle, Execute, Held, Completed, Aborted, driven
  by the ``batch_command`` tag (start, hold, resume, abort, reset, complete). Invalid transitions
  are rejected. The recipe clock (``batch_time_s``) runs only in Execute. Completed follows:
  - the end of the local temperature program, while the local loop drives the setpoint (the
    recipe's last step, as a DCS phase timer would end it);
  - ``complete`` (MTP's Complete command): the supervisor ends the batch when its product is
    done. While the agent drives (remote cascade) the recipe's time does not end the batch, so
    a supervisor that cools more slowly than the recipe is not cut off;
  - the batch time limit, a hard constraint whoever drives: ``scenario.max_batch_time_min`` of
    recipe-clock time (default 1.5 x the recipe's duration; tag ``batch_time_limit_s``). There
    the plant completes the batch and reports it: tag ``batch_time_limit_hit`` = 1 and
    ``time_limit_hit`` in the batch report.
- **Setpoint protection, as a DCS does it:** writes that are not finite, outside the engineering
  range or of the wrong type are rejected; accepted writes are clamped to the plant limits; the
  working setpoint moves towards its target no faster than ``max_rate_per_min``.
- **Remote cascade and shedding:** the agent drives the temperature setpoint only while the batch
  executes, the agent reports automatic mode (``agent_mode`` = 2) and its heartbeat keeps changing.
  If the heartbeat stops changing for ``shed_timeout_s`` of plant time, the loop sheds to local
  control (hold the working setpoint, or follow the recipe) and ``shed_active`` latches. It clears
  when the agent writes ``agent_mode`` = 2 again with a live heartbeat, the explicit re-entry an
  operator expects after a communication loss. Whenever the recipe takes the setpoint back (a
  shed with ``shed_action`` = recipe, or the agent leaving automatic) it continues from the
  setpoint in force, bumplessly: the rest of the recipe from where its clock stands, joined to
  that setpoint (ramp at the active step's rate to its target, the rest of its hold, then the
  later steps), not a jump to where the recipe would be. The batch then ends when that joined
  program does (or at the time limit).
- **TIC-101, the local temperature loop,** acts on the measured reactor temperature: every plant
  step (``step_s``: 1 s served, the output interval offline) it scans the TT-101 reading
  (:meth:`plant_sim.sensors.SensorSuite.read_reactor_temperature`, with the RTD's lag, noise and
  faults) and holds its jacket-inlet output over the step (:mod:`plant_sim.reactor`), so a
  stuck or drifting RTD moves the true reactor temperature. While the reading is bad (NaN) the
  loop goes to manual and holds its last output. ``jacket_saturated`` = 1 while the loop asks for
  a jacket inlet beyond the thermostat's range: the jacket cannot follow the setpoint.

The plant never raises on a write: every outcome is a :class:`WriteResult`, which the OPC UA and
Modbus servers map to their status and exception codes.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

import numpy as np

from conf.contract import validate
from conf.contract.codes import N_FACET_SLOTS, AgentMode, BatchCommand, BatchState, ShedAction, encode_hkl
from conf.contract.materials import Material, Solubility, SolubilityPolynomial, get_material
from conf.contract.process import recipe_setpoint
from conf.contract.tagmap import TagMap, TagMapError
from plant_sim.kinetics import FacetKinetics, GrowthCalibration, PowerLawKinetics, facet_kinetics_for_material
from plant_sim.pbe import size_statistics
from plant_sim.reactor import Controls, Reactor, Step, facet_rates_fn, power_law_rates_fn
from plant_sim.scenarios import KineticsModel, Operation, Scenario, fouling_resistance_m2k_per_w, impurity_ppm_at
from plant_sim.sensors import MEASURED_SIGNALS, SensorSuite, Truth

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
    "jacket_saturated",
    "batch_time_limit_s",
    "batch_time_limit_hit",
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


def _rejoin(steps: tuple, start_c: float, program_min: float) -> tuple:
    """What is left of a temperature program at ``program_min``, to run from wherever the
    setpoint stands: the active step (ramp to its target at its rate, then the rest of its
    hold), then the later steps. A finished program leaves a ramp back to its end temperature.

    Args:
        steps: the program's recipe steps.
        start_c: temperature the program started from.
        program_min: time since the program started.

    Returns:
        Recipe steps, to start at the present setpoint and time.
    """
    t, temp = program_min, start_c
    for i, step in enumerate(steps):
        ramp_min = abs(step.temperature_c - temp) / step.rate_k_per_min
        if t < ramp_min + step.hold_min:
            hold_left = step.hold_min - max(t - ramp_min, 0.0)
            return (dataclasses.replace(step, hold_min=hold_left), *steps[i + 1 :])
        t -= ramp_min + step.hold_min
        temp = step.temperature_c
    if not steps:
        return ()
    return (dataclasses.replace(steps[-1], hold_min=0.0, antisolvent_rate_kg_per_min=0.0),)


def build_reactor(scenario: Scenario) -> tuple[Reactor, tuple[tuple[int, int, int], ...]]:
    """The scenario's reactor with its kinetics. Returns (reactor, facet families shown)."""
    k = scenario.kinetics
    if k.model is KineticsModel.power_law or scenario.material_data is not None:
        data = scenario.material_data
        if data is not None and data.kinetics is None and k.model is not KineticsModel.power_law:
            raise PlantConfigError(
                f"process.material_data gives {scenario.material} no kinetics: the simulated plant needs a power-law "
                "law for a material given as data; give process.material_data.kinetics (the preset form of "
                "conf/kinetics) or run a power-law preset as the plant's truth (kinetics=<preset>)")
        try:
            return _power_law_reactor(scenario)
        except ValueError as exc:
            where = "process.material_data" if data is not None else "scenario.kinetics.power_law"
            raise PlantConfigError(f"{where}: {exc}") from None
    try:
        material: Material = get_material(scenario.material)
    except KeyError as exc:
        raise PlantConfigError(f"process.material: {exc.args[0]}") from None
    try:
        facets = _facet_kinetics(material, k)
    except ValueError as exc:
        raise PlantConfigError(f"process.material={material.name}: {exc}") from None
    reactor = Reactor(
        scenario.reactor, facet_rates_fn(facets), material.solubility.g_per_kg, material.density_kg_per_m3
    )
    return reactor, facets.hkls[:N_FACET_SLOTS]


def _power_law_reactor(scenario: Scenario) -> tuple[Reactor, tuple]:
    data = scenario.material_data
    # The process's kinetics prior is the plant's truth unless the scenario runs a preset of its own.
    own = scenario.kinetics.model is KineticsModel.power_law
    p = data.kinetics if data is not None and data.kinetics is not None and not own else scenario.kinetics.power_law
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
    if data is not None:  # the process's own data: its measured solubility, density and shape
        temps, values = data.solubility_table()
        solubility = Solubility(temps, values, source=f"process.material_data ({scenario.material})")
        density, shape = data.crystal_density_kg_per_m3, data.volume_shape_factor
    else:
        solubility = SolubilityPolynomial(tuple(p.solubility_coefficients_g_per_kg), source=p.reference)
        density, shape = p.crystal_density_kg_per_m3, p.volume_shape_factor
    law = dataclasses.replace(law, volume_shape_factor=shape)
    reactor = Reactor(
        scenario.reactor,
        power_law_rates_fn(law),
        solubility.g_per_kg,
        crystal_density_kg_per_m3=density,
        volume_shape_factor=shape,
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
        self._facet_codes = [encode_hkl(h) for h in self.facet_hkls] + [0] * (N_FACET_SLOTS - len(self.facet_hkls))
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
        # TIC-101's PV (the TT-101 reading at the start of the next step) and its last output.
        self._pid_pv_c = self._measured["reactor_temperature_c"]
        self._pid_output_c = self._last_step.jacket_inlet_temperature_c
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
        # The local program TIC-101 follows: (steps, start temperature, recipe time it starts at).
        # The recipe from batch start, or its rest joined to the setpoint at a handover.
        self._program = (sc.recipe, sc.initial_temperature_c, 0.0)
        self._following_program = True
        self._time_limit_s = math.inf
        self._time_limit_hit = False
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
        self._peak_sigma_seeded = -math.inf  # once the seeds are in (what a supervisor controls)
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
    def batch_time_limit_s(self) -> float:
        """The executing-time limit of this batch (before start: the one it would get); NaN: none."""
        limit_s = self._time_limit_s
        if self.state is BatchState.IDLE:
            limit_s = self.scenario.batch_time_limit_min(self._working_setpoint_c) * 60.0
        return limit_s if math.isfinite(limit_s) else math.nan

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
            self._program = (self.scenario.recipe, self._recipe_start_c, 0.0)
            self._following_program = True
            self._time_limit_s = self.scenario.batch_time_limit_min(self._recipe_start_c) * 60.0
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
        wants_remote = self._agent_mode is AgentMode.AUTOMATIC
        if wants_remote and executing and not self._heartbeat_fresh():
            self._shed = True
        self._remote = executing and wants_remote and not self._shed
        if not executing:
            return self._working_setpoint_c, 0.0
        batch = sc.operation is Operation.batch
        # The setpoint for the step ending at recipe time t + dt.
        end_s = self._recipe_time_s + self.settings.step_s
        if self._remote:
            target = self._remote_setpoint_c, self._remote_antisolvent
            self._following_program = False
        else:
            follow = not self._shed or self.settings.shed_action is ShedAction.recipe
            if follow and not self._following_program:
                # The recipe takes the setpoint back where it stands (bumpless): its rest, from here.
                steps, start_c, t0_s = self._program
                joined = _rejoin(steps, start_c, (self._recipe_time_s - t0_s) / 60.0)
                self._program = (joined, self._working_setpoint_c, self._recipe_time_s)
            self._following_program = follow
            steps, start_c, t0_s = self._program
            program_c, program_anti, finished = recipe_setpoint(steps, start_c, (end_s - t0_s) / 60.0)
            target = (program_c, program_anti) if follow else (self._working_setpoint_c, 0.0)
            if finished and batch:
                # The local program ends the batch (a DCS phase timer); this step is its last.
                self.state = BatchState.COMPLETED
        if batch and self.state is BatchState.EXECUTE and end_s >= self._time_limit_s - 1e-9:
            # The hard limit, whoever drives: this step is the batch's last.
            self.state = BatchState.COMPLETED
            self._time_limit_hit = True
        return target

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
                self.x, self.seed_mass_charged_g, *sc.charged_seed_size_um()
            )
            self._seeded = True
        batch_min = self._batch_time_s / 60.0
        continuous = sc.operation is Operation.continuous and executing
        # TIC-101 scans its PV, the TT-101 reading now; while that is bad it goes to manual and
        # holds its last output (a DCS's bad-PV shed), so the loop never acts on a NaN.
        pv_c = self._pid_pv_c
        pv_bad = not math.isfinite(pv_c)
        controls = Controls(
            temperature_setpoint_c=self._working_setpoint_c,
            temperature_measurement_c=pv_c,
            pid_manual_output_c=self._pid_output_c if pv_bad else None,
            antisolvent_rate_kg_per_min=self._working_antisolvent if executing else 0.0,
            impurity_ppm=impurity_ppm_at(sc.impurity, batch_min),
            fouling_resistance_m2k_per_w=fouling_resistance_m2k_per_w(sc.fouling, batch_min),
            residence_time_s=sc.continuous.residence_time_min * 60.0 if continuous else None,
            feed_concentration_g_per_kg=sc.continuous.feed_concentration_g_per_kg,
            feed_temperature_c=sc.continuous.feed_temperature_c,
        )
        self.x, step = self.reactor.advance(self.x, dt, controls)
        self._plant_time_s += dt
        self._pid_pv_c = self.sensors.read_reactor_temperature(self._plant_time_s, float(self.x[self.reactor.n + 1]))
        self._pid_output_c = step.jacket_inlet_temperature_c
        if self.state in (BatchState.EXECUTE, BatchState.HELD):
            self._batch_time_s += dt
        if self.state is BatchState.EXECUTE:
            self._recipe_time_s += dt
        self._last_step = step
        self._antisolvent_flow = controls.antisolvent_rate_kg_per_min
        if executing and step.concentration_g_per_kg > 0 and step.solubility_g_per_kg > 0:
            sigma = math.log(step.concentration_g_per_kg / step.solubility_g_per_kg)
            self._peak_sigma = max(self._peak_sigma, sigma)
            if self.seed_mass_charged_g > 0:
                self._peak_sigma_seeded = max(self._peak_sigma_seeded, sigma)
        if self.state is BatchState.COMPLETED and self.last_batch_report is None:
            self._complete_batch()
        return step

    # ------------------------------------------------------------------ batch report
    def batch_report(self) -> dict:
        """Product and batch figures from the true state (what the lab and the batch record give).

        Keys: batch_index, batch_time_h, d43_um (volume-weighted mean size), d10_um, cv (of the
        volume distribution), fines_mass_fraction (below 100 um), yield (crystallised solute /
        the most the colder of the recipe's end and the final temperature allows, seeds
        excluded: at most 1), peak_sigma (largest ln(C/C*) while executing),
        peak_sigma_controlled (the same once the seeds are in; unseeded, the whole batch), crystal_mass_kg,
        final_temperature_c, target_mean_size_um, time_limit_hit (the batch ended on its time limit, not on its recipe or a Complete),
        batch_time_limit_h (that limit; NaN: none).
        """
        r, x = self.reactor, self.x
        stats = size_statistics(r.csd_per_m_per_kg(x), r.grid.centers_m, r.grid.widths_m)
        solvent_kg = r.solvent_mass_kg(x)
        # Yield against what the colder of the recipe's end temperature and the final one allows:
        # a batch that stops cooling early shows the solute it left in solution, and one that
        # ends colder than the recipe (an undershoot) is not credited with more than all of it.
        end_c = self.scenario.recipe[-1].temperature_c if self.scenario.recipe else None
        final_c = float(x[r.n + 1])
        reference_c = final_c if end_c is None else min(end_c, final_c)
        recoverable_kg = self._charged_solute_kg - r.solubility_at(x, reference_c) * solvent_kg / 1000.0
        grown_kg = r.crystal_mass_kg(x) - self.seed_mass_charged_g / 1000.0
        return {
            "batch_index": self._batch_index,
            "batch_state": self.state.name.lower(),
            "batch_time_h": self._batch_time_s / 3600.0,
            **stats,
            "yield": grown_kg / recoverable_kg if recoverable_kg > 0 else math.nan,
            "peak_sigma": self._peak_sigma if math.isfinite(self._peak_sigma) else math.nan,
            # Seeded: from the seed charge on (the recipe's approach to the seeding point is the
            # same for every supervisor); unseeded: the whole batch.
            "peak_sigma_controlled": (self._peak_sigma_seeded if math.isfinite(self._peak_sigma_seeded)
                                      else math.nan) if self.scenario.seeding.mass_g > 0 else (
                self._peak_sigma if math.isfinite(self._peak_sigma) else math.nan),
            "crystal_mass_kg": r.crystal_mass_kg(x),
            "final_temperature_c": float(x[r.n + 1]),
            "target_mean_size_um": self.scenario.target_mean_size_um or None,
            "time_limit_hit": self._time_limit_hit,
            "batch_time_limit_h": self.batch_time_limit_s / 3600.0,
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
        area_shape_factor = math.pi  # without facet resolution the probe sees spheres
        habit = step.rates.habit
        if habit is not None:
            k = len(self.facet_hkls)
            fractions[:k] = habit.family_area_fractions[:k]
            growth[:k] = np.where(habit.family_area_fractions[:k] > 0, step.rates.family_rates_m_per_s[:k], 0.0)
            aspect = habit.aspect_ratio
            area_shape_factor = habit.area_shape_factor
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
            area_shape_factor=area_shape_factor,
            setpoint_c=self._working_setpoint_c,
            batch_state=float(self.state),
            control_source=1.0 if self._remote else 0.0,
            shed_active=1.0 if self._shed else 0.0,
            jacket_saturated=1.0 if step.jacket_saturated else 0.0,
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
            area_shape_factor=np.array([r["area_shape_factor"] for r in rows]),
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
        for name in ("batch_state", "control_source", "shed_active", "jacket_saturated"):
            out[name] = np.array([r[name] for r in rows])
        out["reactor_temperature_setpoint_active_c"] = np.array([r["setpoint_c"] for r in rows])
        out.update(measured)
        # True values next to the measurements, for analysis and plots (not served).
        out["true_reactor_temperature_c"] = truth.reactor_temperature_c
        out["true_concentration_g_per_kg"] = truth.concentration_g_per_kg
        for name in ("solubility_g_per_kg", "crystal_mass_kg", "growth_rate_m_per_s", "nucleation_rate_per_kg_s"):
            out[f"true_{name}"] = np.array([r[name] for r in rows])
        # Facet normal growth rates are truth only: no in-line instrument measures them.
        for j in range(N_FACET_SLOTS):
            out[f"true_facet_{j + 1}_growth_rate_um_per_min"] = truth.facet_growth_rates_m_per_s[:, j] * 1e6 * 60.0
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
            "jacket_saturated": 1.0 if self._last_step is not None and self._last_step.jacket_saturated else 0.0,
            "batch_time_limit_s": self.batch_time_limit_s,
            "batch_time_limit_hit": 1.0 if self._time_limit_hit else 0.0,
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
