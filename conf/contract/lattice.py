"""Atomic scale of the physics chain: atom graphs, broken bonds and facet energetics.

DESIGN steps 1-2. A crystal built by :func:`ase.build.bulk` becomes a bond graph (neighbours
within a cutoff, each bond carrying one share of the lattice energy). Cutting that graph with
lattice planes gives, per facet family {hkl}:

- the broken-bond surface energy in vacuum, gamma_hkl = (n_cut / 2) eps / A, where n_cut is
  the number of bonds a plane cuts per area A (the cut makes two surfaces);
- the Hartman-Perdok slice and attachment energies per formula unit,
  E_latt = E_slice + E_att, with the slice thickness d_hkl from the Donnay-Harker rule (the
  lattice centring and the space-group extinctions, not the conventional cubic spacing);
- the step height d_hkl of the growth layer.

The solid-liquid interfacial energy used for nucleation comes from Mersmann's correlation.

References:
    - Hartman, P. & Perdok, W. G. (1955) Acta Cryst. 8, 49-52 (periodic bond chains,
      slice and attachment energies).
    - Donnay, J. D. H. & Harker, D. (1937) Am. Mineral. 22, 446 (slice thickness from
      extinction conditions).
    - Mersmann, A. (1990) J. Cryst. Growth 102, 841-847 (interfacial tension from solubility).
    - Mackrodt, W. C. & Stewart, R. F. (1977) J. Phys. C 10, 1431 (broken-bond surface
      energies of ionic crystals, for comparison).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from functools import reduce
from typing import Sequence

import ase
import ase.build
import numpy as np
from ase.neighborlist import neighbor_list

AVOGADRO_PER_MOL = 6.02214076e23
K_BOLTZMANN_J_PER_K = 1.380649e-23
J_PER_EV = 1.602176634e-19
KJ_PER_MOL_PER_EV = J_PER_EV * AVOGADRO_PER_MOL / 1e3  # 96.485 kJ/mol per eV
M2_PER_ANGSTROM2 = 1e-20
M_PER_ANGSTROM = 1e-10

# The first-neighbour shell ends where the next shell begins; 10 % slack keeps the shell whole
# against rounding yet stays below the second shell of every structure here (the closest
# ratio is 2/sqrt(3) = 1.155 for bcc, CsCl and fluorite's F-F).
FIRST_SHELL_SLACK = 1.1

__all__ = [
    "StructureType",
    "BondGraph",
    "FacetEnergetics",
    "build_atoms",
    "bond_graph",
    "bond_energy_ev",
    "slice_thickness_angstrom",
    "broken_bond_density_per_angstrom2",
    "facet_energetics",
    "facet_energetics_of_atoms",
    "mersmann_interfacial_energy_j_per_m2",
]


class StructureType(str, enum.Enum):
    """Cubic structure families that :func:`ase.build.bulk` builds directly.

    Values are ase's ``crystalstructure`` names.
    """

    ROCKSALT = "rocksalt"
    CESIUMCHLORIDE = "cesiumchloride"
    FLUORITE = "fluorite"
    ZINCBLENDE = "zincblende"
    DIAMOND = "diamond"
    FCC = "fcc"
    BCC = "bcc"


def build_atoms(structure: StructureType | str, symbols: str, lattice_constant_angstrom: float) -> ase.Atoms:
    """Conventional cubic cell of a structure.

    Args:
        structure: structure family (enum or ase name).
        symbols: chemical formula as ase expects it for the family, e.g. ``"NaCl"`` (rocksalt),
            ``"CaF2"`` (fluorite), ``"Si"`` (diamond). A stand-in element may replace a
            molecular ion (NH4+ in NH4Cl); only the geometry matters here.
        lattice_constant_angstrom: cubic lattice constant a.

    Returns:
        Periodic conventional cell with cell a*I (fcc: 4 atoms, rocksalt: 8, fluorite: 12,
        diamond and zincblende: 8, bcc and CsCl: 2).
    """
    if not lattice_constant_angstrom > 0:
        raise ValueError(f"lattice constant must be positive, got {lattice_constant_angstrom}")
    structure = StructureType(structure)
    return ase.build.bulk(symbols, structure.value, a=float(lattice_constant_angstrom), cubic=True)


@dataclass(frozen=True, eq=False)
class BondGraph:
    """Periodic atom graph: atoms are nodes, bonds within a cutoff are edges.

    Each bond appears twice, once per direction, as :func:`ase.neighborlist.neighbor_list`
    returns it; sums over edges count each bond twice.

    Attributes:
        symbols: chemical symbol per atom, length N.
        positions_angstrom: Cartesian positions, N x 3.
        cell_angstrom: periodic cell, rows are the cell vectors, 3 x 3.
        edge_index: source and target atom of each directed edge, 2 x E (int).
        bond_vector_angstrom: r_target - r_source including the periodic image, E x 3.
        bond_length_angstrom: |bond vector|, E.
        bond_energy_ev: energy of each bond (positive, the energy to break it), E.
        coordination: number of bonds per atom, N (int).
    """

    symbols: tuple[str, ...]
    positions_angstrom: np.ndarray
    cell_angstrom: np.ndarray
    edge_index: np.ndarray
    bond_vector_angstrom: np.ndarray
    bond_length_angstrom: np.ndarray
    bond_energy_ev: np.ndarray
    coordination: np.ndarray

    @property
    def num_atoms(self) -> int:
        return len(self.symbols)

    @property
    def num_bonds(self) -> int:
        """Undirected bonds in the cell (half the directed edges)."""
        return self.edge_index.shape[1] // 2


def _first_shell_distance_angstrom(atoms: ase.Atoms) -> float:
    # Every lattice translation is a neighbour of each atom, so the shortest cell vector bounds
    # the first-shell distance from above: searching out to it cannot miss the shell.
    search = float(np.min(np.linalg.norm(atoms.cell.array, axis=1))) * 1.001
    d = neighbor_list("d", atoms, search)
    return float(d.min())


def bond_graph(
    atoms: ase.Atoms,
    bond_energy_ev: float,
    cutoff_angstrom: float | None = None,
    repeat: int = 1,
) -> BondGraph:
    """Bond graph of a periodic crystal.

    Every atom pair closer than the cutoff is a bond of the same energy, the nearest-neighbour
    broken-bond model (longer-range Coulomb or dispersion terms are folded into that energy).

    Args:
        atoms: periodic cell, e.g. from :func:`build_atoms`.
        bond_energy_ev: energy of one bond, e.g. from :func:`bond_energy_ev`.
        cutoff_angstrom: bond cutoff; default ``FIRST_SHELL_SLACK`` x the first-neighbour
            distance, so exactly the first shell.
        repeat: supercell repetition along each cell vector (repeat**3 copies).

    Returns:
        The bond graph of ``atoms.repeat(repeat)``.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if repeat > 1:
        atoms = atoms.repeat(int(repeat))
    if cutoff_angstrom is None:
        cutoff_angstrom = FIRST_SHELL_SLACK * _first_shell_distance_angstrom(atoms)
    i, j, d, vec = neighbor_list("ijdD", atoms, float(cutoff_angstrom))
    n = len(atoms)
    return BondGraph(
        symbols=tuple(atoms.get_chemical_symbols()),
        positions_angstrom=atoms.get_positions(),
        cell_angstrom=atoms.cell.array.copy(),
        edge_index=np.stack([i, j]).astype(np.int64),
        bond_vector_angstrom=vec,
        bond_length_angstrom=d,
        bond_energy_ev=np.full(d.shape, float(bond_energy_ev)),
        coordination=np.bincount(i, minlength=n).astype(np.int64),
    )


def bond_energy_ev(lattice_energy_kj_per_mol: float, bonds_per_formula_unit: float) -> float:
    """Energy of one nearest-neighbour bond from the lattice energy.

    eps = |U_latt| / (N_A b), with b the bonds per formula unit (half the sum of the
    coordination numbers of its atoms). The simplification: the whole lattice energy, which for
    ionic crystals is mostly long-range Coulomb (Madelung) energy, is shared equally over
    first-neighbour bonds, so surface energies come out as ratios between faces rather than
    absolute values, and polar faces are not penalised.

    Args:
        lattice_energy_kj_per_mol: lattice (or cohesive) energy; the sign is ignored.
        bonds_per_formula_unit: b, e.g. 6 for rocksalt, 8 for fluorite, 2 for diamond.

    Returns:
        eps in eV (positive).
    """
    if not bonds_per_formula_unit > 0:
        raise ValueError(f"bonds_per_formula_unit must be positive, got {bonds_per_formula_unit}")
    return abs(float(lattice_energy_kj_per_mol)) / KJ_PER_MOL_PER_EV / float(bonds_per_formula_unit)


@dataclass(frozen=True)
class FacetEnergetics:
    """Broken-bond and Hartman-Perdok energetics of one facet family {hkl}.

    All energies are magnitudes (positive): the energy released when a slice attaches, or
    needed to cut. E_latt = E_slice + E_att per formula unit (Hartman & Perdok 1955).

    Attributes:
        hkl: Miller indices as given.
        d_spacing_angstrom: slice thickness d_hkl (Donnay-Harker: lattice centring and
            space-group extinctions; fcc-type {100} is a/2, diamond {100} a/4).
        area_per_formula_unit_angstrom2: area of the slice per formula unit, V_fu / d_hkl.
        broken_bonds_per_area_per_angstrom2: bonds cut by the best plane per area, at the cut
            position that cuts fewest (fluorite {111}: 4.62/a^2).
        surface_energy_j_per_m2: gamma = (n_cut / 2) eps / A, vacuum, 0 K.
        slice_energy_ev: |E_slice|, bonds inside one slice per formula unit.
        attachment_energy_ev: |E_att|, bonds from one slice to the crystal on one side per
            formula unit; R_hkl is proportional to it (Hartman & Bennema 1980).
        step_height_m: d_hkl in metres (the height of a growth step).
    """

    hkl: tuple[int, int, int]
    d_spacing_angstrom: float
    area_per_formula_unit_angstrom2: float
    broken_bonds_per_area_per_angstrom2: float
    surface_energy_j_per_m2: float
    slice_energy_ev: float
    attachment_energy_ev: float
    step_height_m: float


def _reduced_hkl(hkl: Sequence[int]) -> np.ndarray:
    h = np.asarray(hkl, dtype=np.int64).reshape(3)
    g = reduce(math.gcd, (abs(int(v)) for v in h))
    if g == 0:
        raise ValueError(f"hkl must not be (0, 0, 0), got {tuple(hkl)}")
    return h // g


def _cubic_cell_length_angstrom(cell: np.ndarray) -> float:
    a = float(cell[0, 0])
    if not np.allclose(cell, a * np.eye(3), atol=1e-8 * a):
        raise ValueError("facet scans need a cubic cell a*I (use build_atoms, cubic=True)")
    return a


def slice_thickness_angstrom(atoms: ase.Atoms, hkl: Sequence[int]) -> float:
    """Hartman-Perdok slice thickness d_hkl by the Donnay-Harker rule.

    d_hkl = a / (m |hkl|) for reduced hkl, where m is the smallest order whose reflection
    m(hkl) is not extinct. A reflection G is extinct when the structure factor of every species
    vanishes, S_s(G) = sum_{j in s} exp(2 pi i G . r_j) = 0; testing species separately keeps
    accidental cancellation between different atoms (rocksalt (111) with equal form factors)
    from passing for a symmetry extinction. This captures the fcc centring (rocksalt {100}:
    a/2 rather than a) and glide/screw extinctions (diamond {100}: a/4).

    Args:
        atoms: cubic cell a*I (conventional, possibly repeated).
        hkl: Miller indices (any multiple of the family).

    Returns:
        d_hkl in angstrom.
    """
    h = _reduced_hkl(hkl)
    frac = atoms.get_scaled_positions(wrap=True)
    symbols = np.asarray(atoms.get_chemical_symbols())
    a = _cubic_cell_length_angstrom(atoms.cell.array)
    phase_per_order = frac @ h  # G . r / 2pi for the first order, per atom
    for m in range(1, 4 * len(atoms) + 1):
        phase = np.exp(2j * np.pi * m * phase_per_order)
        if any(abs(phase[symbols == s].sum()) > 1e-6 * len(atoms) for s in np.unique(symbols)):
            return a / (m * float(np.linalg.norm(h)))
    raise RuntimeError(f"no allowed reflection along {tuple(hkl)}")  # unreachable for a crystal


@dataclass(frozen=True, eq=False)
class _CutProfile:
    """Bond counts of planes n.x = c at the cut positions where counts can change.

    Attributes:
        cuts_angstrom: probed cut positions c (C,), midpoints between bond-end projections.
        crossing_per_angstrom2: bonds the single plane c cuts, per area (C,).
        attachment_per_angstrom2: bonds from the slice [c, c + d) to everything above c + d,
            per area (C,); differs from the crossing count when bonds span several slices
            (fcc {110}, bcc {111}).
    """

    cuts_angstrom: np.ndarray
    crossing_per_angstrom2: np.ndarray
    attachment_per_angstrom2: np.ndarray


def _cut_profile(graph: BondGraph, hkl: Sequence[int], slice_angstrom: float | None = None) -> _CutProfile:
    """Bonds cut by planes of family {hkl}, scanned over the cut position.

    Bond r -> r + b projects onto the interval (lo, hi) of n.x. Translates of one bond of the
    cell (volume V) by the cell lattice put p / V copies on each unit area of the plane family
    c + k p, where p = a / |hkl| is the projection period of the cell lattice, so

        n_cut(c) = (p / V) sum_bonds #{k : lo < c + k p < hi}.

    For the slices [c + k d, c + (k+1) d) of thickness d, a bond joins the slice holding its
    lower end to a slice above when floor((hi - c)/d) > floor((lo - c)/d); d / V copies per
    area have their lower end in a given slice, so n_att(c) = (d / V) sum_bonds [jumps].
    Sums run over directed edges and are halved.
    """
    h = _reduced_hkl(hkl)
    a = _cubic_cell_length_angstrom(graph.cell_angstrom)
    n = h / np.linalg.norm(h)
    period = a / float(np.linalg.norm(h))  # projections of a*Z^3 onto n are (a/|h|) * Z
    d = period if slice_angstrom is None else float(slice_angstrom)
    volume = a**3
    start = graph.positions_angstrom[graph.edge_index[0]] @ n
    length = graph.bond_vector_angstrom @ n
    lo = np.minimum(start, start + length)
    hi = np.maximum(start, start + length)
    crossing = hi - lo > 1e-9 * a  # bonds lying in the plane are never cut
    lo, hi = lo[crossing], hi[crossing]
    if lo.size == 0:
        zero = np.zeros(1)
        return _CutProfile(zero, zero, zero)
    # Counts are constant between consecutive bond ends (mod p; d divides p); the minimum is
    # attained on one of those open intervals, so probing their midpoints is exact.
    ends = np.unique(np.round(np.mod(np.concatenate([lo, hi]), period), 10))
    nxt = np.append(ends[1:], ends[0] + period)
    cuts = 0.5 * (ends + nxt)
    rel_lo = lo[:, None] - cuts[None, :]
    rel_hi = hi[:, None] - cuts[None, :]
    n_cross = np.floor(rel_hi / period) - np.floor(rel_lo / period)
    jumps = np.floor(rel_hi / d) > np.floor(rel_lo / d)
    return _CutProfile(
        cuts_angstrom=cuts,
        crossing_per_angstrom2=0.5 * n_cross.sum(axis=0) * period / volume,
        attachment_per_angstrom2=0.5 * jumps.sum(axis=0) * d / volume,
    )


def broken_bond_density_per_angstrom2(graph: BondGraph, hkl: Sequence[int]) -> float:
    """Fewest bonds a plane of family {hkl} cuts, per unit area.

    The count depends on where the plane lies (fluorite {111}: 4.62/a^2 between the two F
    layers, 6.93/a^2 averaged over positions), so the cut position is scanned over one period
    and the minimum taken: that plane is the physical surface.

    Args:
        graph: bond graph of a cubic cell a*I.
        hkl: Miller indices.

    Returns:
        n_cut / A in 1/angstrom^2.
    """
    return float(_cut_profile(graph, hkl).crossing_per_angstrom2.min())


def _formula_units_per_cell(symbols: Sequence[str]) -> int:
    _, counts = np.unique(np.asarray(symbols), return_counts=True)
    return int(reduce(math.gcd, (int(c) for c in counts)))


def facet_energetics(
    structure: StructureType | str,
    symbols: str,
    lattice_constant_angstrom: float,
    lattice_energy_kj_per_mol: float,
    hkls: Sequence[tuple[int, int, int]] = ((1, 0, 0), (1, 1, 0), (1, 1, 1)),
) -> tuple[FacetEnergetics, ...]:
    """Surface, slice and attachment energies of facet families (broken-bond model).

    With b bonds per formula unit of energy eps = |U_latt| / (N_A b), n_cut bonds cut per area
    by the best plane, slice thickness d_hkl and formula-unit volume V_fu = a^3 / Z:

        gamma_hkl = n_cut eps / 2                       (two surfaces per cut)
        A_fu      = V_fu / d_hkl                        (slice area per formula unit)
        |E_att|   = n_att A_fu eps                      (bonds to one side, per formula unit)
        |E_slice| = b eps - |E_att|                     (so E_latt = E_slice + E_att)

    n_att counts bonds from one slice to every slice above it. It equals n_cut when every
    bond is shorter than d_hkl; bonds spanning several slices also cross the plane from
    slices further below, so n_att < n_cut there (fcc {110}: 5 vs 6 bonds per atom).

    The count uses the periodic bond graph of the conventional cell (bond vectors carry their
    images, so no supercell is needed). Rocksalt gives |E_att| = 2, 4, 3 eps for {100},
    {110}, {111} and gamma_110 / gamma_100 = sqrt(2).

    Args:
        structure: structure family.
        symbols: formula for :func:`build_atoms`.
        lattice_constant_angstrom: cubic lattice constant a.
        lattice_energy_kj_per_mol: lattice (cohesive) energy per formula unit; sign ignored.
        hkls: families to evaluate.

    Returns:
        One :class:`FacetEnergetics` per entry of ``hkls``, in order.

    References:
        Hartman & Perdok (1955); Donnay & Harker (1937).
    """
    return facet_energetics_of_atoms(build_atoms(structure, symbols, lattice_constant_angstrom),
                                     lattice_energy_kj_per_mol, hkls)


def facet_energetics_of_atoms(
    atoms: ase.Atoms,
    lattice_energy_kj_per_mol: float,
    hkls: Sequence[tuple[int, int, int]] = ((1, 0, 0), (1, 1, 0), (1, 1, 1)),
) -> tuple[FacetEnergetics, ...]:
    """:func:`facet_energetics` of a given cell, e.g. one read from a structure file.

    Args:
        atoms: periodic cubic cell a*I: the conventional cell (or a cubic supercell of it),
            as :func:`build_atoms` builds it or a CIF of a cubic space group reads.
        lattice_energy_kj_per_mol: lattice (cohesive) energy per formula unit; sign ignored.
        hkls: families to evaluate.

    Returns:
        One :class:`FacetEnergetics` per entry of ``hkls``, in order.
    """
    if not all(atoms.pbc) or abs(float(atoms.cell.volume)) < 1e-6:
        raise ValueError("facet energetics need a periodic 3-D cell")
    _cubic_cell_length_angstrom(atoms.cell.array)
    graph = bond_graph(atoms, bond_energy_ev=1.0)
    z = _formula_units_per_cell(graph.symbols)
    bonds_per_fu = graph.num_bonds / z
    eps_ev = bond_energy_ev(lattice_energy_kj_per_mol, bonds_per_fu)
    v_fu = abs(float(np.linalg.det(graph.cell_angstrom))) / z
    out = []
    for hkl in hkls:
        d = slice_thickness_angstrom(atoms, hkl)
        profile = _cut_profile(graph, hkl, slice_angstrom=d)
        n_cut = float(profile.crossing_per_angstrom2.min())
        a_fu = v_fu / d
        # Slice boundaries where E_att is least keep the strongest bonds inside the slice
        # (Hartman & Perdok's choice); for first-shell bonds shorter than d it is the same
        # plane that cuts fewest bonds.
        e_att = float(profile.attachment_per_angstrom2.min()) * a_fu * eps_ev
        out.append(
            FacetEnergetics(
                hkl=tuple(int(v) for v in hkl),
                d_spacing_angstrom=d,
                area_per_formula_unit_angstrom2=a_fu,
                broken_bonds_per_area_per_angstrom2=n_cut,
                surface_energy_j_per_m2=0.5 * n_cut * eps_ev * J_PER_EV / M2_PER_ANGSTROM2,
                slice_energy_ev=bonds_per_fu * eps_ev - e_att,
                attachment_energy_ev=e_att,
                step_height_m=d * M_PER_ANGSTROM,
            )
        )
    return tuple(out)


def mersmann_interfacial_energy_j_per_m2(
    crystal_molar_density_mol_per_m3: float,
    solubility_mol_per_m3: float,
    temperature_c: float,
) -> float:
    """Solid-liquid interfacial energy from Mersmann's correlation.

    gamma = 0.414 k T (c_c N_A)^(2/3) ln(c_c / c*)

    where c_c = rho_c / M is the molar density of the crystal and c* the solubility, both per
    volume (Mersmann 1990, J. Cryst. Growth 102, 841). KCl at 25 C gives about 0.02 J/m^2.

    Args:
        crystal_molar_density_mol_per_m3: c_c.
        solubility_mol_per_m3: c*, moles of solute per m^3 of solution.
        temperature_c: temperature.

    Returns:
        gamma in J/m^2 (positive while c* < c_c).
    """
    if not (crystal_molar_density_mol_per_m3 > 0 and solubility_mol_per_m3 > 0):
        raise ValueError("molar density and solubility must be positive")
    t_k = float(temperature_c) + 273.15
    return (
        0.414
        * K_BOLTZMANN_J_PER_K
        * t_k
        * (crystal_molar_density_mol_per_m3 * AVOGADRO_PER_MOL) ** (2.0 / 3.0)
        * math.log(crystal_molar_density_mol_per_m3 / solubility_mol_per_m3)
    )
