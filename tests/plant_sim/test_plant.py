"""The plant's DCS layer: batch state machine, write protection, rate limits, shedding."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from conf.contract.codes import BatchCommand, BatchState, ShedAction
from conf.contract.process import recipe_duration_min
from conf.contract.tagmap import TagMapError
from conf.schema import load_config
from plant_sim.plant import Plant, PlantSettings, WriteStatus
from plant_sim.reactor import ReactorSettings
from plant_sim.sensors import SensorFault


@pytest.fixture(scope="module")
def cfg():
    return load_config([])


def make_plant(cfg, **settings) -> Plant:
    # A coarse grid keeps these logic tests fast; the physics tests use the full grid.
    scenario = dataclasses.replace(cfg.scenario, reactor=dataclasses.replace(ReactorSettings(), n_classes=80))
    return Plant.from_config(cfg.plant, scenario, PlantSettings(**settings))


def command(plant: Plant, cmd: BatchCommand):
    return plant.write("batch_command", float(cmd))


def test_state_machine_accepts_the_isa88_cycle_and_rejects_the_rest(cfg):
    plant = make_plant(cfg)
    assert plant.state is BatchState.IDLE
    for bad in (BatchCommand.HOLD, BatchCommand.RESUME, BatchCommand.ABORT, BatchCommand.RESET, BatchCommand.COMPLETE):
        result = command(plant, bad)
        assert result.status is WriteStatus.rejected_invalid_state
        assert "Idle" in result.message
    assert command(plant, BatchCommand.START).accepted
    assert plant.state is BatchState.EXECUTE
    assert command(plant, BatchCommand.START).status is WriteStatus.rejected_invalid_state
    assert command(plant, BatchCommand.HOLD).accepted and plant.state is BatchState.HELD
    assert command(plant, BatchCommand.HOLD).status is WriteStatus.rejected_invalid_state
    assert command(plant, BatchCommand.RESUME).accepted and plant.state is BatchState.EXECUTE
    assert command(plant, BatchCommand.ABORT).accepted and plant.state is BatchState.ABORTED
    assert command(plant, BatchCommand.RESUME).status is WriteStatus.rejected_invalid_state
    assert command(plant, BatchCommand.RESET).accepted and plant.state is BatchState.IDLE
    assert command(plant, BatchCommand.NONE).accepted and plant.state is BatchState.IDLE


def test_complete_ends_an_executing_batch_early_with_its_report(cfg):
    plant = make_plant(cfg)
    command(plant, BatchCommand.START)
    plant.advance(600.0)
    assert command(plant, BatchCommand.HOLD).accepted
    assert command(plant, BatchCommand.COMPLETE).status is WriteStatus.rejected_invalid_state  # resume first
    command(plant, BatchCommand.RESUME)
    assert command(plant, BatchCommand.COMPLETE).accepted and plant.state is BatchState.COMPLETED
    plant.advance(60.0)
    report = plant.last_batch_report
    assert report is not None and report["batch_state"] == "completed"
    assert report["batch_time_h"] < recipe_duration_min(cfg.scenario.recipe, cfg.scenario.initial_temperature_c) / 60


def test_write_validation_statuses(cfg):
    plant = make_plant(cfg)
    assert plant.write("no_such_tag", 1.0).status is WriteStatus.rejected_unknown
    assert plant.write("reactor_temperature_c", 30.0).status is WriteStatus.rejected_read_only
    assert plant.write("reactor_temperature_setpoint_c", math.nan).status is WriteStatus.rejected_not_finite
    assert plant.write("reactor_temperature_setpoint_c", math.inf).status is WriteStatus.rejected_not_finite
    assert plant.write("reactor_temperature_setpoint_c", "warm").status is WriteStatus.rejected_type
    assert plant.write("agent_mode", 1.5).status is WriteStatus.rejected_type
    signal = plant.tagmap["reactor_temperature_setpoint_c"]
    assert plant.write("reactor_temperature_setpoint_c", signal.high + 1).status is WriteStatus.rejected_out_of_range
    before = plant.values()["reactor_temperature_setpoint_c"]
    assert plant.write("reactor_temperature_setpoint_c", signal.low - 1).applied is None
    assert plant.values()["reactor_temperature_setpoint_c"] == before  # rejected writes change nothing
    lo, hi = signal.limits
    if hi < signal.high:
        clamped = plant.write("reactor_temperature_setpoint_c", (hi + signal.high) / 2)
        assert clamped.status is WriteStatus.clamped and clamped.applied == hi
    ok = plant.write("reactor_temperature_setpoint_c", (lo + hi) / 2)
    assert ok.status is WriteStatus.ok and plant.values()["reactor_temperature_setpoint_c"] == (lo + hi) / 2


def test_remote_setpoint_is_rate_limited_and_only_followed_in_automatic(cfg):
    plant = make_plant(cfg, shed_timeout_s=1e9)
    command(plant, BatchCommand.START)
    start = plant.values()["reactor_temperature_setpoint_active_c"]
    plant.write("reactor_temperature_setpoint_c", 20.0)
    plant.advance(60.0)
    # Advisory: the recipe (0.5 K/min ramp at first) drives, not the written setpoint, and the
    # remote setpoint tracks the working one.
    assert plant.values()["control_source"] == 0.0
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(start - 0.5, abs=1e-6)
    assert plant.values()["reactor_temperature_setpoint_c"] == pytest.approx(start - 0.5, abs=1e-6)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)
    plant.write("reactor_temperature_setpoint_c", 20.0)
    before = plant.values()["reactor_temperature_setpoint_active_c"]
    plant.advance(60.0)
    after = plant.values()["reactor_temperature_setpoint_active_c"]
    rate = plant.tagmap["reactor_temperature_setpoint_c"].max_rate_per_min
    assert plant.values()["control_source"] == 1.0
    assert before - after == pytest.approx(rate, rel=1e-9)  # 1 min at the plant's rate limit


def test_entering_automatic_is_bumpless(cfg):
    plant = make_plant(cfg, shed_timeout_s=1e9)
    command(plant, BatchCommand.START)
    plant.advance(600.0)  # 10 min down the recipe ramp, local control
    working = plant.values()["reactor_temperature_setpoint_active_c"]
    assert working < plant.scenario.initial_temperature_c - 1.0
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)  # no setpoint written: the plant holds where the recipe was
    plant.advance(60.0)
    assert plant.values()["control_source"] == 1.0
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(working, abs=1e-9)


def _remote(plant: Plant) -> None:
    command(plant, BatchCommand.START)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)


def test_a_batch_under_remote_control_outlives_its_recipe_until_the_time_limit(cfg):
    plant = make_plant(cfg, step_s=10.0, shed_timeout_s=1e9)
    _remote(plant)
    duration_s = recipe_duration_min(plant.scenario.recipe, plant.scenario.initial_temperature_c) * 60.0
    plant.write("reactor_temperature_setpoint_c", 40.0)  # a supervisor slower than the recipe
    plant.advance(duration_s + 600.0)
    values = plant.values()
    assert values["batch_state"] == float(BatchState.EXECUTE) and values["control_source"] == 1.0
    assert values["reactor_temperature_setpoint_active_c"] == pytest.approx(40.0)
    assert values["batch_time_limit_hit"] == 0.0 and plant.last_batch_report is None
    limit_s = values["batch_time_limit_s"]
    assert limit_s == pytest.approx(1.5 * duration_s)  # the default: 1.5 x the recipe
    plant.advance(limit_s - duration_s)
    values = plant.values()
    assert values["batch_state"] == float(BatchState.COMPLETED) and values["control_source"] == 0.0
    assert values["batch_time_limit_hit"] == 1.0
    report = plant.last_batch_report
    assert report["time_limit_hit"] is True and report["batch_state"] == "completed"
    assert report["batch_time_h"] == pytest.approx(limit_s / 3600.0, abs=0.01)
    assert report["batch_time_limit_h"] == pytest.approx(limit_s / 3600.0)


def test_a_remote_batch_ends_on_the_supervisors_complete_after_the_recipe_time(cfg):
    plant = make_plant(cfg, step_s=10.0, shed_timeout_s=1e9)
    _remote(plant)
    duration_s = recipe_duration_min(plant.scenario.recipe, plant.scenario.initial_temperature_c) * 60.0
    plant.advance(duration_s + 1200.0)
    assert plant.state is BatchState.EXECUTE
    assert command(plant, BatchCommand.COMPLETE).accepted and plant.state is BatchState.COMPLETED
    plant.advance(10.0)
    assert plant.last_batch_report["time_limit_hit"] is False
    assert plant.values()["batch_time_limit_hit"] == 0.0


def test_the_time_limit_is_a_scenario_setting_that_binds_whoever_drives(cfg):
    scenario = dataclasses.replace(
        cfg.scenario, reactor=dataclasses.replace(ReactorSettings(), n_classes=80), max_batch_time_min=30.0
    )
    plant = Plant.from_config(cfg.plant, scenario, PlantSettings(step_s=10.0, autostart=True))
    assert plant.values()["batch_time_limit_s"] == 1800.0
    plant.advance(1790.0)
    assert plant.state is BatchState.EXECUTE  # the recipe (local) would run for over 3 h
    plant.advance(20.0)
    assert plant.state is BatchState.COMPLETED and plant.values()["batch_time_limit_hit"] == 1.0
    assert plant.last_batch_report["time_limit_hit"] is True
    command(plant, BatchCommand.RESET)  # a new batch starts with a clean record
    assert plant.values()["batch_time_limit_hit"] == 0.0


def test_reset_returns_the_remote_setpoint_to_the_charge_temperature(cfg):
    plant = make_plant(cfg, shed_timeout_s=1e9)
    command(plant, BatchCommand.START)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)
    plant.write("reactor_temperature_setpoint_c", 30.0)
    command(plant, BatchCommand.ABORT)
    command(plant, BatchCommand.RESET)
    assert plant.values()["reactor_temperature_setpoint_c"] == plant.scenario.initial_temperature_c


@pytest.mark.parametrize("name", ["batch_command", "agent_mode"])
def test_codes_outside_the_enumeration_are_rejected_even_if_the_tag_map_allows_them(cfg, name):
    tagmap = copy.deepcopy(dict(cfg.plant))
    tagmap["signals"][name]["high"] = 99
    plant = Plant.from_config(tagmap, cfg.scenario, PlantSettings(step_s=1.0))
    result = plant.write(name, 42)
    assert result.status is WriteStatus.rejected_out_of_range and "42" in result.message
    plant.advance(1.0)  # and the plant carries on
    assert plant.values()["batch_state"] == float(BatchState.IDLE)


def test_heartbeat_loss_sheds_and_latches_until_reentry(cfg):
    plant = make_plant(cfg, shed_timeout_s=30.0, shed_action=ShedAction.hold)
    command(plant, BatchCommand.START)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)
    for beat in range(2, 6):  # a live agent: heartbeat changes every 10 s
        plant.advance(10.0)
        plant.write("agent_heartbeat", beat)
    assert plant.values()["control_source"] == 1.0 and plant.values()["shed_active"] == 0.0
    plant.write("reactor_temperature_setpoint_c", 30.0)
    plant.advance(40.0)  # heartbeat silent for longer than the timeout
    values = plant.values()
    assert values["shed_active"] == 1.0 and values["control_source"] == 0.0
    held = values["reactor_temperature_setpoint_active_c"]
    plant.advance(120.0)
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(held)  # hold
    plant.write("agent_heartbeat", 99)  # heartbeat alone does not re-enter remote
    plant.advance(5.0)
    assert plant.values()["shed_active"] == 1.0
    plant.write("agent_mode", 2)  # explicit re-entry with a live heartbeat
    plant.advance(1.0)
    assert plant.values()["shed_active"] == 0.0 and plant.values()["control_source"] == 1.0


def test_shed_to_recipe_follows_the_recipe(cfg):
    plant = make_plant(cfg, shed_timeout_s=10.0, shed_action=ShedAction.recipe)
    command(plant, BatchCommand.START)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)
    plant.write("reactor_temperature_setpoint_c", plant.values()["reactor_temperature_setpoint_active_c"])
    plant.advance(30.0)
    assert plant.values()["shed_active"] == 1.0
    a = plant.values()["reactor_temperature_setpoint_active_c"]
    plant.advance(60.0)
    b = plant.values()["reactor_temperature_setpoint_active_c"]
    assert a - b == pytest.approx(0.5, abs=1e-6)  # the first recipe ramp, 0.5 K/min


@pytest.mark.parametrize("handover", ["shed", "agent_leaves_automatic"])
def test_the_recipe_takes_over_from_the_setpoint_in_force(cfg, handover):
    plant = make_plant(cfg, shed_timeout_s=30.0, shed_action=ShedAction.recipe)
    _remote(plant)
    # The agent holds 53 C while the recipe ramps to 49 C at 0.5 K/min (12 min) and holds 10 min.
    plant.write("reactor_temperature_setpoint_c", 53.0)
    for beat in range(2, 122):
        plant.advance(10.0)
        plant.write("agent_heartbeat", beat)
    if handover == "agent_leaves_automatic":
        plant.write("agent_mode", 1)
    while plant.values()["control_source"] == 1.0:
        plant.advance(1.0)
    values = plant.values()
    assert values["reactor_temperature_setpoint_active_c"] == pytest.approx(53.0, abs=0.01)  # no jump to 49 C
    assert values["shed_active"] == (1.0 if handover == "shed" else 0.0)
    a = values["reactor_temperature_setpoint_active_c"]
    plant.advance(60.0)
    assert a - plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(0.5, abs=1e-6)  # recipe's rate
    plant.advance(7 * 60.0)
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(49.0, abs=1e-6)
    # Then the rest of the 10 min hold and the 0.2 K/min ramp: that ramp begins at recipe time
    # 30 min (8 min of ramp, then the 22 - t min of hold the recipe had left), not at 22 min.
    plant.advance(35 * 60.0 - plant.values()["batch_time_s"])
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(49.0 - 5 * 0.2, abs=1e-6)
    assert plant.state is BatchState.EXECUTE


def test_batch_runs_to_completion_with_seeds_and_closes_mass(cfg):
    plant = make_plant(cfg, step_s=10.0, autostart=True)
    total0 = plant.reactor.total_solute_kg(plant.x)
    plant.advance(cfg.scenario.duration_min * 60.0)
    assert plant.state is BatchState.COMPLETED
    assert plant.seed_mass_charged_g == pytest.approx(cfg.scenario.seeding.mass_g)
    charged = total0 + plant.seed_mass_charged_g / 1000.0
    assert abs(plant.reactor.total_solute_kg(plant.x) - charged) / charged < 1e-9
    values = plant.values()
    assert values["batch_state"] == float(BatchState.COMPLETED)
    assert values["reactor_temperature_c"] == pytest.approx(cfg.scenario.recipe[-1].temperature_c, abs=0.5)


def test_a_completed_batch_reports_its_product(cfg, tmp_path):
    import json

    plant = make_plant(cfg, step_s=10.0, autostart=True, batch_report_dir=str(tmp_path))
    plant.advance(3600.0)
    assert plant.last_batch_report is None and not list(tmp_path.iterdir())
    plant.advance(cfg.scenario.duration_min * 60.0)
    report = json.loads((tmp_path / "batch_0.json").read_text())
    assert report["batch_index"] == 0 and report["batch_state"] == "completed"
    duration_h = recipe_duration_min(cfg.scenario.recipe, cfg.scenario.initial_temperature_c) / 60.0
    assert report["batch_time_h"] == pytest.approx(duration_h, abs=0.01)  # the local recipe ends it
    assert report["time_limit_hit"] is False
    assert report["d43_um"] > cfg.scenario.seeding.mean_size_um  # the seeds grew
    assert 0.5 < report["yield"] <= 1.0 and 0.0 < report["peak_sigma"] < 0.1 and 0 <= report["cv"] < 1
    csd = report["csd"]  # the final CSD travels with the file; its volume-weighted mean is d43
    sizes, fractions = np.asarray(csd["size_um"]), np.asarray(csd["volume_fraction"])
    assert fractions.sum() == pytest.approx(1.0) and (fractions >= 0).all()
    assert (sizes * fractions).sum() == pytest.approx(report["d43_um"], rel=0.02)
    # the report is of the batch at completion: later time changes nothing in it
    plant.advance(600.0)
    assert plant.last_batch_report["batch_time_h"] == report["batch_time_h"]
    # a batch that ends colder than its recipe's end (here: a recipe read as ending at 26 C) is
    # not credited with more than all the solute (against the nominal end it reads 1.25)
    import dataclasses

    warm = dataclasses.replace(cfg.scenario.recipe[-1], temperature_c=26.0)
    plant.scenario = dataclasses.replace(plant.scenario, recipe=(*cfg.scenario.recipe[:-1], warm))
    assert plant.batch_report()["yield"] <= 1.0


def test_hold_freezes_the_recipe_clock(cfg):
    plant = make_plant(cfg)
    command(plant, BatchCommand.START)
    plant.advance(60.0)
    command(plant, BatchCommand.HOLD)
    held = plant.values()["reactor_temperature_setpoint_active_c"]
    plant.advance(300.0)
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(held)
    command(plant, BatchCommand.RESUME)
    plant.advance(60.0)
    assert plant.values()["reactor_temperature_setpoint_active_c"] == pytest.approx(held - 0.5, abs=1e-6)


def test_many_short_advances_equal_one_long(cfg):
    a, b = make_plant(cfg, autostart=True), make_plant(cfg, autostart=True)
    a.advance(300.0)
    for _ in range(600):
        b.advance(0.5)
    va, vb = a.values(), b.values()
    assert va["plant_time_s"] == vb["plant_time_s"] == 300.0
    for name in va:
        assert (math.isnan(va[name]) and math.isnan(vb[name])) or va[name] == vb[name], name


def test_values_cover_the_tag_map_and_mark_bad_readings_nan(cfg):
    scenario = dataclasses.replace(
        cfg.scenario,
        reactor=dataclasses.replace(ReactorSettings(), n_classes=80),
        faults=(
            __import__("plant_sim.sensors", fromlist=["SensorFault"]).SensorFault(
                "reactor_temperature_c", "nan", 10.0, 100.0
            ),
        ),
    )
    plant = Plant.from_config(cfg.plant, scenario, PlantSettings(autostart=True))
    plant.advance(50.0)
    values = plant.values()
    assert set(values) == {s.name for s in plant.tagmap}
    assert math.isnan(values["reactor_temperature_c"])
    assert np.isfinite(values["concentration_g_per_kg"])
    assert values["facet_1_hkl"] == 100.0


def test_tag_map_with_a_signal_the_plant_does_not_make_is_refused(cfg):
    tagmap = dict(cfg.plant)
    signals = dict(tagmap["signals"])
    extra = dict(signals["reactor_temperature_c"])
    extra["modbus"] = dict(extra["modbus"], address=200)
    extra["opcua_node"] = "R101.Bogus"
    signals["bogus_pressure_bar"] = extra
    tagmap["signals"] = signals
    with pytest.raises(TagMapError, match="bogus_pressure_bar"):
        Plant.from_config(tagmap, cfg.scenario)


# --- TIC-101 on the measured temperature ----------------------------------------------------


def _rtd_run(cfg, *faults: SensorFault, until_s: float = 4199.0) -> tuple[Plant, list[tuple[float, float, float]]]:
    """The default batch with TT-101 faults, local recipe: (setpoint, true, measured) each minute
    from 50 min (the 0.2 K/min ramp) to ``until_s``."""
    reactor = dataclasses.replace(ReactorSettings(), n_classes=80)
    scenario = dataclasses.replace(cfg.scenario, reactor=reactor, faults=faults)
    plant = Plant.from_config(cfg.plant, scenario, PlantSettings(autostart=True))
    plant.advance(3000.0)
    rows = []
    while plant.plant_time_s < until_s:
        plant.advance(min(60.0, until_s - plant.plant_time_s))
        v = plant.values()
        true_c = float(plant.x[plant.reactor.n + 1])
        rows.append((v["reactor_temperature_setpoint_active_c"], true_c, v["reactor_temperature_c"]))
    return plant, rows


def test_a_stuck_rtd_reading_high_makes_the_loop_cool_the_true_reactor_further(cfg):
    _, clean = _rtd_run(cfg)
    _, stuck = _rtd_run(cfg, SensorFault("reactor_temperature_c", "stuck", 3000.0, 4200.0))
    setpoint, true_c, measured = stuck[-1]
    assert measured == stuck[0][2] and measured > setpoint + 3.0  # frozen above the falling setpoint
    assert true_c < setpoint - 3.0  # the loop drives the real reactor away from its setpoint
    assert true_c < clean[-1][1] - 3.0
    assert all(abs(sp - t) < 0.1 for sp, t, _ in clean)


def test_a_drifting_rtd_offsets_the_true_temperature_by_the_drift(cfg):
    # +0.1 K/min for 20 min: the loop keeps the reading on the setpoint, the reactor 2 K colder.
    _, drift = _rtd_run(cfg, SensorFault("reactor_temperature_c", "drift", 3000.0, 4200.0, magnitude=0.1))
    setpoint, true_c, measured = drift[-1]
    assert abs(measured - setpoint) < 0.5
    assert setpoint - true_c == pytest.approx(2.0, abs=0.5)


def test_a_bad_rtd_reading_puts_the_loop_in_manual_holding_its_output(cfg):
    plant, _ = _rtd_run(cfg, SensorFault("reactor_temperature_c", "nan", 3000.0, 3600.0), until_s=3100.0)
    assert math.isnan(plant.values()["reactor_temperature_c"])
    held = plant.last_step.jacket_inlet_temperature_c
    plant.advance(300.0)  # the setpoint ramps on, the output stays
    assert plant.last_step.jacket_inlet_temperature_c == held
    plant.advance(1200.0)  # the reading is back: the loop closes again
    assert abs(float(plant.x[plant.reactor.n + 1]) - plant.values()["reactor_temperature_setpoint_active_c"]) < 0.2


# --- the jacket constraint ------------------------------------------------------------------


def test_fouling_saturates_the_jacket_late_in_the_ramp():
    cfg = load_config(["scenario=fouling"])
    scenario = dataclasses.replace(cfg.scenario, reactor=dataclasses.replace(cfg.scenario.reactor, n_classes=80))
    plant = Plant.from_config(cfg.plant, scenario, PlantSettings(step_s=10.0, autostart=True))
    rec = plant.advance(cfg.scenario.duration_min * 60.0, record=True)
    t_min = rec["plant_time_s"] / 60.0
    saturated = rec["jacket_saturated"] == 1.0
    assert saturated.sum() * 10.0 >= 10 * 60.0 and t_min[saturated].min() > 120.0  # late, for a while
    floor_c = scenario.reactor.jacket_inlet_min_c
    assert np.all(rec["jacket_inlet_temperature_c"][saturated] < floor_c + 0.3)  # TT-103 at the floor
    lag = rec["true_reactor_temperature_c"] - rec["reactor_temperature_setpoint_active_c"]
    assert lag[saturated].max() > 0.5  # the reactor cannot follow its setpoint
    clean_wall = dataclasses.replace(scenario, fouling=dataclasses.replace(scenario.fouling, resistance_m2k_per_w_per_h=0))
    clean = Plant.from_config(cfg.plant, clean_wall, PlantSettings(step_s=10.0, autostart=True))
    assert not np.any(clean.advance(cfg.scenario.duration_min * 60.0, record=True)["jacket_saturated"])
