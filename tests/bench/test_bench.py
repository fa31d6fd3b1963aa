"""``longctx.bench.ops.run_bench``: JSON content, files, the correctness gate and argument errors.

Tiny sizes (B=1, H=2, D=16, T in {64, 128}, one repeat) so the whole file runs in seconds.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import longctx.ops.gla
import longctx.ops.retention
from longctx.bench import ops as bench_ops
from longctx.bench.ops import BenchError, run_bench
from longctx.cli.main import main
from longctx.errors import UnknownNameError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"form", "T", "chunk_size", "fwd_ms", "fwdbwd_ms", "fwd_peak_bytes",
            "fwdbwd_peak_bytes", "tokens_per_s", "fwdbwd_tokens_per_s"}


def _bench(tmp_path, ops=("softmax_attention", "gla"), **kw):
    args = {"ops": list(ops), "lengths": [64, 128], "device": "cpu", "dtype": "float32",
            "batch": 1, "heads": 2, "head_dim": 16, "out_dir": tmp_path, "repeats": 1,
            "memory": True, "naive_max_len": 8192, "progress": False}
    args.update(kw)
    out = run_bench(**args)
    return out, json.loads(out["json"].read_text())


def test_results_json_and_files(tmp_path):
    out, data = _bench(tmp_path, naive_max_len=64)
    meta = data["meta"]
    assert meta["complete"] is True
    assert (meta["B"], meta["H"], meta["D"], meta["dtype"]) == (1, 2, 16, "float32")
    assert meta["device"] == "cpu" and meta["device_name"] and meta["threads"] >= 1
    assert meta["torch"] == torch.__version__
    assert "torch.profiler" in meta["memory"]
    assert set(data["ops"]) == {"softmax_attention", "gla"}

    soft, gla = data["ops"]["softmax_attention"], data["ops"]["gla"]
    for entry in (soft, gla):
        assert entry["status"] == "ok" and entry["error"] is None
        assert 0 <= entry["check_rel_err"] <= 1e-8
        for row in entry["results"]:
            assert set(row) == ROW_KEYS
            assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
            assert row["fwd_peak_bytes"] > 0 and row["fwdbwd_peak_bytes"] > 0
            assert row["tokens_per_s"] == pytest.approx(row["T"] / (row["fwd_ms"] / 1e3))
            assert (row["chunk_size"] is not None) == (row["form"] == "chunk")
    assert soft["params"]["chunk_size"] == {"T<=4096": 128, "T>4096": 256}
    assert {r["chunk_size"] for r in soft["results"] if r["form"] == "chunk"} == {128}
    assert gla["params"]["chunk_size"] == 64

    # every (form, T) is either measured or skipped with a reason; naive only at T <= 64
    cases = {(r["form"], r["T"]) for r in soft["results"]}
    assert cases == {("chunk", 64), ("sdpa", 64), ("naive", 64), ("chunk", 128), ("sdpa", 128)}
    assert [(s["form"], s["T"]) for s in soft["skipped"]] == [("naive", 128)]
    assert "naive_max_len=64" in soft["skipped"][0]["reason"]
    assert {(r["form"], r["T"]) for r in gla["results"]} == {("chunk", 64), ("naive", 64),
                                                           ("chunk", 128)}

    assert [p.name for p in out["plots"]] == ["bench_fwd.png", "bench_fwdbwd.png",
                                               "bench_memory.png"]
    for p in out["plots"]:
        assert p.parent == tmp_path and p.read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "bench.md").read_text()
    assert "| softmax_attention | sdpa | 128 |" in md and "## Skipped" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_no_memory_pass_and_naive_gla_cap(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_ops.SPECS, "gla", dataclasses.replace(bench_ops.SPECS["gla"],
                                                                     naive_max_len=64))
    out, data = _bench(tmp_path, ops=["gla"], memory=False)
    assert data["meta"]["memory"] == "not measured"
    assert all(r["fwd_peak_bytes"] is None for r in data["ops"]["gla"]["results"])
    skipped = data["ops"]["gla"]["skipped"]
    assert [(s["form"], s["T"]) for s in skipped] == [("naive", 128)]
    assert "Python loop over time" in skipped[0]["reason"]
    assert [p.name for p in out["plots"]] == ["bench_fwd.png", "bench_fwdbwd.png"]


def test_import_failure_is_refused_others_reported(tmp_path, monkeypatch, capsys):
    real = bench_ops._load_op_module

    def load(name):
        if name == "gla":
            raise ImportError("no module named 'triton'")
        return real(name)

    monkeypatch.setattr(bench_ops, "_load_op_module", load)
    _, data = _bench(tmp_path)
    gla = data["ops"]["gla"]
    assert gla["status"] == "import_error" and "triton" in gla["error"]
    assert gla["results"] == [] and gla["check_rel_err"] is None
    assert data["ops"]["softmax_attention"]["status"] == "ok"
    assert data["ops"]["softmax_attention"]["results"]
    assert "bench: refusing to report gla: import failed" in capsys.readouterr().out
    assert "| gla |" not in (tmp_path / "bench.md").read_text()


def test_wrong_chunk_form_fails_the_check(tmp_path, monkeypatch, capsys):
    real = longctx.ops.gla.chunk_gla

    def wrong(q, k, v, g, *, chunk_size=64, **kw):
        o, s = real(q, k, v, g, chunk_size=chunk_size, **kw)
        return o * (1 + 1e-6), s

    monkeypatch.setattr(longctx.ops.gla, "chunk_gla", wrong)
    _, data = _bench(tmp_path)
    gla = data["ops"]["gla"]
    assert gla["status"] == "check_failed" and gla["results"] == []
    assert 1e-8 < gla["check_rel_err"] < 1e-4 and "relative error" in gla["error"]
    assert data["ops"]["softmax_attention"]["status"] == "ok"
    assert "bench: refusing to report gla: correctness check failed" in capsys.readouterr().out


def test_check_that_raises_is_refused(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(longctx.ops.retention, "naive_retention", boom)
    _, data = _bench(tmp_path, ops=["retention"])
    assert data["ops"]["retention"]["status"] == "check_failed"
    assert "boom" in data["ops"]["retention"]["error"]


def test_unknown_op(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'retention'"):
        _bench(tmp_path, ops=["retnetion"])


@pytest.mark.parametrize("bad", [{"lengths": [64, 0]}, {"lengths": []}, {"batch": 0},
                                 {"heads": -1}, {"head_dim": 0}, {"repeats": 0},
                                 {"naive_max_len": -1}, {"dtype": "float8"},
                                 {"device": "nonsense"}])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(BenchError):
        _bench(tmp_path, **bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable(tmp_path):
    with pytest.raises(BenchError, match=r"--device cuda but torch.cuda.is_available\(\) is False"):
        _bench(tmp_path, device="cuda")


def test_odd_head_dim(tmp_path):
    _, data = _bench(tmp_path, ops=["retention"], lengths=[33], head_dim=7, memory=False)
    assert data["ops"]["retention"]["status"] == "ok"
    assert len(data["ops"]["retention"]["results"]) == 2


def test_cli_bench(tmp_path, capsys):
    assert main(["bench", "--ops", "retention", "--lengths", "64", "--repeats", "1",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["ops"]["retention"]["status"] == "ok"
    assert {r["form"] for r in data["ops"]["retention"]["results"]} == {"chunk", "naive"}
    assert "bench.json" in capsys.readouterr().out


def test_interrupted_bench_keeps_what_it_measured(tmp_path, monkeypatch):
    real, calls = bench_ops._measure, []

    def measure(*args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bench_ops, "_measure", measure)
    with pytest.raises(KeyboardInterrupt):
        _bench(tmp_path, ops=["retention"], memory=False)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["complete"] is False
    assert [(r["form"], r["T"]) for r in data["ops"]["retention"]["results"]] == [
        ("chunk", 64), ("naive", 64)]
