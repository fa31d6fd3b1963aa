"""Decode cost per token vs context length: landmark attention with top-k block retrieval
against full softmax attention's KV-cache step (and landmark attention retrieving every block).

For each context length S a state of S cached tokens is built (random keys/values/landmarks),
then ``--steps`` tokens are decoded one by one and the mean wall time per token is reported.
``--steps`` defaults to the block size, so the one block completion in that window (which
copies the block store, O(S)) is included: the numbers are amortised per token. Writes JSON.

    PYTHONPATH=src python benchmarks/scripts/landmark_decode.py --out landmark_decode.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from longctx.ops.landmark_attention import landmark_attention_step
from longctx.ops.softmax_attention import softmax_attention_step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    p.add_argument("--heads", type=int, default=4, help="query heads (= key/value heads)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="decoded tokens timed (default: block)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="landmark_decode.json")
    return p.parse_args()


def time_steps(step, state, tokens, warmup: int) -> float:
    """Mean seconds per token over ``tokens`` (after ``warmup`` untimed steps from ``state``)."""
    s = state
    for q, k, v, kl in tokens[:warmup]:
        _, s = step(q, k, v, kl, s)
    s = state  # timed run starts from the same state
    t0 = time.perf_counter()
    for q, k, v, kl in tokens[warmup:]:
        _, s = step(q, k, v, kl, s)
    return (time.perf_counter() - t0) / (len(tokens) - warmup)


def run(S: int, a: argparse.Namespace) -> dict:
    H, D, bs = a.heads, a.head_dim, a.block_size
    steps = a.steps or bs
    g = torch.Generator().manual_seed(S)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    N, r = S // bs, S % bs
    lm_state = (rnd(1, N, bs, H, D), rnd(1, N, bs, H, D), rnd(1, N, H, D), rnd(1, r, H, D),
                rnd(1, r, H, D))
    kv_state = (torch.cat([lm_state[0].flatten(1, 2), lm_state[3]], 1),
                torch.cat([lm_state[1].flatten(1, 2), lm_state[4]], 1))  # the same S tokens
    tokens = []  # warmup tokens, then the timed ones; each run starts at position S
    for t in [*range(a.warmup), *range(steps)]:
        kl = rnd(1, H, D) if (S + t + 1) % bs == 0 else None  # position S + t closes a block
        tokens.append((rnd(1, H, D), rnd(1, H, D), rnd(1, H, D), kl))

    def landmark(top_k):
        return lambda q, k, v, kl, s: landmark_attention_step(q, k, v, kl, s, bs, top_k=top_k)

    def softmax(q, k, v, kl, s):
        return softmax_attention_step(q, k, v, s)

    with torch.inference_mode():
        t_topk = time_steps(landmark(a.top_k), lm_state, tokens, a.warmup)
        t_all = time_steps(landmark(None), lm_state, tokens, a.warmup)
        t_soft = time_steps(softmax, kv_state, tokens, a.warmup)
    return {
        "context": S,
        "landmark_topk_ms": 1e3 * t_topk,
        "landmark_all_blocks_ms": 1e3 * t_all,
        "softmax_ms": 1e3 * t_soft,
        "softmax_over_landmark_topk": t_soft / t_topk,
        "keys_read_topk": N + (min(a.top_k, N) + 1) * bs,  # landmarks + retrieved + open block
        "keys_read_softmax": S + 1,
    }


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    results = []
    for S in a.lengths:
        row = run(S, a)
        results.append(row)
        print(f"S={S:>6}: landmark top-{a.top_k} {row['landmark_topk_ms']:.3f} ms/token, "
              f"landmark all {row['landmark_all_blocks_ms']:.3f}, "
              f"softmax {row['softmax_ms']:.3f} ({row['softmax_over_landmark_topk']:.1f}x)")
    doc = {
        "what": "decode wall time per token (mean, amortised over one block), CPU, batch 1",
        "device": "cpu", "platform": platform.platform(), "torch": torch.__version__,
        "threads": a.threads,
        "config": {"heads": a.heads, "kv_heads": a.heads, "head_dim": a.head_dim,
                   "block_size": a.block_size, "top_k": a.top_k,
                   "steps": a.steps or a.block_size, "warmup": a.warmup, "dtype": "float32"},
        "results": results,
    }
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
