"""Tests for conf.contract.materials: presets agree with their lattices and the CRC solubility table."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from ase.build import bulk
from ase.symbols import string2symbols

from conf.contract.materials import (
    AVOGADRO_PER_MOL,
    DEFAULT_MATERIAL_NAME,
    EXTRAPOLATION_MARGIN_K,
    KNO3_MILLER_RAWLINGS_1994,
    MATERIALS,
    STRUCTURES,
    Material,
    Solubility,
    SolubilityPolynomial,
    get_material,
    load_crc_solubility,
    mass_percent_to_g_per_kg,
)

NAMES = sorted(MATERIALS)
SOLUTION_NAMES = [n for n in NAMES if MATERIALS[n].is_solution_system]
NH4_STAND_INS = {"NH4Cl", "NH4Br"}


@pytest.mark.parametrize("name", NAMES)
def test_ase_cell_matches_density_and_formula_units(name: str) -> None:
    m = MATERIALS[name]
    atoms = bulk(m.ase_symbols, m.structure, a=m.lattice_constant_angstrom, cubic=True)
    atoms_per_formula_unit = len(string2symbols(m.ase_symbols))
    assert len(atoms) == m.formula_units_per_cell * atoms_per_formula_unit
    volume_m3 = atoms.get_volume() * 1e-30
    if name in NH4_STAND_INS:
        # The Rb stand-in has the wrong mass: use the molar mass of the real compound.
        mass_kg = m.formula_units_per_cell * m.molar_mass_g_per_mol * 1e-3 / AVOGADRO_PER_MOL
    else:
        mass_kg = atoms.get_masses().sum() * 1e-3 / AVOGADRO_PER_MOL
        assert atoms.get_masses().sum() == pytest.approx(m.formula_units_per_cell * m.molar_mass_g_per_mol, rel=2e-3)
    assert mass_kg / volume_m3 == pytest.approx(m.density_kg_per_m3, rel=0.05)
    assert m.x_ray_density_kg_per_m3 == pytest.approx(m.density_kg_per_m3, rel=0.05)


def test_coverage_of_structures_and_solution_systems() -> None:
    assert len(MATERIALS) >= 20
    assert len({m.structure for m in MATERIALS.values()}) >= 5
    assert {m.structure for m in MATERIALS.values()} <= set(STRUCTURES)
    assert len(SOLUTION_NAMES) >= 6
    for required in ("NaCl", "KCl", "KBr", "KI", "NH4Cl"):
        assert MATERIALS[required].is_solution_system
    assert MATERIALS["NH4Cl"].structure == "cesiumchloride"
    for non_solution in ("CaF2", "ZnS", "Si", "Cu", "Fe"):
        assert MATERIALS[non_solution].solubility is None
    assert DEFAULT_MATERIAL_NAME in MATERIALS


def test_keys_names_sources() -> None:
    for key, m in MATERIALS.items():
        assert key == m.name
        assert m.source.strip()
        if m.is_solution_system:
            assert "CRC Handbook" in m.solubility.source
        if m.name in NH4_STAND_INS:
            assert "stand-in" in m.notes


def test_reference_values_kcl_nacl() -> None:
    kcl, nacl = get_material("KCl"), get_material("NaCl")
    assert (kcl.lattice_constant_angstrom, kcl.density_kg_per_m3) == pytest.approx((6.29, 1984.0), rel=2e-3)
    assert (kcl.molar_mass_g_per_mol, kcl.lattice_energy_kj_per_mol) == pytest.approx((74.55, 715.0), rel=1e-3)
    assert (nacl.lattice_constant_angstrom, nacl.density_kg_per_m3) == pytest.approx((5.64, 2165.0), rel=2e-3)
    assert (nacl.molar_mass_g_per_mol, nacl.lattice_energy_kj_per_mol) == pytest.approx((58.44, 787.0), rel=1e-3)
    # KCl: 74.55 g/mol / (1984 kg/m3 * N_A) = 6.24e-29 m3 per formula unit.
    assert kcl.molecular_volume_m3 == pytest.approx(6.240e-29, rel=1e-3)
    assert kcl.crystal_molar_density_mol_per_m3 == pytest.approx(1984.0 / 0.07455, rel=1e-9)
    assert kcl.molecular_volume_m3 * kcl.crystal_molar_density_mol_per_m3 * AVOGADRO_PER_MOL == pytest.approx(1.0)


def test_lattice_energy_trends() -> None:
    # Born-Haber lattice energy falls as the ions grow; fluorides of divalent ions are far larger.
    u = {n: MATERIALS[n].lattice_energy_kj_per_mol for n in MATERIALS}
    assert u["NaF"] > u["NaCl"] > u["KCl"] > u["KBr"] > u["KI"]
    assert u["CaF2"] > u["SrF2"] > u["BaF2"] > 2000.0


def test_frozen() -> None:
    m = get_material("KCl")
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.density_kg_per_m3 = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        MATERIALS["X"] = m  # type: ignore[index]


def test_get_material_error_lists_names() -> None:
    with pytest.raises(KeyError) as excinfo:
        get_material("kcl")  # case-sensitive
    message = str(excinfo.value)
    for name in ("KCl", "NaCl", "Si", "Fe"):
        assert name in message


@pytest.mark.parametrize("name", NAMES)
def test_impurity_one_entry_per_facet_family(name: str) -> None:
    m = MATERIALS[name]
    assert len(m.impurity_effectiveness) == len(m.facet_families)
    assert len(m.impurity_langmuir_per_ppm) == len(m.facet_families)


@pytest.mark.parametrize("name", ["NaCl", "KCl"])
def test_impurity_poisons_111_selectively(name: str) -> None:
    m = MATERIALS[name]
    i111 = m.facet_families.index((1, 1, 1))
    others = [a for i, a in enumerate(m.impurity_effectiveness) if i != i111]
    assert 1.0 <= m.impurity_effectiveness[i111] <= 1.5
    assert max(others) <= 0.2
    assert all(0.0 < k <= 0.05 for k in m.impurity_langmuir_per_ppm)


def test_material_validates_impurity_length() -> None:
    kcl = get_material("KCl")
    with pytest.raises(ValueError, match="one entry per facet family"):
        dataclasses.replace(kcl, impurity_effectiveness=(0.1, 1.0))
    with pytest.raises(ValueError, match="structure"):
        dataclasses.replace(kcl, structure="hcp")


def test_mass_percent_conversion() -> None:
    assert mass_percent_to_g_per_kg(25.0) == pytest.approx(1000.0 / 3.0)
    assert mass_percent_to_g_per_kg(0.0) == 0.0
    with pytest.raises(ValueError):
        mass_percent_to_g_per_kg(100.0)


def test_kcl_crc_solubility() -> None:
    sol = get_material("KCl").solubility
    assert isinstance(sol, Solubility)
    # CRC: 25.39 wt% at 20 C -> 1000 * 25.39 / 74.61 = 340.3 g/kg water.
    assert sol.g_per_kg(20.0) == pytest.approx(340.3, abs=0.5)
    assert sol.g_per_kg(np.array([0.0, 100.0])) == pytest.approx([277.8, 563.7], abs=0.5)
    t = np.linspace(0.0, 100.0, 201)
    c = sol.g_per_kg(t)
    assert c.shape == t.shape
    assert np.all(np.diff(c) > 0.0)
    assert np.all(sol.derivative_g_per_kg_per_k(t) > 0.0)
    # Slope between 20 and 30 C from the table: (369.8 - 340.3) / 10 ~ 3 g/kg/K.
    assert sol.derivative_g_per_kg_per_k(25.0) == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("name", SOLUTION_NAMES)
def test_solubility_rises_and_inverse_round_trips(name: str) -> None:
    sol = MATERIALS[name].solubility
    t = np.linspace(sol.temperatures_c[0] - 5.0, sol.temperatures_c[-1] + 5.0, 37)
    c = sol.g_per_kg(t)
    assert np.all(np.diff(c) > 0.0), name
    np.testing.assert_allclose(sol.saturation_temperature_c(c), t, atol=1e-6)
    # Table points are reproduced exactly.
    np.testing.assert_allclose(sol.g_per_kg(np.array(sol.temperatures_c)), sol.solubility_g_per_kg, rtol=1e-12)


def test_derivative_matches_finite_difference() -> None:
    sol = get_material("NH4Cl").solubility
    t = np.array([5.0, 22.0, 47.0, 83.0])
    h = 1e-4
    fd = (sol.g_per_kg(t + h) - sol.g_per_kg(t - h)) / (2 * h)
    np.testing.assert_allclose(sol.derivative_g_per_kg_per_k(t), fd, rtol=1e-5)


def test_extrapolation_is_linear_and_bounded() -> None:
    sol = get_material("KCl").solubility
    slope = sol.derivative_g_per_kg_per_k(100.0)
    assert sol.g_per_kg(105.0) == pytest.approx(sol.g_per_kg(100.0) + 5.0 * slope)
    assert sol.derivative_g_per_kg_per_k(-5.0) == pytest.approx(sol.derivative_g_per_kg_per_k(0.0))
    with pytest.raises(ValueError):
        sol.g_per_kg(100.0 + EXTRAPOLATION_MARGIN_K + 1.0)
    with pytest.raises(ValueError):
        sol.saturation_temperature_c(5000.0)


def test_inverse_refuses_non_monotone_solubility() -> None:
    falling = Solubility(temperatures_c=(0.0, 50.0, 100.0), solubility_g_per_kg=(10.0, 8.0, 6.0), source="test")
    with pytest.raises(ValueError, match="rise"):
        falling.saturation_temperature_c(8.0)
    with pytest.raises(ValueError):
        Solubility(temperatures_c=(0.0, 0.0), solubility_g_per_kg=(1.0, 2.0), source="test")


def test_load_crc_solubility_errors() -> None:
    with pytest.raises(KeyError) as excinfo:
        load_crc_solubility("KCL")
    assert "KCl" in str(excinfo.value)
    with pytest.raises(ValueError, match="only 1"):
        load_crc_solubility("CsBr")  # only 25 C tabulated


def test_load_crc_solubility_drops_empty_cells() -> None:
    kf = load_crc_solubility("KF")  # values at 0-30 and 80 C only
    assert kf.temperatures_c == (0.0, 10.0, 20.0, 25.0, 30.0, 80.0)
    assert kf.solubility_g_per_kg[-1] == pytest.approx(1500.0)  # 60 wt%


def test_kno3_polynomial() -> None:
    poly = KNO3_MILLER_RAWLINGS_1994
    assert isinstance(poly, SolubilityPolynomial)
    # 0.1286 + 5.88e-3 * 20 + 1.721e-4 * 400 = 0.3150 g/g water.
    assert poly.g_per_kg(20.0) == pytest.approx(315.0, abs=0.5)
    assert poly.derivative_g_per_kg_per_k(20.0) == pytest.approx(5.88 + 2 * 0.1721 * 20.0)
    t = np.array([5.0, 20.0, 33.3, 55.0])
    np.testing.assert_allclose(poly.saturation_temperature_c(poly.g_per_kg(t)), t, atol=1e-6)
    # The fit agrees with the CRC table (24.2 wt% at 20 C -> 319 g/kg) within a few percent.
    crc = load_crc_solubility("KNO3")
    grid = np.linspace(10.0, 60.0, 11)
    np.testing.assert_allclose(poly.g_per_kg(grid), crc.g_per_kg(grid), rtol=0.05)


def test_polynomial_usable_as_material_solubility() -> None:
    m = dataclasses.replace(get_material("KCl"), name="KCl-poly", solubility=SolubilityPolynomial((277.0, 3.0), "test"))
    assert m.is_solution_system
    assert m.solubility.saturation_temperature_c(337.0) == pytest.approx(20.0)


def test_no_nan_in_presets() -> None:
    for m in MATERIALS.values():
        for f in dataclasses.fields(Material):
            v = getattr(m, f.name)
            if isinstance(v, float):
                assert math.isfinite(v), (m.name, f.name)
