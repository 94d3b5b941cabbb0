"""Hydra structured configs: one frozen dataclass tree, composed from YAML per config group.

The settings classes of the code (:class:`controller.settings.AgentSettings`,
:class:`conf.contract.process.BatchProcess`, ...) are frozen dataclasses and are the single
source of truth. Hydra merges YAML into its schema nodes in place, which a frozen dataclass
forbids, so :func:`hydra_schema` derives a mutable twin of each class for the ConfigStore
(same fields, types and defaults). After composition OmegaConf has checked every type, enum
value and key; :func:`build` turns the result back into the frozen classes.

Groups (``conf/<group>/<name>.yaml``):

- ``plant``: the tag map (validated by :class:`conf.contract.tagmap.TagMap`).
- ``process``: the process as data (:class:`conf.contract.process.BatchProcess`: material,
  charge, recipe, seeding, product specification, instruments), read by the agent, replay and
  the simulator alike.
- ``scenario``: what the simulated plant adds to the process (vessel physics, sensors,
  disturbances, run length). A scenario written for another process than the default selects
  it (``defaults: [{override /process: ...}]``); ``process=`` on the command line still wins.
- ``kinetics`` (placed at ``scenario.kinetics``): the simulated plant's kinetics, physics chain
  or a power-law preset.

Two roots compose the same YAML with the same overrides. :class:`XtalpilotConfig`, the
agent's, types ``process`` and passes ``scenario`` through unread, so the agent's config never
imports the simulator. The simulator's root (:class:`conf.simulator.SimulatorConfig`) types the
scenario too and hands it the process (:meth:`plant_sim.scenarios.Scenario.with_process`).

Compose with :func:`load_config`; a malformed config raises :class:`ConfigError` whose message
names the field and, for enums, the allowed values.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import importlib.util
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from conf.contract import validate
from conf.contract.codes import SecurityMode, ShedAction
from conf.contract.process import FROM_PROCESS, BatchProcess
from controller.settings import (
    AgentSettings,
    BaselineSettings,
    BenchCampaignSettings,
    BenchControlSettings,
    BenchLoopSettings,
    DemoSettings,
    ProposerSettings,
    ReplaySettings,
)
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
        process: the process (group ``process``): what the agent knows of the batch.
        scenario: the simulated plant's additions (group ``scenario``), unread here and typed
            in :class:`conf.simulator.SimulatorConfig`; it may not restate the process.
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
        baselines: the tuning of the strategies plants run today (natural and cubic cooling,
            supersaturation control, direct nucleation control).
        demo: ``xtalpilot demo``.
        bench_loop: ``xtalpilot bench loop``.
        bench_control: ``xtalpilot bench control``.
        bench_campaign: ``xtalpilot bench campaign``.
    """

    plant: dict = field(default_factory=dict)
    process: BatchProcess = field(default_factory=BatchProcess)
    scenario: dict = field(default_factory=dict)
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
    baselines: BaselineSettings = field(default_factory=BaselineSettings)
    demo: DemoSettings = field(default_factory=DemoSettings)
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    bench_loop: BenchLoopSettings = field(default_factory=BenchLoopSettings)
    bench_control: BenchControlSettings = field(default_factory=BenchControlSettings)
    bench_campaign: BenchCampaignSettings = field(default_factory=BenchCampaignSettings)

    def __post_init__(self) -> None:
        validate.positive(self, "speed", "publish_interval_s", "shed_timeout_s")
        validate.within(self, "opcua_port", 1, 65535)
        validate.within(self, "modbus_port", 1, 65535)


class ConfigError(ValueError):
    """A config that does not compose or validate; the message says which field and why."""


# ----------------------------------------------------------------------------- schema twins
def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _mapping_value_type(tp: Any) -> Any:
    """The value type of ``dict[str, X]`` / ``Mapping[str, X]`` when X is a settings dataclass, else None."""
    if typing.get_origin(tp) in (dict, collections.abc.Mapping):
        args = typing.get_args(tp)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def _schema_type(tp: Any, leave_out: frozenset[str] = frozenset()) -> Any:
    inner, optional = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin is tuple:
        args = typing.get_args(inner)
        out: Any = list[_schema_type(args[0])] if args else list
    elif _mapping_value_type(inner) is not None:
        out = dict[str, hydra_schema(_mapping_value_type(inner))]
    elif origin in (dict, collections.abc.Mapping) or inner is dict:
        out = dict
    elif dataclasses.is_dataclass(inner):
        out = hydra_schema(inner, leave_out)
    else:
        out = inner
    return Optional[out] if optional else out


def _schema_default(value: Any, leave_out: frozenset[str] = frozenset()) -> Any:
    if dataclasses.is_dataclass(value):
        return _to_schema_instance(value, leave_out)
    if isinstance(value, tuple):
        return [_schema_default(v) for v in value]
    if isinstance(value, collections.abc.Mapping):
        return {k: _schema_default(v) for k, v in value.items()}
    return value


def _to_schema_instance(obj: Any, leave_out: frozenset[str] = frozenset()) -> Any:
    schema = hydra_schema(type(obj), leave_out)
    return schema(**{f.name: _schema_default(getattr(obj, f.name), _left_out(f))
                     for f in dataclasses.fields(obj) if _composed(f, leave_out)})


def _left_out(f: dataclasses.Field) -> frozenset[str]:
    """Sub-fields of ``f`` the config fills from the process (metadata FROM_PROCESS: their names)."""
    meta = f.metadata.get(FROM_PROCESS)
    return frozenset(meta) if isinstance(meta, (tuple, list, frozenset)) else frozenset()


def _composed(f: dataclasses.Field, leave_out: frozenset[str]) -> bool:
    """Whether the YAML sets ``f``: not where it is a copy of the process's (FROM_PROCESS True)."""
    return f.name not in leave_out and f.metadata.get(FROM_PROCESS) is not True


def hydra_schema(cls: type, leave_out: frozenset[str] = frozenset()) -> type:
    """The mutable twin of a frozen settings dataclass (tuples become lists).

    Fields that copy the process's (field metadata :data:`conf.contract.process.FROM_PROCESS`),
    and those named in ``leave_out``, are left out: the config fills them from ``process``, so
    no YAML or override can set them in two places.
    """
    return _twin(cls, frozenset(leave_out))


@functools.cache
def _twin(cls: type, leave_out: frozenset[str]) -> type:
    # One twin per (class, left-out fields), however the caller spelled the arguments: OmegaConf
    # refuses an instance of one twin where another twin of the same class is the type.
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        if not _composed(f, leave_out):
            continue
        sub = _left_out(f)
        tp = _schema_type(hints[f.name], sub)
        if f.default is not dataclasses.MISSING:
            default = f.default
            if isinstance(default, (tuple, list)) or dataclasses.is_dataclass(default):
                value = default
                specs.append((f.name, tp, field(default_factory=lambda v=value, sub=sub: _schema_default(v, sub))))
            else:
                specs.append((f.name, tp, field(default=default)))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            specs.append((f.name, tp, field(default_factory=lambda fac=factory, sub=sub: _schema_default(fac(), sub))))
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
    if _mapping_value_type(inner) is not None:
        out = {}
        for key, v in value.items():
            try:
                out[key] = _build_value(_mapping_value_type(inner), v)
            except ValueError as exc:
                raise ValueError(f"{key}.{exc}") from None
        return out
    if dataclasses.is_dataclass(inner):
        return build(inner, value)
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return inner(value.value if isinstance(value, enum.Enum) else value)
    return value


# ----------------------------------------------------------------------------- store + compose
#: Root fields another root types: where a root leaves one a plain ``dict`` (the agent's
#: ``scenario``, the simulator's), its node is composed open, so the simulator's keys and
#: overrides pass through unread (the simulator's root checks them).
OPEN_FIELDS: tuple[str, ...] = ("scenario",)


def _open_nodes(cls: type, node: Any) -> None:
    """Let the :data:`OPEN_FIELDS` that ``cls`` leaves untyped take unknown keys."""
    from omegaconf import DictConfig, OmegaConf

    hints = typing.get_type_hints(cls)
    for name in OPEN_FIELDS:
        child = node.get(name)
        if hints.get(name) is dict and isinstance(child, DictConfig):
            OmegaConf.set_struct(child, False)


#: Keys that live in the other node since the process became its own (``conf/process``), and
#: where they went: a config that still writes them is told where.
_MOVED_KEYS = {
    "scenario.reactor.water_mass_kg": "process.solvent_mass_kg",
    "scenario.seeding.mass_rel_std": "scenario.seed_mass_rel_std",
    "process.seeding.mass_rel_std": "scenario.seed_mass_rel_std",
    "process.duration_min": "scenario.duration_min",
    "process.reactor.water_mass_kg": "process.solvent_mass_kg",
    "process.material_data.solubility_g_per_kg": "process.material_data.solubility_values (with solubility_unit "
                                                 "and solubility_basis)",
    "process.material_data.solubility_coefficients_g_per_kg": "process.material_data.solubility_coefficients "
                                                              "(with solubility_unit and solubility_basis)",
}
#: The process's own keys (a scenario has a name and description of its own).
_PROCESS_KEYS = frozenset(f.name for f in dataclasses.fields(BatchProcess)) - {"name", "description"}


def _moved(full_key: str) -> str | None:
    """Where a key belongs instead, as a sentence, or None where it belongs where it is."""
    for old, new in _MOVED_KEYS.items():
        if full_key == old or full_key.startswith(old + "."):
            return f"{full_key} is now {new}: set it there"
    parts = full_key.split(".")
    if parts[0] == "scenario" and len(parts) > 1 and parts[1].split("[")[0] in _PROCESS_KEYS:
        return (f"{full_key} is the process's, not the scenario's: set process.{'.'.join(parts[1:])} or "
                f"choose a process (process=<name>, conf/process/*.yaml)")
    return None


def _restated(scenario: dict) -> list[str]:
    """The process's keys a scenario node restates (full keys)."""
    keys = [f"scenario.{k}" for k in scenario if _moved(f"scenario.{k}") is not None]
    for k, v in scenario.items():
        if isinstance(v, dict):
            keys += [f"scenario.{k}.{kk}" for kk in v if _moved(f"scenario.{k}.{kk}") is not None]
    return keys


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
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    root = config_class(simulator)
    register(root)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("conf", version_base=None):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        runtime = cfg.hydra.runtime
        sources, choice = list(runtime.config_sources), runtime.choices.get("process")
        with open_dict(cfg):
            del cfg["hydra"]
        data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=False, throw_on_missing=True)
        _anchor_structure_file(data, _process_directory(sources, choice))
        # One definition: a scenario (file or override) that restates the process is refused,
        # in the agent's root (which does not read the scenario) as in the simulator's.
        for key in _restated(data.get("scenario") or {}):
            raise ConfigError(_moved(key))
        return build(root, data)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain(exc)) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def _process_directory(sources, choice) -> Path | None:
    """The folder of the process file Hydra chose: the first config source (in Hydra's search
    order) that has ``process/<choice>.yaml``."""
    if not choice:
        return None
    for source in sources:
        if source.get("schema") == "file":
            base = Path(source.get("path", ""))
        elif source.get("schema") == "pkg" and source.get("path") == "conf":
            base = Path(__file__).resolve().parent
        else:
            continue
        if (base / "process" / f"{choice}.yaml").is_file():
            return base / "process"
    return None


def _anchor_structure_file(data: dict, process_directory: Path | None) -> None:
    """A relative ``process.material_data.structure_file`` names a file beside the process file
    (``structures/x.cif`` next to ``conf/process/x.yaml``, in the repository or a site's own
    config folder); it becomes that absolute path where the file lies there and not in the
    working directory. Anything else is left as given (the agent says when it is missing)."""
    material = ((data.get("process") or {}).get("material_data") or {})
    path = material.get("structure_file")
    if not isinstance(path, str) or not path.strip() or Path(path).is_absolute() or Path(path).exists():
        return
    if process_directory is not None and (process_directory / path).is_file():
        material["structure_file"] = str(process_directory / path)


def _explain(exc: Exception) -> str:
    """One readable paragraph from Hydra/OmegaConf's nested messages."""
    cause = exc
    while cause.__cause__ is not None and isinstance(cause.__cause__, Exception):
        cause = cause.__cause__
    text = str(cause).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.startswith(("reference_type", "object_type"))]
    # An unknown key that belongs to the other node (an override or a file written before the
    # process had its own node): say where it went.
    full_key = getattr(cause, "full_key", None) or next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    if full_key is None:
        quoted = re.search(r"override '([^']+)'", text)
        full_key = quoted.group(1) if quoted else None
    hint = _moved(full_key) if full_key else None
    if hint is not None:
        keep.append(hint)
    return " | ".join(keep) if keep else type(exc).__name__


__all__ = ["OPEN_FIELDS", "ConfigError", "OutputFormat", "SimulateSettings", "XtalpilotConfig", "build", "config_class",
           "load_config"]
