"""The MS-GNN: shapes, cached serving, checkpoints, the BoTorch view, and that it learns."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.data import DataSettings, generate, split
from models.graphs import GRAPH_TARGETS
from models.msgnn import (
    CheckpointError,
    Ensemble,
    KineticsPredictor,
    MSGNN,
    MSGNNSettings,
    TargetScaler,
    collate,
)
from models.train import TrainSettings, evaluate, fit_ensemble

SETTINGS = MSGNNSettings(hidden=16, atom_layers=1, cluster_layers=1, facet_layers=1, heads=2, pooling="attention")


@pytest.fixture(scope="module")
def data():
    return generate(DataSettings(materials=("KCl", "NaCl", "Cu", "Si"), variants_per_material=2,
                                 conditions_per_variant=6, seed=3))


@pytest.fixture(scope="module")
def trained(data):
    s = split(data, "heldout_conditions")
    return fit_ensemble(data, s.train, s.val, SETTINGS, TrainSettings(epochs=4, ensemble_size=2, batch_size=12,
                                                                      device="cpu"))


def test_forward_shapes_and_material_sharing(data):
    b = collate(data, list(range(12)))  # KCl#0 and KCl#1, 6 samples each
    assert b.num_materials == 2 and b.conditions.shape == (12, 4)
    g, f = MSGNN(SETTINGS)(b)
    assert g.shape == (12, len(GRAPH_TARGETS)) and f.shape == (b.facet_x.shape[0],)


def test_the_ablation_has_no_cross_scale_layer():
    with_cross = MSGNN(SETTINGS)
    without = MSGNN(MSGNNSettings(**{**SETTINGS.__dict__, "cross_scale": False}))
    assert with_cross.cross is not None and without.cross is None


def test_training_lowers_the_validation_loss(trained):
    for history in trained.history:
        assert history[-1] < history[0]
    assert trained.ensemble.size == 2


def test_cached_and_uncached_queries_agree(data, trained):
    predictor = KineticsPredictor(trained.ensemble, device="cpu")
    material = data.materials[3]
    facets = next(q for q in data.queries if q.material_index == 3)
    conditions = np.array([[30.0, 0.02, 0.0, 300.0], [45.0, 0.05, 20.0, 400.0]])
    embedding = predictor.embed_material(material)
    assert predictor.embed_material(material) is embedding  # cached
    cached = predictor.query(embedding, facets, conditions)
    full = predictor.predict(material, facets, conditions)
    torch.testing.assert_close(cached.graph_mean, full.graph_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.facet_mean, full.facet_mean, rtol=1e-5, atol=1e-6)
    assert cached.graph_mean.shape == (2, 3) and cached.graph_members.shape == (2, 2, 3)
    assert (cached.graph_std > 0).any()  # two members disagree somewhere


def test_checkpoint_round_trip_is_exact_and_never_unpickles(tmp_path, data, trained):
    weights, config = trained.ensemble.save(tmp_path / "model")
    assert weights.suffix == ".safetensors" and config.suffix == ".json"
    loaded = Ensemble.load(tmp_path / "model", device="cpu")
    b = collate(data, list(range(6)))
    torch.testing.assert_close(loaded.predict(b).graph_mean, trained.ensemble.predict(b).graph_mean)
    # A pickle where the weights should be is refused, not executed.
    weights.write_bytes(pickle.dumps({"member0.x": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match="safetensors"):
        Ensemble.load(tmp_path / "model")
    with pytest.raises(CheckpointError, match="not found"):
        Ensemble.load(tmp_path / "missing")


def test_botorch_sees_the_ensemble_as_a_posterior(data, trained):
    predictor = KineticsPredictor(trained.ensemble, device="cpu")
    embedding = predictor.embed_material(data.materials[0])
    model = predictor.botorch_model(embedding, data.queries[0])
    x = torch.tensor([[[30.0, 0.02, 0.0, 300.0], [40.0, 0.04, 0.0, 300.0]]], dtype=torch.float64)
    posterior = model.posterior(x)
    assert posterior.mean.shape == (1, 2, 3)
    samples = posterior.rsample(torch.Size([4]))
    assert samples.shape == (4, 1, 2, 3)


def test_metrics_are_in_physical_units(data, trained):
    s = split(data, "heldout_conditions")
    metrics = evaluate(trained.ensemble, data, s.test)
    assert set(metrics) == {"G", "log10_B", "lambda", "facet_R"}
    for m in metrics.values():
        assert m["rmse"] >= m["mae"] >= 0


def test_target_scaler_round_trip():
    y = torch.tensor([[1.5, 3.0, 1.2], [0.2, 10.0, 1.4]])
    fy = torch.tensor([0.5, 2.0, 4.0])
    scaler = TargetScaler.fit(y, fy)
    g, f = scaler.scale(y, fy)
    g_phys, f_phys = TargetScaler.to_physical(*scaler.unscale_transformed(g, f))
    torch.testing.assert_close(g_phys, y)
    torch.testing.assert_close(f_phys, fy)


@pytest.mark.parametrize("bad", [dict(pooling="max"), dict(hidden=0), dict(dropout=1.0), dict(facet_layers=-1)])
def test_bad_model_settings_are_refused(bad):
    with pytest.raises(ValueError):
        MSGNNSettings(**bad)


def test_heterodata_samples_give_the_same_predictions_as_the_shared_batch(data, trained):
    from models.msgnn import collate_heterodata

    idx = [0, 1, 7, 13]
    shared = trained.ensemble.predict(collate(data, idx))
    separate = trained.ensemble.predict(collate_heterodata([data.heterodata(i) for i in idx]))
    torch.testing.assert_close(shared.graph_mean, separate.graph_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shared.facet_mean, separate.facet_mean, rtol=1e-5, atol=1e-6)
