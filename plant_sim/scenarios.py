"""Scenarios as data: a process, and what the simulated plant adds to it.

The process (``conf/process/*.yaml``, :class:`conf.contract.process.BatchProcess`) reads like a
lab instruction sheet (PyBaMM's "experiment"): charge the reactor, heat to dissolve, seed at
50 C, cool to 20 C at 0.3 K/min, hold 30 min. The agent reads that and nothing else. A
:class:`Scenario` (``conf/scenario/*.yaml``) is what the simulator runs: that process, plus only
what is simulator-only: the vessel's physics, its sensors' noise, the kinetics that play the
plant's truth, the length of an offline run, and the disturbances the run meets (seed-mass
variation, impurity pulses, fouling and sensor faults). Scenarios are deterministic for a
given ``seed``.

The process's fields appear here as copies (field metadata
:data:`conf.contract.process.FROM_PROCESS`), filled by :meth:`Scenario.with_process` from the
config's ``process`` (:class:`conf.simulator.SimulatorConfig`), so the served plant, the
offline simulator and the agent read one definition; the scenario's schema leaves them out, so
a scenario file cannot set them.

Everything here is pure data plus pure functions of plant time (:func:`impurity_ppm_at`,
:func:`fouling_resistance_m2k_per_w`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from conf.contract import validate
from conf.contract.process import (
    FROM_PROCESS,
    BatchProcess,
    MaterialData,
    PowerLawPreset,
    RecipeStep,
    Seeding,
    recipe_duration_min,
)
from plant_sim.reactor import ReactorSettings
from plant_sim.sensors import SensorFault, SensorSettings


# Default batch time limit as a multiple of the recipe's duration: room for a supervisor that
# cools more slowly than the recipe, not for one that never finishes.
DEFAULT_BATCH_TIME_LIMIT_FACTOR = 1.5


class Operation(str, enum.Enum):
    """Batch (cooling, antisolvent) or continuous MSMPR (feed and withdraw at residence time)."""

    batch = "batch"
    continuous = "continuous"


class KineticsModel(str, enum.Enum):
    """Physics chain (facet growth, habit, CNT) or an empirical power-law preset."""

    physics = "physics"
    power_law = "power_law"


@dataclass(frozen=True)
class ImpurityPulse:
    """An impurity in the liquid (ppm) between two recipe times, e.g. a contaminated feed."""

    start_min: float
    end_min: float
    concentration_ppm: float

    def __post_init__(self) -> None:
        validate.non_negative(self, "start_min", "concentration_ppm")
        if not self.end_min > self.start_min:
            raise ValueError(f"end_min must be > start_min ({self.start_min}), got {self.end_min!r}")


@dataclass(frozen=True)
class Fouling:
    """Fouling resistance on the jacket wall growing linearly from ``start_min``.

    U_eff = 1 / (1/U_clean + R_f), R_f = rate * (t - start) (linear fouling, Kern & Seaton 1959).
    """

    start_min: float = 0.0
    resistance_m2k_per_w_per_h: float = 0.0

    def __post_init__(self) -> None:
        validate.non_negative(self, "start_min", "resistance_m2k_per_w_per_h")


@dataclass(frozen=True)
class Continuous:
    """MSMPR operation: clear feed at ``feed_concentration_g_per_kg``, withdrawal at tau."""

    residence_time_min: float = 30.0
    feed_concentration_g_per_kg: float = 0.0
    feed_temperature_c: float = 50.0

    def __post_init__(self) -> None:
        validate.positive(self, "residence_time_min")
        validate.non_negative(self, "feed_concentration_g_per_kg")


@dataclass(frozen=True)
class KineticsConfig:
    """Which kinetics drive the plant.

    Attributes:
        model: physics (from the material's structure) or power_law (``power_law`` preset).
        bcf_rate_m_per_s: physics: BCF constant of the fastest face (absolute scale).
        critical_supersaturation: physics: BCF sigma_c.
        birth_spread_rate_m_per_s: physics: birth-and-spread prefactor of the fastest face.
        dislocation_activity: physics: multiplies the spiral-growth constant.
        heterogeneous_factor: physics: gamma_eff/gamma of primary nucleation.
        primary_prefactor_per_kg_s: physics: CNT prefactor.
        secondary_rate_per_kg_s: physics: k_b2.
        power_law: the preset when model is power_law.
    """

    model: KineticsModel = KineticsModel.physics
    bcf_rate_m_per_s: float = 2.5e-6
    critical_supersaturation: float = 0.02
    birth_spread_rate_m_per_s: float = 5e-6
    dislocation_activity: float = 1.0
    heterogeneous_factor: float = 0.2
    primary_prefactor_per_kg_s: float = 1e20
    secondary_rate_per_kg_s: float = 2e7
    power_law: PowerLawPreset = field(default_factory=PowerLawPreset)

    def __post_init__(self) -> None:
        validate.positive(self, "bcf_rate_m_per_s", "critical_supersaturation", "heterogeneous_factor")
        validate.non_negative(
            self, "birth_spread_rate_m_per_s", "dislocation_activity", "primary_prefactor_per_kg_s",
            "secondary_rate_per_kg_s",
        )


def _from_process(**kwargs):
    """A copy of the process's field of the same name (see the module docstring)."""
    return field(metadata={FROM_PROCESS: True}, **kwargs)


@dataclass(frozen=True)
class Scenario:
    """One scenario: the process it runs, the reactor, and the disturbances.

    Fields marked (process) are copies of the process's (:meth:`with_process`); the config
    fills them, code that builds a scenario may set them directly.

    Attributes:
        name: scenario name.
        description: one line for humans.
        seed: seed of every random draw (sensor noise, seed-mass variation).
        material: (process) key of :data:`conf.contract.materials.MATERIALS` (physics kinetics).
        operation: batch or continuous.
        initial_temperature_c: (process) reactor temperature at charge.
        initial_saturation_temperature_c: (process) the charge is saturated at this temperature
            (sets the initial concentration from the solubility curve).
        recipe: (process) the local temperature program, run from batch start.
        seeding: (process) seed charge.
        target_mean_size_um: (process) product specification (volume-weighted mean size).
        duration_min: offline simulation length; the served plant runs until stopped.
        max_batch_time_min: hard limit on a batch's executing (recipe-clock) time: the plant
            completes the batch there and reports ``time_limit_hit``, whoever drives the
            setpoint. None: :data:`DEFAULT_BATCH_TIME_LIMIT_FACTOR` x the recipe's duration
            (no limit without a recipe). Continuous operation has no limit.
        continuous: MSMPR settings (operation continuous).
        seed_mass_rel_std: relative standard deviation of the charged seed mass between batches
            (seed-mass variation; the draw is deterministic for ``seed``).
        seed_mass_rel_offset: the charged seed mass is the recipe's x (1 + offset) (a systematic
            weighing or hold-up error the agent is not told of; -0.3: 30 % short).
        seed_size_rel_offset: the charged seeds' mean and spread are the recipe's x (1 + offset)
            (another sieve fraction or milling than the recipe says).
        impurity: impurity pulses.
        fouling: jacket fouling.
        faults: sensor faults.
        reactor: vessel, jacket, local PID and size grid (its ``water_mass_kg`` is the
            process's ``solvent_mass_kg``).
        sensors: the simulated instruments' noise, lags and probes (the process's
            ``instruments`` are the agent's knowledge of them).
        kinetics: kinetics model.
        material_data: (process) the material as data, not built in (its solubility, density,
            shape factor and power-law kinetics then run the plant; ``material`` only names it).
    """

    name: str = "seeded_cooling"
    description: str = ""
    seed: int = 0
    material: str = _from_process(default="KCl")
    operation: Operation = Operation.batch
    initial_temperature_c: float = _from_process(default=55.0)
    initial_saturation_temperature_c: float = _from_process(default=50.0)
    recipe: tuple[RecipeStep, ...] = _from_process(default=())
    seeding: Seeding = _from_process(default_factory=Seeding)
    target_mean_size_um: float = _from_process(default=0.0)
    duration_min: float = 240.0
    max_batch_time_min: float | None = None
    continuous: Continuous = field(default_factory=Continuous)
    seed_mass_rel_std: float = 0.0
    seed_mass_rel_offset: float = 0.0
    seed_size_rel_offset: float = 0.0
    impurity: tuple[ImpurityPulse, ...] = ()
    fouling: Fouling = field(default_factory=Fouling)
    faults: tuple[SensorFault, ...] = ()
    # The charge's water is the process's (solvent_mass_kg); the vessel's physics are the scenario's.
    reactor: ReactorSettings = field(default_factory=ReactorSettings, metadata={FROM_PROCESS: ("water_mass_kg",)})
    sensors: SensorSettings = field(default_factory=SensorSettings)
    kinetics: KineticsConfig = field(default_factory=KineticsConfig)
    material_data: Optional[MaterialData] = _from_process(default=None)

    def __post_init__(self) -> None:
        validate.positive(self, "duration_min")
        if self.max_batch_time_min is not None:
            validate.positive(self, "max_batch_time_min")
        validate.non_negative(self, "target_mean_size_um", "seed_mass_rel_std")
        validate.within(self, "seed_mass_rel_offset", -1.0, 10.0)
        validate.within(self, "seed_size_rel_offset", -0.9, 10.0)
        validate.within(self, "initial_temperature_c", -50.0, 200.0)
        validate.within(self, "initial_saturation_temperature_c", -50.0, 200.0)

    def with_process(self, process: BatchProcess) -> "Scenario":
        """This scenario running ``process``: its (process) fields and the vessel's water mass
        (the charge's ``solvent_mass_kg``) become the process's."""
        copied = {f.name: getattr(process, f.name) for f in dataclasses.fields(self) if f.metadata.get(FROM_PROCESS) is True}
        reactor = dataclasses.replace(self.reactor, water_mass_kg=process.solvent_mass_kg)
        return dataclasses.replace(self, reactor=reactor, **copied)

    def batch_time_limit_min(self, start_temperature_c: float | None = None) -> float:
        """The batch time limit (see ``max_batch_time_min``) for a recipe started at
        ``start_temperature_c`` (default: the charge temperature); inf: no limit."""
        if self.operation is Operation.continuous:
            return math.inf
        if self.max_batch_time_min is not None:
            return self.max_batch_time_min
        start_c = self.initial_temperature_c if start_temperature_c is None else start_temperature_c
        duration_min = recipe_duration_min(self.recipe, start_c)
        return DEFAULT_BATCH_TIME_LIMIT_FACTOR * duration_min if duration_min > 0 else math.inf

    def drawn_seed_mass_g(self, batch_index: int = 0) -> float:
        """The seed mass charged in batch ``batch_index``: nominal x (1 + offset + rel_std z),
        z ~ N(0, 1).

        The draw depends only on (``seed``, batch_index), so a scenario replays exactly.
        """
        nominal = self.seeding.mass_g * (1.0 + self.seed_mass_rel_offset)
        if self.seed_mass_rel_std <= 0.0:
            return max(nominal, 0.0)
        z = np.random.default_rng([self.seed, 7, batch_index]).standard_normal()
        return max(nominal + self.seeding.mass_g * self.seed_mass_rel_std * z, 0.0)

    def charged_seed_size_um(self) -> tuple[float, float]:
        """(mean, standard deviation) of the charged seeds' size, um."""
        scale = 1.0 + self.seed_size_rel_offset
        return self.seeding.mean_size_um * scale, self.seeding.std_size_um * scale


def impurity_ppm_at(pulses: tuple[ImpurityPulse, ...], batch_time_min: float) -> float:
    """Impurity concentration in the liquid at a batch time (sum of active pulses)."""
    return float(sum(p.concentration_ppm for p in pulses if p.start_min <= batch_time_min < p.end_min))


def fouling_resistance_m2k_per_w(fouling: Fouling, batch_time_min: float) -> float:
    """Fouling resistance at a batch time (plant time since batch start, holds included)."""
    return max(batch_time_min - fouling.start_min, 0.0) / 60.0 * fouling.resistance_m2k_per_w_per_h
