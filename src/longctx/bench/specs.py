"""What ``longctx bench`` measures for each op: its inputs and its forms.

An ``OpSpec`` says how to make the op's inputs at ``(B, T, H, D)`` (every one a differentiable
float tensor: the fwd+bwd pass takes the gradient w.r.t. all of them) and how to call each form
(``chunk``, ``naive``, ``sdpa``) on them. Adding an op to the bench = one spec here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

WINDOW = 512                      # sliding-window attention's window in the bench
TOKEN_LOOP_MAX_LEN = 4096         # naive forms that are a Python loop over time are capped here
PAIRWISE_GATE_MAX_LEN = 1024     # naive forms with O(T^2 Dk) memory (at T = 4096 they OOM 23 GB)
MAMBA_STATE = 16                  # Mamba-1 d_state (the paper's default)

Inputs = dict[str, Tensor]
Form = Callable[[Inputs], Tensor]  # inputs -> o
Rand = Callable[..., Tensor]       # rand(*shape) -> standard normal float32 (seeded)


def softmax_chunk_size(T: int) -> int:
    """The chunked softmax form's block size in the bench: 128 up to T=4096, then 256."""
    return 128 if T <= 4096 else 256


@dataclass(frozen=True)
class OpSpec:
    name: str
    module: str                                   # imported as longctx.ops.<module>
    forms: tuple[str, ...]                        # measured forms, in order
    inputs: Callable[[Rand, int, int, int, int], Inputs]  # (rand, B, T, H, D) -> inputs
    calls: Callable[[ModuleType, int, int, int], dict[str, Form]]  # (mod, T, chunk, window)
    chunk_size: Callable[[int], int] = lambda T: 64  # the chunk form's chunk size at T
    params: dict[str, Any] = field(default_factory=dict)  # recorded in the JSON
    naive_max_len: int | None = None              # a tighter cap on the naive form ...
    naive_cap_reason: str = "a Python loop over time"  # ... and why


def _qkv(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    return {"q": rand(B, T, H, D), "k": rand(B, T, H, D), "v": rand(B, T, H, D)}


def _gla_gate(rand: Rand, B: int, T: int, H: int, D: int) -> Tensor:
    return F.logsigmoid(rand(B, T, H, D)) / 16  # the GLA layer's gate: sigmoid(.)^(1/16)


def _unit_keys(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """q, k L2-normalised (the delta rule's contract), v, beta = sigmoid(.) in (0, 1)."""
    d = _qkv(rand, B, T, H, D)
    d["q"], d["k"] = F.normalize(d["q"], dim=-1), F.normalize(d["k"], dim=-1)
    d["beta"] = torch.sigmoid(rand(B, T, H))
    return d


def _gdn_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    return {**_unit_keys(rand, B, T, H, D), "g": F.logsigmoid(rand(B, T, H) + 4.0)}


def _ssd_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """Mamba-2: x [B, T, H, P=D], dt [B, T, H], A [H], B/C [B, T, 1, N=D] (one group)."""
    return {"x": rand(B, T, H, D), "dt": F.softplus(rand(B, T, H) - 3.0),
            "A": -torch.linspace(1.0, 16.0, H), "B": rand(B, T, 1, D), "C": rand(B, T, 1, D)}


def _mamba_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """Mamba-1: u, dt [B, T, Dn = H * D], A [Dn, N] (S4D-real), B/C [B, T, N]."""
    Dn = H * D
    A = -torch.arange(1, MAMBA_STATE + 1, dtype=torch.float32).repeat(Dn, 1)
    return {"u": rand(B, T, Dn), "dt": F.softplus(rand(B, T, Dn) - 3.0), "A": A,
            "B": rand(B, T, MAMBA_STATE), "C": rand(B, T, MAMBA_STATE)}


def _levels(T: int) -> int:
    return max(T - 1, 1).bit_length() + 1  # level 0 (the token) + one per bit of t


def _with_lambda(make: Callable[[Rand, int, int, int, int], Inputs]):
    def inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
        return {**make(rand, B, T, H, D),
                "lambda_levels": F.softplus(rand(B, T, H, _levels(T)))}
    return inputs


def _la_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    return _qkv(rand, B, T, H, D)


def _gla_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    return {**_qkv(rand, B, T, H, D), "g": _gla_gate(rand, B, T, H, D)}


def _three(mod: ModuleType, stem: str, cs: int, **kw: Any) -> dict[str, Form]:
    """``chunk_<stem>`` and ``naive_<stem>`` of ``mod`` on the inputs as keywords."""
    chunk, naive = getattr(mod, f"chunk_{stem}"), getattr(mod, f"naive_{stem}")
    return {"chunk": lambda i: chunk(**i, chunk_size=cs, **kw)[0],
            "naive": lambda i: naive(**i, **kw)[0]}


SPECS: dict[str, OpSpec] = {s.name: s for s in [
    OpSpec("softmax_attention", "softmax_attention", ("chunk", "sdpa", "naive"), _la_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_softmax_attention(**i, chunk_size=cs)[0],
               "sdpa": lambda i: m.sdpa_softmax_attention(**i)[0],
               "naive": lambda i: m.naive_softmax_attention(**i)[0]},
           chunk_size=softmax_chunk_size),
    OpSpec("sliding_window_attention", "sliding_window_attention", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_sliding_window_attention(**i, window=w,
                                                                   chunk_size=cs)[0],
               "naive": lambda i: m.naive_sliding_window_attention(**i, window=w)[0]},
           params={"window": WINDOW}),
    OpSpec("linear_attention", "linear_attention", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: _three(m, "linear_attention", cs, feature_map="elu+1",
                                      normalize=True),
           params={"feature_map": "elu+1", "normalize": True}),
    OpSpec("retention", "retention", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: _three(m, "retention", cs),
           params={"log_decay": "RetNet default"}),
    OpSpec("gla", "gla", ("chunk", "naive"), _gla_inputs,
           lambda m, T, cs, w: _three(m, "gla", cs),
           params={"gate": "logsigmoid(randn)/16 [B, T, H, D]"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("deltanet", "deltanet", ("chunk", "naive"), _unit_keys,
           lambda m, T, cs, w: _three(m, "delta_rule", cs),
           params={"keys": "L2-normalised", "beta": "sigmoid(randn)"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("gated_deltanet", "gated_deltanet", ("chunk", "naive"), _gdn_inputs,
           lambda m, T, cs, w: _three(m, "gated_delta_rule", cs),
           params={"keys": "L2-normalised", "beta": "sigmoid(randn)",
                   "gate": "logsigmoid(randn + 4) [B, T, H]"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("grouped_linear_attention", "grouped_linear_attention", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: {  # the group is the chunk: group_size sets both
               "chunk": lambda i: m.chunk_grouped_linear_attention(**i, group_size=cs)[0],
               "naive": lambda i: m.naive_grouped_linear_attention(**i, group_size=cs)[0]},
           params={"group_size": "= chunk_size"}),
    OpSpec("mamba", "mamba", ("chunk", "naive"), _mamba_inputs,
           lambda m, T, cs, w: _three(m, "selective_scan", cs),
           params={"channels": "H * D", "d_state": MAMBA_STATE, "A": "S4D-real -(n+1)",
                   "dt": "softplus(randn - 3)"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("mamba2", "mamba2", ("chunk", "naive"), _ssd_inputs,
           lambda m, T, cs, w: _three(m, "ssd", cs),
           params={"P": "D", "N": "D", "groups": 1, "A": "-linspace(1, 16, H)",
                   "dt": "softplus(randn - 3)"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    # log-linear attention (Guo et al. 2025) over each base: the base's inputs + lambda_levels
    OpSpec("log_linear_attention", "log_linear", ("chunk", "naive"), _with_lambda(_la_inputs),
           lambda m, T, cs, w: _three(m, "log_linear_attention", cs),
           params={"base": "linear attention, identity map, unnormalised",
                   "lambda_levels": "softplus(randn)"}),
    OpSpec("log_linear_gla", "log_linear", ("chunk", "naive"), _with_lambda(_gla_inputs),
           lambda m, T, cs, w: _three(m, "log_linear_attention", cs),
           params={"base": "gla", "gate": "logsigmoid(randn)/16 [B, T, H, D]",
                   "lambda_levels": "softplus(randn)"},
           naive_max_len=PAIRWISE_GATE_MAX_LEN,
           naive_cap_reason="the [T, T, Dk] per-dimension decay matrix of the definition"),
    OpSpec("log_linear_mamba2", "log_linear", ("chunk", "naive"), _with_lambda(_ssd_inputs),
           lambda m, T, cs, w: _three(m, "log_linear_mamba2", cs),
           params={"base": "mamba2 (same inputs)", "lambda_levels": "softplus(randn)"}),
    OpSpec("log_linear_gated_deltanet", "log_linear", ("chunk", "naive"),
           _with_lambda(_gdn_inputs),
           lambda m, T, cs, w: _three(m, "log_linear_gated_deltanet", cs),
           params={"base": "gated_deltanet (same inputs)", "lambda_levels": "softplus(randn)"},
           naive_max_len=PAIRWISE_GATE_MAX_LEN,
           naive_cap_reason="a loop over time carrying [T, Dk] rows for every source token "
                            "(T = 4096 kept ~16 GB for the backward)"),
]}
