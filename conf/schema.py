"""Hydra structured configs: one frozen dataclass tree, composed from YAML per config group.

The settings classes of the code (:class:`controller.settings.AgentSettings`,
:class:`conf.contract.process.BatchProcess`, ...) are frozen dataclasses and are the single
source of truth. Hydra merges YAML into its schema nodes in place, which a frozen dataclass
forbids, so :func:`hydra_schema` derives a mutable twin of each class for the ConfigStore
(same fields, types and defaults). After composition OmegaConf has checked every type, enum
value and key; :func:`build` turns the result back into the frozen classes.

Groups (``conf/<group>/<name>.yaml``):

- ``plant``: the tag map (validated by :class:`conf.contract.tagmap.TagMap`).
- ``scenario``: the batch's recipe sheet, and what the simulated plant runs.
- ``kinetics`` (placed at ``scenario.kinetics``): physics chain or a power-law preset.

Two roots compose the same YAML with the same overrides. :class:`XtalpilotConfig`, the
agent's, reads ``scenario`` as the process schema (:class:`conf.contract.process.BatchProcess`:
recipe, seeding, charge); the keys only the simulator reads (the vessel's physics, instruments,
disturbances, kinetics) pass through unread, so the agent's config never imports the simulator.
The simulator's root (:class:`conf.simulator.SimulatorConfig`) types the whole scenario.

Compose with :func:`load_config`; a malformed config raises :class:`ConfigError` whose message
names the field and, for enums, the allowed values.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from conf.contract import validate
from conf.contract.codes import SecurityMode, ShedAction
from conf.contract.process import BatchProcess, Vessel
from controller.settings import AgentSettings, BenchLoopSettings, DemoSettings, ProposerSettings, ReplaySettings
from models.settings import (
    DataSettings,
    ModelBenchSettings,
    MSGNNSettings,
    SplitSettings,
    TrainCommandSettings,
    TrainSettings,
    TuneSettings,
)


class OutputFormat(str, enum.Enum):
    parquet = "parquet"
    csv = "csv"


@dataclass(frozen=True)
class SimulateSettings:
    """``xtalpilot plant simulate``.

    Attributes:
        output_dir: where the time series, final size distribution and plot go.
        format: parquet or csv.
        output_interval_s: plant seconds between recorded rows (also the physics step).
        plot: write the PNG summary.
        progress: show a progress bar.
    """

    output_dir: str = "runs/simulate"
    format: OutputFormat = OutputFormat.parquet
    output_interval_s: float = 10.0
    plot: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        validate.positive(self, "output_interval_s")


@dataclass(frozen=True)
class XtalpilotConfig:
    """The root config every ``xtalpilot`` command composes.

    Attributes:
        plant: tag map of the reactor (group ``plant``).
        scenario: the batch's recipe sheet (group ``scenario``), as the agent reads it; the
            simulated plant's whole scenario in :class:`conf.simulator.SimulatorConfig`.
        speed: plant seconds per wall second of the served plant.
        host: address the servers bind.
        opcua_port: OPC UA port.
        modbus_port: Modbus TCP port.
        publish_interval_s: wall seconds between value updates on the servers.
        security: insecure (loopback demo) or sign_encrypt (Basic256Sha256, users).
        cert_dir: certificates made by ``xtalpilot certs``.
        users_file: users and password hashes for sign_encrypt (``xtalpilot certs username=...``).
        shed_timeout_s: plant seconds without heartbeat change before the plant sheds.
        shed_action: hold or recipe after shedding.
        autostart: start the batch when the served plant starts.
        batch_report_dir: where the plant writes a completed batch's report (None: nowhere).
        simulate: offline simulation.
        data: the multi-scale training data (``models.data.generate``).
        split: which held-out split ``train`` and ``tune`` use.
        msgnn: MS-GNN architecture.
        train: MS-GNN optimisation.
        train_command: where ``xtalpilot train`` writes.
        tune: ``xtalpilot tune``.
        bench_model: ``xtalpilot bench model``.
        agent: the daemon (``xtalpilot agent``).
        proposer: the agent's BoTorch proposer.
        demo: ``xtalpilot demo``.
        bench_loop: ``xtalpilot bench loop``.
    """

    plant: dict = field(default_factory=dict)
    scenario: BatchProcess = field(default_factory=BatchProcess)
    speed: float = 600.0
    host: str = "127.0.0.1"
    opcua_port: int = 4840
    modbus_port: int = 5020
    publish_interval_s: float = 0.05
    security: SecurityMode = SecurityMode.insecure
    cert_dir: str = "certs"
    users_file: Optional[str] = None
    shed_timeout_s: float = 120.0
    shed_action: ShedAction = ShedAction.hold
    autostart: bool = False
    batch_report_dir: Optional[str] = None
    simulate: SimulateSettings = field(default_factory=SimulateSettings)
    data: DataSettings = field(default_factory=DataSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    msgnn: MSGNNSettings = field(default_factory=MSGNNSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    train_command: TrainCommandSettings = field(default_factory=TrainCommandSettings)
    tune: TuneSettings = field(default_factory=TuneSettings)
    bench_model: ModelBenchSettings = field(default_factory=ModelBenchSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    proposer: ProposerSettings = field(default_factory=ProposerSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    bench_loop: BenchLoopSettings = field(default_factory=BenchLoopSettings)

    def __post_init__(self) -> None:
        validate.positive(self, "speed", "publish_interval_s", "shed_timeout_s")
        validate.within(self, "opcua_port", 1, 65535)
        validate.within(self, "modbus_port", 1, 65535)
        if self.scenario.duration_min * 60.0 < self.simulate.output_interval_s:
            raise ValueError(
                f"scenario.duration_min ({self.scenario.duration_min} min) is shorter than one "
                f"simulate.output_interval_s ({self.simulate.output_interval_s} s); lengthen the one or shorten the other"
            )


class ConfigError(ValueError):
    """A config that does not compose or validate; the message says which field and why."""


# ----------------------------------------------------------------------------- schema twins
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _schema_type(tp: Any) -> Any:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        out: Any = list[_schema_type(args[0])] if args else list
    elif origin is dict or inner is dict:
        out = dict
    elif dataclasses.is_dataclass(inner):
        out = hydra_schema(inner)
    else:
        out = inner
    return Optional[out] if optional else out


def _schema_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _to_schema_instance(value)
    if isinstance(value, tuple):
        return [_schema_default(v) for v in value]
    return value


def _to_schema_instance(obj: Any) -> Any:
    schema = hydra_schema(type(obj))
    return schema(**{f.name: _schema_default(getattr(obj, f.name)) for f in dataclasses.fields(obj)})


@functools.cache
def hydra_schema(cls: type) -> type:
    """The mutable twin of a frozen settings dataclass (tuples become lists)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = _schema_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            default = f.default
            if isinstance(default, (tuple, list)) or dataclasses.is_dataclass(default):
                value = default
                specs.append((f.name, tp, field(default_factory=lambda v=value: _schema_default(v))))
            else:
                specs.append((f.name, tp, field(default=default)))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            specs.append((f.name, tp, field(default_factory=lambda fac=factory: _schema_default(fac()))))
        else:
            specs.append((f.name, tp))
    schema = dataclasses.make_dataclass(cls.__name__, specs)
    schema.__module__ = __name__
    return schema


def build(cls: type, data: Any) -> Any:
    """Plain containers (from OmegaConf) -> frozen dataclass ``cls``, recursively."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            try:
                kwargs[f.name] = _build_value(hints[f.name], data[f.name])
            except ValueError as exc:  # a nested settings class refused a value: say where
                raise ValueError(f"{f.name}{'' if str(exc).startswith('[') else '.'}{exc}") from None
    return cls(**kwargs)


def _build_value(tp: Any, value: Any) -> Any:
    inner, _ = _unwrap_optional(tp)
    if value is None:
        return None
    origin = typing.get_origin(inner)
    if origin is tuple:
        (arg, *_rest) = typing.get_args(inner) or (Any,)
        items = []
        for i, v in enumerate(value):
            try:
                items.append(_build_value(arg, v))
            except ValueError as exc:
                raise ValueError(f"[{i}].{exc}") from None
        return tuple(items)
    if dataclasses.is_dataclass(inner):
        return build(inner, value)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return inner(value.value if isinstance(value, enum.Enum) else value)
    return value


# ----------------------------------------------------------------------------- store + compose
#: Settings classes composed open: each reads its part of a node whose YAML also carries keys for
#: the simulator (the process schema of ``scenario``, the vessel of ``scenario.reactor``); the
#: keys it does not know pass through unread. Their own fields are typed and checked as any.
OPEN_NODES: tuple[type, ...] = (BatchProcess, Vessel)


def _open_nodes(cls: type, node: Any) -> None:
    """Let the :data:`OPEN_NODES` under ``node`` (the schema of ``cls``) take unknown keys."""
    from omegaconf import DictConfig, OmegaConf

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        inner, _ = _unwrap_optional(hints[f.name])
        child = node.get(f.name) if isinstance(node, DictConfig) else None
        if dataclasses.is_dataclass(inner) and isinstance(child, DictConfig):
            if inner in OPEN_NODES:
                OmegaConf.set_struct(child, False)
            _open_nodes(inner, child)


def config_class(simulator: bool | None = None) -> type[XtalpilotConfig]:
    """The root settings class a command composes.

    Args:
        simulator: True for the simulator's root (:class:`conf.simulator.SimulatorConfig`, the
            whole scenario typed; imports plant_sim), False for the agent's
            (:class:`XtalpilotConfig`), None for the simulator's where plant_sim is installed.
    """
    if simulator is None:
        simulator = importlib.util.find_spec("plant_sim") is not None
    if not simulator:
        return XtalpilotConfig
    from conf.simulator import SimulatorConfig

    return SimulatorConfig


def register(root: type = XtalpilotConfig) -> None:
    """Register the schema of the root settings class ``root`` as ``xtalpilot_schema``."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    node = OmegaConf.structured(hydra_schema(root))
    _open_nodes(root, node)
    ConfigStore.instance().store(name="xtalpilot_schema", node=node)


def load_config(overrides: Sequence[str] = (), config_name: str = "xtalpilot", *,
                simulator: bool | None = None) -> XtalpilotConfig:
    """Compose ``conf/<config_name>.yaml`` with Hydra overrides and validate it.

    Args:
        overrides: Hydra overrides (``key=value``).
        config_name: root YAML in ``conf/``.
        simulator: which root to compose (:func:`config_class`): the agent passes False, so
            its config never imports the simulator; None composes the simulator's where it is
            installed.

    Raises:
        ConfigError: naming the offending field (and allowed values for enums).
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    root = config_class(simulator)
    register(root)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("conf", version_base=None):
            cfg = compose(config_name, overrides=list(overrides))
        data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=False)
        return build(root, data)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _explain(exc: Exception) -> str:
    """One readable paragraph from Hydra/OmegaConf's nested messages."""
    cause = exc
    while cause.__cause__ is not None and isinstance(cause.__cause__, Exception):
        cause = cause.__cause__
    text = str(cause).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("reference_type", "object_type"))]
    return " | ".join(keep) if keep else type(exc).__name__


__all__ = ["OPEN_NODES", "ConfigError", "OutputFormat", "SimulateSettings", "XtalpilotConfig", "build", "config_class",
           "load_config"]
