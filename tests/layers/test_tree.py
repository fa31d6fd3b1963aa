"""Token-tree helpers: ancestor table, tree mask, unfolded (img2col) causal depthwise conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from longctx.layers.tree import (
    tree_ancestors,
    tree_attention_mask,
    tree_depths,
    unfolded_causal_conv,
)
from tests.helpers import assert_close, grads_of, loss_from, random_like_outputs

F64 = torch.float64
B, D = 2, 5
# node: 0 1 2 3 4 5 6 ; branches (root-to-leaf paths): [0,1,2], [0,1,3], [0,4], [5,6]
PARENTS = torch.tensor([-1, 0, 1, 1, 0, -1, 5])
PATHS = [[0, 1, 2], [0, 1, 3], [0, 4], [5, 6]]


def chain(n: int) -> torch.Tensor:
    return torch.arange(n) - 1  # [-1, 0, 1, ...]


def conv_ref(x: torch.Tensor, w: torch.Tensor, past: torch.Tensor | None, bias=None) -> torch.Tensor:
    """F.conv1d on cat([past, x]): the ordinary causal depthwise conv of a chain."""
    K = w.shape[-1]
    past = x.new_zeros(x.shape[0], K - 1, x.shape[2]) if past is None else past
    xp = torch.cat([past, x], dim=1).transpose(1, 2)
    return F.conv1d(xp, w, bias, groups=x.shape[2]).transpose(1, 2)


def rand(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=F64)


def test_tree_ancestors_table() -> None:
    want = torch.tensor([
        [0, -1, -2, -3],
        [1, 0, -1, -2],
        [2, 1, 0, -1],
        [3, 1, 0, -1],
        [4, 0, -1, -2],
        [5, -1, -2, -3],
        [6, 5, -1, -2],
    ])
    assert torch.equal(tree_ancestors(PARENTS, 4), want)
    assert torch.equal(tree_ancestors(PARENTS, 1), torch.arange(7)[:, None])
    assert tree_ancestors(torch.zeros(0, dtype=torch.int64), 3).shape == (0, 3)


def test_tree_attention_mask() -> None:
    mask = tree_attention_mask(PARENTS)
    for i, path in enumerate([[0], [0, 1], [0, 1, 2], [0, 1, 3], [0, 4], [5], [5, 6]]):
        assert mask[i].nonzero().flatten().tolist() == path
    assert torch.equal(tree_attention_mask(chain(6)), torch.ones(6, 6, dtype=torch.bool).tril())
    assert torch.equal(tree_depths(PARENTS), torch.tensor([0, 1, 2, 2, 1, 0, 1]))
    assert tree_attention_mask(torch.zeros(0, dtype=torch.int64)).shape == (0, 0)


@pytest.mark.parametrize("K", [1, 2, 4])
@pytest.mark.parametrize("N", [1, 3, 9])
@pytest.mark.parametrize("with_past", [False, True])
def test_chain_equals_conv1d(K: int, N: int, with_past: bool) -> None:
    x, w, bias = rand(B, N, D), rand(D, 1, K), rand(D)
    past = rand(B, K - 1, D) if with_past else None
    assert_close(conv_ref(x, w, past), unfolded_causal_conv(x, w, chain(N), past), 1e-12)
    assert_close(conv_ref(x, w, past, bias), unfolded_causal_conv(x, w, chain(N), past, bias), 1e-12)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_tree_equals_each_branch_alone(K: int) -> None:
    x, w, past = rand(B, 7, D), rand(D, 1, K), rand(B, K - 1, D)
    y = unfolded_causal_conv(x, w, PARENTS, past)
    for path in PATHS:
        ref = conv_ref(x[:, path], w, past)
        assert_close(ref, y[:, path], 1e-12, f"branch {path}")


def test_siblings_do_not_see_each_other() -> None:
    """Changing one branch leaves every node outside its subtree unchanged (no cross-branch mixing)."""
    x, w, past = rand(B, 7, D), rand(D, 1, 4), rand(B, 3, D)
    y = unfolded_causal_conv(x, w, PARENTS, past)
    x2 = x.clone()
    x2[:, 2] += 1.0  # node 2: a leaf; only its own output depends on it
    y2 = unfolded_causal_conv(x2, w, PARENTS, past)
    others = [0, 1, 3, 4, 5, 6]
    assert torch.equal(y[:, others], y2[:, others])
    assert (y[:, 2] - y2[:, 2]).abs().max() > 1e-6


def test_gradients_flow_and_match_chain() -> None:
    N, K = 6, 3
    x, w, past, bias = (t.requires_grad_() for t in (rand(B, N, D), rand(D, 1, K), rand(B, K - 1, D), rand(D)))
    cot = random_like_outputs([conv_ref(x, w, past, bias)])
    ref = grads_of(loss_from([conv_ref(x, w, past, bias)], cot), [x, w, past, bias])
    got = grads_of(loss_from([unfolded_causal_conv(x, w, chain(N), past, bias)], cot), [x, w, past, bias])
    for name, r, g in zip(("x", "weight", "past", "bias"), ref, got, strict=True):
        assert g.abs().max() > 0, f"no gradient reaches {name}"
        assert_close(r, g, 1e-12, f"d{name}")


def test_empty_tree() -> None:
    y = unfolded_causal_conv(rand(B, 0, D), rand(D, 1, 3), torch.zeros(0, dtype=torch.int64), None)
    assert y.shape == (B, 0, D)


def test_bad_parents_are_refused() -> None:
    with pytest.raises(ValueError, match=r"parents\[2\] = 2"):
        tree_ancestors(torch.tensor([-1, 0, 2]), 2)
    with pytest.raises(ValueError, match=r"parents\[1\] = -2"):
        tree_attention_mask(torch.tensor([-1, -2]))
    with pytest.raises(ValueError, match="1-D int64"):
        tree_ancestors(torch.tensor([-1.0, 0.0]), 2)
    with pytest.raises(TypeError, match="parents must be a torch.Tensor"):
        tree_ancestors([-1, 0], 2)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        tree_ancestors(chain(3), 0)


def test_bad_conv_shapes_are_refused() -> None:
    x, w = rand(B, 4, D), rand(D, 1, 3)
    with pytest.raises(ValueError, match=r"x must be \[B, N=3, d\]"):
        unfolded_causal_conv(x, w, chain(3), None)
    with pytest.raises(ValueError, match=r"weight must be \[d=5, 1, K\]"):
        unfolded_causal_conv(x, rand(D + 1, 1, 3), chain(4), None)
    with pytest.raises(ValueError, match=r"past must be \[B=2, K-1=2, d=5\]"):
        unfolded_causal_conv(x, w, chain(4), rand(B, 3, D))
    with pytest.raises(ValueError, match=r"bias must be \[d=5\]"):
        unfolded_causal_conv(x, w, chain(4), None, rand(D + 1))
