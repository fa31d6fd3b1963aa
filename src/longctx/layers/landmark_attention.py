"""Landmark attention (Mohtashami & Jaggi 2023, "Landmark Attention: Random-Access Infinite
Context Length for Transformers", arXiv 2305.16300) as a drop-in causal mixer.

The sequence is cut into blocks of ``block_size`` tokens; each complete block has a landmark key,
and a query reaches an earlier block's tokens only through that landmark (the grouped softmax,
see ``longctx.ops.landmark_attention``). Training and prefill use the blocked op (exact grouped
softmax over all blocks); decode (T == 1 with a state) retrieves the ``top_k`` blocks per head
with the highest landmark scores and attends to those and the open block only.

Deviation from the paper (stated plainly): the paper inserts a landmark *token* after every
block into the token stream, so earlier layers compute its representation. A mixer here maps
``(B, T, d) -> (B, T, d)`` with no extra tokens, so the landmark is formed inside the layer: its
input is a learned landmark embedding ``e_L`` plus the mean of the block's inputs
(``landmark="mean"``) or plus the block's last input (``landmark="last"``), projected by the
layer's ``W_k`` and rotated (RoPE) at the position of the block's last token. Its value is never
used (as in the paper, landmarks carry no value). Keys are rotated at their absolute positions;
the paper's position remapping for retrieved blocks at inference is not reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_choice, check_positive, merge_heads
from longctx.ops.landmark_attention import chunk_landmark_attention, landmark_attention_step
from longctx.ops.landmark_attention.state import cache_length

LANDMARKS = ("mean", "last")


@dataclass
class LandmarkAttentionConfig(AttentionConfig):
    block_size: int = 64  # tokens per block (the paper's l_block); one landmark per complete block
    top_k: int | None = None  # decode: blocks retrieved per head by landmark score; None = all
    landmark: str = "mean"  # landmark input: e_L + the block's "mean" input, or its "last" one

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "block_size", self.block_size)
        if self.top_k is not None:
            check_positive(name, "top_k", self.top_k)
        check_choice(name, "landmark", self.landmark, LANDMARKS)


@dataclass
class LandmarkState(State):
    k_blocks: Tensor  # [B, N, block_size, Hk, D] rotated keys of the N complete blocks
    v_blocks: Tensor  # [B, N, block_size, Hk, D]
    k_landmark: Tensor  # [B, N, Hk, D] the complete blocks' landmark keys (rotated)
    k_tail: Tensor  # [B, r, Hk, D] the open block's r < block_size keys
    v_tail: Tensor  # [B, r, Hk, D]
    x_sum: Tensor  # [B, d_model] sum of the open block's inputs (for landmark="mean")
    top_k: int | None = None  # decode retrieval for this stream (None: the config's top_k)

    def cache(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.k_blocks, self.v_blocks, self.k_landmark, self.k_tail, self.v_tail


class LandmarkAttention(AttentionMixer):
    """Causal landmark attention; ``last_selected`` holds the block indices ``[B, H, k]`` that
    the last decode step retrieved (``None`` before any decode step)."""

    name = "landmark_attention"
    state_class = LandmarkState

    def __init__(self, config: LandmarkAttentionConfig) -> None:
        super().__init__(config)
        self.landmark_embedding = nn.Parameter(0.02 * torch.randn(config.d_model))  # e_L
        self.last_selected: Tensor | None = None

    def forward(self, x: Tensor, state: LandmarkState | None = None
                ) -> tuple[Tensor, LandmarkState | None]:
        self.check_input(x)
        c = self.config
        B, T, _ = x.shape
        if state is not None:
            self.check_state(state, B)
        cache = None if state is None else state.cache()
        S = cache_length(cache)
        q, k, v = self.project(x, S)  # [B, T, H, D], [B, T, Hk, D] x 2
        x_sum = x.new_zeros(B, c.d_model) if state is None else state.x_sum
        k_lm, x_sum = self._landmark_keys(x, x_sum, S)  # [B, n, Hk, D]: blocks completed now
        if state is None:
            o, _ = chunk_landmark_attention(q, k, v, k_lm, c.block_size, chunk_size=c.chunk_size)
            return self.wo(merge_heads(o)), None
        if T == 1:
            o, new, self.last_selected = landmark_attention_step(
                q[:, 0], k[:, 0], v[:, 0], k_lm[:, 0] if k_lm.shape[1] else None, cache,
                c.block_size, top_k=c.top_k if state.top_k is None else state.top_k,
                return_selected=True,
            )
            o = o.unsqueeze(1)
        else:
            o, new = chunk_landmark_attention(q, k, v, k_lm, c.block_size, initial_state=cache,
                                              output_final_state=True, chunk_size=c.chunk_size)
        return self.wo(merge_heads(o)), LandmarkState(self.name, *new, x_sum, state.top_k)

    def _landmark_keys(self, x: Tensor, x_sum: Tensor, S: int) -> tuple[Tensor, Tensor]:
        """Landmark keys of the blocks that ``x`` (positions S .. S+T-1) completes, and the new
        sum of the open block's inputs."""
        c = self.config
        bs, (B, T, d) = c.block_size, x.shape
        r, n0 = S % bs, S // bs  # tokens already in the open block; complete blocks so far
        n = (r + T) // bs
        if c.landmark == "mean":
            # row i <-> position n0*bs + i; the open block's earlier inputs enter summed in row 0
            head = [x_sum[:, None], x.new_zeros(B, r - 1, d)] if r > 0 else []
            xp = torch.cat([*head, x], dim=1)  # [B, r + T, d]
            x_lm = xp[:, : n * bs].unflatten(1, (n, bs)).sum(dim=2) / bs  # [B, n, d] block means
            x_sum = xp[:, n * bs :].sum(dim=1)
        else:  # "last": the input of each block's last token
            x_lm = x[:, torch.arange(n, device=x.device) * bs + bs - 1 - r]
        if n == 0:
            return x.new_zeros(B, 0, c.kv_heads, c.head_dim), x_sum
        blocks = torch.arange(n, device=x.device)
        last_pos = (n0 + blocks + 1) * bs - 1  # the landmark sits at its block's last position
        _, k_lm, _ = self.project(x_lm + self.landmark_embedding, last_pos - blocks)
        return k_lm, x_sum

    def init_state(self, batch_size: int, device=None, dtype=None) -> LandmarkState:
        c = self.config
        dtype = dtype or self.param_dtype()
        Hk, D, bs = c.kv_heads, c.head_dim, c.block_size

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(batch_size, *shape, device=device, dtype=dtype)

        return LandmarkState(self.name, zeros(0, bs, Hk, D), zeros(0, bs, Hk, D), zeros(0, Hk, D),
                             zeros(0, Hk, D), zeros(0, Hk, D), zeros(c.d_model))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Every key and value, one landmark key per complete block, and the input sum."""
        c = self.config
        per_row = (2 * seqlen + seqlen // c.block_size) * c.kv_heads * c.head_dim + c.d_model
        return batch_size * per_row * dtype_bytes(dtype)
