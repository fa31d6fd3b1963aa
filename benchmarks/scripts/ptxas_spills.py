"""Registers, spills and shared memory of every Triton kernel launch of the chunked ops, compiled
for Hopper (sm_90a) on a machine without a GPU: the ops run on CPU tensors with
``JITFunction.run`` replaced by a recorder (nothing executes; the host code issues its launches
with the real types, constexprs and launch settings), then each recorded launch is compiled with
``triton.compile`` and its PTX assembled by Triton's bundled ``ptxas -v``.

Why: spills are what ptxas reports, not a timing, so this measures register pressure without a
GPU. (On an H100 the scalar-decay backward's dq/dk/dv kernel was the setting-sensitive one, 1.06 to
4.51 ms over launch settings at T = 4k; here it spills 2-3.6 KB per thread at 4 warps.)

    python benchmarks/scripts/ptxas_spills.py OUT.json [--K 128] [--V 128] [--T 256] [--H 16]
        [--settings 4x1,4x3,8x1,8x3 [--kernels _wy_bwd_kernel,...]] [--dtypes bf16,fp32]

Must run without TRITON_INTERPRET. Writes OUT.json (one row per distinct launch at its own launch
settings, "default": true, and with ``--settings`` one row per other num_warps x num_stages of the
kernels named, or of all) and prints a table.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable

import torch
import triton
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tests.ops.hopper_codegen import HOPPER, transposed_smem_a_operands

SMEM_LIMIT = 232448  # bytes of shared memory one block may use on an H100 / H200 (227 KiB)
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.float64: "fp64",
          torch.int32: "i32", torch.int64: "i64"}


def record_launches(run: Callable[[], object]) -> list[tuple]:
    """(kernel, signature, constexprs, num_warps, num_stages) of every launch ``run`` issues."""
    launches = []

    def recorder(self, *args, grid, warmup, **kwargs):
        opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        defaults = {p.name: p.default for p in self.params if p.default is not inspect.Parameter.empty}
        bound = defaults | dict(zip(self.arg_names, args, strict=False)) | kwargs
        sig, const = {}, {}
        for i, name in enumerate(self.arg_names):
            value = bound[name]
            if i in self.constexprs:
                const[name] = value
            elif isinstance(value, torch.Tensor):
                sig[name] = "*" + _TYPES[value.dtype]
            elif isinstance(value, bool):
                sig[name] = "i1"
            elif isinstance(value, int):
                sig[name] = "i32"
            else:
                sig[name] = "fp32"
        launches.append((self, sig, const, opts.get("num_warps", 4), opts.get("num_stages", 3)))

    saved = JITFunction.run
    JITFunction.run = recorder
    try:
        run()
    finally:
        JITFunction.run = saved
    return launches


def _source(fn: JITFunction, sig: dict, const: dict) -> ASTSource:
    signature = {name: sig.get(name, "constexpr") for name in fn.arg_names}
    pointers = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
                if sig.get(n, "").startswith("*")}  # as a launch with aligned tensors specialises
    return ASTSource(fn=fn, signature=signature, constexprs=const, attrs=pointers)


def ptxas_usage(fn: JITFunction, sig: dict, const: dict, num_warps: int, num_stages: int) -> dict:
    """Registers, spill stores / loads (bytes per thread) and shared memory of one compiled launch."""
    compiled = triton.compile(_source(fn, sig, const), target=HOPPER,
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(compiled.asm["ptx"])
    try:
        out = subprocess.run([PTXAS, "-arch=sm_90a", "-v", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    num = lambda pattern: int(m.group(1)) if (m := re.search(pattern, out)) else 0
    return {"registers": num(r"Used (\d+) registers"), "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"), "shared": compiled.metadata.shared,
            # wgmma A operands from transposed shared memory over 64 rows (tests/ops/hopper_codegen.py)
            "transposed_a": len(transposed_smem_a_operands(compiled.asm["ttgir"]))}


class _StopAtPtx(Exception):
    """Raised by the PTX stage of a compile: its metadata (shared memory) is complete by then."""


def shared_memory(fn: JITFunction, sig: dict, const: dict, num_warps: int, num_stages: int) -> dict:
    """Shared memory of one launch, compiled only as far as LLVM IR (where Triton allocates it),
    for the dtypes not assembled: float32's IEEE dots become long FMA loops, and their ptxas took 4
    of a 6-minute run."""
    from triton.backends.nvidia.compiler import CUDABackend

    saved = CUDABackend.add_stages

    def add_stages(self, stages, options, language):
        saved(self, stages, options, language)

        def stop(module, metadata):
            raise _StopAtPtx(metadata["shared"])
        stages["ptx"] = stop

    CUDABackend.add_stages = add_stages
    try:
        compiled = triton.compile(_source(fn, sig, const), target=HOPPER,
                                  options={"num_warps": num_warps, "num_stages": num_stages})
        return {"shared": compiled.metadata.shared}  # a whole compile found in Triton's cache
    except _StopAtPtx as stop:
        return {"shared": stop.args[0]}
    finally:
        CUDABackend.add_stages = saved


def _ops(B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype = torch.bfloat16
         ) -> dict[str, Callable[[], object]]:
    """Forward + backward of each chunked op, and the fused layer decode steps, on CPU tensors of
    ``dtype`` (the kernels are only recorded)."""
    from longctx.ops.common import triton_delta, triton_gla, triton_scalar_decay
    from longctx.ops.common.triton_delta import delta_rule_chunk
    from longctx.ops.common.triton_gla import gla_chunk
    from longctx.ops.common.triton_launch import launch_overrides
    from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
    from longctx.ops.common.triton_log_linear_delta import delta_log_linear_forward
    from longctx.ops.common.triton_log_linear_delta_train import delta_levels
    from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk

    def rand(*shape, dtype=dtype):
        return torch.randn(*shape, dtype=dtype).requires_grad_()

    def fwd_bwd(fn, *args, **kw):
        def run():
            out = fn(*args, **kw)
            out = out[0] if isinstance(out, tuple) else out
            torch.autograd.grad(out.float().sum(), [a for a in args if isinstance(a, torch.Tensor)],
                                allow_unused=True)
        return run

    def inference(fn, *args, kernel="scalar_decay.fwd_grouped"):  # no gradient wanted: the grouped forward
        def run():  # (kernel None: the op's own inference forward, e.g. the delta rule's staged pass)
            with torch.no_grad(), launch_overrides({kernel: {"GS": 16}} if kernel else {}):
                fn(*args)
        return run

    def layer_steps() -> dict[str, Callable[[], object]]:
        """The fused whole-layer decode steps at a model's sizes: Gated DeltaNet with V = 2 K (its
        expand_v), Mamba-2 with P = 64, N = 128 (the paper's), GLA with K = K / 2 (its expand_k);
        input dtype ``dtype``, states in float32."""
        from longctx.ops.common.triton_layer_step import (
            delta_layer_step,
            gla_layer_step,
            ssd_layer_step,
        )

        f32 = lambda *shape: torch.zeros(*shape)
        V2, KC, P, N, R = 2 * V, 4, 64, 128, 16
        C = 2 * H * K + H * V2
        C2 = H * P + 2 * N
        return {
            "gated_deltanet/layer_step": lambda: delta_layer_step(
                torch.zeros(B, C + 2 * H + H * V2, dtype=dtype), f32(C, KC), torch.zeros(B, KC - 1, C, dtype=dtype),
                f32(B, H, K, V2), f32(V2), H=H, K=K, V=V2, scale=1.0, l2_eps=1e-6, norm_eps=1e-5, neg_eig=False,
                buf_out=torch.zeros(B, KC - 1, C, dtype=dtype), S_out=f32(B, H, K, V2), A_log=f32(H), dt_bias=f32(H)),
            "mamba2/layer_step": lambda: ssd_layer_step(
                torch.zeros(B, 2 * H * P + 2 * N + H, dtype=dtype), f32(C2, KC), f32(C2),
                torch.zeros(B, KC - 1, C2, dtype=dtype), f32(B, H, P, N), f32(H), f32(H), f32(H), f32(H * P),
                H=H, G=1, P=P, N=N, S_out=f32(B, H, P, N)),
            "gla/layer_step": lambda: gla_layer_step(
                torch.zeros(B, 2 * H * (K // 2) + 2 * H * V + R, dtype=dtype), f32(H * (K // 2), R), f32(H * (K // 2)),
                f32(B, H, K // 2, V), f32(V), H=H, K=K // 2, V=V, scale=1.0, tau=16.0, norm_eps=1e-5,
                S_out=f32(B, H, K // 2, V)),
        }

    def _with(module, flag: str, fn, value: bool = True):
        """fn run with ``module.flag = value`` (a kernel path behind a flag)."""
        def run(*args):
            saved = getattr(module, flag)
            setattr(module, flag, value)
            try:
                return fn(*args)
            finally:
                setattr(module, flag, saved)
        return run

    def _overriding(fn, settings: dict):
        """fn run under ``launch_overrides(settings)``."""
        def run(*args):
            with launch_overrides(settings):
                return fn(*args)
        return run

    def _with_grouped_levels(fn, value: bool = True):
        from longctx.ops.common import triton_log_linear
        return _with(triton_log_linear, "GROUPED_LEVELS", fn, value)

    def _long(*xs: torch.Tensor, n: int = 2048) -> list[torch.Tensor]:
        """xs at n tokens (repeated along T); lam with the levels n needs."""
        out = [x.detach().repeat(1, -(-n // T), *(1,) * (x.dim() - 2))[:, :n] for x in xs[:-1]]
        return [*out, rand(B, n, H, (n - 1).bit_length() + 1, dtype=torch.float32)]

    q, k, v = rand(B, T, H, K), rand(B, T, H, K), rand(B, T, H, V)
    g = rand(B, T, H, dtype=torch.float32)
    gk = rand(B, T, H, K, dtype=torch.float32)
    beta = rand(B, T, H, dtype=torch.float32)
    lam = rand(B, T, H, max(T - 1, 1).bit_length() + 1, dtype=torch.float32)
    return {
        "linear_attention": fwd_bwd(scalar_decay_chunk, q, k, v),
        "simple_gla": fwd_bwd(scalar_decay_chunk, q, k, v, g),
        "linear_attention/inference": inference(scalar_decay_chunk, q, k, v),
        "simple_gla/inference": inference(scalar_decay_chunk, q, k, v, g),
        # the grouped output pass at BV 128 (WIDE_BV), 8 warps: Q and K read once per group; the
        # groups' state pass at 64 x 128 tiles
        "simple_gla/inference_wide": inference(_overriding(scalar_decay_chunk, {
            "scalar_decay.fwd_grouped": {"BV": 128, "num_warps": 8}, "scalar_decay.fwd_h_group": {"BK": 64, "BV": 128}}),
            q, k, v, g),
        # the inference forward in one launch by look-back (LOOKBACK_FORWARD), at BV 64 and 128
        "simple_gla/inference_lookback": inference(_with(triton_scalar_decay, "LOOKBACK_FORWARD", scalar_decay_chunk),
                                                   q, k, v, g, kernel="scalar_decay.fwd_lookback"),
        "simple_gla/inference_lookback_wide": inference(_with(triton_scalar_decay, "LOOKBACK_FORWARD", _overriding(
            scalar_decay_chunk, {"scalar_decay.fwd_lookback": {"BV": 128, "num_warps": 8}})),
            q, k, v, g, kernel="scalar_decay.fwd_lookback"),
        "gla": fwd_bwd(gla_chunk, q, k, v, gk),
        "gla/inference": inference(gla_chunk, q, k, v, gk, kernel="gla.fwd_grouped"),
        # the intra-chunk scores by sub-chunks (triton_gla.SCORES_BY_LEVELS off; on by default)
        "gla/sub_chunk_scores": fwd_bwd(_with(triton_gla, "SCORES_BY_LEVELS", gla_chunk, False), q, k, v, gk),
        # the backward's dq / dk by sub-chunks and its dg kernel (DQK_BY_LEVELS off; on by default)
        # (a flag the backward reads: held over the whole forward + backward)
        "gla/sub_chunk_dqk": _with(triton_gla, "DQK_BY_LEVELS", fwd_bwd(gla_chunk, q, k, v, gk), False),
        # G formed in the kernels from the raw gates (CUMSUM_IN_KERNELS), training and inference
        "gla/cumsum_in_kernels": fwd_bwd(_with(triton_gla, "CUMSUM_IN_KERNELS", gla_chunk), q, k, v, gk),
        "gla/inference_cumsum_in_kernels": inference(_with(triton_gla, "CUMSUM_IN_KERNELS", gla_chunk), q, k, v, gk,
                                                     kernel=None),
        "deltanet": fwd_bwd(delta_rule_chunk, q, k, v, beta),
        "gated_deltanet": fwd_bwd(delta_rule_chunk, q, k, v, beta, g),
        "gated_deltanet/inference": inference(delta_rule_chunk, q, k, v, beta, g, kernel=None),
        # dDelta's intra-chunk part before the reverse state pass (DH_INTRA_OUTSIDE; read by the backward)
        "gated_deltanet/dh_intra_outside": _with(triton_delta, "DH_INTRA_OUTSIDE",
                                                 fwd_bwd(delta_rule_chunk, q, k, v, beta, g)),
        # the UT transform's variants: the inverse's diagonal blocks by element-wise forward
        # substitution (VECTOR_DIAG_INVERSE) and W, U by half-precision dots (HALF_WU)
        "gated_deltanet/ut_variants": fwd_bwd(_with(triton_delta, "VECTOR_DIAG_INVERSE",
                                                    _with(triton_delta, "HALF_WU", delta_rule_chunk)), q, k, v, beta, g),
        "log_linear_mamba2": fwd_bwd(log_linear_scalar_decay_chunk, q, k, v, g, lam),
        # with GROUPED_LEVELS, at 2048 tokens: 32 chunks of 64, more than a group of 16, so the level
        # pass's walk over the groups (_fwd_z_top_kernel) is launched too
        "log_linear_mamba2/inference": inference(_with_grouped_levels(log_linear_scalar_decay_chunk),
                                                 *_long(q, k, v, g, lam), kernel=None),
        # its training forward + backward with GROUPED_LEVELS (one level state per chunk; the default)
        # and without (every level's state at every chunk)
        "log_linear_mamba2/grouped_levels": fwd_bwd(_with_grouped_levels(log_linear_scalar_decay_chunk),
                                                    *[x.requires_grad_() for x in _long(q, k, v, g, lam)]),
        "log_linear_mamba2/n_m_states": fwd_bwd(_with_grouped_levels(log_linear_scalar_decay_chunk, False),
                                                *[x.requires_grad_() for x in _long(q, k, v, g, lam)]),
        # log-linear Gated DeltaNet's chunk levels for training (FUSED_DELTA_TRAINING): the level
        # walks forward and backward and the per-chunk gradients (chunks of 64, B = 1)
        "log_linear_gdn/training": fwd_bwd(
            lambda khat, w, u, qt, decay: delta_levels(khat, w, u, qt, decay, torch.tensor([0, T], dtype=torch.int32),
                                                       max(T - 1, 1).bit_length() - 6 if T > 64 else 1, 64),
            k, rand(B, T, H, K), v, q, rand(T // 64 if T >= 64 else 1, H, dtype=torch.float32)),
        # log-linear Gated DeltaNet's fused inference forward (chunks of 64)
        "log_linear_gdn/inference": inference(delta_log_linear_forward, q, k, v, beta, g, lam,
                                              torch.tensor([0, T], dtype=torch.int32), [T], 64,  # B = 1
                                              kernel=None),
        **layer_steps(),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--K", type=int, default=128)
    p.add_argument("--V", type=int, default=128)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--H", type=int, default=16)
    p.add_argument("--settings", default="", help="other launch settings to compile, e.g. 4x1,8x3")
    p.add_argument("--kernels", default="", help="only these kernels for --settings (default: all)")
    p.add_argument("--dtypes", default="bf16,fp32", help="input dtypes to record the ops in")
    p.add_argument("--ops", default="", help="only these ops of _ops, e.g. gla,gla/scores_by_levels")
    p.add_argument("--ptxas-dtypes", default="bf16",
                   help="dtypes assembled by ptxas (registers, spills); the others: shared memory only")
    a = p.parse_args()
    others = [tuple(int(n) for n in x.split("x")) for x in a.settings.split(",") if x]
    only = {k for k in a.kernels.split(",") if k}
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if os.environ.get("TRITON_INTERPRET"):
        print("ptxas_spills.py compiles kernels: run it without TRITON_INTERPRET", file=sys.stderr)
        return 2
    rows, seen = [], set()
    for name in a.dtypes.split(","):
        for op, run in _ops(1, a.T, a.H, a.K, a.V, dtypes[name]).items():
            if a.ops and op not in a.ops.split(","):
                continue
            for fn, sig, const, nw, ns in record_launches(run):
                key = (fn.__name__, json.dumps(sig, sort_keys=True),
                       json.dumps({k: str(v) for k, v in const.items()}, sort_keys=True), nw, ns)
                if key in seen:
                    continue
                seen.add(key)
                settings = [(nw, ns)] + [x for x in others if x != (nw, ns) and (not only or fn.__name__ in only)]
                for w, st in settings:
                    row = {"op": op, "dtype": name, "kernel": f"{fn.fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}",
                           "num_warps": w, "num_stages": st, "default": (w, st) == (nw, ns),
                           "constexprs": {k: v for k, v in const.items() if isinstance(v, (int, bool, str))},
                           **(ptxas_usage if name in a.ptxas_dtypes.split(",") else shared_memory)(
                               fn, sig, const, w, st)}
                    rows.append(row)
                    regs = (f"regs {row['registers']:3d}  spill st/ld {row['spill_stores']:5d}/"
                            f"{row['spill_loads']:5d} B  " if "registers" in row else " " * 38)
                    print(f"{op:16s} {name:4s} {row['kernel']:40s} w{w} s{st}{'*' if row['default'] else ' '} "
                          f"{regs}smem {row['shared']:6d}{' > limit' if row['shared'] > SMEM_LIMIT else ''}"
                          f"{'  transposed A > 64 rows' if row.get('transposed_a') else ''}", flush=True)
    meta = {"triton": triton.__version__, "torch": torch.__version__, "target": "sm_90a (ptxas -v)",
            "smem_limit": SMEM_LIMIT, "shapes": {"K": a.K, "V": a.V, "T": a.T, "H": a.H, "dtypes": a.dtypes}}
    with open(a.out + ".tmp", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
