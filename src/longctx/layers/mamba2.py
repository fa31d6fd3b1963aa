"""Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs", §7.1, Fig. 6).

One input projection gives ``z, x, B, C, dt`` in parallel; a causal depthwise conv (kernel 4) +
SiLU runs over ``(x, B, C)``; the SSD op mixes the sequence
(``H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T``, ``y_t = H_t C_t + D x_t``); the output is
``out_proj(RMSNorm(y * SiLU(z)))`` (the gated "extra normalization" of §7.1).

Heads: ``n_heads`` of the config is the number of SSD heads H, and the head dim is
``P = expand * d_model / n_heads`` (the paper fixes P = 64, i.e. n_heads = expand * d_model / 64).

The forward pass is three steps a subclass can reuse (the Log-Linear Mamba-2 does):
``_inputs`` (projections, conv -> the op's inputs), ``_op`` (chunked SSD, or one step when
decoding), ``_output`` (D skip, gated norm, out projection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, MixerConfig, State, dtype_bytes
from longctx.layers.common import (
    check_positive,
    heads_of_size,
    merge_heads,
    norm_eps,
    step_state,
    wants_fused_step,
)
from longctx.ops.mamba2 import chunk_ssd, ssd_step


@dataclass
class Mamba2Config(MixerConfig):
    """``n_heads`` (from MixerConfig) is the number of SSD heads; head dim P = d_inner / n_heads."""

    expand: int = 2  # d_inner = expand * d_model (paper: 2)
    d_state: int = 16  # N, state size per head and group (paper's LM runs: 64-128; 16 is Mamba-1's)
    n_groups: int = 1  # G groups of (B, C), each shared by n_heads / G heads (paper: 1)
    d_conv: int = 4  # kernel of the causal depthwise conv over (x, B, C) (paper: 4)
    dt_min: float = 1e-3  # at init softplus(dt_bias) is log-uniform in [dt_min, dt_max] (paper)
    dt_max: float = 1e-1
    A_init_min: float = 1.0  # at init -A is uniform in [A_init_min, A_init_max] (paper: [1, 16])
    A_init_max: float = 16.0
    norm_eps: float = 1e-5  # epsilon of the gated RMSNorm
    chunk_size: int = 64  # chunk length of the SSD algorithm (paper's kernels: 256)
    # SSD head dim P (paper and zoology: 64). 0: P = d_inner / n_heads; > 0: it sets n_heads to
    # d_inner / head_size (the model's n_heads is then not used by this mixer)
    head_size: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(name, "expand", self.expand)  # before d_inner is used below
        self.n_heads = heads_of_size(name, self.head_size, self.d_inner,
                                     f"d_inner = expand * d_model = {self.expand} * {self.d_model}") or self.n_heads
        super().__post_init__()
        for f in ("d_state", "n_groups", "d_conv", "chunk_size"):
            check_positive(name, f, getattr(self, f))
        if self.n_heads % self.n_groups != 0:
            raise ValueError(
                f"{name}: n_groups={self.n_groups} must divide n_heads={self.n_heads} (SSD heads)"
            )
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max, got {self.dt_min}, {self.dt_max}")
        if not 0 < self.A_init_min <= self.A_init_max:
            raise ValueError(
                f"{name}: need 0 < A_init_min <= A_init_max, got {self.A_init_min}, {self.A_init_max}"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"{name}.norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def ssd_head_dim(self) -> int:
        """P = d_inner / n_heads."""
        return self.d_inner // self.n_heads

    @property
    def conv_dim(self) -> int:
        """Channels of the conv: x (d_inner), B and C (G * N each)."""
        return self.d_inner + 2 * self.n_groups * self.d_state


@dataclass
class Mamba2State(State):
    conv: Tensor  # [B, d_conv - 1, d_inner + 2 G N] the last d_conv - 1 conv inputs, oldest first
    ssm: Tensor  # [B, H, P, N] the SSD state (float32 at least)


class Mamba2(Mixer):
    name = "mamba2"
    state_class = Mamba2State

    def __init__(self, config: Mamba2Config) -> None:
        super().__init__(config)
        c = config
        H, GN = c.n_heads, c.n_groups * c.d_state
        # §7.1 parallel projections: [z (d_inner), x (d_inner), B (G N), C (G N), dt (H)]
        self.in_proj = nn.Linear(c.d_model, 2 * c.d_inner + 2 * GN + H, bias=False)
        self.conv1d = nn.Conv1d(c.conv_dim, c.conv_dim, c.d_conv, groups=c.conv_dim, bias=True)
        dt = torch.empty(H).uniform_(math.log(c.dt_min), math.log(c.dt_max)).exp()
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(H).uniform_(c.A_init_min, c.A_init_max).log())
        self.D = nn.Parameter(torch.ones(H))
        self.norm = nn.RMSNorm(c.d_inner, eps=c.norm_eps)
        self.out_proj = nn.Linear(c.d_inner, c.d_model, bias=False)

    # -- the three steps ----------------------------------------------------------------------
    def _inputs(self, x: Tensor, state: Mamba2State | None) -> tuple[dict[str, Tensor], Tensor | None]:
        """x [B, T, d_model] -> ({"x": [B, T, H, P], "dt": [B, T, H], "A": [H],
        "B": [B, T, G, N], "C": [B, T, G, N]} as ``chunk_ssd(**inputs)`` takes them, the new conv
        buffer [B, d_conv - 1, conv_dim] or None when ``state`` is None)."""
        c = self.config
        Bsz, T, _ = x.shape
        GN = c.n_groups * c.d_state
        xBC_dt = F.linear(x, self.in_proj.weight[c.d_inner:])  # all but z, [B, T, conv_dim + H]
        xBC, dt_raw = xBC_dt.split([c.conv_dim, c.n_heads], dim=-1)
        xBC, conv = self._conv(xBC, None if state is None else state.conv)
        xs, Bm, Cm = xBC.split([c.d_inner, GN, GN], dim=-1)
        fdt = torch.promote_types(x.dtype, torch.float32)  # dt and A in >= float32
        inputs = {
            "x": xs.reshape(Bsz, T, c.n_heads, c.ssd_head_dim),
            "dt": F.softplus(dt_raw.to(fdt) + self.dt_bias.to(fdt)),  # Δ = softplus(Δ_raw + bias)
            "A": -torch.exp(self.A_log.to(fdt)),  # A < 0
            "B": Bm.reshape(Bsz, T, c.n_groups, c.d_state),
            "C": Cm.reshape(Bsz, T, c.n_groups, c.d_state),
        }
        return inputs, conv

    def _op(self, inputs: dict[str, Tensor], state: Mamba2State | None) -> tuple[Tensor, Tensor | None]:
        """The SSD op: chunked without a state, one step for T == 1 with a state.
        Returns o [B, T, H, P] (without the D skip) and the new SSD state or None."""
        c = self.config
        if state is None:
            return chunk_ssd(**inputs, chunk_size=c.chunk_size)[0], None
        if inputs["x"].shape[1] == 1:
            i = inputs
            o, S = ssd_step(i["x"][:, 0], i["dt"][:, 0], i["A"], i["B"][:, 0], i["C"][:, 0], state.ssm)
            return o.unsqueeze(1), S
        return chunk_ssd(**inputs, initial_state=state.ssm, output_final_state=True,
                         chunk_size=c.chunk_size)

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """o [B, T, H, P] -> y [B, T, d_model]: + D x, gated RMSNorm with SiLU(z), out_proj."""
        y = o + self.D.to(o.dtype)[:, None] * inputs["x"]  # skip connection D x_t
        z = F.linear(x, self.in_proj.weight[: self.config.d_inner])  # the gate, [B, T, d_inner]
        return self.out_proj(self.norm(merge_heads(y) * F.silu(z)))  # §7.1: norm(y ⊙ SiLU(z))

    def _conv(self, xBC: Tensor, buf: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Causal depthwise conv + SiLU over [B, T, conv_dim], continuing ``buf`` (the last
        d_conv - 1 inputs) if given. Returns the activations and the new buffer (or None)."""
        K = self.config.d_conv
        past = xBC.new_zeros(xBC.shape[0], K - 1, xBC.shape[2]) if buf is None else buf.to(xBC.dtype)
        xp = torch.cat([past, xBC], dim=1)  # [B, K - 1 + T, conv_dim]
        w = self.conv1d
        out = F.conv1d(xp.transpose(1, 2), w.weight, w.bias, groups=w.groups).transpose(1, 2)
        new = None if buf is None else xp[:, xp.shape[1] - (K - 1):].clone()
        return F.silu(out), new

    # -- decode one token as one fused kernel -------------------------------------------------
    def _fused_step(self, x: Tensor, state: Mamba2State) -> tuple[Tensor, Mamba2State] | None:
        """The one-token decode step as in_proj, one Triton kernel (conv, SiLU, dt, the SSD step,
        D skip, output gate, the RMSNorm's weight and per-head sums: ``triton_layer_step``),
        out_proj and the RMSNorm's scale; None where it does not apply: more than one token, a
        gradient wanted, heads too large for it, or the backend not asking for it (``"auto"``
        once it has passed on a GPU, ``"triton"`` always)."""
        c = self.config
        H, G, P, N = c.n_heads, c.n_groups, c.ssd_head_dim, c.d_state
        if not wants_fused_step(self, "mamba2_layer_step", x, (state.conv, state.ssm), P, N, c.d_conv):
            return None
        from longctx.ops.common.triton_layer_step import rms_scale, ssd_layer_step

        S, S_out = step_state(state.ssm, torch.promote_types(x.dtype, torch.float32))  # S in >= float32
        w = self.conv1d
        out, ssq, conv = ssd_layer_step(
            F.linear(x[:, 0], self.in_proj.weight), w.weight.view(c.conv_dim, c.d_conv), w.bias,
            state.conv.to(x.dtype).contiguous(), S, self.A_log, self.dt_bias, self.D, self.norm.weight,
            H=H, G=G, P=P, N=N, S_out=S_out,
        )
        y = rms_scale(self.out_proj(out), ssq, c.d_inner, norm_eps(self.norm, x.dtype))
        return y.unsqueeze(1), Mamba2State(self.name, conv, S_out)

    # -- the Mixer contract -------------------------------------------------------------------
    def forward(self, x: Tensor, state: Mamba2State | None = None) -> tuple[Tensor, Mamba2State | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], new state or None)."""
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
            fused = self._fused_step(x, state)
            if fused is not None:
                return fused
        inputs, conv = self._inputs(x, state)
        o, ssm = self._op(inputs, state)
        y = self._output(o, x, inputs)
        return y, (None if state is None else Mamba2State(self.name, conv, ssm))

    def init_state(self, batch_size: int, device=None, dtype=None) -> Mamba2State:
        """Zeros: conv [B, d_conv - 1, conv_dim] in ``dtype``, ssm [B, H, P, N] in >= float32."""
        c = self.config
        dtype = dtype or self.param_dtype()
        conv = torch.zeros(batch_size, c.d_conv - 1, c.conv_dim, device=device, dtype=dtype)
        ssm = torch.zeros(batch_size, c.n_heads, c.ssd_head_dim, c.d_state, device=device,
                          dtype=torch.promote_types(dtype, torch.float32))
        return Mamba2State(self.name, conv, ssm)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the state, constant in ``seqlen`` (the SSD state is kept in >= float32)."""
        c = self.config
        conv = (c.d_conv - 1) * c.conv_dim * dtype_bytes(dtype)
        ssm = c.d_inner * c.d_state * dtype_bytes(torch.promote_types(dtype, torch.float32))
        return batch_size * (conv + ssm)
