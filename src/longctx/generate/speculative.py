"""Speculative decoding for recurrent-state models (You et al., ICML 2024, arXiv 2406.07368).

A small draft model proposes ``gamma`` tokens one at a time; the target scores all of them in
**one** forward that continues its decode state (the chunked form with an initial state), and a
prefix is accepted by speculative sampling (Leviathan et al. 2023; Chen et al. 2023): the output
has exactly the target's distribution, and with ``temperature == 0`` it is the target's greedy
output token for token.

A recurrent state cannot be "truncated" like a KV cache, so after a partial acceptance both
models roll back (``rollback``):

* ``"recompute"``: keep the state from before the verification and re-run only the accepted
  tokens from it (a second, short target forward; none when every draft token was accepted);
* ``"states"``: verify with ``LongCtxLM.forward_states``, which returns the state after every
  verified position, and keep the one of the last accepted token (a KV cache or conv buffer is
  sliced; other mixers take the block as single-token steps);
* ``"auto"`` (default): ``"states"`` when every layer of the target slices its states natively
  (``forward_states``: softmax attention, short conv), else ``"recompute"``. Measured (CPU, 3
  layers, d 128, ``bench/speculative.py``): slicing costs ~10% over the plain verification, less
  than a re-run; the single-token-step fallback costs about gamma + 1 decode steps, more than the
  verification (one chunked forward) plus a re-run for gamma >= 4.

The draft decodes token by token, so its state after every draft token is kept for free; it
holds back the last one or two committed tokens and feeds them at the start of the next round.

Multi-candidate verification (``candidates = k > 1``): the draft proposes k continuations (the
top-k first tokens when greedy, k i.i.d. drafts when sampling), merged into a token tree, and the
target verifies them at once, either as a batch of k copies of its state (``verify="batch"``,
every mixer) or as one tree forward (``verify="tree"``, ``LongCtxLM.forward_tree``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
from torch import Tensor

from longctx.generate.candidates import TokenTree, walk
from longctx.generate.sampling import Sampler
from longctx.models.lm import LMState, LongCtxLM

ROLLBACKS = ("recompute", "states")
VERIFY_MODES = ("batch", "tree")


@dataclass
class SpecStats:
    """Counts of one ``speculative`` call."""

    target_calls: int = 0  # target forwards: prefill, verifications, rollback re-runs
    draft_calls: int = 0  # draft forwards: prefill and one per draft token
    rounds: int = 0  # draft-then-verify rounds
    proposed: int = 0  # draft positions put up for verification (gamma a round, fewer at the end)
    accepted: int = 0  # draft tokens accepted
    new_tokens: int = 0  # tokens generated
    verified_tokens: int = 0  # tokens fed to verification forwards (all k chains or tree nodes)
    wall_time_s: float = 0.0  # wall time of the whole call
    accepted_lengths: list[int] = field(default_factory=list)  # accepted drafts per round

    @property
    def acceptance_rate(self) -> float:
        """Accepted / proposed draft positions."""
        return self.accepted / self.proposed if self.proposed else math.nan

    @property
    def target_calls_per_token(self) -> float:
        """Target forwards per generated token (1 for plain decoding, prefill aside)."""
        return self.target_calls / self.new_tokens if self.new_tokens else math.nan

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate,
                "target_calls_per_token": self.target_calls_per_token}


@dataclass
class _Proposal:
    """One round of drafting."""

    tokens: Tensor  # [k, g] draft tokens of each candidate
    q: list[Tensor]  # q[j] [1 or k, V]: the draft distribution token j was drawn from
    states: list[LMState]  # states[j]: draft state after the pending tokens + tokens[:, :j]

    def q_at(self, tree: TokenTree, v: int) -> Tensor:
        q = self.q[tree.depth[v]]
        return q[tree.through[v][0]] if q.shape[0] > 1 else q[0]


@dataclass
class _Verification:
    """The target's scores of one round's candidates, and what a rollback may reuse."""

    logits: Tensor  # [k, 1 + g, V] (batch) or [1, N, V] (tree)
    tree_mode: bool
    state: LMState | None = None  # after the whole block (batch verify)
    states: list[LMState] | None = None  # after each block position (rollback="states")

    def p_at(self, tree: TokenTree, sampler: Sampler, v: int) -> Tensor:
        row = self.logits[0, v] if self.tree_mode else self.logits[tree.through[v][0], tree.depth[v]]
        return sampler.probs(row)


@torch.no_grad()
def speculative(
    target: LongCtxLM,
    draft: LongCtxLM,
    prompt: Tensor,
    *,
    max_new_tokens: int,
    gamma: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    rollback: str = "auto",
    candidates: int = 1,
    verify: str = "batch",
) -> tuple[Tensor, SpecStats]:
    """Generate ``max_new_tokens`` after ``prompt [1, T]`` with ``target``, drafted by ``draft``.

    Returns ``tokens [1, T + max_new_tokens]`` (prompt included, as ``target.generate``) and a
    :class:`SpecStats`. ``temperature``/``top_k`` as in ``LongCtxLM.generate``; ``gamma`` draft
    tokens a round; ``rollback`` in ``ROLLBACKS`` or ``"auto"``; ``candidates`` continuations verified together
    as a batch or a token tree (``verify`` in ``VERIFY_MODES``). Batch size 1 only.
    """
    _check_args(target, draft, prompt, max_new_tokens, gamma, temperature, top_k, rollback,
                candidates, verify)
    start = time.perf_counter()
    rollback = resolve_rollback(target, rollback, verify)
    sampler = Sampler(float(temperature), top_k, generator)
    stats = SpecStats()
    out_dtype, prompt = prompt.dtype, prompt.long()
    out = prompt[0].tolist()
    t_state = _prefill(target, prompt, stats, "target_calls")  # holds all but the last token
    d_state = _prefill(draft, prompt, stats, "draft_calls")
    d_pending = prompt[:, -1:]  # tokens the draft has not consumed yet
    new = 0
    while new < max_new_tokens:
        g = min(gamma, max_new_tokens - new - 1)  # a round commits at most g + 1 tokens
        prop = _propose(draft, d_state, d_pending, g, candidates, sampler, stats)
        tree = TokenTree.from_chains(out[-1], prop.tokens)
        ver = _verify(target, t_state, tree, prop.tokens, verify, rollback, stats)
        path, nxt = walk(tree, prop.tokens, partial(ver.p_at, tree, sampler),
                         partial(prop.q_at, tree), sampler)
        accepted = [tree.tokens[v] for v in path]
        stats.rounds += 1
        stats.proposed += g
        stats.accepted += len(path)
        stats.accepted_lengths.append(len(path))
        block = [out[-1], *accepted]  # the tokens the target state must now take in
        out += [*accepted, nxt]
        new += len(path) + 1
        if new >= max_new_tokens:
            break
        chain = tree.through[path[-1]][0] if path else 0  # a candidate along the accepted path
        t_state = _target_rollback(target, t_state, ver, block, g, chain, stats)
        d_state, d_pending = _draft_rollback(prop, d_state, d_pending, len(path), g, chain, nxt)
    stats.new_tokens = new
    stats.wall_time_s = time.perf_counter() - start
    return torch.tensor([out], dtype=out_dtype, device=prompt.device), stats


def resolve_rollback(target: LongCtxLM, rollback: str, verify: str = "batch") -> str:
    """``"auto"`` -> ``"states"`` if every target layer has native ``forward_states`` (and the
    verification is a batch), else ``"recompute"``; other values are returned as they are."""
    if rollback != "auto":
        return rollback
    native = all(hasattr(m, "forward_states") for m in target.mixers)
    return "states" if native and verify == "batch" else "recompute"


def _prefill(model: LongCtxLM, prompt: Tensor, stats: SpecStats, counter: str) -> LMState:
    """The state after every prompt token but the last (which the first round feeds)."""
    state = model.init_state(1)
    if prompt.shape[1] > 1:
        _, state = model(prompt[:, :-1], state)
        setattr(stats, counter, getattr(stats, counter) + 1)
    return state


def _propose(draft: LongCtxLM, state: LMState, pending: Tensor, g: int, k: int,
             sampler: Sampler, stats: SpecStats) -> _Proposal:
    """``k`` draft continuations of ``g`` tokens: g draft forwards (batch 1, then batch k)."""
    if g == 0:
        return _Proposal(pending.new_zeros(k, 0), [], [])
    logits, s = draft(pending, state)
    q = sampler.probs(logits[:, -1])  # [1, V]
    tokens, qs, states = [sampler.first_tokens(q[0], k)], [q], [s]
    if k > 1:
        s = s.select([0] * k)  # one copy of the draft state per candidate
    for _ in range(1, g):
        logits, s = draft(tokens[-1][:, None], s)  # [k, 1, V]
        q = sampler.probs(logits[:, -1])  # [k, V]
        tokens.append(sampler.draw(q))
        qs.append(q)
        states.append(s)
    stats.draft_calls += g
    return _Proposal(torch.stack(tokens, dim=1), qs, states)


def _verify(target: LongCtxLM, state: LMState, tree: TokenTree, chains: Tensor, verify: str,
            rollback: str, stats: SpecStats) -> _Verification:
    """Score every candidate token with one target forward from ``state`` (not modified)."""
    stats.target_calls += 1
    if verify == "tree":
        idx = torch.tensor([tree.tokens], dtype=chains.dtype, device=chains.device)  # [1, N]
        stats.verified_tokens += len(tree)
        return _Verification(target.forward_tree(idx, tree.parents_tensor(idx.device), state), True)
    k = chains.shape[0]
    rows = torch.cat([chains.new_full((k, 1), tree.tokens[0]), chains], dim=1)  # [k, 1 + g]
    stats.verified_tokens += rows.numel()
    pre = state.select([0] * k) if k > 1 else state
    if rollback == "states":
        logits, states = target.forward_states(rows, pre)
        return _Verification(logits, False, states=states)
    logits, after = target(rows, pre)
    return _Verification(logits, False, state=after)


def _target_rollback(target: LongCtxLM, pre: LMState, ver: _Verification, block: list[int],
                     g: int, chain: int, stats: SpecStats) -> LMState:
    """The target state after ``block`` = last token + accepted drafts, from ``pre``."""
    n = len(block) - 1
    if ver.states is not None:  # rollback="states": the state at the last accepted position
        return _row(ver.states[n], chain)
    if ver.state is not None and n == g:  # everything accepted: the verified state is it
        return _row(ver.state, chain)
    stats.target_calls += 1  # re-run only the accepted tokens from the kept state
    idx = torch.tensor([block], dtype=torch.int64, device=ver.logits.device)
    return target(idx, pre)[1]


def _draft_rollback(prop: _Proposal, state: LMState, pending: Tensor, n: int, g: int, chain: int,
                    nxt: int) -> tuple[LMState, Tensor]:
    """The draft state after the accepted drafts, and the committed tokens it still lacks."""
    new = pending.new_tensor([[nxt]])
    if g == 0:
        return state, torch.cat([pending, new], dim=1)
    j = min(n, g - 1)  # its state after the pending tokens and the first j drafts
    s = _row(prop.states[j], chain) if j > 0 else prop.states[0]
    if n < g:
        return s, new
    return s, torch.cat([prop.tokens[chain:chain + 1, g - 1:], new], dim=1)  # d_g not consumed


def _row(state: LMState, row: int) -> LMState:
    """Row ``row`` of a batched state (a batch of one is returned as is)."""
    return state.select([row]) if state.mixers[0].batch_size > 1 else state


def _check_args(target, draft, prompt, max_new_tokens, gamma, temperature, top_k, rollback,
                candidates, verify) -> None:
    for name, model in (("target", target), ("draft", draft)):
        if not isinstance(model, LongCtxLM):
            raise TypeError(f"speculative: {name} must be a LongCtxLM, got {type(model).__name__}")
    V, Vd = target.config.vocab_size, draft.config.vocab_size
    if V != Vd:
        raise ValueError(f"speculative: target vocab_size={V} and draft vocab_size={Vd} differ; "
                         "the draft must use the target's vocabulary")
    if not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype not in (torch.int64, torch.int32):
        got = f"{prompt.dtype} {list(prompt.shape)}" if isinstance(prompt, Tensor) else type(prompt).__name__
        raise ValueError(f"speculative: prompt must be integer token ids [1, T], got {got}")
    if prompt.shape[0] != 1:
        raise ValueError(f"speculative: batch size must be 1 (rows accept different numbers of "
                         f"tokens), got prompt [B={prompt.shape[0]}, T]; decode rows one by one")
    if prompt.shape[1] < 1:
        raise ValueError("speculative: prompt must hold at least one token, got [1, 0]")
    if int(prompt.min()) < 0 or int(prompt.max()) >= V:
        raise ValueError(f"speculative: prompt token ids must lie in [0, vocab_size={V})")
    _check_int("max_new_tokens", max_new_tokens, 0)
    _check_int("gamma", gamma, 1)
    _check_int("candidates", candidates, 1)
    if candidates > V:
        raise ValueError(f"speculative: candidates={candidates} must be <= vocab_size={V}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"speculative: temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    if rollback not in (*ROLLBACKS, "auto"):
        raise ValueError(f"speculative: rollback must be 'auto' or one of {list(ROLLBACKS)}, "
                         f"got {rollback!r}")
    if verify not in VERIFY_MODES:
        raise ValueError(f"speculative: verify must be one of {list(VERIFY_MODES)}, got {verify!r}")
    if verify == "tree" and rollback == "states":
        raise ValueError("speculative: rollback='states' needs verify='batch' (forward_tree returns "
                         "no per-node states); use rollback='recompute' with verify='tree'")


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"speculative: {name} must be an integer >= {low}, got {value!r}")
