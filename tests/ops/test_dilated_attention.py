"""Dilated attention (LongNet): the segment form and the ring-buffer decode against the masked
definition, in float64; the definition against a loop written from the paper's gather / attend /
scatter / denominator-mix description; carried states, GQA, Dv != D, both causal modes."""

from __future__ import annotations

import itertools

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.dilated_attention import (
    chunk_dilated_attention,
    dilated_attention_step,
    naive_dilated_attention,
    recurrent_dilated_attention,
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
    (1, 29, 4, 2, 8, 6),  # GQA 2:1, Dv < D
    (2, 37, 3, 1, 4, 10),  # MQA, 3 heads: offsets h mod r differ from h mod 2
]
PATTERNS = [  # (segment_lengths, dilation_rates)
    ((4, 8), (1, 2)),
    ((3, 6, 12), (1, 2, 4)),  # 29, 37 are no multiple of any segment
    ((5, 7), (2, 3)),  # w not a multiple of r (padded segments); some rows covered by no pattern
    ((16,), (1,)),
]


def make_inputs(B, T, H, Hk, D, Dv, dtype=F64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)


def make_state(B, W, Hk, D, Dv, n_seen, dtype=F64, requires_grad=False, seed=1):
    """A ring of W slots as if ``n_seen`` tokens had been seen; unwritten slots hold NaN."""
    g = torch.Generator().manual_seed(seed)
    k_buf = torch.randn(B, W, Hk, D, generator=g, dtype=F64)
    v_buf = torch.randn(B, W, Hk, Dv, generator=g, dtype=F64)
    if n_seen < W:
        k_buf[:, n_seen:] = float("nan")
        v_buf[:, n_seen:] = float("nan")
    return (k_buf.to(dtype).requires_grad_(requires_grad),
            v_buf.to(dtype).requires_grad_(requires_grad), torch.tensor(n_seen, dtype=torch.int64))


def _ids(x):
    return "-".join(map(str, x)) if isinstance(x, tuple) else str(x)


# ---------------------------------------------------------------- 1. the definition


def paper_loop(q, k, v, segment_lengths, dilation_rates, causal):
    """LongNet §2.2–2.3 by explicit loops (B = 1, no GQA): per (w, r), segment i and head j, gather
    rows ``i*w + s_j + m*r`` (s_j = j mod r), softmax inside, scatter; mix by denominators."""
    _, T, H, D = q.shape
    num = torch.zeros(T, H, v.shape[-1], dtype=q.dtype)  # sum_i s_i * O_i
    den = torch.zeros(T, H, dtype=q.dtype)  # sum_i s_i
    for w, r in zip(segment_lengths, dilation_rates):
        for i in range(0, T, w):
            for j in range(H):
                rows = list(range(i + j % r, min(i + w, T), r))
                for a, t in enumerate(rows):
                    keys = rows[: a + 1] if causal else rows
                    s = torch.stack([q[0, t, j] @ k[0, u, j] for u in keys]) * D**-0.5
                    e = torch.exp(s)  # the unnormalised softmax: its sum is the denominator s_i
                    num[t, j] += e @ v[0, keys, j]
                    den[t, j] += e.sum()
    return (num / den.clamp_min(1e-300)[..., None])[None]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pattern", PATTERNS, ids=_ids)
def test_naive_matches_paper_loop(pattern, causal):
    q, k, v = make_inputs(1, 13, 3, 3, 4, 5)
    o, _ = naive_dilated_attention(q, k, v, *pattern, causal=causal)
    torch.testing.assert_close(o, paper_loop(q, k, v, *pattern, causal), rtol=1e-12, atol=1e-12)


def test_one_full_segment_is_softmax_attention():
    """w = (T,), r = (1,): one segment, every row kept: plain softmax attention."""
    T = 21
    q, k, v = make_inputs(2, T, 4, 2, 8, 6)
    o, _ = naive_dilated_attention(q, k, v, (T,), (1,))
    assert_close(naive_softmax_attention(q, k, v)[0], o, RTOL)
    o_bi, _ = chunk_dilated_attention(q, k, v, (T,), (1,), causal=False)
    k_h, v_h = k.repeat_interleave(2, 2), v.repeat_interleave(2, 2)
    p = torch.softmax(torch.einsum("bthd,bshd->bhts", q, k_h) * 8**-0.5, dim=-1)
    assert_close(torch.einsum("bhts,bshd->bthd", p, v_h), o_bi, RTOL)


def test_rows_no_pattern_covers_are_zero():
    """With only r = 2, head 0 keeps the even offsets, head 1 the odd ones: the rest is zero."""
    q, k, v = make_inputs(1, 10, 2, 2, 4, 3)
    for fn in (naive_dilated_attention, chunk_dilated_attention, recurrent_dilated_attention):
        o, _ = fn(q, k, v, (4,), (2,))
        pos = torch.arange(10)
        assert (o[0, pos % 4 % 2 == 1, 0] == 0).all() and (o[0, pos % 4 % 2 == 0, 1] == 0).all()
        assert (o[0, pos % 4 % 2 == 0, 0] != 0).all()


# ---------------------------------------------------------------- 2. chunk == naive


@pytest.mark.parametrize("n_seen", [None, 3, 19])
@pytest.mark.parametrize("pattern", PATTERNS, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, pattern, n_seen):
    B, T, _, Hk, D, Dv = shape
    W = max(pattern[0])
    q, k, v = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, W, Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_dilated_attention(q, k, v, *pattern, initial_state=state,
                                           output_final_state=True)
    o, s = chunk_dilated_attention(q, k, v, *pattern, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    assert s[0].shape == (B, W, Hk, D) and int(s[2]) == (n_seen or 0) + T
    assert torch.isfinite(s[0]).all() and torch.isfinite(s[1]).all()


@pytest.mark.parametrize("pattern", PATTERNS, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_bidirectional_chunk_matches_naive(shape, pattern):
    q, k, v = make_inputs(*shape)
    o_ref, _ = naive_dilated_attention(q, k, v, *pattern, causal=False, scale=0.4)
    o, _ = chunk_dilated_attention(q, k, v, *pattern, causal=False, scale=0.4)
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- 3. decode and state carry


@pytest.mark.parametrize("n_seen", [None, 5, 30])
@pytest.mark.parametrize("pattern", PATTERNS[:3], ids=_ids)
def test_recurrent_matches_naive(pattern, n_seen):
    shape = SHAPES[1]
    B, _, _, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, max(pattern[0]), Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_dilated_attention(q, k, v, *pattern, initial_state=state,
                                           output_final_state=True)
    o, s = recurrent_dilated_attention(q, k, v, *pattern, initial_state=state,
                                       output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state_and_bounded_memory():
    """Token-by-token decode == naive; the state stays W = max(segment_lengths) slots."""
    q, k, v = make_inputs(2, 40, 4, 1, 8, 6)
    o_ref, s_ref = naive_dilated_attention(q, k, v, (3, 6, 12), (1, 2, 4), output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = dilated_attention_step(q[:, t], k[:, t], v[:, t], state, (3, 6, 12), (1, 2, 4))
        assert state[0].shape == (2, 12, 1, 8) and state[1].shape == (2, 12, 1, 6)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("splits", [(1,), (4, 5), (3, 11, 30)])
@pytest.mark.parametrize(
    "fn", [chunk_dilated_attention, recurrent_dilated_attention, naive_dilated_attention],
    ids=["chunk", "recurrent", "naive"],
)
@pytest.mark.parametrize("pattern", PATTERNS[:3], ids=_ids)
def test_split_carries_state(pattern, fn, splits):
    q, k, v = make_inputs(2, 37, 4, 2, 8, 6)
    state = make_state(2, max(pattern[0]), 2, 8, 6, n_seen=2)
    o_ref, s_ref = naive_dilated_attention(q, k, v, *pattern, initial_state=state,
                                           output_final_state=True)
    outs = []
    for a, b in itertools.pairwise([0, *splits, 37]):
        o, state = fn(q[:, a:b], k[:, a:b], v[:, a:b], *pattern, initial_state=state,
                      output_final_state=True)
        outs.append(o)
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


# ---------------------------------------------------------------- 4. gradients


@pytest.mark.parametrize("n_seen", [None, 3, 19])
@pytest.mark.parametrize("pattern", PATTERNS, ids=_ids)
def test_chunk_grads_match_naive(pattern, n_seen):
    B, T, H, Hk, D, Dv = SHAPES[1]
    q, k, v = make_inputs(B, T, H, Hk, D, Dv, requires_grad=True)
    inputs, state = [q, k, v], None
    if n_seen is not None:
        state = make_state(B, max(pattern[0]), Hk, D, Dv, n_seen, requires_grad=True)
        inputs += list(state[:2])
    o_ref, s_ref = naive_dilated_attention(q, k, v, *pattern, initial_state=state,
                                           output_final_state=True)
    cot = random_like_outputs([o_ref, *s_ref[:2]])
    g_ref = grads_of(loss_from([o_ref, *s_ref[:2]], cot), inputs)
    o, s = chunk_dilated_attention(q, k, v, *pattern, initial_state=state, output_final_state=True)
    g = grads_of(loss_from([o, *s[:2]], cot), inputs)
    for name, r, x in zip(["dq", "dk", "dv", "dk_buf", "dv_buf"], g_ref, g):
        assert_close(r, x, RTOL, name)


@pytest.mark.parametrize("pattern", PATTERNS, ids=_ids)
def test_bidirectional_grads_match_naive(pattern):
    q, k, v = make_inputs(*SHAPES[2], requires_grad=True)
    o_ref, _ = naive_dilated_attention(q, k, v, *pattern, causal=False)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), [q, k, v])
    o, _ = chunk_dilated_attention(q, k, v, *pattern, causal=False)
    for name, r, x in zip(["dq", "dk", "dv"], g_ref, grads_of(loss_from([o], cot), [q, k, v])):
        assert_close(r, x, RTOL, name)


def test_recurrent_grads_match_naive():
    pattern = ((3, 6), (1, 2))
    q, k, v = make_inputs(2, 15, 4, 2, 8, 6, requires_grad=True)
    state = make_state(2, 6, 2, 8, 6, 4, requires_grad=True)
    inputs = [q, k, v, state[0], state[1]]
    o_ref, s_ref = naive_dilated_attention(q, k, v, *pattern, initial_state=state,
                                           output_final_state=True)
    cot = random_like_outputs([o_ref, *s_ref[:2]])
    g_ref = grads_of(loss_from([o_ref, *s_ref[:2]], cot), inputs)
    o, s = recurrent_dilated_attention(q, k, v, *pattern, initial_state=state,
                                       output_final_state=True)
    for r, x in zip(g_ref, grads_of(loss_from([o, *s[:2]], cot), inputs)):
        assert_close(r, x, RTOL, "grad")


# ---------------------------------------------------------------- 5. precision and long inputs

LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "fn", [naive_dilated_attention, chunk_dilated_attention, recurrent_dilated_attention],
    ids=["naive", "chunk", "recurrent"],
)
def test_low_precision_forward(fn, dtype, tol):
    shape, pattern = (2, 40, 4, 2, 16, 8), ((4, 8, 16), (1, 2, 4))
    q, k, v = make_inputs(*shape)
    state = make_state(2, 16, 2, 16, 8, n_seen=5)
    o_ref, _ = naive_dilated_attention(q, k, v, *pattern, initial_state=state)
    o, _ = fn(*make_inputs(*shape, dtype=dtype), *pattern,
              initial_state=make_state(2, 16, 2, 16, 8, n_seen=5, dtype=dtype))
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


def test_long_sequence_finite_and_subquadratic():
    """T = 2^16: finite, and the tail equals the definition on the last segments; fwd+bwd at
    T = 16384 stays far below one T x T matrix (the scores are T * w / r^2 per pattern)."""
    pattern = ((64, 128, 256), (1, 2, 4))
    T = 2**16
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32)
    o, _ = chunk_dilated_attention(q, k, v, *pattern)
    assert torch.isfinite(o).all()
    tail = slice(T - 256, T)  # the last 256-segment holds the last segments of every w
    o_tail, _ = naive_dilated_attention(q[:, tail], k[:, tail], v[:, tail], *pattern)
    assert_close(o[:, tail], o_tail, 1e-5)

    T = 16384
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_dilated_attention(q, k, v, *pattern)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(q.grad).all()


# ---------------------------------------------------------------- 6. bad input


def test_errors():
    q, k, v = make_inputs(1, 8, 4, 2, 8, 6)
    good = make_state(1, 8, 2, 8, 6, n_seen=2)
    pattern = ((4, 8), (1, 2))
    for fn in (naive_dilated_attention, chunk_dilated_attention, recurrent_dilated_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], k, v, *pattern)
        with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
            fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), *pattern)
        with pytest.raises(ValueError, match="same length"):
            fn(q, k, v, (4, 8), (1,))
        with pytest.raises(ValueError, match="segment_lengths must be a non-empty tuple"):
            fn(q, k, v, (), ())
        with pytest.raises(ValueError, match="dilation_rates must be a non-empty tuple"):
            fn(q, k, v, (4,), 2)
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="every entry of segment_lengths must be a positive"):
                fn(q, k, v, (4, bad), (1, 1))
            with pytest.raises(ValueError, match="every entry of dilation_rates must be a positive"):
                fn(q, k, v, (4, 8), (1, bad))
        with pytest.raises(ValueError, match="dilation rate 8 is larger than its segment length 4"):
            fn(q, k, v, (4, 8), (8, 1))
        with pytest.raises(ValueError, match="holds 8 slots but max\\(segment_lengths\\)=16"):
            fn(q, k, v, (4, 16), (1, 2), initial_state=good)
        with pytest.raises(ValueError, match="v_buf must have shape"):
            fn(q, k, v, *pattern, initial_state=(good[0], good[1][..., :2], good[2]))
        with pytest.raises(TypeError, match="n_seen must be an int64 0-dim tensor"):
            fn(q, k, v, *pattern, initial_state=(good[0], good[1], 2))
        with pytest.raises(TypeError, match="state must be a tuple"):
            fn(q, k, v, *pattern, initial_state=good[:2])
    for fn in (naive_dilated_attention, chunk_dilated_attention):
        with pytest.raises(ValueError, match="causal=False \\(bidirectional\\) has no decode"):
            fn(q, k, v, *pattern, causal=False, initial_state=good)
        with pytest.raises(ValueError, match="causal=False \\(bidirectional\\) has no decode"):
            fn(q, k, v, *pattern, causal=False, output_final_state=True)
        with pytest.raises(TypeError, match="causal must be True or False"):
            fn(q, k, v, *pattern, causal="yes")
    with pytest.raises(ValueError, match="for one decode step must be"):
        dilated_attention_step(q, k[:, 0], v[:, 0], None, *pattern)
    with pytest.raises(ValueError, match="same length"):
        dilated_attention_step(q[:, 0], k[:, 0], v[:, 0], None, (4,), (1, 2))
