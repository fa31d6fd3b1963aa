"""Longformer attention: chunked and decode forms against the masked definition, in float64; the
definition against a per-query loop over the key sets of the paper; carried states (ring buffer +
global keys + global-projection prefix), GQA, Dv != D, both causal modes."""

from __future__ import annotations

import itertools

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.longformer_attention import (
    chunk_longformer_attention,
    longformer_attention_step,
    naive_longformer_attention,
    recurrent_longformer_attention,
)
from longctx.ops.sliding_window_attention import naive_sliding_window_attention
from longctx.ops.softmax_attention import naive_softmax_attention
from tests.helpers import assert_close, assert_states_close, loss_from, random_like_outputs

F64 = torch.float64
RTOL = 1e-9

SHAPES = [  # B, T, H, Hk, D, Dv
    (2, 1, 2, 2, 8, 8),
    (1, 29, 4, 2, 8, 6),  # GQA 2:1, Dv < D
    (2, 37, 2, 1, 4, 10),  # MQA, Dv > D
]
GLOBALS = [(), (0,), (3, 17, 40)]  # 40: beyond every T here (a future token if causal)
WINDOWS = [1, 4, 64]


def make_inputs(B, T, H, Hk, D, Dv, dtype=F64, requires_grad=False, seed=0):
    """q, k, v, q_g, k_g, v_g."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return [rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv),
            rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)]


def make_state(B, w, G, Hk, D, Dv, n_seen, dtype=F64, requires_grad=False, seed=1):
    """A state as if ``n_seen`` tokens had been seen; rows not yet written hold NaN."""
    g = torch.Generator().manual_seed(seed)
    G = sorted(G)
    P1 = max(G) + 1 if G else 0
    ts = []
    for rows, pos, last in ((w, None, D), (w, None, Dv), (len(G), G, D), (len(G), G, Dv),
                            (P1, range(P1), D), (P1, range(P1), Dv)):
        t = torch.randn(B, rows, Hk, last, generator=g, dtype=F64)
        if pos is None and n_seen < w:
            t[:, n_seen:] = float("nan")
        elif pos is not None:
            for i, p in enumerate(pos):
                if p >= n_seen:
                    t[:, i] = float("nan")
        ts.append(t.to(dtype).requires_grad_(requires_grad))
    return (*ts, torch.tensor(n_seen, dtype=torch.int64))


def _ids(x):
    return "-".join(map(str, x)) if isinstance(x, tuple) else str(x)


def chunk5(*args, **kwargs):
    return chunk_longformer_attention(*args, chunk_size=5, **kwargs)


# ---------------------------------------------------------------- 1. the definition


@pytest.mark.parametrize("causal", [True, False])
def test_naive_matches_explicit_loop(causal):
    """Per query, from the definition: a non-global query t attends with q, k, v to its window
    and the global positions; a global one with q_g, k_g, v_g to every key (causal: <= t)."""
    T, w, G, D = 12, 3, (2, 7), 5
    q, k, v, q_g, k_g, v_g = make_inputs(1, T, 2, 1, D, 3)
    o, _ = naive_longformer_attention(q, k, v, q_g, k_g, v_g, w, G, causal=causal)
    for t in range(T):
        last = t if causal else T - 1
        if t in G:
            keys, (qq, kk, vv) = list(range(last + 1)), (q_g, k_g, v_g)
        else:
            near = range(t - w + 1, t + 1) if causal else range(t - w + 1, t + w)
            keys = sorted({j for j in near if 0 <= j < T} | {j for j in G if j <= last})
            qq, kk, vv = q, k, v
        for h in range(2):
            p = torch.softmax(kk[0, keys, 0] @ qq[0, t, h] * D**-0.5, dim=0)
            torch.testing.assert_close(o[0, t, h], p @ vv[0, keys, 0], rtol=1e-12, atol=1e-12)


def test_no_global_tokens_and_wide_window_is_full_attention():
    T = 17
    x = make_inputs(2, T, 4, 2, 8, 6)
    o, _ = naive_longformer_attention(*x, window=T, global_positions=())
    assert_close(naive_softmax_attention(*x[:3])[0], o, RTOL)
    o_bi, _ = chunk5(*x, window=T, global_positions=(), causal=False)
    q, k, v = x[0], x[1].repeat_interleave(2, 2), x[2].repeat_interleave(2, 2)
    p = torch.softmax(torch.einsum("bthd,bshd->bhts", q, k) * 8**-0.5, dim=-1)
    assert_close(torch.einsum("bhts,bshd->bthd", p, v), o_bi, RTOL)


def test_no_global_tokens_is_sliding_window_attention():
    x = make_inputs(2, 23, 4, 2, 8, 6)
    o, _ = chunk5(*x, window=5, global_positions=())
    assert_close(naive_sliding_window_attention(*x[:3], window=5)[0], o, RTOL)


def test_global_positions_as_tensor_and_unsorted():
    x = make_inputs(1, 20, 2, 2, 4, 4)
    ref, _ = naive_longformer_attention(*x, 3, (2, 11))
    for G in ((11, 2), torch.tensor([11, 2]), [2, 11]):
        o, _ = chunk5(*x, 3, G)
        assert_close(ref, o, RTOL)


# ---------------------------------------------------------------- 2. chunk == naive


@pytest.mark.parametrize("n_seen", [None, 3, 21])
@pytest.mark.parametrize("G", GLOBALS, ids=_ids)
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, window, G, n_seen):
    B, T, _, Hk, D, Dv = shape
    x = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, window, G, Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_longformer_attention(*x, window, G, initial_state=state,
                                              output_final_state=True)
    o, s = chunk5(*x, window, G, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)
    assert int(s[6]) == (n_seen or 0) + T
    assert all(torch.isfinite(t).all() for t in s[:6])  # unwritten rows are zeros


@pytest.mark.parametrize("G", [(), (0,), (0, 5, 17), (28,)], ids=_ids)
@pytest.mark.parametrize("window", WINDOWS)
def test_bidirectional_chunk_matches_naive(window, G):
    x = make_inputs(*SHAPES[1])
    o_ref, _ = naive_longformer_attention(*x, window, G, causal=False, scale=0.4)
    o, _ = chunk5(*x, window, G, causal=False, scale=0.4)
    assert_close(o_ref, o, RTOL)


@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunk_sizes(chunk_size):
    x = make_inputs(2, 30, 4, 2, 8, 6)
    state = make_state(2, 6, (1, 12), 2, 8, 6, n_seen=4)
    o_ref, _ = naive_longformer_attention(*x, 6, (1, 12), initial_state=state)
    o, _ = chunk_longformer_attention(*x, 6, (1, 12), initial_state=state, chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- 3. decode and state carry


@pytest.mark.parametrize("n_seen", [None, 3, 21])
@pytest.mark.parametrize("G", GLOBALS, ids=_ids)
@pytest.mark.parametrize("window", [1, 4])
def test_recurrent_matches_naive(window, G, n_seen):
    shape = SHAPES[1]
    B, _, _, Hk, D, Dv = shape
    x = make_inputs(*shape)
    state = None if n_seen is None else make_state(B, window, G, Hk, D, Dv, n_seen)
    o_ref, s_ref = naive_longformer_attention(*x, window, G, initial_state=state,
                                              output_final_state=True)
    o, s = recurrent_longformer_attention(*x, window, G, initial_state=state,
                                          output_final_state=True)
    assert_close(o_ref, o, RTOL)
    assert_states_close(s_ref, s, RTOL)


def test_step_from_empty_state_and_bounded_memory():
    """Token-by-token decode == naive; the state is window + |G| + max(G) + 1 rows throughout."""
    x = make_inputs(2, 30, 4, 1, 8, 6)
    w, G = 4, (0, 9)
    o_ref, s_ref = naive_longformer_attention(*x, w, G, output_final_state=True)
    state, outs = None, []
    for t in range(30):
        o_t, state = longformer_attention_step(*(y[:, t] for y in x), state, w, G)
        assert [s.shape[1] for s in state[:6]] == [4, 4, 2, 2, 10, 10]
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


@pytest.mark.parametrize("splits", [(1,), (5, 6), (3, 11, 30)])
@pytest.mark.parametrize(
    "fn", [chunk5, recurrent_longformer_attention, naive_longformer_attention],
    ids=["chunk", "recurrent", "naive"],
)
@pytest.mark.parametrize("window", [1, 6])
def test_split_carries_state(window, fn, splits):
    G = (0, 5, 12, 31)
    x = make_inputs(2, 37, 4, 2, 8, 6)
    state = make_state(2, window, G, 2, 8, 6, n_seen=2)
    o_ref, s_ref = naive_longformer_attention(*x, window, G, initial_state=state,
                                              output_final_state=True)
    outs = []
    for a, b in itertools.pairwise([0, *splits, 37]):
        o, state = fn(*(y[:, a:b] for y in x), window, G, initial_state=state,
                      output_final_state=True)
        outs.append(o)
    assert_close(o_ref, torch.cat(outs, 1), RTOL)
    assert_states_close(s_ref, state, RTOL)


# ---------------------------------------------------------------- 4. gradients

def _grads(loss, inputs):
    """Gradients, zeros for an unused input (q_g is unused where a call has no global query)."""
    return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)


NAMES = ["dq", "dk", "dv", "dq_g", "dk_g", "dv_g", "dk_buf", "dv_buf", "dgk", "dgv", "dpk", "dpv"]


def _check_grads(fn, x, state, window, G, **kw):
    inputs = list(x) + ([] if state is None else list(state[:6]))
    o_ref, s_ref = naive_longformer_attention(*x, window, G, initial_state=state,
                                              output_final_state=state is not None, **kw)
    outs_ref = [o_ref] + ([] if s_ref is None else list(s_ref[:6]))
    cot = random_like_outputs(outs_ref)
    g_ref = _grads(loss_from(outs_ref, cot), inputs)
    o, s = fn(*x, window, G, initial_state=state, output_final_state=state is not None, **kw)
    g = _grads(loss_from([o] + ([] if s is None else list(s[:6])), cot), inputs)
    for name, r, y in zip(NAMES, g_ref, g):
        if r.numel() == 0:  # no global positions: empty gk, pk
            assert y.numel() == 0, name
        elif r.abs().max() == 0:  # e.g. dq_g without global queries in the call
            assert y.abs().max() <= 1e-12, name
        else:
            assert_close(r, y, RTOL, name)


@pytest.mark.parametrize("n_seen", [None, 3, 21])
@pytest.mark.parametrize("G", [(), (0, 5, 17), (3, 40)], ids=_ids)
@pytest.mark.parametrize("window", [1, 4])
def test_chunk_grads_match_naive(window, G, n_seen):
    B, _, _, Hk, D, Dv = SHAPES[1]
    x = make_inputs(*SHAPES[1], requires_grad=True)
    state = None if n_seen is None else make_state(B, window, G, Hk, D, Dv, n_seen,
                                                   requires_grad=True)
    _check_grads(chunk5, x, state, window, G)


@pytest.mark.parametrize("G", [(), (0, 5, 17)], ids=_ids)
def test_bidirectional_grads_match_naive(G):
    x = make_inputs(*SHAPES[2], requires_grad=True)
    _check_grads(chunk5, x, None, 4, G, causal=False)


def test_recurrent_grads_match_naive():
    x = make_inputs(2, 15, 4, 2, 8, 6, requires_grad=True)
    state = make_state(2, 4, (1, 9), 2, 8, 6, 3, requires_grad=True)
    _check_grads(recurrent_longformer_attention, x, state, 4, (1, 9))


# ---------------------------------------------------------------- 5. precision and long inputs

LOW_PRECISION = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


@pytest.mark.parametrize("dtype,tol", LOW_PRECISION, ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "fn", [naive_longformer_attention, chunk5, recurrent_longformer_attention],
    ids=["naive", "chunk", "recurrent"],
)
def test_low_precision_forward(fn, dtype, tol):
    shape, w, G = (2, 40, 4, 2, 16, 8), 6, (0, 9, 20)
    x = make_inputs(*shape)
    o_ref, _ = naive_longformer_attention(*x, w, G, initial_state=make_state(2, w, G, 2, 16, 8, 5))
    o, _ = fn(*make_inputs(*shape, dtype=dtype), w, G,
              initial_state=make_state(2, w, G, 2, 16, 8, 5, dtype=dtype))
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


def test_long_sequence_finite_and_subquadratic():
    """T = 2^16: finite; fwd+bwd at T = 16384 far below one T x T matrix."""
    T, w, G = 2**16, 64, (0, 100)
    x = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32)
    o, _ = chunk_longformer_attention(*x, w, G, chunk_size=1024)
    assert torch.isfinite(o).all()

    T = 16384
    x = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_longformer_attention(*x, w, G, chunk_size=512)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert all(torch.isfinite(t.grad).all() for t in x)


# ---------------------------------------------------------------- 6. bad input


def test_errors():
    x = make_inputs(1, 8, 4, 2, 8, 6)
    q = x[0]
    good = make_state(1, 5, (0, 3), 2, 8, 6, n_seen=2)
    for fn in (naive_longformer_attention, chunk_longformer_attention,
               recurrent_longformer_attention):
        with pytest.raises(ValueError, match="q must have 4 dims"):
            fn(q[0], *x[1:], 5, (0,))
        with pytest.raises(ValueError, match="q_g \\(global projection\\) must match q"):
            fn(*x[:3], x[3][..., :4], x[4][..., :4], x[5], 5, (0,))
        for bad in (0, -1, 2.5):
            with pytest.raises(ValueError, match="window must be a positive integer"):
                fn(*x, bad, (0,))
        with pytest.raises(ValueError, match=r"must be >= 0; got negative positions \[-3, -1\]"):
            fn(*x, 5, (0, -1, -3))
        with pytest.raises(ValueError, match=r"must be distinct; \[2\] appear more than once"):
            fn(*x, 5, (2, 2))
        with pytest.raises(ValueError, match="global_positions must be a tuple of ints"):
            fn(*x, 5, (0.5,))
        with pytest.raises(ValueError, match="1-D integer tensor"):
            fn(*x, 5, torch.tensor([0.0, 2.0]))
        with pytest.raises(ValueError, match="k_buf holds 5 rows but window = 4"):
            fn(*x, 4, (0, 3), initial_state=good)
        with pytest.raises(ValueError, match=r"gk holds 2 rows but len\(global_positions\) = 1"):
            fn(*x, 5, (3,), initial_state=good)
        with pytest.raises(ValueError, match=r"pk holds 4 rows but max\(global_positions\) \+ 1 = 5"):
            fn(*x, 5, (0, 4), initial_state=good)
        with pytest.raises(TypeError, match="n_seen must be an int64 0-dim tensor"):
            fn(*x, 5, (0, 3), initial_state=(*good[:6], 2))
        with pytest.raises(TypeError, match="state must be a tuple"):
            fn(*x, 5, (0, 3), initial_state=good[:3])
    for fn in (naive_longformer_attention, chunk_longformer_attention):
        with pytest.raises(ValueError, match=r"global_positions \[8, 12\] are out of range for a "
                                             r"sequence of length T=8"):
            fn(*x, 5, (0, 8, 12), causal=False)
        with pytest.raises(ValueError, match="causal=False \\(bidirectional\\) has no decode"):
            fn(*x, 5, (0, 3), causal=False, initial_state=good)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_longformer_attention(*x, 5, (0,), chunk_size=0)
    with pytest.raises(ValueError, match="for one decode step must be"):
        longformer_attention_step(q, *(y[:, 0] for y in x[1:]), None, 5, (0,))
    with pytest.raises(ValueError, match="k_buf holds 5 rows but window = 6"):
        longformer_attention_step(*(y[:, 0] for y in x), good, 6, (0, 3))
