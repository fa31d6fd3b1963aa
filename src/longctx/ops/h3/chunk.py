"""H3's parallel form: the shift SSM as a depthwise causal convolution, the diagonal SSM as S4D's
Vandermonde kernel + FFT convolution (``ops/s4``) over every (head, key dim, value dim) signal
``K_bar V^T``, then the contraction with ``Q`` (Fu et al. 2023, §3.1 and §4: FFT convolution).
State: the last ``N-1`` keys (shift register) and the diagonal SSM state ``[B, H*Dk, Ns, Dv]``.
"""

from __future__ import annotations

from torch import Tensor

from longctx.ops.h3.shift import shift_conv
from longctx.ops.s4 import chunk_s4d

H3State = tuple[Tensor, Tensor]  # (key history [B, N-1, H*Dk], SSM state [B, H*Dk, Ns, Dv] complex)


def check_h3(op: str, q: Tensor, k: Tensor, v: Tensor, shift_kernel: Tensor, A: Tensor) -> tuple[int, ...]:
    if not all(isinstance(t, Tensor) and t.dim() == 4 for t in (q, k, v)):
        raise ValueError(f"{op}: q, k, v must be [B, T, H, D] tensors")
    Bsz, T, H, Dk = k.shape
    if q.shape != k.shape or v.shape[:3] != (Bsz, T, H):
        raise ValueError(f"{op}: q and k must be [B, T, H, Dk] and v [B, T, H, Dv] with the same B, T, H; "
                         f"got q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}")
    if shift_kernel.dim() != 2 or shift_kernel.shape[0] != H * Dk:
        raise ValueError(f"{op}: shift_kernel must be [H*Dk={H * Dk}, N], got {list(shift_kernel.shape)}")
    if not A.is_complex() or A.dim() != 2 or A.shape[0] != H * Dk:
        raise ValueError(f"{op}: A must be complex [H*Dk={H * Dk}, Ns], got {A.dtype} {list(A.shape)}")
    return Bsz, T, H, Dk, v.shape[-1]


def chunk_h3(q: Tensor, k: Tensor, v: Tensor, shift_kernel: Tensor, A: Tensor, Bs: Tensor, C: Tensor,
             dt: Tensor, method: str = "zoh", initial_state: H3State | None = None,
             output_final_state: bool = False) -> tuple[Tensor, H3State | None]:
    """``q, k [B, T, H, Dk]``, ``v [B, T, H, Dv]`` -> ``(o [B, T, H, Dv], state or None)``."""
    Bsz, T, H, Dk, Dv = check_h3("chunk_h3", q, k, v, shift_kernel, A)
    history, S0 = (None, None) if initial_state is None else initial_state
    kbar, history = shift_conv(k.reshape(Bsz, T, H * Dk), shift_kernel, history)  # [B, T, H*Dk]
    kv = kbar[..., None] * v.repeat_interleave(Dk, dim=2)  # [B, T, H*Dk, Dv]
    signal = kv.permute(0, 3, 1, 2).reshape(Bsz * Dv, T, H * Dk)  # one S4D input per value dim
    x0 = None if S0 is None else S0.permute(0, 3, 1, 2).reshape(Bsz * Dv, H * Dk, -1)
    mem, xT = chunk_s4d(signal, A, Bs, C, dt, None, method, x0, output_final_state)
    mem = mem.reshape(Bsz, Dv, T, H * Dk).permute(0, 2, 3, 1)  # [B, T, H*Dk, Dv]
    o = (q.reshape(Bsz, T, H * Dk, 1) * mem).reshape(Bsz, T, H, Dk, Dv).sum(3)
    state = None
    if output_final_state:
        state = (history, xT.reshape(Bsz, Dv, H * Dk, -1).permute(0, 2, 3, 1))
    return o, state
