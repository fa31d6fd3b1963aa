"""Whole-model decode from a CUDA graph (``generate/cuda_graph.py``) and the decode benchmark.

On CPU: which models qualify, the clean refusals and fallbacks, the eager path of ``generate`` and
of the benchmark. On a GPU (marker ``gpu``): graph decode == eager decode token by token.
"""

from __future__ import annotations

import pytest
import torch

from longctx.bench.decode import (
    MODES,
    block_latency,
    decode_latency,
    decode_model,
    format_rows,
    mixer_latency,
)
from longctx.cli.main import main
from longctx.generate.cuda_graph import (
    GRAPH_MIXERS,
    CUDAGraphDecoder,
    GraphStreamer,
    copy_state,
    graph_generate,
    graph_streamer,
    graph_unsupported,
)
from longctx.generate.streaming import LongCtxStreamer, generate_tokens
from longctx.models.io import save_lm
from longctx.models.lm import LMConfig, LongCtxLM
from longctx.ops.common.backend import use_backend
from longctx.tasks.tokenizer import ByteTokenizer
from tests.helpers import assert_close

ON_CUDA = torch.cuda.is_available()


def _model(mixer, short_conv: int = 0, device: str = "cpu", vocab_size: int = 61) -> LongCtxLM:
    torch.manual_seed(0)
    config = LMConfig(vocab_size=vocab_size, d_model=32, n_layers=len(mixer) if isinstance(mixer, list) else 2,
                      n_heads=2, mixer=mixer, short_conv=short_conv)
    return LongCtxLM(config).to(device).eval()


def test_which_models_qualify() -> None:
    assert "mixer(s) 'retention', 'softmax_attention'" in graph_unsupported(
        _model(["gla", "retention", "softmax_attention"]))
    assert graph_unsupported(_model("gated_deltanet", short_conv=3)) == "the model is not on a CUDA device"
    assert graph_unsupported(torch.nn.Linear(2, 2)) == "Linear is not a LongCtxLM"
    with pytest.raises(ValueError, match="CUDAGraphDecoder: .*not on a CUDA device"):
        CUDAGraphDecoder(_model("mamba2"))


def test_graph_streamer_falls_back_on_cpu() -> None:
    streamer = LongCtxStreamer(_model("deltanet"), None)
    same, why = graph_streamer(streamer)
    assert same is streamer and why == "the model is not on a CUDA device"
    streamer.policy = object()
    assert graph_streamer(streamer)[1] == "a KV-cache policy is set"


def test_copy_state_skips_buffers_written_in_place() -> None:
    model = _model(["gla", "mamba2"], short_conv=2)
    dst, src = model.init_state(2), model.init_state(2)
    for t in [*(t for s in src.mixers for t in s.tensors().values()), *(c.buf for c in src.convs)]:
        t.normal_()
    src.mixers[0].S = dst.mixers[0].S  # as if the fused kernel had updated it in place
    copy_state(dst, src)
    assert torch.equal(dst.mixers[1].ssm, src.mixers[1].ssm) and torch.equal(dst.convs[0].buf, src.convs[0].buf)
    assert dst.mixers[0].S.abs().sum() == 0


def test_cli_generate_cpu_is_eager(tmp_path, capsys) -> None:
    """``generate`` on CPU takes the eager path, prints no graph message and continues the prompt."""
    tok = ByteTokenizer()
    model = _model("gated_deltanet", short_conv=2, vocab_size=tok.vocab_size)
    ck = save_lm(model, tmp_path / "lm", {"tokenizer": tok.to_dict(), "seq_len": 32})
    assert main(["generate", "--model", str(ck), "--prompt", "abc", "--cache", "full",
                 "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("abc") and "CUDA graph" not in out.err


def test_decode_latency_cpu_eager_only() -> None:
    model = decode_model("gla", d_model=32, n_layers=2, n_heads=2, vocab_size=17, device="cpu")
    rows = decode_latency(model, [8, 20], steps=2, warmup=1, prefill_chunk=16)
    assert [(r["context"], r["mode"]) for r in rows] == [(L, m) for L in (8, 20) for m in MODES]
    for r in rows:
        assert (r["ms_per_token"] is not None) == (r["mode"] == "eager"), r
        assert r["ms_per_token"] is None or r["ms_per_token"] > 0
    assert "| 20 |" in format_rows(rows)
    with pytest.raises(ValueError, match="unknown mode"):
        decode_latency(model, [8], modes=["fast"])


def test_block_latency_is_the_slope_between_two_depths() -> None:
    rows = block_latency("gla", layers=(1, 3), context=8, modes=["eager", "graph"], device="cpu",
                         steps=2, warmup=1, d_model=32, n_heads=2, vocab_size=17)
    eager, graph = rows
    t1, t3 = eager["ms_per_token"][1], eager["ms_per_token"][3]
    assert eager["error"] is None and eager["ms_per_block"] == pytest.approx((t3 - t1) / 2)
    assert graph["ms_per_block"] is None and "CUDA" in graph["error"]  # no graph on the CPU
    with pytest.raises(ValueError, match="0 < a < b"):
        block_latency("gla", layers=(3, 3), device="cpu")


def test_mixer_latency_cpu_eager_only() -> None:
    """One mixer layer's step alone: eager on the CPU, every other mode says why it cannot run;
    a mixer with a growing cache (softmax attention) steps eagerly but has no graph."""
    # the graph's reason as decode_latency gives it (graph_unsupported): the mixer first, then CUDA
    for mixer, no_graph in (("gated_deltanet", "not on a CUDA device"), ("softmax_attention", "capture-safe")):
        rows = mixer_latency(mixer, d_model=32, n_heads=2, context=20, device="cpu", steps=2, warmup=1)
        assert [r["mode"] for r in rows] == list(MODES)
        eager, fused, graph, both = rows
        assert eager["error"] is None and eager["ms_per_step"] > 0 and eager["context"] == 20
        assert "fused kernel needs CUDA" in fused["error"] and "fused kernel" in both["error"]
        assert graph["ms_per_step"] is None and no_graph in graph["error"]
    with pytest.raises(ValueError, match="unknown mode"):
        mixer_latency("gla", modes=["fast"], device="cpu")


# -- GPU ---------------------------------------------------------------------------------------

GPU_MODELS = [*sorted(GRAPH_MIXERS), ["gla", "gated_deltanet", "mamba2", "linear_attention"]]


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("short_conv", [0, 3])
@pytest.mark.parametrize("mixer", GPU_MODELS, ids=str)
@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_graph_decode_equals_eager(mixer, short_conv: int, backend: str) -> None:
    """Token by token, the replayed graph gives the eager step's logits (both with the fused
    kernel under "auto", both PyTorch under "torch"), over two prefill + decode rounds."""
    model = _model(mixer, short_conv, "cuda")
    B, n_new = 2, 12
    idx = torch.randint(61, (B, 37), device="cuda")
    with use_backend(backend):
        dec = CUDAGraphDecoder(model, B)
        state = model.init_state(B)
        for _round in range(2):  # the second round continues both states with a new prefill
            ref_logits, state = model(idx, state)
            logits = dec.prefill(idx)
            assert_close(ref_logits, logits, 1e-5, "prefill")
            tok = ref_logits[:, -1:].argmax(-1)
            for t in range(n_new):
                ref, state = model(tok, state)
                out = dec.step(tok)
                assert_close(ref[:, -1], out, 1e-4, f"step {t}")
                tok = ref[:, -1:].argmax(-1)
        dec.reset()
        assert all(float(t.abs().sum()) == 0 for s in dec.state.mixers for t in s.tensors().values())


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_graph_decode_with_the_fused_layer_steps_equals_pytorch() -> None:
    """backend "triton": the graph replays the fused whole-layer steps (``triton_layer_step``:
    GLA, Gated DeltaNet, Mamba-2, DeltaNet), writing S and the conv buffers in its static buffers;
    its logits match PyTorch's eager step token by token."""
    model = _model(["gla", "gated_deltanet", "mamba2", "deltanet"], short_conv=0, device="cuda")
    B = 2
    idx = torch.randint(61, (B, 37), device="cuda")
    with use_backend("triton"):
        dec = CUDAGraphDecoder(model, B)
        logits = dec.prefill(idx)
    with use_backend("torch"):
        ref_logits, state = model(idx, model.init_state(B))
    assert_close(ref_logits, logits, 1e-4, "prefill")
    tok = ref_logits[:, -1:].argmax(-1)
    for t in range(12):
        with use_backend("torch"):
            ref, state = model(tok, state)
        with use_backend("triton"):
            out = dec.step(tok)
        assert_close(ref[:, -1], out, 1e-4, f"step {t}")
        tok = ref[:, -1:].argmax(-1)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_graph_generate_and_streamer_match_eager() -> None:
    model = _model(["gated_deltanet", "mamba2"], short_conv=2, device="cuda")
    idx = torch.randint(61, (1, 20), device="cuda")
    assert torch.equal(graph_generate(model, idx, 16), model.generate(idx, 16))
    eager = LongCtxStreamer(model, None)
    graph, why = graph_streamer(LongCtxStreamer(model, None))
    assert why is None and isinstance(graph, GraphStreamer)
    prompt = idx[0].tolist()
    assert list(generate_tokens(graph, prompt, 16)) == list(generate_tokens(eager, prompt, 16))


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_decode_latency_gpu_smoke() -> None:
    """Every mode runs on a GPU (timings are not asserted; ``bench/decode.py`` reports them)."""
    model = decode_model("gated_deltanet", d_model=64, n_layers=2, n_heads=2)
    rows = decode_latency(model, [64, 512], steps=5, warmup=2)
    assert all(r["ms_per_token"] is not None and r["error"] is None for r in rows), rows


@pytest.mark.gpu
@pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")
def test_mixer_latency_gpu_smoke() -> None:
    """Every mode of one mixer layer's step runs on a GPU; softmax attention has no graph."""
    for mixer in ("gated_deltanet", "mamba2"):
        rows = mixer_latency(mixer, d_model=64, n_heads=2, context=300, steps=5, warmup=2)
        assert all(r["ms_per_step"] is not None and r["error"] is None for r in rows), rows
    rows = mixer_latency("softmax_attention", d_model=64, n_heads=2, context=300, steps=5, warmup=2)
    assert rows[0]["ms_per_step"] is not None and "capture-safe" in rows[2]["error"]


@pytest.mark.parametrize("mixer", sorted(GRAPH_MIXERS))
def test_decode_step_under_simulated_capture(monkeypatch, mixer: str) -> None:
    """A whole-model decode step with the capture-time code paths (checks on stand-ins, states
    written in place where the kernel runs) equals the ordinary step, on CPU."""
    import longctx.ops.common.backend as be
    import longctx.ops.deltanet.recurrent as dr

    model = _model(mixer, short_conv=2)
    idx = torch.randint(61, (2, 9))
    _, state = model(idx, model.init_state(2))
    ref, ref_state = model(idx[:, :1], state)
    monkeypatch.setattr(be, "stream_capturing", lambda: True)
    monkeypatch.setattr(dr, "stream_capturing", lambda: True)
    with be.inplace_decode():
        out, new = model(idx[:, :1], state)
    assert torch.equal(ref, out)
    for a, b in zip(ref_state.mixers, new.mixers, strict=True):
        for name, t in a.tensors().items():
            assert torch.equal(t, b.tensors()[name]), name
