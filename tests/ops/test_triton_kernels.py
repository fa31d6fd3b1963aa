"""The Triton kernels of the chunked scalar-decay family against the float64 definitions.

Without CUDA they run in Triton's CPU interpreter in float64 (exact to rounding, tiny sizes); on
a GPU (marker ``gpu``) in float32 / bfloat16 at realistic sizes. Skipped where Triton is absent.
"""

from __future__ import annotations

import pytest
import torch

from longctx.ops.common.backend import kernel_unsupported, use_backend, wants_triton
from longctx.ops.gla import naive_gla
from longctx.ops.linear_attention import chunk_linear_attention, naive_linear_attention
from longctx.ops.mamba2 import chunk_ssd, naive_ssd
from longctx.ops.retention import chunk_retention, naive_retention
from tests.helpers import assert_close
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
gpu = pytest.mark.gpu

# float64 in the interpreter: rounding only; on the GPU float32 (IEEE dots) and bf16 inputs
TOL = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 3e-2}
# The gradient of a decay shared by all tokens (retention's log gamma_h, SSD's A_h) is a sum over T
# of q.dq - k.dk terms that nearly cancel; with bf16 operands in the kernels' dots it measured 0.11
# (retention) and 0.075 (SSD) on an H100 (T=300, 2026-11-23), against 2e-4 for float32 inputs.
TOL_SHARED_DECAY = {torch.float64: 1e-10, torch.float32: 2e-4, torch.bfloat16: 0.15}
DTYPES = [torch.float64] if not ON_CUDA else [torch.float32, torch.bfloat16]
SIZES = [(2, 37, 2, 16, 24)] if not ON_CUDA else [(2, 67, 4, 64, 64), (1, 1000, 4, 128, 128)]


def _grads(out, inputs, seed: int):
    """Gradients of a fixed random projection of every output w.r.t. ``inputs``."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o.double() * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device)).sum()
               for o in out)
    return torch.autograd.grad(loss, inputs)


def _check(name, ref_fn, fn, ref_inputs, dtype, seed=0, shared_decay=None, names=None, tol=TOL):
    """fn on ``dtype`` copies on DEVICE vs ref_fn in float64 on the CPU: outputs and every gradient
    (input number ``shared_decay`` with the looser ``TOL_SHARED_DECAY``); ``names``: the inputs'
    names for the messages; ``tol``: the tolerance per dtype."""
    ref_in = [t.double().requires_grad_() for t in ref_inputs]
    dev_in = [t.detach().to(DEVICE, dtype if t.is_floating_point() else t.dtype).requires_grad_()
              for t in ref_inputs]
    ref_out, out = ref_fn(*ref_in), fn(*dev_in)
    for i, (r, o) in enumerate(zip(ref_out, out, strict=True)):
        assert o.device.type == DEVICE
        assert_close(r, o.double().cpu(), tol[dtype], f"{name}/out{i}")
    for i, (r, o) in enumerate(zip(_grads(ref_out, ref_in, seed), _grads(out, dev_in, seed), strict=True)):
        rtol = TOL_SHARED_DECAY[dtype] if i == shared_decay else tol[dtype]
        assert_close(r, o.double().cpu(), rtol, f"{name}/d{names[i]}" if names else f"{name}/grad{i}")


def check_half_gradients(name, ref_fn, fn, ref_inputs, n_half, names, tol=2e-3):
    """The float16 interpreter runs of the decay-gradient tests: ``fn`` on the first ``n_half``
    inputs in float16 (the rest float32) vs ``ref_fn`` in float64, every gradient (``names``)
    within ``tol`` (relative RMS)."""
    ref_in = [t.requires_grad_() for t in ref_inputs]
    ins = [t.detach().to(torch.float16 if i < n_half else torch.float32).requires_grad_()
           for i, t in enumerate(ref_inputs)]
    for n, r, o in zip(names, _grads(ref_fn(*ref_in), ref_in, 0), _grads(fn(*ins), ins, 0), strict=True):
        assert_close(r, o.double(), tol, f"{name}: {n}")


def _rand(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _packed_reference(q, k, v, g, S0, cu, scale: float):
    """The recurrence (GLA's, the decay g [1, T, H] over all key dims) of each packed sequence of
    ``cu`` alone from its initial state S0[n]: (o [1, T, H, V], final states [N, H, K, V])."""
    H, K = q.shape[2], q.shape[3]
    outs, finals = [], []
    for n, (s, e) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)):
        o, S = naive_gla(q[:, s:e], k[:, s:e], v[:, s:e], g[:, s:e, :, None].expand(1, e - s, H, K),
                         scale=scale, initial_state=S0[n:n + 1], output_final_state=True)
        outs.append(o)
        finals.append(S)
    return torch.cat(outs, 1), torch.cat(finals)


def _maybe_gpu(params):
    return [pytest.param(*p, marks=gpu if ON_CUDA else ()) for p in params]


@pytest.mark.parametrize(("dtype", "size"), _maybe_gpu([(d, s) for d in DTYPES for s in SIZES]))
def test_simple_gla_kernel_matches_recurrence(dtype, size) -> None:
    """Data-dependent scalar decay (simple GLA) == GLA's recurrence with the gate over all of Dk."""
    from longctx.ops.retention.triton import triton_simple_gla

    B, T, H, K, V = size
    gen = torch.Generator().manual_seed(T)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    g = -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 0.3
    S0 = _rand(B, H, K, V, gen=gen)
    scale = K ** -0.5

    def ref(q, k, v, g, S0):
        return naive_gla(q, k, v, g[..., None].expand(B, T, H, K), scale=scale, initial_state=S0,
                         output_final_state=True)

    def fn(q, k, v, g, S0):
        return triton_simple_gla(q, k, v, g.float() if g.dtype != torch.float64 else g, scale=scale,
                                 initial_state=S0.float() if S0.dtype != torch.float64 else S0,
                                 output_final_state=True)

    _check("simple_gla", ref, fn, [q, k, v, g, S0], dtype)


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_scalar_decay_state_pass_tiles_do_not_change_results(dtype, wide) -> None:
    """The state passes at tiles other than the default (what tune_kernels.py tries; 64 x 64 was
    the default on a GPU before 2026-12-07; wide: the forward pass with BV = 128) still match the
    recurrence: outputs, final state and every gradient."""
    from longctx.ops.common.triton_launch import launch_overrides
    from longctx.ops.retention.triton import triton_simple_gla

    B, T, H, K, V = (1, 37, 2, 32, 32) if not ON_CUDA else (1, 300, 2, 128, 128)
    tiles = {"BK": 16, "BV": 16} if not ON_CUDA else {"BK": 64, "BV": 64}
    fwd_tiles = {**tiles, "BV": 128} if wide else tiles
    gen = torch.Generator().manual_seed(9)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    g, S0 = -torch.rand(B, T, H, generator=gen, dtype=torch.float64) * 0.3, _rand(B, H, K, V, gen=gen)

    def ref(q, k, v, g, S0):
        return naive_gla(q, k, v, g[..., None].expand(B, T, H, K), scale=0.3, initial_state=S0,
                         output_final_state=True)

    def fn(q, k, v, g, S0):
        f = (lambda t: t) if q.dtype == torch.float64 else (lambda t: t.float())
        return triton_simple_gla(q, k, v, f(g), scale=0.3, initial_state=f(S0), output_final_state=True)

    with launch_overrides({"scalar_decay.fwd_h": fwd_tiles, "scalar_decay.bwd_dh": tiles}):
        _check("simple_gla/state tiles", ref, fn, [q, k, v, g, S0], dtype)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_retention_dispatches_to_the_kernel(dtype) -> None:
    B, T, H, K, V = (2, 45, 2, 16, 16) if not ON_CUDA else (2, 300, 4, 64, 64)
    gen = torch.Generator().manual_seed(1)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    log_decay = torch.log(torch.rand(H, generator=gen, dtype=torch.float64) * 0.2 + 0.75)
    S0 = _rand(B, H, K, V, gen=gen)

    def ref(q, k, v, b, S0):
        return naive_retention(q, k, v, log_decay=b, initial_state=S0, output_final_state=True)

    def fn(q, k, v, b, S0):
        return chunk_retention(q, k, v, log_decay=b.float() if b.dtype != torch.float64 else b,
                               initial_state=S0, output_final_state=True, backend="triton")

    _check("retention", ref, fn, [q, k, v, log_decay, S0], dtype, shared_decay=3)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
@pytest.mark.parametrize("normalize", [False, True])
def test_linear_attention_dispatches_to_the_kernel(dtype, normalize) -> None:
    B, T, H, K, V = (2, 40, 2, 16, 16) if not ON_CUDA else (2, 300, 4, 64, 64)
    gen = torch.Generator().manual_seed(2)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    S0, z0 = _rand(B, H, K, V, gen=gen), torch.rand(B, H, K, generator=gen, dtype=torch.float64) + 1
    kw = {"feature_map": "elu+1", "normalize": normalize, "output_final_state": True}

    def ref(q, k, v, S0, z0):
        o, (S, z) = naive_linear_attention(q, k, v, initial_state=(S0, z0), **kw)
        return o, S, z

    def fn(q, k, v, S0, z0):
        o, (S, z) = chunk_linear_attention(q, k, v, initial_state=(S0, z0), backend="triton", **kw)
        return o, S, z

    _check("linear_attention", ref, fn, [q, k, v, S0, z0], dtype)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_ssd_dispatches_to_the_kernel(dtype) -> None:
    Bsz, T, H, P, G, N = (2, 41, 4, 16, 2, 16) if not ON_CUDA else (2, 300, 8, 64, 2, 64)
    gen = torch.Generator().manual_seed(3)
    x = _rand(Bsz, T, H, P, gen=gen)
    dt = torch.rand(Bsz, T, H, generator=gen, dtype=torch.float64) * 0.5
    A = -torch.rand(H, generator=gen, dtype=torch.float64) - 0.1
    B, C = _rand(Bsz, T, G, N, gen=gen), _rand(Bsz, T, G, N, gen=gen)
    D, S0 = _rand(H, gen=gen), _rand(Bsz, H, P, N, gen=gen)

    def ref(*a):
        return naive_ssd(*a[:5], D=a[5], initial_state=a[6], output_final_state=True)

    def fn(*a):
        return chunk_ssd(*a[:5], D=a[5], initial_state=a[6], output_final_state=True, backend="triton")

    _check("ssd", ref, fn, [x, dt, A, B, C, D, S0], dtype, shared_decay=2)


@pytest.mark.parametrize("dtype", _maybe_gpu([(d,) for d in DTYPES]))
def test_packed_variable_lengths_equal_separate_calls(dtype) -> None:
    """cu_seqlens: each packed sequence == its own call (state, decay and outputs)."""
    from longctx.ops.retention.triton import triton_simple_gla

    lens = [7, 16, 1, 40] if not ON_CUDA else [100, 64, 1, 900, 37]
    H, K, V = (2, 16, 16) if not ON_CUDA else (4, 64, 64)
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    gen = torch.Generator().manual_seed(4)
    q, k, v = _rand(1, T, H, K, gen=gen), _rand(1, T, H, K, gen=gen), _rand(1, T, H, V, gen=gen)
    g = -torch.rand(1, T, H, generator=gen, dtype=torch.float64) * 0.3
    S0 = _rand(len(lens), H, K, V, gen=gen)

    def ref(q, k, v, g, S0):
        return _packed_reference(q, k, v, g, S0, cu, scale=0.5)

    def fn(q, k, v, g, S0):
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        return triton_simple_gla(q, k, v, g.to(dt), scale=0.5, initial_state=S0.to(dt),
                                 output_final_state=True, cu_seqlens=cu.to(q.device))

    _check("varlen", ref, fn, [q, k, v, g, S0], dtype)


def test_backend_choice_and_errors() -> None:
    x = torch.zeros(1, 3, 1, 4)
    assert not wants_triton("op", "torch", x)
    assert not wants_triton("op", "auto", x)  # CPU tensors: PyTorch, even with the interpreter on
    with pytest.raises(ValueError, match="backend must be one of"):
        wants_triton("op", "cuda", x)
    with pytest.raises(ValueError, match="cannot run this call: key / feature dim 300"):
        # on the kernels' device: CPU tensors under the interpreter, CUDA ones on a GPU machine
        wants_triton("op", "triton", x.to(DEVICE), supported=kernel_unsupported(300, 4))
    with use_backend("torch"):
        assert not wants_triton("op", None, x)
    with pytest.raises(ValueError, match="set_backend: backend must be"):
        use_backend("fast").__enter__()


def test_auto_picks_only_kernels_verified_on_a_gpu(monkeypatch) -> None:
    """On CUDA tensors "auto" runs a kernel only once its gpu tests have passed on a GPU; the
    others (exact in the interpreter) need backend="triton"."""
    from types import SimpleNamespace

    from longctx.ops.common import backend

    monkeypatch.setattr(backend, "has_triton", lambda: True)
    on_cuda = SimpleNamespace(is_cuda=True)
    for op in ("chunk_gla", "chunk_delta_rule", "chunk_gated_delta_rule"):
        assert op in backend.GPU_VERIFIED and wants_triton(op, "auto", on_cuda)
    for op in ("chunk_log_linear_mamba2", "chunk_log_linear_gated_deltanet", "gla_step"):
        assert not wants_triton(op, "auto", on_cuda)
        assert wants_triton(op, "triton", on_cuda)
    # the fused decode steps: only while a CUDA graph is captured (faster there, slower eagerly)
    monkeypatch.setattr(backend, "stream_capturing", lambda: True)
    for op in ("gla_step", "gated_delta_rule_step", "ssd_step", "retention_step"):
        assert op in backend.GRAPH_VERIFIED_STEPS and wants_triton(op, "auto", on_cuda)
    assert not wants_triton("chunk_log_linear_mamba2", "auto", on_cuda)
    assert not wants_triton("gla_step", "auto", SimpleNamespace(is_cuda=False))


@pytest.mark.parametrize("op", _maybe_gpu([("simple_gla",), ("gla",)]))
def test_half_states_kept_rounded_give_the_same_bits(op, monkeypatch) -> None:
    """Half inputs: the per-chunk states (and GLA's scores) kept in the input dtype give
    bit-identical outputs, final state and gradients to keeping them in fp32 (every reader rounds
    them to the input dtype first). bf16 on a GPU; float16 in the interpreter (its bf16 is wrong)."""
    from longctx.ops.common import triton_gla, triton_scalar_decay
    from longctx.ops.gla.triton import triton_gla as gla_kernel
    from longctx.ops.retention.triton import triton_simple_gla

    B, T, H, K, V = (1, 300, 2, 128, 128) if ON_CUDA else (1, 40, 2, 16, 16)
    half = torch.bfloat16 if ON_CUDA else torch.float16
    tiles = {} if ON_CUDA or op == "simple_gla" else {"chunk_size": 16, "sub_chunk": 8}
    gen = torch.Generator().manual_seed(4)
    q, k, v = (_rand(B, T, H, d, gen=gen).to(DEVICE, half) for d in (K, K, V))
    gshape = (B, T, H) if op == "simple_gla" else (B, T, H, K)
    g = (-torch.rand(*gshape, generator=gen) * 0.3).to(DEVICE)
    S0 = _rand(B, H, K, V, gen=gen).float().to(DEVICE)
    fn = triton_simple_gla if op == "simple_gla" else gla_kernel

    def run():
        inputs = [t.clone().requires_grad_() for t in (q, k, v, g, S0)]
        o, ht = fn(*inputs[:4], scale=K ** -0.5, initial_state=inputs[4], output_final_state=True, **tiles)
        return [o, ht, *_grads((o, ht), inputs, seed=1)]

    kept_half = run()
    assert triton_scalar_decay._state_dtype(half) == half
    for mod in (triton_scalar_decay, triton_gla):
        monkeypatch.setattr(mod, "_state_dtype", lambda dtype: torch.float32)
    kept_fp32 = run()
    for i, (a, b) in enumerate(zip(kept_half, kept_fp32, strict=True)):
        assert torch.isfinite(a).all(), f"{op}: result {i} is not finite"
        if i == 5:
            # dg (fp32) sums S ⊙ dS over the tile as it was loaded: a bf16 and an fp32 load of the
            # same rounded values are laid out differently over the threads, so the order of that
            # sum (not its terms) differs. Measured on an H100: 4.8e-7 absolute, the last bit.
            torch.testing.assert_close(a, b, rtol=0.0, atol=1e-6 * b.abs().max().item())
            continue
        assert torch.equal(a, b), f"{op}: result {i} differs by {(a.double() - b.double()).abs().max():.3g}"


@pytest.mark.skipif(ON_CUDA, reason="the interpreter's float16 (bf16 on the GPU: the tests above)")
@pytest.mark.parametrize("gate", [1.0, 30.0])
def test_decay_gradient_in_half_precision_is_as_exact_as_the_others(gate) -> None:
    """float16 in the interpreter, decays gate * logsigmoid(x): dg's error is that of dq, dk, dv
    (0.13 with harsh decays, 300x theirs, when it came from q . dq - k . dk reverse-summed)."""
    from longctx.ops.retention.triton import triton_simple_gla

    B, T, H, K, V = 1, 100, 2, 32, 32
    gen = torch.Generator().manual_seed(3)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    g = torch.nn.functional.logsigmoid(_rand(B, T, H, gen=gen)) * gate

    def ref(q, k, v, g):
        return naive_gla(q, k, v, g[..., None].expand(B, T, H, K), scale=0.5, output_final_state=True)

    def fn(q, k, v, g):
        return triton_simple_gla(q, k, v, g, scale=0.5, output_final_state=True)

    check_half_gradients(f"gate {gate}", ref, fn, [q, k, v, g], 3, ("dq", "dk", "dv", "dg"))


@pytest.mark.parametrize("dtype", _maybe_gpu([(torch.float32,)]))
def test_harsh_decay_in_a_partial_chunk_stays_finite(dtype) -> None:
    """A decay of e^-6 per token drives a chunk's cumulative G past fp32's e^-88 inside the last,
    partial chunk (T = 37 of 64): the rows past the end must not turn e^{G_i - G_j} into inf (and
    0 * inf into NaN in the real rows' gradients)."""
    from longctx.ops.retention.triton import triton_simple_gla

    B, T, H, K, V = 1, 37, 2, 16, 8
    gen = torch.Generator().manual_seed(5)
    q, k, v = _rand(B, T, H, K, gen=gen), _rand(B, T, H, K, gen=gen), _rand(B, T, H, V, gen=gen)
    g = torch.full((B, T, H), -6.0, dtype=torch.float64)

    def ref(q, k, v, g):
        return naive_gla(q, k, v, g[..., None].expand(B, T, H, K), scale=K ** -0.5,
                         output_final_state=True)

    def fn(q, k, v, g):
        return triton_simple_gla(q, k, v, g.float(), scale=K ** -0.5, output_final_state=True)

    _check("harsh_decay", ref, fn, [q, k, v, g], dtype)


@pytest.mark.parametrize(("B", "T", "chunk"), [(3, 37, 16), (1, 64, 64), (2, 1, 16), (4, 0, 16)])
def test_uniform_layout_is_the_layout_of_its_offsets(B: int, T: int, chunk: int) -> None:
    # rows of one length: offsets and chunk layout made on the device from (B, T), no read-back;
    # they must equal what the offsets give when read (a clone is not recognised as uniform)
    from longctx.ops.common.triton_scalar_decay import (
        chunk_layout,
        max_seqlen,
        packed_sequences,
        uniform_rows,
    )

    cu = packed_sequences(B, T, torch.device("cpu"))[0]
    assert cu is packed_sequences(B, T, torch.device("cpu"))[0]  # kept
    given = cu.clone()
    assert uniform_rows(cu) == (B, T) and uniform_rows(given) is None
    assert cu.tolist() == [b * T for b in range(B + 1)] and cu.dtype == torch.int32
    fast, slow = chunk_layout(cu, chunk), chunk_layout(given, chunk)
    assert fast[2] == slow[2] == B * -(-T // chunk)
    for a, b in zip(fast[:2], slow[:2], strict=True):
        assert a.dtype == b.dtype == torch.int32 and torch.equal(a, b)
    assert max_seqlen(cu) == max_seqlen(given) == T


def test_uniform_offsets_cache_is_bounded() -> None:
    from longctx.ops.common import triton_scalar_decay as sd

    first = sd.packed_sequences(1, 12345, torch.device("cpu"))[0]
    for T in range(1, sd._UNIFORM_MAX + 1):
        sd.packed_sequences(1, 20000 + T, torch.device("cpu"))
    assert len(sd._UNIFORM) <= sd._UNIFORM_MAX and len(sd._UNIFORM_OF) == len(sd._UNIFORM)
    assert sd.uniform_rows(first) is None  # evicted: read like given offsets from now on
    assert sd.chunk_layout(first, 16)[2] == -(-12345 // 16)


@pytest.mark.parametrize(("dtype", "gated", "groups"),
                         _maybe_gpu([(d, gated, gs) for d in DTYPES for gated in ("k", "delta", False) for gs in (2, 3)]))
def test_inference_forward_in_groups_of_chunks_matches_recurrence(dtype, gated, groups, monkeypatch) -> None:
    """No gradient wanted: the state pass keeps only every ``groups``-th chunk's state and the
    output pass carries S through the group's chunks. Outputs and final states of packed sequences
    (a partial last group and chunk, a 1-token sequence) match the recurrence, with the initial
    states, and the forward kept for the backward pass (gradient wanted) to rounding. gated "k" /
    "delta": the output pass puts the gate on K^T or on V's rows (``GATE_ON_DELTA``). Groups of 3
    run the output pass and the groups' state pass at their widest tiles (BV 128; triton_launch.WIDE_BV)."""
    from longctx.ops.common import triton_scalar_decay
    from longctx.ops.common.triton_launch import launch_overrides

    monkeypatch.setattr(triton_scalar_decay, "GATE_ON_DELTA", gated == "delta")
    lens = [83, 16, 1, 50] if not ON_CUDA else [1000, 64, 1, 3000, 37]
    run, o_ref, S_ref, first = _packed_inference_case(lens, gated, dtype, seed=11)
    wide = {"scalar_decay.fwd_grouped": {"BV": 128, "num_warps": 8},
            "scalar_decay.fwd_h_group": {"BK": 64, "BV": 128}} if groups == 3 else {}
    with launch_overrides(wide):  # (check_grouped_forward's GS adds to them)
        check_grouped_forward(run, "scalar_decay.fwd_grouped", groups, o_ref, S_ref, first, dtype)


@pytest.mark.parametrize(("dtype", "gated", "walk"),
                         _maybe_gpu([(d, gated, walk) for d in DTYPES for gated in ("k", "delta", False)
                                     for walk in (False, True)]))
def test_inference_forward_by_look_back_matches_recurrence(dtype, gated, walk, monkeypatch) -> None:
    """The inference forward in one launch (``LOOKBACK_FORWARD``): every group finds the state at its
    start by look-back over the earlier groups' published parts. Packed sequences with initial and
    final states (a partial last group and chunk, a 1-token sequence; groups of 3 chunks, BV 128 on
    the GPU) == the recurrence, and == the training forward to rounding. walk: no group but a
    sequence's first publishes its end state, so each look-back sums every earlier group's own part
    (in the interpreter the programs run in order, and would otherwise find the end state one group
    back). GPU: without walk, the real race of programs and flags."""
    from longctx.ops.common import triton_scalar_decay
    from longctx.ops.common.triton_launch import launch_overrides

    monkeypatch.setattr(triton_scalar_decay, "LOOKBACK_FORWARD", True)
    monkeypatch.setattr(triton_scalar_decay, "LOOKBACK_INCLUSIVE", not walk)
    monkeypatch.setattr(triton_scalar_decay, "GATE_ON_DELTA", gated == "delta")
    # 200 tokens: 13 chunks of 16, five groups (a walk of four over the groups' own parts)
    lens = [83, 16, 1, 200] if not ON_CUDA else [1000, 64, 1, 3000, 37, 20000]
    run, o_ref, S_ref, first = _packed_inference_case(lens, gated, dtype, seed=12)
    with launch_overrides({"scalar_decay.fwd_lookback": {"BV": 128, "num_warps": 8}} if ON_CUDA and not walk else {}):
        check_grouped_forward(run, "scalar_decay.fwd_lookback", 3, o_ref, S_ref, first, dtype)


def _packed_inference_case(lens: list[int], gated, dtype, seed: int):
    """Packed sequences of ``lens`` with initial states for the scalar-decay inference forward
    (H, K, V, chunk = 2, 80, 20, 16 in the interpreter, K 80: two pieces of S; 4, 128, 128, 64 on a
    GPU; a decay when ``gated``): (run, o_ref, S_ref, q), run() the op with its final state, the
    references from the recurrence."""
    from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk

    H, K, V, chunk = (2, 80, 20, 16) if not ON_CUDA else (4, 128, 128, 64)
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    gen = torch.Generator().manual_seed(seed)
    q, k, v = _rand(1, T, H, K, gen=gen), _rand(1, T, H, K, gen=gen), _rand(1, T, H, V, gen=gen)
    q, k = q * K ** -0.5, k * K ** -0.5
    g = -torch.rand(1, T, H, generator=gen, dtype=torch.float64) * 0.3 if gated else torch.zeros(1, T, H, dtype=torch.float64)
    S0 = _rand(len(lens), H, K, V, gen=gen)
    o_ref, S_ref = _packed_reference(q, k, v, g, S0, cu, scale=0.5)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    args = [t.to(DEVICE, dtype) for t in (q, k, v)]
    g_in = g.to(DEVICE, acc) if gated else None

    def run():
        return scalar_decay_chunk(*args, g_in, scale=0.5, initial_state=S0.to(DEVICE, acc),
                                  output_final_state=True, cu_seqlens=cu.to(DEVICE), chunk_size=chunk)

    return run, o_ref, S_ref, args[0]


def check_grouped_forward(run, kernel: str, groups: int, o_ref, S_ref, first_input, dtype) -> None:
    """``run()`` (outputs, final state) under ``kernel``'s GS = groups without a gradient == the
    float64 references, and == the training forward (``first_input`` then requires a gradient:
    the per-chunk kernels, their states kept for the backward) to rounding."""
    from longctx.ops.common.triton_launch import launch_overrides

    with launch_overrides({kernel: {"GS": groups}}), torch.no_grad():
        o, S = run()
    assert_close(o_ref, o.double().cpu(), TOL[dtype], "grouped forward: o")
    assert_close(S_ref, S.double().cpu(), TOL[dtype], "grouped forward: final state")
    first_input.requires_grad_()
    o_train, S_train = run()
    assert_close(o_train.detach().double(), o.double(), TOL[dtype], "grouped vs per-chunk: o")
    assert_close(S_train.detach().double(), S.double(), TOL[dtype], "grouped vs per-chunk: final state")


def test_chunks_per_group_leaves_every_sm_work() -> None:
    """The grouping is 8 or 16 chunks (2 and 4 lost to the per-chunk kernels on an H100) and keeps
    >= 1 program per SM in the output pass, and none off CUDA (no SM count to size it by)."""
    from longctx.ops.common.triton_scalar_decay import _chunks_per_group

    assert _chunks_per_group(1024, 16, 128, 64, torch.device("cpu")) == 1
    if ON_CUDA:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        for NC in (1, 64, 256, 1024, 100_000):
            gs = _chunks_per_group(NC, 16, 128, 64, torch.device("cuda"))
            assert gs in (1, 8, 16)
            assert gs == 1 or NC * 16 * 2 // gs >= sms
            assert gs == 16 or NC * 16 * 2 // 16 < sms  # the larger group wherever it fits
