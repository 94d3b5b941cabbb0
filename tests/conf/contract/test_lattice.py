"""Tests for conf.contract.lattice: bond graphs, broken-bond facet energetics, Mersmann."""

import math

import numpy as np
import pytest

from conf.contract.lattice import (
    KJ_PER_MOL_PER_EV,
    StructureType,
    bond_energy_ev,
    bond_graph,
    broken_bond_density_per_angstrom2,
    build_atoms,
    facet_energetics,
    facet_energetics_of_atoms,
    mersmann_interfacial_energy_j_per_m2,
    slice_thickness_angstrom,
)

A_NACL = 5.64
U_NACL_KJ_PER_MOL = 787.0


@pytest.mark.parametrize(
    ("structure", "symbols", "a", "expected"),
    [
        (StructureType.ROCKSALT, "NaCl", 5.64, {"Na": 6, "Cl": 6}),
        (StructureType.FCC, "Cu", 3.61, {"Cu": 12}),
        (StructureType.BCC, "Fe", 2.87, {"Fe": 8}),
        (StructureType.DIAMOND, "Si", 5.43, {"Si": 4}),
        (StructureType.CESIUMCHLORIDE, "CsCl", 4.12, {"Cs": 8, "Cl": 8}),
        (StructureType.FLUORITE, "CaF2", 5.46, {"Ca": 8, "F": 4}),
        (StructureType.ZINCBLENDE, "ZnS", 5.41, {"Zn": 4, "S": 4}),
    ],
)
def test_first_shell_coordination(structure, symbols, a, expected):
    graph = bond_graph(build_atoms(structure, symbols, a), bond_energy_ev=1.0)
    for sym, coordination in zip(graph.symbols, graph.coordination):
        assert coordination == expected[sym], sym
    # first shell only: every bond has the same length
    assert np.ptp(graph.bond_length_angstrom) < 1e-9


def test_bond_graph_has_both_directions_and_consistent_arrays():
    graph = bond_graph(build_atoms("rocksalt", "NaCl", A_NACL), bond_energy_ev=0.5)
    e = graph.edge_index.shape[1]
    assert graph.edge_index.shape == (2, e)
    assert graph.bond_vector_angstrom.shape == (e, 3)
    assert graph.bond_energy_ev.shape == (e,)
    np.testing.assert_allclose(graph.bond_energy_ev, 0.5)
    np.testing.assert_allclose(np.linalg.norm(graph.bond_vector_angstrom, axis=1), graph.bond_length_angstrom)
    np.testing.assert_allclose(graph.bond_length_angstrom, A_NACL / 2)
    forward = {(int(i), int(j), *np.round(v, 6)) for i, j, v in zip(*graph.edge_index, graph.bond_vector_angstrom)}
    backward = {(int(j), int(i), *np.round(-v, 6)) for i, j, v in zip(*graph.edge_index, graph.bond_vector_angstrom)}
    assert forward == backward
    assert graph.num_bonds == 8 * 6 // 2


def test_supercell_repeat_keeps_coordination():
    atoms = build_atoms("fluorite", "CaF2", 5.46)
    graph = bond_graph(atoms, bond_energy_ev=1.0, repeat=2)
    assert graph.num_atoms == 8 * len(atoms)
    np.testing.assert_allclose(graph.cell_angstrom, 2 * 5.46 * np.eye(3))
    assert sorted(set(graph.coordination.tolist())) == [4, 8]


def test_explicit_cutoff_adds_second_shell():
    atoms = build_atoms("fcc", "Cu", 3.61)
    graph = bond_graph(atoms, bond_energy_ev=1.0, cutoff_angstrom=3.61 * 1.01)
    assert set(graph.coordination.tolist()) == {18}  # 12 + 6


def test_bond_energy_shares_lattice_energy():
    eps = bond_energy_ev(U_NACL_KJ_PER_MOL, 6)
    assert eps == pytest.approx(787.0 / 96.485 / 6, rel=1e-4)
    assert bond_energy_ev(-U_NACL_KJ_PER_MOL, 6) == pytest.approx(eps)
    with pytest.raises(ValueError):
        bond_energy_ev(787.0, 0)


def test_build_atoms_rejects_bad_inputs():
    with pytest.raises(ValueError):
        build_atoms("rocksalt", "NaCl", 0.0)
    with pytest.raises(ValueError):
        build_atoms("perovskite", "CaTiO3", 3.8)


@pytest.mark.parametrize(
    ("structure", "symbols", "hkl", "d_over_a"),
    [
        ("rocksalt", "NaCl", (1, 0, 0), 1 / 2),  # fcc centring: d_200
        ("rocksalt", "NaCl", (1, 1, 0), 1 / (2 * math.sqrt(2))),
        ("rocksalt", "NaCl", (1, 1, 1), 1 / math.sqrt(3)),
        ("rocksalt", "NaCl", (2, 0, 0), 1 / 2),  # family, not order
        ("cesiumchloride", "CsCl", (1, 0, 0), 1.0),  # primitive cubic
        ("bcc", "Fe", (1, 0, 0), 1 / 2),
        ("bcc", "Fe", (1, 1, 0), 1 / math.sqrt(2)),
        ("diamond", "Si", (1, 0, 0), 1 / 4),  # d-glide extinguishes 200
        ("diamond", "Si", (1, 1, 1), 1 / math.sqrt(3)),
        ("fluorite", "CaF2", (1, 1, 1), 1 / math.sqrt(3)),
    ],
)
def test_slice_thickness_donnay_harker(structure, symbols, hkl, d_over_a):
    a = 5.0
    assert slice_thickness_angstrom(build_atoms(structure, symbols, a), hkl) == pytest.approx(d_over_a * a)


def test_fluorite_111_cut_scan_takes_the_minimum():
    a = 5.46
    graph = bond_graph(build_atoms("fluorite", "CaF2", a), bond_energy_ev=1.0)
    # 2 Ca-F bonds per (111) mesh of a^2 sqrt(3)/4 between the F layers; 6.93/a^2 on average
    assert broken_bond_density_per_angstrom2(graph, (1, 1, 1)) * a**2 == pytest.approx(8 / math.sqrt(3))


def test_rocksalt_facets_analytic():
    facets = facet_energetics("rocksalt", "NaCl", A_NACL, U_NACL_KJ_PER_MOL)
    f100, f110, f111 = facets
    assert [f.hkl for f in facets] == [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
    eps = bond_energy_ev(U_NACL_KJ_PER_MOL, 6)
    # broken bonds per a^2: 4, 4 sqrt(2), 4 sqrt(3)
    assert f100.broken_bonds_per_area_per_angstrom2 * A_NACL**2 == pytest.approx(4.0)
    assert f110.surface_energy_j_per_m2 / f100.surface_energy_j_per_m2 == pytest.approx(math.sqrt(2))
    assert f111.surface_energy_j_per_m2 / f100.surface_energy_j_per_m2 == pytest.approx(math.sqrt(3))
    assert f100.surface_energy_j_per_m2 == pytest.approx(2 * eps * 1.602176634e-19 / (A_NACL * 1e-10) ** 2)
    assert f100.d_spacing_angstrom == pytest.approx(A_NACL / 2)
    assert f100.step_height_m == pytest.approx(A_NACL / 2 * 1e-10)
    assert f100.area_per_formula_unit_angstrom2 == pytest.approx(A_NACL**2 / 2)
    # Hartman-Perdok: each ion bonds 1, 2, 3 times into the next slice -> 2, 4, 3 eps per NaCl
    assert [f.attachment_energy_ev / eps for f in facets] == pytest.approx([2.0, 4.0, 3.0])
    assert f100.attachment_energy_ev < f110.attachment_energy_ev
    e_latt_ev = U_NACL_KJ_PER_MOL / KJ_PER_MOL_PER_EV
    for f in facets:
        assert f.slice_energy_ev + f.attachment_energy_ev == pytest.approx(e_latt_ev)
        for value in (f.surface_energy_j_per_m2, f.attachment_energy_ev, f.d_spacing_angstrom):
            assert math.isfinite(value) and value > 0


def test_fcc_111_is_lowest_and_long_bonds_counted_per_slice():
    facets = facet_energetics("fcc", "Cu", 3.61, 336.0)
    gammas = [f.surface_energy_j_per_m2 for f in facets]
    assert int(np.argmin(gammas)) == 2
    eps = bond_energy_ev(336.0, 6)
    # {110} slices are one layer thick; an atom bonds 4 times to the next layer and once to the
    # layer after, so E_att = 5 eps (the plane itself cuts 6 bonds per atom).
    assert [f.attachment_energy_ev / eps for f in facets] == pytest.approx([4.0, 5.0, 3.0])


@pytest.mark.parametrize(
    ("structure", "symbols", "a"),
    [("bcc", "Fe", 2.87), ("diamond", "Si", 5.43), ("cesiumchloride", "CsCl", 4.12), ("fluorite", "CaF2", 5.46)],
)
def test_energy_balance_and_nonnegative_slices(structure, symbols, a):
    facets = facet_energetics(structure, symbols, a, 700.0)
    for f in facets:
        assert f.attachment_energy_ev > 0
        assert f.slice_energy_ev >= -1e-12
        assert f.slice_energy_ev + f.attachment_energy_ev == pytest.approx(700.0 / KJ_PER_MOL_PER_EV)


def test_mersmann_kcl_near_0p02():
    molar_density = 1984.0 / 74.55e-3  # mol/m^3
    gamma = mersmann_interfacial_energy_j_per_m2(molar_density, 4.6e3, 25.0)
    assert 0.015 < gamma < 0.025
    # more soluble -> lower interfacial energy
    assert mersmann_interfacial_energy_j_per_m2(molar_density, 6e3, 25.0) < gamma
    with pytest.raises(ValueError):
        mersmann_interfacial_energy_j_per_m2(molar_density, 0.0, 25.0)


def test_energetics_of_a_given_cell_are_those_of_its_structure_and_need_a_cubic_cell():
    atoms = build_atoms(StructureType.ROCKSALT, "NaCl", A_NACL)
    assert facet_energetics_of_atoms(atoms, U_NACL_KJ_PER_MOL) == facet_energetics(
        StructureType.ROCKSALT, "NaCl", A_NACL, U_NACL_KJ_PER_MOL)
    # A cubic supercell is the same crystal: the same energetics per formula unit and per area.
    doubled = facet_energetics_of_atoms(atoms.repeat(2), U_NACL_KJ_PER_MOL)
    for a, b in zip(doubled, facet_energetics_of_atoms(atoms, U_NACL_KJ_PER_MOL)):
        assert a.surface_energy_j_per_m2 == pytest.approx(b.surface_energy_j_per_m2)
        assert a.attachment_energy_ev == pytest.approx(b.attachment_energy_ev)
        assert a.d_spacing_angstrom == pytest.approx(b.d_spacing_angstrom)
    stretched = atoms.copy()
    stretched.set_cell(np.diag([A_NACL, A_NACL, 1.1 * A_NACL]), scale_atoms=True)
    with pytest.raises(ValueError, match="cubic"):
        facet_energetics_of_atoms(stretched, U_NACL_KJ_PER_MOL)
    flat = atoms.copy()
    flat.pbc = (True, True, False)
    with pytest.raises(ValueError, match="periodic"):
        facet_energetics_of_atoms(flat, U_NACL_KJ_PER_MOL)
