"""Mamba-1 mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", §3.4 and Fig. 3): the Mamba block without its norm and residual.

``x, z = in_proj(h)``; ``u = SiLU(conv1d(x))`` (causal, depthwise, kernel 4); ``(dt, B, C) =
x_proj(u)`` with ``dt = softplus(dt_proj(dt_low))``; ``y = S6(u; dt, A, B, C, D) * SiLU(z)``;
``out_proj(y)``. Width ``d_inner = expand * d_model``; no heads (``n_heads`` is accepted, unused).
Decode memory: the conv's last ``d_conv - 1`` inputs and ``h [B, d_inner, N]``, constant in T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive
from longctx.ops.mamba import chunk_selective_scan, selective_scan_step


@dataclass
class MambaConfig(MixerConfig):
    """``n_heads`` (from MixerConfig) is unused: Mamba-1 has one state per channel, no heads."""

    d_state: int = 16  # N, the SSM state size per channel (paper: 16)
    expand: int = 2  # d_inner = expand * d_model (paper: E = 2)
    d_conv: int = 4  # kernel of the causal depthwise conv before the SSM (paper: 4)
    dt_rank: int | None = None  # rank of the dt projection; None = ceil(d_model / 16) (paper)
    dt_min: float = 1e-3  # softplus(dt_proj.bias) is log-uniform in [dt_min, dt_max] at init
    dt_max: float = 1e-1  # (paper §3.6: Delta initialised in [0.001, 0.1])
    bias: bool = False  # bias of in_proj / out_proj (paper: none)
    conv_bias: bool = True  # bias of the conv (paper: with bias)
    chunk_size: int = 64  # chunk length of the chunked selective scan

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        for field in ("d_state", "expand", "d_conv", "chunk_size"):
            check_positive(name, field, getattr(self, field))
        if self.dt_rank is not None:
            check_positive(name, "dt_rank", self.dt_rank)
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"{name}: need 0 < dt_min <= dt_max, got dt_min={self.dt_min!r}, dt_max={self.dt_max!r}"
            )

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def rank(self) -> int:
        """The dt projection's rank: ``dt_rank`` or ceil(d_model / 16)."""
        return self.dt_rank or math.ceil(self.d_model / 16)


@dataclass
class MambaState(State):
    conv: Tensor  # [B, d_conv - 1, d_inner] the conv's last inputs x, oldest first
    h: Tensor  # [B, d_inner, N] the SSM state


class Mamba(Mixer):
    name = "mamba"
    state_class = MambaState

    def __init__(self, config: MambaConfig) -> None:
        super().__init__(config)
        c = config
        E, N, R = c.d_inner, c.d_state, c.rank
        self.in_proj = nn.Linear(c.d_model, 2 * E, bias=c.bias)  # rows [:E] -> x, [E:] -> z
        self.conv1d = nn.Conv1d(E, E, c.d_conv, groups=E, bias=c.conv_bias)  # applied causally
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)  # -> (dt_low, B, C)
        self.dt_proj = nn.Linear(R, E, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1.0)).repeat(E, 1))  # [E, N]
        self.D = nn.Parameter(torch.ones(E))  # skip u -> y, init 1
        self.out_proj = nn.Linear(E, c.d_model, bias=c.bias)
        self._init_dt_bias()

    def _init_dt_bias(self) -> None:
        """softplus(bias) log-uniform in [dt_min, dt_max] (§3.6); bias = softplus^-1(dt)."""
        c = self.config
        u = torch.rand(c.d_inner)
        dt = torch.exp(u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # log(e^dt - 1), stable

    # -- the three steps of forward (subclasses, e.g. log-linear variants, override pieces) ---
    def _in_proj(self, x: Tensor, part: int) -> Tensor:
        """Half ``part`` (0: the SSM branch x, 1: the gate z) of in_proj: [B, T, d_inner]."""
        E = self.config.d_inner
        rows = slice(part * E, (part + 1) * E)
        bias = None if self.in_proj.bias is None else self.in_proj.bias[rows]
        return F.linear(x, self.in_proj.weight[rows], bias)

    def _conv(self, xs: Tensor, state: MambaState | None) -> tuple[Tensor, Tensor | None]:
        """Causal depthwise conv over xs [B, T, E] after the carried inputs (zeros without state).
        Returns the conv output [B, T, E] and the new buffer (None without state)."""
        B, _, E = xs.shape
        K = self.config.d_conv
        past = xs.new_zeros(B, K - 1, E) if state is None else state.conv.to(xs.dtype)
        xp = torch.cat([past, xs], dim=1)  # [B, K - 1 + T, E]
        out = F.conv1d(xp.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, groups=E)
        buf = None if state is None else xp[:, xp.shape[1] - (K - 1):].clone()
        return out.transpose(1, 2), buf

    def _inputs(self, x: Tensor, state: MambaState | None) -> tuple[dict[str, Tensor], Tensor | None]:
        """x [B, T, d_model] -> (the scan's inputs as chunk_selective_scan takes them:
        u, dt [B, T, E], A [E, N], B, C [B, T, N], D [E]; the new conv buffer or None)."""
        c = self.config
        u, buf = self._conv(self._in_proj(x, 0), state)
        u = F.silu(u)  # [B, T, E]
        dt_low, B, C = self.x_proj(u).split([c.rank, c.d_state, c.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt_low))  # Algorithm 2: Delta = softplus(param + s(x)) > 0
        A = -torch.exp(self.A_log)  # < 0
        return {"u": u, "dt": dt, "A": A, "B": B, "C": C, "D": self.D}, buf

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """The scan output o [B, T, E] (skip D u included) -> gated by SiLU(z), out_proj."""
        return self.out_proj(o * F.silu(self._in_proj(x, 1)))

    def forward(self, x: Tensor, state: MambaState | None = None) -> tuple[Tensor, MambaState | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], new state or None without a state)."""
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
        inputs, buf = self._inputs(x, state)
        c = self.config
        if state is None:
            o, _ = chunk_selective_scan(**inputs, chunk_size=c.chunk_size)
            return self._output(o, x, inputs), None
        if x.shape[1] == 1:
            i = inputs
            o, h = selective_scan_step(i["u"][:, 0], i["dt"][:, 0], i["A"], i["B"][:, 0],
                                       i["C"][:, 0], state.h, D=i["D"])
            o = o.unsqueeze(1)
        else:
            o, h = chunk_selective_scan(**inputs, initial_state=state.h, output_final_state=True,
                                        chunk_size=c.chunk_size)
        return self._output(o, x, inputs), MambaState(self.name, buf, h)

    def init_state(self, batch_size: int, device=None, dtype=None) -> MambaState:
        """Zeros: conv [B, d_conv - 1, d_inner], h [B, d_inner, N]."""
        c = self.config
        dtype = dtype or self.param_dtype()
        conv = torch.zeros(batch_size, c.d_conv - 1, c.d_inner, device=device, dtype=dtype)
        h = torch.zeros(batch_size, c.d_inner, c.d_state, device=device, dtype=dtype)
        return MambaState(self.name, conv, h)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the conv buffer and h: constant in ``seqlen``."""
        c = self.config
        return batch_size * c.d_inner * (c.d_conv - 1 + c.d_state) * dtype_bytes(dtype)
