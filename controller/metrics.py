"""Prometheus metrics of the agent (prometheus-client), following Prometheus naming.

Base units with unit suffixes (``_seconds``, ``_celsius``), ``_total`` on counters, and only
low-cardinality labels: ``reactor``, ``signal``, ``stage``, ``reason``, ``setpoint``,
``target``, ``status``. Each :class:`AgentMetrics` owns its registry, so tests and several
agents in one process do not collide; :meth:`AgentMetrics.serve` exposes it over HTTP.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

__all__ = ["AgentMetrics", "SIGNAL_STATUSES"]

SIGNAL_STATUSES = ("ok", "missing", "bad_quality", "not_finite", "stale", "out_of_range", "spike", "stuck")
_CYCLE_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_PROPOSAL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


class AgentMetrics:
    """All metrics of one agent driving one reactor.

    Args:
        reactor: the reactor's name (a label on every series).
    """

    def __init__(self, reactor: str) -> None:
        self.reactor = reactor
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycle_seconds = Histogram("xtalpilot_cycle_duration_seconds", "Control cycle, read to write",
                                       ["reactor"], buckets=_CYCLE_BUCKETS_S, registry=r)
        self.stage_seconds = Histogram("xtalpilot_stage_duration_seconds", "Duration of one stage of a cycle",
                                       ["reactor", "stage"], buckets=_CYCLE_BUCKETS_S, registry=r)
        self.proposal_seconds = Histogram("xtalpilot_proposal_duration_seconds", "BoTorch proposal duration",
                                          ["reactor"], buckets=_PROPOSAL_BUCKETS_S, registry=r)
        self.overruns = Counter("xtalpilot_cycle_overruns_total", "Cycles that overran their interval",
                                ["reactor"], registry=r)
        self.signal_value = Gauge("xtalpilot_signal_value", "Filtered value of a measured signal (its tag-map unit)",
                                  ["reactor", "signal"], registry=r)
        self.signal_status = Gauge("xtalpilot_signal_status", "1 for the signal's current validation status",
                                   ["reactor", "signal", "status"], registry=r)
        self.prediction = Gauge("xtalpilot_predicted_kinetics", "Model prediction (G um/min, log10 B, lambda)",
                                ["reactor", "target"], registry=r)
        self.uncertainty = Gauge("xtalpilot_prediction_uncertainty", "Ensemble spread (log10 G, log10 B, lambda)",
                                 ["reactor", "target"], registry=r)
        self.proposed = Gauge("xtalpilot_setpoint_proposed", "Proposed setpoint", ["reactor", "setpoint"], registry=r)
        self.written = Gauge("xtalpilot_setpoint_written", "Last written setpoint", ["reactor", "setpoint"],
                             registry=r)
        self.verdicts = Counter("xtalpilot_guard_verdicts_total", "Guard verdicts by reason", ["reactor", "reason"],
                                registry=r)
        self.connected = Gauge("xtalpilot_plant_connected", "1 while the plant connection is up", ["reactor"],
                               registry=r)
        self.mode = Gauge("xtalpilot_mode", "1 for the agent's current mode", ["reactor", "mode"], registry=r)
        self.model_info = Info("xtalpilot_model", "The model in use", ["reactor"], registry=r)

    # ------------------------------------------------------------------ updates
    def observe_cycle(self, total_s: float, stages_s: Mapping[str, float] | None = None, overrun: bool = False) -> None:
        self.cycle_seconds.labels(self.reactor).observe(total_s)
        for stage, seconds in (stages_s or {}).items():
            self.stage_seconds.labels(self.reactor, stage).observe(seconds)
        if overrun:
            self.overruns.labels(self.reactor).inc()

    def observe_proposal(self, seconds: float) -> None:
        self.proposal_seconds.labels(self.reactor).observe(seconds)

    def set_signals(self, validated: Mapping[str, object]) -> None:
        """``validated``: signal -> :class:`controller.state.Validated`."""
        for name, v in validated.items():
            value = float(getattr(v, "value", math.nan))
            self.signal_value.labels(self.reactor, name).set(value)
            status = str(getattr(getattr(v, "status", None), "value", getattr(v, "status", "")))
            for s in SIGNAL_STATUSES:
                self.signal_status.labels(self.reactor, name, s).set(1.0 if s == status else 0.0)

    def set_prediction(self, values: Mapping[str, float], spread: Mapping[str, float]) -> None:
        for target, value in values.items():
            self.prediction.labels(self.reactor, target).set(float(value))
        for target, value in spread.items():
            self.uncertainty.labels(self.reactor, target).set(float(value))

    def record_verdict(self, reasons: Iterable[object], proposal: Mapping[str, float] | None,
                       written: Mapping[str, float]) -> None:
        for reason in reasons:
            self.verdicts.labels(self.reactor, str(getattr(reason, "value", reason))).inc()
        for name, value in (proposal or {}).items():
            try:
                self.proposed.labels(self.reactor, name).set(float(value))
            except (TypeError, ValueError):
                self.proposed.labels(self.reactor, name).set(math.nan)
        for name, value in written.items():
            self.written.labels(self.reactor, name).set(float(value))

    def set_connection(self, up: bool) -> None:
        self.connected.labels(self.reactor).set(1.0 if up else 0.0)

    def set_mode(self, mode: object, modes: Iterable[str] = ("manual", "advisory", "automatic", "automatic_pending")) -> None:
        current = str(getattr(mode, "value", mode))
        for m in modes:
            self.mode.labels(self.reactor, m).set(1.0 if m == current else 0.0)

    def set_model(self, version: str, **details: str) -> None:
        self.model_info.labels(self.reactor).info({"version": version, **{k: str(v) for k, v in details.items()}})

    # ------------------------------------------------------------------ exposition
    def serve(self, host: str = "127.0.0.1", port: int = 9108):
        """Serve ``/metrics`` over HTTP; returns the server (call ``shutdown()`` to stop it).

        Raises:
            OSError: the port cannot be bound (the caller turns it into one clear line).
        """
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
