"""The process schema: the batch as a recipe sheet describes it, read by plant and agent alike.

The config's ``scenario`` (``conf/scenario/*.yaml``) is the recipe sheet of one batch: what is
charged, the temperature program, the seeds and the product target. The simulated plant reads
the whole sheet (``plant_sim.scenarios.Scenario`` adds the vessel's physics, the instruments and
the disturbances); the agent reads only the part a real plant's recipe gives it, which is
:class:`BatchProcess`. Both run the same recipe through :func:`recipe_setpoint`.

A :class:`BatchProcess` is composed from the same YAML and the same overrides as the
simulator's scenario: keys it does not know (the simulator's) are left to the simulator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from conf.contract import validate

__all__ = ["BatchProcess", "RecipeStep", "Seeding", "Vessel", "recipe_duration_min", "recipe_setpoint"]


@dataclass(frozen=True)
class RecipeStep:
    """One recipe line: ramp to ``temperature_c`` at ``rate_k_per_min``, then hold ``hold_min``.

    Attributes:
        temperature_c: target of the step.
        rate_k_per_min: ramp rate towards the target (absolute value; direction follows).
        hold_min: hold at the target once reached.
        antisolvent_rate_kg_per_min: antisolvent feed during this step (ramp and hold).
    """

    temperature_c: float
    rate_k_per_min: float = 0.5
    hold_min: float = 0.0
    antisolvent_rate_kg_per_min: float = 0.0

    def __post_init__(self) -> None:
        validate.positive(self, "rate_k_per_min")
        validate.non_negative(self, "hold_min", "antisolvent_rate_kg_per_min")


class _Step(Protocol):
    """What the recipe functions read of a step (any recipe step type with these fields)."""

    temperature_c: float
    rate_k_per_min: float
    hold_min: float
    antisolvent_rate_kg_per_min: float


@dataclass(frozen=True)
class Seeding:
    """Seed charge.

    Attributes:
        mass_g: nominal seed mass (0: unseeded).
        mean_size_um: mean volume-equivalent seed size.
        std_size_um: standard deviation of the (Gaussian) seed size distribution.
        at_min: recipe time at which the seeds are charged.
        mass_rel_std: relative standard deviation of the charged seed mass between batches
            (seed-mass variation); the simulator's draw is deterministic for its scenario seed.
    """

    mass_g: float = 0.0
    mean_size_um: float = 100.0
    std_size_um: float = 20.0
    at_min: float = 0.0
    mass_rel_std: float = 0.0

    def __post_init__(self) -> None:
        validate.non_negative(self, "mass_g", "at_min", "mass_rel_std")
        validate.positive(self, "mean_size_um", "std_size_um")


@dataclass(frozen=True)
class Vessel:
    """What the recipe sheet says of the vessel's charge (``scenario.reactor``).

    Attributes:
        water_mass_kg: water charged.
    """

    water_mass_kg: float = 15.0

    def __post_init__(self) -> None:
        validate.positive(self, "water_mass_kg")


@dataclass(frozen=True)
class BatchProcess:
    """One batch as its recipe sheet describes it (the agent's reading of ``scenario``).

    Attributes:
        name: scenario name.
        description: one line for humans.
        material: key of :data:`conf.contract.materials.MATERIALS`.
        initial_temperature_c: reactor temperature at charge (where the first ramp begins).
        initial_saturation_temperature_c: the charge is saturated at this temperature.
        recipe: the temperature program, run from batch start.
        seeding: seed charge.
        target_mean_size_um: product specification (volume-weighted mean size; 0: none given).
        duration_min: length of an offline run of the batch.
        reactor: the vessel's charge.
    """

    name: str = "seeded_cooling"
    description: str = ""
    material: str = "KCl"
    initial_temperature_c: float = 55.0
    initial_saturation_temperature_c: float = 50.0
    recipe: tuple[RecipeStep, ...] = ()
    seeding: Seeding = field(default_factory=Seeding)
    target_mean_size_um: float = 0.0
    duration_min: float = 240.0
    reactor: Vessel = field(default_factory=Vessel)

    def __post_init__(self) -> None:
        validate.positive(self, "duration_min")
        validate.non_negative(self, "target_mean_size_um")
        validate.within(self, "initial_temperature_c", -50.0, 200.0)
        validate.within(self, "initial_saturation_temperature_c", -50.0, 200.0)


def recipe_duration_min(recipe: Sequence[_Step], start_temperature_c: float) -> float:
    """Total recipe time: ramps at their rates plus holds."""
    total, temp = 0.0, start_temperature_c
    for step in recipe:
        total += abs(step.temperature_c - temp) / max(step.rate_k_per_min, 1e-9) + step.hold_min
        temp = step.temperature_c
    return total


def recipe_setpoint(
    recipe: Sequence[_Step], start_temperature_c: float, recipe_time_min: float
) -> tuple[float, float, bool]:
    """Local program at a recipe time.

    Args:
        recipe: the steps.
        start_temperature_c: temperature at batch start (where the first ramp begins).
        recipe_time_min: time since batch start (held time excluded).

    Returns:
        (temperature setpoint in C, antisolvent rate in kg/min, finished).
    """
    t, temp = recipe_time_min, start_temperature_c
    for step in recipe:
        ramp_min = abs(step.temperature_c - temp) / max(step.rate_k_per_min, 1e-9)
        if t < ramp_min:
            direction = math.copysign(1.0, step.temperature_c - temp)
            return temp + direction * step.rate_k_per_min * t, step.antisolvent_rate_kg_per_min, False
        t -= ramp_min
        if t < step.hold_min:
            return step.temperature_c, step.antisolvent_rate_kg_per_min, False
        t -= step.hold_min
        temp = step.temperature_c
    return temp, 0.0, True
