"""Material parameter sets: crystal structure, thermochemistry and aqueous solubility.

Each :class:`Material` is a named, frozen parameter set in the PyBaMM style: units in every
field name and the literature source in ``source``. It feeds physics steps 1-3 of DESIGN.md:

1. the atom graph (``ase.build.bulk(ase_symbols, structure, a=lattice_constant_angstrom,
   cubic=True)``) and a bond energy from ``lattice_energy_kj_per_mol`` shared over the
   coordination number;
2. surface / attachment energies per facet family and the Mersmann interfacial energy, which
   needs the crystal molar density and the solubility;
3. impurity poisoning per facet family (Kubota-Mullin alpha and Langmuir K).

Solubility comes either from the CRC table shipped in ``conf/contract/data`` (:class:`Solubility`,
monotone PCHIP interpolation, :mod:`conf.contract.solubility`) or from a published polynomial
fit (:class:`SolubilityPolynomial`, used by empirical power-law kinetics presets).

Units: solubility in g solute per kg solvent (water); temperature in degrees Celsius.

References:

- Rumble, J. R. (ed.) (2017) CRC Handbook of Chemistry and Physics, 98th ed., CRC Press:
  "Aqueous Solubility of Inorganic Compounds at Various Temperatures", "Physical Constants of
  Inorganic Compounds" (density, molar mass), "Lattice Energies" (Born-Haber values),
  "Crystal Structures and Lattice Parameters of Allotropes of the Elements".
- Kittel, C. (2005) Introduction to Solid State Physics, 8th ed., Wiley: Table 1.3 (lattice
  constants of cubic crystals), Ch. 3 Table 1 (cohesive energies of the elements).
- Wyckoff, R. W. G. (1963) Crystal Structures, vol. 1, 2nd ed., Interscience (NH4 halides).
- Fritsch, F. N. & Carlson, R. E. (1980) SIAM J. Numer. Anal. 17, 238 (monotone PCHIP).
- Miller, S. M. & Rawlings, J. B. (1994) AIChE J. 40, 1312 (KNO3 solubility polynomial).
- Kubota, N. & Mullin, J. W. (1995) J. Cryst. Growth 152, 203 (impurity effectiveness).
- Kern, R. (1953) Bull. Soc. franc. Minér. Crist. 76, 391 (habit modification of NaCl).
- Radenovic, N., van Enckevort, W. & Vlieg, E. (2004) J. Cryst. Growth 263, 544 (NaCl {111}
  stabilised by formamide / urea).
"""

from __future__ import annotations

import csv
import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from conf.contract.solubility import PchipTable

__all__ = [
    "AVOGADRO_PER_MOL",
    "CRC_SOLUBILITY_CSV",
    "CRC_SOLUBILITY_SOURCE",
    "DEFAULT_MATERIAL_NAME",
    "EXTRAPOLATION_MARGIN_K",
    "KNO3_MILLER_RAWLINGS_1994",
    "MATERIALS",
    "STRUCTURES",
    "Material",
    "Solubility",
    "SolubilityPolynomial",
    "crc_solubility_formulas",
    "get_material",
    "load_crc_solubility",
    "mass_percent_to_g_per_kg",
]

AVOGADRO_PER_MOL = 6.02214076e23

#: Crystal-structure names that ``ase.build.bulk`` builds directly (cubic conventional cells).
STRUCTURES: tuple[str, ...] = ("rocksalt", "cesiumchloride", "fluorite", "zincblende", "diamond", "fcc", "bcc")

#: Tabulated solubility is extrapolated linearly (slope of the PCHIP at the end point) at most
#: this far outside the table; further out a ValueError is raised rather than guessing.
EXTRAPOLATION_MARGIN_K = 10.0

CRC_SOLUBILITY_CSV = Path(__file__).parent / "data" / "aqueous_solubility_inorganic_temperatures.csv"
CRC_SOLUBILITY_SOURCE = (
    "CRC Handbook of Chemistry and Physics, 98th ed. (2017), 'Aqueous Solubility of Inorganic "
    "Compounds at Various Temperatures'; transcribed in chicolucio/solutions (MIT, (c) 2020 "
    "Francisco Bustamante); mass percent w converted to 1000 w / (100 - w) g per kg water"
)

# Points of the fine table used to invert solubility (saturation temperature); a Newton step
# polishes the interpolated root, so the inverse is exact to ~1e-9 K.
_INVERSE_TABLE_POINTS = 4001


def mass_percent_to_g_per_kg(mass_percent: np.ndarray | float) -> np.ndarray:
    """Convert mass percent w (g solute per 100 g solution) to g solute per kg solvent.

    Args:
        mass_percent: w in percent, 0 <= w < 100, any shape.

    Returns:
        1000 w / (100 - w), same shape.
    """
    w = np.asarray(mass_percent, dtype=float)
    if np.any(w < 0.0) or np.any(w >= 100.0):
        raise ValueError(f"mass percent must lie in [0, 100), got {w}")
    return 1000.0 * w / (100.0 - w)


def _invert_increasing(
    func, deriv, t_lo_c: float, t_hi_c: float, concentration_g_per_kg: np.ndarray | float
) -> np.ndarray:
    """Temperature at which an increasing solubility curve equals the given concentration.

    Interpolates on a fine table of (C*(T), T), then takes one Newton step.
    """
    t_grid = np.linspace(t_lo_c, t_hi_c, _INVERSE_TABLE_POINTS)
    c_grid = func(t_grid)
    if np.any(np.diff(c_grid) <= 0.0):
        raise ValueError(
            "solubility does not rise strictly with temperature on "
            f"[{t_lo_c:g}, {t_hi_c:g}] C; saturation temperature is not unique"
        )
    c = np.asarray(concentration_g_per_kg, dtype=float)
    if np.any(c < c_grid[0]) or np.any(c > c_grid[-1]):
        raise ValueError(
            f"concentration {c} g/kg outside the solubility range "
            f"[{c_grid[0]:.4g}, {c_grid[-1]:.4g}] g/kg on [{t_lo_c:g}, {t_hi_c:g}] C"
        )
    t = np.interp(c, c_grid, t_grid)
    t = t - (func(t) - c) / deriv(t)
    return np.clip(t, t_lo_c, t_hi_c)


@dataclass(frozen=True)
class Solubility:
    """Tabulated equilibrium solubility C*(T), interpolated with a monotone cubic (PCHIP).

    PCHIP (Fritsch & Carlson 1980) keeps the interpolant monotone between table points, so a
    rising table gives a rising curve with no overshoot. Within ``EXTRAPOLATION_MARGIN_K`` of
    the table ends the curve continues linearly with the end-point slope; further out the
    methods raise ValueError.

    Attributes:
        temperatures_c: table temperatures in C, strictly increasing, at least 2 points.
        solubility_g_per_kg: C* at those temperatures, g solute per kg solvent.
        source: literature reference of the table.
    """

    temperatures_c: tuple[float, ...]
    solubility_g_per_kg: tuple[float, ...]
    source: str
    _table: PchipTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.temperatures_c, dtype=float)
        c = np.asarray(self.solubility_g_per_kg, dtype=float)
        if t.ndim != 1 or t.shape != c.shape or t.size < 2:
            raise ValueError("need matching 1-D temperature and solubility tables of >= 2 points")
        if np.any(np.diff(t) <= 0.0):
            raise ValueError(f"temperatures_c must be strictly increasing, got {self.temperatures_c}")
        if np.any(c <= 0.0) or not np.all(np.isfinite(c)):
            raise ValueError(f"solubility_g_per_kg must be positive and finite, got {self.solubility_g_per_kg}")
        object.__setattr__(self, "_table", PchipTable.through(t, c))

    @property
    def range_c(self) -> tuple[float, float]:
        """Temperature range (C) the methods accept: table range widened by the margin."""
        return (self.temperatures_c[0] - EXTRAPOLATION_MARGIN_K, self.temperatures_c[-1] + EXTRAPOLATION_MARGIN_K)

    def _check_range(self, t: np.ndarray) -> None:
        lo, hi = self.range_c
        if np.any(t < lo) or np.any(t > hi) or not np.all(np.isfinite(t)):
            raise ValueError(f"temperature {t} C outside [{lo:g}, {hi:g}] C (table +/- {EXTRAPOLATION_MARGIN_K:g} K)")

    def g_per_kg(self, temperature_c: np.ndarray | float) -> np.ndarray:
        """Solubility C*(T) in g solute per kg solvent; same shape as ``temperature_c``."""
        t = np.asarray(temperature_c, dtype=float)
        self._check_range(t)
        return self._table(t)

    def derivative_g_per_kg_per_k(self, temperature_c: np.ndarray | float) -> np.ndarray:
        """dC*/dT in g per kg solvent per K; constant end slope in the extrapolation margin."""
        t = np.asarray(temperature_c, dtype=float)
        self._check_range(t)
        return self._table.derivative(t)

    def saturation_temperature_c(self, concentration_g_per_kg: np.ndarray | float) -> np.ndarray:
        """Temperature (C) at which ``concentration_g_per_kg`` is saturated: T with C*(T) = C.

        Only defined where C* rises strictly with T (cooling-crystallization systems);
        otherwise, or for C outside C*(range_c), raises ValueError.
        """
        lo, hi = self.range_c
        return _invert_increasing(self.g_per_kg, self.derivative_g_per_kg_per_k, lo, hi, concentration_g_per_kg)


@dataclass(frozen=True)
class SolubilityPolynomial:
    """Solubility as a polynomial C*(T) = c0 + c1 T + c2 T^2 + ..., T in C, C* in g per kg.

    The polynomial is evaluated at any temperature (it is the published fit); the inverse
    searches only ``valid_range_c``, the range the fit's authors give.

    Attributes:
        coefficients_g_per_kg: (c0, c1, c2, ...) in g/kg, g/kg/K, g/kg/K^2, ...
        source: literature reference of the fit.
        valid_range_c: (low, high) temperatures in C over which the fit holds.
    """

    coefficients_g_per_kg: tuple[float, ...]
    source: str
    valid_range_c: tuple[float, float] = (0.0, 100.0)

    def __post_init__(self) -> None:
        if len(self.coefficients_g_per_kg) == 0:
            raise ValueError("need at least one coefficient")
        if not self.valid_range_c[0] < self.valid_range_c[1]:
            raise ValueError(f"valid_range_c must be (low, high), got {self.valid_range_c}")

    def g_per_kg(self, temperature_c: np.ndarray | float) -> np.ndarray:
        """Solubility C*(T) in g solute per kg solvent; same shape as ``temperature_c``."""
        return np.polynomial.polynomial.polyval(np.asarray(temperature_c, dtype=float), self.coefficients_g_per_kg)

    def derivative_g_per_kg_per_k(self, temperature_c: np.ndarray | float) -> np.ndarray:
        """dC*/dT in g per kg solvent per K; same shape as ``temperature_c``."""
        d = np.polynomial.polynomial.polyder(np.asarray(self.coefficients_g_per_kg, dtype=float))
        return np.polynomial.polynomial.polyval(np.asarray(temperature_c, dtype=float), d)

    def saturation_temperature_c(self, concentration_g_per_kg: np.ndarray | float) -> np.ndarray:
        """Temperature (C) in ``valid_range_c`` with C*(T) = C; ValueError if none or not unique."""
        lo, hi = self.valid_range_c
        return _invert_increasing(self.g_per_kg, self.derivative_g_per_kg_per_k, lo, hi, concentration_g_per_kg)


@functools.lru_cache(maxsize=1)
def _crc_table() -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    """Read the CRC CSV once: formula -> (temperatures C, mass percent), empty cells dropped."""
    table: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
    with CRC_SOLUBILITY_CSV.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        temps = [float(h) for h in header[2:]]
        for row in reader:
            if len(row) < 2:
                continue
            pairs = [(t, float(v)) for t, v in zip(temps, row[2:]) if v.strip()]
            table[row[1].strip()] = (tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))
    return table


def crc_solubility_formulas() -> tuple[str, ...]:
    """Formulas in the shipped CRC solubility table, in file order."""
    return tuple(_crc_table())


def load_crc_solubility(formula: str) -> Solubility:
    """Aqueous solubility of ``formula`` from the CRC Handbook table, in g per kg water.

    Args:
        formula: formula exactly as in the table's ``Formula`` column (e.g. "KCl", "NH4Cl").

    Returns:
        A :class:`Solubility` over the temperatures with values.

    Raises:
        KeyError: formula not in the table (the message names close matches).
        ValueError: fewer than 2 tabulated temperatures.
    """
    table = _crc_table()
    if formula not in table:
        close = difflib.get_close_matches(formula, list(table), n=5, cutoff=0.5)
        raise KeyError(f"{formula!r} not in the CRC solubility table; close matches: {close}")
    temps, mass_percent = table[formula]
    if len(temps) < 2:
        raise ValueError(f"{formula!r} has only {len(temps)} tabulated temperature(s); cannot interpolate")
    return Solubility(
        temperatures_c=temps,
        solubility_g_per_kg=tuple(float(x) for x in mass_percent_to_g_per_kg(np.array(mass_percent))),
        source=CRC_SOLUBILITY_SOURCE + f" (row {formula})",
    )


_DEFAULT_FACETS: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (1, 1, 0), (1, 1, 1))


@dataclass(frozen=True)
class Material:
    """A crystalline material: structure, thermochemistry, solubility and impurity response.

    Attributes:
        name: key in :data:`MATERIALS`.
        formula: chemical formula (as in the CRC solubility table for solution systems).
        structure: ``ase.build.bulk`` crystal-structure name, one of :data:`STRUCTURES`.
        ase_symbols: the symbols ``ase.build.bulk`` gets (a stand-in where ase has no such
            atom, e.g. Rb for NH4+; see ``notes``).
        lattice_constant_angstrom: cubic lattice constant a of the conventional cell, at room T.
        density_kg_per_m3: crystal density at room temperature.
        molar_mass_g_per_mol: molar mass of one formula unit.
        lattice_energy_kj_per_mol: energy to separate one mole of formula units into gaseous
            ions (ionic crystals, Born-Haber) or atoms (cohesive energy of metals and covalent
            crystals); positive.
        formula_units_per_cell: Z, formula units in the conventional cubic cell.
        solubility: aqueous solubility, or None for materials not grown from solution.
        facet_families: {hkl} families the physics chain resolves.
        impurity_effectiveness: Kubota-Mullin alpha per facet family (dimensionless).
        impurity_langmuir_per_ppm: Langmuir adsorption constant K per facet family, per ppm of
            impurity in the liquid.
        source: literature references of the values.
        notes: caveats (stand-ins, hydrates, illustrative values).
    """

    name: str
    formula: str
    structure: str
    ase_symbols: str
    lattice_constant_angstrom: float
    density_kg_per_m3: float
    molar_mass_g_per_mol: float
    lattice_energy_kj_per_mol: float
    formula_units_per_cell: int
    solubility: Solubility | SolubilityPolynomial | None
    source: str
    notes: str = ""
    facet_families: tuple[tuple[int, int, int], ...] = _DEFAULT_FACETS
    impurity_effectiveness: tuple[float, ...] = (0.0, 0.0, 0.0)
    impurity_langmuir_per_ppm: tuple[float, ...] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(f"{self.name}: structure {self.structure!r} not one of {STRUCTURES}")
        for attr in (
            "lattice_constant_angstrom",
            "density_kg_per_m3",
            "molar_mass_g_per_mol",
            "lattice_energy_kj_per_mol",
            "formula_units_per_cell",
        ):
            if not getattr(self, attr) > 0:
                raise ValueError(f"{self.name}: {attr} must be positive, got {getattr(self, attr)}")
        n = len(self.facet_families)
        if len(self.impurity_effectiveness) != n or len(self.impurity_langmuir_per_ppm) != n:
            raise ValueError(
                f"{self.name}: impurity_effectiveness and impurity_langmuir_per_ppm need one entry "
                f"per facet family ({n})"
            )
        if any(k < 0 for k in self.impurity_langmuir_per_ppm) or any(a < 0 for a in self.impurity_effectiveness):
            raise ValueError(f"{self.name}: impurity parameters must be non-negative")

    @property
    def molecular_volume_m3(self) -> float:
        """Volume of one formula unit in the crystal, M / (rho N_A)."""
        return self.molar_mass_g_per_mol * 1e-3 / (self.density_kg_per_m3 * AVOGADRO_PER_MOL)

    @property
    def crystal_molar_density_mol_per_m3(self) -> float:
        """Moles of formula units per m3 of crystal, rho / M (Mersmann's c_C)."""
        return self.density_kg_per_m3 / (self.molar_mass_g_per_mol * 1e-3)

    @property
    def is_solution_system(self) -> bool:
        """True when the material has an aqueous solubility (grows from solution)."""
        return self.solubility is not None

    @property
    def cell_volume_m3(self) -> float:
        """Volume of the conventional cubic cell, a^3."""
        return (self.lattice_constant_angstrom * 1e-10) ** 3

    @property
    def x_ray_density_kg_per_m3(self) -> float:
        """Density from the lattice: Z M / (N_A a^3). Checks ``density_kg_per_m3``."""
        return self.formula_units_per_cell * self.molar_mass_g_per_mol * 1e-3 / (AVOGADRO_PER_MOL * self.cell_volume_m3)


# --- sources --------------------------------------------------------------------------------
_SRC_IONIC = (
    "a: Kittel (2005) Introduction to Solid State Physics 8th ed., Table 1.3 / CRC Handbook 98th "
    "ed. (2017) lattice parameters; density and molar mass: CRC Handbook 98th ed. 'Physical "
    "Constants of Inorganic Compounds'; lattice energy: CRC Handbook 98th ed. 'Lattice Energies' "
    "(Born-Haber)"
)
_SRC_NH4 = (
    "a: Wyckoff (1963) Crystal Structures vol. 1 (CsCl-type NH4 halide below its order-disorder "
    "transition); density and molar mass: CRC Handbook 98th ed. (2017) 'Physical Constants of "
    "Inorganic Compounds'; lattice energy: CRC Handbook 98th ed. 'Lattice Energies'"
)
_SRC_ELEMENT = (
    "a: Kittel (2005) Introduction to Solid State Physics 8th ed., Table 1.3 / CRC Handbook 98th "
    "ed. (2017) 'Crystal Structures and Lattice Parameters of Allotropes of the Elements'; density: "
    "CRC Handbook 98th ed. 'Physical Constants of the Elements'; cohesive energy: Kittel (2005) "
    "Ch. 3 Table 1"
)
_SRC_SOL = "; solubility: CRC Handbook 98th ed. (2017) via chicolucio/solutions (see solubility.source)"
_SRC_IMPURITY = (
    "; impurity: Kubota & Mullin (1995) model, {111} poisoning after Kern (1953) and Radenovic, "
    "van Enckevort & Vlieg (2004) J. Cryst. Growth 263, 544"
)
_NOTE_IMPURITY = (
    "Impurity alpha and K are illustrative values (not fitted): an additive such as urea / "
    "formamide / Pb2+ / Cd2+ adsorbs on {111} selectively and turns cubes towards octahedra."
)
_NOTE_NH4 = (
    "ase has no NH4 atom: ase_symbols uses Rb as a stand-in cation of similar radius (NH4+ 1.48 A, "
    "Rb+ 1.52 A); use molar_mass_g_per_mol, not the ase masses."
)
_NOTE_COHESIVE = "lattice_energy_kj_per_mol holds the cohesive energy per atom (atomic crystal)."


def _ionic(
    formula: str,
    structure: str,
    a: float,
    rho: float,
    molar_mass: float,
    u_latt: float,
    z: int,
    *,
    ase_symbols: str | None = None,
    solution: bool = True,
    source: str = _SRC_IONIC,
    notes: str = "",
    impurity: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> Material:
    extra = {}
    if impurity is not None:
        extra = {"impurity_effectiveness": impurity[0], "impurity_langmuir_per_ppm": impurity[1]}
        source = source + _SRC_IMPURITY
        notes = (notes + " " + _NOTE_IMPURITY).strip()
    return Material(
        name=formula,
        formula=formula,
        structure=structure,
        ase_symbols=ase_symbols or formula,
        lattice_constant_angstrom=a,
        density_kg_per_m3=rho,
        molar_mass_g_per_mol=molar_mass,
        lattice_energy_kj_per_mol=u_latt,
        formula_units_per_cell=z,
        solubility=load_crc_solubility(formula) if solution else None,
        source=source + (_SRC_SOL if solution else ""),
        notes=notes,
        **extra,
    )


def _element(symbol: str, structure: str, a: float, rho: float, molar_mass: float, e_coh: float) -> Material:
    z = {"fcc": 4, "bcc": 2, "diamond": 8}[structure]
    return Material(
        name=symbol,
        formula=symbol,
        structure=structure,
        ase_symbols=symbol,
        lattice_constant_angstrom=a,
        density_kg_per_m3=rho,
        molar_mass_g_per_mol=molar_mass,
        lattice_energy_kj_per_mol=e_coh,
        formula_units_per_cell=z,
        solubility=None,
        source=_SRC_ELEMENT,
        notes=_NOTE_COHESIVE + " Not a solution system (melt / vapour growth).",
    )


def _build_materials() -> dict[str, Material]:
    rs, cscl = "rocksalt", "cesiumchloride"
    mats = [
        # rocksalt, Z = 4
        _ionic("NaCl", rs, 5.640, 2165.0, 58.44, 787.0, 4,
               impurity=((0.1, 0.1, 1.2), (0.01, 0.01, 0.03)),
               notes="Solubility nearly flat in T: evaporative rather than cooling crystallization in practice."),
        _ionic("KCl", rs, 6.293, 1984.0, 74.55, 715.0, 4,
               impurity=((0.1, 0.1, 1.3), (0.01, 0.01, 0.05))),
        _ionic("KBr", rs, 6.600, 2740.0, 119.00, 689.0, 4),
        _ionic("KI", rs, 7.066, 3120.0, 166.00, 649.0, 4),
        _ionic("RbCl", rs, 6.581, 2800.0, 120.92, 689.0, 4),
        _ionic("RbBr", rs, 6.889, 3350.0, 165.37, 660.0, 4),
        _ionic("RbI", rs, 7.342, 3550.0, 212.37, 630.0, 4),
        _ionic("NaF", rs, 4.633, 2780.0, 41.99, 930.0, 4,
               notes="Sparingly soluble (~40 g/kg) with weak T dependence."),
        # CsCl type, Z = 1
        _ionic("CsCl", cscl, 4.123, 3988.0, 168.36, 659.0, 1),
        _ionic("CsI", cscl, 4.567, 4510.0, 259.81, 613.0, 1),
        _ionic("CsBr", cscl, 4.296, 4430.0, 212.81, 647.0, 1, solution=False,
               notes="Soluble in water, but the CRC table gives only 25 C (55.2 wt%): solubility left None."),
        _ionic("NH4Cl", cscl, 3.876, 1519.0, 53.49, 705.0, 1, ase_symbols="RbCl", source=_SRC_NH4,
               notes=_NOTE_NH4 + " CsCl-type phase below 184.5 C."),
        _ionic("NH4Br", cscl, 4.059, 2429.0, 97.94, 680.0, 1, ase_symbols="RbBr", source=_SRC_NH4,
               notes=_NOTE_NH4 + " CsCl-type (orientationally disordered) phase at room T; lattice "
               "energy approximate (+/- 2 %)."),
        # fluorite, Z = 4
        _ionic("CaF2", "fluorite", 5.463, 3180.0, 78.07, 2651.0, 4, solution=False,
               notes="Practically insoluble (0.016 g/kg); grown from the melt."),
        _ionic("SrF2", "fluorite", 5.800, 4240.0, 125.62, 2513.0, 4, solution=False,
               notes="Practically insoluble; grown from the melt."),
        _ionic("BaF2", "fluorite", 6.200, 4890.0, 175.32, 2373.0, 4, solution=False,
               notes="Sparingly soluble (~1.6 g/kg); grown from the melt."),
        # zincblende, Z = 4
        _ionic("ZnS", "zincblende", 5.409, 4090.0, 97.47, 3619.0, 4, solution=False,
               notes="Sphalerite. Insoluble; vapour / hydrothermal growth."),
        # diamond, 8 atoms per cell
        _element("Si", "diamond", 5.431, 2329.0, 28.086, 446.0),
        _element("Ge", "diamond", 5.658, 5323.0, 72.63, 372.0),
        _element("C", "diamond", 3.567, 3515.0, 12.011, 711.0),
        # fcc, 4 atoms per cell
        _element("Al", "fcc", 4.0495, 2698.0, 26.982, 327.0),
        _element("Cu", "fcc", 3.615, 8960.0, 63.546, 336.0),
        _element("Ni", "fcc", 3.524, 8908.0, 58.693, 428.0),
        _element("Ag", "fcc", 4.086, 10490.0, 107.87, 284.0),
        _element("Au", "fcc", 4.078, 19300.0, 196.97, 368.0),
        # bcc, 2 atoms per cell
        _element("Fe", "bcc", 2.8665, 7874.0, 55.845, 413.0),
        _element("W", "bcc", 3.165, 19250.0, 183.84, 859.0),
        _element("Mo", "bcc", 3.147, 10220.0, 95.95, 658.0),
    ]
    return {m.name: m for m in mats}


#: All material presets by name (read-only).
MATERIALS: Mapping[str, Material] = MappingProxyType(_build_materials())

DEFAULT_MATERIAL_NAME = "KCl"

#: KNO3 solubility fit of Miller & Rawlings (1994), C* = 0.1286 + 5.88e-3 T + 1.721e-4 T^2
#: g/g water (T in C), here in g/kg. Fitted to batch data of about 20-40 C; it stays within
#: 6 % of the CRC table over 0-60 C, the range searched by the inverse.
KNO3_MILLER_RAWLINGS_1994 = SolubilityPolynomial(
    coefficients_g_per_kg=(128.6, 5.88, 0.1721),
    source="Miller, S. M. & Rawlings, J. B. (1994) AIChE J. 40, 1312, eq. for C_s(T) (g/g water, x1000)",
    valid_range_c=(0.0, 60.0),
)


def get_material(name: str) -> Material:
    """Material preset by exact (case-sensitive) name.

    Raises:
        KeyError: unknown name; the message lists the allowed names.
    """
    try:
        return MATERIALS[name]
    except KeyError:
        raise KeyError(f"unknown material {name!r}; allowed: {', '.join(sorted(MATERIALS))}") from None

