"""Flat baselines: MLP, support-vector regression and a Gaussian process on flat descriptors.

A flat model sees what a materials scientist would tabulate for a sample, not the graphs:

- the material: mean atomic number and mass, mean covalent radius, number of species, cube
  root of the volume per formula unit (the lattice-constant scale), density, mean
  coordination, lattice (cohesive) energy, bond energy, structure family one-hot, and the
  defect state's mean vacancy fraction, dislocation density and planar-defect share;
- the observed habit: number of faces, mean and area-weighted log10 observed face growth rate, area
  fraction per {100}/{110}/{111} family, mean and largest impurity affinity;
- the conditions (temperature, driving force, impurity, stirring);
- for facet growth rates, also the face's own features (normal, area fraction, observed rate,
  surface energy, impurity affinity): one row per face.

Targets are transformed and standardised exactly as for the MS-GNN
(:class:`models.msgnn.TargetScaler`), so validation losses are comparable.
The SVR and the GP fit on at most ``max_points`` rows (their cost grows as n^2 to n^3); the
subsample is drawn with the model's seed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.graphs import FACET_FEATURES, MultiScaleDataset
from models.msgnn import TargetScaler

__all__ = ["FLAT_MODELS", "FlatModel", "flat_features", "make_flat_model"]

FLAT_MODELS = ("mlp", "svr", "gp")
_AREA = FACET_FEATURES.index("area_fraction")
_OBS = FACET_FEATURES.index("log10_observed_rate_um_per_min")
_LANGMUIR = FACET_FEATURES.index("impurity_langmuir_per_ppm_x10")
_SORTED = slice(FACET_FEATURES.index("sorted_abs_normal_0"), FACET_FEATURES.index("sorted_abs_normal_2") + 1)


def _family_of_face(sorted_abs: np.ndarray) -> np.ndarray:
    """0 for {100}, 1 for {110}, 2 for {111} from the sorted |normal| components."""
    nonzero = (sorted_abs > 1e-6).sum(axis=1)
    return nonzero - 1


def flat_features(dataset: MultiScaleDataset, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat rows of samples ``indices``.

    Returns:
        (graph rows (N, D_g), facet rows (sum of faces, D_g + len(FACET_FEATURES)),
        sample of each facet row (sum of faces,)).
    """
    graph_rows, facet_rows, owner = [], [], []
    for n, i in enumerate(indices):
        q = dataset.queries[int(i)]
        m = dataset.materials[q.material_index]
        fx = q.facet_x.numpy().astype(float)
        area = fx[:, _AREA]
        family = _family_of_face(fx[:, _SORTED])
        habit = [
            fx.shape[0] / 26.0,
            float(fx[:, _OBS].mean()),
            float(np.sum(area * fx[:, _OBS])),
            *[float(area[family == k].sum()) for k in range(3)],
            float(fx[:, _LANGMUIR].mean()),
            float(fx[:, _LANGMUIR].max()),
        ]
        row = np.concatenate([m.descriptors.numpy().astype(float), habit, q.conditions.numpy().astype(float)])
        graph_rows.append(row)
        facet_rows.append(np.concatenate([np.repeat(row[None, :], fx.shape[0], axis=0), fx], axis=1))
        owner.append(np.full(fx.shape[0], n))
    return np.stack(graph_rows), np.concatenate(facet_rows), np.concatenate(owner)


def _scaled_targets(dataset: MultiScaleDataset, indices, scaler: TargetScaler) -> tuple[np.ndarray, np.ndarray]:
    qs = [dataset.queries[int(i)] for i in indices]
    g, f = scaler.scale(torch.stack([q.y for q in qs]), torch.cat([q.facet_y for q in qs]))
    return g.numpy().astype(float), f.numpy().astype(float)


class _Standardiser:
    def __init__(self, x: np.ndarray) -> None:
        self.mean = x.mean(0)
        self.std = np.where(x.std(0) > 1e-12, x.std(0), 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


@dataclass
class FlatModel:
    """A fitted flat baseline: one regressor for the graph targets, one for facet rates.

    Attributes:
        kind: mlp, svr or gp.
        params: hyperparameters (see :func:`make_flat_model`).
        scaler: target scaling fitted on the training set.
    """

    kind: str
    params: dict
    scaler: TargetScaler
    _graph: object = None
    _facet: object = None
    _x_graph: _Standardiser | None = None
    _x_facet: _Standardiser | None = None

    def predict_scaled(self, dataset: MultiScaleDataset, indices) -> tuple[np.ndarray, np.ndarray]:
        """Standardised transformed predictions (graph (N, 3), facet (sum of faces,))."""
        xg, xf, _ = flat_features(dataset, indices)
        return self._graph(self._x_graph(xg)), self._facet(self._x_facet(xf)).reshape(-1)

    def predict(self, dataset: MultiScaleDataset, indices) -> tuple[np.ndarray, np.ndarray]:
        """Physical predictions: G (um/min), log10 B, lambda; facet R (um/min)."""
        g, f = self.predict_scaled(dataset, indices)
        g_t, f_t = self.scaler.unscale_transformed(torch.tensor(g), torch.tensor(f))
        g_p, f_p = TargetScaler.to_physical(g_t, f_t)
        return g_p.numpy(), f_p.numpy()

    def val_loss(self, dataset: MultiScaleDataset, indices) -> float:
        """Mean standardised MSE over the four targets (the MS-GNN's validation loss)."""
        g, f = self.predict_scaled(dataset, indices)
        tg, tf = _scaled_targets(dataset, indices, self.scaler)
        return float(np.mean([*((g - tg) ** 2).mean(0), ((f - tf) ** 2).mean()]))


def _fit_mlp(x: np.ndarray, y: np.ndarray, params: dict, seed: int):
    torch.manual_seed(seed)
    hidden, layers = int(params.get("hidden", 128)), int(params.get("layers", 2))
    dropout = float(params.get("dropout", 0.0))
    mods: list[nn.Module] = []
    width = x.shape[1]
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU(), nn.Dropout(dropout)]
        width = hidden
    mods.append(nn.Linear(width, y.shape[1]))
    net = nn.Sequential(*mods)
    xt = torch.tensor(x, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    n = xt.shape[0]
    n_val = max(1, n // 10)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    val, train = perm[:n_val], perm[n_val:]
    opt = torch.optim.AdamW(net.parameters(), lr=float(params.get("learning_rate", 3e-3)),
                            weight_decay=float(params.get("weight_decay", 1e-4)))
    batch = int(params.get("batch_size", 128))
    epochs = int(params.get("epochs", 100))
    best, best_state, since = math.inf, None, 0
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train)
        for k in range(0, order.size, batch):
            idx = order[k: k + batch]
            opt.zero_grad(set_to_none=True)
            loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            v = float(((net(xt[val]) - yt[val]) ** 2).mean())
        if v < best - 1e-6:
            best, best_state, since = v, {k: t.clone() for k, t in net.state_dict().items()}, 0
        else:
            since += 1
            if since > 10:  # early stopping on an internal 10 % hold-out of the training rows
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()

    def predict(xq: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.tensor(xq, dtype=torch.float32)).numpy().astype(float)

    return predict


def _subsample(x: np.ndarray, y: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if x.shape[0] <= max_points:
        return x, y
    idx = np.random.default_rng(seed).choice(x.shape[0], size=max_points, replace=False)
    return x[idx], y[idx]


def _fit_svr(x: np.ndarray, y: np.ndarray, params: dict, seed: int):
    from sklearn.svm import SVR

    x, y = _subsample(x, y, int(params.get("max_points", 3000)), seed)
    models = [SVR(C=float(params.get("C", 10.0)), epsilon=float(params.get("epsilon", 0.05)),
                  gamma=float(params.get("gamma", 0.02))).fit(x, y[:, k]) for k in range(y.shape[1])]
    return lambda xq: np.stack([m.predict(xq) for m in models], axis=1)


def _fit_gp(x: np.ndarray, y: np.ndarray, params: dict, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern, WhiteKernel

    x, y = _subsample(x, y, int(params.get("max_points", 1000)), seed)
    length = float(params.get("length_scale", 3.0))
    base = Matern(length_scale=length, nu=2.5) if params.get("kernel", "matern52") == "matern52" else RBF(length)
    models = []
    for k in range(y.shape[1]):
        kernel = ConstantKernel(1.0) * base + WhiteKernel(float(params.get("noise", 1e-2)))
        gp = GaussianProcessRegressor(kernel=kernel, normalize_y=True, random_state=seed)
        with warnings.catch_warnings():
            # Hyperparameters at their bounds are a legitimate fit (e.g. no noise needed); the
            # search over initial values is BHPO's job.
            warnings.simplefilter("ignore", ConvergenceWarning)
            models.append(gp.fit(x, y[:, k]))
    return lambda xq: np.stack([m.predict(xq) for m in models], axis=1)


_FITTERS = {"mlp": _fit_mlp, "svr": _fit_svr, "gp": _fit_gp}


def make_flat_model(kind: str, dataset: MultiScaleDataset, train_idx, params: dict | None = None,
                    seed: int = 0) -> FlatModel:
    """Fit a flat baseline on ``train_idx``.

    Args:
        kind: ``mlp`` (hidden, layers, dropout, learning_rate, weight_decay, batch_size,
            epochs, at most 100 with early stopping), ``svr`` (C, epsilon, gamma, max_points) or ``gp`` (kernel rbf|matern52,
            length_scale initial value, noise initial value, max_points).
        dataset: samples.
        train_idx: rows to fit.
        params: hyperparameters (defaults above).
        seed: seed of initialisation and subsampling.
    """
    if kind not in _FITTERS:
        raise ValueError(f"unknown flat model {kind!r}; choose one of {FLAT_MODELS}")
    params = dict(params or {})
    train_idx = np.asarray(train_idx, dtype=int)
    qs = [dataset.queries[i] for i in train_idx]
    scaler = TargetScaler.fit(torch.stack([q.y for q in qs]), torch.cat([q.facet_y for q in qs]))
    xg, xf, _ = flat_features(dataset, train_idx)
    tg, tf = _scaled_targets(dataset, train_idx, scaler)
    sg, sf = _Standardiser(xg), _Standardiser(xf)
    fit = _FITTERS[kind]
    model = FlatModel(kind, params, scaler)
    model._x_graph, model._x_facet = sg, sf
    model._graph = fit(sg(xg), tg, params, seed)
    model._facet = fit(sf(xf), tf[:, None], params, seed + 1)
    return model
