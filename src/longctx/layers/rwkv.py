"""RWKV time mixing: RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era")
and RWKV-6 / Finch (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence").

The registered mixers ``rwkv4`` and ``rwkv6`` are the time-mixing blocks only (token shift +
WKV + output gate): longctx's LM block adds its own MLP, so RWKV's channel mixing is provided as
``RWKVChannelMix`` for users who build RWKV stacks but is not part of the mixers.

**rwkv4**: ``r, k, v`` are projections of ``mu x_t + (1 - mu) x_{t-1}`` (one ``mu`` per
projection and channel); ``wkv`` is the per-channel decaying attention with the current-token
bonus ``u``; the output is ``W_o (sigmoid(r) * wkv)``. Initialisation: decay
``w = exp(-5 + 8 (c / (C-1))^0.7)`` (a spread of time scales) and bonus ``u`` a zigzag around
``log 0.3``, as the reference implementation's first layer; ``mu`` from 1 (the current token
only) down to 0.5 across channels (0.75 for r), a choice of ours.
Decode state: the WKV sums ``(a, b, p)`` and the previous token's input.

**rwkv6** (Finch): see ``RWKV6``. Decode state: the per-head ``[K, V]`` WKV matrix and the
previous token's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive, split_heads
from longctx.ops.rwkv4 import chunk_wkv, empty_state, wkv_step
from longctx.ops.rwkv6 import chunk_rwkv6, rwkv6_step


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

    def forward(self, x: Tensor,
                state: RWKV4State | None = None) -> tuple[Tensor, RWKV4State | None]:
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
        x_prev = torch.zeros(batch_size, c.d_model, device=device, dtype=dtype)
        return RWKV4State(self.name, a, b, p, x_prev)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        return 4 * batch_size * self.config.d_model * dtype_bytes(dtype)


class RWKVChannelMix(nn.Module):
    """RWKV's channel mixing, the same in RWKV-4 and RWKV-5/6: token shift,
    ``k = relu(W_k x')^2``, ``out = sigmoid(W_r x'') * W_v k`` (``x', x''`` the shifted mixes).
    Stateless apart from the previous token. Not part of the ``rwkv4``/``rwkv6`` mixers."""

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


# -- RWKV-6 (Finch) ----------------------------------------------------------------------------

SHIFTED = ("r", "k", "v", "g", "w")  # the five data-dependent token shifts (ddlerp) of Finch


@dataclass
class RWKV6Config(MixerConfig):
    chunk_size: int = 64  # tokens per chunk of the chunked WKV
    mix_rank: int = 32  # rank of each token-shift LoRA A_x B_x (reference implementation: 32)
    decay_rank: int = 64  # rank of the decay LoRA A_d B_d (reference implementation: 64)
    norm_eps: float = 64e-5  # eps of the per-head GroupNorm of the WKV output (reference: 64e-5)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for field in ("chunk_size", "mix_rank", "decay_rank"):
            check_positive(name, field, getattr(self, field))
        if not self.norm_eps > 0:
            raise ValueError(f"{name}.norm_eps must be > 0, got {self.norm_eps!r}")


@dataclass
class RWKV6State(State):
    S: Tensor  # [B, H, K, V] WKV state: sum of decayed k_i^T v_i over earlier tokens
    x_prev: Tensor  # [B, d_model] the previous token's input (token shift)


class RWKV6(Mixer):
    """RWKV-6 / Finch time mixing (Peng et al. 2024), per head of size ``K = V = d_model / H``:

        lora_x(z)  = lambda_x + tanh(z A_x) B_x
        ddlerp_x   = x_t + (x_{t-1} - x_t) * lora_x(x_t + (x_{t-1} - x_t) * mu_x),  x in r,k,v,g,w
        r, k, v, g = ddlerp_{r,k,v,g} W_{r,k,v,g};   d_t = lambda_d + tanh(ddlerp_w A_d) B_d
        w_t        = exp(-exp(d_t))                   (data-dependent decay, per channel)
        wkv_t      = diag(u) k_t^T v_t + sum_{i<t} diag(prod_{j=i+1}^{t-1} w_j) k_i^T v_i
        y_t        = W_o (SiLU(g_t) * GroupNorm_H(r_t wkv_t))

    The paper's "LayerNorm" of each head's ``r_t wkv_t`` is a GroupNorm with H groups (one
    normalisation per head, per-channel affine), as in the reference implementation. The token
    shifts' five LoRAs have their own ``A_x`` (the reference code concatenates them into one
    matrix; the same function). Initialisation: the reference implementation's values for the
    first layer of a stack (a mixer does not know its depth): ``mu, lambda_x = 1 - c/C``
    (``1 - (c/C)^0.5`` for r and g), ``lambda_d = -6 + 5 (c/(C-1))^0.7``, bonus ``u`` a zigzag of
    +-0.1, LoRA ``A = 0`` and ``B ~ U(-0.01, 0.01)``; projections PyTorch's default.
    Decode state: ``S [B, H, K, V]`` and the previous token's input. Causal only.
    """

    name = "rwkv6"
    state_class = RWKV6State

    def __init__(self, config: RWKV6Config) -> None:
        super().__init__(config)
        C, H = config.d_model, config.n_heads
        ratio = torch.arange(C, dtype=torch.float32) / C
        self.mu_x = nn.Parameter(1 - ratio)  # weight of x_{t-1} in the LoRAs' input
        root = 1 - ratio**0.5
        self.mix_lambda = nn.Parameter(torch.stack(  # [5, C] lambda_x for x in SHIFTED
            [root, 1 - ratio, 1 - ratio, root, 1 - ratio]))
        self.mix_A = nn.Parameter(torch.zeros(len(SHIFTED), C, config.mix_rank))
        self.mix_B = nn.Parameter(
            torch.empty(len(SHIFTED), config.mix_rank, C).uniform_(-0.01, 0.01))
        spread = torch.arange(C, dtype=torch.float32) / max(C - 1, 1)
        self.decay_lambda = nn.Parameter(-6 + 5 * spread**0.7)  # lambda_d: w = exp(-exp(-6 .. -1))
        self.decay_A = nn.Parameter(torch.zeros(C, config.decay_rank))
        self.decay_B = nn.Parameter(torch.empty(config.decay_rank, C).uniform_(-0.01, 0.01))
        zigzag = ((torch.arange(C) + 1) % 3 - 1).float() * 0.1
        self.bonus = nn.Parameter(zigzag.view(H, C // H))  # u [H, K]
        self.wr, self.wk, self.wv, self.wg, self.wo = (
            nn.Linear(C, C, bias=False) for _ in range(5))
        self.norm = nn.GroupNorm(H, C, eps=config.norm_eps)

    def _inputs(self, x: Tensor, x_prev: Tensor | None) -> tuple[Tensor, ...]:
        """x [B, T, C] -> r, k, v, log w [B, T, H, K] and the gate g [B, T, C]."""
        H = self.config.n_heads
        dx = token_shift(x, x_prev) - x  # x_{t-1} - x_t
        z = x + dx * self.mu_x
        lora = self.mix_lambda[:, None, None] + torch.einsum(  # [5, B, T, C]
            "xbtr,xrc->xbtc", torch.tanh(torch.einsum("btc,xcr->xbtr", z, self.mix_A)), self.mix_B)
        xr, xk, xv, xg, xw = x + dx * lora  # ddlerp_x(x_t, x_{t-1})
        d = self.decay_lambda + torch.tanh(xw @ self.decay_A) @ self.decay_B  # [B, T, C]
        log_w = -torch.exp(d)  # log of w_t = exp(-exp(d_t))
        r, k, v, log_w = (split_heads(t, H) for t in (self.wr(xr), self.wk(xk), self.wv(xv), log_w))
        return r, k, v, log_w, self.wg(xg)

    def forward(self, x: Tensor,
                state: RWKV6State | None = None) -> tuple[Tensor, RWKV6State | None]:
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
        B, T, C = x.shape
        r, k, v, log_w, g = self._inputs(x, None if state is None else state.x_prev)
        if state is not None and T == 1:
            o, S = rwkv6_step(r[:, 0], k[:, 0], v[:, 0], log_w[:, 0], self.bonus, state.S)
            o = o[:, None]
        else:
            o, S = chunk_rwkv6(r, k, v, log_w, self.bonus,
                               initial_state=None if state is None else state.S,
                               output_final_state=state is not None,
                               chunk_size=self.config.chunk_size)
        o = self.norm(o.reshape(B * T, C)).view(B, T, C)  # one LayerNorm per head
        y = self.wo(F.silu(g) * o)
        return y, (None if state is None else RWKV6State(self.name, S, x[:, -1]))

    def init_state(self, batch_size: int, device=None, dtype=None) -> RWKV6State:
        c = self.config
        dtype = dtype or self.param_dtype()
        S = torch.zeros(batch_size, c.n_heads, c.head_dim, c.head_dim, device=device, dtype=dtype)
        x_prev = torch.zeros(batch_size, c.d_model, device=device, dtype=dtype)
        return RWKV6State(self.name, S, x_prev)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * c.d_model * (c.head_dim + 1) * dtype_bytes(dtype)
