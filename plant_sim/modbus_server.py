"""Modbus TCP server of the simulated plant (pymodbus 3.16). All pymodbus calls live here.

Register map: straight from the tag map (:func:`conf.contract.tagmap.encode_registers`). Read-only
signals are input registers (function 4), writable ones holding registers (functions 3, 6,
16; 22 and 23 go through the same checks). Unit/device id ``tagmap.modbus_device_id``.
There are no coils or discrete inputs.

Behaviour a client needs to know:

- **Writes go through ``Plant.write``** (all validation lives in the plant). Rejections
  answer a Modbus exception: 3 (illegal data value) for NaN, out of range, wrong type
  (e.g. a fraction on an integer register after scaling) and invalid batch-state
  transitions; 2 (illegal data address) for registers outside the map, input registers,
  coils/discrete inputs, and **partial writes**.
- **Partial writes.** A 32-bit signal must be written whole, both words in one request
  (function 16). A request that covers only one word of a 32-bit signal (function 6, or a
  function 16 that starts or ends inside it) is refused with exception 2, and nothing of
  that request is applied.
- **Multi-signal writes** (one function-16 request covering several signals) are applied
  signal by signal in address order. At the first rejected signal the request answers its
  exception; signals before it stay applied (and show on the next read), signals after it
  are not written.
- **Clamping.** After an accepted write the holding registers hold the *applied* value
  (e.g. a clamped setpoint), so a read-back shows what the plant took.
- **Bad values.** A NaN measurement is a float32 quiet NaN (``0x7FC0 0x0000`` for big word
  order) in its registers. An integer signal cannot carry NaN: its registers keep the last
  good value (OPC UA flags it ``BadSensorFailure``).
- **Unknown device id**: pymodbus answers exception 4 (device failure) and logs an error.

Write hook: pymodbus 3.16 replaced datablock subclassing with ``SimDevice(action=...)``, an
async function called on every register access with the request's function code, address
and values. It may change the values to be stored, or return an ``ExcCodes`` to refuse.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from conf.contract.tagmap import ModbusTable, Signal, TagMap, decode_registers, encode_registers

# Set while this process's own publish writes the datastore (the access hook sees those too).
_PUBLISHING: contextvars.ContextVar[bool] = contextvars.ContextVar("modbus_publishing", default=False)

_log = logging.getLogger(__name__)

#: ``WriteStatus`` value -> Modbus exception code (None = accepted).
WRITE_STATUS_EXCEPTIONS: Mapping[str, ExcCodes | None] = {
    "ok": None,
    "clamped": None,
    "rejected_read_only": ExcCodes.ILLEGAL_ADDRESS,
    "rejected_unknown": ExcCodes.ILLEGAL_ADDRESS,
    "rejected_not_finite": ExcCodes.ILLEGAL_VALUE,
    "rejected_out_of_range": ExcCodes.ILLEGAL_VALUE,
    "rejected_type": ExcCodes.ILLEGAL_VALUE,
    "rejected_invalid_state": ExcCodes.ILLEGAL_VALUE,
}

_HOLDING_FCS = frozenset({3, 6, 16, 22, 23})
_INPUT_FCS = frozenset({4})
# Function codes pymodbus uses to update the datastore from the server side.
_PUBLISH_FC = {ModbusTable.input: 4, ModbusTable.holding: 16}


def _runs(signals: Sequence[Signal]) -> list[tuple[int, list[Signal]]]:
    """Group signals into runs of adjacent registers: [(first address, signals)]."""
    runs: list[tuple[int, list[Signal]]] = []
    next_addr: int | None = None
    for s in sorted(signals, key=lambda s: s.modbus.address):
        if next_addr is None or s.modbus.address != next_addr:
            runs.append((s.modbus.address, []))
        runs[-1][1].append(s)
        next_addr = s.modbus.address + s.modbus.count
    return runs


class PlantModbusServer:
    """The plant's Modbus TCP endpoint. Use ``async with`` or ``start()`` / ``stop()``.

    Args:
        plant: the simulated plant (``tagmap``, ``values()``, ``write()``).
        host, port: where to listen.
    """

    def __init__(self, plant: Any, *, host: str = "127.0.0.1", port: int = 5020) -> None:
        self.plant = plant
        self.tagmap: TagMap = plant.tagmap
        self.host = host
        self.port = port
        self.device_id = self.tagmap.modbus_device_id
        self._server: ModbusTcpServer | None = None
        self._signals = {t: [s for s in self.tagmap if s.modbus.table is t] for t in ModbusTable}
        self._runs = {t: _runs(self._signals[t]) for t in ModbusTable}
        # holding address -> signal, for write decoding
        self._holding_at: dict[int, Signal] = {}
        for s in self._signals[ModbusTable.holding]:
            for k in range(s.modbus.count):
                self._holding_at[s.modbus.address + k] = s
        # last published words per signal (integer NaN keeps the last good words)
        self._words: dict[str, list[int]] = {s.name: [0] * s.modbus.count for s in self.tagmap}
        self.writes_accepted = 0
        self.writes_rejected = 0
        #: awaited after every accepted client write (``serve_plant`` republishes both servers,
        #: so status tags such as ``batch_state`` change at once); None = republish this server.
        self.after_write: Callable[[], Awaitable[None]] | None = None

    # ------------------------------------------------------------------ lifecycle

    def _device(self) -> SimDevice:
        def block(table: ModbusTable) -> list[SimData]:
            data = [
                SimData(address=s.modbus.address, values=[0] * s.modbus.count, datatype=DataType.REGISTERS)
                for s in self._signals[table]
            ]
            # pymodbus needs at least one entry per block; an invalid cell answers exception 2.
            return data or [SimData(address=0, count=1, datatype=DataType.INVALID)]

        no_bits = [SimData(address=0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(
            id=self.device_id,
            simdata=(no_bits, list(no_bits), block(ModbusTable.holding), block(ModbusTable.input)),
            action=self._action,
        )

    async def start(self) -> None:
        """Listen on ``host:port``. Raises OSError / RuntimeError if the port cannot be bound."""
        server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        self._server = server
        await self.publish()
        try:
            await server.serve_forever(background=True)
        except BaseException:
            self._server = None
            await server.shutdown()
            raise
        _log.info("Modbus TCP server listening on %s:%d (device id %d)", self.host, self.port, self.device_id)

    async def stop(self) -> None:
        """Close the listening socket and client connections. Safe to call more than once."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()

    async def __aenter__(self) -> "PlantModbusServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ publishing

    def encode(self, signal: Signal, value: float) -> list[int]:
        """Register words for ``value``; NaN integers keep the last published words."""
        if signal.is_integer and (value is None or not math.isfinite(value)):
            return self._words[signal.name]
        try:
            words = encode_registers(signal, value)
        except ValueError:
            _log.warning("Modbus: %s=%r does not fit its register; keeping the last value", signal.name, value)
            return self._words[signal.name]
        self._words[signal.name] = words
        return words

    async def publish(self, values: Mapping[str, float] | None = None) -> None:
        """Copy plant values into the input and holding registers (server side, no network)."""
        server = self._server
        if server is None:
            return
        if values is None:
            values = self.plant.values()
        # Per task, not per server: a client request served while this publish awaits the
        # datastore runs in its own task and is validated like any other write.
        token = _PUBLISHING.set(True)
        try:
            for table, runs in self._runs.items():
                for first, signals in runs:
                    image: list[int] = []
                    for s in signals:
                        image.extend(self.encode(s, values.get(s.name, math.nan)))
                    rc = await server.context.async_setValues(self.device_id, _PUBLISH_FC[table], first, image)
                    if rc:
                        raise RuntimeError(f"Modbus datastore refused publish at {table.value} {first}: {rc!r}")
        finally:
            _PUBLISHING.reset(token)

    # ------------------------------------------------------------------ client access

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus hook, called on every access before the datastore is read or written."""
        if _PUBLISHING.get():
            return None  # our own publish, not a client
        if function_code not in _HOLDING_FCS and function_code not in _INPUT_FCS:
            return ExcCodes.ILLEGAL_ADDRESS  # no coils or discrete inputs on this device
        if set_values is None:
            return None  # reads: pymodbus already checked the addresses
        if function_code not in _HOLDING_FCS:
            return ExcCodes.ILLEGAL_ADDRESS
        accepted_before = self.writes_accepted
        result = self._client_write(address, set_values)  # type: ignore[arg-type]
        if self.writes_accepted != accepted_before:
            await (self.after_write() if self.after_write is not None else self.publish())
            # pymodbus stores set_values after this hook returns; they already hold the applied values.
        return result

    def _client_write(self, address: int, words: list[int]) -> ExcCodes | None:
        end = address + len(words)
        signals: list[Signal] = []
        for a in range(address, end):
            s = self._holding_at.get(a)
            if s is None:
                return self._reject(None, f"holding register {a} is not mapped", ExcCodes.ILLEGAL_ADDRESS)
            if not signals or signals[-1] is not s:
                signals.append(s)
        for s in signals:
            first, n = s.modbus.address, s.modbus.count
            if first < address or first + n > end:
                return self._reject(
                    s, f"partial write: {s.name} spans registers {first}..{first + n - 1}, "
                    f"request {address}..{end - 1}", ExcCodes.ILLEGAL_ADDRESS,
                )
        for s in signals:
            off = s.modbus.address - address
            chunk = words[off: off + s.modbus.count]
            value = decode_registers(s, chunk)
            try:
                result = self.plant.write(s.name, value)
            except Exception:  # a plant bug must not take the server down
                _log.exception("Plant.write(%s, %r) raised", s.name, value)
                return self._reject(s, "plant error", ExcCodes.DEVICE_FAILURE)
            status = getattr(result.status, "value", str(result.status))
            exc = WRITE_STATUS_EXCEPTIONS.get(status, ExcCodes.DEVICE_FAILURE)
            if exc is not None:
                return self._reject(s, f"{s.name}={value!r}: {status} ({result.message})", exc)
            self.writes_accepted += 1
            applied = result.applied if result.applied is not None else value
            if status == "clamped":
                _log.info("Modbus write %s=%r clamped to %r", s.name, value, applied)
            words[off: off + s.modbus.count] = self.encode(s, applied)  # store the applied value
        return None

    def _reject(self, signal: Signal | None, why: str, exc: ExcCodes) -> ExcCodes:
        self.writes_rejected += 1
        _log.info("Modbus write refused (exception %d): %s", int(exc), why)
        return exc
