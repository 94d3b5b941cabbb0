"""State estimation, part 1: per-signal validation and filtering (pure; time is passed in).

Each measured signal gets a status every cycle, checked in this order:

- ``missing``: no reading at all;
- ``bad_quality``: the source flags it (OPC UA status not good);
- ``not_finite``: NaN or infinite;
- ``stale``: its source timestamp is older than ``stale_after_s`` of plant time;
- ``out_of_range``: outside the tag map's engineering range;
- ``spike``: further from the median of the recent accepted readings than ``spike_threshold``
  robust standard deviations (1.4826 MAD, floored at the signal's noise floor); after
  ``spike_persistence`` such readings in a row the new level is real (a step, not a spike):
  the window restarts from it;
- ``stuck``: a signal that should be noisy has not changed at all for ``stuck_after_s``;
- ``ok``.

Only ``ok`` readings enter the filter (first-order, time constant ``filter_time_s``) and the
spike window; a signal that is not ``ok`` keeps its last filtered value and says how old it is,
so the guard can hold on it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["Reading", "SignalStatus", "SignalTracker", "ValidationSettings", "Validated"]


class SignalStatus(str, enum.Enum):
    ok = "ok"
    missing = "missing"
    bad_quality = "bad_quality"
    not_finite = "not_finite"
    stale = "stale"
    out_of_range = "out_of_range"
    spike = "spike"
    stuck = "stuck"


@dataclass(frozen=True)
class ValidationSettings:
    """How one signal is judged.

    Attributes:
        low: engineering range, low end.
        high: engineering range, high end.
        stale_after_s: largest age of the source timestamp (plant seconds).
        stuck_after_s: a noisy signal unchanged this long is stuck (0 disables: setpoints,
            states and counters do not move on their own).
        spike_threshold: robust standard deviations from the recent median that make a spike.
        noise_floor: smallest standard deviation assumed (signal units), so a quiet signal's
            first wiggle is not a spike.
        window: accepted readings kept for the spike test.
        spike_persistence: consecutive outliers accepted as a new level.
        filter_time_s: time constant of the first-order filter (0: no filtering).
    """

    low: float = -math.inf
    high: float = math.inf
    stale_after_s: float = 30.0
    stuck_after_s: float = 0.0
    spike_threshold: float = 8.0
    noise_floor: float = 1e-6
    window: int = 30
    spike_persistence: int = 3
    filter_time_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"need low <= high, got {self.low}, {self.high}")
        for name in ("stale_after_s", "spike_threshold", "noise_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.stuck_after_s < 0 or self.filter_time_s < 0 or self.window < 3 or self.spike_persistence < 1:
            raise ValueError("stuck_after_s and filter_time_s must be >= 0, window >= 3, spike_persistence >= 1")


@dataclass(frozen=True)
class Reading:
    """One raw reading: value, source timestamp (plant seconds) and the source's quality flag."""

    value: float | None
    source_time_s: float | None
    good: bool = True


@dataclass(frozen=True)
class Validated:
    """A signal after validation.

    Attributes:
        status: this cycle's verdict.
        value: the filtered value of the last ok reading (NaN if there never was one).
        age_s: plant seconds since the last ok reading (inf if none).
    """

    status: SignalStatus
    value: float
    age_s: float

    @property
    def ok(self) -> bool:
        return self.status is SignalStatus.ok


class SignalTracker:
    """Validates and filters one signal over time (see the module docstring)."""

    def __init__(self, settings: ValidationSettings = ValidationSettings()) -> None:
        self.settings = settings
        self._window: deque[float] = deque(maxlen=settings.window)
        self._filtered = math.nan
        self._last_ok_time_s = -math.inf
        self._last_value: float | None = None
        self._unchanged_since_s: float | None = None
        self._outliers = 0

    def update(self, reading: Reading | None, now_s: float) -> Validated:
        """Judge ``reading`` at plant time ``now_s`` and update the filter."""
        status = self._judge(reading, now_s)
        if status is SignalStatus.ok:
            assert reading is not None and reading.value is not None
            x = float(reading.value)
            self._window.append(x)
            tau = self.settings.filter_time_s
            if tau > 0 and math.isfinite(self._filtered):
                dt = max(now_s - self._last_ok_time_s, 0.0)
                alpha = 1.0 - math.exp(-dt / tau)
                self._filtered += alpha * (x - self._filtered)
            else:
                self._filtered = x
            self._last_ok_time_s = now_s
        return Validated(status, self._filtered, now_s - self._last_ok_time_s)

    def _judge(self, reading: Reading | None, now_s: float) -> SignalStatus:
        s = self.settings
        if reading is None or reading.value is None:
            return SignalStatus.missing
        if not reading.good:
            return SignalStatus.bad_quality
        try:
            x = float(reading.value)
        except (TypeError, ValueError):
            return SignalStatus.not_finite
        if not math.isfinite(x):
            return SignalStatus.not_finite
        t = reading.source_time_s
        if t is None or not math.isfinite(t) or now_s - t > s.stale_after_s:
            return SignalStatus.stale
        if not s.low <= x <= s.high:
            return SignalStatus.out_of_range
        if len(self._window) >= 5:
            recent = np.fromiter(self._window, dtype=float)
            median = float(np.median(recent))
            scale = max(1.4826 * float(np.median(np.abs(recent - median))), s.noise_floor)
            if abs(x - median) > s.spike_threshold * scale:
                self._outliers += 1
                if self._outliers < s.spike_persistence:
                    return SignalStatus.spike
                self._window.clear()  # a persistent new level: start over from it
            self._outliers = 0
        if s.stuck_after_s > 0:
            if self._last_value is None or x != self._last_value:
                self._last_value, self._unchanged_since_s = x, t
            elif t - (self._unchanged_since_s if self._unchanged_since_s is not None else t) >= s.stuck_after_s:
                return SignalStatus.stuck
        return SignalStatus.ok


# ----------------------------------------------------------------------------- derived quantities
def driving_force(concentration_g_per_kg: float, solubility_g_per_kg: float) -> float:
    """sigma = ln(C / C*), the driving force the model and the kinetics use; NaN if undefined."""
    if not (math.isfinite(concentration_g_per_kg) and math.isfinite(solubility_g_per_kg)):
        return math.nan
    if concentration_g_per_kg <= 0.0 or solubility_g_per_kg <= 0.0:
        return math.nan
    return math.log(concentration_g_per_kg / solubility_g_per_kg)


#: Mean FBRM chord of a sphere of diameter D, for a beam sweeping across its projected disc:
#: pi/4 D (the mean chord of a circle). Sizes below are chord / (pi/4).
CHORD_PER_DIAMETER = math.pi / 4.0


@dataclass(frozen=True)
class ChordStatistics:
    """What FBRM chord counts say about the population (counts are per second, not per kg).

    Attributes:
        total_per_s: all counts.
        moments: mu_0..mu_4 of the size-equivalent distribution in um^k (counts per s weighted).
        mean_size_um: number-weighted mean size, mu_1 / mu_0.
        volume_mean_size_um: volume-weighted mean size, mu_4 / mu_3.
        fines_fraction: share of counts below ``fines_size_um``.
    """

    total_per_s: float
    moments: tuple[float, float, float, float, float]
    mean_size_um: float
    volume_mean_size_um: float
    fines_fraction: float


def chord_statistics(counts_per_s, bin_edges_um, fines_size_um: float = 100.0) -> ChordStatistics:
    """Moments and mean sizes from binned chord counts (bins at their geometric centres).

    Args:
        counts_per_s: counts per bin, (n_bins,); NaN or negative bins count as missing (0).
        bin_edges_um: chord bin edges, (n_bins + 1,), increasing, > 0.
        fines_size_um: size below which a crystal is a fine.
    """
    counts = np.nan_to_num(np.asarray(counts_per_s, dtype=float), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    edges = np.asarray(bin_edges_um, dtype=float)
    if edges.shape != (counts.size + 1,) or not np.all(np.diff(edges) > 0) or edges[0] <= 0:
        raise ValueError(f"need {counts.size + 1} increasing positive bin edges, got {bin_edges_um}")
    size = np.sqrt(edges[:-1] * edges[1:]) / CHORD_PER_DIAMETER
    moments = tuple(float(np.sum(counts * size**k)) for k in range(5))
    total = moments[0]
    nan = math.nan
    return ChordStatistics(
        total_per_s=total,
        moments=moments,  # type: ignore[arg-type]
        mean_size_um=moments[1] / total if total > 0 else nan,
        volume_mean_size_um=moments[4] / moments[3] if moments[3] > 0 else nan,
        fines_fraction=float(counts[size < fines_size_um].sum() / total) if total > 0 else nan,
    )
