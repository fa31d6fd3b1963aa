"""The arena's results store: one SQLite file per suite directory, ``runs/<suite>/results.sqlite``.

Only finished runs are written, each in one transaction, so a process killed mid-run leaves no
partial row and a resumed suite can skip every ``run_id`` the store already ``has``.

The file is opened in WAL mode (``synchronous=NORMAL``) with a busy timeout, so several processes
may add rows at once: a writer waits for the lock instead of failing, readers never block.

A file that exists but is not a longctx store (not SQLite, SQLite with another schema, a newer
format version) is refused with :class:`StoreError` and never modified.

Schema (version 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)    -- 'format' = 'longctx-results', 'version' = '2'
    runs(seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order
         run_id TEXT UNIQUE, suite, config JSON, metrics JSON, wall_time_s, state_size_bytes,
         tokens_per_s, finished_at, host, torch_version, device, git_commit)

A version-1 store (no ``device`` / ``git_commit``) is upgraded in place when opened: the two
columns are added with '' for the old rows.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

FORMAT = "longctx-results"
VERSION = 2
BUSY_TIMEOUT_S = 60.0
_SQLITE_MAGIC = b"SQLite format 3\x00"

_COLUMNS = ("run_id", "suite", "config", "metrics", "wall_time_s", "state_size_bytes",
            "tokens_per_s", "finished_at", "host", "torch_version", "device", "git_commit")

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    suite TEXT NOT NULL,
    config TEXT NOT NULL,
    metrics TEXT NOT NULL,
    wall_time_s REAL NOT NULL,
    state_size_bytes INTEGER NOT NULL,
    tokens_per_s REAL NOT NULL,
    finished_at TEXT NOT NULL,
    host TEXT NOT NULL,
    torch_version TEXT NOT NULL,
    device TEXT NOT NULL DEFAULT '',
    git_commit TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_suite ON runs (suite);
INSERT INTO meta (key, value) VALUES ('format', '{FORMAT}'), ('version', '{VERSION}');
"""


class StoreError(Exception):
    """The results store cannot be opened, read or written; the message names the file."""


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, e.g. ``2026-11-02T10:31:05+00:00``."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class RunRecord:
    """One finished run: what was run (``config``), what it scored, what it cost."""

    run_id: str                 # config_hash(config)
    suite: str                  # suite name, e.g. "quick"
    config: dict[str, Any]      # task, mixer, d_model, seq_len, lr, seed, ... (JSON)
    metrics: dict[str, Any]     # e.g. {"accuracy": 0.97, "loss": 0.12} (JSON)
    wall_time_s: float          # wall-clock time of the whole run
    state_size_bytes: int       # decode-state memory of the mixer (zoology's state_size)
    tokens_per_s: float         # training throughput
    finished_at: str = field(default_factory=utc_now_iso)  # ISO 8601
    host: str = ""              # machine the run ran on
    torch_version: str = ""     # torch.__version__ of the run
    device: str = ""            # "cpu" or "cuda:<GPU name>"
    git_commit: str = ""        # the source tree's commit ("+dirty" if modified), "" if unknown


def config_hash(config: dict[str, Any]) -> str:
    """First 16 hex chars of the sha256 of ``config`` as canonical JSON (sorted keys).

    Note ``1`` and ``1.0`` hash differently; ``1e-3`` and ``0.001`` hash the same.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultsStore:
    """The finished runs of one suite, in a SQLite file (created with its folder if missing).

    ``add`` of a ``run_id`` already stored is a no-op when the row is identical and a
    :class:`StoreError` otherwise: a finished run is never silently replaced.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _check_header(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S,
                                         isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open results store ({e})") from e
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    # -- opening -------------------------------------------------------------------------------

    def _open(self) -> None:
        """Validate an existing store, or create the schema in an empty file."""
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        if self._tables():                      # read-only check: a foreign file is never touched
            self._validate()
        else:
            self._create()
        self._enable_wal()
        self._execute("PRAGMA synchronous = NORMAL")

    def _enable_wal(self) -> None:
        """Switch to WAL once. The switch needs an exclusive lock and SQLite may answer it with
        "database is locked" without waiting on the busy handler, so a busy switch is retried."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while self._execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise StoreError(f"{self.path}: cannot switch to WAL mode ({e})") from e
                if time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: {e} (while switching to WAL mode)") from e
                time.sleep(0.05)

    def _tables(self) -> set[str]:
        rows = self._execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {name for (name,) in rows}

    def _validate(self) -> None:
        tables = self._tables()
        if "meta" not in tables:
            raise StoreError(f"{self.path}: SQLite database without a longctx 'meta' table "
                             f"(tables: {', '.join(sorted(tables))}); not a longctx results store")
        try:
            meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: unreadable 'meta' table ({e}); "
                             "not a longctx results store") from e
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: meta 'format' is {meta.get('format')!r}, "
                             f"expected {FORMAT!r}; not a longctx results store")
        version = str(meta.get("version", ""))
        if not version.isdigit():
            raise StoreError(f"{self.path}: meta 'version' is {meta.get('version')!r}; "
                             "not a valid longctx results store")
        if int(version) > VERSION:
            raise StoreError(f"{self.path}: store format version {version} is newer than this "
                             f"longctx supports ({VERSION}); upgrade longctx")
        if "runs" not in tables:
            raise StoreError(f"{self.path}: longctx store without a 'runs' table")
        if int(version) < VERSION:
            self._upgrade(int(version))

    def _upgrade(self, version: int) -> None:
        """Version 1 -> 2: add ``device`` and ``git_commit`` ('' for the runs already stored)."""
        self._execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in self._conn.execute("PRAGMA table_info(runs)")}
            for name in ("device", "git_commit"):
                if name not in columns:  # another process may have upgraded it meanwhile
                    self._conn.execute(f"ALTER TABLE runs ADD COLUMN {name} TEXT NOT NULL DEFAULT ''")
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'version'", (str(VERSION),))
            self._conn.execute("COMMIT")
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot upgrade store from version {version} ({e})") from e
            raise

    def _create(self) -> None:
        """Create the schema; another process may be doing the same, hence the re-check."""
        self._execute("BEGIN IMMEDIATE")
        try:
            if self._tables():
                self._validate()
            else:
                for statement in _SCHEMA.split(";"):   # not executescript: it would COMMIT
                    if statement.strip():
                        self._conn.execute(statement)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already done so."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def _execute(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e} (while running {sql.split()[0]} ...)") from e

    # -- API -----------------------------------------------------------------------------------

    def has(self, run_id: str) -> bool:
        """Whether a finished run with this id is stored."""
        row = self._execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None

    def add(self, row: RunRecord) -> None:
        """Store one finished run in one transaction (identical re-add: no-op; else StoreError)."""
        values = _to_values(row)
        self._execute("BEGIN IMMEDIATE")
        try:
            old = self._conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE run_id = ?",
                                     (row.run_id,)).fetchone()
            if old is None:
                self._conn.execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}) "
                                   f"VALUES ({', '.join('?' * len(_COLUMNS))})", values)
            elif tuple(old) != values:
                raise StoreError(f"{self.path}: run {row.run_id!r} is already stored with "
                                 "different results; a finished run is never replaced")
            self._conn.execute("COMMIT")
        except BaseException as e:
            self._rollback()
            if isinstance(e, sqlite3.Error):
                raise StoreError(f"{self.path}: cannot add run {row.run_id!r} ({e})") from e
            raise

    def get(self, run_id: str) -> RunRecord | None:
        """The stored run with this id, or None."""
        row = self._execute(f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE run_id = ?",
                            (run_id,)).fetchone()
        return None if row is None else self._to_record(row)

    def rows(self, suite: str | None = None) -> list[RunRecord]:
        """All stored runs (of one suite if given), in insertion order."""
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        params: tuple = ()
        if suite is not None:
            sql, params = sql + " WHERE suite = ?", (suite,)
        return [self._to_record(r) for r in self._execute(sql + " ORDER BY seq", params)]

    def __len__(self) -> int:
        return self._execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def close(self) -> None:
        """Close the connection (idempotent); SQLite checkpoints the WAL on the last close."""
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def _to_record(self, row: tuple) -> RunRecord:
        fields = dict(zip(_COLUMNS, row))
        for key in ("config", "metrics"):
            try:
                value = json.loads(fields[key])
            except (TypeError, ValueError) as e:
                raise StoreError(f"{self.path}: run {fields['run_id']!r} has corrupt {key} "
                                 f"JSON ({e})") from e
            if not isinstance(value, dict):
                raise StoreError(f"{self.path}: run {fields['run_id']!r} has {key} JSON that is "
                                 f"not an object")
            fields[key] = value
        return RunRecord(**fields)


def _check_header(path: Path) -> None:
    """Refuse, without opening it in SQLite, a path that is not a (possibly empty) SQLite file."""
    if not path.exists():
        return
    if not path.is_file():
        raise StoreError(f"{path}: exists and is not a file; cannot use it as a results store")
    with path.open("rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise StoreError(f"{path}: not a SQLite database (file header {head[:16]!r}); "
                         "not a longctx results store, left untouched")


def _to_values(row: RunRecord) -> tuple:
    """The column values of ``row``, in ``_COLUMNS`` order, config/metrics as sorted JSON."""
    if not isinstance(row.config, dict) or not isinstance(row.metrics, dict):
        raise TypeError(f"run {row.run_id!r}: config and metrics must be dicts")
    return (str(row.run_id), str(row.suite), json.dumps(row.config, sort_keys=True),
            json.dumps(row.metrics, sort_keys=True), float(row.wall_time_s),
            int(row.state_size_bytes), float(row.tokens_per_s), str(row.finished_at),
            str(row.host), str(row.torch_version), str(row.device), str(row.git_commit))
