"""Multi-candidate verification: a token tree in one forward == each candidate alone (float64),
per-position states == re-running the prefix, and tree / batch speculative decoding is exact."""

from __future__ import annotations

import pytest
import torch

from longctx.generate import TokenTree, speculative
from longctx.layers import config_class, names
from longctx.layers.short_conv import ShortConv
from longctx.models.lm import _mixer_states, _tree_by_depth
from tests.generate import VOCAB, make_lm, perturbed_copy, prompt
from tests.helpers import assert_close

RTOL = 1e-12
NATIVE = ("softmax_attention",)  # mixers with their own forward_tree
FALLBACK = ("gla", "sliding_window_attention")  # exact depth-by-depth path


def candidate_chains(k: int = 4, g: int = 4, seed: int = 2) -> torch.Tensor:
    """k candidates of g tokens; candidates 0/1 and 2/3 share prefixes, so the trie branches."""
    c = torch.randint(0, VOCAB, (k, g), generator=torch.Generator().manual_seed(seed))
    c[1, :2] = c[0, :2]
    c[3, :1] = c[2, :1]
    return c


def state_after(model, idx: torch.Tensor):
    return model(idx, model.init_state(idx.shape[0]))[1]


def chain_of(tree: TokenTree, v: int) -> list[int]:
    out = []
    while v >= 0:
        out.append(v)
        v = tree.parents[v]
    return out[::-1]


@torch.no_grad()
@pytest.mark.parametrize("short_conv", [0, 3])
@pytest.mark.parametrize("mixer", NATIVE + FALLBACK)
def test_tree_equals_each_candidate_alone(mixer: str, short_conv: int) -> None:
    model = make_lm(mixer, short_conv)
    state = state_after(model, prompt(t=6))
    chains = candidate_chains()
    tree = TokenTree.from_chains(5, chains)
    assert len(tree) < 1 + chains.numel()  # shared prefixes were merged
    idx = torch.tensor([tree.tokens])
    logits = model.forward_tree(idx, tree.parents_tensor(), state)  # [1, N, V]
    for c in range(chains.shape[0]):
        alone, _ = model(torch.cat([torch.tensor([[5]]), chains[c:c + 1]], dim=1), state)
        nodes = [0] + [tree.children[(v, int(t))] for v, t in _walk_chain(tree, chains[c])]
        assert_close(alone[0], logits[0, nodes], RTOL, f"{mixer}: candidate {c}")


def _walk_chain(tree: TokenTree, chain: torch.Tensor):
    v = 0
    for t in chain.tolist():
        yield v, t
        v = tree.children[(v, t)]


@torch.no_grad()
@pytest.mark.parametrize("mixer", NATIVE + FALLBACK)
def test_tree_with_several_roots_batch_and_state_untouched(mixer: str) -> None:
    """A general tree (two roots, B = 2): node logits == its chain alone; the state is kept."""
    model = make_lm(mixer, 3)
    state = state_after(model, torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4)))
    before = {i: {k: t.clone() for k, t in s.tensors().items()} for i, s in enumerate(state.mixers)}
    parents = torch.tensor([-1, 0, 1, 0, -1, 4, 3, 2])
    idx = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(5))
    tree = TokenTree(idx[0].tolist(), parents.tolist(), [], [])
    logits = model.forward_tree(idx, parents, state)
    for v in range(8):
        nodes = chain_of(tree, v)
        alone, _ = model(idx[:, nodes], state)
        assert_close(alone[:, -1], logits[:, v], RTOL, f"{mixer}: node {v}")
    for i, s in enumerate(state.mixers):
        for k, t in s.tensors().items():
            assert torch.equal(t, before[i][k]), f"forward_tree changed state.{k}"


@torch.no_grad()
@pytest.mark.parametrize("mixer", [n for n in names() if config_class(n).causal])
def test_every_registered_mixer_verifies_a_tree(mixer: str) -> None:
    """The generic path (or a native one) is exact for every mixer in the registry."""
    model = make_lm(mixer, 3)
    state = state_after(model, prompt(t=6))
    parents = torch.tensor([-1, 0, 1, 0, 3, -1])
    idx = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(6))
    logits = model.forward_tree(idx, parents, state)
    tree = TokenTree(idx[0].tolist(), parents.tolist(), [], [])
    for v in (2, 4, 5):  # the leaves: their chains hold every node
        nodes = chain_of(tree, v)
        assert_close(model(idx[:, nodes], state)[0], logits[:, nodes], RTOL, f"{mixer}: leaf {v}")


@torch.no_grad()
@pytest.mark.parametrize("mixer", ["softmax_attention", "gla"])
def test_empty_tree(mixer: str) -> None:
    model = make_lm(mixer, 3)
    empty = torch.zeros(1, 0, dtype=torch.int64)
    assert model.forward_tree(empty, empty[0], model.init_state(1)).shape == (1, 0, VOCAB)


@torch.no_grad()
def test_native_softmax_tree_equals_generic_depth_path() -> None:
    model = make_lm("softmax_attention")
    mixer = model.mixers[0]
    state = state_after(model, prompt(t=7)).mixers[0]
    parents = torch.tensor([-1, 0, 0, 1, 1, 2, 5, -1])
    x = torch.randn(1, 8, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_close(_tree_by_depth(mixer, x, parents, state), mixer.forward_tree(x, parents, state),
                 RTOL, "native vs depth-by-depth")


@torch.no_grad()
def test_short_conv_tree_equals_chain() -> None:
    conv = ShortConv(8, 4).double()
    torch.nn.init.normal_(conv.weight)
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    _, state = conv(torch.randn(1, 3, 8, dtype=torch.float64), conv.init_state(1))
    parents = torch.tensor([-1, 0, 1, 0, 3, 4])
    y = conv.forward_tree(x, parents, state)
    for path in ([0, 1, 2], [0, 3, 4, 5]):
        alone, _ = conv(x[:, path], state)
        assert_close(alone, y[:, path], RTOL, f"conv along {path}")


@torch.no_grad()
@pytest.mark.parametrize("mixer", ["softmax_attention", "gla", "sliding_window_attention"])
def test_forward_states_equal_rerunning_each_prefix(mixer: str) -> None:
    model = make_lm(mixer, 3)
    state = state_after(model, prompt(t=6))
    idx = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    logits, states = model.forward_states(idx, state)
    ref, _ = model(idx, state)
    assert_close(ref, logits, RTOL, "logits")
    assert len(states) == 5
    for t in range(5):
        after = model(idx[:, :t + 1], state)[1]
        nxt = torch.tensor([[7, 9]])
        assert_close(model(nxt, after)[0], model(nxt, states[t])[0], RTOL, f"state after {t + 1}")


@torch.no_grad()
def test_generic_forward_states_of_empty_block() -> None:
    model = make_lm("gla")
    mixer, state = model.mixers[0], model.init_state(1).mixers[0]
    y, states = _mixer_states(mixer, torch.zeros(1, 0, 32, dtype=torch.float64), state)
    assert y.shape == (1, 0, 32) and states == []


@pytest.mark.parametrize("verify", ["batch", "tree"])
@pytest.mark.parametrize("mixer", ["softmax_attention", "gla"])
def test_multi_candidate_greedy_equals_target_generate(mixer: str, verify: str) -> None:
    target = make_lm(mixer, 3)
    draft = perturbed_copy(target, 0.03)
    idx = prompt()
    ref = target.generate(idx, 16)
    single = speculative(target, draft, idx, max_new_tokens=16, gamma=3)[1]
    out, stats = speculative(target, draft, idx, max_new_tokens=16, gamma=3, candidates=3,
                             verify=verify, rollback="recompute")
    assert torch.equal(out, ref)
    assert stats.accepted > single.accepted  # top-3 branches catch what the top-1 draft misses


@pytest.mark.parametrize("mixer", [m for m in ("deltanet", "mamba2") if m in names()])
def test_tree_mode_with_fallback_mixers(mixer: str) -> None:
    target = make_lm(mixer, 3)
    idx = prompt()
    out, _ = speculative(target, perturbed_copy(target, 0.03), idx, max_new_tokens=10, gamma=3,
                         candidates=2, verify="tree")
    assert torch.equal(out, target.generate(idx, 10))


def test_batch_and_tree_verify_sample_identically() -> None:
    target = make_lm("gla", 3)
    draft = perturbed_copy(target, 0.05)
    outs = []
    for verify in ("batch", "tree"):
        gen = torch.Generator().manual_seed(3)
        outs.append(speculative(target, draft, prompt(), max_new_tokens=20, gamma=3, candidates=3,
                                temperature=1.0, generator=gen, verify=verify)[0])
    assert torch.equal(outs[0], outs[1])


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("parents, match", [
    (torch.tensor([-1, 0, 2]), r"parents\[i\] < i"),
    (torch.tensor([-1, 0]), "parents has 2 nodes"),
    (torch.tensor([-1.0, 0.0, 1.0]), "int64"),
])
def test_bad_parents_are_refused(parents: torch.Tensor, match: str) -> None:
    model = make_lm("softmax_attention")
    with pytest.raises(ValueError, match=match):
        model.forward_tree(torch.zeros(1, 3, dtype=torch.int64), parents, model.init_state(1))


def test_tree_and_states_need_a_state() -> None:
    model = make_lm("gla")
    idx = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="state is required"):
        model.forward_tree(idx, torch.tensor([-1, 0, 1]), None)
    with pytest.raises(ValueError, match="state is required"):
        model.forward_states(idx, None)
