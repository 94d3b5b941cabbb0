"""The decision log: round trip through pandas, hostile values, and no loss on SIGKILL."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from controller.decision_log import Decision, DecisionLog, DecisionLogError, read_decisions
from controller.guard import Mode, Reason


def test_decisions_round_trip_through_pandas(tmp_path):
    path = tmp_path / "log" / "decisions.sqlite"
    with DecisionLog(path) as log:
        log.append(Decision(10.0, Mode.automatic, (Reason.clamped, Reason.rate_limited), False,
                            inputs={"temperature_c": 40.2, "sigma": np.float64(0.03)},
                            signal_status={"concentration_g_per_kg": "stale"},
                            predictions={"G_um_per_min": 1.2, "G_std": math.nan},
                            proposal={"reactor_temperature_setpoint_c": 39.0},
                            written={"reactor_temperature_setpoint_c": 39.5}))
        log.append(Decision(20.0, "manual", (Reason.manual,)))
    frame = read_decisions(path)
    assert len(frame) == 2 and list(frame["plant_time_s"]) == [10.0, 20.0]
    first = frame.iloc[0]
    assert first["mode"] == "automatic" and first["reasons"] == ("clamped", "rate_limited")
    assert first["predictions"] == {"G_um_per_min": 1.2, "G_std": None}  # NaN is stored as null
    assert first["inputs"]["sigma"] == 0.03 and first["written"]["reactor_temperature_setpoint_c"] == 39.5
    assert frame.iloc[1]["written"] == {} and not frame.iloc[1]["held"]


def test_the_intent_is_logged_before_the_outcome_and_read_back_with_it(tmp_path):
    path = tmp_path / "decisions.sqlite"
    with DecisionLog(path) as log:
        first = log.append(Decision(10.0, Mode.automatic, (Reason.ok,),
                                    intent={"reactor_temperature_setpoint_c": 39.5, "agent_heartbeat": 3.0}))
        # a reader between the two sees the intent with nothing written yet
        assert read_decisions(path).iloc[0]["written"] == {}
        log.record_outcome(first, {"agent_heartbeat": 3.0}, {"reactor_temperature_setpoint_c": "BadOutOfRange"})
        log.append(Decision(20.0, Mode.automatic, (Reason.ok,), intent={"agent_heartbeat": 4.0}))
    frame = read_decisions(path)
    assert frame.iloc[0]["intent"]["reactor_temperature_setpoint_c"] == 39.5
    assert frame.iloc[0]["written"] == {"agent_heartbeat": 3.0}
    assert frame.iloc[0]["failed"] == {"reactor_temperature_setpoint_c": "BadOutOfRange"}
    assert frame.iloc[1]["written"] == {} and frame.iloc[1]["failed"] == {}  # killed before the write


def test_a_log_of_an_older_agent_is_extended_not_refused(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, plant_time_s REAL NOT NULL,"
                     " wall_time_unix_s REAL NOT NULL, mode TEXT NOT NULL, reasons TEXT NOT NULL, held INTEGER NOT NULL,"
                     " inputs TEXT NOT NULL, signal_status TEXT NOT NULL, predictions TEXT NOT NULL,"
                     " proposal TEXT NOT NULL, written TEXT NOT NULL)")
        conn.execute("INSERT INTO decisions (plant_time_s, wall_time_unix_s, mode, reasons, held, inputs, signal_status,"
                     " predictions, proposal, written) VALUES (1, 2, 'manual', 'manual', 0, '{}', '{}', '{}', '{}', '{}')")
    with DecisionLog(path) as log:
        log.append(Decision(5.0, Mode.manual, (Reason.manual,), intent={"x": 1.0}))
    frame = read_decisions(path)
    assert len(frame) == 2 and frame.iloc[0]["intent"] == {} and frame.iloc[1]["intent"] == {"x": 1.0}


def test_an_unwritable_location_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DecisionLogError, match="cannot open the decision log"):
        DecisionLog(blocker / "decisions.sqlite")
    with pytest.raises(DecisionLogError, match="not found"):
        read_decisions(tmp_path / "missing.sqlite")


WRITER = """
import sys, time
from controller.decision_log import Decision, DecisionLog
log = DecisionLog(sys.argv[1], durable=sys.argv[2] == "durable")
k = 0
while True:
    log.append(Decision(float(k), "automatic", ("ok",), inputs={"k": k}))
    print(k, flush=True)  # printed only after the commit returned
    k += 1
"""


@pytest.mark.parametrize("durability", ["durable", "scratch"])
def test_nothing_committed_is_lost_when_the_writer_is_killed(tmp_path, durability):
    """A scratch log (a simulated batch's: no fsync) still keeps every commit when its process is
    killed; only a machine going down may lose its last ones."""
    path = tmp_path / "decisions.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), durability], stdout=subprocess.PIPE, text=True,
                            cwd=os.getcwd())
    acknowledged = -1
    deadline = time.monotonic() + 30
    try:
        while acknowledged < 200 and time.monotonic() < deadline:
            acknowledged = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    frame = read_decisions(path)
    assert acknowledged >= 200
    # every acknowledged decision is there, in order, with no gaps
    assert len(frame) >= acknowledged + 1
    assert list(frame["inputs"].map(lambda d: d["k"]))[: acknowledged + 1] == list(range(acknowledged + 1))
