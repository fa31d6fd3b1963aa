"""Log-linear attention on the level path (``log_linear_by_levels``: the levels inside chunks in
PyTorch, one call of the base's Triton kernel per chunk level) against the float64 matrix form:
the output, the final Fenwick state and every gradient (q, k, v, g, beta, lambda_levels), over
Gated DeltaNet and GLA, and over a scalar decay / none when a final state is asked for (without
one those run the fused kernels of test_triton_log_linear.py).

Without CUDA the kernels run in Triton's CPU interpreter in float64 (exact to rounding; chunks of
16 so several chunk levels run); on a GPU (marker ``gpu``) in float32 / bfloat16.
"""

from __future__ import annotations

import collections
import itertools

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.log_linear import (
    FenwickState,
    chunk_log_linear_attention,
    chunk_log_linear_gated_deltanet,
    naive_log_linear_attention,
    naive_log_linear_gated_deltanet,
    required_levels,
)
from tests.helpers import assert_close
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
F64 = torch.float64
TOL = {torch.float64: 1e-10, torch.float32: 3e-4, torch.bfloat16: 4e-2}
# the gates' gradients sum nearly cancelling terms over the sequence (see test_triton_gla.py)
TOL_G = {torch.float64: 1e-10, torch.float32: 2e-3, torch.bfloat16: 0.2}


def _inputs(base: str, B: int, T: int, H: int, K: int, V: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    x = {"q": r(B, T, H, K), "k": r(B, T, H, K), "v": r(B, T, H, V),
         "lambda_levels": torch.rand(B, T, H, required_levels(T - 1) + 1, generator=gen, dtype=F64) + 0.1}
    if base == "gated_deltanet":
        x["g"] = F.logsigmoid(r(B, T, H) + 3)
        x["beta"] = torch.sigmoid(r(B, T, H))
    else:
        x["k"] = x["k"] * K ** -0.5
    if base == "gla":
        x["g"] = F.logsigmoid(r(B, T, H, K) + 3)
    elif base == "scalar":
        x["g"] = F.logsigmoid(r(B, T, H) + 3)
    return x


def _run(base: str, x: dict, **kw):
    if base == "gated_deltanet":
        naive, chunk = naive_log_linear_gated_deltanet, chunk_log_linear_gated_deltanet
        kw["use_qk_l2norm"] = True
    else:
        naive, chunk = naive_log_linear_attention, chunk_log_linear_attention
    return naive if kw.pop("naive", False) else chunk, kw


def _check(base: str, x: dict, dtype: torch.dtype, chunk_size: int, monkeypatch, final: bool = False,
           t0: int = 0) -> None:
    """Run ``x`` (float64) through the level path in ``dtype`` and the matrix form; with t0 > 0 the
    first t0 tokens make an initial FenwickState (by the matrix form) that both continue from."""
    import longctx.ops.log_linear.triton as ll_triton

    ran = []
    levels = ll_triton.log_linear_by_levels
    monkeypatch.setattr(ll_triton, "log_linear_by_levels", lambda *a: ran.append(1) or levels(*a))
    naive, kw = _run(base, x, naive=True)
    chunk, _ = _run(base, x)
    if t0:
        S0 = naive(**{n: t[:, :t0] for n, t in x.items()}, **kw, output_final_state=True)[1]
        x = {**{n: t[:, t0:] for n, t in x.items()}, "S0": S0.S}
    names = list(x)
    ref_in = {n: t.clone().requires_grad_() for n, t in x.items()}
    dev_in = {n: t.detach().to(DEVICE, dtype).requires_grad_() for n, t in x.items()}

    def call(fn, inputs, **more):
        args = {n: t for n, t in inputs.items() if n != "S0"}
        if t0:
            more["initial_state"] = FenwickState(inputs["S0"], torch.tensor(t0))
        return fn(**args, **kw, output_final_state=final, **more)

    ref, ref_state = call(naive, ref_in)
    out, state = call(chunk, dev_in, chunk_size=chunk_size, backend="triton")
    assert ran == [1], "the level path did not run"
    assert out.dtype == dtype and out.device.type == DEVICE
    assert_close(ref, out.double().cpu(), TOL[dtype], "o")
    gen = torch.Generator().manual_seed(7)
    loss_ref, loss_dev = 0, 0
    if final:
        assert int(state.t) == int(ref_state.t) == t0 + x["q"].shape[1]
        assert_close(ref_state.S, state.S.double().cpu(), TOL[dtype], "S")
        cot_s = torch.randn(ref_state.S.shape, generator=gen, dtype=F64)
        loss_ref, loss_dev = (ref_state.S * cot_s).sum(), (state.S.double() * cot_s.to(DEVICE)).sum()
    else:
        assert state is None
    cot = torch.randn(ref.shape, generator=gen, dtype=F64)
    ref_g = torch.autograd.grad((ref * cot).sum() + loss_ref, [ref_in[n] for n in names])
    dev_g = torch.autograd.grad((out.double() * cot.to(DEVICE)).sum() + loss_dev, [dev_in[n] for n in names])
    for n, r, o in zip(names, ref_g, dev_g, strict=True):
        assert_close(r, o.double().cpu(), (TOL_G if n == "g" else TOL)[dtype], f"d{n}")


interpreter = pytest.mark.skipif(ON_CUDA, reason="the interpreter cases (a GPU runs the gpu-marked ones)")
GPU_MARKS = [pytest.mark.gpu, pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")]


def _cases(bases: list[str], sizes: list[tuple], final: bool, on_gpu: bool) -> list:
    """pytest params (base, dtype, (B, t0, T, H, K, V, chunk), final): float64 in the CPU
    interpreter, or float32 and bfloat16 on a GPU (marker ``gpu``)."""
    marks, dtypes = (GPU_MARKS, [torch.float32, torch.bfloat16]) if on_gpu else ([interpreter], [F64])
    return [pytest.param(b, dt, size, final, marks=marks, id=f"{b}-{str(dt)[6:]}-{size}-{'final' if final else 'o'}")
            for b in bases for dt in dtypes for size in sizes]


BASES, ALL = ["gated_deltanet", "gla"], ["gated_deltanet", "gla", "scalar", "linear"]
CASES = [
    # T = 71, chunks of 16: 5 chunks (the last partial), chunk levels m = 1..3; T = 11: one chunk
    *_cases(BASES, [(2, 0, 71, 2, 16, 8, 16), (1, 0, 11, 1, 8, 16, 16)], False, on_gpu=False),
    # final states: levels inside the last chunk (T = 71), position 64 reads one level, one chunk
    *_cases(ALL, [(1, 0, 71, 2, 8, 8, 16), (1, 0, 64, 1, 8, 8, 16), (2, 0, 11, 1, 8, 8, 16)], True, on_gpu=False),
    # from an initial state: t0 = 21 (mid-chunk, levels 1..5 in the state), T = 50 crosses
    # chunk-level blocks; t0 = 64 (a block boundary), T = 7 stays inside one chunk
    *_cases(ALL[:3], [(1, 21, 50, 2, 8, 8, 16), (2, 64, 7, 1, 8, 8, 16)], True, on_gpu=False),
    *_cases(BASES, [(2, 0, 300, 4, 64, 64, 64), (1, 0, 1000, 2, 128, 64, 64)], False, on_gpu=True),
    *_cases(ALL, [(2, 0, 300, 4, 64, 64, 64), (1, 0, 1024, 2, 64, 64, 64)], True, on_gpu=True),
    *_cases(ALL[:3], [(2, 300, 333, 4, 64, 64, 64)], True, on_gpu=True),
    # chunks of 16 on a GPU: not with the GLA base (refused there, see the test below)
    *_cases(["gated_deltanet"], [(1, 0, 133, 2, 32, 16, 16)], False, on_gpu=True),
    *_cases(["gated_deltanet", "scalar"], [(1, 1024, 129, 2, 64, 64, 16)], True, on_gpu=True),
]


@pytest.mark.parametrize("base,dtype,size,final", CASES)
def test_levels_match_naive(base: str, dtype: torch.dtype, size: tuple, final: bool, monkeypatch) -> None:
    """The copies of the base, one per chunk level (a delta-rule base's fused training walks, the
    default, are pinned off here: test_fused_delta_training_matches_naive takes them)."""
    import longctx.ops.log_linear.triton as ll_triton

    monkeypatch.setattr(ll_triton, "FUSED_DELTA_TRAINING", False)
    B, t0, T, H, K, V, chunk = size
    x = _inputs(base, B, t0 + T, H, K, V, seed=t0 + T + final)
    _check(base, x, dtype, chunk, monkeypatch, final=final, t0=t0)


TRAINING_CASES = [
    # chunks of 16: T = 71 reads chunk levels 1..3; T = 150, two rows; T = 11: one chunk, no chunk level
    *_cases(["gated_deltanet", "deltanet"], [(2, 0, 71, 2, 16, 8, 16), (1, 0, 150, 1, 32, 16, 16),
                                              (1, 0, 11, 1, 8, 16, 16)], False, on_gpu=False),
    *_cases(["gated_deltanet"], [(2, 0, 300, 4, 64, 64, 64), (1, 0, 1000, 2, 128, 64, 64)], False, on_gpu=True),
]


@pytest.mark.parametrize("span", [0, 2], ids=["walks", "segments"])
@pytest.mark.parametrize("base,dtype,size,final", TRAINING_CASES)
def test_fused_delta_training_matches_naive(base: str, dtype: torch.dtype, size: tuple, final: bool, span: int,
                                            monkeypatch) -> None:
    """A gradient wanted (``ll_triton.FUSED_DELTA_TRAINING``): the per-chunk pieces in PyTorch and
    every chunk level by ``triton_log_linear_delta_train``'s walks, forward and backward; the output
    and every gradient (q, k, v, g, beta, lambda_levels) match the float64 matrix form. "deltanet":
    the Gated DeltaNet op with g = 0. segments: the walks in runs of whole blocks of at least 2
    chunks (``triton_log_linear.WALK_SPAN``), the reverse walk too."""
    import longctx.ops.log_linear.triton as ll_triton
    from longctx.ops.common import triton_log_linear

    monkeypatch.setattr(ll_triton, "FUSED_DELTA_TRAINING", True)
    monkeypatch.setattr(triton_log_linear, "WALK_SPAN", span)
    ran = []
    training = ll_triton._delta_training
    monkeypatch.setattr(ll_triton, "_delta_training", lambda *a: ran.append(1) or training(*a))
    B, _, T, H, K, V, chunk = size
    x = _inputs("gated_deltanet", B, T, H, K, V, seed=T + 3)
    if base == "deltanet":
        x["g"] = torch.zeros_like(x["g"])
    _check("gated_deltanet", x, dtype, chunk, monkeypatch)
    assert ran == [1], "the fused training path did not run"


@pytest.mark.parametrize("dtype", [pytest.param(F64, marks=interpreter),
                                   *[pytest.param(d, marks=GPU_MARKS) for d in (torch.float32, torch.bfloat16)]])
def test_fused_delta_training_packed_equals_separate_calls(dtype: torch.dtype, monkeypatch) -> None:
    """Packed sequences (cu_seqlens) on the fused training path: outputs and gradients equal each
    sequence's own call."""
    import longctx.ops.log_linear.triton as ll_triton

    monkeypatch.setattr(ll_triton, "FUSED_DELTA_TRAINING", True)
    lens = [23, 40, 1, 37] if not ON_CUDA else [300, 64, 1, 700]
    H, K, V, chunk = (2, 16, 8, 16) if not ON_CUDA else (2, 64, 64, 64)
    x = _inputs("gated_deltanet", 1, sum(lens), H, K, V, seed=9)
    dev = {n: t.to(DEVICE, dtype).requires_grad_() for n, t in x.items()}
    cu = torch.tensor([0, *itertools.accumulate(lens)], device=DEVICE)
    packed = ll_triton.triton_log_linear_gated_deltanet(**dev, use_qk_l2norm=True, chunk_size=chunk, cu_seqlens=cu)
    cot = torch.randn(packed.shape, generator=torch.Generator().manual_seed(2), dtype=F64).to(DEVICE, dtype)
    grads = torch.autograd.grad((packed * cot).sum(), list(dev.values()))
    for s, n in zip([0, *itertools.accumulate(lens)], lens, strict=False):
        alone_in = {k: t.detach()[:, s:s + n].clone().requires_grad_() for k, t in dev.items()}
        alone = ll_triton.triton_log_linear_gated_deltanet(**alone_in, use_qk_l2norm=True, chunk_size=chunk)
        assert_close(alone.double().cpu(), packed[:, s:s + n].double().cpu(), TOL[dtype], f"o {s}")
        alone_g = torch.autograd.grad((alone * cot[:, s:s + n]).sum(), list(alone_in.values()))
        for name, a, b in zip(x, alone_g, grads, strict=True):
            assert_close(a.double().cpu(), b[:, s:s + n].double().cpu(), (TOL_G if name == "g" else TOL)[dtype],
                         f"d{name} {s}")


def test_delta_levels_refuses_bad_shapes() -> None:
    """``delta_levels`` names the argument and the shape it expected."""
    from longctx.ops.common.triton_log_linear_delta_train import delta_levels

    x, cu = torch.zeros(1, 32, 2, 8, device=DEVICE), torch.tensor([0, 32], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"khat, w, qt must share a shape \[1, TT, H, K\]"):
        delta_levels(x, x[..., :4], x, x, torch.ones(2, 2, device=DEVICE), cu, 1, 16)
    with pytest.raises(ValueError, match=r"decay must be \[chunks, H\] with H = 2, got \[2, 3\]"):
        delta_levels(x, x, x, x, torch.ones(2, 3, device=DEVICE), cu, 1, 16)


def test_level_dispatch_and_fallbacks() -> None:
    x = _inputs("gated_deltanet", 1, 20, 2, 8, 8, seed=1)
    ref, _ = naive_log_linear_gated_deltanet(**x, use_qk_l2norm=True)
    auto, _ = chunk_log_linear_gated_deltanet(**x, use_qk_l2norm=True, chunk_size=16)  # CPU: PyTorch
    assert_close(ref, auto, 1e-10)
    y = _inputs("gla", 1, 20, 2, 8, 8, seed=1)
    with pytest.raises(ValueError, match="cannot run this call: key / feature dim 300"):
        z = _inputs("gla", 1, 4, 1, 300, 8, seed=1)  # on the kernels' device (else: "needs CUDA")
        chunk_log_linear_attention(**{n: t.to(DEVICE) for n, t in z.items()}, backend="triton")
    assert chunk_log_linear_attention(**y, backend="torch")[0].shape == (1, 20, 2, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
def test_gla_base_refuses_small_chunks_on_a_gpu() -> None:
    """The GLA kernel with chunks of 16 failed these tests on an H100 (2026-12-06): a GPU runs
    the GLA base with chunks of 64 only; "auto" falls back to PyTorch, "triton" says why."""
    from longctx.ops.log_linear.triton import triton_log_linear_attention

    x = {n: t.to(DEVICE, torch.float32) for n, t in _inputs("gla", 1, 40, 2, 16, 8, seed=2).items()}
    with pytest.raises(ValueError, match="GLA base runs on a GPU with chunk_size 64 only"):
        chunk_log_linear_attention(**x, chunk_size=16, backend="triton")
    with pytest.raises(ValueError, match="GLA base runs on a GPU with chunk_size 64 only"):
        triton_log_linear_attention(**x, chunk_size=16)
    ref, _ = naive_log_linear_attention(**{n: t.double().cpu() for n, t in x.items()})
    out, _ = chunk_log_linear_attention(**x, chunk_size=16, backend="auto")
    assert_close(ref, out.double().cpu(), TOL[torch.float32], "o")


# packed variable lengths: sequences of 23, 40, 1 and 37 tokens (chunks of 16), one row
LENS = [23, 40, 1, 37]


def _packed_vs_each(fn, naive, x: dict, per_token: set[str], dtype: torch.dtype, chunk_size: int = 16,
                    **kw) -> None:
    """``fn`` on the sequences packed with cu_seqlens == ``naive`` on each sequence alone: output
    and the gradient of every input (tensors named in ``per_token`` are [1, total, ...])."""
    cu = torch.tensor([0, *itertools.accumulate(LENS)])
    ref_in = {n: t.clone().requires_grad_() for n, t in x.items()}
    outs = []
    for a, b in itertools.pairwise(cu.tolist()):
        part = {n: (t[:, a:b] if n in per_token else t) for n, t in ref_in.items()}
        if "lambda_levels" in part:
            part["lambda_levels"] = part["lambda_levels"][..., : required_levels(b - a - 1)]
        outs.append(naive(**part, **kw)[0])
    ref = torch.cat(outs, dim=1)
    dev_in = {n: t.detach().to(DEVICE, dtype).requires_grad_() for n, t in x.items()}
    out = fn(**dev_in, **kw, chunk_size=chunk_size, cu_seqlens=cu.to(DEVICE))
    assert_close(ref, out.double().cpu(), TOL[dtype], "o")
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    ref_g = torch.autograd.grad((ref * cot).sum(), list(ref_in.values()))
    dev_g = torch.autograd.grad((out.double() * cot.to(DEVICE)).sum(), list(dev_in.values()))
    for n, r, o in zip(ref_in, ref_g, dev_g, strict=True):
        assert_close(r, o.double().cpu(), (TOL_G if n in ("g", "A") else TOL)[dtype], f"d{n}")


VARLEN_DTYPES = [pytest.param(F64, marks=interpreter)] + [
    pytest.param(dt, marks=GPU_MARKS) for dt in (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("dtype", VARLEN_DTYPES)
@pytest.mark.parametrize("base", ["gated_deltanet", "gla", "scalar", "linear"])
def test_packed_sequences_match_each_alone(base: str, dtype: torch.dtype) -> None:
    from longctx.ops.log_linear.triton import (
        triton_log_linear_attention,
        triton_log_linear_gated_deltanet,
    )

    x = _inputs(base, 1, sum(LENS), 2, 16, 8, seed=5)
    if base == "gated_deltanet":
        _packed_vs_each(triton_log_linear_gated_deltanet, naive_log_linear_gated_deltanet, x, set(x), dtype,
                        use_qk_l2norm=True)
    else:
        # the GLA base: chunks of 64 on a GPU (see test_gla_base_refuses_small_chunks_on_a_gpu)
        chunk = 64 if base == "gla" and ON_CUDA else 16
        _packed_vs_each(triton_log_linear_attention, naive_log_linear_attention, x, set(x), dtype, chunk)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("dtype", VARLEN_DTYPES)
def test_packed_sequences_mamba2(dtype: torch.dtype, grouped: bool, monkeypatch) -> None:
    """grouped: ``GROUPED_LEVELS`` with groups of 2 chunks (so the walk over groups runs)."""
    from longctx.ops.common import triton_log_linear
    from longctx.ops.log_linear import naive_log_linear_mamba2
    from longctx.ops.log_linear.triton import triton_log_linear_mamba2

    monkeypatch.setattr(triton_log_linear, "GROUPED_LEVELS", grouped)
    monkeypatch.setattr(triton_log_linear, "LEVEL_GROUP", 2)

    gen = torch.Generator().manual_seed(8)
    T = sum(LENS)
    x = {"x": torch.randn(1, T, 2, 8, generator=gen, dtype=F64),
         "dt": F.softplus(torch.randn(1, T, 2, generator=gen, dtype=F64) - 1),
         "A": -torch.rand(2, generator=gen, dtype=F64) - 0.1,
         "B": torch.randn(1, T, 1, 16, generator=gen, dtype=F64),
         "C": torch.randn(1, T, 1, 16, generator=gen, dtype=F64),
         "lambda_levels": torch.rand(1, T, 2, required_levels(T - 1), generator=gen, dtype=F64),
         "D": torch.randn(2, generator=gen, dtype=F64)}
    _packed_vs_each(triton_log_linear_mamba2, naive_log_linear_mamba2, x,
                    {"x", "dt", "B", "C", "lambda_levels"}, dtype)


def test_cu_seqlens_errors_name_the_argument() -> None:
    from longctx.ops.log_linear.triton import triton_log_linear_attention

    x = _inputs("linear", 1, 20, 1, 8, 8, seed=1)
    for cu, match in [(torch.tensor([0, 5, 19]), "from 0 to T = 20"), (torch.tensor([0, 12, 8, 20]), "decreasing"),
                      (torch.tensor([[0, 20]]), "1-D integer tensor"), (torch.tensor([0.0, 20.0]), "1-D integer")]:
        with pytest.raises(ValueError, match=f"triton_log_linear_attention: cu_seqlens must.*{match}"):
            triton_log_linear_attention(**x, cu_seqlens=cu)
    y = _inputs("linear", 2, 10, 1, 8, 8, seed=1)
    with pytest.raises(ValueError, match="B must be 1, got 2"):
        triton_log_linear_attention(**y, cu_seqlens=torch.tensor([0, 20]))


FUSED_CASES = [
    # (B, T, H, K, V, chunk): chunks of 16, 5 and 13 chunks (chunk levels 1..3 / 1..4), K = 32 in
    # two pieces of 16, and T = 20 (packed: 6 + 14, no chunk level at all); on a GPU K = 128 in two
    # pieces of 64 and 16 chunk levels of chunks of 64
    *[pytest.param(F64, s, marks=[interpreter])
      for s in [(2, 71, 2, 16, 8, 16), (1, 200, 1, 32, 16, 16), (1, 20, 2, 16, 8, 16)]],
    *[pytest.param(dt, s, marks=GPU_MARKS) for dt in (torch.float32, torch.bfloat16)
      for s in [(1, 1000, 2, 128, 64, 64), (2, 300, 4, 64, 64, 16)]],
]


@pytest.mark.parametrize(("gate_on_delta", "span"), [(False, 0), (True, 0), (False, 2)],
                         ids=["walks", "gate_on_delta", "segments"])
@pytest.mark.parametrize("dtype,size", FUSED_CASES)
def test_fused_delta_levels_match_naive(dtype: torch.dtype, size: tuple, gate_on_delta: bool, span: int,
                                        monkeypatch) -> None:
    """No gradient wanted, positions from 0, no state: log-linear Gated DeltaNet takes the fused
    inference forward (``triton_log_linear_delta``: one UT transform, the levels inside chunks in a
    kernel, one walk per chunk level), not PyTorch and the copies of the base; the output matches the float64 matrix form, and packed sequences
    (cu_seqlens) match each sequence alone. gate_on_delta: the level walk's gate on Delta's rows
    (``triton_log_linear_delta.LEVELS_GATE_ON_DELTA``); segments: each level's walk in runs of its
    blocks, at least 2 chunks (``WALK_SPAN``; levels 1 / 2 / 3 in runs of 2 / 4 / 8 chunks)."""
    import longctx.ops.log_linear.triton as ll_triton
    from longctx.ops.common import triton_log_linear, triton_log_linear_delta

    monkeypatch.setattr(triton_log_linear_delta, "LEVELS_GATE_ON_DELTA", gate_on_delta)
    monkeypatch.setattr(triton_log_linear, "WALK_SPAN", span)

    ran = []
    fused = ll_triton.delta_log_linear_forward
    monkeypatch.setattr(ll_triton, "FUSED_DELTA_LEVELS", True)  # the default, pinned here
    monkeypatch.setattr(ll_triton, "delta_log_linear_forward", lambda *a: ran.append(1) or fused(*a))
    B, T, H, K, V, chunk = size
    x = _inputs("gated_deltanet", B, T, H, K, V, seed=T)
    ref, _ = naive_log_linear_gated_deltanet(**x, use_qk_l2norm=True)
    dev = {n: t.to(DEVICE, dtype) for n, t in x.items()}
    with torch.no_grad():
        out, _ = chunk_log_linear_gated_deltanet(**dev, use_qk_l2norm=True, chunk_size=chunk, backend="triton")
        lens = [T // 3, T - T // 3]  # the first row cut into two packed sequences
        cu = torch.tensor([0, *itertools.accumulate(lens)], device=DEVICE)
        packed = ll_triton.triton_log_linear_gated_deltanet(
            **{n: t[:1] for n, t in dev.items()}, use_qk_l2norm=True, chunk_size=chunk, cu_seqlens=cu)
    assert ran == [1, 1], "the fused level pass did not run"
    assert_close(ref, out.double().cpu(), TOL[dtype], "o")
    for s, n in zip([0, lens[0]], lens, strict=True):
        alone, _ = naive_log_linear_gated_deltanet(**{k: t[:1, s:s + n] for k, t in x.items()}, use_qk_l2norm=True)
        assert_close(alone, packed[:, s:s + n].double().cpu(), TOL[dtype], f"packed {s}")


@pytest.mark.parametrize("span", [0, 1, 4, 64])
def test_walk_segments_cover_every_level_and_chunk_once(span: int) -> None:
    """The level walks' work list: every (sequence, level, chunk) in exactly one segment, each
    segment whole blocks of its level (starting at a multiple of 2^m chunks, at least max(2^m,
    span) long but at a sequence's end), the longest first; span 0: one walk per level and sequence."""
    from longctx.ops.common.triton_log_linear import walk_segments

    lens, BT, levels = [1000, 17, 0, 1, 300], 16, 6  # 63, 2, 0, 1 and 19 chunks
    seg = walk_segments(lens, BT, levels, span, torch.device("cpu"))
    assert seg.dtype == torch.int32 and seg.shape[1] == 4
    rows = seg.tolist()
    assert [r[3] for r in rows] == sorted((r[3] for r in rows), reverse=True)
    seen = collections.Counter()
    for i_n, i_m, t0, n in rows:
        NT = -(-lens[i_n] // BT)
        block = 1 << (i_m + 1)
        assert t0 % block == 0 and 0 < n and t0 + n <= NT
        assert n == NT - t0 or (n == NT if span == 0 else n == max(block, span))
        seen.update((i_n, i_m, t) for t in range(t0, t0 + n))
    want = [(i_n, i_m, t) for i_n, L in enumerate(lens) for i_m in range(levels) for t in range(-(-L // BT))]
    assert sorted(seen) == sorted(want) and set(seen.values()) == {1}
    if span == 0:
        assert len(rows) == levels * sum(1 for L in lens if L)


@interpreter
def test_fused_delta_levels_without_a_gate_equal_zero_gates() -> None:
    """g None (DeltaNet's transitions) is the gated pass with g = 0; a lam without the chunk levels'
    columns is refused by name."""
    from longctx.ops.common.triton_log_linear_delta import delta_log_linear_forward

    gen = torch.Generator().manual_seed(3)
    T, H, K, V = 80, 2, 16, 8
    r = lambda *s: torch.randn(*s, generator=gen, dtype=F64)
    q, k, v = r(1, T, H, K), F.normalize(r(1, T, H, K), dim=-1), r(1, T, H, V)
    beta, lam = torch.rand(1, T, H, generator=gen, dtype=F64), torch.rand(1, T, H, 8, generator=gen, dtype=F64)
    cu = torch.tensor([0, T], dtype=torch.int32)
    none = delta_log_linear_forward(q, k, v, beta, None, lam, cu, [T], 16)
    zeros = delta_log_linear_forward(q, k, v, beta, torch.zeros(1, T, H, dtype=F64), lam, cu, [T], 16)
    assert none.abs().max() > 0
    assert_close(zeros, none, 1e-12, "g None")
    with pytest.raises(ValueError, match="lam has 6 levels"):
        delta_log_linear_forward(q, k, v, beta, None, lam[..., :6], cu, [T], 16)
