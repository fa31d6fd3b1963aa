"""Multi-Token Attention: chunk and recurrent forms against the naive full-matrix definition, in
float64, with GQA, Dv != D, carried states, random kernels; the definition against a per-element
loop of the paper's formula; identity kernels == softmax attention; no future leak; saved bytes
of the chunked form; bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from longctx.ops.multi_token_attention import (
    chunk_multi_token_attention,
    identity_head_kernel,
    identity_kq_kernel,
    multi_token_attention_step,
    naive_multi_token_attention,
    recurrent_multi_token_attention,
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
    (1, 13, 4, 2, 8, 6),  # GQA 2:1, Dv < D
    (2, 22, 4, 1, 4, 10),  # MQA, Dv > D
]
KERNELS = [  # c_q, c_k, c_h (c_h = 1: no head mixing)
    (1, 1, 1),
    (3, 3, 2),
    (2, 4, 4),  # even c_k: key offsets -2 .. 1
    (4, 1, 1),
]


def make_inputs(B, T, H, Hk, D, Dv, dtype=F64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)


def make_kernels(H, c_q, c_k, c_h, dtype=F64, requires_grad=False, seed=2):
    """Identity plus noise: random, but still attention-like."""
    g = torch.Generator().manual_seed(seed)
    kq = identity_kq_kernel(H, c_q, c_k, dtype=F64) + 0.5 * torch.randn(H, c_q, c_k, generator=g,
                                                                         dtype=F64)
    kq = kq.to(dtype).requires_grad_(requires_grad)
    if c_h == 1:
        return kq, None
    hk = identity_head_kernel(H, c_h, dtype=F64) + 0.5 * torch.randn(H // c_h, c_h, c_h,
                                                                     generator=g, dtype=F64)
    return kq, hk.to(dtype).requires_grad_(requires_grad)


def make_state(B, S, H, Hk, D, Dv, c_q, dtype=F64, requires_grad=False, seed=1):
    """A state as if S tokens had been seen; q_cache rows at negative positions are NaN (not zero)
    so that any read of them shows up."""
    g = torch.Generator().manual_seed(seed)
    k_c = torch.randn(B, S, Hk, D, generator=g, dtype=F64)
    v_c = torch.randn(B, S, Hk, Dv, generator=g, dtype=F64)
    q_c = torch.randn(B, c_q - 1, H, D, generator=g, dtype=F64)
    q_c[:, : max(c_q - 1 - S, 0)] = float("nan")
    return tuple(t.to(dtype).requires_grad_(requires_grad) for t in (k_c, v_c, q_c))


def chunk5(*args, **kwargs):
    return chunk_multi_token_attention(*args, chunk_size=5, **kwargs)


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}".format(*shape)


# ---------------------------------------------------------------- 1. the definition


def test_naive_matches_paper_formula():
    """Per element, from the paper's definition with its Mask_0 / Mask_-inf masking:
    a_ij = softmax_j( sum_{i'=0}^{c_q-1} sum_{j'=-floor(c_k/2)}^{ceil(c_k/2)-1}
                      [j - j' <= i - i'] theta_{i',j'} q_{i-i'} . k_{j-j'} / sqrt(d) ),  j <= i,
    then o_i^h = sum_j sum_n w_{h,n} a_ij^n v_j (head mixing within the group of h)."""
    B, T, H, D, c_q, c_k, c_h = 1, 7, 4, 3, 3, 4, 2
    q, k, v = make_inputs(B, T, H, H, D, D)
    kq, hk = make_kernels(H, c_q, c_k, c_h)
    o, _ = naive_multi_token_attention(q, k, v, kq, hk)
    a = torch.zeros(H, T, T, dtype=F64)
    for h, i in itertools.product(range(H), range(T)):
        row = torch.full((T,), float("-inf"), dtype=F64)
        for j in range(i + 1):
            s = 0.0
            for di, b in itertools.product(range(c_q), range(c_k)):
                dj = b - c_k // 2
                ii, jj = i - di, j - dj
                if 0 <= ii and 0 <= jj <= ii:
                    s = s + kq[h, di, b] * (q[0, ii, h] @ k[0, jj, h]) / D**0.5
            row[j] = s
        a[h, i] = torch.softmax(row, dim=0)
    for h, i in itertools.product(range(H), range(T)):
        g, m = divmod(h, c_h)
        a_mixed = sum(hk[g, m, n] * a[g * c_h + n, i] for n in range(c_h))
        torch.testing.assert_close(o[0, i, h], a_mixed @ v[0, :, h], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("form", ["naive", "chunk"])
def test_identity_kernels_are_softmax_attention(form, causal):
    """theta = delta_{0,0} and identity head mixing: MTA is plain softmax attention (GQA, a KV
    cache in front when causal)."""
    B, T, H, Hk, D, Dv, c_q = 2, 11, 4, 2, 8, 6, 3
    q, k, v = make_inputs(B, T, H, Hk, D, Dv)
    kq, hk = identity_kq_kernel(H, c_q, 5, dtype=F64), identity_head_kernel(H, 2, dtype=F64)
    fn = naive_multi_token_attention if form == "naive" else chunk5
    if causal:
        state = make_state(B, 4, H, Hk, D, Dv, c_q)
        o, _ = fn(q, k, v, kq, hk, initial_state=state)
        ref, _ = naive_softmax_attention(q, k, v, initial_state=state[:2])
    else:
        o, _ = fn(q, k, v, kq, hk, causal=False)
        k_h, v_h = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
        p = torch.softmax(torch.einsum("bihd,bjhd->bhij", q, k_h) * D**-0.5, dim=-1)
        ref = torch.einsum("bhij,bjhd->bihd", p, v_h)
    assert_close(ref, o, 1e-12)


def test_bidirectional_reads_zero_padding():
    """causal=False is the same kernel with no masks: a query at position 0 reads zero logits for
    the missing previous queries, so a kernel that only looks back (theta_{i', j'} = 0 for i' = 0)
    gives uniform attention there."""
    B, T, H, D = 1, 6, 2, 4
    q, k, v = make_inputs(B, T, H, H, D, D)
    kq = torch.zeros(H, 2, 1, dtype=F64)
    kq[:, 1, 0] = 1.0  # logits of query i are those of query i - 1
    o, _ = naive_multi_token_attention(q, k, v, kq, causal=False)
    assert_close(v[:, :, :].mean(dim=1), o[:, 0], 1e-12, "uniform at position 0")
    p = torch.softmax(torch.einsum("bhd,bjhd->bhj", q[:, 2], k) * D**-0.5, dim=-1)
    assert_close(torch.einsum("bhj,bjhd->bhd", p, v), o[:, 3], 1e-12, "position 3 uses query 2")


# ---------------------------------------------------------------- 2. chunk == naive (fwd, state)


@pytest.mark.parametrize("S", [None, 1, 6])
@pytest.mark.parametrize("kernels", KERNELS, ids=lambda c: "cq{}-ck{}-ch{}".format(*c))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive_causal(shape, kernels, S):
    B, _, H, Hk, D, Dv = shape
    c_q, c_k, c_h = kernels
    q, k, v = make_inputs(*shape)
    kq, hk = make_kernels(H, c_q, c_k, min(c_h, H))
    state = None if S is None else make_state(B, S, H, Hk, D, Dv, c_q)
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, initial_state=state,
                                               output_final_state=True)
    o, s = chunk5(q, k, v, kq, hk, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    assert s[2].shape == (B, c_q - 1, H, D) and torch.isfinite(s[2]).all()


@pytest.mark.parametrize("kernels", KERNELS, ids=lambda c: "cq{}-ck{}-ch{}".format(*c))
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive_bidirectional(shape, kernels):
    H = shape[2]
    q, k, v = make_inputs(*shape)
    kq, hk = make_kernels(H, kernels[0], kernels[1], min(kernels[2], H))
    o_ref, _ = naive_multi_token_attention(q, k, v, kq, hk, causal=False)
    o, s = chunk5(q, k, v, kq, hk, causal=False)
    assert_close(o_ref, o, RTOL)
    assert s is None


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_chunk_sizes(chunk_size):
    q, k, v = make_inputs(2, 19, 4, 2, 8, 6)
    kq, hk = make_kernels(4, 3, 5, 2)
    state = make_state(2, 2, 4, 2, 8, 6, 3)
    o_ref, _ = naive_multi_token_attention(q, k, v, kq, hk, scale=0.3, initial_state=state)
    o, _ = chunk_multi_token_attention(q, k, v, kq, hk, scale=0.3, initial_state=state,
                                       chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- 3. recurrent and state carry


@pytest.mark.parametrize("S", [None, 1, 6])
@pytest.mark.parametrize("kernels", KERNELS[1:3], ids=lambda c: "cq{}-ck{}-ch{}".format(*c))
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_recurrent_matches_naive(shape, kernels, S):
    B, _, H, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape)
    kq, hk = make_kernels(H, *kernels)
    state = None if S is None else make_state(B, S, H, Hk, D, Dv, kernels[0])
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, initial_state=state,
                                               output_final_state=True)
    o, s = recurrent_multi_token_attention(q, k, v, kq, hk, initial_state=state,
                                           output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state():
    B, T, H, Hk, D, Dv, c_q = 2, 9, 4, 1, 8, 6, 4
    q, k, v = make_inputs(B, T, H, Hk, D, Dv)
    kq, hk = make_kernels(H, c_q, 3, 4)
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, output_final_state=True)
    state, outs = None, []
    for t in range(T):
        o_t, state = multi_token_attention_step(q[:, t], k[:, t], v[:, t], state, kq, hk)
        assert o_t.shape == (B, H, Dv)
        if t < c_q - 2:  # rows before position 0 stay zero
            assert (state[2][:, : c_q - 2 - t] == 0).all()
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)
    assert torch.equal(state[2], q[:, T - (c_q - 1):])  # the last c_q - 1 queries


@pytest.mark.parametrize("splits", [(1,), (2, 3), (5, 11)])
@pytest.mark.parametrize(
    "fn", [chunk5, recurrent_multi_token_attention, naive_multi_token_attention],
    ids=["chunk", "recurrent", "naive"],
)
def test_split_carries_state(fn, splits):
    B, T, H, Hk, D, Dv, c_q = 2, 14, 4, 2, 8, 6, 4
    q, k, v = make_inputs(B, T, H, Hk, D, Dv)
    kq, hk = make_kernels(H, c_q, 3, 2)
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, output_final_state=True)
    state, outs = None, []
    for a, b in itertools.pairwise([0, *splits, T]):
        o, state = fn(q[:, a:b], k[:, a:b], v[:, a:b], kq, hk, initial_state=state,
                      output_final_state=True)
        outs.append(o)
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


# ---------------------------------------------------------------- 4. gradients


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kernels", KERNELS[1:3], ids=lambda c: "cq{}-ck{}-ch{}".format(*c))
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_chunk_grads_match_naive(shape, kernels, causal):
    """Gradients w.r.t. q, k, v, both kernels and (causal) every state tensor."""
    B, _, H, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape, requires_grad=True)
    kq, hk = make_kernels(H, *kernels, requires_grad=True)
    inputs, state = [q, k, v, kq, hk], None
    if causal:
        state = make_state(B, 5, H, Hk, D, Dv, kernels[0], requires_grad=True)
        inputs += list(state)
    kw = {"initial_state": state, "output_final_state": causal, "causal": causal}
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, **kw)
    outs_ref = [o_ref, *(s_ref or ())]
    cot = random_like_outputs(outs_ref)
    g_ref = grads_of(loss_from(outs_ref, cot), inputs)
    o, s = chunk5(q, k, v, kq, hk, **kw)
    g = grads_of(loss_from([o, *(s or ())], cot), inputs)
    names = ["dq", "dk", "dv", "dkq_kernel", "dhead_kernel", "dk_cache", "dv_cache", "dq_cache"]
    for name, r, x in zip(names, g_ref, g):
        assert_close(r, x, RTOL, name)


def test_recurrent_grads_match_naive():
    B, T, H, Hk, D, Dv, c_q = 2, 8, 4, 2, 4, 6, 3
    q, k, v = make_inputs(B, T, H, Hk, D, Dv, requires_grad=True)
    kq, hk = make_kernels(H, c_q, 3, 2, requires_grad=True)
    state = make_state(B, 3, H, Hk, D, Dv, c_q, requires_grad=True)
    inputs = [q, k, v, kq, hk, *state]
    o_ref, s_ref = naive_multi_token_attention(q, k, v, kq, hk, initial_state=state,
                                               output_final_state=True)
    cot = random_like_outputs([o_ref, *s_ref])
    g_ref = grads_of(loss_from([o_ref, *s_ref], cot), inputs)
    o, s = recurrent_multi_token_attention(q, k, v, kq, hk, initial_state=state,
                                           output_final_state=True)
    for r, x in zip(g_ref, grads_of(loss_from([o, *s], cot), inputs)):
        assert_close(r, x, RTOL, "grad")


# ---------------------------------------------------------------- 5. no future leak


@pytest.mark.parametrize(
    "fn", [naive_multi_token_attention, chunk5, recurrent_multi_token_attention],
    ids=["naive", "chunk", "recurrent"],
)
def test_no_future_leak(fn):
    """Perturbing q, k or v at any position p > i leaves output i unchanged bit-for-bit (random
    kernels, key kernel reaching both ways); perturbing position i itself changes it."""
    B, T, H, Hk, D, Dv = 1, 12, 4, 2, 4, 4
    q, k, v = make_inputs(B, T, H, Hk, D, Dv)
    kq, hk = make_kernels(H, 3, 5, 2)
    o, _ = fn(q, k, v, kq, hk)
    for p, which in itertools.product(range(1, T), range(3)):
        x = [q.clone(), k.clone(), v.clone()]
        x[which][:, p] += torch.randn_like(x[which][:, p])
        o2, _ = fn(*x, kq, hk)
        assert torch.equal(o[:, :p], o2[:, :p]), f"perturbing {'qkv'[which]} at {p} leaked"
        assert (o[:, p] - o2[:, p]).abs().max() > 1e-8, f"output {p} ignores its own {'qkv'[which]}"


def test_bidirectional_sees_the_future():
    q, k, v = make_inputs(1, 10, 2, 2, 4, 4)
    kq, _ = make_kernels(2, 3, 3, 1)
    o, _ = chunk5(q, k, v, kq, causal=False)
    k2 = k.clone()
    k2[:, -1] += 1.0
    o2, _ = chunk5(q, k2, v, kq, causal=False)
    assert (o[:, 0] - o2[:, 0]).abs().max() > 1e-8


# ---------------------------------------------------------------- 6. memory, precision


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


def test_chunk_saves_far_less_than_naive():
    """T = 256, chunk 32: the naive form keeps several [H, T, T] logit matrices for the backward;
    the chunked form keeps only its O(T * D) inputs (each block is recomputed)."""
    B, T, H, D, c_q, c_k = 1, 256, 2, 8, 3, 3
    q, k, v = make_inputs(B, T, H, H, D, D, requires_grad=True)
    kq, hk = make_kernels(H, c_q, c_k, 2, requires_grad=True)
    naive_bytes, o_ref = _saved_bytes(lambda: naive_multi_token_attention(q, k, v, kq, hk)[0])
    chunk_bytes, o = _saved_bytes(
        lambda: chunk_multi_token_attention(q, k, v, kq, hk, chunk_size=32)[0])
    one_matrix = B * H * T * T * 8
    assert naive_bytes > 4 * one_matrix
    assert chunk_bytes < one_matrix / 8, f"chunk saved {chunk_bytes} bytes"
    cot = random_like_outputs([o_ref])
    inputs = [q, k, v, kq, hk]
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    for name, r, x in zip(["dq", "dk", "dv", "dkq", "dhk"], g_ref,
                          grads_of(loss_from([o], cot), inputs)):
        assert_close(r, x, RTOL, name)


LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "fn", [naive_multi_token_attention, chunk5, recurrent_multi_token_attention],
    ids=["naive", "chunk", "recurrent"],
)
def test_low_precision_forward(fn, dtype, tol):
    shape, c_q = (2, 17, 4, 2, 16, 8), 3
    q, k, v = make_inputs(*shape)
    kq, hk = make_kernels(4, c_q, 5, 2)
    state = make_state(2, 3, 4, 2, 16, 8, c_q)
    o_ref, _ = naive_multi_token_attention(q, k, v, kq, hk, initial_state=state)
    low = [t.to(dtype) for t in (q, k, v, kq, hk)]
    o, _ = fn(*low, initial_state=tuple(t.to(dtype) for t in state))
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


# ---------------------------------------------------------------- 7. bad input


def test_errors():
    B, T, H, Hk, D = 1, 6, 4, 2, 8
    q, k, v = make_inputs(B, T, H, Hk, D, D)
    kq, hk = make_kernels(H, 3, 3, 2)
    good = make_state(B, 2, H, Hk, D, D, 3)
    for fn in (naive_multi_token_attention, chunk_multi_token_attention,
               recurrent_multi_token_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], k, v, kq)
        with pytest.raises(ValueError, match=r"kq_kernel must have shape \[H=4, c_q, c_k\]"):
            fn(q, k, v, kq[:2])
        with pytest.raises(ValueError, match=r"kq_kernel must have shape \[H=4, c_q, c_k\]"):
            fn(q, k, v, kq[:, 0])
        with pytest.raises(ValueError, match="c_q and c_k must be >= 1"):
            fn(q, k, v, kq[:, :0])
        with pytest.raises(TypeError, match="kq_kernel must have q's dtype"):
            fn(q, k, v, kq.float())
        with pytest.raises(TypeError, match="kq_kernel must be a torch.Tensor"):
            fn(q, k, v, 3)
        with pytest.raises(ValueError, match=r"head-group size c_h=3 .* must divide .* H=4"):
            fn(q, k, v, kq, torch.zeros(1, 3, 3, dtype=F64))
        with pytest.raises(ValueError, match=r"head_kernel must have shape \[H // c_h = 2, 2, 2\]"):
            fn(q, k, v, kq, hk[:1])
        with pytest.raises(ValueError, match=r"head_kernel must have shape \[H // c_h, c_h, c_h\]"):
            fn(q, k, v, kq, hk[:, :1])
        with pytest.raises(ValueError, match="q_cache holds 1 past queries but kq_kernel has c_q=3"):
            fn(q, k, v, kq, initial_state=(good[0], good[1], good[2][:, :1]))
        with pytest.raises(ValueError, match="k_cache must have shape"):
            fn(q, k, v, kq, initial_state=(good[0][..., :3], good[1], good[2]))
        with pytest.raises(TypeError, match="state must be a tuple"):
            fn(q, k, v, kq, initial_state=good[:2])
    for fn in (naive_multi_token_attention, chunk_multi_token_attention):
        with pytest.raises(ValueError, match="causal=False .* has no decode state"):
            fn(q, k, v, kq, causal=False, initial_state=good)
        with pytest.raises(ValueError, match="causal=False .* has no decode state"):
            fn(q, k, v, kq, causal=False, output_final_state=True)
        with pytest.raises(TypeError, match="causal must be True or False"):
            fn(q, k, v, kq, causal="yes")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            chunk_multi_token_attention(q, k, v, kq, chunk_size=bad)
    with pytest.raises(ValueError, match="for one decode step must be"):
        multi_token_attention_step(q, k[:, 0], v[:, 0], None, kq)
    with pytest.raises(ValueError, match=r"kq_kernel must have shape \[H=4"):
        multi_token_attention_step(q[:, 0], k[:, 0], v[:, 0], None, kq[:3])
