"""Nystromformer attention (bidirectional): the iterative pseudo-inverse on its own, segment-mean
landmarks, m == T equals exact softmax attention, the chunked form against the naive definition
in float64 (forward and gradients, exact and iterative pinv), precision, long inputs, errors."""

from __future__ import annotations

import pytest
import torch

from longctx.bench.memory import peak_memory_bytes
from longctx.ops.nystromformer import (
    chunk_nystrom_attention,
    iterative_pinv,
    naive_nystrom_attention,
    nystrom_pinv,
)
from longctx.ops.nystromformer.landmarks import segment_length, segment_means
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs, rel_err

F64 = torch.float64
RTOL = 1e-9
RTOL_EXACT_PINV_GRAD = 1e-8  # pinv's backward amplifies rounding by cond(landmark kernel) ~ 1e5

SHAPES = [  # B, T, H, Hk, D, Dv, m
    (2, 1, 2, 2, 8, 8, 4),  # T < m: one landmark per token
    (2, 37, 4, 2, 8, 6, 5),  # GQA 2:1, m does not divide T
    (1, 64, 2, 1, 16, 16, 8),  # MQA, m divides T
    (1, 50, 2, 2, 8, 12, 16),  # l = 4, m_eff = 13
]


def make_inputs(B, T, H, Hk, D, Dv, dtype=F64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=F64).to(dtype).requires_grad_(requires_grad)

    return rnd(B, T, H, D), rnd(B, T, Hk, D), rnd(B, T, Hk, Dv)


def full_attention(q, k, v, scale=None):
    """Exact bidirectional softmax attention (no mask), GQA by repeating k, v."""
    G = q.shape[2] // k.shape[2]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k, v = k.repeat_interleave(G, dim=2), v.repeat_interleave(G, dim=2)
    p = torch.softmax(scale * torch.einsum("bthd,bshd->bhts", q, k), dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def landmark_kernel(B, H, T, D, m, seed=0):
    """softmax(Q~ K~^T / sqrt(D)) from random q, k: the matrix the method inverts, [B, H, m, m]."""
    q, k, _ = make_inputs(B, T, H, H, D, 1, seed=seed)
    q_l, k_l = segment_means(q, m), segment_means(k, m)
    return torch.softmax(torch.einsum("bihd,bjhd->bhij", q_l, k_l) * D**-0.5, dim=-1)


def _ids(shape):
    return "B{}-T{}-H{}-Hk{}-D{}-Dv{}-m{}".format(*shape)


# ---------------------------------------------------------------- the iterative pseudo-inverse


@pytest.mark.parametrize("m", [4, 16, 64])
def test_pinv_converges_on_well_conditioned_softmax(m):
    """Diagonally dominant softmax matrices (condition number < 2): 6 iterations give the pinv."""
    g = torch.Generator().manual_seed(m)
    x = torch.randn(6, m, 16, generator=g, dtype=F64)
    x = 3 * x / x.norm(dim=-1, keepdim=True)
    A = torch.softmax(x @ x.mT, dim=-1)
    sv = torch.linalg.svdvals(A)
    assert (sv[:, 0] / sv[:, -1]).max() < 2
    assert_close(torch.linalg.pinv(A), iterative_pinv(A, 6), 1e-12)


def test_pinv_rectangular_and_singular():
    """Rectangular full-rank matrices: 30 iterations give the Moore-Penrose inverse. A rank-one
    softmax matrix (all landmarks equal, e.g. a constant sequence): 6 iterations give its pinv.
    (Many iterations on an exactly singular matrix are unstable: README.md.)"""
    g = torch.Generator().manual_seed(0)
    A = torch.softmax(torch.randn(3, 5, 8, generator=g, dtype=F64), dim=-1)  # [5, 8], rank 5
    assert_close(torch.linalg.pinv(A), iterative_pinv(A, 30), 1e-10)
    ones = torch.full((2, 6, 6), 1 / 6, dtype=F64)  # softmax of equal scores
    assert_close(torch.linalg.pinv(ones), iterative_pinv(ones, 6), 1e-12)
    assert (iterative_pinv(torch.zeros(2, 3, 3, dtype=F64), 6) == 0).all()  # pinv(0) = 0


def test_pinv_is_the_stated_spectral_filter():
    """Z_n = V diag((1 - r_n) / sigma) U^T with r_{j+1} = r_j^3 (3 + r_j) / 4 and
    r_0 = 1 - sigma^2 / (||A||_1 ||A||_inf): checked on the ill-conditioned landmark kernels."""
    A = landmark_kernel(2, 2, 96, 16, 12)
    U, S, Vh = torch.linalg.svd(A)
    c = A.abs().sum(-2).amax(-1) * A.abs().sum(-1).amax(-1)  # [B, H]
    r = 1 - S**2 / c[..., None]
    for n in range(1, 7):
        r = r**3 * (3 + r) / 4
        predicted = Vh.mT @ torch.diag_embed((1 - r) / S) @ U.mT
        assert_close(predicted, iterative_pinv(A, n), 1e-9, f"n={n}")


@pytest.mark.parametrize("D,m,T", [(16, 8, 64), (16, 32, 512), (64, 64, 1024)])
def test_pinv_on_landmark_kernels(D, m, T):
    """On the kernels the method produces (condition numbers 1e3..1e7): after 6 iterations Z is a
    generalised inverse to ||A Z A - A|| / ||A|| <= 0.1 (measured 0.02..0.05); 30 iterations
    reach torch.linalg.pinv to 1e-8."""
    A = landmark_kernel(1, 2, T, D, m)
    Z6 = iterative_pinv(A, 6)
    assert rel_err(A, A @ Z6 @ A) <= 0.1
    assert_close(torch.linalg.pinv(A), iterative_pinv(A, 30), 1e-8)


def test_pinv_half_precision_runs_in_float32():
    A = landmark_kernel(1, 2, 32, 8, 4).to(torch.bfloat16)
    for it in (None, 6):
        Z = nystrom_pinv(A, it)
        assert Z.dtype == torch.bfloat16 and torch.isfinite(Z).all()


# ---------------------------------------------------------------- landmarks


@pytest.mark.parametrize("T,m", [(12, 4), (11, 4), (5, 4), (65, 64), (3, 8), (7, 1)])
def test_segment_means(T, m):
    """Means of consecutive segments of l = ceil(T / m) real tokens; padding counts in no mean."""
    x = torch.randn(2, T, 3, 4, dtype=F64)
    seg, m_eff = segment_length(T, m)
    lm = segment_means(x, m)
    assert lm.shape == (2, m_eff, 3, 4) and m_eff <= m
    for j in range(m_eff):
        torch.testing.assert_close(lm[:, j], x[:, j * seg:(j + 1) * seg].mean(dim=1))
    if T % m == 0:  # the paper's segment-means
        torch.testing.assert_close(lm, x.reshape(2, m, T // m, 3, 4).mean(dim=2))
    if m >= T:
        assert torch.equal(lm, x)


# ---------------------------------------------------------------- forward


@pytest.mark.parametrize("T", [1, 6, 13])
@pytest.mark.parametrize("fn", [naive_nystrom_attention, chunk_nystrom_attention],
                         ids=["naive", "chunk"])
def test_m_equal_T_is_exact_attention(fn, T):
    """One landmark per token (m == T, or m > T) with the exact pinv: S S^+ S = S."""
    q, k, v = make_inputs(2, T, 4, 2, 8, 6)
    ref = full_attention(q, k, v)
    for m in (T, T + 3):
        o, _ = fn(q, k, v, m, pinv_iterations=None)
        assert_close(ref, o, RTOL)


@pytest.mark.parametrize("pinv_iterations", [None, 6, 30])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_matches_naive(shape, pinv_iterations):
    q, k, v = make_inputs(*shape[:6])
    m = shape[6]
    o_ref, s_ref = naive_nystrom_attention(q, k, v, m, scale=0.4, pinv_iterations=pinv_iterations)
    o, s = chunk_nystrom_attention(q, k, v, m, scale=0.4, pinv_iterations=pinv_iterations,
                                   chunk_size=7)
    assert_close(o_ref, o, RTOL)
    assert s is None and s_ref is None


def test_chunk_many_iterations_matches_naive_exact_pinv():
    """chunk with 30 iterations == naive with torch.linalg.pinv (float64)."""
    for shape in SHAPES[1:]:
        q, k, v = make_inputs(*shape[:6])
        o_ref, _ = naive_nystrom_attention(q, k, v, shape[6], pinv_iterations=None)
        o, _ = chunk_nystrom_attention(q, k, v, shape[6], pinv_iterations=30, chunk_size=16)
        assert_close(o_ref, o, 1e-9)


def test_naive_matches_explicit_loop():
    """The reference against the paper's three kernels written per batch row and head."""
    B, T, H, Hk, D, Dv, m = 2, 10, 4, 2, 5, 3, 5
    q, k, v = make_inputs(B, T, H, Hk, D, Dv)
    o, _ = naive_nystrom_attention(q, k, v, m)
    s, seg = D**-0.5, T // m
    for b in range(B):
        for h in range(H):
            j = h // (H // Hk)
            Q, K, V = q[b, :, h], k[b, :, j], v[b, :, j]
            Qt = torch.stack([Q[i * seg:(i + 1) * seg].mean(0) for i in range(m)])  # [m, D]
            Kt = torch.stack([K[i * seg:(i + 1) * seg].mean(0) for i in range(m)])
            A_pinv = torch.linalg.pinv(torch.softmax(s * Qt @ Kt.T, -1))
            S_hat = torch.softmax(s * Q @ Kt.T, -1) @ A_pinv @ torch.softmax(s * Qt @ K.T, -1)
            torch.testing.assert_close(o[b, :, h], S_hat @ V, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_chunk_sizes(chunk_size):
    q, k, v = make_inputs(2, 23, 2, 2, 8, 8)
    o_ref, _ = naive_nystrom_attention(q, k, v, 6, pinv_iterations=6)
    o, _ = chunk_nystrom_attention(q, k, v, 6, chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("pinv_iterations", [None, 6])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_chunk_grads_match_naive(shape, pinv_iterations):
    inputs = make_inputs(*shape[:6], requires_grad=True)
    m = shape[6]
    o_ref, _ = naive_nystrom_attention(*inputs, m, pinv_iterations=pinv_iterations)
    cot = random_like_outputs([o_ref])
    g_ref = grads_of(loss_from([o_ref], cot), inputs)
    o, _ = chunk_nystrom_attention(*inputs, m, pinv_iterations=pinv_iterations, chunk_size=7)
    g = grads_of(loss_from([o], cot), inputs)
    tol = RTOL if pinv_iterations is not None else RTOL_EXACT_PINV_GRAD
    for name, r, x in zip(["dq", "dk", "dv"], g_ref, g):
        assert_close(r, x, tol, name)


@pytest.mark.parametrize("pinv_iterations", [None, 2])
def test_naive_gradcheck(pinv_iterations):
    """The reference's autograd (incl. torch.linalg.pinv's backward) against finite differences."""
    inputs = make_inputs(1, 6, 2, 1, 3, 2, requires_grad=True)
    fn = lambda q, k, v: naive_nystrom_attention(q, k, v, 3, pinv_iterations=pinv_iterations)[0]
    assert torch.autograd.gradcheck(fn, inputs)


# ---------------------------------------------------------------- bidirectional


@pytest.mark.parametrize("fn", [naive_nystrom_attention, chunk_nystrom_attention],
                         ids=["naive", "chunk"])
def test_every_output_depends_on_the_last_token(fn):
    q, k, v = make_inputs(1, 12, 2, 2, 8, 8, requires_grad=True)
    o, _ = fn(q, k, v, 4, pinv_iterations=6)
    for t in range(12):
        dq, dk, dv = torch.autograd.grad(o[:, t].sum(), [q, k, v], retain_graph=True)
        assert dq[:, -1].abs().max() > 0 and dk[:, -1].abs().max() > 0, t  # through the landmarks
        assert dv[:, -1].abs().max() > 0, t


# ---------------------------------------------------------------- precision and long inputs


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("fn", [naive_nystrom_attention, chunk_nystrom_attention],
                         ids=["naive", "chunk"])
def test_low_precision_forward(fn, dtype, tol):
    """Against the float64 result of the same 6-iteration approximation (measured fp32 ~6e-7,
    bf16 ~4e-3)."""
    shape = (2, 70, 4, 2, 16, 8)
    o_ref, _ = naive_nystrom_attention(*make_inputs(*shape), 8, pinv_iterations=6)
    o, _ = fn(*make_inputs(*shape, dtype=dtype), 8, pinv_iterations=6)
    assert o.dtype == dtype
    assert_close(o_ref, o, tol)


def test_long_sequence_finite_and_linear_memory():
    """T = 2^16: finite; fwd+bwd at T = 8192 uses far less than one T x T matrix."""
    T = 2**16
    q, k, v = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32)
    o, _ = chunk_nystrom_attention(q, k, v, 64, chunk_size=4096)
    assert torch.isfinite(o).all()

    T = 8192
    inputs = make_inputs(1, T, 1, 1, 16, 16, dtype=torch.float32, requires_grad=True)

    def fwd_bwd():
        o, _ = chunk_nystrom_attention(*inputs, 32, chunk_size=1024)
        o.backward(torch.ones_like(o))

    peak = peak_memory_bytes(fwd_bwd)
    assert peak < T * T * 4 / 8, f"peak {peak / 2**20:.1f} MiB"
    assert torch.isfinite(inputs[0].grad).all()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("fn", [naive_nystrom_attention, chunk_nystrom_attention],
                         ids=["naive", "chunk"])
def test_errors(fn):
    q, k, v = make_inputs(1, 8, 4, 2, 8, 6)
    with pytest.raises(ValueError, match="q must have 4 dims"):
        fn(q[0], k, v, 4)
    with pytest.raises(ValueError, match="head dims differ"):
        fn(q, k[..., :4], v, 4)
    with pytest.raises(ValueError, match="share batch and length"):
        fn(q, k[:, :5], v[:, :5], 4)
    with pytest.raises(ValueError, match=r"multiple of key/value heads \(3\)"):
        fn(q, torch.cat([k, k[:, :, :1]], 2), torch.cat([v, v[:, :, :1]], 2), 4)
    for bad in (0, -2, 2.5, True, None):
        with pytest.raises(ValueError, match="num_landmarks must be a positive integer"):
            fn(q, k, v, bad)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="pinv_iterations must be a positive integer"):
            fn(q, k, v, 4, pinv_iterations=bad)
    with pytest.raises(TypeError):
        fn(q, k, v, 4, initial_state=None)  # no state: bidirectional op


def test_chunk_size_and_pinv_errors():
    q, k, v = make_inputs(1, 8, 2, 2, 8, 6)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
            chunk_nystrom_attention(q, k, v, 4, chunk_size=bad)
    with pytest.raises(ValueError, match="pinv_iterations must be a positive integer"):
        iterative_pinv(torch.eye(3, dtype=F64), 0)
    with pytest.raises(ValueError, match=r"A must be a \[\.\.\., p, q\] matrix"):
        iterative_pinv(torch.ones(3, dtype=F64), 6)
