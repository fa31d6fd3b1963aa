"""``longctx.bench.kernels`` (``longctx bench --device cuda --compare fla,sdpa``): every op's inputs
and our kernel call, checked against the float64 definitions before GPU time is spent on them.

On CPU the kernels run in Triton's interpreter (float64, tiny sizes); the timing itself needs CUDA
and is not tested here. Skipped where Triton is absent.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from tests.ops.triton_support import HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON or ON_CUDA, reason="CPU interpreter check (needs Triton)")

B, T, H, D = 1, 37, 2, 16


def _reference(op: str, inputs: list[Tensor]) -> Tensor:
    """The op by its float64 definition (``naive.py`` of each family)."""
    from longctx.ops.deltanet import naive_delta_rule
    from longctx.ops.gated_deltanet import naive_gated_delta_rule
    from longctx.ops.gla import naive_gla
    from longctx.ops.log_linear.naive import (
        naive_log_linear_attention,
        naive_log_linear_gated_deltanet,
    )
    from longctx.ops.mamba2 import naive_ssd

    if op == "ssd":
        return naive_ssd(*inputs)[0]
    q, k, v = inputs[:3]
    scale = D ** -0.5
    if op == "deltanet":
        return naive_delta_rule(q, k, v, inputs[3], scale=scale)[0]
    if op == "gated_deltanet":
        return naive_gated_delta_rule(q, k, v, inputs[3], inputs[4], scale=scale)[0]
    if op == "log_linear":
        return naive_log_linear_attention(q, k, v, inputs[4], g=inputs[3], scale=scale)[0]
    if op == "log_linear_gdn":
        return naive_log_linear_gated_deltanet(q, k, v, *inputs[3:], scale=scale)[0]
    g = inputs[3] if op != "linear_attention" else torch.zeros_like(q[..., 0])
    g = g if g.dim() == 4 else g.unsqueeze(-1).expand_as(q)  # scalar decays as GLA's per-key gate
    return naive_gla(q, k, v, g, scale=scale)[0]


@pytest.mark.parametrize("op", ["linear_attention", "simple_gla", "retention", "ssd", "gla",
                                "deltanet", "gated_deltanet", "log_linear", "log_linear_gdn"])
def test_bench_op_matches_its_definition(op: str) -> None:
    from longctx.bench.kernels import KERNEL_OPS, _inputs, _ours

    assert op in KERNEL_OPS
    inputs = _inputs(op, B, T, H, D, torch.float64, seed=0, device="cpu")
    with torch.no_grad():
        out = _ours(op)(*inputs)
        ref = _reference(op, inputs)
    assert out.shape == ref.shape == (B, T, H, D)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


def test_unknown_op_is_named() -> None:
    from longctx.bench.kernels import _ours

    with pytest.raises(ValueError, match="unknown kernel op 'mamba3'"):
        _ours("mamba3")


def test_plots_from_a_saved_result(tmp_path) -> None:
    """The plots come from the JSON alone (rows as ``run_kernel_bench`` writes them): a library
    that refused keeps its error and no point; SDPA is its own line."""
    from longctx.bench.kernels import plot_data, write_kernel_plots

    rows = [{"op": "gla", "T": T, "ours_fwd": {"ms": 0.1 * T / 4096}, "ours_fwdbwd": {"ms": 0.5 * T / 4096},
             "fla_fwd": {"ms": 0.2 * T / 4096}, "fla_fwdbwd": {"ms": None, "error": "refused"}}
            for T in (4096, 16384)]
    rows.append({"op": "sdpa_causal", "T": 4096, "sdpa_fwd": {"ms": 0.15}, "sdpa_fwdbwd": {"ms": 0.64}})
    res = {"device": "GPU", "torch": "2.x", "triton": "3.x", "fla": "0.6.0", "B": 1, "H": 16, "D": 128,
           "dtype": "torch.bfloat16", "rows": rows}
    data = plot_data(res)
    forms = {(op, r["form"]) for op, e in data["ops"].items() for r in e["results"]}
    assert forms == {("gla", "ours"), ("gla", "fla"), ("sdpa_causal", "sdpa")}
    fla = [r for r in data["ops"]["gla"]["results"] if r["form"] == "fla"]
    assert [r["fwdbwd_ms"] for r in fla] == [None, None] and fla[1]["fwd_ms"] == 0.2 * 4
    paths = write_kernel_plots(res, tmp_path)
    assert sorted(p.name for p in paths) == ["bench_fwd.png", "bench_fwdbwd.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_isolated_rows_record_failures_and_crashes() -> None:
    """Each (op, length) runs in its own process: an exception and a hard crash (as a CUDA fault
    leaves the context) become the row's error, and the table shows it."""
    import os

    from longctx.bench.kernels import _isolated, summary_table

    assert _isolated(dict, [("ours_fwd", {"ms": 1.0})]) == {"ours_fwd": {"ms": 1.0}}
    assert _isolated(int, "x")["error"].startswith("ValueError: invalid literal")
    assert "died" in _isolated(os._exit, 3)["error"]
    rows = [{"op": "deltanet", "T": 4096, "error": "RuntimeError: illegal memory access"},
            {"op": "sdpa_causal", "T": 4096, "error": "the process running it died"}]
    table = summary_table({"rows": rows})
    assert "| deltanet | 4096 | RuntimeError: illegal memory access |" in table
    assert "| sdpa_causal | 4096 | the process running it died |" in table


def test_target_table_gives_log_linear_over_its_base_and_sdpa() -> None:
    from longctx.bench.kernels import target_table

    rows = [{"op": "log_linear", "T": 8192, "ours_fwd": {"ms": 3.0}, "ours_fwdbwd": {"ms": 9.0}},
            {"op": "simple_gla", "T": 8192, "ours_fwd": {"ms": 1.0}, "ours_fwdbwd": {"ms": 4.0}},
            {"op": "sdpa_causal", "T": 8192, "sdpa_fwd": {"ms": 1.0}, "sdpa_fwdbwd": {"ms": 6.0}},
            {"op": "log_linear_gdn", "T": 8192, "ours_fwd": {"ms": None, "error": "OOM"},
             "ours_fwdbwd": {"ms": None, "error": "OOM"}}]
    table = target_table({"rows": rows})
    assert "| log_linear | 8192 | 3.00x | 2.25x | 1.50x |" in table
    assert "| log_linear_gdn | 8192 | - | - | - |" in table  # its base was not run, its own time failed
    assert target_table({"rows": rows[1:3]}) == ""


def test_cli_compare_refuses_clearly(monkeypatch, capsys) -> None:
    """``longctx bench --compare`` without CUDA, or with a kernel it does not have: one line
    naming the problem (exit status 1), no stack trace."""
    import torch

    from longctx.cli.main import main

    for argv, message in [(["--device", "cpu"], "add --device cuda"),
                          (["--device", "cuda"], "no CUDA device")]:
        with pytest.raises(SystemExit, match=message):
            main(["bench", "--compare", "fla,sdpa", "--lengths", "4096", *argv])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit, match="no kernel mamba3; choose from linear_attention"):
        main(["bench", "--device", "cuda", "--compare", "fla", "--ops", "gla", "mamba3"])
