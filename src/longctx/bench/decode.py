"""Decode latency (ms per token) of a ``LongCtxLM`` after a context of L tokens, four ways:

- ``eager``: the model's forward per token with the PyTorch step ops (``backend="torch"``);
- ``fused``: the same with the fused Triton decode step (``ops/common/triton_decode.py``);
- ``graph``: the PyTorch step replayed from a CUDA graph (``generate/cuda_graph.py``);
- ``graph+fused``: both.

For a model whose layers all keep a fixed-size state the time per token must not depend on L
(the state after 1k or 64k tokens is the same size); a softmax-attention model is the contrast
(eager modes only: its KV cache grows, so it has no graph). The context is prefilled eagerly in
pieces, then each mode decodes ``steps`` greedy tokens (argmax on the device, no host sync)
after ``warmup`` untimed ones, from a copy of the same state. CUDA events time the GPU; on CPU
the wall clock (the graph modes are then reported as unavailable).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from longctx.generate.cuda_graph import (
    CUDAGraphDecoder,
    _clone,
    capture_step,
    copy_state,
    graph_unsupported,
)
from longctx.layers.base import State
from longctx.models.lm import LMConfig, LMState, LongCtxLM
from longctx.ops.common.backend import has_triton, use_backend

MODES = ("eager", "fused", "graph", "graph+fused")
CONTEXTS = (1024, 16384, 65536)


def decode_model(mixer: str = "gated_deltanet", *, d_model: int = 1024, n_layers: int = 4,
                 n_heads: int = 8, vocab_size: int = 256, short_conv: int = 0,
                 device: str = "cuda", dtype: torch.dtype = torch.float32) -> LongCtxLM:
    """A random ``LongCtxLM`` of ``n_layers`` ``mixer`` blocks for timing (eval mode)."""
    config = LMConfig(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      mixer=mixer, short_conv=short_conv)
    return LongCtxLM(config).to(device=device, dtype=dtype).eval()


def _unavailable(model: LongCtxLM, mode: str) -> str | None:
    cuda = model.embed.weight.is_cuda
    if "fused" in mode and not (cuda and has_triton()):
        return "the fused kernel needs CUDA and Triton"
    return graph_unsupported(model) if mode.startswith("graph") else None


@torch.no_grad()
def _prefill(model: LongCtxLM, L: int, batch_size: int, chunk: int, seed: int) -> tuple[LMState, Tensor]:
    """The state after L random tokens (prefilled ``chunk`` at a time) and the next token [B, 1]."""
    device = model.embed.weight.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(model.config.vocab_size, (batch_size, L), generator=gen).to(device)
    state = model.init_state(batch_size, device)
    logits = None
    for s in range(0, L, chunk):
        logits, state = model(idx[:, s:s + chunk], state)
    return state, logits[:, -1:].argmax(-1)


def _timed(step: Callable[[Tensor], Tensor], tok: Tensor, steps: int, warmup: int, cuda: bool) -> float:
    """ms per call of ``tok = argmax(step(tok))`` over ``steps`` calls after ``warmup``."""
    box = [tok]

    def call() -> None:
        box[0] = step(box[0]).argmax(-1).reshape(-1, 1)
    return _timed_calls(call, steps, warmup, cuda)


def _timed_calls(fn: Callable[[], object], steps: int, warmup: int, cuda: bool) -> float:
    """ms per call of ``fn()`` over ``steps`` calls after ``warmup`` (no read-back between calls)."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if cuda:
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / steps
    return 1e3 * (time.perf_counter() - t0) / steps


@torch.no_grad()
def _mode_latency(model: LongCtxLM, mode: str, state: LMState, tok: Tensor, steps: int,
                  warmup: int) -> float:
    cuda = model.embed.weight.is_cuda
    with use_backend("triton" if "fused" in mode else "torch"):
        if mode.startswith("graph"):
            dec = CUDAGraphDecoder(model, tok.shape[0])
            dec.load(state)
            return _timed(dec.step, tok, steps, warmup, cuda)
        box = [_clone(state)]

        def step(t: Tensor) -> Tensor:
            logits, box[0] = model(t, box[0])
            return logits[:, -1]

        return _timed(step, tok, steps, warmup, cuda)


def decode_latency(model: LongCtxLM, context_lengths: Sequence[int] = CONTEXTS, *,
                   modes: Sequence[str] = MODES, batch_size: int = 1, steps: int = 100,
                   warmup: int = 10, prefill_chunk: int = 4096, seed: int = 0) -> list[dict]:
    """ms per decoded token of ``model`` after each context length, for each mode.

    Returns one row per (context, mode): ``{"context", "mode", "ms_per_token", "error"}``, with
    ``ms_per_token`` None and ``error`` saying why for a mode this model / device cannot run.
    """
    for m in modes:
        if m not in MODES:
            raise ValueError(f"decode_latency: unknown mode {m!r}; choose from {', '.join(MODES)}")
    rows = []
    for L in context_lengths:
        state, tok = _prefill(model, L, batch_size, prefill_chunk, seed)
        for mode in modes:
            why = _unavailable(model, mode)
            ms = None if why else _mode_latency(model, mode, state, tok, steps, warmup)
            rows.append({"context": L, "mode": mode, "ms_per_token": ms, "error": why})
        del state
        if model.embed.weight.is_cuda:
            torch.cuda.empty_cache()
    return rows


def block_latency(mixer: str, *, layers: tuple[int, int] = (1, 5), context: int = 1024,
                  modes: Sequence[str] = ("graph", "graph+fused"), device: str = "cuda",
                  steps: int = 100, warmup: int = 10, **model_kw) -> list[dict]:
    """ms per decoded token of ONE block (mixer, MLP, norms): the slope between two models of
    ``layers`` = (a, b) blocks, ``(t_b - t_a) / (b - a)``, which cancels the embedding, the LM
    head and the argmax (each model random, ``decode_model(mixer, **model_kw)``). An upper bound
    on the mixer's own step. One row per mode: ``{"mode", "ms_per_block", "ms_per_token": {a: t_a,
    b: t_b}, "error"}``."""
    a, b = layers
    if not 0 < a < b:
        raise ValueError(f"block_latency: layers must be (a, b) with 0 < a < b, got {layers}")
    times: dict[int, dict[str, dict]] = {}
    for n in (a, b):
        model = decode_model(mixer, n_layers=n, device=device, **model_kw)
        rows = decode_latency(model, [context], modes=modes, steps=steps, warmup=warmup,
                              prefill_chunk=min(context, 4096))
        times[n] = {r["mode"]: r for r in rows}
        del model
    out = []
    for m in modes:
        ta, tb = times[a][m]["ms_per_token"], times[b][m]["ms_per_token"]
        err = times[a][m]["error"] or times[b][m]["error"]
        out.append({"mode": m, "ms_per_block": None if err else (tb - ta) / (b - a),
                    "ms_per_token": {a: ta, b: tb}, "error": err})
    return out


def _copy_into(dst: State, src: State) -> None:
    """``copy_state`` for one layer's state (tensors the fused step wrote in place are skipped)."""
    copy_state(LMState([dst], [None]), LMState([src], [None]))


@torch.no_grad()
def mixer_latency(mixer: str, *, d_model: int = 1024, n_heads: int = 8, context: int = 1024,
                  modes: Sequence[str] = MODES, batch_size: int = 1, device: str = "cuda",
                  dtype: torch.dtype = torch.float32, steps: int = 100, warmup: int = 10,
                  seed: int = 0) -> list[dict]:
    """ms per decode step of ONE ``mixer`` layer alone (no norms, MLP, embedding or head: issue 9's
    per-layer target is this number) after ``context`` tokens. The layer is the mixer of a random
    one-block ``decode_model``; its state is prefilled from random inputs ``x [B, context,
    d_model]``, then each mode steps ``x [B, 1, d_model]`` (the same input every step) from a copy
    of that state: ``eager`` / ``fused`` call the layer, ``graph`` / ``graph+fused`` replay the
    step captured in a CUDA graph with static state buffers. One row per mode: ``{"mode",
    "context", "ms_per_step", "error"}``, ``error`` saying why a mode cannot run here."""
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mixer_latency: unknown mode {m!r}; choose from {', '.join(MODES)}")
    model = decode_model(mixer, d_model=d_model, n_layers=1, n_heads=n_heads, device=device, dtype=dtype)
    layer = model.mixers[0]
    cuda = model.embed.weight.is_cuda
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch_size, context + 1, d_model, generator=gen).to(device=device, dtype=dtype)
    state = model.init_state(batch_size, device).mixers[0]
    for s in range(0, context, 4096):
        _, state = layer(x[:, s:min(s + 4096, context)], state)
    x1 = x[:, context:].contiguous()
    rows = []
    for mode in modes:
        why = _unavailable(model, mode)  # the one-layer model's reasons are the layer's
        ms = None if why else _layer_latency(layer, mode, state, x1, steps, warmup, cuda)
        rows.append({"mode": mode, "context": context, "ms_per_step": ms, "error": why})
    return rows


def _layer_latency(layer, mode: str, state: State, x: Tensor, steps: int, warmup: int,
                   cuda: bool) -> float:
    with use_backend("triton" if "fused" in mode else "torch"):
        st = state._replace(lambda _n, t: t.clone())
        if not mode.startswith("graph"):
            box = [st]

            def step() -> None:
                _, box[0] = layer(x, box[0])
            return _timed_calls(step, steps, warmup, cuda)
        def graph_step(s: State) -> None:
            _, new = layer(x, s)
            _copy_into(s, new)
        scratch = state._replace(lambda _n, t: t.clone())
        graph, _ = capture_step(graph_step, st, scratch, max(warmup, 2), x.device)
        return _timed_calls(graph.replay, steps, warmup, cuda)


def format_rows(rows: list[dict]) -> str:
    """A Markdown table: one line per context length, one column per mode."""
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    lines = ["| context | " + " | ".join(f"{m} (ms/token)" for m in modes) + " |",
             "|---:|" + "---:|" * len(modes)]
    for L in dict.fromkeys(r["context"] for r in rows):
        cells = {r["mode"]: r for r in rows if r["context"] == L}
        lines.append(f"| {L} | " + " | ".join(
            f"{cells[m]['ms_per_token']:.3f}" if cells[m]["ms_per_token"] is not None else "n/a"
            for m in modes) + " |")
    return "\n".join(lines)


__all__ = ["CONTEXTS", "MODES", "block_latency", "decode_latency", "decode_model", "format_rows",
           "mixer_latency"]
