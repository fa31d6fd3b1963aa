"""Linear attention (Katharopoulos et al. 2020), with the Based Taylor map (Arora et al. 2024).

``o_t = phi(q_t)^T S_t [/ phi(q_t)^T z_t]`` with ``S_t = sum_s phi(k_s) v_s^T``; decode memory is
the fixed-size ``(S, z)`` whatever the sequence length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_choice, check_positive, merge_heads, split_heads
from longctx.ops.linear_attention import chunk_linear_attention, feature_dim, linear_attention_step

FEATURE_MAPS = ("identity", "elu+1", "relu", "taylor")


@dataclass
class LinearAttentionConfig(MixerConfig):
    feature_map: str = "elu+1"  # phi: "identity", "elu+1", "relu" or "taylor" (Based)
    normalize: bool = True  # divide by phi(q)^T z (Katharopoulos et al. eq. 5)
    feature_dim: int | None = None  # q/k head dim before phi; None = d_model / n_heads (Based: 16)
    chunk_size: int = 64  # chunk length of the chunked training form

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: eq. 4 with no mask

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_choice(name, "feature_map", self.feature_map, FEATURE_MAPS)
        check_positive(name, "chunk_size", self.chunk_size)
        if self.feature_dim is not None:
            check_positive(name, "feature_dim", self.feature_dim)

    @property
    def qk_dim(self) -> int:
        return self.feature_dim or self.head_dim


@dataclass
class LinearAttentionState(State):
    S: Tensor  # [B, H, F, Dv] sum of phi(k) v^T
    z: Tensor  # [B, H, F] sum of phi(k)


class LinearAttention(Mixer):
    name = "linear_attention"
    state_class = LinearAttentionState

    def __init__(self, config: LinearAttentionConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.n_heads * c.qk_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.n_heads * c.qk_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.d_model, bias=False)
        self.wo = nn.Linear(c.d_model, c.d_model, bias=False)

    # -- the steps of forward (a subclass, e.g. log-linear attention, reuses them) ---------------
    def _inputs(self, x: Tensor, state: State | None) -> tuple[dict[str, Tensor], None]:
        """x [B, T, d_model] -> ({"q", "k": [B, T, H, Dk], "v": [B, T, H, Dv]} before the feature
        map, None: no conv buffer)."""
        c = self.config
        return {
            "q": split_heads(self.wq(x), c.n_heads),  # [B, T, H, Dk]
            "k": split_heads(self.wk(x), c.n_heads),
            "v": split_heads(self.wv(x), c.n_heads),  # [B, T, H, Dv]
        }, None

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """o [B, T, H, Dv] -> y [B, T, d_model]."""
        return self.wo(merge_heads(o))

    def forward(self, x: Tensor, state: LinearAttentionState | None = None):
        self.check_input(x)
        c = self.config
        inputs, _ = self._inputs(x, state)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        opts = {"feature_map": c.feature_map, "normalize": c.normalize}
        if state is None:
            o, _ = chunk_linear_attention(q, k, v, **opts, chunk_size=c.chunk_size, causal=c.causal)
            return self._output(o, x, inputs), None
        self.check_state(state, x.shape[0])
        if x.shape[1] == 1:
            o, new = linear_attention_step(q[:, 0], k[:, 0], v[:, 0], (state.S, state.z), **opts)
            o = o.unsqueeze(1)
        else:
            o, new = chunk_linear_attention(q, k, v, **opts, initial_state=(state.S, state.z),
                                            output_final_state=True, chunk_size=c.chunk_size)
        return self._output(o, x, inputs), LinearAttentionState(self.name, *new)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LinearAttentionState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        F = feature_dim(c.feature_map, c.qk_dim)
        S = torch.zeros(batch_size, c.n_heads, F, c.head_dim, device=device, dtype=dtype)
        z = torch.zeros(batch_size, c.n_heads, F, device=device, dtype=dtype)
        return LinearAttentionState(self.name, S, z)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        F = feature_dim(c.feature_map, c.qk_dim)
        return batch_size * c.n_heads * F * (c.head_dim + 1) * dtype_bytes(dtype)
