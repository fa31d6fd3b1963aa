"""The report: files written from the store alone, best-over-lr values, self-contained HTML."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pytest

from longctx.arena.report import Cell, write_report
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
                     "throughput.png", "task_mqar.png"}
    for p in report.values():
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG_MAGIC


def test_html_self_contained(report: dict[str, Path]) -> None:
    text = report["html"].read_text(encoding="utf-8")
    for mixer in MIXERS:
        assert mixer in text
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 4
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
        assert r["Runs"] == "4" and r["d_model"] == "64"
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
    from longctx.arena.report import summarize
    from longctx.arena.report_plots import _dodged_sizes

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


# -- the sections of a store with every kind of run (tests/arena/report_store.py) -------------

@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.arena.report_store import write_fake_store

    return write_report(write_fake_store(tmp_path_factory.mktemp("full")))


def md_section(text: str, title: str) -> str:
    """The Markdown between ``## title`` and the next ``## ``."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 3)
    return text[start:end if end >= 0 else len(text)]


def test_full_report_plots_are_inlined(full: dict[str, Path]) -> None:
    pngs = {k for k, p in full.items() if p.suffix == ".png"}
    tasks = ("listops", "images", "text_classification", "mqar", "niah", "passkey", "pathfinder")
    assert pngs == ({"acc_vs_seqlen", "acc_vs_state_size", "throughput", "bench_vs_length",
                     "depth_passkey", "depth_niah"} | {f"task_{t}" for t in tasks})
    text = full["html"].read_text(encoding="utf-8")
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == len(pngs)
    assert not re.search(r"https?:|<script|<link|src=\"(?!data:)", text)
    for t in tasks:
        assert f'id="task-{t.replace("_", "-")}"' in text and f'href="#task-{t.replace("_", "-")}"' in text
    md = full["markdown"].read_text(encoding="utf-8")
    assert all(f"]({k}.png)" in md for k in pngs)


def test_per_task_tables_keep_their_own_columns(full: dict[str, Path]) -> None:
    md = full["markdown"].read_text(encoding="utf-8")
    mqar, passkey = md_section(md, "Task: mqar"), md_section(md, "Task: passkey")
    assert "| Mixer | d_model | T | num_kv_pairs | Accuracy |" in mqar
    assert "num_kv_pairs" not in passkey and "| Mixer | d_model | T | Accuracy |" in passkey
    assert "Settings shared by every run: d_model=64; model: n_heads=2, n_layers=2; " \
           "train: steps=300." in passkey
    assert "passkey retrieval (Mohtashami & Jaggi 2023)" in passkey


def test_lra_leaderboard(full: dict[str, Path]) -> None:
    from longctx.arena.report_lra import PUBLISHED, average

    # the averages the papers print (over the five tasks, Path-X left out)
    assert [round(average(v), 2) for v in PUBLISHED.values()] == [54.39, 84.03, 86.25]
    section = md_section(full["markdown"].read_text(encoding="utf-8"),
                         "Leaderboard: Long Range Arena")
    rows = {r["Model"]: r for r in md_table(section)}
    assert list(rows) == ["Transformer (Tay et al. 2021)", "S4 (Gu et al. 2022)",
                          "MEGA (Ma et al. 2023)", "ours: gla", "ours: softmax_attention"]
    assert rows["MEGA (Ma et al. 2023)"]["Pathfinder"] == "96.01"
    assert rows["Transformer (Tay et al. 2021)"]["Avg"] == "54.39"
    ours = rows["ours: softmax_attention"]
    assert [ours[k] for k in ("ListOps", "Text", "Retrieval", "Image", "Pathfinder", "Avg")] == \
        ["37.5", "61.2", "—", "40.1", "70.5", "—"]
    assert rows["ours: gla"]["ListOps"] == "20.0" and rows["ours: gla"]["Text"] == "—"
    assert "not CIFAR-10" in section and "not comparable" in section
    html_text = full["html"].read_text(encoding="utf-8")
    assert html_text.count('<tr class="pub">') == 4  # published lengths + 3 published models


def test_lra_average_needs_all_five_tasks() -> None:
    from longctx.arena.report_lra import average, our_scores

    def cell(task: str, acc: float, seq_len: int = 1024) -> Cell:
        return Cell(task, "s4d", 64, seq_len, (), {}, acc, 0.0, 1, 1e-3, 0.5, 0, 1.0, 1.0, 1)

    tasks = ("listops", "text_classification", "retrieval", "images", "pathfinder")
    cells = [cell(t, 0.5 + 0.1 * i) for i, t in enumerate(tasks)] + [cell("listops", 0.9, 64)]
    scores = our_scores(cells)["s4d"]
    assert scores == pytest.approx([50.0, 60.0, 70.0, 80.0, 90.0])  # longest length wins
    assert average(scores) == pytest.approx(70.0) and average(scores[:4] + [None]) is None
    assert our_scores([cell("mqar", 0.9)]) == {}


def test_depth_heat_map_table(full: dict[str, Path]) -> None:
    from tests.arena.report_store import depth_accuracy

    section = md_section(full["markdown"].read_text(encoding="utf-8"), "Task: passkey")
    table = [r for r in md_table(section[section.index("| Mixer | Depth"):])]
    assert len(table) == 10  # 2 mixers x 5 depth bins
    first = table[0]
    assert (first["Mixer"], first["Depth"]) == ("gla", "0–20%")
    want = statistics.fmean(depth_accuracy("gla", 512, 0.1, s) for s in (0, 1))
    assert first["T = 512"] == f"{100 * want:.1f}%"
    assert "gla: 50.5% on average; lowest 17.5% at depth 0–20% (T = 512)" in section
    assert "softmax_attention: 90.5% on average, flat across depths" in section
    niah = md_section(full["markdown"].read_text(encoding="utf-8"), "Task: niah")
    assert "| gla | 0–50% | 50.0% |" in niah and "![niah:" in niah


def test_bench_section(full: dict[str, Path]) -> None:
    section = md_section(full["markdown"].read_text(encoding="utf-8"),
                         "Throughput and memory vs length (longctx bench)")
    rows = {(r["Op"], r["Form"]): r for r in md_table(section)}
    assert set(rows) == {("gla", "chunk"), ("softmax_attention", "chunk")}  # naive: not drawn
    assert rows[("gla", "chunk")]["T = 1,024"] == "200k/s · 4.0 MiB"
    assert rows[("softmax_attention", "chunk")]["T = 16,384"] == "25k/s · 256.0 MiB"
    assert "broken_op (check_failed)" in section
    assert "the fastest forward is gla (chunk, 200k tokens/s), 8.0× the slowest" in section


def test_bench_files_given_found_or_refused(tmp_path: Path) -> None:
    import json

    from tests.arena.report_store import fake_bench, fake_rows

    d = tmp_path / "suite"
    with ResultsStore(d / "results.sqlite") as store:
        for row in fake_rows()[:4]:  # one task, one length: a quick report
            store.add(row)
    (d / "bench-kernels.json").write_text('{"rows": []}', encoding="utf-8")  # not a bench result
    paths = write_report(d)
    assert "bench_vs_length" not in paths
    data = fake_bench()
    data["ops"]["gla"]["results"] = data["ops"]["gla"]["results"][:1]
    (tmp_path / "a.json").write_text(json.dumps(data), encoding="utf-8")
    newer = fake_bench()
    newer["meta"]["date"] = "2026-11-24T00:00:00+00:00"
    del newer["ops"]["softmax_attention"]
    (d / "bench-part2.json").write_text(json.dumps(newer), encoding="utf-8")
    md = write_report(d, bench=[tmp_path / "a.json", d / "bench-part2.json"])["markdown"]
    section = md_section(md.read_text(encoding="utf-8"),
                         "Throughput and memory vs length (longctx bench)")
    rows = {(r["Op"], r["Form"]): r for r in md_table(section)}
    assert rows[("gla", "chunk")]["T = 16,384"] == "200k/s · 64.0 MiB"  # the fuller file's gla
    assert ("softmax_attention", "chunk") in rows and "(a.json, bench-part2.json)" in section
    found = write_report(d)["markdown"].read_text(encoding="utf-8")
    assert "Skipped (not a bench result): bench-kernels.json." in found
    with pytest.raises(ValueError, match="bench-kernels.json is not a `longctx bench` result"):
        write_report(d, bench=d / "bench-kernels.json")
    with pytest.raises(ValueError, match="no bench JSON file at"):
        write_report(d, bench=tmp_path / "missing.json")
    from longctx.cli.main import main

    assert main(["report", str(d), "--bench", str(tmp_path / "a.json")]) == 0
    assert main(["report", str(d), "--bench", str(tmp_path / "missing.json")]) == 2


def test_kernel_bench_in_the_report(tmp_path: Path) -> None:
    """A ``longctx bench --compare`` result (``kernels.json``) found in the suite directory is a
    bench section of its own setting: one row per (kernel, library), tokens/s from the median ms;
    a library that refused has no point; a damaged file is named."""
    import json

    from tests.arena.report_store import fake_rows

    d = tmp_path / "suite"
    with ResultsStore(d / "results.sqlite") as store:
        for row in fake_rows()[:4]:
            store.add(row)
    rows = [{"op": "gla", "T": T, "ours_fwd": {"ms": 0.5 * T / 4096}, "ours_fwdbwd": {"ms": 2.0 * T / 4096},
             "fla_fwd": {"ms": 0.25 * T / 4096}, "fla_fwdbwd": {"ms": None, "error": "refused"}}
            for T in (4096, 16384)]
    rows.append({"op": "sdpa_causal", "T": 4096, "sdpa_fwd": {"ms": 0.15}, "sdpa_fwdbwd": {"ms": 0.64}})
    kernels = {"device": "NVIDIA H100 80GB HBM3", "torch": "2.11", "triton": "3.6.0", "fla": "0.6.0",
               "B": 1, "H": 16, "D": 128, "dtype": "torch.bfloat16", "copy_bandwidth_GBps": 2983.0,
               "date": "2026-12-06", "rows": rows}
    (d / "kernels.json").write_text(json.dumps(kernels), encoding="utf-8")
    paths = write_report(d)
    assert "bench_vs_length" in paths
    section = md_section(paths["markdown"].read_text(encoding="utf-8"),
                         "Throughput and memory vs length (longctx bench)")
    table = {(r["Op"], r["Form"]): r for r in md_table(section)}
    assert set(table) == {("gla", "ours"), ("gla", "fla"), ("sdpa_causal", "sdpa")}
    assert table[("gla", "ours")]["T = 4,096"] == "8.19M/s"  # 4096 tokens in 0.5 ms
    assert table[("gla", "fla")]["T = 16,384"] == "16.4M/s"
    del kernels["rows"][0]["ours_fwd"]
    kernels["rows"][0]["fla_fwd"] = 3  # not an entry
    (d / "kernels.json").write_text(json.dumps(kernels), encoding="utf-8")
    with pytest.raises(ValueError, match="kernels.json is a damaged kernel bench result"):
        write_report(d, bench=d / "kernels.json")


def test_header_names_devices_and_commits(tmp_path: Path) -> None:
    """Runs from two machines and commits: each device and commit with its run count, the
    most frequent first; one value alone is written bare."""
    rows = fake_rows()
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for i, row in enumerate(rows):
            gpu = i % 3 != 0
            store.add(RunRecord(**{**row.__dict__, "device": "cuda:NVIDIA H100" if gpu else "cpu",
                                   "git_commit": "abc1234" if i < 20 else ""}))
    paths = write_report(tmp_path)
    text = paths["markdown"].read_text(encoding="utf-8")
    assert "- **Device:** cuda:NVIDIA H100 (16 runs), cpu (8 runs)" in text
    assert "- **Commit:** abc1234 (20 runs), ? (4 runs)" in text
    assert "cuda:NVIDIA H100 (16 runs)" in paths["html"].read_text(encoding="utf-8")


def test_header_single_device_is_bare(report: dict[str, Path]) -> None:
    text = report["markdown"].read_text(encoding="utf-8")
    assert "- **Device:** ?" in text and "- **Commit:** ?" in text  # not recorded by the fakes
