"""mamba selective scan: chunk == recurrent == naive (outputs, states, gradients), stability,
dtypes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.mamba import (
    chunk_selective_scan,
    naive_selective_scan,
    recurrent_selective_scan,
    selective_scan_step,
)
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs

F64 = torch.float64
B, DN, N = 2, 6, 4
NAMES = ("u", "dt", "A", "B", "C", "D", "h0")
# (T, chunk_size): chunk sizes that do not divide T; chunk 1 = a pure scan over chunks
SHAPES = [(1, 16), (37, 16), (63, 64), (130, 16), (130, 64), (100, 37), (20, 1)]
# dt scale: "mamba" = softplus of the layer's init (dt ~ 1e-3..1e-1), "unit" = dt ~ 1,
# "harsh" = dt*|A| ~ 8 per token (a chunk of 64 decays by ~e^-500)
DT_SCALES = {"mamba": 0.05, "unit": 1.0, "harsh": 8.0}


def make_inputs(T, dt_scale="unit", dtype=F64, b=B, dn=DN, n=N, groups=None):
    """u, dt, A, B, C, D (+ h0): A = -(n + 1) like the S4D-real init, times a random factor."""
    u = torch.randn(b, T, dn, dtype=F64)
    dt = F.softplus(torch.randn(b, T, dn, dtype=F64)) * DT_SCALES[dt_scale] / 2
    A = -torch.arange(1, n + 1, dtype=F64).repeat(dn, 1) * torch.rand(dn, n, dtype=F64).add(0.5) / n
    bc_shape = (b, T, n) if groups is None else (b, T, groups, n)
    Bm, Cm = torch.randn(bc_shape, dtype=F64), torch.randn(bc_shape, dtype=F64)
    D = torch.randn(dn, dtype=F64)
    return [x.to(dtype) for x in (u, dt, A, Bm, Cm, D)]


def make_state(dtype=F64, b=B, dn=DN, n=N):
    return torch.randn(b, dn, n, dtype=dtype)


def run(fn, inputs, h0=None, **extra):
    u, dt, A, Bm, Cm, D = inputs
    return fn(u, dt, A, Bm, Cm, D=D, initial_state=h0, output_final_state=True, **extra)


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("dt_scale", list(DT_SCALES))
def test_chunk_matches_naive(dt_scale, T, chunk_size, with_state):
    inputs = make_inputs(T, dt_scale)
    h0 = make_state() if with_state else None
    y_ref, h_ref = run(naive_selective_scan, inputs, h0)
    y, h = run(chunk_selective_scan, inputs, h0, chunk_size=chunk_size)
    assert_close(y_ref, y, 1e-9)
    assert_close(h_ref, h, 1e-9, "final_state")
    assert h.shape == (B, DN, N) and y.shape == (B, T, DN)


@pytest.mark.parametrize("groups", [1, 2, DN])
def test_grouped_B_C(groups):
    inputs = make_inputs(45, groups=groups)
    h0 = make_state()
    y_ref, h_ref = run(naive_selective_scan, inputs, h0)
    for fn, extra in ((chunk_selective_scan, {"chunk_size": 16}), (recurrent_selective_scan, {})):
        y, h = run(fn, inputs, h0, **extra)
        assert_close(y_ref, y, 1e-9, f"{fn.__name__} output")
        assert_close(h_ref, h, 1e-9, f"{fn.__name__} final_state")


def test_one_group_equals_shared_B_C():
    u, dt, A, Bm, Cm, D = make_inputs(20)
    shared = run(chunk_selective_scan, [u, dt, A, Bm, Cm, D], chunk_size=8)
    grouped = run(chunk_selective_scan, [u, dt, A, Bm[:, :, None], Cm[:, :, None], D], chunk_size=8)
    for ref, out in zip(shared, grouped):
        assert_close(ref, out, 1e-12)


def test_each_channel_own_group_is_independent_scans():
    """G = Dn: channel d is a one-channel scan with B[:, :, d], C[:, :, d]."""
    u, dt, A, Bm, Cm, D = make_inputs(30, groups=DN)
    y, h = run(chunk_selective_scan, [u, dt, A, Bm, Cm, D], chunk_size=8)
    for d in range(DN):
        one = [u[..., d:d + 1], dt[..., d:d + 1], A[d:d + 1], Bm[:, :, d], Cm[:, :, d], D[d:d + 1]]
        y_d, h_d = run(naive_selective_scan, one)
        assert_close(y_d, y[..., d:d + 1], 1e-9, f"channel {d}")
        assert_close(h_d, h[:, d:d + 1], 1e-9, f"state of channel {d}")


def test_without_D_and_with_D_zero():
    u, dt, A, Bm, Cm, D = make_inputs(25)
    for fn in (naive_selective_scan, chunk_selective_scan, recurrent_selective_scan):
        y_none, _ = fn(u, dt, A, Bm, Cm)
        y_zero, _ = fn(u, dt, A, Bm, Cm, D=torch.zeros_like(D))
        y_D, _ = fn(u, dt, A, Bm, Cm, D=D)
        assert_close(y_zero, y_none, 1e-12, f"{fn.__name__}: D=None")
        assert_close(y_none + D * u, y_D, 1e-12, f"{fn.__name__}: D u skip")


def test_no_final_state_unless_asked():
    u, dt, A, Bm, Cm, D = make_inputs(10)
    for fn in (naive_selective_scan, chunk_selective_scan, recurrent_selective_scan):
        assert fn(u, dt, A, Bm, Cm, D=D)[1] is None


def test_empty_sequence_keeps_state():
    inputs = make_inputs(0)
    h0 = make_state()
    for fn in (naive_selective_scan, chunk_selective_scan, recurrent_selective_scan):
        y, h = run(fn, inputs, h0)
        assert y.shape == (B, 0, DN)
        assert_close(h0, h, 0.0, "final_state")
        _, h = run(fn, inputs)
        assert torch.equal(h, torch.zeros(B, DN, N, dtype=F64))


def test_inputs_are_not_modified():
    inputs = make_inputs(20)
    h0 = make_state()
    copies = [x.clone() for x in [*inputs, h0]]
    for chunk_size in (1, 8):
        y, h = run(chunk_selective_scan, [x.requires_grad_() for x in inputs], h0.requires_grad_(),
                   chunk_size=chunk_size)
        (y.sum() + h.sum()).backward()
    for name, before, after in zip(NAMES, copies, [*inputs, h0]):
        assert torch.equal(before, after.detach()), name


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("dt_scale", list(DT_SCALES))
def test_recurrent_matches_naive(dt_scale, T):
    inputs = make_inputs(T, dt_scale)
    h0 = make_state()
    y_ref, h_ref = run(naive_selective_scan, inputs, h0)
    y, h = run(recurrent_selective_scan, inputs, h0)
    assert_close(y_ref, y, 1e-9)
    assert_close(h_ref, h, 1e-9, "final_state")


def test_step_by_step_decoding():
    u, dt, A, Bm, Cm, D = make_inputs(9, "harsh", groups=2)
    y_ref, h_ref = run(naive_selective_scan, [u, dt, A, Bm, Cm, D])
    state, ys = None, []
    for t in range(u.shape[1]):
        y_t, state = selective_scan_step(u[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], state, D=D)
        ys.append(y_t)
    assert_close(y_ref, torch.stack(ys, 1), 1e-9)
    assert_close(h_ref, state, 1e-9, "final_state")


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("dt_scale", ["unit", "harsh"])
def test_split_carry_state(dt_scale, split):
    u, dt, A, Bm, Cm, D = make_inputs(63, dt_scale)
    h0 = make_state()
    y_ref, h_ref = run(naive_selective_scan, [u, dt, A, Bm, Cm, D], h0)
    a, b = slice(None, split), slice(split, None)
    for fn, extra in ((chunk_selective_scan, {"chunk_size": 16}), (recurrent_selective_scan, {})):
        y1, h1 = run(fn, [u[:, a], dt[:, a], A, Bm[:, a], Cm[:, a], D], h0, **extra)
        y2, h2 = run(fn, [u[:, b], dt[:, b], A, Bm[:, b], Cm[:, b], D], h1, **extra)
        assert_close(y_ref, torch.cat([y1, y2], 1), 1e-9, f"{fn.__name__} output")
        assert_close(h_ref, h2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: gradients of chunk == gradients of naive ------------------------------------


def _grads(fn, inputs, h0, **extra):
    y, h = run(fn, inputs, h0, **extra)
    return grads_of(loss_from([y, h], random_like_outputs([y, h])), [*inputs, h0])


@pytest.mark.parametrize("T,chunk_size,groups", [(37, 16, None), (63, 64, 2), (100, 7, None), (9, 1, DN)])
@pytest.mark.parametrize("dt_scale", ["mamba", "unit", "harsh"])
def test_chunk_gradients_match_naive(dt_scale, T, chunk_size, groups):
    inputs = [x.requires_grad_() for x in make_inputs(T, dt_scale, groups=groups)]
    h0 = make_state().requires_grad_()
    ref = _grads(naive_selective_scan, inputs, h0)
    for fn, extra in ((chunk_selective_scan, {"chunk_size": chunk_size}), (recurrent_selective_scan, {})):
        got = _grads(fn, inputs, h0, **extra)
        for name, r, g in zip(NAMES, ref, got, strict=True):
            assert_close(r, g, 1e-9, f"{fn.__name__}: d{name}")


def test_gradient_of_output_alone_and_state_alone():
    """Each output's cotangent alone (the other unused) still gives naive's gradients."""
    inputs = [x.requires_grad_() for x in make_inputs(30)]
    h0 = make_state().requires_grad_()
    everything = dict(zip(NAMES, [*inputs, h0]))
    # the final state does not depend on C and D
    for pick, names in ((0, NAMES), (1, ("u", "dt", "A", "B", "h0"))):
        wrt = [everything[n] for n in names]
        ref = grads_of(run(naive_selective_scan, inputs, h0)[pick].pow(2).sum(), wrt)
        got = grads_of(run(chunk_selective_scan, inputs, h0, chunk_size=8)[pick].pow(2).sum(), wrt)
        for name, r, g in zip(names, ref, got, strict=True):
            assert_close(r, g, 1e-9, f"output {pick}: d{name}")


def test_chunk_gradcheck():
    """torch's finite-difference check of the hand-written backward (tiny sizes, float64)."""
    inputs = [x.requires_grad_() for x in make_inputs(7, b=1, dn=2, n=3, groups=2)]
    h0 = make_state(b=1, dn=2, n=3).requires_grad_()

    def f(u, dt, A, Bm, Cm, D, h):
        return run(chunk_selective_scan, [u, dt, A, Bm, Cm, D], h, chunk_size=3)

    assert torch.autograd.gradcheck(f, (*inputs, h0))


# ---- invariant 4: numerical stability, low precision, long sequences --------------------------


@pytest.mark.parametrize("dt_scale", list(DT_SCALES))
def test_float32_stable(dt_scale):
    """float32 chunk form vs the float64 reference, forward and backward."""
    x32 = [x.requires_grad_() for x in [*make_inputs(256, dt_scale, torch.float32), make_state(torch.float32)]]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    y_ref, h_ref = run(naive_selective_scan, x64[:6], x64[6])
    y, h = run(chunk_selective_scan, x32[:6], x32[6], chunk_size=64)
    assert y.dtype == h.dtype == torch.float32
    assert_close(y_ref, y, 1e-6)
    assert_close(h_ref, h, 1e-6, "final_state")
    cot = random_like_outputs([y_ref, h_ref])
    d_ref = grads_of(loss_from([y_ref, h_ref], cot), x64)
    d32 = grads_of(loss_from([y, h], [c.float() for c in cot]), x32)
    for name, r, d in zip(NAMES, d_ref, d32, strict=True):
        assert_close(r, d, 1e-5, f"d{name}")


def test_harsh_decay_whole_chunk_is_e_minus_500():
    """dt*|A| = 8 on every step: a chunk of 64 decays by e^-512; e^+512 would overflow (fp32
    and fp64), so a factorised exp(G_i) exp(-G_j) form would give inf/NaN."""
    u, _, _, Bm, Cm, D = make_inputs(192, dtype=torch.float32)
    dt = torch.full_like(u, 2.0)
    A = torch.full((DN, N), -4.0)
    x32 = [x.requires_grad_() for x in (u, dt, A, Bm, Cm, D)]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    y_ref, h_ref = run(naive_selective_scan, x64)
    y, h = run(chunk_selective_scan, x32, chunk_size=64)
    assert_close(y_ref, y, 1e-6)
    assert_close(h_ref, h, 1e-6, "final_state")
    cot = random_like_outputs([y_ref, h_ref])
    d_ref = grads_of(loss_from([y_ref, h_ref], cot), x64)
    d32 = grads_of(loss_from([y, h], [c.float() for c in cot]), x32)
    for name, r, d in zip(NAMES, d_ref, d32):
        assert_close(r, d, 1e-5, f"d{name}")


@pytest.mark.parametrize("dt_scale", ["unit", "harsh"])
def test_bfloat16(dt_scale):
    inputs = make_inputs(130, dt_scale, dtype=torch.bfloat16)
    h0 = make_state(dtype=torch.bfloat16)
    y_ref, h_ref = run(naive_selective_scan, [x.double() for x in inputs], h0.double())
    for fn, extra in ((chunk_selective_scan, {"chunk_size": 64}), (recurrent_selective_scan, {})):
        y, h = run(fn, inputs, h0, **extra)
        assert y.dtype == torch.bfloat16 and h.dtype == torch.float32  # states in >= fp32
        assert_close(y_ref, y, 5e-3, f"{fn.__name__} output")
        assert_close(h_ref, h, 1e-6, f"{fn.__name__} final_state")  # computed in fp32


@pytest.mark.parametrize("dt_scale", ["mamba", "harsh"])
def test_long_sequence_finite(dt_scale):
    inputs = [x.requires_grad_() for x in make_inputs(2**16, dt_scale, torch.float32, b=1, dn=4, n=4)]
    y, h = run(chunk_selective_scan, inputs)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    grads = grads_of(y.square().mean() + h.square().mean(), inputs)
    assert all(torch.isfinite(g).all() for g in grads)


# ---- bad input -> clear errors ----------------------------------------------------------------

FNS = [naive_selective_scan, chunk_selective_scan, recurrent_selective_scan]


@pytest.mark.parametrize("fn", FNS)
def test_range_errors(fn):
    u, dt, A, Bm, Cm, _ = make_inputs(8)
    with pytest.raises(ValueError, match=r"dt is the step size Delta and must be >= 0 .*got min -"):
        fn(u, -dt, A, Bm, Cm)
    # dt = 0 (float32 softplus underflow) skips the token: no decay, no input
    y, h = fn(u, dt * 0, A, Bm, Cm, output_final_state=True)
    assert torch.equal(h, torch.zeros_like(h)) and torch.equal(y, torch.zeros_like(y))
    with pytest.raises(ValueError, match=r"A must be < 0 .*A = -exp\(A_log\)"):
        fn(u, dt, -A, Bm, Cm)
    with pytest.raises(ValueError, match="A must be < 0"):
        fn(u, dt, A.clamp_min(A[0, 0]) * 0, Bm, Cm)


@pytest.mark.parametrize("fn", FNS)
def test_shape_errors(fn):
    u, dt, A, Bm, Cm, D = make_inputs(8)
    with pytest.raises(ValueError, match=r"u must have 3 dims \[B, T, Dn\], got shape \[2, 8\]"):
        fn(u[..., 0], dt, A, Bm, Cm)
    with pytest.raises(ValueError, match=r"dt must have the shape of u \[2, 8, 6\], got \[2, 7, 6\]"):
        fn(u, dt[:, 1:], A, Bm, Cm)
    with pytest.raises(ValueError, match=r"A must have shape \[Dn=6, N\], got \[5, 4\]"):
        fn(u, dt, A[1:], Bm, Cm)
    with pytest.raises(ValueError, match=r"B must have shape \[2, 8, N=4\] or \[2, 8, G, N=4\]"):
        fn(u, dt, A, Bm[..., 1:], Cm)
    with pytest.raises(ValueError, match=r"C must have the shape of B \[2, 8, 4\], got \[2, 7, 4\]"):
        fn(u, dt, A, Bm, Cm[:, 1:])
    with pytest.raises(ValueError, match="the number of B/C groups G=4 must divide Dn=6"):
        fn(u, dt, A, Bm[:, :, None].expand(-1, -1, 4, -1), Cm[:, :, None].expand(-1, -1, 4, -1))
    with pytest.raises(ValueError, match=r"D must have shape \[Dn=6\], got \[6, 1\]"):
        fn(u, dt, A, Bm, Cm, D=D[:, None])
    with pytest.raises(ValueError, match=r"initial_state must have shape \[2, 6, 4\], got \[2, 4, 6\]"):
        fn(u, dt, A, Bm, Cm, initial_state=torch.zeros(2, 4, 6, dtype=F64))
    with pytest.raises(TypeError, match="B must be a torch.Tensor, got list"):
        fn(u, dt, A, Bm.tolist(), Cm)
    with pytest.raises(TypeError, match="u must be a floating-point tensor"):
        fn(u.long(), dt, A, Bm, Cm)


@pytest.mark.parametrize("chunk_size", [0, -64, "64"])
def test_bad_chunk_size(chunk_size):
    u, dt, A, Bm, Cm, _ = make_inputs(8)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        chunk_selective_scan(u, dt, A, Bm, Cm, chunk_size=chunk_size)


def test_step_errors():
    u, dt, A, Bm, Cm, _ = (x[:, 0] if x.dim() == 3 else x for x in make_inputs(1))
    with pytest.raises(ValueError, match=r"u_t must have 2 dims \[B, Dn\], got shape \[2, 1, 6\]"):
        selective_scan_step(u[:, None], dt, A, Bm, Cm, None)
    with pytest.raises(ValueError, match="dt_t is the step size Delta and must be >= 0"):
        selective_scan_step(u, -dt, A, Bm, Cm, None)
    with pytest.raises(ValueError, match=r"B_t must have shape \[2, N=4\] or \[2, G, N=4\]"):
        selective_scan_step(u, dt, A, Bm[:, :3], Cm, None)
    with pytest.raises(ValueError, match=r"state must have shape \[2, 6, 4\], got \[2, 6\]"):
        selective_scan_step(u, dt, A, Bm, Cm, torch.zeros(2, 6, dtype=F64))
