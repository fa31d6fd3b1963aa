"""Merge results stores from several machines into one (``longctx merge OUT IN ...``).

Runs are deduplicated by ``run_id`` (the config hash): when the same config finished on several
machines, the run that finished first is kept. The output is built in a temporary file beside
it and moved into place in one ``os.replace``, so an interrupted merge leaves ``OUT`` as it was.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from longctx.arena.store import ResultsStore, StoreError


@dataclass
class MergeCounts:
    added: int  # runs new to the output
    duplicates: int  # runs skipped: their run_id was already in the output or an earlier input
    total: int  # runs in the output afterwards


def _read(path: Path) -> list:
    if not path.is_file():
        raise StoreError(f"{path}: no such results store (an input of merge)")
    with ResultsStore(path) as store:
        return store.rows()


def merge_stores(out: str | Path, inputs: list[str | Path]) -> MergeCounts:
    """Merge every run of ``inputs`` into the store ``out`` (created if missing), atomically."""
    out = Path(out)
    if not inputs:
        raise ValueError("merge: give at least one input store")
    for p in inputs:
        if Path(p).resolve() == out.resolve():
            raise ValueError(f"merge: {p} is both the output and an input; merge into another file")
    rows = [r for p in inputs for r in _read(Path(p))]
    rows.sort(key=lambda r: r.finished_at)  # the earliest finished copy of a config wins
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".merging", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if out.exists():
            _snapshot(out, tmp)
        else:
            tmp.unlink()
        added = duplicates = 0
        with ResultsStore(tmp) as store:
            for r in rows:
                if store.has(r.run_id):
                    duplicates += 1
                else:
                    store.add(r)
                    added += 1
            total = len(store)
        _checkpoint(tmp)
        os.replace(tmp, out)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
    return MergeCounts(added=added, duplicates=duplicates, total=total)


def _snapshot(src: Path, dst: Path) -> None:
    """A consistent copy of the store ``src`` (its WAL included) into ``dst``."""
    with ResultsStore(src):  # validates (and upgrades) it
        pass
    con = sqlite3.connect(src)
    try:
        target = sqlite3.connect(dst)
        con.backup(target)
        target.close()
    finally:
        con.close()


def _checkpoint(path: Path) -> None:
    """Fold the WAL into the file itself so that one file holds everything after the move."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode = DELETE")
    finally:
        con.close()


__all__ = ["MergeCounts", "merge_stores"]
