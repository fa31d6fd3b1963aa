"""Which form of the delta-rule state pass is right in bf16 on Hopper (session 9 found the ungated
DeltaNet kernel wrong from the second chunk in bf16 with K > 64; gated, float32 and K = 64 right).

``_delta_h_kernel`` feeds the transposed key tile, loaded through transposed strides ([K, 64] in
one tile), straight to ``tl.dot`` when there is no gate; with a gate it rescales the tile first.
Each variant below replaces the module's kernel (same signature) and runs the forward against the
float64 recurrence, worst relative error per chunk, for K in 64 / 128 / 256, gated or not:
  current    the kernel as it is
  row_trans  K loaded row-major [64, K] and transposed with tl.trans (never a dot's result)
  fp32_dot   the transposed tile and Delta in float32 for the state update (no bf16 operand)
Run on a GPU: ``PYTHONPATH=src python benchmarks/scripts/bisect_delta_h.py [OUT.json [VARIANTS [K]]]``
(comma lists; one process per variant and K keeps a faulting case from poisoning the others' CUDA
context, as an illegal memory access at K = 256 did on 2026-12-06); without one (``PYTHONPATH=src:.``) it runs the variants in Triton's interpreter in float64 (is each exact?).
"""
import json
import sys

import torch

if not torch.cuda.is_available():
    import tests.ops.triton_support  # noqa: F401 - the interpreter, before triton is imported
import torch.nn.functional as F
import triton
import triton.language as tl

from longctx.ops.common import triton_delta
from longctx.ops.common.triton_scalar_decay import _load_g, _sequence
from longctx.ops.deltanet import naive_delta_rule
from longctx.ops.gated_deltanet import naive_gated_delta_rule

CURRENT = triton_delta._delta_h_kernel


@triton.jit
def _h_kernel_variant(
    k, w, u, gc, h, vn, h0, ht, cu_seqlens, chunk_offsets,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, HAS_G: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    USE_H0: tl.constexpr, STORE_HT: tl.constexpr, MODE: tl.constexpr,
):
    # MODE 1: row-major K and tl.trans; MODE 2: the state update's operands in ACC
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    bos, T, NT, boh = _sequence(cu_seqlens, chunk_offsets, i_n, BT)
    b_h = tl.zeros([BK, BV], dtype=ACC)
    if USE_H0:
        p_h0 = tl.make_block_ptr(h0 + i_nh * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        b_h += tl.load(p_h0, boundary_check=(0, 1))
    for i_t in range(NT):
        p_h = tl.make_block_ptr(h + ((boh + i_t) * H + i_h) * K * V, (K, V), (V, 1),
                                (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_h, b_h.to(p_h.dtype.element_ty), boundary_check=(0, 1))
        p_w = tl.make_block_ptr(w + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
        p_u = tl.make_block_ptr(u + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        b_w = tl.load(p_w, boundary_check=(0, 1))
        b_u = tl.load(p_u, boundary_check=(0, 1))
        b_d = b_u.to(ACC) - tl.dot(b_w, b_h.to(b_w.dtype), input_precision=PREC)
        p_vn = tl.make_block_ptr(vn + (bos * H + i_h) * V, (T, V), (H * V, 1),
                                 (i_t * BT, i_v * BV), (BT, BV), (1, 0))
        tl.store(p_vn, b_d.to(p_vn.dtype.element_ty), boundary_check=(0, 1))
        if MODE == 1:
            p_k = tl.make_block_ptr(k + (bos * H + i_h) * K, (T, K), (H * K, 1), (i_t * BT, 0), (BT, BK), (1, 0))
            b_k = tl.load(p_k, boundary_check=(0, 1))
            if HAS_G:
                b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
                b_h *= tl.exp(g_last)
                b_k = (b_k * tl.exp(g_last - b_g)[:, None]).to(b_k.dtype)
            b_h += tl.dot(tl.trans(b_k), b_d.to(b_k.dtype), input_precision=PREC)
        else:
            p_kt = tl.make_block_ptr(k + (bos * H + i_h) * K, (K, T), (1, H * K), (0, i_t * BT), (BK, BT), (0, 1))
            b_kt = tl.load(p_kt, boundary_check=(0, 1)).to(ACC)
            if HAS_G:
                b_g, g_last = _load_g(gc, bos, T, i_t, i_h, H, BT)
                b_h *= tl.exp(g_last)
                b_kt = b_kt * tl.exp(g_last - b_g)[None, :]
            b_h += tl.dot(b_kt, b_d, input_precision="ieee")
    if STORE_HT:
        p_ht = tl.make_block_ptr(ht + i_nh * K * V, (K, V), (V, 1), (0, i_v * BV), (BK, BV), (1, 0))
        tl.store(p_ht, b_h.to(p_ht.dtype.element_ty), boundary_check=(0, 1))


class _Variant:
    """Stands in for the module's kernel: ``kernel[grid](...)`` with MODE added."""

    def __init__(self, mode: int) -> None:
        self.mode = mode

    def __getitem__(self, grid):
        return lambda *a, **kw: _h_kernel_variant[grid](*a, **kw, MODE=self.mode)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = (torch.bfloat16, torch.float32) if DEVICE == "cuda" else (torch.float64,)
SIZES = (64, 128, 256) if DEVICE == "cuda" else (16, 32)
VARIANTS = {"current": CURRENT, "row_trans": _Variant(1), "fp32_dot": _Variant(2)}


def case(K: int, gated: bool, dtype: torch.dtype) -> list[float]:
    B, T, H, V, C = (1, 640, 2, 64, 64) if DEVICE == "cuda" else (1, 150, 1, 16, 64)
    gen = torch.Generator().manual_seed(K)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    q, k, v = rand(B, T, H, K), F.normalize(rand(B, T, H, K), dim=-1), rand(B, T, H, V)
    beta, g, S0 = torch.sigmoid(rand(B, T, H)), F.logsigmoid(rand(B, T, H)), rand(B, H, K, V)
    scale = K ** -0.5
    if gated:
        ref, _ = naive_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0)
    else:
        ref, _ = naive_delta_rule(q, k, v, beta, scale=scale, initial_state=S0)
    dev = [t.to(dtype).to(DEVICE) for t in (q, k, v)]
    with torch.no_grad():
        f = (lambda t: t) if dtype == torch.float64 else (lambda t: t.float())
        o, _ = triton_delta.delta_rule_chunk(*dev, f(beta).to(DEVICE), f(g).to(DEVICE) if gated else None,
                                             scale=scale, initial_state=f(S0).to(DEVICE))
    e = ((o.double().cpu() - ref).pow(2).mean((0, 2, 3)) / ref.pow(2).mean((0, 2, 3))).sqrt()
    return [float(f"{float(e[i * C:(i + 1) * C].max()):.3g}") for i in range(-(-T // C))]


if __name__ == "__main__":
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else list(VARIANTS)
    sizes = [int(k) for k in sys.argv[3].split(",")] if len(sys.argv) > 3 else SIZES
    out = {}
    for name in names:
        triton_delta._delta_h_kernel = VARIANTS[name]
        for K in sizes:
            for gated in (False, True):
                for dtype in DTYPES:
                    key = f"{name} K={K} {'gated' if gated else 'ungated'} {str(dtype)[6:]}"
                    try:
                        out[key] = case(K, gated, dtype)
                    except Exception as e:  # noqa: BLE001 - a variant that fails to compile is a result
                        out[key] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                    print(key, out[key], flush=True)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(out, fh, indent=1)
