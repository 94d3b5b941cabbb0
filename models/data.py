"""Multi-scale training data for the MS-GNN: graphs, a SYNTHETIC generator, and splits.

One sample joins three levels (DESIGN.md, "The multi-scale graph and the MS-GNN"):

- level 1, atoms: a periodic supercell of one material in one defect state, bonds as edges;
- level 2, clusters: a 3 x 3 x 3 voxel partition of the supercell (atom -> cluster
  membership, cluster adjacency), with defect descriptors per cluster;
- level 3, facets: the faces of the crystal's observed habit, facet adjacency, and
  cluster -> facet edges from each outer cluster to the faces it lies under;

plus global conditions (temperature, driving force, impurity, stirring), graph-level targets
(G, log10 B, lambda) and a node-level target (growth rate of each face).

Levels 1-2 depend only on the material and its defect state, so they are stored once per
:class:`MaterialGraph` and shared by that material's samples (:class:`Query`);
:meth:`MultiScaleDataset.heterodata` joins them into a ``torch_geometric.data.HeteroData``.

Synthetic ground truth
----------------------
The data of :func:`generate` are SYNTHETIC: labels come from the plant_sim physics chain
(broken-bond / Hartman-Perdok facet energetics, BCF + birth-and-spread growth, Kubota-Mullin
poisoning, kinetic Wulff habit, CNT + secondary nucleation) with nanoscale modifiers added
here. For face j of family f of material m in defect state v, at temperature T, driving force
sigma = ln S, impurity c (ppm) and stirring N (rpm):

- bond energy eps_m = U_latt / (N_A b) (b bonds per formula unit); material rate scale
  kappa_m = exp(-0.3 (eps_m / eV - 1)) and growth activation E_g = min(20 + 5 eps_m / eV, 60)
  kJ/mol (stronger bonds, slower and more activated surface integration: assumptions of this
  generator, not literature values);
- step constants from the energies as in the plant (``facet_kinetics_from_energies``):
  C_f = kappa_m C_0 |E_att,f| / max|E_att|, C_bs,f likewise, K_bs,f = pi gamma_f^2 h_f Omega /
  (kT)^2, with gamma the Mersmann solid-liquid energy for solution systems and 0.15 x the
  mean broken-bond surface energy otherwise (a Turnbull-type fraction for melt growth);
- local defect state under face j: d_j, v_j, p_j = sum_k w_kj (dislocation density, vacancy
  fraction, planar defect) of the clusters k feeding face j, w_kj = (n_j . c_k)^2 normalised
  over the face's clusters (c_k the unit direction of cluster k from the centre);
- R_int,j = A(T) f_KM,j (1 - 4 v_j) [C_f (1 + 3 d_j) P_j sigma^2/sigma_c tanh(sigma_c/sigma)
  + C_bs,f sigma^(5/6) exp(-K_bs,f / sigma)], A(T) = exp(-E_g/R (1/T - 1/298.15 K));
  P_j = 1 + 2 p_j on {111} faces of close-packed structures (fcc, diamond, zincblende: stacking
  faults as re-entrant step sources), 1 + 0.7 p_j on every face otherwise (grain boundaries);
- Kubota-Mullin: f_KM,j = max(1 - theta_j, 0.02), theta_j = K_j c / (1 + K_j c), with
  K_j = 0.02 ppm^-1 (n_cut,f / mean n_cut)^3 a_v,f: rough faces adsorb more; a_v,f is 1 except
  for one family per defect state that adsorbs 2-6 x more (facet-specific adsorption);
- mass transfer in series: R_j = R_int,j k_m sigma / (R_int,j + k_m sigma),
  k_m = 2e-6 m/s (N / 300 rpm)^0.5;
- habit: kinetic Wulff of the per-face rates (``kinetic_wulff_faces``) -> lambda (largest
  Feret diameter at unit volume-equivalent size) and G = (2/pi) sum_j a_j R_j;
- nucleation: B = B_1 + B_2 with CNT B_1 (heterogeneous factor 0.2, prefactor 1e20 per kg s)
  and B_2 = 2e7 sigma^2 M_T (N / 300 rpm)^2 (1 + 5 mean vacancy fraction), M_T = 0.05 kg/kg;
- observed habit: the facet graph is the habit grown at a reference condition (25 C,
  sigma = 0.02, no impurity, 300 rpm), with its face area fractions and observed face rates
  (5 % measurement noise); the targets are at the sample's own condition;
- label noise: G, B and face rates times exp(label_noise z), lambda times (1 + label_noise z).

Splits (:func:`split`): held-out materials, a held-out structure family, and held-out
conditions (the samples with the highest driving force: extrapolation in sigma).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from plant_sim.kinetics import (
    FacetEnergyInputs,
    GrowthCalibration,
    facet_kinetics_from_energies,
    solution_molarity_mol_per_m3,
)
from plant_sim.lattice import FIRST_SHELL_SLACK, bond_energy_ev, build_atoms, facet_energetics, mersmann_interfacial_energy_j_per_m2
from plant_sim.materials import MATERIALS, STRUCTURES, Material
from models.settings import SPLITS, DataSettings
from plant_sim.morphology import all_faces, kinetic_wulff_faces

__all__ = [
    "ATOM_FEATURES",
    "CLUSTER_FEATURES",
    "CONDITION_FEATURES",
    "FACET_FEATURES",
    "FAMILIES",
    "GRAPH_TARGETS",
    "DataSettings",
    "MaterialGraph",
    "MultiScaleDataset",
    "Query",
    "Split",
    "generate",
    "split",
]

#: Structure families (one-hot order of the flat descriptors).
FAMILIES: tuple[str, ...] = STRUCTURES
HKLS: tuple[tuple[int, int, int], ...] = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
ATOM_FEATURES = ("z_over_100", "mass_over_200", "covalent_radius_angstrom_over_2", "coordination_over_12",
                 "bond_energy_sum_ev_over_20", "displacement_angstrom", "frac_x", "frac_y", "frac_z")
BOND_FEATURES = ("length_angstrom_over_4", "bond_energy_ev_over_5")
CLUSTER_FEATURES = ("atoms_rel", "first_species_fraction", "vacancy_fraction_x10", "dislocation_density_rel",
                    "planar_defect", "mean_bond_energy_ev_over_20", "offset_x", "offset_y", "offset_z")
CROSS_FEATURES = ("alignment", "offset_norm")
FACET_FEATURES = ("normal_x", "normal_y", "normal_z", "sorted_abs_normal_0", "sorted_abs_normal_1",
                  "sorted_abs_normal_2", "area_fraction", "log10_observed_rate_um_per_min",
                  "surface_energy_j_per_m2", "impurity_langmuir_per_ppm_x10")
CONDITION_FEATURES = ("temperature_rel", "driving_force_rel", "impurity_log", "stirring_rel")
GRAPH_TARGETS = ("G", "log10_B", "lambda")
M_PER_S_TO_UM_PER_MIN = 6e7
REFERENCE_CONDITION = (25.0, 0.02, 0.0, 300.0)  # T C, sigma, impurity ppm, stirring rpm

_CLOSE_PACKED = frozenset({"fcc", "diamond", "zincblende"})
_DISLOCATION_LOG10_RANGE = (12.0, 15.0)  # rel density 0..1 <-> 1e12..1e15 m^-2


# ----------------------------------------------------------------------------- containers
@dataclass(frozen=True, eq=False)
class MaterialGraph:
    """Levels 1-2 of one material in one defect state (shared by its samples).

    Attributes:
        key: unique name, e.g. ``"Cu#3"``.
        material: material name.
        family: structure family.
        atom_x: atom features, (N_atoms, len(ATOM_FEATURES)).
        bond_index: directed bonds (both directions), (2, E_bonds) long.
        bond_attr: bond features, (E_bonds, len(BOND_FEATURES)).
        atom_cluster: cluster of each atom, (N_atoms,) long.
        cluster_x: cluster features, (N_clusters, len(CLUSTER_FEATURES)).
        cluster_index: cluster adjacency (both directions), (2, E_clusters) long.
        cluster_direction: unit direction of each cluster from the centre (zero for the
            centre cluster), (N_clusters, 3).
        descriptors: flat material descriptors for the baselines, (len(FLAT_MATERIAL),).
        atoms: the ase ``Atoms`` it was built from (kept for export; not a model input).
    """

    key: str
    material: str
    family: str
    atom_x: torch.Tensor
    bond_index: torch.Tensor
    bond_attr: torch.Tensor
    atom_cluster: torch.Tensor
    cluster_x: torch.Tensor
    cluster_index: torch.Tensor
    cluster_direction: torch.Tensor
    descriptors: torch.Tensor
    atoms: object = None


@dataclass(frozen=True, eq=False)
class Query:
    """Level 3, conditions and targets of one sample.

    Attributes:
        material_index: index into :attr:`MultiScaleDataset.materials`.
        facet_x: facet features, (N_facets, len(FACET_FEATURES)).
        facet_index: facet adjacency (both directions), (2, E_facets) long.
        cross_index: cluster -> facet edges (cluster index within the material graph, facet
            index), (2, E_cross) long.
        cross_attr: cross-scale edge features, (E_cross, len(CROSS_FEATURES)).
        conditions: normalised conditions, (len(CONDITION_FEATURES),).
        raw_conditions: temperature C, sigma, impurity ppm, stirring rpm, (4,).
        y: graph targets G (um/min), log10 B (B per kg per s), lambda, (3,).
        facet_y: growth rate of each face (um/min), (N_facets,).
    """

    material_index: int
    facet_x: torch.Tensor
    facet_index: torch.Tensor
    cross_index: torch.Tensor
    cross_attr: torch.Tensor
    conditions: torch.Tensor
    raw_conditions: torch.Tensor
    y: torch.Tensor
    facet_y: torch.Tensor


@dataclass(eq=False)
class MultiScaleDataset:
    """Material graphs and the samples that use them.

    Attributes:
        materials: one entry per material in a defect state.
        queries: the samples.
        synthetic: True for data from :func:`generate` (labels from the physics chain).
        description: provenance, one line.
    """

    materials: list[MaterialGraph]
    queries: list[Query]
    synthetic: bool = False
    description: str = ""

    def __len__(self) -> int:
        return len(self.queries)

    def material_of(self, i: int) -> MaterialGraph:
        return self.materials[self.queries[i].material_index]

    def subset(self, indices: Sequence[int]) -> "MultiScaleDataset":
        """The samples ``indices`` (materials are shared, not copied)."""
        return MultiScaleDataset(self.materials, [self.queries[i] for i in indices], self.synthetic, self.description)

    def heterodata(self, i: int):
        """Sample ``i`` as a ``torch_geometric.data.HeteroData`` with all three levels."""
        from torch_geometric.data import HeteroData

        q = self.queries[i]
        m = self.materials[q.material_index]
        data = HeteroData()
        data["atom"].x = m.atom_x
        data["cluster"].x = m.cluster_x
        data["facet"].x = q.facet_x
        data["facet"].y = q.facet_y
        data["atom", "bond", "atom"].edge_index = m.bond_index
        data["atom", "bond", "atom"].edge_attr = m.bond_attr
        data["atom", "in", "cluster"].edge_index = torch.stack([torch.arange(m.atom_x.shape[0]), m.atom_cluster])
        data["cluster", "near", "cluster"].edge_index = m.cluster_index
        data["cluster", "feeds", "facet"].edge_index = q.cross_index
        data["cluster", "feeds", "facet"].edge_attr = q.cross_attr
        data["facet", "adjacent", "facet"].edge_index = q.facet_index
        data.conditions = q.conditions.unsqueeze(0)
        data.y = q.y.unsqueeze(0)
        data.material = m.material
        data.family = m.family
        return data

    @property
    def material_names(self) -> np.ndarray:
        return np.array([self.materials[q.material_index].material for q in self.queries])

    @property
    def families(self) -> np.ndarray:
        return np.array([self.materials[q.material_index].family for q in self.queries])

    @property
    def targets(self) -> np.ndarray:
        """Graph targets, (N, 3)."""
        return torch.stack([q.y for q in self.queries]).numpy()

    @property
    def raw_conditions(self) -> np.ndarray:
        """(N, 4): temperature C, sigma, impurity ppm, stirring rpm."""
        return torch.stack([q.raw_conditions for q in self.queries]).numpy()


# ----------------------------------------------------------------------------- shared geometry
def normalise_conditions(temperature_c: float, driving_force: float, impurity_ppm: float, stirring_rpm: float) -> list[float]:
    """Model inputs from raw conditions (the same for generated and loaded data)."""
    return [(temperature_c - 40.0) / 30.0, driving_force / 0.05, math.log10(1.0 + impurity_ppm) / 2.3,
            stirring_rpm / 400.0]


def cluster_grid(frac_positions: np.ndarray, per_axis: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel clusters of fractional positions.

    Returns:
        (cluster per atom (N,), unit direction of each cluster from the centre (C, 3),
        adjacency of face-sharing voxels (2, E)).
    """
    # A small offset keeps atoms that sit exactly on a voxel boundary on one side (NOTES).
    idx = np.clip(np.floor((frac_positions % 1.0) * per_axis + 1e-6).astype(int), 0, per_axis - 1)
    cluster = idx[:, 0] * per_axis**2 + idx[:, 1] * per_axis + idx[:, 2]
    grid = np.stack(np.meshgrid(*[np.arange(per_axis)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offset = grid - (per_axis - 1) / 2.0
    norm = np.linalg.norm(offset, axis=1, keepdims=True)
    direction = np.divide(offset, norm, out=np.zeros_like(offset, dtype=float), where=norm > 0)
    diff = np.abs(grid[:, None, :] - grid[None, :, :]).sum(-1)
    adjacency = np.stack(np.nonzero(diff == 1))
    return cluster, direction, adjacency


def cross_edges(cluster_direction: np.ndarray, facet_normals: np.ndarray, min_alignment: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Cluster -> facet edges: each outer cluster feeds the faces it lies under.

    Args:
        cluster_direction: (C, 3) unit directions (zero rows have no edges).
        facet_normals: (F, 3) outward unit normals.

    Returns:
        (edge index (2, E) as (cluster, facet), edge features (E, 2): alignment n . c and
        the cluster's offset norm (1 for outer clusters)).
    """
    alignment = cluster_direction @ facet_normals.T  # (C, F)
    k, j = np.nonzero(alignment >= min_alignment)
    attr = np.stack([alignment[k, j], np.linalg.norm(cluster_direction[k], axis=1)], axis=1)
    return np.stack([k, j]), attr


def local_average(values: np.ndarray, cross: np.ndarray, alignment: np.ndarray, n_facets: int) -> np.ndarray:
    """Per-face average of cluster values over its cross edges, weights alignment^2."""
    w = alignment**2
    num = np.bincount(cross[1], weights=w * values[cross[0]], minlength=n_facets)
    den = np.bincount(cross[1], weights=w, minlength=n_facets)
    return np.divide(num, den, out=np.zeros(n_facets), where=den > 0)


# ----------------------------------------------------------------------------- ground truth
@dataclass(frozen=True)
class _MaterialPhysics:
    """What the physics chain gives for one material (independent of defects)."""

    material: Material
    eps_ev: float
    bcf: np.ndarray  # C_f per family, m/s
    bs: np.ndarray  # C_bs,f
    bs_barrier: np.ndarray  # K_bs,f at 25 C
    sigma_c: float
    activation_j_per_mol: float
    surface_energy: np.ndarray  # broken-bond gamma per family, J/m2
    langmuir: np.ndarray  # structural K_f per ppm (before the defect state's multiplier)
    kinetics: object  # FacetKinetics (nucleation)


@functools.lru_cache(maxsize=None)
def _physics(name: str) -> _MaterialPhysics:
    m = MATERIALS[name]
    facets = facet_energetics(m.structure, m.ase_symbols, m.lattice_constant_angstrom, m.lattice_energy_kj_per_mol, HKLS)
    atoms = build_atoms(m.structure, m.ase_symbols, m.lattice_constant_angstrom)
    from plant_sim.lattice import bond_graph

    graph = bond_graph(atoms, 1.0)
    bonds_per_fu = graph.num_bonds / m.formula_units_per_cell
    eps = bond_energy_ev(m.lattice_energy_kj_per_mol, bonds_per_fu)
    surface = np.array([f.surface_energy_j_per_m2 for f in facets])
    if m.solubility is not None:
        c_star = float(m.solubility.g_per_kg(25.0))
        gamma = mersmann_interfacial_energy_j_per_m2(
            m.crystal_molar_density_mol_per_m3,
            solution_molarity_mol_per_m3(c_star, m.molar_mass_g_per_mol, m.density_kg_per_m3), 25.0)
    else:
        gamma = 0.15 * float(surface.mean())
    kappa = math.exp(-0.3 * (eps - 1.0))
    base = GrowthCalibration()
    calibration = GrowthCalibration(bcf_rate_m_per_s=base.bcf_rate_m_per_s * kappa,
                                    birth_spread_rate_m_per_s=base.birth_spread_rate_m_per_s * kappa)
    inputs = [FacetEnergyInputs(hkl=f.hkl, attachment_energy_ev=f.attachment_energy_ev,
                                interfacial_energy_j_per_m2=gamma * float(e / surface.mean()),
                                step_height_m=f.step_height_m) for f, e in zip(facets, surface)]
    kin = facet_kinetics_from_energies(inputs, gamma, m.molecular_volume_m3, calibration,
                                       secondary_rate_per_kg_s=2e7)
    n_cut = np.array([f.broken_bonds_per_area_per_angstrom2 for f in facets])
    return _MaterialPhysics(
        material=m,
        eps_ev=eps,
        bcf=np.array([f.bcf_rate_m_per_s for f in kin.families]),
        bs=np.array([f.birth_spread_rate_m_per_s for f in kin.families]),
        bs_barrier=np.array([f.birth_spread_barrier for f in kin.families]),
        sigma_c=base.critical_supersaturation,
        activation_j_per_mol=min(20.0 + 5.0 * eps, 60.0) * 1e3,
        surface_energy=surface,
        langmuir=0.02 * (n_cut / n_cut.mean()) ** 3,
        kinetics=kin,
    )


def facet_family_properties(material: str) -> dict[tuple[int, int, int], tuple[float, float]]:
    """Per facet family of a plant_sim material: (broken-bond surface energy J/m^2, structural
    impurity Langmuir constant per ppm), the facet features that do not come from imaging."""
    phys = _physics(material)
    return {hkl: (float(e), float(k)) for hkl, e, k in zip(HKLS, phys.surface_energy, phys.langmuir)}


def face_rates_m_per_s(
    phys: _MaterialPhysics,
    face_family: np.ndarray,
    local: dict[str, np.ndarray],
    langmuir: np.ndarray,
    temperature_c: float,
    sigma: float,
    impurity_ppm: float,
    stirring_rpm: float,
) -> np.ndarray:
    """Ground-truth growth rate of every face (module docstring), shape (F,)."""
    t_k = temperature_c + 273.15
    arrhenius = math.exp(-phys.activation_j_per_mol / 8.314462618 * (1.0 / t_k - 1.0 / 298.15))
    f = face_family
    barrier = phys.bs_barrier[f] * (298.15 / t_k) ** 2  # K_bs scales with 1/(kT)^2
    sc = phys.sigma_c
    planar = local["planar"]
    if phys.material.structure in _CLOSE_PACKED:
        source = 1.0 + 2.0 * planar * (f == 2)
    else:
        source = 1.0 + 0.7 * planar
    spiral = phys.bcf[f] * (1.0 + 3.0 * local["dislocation"]) * source * sigma**2 / sc * math.tanh(sc / sigma)
    spread = phys.bs[f] * sigma ** (5.0 / 6.0) * np.exp(-barrier / sigma)
    k = langmuir[f]
    theta = k * impurity_ppm / (1.0 + k * impurity_ppm)
    poison = np.maximum(1.0 - theta, 0.02)
    r_int = arrhenius * poison * (1.0 - 4.0 * local["vacancy"]) * (spiral + spread)
    k_m = 2e-6 * (stirring_rpm / 300.0) ** 0.5
    return r_int * k_m * sigma / (r_int + k_m * sigma)


def nucleation_per_kg_s(phys: _MaterialPhysics, temperature_c: float, sigma: float, stirring_rpm: float,
                        mean_vacancy: float) -> float:
    """B = B_1 (CNT) + B_2 (secondary, stirring and surface defects), per kg solvent per s."""
    kin = phys.kinetics
    b1 = float(kin.primary_nucleation_per_kg_s(temperature_c, sigma))
    b2 = float(kin.secondary_nucleation_per_kg_s(temperature_c, sigma, 0.05))
    return b1 + b2 * (stirring_rpm / 300.0) ** 2 * (1.0 + 5.0 * mean_vacancy)


# ----------------------------------------------------------------------------- generation
def supercell_repeats(atoms_per_cell: int, max_atoms: int) -> int:
    """Largest n with atoms_per_cell n^3 <= max_atoms (at least 2)."""
    n = 2
    while atoms_per_cell * (n + 1) ** 3 <= max_atoms:
        n += 1
    return n


def _defect_state(rng: np.random.Generator, n_clusters: int, pristine: bool) -> dict[str, np.ndarray]:
    state = {k: np.zeros(n_clusters) for k in ("dislocation", "vacancy", "planar")}
    state["adsorption"] = np.ones(len(HKLS))
    if pristine:
        return state
    if rng.random() < 0.6:
        chosen = rng.choice(n_clusters, size=rng.integers(1, 5), replace=False)
        state["dislocation"][chosen] = rng.uniform(0.2, 1.0, chosen.size)
    if rng.random() < 0.6:
        chosen = rng.choice(n_clusters, size=rng.integers(1, 5), replace=False)
        state["vacancy"][chosen] = rng.uniform(0.02, 0.12, chosen.size)
    if rng.random() < 0.5:
        chosen = rng.choice(n_clusters, size=rng.integers(1, 4), replace=False)
        state["planar"][chosen] = 1.0
    if rng.random() < 0.5:
        state["adsorption"][rng.integers(len(HKLS))] = rng.uniform(2.0, 6.0)
    return state


def material_graph_from_atoms(
    key: str,
    material: str,
    family: str,
    atoms,
    lattice_energy_kj_per_mol: float,
    formula_units: float,
    density_kg_per_m3: float,
    defects: dict[str, np.ndarray],
    displacement_angstrom: np.ndarray | None = None,
    assignment: np.ndarray | None = None,
) -> MaterialGraph:
    """Levels 1-2 from an ase ``Atoms`` supercell and per-cluster defect descriptors.

    The same function builds generated and loaded materials, so both get the same features.

    Args:
        key: unique name.
        material: material name.
        family: structure family.
        atoms: periodic supercell (vacancies already removed).
        lattice_energy_kj_per_mol: lattice (cohesive) energy per formula unit.
        formula_units: formula units in ``atoms`` had it no vacancies.
        density_kg_per_m3: crystal density.
        defects: per cluster ``dislocation`` (0..1), ``vacancy`` (fraction), ``planar`` (0/1).
        displacement_angstrom: per-atom displacement from the ideal site (default 0).
        assignment: cluster of each atom; default the 3 x 3 x 3 voxel grid. With an explicit
            assignment, cluster directions come from the cluster centroids and clusters are
            adjacent when a bond joins them.
    """
    import ase.data
    from ase.neighborlist import neighbor_list

    n = len(atoms)
    if n == 0:
        raise ValueError(f"{key}: the structure has no atoms")
    cell_lengths = np.linalg.norm(atoms.cell.array, axis=1)
    # First-shell bonds, as plant_sim.lattice counts them; the shell is measured as the median
    # nearest-neighbour distance, so a few displaced atoms do not shrink it.
    i_all, d_all = neighbor_list("id", atoms, float(cell_lengths.min()) / 3.0)
    if d_all.size == 0:
        raise ValueError(f"{key}: no neighbours within a third of the cell; is the cell periodic and dense?")
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, i_all, d_all)
    cutoff = FIRST_SHELL_SLACK * float(np.median(nearest[np.isfinite(nearest)]))
    i, j, d = neighbor_list("ijd", atoms, cutoff)
    coordination = np.bincount(i, minlength=n)
    bonds_per_fu = max(len(i) / 2.0 / max(formula_units, 1e-9), 1e-9)
    eps = bond_energy_ev(lattice_energy_kj_per_mol, bonds_per_fu)
    z = atoms.get_atomic_numbers()
    frac = atoms.get_scaled_positions(wrap=True)
    disp = np.zeros(n) if displacement_angstrom is None else np.asarray(displacement_angstrom, dtype=float)
    atom_x = np.stack([
        z / 100.0,
        atoms.get_masses() / 200.0,
        ase.data.covalent_radii[z] / 2.0,
        coordination / 12.0,
        coordination * eps / 20.0,
        disp,
        frac[:, 0], frac[:, 1], frac[:, 2],
    ], axis=1)
    if assignment is None:
        cluster, direction, adjacency = cluster_grid(frac)
        offsets = cluster_grid_offsets()
    else:
        cluster = np.asarray(assignment, dtype=int).reshape(-1)
        if cluster.shape != (n,) or cluster.min() < 0:
            raise ValueError(f"{key}: the cluster assignment needs one non-negative cluster per atom ({n})")
        n_c = int(cluster.max()) + 1
        counts_c = np.bincount(cluster, minlength=n_c)
        if (counts_c == 0).any():
            raise ValueError(f"{key}: clusters {np.flatnonzero(counts_c == 0).tolist()} have no atoms")
        centroid = np.stack([np.bincount(cluster, weights=frac[:, k], minlength=n_c) for k in range(3)], 1)
        offsets = (centroid / counts_c[:, None] - 0.5) * 3.0  # voxel units, as the grid's
        norm = np.linalg.norm(offsets, axis=1, keepdims=True)
        direction = np.divide(offsets, norm, out=np.zeros_like(offsets), where=norm > 0.2)
        pairs = np.stack([cluster[i], cluster[j]])
        pairs = np.unique(pairs[:, pairs[0] != pairs[1]], axis=1)
        adjacency = pairs
    n_clusters = direction.shape[0]
    counts = np.bincount(cluster, minlength=n_clusters).astype(float)
    first = z == z[0]
    first_fraction = np.divide(np.bincount(cluster, weights=first, minlength=n_clusters), counts,
                               out=np.zeros(n_clusters), where=counts > 0)
    bond_energy = np.bincount(cluster, weights=coordination * eps, minlength=n_clusters)
    mean_bond = np.divide(bond_energy, counts, out=np.zeros(n_clusters), where=counts > 0)
    for name in ("dislocation", "vacancy", "planar"):
        if np.asarray(defects[name]).shape != (n_clusters,):
            raise ValueError(f"{key}: defects[{name!r}] needs {n_clusters} values (one per cluster)")
    cluster_x = np.stack([
        counts / max(counts.mean(), 1e-9),
        first_fraction,
        np.asarray(defects["vacancy"], dtype=float) * 10.0,
        np.asarray(defects["dislocation"], dtype=float),
        np.asarray(defects["planar"], dtype=float),
        mean_bond / 20.0,
        offsets[:, 0], offsets[:, 1], offsets[:, 2],
    ], axis=1)
    species = sorted(set(z.tolist()))
    volume_a3 = abs(float(np.linalg.det(atoms.cell.array)))
    family_onehot = [1.0 if family == f else 0.0 for f in FAMILIES]
    descriptors = np.array([
        float(z.mean()), float(atoms.get_masses().mean()), float(ase.data.covalent_radii[z].mean()),
        float(len(species)), float(np.cbrt(volume_a3 / max(formula_units, 1e-9))), density_kg_per_m3 / 1000.0,
        float(coordination.mean()), lattice_energy_kj_per_mol / 1000.0, eps,
        float(np.mean(defects["vacancy"])) * 10.0, float(np.mean(defects["dislocation"])),
        float(np.mean(defects["planar"])), *family_onehot,
    ])
    return MaterialGraph(
        key=key, material=material, family=family,
        atom_x=torch.tensor(atom_x, dtype=torch.float32),
        bond_index=torch.tensor(np.stack([i, j]), dtype=torch.long),
        bond_attr=torch.tensor(np.stack([d / 4.0, np.full(d.shape, eps / 5.0)], axis=1), dtype=torch.float32),
        atom_cluster=torch.tensor(cluster, dtype=torch.long),
        cluster_x=torch.tensor(cluster_x, dtype=torch.float32),
        cluster_index=torch.tensor(adjacency, dtype=torch.long),
        cluster_direction=torch.tensor(direction, dtype=torch.float32),
        descriptors=torch.tensor(descriptors, dtype=torch.float32),
        atoms=atoms,
    )


#: Names of :attr:`MaterialGraph.descriptors` (flat descriptors of the baselines).
FLAT_MATERIAL = ("mean_z", "mean_mass", "mean_covalent_radius", "n_species", "volume_per_fu_cbrt_angstrom",
                 "density_g_per_cm3", "mean_coordination", "lattice_energy_mj_per_mol", "bond_energy_ev",
                 "mean_vacancy_x10", "mean_dislocation_rel", "planar_defect_fraction",
                 *(f"family_{f}" for f in FAMILIES))


def cluster_grid_offsets(per_axis: int = 3) -> np.ndarray:
    """Voxel offsets from the centre in voxel units, (per_axis^3, 3)."""
    grid = np.stack(np.meshgrid(*[np.arange(per_axis)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return grid - (per_axis - 1) / 2.0


def facet_features(normals: np.ndarray, area_fractions: np.ndarray, observed_um_per_min: np.ndarray,
                   surface_energy: np.ndarray, langmuir_per_ppm: np.ndarray) -> np.ndarray:
    """Facet node features, (F, len(FACET_FEATURES)); rates enter as log10 (they span decades)."""
    sorted_abs = -np.sort(-np.abs(normals), axis=1)
    log_rate = np.log10(np.maximum(np.asarray(observed_um_per_min, dtype=float), 1e-4))
    return np.concatenate([
        normals, sorted_abs, area_fractions[:, None], log_rate[:, None],
        surface_energy[:, None], 10.0 * langmuir_per_ppm[:, None],
    ], axis=1)


def _generate_material(name: str, variant: int, settings: DataSettings, progress=None):
    phys = _physics(name)
    m = phys.material
    rng = np.random.default_rng([settings.seed, list(MATERIALS).index(name), variant])
    cell = build_atoms(m.structure, m.ase_symbols, m.lattice_constant_angstrom)
    reps = supercell_repeats(len(cell), settings.max_atoms)
    atoms = cell.repeat(reps)
    frac = atoms.get_scaled_positions(wrap=True)
    cluster, direction, _ = cluster_grid(frac)
    n_clusters = direction.shape[0]
    defects = _defect_state(rng, n_clusters, pristine=variant == 0)
    # Atomic picture of the defects: strain around dislocations, a coherent shift in planar
    # defects, and vacancies removed.
    disp = np.zeros((len(atoms), 3))
    a = m.lattice_constant_angstrom
    strained = defects["dislocation"][cluster]
    disp += rng.normal(size=disp.shape) * (0.03 * a * strained)[:, None]
    shift = np.array([1.0, 1.0, -2.0]) / math.sqrt(6.0) * 0.05 * a
    disp += defects["planar"][cluster][:, None] * shift
    atoms.positions += disp
    keep = rng.random(len(atoms)) >= defects["vacancy"][cluster]
    atoms = atoms[keep]
    displacement = np.linalg.norm(disp[keep], axis=1)
    atoms.new_array("displacement_angstrom", displacement)  # travels with the structure on export
    graph = material_graph_from_atoms(
        f"{name}#{variant}", name, m.structure, atoms, m.lattice_energy_kj_per_mol,
        m.formula_units_per_cell * reps**3, m.density_kg_per_m3, defects, displacement,
    )
    langmuir = phys.langmuir * defects["adsorption"]

    normals_all, family_all = all_faces(HKLS)
    cross_all, cross_attr_all = cross_edges(direction, normals_all)
    local = {k: local_average(defects[k], cross_all, cross_attr_all[:, 0], len(family_all))
             for k in ("dislocation", "vacancy", "planar")}

    def rates(t_c, s, imp, rpm):
        return face_rates_m_per_s(phys, family_all, local, langmuir, t_c, s, imp, rpm)

    # The observed habit: grown at the reference condition.
    ref_rates = rates(*REFERENCE_CONDITION)
    ref_habit = kinetic_wulff_faces(HKLS, ref_rates)
    present = ref_habit.face_index
    observed = ref_rates[present] * M_PER_S_TO_UM_PER_MIN * np.exp(0.05 * rng.standard_normal(present.size))
    fx = facet_features(normals_all[present], ref_habit.area_fractions, observed,
                        phys.surface_energy[family_all[present]], langmuir[family_all[present]])
    cross_index, cross_attr = cross_edges(direction, normals_all[present])
    facet_index = torch.tensor(ref_habit.adjacency, dtype=torch.long)
    mean_vacancy = float(np.mean(defects["vacancy"]))

    queries = []
    lo_t, hi_t = settings.temperature_range_c
    lo_s, hi_s = settings.driving_force_range
    lo_n, hi_n = settings.stirring_range_rpm
    noise = settings.label_noise
    for _ in range(settings.conditions_per_variant):
        t_c = rng.uniform(lo_t, hi_t)
        sigma = math.exp(rng.uniform(math.log(lo_s), math.log(hi_s)))
        imp = 0.0 if rng.random() < settings.impurity_free_fraction else math.exp(
            rng.uniform(0.0, math.log(settings.impurity_max_ppm)))
        rpm = rng.uniform(lo_n, hi_n)
        r = rates(t_c, sigma, imp, rpm)
        habit = kinetic_wulff_faces(HKLS, r)
        g = (2.0 / math.pi) * float(np.sum(habit.face_areas * r[habit.face_index]))
        b = nucleation_per_kg_s(phys, t_c, sigma, rpm, mean_vacancy)
        z = rng.standard_normal(3 + present.size)
        y = [g * M_PER_S_TO_UM_PER_MIN * math.exp(noise * z[0]),
             math.log10(b) + noise * z[1] / math.log(10.0),
             habit.lambda_length * (1.0 + noise * z[2])]
        facet_y = r[present] * M_PER_S_TO_UM_PER_MIN * np.exp(noise * z[3:])
        queries.append((fx, facet_index, cross_index, cross_attr, (t_c, sigma, imp, rpm), y, facet_y))
    return graph, queries


def generate(settings: DataSettings = DataSettings(), progress: bool = False) -> MultiScaleDataset:
    """SYNTHETIC multi-scale dataset whose labels come from the physics chain (module docstring).

    Deterministic for ``settings.seed``: each (material, defect state) draws from its own stream.
    """
    names = list(settings.materials) or list(MATERIALS)
    jobs = [(n, v) for n in names for v in range(settings.variants_per_material)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="material state", desc="generating", leave=False)
    materials: list[MaterialGraph] = []
    queries: list[Query] = []
    for name, variant in jobs:
        graph, rows = _generate_material(name, variant, settings)
        index = len(materials)
        materials.append(graph)
        for fx, facet_index, cross_index, cross_attr, raw, y, facet_y in rows:
            queries.append(Query(
                material_index=index,
                facet_x=torch.tensor(fx, dtype=torch.float32),
                facet_index=facet_index,
                cross_index=torch.tensor(cross_index, dtype=torch.long),
                cross_attr=torch.tensor(cross_attr, dtype=torch.float32),
                conditions=torch.tensor(normalise_conditions(*raw), dtype=torch.float32),
                raw_conditions=torch.tensor(raw, dtype=torch.float64),
                y=torch.tensor(y, dtype=torch.float32),
                facet_y=torch.tensor(facet_y, dtype=torch.float32),
            ))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return MultiScaleDataset(
        materials, queries, synthetic=True,
        description=(f"SYNTHETIC: plant_sim physics chain + nanoscale modifiers (models/data.py), "
                     f"{len(names)} materials x {settings.variants_per_material} defect states x "
                     f"{settings.conditions_per_variant} conditions, label noise {settings.label_noise}, "
                     f"seed {settings.seed}"),
    )


# ----------------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Split:
    """Sample indices of one evaluation protocol.

    Attributes:
        name: heldout_materials, heldout_families or heldout_conditions.
        train: indices to fit on.
        val: indices for early stopping and hyperparameter search (never the test's).
        test: held-out indices.
        held_out: what was held out (material names, family, or the sigma threshold).
    """

    name: str
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    held_out: tuple = field(default=())



def split(dataset: MultiScaleDataset, name: str, seed: int = 0, n_test_materials: int = 5,
          family: str = "fcc", condition_quantile: float = 0.8, val_fraction: float = 0.15) -> Split:
    """One of the three protocols of the benchmark.

    - heldout_materials: ``n_test_materials`` materials (from different families where
      possible) are the test set; validation materials are drawn from the rest.
    - heldout_families: every material of ``family`` is the test set.
    - heldout_conditions: samples whose driving force is above the ``condition_quantile``
      quantile are the test set (extrapolation in sigma); validation is a random share of the rest.
    """
    rng = np.random.default_rng([seed, SPLITS.index(name) if name in SPLITS else 99])
    materials = dataset.material_names
    families = dataset.families
    unique = sorted(set(materials.tolist()))
    by_family: dict[str, list[str]] = {}
    for mat, fam in zip(materials, families):
        by_family.setdefault(str(fam), [])
        if mat not in by_family[str(fam)]:
            by_family[str(fam)].append(str(mat))
    idx = np.arange(len(dataset))

    def val_by_material(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        names = sorted(set(materials[pool].tolist()))
        n_val = max(1, round(val_fraction * len(names))) if len(names) > 1 else 0
        val_names = set(rng.choice(names, size=n_val, replace=False).tolist()) if n_val else set()
        is_val = np.isin(materials[pool], list(val_names))
        if not is_val.any():  # one material only: fall back to a random share
            is_val = rng.random(pool.size) < val_fraction
        return pool[~is_val], pool[is_val]

    if name == "heldout_materials":
        fams = sorted(by_family)
        rng.shuffle(fams)
        chosen: list[str] = []
        while len(chosen) < min(n_test_materials, len(unique) - 1):
            for fam in fams:
                left = [m for m in by_family[fam] if m not in chosen]
                # keep at least one material of each family for training
                if len(left) > 1 and len(chosen) < n_test_materials:
                    chosen.append(str(rng.choice(left)))
            if all(len([m for m in by_family[f] if m not in chosen]) <= 1 for f in fams):
                break
        test = idx[np.isin(materials, chosen)]
        train, val = val_by_material(idx[~np.isin(materials, chosen)])
        return Split(name, train, val, test, tuple(sorted(chosen)))
    if name == "heldout_families":
        if family not in by_family:
            raise ValueError(f"family {family!r} is not in the dataset; it has {sorted(by_family)}")
        test = idx[families == family]
        train, val = val_by_material(idx[families != family])
        return Split(name, train, val, test, (family,))
    if name == "heldout_conditions":
        sigma = dataset.raw_conditions[:, 1]
        threshold = float(np.quantile(sigma, condition_quantile))
        test = idx[sigma > threshold]
        rest = idx[sigma <= threshold]
        is_val = rng.random(rest.size) < val_fraction
        return Split(name, rest[~is_val], rest[is_val], test, (f"sigma > {threshold:.4f}",))
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
