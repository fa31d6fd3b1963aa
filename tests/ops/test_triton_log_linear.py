"""The Triton kernels of chunked log-linear Mamba-2 against the float64 matrix form.

Without CUDA they run in Triton's CPU interpreter in float64 (exact to rounding, tiny sizes, chunks
of 16 so a few chunk levels are exercised); on a GPU (marker ``gpu``) in float32 / bfloat16.
Output and the gradients of x, dt, A, B, C, D and lambda_levels are compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.log_linear import (
    FenwickState,
    chunk_log_linear_mamba2,
    naive_log_linear_mamba2,
    required_levels,
)
from tests.helpers import assert_close
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
gpu = pytest.mark.gpu
F64 = torch.float64

TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2}
# A is shared by every token: its gradient sums dt_t dg_t over T (the GPU bounds were set while dg
# came from reverse-summed q.dq - k.dk, whose terms nearly cancel; not re-measured since)
TOL_A = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 0.15}
NAMES = ("x", "dt", "A", "B", "C", "lambda_levels", "D")


def _inputs(Bsz: int, T: int, H: int, G: int, N: int, P: int, seed: int, extra_levels: int = 0):
    gen = torch.Generator().manual_seed(seed)
    L = required_levels(T - 1) + extra_levels
    return {
        "x": torch.randn(Bsz, T, H, P, generator=gen, dtype=F64),
        "dt": F.softplus(torch.randn(Bsz, T, H, generator=gen, dtype=F64) - 1),
        "A": -torch.rand(H, generator=gen, dtype=F64) - 0.1,
        "B": torch.randn(Bsz, T, G, N, generator=gen, dtype=F64),
        "C": torch.randn(Bsz, T, G, N, generator=gen, dtype=F64),
        "lambda_levels": torch.rand(Bsz, T, H, L, generator=gen, dtype=F64) + 0.1,
        "D": torch.randn(H, generator=gen, dtype=F64),
    }


def _check(inputs: dict, dtype: torch.dtype, chunk_size: int, monkeypatch) -> None:
    import longctx.ops.log_linear.triton as ll_triton

    ran = []
    kernel = ll_triton.triton_log_linear_prepared
    monkeypatch.setattr(ll_triton, "triton_log_linear_prepared", lambda *a: ran.append(1) or kernel(*a))
    ref_in = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    dev_in = {n: t.detach().to(DEVICE, dtype).requires_grad_() for n, t in inputs.items()}
    ref, _ = naive_log_linear_mamba2(**ref_in)
    out, state = chunk_log_linear_mamba2(**dev_in, chunk_size=chunk_size, backend="triton")
    assert ran == [1], "the Triton path did not run"
    assert state is None and out.dtype == dtype and out.device.type == DEVICE
    assert_close(ref, out.double().cpu(), TOL[dtype], "y")
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    ref_g = torch.autograd.grad((ref * cot).sum(), [ref_in[n] for n in NAMES])
    dev_g = torch.autograd.grad((out.double() * cot.to(DEVICE)).sum(), [dev_in[n] for n in NAMES])
    for n, r, o in zip(NAMES, ref_g, dev_g, strict=True):
        assert_close(r, o.double().cpu(), (TOL_A if n == "A" else TOL)[dtype], f"d{n}")


# T = 71 with chunks of 16: 5 chunks, the last partial, chunk levels m = 1, 2, 3 (chunk 4 reads
# chunks 0-3 at level c + 3); T = 11: a single partial chunk (no chunk level); T = 48: 3 full ones;
# T = 300: 19 chunks, five chunk levels (grouped: two of them above groups of 4 chunks)
CPU_CASES = [(2, 71, 2, 1, 16, 8, 16), (1, 11, 2, 2, 16, 16, 16), (1, 48, 1, 1, 8, 16, 16),
             (1, 300, 2, 1, 16, 8, 16)]


# GROUPED_LEVELS off / on; on with the backward's reverse level walk in segments of whole blocks of
# at least 2 chunks (WALK_SPAN)
LEVEL_PATHS = pytest.mark.parametrize(("grouped", "span"), [(False, 0), (True, 0), (True, 2)],
                                      ids=["n_m_states", "grouped", "grouped_segments"])


@pytest.mark.skipif(ON_CUDA, reason="the interpreter cases (a GPU runs the gpu-marked ones)")
@LEVEL_PATHS
@pytest.mark.parametrize("case", CPU_CASES)
def test_log_linear_mamba2_kernel_matches_naive(case, grouped, span, monkeypatch) -> None:
    """grouped: ``GROUPED_LEVELS``, one level state per chunk forward and backward (groups of 4
    chunks here, so the walk over groups runs too); span: ``WALK_SPAN``."""
    from longctx.ops.common import triton_log_linear
    from longctx.ops.common.triton_launch import launch_overrides

    monkeypatch.setattr(triton_log_linear, "GROUPED_LEVELS", grouped)
    monkeypatch.setattr(triton_log_linear, "WALK_SPAN", span)
    Bsz, T, H, G, N, P, chunk = case
    with launch_overrides({"log_linear.fwd_z_group": {"GS": 4}}):
        _check(_inputs(Bsz, T, H, G, N, P, seed=T, extra_levels=1), F64, chunk, monkeypatch)


@pytest.mark.skipif(ON_CUDA, reason="an interpreter case")
@pytest.mark.parametrize("grouped", [False, True])
def test_decay_gradient_is_direct_not_a_cancelling_sum(grouped, monkeypatch) -> None:
    """float32, decays 30x the usual (T = 71, chunks of 16, three chunk levels): the decay's
    gradient per token is summed from terms that each carry their decays, so dA is about as exact as
    the other gradients. From the identity dg = reverse-summed (q.dq - k.dk) it was 1.3e-4 here
    (its terms cancel to dg's size); direct: 9e-6 (mild decays: 1.2e-6 -> 2e-7). grouped: with
    ``GROUPED_LEVELS`` the carry term comes from per-chunk scalars summed over half blocks."""
    from longctx.ops.common import triton_log_linear

    monkeypatch.setattr(triton_log_linear, "GROUPED_LEVELS", grouped)
    inputs = _inputs(2, 71, 2, 1, 16, 8, seed=71, extra_levels=1)
    inputs["A"] = inputs["A"] * 30
    ref_in = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    dev_in = {n: t.detach().to(DEVICE, torch.float32).requires_grad_() for n, t in inputs.items()}
    ref, _ = naive_log_linear_mamba2(**ref_in)
    out, _ = chunk_log_linear_mamba2(**dev_in, chunk_size=16, backend="triton")
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(99), dtype=F64)
    names = ("A", "dt", "x")
    ref_g = torch.autograd.grad((ref * cot).sum(), [ref_in[n] for n in names])
    dev_g = torch.autograd.grad((out.double() * cot).sum(), [dev_in[n] for n in names])
    # dx: the inputs' own rounding level; ddt, dA: the direct decay gradient
    for n, r, o, tol in zip(names, ref_g, dev_g, (3e-5, 3e-6, 1e-6), strict=True):
        assert_close(r, o.double(), tol, f"d{n}")


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=gpu if ON_CUDA else ()) for d in
                                   ([torch.float32, torch.bfloat16] if ON_CUDA else [F64, torch.float16])])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("GS", [None, 2, 4, 16])
def test_inference_forward_equals_the_training_forward(dtype, packed, GS, monkeypatch) -> None:
    """No gradient wanted: one level state per chunk, at each block's first reader, in the input
    dtype, and the block's later chunks decay it from there. GS None: M walks over every chunk keep
    those; else (``GROUPED_LEVELS``) they are summed inside groups of GS chunks and then over the
    groups' sums (``triton_log_linear._grouped_levels``). o agrees with the training forward's (every
    level walked over every chunk) to the input dtype's rounding. T = 150 with chunks of 16 in the interpreter (10 chunks, four chunk levels:
    GS 2 and 4 leave three and two to the walk over groups, 16 none; packed: 3 and 16 chunks); 1000
    with chunks of 64 on a GPU (four levels)."""
    from longctx.ops.common import triton_log_linear
    from longctx.ops.common.triton_launch import launch_overrides
    from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk

    monkeypatch.setattr(triton_log_linear, "GROUPED_LEVELS", GS is not None)

    B, T, H, K, V, C = (2, 150, 2, 16, 16, 16) if not ON_CUDA else (2, 1000, 4, 128, 128, 64)
    gen = torch.Generator().manual_seed(3)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    q, k, v = rand(B, T, H, K) * K ** -0.5, rand(B, T, H, K) * K ** -0.5, rand(B, T, H, V)
    g, lam = F.logsigmoid(rand(B, T, H) + 3), F.softplus(rand(B, T, H, required_levels(T - 1)))
    cu = None
    if packed:  # the batch as two packed sequences of other lengths
        q, k, v, g, lam = (t.reshape(1, B * T, *t.shape[2:]) for t in (q, k, v, g, lam))
        cu = torch.tensor([0, 45, B * T], dtype=torch.int32, device=DEVICE)
    q, k, v = (t.to(DEVICE, dtype) for t in (q, k, v))
    g, lam = g.to(DEVICE, torch.float32 if dtype != F64 else F64), lam.to(DEVICE, dtype)
    with torch.no_grad(), launch_overrides({"log_linear.fwd_z_group": {"GS": GS or 16}}):
        o_inf = log_linear_scalar_decay_chunk(q, k, v, g, lam, chunk_size=C, cu_seqlens=cu)
    o_train = log_linear_scalar_decay_chunk(q.requires_grad_(), k, v, g, lam, chunk_size=C, cu_seqlens=cu)
    assert o_train.requires_grad and not o_inf.requires_grad
    tol = {F64: 1e-12, torch.float16: 2e-3, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    assert_close(o_train.detach().double().cpu(), o_inf.double().cpu(), tol, "o")


@gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(2, 300, 4, 2, 64, 64, 64), (1, 1000, 2, 1, 128, 64, 64),
                                  (1, 133, 2, 1, 16, 32, 16)])
@LEVEL_PATHS
def test_log_linear_mamba2_kernel_gpu(dtype, size, grouped, span, monkeypatch) -> None:
    """grouped: ``GROUPED_LEVELS`` (one level state per chunk, forward and backward); span:
    ``WALK_SPAN``."""
    from longctx.ops.common import triton_log_linear

    monkeypatch.setattr(triton_log_linear, "GROUPED_LEVELS", grouped)
    monkeypatch.setattr(triton_log_linear, "WALK_SPAN", span)
    Bsz, T, H, G, N, P, chunk = size
    _check(_inputs(Bsz, T, H, G, N, P, seed=T), dtype, chunk, monkeypatch)


def test_backend_dispatch_and_fallbacks() -> None:
    x = _inputs(1, 20, 2, 1, 16, 8, seed=1)
    ref, _ = naive_log_linear_mamba2(**x)
    auto, _ = chunk_log_linear_mamba2(**x, chunk_size=16)  # CPU tensors: "auto" is PyTorch
    assert_close(ref, auto, 1e-10)
    S0 = FenwickState(torch.randn(1, 3, 2, 8, 16, dtype=F64), torch.tensor(5))  # SSD's [P, N]
    lam = torch.rand(1, 20, 2, required_levels(24) + 1, dtype=F64)
    ref, ref_s = naive_log_linear_mamba2(**{**x, "lambda_levels": lam}, initial_state=S0, output_final_state=True)
    dev = {n: t.to(DEVICE) for n, t in {**x, "lambda_levels": lam}.items()}
    S0_dev = FenwickState(S0.S.to(DEVICE), S0.t)
    out, s = chunk_log_linear_mamba2(**dev, initial_state=S0_dev, output_final_state=True, chunk_size=16,
                                     backend="triton")  # the level path, from position 5
    assert_close(ref, out.double().cpu(), 1e-10 if not ON_CUDA else 1e-4)
    assert_close(ref_s.S, s.S.double().cpu(), 1e-10 if not ON_CUDA else 1e-4)



@pytest.mark.parametrize("T", [71, 64])
def test_log_linear_mamba2_final_state(T: int) -> None:
    """With a final state the Triton path runs the level decomposition over the scalar-decay kernel
    (``log_linear_by_levels``): output and the state (in SSD's [P, N] layout) match, and gradients
    through the state too. (On a GPU in float32; in the interpreter in float64.)"""
    dtype = torch.float32 if ON_CUDA else F64
    x = _inputs(1, T, 2, 1, 16, 8, seed=T)
    ref_in = {n: t.clone().requires_grad_() for n, t in x.items()}
    dev_in = {n: t.detach().to(DEVICE, dtype).requires_grad_() for n, t in x.items()}
    ref, ref_s = naive_log_linear_mamba2(**ref_in, output_final_state=True)
    out, s = chunk_log_linear_mamba2(**dev_in, chunk_size=16, output_final_state=True, backend="triton")
    assert int(s.t) == T and s.S.shape == ref_s.S.shape
    assert_close(ref, out.double().cpu(), TOL[dtype], "y")
    assert_close(ref_s.S, s.S.double().cpu(), TOL[dtype], "S")
    ref_g = torch.autograd.grad(ref_s.S.sum() + ref.sum(), [ref_in[n] for n in NAMES])
    dev_g = torch.autograd.grad(s.S.double().sum() + out.double().sum(), [dev_in[n] for n in NAMES])
    for n, r, o in zip(NAMES, ref_g, dev_g, strict=True):
        assert_close(r, o.double().cpu(), (TOL_A if n == "A" else TOL)[dtype], f"d{n}")
