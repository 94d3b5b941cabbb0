"""Serving plumbing without clients: settings checks and the physics child process."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import socket
import time

import pytest

from conf.schema import load_config
from plant_sim import serve
from plant_sim.plant import Plant, PlantSettings, WriteStatus
from plant_sim.reactor import ReactorSettings
from plant_sim.serve import PlantProcess, PortInUseError, ServerSettings, SettingsError, check_ports, check_settings


@pytest.fixture(scope="module")
def cfg():
    return load_config([])


class BuggyPlant(Plant):
    """A plant with a bug in one write path, and one slow write (a stand-in for a stalled child)."""

    def write(self, name, value):
        if name == "operator_mode_request" and value == 1.0:
            raise ZeroDivisionError("simulated plant bug")
        if name == "operator_mode_request" and value == 2.0:
            time.sleep(0.5)
        return super().write(name, value)


def make_plant(cfg, cls=Plant) -> Plant:
    scenario = dataclasses.replace(cfg.scenario, reactor=dataclasses.replace(ReactorSettings(), n_classes=40))
    return cls.from_config(cfg.plant, scenario, PlantSettings())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_ports_outside_the_tcp_range_are_refused(port):
    with pytest.raises(SettingsError, match="1..65535"):
        check_settings(ServerSettings(opcua_port=port))


@pytest.mark.parametrize("host", ["no.such.host.invalid", "a" * 300, "bad\x00host"])
def test_an_unusable_host_is_one_clear_error(host):
    with pytest.raises(PortInUseError, match="host"):
        check_ports(ServerSettings(host=host, opcua_port=free_port(), enable_modbus=False))


def test_a_plant_bug_in_a_write_is_answered_and_the_physics_carries_on(cfg):
    proc = PlantProcess(make_plant(cfg, BuggyPlant))
    try:
        result = proc.write("operator_mode_request", 1.0)
        assert result.status is WriteStatus.failed and "plant error" in result.message
        assert proc.alive
        proc.advance(10.0)
        deadline = time.monotonic() + 10.0
        while proc.plant_time_s < 10.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.plant_time_s == pytest.approx(10.0)
        assert proc.write("operator_mode_request", 0.0).status is WriteStatus.ok
    finally:
        proc.close()


def test_a_late_reply_never_answers_a_later_write(cfg):
    proc = PlantProcess(make_plant(cfg, BuggyPlant))
    proc.REPLY_TIMEOUT_S = 0.1
    try:
        with pytest.raises(RuntimeError, match="did not answer"):
            proc.write("operator_mode_request", 2.0)  # the child answers after 0.5 s
        proc.REPLY_TIMEOUT_S = 5.0
        result = proc.write("agent_mode", 7.0)  # out of the enumeration: its own, distinct answer
        assert result.status is WriteStatus.rejected_out_of_range
        assert proc.write("agent_mode", 1.0).status is WriteStatus.ok
    finally:
        proc.close()


def test_the_physics_process_is_stopped_when_a_server_cannot_be_built(cfg, monkeypatch):
    def broken_server(*args, **kwargs):
        raise RuntimeError("server construction failed")

    monkeypatch.setattr(serve, "PlantModbusServer", broken_server)
    settings = ServerSettings(modbus_port=free_port(), enable_opcua=False, physics_process=True)
    before = set(multiprocessing.active_children())
    with pytest.raises(RuntimeError, match="server construction failed"):
        asyncio.run(serve.serve_plant(make_plant(cfg), settings))
    assert set(multiprocessing.active_children()) == before
