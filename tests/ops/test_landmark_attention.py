"""Landmark attention: the blocked form and the decode step against the naive grouped-softmax
definition in float64 (outputs, final states and every gradient, landmark keys and state
included), with carried states, GQA, Dv != D and lengths that are not multiples of the block or
chunk; top-k retrieval against an independent per-query reference over the selected blocks."""

from __future__ import annotations

import itertools

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.landmark_attention import (
    chunk_landmark_attention,
    landmark_attention_step,
    naive_landmark_attention,
    recurrent_landmark_attention,
)
from longctx.ops.softmax_attention import naive_softmax_attention
from tests.helpers import (
    assert_close,
    assert_states_close,
    grads_of,
    loss_from,
    random_like_outputs,
)

F64 = torch.float64
RTOL = 1e-9

SHAPES = [  # B, T, H, Hk, D, Dv
    (2, 1, 2, 2, 8, 8),
    (1, 23, 4, 2, 8, 6),  # GQA 2:1, Dv < D
    (2, 30, 4, 1, 4, 10),  # MQA, Dv > D
]


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}".format(*shape)


def n_landmarks(S: int, T: int, bs: int) -> int:
    return (S + T) // bs - S // bs


def make_inputs(B, T, H, Hk, D, Dv, bs, S=0, dtype=F64, requires_grad=False, seed=0):
    """q, k, v and the landmark keys of the blocks completed by T tokens after S."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return (rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv),
            rnd(B, n_landmarks(S, T, bs), Hk, D))


def make_state(B, S, bs, Hk, D, Dv, dtype=F64, requires_grad=False, seed=1):
    """A random state of S tokens: S // bs complete blocks and an open tail of S % bs."""
    g = torch.Generator().manual_seed(seed)
    N, r = S // bs, S % bs

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return (rnd(B, N, bs, Hk, D), rnd(B, N, bs, Hk, Dv), rnd(B, N, Hk, D), rnd(B, r, Hk, D),
            rnd(B, r, Hk, Dv))


def chunk5(*args, **kwargs):
    return chunk_landmark_attention(*args, chunk_size=5, **kwargs)


def reference(q, k, v, kl, bs, scale, top_k=None):
    """Per query and head, from the definition (no state): the first softmax over the own-block
    keys j <= t and the landmarks of the ``top_k`` earlier blocks with the highest landmark
    scores (all earlier blocks if None), each retrieved block's tokens weighted by its landmark's
    probability times the softmax over that block. Also returns the retrieved sets."""
    B, T, H, _ = q.shape
    G = H // k.shape[2]
    o = torch.zeros(B, T, H, v.shape[-1], dtype=q.dtype)
    chosen_all = {}
    for b, t, h in itertools.product(range(B), range(T), range(H)):
        hk, c = h // G, t // bs
        qv = q[b, t, h]
        lm = [scale * float(qv @ kl[b, n, hk]) for n in range(c)]
        order = sorted(range(c), key=lambda n: -lm[n])
        chosen = order if top_k is None else order[:top_k]
        if top_k is not None and len(order) > top_k:  # the selection must be clear-cut
            assert lm[order[top_k - 1]] - lm[order[top_k]] > 1e-6
        chosen_all[b, t, h] = set(chosen)
        own = list(range(c * bs, t + 1))
        logits = torch.stack([scale * (qv @ k[b, j, hk]) for j in own]
                             + [torch.tensor(lm[n], dtype=q.dtype) for n in chosen])
        p = torch.softmax(logits, dim=0)
        out = sum(p[i] * v[b, j, hk] for i, j in enumerate(own))
        for i, n in enumerate(chosen):
            blk = range(n * bs, (n + 1) * bs)
            a = torch.softmax(torch.stack([scale * (qv @ k[b, j, hk]) for j in blk]), dim=0)
            out = out + p[len(own) + i] * sum(a[m] * v[b, j, hk] for m, j in enumerate(blk))
        o[b, t, h] = out
    return o, chosen_all


# ---------------------------------------------------------------- 1. the definition


def test_naive_matches_per_query_reference():
    q, k, v, kl = make_inputs(2, 14, 4, 2, 5, 3, bs=3)
    o, _ = naive_landmark_attention(q, k, v, kl, block_size=3)
    o_ref, _ = reference(q, k, v, kl, 3, 5**-0.5)
    assert_close(o_ref, o, 1e-12)


def test_block_size_one_with_landmark_keys_equal_to_keys_is_softmax_attention():
    """bs = 1: every earlier block is one token, reached with weight exp(q.kl_j); with kl = k that
    is exactly causal softmax attention."""
    q, k, v, _ = make_inputs(2, 17, 4, 2, 8, 6, bs=1)
    o, _ = chunk5(q, k, v, k, block_size=1)
    assert_close(naive_softmax_attention(q, k, v)[0], o, RTOL)


def test_one_block_is_softmax_attention():
    """block_size > S + T: every query is in block 0, so only its own (causal) block counts."""
    q, k, v, kl = make_inputs(1, 19, 2, 2, 8, 8, bs=32)
    assert kl.shape[1] == 0
    o, _ = chunk5(q, k, v, kl, block_size=32)
    assert_close(naive_softmax_attention(q, k, v)[0], o, RTOL)


def test_landmarks_carry_no_value_and_own_landmark_is_unused():
    """Changing the landmark of block b changes only the outputs of queries after block b."""
    q, k, v, kl = make_inputs(1, 12, 2, 2, 4, 4, bs=4)
    o, _ = naive_landmark_attention(q, k, v, kl, block_size=4)
    kl2 = kl.clone()
    kl2[:, 1] += 1.0  # block 1 = positions 4..7
    o2, _ = naive_landmark_attention(q, k, v, kl2, block_size=4)
    assert torch.equal(o[:, :8], o2[:, :8]) and (o[:, 8:] - o2[:, 8:]).abs().min() > 0


# ---------------------------------------------------------------- 2. chunk == naive


@pytest.mark.parametrize("S", [None, 3, 8])
@pytest.mark.parametrize("bs", [1, 3, 4, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, bs, S):
    B, T, _, Hk, D, Dv = shape
    q, k, v, kl = make_inputs(*shape, bs=bs, S=S or 0)
    state = None if S is None else make_state(B, S, bs, Hk, D, Dv)
    o_ref, s_ref = naive_landmark_attention(q, k, v, kl, bs, initial_state=state,
                                            output_final_state=True)
    o, s = chunk5(q, k, v, kl, bs, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    L = (S or 0) + T
    assert s[0].shape == (B, L // bs, bs, Hk, D) and s[3].shape == (B, L % bs, Hk, D)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 100])
def test_chunk_sizes(chunk_size):
    """chunk_size need not be a multiple of block_size (or the reverse); T is neither."""
    q, k, v, kl = make_inputs(2, 29, 4, 2, 8, 6, bs=4, S=6)
    state = make_state(2, 6, 4, 2, 8, 6)
    o_ref, _ = naive_landmark_attention(q, k, v, kl, 4, scale=0.3, initial_state=state)
    o, s = chunk_landmark_attention(q, k, v, kl, 4, scale=0.3, initial_state=state,
                                    chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)
    assert s is None


# ---------------------------------------------------------------- 3. decode and state carry


@pytest.mark.parametrize("S", [None, 5, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_recurrent_matches_naive(shape, S):
    B, _, _, Hk, D, Dv = shape
    q, k, v, kl = make_inputs(*shape, bs=4, S=S or 0)
    state = None if S is None else make_state(B, S, 4, Hk, D, Dv)
    o_ref, s_ref = naive_landmark_attention(q, k, v, kl, 4, initial_state=state,
                                            output_final_state=True)
    for top_k in (None, 100):  # top_k >= number of blocks: every block
        o, s = recurrent_landmark_attention(q, k, v, kl, 4, initial_state=state,
                                            output_final_state=True, top_k=top_k)
        assert_close(o_ref, o, RTOL)
        assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state():
    q, k, v, kl = make_inputs(2, 21, 4, 1, 8, 6, bs=5)
    o_ref, s_ref = naive_landmark_attention(q, k, v, kl, 5, output_final_state=True)
    state, outs = None, []
    for t in range(21):
        kl_t = kl[:, (t + 1) // 5 - 1] if (t + 1) % 5 == 0 else None
        o_t, state = landmark_attention_step(q[:, t], k[:, t], v[:, t], kl_t, state, 5)
        assert o_t.shape == (2, 4, 6)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)
    assert state[0].shape[1] == 4 and state[3].shape[1] == 1  # 4 blocks + 1 open token


@pytest.mark.parametrize("splits", [(1,), (4, 13), (3, 7, 20)])
@pytest.mark.parametrize(
    "fn", [chunk5, recurrent_landmark_attention, naive_landmark_attention],
    ids=["chunk", "recurrent", "naive"],
)
def test_split_carries_state(fn, splits):
    B, T, H, Hk, D, Dv, bs, S = 2, 27, 4, 2, 8, 6, 4, 2
    q, k, v, kl = make_inputs(B, T, H, Hk, D, Dv, bs=bs, S=S)
    state = make_state(B, S, bs, Hk, D, Dv)
    o_ref, s_ref = naive_landmark_attention(q, k, v, kl, bs, initial_state=state,
                                            output_final_state=True)
    outs, bounds, seen = [], [0, *splits, T], S
    for a, b in itertools.pairwise(bounds):
        n0, n1 = seen // bs - S // bs, (seen + b - a) // bs - S // bs
        o, state = fn(q[:, a:b], k[:, a:b], v[:, a:b], kl[:, n0:n1], bs, initial_state=state,
                      output_final_state=True)
        outs.append(o)
        seen += b - a
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


# ---------------------------------------------------------------- 4. top-k retrieval


def test_top_k_retrieval_matches_reference_over_selected_blocks():
    """top_k < blocks: the step equals the grouped softmax over the own block and the retrieved
    blocks only (the first group renormalised over the retrieved landmarks)."""
    B, T, H, Hk, D, Dv, bs, top_k = 2, 30, 4, 2, 6, 5, 3, 2
    q, k, v, kl = make_inputs(B, T, H, Hk, D, Dv, bs=bs, seed=3)
    o_ref, chosen = reference(q, k, v, kl, bs, D**-0.5, top_k=top_k)
    o, _ = recurrent_landmark_attention(q, k, v, kl, bs, top_k=top_k)
    assert_close(o_ref, o, RTOL)
    o_full, _ = naive_landmark_attention(q, k, v, kl, bs)
    assert (o - o_full)[:, (top_k + 1) * bs:].abs().max() > 1e-3  # retrieval did drop blocks
    # the step reports what it retrieved: the reference's set, per query head
    state = None
    for t in range(T):
        kl_t = kl[:, (t + 1) // bs - 1] if (t + 1) % bs == 0 else None
        _, state, sel = landmark_attention_step(q[:, t], k[:, t], v[:, t], kl_t, state, bs,
                                                top_k=top_k, return_selected=True)
        assert sel.shape == (B, H, min(top_k, t // bs))
        for b, h in itertools.product(range(B), range(H)):
            assert set(sel[b, h].tolist()) == chosen[b, t, h]


def test_top_k_reads_only_the_retrieved_blocks():
    """Keys/values of blocks that no head retrieves are set to NaN: the output is unchanged."""
    B, H, Hk, D, Dv, bs, S, top_k = 2, 4, 2, 8, 6, 4, 41, 3
    state = make_state(B, S, bs, Hk, D, Dv, seed=7)
    q_t, k_t, v_t = (x[:, 0] for x in make_inputs(B, 1, H, Hk, D, Dv, bs=bs, S=S, seed=8)[:3])
    o, new, sel = landmark_attention_step(q_t, k_t, v_t, None, state, bs, top_k=top_k,
                                          return_selected=True)
    assert sel.shape == (B, H, top_k) and len(torch.unique(sel[0, 0])) == top_k
    k_blocks, v_blocks = state[0].clone(), state[1].clone()
    G = H // Hk
    for b, hk in itertools.product(range(B), range(Hk)):
        used = set(sel[b, hk * G:(hk + 1) * G].flatten().tolist())
        for n in set(range(S // bs)) - used:
            k_blocks[b, n, :, hk] = float("nan")
            v_blocks[b, n, :, hk] = float("nan")
    poisoned = (k_blocks, v_blocks, *state[2:])
    o2, _ = landmark_attention_step(q_t, k_t, v_t, None, poisoned, bs, top_k=top_k)
    assert torch.isfinite(o2).all() and torch.equal(o, o2)
    assert new[0].shape[1] == S // bs and new[3].shape[1] == S % bs + 1


# ---------------------------------------------------------------- 5. gradients


@pytest.mark.parametrize("S", [None, 6])
@pytest.mark.parametrize("bs", [1, 4])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_chunk_grads_match_naive(shape, bs, S):
    B, _, _, Hk, D, Dv = shape
    q, k, v, kl = make_inputs(*shape, bs=bs, S=S or 0, requires_grad=True)
    inputs, state = [q, k, v, kl], None
    if S is not None:
        state = make_state(B, S, bs, Hk, D, Dv, requires_grad=True)
        inputs += list(state)
    o_ref, s_ref = naive_landmark_attention(q, k, v, kl, bs, initial_state=state,
                                            output_final_state=True)
    outs_ref = [o_ref, *s_ref]
    cot = random_like_outputs(outs_ref)
    g_ref = grads_of(loss_from(outs_ref, cot), inputs)
    o, s = chunk5(q, k, v, kl, bs, initial_state=state, output_final_state=True)
    g = grads_of(loss_from([o, *s], cot), inputs)
    names = ["dq", "dk", "dv", "dk_landmark", "dk_blocks", "dv_blocks", "dk_landmark_state",
             "dk_tail", "dv_tail"]
    for name, r, x in zip(names, g_ref, g):
        assert_close(r, x, RTOL, name)


def test_recurrent_grads_match_naive():
    B, T, H, Hk, D, Dv, bs, S = 2, 13, 4, 2, 8, 6, 3, 4
    q, k, v, kl = make_inputs(B, T, H, Hk, D, Dv, bs=bs, S=S, requires_grad=True)
    state = make_state(B, S, bs, Hk, D, Dv, requires_grad=True)
    inputs = [q, k, v, kl, *state]
    o_ref, _ = naive_landmark_attention(q, k, v, kl, bs, initial_state=state)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    o, _ = recurrent_landmark_attention(q, k, v, kl, bs, initial_state=state)
    for r, x in zip(g_ref, grads_of(loss_from([o], cot), inputs)):
        assert_close(r, x, RTOL, "grad")


# ---------------------------------------------------------------- 6. precision and memory

LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize("fn", [naive_landmark_attention, chunk5, recurrent_landmark_attention],
                         ids=["naive", "chunk", "recurrent"])
def test_low_precision_forward(fn, dtype, tol):
    shape, bs, S = (2, 40, 4, 2, 16, 8), 6, 7
    o_ref, _ = naive_landmark_attention(*make_inputs(*shape, bs=bs, S=S), bs,
                                        initial_state=make_state(2, S, bs, 2, 16, 8))
    o, _ = fn(*make_inputs(*shape, bs=bs, S=S, dtype=dtype), bs,
              initial_state=make_state(2, S, bs, 2, 16, 8, dtype=dtype))
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
def test_low_precision_chunk_grads(dtype, tol):
    """The backward accumulates half precision in float32: gradients within the same tolerance."""
    shape, bs, S = (2, 40, 4, 2, 16, 8), 6, 7
    ref = [*make_inputs(*shape, bs=bs, S=S, requires_grad=True),
           *make_state(2, S, bs, 2, 16, 8, requires_grad=True)]
    low = [*make_inputs(*shape, bs=bs, S=S, dtype=dtype, requires_grad=True),
           *make_state(2, S, bs, 2, 16, 8, dtype=dtype, requires_grad=True)]
    o_ref, _ = naive_landmark_attention(*ref[:4], bs, initial_state=ref[4:])
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), ref)
    o, _ = chunk5(*low[:4], bs, initial_state=low[4:])
    g = grads_of(loss_from([o], [c.to(dtype) for c in cot]), low)
    for r, x in zip(g_ref, g):
        assert x.dtype == dtype
        assert_close(r, x, tol, "grad")


def test_chunk_memory_is_below_one_score_matrix():
    """fwd + bwd at T = 2048 never holds a T x T matrix: peak < 1/8 of one."""
    T, bs = 2048, 64
    q, k, v, kl = make_inputs(1, T, 1, 1, 8, 8, bs=bs, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_landmark_attention(q, k, v, kl, bs, chunk_size=128)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(q.grad).all() and torch.isfinite(kl.grad).all()


# ---------------------------------------------------------------- 7. bad input


def test_errors():
    q, k, v, kl = make_inputs(1, 10, 4, 2, 8, 6, bs=4)  # 2 complete blocks
    good = make_state(1, 6, 4, 2, 8, 6)  # 1 block + 2 open tokens
    for fn in (naive_landmark_attention, chunk_landmark_attention, recurrent_landmark_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], k, v, kl, 4)
        with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
            fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), kl, 4)
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="block_size must be a positive integer"):
                fn(q, k, v, kl, bad)
        with pytest.raises(ValueError, match=r"k_landmark must have shape \[1, 2, 2, 8\]"):
            fn(q, k, v, kl[:, :1], 4)
        with pytest.raises(ValueError, match=r"k_landmark must have shape \[1, 3, 2, 8\]"):
            fn(q, k, v, kl, 4, initial_state=good)  # 6 + 10 tokens complete blocks 1, 2, 3
        with pytest.raises(ValueError, match="block_size=5"):
            fn(q, k, v, kl, 5, initial_state=good)
        with pytest.raises(ValueError, match="k_tail holds 4 tokens"):
            fn(q, k, v, kl, 4, initial_state=(*good[:3], k[:, :4], v[:, :4]))
        with pytest.raises(ValueError, match="k_landmark must have shape"):
            fn(q, k, v, kl, 4, initial_state=(*good[:2], good[2][:, :0], *good[3:]))
        with pytest.raises(ValueError, match="v_blocks must have shape"):
            fn(q, k, v, kl, 4, initial_state=(good[0], good[1][..., :2], *good[2:]))
        with pytest.raises(TypeError, match="state must be a tuple"):
            fn(q, k, v, kl, 4, initial_state=good[:4])
        with pytest.raises(TypeError, match="k_landmark must have q's dtype"):
            fn(q, k, v, kl.float(), 4)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            recurrent_landmark_attention(q, k, v, kl, 4, top_k=bad)
        with pytest.raises(ValueError, match="top_k must be a positive integer"):
            landmark_attention_step(q[:, 0], k[:, 0], v[:, 0], None, None, 4, top_k=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_landmark_attention(q, k, v, kl, 4, chunk_size=0)
    with pytest.raises(ValueError, match="for one decode step must be"):
        landmark_attention_step(q, k[:, 0], v[:, 0], None, None, 4)
    with pytest.raises(ValueError, match="completes a block"):  # position 3 closes block 0
        landmark_attention_step(q[:, 0], k[:, 0], v[:, 0], None, make_state(1, 3, 4, 2, 8, 6), 4)
    with pytest.raises(ValueError, match="k_landmark_t must be None"):
        landmark_attention_step(q[:, 0], k[:, 0], v[:, 0], kl[:, 0], None, 4)
    with pytest.raises(ValueError, match=r"k_landmark_t must have shape \[1, 2, 8\]"):
        landmark_attention_step(q[:, 0], k[:, 0], v[:, 0], kl[:, 0, :1],
                                make_state(1, 3, 4, 2, 8, 6), 4)
