"""The decision log: append-only, durable, readable with pandas.

One SQLite database in WAL mode, one row and one transaction per control cycle. A decision is
committed (``synchronous=FULL``) before :meth:`DecisionLog.append` returns, so a process killed
at any moment (SIGKILL included) loses at most the decision it was writing, never one it had
logged. The agent logs a decision *before* it writes to the plant (``intent``: what it is about
to write), then what the plant accepted as an outcome row of its own
(:meth:`DecisionLog.record_outcome`, a second append-only table): a write is never made that
the log does not know of. Structured parts (signal statuses, predictions, proposal, intent,
written values) are JSON text columns; non-finite numbers are stored as null.

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
    written TEXT NOT NULL,
    intent TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS outcomes (
    decision_id INTEGER NOT NULL REFERENCES decisions(id),
    written TEXT NOT NULL,
    failed TEXT NOT NULL
);
"""
_JSON_COLUMNS = ("inputs", "signal_status", "predictions", "proposal", "written", "intent")
_ROW_COLUMNS = ("inputs", "signal_status", "predictions", "proposal", "written", "intent")


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
        written: values written to the plant (empty if none; an outcome row recorded after the
            write takes precedence when read back).
        intent: values the agent was about to write when it logged the decision.
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
    intent: Mapping[str, Any] = field(default_factory=dict)


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

    def __init__(self, path: str | Path, busy_timeout_s: float = 1.0, durable: bool = True) -> None:
        """Open (or create) the log. ``busy_timeout_s``: how long a commit waits for another
        writer's lock before it fails; a local commit takes milliseconds, and the agent must know
        within a cycle that its log is not being written (it then refuses automatic).
        ``durable``: fsync every commit (a plant's log survives a power cut); False only for
        scratch runs (the benchmark's simulated batches), whose commits still survive a killed
        process (WAL, ``synchronous=NORMAL``) but not the machine going down."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                                         timeout=busy_timeout_s)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(decisions)")}
            if columns and "intent" not in columns:  # a log written by an older agent
                self._conn.execute("ALTER TABLE decisions ADD COLUMN intent TEXT NOT NULL DEFAULT '{}'")
            self._conn.executescript(_SCHEMA)
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
            *(json.dumps(_clean(getattr(d, c)), allow_nan=False) for c in _ROW_COLUMNS),
        )
        return self._commit(
            "INSERT INTO decisions (plant_time_s, wall_time_unix_s, mode, reasons, held, inputs, signal_status,"
            " predictions, proposal, written, intent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row,
            f"decision at plant time {d.plant_time_s}")

    def record_outcome(self, decision_id: int, written: Mapping[str, Any], failed: Mapping[str, Any]) -> None:
        """Commit what the plant accepted (``written``) and refused (``failed``: the reason) of a
        logged decision's intent. Raises DecisionLogError if it was not stored."""
        row = (int(decision_id), json.dumps(_clean(written), allow_nan=False), json.dumps(_clean(failed), allow_nan=False))
        self._commit("INSERT INTO outcomes (decision_id, written, failed) VALUES (?, ?, ?)", row,
                     f"outcome of decision {decision_id}")

    def _commit(self, sql: str, row: tuple, what: str) -> int:
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            cur = self._conn.execute(sql, row)
            self._conn.execute("COMMIT")
            return int(cur.lastrowid)
        except sqlite3.Error as exc:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise DecisionLogError(f"{what} not logged to {self.path}: {exc}") from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "DecisionLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_decisions(path: str | Path):
    """All logged decisions as a ``pandas.DataFrame`` (JSON columns parsed to dicts).

    ``written`` is what the plant accepted: the decision's outcome row where there is one, and
    ``failed`` what it refused (empty where nothing was refused or no write was made)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DecisionLogError(f"decision log {path} not found")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "outcomes" in tables:
            frame = pd.read_sql_query(
                "SELECT d.*, o.written AS outcome_written, o.failed AS failed FROM decisions d"
                " LEFT JOIN outcomes o ON o.decision_id = d.id ORDER BY d.id", conn)
            has = frame["outcome_written"].notna()
            frame.loc[has, "written"] = frame.loc[has, "outcome_written"]
            frame = frame.drop(columns=["outcome_written"])
            frame["failed"] = frame["failed"].fillna("{}")
        else:
            frame = pd.read_sql_query("SELECT * FROM decisions ORDER BY id", conn)
            frame["failed"] = "{}"
        if "intent" not in frame:
            frame["intent"] = "{}"
    for column in (*_JSON_COLUMNS, "failed"):
        frame[column] = frame[column].map(json.loads)
    frame["reasons"] = frame["reasons"].map(lambda s: tuple(s.split(",")) if s else ())
    frame["held"] = frame["held"].astype(bool)
    return frame
