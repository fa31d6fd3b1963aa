"""Where the Triton kernels' tests run: on CUDA when there is a device, else in Triton's CPU
interpreter (``TRITON_INTERPRET=1``, float64, exact to rounding). Import this module before any
kernel module: the interpreter is chosen when ``triton.jit`` wraps the kernels."""

from __future__ import annotations

import importlib.util
import os

import torch

HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_CUDA = torch.cuda.is_available()
if HAS_TRITON and not ON_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    import triton.runtime.interpreter as _interpreter

    _patch = _interpreter._patch_lang_tensor

    def _patch_lang_tensor(tensor, scope) -> None:
        # Triton 3.6's interpreter takes int() of a 1-element array (an error under numpy >= 2.x)
        _patch(tensor, scope)
        tensor.__index__ = lambda self: int(self.handle.data.reshape(-1)[0])

    _interpreter._patch_lang_tensor = _patch_lang_tensor

DEVICE = "cuda" if ON_CUDA else "cpu"
