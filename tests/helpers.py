"""Comparison helpers shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rel_err(ref: Tensor, out: Tensor) -> float:
    """Relative RMS error ``||out - ref|| / ||ref||`` (in float64)."""
    ref64, out64 = ref.detach().double(), out.detach().double()
    denom = ref64.norm().clamp_min(1e-300)
    return ((out64 - ref64).norm() / denom).item()


def assert_close(ref: Tensor, out: Tensor, rtol: float, name: str = "output") -> None:
    """Assert shapes match, ``out`` is finite and its relative RMS error to ``ref`` <= ``rtol``."""
    assert ref.shape == out.shape, f"{name}: shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: contains NaN/Inf"
    err = rel_err(ref, out)
    assert err <= rtol, f"{name}: relative error {err:.3e} > {rtol:.1e}"


def flatten_state(state) -> list[Tensor]:
    """A state is a Tensor, or a (nested) tuple/list of Tensors (non-tensors are skipped)."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    if isinstance(state, (tuple, list)):
        return [t for s in state for t in flatten_state(s)]
    return []


def assert_states_close(ref, out, rtol: float, name: str = "final_state") -> None:
    refs, outs = flatten_state(ref), flatten_state(out)
    assert len(refs) == len(outs), f"{name}: {len(outs)} tensors vs reference {len(refs)}"
    for i, (r, o) in enumerate(zip(refs, outs)):
        if r.is_floating_point():
            assert_close(r, o, rtol, f"{name}[{i}]")
        else:
            assert torch.equal(r, o), f"{name}[{i}]: {o} != {r}"


def grads_of(loss: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, list(inputs), allow_unused=False))


def random_like_outputs(outputs: Sequence[Tensor], seed: int = 1234) -> list[Tensor]:
    """Fixed random cotangents, so gradient checks are not the trivial all-ones direction."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g, dtype=o.dtype).to(o.device) for o in outputs]


def loss_from(outputs: Sequence[Tensor], cotangents: Sequence[Tensor]) -> Tensor:
    return sum((o * c).sum() for o, c in zip(outputs, cotangents))


def random_qkv(b: int, T: int, h: int, dk: int, dv: int, dtype: torch.dtype = torch.float64):
    """Random ``q, k [b, T, h, dk]`` and ``v [b, T, h, dv]`` (never zeros)."""
    q = torch.randn(b, T, h, dk, dtype=dtype)
    k = torch.randn(b, T, h, dk, dtype=dtype)
    v = torch.randn(b, T, h, dv, dtype=dtype)
    return q, k, v


def assert_lm_decodes_like_forward(mixer: str, options: dict, vocab: int = 20) -> None:
    """A 2-layer LM of ``mixer``: greedy ``generate`` (prefill + cached decode) picks the tokens the
    full forward over the generated sequence ranks first."""
    from longctx.models.lm import LMConfig, LongCtxLM

    torch.manual_seed(0)
    model = LongCtxLM(LMConfig(vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, mixer=mixer,
                               mixer_options={mixer: options})).double().eval()
    ids = torch.randint(0, vocab, (2, 9))
    out = model.generate(ids, 6)
    logits = model(out[:, :-1])[0]
    assert torch.equal(logits[:, 8:].argmax(-1), out[:, 9:])
