"""The instruments of a process: what each measured signal's instrument is (noise, delays, lags).

The agent judges a reading by what its instrument can do (:mod:`controller.state`: noise floors,
stuck tests, dead-time alignment of the concentration analyser), so the instruments are part of
the process definition (``conf/process/*.yaml``, ``instruments``: signal name -> spec), not of
the agent's code. A process that names none runs with :data:`DEFAULT_INSTRUMENTS`, those the
simulated plant imitates; the ones it names replace the defaults per signal (a process file may
give only the fields that differ: the config merges them into the default spec).
"""

from __future__ import annotations

import collections.abc
import math
from dataclasses import dataclass
from typing import Iterator, Mapping

from conf.contract import validate

__all__ = ["DEFAULT_INSTRUMENTS", "InstrumentMap", "InstrumentSpec", "with_defaults"]


@dataclass(frozen=True)
class InstrumentSpec:
    """What an instrument is: its noise, delays and resolution (signal units, plant seconds).

    Attributes:
        noise_std: standard deviation of a reading's noise, signal units (> 0; for a counting
            instrument the noise at the lowest level it reports).
        dead_time_s: transport and acquisition delay (sample loop, spectrum averaging).
        lag_s: first-order time constant of the instrument (thermowell, probe film).
        filter_time_s: the agent's first-order filter on the validated value (0: none).
        relative_noise: extra noise proportional to the reading (counts, image sizes).
        resolution: smallest step of the transmitted value (a Modbus integer register with
            ``scale``: 1 / scale); 0 for a float transport.
        update_period_s: how often the instrument produces a new value (it holds between);
            0 for one every read.
        max_rate_per_s: fastest the measured quantity really moves, signal units per second
            (None: no rate-of-change limit on spikes).
        stuck_test: False where an exact repeat is legitimate (a flow meter's low-flow cut-off
            reads 0, a clear solution gives no chord counts).
    """

    noise_std: float
    dead_time_s: float = 0.0
    lag_s: float = 0.0
    filter_time_s: float = 0.0
    relative_noise: float = 0.0
    resolution: float = 0.0
    update_period_s: float = 0.0
    max_rate_per_s: float | None = None
    stuck_test: bool = True

    def __post_init__(self) -> None:
        validate.positive(self, "noise_std")
        validate.non_negative(self, "dead_time_s", "lag_s", "filter_time_s", "relative_noise", "resolution",
                              "update_period_s")
        if self.max_rate_per_s is not None:
            validate.non_negative(self, "max_rate_per_s")

    def ramp_lag_s(self, sample_interval_s: float = 0.0) -> float:
        """How far the filtered value trails a ramp: dead time plus the instrument's lag plus the
        agent's filter (a first-order lag of tau follows a ramp tau behind; the filter, run once
        per ``sample_interval_s`` dt on the latest reading, dt e^(-dt/tau) / (1 - e^(-dt/tau)))."""
        tau, dt = self.filter_time_s, sample_interval_s
        if tau <= 0.0:
            filter_lag_s = 0.0
        elif dt <= 0.0:
            filter_lag_s = tau
        else:
            filter_lag_s = dt / math.expm1(dt / tau)
        return self.dead_time_s + self.lag_s + filter_lag_s


class InstrumentMap(collections.abc.Mapping):
    """Signal name -> :class:`InstrumentSpec`, read-only.

    Not a ``MappingProxyType``: the map is part of the config, and configs are pickled (copied,
    sent to worker processes), which a mapping proxy refuses.
    """

    def __init__(self, specs: Mapping[str, InstrumentSpec] = ()) -> None:
        self._specs = dict(specs)

    def __getitem__(self, name: str) -> InstrumentSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"InstrumentMap({self._specs!r})"


def _fbrm() -> InstrumentSpec:
    # Counting noise sqrt(counts / 1 s): ~3 counts/s at the ~10 counts/s where a bin starts to
    # mean something (a window of a clear solution's zeros has no spread of its own); 3 %
    # scatter above. No rate limit: counts jump when seeds go in or a nucleation burst starts.
    return InstrumentSpec(noise_std=3.0, relative_noise=0.03, stuck_test=False)


#: The instruments of plant_sim/sensors.py ``SensorSettings`` (Pt100 class A RTDs on 4-20 mA,
#: 0.02 K; ATR-FTIR after chemometric calibration, 0.5 g/kg, 30 s dead time, 20 s lag; FBRM;
#: imaging every 10 s). Rates: the reactor cannot outrun the 2 K/min setpoint rate limit of the
#: tag map; jacket temperatures follow the temperature controller's output, 10 K/min; the
#: concentration follows the solubility at up to 1 K/min cooling, 3 g/kg/min for KCl; image
#: sizes grow at most 10 um/min and facet growth rates change by 0.2 um/min per min (they fall
#: that fast when cooling ends). The
#: concentration is filtered over 60 s (its noise is 0.0015 in sigma per reading, 0.0007 after);
#: the temperatures are not (their noise is 1e-4 in sigma, and a lag would slow the guard).
DEFAULT_INSTRUMENTS: Mapping[str, InstrumentSpec] = InstrumentMap({
    "reactor_temperature_c": InstrumentSpec(0.02, lag_s=5.0, max_rate_per_s=2.0 / 60.0),
    "jacket_temperature_c": InstrumentSpec(0.02, lag_s=3.0, max_rate_per_s=10.0 / 60.0),
    "jacket_inlet_temperature_c": InstrumentSpec(0.02, lag_s=3.0, max_rate_per_s=10.0 / 60.0),
    "concentration_g_per_kg": InstrumentSpec(0.5, dead_time_s=30.0, lag_s=20.0, filter_time_s=60.0,
                                             max_rate_per_s=3.0 / 60.0),
    "antisolvent_flow_kg_per_min": InstrumentSpec(0.002, stuck_test=False),
    "fbrm_counts_total_per_s": _fbrm(),
    **{f"fbrm_counts_bin{j}_per_s": _fbrm() for j in range(1, 7)},
    "image_mean_size_um": InstrumentSpec(1.0, relative_noise=0.02, update_period_s=10.0, stuck_test=False,
                                         max_rate_per_s=10.0 / 60.0),
    "image_aspect_ratio": InstrumentSpec(0.01, relative_noise=0.02, update_period_s=10.0, stuck_test=False),
    **{f"facet_{j}_area_fraction": InstrumentSpec(0.01, update_period_s=10.0, stuck_test=False) for j in range(1, 5)},
    # A bin's number fraction: counting noise of ~500 crystals sized per image (0.02 at p = 0.5);
    # no stuck test (an empty bin reads exactly 0, a one-bin population exactly 1) and no rate
    # limit (seeding and a nucleation burst move the bins at once).
    **{f"image_size_bin{j}_number_fraction": InstrumentSpec(0.02, update_period_s=10.0, stuck_test=False)
       for j in range(1, 5)},
})


def with_defaults(given: Mapping[str, InstrumentSpec]) -> Mapping[str, InstrumentSpec]:
    """:data:`DEFAULT_INSTRUMENTS` with the ``given`` specs in place of the defaults of their
    signals (and any other signals added), read-only."""
    for name, spec in given.items():
        if not isinstance(spec, InstrumentSpec):
            raise ValueError(f"{name} must be an instrument spec (noise_std, dead_time_s, lag_s, ...), "
                             f"got {spec!r}")
    return InstrumentMap({**DEFAULT_INSTRUMENTS, **given})
