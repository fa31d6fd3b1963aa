"""RWKV-4 time mixing (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", §4.1).

Token shift: ``r, k, v`` are projections of ``mu x_t + (1 - mu) x_{t-1}`` (one ``mu`` per
projection and channel, eq. 11-13); ``wkv`` is the per-channel decaying attention with the
current-token bonus ``u`` (eq. 14); the output is ``W_o (sigmoid(r) * wkv)`` (eq. 15).
The registered mixer ``rwkv4`` is the time-mixing block only: longctx's LM block adds its own
MLP, so RWKV's channel mixing is provided as ``RWKVChannelMix`` for users who build RWKV stacks
but is not part of the mixer. Initialisation (the reference implementation's, for one layer of
a deep stack): decay ``w_c = exp(-5 + 8 (c / (C-1))^0.7)``-style spread of time scales, bonus
``u`` zigzag around ``log 0.3``, ``mu`` from 1 down to 0 across channels.
Decode state: the WKV sums ``(a, b, p)`` and the previous token's input (for the token shift).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive
from longctx.ops.rwkv4 import chunk_wkv, empty_state, wkv_step


@dataclass
class RWKV4Config(MixerConfig):
    chunk_size: int = 32  # tokens per chunk of the chunked WKV

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "chunk_size", self.chunk_size)


@dataclass
class RWKV4State(State):
    a: Tensor  # [B, C] numerator sum over the stream, scaled by e^{-p}
    b: Tensor  # [B, C] denominator sum, scaled by e^{-p}
    p: Tensor  # [B, C] running maximum exponent
    x_prev: Tensor  # [B, d_model] the previous token's input (token shift)


def token_shift(x: Tensor, x_prev: Tensor | None) -> Tensor:
    """``x_{t-1}`` for every t: ``x`` shifted right by one, ``x_prev`` (or zeros) first."""
    first = x_prev[:, None] if x_prev is not None else x.new_zeros(x[:, :1].shape)
    return torch.cat([first, x[:, :-1]], dim=1)


class RWKV4(Mixer):
    name = "rwkv4"
    state_class = RWKV4State

    def __init__(self, config: RWKV4Config) -> None:
        super().__init__(config)
        C = config.d_model
        ratio = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
        self.time_decay = nn.Parameter(-5 + 8 * ratio ** 0.7)  # w = exp(time_decay) > 0
        zigzag = ((torch.arange(C) + 1) % 3 - 1).float() * 0.5
        self.time_first = nn.Parameter(math.log(0.3) + zigzag)  # u
        self.mu_k = nn.Parameter(1 - ratio * 0.5)
        self.mu_v = nn.Parameter(1 - ratio * 0.5)
        self.mu_r = nn.Parameter(1 - ratio * 0.25)
        self.wk = nn.Linear(C, C, bias=False)
        self.wv = nn.Linear(C, C, bias=False)
        self.wr = nn.Linear(C, C, bias=False)
        self.wo = nn.Linear(C, C, bias=False)

    def _rkv(self, x: Tensor, x_prev: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        xx = token_shift(x, x_prev)

        def mix(mu: Tensor) -> Tensor:
            return mu * x + (1 - mu) * xx

        return self.wr(mix(self.mu_r)), self.wk(mix(self.mu_k)), self.wv(mix(self.mu_v))

    def forward(self, x: Tensor, state: RWKV4State | None = None) -> tuple[Tensor, RWKV4State | None]:
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
        r, k, v = self._rkv(x, None if state is None else state.x_prev)
        w, u = torch.exp(self.time_decay), self.time_first
        wkv_state = None if state is None else (state.a, state.b, state.p)
        if state is not None and x.shape[1] == 1:
            o, new = wkv_step(k[:, 0], v[:, 0], w, u, wkv_state)
            o = o[:, None]
        else:
            o, new = chunk_wkv(k, v, w, u, wkv_state, output_final_state=state is not None,
                               chunk_size=self.config.chunk_size)
        y = self.wo(torch.sigmoid(r) * o)
        return y, (None if state is None else RWKV4State(self.name, *new, x[:, -1]))

    def init_state(self, batch_size: int, device=None, dtype=None) -> RWKV4State:
        c = self.config
        dtype = dtype or self.param_dtype()
        like = torch.zeros((), device=device, dtype=dtype)
        a, b, p = empty_state(batch_size, c.d_model, like)
        return RWKV4State(self.name, a, b, p, torch.zeros(batch_size, c.d_model, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        return 4 * batch_size * self.config.d_model * dtype_bytes(dtype)


class RWKVChannelMix(nn.Module):
    """RWKV's channel mixing (eq. 16-18): token shift, ``k = relu(W_k x')^2``,
    ``out = sigmoid(W_r x'') * W_v k``. Stateless apart from the previous token."""

    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 4 * d_model
        self.mu_k = nn.Parameter(torch.full((d_model,), 0.5))
        self.mu_r = nn.Parameter(torch.full((d_model,), 0.5))
        self.wk = nn.Linear(d_model, hidden, bias=False)
        self.wv = nn.Linear(hidden, d_model, bias=False)
        self.wr = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, x_prev: Tensor | None = None) -> Tensor:
        xx = token_shift(x, x_prev)
        k = torch.relu(self.wk(self.mu_k * x + (1 - self.mu_k) * xx)) ** 2
        return torch.sigmoid(self.wr(self.mu_r * x + (1 - self.mu_r) * xx)) * self.wv(k)
