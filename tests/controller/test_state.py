"""Signal validation: each status from a synthetic sequence, the filter, settings derived from the
instruments (checked on the simulated plant's), and the dead-time alignment of supersaturation."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from controller.state import (
    DEFAULT_INSTRUMENTS,
    DeadTimeAligner,
    InstrumentSpec,
    Reading,
    SignalStatus,
    SignalTracker,
    ValidationSettings,
    alignment_delay_s,
    stuck_min_readings,
    validation_settings_for,
)

NOISY = ValidationSettings(low=0.0, high=100.0, stale_after_s=30.0, stuck_after_s=120.0, noise_floor=0.05)


def feed(tracker, values, start_s=0.0, step_s=10.0, lag_s=0.0):
    out = []
    for k, v in enumerate(values):
        now = start_s + k * step_s
        out.append(tracker.update(Reading(v, now - lag_s), now))
    return out


def noise(n, seed=0, level=50.0):
    return (level + 0.1 * np.random.default_rng(seed).standard_normal(n)).tolist()


def test_clean_noisy_readings_are_ok():
    assert all(v.ok for v in feed(SignalTracker(NOISY), noise(50)))


@pytest.mark.parametrize("reading, status", [
    (None, SignalStatus.missing),
    (Reading(None, 0.0), SignalStatus.missing),
    (Reading(50.0, 0.0, good=False), SignalStatus.bad_quality),
    (Reading(math.nan, 0.0), SignalStatus.not_finite),
    (Reading(math.inf, 0.0), SignalStatus.not_finite),
    (Reading("fifty", 0.0), SignalStatus.not_finite),
    (Reading(50.0, -31.0), SignalStatus.stale),
    (Reading(50.0, None), SignalStatus.stale),
    (Reading(150.0, 0.0), SignalStatus.out_of_range),
])
def test_each_bad_reading_gets_its_status(reading, status):
    tracker = SignalTracker(NOISY)
    v = tracker.update(reading, 0.0)
    assert v.status is status and math.isnan(v.value) and v.age_s == math.inf


def test_a_spike_is_caught_and_a_persistent_step_is_accepted():
    tracker = SignalTracker(NOISY)
    feed(tracker, noise(20))
    spike = tracker.update(Reading(60.0, 200.0), 200.0)
    assert spike.status is SignalStatus.spike and spike.value == pytest.approx(50.0, abs=0.5)
    assert tracker.update(Reading(50.05, 210.0), 210.0).ok
    # the same jump three times in a row is a real step
    states = [tracker.update(Reading(60.0 + 0.01 * k, 220.0 + 10 * k), 220.0 + 10 * k).status for k in range(4)]
    assert states[:2] == [SignalStatus.spike, SignalStatus.spike] and states[2:] == [SignalStatus.ok] * 2


def test_a_frozen_noisy_signal_is_stuck_after_the_timeout():
    tracker = SignalTracker(NOISY)
    feed(tracker, noise(10))
    out = feed(tracker, [50.0] * 20, start_s=100.0)
    statuses = [v.status for v in out]
    assert statuses[:12] == [SignalStatus.ok] * 12  # unchanged for 0..110 s: still fine
    assert statuses[12:] == [SignalStatus.stuck] * 8  # from 120 s on
    quiet = SignalTracker(ValidationSettings(low=0, high=100))  # a setpoint: no stuck test
    assert all(v.ok for v in feed(quiet, [42.0] * 50))


def test_the_filter_follows_with_its_time_constant_and_the_age_grows_while_bad():
    tracker = SignalTracker(ValidationSettings(filter_time_s=60.0))
    tracker.update(Reading(0.0, 0.0), 0.0)
    v = tracker.update(Reading(1.0, 60.0), 60.0)
    assert v.value == pytest.approx(1.0 - math.exp(-1.0))
    bad = tracker.update(Reading(math.nan, 90.0), 90.0)
    assert bad.status is SignalStatus.not_finite and bad.value == v.value and bad.age_s == 30.0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        ValidationSettings(low=1.0, high=0.0)
    with pytest.raises(ValueError):
        ValidationSettings(window=2)
    for bad in (dict(noise_relative=-0.1), dict(max_rate_per_s=-1.0), dict(stuck_min_readings=1)):
        with pytest.raises(ValueError):
            ValidationSettings(**bad)
    for bad in (dict(noise_std=0.0), dict(noise_std=0.1, lag_s=-1.0), dict(noise_std=0.1, max_rate_per_s=-1.0)):
        with pytest.raises(ValueError):
            InstrumentSpec(**bad)


def test_driving_force_is_ln_s_and_nan_when_undefined():
    from controller.state import driving_force

    assert driving_force(110.0, 100.0) == pytest.approx(math.log(1.1))
    assert driving_force(100.0, 100.0) == 0.0
    for c, cs in [(math.nan, 100.0), (100.0, 0.0), (-1.0, 100.0), (100.0, math.inf)]:
        assert math.isnan(driving_force(c, cs))


def test_chord_statistics_of_a_known_distribution():
    from controller.state import CHORD_PER_DIAMETER, chord_statistics

    edges = [1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]
    one_bin = chord_statistics([0, 0, 0, 100.0, 0, 0], edges)
    expected = math.sqrt(100.0 * 300.0) / CHORD_PER_DIAMETER
    assert one_bin.mean_size_um == pytest.approx(expected) and one_bin.volume_mean_size_um == pytest.approx(expected)
    assert one_bin.fines_fraction == 0.0 and one_bin.total_per_s == 100.0
    mixed = chord_statistics([0, 50.0, 0, 50.0, 0, 0], edges)
    assert mixed.fines_fraction == pytest.approx(0.5)
    assert mixed.volume_mean_size_um > mixed.mean_size_um  # large crystals dominate the volume
    broken = chord_statistics([math.nan, -5.0, 0, 100.0, 0, 0], edges)  # bad bins count as none
    assert broken.total_per_s == 100.0
    empty = chord_statistics([0] * 6, edges)
    assert math.isnan(empty.mean_size_um) and math.isnan(empty.fines_fraction)
    with pytest.raises(ValueError):
        chord_statistics([1.0] * 6, edges[:-1])


def test_chord_statistics_follow_the_simulated_plant_s_growing_crystals():
    """A seeded batch's FBRM readings: the volume-weighted size grows as the crystals do."""
    from conf.schema import load_config
    from controller.state import chord_statistics
    from plant_sim.plant import Plant

    cfg = load_config(["scenario.duration_min=120"])
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=10.0, autostart=True))
    edges = cfg.scenario.sensors.fbrm_bin_edges_um
    sizes = []
    for _ in range(4):
        plant.advance(1800.0)
        values = plant.values()
        counts = [values[f"fbrm_counts_bin{k}_per_s"] for k in range(1, 7)]
        sizes.append(chord_statistics(counts, edges).volume_mean_size_um)
    assert all(b > a for a, b in zip(sizes, sizes[1:])), sizes


# ----------------------------------------------------------------------------- settings from instruments
RANGES = {"reactor_temperature_c": (-20.0, 120.0), "jacket_temperature_c": (-30.0, 150.0),
          "concentration_g_per_kg": (0.0, 3000.0), "fbrm_counts_total_per_s": (0.0, 1e6),
          "reactor_temperature_setpoint_active_c": (-20.0, 120.0)}
SETTINGS = validation_settings_for(RANGES)


def test_default_instruments_are_the_simulated_plant_s():
    from plant_sim.sensors import MEASURED_SIGNALS, SensorSettings

    sim = SensorSettings()
    assert set(DEFAULT_INSTRUMENTS) == set(MEASURED_SIGNALS)
    for name, lag in [("reactor_temperature_c", sim.reactor_temperature_lag_s),
                      ("jacket_temperature_c", sim.jacket_temperature_lag_s),
                      ("jacket_inlet_temperature_c", sim.jacket_inlet_temperature_lag_s)]:
        assert DEFAULT_INSTRUMENTS[name].noise_std == sim.temperature_noise_std_k
        assert DEFAULT_INSTRUMENTS[name].lag_s == lag
    atr = DEFAULT_INSTRUMENTS["concentration_g_per_kg"]
    assert (atr.noise_std, atr.dead_time_s, atr.lag_s) == (
        sim.concentration_noise_std_g_per_kg, sim.concentration_dead_time_s, sim.concentration_lag_s)
    assert DEFAULT_INSTRUMENTS["antisolvent_flow_kg_per_min"].noise_std == sim.antisolvent_flow_noise_std_kg_per_min
    assert DEFAULT_INSTRUMENTS["fbrm_counts_bin1_per_s"].relative_noise == sim.fbrm_relative_noise
    assert DEFAULT_INSTRUMENTS["image_mean_size_um"].update_period_s == sim.imaging_period_s


def test_settings_take_the_noise_floor_and_filter_from_the_instrument():
    rtd, atr = SETTINGS["reactor_temperature_c"], SETTINGS["concentration_g_per_kg"]
    assert (rtd.noise_floor, atr.noise_floor) == (0.02, 0.5)  # not 1e-3 of the span: 0.14 K, 3 g/kg
    assert rtd.spike_threshold == atr.spike_threshold == 6.0
    assert rtd.stuck_after_s == atr.stuck_after_s == 90.0 and rtd.stuck_min_readings == 2
    assert rtd.filter_time_s == 0.0 and atr.filter_time_s == 60.0  # sigma noise halved, the RTD not slowed
    # counts of a clear solution are exactly 0 for hours: no stuck test; a read-back has no instrument
    assert SETTINGS["fbrm_counts_total_per_s"].stuck_after_s == 0.0
    readback = SETTINGS["reactor_temperature_setpoint_active_c"]
    assert readback.stuck_after_s == 0.0 and readback.noise_floor == pytest.approx(0.14)
    assert validation_settings_for(RANGES, stuck_after_s=0.0)["reactor_temperature_c"].stuck_after_s == 0.0


def noisy(n, level, sd, seed=0, slope_per_reading=0.0):
    rng = np.random.default_rng(seed)
    return (level + slope_per_reading * np.arange(n) + sd * rng.standard_normal(n)).tolist()


def test_a_concentration_spike_of_one_supersaturation_difference_is_caught():
    """At sigma = 0.015 (the metastable limit) C - C* is ~6 g/kg of 400: a spike that size
    looks like the whole driving force. The span-based floor (3 g/kg, 8 sd) let it through."""
    spike = 400.0 * math.expm1(0.015)
    for settings, caught in [(SETTINGS["concentration_g_per_kg"], True),
                             (ValidationSettings(0.0, 3000.0, stale_after_s=90.0, noise_floor=3.0), False)]:
        tracker = SignalTracker(settings)
        values = noisy(40, 400.0, 0.5, slope_per_reading=-0.3)  # cooling: -0.6 g/kg per min
        assert all(v.ok for v in feed(tracker, values, step_s=30.0))
        v = tracker.update(Reading(values[-1] - 0.3 + spike, 1200.0), 1200.0)
        assert (v.status is SignalStatus.spike) is caught


def test_the_start_of_a_cooling_ramp_is_not_a_spike_but_a_jump_is():
    """After a hold the window's median trails a new ramp by more than the RTD's noise; the
    rate limit (the reactor moves at most 2 K/min) keeps the ramp, and still catches a jump."""
    for rate_k_per_min in (0.2, 0.5, 1.0, 2.0):
        tracker = SignalTracker(SETTINGS["reactor_temperature_c"])
        hold = noisy(30, 49.0, 0.02)
        ramp = noisy(40, 49.0, 0.02, seed=1, slope_per_reading=-rate_k_per_min / 2.0)
        assert all(v.ok for v in feed(tracker, hold + ramp, step_s=30.0)), rate_k_per_min
    # Without the rate limit the same ramp start is called a spike (what a 0.02 K floor alone does).
    plain = SignalTracker(dataclasses.replace(SETTINGS["reactor_temperature_c"], max_rate_per_s=None))
    assert SignalStatus.spike in {v.status for v in feed(plain, hold + ramp, step_s=30.0)}
    tracker = SignalTracker(SETTINGS["reactor_temperature_c"])
    feed(tracker, hold, step_s=30.0)
    assert tracker.update(Reading(49.0 + 1.5, 900.0), 900.0).status is SignalStatus.spike


def test_the_simulated_stuck_rtd_is_caught_within_two_minutes_and_nothing_healthy_is_flagged():
    """conf/scenario/sensor_faults.yaml freezes TT-101 from 6000 s to 6600 s (the old 900 s
    limit never saw it), ends a 0.5 g/kg/min ATR drift at 5400 s with a 15 g/kg step, and
    blanks TT-102 from 9000 s. Read every 30 s, as the agent does."""
    from conf.schema import load_config
    from plant_sim.plant import Plant
    from conf.contract.tagmap import TagMap

    cfg = load_config(["scenario=sensor_faults"])
    tagmap = TagMap.from_dict(cfg.plant)
    names = ("reactor_temperature_c", "jacket_temperature_c", "concentration_g_per_kg")
    settings = validation_settings_for({n: (tagmap[n].low, tagmap[n].high) for n in names})
    trackers = {n: SignalTracker(settings[n]) for n in names}
    plant = Plant.from_config(cfg.plant, cfg.scenario, cfg.plant_settings(step_s=1.0, autostart=True))
    flagged = {n: [] for n in names}
    for _ in range(int(cfg.scenario.duration_min * 2)):
        plant.advance(30.0)
        values = plant.values()
        now = values["plant_time_s"]
        for n in names:
            v = trackers[n].update(Reading(values[n], now), now)
            if not v.ok:
                flagged[n].append((now, v.status))
    stuck = [t for t, status in flagged["reactor_temperature_c"] if status is SignalStatus.stuck]
    assert 6000.0 < stuck[0] <= 6120.0 and stuck[-1] < 6600.0
    assert {s for _, s in flagged["reactor_temperature_c"]} == {SignalStatus.stuck}
    assert all(5400.0 <= t < 5490.0 and s is SignalStatus.spike for t, s in flagged["concentration_g_per_kg"])
    assert all(9000.0 <= t < 9300.0 and s is SignalStatus.not_finite for t, s in flagged["jacket_temperature_c"])


def test_a_quantised_signal_repeats_by_chance_and_needs_more_readings_to_be_stuck():
    """A Modbus integer register with scale 100 carries 0.01 K: a 0.02 K RTD then repeats its
    value about one reading in five. One with scale 10 (0.1 K) hides the noise altogether."""
    assert stuck_min_readings(0.02) == 2
    n = stuck_min_readings(0.02, 0.01)
    assert 8 <= n <= 12
    assert stuck_min_readings(0.02, 0.1) is None
    rtd = InstrumentSpec(0.02, resolution=0.01)
    quantised = validation_settings_for({"t": (-20.0, 120.0)}, {"t": rtd})["t"]
    assert quantised.stuck_min_readings == n
    coarse = validation_settings_for({"t": (-20.0, 120.0)}, {"t": InstrumentSpec(0.02, resolution=0.1)})["t"]
    assert coarse.stuck_after_s == 0.0
    tracker = SignalTracker(quantised)
    healthy = np.round(np.asarray(noisy(3000, 35.0, 0.02, seed=3)) / 0.01) * 0.01
    assert all(v.ok for v in feed(tracker, healthy.tolist(), step_s=30.0))
    frozen = [v.status for v in feed(tracker, [35.0] * 15, start_s=90000.0, step_s=30.0)]
    assert frozen[: n - 1] == [SignalStatus.ok] * (n - 1) and set(frozen[n - 1 :]) == {SignalStatus.stuck}


def test_a_logger_s_resolution_and_a_programmed_hold_are_not_faults():
    """A laboratory logger writes the RTD to 0.1 C (nobody declared it): a ramp that stops in a
    programmed hold repeats one value for an hour; and the setpoint read-back steps when the
    recipe moves it. Neither is a fault. A float instrument that freezes still is."""
    settings = validation_settings_for({"reactor_temperature_c": (-20.0, 120.0),
                                        "reactor_temperature_setpoint_active_c": (-20.0, 120.0)})
    logger = SignalTracker(settings["reactor_temperature_c"])
    ramp = np.round(np.asarray(noisy(20, 52.0, 0.02, slope_per_reading=-0.1)) / 0.1) * 0.1
    hold = [float(ramp[-1])] * 120
    assert all(v.ok for v in feed(logger, [round(float(v), 1) for v in ramp] + hold, step_s=30.0))
    setpoint = SignalTracker(settings["reactor_temperature_setpoint_active_c"])
    steps = [50.0] * 20 + [45.0] * 20 + [20.0] * 20
    assert all(v.ok for v in feed(setpoint, steps, step_s=30.0))
    rtd = SignalTracker(settings["reactor_temperature_c"])
    healthy = noisy(20, 45.0, 0.02)
    frozen = [v.status for v in feed(rtd, healthy + [healthy[-1]] * 10, step_s=30.0)]
    assert SignalStatus.stuck in frozen


def test_stuck_needs_both_the_time_and_the_readings_of_distinct_source_times():
    settings = ValidationSettings(0.0, 100.0, stale_after_s=300.0, stuck_after_s=60.0, noise_floor=0.05,
                                  stuck_min_readings=5)
    tracker = SignalTracker(settings)
    feed(tracker, noise(10), step_s=30.0)
    statuses = [v.status for v in feed(tracker, [50.0] * 6, start_s=300.0, step_s=30.0)]
    assert statuses == [SignalStatus.ok] * 4 + [SignalStatus.stuck] * 2  # 60 s passed at the 3rd
    # the same sample read again and again (an analyser between scans) is no new reading
    tracker = SignalTracker(settings)
    feed(tracker, noise(10), step_s=30.0)
    tracker.update(Reading(50.0, 300.0), 300.0)
    reread = [tracker.update(Reading(50.0, 300.0 + 30.0 * (k // 4)), 300.0 + 10.0 * k).status for k in range(16)]
    assert reread[-1] is SignalStatus.ok


def test_counting_noise_scales_the_spike_floor():
    settings = ValidationSettings(0.0, 1e6, stale_after_s=90.0, spike_threshold=6.0, noise_floor=3.0,
                                  noise_relative=0.03)
    for value, status in [(5700.0, SignalStatus.ok), (6500.0, SignalStatus.spike)]:  # 4.7 and 10 sd of 3 %
        tracker = SignalTracker(settings)
        feed(tracker, [5000.0] * 10, step_s=30.0)  # a window with no spread of its own
        assert tracker.update(Reading(value, 300.0), 300.0).status is status
        plain = SignalTracker(dataclasses.replace(settings, noise_relative=0.0))
        feed(plain, [5000.0] * 10, step_s=30.0)
        assert plain.update(Reading(value, 300.0), 300.0).status is SignalStatus.spike


def test_the_concentration_filter_halves_its_noise():
    tracker = SignalTracker(SETTINGS["concentration_g_per_kg"])
    out = feed(tracker, noisy(2000, 400.0, 0.5, seed=4), step_s=30.0)
    assert all(v.ok for v in out)
    assert np.std([v.value for v in out[100:]]) == pytest.approx(0.5 * 0.49, rel=0.1)


def test_a_filtered_ramp_trails_by_the_ramp_lag():
    spec = DEFAULT_INSTRUMENTS["concentration_g_per_kg"]
    tracker = SignalTracker(ValidationSettings(filter_time_s=spec.filter_time_s))
    out = feed(tracker, [-0.5 * k for k in range(200)], step_s=30.0)  # -1 per min, exact
    lag_s = spec.ramp_lag_s(30.0) - spec.dead_time_s - spec.lag_s
    assert out[-1].value == pytest.approx(-0.5 * 199 + lag_s / 60.0, abs=1e-9)
    assert spec.ramp_lag_s() == pytest.approx(110.0) and 40.0 < lag_s < 60.0


# ----------------------------------------------------------------------------- dead time
def test_the_aligner_reads_the_history_back_by_its_delay():
    aligner = DeadTimeAligner(45.0)
    assert math.isnan(aligner.delayed(0.0))
    assert aligner.update(0.0, 10.0) == 10.0  # no history yet: the oldest value stands in
    for t in range(30, 301, 30):
        delayed = aligner.update(float(t), 10.0 + t / 30.0)
    assert delayed == pytest.approx(10.0 + (300.0 - 45.0) / 30.0)
    assert aligner.update(300.0, 99.0) == delayed and aligner.update(330.0, math.nan) == aligner.delayed(330.0)
    assert len(aligner._history) <= 3  # only what the delay needs is kept
    assert DeadTimeAligner(0.0).update(5.0, 1.5) == 1.5
    with pytest.raises(ValueError):
        DeadTimeAligner(-1.0)


def test_aligned_supersaturation_of_the_simulated_instruments_is_unbiased_on_a_ramp():
    """The simulated ATR-FTIR (30 s dead time, 20 s lag) and RTD (5 s lag), cooling at 0.5 K/min
    at a true sigma of 0.01: the unaligned sigma is 0.006 too high (the analyser still sees the
    warmer solution), the aligned one within noise."""
    from plant_sim.sensors import SensorSettings, SensorSuite, Truth

    def solubility(t):
        return 300.0 * np.exp(0.008 * (np.asarray(t) - 20.0))

    n = 4000
    t = np.arange(n, dtype=float)
    temperature = np.where(t < 600.0, 50.0, 50.0 - 0.5 * (t - 600.0) / 60.0)
    zeros, ones = np.zeros(n), np.ones(n)
    truth = Truth(t, temperature, temperature, temperature, solubility(temperature) * math.exp(0.01), zeros,
                  np.zeros((n, 1)), np.array([1e-4]), np.array([1e-5]), ones, np.zeros((n, 4)), np.zeros((n, 4)),
                  ones)
    measured = SensorSuite(SensorSettings(seed=5)).measure(truth)
    rtd, atr = (SignalTracker(SETTINGS[k]) for k in ("reactor_temperature_c", "concentration_g_per_kg"))
    aligner = DeadTimeAligner(alignment_delay_s(DEFAULT_INSTRUMENTS["concentration_g_per_kg"],
                                                DEFAULT_INSTRUMENTS["reactor_temperature_c"], 30.0))
    naive, aligned = [], []
    for k in range(0, n, 30):
        vt = rtd.update(Reading(measured["reactor_temperature_c"][k], t[k]), t[k])
        vc = atr.update(Reading(measured["concentration_g_per_kg"][k], t[k]), t[k])
        assert vt.ok and vc.ok
        then = aligner.update(t[k], vt.value)
        if t[k] >= 1200.0:
            naive.append(math.log(vc.value / solubility(vt.value)))
            aligned.append(math.log(vc.value / solubility(then)))
    assert np.mean(naive) - 0.01 > 0.005
    assert abs(np.mean(aligned) - 0.01) < 3e-4
