"""Tests for conf.contract.morphology: kinetic Wulff habits and the volume-equivalent growth rate."""

import math

import numpy as np
import pytest

from conf.contract.morphology import (
    all_faces,
    family_normals,
    kinetic_wulff,
    kinetic_wulff_faces,
    volume_equivalent_growth_rate_m_per_s,
)

CUBE_EDGE_AT_UNIT_L = (math.pi / 6) ** (1 / 3)


@pytest.mark.parametrize(("hkl", "count"), [((1, 0, 0), 6), ((1, 1, 0), 12), ((1, 1, 1), 8), ((2, 1, 0), 24), ((3, 2, 1), 48)])
def test_family_normals(hkl, count):
    normals = family_normals(hkl)
    assert normals.shape == (count, 3)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0)
    assert len(np.unique(np.round(normals, 9), axis=0)) == count
    # centrosymmetric: -n belongs to the family
    assert np.allclose(np.sort(np.round(-normals, 9), axis=0), np.sort(np.round(normals, 9), axis=0))


def test_cube():
    habit = kinetic_wulff([(1, 0, 0)], [2.0e-8])
    assert habit.num_faces == 6
    np.testing.assert_allclose(habit.area_fractions, 1 / 6)
    assert habit.volume == pytest.approx(math.pi / 6)
    assert habit.lambda_length == pytest.approx(math.sqrt(3) * CUBE_EDGE_AT_UNIT_L)
    assert habit.aspect_ratio == pytest.approx(math.sqrt(3))
    assert habit.area_shape_factor == pytest.approx(6 * CUBE_EDGE_AT_UNIT_L**2)
    np.testing.assert_allclose(habit.distances, CUBE_EDGE_AT_UNIT_L / 2)
    assert habit.vertices.shape == (8, 3)
    # each face borders 4 others, never its opposite
    assert habit.adjacency.shape == (2, 24)
    np.testing.assert_array_equal(np.bincount(habit.adjacency[0], minlength=6), 4)
    for i, j in habit.adjacency.T:
        assert habit.normals[i] @ habit.normals[j] == pytest.approx(0.0)
    assert habit.present_families.tolist() == [True]


def test_fast_111_grows_out_leaving_the_cube():
    habit = kinetic_wulff([(1, 0, 0), (1, 1, 1)], [1.0, 1.9])  # > sqrt(3)
    assert habit.present_families.tolist() == [True, False]
    assert habit.num_faces == 6
    assert set(habit.face_family.tolist()) == {0}
    np.testing.assert_allclose(habit.family_area_fractions, [1.0, 0.0])


def test_slow_111_gives_the_octahedron():
    habit = kinetic_wulff([(1, 0, 0), (1, 1, 1)], [1.0, 0.5])  # < 1/sqrt(3)
    assert habit.present_families.tolist() == [False, True]
    assert habit.num_faces == 8
    np.testing.assert_allclose(habit.area_fractions, 1 / 8)
    assert habit.vertices.shape == (6, 3)
    np.testing.assert_array_equal(np.bincount(habit.adjacency[0], minlength=8), 3)
    assert habit.aspect_ratio == pytest.approx(math.sqrt(3))


def test_intermediate_rates_truncate_both_families():
    # near the cuboctahedron (R111 / R100 = 2 / sqrt(3) = 1.1547), just on the side where the
    # {111} faces swallow the cube edges (rates are rounded to 4 digits before the build)
    habit = kinetic_wulff([(1, 0, 0), (1, 1, 1)], [1.0, 1.154])
    assert habit.present_families.tolist() == [True, True]
    assert habit.num_faces == 14
    assert habit.family_area_fractions.sum() == pytest.approx(1.0)
    assert habit.area_fractions.sum() == pytest.approx(1.0)
    # cuboctahedron: 6 squares and 8 triangles of equal edge s: A_sq / A_tri = 4 / sqrt(3)
    ratio = habit.face_areas[habit.face_family == 0][0] / habit.face_areas[habit.face_family == 1][0]
    assert ratio == pytest.approx(4 / math.sqrt(3), rel=1e-2)
    # every square borders 4 triangles only
    fam = habit.face_family
    for i, j in habit.adjacency.T:
        if fam[i] == 0:
            assert fam[j] == 1
    np.testing.assert_array_equal(np.bincount(habit.adjacency[0])[fam == 0], 4)


def test_scale_invariance_and_cache():
    a = kinetic_wulff([(1, 0, 0), (1, 1, 0), (1, 1, 1)], [1.0, 1.2, 1.3])
    b = kinetic_wulff([(1, 0, 0), (1, 1, 0), (1, 1, 1)], np.array([10.0, 12.0, 13.0]))
    np.testing.assert_allclose(a.family_area_fractions, b.family_area_fractions)
    np.testing.assert_allclose(a.area_fractions, b.area_fractions)
    assert a.lambda_length == pytest.approx(b.lambda_length)
    assert a.area_fractions.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        a.area_fractions[0] = 0.0  # shared through the cache: read-only


def test_cache_returns_the_same_habit_for_equal_rate_ratios():
    hkls = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
    a = kinetic_wulff(hkls, [1.0e-8, 1.31e-8, 1.17e-8])
    b = kinetic_wulff(hkls, [2.0e-8, 2.62e-8, 2.34e-8])  # same ratios: a cache hit
    assert a is b


@pytest.mark.parametrize("bad", [[1.0, 0.0], [1.0, -1.0], [1.0, float("nan")], [1.0, float("inf")]])
def test_non_positive_rate_raises(bad):
    with pytest.raises(ValueError, match="positive"):
        kinetic_wulff([(1, 0, 0), (1, 1, 1)], bad)


def test_bad_family_inputs_raise():
    with pytest.raises(ValueError):
        kinetic_wulff([(1, 0, 0), (1, 1, 1)], [1.0])
    with pytest.raises(ValueError):
        kinetic_wulff([(1, 0, 0), (2, 0, 0)], [1.0, 1.0])
    with pytest.raises(ValueError):
        family_normals((0, 0, 0))


def test_growth_rate_of_a_cube_is_analytic():
    r = 3.0e-8
    habit = kinetic_wulff([(1, 0, 0)], [r])
    # edge grows at 2R and L = edge (6/pi)^(1/3)
    assert volume_equivalent_growth_rate_m_per_s(habit, [r]) == pytest.approx(2 * r * (6 / math.pi) ** (1 / 3))
    # the k_a / (3 k_v) sum f_i R_i form
    g_shape = habit.area_shape_factor / (3 * math.pi / 6) * float(habit.area_fractions.sum()) * r
    assert volume_equivalent_growth_rate_m_per_s(habit, [r]) == pytest.approx(g_shape)


def test_growth_rate_ignores_grown_out_faces_and_vectorises():
    habit = kinetic_wulff([(1, 0, 0), (1, 1, 1)], [1.0, 2.0])
    g = volume_equivalent_growth_rate_m_per_s(habit, [1e-8, 2e-8])
    assert g == pytest.approx(2e-8 * (6 / math.pi) ** (1 / 3))
    batch = np.array([[1e-8, 2e-8], [2e-8, 5e-8], [0.0, 1e-8]])
    out = volume_equivalent_growth_rate_m_per_s(habit, batch)
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [g, 2 * g, 0.0])
    with pytest.raises(ValueError):
        volume_equivalent_growth_rate_m_per_s(habit, [1e-8])


def test_growth_rate_matches_volume_change():
    # Advance every face by R dt and compare the new volume-equivalent size.
    hkls = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
    rates = np.array([1.0, 1.25, 1.1])
    habit = kinetic_wulff(hkls, rates)
    g = volume_equivalent_growth_rate_m_per_s(habit, rates)
    from scipy.spatial import ConvexHull, HalfspaceIntersection

    dt = 1e-5
    normals = habit.normals
    h_new = habit.distances + rates[habit.face_family] * dt
    hs = HalfspaceIntersection(np.hstack([normals, -h_new[:, None]]), np.zeros(3))
    l_new = (6 * ConvexHull(hs.intersections).volume / math.pi) ** (1 / 3)
    assert (l_new - 1.0) / dt == pytest.approx(g, rel=1e-4)


def test_per_face_rates_equal_per_family_rates_reproduce_the_family_habit():
    hkls = ((1, 0, 0), (1, 1, 0), (1, 1, 1))
    family_rates = np.array([1.0, 1.6, 1.4])
    _, family = all_faces(hkls)
    by_family = kinetic_wulff(hkls, family_rates)
    by_face = kinetic_wulff_faces(hkls, family_rates[family])
    np.testing.assert_allclose(by_face.family_area_fractions, by_family.family_area_fractions, atol=1e-3)
    assert by_face.lambda_length == pytest.approx(by_family.lambda_length, rel=1e-3)
    np.testing.assert_array_equal(family[by_face.face_index], by_face.face_family)


def test_one_slow_face_grows_large_and_breaks_the_symmetry():
    hkls = ((1, 0, 0),)
    rates = np.ones(6)
    rates[0] = 0.5  # one cube face grows at half the rate of the others
    habit = kinetic_wulff_faces(hkls, rates)
    slow = list(habit.face_index).index(0)
    others = [a for i, a in enumerate(habit.face_areas) if i != slow]
    # The slow face keeps its full square; the four side faces shrink to rectangles.
    assert habit.face_areas[slow] > max(others) * 0.99
    assert habit.num_faces == 6 and habit.aspect_ratio > kinetic_wulff(hkls, [1.0]).aspect_ratio


def test_per_face_rates_must_match_the_faces():
    with pytest.raises(ValueError, match="one rate per face"):
        kinetic_wulff_faces(((1, 0, 0),), [1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        kinetic_wulff_faces(((1, 0, 0),), [1.0, 1.0, 1.0, 0.0, 1.0, 1.0])
