"""The model's background answers: the agent asks the MS-GNN off its event loop and reads the latest.

A query takes longer than a control cycle may wait (a graph network on the CPU), so it runs in a
worker thread: each cycle the agent takes the newest finished answer (:meth:`ModelClient.answer`)
and, when one is due, asks again with the cycle's state (:meth:`ModelClient.ask`). Replay awaits
each answer before the next cycle (:meth:`ModelClient.wait`), which is what happens within one
control interval on a live plant.

A query that hangs (a stuck device, a deadlock) cannot be killed in a thread: after
``timeout_s`` it is abandoned to its thread, the answer reports the timeout (the strategy falls
back to the recipe) and the next query runs on a fresh thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import time
from dataclasses import dataclass

from controller.estimator import PlantState

__all__ = ["ModelAnswer", "ModelClient"]

_log = logging.getLogger("xtalpilot.model")


@dataclass(frozen=True)
class ModelAnswer:
    """The model's latest answer as a cycle sees it.

    Attributes:
        kinetics: the newest :class:`controller.kinetics_service.KineticsEstimate` (None: none yet).
        error: why the model cannot answer now (None: it answered); with an error the strategy
            does not use ``kinetics``.
        asked_at_s: plant time of the query ``kinetics`` answers (-inf: none).
    """

    kinetics: object | None = None
    error: str | None = "waiting for the model's first answer"
    asked_at_s: float = -math.inf

    @property
    def laws(self):
        """The local laws to use this cycle, or None when the model cannot answer."""
        return self.kinetics.laws if self.kinetics is not None and self.error is None else None

    def age_s(self, plant_time_s: float) -> float:
        return plant_time_s - self.asked_at_s


class ModelClient:
    """Background queries of a kinetics service (module docstring).

    Args:
        service: :class:`controller.kinetics_service.KineticsService` or ``PriorKinetics``.
        refresh_s: plant seconds between queries.
        timeout_s: wall seconds after which a query is abandoned.
        metastable_sigma_limit: top of the supersaturation range the laws are fitted over and
            where the constraint's uncertainty is judged.
        stirring_rpm: impeller speed (a model input).
    """

    def __init__(self, service, refresh_s: float, timeout_s: float, metastable_sigma_limit: float,
                 stirring_rpm: float = 300.0) -> None:
        self.service = service
        self.refresh_s, self.timeout_s = refresh_s, timeout_s
        self.metastable_sigma_limit, self.stirring_rpm = metastable_sigma_limit, stirring_rpm
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgnn")
        self._pending: concurrent.futures.Future | None = None
        self._pending_asked_s = -math.inf
        self._submitted_wall_s = 0.0
        self._answer = ModelAnswer()

    @property
    def version(self) -> str:
        return getattr(self.service, "version", "") or ""

    def reset(self) -> None:
        """Forget the last answer (a new batch starts from the model's first answer)."""
        self._answer = ModelAnswer()
        self._pending = None

    def answer(self) -> ModelAnswer:
        """The newest answer (collects a finished query; times out a hung one). Never blocks."""
        if (self._pending is not None and not self._pending.done()
                and time.monotonic() - self._submitted_wall_s > self.timeout_s):
            error = f"model query timed out after {self.timeout_s:.0f} s; model thread restarted"
            _log.warning(error)
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="msgnn")
            self._pending = None
            self._answer = ModelAnswer(self._answer.kinetics, error, self._answer.asked_at_s)
        if self._pending is not None and self._pending.done():
            try:
                self._answer = ModelAnswer(self._pending.result(), None, self._pending_asked_s)
            except Exception as exc:  # ModelUnavailable, or a model bug: the strategy falls back
                self._answer = ModelAnswer(self._answer.kinetics, f"{type(exc).__name__}: {exc}",
                                           self._answer.asked_at_s)
            self._pending = None
        return self._answer

    def ask(self, state: PlantState) -> bool:
        """Ask in the background when an answer is due and the state can be asked about (a
        batch after seeding, valid temperature and concentration). True when a query went out."""
        a = self._answer
        due = a.kinetics is None or a.error is not None or state.plant_time_s - self._last_asked_s() >= self.refresh_s
        if self._pending is not None or not due or state.population is None or not state.data_ok:
            return False
        from controller.facet_graph import imaging_from_values
        from controller.kinetics_service import batch_sigma_range

        limit = self.metastable_sigma_limit
        view = state.view
        # Stale imaging slots are masked, not carried at their last good values; the laws are
        # fitted over the supersaturations the batch visits (up to the metastable limit).
        self._pending = self._executor.submit(
            self.service.estimate, imaging_from_values(view.values, view.ok), state.temperature_c, state.sigma,
            stirring_rpm=self.stirring_rpm, sigma_range=batch_sigma_range(state.sigma, limit),
            constraint_sigma=limit)
        self._pending_asked_s = state.plant_time_s
        self._submitted_wall_s = time.monotonic()
        return True

    def _last_asked_s(self) -> float:
        return max(self._pending_asked_s, self._answer.asked_at_s)

    def wait(self, timeout_s: float = 10.0) -> None:
        """Block until the pending query is answered (replay, tests, benchmarks)."""
        if self._pending is not None:
            concurrent.futures.wait([self._pending], timeout=timeout_s)

    def close(self) -> None:
        """Stop the model thread (a pending query is dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
