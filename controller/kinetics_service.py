"""The model service: the MS-GNN on its device, answering for one material, with uncertainty.

Each control cycle it is asked once, with the current facet graph (from imaging) and the
current conditions. It answers

- the kinetics at the current conditions: ensemble mean and spread of log10 G, log10 B and
  lambda (the spread is the uncertainty the guard checks);
- local kinetic laws per ensemble member, fitted by least squares to one batched query over a
  small grid of temperatures and driving forces around the operating point (DESIGN.md,
  "Keeping scoring cheap"):

      ln G_s   = a_s + g_s ln sigma + e_s (1/T_ref - 1/T)          (G in um/min)
      log10 B_s = c_s + b_s log10 sigma + f_s (1/T_ref - 1/T)       (B per kg solvent per s)

  so the proposer rolls the batch forward with these laws and never calls the network inside
  its optimiser.

Levels 1-2 (atoms, clusters) of the material are embedded once and cached by the predictor;
a cycle runs only level 3 and the heads. The material graph is the pristine defect state of
the material as :func:`models.data.generate` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from controller.facet_graph import facet_graph_from_imaging
from controller.settings import SetupError

__all__ = ["KineticsEstimate", "KineticsLaws", "KineticsService", "ModelUnavailable"]

T_REF_K = 298.15


class ModelUnavailable(SetupError):
    """The model cannot answer (no checkpoint, no usable facet graph, non-finite output)."""


@dataclass(frozen=True)
class KineticsLaws:
    """Local power laws, one row per ensemble member (see the module docstring).

    Attributes:
        growth: (S, 3) a, g, e of ln G (G um/min).
        nucleation: (S, 3) c, b, f of log10 B (B per kg solvent per s).
        reference_temperature_k: T_ref.
    """

    growth: np.ndarray
    nucleation: np.ndarray
    reference_temperature_k: float = T_REF_K

    @property
    def members(self) -> int:
        return int(self.growth.shape[0])

    def growth_um_per_min(self, temperature_c: float, sigma: float) -> np.ndarray:
        """G per member at one condition, (S,)."""
        x = np.array([1.0, math.log(max(sigma, 1e-9)), 1.0 / self.reference_temperature_k
                      - 1.0 / (temperature_c + 273.15)])
        return np.exp(self.growth @ x)

    def log10_nucleation(self, temperature_c: float, sigma: float) -> np.ndarray:
        """log10 B per member at one condition, (S,)."""
        x = np.array([1.0, math.log10(max(sigma, 1e-9)), 1.0 / self.reference_temperature_k
                      - 1.0 / (temperature_c + 273.15)])
        return self.nucleation @ x

    def with_growth_bias(self, ln_bias: float) -> "KineticsLaws":
        """The laws with every member's growth scaled by exp(ln_bias) (online correction)."""
        growth = self.growth.copy()
        growth[:, 0] += ln_bias
        return KineticsLaws(growth, self.nucleation, self.reference_temperature_k)


@dataclass(frozen=True)
class KineticsEstimate:
    """The model's answer for one cycle.

    Attributes:
        growth_um_per_min: ensemble (geometric) mean G at the current conditions.
        log10_nucleation: mean log10 B (per kg solvent per s).
        morphology_lambda: mean lambda.
        spread: ensemble standard deviation per target (log10 G, log10 B, lambda).
        laws: local kinetic laws per member.
    """

    growth_um_per_min: float
    log10_nucleation: float
    morphology_lambda: float
    spread: dict[str, float]
    laws: KineticsLaws

    uncertainty_log10_growth: float = math.nan

    @property
    def uncertainty(self) -> float:
        """The guard's measure: ensemble spread of log10 G at the reference driving force of the
        query grid (the middle of the range the batch runs in). At the current one it would
        blow up whenever the solution nears saturation, where G -> 0 and every member's log
        differs, although nothing is at stake there."""
        if math.isfinite(self.uncertainty_log10_growth):
            return self.uncertainty_log10_growth
        return self.spread["log10_G"]


def fit_laws(temperatures_c: np.ndarray, sigmas: np.ndarray, members: np.ndarray) -> KineticsLaws:
    """Least-squares power laws per member.

    Args:
        temperatures_c: (n,) grid temperatures.
        sigmas: (n,) grid driving forces (> 0).
        members: (S, n, 3) member outputs log10 G, log10 B, lambda.
    """
    inv_t = 1.0 / T_REF_K - 1.0 / (np.asarray(temperatures_c, dtype=float) + 273.15)
    ln_sigma = np.log(np.asarray(sigmas, dtype=float))
    design_g = np.stack([np.ones_like(ln_sigma), ln_sigma, inv_t], axis=1)
    design_b = np.stack([np.ones_like(ln_sigma), ln_sigma / math.log(10.0), inv_t], axis=1)
    ln_g = members[..., 0] * math.log(10.0)  # (S, n)
    log_b = members[..., 1]
    growth = np.linalg.lstsq(design_g, ln_g.T, rcond=None)[0].T
    nucleation = np.linalg.lstsq(design_b, log_b.T, rcond=None)[0].T
    return KineticsLaws(growth, nucleation)


class KineticsService:
    """The MS-GNN as the agent uses it (module docstring).

    Args:
        predictor: a :class:`models.msgnn.KineticsPredictor`.
        material: plant_sim material name.
        grid_sigmas: (low, high) driving forces of the query grid.
        grid_temperatures: temperatures in the grid (spread over +-10 K around the current).
    """

    def __init__(self, predictor, material: str, grid_sigmas: tuple[float, float] = (0.003, 0.04),
                 grid_temperatures: int = 3) -> None:
        from models.data import DataSettings, facet_family_properties, generate

        self.predictor = predictor
        self.material = material
        graph = generate(DataSettings(materials=(material,), variants_per_material=1,
                                      conditions_per_variant=1, label_noise=0.0)).materials[0]
        self.material_graph = graph
        self.embedding = predictor.embed_material(graph)
        self.family_properties = facet_family_properties(material)
        self.grid_sigmas = grid_sigmas
        self.grid_temperatures = grid_temperatures
        self.version = str(predictor.ensemble.info.get("version", "")) if hasattr(predictor.ensemble, "info") else ""

    @classmethod
    def load(cls, checkpoint: str | Path, material: str, device: str | None = None, **kwargs) -> "KineticsService":
        """Load a checkpoint (safetensors + JSON, never unpickled) onto ``device``.

        Raises:
            ModelUnavailable: the checkpoint is missing or does not load; says how to make one.
        """
        from models.msgnn import CheckpointError, KineticsPredictor

        path = Path(checkpoint)
        weights = path.with_suffix(".safetensors")
        if not weights.is_file():
            raise ModelUnavailable(f"no MS-GNN checkpoint at {weights}; make one with `make model` "
                                   "(or `xtalpilot train`), or point agent.checkpoint at yours")
        try:
            predictor = KineticsPredictor.load(weights, device)
        except (CheckpointError, OSError, ValueError) as exc:
            raise ModelUnavailable(f"cannot load the MS-GNN checkpoint {weights}: {exc}") from None
        service = cls(predictor, material, **kwargs)
        service.version = weights.name + ":" + str(int(weights.stat().st_mtime))
        return service

    def estimate(self, imaging: Sequence[tuple[float, float, float]], temperature_c: float, sigma: float,
                 impurity_ppm: float = 0.0, stirring_rpm: float = 300.0) -> KineticsEstimate:
        """Kinetics at the current conditions and local laws around them.

        Raises:
            ModelUnavailable: no usable facet graph, or the model's output is not finite.
        """
        facets = facet_graph_from_imaging(imaging, self.family_properties, self.embedding_directions)
        if facets is None:
            raise ModelUnavailable("no usable imaging facet statistics for the facet graph")
        if not math.isfinite(temperature_c):
            raise ModelUnavailable("reactor temperature unknown")
        lo, hi = self.grid_sigmas
        temps = np.linspace(temperature_c - 10.0, temperature_c + 5.0, self.grid_temperatures)
        sigmas = np.geomspace(lo, hi, 5)
        grid_t, grid_s = (a.ravel() for a in np.meshgrid(temps, sigmas, indexing="ij"))
        current_sigma = min(max(sigma, lo), hi) if math.isfinite(sigma) else lo
        rows = np.column_stack([
            np.concatenate([[temperature_c], grid_t]),
            np.concatenate([[current_sigma], grid_s]),
            np.full(grid_t.size + 1, impurity_ppm),
            np.full(grid_t.size + 1, stirring_rpm),
        ])
        with torch.no_grad():
            pred = self.predictor.query(self.embedding, facets, rows)
        members = pred.graph_members.detach().cpu().double().numpy()  # (S, 1 + n, 3)
        if not np.all(np.isfinite(members)):
            raise ModelUnavailable("the model returned non-finite kinetics")
        now = members[:, 0, :]
        laws = fit_laws(grid_t, grid_s, members[:, 1:, :])
        spread = now.std(axis=0, ddof=0) if now.shape[0] > 1 else np.zeros(3)
        reference_sigma = math.sqrt(lo * hi)
        log10_g_ref = np.log10(laws.growth_um_per_min(temperature_c, reference_sigma))
        return KineticsEstimate(
            growth_um_per_min=float(10.0 ** now[:, 0].mean()),
            log10_nucleation=float(now[:, 1].mean()),
            morphology_lambda=float(now[:, 2].mean()),
            spread={"log10_G": float(spread[0]), "log10_B": float(spread[1]), "lambda": float(spread[2])},
            laws=laws,
            uncertainty_log10_growth=float(log10_g_ref.std(ddof=0)) if log10_g_ref.size > 1 else 0.0,
        )

    @property
    def embedding_directions(self) -> np.ndarray:
        return self.material_graph.cluster_direction.numpy()
