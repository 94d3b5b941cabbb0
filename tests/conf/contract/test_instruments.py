"""The instruments of a process: specs, the defaults, and a process's own over the defaults."""

from __future__ import annotations

import pytest

from conf.contract import instruments
from conf.contract.instruments import DEFAULT_INSTRUMENTS, InstrumentSpec, with_defaults


def test_the_agent_s_old_imports_are_the_contract_s():
    import controller.state as state

    assert state.InstrumentSpec is InstrumentSpec and state.DEFAULT_INSTRUMENTS is DEFAULT_INSTRUMENTS


@pytest.mark.parametrize("bad", [dict(noise_std=0.0), dict(noise_std=float("nan")), dict(noise_std=1.0, lag_s=-1.0),
                                 dict(noise_std=1.0, max_rate_per_s=-0.1)])
def test_an_impossible_instrument_is_refused_naming_the_field(bad):
    name = next(k for k in bad if k != "noise_std") if len(bad) > 1 else "noise_std"
    with pytest.raises(ValueError, match=name):
        InstrumentSpec(**bad)


def test_given_instruments_replace_the_defaults_per_signal():
    probe = InstrumentSpec(0.1, lag_s=2.0)
    merged = with_defaults({"reactor_temperature_c": probe, "turbidity_ntu": probe})
    assert merged["reactor_temperature_c"] is probe and merged["turbidity_ntu"] is probe
    assert {k: v for k, v in merged.items() if k not in ("reactor_temperature_c", "turbidity_ntu")} == {
        k: v for k, v in DEFAULT_INSTRUMENTS.items() if k != "reactor_temperature_c"}
    assert with_defaults({}) == DEFAULT_INSTRUMENTS
    with pytest.raises(ValueError, match="turbidity_ntu must be an instrument spec"):
        with_defaults({"turbidity_ntu": 0.1})


def test_the_ramp_lag_adds_dead_time_lag_and_filter():
    spec = DEFAULT_INSTRUMENTS["concentration_g_per_kg"]
    assert spec.ramp_lag_s() == pytest.approx(30.0 + 20.0 + 60.0)
    assert InstrumentSpec(1.0, dead_time_s=5.0).ramp_lag_s(10.0) == 5.0
    assert "InstrumentSpec" in instruments.__all__
