"""Streaming a model past its trained length: token generation and the StreamingLLM evaluation.

A ``Streamer`` continues one stream of tokens under a KV-cache policy, for a longctx checkpoint
(``LongCtxStreamer``) or a local transformers model (``HFStreamer``). ``stream_nll`` feeds a long
text through it and returns the loss at every position (Xiao et al. 2024, Figure 3: perplexity
over a 20k-token stream for dense, window, sliding window with re-computation, StreamingLLM);
``recompute_nll`` is the paper's "sliding window with re-computation" baseline: every token is
predicted from a fresh forward over the last ``window`` tokens (positions 0 .. window-1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longctx.cache.policy import CachePolicy, check_fits_training

Forward = Callable[[Tensor], Tensor]  # ids [B, T] -> logits [B, T, V], a fresh forward


class Streamer:
    """One stream under a cache policy: ``feed(ids [1, n]) -> logits [1, n, V]``."""

    policy: CachePolicy | None
    trained_len: int | None
    tokenizer: object | None
    bos: list[int]  # ids every stream starts with (a sink token, a BOS), [] if none

    def reset(self) -> None:
        raise NotImplementedError

    def feed(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, ids: Tensor) -> Tensor:
        """A fresh forward without any cache (for the re-computation baseline)."""
        raise NotImplementedError

    def cache_bytes(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: give token ids instead of text")
        ids = self.tokenizer.encode(text)
        return ids.tolist() if isinstance(ids, Tensor) else list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids))


class LongCtxStreamer(Streamer):
    def __init__(self, model, policy: CachePolicy | None, trained_len: int | None = None,
                 tokenizer=None, bos: list[int] | None = None) -> None:
        self.model, self.policy, self.trained_len = model.eval(), policy, trained_len
        self.tokenizer, self.bos = tokenizer, list(bos or [])
        self.device = model.embed.weight.device
        self.reset()

    def reset(self) -> None:
        self.state = self.model.init_state(1, cache=self.policy)

    @torch.no_grad()
    def feed(self, ids: Tensor) -> Tensor:
        logits, self.state = self.model(ids.to(self.device), self.state)
        return logits

    @torch.no_grad()
    def forward(self, ids: Tensor) -> Tensor:
        return self.model(ids.to(self.device))[0]

    def cache_bytes(self) -> int:
        return self.state.nbytes()


class HFStreamer(Streamer):
    def __init__(self, hf_model, policy: CachePolicy | None) -> None:
        self.hf, self.model, self.policy = hf_model, hf_model.model.eval(), policy
        self.trained_len, self.tokenizer = hf_model.trained_len, hf_model.tokenizer
        bos = getattr(self.tokenizer, "bos_token_id", None) if self.tokenizer is not None else None
        self.bos = [bos] if bos is not None else []
        self.device = next(self.model.parameters()).device
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = self.hf.new_cache(self.policy) if self.policy else DynamicCache(config=self.model.config)

    @torch.no_grad()
    def feed(self, ids: Tensor) -> Tensor:
        ids, outs, start = ids.to(self.device), [], 0
        while start < ids.shape[1]:  # as many tokens per forward as fit without eviction
            cap = self.policy.capacity if self.policy else None
            free = ids.shape[1] if cap is None else cap - self.cache.get_seq_length()
            n = max(1, min(ids.shape[1] - start, free))
            outs.append(self.model(ids[:, start:start + n], past_key_values=self.cache,
                                   use_cache=True).logits)
            start += n
        return torch.cat(outs, dim=1)

    @torch.no_grad()
    def forward(self, ids: Tensor) -> Tensor:
        return self.model(ids.to(self.device), use_cache=False).logits

    def cache_bytes(self) -> int:
        if hasattr(self.cache, "nbytes"):
            return self.cache.nbytes()
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (layer.keys, layer.values) if t is not None)


def open_streamer(path: str | Path, policy: CachePolicy | None, rope_scaling: dict | None = None,
                  device: str = "cpu", dtype: torch.dtype | None = None) -> Streamer:
    """A longctx checkpoint (``train-lm``'s output) or a local transformers model directory."""
    from longctx.models.io import is_longctx_checkpoint, load_lm

    if is_longctx_checkpoint(path):
        from longctx.models.rope import rope_mixers, set_rope_scaling
        from longctx.tasks.tokenizer import ByteTokenizer

        model, meta = load_lm(path, device=device)
        if dtype is not None:
            model = model.to(dtype)
        trained = meta.get("seq_len")
        if rope_scaling is not None:
            if not rope_mixers(model):
                raise ValueError(f"{path}: --rope given but the model has no RoPE attention layer")
            set_rope_scaling(model, {"original_max_position_embeddings": trained, **rope_scaling}
                             if rope_scaling.get("rope_type") in ("yarn", "dynamic", "llama3") else rope_scaling)
        if policy is not None:
            check_fits_training(policy, trained, rope_scaling, what=Path(path).name)
        tok = ByteTokenizer.from_dict(meta["tokenizer"]) if meta.get("tokenizer") else None
        bos = [tok.sink_id] if tok is not None and getattr(tok, "sink_id", None) is not None else []
        return LongCtxStreamer(model, policy, trained, tok, bos)
    from longctx.hf import load

    return HFStreamer(load(path, rope_scaling=rope_scaling, cache=policy, dtype=dtype, device=device), policy)


# -- generation -------------------------------------------------------------------------------

@torch.no_grad()
def generate_tokens(streamer: Streamer, prompt: list[int], max_new_tokens: int,
                    temperature: float = 0.0, top_k: int | None = None,
                    seed: int = 0) -> Iterator[int]:
    """Yield ``max_new_tokens`` tokens continuing ``prompt`` (greedy at ``temperature`` 0)."""
    if not prompt:
        raise ValueError("generate: the prompt is empty (give at least one token)")
    gen = torch.Generator().manual_seed(seed)
    streamer.reset()
    logits = streamer.feed(torch.tensor([prompt]))[:, -1]
    for _ in range(max_new_tokens):
        nxt = sample(logits.float().cpu(), temperature, top_k, gen)
        yield nxt
        logits = streamer.feed(torch.tensor([[nxt]]))[:, -1]


def sample(logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> int:
    """One token from ``logits [1, V]``: argmax at temperature 0, else softmax sampling."""
    if temperature <= 0:
        return int(logits.argmax(-1))
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=gen))


# -- the StreamingLLM evaluation --------------------------------------------------------------

@dataclass
class StreamResult:
    nll: Tensor  # [T-1] loss (nats) of token t+1 given the stream up to t
    seconds: float  # wall time of the whole stream
    cache_bytes: list[tuple[int, int]] = field(default_factory=list)  # (position, bytes)


@torch.no_grad()
def stream_nll(streamer: Streamer, ids: list[int] | Tensor, chunk: int = 1,
               progress: bool = True, desc: str = "stream") -> StreamResult:
    """Loss at every position of a stream fed ``chunk`` tokens at a time (1 = the paper's
    token-by-token decoding; the policy cache gives the same losses for any chunk)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
    streamer.reset()
    T, nll, mem = ids.shape[1], [], []
    t0 = time.perf_counter()
    bar = tqdm(total=T, desc=desc, unit="tok", disable=not progress, leave=False)
    for s in range(0, T, chunk):
        piece = ids[:, s:s + chunk]
        logits = streamer.feed(piece).float().cpu()  # [1, n, V]
        nll.append(-logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, s + 1:s + piece.shape[1], None])[:, 0])
        if s + piece.shape[1] < T:  # the last token of the piece predicts the next piece's first
            nll.append(-logits[0, -1].log_softmax(-1)[ids[0, s + piece.shape[1]]].reshape(1))
        mem.append((s + piece.shape[1], streamer.cache_bytes()))
        bar.update(piece.shape[1])
    bar.close()
    return StreamResult(torch.cat(nll), time.perf_counter() - t0, mem)


@torch.no_grad()
def recompute_nll(forward: Forward, ids: list[int] | Tensor, window: int, prefix: list[int] | None = None,
                  batch_size: int = 32, progress: bool = True) -> StreamResult:
    """Sliding window with re-computation: token ``t+1`` predicted by a fresh forward over
    ``prefix + ids[t-window+1 .. t]`` (the last ``window`` tokens, at positions 0 .. window-1).

    O(T window^2): the quality reference StreamingLLM is compared with (§4.1)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(-1)
    pre = torch.tensor(prefix or [], dtype=torch.int64)
    T, P, t0 = ids.numel(), pre.numel(), time.perf_counter()
    first = ids[:min(window, T)]
    logits = forward(torch.cat([pre, first])[None]).float().cpu()[0, P:]  # exact while t < window
    nll = [-logits[:-1].log_softmax(-1).gather(-1, first[1:, None])[:, 0]]
    starts = list(range(1, T - window))  # windows ids[s .. s+window-1] predict ids[s+window]
    bar = tqdm(total=len(starts), desc="recompute", unit="tok", disable=not progress, leave=False)
    for i in range(0, len(starts), batch_size):
        s = torch.tensor(starts[i:i + batch_size])
        win = ids[s[:, None] + torch.arange(window)]  # [b, window]
        x = torch.cat([pre.expand(len(s), P), win], dim=1)
        last = forward(x)[:, -1].float().cpu()  # [b, V]
        nll.append(-last.log_softmax(-1).gather(-1, ids[s + window, None])[:, 0])
        bar.update(len(s))
    bar.close()
    if T > window:  # the token right after the first window: predicted by the first forward
        nll.insert(1, -logits[-1].log_softmax(-1)[ids[window]].reshape(1))
    return StreamResult(torch.cat(nll), time.perf_counter() - t0)


@torch.no_grad()
def decode_latency(streamer: Streamer, ids: list[int] | Tensor, every: int = 64,
                   progress: bool = True) -> list[dict]:
    """Per-token decode time (ms) and cache bytes along a token-by-token stream, sampled every
    ``every`` positions (median of the ``every`` steps before each sample)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
    streamer.reset()
    rows, times = [], []
    for t in tqdm(range(ids.shape[1]), desc="decode", unit="tok", disable=not progress, leave=False):
        start = time.perf_counter()
        streamer.feed(ids[:, t:t + 1])
        times.append(time.perf_counter() - start)
        if (t + 1) % every == 0:
            rows.append({"position": t + 1, "ms_per_token": 1e3 * float(torch.tensor(times).median()),
                         "cache_bytes": streamer.cache_bytes()})
            times = []
    return rows


@torch.no_grad()
def recompute_latency(forward: Forward, ids: list[int] | Tensor, window: int, positions: list[int],
                      repeats: int = 5) -> list[dict]:
    """Per-token time (ms) of the re-computation baseline at stream positions ``positions``."""
    ids = torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1)
    rows = []
    for p in positions:
        x = ids[:, max(0, p - window):p]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(x)
            times.append(time.perf_counter() - start)
        rows.append({"position": p, "ms_per_token": 1e3 * float(torch.tensor(times).median())})
    return rows


def loss_by_position(nll: Tensor, bucket: int) -> list[tuple[int, float]]:
    """Mean loss over consecutive buckets of ``bucket`` positions: ``(end position, loss)``."""
    out = []
    for s in range(0, nll.numel(), bucket):
        part = nll[s:s + bucket]
        out.append((s + part.numel(), float(part.mean())))
    return out
