"""Register spills, shared memory and the Hopper transposed-A pattern of every chunked-kernel launch,
compiled for Hopper on the CPU (``benchmarks/scripts/ptxas_spills.py``: every launch the ops' forward +
backward issue, K = V = 128; bf16 assembled by ``ptxas -v``, fp32 compiled to LLVM IR for its
shared memory). Spills are a ratchet: each kernel stays within what it spills today, rounded up, so
a change that adds register pressure is seen in CI (on an H100 the scalar-decay backward at 4 warps
spilled 1.7 KB per thread and ran 12 % slower than at 8 warps without spills, 2026-12-07). Shared
memory and the transposed-A pattern are hard limits: either fails on the GPU itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.test_hopper_codegen import _has_nvidia_backend

ROOT = Path(__file__).resolve().parents[2]
# bytes of spill stores per thread allowed at a kernel's default launch; kernels not named: none.
# Measured 2026-12-07 (Triton 3.6): 8 / 0-72 / 284 / 596-736 / 332.
BUDGET = {
    "triton_scalar_decay._bwd_dqkv_kernel": 64,  # gated: 48 B since it computes dg directly
    "triton_gla._bwd_dqk_kernel": 64,
    "triton_gla._bwd_dg_kernel": 128,  # 96 B since its straddle sum went from 64 steps to sub-chunks
    "triton_delta._delta_dqk_kernel": 128,  # gated 72 B since its dg store went (ptxas's allocation)
    # gated 20 B with dS in 64-row pieces (was 236 as one [K, BV] tile); 156 B since three of its
    # products take fp32 operands at K > 64 in half precision (HALF_DH_F32_DOTS, the Hopper mend)
    "triton_delta._delta_dh_kernel": 192,
    "triton_delta._wy_bwd_kernel": 1024,  # 8 warps: 56-188; not yet tried on a GPU
    "triton_log_linear._bwd_dqkv_kernel": 512,
    "triton_scalar_decay._fwd_grouped_kernel": 128,  # 72 B at its widest tile (BV 128, 8 warps); 0 at BV 64
    "triton_scalar_decay._fwd_lookback_kernel": 128,  # 124 B at BV 128, 8 warps; 0 at BV 64 (8 warps)
}


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> list[dict]:
    """Every launch of the ops' forward + backward: bf16 assembled by ptxas, fp32 compiled to LLVM IR
    for its shared memory only; the two dtypes in two processes at once (CI has two cores)."""
    if not _has_nvidia_backend():
        pytest.skip("triton with its NVIDIA backend is not installed")
    tmp = tmp_path_factory.mktemp("ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    procs = {dt: subprocess.Popen([sys.executable, str(ROOT / "benchmarks/scripts/ptxas_spills.py"),
                                   str(tmp / f"{dt}.json"), "--dtypes", dt], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for dt in ("bf16", "fp32")}
    rows = []
    for dt, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{dt}: {err[-3000:]}"
        rows += json.loads((tmp / f"{dt}.json").read_text())["rows"]
    return rows


def test_every_op_and_kernel_is_compiled(launches: list[dict]) -> None:
    ops = {r["op"] for r in launches}
    assert ops == {"linear_attention", "simple_gla", "gla", "deltanet", "gated_deltanet", "log_linear_mamba2",
                   "linear_attention/inference", "simple_gla/inference", "gla/inference", "gated_deltanet/inference",
                   "log_linear_mamba2/inference", "log_linear_gdn/inference", "log_linear_mamba2/grouped_levels",
                   "log_linear_mamba2/n_m_states", "gla/sub_chunk_scores", "gated_deltanet/layer_step",
                   "mamba2/layer_step", "gla/layer_step", "gated_deltanet/ut_variants", "gla/cumsum_in_kernels",
                   "gla/inference_cumsum_in_kernels", "log_linear_gdn/training",
                   "gla/sub_chunk_dqk", "gated_deltanet/dh_intra_outside", "simple_gla/inference_wide",
                   "simple_gla/inference_lookback", "simple_gla/inference_lookback_wide"}
    kernels = {r["kernel"] for r in launches}
    assert {"triton_scalar_decay._bwd_dqkv_kernel", "triton_scalar_decay._fwd_grouped_kernel",
            "triton_scalar_decay._fwd_h_group_kernel", "triton_scalar_decay._fwd_h_scan_kernel", "triton_gla._fwd_A_kernel",
            "triton_gla._fwd_A_levels_kernel",
            "triton_delta._wy_bwd_kernel", "triton_log_linear._bwd_dqkv_kernel",
            "triton_layer_step._delta_layer_step_kernel", "triton_layer_step._ssd_layer_step_kernel",
            "triton_layer_step._gla_layer_step_kernel", "triton_gla._fwd_grouped_kernel",
            "triton_gla._fwd_h_group_kernel", "triton_log_linear_delta._delta_levels_kernel",
            "triton_log_linear_delta._delta_intra_kernel", "triton_log_linear._fwd_z_group_kernel",
            "triton_log_linear._fwd_z_top_kernel", "triton_log_linear._bwd_dz_compact_kernel",
            "triton_log_linear._bwd_dh_gather_kernel", "triton_scalar_decay._fwd_lookback_kernel"} <= kernels
    for dtype in ("bf16", "fp32"):  # both dtypes recorded every op
        assert {r["op"] for r in launches if r["dtype"] == dtype} == ops
    assert all(r["registers"] > 0 for r in launches if r["dtype"] == "bf16")  # ptxas's report was read
    # shared memory was read (the grouped state scan and log-linear's dH gather have no dot and no
    # reduction: they use none)
    assert all(r["shared"] > 0 for r in launches if r["kernel"] not in (
        "triton_scalar_decay._fwd_h_scan_kernel", "triton_log_linear._bwd_dh_gather_kernel"))


def test_default_launches_stay_within_their_spill_budget(launches: list[dict]) -> None:
    over = [f"{r['op']}: {r['kernel']} (w{r['num_warps']} s{r['num_stages']}) spills {r['spill_stores']} B "
            f"> {BUDGET.get(r['kernel'], 0)} B" for r in launches
            if r["dtype"] == "bf16" and r["default"] and r["spill_stores"] > BUDGET.get(r["kernel"], 0)]
    assert not over, "\n".join(over)


def test_default_launches_fit_in_shared_memory(launches: list[dict]) -> None:
    """Every default launch, bf16 and fp32, within the 227 KiB of shared memory a block may have on
    an H100 / H200. 3 stages chosen from a bf16 sweep once made the fp32 scalar-decay backward ask
    for 241 KiB, and every fp32 retention / Mamba-2 zoology run failed on the GPU (2026-12-07)."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
    from ptxas_spills import SMEM_LIMIT as limit
    assert {r["dtype"] for r in launches} == {"bf16", "fp32"}
    over = [f"{r['dtype']} {r['op']}: {r['kernel']} (w{r['num_warps']} s{r['num_stages']}) needs "
            f"{r['shared']} B" for r in launches if r["default"] and r["shared"] > limit]
    assert not over, "\n".join(over)


def test_no_launch_feeds_wgmma_a_transposed_a_operand_over_64_rows(launches: list[dict]) -> None:
    """``hopper_codegen``'s pattern (miscompiled on Hopper, Triton 3.6) in no launch of any op:
    this covers every kernel the ops launch, not only the state passes listed there."""
    bad = [f"{r['op']}: {r['kernel']}" for r in launches if r["dtype"] == "bf16" and r["transposed_a"]]
    assert not bad, bad
