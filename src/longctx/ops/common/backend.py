"""Which implementation a chunked op runs: the PyTorch reference code or a Triton kernel.

``backend="auto"`` (the default) takes the Triton kernel when every input is on a CUDA device and
Triton imports, else PyTorch; ``"torch"`` forces PyTorch; ``"triton"`` forces the kernel (an
error naming the op if it cannot run). The process-wide default comes from ``set_backend`` or the
``LONGCTX_BACKEND`` environment variable; an op's ``backend=`` argument overrides it. With
``TRITON_INTERPRET=1``, ``"triton"`` also runs on CPU tensors (Triton's interpreter, for tests);
``"auto"`` never picks the interpreter.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

BACKENDS = ("auto", "torch", "triton")
_default = [os.environ.get("LONGCTX_BACKEND", "auto")]


def _check(name: object, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {', '.join(map(repr, BACKENDS))}, got {name!r}")
    return str(name)


def has_triton() -> bool:
    """Triton importable (whether or not a GPU is present)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def set_backend(name: str) -> None:
    """Set the process-wide default backend: "auto", "torch" or "triton"."""
    _default[0] = _check(name, "set_backend")


def get_backend() -> str:
    return _check(_default[0], "LONGCTX_BACKEND")


@contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("torch"): ...`` runs the block with that default backend."""
    old = _default[0]
    set_backend(name)
    try:
        yield
    finally:
        _default[0] = old


# The ops whose kernels have passed their `gpu` tests (vs the float64 references) on an H100:
# "auto" picks a kernel only for these. The others (exact in Triton's CPU interpreter, never run
# on a GPU yet) run only with backend="triton" until their gpu tests have passed there.
# DeltaNet and Gated DeltaNet joined on 2026-12-07 (session 15), once their bf16 backward at key
# dims over 64 was mended (triton_delta.HALF_DH_F32_DOTS).
GPU_VERIFIED = frozenset({"chunk_retention", "chunk_linear_attention", "chunk_ssd", "chunk_gla",
                          "chunk_delta_rule", "chunk_gated_delta_rule"})
# The fused one-token steps (``triton_decode``) passed their tests on an H100 (2026-12-06), but
# they pay off only inside a CUDA graph (H100, 4-layer d_model 1024 LM: graph 0.485 -> graph +
# fused 0.411 ms/token for Gated DeltaNet; eagerly 4.6 -> 7.1 ms, Triton's launcher costing more
# than the PyTorch ops it replaces): "auto" picks them only while a graph is being captured.
# The fused whole-layer steps (``triton_layer_step``: projections, short conv, norms, the state
# update and the output gate of one layer in one kernel) joined on 2026-12-07 (session 17), once
# the graph test that replays them (tests/generate/test_cuda_graph.py) passed on an H200; one layer
# alone, graph + fused, d_model 1024, 8 heads: Gated DeltaNet 0.022, Mamba-2 0.016, GLA 0.012 ms
# per step at 1k and at 64k tokens of context.
GRAPH_VERIFIED_STEPS = frozenset({"linear_attention_step", "retention_step", "gla_step",
                                  "delta_rule_step", "gated_delta_rule_step", "ssd_step",
                                  "deltanet_layer_step", "gated_deltanet_layer_step",
                                  "mamba2_layer_step", "gla_layer_step"})


def wants_triton(op: str, backend: str | None, *tensors: Tensor | None, supported: str | None = None) -> bool:
    """True when ``op`` should run its Triton kernel on ``tensors``.

    ``supported``: None when the kernel handles this call, else the reason it does not (e.g. a
    head dim over the kernel's limit); ``"auto"`` then falls back to PyTorch, ``"triton"`` raises.
    ``"auto"`` also stays on PyTorch for kernels not yet verified on a GPU (``GPU_VERIFIED``), and
    runs the fused decode steps only while a CUDA graph is captured (``GRAPH_VERIFIED_STEPS``).
    """
    name = get_backend() if backend is None else _check(backend, op)
    if name == "torch":
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if name == "auto":
        verified = op in GPU_VERIFIED or (op in GRAPH_VERIFIED_STEPS and stream_capturing())
        return on_cuda and supported is None and has_triton() and verified
    on_device = on_cuda or interpreting()
    if not has_triton():
        raise RuntimeError(f"{op}: backend='triton' but Triton is not installed (pip install triton)")
    if not on_device:
        raise ValueError(f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for the "
                         "CPU interpreter)")
    if supported is not None:
        raise ValueError(f"{op}: backend='triton' cannot run this call: {supported}")
    return True


MAX_KERNEL_K = 256  # the kernels' backward holds a chunk's whole q / k rows: key dims up to this


def kernel_unsupported(K: int, V: int) -> str | None:
    """Why the chunked linear-attention kernels cannot take key dim ``K`` / value dim ``V``."""
    if K > MAX_KERNEL_K:
        return f"key / feature dim {K} > {MAX_KERNEL_K}"
    if V < 1:
        return "an empty value dim"
    return None


MAX_DECODE_K = 1024  # the fused decode step holds a head's whole key dim in one program


def decode_unsupported(K: int) -> str | None:
    """Why the fused decode-step kernel (``triton_decode``) cannot take key / feature dim ``K``."""
    return f"key / feature dim {K} > {MAX_DECODE_K}" if K > MAX_DECODE_K else None


# a head's state, in values, that one program of the fused layer step holds (16 warps: 128
# registers a thread and no spills at K = 128, V = 256, sm_90a ptxas, 2026-12-07)
MAX_LAYER_STEP_KV = 128 * 256


def layer_step_unsupported(K: int, V: int, conv_size: int) -> str | None:
    """Why the fused DeltaNet / Gated DeltaNet / Mamba-2 layer step (``triton_layer_step``) cannot
    take heads of key dim K, value dim V (Mamba-2: head dim P, state size N) and a conv of
    ``conv_size`` taps, or None."""
    pow2 = lambda n: 1 << max(0, n - 1).bit_length()  # triton.next_power_of_2, without triton
    if max(16, pow2(K)) * max(16, pow2(V)) > MAX_LAYER_STEP_KV:
        return f"a head's state {K} x {V} is over the {MAX_LAYER_STEP_KV} values one program holds"
    if conv_size > 16:
        return f"conv_size {conv_size} > 16"
    return None


# -- decode under a CUDA graph --------------------------------------------------------------------
_inplace = [False]


def stream_capturing() -> bool:
    """A CUDA graph is being captured on the current stream (no host read-back is allowed)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def checkable(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors themselves; while a CUDA graph is captured, zero CPU stand-ins of the same
    shapes and dtypes instead. The step ops run their checks on these: shape checks still run,
    value checks (``(g > 0).any()``, which read back to the host and so cannot be captured) pass
    on zeros. The values were checked by the eager warm-up step that precedes every capture."""
    if not stream_capturing():
        return tensors
    return tuple(torch.zeros((), dtype=t.dtype).expand(t.shape) for t in tensors)


@contextmanager
def inplace_decode() -> Iterator[None]:
    """Inside the block, the decode steps that run the fused kernel overwrite their state tensor
    in place (when it is contiguous and in the compute dtype) instead of returning a new one: a
    CUDA-graph decoder's static state buffers. Never around code that keeps older states
    (speculative decoding, tree verification)."""
    old = _inplace[0]
    _inplace[0] = True
    try:
        yield
    finally:
        _inplace[0] = old


def decode_inplace(state: Tensor, dtype: torch.dtype) -> bool:
    """Whether a fused decode step may overwrite ``state`` (see ``inplace_decode``)."""
    return _inplace[0] and state.dtype == dtype and state.is_contiguous()


__all__ = [
    "BACKENDS",
    "GPU_VERIFIED",
    "GRAPH_VERIFIED_STEPS",
    "MAX_DECODE_K",
    "MAX_KERNEL_K",
    "checkable",
    "decode_inplace",
    "decode_unsupported",
    "get_backend",
    "has_triton",
    "inplace_decode",
    "interpreting",
    "kernel_unsupported",
    "layer_step_unsupported",
    "set_backend",
    "stream_capturing",
    "use_backend",
    "wants_triton",
]
