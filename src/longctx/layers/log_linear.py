"""Log-linear mixers (Guo, Yang, Goel, Xing, Dao, Kim 2025, "Log-Linear Attention", §3-4).

Each is its base layer (projections, convs, gates, output) with the fixed-size state replaced by
O(log T) Fenwick level states, read with data-dependent level weights
``lambda_levels = softplus(x W_lambda)`` ``[B, T, H, max_levels]``: one scalar per head and level,
a linear map of x_t made non-negative, as the paper's layers do (§4; the extra learned per-level
scale inside the softplus that some implementations add is left out: W_lambda can learn it).
Bases: linear attention, GLA, Mamba-2 and Gated DeltaNet (the paper's case studies are the last
two).

Decode memory after t tokens: bit_length(t) = floor(log2 t) + 1 level states (plus the base's conv
buffer), so ``state_size`` grows as log T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import MixerConfig, State, dtype_bytes
from longctx.layers.common import check_positive
from longctx.layers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from longctx.layers.gla import GatedLinearAttention, GLAConfig
from longctx.layers.linear_attention import LinearAttention, LinearAttentionConfig
from longctx.layers.mamba2 import Mamba2, Mamba2Config
from longctx.ops.linear_attention.feature_maps import apply_feature_map, feature_dim
from longctx.ops.log_linear import (
    FenwickState,
    chunk_log_linear_attention,
    chunk_log_linear_gated_deltanet,
    chunk_log_linear_mamba2,
    log_linear_attention_step,
    log_linear_gated_deltanet_step,
    log_linear_mamba2_step,
    required_levels,
)

MAX_LEVELS = 21  # enough for T = 2^20 tokens: the query at t = 2^20 - 1 reads levels 0..20


def _check_log_linear(config: MixerConfig) -> None:
    """max_levels > 0 and a power-of-two chunk_size (chunks must align with Fenwick buckets)."""
    name = type(config).__name__
    check_positive(name, "max_levels", config.max_levels)
    if config.chunk_size & (config.chunk_size - 1):
        raise ValueError(f"{name}.chunk_size must be a power of two, got {config.chunk_size}")


@dataclass
class LogLinearAttentionConfig(LinearAttentionConfig):
    normalize: bool = False  # must stay False: log-linear attention is the unnormalised form
    max_levels: int = MAX_LEVELS  # L of lambda_levels: sequences up to 2^(L-1) tokens

    causal_modes: ClassVar[tuple[bool, ...]] = (True,)  # the Fenwick partition is causal

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_log_linear(self)
        if self.normalize:
            raise ValueError(
                f"{type(self).__name__}.normalize=True is not supported: log-linear attention "
                "(Guo et al. 2025) is the unnormalised form o_t = sum_l lambda_t^(l) q_t^T S_t^(l); "
                "use normalize=False (the default here), or linear_attention for the normalised one"
            )


@dataclass
class LogLinearGLAConfig(GLAConfig):
    max_levels: int = MAX_LEVELS  # L of lambda_levels: sequences up to 2^(L-1) tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_log_linear(self)


@dataclass
class LogLinearMamba2Config(Mamba2Config):
    max_levels: int = MAX_LEVELS  # L of lambda_levels: sequences up to 2^(L-1) tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_log_linear(self)


@dataclass
class LogLinearGatedDeltaNetConfig(GatedDeltaNetConfig):
    max_levels: int = MAX_LEVELS  # L of lambda_levels: sequences up to 2^(L-1) tokens

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_log_linear(self)


@dataclass
class LogLinearState(State):
    S: Tensor  # [B, bit_length(t), H, Dk, Dv] Fenwick level states (Mamba-2: [..., P, N])
    t: Tensor  # int64, 0-dim: tokens seen so far


@dataclass
class LogLinearConvState(LogLinearState):
    conv: Tensor  # [B, K - 1, channels] the base's short-conv buffer, oldest first


class _LogLinear:
    """Mixin over a base layer that provides ``_inputs(x, state)`` and ``_output(o, x, inputs)``:
    adds W_lambda and runs the log-linear op in place of the base op."""

    chunk_op: ClassVar[Callable]
    step_op: ClassVar[Callable]
    op_options: ClassVar[dict[str, object]] = {}

    def __init__(self, config: MixerConfig) -> None:
        super().__init__(config)
        # §4: lambda_t = softplus(W_lambda x_t), one weight per head and Fenwick level
        self.lambda_proj = nn.Linear(config.d_model, config.n_heads * config.max_levels, bias=False)

    def _lambda(self, x: Tensor) -> Tensor:
        """x [B, T, d_model] -> lambda_levels [B, T, H, max_levels] (>= 0)."""
        B, T, _ = x.shape
        return F.softplus(self.lambda_proj(x)).view(B, T, self.config.n_heads, -1)

    def _check_length(self, t0: int, T: int) -> None:
        L = self.config.max_levels
        if T and required_levels(t0 + T - 1) > L:
            raise ValueError(
                f"{self.name}: position t = {t0 + T - 1} needs {required_levels(t0 + T - 1)} "
                f"Fenwick levels but max_levels = {L} (sequences up to 2^{L - 1} = {2 ** (L - 1)} "
                "tokens); build the mixer with a larger max_levels"
            )

    def _log_linear(self, inputs: dict[str, Tensor], lam: Tensor, state: LogLinearState | None):
        """The op: chunked without a state; the step for T == 1 with a state. Returns
        o [B, T, H, Dv] and the new (S, t) or None."""
        C = self.config.chunk_size
        if state is None:
            return self.chunk_op(**inputs, lambda_levels=lam, **self.op_options, chunk_size=C)[0], None
        if lam.shape[1] == 1:  # decode one token
            steps = {(f"{n}_t" if t.dim() >= 3 else n): (t[:, 0] if t.dim() >= 3 else t)
                     for n, t in inputs.items()}
            o, new = self.step_op(**steps, lambda_t=lam[:, 0], state=(state.S, state.t),
                                  **self.op_options)
            return o.unsqueeze(1), new
        return self.chunk_op(**inputs, lambda_levels=lam, **self.op_options, chunk_size=C,
                             initial_state=(state.S, state.t), output_final_state=True)

    def forward(self, x: Tensor, state: LogLinearState | None = None
                ) -> tuple[Tensor, LogLinearState | None]:
        """x [B, T, d_model] -> (y [B, T, d_model], new state or None when ``state`` is None)."""
        self.check_input(x)
        if state is not None:
            self.check_state(state, x.shape[0])
        self._check_length(0 if state is None else int(state.t), x.shape[1])
        inputs, conv = self._inputs(x, state)
        inputs = self._op_inputs(inputs)
        o, new = self._log_linear(inputs, self._lambda(x), state)
        y = self._output(o, x, inputs)
        return y, (None if state is None else self._state(new, conv))

    # -- per base -----------------------------------------------------------------------------
    def _op_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return inputs

    def _level_shape(self) -> tuple[int, int]:
        """(Dk, Dv) of one level state per head."""
        raise NotImplementedError

    def _state(self, new: FenwickState, conv: Tensor | None) -> LogLinearState:
        return self.state_class(self.name, new.S, new.t)

    def _levels(self, batch_size: int, device, dtype) -> tuple[Tensor, Tensor]:
        """No level yet (t = 0): S [B, 0, H, Dk, Dv] in >= float32, t = 0."""
        a, b = self._level_shape()
        S = torch.zeros(batch_size, 0, self.config.n_heads, a, b, device=device,
                        dtype=torch.promote_types(dtype, torch.float32))
        return S, torch.zeros((), dtype=torch.int64, device=device)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LogLinearState:
        return self.state_class(self.name, *self._levels(batch_size, device, dtype or self.param_dtype()))

    def _conv_bytes(self, dtype: torch.dtype) -> int:
        return 0

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes after ``seqlen`` tokens: bit_length(seqlen) level states (>= float32) + conv."""
        a, b = self._level_shape()
        level = self.config.n_heads * a * b * dtype_bytes(torch.promote_types(dtype, torch.float32))
        return batch_size * (seqlen.bit_length() * level + self._conv_bytes(dtype))


class LogLinearAttention(_LogLinear, LinearAttention):
    """Log-linear linear attention: phi(q), phi(k) from the base's feature map, no normaliser."""

    name = "log_linear_attention"
    state_class = LogLinearState
    chunk_op = staticmethod(chunk_log_linear_attention)
    step_op = staticmethod(log_linear_attention_step)
    op_options: ClassVar[dict[str, object]] = {"scale": 1.0}  # the scale is applied before phi

    def _op_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        fm = self.config.feature_map  # phi(scale q), phi(k) as in ops.linear_attention
        q = apply_feature_map(inputs["q"] * inputs["q"].shape[-1] ** -0.5, fm)
        return {"q": q, "k": apply_feature_map(inputs["k"], fm), "v": inputs["v"]}

    def _level_shape(self) -> tuple[int, int]:
        c = self.config
        return feature_dim(c.feature_map, c.qk_dim), c.head_dim


class LogLinearGLA(_LogLinear, GatedLinearAttention):
    name = "log_linear_gla"
    state_class = LogLinearState
    chunk_op = staticmethod(chunk_log_linear_attention)
    step_op = staticmethod(log_linear_attention_step)

    def _level_shape(self) -> tuple[int, int]:
        c = self.config
        return c.key_dim // c.n_heads, c.head_dim


class LogLinearMamba2(_LogLinear, Mamba2):
    """Log-linear Mamba-2 (§4.1); the base's ``_output`` adds the D skip."""

    name = "log_linear_mamba2"
    state_class = LogLinearConvState
    chunk_op = staticmethod(chunk_log_linear_mamba2)
    step_op = staticmethod(log_linear_mamba2_step)

    def _level_shape(self) -> tuple[int, int]:
        c = self.config
        return c.ssd_head_dim, c.d_state  # SSD's [P, N] per level

    def _state(self, new: FenwickState, conv: Tensor | None) -> LogLinearConvState:
        return LogLinearConvState(self.name, new.S, new.t, conv)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LogLinearConvState:
        c, dtype = self.config, dtype or self.param_dtype()
        conv = torch.zeros(batch_size, c.d_conv - 1, c.conv_dim, device=device, dtype=dtype)
        return LogLinearConvState(self.name, *self._levels(batch_size, device, dtype), conv)

    def _conv_bytes(self, dtype: torch.dtype) -> int:
        c = self.config
        return (c.d_conv - 1) * c.conv_dim * dtype_bytes(dtype)


class LogLinearGatedDeltaNet(_LogLinear, GatedDeltaNet):
    """Log-linear Gated DeltaNet (§4.2); q, k come unit-norm from the base's ``_inputs``."""

    name = "log_linear_gated_deltanet"
    state_class = LogLinearConvState
    chunk_op = staticmethod(chunk_log_linear_gated_deltanet)
    step_op = staticmethod(log_linear_gated_deltanet_step)

    def _level_shape(self) -> tuple[int, int]:
        c = self.config
        return c.key_dim // c.n_heads, c.value_dim // c.n_heads

    def _state(self, new: FenwickState, conv: Tensor | None) -> LogLinearConvState:
        return LogLinearConvState(self.name, new.S, new.t, conv)

    def init_state(self, batch_size: int, device=None, dtype=None) -> LogLinearConvState:
        c, dtype = self.config, dtype or self.param_dtype()
        conv = torch.zeros(batch_size, c.conv_size - 1, c.conv_channels, device=device, dtype=dtype)
        return LogLinearConvState(self.name, *self._levels(batch_size, device, dtype), conv)

    def _conv_bytes(self, dtype: torch.dtype) -> int:
        c = self.config
        return (c.conv_size - 1) * c.conv_channels * dtype_bytes(dtype)


__all__ = [
    "LogLinearAttention",
    "LogLinearAttentionConfig",
    "LogLinearConvState",
    "LogLinearGLA",
    "LogLinearGLAConfig",
    "LogLinearGatedDeltaNet",
    "LogLinearGatedDeltaNetConfig",
    "LogLinearMamba2",
    "LogLinearMamba2Config",
    "LogLinearState",
]
