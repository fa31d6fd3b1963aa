"""The state of grouped linear attention, shared by its three forms, and its checks.

State = ``(S, k_buf, v_buf, n)``:
  * ``S [B, H, Dk, Dv]``: sum of ``k_s v_s^T`` over every *completed* group;
  * ``k_buf [B, G - 1, H, Dk]``, ``v_buf [B, G - 1, H, Dv]``: the tokens of the current,
    incomplete group (slots ``>= n`` are zero);
  * ``n``: 0-dim int64, how many tokens the current group holds (``0 <= n < G``), the same for
    every row of the batch (rows of one batch advance together).
A group is folded into ``S`` the moment its ``G``-th token arrives, so ``G - 1`` slots suffice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from longctx.ops.common.checks import check_positive_int, check_state

GroupedState = tuple[Tensor, Tensor, Tensor, Tensor]
STATE_DOC = "(S [B, H, Dk, Dv], k_buf [B, G-1, H, Dk], v_buf [B, G-1, H, Dv], n [] int64)"


def check_group_size(group_size: object) -> int:
    return check_positive_int("group_size", group_size)


def check_grouped_state(op: str, name: str, state: object, B: int, H: int, G: int, Dk: int,
                        Dv: int) -> None:
    """Raise a clear error unless ``state`` is a grouped-linear-attention state of these sizes."""
    if not isinstance(state, (tuple, list)) or len(state) != 4:
        got = type(state).__name__ + (f" of length {len(state)}" if isinstance(state, (tuple, list)) else "")
        raise ValueError(f"{op}: {name} must be a tuple {STATE_DOC}, got {got}")
    S, k_buf, v_buf, n = state
    check_state(op, f"{name}[0] (S)", S, (B, H, Dk, Dv))
    check_state(op, f"{name}[1] (k_buf)", k_buf, (B, G - 1, H, Dk))
    check_state(op, f"{name}[2] (v_buf)", v_buf, (B, G - 1, H, Dv))
    if not isinstance(n, Tensor) or n.dim() != 0 or n.dtype != torch.int64:
        got = f"shape {list(n.shape)} dtype {n.dtype}" if isinstance(n, Tensor) else type(n).__name__
        raise ValueError(f"{op}: {name}[3] (n) must be a 0-dim int64 tensor, got {got}")
    if not 0 <= int(n) < G:
        raise ValueError(f"{op}: {name}[3] (n) counts the tokens of the current group and must lie "
                         f"in [0, group_size={G}), got {int(n)}")


def initial_grouped_state(op: str, name: str, state: GroupedState | None, like: Tensor,
                          dims: tuple[int, int, int, int, int], dtype: torch.dtype) -> GroupedState:
    """The validated state in ``dtype`` (``n`` stays int64), zeros if ``state`` is None.

    ``dims = (B, H, G, Dk, Dv)``.
    """
    B, H, G, Dk, Dv = dims
    if state is None:
        return (like.new_zeros(B, H, Dk, Dv, dtype=dtype), like.new_zeros(B, G - 1, H, Dk, dtype=dtype),
                like.new_zeros(B, G - 1, H, Dv, dtype=dtype),
                torch.zeros((), dtype=torch.int64, device=like.device))
    check_grouped_state(op, name, state, B, H, G, Dk, Dv)
    S, k_buf, v_buf, n = state
    return S.to(dtype), k_buf.to(dtype), v_buf.to(dtype), n


def split_final_state(S: Tensor, k_all: Tensor, v_all: Tensor, complete: int, G: int) -> GroupedState:
    """State after a sequence: ``S`` over the completed groups; the tokens of ``k_all, v_all``
    ``[B, L, H, D]`` from ``complete`` on (the incomplete group, fewer than G) go to the buffers."""
    r = k_all.shape[1] - complete  # tokens of the incomplete group, < G
    pad = G - 1 - r
    k_buf = torch.cat([k_all[:, complete:], k_all.new_zeros(k_all.shape[0], pad, *k_all.shape[2:])], 1)
    v_buf = torch.cat([v_all[:, complete:], v_all.new_zeros(v_all.shape[0], pad, *v_all.shape[2:])], 1)
    return S, k_buf, v_buf, torch.tensor(r, dtype=torch.int64, device=S.device)
