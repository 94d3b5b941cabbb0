"""The guard: the last pure step before anything is written to the plant.

``decide(GuardInput, GuardSettings) -> Verdict`` turns a proposal into the values to write,
with a reason code for everything it did. Rules, in order:

1. Outside automatic mode nothing is written, not even the heartbeat (manual: the agent only
   reads and logs; advisory: it publishes proposals).
2. In automatic mode the heartbeat is written every cycle. While the plant has shed to local
   control the verdict is ``automatic_pending``: heartbeat and ``request_remote`` (the caller
   writes ``agent_mode`` = 2, the plant's explicit re-entry), no setpoints.
3. Nothing but the heartbeat is written while the batch is not executing.
4. While the batch executes but the plant does not show the remote cascade active
   (``remote_active`` False), the verdict is ``automatic_pending`` as in rule 2.
5. Bumpless entry: the first automatic cycle, or the first with the remote cascade active again,
   writes the current setpoints back.
6. Hold: on bad data, a model failure, a model answer older than ``max_model_age_s``, an
   uncertainty above the limit, or a proposal that is missing, stale or not finite, each setpoint
   takes its ``on_hold`` action: ``hold`` keeps the current value (a temperature),
   ``ramp_to_low`` moves it towards ``low`` (an antisolvent feed must not feed blind). A hold
   reason on the bumpless entry cycle takes these actions too. A hold that has lasted
   ``max_hold_s`` (``held_for_s``) hands the loop back instead (``handed_back``, ``hand_back``):
   no setpoints, no heartbeat; the caller writes ``agent_mode`` out of automatic and alarms, so
   the DCS's own loop carries the batch rather than an agent that cannot decide.
7. Otherwise each proposed setpoint is clamped to its limits and, when a reference is given, into
   the envelope's band around it (the limits win where the two disagree).
8. The limits come first: a setpoint whose current value lies outside them is not written
   (``setpoint_out_of_limits``; the guard never writes outside them, whatever the plant reads
   back, and never steps a value into them), and every written value moves from the current one
   by at most the tag's and the envelope's rate times the time since the last write (capped at
   ``max_step_interval_s``). A setpoint with ``may_increase`` False (cooling only) never goes
   above it unless ``heating_permitted``; one with ``may_decrease`` False never goes below it.
   With the measured supersaturation above the envelope's ceiling, ``no_decrease`` setpoints
   (a cooling temperature) do not move down and ``ramp_to_low`` ones (an antisolvent feed) ramp
   to low.
9. A batch request is granted only with a writable batch command tag, the DCS's permissive,
   automatic mode and no shed: ``start`` while the batch is not executing, ``complete`` while it
   executes and the setpoints follow a proposal (not held, not pending).

Only setpoints named in the settings and marked writable are ever written; any other key in a
proposal is dropped with ``not_writable``. A setpoint whose current value cannot be read is not
written, nor one whose current value lies outside its limits (``setpoint_out_of_limits``:
clamping would step it, a rated walk back would write outside the limits). The plant clamps
and rate-limits again (defence in depth).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Mapping

__all__ = ["BatchRequest", "Envelope", "GuardInput", "GuardSettings", "HoldAction", "Mode", "Reason",
           "SetpointEnvelope", "SetpointLimits", "SigmaAction", "Verdict", "decide"]


class Mode(str, enum.Enum):
    manual = "manual"
    advisory = "advisory"
    automatic = "automatic"


class HoldAction(str, enum.Enum):
    """What a setpoint does on a hold (rule 6)."""

    hold = "hold"  # keep the current value (a temperature)
    ramp_to_low = "ramp_to_low"  # move towards ``low`` at the rate (an antisolvent feed)


class SigmaAction(str, enum.Enum):
    """What a setpoint does while the measured supersaturation is above the envelope's ceiling."""

    none = "none"
    no_decrease = "no_decrease"  # cooling raises supersaturation: a temperature does not move down
    ramp_to_low = "ramp_to_low"  # an antisolvent feed ramps to low


class BatchRequest(str, enum.Enum):
    """A batch command the agent asks the guard to send (rule 9)."""

    start = "start"
    complete = "complete"


class Reason(str, enum.Enum):
    """Why the verdict is what it is (several may apply)."""

    ok = "ok"
    manual = "manual"
    advisory = "advisory"
    plant_shed = "plant_shed"
    automatic_pending = "automatic_pending"
    handed_back = "handed_back"
    not_executing = "not_executing"
    bumpless_entry = "bumpless_entry"
    data_bad = "data_bad"
    model_failed = "model_failed"
    model_stale = "model_stale"
    uncertainty_high = "uncertainty_high"
    proposal_missing = "proposal_missing"
    proposal_stale = "proposal_stale"
    proposal_not_finite = "proposal_not_finite"
    setpoint_unknown = "setpoint_unknown"
    setpoint_out_of_limits = "setpoint_out_of_limits"
    ramp_to_low = "ramp_to_low"
    clamped = "clamped"
    envelope_band = "envelope_band"
    rate_limited = "rate_limited"
    envelope_rate = "envelope_rate"
    direction = "direction"
    sigma_ceiling = "sigma_ceiling"
    not_writable = "not_writable"
    no_permissive = "no_permissive"
    batch_request = "batch_request"
    batch_request_refused = "batch_request_refused"


HOLD_REASONS = frozenset({Reason.data_bad, Reason.model_failed, Reason.model_stale, Reason.uncertainty_high,
                          Reason.proposal_missing, Reason.proposal_stale, Reason.proposal_not_finite})


def _enum(cls: type[enum.Enum], value, what: str):
    try:
        return cls(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {[m.value for m in cls]}, got {value!r}") from None


def _not_nan_at_least_zero(value, what: str) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):  # NaN fails the comparison
        raise ValueError(f"{what} must be a number >= 0 (inf: no limit), got {value!r}")


@dataclass(frozen=True)
class SetpointLimits:
    """One setpoint the agent may drive.

    Attributes:
        name: signal name in the tag map.
        low: lowest value the agent writes.
        high: highest value the agent writes.
        max_rate_per_min: largest change per minute of plant time.
        writable: the tag map marks it writable (anything else is never written).
        on_hold: what the setpoint does on a hold (rule 6).
        may_increase: False: never written above its current value (a cooling-only temperature),
            unless the input says ``heating_permitted``.
        may_decrease: False: never written below its current value.
    """

    name: str
    low: float
    high: float
    max_rate_per_min: float
    writable: bool = True
    on_hold: HoldAction = HoldAction.hold
    may_increase: bool = True
    may_decrease: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low <= self.high):
            raise ValueError(f"{self.name}: need finite low <= high, got {self.low}, {self.high}")
        if not (math.isfinite(self.max_rate_per_min) and self.max_rate_per_min >= 0):
            raise ValueError(f"{self.name}: max_rate_per_min must be finite and >= 0, got {self.max_rate_per_min}")
        object.__setattr__(self, "on_hold", _enum(HoldAction, self.on_hold, f"{self.name}: on_hold"))
        if self.on_hold is HoldAction.ramp_to_low and not self.may_decrease:
            raise ValueError(f"{self.name}: on_hold=ramp_to_low needs may_decrease")


@dataclass(frozen=True)
class SetpointEnvelope:
    """The operator's process envelope for one setpoint (tighter than its tag limits).

    Attributes:
        name: the setpoint (one of ``GuardSettings.setpoints``).
        band_below: how far below the reference a proposal may go, in the setpoint's units
            (inf: no limit).
        band_above: how far above the reference a proposal may go, in the setpoint's units.
        max_rate_per_min: the process's rate limit, in the setpoint's units per minute of plant
            time; at most the tag's (inf: the tag's rate only).
        on_sigma_ceiling: what the setpoint does while the measured supersaturation is above
            ``Envelope.max_measured_sigma``.
    """

    name: str
    band_below: float = math.inf
    band_above: float = math.inf
    max_rate_per_min: float = math.inf
    on_sigma_ceiling: SigmaAction = SigmaAction.none

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"envelope setpoint name must be a non-empty string, got {self.name!r}")
        for attr in ("band_below", "band_above", "max_rate_per_min"):
            _not_nan_at_least_zero(getattr(self, attr), f"envelope {self.name}: {attr}")
        object.__setattr__(self, "on_sigma_ceiling",
                           _enum(SigmaAction, self.on_sigma_ceiling, f"envelope {self.name}: on_sigma_ceiling"))


@dataclass(frozen=True)
class Envelope:
    """The operator-adjustable process envelope (from config), besides the tag limits.

    Attributes:
        setpoints: per-setpoint bands, rates and supersaturation actions (none: no restriction).
        max_measured_sigma: ceiling on the measured supersaturation (inf: none). Above it, each
            setpoint takes its ``on_sigma_ceiling`` action.
    """

    setpoints: tuple[SetpointEnvelope, ...] = ()
    max_measured_sigma: float = math.inf

    def __post_init__(self) -> None:
        object.__setattr__(self, "setpoints", tuple(self.setpoints))
        if not all(isinstance(s, SetpointEnvelope) for s in self.setpoints):
            raise ValueError("envelope setpoints must be SetpointEnvelope entries")
        names = [s.name for s in self.setpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"envelope names a setpoint twice: {names}")
        if not isinstance(self.max_measured_sigma, (int, float)) or math.isnan(self.max_measured_sigma):
            raise ValueError(f"envelope max_measured_sigma must be a number (inf: no ceiling), "
                             f"got {self.max_measured_sigma!r}")
        if math.isfinite(self.max_measured_sigma) and all(s.on_sigma_ceiling is SigmaAction.none
                                                          for s in self.setpoints):
            raise ValueError("envelope max_measured_sigma is set but no setpoint has an on_sigma_ceiling action")

    def get(self, name: str) -> SetpointEnvelope:
        """The envelope of ``name`` (no restriction when it has none)."""
        return next((s for s in self.setpoints if s.name == name), SetpointEnvelope(name))


@dataclass(frozen=True)
class GuardSettings:
    """Limits of the guard.

    Attributes:
        setpoints: what may be written.
        max_proposal_age_s: older proposals (plant time) are stale.
        max_uncertainty: largest acceptable model uncertainty (the caller's measure, e.g. the
            ensemble spread of log10 G).
        max_step_interval_s: the rate limit never allows more than this many seconds of movement.
        envelope: the operator's process envelope (default: no restriction).
        max_model_age_s: older model answers (plant time) hold with ``model_stale`` (inf: off).
        batch_command_writable: the tag map marks the batch command tag writable.
        max_hold_s: plant seconds of continuous hold after which the loop is handed back to
            the DCS (``handed_back``; inf: never).
    """

    setpoints: tuple[SetpointLimits, ...]
    max_proposal_age_s: float = 120.0
    max_uncertainty: float = 0.5
    max_step_interval_s: float = 60.0
    envelope: Envelope = Envelope()
    max_model_age_s: float = math.inf
    batch_command_writable: bool = False
    max_hold_s: float = math.inf

    def __post_init__(self) -> None:
        names = [s.name for s in self.setpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"setpoints named twice: {names}")
        for name in ("max_proposal_age_s", "max_uncertainty", "max_step_interval_s", "max_model_age_s", "max_hold_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not isinstance(self.envelope, Envelope):
            raise ValueError(f"envelope must be an Envelope, got {type(self.envelope).__name__}")
        limits = {s.name: s for s in self.setpoints}
        for e in self.envelope.setpoints:
            s = limits.get(e.name)
            if s is None:
                raise ValueError(f"envelope names {e.name!r}, which is not a guarded setpoint ({names})")
            if math.isfinite(e.max_rate_per_min) and e.max_rate_per_min > s.max_rate_per_min:
                raise ValueError(f"envelope {e.name}: max_rate_per_min {e.max_rate_per_min} exceeds the tag's "
                                 f"{s.max_rate_per_min} (the envelope only tightens)")
            if e.on_sigma_ceiling is SigmaAction.ramp_to_low and not s.may_decrease:
                raise ValueError(f"envelope {e.name}: on_sigma_ceiling=ramp_to_low needs may_decrease")


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
        heating_permitted: ``may_increase`` False setpoints may go up this cycle.
        reference: the reference trajectory now (e.g. the recipe's setpoints) the envelope's
            bands are around; None, or a name missing or not finite: no band.
        measured_sigma: the measured supersaturation (NaN: not measured, no ceiling applies).
        model_age_s: plant seconds since the model's answer in use was asked for (inf: never
            answered).
        remote_active: the plant shows the remote cascade active (None: it does not report it).
        previous_remote_active: ``remote_active`` of the previous cycle.
        batch_request: a batch command the caller wants sent (None: none).
        batch_permissive: the DCS permits the agent to command the batch.
        held_for_s: plant seconds the setpoints have been held without a break so far (0: not
            holding).
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
    heating_permitted: bool = False
    reference: Mapping[str, float] | None = None
    measured_sigma: float = math.nan
    model_age_s: float = 0.0
    remote_active: bool | None = None
    previous_remote_active: bool | None = None
    batch_request: BatchRequest | None = None
    batch_permissive: bool = True
    held_for_s: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """What to write, and why.

    Attributes:
        write: setpoint values to write (empty: none).
        heartbeat: write the heartbeat this cycle.
        reasons: every rule that applied (``ok`` when the proposal passed untouched).
        held: the setpoints took their hold actions instead of following a proposal.
        request_remote: write ``agent_mode`` = 2 (automatic) to (re-)enter the remote cascade.
        batch_command: the batch command to write (None: none).
        hand_back: the hold lasted ``max_hold_s``: hand the loop back to the DCS (write
            ``agent_mode`` out of automatic, no heartbeat, no setpoints) and raise the alarm.
    """

    write: Mapping[str, float] = field(default_factory=dict)
    heartbeat: bool = False
    reasons: tuple[Reason, ...] = (Reason.ok,)
    held: bool = False
    request_remote: bool = False
    batch_command: BatchRequest | None = None
    hand_back: bool = False


def _number(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite(x) -> bool:
    return math.isfinite(_number(x))


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


def _hold_reasons(inp: GuardInput, settings: GuardSettings) -> list[Reason]:
    reasons = []
    if not inp.data_ok:
        reasons.append(Reason.data_bad)
    if not inp.model_ok:
        reasons.append(Reason.model_failed)
    if math.isfinite(settings.max_model_age_s) and not (
            _finite(inp.model_age_s) and -1e-9 <= float(inp.model_age_s) <= settings.max_model_age_s):
        reasons.append(Reason.model_stale)  # not finite: never answered, or unknown
    if not (_finite(inp.uncertainty) and float(inp.uncertainty) <= settings.max_uncertainty):
        reasons.append(Reason.uncertainty_high)
    if inp.proposal is None:
        reasons.append(Reason.proposal_missing)
    else:
        age = inp.plant_time_s - inp.proposal_time_s if _finite(inp.proposal_time_s) else math.inf
        if not (_finite(age) and -1e-9 <= age <= settings.max_proposal_age_s):
            reasons.append(Reason.proposal_stale)
        known = {s.name for s in settings.setpoints if s.writable}
        if any(not _finite(v) for k, v in inp.proposal.items() if k in known):
            reasons.append(Reason.proposal_not_finite)
    return reasons


def _target(s: SetpointLimits, e: SetpointEnvelope, inp: GuardInput, current: float, follow: bool, safe: bool,
            reasons: list[Reason]) -> float:
    """Where the setpoint should go this cycle, inside its limits (rules 5 to 7)."""
    if safe and s.on_hold is HoldAction.ramp_to_low:
        if current != s.low:
            reasons.append(Reason.ramp_to_low)
        return s.low
    target = current
    if follow:
        target = float(inp.proposal.get(s.name, current))
        ref = (inp.reference or {}).get(s.name)
        if _finite(ref):
            banded = _clamp(target, float(ref) - e.band_below, float(ref) + e.band_above)
            if banded != target:
                reasons.append(Reason.envelope_band)
            target = banded
    clamped = _clamp(target, s.low, s.high)
    if clamped != target:
        reasons.append(Reason.clamped)
    return clamped


def _move(s: SetpointLimits, e: SetpointEnvelope, inp: GuardInput, current: float, target: float, dt_s: float,
          sigma_high: bool, reasons: list[Reason]) -> float:
    """The value written: ``target`` within what may move this cycle (rule 8)."""
    if sigma_high and e.on_sigma_ceiling is SigmaAction.ramp_to_low and target != s.low:
        target = s.low
        reasons.append(Reason.sigma_ceiling)
    start = current  # inside the limits (_setpoints writes nothing for a value outside them)
    tag_step = s.max_rate_per_min * dt_s / 60.0
    env_step = min(e.max_rate_per_min, s.max_rate_per_min) * dt_s / 60.0  # inf * 0 s would be NaN
    below = [(start - tag_step, Reason.rate_limited), (start - env_step, Reason.envelope_rate)]
    above = [(start + tag_step, Reason.rate_limited), (start + env_step, Reason.envelope_rate)]
    if not s.may_decrease:
        below.append((start, Reason.direction))
    if not s.may_increase and not inp.heating_permitted:
        above.append((start, Reason.direction))
    if sigma_high and e.on_sigma_ceiling is SigmaAction.no_decrease:
        below.append((start, Reason.sigma_ceiling))
    lo, hi = max(b for b, _ in below), min(b for b, _ in above)  # both contain start
    moved = _clamp(target, lo, hi)
    if moved != target:
        reasons.extend(r for b, r in (below if moved == lo else above) if b == moved)
    return moved


def _setpoints(inp: GuardInput, settings: GuardSettings, follow: bool, safe: bool,
               reasons: list[Reason]) -> dict[str, float]:
    """The values to write: following the proposal, or (not ``follow``) the current ones, with
    each setpoint's hold action when ``safe``."""
    since = inp.plant_time_s - inp.last_write_time_s if _finite(inp.last_write_time_s) else settings.max_step_interval_s
    dt_s = _clamp(since, 0.0, settings.max_step_interval_s) if _finite(since) else settings.max_step_interval_s
    sigma_high = _number(inp.measured_sigma) > settings.envelope.max_measured_sigma  # NaN: not measured
    write = {}
    for s in settings.setpoints:
        if not s.writable:
            continue
        current = inp.current.get(s.name, math.nan)
        if not _finite(current):
            reasons.append(Reason.setpoint_unknown)
            continue
        if not s.low <= float(current) <= s.high:
            # Clamping would step it (several K at once on a temperature) and a rated walk back
            # would write outside the limits: the guard writes neither; the plant keeps its own
            # value until the DCS brings it inside.
            reasons.append(Reason.setpoint_out_of_limits)
            continue
        e = settings.envelope.get(s.name)
        target = _target(s, e, inp, float(current), follow, safe, reasons)
        write[s.name] = _move(s, e, inp, float(current), target, dt_s, sigma_high, reasons)
    return write


def _batch(inp: GuardInput, settings: GuardSettings, following: bool) -> tuple[BatchRequest | None, Reason | None]:
    """Rule 9: the batch command to write, and its reason (None, None: nothing was requested)."""
    request = inp.batch_request
    if request is None:
        return None, None
    if not settings.batch_command_writable:
        return None, Reason.not_writable
    if not inp.batch_permissive:
        return None, Reason.no_permissive
    allowed = inp.mode is Mode.automatic and not inp.plant_shed and (
        (request is BatchRequest.start and not inp.plant_executing)
        or (request is BatchRequest.complete and inp.plant_executing and following))
    return (request, Reason.batch_request) if allowed else (None, Reason.batch_request_refused)


def decide(inp: GuardInput, settings: GuardSettings) -> Verdict:
    """The verdict of one cycle (module docstring). Pure: no I/O, no clock, never raises on data."""
    write: dict[str, float] = {}
    held = following = pending = False
    if inp.mode is not Mode.automatic:
        reasons = [Reason.manual if inp.mode is Mode.manual else Reason.advisory]
    elif inp.plant_shed:
        reasons, pending = [Reason.plant_shed, Reason.automatic_pending], True
    elif not inp.plant_executing:
        reasons = [Reason.not_executing]
    elif inp.remote_active is False:
        reasons, pending = [Reason.automatic_pending], True
    else:
        bumpless = inp.previous_mode is not Mode.automatic or inp.previous_remote_active is False
        hold = _hold_reasons(inp, settings)
        reasons = [Reason.bumpless_entry] * bumpless + hold
        held, following = bool(reasons), not reasons
        if following:
            writable = {s.name for s in settings.setpoints if s.writable}
            if any(k not in writable for k in inp.proposal):
                reasons.append(Reason.not_writable)
        if hold and inp.held_for_s >= settings.max_hold_s:
            # A running batch is not held for hours on an agent that cannot decide: the loop goes
            # back to the DCS (its recipe), with an alarm, and the agent leaves automatic.
            return Verdict({}, False, tuple(dict.fromkeys([*reasons, Reason.handed_back])), True, hand_back=True)
        write = _setpoints(inp, settings, following, bool(hold), reasons)
        reasons = reasons or [Reason.ok]
    command, batch_reason = _batch(inp, settings, following)
    if batch_reason is not None:
        reasons.append(batch_reason)
    return Verdict(write, inp.mode is Mode.automatic, tuple(dict.fromkeys(reasons)), held, pending, command)
