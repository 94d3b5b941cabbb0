"""The model service: local power laws from a query grid, loading, answers with uncertainty."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from controller.kinetics_service import (
    FacetSource,
    KineticsService,
    ModelUnavailable,
    batch_sigma_range,
    constraint_uncertainty,
    fit_laws,
    query_grid,
)
from controller.settings import SetupError


def test_fit_laws_recovers_exact_power_laws():
    rng = np.random.default_rng(0)
    temps = rng.uniform(20.0, 50.0, 15)
    sigmas = rng.uniform(0.003, 0.04, 15)
    inv_t = 1.0 / 298.15 - 1.0 / (temps + 273.15)
    truth_g = np.array([[2.0, 1.5, 3000.0], [1.0, 1.0, 2000.0]])  # a, g, e of ln G
    truth_b = np.array([[5.0, 2.5, -1000.0], [4.0, 3.0, 0.0]])  # c, b, f of log10 B
    members = np.zeros((2, 15, 3))
    for s in range(2):
        members[s, :, 0] = (truth_g[s, 0] + truth_g[s, 1] * np.log(sigmas) + truth_g[s, 2] * inv_t) / math.log(10)
        members[s, :, 1] = truth_b[s, 0] + truth_b[s, 1] * np.log10(sigmas) + truth_b[s, 2] * inv_t
    laws = fit_laws(temps, sigmas, members)
    np.testing.assert_allclose(laws.growth, truth_g, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(laws.nucleation, truth_b, rtol=1e-6, atol=1e-6)
    g = laws.growth_um_per_min(35.0, 0.01)
    np.testing.assert_allclose(np.log(g), truth_g @ [1.0, math.log(0.01), 1 / 298.15 - 1 / 308.15])
    np.testing.assert_allclose(laws.with_growth_bias(math.log(2.0)).growth_um_per_min(35.0, 0.01), 2 * g)


def test_a_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(ModelUnavailable, match="make model") as err:
        KineticsService.load(tmp_path / "nothing", "KCl")
    assert isinstance(err.value, SetupError)


def test_the_service_answers_with_spread_and_laws_per_member(tiny_checkpoint):
    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    imaging = [(100, 0.9), (110, 0.0), (111, 0.1), (0, 0.0)]
    est = service.estimate(imaging, 40.0, 0.01)
    assert est.laws.members == 2 and est.laws.growth.shape == (2, 3) and est.laws.nucleation.shape == (2, 3)
    assert est.growth_um_per_min > 0 and math.isfinite(est.log10_nucleation)
    assert set(est.spread) == {"log10_G", "log10_B", "lambda"} and est.uncertainty >= 0
    # deterministic: the same question, the same answer
    assert service.estimate(imaging, 40.0, 0.01).growth_um_per_min == est.growth_um_per_min
    assert est.facet_source is FacetSource.imaging
    with pytest.raises(ModelUnavailable, match="temperature"):
        service.estimate(imaging, math.nan, 0.01)


def _cnt_plus_secondary_log10_b(temperatures_c, sigmas, prefactor):
    """log10 B of secondary nucleation (~ sigma^2) plus classical primary nucleation that overtakes it
    at sigma ~ 0.025, past a metastable limit of 0.015: the shape that bends a power law."""
    secondary = prefactor * 1e6 * sigmas**2
    primary = 1e20 * np.exp(-0.02475 * (298.15 / (temperatures_c + 273.15)) ** 3 / sigmas**2)
    return np.log10(secondary + primary)


def test_laws_fitted_over_the_batch_range_reproduce_nucleation_at_the_operating_point():
    limit, t_now, s_now = 0.015, 40.0, 0.01
    prefactors = np.array([1.0, 2.0])

    def members(temps, sigmas):
        out = np.zeros((2, temps.size, 3))
        out[:, :, 0] = -1.0 + np.log10(sigmas / 0.01)  # G ~ sigma
        out[:, :, 1] = _cnt_plus_secondary_log10_b(temps, sigmas, prefactors[:, None])
        return out

    truth_now = _cnt_plus_secondary_log10_b(t_now, s_now, prefactors)
    # The old grid: 0.003..0.04 into primary nucleation, plain least squares.
    old_t, old_s = (a.ravel() for a in np.meshgrid(np.linspace(t_now - 10, t_now + 5, 3), np.geomspace(0.003, 0.04, 5),
                                                   indexing="ij"))
    old = fit_laws(old_t, old_s, members(old_t, old_s))
    assert np.all(old.nucleation[:, 1] > 4.0)  # an exponent far above secondary nucleation's 2
    assert np.all(np.abs(old.log10_nucleation(t_now, s_now) - truth_now) > 0.5)
    # The batch's range, centred on the current sigma and anchored there.
    low, high = batch_sigma_range(s_now, limit)
    grid_t, grid_s, anchor = query_grid(t_now, s_now, (low, high))
    temps, sigmas = np.concatenate([[t_now], grid_t]), np.concatenate([[anchor], grid_s])
    new = fit_laws(temps, sigmas, members(temps, sigmas), anchor=0)
    np.testing.assert_allclose(new.log10_nucleation(t_now, s_now), truth_now, atol=1e-9)
    at_limit = _cnt_plus_secondary_log10_b(t_now, limit, prefactors)
    np.testing.assert_allclose(new.log10_nucleation(t_now, limit), at_limit, atol=0.1)
    np.testing.assert_allclose(new.nucleation[:, 1], 2.0, atol=0.1)


def test_the_batch_range_runs_from_a_fraction_of_sigma_to_just_past_the_limit():
    assert batch_sigma_range(0.01, 0.015) == pytest.approx((0.0025, 0.0165))
    # undersaturated, unknown or near saturation: the range starts at a floor, not at sigma -> 0
    for sigma in (-0.02, math.nan, 1e-5):
        assert batch_sigma_range(sigma, 0.015) == pytest.approx((0.25 * 0.25 * 0.015, 0.0165))
    # above the limit (an overshoot): the range still covers the current sigma
    low, high = batch_sigma_range(0.03, 0.015)
    assert low == pytest.approx(0.25 * 0.015) and high == pytest.approx(0.033)
    with pytest.raises(ValueError):
        batch_sigma_range(0.01, 0.0)


def test_the_query_grid_is_centred_on_the_current_sigma():
    temps, sigmas, anchor = query_grid(40.0, 0.01, (0.0025, 0.0165))
    assert anchor == 0.01 and temps.shape == sigmas.shape == (15,)
    levels = np.unique(sigmas)
    assert levels.size == 5 and levels[2] == 0.01
    assert levels[0] == pytest.approx(0.0025) and levels[-1] == pytest.approx(0.0165)
    assert np.unique(temps).tolist() == [30.0, 37.5, 45.0]
    # outside the range (or unknown): clamped onto its end, every level on the other side
    for sigma, end in ((0.001, 0.0025), (math.nan, 0.0025), (0.05, 0.0165)):
        _, sigmas, anchor = query_grid(40.0, sigma, (0.0025, 0.0165))
        assert anchor == pytest.approx(end) and np.unique(sigmas).size == 5
    with pytest.raises(ValueError):
        query_grid(40.0, 0.01, (0.02, 0.01))


def test_the_constraint_uncertainty_combines_growth_and_nucleation():
    assert constraint_uncertainty(np.array([0.3]), np.array([5.0])) == 0.0
    # growth alone differs: the spread of log10 G
    assert constraint_uncertainty(np.array([0.0, 0.2]), np.array([5.0, 5.0])) == pytest.approx(0.1)
    # nucleation alone differs by two decades: a quarter of its spread (rate ~ (B G^3)^(1/4))
    assert constraint_uncertainty(np.array([0.0, 0.0]), np.array([4.0, 6.0])) == pytest.approx(0.25)
    # more nuclei, slower growth, the same nucleated mass: only the growth term is left
    assert constraint_uncertainty(np.array([0.0, -0.1]), np.array([5.0, 5.3])) == pytest.approx(0.05)


def test_on_the_batch_range_the_laws_reproduce_the_network_at_the_current_condition(tiny_checkpoint):
    import torch

    from controller.facet_graph import facet_graph_from_imaging

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    imaging = [(100, 0.9), (111, 0.1)]
    t_now, s_now, limit = 40.0, 0.01, 0.015
    est = service.estimate(imaging, t_now, s_now, sigma_range=batch_sigma_range(s_now, limit), constraint_sigma=limit)
    assert est.sigma_range == pytest.approx((0.0025, 0.0165))
    assert est.query_sigma == s_now and est.constraint_sigma == limit
    # the network asked on its own at the current condition, on the observed habit with its
    # own reference-condition face rates
    graph = facet_graph_from_imaging(imaging, service.family_properties, service.embedding_directions,
                                     service.reference_face_rates)
    with torch.no_grad():
        network = service.predictor.query(service.embedding, graph, [[t_now, s_now, 0.0, 300.0]]).graph_members
    network = network[:, 0, :].double().numpy()  # (S, 3)
    assert np.all(np.abs(est.laws.log10_nucleation(t_now, s_now) - network[:, 1]) < 0.1)
    assert np.all(np.abs(np.log10(est.laws.growth_um_per_min(t_now, s_now)) - network[:, 0]) < 0.1)
    # the members' own answers, for the agent's online correction
    np.testing.assert_allclose(est.member_log10_growth_um_per_min, network[:, 0], atol=1e-5)
    np.testing.assert_allclose(est.member_log10_nucleation, network[:, 1], atol=1e-5)
    assert est.member_log10_nucleation.shape == (2,)
    assert math.isfinite(est.uncertainty_constraint) and est.uncertainty_constraint >= 0 and est.uncertainty >= 0
    # the defaults still answer (callers that know no metastable limit)
    assert service.estimate(imaging, t_now, s_now).sigma_range == service.grid_sigmas


def test_without_imaging_the_material_s_habit_stands_in(tiny_checkpoint):
    from models.graphs import FACET_FEATURES

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    for imaging in ([], [(0, math.nan)] * 4):
        est = service.estimate(imaging, 40.0, 0.01, sigma_range=(0.0025, 0.0165))
        assert est.facet_source is FacetSource.material_habit and est.facet_source == "material_habit"
        assert est.growth_um_per_min > 0 and math.isfinite(est.growth_um_per_min)
        assert math.isfinite(est.log10_nucleation) and math.isfinite(est.morphology_lambda)
        assert np.all(np.isfinite(est.laws.growth)) and np.all(np.isfinite(est.laws.nucleation))
    assert service.material_facets.facet_x.shape[1] == len(FACET_FEATURES)
    strict = KineticsService.load(tiny_checkpoint, "KCl", device="cpu", habit_fallback=False)
    with pytest.raises(ModelUnavailable, match="imaging"):
        strict.estimate([], 40.0, 0.01)


def test_the_observed_habit_carries_the_network_s_reference_rates_not_an_in_line_one(tiny_checkpoint):
    """Imaging gives the habit (families, area fractions); the rate feature is what training
    gives every facet graph, the rate at the reference condition, here the network's own."""
    import torch

    from controller.facet_graph import facet_graph_from_imaging
    from models.graphs import FACET_FEATURES, REFERENCE_CONDITION, with_observed_rates

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    imaging = [(100, 0.9), (111, 0.1)]
    unknown = facet_graph_from_imaging(imaging, service.family_properties, service.embedding_directions)
    graph = facet_graph_from_imaging(imaging, service.family_properties, service.embedding_directions,
                                     service.reference_face_rates)
    rate, largest = (FACET_FEATURES.index(n) for n in ("log10_observed_rate_um_per_min", "sorted_abs_normal_0"))
    face = service.reference_face_rates(unknown)
    # self-consistent: the network, told the faces grow at these rates, answers them again
    with torch.no_grad():
        again = service.predictor.query(service.embedding, with_observed_rates(unknown, face),
                                        [REFERENCE_CONDITION]).facet_mean.double().numpy()
    np.testing.assert_allclose(again, face, rtol=5e-3)
    # each family's faces carry the family's mean of the network's face rates on the first pass
    first_cube, cube = (g.facet_x[:, largest].numpy() > 0.99 for g in (unknown, graph))  # {100} faces
    rates = graph.facet_x[:, rate].numpy()
    np.testing.assert_allclose(rates[cube], math.log10(face[first_cube].mean()), atol=1e-5)
    np.testing.assert_allclose(rates[~cube], math.log10(face[~first_cube].mean()), atol=1e-5)
    assert np.all(unknown.facet_x[:, rate].numpy() == -4.0)  # the first pass: rate unknown
    est = service.estimate(imaging, 40.0, 0.01)
    assert est.facet_source is FacetSource.imaging and math.isfinite(est.growth_um_per_min)


def test_the_material_s_own_habit_is_its_structure_s_observed_at_the_network_s_rates(tiny_checkpoint):
    from models.graphs import FACET_FEATURES, structure_habit

    service = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    fx = service.material_facets.facet_x.numpy()
    assert np.all(np.isfinite(fx)) and fx.shape[0] <= structure_habit("KCl").num_faces
    assert fx[:, FACET_FEATURES.index("area_fraction")].sum() == pytest.approx(1.0, abs=1e-5)
    # observed rates are the network's own at the reference condition, not the unknown floor
    assert np.all(fx[:, FACET_FEATURES.index("log10_observed_rate_um_per_min")] > -4.0)


def test_a_kinetics_prior_in_the_preset_form_becomes_the_agents_laws():
    """PriorKinetics: the process's power laws, in sigma = ln S (~ the relative supersaturation)."""
    import math

    from conf.contract.process import PowerLawPreset
    from controller.kinetics_service import FacetSource, ModelUnavailable, PriorKinetics

    preset = PowerLawPreset(growth_rate_um_per_min=100.0, growth_exponent=1.5, growth_activation_kj_per_mol=40.0,
                            nucleation_rate_per_kg_s=1e6, nucleation_exponent=2.0, suspension_exponent=1.0,
                            nucleation_basis="suspension_density")
    prior = PriorKinetics(preset, 2000.0, suspension_ref_kg_per_kg=0.05)
    est = prior.estimate([], 25.0, 0.01)
    assert est.growth_um_per_min == pytest.approx(100.0 * 0.01**1.5)  # at T_ref: no Arrhenius factor
    assert est.log10_nucleation == pytest.approx(math.log10(1e6 * 0.01**2 * 0.05))
    assert est.facet_source is FacetSource.kinetics_prior and est.uncertainty == 0.0
    warm = prior.estimate([], 45.0, 0.01).growth_um_per_min
    expected = 100.0 * 0.01**1.5 * math.exp(40e3 / 8.314462618 * (1 / 298.15 - 1 / 318.15))
    assert warm == pytest.approx(expected, rel=1e-9)
    # a third-moment basis: mu_3 as crystal volume per solvent volume, as the plant computes it
    # (plant_sim/reactor.py: M_T x 1000 / rho, the solvent at 1000 kg/m3)
    from plant_sim.kinetics import PowerLawKinetics

    third = PriorKinetics(dataclasses.replace(preset, nucleation_basis="third_moment"), 2000.0, 0.05)
    plant = PowerLawKinetics("test", growth_rate_m_per_s=100.0 / 6e7, growth_exponent=1.5, dissolution_rate_m_per_s=0.0,
                             dissolution_exponent=1.0, nucleation_rate_per_kg_s=1e6, nucleation_exponent=2.0,
                             suspension_exponent=1.0, nucleation_basis="third_moment")
    assert third.estimate([], 25.0, 0.01).log10_nucleation == pytest.approx(
        math.log10(float(plant.nucleation_per_kg_s(25.0, 0.01, 0.05 * 1000.0 / 2000.0))))
    with pytest.raises(ModelUnavailable):
        PriorKinetics(dataclasses.replace(preset, growth_rate_um_per_min=0.0), 2000.0)


def test_a_material_from_a_structure_file_is_served_on_its_own_structure(tiny_checkpoint, tmp_path):
    """The structure reaches the network: KCl read from a file answers as the built-in KCl does,
    another cell answers otherwise."""
    import ase.io

    from conf.contract.lattice import build_atoms
    from conf.contract.materials import MATERIALS
    from models.graphs import CrystalStructure

    m = MATERIALS["KCl"]
    ase.io.write(tmp_path / "kcl.cif", build_atoms("rocksalt", "KCl", m.lattice_constant_angstrom))
    ase.io.write(tmp_path / "other.cif", build_atoms("rocksalt", "KCl", 5.2))  # SYNTHETIC: a squeezed cell
    imaging = [(100, 0.8), (111, 0.2), (0, 0.0), (0, 0.0)]
    reference = KineticsService.load(tiny_checkpoint, "KCl", device="cpu")
    built_in = reference.estimate(imaging, 40.0, 0.01)
    answers, embeddings = {}, {}
    for name in ("kcl", "other"):
        structure = CrystalStructure.from_file(tmp_path / f"{name}.cif", f"{name} as data", m.lattice_energy_kj_per_mol,
                                               m.density_kg_per_m3)
        service = KineticsService.load(tiny_checkpoint, structure, device="cpu")
        assert service.material == f"{name} as data" and service.structure is structure
        answers[name] = service.estimate(imaging, 40.0, 0.01)
        # levels 1-2 pooled per cluster (the cross-scale messages' input), member by member
        embeddings[name] = [h.detach().sort(dim=0).values for h in service.embedding.cluster_h]
    assert answers["kcl"].growth_um_per_min == pytest.approx(built_in.growth_um_per_min, rel=1e-4)
    assert answers["kcl"].log10_nucleation == pytest.approx(built_in.log10_nucleation, rel=1e-4, abs=1e-4)
    assert answers["other"].growth_um_per_min != answers["kcl"].growth_um_per_min
    ref = [h.detach().sort(dim=0).values for h in reference.embedding.cluster_h]
    for same, other, r in zip(embeddings["kcl"], embeddings["other"], ref):
        scale = float(r.abs().max())
        assert float((same - r).abs().max()) < 1e-4 * scale < float((other - r).abs().max())


def test_self_consistent_rates_leave_the_floor_for_the_fixed_point():
    """The served growth was four decades low when one pass started at the rate feature's
    floor: a map with a fixed point at 4 um/min converges there from either side."""
    from controller.kinetics_service import self_consistent_rates

    def contracting(r):
        return 2.0 * np.sqrt(r)  # fixed point r = 4

    for start in (1e-4, 100.0):
        np.testing.assert_allclose(self_consistent_rates(contracting, np.full(3, start)), 4.0, rtol=1e-2)
    # an answer that is not usable comes back as it is, for the caller to treat as unknown
    bad = self_consistent_rates(lambda r: np.full_like(r, math.nan), np.ones(2))
    assert np.all(np.isnan(bad))
    # a map that does not settle stops at the cap, finite
    capped = self_consistent_rates(lambda r: 1.0 / r, np.full(2, 3.0), damping=1.0, max_passes=5)
    assert np.all(np.isfinite(capped))
