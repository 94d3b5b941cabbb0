"""The batch rolled forward: a moment model in torch, batched over candidates and ensemble members.

Two populations per kg of solvent, each by its moments mu_0..mu_5 (um^k per kg): the seeds,
and the crystals nucleated in the batch (born at size ~0). With size-independent growth G and
nucleation B (method of moments, Randolph & Larson 1988, ch. 3):

    d mu_0/dt = B (nuclei only),   d mu_k/dt = k G mu_{k-1}  (k = 1..5, both populations)
    dC/dt = -1000 rho k_v 1e-18 d(mu_3,seeds + mu_3,nuclei)/dt      (g per kg solvent)

with the kinetics of :class:`controller.kinetics_service.KineticsLaws` per member,

    G = exp(a + g ln sigma + e (1/T_ref - 1/T)) um/min     (0 when sigma <= 0: no dissolution
                                                             term; the proposer keeps sigma > 0)
    B = 10^(c + b log10 sigma + f (1/T_ref - 1/T)) M_T / M_T,ref   per kg solvent per s

sigma = ln(C / C*(T)) and ln C*(T) a quadratic fitted to the material's solubility curve. The
reactor temperature follows the setpoint (the plant's PID is much faster than the batch).

Outcomes at the end of the batch (per candidate and member): volume-weighted mean size d43,
CV of the volume distribution, fines (mass share of the nucleated population, which stays
small), yield (crystallised solute / what the final temperature allows, seeds excluded) and
the peak supersaturation on the way. Explicit Euler with a fixed step; everything is
differentiable in the setpoint moves, so ``optimize_acqf`` can use gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["BatchPlan", "MaterialConstants", "Outcomes", "PopulationState", "rollout", "seed_moments", "step_moments"]

N_MOMENTS = 6
T_REF_K = 298.15


@dataclass(frozen=True)
class MaterialConstants:
    """What the moment model needs of the material.

    Attributes:
        density_kg_per_m3: crystal density rho.
        volume_shape_factor: k_v (pi/6: volume-equivalent spheres, as the plant's size axis).
        solubility_ln: coefficients (p0, p1, p2) of ln C*(T) = p0 + p1 T + p2 T^2, T in C,
            C* in g per kg solvent.
    """

    density_kg_per_m3: float
    volume_shape_factor: float
    solubility_ln: tuple[float, float, float]

    @classmethod
    def for_material(cls, name: str, t_low_c: float = 0.0, t_high_c: float = 80.0) -> "MaterialConstants":
        """Fit ln C* of a plant_sim material over [t_low_c, t_high_c]."""
        from plant_sim.materials import get_material

        m = get_material(name)
        t = np.linspace(t_low_c, t_high_c, 41)
        c = np.asarray(m.solubility.g_per_kg(t), dtype=float)
        p2, p1, p0 = np.polyfit(t, np.log(c), 2)
        return cls(m.density_kg_per_m3, math.pi / 6.0, (float(p0), float(p1), float(p2)))

    def solubility_g_per_kg(self, temperature_c):
        p0, p1, p2 = self.solubility_ln
        lib = torch if isinstance(temperature_c, Tensor) else np
        return lib.exp(p0 + p1 * temperature_c + p2 * temperature_c**2)

    @property
    def mass_per_um3_kg(self) -> float:
        return self.density_kg_per_m3 * self.volume_shape_factor * 1e-18


@dataclass(frozen=True)
class PopulationState:
    """The estimated state of the batch now (per kg solvent).

    Attributes:
        temperature_c: reactor temperature.
        concentration_g_per_kg: solute concentration.
        seeds: moments mu_0..mu_5 of the seed population, um^k per kg.
        nuclei: moments of the nucleated population.
        setpoint_c: the temperature setpoint in force, where a new path starts (None: the
            reactor temperature). Starting from it keeps successive proposals continuous.
    """

    temperature_c: float
    concentration_g_per_kg: float
    seeds: tuple[float, ...]
    nuclei: tuple[float, ...]
    setpoint_c: float | None = None

    @property
    def path_start_c(self) -> float:
        return self.temperature_c if self.setpoint_c is None else self.setpoint_c


@dataclass(frozen=True)
class BatchPlan:
    """Where the batch is and where it must end.

    Attributes:
        time_left_s: plant seconds to the end of the batch.
        cooling_left_s: plant seconds to the end of cooling (<= time_left_s).
        final_temperature_c: temperature at the end of cooling.
        charged_concentration_g_per_kg: concentration at the start of the batch (for yield).
        move_interval_s: plant seconds per decision move.
        step_s: Euler step.
        target_size_um: wanted d43.
        suspension_ref_kg_per_kg: M_T at which the nucleation law holds.
    """

    time_left_s: float
    cooling_left_s: float
    final_temperature_c: float
    charged_concentration_g_per_kg: float
    move_interval_s: float
    step_s: float
    target_size_um: float
    suspension_ref_kg_per_kg: float = 0.05


@dataclass(frozen=True)
class Outcomes:
    """Rollout results, each (n_candidates, n_members)."""

    d43_um: Tensor
    cv: Tensor
    fines: Tensor
    yield_fraction: Tensor
    peak_sigma: Tensor


def seed_moments(mass_kg_per_kg: float, mean_size_um: float, std_size_um: float, material: MaterialConstants
                 ) -> tuple[float, ...]:
    """Moments mu_0..mu_5 (um^k per kg) of a normal seed distribution of the given mass."""
    if mass_kg_per_kg <= 0:
        return (0.0,) * N_MOMENTS
    size = np.linspace(max(mean_size_um - 5 * std_size_um, 0.0), mean_size_um + 5 * std_size_um, 401)
    density = np.exp(-0.5 * ((size - mean_size_um) / max(std_size_um, 1e-9)) ** 2)
    density /= np.trapezoid(density, size)
    raw = [float(np.trapezoid(density * size**k, size)) for k in range(N_MOMENTS)]
    number = mass_kg_per_kg / (material.mass_per_um3_kg * raw[3])
    return tuple(number * r for r in raw)


def _kinetics(temperature_c: Tensor, sigma: Tensor, suspension: Tensor, growth: Tensor, nucleation: Tensor,
              suspension_ref: float) -> tuple[Tensor, Tensor]:
    """G (um/s) and B (per kg per s); laws (S, 3) broadcast against (..., S) states."""
    s = sigma.clamp_min(1e-6)
    inv_t = 1.0 / T_REF_K - 1.0 / (temperature_c + 273.15)
    g = torch.exp(growth[:, 0] + growth[:, 1] * torch.log(s) + growth[:, 2] * inv_t) / 60.0
    log_b = nucleation[:, 0] + nucleation[:, 1] * torch.log10(s) + nucleation[:, 2] * inv_t
    b = torch.pow(10.0, log_b.clamp(max=12.0)) * (suspension / suspension_ref)
    positive = (sigma > 0).to(g.dtype)
    return g * positive, b * positive


def step_moments(temperature_c: Tensor, concentration: Tensor, seeds: Tensor, nuclei: Tensor, growth: Tensor,
                 nucleation: Tensor, material: MaterialConstants, dt_s: float, suspension_ref: float
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Euler step. Shapes: temperature/concentration (..., S), moments (..., S, 6).

    Returns (concentration, seeds, nuclei, sigma) after the step (sigma at its start).
    """
    csat = material.solubility_g_per_kg(temperature_c)
    sigma = torch.log(concentration.clamp_min(1e-9) / csat)
    suspension = material.mass_per_um3_kg * (seeds[..., 3] + nuclei[..., 3])
    g, b = _kinetics(temperature_c, sigma, suspension, growth, nucleation, suspension_ref)
    k = torch.arange(1, N_MOMENTS, dtype=seeds.dtype, device=seeds.device)
    d_seeds = torch.cat([torch.zeros_like(seeds[..., :1]), k * g[..., None] * seeds[..., :-1]], dim=-1)
    d_nuclei = torch.cat([b[..., None], k * g[..., None] * nuclei[..., :-1]], dim=-1)
    seeds = seeds + dt_s * d_seeds
    nuclei = nuclei + dt_s * d_nuclei
    d_mass = material.mass_per_um3_kg * (d_seeds[..., 3] + d_nuclei[..., 3]) * dt_s
    # The solute cannot go below zero: a step that would take more is cut at what is there.
    concentration = (concentration - 1000.0 * d_mass).clamp_min(1e-6)
    return concentration, seeds, nuclei, sigma


def setpoint_path(moves_k: Tensor, start_c: float, plan: BatchPlan) -> Tensor:
    """Temperature at each rollout step: the moves, then linear to the final temperature, then
    held. ``moves_k``: (n, H) K per move. Returns (n, n_steps)."""
    n_steps = max(1, int(math.ceil(plan.time_left_s / plan.step_s)))
    t = (torch.arange(n_steps, dtype=moves_k.dtype) + 1.0) * plan.step_s
    h = moves_k.shape[-1]
    knots_t = torch.arange(h + 1, dtype=moves_k.dtype) * plan.move_interval_s
    knots_v = start_c + torch.cat([torch.zeros_like(moves_k[:, :1]), torch.cumsum(moves_k, dim=-1)], dim=-1)
    knots_v = knots_v.clamp_min(plan.final_temperature_c)  # never below the final temperature
    # piecewise linear over the moves
    idx = torch.clamp((t / plan.move_interval_s).floor().long(), max=h - 1)
    frac = ((t - knots_t[idx]) / plan.move_interval_s).clamp(0.0, 1.0)
    in_moves = knots_v[:, idx] + frac * (knots_v[:, idx + 1] - knots_v[:, idx])
    horizon_s = h * plan.move_interval_s
    end_v = knots_v[:, -1:]
    remaining = max(plan.cooling_left_s - horizon_s, 1e-9)
    after = end_v + (plan.final_temperature_c - end_v) * ((t - horizon_s) / remaining).clamp(0.0, 1.0)
    return torch.where(t <= horizon_s, in_moves, after)


def rollout(moves_k: Tensor, state: PopulationState, growth: Tensor, nucleation: Tensor,
            material: MaterialConstants, plan: BatchPlan) -> Outcomes:
    """Roll the batch to its end for n candidates and S members.

    Args:
        moves_k: (n, H) setpoint moves (K per move interval).
        state: the estimated state now.
        growth / nucleation: (S, 3) laws per member.
    """
    dtype = moves_k.dtype
    n, s = moves_k.shape[0], growth.shape[0]
    path = setpoint_path(moves_k, state.path_start_c, plan)  # (n, steps)
    conc = torch.full((n, s), state.concentration_g_per_kg, dtype=dtype)
    seeds = torch.tensor(state.seeds, dtype=dtype).expand(n, s, N_MOMENTS)
    nuclei = torch.tensor(state.nuclei, dtype=dtype).expand(n, s, N_MOMENTS)
    growth, nucleation = growth.to(dtype), nucleation.to(dtype)
    peak = torch.full((n, s), -1.0, dtype=dtype)
    for j in range(path.shape[1]):
        temp = path[:, j : j + 1].expand(n, s)
        conc, seeds, nuclei, sigma = step_moments(temp, conc, seeds, nuclei, growth, nucleation, material,
                                                  plan.step_s, plan.suspension_ref_kg_per_kg)
        peak = torch.maximum(peak, sigma)
    total = seeds + nuclei
    mu3 = total[..., 3].clamp_min(1e-30)
    d43 = total[..., 4] / mu3
    spread = (total[..., 5] / mu3 - d43**2).clamp_min(1e-12)
    cv = torch.sqrt(spread) / d43.clamp_min(1e-9)
    fines = nuclei[..., 3] / mu3
    final_csat = float(material.solubility_g_per_kg(plan.final_temperature_c))
    recoverable = max(plan.charged_concentration_g_per_kg - final_csat, 1e-9)
    yield_fraction = (plan.charged_concentration_g_per_kg - conc) / recoverable
    return Outcomes(d43, cv, fines, yield_fraction, peak)
