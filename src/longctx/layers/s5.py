"""S5 layer (Smith, Warrington & Linderman 2023): one MIMO diagonal SSM over all ``d_model``
channels, computed with a parallel associative scan, then GELU and a GLU output projection (the
S4-style block S5 uses).

Variant implemented: ``P = d_state`` complex states in conjugate pairs (``2 Re(C x)``, S5's
``conj_sym``), ``Lambda`` initialised to the HiPPO-N eigenvalues (S5 §4.1, one block: J = 1),
``Re Lambda = -exp(.)`` kept negative; ``B [P, H]`` and ``C [H, P]`` complex, initialised random
(LeCun-normal scale) rather than through HiPPO-N's eigenvectors; one step ``dt = exp(log_dt)``
per state, log-uniform in ``[dt_min, dt_max]``; ZOH or bilinear. Decode: the recurrence, state
``[B, P]`` complex. ``causal=False``: a second scan from the end with its own ``C`` (S5's
bidirectional LRA models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longctx.layers.base import Mixer, State, dtype_bytes
from longctx.layers.common import check_positive
from longctx.layers.s4d import SSMConfig, _complex, diagonal, stable_diagonal
from longctx.ops.s5 import chunk_s5, hippo_n_eigenvalues, s5_step


@dataclass
class S5Config(SSMConfig):
    d_state: int = 32  # P: complex states (2P real, conjugate pairs)
    chunk_size: int = 64  # tokens per chunk of the parallel scan

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: + a backward scan

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(type(self).__name__, "chunk_size", self.chunk_size)


@dataclass
class S5State(State):
    x: Tensor  # [B, P, 2] the complex state as (real, imag)


class S5(Mixer):
    name = "s5"
    state_class = S5State

    def __init__(self, config: S5Config) -> None:
        super().__init__(config)
        c = config
        H, P = c.d_model, c.d_state
        self.Lambda_log_re, self.Lambda_im = stable_diagonal(hippo_n_eigenvalues(2 * P))
        self.B = nn.Parameter(torch.randn(P, H, 2) * math.sqrt(0.5 / H))
        self.C = nn.Parameter(torch.randn(H, P, 2) * math.sqrt(0.5 / P))
        self.C_backward = nn.Parameter(torch.randn(H, P, 2) * math.sqrt(0.5 / P)) if not c.causal else None
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(c.log_dt_init(P))
        self.out = nn.Linear(H, 2 * H)

    def ssm_params(self) -> dict[str, Tensor]:
        return {"Lambda": diagonal(self.Lambda_log_re, self.Lambda_im),
                "B": _complex(self.B), "C": _complex(self.C), "dt": torch.exp(self.log_dt), "D": self.D,
                "method": self.config.discretization}

    def forward(self, x: Tensor, state: S5State | None = None) -> tuple[Tensor, S5State | None]:
        self.check_input(x)
        p, cs = self.ssm_params(), self.config.chunk_size
        if state is None:
            back = _complex(self.C_backward) if self.C_backward is not None else None
            y, _ = chunk_s5(x, **p, causal=self.config.causal, C_backward=back, chunk_size=cs)
            return F.glu(self.out(F.gelu(y)), dim=-1), None
        self.check_state(state, x.shape[0])
        x0 = torch.view_as_complex(state.x.to(p["Lambda"].real.dtype).contiguous())
        if x.shape[1] == 1:
            y, xT = s5_step(x[:, 0], x0, **p)
            y = y[:, None]
        else:
            y, xT = chunk_s5(x, **p, initial_state=x0, output_final_state=True, chunk_size=cs)
        return F.glu(self.out(F.gelu(y)), dim=-1), S5State(self.name, torch.view_as_real(xT).to(state.x.dtype))

    def init_state(self, batch_size: int, device=None, dtype=None) -> S5State:
        self.check_causal_for_state()
        dtype = dtype or self.param_dtype()
        return S5State(self.name, torch.zeros(batch_size, self.config.d_state, 2, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        return batch_size * self.config.d_state * 2 * dtype_bytes(dtype)
