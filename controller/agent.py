"""The daemon: ``xtalpilot agent`` closes the loop over OPC UA or Modbus (DESIGN.md, "One control cycle").

Sibling tasks in one ``asyncio.TaskGroup``:

- the control loop: reads the plant often, and runs a cycle each time ``control_interval_s`` of
  *plant* time has passed (a plant clock that jumps over an interval counts a missed cycle; a
  cycle longer than its interval's wall time counts an overrun). One cycle is the design's data
  flow, a method each::

      read      validate the snapshot (controller.state), place the batch, follow the operator
      estimate  PlantState = estimate(previous, view, model laws, process facts)  (controller.estimator)
      advise    Advice = strategy.advise(state, model answer)                     (controller.strategy)
      decide    Verdict = decide(GuardInput, GuardSettings)                       (controller.guard)
      write     the verdict's tags (the decision committed to the log first)
      record    outcome, persisted state, reports, metrics

- the model: the MS-GNN answers in a background thread (controller.model_client); a cycle takes
  the newest answer and asks again when one is due; replay awaits each answer;
- the proposer: whenever the strategy poses a problem and the worker process is free, the
  problem goes to the worker; its proposal applies from the next cycle after it arrives;
- a loop-lag monitor (how late a 10 ms sleep wakes up: what a stalled loop would show).

The parts the cycle rests on are small and tested without a network: :class:`LogOnce` (each
change of a condition logged once), :class:`Connection` (connect, capped backoff, hold while
lost), :class:`BatchTracker` (batch start, time and completion), :class:`ModeSupervisor`
(operator requests, leaving automatic) and :class:`Recorder` (decision log before the write,
outcomes, the state an agent restarted within the batch continues from).

Modes: the agent starts in ``agent.mode`` (CLI) but never in automatic, and never above the
operator's standing ``operator_mode_request`` (0 manual, 1 advisory, 2 automatic); it enters
automatic only on an operator request made after its start (a change of that tag), so an agent
restarted by systemd does not re-enter automatic by itself. It writes nothing in manual or
advisory; in automatic it writes the guard's setpoints, the heartbeat and, when the plant does
not show it yet, ``agent_mode`` = 2. Leaving automatic it writes ``agent_mode`` once (handing
the loop back). While the plant is shed or not in the remote cascade, automatic is pending
(``automatic_pending``): heartbeat and ``agent_mode`` = 2 only, the plant's explicit re-entry.

Plant I/O failures never end the daemon: it holds (writes nothing), reconnects with capped
backoff, and logs each change of state once. SIGTERM/SIGINT stop it between cycles; it writes
nothing more, so the plant's heartbeat watchdog sheds to local control.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from controller.decision_log import Decision, DecisionLog, DecisionLogError
from controller.guard import (
    HOLD_REASONS,
    BatchRequest,
    Envelope,
    GuardInput,
    GuardSettings,
    HoldAction,
    Mode,
    Reason,
    SetpointEnvelope,
    SetpointLimits,
    SigmaAction,
    decide,
)
from controller.plant_io import Backoff, PlantIO, PlantIOError
from controller.settings import AgentSettings, SetupError
from controller.state import (
    DEFAULT_INSTRUMENTS,
    SignalTracker,
    ValidationSettings,
    alignment_delay_s,
    validation_settings_for,
)
from conf.contract import signals
from conf.contract.codes import AgentMode, BatchCommand, BatchState
from conf.contract.tagmap import SignalKind, TagMap
from controller.estimator import PlantState, PlantView, ProcessFacts, estimate
from controller.model_client import ModelAnswer, ModelClient
from controller.settings import ProposerSettings
from controller.strategy import ANTISOLVENT_SP, TEMPERATURE_SP, Advice, Strategy

__all__ = ["Agent", "AgentReport", "BatchStatus", "BatchTracker", "Connection", "LogOnce", "ModeSupervisor", "Recorder",
           "check_instruments", "chord_summary", "guard_settings", "process_facts", "validation_settings"]

_log = logging.getLogger("xtalpilot.agent")

MODE_CODES = {Mode.manual: int(AgentMode.MANUAL), Mode.advisory: int(AgentMode.ADVISORY),
              Mode.automatic: int(AgentMode.AUTOMATIC)}

CODE_MODES = {v: k for k, v in MODE_CODES.items()}
BATCH_IDLE, BATCH_EXECUTE, BATCH_HELD, BATCH_COMPLETED = (int(BatchState.IDLE), int(BatchState.EXECUTE),
                                                          int(BatchState.HELD), int(BatchState.COMPLETED))
BATCH_START, BATCH_COMPLETE = int(BatchCommand.START), int(BatchCommand.COMPLETE)
# Signals the proposals rest on: without them valid the guard holds.
REQUIRED = (signals.REACTOR_TEMPERATURE, signals.CONCENTRATION)


# What the agent cannot run without, and what each missing optional signal costs it.
MINIMUM_SIGNALS = (signals.PLANT_TIME, signals.REACTOR_TEMPERATURE, signals.CONCENTRATION, signals.BATCH_STATE,
                   signals.TEMPERATURE_SETPOINT, signals.AGENT_HEARTBEAT, signals.AGENT_MODE)
OPTIONAL_SIGNALS = (
    (signals.OPERATOR_MODE_REQUEST, "no operator mode request: the agent can never enter automatic"),
    (signals.CONTROL_SOURCE, "no control source: re-entry into the remote cascade cannot be confirmed"),
    (signals.BATCH_TIME, "no batch time: batch time counted from when the agent saw the batch start"),
    (signals.BATCH_COMMAND, "no batch command: batches are started and completed by the DCS only"),
    ("fbrm_counts_total_per_s", "no FBRM: nucleation is not corrected online"),
    ("facet_1_area_fraction", "no imaging: the model is given the material's own habit"),
    (signals.ANTISOLVENT_RATE_SETPOINT, "no antisolvent setpoint: temperature is the only move"),
)


def check_instruments(tagmap: TagMap) -> list[str]:
    """What the agent cannot see on this tag map (one line each, for the start-up log).

    Raises:
        SetupError: a signal the agent cannot run without is missing, or its setpoint is not
            writable; the message names them.
    """
    missing = [n for n in MINIMUM_SIGNALS if n not in tagmap]
    if missing:
        raise SetupError(f"the tag map lacks {', '.join(missing)}; the agent needs at least "
                         f"{', '.join(MINIMUM_SIGNALS)} (see conf/plant/minimal.yaml)")
    for name in (signals.TEMPERATURE_SETPOINT, signals.AGENT_HEARTBEAT, signals.AGENT_MODE):
        if not tagmap[name].writable:
            raise SetupError(f"{name} is not writable in the tag map: the agent cannot drive the plant through it")
    return [why for name, why in OPTIONAL_SIGNALS if name not in tagmap]


def validation_settings(tagmap: TagMap, settings: AgentSettings,
                        instruments=DEFAULT_INSTRUMENTS) -> dict[str, ValidationSettings]:
    """Validation per measured signal from the tag map's ranges, the instruments' noise and the
    agent's time limits (controller.state.validation_settings_for)."""
    ranges = {s.name: (s.low, s.high) for s in tagmap
              if s.kind is SignalKind.measurement and s.name != "plant_time_s"}
    return validation_settings_for(ranges, instruments, settings.stale_after_s, settings.stuck_after_s)


def concentration_delay_s(settings: AgentSettings, instruments=DEFAULT_INSTRUMENTS) -> float:
    """How far the concentration analyser lags the reactor RTD as the agent reads them (s)."""
    return alignment_delay_s(instruments["concentration_g_per_kg"], instruments["reactor_temperature_c"],
                             settings.control_interval_s)


def guard_settings(tagmap: TagMap, settings: AgentSettings, names: tuple[str, ...] = (TEMPERATURE_SP,)) -> GuardSettings:
    """The guard's limits: the tag map's plant limits and rates of the setpoints the agent drives,
    each setpoint's own safe action, and the operator's process envelope from the settings.

    The temperature setpoint holds on a hold and never rises unless heating is permitted (the
    agent's designs are cooling only); the antisolvent feed ramps to zero on a hold (never feed
    blind) and above the measured supersaturation ceiling."""
    limits, envelope = [], []
    for name in names:
        s = tagmap[name]
        lo, hi = s.limits if s.limits is not None else (s.low, s.high)
        rate = s.max_rate_per_min if s.max_rate_per_min is not None else (hi - lo)
        if name == ANTISOLVENT_SP:
            limits.append(SetpointLimits(name, lo, hi, rate, writable=s.writable, on_hold=HoldAction.ramp_to_low))
            envelope.append(SetpointEnvelope(name, on_sigma_ceiling=SigmaAction.ramp_to_low))
        elif name == TEMPERATURE_SP:
            limits.append(SetpointLimits(name, lo, hi, rate, writable=s.writable, may_increase=False))
            envelope.append(SetpointEnvelope(
                name, band_below=settings.envelope_band_k, band_above=settings.envelope_band_k,
                max_rate_per_min=min(settings.envelope_rate_k_per_min, rate),
                on_sigma_ceiling=SigmaAction.no_decrease))
        else:
            limits.append(SetpointLimits(name, lo, hi, rate, writable=s.writable))
    batch_writable = "batch_command" in tagmap and tagmap["batch_command"].writable
    return GuardSettings(tuple(limits), max_proposal_age_s=settings.max_proposal_age_s,
                         max_uncertainty=settings.max_uncertainty,
                         max_step_interval_s=max(settings.control_interval_s, 1.0),
                         envelope=Envelope(tuple(envelope), max_measured_sigma=settings.max_measured_sigma),
                         max_model_age_s=settings.max_model_age_s, batch_command_writable=batch_writable,
                         max_hold_s=settings.max_hold_s)


@dataclass
class AgentReport:
    """What a run did (the daemon's summary; the benchmark reads it).

    Attributes:
        cycles: control cycles run.
        missed_cycles: intervals the plant clock passed without a cycle.
        overruns: cycles that took longer than their interval's wall time.
        cycle_ms: read-to-write duration of each cycle.
        proposal_s: duration of each proposal.
        loop_lag_ms_max: largest event-loop lag seen.
        verdicts: count per guard reason.
        writes: setpoint writes accepted by the plant.
        write_failures: writes refused or lost.
        reconnects: successful reconnections after a loss.
        handbacks: times a continuous hold handed the loop back to the DCS (an alarm each).
        batch_completed: a batch completed while the agent ran.
        stopped_by: why the run ended.
        window: ``summary()`` of the cycles in a measurement window (benchmarks), else None.
    """

    cycles: int = 0
    missed_cycles: int = 0
    overruns: int = 0
    cycle_ms: list[float] = field(default_factory=list)
    proposal_s: list[float] = field(default_factory=list)
    loop_lag_ms_max: float = 0.0
    verdicts: collections.Counter = field(default_factory=collections.Counter)
    writes: int = 0
    write_failures: int = 0
    reconnects: int = 0
    handbacks: int = 0
    batch_completed: bool = False
    stopped_by: str = ""
    window: dict | None = None

    def summary(self) -> dict:
        """JSON-ready figures: counts, cycle_ms p50/p99/max, proposal_s p50/p95, loop lag."""
        return {
            "cycles": self.cycles,
            "missed_cycles": self.missed_cycles,
            "overruns": self.overruns,
            "cycle_ms": _percentiles(self.cycle_ms, (50, 99, 100), ("p50", "p99", "max")),
            "loop_lag_ms": {"max": self.loop_lag_ms_max},
            "proposal_s": _percentiles(self.proposal_s, (50, 95), ("p50", "p95")) | {"n": len(self.proposal_s)},
            "verdicts": dict(self.verdicts),
            "writes": self.writes,
            "write_failures": self.write_failures,
            "reconnects": self.reconnects,
            "handbacks": self.handbacks,
            "batch_completed": self.batch_completed,
            "stopped_by": self.stopped_by,
        }


def _percentiles(samples: list[float], qs: tuple[float, ...], names: tuple[str, ...]) -> dict:
    if not samples:
        return {n: None for n in names}
    import numpy as np

    values = np.percentile(np.asarray(samples, dtype=float), qs)
    return {n: round(float(v), 4) for n, v in zip(names, values)}


# ----------------------------------------------------------------------------- small parts
class LogOnce:
    """Log a message only when it differs from the last one on its topic (a flapping signal or a
    dead peer must not flood the journal)."""

    def __init__(self, logger: logging.Logger = _log) -> None:
        self._logger = logger
        self._said: dict[str, str] = {}

    def __call__(self, topic: str, message: str, level: int = logging.INFO) -> bool:
        """Log ``message`` under ``topic`` unless it is what was said last; True when logged."""
        if self._said.get(topic) == message:
            return False
        self._said[topic] = message
        self._logger.log(level, message)
        return True

    def said(self, topic: str) -> bool:
        return topic in self._said


class Connection:
    """The plant connection as the loop sees it: connect with capped backoff, hold while it is
    lost, and say each change of state once.

    Args:
        io: the plant I/O.
        say: a :class:`LogOnce`.
        on_change: called with True/False on each connect/loss (the metrics' connection gauge).
        backoff: the reconnection backoff.
    """

    def __init__(self, io: PlantIO, say: LogOnce, on_change=None, backoff: Backoff | None = None) -> None:
        self.io, self.say, self.on_change = io, say, on_change
        self.backoff = backoff or Backoff()
        self.connected = False
        self.reconnects = 0

    async def ensure(self) -> bool:
        """Connected now? Tries to connect when the backoff allows; never raises."""
        if self.connected:
            return True
        if not self.backoff.ready():
            return False
        try:
            await self.io.connect()
        except PlantIOError as exc:
            delay = self.backoff.failed()
            self.say("connection", f"plant unreachable, holding; retrying with backoff (next in {delay:.1f} s): {exc}",
                     logging.WARNING)
            return False
        if self.say.said("connection"):
            self.reconnects += 1
        self.backoff.succeeded()
        self.connected = True
        self.say("connection", "connected to the plant")
        if self.on_change is not None:
            self.on_change(True)
        return True

    def lost(self, exc: Exception) -> None:
        self.connected = False
        self.backoff.failed()
        self.say("connection", f"plant connection lost, holding: {exc}", logging.WARNING)
        if self.on_change is not None:
            self.on_change(False)


@dataclass(frozen=True)
class BatchStatus:
    """Where the batch is this cycle (:class:`BatchTracker`).

    Attributes:
        state: the ISA-88 state code as read (NaN: unknown).
        executing: the batch executes and the agent has seen it start.
        batch_time_s: plant seconds into the batch (None: not executing).
        started / completed: this cycle saw the batch start / complete.
    """

    state: float
    executing: bool
    batch_time_s: float | None
    started: bool = False
    completed: bool = False


class BatchTracker:
    """The batch's start, time and completion from the plant's batch state and phase timer (pure:
    plant time passed in)."""

    def __init__(self) -> None:
        self.start_s: float | None = None
        self._last_state: float | None = None

    def reset(self) -> None:
        """The plant clock went back (a restarted plant): track the batch afresh."""
        self.start_s, self._last_state = None, None

    def update(self, state: float, batch_time_tag: float, now_s: float) -> BatchStatus:
        started = state == BATCH_EXECUTE and self._last_state != BATCH_EXECUTE and self.start_s is None
        if started:
            self.start_s = now_s
        completed = state == BATCH_COMPLETED and self._last_state == BATCH_EXECUTE
        if state != BATCH_EXECUTE and state != BATCH_HELD:
            self.start_s = None
        self._last_state = state
        executing = state == BATCH_EXECUTE and self.start_s is not None
        batch_time_s = None
        if executing:
            # The plant's phase timer when the tag map has one (right even if the agent joined
            # mid-batch); else the time since the agent saw the batch start.
            batch_time_s = batch_time_tag if math.isfinite(batch_time_tag) and batch_time_tag >= 0 else now_s - self.start_s
        return BatchStatus(state, executing, batch_time_s, started, completed)


class ModeSupervisor:
    """The agent's mode and the operator's requests (pure).

    The request standing at start-up is older than the agent: a lower one (manual, advisory) is
    obeyed at once, a standing automatic is not (an agent restarted by systemd must not re-enter
    automatic on the strength of an old request). Automatic is entered only on a request made
    after the agent started, i.e. a change of ``operator_mode_request`` it sees.

    Args:
        configured: the mode the configuration asks for (never started in automatic).
        say: a :class:`LogOnce`.
    """

    def __init__(self, configured: Mode, say: LogOnce) -> None:
        self.say = say
        self.mode: Mode = Mode.advisory if configured is Mode.automatic else configured
        self.previous: Mode = Mode.manual  # the mode of the last cycle
        self._request: float | None = None
        if configured is Mode.automatic:
            _log.info("agent.mode=automatic: starting in advisory; automatic on the operator's request "
                      "(operator_mode_request = 2) made after this start")

    def follow(self, request) -> None:
        """Follow the operator's ``operator_mode_request`` (0 manual, 1 advisory, 2 automatic)."""
        value = _number(request)
        if not math.isfinite(value):
            return
        mode = CODE_MODES.get(int(value)) if value == int(value) else None
        if self._request is None:
            self._request = value
            if mode is not None and MODE_CODES[mode] < MODE_CODES[self.mode]:
                self.mode = mode
                self.say("mode", f"the operator's standing request is {mode.value}: starting in {mode.value}")
            elif mode is Mode.automatic:
                self.say("mode", "the operator's standing request for automatic predates this agent: "
                         "request automatic again to enter it")
            return
        if value != self._request:
            self._request = value
            if mode is None:
                self.say("mode", f"operator_mode_request {value} is not 0, 1 or 2: ignored", logging.WARNING)
                return
            if mode is not self.mode:
                self.mode = mode
                self.say("mode", f"operator requested {mode.value} mode")

    def leave_automatic(self, message: str) -> None:
        """Out of automatic by the agent's own decision (a hand-back, a log that cannot be
        written): advisory, and automatic again only on a new request."""
        if self.mode is Mode.automatic:
            self.mode = Mode.advisory
            self.say("mode", message, logging.ERROR)

    def plant_restarted(self) -> None:
        if self.mode is Mode.automatic:
            self.previous = Mode.manual

    def cycle_done(self) -> None:
        self.previous = self.mode


class Recorder:
    """The recording fan-out: the decision log (each decision committed before its write, then
    its outcome), and the state an agent restarted within the batch continues from.

    Args:
        log: the decision log (None: not logged, e.g. benchmarks; writes are then not gated).
        state_path: JSON file of the plant state and the strategy's plan milestones (None: not
            persisted).
        say: a :class:`LogOnce`.
        inline: commit on the event loop's thread (a lockstep run, where nothing else waits for
            the loop: the hop to a thread and back cost more than the commit).
    """

    def __init__(self, log: DecisionLog | None, state_path: str | Path | None, say: LogOnce,
                 inline: bool = False) -> None:
        self.log, self.say, self.inline = log, say, inline
        self.state_path = Path(state_path) if state_path else None

    async def _call(self, fn, *args):
        return fn(*args) if self.inline else await asyncio.to_thread(fn, *args)

    async def decision(self, decision: Decision) -> int | None:
        """Commit a decision (off the loop unless ``inline``, in order): its id, 0 without a log,
        None when it could not be stored."""
        if self.log is None:
            return 0
        try:
            return await self._call(self.log.append, decision)  # one committed transaction (fsync)
        except DecisionLogError as exc:
            self.say("log", f"decision log: {exc}", logging.ERROR)
            return None

    async def outcome(self, decision_id: int, written: dict, failed: dict) -> None:
        if self.log is None:
            return
        try:
            await self._call(self.log.record_outcome, decision_id, written, failed)
        except DecisionLogError as exc:
            self.say("log", f"decision log: {exc}", logging.ERROR)

    def save_state(self, state: PlantState, memory: dict | None) -> None:
        """Persist the batch's state (atomically: a crash leaves the old or the new file)."""
        if self.state_path is None or state.batch_start_s is None:
            return
        record = {"state": state.to_dict(), "strategy": memory or {}}
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.state_path)
        except OSError as exc:
            self.say("state", f"cannot save the estimator state to {self.state_path}: {exc}", logging.WARNING)

    def load_state(self) -> tuple[PlantState | None, dict | None]:
        """The saved state and plan milestones (None, None: none, or unreadable: said so). The
        estimator carries them only into the batch they belong to."""
        if self.state_path is None or not self.state_path.is_file():
            return None, None
        try:
            record = json.loads(self.state_path.read_text())
            state = PlantState.from_dict(record["state"])
            memory = record.get("strategy") or {}
            if not isinstance(memory, dict):
                raise ValueError("strategy milestones are not a mapping")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _log.warning("ignoring the estimator state in %s (%s): starting the estimate afresh", self.state_path, exc)
            return None, None
        _log.info("estimator state found in %s (batch started at plant time %s s)", self.state_path,
                  f"{state.batch_start_s:.0f}" if state.batch_start_s is not None else "-")
        return state, memory


def chord_summary(chords) -> dict[str, float]:
    """The state's FBRM chord statistics (:class:`controller.state.ChordStatistics`) for the log;
    empty without them. Named as chords: a chord distribution is not the size distribution (a
    crystal of size L gives chords from 0 to L), and the log must not pass one for the other."""
    if chords is None:
        return {}
    return {"fbrm_chord_total_per_s": chords.total_per_s, "fbrm_chord_mean_um": chords.mean_size_um,
            "fbrm_chord_volume_mean_um": chords.volume_mean_size_um, "fbrm_chord_fines_fraction": chords.fines_fraction}


# ----------------------------------------------------------------------------- the loop
class Agent:
    """The control daemon (module docstring): the loop and the sequencing of one cycle,

        read -> estimate -> advise -> decide -> write -> record

    each a method of its own on the small parts above (connection, batch tracker, mode
    supervisor, recorder), the state estimator (:func:`controller.estimator.estimate`), the
    strategy and the guard (:func:`controller.guard.decide`).

    Args:
        io: plant connection (OPC UA, Modbus, or recorded data for replay).
        strategy: what proposes setpoints.
        settings: agent settings.
        log: decision log (None: not logged, e.g. in benchmarks).
        metrics: :class:`controller.metrics.AgentMetrics` or None.
        proposer: :class:`controller.proposer.ProposerWorker` or None (no background proposals).
        poll_interval_s: wall seconds between reads while waiting for the next cycle.
        measure_from_batch_s: also count cycles from this batch time on in ``window`` (a
            benchmark's measurement window); None: no window.
        stop_at_batch_s: stop once the batch time reaches this (benchmarks); None: never.
        replay: recorded data as fast as they can be read (``xtalpilot replay``): no waiting
            between instants, the model's answer and each proposal awaited before the next
            cycle (what happens within one control interval on a live plant), and the end of
            the recording ends the run.
        lockstep: the plant's clock moves only when the agent reads (an in-process plant,
            :class:`controller.lockstep_io.LockstepIO`): no waiting between reads, the model's
            answer and each proposal awaited within the cycle, as in replay; writes and mode
            requests as live. Replay implies it.
        ready: set once the first cycle is done (the agent has seen the standing operator
            request: a simulated operator's request after it is a new one).
        instruments: signal name -> :class:`controller.state.InstrumentSpec` (the process's
            instruments): noise floors and delays for validation.
        model: :class:`controller.model_client.ModelClient` (None: made from the strategy's
            ``service`` where it has one).
        facts: what the state estimator knows of the process (None: the strategy's ``facts``;
            without either the state has no solubility nor population).
        state_path: where the state survives an agent restart (None: not persisted).
    """

    def __init__(self, io: PlantIO, strategy: Strategy, settings: AgentSettings, log: DecisionLog | None = None,
                 metrics=None, proposer=None, poll_interval_s: float = 0.01,
                 measure_from_batch_s: float | None = None, stop_at_batch_s: float | None = None,
                 replay: bool = False, ready: asyncio.Event | None = None, instruments=DEFAULT_INSTRUMENTS,
                 model=None, facts: ProcessFacts | None = None, state_path: str | Path | None = None,
                 lockstep: bool = False) -> None:
        self.io, self.strategy, self.settings = io, strategy, settings
        self.replay = replay
        self.lockstep = lockstep or replay
        self.metrics, self.proposer = metrics, proposer
        self.poll_interval_s = poll_interval_s
        self.guard = guard_settings(io.tagmap, settings, tuple(getattr(strategy, "setpoints", (TEMPERATURE_SP,))))
        self.trackers = {n: SignalTracker(v) for n, v in validation_settings(io.tagmap, settings, instruments).items()}
        self._status_names = tuple(s.name for s in io.tagmap if s.kind is SignalKind.status)
        self._fbrm_bins = tuple(f"fbrm_counts_bin{k}_per_s" for k in range(1, len(settings.fbrm_bin_edges_um)))
        if not all(n in io.tagmap for n in self._fbrm_bins):
            self._fbrm_bins = ()
        self.say = LogOnce()
        self.connection = Connection(io, self.say, metrics.set_connection if metrics is not None else None)
        self.batch = BatchTracker()
        self.modes = ModeSupervisor(settings.mode, self.say)
        self.recorder = Recorder(log, state_path, self.say, inline=self.lockstep)
        service = getattr(strategy, "service", None)
        if model is None and service is not None:
            proposer_settings = getattr(strategy, "settings", None) or ProposerSettings()
            model = ModelClient(service, proposer_settings.model_refresh_s, proposer_settings.model_timeout_s,
                                proposer_settings.metastable_sigma_limit, getattr(strategy, "stirring_rpm", 300.0))
        self.model = model
        self.facts = facts if facts is not None else getattr(strategy, "facts", None)
        if self.facts is not None and self._fbrm_bins:
            self.facts = dataclasses.replace(self.facts, fbrm_bin_edges_um=tuple(settings.fbrm_bin_edges_um))
        self.state, memory = self.recorder.load_state()
        if memory and hasattr(strategy, "restore"):
            strategy.restore(memory)
        self.ready = ready
        self.report = AgentReport()
        # A second report of the cycles from this plant time on (benchmarks measure a window).
        self.window = AgentReport() if measure_from_batch_s is not None else None
        self._measure_from_s = measure_from_batch_s
        self._stop_at_batch_s = stop_at_batch_s
        self._batch_time_s: float | None = None
        self._in_window = False
        self._heartbeat = 0
        self._last_write_time_s: float | None = None
        self._last_plant_time_s: float | None = None
        self._proposing = False
        self._last_posed_s: float | None = None  # plant time of the last problem sent to the proposer
        self._start_sent = False
        self._complete_sent = False
        self._previous_remote_active: bool | None = None
        self._hold_since_s: float | None = None  # plant time the current continuous hold began
        self._speed_ref: tuple[float, float] | None = None  # (wall, plant) clocks of the last cycle
        self._speed = 1.0

    @property
    def mode(self) -> Mode:
        return self.modes.mode

    def request_mode(self, mode: Mode) -> None:
        """Change the mode from outside (CLI, tests)."""
        self.modes.mode = mode

    def _reports(self) -> tuple[AgentReport, ...]:
        return (self.report, self.window) if self._in_window else (self.report,)

    # ------------------------------------------------------------------ main
    async def run(self, stop: asyncio.Event) -> AgentReport:
        """Run until ``stop`` is set, the batch completes (``stop_after_batch``) or the plant time
        limit passes. Never raises on plant, data or model trouble."""
        if self.metrics is not None:
            self.metrics.set_mode(self.mode)
            self.metrics.set_connection(False)
        done = asyncio.Event()

        async def watch_stop() -> None:
            await stop.wait()
            done.set()

        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._control_loop(done))
                tg.create_task(self._lag_monitor(done))
                waiter = tg.create_task(watch_stop())
                await done.wait()
                waiter.cancel()
        finally:
            with contextlib.suppress(Exception):
                await self.io.close()
            if self.model is not None:
                self.model.close()
        self.report.reconnects = self.connection.reconnects
        if not self.report.stopped_by:
            self.report.stopped_by = "stop requested"
        _log.info("agent stopped (%s) after %d cycles; verdicts %s", self.report.stopped_by, self.report.cycles,
                  dict(self.report.verdicts))
        return self.report

    async def _lag_monitor(self, done: asyncio.Event) -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lag_ms = (time.perf_counter() - t0 - 0.01) * 1000.0
            for r in self._reports():
                r.loop_lag_ms_max = max(r.loop_lag_ms_max, lag_ms)

    async def _control_loop(self, done: asyncio.Event) -> None:
        interval = self.settings.control_interval_s
        next_due: float | None = None
        while not done.is_set():
            if not await self.connection.ensure():
                await asyncio.sleep(min(0.1, max(self.poll_interval_s, 0.01)))
                continue
            try:
                snap = await self.io.read()
            except PlantIOError as exc:
                if self.replay and getattr(self.io, "exhausted", False):
                    self.report.stopped_by = "end of recording"
                    done.set()
                    return
                self.connection.lost(exc)
                continue
            now = snap.plant_time_s
            if not math.isfinite(now):
                self.say("clock", "plant clock unreadable, holding", logging.WARNING)
                await asyncio.sleep(self.poll_interval_s)
                continue
            if self._last_plant_time_s is not None and now < self._last_plant_time_s - interval:
                self.say("clock", f"plant clock went back from {self._last_plant_time_s:.0f} s to {now:.0f} s "
                         "(plant restarted?): batch tracking starts over", logging.WARNING)
                next_due, self._last_write_time_s = None, None
                self.batch.reset()
                self.modes.plant_restarted()
            self._last_plant_time_s = now
            if next_due is None:
                next_due = now
            if now < next_due:
                if not self.lockstep:
                    await asyncio.sleep(self.poll_interval_s)
                continue
            missed = int((now - next_due) // interval)
            if missed > 0:
                for r in self._reports():
                    r.missed_cycles += missed
                self.say("missed", f"plant clock passed {missed} control interval(s) without a cycle", logging.WARNING)
            next_due += (missed + 1) * interval
            await self._cycle(snap)
            if self.ready is not None:
                self.ready.set()
            if self._should_stop(now):
                done.set()

    def _should_stop(self, now: float) -> bool:
        s = self.settings
        if s.stop_after_batch and self.report.batch_completed:
            self.report.stopped_by = "batch completed"
            return True
        if self._stop_at_batch_s is not None and (self._batch_time_s or 0.0) >= self._stop_at_batch_s:
            self.report.stopped_by = "batch time limit"
            return True
        if s.max_plant_time_s is not None and now >= s.max_plant_time_s:
            self.report.stopped_by = "plant time limit"
            return True
        return False

    # ------------------------------------------------------------------ one cycle
    async def _cycle(self, snap) -> None:
        t0 = time.perf_counter()
        stages: dict[str, float] = {}
        raw, validated, view, status = self._read(snap)
        stages["state"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        state, answer = self._estimate(view)
        advice = self._advise(state, answer)
        stages["strategy"] = time.perf_counter() - t1
        await self._dispatch(advice.problem)
        inp, verdict = self._decide(state, advice, raw)
        values = self._commands(verdict, raw, state.plant_time_s)
        shadow = self._shadow(inp) if self.replay and self.mode is not Mode.automatic else {}
        decision = Decision(
            plant_time_s=state.plant_time_s, mode=self.mode.value, reasons=tuple(r.value for r in verdict.reasons),
            held=verdict.held,
            # every validated measurement (NaN where not ok) and status tag, so a batch can be
            # replayed from the log
            inputs={**{n: v.value for n, v in validated.items()}, **status,
                    **chord_summary(state.chords), **dict(advice.inputs),
                    "batch_time_s": state.batch_time_s, "strategy": self.strategy.name, **shadow},
            signal_status={n: v.status.value for n, v in validated.items()},
            predictions=dict(advice.predictions), proposal=dict(advice.setpoints or {}), intent=dict(values))
        # Record before write: the decision and what it is about to write are committed first,
        # so no write is ever made that the log does not hold.
        decision_id = await self.recorder.decision(decision)
        if decision_id is None and values:
            # A log that cannot be written refuses automatic: nothing is written (the plant sheds
            # on the missing heartbeat).
            values = {}
            self.modes.leave_automatic("decision log cannot be written: automatic refused, agent now advisory; "
                                       "fix the log (disk, permissions) and request automatic again")
        t2 = time.perf_counter()
        written = await self._write(values, verdict, decision_id, state.plant_time_s)
        stages["write"] = time.perf_counter() - t2
        self._record(state, advice, verdict, validated, written, stages, time.perf_counter() - t0)

    def _read(self, snap):
        """Validate the snapshot and place the batch: (raw values, validated, view, status tags)."""
        now = snap.plant_time_s
        raw = {name: r.value for name, r in snap.readings.items()}
        validated = {name: tr.update(snap.readings.get(name), now) for name, tr in self.trackers.items()}
        batch = self.batch.update(_number(raw.get(signals.BATCH_STATE)), _number(raw.get(signals.BATCH_TIME)), now)
        if batch.started:
            self.say("batch", f"batch executing (plant time {now:.0f} s)")
        if batch.completed:
            self.report.batch_completed = True
            self.say("batch", f"batch completed (plant time {now:.0f} s)")
        if batch.state != BATCH_EXECUTE and batch.state != BATCH_HELD:
            self._complete_sent = False
        self._batch_time_s = batch.batch_time_s
        if (self.window is not None and not self._in_window and batch.batch_time_s is not None
                and batch.batch_time_s >= self._measure_from_s):
            self._in_window = True  # from this cycle on
        if not self.replay:  # shadow mode is fixed; the recording's HMI requests were for the plant's own loop
            self.modes.follow(raw.get(signals.OPERATOR_MODE_REQUEST))
        # Measurements as validated; status tags (batch state, facet {hkl} codes) as read.
        status = {n: _number(raw.get(n)) for n in self._status_names}
        view = PlantView(now, batch.batch_time_s, {**status, **{n: v.value for n, v in validated.items()}},
                         {**{n: math.isfinite(v) for n, v in status.items()}, **{n: v.ok for n, v in validated.items()}})
        return raw, validated, view, status

    def _estimate(self, view: PlantView) -> tuple[PlantState, ModelAnswer | None]:
        """This cycle's plant state (the model's newest laws in the population step), and the
        model asked again in the background when due."""
        answer = None
        if self.model is not None:
            if self.lockstep:
                self.model.wait()  # live, the model answers well within a control interval
            answer = self.model.answer()
        previous = self.state
        try:
            self.state = estimate(previous, view, answer.laws if answer is not None else None, self.facts)
        except Exception as exc:  # an estimator bug must not end the daemon: the measured part only
            self.say("estimator", f"state estimation failed: {type(exc).__name__}: {exc}", logging.ERROR)
            self.state = estimate(None, view, None, None)
        if self.model is not None:
            if previous is not None and previous.batch_id_s is not None and self.state.batch_id_s != previous.batch_id_s:
                self.model.reset()  # another batch: from the model's first answer
                answer = self.model.answer()
            self.model.ask(self.state)
        return self.state, answer

    def _advise(self, state: PlantState, answer: ModelAnswer | None) -> Advice:
        try:
            advice = self.strategy.advise(state, answer)
        except Exception as exc:  # a strategy bug must not end the daemon: hold on it
            self.say("strategy", f"strategy failed, holding: {type(exc).__name__}: {exc}", logging.ERROR)
            advice = Advice(None, None, model_ok=False)
        return advice

    async def _dispatch(self, problem) -> None:
        """A posed problem to the proposer when it is free (its answer applies from a later cycle)."""
        if problem is None or self.proposer is None or self._proposing:
            return
        interval = getattr(getattr(self.strategy, "settings", None), "resolve_interval_s", 0.0)
        if self._last_posed_s is not None and 0.0 <= problem.plant_time_s - self._last_posed_s < interval:
            return  # the plan was revised recently enough
        self._last_posed_s = problem.plant_time_s
        self._proposing = True
        if self.lockstep:  # awaited: the proposal applies from the next cycle, as it would live
            await self._propose(problem)
        else:
            self._tg.create_task(self._propose(problem))

    def _decide(self, state: PlantState, advice: Advice, raw: Mapping) -> tuple[GuardInput, object]:
        """The guard's verdict on the advice, and what follows from it (hand-back, hold clock)."""
        now = state.plant_time_s
        shed = _number(raw.get(signals.SHED_ACTIVE)) == 1.0
        source = _number(raw.get(signals.CONTROL_SOURCE))
        remote_active = None if not math.isfinite(source) else source == 1.0
        data_ok = advice.data_ok and all(state.view.ok.get(n, False) for n in REQUIRED if n in self.trackers)
        current = {s.name: _number(raw.get(s.name)) for s in self.guard.setpoints}
        batch_state = state.batch_state
        request = None  # batch commands are requests only an agent in automatic makes
        if self.mode is Mode.automatic and self.settings.start_batch and not self._start_sent and batch_state == BATCH_IDLE:
            request = BatchRequest.start
        elif self.mode is Mode.automatic and advice.complete_batch and state.executing and not self._complete_sent:
            request = BatchRequest.complete
        permissive = _number(raw.get("batch_permissive"))
        inp = GuardInput(
            mode=self.mode, previous_mode=self.modes.previous, plant_time_s=now, current=current,
            proposal=advice.setpoints, proposal_time_s=advice.proposal_time_s,
            last_write_time_s=self._last_write_time_s, data_ok=data_ok, model_ok=advice.model_ok,
            uncertainty=advice.uncertainty, plant_shed=shed, plant_executing=state.executing,
            heating_permitted=self.settings.allow_heating, reference=advice.reference,
            measured_sigma=state.sigma,
            model_age_s=_number(advice.predictions.get("model_age_s", 0.0)),
            remote_active=remote_active, previous_remote_active=self._previous_remote_active,
            batch_request=request, batch_permissive=permissive != 0.0,  # no permissive tag: permitted
            held_for_s=now - self._hold_since_s if self._hold_since_s is not None else 0.0,
        )
        verdict = decide(inp, self.guard)
        holding = verdict.held and any(r in HOLD_REASONS for r in verdict.reasons)
        self._hold_since_s = (self._hold_since_s if self._hold_since_s is not None else now) if holding else None
        if verdict.hand_back:
            self._hold_since_s = None
            self.report.handbacks += 1
            self.modes.leave_automatic(
                f"ALARM: setpoints held for {inp.held_for_s:.0f} s "
                f"({', '.join(r.value for r in verdict.reasons if r in HOLD_REASONS)}): loop handed back to "
                "the DCS, agent now advisory; request automatic again once the cause is cleared")
        self._previous_remote_active = remote_active if self.mode is Mode.automatic else None
        holds = [r.value for r in verdict.reasons if r in HOLD_REASONS]
        self.say("hold", f"holding setpoints: {', '.join(holds)}" if holds else "not holding",
                 logging.WARNING if holds else logging.INFO)
        if Reason.automatic_pending in verdict.reasons:
            self.say("mode", "automatic pending: waiting for the plant's remote cascade "
                     f"({'shed: re-entering' if shed else 'not yet remote'})", logging.WARNING)
        return inp, verdict

    def _shadow(self, inp: GuardInput) -> dict:
        """What the guard would have let through in automatic (shadow mode's answer). The
        recorded plant ran its own loop: its cascade and shed state say nothing of that."""
        would = decide(dataclasses.replace(inp, mode=Mode.automatic, previous_mode=Mode.automatic, plant_shed=False,
                                           remote_active=None, previous_remote_active=None), self.guard)
        return {"shadow_reasons": ",".join(r.value for r in would.reasons),
                **{f"would_write_{k}": v for k, v in would.write.items()}}

    def _commands(self, verdict, raw: Mapping, now: float) -> dict[str, float]:
        """Every tag this cycle writes: the guard's setpoints, a batch request it let through,
        the heartbeat and the agent's mode."""
        values: dict[str, float] = dict(verdict.write)
        if verdict.batch_command is BatchRequest.start:
            values[signals.BATCH_COMMAND] = float(BATCH_START)
            self._start_sent = True
            self.say("batch", f"starting the batch (agent.start_batch, plant time {now:.0f} s)")
        elif verdict.batch_command is BatchRequest.complete:
            values[signals.BATCH_COMMAND] = float(BATCH_COMPLETE)
            self._complete_sent = True
            self.say("batch", f"completing the batch: its product is done (plant time {now:.0f} s)")
        if verdict.heartbeat:
            self._heartbeat = (self._heartbeat + 1) % 65536
            values[signals.AGENT_HEARTBEAT] = float(self._heartbeat)
            # agent_mode = 2 with a live heartbeat is the plant's explicit re-entry after a shed
            if verdict.request_remote or _number(raw.get(signals.AGENT_MODE)) != MODE_CODES[Mode.automatic]:
                values[signals.AGENT_MODE] = float(MODE_CODES[Mode.automatic])
        elif self.modes.previous is Mode.automatic and self.mode is not Mode.automatic:
            values[signals.AGENT_MODE] = float(MODE_CODES[self.mode])  # hand the loop back, once
        return values

    async def _write(self, values: dict[str, float], verdict, decision_id: int | None, now: float) -> dict[str, float]:
        """Write ``values``; what the plant accepted (its outcome recorded under the decision)."""
        written: dict[str, float] = {}
        failed: dict[str, str] = {}
        if not values:
            return written
        try:
            outcomes = await self.io.write(values)
        except PlantIOError as exc:
            outcomes = {}
            self.connection.lost(exc)
        for name, value in values.items():
            outcome = outcomes.get(name)
            if outcome is not None and outcome.accepted:
                written[name] = value
                continue
            failed[name] = outcome.detail if outcome else "no answer"
            if name == signals.BATCH_COMMAND:  # try again next cycle
                if value == BATCH_START:
                    self._start_sent = False
                else:
                    self._complete_sent = False
            elif name in verdict.write:
                self.report.write_failures += 1
                self.say("write", f"write of {name} failed: {failed[name]}", logging.WARNING)
        if any(n in written for n in verdict.write):
            self._last_write_time_s = now
            for rep in self._reports():
                rep.writes += 1
        if decision_id is not None:
            await self.recorder.outcome(decision_id, written, failed)
        return written

    def _record(self, state: PlantState, advice: Advice, verdict, validated, written: dict, stages: dict,
                cycle_s: float) -> None:
        """After the write: the strategy learns what was written, the state is persisted, the
        reports and metrics count the cycle."""
        setpoints_written = {k: v for k, v in written.items() if k in verdict.write}
        if hasattr(self.strategy, "written"):
            self.strategy.written(setpoints_written, state.plant_time_s)
        memory = self.strategy.memory() if hasattr(self.strategy, "memory") else None
        self.recorder.save_state(state, memory)
        self.modes.cycle_done()
        for rep in self._reports():
            rep.cycles += 1
            rep.cycle_ms.append(cycle_s * 1000.0)
            for r in verdict.reasons:
                rep.verdicts[r.value] += 1
        wall_interval_s = self.settings.control_interval_s / max(self._speed_estimate(state.plant_time_s), 1e-9)
        overrun = cycle_s > wall_interval_s
        if overrun:
            for rep in self._reports():
                rep.overruns += 1
        if self.metrics is not None:
            m = self.metrics
            m.observe_cycle(cycle_s, stages, overrun)
            m.set_signals(validated)
            if advice.predictions:
                m.set_prediction({k: advice.predictions[k] for k in ("G_um_per_min", "log10_B", "lambda")
                                  if k in advice.predictions},
                                 {k[len("spread_"):]: v for k, v in advice.predictions.items() if k.startswith("spread_")})
            m.record_verdict(verdict.reasons, advice.setpoints, setpoints_written)
            m.set_mode("automatic_pending" if Reason.automatic_pending in verdict.reasons else self.mode)

    def _speed_estimate(self, now: float) -> float:
        """Plant seconds per wall second, from the last two cycles' clocks."""
        wall = time.monotonic()
        prev, self._speed_ref = self._speed_ref, (wall, now)
        if prev is None or wall <= prev[0] or now <= prev[1]:
            return self._speed
        self._speed = (now - prev[1]) / (wall - prev[0])
        return self._speed

    async def _propose(self, problem) -> None:
        t0 = time.perf_counter()
        try:
            proposal = await self.proposer.propose(problem)
        except Exception as exc:  # the worker died or the problem was bad: hold until the next one
            self.say("proposer", f"proposal failed: {type(exc).__name__}: {exc}", logging.WARNING)
        else:
            self.strategy.accept(proposal)
            self.say("proposer", "proposals flowing")
        finally:
            seconds = time.perf_counter() - t0
            for r in self._reports():
                r.proposal_s.append(seconds)
            if self.metrics is not None:
                self.metrics.observe_proposal(seconds)
            self._proposing = False


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan



# ----------------------------------------------------------------------------- wiring
def make_io(cfg):
    """The plant connection the config asks for."""
    from controller.plant_io import ModbusIO, OpcUaIO
    from controller.settings import Protocol

    a = cfg.agent
    tagmap = TagMap.from_dict(cfg.plant)
    if a.protocol is Protocol.modbus:
        return ModbusIO(tagmap, cfg.host, cfg.modbus_port)
    url = a.opcua_url or f"opc.tcp://{cfg.host}:{cfg.opcua_port}"
    security = None
    if a.client_certificate is not None:
        security = f"Basic256Sha256,SignAndEncrypt,{a.client_certificate},{a.client_key}"
    return OpcUaIO(tagmap, url, security=security, username=a.username, password=opcua_password(a),
                   subscribe=a.opcua_subscribe)


#: The environment variable the OPC UA password may come from (off the command line).
PASSWORD_ENV = "XTALPILOT_OPCUA_PASSWORD"


def opcua_password(agent_settings, environ=None) -> str | None:
    """The OPC UA password: from ``agent.password_file`` (its first line; the file must be
    readable by its owner only), else the environment (``XTALPILOT_OPCUA_PASSWORD``), else
    ``agent.password`` (with a warning: on a command line every user of the machine sees it).
    The password itself is never logged.

    Raises:
        SetupError: the file is missing, empty or readable by others.
    """
    import os
    import stat

    from controller.settings import SetupError

    environ = os.environ if environ is None else environ
    path = agent_settings.password_file
    if path:
        try:
            mode = os.stat(path).st_mode
            with open(path, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise SetupError(f"agent.password_file {path}: cannot read it ({exc.strerror})") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SetupError(f"agent.password_file {path} is readable by others (mode {stat.S_IMODE(mode):o}): "
                             f"chmod 600 {path}")
        if not password:
            raise SetupError(f"agent.password_file {path} is empty: the password goes on its first line")
        return password
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if agent_settings.password:
        _log.warning("the OPC UA password is given as agent.password: on a command line every user of this "
                     "machine can read it; use agent.password_file (mode 600) or %s", PASSWORD_ENV)
    return agent_settings.password


def material_constants(cfg):
    """The moment model's material: ``agent.material`` when set (built in), else the process's."""
    from controller.rollout import MaterialConstants

    a, p = cfg.agent, cfg.proposer
    if a.material:
        return MaterialConstants.for_material(a.material, antisolvent_coefficient=p.antisolvent_solubility_coefficient)
    return MaterialConstants.for_process(cfg.process, antisolvent_coefficient=p.antisolvent_solubility_coefficient)


def process_facts(cfg) -> ProcessFacts:
    """What the state estimator knows of the process: the recipe's seeding and charge, the
    material, the analyser's delay from the process's instruments (every strategy's state)."""
    from controller.estimator import EstimatorSettings
    from controller.strategy import BatchRecipe

    p = cfg.proposer
    return ProcessFacts.from_recipe(
        BatchRecipe.from_process(cfg.process), material_constants(cfg),
        concentration_delay_s=concentration_delay_s(cfg.agent, cfg.process.instruments),
        antisolvent_low_flow_cutoff_kg_per_min=p.antisolvent_low_flow_cutoff_kg_per_min,
        settings=EstimatorSettings(suspension_ref_kg_per_kg=p.nucleation_suspension_kg_per_kg))


def material_structure(material: str, data):
    """The :class:`models.graphs.CrystalStructure` of a material given as data with a structure
    file (``data``: its :class:`conf.contract.process.MaterialData`).

    Raises:
        SetupError: the file is missing, unreadable or not a cubic cell; says what to do.
    """
    from models.graphs import CrystalStructure

    # conf.schema.load_config has anchored a relative path beside the process file when it lies
    # there; otherwise it is the working directory's.
    path = Path(data.structure_file).expanduser()
    try:
        return CrystalStructure.from_file(path, material, data.lattice_energy_kj_per_mol,
                                          data.crystal_density_kg_per_m3)
    except ValueError as exc:
        prior = (" (or remove structure_file: the process's kinetics prior is then the model)"
                 if data.kinetics is not None else "")
        raise SetupError(f"process.material_data.structure_file: {exc}{prior}") from None


def make_baseline(cfg, recipe):
    """One of the strategies plants run today (:mod:`controller.baselines`), checked against the
    plant's instruments and the guard's permissions.

    Raises:
        SetupError: the strategy's measurement is not in the tag map, or it would need heating
            that the guard does not permit; says what to change.
    """
    from controller import baselines
    from controller.settings import StrategyName

    name, b = cfg.agent.strategy, cfg.baselines
    tagmap = TagMap.from_dict(cfg.plant)
    if name is StrategyName.natural_cooling:
        return baselines.NaturalCooling(recipe, b)
    if name is StrategyName.cubic_cooling:
        return baselines.CubicCooling(recipe, b)
    if name is StrategyName.supersaturation_control:
        if signals.CONCENTRATION not in tagmap:
            raise SetupError(f"supersaturation control feeds back on the concentration, and the tag map has no "
                             f"{signals.CONCENTRATION}: map the plant's analyser, or choose another agent.strategy")
        from controller.strategy import metastable_limit

        return baselines.SupersaturationControl(recipe, b, metastable_limit(cfg))
    if name is StrategyName.direct_nucleation_control:
        if not any(f"fbrm_counts_bin{k}_per_s" in tagmap for k in range(1, len(cfg.agent.fbrm_bin_edges_um))):
            raise SetupError("direct nucleation control feeds back on the FBRM counts, and the tag map has no "
                             "fbrm_counts_bin<k>_per_s channels: map the plant's FBRM, or choose another agent.strategy")
        if not cfg.agent.allow_heating:
            raise SetupError("direct nucleation control heats to dissolve fines: set agent.allow_heating=true "
                             "(where the DCS permits heating), or choose another agent.strategy")
        return baselines.DirectNucleationControl(recipe, b)
    raise SetupError(f"no strategy {name}")


def make_strategy(cfg, service=None):
    """The strategy the config names (the model-predictive one loads the model unless given)."""
    from controller.settings import StrategyName
    from controller.strategy import BatchRecipe, LinearCooling, ModelPredictive

    from conf.contract.materials import MATERIALS
    from controller.strategy import metastable_limit, product_target_um

    a, p = cfg.agent, cfg.proposer
    # One product specification: the process's where it gives one, else the proposer's default.
    p = dataclasses.replace(p, target_size_um=product_target_um(cfg))
    process = cfg.process
    recipe = BatchRecipe.from_process(process, p.target_size_um)
    if a.strategy is StrategyName.linear_cooling:
        return LinearCooling(recipe)
    if a.strategy is not StrategyName.model_predictive:
        return make_baseline(cfg, recipe)
    from controller.kinetics_service import KineticsService, PriorKinetics

    material = a.material or process.material
    data = process.material_data
    p = dataclasses.replace(p, metastable_sigma_limit=metastable_limit(cfg))
    if service is None:
        served = material
        if data is not None and material not in MATERIALS:
            if data.structure_file:
                # The MS-GNN serves a material given as data from its structure: the same graphs
                # and facet energetics as a built-in one (models.graphs.CrystalStructure).
                served = material_structure(material, data)
                _log.info("material %s is given as data: the MS-GNN serves it from %s (family %s)", material,
                          data.structure_file, served.family or "none of the built-in ones")
            elif data.kinetics is None:
                raise SetupError(f"material {material} is given as data with neither a structure for the MS-GNN nor "
                                 "a kinetics prior: give process.material_data.structure_file (and "
                                 "lattice_energy_kj_per_mol), or process.material_data.kinetics (the preset form of "
                                 "conf/kinetics), or run agent.strategy=linear_cooling")
            else:
                # No structure for the MS-GNN: the kinetics prior is the model (the estimator
                # corrects it online).
                _log.info("material %s is given as data with no structure: the process's kinetics prior is the "
                          "model", material)
                service = PriorKinetics(data.kinetics, data.crystal_density_kg_per_m3,
                                        p.nucleation_suspension_kg_per_kg)
        if service is None:
            service = KineticsService.load(a.checkpoint, served, a.device, grid_sigmas=tuple(p.grid_sigmas),
                                           grid_temperatures=p.grid_temperatures)
    tagmap = TagMap.from_dict(cfg.plant)
    sp = tagmap[TEMPERATURE_SP]
    max_rate = sp.max_rate_per_min if sp.max_rate_per_min is not None else 1.0
    low = sp.limits[0] if sp.limits is not None else sp.low
    max_antisolvent = 0.0
    if ANTISOLVENT_SP in tagmap and tagmap[ANTISOLVENT_SP].writable:
        anti = tagmap[ANTISOLVENT_SP]
        max_antisolvent = max(anti.limits[1] if anti.limits is not None else anti.high, 0.0)
    return ModelPredictive(recipe, service, material_constants(cfg), p, a.stirring_rpm,
                           # no heating moves: the moment model has no dissolution, so it cannot judge them
                           max_cooling_k_per_min=min(max_rate, 1.0), max_heating_k_per_min=0.0,
                           setpoint_low_c=low, max_antisolvent_kg_per_min=max_antisolvent,
                           concentration_delay_s=concentration_delay_s(a, process.instruments),
                           # the cascade's inner loop feeds back on the analyser: without one, moves
                           inner=cfg.baselines if signals.CONCENTRATION in tagmap else None,
                           specification=process.specification, cascade_heating=a.allow_heating)


def estimate_path(decision_log: str | Path) -> Path:
    """Where the agent keeps its estimator state beside a decision log (it survives a restart)."""
    return Path(decision_log).with_suffix(".estimate.json")


def discard_run_files(decision_log: str | Path) -> None:
    """Remove a decision log and the estimator state saved beside it, for a run that must start
    afresh (a benchmark's or demo's new plant): a state left from an earlier run of the same
    deterministic plant names the same batch (same start time), so the agent would resume it."""
    for path in (Path(decision_log), Path(f"{decision_log}-wal"), Path(f"{decision_log}-shm"),
                 estimate_path(decision_log)):
        path.unlink(missing_ok=True)


async def run_agent(cfg, stop: asyncio.Event | None = None, strategy=None, metrics_server: bool = True,
                    measure_from_batch_s: float | None = None, stop_at_batch_s: float | None = None,
                    io: PlantIO | None = None, ready: asyncio.Event | None = None) -> AgentReport:
    """``xtalpilot agent``: wire I/O, strategy, proposer, decision log and metrics, and run.

    SIGTERM and SIGINT set ``stop``; the agent then writes nothing more and returns. A given
    ``io`` replaces the configured plant connection; a recording (``RecordedIO``) runs the agent
    in replay mode (see :class:`Agent`).
    """
    import signal

    from controller.metrics import AgentMetrics
    from controller.proposer import ProposerWorker

    a = cfg.agent
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    io = io if io is not None else make_io(cfg)
    replay = hasattr(io, "exhausted")  # recorded data
    lockstep = replay or bool(getattr(io, "lockstep", False))  # an in-process plant (LockstepIO)
    for line in check_instruments(io.tagmap):
        _log.info("cannot see: %s", line)
    strategy = strategy or make_strategy(cfg)
    # Metrics nobody can scrape are not kept (the harness and replay: a tenth of a batch's time).
    metrics, server = None, None
    if metrics_server and a.metrics_port:
        metrics = AgentMetrics(io.tagmap.reactor)
        version = getattr(getattr(strategy, "service", None), "version", "") or "none"
        metrics.set_model(version, strategy=strategy.name)
        try:
            server = metrics.serve(cfg.host, a.metrics_port)
        except OSError as exc:
            raise PlantIOError(f"cannot serve metrics on {cfg.host}:{a.metrics_port} ({exc}); "
                               "set agent.metrics_port to a free port (0: no metrics)") from None
    proposer = None
    if strategy.name == "model_predictive":
        import torch

        # Small graphs gain nothing from intra-op threads, and the proposer's worker needs a
        # core of its own: measured on 2 cores, default threads gave cycle p99 ~200 ms.
        torch.set_num_threads(1)
        proposer = ProposerWorker(in_process=lockstep)
    # A simulated or replayed batch can be run again: its log need not outlive a power cut, and
    # an fsync per commit (two a cycle) was a tenth of a harness batch.
    log = DecisionLog(a.decision_log, durable=not lockstep)
    try:
        if proposer is not None:
            await proposer.warm_up()
        _log.info("agent %s on %s in %s mode, control interval %.0f s plant time, decision log %s%s",
                  strategy.name, a.protocol.value, a.mode.value, a.control_interval_s, a.decision_log,
                  f", metrics on http://{cfg.host}:{a.metrics_port}/metrics" if server is not None else "")
        # Everything loaded so far (torch, BoTorch, the model) lives as long as the daemon: move it
        # out of the collector's sight, or gen-2 collections stall the loop (the plant measured
        # ~175 ms pauses before doing the same, plant_sim/serve.py).
        gc.collect()
        gc.freeze()
        agent = Agent(io, strategy, a, log=log, metrics=metrics, proposer=proposer,
                      measure_from_batch_s=measure_from_batch_s, stop_at_batch_s=stop_at_batch_s,
                      replay=replay, lockstep=lockstep, poll_interval_s=0.0 if lockstep else 0.01, ready=ready,
                      state_path=estimate_path(a.decision_log),
                      instruments=cfg.process.instruments, facts=getattr(strategy, "facts", None) or process_facts(cfg))
        report = await agent.run(stop)
        if agent.window is not None:
            report.window = agent.window.summary()
        return report
    finally:
        log.close()
        if proposer is not None:
            proposer.close()
        if hasattr(strategy, "close"):
            strategy.close()
        if server is not None:
            server.shutdown()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
