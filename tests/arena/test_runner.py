"""The arena end to end: tiny suites run in seconds, resume after a kill, never recompute.

Every run uses one torch thread (``threads = 1``): tiny models on a busy 2-core machine are
otherwise dominated by thread contention.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from longctx.arena import runner
from longctx.arena.runner import run_suite
from longctx.arena.store import ResultsStore, StoreError, config_hash
from longctx.arena.suite import load_suite
from longctx.cli.main import main

SRC = Path(__file__).resolve().parents[2] / "src"
MIXERS = ("softmax_attention", "gla")

TINY = """
[suite]
name = "{name}"
tasks = ["mqar"]
mixers = ["softmax_attention", "gla"]
d_model = [16]
seq_len = {seq_len}
lr = [1e-2]
seeds = {seeds}

[model]
n_layers = 1
n_heads = 2

[train]
steps = {steps}
batch_size = 8
eval_batch_size = 16
threads = 1

[task.mqar]
vocab_size = 32
num_kv_pairs = 2
num_train = 64
num_test = 16
"""


def write_suite(tmp_path: Path, name: str = "tiny", seq_len: str = "[16, 32]",
                seeds: str = "[0]", steps: str = "3") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, seq_len=seq_len, seeds=seeds, steps=steps))
    return path


def records(store_path: Path) -> dict:
    with ResultsStore(store_path) as store:
        return {r.run_id: r for r in store.rows()}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory):
    n_threads = torch.get_num_threads()
    tmp = tmp_path_factory.mktemp("arena")
    suite = load_suite(str(write_suite(tmp)))
    t0 = time.perf_counter()
    suite_dir = run_suite(suite, out_dir=tmp / "runs", jobs=1, threads=1, progress=False)
    elapsed = time.perf_counter() - t0
    torch.set_num_threads(n_threads)
    return suite, suite_dir, elapsed


def test_run_suite_stores_every_run(tiny_run) -> None:
    suite, suite_dir, elapsed = tiny_run
    assert suite_dir.name == "tiny"
    rows = records(suite_dir / "results.sqlite")
    assert len(rows) == 4
    assert set(rows) == {config_hash(c) for c in suite.runs()}
    assert {(r.config["mixer"], r.config["seq_len"]) for r in rows.values()} == {
        (m, t) for m in MIXERS for t in (16, 32)}
    for r in rows.values():
        assert r.suite == "tiny"
        assert 0.0 <= r.metrics["accuracy"] <= 1.0
        assert r.metrics["steps"] == 3
        assert r.metrics["params"] > 0
        assert r.state_size_bytes > 0 and r.tokens_per_s > 0 and r.wall_time_s > 0
        assert r.torch_version == torch.__version__
    # softmax attention's KV cache grows with the length; gla's state does not
    size = {(r.config["mixer"], r.config["seq_len"]): r.state_size_bytes for r in rows.values()}
    assert size[("softmax_attention", 32)] == 2 * size[("softmax_attention", 16)]
    assert size[("gla", 32)] == size[("gla", 16)]
    assert elapsed < 60


def test_report_written_and_names_every_mixer(tiny_run) -> None:
    _, suite_dir, _ = tiny_run
    for name in ("report.md", "report.html"):
        text = (suite_dir / name).read_text(encoding="utf-8")
        for mixer in MIXERS:
            assert mixer in text, f"{name} does not name {mixer}"


def test_rerun_does_not_recompute(tiny_run, monkeypatch) -> None:
    suite, suite_dir, _ = tiny_run
    before = records(suite_dir / "results.sqlite")

    def boom(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(runner, "execute_run", boom)
    assert run_suite(suite, out_dir=suite_dir.parent, jobs=1, progress=False,
                     report=False) == suite_dir
    after = records(suite_dir / "results.sqlite")
    assert len(after) == 4
    assert after == before  # identical records: finished_at, metrics, wall time
    assert {k: r.finished_at for k, r in after.items()} == {
        k: r.finished_at for k, r in before.items()}


def test_rerun_runs_only_new_configs(tmp_path: Path) -> None:
    path = write_suite(tmp_path, seq_len="[16]")
    run_suite(load_suite(str(path)), out_dir=tmp_path, jobs=1, threads=1, progress=False,
              report=False)
    first = records(tmp_path / "tiny" / "results.sqlite")
    assert len(first) == 2
    # grow the grid: the two finished runs are kept as they are, two new ones are added
    path = write_suite(tmp_path, seq_len="[16, 32]")
    run_suite(load_suite(str(path)), out_dir=tmp_path, jobs=1, threads=1, progress=False,
              report=False)
    second = records(tmp_path / "tiny" / "results.sqlite")
    assert len(second) == 4
    assert all(second[k] == r for k, r in first.items())


def _ro_count(store: Path) -> int:
    """Finished rows, read through a read-only connection (0 while the store is being made)."""
    if not store.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_resume_after_kill(tmp_path: Path, capsys) -> None:
    # runs go longest first: the 4 runs at T=32 take 2 steps, the 4 at T=16 take 40,
    # so the kill after >= 2 finished rows lands in a slow run
    path = write_suite(tmp_path, name="resume", seq_len="[16, 32]", seeds="[0, 1]",
                       steps="{ 16 = 40, 32 = 2 }")
    suite = load_suite(str(path))
    ids = {config_hash(c) for c in suite.runs()}
    assert len(ids) == 8
    out = tmp_path / "runs"
    store = out / "resume" / "results.sqlite"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "longctx.cli.main", "arena", "--suite", str(path), "--out",
           str(out), "--jobs", "1", "--threads", "1", "--quiet", "--no-report"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _ro_count(store) < 2:
            assert proc.poll() is None, f"arena exited early: {proc.communicate()}"
            assert time.monotonic() < deadline, "no 2 finished runs within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed = {k: r.finished_at for k, r in records(store).items()}
    killed_records = records(store)
    assert 2 <= len(killed) < 8, f"{len(killed)} runs finished before the kill"
    assert set(killed) <= ids

    # resume to completion
    assert main(["arena", "--suite", str(path), "--out", str(out), "--jobs", "1",
                 "--threads", "1", "--quiet", "--no-report"]) == 0
    final = records(store)
    assert set(final) == ids and len(final) == 8  # every run exactly once
    with sqlite3.connect(store) as con:
        n_rows, n_ids = con.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone()
    assert n_rows == n_ids == 8
    for run_id, finished_at in killed.items():
        assert final[run_id].finished_at == finished_at, f"{run_id} was recomputed"
        assert final[run_id] == killed_records[run_id]

    # the report, from the store alone
    capsys.readouterr()
    assert main(["report", str(out / "resume")]) == 0
    assert "report" in capsys.readouterr().out
    for name in ("report.md", "report.html"):
        text = (out / "resume" / name).read_text(encoding="utf-8")
        assert all(m in text for m in MIXERS), name


def test_two_jobs(tmp_path: Path) -> None:
    suite = load_suite(str(write_suite(tmp_path, name="par", seq_len="[16]", seeds="[0, 1]")))
    suite_dir = run_suite(suite, out_dir=tmp_path, jobs=2, threads=1, progress=False,
                          report=False)
    rows = records(suite_dir / "results.sqlite")
    assert set(rows) == {config_hash(c) for c in suite.runs()} and len(rows) == 4
    assert not (suite_dir / "report.md").exists()


def test_jobs_below_one_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="jobs"):
        run_suite(load_suite(str(write_suite(tmp_path))), out_dir=tmp_path, jobs=0,
                  progress=False)


def test_garbage_store_is_refused_and_left_untouched(tmp_path: Path, capsys) -> None:
    path = write_suite(tmp_path)
    store = tmp_path / "runs" / "tiny" / "results.sqlite"
    store.parent.mkdir(parents=True)
    garbage = b"this is not a database\x00\xff\x10" * 50
    store.write_bytes(garbage)
    with pytest.raises(StoreError) as info:
        run_suite(load_suite(str(path)), out_dir=tmp_path / "runs", jobs=1, threads=1,
                  progress=False)
    assert str(store) in str(info.value)
    assert store.read_bytes() == garbage
    # through the command line: exit status 2 and a message naming the file
    rc = main(["arena", "--suite", str(path), "--out", str(tmp_path / "runs"), "--jobs", "1",
               "--threads", "1", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(store) in err and "not a" in err
    assert store.read_bytes() == garbage
    assert sorted(p.name for p in store.parent.iterdir()) == ["results.sqlite"]


# -- device and source commit of every run -------------------------------------------------------

def _git(*args: str) -> str:
    root = Path(runner.__file__).resolve().parents[3]
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_runs_record_device_and_source_commit(tiny_run) -> None:
    _, suite_dir, _ = tiny_run
    commit = runner.source_commit()
    for r in records(suite_dir / "results.sqlite").values():
        assert r.device == "cpu"
        assert r.git_commit == commit


def test_source_commit_of_this_checkout() -> None:
    root = Path(runner.__file__).resolve().parents[3]
    if not (root / ".git").exists():
        assert runner.source_commit() == "unknown"
        return
    head = _git("rev-parse", "--short=12", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    assert runner.source_commit() == head + ("+dirty" if dirty else "")


def test_source_commit_is_unknown_outside_a_checkout_and_never_fails(tmp_path: Path,
                                                                     monkeypatch) -> None:
    fake = tmp_path / "site" / "longctx" / "arena" / "runner.py"  # parents[3] has no .git
    monkeypatch.setattr(runner, "__file__", str(fake))
    assert runner.source_commit() == "unknown"
    (tmp_path / ".git").mkdir()  # a broken repository
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "src" / "longctx" / "arena" / "r.py"))
    assert runner.source_commit() == "unknown"
    monkeypatch.undo()

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(runner.subprocess, "run", no_git)
    assert runner.source_commit() == "unknown"


def test_source_commit_of_a_git_archive(tmp_path: Path) -> None:
    """`git archive` (the GPU runs' snapshots) substitutes the commit into ARCHIVE_COMMIT."""
    root = Path(runner.__file__).resolve().parents[3]
    if not (root / ".git").exists():
        pytest.skip("needs this project's git checkout")
    archive = subprocess.run(["git", "-C", str(root), "archive", "HEAD", "src/longctx/arena"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    code = f"import runpy; print(runpy.run_path({str(tmp_path / 'src/longctx/arena/runner.py')!r}, run_name='x')['source_commit']())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    commit = out.stdout.strip()
    assert commit.endswith("+archive"), commit
    assert len(commit) > 12 and _git("rev-parse", "HEAD").startswith(commit.removesuffix("+archive"))


def test_archive_commit_placeholder_is_unknown(tmp_path: Path) -> None:
    d = tmp_path / "src" / "longctx" / "arena"
    d.mkdir(parents=True)
    assert runner._archive_commit(tmp_path) == "unknown"  # no file
    (d / "ARCHIVE_COMMIT").write_text("$Format:%h$\n")
    assert runner._archive_commit(tmp_path) == "unknown"
    (d / "ARCHIVE_COMMIT").write_text("9a70822\n")
    assert runner._archive_commit(tmp_path) == "9a70822+archive"


def test_device_description_and_check() -> None:
    assert runner.device_description("cpu") == "cpu"
    assert runner.check_device("cpu") == "cpu"
    for bad in ("gpu", "", "mps:x"):
        with pytest.raises(ValueError, match="device"):
            runner.check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runner.check_device("cuda")
    else:
        assert runner.device_description("cuda").startswith("cuda:")
        with pytest.raises(ValueError, match="CUDA device"):
            runner.check_device(f"cuda:{torch.cuda.device_count()}")


def test_worker_device_spreads_plain_cuda_over_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [runner.worker_device("cuda", k) for k in (1, 2, 3, 4)] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert runner.worker_device("cuda:1", 1) == "cuda:1"  # an explicit GPU is kept
    assert runner.worker_device("cpu", 2) == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert runner.worker_device("cuda", 3) == "cuda"


def test_bad_device_refused_before_any_run(tmp_path: Path, monkeypatch, capsys) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a run started on a bad device")

    monkeypatch.setattr(runner, "execute_run", boom)
    suite = load_suite(str(write_suite(tmp_path)))
    with pytest.raises(ValueError, match="device"):
        run_suite(suite, out_dir=tmp_path / "runs", jobs=1, device="gpu", progress=False)
    assert not (tmp_path / "runs").exists()
    rc = main(["arena", "--suite", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "runs"),
               "--device", "gpu", "--quiet"])
    assert rc == 2 and "device" in capsys.readouterr().err


# -- needle depth of passkey / NIAH runs ---------------------------------------------------------

PASSKEY = """
[suite]
name = "depth"
tasks = ["passkey"]
mixers = ["gla"]
d_model = [16]
seq_len = [256]
lr = [1e-2]
seeds = [0]

[model]
n_layers = 1
n_heads = 2

[train]
steps = 2
batch_size = 8
eval_batch_size = 16
threads = 1

[task.passkey]
num_train = 16
num_test = 40
"""


def test_passkey_run_records_accuracy_by_depth(tmp_path: Path) -> None:
    """A passkey run stores ``depth_eval`` (bins over the test set's random depths) and the report
    draws it; the bins' examples add up to the test set and the pooled accuracy is the run's."""
    (tmp_path / "depth.toml").write_text(PASSKEY)
    n_threads = torch.get_num_threads()
    suite_dir = run_suite(load_suite(str(tmp_path / "depth.toml")), out_dir=tmp_path / "runs",
                          jobs=1, threads=1, progress=False)
    torch.set_num_threads(n_threads)
    (row,) = records(suite_dir / "results.sqlite").values()
    bins = row.metrics["depth_eval"]
    assert len(bins) >= 2 and sum(b["examples"] for b in bins) == 40
    assert all(b["length"] == 256 and 0 <= b["depth_lo"] < b["depth_hi"] <= 1 for b in bins)
    assert all(0.0 <= b["accuracy"] <= 1.0 for b in bins)
    assert "depth" in (suite_dir / "report.md").read_text().lower()


def test_rmt_kind_runs_the_whole_stack_memory_model(tmp_path: Path) -> None:
    """``[model] kind = "rmt"`` builds the whole-stack RMT (its segment / memory fields are model
    fields); its decode state is the memory plus one open segment, not the sequence."""
    text = TINY.format(name="rmt", seq_len="[32]", seeds="[0]", steps="2").replace(
        'mixers = ["softmax_attention", "gla"]', 'mixers = ["softmax_attention"]').replace(
        "[model]\n", '[model]\nkind = "rmt"\nsegment_len = 8\nn_mem = 2\n')
    (tmp_path / "rmt.toml").write_text(text)
    n_threads = torch.get_num_threads()
    suite_dir = run_suite(load_suite(str(tmp_path / "rmt.toml")), out_dir=tmp_path / "runs",
                          jobs=1, threads=1, progress=False)
    torch.set_num_threads(n_threads)
    (row,) = records(suite_dir / "results.sqlite").values()
    assert row.config["model"]["kind"] == "rmt" and row.metrics["steps"] == 2
    from longctx.models import RMTLM, RMTConfig

    model = RMTLM(RMTConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2, segment_len=8,
                            n_mem=2))
    assert row.state_size_bytes == model.state_size(1, 32)


def test_a_failing_run_does_not_stop_the_suite(tmp_path: Path, monkeypatch, capsys) -> None:
    """One run raising (say CUDA out of memory) is logged and listed; the others are stored and
    reported; the CLI exits 1; a rerun retries only the failed run."""
    real = runner.execute_run
    bad = {"mixer": "gla", "seq_len": 32}

    def flaky(config, *args, **kwargs):
        if all(config[k] == v for k, v in bad.items()):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(runner, "execute_run", flaky)
    path = write_suite(tmp_path, steps="1")
    n_threads = torch.get_num_threads()
    rc = main(["arena", "--suite", str(path), "--out", str(tmp_path / "runs"), "--jobs", "1",
               "--quiet"])
    torch.set_num_threads(n_threads)
    err = capsys.readouterr().err
    assert rc == 1 and "1 of 4 runs failed" in err and "gla d_model=16 T=32" in err
    suite_dir = tmp_path / "runs" / "tiny"
    assert len(records(suite_dir / "results.sqlite")) == 3
    assert (suite_dir / "report.md").is_file()
    log = (suite_dir / "failures.log").read_text()
    assert "CUDA out of memory (simulated)" in log and "flaky" in log  # the traceback's frames
    monkeypatch.setattr(runner, "execute_run", real)
    suite = load_suite(str(path))
    run_suite(suite, out_dir=tmp_path / "runs", jobs=1, threads=1, progress=False)
    torch.set_num_threads(n_threads)
    assert len(records(suite_dir / "results.sqlite")) == 4


def test_out_of_memory_is_recognised() -> None:
    for error in ("OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
                  "AcceleratorError: CUDA error: out of memory",
                  "RuntimeError: Triton Error [CUDA]: out of memory",
                  "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"):
        assert runner.out_of_memory(error + "\n  File ...")
    assert not runner.out_of_memory("RuntimeError: CUDA error: an illegal memory access was encountered")
    assert not runner.out_of_memory("ValueError: bad\n  File 'x.py', in out of memory handler")


def test_runs_out_of_memory_run_again_with_fewer_workers(tmp_path: Path, monkeypatch) -> None:
    """Runs that ran out of device memory beside others are rerun in the same call, half as many at
    once each round, down to one; only then is one left failed. Other failures are not retried."""
    calls: list[tuple[int, int]] = []  # (workers, runs) of each pass

    def fake_results(configs, suite, device, jobs, threads, progress):
        calls.append((jobs, len(configs)))
        for c in configs:
            key = (c["mixer"], c["seq_len"])
            if key == ("gla", 32) or (key == ("gla", 16) and jobs > 2):
                yield runner.RunFailure(config_hash(c), c, "OutOfMemoryError: CUDA out of memory.")
            elif key == ("softmax_attention", 32):
                yield runner.RunFailure(config_hash(c), c, "ValueError: not a memory problem")
            else:
                yield runner.execute_run(c, suite, device)

    monkeypatch.setattr(runner, "_results", fake_results)
    suite = load_suite(str(write_suite(tmp_path, steps="1")))
    n_threads = torch.get_num_threads()
    with pytest.raises(runner.RunsFailed, match="2 of 4 runs failed") as e:
        run_suite(suite, out_dir=tmp_path / "runs", jobs=4, progress=False, report=False)
    torch.set_num_threads(n_threads)
    assert calls == [(4, 4), (2, 2), (1, 1)]  # gla T=16 finished with 2 at once; gla T=32 never
    assert "gla d_model=16 T=32" in str(e.value) and "softmax_attention d_model=16 T=32" in str(e.value)
    assert len(records(tmp_path / "runs" / "tiny" / "results.sqlite")) == 2
