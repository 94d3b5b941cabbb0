"""Replay: the agent in shadow mode over a recorded batch (recordings made from the simulated plant)."""

from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest

from conf.schema import load_config
from controller.decision_log import read_decisions
from controller.replay import record_simulated_batch, run_replay


def _cfg(tmp_path, *extra: str):
    return load_config([f"replay.output_dir={tmp_path / 'replay'}", "agent.strategy=linear_cooling", *extra])


def test_replaying_a_recorded_batch_writes_nothing_and_reports_what_the_guard_would_do(tmp_path):
    summary = run_replay(_cfg(tmp_path))
    out = tmp_path / "replay"
    assert "synthetic" in summary["recording"] and (out / "recording.csv").is_file()
    assert summary["stopped_by"] == "end of recording" and summary["writes"] == 0
    assert summary["cycles"] == summary["instants"] == 481  # 4 h at the 30 s control interval
    # the recipe the agent computes is the one the plant ran: what it would write matches the record
    sp = summary["setpoint_vs_recorded_k"]
    assert sp["cycles_compared"] > 300 and sp["mean_abs"] < 0.05
    assert summary["guard_verdicts_in_automatic"]["ok"] > 300 and summary["held_fraction"] == 0.0
    assert summary["material"] == "KCl"  # whose solubility the figures are judged against, named
    assert (out / "report.png").stat().st_size > 10_000 and (out / "decisions.csv").is_file()
    assert json.loads((out / "summary.json").read_text())["cycles"] == 481
    log = read_decisions(out / "decisions.sqlite")
    assert all(w == {} for w in log["written"]) and set(log["mode"]) == {"advisory"}


def test_a_tag_the_historian_stopped_logging_goes_stale_and_the_guard_would_hold(tmp_path):
    cfg = _cfg(tmp_path)
    path = record_simulated_batch(cfg, tmp_path / "rec.csv", 30.0)
    frame = pd.read_csv(path)
    frame.loc[frame["timestamp"] > 5400.0, "concentration_g_per_kg"] = math.nan  # logging stops at 1.5 h
    frame.to_csv(path, index=False)
    summary = run_replay(_cfg(tmp_path, f"replay.recording={path}"))
    assert summary["signal_problems"]["stale"] > 100
    assert summary["guard_verdicts_in_automatic"]["data_bad"] > 100 and summary["held_fraction"] > 0.2
    log = read_decisions(tmp_path / "replay" / "decisions.sqlite")
    late = log[log["plant_time_s"] > 5400.0 + 120.0]
    assert late["signal_status"].map(lambda s: s["concentration_g_per_kg"] == "stale").all()


def test_the_model_predictive_agent_proposes_over_a_recording(tmp_path, tiny_checkpoint):
    summary = run_replay(_cfg(tmp_path, "agent.strategy=model_predictive", f"agent.checkpoint={tiny_checkpoint}",
                              "scenario.duration_min=40", "agent.control_interval_s=60", "proposer.time_budget_s=0.1"))
    # the plan is revised every proposer.resolve_interval_s (180 s) from seeding (12 min) to 40 min
    assert 7 <= summary["proposals"] <= 10 and summary["writes"] == 0
    log = read_decisions(tmp_path / "replay" / "decisions.sqlite")
    would = [i.get("would_write_reactor_temperature_setpoint_c") for i in log["inputs"]]
    assert sum(w is not None for w in would) > 10
    assert any("expected_d43_um" in i for i in log["inputs"])  # proposals arrived and were used


@pytest.mark.parametrize("content, match", [("not,a,recording\n1,2,3\n", "no time column 'timestamp'"),
                                            (None, "not found")])
def test_a_bad_recording_is_one_clear_line(tmp_path, caplog, content, match):
    from controller.cli import main

    path = tmp_path / "export.csv"
    if content is not None:
        path.write_text(content)
    with caplog.at_level(logging.ERROR):
        assert main(["replay", f"replay.recording={path}", f"replay.output_dir={tmp_path / 'out'}"]) == 2
    assert match in caplog.text and str(path) in caplog.text and "replay.recording" in caplog.text
