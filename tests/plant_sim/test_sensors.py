"""Tests of plant_sim.sensors: lag, dead time, FBRM chords, imaging, faults, chunk invariance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plant_sim.sensors import (
    MEASURED_SIGNALS,
    SensorFault,
    SensorFaultKind,
    SensorSettings,
    SensorSuite,
    Truth,
    fbrm_chord_probabilities,
)

EDGES_M = np.geomspace(0.5e-6, 4e-3, 201)
CENTERS_M = np.sqrt(EDGES_M[:-1] * EDGES_M[1:])
WIDTHS_M = np.diff(EDGES_M)

# Settings without noise or lag: the reading is the truth, so each model is seen alone.
EXACT = SensorSettings(
    temperature_noise_std_k=0.0,
    reactor_temperature_lag_s=0.0,
    jacket_temperature_lag_s=0.0,
    jacket_inlet_temperature_lag_s=0.0,
    concentration_noise_std_g_per_kg=0.0,
    concentration_dead_time_s=0.0,
    concentration_lag_s=0.0,
    antisolvent_flow_noise_std_kg_per_min=0.0,
    fbrm_relative_noise=0.0,
    fbrm_counting_time_s=1e300,
    imaging_size_relative_noise=0.0,
    imaging_aspect_ratio_relative_noise=0.0,
    facet_fraction_noise_std=0.0,
    imaging_crystals_per_reading=1e300,
)


def mono_csd(size_m: float, number_per_kg: float) -> np.ndarray:
    """Number density (n,) with all crystals in the class nearest size_m."""
    csd = np.zeros_like(CENTERS_M)
    i = int(np.argmin(np.abs(np.log(CENTERS_M / size_m))))
    csd[i] = number_per_kg / WIDTHS_M[i]
    return csd


def crystals_per_kg(suspension_kg_per_kg: float, size_m: float, density_kg_per_m3: float = 1500.0) -> float:
    return suspension_kg_per_kg / (density_kg_per_m3 * math.pi / 6.0 * size_m**3)


def make_truth(times_s, **fields) -> Truth:
    """Truth over the given times; unspecified fields are smooth, plausible trajectories."""
    t = np.asarray(times_s, dtype=float)
    n_steps = t.size
    growth = np.linspace(1.0, 1.5, n_steps)[:, None]
    csd = fields.pop("csd", None)
    if csd is None:
        csd = np.outer(growth[:, 0], mono_csd(150e-6, 1e7)) + np.outer(2.0 - growth[:, 0], mono_csd(40e-6, 5e7))
    csd = np.broadcast_to(csd, (n_steps, CENTERS_M.size))
    defaults = dict(
        plant_time_s=t,
        reactor_temperature_c=40.0 - 0.01 * t + np.sin(t / 7.0),
        jacket_temperature_c=35.0 - 0.01 * t,
        jacket_inlet_temperature_c=30.0 + np.cos(t / 5.0),
        concentration_g_per_kg=300.0 - 0.1 * t + 5.0 * (t > 40.0),
        antisolvent_flow_kg_per_min=0.1 + 0.0 * t,
        csd_per_m_per_kg=csd,
        size_centers_m=CENTERS_M,
        size_widths_m=WIDTHS_M,
        solvent_mass_kg=10.0 + 0.0 * t,
        facet_area_fractions=np.broadcast_to([0.5, 0.3, 0.2, 0.0], (n_steps, 4)),
        facet_growth_rates_m_per_s=np.broadcast_to([1e-8, 2e-8, 3e-8, 0.0], (n_steps, 4)) * growth,
        aspect_ratio=2.0 + 0.001 * t,
    )
    defaults.update(fields)
    return Truth(**{k: np.asarray(v, dtype=float) for k, v in defaults.items()})


def chunk(truth: Truth, start: int, stop: int) -> Truth:
    per_step = {"size_centers_m", "size_widths_m"}
    return Truth(
        **{
            name: (value if name in per_step or np.ndim(value) == 0 else value[start:stop])
            for name, value in truth.__dict__.items()
        }
    )


def measure_in_chunks(suite: SensorSuite, truth: Truth, size: int) -> dict[str, np.ndarray]:
    n_steps = truth.plant_time_s.size
    parts = [suite.measure(chunk(truth, i, min(i + size, n_steps))) for i in range(0, n_steps, size)]
    return {name: np.concatenate([p[name] for p in parts]) for name in MEASURED_SIGNALS}


ALL_FAULTS = (
    SensorFault("reactor_temperature_c", SensorFaultKind.stuck, 20.0, 35.0),
    SensorFault("jacket_temperature_c", "drift", 10.0, 60.0, magnitude=0.5),
    SensorFault("concentration_g_per_kg", "dropout", 30.0, 70.0, probability=0.4),
    SensorFault("fbrm_counts_bin3_per_s", "spike", 0.0, 90.0, magnitude=500.0, probability=0.3),
    SensorFault("image_mean_size_um", "nan", 55.0, 65.0),
    SensorFault("antisolvent_flow_kg_per_min", "stuck", 5.0, 1e9),
)


# --- chunk invariance and seeding ----------------------------------------------------------
@pytest.mark.parametrize("size", [1, 7, 33])
def test_chunked_measurement_equals_whole_batch(size):
    truth = make_truth(np.arange(100.0))
    whole = SensorSuite(SensorSettings(seed=3), ALL_FAULTS).measure(truth)
    parts = measure_in_chunks(SensorSuite(SensorSettings(seed=3), ALL_FAULTS), truth, size)
    for name in MEASURED_SIGNALS:
        assert whole[name].shape == (100,)
        # Same draws, lags and faults; only BLAS may round a chunk's size sums differently.
        np.testing.assert_allclose(whole[name], parts[name], rtol=1e-12, atol=0.0, err_msg=name)
    assert np.isnan(whole["concentration_g_per_kg"]).any()  # the faults really fired


def test_reading_the_rtd_ahead_of_measure_changes_no_reading():
    """The DCS loop reads TT-101 every step before the chunk is measured; measure reports those."""
    truth = make_truth(np.arange(100.0))
    whole = SensorSuite(SensorSettings(seed=3), ALL_FAULTS).measure(truth)
    suite = SensorSuite(SensorSettings(seed=3), ALL_FAULTS)
    times, true_c = truth.plant_time_s.tolist(), truth.reactor_temperature_c.tolist()
    ahead = [suite.read_reactor_temperature(t, c) for t, c in zip(times[:60], true_c[:60])]
    np.testing.assert_array_equal(ahead, whole["reactor_temperature_c"][:60])  # stuck fault included
    assert suite.read_reactor_temperature(59.0, 0.0) == ahead[-1]  # an instant is read once
    parts = [suite.measure(chunk(truth, 0, 50)), suite.measure(chunk(truth, 50, 100))]
    for name in MEASURED_SIGNALS:
        measured = np.concatenate([p[name] for p in parts])
        np.testing.assert_allclose(measured, whole[name], rtol=1e-12, atol=0.0, err_msg=name)
    assert suite.read_reactor_temperature(99.0, 0.0) == whole["reactor_temperature_c"][99]


def test_same_seed_same_readings_other_seed_differs():
    truth = make_truth(np.arange(50.0))
    a = SensorSuite(SensorSettings(seed=11)).measure(truth)
    b = SensorSuite(SensorSettings(seed=11)).measure(truth)
    c = SensorSuite(SensorSettings(seed=12)).measure(truth)
    for name in MEASURED_SIGNALS:
        np.testing.assert_array_equal(a[name], b[name])
        if np.any(a[name] != 0.0):  # bins without crystals and absent facets read exactly 0
            assert not np.array_equal(a[name], c[name]), name


def test_noise_levels_match_settings():
    truth = make_truth(np.arange(4000.0), reactor_temperature_c=np.full(4000, 25.0))
    settings = SensorSettings(reactor_temperature_lag_s=0.0)
    readings = SensorSuite(settings).measure(truth)
    assert np.std(readings["reactor_temperature_c"]) == pytest.approx(0.02, rel=0.05)
    assert np.mean(readings["reactor_temperature_c"]) == pytest.approx(25.0, abs=0.002)


# --- temperature lag and concentration dead time ---------------------------------------------
def test_lag_step_reaches_63_percent_at_tau():
    dt = 0.01
    t = np.arange(0.0, 30.0, dt)
    step = np.where(t >= 10.0, 30.0, 20.0)
    settings = SensorSettings(**{**EXACT.__dict__, "reactor_temperature_lag_s": 5.0})
    y = SensorSuite(settings).measure(make_truth(t, reactor_temperature_c=step))["reactor_temperature_c"]
    assert y[t < 10.0 - 1e-9] == pytest.approx(20.0)
    at_tau = np.interp(15.0, t, y)
    assert (at_tau - 20.0) / 10.0 == pytest.approx(1.0 - math.exp(-1.0), abs=2e-3)
    assert (y[-1] - 20.0) / 10.0 == pytest.approx(1.0 - math.exp(-20.0 / 5.0), abs=2e-3)


def test_lag_is_exact_for_a_ramp_with_uneven_steps():
    # tau y' = x - y, x = x0 + r t, y(0) = x0  ->  y = x - r tau (1 - exp(-t / tau)).
    t = np.cumsum(np.r_[0.0, np.random.default_rng(0).uniform(0.2, 3.0, 60)])
    tau, rate = 5.0, 0.3
    settings = SensorSettings(**{**EXACT.__dict__, "reactor_temperature_lag_s": tau})
    y = SensorSuite(settings).measure(make_truth(t, reactor_temperature_c=20.0 + rate * t))
    expected = 20.0 + rate * t - rate * tau * (1.0 - np.exp(-t / tau))
    np.testing.assert_allclose(y["reactor_temperature_c"], expected, rtol=0, atol=1e-10)


def test_dead_time_delays_a_step_by_the_configured_time():
    t = np.arange(0.0, 150.0)
    conc = np.where(t >= 50.0, 310.0, 300.0)
    settings = SensorSettings(**{**EXACT.__dict__, "concentration_dead_time_s": 30.0})
    y = SensorSuite(settings).measure(make_truth(t, concentration_g_per_kg=conc))["concentration_g_per_kg"]
    np.testing.assert_array_equal(y, np.where(t >= 80.0, 310.0, 300.0))


def test_dead_time_then_lag_in_chunks_of_one():
    t = np.arange(0.0, 200.0)
    conc = np.where(t >= 50.0, 310.0, 300.0)
    suite = SensorSuite(SensorSettings(**{**EXACT.__dict__, "concentration_dead_time_s": 30.0, "concentration_lag_s": 20.0}))
    y = measure_in_chunks(suite, make_truth(t, concentration_g_per_kg=conc), 1)["concentration_g_per_kg"]
    assert np.all(y[t <= 79.0] == 300.0)
    assert 300.0 < y[t == 81.0][0] < 301.0
    assert (np.interp(100.0, t, y) - 300.0) / 10.0 == pytest.approx(1.0 - math.exp(-1.0), abs=0.02)


# --- FBRM ---------------------------------------------------------------------------------------
def test_chord_probability_rows_sum_to_one_within_the_bin_range():
    edges_m = np.array([1, 10, 30, 100, 300, 1000, 3000]) * 1e-6
    size_m = np.geomspace(1e-6, 3e-3, 50)
    p = fbrm_chord_probabilities(size_m, edges_m)
    assert p.shape == (50, 6)
    assert np.all(p >= 0.0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0 - (1e-6 / size_m) ** 2, atol=1e-14)
    big = size_m >= 32e-6
    np.testing.assert_allclose(p[big].sum(axis=1), 1.0, atol=1e-3)
    # A 200 um sphere: P(100 <= c < 200) = 1 - 0.25, P(30 <= c < 100) = 0.25 - 0.0225, nothing above.
    p200 = fbrm_chord_probabilities(np.array([200e-6]), edges_m)[0]
    np.testing.assert_allclose(p200, [99 / 4e4, 800 / 4e4, 0.2275, 0.75, 0.0, 0.0], atol=1e-12)
    assert fbrm_chord_probabilities(np.array([0.5e-6]), edges_m).sum() == 0.0


def test_bigger_crystals_shift_counts_to_bigger_bins():
    bins = [f"fbrm_counts_bin{j}_per_s" for j in range(1, 7)]

    def mean_bin(size_m):
        r = SensorSuite(EXACT).measure(make_truth([0.0], csd=mono_csd(size_m, 1e7)))
        counts = np.array([r[b][0] for b in bins])
        return counts @ np.arange(6) / counts.sum(), counts

    small, c_small = mean_bin(50e-6)
    large, c_large = mean_bin(500e-6)
    assert large > small + 1.0
    assert np.argmax(c_small) == 2 and np.argmax(c_large) == 4
    assert c_large[5] == 0.0  # no chord longer than the particle


def test_counts_scale_linearly_with_number_of_particles():
    one = SensorSuite(EXACT).measure(make_truth([0.0]))
    three = SensorSuite(EXACT).measure(make_truth([0.0], csd=3.0 * make_truth([0.0]).csd_per_m_per_kg))
    for name in ["fbrm_counts_total_per_s", *(f"fbrm_counts_bin{j}_per_s" for j in range(1, 7))]:
        assert three[name][0] == pytest.approx(3.0 * one[name][0], rel=1e-12)
    total = sum(one[f"fbrm_counts_bin{j}_per_s"][0] for j in range(1, 7))
    assert one["fbrm_counts_total_per_s"][0] == pytest.approx(total, rel=1e-12)


def test_typical_batch_gives_thousands_of_counts_with_poisson_like_noise():
    number = crystals_per_kg(0.075, 200e-6)
    truth = make_truth(np.arange(3000.0), csd=mono_csd(200e-6, number))
    r = SensorSuite(SensorSettings()).measure(truth)
    expected = SensorSuite(EXACT).measure(chunk(truth, 0, 1))
    total = expected["fbrm_counts_total_per_s"][0]
    assert 1e3 < total < 3e4
    bin4 = expected["fbrm_counts_bin4_per_s"][0]
    rel_std = math.sqrt(1.0 / bin4 + 0.03**2)
    assert np.mean(r["fbrm_counts_bin4_per_s"]) == pytest.approx(bin4, rel=0.01)
    assert np.std(r["fbrm_counts_bin4_per_s"]) / bin4 == pytest.approx(rel_std, rel=0.08)
    assert np.all(r["fbrm_counts_bin6_per_s"] >= 0.0)


# --- imaging ----------------------------------------------------------------------------------
def test_imaging_excludes_small_crystals_and_holds_between_updates():
    t = np.arange(0.0, 35.0)
    csd = mono_csd(100e-6, 1e6) + mono_csd(10e-6, 1e9)  # fines below the 20 um limit
    r = SensorSuite(EXACT).measure(make_truth(t, csd=csd, aspect_ratio=2.0 + 0.1 * t))
    nearest = CENTERS_M[np.argmin(np.abs(np.log(CENTERS_M / 100e-6)))] * 1e6
    assert r["image_mean_size_um"][0] == pytest.approx(nearest, rel=1e-12)
    aspect = r["image_aspect_ratio"]
    np.testing.assert_allclose(aspect, 2.0 + 0.1 * (t // 10.0) * 10.0)


def test_imaging_facets_sum_to_one_and_absent_stays_zero():
    r = SensorSuite(SensorSettings(seed=5)).measure(make_truth(np.arange(0.0, 200.0)))
    fractions = np.stack([r[f"facet_{j}_area_fraction"] for j in range(1, 5)])
    np.testing.assert_allclose(fractions.sum(axis=0), 1.0, atol=1e-12)
    assert np.all(fractions >= 0.0) and np.all(fractions[3] == 0.0)
    assert np.std(fractions[0]) > 0.002  # noisy


def test_the_probe_reports_no_facet_growth_rate():
    """Facet normal growth rates are a laboratory measurement; the truth carries them, no reading does."""
    assert [name for name in MEASURED_SIGNALS if "growth" in name] == []
    r = SensorSuite(SensorSettings(seed=5)).measure(make_truth(np.arange(0.0, 20.0)))
    assert set(r) == set(MEASURED_SIGNALS)


SIZE_BINS = [f"image_size_bin{j}_number_fraction" for j in range(1, 5)]


def size_distribution(reading: dict[str, np.ndarray], k: int = 0) -> np.ndarray:
    return np.array([reading[name][k] for name in SIZE_BINS])


def test_imaging_size_distribution_sums_to_one_empty_bins_stay_zero_and_it_is_noisy():
    # make_truth: crystals at 40 um (bin 20-100 um) and 150 um (bin 100-200 um), nothing above
    r = SensorSuite(SensorSettings(seed=5)).measure(make_truth(np.arange(0.0, 400.0)))
    bins = np.stack([r[name] for name in SIZE_BINS])
    np.testing.assert_allclose(bins.sum(axis=0), 1.0, atol=1e-12)
    assert np.all(bins >= 0.0) and np.all(bins[2:] == 0.0)
    # counting noise of 500 crystals a reading: std sqrt(p (1 - p) / 500), ~0.02 here
    updates = bins[0, ::10]
    assert 0.01 < np.std(np.diff(updates)) / math.sqrt(2.0) < 0.04


def test_imaging_size_distribution_follows_the_csd():
    small, large = mono_csd(40e-6, 1e7), mono_csd(150e-6, 1e7)
    even = size_distribution(SensorSuite(EXACT).measure(make_truth([0.0], csd=small + large)))
    np.testing.assert_allclose(even, [0.5, 0.5, 0.0, 0.0], atol=1e-12)
    # three times the large population shifts the distribution to the large bin
    more = size_distribution(SensorSuite(EXACT).measure(make_truth([0.0], csd=small + 3.0 * large)))
    np.testing.assert_allclose(more, [0.25, 0.75, 0.0, 0.0], atol=1e-12)
    # grown crystals move up a bin; fines below the 20 um limit are not counted
    grown = size_distribution(SensorSuite(EXACT).measure(
        make_truth([0.0], csd=mono_csd(10e-6, 1e9) + mono_csd(250e-6, 1e7))))
    np.testing.assert_allclose(grown, [0.0, 0.0, 1.0, 0.0], atol=1e-12)


def test_imaging_sizes_are_projected_area_equivalent_and_held_between_updates():
    """A cube of volume-equivalent size L projects, on average, the area of a circle of
    L sqrt(k_a / pi), k_a = 6 (pi/6)^(2/3): 1.11 L (Cauchy: the mean projection is A / 4)."""
    k_a = 6.0 * (math.pi / 6.0) ** (2.0 / 3.0)
    nearest = CENTERS_M[np.argmin(np.abs(np.log(CENTERS_M / 95e-6)))] * 1e6
    sphere = SensorSuite(EXACT).measure(make_truth([0.0], csd=mono_csd(95e-6, 1e7)))
    cube = SensorSuite(EXACT).measure(make_truth([0.0], csd=mono_csd(95e-6, 1e7), area_shape_factor=[k_a]))
    assert sphere["image_mean_size_um"][0] == pytest.approx(nearest, rel=1e-12)
    assert cube["image_mean_size_um"][0] == pytest.approx(nearest * math.sqrt(k_a / math.pi), rel=1e-12)
    assert size_distribution(sphere)[0] == 1.0 and size_distribution(cube)[1] == 1.0  # 95 um vs 106 um
    # the distribution refreshes once per imaging period, as the mean size does
    t = np.arange(0.0, 25.0)
    csd = np.stack([mono_csd(40e-6, 1e7) + mono_csd(150e-6, 1e7 * (1.0 + k)) for k in range(t.size)])
    r = SensorSuite(EXACT).measure(make_truth(t, csd=csd))
    np.testing.assert_allclose(r[SIZE_BINS[1]], (1.0 + t // 10.0 * 10.0) / (2.0 + t // 10.0 * 10.0), rtol=1e-12)


def test_imaging_reads_nan_without_detectable_crystals():
    r = SensorSuite(EXACT).measure(make_truth([0.0, 1.0], csd=mono_csd(10e-6, 1e9)))
    assert np.isnan(r["image_mean_size_um"]).all() and np.isnan(r["facet_1_area_fraction"]).all()
    assert all(np.isnan(r[name]).all() for name in SIZE_BINS)
    assert r["fbrm_counts_total_per_s"][0] > 0.0


# --- faults -------------------------------------------------------------------------------------
T_FAULT = np.arange(0.0, 100.0)
WINDOW = (T_FAULT >= 20.0) & (T_FAULT < 60.0)


def faulty(kind, **kw):
    truth = make_truth(T_FAULT)
    fault = SensorFault("reactor_temperature_c", kind, 20.0, 60.0, **kw)
    clean = SensorSuite(EXACT).measure(truth)["reactor_temperature_c"]
    bad = measure_in_chunks(SensorSuite(EXACT, [fault]), truth, 9)["reactor_temperature_c"]
    np.testing.assert_array_equal(bad[~WINDOW], clean[~WINDOW])
    return clean, bad


def test_stuck_fault_holds_value_at_start():
    clean, bad = faulty("stuck")
    np.testing.assert_array_equal(bad[WINDOW], clean[T_FAULT == 20.0][0])


def test_drift_fault_adds_magnitude_per_minute():
    clean, bad = faulty(SensorFaultKind.drift, magnitude=0.6)
    np.testing.assert_allclose(bad[WINDOW] - clean[WINDOW], 0.6 * (T_FAULT[WINDOW] - 20.0) / 60.0, atol=1e-12)


def test_dropout_and_nan_faults_read_nan():
    _, bad = faulty("nan")
    assert np.isnan(bad[WINDOW]).all() and not np.isnan(bad[~WINDOW]).any()
    _, bad = faulty("dropout")
    assert np.isnan(bad[WINDOW]).all()
    _, bad = faulty("dropout", probability=0.5)
    assert 0.2 < np.isnan(bad[WINDOW]).mean() < 0.8


def test_spike_fault_adds_amplitude_on_a_fraction_of_steps():
    clean, bad = faulty("spike", magnitude=5.0, probability=0.5)
    jump = bad[WINDOW] - clean[WINDOW]
    assert np.all((np.abs(jump) < 1e-9) | (np.abs(jump - 5.0) < 1e-9))
    assert 0.2 < np.mean(jump > 1.0) < 0.8
    clean, bad = faulty("spike", magnitude=-3.0)
    np.testing.assert_allclose(bad[WINDOW] - clean[WINDOW], -3.0, atol=1e-9)


def test_unknown_fault_signal_or_kind_raises():
    with pytest.raises(ValueError, match="unknown sensor fault signal 'reactor_temp'.*reactor_temperature_c"):
        SensorFault("reactor_temp", "stuck", 0.0, 1.0)
    with pytest.raises(ValueError, match="unknown sensor fault kind 'freeze'.*stuck"):
        SensorFault("reactor_temperature_c", "freeze", 0.0, 1.0)
    with pytest.raises(ValueError, match="end_s > start_s"):
        SensorFault("reactor_temperature_c", "nan", 5.0, 5.0)


def test_settings_reject_bad_bin_edges():
    with pytest.raises(ValueError, match="fbrm_bin_edges_um"):
        SensorSettings(fbrm_bin_edges_um=(1.0, 10.0, 5.0, 100.0, 300.0, 1000.0, 3000.0))
    with pytest.raises(ValueError, match="imaging_size_bin_edges_um"):
        SensorSettings(imaging_size_bin_edges_um=(20.0, 100.0, 200.0))
    with pytest.raises(ValueError, match="imaging_crystals_per_reading"):
        SensorSettings(imaging_crystals_per_reading=0.0)




def test_scale_fault_reads_a_gain_error():
    clean, bad = faulty(SensorFaultKind.scale, magnitude=-0.3)
    np.testing.assert_allclose(bad[WINDOW], 0.7 * clean[WINDOW], rtol=1e-12)
    np.testing.assert_array_equal(bad[~WINDOW], clean[~WINDOW])
