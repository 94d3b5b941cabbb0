"""Settings of the models package: frozen dataclasses, importable without torch.

The Hydra schema (conf/schema.py) composes these; the modules that do the work import them.
"""

from __future__ import annotations

from dataclasses import dataclass

from conf.contract.materials import MATERIALS

SPLITS = ("heldout_materials", "heldout_families", "heldout_conditions")
MODELS = ("msgnn", "mlp", "svr", "gp")


@dataclass(frozen=True)
class DataSettings:
    """What :func:`generate` makes.

    Attributes:
        materials: names in the materials database (``conf.contract.materials``); empty for all.
        variants_per_material: defect states per material (the first is pristine).
        conditions_per_variant: samples per defect state.
        label_noise: relative noise of the labels (see the module docstring).
        seed: seed of every draw.
        max_atoms: upper bound on supercell atoms (the largest n^3 repetition that fits).
        temperature_range_c: sampled temperature range.
        driving_force_range: sampled sigma = ln S range.
        impurity_max_ppm: largest impurity concentration (log-uniform from 1 ppm).
        impurity_free_fraction: share of samples without impurity.
        stirring_range_rpm: sampled stirring range.
    """

    materials: tuple[str, ...] = ()
    variants_per_material: int = 8
    conditions_per_variant: int = 24
    label_noise: float = 0.02
    seed: int = 0
    max_atoms: int = 330
    temperature_range_c: tuple[float, float] = (10.0, 70.0)
    driving_force_range: tuple[float, float] = (0.005, 0.08)
    impurity_max_ppm: float = 200.0
    impurity_free_fraction: float = 0.4
    stirring_range_rpm: tuple[float, float] = (100.0, 600.0)

    def __post_init__(self) -> None:
        unknown = [m for m in self.materials if m not in MATERIALS]
        if unknown:
            raise ValueError(f"materials {unknown} are not in the materials database (conf.contract.materials); known: {sorted(MATERIALS)}")
        if self.variants_per_material < 1 or self.conditions_per_variant < 1:
            raise ValueError("variants_per_material and conditions_per_variant must be >= 1")
        if not self.label_noise >= 0:
            raise ValueError(f"label_noise must be >= 0, got {self.label_noise}")
        for name in ("temperature_range_c", "driving_force_range", "stirring_range_rpm"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {(lo, hi)}")
        if not self.driving_force_range[0] > 0:
            raise ValueError("driving_force_range must be positive (growth, not dissolution)")



@dataclass(frozen=True)
class MSGNNSettings:
    """Architecture.

    Attributes:
        hidden: width of every level.
        atom_layers: GINE layers on bonds (level 1).
        cluster_layers: GraphConv layers on the cluster graph (level 2).
        facet_layers: GATv2 layers on the facet graph (level 3).
        heads: attention heads of the cross-scale and facet GATv2 layers (averaged).
        pooling: atom -> cluster pooling, ``mean`` or ``attention`` (learned weights).
        dropout: dropout after every layer.
        cross_scale: use the cluster -> facet messages (False for the ablation).
    """

    hidden: int = 32
    atom_layers: int = 2
    cluster_layers: int = 2
    facet_layers: int = 2
    heads: int = 2
    pooling: str = "mean"
    dropout: float = 0.0
    cross_scale: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "attention"):
            raise ValueError(f"pooling must be mean or attention, got {self.pooling!r}")
        for name in ("hidden", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("atom_layers", "cluster_layers", "facet_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")



@dataclass(frozen=True)
class TrainSettings:
    """Optimisation.

    Attributes:
        epochs: most epochs per member.
        patience: stop after this many epochs without a better validation loss.
        batch_size: samples per step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ensemble_size: members of the deep ensemble.
        seed: seed of initialisation and batch order (member k uses seed * 1000 + k).
        device: ``auto`` (cuda if present), ``cpu`` or ``cuda``.
    """

    epochs: int = 60
    patience: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    ensemble_size: int = 3
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "ensemble_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if not (self.learning_rate > 0 and self.weight_decay >= 0):
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def torch_device(self):
        """The ``torch.device`` to train on."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)



@dataclass(frozen=True)
class SplitSettings:
    """Which split a command uses.

    Attributes:
        name: heldout_materials, heldout_families or heldout_conditions.
        seed: seed of the material choice and of validation.
        n_test_materials: materials held out (heldout_materials).
        family: structure family held out (heldout_families).
        condition_quantile: driving-force quantile above which samples are held out.
    """

    name: str = "heldout_materials"
    seed: int = 0
    n_test_materials: int = 5
    family: str = "fcc"
    condition_quantile: float = 0.8

    def __post_init__(self) -> None:
        if self.name not in SPLITS:
            raise ValueError(f"name must be one of {SPLITS}, got {self.name!r}")
        if not 0.0 < self.condition_quantile < 1.0:
            raise ValueError(f"condition_quantile must be in (0, 1), got {self.condition_quantile}")


@dataclass(frozen=True)
class TuneSettings:
    """``xtalpilot tune``.

    Attributes:
        model: msgnn, mlp, svr or gp.
        method: bo, random, sobol, or all (the three on the same budget, one regret plot).
        trials: trials per search.
        q: trials proposed and run in parallel (worker processes).
        n_init: Sobol trials before the first GP.
        seed: seed of the proposals and of the trained models.
        epochs: MS-GNN epochs per trial.
        output_dir: trial logs, best config and regret plot (resumed when it exists).
    """

    model: str = "msgnn"
    method: str = "all"
    trials: int = 12
    q: int = 2
    n_init: int = 4
    seed: int = 0
    epochs: int = 30
    output_dir: str = "runs/tune"

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.method not in ("bo", "random", "sobol", "all"):
            raise ValueError(f"method must be bo, random, sobol or all, got {self.method!r}")
        if self.trials < 1 or self.q < 1 or self.n_init < 1 or self.epochs < 1:
            raise ValueError("trials, q, n_init and epochs must be >= 1")


@dataclass(frozen=True)
class ModelBenchSettings:
    """``xtalpilot bench model``.

    Attributes:
        seeds: seeds of the final fits (every model, every split).
        trials: BHPO budget per model (the same for all).
        q: parallel trials.
        tune_epochs: MS-GNN epochs per tuning trial.
        epochs: MS-GNN epochs of the final fits.
        bhpo_seeds: seeds of the BO-vs-random comparison.
        bhpo_model: model searched in the BO-vs-random comparison (svr by default: one of its
            trials takes seconds here, an MLP trial about a minute and an MS-GNN trial more).
        learning_curve_fractions: training-set shares of the learning curve.
        output_dir: logs and plots.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    trials: int = 12
    q: int = 2
    tune_epochs: int = 30
    epochs: int = 60
    bhpo_seeds: tuple[int, ...] = (0, 1, 2)
    bhpo_model: str = "svr"
    learning_curve_fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
    output_dir: str = "runs/bench_model"

    def __post_init__(self) -> None:
        if len(self.seeds) < 1 or self.trials < 1 or self.q < 1:
            raise ValueError("need at least one seed, one trial and q >= 1")
        if self.bhpo_model not in MODELS:
            raise ValueError(f"bhpo_model must be one of {MODELS}, got {self.bhpo_model!r}")
        if not all(0.0 < f <= 1.0 for f in self.learning_curve_fractions):
            raise ValueError("learning_curve_fractions must lie in (0, 1]")


@dataclass(frozen=True)
class TrainCommandSettings:
    """``xtalpilot train``: where the checkpoint and the metrics go.

    Attributes:
        checkpoint: path without suffix (``.safetensors`` and ``.json`` are added).
        metrics_file: test metrics JSON.
        progress: progress bars.
    """

    checkpoint: str = "runs/model/msgnn"
    metrics_file: str = "runs/model/metrics.json"
    progress: bool = True
