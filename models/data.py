"""SYNTHETIC multi-scale training data for the MS-GNN: labels from the physics chain, and splits.

The samples are the multi-scale graphs of :mod:`models.graphs` (atoms, clusters, facets, with
conditions and targets); this module draws materials in defect states and conditions, and
labels them with the simulated plant's physics chain (:mod:`plant_sim.kinetics`). Training,
tuning and benchmarking use it; the agent does not (its model service builds its inputs with
:mod:`models.graphs` alone).

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

import numpy as np
import torch

from conf.contract.lattice import bond_energy_ev, bond_graph, build_atoms, mersmann_interfacial_energy_j_per_m2
from conf.contract.materials import MATERIALS, Material
from conf.contract.morphology import all_faces, kinetic_wulff_faces
from models.graphs import (
    HKLS,
    M_PER_S_TO_UM_PER_MIN,
    REFERENCE_CONDITION,
    MaterialGraph,
    MultiScaleDataset,
    Query,
    cluster_grid,
    cross_edges,
    facet_features,
    family_energetics,
    family_surface_properties,
    local_average,
    material_graph_from_atoms,
    normalise_conditions,
    supercell_repeats,
)
from models.settings import SPLITS, DataSettings
from plant_sim.kinetics import (
    FacetEnergyInputs,
    GrowthCalibration,
    facet_kinetics_from_energies,
    solution_molarity_mol_per_m3,
)

__all__ = [
    "DataSettings",
    "Split",
    "face_rates_m_per_s",
    "generate",
    "nucleation_per_kg_s",
    "split",
]

_CLOSE_PACKED = frozenset({"fcc", "diamond", "zincblende"})
_DISLOCATION_LOG10_RANGE = (12.0, 15.0)  # rel density 0..1 <-> 1e12..1e15 m^-2


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
    facets = family_energetics(name)
    surface, langmuir = family_surface_properties(name)
    atoms = build_atoms(m.structure, m.ase_symbols, m.lattice_constant_angstrom)
    graph = bond_graph(atoms, 1.0)
    bonds_per_fu = graph.num_bonds / m.formula_units_per_cell
    eps = bond_energy_ev(m.lattice_energy_kj_per_mol, bonds_per_fu)
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
    return _MaterialPhysics(
        material=m,
        eps_ev=eps,
        bcf=np.array([f.bcf_rate_m_per_s for f in kin.families]),
        bs=np.array([f.birth_spread_rate_m_per_s for f in kin.families]),
        bs_barrier=np.array([f.birth_spread_barrier for f in kin.families]),
        sigma_c=base.critical_supersaturation,
        activation_j_per_mol=min(20.0 + 5.0 * eps, 60.0) * 1e3,
        surface_energy=surface,
        langmuir=langmuir,
        kinetics=kin,
    )


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
