"""The model's inputs from the material alone: the same graphs as the training data, no simulator."""

from __future__ import annotations

import numpy as np
import pytest

from conf.contract.materials import MATERIALS
from models.data import _physics, generate
from conf.contract.lattice import build_atoms
from models.graphs import (
    FACET_FEATURES,
    FAMILIES,
    HKLS,
    CrystalStructure,
    facet_family_properties,
    family_energetics,
    habit_query,
    pristine_material_graph,
    structure_family,
    structure_habit,
)
from models.settings import DataSettings

TENSORS = ("atom_x", "bond_index", "bond_attr", "atom_cluster", "cluster_x", "cluster_index", "cluster_direction",
           "descriptors")


@pytest.mark.parametrize("material", ["KCl", "Si", "CaF2"])
def test_the_pristine_graph_is_the_training_data_s_first_variant(material):
    settings = DataSettings(materials=(material,), variants_per_material=1, conditions_per_variant=1)
    generated = generate(settings).materials[0]
    built = pristine_material_graph(material, DataSettings().max_atoms)
    assert built.key == generated.key
    for name in TENSORS:
        assert np.array_equal(getattr(built, name).numpy(), getattr(generated, name).numpy()), name


def test_the_family_properties_are_the_training_data_s():
    phys = _physics("NaCl")
    props = facet_family_properties("NaCl")
    assert list(props) == list(HKLS)
    np.testing.assert_allclose([props[h][0] for h in HKLS], phys.surface_energy)
    np.testing.assert_allclose([props[h][1] for h in HKLS], phys.langmuir)


@pytest.mark.parametrize("material", sorted(MATERIALS))
def test_every_material_has_a_structure_habit_and_its_facet_graph(material):
    habit = structure_habit(material)
    assert habit.num_faces >= 6 and abs(float(habit.area_fractions.sum()) - 1.0) < 1e-9
    directions = pristine_material_graph(material, 120).cluster_direction.numpy()
    q = habit_query(material, habit, np.zeros(habit.num_faces), directions)
    assert q.facet_x.shape == (habit.num_faces, len(FACET_FEATURES)) and q.cross_index.shape[0] == 2
    rate = FACET_FEATURES.index("log10_observed_rate_um_per_min")
    assert np.all(q.facet_x[:, rate].numpy() == pytest.approx(-4.0))  # unknown rates: the feature's floor


# KCl as a structure database gives it (COD/ICSD style): the space group and the two sites of the
# asymmetric unit, which the reader expands to the 8-atom conventional cell.
KCL_CIF = """data_KCl
_cell_length_a 6.293
_cell_length_b 6.293
_cell_length_c 6.293
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
K1 K 0 0 0
Cl1 Cl 0.5 0.5 0.5
"""


def _kcl_from_file(tmp_path, name="KCl from a file"):
    path = tmp_path / "kcl.cif"
    path.write_text(KCL_CIF)
    m = MATERIALS["KCl"]
    return CrystalStructure.from_file(path, name, m.lattice_energy_kj_per_mol, m.density_kg_per_m3)


def test_a_structure_file_gives_the_built_in_material_s_graphs_and_energetics(tmp_path):
    """The same physics from a file as from the database: a material given as data is served
    on the inputs the network was trained on."""
    structure = _kcl_from_file(tmp_path)
    assert structure.family == "rocksalt" and structure.formula_units_per_cell == 4 and len(structure.cell) == 8
    assert family_energetics(structure) == family_energetics("KCl")
    assert facet_family_properties(structure) == facet_family_properties("KCl")
    assert structure_habit(structure).num_faces == structure_habit("KCl").num_faces
    built, read = pristine_material_graph("KCl", DataSettings().max_atoms), pristine_material_graph(
        structure, DataSettings().max_atoms)
    assert read.material == "KCl from a file" and read.family == "rocksalt"
    for name in TENSORS:
        if name == "bond_index":  # the reader orders the atoms differently: same graph, other labels
            assert getattr(read, name).shape == getattr(built, name).shape
            continue
        a, b = getattr(read, name).numpy(), getattr(built, name).numpy()
        if name in ("atom_x", "atom_cluster", "cluster_x", "bond_attr"):
            a, b = np.sort(a, axis=0), np.sort(b, axis=0)
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("material", sorted(MATERIALS))
def test_the_family_is_told_from_the_cell(material):
    m = MATERIALS[material]
    assert structure_family(build_atoms(m.structure, m.ase_symbols, m.lattice_constant_angstrom)) == m.structure


def test_a_cell_of_no_known_family_is_served_without_a_family(tmp_path):
    import ase
    import ase.io

    # Simple cubic, one atom per cell: none of the families; the family one-hot is zero.
    path = tmp_path / "sc.xyz"
    ase.io.write(path, ase.Atoms("Po", positions=[(0, 0, 0)], cell=np.eye(3) * 3.36, pbc=True), format="extxyz")
    structure = CrystalStructure.from_file(path, "sc", 100.0, 9200.0)
    assert structure.family == "" and structure.family not in FAMILIES
    graph = pristine_material_graph(structure, 200)
    assert graph.descriptors[-len(FAMILIES):].abs().sum() == 0
    assert len(family_energetics(structure)) == len(HKLS)


def test_a_bad_structure_file_says_what_is_wrong(tmp_path):
    import ase
    import ase.io

    with pytest.raises(ValueError, match="not found"):
        CrystalStructure.from_file(tmp_path / "missing.cif", "x", 700.0, 2000.0)
    (tmp_path / "junk.cif").write_text("this is not a crystal\n")
    with pytest.raises(ValueError, match="not a readable structure"):
        CrystalStructure.from_file(tmp_path / "junk.cif", "x", 700.0, 2000.0)
    tetragonal = build_atoms("rocksalt", "KCl", 6.29)
    tetragonal.set_cell(np.diag([6.29, 6.29, 7.0]), scale_atoms=True)
    ase.io.write(tmp_path / "tetragonal.cif", tetragonal)
    with pytest.raises(ValueError, match="cubic"):
        CrystalStructure.from_file(tmp_path / "tetragonal.cif", "x", 700.0, 2000.0)
    molecule = ase.Atoms("KCl", positions=[(0, 0, 0), (0, 0, 3.1)])
    ase.io.write(tmp_path / "molecule.xyz", molecule, format="extxyz")
    with pytest.raises(ValueError, match="periodic"):
        CrystalStructure.from_file(tmp_path / "molecule.xyz", "x", 700.0, 2000.0)
    with pytest.raises(ValueError, match="lattice energy"):
        _ = CrystalStructure.from_file(tmp_path / "tetragonal.cif", "x", 0.0, 2000.0)
