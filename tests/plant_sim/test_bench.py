"""The plant benchmark's plumbing (the figures themselves come from ``xtalpilot bench plant``)."""

from __future__ import annotations

from conf.schema import load_config
from conf.contract.tagmap import TagMap
from plant_sim.bench import served_benchmark, served_overrides


def test_user_overrides_reach_the_served_plant_except_the_benchmarks_own_keys():
    user = ["scenario=msmpr", "plant=crystallizer", "speed=5", "+host=0.0.0.0", "security=sign_encrypt",
            "opcua_port=1", "autostart=false", "scenario.seed=3"]
    out = served_overrides(user, 1000.0, 4841, 5021)
    assert out == ["scenario=msmpr", "plant=crystallizer", "scenario.seed=3",
                   "speed=1000.0", "opcua_port=4841", "modbus_port=5021", "autostart=true"]


def test_served_benchmark_measures_a_running_plant_with_the_users_scenario():
    tagmap = TagMap.from_dict(load_config([]).plant)
    result = served_benchmark(tagmap, speed=1000.0, reads=20, rtf_window_s=1.0,
                              overrides=["scenario=msmpr", "speed=1"])
    assert result["opcua_tags"] == len(tagmap)
    assert result["realtime_factor"] > 100.0  # the user's speed=1 did not replace the benchmark's
    for key in ("opcua_read_ms", "modbus_read_ms"):
        assert 0.0 < result[key]["p50"] <= result[key]["p99"]
