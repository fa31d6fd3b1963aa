"""log_linear: chunk == recurrent == naive over every base (outputs, Fenwick states, gradients),
lambda == 1 is the base op, the partition itself, state growth, dtypes, long sequences, errors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from longctx.ops import log_linear as ll
from longctx.ops.gated_deltanet import naive_gated_delta_rule
from longctx.ops.gla import naive_gla
from longctx.ops.linear_attention import naive_linear_attention
from longctx.ops.log_linear.fenwick import (
    FenwickState,
    bit_length,
    fenwick_advance,
    init_levels,
    level_matrix,
    required_levels,
)
from longctx.ops.mamba2 import naive_ssd
from longctx.ops.retention import naive_retention
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
RTOL = 1e-9


@dataclass
class Base:
    """One base: its three forms, its step, and how to make its inputs (a dict of keywords)."""

    naive: Callable
    chunk: Callable
    recurrent: Callable
    step: Callable
    make: Callable  # (T, dtype, b, h, dk, dv, levels, gen) -> dict of inputs
    state_dims: tuple[str, str] = ("dk", "dv")  # per-level state [Dk, Dv] (Mamba-2: [P, N])


def _lam(b, T, h, levels, gen, dtype):
    return torch.rand(b, T, h, levels, generator=gen, dtype=F64).to(dtype) + 0.1


def _qkv(b, T, h, dk, dv, gen):
    return (torch.randn(b, T, h, dk, generator=gen, dtype=F64),
            torch.randn(b, T, h, dk, generator=gen, dtype=F64),
            torch.randn(b, T, h, dv, generator=gen, dtype=F64))


def make_linear(gate: str | None):
    def make(T, dtype, b, h, dk, dv, levels, gen):
        q, k, v = _qkv(b, T, h, dk, dv, gen)
        out = {"q": q, "k": k, "v": v, "lambda_levels": _lam(b, T, h, levels, gen, F64)}
        if gate == "gla":  # GLA's gate logsigmoid(.)/16 made harsher: per key dim
            out["g"] = F.logsigmoid(torch.randn(b, T, h, dk, generator=gen, dtype=F64)) / 4
        elif gate == "scalar":
            out["g"] = F.logsigmoid(torch.randn(b, T, h, generator=gen, dtype=F64) + 2)
        return {n: x.to(dtype) for n, x in out.items()}
    return make


def make_gdn(T, dtype, b, h, dk, dv, levels, gen):
    q, k, v = _qkv(b, T, h, dk, dv, gen)
    out = {"q": q, "k": F.normalize(k, dim=-1), "v": v,
           "g": F.logsigmoid(torch.randn(b, T, h, generator=gen, dtype=F64) + 2),
           "beta": torch.rand(b, T, h, generator=gen, dtype=F64),
           "lambda_levels": _lam(b, T, h, levels, gen, F64)}
    return {n: x.to(dtype) for n, x in out.items()}


def make_mamba2(T, dtype, b, h, dk, dv, levels, gen):
    out = {"x": torch.randn(b, T, h, dv, generator=gen, dtype=F64),
           "dt": F.softplus(torch.randn(b, T, h, generator=gen, dtype=F64) - 1),
           "A": -torch.rand(h, generator=gen, dtype=F64) - 0.1,
           "B": torch.randn(b, T, 1, dk, generator=gen, dtype=F64),
           "C": torch.randn(b, T, 1, dk, generator=gen, dtype=F64),
           "lambda_levels": _lam(b, T, h, levels, gen, F64),
           "D": torch.randn(h, generator=gen, dtype=F64)}
    return {n: x.to(dtype) for n, x in out.items()}


_forms = {name: tuple(getattr(ll, f"{form}_log_linear_{name}") for form in ("naive", "chunk", "recurrent"))
          for name in ("attention", "gated_deltanet", "mamba2")}
BASES = {
    "linear": Base(*_forms["attention"], ll.log_linear_attention_step, make_linear(None)),
    "gla": Base(*_forms["attention"], ll.log_linear_attention_step, make_linear("gla")),
    "scalar": Base(*_forms["attention"], ll.log_linear_attention_step, make_linear("scalar")),
    "gated_deltanet": Base(*_forms["gated_deltanet"], ll.log_linear_gated_deltanet_step, make_gdn),
    "mamba2": Base(*_forms["mamba2"], ll.log_linear_mamba2_step, make_mamba2, ("dv", "dk")),
}


def inputs(base: str, T: int, dtype=F64, b=B, h=H, dk=DK, dv=DV, levels=None, seed=0):
    levels = levels or required_levels(max(T - 1, 0) + 64)  # enough for an initial state too
    return BASES[base].make(T, dtype, b, h, dk, dv, levels, torch.Generator().manual_seed(seed))


def initial_state(base: str, t0: int, dtype=F64, b=B, h=H, dk=DK, dv=DV) -> FenwickState:
    a, c = (dk, dv) if BASES[base].state_dims == ("dk", "dv") else (dv, dk)
    S = torch.randn(b, t0.bit_length(), h, a, c, generator=torch.Generator().manual_seed(7), dtype=F64)
    return FenwickState(S.to(dtype), torch.tensor(t0))


def sliced(x: dict, a: int | None, b: int | None) -> dict:
    """The tokens [a, b) of every per-token input (A and D are per head)."""
    return {n: (t[:, a:b] if t.dim() >= 3 else t) for n, t in x.items()}


def check_states(ref, out, rtol=RTOL, name="final_state"):
    assert int(ref.t) == int(out.t) and out.t.dtype == torch.int64, f"{name}.t: {out.t} != {ref.t}"
    assert_close(ref.S, out.S, rtol, f"{name}.S")


# ---- the Fenwick partition ---------------------------------------------------------------------


def test_bit_length_is_exact():
    x = torch.tensor([0, 1, 2, 3, 4, 7, 8, 2**20 - 1, 2**20, 2**40 - 1, 2**52 + 1])
    assert bit_length(x).tolist() == [int(v).bit_length() for v in x.tolist()]


@pytest.mark.parametrize("t", [0, 1, 5, 6, 7, 8, 37, 63, 64, 100])
def test_levels_partition_the_prefix_into_fenwick_buckets(t):
    """Level l >= 1 of the query at t holds 2^(l-1) tokens iff bit l-1 of t is set; the buckets
    are contiguous, get older as l grows, and level 0 is t itself (Guo et al. 2025, §3.1)."""
    lev = level_matrix(torch.tensor([t]), torch.arange(t + 1))[0]
    assert lev[t] == 0 and (lev[:t] >= 1).all()
    for l in range(1, t.bit_length() + 1):
        members = (lev == l).nonzero().flatten()
        assert len(members) == ((t >> (l - 1)) & 1) << (l - 1)
        if len(members):
            assert (members.diff() == 1).all()
            assert (lev[: members[0]] > l).all()  # everything before is at a higher level
    assert lev.max() <= required_levels(t) - 1


def test_initial_levels_are_the_levels_of_their_members():
    """A level of a state taken at t0 is read by a query t >= t0 at the level of its members."""
    for t0 in range(1, 40):
        ts = torch.arange(t0, 80)
        got = init_levels(ts, t0, t0.bit_length())  # [len(ts), L0]
        member_level = level_matrix(torch.tensor([t0]), torch.arange(t0))[0]  # [t0]
        seen = level_matrix(ts, torch.arange(t0))  # [len(ts), t0]: level of each member for t
        assert torch.equal(seen, torch.gather(got, 1, (member_level - 1).expand(len(ts), t0)))


def test_fenwick_advance_keeps_the_levels_of_the_next_query():
    """Merging after each token keeps exactly the sources of each level of the next query."""
    T, S = 70, torch.zeros(1, 0, 1, 1, 70)  # level state = indicator vector of its sources
    for t in range(T):
        full = torch.cat([F.one_hot(torch.tensor(t), T).double().view(1, 1, 1, 1, T), S.double()], 1)
        S = fenwick_advance(full, t)
        assert S.shape[1] == (t + 1).bit_length()
        lev = level_matrix(torch.tensor([t + 1]), torch.arange(t + 1))[0]
        for l in range(1, S.shape[1] + 1):
            assert torch.equal(S[0, l - 1, 0, 0, : t + 1], (lev == l).double())


# ---- chunk == naive; recurrent == naive; split == one pass ------------------------------------

SHAPES = [(1, 16), (37, 16), (63, 64), (130, 16), (130, 64), (100, 4)]


@pytest.mark.parametrize("t0", [0, 21])
@pytest.mark.parametrize("T,chunk_size", SHAPES)
@pytest.mark.parametrize("base", list(BASES))
def test_chunk_matches_naive(base, T, chunk_size, t0):
    x = inputs(base, T)
    state = initial_state(base, t0) if t0 else None
    fns = BASES[base]
    o_ref, s_ref = fns.naive(**x, initial_state=state, output_final_state=True)
    o, s = fns.chunk(**x, initial_state=state, output_final_state=True, chunk_size=chunk_size)
    assert_close(o_ref, o, RTOL)
    check_states(s_ref, s)
    assert s.S.shape[1] == (t0 + T).bit_length() and int(s.t) == t0 + T


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("base", list(BASES))
def test_recurrent_matches_naive(base, T):
    x = inputs(base, T)
    state = initial_state(base, 13)
    fns = BASES[base]
    o_ref, s_ref = fns.naive(**x, initial_state=state, output_final_state=True)
    o, s = fns.recurrent(**x, initial_state=state, output_final_state=True)
    assert_close(o_ref, o, RTOL)
    check_states(s_ref, s)


@pytest.mark.parametrize("split", [1, 20, 50])
@pytest.mark.parametrize("base", list(BASES))
def test_split_carry_state(base, split):
    x = inputs(base, 63)
    fns = BASES[base]
    o_ref, s_ref = fns.naive(**x, output_final_state=True)
    for fn, extra in ((fns.naive, {}), (fns.chunk, {"chunk_size": 16}), (fns.recurrent, {})):
        o1, s1 = fn(**sliced(x, None, split), output_final_state=True, **extra)
        o2, s2 = fn(**sliced(x, split, None), initial_state=s1, output_final_state=True, **extra)
        assert_close(o_ref, torch.cat([o1, o2], 1), RTOL, f"{fn.__name__} output")
        check_states(s_ref, s2, RTOL, f"{fn.__name__} final_state")


def _step_args(base: str, x: dict, t: int) -> dict:
    """The inputs of token t as step keywords (q -> q_t, ..., per-head A and D unchanged)."""
    return {(n if t_.dim() < 3 else f"{n}_t" if n != "lambda_levels" else "lambda_t"):
            (t_[:, t] if t_.dim() >= 3 else t_) for n, t_ in x.items()}


@pytest.mark.parametrize("base", list(BASES))
def test_step_by_step_decoding_and_state_growth(base):
    T = 40
    x = inputs(base, T)
    fns = BASES[base]
    o_ref, s_ref = fns.naive(**x, output_final_state=True)
    state, outs = None, []
    for t in range(T):
        o_t, state = fns.step(**_step_args(base, x, t), state=state)
        outs.append(o_t)
        # O(log t) decode memory: floor(log2 t) + 1 level states after t tokens
        assert state.S.shape[1] == (t + 1).bit_length() == int(torch.tensor(t + 1.0).log2().floor()) + 1
    assert_close(o_ref, torch.stack(outs, 1), RTOL)
    check_states(s_ref, state)


def test_decode_memory_grows_logarithmically():
    x = inputs("linear", 300, b=1, h=1, dk=2, dv=2)
    state, sizes = None, {}
    for t in range(300):
        _, state = ll.log_linear_attention_step(**_step_args("linear", x, t), state=state)
        sizes[t + 1] = state.S.numel() * state.S.element_size()
    per_level = 2 * 2 * 8
    assert all(sizes[t] == t.bit_length() * per_level for t in sizes)
    assert sizes[256] == 9 * per_level and sizes[255] == 8 * per_level


def test_no_final_state_unless_asked():
    x = inputs("gla", 10)
    for fn in (ll.naive_log_linear_attention, ll.chunk_log_linear_attention,
               ll.recurrent_log_linear_attention):
        assert fn(**x)[1] is None


@pytest.mark.parametrize("base", list(BASES))
def test_empty_sequence_keeps_state(base):
    x = inputs(base, 0)
    state = initial_state(base, 11)
    fns = BASES[base]
    for fn in (fns.naive, fns.chunk, fns.recurrent):
        o, s = fn(**x, initial_state=state, output_final_state=True)
        assert o.shape[1] == 0
        check_states(state, s, 0.0)


# ---- lambda == 1: the base op ------------------------------------------------------------------


def _base_reference(base: str, x: dict, S0):
    """The base op on the same inputs, from the plain state S0 (or None)."""
    if base == "linear":
        o, s = naive_linear_attention(
            x["q"], x["k"], x["v"], feature_map="identity", normalize=False, output_final_state=True,
            initial_state=None if S0 is None else (S0, S0.new_zeros(S0.shape[:3])),
        )
        return o, s[0]
    if base == "gla":
        return naive_gla(x["q"], x["k"], x["v"], x["g"], initial_state=S0, output_final_state=True)
    if base == "scalar":  # a per-head constant gate is retention
        log_decay = x["g"][0, 0]
        return naive_retention(x["q"], x["k"], x["v"], log_decay=log_decay, initial_state=S0,
                               output_final_state=True)
    if base == "gated_deltanet":
        return naive_gated_delta_rule(x["q"], x["k"], x["v"], x["g"], x["beta"], initial_state=S0,
                                      output_final_state=True)
    return naive_ssd(x["x"], x["dt"], x["A"], x["B"], x["C"], D=x["D"], initial_state=S0,
                     output_final_state=True)


@pytest.mark.parametrize("t0", [0, 22])
@pytest.mark.parametrize("base", list(BASES))
def test_lambda_one_is_the_base_op(base, t0):
    x = inputs(base, 70)
    x["lambda_levels"] = torch.ones_like(x["lambda_levels"])
    if base == "scalar":  # retention: a constant gate per head
        x["g"] = torch.log(torch.tensor([0.5, 0.9, 0.99], dtype=F64)).expand(B, 70, H)
    state = initial_state(base, t0) if t0 else None
    S0 = None if state is None else state.S.sum(1)  # lambda = 1: the levels add up
    o_ref, s_ref = _base_reference(base, x, S0)
    fns = BASES[base]
    for fn, extra in ((fns.naive, {}), (fns.chunk, {"chunk_size": 16}), (fns.recurrent, {})):
        o, s = fn(**x, initial_state=state, output_final_state=True, **extra)
        assert_close(o_ref, o, RTOL, f"{fn.__name__} output")
        assert_close(s_ref, s.S.sum(1), RTOL, f"{fn.__name__} sum of the final levels")


def test_lambda_selects_levels():
    """lambda = one-hot on level 0 keeps only q_t k_t v_t (the sentinel bucket of §3.1)."""
    x = inputs("linear", 20)
    x["lambda_levels"] = torch.zeros_like(x["lambda_levels"])
    x["lambda_levels"][..., 0] = 1.0
    o, _ = ll.chunk_log_linear_attention(**x, chunk_size=4)
    scale = DK**-0.5
    ref = (x["q"] * x["k"]).sum(-1, keepdim=True) * scale * x["v"]
    assert_close(ref, o, RTOL)


# ---- gradients: chunk and recurrent == naive, for every input ----------------------------------


@pytest.mark.parametrize("T,chunk_size", [(37, 16), (100, 32)])
@pytest.mark.parametrize("base", list(BASES))
def test_gradients_match_naive(base, T, chunk_size):
    x = inputs(base, T)
    state = initial_state(base, 19)
    leaves = {n: t.requires_grad_() for n, t in x.items()}
    S0 = state.S.requires_grad_()
    fns = BASES[base]

    def grads(fn, **extra):
        o, s = fn(**leaves, initial_state=(S0, state.t), output_final_state=True, **extra)
        return grads_of(loss_from([o, s.S], random_like_outputs([o, s.S])), [*leaves.values(), S0])

    ref = grads(fns.naive)
    for fn, extra in ((fns.chunk, {"chunk_size": chunk_size}), (fns.recurrent, {})):
        for name, r, got in zip([*leaves, "initial_state"], ref, grads(fn, **extra), strict=True):
            assert_close(r, got, RTOL, f"{fn.__name__}: d{name}")


# ---- precision and long sequences --------------------------------------------------------------

TOL32 = {"output": 1e-5, "grad": 1e-4}


@pytest.mark.parametrize("gate_scale", [1.0, 10.0])
@pytest.mark.parametrize("base", list(BASES))
def test_float32_matches_float64(base, gate_scale):
    """Measured (T = 200, chunks of 64): output <= 9e-7, gradients <= 3e-5 with 10x gates."""
    x = inputs(base, 200)
    for name in ("g", "dt"):  # 10x: a chunk of 64 decays by up to ~e^-60
        if name in x:
            x[name] = x[name] * gate_scale
    x32 = {n: t.float().requires_grad_() for n, t in x.items()}
    x64 = {n: t.detach().double().requires_grad_() for n, t in x32.items()}
    o_ref, s_ref = BASES[base].naive(**x64, output_final_state=True)
    o, s = BASES[base].chunk(**x32, output_final_state=True, chunk_size=64)
    assert o.dtype == torch.float32 and s.S.dtype == torch.float32
    assert_close(o_ref, o, TOL32["output"])
    assert_close(s_ref.S, s.S, TOL32["output"], "final_state")
    cot = random_like_outputs([o_ref, s_ref.S])
    d_ref = grads_of(loss_from([o_ref, s_ref.S], cot), list(x64.values()))
    d32 = grads_of(loss_from([o, s.S], [c.float() for c in cot]), list(x32.values()))
    for name, r, d in zip(x64, d_ref, d32, strict=True):
        assert_close(r, d, TOL32["grad"], f"d{name}")


@pytest.mark.parametrize("base", list(BASES))
def test_bfloat16(base):
    x = inputs(base, 130, dtype=torch.bfloat16)
    state = initial_state(base, 5, dtype=torch.bfloat16)
    x64 = {n: t.double() for n, t in x.items()}
    if "beta" in x:  # bf16 keys are unit-norm only to bf16 precision
        x64["k"] = F.normalize(x64["k"], dim=-1)
    o_ref, s_ref = BASES[base].naive(**x64, initial_state=(state.S.double(), state.t),
                                     output_final_state=True)
    for fn, extra in ((BASES[base].chunk, {"chunk_size": 64}), (BASES[base].recurrent, {})):
        o, s = fn(**x, initial_state=state, output_final_state=True, **extra)
        assert o.dtype == torch.bfloat16 and s.S.dtype == torch.float32  # states in >= fp32
        assert_close(o_ref, o, 3e-2, f"{fn.__name__} output")
        assert_close(s_ref.S, s.S, 3e-2, f"{fn.__name__} final_state")


@pytest.mark.parametrize("harsh", [False, True])
@pytest.mark.parametrize("base", list(BASES))
def test_long_sequence_finite(base, harsh):
    """T = 2^16 in float32; ``harsh`` gates decay by ~e^-300 per chunk of 64 (no exp(+large))."""
    T = 2**16
    x = inputs(base, T, dtype=torch.float32, b=1, h=1, dk=16, dv=16)
    if harsh:
        for name in ("g", "dt"):
            if name in x:
                x[name] = x[name] * 50
    o, s = BASES[base].chunk(**x, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s.S).all()
    assert s.S.shape[1] == 17


@pytest.mark.slow
@pytest.mark.parametrize("T", [511, 1025, 4095])
@pytest.mark.parametrize("base", list(BASES))
def test_long_odd_lengths_all_forms_agree(base, T):
    x = inputs(base, T, b=1, h=1, dk=4, dv=4)
    fns = BASES[base]
    o_ref, s_ref = fns.naive(**x, output_final_state=True)
    for fn, extra in ((fns.chunk, {"chunk_size": 64}), (fns.recurrent, {})):
        o, s = fn(**x, output_final_state=True, **extra)
        assert_close(o_ref, o, RTOL, f"{fn.__name__} output")
        check_states(s_ref, s, RTOL, f"{fn.__name__} final_state")
    if T <= 1025:  # gradients at a length with 5 chunk levels
        leaves = {n: t.requires_grad_() for n, t in x.items()}
        ref = None
        for fn, extra in ((fns.naive, {}), (fns.chunk, {"chunk_size": 64})):
            o, s = fn(**leaves, output_final_state=True, **extra)
            d = grads_of(loss_from([o, s.S], random_like_outputs([o, s.S])), list(leaves.values()))
            if ref is None:
                ref = d
                continue
            for name, r, got in zip(leaves, ref, d, strict=True):
                assert_close(r, got, RTOL, f"d{name}")


# ---- bad input -> clear errors -----------------------------------------------------------------


@pytest.mark.parametrize("form", ["naive", "chunk", "recurrent"])
@pytest.mark.parametrize("base", list(BASES))
def test_lambda_levels_errors(base, form):
    fn = getattr(BASES[base], form)
    x = inputs(base, 37)
    with pytest.raises(ValueError, match=r"lambda_levels has L = 6 levels.*t = 36.*needs L >= 7"):
        fn(**{**x, "lambda_levels": x["lambda_levels"][..., :6]})
    x7 = {**x, "lambda_levels": x["lambda_levels"][..., :7]}
    fn(**x7)  # exactly enough
    with pytest.raises(ValueError, match=r"t = 136 .*needs L >= 9"):  # continuing at t0 = 100
        fn(**x7, initial_state=initial_state(base, 100))
    with pytest.raises(ValueError, match=r"lambda_levels must have shape \[B, T, H, L\] = \[2, 37, 3, L\]"):
        fn(**{**x, "lambda_levels": x["lambda_levels"][:, :, 0]})
    with pytest.raises(TypeError, match="lambda_levels must be a torch.Tensor"):
        fn(**{**x, "lambda_levels": [1.0]})


@pytest.mark.parametrize("form", ["naive", "chunk", "recurrent"])
def test_initial_state_errors(form):
    fn = getattr(BASES["gla"], form)
    x = inputs("gla", 8)
    st = initial_state("gla", 21)
    with pytest.raises(ValueError, match=r"initial_state.S must have shape \[B, L, H, Dk, Dv\] = "
                                         r"\[2, 5, 3, 8, 5\] \(L = bit_length\(t\) = 5 levels at t = 21\)"):
        fn(**x, initial_state=(st.S[:, :4], st.t))
    with pytest.raises(ValueError, match="initial_state.t must be a 0-dim int64"):
        fn(**x, initial_state=(st.S, st.t.float()))
    with pytest.raises(TypeError, match="initial_state must be a FenwickState"):
        fn(**x, initial_state=st.S)


@pytest.mark.parametrize("form", ["naive", "chunk", "recurrent"])
def test_input_errors(form):
    fn = getattr(BASES["gla"], form)
    x = inputs("gla", 8)
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, T, H, D\]"):
        fn(**{**x, "v": x["v"][..., 0]})
    with pytest.raises(ValueError, match=r"g must have shape \[B, T, H\] = \[2, 8, 3\] .* or \[B, T, H, Dk\]"):
        fn(**{**x, "g": x["g"][..., :2]})
    with pytest.raises(ValueError, match="g is a log-space forget gate and must be <= 0"):
        fn(**{**x, "g": -x["g"]})
    gdn = getattr(BASES["gated_deltanet"], form)
    y = inputs("gated_deltanet", 8)
    with pytest.raises(ValueError, match=r"beta .* must lie in \[0, 2\]"):
        gdn(**{**y, "beta": y["beta"] + 3})
    with pytest.raises(ValueError, match="k must be L2-normalised"):
        gdn(**{**y, "k": 2 * y["k"]})
    m2 = getattr(BASES["mamba2"], form)
    with pytest.raises(ValueError, match="A must be <= 0"):
        m2(**{**inputs("mamba2", 8), "A": torch.ones(H, dtype=F64)})


@pytest.mark.parametrize("chunk_size", [0, 48, "64"])
def test_bad_chunk_size(chunk_size):
    x = inputs("linear", 8)
    with pytest.raises(ValueError, match="chunk_size must be a p"):
        ll.chunk_log_linear_attention(**x, chunk_size=chunk_size)


def test_step_errors():
    x = inputs("gla", 1)
    args = _step_args("gla", x, 0)
    st = initial_state("gla", 8)
    with pytest.raises(ValueError, match=r"lambda_t has L = 4 levels.*t = 8.*needs L >= 5"):
        ll.log_linear_attention_step(**{**args, "lambda_t": args["lambda_t"][..., :4]}, state=st)
    with pytest.raises(ValueError, match=r"g_t must have shape \[2, 3, 8\]"):
        ll.log_linear_attention_step(**{**args, "g_t": args["g_t"][..., :2]}, state=None)
    with pytest.raises(ValueError, match="g_t is a log-space forget gate"):
        ll.log_linear_attention_step(**{**args, "g_t": -args["g_t"]}, state=None)
    y = _step_args("gated_deltanet", inputs("gated_deltanet", 1), 0)
    with pytest.raises(ValueError, match="beta_t"):
        ll.log_linear_gated_deltanet_step(**{**y, "beta_t": y["beta_t"] - 1}, state=None)
    with pytest.raises(ValueError, match=r"state.S must have shape"):
        ll.log_linear_attention_step(**args, state=(st.S[:, :2], st.t))
