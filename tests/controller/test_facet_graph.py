"""The facet graph from imaging: the observed habit only, the network's reference rates, bad readings, and
the model eats it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conf.contract.codes import decode_hkl
from controller.facet_graph import facet_graph_from_imaging, imaging_from_values
from models.data import DataSettings, generate
from models.graphs import FACET_FEATURES, REFERENCE_CONDITION, cluster_grid, facet_family_properties

PROPS = facet_family_properties("KCl")
_, DIRECTIONS, _ = cluster_grid(np.random.default_rng(0).random((50, 3)))
AREA = FACET_FEATURES.index("area_fraction")


def test_decode_hkl():
    assert decode_hkl(100) == (1, 0, 0) and decode_hkl(111.0) == (1, 1, 1)
    for bad in (0, -1, math.nan, 110.5, 1234):
        assert decode_hkl(bad) is None


RATE = FACET_FEATURES.index("log10_observed_rate_um_per_min")
LARGEST_NORMAL = FACET_FEATURES.index("sorted_abs_normal_0")  # 1 on {100}, 1/sqrt(3) on {111}
CUBE_WITH_CORNERS = [(100, 0.9), (111, 0.1), (0, 0.0), (0, 0.0)]


def family_rates(graph, rate_100: float, rate_111: float) -> np.ndarray:
    """Reference face rates (um/min) of a {100} + {111} graph, per face, (F,)."""
    cube_face = graph.facet_x[:, LARGEST_NORMAL].numpy() > 0.99
    return np.where(cube_face, rate_100, rate_111)


def same_family_edges(graph) -> tuple[int, int]:
    """(cube-cube, corner-corner) edges of a {100} + {111} graph, each counted once."""
    cube_face = graph.facet_x[:, LARGEST_NORMAL].numpy() > 0.99
    i, j = graph.facet_index.numpy()
    return int((cube_face[i] & cube_face[j]).sum()) // 2, int((~cube_face[i] & ~cube_face[j]).sum()) // 2


def test_a_cube_with_small_octahedral_corners():
    graph = facet_graph_from_imaging(CUBE_WITH_CORNERS, PROPS, DIRECTIONS)
    assert graph.facet_x.shape == (14, len(FACET_FEATURES))  # 6 cube faces + 8 corners
    areas = graph.facet_x[:, AREA]
    assert float(areas.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(areas.max()) == pytest.approx(0.15, abs=1e-6)  # 0.9 shared by six faces
    assert graph.facet_index.shape[0] == 2 and graph.facet_index.shape[1] > 0
    assert graph.cross_index.shape[1] > 0 and int(graph.cross_index[1].max()) < 14
    # no rate known: the feature's floor, as the material's habit before the network answers
    np.testing.assert_allclose(graph.facet_x[:, RATE].numpy(), -4.0)


def test_unusable_readings_give_none():
    assert facet_graph_from_imaging([(0, 0)] * 4, PROPS, DIRECTIONS) is None
    assert facet_graph_from_imaging([(100, math.nan), (999, 0.5)], PROPS, DIRECTIONS) is None
    assert facet_graph_from_imaging([], PROPS, DIRECTIONS) is None


def test_the_rate_feature_and_geometry_come_from_the_network_s_reference_rates():
    asked = []

    def reference(graph):
        asked.append(graph)
        return family_rates(graph, 1.0, 1.6)

    graph = facet_graph_from_imaging(CUBE_WITH_CORNERS, PROPS, DIRECTIONS, reference)
    # asked once, on the observed habit with the rates unknown
    assert len(asked) == 1 and asked[0].facet_x.shape[0] == 14
    np.testing.assert_allclose(asked[0].facet_x[:, RATE].numpy(), -4.0)
    rates = graph.facet_x[:, RATE].numpy()
    np.testing.assert_allclose(rates, np.log10(family_rates(graph, 1.0, 1.6)), atol=1e-6)
    np.testing.assert_allclose(graph.facet_x[:, AREA].numpy(), asked[0].facet_x[:, AREA].numpy())  # imaging's
    # the kinetic Wulff habit of those rates: {111} grows faster, a cube with its corners cut,
    # whose cube faces share the 12 cube edges; at equal growth (the first pass) the {111}
    # hexagons meet instead (a truncated octahedron, 12 hexagon-hexagon edges)
    assert same_family_edges(graph) == (12, 0) and same_family_edges(asked[0]) == (0, 12)


def test_a_reference_habit_that_drops_a_family_the_crystals_show_keeps_the_crystals_faces():
    # {111} at 3x the cube's rate grows out of the Wulff habit; imaging sees it, so it stays
    graph = facet_graph_from_imaging(CUBE_WITH_CORNERS, PROPS, DIRECTIONS, lambda g: family_rates(g, 1.0, 3.0))
    assert graph.facet_x.shape[0] == 14
    np.testing.assert_allclose(graph.facet_x[:, RATE].numpy(), np.log10(family_rates(graph, 1.0, 3.0)), atol=1e-6)
    # answers that are not rates leave the rate unknown
    for bad in (lambda g: np.full(g.facet_x.shape[0], np.nan), lambda g: np.ones(3), lambda g: np.zeros(14)):
        graph = facet_graph_from_imaging(CUBE_WITH_CORNERS, PROPS, DIRECTIONS, bad)
        np.testing.assert_allclose(graph.facet_x[:, RATE].numpy(), -4.0)


def test_the_facet_graph_depends_on_no_in_line_rate():
    """Only the observed habit (families, area fractions) is read: tags that look like facet
    growth rates, whatever they say, change nothing."""
    habit = {"facet_1_hkl": 100.0, "facet_1_area_fraction": 0.9, "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.1}
    rates = {f"facet_{j}_growth_rate_um_per_min": r for j, r in ((1, 5.0), (2, 0.01))}
    assert imaging_from_values({**habit, **rates}) == imaging_from_values(habit)
    assert all(len(reading) == 2 for reading in imaging_from_values(habit))
    a = facet_graph_from_imaging(imaging_from_values(habit), PROPS, DIRECTIONS)
    b = facet_graph_from_imaging(imaging_from_values({**habit, **rates}), PROPS, DIRECTIONS)
    assert torch.equal(a.facet_x, b.facet_x) and torch.equal(a.facet_index, b.facet_index)


def test_stale_imaging_slots_are_dropped():
    values = {"facet_1_hkl": 100.0, "facet_1_area_fraction": 0.8,
              "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.2,
              "facet_3_hkl": 110.0, "facet_3_area_fraction": 0.3}
    ok = {name: True for name in values}
    # without flags every slot, as before (a missing value is NaN)
    everything = imaging_from_values(values)
    assert len(everything) == 4 and everything[0] == (100.0, 0.8) and math.isnan(everything[3][0])
    assert imaging_from_values(values, ok) == [(100.0, 0.8), (111.0, 0.2), (110.0, 0.3)]
    # a slot with any stale signal goes, whichever of the two it is; so does one without flags
    for stale in ("facet_1_hkl", "facet_1_area_fraction"):
        assert imaging_from_values(values, {**ok, stale: False}) == [(111.0, 0.2), (110.0, 0.3)]
    assert imaging_from_values(values, {k: v for k, v in ok.items() if not k.startswith("facet_3")}) == [
        (100.0, 0.8), (111.0, 0.2)]
    # the stale {110} family does not reach the facet graph: a cube with corners, not with edges too
    graph = facet_graph_from_imaging(imaging_from_values(values, {**ok, "facet_3_area_fraction": False}), PROPS,
                                     DIRECTIONS)
    assert graph.facet_x.shape[0] == 14
    assert facet_graph_from_imaging(imaging_from_values(values, {}), PROPS, DIRECTIONS) is None
    # all three families: every face of each (6 + 12 + 8)
    assert facet_graph_from_imaging(imaging_from_values(values, ok), PROPS, DIRECTIONS).facet_x.shape[0] == 26


def test_the_simulated_plant_s_imaging_feeds_the_model():
    from conf.schema import load_config
    from models.msgnn import Ensemble, KineticsPredictor, TargetScaler
    from models.settings import MSGNNSettings
    from plant_sim.plant import Plant

    cfg = load_config([])
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=10.0, autostart=True))
    plant.advance(3600.0)
    values = plant.values()
    assert not any("growth" in name for name in values)  # the plant serves no facet growth rate
    material = generate(DataSettings(materials=("KCl",), variants_per_material=1, conditions_per_variant=1)).materials[0]
    ensemble = Ensemble(MSGNNSettings(hidden=8), TargetScaler((0.0,) * 4, (1.0,) * 4), size=2)
    predictor = KineticsPredictor(ensemble, device="cpu")
    embedding = predictor.embed_material(material)

    def reference(facets):
        with torch.no_grad():
            return predictor.query(embedding, facets, [REFERENCE_CONDITION]).facet_mean.double().numpy()

    graph = facet_graph_from_imaging(imaging_from_values(values), PROPS, DIRECTIONS, reference)
    assert graph is not None and torch.isfinite(graph.facet_x).all()
    prediction = predictor.query(embedding, graph, [[40.0, 0.02, 0.0, 300.0]])
    assert torch.isfinite(prediction.graph_mean).all() and prediction.facet_mean.shape == (graph.facet_x.shape[0],)
