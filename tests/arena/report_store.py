"""A fake results store that covers every section of the report (used by test_report*.py).

- mqar: 2 mixers x 2 lengths x 2 lr x 2 seeds;
- passkey: 2 mixers x 2 lengths with ``depth_eval`` (5 depth bins), 2 seeds;
- niah: 1 mixer x 1 length with ``depth_eval``;
- LRA: listops, text_classification, images, pathfinder for softmax_attention (retrieval missing),
  listops only for gla;
- a ``bench.json`` beside the store (2 ops, chunk + naive forms, 3 lengths).
"""

from __future__ import annotations

import json
from pathlib import Path

from longctx.arena.store import ResultsStore, RunRecord, config_hash

DEPTH_BINS = [(i / 5, (i + 1) / 5) for i in range(5)]
LRA_OURS = {"listops": 0.375, "text_classification": 0.612, "images": 0.401, "pathfinder": 0.705}


def depth_accuracy(mixer: str, length: int, depth: float, seed: int) -> float:
    """softmax: flat 0.9; gla: recency, worse for early needles and at the longer length."""
    if mixer == "softmax_attention":
        return 0.9 + 0.01 * seed
    return min(1.0, 0.2 + 0.7 * depth - (0.1 if length > 256 else 0.0) + 0.01 * seed)


def _record(config: dict, metrics: dict, n: int, state: int = 4096) -> RunRecord:
    return RunRecord(run_id=config_hash(config), suite="fake", config=config, metrics=metrics,
                     wall_time_s=3.0, state_size_bytes=state, tokens_per_s=5e4,
                     finished_at=f"2026-11-02T10:{n // 60:02d}:{n % 60:02d}+00:00",
                     host="testbox", torch_version="2.13.0")


def _base(task: str, mixer: str, seq_len: int, lr: float, seed: int) -> dict:
    return {"task": task, "mixer": mixer, "d_model": 64, "seq_len": seq_len, "lr": lr,
            "seed": seed, "model": {"n_layers": 2, "n_heads": 2}, "train": {"steps": 300}}


def fake_rows() -> list[RunRecord]:
    rows: list[RunRecord] = []
    for mixer in ("softmax_attention", "gla"):
        for seq_len in (64, 128):
            for lr in (1e-3, 3e-3):
                for seed in (0, 1):
                    acc = (0.99 if mixer == "softmax_attention" else 0.6 - seq_len / 1000
                           ) - (0.05 if lr == 3e-3 else 0.0) + 0.002 * seed
                    cfg = {**_base("mqar", mixer, seq_len, lr, seed), "num_kv_pairs": seq_len // 8}
                    rows.append(_record(cfg, {"accuracy": acc, "loss": 0.2, "params": 90000},
                                        len(rows)))
        for seq_len in (256, 512):
            for seed in (0, 1):
                evals = [{"length": seq_len, "depth": (lo + hi) / 2, "depth_lo": lo,
                          "depth_hi": hi, "examples": 20,
                          "accuracy": depth_accuracy(mixer, seq_len, (lo + hi) / 2, seed)}
                         for lo, hi in DEPTH_BINS]
                acc = sum(e["accuracy"] for e in evals) / len(evals)
                rows.append(_record(_base("passkey", mixer, seq_len, 3e-3, seed),
                                    {"accuracy": acc, "loss": 1.0, "depth_eval": evals},
                                    len(rows)))
    niah = [{"length": 256, "depth": 0.25, "depth_lo": 0.0, "depth_hi": 0.5, "accuracy": 0.5,
             "examples": 10},
            {"length": 256, "depth": 0.75, "depth_lo": 0.5, "depth_hi": 1.0, "accuracy": 1.0,
             "examples": 10}]
    rows.append(_record({**_base("niah", "gla", 256, 1e-3, 0), "haystack": "synthetic"},
                        {"accuracy": 0.75, "loss": 1.0, "depth_eval": niah}, len(rows)))
    for task, acc in LRA_OURS.items():
        rows.append(_record(_base(task, "softmax_attention", 512, 1e-3, 0),
                            {"accuracy": acc, "loss": 1.5}, len(rows)))
    rows.append(_record(_base("listops", "gla", 512, 1e-3, 0), {"accuracy": 0.2, "loss": 2.0},
                        len(rows)))
    return rows


def fake_bench() -> dict:
    """A ``longctx bench`` result: softmax_attention (chunk + naive) and gla (chunk)."""
    def row(form: str, T: int, tok: float, mem: int) -> dict:
        return {"form": form, "T": T, "chunk_size": 64, "fwd_ms": T / tok * 1e3,
                "fwdbwd_ms": 3 * T / tok * 1e3, "fwd_peak_bytes": mem // 2,
                "fwdbwd_peak_bytes": mem, "tokens_per_s": tok, "fwdbwd_tokens_per_s": tok / 3}

    lengths = (1024, 4096, 16384)
    meta = {"date": "2026-11-23T22:14:23+00:00", "device": "cpu", "device_name": "Fake CPU",
            "torch": "2.13.0", "threads": 2, "dtype": "float32", "B": 1, "H": 4, "D": 64,
            "lengths": list(lengths), "timing": "median of 3", "memory": "profiler",
            "complete": True}
    soft = [row("chunk", T, 4e5 * 1024 / T, 2**20 * T // 64) for T in lengths]
    soft += [row("naive", 1024, 1e4, 2**26)]
    gla = [row("chunk", T, 2e5, 2**20 * T // 256) for T in lengths]
    ops = {"softmax_attention": {"status": "ok", "error": None, "check_rel_err": 1e-15,
                                 "results": soft, "skipped": []},
           "gla": {"status": "ok", "error": None, "check_rel_err": 1e-15, "results": gla,
                   "skipped": []},
           "broken_op": {"status": "check_failed", "error": "mismatch", "check_rel_err": 0.3,
                         "results": [], "skipped": []}}
    return {"meta": meta, "ops": ops}


def write_fake_store(directory: Path, bench: bool = True) -> Path:
    """The store (and ``bench.json`` if ``bench``) in ``directory``; returns ``directory``."""
    with ResultsStore(directory / "results.sqlite") as store:
        for row in fake_rows():
            store.add(row)
    if bench:
        (directory / "bench.json").write_text(json.dumps(fake_bench()), encoding="utf-8")
    return directory
