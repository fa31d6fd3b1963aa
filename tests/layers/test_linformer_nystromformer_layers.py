"""The bidirectional-only mixers ``linformer`` and ``nystromformer`` (float64): shape, the layer
against its op-level definition (output and every parameter gradient), the depthwise conv skip,
sharing modes, that every output depends on future inputs, and the errors: causal=True, decode
attempts, T > max_len, bad shapes and options."""

from __future__ import annotations

import pytest
import torch

from longctx.layers import State, build
from longctx.layers.common import merge_heads
from longctx.ops.linformer_attention import naive_linformer_attention
from longctx.ops.nystromformer import naive_nystrom_attention
from tests.helpers import assert_close, grads_of, random_like_outputs

D_MODEL, N_HEADS, B, T = 32, 4, 2, 11
RTOL = 1e-9
OPTIONS = {
    "linformer": {"max_len": 16, "k": 5, "chunk_size": 4},
    "nystromformer": {"num_landmarks": 4, "conv_kernel": 5, "chunk_size": 4},
}
NAMES = list(OPTIONS)


def make(name: str, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, **{**OPTIONS[name], **extra})
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.double().eval()


def inputs(b: int = B, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, D_MODEL, generator=g, dtype=torch.float64)


def conv_skip_loop(m, v: torch.Tensor) -> torch.Tensor:
    """o[t, h] = sum_i w[h, i] v[t + i - K // 2, h // G], zero outside [0, T)."""
    Bv, Tv, Hk, D = v.shape
    H, K = m.conv_weight.shape
    out = v.new_zeros(Bv, Tv, H, D)
    for t in range(Tv):
        for i in range(K):
            s = t + i - K // 2
            if 0 <= s < Tv:
                out[:, t] += m.conv_weight[:, i, None] * v[:, s].repeat_interleave(H // Hk, dim=1)
    return out


def reference(m, x: torch.Tensor) -> torch.Tensor:
    """The layer written from the naive ops: project -> op -> (+ conv skip) -> wo."""
    c = m.config
    q, k, v = m.project(x, 0)
    if m.name == "linformer":
        F = m.E if m.F is None else m.F
        o, _ = naive_linformer_attention(q, k, v, m.E, F)
    else:
        o, _ = naive_nystrom_attention(q, k, v, c.num_landmarks, pinv_iterations=c.pinv_iterations)
        if m.conv_weight is not None:
            o = o + conv_skip_loop(m, v)
    return m.wo(merge_heads(o))


VARIANTS = [
    ("linformer", {}), ("linformer", {"sharing": "none", "n_kv_heads": 2}),
    ("linformer", {"sharing": "kv", "position": "none"}),
    ("nystromformer", {}), ("nystromformer", {"pinv_iterations": None, "n_kv_heads": 1}),
    ("nystromformer", {"conv_kernel": 0, "position": "none", "num_landmarks": 3}),
]
IDS = [n + "".join(f"-{k}={v}" for k, v in o.items()) for n, o in VARIANTS]


@pytest.mark.parametrize("name,extra", VARIANTS, ids=IDS)
def test_forward_matches_op_definition(name, extra):
    m = make(name, **extra)
    x = inputs().requires_grad_()
    y, state = m(x)
    assert y.shape == x.shape and y.dtype == torch.float64 and state is None
    y_ref = reference(m, x)
    assert_close(y_ref, y, RTOL)
    params = [x, *m.parameters()]
    cot = random_like_outputs([y])[0]
    g_ref = grads_of((y_ref * cot).sum(), params)
    g = grads_of((y * cot).sum(), params)
    names = ["x", *(n for n, _ in m.named_parameters())]
    tol = RTOL if extra.get("pinv_iterations", 6) is not None else 1e-8  # exact pinv: README
    for n, r, o in zip(names, g_ref, g):
        assert_close(r, o, tol, f"d{n}")


@pytest.mark.parametrize("name", NAMES)
def test_every_output_depends_on_future_inputs(name):
    """Bidirectional: y[:, t] depends on x[:, s] for every s, the last token included."""
    m = make(name)
    x = inputs(1, 9).requires_grad_()
    y, _ = m(x)
    c = random_like_outputs([y])[0]
    for t in range(9):
        (dx,) = torch.autograd.grad((y[:, t] * c[:, t]).sum(), [x], retain_graph=True)
        assert (dx[0].abs().sum(dim=-1) > 0).all(), t  # [T]: every input position, t' > t too


@pytest.mark.parametrize("name", NAMES)
def test_short_and_single_token_sequences(name):
    m = make(name)
    for t in (1, 2, 16):
        y, _ = m(inputs(2, t))
        assert y.shape == (2, t, D_MODEL) and torch.isfinite(y).all()


def test_linformer_sharing_parameters():
    for sharing, shape, has_F in (("headwise", (5, 16), True), ("kv", (5, 16), False),
                                  ("none", (2, 5, 16), True)):
        m = make("linformer", sharing=sharing, n_kv_heads=2)
        assert tuple(m.E.shape) == shape and (m.F is not None) == has_F
        if has_F:
            assert m.F.shape == m.E.shape


def test_linformer_prefix_equals_padding_at_layer_level():
    """A sequence of T < max_len gives the same outputs as its prefix positions when the keys and
    values beyond T are zero: checked through the op with position='none'."""
    m = make("linformer", position="none")
    x = inputs(1, 7)
    y, _ = m(x)
    q, k, v = m.project(x, 0)
    pad = lambda t: torch.cat([t, t.new_zeros(1, 9, *t.shape[2:])], dim=1)
    o, _ = naive_linformer_attention(pad(q), pad(k), pad(v), m.E, m.F)
    assert_close(m.wo(merge_heads(o[:, :7])), y, RTOL)


def test_nystromformer_conv_skip_is_centred_depthwise():
    m = make("nystromformer", conv_kernel=7, n_kv_heads=2)
    v = torch.randn(2, 10, 2, 8, dtype=torch.float64)
    assert_close(conv_skip_loop(m, v), m.conv_skip(v), RTOL)
    assert tuple(m.conv_weight.shape) == (N_HEADS, 7)
    assert make("nystromformer", conv_kernel=0).conv_weight is None


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name,why", [("linformer", "E K sums over every position"),
                                      ("nystromformer", "segment means over the whole sequence")])
def test_causal_true_is_refused(name, why):
    with pytest.raises(ValueError, match=rf"causal=True is not supported: .*{why}.*causal=False"):
        build(name, d_model=D_MODEL, n_heads=N_HEADS, causal=True)
    with pytest.raises(ValueError, match="causal must be true or false"):
        build(name, d_model=D_MODEL, n_heads=N_HEADS, causal="yes")
    assert build(name, d_model=D_MODEL, n_heads=N_HEADS).config.causal is False


@pytest.mark.parametrize("name", NAMES)
def test_decode_attempts_are_refused(name):
    m = make(name)
    msg = "bidirectional only .* has no decode state"
    with pytest.raises(ValueError, match=msg):
        m.init_state(B)
    with pytest.raises(ValueError, match=msg):
        m.state_size(B, 100)
    with pytest.raises(ValueError, match=msg):
        m(inputs(B, 1), State(name))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_shapes(name):
    m = make(name)
    for bad in (torch.zeros(B, T, D_MODEL + 1, dtype=torch.float64),
                torch.zeros(T, D_MODEL, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"x must be \[B, T, d_model=32\]"):
            m(bad)


def test_linformer_errors():
    m = make("linformer")
    with pytest.raises(ValueError, match=r"T=17 exceeds max_len=16"):
        m(inputs(1, 17))
    for field, bad in (("max_len", 0), ("k", 0), ("k", -2)):
        with pytest.raises(ValueError, match=rf"LinformerConfig.{field} must be a positive"):
            build("linformer", d_model=D_MODEL, n_heads=N_HEADS, **{field: bad})
    with pytest.raises(ValueError, match=r"LinformerConfig.sharing must be one of"):
        build("linformer", d_model=D_MODEL, n_heads=N_HEADS, sharing="layerwise")
    with pytest.raises(ValueError, match=r"position must be one of"):
        build("linformer", d_model=D_MODEL, n_heads=N_HEADS, position="alibi")


def test_nystromformer_errors():
    kw = {"d_model": D_MODEL, "n_heads": N_HEADS}
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"num_landmarks must be a positive integer"):
            build("nystromformer", **kw, num_landmarks=bad)
    for bad in (0, 2.0):
        with pytest.raises(ValueError, match=r"NystromformerConfig.pinv_iterations must be a "
                                             r"positive integer"):
            build("nystromformer", **kw, pinv_iterations=bad)
    for bad in (-1, 4, True):
        with pytest.raises(ValueError, match=r"conv_kernel must be 0 \(off\) or an odd positive"):
            build("nystromformer", **kw, conv_kernel=bad)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16(name):
    """Under autocast q, k, v come out of the projections in bfloat16 while E, F and the conv
    filters stay float32: the layer casts them. Default initialisation (measured error ~1e-2;
    with large random weights Nystromformer's landmark kernel is ill-conditioned and bf16 inputs
    move its output by ~1e-1)."""
    torch.manual_seed(0)
    m = build(name, d_model=D_MODEL, n_heads=N_HEADS, **OPTIONS[name])
    x = inputs().float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = m(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    assert_close(m(x)[0], y, 3e-2)
