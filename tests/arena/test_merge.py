"""Merging stores from several machines: dedup by config hash, earliest copy kept, atomic output,
version-1 stores upgraded, clear errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from longctx.arena.merge import merge_stores
from longctx.arena.store import ResultsStore, RunRecord, StoreError, config_hash
from longctx.cli.main import main


def _run(i: int, finished: str, host: str, acc: float = 0.5) -> RunRecord:
    config = {"task": "mqar", "mixer": "gla", "seed": i}
    return RunRecord(run_id=config_hash(config), suite="s", config=config, metrics={"accuracy": acc},
                     wall_time_s=1.0, state_size_bytes=10, tokens_per_s=5.0, finished_at=finished,
                     host=host, device="cpu", git_commit="abc")


def _store(path: Path, runs: list[RunRecord]) -> Path:
    with ResultsStore(path) as s:
        for r in runs:
            s.add(r)
    return path


def test_merge_dedups_by_config_and_keeps_the_earliest(tmp_path: Path) -> None:
    a = _store(tmp_path / "a.sqlite", [_run(0, "2026-01-02", "gpu", 0.9), _run(1, "2026-01-01", "gpu")])
    b = _store(tmp_path / "b.sqlite", [_run(0, "2026-01-01", "cpu", 0.7), _run(2, "2026-01-03", "cpu")])
    out = tmp_path / "merged" / "results.sqlite"
    c = merge_stores(out, [a, b])
    assert (c.added, c.duplicates, c.total) == (3, 1, 3)
    with ResultsStore(out) as s:
        rows = {r.config["seed"]: r for r in s.rows()}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0].host == "cpu" and rows[0].metrics["accuracy"] == 0.7  # finished first
    # merging again adds nothing; the output is one self-contained file
    assert merge_stores(out, [a, b]).added == 0
    assert not list(out.parent.glob("*.merging*")) and not Path(f"{out}-wal").exists()


def test_merge_into_an_existing_store_and_via_cli(tmp_path: Path, capsys) -> None:
    out = _store(tmp_path / "out.sqlite", [_run(5, "2026-01-01", "x")])
    a = _store(tmp_path / "a.sqlite", [_run(6, "2026-01-01", "y")])
    assert main(["merge", str(out), str(a)]) == 0
    assert "1 runs added" in capsys.readouterr().out
    with ResultsStore(out) as s:
        assert len(s) == 2


def test_merge_errors_leave_the_output_untouched(tmp_path: Path, capsys) -> None:
    out = _store(tmp_path / "out.sqlite", [_run(0, "2026-01-01", "x")])
    before = out.read_bytes()
    with pytest.raises(StoreError, match="no such results store"):
        merge_stores(out, [tmp_path / "missing.sqlite"])
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database")
    with pytest.raises(StoreError, match="bad.sqlite: not a SQLite database"):
        merge_stores(out, [bad])
    with pytest.raises(ValueError, match="both the output and an input"):
        merge_stores(out, [out])
    assert out.read_bytes() == before
    assert main(["merge", str(out), str(bad)]) == 2  # a user-input error
    assert "not a SQLite database" in capsys.readouterr().err


def test_version_1_store_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL UNIQUE,
            suite TEXT NOT NULL, config TEXT NOT NULL, metrics TEXT NOT NULL, wall_time_s REAL NOT NULL,
            state_size_bytes INTEGER NOT NULL, tokens_per_s REAL NOT NULL, finished_at TEXT NOT NULL,
            host TEXT NOT NULL, torch_version TEXT NOT NULL);
        INSERT INTO meta VALUES ('format', 'longctx-results'), ('version', '1');
        INSERT INTO runs (run_id, suite, config, metrics, wall_time_s, state_size_bytes, tokens_per_s,
            finished_at, host, torch_version) VALUES ('r1', 's', '{"a": 1}', '{"accuracy": 1.0}', 1, 2, 3,
            '2026-01-01', 'h', '2.0');
    """)
    con.commit()
    con.close()
    with ResultsStore(path) as s:
        (old,) = s.rows()
        assert (old.run_id, old.device, old.git_commit) == ("r1", "", "")
        s.add(_run(3, "2026-01-02", "h"))
        assert s.get(_run(3, "", "").run_id).git_commit == "abc"
    con = sqlite3.connect(path)
    assert con.execute("SELECT value FROM meta WHERE key = 'version'").fetchone() == ("2",)
    con.close()

