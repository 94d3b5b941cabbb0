"""The daemon: ``xtalpilot agent`` closes the loop over OPC UA or Modbus (DESIGN.md, "One control cycle").

Sibling tasks in one ``asyncio.TaskGroup``:

- the control loop: reads the plant often, and runs a cycle each time ``control_interval_s`` of
  *plant* time has passed (a plant clock that jumps over an interval counts a missed cycle; a
  cycle longer than its interval's wall time counts an overrun): validate -> strategy (state,
  model) -> guard -> write -> decision log -> metrics;
- the proposer: whenever the strategy poses a problem and the worker process is free, the
  problem goes to the worker; its proposal applies from the next cycle after it arrives;
- a loop-lag monitor (how late a 10 ms sleep wakes up: what a stalled loop would show).

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
import gc
import logging
import math
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

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
from controller.strategy import ANTISOLVENT_SP, TEMPERATURE_SP, PlantView, Strategy

__all__ = ["Agent", "AgentReport", "check_instruments", "guard_settings", "validation_settings"]

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


def validation_settings(tagmap: TagMap, settings: AgentSettings) -> dict[str, ValidationSettings]:
    """Validation per measured signal from the tag map's ranges, the instruments' noise and the
    agent's time limits (controller.state.validation_settings_for)."""
    ranges = {s.name: (s.low, s.high) for s in tagmap
              if s.kind is SignalKind.measurement and s.name != "plant_time_s"}
    return validation_settings_for(ranges, DEFAULT_INSTRUMENTS, settings.stale_after_s, settings.stuck_after_s)


def concentration_delay_s(settings: AgentSettings) -> float:
    """How far the concentration analyser lags the reactor RTD as the agent reads them (s)."""
    return alignment_delay_s(DEFAULT_INSTRUMENTS["concentration_g_per_kg"], DEFAULT_INSTRUMENTS["reactor_temperature_c"],
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


class Agent:
    """The control daemon (module docstring).

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
        ready: set once the first cycle is done (the agent has seen the standing operator
            request: a simulated operator's request after it is a new one).
    """

    def __init__(self, io: PlantIO, strategy: Strategy, settings: AgentSettings, log: DecisionLog | None = None,
                 metrics=None, proposer=None, poll_interval_s: float = 0.01,
                 measure_from_batch_s: float | None = None, stop_at_batch_s: float | None = None,
                 replay: bool = False, ready: asyncio.Event | None = None) -> None:
        self.io, self.strategy, self.settings = io, strategy, settings
        self.replay = replay
        self.decision_log, self.metrics, self.proposer = log, metrics, proposer
        self.poll_interval_s = poll_interval_s
        self.guard = guard_settings(io.tagmap, settings, tuple(getattr(strategy, "setpoints", (TEMPERATURE_SP,))))
        self._complete_sent = False
        self.trackers = {n: SignalTracker(v) for n, v in validation_settings(io.tagmap, settings).items()}
        self._status_names = tuple(s.name for s in io.tagmap if s.kind is SignalKind.status)
        self._fbrm_bins = tuple(f"fbrm_counts_bin{k}_per_s" for k in range(1, len(settings.fbrm_bin_edges_um)))
        if not all(n in io.tagmap for n in self._fbrm_bins):
            self._fbrm_bins = ()
        # Never automatic at start: only on an operator request newer than the agent (see
        # _follow_mode_request).
        self.mode: Mode = Mode.advisory if settings.mode is Mode.automatic else settings.mode
        if settings.mode is Mode.automatic:
            _log.info("agent.mode=automatic: starting in advisory; automatic on the operator's request "
                      "(operator_mode_request = 2) made after this start")
        self.ready = ready
        self.previous_mode: Mode = Mode.manual
        self.report = AgentReport()
        # A second report of the cycles from this plant time on (benchmarks measure a window).
        self.window = AgentReport() if measure_from_batch_s is not None else None
        self._measure_from_s = measure_from_batch_s
        self._stop_at_batch_s = stop_at_batch_s
        self._batch_time_s: float | None = None
        self._in_window = False
        self._mode_request: float | None = None
        self._heartbeat = 0
        self._last_write_time_s: float | None = None
        self._batch_start_s: float | None = None
        self._last_batch_state: float | None = None
        self._last_plant_time_s: float | None = None
        self._proposing = False
        self._start_sent = False
        self._said: dict[str, str] = {}
        self._backoff = Backoff()
        self._connected = False
        self._previous_remote_active: bool | None = None
        self._hold_since_s: float | None = None  # plant time the current continuous hold began
        self._speed_ref: tuple[float, float] | None = None  # (wall, plant) clocks of the last cycle
        self._speed = 1.0

    def _reports(self) -> tuple[AgentReport, ...]:
        return (self.report, self.window) if self._in_window else (self.report,)

    # ------------------------------------------------------------------ logging once
    def _say(self, topic: str, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` only when it differs from the last one on ``topic``."""
        if self._said.get(topic) != message:
            self._said[topic] = message
            _log.log(level, message)

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

    async def _ensure_connected(self) -> bool:
        if self._connected:
            return True
        if not self._backoff.ready():
            return False
        try:
            await self.io.connect()
        except PlantIOError as exc:
            delay = self._backoff.failed()
            self._say("connection", f"plant unreachable, holding; retrying with backoff (next in {delay:.1f} s): {exc}",
                      logging.WARNING)
            return False
        if "connection" in self._said:
            self.report.reconnects += 1
        self._backoff.succeeded()
        self._connected = True
        self._say("connection", "connected to the plant")
        if self.metrics is not None:
            self.metrics.set_connection(True)
        return True

    def _lost(self, exc: Exception) -> None:
        self._connected = False
        self._backoff.failed()
        self._say("connection", f"plant connection lost, holding: {exc}", logging.WARNING)
        if self.metrics is not None:
            self.metrics.set_connection(False)

    async def _control_loop(self, done: asyncio.Event) -> None:
        interval = self.settings.control_interval_s
        next_due: float | None = None
        while not done.is_set():
            if not await self._ensure_connected():
                await asyncio.sleep(min(0.1, max(self.poll_interval_s, 0.01)))
                continue
            try:
                snap = await self.io.read()
            except PlantIOError as exc:
                if self.replay and getattr(self.io, "exhausted", False):
                    self.report.stopped_by = "end of recording"
                    done.set()
                    return
                self._lost(exc)
                continue
            now = snap.plant_time_s
            if not math.isfinite(now):
                self._say("clock", "plant clock unreadable, holding", logging.WARNING)
                await asyncio.sleep(self.poll_interval_s)
                continue
            if self._last_plant_time_s is not None and now < self._last_plant_time_s - interval:
                self._say("clock", f"plant clock went back from {self._last_plant_time_s:.0f} s to {now:.0f} s "
                          "(plant restarted?): batch tracking starts over", logging.WARNING)
                next_due, self._batch_start_s, self._last_batch_state = None, None, None
                self._last_write_time_s = None
                self.previous_mode = Mode.manual if self.mode is Mode.automatic else self.previous_mode
            self._last_plant_time_s = now
            if next_due is None:
                next_due = now
            if now < next_due:
                if not self.replay:
                    await asyncio.sleep(self.poll_interval_s)
                continue
            missed = int((now - next_due) // interval)
            if missed > 0:
                for r in self._reports():
                    r.missed_cycles += missed
                self._say("missed", f"plant clock passed {missed} control interval(s) without a cycle",
                          logging.WARNING)
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
        now = snap.plant_time_s
        stages: dict[str, float] = {}
        raw = {name: r.value for name, r in snap.readings.items()}
        validated = {name: tr.update(snap.readings.get(name), now) for name, tr in self.trackers.items()}
        stages["state"] = time.perf_counter() - t0

        batch_state = _number(raw.get(signals.BATCH_STATE))
        if batch_state == BATCH_EXECUTE and self._last_batch_state != BATCH_EXECUTE and self._batch_start_s is None:
            self._batch_start_s = now
            self._say("batch", f"batch executing (plant time {now:.0f} s)")
        if batch_state == BATCH_COMPLETED and self._last_batch_state == BATCH_EXECUTE:
            self.report.batch_completed = True
            self._say("batch", f"batch completed (plant time {now:.0f} s)")
        if batch_state != BATCH_EXECUTE and batch_state != BATCH_HELD:
            self._batch_start_s = None
            self._complete_sent = False
        self._last_batch_state = batch_state
        executing = batch_state == BATCH_EXECUTE and self._batch_start_s is not None
        batch_time_s = None
        if executing:
            # The plant's phase timer when the tag map has one (right even if the agent joined
            # mid-batch); else the time since the agent saw the batch start.
            tag = _number(raw.get(signals.BATCH_TIME))
            batch_time_s = tag if math.isfinite(tag) and tag >= 0 else now - self._batch_start_s
        self._batch_time_s = batch_time_s
        if (self.window is not None and not self._in_window and batch_time_s is not None
                and batch_time_s >= self._measure_from_s):
            self._in_window = True  # from this cycle on

        if not self.replay:  # shadow mode is fixed; the recording's HMI requests were for the plant's own loop
            self._follow_mode_request(raw.get(signals.OPERATOR_MODE_REQUEST))
        shed = _number(raw.get(signals.SHED_ACTIVE)) == 1.0
        source = _number(raw.get(signals.CONTROL_SOURCE))
        remote_active = None if not math.isfinite(source) else source == 1.0

        # Measurements as validated; status tags (batch state, facet {hkl} codes) as read.
        status = {n: _number(raw.get(n)) for n in self._status_names}
        view = PlantView(now, batch_time_s, {**status, **{n: v.value for n, v in validated.items()}},
                         {**{n: math.isfinite(v) for n, v in status.items()}, **{n: v.ok for n, v in validated.items()}})
        t1 = time.perf_counter()
        if self.replay and hasattr(self.strategy, "wait_for_model"):
            self.strategy.wait_for_model()  # live, the model answers well within a control interval
        try:
            advice = self.strategy.advise(view)
        except Exception as exc:  # a strategy bug must not end the daemon: hold on it
            self._say("strategy", f"strategy failed, holding: {type(exc).__name__}: {exc}", logging.ERROR)
            from controller.strategy import Advice

            advice = Advice(None, None, model_ok=False)
        stages["strategy"] = time.perf_counter() - t1
        if advice.problem is not None and self.proposer is not None and not self._proposing:
            self._proposing = True
            if self.replay:  # the proposal applies from the next cycle, as it would live
                await self._propose(advice.problem)
            else:
                self._tg.create_task(self._propose(advice.problem))

        data_ok = advice.data_ok and all(validated[n].ok for n in REQUIRED if n in validated)
        current = {s.name: _number(raw.get(s.name)) for s in self.guard.setpoints}
        request = None  # batch commands are requests only an agent in automatic makes
        if self.mode is Mode.automatic and self.settings.start_batch and not self._start_sent and batch_state == BATCH_IDLE:
            request = BatchRequest.start
        elif self.mode is Mode.automatic and advice.complete_batch and executing and not self._complete_sent:
            request = BatchRequest.complete
        permissive = _number(raw.get("batch_permissive"))
        inp = GuardInput(
            mode=self.mode, previous_mode=self.previous_mode, plant_time_s=now, current=current,
            proposal=advice.setpoints, proposal_time_s=advice.proposal_time_s,
            last_write_time_s=self._last_write_time_s, data_ok=data_ok, model_ok=advice.model_ok,
            uncertainty=advice.uncertainty, plant_shed=shed, plant_executing=executing,
            heating_permitted=self.settings.allow_heating, reference=advice.reference,
            measured_sigma=_number(advice.inputs.get("sigma")),
            model_age_s=_number(advice.predictions.get("model_age_s", 0.0)),
            remote_active=remote_active, previous_remote_active=self._previous_remote_active,
            batch_request=request, batch_permissive=permissive != 0.0,  # no permissive tag: permitted
            held_for_s=now - self._hold_since_s if self._hold_since_s is not None else 0.0,
        )
        verdict = decide(inp, self.guard)
        holding = verdict.held and any(r in HOLD_REASONS for r in verdict.reasons)
        self._hold_since_s = (self._hold_since_s if self._hold_since_s is not None else now) if holding else None
        if verdict.hand_back:
            self.mode, self._hold_since_s = Mode.advisory, None
            self.report.handbacks += 1
            self._say("mode", f"ALARM: setpoints held for {inp.held_for_s:.0f} s "
                      f"({', '.join(r.value for r in verdict.reasons if r in HOLD_REASONS)}): loop handed back to "
                      "the DCS, agent now advisory; request automatic again once the cause is cleared",
                      logging.ERROR)
        self._previous_remote_active = remote_active if self.mode is Mode.automatic else None
        shadow: dict = {}
        if self.replay and self.mode is not Mode.automatic:
            # What the guard would have let through in automatic (shadow mode's answer).
            # The recorded plant ran its own loop: its cascade and shed state say nothing of that.
            would = decide(dataclasses.replace(inp, mode=Mode.automatic, previous_mode=Mode.automatic, plant_shed=False,
                                               remote_active=None, previous_remote_active=None), self.guard)
            shadow = {"shadow_reasons": ",".join(r.value for r in would.reasons),
                      **{f"would_write_{k}": v for k, v in would.write.items()}}
        holds = [r.value for r in verdict.reasons if r in HOLD_REASONS]
        self._say("hold", f"holding setpoints: {', '.join(holds)}" if holds else "not holding",
                  logging.WARNING if holds else logging.INFO)
        pending = Reason.automatic_pending in verdict.reasons
        if pending:
            self._say("mode", "automatic pending: waiting for the plant's remote cascade "
                      f"({'shed: re-entering' if shed else 'not yet remote'})", logging.WARNING)

        values: dict[str, float] = dict(verdict.write)
        if verdict.batch_command is BatchRequest.start:
            values[signals.BATCH_COMMAND] = float(BATCH_START)
            self._start_sent = True
            self._say("batch", f"starting the batch (agent.start_batch, plant time {now:.0f} s)")
        elif verdict.batch_command is BatchRequest.complete:
            values[signals.BATCH_COMMAND] = float(BATCH_COMPLETE)
            self._complete_sent = True
            self._say("batch", f"completing the batch: its product is done (plant time {now:.0f} s)")
        if verdict.heartbeat:
            self._heartbeat = (self._heartbeat + 1) % 65536
            values[signals.AGENT_HEARTBEAT] = float(self._heartbeat)
            # agent_mode = 2 with a live heartbeat is the plant's explicit re-entry after a shed
            if verdict.request_remote or _number(raw.get(signals.AGENT_MODE)) != MODE_CODES[Mode.automatic]:
                values[signals.AGENT_MODE] = float(MODE_CODES[Mode.automatic])
        elif self.previous_mode is Mode.automatic and self.mode is not Mode.automatic:
            values[signals.AGENT_MODE] = float(MODE_CODES[self.mode])  # hand the loop back, once
        # Record before write: the decision and what it is about to write are committed first,
        # so no write is ever made that the log does not hold. A log that cannot be written
        # refuses automatic: nothing is written (the plant sheds on the missing heartbeat).
        decision = Decision(
            plant_time_s=now, mode=self.mode.value, reasons=tuple(r.value for r in verdict.reasons),
            held=verdict.held,
            # every validated measurement (NaN where not ok) and status tag, so a batch can be
            # replayed from the log
            inputs={**{n: v.value for n, v in validated.items()}, **status, **self._chords(validated),
                    **dict(advice.inputs),
                    "batch_time_s": view.batch_time_s, "strategy": self.strategy.name, **shadow},
            signal_status={n: v.status.value for n, v in validated.items()},
            predictions=dict(advice.predictions),
            proposal=dict(advice.setpoints or {}),
            intent=dict(values),
        )
        decision_id = await self._record(decision)
        if decision_id is None and values:
            values = {}
            if self.mode is Mode.automatic:
                self.mode = Mode.advisory
                self._say("mode", "decision log cannot be written: automatic refused, agent now advisory; "
                          "fix the log (disk, permissions) and request automatic again", logging.ERROR)
        t2 = time.perf_counter()
        written: dict[str, float] = {}
        failed: dict[str, str] = {}
        if values:
            try:
                outcomes = await self.io.write(values)
            except PlantIOError as exc:
                outcomes = {}
                self._lost(exc)
            for name, value in values.items():
                outcome = outcomes.get(name)
                if outcome is not None and outcome.accepted:
                    written[name] = value
                    continue
                failed[name] = outcome.detail if outcome else "no answer"
                if name == "batch_command":  # try again next cycle
                    if value == BATCH_START:
                        self._start_sent = False
                    else:
                        self._complete_sent = False
                elif name in verdict.write:
                    self.report.write_failures += 1
                    self._say("write", f"write of {name} failed: {failed[name]}", logging.WARNING)
            if any(n in written for n in verdict.write):
                self._last_write_time_s = now
                for rep in self._reports():
                    rep.writes += 1
            if decision_id is not None:
                await self._record_outcome(decision_id, written, failed)
        if hasattr(self.strategy, "written"):
            self.strategy.written({k: v for k, v in written.items() if k in verdict.write}, now)
        stages["write"] = time.perf_counter() - t2
        cycle_s = time.perf_counter() - t0
        self.previous_mode = self.mode
        for rep in self._reports():
            rep.cycles += 1
            rep.cycle_ms.append(cycle_s * 1000.0)
            for r in verdict.reasons:
                rep.verdicts[r.value] += 1
        wall_interval_s = self.settings.control_interval_s / max(self._speed_estimate(now), 1e-9)
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
            m.record_verdict(verdict.reasons, advice.setpoints, {k: v for k, v in written.items() if k in verdict.write})
            m.set_mode("automatic_pending" if pending else self.mode)

    async def _record(self, decision: Decision) -> int | None:
        """Commit a decision (off the loop, still in order); None when it could not be stored, or
        when there is no log (benchmarks: writes are then not gated on it)."""
        if self.decision_log is None:
            return 0
        try:
            # one committed transaction (fsync) per decision
            return await asyncio.to_thread(self.decision_log.append, decision)
        except DecisionLogError as exc:
            self._say("log", f"decision log: {exc}", logging.ERROR)
            return None

    async def _record_outcome(self, decision_id: int, written: dict, failed: dict) -> None:
        if self.decision_log is None:
            return
        try:
            await asyncio.to_thread(self.decision_log.record_outcome, decision_id, written, failed)
        except DecisionLogError as exc:
            self._say("log", f"decision log: {exc}", logging.ERROR)

    def _chords(self, validated) -> dict[str, float]:
        """Chord statistics of the FBRM bins (state.chord_statistics); empty without the bins."""
        if not self._fbrm_bins:
            return {}
        from controller.state import chord_statistics

        counts = [validated[n].value if validated[n].ok else math.nan for n in self._fbrm_bins]
        stats = chord_statistics(counts, self.settings.fbrm_bin_edges_um)
        # Chord statistics, named so: a chord distribution is not the size distribution (a
        # crystal of size L gives chords from 0 to L), and the log must not pass one for the other.
        return {"fbrm_chord_total_per_s": stats.total_per_s, "fbrm_chord_mean_um": stats.mean_size_um,
                "fbrm_chord_volume_mean_um": stats.volume_mean_size_um,
                "fbrm_chord_fines_fraction": stats.fines_fraction}

    def _speed_estimate(self, now: float) -> float:
        """Plant seconds per wall second, from the last two cycles' clocks."""
        wall = time.monotonic()
        prev, self._speed_ref = self._speed_ref, (wall, now)
        if prev is None or wall <= prev[0] or now <= prev[1]:
            return self._speed
        self._speed = (now - prev[1]) / (wall - prev[0])
        return self._speed

    def _follow_mode_request(self, request) -> None:
        """Follow the operator's ``operator_mode_request`` (0 manual, 1 advisory, 2 automatic).

        The request standing at start-up is older than the agent: a lower one (manual,
        advisory) is obeyed at once, a standing automatic is not (an agent restarted by systemd
        must not re-enter automatic on the strength of an old request). Automatic is entered only
        on a request made after the agent started, i.e. a change of the tag it sees."""
        value = _number(request)
        if not math.isfinite(value):
            return
        mode = CODE_MODES.get(int(value)) if value == int(value) else None
        if self._mode_request is None:
            self._mode_request = value
            if mode is not None and MODE_CODES[mode] < MODE_CODES[self.mode]:
                self.mode = mode
                self._say("mode", f"the operator's standing request is {mode.value}: starting in {mode.value}")
            elif mode is Mode.automatic:
                self._say("mode", "the operator's standing request for automatic predates this agent: "
                          "request automatic again to enter it")
            return
        if value != self._mode_request:
            self._mode_request = value
            if mode is None:
                self._say("mode", f"operator_mode_request {value} is not 0, 1 or 2: ignored", logging.WARNING)
                return
            if mode is not self.mode:
                self.mode = mode
                self._say("mode", f"operator requested {mode.value} mode")

    def request_mode(self, mode: Mode) -> None:
        """Change the mode from outside (CLI, tests)."""
        self.mode = mode

    async def _propose(self, problem) -> None:
        t0 = time.perf_counter()
        try:
            proposal = await self.proposer.propose(problem)
        except Exception as exc:  # the worker died or the problem was bad: hold until the next one
            self._say("proposer", f"proposal failed: {type(exc).__name__}: {exc}", logging.WARNING)
        else:
            self.strategy.accept(proposal)
            self._say("proposer", "proposals flowing")
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
    return OpcUaIO(tagmap, url, security=security, username=a.username, password=a.password,
                   subscribe=a.opcua_subscribe)


def make_strategy(cfg, service=None):
    """The strategy the config names (the model-predictive one loads the model unless given)."""
    from controller.rollout import MaterialConstants
    from controller.settings import StrategyName
    from controller.strategy import BatchRecipe, LinearCooling, ModelPredictive

    from conf.contract.materials import MATERIALS
    from controller.strategy import product_target_um

    a, p = cfg.agent, cfg.proposer
    # One product specification: the process's where it gives one, else the proposer's default.
    p = dataclasses.replace(p, target_size_um=product_target_um(cfg))
    recipe = BatchRecipe.from_scenario(cfg.scenario, p.target_size_um)
    if a.strategy is StrategyName.linear_cooling:
        return LinearCooling(recipe)
    from controller.kinetics_service import KineticsService, PriorKinetics

    material = a.material or cfg.scenario.material
    data = cfg.scenario.material_data
    if data is not None and data.metastable_sigma_limit > 0:
        p = dataclasses.replace(p, metastable_sigma_limit=data.metastable_sigma_limit)
    if service is None:
        if data is not None and material not in MATERIALS:
            # A material given only as data has no structure for the MS-GNN: its kinetics prior
            # is the model (the estimator corrects it online).
            _log.info("material %s is given as data: the process's kinetics prior is the model", material)
            service = PriorKinetics(data.kinetics, data.crystal_density_kg_per_m3, p.nucleation_suspension_kg_per_kg)
        else:
            service = KineticsService.load(a.checkpoint, material, a.device, grid_sigmas=tuple(p.grid_sigmas),
                                           grid_temperatures=p.grid_temperatures)
    tagmap = TagMap.from_dict(cfg.plant)
    sp = tagmap[TEMPERATURE_SP]
    max_rate = sp.max_rate_per_min if sp.max_rate_per_min is not None else 1.0
    low = sp.limits[0] if sp.limits is not None else sp.low
    max_antisolvent = 0.0
    if ANTISOLVENT_SP in tagmap and tagmap[ANTISOLVENT_SP].writable:
        anti = tagmap[ANTISOLVENT_SP]
        max_antisolvent = max(anti.limits[1] if anti.limits is not None else anti.high, 0.0)
    constants = (MaterialConstants.for_material(a.material, antisolvent_coefficient=p.antisolvent_solubility_coefficient)
                 if a.material else
                 MaterialConstants.for_process(cfg.scenario, antisolvent_coefficient=p.antisolvent_solubility_coefficient))
    return ModelPredictive(recipe, service, constants, p, a.stirring_rpm,
                           # no heating moves: the moment model has no dissolution, so it cannot judge them
                           max_cooling_k_per_min=min(max_rate, 1.0), max_heating_k_per_min=0.0,
                           setpoint_low_c=low, max_antisolvent_kg_per_min=max_antisolvent,
                           state_path=str(Path(a.decision_log).with_suffix(".estimate.json")),
                           concentration_delay_s=concentration_delay_s(a))


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
    for line in check_instruments(io.tagmap):
        _log.info("cannot see: %s", line)
    strategy = strategy or make_strategy(cfg)
    metrics = AgentMetrics(io.tagmap.reactor)
    version = getattr(getattr(strategy, "service", None), "version", "") or "none"
    metrics.set_model(version, strategy=strategy.name)
    server = None
    if metrics_server and a.metrics_port:
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
        proposer = ProposerWorker()
    log = DecisionLog(a.decision_log)
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
                      replay=replay, poll_interval_s=0.0 if replay else 0.01, ready=ready)
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
