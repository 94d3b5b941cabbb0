"""The enumerations the plant and the agent share: what the discrete tags' numbers mean.

Discrete tags carry integers on both protocols (the tag map gives them integer register types):

- ``batch_state`` (status): the ISA-88 / MTP state of the batch, :class:`BatchState`;
- ``batch_command`` (command): a request to the batch state machine, :class:`BatchCommand`;
- ``agent_mode`` (command, written by the agent) and ``operator_mode_request`` (written at the
  HMI): the agent's mode, :class:`AgentMode`;
- ``control_source`` (status): who drives the temperature loop now, :class:`ControlSource`;
- ``facet_<k>_hkl`` (status): the facet family {hkl} an imaging slot reports, as
  100 h + 10 k + l (:func:`encode_hkl`, :func:`decode_hkl`; indices 0..9, 0 for an empty slot).

Two configured behaviours of the plant's side complete the contract: what the local loop does
after heartbeat loss (:class:`ShedAction`) and how the plant's OPC UA server is secured
(:class:`SecurityMode`).

The batch state machine (which command moves which state) is the plant's; the codes are shared.
"""

from __future__ import annotations

import enum
import math

__all__ = ["N_FACET_SLOTS", "AgentMode", "BatchCommand", "BatchState", "ControlSource", "SecurityMode",
           "ShedAction", "decode_hkl", "encode_hkl"]

#: Facet family slots of the imaging probe (``facet_1_*`` .. ``facet_4_*``).
N_FACET_SLOTS = 4


class BatchState(enum.IntEnum):
    """``batch_state``: the ISA-88 state of the batch as the plant reports it."""

    IDLE = 0
    EXECUTE = 1
    HELD = 2
    COMPLETED = 3
    ABORTED = 4


class BatchCommand(enum.IntEnum):
    """``batch_command``: a request to the plant's batch state machine."""

    NONE = 0
    START = 1
    HOLD = 2
    RESUME = 3
    ABORT = 4
    RESET = 5
    COMPLETE = 6


class AgentMode(enum.IntEnum):
    """``agent_mode`` and ``operator_mode_request``: manual, advisory (shadow) or automatic."""

    MANUAL = 0
    ADVISORY = 1
    AUTOMATIC = 2


class ControlSource(enum.IntEnum):
    """``control_source``: the local program (recipe or held setpoint) or the agent's setpoint."""

    LOCAL = 0
    REMOTE = 1


class ShedAction(str, enum.Enum):
    """What the local loop does after heartbeat loss: hold the setpoint or run the recipe."""

    hold = "hold"
    recipe = "recipe"


class SecurityMode(str, enum.Enum):
    """OPC UA security of the plant server (Modbus TCP has none)."""

    insecure = "insecure"  # NoSecurity + anonymous; logged as a warning
    sign_encrypt = "sign_encrypt"  # Basic256Sha256 SignAndEncrypt + user name/password


def encode_hkl(hkl: tuple[int, int, int]) -> int:
    """{hkl} as the integer the ``facet_<k>_hkl`` tags carry: 100 h + 10 k + l.

    Raises:
        ValueError: for an index outside 0..9 (the code has one decimal digit per index).
    """
    h, k, l = (int(i) for i in hkl)
    if not all(0 <= i <= 9 for i in (h, k, l)):
        raise ValueError(f"facet slots carry Miller indices 0..9, got {tuple(hkl)}")
    return 100 * h + 10 * k + l


def decode_hkl(code: float) -> tuple[int, int, int] | None:
    """100 h + 10 k + l -> (h, k, l); None for 0 (an empty slot), NaN or a code that is not a family."""
    if not math.isfinite(code) or code <= 0 or code != int(code) or code > 999:
        return None
    c = int(code)
    return (c // 100, (c // 10) % 10, c % 10)
