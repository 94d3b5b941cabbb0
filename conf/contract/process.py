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
from typing import Optional, Protocol, Sequence

from conf.contract import validate

__all__ = ["BatchProcess", "MaterialData", "PowerLawPreset", "RecipeStep", "Seeding", "Vessel", "recipe_duration_min",
           "recipe_setpoint"]


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
class PowerLawPreset:
    """Empirical kinetics and the solution data they were fitted with (``conf/kinetics``).

    Rates are in the units plants report them (the simulator's ``PowerLawKinetics`` runs them):

        G = k_g s^g exp(-E_g/R (1/T - 1/T_ref)),   B = k_b s^b M^j exp(-E_b/R (1/T - 1/T_ref))

    with s = (C - C*)/C* and T_ref = 298.15 K. The simulator runs a preset as its plant's truth;
    a process's :class:`MaterialData` carries one as the agent's kinetics prior.

    Attributes:
        name: preset name.
        growth_rate_um_per_min: k_g.
        growth_exponent: g.
        dissolution_rate_um_per_min: k_d.
        dissolution_exponent: d.
        growth_activation_kj_per_mol: E_g.
        nucleation_rate_per_kg_s: k_b (basis per ``nucleation_basis``).
        nucleation_exponent: b.
        suspension_exponent: j.
        nucleation_activation_kj_per_mol: E_b.
        nucleation_basis: suspension_density (M_T in kg/kg) or third_moment (mu_3 in m^3/kg).
        volume_shape_factor: k_v.
        crystal_density_kg_per_m3: crystal density.
        solubility_coefficients_g_per_kg: C* = sum_k c_k T^k (T in C).
        reference: literature source and caveats.
    """

    name: str = ""
    growth_rate_um_per_min: float = 1.0
    growth_exponent: float = 1.0
    dissolution_rate_um_per_min: float = 1.0
    dissolution_exponent: float = 1.0
    growth_activation_kj_per_mol: float = 0.0
    nucleation_rate_per_kg_s: float = 0.0
    nucleation_exponent: float = 2.0
    suspension_exponent: float = 1.0
    nucleation_activation_kj_per_mol: float = 0.0
    nucleation_basis: str = "suspension_density"
    volume_shape_factor: float = math.pi / 6.0
    crystal_density_kg_per_m3: float = 2000.0
    solubility_coefficients_g_per_kg: tuple[float, ...] = (0.0,)
    reference: str = ""

    def __post_init__(self) -> None:
        validate.non_negative(self, "growth_rate_um_per_min", "dissolution_rate_um_per_min", "nucleation_rate_per_kg_s")
        validate.positive(self, "volume_shape_factor", "crystal_density_kg_per_m3")
        if len(self.solubility_coefficients_g_per_kg) == 0:
            raise ValueError("solubility_coefficients_g_per_kg needs at least one coefficient")



@dataclass(frozen=True)
class MaterialData:
    """A material given as data, not built in (``scenario.material_data``).

    What the agent needs of a material it has no structure for, and what the simulator needs to
    run it with power-law kinetics. Solubility as measured points (interpolated with the same
    monotone cubic as the built-in tables) or as a polynomial; concentrations in g solute per kg
    solvent, temperatures in C.

    Attributes:
        crystal_density_kg_per_m3: crystal density.
        volume_shape_factor: k_v of the volume-equivalent size axis (pi/6: spheres).
        molar_mass_g_per_mol: molar mass (0: not given).
        solubility_temperatures_c / solubility_g_per_kg: measured points (at least 2), or empty
            when ``solubility_coefficients_g_per_kg`` is given.
        solubility_coefficients_g_per_kg: C* = sum_k c_k T^k, or empty.
        metastable_sigma_limit: ln(C/C*) above which primary nucleation sets in (0: not given;
            the proposer's own limit then applies).
        kinetics: power-law kinetics: the agent's prior (its model when the MS-GNN cannot serve
            the material) and the simulator's truth.
    """

    crystal_density_kg_per_m3: float = 2000.0
    volume_shape_factor: float = math.pi / 6.0
    molar_mass_g_per_mol: float = 0.0
    solubility_temperatures_c: tuple[float, ...] = ()
    solubility_g_per_kg: tuple[float, ...] = ()
    solubility_coefficients_g_per_kg: tuple[float, ...] = ()
    metastable_sigma_limit: float = 0.0
    kinetics: PowerLawPreset = field(default_factory=PowerLawPreset)

    def __post_init__(self) -> None:
        validate.positive(self, "crystal_density_kg_per_m3", "volume_shape_factor")
        validate.non_negative(self, "molar_mass_g_per_mol", "metastable_sigma_limit")
        table, poly = self.solubility_temperatures_c, self.solubility_coefficients_g_per_kg
        if bool(table) == bool(poly):
            raise ValueError("give the solubility as measured points (solubility_temperatures_c and "
                             "solubility_g_per_kg) or as solubility_coefficients_g_per_kg, one of the two")
        if table and (len(table) != len(self.solubility_g_per_kg) or len(table) < 2):
            raise ValueError(f"solubility_temperatures_c and solubility_g_per_kg need the same length >= 2, got "
                             f"{len(table)} and {len(self.solubility_g_per_kg)}")
        if table and (any(b <= a for a, b in zip(table, table[1:])) or any(c <= 0 for c in self.solubility_g_per_kg)):
            raise ValueError("solubility_temperatures_c must increase and solubility_g_per_kg be > 0")

    def solubility_table(self, low_c: float = 0.0, high_c: float = 100.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Measured points (temperatures C, g/kg); a polynomial sampled every 2.5 K over
        [low_c, high_c] (a polynomial is smooth, so the monotone cubic through it matches it)."""
        if self.solubility_temperatures_c:
            return tuple(self.solubility_temperatures_c), tuple(self.solubility_g_per_kg)
        n = int(round((high_c - low_c) / 2.5)) + 1
        temps = tuple(low_c + 2.5 * k for k in range(n))
        values = tuple(sum(c * t**k for k, c in enumerate(self.solubility_coefficients_g_per_kg)) for t in temps)
        if any(v <= 0 for v in values):
            raise ValueError(f"the solubility polynomial is not positive over {low_c}-{high_c} C")
        return temps, values


@dataclass(frozen=True)
class BatchProcess:
    """One batch as its recipe sheet describes it (the agent's reading of ``scenario``).

    Attributes:
        name: scenario name.
        description: one line for humans.
        material: key of :data:`conf.contract.materials.MATERIALS`, or the name of the material
            ``material_data`` defines.
        initial_temperature_c: reactor temperature at charge (where the first ramp begins).
        initial_saturation_temperature_c: the charge is saturated at this temperature.
        recipe: the temperature program, run from batch start.
        seeding: seed charge.
        target_mean_size_um: product specification (volume-weighted mean size; 0: none given).
        duration_min: length of an offline run of the batch.
        reactor: the vessel's charge.
        material_data: the material as data (None: ``material`` is built in).
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
    material_data: Optional[MaterialData] = None

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
