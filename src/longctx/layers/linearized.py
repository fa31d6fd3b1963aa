"""Building blocks of linearized LLMs (You et al., "When Linear Attention Meets Autoregressive
Decoding", ICML 2024, arXiv 2406.07368).

Two mixers:

* ``aug_linear_attention`` — the paper's *augmented* linear attention (§4.1): linear attention
  plus a local branch, a depthwise convolution on the **values** V, added to the attention output
  before the output projection: ``o = LA(q, k, v) + DWConv(v)``. Earlier augmentations (from
  vision LAs) used a centred, "same"-padded kernel, which lets token t read v_{t+1..}: information
  leaks from the future in a decoder. The paper *masks* the future half of the kernel; the
  authors use a 63-tap kernel, so 32 causal taps remain (the token itself and 31 before it). A
  masked (2K-1)-tap kernel is exactly a K-tap causal conv, which is what is stored here
  (``conv_size`` = K, left padding only), so no future weight exists to leak through. For
  tree-based speculative decoding (§4.2) the conv is *unfolded* (img2col) so every candidate's
  window holds its own ancestors only: see ``forward_tree`` and ``layers/tree.py``.
* ``grouped_linear_attention`` — the grouped linear attention the paper builds on (§3-4; FLASH's
  causal mixed chunk attention, Hua et al. 2022 §3.2): the cumulative KV sums are taken per group
  of ``group_size`` tokens, and the query's own group is covered by a local squared-ReLU
  attention. q and k are L2-normalised per head (as in the authors' linearized LLaMA). Decode
  state: the group-level KV sum plus the current group's keys/values (``ops/grouped_linear_attention``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads, split_heads
from longctx.layers.linear_attention import LinearAttention, LinearAttentionConfig
from longctx.layers.tree import check_parents, tree_attention_mask, unfolded_causal_conv
from longctx.ops.common import default_scale
from longctx.ops.grouped_linear_attention import (
    chunk_grouped_linear_attention,
    grouped_linear_attention_step,
)
from longctx.ops.linear_attention import chunk_linear_attention, feature_dim, linear_attention_step
from longctx.ops.linear_attention.feature_maps import apply_feature_map

EPS = 1e-6  # added to the linear-attention normaliser, the same in every path


# ---- augmented linear attention --------------------------------------------------------------


@dataclass
class AugmentedLinearAttentionConfig(LinearAttentionConfig):
    # inherits feature_map ("elu+1"), normalize (True), feature_dim, chunk_size from linear attention
    conv_size: int = 32  # causal taps K of the masked DWConv on V (paper: 63 taps, future 31 masked)

    causal_modes: ClassVar[tuple[bool, ...]] = (True,)  # the masked DWConv is the causal form

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "conv_size", self.conv_size)


@dataclass
class AugmentedLinearAttentionState(State):
    S: Tensor  # [B, H, F, Dv] sum of phi(k) v^T
    z: Tensor  # [B, H, F] sum of phi(k)
    buf: Tensor  # [B, K - 1, d_model] the last K - 1 values (merged heads), oldest first


class AugmentedLinearAttention(LinearAttention):
    """Linear attention + causal (masked) depthwise conv on V. ``x [B, T, d] -> y [B, T, d]``.

    The projections ``wq, wk, wv, wo`` and ``_inputs`` are linear attention's (inherited)."""

    name = "aug_linear_attention"
    state_class = AugmentedLinearAttentionState

    def __init__(self, config: AugmentedLinearAttentionConfig) -> None:
        super().__init__(config)
        c = config
        # F.conv1d depthwise layout [d, 1, K]; tap K-1 multiplies the current token. Zero init (as
        # the authors do): the layer starts as plain linear attention.
        self.conv_weight = nn.Parameter(torch.zeros(c.d_model, 1, c.conv_size))

    def _la_options(self) -> dict:
        return {"feature_map": self.config.feature_map, "normalize": self.config.normalize, "eps": EPS}

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, T, d]`` -> q, k ``[B, T, H, Dk]``, v ``[B, T, H, Dv]`` (linear attention's)."""
        inputs, _ = self._inputs(x, None)
        return inputs["q"], inputs["k"], inputs["v"]

    def _conv(self, v: Tensor, past: Tensor) -> tuple[Tensor, Tensor]:
        """Causal depthwise conv: ``v [B, T, d]``, ``past [B, K-1, d]`` -> (y [B, T, d], new past)."""
        K = self.config.conv_size
        vp = torch.cat([past.to(v.dtype), v], dim=1)  # [B, K - 1 + T, d], left context only
        y = F.conv1d(vp.transpose(1, 2), self.conv_weight, groups=v.shape[-1]).transpose(1, 2)
        return y, vp[:, vp.shape[1] - (K - 1):]

    def forward(self, x: Tensor, state: AugmentedLinearAttentionState | None = None):
        """``x [B, T, d]`` -> ``(y [B, T, d], state or None)``; with a state, continue the sequence."""
        self.check_input(x)
        B, T, d = x.shape
        q, k, v = self._project(x)
        opts = self._la_options()
        if state is None:
            o, _ = chunk_linear_attention(q, k, v, **opts, chunk_size=self.config.chunk_size)
            y, _ = self._conv(merge_heads(v), x.new_zeros(B, self.config.conv_size - 1, d))
            return self.wo(merge_heads(o) + y), None
        self.check_state(state, B)
        if T == 1:
            o, (S, z) = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], (state.S, state.z), **opts)
            o = o.unsqueeze(1)
        else:
            o, (S, z) = chunk_linear_attention(q, k, v, **opts, initial_state=(state.S, state.z),
                                               output_final_state=True, chunk_size=self.config.chunk_size)
        y, buf = self._conv(merge_heads(v), state.buf)
        return self.wo(merge_heads(o) + y), AugmentedLinearAttentionState(self.name, S, z, buf)

    def forward_tree(self, x: Tensor, parents: Tensor, state: AugmentedLinearAttentionState) -> Tensor:
        """Verify a token tree in one call (You et al. 2024, §4.2): outputs only, state unchanged.

        x [B, N, d] the tree's tokens in topological order; parents [N] int64 (``-1`` = a child of
        the last token in ``state``). Node i sees the state plus its own ancestors (and itself):
        the linear attention through the tree mask, the conv through ``unfolded_causal_conv``.
        Equals ``forward(path, state)`` on every root-to-node path. Returns y [B, N, d].
        """
        self.check_input(x)
        B, N, _ = x.shape
        self.check_state(state, B)
        if check_parents(parents) != N:
            raise ValueError(f"{self.name}.forward_tree: parents must have N = x.shape[1] = {N} "
                             f"entries, got {parents.shape[0]}")
        c = self.config
        q, k, v = self._project(x)
        dtype = torch.promote_types(x.dtype, torch.float32)
        qf = apply_feature_map(q.to(dtype) * default_scale(None, c.qk_dim), c.feature_map)  # [B, N, H, F]
        kf = apply_feature_map(k.to(dtype), c.feature_map)  # [B, N, H, F]
        mask = tree_attention_mask(parents.to(x.device))  # [N, N]: j is i or an ancestor of i
        A = torch.einsum("bihf,bjhf->bhij", qf, kf).masked_fill(~mask, 0.0)  # [B, H, N, N]
        S, z = state.S.to(dtype), state.z.to(dtype)
        num = A @ v.to(dtype).transpose(1, 2) + qf.transpose(1, 2) @ S  # [B, H, N, Dv]
        if c.normalize:  # Katharopoulos et al. 2020, §3.3, over the state and the ancestors
            den = A.sum(-1) + (qf.transpose(1, 2) @ z.unsqueeze(-1)).squeeze(-1)  # [B, H, N]
            num = num / (den + EPS).unsqueeze(-1)
        o = num.transpose(1, 2).to(x.dtype)  # [B, N, H, Dv]
        y = unfolded_causal_conv(merge_heads(v), self.conv_weight, parents.to(x.device), state.buf)
        return self.wo(merge_heads(o) + y)

    def init_state(self, batch_size: int, device=None, dtype=None) -> AugmentedLinearAttentionState:
        c = self.config
        dtype = dtype or self.param_dtype()
        Fd = feature_dim(c.feature_map, c.qk_dim)
        return AugmentedLinearAttentionState(
            self.name,
            torch.zeros(batch_size, c.n_heads, Fd, c.head_dim, device=device, dtype=dtype),
            torch.zeros(batch_size, c.n_heads, Fd, device=device, dtype=dtype),
            torch.zeros(batch_size, c.conv_size - 1, c.d_model, device=device, dtype=dtype),
        )

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        Fd = feature_dim(c.feature_map, c.qk_dim)
        per_row = c.n_heads * Fd * (c.head_dim + 1) + (c.conv_size - 1) * c.d_model
        return batch_size * per_row * dtype_bytes(dtype)


# ---- grouped linear attention ----------------------------------------------------------------


@dataclass
class GroupedLinearAttentionConfig(MixerConfig):
    group_size: int = 64  # G: tokens per group; KV sums are accumulated per group (authors: 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "group_size", self.group_size)


@dataclass
class GroupedLinearAttentionState(State):
    S: Tensor  # [B, H, D, D] sum of k v^T over the completed groups
    k_buf: Tensor  # [B, G - 1, H, D] keys of the current group (slots >= n are zero)
    v_buf: Tensor  # [B, G - 1, H, D] values of the current group
    n: Tensor  # [] int64: tokens in the current group, 0 <= n < G


class GroupedLinearAttention(Mixer):
    """Grouped linear attention: local squared-ReLU attention inside groups of G tokens + linear
    attention over the per-group KV sums of earlier groups. ``x [B, T, d] -> y [B, T, d]``."""

    name = "grouped_linear_attention"
    state_class = GroupedLinearAttentionState

    def __init__(self, config: GroupedLinearAttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wk = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wv = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wo = nn.Linear(c.d_model, c.d_model, bias=False)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, T, d]`` -> q, k, v ``[B, T, H, D]``; q, k unit-norm per head, so |q.k| <= 1."""
        H = self.config.n_heads
        q = F.normalize(split_heads(self.wq(x), H), dim=-1)
        k = F.normalize(split_heads(self.wk(x), H), dim=-1)
        return q, k, split_heads(self.wv(x), H)

    def forward(self, x: Tensor, state: GroupedLinearAttentionState | None = None):
        """``x [B, T, d]`` -> ``(y [B, T, d], state or None)``; with a state, continue the sequence."""
        self.check_input(x)
        q, k, v = self._project(x)
        opts = {"group_size": self.config.group_size, "scale": 1.0}
        if state is None:
            o, _ = chunk_grouped_linear_attention(q, k, v, **opts)
            return self.wo(merge_heads(o)), None
        self.check_state(state, x.shape[0])
        old = (state.S, state.k_buf, state.v_buf, state.n)
        if x.shape[1] == 1:
            o, new = grouped_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], old, **opts)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_grouped_linear_attention(q, k, v, **opts, initial_state=old,
                                                    output_final_state=True)
        return self.wo(merge_heads(o)), GroupedLinearAttentionState(self.name, *new)

    def init_state(self, batch_size: int, device=None, dtype=None) -> GroupedLinearAttentionState:
        c = self.config
        dtype = dtype or self.param_dtype()
        H, D, G = c.n_heads, c.head_dim, c.group_size
        return GroupedLinearAttentionState(
            self.name,
            torch.zeros(batch_size, H, D, D, device=device, dtype=dtype),
            torch.zeros(batch_size, G - 1, H, D, device=device, dtype=dtype),
            torch.zeros(batch_size, G - 1, H, D, device=device, dtype=dtype),
            torch.zeros((), dtype=torch.int64, device=device),
        )

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the float tensors: S plus the G - 1 buffer slots (constant in ``seqlen``)."""
        c = self.config
        H, D, G = c.n_heads, c.head_dim, c.group_size
        return batch_size * (H * D * D + 2 * (G - 1) * H * D) * dtype_bytes(dtype)
