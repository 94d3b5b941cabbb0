"""Fixtures that start the simulated plant's servers on loopback and always stop them.

Two ways to run the plant:

- ``subprocess`` (default once ``xtalpilot plant`` exists): ``python -m controller.cli plant``
  with Hydra overrides, waiting for the ready line on stderr; terminated (then killed) at
  teardown.
- ``inprocess``: ``serve_plant`` on a background thread with its own event loop, used before
  the CLI exists, or when ``XTALPILOT_PLANT_FIXTURE=inprocess``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TAGMAP_YAML = REPO / "conf" / "plant" / "crystallizer.yaml"
READY_RE = re.compile(r"plant \S+ serving .* at [0-9.e+]+x")
START_TIMEOUT_S = 45.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class PlantServer:
    """Where a running plant listens, and how it was started."""

    host: str
    opcua_port: int
    modbus_port: int
    speed: float
    shed_timeout_s: float
    security: str
    mode: str  # "subprocess" or "inprocess"
    cert_dir: str | None = None
    users_file: str | None = None
    log: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    plant: Any = None  # in-process only

    @property
    def opcua_url(self) -> str:
        return f"opc.tcp://{self.host}:{self.opcua_port}"

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None


def cli_available() -> bool:
    """True when ``controller.cli`` exists (the ``xtalpilot plant`` command)."""
    return importlib.util.find_spec("controller.cli") is not None


def fixture_mode() -> str:
    forced = os.environ.get("XTALPILOT_PLANT_FIXTURE")
    if forced in ("inprocess", "subprocess"):
        return forced
    return "subprocess" if cli_available() else "inprocess"


def load_tagmap():
    from conf.contract.tagmap import TagMap

    return TagMap.from_dict(yaml.safe_load(TAGMAP_YAML.read_text()))


def make_test_plant(shed_timeout_s: float):
    """The real plant with a recipe that keeps the batch executing (in-process fixture)."""
    from plant_sim.plant import Plant, PlantSettings
    from conf.contract.process import RecipeStep
    from plant_sim.scenarios import Scenario

    scenario = Scenario(recipe=(RecipeStep(temperature_c=55.0, hold_min=10_000.0),), duration_min=20_000.0)
    return Plant(load_tagmap(), scenario, PlantSettings(shed_timeout_s=shed_timeout_s))


@contextlib.contextmanager
def run_inprocess(plant: Any, settings: Any) -> Iterator[Any]:
    """Run ``serve_plant`` on a background thread; yields the ``ServeStats``; always stops it."""
    from plant_sim.serve import ServeStats, serve_plant

    stats = ServeStats()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    def target() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve_plant(plant, settings, stop, stats=stats))
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=target, name="plant-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not stats.ready:
            if errors or not thread.is_alive():
                raise RuntimeError(f"in-process plant server failed to start: {errors!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("in-process plant server not ready")
            time.sleep(0.02)
        yield stats
    finally:
        if thread.is_alive() and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
        assert not thread.is_alive(), "plant server thread did not stop"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def run_subprocess(overrides: list[str], log: list[str]) -> Iterator[subprocess.Popen]:
    """Start ``python -m controller.cli plant <overrides>``, wait for the ready line, always stop it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("XTALPILOT_OPCUA_PASSWORD", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "plant", *overrides],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line.rstrip("\n"))
            if READY_RE.search(line):
                ready.set()

    reader = threading.Thread(target=drain, name="plant-log", daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.wait(0.05):
            if proc.poll() is not None:
                reader.join(timeout=2)
                raise RuntimeError(f"xtalpilot plant exited with {proc.returncode}:\n" + "\n".join(log[-40:]))
            if time.monotonic() > deadline:
                raise TimeoutError("xtalpilot plant printed no ready line:\n" + "\n".join(log[-40:]))
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        reader.join(timeout=5)


@contextlib.contextmanager
def plant_server(
    *,
    speed: float = 1000.0,
    shed_timeout_s: float = 2000.0,
    security: str = "insecure",
    cert_dir: str | None = None,
    users_file: str | None = None,
    mode: str | None = None,
    extra: tuple[str, ...] = (),
    ports: tuple[int, int] | None = None,
) -> Iterator[PlantServer]:
    """A running plant on free loopback ports (see the module docstring).

    ``extra``: more Hydra overrides (subprocess only), e.g. ``("scenario=sensor_faults",)``;
    ``ports``: (OPC UA, Modbus) to reuse, e.g. to restart a plant where an agent expects it.
    """
    mode = mode or fixture_mode()
    opcua_port, modbus_port = ports or free_ports(2)
    info = PlantServer("127.0.0.1", opcua_port, modbus_port, speed, shed_timeout_s, security, mode,
                       cert_dir=cert_dir, users_file=users_file)
    if mode == "subprocess":
        overrides = [
            f"opcua_port={opcua_port}",
            f"modbus_port={modbus_port}",
            f"speed={speed}",
            f"security={security}",
            f"shed_timeout_s={shed_timeout_s}",
        ]
        if cert_dir:
            overrides.append(f"cert_dir={cert_dir}")
        if users_file:
            overrides.append(f"users_file={users_file}")
        overrides.extend(extra)
        with run_subprocess(overrides, info.log) as proc:
            info.process = proc
            yield info
    else:
        from plant_sim.serve import SecurityMode, ServerSettings

        settings = ServerSettings(
            host=info.host, opcua_port=opcua_port, modbus_port=modbus_port, speed=speed,
            security=SecurityMode(security), cert_dir=cert_dir or "certs", users_file=users_file,
        )
        info.plant = make_test_plant(shed_timeout_s)
        with run_inprocess(info.plant, settings):
            yield info


@pytest.fixture(scope="module")
def plant() -> Iterator[PlantServer]:
    """One insecure plant for the module: 1000x, shed timeout 2000 plant s (2 wall s)."""
    with plant_server() as info:
        yield info


@pytest.fixture(scope="module")
def still_plant() -> Iterator[PlantServer]:
    """A plant whose clock barely moves (0.001x: one physics step per ~1000 wall s).

    Why: while the cascade is local (Idle, or not automatic) the plant's remote setpoint tracks
    its working setpoint at every physics step, as a DCS does for bumpless transfer. A written
    setpoint is therefore only visible until the next step; tests that read a write back on the
    other protocol need a plant that does not step meanwhile.
    """
    with plant_server(speed=0.001) as info:
        yield info


@pytest.fixture(scope="module")
def secure_material(tmp_path_factory) -> dict[str, str]:
    """Certificates and a users file with user ``operator`` / password ``op-secret-1``."""
    from plant_sim.security import add_user, generate_certificates

    base = tmp_path_factory.mktemp("security")
    paths = generate_certificates(base / "certs")
    users = base / "users.yaml"
    add_user(users, "operator", "op-secret-1")
    out = {k: str(v) for k, v in paths.items()}
    out.update(cert_dir=str(base / "certs"), users_file=str(users), user="operator", password="op-secret-1")
    return out


@pytest.fixture
def plant_server_factory():
    """``plant_server`` (a context manager) for tests that need their own plant."""
    return plant_server


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()


@pytest.fixture
def inprocess_runner():
    """``run_inprocess(plant, settings)`` (a context manager yielding ``ServeStats``)."""
    return run_inprocess
