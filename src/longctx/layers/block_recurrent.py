"""Block-Recurrent Transformer (Hutchins, Schlag, Wu, Dyer & Neyshabur 2022), as one mixer.

The sequence is cut into blocks of ``block_size`` tokens; ``n_state`` recurrent state vectors
are carried from block to block (§3):

- vertical (tokens): each token attends, causally, to the current block so far and the whole
  previous block (sliding window; RoPE at absolute positions) and, by cross-attention, to the
  state vectors of the block's start; the two results are concatenated and projected.
- horizontal (state): the state vectors attend to themselves and, by cross-attention, to the
  block's tokens (concatenated, projected: the candidate ``z``), then a gate updates them:
  ``fixed``: ``s' = g * s + (1 - g) * z`` with a learned per-dimension ``g = sigmoid(b)``;
  ``lstm``: ``s' = f * s + i * tanh(z)``, ``i = sigmoid(z W_i + b_i - 1)``,
  ``f = sigmoid(z W_f + b_f + 1)`` (the paper's LSTM-style gate, biased to remember).

Variant: one layer holds both directions (the paper's recurrent layer; its MLPs are the LM
block's); state vectors carry no position; ``bptt_blocks = k`` detaches the state every k
blocks (0: never). Training runs the block loop with the state carried; decode keeps the
previous block's and the current block's keys/values and updates the state when a block
completes, so decode == one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_choice, check_positive, merge_heads, split_heads
from longctx.ops.common.checks import default_scale


@dataclass
class BlockRecurrentConfig(AttentionConfig):
    block_size: int = 64  # tokens per block (the window covers the previous block too)
    n_state: int = 16  # recurrent state vectors
    gate: str = "fixed"  # "fixed" or "lstm"
    bptt_blocks: int = 0  # detach the state every k blocks (0 = full backpropagation)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "block_size", self.block_size)
        check_positive(name, "n_state", self.n_state)
        check_choice(name, "gate", self.gate, ("fixed", "lstm"))
        if isinstance(self.bptt_blocks, bool) or not isinstance(self.bptt_blocks, int) or self.bptt_blocks < 0:
            raise ValueError(f"{name}.bptt_blocks must be an int >= 0 (0 = full BPTT), got {self.bptt_blocks!r}")


@dataclass
class BlockRecurrentState(State):
    s: Tensor  # [B, n_state, d_model] the recurrent state of the current block
    x_prev: Tensor  # [B, w, d_model] the previous complete block's inputs (w = 0 or block_size)
    x_cur: Tensor  # [B, r, d_model] the current block's inputs so far (r < block_size)
    n_seen: Tensor  # int64 0-dim: tokens seen


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """``q [B, Tq, H, D]`` over ``k, v [B, Tk, H, D]`` -> ``[B, Tq, H, D]``."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, scale=default_scale(None, q.shape[-1]))
    return o.transpose(1, 2)


class BlockRecurrent(AttentionMixer):
    name = "block_recurrent"
    state_class = BlockRecurrentState

    def __init__(self, config: BlockRecurrentConfig) -> None:
        super().__init__(config)
        c, d = config, config.d_model
        self.state_init = nn.Parameter(torch.randn(c.n_state, d) * 0.02)
        self.q_cross = nn.Linear(d, d, bias=False)  # token queries to the state
        self.kv_state = nn.Linear(d, 2 * d, bias=False)  # state keys/values (vertical and horizontal)
        self.out_v = nn.Linear(2 * d, d, bias=False)  # [self ; cross] -> token output
        self.q_state = nn.Linear(d, d, bias=False)  # state queries (horizontal)
        self.kv_tokens = nn.Linear(d, 2 * d, bias=False)  # token keys/values for the state
        self.out_h = nn.Linear(2 * d, d, bias=False)  # [state self ; state cross] -> candidate z
        if c.gate == "fixed":
            self.gate_bias = nn.Parameter(torch.zeros(d))
        else:
            self.w_i, self.w_f = nn.Linear(d, d), nn.Linear(d, d)

    def _heads(self, x: Tensor) -> Tensor:
        return split_heads(x, self.config.n_heads)

    def _vertical(self, x_prev: Tensor, x_cur: Tensor, new: int, offset: int, s: Tensor) -> Tensor:
        """Outputs of the last ``new`` tokens of ``x_cur`` (the block so far), attending to the
        previous block + the block so far (causal) and to the state ``s``."""
        window = torch.cat([x_prev, x_cur], dim=1)  # positions offset .. offset + len - 1
        q, k, v = self.project(window, offset)
        q = q[:, -new:]
        W, T = window.shape[1], new
        mask = torch.arange(W, device=x_cur.device)[None, :] <= (W - T + torch.arange(T, device=x_cur.device))[:, None]
        o_self = _attend(q, k, v, mask)
        ks, vs = self.kv_state(s).chunk(2, dim=-1)
        o_cross = _attend(self._heads(self.q_cross(x_cur[:, -new:])), self._heads(ks), self._heads(vs), None)
        return self.out_v(torch.cat([merge_heads(o_self), merge_heads(o_cross)], dim=-1))

    def _horizontal(self, s: Tensor, block: Tensor) -> Tensor:
        """The state after a complete ``block [B, block_size, d]``."""
        q = self._heads(self.q_state(s))
        ks, vs = self.kv_state(s).chunk(2, dim=-1)
        kt, vt = self.kv_tokens(block).chunk(2, dim=-1)
        o_self = _attend(q, self._heads(ks), self._heads(vs), None)
        o_cross = _attend(q, self._heads(kt), self._heads(vt), None)
        z = self.out_h(torch.cat([merge_heads(o_self), merge_heads(o_cross)], dim=-1))
        if self.config.gate == "fixed":
            g = torch.sigmoid(self.gate_bias)
            return g * s + (1 - g) * z
        i, f = torch.sigmoid(self.w_i(z) - 1), torch.sigmoid(self.w_f(z) + 1)
        return f * s + i * torch.tanh(z)

    def forward(self, x: Tensor, state: BlockRecurrentState | None = None) -> tuple[Tensor, BlockRecurrentState | None]:
        self.check_input(x)
        c, B = self.config, x.shape[0]
        if state is not None:
            self.check_state(state, B)
            s, x_prev, x_cur, n = state.s, state.x_prev, state.x_cur, int(state.n_seen)
        else:
            s, x_prev, x_cur, n = self.state_init.expand(B, -1, -1), x[:, :0], x[:, :0], 0
        outs, start, blocks_done = [], 0, n // c.block_size
        while start < x.shape[1]:
            m = min(x.shape[1] - start, c.block_size - x_cur.shape[1])  # tokens left in this block
            x_cur = torch.cat([x_cur, x[:, start:start + m]], dim=1)
            offset = n + m - x_cur.shape[1] - x_prev.shape[1]  # absolute position of the window start
            outs.append(self._vertical(x_prev, x_cur, m, offset, s))
            start, n = start + m, n + m
            if x_cur.shape[1] == c.block_size:  # the block is complete: update the state
                s = self._horizontal(s, x_cur)
                blocks_done += 1
                if c.bptt_blocks and blocks_done % c.bptt_blocks == 0:
                    s = s.detach()
                x_prev, x_cur = x_cur, x_cur[:, :0]
        y = torch.cat(outs, dim=1) if outs else x
        if state is None:
            return y, None
        n_seen = torch.full((), n, dtype=torch.int64, device=state.n_seen.device)
        return y, BlockRecurrentState(self.name, s, x_prev, x_cur, n_seen)

    def init_state(self, batch_size: int, device=None, dtype=None) -> BlockRecurrentState:
        c = self.config
        dtype = dtype or self.param_dtype()
        s = self.state_init.detach().to(device=device, dtype=dtype).expand(batch_size, -1, -1).clone()
        empty = torch.zeros(batch_size, 0, c.d_model, device=device, dtype=dtype)
        return BlockRecurrentState(self.name, s, empty, empty.clone(), torch.zeros((), dtype=torch.int64, device=device))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        prev = c.block_size if seqlen >= c.block_size else 0
        return batch_size * (c.n_state + prev + seqlen % c.block_size) * c.d_model * dtype_bytes(dtype)
