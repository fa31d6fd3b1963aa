"""The report: files written from the store alone, best-over-lr values, self-contained HTML."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

from longctx.arena.report import write_report
from longctx.arena.store import ResultsStore, RunRecord, StoreError, config_hash

MIXERS = ("attention", "gated_deltanet", "mamba2")
SEQ_LENS = (64, 256)
LRS = (1e-3, 3e-3)
SEEDS = (0, 1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# accuracy at lr=1e-3; lr=3e-3 adds BONUS (attention and mamba2) or subtracts it (gated_deltanet)
BASE = {("attention", 64): 0.99, ("attention", 256): 0.97, ("gated_deltanet", 64): 0.96,
        ("gated_deltanet", 256): 0.955, ("mamba2", 64): 0.80, ("mamba2", 256): 0.40}
BONUS = 0.01
STATE = {"attention": lambda t: 2 * 2 * 64 * 4 * t, "gated_deltanet": lambda t: 16384,
         "mamba2": lambda t: 8192}


def accuracy(mixer: str, seq_len: int, lr: float, seed: int) -> float:
    sign = -1 if mixer == "gated_deltanet" else 1
    return BASE[(mixer, seq_len)] + (sign * BONUS if lr == 3e-3 else 0.0) + 0.004 * (seed - 0.5)


def fake_rows() -> list[RunRecord]:
    rows = []
    for mixer in MIXERS:
        for seq_len in SEQ_LENS:
            for lr in LRS:
                for seed in SEEDS:
                    config = {"task": "mqar", "mixer": mixer, "d_model": 64, "seq_len": seq_len,
                              "lr": lr, "seed": seed, "num_kv_pairs": seq_len // 16}
                    rows.append(RunRecord(
                        run_id=config_hash(config), suite="quick", config=config,
                        metrics={"accuracy": accuracy(mixer, seq_len, lr, seed), "loss": 0.1},
                        wall_time_s=2.0, state_size_bytes=STATE[mixer](seq_len),
                        tokens_per_s=1e5 / (1 + (mixer == "attention") * seq_len / 64),
                        finished_at=f"2026-11-02T10:00:{len(rows):02d}+00:00", host="testbox",
                        torch_version="2.13.0"))
    return rows


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("quick")
    with ResultsStore(d / "results.sqlite") as store:
        for row in fake_rows():
            store.add(row)
    return write_report(d)


def test_files_exist_and_pngs_valid(report: dict[str, Path]) -> None:
    names = {p.name for p in report.values()}
    assert names == {"report.md", "report.html", "acc_vs_seqlen.png", "acc_vs_state_size.png",
                     "throughput.png"}
    for p in report.values():
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC


def test_html_self_contained(report: dict[str, Path]) -> None:
    text = report["html"].read_text(encoding="utf-8")
    for mixer in MIXERS:
        assert mixer in text
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 3
    assert not re.search(r"https?:", text)
    assert "<link" not in text and "<script" not in text
    assert "testbox" in text and "2.13.0" in text


def md_table(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(head, (v.strip() for v in ln.strip("|").split("|")))) for ln in lines[2:]]


def test_markdown_table_best_over_lr(report: dict[str, Path]) -> None:
    text = report["markdown"].read_text(encoding="utf-8")
    table = md_table(text)
    assert [(r["Mixer"], r["T"]) for r in table] == [(m, f"{t}") for m in MIXERS for t in SEQ_LENS]
    for r in table:
        mixer, seq_len = r["Mixer"], int(r["T"])
        best_lr = 1e-3 if mixer == "gated_deltanet" else 3e-3
        accs = [accuracy(mixer, seq_len, best_lr, s) for s in SEEDS]
        mean, std = statistics.fmean(accs), statistics.stdev(accs)
        assert r["Accuracy"] == f"{100 * mean:.1f} ± {100 * std:.1f}%"
        assert float(r["Best lr"]) == best_lr
        assert r["Runs"] == "4" and r["Task"] == "mqar" and r["d_model"] == "64"
        assert r["num_kv_pairs"] == str(seq_len // 16)
    assert table[0]["State"] == "64.0 KiB" and table[2]["State"] == "16.0 KiB"
    assert "- **Runs:** 24" in text and "48.0 s" in text


def test_findings(report: dict[str, Path]) -> None:
    text = report["markdown"].read_text(encoding="utf-8")
    assert "attention (98.0%) and gated_deltanet (95.5%) reach ≥ 95% accuracy" in text
    assert "mamba2 (41.0%) falls below" in text
    assert "mamba2 (81.0% → 41.0%)" in text


def test_width_sweep_splits_series(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for row in fake_rows():
            for d_model in (64, 128):
                config = {**row.config, "d_model": d_model}
                store.add(RunRecord(**{**row.__dict__, "config": config,
                                       "run_id": config_hash(config)}))
    paths = write_report(tmp_path, title="width sweep")
    table = md_table(paths["markdown"].read_text(encoding="utf-8"))
    assert len(table) == 12 and {r["d_model"] for r in table} == {"64", "128"}
    assert "attention d_model=128" in paths["html"].read_text(encoding="utf-8")


def test_empty_or_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results store"):
        write_report(tmp_path)
    assert not (tmp_path / "results.sqlite").exists()
    ResultsStore(tmp_path / "results.sqlite").close()
    with pytest.raises(StoreError, match="no finished runs in"):
        write_report(tmp_path)



def test_cells_of_equal_state_size_are_dodged_apart() -> None:
    """Two mixers with the same decode-state size must not hide each other in the state plot."""
    from longctx.arena.report import _dodged_sizes, summarize

    def row(mixer: str, state: int) -> RunRecord:
        config = {"task": "mqar", "mixer": mixer, "d_model": 64, "seq_len": 32, "lr": 1e-3,
                  "seed": 0}
        return RunRecord(run_id=config_hash(config), suite="s", config=config,
                         metrics={"accuracy": 0.99, "loss": 0.1}, wall_time_s=1.0,
                         state_size_bytes=state, tokens_per_s=1.0)

    cells = summarize([row("softmax_attention", 1024), row("sliding_window_attention", 1024),
                       row("gla", 4096)])
    dodged = _dodged_sizes(cells)
    x = {c.mixer: dodged[id(c)] for c in cells}
    assert x["softmax_attention"] != x["sliding_window_attention"]
    assert all(abs(x[m] / 1024 - 1) < 0.1 for m in ("softmax_attention", "sliding_window_attention"))
    assert x["gla"] == 4096  # alone at its size: not moved
