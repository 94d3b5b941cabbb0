"""The guard: examples of every rule, and properties that hold whatever the proposer returns."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.guard import (BatchRequest, Envelope, GuardInput, GuardSettings, HoldAction, Mode, Reason,
                              SetpointEnvelope, SetpointLimits, SigmaAction, decide)

TEMP = SetpointLimits("reactor_temperature_setpoint_c", 5.0, 80.0, 2.0)
ANTI = SetpointLimits("antisolvent_rate_setpoint_kg_per_min", 0.0, 0.5, 0.05)
LOCKED = SetpointLimits("jacket_valve_position", 0.0, 100.0, 10.0, writable=False)
SETTINGS = GuardSettings((TEMP, ANTI, LOCKED), max_proposal_age_s=60.0, max_uncertainty=0.3, max_step_interval_s=30.0)
CURRENT = {TEMP.name: 40.0, ANTI.name: 0.1, LOCKED.name: 50.0}

# A cooling-only temperature, an antisolvent feed that ramps down on a hold, and an envelope.
COOL = dataclasses.replace(TEMP, may_increase=False)
FEED = dataclasses.replace(ANTI, on_hold=HoldAction.ramp_to_low)
ENVELOPE = Envelope((SetpointEnvelope(TEMP.name, band_below=3.0, band_above=1.0, max_rate_per_min=1.0,
                                      on_sigma_ceiling=SigmaAction.no_decrease),
                     SetpointEnvelope(ANTI.name, max_rate_per_min=0.02, on_sigma_ceiling=SigmaAction.ramp_to_low)),
                    max_measured_sigma=0.5)
RICH = dataclasses.replace(SETTINGS, setpoints=(COOL, FEED, LOCKED), envelope=ENVELOPE, max_model_age_s=300.0,
                           batch_command_writable=True)


def auto(**kw) -> GuardInput:
    base = dict(mode=Mode.automatic, previous_mode=Mode.automatic, plant_time_s=1000.0, current=CURRENT,
                proposal={TEMP.name: 39.8, ANTI.name: 0.1}, proposal_time_s=995.0, last_write_time_s=990.0)
    base.update(kw)
    return GuardInput(**base)


def with_limits(*limits: SetpointLimits, **kw) -> GuardSettings:
    return dataclasses.replace(SETTINGS, setpoints=limits, **kw)


def test_a_good_proposal_passes_untouched():
    v = decide(auto(), SETTINGS)
    assert v.write == {TEMP.name: 39.8, ANTI.name: 0.1} and v.heartbeat and v.reasons == (Reason.ok,)
    assert not v.request_remote and v.batch_command is None
    assert decide(auto(last_write_time_s=980.0), RICH).write == v.write  # inside the envelope: unchanged


@pytest.mark.parametrize("mode, reason", [(Mode.manual, Reason.manual), (Mode.advisory, Reason.advisory)])
def test_nothing_is_written_outside_automatic(mode, reason):
    v = decide(auto(mode=mode, plant_shed=True, remote_active=False), RICH)
    assert v.write == {} and not v.heartbeat and not v.request_remote and v.reasons == (reason,)


def test_bumpless_entry_writes_the_current_setpoints():
    v = decide(auto(previous_mode=Mode.advisory, proposal={TEMP.name: 20.0}), SETTINGS)
    assert v.write == {TEMP.name: 40.0, ANTI.name: 0.1} and v.held and v.reasons == (Reason.bumpless_entry,)
    # unchanged even for a setpoint that ramps down on a hold: entering is not a hold
    assert decide(auto(previous_mode=Mode.manual), RICH).write == {TEMP.name: 40.0, ANTI.name: 0.1}


def test_bumpless_entry_on_bad_data_takes_the_hold_actions():
    v = decide(auto(previous_mode=Mode.manual, data_ok=False), RICH)
    assert v.held and {Reason.bumpless_entry, Reason.data_bad, Reason.ramp_to_low} <= set(v.reasons)
    assert v.write[TEMP.name] == 40.0 and v.write[ANTI.name] < 0.1


def test_a_shed_plant_is_asked_to_re_enter_and_an_idle_batch_gets_only_the_heartbeat():
    shed = decide(auto(plant_shed=True), SETTINGS)
    assert shed.write == {} and shed.heartbeat and shed.request_remote
    assert shed.reasons == (Reason.plant_shed, Reason.automatic_pending)
    assert decide(auto(plant_shed=True, plant_executing=False), SETTINGS).request_remote  # the latch clears anyway
    idle = decide(auto(plant_executing=False), SETTINGS)
    assert idle.write == {} and idle.heartbeat and not idle.request_remote and idle.reasons == (Reason.not_executing,)
    # the plant not showing the cascade of an idle batch is normal: no request
    assert decide(auto(plant_executing=False, remote_active=False), SETTINGS) == idle


def test_an_executing_batch_without_the_remote_cascade_is_pending():
    v = decide(auto(remote_active=False, previous_remote_active=True), SETTINGS)
    assert v.write == {} and v.heartbeat and v.request_remote and v.reasons == (Reason.automatic_pending,)


def test_re_entry_after_a_shed_is_bumpless_once_the_cascade_is_back():
    pending = auto(plant_shed=True, remote_active=False, previous_remote_active=True, proposal={TEMP.name: 30.0})
    assert decide(pending, SETTINGS).request_remote
    first = decide(dataclasses.replace(pending, plant_shed=False, remote_active=True, previous_remote_active=False),
                   SETTINGS)
    assert first.held and first.reasons == (Reason.bumpless_entry,) and first.write[TEMP.name] == 40.0
    then = decide(dataclasses.replace(pending, plant_shed=False, remote_active=True, previous_remote_active=True),
                  SETTINGS)
    assert not then.held and then.write[TEMP.name] < 40.0 and not then.request_remote
    # a plant that does not report the cascade keeps the old behaviour
    assert decide(auto(remote_active=None, previous_remote_active=None), SETTINGS) == decide(auto(), SETTINGS)


HOLDS = [
    (dict(data_ok=False), Reason.data_bad),
    (dict(model_ok=False), Reason.model_failed),
    (dict(model_age_s=301.0), Reason.model_stale),
    (dict(model_age_s=math.inf), Reason.model_stale),
    (dict(model_age_s=math.nan), Reason.model_stale),
    (dict(uncertainty=0.31), Reason.uncertainty_high),
    (dict(uncertainty=math.nan), Reason.uncertainty_high),
    (dict(proposal=None), Reason.proposal_missing),
    (dict(proposal_time_s=900.0), Reason.proposal_stale),
    (dict(proposal_time_s=None), Reason.proposal_stale),
    (dict(proposal={TEMP.name: math.inf}), Reason.proposal_not_finite),
]


@pytest.mark.parametrize("change, reason", HOLDS)
def test_bad_inputs_hold_the_current_setpoints(change, reason):
    v = decide(auto(**change), with_limits(TEMP, ANTI, max_model_age_s=300.0))
    assert v.held and v.heartbeat and reason in v.reasons
    assert v.write == {TEMP.name: 40.0, ANTI.name: 0.1}


@pytest.mark.parametrize("change, reason", HOLDS)
def test_every_hold_ramps_an_antisolvent_feed_down_at_its_rate(change, reason):
    v = decide(auto(last_write_time_s=994.0, **change), with_limits(TEMP, FEED, max_model_age_s=300.0))
    assert v.held and {reason, Reason.ramp_to_low} <= set(v.reasons)
    # 6 s at 0.05 kg/min/min: 0.005 kg/min down; the temperature stays
    assert v.write == {TEMP.name: 40.0, ANTI.name: pytest.approx(0.1 - 0.005)}


def test_a_ramp_to_low_stops_at_low():
    v = decide(auto(proposal=None, current={**CURRENT, ANTI.name: 0.001}), with_limits(TEMP, FEED))
    assert v.write[ANTI.name] == 0.0
    at_low = decide(auto(proposal=None, current={**CURRENT, ANTI.name: 0.0}), with_limits(TEMP, FEED))
    assert at_low.write[ANTI.name] == 0.0 and Reason.ramp_to_low not in at_low.reasons


def test_the_model_age_rule_is_off_by_default():
    assert decide(auto(model_age_s=math.inf), SETTINGS).reasons == (Reason.ok,)
    assert decide(auto(model_age_s=299.0, last_write_time_s=980.0), RICH).reasons == (Reason.ok,)


def test_a_current_value_outside_the_limits_is_neither_stepped_in_nor_followed_out():
    # Clamping 95 C to the 80 C limit would be a 15 K step; walking back at the rate would write
    # outside the limits. The guard leaves that setpoint to the plant and says why.
    for proposal in (None, {TEMP.name: 60.0}):
        v = decide(auto(proposal=proposal, current={**CURRENT, TEMP.name: 95.0}), SETTINGS)
        assert TEMP.name not in v.write and Reason.setpoint_out_of_limits in v.reasons
        assert v.write[ANTI.name] == pytest.approx(0.1)  # the others carry on
    assert decide(auto(current={**CURRENT, TEMP.name: 80.0}), SETTINGS).write[TEMP.name] <= 80.0


def test_clamp_then_rate_limit():
    v = decide(auto(proposal={TEMP.name: -50.0, ANTI.name: 0.1}, last_write_time_s=995.0), SETTINGS)
    # 5 s since the last write at 2 K/min: at most 1/6 K of movement
    assert v.write[TEMP.name] == pytest.approx(40.0 - 2.0 * 5.0 / 60.0)
    assert Reason.clamped in v.reasons and Reason.rate_limited in v.reasons


def test_a_far_target_moves_one_rate_step_per_cycle():
    v = decide(auto(proposal={TEMP.name: 10.0, ANTI.name: 0.1}, last_write_time_s=999.0), SETTINGS)
    assert not v.held and v.write[TEMP.name] == pytest.approx(40.0 - 2.0 / 60.0)


def test_a_cooling_only_setpoint_never_goes_up_without_a_heating_permit():
    up = auto(proposal={TEMP.name: 41.0, ANTI.name: 0.1}, last_write_time_s=999.0)
    v = decide(up, with_limits(COOL, ANTI))
    assert v.write[TEMP.name] == 40.0 and Reason.direction in v.reasons
    heat = decide(dataclasses.replace(up, heating_permitted=True), with_limits(COOL, ANTI))
    assert heat.write[TEMP.name] == pytest.approx(40.0 + 2.0 / 60.0) and Reason.direction not in heat.reasons
    down = decide(auto(proposal={TEMP.name: 39.9}), with_limits(COOL, ANTI))
    assert down.write[TEMP.name] == 39.9 and down.reasons == (Reason.ok,)


def test_a_setpoint_that_may_not_decrease_never_goes_down():
    no_down = dataclasses.replace(ANTI, may_decrease=False)
    v = decide(auto(proposal={ANTI.name: 0.05}), with_limits(TEMP, no_down))
    assert v.write[ANTI.name] == 0.1 and Reason.direction in v.reasons
    assert decide(auto(proposal={ANTI.name: 0.12}, last_write_time_s=970.0),
                  with_limits(TEMP, no_down)).write[ANTI.name] == 0.12


def test_a_proposal_is_clamped_into_the_envelope_band_around_the_reference():
    ref = {TEMP.name: 41.0, ANTI.name: 0.3}
    v = decide(auto(proposal={TEMP.name: 37.0, ANTI.name: 0.1}, reference=ref, current={**CURRENT, TEMP.name: 38.5},
                    last_write_time_s=None), RICH)
    # band 41 - 3 .. 41 + 1; the antisolvent has no band
    assert v.write == {TEMP.name: 38.0, ANTI.name: 0.1} and Reason.envelope_band in v.reasons
    # no reference, or none for this setpoint, or not finite: no band
    for reference in (None, {ANTI.name: 0.3}, {TEMP.name: math.nan}):
        w = decide(auto(proposal={TEMP.name: 39.8}, reference=reference, last_write_time_s=980.0), RICH)
        assert w.write[TEMP.name] == 39.8 and Reason.envelope_band not in w.reasons


def test_the_limits_win_over_the_envelope_band():
    v = decide(auto(proposal={TEMP.name: 6.0}, reference={TEMP.name: 0.0}, current={**CURRENT, TEMP.name: 5.1}),
               RICH)
    assert v.write[TEMP.name] == 5.0 and {Reason.envelope_band, Reason.clamped} <= set(v.reasons)


def test_the_envelope_rate_is_tighter_than_the_tag_rate():
    v = decide(auto(proposal={TEMP.name: 30.0, ANTI.name: 0.0}, last_write_time_s=994.0), RICH)
    # 6 s: 1 K/min and 0.02 kg/min/min instead of the tag's 2 and 0.05
    assert v.write == {TEMP.name: pytest.approx(39.9), ANTI.name: pytest.approx(0.098)}
    assert Reason.envelope_rate in v.reasons and Reason.rate_limited not in v.reasons


def test_above_the_supersaturation_ceiling_cooling_stops_and_antisolvent_ramps_down():
    proposal = {TEMP.name: 39.5, ANTI.name: 0.2}
    v = decide(auto(proposal=proposal, measured_sigma=0.6, last_write_time_s=994.0), RICH)
    assert v.write == {TEMP.name: 40.0, ANTI.name: pytest.approx(0.098)} and Reason.sigma_ceiling in v.reasons
    heat = decide(auto(proposal={TEMP.name: 40.5}, measured_sigma=0.6, heating_permitted=True, last_write_time_s=970.0),
                  RICH)
    assert heat.write[TEMP.name] == 40.5  # warming lowers the supersaturation: allowed
    for sigma in (0.5, math.nan):  # at the ceiling, or not measured
        w = decide(auto(proposal=proposal, measured_sigma=sigma, last_write_time_s=999.9), RICH)
        assert Reason.sigma_ceiling not in w.reasons and w.write[TEMP.name] < 40.0


@pytest.mark.parametrize("change, granted, reason", [
    (dict(plant_executing=False, batch_request=BatchRequest.start), True, Reason.batch_request),
    (dict(batch_request=BatchRequest.complete), True, Reason.batch_request),
    (dict(batch_request=BatchRequest.start), False, Reason.batch_request_refused),
    (dict(plant_executing=False, batch_request=BatchRequest.complete), False, Reason.batch_request_refused),
    (dict(batch_request=BatchRequest.complete, data_ok=False), False, Reason.batch_request_refused),
    (dict(batch_request=BatchRequest.complete, previous_mode=Mode.manual), False, Reason.batch_request_refused),
    (dict(batch_request=BatchRequest.complete, remote_active=False), False, Reason.batch_request_refused),
    (dict(plant_executing=False, batch_request=BatchRequest.start, plant_shed=True), False,
     Reason.batch_request_refused),
    (dict(plant_executing=False, batch_request=BatchRequest.start, mode=Mode.advisory), False,
     Reason.batch_request_refused),
    (dict(plant_executing=False, batch_request=BatchRequest.start, batch_permissive=False), False,
     Reason.no_permissive),
])
def test_batch_requests_go_through_the_guard(change, granted, reason):
    v = decide(auto(**change), RICH)
    assert (v.batch_command is change["batch_request"]) if granted else v.batch_command is None
    assert reason in v.reasons


def test_batch_requests_need_a_writable_batch_command_tag():
    v = decide(auto(plant_executing=False, batch_request=BatchRequest.start), SETTINGS)
    assert v.batch_command is None and Reason.not_writable in v.reasons
    assert decide(auto(plant_executing=False), RICH).reasons == (Reason.not_executing,)  # no request, no reason


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
    with pytest.raises(ValueError, match="on_hold must be one of"):
        SetpointLimits("x", 0.0, 5.0, 1.0, on_hold="drain")
    with pytest.raises(ValueError, match="needs may_decrease"):
        SetpointLimits("x", 0.0, 5.0, 1.0, on_hold=HoldAction.ramp_to_low, may_decrease=False)
    with pytest.raises(ValueError, match="max_model_age_s"):
        GuardSettings((TEMP,), max_model_age_s=math.nan)
    assert SetpointLimits("x", 0.0, 5.0, 1.0, on_hold="ramp_to_low").on_hold is HoldAction.ramp_to_low  # from config


@pytest.mark.parametrize("make, match", [
    (lambda: SetpointEnvelope(TEMP.name, band_below=math.nan), "band_below must be a number >= 0"),
    (lambda: SetpointEnvelope(TEMP.name, band_above=-1.0), "band_above must be a number >= 0"),
    (lambda: SetpointEnvelope(TEMP.name, max_rate_per_min="fast"), "max_rate_per_min must be a number"),
    (lambda: SetpointEnvelope(TEMP.name, on_sigma_ceiling="freeze"), "on_sigma_ceiling must be one of"),
    (lambda: SetpointEnvelope(""), "non-empty"),
    (lambda: Envelope((SetpointEnvelope(TEMP.name), SetpointEnvelope(TEMP.name))), "twice"),
    (lambda: Envelope(max_measured_sigma=math.nan), "max_measured_sigma must be a number"),
    (lambda: Envelope((SetpointEnvelope(TEMP.name),), max_measured_sigma=0.4), "no setpoint has an on_sigma"),
    (lambda: with_limits(TEMP, envelope=Envelope((SetpointEnvelope("stirrer_rpm"),))), "not a guarded setpoint"),
    (lambda: with_limits(TEMP, envelope=Envelope((SetpointEnvelope(TEMP.name, max_rate_per_min=3.0),))),
     "exceeds the tag's"),
    (lambda: with_limits(dataclasses.replace(ANTI, may_decrease=False), envelope=Envelope(
        (SetpointEnvelope(ANTI.name, on_sigma_ceiling=SigmaAction.ramp_to_low),), max_measured_sigma=1.0)),
     "needs may_decrease"),
    (lambda: with_limits(TEMP, envelope={"max_measured_sigma": 1.0}), "must be an Envelope"),
])
def test_bad_envelopes_are_refused_with_a_clear_message(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_an_envelope_from_config_reads_lists_and_strings():
    e = Envelope([SetpointEnvelope(TEMP.name, on_sigma_ceiling="no_decrease")], max_measured_sigma=0.5)
    assert e.setpoints[0].on_sigma_ceiling is SigmaAction.no_decrease and isinstance(e.setpoints, tuple)


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
optional_bool = st.sampled_from([None, True, True, True, False])


@settings(max_examples=3000, deadline=None)
@given(
    guard=st.sampled_from([SETTINGS, RICH, RICH]),
    mode=st.sampled_from([Mode.automatic] * 4 + [Mode.manual, Mode.advisory]),
    previous=mostly(Mode.automatic, Mode.manual), proposal=proposals, age=ages,
    since_write=st.one_of(st.floats(0.0, 120.0), st.none(), anything), plant_time=st.floats(0.0, 1e6),
    current_temp=value, current_anti=value, data_ok=mostly(True, False), model_ok=mostly(True, False),
    uncertainty=st.one_of(st.floats(0.0, 0.3), st.floats(0.0, 0.3), anything), shed=mostly(False, True),
    executing=mostly(True, False), heating=mostly(False, True),
    reference=st.one_of(st.none(), st.dictionaries(keys, value, max_size=3)),
    sigma=st.one_of(st.floats(0.0, 0.5), st.floats(0.5, 1.0, exclude_min=True), st.just(math.nan), anything),
    model_age=st.one_of(st.floats(0.0, 300.0), st.floats(0.0, 300.0), anything),
    remote=optional_bool, previous_remote=optional_bool,
    batch=st.sampled_from([None, None, BatchRequest.start, BatchRequest.complete]), permissive=mostly(True, False),
)
def test_whatever_comes_in_what_is_written_is_safe(guard, mode, previous, proposal, age, since_write, plant_time,
                                                   current_temp, current_anti, data_ok, model_ok, uncertainty,
                                                   shed, executing, heating, reference, sigma, model_age, remote,
                                                   previous_remote, batch, permissive):
    current = {TEMP.name: current_temp, ANTI.name: current_anti, LOCKED.name: 50.0}
    proposal_time = None if age is None else plant_time - age
    last_write = None if since_write is None else plant_time - since_write
    inp = GuardInput(mode, previous, plant_time, current, proposal, proposal_time, last_write, data_ok, model_ok,
                     uncertainty, shed, executing, heating, reference, sigma, model_age, remote, previous_remote,
                     batch, permissive)
    v = decide(inp, guard)
    assert v.reasons  # every verdict says why
    if v.batch_command is not None:  # only in automatic, with the permissive, the tag and no shed
        assert mode is Mode.automatic and permissive and guard.batch_command_writable and not shed
        assert v.batch_command is batch and (executing if batch is BatchRequest.complete else not executing)
        assert not v.held if batch is BatchRequest.complete else True
    if mode is not Mode.automatic:
        assert v.write == {} and not v.heartbeat and not v.request_remote
        return
    assert v.heartbeat and set(v.write) <= {TEMP.name, ANTI.name}  # writable setpoints only
    assert v.request_remote == (shed or (remote is False and executing))
    if v.request_remote or not executing:
        assert v.write == {} and v.batch_command is not BatchRequest.complete
    if v.write and not v.held:  # follows a proposal only on good inputs
        assert data_ok and model_ok and proposal is not None and uncertainty <= guard.max_uncertainty
        assert model_age <= guard.max_model_age_s and -1e-9 <= plant_time - proposal_time <= guard.max_proposal_age_s
    limits = {s.name: s for s in guard.setpoints}
    since = plant_time - last_write if last_write is not None and math.isfinite(last_write) else 30.0
    dt = min(max(since, 0.0), 30.0) if math.isfinite(since) else 30.0
    sigma_high = isinstance(sigma, float) and sigma > guard.envelope.max_measured_sigma
    for name, written in v.write.items():
        s, e = limits[name], guard.envelope.get(name)
        assert math.isfinite(written) and s.low <= written <= s.high
        start = min(max(float(current[name]), s.low), s.high)
        assert abs(written - start) <= min(s.max_rate_per_min, e.max_rate_per_min) * dt / 60.0 + 1e-9
        if v.held and s.on_hold is HoldAction.ramp_to_low:
            assert written <= start  # a hold never feeds more
        if not s.may_increase and not heating:
            assert written <= start
        if sigma_high and e.on_sigma_ceiling is SigmaAction.no_decrease:
            assert written >= start
        if sigma_high and e.on_sigma_ceiling is SigmaAction.ramp_to_low:
            assert written <= start
        elif not v.held and proposal is not None and name in proposal:
            target = float(proposal[name])
            ref = (reference or {}).get(name)
            if ref is not None and math.isfinite(float(ref)):
                target = min(max(target, float(ref) - e.band_below), float(ref) + e.band_above)
            target = min(max(target, s.low), s.high)
            assert abs(written - target) <= abs(start - target) + 1e-9  # never moves away from the target


def test_a_hold_that_lasts_max_hold_s_hands_the_loop_back_to_the_dcs():
    guard = dataclasses.replace(SETTINGS, max_hold_s=600.0)
    still = decide(auto(data_ok=False, held_for_s=599.0), guard)
    assert still.held and not still.hand_back and still.heartbeat and still.write
    back = decide(auto(data_ok=False, held_for_s=600.0), guard)
    assert back.hand_back and Reason.handed_back in back.reasons and Reason.data_bad in back.reasons
    assert back.write == {} and not back.heartbeat and not back.request_remote and back.batch_command is None
    # a good cycle never hands back, however long the counter says
    assert not decide(auto(held_for_s=1e9), guard).hand_back
    assert not decide(auto(data_ok=False, held_for_s=1e9), SETTINGS).hand_back  # off by default
