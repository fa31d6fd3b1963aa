"""The results store: round trip, resume, refusing foreign files, concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
from pathlib import Path

import pytest

from longctx.arena.store import ResultsStore, RunRecord, StoreError, config_hash


def make_record(i: int, suite: str = "quick", worker: int = 0) -> RunRecord:
    """A finished run with distinct config ``i`` (and ``worker``)."""
    config = {"task": "mqar", "mixer": "attention", "d_model": 64, "seq_len": 128,
              "lr": 1e-3, "seed": i, "worker": worker, "num_kv_pairs": 8}
    return RunRecord(run_id=config_hash(config), suite=suite, config=config,
                     metrics={"accuracy": 0.5 + i / 100, "loss": 1.0 / (i + 1)},
                     wall_time_s=1.5 * i, state_size_bytes=4096 * i, tokens_per_s=1e4 + i,
                     finished_at="2026-11-02T10:00:00+00:00", host="box", torch_version="2.13.0")


def test_config_hash_is_canonical() -> None:
    a = config_hash({"b": 1, "a": [1, 2], "c": {"y": 1, "x": 2}})
    b = config_hash({"c": {"x": 2, "y": 1}, "a": [1, 2], "b": 1})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert config_hash({"lr": 1e-3}) == config_hash({"lr": 0.001})
    assert config_hash({"seed": 0}) != config_hash({"seed": 1})


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "quick" / "results.sqlite"
    records = [make_record(i) for i in range(5)] + [make_record(9, suite="other")]
    with ResultsStore(path) as store:
        for r in records:
            store.add(r)
        assert store.get(records[2].run_id) == records[2]
        assert store.get("nope") is None
    assert path.is_file()
    with ResultsStore(path) as store:                     # reopen: same rows, insertion order
        assert store.rows() == records
        assert store.rows(suite="other") == records[-1:]
        assert len(store) == 6
        assert store.has(records[0].run_id) and not store.has("0" * 16)


def test_add_existing_run(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        rec = make_record(1)
        store.add(rec)
        store.add(make_record(1))                          # identical: no-op
        changed = make_record(1)
        changed.metrics = {"accuracy": 0.0, "loss": 9.0}
        with pytest.raises(StoreError, match=rec.run_id):
            store.add(changed)
        assert store.rows() == [rec]


def test_resume_skips_finished(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    planned = [make_record(i) for i in range(6)]
    with ResultsStore(path) as store:
        for r in planned[:3]:                              # "killed" after three runs
            store.add(r)
    with ResultsStore(path) as store:
        todo = [r for r in planned if not store.has(r.run_id)]
        assert todo == planned[3:]


@pytest.mark.parametrize("kind", ["text", "random", "other_sqlite", "meta_other_columns"])
def test_refuses_foreign_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "results.sqlite"
    if kind == "text":
        path.write_text("these are my notes, do not overwrite\n")
    elif kind == "random":
        path.write_bytes(os.urandom(8192))
    else:
        conn = sqlite3.connect(path)
        table = "meta (name TEXT, n INTEGER)" if kind == "meta_other_columns" else "t (x)"
        conn.execute(f"CREATE TABLE {table}")
        conn.execute(f"INSERT INTO {table.split()[0]} VALUES ('a', 1)" if "meta" in kind
                     else "INSERT INTO t VALUES (42)")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="results.sqlite"):
        ResultsStore(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.sqlite"]


def test_refuses_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        ResultsStore(path)


def test_corrupt_json_names_run(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    rec = make_record(3)
    with ResultsStore(path) as store:
        store.add(rec)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE runs SET metrics = '{\"accuracy\": 0.9' WHERE run_id = ?", (rec.run_id,))
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        with pytest.raises(StoreError, match=rec.run_id):
            store.rows()
        with pytest.raises(StoreError, match="corrupt metrics"):
            store.get(rec.run_id)


def _writer(path: str, worker: int, start: mp.synchronize.Event) -> None:
    """Child process: open the store and add 20 rows, one transaction each."""
    start.wait()
    with ResultsStore(path) as store:
        for i in range(20):
            store.add(make_record(i, worker=worker))


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "suite" / "results.sqlite"          # created by the racing children
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), w, start)) for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with ResultsStore(path) as store:
        rows = store.rows()
        assert len(rows) == 40
        assert {(r.config["worker"], r.config["seed"]) for r in rows} == {
            (w, i) for w in range(2) for i in range(20)}
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
