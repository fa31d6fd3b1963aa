"""Draft candidates packed into a token tree, and the walk that accepts a path of it.

``k`` candidate continuations of ``g`` tokens each are merged into a trie whose node 0 is the
last committed token (the one the target has not consumed yet). The target's distribution at
every node comes from one verification (a batch of k chains, or one tree forward). The walk
starts at node 0 and, at each node, tests the candidates' next tokens in order:

* greedy: move to the child whose token is the target's argmax, stop if there is none;
* sampling: multi-draft speculative sampling (SpecInfer, Miao et al. 2024, §4.3 "multi-step
  speculative sampling"; Yang et al. 2024, multi-candidate speculative decoding): candidate
  tokens drawn i.i.d. from the draft ``q`` are tested one after another with the single-draft
  rule, ``p`` replaced by the residual after each rejection; if all are rejected the new token is
  drawn from the last residual. With one candidate this is Leviathan et al. 2023, Alg. 1.

The walk returns the accepted nodes and the next token (the correction, or the bonus token when
a leaf was reached), so every round commits ``len(path) + 1`` tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from longctx.generate.sampling import Sampler, residual


@dataclass
class TokenTree:
    """A trie of candidate chains below the last committed token (node 0)."""

    tokens: list[int]  # token of each node; node 0 = the last committed token
    parents: list[int]  # parent node, -1 for node 0 (child of the last consumed token)
    depth: list[int]  # 0 for node 0, j for the j-th draft token of a chain
    through: list[list[int]]  # candidates whose prefix ends at or passes through the node
    children: dict[tuple[int, int], int] = field(default_factory=dict)  # (node, token) -> child

    @classmethod
    def from_chains(cls, root: int, chains: Tensor) -> TokenTree:
        """``chains [k, g]`` draft tokens of each candidate -> the merged trie below ``root``."""
        k, g = chains.shape
        tree = cls([root], [-1], [0], [list(range(k))])
        rows = chains.tolist()
        for c in range(k):
            v = 0
            for j in range(g):
                key = (v, rows[c][j])
                if key not in tree.children:
                    tree.children[key] = len(tree.tokens)
                    tree.tokens.append(rows[c][j])
                    tree.parents.append(v)
                    tree.depth.append(j + 1)
                    tree.through.append([])
                v = tree.children[key]
                tree.through[v].append(c)
        return tree

    def __len__(self) -> int:
        return len(self.tokens)

    def parents_tensor(self, device=None) -> Tensor:
        return torch.tensor(self.parents, dtype=torch.int64, device=device)


def walk(tree: TokenTree, chains: Tensor, p_at: Callable[[int], Tensor],
         q_at: Callable[[int], Tensor], sampler: Sampler) -> tuple[list[int], int]:
    """Accept a path of ``tree``: returns (accepted node ids, next token).

    ``p_at(v)`` is the target's distribution of the token after node v, ``q_at(v)`` the draft's
    (the distribution the candidates' tokens after v were drawn from); ``chains [k, g]``.
    """
    g = chains.shape[1]
    rows = chains.tolist()
    path: list[int] = []
    v = 0
    while True:
        p = p_at(v)  # [V]
        if sampler.greedy:
            nxt = int(p.argmax())
            child = tree.children.get((v, nxt))
        else:
            child, nxt = _multi_draft_step(tree, v, rows, g, p, q_at, sampler)
        if child is None:
            return path, nxt
        path.append(child)
        v = child


def _multi_draft_step(tree: TokenTree, v: int, rows: list[list[int]], g: int, p: Tensor,
                      q_at: Callable[[int], Tensor], sampler: Sampler) -> tuple[int | None, int]:
    """One level of multi-draft speculative sampling: (accepted child or None, its token)."""
    d = tree.depth[v]
    if d < g:
        q = q_at(v)
        for c in tree.through[v]:  # i.i.d. draws from q, tested in turn
            x = rows[c][d]
            if sampler.accept(p, q, x):
                return tree.children[(v, x)], x
            p = residual(p, q)
    return None, int(sampler.draw(p[None])[0])
