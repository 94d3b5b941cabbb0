"""The tag map: one table that names every plant signal and says how each protocol carries it.

The plant simulator's OPC UA and Modbus servers, and the agent's clients, are all driven by
the same tag map (``conf/plant/*.yaml``), so the two protocols cannot drift apart.

Canonical signal names carry their unit (``reactor_temperature_c``,
``concentration_g_per_kg``). Each signal has:

- an engineering range (``low``..``high``): the range of the instrument or of the loop. A
  write outside it is *rejected* by the plant (OPC UA ``BadOutOfRange``, Modbus exception 3).
- for writable setpoints, plant-side ``limits`` and a ``max_rate_per_min``: a write inside the
  engineering range but outside the limits is *clamped*; the working setpoint moves towards the
  written value no faster than the rate limit (defence in depth, as a DCS does).
- an OPC UA node id (string identifier in the reactor's namespace).
- a Modbus register: table (``input`` for read-only, ``holding`` for writable), address,
  data type and word order. Integer types carry ``scale``: register = round(value * scale).

This module is pure: it validates the map and converts values to and from registers.
"""

from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping


class ModbusTable(str, enum.Enum):
    """Modbus register table. Read-only signals live in input registers (function 4)."""

    input = "input"
    holding = "holding"


class ModbusType(str, enum.Enum):
    """Register data type. 32-bit types take two registers."""

    float32 = "float32"
    int16 = "int16"
    uint16 = "uint16"
    int32 = "int32"
    uint32 = "uint32"


class WordOrder(str, enum.Enum):
    """Order of the two 16-bit words of a 32-bit value (bytes within a word are big-endian)."""

    big = "big"  # high word first ("ABCD"), the Modbus convention
    little = "little"  # low word first ("CDAB"), common on some PLCs


class SignalKind(str, enum.Enum):
    """What a signal is, which decides how clients and the plant treat writes to it."""

    measurement = "measurement"  # read-only process value
    setpoint = "setpoint"  # writable remote setpoint: clamped, rate-limited by the plant
    command = "command"  # writable discrete command or heartbeat: no rate limit
    status = "status"  # read-only discrete status reported by the plant


_REGISTERS_PER_TYPE = {
    ModbusType.float32: 2,
    ModbusType.int16: 1,
    ModbusType.uint16: 1,
    ModbusType.int32: 2,
    ModbusType.uint32: 2,
}
_INT_LIMITS = {
    ModbusType.int16: (-(2**15), 2**15 - 1),
    ModbusType.uint16: (0, 2**16 - 1),
    ModbusType.int32: (-(2**31), 2**31 - 1),
    ModbusType.uint32: (0, 2**32 - 1),
}


class TagMapError(ValueError):
    """A tag map that cannot be used; the message names the signal and the field."""


@dataclass(frozen=True)
class ModbusRegister:
    """Where and how one signal sits in the Modbus register space."""

    table: ModbusTable
    address: int
    type: ModbusType = ModbusType.float32
    word_order: WordOrder = WordOrder.big
    scale: float = 1.0

    @property
    def count(self) -> int:
        """Number of 16-bit registers the value occupies."""
        return _REGISTERS_PER_TYPE[self.type]


@dataclass(frozen=True)
class Signal:
    """One plant signal. See the module docstring for the meaning of each field."""

    name: str
    kind: SignalKind
    unit: str
    low: float
    high: float
    opcua_node: str
    modbus: ModbusRegister
    description: str = ""
    writable: bool = False
    limits: tuple[float, float] | None = None
    max_rate_per_min: float | None = None
    safety_instrumented: bool = False

    @property
    def is_integer(self) -> bool:
        """Discrete signals (states, commands, counters) are integers on both protocols."""
        return self.modbus.type is not ModbusType.float32

    def in_range(self, value: float) -> bool:
        """True if ``value`` is finite and inside the engineering range."""
        return math.isfinite(value) and self.low <= value <= self.high

    def clamp(self, value: float) -> float:
        """Clamp a finite value into the plant-side limits (engineering range if none)."""
        lo, hi = self.limits if self.limits is not None else (self.low, self.high)
        return min(max(value, lo), hi)


@dataclass(frozen=True)
class TagMap:
    """All signals of one reactor, by canonical name."""

    reactor: str
    namespace_uri: str
    signals: Mapping[str, Signal]
    modbus_device_id: int = 1

    def __getitem__(self, name: str) -> Signal:
        try:
            return self.signals[name]
        except KeyError:
            raise KeyError(f"unknown signal {name!r}; the tag map has {sorted(self.signals)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.signals

    def __iter__(self):
        return iter(self.signals.values())

    def __len__(self) -> int:
        return len(self.signals)

    @property
    def writable(self) -> tuple[Signal, ...]:
        return tuple(s for s in self.signals.values() if s.writable)

    def register_span(self, table: ModbusTable) -> tuple[int, int]:
        """(first address, register count) covering every signal in ``table``."""
        regs = [s.modbus for s in self.signals.values() if s.modbus.table is table]
        if not regs:
            return (0, 0)
        first = min(r.address for r in regs)
        last = max(r.address + r.count for r in regs)
        return first, last - first

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TagMap":
        """Build and validate a tag map from plain data (a composed Hydra config or YAML).

        Raises:
            TagMapError: naming the signal and field of the first problem found.
        """
        try:
            reactor = str(data["reactor"])
            raw_signals = data["signals"]
        except (KeyError, TypeError) as exc:
            raise TagMapError(f"tag map needs 'reactor' and 'signals' (missing {exc})") from None
        signals: dict[str, Signal] = {}
        for name, raw in dict(raw_signals).items():
            signals[name] = _signal_from_dict(str(name), raw)
        tagmap = cls(
            reactor=reactor,
            namespace_uri=str(data.get("namespace_uri", f"urn:xtalpilot:{reactor}")),
            signals=signals,
            modbus_device_id=int(data.get("modbus_device_id", 1)),
        )
        tagmap.validate()
        return tagmap

    def validate(self) -> None:
        """Check writability rules and that no two signals overlap on either protocol."""
        if not self.signals:
            raise TagMapError("tag map has no signals")
        seen_nodes: dict[str, str] = {}
        used: dict[tuple[ModbusTable, int], str] = {}
        for s in self.signals.values():
            where = f"signal {s.name!r}"
            if s.writable and s.modbus.table is not ModbusTable.holding:
                raise TagMapError(f"{where}: writable signals must be in holding registers (modbus.table)")
            if not s.writable and s.modbus.table is not ModbusTable.input:
                raise TagMapError(f"{where}: read-only signals must be in input registers (modbus.table)")
            if s.writable and s.kind not in (SignalKind.setpoint, SignalKind.command):
                raise TagMapError(f"{where}: only setpoint and command signals may be writable (kind={s.kind.value})")
            if s.writable and s.safety_instrumented:
                raise TagMapError(f"{where}: safety-instrumented tags are never writable by xtalpilot")
            if not (math.isfinite(s.low) and math.isfinite(s.high) and s.low < s.high):
                raise TagMapError(f"{where}: needs finite low < high, got low={s.low}, high={s.high}")
            if s.limits is not None:
                lo, hi = s.limits
                if not (s.low <= lo < hi <= s.high):
                    raise TagMapError(f"{where}: limits {s.limits} must lie inside [low, high] = [{s.low}, {s.high}]")
            if s.max_rate_per_min is not None and not s.max_rate_per_min > 0:
                raise TagMapError(f"{where}: max_rate_per_min must be > 0")
            if s.modbus.type in _INT_LIMITS:
                ilo, ihi = _INT_LIMITS[s.modbus.type]
                if s.low * s.modbus.scale < ilo or s.high * s.modbus.scale > ihi:
                    raise TagMapError(
                        f"{where}: range [{s.low}, {s.high}] x scale {s.modbus.scale} does not fit {s.modbus.type.value}"
                    )
            if s.modbus.scale <= 0:
                raise TagMapError(f"{where}: modbus.scale must be > 0")
            if s.opcua_node in seen_nodes:
                raise TagMapError(f"{where}: opcua_node {s.opcua_node!r} already used by {seen_nodes[s.opcua_node]!r}")
            seen_nodes[s.opcua_node] = s.name
            for offset in range(s.modbus.count):
                key = (s.modbus.table, s.modbus.address + offset)
                if key in used:
                    raise TagMapError(
                        f"{where}: {s.modbus.table.value} register {key[1]} overlaps signal {used[key]!r}"
                    )
                used[key] = s.name


def _enum(enum_cls: type[enum.Enum], value: Any, where: str) -> Any:
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(str(value))
    except ValueError:
        allowed = ", ".join(m.value for m in enum_cls)
        raise TagMapError(f"{where}: {value!r} is not one of: {allowed}") from None


def _signal_from_dict(name: str, raw: Mapping[str, Any]) -> Signal:
    where = f"signal {name!r}"
    try:
        raw = dict(raw)
        mb = dict(raw["modbus"])
        register = ModbusRegister(
            table=_enum(ModbusTable, mb["table"], f"{where}.modbus.table"),
            address=int(mb["address"]),
            type=_enum(ModbusType, mb.get("type", "float32"), f"{where}.modbus.type"),
            word_order=_enum(WordOrder, mb.get("word_order", "big"), f"{where}.modbus.word_order"),
            scale=float(mb.get("scale", 1.0)),
        )
        limits = raw.get("limits")
        return Signal(
            name=name,
            kind=_enum(SignalKind, raw["kind"], f"{where}.kind"),
            unit=str(raw.get("unit", "")),
            low=float(raw["low"]),
            high=float(raw["high"]),
            opcua_node=str(raw["opcua_node"]),
            modbus=register,
            description=str(raw.get("description", "")),
            writable=bool(raw.get("writable", False)),
            limits=(float(limits[0]), float(limits[1])) if limits is not None else None,
            max_rate_per_min=float(raw["max_rate_per_min"]) if raw.get("max_rate_per_min") is not None else None,
            safety_instrumented=bool(raw.get("safety_instrumented", False)),
        )
    except TagMapError:
        raise
    except KeyError as exc:
        raise TagMapError(f"{where}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise TagMapError(f"{where}: {exc}") from None


def encode_registers(signal: Signal, value: float) -> list[int]:
    """Engineering value -> 16-bit register words, per the signal's type, scale and word order.

    Raises:
        ValueError: for a value that is not finite (integer types) or does not fit the type.
    """
    reg = signal.modbus
    if reg.type is ModbusType.float32:
        raw = struct.pack(">f", value)
    else:
        if not math.isfinite(value):
            raise ValueError(f"{signal.name}: cannot encode {value} as {reg.type.value}")
        scaled = round(value * reg.scale)
        lo, hi = _INT_LIMITS[reg.type]
        if not lo <= scaled <= hi:
            raise ValueError(f"{signal.name}: {value} x {reg.scale} does not fit {reg.type.value}")
        fmt = {ModbusType.int16: ">h", ModbusType.uint16: ">H", ModbusType.int32: ">i", ModbusType.uint32: ">I"}[reg.type]
        raw = struct.pack(fmt, scaled)
    words = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
    if reg.word_order is WordOrder.little:
        words.reverse()
    return words


def decode_registers(signal: Signal, words: list[int]) -> float:
    """16-bit register words -> engineering value (inverse of :func:`encode_registers`)."""
    reg = signal.modbus
    if len(words) != reg.count:
        raise ValueError(f"{signal.name}: expected {reg.count} registers, got {len(words)}")
    ordered = list(words) if reg.word_order is WordOrder.big else list(reversed(words))
    raw = b"".join(int(w & 0xFFFF).to_bytes(2, "big") for w in ordered)
    if reg.type is ModbusType.float32:
        return struct.unpack(">f", raw)[0]
    fmt = {ModbusType.int16: ">h", ModbusType.uint16: ">H", ModbusType.int32: ">i", ModbusType.uint32: ">I"}[reg.type]
    return struct.unpack(fmt, raw)[0] / reg.scale
