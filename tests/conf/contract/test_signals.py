"""The canonical names: the shipped tag map carries them, and the agent addresses them so."""

from __future__ import annotations

from pathlib import Path

import yaml

from conf.contract import codes, signals
from conf.contract.tagmap import SignalKind, TagMap

PLANT_CONF = Path(__file__).resolve().parents[3] / "conf" / "plant"
TAGMAP = TagMap.from_dict(yaml.safe_load((PLANT_CONF / "crystallizer.yaml").read_text()))


def test_the_shipped_tag_map_has_every_named_signal_of_its_kind():
    kinds = {signals.TEMPERATURE_SETPOINT: SignalKind.setpoint, signals.ANTISOLVENT_RATE_SETPOINT: SignalKind.setpoint,
             signals.AGENT_HEARTBEAT: SignalKind.command, signals.AGENT_MODE: SignalKind.command,
             signals.OPERATOR_MODE_REQUEST: SignalKind.command, signals.BATCH_COMMAND: SignalKind.command,
             signals.BATCH_STATE: SignalKind.status, signals.CONTROL_SOURCE: SignalKind.status,
             signals.SHED_ACTIVE: SignalKind.status, signals.REACTOR_TEMPERATURE: SignalKind.measurement,
             signals.CONCENTRATION: SignalKind.measurement, signals.ANTISOLVENT_FLOW: SignalKind.measurement}
    for name, kind in kinds.items():
        assert TAGMAP[name].kind is kind, name
    for name in signals.SETPOINTS:
        assert TAGMAP[name].writable
    for slot in range(1, codes.N_FACET_SLOTS + 1):
        assert all(name in TAGMAP for name in signals.facet_slot_signals(slot))
    for name in (signals.IMAGE_MEAN_SIZE, signals.IMAGE_ASPECT_RATIO, *signals.IMAGE_SIZE_FRACTIONS):
        assert TAGMAP[name].kind is SignalKind.measurement and not TAGMAP[name].writable, name
    for name in signals.IMAGE_SIZE_FRACTIONS:
        assert (TAGMAP[name].low, TAGMAP[name].high, TAGMAP[name].unit) == (0.0, 1.0, "1"), name


def test_no_tag_map_serves_a_facet_growth_rate():
    """In-situ imaging gives sizes, their distribution and shape; facet normal growth rates are
    a laboratory measurement, so no shipped tag map carries one (nor any growth rate at all:
    the agent estimates growth from the desupersaturation and the size trends)."""
    for path in sorted(PLANT_CONF.glob("*.yaml")):
        tagmap = TagMap.from_dict(yaml.safe_load(path.read_text()))
        served = [s.name for s in tagmap if "growth" in s.name or "growth" in s.description.lower()
                  or "/min" in s.unit and s.name.startswith(("facet_", "image_"))]
        assert served == [], f"{path.name}: {served}"


def test_the_agent_s_own_copies_of_names_and_codes_are_the_contract_s():
    """Where the agent still spells a name or a code itself, it spells the contract's."""
    from controller import agent, strategy

    expected = {
        (strategy, "TEMPERATURE_SP"): signals.TEMPERATURE_SETPOINT,
        (strategy, "ANTISOLVENT_SP"): signals.ANTISOLVENT_RATE_SETPOINT,
        (strategy, "ANTISOLVENT_FLOW"): signals.ANTISOLVENT_FLOW,
        (agent, "BATCH_IDLE"): codes.BatchState.IDLE,
        (agent, "BATCH_EXECUTE"): codes.BatchState.EXECUTE,
        (agent, "BATCH_COMPLETED"): codes.BatchState.COMPLETED,
        (agent, "BATCH_START"): codes.BatchCommand.START,
        (agent, "BATCH_COMPLETE"): codes.BatchCommand.COMPLETE,
        **{(strategy, f"BATCH_{s.name}"): s for s in codes.BatchState},
    }
    for (module, name), value in expected.items():
        if hasattr(module, name):
            assert getattr(module, name) == value, f"{module.__name__}.{name}"
    if hasattr(agent, "MODE_CODES"):
        assert {m.value: int(c) for m, c in agent.MODE_CODES.items()} == {m.name.lower(): int(m) for m in codes.AgentMode}
