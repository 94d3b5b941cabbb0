"""The root config as the simulator's commands compose it (``xtalpilot plant``, ``plant simulate``,
``demo``, ``replay`` of a simulated batch, ``bench``).

:class:`conf.schema.XtalpilotConfig` reads ``scenario`` as the agent does, as the process
schema; the simulated plant needs the whole sheet, so :class:`SimulatorConfig` types it as
:class:`plant_sim.scenarios.Scenario` (the vessel's physics, instruments, disturbances and
kinetics, every field typed and checked) and makes the plant's DCS and server settings from the
root's fields. :func:`conf.schema.load_config` composes it where the simulator is asked for;
this module is the only part of ``conf`` that imports ``plant_sim``.
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
        scenario: the scenario the simulated plant runs (group ``scenario``): the recipe sheet
            the agent reads, plus what the simulator alone reads.
    """

    scenario: Scenario = field(default_factory=Scenario)

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
