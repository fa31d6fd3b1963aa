"""Linearized-LLM mixers (You et al. 2024): augmented linear attention (+ tree verification) and
grouped linear attention. The generic layer contract runs in test_mixers.py; these are the
method-specific checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.layers import build
from longctx.layers.linearized import AugmentedLinearAttention, GroupedLinearAttention
from longctx.ops.grouped_linear_attention import naive_grouped_linear_attention
from tests.helpers import assert_close

F64 = torch.float64
D_MODEL, N_HEADS, B = 32, 2, 2
# node: 0 1 2 3 4 5 6 ; root-to-leaf paths [0,1,2], [0,1,3], [0,4], [5,6] (k = 4 branches)
PARENTS = torch.tensor([-1, 0, 1, 1, 0, -1, 5])
PATHS = [[0, 1, 2], [0, 1, 3], [0, 4], [5, 6]]


def make(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, **options)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.to(F64).eval()


def inputs(t: int, seed: int = 1, b: int = B) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=F64)


# ---- augmented linear attention --------------------------------------------------------------


@pytest.mark.parametrize("feature_map", ["elu+1", "relu"])
def test_zero_conv_is_plain_linear_attention(feature_map: str) -> None:
    aug = make("aug_linear_attention", feature_map=feature_map, chunk_size=4)
    la = make("linear_attention", feature_map=feature_map, chunk_size=4)
    la.load_state_dict({k: v for k, v in aug.state_dict().items() if k != "conv_weight"})
    with torch.no_grad():
        aug.conv_weight.zero_()
    x = inputs(13)
    assert_close(la(x)[0], aug(x)[0], 1e-12)


@pytest.mark.parametrize("K", [1, 3, 6])
def test_conv_branch_is_the_papers_masked_centred_dwconv(K: int) -> None:
    """The paper's masked DWConv: a centred (2K-1)-tap depthwise kernel, "same" padding, future
    half zeroed. It equals our K-tap causal conv on V; unmasked, the same kernel leaks v_{t+1}."""
    aug = make("aug_linear_attention", conv_size=K, chunk_size=4)
    x = inputs(11)
    y, _ = aug(x)
    with torch.no_grad():
        w0 = aug.conv_weight.clone()
        aug.conv_weight.zero_()
        y_la, _ = aug(x)
        aug.conv_weight.copy_(w0)
    v = aug.wv(x)  # [B, T, d]
    future = torch.randn(D_MODEL, 1, K - 1, dtype=F64)
    centred = torch.cat([w0, future], dim=-1)  # [d, 1, 2K-1]: taps K.. look ahead
    mask = torch.ones(2 * K - 1, dtype=F64)
    mask[K:] = 0.0  # the paper's mask: keep the token and its past

    def same(w: torch.Tensor) -> torch.Tensor:  # centred depthwise conv, "same" padding
        return F.conv1d(v.transpose(1, 2), w, padding=K - 1, groups=D_MODEL).transpose(1, 2)

    assert_close(y - y_la, aug.wo(same(centred * mask)), 1e-10)
    if K > 1:  # without the mask, output t changes with v_{t+1}: the leak the paper fixes
        leak = same(centred) - same(centred * mask)
        assert leak[:, :-1].abs().max() > 1e-3


def test_conv_buffer_holds_last_values() -> None:
    aug = make("aug_linear_attention", conv_size=4, chunk_size=4)
    x = inputs(9)
    _, state = aug(x, aug.init_state(B))
    assert_close(aug.wv(x)[:, -3:], state.buf, 1e-15, "conv buffer")
    _, state = aug(x[:, :2], aug.init_state(B))  # fewer tokens than K - 1: zeros first
    assert torch.equal(state.buf[:, :1], torch.zeros(B, 1, D_MODEL, dtype=F64))


@pytest.mark.parametrize("prefill", [0, 1, 5])
@pytest.mark.parametrize("K", [2, 4])
def test_tree_verification_equals_each_branch_alone(prefill: int, K: int) -> None:
    """Verifying k candidate branches as one tree == running each branch alone as a chain from
    the same state (== the ordinary forward); the state is left unchanged."""
    aug = make("aug_linear_attention", conv_size=K, chunk_size=4)
    state = aug.init_state(B)
    if prefill:
        _, state = aug(inputs(prefill, seed=3), state)
    before = {k: t.clone() for k, t in state.tensors().items()}
    x_tree = inputs(len(PARENTS), seed=4)
    y_tree = aug.forward_tree(x_tree, PARENTS, state)
    assert y_tree.shape == x_tree.shape
    for path in PATHS:
        y_path, _ = aug(x_tree[:, path], state)
        assert_close(y_path, y_tree[:, path], 1e-9, f"branch {path}")
    for k, t in state.tensors().items():
        assert torch.equal(before[k], t), f"forward_tree changed state.{k}"


def test_tree_of_one_node_is_a_decode_step() -> None:
    aug = make("aug_linear_attention", conv_size=3, chunk_size=4)
    _, state = aug(inputs(6), aug.init_state(B))
    x = inputs(1, seed=9)
    assert_close(aug(x, state)[0], aug.forward_tree(x, torch.tensor([-1]), state), 1e-10)


def test_tree_gradients_flow() -> None:
    aug = make("aug_linear_attention", conv_size=3, chunk_size=4)
    _, state = aug(inputs(5), aug.init_state(B))
    aug.forward_tree(inputs(len(PARENTS), seed=2), PARENTS, state).square().sum().backward()
    for name, p in aug.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_tree_bad_input_is_refused() -> None:
    aug = make("aug_linear_attention", conv_size=3)
    state = aug.init_state(B)
    with pytest.raises(ValueError, match=r"parents must have N = x.shape\[1\] = 7 entries, got 3"):
        aug.forward_tree(inputs(7), torch.tensor([-1, 0, 1]), state)
    with pytest.raises(ValueError, match=r"parents\[1\] = 1"):
        aug.forward_tree(inputs(2), torch.tensor([-1, 1]), state)
    with pytest.raises(ValueError, match="batch size"):
        aug.forward_tree(inputs(7, b=B + 1), PARENTS, state)
    with pytest.raises(ValueError, match="grouped_linear_attention"):
        aug.forward_tree(inputs(7), PARENTS, make("grouped_linear_attention").init_state(B))


def test_aug_state_size_counts_conv_buffer() -> None:
    aug = make("aug_linear_attention", conv_size=5)
    state = aug.init_state(B, dtype=torch.float32)
    assert aug.state_size(B, 1000) == state.nbytes()
    assert state.buf.shape == (B, 4, D_MODEL)


# ---- grouped linear attention ----------------------------------------------------------------


def test_grouped_layer_is_the_op_on_normalised_qk() -> None:
    m = make("grouped_linear_attention", group_size=4)
    x = inputs(11)
    q, k, v = (w(x).view(B, 11, N_HEADS, -1) for w in (m.wq, m.wk, m.wv))
    o, _ = naive_grouped_linear_attention(F.normalize(q, dim=-1), F.normalize(k, dim=-1), v,
                                          group_size=4, scale=1.0)
    assert_close(m.wo(o.reshape(B, 11, D_MODEL)), m(x)[0], 1e-12)


@pytest.mark.parametrize("G", [1, 3, 16])
def test_grouped_decode_equals_forward(G: int) -> None:
    """Token-by-token decode across group boundaries (G = 1: no buffer at all; G > T: one group)."""
    m = make("grouped_linear_attention", group_size=G)
    x = inputs(10)
    ref, _ = m(x)
    state, outs = m.init_state(B), []
    for t in range(10):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
    assert_close(ref, torch.cat(outs, 1), 1e-9)
    assert int(state.n) == 10 % G and state.k_buf.shape == (B, G - 1, N_HEADS, D_MODEL // N_HEADS)


def test_grouped_state_size_counts_the_group_buffer() -> None:
    m = make("grouped_linear_attention", group_size=8)
    state = m.init_state(B, dtype=torch.float32)
    D = D_MODEL // N_HEADS
    want = B * (N_HEADS * D * D + 2 * 7 * N_HEADS * D) * 4
    assert m.state_size(B, 10**6) == want == state.nbytes() - state.n.element_size()


# ---- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,option", [("aug_linear_attention", "conv_size"),
                                         ("grouped_linear_attention", "group_size")])
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_bad_config_is_refused(name: str, option: str, value) -> None:
    with pytest.raises(ValueError, match=f"{option} must be a positive integer"):
        build(name, d_model=D_MODEL, n_heads=N_HEADS, **{option: value})


def test_paper_defaults() -> None:
    aug, grouped = build("aug_linear_attention"), build("grouped_linear_attention")
    assert isinstance(aug, AugmentedLinearAttention) and isinstance(grouped, GroupedLinearAttention)
    assert aug.config.conv_size == 32  # 63-tap kernel with its 31 future taps masked
    assert grouped.config.group_size == 64
