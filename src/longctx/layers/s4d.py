"""S4D layer (Gu, Gupta, Goel & Ré 2022): ``H = d_model`` independent diagonal SSMs, one per
channel, then GELU and a GLU output projection (the S4 block of the S4D paper's experiments).

Variant implemented: S4D with ``N = d_state`` complex states per channel (conjugate pairs:
``2 Re(C x)``), ``A = -exp(A_log_re) + i A_im`` (S4D-Lin or S4D-Inv init; the real part kept
negative so the SSM is stable), ``B`` and ``C`` complex and trained (``B = 1`` at init, ``C``
complex normal), per-channel step ``dt = exp(log_dt)`` with ``log_dt`` uniform in
``[log dt_min, log dt_max]``, skip ``D``; ZOH or bilinear discretisation. ``n_heads`` plays no
role (every channel is its own SSM). Training: Vandermonde kernel + FFT convolution,
O(T log T); decode: the recurrence, state ``[B, H, N]`` complex. ``causal=False`` adds a
backward SSM (its own ``C``) over the tokens after each position, for classification.
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
from longctx.ops.s4 import chunk_s4d, fft_conv, s4d_inv, s4d_lin, s4d_step
from longctx.ops.s4.dplr import dense_A, discretize_dense, dplr_kernel, dplr_step, hippo_legs_nplr

INITS = {"lin": s4d_lin, "inv": s4d_inv}


@dataclass
class SSMConfig(MixerConfig):
    """Fields shared by the diagonal-SSM mixers (S4D, S5, H3)."""

    d_state: int = 32  # complex states (conjugate pairs: 2x as many real ones)
    discretization: str = "zoh"  # "zoh" or "bilinear"
    dt_min: float = 1e-3  # smallest initial step
    dt_max: float = 1e-1  # largest initial step

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        check_positive(name, "d_state", self.d_state)
        check_choice(name, "discretization", self.discretization, ("zoh", "bilinear"))
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"{name}: need 0 < dt_min <= dt_max (a step must be positive), got "
                             f"dt_min={self.dt_min!r}, dt_max={self.dt_max!r}")

    def log_dt_init(self, n: int) -> Tensor:
        """``log dt`` uniform in ``[log dt_min, log dt_max]`` (S4's initialisation), ``[n]``."""
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        return torch.rand(n) * (hi - lo) + lo


def stable_diagonal(A: Tensor) -> tuple[nn.Parameter, nn.Parameter]:
    """Parameters ``(log(-Re A), Im A)`` of a diagonal ``A`` kept stable: ``Re A = -exp(.) < 0``."""
    return nn.Parameter(torch.log(-A.real).float()), nn.Parameter(A.imag.float())


def diagonal(log_neg_re: Tensor, im: Tensor) -> Tensor:
    return torch.complex(-torch.exp(log_neg_re), im)


@dataclass
class S4DConfig(SSMConfig):
    d_state: int = 32  # complex states per channel: the paper's N = 64 real = 32 conjugate pairs
    init: str = "lin"  # A's initialisation: "lin" (S4D-Lin) or "inv" (S4D-Inv)

    causal_modes: ClassVar[tuple[bool, ...]] = (True, False)  # False: + a backward SSM

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(type(self).__name__, "init", self.init, tuple(INITS))


@dataclass
class S4DState(State):
    x: Tensor  # [B, H, N, 2] the complex state as (real, imag)


def _complex(p: Tensor) -> Tensor:
    """A parameter stored as ``[..., 2]`` (real, imag) -> complex ``[...]``."""
    return torch.complex(p[..., 0], p[..., 1])


class S4D(Mixer):
    name = "s4d"
    state_class = S4DState

    def __init__(self, config: S4DConfig) -> None:
        super().__init__(config)
        c = config
        H, N = c.d_model, c.d_state
        self.A_log_re, self.A_im = stable_diagonal(INITS[c.init](H, N))
        self.B = nn.Parameter(torch.stack([torch.ones(H, N), torch.zeros(H, N)], -1))
        self.C = nn.Parameter(torch.randn(H, N, 2) * math.sqrt(0.5))
        self.C_backward = nn.Parameter(torch.randn(H, N, 2) * math.sqrt(0.5)) if not c.causal else None
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(c.log_dt_init(H))
        self.out = nn.Linear(H, 2 * H)  # GLU output projection

    def ssm_params(self) -> dict[str, Tensor]:
        return {"A": diagonal(self.A_log_re, self.A_im), "B": _complex(self.B), "C": _complex(self.C), "dt": torch.exp(self.log_dt),
                "D": self.D, "method": self.config.discretization}

    def forward(self, x: Tensor, state: S4DState | None = None) -> tuple[Tensor, S4DState | None]:
        self.check_input(x)
        p = self.ssm_params()
        if state is None:
            back = _complex(self.C_backward) if self.C_backward is not None else None
            y, _ = chunk_s4d(x, **p, causal=self.config.causal, C_backward=back)
            return self._output(y), None
        self.check_state(state, x.shape[0])
        x0 = torch.view_as_complex(state.x.to(p["A"].real.dtype).contiguous())
        if x.shape[1] == 1:
            y, xT = s4d_step(x[:, 0], x0, **p)
            y = y[:, None]
        else:
            y, xT = chunk_s4d(x, **p, initial_state=x0, output_final_state=True)
        return self._output(y), S4DState(self.name, torch.view_as_real(xT).to(state.x.dtype))

    def _output(self, y: Tensor) -> Tensor:
        return F.glu(self.out(F.gelu(y)), dim=-1)

    def init_state(self, batch_size: int, device=None, dtype=None) -> S4DState:
        self.check_causal_for_state()
        c = self.config
        dtype = dtype or self.param_dtype()
        return S4DState(self.name, torch.zeros(batch_size, c.d_model, c.d_state, 2, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * c.d_model * c.d_state * 2 * dtype_bytes(dtype)


@dataclass
class S4Config(SSMConfig):
    d_state: int = 64  # N: HiPPO-LegS order (complex states after diagonalisation, Re readout)
    # "bilinear": kernel by Cauchy + Woodbury (S4 Algorithm 1); "zoh": exp(dt A), kernel by blocked
    # dense powers (Algorithm 1 holds only for bilinear), O(N^2 T) per channel
    discretization: str = "bilinear"


@dataclass
class S4State(State):
    x: Tensor  # [B, H, N, 2] the complex state as (real, imag)


class S4(Mixer):
    """S4 (Gu, Goel & Ré 2022): per channel the NPLR HiPPO-LegS SSM diagonalised,
    ``A = Lambda - P P^*`` (``Lambda``, ``P`` trained, ``Re Lambda = -exp(.)``), bilinear
    discretisation with the kernel by Cauchy + Woodbury at the roots of unity, or ZOH with the
    kernel by blocked dense powers of ``exp(dt A)`` (``ops/s4/dplr.py``); FFT convolution,
    ``+ D u``, GELU and a GLU projection (the S4 block). Decode: the dense discretised recurrence
    ``[N, N]`` per channel; a prefill continuing a state runs it too.
    Variant: full N complex states with a ``Re`` readout (no conjugate halving); B from HiPPO,
    trained; C complex normal.
    """

    name = "s4"
    state_class = S4State

    def __init__(self, config: S4Config) -> None:
        super().__init__(config)
        c = config
        H, N = c.d_model, c.d_state
        Lam, P, B, _ = hippo_legs_nplr(N)
        self.Lambda_log_re, self.Lambda_im = stable_diagonal(Lam.expand(H, N))
        self.P = nn.Parameter(torch.view_as_real(P.expand(H, N).clone()).float())
        self.B = nn.Parameter(torch.view_as_real(B.expand(H, N).clone()).float())
        self.C = nn.Parameter(torch.randn(H, N, 2) * math.sqrt(0.5 / N))
        self.D = nn.Parameter(torch.randn(H))
        self.log_dt = nn.Parameter(c.log_dt_init(H))
        self.out = nn.Linear(H, 2 * H)

    def _params(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (diagonal(self.Lambda_log_re, self.Lambda_im), _complex(self.P), _complex(self.B),
                _complex(self.C), torch.exp(self.log_dt))

    def forward(self, x: Tensor, state: S4State | None = None) -> tuple[Tensor, S4State | None]:
        self.check_input(x)
        Lam, P, B, C, dt = self._params()
        if state is None:
            K = dplr_kernel(Lam, P, P, B, C, dt, x.shape[1], self.config.discretization).to(x.dtype)
            return F.glu(self.out(F.gelu(fft_conv(x, K, self.D))), dim=-1), None
        self.check_state(state, x.shape[0])
        A_bar, B_bar = discretize_dense(dense_A(Lam, P, P), B, dt, self.config.discretization)
        h = torch.view_as_complex(state.x.to(Lam.real.dtype).contiguous())
        ys = []
        for t in range(x.shape[1]):
            y_t, h = dplr_step(x[:, t], h, A_bar, B_bar, C)
            ys.append(y_t + self.D * x[:, t])
        y = torch.stack(ys, 1)
        return F.glu(self.out(F.gelu(y)), dim=-1), S4State(self.name, torch.view_as_real(h).to(state.x.dtype))

    def init_state(self, batch_size: int, device=None, dtype=None) -> S4State:
        c = self.config
        dtype = dtype or self.param_dtype()
        return S4State(self.name, torch.zeros(batch_size, c.d_model, c.d_state, 2, device=device, dtype=dtype))

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        return batch_size * c.d_model * c.d_state * 2 * dtype_bytes(dtype)
