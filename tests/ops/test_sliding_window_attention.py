"""Sliding-window attention: chunk and recurrent (ring buffer) forms against the naive band-mask
definition, in float64, with carried ring-buffer states, GQA and Dv != D; ALiBi and the
bidirectional (causal=False, |i - j| < w) form."""

from __future__ import annotations

import itertools

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.sliding_window_attention import (
    chunk_sliding_window_attention,
    naive_sliding_window_attention,
    recurrent_sliding_window_attention,
    sliding_window_attention_step,
)
from longctx.ops.softmax_attention import naive_softmax_attention
from longctx.position import alibi_slopes
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
    (1, 37, 4, 2, 16, 8),  # GQA 2:1, Dv < D
    (2, 63, 4, 1, 8, 12),  # MQA, Dv > D
    (1, 130, 2, 2, 8, 8),
]
WINDOWS = [1, 5, 16, 200]  # 200 > T + n_seen: plain causal attention


def make_inputs(B, T, H, Hk, D, Dv, dtype=F64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)


def make_state(B, w, Hk, D, Dv, n_seen, dtype=F64, requires_grad=False, seed=1):
    """A ring buffer as if ``n_seen`` tokens had been seen; unwritten slots are NaN (not zero) so
    that any read of them shows up."""
    g = torch.Generator().manual_seed(seed)
    k_buf = torch.randn(B, w, Hk, D, generator=g, dtype=F64)
    v_buf = torch.randn(B, w, Hk, Dv, generator=g, dtype=F64)
    if n_seen < w:
        k_buf[:, n_seen:] = float("nan")
        v_buf[:, n_seen:] = float("nan")
    k_buf = k_buf.to(dtype).requires_grad_(requires_grad)
    v_buf = v_buf.to(dtype).requires_grad_(requires_grad)
    return k_buf, v_buf, torch.tensor(n_seen, dtype=torch.int64)


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}".format(*shape)


def chunk16(*args, **kwargs):
    return chunk_sliding_window_attention(*args, chunk_size=16, **kwargs)


# ---------------------------------------------------------------- 1. forward equivalence


@pytest.mark.parametrize("n_seen", [None, 3, 50])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, window, n_seen):
    B, T, _, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, window, Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True
    )
    o, s = chunk16(q, k, v, window=window, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    assert s[0].shape == (B, window, Hk, D) and s[1].shape == (B, window, Hk, Dv)
    assert s[2].dtype == torch.int64 and int(s[2]) == (n_seen or 0) + T
    assert torch.isfinite(s[0]).all() and torch.isfinite(s[1]).all()  # unwritten slots zeroed


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 500])
def test_chunk_sizes(chunk_size):
    q, k, v = make_inputs(2, 45, 4, 2, 8, 6)
    state = make_state(2, 9, 2, 8, 6, n_seen=4)
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=9, scale=0.3, initial_state=state)
    o, s = chunk_sliding_window_attention(
        q, k, v, window=9, scale=0.3, initial_state=state, chunk_size=chunk_size
    )
    assert_close(o_ref, o, RTOL)
    assert s is None


def test_naive_matches_explicit_loop():
    """The reference against a per-query loop written from the definition t - w < j <= t."""
    w, T = 4, 11
    q, k, v = make_inputs(1, T, 2, 1, 5, 3)
    o, _ = naive_sliding_window_attention(q, k, v, window=w)
    for t in range(T):
        lo = max(0, t - w + 1)
        for h in range(2):
            p = torch.softmax(k[0, lo : t + 1, 0] @ q[0, t, h] * 5**-0.5, dim=0)
            torch.testing.assert_close(o[0, t, h], p @ v[0, lo : t + 1, 0], rtol=1e-12, atol=1e-12)


def test_wide_window_is_full_causal_attention():
    """With w >= n_seen + T every past token is in the window: softmax attention with the same
    tokens as a KV cache."""
    q, k, v = make_inputs(2, 40, 4, 2, 8, 6)
    prefix = make_inputs(2, 7, 4, 2, 8, 6, seed=5)
    _, ring = naive_sliding_window_attention(*prefix, window=64, output_final_state=True)
    o, _ = chunk16(q, k, v, window=64, initial_state=ring)
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=(prefix[1], prefix[2]))
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- 2. recurrent and state carry


@pytest.mark.parametrize("n_seen", [None, 3, 50])
@pytest.mark.parametrize("window", [1, 5, 200])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=_ids)
def test_recurrent_matches_naive(shape, window, n_seen):
    B, _, _, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, window, Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True
    )
    o, s = recurrent_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True
    )
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state():
    q, k, v = make_inputs(2, 21, 4, 1, 8, 6)
    o_ref, s_ref = naive_sliding_window_attention(q, k, v, window=6, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = sliding_window_attention_step(q[:, t], k[:, t], v[:, t], state, window=6)
        assert o_t.shape == (2, 4, 6)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)
    assert int(state[2]) == 21


def test_ring_slot_layout():
    """Position p lives in slot p % w; unwritten slots are zero."""
    B, T, w = 1, 7, 5
    q, k, v = make_inputs(B, T, 2, 2, 4, 3)
    _, (k_buf, v_buf, n) = naive_sliding_window_attention(
        q, k, v, window=w, output_final_state=True
    )
    assert int(n) == T
    for p in range(T - w, T):
        assert torch.equal(k_buf[:, p % w], k[:, p]) and torch.equal(v_buf[:, p % w], v[:, p])
    _, (k_buf, _, _) = naive_sliding_window_attention(
        q[:, :3], k[:, :3], v[:, :3], window=w, output_final_state=True
    )
    assert torch.equal(k_buf[:, :3], k[:, :3]) and (k_buf[:, 3:] == 0).all()


@pytest.mark.parametrize("splits", [(1,), (16, 17), (5, 10, 40)])
@pytest.mark.parametrize(
    "fn",
    [chunk16, recurrent_sliding_window_attention, naive_sliding_window_attention],
    ids=["chunk", "recurrent", "naive"],
)
@pytest.mark.parametrize("window", [1, 6, 20])
def test_split_carries_state(fn, window, splits):
    q, k, v = make_inputs(2, 45, 4, 2, 8, 12)
    state = make_state(2, window, 2, 8, 12, n_seen=2)
    o_ref, s_ref = naive_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True
    )
    outs, bounds = [], [0, *splits, 45]
    for a, b in itertools.pairwise(bounds):
        o, state = fn(q[:, a:b], k[:, a:b], v[:, a:b], window=window, initial_state=state,
                      output_final_state=True)
        outs.append(o)
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


# ---------------------------------------------------------------- 3. gradients


@pytest.mark.parametrize("n_seen", [None, 3, 50])
@pytest.mark.parametrize("window", [1, 5, 16])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_grads_match_naive(shape, window, n_seen):
    B, _, _, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape, requires_grad=True)
    inputs = [q, k, v]
    state = None
    if n_seen is not None:
        state = make_state(B, window, Hk, D, Dv, n_seen, requires_grad=True)
        inputs += list(state[:2])
    o_ref, s_ref = naive_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True
    )
    outs_ref = [o_ref, s_ref[0], s_ref[1]]
    cot = random_like_outputs(outs_ref)
    g_ref = grads_of(loss_from(outs_ref, cot), inputs)
    o, s = chunk16(q, k, v, window=window, initial_state=state, output_final_state=True)
    g = grads_of(loss_from([o, s[0], s[1]], cot), inputs)
    for name, r, x in zip(["dq", "dk", "dv", "dk_buf", "dv_buf"], g_ref, g):
        if r.abs().max() == 0:  # e.g. dq with w = 1: o = v does not depend on q
            assert x.abs().max() <= 1e-12, name
        else:
            assert_close(r, x, RTOL, name)


def test_recurrent_grads_match_naive():
    B, T, H, Hk, D, Dv, w = 2, 20, 4, 2, 8, 6, 7
    q, k, v = make_inputs(B, T, H, Hk, D, Dv, requires_grad=True)
    state = make_state(B, w, Hk, D, Dv, 4, requires_grad=True)
    inputs = [q, k, v, state[0], state[1]]
    o_ref, s_ref = naive_sliding_window_attention(q, k, v, window=w, initial_state=state,
                                                  output_final_state=True)
    cot = random_like_outputs([o_ref, *s_ref[:2]])
    g_ref = grads_of(loss_from([o_ref, *s_ref[:2]], cot), inputs)
    o, s = recurrent_sliding_window_attention(q, k, v, window=w, initial_state=state,
                                              output_final_state=True)
    for r, x in zip(g_ref, grads_of(loss_from([o, *s[:2]], cot), inputs)):
        assert_close(r, x, RTOL, "grad")


# ---------------------------------------------------------------- 4. precision and long inputs

LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "fn",
    [naive_sliding_window_attention, chunk16, recurrent_sliding_window_attention],
    ids=["naive", "chunk", "recurrent"],
)
def test_low_precision_forward(fn, dtype, tol):
    shape = (2, 70, 4, 2, 16, 8)
    q, k, v = make_inputs(*shape)
    state = make_state(2, 12, 2, 16, 8, n_seen=5)
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=12, initial_state=state)
    low = make_inputs(*shape, dtype=dtype)
    low_state = make_state(2, 12, 2, 16, 8, n_seen=5, dtype=dtype)
    o, _ = fn(*low, window=12, initial_state=low_state)
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


def test_long_sequence_finite_and_subquadratic():
    """T = 2^16 (sub-quadratic op): finite output; fwd+bwd at T = 16384 uses far less than a
    T x T matrix (memory is O(T * (D + w + chunk)))."""
    T = 2**16
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32)
    o, _ = chunk_sliding_window_attention(q, k, v, window=64, chunk_size=1024)
    assert torch.isfinite(o).all()
    assert_close(o[:, -100:], naive_sliding_window_attention(
        q[:, -164:], k[:, -164:], v[:, -164:], window=64)[0][:, -100:], 1e-5)

    T = 16384
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_sliding_window_attention(q, k, v, window=64, chunk_size=512)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"  # 1/8 of one T x T matrix
    assert torch.isfinite(q.grad).all()


# ---------------------------------------------------------------- 5. bad input


def test_errors():
    q, k, v = make_inputs(1, 8, 4, 2, 8, 6)
    good = make_state(1, 5, 2, 8, 6, n_seen=2)
    for fn in (naive_sliding_window_attention, chunk_sliding_window_attention,
               recurrent_sliding_window_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], k, v, window=5)
        with pytest.raises(ValueError, match="head dims differ"):
            fn(q, k[..., :4], v, window=5)
        with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
            fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), window=5)
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="window must be a positive integer"):
                fn(q, k, v, window=bad)
        with pytest.raises(TypeError, match="window"):
            fn(q, k, v)  # window is required
        with pytest.raises(ValueError, match="ring buffer of 5 slots but window=4"):
            fn(q, k, v, window=4, initial_state=good)
        with pytest.raises(ValueError, match="k_buf must have shape"):
            fn(q, k, v, window=5, initial_state=(good[0][..., :3], good[1], good[2]))
        with pytest.raises(ValueError, match="v_buf must have shape"):
            fn(q, k, v, window=5, initial_state=(good[0], good[1][:, :, :1], good[2]))
        with pytest.raises(TypeError, match="n_seen must be an int64 0-dim tensor"):
            fn(q, k, v, window=5, initial_state=(good[0], good[1], 2))
        with pytest.raises(TypeError, match="n_seen must be an int64 0-dim tensor"):
            fn(q, k, v, window=5, initial_state=(good[0], good[1], torch.tensor([2])))
        with pytest.raises(TypeError, match="state must be a tuple"):
            fn(q, k, v, window=5, initial_state=good[:2])
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            chunk_sliding_window_attention(q, k, v, window=5, chunk_size=bad)
    with pytest.raises(ValueError, match="for one decode step must be"):
        sliding_window_attention_step(q, k[:, 0], v[:, 0], None, window=5)
    with pytest.raises(ValueError, match="window must be a positive integer"):
        sliding_window_attention_step(q[:, 0], k[:, 0], v[:, 0], None, window=0)
    with pytest.raises(ValueError, match="ring buffer of 5 slots but window=6"):
        sliding_window_attention_step(q[:, 0], k[:, 0], v[:, 0], good, window=6)


# ---------------------------------------------------------------- 6. ALiBi and bidirectional

MODES = [(True, True), (False, False), (True, False)]  # (ALiBi, causal)
MODE_IDS = ["alibi", "bidir", "alibi-bidir"]


def slopes_for(H, use, dtype=F64):
    return alibi_slopes(H, dtype) if use else None


def test_alibi_naive_matches_hand_written_bias():
    """Per-query loop: causal keys t - w < j <= t with bias -slope_h * (i - j) at absolute
    positions (a ring state of n_seen tokens first); bidirectional keys |t - j| < w, -|t - j|."""
    w, T, H, n = 4, 11, 2, 6
    q, k, v = make_inputs(1, T, H, 1, 5, 3)
    m = alibi_slopes(H, F64)
    _, ring = naive_sliding_window_attention(*make_inputs(1, n, H, 1, 5, 3, seed=3), window=w,
                                             output_final_state=True)
    o, _ = naive_sliding_window_attention(q, k, v, window=w, initial_state=ring, alibi_slopes=m)
    o_bi, _ = naive_sliding_window_attention(q, k, v, window=w, alibi_slopes=m, causal=False)
    prefix = make_inputs(1, n, H, 1, 5, 3, seed=3)
    keys, vals = torch.cat([prefix[1], k], 1), torch.cat([prefix[2], v], 1)  # positions 0..n+T-1
    for t in range(T):
        i = n + t
        js = range(i - w + 1, i + 1)
        for h in range(H):
            bias = torch.tensor([-m[h] * (i - j) for j in js], dtype=F64)
            p = torch.softmax(keys[0, list(js), 0] @ q[0, t, h] * 5**-0.5 + bias, dim=0)
            torch.testing.assert_close(o[0, t, h], p @ vals[0, list(js), 0], rtol=1e-12,
                                       atol=1e-12)
            js_bi = [j for j in range(T) if abs(t - j) < w]
            bias = torch.tensor([-m[h] * abs(t - j) for j in js_bi], dtype=F64)
            p = torch.softmax(k[0, js_bi, 0] @ q[0, t, h] * 5**-0.5 + bias, dim=0)
            torch.testing.assert_close(o_bi[0, t, h], p @ v[0, js_bi, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("window", [1, 5, 16, 200])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_modes_chunk_matches_naive(shape, window, alibi, causal):
    B, _, H, Hk, D, Dv = shape
    q, k, v = make_inputs(*shape)
    for n_seen in ([None, 3, 50] if causal else [None]):
        state = None if n_seen is None else make_state(B, window, Hk, D, Dv, n_seen)
        kw = {"window": window, "initial_state": state, "output_final_state": causal,
              "alibi_slopes": slopes_for(H, alibi), "causal": causal}
        o_ref, s_ref = naive_sliding_window_attention(q, k, v, **kw)
        o, s = chunk16(q, k, v, **kw)
        assert_close(o_ref, o, RTOL)
        assert_states_close(s_ref, s, RTOL)


@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("window", [1, 5, 16])
def test_modes_chunk_grads_match_naive(window, alibi, causal):
    B, T, H, Hk, D, Dv = 2, 37, 4, 2, 8, 6
    q, k, v = make_inputs(B, T, H, Hk, D, Dv, requires_grad=True)
    inputs = [q, k, v]
    state = None
    if causal:
        state = make_state(B, window, Hk, D, Dv, 3, requires_grad=True)
        inputs += list(state[:2])
    kw = {"window": window, "initial_state": state, "alibi_slopes": slopes_for(H, alibi),
          "causal": causal}
    o_ref, _ = naive_sliding_window_attention(q, k, v, **kw)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    o, _ = chunk16(q, k, v, **kw)
    for name, r, x in zip(["dq", "dk", "dv", "dk_buf", "dv_buf"], g_ref,
                          grads_of(loss_from([o], cot), inputs)):
        if r.abs().max() == 0:  # w = 1 causal: o = v does not depend on q
            assert x.abs().max() <= 1e-12, name
        else:
            assert_close(r, x, RTOL, name)


@pytest.mark.parametrize("window", [3, 6, 20])
@pytest.mark.parametrize(
    "fn",
    [chunk16, recurrent_sliding_window_attention, naive_sliding_window_attention],
    ids=["chunk", "recurrent", "naive"],
)
def test_alibi_split_carries_state(fn, window):
    q, k, v = make_inputs(2, 45, 4, 2, 8, 12)
    state = make_state(2, window, 2, 8, 12, n_seen=2)
    m = alibi_slopes(4, F64)
    o_ref, s_ref = naive_sliding_window_attention(
        q, k, v, window=window, initial_state=state, output_final_state=True, alibi_slopes=m
    )
    outs = []
    for a, b in itertools.pairwise([0, 5, 10, 40, 45]):
        o, state = fn(q[:, a:b], k[:, a:b], v[:, a:b], window=window, initial_state=state,
                      output_final_state=True, alibi_slopes=m)
        outs.append(o)
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("n_seen", [None, 3, 50])
def test_alibi_step_matches_naive(n_seen):
    """Decode into the ring with ALiBi: slot s holds distance (n_seen - s) % w from the query."""
    q, k, v = make_inputs(2, 21, 6, 2, 8, 6)
    m = alibi_slopes(6, F64)  # 6 heads: not a power of two
    state = None if n_seen is None else make_state(2, 6, 2, 8, 6, n_seen)
    o_ref, s_ref = naive_sliding_window_attention(q, k, v, window=6, initial_state=state,
                                                  output_final_state=True, alibi_slopes=m)
    outs = []
    for t in range(q.shape[1]):
        o_t, state = sliding_window_attention_step(q[:, t], k[:, t], v[:, t], state, window=6,
                                                   alibi_slopes=m)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_gqa_slopes_are_per_query_head(causal):
    q, k, v = make_inputs(1, 23, 6, 2, 8, 4)
    m = alibi_slopes(6, F64)
    k_rep, v_rep = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    o_ref, _ = naive_sliding_window_attention(q, k_rep, v_rep, window=5, alibi_slopes=m,
                                              causal=causal)
    fns = [naive_sliding_window_attention, chunk16]
    fns += [recurrent_sliding_window_attention] if causal else []
    for fn in fns:
        kw = {"causal": causal} if fn is not recurrent_sliding_window_attention else {}
        o, _ = fn(q, k, v, window=5, alibi_slopes=m, **kw)
        assert_close(o_ref, o, RTOL)


@pytest.mark.parametrize("alibi", [False, True])
def test_wide_window_modes_equal_softmax_attention(alibi):
    """w >= n_seen + T: ALiBi with a ring of 7 tokens == softmax attention with those 7 tokens as
    a KV cache (same absolute positions); bidirectional == bidirectional softmax attention."""
    q, k, v = make_inputs(2, 40, 4, 2, 8, 6)
    m = slopes_for(4, alibi)
    prefix = make_inputs(2, 7, 4, 2, 8, 6, seed=5)
    _, ring = naive_sliding_window_attention(*prefix, window=64, output_final_state=True)
    o, _ = chunk16(q, k, v, window=64, initial_state=ring, alibi_slopes=m)
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=(prefix[1], prefix[2]),
                                       alibi_slopes=m)
    assert_close(o_ref, o, RTOL)
    o, _ = chunk16(q, k, v, window=40, alibi_slopes=m, causal=False)
    o_ref, _ = naive_softmax_attention(q, k, v, alibi_slopes=m, causal=False)
    assert_close(o_ref, o, RTOL)


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
def test_modes_low_precision(alibi, causal, dtype, tol):
    shape = (2, 70, 4, 2, 16, 8)
    q, k, v = make_inputs(*shape)
    o_ref, _ = naive_sliding_window_attention(q, k, v, window=12, causal=causal,
                                              alibi_slopes=slopes_for(4, alibi))
    low = make_inputs(*shape, dtype=dtype)
    for fn in (naive_sliding_window_attention, chunk16):
        o, _ = fn(*low, window=12, causal=causal, alibi_slopes=slopes_for(4, alibi, dtype))
        assert o.dtype == dtype
        assert_close(o_ref, o, tol)


def test_bidirectional_long_sequence_subquadratic():
    """causal=False reads w - 1 keys on each side of a block: fwd+bwd memory stays O(T * (w +
    chunk)) (here far below one T x T matrix)."""
    T = 8192
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32, requires_grad=True)
    m = alibi_slopes(1, torch.float32)

    def fwd_bwd():
        o, _ = chunk_sliding_window_attention(q, k, v, window=64, chunk_size=128,
                                              alibi_slopes=m, causal=False)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(q.grad).all()


def test_alibi_and_causal_errors():
    q, k, v = make_inputs(1, 8, 4, 2, 8, 6)
    good = make_state(1, 5, 2, 8, 6, n_seen=2)
    m = alibi_slopes(4, F64)
    for fn in (naive_sliding_window_attention, chunk_sliding_window_attention,
               recurrent_sliding_window_attention):
        with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H=4\]"):
            fn(q, k, v, window=5, alibi_slopes=m[:2])
        with pytest.raises(ValueError, match="alibi_slopes must be a floating-point tensor"):
            fn(q, k, v, window=5, alibi_slopes=torch.ones(4, dtype=torch.int64))
        with pytest.raises(TypeError, match="alibi_slopes must be a torch.Tensor"):
            fn(q, k, v, window=5, alibi_slopes=0.5)
    for fn in (naive_sliding_window_attention, chunk_sliding_window_attention):
        with pytest.raises(ValueError, match=r"causal=False \(bidirectional\) has no"):
            fn(q, k, v, window=5, initial_state=good, causal=False)
        with pytest.raises(ValueError, match=r"causal=False \(bidirectional\) has no"):
            fn(q, k, v, window=5, output_final_state=True, causal=False)
        with pytest.raises(TypeError, match="causal must be True or False"):
            fn(q, k, v, window=5, causal="no")
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H=4\]"):
        sliding_window_attention_step(q[:, 0], k[:, 0], v[:, 0], None, window=5,
                                      alibi_slopes=m[None])
