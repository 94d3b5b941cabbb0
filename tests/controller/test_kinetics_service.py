"""The model service: local power laws from a query grid, loading, answers with uncertainty."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.kinetics_service import KineticsService, ModelUnavailable, fit_laws
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
    imaging = [(100, 0.9, 0.5), (110, 0.0, 0.0), (111, 0.1, 0.8), (0, 0.0, 0.0)]
    est = service.estimate(imaging, 40.0, 0.01)
    assert est.laws.members == 2 and est.laws.growth.shape == (2, 3) and est.laws.nucleation.shape == (2, 3)
    assert est.growth_um_per_min > 0 and math.isfinite(est.log10_nucleation)
    assert set(est.spread) == {"log10_G", "log10_B", "lambda"} and est.uncertainty >= 0
    # deterministic: the same question, the same answer
    assert service.estimate(imaging, 40.0, 0.01).growth_um_per_min == est.growth_um_per_min
    with pytest.raises(ModelUnavailable, match="imaging"):
        service.estimate([(0, math.nan, math.nan)] * 4, 40.0, 0.01)
    with pytest.raises(ModelUnavailable, match="temperature"):
        service.estimate(imaging, math.nan, 0.01)
