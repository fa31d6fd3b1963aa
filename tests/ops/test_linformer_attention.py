"""Linformer attention (bidirectional): the chunked form against the naive definition in float64,
an explicit per-head loop, prefix columns == zero-padding to max_len, gradients w.r.t. q, k, v, E,
F, bidirectionality, precision, long inputs and argument errors."""

from __future__ import annotations

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.linformer_attention import chunk_linformer_attention, naive_linformer_attention
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs

F64 = torch.float64
RTOL = 1e-9

SHAPES = [  # B, T, H, Hk, D, Dv, k, max_len
    (2, 1, 2, 2, 8, 8, 4, 1),
    (1, 37, 4, 2, 16, 8, 5, 40),  # GQA 2:1, Dv < D, T < max_len
    (2, 63, 4, 1, 8, 12, 16, 63),  # MQA, Dv > D, T == max_len
    (1, 30, 2, 2, 8, 8, 45, 50),  # k > T
]


def make_inputs(B, T, H, Hk, D, Dv, kp, max_len, per_head=False, dtype=F64, requires_grad=False,
                seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=1.0):
        x = torch.randn(*shape, generator=g, dtype=F64) * s
        return x.to(dtype).requires_grad_(requires_grad)

    lead = (Hk,) if per_head else ()
    proj_scale = max_len**-0.5  # E K has rows of the keys' size
    return (rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv),
            rnd(*lead, kp, max_len, s=proj_scale), rnd(*lead, kp, max_len, s=proj_scale))


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}-k{}-L{}".format(*shape)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per-head"])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, chunk_size, per_head):
    q, k, v, E, F = make_inputs(*shape, per_head=per_head)
    o_ref, s_ref = naive_linformer_attention(q, k, v, E, F, scale=0.3)
    o, s = chunk_linformer_attention(q, k, v, E, F, scale=0.3, chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)
    assert s is None and s_ref is None
    assert o.shape == (shape[0], shape[1], shape[2], shape[5])


@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per-head"])
def test_naive_matches_explicit_loop(per_head):
    """Per batch row and query head: K' = E[:, :T] K, V' = F[:, :T] V,
    o = softmax(q K'^T / sqrt(D)) V'."""
    B, T, H, Hk, D, Dv, kp, L = 2, 9, 4, 2, 5, 3, 4, 12
    q, k, v, E, F = make_inputs(B, T, H, Hk, D, Dv, kp, L, per_head=per_head)
    o, _ = naive_linformer_attention(q, k, v, E, F)
    for b in range(B):
        for h in range(H):
            j = h // (H // Hk)
            Eh, Fh = (E[j], F[j]) if per_head else (E, F)
            k_proj, v_proj = Eh[:, :T] @ k[b, :, j], Fh[:, :T] @ v[b, :, j]  # [kp, D], [kp, Dv]
            p = torch.softmax(q[b, :, h] @ k_proj.T * D**-0.5, dim=-1)  # [T, kp]
            torch.testing.assert_close(o[b, :, h], p @ v_proj, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn", [naive_linformer_attention, chunk_linformer_attention],
                         ids=["naive", "chunk"])
def test_prefix_columns_equal_zero_padding(fn):
    """T < max_len uses E[:, :T]: the same as zero-padding the sequence to max_len (queries of the
    padded tail are dropped; they do not change the other outputs)."""
    B, T, H, Hk, D, Dv, kp, L = 2, 11, 2, 1, 8, 6, 5, 20
    q, k, v, E, F = make_inputs(B, T, H, Hk, D, Dv, kp, L, per_head=True)
    o, _ = fn(q, k, v, E, F)
    pad = lambda x: torch.cat([x, x.new_zeros(B, L - T, *x.shape[2:])], dim=1)
    o_pad, _ = fn(pad(q), pad(k), pad(v), E, F)
    assert_close(o_pad[:, :T], o, RTOL)


def test_kv_sharing_is_one_tensor_twice():
    q, k, v, E, _ = make_inputs(1, 20, 2, 2, 8, 8, 6, 24, requires_grad=True)
    o, _ = chunk_linformer_attention(q, k, v, E, E, chunk_size=8)
    o_ref, _ = naive_linformer_attention(q, k, v, E, E.detach().clone())
    assert_close(o_ref, o, RTOL)
    (dE,) = grads_of(o.sum(), [E])
    assert torch.isfinite(dE).all() and dE.abs().max() > 0


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("per_head", [False, True], ids=["shared", "per-head"])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=_ids)
def test_chunk_grads_match_naive(shape, per_head):
    inputs = make_inputs(*shape, per_head=per_head, requires_grad=True)
    o_ref, _ = naive_linformer_attention(*inputs)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    o, _ = chunk_linformer_attention(*inputs, chunk_size=7)
    g = grads_of(loss_from([o], cot), inputs)
    for name, r, x in zip(["dq", "dk", "dv", "dE", "dF"], g_ref, g):
        assert_close(r, x, RTOL, name)
    T = shape[1]
    assert (g[3][..., T:] == 0).all() and (g[4][..., T:] == 0).all()  # unused columns: no gradient
    assert (g[3][..., :T] != 0).any()


def test_naive_gradcheck():
    """The reference's autograd against finite differences (small float64 case)."""
    inputs = make_inputs(1, 5, 2, 1, 3, 2, 3, 7, per_head=True, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: naive_linformer_attention(*a)[0], inputs)


# ---------------------------------------------------------------- bidirectional


@pytest.mark.parametrize("fn", [naive_linformer_attention, chunk_linformer_attention],
                         ids=["naive", "chunk"])
def test_every_output_depends_on_the_last_token(fn):
    q, k, v, E, F = make_inputs(1, 12, 2, 2, 8, 8, 4, 12)
    k, v = k.requires_grad_(), v.requires_grad_()
    o, _ = fn(q, k, v, E, F)
    for t in range(12):
        dk, dv = torch.autograd.grad(o[:, t].sum(), [k, v], retain_graph=True)
        assert dk[:, -1].abs().max() > 0 and dv[:, -1].abs().max() > 0, t


# ---------------------------------------------------------------- precision and long inputs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("fn", [naive_linformer_attention, chunk_linformer_attention],
                         ids=["naive", "chunk"])
def test_low_precision_forward(fn, dtype, tol):
    shape = (2, 70, 4, 2, 16, 8, 16, 80)
    o_ref, _ = naive_linformer_attention(*make_inputs(*shape))
    o, _ = fn(*make_inputs(*shape, dtype=dtype))
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


def test_long_sequence_finite_and_linear_memory():
    """T = 2^16: finite; fwd+bwd at T = 8192 uses far less than one T x T matrix."""
    T = 2**16
    q, k, v, E, F = make_inputs(1, T, 1, 1, 16, 16, 32, T, dtype=torch.float32)
    o, _ = chunk_linformer_attention(q, k, v, E, F, chunk_size=4096)
    assert torch.isfinite(o).all()

    T = 8192
    inputs = make_inputs(1, T, 1, 1, 16, 16, 32, T, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_linformer_attention(*inputs, chunk_size=1024)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(inputs[3].grad).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [naive_linformer_attention, chunk_linformer_attention],
                         ids=["naive", "chunk"])
def test_errors(fn):
    q, k, v, E, F = make_inputs(1, 8, 4, 2, 8, 6, 3, 10)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        fn(q[0], k, v, E, F)
    with pytest.raises(ValueError, match="head dims differ"):
        fn(q, k[..., :4], v, E, F)
    with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
        fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), E, F)
    with pytest.raises(ValueError, match=r"T=12 exceeds max_len=10"):
        q2, k2, v2, _, _ = make_inputs(1, 12, 4, 2, 8, 6, 3, 10)
        fn(q2, k2, v2, E, F)
    with pytest.raises(ValueError, match=r"E must be \[k, max_len\] .* or \[Hk, k, max_len\]"):
        fn(q, k, v, E[0], F)
    with pytest.raises(ValueError, match="F must be"):
        fn(q, k, v, E, F[None, None])
    with pytest.raises(ValueError, match="E and F must have the same shape"):
        fn(q, k, v, E, F[:2])
    with pytest.raises(ValueError, match=r"Hk=2 .*got shape \[3, 3, 10\]"):
        fn(q, k, v, E.expand(3, 3, 10), F.expand(3, 3, 10))
    with pytest.raises(ValueError, match="projected length k"):
        fn(q, k, v, E[:0], F[:0])
    with pytest.raises(TypeError, match="E must have q's dtype"):
        fn(q, k, v, E.float(), F)
    with pytest.raises(TypeError, match="F must be a torch.Tensor"):
        fn(q, k, v, E, F.tolist())
    with pytest.raises(TypeError):
        fn(q, k, v, E, F, initial_state=None)  # no state: bidirectional op


def test_chunk_size_error():
    q, k, v, E, F = make_inputs(1, 8, 2, 2, 8, 6, 3, 10)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            chunk_linformer_attention(q, k, v, E, F, chunk_size=bad)
