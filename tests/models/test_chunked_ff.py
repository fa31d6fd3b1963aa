"""Chunked feed-forward (``LMConfig.ff_chunk_size``): the same function, less saved memory."""

from __future__ import annotations

import pytest
import torch

from longctx.models import LMConfig, LongCtxLM
from longctx.models.lm import SwiGLU, chunked_feed_forward
from tests.helpers import assert_close


def _lm(ff_chunk_size: int) -> LongCtxLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=2, mixer="linear_attention",
                   mixer_options={"linear_attention": {"chunk_size": 4}}, ff_chunk_size=ff_chunk_size)
    return LongCtxLM(cfg).double()


def _saved_bytes(fn) -> int:
    """Bytes autograd keeps for the backward while ``fn()`` runs (distinct storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_mlp_equals_unchunked(chunk: int) -> None:
    torch.manual_seed(0)
    mlp = SwiGLU(24, 4.0).double()
    x = torch.randn(2, 37, 24, dtype=torch.float64, requires_grad=True)
    ref = mlp(x)
    out = chunked_feed_forward(mlp, x, chunk)
    assert_close(ref, out, 1e-14, "chunked MLP")
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *mlp.parameters()])
    out_grads = torch.autograd.grad((out * g).sum(), [x, *mlp.parameters()])
    for a, b in zip(ref_grads, out_grads):
        assert_close(a, b, 1e-13, "gradient")


def test_lm_with_chunked_ff_equals_unchunked() -> None:
    idx = torch.randint(0, 40, (2, 29), generator=torch.Generator().manual_seed(1))
    ref, chunked = _lm(0), _lm(8)
    assert_close(ref(idx)[0], chunked(idx)[0], 1e-13, "logits")
    loss_ref = ref(idx)[0].logsumexp(-1).mean()
    loss_chk = chunked(idx)[0].logsumexp(-1).mean()
    for (name, a), b in zip(ref.named_parameters(),
                            torch.autograd.grad(loss_chk, list(chunked.parameters()))):
        assert_close(torch.autograd.grad(loss_ref, a, retain_graph=True)[0], b, 1e-12, name)
    # decode with a state runs through the same path
    s_ref, s_chk = ref.init_state(2), chunked.init_state(2)
    with torch.no_grad():
        assert_close(ref(idx, s_ref)[0], chunked(idx, s_chk)[0], 1e-13, "prefill with state")


def test_chunked_mlp_saves_less_for_backward() -> None:
    """Activation memory: unchunked keeps the [B, T, hidden] activations; chunked keeps the
    chunk inputs only (the hidden layer is recomputed chunk by chunk in the backward)."""
    torch.manual_seed(0)
    mlp = SwiGLU(64, 4.0)
    x = torch.randn(1, 1024, 64, requires_grad=True)
    full, y_full = _saved_bytes(lambda: mlp(x))
    chunked, y_chk = _saved_bytes(lambda: chunked_feed_forward(mlp, x, 64))
    assert_close(y_full, y_chk, 1e-6, "float32 chunked")
    assert chunked * 3 < full, (chunked, full)


@pytest.mark.parametrize("bad", [-1, 2.5, "8"])
def test_bad_ff_chunk_size(bad) -> None:
    with pytest.raises(ValueError, match="ff_chunk_size"):
        LMConfig(ff_chunk_size=bad)
