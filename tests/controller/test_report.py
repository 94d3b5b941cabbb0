"""Report helpers: the growth seen in the trend of a size signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.report import trend_growth_um_per_min


def test_the_trend_of_a_noisy_growing_size_recovers_its_growth_rate():
    """150 um crystals growing 1.2 um/min, read every 30 s with the imaging probe's 2 % scatter."""
    rng = np.random.default_rng(0)
    t = np.arange(0.0, 3 * 3600.0, 30.0)
    size = 150.0 + 1.2 * t / 60.0
    noisy = size * (1.0 + 0.02 * rng.standard_normal(t.size))
    growth = trend_growth_um_per_min(t, noisy, window_s=900.0)
    settled = growth[t >= 900.0]
    assert np.all(np.isfinite(settled))
    assert float(np.mean(settled)) == pytest.approx(1.2, abs=0.05)
    assert float(np.std(settled)) < 0.5
    # exact data, exact slope; a constant size, no growth
    np.testing.assert_allclose(trend_growth_um_per_min(t, size)[10:], 1.2, rtol=1e-9)
    np.testing.assert_allclose(trend_growth_um_per_min(t, np.full(t.size, 80.0))[10:], 0.0, atol=1e-12)


def test_too_few_valid_points_give_nan():
    t = np.arange(0.0, 600.0, 30.0)
    size = 100.0 + t / 60.0
    growth = trend_growth_um_per_min(t, size, window_s=300.0, min_points=5)
    assert np.all(np.isnan(growth[:4])) and np.all(np.isfinite(growth[4:]))
    # bad readings are skipped, and a window of them reads NaN
    gappy = size.copy()
    gappy[8:] = math.nan
    growth = trend_growth_um_per_min(t, gappy, window_s=300.0, min_points=5)
    np.testing.assert_allclose(growth[4:8], 1.0, rtol=1e-9)
    assert np.all(np.isnan(growth[8 + 10:]))  # the window has left the last good reading
    # one instant repeated is no trend
    assert np.isnan(trend_growth_um_per_min(np.zeros(6), np.arange(6.0))).all()
    assert np.isnan(trend_growth_um_per_min([], [])).all()
    with pytest.raises(ValueError):
        trend_growth_um_per_min(t, size, min_points=1)
