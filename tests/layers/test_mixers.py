"""The layer contract, checked for every registered mixer (float64).

Small ``chunk_size`` and ``window`` make the short test sequences cross chunk and window
boundaries, so the chunked, carried-state and decode paths are all exercised.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io

import pytest
import torch

import longctx.layers.base
from longctx.layers import State, build, config_class, names
from longctx.ops.common import check_values
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, T = 32, 2, 3, 11
WINDOW, CHUNK = 4, 4
CONSTANT_SIZE = ("linear_attention", "retention", "gla", "sliding_window_attention",
                 "deltanet", "gated_deltanet", "mamba2", "mamba",
                 "aug_linear_attention", "grouped_linear_attention",
                 "dilated_attention", "longformer_attention", "s4d", "rwkv4", "s5", "h3", "rwkv6", "s4")
# decode state bounded but not constant (memory tokens + the open segment)
BOUNDED_SIZE = ("rmt", "block_recurrent")
RTOL = 1e-9
# FFT convolutions are causal in exact arithmetic, but the transform mixes every position at
# round-off level (1e-16 relative in float64): for these the earlier outputs must stay within it
FFT_MIXERS = {"s4d", "h3", "mega", "s4"}

OPTIONS = {
    "softmax_attention": {"chunk_size": CHUNK},
    "sliding_window_attention": {"window": WINDOW, "chunk_size": CHUNK},
    "linear_attention": {"chunk_size": CHUNK},
    "retention": {"chunk_size": CHUNK},
    "gla": {"chunk_size": CHUNK},
    "mamba": {"chunk_size": CHUNK, "d_state": 8},
    "mamba2": {"chunk_size": CHUNK, "d_state": 8, "n_groups": 2},
    "deltanet": {"chunk_size": CHUNK},
    "gated_deltanet": {"chunk_size": CHUNK},
    "aug_linear_attention": {"chunk_size": CHUNK, "conv_size": 3},
    "grouped_linear_attention": {"group_size": 4},
    "log_linear_attention": {"chunk_size": CHUNK},
    "log_linear_gla": {"chunk_size": CHUNK},
    "log_linear_mamba2": {"chunk_size": CHUNK, "d_state": 8, "n_groups": 2},
    "log_linear_gated_deltanet": {"chunk_size": CHUNK},
    "multi_token_attention": {"chunk_size": CHUNK, "query_kernel": 3, "key_kernel": 3,
                              "head_kernel": 2},
    "landmark_attention": {"block_size": 4, "chunk_size": CHUNK},
    "dilated_attention": {"segment_lengths": (4, 8), "dilation_rates": (1, 2)},
    "longformer_attention": {"window": WINDOW, "global_positions": (0, 5), "chunk_size": CHUNK},
    "s4d": {"d_state": 4},
    "rwkv4": {"chunk_size": CHUNK},
    "s5": {"d_state": 4, "chunk_size": CHUNK},
    "h3": {"d_state": 3, "shift_size": 3},
    "mega": {"ema_dim": 3},
    "rmt": {"segment_len": 4, "n_mem": 2},
    "block_recurrent": {"block_size": 4, "n_state": 3},
    "s4": {"d_state": 4},
    "rwkv6": {"chunk_size": CHUNK, "mix_rank": 4, "decay_rank": 4},
}
# the mixers with a decode form (causal by default); bidirectional ones: test_bidirectional.py
CAUSAL = [n for n in names() if config_class(n).causal]
# softmax attention twice: the fused-sdpa and the chunked backends take different code paths
VARIANTS = [(n, {}) for n in CAUSAL] + [("softmax_attention", {"backend": "chunk"})]
IDS = [n + ("-" + "-".join(f"{k}={v}" for k, v in o.items()) if o else "") for n, o in VARIANTS]


def make(name: str, dtype: torch.dtype = torch.float64, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, **{**OPTIONS.get(name, {}), **extra})
    # randomise every parameter (biases, gates) so no path is trivially zero
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.to(dtype).eval()


def inputs(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


@pytest.fixture(params=VARIANTS, ids=IDS)
def mixer(request) -> torch.nn.Module:
    name, extra = request.param
    return make(name, **extra)


def test_every_registered_mixer_is_covered() -> None:
    assert set(OPTIONS) == set(CAUSAL)  # bidirectional-only mixers: test_bidirectional.py


def test_forward_shape_and_no_state(mixer) -> None:
    x = inputs()
    y, state = mixer(x)
    assert y.shape == x.shape and y.dtype == torch.float64
    assert state is None
    assert torch.isfinite(y).all()
    assert y.abs().max() > 0


def test_mixer_call_skips_the_ops_value_checks(mixer) -> None:
    seen = []
    mixer.register_forward_pre_hook(lambda *_: seen.append(check_values()))
    mixer(inputs())
    assert seen == [False]  # inside the call: no read-back per op (a GPU synchronisation each)
    assert check_values()  # restored after it


def test_mixer_inputs_pass_the_ops_value_checks(mixer, monkeypatch) -> None:
    # what the trust above rests on: with the checks on, every mixer's gates, betas, keys and
    # steps pass them, in the chunked forward and in the decode steps
    monkeypatch.setattr(longctx.layers.base, "trusted_values", contextlib.nullcontext)
    seen = []
    mixer.register_forward_pre_hook(lambda *_: seen.append(check_values()))
    x = inputs()
    _, state = mixer(x[:, :5], mixer.init_state(B, dtype=torch.float64))
    for t in range(5, 7):
        _, state = mixer(x[:, t : t + 1], state)
    assert seen == [True] * 3


@pytest.mark.parametrize("with_state", [False, True])
def test_forward_is_causal(mixer, with_state: bool) -> None:
    """No leakage of future tokens: perturbing any position p (each in turn, the last included)
    leaves every earlier output bit-for-bit unchanged, and changes the output at p."""
    x = inputs()

    def run(x_: torch.Tensor) -> torch.Tensor:
        return mixer(x_, mixer.init_state(B) if with_state else None)[0]

    y = run(x)
    for p in range(1, T):
        x2 = x.clone()
        x2[:, p] += 1.0
        y2 = run(x2)
        if mixer.name in FFT_MIXERS:
            leak = (y[:, :p] - y2[:, :p]).abs().max() / y.abs().max()
            assert leak < 1e-13, f"perturbing position {p} changed earlier outputs by {leak:.1e}"
        else:
            assert torch.equal(y[:, :p], y2[:, :p]), f"perturbing position {p} changed earlier outputs"
        assert (y[:, p] - y2[:, p]).abs().max() > 1e-6, f"output {p} ignores its own input"


def test_state_from_init_matches_stateless(mixer) -> None:
    x = inputs()
    ref, _ = mixer(x)
    out, state = mixer(x, mixer.init_state(B))
    assert isinstance(state, State) and state.mixer == mixer.name
    assert_close(ref, out, RTOL, "prefill with empty state")


@pytest.mark.parametrize("split", [1, 3, 5, 8])
def test_prefill_in_two_pieces_equals_whole(mixer, split: int) -> None:
    x = inputs()
    whole, s_whole = mixer(x, mixer.init_state(B))
    y1, s = mixer(x[:, :split], mixer.init_state(B))
    y2, s = mixer(x[:, split:], s)
    assert_close(whole, torch.cat([y1, y2], dim=1), RTOL, f"prefill split at {split}")
    for key, t in s_whole.tensors().items():
        other = s.tensors()[key]
        if t.is_floating_point():
            assert_close(t, other, RTOL, f"state.{key}")
        else:
            assert torch.equal(t, other), f"state.{key}: {other} != {t}"


@pytest.mark.parametrize("prefill", [0, 1, 5])
def test_cached_decode_equals_full_forward(mixer, prefill: int) -> None:
    x = inputs()
    ref, _ = mixer(x)
    state = mixer.init_state(B)
    outs = []
    if prefill:
        y, state = mixer(x[:, :prefill], state)
        outs.append(y)
    for t in range(prefill, T):
        y, state = mixer(x[:, t : t + 1], state)
        assert y.shape == (B, 1, D_MODEL)
        outs.append(y)
    assert_close(ref, torch.cat(outs, dim=1), RTOL, f"decode after prefill {prefill}")


def test_state_from_another_mixer_is_refused(mixer) -> None:
    other_name = next(n for n in names() if n != mixer.name)
    other = make(other_name)
    with pytest.raises(ValueError) as info:
        mixer(inputs(t=1), other.init_state(B))
    msg = str(info.value)
    assert mixer.name in msg and other_name in msg


def test_state_with_another_batch_size_is_refused(mixer) -> None:
    with pytest.raises(ValueError, match="batch size"):
        mixer(inputs(t=1), mixer.init_state(B + 1))
    with pytest.raises(ValueError, match="batch size"):
        mixer(inputs(t=4), mixer.init_state(B - 1))


def test_state_select_equals_running_row_alone(mixer) -> None:
    x = inputs()
    _, state = mixer(x[:, :6], mixer.init_state(B))
    y_all, _ = mixer(x[:, 6:], state)
    # slice the batch state, continue row 1 alone
    y_sel, _ = mixer(x[1:2, 6:], state.select([1]))
    assert_close(y_all[1:2], y_sel, RTOL, "state.select([1])")
    # ... and row 0 run from scratch alone gives the same as row 0 of the batch
    _, s0 = mixer(x[:1, :6], mixer.init_state(1))
    y0, _ = mixer(x[:1, 6:], s0)
    y0_sel, _ = mixer(x[:1, 6:], state.select([0]))
    assert_close(y_all[:1], y0, RTOL, "row 0 alone")
    assert_close(y0, y0_sel, RTOL, "state.select([0])")
    assert state.select([0]).batch_size == 1
    assert state.select(slice(0, 2)).batch_size == 2


def test_state_to_dtype_keyword(mixer) -> None:
    x = inputs()
    _, state = mixer(x[:, :6], mixer.init_state(B))
    s32 = state.to(dtype=torch.float32)
    for key, t in s32.tensors().items():
        orig = state.tensors()[key]
        if orig.is_floating_point():
            assert t.dtype == torch.float32, key
        else:
            assert t.dtype == orig.dtype, f"{key}: non-float tensor must keep its dtype"
    # a float32 copy of the mixer continues the float32 state like the float64 original
    m32 = copy.deepcopy(mixer).float()
    ref, _ = mixer(x[:, 6:], state)
    out, _ = m32(x[:, 6:].float(), s32)
    assert out.dtype == torch.float32
    assert_close(ref, out, 1e-4, "float32 continuation")


def test_state_to_dtype_positional() -> None:
    """``state.to(torch.float32)`` — the torch.Tensor.to habit — casts the state."""
    for name in CAUSAL:
        m = make(name)
        _, state = m(inputs()[:, :6], m.init_state(B))
        s32 = state.to(torch.float32)
        for key, t in s32.tensors().items():
            want = torch.float32 if state.tensors()[key].is_floating_point() else torch.int64
            assert t.dtype == want, f"{name}: state.{key} is {t.dtype}"


def test_state_detach_and_device_move(mixer) -> None:
    x = inputs().requires_grad_(True)
    _, state = mixer(x, mixer.init_state(B))
    assert any(t.requires_grad for t in state.tensors().values())
    assert not any(t.requires_grad for t in state.detach().tensors().values())
    moved = state.to("cpu")
    for key, t in state.tensors().items():
        assert moved.tensors()[key].dtype == t.dtype


@pytest.mark.parametrize("seqlen", [1, WINDOW, 2 * WINDOW + 3, 100])
def test_state_size(mixer, seqlen: int) -> None:
    size = mixer.state_size(B, seqlen)
    assert isinstance(size, int) and size > 0
    assert mixer.state_size(B, seqlen, dtype=torch.float64) == 2 * size
    assert mixer.state_size(2 * B, seqlen) == 2 * size
    state = mixer.init_state(B, dtype=torch.float32)
    float_bytes = sum(t.numel() * t.element_size() for t in state.tensors().values()
                      if t.is_floating_point())
    if mixer.name == "softmax_attention":
        assert mixer.state_size(B, 2 * seqlen) == 2 * size  # linear in T
        assert mixer.state_size(B, seqlen + 1) - size == mixer.state_size(B, 1)
        # matches the KV cache actually held after seqlen tokens
        x = inputs(t=seqlen).float()
        _, st = copy.deepcopy(mixer).float()(x, mixer.init_state(B, dtype=torch.float32))
        assert st.nbytes() == size
    elif mixer.name == "sliding_window_attention":
        if seqlen >= WINDOW:  # the ring buffer is full
            assert size == float_bytes  # its k/v buffers
            assert mixer.state_size(B, seqlen + 50) == size  # constant in T
    elif mixer.name.startswith("log_linear_"):  # O(log T): bit_length(T) Fenwick level states
        x = inputs(t=seqlen).float()
        _, st = copy.deepcopy(mixer).float()(x, mixer.init_state(B, dtype=torch.float32))
        assert size == sum(t.numel() * t.element_size() for t in st.tensors().values()
                           if t.is_floating_point())
        one_level = mixer.state_size(B, 2 * seqlen) - size  # bit_length(2T) = bit_length(T) + 1
        assert one_level > 0 and mixer.state_size(B, 4 * seqlen) - size == 2 * one_level
        assert mixer.state_size(B, 2 ** seqlen.bit_length() - 1) == size
    elif mixer.name in BOUNDED_SIZE:  # memory + the open segment: what it holds, never growing
        x = inputs(t=seqlen).float()
        _, st = copy.deepcopy(mixer).float()(x, mixer.init_state(B, dtype=torch.float32))
        assert size == sum(t.numel() * t.element_size() for t in st.tensors().values()
                           if t.is_floating_point())
        early = max(mixer.state_size(B, n) for n in range(200))  # a full segment cycle
        assert max(mixer.state_size(B, n) for n in range(10**5, 10**5 + 200)) == early
    elif mixer.name in CONSTANT_SIZE:
        assert size == float_bytes
        assert mixer.state_size(B, seqlen + 50) == size  # constant in T
    else:  # a state that grows (KV caches plus method extras): state_size == what it holds
        x = inputs(t=seqlen).float()
        _, st = copy.deepcopy(mixer).float()(x, mixer.init_state(B, dtype=torch.float32))
        assert size == sum(t.numel() * t.element_size() for t in st.tensors().values()
                           if t.is_floating_point())
        assert mixer.state_size(B, 4 * seqlen) > size


@pytest.mark.parametrize("name", CONSTANT_SIZE)
def test_constant_size_state_does_not_grow(name: str) -> None:
    mixer = make(name)
    state = mixer.init_state(B)
    n0 = state.nbytes()
    _, state = mixer(inputs(), state)
    for t in range(3):
        _, state = mixer(inputs(t=1, seed=t + 5), state)
    assert state.nbytes() == n0


def test_state_dict_round_trip(mixer) -> None:
    x = inputs()
    _, state = mixer(x[:, :7], mixer.init_state(B))
    d = state.state_dict()
    assert d["class"] == type(state).__name__
    buf = io.BytesIO()
    torch.save(d, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    back = type(state).from_state_dict(loaded)
    assert type(back) is type(state) and back.mixer == state.mixer
    for key, t in state.tensors().items():
        assert torch.equal(back.tensors()[key], t), key
    y_ref, _ = mixer(x[:, 7:], state)
    y_back, _ = mixer(x[:, 7:], back)
    assert torch.equal(y_ref, y_back)


def test_from_state_dict_of_other_class_is_refused(mixer) -> None:
    other = make(next(n for n in names() if n != mixer.name))
    d = other.init_state(1).state_dict()
    with pytest.raises(ValueError, match=type(mixer.init_state(1)).__name__):
        type(mixer.init_state(1)).from_state_dict(d)


@pytest.mark.parametrize("shape", [(B, T), (B, T, D_MODEL + 1), (B, 1, T, D_MODEL), (D_MODEL,)])
def test_wrong_input_shape_is_refused(mixer, shape) -> None:
    x = torch.randn(*shape, dtype=torch.float64)
    with pytest.raises(ValueError, match="d_model"):
        mixer(x)
    with pytest.raises(ValueError, match="d_model"):
        mixer(x, mixer.init_state(B))


def test_state_is_a_dataclass_of_tensors(mixer) -> None:
    state = mixer.init_state(2)
    assert dataclasses.is_dataclass(state)
    assert state.batch_size == 2
    assert state.tensors(), "a state holds at least one tensor"
    assert all(t.dtype in (torch.float64, torch.int64) for t in state.tensors().values())
