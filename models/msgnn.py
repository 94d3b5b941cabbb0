"""The multi-scale graph neural network (MS-GNN), its deep ensemble, checkpoints and serving.

Information flows up three levels (DESIGN.md):

1. message passing on the bonds of the atom graph (GINE convolutions with bond features);
2. pooling of atoms into their clusters (given assignment; mean or learned attention weights),
   then message passing on the cluster adjacency graph;
3. attentive cross-scale messages cluster -> facet (GATv2 with edge features, bipartite, no
   self loops), then message passing on the facet graph (GATv2);

then heads: per facet (growth rate) and per graph (G, log10 B, lambda) from a readout of the
facets and the material's clusters. Conditions (T, driving force, impurity, stirring) enter
every facet and the graph head as global features.

Levels 1-2 depend only on the material in its defect state: :meth:`MSGNN.embed` computes them
once and :meth:`MSGNN.head` runs level 3 and the heads for any facet graph and conditions, so
the controller's per-cycle query costs only the small facet graph (:class:`KineticsPredictor`).

Uncertainty: a deep ensemble (independently initialised and trained members); the spread of
the members is the epistemic uncertainty, exposed to BoTorch as an ``EnsembleModel``.

Checkpoints are a safetensors file of every member's tensors plus a JSON file with the
settings, feature names and target scaling: loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn import GATv2Conv, GINEConv, GraphConv
from torch_geometric.utils import scatter, softmax

from models.graphs import (
    ATOM_FEATURES,
    BOND_FEATURES,
    CLUSTER_FEATURES,
    CONDITION_FEATURES,
    CROSS_FEATURES,
    FACET_FEATURES,
    GRAPH_TARGETS,
    MaterialGraph,
    MultiScaleDataset,
    Query,
    normalise_conditions,
)
from models.settings import MSGNNSettings

__all__ = [
    "Batch",
    "CheckpointError",
    "Ensemble",
    "KineticsPredictor",
    "MSGNN",
    "MSGNNSettings",
    "Prediction",
    "TargetScaler",
    "collate",
    "default_device",
]

#: Targets the ensemble reports, in physical units: G (um/min), log10 B, lambda, facet R (um/min).
TARGETS = (*GRAPH_TARGETS, "facet_R")


def default_device() -> torch.device:
    """``cuda`` when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- batching
@dataclass
class Batch:
    """Samples collated for the model: each distinct material once, its samples sharing it.

    Material level (M materials): atom_x (N_a, F_a), bond_index (2, E_b), bond_attr (E_b, 2),
    atom_cluster (N_a,), cluster_x (N_c, F_c), cluster_index (2, E_c), cluster_material (N_c,).
    Query level (B samples): facet_x (N_f, F_f), facet_index (2, E_f), cross_index (2, E_x) as
    (cluster, facet), cross_attr (E_x, 2), facet_sample (N_f,), conditions (B, 4),
    sample_material (B,); targets y (B, 3) and facet_y (N_f,) when known.
    """

    atom_x: Tensor
    bond_index: Tensor
    bond_attr: Tensor
    atom_cluster: Tensor
    cluster_x: Tensor
    cluster_index: Tensor
    cluster_material: Tensor
    facet_x: Tensor
    facet_index: Tensor
    cross_index: Tensor
    cross_attr: Tensor
    facet_sample: Tensor
    conditions: Tensor
    sample_material: Tensor
    y: Tensor | None = None
    facet_y: Tensor | None = None

    @property
    def num_materials(self) -> int:
        return int(self.cluster_material.max()) + 1 if self.cluster_material.numel() else 0

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()})


def collate_parts(materials: Sequence[MaterialGraph], queries: Sequence[Query],
                  material_slot: Sequence[int]) -> Batch:
    """Batch of ``queries``; ``material_slot[i]`` is the position of query i's material in ``materials``."""
    atom_x, bond_index, bond_attr, atom_cluster = [], [], [], []
    cluster_x, cluster_index, cluster_material, cluster_offset = [], [], [], []
    n_atoms = n_clusters = 0
    for slot, m in enumerate(materials):
        atom_x.append(m.atom_x)
        bond_index.append(m.bond_index + n_atoms)
        bond_attr.append(m.bond_attr)
        atom_cluster.append(m.atom_cluster + n_clusters)
        cluster_x.append(m.cluster_x)
        cluster_index.append(m.cluster_index + n_clusters)
        cluster_material.append(torch.full((m.cluster_x.shape[0],), slot, dtype=torch.long))
        cluster_offset.append(n_clusters)
        n_atoms += m.atom_x.shape[0]
        n_clusters += m.cluster_x.shape[0]
    facet_x, facet_index, cross_index, cross_attr, facet_sample = [], [], [], [], []
    conditions, ys, facet_ys = [], [], []
    n_facets = 0
    for b, (q, slot) in enumerate(zip(queries, material_slot)):
        nf = q.facet_x.shape[0]
        facet_x.append(q.facet_x)
        facet_index.append(q.facet_index + n_facets)
        shift = torch.tensor([[cluster_offset[slot]], [n_facets]], dtype=torch.long)
        cross_index.append(q.cross_index + shift)
        cross_attr.append(q.cross_attr)
        facet_sample.append(torch.full((nf,), b, dtype=torch.long))
        conditions.append(q.conditions)
        ys.append(q.y)
        facet_ys.append(q.facet_y)
        n_facets += nf
    return Batch(
        atom_x=torch.cat(atom_x), bond_index=torch.cat(bond_index, 1), bond_attr=torch.cat(bond_attr),
        atom_cluster=torch.cat(atom_cluster), cluster_x=torch.cat(cluster_x),
        cluster_index=torch.cat(cluster_index, 1), cluster_material=torch.cat(cluster_material),
        facet_x=torch.cat(facet_x), facet_index=torch.cat(facet_index, 1), cross_index=torch.cat(cross_index, 1),
        cross_attr=torch.cat(cross_attr), facet_sample=torch.cat(facet_sample),
        conditions=torch.stack(conditions), sample_material=torch.tensor(list(material_slot), dtype=torch.long),
        y=torch.stack(ys), facet_y=torch.cat(facet_ys),
    )


def collate(dataset: MultiScaleDataset, indices: Sequence[int]) -> Batch:
    """Batch of samples ``indices``; a material used by several of them is embedded once."""
    queries = [dataset.queries[i] for i in indices]
    slots: dict[int, int] = {}
    for q in queries:
        slots.setdefault(q.material_index, len(slots))
    materials = [dataset.materials[k] for k in slots]
    return collate_parts(materials, queries, [slots[q.material_index] for q in queries])


def collate_heterodata(items: Sequence) -> Batch:
    """Batch of ``HeteroData`` samples (as :meth:`MultiScaleDataset.heterodata` makes them).

    Each sample brings its own atoms and clusters (no sharing): the general path for graphs
    that did not come from a :class:`MultiScaleDataset`.
    """
    materials, queries = [], []
    for k, d in enumerate(items):
        n_clusters = d["cluster"].x.shape[0]
        materials.append(MaterialGraph(
            key=str(k), material=str(getattr(d, "material", "")), family=str(getattr(d, "family", "")),
            atom_x=d["atom"].x, bond_index=d["atom", "bond", "atom"].edge_index,
            bond_attr=d["atom", "bond", "atom"].edge_attr, atom_cluster=d["atom", "in", "cluster"].edge_index[1],
            cluster_x=d["cluster"].x, cluster_index=d["cluster", "near", "cluster"].edge_index,
            cluster_direction=torch.zeros(n_clusters, 3), descriptors=torch.zeros(0),
        ))
        nf = d["facet"].x.shape[0]
        y = d.y.reshape(-1) if getattr(d, "y", None) is not None else torch.zeros(len(GRAPH_TARGETS))
        facet_y = d["facet"].y if "y" in d["facet"] else torch.zeros(nf)
        queries.append(Query(k, d["facet"].x, d["facet", "adjacent", "facet"].edge_index,
                             d["cluster", "feeds", "facet"].edge_index, d["cluster", "feeds", "facet"].edge_attr,
                             d.conditions.reshape(-1), torch.zeros(4), y, facet_y))
    return collate_parts(materials, queries, list(range(len(queries))))


# ----------------------------------------------------------------------------- the network
class MSGNN(nn.Module):
    """One member of the ensemble (see the module docstring for the levels)."""

    def __init__(self, settings: MSGNNSettings = MSGNNSettings()) -> None:
        super().__init__()
        self.settings = settings
        h = settings.hidden
        act = nn.SiLU
        self.drop = nn.Dropout(settings.dropout)
        self.atom_in = nn.Linear(len(ATOM_FEATURES), h)
        self.atom_convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(h, h), act(), nn.Linear(h, h)), edge_dim=len(BOND_FEATURES))
            for _ in range(settings.atom_layers)
        )
        self.pool_score = nn.Linear(h, 1) if settings.pooling == "attention" else None
        self.cluster_in = nn.Linear(h + len(CLUSTER_FEATURES), h)
        self.cluster_convs = nn.ModuleList(GraphConv(h, h, aggr="mean") for _ in range(settings.cluster_layers))
        n_cond = len(CONDITION_FEATURES)
        self.facet_in = nn.Linear(len(FACET_FEATURES) + n_cond + h, h)
        self.cross = (
            GATv2Conv((h, h), h, heads=settings.heads, concat=False, edge_dim=len(CROSS_FEATURES),
                      add_self_loops=False)  # NOTES: self loops on bipartite edges are fake i->i edges
            if settings.cross_scale else None
        )
        self.facet_convs = nn.ModuleList(
            GATv2Conv(h, h, heads=settings.heads, concat=False) for _ in range(settings.facet_layers)
        )
        # The facet head also sees the face's raw features: its observed rate is the strongest
        # single clue to its new rate, and a residual stack should not have to carry it.
        self.facet_head = nn.Sequential(nn.Linear(h + len(FACET_FEATURES) + n_cond, h), act(), nn.Linear(h, 1))
        self.graph_head = nn.Sequential(nn.Linear(3 * h + n_cond, h), act(), nn.Linear(h, len(GRAPH_TARGETS)))
        self.act = act()

    def embed(self, b: Batch) -> Tensor:
        """Levels 1-2: cluster embeddings, (N_clusters, hidden)."""
        h = self.act(self.atom_in(b.atom_x))
        for conv in self.atom_convs:
            h = h + self.drop(self.act(conv(h, b.bond_index, b.bond_attr)))
        n_clusters = b.cluster_x.shape[0]
        if self.pool_score is not None:
            w = softmax(self.pool_score(h), b.atom_cluster, num_nodes=n_clusters)
            pooled = scatter(w * h, b.atom_cluster, dim=0, dim_size=n_clusters, reduce="sum")
        else:
            pooled = scatter(h, b.atom_cluster, dim=0, dim_size=n_clusters, reduce="mean")
        c = self.act(self.cluster_in(torch.cat([pooled, b.cluster_x], dim=1)))
        for conv in self.cluster_convs:
            c = c + self.drop(self.act(conv(c, b.cluster_index)))
        return c

    def head(self, cluster_h: Tensor, b: Batch) -> tuple[Tensor, Tensor]:
        """Level 3 and the heads.

        Returns:
            (graph outputs (B, 3), facet outputs (N_f,)), in scaled target units.
        """
        n_materials = int(b.cluster_material.max()) + 1
        material_h = scatter(cluster_h, b.cluster_material, dim=0, dim_size=n_materials, reduce="mean")
        sample_h = material_h[b.sample_material]  # (B, h)
        cond_f = b.conditions[b.facet_sample]
        f = self.act(self.facet_in(torch.cat([b.facet_x, cond_f, sample_h[b.facet_sample]], dim=1)))
        if self.cross is not None:
            f = f + self.drop(self.act(self.cross((cluster_h, f), b.cross_index, b.cross_attr)))
        for conv in self.facet_convs:
            f = f + self.drop(self.act(conv(f, b.facet_index)))
        facet_out = self.facet_head(torch.cat([f, b.facet_x, cond_f], dim=1)).squeeze(-1)
        n_samples = b.conditions.shape[0]
        f_mean = scatter(f, b.facet_sample, dim=0, dim_size=n_samples, reduce="mean")
        # Area-weighted readout: large faces dominate the habit and the volume growth.
        area = b.facet_x[:, FACET_FEATURES.index("area_fraction")].unsqueeze(1)
        f_area = scatter(area * f, b.facet_sample, dim=0, dim_size=n_samples, reduce="sum")
        graph_out = self.graph_head(torch.cat([f_mean, f_area, sample_h, b.conditions], dim=1))
        return graph_out, facet_out

    def forward(self, b: Batch) -> tuple[Tensor, Tensor]:
        return self.head(self.embed(b), b)


# ----------------------------------------------------------------------------- target scaling
@dataclass(frozen=True)
class TargetScaler:
    """Physical targets <-> the standardised values the networks learn.

    Growth rates span decades, so G and facet R are learned as log10 (floored at 1e-4 um/min);
    every target is then standardised with the training set's mean and standard deviation.

    Attributes:
        mean: per target (G, log10 B, lambda, facet R) in transformed units.
        std: likewise.
    """

    mean: tuple[float, float, float, float]
    std: tuple[float, float, float, float]

    LOG_FLOOR = 1e-4

    @staticmethod
    def _transform_graph(y: Tensor) -> Tensor:
        return torch.stack([torch.log10(y[:, 0].clamp_min(TargetScaler.LOG_FLOOR)), y[:, 1], y[:, 2]], dim=1)

    @classmethod
    def fit(cls, y: Tensor, facet_y: Tensor) -> "TargetScaler":
        g = cls._transform_graph(y)
        f = torch.log10(facet_y.clamp_min(cls.LOG_FLOOR))
        mean = [*g.mean(0).tolist(), float(f.mean())]
        std = [*g.std(0).clamp_min(1e-6).tolist(), max(float(f.std()), 1e-6)]
        return cls(tuple(mean), tuple(std))

    def scale(self, y: Tensor, facet_y: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(self.mean, device=y.device)
        std = torch.tensor(self.std, device=y.device)
        g = (self._transform_graph(y) - mean[:3]) / std[:3]
        f = (torch.log10(facet_y.clamp_min(self.LOG_FLOOR)) - mean[3]) / std[3]
        return g, f

    def unscale_transformed(self, g: Tensor, f: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled outputs -> transformed units (log10 G, log10 B, lambda; log10 R)."""
        mean = torch.tensor(self.mean, device=g.device, dtype=g.dtype)
        std = torch.tensor(self.std, device=g.device, dtype=g.dtype)
        return g * std[:3] + mean[:3], f * std[3] + mean[3]

    @staticmethod
    def to_physical(g_t: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
        """Transformed units -> G (um/min), log10 B, lambda; facet R (um/min)."""
        g = torch.stack([10.0 ** g_t[..., 0], g_t[..., 1], g_t[..., 2]], dim=-1)
        return g, 10.0**f_t


# ----------------------------------------------------------------------------- ensemble + checkpoints
class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not match this code."""


@dataclass
class Prediction:
    """Ensemble prediction in physical units.

    Attributes:
        graph_mean: (B, 3) G (um/min), log10 B, lambda: mean over members of the transformed
            outputs, back-transformed (G is a geometric mean).
        graph_std: (B, 3) member spread in transformed units (log10 G, log10 B, lambda).
        facet_mean: (N_f,) facet growth rate, um/min.
        facet_std: (N_f,) spread of log10 R.
        graph_members: (S, B, 3) every member in transformed units.
    """

    graph_mean: Tensor
    graph_std: Tensor
    facet_mean: Tensor
    facet_std: Tensor
    graph_members: Tensor


class Ensemble(nn.Module):
    """A deep ensemble of :class:`MSGNN` members with their target scaling."""

    def __init__(self, settings: MSGNNSettings, scaler: TargetScaler, size: int = 3, seed: int = 0,
                 info: dict | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.scaler = scaler
        self.info = dict(info or {})
        members = []
        for k in range(size):
            torch.manual_seed(seed * 1000 + k)
            members.append(MSGNN(settings))
        self.members = nn.ModuleList(members)

    @property
    def size(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def embed(self, b: Batch) -> list[Tensor]:
        return [m.embed(b) for m in self.members]

    @torch.no_grad()
    def predict_from_embeddings(self, cluster_h: list[Tensor], b: Batch) -> Prediction:
        outs = [m.head(h, b) for m, h in zip(self.members, cluster_h)]
        g = torch.stack([self.scaler.unscale_transformed(go, fo)[0] for go, fo in outs])
        f = torch.stack([self.scaler.unscale_transformed(go, fo)[1] for go, fo in outs])
        g_mean, f_mean = TargetScaler.to_physical(g.mean(0), f.mean(0))
        std_g = g.std(0) if self.size > 1 else torch.zeros_like(g[0])
        std_f = f.std(0) if self.size > 1 else torch.zeros_like(f[0])
        return Prediction(g_mean, std_g, f_mean, std_f, g)

    @torch.no_grad()
    def predict(self, b: Batch) -> Prediction:
        """Full (uncached) prediction of a batch."""
        self.eval()
        return self.predict_from_embeddings(self.embed(b), b)

    # -- checkpoints -------------------------------------------------------------------------
    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.safetensors`` and ``<path>.json``; returns both paths."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"member{k}.{name}": t.detach().cpu().contiguous()
                   for k, m in enumerate(self.members) for name, t in m.state_dict().items()}
        weights, config = path.with_suffix(".safetensors"), path.with_suffix(".json")
        save_file(tensors, str(weights))
        config.write_text(json.dumps({
            "format": "xtalpilot-msgnn/1",
            "settings": asdict(self.settings),
            "scaler": {"mean": list(self.scaler.mean), "std": list(self.scaler.std)},
            "ensemble_size": self.size,
            "features": {"atom": ATOM_FEATURES, "bond": BOND_FEATURES, "cluster": CLUSTER_FEATURES,
                         "cross": CROSS_FEATURES, "facet": FACET_FEATURES, "conditions": CONDITION_FEATURES},
            "targets": TARGETS,
            "info": self.info,
        }, indent=2))
        return weights, config

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> "Ensemble":
        """Load a checkpoint written by :meth:`save` (safetensors: no unpickling).

        Raises:
            CheckpointError: missing files, another format, or features/tensors that do not match.
        """
        from safetensors.torch import load_file

        path = Path(path)
        weights, config = path.with_suffix(".safetensors"), path.with_suffix(".json")
        for p in (weights, config):
            if not p.is_file():
                raise CheckpointError(f"checkpoint file {p} not found; train one with `xtalpilot train`")
        try:
            meta = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{config}: not a readable JSON checkpoint config ({exc})") from None
        if meta.get("format") != "xtalpilot-msgnn/1":
            raise CheckpointError(f"{config}: format {meta.get('format')!r}, expected 'xtalpilot-msgnn/1'")
        expected = {"atom": ATOM_FEATURES, "bond": BOND_FEATURES, "cluster": CLUSTER_FEATURES,
                    "cross": CROSS_FEATURES, "facet": FACET_FEATURES, "conditions": CONDITION_FEATURES}
        if meta.get("features") != {k: list(v) for k, v in expected.items()}:
            raise CheckpointError(f"{config}: the checkpoint's input features differ from this code's; retrain it")
        try:
            settings = MSGNNSettings(**meta["settings"])
            scaler = TargetScaler(tuple(meta["scaler"]["mean"]), tuple(meta["scaler"]["std"]))
            ensemble = cls(settings, scaler, size=int(meta["ensemble_size"]), info=meta.get("info", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{config}: incomplete or invalid ({exc})") from None
        try:
            tensors = load_file(str(weights))
        except Exception as exc:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
        for k, member in enumerate(ensemble.members):
            prefix = f"member{k}."
            state = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
            try:
                member.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise CheckpointError(f"{weights}: member {k} does not match its settings ({exc})") from None
        ensemble.eval()
        return ensemble.to(device if device is not None else default_device())


# ----------------------------------------------------------------------------- serving
@dataclass
class MaterialEmbedding:
    """Cached levels 1-2 of one material (one tensor per ensemble member).

    Attributes:
        key: the material graph's key.
        cluster_h: per member, (N_clusters, hidden) on the predictor's device.
    """

    key: str
    cluster_h: list[Tensor]


class KineticsPredictor:
    """The model as the controller uses it: resident on its device, material embeddings cached.

    ``embed_material`` runs levels 1-2 once per material state; ``query`` runs only level 3
    and the heads for the current facet graph and one or many conditions.
    """

    def __init__(self, ensemble: Ensemble, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.ensemble = ensemble.to(self.device).eval()
        self._cache: dict[str, MaterialEmbedding] = {}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> "KineticsPredictor":
        return cls(Ensemble.load(path, device), device)

    def embed_material(self, material: MaterialGraph) -> MaterialEmbedding:
        """Levels 1-2 of ``material`` (cached by ``material.key``)."""
        hit = self._cache.get(material.key)
        if hit is None:
            b = _material_only_batch(material).to(self.device)
            hit = MaterialEmbedding(material.key, self.ensemble.embed(b))
            self._cache[material.key] = hit
        return hit

    def query(self, embedding: MaterialEmbedding, facets: Query, conditions_raw: Tensor | np.ndarray) -> Prediction:
        """Level 3 + heads for a facet graph at n conditions.

        Args:
            embedding: from :meth:`embed_material`.
            facets: the current facet graph (its targets and conditions are ignored).
            conditions_raw: (n, 4) temperature C, driving force, impurity ppm, stirring rpm.

        Returns:
            Predictions for the n conditions (facet arrays hold n x N_facets values).
        """
        b = self._query_batch(embedding, facets, conditions_raw)
        return self.ensemble.predict_from_embeddings(embedding.cluster_h, b)

    def predict(self, material: MaterialGraph, facets: Query, conditions_raw: Tensor | np.ndarray) -> Prediction:
        """Uncached path: levels 1-3 from scratch (for checking the cache)."""
        b = self._query_batch(MaterialEmbedding(material.key, []), facets, conditions_raw, material)
        return self.ensemble.predict(b)

    def _query_batch(self, embedding: MaterialEmbedding, facets: Query, conditions_raw, material=None) -> Batch:
        raw = torch.as_tensor(np.asarray(conditions_raw, dtype=float)).reshape(-1, 4)
        conditions = torch.tensor([normalise_conditions(*row.tolist()) for row in raw], dtype=torch.float32)
        n = conditions.shape[0]
        queries = [Query(0, facets.facet_x, facets.facet_index, facets.cross_index, facets.cross_attr,
                         conditions[i], raw[i], torch.zeros(3), torch.zeros(facets.facet_x.shape[0]))
                   for i in range(n)]
        if material is None:
            n_clusters = embedding.cluster_h[0].shape[0]
            b = collate_parts([_cluster_stub(n_clusters)], queries, [0] * n)
        else:
            b = collate_parts([material], queries, [0] * n)
        return b.to(self.device)

    def botorch_model(self, embedding: MaterialEmbedding, facets: Query):
        """A BoTorch ``EnsembleModel`` over raw conditions X (..., q, 4) -> (..., S, q, 3).

        Outputs per member: log10 G (G in um/min), log10 B and lambda. The posterior samples
        members; it is not differentiable in X (the proposer fits local kinetic laws from a
        batched query instead of calling the network inside its optimiser, DESIGN.md).
        """
        from botorch.models.ensemble import EnsembleModel

        predictor = self

        class _KineticsEnsembleModel(EnsembleModel):
            _num_outputs = len(GRAPH_TARGETS)

            def forward(self, X: Tensor) -> Tensor:
                batch_shape, q = X.shape[:-2], X.shape[-2]
                flat = X.reshape(-1, 4).detach().cpu()
                pred = predictor.query(embedding, facets, flat)
                members = pred.graph_members.to(X)  # (S, n, 3), transformed units
                members = members.reshape(members.shape[0], *batch_shape, q, 3)
                return members.movedim(0, -3)  # (..., S, q, 3)

        return _KineticsEnsembleModel()


def _material_only_batch(material: MaterialGraph) -> Batch:
    stub = Query(0, torch.zeros(1, len(FACET_FEATURES)), torch.zeros(2, 0, dtype=torch.long),
                 torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, len(CROSS_FEATURES)),
                 torch.zeros(len(CONDITION_FEATURES)), torch.zeros(4), torch.zeros(3), torch.zeros(1))
    return collate_parts([material], [stub], [0])


def _cluster_stub(n_clusters: int) -> MaterialGraph:
    """A material with only its cluster count: the cached path never reads atoms."""
    return MaterialGraph(
        key="", material="", family="", atom_x=torch.zeros(0, len(ATOM_FEATURES)),
        bond_index=torch.zeros(2, 0, dtype=torch.long), bond_attr=torch.zeros(0, len(BOND_FEATURES)),
        atom_cluster=torch.zeros(0, dtype=torch.long), cluster_x=torch.zeros(n_clusters, len(CLUSTER_FEATURES)),
        cluster_index=torch.zeros(2, 0, dtype=torch.long), cluster_direction=torch.zeros(n_clusters, 3),
        descriptors=torch.zeros(0),
    )


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
