"""Population balance in volume-equivalent size: high-resolution finite volumes and moments.

The reactor (DESIGN step 7) tracks the crystal size distribution through the population
balance of a well-mixed vessel with size-independent growth (Randolph & Larson 1988, ch. 3):

    dn/dt = -d(G n)/dL + B delta(L - L0) - n / tau

with

- ``n(L)``: number density, particles per metre of size per kg solvent;
- ``L``: volume-equivalent sphere diameter in m (crystal volume = k_v L^3);
- ``G``: growth rate in m/s, the same for all sizes, negative for dissolution;
- ``B``: nucleation rate per kg solvent per s, nuclei born at the smallest size L0;
- ``tau``: residence time of a continuous (MSMPR) vessel; a batch has no washout.

Two solvers are provided, and :mod:`plant_sim.pbe_checks` holds the analytic checks that
tie them together:

- :func:`growth_rhs`: conservative finite volumes with the Koren (1993) flux limiter
  (third order where the solution is smooth, total-variation diminishing near fronts;
  LeVeque 2002, ch. 6). The reactor integrates it with its own ODE solver.
- :func:`moment_rhs`: the method of moments, closed for size-independent growth.

References:
    - Randolph, A. D. & Larson, M. A. (1988) Theory of Particulate Processes, 2nd ed.,
      Academic Press (population balance, MSMPR solution, moment equations).
    - Koren, B. (1993) A robust upwind discretization method for advection, diffusion and
      source terms. In Vreugdenhil & Koren (eds.), Numerical Methods for
      Advection-Diffusion Problems, Vieweg, 117-138.
    - LeVeque, R. J. (2002) Finite Volume Methods for Hyperbolic Problems, Cambridge
      University Press (MUSCL reconstruction, flux limiters, TVD).
    - Hundsdorfer, W. & Verwer, J. G. (2003) Numerical Solution of Time-Dependent
      Advection-Diffusion-Reaction Equations, Springer (kappa-schemes and the Koren
      limiter written with r = upwind / downwind difference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

# Moment weights are precomputed up to this order; higher orders are computed on demand.
_CACHED_MOMENT_ORDER = 6

# Relative tolerance on cell widths for a grid to count as uniform. The Koren
# reconstruction below assumes equal widths (its gradient ratio compares differences of
# neighbouring cell averages), so a non-uniform grid would silently lose its accuracy.
_UNIFORM_RTOL = 1e-9


@dataclass(frozen=True, eq=False)
class SizeGrid:
    """Uniform finite-volume grid in crystal size L.

    Cell i spans ``[edges_m[i], edges_m[i+1]]``; the unknowns are cell averages of n(L).
    Everything the right-hand side needs from the grid is precomputed here once, because
    the reactor evaluates :func:`growth_rhs` thousands of times per batch.

    Attributes:
        edges_m: cell edges, shape ``(n_classes + 1,)``, strictly increasing, >= 0.
        centers_m: cell centres, shape ``(n_classes,)`` (derived).
        widths_m: cell widths dL_i, shape ``(n_classes,)`` (derived, all equal).
        width_m: the common cell width dL (derived).
        moment_weights: ``L_i^k dL_i`` for k = 0..6, shape ``(7, n_classes)`` (derived), so
            that ``mu_k = moment_weights[k] @ n``.

    Raises:
        ValueError: if the edges are not strictly increasing, start below zero, or are not
            uniformly spaced, or if there are fewer than 3 classes (the limiter's stencil).
    """

    edges_m: np.ndarray
    centers_m: np.ndarray = field(init=False, repr=False)
    widths_m: np.ndarray = field(init=False, repr=False)
    width_m: float = field(init=False, repr=False)
    moment_weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        edges = np.array(self.edges_m, dtype=float)
        if edges.ndim != 1 or edges.size < 4:
            raise ValueError("SizeGrid needs a 1-D array of at least 4 edges (3 classes)")
        widths = np.diff(edges)
        if np.any(widths <= 0.0) or edges[0] < 0.0:
            raise ValueError("SizeGrid edges must be strictly increasing and >= 0")
        width = float(widths.mean())
        if np.max(np.abs(widths - width)) > _UNIFORM_RTOL * width + 1e-12 * edges[-1]:
            raise ValueError("SizeGrid must be uniform (the Koren limiter assumes equal widths)")
        widths = np.full(widths.shape, width)
        centers = 0.5 * (edges[:-1] + edges[1:])
        powers = np.arange(_CACHED_MOMENT_ORDER + 1)[:, None]
        weights = centers[None, :] ** powers * widths[None, :]
        for array in (edges, centers, widths, weights):
            array.setflags(write=False)
        object.__setattr__(self, "edges_m", edges)
        object.__setattr__(self, "centers_m", centers)
        object.__setattr__(self, "widths_m", widths)
        object.__setattr__(self, "width_m", width)
        object.__setattr__(self, "moment_weights", weights)

    @property
    def n_classes(self) -> int:
        """Number of size classes (cells)."""
        return self.centers_m.size


def uniform_grid(l_max_m: float, n_classes: int, l_min_m: float = 0.0) -> SizeGrid:
    """Uniform grid of ``n_classes`` cells over ``[l_min_m, l_max_m]``.

    Choose ``l_max_m`` well above the largest crystal the run can grow: the top edge has
    zero flux (see :func:`growth_rhs`), so crystals reaching it pile up in the last cell.

    Args:
        l_max_m: upper edge in m.
        n_classes: number of cells (>= 3).
        l_min_m: lower edge in m, where nuclei are born (default 0).

    Returns:
        The grid, with ``edges_m`` of shape ``(n_classes + 1,)``.
    """
    if not l_max_m > l_min_m >= 0.0:
        raise ValueError("need 0 <= l_min_m < l_max_m")
    return SizeGrid(np.linspace(l_min_m, l_max_m, int(n_classes) + 1))


def _koren_slope(upwind_diff: np.ndarray, downwind_diff: np.ndarray) -> np.ndarray:
    """Limited slope phi(r) * d for Koren's limiter, without dividing.

    With r = a/d the ratio of the upwind difference a to the downwind difference d, Koren's
    limiter is phi(r) = max(0, min(2r, (2 + r)/3, 2)); its smooth branch is the
    kappa = 1/3 MUSCL face value n_i + a/6 + d/3 (Koren 1993; Hundsdorfer & Verwer 2003).
    Beware: the form (1 + 2r)/3 quoted in some summaries belongs to the inverse ratio d/a;
    used with r = a/d it gives the kappa = -1/3 face and the MSMPR check drops from third
    to second order (about 40x the error at 200 classes).
    For r > 0 (same signs), phi(r) d = sign(d) min(2|a|, (2|d| + |a|)/3, 2|d|); otherwise
    0. Written this way there is no 0/0 in flat regions (empty size classes are the common
    case here).

    Args:
        upwind_diff: a, shape ``(m,)``.
        downwind_diff: d, shape ``(m,)``.

    Returns:
        phi(a/d) * d, shape ``(m,)``.
    """
    abs_a = np.abs(upwind_diff)
    abs_d = np.abs(downwind_diff)
    two_d = abs_d + abs_d
    slope = np.minimum(abs_a + abs_a, two_d)
    np.minimum(slope, (two_d + abs_a) * (1.0 / 3.0), out=slope)
    # Opposite signs (a local extremum) or a zero difference: first order, phi = 0.
    slope *= (upwind_diff * downwind_diff) > 0.0
    return np.copysign(slope, downwind_diff, out=slope)


def growth_rhs(
    n: np.ndarray,
    growth_rate_m_per_s: float,
    grid: SizeGrid,
    nucleation_per_kg_s: float = 0.0,
) -> np.ndarray:
    """Finite-volume rate of change of n from growth (or dissolution) and nucleation.

    Conservative form over cell i with edge fluxes F (particles per kg solvent per s):

        dn_i/dt = (F_{i-1/2} - F_{i+1/2}) / dL,      F = G n_face

    Interior faces use MUSCL reconstruction from the upwind cell (LeVeque 2002, ch. 6)
    with Koren's limiter; for G > 0 the face between cells i and i+1 is

        n_face = n_i + 1/2 phi(r_i) (n_{i+1} - n_i),   r_i = (n_i - n_{i-1}) / (n_{i+1} - n_i)

    and mirrored for G < 0. Koren's limiter is phi(r) = max(0, min(2r, (2 + r)/3, 2)); where
    the solution is smooth and monotone it gives the kappa = 1/3 face
    n_i + (n_i - n_{i-1})/6 + (n_{i+1} - n_i)/3, third order (Koren 1993).

    Boundaries:

    - Bottom edge, G > 0: the inflow flux is the nucleation rate, F_0 = B, i.e. the density
      at the edge is B/G (nuclei are born at the smallest size). The first interior face
      needs n_{-1}; a ghost value from the quadratic through the edge value B/G and the
      averages of cells 0 and 1, ``n_{-1} = 3 B/G - 5/2 n_0 + 1/2 n_1``, keeps third order
      next to the boundary (a plain linear ghost ``2 B/G - n_0`` costs an O(dL^2) error that
      is carried to every larger size in an MSMPR steady state: 4e-5 instead of 7e-6
      relative L2 error in the 200-class check of :mod:`plant_sim.pbe_checks`).
    - Bottom edge, G < 0: crystals dissolve out through the bottom, F_0 = B + G n_0, first
      order (there is no cell below to reconstruct from). B is still added as an inflow so
      that the function stays continuous in G through zero; with undersaturation the
      kinetics give B ~ 0 anyway.
    - G = 0: F_0 = B, nuclei accumulate in cell 0.
    - Top edge: zero flux, whatever the sign of G. Nothing leaves through L_max, so the
      number and the solid mass computed with :func:`third_moment_weights` stay exactly
      consistent with the solute balance; choose L_max large enough that the top cells stay
      empty. For G < 0 the face below the top cell is first order (no cell above it).

    Args:
        n: cell-average number density, particles per m per kg solvent, shape
            ``(n_classes,)``.
        growth_rate_m_per_s: G, size independent; negative for dissolution.
        grid: the uniform size grid.
        nucleation_per_kg_s: B, nuclei per kg solvent per s, born at ``grid.edges_m[0]``.

    Returns:
        dn/dt, particles per m per kg solvent per s, shape ``(n_classes,)``.
    """
    g = float(growth_rate_m_per_s)
    b = float(nucleation_per_kg_s)
    n = np.asarray(n, dtype=float)
    flux = np.empty(n.size + 1)
    diff = n[1:] - n[:-1]
    if g > 0.0:
        edge_density = b / g
        upwind = np.empty(diff.size)
        upwind[0] = 3.5 * n[0] - 3.0 * edge_density - 0.5 * n[1]
        upwind[1:] = diff[:-1]
        face = _koren_slope(upwind, diff)
        face *= 0.5
        face += n[:-1]
        np.multiply(face, g, out=flux[1:-1])
        flux[0] = b
    elif g < 0.0:
        upwind = np.empty(diff.size)
        upwind[:-1] = diff[1:]
        # Zero-gradient ghost above the top cell: first order on the last interior face.
        upwind[-1] = 0.0
        face = _koren_slope(upwind, diff)
        face *= -0.5
        face += n[1:]
        np.multiply(face, g, out=flux[1:-1])
        flux[0] = b + g * n[0]
    else:
        flux[1:-1] = 0.0
        flux[0] = b
    flux[-1] = 0.0
    rhs = flux[:-1] - flux[1:]
    rhs *= 1.0 / grid.width_m
    return rhs


def moments(n: np.ndarray, grid: SizeGrid, k_max: int = 4) -> np.ndarray:
    """Discrete moments of the size distribution by the midpoint rule.

        mu_k = sum_i n_i L_i^k dL_i,   k = 0..k_max,   L_i the cell centres

    Units: mu_k in m^k per kg solvent (mu_0 is the number of crystals per kg solvent;
    rho k_v mu_3 the crystal mass per kg solvent).

    Args:
        n: number density, shape ``(..., n_classes)``.
        grid: the size grid.
        k_max: highest moment order.

    Returns:
        mu_0..mu_k_max, shape ``(..., k_max + 1)``.
    """
    n = np.asarray(n, dtype=float)
    if k_max <= _CACHED_MOMENT_ORDER:
        weights = grid.moment_weights[: k_max + 1]
    else:
        weights = grid.centers_m[None, :] ** np.arange(k_max + 1)[:, None] * grid.widths_m
    return n @ weights.T


def third_moment_weights(grid: SizeGrid) -> np.ndarray:
    """Weights w_i = L_i^3 dL_i with mu_3 = w @ n, shape ``(n_classes,)``.

    The reactor closes the solute balance with the same weights,
    dC/dt = -rho k_v sum_i w_i dn_i/dt, so that solute plus crystal mass is conserved to
    round-off by construction (the top edge of :func:`growth_rhs` has zero flux for the
    same reason).
    """
    return grid.moment_weights[3]


def moment_rhs(
    mu: np.ndarray,
    growth_rate_m_per_s: float,
    nucleation_per_kg_s: float,
    nucleus_size_m: float = 0.0,
    residence_time_s: float | None = None,
) -> np.ndarray:
    """Method-of-moments right-hand side for size-independent growth.

    Randolph & Larson (1988, ch. 3), for a mixed vessel without feed crystals:

        dmu_k/dt = k G mu_{k-1} + B L0^k - mu_k / tau,   k = 0..K

    The set is closed because G does not depend on L. It does not see crystals that
    dissolve away at L = 0, so for G < 0 it is valid only while no crystal has shrunk to
    zero size.

    Args:
        mu: moments mu_0..mu_K, shape ``(K + 1,)``, units m^k per kg solvent.
        growth_rate_m_per_s: G.
        nucleation_per_kg_s: B.
        nucleus_size_m: L0, size at which nuclei are born.
        residence_time_s: tau of a continuous vessel; None for a batch (no washout).

    Returns:
        dmu/dt, shape ``(K + 1,)``.
    """
    mu = np.asarray(mu, dtype=float)
    orders = np.arange(mu.size, dtype=float)
    dmu = np.empty(mu.size)
    dmu[0] = 0.0
    dmu[1:] = orders[1:] * growth_rate_m_per_s * mu[:-1]
    dmu += nucleation_per_kg_s * float(nucleus_size_m) ** orders
    if residence_time_s is not None:
        dmu -= mu / residence_time_s
    return dmu


def seed_distribution(
    grid: SizeGrid,
    seed_mass_kg_per_kg: float,
    mean_size_m: float,
    std_size_m: float,
    density_kg_per_m3: float,
    volume_shape_factor: float = math.pi / 6,
) -> np.ndarray:
    """Gaussian seed distribution scaled to a given seed mass.

    The shape is the cell average of a normal density in L (erf differences, so narrow
    seeds are represented without aliasing); sizes below the grid's first edge (and so
    below zero) are dropped. The scale makes the discrete crystal mass exact:

        rho k_v sum_i n_i L_i^3 dL_i = seed mass per kg solvent

    Args:
        grid: the size grid.
        seed_mass_kg_per_kg: seed mass per kg solvent.
        mean_size_m: mean of the Gaussian in L.
        std_size_m: standard deviation in L (> 0).
        density_kg_per_m3: crystal density rho.
        volume_shape_factor: k_v (crystal volume = k_v L^3); pi/6 for volume-equivalent
            spheres, which is the definition of L here.

    Returns:
        n, particles per m per kg solvent, shape ``(n_classes,)``.

    Raises:
        ValueError: if the Gaussian puts no mass on the grid or the std is not positive.
    """
    if std_size_m <= 0.0:
        raise ValueError("std_size_m must be > 0")
    z = (grid.edges_m - mean_size_m) / (math.sqrt(2.0) * std_size_m)
    shape = 0.5 * np.diff(erf(z)) / grid.widths_m
    mass_per_unit = density_kg_per_m3 * volume_shape_factor * (third_moment_weights(grid) @ shape)
    if not mass_per_unit > 0.0:
        raise ValueError("seed distribution has no mass on this grid")
    return shape * (seed_mass_kg_per_kg / mass_per_unit)


def msmpr_analytic(
    size_m: np.ndarray | float,
    nucleation_per_kg_s: float,
    growth_rate_m_per_s: float,
    residence_time_s: float,
) -> np.ndarray:
    """Steady MSMPR number density (Randolph & Larson 1988, sec. 3.4).

        n(L) = (B / G) exp(-L / (G tau)),  mu_k = k! B tau (G tau)^k

    Args:
        size_m: sizes L, any shape.
        nucleation_per_kg_s: B.
        growth_rate_m_per_s: G (> 0).
        residence_time_s: tau.

    Returns:
        n(L), particles per m per kg solvent, the shape of ``size_m``.
    """
    size = np.asarray(size_m, dtype=float)
    g = growth_rate_m_per_s
    return (nucleation_per_kg_s / g) * np.exp(-size / (g * residence_time_s))


def size_statistics(csd_per_m_per_kg: np.ndarray, centers_m: np.ndarray, widths_m: np.ndarray) -> dict:
    """Product figures of a number density n(L).

    Returns:
        volume-weighted mean size d43 (um), number-mean size d10 of crystals above 1 um (um),
        coefficient of variation of the volume distribution, mass fraction below 100 um, and the
        mass fraction in the grid's top class (``top_class_mass_fraction``: the top edge has
        zero flux, so crystals that reach it pile up there; more than ``TOP_CLASS_WARNING``
        means the grid is too short for the run and its figures are not to be trusted).
    """
    n, size, width = csd_per_m_per_kg, centers_m, widths_m
    mu = [float(np.sum(n * size**k * width)) for k in range(6)]
    d43 = mu[4] / mu[3] if mu[3] > 0.0 else 0.0
    if not (math.isfinite(d43) and d43 > 0.0):
        # no crystals, or so few that their moments underflow (a trajectory that dissolved the
        # seeds: an oracle's trial batch divided by a zero d43 and stopped the benchmark)
        return {"d43_um": math.nan, "d10_um": math.nan, "cv": math.nan, "fines_mass_fraction": math.nan,
                "top_class_mass_fraction": math.nan}
    spread = max(mu[5] / mu[3] - d43**2, 0.0)
    big = size > 1e-6
    n_big = float(np.sum(n[big] * width[big]))
    d10 = float(np.sum(n[big] * size[big] * width[big])) / n_big if n_big > 0 else math.nan
    fines = float(np.sum((n * size**3 * width)[size < 100e-6])) / mu[3]
    top = float(n[-1] * size[-1] ** 3 * width[-1]) / mu[3]
    return {"d43_um": d43 * 1e6, "d10_um": d10 * 1e6, "cv": math.sqrt(spread) / d43, "fines_mass_fraction": fines,
            "top_class_mass_fraction": top}


#: Mass fraction in the size grid's top class above which a run says its grid is too short.
TOP_CLASS_WARNING = 1e-3


def top_class_warning(stats: dict, max_size_um: float) -> str | None:
    """The line to say when :func:`size_statistics` found crystals piled up at the grid's top
    (None: not so)."""
    top = stats.get("top_class_mass_fraction", math.nan)
    if not (math.isfinite(top) and top > TOP_CLASS_WARNING):
        return None
    return (f"{100 * top:.2g} % of the crystal mass sits in the size grid's top class (max_size_um={max_size_um:g}): "
            "crystals reach the top edge, which lets nothing out, and pile up there; the size figures are "
            "not to be trusted; raise scenario.reactor.max_size_um")
