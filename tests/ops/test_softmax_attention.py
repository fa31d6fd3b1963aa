"""Softmax attention: chunk (memory-efficient, custom backward), SDPA and recurrent forms against
the naive O(T^2) definition, in float64, with KV caches, GQA and Dv != D; ALiBi and the
bidirectional (causal=False) form."""

from __future__ import annotations

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.softmax_attention import (
    chunk_softmax_attention,
    naive_softmax_attention,
    recurrent_softmax_attention,
    sdpa_softmax_attention,
    softmax_attention_step,
)
from longctx.position import alibi_slopes
from tests.helpers import (
    assert_close,
    assert_states_close,
    flatten_state,
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
CACHE_LENS = [0, 5, 20]


def make_inputs(B, T, H, Hk, D, Dv, S=0, dtype=F64, requires_grad=False, seed=0):
    """q, k, v and a KV cache of length S (None when S == 0)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    q, k, v = rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)
    cache = (rnd(B, S, Hk, D), rnd(B, S, Hk, Dv)) if S else None
    return q, k, v, cache


def assert_grad_close(ref, out, rtol, name):
    """``assert_close``, except that an exactly-zero reference (e.g. dq when each query sees one
    key: o = v does not depend on q) is compared absolutely."""
    if ref.abs().max() == 0:
        assert out.abs().max() <= 1e-12, f"{name}: expected zeros, got max {out.abs().max():.3e}"
    else:
        assert_close(ref, out, rtol, name)


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}".format(*shape)


# ---------------------------------------------------------------- 1. forward equivalence


@pytest.mark.parametrize("S", CACHE_LENS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, S):
    q, k, v, cache = make_inputs(*shape, S=S)
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    o, s = chunk_softmax_attention(
        q, k, v, initial_state=cache, output_final_state=True, chunk_size=16
    )
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    assert s[0].shape == (shape[0], S + shape[1], shape[3], shape[4])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 500])
def test_chunk_sizes(chunk_size):
    q, k, v, cache = make_inputs(2, 45, 4, 2, 8, 6, S=11)
    o_ref, _ = naive_softmax_attention(q, k, v, scale=0.3, initial_state=cache)
    o, s = chunk_softmax_attention(q, k, v, scale=0.3, initial_state=cache, chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)
    assert s is None


@pytest.mark.parametrize("S", CACHE_LENS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_sdpa_matches_naive(shape, S):
    q, k, v, cache = make_inputs(*shape, S=S)
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    o, s = sdpa_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_naive_matches_explicit_loop():
    """The reference against a per-query loop written straight from the formula."""
    q, k, v, cache = make_inputs(1, 9, 4, 2, 5, 3, S=4)
    o, _ = naive_softmax_attention(q, k, v, initial_state=cache)
    keys, vals = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
    for t in range(9):
        for h in range(4):
            kk, vv = keys[0, : 4 + t + 1, h // 2], vals[0, : 4 + t + 1, h // 2]
            p = torch.softmax(kk @ q[0, t, h] * 5**-0.5, dim=0)
            torch.testing.assert_close(o[0, t, h], p @ vv, rtol=1e-12, atol=1e-12)


def test_large_logits_stable():
    """The online softmax must not overflow where exp(raw scores) would."""
    q, k, v, _ = make_inputs(1, 50, 2, 2, 8, 8)
    o_ref, _ = naive_softmax_attention(q * 30, k * 30, v)
    o, _ = chunk_softmax_attention(q * 30, k * 30, v, chunk_size=16)
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- 2. recurrent and state carry


@pytest.mark.parametrize("S", [0, 5])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_recurrent_matches_naive(shape, S):
    q, k, v, cache = make_inputs(*shape, S=S)
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    o, s = recurrent_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state():
    q, k, v, _ = make_inputs(2, 21, 4, 1, 8, 6)
    o_ref, s_ref = naive_softmax_attention(q, k, v, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = softmax_attention_step(q[:, t], k[:, t], v[:, t], state)
        assert o_t.shape == (2, 4, 6)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("split", [1, 16, 30, 44])
@pytest.mark.parametrize(
    "fn",
    [
        lambda *a, **kw: chunk_softmax_attention(*a, chunk_size=16, **kw),
        recurrent_softmax_attention,
        sdpa_softmax_attention,
        naive_softmax_attention,
    ],
    ids=["chunk", "recurrent", "sdpa", "naive"],
)
def test_split_carries_state(fn, split):
    q, k, v, cache = make_inputs(2, 45, 4, 2, 8, 12, S=3)
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    o1, st = fn(q[:, :split], k[:, :split], v[:, :split], initial_state=cache,
                output_final_state=True)
    o2, st = fn(q[:, split:], k[:, split:], v[:, split:], initial_state=st,
                output_final_state=True)
    assert_close(o_ref, torch.cat([o1, o2], 1), RTOL)
    assert_states_close(s_ref, st, RTOL)


# ---------------------------------------------------------------- 3. gradients


@pytest.mark.parametrize("S", CACHE_LENS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_grads_match_naive(shape, S):
    q, k, v, cache = make_inputs(*shape, S=S, requires_grad=True)
    inputs = [q, k, v, *flatten_state(cache)]
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True)
    outs_ref = [o_ref, *s_ref]
    cot = random_like_outputs(outs_ref)
    g_ref = grads_of(loss_from(outs_ref, cot), inputs)

    o, s = chunk_softmax_attention(
        q, k, v, initial_state=cache, output_final_state=True, chunk_size=16
    )
    g = grads_of(loss_from([o, *s], cot), inputs)
    # cotangent on o only: exercises the custom backward alone
    o_ref2, _ = naive_softmax_attention(q, k, v, initial_state=cache)
    g_ref_o = grads_of(loss_from([o_ref2], cot[:1]), inputs)
    o2, _ = chunk_softmax_attention(q, k, v, initial_state=cache, chunk_size=16)
    g_o = grads_of(loss_from([o2], cot[:1]), inputs)
    names = ["dq", "dk", "dv", "dk_cache", "dv_cache"]
    for name, r, x, r_o, x_o in zip(names, g_ref, g, g_ref_o, g_o):
        assert_grad_close(r, x, RTOL, name)
        assert_grad_close(r_o, x_o, RTOL, name + " (o only)")


def test_chunk_gradcheck():
    q, k, v, cache = make_inputs(1, 6, 2, 1, 3, 2, S=2, requires_grad=True)

    def f(q, k, v, kc, vc):
        return chunk_softmax_attention(q, k, v, initial_state=(kc, vc), chunk_size=4)[0]

    assert torch.autograd.gradcheck(f, (q, k, v, *cache))


def test_sdpa_grads_match_naive():
    q, k, v, cache = make_inputs(2, 33, 4, 2, 8, 6, S=7, requires_grad=True)
    inputs = [q, k, v, *cache]
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=cache)
    o, _ = sdpa_softmax_attention(q, k, v, initial_state=cache)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    for r, x in zip(g_ref, grads_of(loss_from([o], cot), inputs)):
        assert_close(r, x, RTOL, "sdpa grad")


# ---------------------------------------------------------------- 4. precision

LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "fn",
    [
        naive_softmax_attention,
        lambda *a, **kw: chunk_softmax_attention(*a, chunk_size=16, **kw),
        sdpa_softmax_attention,
        recurrent_softmax_attention,
    ],
    ids=["naive", "chunk", "sdpa", "recurrent"],
)
def test_low_precision_forward(fn, dtype, tol):
    shape = (2, 70, 4, 2, 16, 8)
    q, k, v, cache = make_inputs(*shape, S=6)
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=cache)
    ql, kl, vl, cl = make_inputs(*shape, S=6, dtype=dtype)
    o, _ = fn(ql, kl, vl, initial_state=cl)
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
def test_low_precision_chunk_grads(dtype, tol):
    shape = (1, 70, 4, 2, 16, 8)
    q, k, v, cache = make_inputs(*shape, S=6, requires_grad=True)
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=cache)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), [q, k, v, *cache])
    low = make_inputs(*shape, S=6, dtype=dtype, requires_grad=True)
    o, _ = chunk_softmax_attention(*low[:3], initial_state=low[3], chunk_size=16)
    g = grads_of(loss_from([o], [c.to(dtype) for c in cot]), [*low[:3], *low[3]])
    for r, x in zip(g_ref, g):
        assert x.dtype == dtype
        assert_close(r, x, 2 * tol, "grad")


# ---------------------------------------------------------------- 5. memory


def test_chunk_memory_is_subquadratic():
    T = 8192
    q, k, v, _ = make_inputs(1, T, 1, 1, 64, 64, dtype=torch.float32, requires_grad=True)
    tt_bytes = T * T * 4  # one T x T float32 matrix

    def chunk_fwd_bwd():
        o, _ = chunk_softmax_attention(q, k, v, chunk_size=1024)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(chunk_fwd_bwd)
    assert peak < tt_bytes / 8, f"chunk fwd+bwd peak {peak / 2**20:.1f} MiB"
    assert q.grad is not None and torch.isfinite(q.grad).all()

    def naive_fwd():
        with torch.no_grad():
            naive_softmax_attention(q, k, v)

    assert peak_memory_bytes(naive_fwd) >= tt_bytes


# ---------------------------------------------------------------- 6. bad input


def test_errors():
    q, k, v, cache = make_inputs(1, 8, 4, 2, 8, 6, S=3)
    for fn in (naive_softmax_attention, chunk_softmax_attention, sdpa_softmax_attention,
               recurrent_softmax_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], k, v)
        with pytest.raises(ValueError, match="head dims differ"):
            fn(q, k[..., :4], v)
        with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
            fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2))
        with pytest.raises(ValueError, match="k_cache must have shape"):
            fn(q, k, v, initial_state=(cache[0][:, :, :1], cache[1]))
        with pytest.raises(ValueError, match="v_cache must have shape"):
            fn(q, k, v, initial_state=(cache[0], cache[1][..., :2]))
        with pytest.raises(ValueError, match="v_cache must have shape"):
            fn(q, k, v, initial_state=(cache[0], cache[1][:, :2]))  # cache lengths differ
        with pytest.raises(TypeError, match="initial_state must be a tuple"):
            fn(q, k, v, initial_state=cache[0])
        with pytest.raises(TypeError, match="dtype"):
            fn(q, k, v, initial_state=(cache[0].float(), cache[1].float()))
    for bad in (0, -3, 2.0):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            chunk_softmax_attention(q, k, v, chunk_size=bad)
    with pytest.raises(ValueError, match="for one decode step must be"):
        softmax_attention_step(q, k[:, 0], v[:, 0], None)
    with pytest.raises(ValueError, match="k_cache must have shape"):
        softmax_attention_step(q[:, 0], k[:, 0], v[:, 0], (cache[0][..., :3], cache[1]))


# ---------------------------------------------------------------- 7. ALiBi and bidirectional

# (ALiBi, causal): ALiBi causal, bidirectional without and with ALiBi
MODES = [(True, True), (False, False), (True, False)]
MODE_IDS = ["alibi", "bidir", "alibi-bidir"]


def slopes_for(H, use, dtype=F64):
    return alibi_slopes(H, dtype) if use else None


def _mode_kwargs(H, alibi, causal):
    return {"alibi_slopes": slopes_for(H, alibi), "causal": causal}


def test_alibi_naive_matches_hand_written_bias():
    """The reference against a per-query loop: score + slope_h * -(i - j) (causal, with a cache:
    key j at absolute position j, query t at S + t) and -|i - j| (bidirectional)."""
    S, T, H = 4, 9, 4
    q, k, v, cache = make_inputs(1, T, H, 2, 5, 3, S=S)
    m = alibi_slopes(H, F64)
    assert torch.equal(m, torch.tensor([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8], dtype=F64))
    o, _ = naive_softmax_attention(q, k, v, initial_state=cache, alibi_slopes=m)
    keys, vals = torch.cat([cache[0], k], 1), torch.cat([cache[1], v], 1)
    o_bi, _ = naive_softmax_attention(q, k, v, alibi_slopes=m, causal=False)
    for t in range(T):
        i = S + t
        for h in range(H):
            kk, vv = keys[0, : i + 1, h // 2], vals[0, : i + 1, h // 2]
            bias = torch.tensor([-m[h] * (i - j) for j in range(i + 1)], dtype=F64)
            p = torch.softmax(kk @ q[0, t, h] * 5**-0.5 + bias, dim=0)
            torch.testing.assert_close(o[0, t, h], p @ vv, rtol=1e-12, atol=1e-12)
            bias = torch.tensor([-m[h] * abs(t - j) for j in range(T)], dtype=F64)
            p = torch.softmax(k[0, :, h // 2] @ q[0, t, h] * 5**-0.5 + bias, dim=0)
            torch.testing.assert_close(o_bi[0, t, h], p @ v[0, :, h // 2], rtol=1e-12, atol=1e-12)


def test_bidirectional_sees_the_future():
    """causal=False: the first query's output depends on the last key; causal=True does not."""
    q, k, v, _ = make_inputs(1, 6, 2, 2, 4, 4)
    v2 = v.clone()
    v2[:, -1] += 1.0
    for fn in (naive_softmax_attention, chunk_softmax_attention, sdpa_softmax_attention):
        for alibi in (False, True):
            kw = {"alibi_slopes": slopes_for(2, alibi)}
            a, _ = fn(q, k, v, causal=False, **kw)
            b, _ = fn(q, k, v2, causal=False, **kw)
            assert (a[:, 0] - b[:, 0]).abs().max() > 1e-6
            a, _ = fn(q, k, v, **kw)
            b, _ = fn(q, k, v2, **kw)
            assert torch.equal(a[:, :-1], b[:, :-1])


@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_modes_chunk_and_sdpa_match_naive(shape, alibi, causal):
    H = shape[2]
    for S in ([0, 5] if causal else [0]):
        q, k, v, cache = make_inputs(*shape, S=S)
        kw = {**_mode_kwargs(H, alibi, causal), "initial_state": cache}
        o_ref, _ = naive_softmax_attention(q, k, v, **kw)
        o, _ = chunk_softmax_attention(q, k, v, chunk_size=16, **kw)
        assert_close(o_ref, o, RTOL, "chunk")
        o, _ = sdpa_softmax_attention(q, k, v, **kw)
        assert_close(o_ref, o, RTOL, "sdpa")


@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2]], ids=_ids)
def test_modes_grads_match_naive(shape, alibi, causal):
    """Gradients of the chunk form's custom backward (ALiBi in the recomputed blocks, all key
    blocks when bidirectional) and of sdpa, against naive; with a cache when causal."""
    S = 7 if causal else 0
    q, k, v, cache = make_inputs(*shape, S=S, requires_grad=True)
    inputs = [q, k, v, *flatten_state(cache)]
    kw = {**_mode_kwargs(shape[2], alibi, causal), "initial_state": cache}
    o_ref, _ = naive_softmax_attention(q, k, v, **kw)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    for name, fn in (("chunk", lambda *a, **k_: chunk_softmax_attention(*a, chunk_size=16, **k_)),
                     ("sdpa", sdpa_softmax_attention)):
        o, _ = fn(q, k, v, **kw)
        for i, (r, x) in enumerate(zip(g_ref, grads_of(loss_from([o], cot), inputs))):
            assert_grad_close(r, x, RTOL, f"{name} grad {i}")


def test_modes_chunk_gradcheck():
    q, k, v, _ = make_inputs(1, 5, 2, 1, 2, 2, requires_grad=True)
    m = alibi_slopes(2, F64)
    for causal in (True, False):
        def f(q, k, v, causal=causal):
            return chunk_softmax_attention(q, k, v, chunk_size=2, alibi_slopes=m, causal=causal)[0]

        assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("split", [1, 16, 30])
@pytest.mark.parametrize(
    "fn",
    [
        lambda *a, **kw: chunk_softmax_attention(*a, chunk_size=16, **kw),
        recurrent_softmax_attention,
        sdpa_softmax_attention,
        naive_softmax_attention,
    ],
    ids=["chunk", "recurrent", "sdpa", "naive"],
)
def test_alibi_split_carries_state(fn, split):
    """ALiBi uses absolute positions: the cached keys keep theirs across the split."""
    q, k, v, cache = make_inputs(2, 45, 4, 2, 8, 12, S=3)
    m = alibi_slopes(4, F64)
    o_ref, s_ref = naive_softmax_attention(q, k, v, initial_state=cache, output_final_state=True,
                                           alibi_slopes=m)
    o1, st = fn(q[:, :split], k[:, :split], v[:, :split], initial_state=cache,
                output_final_state=True, alibi_slopes=m)
    o2, st = fn(q[:, split:], k[:, split:], v[:, split:], initial_state=st,
                output_final_state=True, alibi_slopes=m)
    assert_close(o_ref, torch.cat([o1, o2], 1), RTOL)
    assert_states_close(s_ref, st, RTOL)


def test_alibi_step_matches_naive():
    q, k, v, _ = make_inputs(2, 21, 4, 1, 8, 6)
    m = alibi_slopes(4, F64)
    o_ref, s_ref = naive_softmax_attention(q, k, v, output_final_state=True, alibi_slopes=m)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = softmax_attention_step(q[:, t], k[:, t], v[:, t], state, alibi_slopes=m)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_gqa_slopes_are_per_query_head(causal):
    """GQA with ALiBi == multi-head attention with the key/value heads repeated: query head h
    uses slope h (not its key/value head's)."""
    q, k, v, _ = make_inputs(1, 19, 6, 2, 8, 4)
    m = alibi_slopes(6, F64)
    k_rep, v_rep = k.repeat_interleave(3, dim=2), v.repeat_interleave(3, dim=2)
    o_ref, _ = naive_softmax_attention(q, k_rep, v_rep, alibi_slopes=m, causal=causal)
    for fn in (naive_softmax_attention, sdpa_softmax_attention,
               lambda *a, **kw: chunk_softmax_attention(*a, chunk_size=4, **kw)):
        o, _ = fn(q, k, v, alibi_slopes=m, causal=causal)
        assert_close(o_ref, o, RTOL)
    if causal:
        o, _ = recurrent_softmax_attention(q, k, v, alibi_slopes=m)
        assert_close(o_ref, o, RTOL)


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize("alibi,causal", MODES, ids=MODE_IDS)
def test_modes_low_precision(alibi, causal, dtype, tol):
    shape = (2, 70, 4, 2, 16, 8)
    S = 6 if causal else 0
    q, k, v, cache = make_inputs(*shape, S=S)
    o_ref, _ = naive_softmax_attention(q, k, v, initial_state=cache,
                                       **_mode_kwargs(4, alibi, causal))
    ql, kl, vl, cl = make_inputs(*shape, S=S, dtype=dtype)
    kw = {"initial_state": cl, "alibi_slopes": slopes_for(4, alibi, dtype), "causal": causal}
    for fn in (naive_softmax_attention, sdpa_softmax_attention,
               lambda *a, **k_: chunk_softmax_attention(*a, chunk_size=16, **k_)):
        o, _ = fn(ql, kl, vl, **kw)
        assert o.dtype == dtype
        assert_close(o_ref, o, tol)


def test_bidirectional_chunk_memory_is_subquadratic():
    """causal=False with ALiBi visits every key block, still in O(T * chunk_size) memory."""
    T = 4096
    q, k, v, _ = make_inputs(1, T, 1, 1, 32, 32, dtype=torch.float32, requires_grad=True)
    m = alibi_slopes(1, torch.float32)

    def fwd_bwd():
        o, _ = chunk_softmax_attention(q, k, v, chunk_size=256, alibi_slopes=m, causal=False)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"chunk fwd+bwd peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(q.grad).all()


def test_alibi_and_causal_errors():
    q, k, v, cache = make_inputs(1, 8, 4, 2, 8, 6, S=3)
    m = alibi_slopes(4, F64)
    for fn in (naive_softmax_attention, chunk_softmax_attention, sdpa_softmax_attention,
               recurrent_softmax_attention):
        with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H=4\]"):
            fn(q, k, v, alibi_slopes=m[:2])  # one per kv head is not enough
        with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H=4\]"):
            fn(q, k, v, alibi_slopes=m[None])
        with pytest.raises(ValueError, match="alibi_slopes must be a floating-point tensor"):
            fn(q, k, v, alibi_slopes=torch.arange(4))
        with pytest.raises(TypeError, match="alibi_slopes must be a torch.Tensor"):
            fn(q, k, v, alibi_slopes=[0.5, 0.25, 0.125, 0.0625])
    for fn in (naive_softmax_attention, chunk_softmax_attention, sdpa_softmax_attention):
        with pytest.raises(ValueError, match=r"causal=False \(bidirectional\) has no"):
            fn(q, k, v, initial_state=cache, causal=False)
        with pytest.raises(ValueError, match=r"causal=False \(bidirectional\) has no"):
            fn(q, k, v, output_final_state=True, causal=False)
        with pytest.raises(TypeError, match="causal must be True or False"):
            fn(q, k, v, causal=1)
    with pytest.raises(ValueError, match="alibi_slopes requires grad"):
        chunk_softmax_attention(q, k, v, alibi_slopes=m.clone().requires_grad_(True))
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \[H=4\]"):
        softmax_attention_step(q[:, 0], k[:, 0], v[:, 0], None, alibi_slopes=m[:3])
