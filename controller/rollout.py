"""The batch rolled forward: a moment model in torch, batched over candidates and ensemble members.

Two populations, each by its moments mu_0..mu_5 (um^k per kg of the water charged): the
seeds, and the crystals nucleated in the batch (born at size ~0). The basis is the water, not
the solvent, because antisolvent fed during the batch adds solvent. With size-independent
growth G and nucleation B (method of moments, Randolph & Larson 1988, ch. 3), integrated
exactly over each step with G and B held at their values at its start:

    d mu_0/dt = B (1 + a)  (nuclei only),   d mu_k/dt = k G mu_{k-1}  (k = 1..5, both populations)
    d s/dt = -1000 rho k_v 1e-18 d(mu_3,seeds + mu_3,nuclei)/dt      (solute, g per kg water)
    d a/dt = F_as / (60 W)                                           (antisolvent, kg per kg water)

with a the antisolvent added per kg of water W (F_as in kg/min), the concentration
C = s / (1 + a) g per kg solvent and the solubility in the mixture
C* = C*_water(T) exp(-k_as a / (1 + a)) (log-linear cosolvency, as the simulated plant's reactor). The
kinetics of :class:`controller.kinetics_service.KineticsLaws` per member,

    G = exp(a + g ln sigma + e (1/T_ref - 1/T)) um/min     (0 when sigma <= 0: no dissolution
                                                             term; the proposer keeps sigma > 0)
    B = 10^(c + b log10 sigma + f (1/T_ref - 1/T)) M_T / M_T,ref   per kg solvent per s

sigma = ln(C / C*) and C*_water(T) the material's measured table interpolated as the plant does
(monotone cubic, :class:`MaterialConstants`).
The reactor temperature follows the setpoint (the plant's PID is much faster than the batch).

Decisions rolled out (per candidate): the temperature-setpoint moves, optionally an
antisolvent rate per move, and optionally a scale on the time left for cooling (batch time:
the final hold follows the end of cooling, so cooling sooner ends the batch sooner). With a
scale every candidate keeps the same number of steps and its own step length, which
keeps the rollout differentiable in the scale.

Outcomes at the end of the batch (per candidate and member): volume-weighted mean size d43,
CV of the volume distribution, fines (mass share below ``plan.fines_size_um``, as the plant's
batch record counts them, from a gamma distribution fitted to each population's moments:
:func:`mass_below`), yield (crystallised solute / what the final temperature and solvent allow, seeds
excluded, as the plant's batch record counts it), the peak supersaturation on the way, the
batch time left and the antisolvent added. Fixed steps; everything is differentiable in
the setpoint moves, so ``optimize_acqf`` can use gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from conf.contract.solubility import PchipTable

__all__ = ["BatchPlan", "MaterialConstants", "Outcomes", "PopulationState", "antisolvent_path", "mass_below", "rollout",
           "rollout_supersaturation", "seed_moments", "setpoint_path", "step_moments"]

N_MOMENTS = 6
T_REF_K = 298.15


@dataclass(frozen=True)
class MaterialConstants:
    """What the moment model needs of the material.

    The solubility is the measured table interpolated as the plant interpolates it: the
    contract's monotone piecewise cubic Hermite (:class:`conf.contract.solubility.PchipTable`,
    PCHIP, Fritsch & Carlson 1980) through the points, continued linearly with the end slopes
    outside the table. Numbers in, the shared table evaluates; a tensor in, the same cubic on the
    table's knots and slopes is evaluated in torch (plain arithmetic on a ``searchsorted``
    segment), batched and differentiable in the temperature. (A quadratic in ln C* over 0-80 C
    was off by up to 0.0028 in sigma, a fifth of the metastable width.)

    Attributes:
        density_kg_per_m3: crystal density rho.
        volume_shape_factor: k_v (pi/6: volume-equivalent spheres, as the plant's size axis).
        temperatures_c: measured temperatures, C, strictly increasing (>= 2 points).
        solubilities_g_per_kg: measured C*_water at those temperatures, g per kg water (> 0).
        antisolvent_coefficient: k_as of C* = C*_water exp(-k_as x_as), x_as the antisolvent
            mass fraction of the solvent.
    """

    density_kg_per_m3: float
    volume_shape_factor: float
    temperatures_c: tuple[float, ...]
    solubilities_g_per_kg: tuple[float, ...]
    antisolvent_coefficient: float = 4.0
    _table: PchipTable = field(init=False, repr=False, compare=False)
    _torch_cache: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        t = np.asarray(self.temperatures_c, dtype=float)
        c = np.asarray(self.solubilities_g_per_kg, dtype=float)
        if t.ndim != 1 or t.shape != c.shape or t.size < 2:
            raise ValueError("need matching 1-D temperature and solubility tables of >= 2 points")
        if np.any(np.diff(t) <= 0.0) or np.any(c <= 0.0) or not np.all(np.isfinite(c)):
            raise ValueError("temperatures_c must increase strictly and solubilities_g_per_kg be positive and finite")
        object.__setattr__(self, "temperatures_c", tuple(float(x) for x in t))
        object.__setattr__(self, "solubilities_g_per_kg", tuple(float(x) for x in c))
        object.__setattr__(self, "_table", PchipTable.through(t, c))
        object.__setattr__(self, "_torch_cache", {})

    @classmethod
    def from_table(cls, temperatures_c, solubilities_g_per_kg, density_kg_per_m3: float,
                   volume_shape_factor: float = math.pi / 6.0, antisolvent_coefficient: float = 4.0
                   ) -> "MaterialConstants":
        """From measured solubility points (a process defined as data brings its own).

        Args:
            temperatures_c: (n,) measured temperatures, C, increasing.
            solubilities_g_per_kg: (n,) C*_water there, g per kg water.
            density_kg_per_m3: crystal density.
            volume_shape_factor: k_v.
            antisolvent_coefficient: k_as of the log-linear cosolvency.
        """
        return cls(float(density_kg_per_m3), float(volume_shape_factor), tuple(temperatures_c),
                   tuple(solubilities_g_per_kg), float(antisolvent_coefficient))

    @classmethod
    def for_process(cls, process, antisolvent_coefficient: float = 4.0) -> "MaterialConstants":
        """The constants of a process's material: its own data where the process gives the
        material as data (``material_data``), else the built-in material it names."""
        data = getattr(process, "material_data", None)
        if data is None:
            return cls.for_material(process.material, antisolvent_coefficient=antisolvent_coefficient)
        temps, values = data.solubility_table()
        return cls.from_table(temps, values, data.crystal_density_kg_per_m3, data.volume_shape_factor,
                              antisolvent_coefficient=antisolvent_coefficient)

    @classmethod
    def for_material(cls, name: str, antisolvent_coefficient: float = 4.0) -> "MaterialConstants":
        """A material's table from the materials database (a fitted polynomial is sampled every
        1 K over its range)."""
        from conf.contract.materials import get_material

        m = get_material(name)
        sol = m.solubility
        if sol is None:
            raise ValueError(f"{name} has no solubility: not a solution system")
        if hasattr(sol, "temperatures_c"):
            t, c = sol.temperatures_c, sol.solubility_g_per_kg
        else:
            lo, hi = sol.valid_range_c
            t = np.linspace(lo, hi, int(round(hi - lo)) + 1)
            c = sol.g_per_kg(t)
        return cls.from_table(t, c, m.density_kg_per_m3, math.pi / 6.0, antisolvent_coefficient)

    def water_solubility_g_per_kg(self, temperature_c):
        """C*_water(T), g per kg water: float or array in, numpy out; a tensor in, a tensor out
        (same shape, dtype and device; differentiable in T)."""
        if not isinstance(temperature_c, Tensor):
            return np.clip(self._table(temperature_c), 1e-9, None)
        return self.water_solubility_and_slope(temperature_c)[0]

    def water_solubility_and_slope(self, temperature_c: Tensor) -> tuple[Tensor, Tensor]:
        """(C*_water(T) g per kg water, dC*/dT g per kg water per K) from one table lookup: the
        cubic Hermite segment's value and derivative (tensors of T's shape, dtype and device)."""
        inner, coefficients = self._torch_table(temperature_c.dtype, temperature_c.device)
        x, y, slopes = self._table.x, self._table.y, self._table.slopes
        lo, hi = float(x[0]), float(x[-1])
        t_in = temperature_c
        k = torch.searchsorted(inner, t_in.detach().contiguous(), right=True)
        x0, inv_h, a0, a1, a2, a3 = coefficients[k].unbind(-1)
        s = (torch.clamp(t_in, lo, hi) - x0) * inv_h
        c = ((a3 * s + a2) * s + a1) * s + a0
        slope = ((3.0 * a3 * s + 2.0 * a2) * s + a1) * inv_h
        below, above = t_in < lo, t_in > hi
        if bool((below | above).any()):
            # Outside the table the plant continues with the end slope; so does the model.
            c = torch.where(below, float(y[0]) + float(slopes[0]) * (t_in - lo),
                            torch.where(above, float(y[-1]) + float(slopes[-1]) * (t_in - hi), c))
            slope = torch.where(below, float(slopes[0]), torch.where(above, float(slopes[-1]), slope))
        return torch.clamp(c, 1e-9, None), slope

    def _torch_table(self, dtype, device) -> tuple[Tensor, Tensor]:
        """(inner knots (n - 2,), per segment (n - 1, 6): x_k, 1/h_k and the power coefficients
        a_0..a_3 of the contract's cubic Hermite (conf/contract/solubility.py) in s = (x - x_k)/h_k),
        built once per dtype and device (rebuilding them per call was half a proposal's time)."""
        key = (dtype, str(device))
        cache = self.__dict__.setdefault("_torch_cache", {})  # (unpickled from an older version: none)
        cached = cache.get(key)
        if cached is None:
            x, y, d = self._table.x, self._table.y, self._table.slopes
            h = np.diff(x)
            per_segment = np.stack([x[:-1], 1.0 / h, y[:-1], h * d[:-1],
                                    3.0 * (y[1:] - y[:-1]) - h * (2.0 * d[:-1] + d[1:]),
                                    2.0 * (y[:-1] - y[1:]) + h * (d[:-1] + d[1:])], axis=-1)
            cached = (torch.tensor(x[1:-1], dtype=dtype, device=device),
                      torch.tensor(per_segment, dtype=dtype, device=device))
            cache[key] = cached
        return cached

    def solubility_g_per_kg(self, temperature_c, antisolvent_per_water=0.0):
        """C* in g per kg solvent at a temperature and antisolvent per water (kg/kg)."""
        if isinstance(antisolvent_per_water, Tensor) and not isinstance(temperature_c, Tensor):
            temperature_c = torch.as_tensor(temperature_c, dtype=antisolvent_per_water.dtype,
                                            device=antisolvent_per_water.device)
        fraction = antisolvent_per_water / (1.0 + antisolvent_per_water)
        exponent = -self.antisolvent_coefficient * fraction
        factor = torch.exp(exponent) if isinstance(exponent, Tensor) else np.exp(exponent)
        return self.water_solubility_g_per_kg(temperature_c) * factor

    @property
    def mass_per_um3_kg(self) -> float:
        return self.density_kg_per_m3 * self.volume_shape_factor * 1e-18


@dataclass(frozen=True)
class PopulationState:
    """The estimated state of the batch now (per kg solvent).

    Attributes:
        temperature_c: reactor temperature.
        concentration_g_per_kg: solute concentration, g per kg solvent (what the analyser reads).
        seeds: moments mu_0..mu_5 of the seed population, um^k per kg water.
        nuclei: moments of the nucleated population.
        setpoint_c: the temperature setpoint in force, where a new path starts (None: the
            reactor temperature). Starting from it keeps successive proposals continuous.
        antisolvent_per_water: antisolvent fed so far, kg per kg water.
        antisolvent_rate_kg_per_min: the antisolvent rate setpoint in force.
    """

    temperature_c: float
    concentration_g_per_kg: float
    seeds: tuple[float, ...]
    nuclei: tuple[float, ...]
    setpoint_c: float | None = None
    antisolvent_per_water: float = 0.0
    antisolvent_rate_kg_per_min: float = 0.0

    @property
    def solute_g_per_kg_water(self) -> float:
        return self.concentration_g_per_kg * (1.0 + self.antisolvent_per_water)

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
        charged_concentration_g_per_kg: concentration at the start of the batch (for yield),
            g per kg water (the charge holds no antisolvent).
        move_interval_s: plant seconds per decision move.
        step_s: rollout step (at the full time left; a cooling scale shortens it).
        target_size_um: wanted d43.
        suspension_ref_kg_per_kg: M_T at which the nucleation law holds.
        water_mass_kg: water charged (turns an antisolvent rate into kg per kg water).
        fines_size_um: crystals below this size are fines (the release window's fines maximum
            is their mass share).
    """

    time_left_s: float
    cooling_left_s: float
    final_temperature_c: float
    charged_concentration_g_per_kg: float
    move_interval_s: float
    step_s: float
    target_size_um: float
    suspension_ref_kg_per_kg: float = 0.05
    water_mass_kg: float = 20.0
    fines_size_um: float = 100.0

    @property
    def final_hold_s(self) -> float:
        return max(self.time_left_s - self.cooling_left_s, 0.0)


@dataclass(frozen=True)
class Outcomes:
    """Rollout results: each (n_candidates, n_members) but ``time_left_s`` (n_candidates,).

    ``antisolvent_added`` is the antisolvent fed from now to the end, kg per kg water.
    """

    d43_um: Tensor
    cv: Tensor
    fines: Tensor
    yield_fraction: Tensor
    peak_sigma: Tensor
    time_left_s: Tensor
    antisolvent_added: Tensor


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


def mass_below(moments: Tensor, size_um: float) -> Tensor:
    """Crystal volume (um^3 per kg, the shape of ``moments[..., 3]``) below ``size_um`` of a
    population given by its moments (..., 6): a gamma number density with the population's
    mean and variance, whose volume-weighted density is again gamma, with shape k + 3
    (Randolph & Larson 1988: the moments a PBE keeps do not say where the mass sits, and the
    fines of a release window are a share below a size). An empty population has none."""
    mu0 = moments[..., 0]
    some = mu0 > 1e-12
    safe0 = torch.where(some, mu0, torch.ones_like(mu0))
    mean = (moments[..., 1] / safe0).clamp_min(1e-6)
    var = (moments[..., 2] / safe0 - mean**2).clamp_min(1e-6 * mean**2)
    shape, scale = mean**2 / var, var / mean
    # torch has no derivative of the incomplete gamma in its shape: the optimiser's gradient
    # goes through the scale (the sizes) only
    below = torch.special.gammainc(shape.detach() + 3.0, size_um / scale)
    return torch.where(some, moments[..., 3] * below, torch.zeros_like(mu0))


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


_K_PLUS_ONE = torch.arange(1, N_MOMENTS + 1, dtype=torch.float64)
_ORDER = torch.arange(N_MOMENTS)
#: (6, 6) power k - j of L in row k, column j of the translation matrix (0 above the diagonal)
_POWER_INDEX = (_ORDER[:, None] - _ORDER[None, :]).clamp_min(0)
#: (6, 6) C(k, j) on and below the diagonal, 0 above
_BINOMIAL = torch.tensor([[math.comb(k, j) if j <= k else 0 for j in range(N_MOMENTS)] for k in range(N_MOMENTS)],
                         dtype=torch.float64)


def _translation(powers: Tensor) -> Tensor:
    """The (..., 6, 6) matrix that grows moments by L: mu_k' = sum_j C(k, j) L^(k-j) mu_j, from
    ``powers`` (..., 6) = L^0..L^5 (one batched matrix product then moves a population; a Python
    sum over the 21 terms was a quarter of a proposal's time)."""
    return powers[..., _POWER_INDEX] * _BINOMIAL.to(powers.dtype)


def step_moments(temperature_c: Tensor, solute: Tensor, seeds: Tensor, nuclei: Tensor, growth: Tensor,
                 nucleation: Tensor, material: MaterialConstants, dt_s, suspension_ref: float,
                 antisolvent: Tensor | float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step, exact for G and B held at their start values. Shapes: temperature/solute (..., S),
    moments (..., S, 6); ``dt_s`` a float
    or a tensor broadcasting against (..., S); ``antisolvent`` kg per kg water (held over the step).

    ``solute`` is g per kg water; without antisolvent that is the concentration.
    Returns (solute, seeds, nuclei, sigma) after the step (sigma at its start).
    """
    solvent = 1.0 + antisolvent  # kg solvent per kg water
    csat = material.solubility_g_per_kg(temperature_c, antisolvent)
    sigma = torch.log((solute / solvent).clamp_min(1e-9) / csat)
    suspension = material.mass_per_um3_kg * (seeds[..., 3] + nuclei[..., 3]) / solvent
    g, b = _kinetics(temperature_c, sigma, suspension, growth, nucleation, suspension_ref)
    # Exact over the step for G and B held constant: growth translates sizes by L = G dt, so
    # mu_k -> sum_j C(k, j) L^(k-j) mu_j, and nuclei born during the step add B dt L^k / (k+1).
    # (Explicit Euler on the moments drifts the variance by O(L^2) a step and loses the CV.)
    length = g * (dt_s if isinstance(dt_s, Tensor) else torch.as_tensor(dt_s, dtype=g.dtype))  # (..., S) um
    powers = torch.stack([length**m for m in range(N_MOMENTS)], dim=-1)  # (..., S, 6)
    births = (b * solvent * dt_s)[..., None] * powers / _K_PLUS_ONE.to(powers.dtype)
    # seeds and nuclei grow by the same L: one matrix, one product for both
    both = _translation(powers) @ torch.stack([seeds, nuclei], dim=-1)  # (..., S, 6, 2)
    seeds_new, nuclei_new = both[..., 0], both[..., 1] + births
    d_mass = material.mass_per_um3_kg * ((seeds_new - seeds)[..., 3] + (nuclei_new - nuclei)[..., 3])
    seeds, nuclei = seeds_new, nuclei_new
    # The solute cannot go below zero: a step that would take more is cut at what is there.
    solute = (solute - 1000.0 * d_mass).clamp_min(1e-6)
    return solute, seeds, nuclei, sigma


def _product(seeds: Tensor, nuclei: Tensor, fines_size_um: float) -> tuple[Tensor, Tensor, Tensor]:
    """d43, CV of the volume distribution and fines mass share of seeds and nuclei together."""
    total = seeds + nuclei
    mu3 = total[..., 3].clamp_min(1e-30)
    d43 = total[..., 4] / mu3
    spread = (total[..., 5] / mu3 - d43**2).clamp_min(1e-12)
    cv = torch.sqrt(spread) / d43.clamp_min(1e-9)
    fines = (mass_below(seeds, fines_size_um) + mass_below(nuclei, fines_size_um)) / mu3
    return d43, cv, fines


def _yield(plan: BatchPlan, solute: Tensor, final_solute: Tensor) -> Tensor:
    """Crystallised solute over what the final solubility allows (seeds excluded)."""
    recoverable = (plan.charged_concentration_g_per_kg - final_solute).clamp_min(1e-9)
    return (plan.charged_concentration_g_per_kg - solute) / recoverable


def setpoint_path(moves_k: Tensor, start_c: float, plan: BatchPlan, times_s: Tensor | None = None,
                  cooling_left_s: Tensor | None = None) -> Tensor:
    """Temperature at each rollout step: the moves, then linear to the final temperature by the
    end of cooling, then held. ``moves_k``: (n, H) K per move; ``times_s`` (n, steps) the step
    ends (default: every ``plan.step_s`` to the end); ``cooling_left_s`` (n,) (default: the
    plan's). Returns (n, n_steps)."""
    n, h = moves_k.shape
    if times_s is None:
        n_steps = max(1, int(math.ceil(plan.time_left_s / plan.step_s)))
        times_s = ((torch.arange(n_steps, dtype=moves_k.dtype) + 1.0) * plan.step_s).expand(n, n_steps)
    if cooling_left_s is None:
        cooling_left_s = torch.full((n,), plan.cooling_left_s, dtype=moves_k.dtype)
    t = times_s
    knots_t = torch.arange(h + 1, dtype=moves_k.dtype) * plan.move_interval_s
    knots_v = start_c + torch.cat([torch.zeros_like(moves_k[:, :1]), torch.cumsum(moves_k, dim=-1)], dim=-1)
    knots_v = knots_v.clamp_min(plan.final_temperature_c)  # never below the final temperature
    # piecewise linear over the moves
    idx = torch.clamp((t / plan.move_interval_s).floor().long(), max=h - 1)
    frac = ((t - knots_t[idx]) / plan.move_interval_s).clamp(0.0, 1.0)
    lo, hi = knots_v.gather(1, idx), knots_v.gather(1, idx + 1)
    in_moves = lo + frac * (hi - lo)
    horizon_s = h * plan.move_interval_s
    end_v = knots_v[:, -1:]
    remaining = (cooling_left_s[:, None] - horizon_s).clamp_min(1e-9)
    after = end_v + (plan.final_temperature_c - end_v) * ((t - horizon_s) / remaining).clamp(0.0, 1.0)
    return torch.where(t <= horizon_s, in_moves, after)


def antisolvent_path(rates_kg_per_min: Tensor, times_s: Tensor, plan: BatchPlan) -> Tensor:
    """Antisolvent rate at given times: one rate per move interval, none after the moves.
    ``rates_kg_per_min`` (n, H), ``times_s`` (n, steps). Returns (n, steps) kg/min."""
    h = rates_kg_per_min.shape[-1]
    idx = (times_s / plan.move_interval_s).floor().long().clamp_min(0)
    inside = idx < h
    return torch.where(inside, rates_kg_per_min.gather(1, idx.clamp(0, h - 1)), torch.zeros_like(times_s))


def rollout(moves_k: Tensor, state: PopulationState, growth: Tensor, nucleation: Tensor,
            material: MaterialConstants, plan: BatchPlan, antisolvent_kg_per_min: Tensor | None = None,
            cooling_scale: Tensor | None = None) -> Outcomes:
    """Roll the batch to its end for n candidates and S members.

    Args:
        moves_k: (n, H) setpoint moves (K per move interval).
        state: the estimated state now.
        growth / nucleation: (S, 3) laws per member.
        antisolvent_kg_per_min: (n, H) antisolvent rate per move interval (None: the rate in
            force for the first move, then none).
        cooling_scale: (n,) share of ``plan.cooling_left_s`` the cooling takes (None: all).
    """
    dtype = moves_k.dtype
    n, s = moves_k.shape[0], growth.shape[0]
    n_steps = max(1, int(math.ceil(plan.time_left_s / plan.step_s)))
    scale = torch.ones(n, dtype=dtype) if cooling_scale is None else cooling_scale.to(dtype).reshape(n)
    cooling_left = plan.cooling_left_s * scale
    time_left = cooling_left + plan.final_hold_s  # (n,)
    dt = time_left / n_steps
    times = (torch.arange(n_steps, dtype=dtype) + 1.0) * dt[:, None]  # (n, steps) step ends
    path = setpoint_path(moves_k, state.path_start_c, plan, times, cooling_left)
    if antisolvent_kg_per_min is None:
        antisolvent_kg_per_min = torch.zeros_like(moves_k)
        antisolvent_kg_per_min[:, 0] = state.antisolvent_rate_kg_per_min
    # kg per kg water per step: the rate at the step's start
    feed = antisolvent_path(antisolvent_kg_per_min.to(dtype), times - dt[:, None], plan) * dt[:, None] / (
        60.0 * plan.water_mass_kg)
    solute = torch.full((n, s), state.solute_g_per_kg_water, dtype=dtype)
    anti = torch.full((n, s), state.antisolvent_per_water, dtype=dtype)
    seeds = torch.tensor(state.seeds, dtype=dtype).expand(n, s, N_MOMENTS)
    nuclei = torch.tensor(state.nuclei, dtype=dtype).expand(n, s, N_MOMENTS)
    growth, nucleation = growth.to(dtype), nucleation.to(dtype)
    peak = torch.full((n, s), -1.0, dtype=dtype)
    dt_ns = dt[:, None]
    for j in range(n_steps):
        temp = path[:, j : j + 1].expand(n, s)
        solute, seeds, nuclei, sigma = step_moments(temp, solute, seeds, nuclei, growth, nucleation, material,
                                                    dt_ns, plan.suspension_ref_kg_per_kg, anti)
        anti = anti + feed[:, j : j + 1]
        peak = torch.maximum(peak, sigma)
    d43, cv, fines = _product(seeds, nuclei, plan.fines_size_um)
    # what the final temperature and solvent allow (the plant's batch record counts yield so)
    final_solute = material.solubility_g_per_kg(torch.full_like(anti, plan.final_temperature_c), anti) * (1.0 + anti)
    yield_fraction = _yield(plan, solute, final_solute)
    return Outcomes(d43, cv, fines, yield_fraction, peak, time_left, anti - state.antisolvent_per_water)


def _temperature_for_solubility(material: MaterialConstants, solubility: Tensor, guess_c: Tensor, low_c: float,
                                high_c: float, iterations: int = 2) -> Tensor:
    """The temperature (C) where C*_water(T) = ``solubility`` (g per kg water), by Newton steps
    from ``guess_c`` with the table's own derivative (C* is smooth and increasing in T, and a
    rollout step moves T by well under a kelvin: two steps leave an error far below the table's;
    the table lookups are the rollout's main cost), clamped to [low_c, high_c]."""
    t = guess_c
    for _ in range(iterations):
        c, slope = material.water_solubility_and_slope(t)
        t = (t - (c - solubility) / slope.clamp_min(1e-6)).clamp(low_c, high_c)
    return t


def rollout_supersaturation(sigma_setpoints: Tensor, hold_s: Tensor, state: PopulationState, growth: Tensor,
                            nucleation: Tensor, material: MaterialConstants, plan: BatchPlan,
                            max_cooling_k_per_min: float, switch_c: float, horizon_s: float,
                            held_s: float = 0.0) -> Outcomes:
    """Roll the batch to its end under supersaturation control (the agent's inner loop) for n
    candidates and S members.

    The inner loop is taken as ideal within its rate limit: each step the reactor is cooled
    towards the temperature at which the solution would sit at the candidate's setpoint,
    C*(T) = C exp(-sigma_sp), by at most ``max_cooling_k_per_min`` and never heated, down to the
    final temperature. The setpoint is ``sigma_setpoints[:, 0]`` above ``switch_c`` and
    ``sigma_setpoints[:, 1]`` below it. A batch ends its final hold ``hold_s`` after it reaches
    the final temperature (each member on its own path: faster growth draws the solute down
    sooner and cools sooner), or at ``horizon_s`` if it never does. No antisolvent.

    Args:
        sigma_setpoints: (n, 2) supersaturation setpoints ln S, before and after ``switch_c``.
        hold_s: (n,) final hold per candidate, plant seconds.
        state / growth / nucleation / material / plan: as :func:`rollout` (the plan gives the
            final temperature and the rollout step).
        max_cooling_k_per_min: the inner loop's fastest cooling.
        switch_c: temperature at which the second setpoint takes over.
        horizon_s: the longest the rollout runs (the batch time limit, say).
        held_s: how long the batch has already held at the final temperature (0: it has not
            reached it); a candidate whose hold is shorter ends at the first step.

    Returns:
        Outcomes with ``time_left_s`` (n, S): plant seconds to each member's end of batch.
    """
    dtype = sigma_setpoints.dtype
    n, s = sigma_setpoints.shape[0], growth.shape[0]
    dt = float(plan.step_s)
    n_steps = max(1, int(math.ceil(horizon_s / dt)))
    final = float(plan.final_temperature_c)
    top = max(float(state.path_start_c), float(state.temperature_c), final) + 1.0
    solute = torch.full((n, s), state.solute_g_per_kg_water, dtype=dtype)
    seeds = torch.tensor(state.seeds, dtype=dtype).expand(n, s, N_MOMENTS).clone()
    nuclei = torch.tensor(state.nuclei, dtype=dtype).expand(n, s, N_MOMENTS).clone()
    growth, nucleation = growth.to(dtype), nucleation.to(dtype)
    temp = torch.full((n, s), float(state.path_start_c), dtype=dtype)
    sp_hot, sp_cold = sigma_setpoints[:, :1].expand(n, s), sigma_setpoints[:, 1:2].expand(n, s)
    hold = hold_s.to(dtype).reshape(n, 1).expand(n, s)
    peak = torch.full((n, s), -1.0, dtype=dtype)
    cooled_at = torch.full((n, s), -float(held_s) if held_s > 0 else math.inf, dtype=dtype)
    ended_at = torch.full((n, s), float(n_steps) * dt, dtype=dtype)
    running = torch.ones((n, s), dtype=torch.bool)
    drop = max_cooling_k_per_min / 60.0 * dt
    for j in range(n_steps):
        t_start = j * dt
        sp = torch.where(temp > switch_c, sp_hot, sp_cold)
        wanted = _temperature_for_solubility(material, solute * torch.exp(-sp), temp, final - 1.0, top)
        new_temp = torch.maximum(torch.minimum(wanted, temp), temp - drop).clamp_min(final)
        new_temp = torch.where(running, new_temp, temp)
        solute_next, seeds_next, nuclei_next, sigma = step_moments(new_temp, solute, seeds, nuclei, growth,
                                                                   nucleation, material, dt,
                                                                   plan.suspension_ref_kg_per_kg)
        keep = running[..., None]
        seeds = torch.where(keep, seeds_next, seeds)
        nuclei = torch.where(keep, nuclei_next, nuclei)
        solute = torch.where(running, solute_next, solute)
        peak = torch.where(running, torch.maximum(peak, sigma), peak)
        temp = new_temp
        reached = running & torch.isinf(cooled_at) & (temp <= final + 1e-6)
        cooled_at = torch.where(reached, torch.full_like(cooled_at, t_start + dt), cooled_at)
        done = running & (t_start + dt >= cooled_at + hold)
        ended_at = torch.where(done, torch.full_like(ended_at, t_start + dt), ended_at)
        running = running & ~done
        if not bool(running.any()):
            break
    d43, cv, fines = _product(seeds, nuclei, plan.fines_size_um)
    yield_fraction = _yield(plan, solute, material.water_solubility_g_per_kg(torch.full_like(solute, final)))
    return Outcomes(d43, cv, fines, yield_fraction, peak, ended_at, torch.zeros_like(solute))
