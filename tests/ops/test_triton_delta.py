"""The Triton kernels of the chunked (gated) delta rule against the float64 recurrences.

Without CUDA they run in Triton's CPU interpreter in float64 (exact to rounding, tiny sizes); on
a GPU (marker ``gpu``) in float32 / bfloat16 at realistic sizes. Skipped where Triton is absent.
Outputs, final states and every gradient (q, k, v, beta, g, initial_state) are compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.deltanet import chunk_delta_rule, naive_delta_rule
from longctx.ops.gated_deltanet import chunk_gated_delta_rule, naive_gated_delta_rule
from tests.helpers import assert_close
from tests.ops.test_triton_kernels import _check as check_kernel
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
gpu = pytest.mark.gpu

# float64 in the interpreter: rounding only. On the GPU float32 (IEEE dots) and bf16 inputs; these
# GPU tolerances are first guesses, not yet measured on a device.
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}
DTYPES = [torch.float64] if not ON_CUDA else [torch.float32, torch.bfloat16]
# (B, T, H, K, V, chunk): T = 70 is one full chunk of 64 and a partial one
# K = 128 / 256: the backward state pass holds dS as 2 / 4 pieces of 64 key dims
SIZES = [(2, 70, 2, 16, 24, 64), (1, 37, 2, 16, 16, 16), (1, 70, 1, 128, 16, 64),
         (1, 66, 1, 256, 16, 64)] if not ON_CUDA else [
    (2, 67, 4, 64, 64, 64), (1, 1000, 4, 128, 128, 64), (1, 300, 2, 256, 64, 64)]
NAMES = ("q", "k", "v", "beta", "g", "S0")


def _check(name, ref_fn, fn, ref_inputs, dtype, names=NAMES, seed=0):
    """fn on ``dtype`` copies on DEVICE vs ref_fn in float64 on the CPU: outputs and every gradient
    (``test_triton_kernels._check`` with this file's tolerances and input names)."""
    check_kernel(name, ref_fn, fn, ref_inputs, dtype, seed=seed, names=names, tol=TOL)


def _check_gated(name, inputs, dtype, C):
    """The Triton gated delta rule (chunks of C, scale K^-1/2, initial and final state) on
    ``inputs`` = q, k, v, beta, g, S0 (float64) vs the recurrence: ``_check``."""
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

    scale = inputs[0].shape[-1] ** -0.5

    def ref(q, k, v, beta, g, S0):
        return naive_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0, output_final_state=True)

    def fn(q, k, v, beta, g, S0):
        return triton_gated_delta_rule(q, k, v, _acc(g), _acc(beta), scale=scale, initial_state=_acc(S0),
                                       output_final_state=True, chunk_size=C)

    _check(name, ref, fn, inputs, dtype)


def _inputs(B, T, H, K, V, seed, gate=1.0):
    """q; unit-norm k; v; beta = 2 sigmoid(x) in (0, 2); g = gate * logsigmoid(x) <= 0; S0."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k, v = rand(B, T, H, K), F.normalize(rand(B, T, H, K), dim=-1), rand(B, T, H, V)
    beta = 2 * torch.sigmoid(rand(B, T, H))
    g = F.logsigmoid(rand(B, T, H)) * gate
    return q, k, v, beta, g, rand(B, H, K, V)


def _maybe_gpu(params):
    return [pytest.param(*p, marks=gpu if ON_CUDA else ()) for p in params]


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


@pytest.mark.parametrize(("dtype", "size"), _maybe_gpu([(d, s) for d in DTYPES for s in SIZES]))
def test_delta_rule_kernel_matches_recurrence(dtype, size) -> None:
    from longctx.ops.deltanet.triton import triton_delta_rule

    B, T, H, K, V, C = size
    q, k, v, beta, _, S0 = _inputs(B, T, H, K, V, seed=T)
    scale = K ** -0.5

    def ref(q, k, v, beta, S0):
        return naive_delta_rule(q, k, v, beta, scale=scale, initial_state=S0, output_final_state=True)

    def fn(q, k, v, beta, S0):
        return triton_delta_rule(q, k, v, _acc(beta), scale=scale, initial_state=_acc(S0),
                                 output_final_state=True, chunk_size=C)

    _check("deltanet", ref, fn, [q, k, v, beta, S0], dtype, names=("q", "k", "v", "beta", "S0"))


@pytest.mark.parametrize("gate_on_delta", [False, True])
@pytest.mark.parametrize(("dtype", "size"), _maybe_gpu([(d, s) for d in DTYPES for s in SIZES]))
def test_gated_delta_rule_kernel_matches_recurrence(dtype, size, gate_on_delta, monkeypatch) -> None:
    """gate_on_delta: the state pass puts the gate on Delta's rows instead of on K^T
    (``triton_scalar_decay.GATE_ON_DELTA``, off until this passes on a GPU)."""
    from longctx.ops.common import triton_scalar_decay
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

    monkeypatch.setattr(triton_scalar_decay, "GATE_ON_DELTA", gate_on_delta)

    B, T, H, K, V, C = size
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=T + 1)
    scale = K ** -0.5

    def ref(q, k, v, beta, g, S0):
        return naive_gated_delta_rule(q, k, v, g, beta, scale=scale, initial_state=S0,
                                      output_final_state=True)

    def fn(q, k, v, beta, g, S0):
        return triton_gated_delta_rule(q, k, v, _acc(g), _acc(beta), scale=scale,
                                       initial_state=_acc(S0), output_final_state=True, chunk_size=C)

    _check("gated_deltanet", ref, fn, [q, k, v, beta, g, S0], dtype)


# (dtype, size, variant): float16 in the interpreter too, where HALF_WU applies
UT_CASES = _maybe_gpu([(d, s, var) for d in DTYPES for s in (
    [(1, 70, 2, 16, 16, 16), (1, 70, 2, 16, 16, 32), (1, 70, 1, 32, 16, 64)] if not ON_CUDA
    else [(1, 1000, 4, 128, 128, 64), (2, 67, 4, 64, 64, 32)]) for var in ("vector_inverse", "half_wu", "both")]
    + ([] if ON_CUDA else [(torch.float16, (1, 70, 2, 16, 16, 64), "both")]))


@pytest.mark.parametrize(("dtype", "size", "variant"), UT_CASES)
def test_ut_transform_variants_match_recurrence(dtype, size, variant, monkeypatch) -> None:
    """The UT transform's variants behind flags: ``triton_delta.VECTOR_DIAG_INVERSE`` (the
    inverse's diagonal blocks by element-wise forward substitution, ``_diag_block_inverse``, at
    chunks of 16 / 32 / 64: one, two, four blocks) and ``HALF_WU`` (W, U by half-precision dots;
    half inputs only). The output, final state and every gradient match the recurrence, and
    log-linear Gated DeltaNet's fused forward (its intra-chunk kernel recomputes X) matches the one
    without the variant."""
    from longctx.ops.common import triton_delta
    from longctx.ops.common.triton_log_linear_delta import delta_log_linear_forward

    B, T, H, K, V, C = size
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=T + C)
    lam = torch.rand(1, T, H, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cu = torch.tensor([0, T], dtype=torch.int32, device=DEVICE)
    ll = [t[:1].to(DEVICE, dtype) for t in (q * K ** -0.5, k, v, beta, g)] + [lam.to(DEVICE, dtype)]
    with torch.no_grad():
        ll_without = delta_log_linear_forward(*ll, cu, [T], C)
    monkeypatch.setattr(triton_delta, "VECTOR_DIAG_INVERSE", variant != "half_wu")
    monkeypatch.setattr(triton_delta, "HALF_WU", variant != "vector_inverse")
    _check_gated(variant, [q, k, v, beta, g, S0], dtype, C)
    with torch.no_grad():
        ll_with = delta_log_linear_forward(*ll, cu, [T], C)
    assert_close(ll_without.double().cpu(), ll_with.double().cpu(), TOL[dtype], "log-linear fused")


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize(("dtype", "size"), _maybe_gpu([(d, s) for d in DTYPES for s in (
    [(1, 70, 2, 16, 16, 16), (2, 40, 1, 80, 24, 32)] if not ON_CUDA else [(1, 1000, 4, 128, 128, 64), (2, 67, 4, 64, 64, 64)])]))
def test_dh_intra_outside_matches_recurrence(dtype, size, gated, monkeypatch) -> None:
    """``triton_delta.DH_INTRA_OUTSIDE``: dDelta's intra-chunk part by a kernel parallel over the
    chunks before the reverse state pass (K = 80: the pass's two pieces of key dims): the output,
    final state and every gradient match the recurrence."""
    from longctx.ops.common import triton_delta
    from longctx.ops.deltanet.triton import triton_delta_rule

    monkeypatch.setattr(triton_delta, "DH_INTRA_OUTSIDE", True)
    B, T, H, K, V, C = size
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=T + K)
    if gated:
        _check_gated("dh_intra_outside", [q, k, v, beta, g, S0], dtype, C)
        return

    def ref(q, k, v, beta, S0):
        return naive_delta_rule(q, k, v, beta, scale=K ** -0.5, initial_state=S0, output_final_state=True)

    def fn(q, k, v, beta, S0):
        return triton_delta_rule(q, k, v, _acc(beta), scale=K ** -0.5, initial_state=_acc(S0),
                                 output_final_state=True, chunk_size=C)

    _check("dh_intra_outside", ref, fn, [q, k, v, beta, S0], dtype, names=("q", "k", "v", "beta", "S0"))


@pytest.mark.parametrize("BV", [16, 64])
@pytest.mark.parametrize(("dtype", "size"), _maybe_gpu([(d, s) for d in DTYPES for s in (
    [(1, 70, 2, 16, 64, 16)] if not ON_CUDA else [(1, 1000, 4, 128, 128, 64)])]))
def test_forward_state_pass_tiles_do_not_change_results(dtype, size, BV) -> None:
    """The state passes (``delta.delta_h``, ``delta.delta_dh``) and the output pass
    (``delta.fwd_o``) at value tiles other than their defaults (a tuning sweep tries them):
    outputs, final state and every gradient still match."""
    from longctx.ops.common.triton_launch import launch_overrides

    B, T, H, K, V, C = size
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=T + BV)
    # the output pass with all of V at once, or in blocks of 16
    with launch_overrides({"delta.delta_h": {"BV": BV}, "delta.delta_dh": {"BV": BV},
                           "delta.fwd_o": {"BV": 128 if BV == 64 else 16}}):
        _check_gated("delta_h tiles", [q, k, v, beta, g, S0], dtype, C)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_without_initial_or_final_state(dtype) -> None:
    """No initial state and no final state requested (no dS_T seed, no d initial_state)."""
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

    B, T, H, K, V = (1, 50, 2, 16, 16) if not ON_CUDA else (2, 300, 4, 64, 64)
    q, k, v, beta, g, _ = _inputs(B, T, H, K, V, seed=5)

    def ref(q, k, v, beta, g):
        return naive_gated_delta_rule(q, k, v, g, beta, scale=0.5)[:1]

    def fn(q, k, v, beta, g):
        o, S = triton_gated_delta_rule(q, k, v, _acc(g), _acc(beta), scale=0.5, chunk_size=32)
        assert S is None
        return (o,)

    _check("no_state", ref, fn, [q, k, v, beta, g], dtype, names=NAMES[:5])


# the interpreter adds float16: a half dtype, whose states the inference forward keeps in float16
@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES + ([] if ON_CUDA else [torch.float16])]))
@pytest.mark.parametrize("gated", [False, True])
def test_inference_forward_equals_the_training_forward(dtype, gated) -> None:
    """No gradient wanted: the forward keeps the chunk states in the input dtype and skips X
    (``triton_delta._forward(train=False)``); the output pass rounds the states to that dtype before
    its product in both paths, so o and the final state are the same, bit for bit."""
    from longctx.ops.common.triton_delta import delta_rule_chunk

    B, T, H, K, V = (2, 70, 2, 16, 16) if not ON_CUDA else (2, 1000, 4, 128, 128)
    q, k, v, beta, g, S0 = (t.to(DEVICE) for t in _inputs(B, T, H, K, V, seed=12))
    q, k, v = (t.to(dtype) for t in (q, k, v))
    g = _acc(g) if gated else None
    beta, S0 = _acc(beta), _acc(S0)
    kw = {"scale": 0.5, "initial_state": S0, "output_final_state": True, "chunk_size": 64}
    with torch.no_grad():
        o_inf, S_inf = delta_rule_chunk(q, k, v, beta, g, **kw)
    o_train, S_train = delta_rule_chunk(q.requires_grad_(), k, v, beta, g, **kw)
    assert o_train.requires_grad and not o_inf.requires_grad
    assert torch.equal(o_inf, o_train.detach()) and torch.equal(S_inf, S_train.detach())


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
@pytest.mark.parametrize("gated", [False, True])
def test_packed_variable_lengths_equal_separate_calls(dtype, gated) -> None:
    """cu_seqlens: each packed sequence == its own recurrence (outputs, states, all gradients)."""
    from longctx.ops.common.triton_delta import delta_rule_chunk

    lens = [5, 70, 1, 20] if not ON_CUDA else [100, 64, 1, 900, 37]
    H, K, V = (2, 16, 16) if not ON_CUDA else (4, 64, 64)
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    q, k, v, beta, g, _ = _inputs(1, T, H, K, V, seed=6)
    S0 = _inputs(len(lens), 1, H, K, V, seed=7)[-1]

    def ref(q, k, v, beta, *rest):
        g_, S0 = rest if gated else (torch.zeros_like(beta), rest[0])
        outs, finals = [], []
        for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
            o, S = naive_gated_delta_rule(q[:, s:e], k[:, s:e], v[:, s:e], g_[:, s:e], beta[:, s:e],
                                          scale=0.5, initial_state=S0[n:n + 1],
                                          output_final_state=True)
            outs.append(o)
            finals.append(S)
        return torch.cat(outs, 1), torch.cat(finals)

    def fn(q, k, v, beta, *rest):
        g_, S0 = rest if gated else (None, rest[0])
        return delta_rule_chunk(q, k, v, _acc(beta), _acc(g_) if gated else None, scale=0.5,
                                initial_state=_acc(S0), output_final_state=True,
                                cu_seqlens=cu.to(q.device))

    inputs = [q, k, v, beta, g, S0] if gated else [q, k, v, beta, S0]
    names = NAMES if gated else ("q", "k", "v", "beta", "S0")
    _check("varlen", ref, fn, inputs, dtype, names=names)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_harsh_gates_in_a_partial_chunk_stay_finite(dtype) -> None:
    """g ~ 5 logsigmoid(x): the chunk's cumulative gate reaches ~-100 (float64 would overflow
    exp(-G) only past -709, so gates of -30 per token make the padded rows' exponents that large)."""
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule

    B, T, H, K, V = (1, 40, 1, 16, 16) if not ON_CUDA else (2, 100, 4, 64, 64)
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=8, gate=30.0)

    def ref(q, k, v, beta, g, S0):
        return naive_gated_delta_rule(q, k, v, g, beta, scale=0.5, initial_state=S0,
                                      output_final_state=True)

    def fn(q, k, v, beta, g, S0):
        return triton_gated_delta_rule(q, k, v, _acc(g), _acc(beta), scale=0.5,
                                       initial_state=_acc(S0), output_final_state=True)

    _check("harsh", ref, fn, [q, k, v, beta, g, S0], dtype)


@pytest.mark.skipif(ON_CUDA, reason="the interpreter's float16 (the GPU runs the harsh case in bf16 above)")
@pytest.mark.parametrize("gate", [1.0, 30.0])
def test_gate_gradient_in_half_precision_is_as_exact_as_the_others(gate) -> None:
    """float16 in the interpreter, gates gate * logsigmoid(x): dg's error is that of the other
    gradients (it was 9.4e-2 with harsh gates, 180x theirs, when dg came from q . dq - v . dv
    summed in reverse: those terms cancel to dg's size and leave their rounding behind)."""
    from longctx.ops.gated_deltanet.triton import triton_gated_delta_rule
    from tests.ops.test_triton_kernels import check_half_gradients

    B, T, H, K, V = 1, 80, 2, 32, 32
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=8, gate=gate)

    def ref(q, k, v, beta, g, S0):
        return naive_gated_delta_rule(q, k, v, g, beta, scale=0.5, initial_state=S0, output_final_state=True)

    def fn(q, k, v, beta, g, S0):
        return triton_gated_delta_rule(q, k, v, g, beta, scale=0.5, initial_state=S0,
                                       output_final_state=True, chunk_size=32)

    check_half_gradients(f"gate {gate}", ref, fn, [q, k, v, beta, g, S0], 3,
                         ("dq", "dk", "dv", "dbeta", "dg", "dS0"))


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_chunk_functions_dispatch_to_the_kernels(dtype) -> None:
    """chunk_delta_rule / chunk_gated_delta_rule with backend="triton" (incl. use_qk_l2norm)."""
    B, T, H, K, V = (2, 20, 2, 16, 16) if not ON_CUDA else (2, 300, 4, 64, 64)
    q, k, v, beta, g, S0 = _inputs(B, T, H, K, V, seed=9)
    k = k * 1.7  # not unit-norm: the ops normalise q and k themselves

    def ref(q, k, v, beta, g, S0):
        o1, s1 = naive_delta_rule(q, k, v, beta, initial_state=S0, output_final_state=True,
                                  use_qk_l2norm=True)
        o2, s2 = naive_gated_delta_rule(q, k, v, g, beta, initial_state=S0, output_final_state=True,
                                        use_qk_l2norm=True)
        return o1, s1, o2, s2

    def fn(q, k, v, beta, g, S0):
        kw = {"initial_state": S0, "output_final_state": True, "use_qk_l2norm": True,
              "backend": "triton"}
        o1, s1 = chunk_delta_rule(q, k, v, beta, **kw)
        o2, s2 = chunk_gated_delta_rule(q, k, v, g, beta, **kw)
        return o1, s1, o2, s2

    _check("dispatch", ref, fn, [q, k, v, beta, g, S0], dtype)


def test_auto_backend_keeps_cpu_tensors_on_pytorch_and_rejects_big_keys() -> None:
    q, k, v, beta, g, _ = _inputs(1, 5, 1, 8, 8, seed=10)
    o_auto, _ = chunk_gated_delta_rule(q, k, v, g, beta, backend="auto")
    o_torch, _ = chunk_gated_delta_rule(q, k, v, g, beta, backend="torch")
    assert torch.equal(o_auto, o_torch)  # CPU tensors: PyTorch, even with the interpreter on
    q, k, v, beta, g, _ = (t.to(DEVICE) for t in _inputs(1, 3, 1, 300, 4, seed=11))
    with pytest.raises(ValueError, match="key / feature dim 300"):  # on the GPU, or interpreted
        chunk_delta_rule(q, k, v, beta, backend="triton")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("gated", [False, True])
def test_half_gradients_over_64_key_dims_run_the_kernels_on_a_gpu(gated: bool) -> None:
    """bf16, K = 128, a gradient wanted, on a GPU: "auto" runs the kernels (their backward was wrong
    there until _delta_dh_kernel took fp32 operands, ``triton_delta.HALF_DH_F32_DOTS``) and its
    output and gradients agree with the PyTorch chunk form's."""
    q, k, v, beta, g, _ = (t.to(DEVICE) for t in _inputs(1, 330, 2, 128, 64, seed=12))
    q, k, v = (t.bfloat16() for t in (q, k, v))
    beta, g = beta.float(), g.float()

    def run(backend):
        ins = [t.clone().requires_grad_() for t in (q, k, v)]
        if gated:
            o = chunk_gated_delta_rule(*ins, g, beta, backend=backend)[0]
        else:
            o = chunk_delta_rule(*ins, beta, backend=backend)[0]
        cot = torch.ones_like(o)
        return (o, *torch.autograd.grad(o, ins, cot))

    auto, kernel, ref = run("auto"), run("triton"), run("torch")
    assert all(torch.equal(a, b) for a, b in zip(auto, kernel, strict=True)), "auto did not run the kernel"
    for name, r, o in zip(("o", "dq", "dk", "dv"), ref, kernel, strict=True):
        assert_close(r.double(), o.double(), TOL[torch.bfloat16], name)
