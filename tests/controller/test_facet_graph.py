"""The facet graph from imaging: decoding, the Wulff geometry, bad readings, and the model eats it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conf.contract.codes import decode_hkl
from controller.facet_graph import facet_graph_from_imaging, imaging_from_values
from models.data import DataSettings, generate
from models.graphs import FACET_FEATURES, cluster_grid, facet_family_properties

PROPS = facet_family_properties("KCl")
_, DIRECTIONS, _ = cluster_grid(np.random.default_rng(0).random((50, 3)))
AREA = FACET_FEATURES.index("area_fraction")


def test_decode_hkl():
    assert decode_hkl(100) == (1, 0, 0) and decode_hkl(111.0) == (1, 1, 1)
    for bad in (0, -1, math.nan, 110.5, 1234):
        assert decode_hkl(bad) is None


def test_a_cube_with_small_octahedral_corners():
    graph = facet_graph_from_imaging([(100, 0.9, 1.0), (111, 0.1, 1.6), (0, 0.0, 0.0), (0, 0.0, 0.0)], PROPS,
                                     DIRECTIONS)
    assert graph.facet_x.shape == (14, len(FACET_FEATURES))  # 6 cube faces + 8 corners
    areas = graph.facet_x[:, AREA]
    assert float(areas.sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(areas.max()) == pytest.approx(0.15, abs=1e-6)  # 0.9 shared by six faces
    assert graph.facet_index.shape[0] == 2 and graph.facet_index.shape[1] > 0
    assert graph.cross_index.shape[1] > 0 and int(graph.cross_index[1].max()) < 14


def test_unusable_readings_give_none_or_fall_back():
    assert facet_graph_from_imaging([(0, 0, 0)] * 4, PROPS, DIRECTIONS) is None
    assert facet_graph_from_imaging([(100, math.nan, 1.0), (999, 0.5, 1.0)], PROPS, DIRECTIONS) is None
    # rates lost: every face of the families seen, equal growth
    graph = facet_graph_from_imaging([(100, 0.7, math.nan), (110, 0.3, 1.0)], PROPS, DIRECTIONS)
    assert graph is not None and graph.facet_x.shape[0] == 6 + 12


def test_stale_imaging_slots_are_dropped():
    values = {"facet_1_hkl": 100.0, "facet_1_area_fraction": 0.8, "facet_1_growth_rate_um_per_min": 1.0,
              "facet_2_hkl": 111.0, "facet_2_area_fraction": 0.2, "facet_2_growth_rate_um_per_min": 1.6,
              "facet_3_hkl": 110.0, "facet_3_area_fraction": 0.3, "facet_3_growth_rate_um_per_min": 0.9}
    ok = {name: True for name in values}
    # without flags every slot, as before (a missing value is NaN)
    everything = imaging_from_values(values)
    assert len(everything) == 4 and everything[0] == (100.0, 0.8, 1.0) and math.isnan(everything[3][0])
    assert imaging_from_values(values, ok) == [(100.0, 0.8, 1.0), (111.0, 0.2, 1.6), (110.0, 0.3, 0.9)]
    # a slot with any stale signal goes, whichever of the three it is; so does one without flags
    for stale in ("facet_1_hkl", "facet_1_area_fraction", "facet_1_growth_rate_um_per_min"):
        assert imaging_from_values(values, {**ok, stale: False}) == [(111.0, 0.2, 1.6), (110.0, 0.3, 0.9)]
    assert imaging_from_values(values, {k: v for k, v in ok.items() if not k.startswith("facet_3")}) == [
        (100.0, 0.8, 1.0), (111.0, 0.2, 1.6)]
    # the stale {110} family does not reach the facet graph: a cube with corners, not with edges too
    graph = facet_graph_from_imaging(imaging_from_values(values, {**ok, "facet_3_area_fraction": False}), PROPS,
                                     DIRECTIONS)
    assert graph.facet_x.shape[0] == 14
    assert facet_graph_from_imaging(imaging_from_values(values, {}), PROPS, DIRECTIONS) is None


def test_the_simulated_plant_s_imaging_feeds_the_model():
    from conf.schema import load_config
    from models.msgnn import Ensemble, KineticsPredictor, TargetScaler
    from models.settings import MSGNNSettings
    from plant_sim.plant import Plant

    cfg = load_config([])
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=10.0, autostart=True))
    plant.advance(3600.0)
    graph = facet_graph_from_imaging(imaging_from_values(plant.values()), PROPS, DIRECTIONS)
    assert graph is not None and torch.isfinite(graph.facet_x).all()
    material = generate(DataSettings(materials=("KCl",), variants_per_material=1, conditions_per_variant=1)).materials[0]
    ensemble = Ensemble(MSGNNSettings(hidden=8), TargetScaler((0.0,) * 4, (1.0,) * 4), size=2)
    predictor = KineticsPredictor(ensemble, device="cpu")
    prediction = predictor.query(predictor.embed_material(material), graph, [[40.0, 0.02, 0.0, 300.0]])
    assert torch.isfinite(prediction.graph_mean).all() and prediction.facet_mean.shape == (graph.facet_x.shape[0],)
