"""The process schema: one process as data, read by the agent, replay and the simulator alike.

A process (``conf/process/<name>.yaml``, config node ``process``) is what a plant's recipe
sheet and material file give: the material (a built-in name, or the material as data: density,
shape factor, solubility with its units and basis, metastable limit, structure file, kinetics
prior), the charge, the temperature program, the seeds, the product specification and the
instruments (:mod:`conf.contract.instruments`). :class:`BatchProcess` is its schema. The agent
reads only this; the simulated plant runs it (``plant_sim.scenarios.Scenario`` copies the
process's fields, :data:`FROM_PROCESS`, and adds only what is simulator-only: the vessel's
physics, its sensors' noise, disturbances, the kinetics that play the plant's truth). Both run
the recipe through :func:`recipe_setpoint`.

A material given only as data (not in :data:`conf.contract.materials.MATERIALS`) runs end to
end with no code change: the simulator runs its solubility, density and kinetics prior as its
truth, and the agent takes the prior as its model.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping, Optional, Protocol, Sequence

from conf.contract import validate
from conf.contract.instruments import DEFAULT_INSTRUMENTS, InstrumentSpec, with_defaults

__all__ = ["FROM_PROCESS", "BatchProcess", "MaterialData", "PowerLawPreset", "ProductSpecification", "RecipeStep",
           "Seeding", "SolubilityBasis", "SolubilityUnit", "recipe_duration_min", "recipe_setpoint"]

#: Field metadata key of the simulator's copies of process fields (``plant_sim.scenarios.Scenario``):
#: True where the field is a copy of the process's field of that name, a tuple of names where
#: those sub-fields are (the vessel's ``water_mass_kg``, the charge's ``solvent_mass_kg``). The
#: config fills them from ``process``, so the scenario's schema leaves them out and a scenario
#: file cannot set them.
FROM_PROCESS = "from_process"


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
    """

    mass_g: float = 0.0
    mean_size_um: float = 100.0
    std_size_um: float = 20.0
    at_min: float = 0.0

    def __post_init__(self) -> None:
        validate.non_negative(self, "mass_g", "at_min")
        validate.positive(self, "mean_size_um", "std_size_um")


@dataclass(frozen=True)
class ProductSpecification:
    """The product's release window (besides its target size, ``target_mean_size_um``), as a
    quality department writes it: a batch inside it is on specification.

    Attributes:
        d43_tolerance_rel: |d43 - target| <= tolerance x target.
        max_cv: largest coefficient of variation of the volume distribution.
        max_fines_mass_fraction: largest mass fraction below 100 um.
        max_yield_loss: largest share of the recoverable solute left in the mother liquor (1 -
            yield; 1: no floor). Where the liquor is not recycled, or a batch is to make the
            product a recipe makes: a batch stopped early makes smaller crystals as well as
            fewer.
    """

    d43_tolerance_rel: float = 0.05
    max_cv: float = 0.10
    max_fines_mass_fraction: float = 0.01
    max_yield_loss: float = 1.0

    def __post_init__(self) -> None:
        validate.positive(self, "d43_tolerance_rel", "max_cv", "max_fines_mass_fraction", "max_yield_loss")


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


class SolubilityUnit(str, enum.Enum):
    """Unit of solubility data: mass of solute per mass of the basis (:class:`SolubilityBasis`)."""

    g_per_kg = "g_per_kg"
    g_per_100g = "g_per_100g"
    g_per_g = "g_per_g"  # kg/kg: a mass ratio, or on the solution basis a mass fraction


class SolubilityBasis(str, enum.Enum):
    """What the solute mass of solubility data is counted against."""

    solvent = "solvent"  # per mass of solvent (how the plant's concentration is reported)
    solution = "solution"  # per mass of saturated solution (a mass fraction)


# g per kg of the basis, per unit.
_G_PER_KG = {SolubilityUnit.g_per_kg: 1.0, SolubilityUnit.g_per_100g: 10.0, SolubilityUnit.g_per_g: 1000.0}


@dataclass(frozen=True)
class MaterialData:
    """A material given as data, not built in (``process.material_data``).

    What the agent needs of a material it has no structure for, and what the simulator needs to
    run it. Solubility as measured points (interpolated with the same monotone cubic as the
    built-in tables) or as a polynomial correlation, in ``solubility_unit`` per
    ``solubility_basis``; temperatures in C. Everything downstream reads it through
    :meth:`solubility_table`, in g solute per kg solvent (the plant's concentration).

    Attributes:
        crystal_density_kg_per_m3: crystal density.
        volume_shape_factor: k_v of the volume-equivalent size axis (pi/6: spheres).
        molar_mass_g_per_mol: molar mass (0: not given).
        solubility_temperatures_c / solubility_values: measured points (at least 2), or empty
            when ``solubility_coefficients`` is given.
        solubility_coefficients: the correlation C* = sum_k c_k T^k (T in C), or empty.
        solubility_unit: unit of the values and of the correlation's C*.
        solubility_basis: solvent (mass ratio) or solution (mass fraction).
        metastable_sigma_limit: ln(C/C*) above which primary nucleation sets in (0: not given;
            the proposer's own limit then applies).
        structure_file: the crystal structure (a CIF, extended XYZ or any file ase reads; a
            cubic conventional cell) from which the MS-GNN builds the material's graphs and
            facet energetics, so the network serves the material (None: none, the kinetics
            prior is the model). A relative path names a file beside the process file (e.g.
            ``structures/x.cif`` next to ``conf/process/x.yaml``, in the repository or a
            site's own config folder), else in the working directory.
        lattice_energy_kj_per_mol: lattice (cohesive) energy per formula unit, which the
            structure's bond energies share (needed with ``structure_file``; 0: not given).
        kinetics: power-law kinetics in the preset form (``conf/kinetics``): the agent's prior
            (its model when the MS-GNN cannot serve the material) and, unless the scenario
            names a power-law preset of its own, the simulator's truth. None: not given.
    """

    crystal_density_kg_per_m3: float = 2000.0
    volume_shape_factor: float = math.pi / 6.0
    molar_mass_g_per_mol: float = 0.0
    solubility_temperatures_c: tuple[float, ...] = ()
    solubility_values: tuple[float, ...] = ()
    solubility_coefficients: tuple[float, ...] = ()
    solubility_unit: SolubilityUnit = SolubilityUnit.g_per_kg
    solubility_basis: SolubilityBasis = SolubilityBasis.solvent
    metastable_sigma_limit: float = 0.0
    structure_file: Optional[str] = None
    lattice_energy_kj_per_mol: float = 0.0
    kinetics: Optional[PowerLawPreset] = None

    def __post_init__(self) -> None:
        validate.positive(self, "crystal_density_kg_per_m3", "volume_shape_factor")
        validate.non_negative(self, "molar_mass_g_per_mol", "metastable_sigma_limit", "lattice_energy_kj_per_mol")
        table, poly = self.solubility_temperatures_c, self.solubility_coefficients
        if bool(table or self.solubility_values) == bool(poly):
            raise ValueError("give the solubility as measured points (solubility_temperatures_c and "
                             "solubility_values) or as a correlation (solubility_coefficients: C* = sum c_k T^k, "
                             "T in C), one of the two")
        if table and (len(table) != len(self.solubility_values) or len(table) < 2):
            raise ValueError(f"solubility_temperatures_c and solubility_values need the same length >= 2, got "
                             f"{len(table)} and {len(self.solubility_values)}")
        if table and (any(b <= a for a, b in zip(table, table[1:])) or any(not c > 0 for c in self.solubility_values)):
            raise ValueError("solubility_temperatures_c must increase and solubility_values be > 0")
        if table:
            self._g_per_kg_solvent(self.solubility_values)
        if self.structure_file is not None and (not isinstance(self.structure_file, str)
                                                or not self.structure_file.strip() or "\0" in self.structure_file):
            raise ValueError(f"structure_file must be the path of the material's structure file "
                             f"(e.g. structures/kno3.cif) or null, got {self.structure_file!r}")
        if self.structure_file is not None and not self.lattice_energy_kj_per_mol > 0:
            raise ValueError("a structure_file needs the material's lattice_energy_kj_per_mol (> 0, per formula "
                             "unit, e.g. from a Born-Haber cycle): the structure's bond energies share it")

    def _g_per_kg_solvent(self, values: Sequence[float]) -> tuple[float, ...]:
        """Values in the data's unit and basis -> g solute per kg solvent."""
        per_kg = [float(v) * _G_PER_KG[SolubilityUnit(self.solubility_unit)] for v in values]
        if SolubilityBasis(self.solubility_basis) is SolubilityBasis.solvent:
            return tuple(per_kg)
        if any(not 0.0 < w < 1000.0 for w in per_kg):
            raise ValueError(f"solubility on the solution basis is a mass fraction: it must lie between 0 and "
                             f"1 kg/kg, got {max(per_kg) / 1000.0:g} kg/kg (check solubility_unit and solubility_basis)")
        return tuple(1000.0 * w / (1000.0 - w) for w in per_kg)  # per kg solution -> per kg solvent

    def solubility_table(self, low_c: float = 0.0, high_c: float = 100.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The solubility in g solute per kg solvent: the measured points (temperatures C); a
        correlation sampled every 2.5 K over [low_c, high_c] (a polynomial is smooth, so the
        monotone cubic through it matches it)."""
        if self.solubility_temperatures_c:
            return tuple(self.solubility_temperatures_c), self._g_per_kg_solvent(self.solubility_values)
        n = int(round((high_c - low_c) / 2.5)) + 1
        temps = tuple(low_c + 2.5 * k for k in range(n))
        values = tuple(sum(c * t**k for k, c in enumerate(self.solubility_coefficients)) for t in temps)
        if any(not v > 0 for v in values):
            raise ValueError(f"the solubility correlation is not positive over {low_c}-{high_c} C; "
                             f"check solubility_coefficients")
        return temps, self._g_per_kg_solvent(values)


@dataclass(frozen=True)
class BatchProcess:
    """One process as data (``conf/process/<name>.yaml``): what the agent, replay and the
    simulator all read.

    Attributes:
        name: process name (its file's stem).
        description: one line for humans.
        material: key of :data:`conf.contract.materials.MATERIALS`, or the name of the material
            ``material_data`` defines.
        material_data: the material as data (None: ``material`` is built in).
        initial_temperature_c: charge: reactor temperature at charge (where the first ramp begins).
        initial_saturation_temperature_c: charge: the solution is saturated at this temperature.
        solvent_mass_kg: charge: solvent charged (the basis of the concentration).
        recipe: the temperature program, run from batch start.
        seeding: seed charge.
        target_mean_size_um: product specification (volume-weighted mean size; 0: none given).
        specification: the rest of the product's release window (size tolerance, CV, fines).
        instruments: signal name -> :class:`conf.contract.instruments.InstrumentSpec`: the
            plant's instruments, as the agent judges their readings. The ones given replace
            :data:`conf.contract.instruments.DEFAULT_INSTRUMENTS` per signal (a process file
            may give only the fields that differ); the rest keep the defaults.
    """

    name: str = ""
    description: str = ""
    material: str = "KCl"
    material_data: Optional[MaterialData] = None
    initial_temperature_c: float = 55.0
    initial_saturation_temperature_c: float = 50.0
    solvent_mass_kg: float = 15.0
    recipe: tuple[RecipeStep, ...] = ()
    seeding: Seeding = field(default_factory=Seeding)
    target_mean_size_um: float = 0.0
    specification: ProductSpecification = field(default_factory=ProductSpecification)
    instruments: Mapping[str, InstrumentSpec] = field(default_factory=lambda: DEFAULT_INSTRUMENTS)

    def __post_init__(self) -> None:
        validate.non_negative(self, "target_mean_size_um")
        validate.positive(self, "solvent_mass_kg")
        validate.within(self, "initial_temperature_c", -50.0, 200.0)
        validate.within(self, "initial_saturation_temperature_c", -50.0, 200.0)
        if not isinstance(self.instruments, Mapping):
            raise ValueError(f"instruments must map signal names to instrument specs, got {self.instruments!r}")
        try:
            merged = with_defaults(self.instruments)
        except ValueError as exc:
            raise ValueError(f"instruments.{exc}") from None
        # Frozen: the merged, read-only map replaces what was given, so every reader sees the
        # defaults filled in (the config's composition has filled them already; this covers
        # a process built in code).
        object.__setattr__(self, "instruments", merged)


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
