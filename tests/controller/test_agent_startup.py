"""The agent's start-up checks on the tag map (pure; the loop itself is tested over real
OPC UA and Modbus in tests/integration/test_agent.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conf.contract.tagmap import TagMap
from controller.agent import check_instruments
from controller.settings import SetupError

PLANT = Path(__file__).resolve().parents[2] / "conf" / "plant"


def _tagmap(name: str, drop: tuple[str, ...] = (), read_only: tuple[str, ...] = ()) -> TagMap:
    data = yaml.safe_load((PLANT / f"{name}.yaml").read_text())
    for n in drop:
        del data["signals"][n]
    for n in read_only:
        data["signals"][n]["writable"] = False
        data["signals"][n]["modbus"].update(table="input", address=200)  # read-only tags live in input registers
    return TagMap.from_dict(data)


def test_the_full_map_hides_nothing_and_the_minimal_one_says_what_it_cannot_see():
    assert check_instruments(_tagmap("crystallizer")) == []
    lines = check_instruments(_tagmap("minimal"))
    assert any("FBRM" in line for line in lines) and any("imaging" in line for line in lines)
    assert any("antisolvent" in line for line in lines) and len(lines) == 3


@pytest.mark.parametrize("drop", ["concentration_g_per_kg", "reactor_temperature_c", "agent_heartbeat"])
def test_a_map_without_a_minimum_signal_is_one_clear_error(drop):
    with pytest.raises(SetupError, match=drop):
        check_instruments(_tagmap("minimal", drop=(drop,)))


def test_a_setpoint_the_agent_may_not_write_is_refused():
    with pytest.raises(SetupError, match="not writable"):
        check_instruments(_tagmap("minimal", read_only=("reactor_temperature_setpoint_c",)))
