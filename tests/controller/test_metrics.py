"""Agent metrics, scraped over real HTTP and parsed with Prometheus' own text parser."""

from __future__ import annotations

import math
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.guard import Mode, Reason
from controller.metrics import AgentMetrics
from controller.state import SignalStatus, Validated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_are_served_with_prometheus_names_and_labels():
    metrics = AgentMetrics("R101")
    port = free_port()
    server = metrics.serve("127.0.0.1", port)
    try:
        metrics.observe_cycle(0.012, {"read": 0.003, "model": 0.004}, overrun=True)
        metrics.observe_proposal(0.4)
        metrics.set_signals({"reactor_temperature_c": Validated(SignalStatus.ok, 41.5, 0.0),
                             "concentration_g_per_kg": Validated(SignalStatus.stale, 330.0, 45.0)})
        metrics.set_prediction({"G": 1.2}, {"G": 0.05})
        metrics.record_verdict((Reason.clamped, Reason.rate_limited), {"reactor_temperature_setpoint_c": math.inf},
                               {"reactor_temperature_setpoint_c": 39.5})
        metrics.set_connection(True)
        metrics.set_mode(Mode.automatic)
        metrics.set_model("msgnn-test", checkpoint="runs/model/msgnn")
        got = scrape(port)
    finally:
        server.shutdown()
    r = (("reactor", "R101"),)
    assert got[("xtalpilot_cycle_duration_seconds_count", r)] == 1
    assert got[("xtalpilot_cycle_overruns_total", r)] == 1
    assert got[("xtalpilot_stage_duration_seconds_sum", (("reactor", "R101"), ("stage", "model")))] == pytest.approx(0.004)
    assert got[("xtalpilot_signal_value", (("reactor", "R101"), ("signal", "reactor_temperature_c")))] == 41.5
    stale = (("reactor", "R101"), ("signal", "concentration_g_per_kg"), ("status", "stale"))
    assert got[("xtalpilot_signal_status", stale)] == 1.0
    assert got[("xtalpilot_guard_verdicts_total", (("reactor", "R101"), ("reason", "clamped")))] == 1
    assert got[("xtalpilot_setpoint_written", (("reactor", "R101"), ("setpoint", "reactor_temperature_setpoint_c")))] == 39.5
    assert got[("xtalpilot_mode", (("mode", "automatic"), ("reactor", "R101")))] == 1.0
    assert got[("xtalpilot_mode", (("mode", "manual"), ("reactor", "R101")))] == 0.0
    assert got[("xtalpilot_plant_connected", r)] == 1.0
    info = [k for k in got if k[0] == "xtalpilot_model_info"]
    assert info and ("version", "msgnn-test") in info[0][1]


def test_two_agents_do_not_share_series():
    a, b = AgentMetrics("R101"), AgentMetrics("R102")
    a.set_connection(True)
    assert b.registry.get_sample_value("xtalpilot_plant_connected", {"reactor": "R101"}) is None


def test_a_busy_port_is_an_os_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(OSError):
            AgentMetrics("R101").serve("127.0.0.1", s.getsockname()[1])
