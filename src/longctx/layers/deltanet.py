"""DeltaNet layer (Yang, Wang, Zhang, Shen, Kim 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length", section "DeltaNet Transformer"; the delta rule of Schlag et al. 2021).

``S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = q_t^T S_t``, where q, k, v are
linear projections each followed by a short causal depthwise convolution (kernel 4) and SiLU,
q and k are L2-normalised per head, ``beta_t = sigmoid(x_t W_beta)`` per head, and the output is
``RMSNorm(o)`` per head followed by ``W_o``. (The paper's variant with an output gate is not
used here; Gated DeltaNet, ``layers/gated_deltanet.py``, has one.)

``forward`` is three steps, which a subclass may override one by one: ``_inputs`` (x -> the op's
tensor arguments), ``_mix`` (the op: chunk form, or the step when decoding one token), ``_output``
(o -> y).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

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
from longctx.ops.deltanet import chunk_delta_rule, delta_rule_step
from longctx.ops.deltanet.checks import l2norm


@dataclass
class DeltaNetConfig(MixerConfig):
    expand_k: float = 1.0  # query/key width = expand_k * d_model (DeltaNet paper: 1)
    expand_v: float = 1.0  # value width = expand_v * d_model (DeltaNet paper: 1)
    conv_size: int = 4  # kernel of the short causal depthwise convs on q, k, v (paper: 4)
    allow_neg_eigval: bool = False  # beta = 2 sigmoid(.) in (0, 2) (Grazzi et al. 2025); else (0, 1)
    norm_eps: float = 1e-5  # epsilon of the per-head output RMSNorm
    chunk_size: int = 64  # chunk length of the chunked (WY / UT-transform) form

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "chunk_size", self.chunk_size)
        if isinstance(self.conv_size, bool) or not isinstance(self.conv_size, int) \
                or self.conv_size < 2:
            raise ValueError(f"{name}.conv_size must be an integer >= 2, got {self.conv_size!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"{name}.norm_eps must be > 0, got {self.norm_eps!r}")
        for field, width in (("expand_k", self.key_dim), ("expand_v", self.value_dim)):
            expand = getattr(self, field)
            if width <= 0 or width % self.n_heads != 0 or width != expand * self.d_model:
                raise ValueError(
                    f"{name}: {field} * d_model = {expand * self.d_model:g} must be a positive "
                    f"integer multiple of n_heads={self.n_heads}"
                )

    @property
    def key_dim(self) -> int:
        return int(self.expand_k * self.d_model)

    @property
    def value_dim(self) -> int:
        return int(self.expand_v * self.d_model)

    @property
    def conv_channels(self) -> int:
        return 2 * self.key_dim + self.value_dim  # q, k and v share one depthwise conv


@dataclass
class DeltaNetState(State):
    S: Tensor  # [B, H, Dk, Dv] the delta-rule memory
    conv: Tensor  # [B, conv_size - 1, 2 key_dim + value_dim] last projected q|k|v, oldest first


class CausalDepthwiseConv(nn.Module):
    """``y_t = sum_{i<K} w_i x_{t-i}`` per channel, no bias; decode keeps the last K - 1 inputs.

    One module over the concatenated q|k|v channels is the same as one conv per projection
    (a depthwise conv never mixes channels)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # [C, 1, K]
        bound = 1 / math.sqrt(kernel_size)  # nn.Conv1d's default init for a depthwise conv
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor, buf: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x [B, T, C], buf [B, K - 1, C] or None (zeros, stateless) -> (y [B, T, C], new buf)."""
        B, _, C = x.shape
        K = self.kernel_size
        past = x.new_zeros(B, K - 1, C) if buf is None else buf.to(x.dtype)
        xp = torch.cat([past, x], dim=1)  # [B, K - 1 + T, C]
        y = F.conv1d(xp.transpose(1, 2), self.weight, groups=C).transpose(1, 2)  # [B, T, C]
        return y, (None if buf is None else xp[:, -(K - 1):])


def unit_norm(x: Tensor) -> Tensor:
    """L2-normalise the last dim in at least float32 (a bf16 norm would miss 1 by ~1e-2)."""
    return l2norm(x.to(torch.promote_types(x.dtype, torch.float32))).to(x.dtype)


class DeltaNet(Mixer):
    name = "deltanet"
    state_class: ClassVar[type[DeltaNetState]] = DeltaNetState
    chunk_op: ClassVar[Callable] = staticmethod(chunk_delta_rule)  # op(**inputs, chunk_size=...)
    step_op: ClassVar[Callable] = staticmethod(delta_rule_step)  # op(q_t=..., ..., state=...)

    def __init__(self, config: DeltaNetConfig) -> None:
        super().__init__(config)
        c = config
        self.wq = nn.Linear(c.d_model, c.key_dim, bias=False)
        self.wk = nn.Linear(c.d_model, c.key_dim, bias=False)
        self.wv = nn.Linear(c.d_model, c.value_dim, bias=False)
        self.conv = CausalDepthwiseConv(c.conv_channels, c.conv_size)
        self.wb = nn.Linear(c.d_model, c.n_heads, bias=False)  # W_beta: one step size per head
        self.norm = nn.RMSNorm(c.value_dim // c.n_heads, eps=c.norm_eps)  # per head
        self.wo = nn.Linear(c.value_dim, c.d_model, bias=False)

    # -- the three steps of forward -----------------------------------------------------------
    def _inputs(self, x: Tensor, state: DeltaNetState | None) -> tuple[dict[str, Tensor],
                                                                         Tensor | None]:
        """x [B, T, d_model] -> ({"q", "k", "v", "beta"} as ``chunk_delta_rule`` takes them, with
        q, k [B, T, H, Dk] unit-norm, v [B, T, H, Dv], beta [B, T, H]; the new conv buffer or
        None when ``state`` is None)."""
        c = self.config
        qkv = torch.cat([self.wq(x), self.wk(x), self.wv(x)], dim=-1)  # [B, T, conv_channels]
        qkv, conv = self.conv(qkv, None if state is None else state.conv)
        q, k, v = F.silu(qkv).split([c.key_dim, c.key_dim, c.value_dim], dim=-1)
        beta = torch.sigmoid(self.wb(x))  # [B, T, H]
        if c.allow_neg_eigval:
            beta = 2 * beta  # eigenvalue 1 - beta of I - beta k k^T ranges over (-1, 1)
        inputs = {
            "q": unit_norm(split_heads(q, c.n_heads)),  # [B, T, H, Dk]
            "k": unit_norm(split_heads(k, c.n_heads)),
            "v": split_heads(v, c.n_heads),  # [B, T, H, Dv]
            "beta": beta,
        }
        return inputs, conv

    def _mix(self, inputs: dict[str, Tensor], state: DeltaNetState | None
             ) -> tuple[Tensor, Tensor | None]:
        """The op: o [B, T, H, Dv] and the new S (None without a state)."""
        chunk_size = self.config.chunk_size
        if state is None:
            return self.chunk_op(**inputs, chunk_size=chunk_size)[0], None
        if inputs["q"].shape[1] == 1:  # decode one token
            steps = {f"{name}_t": t[:, 0] for name, t in inputs.items()}
            o, S = self.step_op(**steps, state=state.S)
            return o.unsqueeze(1), S
        return self.chunk_op(**inputs, initial_state=state.S, output_final_state=True,
                             chunk_size=chunk_size)

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """o [B, T, H, Dv] -> y [B, T, d_model]: per-head RMSNorm, then W_o."""
        return self.wo(merge_heads(self.norm(o)))

    def forward(self, x: Tensor, state: DeltaNetState | None = None
                ) -> tuple[Tensor, DeltaNetState | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], new state or None when ``state`` is None)."""
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
            fused = self._fused_step(x, state)
            if fused is not None:
                return fused
        inputs, conv = self._inputs(x, state)
        o, S = self._mix(inputs, state)
        y = self._output(o, x, inputs)
        return y, (None if state is None else self.state_class(self.name, S, conv))

    # -- decode one token as one fused kernel ---------------------------------------------------
    layer_step_op: ClassVar[str] = "deltanet_layer_step"  # its name for backend.wants_triton

    def _in_weights(self) -> list[Tensor]:
        """The input projections' weights in ``triton_layer_step``'s order of z."""
        return [self.wq.weight, self.wk.weight, self.wv.weight, self.wb.weight]

    def _gate_params(self) -> tuple[Tensor | None, Tensor | None]:
        return None, None  # (A_log, dt_bias): DeltaNet has no decay

    def _in_weight(self) -> Tensor:
        return stacked_weight(self, self._in_weights())

    def _fused_step(self, x: Tensor, state: DeltaNetState) -> tuple[Tensor, DeltaNetState] | None:
        """The one-token decode step as one GEMV (every input projection), one Triton kernel (conv,
        SiLU, norms, beta, gate, the delta step, RMSNorm, output gate: ``triton_layer_step``)
        and W_o; None where it does not apply: more than one token, a gradient wanted, a head too
        large for it, or the backend not asking for it (``"auto"`` once it has passed on a GPU,
        ``"triton"`` always)."""
        c = self.config
        H = c.n_heads
        K, V = c.key_dim // H, c.value_dim // H
        if not wants_fused_step(self, self.layer_step_op, x, (state.S, state.conv), K, V, c.conv_size):
            return None
        from longctx.ops.common.triton_layer_step import delta_layer_step

        S, S_out = step_state(state.S, torch.promote_types(x.dtype, torch.float32))  # S in >= float32
        buf, buf_out = step_state(state.conv, x.dtype)
        A_log, dt_bias = self._gate_params()
        out = delta_layer_step(
            F.linear(x[:, 0], self._in_weight()), self.conv.weight.view(c.conv_channels, c.conv_size), buf,
            S, self.norm.weight, H=H, K=K, V=V, scale=K ** -0.5, l2_eps=1e-6, norm_eps=norm_eps(self.norm, x.dtype),
            neg_eig=c.allow_neg_eigval, A_log=A_log, dt_bias=dt_bias, buf_out=buf_out, S_out=S_out,
        )
        return self.wo(out).unsqueeze(1), self.state_class(self.name, S_out, buf_out)

    # -- state ----------------------------------------------------------------------------------
    def _state_shapes(self, batch_size: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        c = self.config
        S = (batch_size, c.n_heads, c.key_dim // c.n_heads, c.value_dim // c.n_heads)
        return S, (batch_size, c.conv_size - 1, c.conv_channels)

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> DeltaNetState:
        dtype = dtype or self.param_dtype()
        S, conv = self._state_shapes(batch_size)
        return self.state_class(self.name, torch.zeros(S, device=device, dtype=dtype),
                                torch.zeros(conv, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of S plus the conv buffer: constant in ``seqlen``."""
        return sum(math.prod(s) for s in self._state_shapes(batch_size)) * dtype_bytes(dtype)
