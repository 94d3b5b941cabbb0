"""The tag map contract: validation that names the problem, and register encoding."""

from __future__ import annotations

import copy
import math
import struct

import pytest
import yaml

from conf.contract.tagmap import (
    ModbusTable,
    TagMap,
    TagMapError,
    WordOrder,
    decode_registers,
    encode_registers,
)
from pathlib import Path

CRYSTALLIZER = Path(__file__).resolve().parents[3] / "conf" / "plant" / "crystallizer.yaml"


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(CRYSTALLIZER.read_text())


def test_the_shipped_tag_map_validates(raw):
    tagmap = TagMap.from_dict(raw)
    assert tagmap.reactor == "R101"
    assert all(s.modbus.table is ModbusTable.holding for s in tagmap.writable)
    assert {s.name for s in tagmap.writable} >= {"reactor_temperature_setpoint_c", "agent_heartbeat", "batch_command"}
    first, count = tagmap.register_span(ModbusTable.input)
    assert first == 0 and count >= 2 * 24


def mutate(raw: dict, signal: str, **changes) -> dict:
    out = copy.deepcopy(raw)
    for key, value in changes.items():
        if key.startswith("modbus_"):
            out["signals"][signal]["modbus"][key[len("modbus_"):]] = value
        else:
            out["signals"][signal][key] = value
    return out


@pytest.mark.parametrize(
    "signal, changes, words",
    [
        ("reactor_temperature_c", {"modbus_address": 0}, ["overlaps", "plant_time_s"]),
        ("reactor_temperature_c", {"writable": True}, ["reactor_temperature_c", "holding"]),
        ("reactor_temperature_setpoint_c", {"modbus_table": "input"}, ["writable", "holding"]),
        ("reactor_temperature_setpoint_c", {"limits": [0.0, 500.0]}, ["limits", "inside"]),
        ("reactor_temperature_c", {"modbus_type": "float64"}, ["float64", "float32", "uint16"]),
        ("reactor_temperature_c", {"modbus_word_order": "middle"}, ["middle", "big", "little"]),
        ("reactor_temperature_c", {"kind": "sensor"}, ["sensor", "measurement"]),
        ("reactor_temperature_c", {"low": 10.0, "high": 5.0}, ["low", "high"]),
        ("jacket_temperature_c", {"opcua_node": "R101.TT101.PV"}, ["opcua_node", "reactor_temperature_c"]),
        ("batch_state", {"high": 1e6}, ["uint16"]),
        ("reactor_temperature_setpoint_c", {"safety_instrumented": True}, ["safety"]),
    ],
)
def test_bad_tag_maps_are_refused_naming_the_problem(raw, signal, changes, words):
    with pytest.raises(TagMapError) as info:
        TagMap.from_dict(mutate(raw, signal, **changes))
    for word in words:
        assert word in str(info.value), str(info.value)


def test_missing_sections_are_named():
    with pytest.raises(TagMapError, match="signals"):
        TagMap.from_dict({"reactor": "R1"})
    with pytest.raises(TagMapError, match="no signals"):
        TagMap.from_dict({"reactor": "R1", "signals": {}})


@pytest.mark.parametrize("order", ["big", "little"])
def test_float32_round_trip_and_word_order(raw, order):
    tagmap = TagMap.from_dict(mutate(raw, "reactor_temperature_c", modbus_word_order=order))
    sig = tagmap["reactor_temperature_c"]
    assert sig.modbus.word_order is WordOrder(order)
    words = encode_registers(sig, 23.5)
    high, low = struct.unpack(">HH", struct.pack(">f", 23.5))
    assert words == ([high, low] if order == "big" else [low, high])
    assert decode_registers(sig, words) == 23.5
    nan_words = encode_registers(sig, math.nan)
    assert math.isnan(decode_registers(sig, nan_words))


def test_integer_encoding_with_scale_and_range(raw):
    tagmap = TagMap.from_dict(mutate(raw, "batch_state", modbus_scale=10.0))
    sig = tagmap["batch_state"]
    assert encode_registers(sig, 3) == [30]
    assert decode_registers(sig, [30]) == 3.0
    with pytest.raises(ValueError):
        encode_registers(sig, math.nan)
    with pytest.raises(ValueError):
        encode_registers(sig, 1e5)
    with pytest.raises(ValueError):
        decode_registers(sig, [1, 2])


def test_clamp_and_range(raw):
    sig = TagMap.from_dict(raw)["reactor_temperature_setpoint_c"]
    lo, hi = sig.limits
    assert sig.clamp(hi + 5) == hi and sig.clamp(lo - 5) == lo
    assert sig.in_range(sig.low) and not sig.in_range(sig.high + 1) and not sig.in_range(math.nan)
