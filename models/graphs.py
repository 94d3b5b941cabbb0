"""The multi-scale graph of one sample: what the MS-GNN reads, built from the material alone.

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

Everything here comes from the material's structure (the contract's materials database,
lattice and morphology, :mod:`conf.contract`), never from a simulated plant: the model and the
agent's model service build their inputs with it wherever they run. The SYNTHETIC training
data, whose labels come from the simulator's physics chain, are :mod:`models.data`'s.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from conf.contract.lattice import FIRST_SHELL_SLACK, FacetEnergetics, bond_energy_ev, build_atoms, facet_energetics_of_atoms
from conf.contract.materials import MATERIALS, STRUCTURES
from conf.contract.morphology import Habit, kinetic_wulff

__all__ = [
    "ATOM_FEATURES",
    "BOND_FEATURES",
    "CLUSTER_FEATURES",
    "CONDITION_FEATURES",
    "CROSS_FEATURES",
    "FACET_FEATURES",
    "FAMILIES",
    "FLAT_MATERIAL",
    "GRAPH_TARGETS",
    "HKLS",
    "REFERENCE_CONDITION",
    "CrystalStructure",
    "MaterialGraph",
    "MultiScaleDataset",
    "Query",
    "cluster_grid",
    "cluster_grid_offsets",
    "cross_edges",
    "crystal_structure",
    "facet_family_properties",
    "facet_features",
    "facet_query",
    "family_energetics",
    "family_surface_properties",
    "habit_query",
    "material_graph_from_atoms",
    "normalise_conditions",
    "pristine_material_graph",
    "structure_family",
    "structure_habit",
    "supercell_repeats",
    "with_observed_rates",
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


# ----------------------------------------------------------------------------- geometry and features
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


def supercell_repeats(atoms_per_cell: int, max_atoms: int) -> int:
    """Largest n with atoms_per_cell n^3 <= max_atoms (at least 2)."""
    n = 2
    while atoms_per_cell * (n + 1) ** 3 <= max_atoms:
        n += 1
    return n


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
    # First-shell bonds, as conf.contract.lattice counts them; the shell is measured as the median
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


# ----------------------------------------------------------------------------- per material
@dataclass(frozen=True, eq=False)
class CrystalStructure:
    """What the model's inputs need of one material: its cell and its thermochemistry.

    Built in (:meth:`built_in`, from the contract's materials database) or read from a
    structure file (:meth:`from_file`, a material given only as data). Every per-material
    function below takes either this or a built-in material's key, so a material from a file
    gets the same graphs and facet energetics as a built-in one.

    Attributes:
        name: material name.
        family: structure family (one of :data:`FAMILIES`; "" when the cell matches none, and
            the family one-hot of the descriptors is then zero).
        cell: periodic conventional cubic cell (cell a*I), no vacancies.
        lattice_energy_kj_per_mol: lattice (cohesive) energy per formula unit.
        density_kg_per_m3: crystal density.
        formula_units_per_cell: formula units in ``cell``.
    """

    name: str
    family: str
    cell: object
    lattice_energy_kj_per_mol: float
    density_kg_per_m3: float
    formula_units_per_cell: float

    @staticmethod
    @functools.lru_cache(maxsize=None)
    def built_in(material: str) -> "CrystalStructure":
        """A material of :data:`conf.contract.materials.MATERIALS` (one object per key)."""
        m = MATERIALS[material]
        return CrystalStructure(material, m.structure, build_atoms(m.structure, m.ase_symbols,
                                                                   m.lattice_constant_angstrom),
                                m.lattice_energy_kj_per_mol, m.density_kg_per_m3, m.formula_units_per_cell)

    @staticmethod
    def from_file(path, name: str, lattice_energy_kj_per_mol: float, density_kg_per_m3: float) -> "CrystalStructure":
        """Read a material's structure (CIF, extended XYZ, any format ase reads).

        The facet families of the model (:data:`HKLS`) are cubic, so the file must give a cubic
        cell: the conventional cell of a cubic space group (as a CIF of one reads), or a cubic
        supercell of it. Formula units come from the species counts (their greatest common
        divisor), the family from the bond graph (:func:`structure_family`).

        Raises:
            ValueError: naming the file and what to do, for a file that is missing, unreadable,
                not periodic or not cubic, or for a non-positive energy or density.
        """
        import ase.io

        from conf.contract.lattice import _cubic_cell_length_angstrom

        if not (lattice_energy_kj_per_mol > 0 and density_kg_per_m3 > 0):
            raise ValueError(f"{name}: a structure needs its lattice energy and density (> 0), got "
                             f"{lattice_energy_kj_per_mol} kJ/mol and {density_kg_per_m3} kg/m^3")
        try:
            atoms = ase.io.read(str(path))
        except FileNotFoundError:
            raise ValueError(f"structure file {path} not found") from None
        except Exception as exc:  # ase raises many types for unreadable files
            raise ValueError(f"structure file {path} is not a readable structure ({exc})") from None
        if not all(atoms.pbc) or abs(float(atoms.cell.volume)) < 1e-6:
            raise ValueError(f"structure file {path} needs a periodic 3-D cell")
        try:
            _cubic_cell_length_angstrom(atoms.cell.array)
        except ValueError:
            raise ValueError(f"structure file {path}: the model's facet families are cubic and need the "
                             f"conventional cubic cell (a*I, as a CIF of a cubic space group gives it), got cell "
                             f"lengths {np.round(atoms.cell.lengths(), 4).tolist()} and angles "
                             f"{np.round(atoms.cell.angles(), 3).tolist()}; without a cubic cell, give the "
                             f"material's kinetics prior and no structure_file") from None
        _, counts = np.unique(atoms.get_atomic_numbers(), return_counts=True)
        formula_units = float(math.gcd(*(int(c) for c in counts)))
        return CrystalStructure(name, structure_family(atoms), atoms, float(lattice_energy_kj_per_mol),
                                float(density_kg_per_m3), formula_units)


def _bond_signature(atoms) -> tuple:
    """(species stoichiometry, first-shell coordination per species), both in species order of
    abundance: what tells the cubic families apart."""
    from ase.neighborlist import neighbor_list

    from conf.contract.lattice import _first_shell_distance_angstrom

    cutoff = FIRST_SHELL_SLACK * _first_shell_distance_angstrom(atoms)
    i = neighbor_list("i", atoms, cutoff)
    coordination = np.bincount(i, minlength=len(atoms))
    z = atoms.get_atomic_numbers()
    species, counts = np.unique(z, return_counts=True)
    g = math.gcd(*(int(c) for c in counts))
    per_species = sorted(((int(c) // g, int(round(float(coordination[z == s].mean())))) for s, c in zip(species, counts)))
    return tuple(per_species)


@functools.lru_cache(maxsize=None)
def _family_signatures() -> dict[tuple, str]:
    # Generic prototypes: only the geometry and the species pattern matter.
    symbols = {"rocksalt": "NaCl", "cesiumchloride": "CsCl", "fluorite": "CaF2", "zincblende": "ZnS",
               "diamond": "C", "fcc": "Cu", "bcc": "Fe"}
    return {_bond_signature(build_atoms(f, symbols[f], 5.0)): f for f in FAMILIES if f in symbols}


def structure_family(atoms) -> str:
    """The structure family (:data:`FAMILIES`) whose prototype has the cell's stoichiometry and
    first-shell coordination per species; "" when none has."""
    return _family_signatures().get(_bond_signature(atoms), "")


def crystal_structure(material: "str | CrystalStructure") -> CrystalStructure:
    """A built-in material's key or a structure -> the structure."""
    return material if isinstance(material, CrystalStructure) else CrystalStructure.built_in(material)


@functools.lru_cache(maxsize=None)
def _energetics(structure: CrystalStructure) -> tuple[FacetEnergetics, ...]:
    return facet_energetics_of_atoms(structure.cell, structure.lattice_energy_kj_per_mol, HKLS)


def family_energetics(material: "str | CrystalStructure") -> tuple[FacetEnergetics, ...]:
    """Broken-bond and Hartman-Perdok energetics of the material's facet families :data:`HKLS`
    (:func:`conf.contract.lattice.facet_energetics`), in :data:`HKLS` order."""
    return _energetics(crystal_structure(material))


def family_surface_properties(material: "str | CrystalStructure") -> tuple[np.ndarray, np.ndarray]:
    """Per family of :data:`HKLS`: the broken-bond surface energy gamma_f (J/m^2) and the
    structural impurity Langmuir constant K_f = 0.02 ppm^-1 (n_cut,f / mean n_cut)^3 (rough faces,
    with more bonds cut, adsorb more), each (len(HKLS),), read-only."""
    return _surface_properties(crystal_structure(material))


@functools.lru_cache(maxsize=None)
def _surface_properties(structure: CrystalStructure) -> tuple[np.ndarray, np.ndarray]:
    facets = _energetics(structure)
    surface = np.array([f.surface_energy_j_per_m2 for f in facets])
    n_cut = np.array([f.broken_bonds_per_area_per_angstrom2 for f in facets])
    langmuir = 0.02 * (n_cut / n_cut.mean()) ** 3
    surface.setflags(write=False)
    langmuir.setflags(write=False)
    return surface, langmuir


def facet_family_properties(material: "str | CrystalStructure") -> dict[tuple[int, int, int], tuple[float, float]]:
    """Per facet family of a material: (broken-bond surface energy J/m^2, structural impurity
    Langmuir constant per ppm), the facet features that do not come from imaging."""
    surface, langmuir = family_surface_properties(material)
    return {hkl: (float(e), float(k)) for hkl, e, k in zip(HKLS, surface, langmuir)}


def pristine_material_graph(material: "str | CrystalStructure", max_atoms: int) -> MaterialGraph:
    """Levels 1-2 of the material in its pristine defect state (variant 0 of the training data).

    The supercell is the largest n^3 repetition of the conventional cell within ``max_atoms``;
    no defects, no displacements. The same graph as :func:`models.data.generate` makes for a
    material's first (pristine) variant; a structure read from a file gets it the same way.
    """
    structure = crystal_structure(material)
    cell = structure.cell
    reps = supercell_repeats(len(cell), max_atoms)
    atoms = cell.repeat(reps)
    n_clusters = cluster_grid_offsets().shape[0]
    defects = {k: np.zeros(n_clusters) for k in ("dislocation", "vacancy", "planar")}
    displacement = np.zeros(len(atoms))
    atoms.set_array("displacement_angstrom", displacement)
    return material_graph_from_atoms(
        f"{structure.name}#0", structure.name, structure.family, atoms, structure.lattice_energy_kj_per_mol,
        structure.formula_units_per_cell * reps**3, structure.density_kg_per_m3, defects, displacement,
    )


def facet_query(facet_x: np.ndarray, normals: np.ndarray, adjacency: np.ndarray,
                cluster_direction: np.ndarray) -> Query:
    """A facet graph without conditions or targets, for :meth:`models.msgnn.KineticsPredictor.query`.

    Args:
        facet_x: facet features, (F, len(FACET_FEATURES)) (:func:`facet_features`).
        normals: outward unit normal per face, (F, 3).
        adjacency: faces sharing an edge, (2, E) (both directions).
        cluster_direction: unit directions of the material graph's clusters, (C, 3); the
            cluster -> facet edges join each outer cluster to the faces it lies under.
    """
    cross, cross_attr = cross_edges(np.asarray(cluster_direction, dtype=float), np.asarray(normals, dtype=float))
    return Query(
        material_index=0,
        facet_x=torch.tensor(facet_x, dtype=torch.float32),
        facet_index=torch.tensor(np.asarray(adjacency), dtype=torch.long),
        cross_index=torch.tensor(cross, dtype=torch.long),
        cross_attr=torch.tensor(cross_attr, dtype=torch.float32),
        conditions=torch.zeros(len(CONDITION_FEATURES)),
        raw_conditions=torch.zeros(4, dtype=torch.float64),
        y=torch.zeros(len(GRAPH_TARGETS)),
        facet_y=torch.zeros(facet_x.shape[0]),
    )


def with_observed_rates(query: Query, observed_um_per_min: np.ndarray) -> Query:
    """``query`` with its faces' observed-rate feature replaced (um/min, (F,); floored as in
    :func:`facet_features`)."""
    col = FACET_FEATURES.index("log10_observed_rate_um_per_min")
    rates = np.asarray(observed_um_per_min, dtype=float).reshape(-1)
    if rates.shape != (query.facet_x.shape[0],):
        raise ValueError(f"need one rate per face ({query.facet_x.shape[0]}), got shape {rates.shape}")
    fx = query.facet_x.clone()
    fx[:, col] = torch.tensor(np.log10(np.maximum(rates, 1e-4)), dtype=fx.dtype)
    return dataclasses.replace(query, facet_x=fx)


def structure_habit(material: "str | CrystalStructure") -> Habit:
    """The habit the material's structure alone predicts: the attachment-energy morphology.

    Hartman & Perdok (1955): a face grows in proportion to its attachment energy,
    R_hkl ~ |E_att,hkl| (Hartman & Bennema 1980); the kinetic Wulff habit of those rates over the
    families :data:`HKLS` (:func:`conf.contract.morphology.kinetic_wulff`).
    """
    return kinetic_wulff(HKLS, [abs(f.attachment_energy_ev) for f in family_energetics(material)])


def habit_query(material: "str | CrystalStructure", habit: Habit, observed_um_per_min: np.ndarray, cluster_direction: np.ndarray) -> Query:
    """The facet graph of a habit of the material, as imaging of that habit would give it.

    Args:
        material: key of :data:`conf.contract.materials.MATERIALS`, or a :class:`CrystalStructure`.
        habit: a habit over families of :data:`HKLS`.
        observed_um_per_min: observed normal growth rate per face of the habit, (F,); 0 where
            unknown (the feature's floor, 1e-4 um/min, as a reading without usable rates).
        cluster_direction: unit directions of the material graph's clusters, (C, 3).
    """
    surface, langmuir = family_surface_properties(material)
    family = np.array([HKLS.index(tuple(habit.hkls[f])) for f in habit.face_family], dtype=int)
    fx = facet_features(habit.normals, habit.area_fractions, np.asarray(observed_um_per_min, dtype=float),
                        surface[family], langmuir[family])
    return facet_query(fx, habit.normals, habit.adjacency, cluster_direction)
