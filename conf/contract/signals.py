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
    "IMAGE_ASPECT_RATIO",
    "IMAGE_MEAN_SIZE",
    "IMAGE_SIZE_FRACTIONS",
    "N_IMAGE_SIZE_BINS",
    "OPERATOR_MODE_REQUEST",
    "PLANT_TIME",
    "REACTOR_TEMPERATURE",
    "SETPOINTS",
    "SHED_ACTIVE",
    "TEMPERATURE_SETPOINT",
    "TEMPERATURE_SETPOINT_ACTIVE",
    "facet_slot_signals",
    "image_size_fraction_signal",
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


# The in-situ imaging probe: what image analysis of a real probe gives, the projected size
# distribution, mean size, aspect ratio and the habit (per facet slot, below). Facet normal
# growth rates are a laboratory measurement, not an in-line signal: no tag carries them.
IMAGE_MEAN_SIZE = "image_mean_size_um"
IMAGE_ASPECT_RATIO = "image_aspect_ratio"
#: Bins of the standard probe's projected size distribution (``image_size_bin1_*`` ..).
N_IMAGE_SIZE_BINS = 4


def image_size_fraction_signal(size_bin: int) -> str:
    """The imaging probe's number fraction of crystals in projected-size bin ``size_bin`` (1 to
    :data:`N_IMAGE_SIZE_BINS` on the standard probe; the bin edges are the probe's configuration,
    stated in the tag map's descriptions)."""
    if size_bin < 1:
        raise ValueError(f"size bins count from 1, got {size_bin}")
    return f"image_size_bin{size_bin}_number_fraction"


IMAGE_SIZE_FRACTIONS: tuple[str, ...] = tuple(image_size_fraction_signal(j) for j in range(1, N_IMAGE_SIZE_BINS + 1))


def facet_slot_signals(slot: int) -> tuple[str, str]:
    """The imaging probe's tags of facet slot ``slot`` (1 to
    :data:`conf.contract.codes.N_FACET_SLOTS` on the standard probe): its {hkl} code
    (:func:`conf.contract.codes.encode_hkl`) and the family's area fraction of the observed
    habit (image shape analysis)."""
    if slot < 1:
        raise ValueError(f"facet slots count from 1, got {slot}")
    return (f"facet_{slot}_hkl", f"facet_{slot}_area_fraction")
