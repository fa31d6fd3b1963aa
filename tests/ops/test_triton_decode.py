"""The fused decode-step kernel (``ops/common/triton_decode.py``) against each op's own step and
the float64 definitions.

Without CUDA it runs in Triton's CPU interpreter in float64 (exact to rounding, tiny sizes); on a
GPU (the same tests) in float32 against float64 references. Skipped where Triton is absent.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.ops.common.backend import MAX_DECODE_K, checkable, inplace_decode, stream_capturing
from longctx.ops.deltanet import delta_rule_step, naive_delta_rule
from longctx.ops.gated_deltanet import gated_delta_rule_step, naive_gated_delta_rule
from longctx.ops.gla import gla_step, naive_gla
from longctx.ops.linear_attention import linear_attention_step, naive_linear_attention
from longctx.ops.mamba2 import naive_ssd, ssd_step
from longctx.ops.retention import naive_retention, retention_step
from tests.helpers import assert_close, flatten_state
from tests.ops.triton_support import DEVICE, HAS_TRITON, ON_CUDA  # first: picks the interpreter

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")

DTYPE = torch.float32 if ON_CUDA else torch.float64  # the kernel's inputs and state
TOL = 2e-4 if ON_CUDA else 1e-10
B, T, H = 2, 3, 3


def _r(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64)


def _dev(x):
    """float64 CPU reference inputs -> the kernel's device and dtype (states stay nested)."""
    if isinstance(x, tuple):
        return tuple(_dev(t) for t in x)
    if isinstance(x, dict):
        return {n: _dev(t) for n, t in x.items()}
    return x.to(DEVICE, DTYPE) if isinstance(x, Tensor) else x


# Each case: (reference inputs [B, T, ...] in float64, initial state) and how to step / run naive.
Case = tuple[dict[str, Tensor], object, Callable, Callable]


def _linear_attention(K: int, V: int, feature_map: str, normalize: bool) -> Case:
    F_dim = 1 + K + K * K if feature_map == "taylor" else K
    x = {"q": _r(B, T, H, K), "k": _r(B, T, H, K), "v": _r(B, T, H, V)}
    s0 = (_r(B, H, F_dim, V), _r(B, H, F_dim).abs() + 1.0)  # a positive key sum
    opts = {"feature_map": feature_map, "normalize": normalize}

    def step(i, s, backend):
        return linear_attention_step(i["q"], i["k"], i["v"], s, **opts, backend=backend)

    def naive(x, s0):
        return naive_linear_attention(**x, **opts, initial_state=s0, output_final_state=True)

    return x, s0, step, naive


def _retention(K: int, V: int, custom: bool) -> Case:
    x = {"q": _r(B, T, H, K), "k": _r(B, T, H, K), "v": _r(B, T, H, V)}
    ld = F.logsigmoid(_r(H)) if custom else None

    def step(i, s, backend):
        return retention_step(i["q"], i["k"], i["v"], s, log_decay=_dev(ld), backend=backend)

    def naive(x, s0):
        return naive_retention(**x, log_decay=ld, initial_state=s0, output_final_state=True)

    return x, _r(B, H, K, V), step, naive


def _gla(K: int, V: int) -> Case:
    x = {"q": _r(B, T, H, K), "k": _r(B, T, H, K), "v": _r(B, T, H, V), "g": F.logsigmoid(_r(B, T, H, K))}

    def step(i, s, backend):
        return gla_step(i["q"], i["k"], i["v"], i["g"], s, backend=backend)

    def naive(x, s0):
        return naive_gla(**x, initial_state=s0, output_final_state=True)

    return x, _r(B, H, K, V), step, naive


def _deltanet(K: int, V: int, gated: bool) -> Case:
    x = {"q": _r(B, T, H, K), "k": _r(B, T, H, K), "v": _r(B, T, H, V)}
    if gated:
        x["g"] = F.logsigmoid(_r(B, T, H))
    x["beta"] = 2 * torch.sigmoid(_r(B, T, H))  # eigenvalues of I - beta k k^T in (-1, 1)
    op, ref = (gated_delta_rule_step, naive_gated_delta_rule) if gated else (delta_rule_step, naive_delta_rule)

    def step(i, s, backend):
        return op(**{f"{n}_t": t for n, t in i.items()}, state=s, use_qk_l2norm=True, backend=backend)

    def naive(x, s0):
        return ref(**x, initial_state=s0, output_final_state=True, use_qk_l2norm=True)

    return x, _r(B, H, K, V), step, naive


def _ssd(K: int, V: int, groups: int) -> Case:
    Hs = 2 * groups  # two heads per group
    x = {"x": _r(B, T, Hs, V), "dt": F.softplus(_r(B, T, Hs)), "A": -torch.rand(Hs, dtype=torch.float64) - 0.1,
         "B": _r(B, T, groups, K), "C": _r(B, T, groups, K)}
    D = _r(Hs)

    def step(i, s, backend):
        return ssd_step(i["x"], i["dt"], i["A"], i["B"], i["C"], s, D=_dev(D), backend=backend)

    def naive(x, s0):
        return naive_ssd(**x, D=D, initial_state=s0, output_final_state=True)

    return x, _r(B, Hs, V, K), step, naive  # SSD's state is [B, H, P, N]


CASES: dict[str, Callable[[int, int], Case]] = {
    "linear_attention-identity": lambda K, V: _linear_attention(K, V, "identity", False),
    "linear_attention-elu+1-normalize": lambda K, V: _linear_attention(K, V, "elu+1", True),
    "linear_attention-taylor-normalize": lambda K, V: _linear_attention(K, V, "taylor", True),
    "retention": lambda K, V: _retention(K, V, False),
    "retention-log_decay": lambda K, V: _retention(K, V, True),
    "gla": _gla,
    "deltanet": lambda K, V: _deltanet(K, V, False),
    "gated_deltanet": lambda K, V: _deltanet(K, V, True),
    "ssd-1group": lambda K, V: _ssd(K, V, 1),
    "ssd-2groups": lambda K, V: _ssd(K, V, 2),
}
SIZES = [(5, 37), (16, 8)] if not ON_CUDA else [(5, 37), (64, 64), (128, 128)]


@pytest.mark.parametrize("K,V", SIZES)
@pytest.mark.parametrize("name", list(CASES))
def test_step_matches_torch_step_and_naive(name: str, K: int, V: int) -> None:
    """backend="triton" step == backend="torch" step at every token, and T steps == naive (a
    feature dim over the kernel's limit, e.g. Taylor's 1 + K + K^2 at K = 64, is refused)."""
    x, s0, step, naive = CASES[name](K, V)
    if "taylor" in name and 1 + K + K * K > MAX_DECODE_K:
        with pytest.raises(ValueError, match="cannot run this call: key / feature dim"):
            step({n: (v[:, 0] if v.dim() > 1 else v) for n, v in _dev(x).items()}, _dev(s0), "triton")
        return
    ref_o, ref_s = naive(x, s0)
    s, outs = _dev(s0), []
    for t in range(T):
        i = {n: (v[:, t] if v.dim() > 1 else v) for n, v in _dev(x).items()}  # A [H] has no T
        o, s_new = step(i, s, "triton")
        o_ref, s_ref = step(i, s, "torch")
        assert_close(o_ref, o, TOL, f"{name} o_{t}")
        for a, b in zip(flatten_state(s_ref), flatten_state(s_new), strict=True):
            assert_close(a, b, TOL, f"{name} state after {t}")
        s = s_new
        outs.append(o)
    assert_close(ref_o, torch.stack(outs, 1).double().cpu(), TOL, f"{name} o vs naive")
    for a, b in zip(flatten_state(ref_s), flatten_state(s), strict=True):
        assert_close(a, b.double().cpu(), TOL, f"{name} final state vs naive")


def test_functional_by_default_inplace_inside_inplace_decode() -> None:
    """The step leaves its input state alone unless inside ``inplace_decode``; there the state
    tensor is overwritten and returned (a CUDA graph's static buffer)."""
    x, s0, step, _ = CASES["gated_deltanet"](6, 10)
    i = {n: v[:, 0] for n, v in _dev(x).items()}
    s = _dev(s0)
    before = s.clone()
    _, new = step(i, s, "triton")
    assert new.data_ptr() != s.data_ptr() and torch.equal(s, before)
    with inplace_decode():
        _, again = step(i, s, "triton")
    assert again.data_ptr() == s.data_ptr()
    assert_close(new, s, TOL, "in-place state")


def test_linear_attention_inplace_keeps_z_out_of_place() -> None:
    """z is read by every V block, so it always goes to a new tensor (S in place)."""
    x, s0, step, _ = CASES["linear_attention-elu+1-normalize"](4, 40)  # 3 V blocks
    i = {n: v[:, 0] for n, v in _dev(x).items()}
    S, z = _dev(s0)
    ref_o, (ref_S, ref_z) = step(i, (S.clone(), z.clone()), "torch")
    with inplace_decode():
        o, (S2, z2) = step(i, (S, z), "triton")
    assert S2.data_ptr() == S.data_ptr() and z2.data_ptr() != z.data_ptr()
    assert_close(ref_o, o, TOL)
    assert_close(ref_S, S2, TOL)
    assert_close(ref_z, z2, TOL)


def test_cpu_default_is_torch() -> None:
    """"auto" never takes the kernel (nor the interpreter) for CPU tensors."""
    if ON_CUDA:
        pytest.skip("CPU-only check")
    x, s0, step, _ = CASES["gla"](4, 4)
    i = {n: v[:, 0] for n, v in x.items()}
    with inplace_decode():
        o, S = step(i, s0, None)
    o_ref, S_ref = step(i, s0, "torch")
    assert S.data_ptr() != s0.data_ptr()  # the torch path is always functional
    assert torch.equal(o, o_ref) and torch.equal(S, S_ref)


def test_too_large_key_dim() -> None:
    K = MAX_DECODE_K + 1
    q = torch.randn(1, 1, K, dtype=DTYPE, device=DEVICE)
    v = torch.randn(1, 1, 2, dtype=DTYPE, device=DEVICE)
    S = torch.zeros(1, 1, K, 2, dtype=DTYPE, device=DEVICE)
    with pytest.raises(ValueError, match="cannot run this call"):
        retention_step(q, q, v, S, backend="triton")
    o, _ = retention_step(q, q, v, S, backend="auto")  # "auto" falls back to PyTorch
    assert o.shape == (1, 1, 2)


def test_checkable_outside_capture() -> None:
    t = torch.randn(2, 3)
    assert not stream_capturing()
    assert checkable(t)[0] is t


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_steps_under_simulated_capture(monkeypatch, backend: str) -> None:
    """While a CUDA graph is captured, the steps check shapes on zero stand-ins (no host
    read-back): same results, shape errors still raised, value checks skipped."""
    import longctx.ops.common.backend as be
    import longctx.ops.deltanet.recurrent as dr

    names = ["gla", "gated_deltanet", "ssd-2groups"]
    cases = {n: CASES[n](4, 9) for n in names}
    steps_in = {n: {k: (v[:, 0] if v.dim() > 1 else v) for k, v in _dev(c[0]).items()} for n, c in cases.items()}
    plain = {n: c[2](steps_in[n], _dev(c[1]), backend) for n, c in cases.items()}
    monkeypatch.setattr(be, "stream_capturing", lambda: True)
    monkeypatch.setattr(dr, "stream_capturing", lambda: True)
    for n, c in cases.items():
        o, s = c[2](steps_in[n], _dev(c[1]), backend)
        assert_close(plain[n][0], o, TOL, n)
        assert_close(plain[n][1], s, TOL, n)
    i = dict(steps_in["gla"])
    bad = {**i, "g": i["g"].abs() + 1}  # positive log gates: not read back during capture
    gla_step(bad["q"], bad["k"], bad["v"], bad["g"], None, backend=backend)
    with pytest.raises(ValueError, match="g_t must have shape"):
        gla_step(i["q"], i["k"], i["v"], i["g"][..., :-1], None, backend=backend)


@pytest.mark.parametrize("mixer", ["linear_attention", "retention", "gla", "deltanet", "gated_deltanet", "mamba2"])
def test_model_decode_step_through_the_layers(mixer: str) -> None:
    """A LongCtxLM's one-token step with the kernel == with PyTorch (the layers' own inputs:
    sliced, non-contiguous q/k/v, Mamba-2's B/C groups)."""
    from longctx.models.lm import LMConfig, LongCtxLM
    from longctx.ops.common.backend import use_backend

    cfg = LMConfig(vocab_size=29, d_model=24, n_layers=2, n_heads=2, mixer=mixer, short_conv=2)
    model = LongCtxLM(cfg).to(DEVICE, DTYPE).eval()
    idx = torch.randint(29, (2, 7), device=DEVICE)
    with torch.no_grad(), use_backend("torch"):
        _, state = model(idx, model.init_state(2))
        ref, _ = model(idx[:, -1:], state)
    with torch.no_grad(), use_backend("triton"):
        out, _ = model(idx[:, -1:], state)
    assert_close(ref, out, TOL)
