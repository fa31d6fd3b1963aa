"""Small pieces shared by several layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from longctx.ops.common import check_positive_int


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """``[B, T, n_heads * D] -> [B, T, n_heads, D]``."""
    B, T, _ = x.shape
    return x.view(B, T, n_heads, -1)


def merge_heads(x: Tensor) -> Tensor:
    """``[B, T, H, D] -> [B, T, H * D]``."""
    B, T = x.shape[:2]
    return x.reshape(B, T, -1)


def check_positive(owner: str, name: str, value: object) -> None:
    check_positive_int(f"{owner}.{name}", value)


def check_choice(owner: str, name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {list(choices)}, got {value!r}")


def heads_of_size(owner: str, head_size: int, width: int, width_desc: str) -> int:
    """How many heads of ``head_size`` channels split ``width`` (0 when ``head_size`` is 0: the
    config's n_heads stands); ValueError naming ``owner.head_size`` and ``width_desc`` (e.g.
    ``"d_model=64"``) when it is negative, not an integer, or does not divide ``width``."""
    if not isinstance(head_size, int) or head_size < 0:
        raise ValueError(f"{owner}.head_size must be a non-negative integer, got {head_size!r}")
    if head_size and width % head_size:
        raise ValueError(f"{owner}: head_size={head_size} must divide {width_desc}")
    return width // head_size if head_size else 0


def stacked_weight(module: nn.Module, weights: list[Tensor]) -> Tensor:
    """``weights`` (Linear weights [out_i, d_model]) stacked [sum out_i, d_model], for one GEMV per
    decode step in place of one per projection; cached on ``module`` (never in its state dict)
    until a weight is replaced or changed in place (its storage or version moves)."""
    key = tuple((w.data_ptr(), w._version, w.dtype) for w in weights)
    cached = module.__dict__.get("_stacked_weight_cache")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, torch.cat([w.detach() for w in weights]))
        module.__dict__["_stacked_weight_cache"] = cached
    return cached[1]


def step_state(state: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A state tensor for a fused decode step: (it in ``dtype``, contiguous; where the step writes
    the new one: the tensor itself inside ``backend.inplace_decode`` (a CUDA graph's static buffers),
    else a new tensor, so the old state stays as it was)."""
    from longctx.ops.common.backend import decode_inplace

    t = state.to(dtype).contiguous()
    return t, state if decode_inplace(state, dtype) else torch.empty_like(t)


def norm_eps(norm: nn.RMSNorm, dtype: torch.dtype) -> float:
    """The epsilon ``norm`` applies: its own, or ``dtype``'s machine epsilon where it has none."""
    return norm.eps if norm.eps is not None else torch.finfo(dtype).eps


def wants_fused_step(module: nn.Module, op: str, x: Tensor, state: tuple[Tensor, ...], K: int, V: int,
                     conv_size: int = 1) -> bool:
    """Whether ``module`` decodes this call with its fused whole-layer step ``op``
    (``ops.common.triton_layer_step``): one token, no gradient wanted (the kernel has no
    backward), heads of key dim K and value dim V it can hold (``backend.layer_step_unsupported``),
    Triton installed, and the backend asking for it ("auto" only once it has passed on a GPU,
    "triton" always)."""
    from longctx.ops.common.backend import has_triton, layer_step_unsupported, wants_triton

    if x.shape[1] != 1:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        return False
    if not has_triton() or layer_step_unsupported(K, V, conv_size) is not None:
        return False
    return wants_triton(op, None, x, *state)
