"""Sensors of the simulated reactor: noise, lag, dead time and faults (DESIGN steps 8 and 9).

The reactor model hands :class:`SensorSuite` a chunk of T consecutive plant time steps of true
state (:class:`Truth`); the suite returns what the instruments read, one (T,) array per signal
in :data:`MEASURED_SIGNALS`. NaN is a bad reading (dropout, NaN fault, nothing to image).

Instrument models:

- **Temperatures** (TT-101/102/103): first-order lag tau dy/dt = x - y, integrated exactly over
  each step with the truth linear between consecutive samples (first-order hold), plus
  Gaussian noise. The reactor RTD TT-101 is also the PV of the DCS temperature loop, which
  scans it every plant step before the step is integrated, so it is a :class:`Transmitter` read
  one sample at a time (:meth:`SensorSuite.read_reactor_temperature`) with its own random
  stream; :meth:`SensorSuite.measure` reports the readings the loop took, so the loop and the
  served tag see the same value.
- **Concentration** (ATR-FTIR, AT-101): dead time D (sample loop and spectrum acquisition; the
  reading at t is the latest truth sample taken at or before t - D), then a first-order lag,
  plus Gaussian noise.
- **FBRM chord counts**: a sphere of diameter L cut by an isotropic random line gives chord
  lengths c with pdf p(c | L) = 2 c / L^2 on 0 <= c <= L, CDF F(c | L) = (c / L)^2
  (Simmons, Langston & Burbidge 1999; Li & Wilkinson 2005). The rate at which the scanning
  beam hits a particle grows with its projected size, so

      counts_j = k_s * sum_i n_i dL_i L_i P(c in bin j | L_i)                [1/s]

  with n_i the number density per m per kg solvent. Counting noise is Poisson-like:
  std = sqrt(counts / t_c + (r counts)^2), t_c the counting time, r an extra relative scatter.
- **Imaging probe** (what image analysis of an in-situ probe gives): the projected size of each
  crystal is its projected-area-equivalent diameter, d = L sqrt(k_a / pi) with k_a = A / L^2 of
  the habit (Cauchy: a convex body's mean projection over random orientations is A / 4; d = L
  for a sphere, 1.11 L for a cube). Of the crystals with d at or above the detection limit it
  reports the number-weighted mean d, the number fraction in each projected-size bin (with
  multinomial counting noise for the crystals sized per reading, renormalised; empty bins stay
  0), the aspect ratio and the observed habit as facet-family area fractions (shape analysis;
  renormalised after noise, absent facets stay 0). Refreshed once per imaging period, held
  between. Facet normal growth rates are a laboratory measurement, not an in-line signal: the
  probe does not report them (the truth carries them for offline analysis).
- **Antisolvent flow** (FT-101): Gaussian noise, clipped at 0 (low-flow cut-off).

Faults (:class:`SensorFault`) act on the measured value within [start_s, end_s).

Chunk invariance: measuring 100 steps at once or 1 step 100 times gives identical arrays. All
filter, dead-time, hold and fault state lives in the suite, every step draws the same number
of standard normals from one ``np.random.Generator`` in a fixed order (a (T, K) draw equals T
draws of K; TT-101 draws from a second generator, one sample at a time), and every operation
whose rounding could depend on the chunk length (dot products, exponentials) runs per step.
Whether the DCS read TT-101 ahead of :meth:`SensorSuite.measure` or not changes no reading.

References:

- Simmons, M. J. H., Langston, P. A. & Burbidge, A. S. (1999) Powder Technol. 102, 75
  (chord length distributions of spheres, FBRM).
- Li, M. & Wilkinson, D. (2005) Chem. Eng. Sci. 60, 3251 (CLD <-> PSD transformation).
- Ruf, A., Worlitschek, J. & Mazzotti, M. (2000) Part. Part. Syst. Charact. 17, 167 (FBRM).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist
from typing import Sequence

import numpy as np

from conf.contract.codes import N_FACET_SLOTS
from conf.contract.signals import IMAGE_SIZE_FRACTIONS, N_IMAGE_SIZE_BINS

N_FBRM_BINS = 6

MEASURED_SIGNALS: tuple[str, ...] = (
    "reactor_temperature_c",
    "jacket_temperature_c",
    "jacket_inlet_temperature_c",
    "concentration_g_per_kg",
    "antisolvent_flow_kg_per_min",
    "fbrm_counts_total_per_s",
    *(f"fbrm_counts_bin{j}_per_s" for j in range(1, N_FBRM_BINS + 1)),
    "image_mean_size_um",
    "image_aspect_ratio",
    *(f"facet_{j}_area_fraction" for j in range(1, N_FACET_SLOTS + 1)),
    *IMAGE_SIZE_FRACTIONS,
)
_ROW = {name: i for i, name in enumerate(MEASURED_SIGNALS)}
_ROW_FBRM = _ROW["fbrm_counts_bin1_per_s"]
_ROW_IMAGE = _ROW["image_mean_size_um"]  # image size, aspect, 4 facet fractions, 4 size-bin fractions
_N_IMAGE = 2 + N_FACET_SLOTS + N_IMAGE_SIZE_BINS
# Columns of one imaging reading (and of its standard normals).
_IMG_FACETS = slice(2, 2 + N_FACET_SLOTS)
_IMG_BINS = slice(2 + N_FACET_SLOTS, _N_IMAGE)

# Columns of the per-step standard-normal draw (all instruments but TT-101, see Transmitter);
# fault draws follow at _N_NOISE + fault index.
_Z_TEMPERATURE = slice(0, 2)  # TT-102, TT-103
_Z_CONCENTRATION = 2
_Z_FLOW = 3
_Z_FBRM = slice(4, 4 + N_FBRM_BINS)
_Z_IMAGE = slice(4 + N_FBRM_BINS, 4 + N_FBRM_BINS + _N_IMAGE)
_N_NOISE = 4 + N_FBRM_BINS + _N_IMAGE
# Key mixed into the settings seed for TT-101's own generator.
_RTD_STREAM = 101

# Two plant times closer than this are the same instant (dead-time look-up).
_TIME_EPS_S = 1e-9


@dataclass(frozen=True, eq=False)
class Truth:
    """True plant state over a chunk of T consecutive plant time steps.

    Attributes:
        plant_time_s: plant time of each step, strictly increasing, shape (T,).
        reactor_temperature_c: reactor temperature, shape (T,).
        jacket_temperature_c: jacket outlet temperature, shape (T,).
        jacket_inlet_temperature_c: jacket inlet temperature, shape (T,).
        concentration_g_per_kg: solute concentration, g per kg solvent, shape (T,).
        antisolvent_flow_kg_per_min: antisolvent feed rate, shape (T,).
        csd_per_m_per_kg: number density n(L) per m of size per kg solvent, shape (T, n).
        size_centers_m: volume-equivalent size L_i of each class, shape (n,).
        size_widths_m: width dL_i of each class, shape (n,).
        solvent_mass_kg: solvent mass, shape (T,). Not read by the sensors (probes see number
            concentrations, not inventories); carried for consumers of the same record.
        facet_area_fractions: area fraction per facet slot, 0 for an absent facet, shape (T, 4).
        facet_growth_rates_m_per_s: true normal growth rate per facet slot, shape (T, 4). Not
            read by the sensors (no in-line instrument measures it); carried as truth.
        aspect_ratio: mean aspect ratio (max / min Feret), shape (T,).
        area_shape_factor: k_a = A / L^2 of the habit, shape (T,) or a scalar (default a
            sphere's pi); sets the projected size the imaging probe sees.
    """

    plant_time_s: np.ndarray
    reactor_temperature_c: np.ndarray
    jacket_temperature_c: np.ndarray
    jacket_inlet_temperature_c: np.ndarray
    concentration_g_per_kg: np.ndarray
    antisolvent_flow_kg_per_min: np.ndarray
    csd_per_m_per_kg: np.ndarray
    size_centers_m: np.ndarray
    size_widths_m: np.ndarray
    solvent_mass_kg: np.ndarray
    facet_area_fractions: np.ndarray
    facet_growth_rates_m_per_s: np.ndarray
    aspect_ratio: np.ndarray
    area_shape_factor: np.ndarray | float = math.pi


@dataclass(frozen=True)
class SensorSettings:
    """Instrument parameters of the simulated reactor.

    Attributes:
        temperature_noise_std_k: Gaussian noise of each temperature reading (Pt100 class A
            with a 4-20 mA loop).
        reactor_temperature_lag_s: first-order time constant of TT-101 (thermowell).
        jacket_temperature_lag_s: first-order time constant of TT-102 (in the jacket flow).
        jacket_inlet_temperature_lag_s: first-order time constant of TT-103.
        concentration_noise_std_g_per_kg: Gaussian noise of the ATR-FTIR concentration
            after chemometric calibration.
        concentration_dead_time_s: ATR-FTIR dead time (spectrum acquisition and averaging).
        concentration_lag_s: first-order time constant of the concentration reading (probe
            film renewal and spectral averaging).
        antisolvent_flow_noise_std_kg_per_min: Gaussian noise of FT-101.
        fbrm_bin_edges_um: chord-length bin edges, 7 increasing values (6 bins). Chords
            outside [first, last) are not counted.
        fbrm_sampling_factor_kg_per_m_s: k_s of counts = k_s * sum_i N_i L_i P_ij, N_i in
            particles per kg solvent and L_i in m. k_s = v_scan * depth * rho_liquid: a beam
            scanning at 2 m/s through a focal slab ~1 mm deep in a liquid of 1000 kg/m3 gives
            2 kg/(m s). Check: 0.075 kg/kg of 200 um crystals (1500 kg/m3, spheres) is
            1.2e7 crystals per kg, so ~ 2 * 1.2e7 * 2e-4 ~ 5e3 counts/s in all.
        fbrm_relative_noise: extra relative scatter r of counts, on top of counting noise.
        fbrm_counting_time_s: counting time t_c of one reading; Poisson relative std is
            1 / sqrt(counts * t_c).
        imaging_min_size_um: smallest projected size the imaging probe resolves.
        imaging_min_number_per_kg: below this many resolvable crystals per kg solvent the
            probe sees no particles and all imaging signals read NaN.
        imaging_period_s: the imaging signals refresh once per period (image acquisition and
            analysis) and hold their value in between.
        imaging_size_relative_noise: relative noise of the mean size.
        imaging_aspect_ratio_relative_noise: relative noise of the aspect ratio.
        imaging_size_bin_edges_um: projected-size bin edges of the size distribution, 5
            increasing values (4 bins). Crystals outside [first, last) or below the detection
            limit are not counted; the fractions are of the crystals counted.
        imaging_crystals_per_reading: crystals the image analysis sizes per reading; each
            bin's number fraction p carries counting noise of std sqrt(p (1 - p) / n).
        facet_fraction_noise_std: absolute noise of each facet area fraction, before
            renormalisation.
        seed: seed of the suite's ``np.random.Generator``.
    """

    temperature_noise_std_k: float = 0.02
    reactor_temperature_lag_s: float = 5.0
    jacket_temperature_lag_s: float = 3.0
    jacket_inlet_temperature_lag_s: float = 3.0
    concentration_noise_std_g_per_kg: float = 0.5
    concentration_dead_time_s: float = 30.0
    concentration_lag_s: float = 20.0
    antisolvent_flow_noise_std_kg_per_min: float = 0.002
    fbrm_bin_edges_um: tuple[float, ...] = (1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
    fbrm_sampling_factor_kg_per_m_s: float = 2.0
    fbrm_relative_noise: float = 0.03
    fbrm_counting_time_s: float = 1.0
    imaging_min_size_um: float = 20.0
    imaging_min_number_per_kg: float = 1.0
    imaging_period_s: float = 10.0
    imaging_size_relative_noise: float = 0.02
    imaging_aspect_ratio_relative_noise: float = 0.02
    # Fines and nuclei, the seeds growing (100 um seeds), the product (300 um target), coarse.
    imaging_size_bin_edges_um: tuple[float, ...] = (20.0, 100.0, 200.0, 400.0, 5000.0)
    imaging_crystals_per_reading: float = 500.0
    facet_fraction_noise_std: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        edges = tuple(float(e) for e in self.fbrm_bin_edges_um)
        if len(edges) != N_FBRM_BINS + 1 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
            raise ValueError(
                f"fbrm_bin_edges_um needs {N_FBRM_BINS + 1} increasing non-negative edges, got {edges}"
            )
        object.__setattr__(self, "fbrm_bin_edges_um", edges)
        edges = tuple(float(e) for e in self.imaging_size_bin_edges_um)
        if len(edges) != N_IMAGE_SIZE_BINS + 1 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
            raise ValueError(
                f"imaging_size_bin_edges_um needs {N_IMAGE_SIZE_BINS + 1} increasing non-negative edges, got {edges}"
            )
        object.__setattr__(self, "imaging_size_bin_edges_um", edges)
        for name in (
            "temperature_noise_std_k",
            "reactor_temperature_lag_s",
            "jacket_temperature_lag_s",
            "jacket_inlet_temperature_lag_s",
            "concentration_noise_std_g_per_kg",
            "concentration_dead_time_s",
            "concentration_lag_s",
            "antisolvent_flow_noise_std_kg_per_min",
            "fbrm_sampling_factor_kg_per_m_s",
            "fbrm_relative_noise",
            "imaging_min_size_um",
            "imaging_min_number_per_kg",
            "imaging_size_relative_noise",
            "imaging_aspect_ratio_relative_noise",
            "facet_fraction_noise_std",
        ):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("fbrm_counting_time_s", "imaging_period_s", "imaging_crystals_per_reading"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


class SensorFaultKind(str, Enum):
    """How a faulty instrument misreads, within the fault window [start_s, end_s).

    - stuck: holds the value it measured at the first step of the window.
    - drift: adds magnitude * (t - start_s) / 60 (magnitude in signal units per minute).
    - dropout: reads NaN, on each step with the given probability.
    - spike: adds magnitude, on each step with the given probability.
    - nan: reads NaN on every step.
    - scale: reads (1 + magnitude) x the value, a gain error (an FBRM window that fouls reads
      fewer counts: magnitude -0.3), on every step.
    """

    stuck = "stuck"
    drift = "drift"
    dropout = "dropout"
    spike = "spike"
    nan = "nan"
    scale = "scale"


@dataclass(frozen=True)
class SensorFault:
    """One fault of one measured signal (DESIGN step 9).

    Attributes:
        signal: name from :data:`MEASURED_SIGNALS`.
        kind: what the fault does (a :class:`SensorFaultKind` or its string value).
        start_s: plant time the fault starts (inclusive).
        end_s: plant time the fault ends (exclusive); ``math.inf`` for a permanent fault.
        magnitude: drift rate in signal units per minute, spike amplitude in signal units, or
            the relative gain error of a scale fault.
        probability: chance per step that a dropout or spike fault hits, in [0, 1].
    """

    signal: str
    kind: SensorFaultKind
    start_s: float
    end_s: float
    magnitude: float = 0.0
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.signal not in _ROW:
            raise ValueError(
                f"unknown sensor fault signal {self.signal!r}; allowed: {', '.join(MEASURED_SIGNALS)}"
            )
        try:
            object.__setattr__(self, "kind", SensorFaultKind(self.kind))
        except ValueError:
            allowed = ", ".join(k.value for k in SensorFaultKind)
            raise ValueError(f"unknown sensor fault kind {self.kind!r}; allowed: {allowed}") from None
        if not self.end_s > self.start_s:
            raise ValueError(f"fault window needs end_s > start_s, got [{self.start_s}, {self.end_s})")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"fault probability must be in [0, 1], got {self.probability}")


def fbrm_chord_probabilities(size_m: np.ndarray, bin_edges_m: np.ndarray) -> np.ndarray:
    """Probability that a random chord of a sphere falls in each chord-length bin.

    For a sphere of diameter L cut by an isotropic random line, F(c | L) = (min(c, L) / L)^2,
    so P_ij = F(e_{j+1} | L_i) - F(e_j | L_i). A row sums to F(e_last) - F(e_first), which is
    1 - (e_first / L_i)^2 for e_first <= L_i <= e_last.

    Args:
        size_m: sphere diameters L, shape (n,); sizes <= 0 give a zero row.
        bin_edges_m: increasing bin edges, shape (n_bins + 1,).

    Returns:
        P, shape (n, n_bins).
    """
    size = np.asarray(size_m, dtype=float)[:, None]
    edges = np.asarray(bin_edges_m, dtype=float)[None, :]
    safe = np.where(size > 0.0, size, 1.0)
    cdf = np.where(size > 0.0, (np.minimum(edges, safe) / safe) ** 2, 0.0)
    return np.diff(cdf, axis=1)


def _lag_step(y: float, x_prev: float, x: float, dt_s: float, tau_s: float) -> float:
    """One exact step of tau dy/dt = x(t) - y with x linear from x_prev to x over dt.

    y(dt) = x - m tau + (y0 - x_prev + m tau) exp(-dt / tau),  m = (x - x_prev) / dt.
    """
    if tau_s <= 0.0:
        return x
    if dt_s <= 0.0:
        return y
    m_tau = (x - x_prev) * (tau_s / dt_s)
    return x - m_tau + (y - x_prev + m_tau) * math.exp(-dt_s / tau_s)


class Transmitter:
    """One lagged, noisy analogue transmitter with its faults, read one sample at a time.

    The same models as the chunked instruments of :class:`SensorSuite`: the first-order lag of
    :func:`_lag_step`, Gaussian noise, then each fault in order (:class:`SensorFaultKind`). Every
    sample draws 1 + n_faults standard normals from ``rng`` (noise first, then one per fault
    for dropout and spike hits), so the readings depend only on the sample times and values.

    Args:
        lag_s: first-order time constant.
        noise_std: standard deviation of the noise, in signal units.
        faults: faults of this signal, applied in order.
        rng: the transmitter's own generator.
    """

    def __init__(
        self, lag_s: float, noise_std: float, faults: Sequence[SensorFault], rng: np.random.Generator
    ) -> None:
        self.lag_s = lag_s
        self.noise_std = noise_std
        self.faults = tuple(faults)
        self._rng = rng
        self._thresholds = tuple(_normal_threshold(f.probability) for f in self.faults)
        self._stuck: list[float | None] = [None] * len(self.faults)
        self._last_time_s: float | None = None
        self._y = 0.0
        self._x_prev = 0.0

    def read(self, t_s: float, true_value: float) -> float:
        """The reading at plant time ``t_s`` (after the last one read) of the true ``true_value``."""
        if self._last_time_s is None:
            self._y = true_value
        else:
            self._y = _lag_step(self._y, self._x_prev, true_value, t_s - self._last_time_s, self.lag_s)
        self._x_prev = true_value
        self._last_time_s = t_s
        z = self._rng.standard_normal(1 + len(self.faults)).tolist()
        value = self._y + self.noise_std * z[0]
        for i, fault in enumerate(self.faults):
            if not fault.start_s <= t_s < fault.end_s:
                continue
            kind = fault.kind
            if kind is SensorFaultKind.stuck:
                if self._stuck[i] is None:
                    self._stuck[i] = value
                value = self._stuck[i]
            elif kind is SensorFaultKind.drift:
                value += fault.magnitude * (t_s - fault.start_s) / 60.0
            elif kind is SensorFaultKind.nan:
                value = math.nan
            elif kind is SensorFaultKind.scale:
                value *= 1.0 + fault.magnitude
            elif z[1 + i] < self._thresholds[i]:
                value = math.nan if kind is SensorFaultKind.dropout else value + fault.magnitude
        return value


class SensorSuite:
    """All instruments of one reactor, with their filter, hold and fault state.

    Args:
        settings: instrument parameters.
        faults: faults to apply, in order (a later fault acts on the output of an earlier
            one on the same signal).

    Shapes:
        measure(truth) with T steps and n size classes returns a dict of (T,) arrays keyed by
        :data:`MEASURED_SIGNALS`.
    """

    def __init__(self, settings: SensorSettings, faults: Sequence[SensorFault] = ()) -> None:
        self.settings = settings
        self.faults = tuple(faults)
        self._rng = np.random.default_rng(settings.seed)
        # TT-101 is read sample by sample (the DCS loop's PV); the rest chunk by chunk.
        self._rtd = Transmitter(
            settings.reactor_temperature_lag_s,
            settings.temperature_noise_std_k,
            [f for f in self.faults if f.signal == "reactor_temperature_c"],
            np.random.default_rng([settings.seed, _RTD_STREAM]),
        )
        # TT-101 readings taken ahead of measure(), oldest first: (plant time, reading).
        self._rtd_pending: deque[tuple[float, float]] = deque()
        self._last_rtd_reading = math.nan
        self._chunk_faults = tuple(f for f in self.faults if f.signal != "reactor_temperature_c")
        self._n_draws = _N_NOISE + len(self._chunk_faults)
        # Spike/dropout hit when z < Phi^-1(p): one normal per fault per step keeps one stream.
        self._fault_rows = tuple(_ROW[f.signal] for f in self._chunk_faults)
        self._fault_thresholds = tuple(_normal_threshold(f.probability) for f in self._chunk_faults)
        self._stuck_values: list[float | None] = [None] * len(self._chunk_faults)
        self._taus_s = (
            settings.jacket_temperature_lag_s,
            settings.jacket_inlet_temperature_lag_s,
            settings.concentration_lag_s,
        )
        # Size-grid-dependent matrix, built on the first measure (and rebuilt if the grid changes).
        self._grid_centers_m: np.ndarray | None = None
        self._grid_widths_m: np.ndarray | None = None
        self._size_matrix: np.ndarray | None = None
        self._centers_um = np.zeros(0)
        self._image_bin_edges_um = np.asarray(settings.imaging_size_bin_edges_um, dtype=float)
        # Time-stepping state.
        self._last_time_s: float | None = None
        self._lag_y = [0.0, 0.0, 0.0]
        self._lag_x = [0.0, 0.0, 0.0]
        self._dead_time_buffer: deque[tuple[float, float]] = deque()
        self._next_image_time_s = -math.inf
        self._image_held = np.full(_N_IMAGE, np.nan)

    # ----------------------------------------------------------------------------------------
    def read_reactor_temperature(self, t_s: float, true_c: float) -> float:
        """TT-101 at plant time ``t_s``, ahead of :meth:`measure` (the DCS loop's PV scan).

        Every instant is read once: :meth:`measure` reports the readings taken here for the
        times of its chunk instead of reading again, so the served tag is the PID's PV. A time
        not after the last one read or measured gives back that last reading.

        Args:
            t_s: plant time, later than the last time read here or measured.
            true_c: true reactor temperature at ``t_s``.

        Returns:
            The reading; NaN is a bad one (dropout or NaN fault).
        """
        last = self._rtd_pending[-1] if self._rtd_pending else None
        if last is not None and t_s <= last[0] + _TIME_EPS_S:
            return last[1]
        if self._last_time_s is not None and t_s <= self._last_time_s + _TIME_EPS_S:
            return self._last_rtd_reading
        value = self._rtd.read(t_s, true_c)
        self._rtd_pending.append((t_s, value))
        return value

    def size_matrix(self, size_centers_m: np.ndarray, size_widths_m: np.ndarray) -> np.ndarray:
        """Matrix that maps one CSD row to FBRM counts.

        Column j: k_s dL_i L_i P_ij (counts/s per unit n_i). Cached for the last size grid seen.
        (The imaging probe's sums depend on the habit's projected size, so it takes the CSD row
        itself, :meth:`_image`.)

        Args:
            size_centers_m: L_i, shape (n,).
            size_widths_m: dL_i, shape (n,).

        Returns:
            A, shape (n, 6); csd_row @ A gives the chord counts per bin.
        """
        if self._size_matrix is not None and (
            (size_centers_m is self._grid_centers_m and size_widths_m is self._grid_widths_m)
            or (
                np.array_equal(size_centers_m, self._grid_centers_m)
                and np.array_equal(size_widths_m, self._grid_widths_m)
            )
        ):
            return self._size_matrix
        s = self.settings
        size = np.asarray(size_centers_m, dtype=float)
        width = np.asarray(size_widths_m, dtype=float)
        chord = fbrm_chord_probabilities(size, np.asarray(s.fbrm_bin_edges_um) * 1e-6)
        matrix = (s.fbrm_sampling_factor_kg_per_m_s * width * size)[:, None] * chord
        self._grid_centers_m, self._grid_widths_m = size_centers_m, size_widths_m
        self._centers_um = size * 1e6
        self._size_matrix = matrix
        return matrix

    def measure(self, truth: Truth) -> dict[str, np.ndarray]:
        """Read all instruments over a chunk of plant steps, advancing the suite's state.

        Args:
            truth: true state over T steps (n size classes), continuing the previous chunk.

        Returns:
            Measured value per signal of :data:`MEASURED_SIGNALS`, each shape (T,); NaN marks
            a bad reading.
        """
        s = self.settings
        times = np.asarray(truth.plant_time_s, dtype=float).reshape(-1)
        n_steps = times.size
        csd = np.asarray(truth.csd_per_m_per_kg, dtype=float).reshape(n_steps, -1)
        matrix = self.size_matrix(truth.size_centers_m, truth.size_widths_m)
        if csd.shape[1] != matrix.shape[0]:
            raise ValueError(f"csd_per_m_per_kg has {csd.shape[1]} classes, size grid has {matrix.shape[0]}")
        z = self._rng.standard_normal((n_steps, self._n_draws))
        out = np.empty((len(MEASURED_SIGNALS), n_steps))

        # --- stateful part, step by step (also keeps rounding independent of chunking) -------
        time_list = times.tolist()
        rtd_true = np.asarray(truth.reactor_temperature_c, dtype=float).reshape(-1).tolist()
        rtd = out[_ROW["reactor_temperature_c"]]
        pending = self._rtd_pending
        lag_inputs = (
            np.asarray(truth.jacket_temperature_c, dtype=float).reshape(-1).tolist(),
            np.asarray(truth.jacket_inlet_temperature_c, dtype=float).reshape(-1).tolist(),
        )
        concentration = np.asarray(truth.concentration_g_per_kg, dtype=float).reshape(-1).tolist()
        lagged = np.empty((3, n_steps))
        rate = csd @ matrix  # (T, 6): chord-count rates
        image = np.empty((n_steps, _N_IMAGE))
        number = csd * np.asarray(truth.size_widths_m, dtype=float)  # crystals per kg in each class
        habit = (
            np.asarray(truth.aspect_ratio, dtype=float).reshape(-1),
            np.asarray(truth.facet_area_fractions, dtype=float).reshape(-1, N_FACET_SLOTS),
            np.broadcast_to(np.asarray(truth.area_shape_factor, dtype=float), (n_steps,)),
        )
        buffer, dead_time_s = self._dead_time_buffer, s.concentration_dead_time_s
        y, x_prev, taus = self._lag_y, self._lag_x, self._taus_s
        for k, t in enumerate(time_list):
            while pending and pending[0][0] < t - _TIME_EPS_S:
                pending.popleft()  # read ahead for a time this chunk skips
            if pending and pending[0][0] <= t + _TIME_EPS_S:
                rtd[k] = pending.popleft()[1]  # the DCS loop read this instant already
            else:
                rtd[k] = self._rtd.read(t, rtd_true[k])
            buffer.append((t, concentration[k]))
            while len(buffer) > 1 and buffer[1][0] <= t - dead_time_s + _TIME_EPS_S:
                buffer.popleft()
            x = (lag_inputs[0][k], lag_inputs[1][k], buffer[0][1])
            if self._last_time_s is None:
                y[:] = x
            else:
                dt_s = t - self._last_time_s
                for c in range(3):
                    y[c] = _lag_step(y[c], x_prev[c], x[c], dt_s, taus[c])
            x_prev[:] = x
            self._last_time_s = t
            lagged[:, k] = y
            self._last_rtd_reading = rtd[k]
            if t >= self._next_image_time_s - _TIME_EPS_S:
                self._image_held = self._image(habit[0][k], habit[1][k], habit[2][k], number[k], z[k, _Z_IMAGE])
                period = s.imaging_period_s
                if self._next_image_time_s == -math.inf:
                    self._next_image_time_s = t + period
                else:
                    skipped = math.floor((t - self._next_image_time_s) / period + _TIME_EPS_S)
                    self._next_image_time_s += (skipped + 1) * period
            image[k] = self._image_held

        # --- stateless noise, vectorised over the chunk -------------------------------------
        out[1:3] = lagged[0:2] + s.temperature_noise_std_k * z[:, _Z_TEMPERATURE].T
        out[3] = lagged[2] + s.concentration_noise_std_g_per_kg * z[:, _Z_CONCENTRATION]
        flow = np.asarray(truth.antisolvent_flow_kg_per_min, dtype=float).reshape(-1)
        out[4] = np.maximum(flow + s.antisolvent_flow_noise_std_kg_per_min * z[:, _Z_FLOW], 0.0)
        std = np.sqrt(rate / s.fbrm_counting_time_s + (s.fbrm_relative_noise * rate) ** 2)
        bins = np.maximum(rate + std * z[:, _Z_FBRM], 0.0).T
        out[_ROW_FBRM : _ROW_FBRM + N_FBRM_BINS] = bins
        total = bins[0].copy()
        for j in range(1, N_FBRM_BINS):
            total += bins[j]
        out[_ROW["fbrm_counts_total_per_s"]] = total
        out[_ROW_IMAGE : _ROW_IMAGE + _N_IMAGE] = image.T

        if self._chunk_faults:
            self._apply_faults(out, times, z[:, _N_NOISE:])
        return dict(zip(MEASURED_SIGNALS, out))

    # ----------------------------------------------------------------------------------------
    def _image(
        self, aspect: float, fractions: np.ndarray, area_shape_factor: float, number_per_kg: np.ndarray,
        z: np.ndarray,
    ) -> np.ndarray:
        """Imaging reading of one step (module docstring).

        Args:
            aspect: true aspect ratio.
            fractions: true facet area fractions, shape (4,).
            area_shape_factor: k_a of the habit (pi for a sphere; not finite: a sphere).
            number_per_kg: crystals per kg solvent in each size class, n_i dL_i, shape (n,).
            z: standard normals for size, aspect ratio, 4 facet fractions, 4 size bins, shape (10,).

        Returns:
            (mean projected size um, aspect ratio, 4 facet area fractions, 4 size-bin number
            fractions), shape (10,).
        """
        s = self.settings
        k_a = float(area_shape_factor)
        projected_um = self._centers_um * (math.sqrt(k_a / math.pi) if math.isfinite(k_a) and k_a > 0 else 1.0)
        seen = projected_um >= s.imaging_min_size_um
        counted = number_per_kg[seen]
        total_per_kg = float(counted.sum())
        if not total_per_kg >= s.imaging_min_number_per_kg:
            return np.full(_N_IMAGE, np.nan)
        reading = np.empty(_N_IMAGE)
        mean_um = float((counted * projected_um[seen]).sum()) / total_per_kg
        reading[0] = mean_um * (1.0 + s.imaging_size_relative_noise * z[0])
        reading[1] = max(float(aspect) * (1.0 + s.imaging_aspect_ratio_relative_noise * z[1]), 1.0)
        present = fractions > 0.0
        noisy = np.where(present, np.maximum(fractions + s.facet_fraction_noise_std * z[_IMG_FACETS], 0.0), 0.0)
        total = noisy.sum()
        reading[_IMG_FACETS] = noisy / total if total > 0.0 else noisy
        edges = self._image_bin_edges_um
        index = np.searchsorted(edges, projected_um[seen], side="right") - 1
        inside = (index >= 0) & (index < N_IMAGE_SIZE_BINS)
        per_bin = np.bincount(index[inside], weights=counted[inside], minlength=N_IMAGE_SIZE_BINS)
        in_bins = per_bin.sum()
        if not in_bins > 0.0:
            reading[_IMG_BINS] = np.nan
            return reading
        p = per_bin / in_bins
        # Counting statistics of the crystals sized in one reading: an empty bin stays empty.
        std = np.sqrt(np.maximum(p * (1.0 - p), 0.0) / s.imaging_crystals_per_reading)
        noisy = np.maximum(p + std * z[_IMG_BINS], 0.0)
        total = noisy.sum()
        reading[_IMG_BINS] = noisy / total if total > 0.0 else p
        return reading

    def _apply_faults(self, out: np.ndarray, times: np.ndarray, z: np.ndarray) -> None:
        """Apply every fault but TT-101's (its transmitter applies those) in order, in place.

        Args:
            out: measured values, shape (n_signals, T).
            times: plant time, shape (T,).
            z: one standard normal per fault per step, shape (T, n_faults).
        """
        for i, fault in enumerate(self._chunk_faults):
            window = (times >= fault.start_s) & (times < fault.end_s)
            if not window.any():
                continue
            row = out[self._fault_rows[i]]
            kind = fault.kind
            if kind is SensorFaultKind.stuck:
                if self._stuck_values[i] is None:
                    self._stuck_values[i] = float(row[np.argmax(window)])
                row[window] = self._stuck_values[i]
            elif kind is SensorFaultKind.drift:
                row[window] += fault.magnitude * (times[window] - fault.start_s) / 60.0
            elif kind is SensorFaultKind.nan:
                row[window] = np.nan
            elif kind is SensorFaultKind.scale:
                row[window] *= 1.0 + fault.magnitude
            else:
                hit = window & (z[:, i] < self._fault_thresholds[i])
                if kind is SensorFaultKind.dropout:
                    row[hit] = np.nan
                else:
                    row[hit] += fault.magnitude


def _normal_threshold(probability: float) -> float:
    """Phi^-1(p), so that P(z < threshold) = p for a standard normal z."""
    if probability >= 1.0:
        return math.inf
    if probability <= 0.0:
        return -math.inf
    return NormalDist().inv_cdf(probability)
