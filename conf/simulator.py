"""The root config as the simulator's commands compose it (``xtalpilot plant``, ``plant simulate``,
``demo``, ``replay`` of a simulated batch, ``bench``).

:class:`conf.schema.XtalpilotConfig` reads the ``process`` as the agent does and passes the
``scenario`` through unread; the simulated plant needs both, so :class:`SimulatorConfig` types
the scenario as :class:`plant_sim.scenarios.Scenario` (the vessel's physics, sensors,
disturbances, kinetics and run length, every field typed and checked), hands it the process
(:meth:`~plant_sim.scenarios.Scenario.with_process`: one definition, the agent's and the
plant's) and makes the plant's DCS and server settings from the root's fields.
:func:`conf.schema.load_config` composes it where the simulator is asked for; this module is
the only part of ``conf`` that imports ``plant_sim``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conf.schema import XtalpilotConfig
from plant_sim.plant import PlantSettings
from plant_sim.scenarios import Scenario
from plant_sim.serve import ServerSettings

__all__ = ["SimulatorConfig"]


@dataclass(frozen=True)
class SimulatorConfig(XtalpilotConfig):
    """:class:`conf.schema.XtalpilotConfig` with the simulated plant's scenario.

    Attributes:
        scenario: the scenario the simulated plant runs (group ``scenario``): what the simulator
            alone reads, running ``process`` (its process fields are the process's, always).
    """

    scenario: Scenario = field(default_factory=Scenario)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scenario.duration_min * 60.0 < self.simulate.output_interval_s:
            raise ValueError(
                f"scenario.duration_min ({self.scenario.duration_min} min) is shorter than one "
                f"simulate.output_interval_s ({self.simulate.output_interval_s} s); lengthen the one or shorten the other"
            )
        # Frozen, so set through object: the scenario runs this config's process whichever way
        # the config was made (composed, built in code, dataclasses.replace of either).
        object.__setattr__(self, "scenario", self.scenario.with_process(self.process))

    def plant_settings(self, step_s: float = 1.0, autostart: bool | None = None) -> PlantSettings:
        """The plant's DCS settings: heartbeat shedding, batch autostart and reports."""
        return PlantSettings(
            step_s=step_s,
            shed_timeout_s=self.shed_timeout_s,
            shed_action=self.shed_action,
            autostart=self.autostart if autostart is None else autostart,
            batch_report_dir=self.batch_report_dir,
        )

    def server_settings(self) -> ServerSettings:
        """How the plant is served: ports, speed, OPC UA security."""
        return ServerSettings(
            host=self.host,
            opcua_port=self.opcua_port,
            modbus_port=self.modbus_port,
            speed=self.speed,
            publish_interval_s=self.publish_interval_s,
            security=self.security,
            cert_dir=self.cert_dir,
            users_file=self.users_file,
            physics_process=True,
        )
