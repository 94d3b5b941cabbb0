"""The model service: the MS-GNN on its device, answering for one material, with uncertainty.

Each control cycle it is asked once, with the current facet graph (from imaging) and the
current conditions. It answers

- the kinetics at the current conditions: ensemble mean and spread of log10 G, log10 B and
  lambda, and every member's log10 G and log10 B there (for the agent's online correction);
- local kinetic laws per ensemble member, fitted by least squares to one batched query over a
  small grid of temperatures and driving forces around the operating point (DESIGN.md,
  "Keeping scoring cheap"):

      ln G_s   = a_s + g_s ln sigma + e_s (1/T_ref - 1/T)          (G in um/min)
      log10 B_s = c_s + b_s log10 sigma + f_s (1/T_ref - 1/T)       (B per kg solvent per s)

  so the proposer rolls the batch forward with these laws and never calls the network inside
  its optimiser;
- two uncertainties: the guard's (spread of log10 G at the middle of the fitted range) and
  the constraint's (spread of the desupersaturation rate near the metastable limit, from
  log10 G and log10 B together; :func:`constraint_uncertainty`).

The fitted range matters. A power law cannot follow classical nucleation, whose log10 B bends
steeply upwards where primary nucleation sets in: a grid reaching past the metastable limit
fits an exponent near 8 and puts log10 B at the operating point one to two decades above the
network's own answer. So the grid spans the driving forces the batch visits
(:func:`batch_sigma_range`: a fraction of the current sigma up to just past the metastable
limit), is centred on the current sigma (:func:`query_grid`), and the laws are pinned to the
network's answer at the current condition (:func:`fit_laws` with ``anchor``).

The facet graph comes from imaging (:func:`controller.facet_graph.facet_graph_from_imaging`):
the habit the probe observes (facet families and their area fractions; no in-line instrument
measures facet growth rates), with the rate feature the training data give every facet graph,
the face rates at the training reference condition, taken from the network itself
(:meth:`KineticsService.reference_face_rates`, a second pass on the observed habit's graph).
When imaging gives none (an unseeded batch before nuclei show, a clear solution, a plant
without facet signals), it is the material's own habit (:attr:`KineticsEstimate.facet_source`
says which), made as the training data make every observed facet graph, the habit grown at the
training reference condition and observed there, from what the agent knows: the structure's
attachment-energy habit (:func:`models.graphs.structure_habit`) gives the faces, the network's
own face rates at the reference condition on it give the observed rates, and the kinetic Wulff
habit of those rates is the material's habit. Levels 1-2 (atoms, clusters) of the material, in
its pristine defect state (:func:`models.graphs.pristine_material_graph`), are embedded once
and cached by the predictor; a cycle runs only level 3 and the heads. Nothing here needs the
simulated plant: the material is a built-in one of the contract's materials database, or one
given only as data with a structure file (:class:`models.graphs.CrystalStructure`), whose
graphs and facet energetics are built the same way.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from controller.facet_graph import facet_graph_from_imaging
from controller.settings import SetupError

__all__ = ["FacetSource", "KineticsEstimate", "KineticsLaws", "KineticsService", "ModelUnavailable", "PriorKinetics",
           "batch_sigma_range", "constraint_uncertainty", "fit_laws", "query_grid", "self_consistent_rates"]

T_REF_K = 298.15
LN10 = math.log(10.0)
#: Exponent of G in the mass deposited by crystals nucleated during the batch, ~ B G^3 t^4
#: (a population born at rate B, each crystal growing at G: third moment, Randolph & Larson
#: 1988, ch. 3); see :func:`constraint_uncertainty`.
NUCLEATED_MASS_GROWTH_EXPONENT = 3.0


class ModelUnavailable(SetupError):
    """The model cannot answer (no checkpoint, no usable facet graph, non-finite output)."""


class FacetSource(str, enum.Enum):
    """Where the facet graph of an estimate came from."""

    imaging = "imaging"
    material_habit = "material_habit"
    kinetics_prior = "kinetics_prior"  # no network: the process's own power laws (PriorKinetics)


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
        uncertainty_log10_growth: spread of log10 G of the laws at the middle of the fitted
            range (the guard's measure, :attr:`uncertainty`).
        uncertainty_constraint: spread of the desupersaturation rate in decades at the
            constraint's operating point, from log10 G and log10 B of each member
            (:func:`constraint_uncertainty`); NaN if not computed.
        member_log10_growth_um_per_min: every member's log10 G at the current condition, (S,).
        member_log10_nucleation: every member's log10 B at the current condition, (S,).
        query_sigma: driving force the current-condition answer is for: the current one,
            clamped into ``sigma_range`` (the network is not asked outside it).
        sigma_range: (low, high) driving forces the laws were fitted over.
        constraint_sigma: driving force of :attr:`uncertainty_constraint`.
        facet_source: where the facet graph came from (imaging, or the material's habit).
    """

    growth_um_per_min: float
    log10_nucleation: float
    morphology_lambda: float
    spread: dict[str, float]
    laws: KineticsLaws

    uncertainty_log10_growth: float = math.nan
    uncertainty_constraint: float = math.nan
    member_log10_growth_um_per_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    member_log10_nucleation: np.ndarray = field(default_factory=lambda: np.zeros(0))
    query_sigma: float = math.nan
    sigma_range: tuple[float, float] = (math.nan, math.nan)
    constraint_sigma: float = math.nan
    facet_source: FacetSource = FacetSource.imaging

    @property
    def uncertainty(self) -> float:
        """The guard's measure: ensemble spread of log10 G at the reference driving force of the
        query grid (the middle of the range the batch runs in). At the current one it would
        blow up whenever the solution nears saturation, where G -> 0 and every member's log
        differs, although nothing is at stake there."""
        if math.isfinite(self.uncertainty_log10_growth):
            return self.uncertainty_log10_growth
        return self.spread["log10_G"]


def batch_sigma_range(sigma: float, metastable_sigma_limit: float, low_fraction: float = 0.25,
                      limit_margin: float = 0.1) -> tuple[float, float]:
    """The driving forces a cooling batch visits from here: where to fit the local laws.

    From ``low_fraction`` of the current sigma (desupersaturation takes sigma down; the
    current sigma is first clipped into [low_fraction x limit, limit], so that near
    saturation or when undersaturated the range does not reach down to sigma -> 0, where a
    power law in sigma means nothing) up to ``limit_margin`` past the metastable limit (the
    proposals' peak stays below the limit; the margin covers the constraint's slope there,
    and no further, since past it primary nucleation bends log10 B away from any power law).

    Args:
        sigma: current driving force ln(C/C*) (NaN or <= 0 allowed: then as at the floor).
        metastable_sigma_limit: the proposals' supersaturation limit (> 0).
        low_fraction: share of the (clipped) current sigma where the range starts, in (0, 1).
        limit_margin: share of the limit (or of the current sigma, when above it) the range
            reaches past it, >= 0.

    Returns:
        (low, high) with 0 < low < high.
    """
    if not (metastable_sigma_limit > 0 and 0 < low_fraction < 1 and limit_margin >= 0):
        raise ValueError(f"need metastable_sigma_limit > 0, 0 < low_fraction < 1, limit_margin >= 0; got "
                         f"{metastable_sigma_limit}, {low_fraction}, {limit_margin}")
    floor = low_fraction * metastable_sigma_limit
    here = min(max(sigma, floor), metastable_sigma_limit) if math.isfinite(sigma) else floor
    top = max(metastable_sigma_limit, sigma) if math.isfinite(sigma) else metastable_sigma_limit
    return low_fraction * here, (1.0 + limit_margin) * top


def query_grid(temperature_c: float, sigma: float, sigma_range: tuple[float, float], temperatures: int = 3,
               sigmas_per_side: int = 2) -> tuple[np.ndarray, np.ndarray, float]:
    """The conditions the network is asked at to fit the local laws, centred on the current one.

    Driving forces: the current sigma (clamped into the range: the anchor), ``sigmas_per_side``
    log-spaced below it down to the low end and as many above it up to the high end (all on
    one side when the anchor sits on an end). Temperatures: ``temperatures`` from 10 K below
    to 5 K above the current one (a cooling batch spends its time below). The grid is their
    product.

    Args:
        temperature_c: current temperature.
        sigma: current driving force (NaN: the low end).
        sigma_range: (low, high), 0 < low < high.
        temperatures: number of grid temperatures.
        sigmas_per_side: grid driving forces on each side of the anchor.

    Returns:
        (grid temperatures C, (n,); grid driving forces, (n,); anchor sigma), n =
        temperatures x (2 sigmas_per_side + 1).
    """
    low, high = (float(v) for v in sigma_range)
    if not 0 < low < high:
        raise ValueError(f"sigma_range must be (low, high) with 0 < low < high, got {sigma_range}")
    anchor = min(max(sigma, low), high) if math.isfinite(sigma) else low
    k = sigmas_per_side
    below_n = 0 if anchor <= low else (k if anchor < high else 2 * k)
    above_n = 2 * k - below_n
    below = np.geomspace(low, anchor, below_n + 1)[:-1] if below_n else np.zeros(0)
    above = np.geomspace(anchor, high, above_n + 1)[1:] if above_n else np.zeros(0)
    sigmas = np.concatenate([below, [anchor], above])
    temps = np.linspace(temperature_c - 10.0, temperature_c + 5.0, temperatures)
    grid_t, grid_s = (a.ravel() for a in np.meshgrid(temps, sigmas, indexing="ij"))
    return grid_t, grid_s, anchor


def fit_laws(temperatures_c: np.ndarray, sigmas: np.ndarray, members: np.ndarray,
             anchor: int | None = None) -> KineticsLaws:
    """Least-squares power laws per member.

    With ``anchor`` the laws pass exactly through each member's output at that row (the
    current condition, where the rollout starts and where the agent compares the model with
    the plant) and least squares fits only the slopes in ln sigma and 1/T.

    Args:
        temperatures_c: (n,) grid temperatures.
        sigmas: (n,) grid driving forces (> 0).
        members: (S, n, 3) member outputs log10 G, log10 B, lambda.
        anchor: row the laws must reproduce exactly; None for plain least squares.

    Returns:
        The laws, (S, 3) each.
    """
    inv_t = 1.0 / T_REF_K - 1.0 / (np.asarray(temperatures_c, dtype=float) + 273.15)
    ln_sigma = np.log(np.asarray(sigmas, dtype=float))
    design_g = np.stack([np.ones_like(ln_sigma), ln_sigma, inv_t], axis=1)  # (n, 3)
    design_b = np.stack([np.ones_like(ln_sigma), ln_sigma / LN10, inv_t], axis=1)
    ln_g = members[..., 0] * LN10  # (S, n)
    log_b = members[..., 1]
    if anchor is None:
        growth = np.linalg.lstsq(design_g, ln_g.T, rcond=None)[0].T
        nucleation = np.linalg.lstsq(design_b, log_b.T, rcond=None)[0].T
        return KineticsLaws(growth, nucleation)
    return KineticsLaws(_anchored_fit(design_g, ln_g, anchor), _anchored_fit(design_b, log_b, anchor))


def _anchored_fit(design: np.ndarray, y: np.ndarray, anchor: int) -> np.ndarray:
    """Coefficients (S, 3) of y ~ design whose line passes through row ``anchor``.

    Args:
        design: (n, 3), first column ones.
        y: (S, n).
    """
    slopes = np.linalg.lstsq(design[:, 1:] - design[anchor, 1:], (y - y[:, anchor:anchor + 1]).T, rcond=None)[0].T
    intercept = y[:, anchor] - slopes @ design[anchor, 1:]
    return np.column_stack([intercept, slopes])


def constraint_uncertainty(log10_growth: np.ndarray, log10_nucleation: np.ndarray) -> float:
    """Ensemble spread of the desupersaturation rate, in decades, from growth and nucleation.

    The proposal's constraint is the peak supersaturation, set by how fast the crystals take
    the solute up against the cooling: the faster, the lower the peak. Two limits bound that
    rate. Growth on a fixed surface (a seeded batch) takes solute up at a rate ~ G. Crystals
    nucleated in the batch hold a mass ~ B G^3 t^4, so the time to take up a given excess
    goes as (B G^3)^(-1/4) and the rate as (B G^3)^(1/4). The measure is the larger of the two
    ensemble spreads, taken member by member (a member that predicts more nuclei and slower
    growth can agree with one that predicts the opposite):

        max( std_s log10 G_s,  std_s (log10 B_s + 3 log10 G_s) / 4 )

    It is in decades of a rate, like the guard's spread of log10 G, which it equals where
    growth dominates, so one limit serves both.

    Args:
        log10_growth: (S,) log10 G per member at the operating point.
        log10_nucleation: (S,) log10 B per member there.

    Returns:
        The spread (0 for one member).
    """
    log10_g = np.asarray(log10_growth, dtype=float)
    log10_b = np.asarray(log10_nucleation, dtype=float)
    if log10_g.size < 2:
        return 0.0
    nucleated = (log10_b + NUCLEATED_MASS_GROWTH_EXPONENT * log10_g) / (NUCLEATED_MASS_GROWTH_EXPONENT + 1.0)
    return float(max(log10_g.std(ddof=0), nucleated.std(ddof=0)))


class KineticsService:
    """The MS-GNN as the agent uses it (module docstring).

    Args:
        predictor: a :class:`models.msgnn.KineticsPredictor`.
        material: key of the materials database (:data:`conf.contract.materials.MATERIALS`), or
            a :class:`models.graphs.CrystalStructure` (e.g. read from a process's structure file).
        grid_sigmas: (low, high) driving forces of the query grid when :meth:`estimate` is not
            given a ``sigma_range`` (kept for callers that do not know the metastable limit).
        grid_temperatures: temperatures in the grid (spread over -10..+5 K around the current).
        habit_fallback: without a facet graph from imaging, answer on the material's own habit
            (True) or raise :class:`ModelUnavailable` (False).
    """

    def __init__(self, predictor, material, grid_sigmas: tuple[float, float] = (0.003, 0.04),
                 grid_temperatures: int = 3, habit_fallback: bool = True) -> None:
        from models.graphs import crystal_structure, facet_family_properties, pristine_material_graph
        from models.settings import DataSettings

        self.predictor = predictor
        self.structure = crystal_structure(material)
        self.material = self.structure.name
        # The pristine defect state (variant 0 of the training data): the material graph.
        self.material_graph = pristine_material_graph(self.structure, DataSettings().max_atoms)
        self.embedding = predictor.embed_material(self.material_graph)
        self.family_properties = facet_family_properties(self.structure)
        # facet graph (or its faces' normals) -> the fixed point of its reference face rates
        self._reference_rates_cache: dict[bytes, np.ndarray] = {}
        self.material_facets = self._material_habit()
        self.grid_sigmas = grid_sigmas
        self.grid_temperatures = grid_temperatures
        self.habit_fallback = habit_fallback
        self.version = str(predictor.ensemble.info.get("version", "")) if hasattr(predictor.ensemble, "info") else ""

    @classmethod
    def load(cls, checkpoint: str | Path, material, device: str | None = None, **kwargs) -> "KineticsService":
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

    def estimate(self, imaging: Sequence[tuple[float, float]], temperature_c: float, sigma: float,
                 impurity_ppm: float = 0.0, stirring_rpm: float = 300.0, *,
                 sigma_range: tuple[float, float] | None = None,
                 constraint_sigma: float | None = None) -> KineticsEstimate:
        """Kinetics at the current conditions and local laws around them.

        Args:
            imaging: (hkl code, area fraction) per usable slot, the observed habit
                (:func:`controller.facet_graph.imaging_from_values`; may be empty: then the
                material's habit stands in, see ``habit_fallback``).
            temperature_c: current reactor temperature.
            sigma: current driving force ln(C/C*).
            impurity_ppm: impurity in the liquid.
            stirring_rpm: agitator speed.
            sigma_range: (low, high) driving forces to fit the laws over, e.g.
                :func:`batch_sigma_range`; default the service's ``grid_sigmas``.
            constraint_sigma: driving force where the proposal's constraint bites (the
                metastable limit) for :attr:`KineticsEstimate.uncertainty_constraint`;
                default the top of ``sigma_range``.

        Returns:
            The estimate; its laws reproduce each member's answer at the current condition.

        Raises:
            ModelUnavailable: no usable facet graph, or the model's output is not finite.
        """
        if not math.isfinite(temperature_c):
            raise ModelUnavailable("reactor temperature unknown")
        facets = facet_graph_from_imaging(imaging, self.family_properties, self.embedding_directions,
                                          self.reference_face_rates)
        source = FacetSource.imaging
        if facets is None:
            if not self.habit_fallback:
                raise ModelUnavailable("no usable imaging facet statistics for the facet graph")
            facets, source = self.material_facets, FacetSource.material_habit
        low, high = sigma_range if sigma_range is not None else self.grid_sigmas
        grid_t, grid_s, anchor_sigma = query_grid(temperature_c, sigma, (low, high), self.grid_temperatures)
        top = high if constraint_sigma is None else float(constraint_sigma)
        if not (math.isfinite(top) and top > 0):
            raise ValueError(f"constraint_sigma must be a positive driving force, got {constraint_sigma}")
        # Row 0 is the current condition (the anchor of the fit), the rest the grid.
        rows = np.column_stack([
            np.concatenate([[temperature_c], grid_t]),
            np.concatenate([[anchor_sigma], grid_s]),
            np.full(grid_t.size + 1, impurity_ppm),
            np.full(grid_t.size + 1, stirring_rpm),
        ])
        with torch.no_grad():
            pred = self.predictor.query(self.embedding, facets, rows)
        members = pred.graph_members.detach().cpu().double().numpy()  # (S, 1 + n, 3)
        if not np.all(np.isfinite(members)):
            raise ModelUnavailable("the model returned non-finite kinetics")
        now = members[:, 0, :]  # (S, 3)
        laws = fit_laws(rows[:, 0], rows[:, 1], members, anchor=0)
        spread = now.std(axis=0, ddof=0) if now.shape[0] > 1 else np.zeros(3)
        log10_g_ref = np.log10(laws.growth_um_per_min(temperature_c, math.sqrt(low * high)))
        log10_g_top = np.log10(laws.growth_um_per_min(temperature_c, top))
        return KineticsEstimate(
            growth_um_per_min=float(10.0 ** now[:, 0].mean()),
            log10_nucleation=float(now[:, 1].mean()),
            morphology_lambda=float(now[:, 2].mean()),
            spread={"log10_G": float(spread[0]), "log10_B": float(spread[1]), "lambda": float(spread[2])},
            laws=laws,
            uncertainty_log10_growth=float(log10_g_ref.std(ddof=0)) if log10_g_ref.size > 1 else 0.0,
            uncertainty_constraint=constraint_uncertainty(log10_g_top, laws.log10_nucleation(temperature_c, top)),
            member_log10_growth_um_per_min=now[:, 0].copy(),
            member_log10_nucleation=now[:, 1].copy(),
            query_sigma=float(anchor_sigma),
            sigma_range=(float(low), float(high)),
            constraint_sigma=top,
            facet_source=source,
        )

    def _material_habit(self):
        """The material's own habit as a facet graph (module docstring); the structure's habit
        with unknown rates where the network gives no usable face rates."""
        from conf.contract.morphology import kinetic_wulff
        from models.graphs import habit_query, structure_habit

        habit = structure_habit(self.structure)
        guess = habit_query(self.structure, habit, np.zeros(habit.num_faces), self.embedding_directions)
        face_rates = self.reference_face_rates(guess)
        if face_rates.shape != (habit.num_faces,) or not np.all(np.isfinite(face_rates) & (face_rates > 0)):
            return guess
        shown = np.flatnonzero(np.bincount(habit.face_family, minlength=len(habit.hkls)) > 0)
        family_rates = np.array([face_rates[habit.face_family == f].mean() for f in shown])
        grown = kinetic_wulff([habit.hkls[f] for f in shown], family_rates)
        return habit_query(self.structure, grown, family_rates[grown.face_family], self.embedding_directions)

    def reference_face_rates(self, facets) -> np.ndarray:
        """The network's growth rate of every face of ``facets`` at the training reference
        condition (um/min, (F,)): the rate feature a facet graph carries in training, where it
        is the rate observed there, a laboratory characterisation of the material.

        The network reads that feature too, so the rates are a fixed point, r = f(graph with
        feature r), solved by damped iteration in log10 from the training set's typical face
        rate (:func:`self_consistent_rates`). One pass from the feature's floor ("unknown")
        is not enough: a face said to grow at 1e-4 um/min is predicted to grow at about that,
        a second, spurious fixed point that put the served KCl growth four decades below the
        plant's (README, "Why the agent tied the recipe").
        """
        from models.graphs import REFERENCE_CONDITION, with_observed_rates

        def one_pass(rates: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                pred = self.predictor.query(self.embedding, with_observed_rates(facets, rates), [REFERENCE_CONDITION])
            return pred.facet_mean.detach().cpu().double().numpy().reshape(-1)

        # The same graph gets the same answer; a graph on the same faces starts from the last
        # solution there (the habit's area fractions move a little from cycle to cycle, the
        # rates hardly): a pass or two instead of a dozen.
        exact = facets.facet_x.numpy().tobytes()
        if exact in self._reference_rates_cache:
            return self._reference_rates_cache[exact].copy()
        faces = np.round(facets.facet_x[:, :3].numpy(), 3).tobytes()
        start = self._reference_rates_cache.get(faces)
        if start is None:
            start = np.full(facets.facet_x.shape[0], 10.0 ** float(self.predictor.ensemble.scaler.mean[3]))
        rates = self_consistent_rates(one_pass, start)
        if np.all(np.isfinite(rates) & (rates > 0)):
            if len(self._reference_rates_cache) > 256:
                self._reference_rates_cache.clear()
            self._reference_rates_cache[faces] = self._reference_rates_cache[exact] = rates
        return rates.copy()

    @property
    def embedding_directions(self) -> np.ndarray:
        return self.material_graph.cluster_direction.numpy()


def self_consistent_rates(one_pass, start_um_per_min: np.ndarray, damping: float = 0.5,
                          tolerance_decades: float = 1e-3, max_passes: int = 40) -> np.ndarray:
    """Fixed point r = one_pass(r) of face rates (um/min, (F,)) by damped iteration in log10.

    log r <- log r + damping (log one_pass(r) - log r), until no face moves by more than
    ``tolerance_decades``; after ``max_passes`` the last iterate is returned (the map of a
    trained network contracts near its fixed point, so the cap is a guard, not a solution).
    An answer that is not finite and positive is returned as it is (the caller treats it as
    unknown).
    """
    rates = np.asarray(start_um_per_min, dtype=float).copy()
    for _ in range(max_passes):
        new = np.asarray(one_pass(rates), dtype=float).reshape(-1)
        if new.shape != rates.shape or not np.all(np.isfinite(new) & (new > 0)):
            return new
        step = np.log10(new) - np.log10(rates)
        rates = rates * 10.0 ** (damping * step)
        if np.max(np.abs(step)) < tolerance_decades:
            return new
    return rates


R_GAS_J_PER_MOL_K = 8.314462618


class PriorKinetics:
    """The process's kinetics prior (power laws in the preset form) as the agent's model, for a
    material the MS-GNN cannot serve (one given only as data, with no structure).

    The preset's laws in s = (C - C*)/C* become the agent's in sigma = ln(C/C*) (s ~ sigma at
    the supersaturations of a controlled batch), one ensemble member:

        ln G = ln k_g + g ln sigma + (E_g/R) (1/T_ref - 1/T)
        log10 B = log10(k_b M_ref^j [M_ref x 1000 / rho on a third-moment basis]) + b log10 sigma
                  + (E_b/R) / ln 10 (1/T_ref - 1/T)

    with M_ref the suspension density the rollout scales B from (linear in M_T: j = 1 is
    assumed there). No spread: the estimator's online corrections adapt it to the plant.

    Args:
        preset: a :class:`conf.contract.process.PowerLawPreset`.
        crystal_density_kg_per_m3: the material's density (a third-moment basis needs it).
        suspension_ref_kg_per_kg: M_ref.
    """

    version = "kinetics_prior"

    def __init__(self, preset, crystal_density_kg_per_m3: float, suspension_ref_kg_per_kg: float = 0.05) -> None:
        if preset.growth_rate_um_per_min <= 0:
            raise ModelUnavailable("the kinetics prior has no growth law (growth_rate_um_per_min = 0)")
        ln_b_ref = math.log(max(preset.nucleation_rate_per_kg_s, 1e-300))
        suspension = suspension_ref_kg_per_kg
        if preset.nucleation_basis == "third_moment":
            # crystal volume per solvent volume, the solvent at 1000 kg/m3 (the preset's mu_3, the
            # plant's): per kg, as it was, B came out 1000x low and KNO3's correction sat at its bound
            suspension = suspension_ref_kg_per_kg * 1000.0 / crystal_density_kg_per_m3
        ln_b_ref += preset.suspension_exponent * math.log(suspension)
        self.laws = KineticsLaws(
            np.array([[math.log(preset.growth_rate_um_per_min), preset.growth_exponent,
                       preset.growth_activation_kj_per_mol * 1e3 / R_GAS_J_PER_MOL_K]]),
            np.array([[ln_b_ref / math.log(10.0), preset.nucleation_exponent,
                       preset.nucleation_activation_kj_per_mol * 1e3 / R_GAS_J_PER_MOL_K / math.log(10.0)]]),
        )
        self.name = preset.name

    def estimate(self, imaging, temperature_c: float, sigma: float, impurity_ppm: float = 0.0,
                 stirring_rpm: float = 300.0, **_: object) -> KineticsEstimate:
        """The prior at the current conditions (the arguments the MS-GNN service takes)."""
        if not math.isfinite(temperature_c):
            raise ModelUnavailable("reactor temperature unknown")
        s = sigma if math.isfinite(sigma) and sigma > 0 else 1e-3
        log10_g = float(np.log10(self.laws.growth_um_per_min(temperature_c, s))[0])
        log10_b = float(self.laws.log10_nucleation(temperature_c, s)[0])
        return KineticsEstimate(10.0**log10_g, log10_b, math.nan, {"log10_G": 0.0, "log10_B": 0.0, "lambda": 0.0},
                                self.laws, uncertainty_log10_growth=0.0, uncertainty_constraint=0.0,
                                member_log10_growth_um_per_min=np.array([log10_g]),
                                member_log10_nucleation=np.array([log10_b]), query_sigma=s,
                                facet_source=FacetSource.kinetics_prior)
