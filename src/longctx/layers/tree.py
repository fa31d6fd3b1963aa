"""Token trees for tree-based speculative decoding (You et al., ICML 2024, arXiv 2406.07368, §4.2).

A draft model proposes several candidate continuations at once, stored as a tree of ``N`` tokens
(``parents[i] < i``, ``-1`` = a root, whose parent is the last token already in the decode
state). The target model verifies the whole tree in one call. For attention that takes a tree
mask (node ``i`` sees the past and its own ancestors only, :func:`tree_attention_mask`). For a
causal convolution the paper's point is that a sliding window over the *flattened* tree would
mix sibling branches; it instead *unfolds* the convolution (img2col): each node gathers its own
window of ancestors and takes a dot product with the kernel (:func:`unfolded_causal_conv`).

Shapes: ``parents [N]`` int64; ``x [B, N, d]``; conv ``weight [d, 1, K]`` (``F.conv1d`` depthwise
layout); ``past [B, K - 1, d]`` oldest first.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_parents(parents: object) -> int:
    """Validate ``parents [N]`` int64 with ``-1 <= parents[i] < i``; return ``N``."""
    if not isinstance(parents, Tensor):
        raise TypeError(f"parents must be a torch.Tensor [N] of int64, got {type(parents).__name__}")
    if parents.dim() != 1 or parents.dtype != torch.int64:
        raise ValueError(f"parents must be a 1-D int64 tensor [N], got shape {list(parents.shape)} "
                         f"dtype {parents.dtype}")
    N = parents.shape[0]
    idx = torch.arange(N, device=parents.device)
    bad = (parents < -1) | (parents >= idx)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"parents[i] must satisfy -1 <= parents[i] < i (topological order, -1 = "
                         f"root); got parents[{i}] = {int(parents[i])}")
    return N


def tree_ancestors(parents: Tensor, depth: int) -> Tensor:
    """Ancestor table of a token tree.

    parents [N] int64, parents[i] < i or -1 (a root: its parent is the last token already in the
    state). Returns [N, depth]: column j is the j-th ancestor of node i (0 = i itself, 1 = its
    parent, ...); ancestors that lie before the tree are encoded as negative numbers -1, -2, ... =
    the last, second-to-last, ... token of the past (conv buffer).
    """
    N = check_parents(parents)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    cols = [torch.arange(N, device=parents.device)]
    for _ in range(1, depth):
        prev = cols[-1]  # [N]
        up = parents[prev.clamp_min(0)] if N else prev
        cols.append(torch.where(prev >= 0, up, prev - 1))  # past tokens: one further back
    return torch.stack(cols, dim=1)  # [N, depth]


def tree_attention_mask(parents: Tensor) -> Tensor:
    """[N, N] bool, True where node j is node i or an ancestor of i."""
    N = check_parents(parents)
    mask = torch.zeros(N, N, dtype=torch.bool, device=parents.device)
    if N == 0:
        return mask
    anc = tree_ancestors(parents, N)  # [N, N]; a chain of N nodes is the deepest tree
    rows = torch.arange(N, device=parents.device).unsqueeze(1).expand(N, N)
    inside = anc >= 0
    mask[rows[inside], anc[inside]] = True
    return mask


def tree_depths(parents: Tensor) -> Tensor:
    """[N] int64: the number of tree ancestors of each node (0 for a root)."""
    return tree_attention_mask(parents).sum(dim=1) - 1


def unfolded_causal_conv(x: Tensor, weight: Tensor, parents: Tensor, past: Tensor | None,
                         bias: Tensor | None = None) -> Tensor:
    """Depthwise causal conv over a token tree (img2col; You et al. 2024, §4.2).

    x [B, N, d], weight [d, 1, K] (F.conv1d's depthwise layout, kernel applied so that a chain
    parents = [-1, 0, 1, ...] reproduces F.conv1d on cat([past, x]) exactly), past [B, K-1, d]
    (oldest first) or None (zeros). Returns y [B, N, d]:
    y_i = bias + sum_j weight[:, 0, K-1-j] * x[ancestor_j(i)].
    """
    N = check_parents(parents)
    if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[1] != N:
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"unfolded_causal_conv: x must be [B, N={N}, d], got {shape}")
    B, _, d = x.shape
    if not isinstance(weight, Tensor) or weight.dim() != 3 or weight.shape[:2] != (d, 1):
        shape = list(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"unfolded_causal_conv: weight must be [d={d}, 1, K], got {shape}")
    K = weight.shape[2]
    if past is None:
        past = x.new_zeros(B, K - 1, d)
    elif not isinstance(past, Tensor) or tuple(past.shape) != (B, K - 1, d):
        shape = list(past.shape) if isinstance(past, Tensor) else type(past).__name__
        raise ValueError(f"unfolded_causal_conv: past must be [B={B}, K-1={K - 1}, d={d}], got {shape}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (d,)):
        shape = list(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"unfolded_causal_conv: bias must be [d={d}], got {shape}")
    xp = torch.cat([past.to(x.dtype), x], dim=1)  # [B, K-1+N, d]; node i at K-1+i, past -m at K-1-m
    idx = tree_ancestors(parents, K) + (K - 1)  # [N, K], >= 0 since the j-th ancestor is >= -j
    windows = xp[:, idx]  # [B, N, K, d]: window j = ancestor j (img2col)
    w = weight[:, 0, :].flip(-1).transpose(0, 1)  # [K, d]: w[j] = weight[:, 0, K-1-j]
    y = (windows * w).sum(dim=2)  # [B, N, d]
    return y if bias is None else y + bias
