"""Serve a simulated plant over OPC UA and Modbus TCP in (scaled) real time.

``serve_plant`` runs one loop: every ``publish_interval_s`` of wall time it advances the plant
to ``speed x elapsed wall time`` (measured on the monotonic clock from the start, so rounding
never accumulates into drift), then publishes all values to both servers.

If the plant cannot keep up (after a tick, plant time still lags the ``speed x wall`` target
by more than two publish intervals' worth), the loop logs it, counts it
(:attr:`ServeStats.lag_events`) and re-bases the target on the time actually reached: the
plant runs slower than asked rather than sprinting to catch up. A single tick never
advances more than one wall second's worth of plant time.

Shutdown: the ``stop`` event, SIGINT or SIGTERM (the handlers only set the event). Both
servers are always stopped and their sockets closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from conf.contract.codes import SecurityMode
from plant_sim.modbus_server import PlantModbusServer
from plant_sim.opcua_server import OpcUaSecurity, PlantOpcUaServer
from plant_sim.security import SecurityConfigError, check_server_material, server_certificate_paths

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    """How the plant is served.

    Attributes:
        host: interface both servers bind to (loopback by default).
        opcua_port: OPC UA TCP port.
        modbus_port: Modbus TCP port.
        speed: plant seconds per wall second.
        publish_interval_s: wall seconds between plant steps / publications.
        security: OPC UA security mode.
        cert_dir: folder with the server certificate and key (``xtalpilot certs``).
        users_file: YAML users file (required for ``sign_encrypt``).
        enable_opcua: serve OPC UA.
        enable_modbus: serve Modbus TCP.
        physics_process: step the plant in a child process (:class:`PlantProcess`), so the
            physics never holds the servers' event loop; ``xtalpilot plant`` turns it on.
    """

    host: str = "127.0.0.1"
    opcua_port: int = 4840
    modbus_port: int = 5020
    speed: float = 600.0
    publish_interval_s: float = 0.05
    security: SecurityMode = SecurityMode.insecure
    cert_dir: str = "certs"
    users_file: str | None = None
    enable_opcua: bool = True
    enable_modbus: bool = True
    physics_process: bool = False


@dataclass
class ServeStats:
    """Counters of one ``serve_plant`` run (read them after it returns, or while it runs)."""

    ticks: int = 0
    lag_events: int = 0
    max_lag_plant_s: float = 0.0
    plant_time_s: float = 0.0
    ready: bool = False
    endpoints: dict[str, str] = field(default_factory=dict)


class PortInUseError(RuntimeError):
    """A port the plant needs is taken; the message names the port and the override."""


class SettingsError(ValueError):
    """Settings that cannot work (non-positive speed, same port twice, ...)."""


def check_settings(settings: ServerSettings) -> None:
    """Raise :class:`SettingsError` for settings that cannot work."""
    if not (math.isfinite(settings.speed) and settings.speed > 0):
        raise SettingsError(f"speed must be > 0 plant s per wall s, got {settings.speed} (speed=...)")
    if not (math.isfinite(settings.publish_interval_s) and settings.publish_interval_s > 0):
        raise SettingsError(f"publish_interval_s must be > 0, got {settings.publish_interval_s}")
    if not (settings.enable_opcua or settings.enable_modbus):
        raise SettingsError("nothing to serve: enable_opcua and enable_modbus are both false")
    for key, port in (("opcua_port", settings.opcua_port), ("modbus_port", settings.modbus_port)):
        if not (isinstance(port, int) and 1 <= port <= 65535):
            raise SettingsError(f"{key} must be a TCP port 1..65535, got {port!r} ({key}=...)")
    if settings.enable_opcua and settings.enable_modbus and settings.opcua_port == settings.modbus_port:
        raise SettingsError(f"opcua_port and modbus_port are both {settings.opcua_port}; change one")


def check_ports(settings: ServerSettings) -> None:
    """Bind-test every enabled port before starting anything.

    Raises:
        PortInUseError: naming the port, the protocol and the override that changes it.
    """
    wanted = []
    if settings.enable_opcua:
        wanted.append(("OPC UA", "opcua_port", settings.opcua_port))
    if settings.enable_modbus:
        wanted.append(("Modbus TCP", "modbus_port", settings.modbus_port))
    for proto, key, port in wanted:
        try:
            infos = socket.getaddrinfo(settings.host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, ValueError, OverflowError) as exc:
            raise PortInUseError(f"cannot resolve host {settings.host!r} ({exc}); set host=...") from None
        family, socktype, proto_num, _, addr = infos[0]
        with socket.socket(family, socktype, proto_num) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio servers do
            try:
                sock.bind(addr)
            except OSError as exc:
                raise PortInUseError(
                    f"{proto} port {port} on {settings.host} is not available ({exc.strerror}); "
                    f"stop whatever uses it or choose another port with {key}=..."
                ) from None


def _opcua_security(settings: ServerSettings) -> OpcUaSecurity | None:
    if settings.security is SecurityMode.insecure or settings.security == "insecure":
        return None
    users = check_server_material(settings.cert_dir, settings.users_file)
    cert, key = server_certificate_paths(settings.cert_dir)
    return OpcUaSecurity(certificate=cert, private_key=key, users=users)


def ready_line(plant: Any, settings: ServerSettings) -> str:
    """The line announcing the plant is served (tests and scripts wait for it)."""
    parts = []
    if settings.enable_opcua:
        parts.append(f"opc.tcp://{settings.host}:{settings.opcua_port}")
    if settings.enable_modbus:
        parts.append(f"modbus {settings.host}:{settings.modbus_port}")
    return f"plant {plant.tagmap.reactor} serving {' and '.join(parts)} at {settings.speed:g}x"


# Wall seconds between progress snapshots from the physics process during a long advance.
SNAPSHOT_INTERVAL_S = 0.02


class PlantProcess:
    """The plant stepped in a forked child process, seen through the plant interface.

    Why: the physics costs ~0.2 ms per plant second, so at 1000x it holds an event loop ~20 % of
    the time and client requests queue behind it (measured on loopback: Modbus read p99
    2.5 ms in-process vs 1.1 ms with no physics). In a child process the servers' loop only
    serves and publishes.

    Protocol (two duplex pipes): ``advance`` requests go to the child, which answers each with a
    snapshot (plant time, values, plant seconds advanced); ``write`` is a blocking round trip
    answered between physics chunks of at most :data:`CHUNK_PLANT_S`, so a write waits at most
    one chunk (~1 ms). The child exits when the parent closes the pipes or dies.
    """

    CHUNK_PLANT_S = 5.0
    REPLY_TIMEOUT_S = 5.0

    def __init__(self, plant: Any) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.tagmap = plant.tagmap
        self._values = dict(plant.values())
        self._time = float(plant.plant_time_s)
        self._outstanding_s = 0.0
        self._seq = -1
        self._request_id = 0
        self._adv, adv_child = ctx.Pipe()
        self._rpc, rpc_child = ctx.Pipe()
        self._proc = ctx.Process(target=_plant_worker, args=(plant, adv_child, rpc_child, (self._adv, self._rpc)), daemon=True,
                                 name="xtalpilot-plant-physics")
        self._proc.start()
        adv_child.close()
        rpc_child.close()

    @property
    def alive(self) -> bool:
        return self._proc.is_alive()

    def _drain(self) -> None:
        try:
            while self._adv.poll():
                _, seq, plant_time_s, values, advanced_s = self._adv.recv()
                self._take(seq, plant_time_s, values)
                self._outstanding_s -= advanced_s
        except (EOFError, OSError):
            pass  # the child died; the serve loop notices through ``alive``

    def _take(self, seq: int, plant_time_s: float, values: dict[str, float]) -> None:
        # Snapshots and write replies travel on different pipes; keep only the newest state, or a
        # snapshot sent just before a write would hide the write's effect.
        if seq > self._seq:
            self._seq, self._time, self._values = seq, plant_time_s, values

    @property
    def plant_time_s(self) -> float:
        self._drain()
        return self._time

    def values(self) -> dict[str, float]:
        self._drain()
        return dict(self._values)

    def request_advance(self, plant_s: float, max_outstanding_s: float) -> float:
        """Ask the child to advance; returns the plant seconds requested (0 if it is behind)."""
        self._drain()
        if self._outstanding_s > max_outstanding_s:
            return 0.0
        self._adv.send(("advance", plant_s))
        self._outstanding_s += plant_s
        return plant_s

    def advance(self, plant_s: float) -> None:
        self.request_advance(plant_s, math.inf)

    def write(self, name: str, value: Any) -> Any:
        from plant_sim.plant import WriteResult, WriteStatus

        self._request_id += 1
        request_id = self._request_id
        try:
            self._rpc.send(("write", request_id, name, value))
        except (TypeError, AttributeError, ValueError) as exc:  # unpicklable client payload
            return WriteResult(WriteStatus.rejected_type, None, f"{name}: unsupported value ({exc})")
        deadline = time.monotonic() + self.REPLY_TIMEOUT_S
        while True:
            if not self._rpc.poll(max(0.0, deadline - time.monotonic())):
                # The reply may still come; the request id keeps it from answering a later write.
                raise RuntimeError(f"the plant process did not answer the write to {name} "
                                   f"within {self.REPLY_TIMEOUT_S} s")
            _, reply_id, seq, status, applied, message, plant_time_s, values = self._rpc.recv()
            self._take(seq, plant_time_s, values)
            if reply_id == request_id:
                return WriteResult(WriteStatus(status), applied, message)

    def close(self) -> None:
        for conn in (self._adv, self._rpc):
            with contextlib.suppress(OSError):
                conn.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)


def _plant_worker(plant: Any, adv: Any, rpc: Any, parent_ends: tuple[Any, ...] = ()) -> None:
    """Child process: advance on request, answer writes between chunks, send snapshots."""
    from multiprocessing.connection import wait

    from plant_sim.plant import WriteStatus

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # The fork copied the parent's ends of the pipes; closed here, the parent closing its own
    # copies reaches this process as EOF and it exits at once.
    for conn in parent_ends:
        conn.close()
    # Lower priority than the serving process: when the physics wakes for a burst it must not
    # preempt the event loop answering clients (a small machine has fewer cores than processes).
    with contextlib.suppress(OSError):
        os.nice(10)

    seq = itertools.count()

    def serve_writes() -> None:
        while rpc.poll():
            _, request_id, name, value = rpc.recv()
            try:
                result = plant.write(name, value)
                reply = (result.status.value, result.applied, result.message)
            except Exception as exc:  # a bad write must not stop the physics
                _log.exception("Plant.write(%s, %r) raised", name, value)
                reply = (WriteStatus.failed.value, None, f"{name}: plant error ({exc})")
            rpc.send(("result", request_id, next(seq), *reply, plant.plant_time_s, plant.values()))

    try:
        while True:
            wait([adv, rpc])
            serve_writes()
            while adv.poll():
                _, plant_s = adv.recv()
                done, unreported, last_sent = 0.0, 0.0, time.monotonic()
                while done < plant_s:
                    chunk = min(PlantProcess.CHUNK_PLANT_S, plant_s - done)
                    plant.advance(chunk)
                    done += chunk
                    unreported += chunk
                    serve_writes()
                    if time.monotonic() - last_sent > SNAPSHOT_INTERVAL_S:
                        # A long request still shows progress to the clients.
                        adv.send(("values", next(seq), plant.plant_time_s, plant.values(), unreported))
                        unreported, last_sent = 0.0, time.monotonic()
                adv.send(("values", next(seq), plant.plant_time_s, plant.values(), unreported))
    except (EOFError, OSError, BrokenPipeError):
        return  # parent closed the pipes: shut down
    except Exception:
        _log.exception("plant physics failed")
        raise


async def serve_plant(
    plant: Any,
    settings: ServerSettings,
    stop: asyncio.Event | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stats: ServeStats | None = None,
) -> None:
    """Serve ``plant`` until ``stop`` is set (or SIGINT/SIGTERM in the main thread).

    Args:
        plant: ``plant_sim.plant.Plant`` (``tagmap``, ``plant_time_s``, ``advance``,
            ``values``, ``write``).
        settings: ports, speed, security.
        stop: set it to shut down; a private one is made when None.
        on_ready: called once with :func:`ready_line` when both servers listen.
        stats: filled with counters while running.

    Raises:
        SettingsError, PortInUseError, SecurityConfigError: before any server starts.
    """
    check_settings(settings)
    security = _opcua_security(settings)
    check_ports(settings)
    stop = stop if stop is not None else asyncio.Event()
    stats = stats if stats is not None else ServeStats()
    loop = asyncio.get_running_loop()
    epoch = datetime.now(timezone.utc)
    installed: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        if settings.physics_process:
            # Fork before any server socket exists, so the child holds none of them. Closed by the
            # stack even if a server constructor below raises.
            plant = PlantProcess(plant)
            stack.callback(plant.close)
        servers: list[Any] = []
        if settings.enable_opcua:
            servers.append(PlantOpcUaServer(plant, host=settings.host, port=settings.opcua_port,
                                            security=security, plant_epoch=epoch))
        if settings.enable_modbus:
            servers.append(PlantModbusServer(plant, host=settings.host, port=settings.modbus_port))

        async def republish() -> None:
            values, plant_time_s = plant.values(), plant.plant_time_s
            for srv in servers:
                if isinstance(srv, PlantOpcUaServer):
                    await srv.publish(values, plant_time_s)
                else:
                    await srv.publish(values)

        for srv in servers:
            srv.after_write = republish

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, stop.set)
                    installed.append(sig)
        stack.callback(lambda: [loop.remove_signal_handler(s) for s in installed])
        for srv in servers:
            stack.push_async_callback(srv.stop)
        async with asyncio.TaskGroup() as tg:
            for srv in servers:
                tg.create_task(srv.start())
        gc.collect()
        gc.freeze()  # NOTES: avoids ~175 ms gen-2 pauses stalling every read
        line = ready_line(plant, settings)
        stats.ready = True
        stats.endpoints = {type(s).__name__: getattr(s, "endpoint", f"{s.host}:{s.port}") for s in servers}
        if on_ready is not None:
            on_ready(line)
        else:
            _log.info("%s", line)
        await _run_loop(plant, settings, servers, stop, stats)
        _log.info(
            "plant stopped at plant time %.1f s after %d ticks (%d lag events, worst lag %.1f plant s)",
            stats.plant_time_s, stats.ticks, stats.lag_events, stats.max_lag_plant_s,
        )


# Wall time the physics may hold the event loop before letting client requests through. Without
# slicing, a tick at 1000x computes ~50 plant seconds in one go (~10-15 ms) and every read that
# arrives meanwhile waits for it (measured: OPC UA read p99 7.6 ms instead of ~1.5 ms).
SLICE_WALL_S = 0.0002


async def _advance_in_slices(plant: Any, plant_s: float, deadline: float) -> float:
    """Advance ``plant_s`` plant seconds in slices of ~SLICE_WALL_S, yielding between them.

    Stops early at ``deadline`` (monotonic) so a plant slower than the requested speed still
    publishes every tick; the caller's lag accounting sees the shortfall. Returns the plant
    seconds advanced.
    """
    done, per_plant_s = 0.0, None
    while done < plant_s:
        if per_plant_s is None:
            chunk = min(1.0, plant_s - done)
        else:
            chunk = min(max(SLICE_WALL_S / per_plant_s, 1.0), plant_s - done)
        t0 = time.perf_counter()
        plant.advance(chunk)
        elapsed = time.perf_counter() - t0
        per_plant_s = max(elapsed / chunk, 1e-7)
        done += chunk
        await asyncio.sleep(0)
        if time.monotonic() > deadline:
            break
    return done


async def _run_loop(plant: Any, settings: ServerSettings, servers: list[Any], stop: asyncio.Event,
                    stats: ServeStats) -> None:
    speed = float(settings.speed)
    interval = float(settings.publish_interval_s)
    max_step_s = speed * 1.0  # at most one wall second's worth of plant time per tick
    lag_limit_s = speed * interval * 2.0
    wall0 = time.monotonic()
    base_plant_s = 0.0  # plant seconds requested before wall0 (re-based on lag)
    advanced_s = 0.0  # plant seconds requested from plant.advance so far
    last_lag_log = -math.inf
    next_tick = wall0
    while not stop.is_set():
        target = base_plant_s + speed * (time.monotonic() - wall0)
        step = min(target - advanced_s, max_step_s)
        if isinstance(plant, PlantProcess):
            if not plant.alive:
                raise RuntimeError("the plant physics process died; see the log above")
            if step > 0:
                advanced_s += plant.request_advance(step, max_outstanding_s=lag_limit_s)
        elif step > 0:
            advanced_s += await _advance_in_slices(plant, step, deadline=time.monotonic() + 0.8 * interval)
        values = plant.values()
        plant_time_s = plant.plant_time_s
        for srv in servers:
            if isinstance(srv, PlantOpcUaServer):
                await srv.publish(values, plant_time_s)
            else:
                await srv.publish(values)
        stats.ticks += 1
        stats.plant_time_s = plant_time_s
        now = time.monotonic()
        lag = base_plant_s + speed * (now - wall0) - advanced_s
        if lag > lag_limit_s:
            stats.lag_events += 1
            stats.max_lag_plant_s = max(stats.max_lag_plant_s, lag)
            if now - last_lag_log > 10.0:
                _log.warning(
                    "plant cannot keep up at %gx: %.1f plant s behind the target (%d lag events so far); "
                    "continuing slower than requested",
                    speed, lag, stats.lag_events,
                )
                last_lag_log = now
            base_plant_s, wall0 = advanced_s, now  # re-base: no catch-up sprint
        next_tick += interval
        if next_tick < now:  # missed ticks: skip them instead of bursting
            next_tick = now + interval - ((now - next_tick) % interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - time.monotonic()))


def run_plant_server(plant: Any, settings: ServerSettings) -> int:
    """Blocking entry point for ``xtalpilot plant``.

    Prints the ready line to stderr once both servers listen. Configuration problems (port
    taken, missing or bad certificate, missing users file, bad settings) become one log line
    and exit code 2, without a traceback.

    Returns:
        process exit code: 0 after a clean shutdown, 2 for configuration errors, 1 if the
        plant or a server failed while running.
    """
    def announce(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        asyncio.run(serve_plant(plant, settings, on_ready=announce))
    except (PortInUseError, SecurityConfigError, SettingsError) as exc:
        _log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        return 0
    except BaseExceptionGroup as group:  # a server failed to start
        os_errors, rest = group.split(OSError)
        if rest is None and os_errors is not None:  # e.g. a port taken between the check and the bind
            for exc in os_errors.exceptions:
                _log.error("cannot serve the plant: %s", exc)
            return 2
        _log.error("plant server failed", exc_info=group)
        return 1
    except Exception:
        _log.exception("plant server failed")
        return 1
    return 0
