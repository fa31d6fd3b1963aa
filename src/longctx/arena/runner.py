"""Run a suite: every config of the grid once, results into ``<out>/<suite>/results.sqlite``.

Only finished runs are written (one transaction each), so a suite killed at any point resumes
where it stopped: finished runs are skipped by their config hash, an interrupted run is redone.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import multiprocessing as mp
import platform
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from longctx.arena.depth import DEPTH_TASKS, depth_breakdown
from longctx.arena.extrapolation import ExtrapolationConfig, evaluate_lengths
from longctx.arena.report import write_report
from longctx.arena.store import ResultsStore, RunRecord, config_hash
from longctx.arena.suite import Suite, mixer_base, model_kind
from longctx.models import MODEL_KINDS
from longctx.tasks.registry import build_task, task_config_class
from longctx.train import TrainConfig, train

STORE_NAME = "results.sqlite"
_COMMIT: list[str] = []  # the source commit, looked up once per suite run (run_suite)


def host_description() -> str:
    return f"{platform.node() or 'host'} ({platform.machine()}, {torch.get_num_threads()} threads)"


def device_description(device: str) -> str:
    """``"cpu"`` or ``"cuda:<GPU name>"`` for the device a run trains on."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return dev.type


UNKNOWN_COMMIT = "unknown"


def source_commit() -> str:
    """The git commit of the source tree (``+dirty`` when tracked files are modified); in a
    ``git archive`` of the project (no .git), the commit git wrote into ``ARCHIVE_COMMIT``
    (export-subst in .gitattributes); else ``"unknown"`` (an installed wheel, no git, a broken
    repository). Never raises."""
    root = Path(__file__).resolve().parents[3]  # <root>/src/longctx/arena/runner.py
    if not (root / ".git").exists():  # an archive, or not our checkout (a wheel, say)
        return _archive_commit(root)
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
        if head.returncode != 0 or not head.stdout.strip():
            return UNKNOWN_COMMIT
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    return head.stdout.strip() + ("+dirty" if dirty.returncode != 0 or dirty.stdout.strip() else "")


def _archive_commit(root: Path) -> str:
    """The commit ``git archive`` substituted into ``ARCHIVE_COMMIT`` (marked ``+archive``), or
    ``"unknown"`` (no file, or the unsubstituted ``$Format`` placeholder of a checkout)."""
    try:
        text = (root / "src" / "longctx" / "arena" / "ARCHIVE_COMMIT").read_text().strip()
    except OSError:
        return UNKNOWN_COMMIT
    ok = text and all(c in "0123456789abcdef" for c in text)
    return text + "+archive" if ok else UNKNOWN_COMMIT


def check_device(device: str) -> str:
    """``device`` if runs can train on it (``cpu``, ``cuda``, ``cuda:<index>``), else ValueError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available here (torch "
                             f"{torch.__version__}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def worker_device(device: str, worker: int) -> str:
    """The device of pool worker ``worker`` (1-based): plain ``"cuda"`` on a machine with several
    GPUs spreads the workers round-robin over them; anything else is used as given."""
    n = torch.cuda.device_count() if device == "cuda" else 0
    return f"cuda:{(worker - 1) % n}" if n > 1 else device


def execute_run(config: dict[str, Any], suite: str, device: str = "cpu", progress: bool = False,
                threads: int | None = None) -> RunRecord:
    """Train and evaluate one run of a suite; returns its finished record."""
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    task_fields = {f.name for f in dataclasses.fields(task_config_class(config["task"]))}
    task_opts = {k: v for k, v in config.items() if k in task_fields}
    data = build_task(config["task"], seed=config["seed"], **task_opts)
    mixer = mixer_base(config["mixer"])  # "softmax_attention@alibi" -> "softmax_attention"
    kind, model_opts = model_kind(config["model"])  # "lm" (LongCtxLM) or "classifier"
    config_cls, model_cls = MODEL_KINDS[kind]
    model_config = config_cls(
        vocab_size=data.vocab_size, d_model=config["d_model"], mixer=mixer,
        mixer_options={mixer: config["mixer_options"]} if config["mixer_options"] else {},
        **model_opts,
    )
    torch.manual_seed(config["seed"])
    model = model_cls(model_config).to(device)
    train_config = TrainConfig(lr=config["lr"], seed=config["seed"], **config["train"])
    desc = f"{config['mixer']} T={config['seq_len']} lr={config['lr']:g}"
    result = train(model, data, train_config, progress=progress, desc=desc)
    metrics = {
        "accuracy": result.accuracy, "loss": result.loss, "train_loss": result.train_loss,
        "steps": result.steps, "train_time_s": result.train_time_s,
        "params": sum(p.numel() for p in model.parameters()), "history": result.history,
    }
    if config["task"] in DEPTH_TASKS:  # accuracy by needle depth, for the report's heat map
        metrics["depth_eval"] = depth_breakdown(model, config["task"], data.test, task_opts,
                                                batch_size=train_config.eval_batch_size)
    if "extrapolation" in config:
        def make_data(seq_len: int, num_train: int, num_test: int):
            opts = {**task_opts, "seq_len": seq_len, "num_train": num_train, "num_test": num_test}
            return build_task(config["task"], seed=config["seed"], **opts)

        metrics["length_eval"] = evaluate_lengths(
            model, make_data, ExtrapolationConfig(**config["extrapolation"]), config["seq_len"],
            lr=config["lr"], seed=config["seed"], progress=progress)
    return RunRecord(
        run_id=config_hash(config), suite=suite, config=config, metrics=metrics,
        wall_time_s=time.perf_counter() - t0,
        state_size_bytes=model.state_size(1, config["seq_len"]),
        tokens_per_s=result.tokens_per_s, host=host_description(), torch_version=torch.__version__,
        device=device_description(device), git_commit=_commit(),
    )


def _commit() -> str:
    """The source commit, looked up once per process (``run_suite`` sets it for its workers)."""
    if not _COMMIT:
        _COMMIT.append(source_commit())
    return _COMMIT[0]


@dataclasses.dataclass
class RunFailure:
    """A run that raised: the suite goes on without it (a rerun tries it again)."""
    run_id: str
    config: dict[str, Any]
    error: str  # the exception's type and message, then the innermost frames

    def describe(self) -> str:
        c = self.config
        return (f"{c.get('task')} / {c.get('mixer')} d_model={c.get('d_model')} "
                f"T={c.get('seq_len')} lr={c.get('lr')} seed={c.get('seed')}: "
                f"{self.error.splitlines()[0]}")


class RunsFailed(RuntimeError):
    """Some runs of a suite raised; the others are stored. The message lists them."""


def _attempt(config: dict[str, Any], suite: str, device: str, progress: bool,
             threads: int | None) -> RunRecord | RunFailure:
    """``execute_run``, with an exception turned into a RunFailure (CUDA memory freed)."""
    try:
        return execute_run(config, suite, device, progress=progress, threads=threads)
    except Exception as e:  # noqa: BLE001 - one run's failure must not stop the suite
        frames = "".join(traceback.format_tb(e.__traceback__)[-3:])
        return RunFailure(config_hash(config), config, f"{type(e).__name__}: {e}\n{frames}")
    finally:
        # give the run's cached blocks back: a pool worker keeps what its largest run reserved,
        # and a dozen workers sharing one GPU ran it out of memory (zoology-mqar, 2026-12-06)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _worker(args: tuple[dict, str, str, int | None, str]) -> RunRecord | RunFailure:
    config, suite, device, threads, commit = args
    _COMMIT[:] = [commit]  # spawned workers start with a fresh module
    identity = mp.current_process()._identity  # (k,) for the pool's k-th worker
    device = worker_device(device, identity[0] if identity else 1)
    return _attempt(config, suite, device, progress=False, threads=threads)


def run_suite(suite: Suite, out_dir: str | Path = "runs", jobs: int = 1, threads: int | None = None,
              device: str = "cpu", progress: bool = True, report: bool = True) -> Path:
    """Run every unfinished config of ``suite``; return the suite's directory."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    check_device(device)
    suite_dir = Path(out_dir) / suite.name
    _COMMIT[:] = [source_commit()]
    with ResultsStore(suite_dir / STORE_NAME) as store:
        configs = suite.runs()
        todo = [c for c in configs if not store.has(config_hash(c))]
        todo.sort(key=lambda c: -c["seq_len"])  # longest first: parallel workers end together
        done = len(configs) - len(todo)
        if progress:
            print(f"suite {suite.name!r}: {len(configs)} runs, {done} already finished, {len(todo)} to run "
                  f"-> {suite_dir}")
        bar = tqdm(total=len(todo), desc=f"arena {suite.name}", disable=not progress or not todo,
                   dynamic_ncols=True)
        failures: list[RunFailure] = []

        def keep(result: RunRecord | RunFailure) -> None:
            if isinstance(result, RunFailure):
                failures.append(result)
                _log_failure(suite_dir, result)
                bar.write(f"run failed (the suite goes on): {result.describe()}", file=sys.stderr)
            else:
                store.add(result)
            bar.update()

        pending, workers = todo, jobs
        while pending:
            retry = []
            for result in _results(pending, suite.name, device, workers, threads, progress):
                if isinstance(result, RunFailure) and workers > 1 and out_of_memory(result.error):
                    retry.append(result.config)  # again below, with fewer runs sharing the device
                else:
                    keep(result)
            if retry:
                bar.write(f"{len(retry)} runs ran out of memory beside {workers - 1} others: running "
                          f"them again {max(1, workers // 2)} at a time", file=sys.stderr)
            pending, workers = retry, max(1, workers // 2)
        bar.close()
    if report and done + len(todo) > len(failures):  # at least one finished run to report
        write_report(suite_dir)
    if failures:
        listed = "\n".join(f"  {f.describe()}" for f in failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        raise RunsFailed(f"{len(failures)} of {len(todo)} runs failed (details in "
                         f"{suite_dir / FAILURES_LOG}; rerun the suite to retry them):\n{listed}{more}")
    return suite_dir


def _results(configs: list[dict[str, Any]], suite: str, device: str, jobs: int, threads: int | None,
             progress: bool) -> Iterator[RunRecord | RunFailure]:
    """Each config's record or failure as it finishes: in this process (jobs 1) or a pool."""
    if jobs == 1:
        for config in configs:
            yield _attempt(config, suite, device, progress=progress, threads=threads)
        return
    per_job = threads or max(1, (torch.get_num_threads() or 1) // jobs)
    tqdm.set_lock(threading.RLock())  # the bar lives in this process: no semaphore to leak
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(jobs, len(configs))) as pool:
        args = [(c, suite, device, per_job, _COMMIT[0]) for c in configs]
        yield from pool.imap_unordered(_worker, args)


_OUT_OF_MEMORY = re.compile(r"out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)


def out_of_memory(error: str) -> bool:
    """Whether a run failed for want of device memory (torch's OutOfMemoryError, a CUDA or Triton
    "out of memory", cuBLAS failing to allocate its handle): worth retrying with fewer runs at once."""
    return bool(_OUT_OF_MEMORY.search(error.split("\n", 1)[0]))


FAILURES_LOG = "failures.log"


def _log_failure(suite_dir: Path, failure: RunFailure) -> None:
    """Append the failure (config and traceback) to ``<suite>/failures.log``."""
    with open(suite_dir / FAILURES_LOG, "a", encoding="utf-8") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} run {failure.run_id}\n"
                f"{json.dumps(failure.config, sort_keys=True)}\n{failure.error}\n")
