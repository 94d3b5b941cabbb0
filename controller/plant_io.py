"""The agent's I/O edge: one small interface over OPC UA and Modbus TCP, driven by the tag map.

``read()`` returns a :class:`Snapshot`: a :class:`controller.state.Reading` per signal (value,
source time in plant seconds, quality) and the plant time. ``write(values)`` writes setpoints
and returns a :class:`WriteOutcome` per signal. Only signals the tag map marks writable are
ever sent; anything else is refused locally without touching the network.

- OPC UA (asyncua 2.x): one batched Read of every node per cycle, or with ``subscribe=True``
  a subscription to every node that keeps a cache of the latest values, so ``read()`` costs no
  round trip (falling back to the Read if the server refuses the monitored items); source timestamps are
  mapped back to plant time through the ``plant_time_s`` node (the plant stamps values with
  ``epoch + plant time``); optional Basic256Sha256 SignAndEncrypt with user and password.
  asyncua's connection supervisor probes the server; a lost session makes ``read()`` raise.
- Modbus TCP (pymodbus): one read of the input-register span and one of the holding-register
  span per cycle, decoded per the tag map (type, scale, word order); Modbus has no
  timestamps, so every value carries the plant time read in the same request.

A lost connection raises :class:`PlantIOError`; ``connect()`` may be retried and
:class:`Backoff` spaces the retries (doubling, capped).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping, Protocol

from conf.contract.tagmap import ModbusTable, Signal, TagMap, decode_registers, encode_registers
from controller.state import Reading

__all__ = ["Backoff", "ModbusIO", "OpcUaIO", "PlantIO", "PlantIOError", "Snapshot", "WriteOutcome"]


class PlantIOError(RuntimeError):
    """The plant cannot be reached or answered nonsense; the message says which peer and why."""


@dataclass(frozen=True)
class Snapshot:
    """All signals of one read.

    Attributes:
        plant_time_s: the plant's clock at the read (NaN if it could not be read).
        readings: signal name -> reading.
        wall_time_s: ``time.monotonic()`` when the read completed.
    """

    plant_time_s: float
    readings: Mapping[str, Reading]
    wall_time_s: float


@dataclass(frozen=True)
class WriteOutcome:
    """Result of writing one signal: accepted (possibly clamped by the plant) or why not."""

    accepted: bool
    detail: str = ""


class PlantIO(Protocol):
    """What the daemon needs from a plant connection."""

    tagmap: TagMap

    async def connect(self) -> None: ...

    async def read(self) -> Snapshot: ...

    async def write(self, values: Mapping[str, float]) -> dict[str, WriteOutcome]: ...

    async def close(self) -> None: ...


@dataclass
class Backoff:
    """Capped exponential backoff between reconnection attempts (monotonic seconds).

    Attributes:
        initial_s: first delay.
        max_s: largest delay.
    """

    initial_s: float = 0.5
    max_s: float = 30.0
    _delay_s: float = field(default=0.0, init=False)
    _next_s: float = field(default=-math.inf, init=False)

    def ready(self, now_s: float | None = None) -> bool:
        return (time.monotonic() if now_s is None else now_s) >= self._next_s

    def failed(self, now_s: float | None = None) -> float:
        """Record a failed attempt; returns the delay before the next one."""
        self._delay_s = self.initial_s if self._delay_s == 0 else min(self._delay_s * 2.0, self.max_s)
        self._next_s = (time.monotonic() if now_s is None else now_s) + self._delay_s
        return self._delay_s

    def succeeded(self) -> None:
        self._delay_s, self._next_s = 0.0, -math.inf


def _refuse_unwritable(tagmap: TagMap, values: Mapping[str, float]) -> tuple[dict, dict[str, WriteOutcome]]:
    allowed, refused = {}, {}
    for name, value in values.items():
        if name not in tagmap:
            refused[name] = WriteOutcome(False, "not in the tag map")
        elif not tagmap[name].writable:
            refused[name] = WriteOutcome(False, "the tag map does not mark it writable")
        else:
            allowed[name] = value
    return allowed, refused


# ----------------------------------------------------------------------------- Modbus
class ModbusIO:
    """Modbus TCP client of the plant (see the module docstring)."""

    def __init__(self, tagmap: TagMap, host: str = "127.0.0.1", port: int = 5020, timeout_s: float = 2.0) -> None:
        self.tagmap = tagmap
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._client = None
        self._spans = {t: tagmap.register_span(t) for t in ModbusTable}

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    async def connect(self) -> None:
        from pymodbus.client import AsyncModbusTcpClient

        await self.close()
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, reconnect_delay=0)
        try:
            ok = await client.connect()
        except Exception as exc:  # pymodbus raises several types for refused or unreachable peers
            client.close()
            raise PlantIOError(f"Modbus {self.host}:{self.port}: cannot connect ({exc})") from None
        if not ok:
            client.close()
            raise PlantIOError(f"Modbus {self.host}:{self.port}: cannot connect (is the plant running?)")
        self._client = client

    async def _read_table(self, table: ModbusTable) -> dict[int, int]:
        lo, hi = self._spans[table]
        if hi <= lo:
            return {}
        reader = self._client.read_input_registers if table is ModbusTable.input else self._client.read_holding_registers
        try:
            rr = await reader(lo, count=hi - lo, device_id=self.tagmap.modbus_device_id)
        except Exception as exc:
            await self.close()
            raise PlantIOError(f"Modbus {self.host}:{self.port}: {table.value} read failed ({exc})") from None
        if rr.isError():
            raise PlantIOError(f"Modbus {self.host}:{self.port}: {table.value} read refused ({rr})")
        return {lo + k: w for k, w in enumerate(rr.registers)}

    async def read(self) -> Snapshot:
        if not self.connected:
            raise PlantIOError(f"Modbus {self.host}:{self.port}: not connected")
        words = {t: await self._read_table(t) for t in ModbusTable}
        values: dict[str, float] = {}
        for s in self.tagmap:
            reg = s.modbus
            table = words[reg.table]
            try:
                values[s.name] = decode_registers(s, [table[reg.address + k] for k in range(reg.count)])
            except (KeyError, ValueError):
                values[s.name] = math.nan
        plant_time = values.get("plant_time_s", math.nan)
        readings = {name: Reading(v, plant_time, True) for name, v in values.items()}
        return Snapshot(plant_time, readings, time.monotonic())

    async def write(self, values: Mapping[str, float]) -> dict[str, WriteOutcome]:
        allowed, out = _refuse_unwritable(self.tagmap, values)
        for name, value in allowed.items():
            s: Signal = self.tagmap[name]
            try:
                words = encode_registers(s, float(value))
            except (TypeError, ValueError) as exc:
                out[name] = WriteOutcome(False, f"cannot encode ({exc})")
                continue
            if not self.connected:
                out[name] = WriteOutcome(False, "not connected")
                continue
            try:
                rr = await self._client.write_registers(s.modbus.address, words, device_id=self.tagmap.modbus_device_id)
            except Exception as exc:
                await self.close()
                out[name] = WriteOutcome(False, f"connection lost ({exc})")
                continue
            out[name] = WriteOutcome(False, f"plant refused ({rr})") if rr.isError() else WriteOutcome(True)
        return out

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


# ----------------------------------------------------------------------------- OPC UA
class OpcUaIO:
    """OPC UA client of the plant (see the module docstring).

    Args:
        tagmap: the tag map (node ids and namespace).
        url: e.g. ``opc.tcp://127.0.0.1:4840``.
        security: None, or an asyncua security string such as
            ``Basic256Sha256,SignAndEncrypt,client_cert.der,client_key.pem``.
        username / password: user identity for secure servers.
        timeout_s: request timeout.
        subscribe: keep values current by subscription (else poll every read).
        publishing_interval_ms: the subscription's publishing interval.
    """

    def __init__(self, tagmap: TagMap, url: str, security: str | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 4.0, subscribe: bool = False,
                 publishing_interval_ms: float = 20.0) -> None:
        self.tagmap = tagmap
        self.url, self.security, self.username, self.password = url, security, username, password
        self.timeout_s = timeout_s
        self.subscribe, self.publishing_interval_ms = subscribe, publishing_interval_ms
        self._cache: _ValueCache | None = None
        self._client = None
        self._nodes: list = []
        self._names: list[str] = []

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def connect(self) -> None:
        from asyncua import Client, ua

        await self.close()
        client = Client(self.url, timeout=self.timeout_s)
        if self.username:
            client.set_user(self.username)
        if self.password:
            client.set_password(self.password)
        try:
            if self.security:
                await client.set_security_string(self.security)
            await client.connect()
        except Exception as exc:  # refused, unreachable, wrong security or identity
            raise PlantIOError(f"OPC UA {self.url}: cannot connect ({type(exc).__name__}: {exc})") from None
        try:
            ns = await client.get_namespace_index(self.tagmap.namespace_uri)
        except Exception as exc:
            await client.disconnect()
            raise PlantIOError(f"OPC UA {self.url}: namespace {self.tagmap.namespace_uri} not served ({exc}); "
                               "is this the right plant and tag map?") from None
        self._names = [s.name for s in self.tagmap]
        self._nodes = [client.get_node(ua.NodeId(s.opcua_node, ns)) for s in self.tagmap]
        self._client = client
        self._cache = None
        if self.subscribe:
            await self._subscribe(client)

    async def _subscribe(self, client) -> None:
        """Monitor every node; on any refusal fall back to polling (a server may limit items)."""
        import logging

        from asyncua import ua

        cache = _ValueCache({node.nodeid: name for node, name in zip(self._nodes, self._names)})
        # Report new source timestamps too: with the default StatusValue trigger a frozen value
        # is reported once, so a stuck instrument would read as stale instead of stuck.
        # (subscribe_data_change takes no filter; _subscribe is its body, asyncua pinned ~=2.1.0.)
        trigger = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
        try:
            sub = await client.create_subscription(self.publishing_interval_ms, cache)
            handles = await sub._subscribe(self._nodes, ua.AttributeIds.Value, trigger, 0,
                                           ua.MonitoringMode.Reporting, 0.0)
            if any(not isinstance(h, int) for h in handles):
                raise RuntimeError(f"{sum(not isinstance(h, int) for h in handles)} monitored items refused")
            # The first notification may lag a publishing interval: start from one full read.
            for name, dv in zip(self._names, await client.read_attributes(self._nodes)):
                cache.values.setdefault(name, dv)
        except Exception as exc:
            logging.getLogger("xtalpilot.plant_io").warning(
                "OPC UA %s: subscription refused (%s); reading every node each cycle instead", self.url, exc)
            return
        self._cache = cache

    async def read(self) -> Snapshot:
        if self._client is None:
            raise PlantIOError(f"OPC UA {self.url}: not connected")
        if self._cache is not None:
            from asyncua.client.ua_client import UaClientState

            if self._client.uaclient.state is not UaClientState.CONNECTED or self._cache.lost:
                await self.close()
                raise PlantIOError(f"OPC UA {self.url}: connection lost")
            by_name = dict(self._cache.values)
        else:
            try:
                data = await self._client.read_attributes(self._nodes)
            except Exception as exc:
                await self.close()
                raise PlantIOError(f"OPC UA {self.url}: read failed ({type(exc).__name__}: {exc})") from None
            by_name = dict(zip(self._names, data))
        clock = by_name.get("plant_time_s")
        plant_time = _value(clock)
        epoch = None
        if clock is not None and clock.SourceTimestamp is not None and math.isfinite(plant_time):
            epoch = clock.SourceTimestamp.timestamp() - plant_time
        readings = {}
        for name, dv in by_name.items():
            source = math.nan
            if epoch is not None and dv.SourceTimestamp is not None:
                source = dv.SourceTimestamp.timestamp() - epoch
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            readings[name] = Reading(_value(dv), source, good)
        return Snapshot(plant_time, readings, time.monotonic())

    async def write(self, values: Mapping[str, float]) -> dict[str, WriteOutcome]:
        from asyncua import ua

        allowed, out = _refuse_unwritable(self.tagmap, values)
        if not allowed:
            return out
        if self._client is None:
            return {**out, **{n: WriteOutcome(False, "not connected") for n in allowed}}
        nodes, dvs, names = [], [], []
        for name, value in allowed.items():
            s = self.tagmap[name]
            try:
                number = float(value)
            except (TypeError, ValueError):
                out[name] = WriteOutcome(False, f"{value!r} is not a number")
                continue
            if s.is_integer and s.modbus.scale == 1.0:
                if not number.is_integer():
                    out[name] = WriteOutcome(False, f"{name} takes integers, got {number}")
                    continue
                vtype = {"uint16": ua.VariantType.UInt16, "int16": ua.VariantType.Int16,
                         "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32}[s.modbus.type.value]
                variant = ua.Variant(int(number), vtype)
            else:
                variant = ua.Variant(number, ua.VariantType.Double)
            nodes.append(self._nodes[self._names.index(name)].nodeid)
            dvs.append(ua.DataValue(variant))
            names.append(name)
        try:
            results = await self._client.uaclient.write_attributes(nodes, dvs, ua.AttributeIds.Value)
        except Exception as exc:
            await self.close()
            return {**out, **{n: WriteOutcome(False, f"connection lost ({exc})") for n in names}}
        for name, status in zip(names, results):
            out[name] = WriteOutcome(True, status.name) if status.is_good() else WriteOutcome(False, status.name)
        return out

    async def close(self) -> None:
        self._cache = None
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.disconnect()
            except Exception:  # already gone: nothing more to release
                pass


class _ValueCache:
    """Subscription handler: the latest DataValue per signal (asyncua calls it from its task)."""

    def __init__(self, names_by_node: dict) -> None:
        self.names_by_node = names_by_node
        self.values: dict = {}
        self.lost = False

    def datachange_notification(self, node, val, data) -> None:
        name = self.names_by_node.get(node.nodeid)
        if name is not None:
            self.values[name] = data.monitored_item.Value

    def status_change_notification(self, status) -> None:
        code = getattr(status, "Status", status)
        if not (hasattr(code, "is_good") and code.is_good()):
            self.lost = True  # the server ended the subscription (shutdown, timeout)


def _value(dv) -> float:
    if dv is None or dv.Value is None:
        return math.nan
    try:
        return float(dv.Value.Value)
    except (TypeError, ValueError):
        return math.nan
