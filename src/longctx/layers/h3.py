"""H3 layer (Fu, Dao, Saab, Thomas, Rudra & Ré 2023, "Hungry Hungry Hippos", §3.1).

``Q, K, V = x W_Q, x W_K, x W_V`` split into heads; ``K_bar = SSM_shift(K)`` (a learned FIR of
``shift_size`` taps over the last keys: the shift-matrix SSM); per head the outer product
``K_bar_t V_t^T`` passes through a diagonal SSM (S4D-Lin, ``d_state`` complex states, one SSM per
(head, key dim) shared by the value dims), and the output is ``Q_t`` contracted with it, then
``W_O``. Variant: the multi-head H3 of §3.3 with head size ``d_model / n_heads`` for keys and
values; the diagonal SSM is S4D's parameterisation (``Re A < 0`` by ``-exp``, ``B = 1`` at init,
``dt`` log-uniform). Training: depthwise causal conv + FFT convolution; decode: the shift
register of the last ``shift_size - 1`` keys and the SSM state ``[H*Dk, d_state, Dv]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from longctx.layers.base import Mixer, State, dtype_bytes
from longctx.layers.common import check_positive, heads_of_size, merge_heads, split_heads
from longctx.layers.s4d import SSMConfig, _complex, diagonal, stable_diagonal
from longctx.ops.h3 import chunk_h3, h3_step
from longctx.ops.s4 import s4d_lin


@dataclass
class H3Config(SSMConfig):
    d_state: int = 32  # complex states of the diagonal SSM per (head, key dim)
    shift_size: int = 8  # taps of the shift SSM (a causal FIR over the last keys)
    # H3's head dimension (§3.3; the paper's and zoology's H3 use 1: d_model SSMs, a
    # [d_model, d_state] state). 0: head_dim = d_model / n_heads; > 0: it sets n_heads to
    # d_model / head_size (the model's n_heads is then not used by this mixer)
    head_size: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.n_heads = heads_of_size(name, self.head_size, self.d_model, f"d_model={self.d_model}") or self.n_heads
        super().__post_init__()
        check_positive(name, "shift_size", self.shift_size)


@dataclass
class H3State(State):
    k_history: Tensor  # [B, shift_size - 1, d_model] the last keys (shift register)
    S: Tensor  # [B, d_model, d_state, head_dim, 2] the diagonal SSM state as (real, imag)


class H3(Mixer):
    name = "h3"
    state_class = H3State

    def __init__(self, config: H3Config) -> None:
        super().__init__(config)
        c = config
        d, Ns = c.d_model, c.d_state
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.shift_kernel = nn.Parameter(torch.randn(d, c.shift_size) / math.sqrt(c.shift_size))
        self.A_log_re, self.A_im = stable_diagonal(s4d_lin(d, Ns))
        self.B = nn.Parameter(torch.stack([torch.ones(d, Ns), torch.zeros(d, Ns)], -1))
        self.C = nn.Parameter(torch.randn(d, Ns, 2) * math.sqrt(0.5 / Ns))
        self.log_dt = nn.Parameter(c.log_dt_init(d))

    def ssm_params(self) -> dict[str, Tensor]:
        return {"A": diagonal(self.A_log_re, self.A_im), "Bs": _complex(self.B),
                "C": _complex(self.C), "dt": torch.exp(self.log_dt), "method": self.config.discretization}

    def forward(self, x: Tensor, state: H3State | None = None) -> tuple[Tensor, H3State | None]:
        self.check_input(x)
        c = self.config
        q, k, v = (split_heads(w(x), c.n_heads) for w in (self.wq, self.wk, self.wv))  # [B, T, H, Dh]
        p = self.ssm_params()
        if state is None:
            o, _ = chunk_h3(q, k, v, self.shift_kernel, **p)
            return self.wo(merge_heads(o)), None
        self.check_state(state, x.shape[0])
        S0 = torch.view_as_complex(state.S.to(p["A"].real.dtype).contiguous())
        cache = (state.k_history.to(x.dtype), S0)
        if x.shape[1] == 1:
            o, (hist, S) = h3_step(q[:, 0], k[:, 0], v[:, 0], self.shift_kernel, **p, state=cache)
            o = o[:, None]
        else:
            o, (hist, S) = chunk_h3(q, k, v, self.shift_kernel, **p, initial_state=cache, output_final_state=True)
        new = H3State(self.name, hist.to(state.k_history.dtype), torch.view_as_real(S).to(state.S.dtype))
        return self.wo(merge_heads(o)), new

    def init_state(self, batch_size: int, device=None, dtype=None) -> H3State:
        c = self.config
        dtype = dtype or self.param_dtype()
        hist = torch.zeros(batch_size, c.shift_size - 1, c.d_model, device=device, dtype=dtype)
        S = torch.zeros(batch_size, c.d_model, c.d_state, c.head_dim, 2, device=device, dtype=dtype)
        return H3State(self.name, hist, S)

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        c = self.config
        per_row = (c.shift_size - 1) * c.d_model + c.d_model * c.d_state * c.head_dim * 2
        return batch_size * per_row * dtype_bytes(dtype)
