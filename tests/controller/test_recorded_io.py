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
    ("time,value\n1,2\n", "no time column 'timestamp'.*replay.time_column"),
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


def test_a_time_column_named_otherwise_and_day_first_dates_read_in_one_format(tmp_path, tagmap):
    # a logger's export: "Time", day-first dates across midnight into the 13th (read row by row,
    # 12/07 was 7 December and 13/07 13 July: a jump of -148 days, sorted away without a word)
    path = tmp_path / "logger.csv"
    path.write_text("TimeStamp,reactor_temperature_c\n12/07/2026 23:59:50,50.0\n12/07/2026 23:59:59,49.9\n"
                    "13/07/2026 00:00:10,49.8\n")
    io = RecordedIO(tagmap, path)  # "TimeStamp" is "timestamp", ignoring case
    assert [s.plant_time_s for s in read_all(io)] == [0.0, 9.0, 20.0]
    assert io.quirks["out_of_order_rows"] == 0
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(path.read_text().replace("TimeStamp,", "Zeit,"))
    with pytest.raises(RecordingError, match="replay.time_column"):
        RecordedIO(tagmap, renamed)
    assert RecordedIO(tagmap, renamed, time_column="Zeit").instants == 3


def test_ambiguous_dates_ask_for_the_order_and_rows_out_of_order_are_counted(tmp_path, tagmap):
    path = tmp_path / "early.csv"
    # no day past the 12th: 01/02 reads as 2 January or 1 February
    path.write_text("timestamp,reactor_temperature_c\n01/02/2026 10:00:00,50.0\n01/02/2026 10:00:30,49.9\n"
                    "02/02/2026 10:00:00,49.8\n01/02/2026 10:00:20,49.7\n")
    with pytest.raises(RecordingError, match="replay.day_first"):
        RecordedIO(tagmap, path)
    io = RecordedIO(tagmap, path, day_first=True)  # 1 and 2 February: a day apart
    assert io.quirks["out_of_order_rows"] == 1  # the last row is out of order: replayed in order, counted
    times = [s.plant_time_s for s in read_all(io)]
    assert times == [0.0, 20.0, 30.0, 86400.0]
    month_first = RecordedIO(tagmap, path, day_first=False)  # 2 January and 2 February: a month apart
    assert max(s.plant_time_s for s in read_all(month_first)) == 31 * 86400.0
