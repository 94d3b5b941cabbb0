"""The guard: examples of every rule, and properties that hold whatever the proposer returns."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.guard import GuardInput, GuardSettings, Mode, Reason, SetpointLimits, decide

TEMP = SetpointLimits("reactor_temperature_setpoint_c", 5.0, 80.0, 2.0)
ANTI = SetpointLimits("antisolvent_rate_setpoint_kg_per_min", 0.0, 0.5, 0.05)
LOCKED = SetpointLimits("jacket_valve_position", 0.0, 100.0, 10.0, writable=False)
SETTINGS = GuardSettings((TEMP, ANTI, LOCKED), max_proposal_age_s=60.0, max_uncertainty=0.3, max_step_interval_s=30.0)
CURRENT = {TEMP.name: 40.0, ANTI.name: 0.1, LOCKED.name: 50.0}


def auto(**kw) -> GuardInput:
    base = dict(mode=Mode.automatic, previous_mode=Mode.automatic, plant_time_s=1000.0, current=CURRENT,
                proposal={TEMP.name: 39.8, ANTI.name: 0.1}, proposal_time_s=995.0, last_write_time_s=990.0)
    base.update(kw)
    return GuardInput(**base)


def test_a_good_proposal_passes_untouched():
    v = decide(auto(), SETTINGS)
    assert v.write == {TEMP.name: 39.8, ANTI.name: 0.1} and v.heartbeat and v.reasons == (Reason.ok,)


@pytest.mark.parametrize("mode, reason", [(Mode.manual, Reason.manual), (Mode.advisory, Reason.advisory)])
def test_nothing_is_written_outside_automatic(mode, reason):
    v = decide(auto(mode=mode), SETTINGS)
    assert v.write == {} and not v.heartbeat and v.reasons == (reason,)


def test_bumpless_entry_writes_the_current_setpoints():
    v = decide(auto(previous_mode=Mode.advisory, proposal={TEMP.name: 20.0}), SETTINGS)
    assert v.write == {TEMP.name: 40.0, ANTI.name: 0.1} and v.held and Reason.bumpless_entry in v.reasons


def test_a_shed_plant_gets_nothing_and_an_idle_batch_only_the_heartbeat():
    assert decide(auto(plant_shed=True), SETTINGS) == decide(auto(plant_shed=True), SETTINGS)
    shed = decide(auto(plant_shed=True), SETTINGS)
    assert shed.write == {} and not shed.heartbeat and shed.reasons == (Reason.plant_shed,)
    idle = decide(auto(plant_executing=False), SETTINGS)
    assert idle.write == {} and idle.heartbeat and idle.reasons == (Reason.not_executing,)


@pytest.mark.parametrize("change, reason", [
    (dict(data_ok=False), Reason.data_bad),
    (dict(model_ok=False), Reason.model_failed),
    (dict(uncertainty=0.31), Reason.uncertainty_high),
    (dict(uncertainty=math.nan), Reason.uncertainty_high),
    (dict(proposal=None), Reason.proposal_missing),
    (dict(proposal_time_s=900.0), Reason.proposal_stale),
    (dict(proposal_time_s=None), Reason.proposal_stale),
    (dict(proposal={TEMP.name: math.inf}), Reason.proposal_not_finite),
])
def test_bad_inputs_hold_the_current_setpoints(change, reason):
    v = decide(auto(**change), SETTINGS)
    assert v.held and v.heartbeat and reason in v.reasons
    assert v.write == {TEMP.name: 40.0, ANTI.name: 0.1}


def test_clamp_then_rate_limit():
    v = decide(auto(proposal={TEMP.name: -50.0, ANTI.name: 0.1}, last_write_time_s=995.0), SETTINGS)
    # 5 s since the last write at 2 K/min: at most 1/6 K of movement
    assert v.write[TEMP.name] == pytest.approx(40.0 - 2.0 * 5.0 / 60.0)
    assert Reason.clamped in v.reasons and Reason.rate_limited in v.reasons


def test_unknown_and_read_only_tags_are_never_written():
    v = decide(auto(proposal={TEMP.name: 39.9, LOCKED.name: 0.0, "safety_interlock": 1.0}), SETTINGS)
    assert set(v.write) == {TEMP.name, ANTI.name} and Reason.not_writable in v.reasons


def test_an_unreadable_current_setpoint_is_not_written():
    v = decide(auto(current={**CURRENT, TEMP.name: math.nan}), SETTINGS)
    assert TEMP.name not in v.write and Reason.setpoint_unknown in v.reasons


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        SetpointLimits("x", 10.0, 5.0, 1.0)
    with pytest.raises(ValueError):
        SetpointLimits("x", 0.0, 5.0, math.nan)
    with pytest.raises(ValueError, match="twice"):
        GuardSettings((TEMP, TEMP))


# ----------------------------------------------------------------------------- properties
# Mostly plausible inputs with hostile values mixed in, so that every rule, including the
# path that follows a proposal, is exercised often.
anything = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(1e300), st.just(-1e300),
                     st.integers(-10**6, 10**6))
plausible = st.floats(-100.0, 200.0)
value = st.one_of(plausible, plausible, plausible, anything)
keys = st.sampled_from([TEMP.name, TEMP.name, ANTI.name, ANTI.name, LOCKED.name, "safety_interlock"])
proposals = st.one_of(st.none(), st.dictionaries(keys, value, min_size=1, max_size=4),
                      st.dictionaries(keys, value, min_size=1, max_size=4))
ages = st.one_of(st.floats(0.0, 60.0), st.floats(0.0, 60.0), st.none(), anything)
mostly = lambda common, rare: st.sampled_from([common] * 7 + [rare])  # noqa: E731


@settings(max_examples=3000, deadline=None)
@given(
    mode=st.sampled_from([Mode.automatic] * 4 + [Mode.manual, Mode.advisory]),
    previous=mostly(Mode.automatic, Mode.manual), proposal=proposals, age=ages,
    since_write=st.one_of(st.floats(0.0, 120.0), st.none(), anything), plant_time=st.floats(0.0, 1e6),
    current_temp=value, current_anti=value, data_ok=mostly(True, False), model_ok=mostly(True, False),
    uncertainty=st.one_of(st.floats(0.0, 0.3), st.floats(0.0, 0.3), anything), shed=mostly(False, True),
    executing=mostly(True, False),
)
def test_whatever_comes_in_what_is_written_is_safe(mode, previous, proposal, age, since_write, plant_time,
                                                   current_temp, current_anti, data_ok, model_ok, uncertainty,
                                                   shed, executing):
    current = {TEMP.name: current_temp, ANTI.name: current_anti, LOCKED.name: 50.0}
    proposal_time = None if age is None else plant_time - age
    last_write = None if since_write is None else plant_time - since_write
    inp = GuardInput(mode, previous, plant_time, current, proposal, proposal_time, last_write, data_ok, model_ok,
                     uncertainty, shed, executing)
    v = decide(inp, SETTINGS)
    assert v.reasons  # every verdict says why
    if mode is not Mode.automatic or shed:
        assert v.write == {} and not v.heartbeat
        return
    assert v.heartbeat and set(v.write) <= {TEMP.name, ANTI.name}  # writable setpoints only
    if not executing:
        assert v.write == {}
    limits = {TEMP.name: TEMP, ANTI.name: ANTI}
    since = plant_time - last_write if last_write is not None and math.isfinite(last_write) else 30.0
    dt = min(max(since, 0.0), 30.0) if math.isfinite(since) else 30.0
    for name, written in v.write.items():
        s = limits[name]
        assert math.isfinite(written) and s.low <= written <= s.high
        start = min(max(float(current[name]), s.low), s.high)
        assert abs(written - start) <= s.max_rate_per_min * dt / 60.0 + 1e-9
        if not v.held and proposal is not None and name in proposal:
            target = min(max(float(proposal[name]), s.low), s.high)
            assert abs(written - target) <= abs(start - target) + 1e-9  # never moves away from the target


def test_a_far_target_moves_one_rate_step_per_cycle():
    v = decide(auto(proposal={TEMP.name: 10.0, ANTI.name: 0.1}, last_write_time_s=999.0), SETTINGS)
    assert not v.held and v.write[TEMP.name] == pytest.approx(40.0 - 2.0 / 60.0)
