"""A suite of 100 runs SIGKILLed at random points several times, then resumed, ends with every
run in the store exactly once and an intact SQLite file. A fake trainer stands in for
``execute_run`` (a few milliseconds per run), so the whole test takes seconds."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longctx.arena.store import ResultsStore, config_hash
from longctx.arena.suite import parse_suite

SUITE = {"suite": {"name": "kill", "tasks": ["mqar"], "mixers": ["gla", "retention"], "d_model": [16],
                   "seq_len": [16], "lr": [1e-3], "seeds": list(range(50))}}

CHILD = """
import random, sys, time
import longctx.arena.runner as runner
from longctx.arena.store import RunRecord, config_hash
from longctx.arena.suite import parse_suite

def fake_run(config, suite, device="cpu", progress=False, threads=None):
    time.sleep(random.uniform(0.002, 0.02))  # "training"
    return RunRecord(run_id=config_hash(config), suite=suite, config=config,
                     metrics={"accuracy": config["seed"] / 100}, wall_time_s=0.01,
                     state_size_bytes=1, tokens_per_s=1.0, finished_at="2026-01-01T00:00:00+00:00")

runner.execute_run = fake_run
suite = parse_suite(%r)
runner.run_suite(suite, out_dir=sys.argv[1], jobs=int(sys.argv[2]), progress=False, report=False)
"""


def _start(out: Path, jobs: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", CHILD % SUITE, str(out), str(jobs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("jobs", [1])
def test_sigkilled_suite_resumes_to_every_run_exactly_once(tmp_path: Path, jobs: int) -> None:
    rng = random.Random(0)
    store_path = tmp_path / "kill" / "results.sqlite"
    counts = []
    for _ in range(5):  # killed at a random point, five times
        p = _start(tmp_path, jobs)
        deadline = time.monotonic() + 60
        while not store_path.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # start-up (imports) done once the store exists
        time.sleep(rng.uniform(0.0, 0.3))  # ~100 runs take ~1 s: killed part-way
        p.send_signal(signal.SIGKILL)
        p.wait()
        if store_path.exists():
            with ResultsStore(store_path) as s:
                counts.append(len(s))
    p = _start(tmp_path, jobs)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err.decode()[-2000:]
    expected = {config_hash(c) for c in parse_suite(SUITE).runs()}
    assert len(expected) == 100
    with ResultsStore(store_path) as s:
        ids = [r.run_id for r in s.rows()]
    assert len(ids) == len(set(ids)) == 100 and set(ids) == expected
    assert counts == sorted(counts) and counts[-1] < 100, counts  # it was really interrupted
    con = sqlite3.connect(store_path)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()


def test_concurrent_writers_lose_no_run(tmp_path: Path) -> None:
    """Four processes add disjoint halves-overlapping run sets to one store at once."""
    code = """
import sys
from longctx.arena.store import ResultsStore, RunRecord
lo, hi = int(sys.argv[2]), int(sys.argv[3])
with ResultsStore(sys.argv[1]) as s:
    for i in range(lo, hi):
        s.add(RunRecord(run_id=f"r{i}", suite="c", config={"i": i}, metrics={}, wall_time_s=0.0,
                        state_size_bytes=0, tokens_per_s=0.0, finished_at="2026-01-01"))
"""
    path = tmp_path / "c.sqlite"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(lo), str(lo + 60)], env=env)
             for lo in (0, 40, 80, 120)]  # overlapping ranges: identical re-adds are no-ops
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    with ResultsStore(path) as s:
        assert sorted(int(r.run_id[1:]) for r in s.rows()) == list(range(180))
