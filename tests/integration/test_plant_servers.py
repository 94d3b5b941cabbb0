"""The simulated plant over real OPC UA and Modbus TCP on loopback.

Uses the ``plant`` fixture (tests/integration/conftest.py): ``xtalpilot plant`` in a subprocess
once the CLI exists, else ``serve_plant`` in-process. Speed 1000x, shed timeout 2000 plant s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from pymodbus.client import AsyncModbusTcpClient

from conf.contract.tagmap import ModbusTable, TagMap, decode_registers, encode_registers
from plant_sim.security import CLIENT_APPLICATION_URI

pytestmark = pytest.mark.integration

TAGMAP = TagMap.from_dict(yaml.safe_load((Path(__file__).resolve().parents[2] / "conf/plant/crystallizer.yaml").read_text()))
IDLE, EXECUTE, HELD, COMPLETED, ABORTED = 0, 1, 2, 3, 4
START, HOLD, RESUME, ABORT, RESET = 1, 2, 3, 4, 5
F32_REL = 2.0**-23


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


class PlantClients:
    """One OPC UA client and one Modbus client to a running plant."""

    def __init__(self, server, *, opcua_client: Client | None = None) -> None:
        self.server = server
        self.ua = opcua_client or Client(server.opcua_url, timeout=5)
        self.mb = AsyncModbusTcpClient(server.host, port=server.modbus_port, timeout=3, retries=1, reconnect_delay=0)
        self.ns = 0
        self.nodes: dict[str, Any] = {}

    async def __aenter__(self) -> "PlantClients":
        await self.ua.connect()
        self.ns = await self.ua.get_namespace_index(TAGMAP.namespace_uri)
        self.nodes = {s.name: self.ua.get_node(ua.NodeId(s.opcua_node, self.ns)) for s in TAGMAP}
        assert await self.mb.connect(), "Modbus connect failed"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.mb.close()
        with contextlib.suppress(Exception):
            await self.ua.disconnect()

    # ---- OPC UA
    async def ua_data(self) -> dict[str, ua.DataValue]:
        names = list(self.nodes)
        dvs = await self.ua.read_attributes([self.nodes[n] for n in names])
        return dict(zip(names, dvs))

    async def ua_values(self) -> dict[str, float]:
        return {n: (float(dv.Value.Value) if dv.StatusCode.is_good() else math.nan) for n, dv in (await self.ua_data()).items()}

    async def ua_value(self, name: str) -> float:
        return float(await self.nodes[name].read_value())

    async def ua_write(self, name: str, value: Any, varianttype: ua.VariantType | None = None) -> ua.StatusCode:
        dv = ua.DataValue(ua.Variant(value, varianttype))
        (status,) = await self.ua.uaclient.write_attributes([self.nodes[name].nodeid], [dv], ua.AttributeIds.Value)
        return status

    # ---- Modbus
    async def mb_table(self, table: ModbusTable) -> dict[int, int]:
        first, count = TAGMAP.register_span(table)
        read = self.mb.read_input_registers if table is ModbusTable.input else self.mb.read_holding_registers
        rr = await read(first, count=count, device_id=TAGMAP.modbus_device_id)
        assert not rr.isError(), rr
        return {first + i: w for i, w in enumerate(rr.registers)}

    async def mb_values(self) -> dict[str, float]:
        regs = {t: await self.mb_table(t) for t in ModbusTable}
        out = {}
        for s in TAGMAP:
            words = [regs[s.modbus.table][s.modbus.address + k] for k in range(s.modbus.count)]
            out[s.name] = decode_registers(s, words)
        return out

    async def mb_value(self, name: str) -> float:
        s = TAGMAP[name]
        read = self.mb.read_input_registers if s.modbus.table is ModbusTable.input else self.mb.read_holding_registers
        rr = await read(s.modbus.address, count=s.modbus.count, device_id=TAGMAP.modbus_device_id)
        assert not rr.isError(), rr
        return decode_registers(s, rr.registers)

    async def mb_write_words(self, address: int, words: list[int]) -> int | None:
        """Function 16; returns the exception code or None."""
        rr = await self.mb.write_registers(address, words, device_id=TAGMAP.modbus_device_id)
        return rr.exception_code if rr.isError() else None

    async def mb_write(self, name: str, value: float) -> int | None:
        s = TAGMAP[name]
        if s.is_integer:
            words = [int(value) & 0xFFFF] if s.modbus.count == 1 else encode_registers(s, value)
        else:
            words = encode_registers(s, value)
        return await self.mb_write_words(s.modbus.address, words)

    async def eventually(self, protocol: str, name: str, expected: float, timeout_s: float = 3.0) -> None:
        """Cross-protocol read-back: the other server shows a write at its next publication."""
        read = self.mb_value if protocol == "mb" else self.ua_value
        deadline = time.monotonic() + timeout_s
        while (v := await read(name)) != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{protocol} {name} = {v}, expected {expected}")
            await asyncio.sleep(0.01)

    # ---- plant helpers
    async def wait_for(self, name: str, predicate, timeout_s: float = 15.0) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            v = await self.ua_value(name)
            if predicate(v):
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} stayed at {v} for {timeout_s} s")
            await asyncio.sleep(0.02)

    async def command(self, cmd: int) -> ua.StatusCode:
        return await self.ua_write("batch_command", cmd, ua.VariantType.UInt16)

    async def to_idle(self) -> None:
        """Bring the batch to Idle from any state, agent in manual."""
        assert (await self.ua_write("agent_mode", 0, ua.VariantType.UInt16)).is_good()
        state = int(await self.ua_value("batch_state"))
        if state in (EXECUTE, HELD):
            assert (await self.command(ABORT)).is_good()
            state = ABORTED
        if state in (COMPLETED, ABORTED):
            assert (await self.command(RESET)).is_good()
        assert int(await self.ua_value("batch_state")) == IDLE


def code_name(status: ua.StatusCode) -> str:
    return ua.StatusCode(status.value).name


# ----------------------------------------------------------------------------- address space


def test_address_space_metadata(plant):
    async def body():
        async with PlantClients(plant) as c:
            reactor = c.ua.get_node(ua.NodeId(TAGMAP.reactor, c.ns))
            assert (await reactor.read_browse_name()).Name == TAGMAP.reactor
            children = {n.nodeid for n in await reactor.get_children()}
            for s in TAGMAP:
                node = c.nodes[s.name]
                assert node.nodeid in children, s.name
                access = await node.read_attribute(ua.AttributeIds.AccessLevel)
                writable = bool(access.Value.Value & ua.AccessLevel.CurrentWrite.mask)
                assert writable == s.writable, s.name
                dtype = await node.read_data_type()
                expected = ua.ObjectIds.Double if not s.is_integer else getattr(ua.ObjectIds, s.modbus.type.name.replace("uint", "UInt").replace("int", "Int"))
                assert dtype.Identifier == expected, s.name
                eu_range = await node.get_child(f"{c.ns}:EURange")
                rng = await eu_range.read_value()
                assert (rng.Low, rng.High) == (s.low, s.high)
                units = await (await node.get_child(f"{c.ns}:EngineeringUnits")).read_value()
                assert units.DisplayName.Text == s.unit
                desc = await node.read_description()
                assert s.description.split()[0] in desc.Text

    run(body())


# ----------------------------------------------------------------------------- values


def test_both_protocols_report_same_values(plant):
    async def body():
        async with PlantClients(plant) as c:
            for _attempt in range(50):
                ua_data = await c.ua_data()
                mb = await c.mb_values()
                ua_again = await c.ua_data()
                t0 = ua_data["plant_time_s"].Value.Value
                if t0 == mb["plant_time_s"] == ua_again["plant_time_s"].Value.Value:
                    break  # all three reads inside one publication
            else:
                pytest.fail("could not read both protocols within one publication")
            compared = 0
            for s in TAGMAP:
                dv = ua_data[s.name]
                if not dv.StatusCode.is_good():
                    assert dv.StatusCode.value == ua.StatusCodes.BadSensorFailure, s.name
                    if not s.is_integer:
                        assert math.isnan(mb[s.name]), f"{s.name}: OPC UA bad, Modbus {mb[s.name]}"
                    continue
                v = float(dv.Value.Value)
                assert mb[s.name] == pytest.approx(v, rel=F32_REL, abs=1e-30), s.name
                compared += 1
            assert compared >= 20
            # Source timestamps carry plant time: two reads 0.3 s apart differ by ~speed x 0.3 s.
            ts1 = ua_data["plant_time_s"].SourceTimestamp
            await asyncio.sleep(0.3)
            dv2 = (await c.ua_data())["plant_time_s"]
            dt_source = (dv2.SourceTimestamp - ts1).total_seconds()
            assert dt_source == pytest.approx(dv2.Value.Value - t0, abs=1e-3)
            assert dt_source > 0.3 * plant.speed * 0.3  # runs much faster than the wall clock

    run(body())


# ----------------------------------------------------------------------------- setpoint writes


def test_setpoint_write_clamped_and_out_of_range(still_plant):
    name = "reactor_temperature_setpoint_c"
    sig = TAGMAP[name]
    assert sig.limits == (5.0, 80.0) and (sig.low, sig.high) == (-20.0, 120.0)

    async def body():
        async with PlantClients(plant) as c:
            # inside the engineering range, outside the plant limits: clamped, GoodClamped
            st = await c.ua_write(name, 95.0)
            assert st.value == ua.StatusCodes.GoodClamped
            assert await c.ua_value(name) == 80.0
            await c.eventually("mb", name, 80.0)
            # Modbus: accepted, the holding register then holds the applied value
            assert await c.mb_write(name, 2.5) is None
            assert await c.mb_value(name) == 5.0
            await c.eventually("ua", name, 5.0)
            # outside the engineering range: rejected, value unchanged
            assert (await c.ua_write(name, 130.0)).value == ua.StatusCodes.BadOutOfRange
            assert await c.mb_write(name, -25.0) == 3
            assert await c.ua_value(name) == 5.0
            # a plain accepted write, and an integer-typed client value
            assert (await c.ua_write(name, 50.0)).value == ua.StatusCodes.Good
            assert (await c.ua_write(name, 51)).value == ua.StatusCodes.Good  # Int64 variant accepted
            await c.eventually("mb", name, 51.0)
            assert await c.mb_write(name, 55.0) is None
            await c.eventually("ua", name, 55.0)

    plant = still_plant
    run(body())


def test_malformed_and_read_only_writes_rejected_plant_keeps_running(plant):
    async def body():
        async with PlantClients(plant) as c:
            t0 = await c.ua_value("plant_time_s")
            sp = "reactor_temperature_setpoint_c"
            before = await c.ua_value(sp)
            # OPC UA
            assert (await c.ua_write(sp, math.nan)).value == ua.StatusCodes.BadOutOfRange
            assert (await c.ua_write(sp, math.inf)).value == ua.StatusCodes.BadOutOfRange
            assert (await c.ua_write(sp, "hot")).value == ua.StatusCodes.BadTypeMismatch
            assert (await c.ua_write(sp, True)).value == ua.StatusCodes.BadTypeMismatch
            assert (await c.ua_write(sp, [1.0, 2.0])).value == ua.StatusCodes.BadTypeMismatch
            assert (await c.ua_write("agent_mode", 1.5)).value == ua.StatusCodes.BadTypeMismatch
            assert (await c.ua_write("agent_mode", 7)).value == ua.StatusCodes.BadOutOfRange
            for ro in ("reactor_temperature_c", "plant_time_s", "batch_state", "shed_active"):
                st = await c.ua_write(ro, 1.0 if not TAGMAP[ro].is_integer else 1)
                assert st.value in (ua.StatusCodes.BadNotWritable, ua.StatusCodes.BadUserAccessDenied), ro
            bogus = c.ua.get_node(ua.NodeId("R101.DoesNotExist", c.ns))
            (st,) = await c.ua.uaclient.write_attributes([bogus.nodeid], [ua.DataValue(1.0)], ua.AttributeIds.Value)
            assert st.value == ua.StatusCodes.BadNodeIdUnknown
            assert await c.ua_value(sp) == before
            # Modbus
            nan_words = list(struct.unpack(">HH", struct.pack(">f", math.nan)))
            assert await c.mb_write_words(TAGMAP[sp].modbus.address, nan_words) == 3
            assert await c.mb_write("agent_mode", 7) == 3
            rr = await c.mb.write_register(TAGMAP[sp].modbus.address, 0x4248, device_id=TAGMAP.modbus_device_id)
            assert rr.isError() and rr.exception_code == 2  # half of a float32
            rr = await c.mb.write_registers(TAGMAP[sp].modbus.address + 1, [0, 0], device_id=TAGMAP.modbus_device_id)
            assert rr.isError() and rr.exception_code == 2  # straddles two signals
            _, holding_count = TAGMAP.register_span(ModbusTable.holding)
            assert await c.mb_write_words(holding_count, [1]) == 2  # unmapped address
            rr = await c.mb.write_coil(0, True, device_id=TAGMAP.modbus_device_id)
            assert rr.isError() and rr.exception_code == 2  # no coils
            rr = await c.mb.read_input_registers(200, count=2, device_id=TAGMAP.modbus_device_id)
            assert rr.isError() and rr.exception_code == 2
            assert await c.mb_value(sp) == before
            # still alive and advancing
            await asyncio.sleep(0.2)
            assert await c.ua_value("plant_time_s") > t0
            assert await c.mb_value("plant_time_s") > t0
        assert plant.alive()

    run(body())


# ----------------------------------------------------------------------------- batch state machine


def test_state_machine_rejects_invalid_and_accepts_sequence(plant):
    async def body():
        async with PlantClients(plant) as c:
            await c.to_idle()
            # invalid transitions from Idle
            assert (await c.command(RESUME)).value == ua.StatusCodes.BadInvalidState
            assert await c.mb_write("batch_command", RESUME) == 3
            assert await c.mb_write("batch_command", HOLD) == 3
            assert (await c.command(RESET)).value == ua.StatusCodes.BadInvalidState
            assert int(await c.ua_value("batch_state")) == IDLE
            # the full sequence, alternating protocols
            assert (await c.command(START)).is_good()
            assert int(await c.mb_value("batch_state")) == EXECUTE
            assert (await c.command(START)).value == ua.StatusCodes.BadInvalidState
            assert await c.mb_write("batch_command", HOLD) is None
            assert int(await c.ua_value("batch_state")) == HELD
            assert (await c.command(RESUME)).is_good()
            assert int(await c.mb_value("batch_state")) == EXECUTE
            assert await c.mb_write("batch_command", ABORT) is None
            assert int(await c.ua_value("batch_state")) == ABORTED
            assert await c.mb_write("batch_command", RESUME) == 3
            assert (await c.command(RESET)).is_good()
            assert int(await c.mb_value("batch_state")) == IDLE

    run(body())


# ----------------------------------------------------------------------------- remote cascade


async def _heartbeat(c: PlantClients, stop: asyncio.Event, period_s: float = 0.1) -> float:
    """Write a changing heartbeat until ``stop``; returns plant time just before the last write."""
    n = int(await c.ua_value("agent_heartbeat"))
    before_last = math.nan
    while not stop.is_set():
        n = (n + 1) % 65536
        before_last = await c.ua_value("plant_time_s")
        assert (await c.ua_write("agent_heartbeat", n, ua.VariantType.UInt16)).is_good()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period_s)
    return before_last


def test_rate_limit_then_heartbeat_loss_sheds_to_local(plant):
    rate_k_per_min = TAGMAP["reactor_temperature_setpoint_c"].max_rate_per_min
    assert rate_k_per_min == 2.0

    async def body():
        async with PlantClients(plant) as c:
            await c.to_idle()
            hb_stop = asyncio.Event()
            hb = asyncio.create_task(_heartbeat(c, hb_stop))
            try:
                await asyncio.sleep(0.15)
                wsp0 = await c.ua_value("reactor_temperature_setpoint_active_c")
                assert (await c.ua_write("reactor_temperature_setpoint_c", wsp0, ua.VariantType.Double)).is_good()
                assert (await c.command(START)).is_good()
                assert (await c.ua_write("agent_mode", 2, ua.VariantType.UInt16)).is_good()
                await c.wait_for("control_source", lambda v: v == 1.0)
                target = wsp0 - 10.0
                assert (await c.ua_write("reactor_temperature_setpoint_c", target)).is_good()
                samples: list[tuple[float, float]] = []
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    data = await c.ua_data()
                    samples.append((data["plant_time_s"].Value.Value,
                                    data["reactor_temperature_setpoint_active_c"].Value.Value))
                    if samples[-1][1] <= target + 1e-9:
                        break
                    await asyncio.sleep(0.02)
                assert samples[-1][1] == pytest.approx(target), "working setpoint never reached the target"
                # never faster than 2 K/min of plant time (one 1 s step of slack)
                for (t1, v1), (t2, v2) in zip(samples, samples[1:]):
                    assert abs(v2 - v1) <= rate_k_per_min * (t2 - t1 + 1.0) / 60.0 + 1e-9
                total_t = samples[-1][0] - samples[0][0]
                assert total_t >= 10.0 / rate_k_per_min * 60.0 - 60.0  # 5 plant min, less a step or two
                assert int(await c.ua_value("shed_active")) == 0
            finally:
                hb_stop.set()
                t_last_beat = await hb
            # heartbeat stopped: after shed_timeout_s of plant time the loop sheds to local
            await c.wait_for("shed_active", lambda v: v == 1.0, timeout_s=30)
            assert await c.ua_value("plant_time_s") - t_last_beat >= plant.shed_timeout_s - 1.0
            assert int(await c.ua_value("control_source")) == 0
            assert int(await c.mb_value("shed_active")) == 1 and int(await c.mb_value("control_source")) == 0
            # explicit re-entry: live heartbeat, then agent_mode=2 again
            hb_stop = asyncio.Event()
            hb = asyncio.create_task(_heartbeat(c, hb_stop))
            try:
                await asyncio.sleep(0.15)
                assert (await c.ua_write("agent_mode", 2, ua.VariantType.UInt16)).is_good()
                await c.wait_for("control_source", lambda v: v == 1.0)
                assert int(await c.ua_value("shed_active")) == 0
            finally:
                hb_stop.set()
                await hb
            await c.to_idle()

    run(body())


# ----------------------------------------------------------------------------- security


def test_secure_mode_refuses_anonymous_and_wrong_password(plant_server_factory, secure_material):
    m = secure_material

    async def connect(user: str | None, password: str | None, *, secure: bool = True) -> Client:
        client = Client(server.opcua_url, timeout=5)
        client.application_uri = CLIENT_APPLICATION_URI
        if secure:
            await client.set_security(SecurityPolicyBasic256Sha256, m["client_cert"], m["client_key"],
                                      mode=ua.MessageSecurityMode.SignAndEncrypt)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        await client.connect()
        return client

    async def body():
        endpoints = await Client(server.opcua_url, timeout=5).connect_and_get_server_endpoints()
        assert {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints} == {
            ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt)
        }
        for ep in endpoints:
            assert [t.TokenType for t in ep.UserIdentityTokens] == [ua.UserTokenType.UserName]
        refused = (
            (None, None, True, ua.uaerrors.BadIdentityTokenRejected),  # anonymous
            ("operator", "wrong", True, ua.uaerrors.BadUserAccessDenied),
            ("nobody", "op-secret-1", True, ua.uaerrors.BadUserAccessDenied),
            (None, None, False, ua.UaError),  # NoSecurity: no such endpoint
            ("operator", "op-secret-1", False, ua.UaError),
        )
        for user, password, secure, error in refused:
            with pytest.raises(error):
                client = await connect(user, password, secure=secure)
                await client.disconnect()
        client = await connect(m["user"], m["password"])
        try:
            async with PlantClients(server, opcua_client=client) as c:
                assert await c.ua_value("plant_time_s") >= 0.0
                assert (await c.ua_write("reactor_temperature_setpoint_c", 40.0)).is_good()
                await c.eventually("mb", "reactor_temperature_setpoint_c", 40.0)
                assert (await c.ua_write("reactor_temperature_c", 1.0)).value in (
                    ua.StatusCodes.BadNotWritable, ua.StatusCodes.BadUserAccessDenied)
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    with plant_server_factory(security="sign_encrypt", cert_dir=m["cert_dir"], users_file=m["users_file"],
                              speed=0.001) as server:  # still: see the still_plant fixture
        run(body())
        assert server.alive()


# ----------------------------------------------------------------------------- start-up errors


@dataclass
class _TinyPlant:
    """Enough of a plant for start-up checks that never serve."""

    tagmap: TagMap = TAGMAP
    plant_time_s: float = 0.0

    def advance(self, duration_s: float) -> None:
        self.plant_time_s += duration_s

    def values(self) -> dict[str, float]:
        return {s.name: 0.0 for s in self.tagmap}

    def write(self, name: str, value: float) -> Any:
        raise AssertionError("not used")


def test_port_in_use_is_one_clear_error(caplog, free_tcp_port):
    from plant_sim.serve import ServerSettings, run_plant_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_tcp_port))
        taken.listen()
        settings = ServerSettings(opcua_port=free_tcp_port, modbus_port=free_tcp_port + 1)
        with caplog.at_level(logging.ERROR):
            assert run_plant_server(_TinyPlant(), settings) == 2
    assert f"port {free_tcp_port}" in caplog.text and "opcua_port=" in caplog.text
    assert "Traceback" not in caplog.text


def test_secure_mode_without_users_file_is_one_clear_error(caplog, tmp_path, secure_material):
    from plant_sim.serve import SecurityMode, ServerSettings, run_plant_server

    settings = ServerSettings(security=SecurityMode.sign_encrypt, cert_dir=secure_material["cert_dir"],
                              users_file=str(tmp_path / "missing.yaml"))
    with caplog.at_level(logging.ERROR):
        assert run_plant_server(_TinyPlant(), settings) == 2
    assert "missing.yaml" in caplog.text
    settings = ServerSettings(security=SecurityMode.sign_encrypt, cert_dir=str(tmp_path / "nocerts"),
                              users_file=secure_material["users_file"])
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert run_plant_server(_TinyPlant(), settings) == 2
    assert "xtalpilot certs" in caplog.text


# ----------------------------------------------------------------------------- servers alone, fake plant


class _FakeWriteResult:
    def __init__(self, status: str, applied: float | None) -> None:
        self.status, self.applied, self.message = status, applied, status


class _FakePlant(_TinyPlant):
    """Deterministic values (one NaN) and a write that raises for one signal."""

    def values(self) -> dict[str, float]:
        out = {s.name: float(s.low) for s in self.tagmap}
        out["plant_time_s"] = self.plant_time_s
        out["reactor_temperature_c"] = math.nan  # failed sensor
        out["facet_1_hkl"] = math.nan  # integers cannot carry NaN on Modbus
        return out

    def write(self, name: str, value: float) -> Any:
        if name == "operator_mode_request":
            raise RuntimeError("plant bug")
        return _FakeWriteResult("ok", value)


def test_servers_publish_quality_and_survive_plant_errors(free_tcp_port):
    from datetime import datetime, timedelta, timezone

    from plant_sim.modbus_server import PlantModbusServer
    from plant_sim.opcua_server import PlantOpcUaServer

    fake = _FakePlant(plant_time_s=3600.0)
    epoch = datetime(2030, 1, 1, tzinfo=timezone.utc)
    mb_port = free_tcp_port + 1 if free_tcp_port < 65000 else free_tcp_port - 1

    async def body():
        async with PlantOpcUaServer(fake, port=free_tcp_port, plant_epoch=epoch), \
                PlantModbusServer(fake, port=mb_port):
            server = type("S", (), {"opcua_url": f"opc.tcp://127.0.0.1:{free_tcp_port}",
                                    "host": "127.0.0.1", "modbus_port": mb_port})
            async with PlantClients(server) as c:
                data = await c.ua_data()
                bad = data["reactor_temperature_c"]
                assert bad.StatusCode.value == ua.StatusCodes.BadSensorFailure
                assert data["facet_1_hkl"].StatusCode.value == ua.StatusCodes.BadSensorFailure
                good = data["jacket_temperature_c"]
                assert good.StatusCode.is_good() and good.Value.Value == -30.0
                assert good.SourceTimestamp == epoch + timedelta(seconds=3600)
                assert math.isnan(await c.mb_value("reactor_temperature_c"))
                assert await c.mb_value("facet_1_hkl") == 0.0  # last good words (initial zeros)
                st = await c.ua_write("operator_mode_request", 1, ua.VariantType.UInt16)
                assert st.value == ua.StatusCodes.BadInternalError
                assert await c.mb_write("operator_mode_request", 1) == 4
                assert (await c.ua_write("agent_mode", 1, ua.VariantType.UInt16)).is_good()
                assert await c.mb_value("plant_time_s") == 3600.0

    run(body())


class _RejectingPlant(_TinyPlant):
    """Refuses every write, as a plant refuses an out-of-range setpoint."""

    def write(self, name: str, value: float) -> Any:
        return _FakeWriteResult("rejected_out_of_range", None)


def test_a_modbus_write_landing_during_a_publish_is_still_validated(free_tcp_port):
    """The server's own publish passes its access hook unchecked; a client write served while a
    publish awaits the datastore must not (it would reach the registers unvalidated)."""
    from plant_sim import modbus_server
    from plant_sim.modbus_server import PlantModbusServer

    async def body():
        async with PlantModbusServer(_RejectingPlant(), port=free_tcp_port) as srv:
            context = srv._server.context
            original = context.async_setValues
            entered, release = asyncio.Event(), asyncio.Event()

            async def slow_publish(*args, **kwargs):
                if modbus_server._PUBLISHING.get():
                    entered.set()
                    await release.wait()
                return await original(*args, **kwargs)

            context.async_setValues = slow_publish
            publishing = asyncio.create_task(srv.publish())
            await asyncio.wait_for(entered.wait(), 5)
            client = AsyncModbusTcpClient("127.0.0.1", port=free_tcp_port, timeout=3, retries=1, reconnect_delay=0)
            assert await client.connect()
            sp = TAGMAP["reactor_temperature_setpoint_c"]
            try:
                rr = await client.write_registers(sp.modbus.address, encode_registers(sp, 60.0),
                                                  device_id=TAGMAP.modbus_device_id)
            finally:
                client.close()
                release.set()
                await publishing
            assert rr.isError(), "a write during a publish skipped the plant's validation"
            assert srv.writes_rejected >= 1 and srv.writes_accepted == 0

    run(body())


# ----------------------------------------------------------------------------- the `xtalpilot plant` process


needs_cli = pytest.mark.skipif(importlib.util.find_spec("controller.cli") is None, reason="xtalpilot CLI not installed")


@needs_cli
def test_cli_sigterm_is_a_clean_shutdown(plant_server_factory):
    with plant_server_factory(mode="subprocess", speed=500.0) as server:
        proc = server.process
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    text = "\n".join(server.log)
    assert "plant stopped at plant time" in text
    assert "Traceback" not in text
    assert "INSECURE" in text  # insecure mode is announced


@needs_cli
def test_cli_port_in_use_exits_2_with_one_clear_line(free_tcp_port):
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", free_tcp_port))
        taken.listen()
        proc = subprocess.run(
            [sys.executable, "-m", "controller.cli", "plant", f"opcua_port={free_tcp_port}",
             f"modbus_port={free_tcp_port + 1 if free_tcp_port < 65000 else free_tcp_port - 1}"],
            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"port {free_tcp_port}" in proc.stderr and "opcua_port=" in proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- the real-time loop


class _SlowPlant(_FakePlant):
    def __init__(self, step_wall_s: float) -> None:
        super().__init__()
        self.step_wall_s = step_wall_s

    def advance(self, duration_s: float) -> None:
        time.sleep(self.step_wall_s)
        super().advance(duration_s)


@pytest.mark.parametrize("step_wall_s, expect_lag", [(0.0, False), (0.3, True)])
def test_loop_tracks_speed_without_drift_and_reports_lag(inprocess_runner, step_wall_s, expect_lag):
    from plant_sim.serve import ServerSettings

    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        ports = [a.getsockname()[1], b.getsockname()[1]]
    settings = ServerSettings(opcua_port=ports[0], modbus_port=ports[1], speed=100.0, publish_interval_s=0.05)
    slow = _SlowPlant(step_wall_s)
    with inprocess_runner(slow, settings) as stats:
        t_wall0, t_plant0 = time.monotonic(), slow.plant_time_s
        time.sleep(1.5)
        t_wall1, t_plant1 = time.monotonic(), slow.plant_time_s
    rate = (t_plant1 - t_plant0) / (t_wall1 - t_wall0)
    if expect_lag:
        assert stats.lag_events > 0 and rate < 100.0
    else:
        assert stats.lag_events == 0
        assert rate == pytest.approx(100.0, rel=0.1)
        assert stats.ticks >= 20
