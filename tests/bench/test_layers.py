"""``longctx.bench.layers.run_layer_bench`` (``longctx bench --layers``): JSON content, files,
length caps, the correctness gate, argument errors and the growth exponents of the Markdown.

Tiny sizes (B=1, d_model=16, T in {40, 72}, one repeat); timings are never asserted.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from longctx.bench import layers as bench_layers
from longctx.bench.layers import LayerForm, run_layer_bench
from longctx.bench.ops import BenchError
from longctx.bench.plots import growth_exponents
from longctx.cli.main import main
from longctx.errors import UnknownNameError
from longctx.layers.rmt import RMT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"form", "T", "chunk_size", "fwd_ms", "fwdbwd_ms", "fwd_peak_bytes",
            "fwdbwd_peak_bytes", "tokens_per_s", "fwdbwd_tokens_per_s"}


def _bench(tmp_path, layers=("rmt", "mega"), **kw):
    args = {"layers": list(layers), "lengths": [72, 40], "device": "cpu", "dtype": "float32",
            "batch": 1, "heads": 2, "head_dim": 8, "out_dir": tmp_path, "repeats": 1,
            "memory": True, "progress": False}
    args.update(kw)
    out = run_layer_bench(**args)
    return out, json.loads(out["json"].read_text())


def test_results_json_and_files(tmp_path):
    out, data = _bench(tmp_path)
    meta = data["meta"]
    assert meta["complete"] is True and meta["kind"] == "layers"
    assert (meta["B"], meta["H"], meta["D"], meta["d_model"]) == (1, 2, 8, 16)
    assert meta["lengths"] == [40, 72] and meta["torch"] == torch.__version__
    assert "x and every parameter" in meta["timing"] and "torch.profiler" in meta["memory"]
    assert list(data["ops"]) == ["rmt", "mega"]

    rmt, mega = data["ops"]["rmt"], data["ops"]["mega"]
    for entry in (rmt, mega):
        assert entry["status"] == "ok" and entry["error"] is None and entry["skipped"] == []
        assert 0 <= entry["check_rel_err"] <= 1e-8
        for row in entry["results"]:
            assert set(row) == ROW_KEYS
            assert row["fwd_ms"] > 0 and row["fwdbwd_ms"] > 0
            assert row["fwd_peak_bytes"] > 0 and row["fwdbwd_peak_bytes"] > 0
            assert row["tokens_per_s"] == pytest.approx(row["T"] / (row["fwd_ms"] / 1e3))
    assert set(rmt["check_detail"]) == {"layer/split"}
    assert set(mega["check_detail"]) == {"chunk/split", "full/split"}
    assert mega["params"] == {"chunk": {"n_heads": 2, "chunk_size": 128},
                              "full": {"n_heads": 2, "chunk_size": 0, "max_len": 16384}}
    assert {(r["form"], r["T"], r["chunk_size"]) for r in rmt["results"]} == {
        ("layer", 40, 64), ("layer", 72, 64)}
    assert {(r["form"], r["T"], r["chunk_size"]) for r in mega["results"]} == {
        ("chunk", 40, 128), ("chunk", 72, 128), ("full", 40, None), ("full", 72, None)}

    assert [p.name for p in out["plots"]] == ["bench_fwd.png", "bench_fwdbwd.png",
                                               "bench_memory.png"]
    for p in out["plots"]:
        assert p.parent == tmp_path and p.read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "bench.md").read_text()
    assert "d_model=16" in md and "| mega | full | 72 |" in md
    assert "## Growth exponents" in md and "| rmt | layer | 40 -> 72 |" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_length_cap_and_no_memory(tmp_path, monkeypatch):
    monkeypatch.setitem(bench_layers.LAYER_FORMS, "rmt", {
        "short": LayerForm({"segment_len": 16}, max_len=40, cap_reason="too long for a test")})
    out, data = _bench(tmp_path, layers=["rmt"], memory=False)
    rmt = data["ops"]["rmt"]
    assert [(r["form"], r["T"], r["chunk_size"]) for r in rmt["results"]] == [("short", 40, 16)]
    assert rmt["results"][0]["fwd_peak_bytes"] is None
    assert [(s["form"], s["T"]) for s in rmt["skipped"]] == [("short", 72)]
    assert "too long for a test; capped at T <= 40" in rmt["skipped"][0]["reason"]
    assert rmt["params"] == {"short": {"n_heads": 2, "segment_len": 16, "max_len": 40}}
    assert [p.name for p in out["plots"]] == ["bench_fwd.png", "bench_fwdbwd.png"]


def test_stateful_mismatch_fails_the_check(tmp_path, monkeypatch, capsys):
    real = RMT.forward

    def wrong(self, x, state=None):
        y, s = real(self, x, state)
        return (y if state is None else y * (1 + 1e-6)), s

    monkeypatch.setattr(RMT, "forward", wrong)
    _, data = _bench(tmp_path, layers=["rmt", "s4d"])
    rmt = data["ops"]["rmt"]
    assert rmt["status"] == "check_failed" and rmt["results"] == []
    assert 1e-8 < rmt["check_rel_err"] < 1e-4 and "two pieces with state" in rmt["error"]
    assert data["ops"]["s4d"]["status"] == "ok" and data["ops"]["s4d"]["results"]
    assert "bench: refusing to report rmt: correctness check failed" in capsys.readouterr().out
    assert "| rmt |" not in (tmp_path / "bench.md").read_text()


def test_bidirectional_only_layer_has_no_state_check(tmp_path):
    _, data = _bench(tmp_path, layers=["linformer"], lengths=[40], memory=False)
    entry = data["ops"]["linformer"]
    assert entry["status"] == "ok" and entry["check_detail"] == {}
    assert entry["check_rel_err"] is None and len(entry["results"]) == 1
    assert "| linformer | layer | 40 |" in (tmp_path / "bench.md").read_text()


def test_unknown_layer(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'mega'"):
        _bench(tmp_path, layers=["mgea"])


@pytest.mark.parametrize("bad", [{"lengths": [40, 0]}, {"lengths": []}, {"batch": 0},
                                 {"heads": -1}, {"repeats": 0}, {"dtype": "float8"}])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(BenchError):
        _bench(tmp_path, **bad)


def test_growth_exponents():
    rows = [{"form": "f", "T": T, "fwd_ms": (T / 100) ** 2} for T in (100, 400, 1600)]
    data = {"ops": {"quad": {"status": "ok", "results": rows}}}
    exps = growth_exponents(data, "fwd_ms")
    assert [(t1, t2) for t1, t2, _ in exps[("quad", "f")]] == [(100, 400), (400, 1600)]
    assert all(math.isclose(e, 2.0) for _, _, e in exps[("quad", "f")])


def test_cli_bench_layers(tmp_path, capsys):
    assert main(["bench", "--layers", "rmt", "--lengths", "40", "--heads", "2", "--head-dim", "8",
                 "--repeats", "1", "--no-memory", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["meta"]["kind"] == "layers" and data["ops"]["rmt"]["status"] == "ok"
    assert "bench.json" in capsys.readouterr().out
    assert main(["bench", "--layers", "rmt", "--ops", "gla", "--out", str(tmp_path)]) == 2
    assert "does not combine with --ops" in capsys.readouterr().err
