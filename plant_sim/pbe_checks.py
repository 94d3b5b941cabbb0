"""Analytic checks of the population-balance solvers (DESIGN "Analytic checks that must hold").

Each check builds a small case, runs the finite-volume model of :mod:`plant_sim.pbe` and
returns one relative error, which the benchmark reports and the tests bound:

- :func:`msmpr_rel_l2_error`: steady MSMPR, n(L) = (B/G) exp(-L/(G tau)) (Randolph &
  Larson 1988, sec. 3.4).
- :func:`growth_translation_rel_error`: size-independent growth translates the
  distribution unchanged.
- :func:`moment_rel_error`: the finite-volume moments agree with the method of moments.

Comparisons are made between like quantities: the finite-volume unknowns are cell
averages, so the exact solutions are averaged over each cell (integrated in closed form)
rather than sampled at the centres. Sampling would add an O(dL^2) error of the metric
itself, of the same order as the scheme's, and hide what the scheme does.

All cases are in SI units; sizes and times are chosen to look like an industrial cooling
crystallizer (G ~ 0.1 um/s, tau ~ 1 h, crystals of a few hundred um).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.integrate import solve_ivp
from scipy.sparse import diags
from scipy.special import erf

from plant_sim.pbe import (
    SizeGrid,
    growth_rhs,
    moment_rhs,
    moments,
    seed_distribution,
    uniform_grid,
)

# MSMPR case.
MSMPR_GROWTH_RATE_M_PER_S = 1e-8
MSMPR_RESIDENCE_TIME_S = 3600.0
MSMPR_NUCLEATION_PER_KG_S = 1e8
# The top edge has zero flux and information only travels up the size axis (G > 0), so
# the pile-up in the last cell cannot reach the compared range 0..5 G tau; 10 G tau keeps
# the top cells at e^-10 of n(0) and the stored distribution physically sensible.
MSMPR_L_MAX_OVER_G_TAU = 10.0
MSMPR_COMPARE_OVER_G_TAU = 5.0
# Start from an empty vessel: the slowest mode is washout, e^-30 ~ 1e-13 after 30 tau.
MSMPR_END_OVER_TAU = 30.0

# Pure-growth translation case: a Gaussian moved 400 um up a 1 mm grid.
TRANSLATION_L_MAX_M = 1e-3
TRANSLATION_MEAN_M = 200e-6
TRANSLATION_STD_M = 40e-6
TRANSLATION_GROWTH_RATE_M_PER_S = 1e-7
TRANSLATION_DURATION_S = 4000.0

# Seeded batch for the moment consistency check.
BATCH_L_MAX_M = 1e-3
BATCH_DURATION_S = 7200.0
BATCH_SEED_MASS_KG_PER_KG = 0.01
BATCH_SEED_MEAN_M = 100e-6
BATCH_SEED_STD_M = 20e-6
BATCH_DENSITY_KG_PER_M3 = 2000.0
BATCH_MEAN_GROWTH_M_PER_S = 5e-8
BATCH_NUCLEATION0_PER_KG_S = 1e6
BATCH_NUCLEATION_DECAY_S = 1800.0
# Nucleation switches on over ~10 min as supersaturation builds after seeding. An abrupt
# burst at t = 0 (onset 0) launches a discontinuous front of nuclei, the limiter's hardest
# case: the moment error then converges at first order (see moment_rel_error).
BATCH_NUCLEATION_ONSET_S = 600.0


def _cell_average_exponential(grid: SizeGrid, amplitude: float, decay_length_m: float) -> np.ndarray:
    """Cell averages of amplitude * exp(-L / l), shape ``(n_classes,)``."""
    e = grid.edges_m
    return amplitude * decay_length_m * (
        np.exp(-e[:-1] / decay_length_m) - np.exp(-e[1:] / decay_length_m)
    ) / grid.widths_m


def _cell_average_gaussian(grid: SizeGrid, mean_m: float, std_m: float, shift_m: float) -> np.ndarray:
    """Cell averages of a unit-area Gaussian moved up by shift_m, zero below L = shift_m.

    That is the exact solution of dn/dt = -G dn/dL with n = 0 flowing in at L = 0:
    n(L, t) = n(L - G t, 0) for L >= G t and 0 below. Shape ``(n_classes,)``.
    """
    lower = np.maximum(grid.edges_m - shift_m, 0.0)
    cdf = 0.5 * erf((lower - mean_m) / (math.sqrt(2.0) * std_m))
    return np.diff(cdf) / grid.widths_m


def _relative_l2(approx: np.ndarray, exact: np.ndarray) -> float:
    return float(np.linalg.norm(approx - exact) / np.linalg.norm(exact))


def msmpr_rel_l2_error(n_classes: int = 200) -> float:
    """Relative L2 error of the finite-volume MSMPR steady state against the analytic one.

    Case: constant G, B and residence time tau, no feed crystals,

        dn/dt = -G dn/dL - n/tau,   G n(0) = B,   steady n(L) = (B/G) exp(-L/(G tau)),

    on a uniform grid over 0..10 G tau. The steady state is reached honestly by integrating
    the semi-discrete ODE from an empty vessel to t = 30 tau (scipy BDF; the Jacobian is
    banded, cells i-2..i+1, which is passed as a sparsity pattern). The discrete steady
    system is not linear (the limiter), so this is simpler than a Newton solve and checks
    that the transient settles. Error: ||n_FV - n_exact||_2 / ||n_exact||_2 over the cells
    with centres in 0..5 G tau, where n_exact is the exact cell average.

    Args:
        n_classes: number of size classes.

    Returns:
        Relative L2 error (dimensionless). About 7e-6 at 200 classes, third order.
    """
    g = MSMPR_GROWTH_RATE_M_PER_S
    tau = MSMPR_RESIDENCE_TIME_S
    b = MSMPR_NUCLEATION_PER_KG_S
    grid = uniform_grid(MSMPR_L_MAX_OVER_G_TAU * g * tau, n_classes)
    inv_tau = 1.0 / tau

    def rhs(_t: float, n: np.ndarray) -> np.ndarray:
        return growth_rhs(n, g, grid, b) - n * inv_tau

    sparsity = diags(
        [1.0, 1.0, 1.0, 1.0], [-2, -1, 0, 1], shape=(n_classes, n_classes), dtype=float
    )
    sol = solve_ivp(
        rhs,
        (0.0, MSMPR_END_OVER_TAU * tau),
        np.zeros(n_classes),
        method="BDF",
        jac_sparsity=sparsity,
        rtol=1e-7,
        atol=1e-9 * b / g,
    )
    if not sol.success:
        raise RuntimeError(f"MSMPR integration failed: {sol.message}")
    exact = _cell_average_exponential(grid, b / g, g * tau)
    compared = grid.centers_m <= MSMPR_COMPARE_OVER_G_TAU * g * tau
    return _relative_l2(sol.y[compared, -1], exact[compared])


def growth_translation_rel_error(n_classes: int = 200) -> float:
    """Relative L2 error of a Gaussian translated by constant growth.

    Case: B = 0, G = 0.1 um/s for 4000 s on a 0..1 mm grid, moving a Gaussian (mean
    200 um, std 40 um, i.e. 8 cells at 200 classes) by 400 um. The exact solution is the
    shifted initial profile; both are cell averages. Time stepping is scipy RK45 with a
    tight tolerance, so the figure is the spatial error: the limiter clips the peak and
    smears it slightly (LeVeque 2002, ch. 6), which is what this check measures.

    Args:
        n_classes: number of size classes.

    Returns:
        Relative L2 error (dimensionless), about 1.4e-2 at 200 classes, second order
        (the limiter flattens the peak, where r < 0 forces phi = 0).
    """
    g = TRANSLATION_GROWTH_RATE_M_PER_S
    grid = uniform_grid(TRANSLATION_L_MAX_M, n_classes)
    initial = _cell_average_gaussian(grid, TRANSLATION_MEAN_M, TRANSLATION_STD_M, 0.0)
    sol = solve_ivp(
        lambda _t, n: growth_rhs(n, g, grid),
        (0.0, TRANSLATION_DURATION_S),
        initial,
        method="RK45",
        rtol=1e-8,
        atol=1e-10 * float(initial.max()),
    )
    if not sol.success:
        raise RuntimeError(f"translation integration failed: {sol.message}")
    exact = _cell_average_gaussian(
        grid, TRANSLATION_MEAN_M, TRANSLATION_STD_M, g * TRANSLATION_DURATION_S
    )
    return _relative_l2(sol.y[:, -1], exact)


def batch_growth_rate_m_per_s(time_s: float) -> float:
    """G(t) of the moment-check batch: a mean rate with a one-hour oscillation (+-50 %)."""
    return BATCH_MEAN_GROWTH_M_PER_S * (1.0 + 0.5 * math.sin(2.0 * math.pi * time_s / 3600.0))


def batch_nucleation_per_kg_s(time_s: float, onset_s: float = BATCH_NUCLEATION_ONSET_S) -> float:
    """B(t) of the moment-check batch, per kg solvent per s.

    B(t) = B0 (1 - exp(-t / t_on)) exp(-t / t_decay): switches on over t_on and decays
    with t_decay = 30 min; t_on = 0 is a burst starting at full rate at t = 0.
    """
    decay = BATCH_NUCLEATION0_PER_KG_S * math.exp(-time_s / BATCH_NUCLEATION_DECAY_S)
    if onset_s <= 0.0:
        return decay
    return decay * -math.expm1(-time_s / onset_s)


def moment_rel_error(
    n_classes: int = 200, nucleation_onset_s: float = BATCH_NUCLEATION_ONSET_S
) -> float:
    """Largest relative difference of mu_0..mu_3 between finite volumes and moments.

    Case: a seeded batch (1 % seed mass, Gaussian 100 +- 20 um, rho = 2000 kg/m3) for 2 h
    with prescribed G(t) (:func:`batch_growth_rate_m_per_s`, 0.05 um/s +- 50 %) and B(t)
    (:func:`batch_nucleation_per_kg_s`, peak ~5e5 per kg per s), no feedback from the
    solute. The finite-volume
    model (:func:`plant_sim.pbe.growth_rhs`) and the moment model
    (:func:`plant_sim.pbe.moment_rhs`, nuclei at L0 = 0) are integrated side by side in one
    scipy RK45 call; the moment model starts from the discrete moments of the initial
    distribution, so the two start identical. mu_0 agrees to round-off (the scheme
    conserves number exactly); the higher moments differ by how the limiter clips the seed
    peak and the leading edge of the nuclei, and mu_3 differs most.

    Args:
        n_classes: number of size classes.
        nucleation_onset_s: t_on of B(t). With 0 the nuclei start at full rate and form a
            discontinuous front; the error at 200 classes then rises from about 2e-3 to
            about 8e-3 and converges at roughly first order instead of second.

    Returns:
        max_k |mu_k^FV - mu_k^MOM| / |mu_k^MOM| at the end, k = 0..3 (dimensionless),
        about 2e-3 at 200 classes.
    """
    grid = uniform_grid(BATCH_L_MAX_M, n_classes)
    n0 = seed_distribution(
        grid,
        BATCH_SEED_MASS_KG_PER_KG,
        BATCH_SEED_MEAN_M,
        BATCH_SEED_STD_M,
        BATCH_DENSITY_KG_PER_M3,
    )
    mu0 = moments(n0, grid, k_max=3)
    # Scale the moment states to O(1) so one relative/absolute tolerance suits both models.
    mu_scale = np.abs(mu0)

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        g = batch_growth_rate_m_per_s(t)
        b = batch_nucleation_per_kg_s(t, nucleation_onset_s)
        dn = growth_rhs(y[:n_classes], g, grid, b)
        dmu = moment_rhs(y[n_classes:] * mu_scale, g, b) / mu_scale
        return np.concatenate((dn, dmu))

    n_scale = float(n0.max())
    atol = np.concatenate((np.full(n_classes, 1e-9 * n_scale), np.full(4, 1e-12)))
    sol = solve_ivp(
        rhs,
        (0.0, BATCH_DURATION_S),
        np.concatenate((n0, mu0 / mu_scale)),
        method="RK45",
        rtol=1e-8,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"batch integration failed: {sol.message}")
    mu_fv = moments(sol.y[:n_classes, -1], grid, k_max=3)
    mu_mom = sol.y[n_classes:, -1] * mu_scale
    return float(np.max(np.abs(mu_fv - mu_mom) / np.abs(mu_mom)))
