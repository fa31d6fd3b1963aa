"""grouped linear attention: chunk == recurrent == naive (outputs, states, every gradient),
state carried mid-group, odd lengths, dtypes, long sequences, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.ops.grouped_linear_attention import (
    chunk_grouped_linear_attention,
    grouped_linear_attention_step,
    naive_grouped_linear_attention,
    recurrent_grouped_linear_attention,
)
from longctx.ops.linear_attention import naive_linear_attention
from tests.helpers import (
    assert_close,
    assert_states_close,
    grads_of,
    loss_from,
    random_like_outputs,
    random_qkv,
)

F64 = torch.float64
B, H, DK, DV = 2, 3, 8, 5
FORMS = [naive_grouped_linear_attention, chunk_grouped_linear_attention, recurrent_grouped_linear_attention]
# (T, group_size): groups that do not divide T, a group larger than T, G = 1
SHAPES = [(1, 4), (37, 8), (63, 64), (130, 16), (130, 7), (20, 1), (5, 16)]


def make_state(G: int, n: int, dtype=F64, b=B, h=H, dk=DK, dv=DV):
    """A random state with ``n`` buffered tokens (slots >= n zero, as the forms leave them)."""
    k_buf = torch.zeros(b, G - 1, h, dk, dtype=dtype)
    v_buf = torch.zeros(b, G - 1, h, dv, dtype=dtype)
    k_buf[:, :n] = torch.randn(b, n, h, dk, dtype=dtype)
    v_buf[:, :n] = torch.randn(b, n, h, dv, dtype=dtype)
    return torch.randn(b, h, dk, dv, dtype=dtype), k_buf, v_buf, torch.tensor(n)


# ---- the definition, cross-checked -----------------------------------------------------------


def test_group_size_one_is_exclusive_linear_attention_plus_relu2_self():
    """G = 1: o_t = relu(q.k_t)^2 v_t + q_t^T sum_{s<t} k_s v_s^T (identity-map linear attention
    minus its diagonal term (q.k_t) v_t)."""
    q, k, v = random_qkv(B, 23, H, DK, DV)
    o, _ = naive_grouped_linear_attention(q, k, v, group_size=1, scale=0.5)
    la, _ = naive_linear_attention(q, k, v, feature_map="identity", scale=0.5)
    d = (0.5 * q * k).sum(-1, keepdim=True)  # [B, T, H, 1]
    assert_close(la - d * v + F.relu(d) ** 2 * v, o, 1e-12)


def test_one_group_is_local_relu2_attention():
    """G >= T: no global term, only causal squared-ReLU attention."""
    q, k, v = random_qkv(B, 9, H, DK, DV)
    o, _ = naive_grouped_linear_attention(q, k, v, group_size=16, scale=1.0)
    A = F.relu(torch.einsum("bthd,bshd->bhts", q, k)) ** 2 * torch.ones(9, 9).tril()
    assert_close(torch.einsum("bhts,bshe->bthe", A, v), o, 1e-12)


def test_tokens_see_earlier_groups_only_through_the_group_sum():
    """Perturbing a token changes later tokens of its group (local) and tokens of later groups
    only through S; an earlier token of the same group is unaffected."""
    q, k, v = random_qkv(1, 12, 1, DK, DV)
    o, _ = naive_grouped_linear_attention(q, k, v, group_size=4)
    v2 = v.clone()
    v2[:, 5] += 1.0  # group 1 (positions 4..7)
    o2, _ = naive_grouped_linear_attention(q, k, v2, group_size=4)
    changed = (o - o2).abs().amax(dim=(0, 2, 3)) > 1e-9  # [T]
    assert torch.equal(o[:, :5], o2[:, :5])
    assert changed[8:].all()  # later groups: through S_2 = S_1 + K_1^T V_1
    local = (q[0, 5:8, 0] @ k[0, 5, 0] * 8**-0.5) > 0  # same group: only where relu(q~_t.k_5) > 0
    assert torch.equal(changed[5:8], local)


# ---- invariant 1: chunk == naive --------------------------------------------------------------


@pytest.mark.parametrize("n0", [None, 0, 3])
@pytest.mark.parametrize("T,G", SHAPES)
def test_chunk_matches_naive(T, G, n0):
    q, k, v = random_qkv(B, T, H, DK, DV)
    state = None if n0 is None else make_state(G, min(n0, G - 1))
    o_ref, s_ref = naive_grouped_linear_attention(q, k, v, group_size=G, initial_state=state,
                                                  output_final_state=True)
    o, s = chunk_grouped_linear_attention(q, k, v, group_size=G, initial_state=state,
                                          output_final_state=True)
    assert_close(o_ref, o, 1e-9)
    assert_states_close(s_ref, s, 1e-9)
    assert s[1].shape == (B, G - 1, H, DK) and s[3].dtype == torch.int64
    assert int(s[3]) == ((0 if state is None else int(state[3])) + T) % G


def test_no_final_state_unless_asked():
    q, k, v = random_qkv(B, 10, H, DK, DV)
    for fn in FORMS:
        assert fn(q, k, v, group_size=4)[1] is None


def test_empty_sequence_keeps_state():
    q, k, v = random_qkv(B, 0, H, DK, DV)
    state = make_state(4, 2)
    for fn in FORMS:
        o, s = fn(q, k, v, group_size=4, initial_state=state, output_final_state=True)
        assert o.shape == (B, 0, H, DV)
        assert_states_close(state, s, 0.0)


# ---- invariant 2: recurrent == naive; carrying the state across a split == one pass -----------


@pytest.mark.parametrize("T,G", [(1, 4), (37, 8), (20, 1)])
def test_recurrent_matches_naive(T, G):
    q, k, v = random_qkv(B, T, H, DK, DV)
    state = make_state(G, min(2, G - 1))
    o_ref, s_ref = naive_grouped_linear_attention(q, k, v, group_size=G, initial_state=state,
                                                  output_final_state=True)
    o, s = recurrent_grouped_linear_attention(q, k, v, group_size=G, initial_state=state,
                                              output_final_state=True)
    assert_close(o_ref, o, 1e-9)
    assert_states_close(s_ref, s, 1e-9)


def test_step_by_step_decoding():
    q, k, v = random_qkv(B, 11, H, DK, DV)
    o_ref, s_ref = naive_grouped_linear_attention(q, k, v, group_size=4, output_final_state=True)
    state, outs = None, []
    for t in range(q.shape[1]):
        o_t, state = grouped_linear_attention_step(q[:, t], k[:, t], v[:, t], state, group_size=4)
        outs.append(o_t)
    assert_close(o_ref, torch.stack(outs, 1), 1e-9)
    assert_states_close(s_ref, state, 1e-9)


@pytest.mark.parametrize("split", [1, 5, 8, 50])
def test_split_carry_state(split):
    """Splits inside a group (1, 5, 50) and on a boundary (8): the buffered tokens carry over."""
    q, k, v = random_qkv(B, 63, H, DK, DV)
    o_ref, s_ref = naive_grouped_linear_attention(q, k, v, group_size=8, output_final_state=True)
    for fn in FORMS:
        a, b = slice(None, split), slice(split, None)
        o1, s1 = fn(q[:, a], k[:, a], v[:, a], group_size=8, output_final_state=True)
        o2, s2 = fn(q[:, b], k[:, b], v[:, b], group_size=8, initial_state=s1, output_final_state=True)
        assert_close(o_ref, torch.cat([o1, o2], 1), 1e-9, f"{fn.__name__} output")
        assert_states_close(s_ref, s2, 1e-9, f"{fn.__name__} final_state")


# ---- invariant 3: every gradient, initial state included --------------------------------------


@pytest.mark.parametrize("fn", [chunk_grouped_linear_attention, recurrent_grouped_linear_attention])
@pytest.mark.parametrize("T,G,n0", [(37, 8, 3), (30, 16, 0), (13, 4, 3)])
def test_gradients_match_naive(fn, T, G, n0):
    q, k, v = random_qkv(B, T, H, DK, DV)
    S0, kb, vb, n = make_state(G, n0)
    inputs = [x.requires_grad_() for x in (q, k, v, S0, kb, vb)]

    def grads(f):
        o, s = f(q, k, v, group_size=G, initial_state=(S0, kb, vb, n), output_final_state=True)
        outs = [o, *s[:3]]
        return grads_of(loss_from(outs, random_like_outputs(outs)), inputs)

    for name, r, g in zip(("q", "k", "v", "S0", "k_buf", "v_buf"), grads(naive_grouped_linear_attention),
                          grads(fn), strict=True):
        assert_close(r, g, 1e-9, f"d{name}")


# ---- invariant 4: low precision, long sequences -----------------------------------------------


def test_float32():
    q, k, v = random_qkv(B, 200, H, DK, DV, dtype=torch.float32)
    x32 = [x.requires_grad_() for x in (q, k, v)]
    x64 = [x.detach().double().requires_grad_() for x in x32]
    o_ref, _ = naive_grouped_linear_attention(*x64, group_size=16)
    o, s = chunk_grouped_linear_attention(*x32, group_size=16, output_final_state=True)
    assert o.dtype == torch.float32 and s[0].dtype == torch.float32
    assert_close(o_ref, o, 1e-6)
    cot = random_like_outputs([o_ref])
    d_ref = grads_of(loss_from([o_ref], cot), x64)
    d32 = grads_of(loss_from([o], [c.float() for c in cot]), x32)
    for name, r, d in zip("qkv", d_ref, d32, strict=True):
        assert_close(r, d, 1e-5, f"d{name}")


def test_bfloat16():
    q, k, v = random_qkv(B, 130, H, DK, DV, dtype=torch.bfloat16)
    state = tuple(t.to(torch.bfloat16) if t.is_floating_point() else t for t in make_state(16, 5))
    state64 = tuple(t.double() if t.is_floating_point() else t for t in state)
    o_ref, s_ref = naive_grouped_linear_attention(*(x.double() for x in (q, k, v)), group_size=16,
                                                  initial_state=state64, output_final_state=True)
    for fn in (chunk_grouped_linear_attention, recurrent_grouped_linear_attention):
        o, s = fn(q, k, v, group_size=16, initial_state=state, output_final_state=True)
        assert o.dtype == torch.bfloat16 and all(t.dtype == torch.float32 for t in s[:3])
        assert_close(o_ref, o, 3e-2, f"{fn.__name__} output")
        assert_states_close(s_ref, s, 3e-2, f"{fn.__name__} final_state")


def test_long_sequence_finite():
    q, k, v = random_qkv(1, 2**16, 1, 16, 16, dtype=torch.float32)
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)  # as the layer feeds it
    o, s = chunk_grouped_linear_attention(q, k, v, group_size=64, scale=1.0, output_final_state=True)
    assert torch.isfinite(o).all() and torch.isfinite(s[0]).all()


# ---- bad input -> clear errors ----------------------------------------------------------------


@pytest.mark.parametrize("fn", FORMS)
def test_errors(fn):
    q, k, v = random_qkv(B, 8, H, DK, DV)
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, T, H, D\]"):
        fn(q, k, v[..., 0])
    with pytest.raises(ValueError, match="q and k head dims differ"):
        fn(q, k[..., :4], v)
    with pytest.raises(ValueError, match="group_size must be a positive integer"):
        fn(q, k, v, group_size=0)
    with pytest.raises(ValueError, match=r"initial_state must be a tuple \(S \[B, H, Dk, Dv\]"):
        fn(q, k, v, group_size=4, initial_state=make_state(4, 1)[:2])
    with pytest.raises(ValueError, match=r"initial_state\[1\] \(k_buf\) must have shape \[2, 3, 3, 8\]"):
        fn(q, k, v, group_size=4, initial_state=make_state(5, 1))
    S, kb, vb, _ = make_state(4, 1)
    with pytest.raises(ValueError, match=r"\(n\) .* must lie in \[0, group_size=4\), got 4"):
        fn(q, k, v, group_size=4, initial_state=(S, kb, vb, torch.tensor(4)))
    with pytest.raises(ValueError, match=r"\(n\) must be a 0-dim int64 tensor"):
        fn(q, k, v, group_size=4, initial_state=(S, kb, vb, 1))


def test_step_errors():
    q, k, v = random_qkv(B, 1, H, DK, DV)
    with pytest.raises(ValueError, match=r"k for one decode step must be \[B, H, D\]"):
        grouped_linear_attention_step(q[:, 0], k, v[:, 0], None)
    with pytest.raises(ValueError, match=r"state\[0\] \(S\) must have shape \[2, 3, 8, 5\]"):
        grouped_linear_attention_step(q[:, 0], k[:, 0], v[:, 0], make_state(4, 0, dk=4), group_size=4)
