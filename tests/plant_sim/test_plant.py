"""The plant's DCS layer: batch state machine, write protection, rate limits, shedding."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest

from conf.schema import load_config
from plant_sim.plant import BatchCommand, BatchState, Plant, PlantSettings, ShedAction, WriteStatus
from plant_sim.reactor import ReactorSettings
from plant_sim.scenarios import recipe_duration_min
from plant_sim.tagmap import TagMapError


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


def test_a_batch_under_remote_control_completes_on_its_recipe_time(cfg):
    plant = make_plant(cfg, shed_timeout_s=1e9)
    command(plant, BatchCommand.START)
    plant.write("agent_heartbeat", 1)
    plant.write("agent_mode", 2)
    duration_s = recipe_duration_min(plant.scenario.recipe, plant.scenario.initial_temperature_c) * 60.0
    plant.advance(duration_s - 120.0)
    assert plant.values()["batch_state"] == float(BatchState.EXECUTE)
    assert plant.values()["control_source"] == 1.0
    plant.advance(240.0)
    assert plant.values()["batch_state"] == float(BatchState.COMPLETED)
    assert plant.values()["control_source"] == 0.0


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
    assert report["batch_time_h"] == pytest.approx(duration_h, abs=0.01)
    assert report["d43_um"] > cfg.scenario.seeding.mean_size_um  # the seeds grew
    assert 0.5 < report["yield"] <= 1.0 and 0.0 < report["peak_sigma"] < 0.1 and 0 <= report["cv"] < 1
    csd = report["csd"]  # the final CSD travels with the file; its volume-weighted mean is d43
    sizes, fractions = np.asarray(csd["size_um"]), np.asarray(csd["volume_fraction"])
    assert fractions.sum() == pytest.approx(1.0) and (fractions >= 0).all()
    assert (sizes * fractions).sum() == pytest.approx(report["d43_um"], rel=0.02)
    # the report is of the batch at completion: later time changes nothing in it
    plant.advance(600.0)
    assert plant.last_batch_report["batch_time_h"] == report["batch_time_h"]


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
