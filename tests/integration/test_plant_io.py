"""The agent's plant I/O over real OPC UA and Modbus TCP to the simulated plant on loopback."""

from __future__ import annotations

import asyncio
import math

import pytest
import yaml

from conftest import TAGMAP_YAML, free_port
from conf.contract.tagmap import TagMap
from controller.plant_io import Backoff, ModbusIO, OpcUaIO, PlantIOError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tagmap() -> TagMap:
    return TagMap.from_dict(yaml.safe_load(TAGMAP_YAML.read_text()))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_both_clients_read_the_same_plant(plant, tagmap):
    async def main():
        opc, mb = OpcUaIO(tagmap, plant.opcua_url), ModbusIO(tagmap, plant.host, plant.modbus_port)
        await opc.connect()
        await mb.connect()
        try:
            a, b = await opc.read(), await mb.read()
        finally:
            await opc.close()
            await mb.close()
        return a, b

    a, b = run(main())
    assert set(a.readings) == set(b.readings) == {s.name for s in tagmap}
    assert math.isfinite(a.plant_time_s) and math.isfinite(b.plant_time_s)
    # Source times are plant seconds, close to the plant clock of the read.
    temp = a.readings["reactor_temperature_c"]
    assert abs(temp.source_time_s - a.plant_time_s) < 60.0 and temp.good
    # Slowly varying signals agree between the two protocols (reads a few ms apart).
    for name in ("jacket_inlet_temperature_c", "batch_state", "reactor_temperature_setpoint_c"):
        assert a.readings[name].value == pytest.approx(b.readings[name].value, abs=0.5)


@pytest.mark.parametrize("protocol", ["opcua", "modbus"])
def test_writes_go_through_and_unwritable_tags_never_leave_the_agent(plant, tagmap, protocol):
    async def main():
        io = (OpcUaIO(tagmap, plant.opcua_url, subscribe=True) if protocol == "opcua"
              else ModbusIO(tagmap, plant.host, plant.modbus_port))
        await io.connect()
        try:
            out = await io.write({"agent_heartbeat": 7, "reactor_temperature_c": 20.0, "no_such_tag": 1.0,
                                  "agent_mode": 9})
            # OPC UA reads come from the subscription: a write shows at the next notification
            deadline = asyncio.get_running_loop().time() + 3.0
            while (snap := await io.read()).readings["agent_heartbeat"].value != 7:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.01)
        finally:
            await io.close()
        return out, snap

    out, snap = run(main())
    assert out["agent_heartbeat"].accepted and snap.readings["agent_heartbeat"].value == 7
    assert not out["reactor_temperature_c"].accepted and "writable" in out["reactor_temperature_c"].detail
    assert not out["no_such_tag"].accepted
    assert not out["agent_mode"].accepted  # out of range: the plant refuses it


@pytest.mark.parametrize("protocol", ["opcua", "modbus"])
def test_a_dead_peer_is_a_clear_error_and_backoff_spaces_retries(tagmap, protocol):
    port = free_port()
    io = OpcUaIO(tagmap, f"opc.tcp://127.0.0.1:{port}", timeout_s=1.0) if protocol == "opcua" else \
        ModbusIO(tagmap, "127.0.0.1", port, timeout_s=1.0)
    with pytest.raises(PlantIOError, match="cannot connect"):
        run(io.connect())
    with pytest.raises(PlantIOError, match="not connected"):
        run(io.read())
    backoff = Backoff(initial_s=0.5, max_s=2.0)
    delays = [backoff.failed(now_s=0.0) for _ in range(5)]
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0] and not backoff.ready(1.9) and backoff.ready(2.0)
    backoff.succeeded()
    assert backoff.ready(0.0)


def test_the_opcua_client_reads_and_writes_over_an_encrypted_session(plant_server_factory, secure_material, tagmap):
    """Basic256Sha256 SignAndEncrypt with the client certificate and a user, as `agent.*` sets it."""
    m = secure_material
    security = f"Basic256Sha256,SignAndEncrypt,{m['client_cert']},{m['client_key']}"

    async def main(url: str):
        wrong = OpcUaIO(tagmap, url, security=security, username=m["user"], password="wrong")
        with pytest.raises(PlantIOError, match="cannot connect"):
            await wrong.connect()
        io = OpcUaIO(tagmap, url, security=security, username=m["user"], password=m["password"], subscribe=True)
        await io.connect()
        try:
            out = await io.write({"agent_heartbeat": 11})
            snap = await io.read()
        finally:
            await io.close()
        return out, snap

    with plant_server_factory(security="sign_encrypt", cert_dir=m["cert_dir"], users_file=m["users_file"],
                              speed=0.001) as server:
        out, snap = run(main(server.opcua_url))
    assert out["agent_heartbeat"].accepted
    assert math.isfinite(snap.plant_time_s) and snap.readings["reactor_temperature_c"].good
