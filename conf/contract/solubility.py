"""A measured solubility table as a monotone piecewise cubic (PCHIP), in numpy.

One implementation for every side that evaluates a measured table: the materials database
(:class:`conf.contract.materials.Solubility`, which the simulated plant reads) and the agent's
moment model (:class:`controller.rollout.MaterialConstants`, which takes its knots and slopes
from here and evaluates the same cubic in torch, batched and differentiable).

On segment k, x_k <= x <= x_{k+1}, with h = x_{k+1} - x_k and s = (x - x_k) / h, the value is
the cubic Hermite through the two points with knot slopes d_k (Fritsch & Carlson 1980, eq. 2):

    y = (2s^3 - 3s^2 + 1) y_k + (s^3 - 2s^2 + s) h d_k + (-2s^3 + 3s^2) y_{k+1} + (s^3 - s^2) h d_{k+1}

The slopes keep the curve monotone wherever the table is: d_k = 0 where the neighbouring secants
m_{k-1}, m_k differ in sign or one is zero, else the weighted harmonic mean
1 / d_k = (w1 / m_{k-1} + w2 / m_k) / (w1 + w2), w1 = 2 h_k + h_{k-1}, w2 = h_k + 2 h_{k-1}; the
end slopes are the shape-preserving one-sided three-point estimates (Moler 2004). These are the
slopes of scipy's ``PchipInterpolator``. Outside the table the curve continues linearly with the
end slopes; how far that is allowed is the caller's rule.

References:
    - Fritsch, F. N. & Carlson, R. E. (1980) SIAM J. Numer. Anal. 17, 238 (monotone PCHIP).
    - Moler, C. (2004) Numerical Computing with MATLAB, SIAM, ch. 3.6 (``pchiptx`` end slopes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PchipTable", "pchip_slopes"]


def _end_slope(h0: float, h1: float, m0: float, m1: float) -> float:
    """One-sided three-point slope at a table end, limited to keep the shape (Moler 2004)."""
    d = ((2.0 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3.0 * abs(m0):
        return 3.0 * m0
    return float(d)


def pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """PCHIP knot slopes dy/dx of a table (module docstring).

    Args:
        x: (n,) knots, strictly increasing, n >= 2.
        y: (n,) values.

    Returns:
        (n,) slopes; a two-point table gets its secant at both ends.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    h = np.diff(x)
    m = np.diff(y) / h
    if x.size == 2:
        return np.array([m[0], m[0]])
    d = np.zeros_like(y)
    flat = (np.sign(m[1:]) != np.sign(m[:-1])) | (m[1:] == 0.0) | (m[:-1] == 0.0)
    w1 = 2.0 * h[1:] + h[:-1]
    w2 = h[1:] + 2.0 * h[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        harmonic = (w1 / m[:-1] + w2 / m[1:]) / (w1 + w2)
    d[1:-1] = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, harmonic))
    d[0] = _end_slope(h[0], h[1], m[0], m[1])
    d[-1] = _end_slope(h[-1], h[-2], m[-1], m[-2])
    return d


@dataclass(frozen=True, eq=False)
class PchipTable:
    """A table y(x) with its PCHIP slopes: values and derivatives anywhere, linear outside.

    Build it with :meth:`through`; the arrays are read-only.

    Attributes:
        x: (n,) knots, strictly increasing, n >= 2.
        y: (n,) values at the knots.
        slopes: (n,) PCHIP slopes at the knots (:func:`pchip_slopes`).
    """

    x: np.ndarray
    y: np.ndarray
    slopes: np.ndarray

    @classmethod
    def through(cls, x, y) -> "PchipTable":
        """The PCHIP through finite points (x strictly increasing, at least two).

        Raises:
            ValueError: for tables that are not 1-D and matching, too short, not finite or
                not strictly increasing in x.
        """
        x = np.array(x, dtype=float)
        y = np.array(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or x.size < 2:
            raise ValueError("need matching 1-D tables of >= 2 points")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("table points must be finite")
        if np.any(np.diff(x) <= 0.0):
            raise ValueError(f"knots must be strictly increasing, got {x.tolist()}")
        slopes = pchip_slopes(x, y)
        for a in (x, y, slopes):
            a.setflags(write=False)
        return cls(x, y, slopes)

    @property
    def knots(self) -> np.ndarray:
        """(3, n): knots, values and slopes, stacked (what a torch evaluation takes)."""
        return np.stack([self.x, self.y, self.slopes])

    def segment(self, x: np.ndarray | float) -> np.ndarray:
        """Index k of the segment [x_k, x_{k+1}] that evaluates ``x`` (ends: the end segments)."""
        return np.searchsorted(self.x[1:-1], np.asarray(x, dtype=float), side="right")

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        """y at ``x`` (any shape): the cubic inside the table, the end tangents outside."""
        xq = np.asarray(x, dtype=float)
        lo, hi = self.x[0], self.x[-1]
        inside = np.clip(xq, lo, hi)
        k = self.segment(inside)
        h = self.x[k + 1] - self.x[k]
        s = (inside - self.x[k]) / h
        s2, s3 = s * s, s * s * s
        value = ((2 * s3 - 3 * s2 + 1) * self.y[k] + (s3 - 2 * s2 + s) * h * self.slopes[k]
                 + (-2 * s3 + 3 * s2) * self.y[k + 1] + (s3 - s2) * h * self.slopes[k + 1])
        return np.where(xq < lo, self.y[0] + self.slopes[0] * (xq - lo),
                        np.where(xq > hi, self.y[-1] + self.slopes[-1] * (xq - hi), value))

    def derivative(self, x: np.ndarray | float) -> np.ndarray:
        """dy/dx at ``x`` (any shape); the end slopes outside the table."""
        xq = np.clip(np.asarray(x, dtype=float), self.x[0], self.x[-1])
        k = self.segment(xq)
        h = self.x[k + 1] - self.x[k]
        s = (xq - self.x[k]) / h
        s2 = s * s
        return ((6 * s2 - 6 * s) * self.y[k] / h + (3 * s2 - 4 * s + 1) * self.slopes[k]
                + (-6 * s2 + 6 * s) * self.y[k + 1] / h + (3 * s2 - 2 * s) * self.slopes[k + 1])
