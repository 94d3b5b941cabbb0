"""The shared PCHIP: scipy's interpolant, monotone, linear outside the table."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

from conf.contract.solubility import PchipTable


@pytest.mark.parametrize("seed", range(20))
def test_the_table_is_scipy_s_pchip(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    x = np.cumsum(rng.uniform(0.5, 10.0, n))
    y = np.cumsum(np.abs(rng.normal(size=n))) if seed % 2 else rng.normal(size=n)
    table, reference = PchipTable.through(x, y), PchipInterpolator(x, y)
    xq = np.linspace(x[0], x[-1], 401)
    np.testing.assert_allclose(table(xq), reference(xq), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(table.derivative(xq), reference.derivative()(xq), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(table.slopes, reference.derivative()(x), rtol=1e-12, atol=1e-12)


def test_a_rising_table_rises_and_continues_with_its_end_slopes():
    x = np.array([0.0, 10.0, 20.0, 25.0, 40.0])
    y = np.array([1.0, 1.2, 2.5, 2.6, 4.0])
    table = PchipTable.through(x, y)
    xq = np.linspace(0.0, 40.0, 2001)
    assert np.all(np.diff(table(xq)) >= 0.0)
    assert table(-2.0) == pytest.approx(y[0] - 2.0 * table.slopes[0])
    assert table(45.0) == pytest.approx(y[-1] + 5.0 * table.slopes[-1])
    assert table.derivative(50.0) == pytest.approx(table.slopes[-1])
    assert table.knots.shape == (3, 5)


@pytest.mark.parametrize("x, y", [([0.0], [1.0]), ([0.0, 0.0], [1.0, 2.0]), ([0.0, 1.0], [1.0, np.nan]),
                                  ([0.0, 1.0, 2.0], [1.0, 2.0])])
def test_unusable_tables_are_refused(x, y):
    with pytest.raises(ValueError):
        PchipTable.through(x, y)
