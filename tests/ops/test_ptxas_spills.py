"""Register spills of the chunked kernels at their launch defaults, compiled for Hopper on the CPU
(``benchmarks/scripts/ptxas_spills.py``: ``ptxas -v`` of every launch the ops issue, K = V = 128,
bf16). A ratchet: each kernel stays within what it spills today, rounded up, so a change that adds
register pressure is seen in CI (on an H100 the scalar-decay backward at 4 warps spilled 1.7 KB per
thread and ran 12 % slower than at 8 warps without spills, 2026-12-07)."""

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
    "triton_delta._delta_dh_kernel": 512,  # gated; 8 warps would not spill, but faulted on an H100
    "triton_delta._wy_bwd_kernel": 1024,  # 8 warps: 56-188; not yet tried on a GPU
    "triton_log_linear._bwd_dqkv_kernel": 512,
}


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> list[dict]:
    if not _has_nvidia_backend():
        pytest.skip("triton with its NVIDIA backend is not installed")
    out = tmp_path_factory.mktemp("ptxas") / "spills.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/scripts/ptxas_spills.py"), str(out)],
                         cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(out.read_text())["rows"]


def test_every_op_and_kernel_is_compiled(launches: list[dict]) -> None:
    ops = {r["op"] for r in launches}
    assert ops == {"linear_attention", "simple_gla", "gla", "deltanet", "gated_deltanet", "log_linear_mamba2"}
    kernels = {r["kernel"] for r in launches}
    assert {"triton_scalar_decay._bwd_dqkv_kernel", "triton_gla._fwd_A_kernel",
            "triton_delta._wy_bwd_kernel", "triton_log_linear._bwd_dqkv_kernel"} <= kernels
    assert all(r["registers"] > 0 for r in launches)  # ptxas's report was read


def test_default_launches_stay_within_their_spill_budget(launches: list[dict]) -> None:
    over = [f"{r['op']}: {r['kernel']} (w{r['num_warps']} s{r['num_stages']}) spills {r['spill_stores']} B "
            f"> {BUDGET.get(r['kernel'], 0)} B" for r in launches
            if r["default"] and r["spill_stores"] > BUDGET.get(r["kernel"], 0)]
    assert not over, "\n".join(over)
