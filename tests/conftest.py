"""A tiny MS-GNN checkpoint (synthetic data, two epochs) for tests of the agent's model path."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_TRAIN = ["data.materials=[NaCl,KCl,Cu,Si]", "data.variants_per_material=1", "data.conditions_per_variant=6",
              "split.name=heldout_conditions", "train.epochs=2", "train.ensemble_size=2", "msgnn.hidden=8",
              "train_command.progress=false"]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """Path (without suffix) of a 2-member checkpoint trained in a few seconds; its kinetics are
    meaningless, so tests use it for mechanics (shapes, loading, the loop), not for accuracy."""
    from conf.schema import load_config
    from models.train import train_command

    base: Path = tmp_path_factory.mktemp("tiny_model")
    ckpt = base / "msgnn"
    train_command(load_config([*TINY_TRAIN, f"train_command.checkpoint={ckpt}",
                               f"train_command.metrics_file={base / 'metrics.json'}"]))
    return str(ckpt)
