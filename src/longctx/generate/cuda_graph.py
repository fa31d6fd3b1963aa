"""Whole-model decode steps replayed from a CUDA graph, for LMs whose every layer keeps a
fixed-size state (the linear mixers, with or without short convs).

One decode step of a small model is dozens of tiny kernels; at batch 1 their launch overhead,
not the GPU, sets the time per token. A CUDA graph records the step once and replays it with one
launch (the gpt-fast recipe: static input and state buffers, capture after warm-up). That needs
every tensor the step reads or writes at a fixed address with a fixed shape: true of a recurrent
state (``S [B, H, K, V]``, conv buffers), not of a KV cache that grows. Inside the graph the
fused decode kernel (``ops/common/triton_decode.py``) updates each S in place; the other state
tensors (conv buffers) are copied back into their static buffers as the graph's last nodes.

The value checks of the step ops (gates <= 0, unit keys, beta in [0, 2]) read back to the host
and cannot be captured: they run in the eager warm-up step and are skipped in replays
(``backend.checkable``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor

from longctx.generate.streaming import LongCtxStreamer, Streamer
from longctx.models.lm import LMState, LongCtxLM
from longctx.ops.common.backend import inplace_decode

# mixers whose decode step has a fixed-size state, no host read-back and no Python-side counter
# (retention's position ``n_seen`` is read with int() to rotate q and k; attention's KV cache grows)
GRAPH_MIXERS = frozenset({"linear_attention", "gla", "deltanet", "gated_deltanet", "mamba2"})


S = TypeVar("S")  # the step's state
R = TypeVar("R")  # what the step returns


def graph_unsupported(model: object) -> str | None:
    """Why ``model`` cannot decode from a CUDA graph, or None when it can."""
    if not isinstance(model, LongCtxLM):
        return f"{type(model).__name__} is not a LongCtxLM"
    bad = sorted({name for name in model.config.mixer if name not in GRAPH_MIXERS})
    if bad:
        return (f"mixer(s) {', '.join(map(repr, bad))} keep no fixed-size, capture-safe decode state "
                f"(graph decode takes {', '.join(sorted(GRAPH_MIXERS))})")
    if not model.embed.weight.is_cuda:
        return "the model is not on a CUDA device"
    return None


def _pairs(dst: LMState, src: LMState) -> Iterator[tuple[Tensor, Tensor]]:
    """(static buffer, new tensor) for every tensor of the two states, layer by layer."""
    for d, s in [*zip(dst.mixers, src.mixers, strict=True), *zip(dst.convs, src.convs, strict=True)]:
        if d is None:
            continue
        new = s.tensors()
        for name, buf in d.tensors().items():
            yield buf, new[name]


def copy_state(dst: LMState, src: LMState) -> None:
    """Copy ``src`` into ``dst``'s tensors in place (skipping tensors already written in place)."""
    for buf, new in _pairs(dst, src):
        if new.data_ptr() != buf.data_ptr():
            buf.copy_(new)


def _clone(state: LMState) -> LMState:
    return LMState([s._replace(lambda _n, t: t.clone()) for s in state.mixers],
                   [c._replace(lambda _n, t: t.clone()) if c is not None else None for c in state.convs])


class CUDAGraphDecoder:
    """Decode ``model`` one token per graph replay from static state buffers.

    ``prefill(idx [B, T])`` runs the model eagerly (chunked forms) from the current state and
    leaves the new state in the static buffers; ``step(tokens [B] or [B, 1])`` replays the
    captured step (captured at the first call, after ``warmup`` eager steps on a scratch copy of
    the state) and returns the static ``logits [B, vocab]``, overwritten by the next step.
    The backend in effect at the first ``step`` (``use_backend``) is the one captured.
    """

    def __init__(self, model: LongCtxLM, batch_size: int = 1, *, warmup: int = 2,
                 dtype: torch.dtype | None = None) -> None:
        reason = graph_unsupported(model)
        if reason is not None:
            raise ValueError(f"CUDAGraphDecoder: {reason}")
        self.model, self.warmup = model, warmup
        self.device = model.embed.weight.device
        self.state = model.init_state(batch_size, self.device, dtype)  # the static state buffers
        self.tokens = torch.zeros(batch_size, 1, dtype=torch.int64, device=self.device)  # [B, 1]
        self.logits: Tensor | None = None  # [B, vocab], written by every replay
        self.graph: torch.cuda.CUDAGraph | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def reset(self) -> None:
        """Back to the empty state (the captured graph is kept)."""
        for buf, _ in _pairs(self.state, self.state):
            buf.zero_()

    def load(self, state: LMState) -> None:
        """Continue from ``state`` (copied into the static buffers)."""
        copy_state(self.state, state)

    @torch.no_grad()
    def prefill(self, idx: Tensor) -> Tensor:
        """``idx [B, T]`` -> ``logits [B, T, vocab]``, eagerly; the state advances by T tokens."""
        logits, new = self.model(idx.to(self.device), self.state)
        copy_state(self.state, new)
        return logits

    @torch.no_grad()
    def step(self, tokens: Tensor) -> Tensor:
        """``tokens [B]`` or ``[B, 1]`` -> ``logits [B, vocab]`` (the static output buffer)."""
        if self.graph is None:
            self.capture()
        self.tokens.copy_(tokens.reshape(self.batch_size, 1))
        self.graph.replay()
        return self.logits

    @torch.no_grad()
    def capture(self) -> None:
        """Record one step on the static buffers (after ``warmup`` steps from a scratch copy)."""
        def step(state: LMState) -> Tensor:
            logits, new = self.model(self.tokens, state)
            copy_state(state, new)
            return logits[:, -1]
        self.graph, self.logits = capture_step(step, self.state, _clone(self.state), self.warmup,
                                               self.device)


def capture_step(step: Callable[[S], R], state: S, scratch: S, warmup: int,
                 device: torch.device) -> tuple[torch.cuda.CUDAGraph, R]:
    """Warm ``step`` up ``warmup`` times from ``scratch`` on a side stream (Triton compiles, cuBLAS
    picks its kernels, the value checks run), then record one ``step(state)`` in a CUDA graph
    (``state``: the static buffers ``step`` reads and writes). Returns the graph and what the
    recorded call returned: static outputs, rewritten by every replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), inplace_decode():
        for _ in range(warmup):
            step(scratch)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), inplace_decode():
        out = step(state)
    return graph, out


class GraphStreamer(Streamer):
    """A ``LongCtxStreamer`` whose one-token feeds replay a ``CUDAGraphDecoder``."""

    def __init__(self, inner: LongCtxStreamer) -> None:
        self.inner, self.policy = inner, None
        self.trained_len, self.tokenizer, self.bos = inner.trained_len, inner.tokenizer, inner.bos
        self.decoder = CUDAGraphDecoder(inner.model, 1)

    def reset(self) -> None:
        self.decoder.reset()

    def feed(self, ids: Tensor) -> Tensor:
        """``ids [1, n]`` -> ``logits [1, n, vocab]`` (a graph replay when n == 1)."""
        if ids.shape[1] == 1:
            return self.decoder.step(ids.to(self.decoder.device)).unsqueeze(1).clone()
        return self.decoder.prefill(ids)

    def forward(self, ids: Tensor) -> Tensor:
        return self.inner.forward(ids)

    def cache_bytes(self) -> int:
        return self.decoder.state.nbytes()


def graph_streamer(streamer: Streamer) -> tuple[Streamer, str | None]:
    """``(GraphStreamer(streamer), None)`` when its model can decode from a CUDA graph, else
    ``(streamer, why not)``."""
    if not isinstance(streamer, LongCtxStreamer):
        return streamer, "only longctx checkpoints decode from a CUDA graph"
    if streamer.policy is not None:
        return streamer, "a KV-cache policy is set"
    reason = graph_unsupported(streamer.model)
    return (streamer, reason) if reason is not None else (GraphStreamer(streamer), None)


@torch.no_grad()
def graph_generate(model: LongCtxLM, idx: Tensor, max_new_tokens: int) -> Tensor:
    """Greedy ``LongCtxLM.generate`` with the decode steps replayed from a CUDA graph:
    ``idx [B, T]`` -> ``[B, T + max_new_tokens]``."""
    dec = CUDAGraphDecoder(model, idx.shape[0])
    logits = dec.prefill(idx)[:, -1]
    out = [idx.to(dec.device)]
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1, keepdim=True)  # [B, 1]
        out.append(nxt)
        if i + 1 < max_new_tokens:
            logits = dec.step(nxt)
    return torch.cat(out, dim=1)


__all__ = [
    "GRAPH_MIXERS",
    "CUDAGraphDecoder",
    "GraphStreamer",
    "capture_step",
    "copy_state",
    "graph_generate",
    "graph_streamer",
    "graph_unsupported",
]
