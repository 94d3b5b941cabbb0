"""The ``xtalpilot`` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def xtalpilot(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def test_help_lists_the_commands():
    out = xtalpilot("--help")
    assert out.returncode == 0
    for command in ("plant", "plant simulate", "agent", "demo", "bench plant", "bench loop", "certs"):
        assert command in out.stdout


def test_unknown_command_exits_2():
    out = xtalpilot("fly")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_malformed_config_is_one_clear_line(tmp_path):
    out = xtalpilot("plant", "simulate", "security=plaintext", f"simulate.output_dir={tmp_path}")
    assert out.returncode == 2
    assert "invalid configuration" in out.stderr and "sign_encrypt" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_material_is_one_clear_line(tmp_path):
    out = xtalpilot("plant", "simulate", "process.material=Unobtainium", f"simulate.output_dir={tmp_path}")
    assert out.returncode == 2
    assert "Unobtainium" in out.stderr and "KCl" in out.stderr
    assert "Traceback" not in out.stderr


def test_simulate_writes_files_and_prints_a_json_summary(tmp_path):
    out = xtalpilot(
        "plant", "simulate", "scenario=unseeded_cooling", "scenario.duration_min=90",
        f"simulate.output_dir={tmp_path}", "simulate.format=csv",
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["scenario"] == "unseeded_cooling" and summary["plant_time_s"] == 5400.0
    for path in summary["files"].values():
        assert Path(path).exists()


def test_bad_tag_map_is_one_clear_line(tmp_path):
    # Move a measurement onto another's registers: the plant must refuse to start, saying why.
    out = xtalpilot("plant", "simulate", "plant.signals.reactor_temperature_c.modbus.address=0",
                    f"simulate.output_dir={tmp_path}")
    assert out.returncode == 2
    assert "invalid tag map" in out.stderr and "overlaps" in out.stderr
    assert "Traceback" not in out.stderr


def test_power_law_preset_with_a_bad_basis_is_one_clear_line(tmp_path):
    out = xtalpilot("plant", "simulate", "kinetics=kno3_miller_rawlings_1994",
                    "scenario.kinetics.power_law.nucleation_basis=volume", f"simulate.output_dir={tmp_path}")
    assert out.returncode == 2
    assert "nucleation_basis" in out.stderr and "third_moment" in out.stderr
    assert "Traceback" not in out.stderr


def test_agent_without_a_checkpoint_says_how_to_make_one(tmp_path):
    out = xtalpilot("agent", f"agent.checkpoint={tmp_path / 'none'}", "agent.metrics_port=0",
                    f"agent.decision_log={tmp_path / 'd.sqlite'}")
    assert out.returncode == 2
    assert "make model" in out.stderr and "Traceback" not in out.stderr


def test_agent_with_a_bad_mode_names_the_allowed_values():
    out = xtalpilot("agent", "agent.mode=auto")
    assert out.returncode == 2 and "automatic" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_demo_runs_every_strategy_s_batch_and_prints_the_summary(tmp_path, tiny_checkpoint):
    """The demo end to end on a fast clock with the tiny checkpoint (figures meaningless here;
    `make demo` runs it with the real model at 300x): the agent, the recipe and SSC."""
    out = xtalpilot("demo", f"agent.checkpoint={tiny_checkpoint}", "agent.metrics_port=0",
                    f"demo.output_dir={tmp_path}", "demo.speed=1500", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    keys = {"mean_size_um", "target_size_um", "cv", "fines_fraction", "yield", "batch_time_h",
            "peak_supersaturation", "cost"}
    assert keys <= set(summary["agent"]) and keys <= set(summary["linear_cooling"])
    assert keys <= set(summary["supersaturation_control"]) and "on_spec" in summary["agent"]
    assert summary["linear_cooling"]["batch_time_h"] > 3 and sum(summary["guard_verdicts"].values()) > 50
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (tmp_path / "summary.json").exists()
    assert (tmp_path / "model_predictive" / "decisions.sqlite").exists()


@pytest.mark.integration
def test_bench_loop_prints_the_keys_per_protocol(tmp_path, tiny_checkpoint):
    out = xtalpilot("bench", "loop", f"agent.checkpoint={tiny_checkpoint}", f"bench_loop.output_dir={tmp_path}",
                    "bench_loop.speed=200", "bench_loop.interval_s=10", "bench_loop.window_plant_s=300",
                    "bench_loop.opcua_subscription=false",
                    timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    for protocol in ("opcua", "modbus"):
        r = result[protocol]
        assert set(r["cycle_ms"]) == {"p50", "p99", "max"} and r["cycle_ms"]["p50"] > 0
        assert "max" in r["loop_lag_ms"] and {"p50", "p95"} <= set(r["proposal_s"])
        assert r["missed_cycles"] >= 0 and r["cycles"] >= 20


def test_a_site_config_folder_is_taken_by_config_dir(tmp_path):
    from conf.schema import load_config
    from controller.cli import config_dir_overrides
    from controller.settings import SetupError

    site = tmp_path / "site"
    (site / "process").mkdir(parents=True)
    text = (REPO / "conf" / "process" / "kcl_seeded_cooling.yaml").read_text()
    (site / "process" / "line3_kcl.yaml").write_text(text.replace("name: kcl_seeded_cooling", "name: line3_kcl")
                                                     .replace("mass_g: 40.0", "mass_g: 55.0"))
    overrides = config_dir_overrides(["--config-dir", str(site), "process=line3_kcl", "speed=10"])
    assert overrides[:2] == ["process=line3_kcl", "speed=10"] and overrides[2].startswith("hydra.searchpath=")
    cfg = load_config(overrides)
    assert cfg.process.name == "line3_kcl" and cfg.process.seeding.mass_g == 55.0
    assert config_dir_overrides([f"--config-dir={site}"]) == overrides[2:]
    with pytest.raises(SetupError, match="no such folder"):
        config_dir_overrides(["--config-dir", str(tmp_path / "nowhere")])
    with pytest.raises(SetupError, match="not both"):
        config_dir_overrides(["--config-dir", str(site), "hydra.searchpath=[file:///etc]"])
    # as a user runs it: without the folder the process is unknown, with it the plant simulates
    out = xtalpilot("plant", "simulate", "process=line3_kcl", f"simulate.output_dir={tmp_path}")
    assert out.returncode == 2 and "line3_kcl" in out.stderr
    out = xtalpilot("plant", "simulate", "--config-dir", str(site), "process=line3_kcl", "scenario.duration_min=20",
                    f"simulate.output_dir={tmp_path}")
    assert out.returncode == 0, out.stderr
