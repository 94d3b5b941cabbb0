"""Recorded plant data (historian exports) behind the plant I/O interface, for replay.

Accepted files (CSV or Parquet, by suffix):

- long form: columns ``timestamp``, ``tag``, ``value`` and optionally ``quality`` (``good`` /
  ``bad``, or 1 / 0; anything else counts as bad);
- wide form: a ``timestamp`` column and one column per tag.

The time column may be named otherwise (``time_column``, matched ignoring case). Its
date-times are read in one format for the whole column (ISO 8601, or the first date's format
month first or day first; ``day_first`` where both would read); rows out of time order are
replayed in order and counted in :attr:`RecordedIO.quirks`.

Tags may be the tag map's signal names or its OPC UA node ids; columns or tags the tag map
does not know are ignored (and listed in :attr:`RecordedIO.ignored`). Timestamps may be
date-times or numbers of seconds; plant time starts at 0 at the first timestamp.

Each :meth:`RecordedIO.read` returns the next recorded instant: every signal carries its last
recorded value with the time it was recorded as its source time, so a tag the historian
stopped logging shows as stale downstream. :meth:`RecordedIO.write` writes nothing: replay
is shadow mode. Problems in the file name the file, the row and the column.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from conf.contract.tagmap import TagMap
from controller.plant_io import PlantIOError, Snapshot, WriteOutcome
from controller.state import Reading

__all__ = ["RecordedIO", "RecordingError"]


class RecordingError(ValueError):
    """A recording that cannot be read; the message names the file, row and column."""


def _first_row_longer_than_header(path: Path) -> tuple[int, int, int] | None:
    """(file line, fields, header fields) of the first CSV row with more fields than its
    header, or None."""
    import csv

    with path.open(newline="", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                return reader.line_num, len(row), len(header)
    return None


def _read_frame(path: Path):
    import warnings

    import pandas as pd

    if not path.is_file():
        raise RecordingError(f"recording {path} not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".txt"):
            # Rows with more fields than the header: pandas would take the extra leading fields
            # as the index and shift every column (a replay of such a file ran on misaligned
            # columns and exited 0); with index_col=False it drops the extra ones, warning.
            with warnings.catch_warnings():
                warnings.simplefilter("error", pd.errors.ParserWarning)
                try:
                    return pd.read_csv(path, index_col=False)
                except (pd.errors.ParserWarning, pd.errors.ParserError):
                    long_row = _first_row_longer_than_header(path)
                    if long_row is None:
                        raise
                    line, fields, header = long_row
                    raise RecordingError(
                        f"recording {path}: line {line} has {fields} fields, the header names {header}: the "
                        "columns cannot be aligned (a missing header name, or a separator inside a value); "
                        "fix the header or the rows") from None
    except RecordingError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt files
        raise RecordingError(f"recording {path} is not a readable {path.suffix} file ({exc})") from None
    raise RecordingError(f"recording {path}: unknown format {path.suffix!r}; use .csv or .parquet")


def _dates(column, path: Path, name: str, day_first: bool | None):
    """Date-times of a whole column in one format (UTC), or RecordingError.

    One format for every row: ISO 8601, else the format guessed from the first value, month
    first or day first. Parsed row by row (pandas' ``format="mixed"``), 12/07 23:59:59 then
    13/07 00:00:00 read the first as 7 December and the second as 13 July: a jump of -148
    days, which the replay then sorted away without a word. Where both orders read every row
    (no day past the 12th) the order is ``day_first``'s, and without it the recording is
    refused as ambiguous.
    """
    import pandas as pd
    from pandas.tseries.api import guess_datetime_format

    text = column.astype(str).str.strip()
    iso = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    if iso.notna().all():
        return iso
    readings = {}
    orders = (False, True) if day_first is None else (bool(day_first),)
    for order in orders:
        fmt = guess_datetime_format(text.iloc[0], dayfirst=order)
        if fmt is None:
            continue
        parsed = pd.to_datetime(text, errors="coerce", utc=True, format=fmt)
        readings[order] = (fmt, parsed)
    complete = {order: r for order, r in readings.items() if r[1].notna().all()}
    if len(complete) == 2 and not complete[False][1].equals(complete[True][1]):
        raise RecordingError(f"recording {path}: column {name}: the dates read both month first and day first "
                             f"(e.g. {text.iloc[0]!r}); set replay.day_first=true or false")
    if complete:
        return next(iter(complete.values()))[1]
    # the format that reads the most rows names the first one it cannot
    best = max(readings.values(), key=lambda r: int(r[1].notna().sum()), default=None)
    bad = best[1].isna().to_numpy() if best is not None else np.ones(len(text), dtype=bool)
    row = int(np.flatnonzero(bad)[0])
    detail = f" in the format {best[0]!r} of the column's first date" if best is not None else ""
    raise RecordingError(f"recording {path}: row {row + 2}, column {name}: {column.iloc[row]!r} is not a date-time"
                         f"{detail} or a number of seconds")


def _seconds(column, path: Path, name: str = "timestamp", day_first: bool | None = None):
    """Timestamps -> seconds since the first, (N,). Raises RecordingError naming the first bad
    row (see :func:`_dates` for date-times)."""
    import pandas as pd

    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().all():
        t = numeric.to_numpy(dtype=float)
    else:
        parsed = _dates(column, path, name, day_first)
        t = (parsed - parsed.iloc[0]).dt.total_seconds().to_numpy(dtype=float)
    return t - t[0] if t.size else t


def _time_column(frame, wanted: str, path: Path) -> str:
    """The recording's time column: ``wanted``, else the one column that matches it ignoring
    case."""
    if wanted in frame.columns:
        return wanted
    matches = [c for c in frame.columns if str(c).strip().lower() == wanted.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    raise RecordingError(f"recording {path}: no time column {wanted!r} (columns: {list(frame.columns)}); "
                         "name it with replay.time_column")


class RecordedIO:
    """Replays a recording as successive snapshots (see the module docstring)."""

    def __init__(self, tagmap: TagMap, path: str | Path, time_column: str = "timestamp",
                 day_first: bool | None = None) -> None:
        import pandas as pd

        self.tagmap = tagmap
        self.path = Path(path)
        frame = _read_frame(self.path)
        time_name = _time_column(frame, time_column, self.path)
        by_node = {s.opcua_node: s.name for s in tagmap}
        names = {s.name for s in tagmap}

        def signal_of(tag: str) -> str | None:
            tag = str(tag)
            return tag if tag in names else by_node.get(tag)

        self.ignored: list[str] = []
        seconds = _seconds(frame[time_name], self.path, str(time_name), day_first)
        # What the file has and the replay does not repair silently: it replays in time order,
        # and says how many rows were not.
        self.quirks = {"out_of_order_rows": int((np.diff(seconds) < 0).sum()) if seconds.size else 0}
        if {"tag", "value"} <= set(frame.columns):
            # a list, not Series.map: pandas turns the None of an unknown tag into NaN, and the
            # unknown tags went unlisted (and their rows in) wherever a known one was present
            tags = [signal_of(t) for t in frame["tag"]]
            self.ignored = sorted({str(t) for t, s in zip(frame["tag"], tags) if s is None})
            values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
            if "quality" in frame.columns:
                q = frame["quality"].astype(str).str.strip().str.lower()
                good = q.isin(["good", "1", "1.0", "true", "192"]).to_numpy()
            else:
                good = np.ones(len(frame), dtype=bool)
            rows = [(t, s, v, g) for t, s, v, g in zip(seconds, tags, values, good) if s is not None]
        else:
            rows = []
            for column in frame.columns:
                if column == time_name:
                    continue
                s = signal_of(column)
                if s is None:
                    self.ignored.append(str(column))
                    continue
                col = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
                rows.extend((t, s, v, True) for t, v in zip(seconds, col))
        if not rows:
            raise RecordingError(f"recording {self.path}: no values of any tag-map signal "
                                 f"(ignored tags: {self.ignored[:10]})")
        rows.sort(key=lambda r: r[0])
        self._times = sorted({float(r[0]) for r in rows})
        self._rows = rows
        self._cursor = 0  # next row to apply
        self._step = 0  # next instant to return
        self._last: dict[str, Reading] = {}

    @property
    def instants(self) -> int:
        """Number of distinct recorded instants."""
        return len(self._times)

    @property
    def exhausted(self) -> bool:
        return self._step >= len(self._times)

    async def connect(self) -> None:
        return None

    async def read(self) -> Snapshot:
        if self.exhausted:
            raise PlantIOError(f"recording {self.path}: end of data after {len(self._times)} instants")
        now = self._times[self._step]
        while self._cursor < len(self._rows) and self._rows[self._cursor][0] <= now:
            t, name, value, good = self._rows[self._cursor]
            # NaN in a wide export is a gap, not a reading: keep the previous one (it ages).
            if not good or not math.isnan(value):
                self._last[name] = Reading(float(value), float(t), bool(good))
            self._cursor += 1
        self._step += 1
        readings = {s.name: self._last.get(s.name, Reading(None, None)) for s in self.tagmap}
        return Snapshot(now, readings, time.monotonic())

    async def write(self, values: Mapping[str, float]) -> dict[str, WriteOutcome]:
        return {name: WriteOutcome(False, "replay is read-only (shadow mode)") for name in values}

    async def close(self) -> None:
        return None
