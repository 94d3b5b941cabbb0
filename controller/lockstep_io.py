"""An in-process plant behind the agent's I/O interface, its clock moved by the agent's reads.

For benchmarks and tests that must be deterministic: a plant object (the simulated plant,
``plant_sim.plant.Plant``, or anything with ``tagmap``, ``values()``, ``write(name, value)``
and ``advance(seconds)``) is read and written as :class:`controller.plant_io.PlantIO` is, with
the same readings an OPC UA client gets (a NaN from a failed sensor has bad quality, every value
the plant time of the read as source time). Every read after the first advances the plant by
one control interval, so the agent runs one cycle per interval however fast the machine is;
the agent, told it runs in lockstep, awaits the model's answer and each proposal within the
cycle, as a live plant's clock would leave time for.

Nothing here imports the simulator: the plant is handed in.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Mapping

from controller.plant_io import Snapshot, WriteOutcome, _refuse_unwritable
from controller.state import Reading

__all__ = ["LockstepIO"]


class LockstepIO:
    """The plant object as a :class:`controller.plant_io.PlantIO` (module docstring).

    Args:
        plant: the plant object.
        step_s: plant seconds each read after the first advances the plant (the agent's
            control interval).

    The run ends where the agent's settings end it (``agent.max_plant_time_s``,
    ``agent.stop_after_batch``).
    """

    lockstep = True  # tells run_agent to run the agent in lockstep

    def __init__(self, plant, step_s: float) -> None:
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be > 0, got {step_s}")
        self.plant, self.tagmap, self.step_s = plant, plant.tagmap, float(step_s)
        self.reads = 0

    async def connect(self) -> None:
        pass

    async def read(self) -> Snapshot:
        await asyncio.sleep(0)  # let the agent's other tasks (and a simulated operator) run
        if self.reads:
            self.plant.advance(self.step_s)
        self.reads += 1
        values = self.plant.values()
        now = float(values.get("plant_time_s", math.nan))
        readings = {s.name: Reading(float(values[s.name]), now, math.isfinite(float(values[s.name])))
                    for s in self.tagmap if s.name in values}
        return Snapshot(now, readings, time.monotonic())

    async def write(self, values: Mapping[str, float]) -> dict[str, WriteOutcome]:
        allowed, outcomes = _refuse_unwritable(self.tagmap, values)
        for name, value in allowed.items():
            result = self.plant.write(name, value)
            outcomes[name] = WriteOutcome(bool(result.accepted), getattr(result, "message", ""))
        return outcomes

    async def close(self) -> None:
        pass
