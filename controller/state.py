"""State estimation, part 1: per-signal validation and filtering (pure; time is passed in).

Each measured signal gets a status every cycle, checked in this order:

- ``missing``: no reading at all;
- ``bad_quality``: the source flags it (OPC UA status not good);
- ``not_finite``: NaN or infinite;
- ``stale``: its source timestamp is older than ``stale_after_s`` of plant time;
- ``out_of_range``: outside the tag map's engineering range;
- ``spike``: further from the straight line through the recent accepted readings (least
  squares over their source times, extrapolated to this one) than ``spike_threshold`` robust
  standard deviations (1.4826 median absolute residual, floored at the signal's noise floor
  plus its relative noise, both widened by the line's prediction uncertainty) and, where the
  signal has a ``max_rate_per_s``, also further from the last accepted reading than that
  allowance plus the distance the process can travel since (a rate-of-change limit: when a
  ramp starts or stops the line trails the level by more than the noise, but the reading
  moves no faster than the process). After ``spike_persistence`` such readings in a row the
  new level is real (a step, not a spike): the window restarts from it;
- ``stuck``: a signal that should be noisy has repeated one value exactly for ``stuck_after_s``
  and over at least ``stuck_min_readings`` readings of distinct source times (more where the
  value looks quantised: a round number repeats by resolution, not by fault);
- ``ok``.

Only ``ok`` readings enter the filter (first-order, time constant ``filter_time_s``) and the
spike window; a signal that is not ``ok`` keeps its last filtered value and says how old it is,
so the guard can hold on it.

Settings per signal come from what its instrument is (:class:`InstrumentSpec`: noise, dead time,
lag, resolution) through :func:`validation_settings_for`. The instruments are the process's
(:mod:`conf.contract.instruments`, a process file's ``instruments``); the defaults,
:data:`DEFAULT_INSTRUMENTS`, are those the simulated plant imitates (plant_sim/sensors.py,
``SensorSettings``), copied into the contract so the agent runs without the simulator.

Supersaturation compares the concentration with the solubility at the reactor temperature of the
same instant. The ATR-FTIR reports the solution as it was a dead time plus lags ago, so
:class:`DeadTimeAligner` hands back the reactor temperature of that instant
(:func:`alignment_delay_s` says how long ago), and sigma = ln(C_measured(t) / C*(T(t - delay))).
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from dataclasses import dataclass
from itertools import pairwise
from typing import Mapping

import numpy as np

from conf.contract.instruments import DEFAULT_INSTRUMENTS, InstrumentSpec

__all__ = [
    "DEFAULT_INSTRUMENTS",
    "DeadTimeAligner",
    "aligned",
    "delayed_value",
    "InstrumentSpec",
    "Reading",
    "SignalStatus",
    "SignalTracker",
    "ValidationSettings",
    "Validated",
    "alignment_delay_s",
    "stuck_min_readings",
    "validation_settings_for",
]


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
        spike_threshold: robust standard deviations from the recent trend that make a spike.
        noise_floor: smallest standard deviation assumed (signal units), so a quiet signal's
            first wiggle is not a spike.
        window: accepted readings kept for the spike test.
        spike_persistence: consecutive outliers accepted as a new level.
        filter_time_s: time constant of the first-order filter (0: no filtering).
        noise_relative: noise proportional to the level (counting instruments), added in
            quadrature to ``noise_floor`` at the level the trend expects.
        max_rate_per_s: fastest the measured quantity really moves (signal units per plant
            second); a reading is a spike only if it also jumped from the last accepted reading
            by more than the spike allowance plus this rate times the time since. None: the
            trend test alone decides.
        stuck_min_readings: readings (of distinct source times, the first included) that must
            repeat the value exactly before it is stuck; a quantised value repeats by chance.
        noise_std: the instrument's noise (0: not known). Where it is known, a signal whose
            values have all had at most three decimals is read as quantised to the finest of
            them (a logger's 0.1 C, a scaled Modbus register: a float instrument's noise never
            lands on round numbers) and must repeat :func:`stuck_min_readings` times for that
            step, or is never stuck where the step hides the noise.
        spike_test: judge spikes (False for setpoint read-backs, states and counters: they
            step when the controller or the sequence moves them, not by a fault).
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
    noise_relative: float = 0.0
    max_rate_per_s: float | None = None
    stuck_min_readings: int = 2
    noise_std: float = 0.0
    spike_test: bool = True

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"need low <= high, got {self.low}, {self.high}")
        for name in ("stale_after_s", "spike_threshold", "noise_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.stuck_after_s < 0 or self.filter_time_s < 0 or self.window < 3 or self.spike_persistence < 1:
            raise ValueError("stuck_after_s and filter_time_s must be >= 0, window >= 3, spike_persistence >= 1")
        if not self.noise_relative >= 0 or (self.max_rate_per_s is not None and not self.max_rate_per_s >= 0):
            raise ValueError("noise_relative and max_rate_per_s must be >= 0")
        if self.stuck_min_readings < 2:
            raise ValueError(f"stuck_min_readings must be >= 2, got {self.stuck_min_readings}")


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
        self._window: deque[tuple[float, float]] = deque(maxlen=settings.window)  # (source time, value)
        self._filtered = math.nan
        self._last_ok_time_s = -math.inf
        self._last_ok_value = math.nan
        self._last_ok_source_s = -math.inf
        self._last_value: float | None = None
        self._unchanged_since_s: float | None = None
        self._repeats = 0
        self._repeat_source_s = -math.inf
        self._outliers = 0
        self._finest_step: float | None = None  # the finest last decimal its values had (0: a float's)

    def update(self, reading: Reading | None, now_s: float) -> Validated:
        """Judge ``reading`` at plant time ``now_s`` and update the filter."""
        status = self._judge(reading, now_s)
        if status is SignalStatus.ok:
            assert reading is not None and reading.value is not None and reading.source_time_s is not None
            x = float(reading.value)
            self._window.append((float(reading.source_time_s), x))
            tau = self.settings.filter_time_s
            if tau > 0 and math.isfinite(self._filtered):
                dt = max(now_s - self._last_ok_time_s, 0.0)
                alpha = 1.0 - math.exp(-dt / tau)
                self._filtered += alpha * (x - self._filtered)
            else:
                self._filtered = x
            self._last_ok_time_s = now_s
            self._last_ok_value, self._last_ok_source_s = x, float(reading.source_time_s)
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
        if s.spike_test and len(self._window) >= 5:
            if self._is_outlier(x, t):
                self._outliers += 1
                if self._outliers < s.spike_persistence:
                    return SignalStatus.spike
                self._window.clear()  # a persistent new level: start over from it
            self._outliers = 0
        if s.stuck_after_s > 0:
            if s.noise_std > 0:
                step = decimal_step(x) or 0.0
                self._finest_step = step if self._finest_step is None else min(self._finest_step, step)
            if self._last_value is None or x != self._last_value:
                self._last_value, self._unchanged_since_s = x, t
                self._repeats, self._repeat_source_s = 1, t
            else:
                if t > self._repeat_source_s:  # the same sample read twice is not a repeat
                    self._repeats, self._repeat_source_s = self._repeats + 1, t
                since = self._unchanged_since_s if self._unchanged_since_s is not None else t
                if t - since >= s.stuck_after_s and self._repeats >= self._stuck_readings(x):
                    return SignalStatus.stuck
        return SignalStatus.ok

    def _stuck_readings(self, x: float) -> float:
        """Repeats that make the signal stuck (``ValidationSettings.noise_std``): the settings'
        count, or more where its values look quantised, judged by the finest last decimal any
        of them had (one value cannot say: 35.0 is as likely on a 0.01 register as on a 1 C
        one); inf where that step hides the noise."""
        s = self.settings
        step = self._finest_step
        if s.noise_std <= 0 or not step:
            return s.stuck_min_readings
        n = stuck_min_readings(s.noise_std, step)
        return math.inf if n is None else max(n, s.stuck_min_readings)

    def _is_outlier(self, x: float, source_time_s: float) -> bool:
        s = self.settings
        # Plain Python over the window (at most ``window`` pairs): every signal is judged every
        # cycle, and numpy's per-call overhead on 30 numbers was a tenth of a benchmark batch.
        times = [p[0] for p in self._window]
        values = [p[1] for p in self._window]
        size = len(times)
        # A straight line through the window, not its median: a ramp's spread is no noise.
        t_mean, x_mean = sum(times) / size, sum(values) / size
        dt = [t - t_mean for t in times]
        stt = sum(d * d for d in dt)
        slope = sum(d * (v - x_mean) for d, v in zip(dt, values)) / stt if stt > 0 else 0.0
        expected = x_mean + slope * (source_time_s - t_mean)
        residual_sd = 1.4826 * statistics.median(abs(v - x_mean - slope * d) for d, v in zip(dt, values))
        floor = math.hypot(s.noise_floor, s.noise_relative * expected)
        # The line's own uncertainty where it is extrapolated to (least-squares prediction).
        reach = math.sqrt(1.0 + 1.0 / size + ((source_time_s - t_mean) ** 2 / stt if stt > 0 else 0.0))
        allowance = s.spike_threshold * max(residual_sd, floor) * reach
        if abs(x - expected) <= allowance:
            return False
        if s.max_rate_per_s is None:
            return True
        # The line trails a change of ramp for a window's length; the last accepted reading does not.
        elapsed_s = max(source_time_s - self._last_ok_source_s, 0.0)
        return abs(x - self._last_ok_value) > allowance + s.max_rate_per_s * elapsed_s


# ----------------------------------------------------------------------------- instruments
# InstrumentSpec and DEFAULT_INSTRUMENTS are the process's (conf/contract/instruments.py: a process
# file names its instruments); imported above and re-exported, so existing imports keep working.

# Chance per test that a healthy signal is called stuck: 1e-7 is one false call in ~10 years of
# 30 s cycles on three signals.
_FALSE_STUCK_PROBABILITY = 1e-7
# Beyond this many readings the resolution hides the noise; the stuck test is switched off.
_MAX_STUCK_READINGS = 40


def decimal_step(x: float, most_decimals: int = 3) -> float | None:
    """The last decimal of a value written with at most ``most_decimals`` decimals (49.9 -> 0.1,
    50.0 -> 1), the quantisation step it may carry; None for a value that needs more (a
    float instrument's noisy reading)."""
    for k in range(most_decimals + 1):
        scaled = x * 10.0**k
        if abs(scaled - round(scaled)) <= 1e-9 * max(1.0, abs(scaled)):
            return 10.0**-k
    return None


def stuck_min_readings(noise_std: float, resolution: float = 0.0,
                       false_alarm_probability: float = _FALSE_STUCK_PROBABILITY) -> int | None:
    """Readings that must repeat one value exactly before a noisy signal counts as stuck.

    A reading quantised to steps q lands in any one step with probability at most
    p = erf(q / (2 sqrt(2) sigma)) (the step centred on the true value), so n readings of a
    healthy instrument repeat one value with probability at most p^(n - 1).

    Args:
        noise_std: the instrument's noise sigma, signal units.
        resolution: quantisation step q of the transmitted value (0: float).
        false_alarm_probability: accepted chance that healthy readings look stuck.

    Returns:
        The smallest n >= 2 with p^(n - 1) <= ``false_alarm_probability``, or None if that
        needs more than 40 readings (the resolution hides the noise: no stuck test).
    """
    p = math.erf(resolution / (2.0 * math.sqrt(2.0) * noise_std))
    if p <= 0.0:
        return 2
    if p >= 1.0:
        return None
    n = 1 + math.ceil(math.log(false_alarm_probability) / math.log(p))
    return max(n, 2) if n <= _MAX_STUCK_READINGS else None


def validation_settings_for(
    signals: Mapping[str, tuple[float, float]],
    instruments: Mapping[str, InstrumentSpec] = DEFAULT_INSTRUMENTS,
    stale_after_s: float = 90.0,
    stuck_after_s: float = 90.0,
    spike_threshold: float = 6.0,
) -> dict[str, ValidationSettings]:
    """Validation per signal from what its instrument is.

    The noise floor is the instrument's noise (with the quantisation's q / sqrt(12)), so the
    spike threshold is in noise units; a noisy instrument is stuck once it repeats one value for
    ``stuck_after_s`` and over :func:`stuck_min_readings` readings (at least that many of its
    update periods), or more where its value looks quantised (:attr:`ValidationSettings.noise_std`).
    Signals without an instrument (setpoint read-backs, states, counters) keep range-based
    settings: no stuck test and no spike test (a setpoint steps when it is moved).

    Args:
        signals: engineering range (low, high) per measured signal name (the tag map's).
        instruments: instrument per signal name.
        stale_after_s: largest age of a source timestamp, plant seconds.
        stuck_after_s: plant seconds a noisy value may repeat exactly (0: no stuck test).
        spike_threshold: noise standard deviations that make a spike (6: a healthy reading
            crosses it about once in 5e8).

    Returns:
        Settings per name of ``signals``.
    """
    out = {}
    for name, (low, high) in signals.items():
        spec = instruments.get(name)
        if spec is None:
            span = high - low if math.isfinite(high - low) else 1.0
            out[name] = ValidationSettings(low=low, high=high, stale_after_s=stale_after_s,
                                           noise_floor=max(1e-3 * span, 1e-9), spike_test=False)
            continue
        n = stuck_min_readings(spec.noise_std, spec.resolution) if spec.stuck_test and stuck_after_s > 0 else None
        out[name] = ValidationSettings(
            low=low, high=high, stale_after_s=stale_after_s,
            stuck_after_s=0.0 if n is None else max(stuck_after_s, (n - 1) * spec.update_period_s),
            spike_threshold=spike_threshold,
            noise_floor=math.hypot(spec.noise_std, spec.resolution / math.sqrt(12.0)),
            filter_time_s=spec.filter_time_s,
            noise_relative=spec.relative_noise,
            max_rate_per_s=spec.max_rate_per_s,
            stuck_min_readings=n if n is not None else 2,
            noise_std=spec.noise_std,
        )
    return out


# ----------------------------------------------------------------------------- dead time
def alignment_delay_s(measured: InstrumentSpec, reference: InstrumentSpec, sample_interval_s: float = 0.0) -> float:
    """How long ago the ``reference`` signal must be read to match ``measured`` now: the
    difference of their ramp lags (ATR-FTIR 30 s dead time + 20 s lag + the 60 s filter, 46 s
    when run every 30 s, against an RTD's 5 s: 91 s).

    Args:
        measured: the late instrument (the concentration's).
        reference: the one to read back (the reactor temperature's).
        sample_interval_s: plant seconds between the agent's readings (its control interval).
    """
    return max(measured.ramp_lag_s(sample_interval_s) - reference.ramp_lag_s(sample_interval_s), 0.0)


def aligned(history: tuple[tuple[float, float], ...], time_s: float, value: float, delay_s: float
            ) -> tuple[tuple[tuple[float, float], ...], float]:
    """Record ``value`` at ``time_s`` and read the signal back as it was ``delay_s`` ago (pure).

    Non-finite values and times that do not advance are not recorded; see :func:`delayed_value`.

    Returns:
        (the history to keep, the delayed value; NaN while nothing is recorded).
    """
    points = list(history)
    if math.isfinite(value) and math.isfinite(time_s) and (not points or time_s > points[-1][0]):
        points.append((float(time_s), float(value)))
        # One point at or before the oldest instant still asked for is all interpolation needs.
        while len(points) > 1 and points[1][0] <= time_s - delay_s:
            points.pop(0)
    return tuple(points), delayed_value(points, time_s, delay_s)


def delayed_value(history, now_s: float, delay_s: float) -> float:
    """A recorded signal as of ``now_s - delay_s``: linear between recorded times; before the
    history reaches back far enough (start-up, after a gap) the oldest value stands in; NaN while
    nothing is recorded."""
    if not history:
        return math.nan
    t = now_s - delay_s
    if t <= history[0][0]:
        return history[0][1]
    for (t0, v0), (t1, v1) in pairwise(history):
        if t <= t1:
            return v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return history[-1][1]


class DeadTimeAligner:
    """A signal's recent history, read back as it was ``delay_s`` ago (:func:`aligned` with the
    history kept).

    Supersaturation pairs the concentration, which the analyser reports late, with the reactor
    temperature of the instant the analyser saw: record the temperature every cycle and use
    ``delayed(now_s)``.

    Args:
        delay_s: how far back to read, plant seconds (>= 0).
    """

    def __init__(self, delay_s: float) -> None:
        if not delay_s >= 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}")
        self.delay_s = float(delay_s)
        self._history: tuple[tuple[float, float], ...] = ()

    def update(self, time_s: float, value: float) -> float:
        """Record ``value`` at plant time ``time_s`` and return the value as of ``time_s - delay_s``."""
        self._history, out = aligned(self._history, time_s, value, self.delay_s)
        return out

    def delayed(self, now_s: float) -> float:
        """The value as of ``now_s - delay_s`` (NaN while nothing is recorded)."""
        return delayed_value(self._history, now_s, self.delay_s)


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
