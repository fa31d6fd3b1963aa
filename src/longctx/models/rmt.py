"""Recurrent Memory Transformer (Bulatov, Kuratov & Burtsev 2022, NeurIPS), whole-stack form.

The sequence is cut into segments of ``segment_len`` tokens. Segment tau enters the model as

    H~_tau = [ H^mem_tau ; E(x_tau) ; H^mem_tau ]          # [B, n_mem + s + n_mem, d_model]

(§3, decoder variant: the memory is prepended as *read* tokens and appended as *write* tokens,
both copies of the same ``n_mem`` vectors) and runs through the whole block stack of a
``LongCtxLM`` with causal attention and RoPE positions ``0 .. 2 n_mem + s - 1`` restarting in
every segment. A segment token sees the read memory and its predecessors in the segment; the
write tokens see the whole segment. The write tokens' final-layer hidden states become the next
segment's memory: ``H^mem_{tau+1} = RMSNorm_final(H^N_tau[write])`` (§3, "H^mem_{tau+1} :=
H^write_tau"), used again as read *and* write embeddings. ``H^mem_0`` is a learned parameter
``memory_init [n_mem, d_model]``.

Variant, precisely:
- the memory is the final-layer output *after* the model's final RMSNorm (the normalised hidden
  state the LM head reads; the paper's GPT-2 code takes the last hidden state, which is
  post-``ln_f``), so its scale stays fixed however many segments it passes;
- read and write positions share the memory vectors (no separate read/write embeddings), as in
  §3; memory positions get no extra embedding beyond their RoPE positions;
- a trailing incomplete segment has no write tokens and produces no memory update; the memory is
  written only once a segment holds ``segment_len`` tokens;
- ``bptt_segments = k`` detaches the memory at every k-th segment boundary (truncated BPTT in
  blocks of k segments, §4 "BPTT unroll"; 0 = gradients through every segment): the loss of
  segment j reaches segment i < j iff ``i // k == j // k`` (so never when ``j - i >= k``);
- the mixers are the LM's (softmax attention by default); each segment is an independent sequence
  to them, so any causal mixer with a decode state works.

Decode keeps the memory and the per-layer decode state of the open segment (a KV cache of at most
``n_mem + segment_len`` entries per layer); when a segment fills, its write tokens run against
that cache, the memory is replaced and the cache dropped. The state size is bounded in the
context length. ``rmt_naive`` is the reference: every position recomputed from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.softmax_attention import KVState
from longctx.models.lm import LMConfig, LMState, LongCtxLM


@dataclass
class RMTConfig(LMConfig):
    segment_len: int = 64  # tokens per segment
    n_mem: int = 4  # memory tokens (read and write each)
    bptt_segments: int = 0  # truncated BPTT: detach the memory every k segments (0 = never)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("segment_len", "n_mem"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"RMTConfig.{name} must be a positive integer, got {v!r}")
        k = self.bptt_segments
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"RMTConfig.bptt_segments must be an int >= 0 (0 = full BPTT), got {k!r}")


@dataclass
class RMTState:
    """Decode state of an ``RMTLM``: the memory the open segment reads, and that segment so far."""

    memory: Tensor  # [B, n_mem, d_model] read memory of the open segment
    segment: LMState | None  # per-layer state of [memory ; tokens so far]; None when n_tokens == 0
    n_tokens: int  # tokens in the open segment, 0 <= n_tokens < segment_len
    n_segments: int  # completed segments (the BPTT boundaries count from the first)
    segment_len: int  # of the model that made the state (checked when it is used)
    n_mem: int

    def to(self, device=None, dtype=None) -> RMTState:
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        seg = self.segment.to(device, dtype) if self.segment is not None else None
        return RMTState(self.memory.to(device=device, dtype=dtype), seg, self.n_tokens,
                        self.n_segments, self.segment_len, self.n_mem)

    def select(self, index) -> RMTState:
        seg = self.segment.select(index) if self.segment is not None else None
        return RMTState(self.memory[index], seg, self.n_tokens, self.n_segments, self.segment_len, self.n_mem)

    def detach(self) -> RMTState:
        seg = None
        if self.segment is not None:
            seg = LMState([s.detach() for s in self.segment.mixers],
                          [c.detach() if c is not None else None for c in self.segment.convs])
        return RMTState(self.memory.detach(), seg, self.n_tokens, self.n_segments, self.segment_len, self.n_mem)

    def nbytes(self) -> int:
        seg = self.segment.nbytes() if self.segment is not None else 0
        return self.memory.numel() * self.memory.element_size() + seg


class RMTLM(LongCtxLM):
    """A ``LongCtxLM`` (same embedding, blocks, final norm, head) run segment by segment with
    ``n_mem`` memory tokens through the whole stack. ``forward(idx, state=None) -> (logits, state)``
    as ``LongCtxLM``."""

    def __init__(self, config: RMTConfig) -> None:
        if not isinstance(config, RMTConfig):
            raise ValueError(f"RMTLM: config must be an RMTConfig, got {type(config).__name__}")  # noqa: TRY004
        super().__init__(config)
        self.config: RMTConfig = config
        # §3: the initial memory H^mem_0, learned (initialised like the token embeddings)
        self.memory_init = nn.Parameter(torch.randn(config.n_mem, config.d_model) * 0.02)

    # -- state ---------------------------------------------------------------------------------

    def init_state(self, batch_size: int, device=None, dtype=None, cache=None) -> RMTState:
        """The state before the first token: the initial memory, no open segment."""
        if cache is not None:
            raise ValueError("RMTLM.init_state: cache policies do not apply; the per-segment KV cache "
                             "is already bounded by n_mem + segment_len")
        c = self.config
        device = device or self.memory_init.device
        dtype = dtype or self.memory_init.dtype
        memory = self.memory_init.detach().to(device=device, dtype=dtype).expand(batch_size, -1, -1).clone()
        return RMTState(memory, None, 0, 0, c.segment_len, c.n_mem)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of decode state after ``seqlen`` tokens: the memory plus, inside a segment, each
        layer's state over ``n_mem + seqlen % segment_len`` positions. Bounded in ``seqlen``."""
        c = self.config
        memory = batch_size * c.n_mem * c.d_model * dtype.itemsize
        r = seqlen % c.segment_len
        return memory + (super().state_size(batch_size, c.n_mem + r, dtype) if r else 0)

    # -- forward -------------------------------------------------------------------------------

    def forward(self, idx: Tensor, state: RMTState | None = None) -> tuple[Tensor, RMTState | None]:
        """``idx [B, T]`` -> ``logits [B, T, vocab]``; with ``state``, continue that sequence.

        Without a state (training) each segment is one pass of ``[memory ; segment ; memory]``
        through the stack; with a state the open segment's per-layer cache is continued. Both give
        the same logits, memory and gradients.
        """
        self._check_rmt(idx, state)
        c = self.config
        h = self.embed(idx)  # [B, T, d_model]
        B, T = idx.shape
        if state is None:
            memory = self.memory_init.to(h.dtype).expand(B, -1, -1)
            seg, r, n_done = None, 0, 0
        else:
            memory, seg, r, n_done = state.memory, state.segment, state.n_tokens, state.n_segments
        outs, pos = [], 0
        while pos < T:
            m = min(T - pos, c.segment_len - r)  # tokens of idx that go into the open segment
            completes = r + m == c.segment_len
            parts = [h[:, pos:pos + m]]
            if r == 0:  # a new segment starts with the read memory (§3)
                parts.insert(0, memory)
                if state is not None:
                    seg = super().init_state(B, device=h.device, dtype=h.dtype)
            if completes:  # ... and a full one ends with the write memory (§3)
                parts.append(memory)
            y, seg = self.run_blocks(torch.cat(parts, dim=1), seg)  # [B, len, d_model]
            lead = c.n_mem if r == 0 else 0
            outs.append(y[:, lead:lead + m])
            pos, r = pos + m, r + m
            if completes:
                memory = self.norm(y[:, -c.n_mem:])  # §3: H^mem_{tau+1} := H^write_tau
                n_done, r, seg = n_done + 1, 0, None
                if c.bptt_segments and n_done % c.bptt_segments == 0:
                    memory = memory.detach()  # truncated BPTT (§4)
        x = torch.cat(outs, dim=1) if outs else h
        logits = self.head(self.norm(x))  # [B, T, vocab]
        if state is None:
            return logits, None
        return logits, RMTState(memory, seg, r, n_done, c.segment_len, c.n_mem)

    def forward_states(self, idx: Tensor, state: RMTState) -> tuple[Tensor, list[RMTState]]:
        """``idx [B, T]`` continuing ``state`` -> ``(logits, states)``, ``states[t]`` the state after
        ``idx[:, :t + 1]`` (by T decode steps; exact)."""
        if state is None:
            raise ValueError("RMTLM.forward_states: a state is required (model.init_state(batch_size))")
        logits, states = [], []
        for t in range(idx.shape[1]):
            lg, state = self(idx[:, t:t + 1], state)
            logits.append(lg)
            states.append(state)
        if not logits:  # T == 0: checks the inputs, returns [B, 0, vocab]
            return self(idx, state)[0], []
        return torch.cat(logits, dim=1), states

    def forward_tree(self, idx: Tensor, parents: Tensor, state: RMTState) -> Tensor:
        raise NotImplementedError("RMTLM.forward_tree: tree verification is not implemented for RMT "
                                  "(a tree may cross a segment boundary and write memory)")

    def _check_rmt(self, idx: Tensor, state: RMTState | None) -> None:
        """Token ids as ``LongCtxLM``; a state must come from an RMTLM of this configuration."""
        super()._check(idx, None)
        if state is None:
            return
        c = self.config
        if not isinstance(state, RMTState):
            raise ValueError(f"RMTLM: state must be an RMTState from RMTLM.init_state(), got "  # noqa: TRY004
                             f"{type(state).__name__}")
        if state.n_mem != c.n_mem or state.memory.dim() != 3 or state.memory.shape[1] != c.n_mem:
            raise ValueError(f"RMTLM: state has n_mem={state.n_mem} (memory {list(state.memory.shape)}), "
                             f"the model n_mem={c.n_mem}: a state from another configuration")
        if state.memory.shape[2] != c.d_model:
            raise ValueError(f"RMTLM: state memory has d_model={state.memory.shape[2]}, the model "
                             f"{c.d_model}: a state from another model")
        if state.memory.shape[0] != idx.shape[0]:
            raise ValueError(f"RMTLM: state has batch size {state.memory.shape[0]}, idx {idx.shape[0]}")
        if state.segment_len != c.segment_len or not 0 <= state.n_tokens < c.segment_len:
            raise ValueError(f"RMTLM: state has segment_len={state.segment_len} with {state.n_tokens} "
                             f"tokens in the open segment, the model segment_len={c.segment_len}")
        if (state.segment is None) != (state.n_tokens == 0):
            raise ValueError(f"RMTLM: state has n_tokens={state.n_tokens} but "
                             f"{'no' if state.segment is None else 'an'} open-segment cache")
        if state.segment is not None:
            if len(state.segment.mixers) != len(self.blocks):
                raise ValueError(f"RMTLM: state has {len(state.segment.mixers)} layers, the model "
                                 f"{len(self.blocks)}")
            want = c.n_mem + state.n_tokens  # the open segment's cache holds [read memory ; tokens]
            for i, s in enumerate(state.segment.mixers):
                if type(s) is KVState and s.k.shape[1] != want:  # softmax attention's full cache
                    raise ValueError(f"RMTLM: layer {i}'s cache holds {s.k.shape[1]} positions, but "
                                     f"n_mem + n_tokens = {c.n_mem} + {state.n_tokens} = {want} "
                                     "(sequence length does not match the memory configuration)")


def rmt_naive(model: RMTLM, idx: Tensor) -> Tensor:
    """The reference, no caching: ``idx [B, T]`` -> ``logits [B, T, vocab]``.

    For every position t: rebuild the memory chain over the complete segments before t (each a
    from-scratch pass of ``[memory ; segment ; memory]``, detached at the BPTT boundaries), then run
    ``[memory ; segment[:t + 1]]`` from scratch and keep its last output.
    """
    c = model.config
    B, T = idx.shape
    S, M = c.segment_len, c.n_mem
    h = model.embed(idx)  # [B, T, d_model]
    outs = []
    for t in range(T):
        memory = model.memory_init.to(h.dtype).expand(B, -1, -1)  # [B, M, d_model]
        first = (t // S) * S  # start of t's segment
        for n, s in enumerate(range(0, first, S), start=1):
            y, _ = model.run_blocks(torch.cat([memory, h[:, s:s + S], memory], dim=1))
            memory = model.norm(y[:, -M:])
            if c.bptt_segments and n % c.bptt_segments == 0:
                memory = memory.detach()
        y, _ = model.run_blocks(torch.cat([memory, h[:, first:t + 1]], dim=1))
        outs.append(y[:, -1:])
    x = torch.cat(outs, dim=1) if outs else h
    return model.head(model.norm(x))
