"""Signal validation: each status from a synthetic sequence, and the filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from controller.state import Reading, SignalStatus, SignalTracker, ValidationSettings

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
