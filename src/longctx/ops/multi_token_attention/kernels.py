"""The two learned kernels of Multi-Token Attention (Golovneva et al. 2025, §3) and the blocked
attention step that the chunked and decode forms share.

- key-query convolution ``kq_kernel [H, c_q, c_k]``: ``kq_kernel[h, i', b]`` is the paper's
  ``theta_{i', j'}`` of head h with ``j' = b - c_k // 2``; it multiplies the logit of query
  ``i - i'`` (``i' = 0 .. c_q - 1``: the current and previous queries) and key ``j - j'``
  (``j' = -floor(c_k / 2) .. ceil(c_k / 2) - 1``: keys around j).
- head mixing ``head_kernel [H // c_h, c_h, c_h]``: within group g of c_h consecutive heads,
  ``A_new[g*c_h + m] = sum_n head_kernel[g, m, n] * A[g*c_h + n]`` (on attention weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _shape(t: Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_kernels(
    op: str, kq_kernel: object, head_kernel: object, H: int, like: Tensor
) -> tuple[int, int, int]:
    """Validate ``kq_kernel [H, c_q, c_k]`` and ``head_kernel [H // c_h, c_h, c_h]`` (or None).

    Returns ``(c_q, c_k, c_h)``; ``c_h = 1`` when there is no head mixing.
    """
    for name, t in (("kq_kernel", kq_kernel), ("head_kernel", head_kernel)):
        if t is None and name == "head_kernel":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != like.dtype:
            raise TypeError(f"{op}: {name} must have q's dtype {like.dtype}, got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{op}: {name} must be on q's device {like.device}, got {t.device}")
    if kq_kernel.dim() != 3 or kq_kernel.shape[0] != H:
        raise ValueError(
            f"{op}: kq_kernel must have shape [H={H}, c_q, c_k] (one query x key kernel per "
            f"query head), got {_shape(kq_kernel)}"
        )
    c_q, c_k = kq_kernel.shape[1], kq_kernel.shape[2]
    if c_q < 1 or c_k < 1:
        raise ValueError(
            f"{op}: kq_kernel sizes c_q and c_k must be >= 1, got {_shape(kq_kernel)}"
        )
    if head_kernel is None:
        return c_q, c_k, 1
    if head_kernel.dim() != 3 or head_kernel.shape[1] != head_kernel.shape[2]:
        raise ValueError(
            f"{op}: head_kernel must have shape [H // c_h, c_h, c_h], got {_shape(head_kernel)}"
        )
    c_h = head_kernel.shape[1]
    if c_h < 1 or H % c_h != 0:
        raise ValueError(
            f"{op}: the head-group size c_h={c_h} (head_kernel {_shape(head_kernel)}) must "
            f"divide the number of query heads H={H}"
        )
    if head_kernel.shape[0] != H // c_h:
        raise ValueError(
            f"{op}: head_kernel must have shape [H // c_h = {H // c_h}, {c_h}, {c_h}] for H={H}, "
            f"got {_shape(head_kernel)}"
        )
    return c_q, c_k, c_h


def identity_kq_kernel(H: int, c_q: int, c_k: int, *, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """``[H, c_q, c_k]`` with ``theta_{0, 0} = 1`` and zeros elsewhere: the convolution is the
    identity, so MTA starts as plain attention (the paper's identity initialisation)."""
    kernel = torch.zeros(H, c_q, c_k, dtype=dtype, device=device)
    kernel[:, 0, c_k // 2] = 1.0  # i' = 0, j' = 0
    return kernel


def identity_head_kernel(H: int, c_h: int, *, dtype: torch.dtype | None = None,
                         device: torch.device | str | None = None) -> Tensor:
    """``[H // c_h, c_h, c_h]`` identity matrices: head mixing that leaves every head alone."""
    return torch.eye(c_h, dtype=dtype, device=device).repeat(H // c_h, 1, 1)


def key_query_conv(z: Tensor, kq_kernel: Tensor) -> Tensor:
    """``z [B, H, I + c_q - 1, L]`` (row r holds query ``r - (c_q - 1)``) -> ``[B, H, I, L]``.

    ``out[i, j] = sum_{i', j'} theta[i', j'] z[row of query i - i', j - j']``, keys outside
    ``[0, L)`` read as zero. ``F.conv2d`` is a cross-correlation, so the kernel is flipped on
    both axes; the key axis is padded by ``ceil(c_k/2) - 1`` on the left, ``floor(c_k/2)`` right.
    """
    H, _, c_k = kq_kernel.shape
    zp = F.pad(z, ((c_k + 1) // 2 - 1, c_k // 2))  # [B, H, R, L + c_k - 1]
    return F.conv2d(zp, kq_kernel.flip(1, 2).unsqueeze(1), groups=H)  # [B, H, I, L]


def mix_heads(a: Tensor, head_kernel: Tensor) -> Tensor:
    """``a [B, H, I, J]`` -> ``[B, H, I, J]``, mixing weights within each group of c_h heads."""
    B, H, I, J = a.shape
    G, c_h, _ = head_kernel.shape
    mixed = torch.einsum("bgnij,gmn->bgmij", a.reshape(B, G, c_h, I, J), head_kernel)
    return mixed.reshape(B, H, I, J)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are computed in float32 (logits, convolution, softmax)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def attend_block(
    q_rows: Tensor,
    k_b: Tensor,
    v_b: Tensor,
    kq_kernel: Tensor,
    head_kernel: Tensor | None,
    scale: float,
    causal: bool,
    pos0: int,
) -> Tensor:
    """MTA for one block of queries, against keys ``0 .. L_b - 1`` (absolute positions).

    ``q_rows [B, I + c_q - 1, Hk, G, D]``: row r is the query at position ``pos0 + r``, the first
    ``c_q - 1`` rows are only read by the query convolution; ``k_b [B, L_b, Hk, D]``,
    ``v_b [B, L_b, Hk, Dv]``. Returns ``o [B, I, H, Dv]`` for the last I rows.
    """
    B, R, Hk, G, _ = q_rows.shape
    L, Dv = k_b.shape[1], v_b.shape[-1]
    c_q = kq_kernel.shape[1]
    I, H = R - (c_q - 1), Hk * G
    acc = acc_dtype(q_rows.dtype)
    z = scale * torch.einsum("brhgd,bjhd->bhgrj", q_rows.to(acc), k_b.to(acc))
    z = z.reshape(B, H, R, L)  # head h = kv head h // G, as in GQA
    key_pos = torch.arange(L, device=z.device)
    if causal:  # Mask_0: a row's future logits are zero before the convolution
        row_pos = pos0 + torch.arange(R, device=z.device)
        z = z.masked_fill(key_pos[None, :] > row_pos[:, None], 0.0)
    logits = key_query_conv(z, kq_kernel.to(acc))  # [B, H, I, L]
    if causal:  # Mask_-inf: and -inf after it, so the softmax never sees a future key
        q_pos = pos0 + (c_q - 1) + torch.arange(I, device=z.device)
        logits = logits.masked_fill(key_pos[None, :] > q_pos[:, None], float("-inf"))
    a = torch.softmax(logits, dim=-1)
    if head_kernel is not None:
        a = mix_heads(a, head_kernel.to(acc))  # post-softmax head mixing
    o = torch.einsum("bhgij,bjhd->bihgd", a.reshape(B, Hk, G, I, L), v_b.to(acc))
    return o.reshape(B, I, H, Dv).to(q_rows.dtype)


__all__ = [
    "attend_block",
    "check_kernels",
    "identity_head_kernel",
    "identity_kq_kernel",
    "key_query_conv",
    "mix_heads",
]
