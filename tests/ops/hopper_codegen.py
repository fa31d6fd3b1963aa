"""Compile Triton kernels for Hopper (sm_90) on a machine without a GPU and read the operand path of
every ``warp_group_dot`` (wgmma) in the TTGIR.

Why: the ungated delta-rule state pass gave wrong states in bf16 for K > 64 on H100 and H200
(Triton 3.6; ``benchmarks/results/2026-12-06-h100-session10``) while the gated pass, same tile,
was right. Compiled here, the old ungated pass fed wgmma its A operand (K^T, [K, 64]) straight
from shared memory in the MN-major ("transposed") layout; the gated pass, and every case that was
right on a GPU (K = 64 included), either loads A into registers first or has M = 64 rows, one
warpgroup's wgmma. So the pattern flagged here is an A operand from transposed shared memory with
more than 64 rows: Triton splits it along M and (on this evidence) addresses the second half
wrong. A GPU run is still the proof; this is a guard that runs in CI.

    python -m tests.ops.hopper_codegen      # JSON: {case: [flagged wgmma lines]}

Must run without ``TRITON_INTERPRET`` (the tests call it in a subprocess).
"""

from __future__ import annotations

import json
import re
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

HOPPER = GPUTarget("cuda", 90, 32)


@triton.jit
def _probe_kernel(k, v, out, M: tl.constexpr, VIA_REGISTERS: tl.constexpr):
    """The flagged pattern at its smallest: out = K^T V with K [64, M] loaded transposed."""
    p_kt = tl.make_block_ptr(k, (M, 64), (1, M), (0, 0), (M, 64), (0, 1))  # K^T [M, 64]
    p_v = tl.make_block_ptr(v, (64, 64), (64, 1), (0, 0), (64, 64), (1, 0))
    b_kt = tl.load(p_kt)
    if VIA_REGISTERS:
        b_kt = tl.where(tl.arange(0, 64)[None, :] < 64, b_kt, 0.0).to(b_kt.dtype)
    b_o = tl.dot(b_kt, tl.load(p_v))
    p_o = tl.make_block_ptr(out, (M, 64), (64, 1), (0, 0), (M, 64), (1, 0))
    tl.store(p_o, b_o)


def ttgir(fn, pointers: dict[str, str], constexprs: dict[str, object], num_warps: int = 4,
          num_stages: int = 1) -> str:
    """The TTGIR of ``fn`` compiled for sm_90 (pointer args typed as given, e.g. ``"*bf16"``)."""
    sig = {name: pointers.get(name, "constexpr") for name in fn.arg_names}
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    if missing:
        raise ValueError(f"ttgir: {fn.__name__}: no type or constexpr value for {missing}")
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(fn.arg_names.index(n),): v for n, v in constexprs.items()})
    return triton.compile(src, target=HOPPER,
                          options={"num_warps": num_warps, "num_stages": num_stages}).asm["ttgir"]


def transposed_smem_a_operands(ir: str, max_rows: int = 64) -> list[str]:
    """The ``warp_group_dot`` lines whose A operand is a shared-memory tile in an MN-major
    (``transposed = true``) NVMMA layout with more than ``max_rows`` rows."""
    transposed = {m.group(1) for m in re.finditer(
        r"^(#shared\d*) = #ttg\.nvmma_shared<\{[^}]*transposed = true", ir, re.MULTILINE)}
    flagged = []
    for line in ir.splitlines():
        if "ttng.warp_group_dot " not in line:
            continue
        a = re.search(r" : !ttg\.memdesc<(\d+)x\d+x\w+, (#shared\d*)", line)
        if a and int(a.group(1)) > max_rows and a.group(2) in transposed:
            flagged.append(line.strip()[:240])
    return flagged


def _delta_cases() -> dict[str, tuple]:
    """(kernel, pointer types, constexprs) of the delta-rule state passes as the wrapper launches
    them in bf16 (``triton_delta``: S and dS in pieces of at most 64 key dims; BV = 64 values,
    chunks of 64; states in and out)."""
    from longctx.ops.common import triton_delta as td

    cases = {}
    for K in (64, 128, 256):
        for gated in (False, True):
            common = {"H": 2, "K": K, "V": 64, "BT": 64, "BV": 64, "HAS_G": gated,
                      "ACC": tl.float32, "PREC": "ieee"}
            tag = f"K{K}_{'gated' if gated else 'ungated'}"
            cases[f"delta_h_{tag}"] = (td._delta_h_kernel, {
                "k": "*bf16", "w": "*bf16", "u": "*bf16", "gc": "*fp32", "h": "*fp32", "vn": "*bf16",
                "h0": "*fp32", "ht": "*fp32", "cu_seqlens": "*i32", "chunk_offsets": "*i32"},
                {**common, "BK": min(K, 64), "USE_H0": True, "STORE_HT": True, "GATE_D": False})
            if gated:  # the gate on Delta's rows (triton_scalar_decay.GATE_ON_DELTA): K^T untouched
                cases[f"delta_h_{tag}_on_delta"] = (cases[f"delta_h_{tag}"][0], cases[f"delta_h_{tag}"][1],
                                                   {**cases[f"delta_h_{tag}"][2], "GATE_D": True})
            cases[f"delta_dh_{tag}"] = (td._delta_dh_kernel, {
                "q": "*bf16", "k": "*bf16", "w": "*bf16", "gc": "*fp32", "do": "*bf16", "dh": "*fp32",
                "dvn": "*bf16", "dht": "*fp32", "dh0": "*fp32", "cu_seqlens": "*i32",
                "chunk_offsets": "*i32", "scale": "fp32"},
                {**common, "BK": min(K, 64), "USE_DHT": True, "STORE_DH0": True, "PRECA": "tf32",
                 "F32_DOTS": 0, "INTRA_IN": False})
    return cases


def _state_pass_cases() -> dict[str, tuple]:
    """The scalar-decay and GLA state passes in bf16 at K = V = 128, with tiles BK = BV = 32 (the
    forward passes' defaults) and 64 (the backward passes'; ``launch_overrides`` allows no more)
    and, scalar decay only, BK = 128 (what a larger tile would compile to)."""
    from longctx.ops.common import triton_gla as gla
    from longctx.ops.common import triton_scalar_decay as sd

    # the per-chunk states are kept in the input dtype (triton_scalar_decay._state_dtype)
    fwd = {"k": "*bf16", "v": "*bf16", "gc": "*fp32", "h": "*bf16", "h0": "*fp32", "ht": "*fp32",
           "cu_seqlens": "*i32", "chunk_offsets": "*i32"}
    bwd = {"q": "*bf16", "do": "*bf16", "gc": "*fp32", "dh": "*bf16", "dht": "*fp32", "dh0": "*fp32",
           "cu_seqlens": "*i32", "chunk_offsets": "*i32", "scale": "fp32"}
    cases = {}
    for BK in (32, 64, 128):
        for gated in (False, True):
            c = {"H": 2, "K": 128, "V": 128, "BT": 64, "BK": BK, "BV": min(BK, 64), "HAS_G": gated,
                 "ACC": tl.float32, "PREC": "ieee"}
            tag = f"BK{BK}_{'gated' if gated else 'ungated'}"
            cases[f"scalar_fwd_h_{tag}"] = (sd._fwd_h_kernel, fwd, {**c, "USE_H0": False, "STORE_HT": True})
            cases[f"scalar_bwd_dh_{tag}"] = (sd._bwd_dh_kernel, bwd, {**c, "USE_DHT": False, "STORE_DH0": True})
    for BK in (32, 64):
        c = {"H": 2, "K": 128, "V": 128, "BT": 64, "BK": BK, "BV": BK, "ACC": tl.float32, "PREC": "ieee"}
        cases[f"gla_fwd_h_BK{BK}"] = (gla._fwd_h_kernel, fwd, {**c, "USE_H0": False, "STORE_HT": True, "RAW_G": False})
        cases[f"gla_bwd_dh_BK{BK}"] = (gla._bwd_dh_kernel, bwd, {**c, "USE_DHT": False, "STORE_DH0": True})
        # the forward passes at BV = 128 (triton_launch.WIDE_BV: V's columns are the product's N)
        cases[f"gla_fwd_h_BK{BK}_BV128"] = (gla._fwd_h_kernel, fwd, {**c, "BV": 128, "USE_H0": False, "STORE_HT": True, "RAW_G": False})
        for gated in (False, True):
            cases[f"scalar_fwd_h_BK{BK}_BV128_{'gated' if gated else 'ungated'}"] = (
                sd._fwd_h_kernel, fwd, {**c, "BV": 128, "HAS_G": gated, "USE_H0": False, "STORE_HT": True})
    return cases


def audit() -> dict[str, list[str]]:
    """{case: flagged lines} for the probe (M = 64 / 128, from shared memory or registers), the
    delta-rule state passes and the scalar-decay / GLA state passes."""
    out = {}
    probe = {"k": "*bf16", "v": "*bf16", "out": "*fp32"}
    for M in (64, 128):
        for via in (False, True):
            ir = ttgir(_probe_kernel, probe, {"M": M, "VIA_REGISTERS": via})
            out[f"probe_M{M}_{'registers' if via else 'smem'}"] = transposed_smem_a_operands(ir)
    for name, (fn, pointers, constexprs) in {**_delta_cases(), **_state_pass_cases()}.items():
        out[name] = transposed_smem_a_operands(ttgir(fn, pointers, constexprs))
    return out


if __name__ == "__main__":
    json.dump(audit(), sys.stdout, indent=1)
