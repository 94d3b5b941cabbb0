"""Canonical names of the signals the agent and the plant address by name.

A tag map (``conf/plant/*.yaml``, :class:`conf.contract.tagmap.TagMap`) maps each canonical
name to an OPC UA node and a Modbus register; the code on both sides refers to signals by these
names only, so a site's tag map is the one place that says where they live. Names carry their
unit. The integer codes of the discrete ones are in :mod:`conf.contract.codes`.
"""

from __future__ import annotations

__all__ = [
    "AGENT_HEARTBEAT",
    "AGENT_MODE",
    "ANTISOLVENT_FLOW",
    "ANTISOLVENT_RATE_SETPOINT",
    "BATCH_COMMAND",
    "BATCH_STATE",
    "BATCH_TIME",
    "CONCENTRATION",
    "CONTROL_SOURCE",
    "OPERATOR_MODE_REQUEST",
    "PLANT_TIME",
    "REACTOR_TEMPERATURE",
    "SETPOINTS",
    "SHED_ACTIVE",
    "TEMPERATURE_SETPOINT",
    "TEMPERATURE_SETPOINT_ACTIVE",
    "facet_slot_signals",
]

# Remote setpoints the agent may write (kind ``setpoint``: clamped and rate-limited by the plant).
TEMPERATURE_SETPOINT = "reactor_temperature_setpoint_c"
ANTISOLVENT_RATE_SETPOINT = "antisolvent_rate_setpoint_kg_per_min"
SETPOINTS: tuple[str, ...] = (TEMPERATURE_SETPOINT, ANTISOLVENT_RATE_SETPOINT)

# Commands (kind ``command``: written as they are, no rate limit).
AGENT_HEARTBEAT = "agent_heartbeat"
AGENT_MODE = "agent_mode"
OPERATOR_MODE_REQUEST = "operator_mode_request"
BATCH_COMMAND = "batch_command"

# Status the plant reports (kind ``status``).
PLANT_TIME = "plant_time_s"
BATCH_STATE = "batch_state"
BATCH_TIME = "batch_time_s"
CONTROL_SOURCE = "control_source"
SHED_ACTIVE = "shed_active"
TEMPERATURE_SETPOINT_ACTIVE = "reactor_temperature_setpoint_active_c"

# Measurements the agent's proposals rest on.
REACTOR_TEMPERATURE = "reactor_temperature_c"
CONCENTRATION = "concentration_g_per_kg"
ANTISOLVENT_FLOW = "antisolvent_flow_kg_per_min"


def facet_slot_signals(slot: int) -> tuple[str, str, str]:
    """The imaging probe's tags of facet slot ``slot`` (1 to
    :data:`conf.contract.codes.N_FACET_SLOTS` on the standard probe): its {hkl} code
    (:func:`conf.contract.codes.encode_hkl`), the family's area fraction and its observed normal
    growth rate."""
    if slot < 1:
        raise ValueError(f"facet slots count from 1, got {slot}")
    return (f"facet_{slot}_hkl", f"facet_{slot}_area_fraction", f"facet_{slot}_growth_rate_um_per_min")
