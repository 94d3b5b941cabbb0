"""Recorded historian exports as a plant source: long and wide forms, gaps, bad files."""

from __future__ import annotations

import asyncio
import math

import pandas as pd
import pytest
import yaml

from conf.contract.tagmap import TagMap
from controller.plant_io import PlantIOError
from controller.recorded_io import RecordedIO, RecordingError
from controller.state import SignalStatus, SignalTracker, ValidationSettings

REPO_TAGMAP = __import__("pathlib").Path(__file__).resolve().parents[2] / "conf" / "plant" / "crystallizer.yaml"


@pytest.fixture(scope="module")
def tagmap():
    return TagMap.from_dict(yaml.safe_load(REPO_TAGMAP.read_text()))


def read_all(io):
    async def main():
        out = []
        while not io.exhausted:
            out.append(await io.read())
        return out
    return asyncio.run(main())


def test_long_form_with_node_ids_quality_and_a_silent_tag(tmp_path, tagmap):
    node = tagmap["reactor_temperature_c"].opcua_node
    frame = pd.DataFrame({
        "timestamp": ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-01-01T00:00:10Z",
                      "2026-01-01T00:00:20Z", "2026-01-01T00:01:20Z", "2026-01-01T00:00:30Z"],
        "tag": [node, "concentration_g_per_kg", node, "concentration_g_per_kg", node, "TIC-999.PV"],
        "value": [50.0, 330.0, 49.5, "n/a", 48.0, 1.0],
        "quality": ["good", "good", "good", "bad", "good", "good"],
        })
    path = tmp_path / "export.csv"
    frame.assign(extra_tag=1).to_csv(path, index=False)
    io = RecordedIO(tagmap, path)
    assert io.ignored == ["TIC-999.PV"]  # a tag the tag map does not know, beside known ones
    snaps = read_all(io)
    assert [s.plant_time_s for s in snaps] == [0.0, 10.0, 20.0, 80.0]  # its instant is not one
    assert snaps[1].readings["reactor_temperature_c"].value == 49.5
    assert not snaps[2].readings["concentration_g_per_kg"].good  # flagged bad by the historian
    assert snaps[0].readings["jacket_temperature_c"].value is None  # never recorded
    # the validator sees the historian's flag, and a reading that stopped coming ages into stale
    tracker = SignalTracker(ValidationSettings(stale_after_s=30.0))
    assert tracker.update(snaps[0].readings["concentration_g_per_kg"], 0.0).ok
    assert tracker.update(snaps[3].readings["concentration_g_per_kg"], 80.0).status is SignalStatus.bad_quality
    temperature = SignalTracker(ValidationSettings(stale_after_s=30.0))
    assert temperature.update(snaps[2].readings["reactor_temperature_c"], 50.0).status is SignalStatus.stale
    with pytest.raises(PlantIOError, match="end of data"):
        asyncio.run(io.read())
    assert asyncio.run(io.write({"reactor_temperature_setpoint_c": 40.0}))["reactor_temperature_setpoint_c"].accepted is False


def test_wide_form_parquet_with_gaps_and_numeric_seconds(tmp_path, tagmap):
    frame = pd.DataFrame({"timestamp": [0.0, 5.0, 10.0], "reactor_temperature_c": [50.0, math.nan, 49.0],
                          "unknown_column": [1, 2, 3]})
    path = tmp_path / "export.parquet"
    frame.to_parquet(path)
    io = RecordedIO(tagmap, path)
    assert io.ignored == ["unknown_column"]
    snaps = read_all(io)
    gap = snaps[1].readings["reactor_temperature_c"]
    assert gap.value == 50.0 and gap.source_time_s == 0.0  # a gap keeps the old reading, which ages
    assert snaps[2].readings["reactor_temperature_c"].value == 49.0


@pytest.mark.parametrize("content, match", [
    ("time,value\n1,2\n", "no 'timestamp' column"),
    ("timestamp,reactor_temperature_c\n2026-01-01,50\nyesterday,51\n", "row 3, column timestamp"),
    ("timestamp,foo\n0,1\n", "no values of any tag-map signal"),
    # more fields than the header (here an unnamed leading column): pandas shifted every column
    ("timestamp,reactor_temperature_c\n1,0,50\n2,10,49\n", "line 2 has 3 fields, the header names 2"),
    ("timestamp,reactor_temperature_c\n0,50\n10,49,7\n", "line 3 has 3 fields"),
])
def test_bad_recordings_are_named(tmp_path, tagmap, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(RecordingError, match=match):
        RecordedIO(tagmap, path)


def test_missing_and_corrupt_files(tmp_path, tagmap):
    with pytest.raises(RecordingError, match="not found"):
        RecordedIO(tagmap, tmp_path / "none.csv")
    corrupt = tmp_path / "x.parquet"
    corrupt.write_bytes(b"not parquet at all")
    with pytest.raises(RecordingError, match="not a readable"):
        RecordedIO(tagmap, corrupt)
    with pytest.raises(RecordingError, match="unknown format"):
        (tmp_path / "x.xlsx").write_text("")
        RecordedIO(tagmap, tmp_path / "x.xlsx")
