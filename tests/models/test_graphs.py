"""The model's inputs from the material alone: the same graphs as the training data, no simulator."""

from __future__ import annotations

import numpy as np
import pytest

from conf.contract.materials import MATERIALS
from models.data import _physics, generate
from models.graphs import (
    FACET_FEATURES,
    HKLS,
    facet_family_properties,
    habit_query,
    pristine_material_graph,
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
