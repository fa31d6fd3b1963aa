"""MEGA: moving-average equipped gated attention (Ma et al. 2023, §3).

    X' = SiLU(EMA(X) + omega * X)                      multi-dimensional damped EMA (§3.1)
    Z  = SiLU(X' W_z + b_z),  Q = kappa_q * Z + mu_q,  K = kappa_k * Z + mu_k     (§3.2)
    V  = SiLU(X W_v + b_v)
    O  = f(Q K^T / tau + b_rel + causal mask) V          single head (Mega-chunk: within chunks)
    gamma = SiLU(X' W_gamma + b_gamma),  phi = sigmoid(X' W_phi + b_phi)           (§3.3)
    H  = SiLU(X' W_h + (gamma * O) U_h + b_h),  Y = phi * H + (1 - phi) * X

Attention function ``f`` (``attention_activation``, MEGA's gated attention, §3.2):
- ``"softmax"`` (default): ``tau = sqrt(z_dim)``, masked keys get ``-inf``.
- ``"laplace"``: ``f(x) = 0.5 [1 + erf((x - mu) / (sigma sqrt 2))]``, ``mu = sqrt(1/2)``,
  ``sigma = sqrt(1 / (4 pi))`` (MEGA's Laplace attention function: a bounded stand-in for
  relu^2), ``tau = n_i``, the number of keys query ``i`` attends (causal: its position in the
  window + 1; bidirectional: the window length), masked weights set to 0 after ``f`` (MEGA's
  reference code divides by the per-row count of unmasked keys in the same way).
- ``"relu2"``: ``f(x) = relu(x)^2`` (So et al. 2021's squared ReLU), ``tau = n_i`` as laplace.

Relative-position bias ``b_rel[i, j]`` (``rel_pos_bias``), a function of ``i - j`` only, so it is
the same in one pass, in chunks carried by the state and in token-by-token decode:
- ``"none"`` (default): no bias (the EMA carries the order).
- ``"simple"``: a learned scalar per distance, ``b_rel[i, j] = w[i - j]`` (MEGA's
  ``SimpleRelativePositionalBias``; causal: ``w[0 .. M-1]``, bidirectional: ``w[-(M-1) .. M-1]``)
  with ``M = max_positions`` (0: ``chunk_size``). A window reaching distance ``>= M`` (full
  attention longer than ``M`` tokens) raises an error naming ``max_positions``; no clamping.
- ``"rotary"``: MEGA's ``RotaryRelativePositionalBias``: ``b_rel[i, j] = <R_i a, R_j b>`` with two
  learned vectors ``a, b [z_dim]`` rotated by RoPE (base 10000) at positions ``i`` and ``j``;
  equal to ``sum_k (a1 b1 + a2 b2)_k cos((i-j) theta_k) + (a1 b2 - a2 b1)_k sin((i-j) theta_k)``,
  any length.

The bidirectional EMA shares its decays and has its own ``eta``. ``chunk_size = 0`` is full
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
from longctx.layers.common import check_choice, check_positive
from longctx.ops.ema import chunk_ema, ema_step

ATTENTION_ACTIVATIONS = ("softmax", "laplace", "relu2")
REL_POS_BIASES = ("none", "simple", "rotary")
LAPLACE_MU, LAPLACE_SIGMA = math.sqrt(0.5), math.sqrt(1.0 / (4.0 * math.pi))


def laplace(x: Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA) -> Tensor:
    """MEGA's Laplace attention function (Ma et al. 2023, "Laplace attention function"), elementwise:
    ``0.5 [1 + erf((x - mu) / (sigma sqrt 2))]`` with ``mu = sqrt(1/2)``, ``sigma = sqrt(1/(4 pi))``."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU ``relu(x)^2`` (So et al. 2021), MEGA's other element-wise attention function."""
    return F.relu(x) ** 2


@dataclass
class MegaConfig(MixerConfig):
    ema_dim: int = 16  # h: EMA dimensions per channel
    z_dim: int = 0  # shared query/key width (0: d_model / 4, the paper's 128 for d = 512)
    v_dim: int = 0  # value width (0: 2 d_model, as the paper)
    chunk_size: int = 0  # 0: full attention; > 0: Mega-chunk attention inside chunks of this size
    attention_activation: str = "softmax"  # f: "softmax" (Q K^T / sqrt(z)), "laplace" or "relu2" (Q K^T / n)
    rel_pos_bias: str = "none"  # b_rel: "none", "simple" (learned w[i - j]) or "rotary" (MEGA's RoPE bias)
    max_positions: int = 0  # "simple": distances covered (0: chunk_size; required with full attention)

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "ema_dim", self.ema_dim)
        for f in ("z_dim", "v_dim", "chunk_size", "max_positions"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}.{f} must be an int >= 0, got {v!r}")
        check_choice(name, "attention_activation", self.attention_activation, ATTENTION_ACTIVATIONS)
        check_choice(name, "rel_pos_bias", self.rel_pos_bias, REL_POS_BIASES)
        if self.rel_pos_bias == "simple":
            if not self.bias_positions:
                raise ValueError(f"{name}.max_positions must be > 0 for rel_pos_bias='simple' with full "
                                 "attention (chunk_size=0): it sets how many distances the bias learns")
            if self.chunk_size and self.bias_positions < self.chunk_size:
                raise ValueError(f"{name}.max_positions={self.max_positions} must be >= chunk_size="
                                 f"{self.chunk_size} (distances inside a chunk reach chunk_size - 1)")
        if self.rel_pos_bias == "rotary" and self.z % 2:
            raise ValueError(f"{name}: rel_pos_bias='rotary' rotates pairs, so the query/key width "
                             f"(z_dim, or d_model / 4) must be even, got {self.z}")

    @property
    def z(self) -> int:
        return self.z_dim or max(1, self.d_model // 4)

    @property
    def bias_positions(self) -> int:
        """``M``: the simple bias covers distances ``0 .. M-1``."""
        return self.max_positions or self.chunk_size

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
        if c.rel_pos_bias == "simple":  # w[i - j]; MEGA's init N(0, 0.02)
            self.rel_bias = nn.Parameter(torch.randn(c.bias_positions if c.causal else 2 * c.bias_positions - 1) * 0.02)
        elif c.rel_pos_bias == "rotary":  # the rotated vectors a, b; MEGA's init N(0, 0.02)
            self.rel_rotary = nn.Parameter(torch.randn(2, z) * 0.02)

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
        """Single-head attention of ``q [B, T, z]`` over ``k [B, S, z]``, ``v [B, S, v]`` -> ``[B, T, v]``
        (query i at key position ``q_offset + i``; causal: keys at positions <= its own)."""
        c = self.config
        T, S, dev = q.shape[1], k.shape[1], q.device
        d = q_offset + torch.arange(T, device=dev)[:, None] - torch.arange(S, device=dev)[None, :]  # [T, S] i - j
        mask = d >= 0 if c.causal else None
        if c.attention_activation == "softmax" and c.rel_pos_bias == "none":
            return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=mask)[:, 0]
        bias = self.relative_bias(d, q.dtype) if c.rel_pos_bias != "none" else None  # [T, S]
        if c.attention_activation == "softmax":  # softmax(Q K^T / sqrt(z) + b_rel + mask); bias is set here
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask=bias)[:, 0]
        n = (d[:, :1] + 1 if c.causal else torch.full((T, 1), S, device=dev)).to(q.dtype)  # [T, 1] keys attended
        scores = q @ k.transpose(1, 2) / n  # [B, T, S]: Q K^T / tau, tau = n (MEGA §3.2)
        if bias is not None:
            scores = scores + bias
        w = laplace(scores) if c.attention_activation == "laplace" else relu2(scores)
        if mask is not None:
            w = w * mask
        return w @ v

    def relative_bias(self, d: Tensor, dtype: torch.dtype) -> Tensor:
        """``b_rel`` at the distances ``d = i - j`` (int, any shape) -> same shape, ``dtype``."""
        c = self.config
        if c.rel_pos_bias == "simple":
            M = c.bias_positions
            reach = int(d.abs().max()) if d.numel() else 0
            if reach >= M:
                raise ValueError(f"Mega: rel_pos_bias='simple' learns distances 0 .. max_positions - 1 = {M - 1}, "
                                 f"but this attention window reaches distance {reach}; raise max_positions "
                                 "(or use Mega-chunk, chunk_size <= max_positions)")
            idx = d.clamp(min=0) if c.causal else d + (M - 1)  # causal: future keys are masked anyway
            return self.rel_bias.to(dtype)[idx]
        a, b = self.rel_rotary.to(dtype).chunk(2, dim=0)
        a1, a2 = a[0].chunk(2)  # MEGA rotates (first half, second half) pairs
        b1, b2 = b[0].chunk(2)
        half = a1.shape[0]
        theta = torch.exp(-math.log(10000.0) / half * torch.arange(half, device=d.device, dtype=dtype))
        ang = d.to(dtype)[..., None] * theta  # [..., z/2]
        # <R_i a, R_j b> = Re((a1 + i a2) conj(b1 + i b2) e^{i (i - j) theta})
        return (torch.cos(ang) * (a1 * b1 + a2 * b2) + torch.sin(ang) * (a1 * b2 - a2 * b1)).sum(-1)

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
