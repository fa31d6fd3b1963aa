"""The Hopper codegen guard (``hopper_codegen.py``): compiled for sm_90 on the CPU, no delta-rule
state pass feeds wgmma a transposed shared-memory A operand of more than 64 rows, the pattern that
was wrong in bf16 on H100 / H200; the detector itself flags that pattern in a probe kernel."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_nvidia_backend() -> bool:
    return importlib.util.find_spec("triton") is not None and \
        importlib.util.find_spec("triton.backends.nvidia") is not None


@pytest.fixture(scope="module")
def audit() -> dict[str, list[str]]:
    if not _has_nvidia_backend():
        pytest.skip("triton with its NVIDIA backend is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile, not interpret
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    run = subprocess.run([sys.executable, "-m", "tests.ops.hopper_codegen"], cwd=ROOT, env=env,
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def test_detector_flags_the_pattern_and_only_it(audit: dict[str, list[str]]) -> None:
    assert len(audit["probe_M128_smem"]) == 1 and "warp_group_dot" in audit["probe_M128_smem"][0]
    assert audit["probe_M64_smem"] == []  # one warpgroup's 64 rows: right on the GPU (K = 64)
    assert audit["probe_M128_registers"] == []  # through registers, as the gated pass


# delta_h_..._on_delta: the gated forward pass with the gate on Delta's rows (``GATE_ON_DELTA``),
# its K^T pieces fed to the product as the ungated pass feeds them
@pytest.mark.parametrize("case", [f"{k}_K{K}_{g}" for k in ("delta_h", "delta_dh") for K in (64, 128, 256)
                                  for g in ("ungated", "gated")] +
                         [f"delta_h_K{K}_gated_on_delta" for K in (64, 128, 256)])
def test_delta_state_passes_avoid_the_pattern(audit: dict[str, list[str]], case: str) -> None:
    assert audit[case] == []


@pytest.mark.parametrize("case", [f"scalar_{k}_BK{bk}_{g}" for k in ("fwd_h", "bwd_dh") for bk in (32, 64)
                                  for g in ("ungated", "gated")] +
                         [f"gla_{k}_BK{bk}" for k in ("fwd_h", "bwd_dh") for bk in (32, 64)] +
                         [f"gla_fwd_h_BK{bk}_BV128" for bk in (32, 64)] +
                         [f"scalar_fwd_h_BK{bk}_BV128_{g}" for bk in (32, 64) for g in ("ungated", "gated")])
def test_blocked_state_passes_avoid_the_pattern(audit: dict[str, list[str]], case: str) -> None:
    assert audit[case] == []


def test_why_state_pass_tiles_stop_at_64(audit: dict[str, list[str]]) -> None:
    """The scalar-decay forward state pass feeds K^T to tl.dot untouched (its decay scales V): at
    BK = 128 it would have the pattern, hence ``launch_overrides``' cap of 64."""
    assert len(audit["scalar_fwd_h_BK128_ungated"]) == 1
    assert len(audit["scalar_fwd_h_BK128_gated"]) == 1
