"""Crystal habit from facet growth rates: the kinetic Wulff construction.

DESIGN step 5. A crystal whose faces {hkl} advance at normal rates R_hkl keeps, at long times,
the shape of the polyhedron

    W = { x : n_f . x <= R_family(f)  for every face f of every family },

the kinetic Wulff construction (Frank 1958; Chernov 1963): slow faces dominate, fast faces
grow out. Only rate ratios matter, so the habit is normalised to unit volume-equivalent
diameter L = (6 V / pi)^(1/3) = 1. The habit's present faces form the facet graph (faces are
nodes, shared edges are edges) that the MS-GNN and the imaging sensor use; its shape factors
feed the population balance.

Cubic crystals only: a family {hkl} is the orbit of (h, k, l) under the point group m-3m.

References:
    - Frank, F. C. (1958) in Growth and Perfection of Crystals, Wiley, 411 (kinematic theory).
    - Chernov, A. A. (1963) Sov. Phys. Crystallogr. 7, 728 (kinetic Wulff shape).
    - Wulff, G. (1901) Z. Kristallogr. 34, 449.
    - Randolph, A. D. & Larson, M. A. (1988) Theory of Particulate Processes, 2nd ed.
      (shape factors k_a, k_v).
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.spatial import ConvexHull, HalfspaceIntersection

__all__ = [
    "Habit",
    "family_normals",
    "kinetic_wulff",
    "volume_equivalent_growth_rate_m_per_s",
    "VOLUME_SHAPE_FACTOR_SPHERE_EQUIVALENT",
]

# With L the volume-equivalent diameter, V = k_v L^3 with k_v = pi/6 by definition.
VOLUME_SHAPE_FACTOR_SPHERE_EQUIVALENT = math.pi / 6.0

# Faces below this share of the surface touch the habit only along an edge or a vertex (or
# are numerical slivers): they have grown out.
GROWN_OUT_AREA_FRACTION = 1e-9

# Relative ratios are rounded to this many significant digits before the cache: the plant
# calls every second with slowly varying rates, and 1e-4 changes of a ratio move area
# fractions by ~1e-4, far below the imaging noise.
RATE_RATIO_SIGNIFICANT_DIGITS = 4


def _fibonacci_directions(n: int) -> np.ndarray:
    # Near-uniform directions on a hemisphere (widths are even in u) for the caliper search.
    i = np.arange(n) + 0.5
    z = i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


_CALIPER_DIRECTIONS = _fibonacci_directions(256)


@functools.lru_cache(maxsize=64)
def _family_normals_cached(hkl: tuple[int, int, int]) -> np.ndarray:
    vecs = set()
    for perm in itertools.permutations(hkl):
        for signs in itertools.product((1, -1), repeat=3):
            vecs.add(tuple(s * v for s, v in zip(signs, perm)))
    arr = np.array(sorted(vecs, reverse=True), dtype=float)
    arr /= np.linalg.norm(arr, axis=1, keepdims=True)
    arr.setflags(write=False)
    return arr


def family_normals(hkl: Sequence[int]) -> np.ndarray:
    """Unit normals of all faces of a cubic family {hkl}.

    The orbit of (h, k, l) under m-3m: all permutations and sign changes, duplicates removed.
    {100}: 6, {110}: 12, {111}: 8, {hk0}: 24, {hkl} general: 48.

    Args:
        hkl: Miller indices, not all zero.

    Returns:
        m x 3 unit normals, sorted (read-only).
    """
    key = tuple(int(v) for v in hkl)
    if len(key) != 3 or key == (0, 0, 0):
        raise ValueError(f"hkl must be three integers, not all zero; got {tuple(hkl)}")
    return _family_normals_cached(key)


@dataclass(frozen=True, eq=False)
class Habit:
    """Kinetic Wulff habit at unit volume-equivalent diameter (L = 1).

    Only faces present on the habit appear in the face arrays (F of them); families that grew
    out keep their slot in the family arrays with zero area.

    Attributes:
        hkls: families, in input order (n_families).
        rate_ratios: family rates divided by the largest, as used (rounded), n_families.
        normals: outward unit normal per present face, F x 3.
        face_family: family index per face, F (int).
        face_index: index of each present face among all faces of the families
            (:func:`all_faces` order), F (int).
        distances: plane offsets h_f with n_f . x <= h_f at L = 1, F.
        face_areas: area per face at L = 1, F.
        area_fractions: face_areas / surface_area, F (sums to 1).
        family_area_fractions: summed area fraction per family, n_families.
        adjacency: faces sharing an edge, 2 x E (int, both directions).
        vertices: habit corners at L = 1, V x 3.
        volume: pi / 6 (L = 1).
        surface_area: total area at L = 1.
        lambda_length: largest Feret diameter (max vertex-vertex distance) at L = 1.
        aspect_ratio: largest Feret diameter / least caliper width (1 for a sphere, sqrt(3)
            for both the cube and the octahedron, large for needles and plates).
        area_shape_factor: k_a = A / L^2 (sphere: pi, cube: 6 (pi/6)^(2/3) = 3.90).
    """

    hkls: tuple[tuple[int, int, int], ...]
    rate_ratios: np.ndarray
    normals: np.ndarray
    face_family: np.ndarray
    face_index: np.ndarray
    distances: np.ndarray
    face_areas: np.ndarray
    area_fractions: np.ndarray
    family_area_fractions: np.ndarray
    adjacency: np.ndarray
    vertices: np.ndarray
    volume: float
    surface_area: float
    lambda_length: float
    aspect_ratio: float
    area_shape_factor: float

    @property
    def present_families(self) -> np.ndarray:
        """Whether each family has faces on the habit, n_families (bool)."""
        return self.family_area_fractions > 0.0

    @property
    def volume_shape_factor(self) -> float:
        """k_v = V / L^3 = pi / 6 for the volume-equivalent diameter."""
        return VOLUME_SHAPE_FACTOR_SPHERE_EQUIVALENT

    @property
    def num_faces(self) -> int:
        return int(self.face_family.shape[0])


def _readonly(*arrays: np.ndarray) -> None:
    # Habits are shared through the cache; a caller writing into one would corrupt the others.
    for arr in arrays:
        arr.setflags(write=False)


def _dedupe_vertices(points: np.ndarray, scale: float) -> np.ndarray:
    # Where more than three planes meet (octahedron corners), qhull reports the corner once per
    # triple of planes; merge them so faces meeting only at a corner share one vertex, not two.
    keys = np.round(points / (1e-9 * scale)).astype(np.int64)
    _, idx = np.unique(keys, axis=0, return_index=True)
    return points[np.sort(idx)]


def all_faces(hkls: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every face of the families, in the order :func:`kinetic_wulff_faces` expects.

    Returns:
        (outward unit normals, F x 3; family index per face, F).
    """
    per_family = [family_normals(h) for h in hkls]
    normals = np.concatenate(per_family)
    family = np.concatenate([np.full(len(n), i) for i, n in enumerate(per_family)]).astype(np.int64)
    return normals, family


@functools.lru_cache(maxsize=4096)
def _kinetic_wulff_cached(hkls: tuple[tuple[int, int, int], ...], ratios: tuple[float, ...]) -> Habit:
    _check_families(hkls)  # only on a cache miss (lru_cache does not store exceptions)
    normals_all, family_all = all_faces(hkls)
    return _wulff(hkls, normals_all, family_all, np.asarray(ratios)[family_all], np.asarray(ratios, dtype=float))


def kinetic_wulff_faces(hkls: Sequence[Sequence[int]], face_rates: Sequence[float] | np.ndarray) -> Habit:
    """Kinetic Wulff habit with a rate per individual face (not per family).

    Faces of one family grow at different rates when their surroundings differ, e.g. a defect
    under one face (the synthetic multi-scale data of :mod:`models.data` use this). Same
    construction and measures as :func:`kinetic_wulff`; not cached.

    Args:
        hkls: families, n_families.
        face_rates: normal growth rate per face in :func:`all_faces` order, all > 0.

    Returns:
        The habit; ``rate_ratios`` holds each family's mean face rate over the largest.
    """
    key_hkls = tuple(tuple(int(v) for v in h) for h in hkls)
    _check_families(key_hkls)
    normals_all, family_all = all_faces(key_hkls)
    rates = np.asarray(face_rates, dtype=float).reshape(-1)
    if rates.shape != family_all.shape:
        raise ValueError(f"need one rate per face: {family_all.size} faces, {rates.size} rates")
    if not np.all(np.isfinite(rates) & (rates > 0.0)):
        raise ValueError("every face growth rate must be positive and finite for the kinetic Wulff construction")
    h_all = rates / rates.max()
    family_mean = np.bincount(family_all, weights=h_all) / np.bincount(family_all)
    return _wulff(key_hkls, normals_all, family_all, h_all, family_mean / family_mean.max())


def _wulff(
    hkls: tuple[tuple[int, int, int], ...],
    normals_all: np.ndarray,
    family_all: np.ndarray,
    h_all: np.ndarray,
    ratios: np.ndarray,
) -> Habit:
    """Habit from plane offsets ``h_all`` (largest 1) of every face."""

    # scipy's convention: A x + b <= 0 per row [A, b]; the origin is strictly inside because
    # every h > 0 (NOTES: HalfspaceIntersection needs a strictly interior point).
    halfspaces = np.hstack([normals_all, -h_all[:, None]])
    hs = HalfspaceIntersection(halfspaces, np.zeros(3))
    vertices = _dedupe_vertices(hs.intersections, scale=float(h_all.max()))
    hull = ConvexHull(vertices)

    # Each hull triangle lies in one facet plane: the facet whose normal it shares.
    tri = vertices[hull.simplices]
    tri_area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    owner = np.argmax(hull.equations[:, :3] @ normals_all.T, axis=1)
    areas_all = np.bincount(owner, weights=tri_area, minlength=len(normals_all))
    total = float(areas_all.sum())
    present = areas_all > GROWN_OUT_AREA_FRACTION * total

    # Scale to unit volume-equivalent diameter: lengths by s, areas by s^2.
    s = (6.0 * float(hull.volume) / math.pi) ** (-1.0 / 3.0)
    normals = normals_all[present]
    face_family = family_all[present].astype(np.int64)
    face_index = np.flatnonzero(present).astype(np.int64)
    distances = h_all[present] * s
    face_areas = areas_all[present] * s**2
    vertices = vertices * s
    surface_area = float(face_areas.sum())
    area_fractions = face_areas / surface_area
    family_fractions = np.bincount(face_family, weights=area_fractions, minlength=len(hkls))

    # Two faces share an edge when at least two habit corners lie on both planes.
    incidence = np.abs(vertices @ normals.T - distances[None, :]) < 1e-7
    shared = incidence.T.astype(np.int64) @ incidence.astype(np.int64)
    np.fill_diagonal(shared, 0)
    adjacency = np.stack(np.nonzero(shared >= 2)).astype(np.int64)

    diff = vertices[:, None, :] - vertices[None, :, :]
    feret_max = float(np.sqrt((diff**2).sum(-1).max()))
    # The least caliper width of a polytope lies along a face normal or perpendicular to two
    # edges; face normals plus a 256-direction sample bound it within ~1 %.
    directions = np.concatenate([normals, _CALIPER_DIRECTIONS])
    proj = vertices @ directions.T
    width_min = float((proj.max(axis=0) - proj.min(axis=0)).min())

    rate_ratios = np.array(ratios, dtype=float)
    _readonly(rate_ratios, normals, face_family, face_index, distances, face_areas, area_fractions, family_fractions,
              adjacency, vertices)
    return Habit(
        hkls=hkls,
        rate_ratios=rate_ratios,
        normals=normals,
        face_family=face_family,
        face_index=face_index,
        distances=distances,
        face_areas=face_areas,
        area_fractions=area_fractions,
        family_area_fractions=family_fractions,
        adjacency=adjacency,
        vertices=vertices,
        volume=float(hull.volume) * s**3,
        surface_area=surface_area,
        lambda_length=feret_max,
        aspect_ratio=feret_max / width_min,
        area_shape_factor=surface_area,
    )


def _round_significant(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def kinetic_wulff(hkls: Sequence[Sequence[int]], family_rates: Sequence[float] | np.ndarray) -> Habit:
    """Kinetic Wulff habit of a cubic crystal from facet growth rates.

    The habit is W = { x : n_f . x <= R_family(f) } over all faces of all families, built with
    ``scipy.spatial.HalfspaceIntersection`` (origin as interior point) and measured with
    ``scipy.spatial.ConvexHull``; hull triangles are assigned to the facet plane whose normal
    they share. Faces with less than 1e-9 of the area have grown out and are dropped. The shape
    is scale-free: it is built at R / max(R), rounded to 4 significant digits, and cached, so
    repeated calls with slowly varying rates cost a dictionary look-up.

    Shape measures (at L = 1): lambda = largest Feret diameter (max vertex-vertex distance);
    aspect ratio = largest Feret diameter / least caliper width, where the width along u is
    max_v u.v - min_v u.v (cube: space diagonal / edge = sqrt(3); octahedron: corner-to-corner
    / face-to-face = sqrt(3); needles and plates: large), the max-length over min-width that
    an imaging probe reports.

    Args:
        hkls: families, e.g. ((1, 0, 0), (1, 1, 1)); n_families distinct families.
        family_rates: normal growth rate per family (any unit), n_families, all > 0.

    Returns:
        The :class:`Habit` (shared, read-only arrays).

    Raises:
        ValueError: on a non-positive or non-finite rate, a length mismatch or repeated family.
    """
    key_hkls = tuple(tuple(int(v) for v in h) for h in hkls)
    rates = [float(r) for r in np.ravel(np.asarray(family_rates, dtype=float))]
    if len(rates) != len(key_hkls) or not key_hkls:
        raise ValueError(f"need one rate per family: {len(key_hkls)} families, {len(rates)} rates")
    if not all(r > 0.0 and math.isfinite(r) for r in rates):
        raise ValueError(
            f"every facet growth rate must be positive and finite for the kinetic Wulff "
            f"construction (the origin must lie strictly inside every half-space); got {rates}"
        )
    r_max = max(rates)
    ratios = tuple(_round_significant(r / r_max, RATE_RATIO_SIGNIFICANT_DIGITS) for r in rates)
    return _kinetic_wulff_cached(key_hkls, ratios)


def _check_families(hkls: tuple[tuple[int, int, int], ...]) -> None:
    # (100) and (200), or (100) and (010), are one set of planes: two half-spaces per plane
    # would split its area between families arbitrarily.
    seen: dict[tuple[float, ...], tuple[int, int, int]] = {}
    for h in hkls:
        canon = tuple(family_normals(h)[0].round(9))
        if canon in seen:
            raise ValueError(f"families {seen[canon]} and {h} are the same set of planes")
        seen[canon] = h


def volume_equivalent_growth_rate_m_per_s(habit: Habit, family_rates_m_per_s: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """Growth rate of the volume-equivalent diameter from facet rates.

    Each face sweeps volume at A_i R_i, so dV/dt = sum_i A_i R_i. With V = k_v L^3,
    k_v = pi/6, and face areas A_i = a_i L^2 (a_i at L = 1, as the habit stores them):

        G = dL/dt = (2 / (pi L^2)) sum_i A_i R_i = (2 / pi) sum_i a_i R_i
          = k_a / (3 k_v) sum_i f_i R_i,

    with k_a = A / L^2 and f_i the area fractions. Faces that grew out contribute nothing.
    For a cube growing at R on every face, G = 2 R (6/pi)^(1/3).

    Args:
        habit: the current habit (e.g. :func:`kinetic_wulff` of the same rates).
        family_rates_m_per_s: normal rate per family, shape (..., n_families).

    Returns:
        G in m/s: a float for a 1-D input, else an array of shape (...).
    """
    rates = np.asarray(family_rates_m_per_s, dtype=float)
    n_families = len(habit.hkls)
    if rates.shape[-1:] != (n_families,):
        raise ValueError(f"rates need a last axis of {n_families} families, got shape {rates.shape}")
    weights = (2.0 / math.pi) * np.bincount(habit.face_family, weights=habit.face_areas, minlength=n_families)
    g = rates @ weights
    return float(g) if rates.ndim == 1 else g
