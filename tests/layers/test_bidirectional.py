"""The bidirectional contract (``causal=False``), checked for every mixer that has that form.

A bidirectional mixer maps a whole sequence at once: every output may depend on every input,
there is no decode state (``init_state`` and ``forward(x, state)`` refuse with a clear message),
batch rows stay independent, and float32 agrees with float64.
"""

from __future__ import annotations

import pytest
import torch

from longctx.layers import build, config_class, names
from longctx.models.lm import LMConfig, LongCtxLM
from tests.helpers import assert_close

D_MODEL, N_HEADS, B, T = 32, 2, 3, 11

# small sizes so the short sequences cross block / window / segment boundaries
OPTIONS: dict[str, dict] = {
    "softmax_attention": {"chunk_size": 4},
    "sliding_window_attention": {"window": 3, "chunk_size": 4},
    "linear_attention": {"chunk_size": 4},
    "retention": {"chunk_size": 4},
    "multi_token_attention": {"chunk_size": 4, "query_kernel": 3, "key_kernel": 3, "head_kernel": 2},
    "linformer": {"max_len": 16, "k": 5, "chunk_size": 4},
    "nystromformer": {"num_landmarks": 4, "conv_kernel": 5, "chunk_size": 4},
    "dilated_attention": {"segment_lengths": (4, 16), "dilation_rates": (1, 2)},
    "longformer_attention": {"window": 3, "global_positions": (0, 5), "chunk_size": 4},
    "s4d": {"d_state": 4},
    "s5": {"d_state": 4, "chunk_size": 4},
    "mega": {"ema_dim": 3, "chunk_size": 4},
}
# mixers whose last query sees exactly the causal form's keys (and weights): last output equal
LAST_EQUALS_CAUSAL = {"softmax_attention", "sliding_window_attention", "linear_attention",
                      "retention"}
BIDIRECTIONAL = [n for n in names() if False in config_class(n).causal_modes]


def make(name: str, dtype: torch.dtype = torch.float64, causal: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, causal=causal, **OPTIONS.get(name, {}))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.to(dtype).eval()


def inputs(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


def test_every_bidirectional_mixer_is_covered() -> None:
    assert set(OPTIONS) == set(BIDIRECTIONAL)


def test_causal_only_mixers_refuse_bidirectional() -> None:
    for name in names():
        if False not in config_class(name).causal_modes:
            with pytest.raises(ValueError, match="causal=False is not supported"):
                build(name, d_model=D_MODEL, n_heads=N_HEADS, causal=False)


@pytest.fixture(params=BIDIRECTIONAL)
def mixer(request) -> torch.nn.Module:
    return make(request.param)


def test_forward_shape(mixer) -> None:
    x = inputs()
    y, state = mixer(x)
    assert y.shape == x.shape and state is None and torch.isfinite(y).all()


def test_outputs_see_the_future(mixer) -> None:
    """Perturbing the last input changes the first output (it would not in a causal mixer, and
    for a sliding window the perturbation reaches back ``window - 1`` positions)."""
    x = inputs()
    y, _ = mixer(x)
    x2 = x.clone()
    x2[:, -1] += 1.0
    y2, _ = mixer(x2)
    first_seen = 0 if mixer.name != "sliding_window_attention" else T - mixer.config.window
    assert (y[:, first_seen] - y2[:, first_seen]).abs().max() > 1e-6


def test_rows_are_independent(mixer) -> None:
    x = inputs()
    y, _ = mixer(x)
    y1, _ = mixer(x[1:2])
    assert_close(y[1:2], y1, 1e-12, "row 1 alone")


def test_no_decode_state(mixer) -> None:
    with pytest.raises(ValueError, match="bidirectional"):
        mixer.init_state(B)
    causal = make(mixer.name, causal=True) if True in mixer.config.causal_modes else None
    if causal is not None:  # a state made by the causal twin is refused as well
        with pytest.raises(ValueError, match="bidirectional"):
            mixer(inputs(t=1), causal.init_state(B))


def test_float32_agrees(mixer) -> None:
    x = inputs()
    ref, _ = mixer(x)
    m32 = make(mixer.name, torch.float32)
    out, _ = m32(x.float())
    assert_close(ref, out, 1e-4, "float32")


@pytest.mark.parametrize("name", sorted(LAST_EQUALS_CAUSAL))
def test_last_position_equals_causal(name: str) -> None:
    x = inputs()
    y_bi, _ = make(name)(x)
    y_ca, _ = make(name, causal=True)(x)
    assert_close(y_ca[:, -1], y_bi[:, -1], 1e-10, "last position")
    assert (y_ca[:, 0] - y_bi[:, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("name", BIDIRECTIONAL)
def test_causal_lm_refuses_bidirectional_mixers(name: str) -> None:
    opts = {name: {**OPTIONS.get(name, {}), "causal": False}}
    with pytest.raises(ValueError, match="causal language model"):
        LongCtxLM(LMConfig(d_model=D_MODEL, n_heads=N_HEADS, mixer=name, mixer_options=opts))
