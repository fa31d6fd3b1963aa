"""Gated DeltaNet layer (Yang, Kautz, Hatamizadeh 2025, "Gated Delta Networks: Improving Mamba2
with Delta Rule", §3.4 and Fig. 1).

``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = q_t^T S_t``. As in
DeltaNet (the parent class): q, k, v projections + short causal conv (kernel 4) + SiLU, q and k
L2-normalised, ``beta = sigmoid(x W_b)``. Added: the Mamba-2 style decay
``g = log(alpha) = -exp(A_log) * softplus(x W_a + dt_bias)`` per head (Dao & Gu 2024), and the
gated output ``y = W_o (RMSNorm(o) * SiLU(x W_g))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.common import merge_heads, split_heads
from longctx.layers.deltanet import DeltaNet, DeltaNetConfig, DeltaNetState
from longctx.ops.gated_deltanet import chunk_gated_delta_rule, gated_delta_rule_step


@dataclass
class GatedDeltaNetConfig(DeltaNetConfig):
    expand_v: float = 2.0  # value width = expand_v * d_model (GDN release: value heads 2x key heads)
    A_init_range: tuple[float, float] = (1.0, 16.0)  # A = exp(A_log) ~ U[1, 16] (Mamba-2 init)
    dt_min: float = 1e-3  # dt = softplus(dt_bias) initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 1e-1  # (Mamba-2 init)
    dt_init_floor: float = 1e-4  # lower clamp of the initial dt (Mamba-2 init)

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        lo, hi = self.A_init_range
        if not 0 < lo <= hi:
            raise ValueError(f"{name}.A_init_range must satisfy 0 < low <= high, got {(lo, hi)}")
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"{name}: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}"
            )


@dataclass
class GatedDeltaNetState(DeltaNetState):
    """Same tensors as DeltaNet's: S [B, H, Dk, Dv] and the conv buffer."""


class GatedDeltaNet(DeltaNet):
    name = "gated_deltanet"
    state_class: ClassVar[type[DeltaNetState]] = GatedDeltaNetState
    chunk_op: ClassVar[Callable] = staticmethod(chunk_gated_delta_rule)
    step_op: ClassVar[Callable] = staticmethod(gated_delta_rule_step)

    def __init__(self, config: GatedDeltaNetConfig) -> None:
        super().__init__(config)
        c = config
        self.wa = nn.Linear(c.d_model, c.n_heads, bias=False)  # W_a: decay input, one per head
        self.A_log = nn.Parameter(torch.empty(c.n_heads))
        self.dt_bias = nn.Parameter(torch.empty(c.n_heads))
        self.wg = nn.Linear(c.d_model, c.value_dim, bias=False)  # W_g: output gate
        self.reset_decay()

    def reset_decay(self) -> None:
        """Mamba-2 initialisation: A ~ U[A_init_range], dt log-uniform in [dt_min, dt_max]
        stored through the inverse softplus, ``dt_bias = dt + log(1 - exp(-dt))``."""
        c = self.config
        with torch.no_grad():
            self.A_log.copy_(torch.empty_like(self.A_log).uniform_(*c.A_init_range).log())
            u = torch.rand_like(self.dt_bias)
            dt = torch.exp(u * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
            dt = dt.clamp(min=c.dt_init_floor)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt

    layer_step_op: ClassVar[str] = "gated_deltanet_layer_step"

    def _in_weights(self) -> list[Tensor]:
        return [*super()._in_weights(), self.wa.weight, self.wg.weight]

    def _gate_params(self) -> tuple[Tensor | None, Tensor | None]:
        return self.A_log, self.dt_bias

    def _inputs(self, x: Tensor, state: DeltaNetState | None) -> tuple[dict[str, Tensor],
                                                                         Tensor | None]:
        """x [B, T, d_model] -> ({"q", "k", "v", "g", "beta"} as ``chunk_gated_delta_rule`` takes
        them, g [B, T, H] <= 0 in at least float32; the new conv buffer or None)."""
        inputs, conv = super()._inputs(x, state)
        dtype = torch.promote_types(x.dtype, torch.float32)  # decay in >= float32
        a = self.wa(x).to(dtype) + self.dt_bias.to(dtype)  # [B, T, H]
        g = -self.A_log.to(dtype).exp() * F.softplus(a)  # GDN §3.4: Mamba-2 gate, log alpha
        return {"q": inputs["q"], "k": inputs["k"], "v": inputs["v"], "g": g,
                "beta": inputs["beta"]}, conv

    def _output(self, o: Tensor, x: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """o [B, T, H, Dv] -> y [B, T, d_model]: W_o (RMSNorm(o) * SiLU(x W_g)), per head."""
        gate = split_heads(self.wg(x), self.config.n_heads)  # [B, T, H, Dv]
        return self.wo(merge_heads(self.norm(o) * F.silu(gate)))
