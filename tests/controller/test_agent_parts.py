"""The agent's small parts, without a network: the log-once latch, the connection with backoff,
the batch tracker, the mode supervisor and the recorder (the loop itself runs over real OPC UA and
Modbus in tests/integration/test_agent.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path

import pytest

from conf.contract.codes import BatchState
from controller.agent import (BatchTracker, Connection, LogOnce, ModeSupervisor, Recorder, discard_run_files,
                              estimate_path)
from controller.decision_log import Decision, DecisionLog
from controller.estimator import PlantState, PopulationEstimate
from controller.guard import Mode
from controller.plant_io import Backoff, PlantIOError

EXECUTE, HELD, IDLE, COMPLETED = (float(BatchState.EXECUTE), float(BatchState.HELD), float(BatchState.IDLE),
                                  float(BatchState.COMPLETED))


def test_log_once_says_a_message_once_per_change(caplog):
    say = LogOnce(logging.getLogger("test.once"))
    with caplog.at_level(logging.INFO, logger="test.once"):
        assert say("link", "down") and not say("link", "down") and not say("link", "down")
        assert say("link", "up") and say("other", "down")
    assert [r.message for r in caplog.records] == ["down", "up", "down"]
    assert say.said("link") and not say.said("never")


class _FlakyIO:
    """A plant that refuses the first ``failures`` connects."""

    def __init__(self, failures: int) -> None:
        self.failures, self.attempts = failures, 0

    async def connect(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise PlantIOError("connection refused")


def test_the_connection_backs_off_logs_each_change_once_and_counts_reconnects(caplog):
    io, changes = _FlakyIO(failures=3), []
    conn = Connection(io, LogOnce(), changes.append, Backoff(initial_s=0.0, max_s=0.0))

    async def attempts(n: int) -> list[bool]:
        return [await conn.ensure() for _ in range(n)]

    with caplog.at_level(logging.INFO, logger="xtalpilot.agent"):
        assert asyncio.run(attempts(5)) == [False, False, False, True, True]
        conn.lost(PlantIOError("reset by peer"))
        assert asyncio.run(attempts(1)) == [True]
    assert io.attempts == 5 and changes == [True, False, True] and conn.reconnects == 2
    unreachable = [r for r in caplog.records if "unreachable" in r.message]
    assert len(unreachable) == 1  # three refusals, one line (the delay is the same each time here)


def test_the_backoff_holds_attempts_back():
    io = _FlakyIO(failures=100)
    conn = Connection(io, LogOnce(), backoff=Backoff(initial_s=60.0))
    assert not asyncio.run(conn.ensure()) and not asyncio.run(conn.ensure())
    assert io.attempts == 1  # the second call waited for the backoff


def test_the_batch_tracker_places_the_batch_from_state_and_timer():
    b = BatchTracker()
    assert not b.update(IDLE, math.nan, 0.0).executing
    s = b.update(EXECUTE, math.nan, 100.0)
    assert s.started and s.executing and s.batch_time_s == 0.0
    assert b.update(EXECUTE, math.nan, 160.0).batch_time_s == 60.0  # counted from the start seen
    assert b.update(EXECUTE, 500.0, 170.0).batch_time_s == 500.0  # the plant's phase timer wins
    held = b.update(HELD, 510.0, 180.0)
    assert not held.executing and held.batch_time_s is None and b.start_s == 100.0  # Held keeps the batch
    assert not b.update(EXECUTE, 520.0, 190.0).started
    done = b.update(COMPLETED, math.nan, 200.0)
    assert done.completed and not done.executing and b.start_s is None
    joined = BatchTracker().update(EXECUTE, 3600.0, 9000.0)  # an agent that joins mid-batch
    assert joined.started and joined.batch_time_s == 3600.0


def test_the_mode_supervisor_never_enters_automatic_on_a_standing_request():
    modes = ModeSupervisor(Mode.automatic, LogOnce())
    assert modes.mode is Mode.advisory
    modes.follow(2.0)  # standing automatic, older than the agent
    assert modes.mode is Mode.advisory
    modes.follow(2.0)
    assert modes.mode is Mode.advisory
    modes.follow(0.0)
    assert modes.mode is Mode.manual
    modes.follow(2.0)  # a new request
    assert modes.mode is Mode.automatic
    modes.follow(7.0)  # not a mode: ignored
    assert modes.mode is Mode.automatic
    modes.leave_automatic("handed back")
    assert modes.mode is Mode.advisory
    modes.follow(7.0)
    assert modes.mode is Mode.advisory  # the same tag value is no new request
    lower = ModeSupervisor(Mode.advisory, LogOnce())
    lower.follow(0.0)  # a standing lower request is obeyed at once
    assert lower.mode is Mode.manual
    nan = ModeSupervisor(Mode.advisory, LogOnce())
    nan.follow(math.nan)
    nan.follow(2.0)  # the first readable value is the standing request
    assert nan.mode is Mode.advisory


def _population() -> PopulationEstimate:
    return PopulationEstimate(1500.0, (1.0, 2.0, 3.0, 4.0, 5.0, 6.0), (0.0,) * 6, 400.0, 0.003, 410.0, 1000.0)


def test_the_recorder_round_trips_the_state_and_survives_corrupt_files(tmp_path):
    path = tmp_path / "run" / "decisions.estimate.json"
    recorder = Recorder(None, path, LogOnce())
    assert recorder.load_state() == (None, None)
    recorder.save_state(PlantState(1500.0), {"final_at_s": None})  # no batch: nothing to keep
    assert not path.exists()
    state = PlantState(1500.0, batch_time_s=500.0, batch_start_s=1000.0, antisolvent_per_water=0.02,
                       population=_population())
    recorder.save_state(state, {"batch_start_s": 1000.0, "final_at_s": 1400.0})
    restored, memory = recorder.load_state()
    assert restored.batch_start_s == 1000.0 and restored.antisolvent_per_water == 0.02
    assert json.dumps(restored.population.to_dict()) == json.dumps(_population().to_dict())
    assert memory["final_at_s"] == 1400.0
    assert not list(path.parent.glob("*.tmp"))  # written atomically
    for bad in ("{not json", json.dumps({"state": {"batch_start_s": 1.0}}),
                json.dumps({"state": state.to_dict() | {"antisolvent_per_water": -1.0}})):
        path.write_text(bad)
        assert recorder.load_state() == (None, None)


def test_a_fresh_run_discards_the_log_and_the_estimate_an_earlier_run_left(tmp_path):
    # A benchmark's or demo's new plant starts its batch at the same plant time as the last run's:
    # a state left beside the log would be resumed as if it were this batch's.
    log = tmp_path / "nominal_agent.sqlite"
    state = PlantState(1500.0, batch_time_s=500.0, batch_start_s=1000.0, population=_population())
    Recorder(None, estimate_path(log), LogOnce()).save_state(state, {})
    for suffix in ("", "-wal", "-shm"):
        Path(f"{log}{suffix}").write_text("x")
    assert Recorder(None, estimate_path(log), LogOnce()).load_state()[0] is not None
    discard_run_files(log)
    assert not list(tmp_path.iterdir())
    assert Recorder(None, estimate_path(log), LogOnce()).load_state() == (None, None)
    discard_run_files(log)  # nothing to remove: no error


def test_the_recorder_commits_decisions_and_reports_a_log_that_fails(tmp_path):
    log = DecisionLog(tmp_path / "decisions.sqlite")
    recorder = Recorder(log, None, LogOnce())
    decision = Decision(plant_time_s=1.0, mode="automatic", reasons=("ok",), held=False, inputs={}, signal_status={},
                        predictions={}, proposal={}, intent={"reactor_temperature_setpoint_c": 40.0})
    first = asyncio.run(recorder.decision(decision))
    assert first is not None and first > 0
    asyncio.run(recorder.outcome(first, {"reactor_temperature_setpoint_c": 40.0}, {}))
    log.close()
    assert asyncio.run(recorder.decision(decision)) is None  # a closed log: refused, not raised
    assert asyncio.run(Recorder(None, None, LogOnce()).decision(decision)) == 0  # no log: not gated


@pytest.mark.parametrize("value", [math.nan, 0.5])
def test_a_request_that_is_no_mode_changes_nothing(value):
    modes = ModeSupervisor(Mode.manual, LogOnce())
    modes.follow(1.0)
    modes.follow(value)
    assert modes.mode is Mode.manual


def test_the_opcua_password_comes_off_the_command_line_and_is_never_logged(tmp_path, caplog):
    import dataclasses

    from controller.agent import PASSWORD_ENV, opcua_password
    from controller.settings import AgentSettings, SetupError

    plain = AgentSettings(username="operator", password="on-the-command-line")
    secret = tmp_path / "opcua.password"
    secret.write_text("from-the-file\n")
    secret.chmod(0o600)
    from_file = dataclasses.replace(plain, password_file=str(secret))
    assert opcua_password(from_file, environ={PASSWORD_ENV: "from-the-env"}) == "from-the-file"
    assert opcua_password(plain, environ={PASSWORD_ENV: "from-the-env"}) == "from-the-env"
    with caplog.at_level(logging.WARNING, logger="xtalpilot.agent"):
        assert opcua_password(plain, environ={}) == "on-the-command-line"
    assert "password_file" in caplog.text and "on-the-command-line" not in caplog.text
    secret.chmod(0o644)  # readable by others: refused, with what to do
    with pytest.raises(SetupError, match="chmod 600"):
        opcua_password(from_file, environ={})
    secret.chmod(0o600)
    secret.write_text("")
    with pytest.raises(SetupError, match="empty"):
        opcua_password(from_file, environ={})
    with pytest.raises(SetupError, match="cannot read"):
        opcua_password(dataclasses.replace(plain, password_file=str(tmp_path / "none")), environ={})
