"""What ``longctx bench`` measures for each op: its inputs and its forms.

An ``OpSpec`` says how to make the op's inputs at ``(B, T, H, D)`` (every one a differentiable
float tensor: the fwd+bwd pass takes the gradient w.r.t. all of them) and how to call each form
(``chunk``, ``naive``, ``sdpa``) on them. Adding an op to the bench = one spec here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from longctx.position import alibi_slopes

WINDOW = 512                      # sliding-window attention's window in the bench
TOKEN_LOOP_MAX_LEN = 4096         # naive forms that are a Python loop over time are capped here
PAIRWISE_GATE_MAX_LEN = 1024     # naive forms with O(T^2 Dk) memory (at T = 4096 they OOM 23 GB)
MAMBA_STATE = 16                  # Mamba-1 d_state (the paper's default)
LANDMARK_BLOCK = 64               # landmark attention's block size (the paper's l_block)
MTA_KERNELS = (6, 11, 2)          # Multi-Token Attention's c_q, c_k, c_h (the paper's sizes)
MTA_NAIVE_MAX_LEN = 2048          # naive MTA keeps c_q * c_k shifted [B, H, T, T] logits
LINFORMER_K = 256                 # Linformer's projected length k (the paper's ablation value)
NYSTROM_LANDMARKS = 64            # Nystromformer's m (paper: 32 or 64)
NYSTROM_PINV_ITERS = 6            # the paper's iterations of the iterative pseudo-inverse
DILATED_W0 = 512                  # dilated attention: the first segment length (rate 1)

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


def _slopes(i: Inputs) -> Tensor:
    """ALiBi slopes [H] for the op's q (Press et al. 2022), on q's device (not an input: inputs
    get gradients, and the chunked form refuses slopes that require grad)."""
    return alibi_slopes(i["q"].shape[2], torch.float32).to(i["q"].device)


def _landmark_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """q, k, v and one landmark key per complete block of LANDMARK_BLOCK tokens."""
    return {**_qkv(rand, B, T, H, D), "k_landmark": rand(B, T // LANDMARK_BLOCK, H, D)}


def _mta_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """q, k, v and the two MTA kernels: identity + 0.1 * randn, so the layer is attention-like.
    ``kq_kernel [H, c_q, c_k]``; ``head_kernel [H // c_h, c_h, c_h]`` (c_h = 1 for odd H)."""
    c_q, c_k, c_h = MTA_KERNELS
    c_h = c_h if H % c_h == 0 else 1
    kq = 0.1 * rand(H, c_q, c_k)
    kq[:, 0, c_k // 2] += 1.0  # theta_{0, 0}: the identity tap
    head = 0.1 * rand(H // c_h, c_h, c_h) + torch.eye(c_h)
    return {**_qkv(rand, B, T, H, D), "kq_kernel": kq, "head_kernel": head}


def _linformer_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """q, k, v and E, F [k, T] (max_len = the bench T; one pair shared by all heads), entries
    N(0, 1/T) so that the rows of E K have the size of a key."""
    return {**_qkv(rand, B, T, H, D),
            "E": rand(LINFORMER_K, T) * T**-0.5, "F": rand(LINFORMER_K, T) * T**-0.5}


def dilated_pattern(T: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """LongNet-style geometric pattern scaled to T: w = 512, 1024, ... (<= max(T, 512)),
    r = 1, 2, 4, ...; w / r = 512 for every pair, the longest segment covers T (T a power of 2)."""
    ws = [DILATED_W0]
    while ws[-1] * 2 <= T:
        ws.append(ws[-1] * 2)
    return tuple(ws), tuple(2**i for i in range(len(ws)))


def _dilated_kw(T: int) -> dict[str, tuple[int, ...]]:
    ws, rs = dilated_pattern(T)
    return {"segment_lengths": ws, "dilation_rates": rs}


def longformer_globals(T: int) -> tuple[int, ...]:
    """8 global positions spread over the sequence (position 0 first, as a [CLS] token)."""
    return tuple(range(0, T, max(T // 8, 1)))[:8]


def _longformer_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """q, k, v and the global projections q_g, k_g, v_g (Longformer §3.1)."""
    return {**_qkv(rand, B, T, H, D),
            "q_g": rand(B, T, H, D), "k_g": rand(B, T, H, D), "v_g": rand(B, T, H, D)}


def _three(mod: ModuleType, stem: str, cs: int, **kw: Any) -> dict[str, Form]:
    """``chunk_<stem>`` and ``naive_<stem>`` of ``mod`` on the inputs as keywords."""
    chunk, naive = getattr(mod, f"chunk_{stem}"), getattr(mod, f"naive_{stem}")
    return {"chunk": lambda i: chunk(**i, chunk_size=cs, **kw)[0],
            "naive": lambda i: naive(**i, **kw)[0]}


S4D_STATE = 32                    # S4D's N = 64 real states = 32 complex pairs (the paper's default)


def _s4d_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """u [B, T, H*D] (one SSM per channel) and S4D-Lin-like parameters as real tensors."""
    n = H * D
    return {"u": rand(B, T, n), "A_re": -torch.rand(n, S4D_STATE) * 0.5 - 0.25,
            "A_im": torch.arange(S4D_STATE, dtype=torch.float32).expand(n, -1) * 3.14159,
            "B_re": torch.ones(n, S4D_STATE), "B_im": torch.zeros(n, S4D_STATE),
            "C_re": rand(n, S4D_STATE), "C_im": rand(n, S4D_STATE),
            "dt": torch.exp(torch.rand(n) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)),
            "D": rand(n)}


def _s4d_call(fn: Callable, i: Inputs) -> Tensor:
    return fn(i["u"], torch.complex(i["A_re"], i["A_im"]), torch.complex(i["B_re"], i["B_im"]),
              torch.complex(i["C_re"], i["C_im"]), i["dt"], i["D"])[0]


def _rwkv6_inputs(rand: Rand, B: int, T: int, H: int, D: int) -> Inputs:
    """r, k [B, T, H, K=D], v [B, T, H, V=D], the log-decay w = -exp(d) with d = 0.5 randn - 3
    (decays around exp(-0.05) per step), and the bonus u [H, K]."""
    return {"r": rand(B, T, H, D), "k": rand(B, T, H, D), "v": rand(B, T, H, D),
            "w": -torch.exp(0.5 * rand(B, T, H, D) - 3.0), "u": rand(H, D)}


def _h3_call(fn: Callable, i: Inputs):
    """H3 with S4D-Lin-like A, B = 1 and the inputs' C."""
    A = torch.complex(i["A_re"], i["A_im"])
    return fn(i["q"], i["k"], i["v"], i["f"], A, torch.ones_like(A), torch.complex(i["C_re"], i["C_im"]), i["dt"])


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
    OpSpec("s4d", "s4", ("chunk", "naive"), _s4d_inputs,
           lambda m, T, cs, w: {"chunk": lambda i: _s4d_call(m.chunk_s4d, i),
                                "naive": lambda i: _s4d_call(m.naive_s4d, i)},
           params={"channels": "H * D", "N": S4D_STATE, "discretization": "zoh",
                   "form": "Vandermonde kernel + FFT convolution"},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("rwkv4", "rwkv4", ("chunk", "naive"), lambda rand, B, T, H, D: {
               "k": rand(B, T, H * D), "v": rand(B, T, H * D),
               "w": torch.exp(rand(H * D) - 2.0), "u": rand(H * D)},
           lambda m, T, cs, w: {"chunk": lambda i: m.chunk_wkv(**i, chunk_size=cs)[0],
                                "naive": lambda i: m.naive_wkv(**i)[0]},
           chunk_size=lambda T: 32,
           params={"channels": "H * D", "w": "exp(randn - 2)"},
           naive_max_len=PAIRWISE_GATE_MAX_LEN,
           naive_cap_reason="the definition builds a [T, T, C] weight tensor"),
    OpSpec("rwkv6", "rwkv6", ("chunk", "naive"), _rwkv6_inputs,
           lambda m, T, cs, w: _three(m, "rwkv6", cs),
           params={"K = V": "D", "w": "-exp(0.5 randn - 3) (log-decay)", "u": "randn [H, K]",
                   "sub_chunk": "largest divisor of chunk_size <= 8"},
           naive_max_len=PAIRWISE_GATE_MAX_LEN,
           naive_cap_reason="the definition builds a [B, T, T, H, K] decay tensor"),
    OpSpec("s5", "s5", ("chunk", "naive"), lambda rand, B, T, H, D: {
               "u": rand(B, T, H * D), "L_re": -torch.rand(S4D_STATE) * 0.5 - 0.25,
               "L_im": torch.arange(S4D_STATE, dtype=torch.float32), "B_re": rand(S4D_STATE, H * D) / 16,
               "B_im": rand(S4D_STATE, H * D) / 16, "C_re": rand(H * D, S4D_STATE) / 6,
               "C_im": rand(H * D, S4D_STATE) / 6, "dt": torch.full((S4D_STATE,), 0.01), "D": rand(H * D)},
           lambda m, T, cs, w: {
               form: (lambda i, fn=fn: fn(i["u"], torch.complex(i["L_re"], i["L_im"]),
                                          torch.complex(i["B_re"], i["B_im"]),
                                          torch.complex(i["C_re"], i["C_im"]), i["dt"], i["D"])[0])
               for form, fn in (("chunk", m.chunk_s5), ("naive", m.naive_s5))},
           params={"channels": "H * D", "P": S4D_STATE, "scan chunk": 64},
           naive_max_len=TOKEN_LOOP_MAX_LEN),
    OpSpec("h3", "h3", ("chunk", "naive"), lambda rand, B, T, H, D: {
               **_qkv(rand, B, T, H, D), "f": rand(H * D, 8) / 3,
               "A_re": -torch.rand(H * D, 16) * 0.5 - 0.25, "A_im": torch.arange(16.0).expand(H * D, -1) * 3.14159,
               "C_re": rand(H * D, 16) / 4, "C_im": rand(H * D, 16) / 4,
               "dt": torch.full((H * D,), 0.01)},
           lambda m, T, cs, w: {"chunk": lambda i: _h3_call(m.chunk_h3, i)[0],
                                "naive": lambda i: _h3_call(m.naive_h3, i)},
           params={"shift taps": 8, "Ns": 16, "heads": "H", "Dk = Dv": "D"},
           naive_max_len=PAIRWISE_GATE_MAX_LEN,
           naive_cap_reason="a token loop whose autograd keeps an [H*Dk, Ns, Dv] complex state per "
                            "step (killed at T = 4096, 23 GB)"),
    OpSpec("ema", "ema", ("chunk", "naive"), lambda rand, B, T, H, D: {
               "x": rand(B, T, H * D), "alpha": torch.sigmoid(rand(H * D, 16)),
               "delta": torch.sigmoid(rand(H * D, 16)), "beta": rand(H * D, 16), "eta": rand(H * D, 16) / 4},
           lambda m, T, cs, w: {"chunk": lambda i: m.chunk_ema(**i)[0], "naive": lambda i: m.naive_ema(**i)[0]},
           params={"channels": "H * D", "ema_dim": 16, "form": "Vandermonde kernel + FFT convolution"},
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
    # the softmax family for long contexts (issue 4)
    OpSpec("softmax_attention_alibi", "softmax_attention", ("chunk", "sdpa", "naive"), _la_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_softmax_attention(**i, chunk_size=cs,
                                                            alibi_slopes=_slopes(i))[0],
               "sdpa": lambda i: m.sdpa_softmax_attention(**i, alibi_slopes=_slopes(i))[0],
               "naive": lambda i: m.naive_softmax_attention(**i, alibi_slopes=_slopes(i))[0]},
           chunk_size=softmax_chunk_size, params={"position": "alibi", "causal": True}),
    OpSpec("softmax_attention_bidir", "softmax_attention", ("chunk", "sdpa", "naive"), _la_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_softmax_attention(**i, chunk_size=cs, causal=False)[0],
               "sdpa": lambda i: m.sdpa_softmax_attention(**i, causal=False)[0],
               "naive": lambda i: m.naive_softmax_attention(**i, causal=False)[0]},
           chunk_size=softmax_chunk_size, params={"causal": False}),
    OpSpec("sliding_window_attention_alibi_bidir", "sliding_window_attention", ("chunk", "naive"),
           _la_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_sliding_window_attention(
                   **i, window=w, chunk_size=cs, alibi_slopes=_slopes(i), causal=False)[0],
               "naive": lambda i: m.naive_sliding_window_attention(
                   **i, window=w, alibi_slopes=_slopes(i), causal=False)[0]},
           params={"window": WINDOW, "position": "alibi", "causal": False}),
    OpSpec("landmark_attention", "landmark_attention", ("chunk", "naive"), _landmark_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_landmark_attention(**i, block_size=LANDMARK_BLOCK,
                                                             chunk_size=cs)[0],
               "naive": lambda i: m.naive_landmark_attention(**i, block_size=LANDMARK_BLOCK)[0]},
           chunk_size=softmax_chunk_size,
           params={"block_size": LANDMARK_BLOCK, "k_landmark": "randn [B, T // block, H, D]"},
           naive_max_len=8192,
           naive_cap_reason="about six [B, H, T, T] float matrices (scores, two softmaxes, "
                            "weights) kept for the backward"),
    OpSpec("dilated_attention", "dilated_attention", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: {  # the segments are the blocks: no chunk_size
               "chunk": lambda i: m.chunk_dilated_attention(**i, **_dilated_kw(T))[0],
               "naive": lambda i: m.naive_dilated_attention(**i, **_dilated_kw(T))[0]},
           params={"segment_lengths": "512 * 2^i <= max(T, 512)", "dilation_rates": "2^i",
                   "causal": True},
           naive_max_len=4096,  # H100, B=1, H=8, D=64: naive fwd+bwd peaked at 38.5 GiB at T=8192
           naive_cap_reason="one masked T x (W + T) score matrix per (w, r) pattern"),
    OpSpec("longformer_attention", "longformer_attention", ("chunk", "naive"), _longformer_inputs,
           lambda m, T, cs, w: {
               "chunk": lambda i: m.chunk_longformer_attention(
                   **i, window=w, global_positions=longformer_globals(T), chunk_size=cs)[0],
               "naive": lambda i: m.naive_longformer_attention(
                   **i, window=w, global_positions=longformer_globals(T))[0]},
           params={"window": WINDOW, "global_positions": "range(0, T, T // 8)[:8]",
                   "causal": True}),
    OpSpec("linformer_attention", "linformer_attention", ("chunk", "naive"), _linformer_inputs,
           lambda m, T, cs, w: _three(m, "linformer_attention", cs),
           chunk_size=lambda T: 1024,
           params={"k": LINFORMER_K, "E, F": "[k, T] N(0, 1/T), shared by all heads",
                   "bidirectional": True}),
    OpSpec("nystromformer", "nystromformer", ("chunk", "naive"), _la_inputs,
           lambda m, T, cs, w: _three(m, "nystrom_attention", cs,
                                      num_landmarks=NYSTROM_LANDMARKS,
                                      pinv_iterations=NYSTROM_PINV_ITERS),
           chunk_size=lambda T: 1024,
           params={"num_landmarks": NYSTROM_LANDMARKS, "pinv_iterations": NYSTROM_PINV_ITERS,
                   "naive": "forms the [T, T] approximation explicitly", "bidirectional": True}),
    OpSpec("multi_token_attention", "multi_token_attention", ("chunk", "naive"), _mta_inputs,
           lambda m, T, cs, w: _three(m, "multi_token_attention", cs),
           chunk_size=softmax_chunk_size,
           params={"c_q": MTA_KERNELS[0], "c_k": MTA_KERNELS[1], "c_h": MTA_KERNELS[2],
                   "kernels": "identity + 0.1 randn", "causal": True,
                   "chunk": "query blocks under torch.utils.checkpoint"},
           naive_max_len=MTA_NAIVE_MAX_LEN,
           naive_cap_reason="the full-matrix definition, saving c_q * c_k = 66 shifted "
                            "[B, H, T, T] logit matrices for the backward"),
]}
