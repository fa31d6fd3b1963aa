"""MEGA: moving-average equipped gated attention (Ma et al. 2023, §3).

    X' = SiLU(EMA(X) + omega * X)                      multi-dimensional damped EMA (§3.1)
    Z  = SiLU(X' W_z + b_z),  Q = kappa_q * Z + mu_q,  K = kappa_k * Z + mu_k     (§3.2)
    V  = SiLU(X W_v + b_v)
    O  = softmax(Q K^T / sqrt(z_dim) + causal mask) V   single head (Mega-chunk: within chunks)
    gamma = SiLU(X' W_gamma + b_gamma),  phi = sigmoid(X' W_phi + b_phi)           (§3.3)
    H  = SiLU(X' W_h + (gamma * O) U_h + b_h),  Y = phi * H + (1 - phi) * X

Variant: softmax attention without MEGA's relative-position bias (the EMA carries the order);
the bidirectional EMA shares its decays and has its own ``eta``. ``chunk_size = 0`` is full
attention (the decode state keeps every key/value); ``chunk_size = c`` is Mega-chunk (§3.5):
attention inside chunks of ``c`` tokens, the EMA still over the whole sequence, so the decode
state is bounded (the current chunk's keys/values). ``causal=False``: bidirectional EMA and
attention, for classification.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive
from longctx.ops.ema import chunk_ema, ema_step


@dataclass
class MegaConfig(MixerConfig):
    ema_dim: int = 16  # h: EMA dimensions per channel
    z_dim: int = 0  # shared query/key width (0: d_model / 4, the paper's 128 for d = 512)
    v_dim: int = 0  # value width (0: 2 d_model, as the paper)
    chunk_size: int = 0  # 0: full attention; > 0: Mega-chunk attention inside chunks of this size

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "ema_dim", self.ema_dim)
        for f in ("z_dim", "v_dim", "chunk_size"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}.{f} must be an int >= 0, got {v!r}")

    @property
    def z(self) -> int:
        return self.z_dim or max(1, self.d_model // 4)

    @property
    def v(self) -> int:
        return self.v_dim or 2 * self.d_model


@dataclass
class MegaState(State):
    ema: Tensor  # [B, d_model, ema_dim] the EMA state
    k: Tensor  # [B, S, z] keys of the attended tokens (Mega-chunk: the current chunk's)
    v: Tensor  # [B, S, v] values
    n_seen: Tensor  # int64 0-dim: tokens seen


class Mega(Mixer):
    name = "mega"
    state_class = MegaState

    def __init__(self, config: MegaConfig) -> None:
        super().__init__(config)
        c = config
        d, h, z, v = c.d_model, c.ema_dim, c.z, c.v
        self.alpha_logit = nn.Parameter(torch.randn(d, h) * 0.2)  # alpha = sigmoid(.), MEGA's init ~N(0, 0.2)
        self.delta_logit = nn.Parameter(torch.randn(d, h) * 0.2)
        self.beta = nn.Parameter(torch.randn(d, h) * 0.02 + torch.where(torch.arange(h) % 2 == 0, 1.0, -1.0))
        self.eta = nn.Parameter(torch.randn(d, h) / math.sqrt(h))
        self.eta_backward = nn.Parameter(torch.randn(d, h) / math.sqrt(h)) if not c.causal else None
        self.omega = nn.Parameter(torch.randn(d) * 0.02)
        self.w_z, self.w_v = nn.Linear(d, z), nn.Linear(d, v)
        self.kappa = nn.Parameter(torch.randn(2, z) * 0.02 + 1.0)  # q, k scales
        self.mu = nn.Parameter(torch.zeros(2, z))  # q, k offsets
        self.w_gamma, self.w_phi, self.w_h = nn.Linear(d, v), nn.Linear(d, d), nn.Linear(d, d)
        self.u_h = nn.Linear(v, d, bias=False)

    def ema_params(self) -> dict[str, Tensor]:
        return {"alpha": torch.sigmoid(self.alpha_logit), "delta": torch.sigmoid(self.delta_logit),
                "beta": self.beta, "eta": self.eta}

    def forward(self, x: Tensor, state: MegaState | None = None) -> tuple[Tensor, MegaState | None]:
        self.check_input(x)
        c = self.config
        p = self.ema_params()
        if state is None:
            ema, _ = chunk_ema(x, **p, causal=c.causal, eta_backward=self.eta_backward)
            xp, q, k, v = self._project(x, ema)
            o = self._attend_blocks(q, k, v)
            return self._output(x, xp, o), None
        self.check_state(state, x.shape[0])
        if x.shape[1] == 1:
            ema, s = ema_step(x[:, 0], state.ema, **p)
            ema = ema[:, None]
        else:
            ema, s = chunk_ema(x, **p, initial_state=state.ema, output_final_state=True)
        xp, q, k, v = self._project(x, ema)
        o, k_c, v_c, n = self._attend_cached(q, k, v, state)
        return self._output(x, xp, o), MegaState(self.name, s, k_c, v_c, n)

    def _project(self, x: Tensor, ema: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xp = F.silu(ema + self.omega * x)  # X'
        zz = F.silu(self.w_z(xp))
        q, k = self.kappa[0] * zz + self.mu[0], self.kappa[1] * zz + self.mu[1]
        return xp, q, k, F.silu(self.w_v(x))

    def _output(self, x: Tensor, xp: Tensor, o: Tensor) -> Tensor:
        gamma, phi = F.silu(self.w_gamma(xp)), torch.sigmoid(self.w_phi(xp))
        h = F.silu(self.w_h(xp) + self.u_h(gamma * o))
        return phi * h + (1 - phi) * x

    def _attn(self, q: Tensor, k: Tensor, v: Tensor, q_offset: int) -> Tensor:
        """Single-head attention of ``q [B, T, z]`` over ``k [B, S, z]`` (causal: query i at key
        position ``q_offset + i``)."""
        mask = None
        if self.config.causal:
            mask = (torch.arange(k.shape[1], device=q.device)[None, :]
                    <= q_offset + torch.arange(q.shape[1], device=q.device)[:, None])
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask)[:, 0]

    def _attend_blocks(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        c = self.config.chunk_size or q.shape[1]
        return torch.cat([self._attn(q[:, s:s + c], k[:, s:s + c], v[:, s:s + c], 0)
                          for s in range(0, q.shape[1], c)], dim=1) if q.shape[1] else v[:, :0]

    def _attend_cached(self, q: Tensor, k: Tensor, v: Tensor, state: MegaState):
        """Continue the stream: pieces that stay inside one chunk attend to the cache + themselves."""
        cs, n = self.config.chunk_size, int(state.n_seen)
        k_c, v_c, outs, start = state.k, state.v, [], 0
        while start < q.shape[1]:
            if cs and n % cs == 0:  # a new chunk: forget the previous chunk's keys/values
                k_c, v_c = k_c[:, :0], v_c[:, :0]
            m = q.shape[1] - start if not cs else min(q.shape[1] - start, cs - n % cs)
            k_c = torch.cat([k_c, k[:, start:start + m]], dim=1)
            v_c = torch.cat([v_c, v[:, start:start + m]], dim=1)
            outs.append(self._attn(q[:, start:start + m], k_c, v_c, k_c.shape[1] - m))
            start, n = start + m, n + m
        n_seen = torch.full((), n, dtype=torch.int64, device=state.n_seen.device)
        return torch.cat(outs, dim=1), k_c, v_c, n_seen

    def init_state(self, batch_size: int, device=None, dtype=None) -> MegaState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        return MegaState(self.name, torch.zeros(batch_size, c.d_model, c.ema_dim, device=device, dtype=dtype),
                         torch.zeros(batch_size, 0, c.z, device=device, dtype=dtype),
                         torch.zeros(batch_size, 0, c.v, device=device, dtype=dtype),
                         torch.zeros((), dtype=torch.int64, device=device))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        held = seqlen if not c.chunk_size else (seqlen - 1) % c.chunk_size + 1 if seqlen else 0
        return batch_size * (c.d_model * c.ema_dim + held * (c.z + c.v)) * dtype_bytes(dtype)
