"""Speculative decoding on trained models: acceptance, target forwards and wall time per token.

``run_spec_bench(config, path)`` trains a target and a smaller draft ``LongCtxLM`` on a synthetic
language (a sparse random Markov chain with repeated n-grams, generated from ``config.seed``),
checks that greedy speculative decoding reproduces ``target.generate`` on them (no timing
without a passing check), then measures, for each temperature:

* plain decoding (``target.generate``): ms per generated token;
* single-candidate speculative decoding for every gamma and rollback strategy;
* multi-candidate decoding (k candidates, ``verify="batch"`` and ``"tree"``) at ``tree_gamma``.

``rollback_costs`` times the two rollback strategies' target work alone, per round, on untrained
models of the target's size for several mixers: the verification forward, ``forward_states``
over the same block, and the re-run of ``n + 1`` accepted tokens that ``recompute`` adds when
``n < gamma`` drafts were accepted. It is what ``rollback="auto"`` is chosen from.

Each row has the acceptance rate, target forwards per generated token (1 for plain decoding),
ms per token (median over ``repeats`` runs of all prompts) and the speedup over plain decoding.
Command line (the lead's full run; ``--quick`` is a seconds-long smoke run)::

    python -m longctx.bench.speculative results/speculative.json [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.generate import ROLLBACKS, resolve_rollback, speculative
from longctx.models import LMConfig, LongCtxLM


@dataclass
class SpecBenchConfig:
    vocab_size: int = 64  # tokens of the synthetic language
    branching: int = 3  # successors per token in the Markov chain
    copy_ngram: int = 8  # length of the n-grams copied back into a sequence
    seq_len: int = 128  # training sequence length
    target_mixer: str = "gla"  # target: mixer, layers, width
    target_layers: int = 3
    target_d_model: int = 128
    draft_mixer: str = "gla"  # draft: smaller
    draft_layers: int = 1
    draft_d_model: int = 64
    short_conv: int = 4  # short conv before every mixer (helps the n-gram copies)
    train_steps: int = 400  # optimizer steps for each model
    batch_size: int = 32
    lr: float = 3e-3
    prompt_len: int = 32
    new_tokens: int = 96  # generated tokens per prompt
    n_prompts: int = 4
    repeats: int = 3  # timing repeats (median)
    gammas: list[int] = field(default_factory=lambda: [2, 4, 8])
    candidates: list[int] = field(default_factory=lambda: [2, 4])
    tree_gamma: int = 4  # gamma of the multi-candidate runs
    temperatures: list[float] = field(default_factory=lambda: [0.0, 1.0])
    rollback_mixers: list[str] = field(default_factory=lambda: ["gla", "softmax_attention"])
    threads: int | None = None  # torch.set_num_threads (None = leave as is)
    seed: int = 0


QUICK = {"vocab_size": 16, "seq_len": 32, "target_layers": 2, "target_d_model": 32,
         "draft_d_model": 16, "train_steps": 20, "batch_size": 8, "prompt_len": 8, "new_tokens": 12,
         "n_prompts": 1, "repeats": 1, "gammas": [2], "candidates": [2], "tree_gamma": 2,
         "temperatures": [0.0, 1.0], "rollback_mixers": ["gla"]}


def markov_language(vocab: int, branching: int, seed: int) -> tuple[Tensor, Tensor]:
    """``succ [V, b]`` successor tokens and ``probs [V, b]`` (peaked) of a sparse Markov chain."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.stack([torch.randperm(vocab, generator=g)[:branching] for _ in range(vocab)])
    probs = torch.softmax(2.0 * torch.randn(vocab, branching, generator=g), dim=-1)
    return succ, probs


def sample_corpus(lang: tuple[Tensor, Tensor], n: int, T: int, ngram: int,
                  g: torch.Generator) -> Tensor:
    """``[n, T]`` sequences: a Markov walk, then (in half of them) an earlier n-gram copied later."""
    succ, probs = lang
    x = torch.randint(0, succ.shape[0], (n,), generator=g)
    cols = [x]
    for _ in range(T - 1):
        j = torch.multinomial(probs[x], 1, generator=g)[:, 0]
        x = succ[x, j]
        cols.append(x)
    seqs = torch.stack(cols, dim=1)
    if T >= 3 * ngram:
        for i in torch.nonzero(torch.rand(n, generator=g) < 0.5)[:, 0].tolist():
            s = int(torch.randint(0, T - 3 * ngram, (), generator=g))
            d = int(torch.randint(s + ngram, T - ngram, (), generator=g))
            seqs[i, d:d + ngram] = seqs[i, s:s + ngram]
    return seqs


def build(cfg: SpecBenchConfig, mixer: str, layers: int, d_model: int) -> LongCtxLM:
    return LongCtxLM(LMConfig(vocab_size=cfg.vocab_size, d_model=d_model, n_layers=layers,
                              n_heads=4 if d_model >= 64 else 2, mixer=mixer,
                              short_conv=cfg.short_conv))


def train_lm(model: LongCtxLM, cfg: SpecBenchConfig, lang, seed: int) -> dict:
    """Next-token cross-entropy with AdamW and cosine decay; returns the final losses."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.train_steps)
    model.train()
    start, losses = time.perf_counter(), []
    for _ in range(cfg.train_steps):
        seqs = sample_corpus(lang, cfg.batch_size, cfg.seq_len + 1, cfg.copy_ngram, g)
        logits, _ = model(seqs[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"final_loss": sum(tail) / len(tail), "train_time_s": time.perf_counter() - start,
            "params": sum(p.numel() for p in model.parameters())}


def _median_ms_per_token(fn, n_tokens: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / n_tokens


def _measure_spec(target, draft, prompts: Tensor, cfg: SpecBenchConfig, temperature: float,
                  **kw) -> dict:
    """One speculative setting over all prompts: counts from the first repeat, median time."""
    n_tok = cfg.new_tokens * prompts.shape[0]
    totals: dict[str, float] = {}

    def run(record: bool) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        for p in prompts:
            _, st = speculative(target, draft, p[None], max_new_tokens=cfg.new_tokens,
                                temperature=temperature, generator=gen, **kw)
            if record:
                for key in ("target_calls", "draft_calls", "proposed", "accepted", "new_tokens",
                            "verified_tokens"):
                    totals[key] = totals.get(key, 0) + getattr(st, key)

    run(True)
    ms = _median_ms_per_token(lambda: run(False), n_tok, cfg.repeats)
    used = resolve_rollback(target, kw.get("rollback", "auto"), kw.get("verify", "batch"))
    return {**kw, "rollback_used": used, "temperature": temperature, "ms_per_token": ms,
            "acceptance_rate": totals["accepted"] / max(1, totals["proposed"]),
            "target_calls_per_token": totals["target_calls"] / totals["new_tokens"],
            "draft_calls_per_token": totals["draft_calls"] / totals["new_tokens"],
            "verified_tokens_per_token": totals["verified_tokens"] / totals["new_tokens"]}


def _check_exact(target, draft, prompts: Tensor, cfg: SpecBenchConfig) -> bool:
    ref = target.generate(prompts[:1], cfg.new_tokens)
    runs = [{"rollback": r} for r in ROLLBACKS]
    runs += [{"candidates": max(cfg.candidates), "verify": v} for v in ("batch", "tree")]
    return all(torch.equal(speculative(target, draft, prompts[:1], max_new_tokens=cfg.new_tokens,
                                       gamma=cfg.tree_gamma, **kw)[0], ref) for kw in runs)


def _plain(target: LongCtxLM, prompts: Tensor, cfg: SpecBenchConfig, temperature: float) -> None:
    gen = torch.Generator().manual_seed(cfg.seed)
    for p in prompts:
        target.generate(p[None], cfg.new_tokens, temperature=temperature, generator=gen)


@torch.no_grad()
def measure(target: LongCtxLM, draft: LongCtxLM, prompts: Tensor, cfg: SpecBenchConfig) -> list[dict]:
    rows = []
    n_tok = cfg.new_tokens * prompts.shape[0]
    for temp in cfg.temperatures:
        base = _median_ms_per_token(partial(_plain, target, prompts, cfg, temp), n_tok, cfg.repeats)
        rows.append({"method": "plain", "temperature": temp, "ms_per_token": base,
                     "target_calls_per_token": 1.0, "speedup": 1.0})
        for gamma in cfg.gammas:
            for rollback in ROLLBACKS:
                r = _measure_spec(target, draft, prompts, cfg, temp, gamma=gamma, rollback=rollback)
                rows.append({"method": "speculative", **r, "speedup": base / r["ms_per_token"]})
        for k in cfg.candidates:
            for verify in ("batch", "tree"):
                r = _measure_spec(target, draft, prompts, cfg, temp, gamma=cfg.tree_gamma,
                                  candidates=k, verify=verify)
                rows.append({"method": "multi_candidate", **r, "speedup": base / r["ms_per_token"]})
    return rows


@torch.no_grad()
def rollback_costs(cfg: SpecBenchConfig) -> list[dict]:
    """ms of one round's target work under each rollback strategy (see the module docstring)."""
    rows = []
    for mixer in cfg.rollback_mixers:
        model = build(cfg, mixer, cfg.target_layers, cfg.target_d_model).eval()
        g = torch.Generator().manual_seed(cfg.seed)
        ctx = torch.randint(0, cfg.vocab_size, (1, cfg.prompt_len), generator=g)
        state = model(ctx, model.init_state(1))[1]
        for gamma in cfg.gammas:
            block = torch.randint(0, cfg.vocab_size, (1, gamma + 1), generator=g)
            reps = max(5, cfg.repeats)
            rerun = {n: _warm_ms(partial(model, block[:, :n + 1], state), reps) for n in range(gamma)}
            rows.append({"mixer": mixer, "gamma": gamma,
                         "verify_ms": _warm_ms(partial(model, block, state), reps),
                         "forward_states_ms": _warm_ms(partial(model.forward_states, block, state), reps),
                         "rerun_ms": rerun, "rerun_mean_ms": statistics.mean(rerun.values())})
    return rows


def _warm_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    return _median_ms_per_token(fn, 1, repeats)


def run_spec_bench(cfg: SpecBenchConfig, path: str | Path) -> dict:
    """Train, check, measure; write the results JSON to ``path`` and return it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    lang = markov_language(cfg.vocab_size, cfg.branching, cfg.seed)
    target = build(cfg, cfg.target_mixer, cfg.target_layers, cfg.target_d_model)
    draft = build(cfg, cfg.draft_mixer, cfg.draft_layers, cfg.draft_d_model)
    train = {"target": train_lm(target, cfg, lang, cfg.seed + 1),
             "draft": train_lm(draft, cfg, lang, cfg.seed + 2)}
    prompts = sample_corpus(lang, cfg.n_prompts, cfg.prompt_len, cfg.copy_ngram,
                            torch.Generator().manual_seed(cfg.seed + 3))
    with torch.no_grad():
        exact = _check_exact(target, draft, prompts, cfg)
    rows = measure(target, draft, prompts, cfg) if exact else []
    costs = rollback_costs(cfg)
    data = {"meta": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
                     "threads": torch.get_num_threads(), "loadavg": _loadavg(),
                     "greedy_matches_target_generate": exact},
            "config": asdict(cfg), "train": train, "results": rows, "rollback_costs": costs}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return data


def _loadavg() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="results JSON path")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration (seconds)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="training steps of each model")
    args = ap.parse_args(argv)
    cfg = SpecBenchConfig(**(QUICK if args.quick else {}), threads=args.threads)
    if args.steps is not None:
        cfg.train_steps = args.steps
    data = run_spec_bench(cfg, args.out)
    for c in data["rollback_costs"]:
        print(f"rollback cost {c['mixer']:18s} gamma={c['gamma']} verify={c['verify_ms']:.2f} ms "
              f"forward_states={c['forward_states_ms']:.2f} ms re-run={c['rerun_mean_ms']:.2f} ms")
    for r in data["results"]:
        extra = {k: r[k] for k in ("gamma", "rollback", "candidates", "verify") if k in r}
        print(f"{r['method']:16s} T={r['temperature']:.1f} {extra} ms/tok={r['ms_per_token']:.2f} "
              f"acc={r.get('acceptance_rate', float('nan')):.2f} "
              f"target/tok={r['target_calls_per_token']:.2f} speedup={r['speedup']:.2f}")


if __name__ == "__main__":
    main()
