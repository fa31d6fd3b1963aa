"""Bidirectional (``causal=False``) linear attention and retention: chunk == naive (float64,
outputs and gradients), the definition checked term by term, and no state."""

from __future__ import annotations

import pytest
import torch

from longctx.ops.linear_attention import chunk_linear_attention, naive_linear_attention
from longctx.ops.retention import chunk_retention, naive_retention
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, random_qkv

F64 = torch.float64
B, H, DK, DV = 2, 3, 6, 5
SHAPES = [(1, 4), (13, 4), (16, 16), (37, 8)]  # (T, chunk_size)
LA_OPTS = [{"feature_map": "elu+1", "normalize": True}, {"feature_map": "taylor", "normalize": True},
           {"feature_map": "relu", "normalize": False}, {"feature_map": "identity", "normalize": False}]


def log_decay(kind: str) -> torch.Tensor | None:
    if kind == "retnet":
        return None
    if kind == "zero":
        return torch.zeros(H, dtype=F64)
    return torch.log(torch.linspace(0.3, 0.95, H, dtype=F64))


def _check_fwd_bwd(naive, chunk, T: int) -> None:
    q, k, v = (t.requires_grad_() for t in random_qkv(B, T, H, DK, DV, F64))
    ref, out = naive(q, k, v), chunk(q, k, v)
    assert_close(ref, out, 1e-10, "bidirectional chunk vs naive")
    cot = random_like_outputs([ref])
    for name, g_ref, g_out in zip("qkv", grads_of(loss_from([ref], cot), [q, k, v]),
                                  grads_of(loss_from([out], cot), [q, k, v])):
        assert_close(g_ref, g_out, 1e-7, f"d{name}")  # T=1: dq is ~eps, cancellation


@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("opts", LA_OPTS, ids=lambda o: f"{o['feature_map']}-{o['normalize']}")
def test_linear_attention_chunk_matches_naive(T: int, chunk_size: int, opts: dict) -> None:
    _check_fwd_bwd(lambda q, k, v: naive_linear_attention(q, k, v, causal=False, **opts)[0],
                   lambda q, k, v: chunk_linear_attention(q, k, v, causal=False,
                                                          chunk_size=chunk_size, **opts)[0], T)


@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("decay", ["retnet", "random", "zero"])
def test_retention_chunk_matches_naive(T: int, chunk_size: int, decay: str) -> None:
    b = log_decay(decay)
    _check_fwd_bwd(lambda q, k, v: naive_retention(q, k, v, log_decay=b, causal=False)[0],
                   lambda q, k, v: chunk_retention(q, k, v, log_decay=b, causal=False,
                                                   chunk_size=chunk_size)[0], T)


def test_retention_definition_term_by_term() -> None:
    """o_n = sum_m gamma^|n-m| (q_n . k_m) v_m * scale, written as a double loop."""
    T = 7
    q, k, v = random_qkv(1, T, H, DK, DV, F64)
    b = log_decay("random")
    o = naive_retention(q, k, v, log_decay=b, causal=False)[0]
    ref = torch.zeros_like(o)
    for n in range(T):
        for m in range(T):
            w = torch.exp(abs(n - m) * b)[:, None] * (q[0, n] * k[0, m]).sum(-1, keepdim=True)
            ref[0, n] += w * DK**-0.5 * v[0, m]
    assert_close(ref, o, 1e-12, "symmetric-decay retention")


def test_linear_attention_every_query_reads_the_whole_sequence() -> None:
    q, k, v = random_qkv(B, 9, H, DK, DV, F64)
    o = chunk_linear_attention(q, k, v, causal=False, chunk_size=4)[0]
    v2 = v.clone()
    v2[:, -1] += 1.0
    o2 = chunk_linear_attention(q, k, v2, causal=False, chunk_size=4)[0]
    assert (o[:, 0] - o2[:, 0]).abs().max() > 1e-6  # the first query sees the last value


@pytest.mark.parametrize("op", ["linear_attention", "retention"])
def test_last_position_equals_causal(op: str) -> None:
    """The last query sees the same keys either way (for retention: the same decays too)."""
    q, k, v = random_qkv(B, 11, H, DK, DV, F64)
    fn = chunk_linear_attention if op == "linear_attention" else chunk_retention
    bi = fn(q, k, v, causal=False, chunk_size=4)[0]
    ca = fn(q, k, v, chunk_size=4)[0]
    assert_close(ca[:, -1], bi[:, -1], 1e-12, "last position")
    assert (ca[:, 0] - bi[:, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("fn", [naive_linear_attention, chunk_linear_attention,
                                naive_retention, chunk_retention])
def test_bidirectional_has_no_state(fn) -> None:
    q, k, v = random_qkv(B, 5, H, DK, DV, F64)
    with pytest.raises(ValueError, match="causal=False .* has no decode state"):
        fn(q, k, v, causal=False, output_final_state=True)
    with pytest.raises(TypeError, match="causal must be True or False"):
        fn(q, k, v, causal="no")
