"""One fused Triton kernel for the one-token decode step of the linear mixers.

Every recurrent linear mixer of the package decodes with a fixed-size state ``S [K, V]`` per
(batch, head) and one of two updates (state layout ``[B, H, K, V]`` unless noted):

    decayed outer product:  S' = diag(a) S + k v^T                         o = scale q^T S'
    delta rule:             S' = a S + beta k (v - a S^T k)^T
                               = a (I - beta k k^T) S + beta k v^T          o = scale q^T S'

with ``a = exp(g)``: no decay (linear attention, DeltaNet), a scalar per head and token (retention's
fixed gamma_h, simple GLA, Mamba-2's ``dt A``, Gated DeltaNet's alpha) or one per key dim (GLA).
Mamba-2 is the first form with ``q = C``, ``k = B``, ``v = dt x``, ``g = dt A`` and its state
``[B, H, P, N]`` read as ``S^T`` (``transposed=True``); linear attention's normaliser
``z' = z + k``, ``o = q^T S' / (q . z' + eps)`` rides along (``z=``, ``normalize=``).

One program per (batch x head, block of V columns) holds the whole key dim of its block, so it
reads its block of S once, does decay, (delta correction,) update and readout in registers and
writes it once. The state is kept in float32 (float64 in the interpreter tests) whatever the input
dtype; with ``inplace=True`` it is overwritten where it lies (a CUDA graph's static buffer).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from longctx.ops.common.backend import MAX_DECODE_K

GATE_NONE, GATE_HEAD, GATE_KEY = 0, 1, 2  # no decay / one log decay per (b, h) / one per key dim


@triton.jit
def _fused_step_kernel(
    q, k, v, g, beta, s_in, s_out, z_in, z_out, o, scale, eps,
    H: tl.constexpr, HQK: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    SK: tl.constexpr, SV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    GATE: tl.constexpr, DELTA: tl.constexpr, Z: tl.constexpr, NORM: tl.constexpr, ACC: tl.constexpr,
):
    """One decode step of one (batch, head) and V columns ``[i_v BV, (i_v + 1) BV)``; grid
    (V/BV, B*H). q, k [B, HQK, K] (head h reads q/k head h // (H / HQK)); v [B, H, V];
    g [B, H] or [B, H, K]; beta [B, H]; S [B*H, K, V] with strides (SK, SV) inside a head."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    i_qk = i_b * HQK + i_h // (H // HQK)
    rk = tl.arange(0, BK)
    rv = i_v * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    m_s = mk[:, None] & mv[None, :]
    b_q = tl.load(q + i_qk * K + rk, mask=mk, other=0.0).to(ACC) * scale  # [BK]
    b_k = tl.load(k + i_qk * K + rk, mask=mk, other=0.0).to(ACC)  # [BK]
    b_v = tl.load(v + i_bh * V + rv, mask=mv, other=0.0).to(ACC)  # [BV]
    p_s = i_bh.to(tl.int64) * K * V + rk[:, None] * SK + rv[None, :] * SV
    b_s = tl.load(s_in + p_s, mask=m_s, other=0.0).to(ACC)  # [BK, BV], the only read of S
    if GATE == 1:
        b_s *= tl.exp(tl.load(g + i_bh).to(ACC))
    if GATE == 2:
        b_s *= tl.exp(tl.load(g + i_bh * K + rk, mask=mk, other=0.0).to(ACC))[:, None]
    if DELTA:  # v <- beta (v - S^T k) on the decayed S
        b_v = tl.load(beta + i_bh).to(ACC) * (b_v - tl.sum(b_k[:, None] * b_s, axis=0))
    b_s += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_q[:, None] * b_s, axis=0)  # [BV] = scale q^T S'
    if Z:
        b_z = tl.load(z_in + i_bh * K + rk, mask=mk, other=0.0).to(ACC) + b_k  # z' = z + k
        if NORM:
            b_o = b_o / (tl.sum(b_q * b_z, axis=0) + eps)
        if i_v == 0:  # z_out is never z_in: the other column blocks still read z
            tl.store(z_out + i_bh * K + rk, b_z.to(z_out.dtype.element_ty), mask=mk)
    tl.store(s_out + p_s, b_s.to(s_out.dtype.element_ty), mask=m_s)
    tl.store(o + i_bh * V + rv, b_o.to(o.dtype.element_ty), mask=mv)


def _blocks(K: int, V: int) -> tuple[int, int]:
    """(BK = the whole key dim, BV): small V blocks give B*H*V/BV programs at batch 1, and
    BK * BV stays <= 8192 values of registers per program."""
    BK = max(16, triton.next_power_of_2(K))
    BV = min(16, max(8, triton.next_power_of_2(V)), max(1, 8192 // BK))
    return BK, BV


def _check(name: str, t: Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"fused_recurrent_step: {name} must have shape {list(shape)}, got {list(t.shape)}")


def fused_recurrent_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: Tensor,
    *,
    g: Tensor | None = None,
    beta: Tensor | None = None,
    scale: float = 1.0,
    z: Tensor | None = None,
    normalize: bool = False,
    eps: float = 1e-6,
    transposed: bool = False,
    inplace: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One decode step of a linear mixer, fused (see the module docstring for the updates).

    q, k [B, Hqk, K] (Hqk divides H: Mamba-2's groups); v [B, H, V]; state S [B, H, K, V]
    (``transposed``: [B, H, V, K]) in float32 or float64, the accumulation dtype; g None (no
    decay), [B, H] (one log decay <= 0 per head) or [B, H, K] (per key dim); beta None or [B, H]:
    the delta rule with step size beta; z None or [B, H, K]: linear attention's key sum, updated
    (into a new tensor) and, with ``normalize``, dividing the output. ``inplace``: S is
    overwritten (must be contiguous), else a new state is returned and ``state`` is left as is.

    Returns ``o [B, H, V]`` in the state's dtype, the new state (``state`` itself when in place)
    and the new z (None without z). Inputs are checked by the calling op, shapes again here.
    """
    B, H, V = v.shape
    Hqk, K = q.shape[1:]
    _check("q", q, (B, Hqk, K))
    _check("k", k, (B, Hqk, K))
    _check("state", state, (B, H, V, K) if transposed else (B, H, K, V))
    _check("beta", beta, (B, H))
    _check("z", z, (B, H, K))
    if g is not None and tuple(g.shape) not in ((B, H), (B, H, K)):
        raise ValueError(f"fused_recurrent_step: g must be [B, H] or [B, H, K] = {[B, H, K]}, got {list(g.shape)}")
    if Hqk < 1 or H % Hqk:
        raise ValueError(f"fused_recurrent_step: q/k heads {Hqk} must divide v heads {H}")
    if K > MAX_DECODE_K:
        raise ValueError(f"fused_recurrent_step: key dim {K} > {MAX_DECODE_K}")
    if state.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused_recurrent_step: the state is kept in float32 (float64), got {state.dtype}")
    if inplace and not state.is_contiguous():
        raise ValueError("fused_recurrent_step: inplace=True needs a contiguous state")
    ACC = tl.float64 if state.dtype == torch.float64 else tl.float32
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    s_in = state.contiguous()
    s_out = s_in if inplace else torch.empty_like(s_in)
    z_out = torch.empty_like(z, dtype=state.dtype) if z is not None else None
    o = torch.empty(B, H, V, dtype=state.dtype, device=v.device)
    gate = GATE_NONE if g is None else (GATE_HEAD if g.dim() == 2 else GATE_KEY)
    SK, SV = (1, K) if transposed else (V, 1)
    BK, BV = _blocks(K, V)
    _fused_step_kernel[(triton.cdiv(V, BV), B * H)](
        q, k, v, g.contiguous() if g is not None else v, beta.contiguous() if beta is not None else v,
        s_in, s_out, z.contiguous() if z is not None else v, z_out if z_out is not None else v, o,
        float(scale), float(eps),
        H=H, HQK=Hqk, K=K, V=V, SK=SK, SV=SV, BK=BK, BV=BV, GATE=gate, DELTA=beta is not None,
        Z=z is not None, NORM=normalize and z is not None, ACC=ACC,
        num_warps=4 if BK * BV >= 2048 else 2,
    )
    return o, s_out, z_out


__all__ = ["fused_recurrent_step"]
