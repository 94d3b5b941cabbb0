"""The decision log: append-only, durable, readable with pandas.

One SQLite database in WAL mode, one row and one transaction per control cycle. A decision is
committed (``synchronous=FULL``) before :meth:`DecisionLog.append` returns, so a process killed
at any moment (SIGKILL included) loses at most the decision it was writing, never one it had
logged. Structured parts (signal statuses, predictions, proposal, written values) are JSON text
columns; non-finite numbers are stored as null.

Read it with :func:`read_decisions` (a ``pandas.DataFrame``, JSON columns parsed) or any SQLite
tool while the agent runs (WAL lets readers in while the writer works).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

__all__ = ["Decision", "DecisionLog", "DecisionLogError", "read_decisions"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    plant_time_s REAL NOT NULL,
    wall_time_unix_s REAL NOT NULL,
    mode TEXT NOT NULL,
    reasons TEXT NOT NULL,
    held INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    signal_status TEXT NOT NULL,
    predictions TEXT NOT NULL,
    proposal TEXT NOT NULL,
    written TEXT NOT NULL
)
"""
_JSON_COLUMNS = ("inputs", "signal_status", "predictions", "proposal", "written")


class DecisionLogError(RuntimeError):
    """The log cannot be opened or written (path, permissions, disk); the message says which."""


@dataclass(frozen=True)
class Decision:
    """One control cycle as logged.

    Attributes:
        plant_time_s: plant time of the cycle.
        mode: manual, advisory or automatic.
        reasons: the guard's reason codes.
        held: the guard held the setpoints.
        inputs: summary of the inputs (filtered values, supersaturation, ...).
        signal_status: status per signal.
        predictions: model outputs with uncertainty.
        proposal: the proposer's setpoints (empty if none).
        written: values written to the plant (empty if none).
    """

    plant_time_s: float
    mode: str
    reasons: tuple[str, ...]
    held: bool = False
    inputs: Mapping[str, Any] = field(default_factory=dict)
    signal_status: Mapping[str, str] = field(default_factory=dict)
    predictions: Mapping[str, Any] = field(default_factory=dict)
    proposal: Mapping[str, Any] = field(default_factory=dict)
    written: Mapping[str, Any] = field(default_factory=dict)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, enums their values, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "value") and isinstance(getattr(obj, "value"), (str, int, float)):
        return _clean(obj.value)
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return _clean(obj.item())
        except (TypeError, ValueError):
            pass
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


class DecisionLog:
    """Append-only decision log in SQLite (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise DecisionLogError(f"cannot open the decision log {self.path}: {exc}; "
                                   "check the path and its permissions (decision_log=...)") from None

    def append(self, d: Decision) -> int:
        """Commit one decision; returns its id. Raises DecisionLogError if it was not stored."""
        row = (
            float(d.plant_time_s) if math.isfinite(d.plant_time_s) else -1.0,
            time.time(),
            str(getattr(d.mode, "value", d.mode)),
            ",".join(str(getattr(r, "value", r)) for r in d.reasons),
            int(bool(d.held)),
            *(json.dumps(_clean(getattr(d, c)), allow_nan=False) for c in _JSON_COLUMNS),
        )
        try:
            cur = self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(
                "INSERT INTO decisions (plant_time_s, wall_time_unix_s, mode, reasons, held, inputs, signal_status,"
                " predictions, proposal, written) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            self._conn.execute("COMMIT")
            return int(cur.lastrowid)
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise DecisionLogError(f"decision at plant time {d.plant_time_s} not logged to {self.path}: {exc}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_decisions(path: str | Path):
    """All logged decisions as a ``pandas.DataFrame`` (JSON columns parsed to dicts)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DecisionLogError(f"decision log {path} not found")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        frame = pd.read_sql_query("SELECT * FROM decisions ORDER BY id", conn)
    for column in _JSON_COLUMNS:
        frame[column] = frame[column].map(json.loads)
    frame["reasons"] = frame["reasons"].map(lambda s: tuple(s.split(",")) if s else ())
    frame["held"] = frame["held"].astype(bool)
    return frame
