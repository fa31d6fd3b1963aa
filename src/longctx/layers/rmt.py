"""Recurrent Memory Transformer (Bulatov, Kuratov & Burtsev 2022), layer-local form.

The sequence is cut into segments of ``segment_len`` tokens. Each segment is attended as
``[memory (read) ; segment ; memory (write)]`` under one causal softmax attention (RoPE positions
0 .. 2M + s - 1 inside the segment): the segment's tokens see the read memory and their
predecessors; the ``n_mem`` write tokens see everything, and ``memory + W_o(their output)``
becomes the next segment's memory (Bulatov et al. §3: memory tokens prepended for reading and
appended for writing, the write outputs carried to the next segment).

Variant: the paper passes the memory through the whole Transformer stack; as a longctx mixer
the memory lives in one attention layer (each RMT layer of a model has its own). Training
processes the segments in order with the memory carried (the segment loop); ``bptt_segments = k``
detaches the memory at every k-th segment boundary (truncated BPTT in blocks of k segments;
0 = gradients through every segment). Decode buffers the current segment: a token attends to the
read memory and the segment so far, exactly as in training; when a segment completes, its write
tokens update the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.attention_base import AttentionConfig, AttentionMixer
from longctx.layers.base import State, dtype_bytes
from longctx.layers.common import check_positive, merge_heads
from longctx.ops.common.checks import default_scale


@dataclass
class RMTConfig(AttentionConfig):
    segment_len: int = 64  # tokens per segment
    n_mem: int = 4  # memory tokens (read and write)
    bptt_segments: int = 0  # truncated BPTT: detach the memory every k segments (0 = never)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "segment_len", self.segment_len)
        check_positive(name, "n_mem", self.n_mem)
        if isinstance(self.bptt_segments, bool) or not isinstance(self.bptt_segments, int) or self.bptt_segments < 0:
            raise ValueError(f"{name}.bptt_segments must be an int >= 0 (0 = full BPTT), got {self.bptt_segments!r}")


@dataclass
class RMTState(State):
    memory: Tensor  # [B, n_mem, d_model] the memory the current segment reads
    segment: Tensor  # [B, r, d_model] the current segment's inputs so far (r < segment_len)


class RMT(AttentionMixer):
    name = "rmt"
    state_class = RMTState

    def __init__(self, config: RMTConfig) -> None:
        super().__init__(config)
        self.memory_init = nn.Parameter(torch.randn(config.n_mem, config.d_model) * 0.02)

    def _segment(self, memory: Tensor, seg: Tensor, write: bool) -> tuple[Tensor, Tensor | None]:
        """``[memory ; seg ; memory]`` through causal attention -> (outputs of ``seg``, new memory)."""
        c = self.config
        M, s = c.n_mem, seg.shape[1]
        parts = [memory, seg, memory] if write else [memory, seg]
        q, k, v = self.project(torch.cat(parts, dim=1), 0)  # positions 0 .. inside the segment
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            scale=default_scale(None, c.head_dim), enable_gqa=True).transpose(1, 2)
        y = self.wo(merge_heads(o))
        new_memory = memory + y[:, M + s:] if write else None
        return y[:, M:M + s], new_memory

    def forward(self, x: Tensor, state: RMTState | None = None) -> tuple[Tensor, RMTState | None]:
        self.check_input(x)
        c = self.config
        B = x.shape[0]
        if state is not None:
            self.check_state(state, B)
            memory, prefix = state.memory, state.segment
        else:
            memory, prefix = self.memory_init.expand(B, -1, -1), x[:, :0]
        seq = torch.cat([prefix, x], dim=1)  # the open segment continues with x
        outs, n_done = [], 0
        for start in range(0, seq.shape[1], c.segment_len):
            seg = seq[:, start:start + c.segment_len]
            complete = seg.shape[1] == c.segment_len
            y, new = self._segment(memory, seg, write=complete)
            outs.append(y)
            if complete:
                n_done += 1
                memory = new
                if c.bptt_segments and n_done % c.bptt_segments == 0:
                    memory = memory.detach()
        y = torch.cat(outs, dim=1)[:, prefix.shape[1]:] if outs else x
        if state is None:
            return y, None
        rest = seq.shape[1] % c.segment_len
        return y, RMTState(self.name, memory, seq[:, seq.shape[1] - rest:])

    def init_state(self, batch_size: int, device=None, dtype=None) -> RMTState:
        c = self.config
        dtype = dtype or self.param_dtype()
        memory = self.memory_init.detach().to(device=device, dtype=dtype).expand(batch_size, -1, -1).clone()
        return RMTState(self.name, memory, torch.zeros(batch_size, 0, c.d_model, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * (c.n_mem + seqlen % c.segment_len) * c.d_model * dtype_bytes(dtype)
