"""RMTLM (Recurrent Memory Transformer, memory through the whole stack): one call == pieces with
the carried state == token-by-token decode == the naive from-scratch form (values and gradients);
gradients stop at the BPTT boundaries (token embeddings and the initial memory); the memory carries
a token across a segment boundary on a copy task; bounded state; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.cache import window
from longctx.models import LMConfig, LongCtxLM
from longctx.models.rmt import RMTLM, RMTConfig, RMTState, rmt_naive
from tests.helpers import assert_close

VOCAB, D, S, M = 24, 16, 4, 2


def make(**kw) -> RMTLM:
    cfg = {"vocab_size": VOCAB, "d_model": D, "n_layers": 2, "n_heads": 2, "segment_len": S, "n_mem": M, **kw}
    torch.manual_seed(0)
    model = RMTLM(RMTConfig(**cfg))
    with torch.no_grad():  # larger than the 0.02 init, so every path matters numerically
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5 if name in ("embed.weight", "memory_init") else 0.3)
    return model.double().eval()


def ids(b: int = 2, t: int = 15, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


STACKS = [{}, {"short_conv": 3}, {"mixer": "gla", "mixer_options": {"gla": {"chunk_size": 4}}},
          {"mixer_options": {"softmax_attention": {"n_kv_heads": 1, "backend": "chunk", "chunk_size": 4}}}]


@pytest.mark.parametrize("stack", STACKS, ids=["softmax", "short_conv", "gla", "gqa_chunk"])
def test_one_call_equals_pieces_equals_decode(stack: dict) -> None:
    model, x = make(**stack), ids()  # T = 15: three full segments and a partial one
    assert_close(rmt_naive(model, x), model(x)[0], rtol=1e-12, name="naive")
    ref, none = model(x)
    assert none is None and ref.shape == (2, 15, VOCAB)
    full, state_full = model(x, model.init_state(2))
    assert_close(ref, full, rtol=1e-12)
    for cuts in ((4, 8, 12), (3, 9, 10), (1, 6, 13)):  # at boundaries, mid-segment, mixed
        state, pieces = model.init_state(2), []
        for a, b in zip((0, *cuts), (*cuts, 15)):
            y, state = model(x[:, a:b], state)
            pieces.append(y)
        assert_close(ref, torch.cat(pieces, 1), rtol=1e-12, name=f"pieces {cuts}")
        assert_close(state_full.memory, state.memory, rtol=1e-12, name="memory")
    state, steps = model.init_state(2), []
    for t in range(15):
        y, state = model(x[:, t:t + 1], state)
        steps.append(y)
        assert state.n_tokens == (t + 1) % S and state.n_segments == (t + 1) // S
    assert_close(ref, torch.cat(steps, 1), rtol=1e-12, name="token by token")
    assert_close(state_full.memory, state.memory, rtol=1e-12, name="memory")


def test_equals_naive_values_and_gradients() -> None:
    model, x = make(bptt_segments=2), ids(t=13)
    ref = rmt_naive(model, x)
    out, _ = model(x)
    assert_close(ref, out, rtol=1e-12)
    cot = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    params = [p for p in model.parameters()]
    g_ref = torch.autograd.grad((ref * cot).sum(), params)
    g_out = torch.autograd.grad((out * cot).sum(), params)
    for (name, _), a, b in zip(model.named_parameters(), g_ref, g_out):
        assert_close(a, b, rtol=1e-10, name=f"grad {name}")


def test_memory_changes_the_next_segment_only() -> None:
    """Tokens of segment 1 depend on segment 0 only through the memory, and they do depend on it."""
    model, x = make(), ids(b=1, t=2 * S)
    y = model(x)[0]
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % VOCAB
    y2 = model(x2)[0]
    assert (y2[:, S:] - y[:, S:]).abs().max() > 1e-6
    model.memory_init.data.zero_()
    assert (model(x)[0][:, :S] - y[:, :S]).abs().max() > 1e-6  # the read memory feeds segment 0


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_gradients_stop_at_the_bptt_horizon(k: int) -> None:
    model, x = make(bptt_segments=k), ids(b=1, t=6 * S)
    captured = []
    hook = model.embed.register_forward_hook(lambda _m, _i, out: captured.append(out))
    logits, _ = model(x)
    hook.remove()
    (emb,) = captured  # [1, T, d_model]: the token embeddings the stack reads
    n = x.shape[1] // S
    for j in range(n):
        loss = logits[:, j * S:(j + 1) * S].square().sum()  # the loss at segment j
        g_emb, g_mem = torch.autograd.grad(loss, [emb, model.memory_init], retain_graph=True)
        for i in range(j + 1):
            reaches = bool(g_emb[:, i * S:(i + 1) * S].abs().max() > 0)
            # memory detached at every k-th boundary: segment i feeds j iff no detach between them
            expect = k == 0 or i // k == j // k
            assert reaches == expect, (k, i, j)
            if k and j - i >= k:
                assert not reaches
        assert bool(g_mem.abs().max() > 0) == (k == 0 or j < k), (k, j)
        assert (g_emb[:, (j + 1) * S:] == 0).all()  # causal: later segments never


def test_state_size_is_bounded_and_matches_the_state() -> None:
    model = make()
    state = model.init_state(3)
    assert state.nbytes() == model.state_size(3, 0, torch.float64)
    x = ids(b=3, t=5 * S + 3)
    for t in range(x.shape[1]):
        _, state = model(x[:, t:t + 1], state)
        assert state.nbytes() == model.state_size(3, t + 1, torch.float64)
    assert model.state_size(1, 10**6) <= model.state_size(1, S - 1)
    sel = state.select([0, 2])
    assert sel.memory.shape == (2, M, D) and sel.segment.mixers[0].k.shape[0] == 2


def test_generate_matches_full_forward() -> None:
    model = make()
    out = model.generate(ids(t=6), 9)  # decodes across two segment boundaries
    logits = model(out[:, :-1])[0]
    assert torch.equal(logits[:, 5:].argmax(-1), out[:, 6:])


def test_forward_states_are_the_decode_states() -> None:
    model, x = make(), ids(t=7)
    state = model(x[:, :2], model.init_state(2))[1]
    logits, states = model.forward_states(x[:, 2:], state)
    assert_close(model(x)[0][:, 2:], logits, rtol=1e-12)
    y, _ = model(x[:, 5:], states[2])
    assert_close(model(x)[0][:, 5:], y, rtol=1e-12)


def _copy_accuracy(bptt_segments: int, steps: int = 60) -> float:
    """Segment 0 = [key, 3 random]; segment 1 = 4 random; the last position must name the key,
    which segment 1 can only read from the memory."""
    torch.manual_seed(0)
    V = 8
    model = RMTLM(RMTConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=2, segment_len=S, n_mem=2,
                            bptt_segments=bptt_segments))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randint(0, V, (64, 2 * S), generator=gen)
        loss = F.cross_entropy(model(x)[0][:, -1], x[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randint(0, V, (512, 2 * S), generator=gen)
    with torch.no_grad():
        return (model(x)[0][:, -1].argmax(-1) == x[:, 0]).double().mean().item()


def test_memory_carries_a_token_across_a_segment_boundary() -> None:
    assert _copy_accuracy(0) >= 0.9  # chance: 1/8
    # control: memory detached at the boundary, so the write is never trained for the key
    assert _copy_accuracy(1) <= 0.5


def test_errors() -> None:
    with pytest.raises(ValueError, match="segment_len must be a positive integer"):
        RMTConfig(segment_len=0)
    with pytest.raises(ValueError, match="n_mem must be a positive integer"):
        RMTConfig(n_mem=-1)
    with pytest.raises(ValueError, match="bptt_segments must be an int >= 0"):
        RMTConfig(bptt_segments=-2)
    with pytest.raises(ValueError, match="config must be an RMTConfig"):
        RMTLM(LMConfig())
    model, x = make(), ids(t=3)
    lm = LongCtxLM(LMConfig(vocab_size=VOCAB, d_model=D, n_layers=2, n_heads=2)).double()
    with pytest.raises(ValueError, match="state must be an RMTState"):
        model(x, lm.init_state(2))
    with pytest.raises(ValueError, match="n_mem=3.*n_mem=2"):
        model(x, make(n_mem=3).init_state(2))
    with pytest.raises(ValueError, match="segment_len=8.*segment_len=4"):
        model(x, make(segment_len=8).init_state(2))
    with pytest.raises(ValueError, match="d_model=32"):
        model(x, make(d_model=32).init_state(2))
    with pytest.raises(ValueError, match="batch size 3"):
        model(x, model.init_state(3))
    # a state from a longer-segment model, mid-segment: n_tokens >= this segment_len
    with pytest.raises(ValueError, match="segment_len"):
        model(x, make(segment_len=8)(ids(t=5), make(segment_len=8).init_state(2))[1])
    # a cache whose length does not match n_mem + n_tokens
    _, state = model(x, model.init_state(2))
    bad = RMTState(state.memory, state.segment, 1, 0, S, M)
    with pytest.raises(ValueError, match="n_mem \\+ n_tokens"):
        model(x[:, :1], bad)
    with pytest.raises(ValueError, match="cache policies do not apply"):
        model.init_state(1, cache=window(4))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.randn(2, 3))
