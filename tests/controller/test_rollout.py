"""The moment-model rollout: seeds, mass balance, setpoint path, and what cooling faster does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conf.contract.materials import get_material
from controller.rollout import (
    BatchPlan,
    MaterialConstants,
    PopulationState,
    mass_below,
    rollout,
    rollout_supersaturation,
    seed_moments,
    setpoint_path,
    step_moments,
)

KCL = MaterialConstants.for_material("KCl")
# ln G = a + g ln sigma + e (1/Tref - 1/T), G um/min; log10 B = c + b log10 sigma + f (...)
GROWTH = torch.tensor([[math.log(60.0), 1.2, 2000.0], [math.log(40.0), 1.0, 2000.0]], dtype=torch.float64)
NUCLEATION = torch.tensor([[4.0, 2.0, 0.0], [3.5, 2.0, 0.0]], dtype=torch.float64)


def plan(**kw) -> BatchPlan:
    base = dict(time_left_s=3 * 3600.0, cooling_left_s=2.5 * 3600.0, final_temperature_c=20.0,
                charged_concentration_g_per_kg=float(KCL.solubility_g_per_kg(50.0)), move_interval_s=600.0,
                step_s=60.0, target_size_um=300.0)
    base.update(kw)
    return BatchPlan(**base)


def seeded_state(temperature_c: float = 49.0) -> PopulationState:
    seeds = seed_moments(40e-3 / 10.0, 100.0, 20.0, KCL)
    return PopulationState(temperature_c, float(KCL.solubility_g_per_kg(50.0)), seeds, (0.0,) * 6)


def step_inputs(temperature_c: float, members: int = 2):
    """(temperature, solute, seeds, nuclei) of the seeded state for one candidate and ``members``."""
    state = seeded_state()
    temp = torch.full((1, members), temperature_c, dtype=torch.float64)
    solute = torch.full((1, members), state.solute_g_per_kg_water, dtype=torch.float64)
    seeds = torch.tensor(state.seeds, dtype=torch.float64).expand(1, members, 6)
    return temp, solute, seeds, torch.zeros(1, members, 6, dtype=torch.float64)


def test_the_model_s_supersaturation_is_the_plant_s_over_the_batch_range():
    """The moment model and the plant must agree on sigma = ln(C / C*) far better than the
    metastable width (0.015): the quadratic fit of ln C* was off by up to 0.0028."""
    plant = get_material("KCl").solubility
    t = np.linspace(10.0, 60.0, 501)
    bias = np.log(KCL.solubility_g_per_kg(t) / plant.g_per_kg(t))
    assert np.abs(bias).max() < 1e-4
    # what the plant integrates with: its reactor's fine table of the same curve
    from plant_sim.reactor import _SolubilityTable

    table = _SolubilityTable(plant.g_per_kg)
    reactor = np.array([table(float(x)) for x in t])
    assert np.abs(np.log(KCL.solubility_g_per_kg(t) / reactor)).max() < 1e-4


def test_solubility_in_torch_is_the_numpy_curve_batched_and_differentiable():
    plant = get_material("KCl").solubility
    t = torch.linspace(-5.0, 105.0, 221, dtype=torch.float64).reshape(13, 17).requires_grad_(True)
    c = KCL.solubility_g_per_kg(t)
    assert c.shape == (13, 17) and c.dtype == torch.float64
    np.testing.assert_allclose(c.detach().numpy(), KCL.solubility_g_per_kg(t.detach().numpy()), rtol=1e-12)
    c.sum().backward()
    # the plant's dC*/dT, also in its linear extrapolation 5 K beyond the table
    np.testing.assert_allclose(t.grad.numpy(), plant.derivative_g_per_kg_per_k(t.detach().numpy()), rtol=1e-9)
    single = KCL.solubility_g_per_kg(torch.tensor([30.0], dtype=torch.float32))
    assert single.dtype == torch.float32 and float(single) == pytest.approx(float(plant.g_per_kg(30.0)), rel=1e-6)
    probe = torch.tensor([3.0, 24.9, 25.0, 47.3, 99.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: KCL.solubility_g_per_kg(x, 0.1), (probe,))


def test_the_table_s_own_slope_is_the_curve_s_derivative_and_inverts_it_in_two_newton_steps():
    """The cascade's inner loop inverts C*(T) every rollout step from one lookup per Newton step:
    the slope must be the curve's derivative, inside the table and on its extrapolated ends."""
    from controller.rollout import _temperature_for_solubility

    t = torch.linspace(-5.0, 105.0, 221, dtype=torch.float64).requires_grad_(True)
    c, slope = KCL.water_solubility_and_slope(t)
    (grad,) = torch.autograd.grad(c.sum(), t)
    np.testing.assert_allclose(slope.detach().numpy(), grad.numpy(), rtol=1e-9)
    want = torch.tensor([20.3, 35.0, 48.9], dtype=torch.float64)
    guess = want + torch.tensor([0.8, -0.6, 0.4], dtype=torch.float64)  # a rollout step is under a kelvin
    found = _temperature_for_solubility(KCL, KCL.water_solubility_g_per_kg(want), guess, 0.0, 100.0)
    np.testing.assert_allclose(found.numpy(), want.numpy(), atol=1e-6)


def test_a_table_given_as_data_is_interpolated_like_the_plant_s():
    """A process defined as data brings its own measured points (here the plant's KNO3 fit
    sampled every 5 K): the model passes through them and follows the plant's PCHIP between."""
    from conf.contract.materials import KNO3_MILLER_RAWLINGS_1994, Solubility

    t = np.arange(0.0, 61.0, 5.0)
    c = KNO3_MILLER_RAWLINGS_1994.g_per_kg(t)
    material = MaterialConstants.from_table(t, c, density_kg_per_m3=2109.0)
    assert material.temperatures_c == tuple(t) and material.volume_shape_factor == pytest.approx(math.pi / 6)
    np.testing.assert_allclose(material.solubility_g_per_kg(t), c, rtol=1e-12)
    fine = np.linspace(0.0, 60.0, 601)
    plant = Solubility(tuple(t), tuple(c), source="test").g_per_kg(fine)
    np.testing.assert_allclose(material.solubility_g_per_kg(fine), plant, rtol=1e-12)
    for bad in [(t[::-1], c), (t, -c), (t[:1], c[:1])]:
        with pytest.raises(ValueError):
            MaterialConstants.from_table(*bad, density_kg_per_m3=2109.0)


def test_the_rollout_s_gradient_matches_finite_differences():
    moves = torch.tensor([[-2.0, -1.5, -1.0]], dtype=torch.float64, requires_grad=True)
    p = plan(time_left_s=3600.0, cooling_left_s=3000.0, step_s=120.0)

    def peak(m):
        return rollout(m, seeded_state(), GROWTH, NUCLEATION, KCL, p).peak_sigma.sum()

    peak(moves).backward()
    h = 1e-6
    for j in range(3):
        step = torch.zeros_like(moves)
        step[0, j] = h
        numeric = (peak(moves.detach() + step) - peak(moves.detach() - step)) / (2 * h)
        assert float(moves.grad[0, j]) == pytest.approx(float(numeric), rel=1e-4, abs=1e-10)


def test_seed_moments_carry_the_seed_mass_and_mean_size():
    mu = seed_moments(4e-3, 100.0, 20.0, KCL)
    assert KCL.mass_per_um3_kg * mu[3] == pytest.approx(4e-3)
    assert mu[1] / mu[0] == pytest.approx(100.0, rel=1e-3)
    assert seed_moments(0.0, 100.0, 20.0, KCL) == (0.0,) * 6


def test_one_step_conserves_solute_plus_crystal_mass():
    temp, conc, seeds, nuclei = step_inputs(45.0)
    conc2, seeds2, nuclei2, sigma = step_moments(temp, conc, seeds, nuclei, GROWTH, NUCLEATION, KCL, 60.0, 0.05)
    assert (sigma > 0).all()
    crystal = 1000.0 * KCL.mass_per_um3_kg * ((seeds2 + nuclei2)[..., 3] - (seeds + nuclei)[..., 3])
    torch.testing.assert_close(conc - conc2, crystal)
    assert (crystal > 0).all() and (nuclei2[..., 0] > 0).all()


def test_undersaturated_solution_neither_grows_nor_nucleates():
    state = seeded_state()
    temp = torch.full((1, 2), 70.0, dtype=torch.float64)  # far above saturation
    conc = torch.full((1, 2), state.concentration_g_per_kg, dtype=torch.float64)
    seeds = torch.tensor(state.seeds, dtype=torch.float64).expand(1, 2, 6)
    conc2, seeds2, nuclei2, _ = step_moments(temp, conc, seeds, torch.zeros(1, 2, 6, dtype=torch.float64),
                                             GROWTH, NUCLEATION, KCL, 60.0, 0.05)
    torch.testing.assert_close(seeds2, seeds)
    assert nuclei2.abs().max() == 0 and torch.equal(conc2, conc)


def test_setpoint_path_moves_then_ramps_to_the_final_temperature_and_holds():
    p = plan()
    moves = torch.tensor([[-2.0, -2.0, -1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    path = setpoint_path(moves, 49.0, p)
    t = (torch.arange(path.shape[1], dtype=torch.float64) + 1.0) * p.step_s
    assert path.shape == (2, int(p.time_left_s / p.step_s))
    # after one move interval the first candidate is 2 K lower, after three 5 K
    assert float(path[0][t == 600.0]) == pytest.approx(47.0)
    assert float(path[0][t == 1800.0]) == pytest.approx(44.0)
    # both reach the final temperature at the end of cooling and hold it
    assert torch.allclose(path[:, t >= p.cooling_left_s], torch.tensor(20.0, dtype=torch.float64))
    assert (path >= 20.0 - 1e-9).all()
    # the plain ramp after the moves is monotone
    assert (torch.diff(path[1]) <= 1e-9).all()


def test_faster_cooling_raises_the_peak_supersaturation_and_the_fines():
    p = plan()
    moves = torch.tensor([[-1.0] * 3, [-5.0] * 3], dtype=torch.float64)  # 0.1 vs 0.5 K/min
    out = rollout(moves, seeded_state(), GROWTH, NUCLEATION, KCL, p)
    assert out.d43_um.shape == (2, 2)
    assert (out.peak_sigma[1] > out.peak_sigma[0]).all()
    assert (out.fines[1] > out.fines[0]).all()
    assert ((out.yield_fraction > 0.5) & (out.yield_fraction <= 1.0 + 1e-6)).all()
    assert (out.d43_um > 100.0).all()  # the seeds grew


def test_rollout_is_differentiable_in_the_moves():
    moves = torch.tensor([[-2.0, -2.0, -2.0]], dtype=torch.float64, requires_grad=True)
    out = rollout(moves, seeded_state(), GROWTH, NUCLEATION, KCL, plan())
    out.peak_sigma.sum().backward()
    assert moves.grad is not None and torch.isfinite(moves.grad).all() and moves.grad.abs().sum() > 0


def test_antisolvent_lowers_the_solubility_as_the_plant_models_it():
    from plant_sim.reactor import ReactorSettings

    k_as = ReactorSettings().antisolvent_solubility_coefficient
    material = MaterialConstants.for_material("KCl", antisolvent_coefficient=k_as)
    a = 0.25  # kg antisolvent per kg water: mass fraction 0.2 of the solvent
    ratio = material.solubility_g_per_kg(30.0, a) / material.solubility_g_per_kg(30.0)
    assert ratio == pytest.approx(math.exp(-k_as * 0.2))


def test_a_step_with_antisolvent_conserves_solute_per_kg_water():
    temp, solute, seeds, nuclei = step_inputs(45.0)
    plain = step_moments(temp, solute, seeds, nuclei, GROWTH, NUCLEATION, KCL, 60.0, 0.05)
    anti = step_moments(temp, solute, seeds, nuclei, GROWTH, NUCLEATION, KCL, 60.0, 0.05, antisolvent=0.2)
    assert (anti[3] > plain[3]).all()  # less soluble in the mixture: higher driving force
    crystal = 1000.0 * KCL.mass_per_um3_kg * ((anti[1] + anti[2])[..., 3] - (seeds + nuclei)[..., 3])
    torch.testing.assert_close(solute - anti[0], crystal)


def test_antisolvent_fed_over_the_moves_raises_yield_and_is_accounted():
    p = plan(water_mass_kg=20.0)
    moves = torch.tensor([[-1.0] * 3] * 2, dtype=torch.float64)
    rates = torch.tensor([[0.0] * 3, [0.5] * 3], dtype=torch.float64)  # kg/min over 30 min
    out = rollout(moves, seeded_state(), GROWTH, NUCLEATION, KCL, p, antisolvent_kg_per_min=rates)
    torch.testing.assert_close(out.antisolvent_added[1], torch.full((2,), 0.5 * 30.0 / 20.0, dtype=torch.float64))
    assert (out.antisolvent_added[0] == 0).all()
    assert (out.peak_sigma[1] > out.peak_sigma[0]).all()


def test_a_shorter_cooling_ends_the_batch_sooner_and_drives_harder():
    p = plan()
    moves = torch.tensor([[-1.0] * 3] * 2, dtype=torch.float64)
    scale = torch.tensor([1.0, 0.6], dtype=torch.float64, requires_grad=True)
    out = rollout(moves, seeded_state(), GROWTH, NUCLEATION, KCL, p, cooling_scale=scale)
    hold_s = p.time_left_s - p.cooling_left_s
    torch.testing.assert_close(out.time_left_s.detach(),
                               torch.tensor([p.time_left_s, 0.6 * p.cooling_left_s + hold_s], dtype=torch.float64))
    assert (out.peak_sigma[1] > out.peak_sigma[0]).all()
    out.peak_sigma.sum().backward()
    assert scale.grad is not None and torch.isfinite(scale.grad).all() and scale.grad[1] != 0


def test_the_scaled_path_reaches_the_final_temperature_at_its_own_end_of_cooling():
    p = plan()
    moves = torch.tensor([[-1.0] * 3], dtype=torch.float64)
    cooling = torch.tensor([0.5 * p.cooling_left_s], dtype=torch.float64)
    times = torch.arange(1, 200, dtype=torch.float64)[None, :] * 60.0
    path = setpoint_path(moves, 49.0, p, times, cooling)
    assert torch.allclose(path[times >= cooling], torch.tensor(20.0, dtype=torch.float64))
    assert (path[times < cooling - 60.0] > 20.0).all()


def test_growth_alone_translates_the_distribution_exactly_however_long_the_step():
    """Size-independent growth shifts every crystal by the same length L = G dt: the number
    mean moves by L and the number variance stays, even over a step of hours."""
    no_nucleation = torch.tensor([[-30.0, 0.0, 0.0]], dtype=torch.float64)
    temp, solute, seeds, nuclei0 = step_inputs(40.0, members=1)
    _, grown, nuclei, sigma = step_moments(temp, solute, seeds, nuclei0, GROWTH[:1], no_nucleation, KCL, 3600.0, 0.05)
    inv_t = 1.0 / 298.15 - 1.0 / (40.0 + 273.15)
    g_um_per_s = math.exp(GROWTH[0, 0] + GROWTH[0, 1] * math.log(float(sigma)) + GROWTH[0, 2] * inv_t) / 60.0
    mean = lambda m: float(m[..., 1] / m[..., 0])  # noqa: E731
    var = lambda m: float(m[..., 2] / m[..., 0]) - mean(m) ** 2  # noqa: E731
    assert mean(grown) - mean(seeds) == pytest.approx(g_um_per_s * 3600.0, rel=1e-9)
    assert var(grown) == pytest.approx(var(seeds), rel=1e-6)
    assert float(nuclei[..., 0]) < 1e-20  # B = 1e-30: no nuclei to speak of


def test_a_process_with_its_material_as_data_gives_its_own_constants():
    from conf.schema import load_config

    cfg = load_config(["scenario=kno3_as_data"], simulator=False)
    m = MaterialConstants.for_process(cfg.process)
    assert m.density_kg_per_m3 == 2110.0 and m.volume_shape_factor == 1.0
    assert float(m.solubility_g_per_kg(20.0)) == pytest.approx(128.6 + 5.88 * 20 + 0.1721 * 400, rel=1e-6)
    kcl = MaterialConstants.for_process(load_config([], simulator=False).process)  # a built-in by name
    assert kcl == MaterialConstants.for_material("KCl")


def _ssc_rollout(fractions, holds_s, limit=0.015, held_s=0.0, state=None, rate=0.5):
    sp = torch.tensor([[f * limit, f * limit] for f in fractions], dtype=torch.float64)
    hold = torch.tensor(holds_s, dtype=torch.float64)
    return rollout_supersaturation(sp, hold, state or seeded_state(), GROWTH, NUCLEATION, KCL, plan(step_s=120.0),
                                   rate, 35.0, 30 * 3600.0, held_s=held_s)


def test_under_supersaturation_control_a_higher_setpoint_ends_sooner_at_about_its_own_peak():
    limit = 0.015
    out = _ssc_rollout([0.5, 0.8], [1800.0, 1800.0], limit)
    ends_h = out.time_left_s.numpy() / 3600.0
    assert np.all(ends_h[1] < ends_h[0])  # every member: more driving force, less batch time
    assert np.all(ends_h < 30.0)  # both reach the final temperature and hold
    # the loop holds the setpoint: the peak is the setpoint, not the rate limit's excursion
    np.testing.assert_allclose(out.peak_sigma.numpy()[0], 0.5 * limit, rtol=0.05)
    np.testing.assert_allclose(out.peak_sigma.numpy()[1], 0.8 * limit, rtol=0.05)
    assert torch.all(out.yield_fraction > 0.9) and torch.all(out.yield_fraction <= 1.0 + 1e-9)


def test_the_final_hold_costs_its_time_and_buys_yield_and_a_batch_in_its_hold_may_end_now():
    out = _ssc_rollout([0.8, 0.8], [0.0, 1800.0])
    extra_s = (out.time_left_s[1] - out.time_left_s[0]).numpy()
    np.testing.assert_allclose(extra_s, 1800.0, atol=120.0)
    assert torch.all(out.yield_fraction[1] > out.yield_fraction[0])
    # a batch that has held 20 min already: a 10 min hold ends at once, a 30 min one in 10
    final = PopulationState(20.0, float(KCL.solubility_g_per_kg(20.0)) * 1.01, seeded_state().seeds, (0.0,) * 6)
    held = _ssc_rollout([0.8, 0.8], [600.0, 1800.0], held_s=1200.0, state=final)
    np.testing.assert_allclose(held.time_left_s.numpy()[0], 120.0)  # the first step
    np.testing.assert_allclose(held.time_left_s.numpy()[1], 600.0, atol=120.0)


def test_a_rate_limited_loop_falls_behind_its_setpoint_and_never_heats():
    # at 0.01 K/min the loop cannot cool fast enough to hold 0.8 x limit: sigma stays below it
    out = _ssc_rollout([0.8], [0.0], rate=0.01)
    assert torch.all(out.peak_sigma < 0.8 * 0.015)
    assert torch.all(out.time_left_s >= 30 * 3600.0 - 1e-6)  # never reaches 20 C in the horizon


def test_the_mass_below_a_size_is_none_all_or_a_share_and_an_empty_population_has_none():
    seeds = torch.tensor(seed_moments(4e-3, 100.0, 20.0, KCL), dtype=torch.float64)
    volume = float(seeds[3])
    assert float(mass_below(seeds, 1.0)) < 1e-6 * volume
    assert float(mass_below(seeds, 1000.0)) == pytest.approx(volume, rel=1e-6)
    # the volume-weighted median of 100 +- 20 um seeds lies above their number mean
    share = float(mass_below(seeds, 100.0)) / volume
    assert 0.2 < share < 0.5
    assert float(mass_below(torch.zeros(6, dtype=torch.float64), 100.0)) == 0.0
