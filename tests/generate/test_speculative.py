"""Speculative decoding: greedy output == the target's greedy output, sampled output has the
target's distribution, both rollback strategies agree, bad arguments are refused."""

from __future__ import annotations

import pytest
import torch

from longctx.bench.speculative import (
    SpecBenchConfig,
    markov_language,
    run_spec_bench,
    sample_corpus,
)
from longctx.generate import (
    ROLLBACKS,
    Sampler,
    SpecStats,
    TokenTree,
    resolve_rollback,
    speculative,
    walk,
)
from longctx.layers import names
from tests.generate import VOCAB, make_lm, perturbed_copy, prompt

TARGET_MIXERS = [m for m in ("softmax_attention", "gla", "deltanet", "mamba2") if m in names()]
DRAFT_MIXER = "retention"  # smaller and different from every target
N_NEW = 13  # not a multiple of gamma + 1: the last round is cut short


def small_draft(vocab: int = VOCAB, seed: int = 3):
    return make_lm(DRAFT_MIXER, n_layers=1, d_model=16, vocab=vocab, seed=seed)


@pytest.mark.parametrize("rollback", ROLLBACKS)
@pytest.mark.parametrize("short_conv", [0, 3])
@pytest.mark.parametrize("mixer", TARGET_MIXERS)
def test_greedy_equals_target_generate(mixer: str, short_conv: int, rollback: str) -> None:
    target = make_lm(mixer, short_conv)
    idx = prompt()
    ref = target.generate(idx, N_NEW)
    assert len(set(ref[0, 5:].tolist())) > 1  # not a degenerate repetition
    out, stats = speculative(target, small_draft(), idx, max_new_tokens=N_NEW, gamma=3,
                             rollback=rollback)
    assert torch.equal(out, ref), f"{out.tolist()} != {ref.tolist()}"
    assert stats.new_tokens == N_NEW


@pytest.mark.parametrize("rollback", ROLLBACKS)
@pytest.mark.parametrize("mixer", TARGET_MIXERS)
def test_greedy_with_close_draft_accepts_partly(mixer: str, rollback: str) -> None:
    """A draft that often agrees: rounds accept 0 .. gamma tokens, so every rollback path runs."""
    target = make_lm(mixer, 3)
    draft = perturbed_copy(target, 0.02)
    idx = prompt()
    out, stats = speculative(target, draft, idx, max_new_tokens=20, gamma=3, rollback=rollback)
    assert torch.equal(out, target.generate(idx, 20))
    assert 0 < stats.accepted < stats.proposed
    assert 0 in stats.accepted_lengths and max(stats.accepted_lengths) >= 2


def test_self_draft_accepts_everything_and_needs_one_target_call_a_round() -> None:
    target = make_lm("gla", 3)
    idx = prompt()
    out, stats = speculative(target, target, idx, max_new_tokens=14, gamma=4)
    assert torch.equal(out, target.generate(idx, 14))
    assert stats.acceptance_rate == 1.0
    assert stats.accepted_lengths == [4, 4, 3]  # 5 + 5 + 4 tokens
    assert stats.target_calls == 1 + 3  # prefill + one verification a round, no re-runs
    assert stats.draft_calls == 1 + 4 + 4 + 3
    assert stats.target_calls_per_token < 0.3


def test_stats_are_consistent() -> None:
    target, draft = make_lm("softmax_attention"), small_draft()
    _, stats = speculative(target, draft, prompt(), max_new_tokens=N_NEW, gamma=3)
    assert isinstance(stats, SpecStats)
    assert stats.rounds == len(stats.accepted_lengths)
    assert stats.accepted == sum(stats.accepted_lengths)
    assert stats.new_tokens == stats.accepted + stats.rounds  # + one corrected / bonus token a round
    assert stats.verified_tokens == stats.proposed + stats.rounds  # k = 1: block = last + drafts
    assert stats.wall_time_s > 0
    d = stats.to_dict()
    assert d["acceptance_rate"] == stats.acceptance_rate and d["target_calls"] == stats.target_calls


@pytest.mark.parametrize("n_new, t", [(0, 5), (1, 5), (2, 1), (9, 1)])
def test_short_runs_and_one_token_prompt(n_new: int, t: int) -> None:
    target = make_lm("gla")
    idx = prompt(t=t)
    out, stats = speculative(target, small_draft(), idx, max_new_tokens=n_new, gamma=8)
    assert torch.equal(out, target.generate(idx, n_new))
    assert stats.new_tokens == n_new


def test_int32_prompt_keeps_its_dtype() -> None:
    target = make_lm("gla")
    idx = prompt().int()
    out, _ = speculative(target, small_draft(), idx, max_new_tokens=4)
    assert out.dtype == torch.int32 and torch.equal(out.long(), target.generate(idx.long(), 4))


def test_float32_models_run() -> None:
    target, draft = make_lm("gla", 3).float(), small_draft().float()
    out, stats = speculative(target, draft, prompt(), max_new_tokens=N_NEW, gamma=3)
    assert out.shape == (1, 5 + N_NEW) and stats.new_tokens == N_NEW


def test_rollback_strategies_give_identical_sampled_output() -> None:
    target = make_lm("softmax_attention", 3)
    draft = perturbed_copy(target, 0.05)
    outs = []
    for rollback in ROLLBACKS:
        gen = torch.Generator().manual_seed(7)
        out, stats = speculative(target, draft, prompt(), max_new_tokens=24, gamma=3,
                                 temperature=1.0, top_k=20, generator=gen, rollback=rollback)
        outs.append(out)
        assert 0 < stats.accepted < stats.proposed
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("mixer, verify, want", [
    ("softmax_attention", "batch", "states"),  # KV cache and conv buffer are sliced natively
    ("softmax_attention", "tree", "recompute"),  # forward_tree gives no per-node states
    ("gla", "batch", "recompute"),  # states would take gamma + 1 decode steps
    (["softmax_attention", "gla"], "batch", "recompute"),
])
def test_auto_rollback_choice(mixer, verify: str, want: str) -> None:
    target = make_lm(mixer, 3)
    assert resolve_rollback(target, "auto", verify) == want
    assert resolve_rollback(target, "recompute", verify) == "recompute"


# -- the sampled distribution ------------------------------------------------------------------

def chi_square_p(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``; cells expected < 5 pooled."""
    counts, probs = counts.double().flatten(), probs.double().flatten()
    expected = probs * counts.sum()
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def _table_walk_counts(p: torch.Tensor, q: torch.Tensor, k: int, n: int, seed: int) -> torch.Tensor:
    """Sample n two-token outputs with the acceptance walk, from fixed tables.

    ``p[a]`` / ``q[a]``: target / draft distribution of the second token after first token a;
    index V is the distribution of the first token. k i.i.d. draft chains of length 1.
    """
    V = p.shape[1]
    sampler = Sampler(temperature=1.0, generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(V, V)
    for _ in range(n):
        chains = sampler.first_tokens(q[V], k)[:, None]  # [k, 1]
        tree = TokenTree.from_chains(0, chains)
        path, nxt = walk(tree, chains, lambda v, t=tree: p[V] if v == 0 else p[t.tokens[v]],
                         lambda v: q[V], sampler)
        first = tree.tokens[path[0]] if path else nxt
        second = nxt if path else int(sampler.draw(p[first][None])[0])
        counts[first, second] += 1
    return counts


@pytest.mark.parametrize("k", [1, 3])
def test_acceptance_walk_samples_the_target_distribution(k: int) -> None:
    """The rule alone, on fixed tables (fast, so many samples): output ~ p, whatever q."""
    g = torch.Generator().manual_seed(2)  # tables where p, q overlap by ~70%
    V = 5
    p = torch.softmax(2 * torch.randn(V + 1, V, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(2 * torch.randn(V + 1, V, generator=g, dtype=torch.float64), -1)
    joint = p[V][:, None] * p[:V]  # [first, second]
    counts = _table_walk_counts(p, q, k, 4000, seed=k)
    assert chi_square_p(counts, joint) > 1e-3
    # the test has the power to see the likely bugs: always accepting the draft, and (k = 1)
    # resampling from p instead of the residual norm(max(0, p - q)) after a rejection
    draft_joint = q[V][:, None] * p[:V]
    assert chi_square_p(counts, draft_joint) < 1e-12
    if k == 1:
        kept = torch.minimum(p[V], q[V])
        no_residual = kept + (1 - kept.sum()) * p[V]
        assert chi_square_p(counts.sum(1), no_residual) < 1e-6  # on the first token


@torch.no_grad()
def _exact_two_token_dist(model, idx: torch.Tensor, temperature: float, top_k) -> torch.Tensor:
    sampler = Sampler(temperature, top_k)
    first = sampler.probs(model(idx)[0][0, -1])  # [V]
    V = first.shape[0]
    seqs = torch.cat([idx.expand(V, -1), torch.arange(V)[:, None]], dim=1)  # every first token
    second = sampler.probs(model(seqs)[0][:, -1])  # [V, V]
    return first[:, None] * second


@pytest.mark.parametrize("candidates, verify, top_k", [(1, "batch", None), (2, "tree", 5)])
def test_sampled_tokens_follow_the_target_distribution(candidates: int, verify: str, top_k) -> None:
    """End to end with models (vocab 8): the first two sampled tokens ~ the target's joint."""
    V = 8
    target = make_lm("softmax_attention", n_layers=1, d_model=16, vocab=V, scale=0.5)
    draft = make_lm("gla", n_layers=1, d_model=8, vocab=V, seed=5, scale=0.5)
    idx = prompt(t=1, vocab=V)
    exact = _exact_two_token_dist(target, idx, 1.0, top_k)
    gen = torch.Generator().manual_seed(11)
    counts = torch.zeros(V, V)
    for _ in range(400):
        out, _ = speculative(target, draft, idx, max_new_tokens=2, gamma=2, temperature=1.0,
                             top_k=top_k, generator=gen, candidates=candidates, verify=verify)
        counts[out[0, 1], out[0, 2]] += 1
    assert chi_square_p(counts, exact) > 1e-3
    assert chi_square_p(counts, _exact_two_token_dist(draft, idx, 1.0, top_k)) < 1e-12


# -- bad input ---------------------------------------------------------------------------------

def test_vocab_mismatch_names_both() -> None:
    with pytest.raises(ValueError, match=r"target vocab_size=48.*draft vocab_size=40"):
        speculative(make_lm("gla"), small_draft(vocab=40), prompt(), max_new_tokens=3)


@pytest.mark.parametrize("kwargs, match", [
    ({"gamma": 0}, "gamma"), ({"gamma": -2}, "gamma"), ({"gamma": 1.5}, "gamma"),
    ({"gamma": True}, "gamma"), ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"candidates": 0}, "candidates"), ({"candidates": VOCAB + 1}, "candidates"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"rollback": "truncate"}, "rollback"), ({"verify": "graph"}, "verify"),
    ({"verify": "tree", "rollback": "states", "candidates": 2}, "rollback='states'"),
])
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        speculative(make_lm("gla"), small_draft(), prompt(), **args)


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 5, dtype=torch.int64), "batch size must be 1"),
    (torch.zeros(1, 0, dtype=torch.int64), "at least one token"),
    (torch.zeros(1, 5), r"integer token ids \[1, T\]"),
    (torch.zeros(5, dtype=torch.int64), r"integer token ids \[1, T\]"),
    (torch.full((1, 3), VOCAB), "vocab_size=48"),
])
def test_bad_prompt_is_refused(bad: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        speculative(make_lm("gla"), small_draft(), bad, max_new_tokens=3)


def test_non_lm_is_refused() -> None:
    with pytest.raises(TypeError, match="draft must be a LongCtxLM"):
        speculative(make_lm("gla"), torch.nn.Linear(2, 2), prompt(), max_new_tokens=3)


# -- the benchmark (smoke) ---------------------------------------------------------------------

def test_bench_smoke(tmp_path) -> None:
    cfg = SpecBenchConfig(vocab_size=12, seq_len=24, target_layers=1, target_d_model=16,
                          draft_d_model=8, train_steps=2, batch_size=2, prompt_len=4, new_tokens=5,
                          n_prompts=1, repeats=1, gammas=[2], candidates=[2], tree_gamma=2,
                          temperatures=[0.0], rollback_mixers=["gla"])
    data = run_spec_bench(cfg, tmp_path / "spec.json")
    assert (tmp_path / "spec.json").exists()
    assert data["meta"]["greedy_matches_target_generate"] is True
    methods = [r["method"] for r in data["results"]]
    assert methods.count("plain") == 1 and methods.count("speculative") == 2
    assert methods.count("multi_candidate") == 2
    assert all(r["ms_per_token"] > 0 for r in data["results"])
    assert data["rollback_costs"][0]["verify_ms"] > 0


def test_synthetic_language_is_deterministic_and_sparse() -> None:
    lang = markov_language(16, 3, seed=0)
    assert torch.equal(lang[0], markov_language(16, 3, seed=0)[0])
    seqs = sample_corpus(lang, 4, 40, 8, torch.Generator().manual_seed(0))
    assert seqs.shape == (4, 40) and int(seqs.max()) < 16
    succ = lang[0]
    ok = [(int(b) in succ[int(a)].tolist()) for a, b in zip(seqs[:, :-1].flatten(), seqs[:, 1:].flatten())]
    assert sum(ok) / len(ok) > 0.8  # Markov transitions, apart from the copied n-grams' seams
