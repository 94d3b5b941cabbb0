"""Multi-scale data: the synthetic ground truth, graph assembly and splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conf.contract.morphology import all_faces
from models.data import DataSettings, _physics, face_rates_m_per_s, generate, split
from models.graphs import CLUSTER_FEATURES, FACET_FEATURES, HKLS, cluster_grid, cross_edges

SMALL = DataSettings(materials=("NaCl", "KCl", "CsCl", "Cu", "Al", "Si", "Fe"), variants_per_material=2,
                     conditions_per_variant=3, seed=1)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_generation_is_deterministic_and_labelled_synthetic(small):
    again = generate(SMALL)
    assert small.synthetic and "SYNTHETIC" in small.description
    assert len(small) == 7 * 2 * 3 and len(small.materials) == 14
    for a, b in zip(small.queries, again.queries):
        assert torch.equal(a.y, b.y) and torch.equal(a.facet_x, b.facet_x) and torch.equal(a.facet_y, b.facet_y)
    other = generate(DataSettings(**{**SMALL.__dict__, "seed": 2}))
    assert not torch.equal(small.queries[5].y, other.queries[5].y)


def test_every_sample_is_a_consistent_three_level_heterodata(small):
    for i in range(0, len(small), 5):
        d = small.heterodata(i)
        assert set(d.node_types) == {"atom", "cluster", "facet"}
        assert set(d.edge_types) == {("atom", "bond", "atom"), ("atom", "in", "cluster"),
                                     ("cluster", "near", "cluster"), ("cluster", "feeds", "facet"),
                                     ("facet", "adjacent", "facet")}
        d.validate(raise_on_error=True)
        assert d["facet"].x.shape == (d["facet"].y.shape[0], len(FACET_FEATURES))
        assert d["cluster"].x.shape == (27, len(CLUSTER_FEATURES))
        assert d.conditions.shape == (1, 4) and d.y.shape == (1, 3)
        assert torch.isfinite(d.y).all() and (d["facet"].y > 0).all()
        # A facet that grew out at the reference condition is not in the graph.
        assert 6 <= d["facet"].x.shape[0] <= 26
        areas = d["facet"].x[:, FACET_FEATURES.index("area_fraction")]
        assert float(areas.sum()) == pytest.approx(1.0, abs=1e-5) and (areas > 0).all()


def test_vacancies_remove_atoms_and_defects_show_in_cluster_features(small):
    pristine, defective = small.materials[0], small.materials[1]  # NaCl#0, NaCl#1
    assert pristine.key == "NaCl#0" and defective.key == "NaCl#1"
    assert pristine.atom_x.shape[0] == 216
    vac = CLUSTER_FEATURES.index("vacancy_fraction_x10")
    dis = CLUSTER_FEATURES.index("dislocation_density_rel")
    assert float(pristine.cluster_x[:, [vac, dis]].abs().sum()) == 0.0
    if float(defective.cluster_x[:, vac].sum()) > 0:
        assert defective.atom_x.shape[0] < 216


def test_local_defects_speed_the_faces_above_them():
    phys = _physics("Cu")
    normals, family = all_faces(HKLS)
    zero = {k: np.zeros(len(family)) for k in ("dislocation", "vacancy", "planar")}
    base = face_rates_m_per_s(phys, family, zero, phys.langmuir, 30.0, 0.03, 0.0, 300.0)
    local = dict(zero, dislocation=np.where(np.arange(len(family)) == 0, 1.0, 0.0))
    faster = face_rates_m_per_s(phys, family, local, phys.langmuir, 30.0, 0.03, 0.0, 300.0)
    assert faster[0] > base[0] * 1.5
    np.testing.assert_allclose(faster[1:], base[1:])
    vacant = face_rates_m_per_s(phys, family, dict(zero, vacancy=np.full(len(family), 0.1)), phys.langmuir,
                                30.0, 0.03, 0.0, 300.0)
    assert np.all(vacant < base)


def test_impurity_poisons_rough_faces_most_and_mass_transfer_caps_growth():
    phys = _physics("NaCl")
    _, family = all_faces(HKLS)
    zero = {k: np.zeros(len(family)) for k in ("dislocation", "vacancy", "planar")}
    clean = face_rates_m_per_s(phys, family, zero, phys.langmuir, 30.0, 0.03, 0.0, 300.0)
    dirty = face_rates_m_per_s(phys, family, zero, phys.langmuir, 30.0, 0.03, 100.0, 300.0)
    loss = 1 - dirty / clean
    roughest = int(np.argmax(phys.langmuir))
    assert loss[family == roughest].min() > loss[family != roughest].max()
    # Whatever the surface kinetics, a face cannot outgrow the diffusion limit k_m sigma.
    slow_stirring = face_rates_m_per_s(phys, family, zero, phys.langmuir, 60.0, 0.08, 0.0, 100.0)
    assert np.all(slow_stirring < 2e-6 * (100 / 300) ** 0.5 * 0.08)


def test_cross_edges_join_outer_clusters_to_the_faces_they_lie_under():
    _, direction, adjacency = cluster_grid(np.random.default_rng(0).random((100, 3)))
    assert adjacency.shape == (2, 108)  # 54 face-sharing voxel pairs, both directions
    normals, _ = all_faces(((1, 0, 0),))
    index, attr = cross_edges(direction, normals)
    centre = 13
    assert centre not in index[0]
    assert np.all(attr[:, 0] >= 0.5)
    # the +x face is fed by the 9 voxels of the +x layer
    assert sorted(index[0][index[1] == 0].tolist()) == [18, 19, 20, 21, 22, 23, 24, 25, 26]


@pytest.mark.parametrize("name", ["heldout_materials", "heldout_families", "heldout_conditions"])
def test_splits_are_disjoint_and_hold_out_what_they_say(small, name):
    s = split(small, name, n_test_materials=2, family="fcc")
    parts = [set(s.train.tolist()), set(s.val.tolist()), set(s.test.tolist())]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(range(len(small)))
    materials, families = small.material_names, small.families
    if name == "heldout_materials":
        assert not set(materials[s.test]) & set(materials[s.train])
    if name == "heldout_families":
        assert set(families[s.test]) == {"fcc"} and "fcc" not in set(families[s.train])
    if name == "heldout_conditions":
        sigma = small.raw_conditions[:, 1]
        assert sigma[s.test].min() > sigma[s.train].max()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="Unobtainium"):
        DataSettings(materials=("Unobtainium",))
    with pytest.raises(ValueError, match="driving_force_range"):
        DataSettings(driving_force_range=(0.1, 0.01))
    with pytest.raises(ValueError, match="unknown split"):
        split(generate(DataSettings(materials=("Cu",), variants_per_material=1, conditions_per_variant=2)), "bogus")
