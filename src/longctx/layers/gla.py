"""Gated linear attention layer (Yang et al. 2024, "Gated Linear Attention Transformers", §4.4).

``S_t = diag(alpha_t) S_{t-1} + k_t v_t^T`` with a data-dependent, low-rank forget gate
``alpha_t = sigmoid(x_t W1 W2 + b)^(1/tau)``, tau = 16 (kept in log space), key dim
``expand_k * d_model``; output ``(RMSNorm(o) * swish(x W_r)) W_o``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import (
    check_positive,
    merge_heads,
    norm_eps,
    split_heads,
    stacked_weight,
    step_state,
    wants_fused_step,
)
from longctx.ops.gla import chunk_gla, gla_step


@dataclass
class GLAConfig(MixerConfig):
    expand_k: float = 0.5  # key/query width = expand_k * d_model (paper: 0.5)
    gate_rank: int = 16  # rank of the low-rank gate projection W1 W2 (paper: 16)
    gate_tau: float = 16.0  # temperature: log alpha = logsigmoid(.) / tau (paper: 16)
    chunk_size: int = 64  # chunk length of the chunked form

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "gate_rank", self.gate_rank)
        check_positive(name, "chunk_size", self.chunk_size)
        if self.gate_tau <= 0:
            raise ValueError(f"{name}.gate_tau must be > 0, got {self.gate_tau!r}")
        if self.key_dim <= 0 or self.key_dim % self.n_heads != 0:
            raise ValueError(
                f"{name}: expand_k * d_model = {self.expand_k * self.d_model:g} must be a positive "
                f"multiple of n_heads={self.n_heads}"
            )

    @property
    def key_dim(self) -> int:
        return int(self.expand_k * self.d_model)


@dataclass
class GLAState(State):
    S: Tensor  # [B, H, Dk, Dv]


class GatedLinearAttention(Mixer):
    name = "gla"
    state_class = GLAState

    def __init__(self, config: GLAConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.key_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.key_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.d_model, bias=False)
        self.gate = nn.Sequential(nn.Linear(c.d_model, c.gate_rank, bias=False),
                                  nn.Linear(c.gate_rank, c.key_dim, bias=True))
        self.wr = nn.Linear(c.d_model, c.d_model, bias=False)
        self.norm = nn.RMSNorm(c.head_dim, eps=1e-5)
        self.wo = nn.Linear(c.d_model, c.d_model, bias=False)

    # -- the steps of forward (a subclass, e.g. log-linear GLA, reuses them) ---------------------
    def _inputs(self, x: Tensor, state: State | None) -> tuple[dict[str, Tensor], None]:
        """x [B, T, d_model] -> ({"q", "k": [B, T, H, Dk], "v": [B, T, H, Dv], "g": [B, T, H, Dk]
        log alpha <= 0} as ``chunk_gla`` takes them, None: no conv buffer)."""
        c = self.config
        return {
            "q": split_heads(self.wq(x), c.n_heads),  # [B, T, H, Dk]
            "k": split_heads(self.wk(x), c.n_heads),
            "v": split_heads(self.wv(x), c.n_heads),  # [B, T, H, Dv]
            "g": split_heads(F.logsigmoid(self.gate(x)) / c.gate_tau, c.n_heads),  # log alpha
        }, None

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """o [B, T, H, Dv] -> y [B, T, d_model]: (RMSNorm(o) * swish(x W_r)) W_o (§4.4)."""
        return self.wo(merge_heads(self.norm(o)) * F.silu(self.wr(x)))

    def _fused_step(self, x: Tensor, state: GLAState) -> tuple[Tensor, GLAState] | None:
        """The one-token decode step as one GEMV (q, k, v, the gate's first projection and W_r
        stacked), one Triton kernel (the gate's second projection, logsigmoid, the GLA step,
        RMSNorm, the output gate: ``triton_layer_step``) and W_o; None where it does not apply:
        more than one token, a gradient wanted, heads too large for it, or the backend not asking
        for it (``"auto"`` once it has passed on a GPU, ``"triton"`` always)."""
        c = self.config
        H = c.n_heads
        K, V = c.key_dim // H, c.head_dim
        if c.gate_rank > 64 or not wants_fused_step(self, "gla_layer_step", x, (state.S,), K, V):
            return None
        from longctx.ops.common.triton_layer_step import gla_layer_step

        S, S_out = step_state(state.S, torch.promote_types(x.dtype, torch.float32))  # S in >= float32
        w_in = stacked_weight(self, [self.wq.weight, self.wk.weight, self.wv.weight, self.gate[0].weight,
                                     self.wr.weight])
        g2 = self.gate[1]
        out = gla_layer_step(F.linear(x[:, 0], w_in), g2.weight, g2.bias, S, self.norm.weight, H=H, K=K, V=V,
                             scale=K ** -0.5, tau=c.gate_tau, norm_eps=norm_eps(self.norm, x.dtype), S_out=S_out)
        return self.wo(out).unsqueeze(1), GLAState(self.name, S_out)

    def forward(self, x: Tensor, state: GLAState | None = None):
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
            fused = self._fused_step(x, state)
            if fused is not None:
                return fused
        c = self.config
        inputs, _ = self._inputs(x, state)
        q, k, v, g = inputs["q"], inputs["k"], inputs["v"], inputs["g"]
        if state is None:
            o, S = chunk_gla(q, k, v, g, chunk_size=c.chunk_size)
        else:
            self.check_state(state, x.shape[0])
            if x.shape[1] == 1:
                o, S = gla_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], state.S)
                o = o.unsqueeze(1)
            else:
                o, S = chunk_gla(q, k, v, g, initial_state=state.S, output_final_state=True,
                                 chunk_size=c.chunk_size)
        return self._output(o, x, inputs), (None if state is None else GLAState(self.name, S))

    def init_state(self, batch_size: int, device=None, dtype=None) -> GLAState:
        c = self.config
        dtype = dtype or self.param_dtype()
        dk = c.key_dim // c.n_heads
        return GLAState(self.name, torch.zeros(batch_size, c.n_heads, dk, c.head_dim, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * c.key_dim * c.head_dim * dtype_bytes(dtype)
