"""The ``xtalpilot`` command as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def xtalpilot(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def test_help_lists_the_commands():
    out = xtalpilot("--help")
    assert out.returncode == 0
    for command in ("plant", "plant simulate", "bench plant", "demo", "certs"):
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
    out = xtalpilot("plant", "simulate", "scenario.material=Unobtainium", f"simulate.output_dir={tmp_path}")
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
