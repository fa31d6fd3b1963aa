"""One Triton kernel for everything a DeltaNet / Gated DeltaNet / Mamba-2 layer does to decode one
token between its input projection and its output projection.

The layer's decode step in PyTorch is some thirty small kernels: the short causal convolution
over q | k | v (its buffer shifted by one), SiLU, the L2 norms of q and k, beta = sigmoid, the
Mamba-2 gate, the delta-rule step, the per-head RMSNorm and the output gate. Inside a CUDA graph
each still costs a launch of a few microseconds, several times the step's arithmetic. Here they
are one program per (batch, head), fed by one GEMV for all the input projections together
(``z = x W_in^T``, the layer concatenates its weights) and followed by W_o:

    pre_c   = sum_i w_c,i xp_c,i,  xp_c = [conv buffer_c (K_c - 1 inputs), z_c]   (depthwise conv)
    q, k    = l2norm(SiLU(pre_q)), l2norm(SiLU(pre_k)),   v = SiLU(pre_v)
    beta    = sigmoid(z_b) (x 2 with negative eigenvalues),  g = -exp(A_log) softplus(z_a + dt_bias)
    S'      = e^g S + beta k (v - e^g S^T k)^T,              o = scale q^T S'     (DeltaNet §3; GDN §3)
    out     = RMSNorm(o) (⊙ SiLU(z_gate) when gated)

``z`` rows are laid out ``[q (H K) | k (H K) | v (H V) | b (H) | a (H) | gate (H V)]`` (the last two
only when gated). The state S [B, H, K, V] and the conv buffer [B, K_c - 1, 2 H K + H V] are
written to the given output tensors, which may be the inputs themselves (a CUDA graph's static
buffers): each program reads all of its head's state before it writes any of it (a barrier between
the reads and the writes: the threads that read an element need not be the ones that write it),
and no two programs share a channel. Arithmetic in float32 (float64 for float64 inputs).

Mamba-2 (``ssd_layer_step``; Dao & Gu 2024, §7.1): z rows ``[z (H P) | x (H P) | B (G N) | C (G N) |
dt (H)]`` (its in_proj as it is), conv with bias over x | B | C, then per head
    dt = softplus(dt_raw + dt_bias),   S' = e^{dt A} S + dt x B^T  (S [P, N]),   y = S' C + D x
    u  = y ⊙ SiLU(z),   out = u ⊙ w_norm  and  ssq = sum(u^2) over the head's P channels
GLA (``gla_layer_step``; Yang et al. 2024, §4.4): z rows ``[q (H K) | k (H K) | v (H V) | the gate's
low-rank input (R) | r (H V)]``, then per head
    g = logsigmoid(W_g2 z_R + b_g2) / tau  (K),   S' = diag(e^g) S + k v^T,   o = scale q^T S'
    out = RMSNorm(o) ⊙ SiLU(z_r)

Mamba-2's RMSNorm spans every head, so the kernel leaves the scale r = (mean(u^2) + eps)^(-1/2) to
``rms_scale`` after out_proj (a linear map: out_proj(r u ⊙ w) = r out_proj(u ⊙ w)). Heads of a
group share B / C channels, so its conv buffer is always written to a new tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _conv_silu(z_row, buf_in, buf_out, conv_w, b, ch, rc, mc, ms, C: tl.constexpr, KC: tl.constexpr,
               BKC: tl.constexpr, ACC: tl.constexpr, conv_b=None):
    """SiLU of the causal depthwise conv (+ ``conv_b`` if given) of channels ``ch + rc`` (mask mc)
    at the new token, whose input is ``z_row[ch + rc]``; the channels in mask ``ms`` get their
    buffer shifted by one into buf_out. Returns [len(rc)] in ACC."""
    ri = tl.arange(0, BKC)  # conv tap / buffer row: rows 0 .. KC-2 are the buffer, KC-1 the new input
    m_old = (ri[:, None] < KC - 1) & mc[None, :]
    p_buf = b * (KC - 1) * C + ri[:, None] * C + (ch + rc)[None, :]
    b_xp = tl.load(buf_in + p_buf, mask=m_old, other=0.0).to(ACC)  # [BKC, BC]
    b_new = tl.load(z_row + ch + rc, mask=mc, other=0.0).to(ACC)
    b_xp = tl.where(ri[:, None] == KC - 1, b_new[None, :], b_xp)
    b_w = tl.load(conv_w + (ch + rc)[None, :] * KC + ri[:, None], mask=(ri[:, None] < KC) & mc[None, :],
                  other=0.0).to(ACC)  # w[c, i] as [BKC, BC]
    pre = tl.sum(b_w * b_xp, axis=0)
    if conv_b is not None:
        pre += tl.load(conv_b + ch + rc, mask=mc, other=0.0).to(ACC)
    # the buffer keeps the last KC - 1 inputs: row i of the new buffer is row i + 1 of xp. In place
    # (buf_out = buf_in) row i - 1 is written from the thread that read row i, and the thread that
    # reads row i - 1 may sit in another warp: every read of the tile is done before any write
    # (the suspected cause of in-graph steps going wrong from the second token on, H100, 2026-12-07)
    tl.debug_barrier()
    m_new = (ri[:, None] >= 1) & (ri[:, None] < KC) & ms[None, :]
    tl.store(buf_out + p_buf - C, b_xp.to(buf_out.dtype.element_ty), mask=m_new)
    return pre / (1.0 + tl.exp(-pre))


@triton.jit
def _delta_layer_step_kernel(
    z, conv_w, buf_in, buf_out, s_in, s_out, A_log, dt_bias, norm_w, out, scale, l2_eps, norm_eps,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, KC: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BKC: tl.constexpr, GATED: tl.constexpr, NEG_EIG: tl.constexpr, ACC: tl.constexpr,
):
    """One (batch, head): grid (B * H,). z [B, ZW]; conv_w [C, KC]; buffers [B, KC - 1, C];
    S [B, H, K, V]; A_log, dt_bias [H]; norm_w [V]; out [B, H V]."""
    i_bh = tl.program_id(0)
    b, h = i_bh // H, i_bh % H
    C: tl.constexpr = 2 * H * K + H * V
    ZW: tl.constexpr = C + (2 * H + H * V if GATED else H)
    z_row = z + b * ZW
    rk, rv = tl.arange(0, BK), tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    b_q = _conv_silu(z_row, buf_in, buf_out, conv_w, b, h * K, rk, mk, mk, C, KC, BKC, ACC)
    b_k = _conv_silu(z_row, buf_in, buf_out, conv_w, b, H * K + h * K, rk, mk, mk, C, KC, BKC, ACC)
    b_v = _conv_silu(z_row, buf_in, buf_out, conv_w, b, 2 * H * K + h * V, rv, mv, mv, C, KC, BKC, ACC)
    # F.normalize: x / max(||x||, eps)
    b_q = b_q / tl.maximum(tl.sqrt(tl.sum(b_q * b_q, axis=0)), l2_eps) * scale
    b_k = b_k / tl.maximum(tl.sqrt(tl.sum(b_k * b_k, axis=0)), l2_eps)
    b_beta = tl.load(z_row + C + h).to(ACC)
    b_beta = 1.0 / (1.0 + tl.exp(-b_beta))
    if NEG_EIG:
        b_beta *= 2.0
    p_s = i_bh.to(tl.int64) * K * V + rk[:, None] * V + rv[None, :]
    m_s = mk[:, None] & mv[None, :]
    b_s = tl.load(s_in + p_s, mask=m_s, other=0.0).to(ACC)  # [BK, BV], the only read of S
    if GATED:
        a = tl.load(z_row + C + H + h).to(ACC) + tl.load(dt_bias + h).to(ACC)
        softplus = tl.maximum(a, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(a)))
        b_s *= tl.exp(-tl.exp(tl.load(A_log + h).to(ACC)) * softplus)  # GDN §3.4: alpha = e^g
    b_v = b_beta * (b_v - tl.sum(b_k[:, None] * b_s, axis=0))
    b_s += b_k[:, None] * b_v[None, :]
    b_o = tl.sum(b_q[:, None] * b_s, axis=0)  # [BV] = scale q^T S'
    tl.debug_barrier()  # in place: every read of S is done before any write (see _conv_silu)
    tl.store(s_out + p_s, b_s.to(s_out.dtype.element_ty), mask=m_s)
    b_o = b_o / tl.sqrt(tl.sum(b_o * b_o, axis=0) / V + norm_eps)  # RMSNorm (masked columns are 0)
    b_o *= tl.load(norm_w + rv, mask=mv, other=0.0).to(ACC)
    if GATED:
        b_gate = tl.load(z_row + C + 2 * H + h * V + rv, mask=mv, other=0.0).to(ACC)
        b_o *= b_gate / (1.0 + tl.exp(-b_gate))
    tl.store(out + b * H * V + h * V + rv, b_o.to(out.dtype.element_ty), mask=mv)


def _check(fn: str, S: Tensor, S_out: Tensor, *specs: tuple[str, Tensor, tuple[int, ...]]) -> None:
    """The layer steps' argument checks, as far as the kernels' memory safety needs (the shapes are
    the layers' to get right): each (name, tensor, shape) contiguous with that shape, the state S
    and its output S_out in float32 (float64)."""
    for name, t, shape in specs:
        if tuple(t.shape) != shape or not t.is_contiguous():
            raise ValueError(f"{fn}: {name} must be contiguous with shape {list(shape)}, got {list(t.shape)}")
    if S.dtype not in (torch.float32, torch.float64) or S_out.dtype != S.dtype:
        raise TypeError(f"{fn}: the state is kept in float32 (float64), got {S.dtype} / {S_out.dtype}")


def _meta(S: Tensor, tile_values: int) -> dict:
    """Launch arguments shared by the layer steps: the arithmetic dtype (the state's) and the warps
    for one program's [rows, cols] tile of S (``tile_values`` of them; 16 warps from 16K)."""
    return {"ACC": tl.float64 if S.dtype == torch.float64 else tl.float32,
            "num_warps": max(4, min(16, tile_values // 1024))}


def delta_layer_step(z: Tensor, conv_w: Tensor, buf: Tensor, S: Tensor, norm_w: Tensor, *, H: int, K: int,
                     V: int, scale: float, l2_eps: float, norm_eps: float, neg_eig: bool, buf_out: Tensor,
                     S_out: Tensor, A_log: Tensor | None = None, dt_bias: Tensor | None = None) -> Tensor:
    """The fused step (module docstring). z [B, ZW] (the input projections' outputs, in the layer's
    dtype); conv_w [C, KC]; buf [B, KC - 1, C]; S [B, H, K, V] in the compute dtype (float32, or
    float64); norm_w [V]; A_log, dt_bias [H] (Gated DeltaNet) or None (DeltaNet). The new conv
    buffer and state go to ``buf_out`` / ``S_out`` (the inputs themselves to update in place).
    Returns the normed (and gated) output [B, H V] in z's dtype."""
    B = z.shape[0]
    KC = conv_w.shape[-1]
    C = 2 * H * K + H * V
    gated = A_log is not None
    ZW = C + (2 * H + H * V if gated else H)
    _check("delta_layer_step", S, S_out, ("z", z, (B, ZW)), ("conv_w", conv_w, (C, KC)), ("buf", buf, (B, KC - 1, C)),
           ("S", S, (B, H, K, V)), ("norm_w", norm_w, (V,)), ("buf_out", buf_out, (B, KC - 1, C)),
           ("S_out", S_out, (B, H, K, V)))
    out = torch.empty(B, H * V, dtype=z.dtype, device=z.device)
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    _delta_layer_step_kernel[(B * H,)](
        z, conv_w, buf, buf_out, S, S_out, A_log if gated else norm_w, dt_bias if gated else norm_w,
        norm_w, out, float(scale), float(l2_eps), float(norm_eps),
        H=H, K=K, V=V, KC=KC, BK=BK, BV=BV, BKC=triton.next_power_of_2(KC), GATED=gated,
        NEG_EIG=neg_eig, **_meta(S, BK * BV),
    )
    return out


@triton.jit
def _ssd_layer_step_kernel(
    z, conv_w, conv_b, buf_in, buf_out, s_in, s_out, A_log, dt_bias, D, norm_w, out, ssq,
    H: tl.constexpr, G: tl.constexpr, P: tl.constexpr, N: tl.constexpr, KC: tl.constexpr,
    BP: tl.constexpr, BN: tl.constexpr, BKC: tl.constexpr, ACC: tl.constexpr,
):
    """One (batch, head) of Mamba-2: grid (B * H,). z [B, 2 H P + 2 G N + H]; conv_w [C, KC],
    conv_b [C] (C = H P + 2 G N); buffers [B, KC - 1, C]; S [B, H, P, N]; A_log, dt_bias, D [H];
    norm_w [H P]; out [B, H P]; ssq [B, H]."""
    i_bh = tl.program_id(0)
    b, h = i_bh // H, i_bh % H
    g = h // (H // G)
    C: tl.constexpr = H * P + 2 * G * N
    z_row = z + b * (2 * H * P + 2 * G * N + H)
    xbc = z_row + H * P  # the conv's inputs start after z
    rp, rn = tl.arange(0, BP), tl.arange(0, BN)
    mp, mn = rp < P, rn < N
    b_x = _conv_silu(xbc, buf_in, buf_out, conv_w, b, h * P, rp, mp, mp, C, KC, BKC, ACC, conv_b)
    # B and C of group g: every head of the group reads them, its first head writes their buffer
    ms = mn & (h % (H // G) == 0)
    b_B = _conv_silu(xbc, buf_in, buf_out, conv_w, b, H * P + g * N, rn, mn, ms, C, KC, BKC, ACC, conv_b)
    b_C = _conv_silu(xbc, buf_in, buf_out, conv_w, b, H * P + G * N + g * N, rn, mn, ms, C, KC, BKC, ACC, conv_b)
    a = tl.load(z_row + 2 * H * P + 2 * G * N + h).to(ACC) + tl.load(dt_bias + h).to(ACC)
    dt = tl.maximum(a, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(a)))  # softplus
    p_s = i_bh.to(tl.int64) * P * N + rp[:, None] * N + rn[None, :]
    m_s = mp[:, None] & mn[None, :]
    b_s = tl.load(s_in + p_s, mask=m_s, other=0.0).to(ACC)  # [BP, BN]
    b_s = b_s * tl.exp(-dt * tl.exp(tl.load(A_log + h).to(ACC))) + (dt * b_x)[:, None] * b_B[None, :]
    tl.debug_barrier()  # in place: every read of S is done before any write (see _conv_silu)
    tl.store(s_out + p_s, b_s.to(s_out.dtype.element_ty), mask=m_s)
    b_y = tl.sum(b_s * b_C[None, :], axis=1) + tl.load(D + h).to(ACC) * b_x  # [BP]
    b_zg = tl.load(z_row + h * P + rp, mask=mp, other=0.0).to(ACC)
    b_u = b_y * (b_zg / (1.0 + tl.exp(-b_zg)))
    tl.store(ssq + i_bh, tl.sum(tl.where(mp, b_u * b_u, 0.0), axis=0))
    b_u *= tl.load(norm_w + h * P + rp, mask=mp, other=0.0).to(ACC)
    tl.store(out + b * H * P + h * P + rp, b_u.to(out.dtype.element_ty), mask=mp)


@triton.jit
def _rms_scale_kernel(y, ssq, D, eps, H: tl.constexpr, BH: tl.constexpr, W: tl.constexpr, BW: tl.constexpr):
    """y[b] *= (sum_h ssq[b, h] / D + eps)^(-1/2); grid (B, W / BW)."""
    b, i_w = tl.program_id(0), tl.program_id(1)
    rh, rw = tl.arange(0, BH), i_w * BW + tl.arange(0, BW)
    b_ssq = tl.load(ssq + b * H + rh, mask=rh < H, other=0.0)
    r = 1.0 / tl.sqrt(tl.sum(b_ssq, axis=0) / D + eps)
    p = y + b * W + rw
    tl.store(p, (tl.load(p, mask=rw < W, other=0.0) * r).to(y.dtype.element_ty), mask=rw < W)


def ssd_layer_step(z: Tensor, conv_w: Tensor, conv_b: Tensor, buf: Tensor, S: Tensor, A_log: Tensor,
                   dt_bias: Tensor, D: Tensor, norm_w: Tensor, *, H: int, G: int, P: int, N: int,
                   S_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mamba-2's fused step (module docstring). z [B, 2 H P + 2 G N + H] (in_proj's output);
    conv_w [C, KC], conv_b [C]; buf [B, KC - 1, C]; S [B, H, P, N] in float32 (float64);
    A_log, dt_bias, D [H]; norm_w [H P]. Returns (u ⊙ w_norm [B, H P] in z's dtype, to go through
    out_proj and then ``rms_scale``; the per-head sums of u^2 [B, H]; the new conv buffer); the new
    state goes to ``S_out`` (S itself to update in place)."""
    Bsz = z.shape[0]
    KC = conv_w.shape[-1]
    C = H * P + 2 * G * N
    _check("ssd_layer_step", S, S_out, ("z", z, (Bsz, 2 * H * P + 2 * G * N + H)), ("conv_w", conv_w, (C, KC)),
           ("conv_b", conv_b, (C,)), ("buf", buf, (Bsz, KC - 1, C)), ("S", S, (Bsz, H, P, N)),
           ("S_out", S_out, (Bsz, H, P, N)), ("norm_w", norm_w, (H * P,)))
    if H % G:
        raise ValueError(f"ssd_layer_step: groups {G} must divide heads {H}")
    buf_out = torch.empty_like(buf)
    out = torch.empty(Bsz, H * P, dtype=z.dtype, device=z.device)
    ssq = torch.empty(Bsz, H, dtype=S.dtype, device=z.device)
    BP, BN = max(16, triton.next_power_of_2(P)), max(16, triton.next_power_of_2(N))
    _ssd_layer_step_kernel[(Bsz * H,)](
        z, conv_w, conv_b, buf, buf_out, S, S_out, A_log, dt_bias, D, norm_w, out, ssq,
        H=H, G=G, P=P, N=N, KC=KC, BP=BP, BN=BN, BKC=triton.next_power_of_2(KC), **_meta(S, BP * BN),
    )
    return out, ssq, buf_out


def rms_scale(y: Tensor, ssq: Tensor, D: int, eps: float) -> Tensor:
    """``y [B, W] * (ssq.sum(-1) / D + eps)^(-1/2)`` per row, in place (one launch). Returns y."""
    Bsz, W = y.shape
    BW = min(1024, triton.next_power_of_2(W))
    _rms_scale_kernel[(Bsz, triton.cdiv(W, BW))](y, ssq, float(D), float(eps), H=ssq.shape[1],
                                                  BH=max(2, triton.next_power_of_2(ssq.shape[1])), W=W, BW=BW)
    return y


@triton.jit
def _gla_layer_step_kernel(
    z, w2, b2, s_in, s_out, norm_w, out, scale, tau, norm_eps,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BR: tl.constexpr, ACC: tl.constexpr,
):
    """One (batch, head) of GLA: grid (B * H,). z [B, 2 H K + 2 H V + R]; w2 [H K, R], b2 [H K]
    (the gate's second projection); S [B, H, K, V]; norm_w [V]; out [B, H V]."""
    i_bh = tl.program_id(0)
    b, h = i_bh // H, i_bh % H
    z_row = z + b * (2 * H * K + 2 * H * V + R)
    rk, rv, rr = tl.arange(0, BK), tl.arange(0, BV), tl.arange(0, BR)
    mk, mv, mr = rk < K, rv < V, rr < R
    b_q = tl.load(z_row + h * K + rk, mask=mk, other=0.0).to(ACC) * scale
    b_k = tl.load(z_row + H * K + h * K + rk, mask=mk, other=0.0).to(ACC)
    b_v = tl.load(z_row + 2 * H * K + h * V + rv, mask=mv, other=0.0).to(ACC)
    b_zr = tl.load(z_row + 2 * H * K + H * V + rr, mask=mr, other=0.0).to(ACC)
    b_w2 = tl.load(w2 + (h * K + rk)[:, None] * R + rr[None, :], mask=mk[:, None] & mr[None, :], other=0.0)
    b_a = tl.sum(b_w2.to(ACC) * b_zr[None, :], axis=1) + tl.load(b2 + h * K + rk, mask=mk, other=0.0).to(ACC)
    b_g = (tl.minimum(b_a, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(b_a)))) / tau  # logsigmoid / tau (§4.4)
    p_s = i_bh.to(tl.int64) * K * V + rk[:, None] * V + rv[None, :]
    m_s = mk[:, None] & mv[None, :]
    b_s = tl.load(s_in + p_s, mask=m_s, other=0.0).to(ACC) * tl.exp(b_g)[:, None] + b_k[:, None] * b_v[None, :]
    tl.debug_barrier()  # in place: every read of S is done before any write (see _conv_silu)
    tl.store(s_out + p_s, b_s.to(s_out.dtype.element_ty), mask=m_s)
    b_o = tl.sum(b_q[:, None] * b_s, axis=0)  # [BV] = scale q^T S'
    b_o = b_o / tl.sqrt(tl.sum(b_o * b_o, axis=0) / V + norm_eps) * tl.load(norm_w + rv, mask=mv, other=0.0).to(ACC)
    b_r = tl.load(z_row + 2 * H * K + H * V + R + h * V + rv, mask=mv, other=0.0).to(ACC)
    b_o *= b_r / (1.0 + tl.exp(-b_r))
    tl.store(out + b * H * V + h * V + rv, b_o.to(out.dtype.element_ty), mask=mv)


def gla_layer_step(z: Tensor, w2: Tensor, b2: Tensor, S: Tensor, norm_w: Tensor, *, H: int, K: int, V: int,
                   scale: float, tau: float, norm_eps: float, S_out: Tensor) -> Tensor:
    """GLA's fused step (module docstring). z [B, 2 H K + 2 H V + R]; w2 [H K, R], b2 [H K]; S [B, H, K,
    V] in float32 (float64); norm_w [V]. Returns RMSNorm(o) ⊙ SiLU(r) [B, H V] in z's dtype; the new
    state goes to ``S_out`` (S itself to update in place)."""
    Bsz = z.shape[0]
    R = w2.shape[-1]
    _check("gla_layer_step", S, S_out, ("z", z, (Bsz, 2 * H * K + 2 * H * V + R)), ("w2", w2, (H * K, R)),
           ("b2", b2, (H * K,)), ("S", S, (Bsz, H, K, V)), ("S_out", S_out, (Bsz, H, K, V)), ("norm_w", norm_w, (V,)))
    out = torch.empty(Bsz, H * V, dtype=z.dtype, device=z.device)
    BK, BV = max(16, triton.next_power_of_2(K)), max(16, triton.next_power_of_2(V))
    _gla_layer_step_kernel[(Bsz * H,)](
        z, w2, b2, S, S_out, norm_w, out, float(scale), float(tau), float(norm_eps),
        H=H, K=K, V=V, R=R, BK=BK, BV=BV, BR=max(2, triton.next_power_of_2(R)), **_meta(S, BK * BV),
    )
    return out


__all__ = ["delta_layer_step", "gla_layer_step", "rms_scale", "ssd_layer_step"]
