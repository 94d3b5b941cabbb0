"""The guard: the last pure step before anything is written to the plant.

``decide(GuardInput, GuardSettings) -> Verdict`` turns a proposal into the values to write,
with a reason code for everything it did. Rules, in order:

1. Outside automatic mode nothing is written, not even the heartbeat (manual: the agent only
   reads and logs; advisory: it publishes proposals).
2. In automatic mode the heartbeat is written every cycle, unless the plant has shed to local
   control: then nothing is written until the operator re-enters automatic (the plant
   latches the shed, the agent must not pretend it still drives).
3. Nothing but the heartbeat is written while the batch is not executing.
4. Bumpless entry: the first automatic cycle writes the current setpoints back unchanged.
5. Hold: on bad or stale data, a model failure, an uncertainty above the limit, or a proposal
   that is missing, stale or not finite, the current setpoints are written back (the setpoint
   stops moving where it is). A setpoint whose current value cannot be read is not written.
6. Otherwise each proposed setpoint is clamped to its limits and moved from the current value
   by at most ``max_rate_per_min`` times the time since the last write (capped at
   ``max_step_interval_s``).

Only setpoints named in the settings and marked writable are ever written; any other key in a
proposal is dropped with ``not_writable``. The plant clamps and rate-limits again (defence in
depth).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["GuardInput", "GuardSettings", "Mode", "Reason", "SetpointLimits", "Verdict", "decide"]


class Mode(str, enum.Enum):
    manual = "manual"
    advisory = "advisory"
    automatic = "automatic"


class Reason(str, enum.Enum):
    """Why the verdict is what it is (several may apply)."""

    ok = "ok"
    manual = "manual"
    advisory = "advisory"
    plant_shed = "plant_shed"
    not_executing = "not_executing"
    bumpless_entry = "bumpless_entry"
    data_bad = "data_bad"
    model_failed = "model_failed"
    uncertainty_high = "uncertainty_high"
    proposal_missing = "proposal_missing"
    proposal_stale = "proposal_stale"
    proposal_not_finite = "proposal_not_finite"
    setpoint_unknown = "setpoint_unknown"
    clamped = "clamped"
    rate_limited = "rate_limited"
    not_writable = "not_writable"


HOLD_REASONS = frozenset({Reason.data_bad, Reason.model_failed, Reason.uncertainty_high, Reason.proposal_missing,
                          Reason.proposal_stale, Reason.proposal_not_finite})


@dataclass(frozen=True)
class SetpointLimits:
    """One setpoint the agent may drive.

    Attributes:
        name: signal name in the tag map.
        low: lowest value the agent writes.
        high: highest value the agent writes.
        max_rate_per_min: largest change per minute of plant time.
        writable: the tag map marks it writable (anything else is never written).
    """

    name: str
    low: float
    high: float
    max_rate_per_min: float
    writable: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"{self.name}: need finite low <= high, got {self.low}, {self.high}")
        if not (math.isfinite(self.max_rate_per_min) and self.max_rate_per_min >= 0):
            raise ValueError(f"{self.name}: max_rate_per_min must be finite and >= 0, got {self.max_rate_per_min}")


@dataclass(frozen=True)
class GuardSettings:
    """Limits of the guard.

    Attributes:
        setpoints: what may be written.
        max_proposal_age_s: older proposals (plant time) are stale.
        max_uncertainty: largest acceptable model uncertainty (the caller's measure, e.g. the
            ensemble spread of log10 G).
        max_step_interval_s: the rate limit never allows more than this many seconds of movement.
    """

    setpoints: tuple[SetpointLimits, ...]
    max_proposal_age_s: float = 120.0
    max_uncertainty: float = 0.5
    max_step_interval_s: float = 60.0

    def __post_init__(self) -> None:
        names = [s.name for s in self.setpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"setpoints named twice: {names}")
        for name in ("max_proposal_age_s", "max_uncertainty", "max_step_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class GuardInput:
    """What the guard knows this cycle.

    Attributes:
        mode: the mode in force (requested by the operator, reported back by the agent).
        previous_mode: the mode of the previous cycle.
        plant_time_s: plant time of this cycle.
        current: setpoints read back from the plant (NaN when unreadable).
        proposal: proposed setpoints, or None when the proposer has nothing.
        proposal_time_s: plant time the proposal was made for.
        last_write_time_s: plant time of the last setpoint write (None: never).
        data_ok: the signals the proposal depends on are valid and fresh.
        model_ok: the model answered.
        uncertainty: the model's uncertainty (same measure as ``max_uncertainty``).
        plant_shed: the plant reports it shed to local control.
        plant_executing: the batch is executing.
    """

    mode: Mode
    previous_mode: Mode
    plant_time_s: float
    current: Mapping[str, float]
    proposal: Mapping[str, float] | None = None
    proposal_time_s: float | None = None
    last_write_time_s: float | None = None
    data_ok: bool = True
    model_ok: bool = True
    uncertainty: float = 0.0
    plant_shed: bool = False
    plant_executing: bool = True


@dataclass(frozen=True)
class Verdict:
    """What to write, and why.

    Attributes:
        write: setpoint values to write (empty: none).
        heartbeat: write the heartbeat this cycle.
        reasons: every rule that applied (``ok`` alone when the proposal passed untouched).
        held: the setpoints were held at their current values instead of following a proposal.
    """

    write: Mapping[str, float] = field(default_factory=dict)
    heartbeat: bool = False
    reasons: tuple[Reason, ...] = (Reason.ok,)
    held: bool = False


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _hold(inp: GuardInput, settings: GuardSettings, reasons: list[Reason]) -> Verdict:
    write = {}
    for s in settings.setpoints:
        if not s.writable:
            continue
        value = inp.current.get(s.name, math.nan)
        if not _finite(value):
            reasons.append(Reason.setpoint_unknown)
            continue
        write[s.name] = min(max(float(value), s.low), s.high)
    return Verdict(write, True, tuple(dict.fromkeys(reasons)), True)


def decide(inp: GuardInput, settings: GuardSettings) -> Verdict:
    """The verdict of one cycle (module docstring). Pure: no I/O, no clock, never raises on data."""
    if inp.mode is Mode.manual:
        return Verdict({}, False, (Reason.manual,))
    if inp.mode is Mode.advisory:
        return Verdict({}, False, (Reason.advisory,))
    if inp.plant_shed:
        return Verdict({}, False, (Reason.plant_shed,))
    if not inp.plant_executing:
        return Verdict({}, True, (Reason.not_executing,))
    if inp.previous_mode is not Mode.automatic:
        return _hold(inp, settings, [Reason.bumpless_entry])

    reasons: list[Reason] = []
    if not inp.data_ok:
        reasons.append(Reason.data_bad)
    if not inp.model_ok:
        reasons.append(Reason.model_failed)
    if not (_finite(inp.uncertainty) and float(inp.uncertainty) <= settings.max_uncertainty):
        reasons.append(Reason.uncertainty_high)
    proposal = inp.proposal
    if proposal is None:
        reasons.append(Reason.proposal_missing)
    else:
        age = inp.plant_time_s - inp.proposal_time_s if _finite(inp.proposal_time_s) else math.inf
        if not (_finite(age) and -1e-9 <= age <= settings.max_proposal_age_s):
            reasons.append(Reason.proposal_stale)
        known = {s.name for s in settings.setpoints if s.writable}
        if any(not _finite(v) for k, v in proposal.items() if k in known):
            reasons.append(Reason.proposal_not_finite)
    if reasons:
        return _hold(inp, settings, reasons)

    assert proposal is not None
    writable = {s.name: s for s in settings.setpoints if s.writable}
    if any(k not in writable for k in proposal):
        reasons.append(Reason.not_writable)
    since = inp.plant_time_s - inp.last_write_time_s if _finite(inp.last_write_time_s) else settings.max_step_interval_s
    dt_s = min(max(since, 0.0), settings.max_step_interval_s)
    write = {}
    for name, s in writable.items():
        current = inp.current.get(name, math.nan)
        if not _finite(current):
            reasons.append(Reason.setpoint_unknown)
            continue
        current = float(current)
        target = float(proposal.get(name, current))
        clamped = min(max(target, s.low), s.high)
        if clamped != target:
            reasons.append(Reason.clamped)
        step = s.max_rate_per_min * dt_s / 60.0
        # The move starts from the current value clamped into the limits, so the result is
        # inside the limits even when the plant's value is not.
        start = min(max(current, s.low), s.high)
        moved = min(max(clamped, start - step), start + step)
        if moved != clamped:
            reasons.append(Reason.rate_limited)
        write[name] = moved
    return Verdict(write, True, tuple(dict.fromkeys(reasons)) or (Reason.ok,), False)
