"""RoPE and its scalings (``longctx.position.rope``).

Against transformers' ``ROPE_INIT_FUNCTIONS`` / ``LlamaRotaryEmbedding`` where it is installed;
independently, the properties the papers state (PI, NTK base, dynamic, YaRN ramp and temperature,
llama3 bands), norms, offsets, bad input; and the scalings wired into softmax attention.
"""

from __future__ import annotations

import math

import pytest
import torch

from longctx.layers import build
from longctx.layers.common import merge_heads, split_heads
from longctx.position import (
    ROPE_TYPES,
    RotaryEmbedding,
    apply_rotary,
    check_rope_scaling,
    rope_frequencies,
    rope_inv_freq,
)
from tests.helpers import assert_close

F64 = torch.float64

# (head_dim, base, scaling) compared with transformers; together they cover every HF rope_type,
# head dims 64/128, several bases, factors and original lengths, every yarn option, partial rotary
HF_CASES = [
    (64, 10000.0, {"rope_type": "default"}),
    (128, 500000.0, {"rope_type": "default"}),
    (64, 10000.0, {"rope_type": "linear", "factor": 2.0}),
    (128, 1e6, {"rope_type": "linear", "factor": 4.5}),
    (64, 10000.0, {"rope_type": "linear", "factor": 8, "partial_rotary_factor": 0.5}),
    (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}),
    (128, 500000.0, {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}),
    (128, 10000.0, {"rope_type": "yarn", "factor": 2.5, "original_max_position_embeddings": 2048,
                    "beta_fast": 16, "beta_slow": 2, "truncate": False}),
    (64, 10000.0, {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                   "mscale": 0.707, "mscale_all_dim": 1.0}),  # DeepSeek-style temperature ratio
    (64, 10000.0, {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024,
                   "mscale": 0.707}),  # mscale alone is ignored, as in transformers
    (64, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512,
                   "attention_factor": 1.5}),
    (128, 10000.0, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
                    "partial_rotary_factor": 0.5}),
    (128, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    (64, 500000.0, {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    (64, 10000.0, {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0,
                   "high_freq_factor": 8.0, "original_max_position_embeddings": 64}),
]
# (head_dim, base, factor, original length L0) for dynamic; seq_lens below, at and above L0
DYNAMIC_CASES = [(64, 10000.0, 2.0, 64), (128, 500000.0, 4.0, 512), (64, 1e6, 3.0, 200)]
DYNAMIC_LENS = [None, 1, 0.5, 1.0, "+1", 3.0, 10.0]  # fractions/multiples of L0
IDS = [f"{s['rope_type']}-{i}" for i, (_, _, s) in enumerate(HF_CASES)]


def _lens(L0: int) -> list[int | None]:
    return [None if f is None else L0 + 1 if f == "+1" else max(1, int(f * L0)) if isinstance(f, float)
            else f for f in DYNAMIC_LENS]


def hf_config(head_dim: int, base: float, scaling: dict):
    """A small LlamaConfig with these rope parameters (our dict -> HF's model config + dict)."""
    transformers = pytest.importorskip("transformers")
    params = {**scaling, "rope_theta": base}
    L0 = params.get("original_max_position_embeddings")
    if params["rope_type"] == "dynamic":  # HF reads the trained length from the model config
        max_pos = params.pop("original_max_position_embeddings")
    else:  # yarn/llama3: the extended length, so HF's consistency check does not warn
        max_pos = int(L0 * params["factor"]) if L0 else 4096
    return transformers.LlamaConfig(hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
                                    max_position_embeddings=max_pos, rope_parameters=params)


def hf_frequencies(head_dim: int, base: float, scaling: dict, seq_len: int | None = None):
    pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = hf_config(head_dim, base, scaling)
    if scaling["rope_type"] == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[scaling["rope_type"]](config, None, seq_len=seq_len)


def hf_cos_sin(head_dim: int, base: float, scaling: dict, positions: torch.Tensor):
    """transformers' LlamaRotaryEmbedding (a fresh one: HF's dynamic caches the longest length)."""
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(hf_config(head_dim, base, scaling))
    cos, sin = rope(torch.zeros(1), positions[None])
    return cos[0], sin[0]


# -- against transformers ---------------------------------------------------------------------


@pytest.mark.parametrize(("head_dim", "base", "scaling"), HF_CASES, ids=IDS)
def test_frequencies_match_transformers(head_dim: int, base: float, scaling: dict) -> None:
    if scaling["rope_type"] == "default" and "partial_rotary_factor" in scaling:
        pytest.skip("transformers' default init ignores partial_rotary_factor")
    inv_freq, attention = rope_frequencies(head_dim, base, scaling)
    ref, ref_attention = hf_frequencies(head_dim, base, scaling)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == ref.shape
    torch.testing.assert_close(inv_freq, ref, rtol=1e-6, atol=0)
    assert attention == pytest.approx(ref_attention, rel=1e-12)


@pytest.mark.parametrize(("head_dim", "base", "factor", "L0"), DYNAMIC_CASES)
def test_dynamic_frequencies_match_transformers(head_dim: int, base: float, factor: float, L0: int) -> None:
    scaling = {"rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": L0}
    for seq_len in _lens(L0):
        inv_freq, attention = rope_frequencies(head_dim, base, scaling, seq_len)
        ref, ref_attention = hf_frequencies(head_dim, base, scaling, seq_len)
        torch.testing.assert_close(inv_freq, ref, rtol=1e-6, atol=0, msg=f"seq_len={seq_len}")
        assert attention == ref_attention == 1.0


@pytest.mark.parametrize("factor", [1.5, 4.0, 10.0])
def test_ntk_equals_transformers_dynamic_at_factor_times_length(factor: float) -> None:
    """Static NTK with factor s is HF's dynamic NTK with factor 1 at seq_len = s * L0."""
    L0 = 128
    inv_freq, _ = rope_frequencies(64, 10000.0, {"rope_type": "ntk", "factor": factor})
    ref, _ = hf_frequencies(64, 10000.0, {"rope_type": "dynamic", "factor": 1.0,
                                          "original_max_position_embeddings": L0}, int(factor * L0))
    torch.testing.assert_close(inv_freq, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("head_dim", "base", "scaling"), HF_CASES, ids=IDS)
def test_cos_sin_match_transformers_rotary_embedding(head_dim: int, base: float, scaling: dict) -> None:
    rope = RotaryEmbedding(head_dim, base, scaling)
    for T, offset in ((7, 0), (5, 300)):
        cos, sin = rope.cos_sin(T, offset)
        ref_cos, ref_sin = hf_cos_sin(head_dim, base, scaling, torch.arange(offset, offset + T))
        torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-4)  # float32 angles near 300: ulp 3e-5
        torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-4)  # float32 angles near 300: ulp 3e-5


@pytest.mark.parametrize(("head_dim", "base", "factor", "L0"), DYNAMIC_CASES)
def test_dynamic_cos_sin_match_transformers(head_dim: int, base: float, factor: float, L0: int) -> None:
    scaling = {"rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": L0}
    rope = RotaryEmbedding(head_dim, base, scaling)
    for T, offset in ((L0 // 2, 0), (3, L0 - 3), (4, L0 - 2), (5, 2 * L0)):  # below, at, across, past L0
        cos, sin = rope.cos_sin(T, offset)
        ref_cos, ref_sin = hf_cos_sin(head_dim, base, scaling, torch.arange(offset, offset + T))
        torch.testing.assert_close(cos, ref_cos, rtol=0, atol=1e-4, msg=f"T={T}, offset={offset}")
        torch.testing.assert_close(sin, ref_sin, rtol=0, atol=1e-4, msg=f"T={T}, offset={offset}")


# -- the formulas, without transformers ---------------------------------------------------------


def test_default_is_roformer() -> None:
    """theta_i = base^(-2i/D) (RoFormer eq. 15); scaling None and {} are the default."""
    for D, base in ((64, 10000.0), (16, 500.0)):
        ref = torch.tensor([base ** (-2 * i / D) for i in range(D // 2)], dtype=F64)
        torch.testing.assert_close(rope_inv_freq(D, base).double(), ref, rtol=1e-7, atol=0)
        for scaling in (None, {}, {"rope_type": "default"}):
            inv_freq, attention = rope_frequencies(D, base, scaling)
            assert torch.equal(inv_freq, rope_inv_freq(D, base)) and attention == 1.0


def test_linear_rotates_p_as_default_rotates_p_over_factor() -> None:
    """Position interpolation (Chen et al. 2023): position m becomes m / factor."""
    default = RotaryEmbedding(32, 10000.0)
    pi = RotaryEmbedding(32, 10000.0, {"rope_type": "linear", "factor": 4})
    # positions 40, 44, 48 under PI are positions 10, 11, 12 under plain RoPE, bit for bit
    c, s = pi.cos_sin(9, 40)
    c_ref, s_ref = default.cos_sin(3, 10)
    assert torch.equal(c[::4], c_ref) and torch.equal(s[::4], s_ref)
    inv_pi, _ = rope_frequencies(32, 10000.0, {"rope_type": "linear", "factor": 2.5})
    p = torch.arange(0, 1000, 7, dtype=F64)
    angles = torch.outer(p, inv_pi.double())
    angles_ref = torch.outer(p / 2.5, rope_inv_freq(32, 10000.0).double())
    torch.testing.assert_close(angles, angles_ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("factor", [1.0, 2.0, 8.0])
def test_ntk_base_formula(factor: float) -> None:
    """NTK-aware: base * s^(D/(D-2)); the highest frequency is kept, the lowest divided by s."""
    D, base = 64, 10000.0
    inv_freq, attention = rope_frequencies(D, base, {"rope_type": "ntk", "factor": factor})
    torch.testing.assert_close(inv_freq, rope_inv_freq(D, base * factor ** (D / (D - 2))), rtol=1e-6, atol=0)
    default = rope_inv_freq(D, base)
    assert inv_freq[0] == default[0] == 1.0 and attention == 1.0
    assert inv_freq[-1].item() == pytest.approx(default[-1].item() / factor, rel=1e-6)


def test_dynamic_is_default_up_to_the_trained_length_then_ntk() -> None:
    D, base, factor, L0 = 32, 10000.0, 4.0, 16
    scaling = {"rope_type": "dynamic", "factor": factor, "original_max_position_embeddings": L0}
    default = rope_inv_freq(D, base)
    for L in (None, 1, L0 // 2, L0):
        inv_freq, _ = rope_frequencies(D, base, scaling, L)
        assert torch.equal(inv_freq, default), L
    for L in (L0 + 1, 3 * L0):
        s = factor * L / L0 - (factor - 1)
        inv_freq, _ = rope_frequencies(D, base, scaling, L)
        ntk, _ = rope_frequencies(D, base, {"rope_type": "ntk", "factor": s})
        assert torch.equal(inv_freq, ntk) and inv_freq[-1] < default[-1]
    # the module: same cos/sin as plain RoPE while offset + T <= L0, those of length offset + T after
    rope, plain = RotaryEmbedding(D, base, scaling), RotaryEmbedding(D, base)
    for T, offset in ((L0, 0), (3, L0 - 3), (1, L0 - 1)):
        assert all(torch.equal(a, b) for a, b in zip(rope.cos_sin(T, offset), plain.cos_sin(T, offset)))
    for T, offset in ((L0 + 1, 0), (5, 2 * L0)):
        s = factor * (offset + T) / L0 - (factor - 1)
        ntk = RotaryEmbedding(D, base, {"rope_type": "ntk", "factor": s})
        assert all(torch.equal(a, b) for a, b in zip(rope.cos_sin(T, offset), ntk.cos_sin(T, offset)))


@pytest.mark.parametrize("factor", [1.0, 1.5, 4.0, 16.0, 64.0])
def test_yarn_attention_factor(factor: float) -> None:
    """sqrt(1/t) = 0.1 ln(s) + 1 (YaRN); cos and sin carry it, so cos^2 + sin^2 = its square."""
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": 64}
    _, attention = rope_frequencies(32, 10000.0, scaling)
    assert attention == pytest.approx(0.1 * math.log(factor) + 1, rel=1e-15)
    cos, sin = RotaryEmbedding(32, 10000.0, scaling).cos_sin(9, 3)
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, attention**2))
    # an explicit attention_factor wins; mscale with mscale_all_dim gives a ratio of temperatures
    assert rope_frequencies(32, 10000.0, {**scaling, "attention_factor": 0.5})[1] == 0.5
    ratio = rope_frequencies(32, 10000.0, {**scaling, "mscale": 2.0, "mscale_all_dim": 0.5})[1]
    assert ratio == pytest.approx((0.2 * math.log(factor) + 1) / (0.05 * math.log(factor) + 1), rel=1e-15)


@pytest.mark.parametrize("truncate", [True, False])
def test_yarn_ramp_keeps_fast_pairs_and_interpolates_slow_ones(truncate: bool) -> None:
    """Pairs making more than beta_fast rotations over L0 keep theta_i, fewer than beta_slow get
    theta_i / factor, and the pairs between lie between (NTK-by-parts)."""
    D, base, factor, L0 = 128, 10000.0, 8.0, 4096
    scaling = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L0,
               "truncate": truncate}
    inv_freq, _ = rope_frequencies(D, base, scaling)
    theta = rope_inv_freq(D, base)
    rotations = L0 * theta.double() / (2 * math.pi)
    fast, slow = rotations > 32, rotations < 1
    assert fast.any() and slow.any() and (~fast & ~slow).any()
    torch.testing.assert_close(inv_freq[fast], theta[fast], rtol=1e-6, atol=0)
    torch.testing.assert_close(inv_freq[slow], theta[slow] / factor, rtol=1e-6, atol=0)
    ratio = (inv_freq / theta)[~fast & ~slow]
    assert ((ratio <= 1 + 1e-6) & (ratio >= 1 / factor - 1e-6)).all()
    assert (ratio[1:] <= ratio[:-1] + 1e-6).all()  # monotone along the ramp


def test_llama3_keeps_high_frequencies_and_divides_low_ones() -> None:
    D, base, factor, L0, low_ff, high_ff = 64, 10000.0, 4.0, 64, 2.0, 8.0
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low_ff,
               "high_freq_factor": high_ff, "original_max_position_embeddings": L0}
    inv_freq, attention = rope_frequencies(D, base, scaling)
    theta = rope_inv_freq(D, base)
    wavelen = 2 * math.pi / theta.double()
    high, low = wavelen < L0 / high_ff, wavelen > L0 / low_ff
    mid = ~high & ~low
    assert high.any() and low.any() and mid.any() and attention == 1.0
    torch.testing.assert_close(inv_freq[high], theta[high], rtol=1e-6, atol=0)
    torch.testing.assert_close(inv_freq[low], theta[low] / factor, rtol=1e-6, atol=0)
    a = (L0 / wavelen[mid] - low_ff) / (high_ff - low_ff)
    ref = ((1 - a) / factor + a) * theta[mid].double()
    torch.testing.assert_close(inv_freq[mid].double(), ref, rtol=1e-6, atol=0)


SAMPLES = {  # one scaling of each type (small lengths so that dynamic is past its trained length)
    "default": None,
    "linear": {"rope_type": "linear", "factor": 3.0},
    "ntk": {"rope_type": "ntk", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 4},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
}


@pytest.mark.parametrize("rope_type", ROPE_TYPES)
@pytest.mark.parametrize("partial", [1.0, 0.5])
def test_rotation_keeps_norms(rope_type: str, partial: float) -> None:
    """A rotation: every rotated vector keeps its norm times the attention scaling; with partial
    rotary the rotated dims are the first R, and the others pass through unchanged."""
    scaling = {**(SAMPLES[rope_type] or {}), "partial_rotary_factor": partial}
    D = 16
    rope = RotaryEmbedding(D, 100.0, scaling)
    R = rope.rotary_dim
    assert R == int(D * partial)
    q, k = torch.randn(2, 9, 3, D, dtype=F64), torch.randn(2, 9, 1, D, dtype=F64)
    q2, k2 = rope(q, k, 5)
    s = rope.attention_scaling
    for x, y in ((q, q2), (k, k2)):
        torch.testing.assert_close(y[..., :R].norm(dim=-1), s * x[..., :R].norm(dim=-1))
        assert torch.equal(y[..., R:], x[..., R:])


@pytest.mark.parametrize("rope_type", [t for t in ROPE_TYPES if t != "dynamic"])
def test_scores_depend_on_relative_position_only(rope_type: str) -> None:
    """<R(m) q, R(n) k> depends on m - n only (RoFormer §3.2) — for every static scaling."""
    rope = RotaryEmbedding(16, 100.0, SAMPLES[rope_type])
    q, k = torch.randn(1, 1, 1, 16, dtype=F64), torch.randn(1, 1, 1, 16, dtype=F64)

    def score(m: int, n: int) -> float:
        return (rope(q, q, m)[0] * rope(k, k, n)[1]).sum().item()

    assert score(7, 3) == pytest.approx(score(27, 23), rel=1e-5)
    assert score(2, 2) == pytest.approx(score(40, 40), rel=1e-5)


def test_offsets_int_and_tensors() -> None:
    """offset: an int, a 0-dim integer tensor, or one offset per position [T] (tree decoding)."""
    for scaling in (SAMPLES["yarn"], SAMPLES["dynamic"]):
        rope = RotaryEmbedding(16, 100.0, scaling)
        cos, sin = rope.cos_sin(4, 6)
        assert all(torch.equal(a, b) for a, b in zip((cos, sin), rope.cos_sin(4, torch.tensor(6))))
        per_position = torch.tensor([6, 6, 5, 4])  # positions 6, 7, 7, 7
        c, s = rope.cos_sin(4, per_position)
        ref_c, ref_s = rope.cos_sin(2, 6)
        assert torch.equal(c[:2], ref_c) and torch.equal(c[2:], ref_c[1:].expand(2, -1))
        assert torch.equal(s[3], ref_s[1])
        assert rope.cos_sin(0, 3)[0].shape == (0, 16)


@pytest.mark.parametrize(("offset", "match"), [
    (-1, "non-negative int"), (1.5, "non-negative int"), (True, "non-negative int"),
    (torch.tensor(2.0), "integer tensor of shape"), (torch.tensor([1, 2]), r"\[T=3\]"),
    (torch.zeros(3, 1, dtype=torch.int64), r"shape \[3, 1\]"),
])
def test_bad_offset_is_refused(offset, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(8).cos_sin(3, offset)


BAD_SCALINGS = [
    ([("rope_type", "yarm")], (r"unknown rope_type 'yarm'; known: \['default', 'linear', 'ntk', "
                               r"'dynamic', 'yarn', 'llama3'\]")),
    ([("rope_type", "linear")], "rope_type 'linear' needs the parameter 'factor'"),
    ([("rope_type", "linear"), ("factor", None)], "needs the parameter 'factor'"),
    ([("rope_type", "yarn"), ("factor", 4.0)], "needs the parameter 'original_max_position_embeddings'"),
    ([("rope_type", "dynamic"), ("factor", 2.0)], "config.max_position_embeddings"),
    ([("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 1.0),
      ("original_max_position_embeddings", 64)], "needs the parameter 'high_freq_factor'"),
    ([("rope_type", "linear"), ("factor", 0.5)], r"rope_scaling\['factor'\] must be a number >= 1.*0\.5"),
    ([("rope_type", "linear"), ("factor", "2")], r"rope_scaling\['factor'\] must be a number >= 1.*'2'"),
    ([("rope_type", "linear"), ("factor", True)], r"'factor'\] must be a number"),
    ([("rope_type", "yarn"), ("factor", 2.0), ("original_max_position_embeddings", 256.0)],
     r"'original_max_position_embeddings'\] must be a positive integer, got 256\.0"),
    ([("rope_type", "yarn"), ("factor", 2.0), ("original_max_position_embeddings", 64), ("truncate", 1)],
     r"'truncate'\] must be True or False"),
    ([("rope_type", "yarn"), ("factor", 2.0), ("original_max_position_embeddings", 64), ("beta_fast", -1)],
     r"'beta_fast'\] must be a positive number"),
    ([("rope_type", "yarn"), ("factor", 2.0), ("original_max_position_embeddings", 64), ("beta_fast", 1),
      ("beta_slow", 4)], "beta_fast=1 must be >= beta_slow=4"),
    ([("rope_type", "yarn"), ("factor", 2.0), ("original_max_position_embeddings", 64),
      ("attention_factor", 0)], r"'attention_factor'\] must be a positive number"),
    ([("rope_type", "llama3"), ("factor", 8.0), ("low_freq_factor", 4.0), ("high_freq_factor", 4.0),
      ("original_max_position_embeddings", 64)], "high_freq_factor=4.0 must be > low_freq_factor=4.0"),
    ([("factor", 4.0)], r"unexpected key 'factor' for rope_type 'default'; it takes"),
    ([("rope_type", "linear"), ("factor", 2.0), ("beta_fast", 32)], "unexpected key 'beta_fast'"),
    ([("rope_type", "linear"), ("factor", 2.0), ("partial_rotary_factor", 0)],
     r"'partial_rotary_factor'\] must be a number in \(0, 1\]"),
    ([("rope_type", 3)], r"'rope_type'\] must be a string"),
    ([("type", "linear"), ("rope_type", "yarn")], "'type'='linear' and 'rope_type'='yarn' disagree"),
]


@pytest.mark.parametrize(("items", "match"), BAD_SCALINGS)
def test_bad_scaling_is_refused(items, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_rope_scaling(dict(items))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="must be a dict of rope parameters or None, got list"):
        check_rope_scaling([("rope_type", "linear")])
    with pytest.raises(ValueError, match="positive even head_dim, got 7"):
        rope_frequencies(7)
    with pytest.raises(ValueError, match="base must be a number > 1, got 0.5"):
        RotaryEmbedding(8, 0.5)
    with pytest.raises(ValueError, match="the rotary dim R must be > 2, got 2"):
        rope_frequencies(8, 10.0, {"rope_type": "ntk", "factor": 2.0, "partial_rotary_factor": 0.25})
    with pytest.raises(ValueError, match=r"int\(12 \* 0.25\) = 3 must be even and >= 2"):
        rope_frequencies(12, 10.0, {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.25})
    with pytest.raises(ValueError, match=r"rope_theta'\]=500000.0 differs from the RoPE base 10000.0"):
        RotaryEmbedding(8, 10000.0, {"rope_type": "default", "rope_theta": 500000.0})
    with pytest.raises(ValueError, match="seq_len must be a positive integer or None, got 0"):
        rope_frequencies(8, 10.0, SAMPLES["dynamic"], 0)
    with pytest.raises(ValueError, match=r"cos and sin must be \[T=3, R\] with R even and <= D=8"):
        apply_rotary(torch.zeros(1, 3, 1, 8), torch.zeros(3, 10), torch.zeros(3, 10))


def test_check_rope_scaling_normalises_without_mutating() -> None:
    assert check_rope_scaling(None) == {"rope_type": "default"}
    given = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 32, "beta_fast": None}
    out = check_rope_scaling(given)
    assert out == {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 32,
                   "beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}
    assert "type" in given and given["beta_fast"] is None  # the caller's dict is left alone
    assert check_rope_scaling(out) == out  # idempotent
    rope_theta = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}  # HF's dicts carry it
    assert RotaryEmbedding(8, 10000.0, rope_theta).rope_type == "linear"


# -- wired into softmax attention -----------------------------------------------------------------

D_MODEL, N_HEADS, B, T = 32, 2, 2, 11


def attention_layer(scaling: dict | None, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build("softmax_attention", d_model=D_MODEL, n_heads=N_HEADS, chunk_size=4, rope_scaling=scaling,
              **extra)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m.to(F64).eval()


def decode(m: torch.nn.Module, x: torch.Tensor, prefill: int = 0) -> torch.Tensor:
    state, outs = m.init_state(x.shape[0]), []
    if prefill:
        y, state = m(x[:, :prefill], state)
        outs.append(y)
    for t in range(prefill, x.shape[1]):
        y, state = m(x[:, t:t + 1], state)
        outs.append(y)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("backend", ["sdpa", "chunk"])
@pytest.mark.parametrize("rope_type", [t for t in ROPE_TYPES if t != "dynamic"])
def test_layer_decode_equals_forward(rope_type: str, backend: str) -> None:
    m = attention_layer(SAMPLES[rope_type], backend=backend)
    assert m.rope.rope_type == rope_type
    x = torch.randn(B, T, D_MODEL, dtype=F64)
    y, _ = m(x)
    assert torch.isfinite(y).all()
    for prefill in (0, 5):
        assert_close(y, decode(m, x, prefill), 1e-9, f"{rope_type} decode after prefill {prefill}")
    if rope_type != "default":  # the scaling reaches the layer
        plain, _ = attention_layer(None, backend=backend)(x)
        assert (y - plain).abs().max() > 1e-3


def dynamic_decode_reference(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Causal attention in which token t's q and k are rotated with the frequencies of length t + 1
    (the length at which it arrived) — what a KV cache of rotated keys holds, as in transformers."""
    c = m.config
    q, k, v = (split_heads(w(x), c.n_heads) for w in (m.wq, m.wk, m.wv))  # [B, T, H, D]
    qs, ks = [], []
    for t in range(x.shape[1]):
        inv_freq, scale = rope_frequencies(c.head_dim, c.rope_base, c.rope_scaling, t + 1)
        angle = t * inv_freq.double()
        cos, sin = (torch.cat((f(angle), f(angle)))[None] * scale for f in (torch.cos, torch.sin))
        qs.append(apply_rotary(q[:, t:t + 1], cos, sin))
        ks.append(apply_rotary(k[:, t:t + 1], cos, sin))
    q, k = torch.cat(qs, 1), torch.cat(ks, 1)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(c.head_dim)
    causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
    p = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    return m.wo(merge_heads(torch.einsum("bhts,bshd->bthd", p, v)))


@pytest.mark.parametrize("backend", ["sdpa", "chunk"])
def test_layer_dynamic_decode(backend: str) -> None:
    """Dynamic NTK with a KV cache. One forward over T > L0 rotates every token with the
    frequencies of length T. Decoding rotates each new token with those of the current length
    while cached keys keep theirs: so decode == forward while the length is <= L0 (plain RoPE),
    past L0 it differs from forward and equals that per-arrival reference. A prefill in one
    piece == forward."""
    L0 = SAMPLES["dynamic"]["original_max_position_embeddings"]
    m = attention_layer(SAMPLES["dynamic"], backend=backend)
    x = torch.randn(B, T, D_MODEL, dtype=F64)
    y, _ = m(x)
    y_dec = decode(m, x)
    assert_close(m(x[:, :L0])[0], y_dec[:, :L0], 1e-9, "decode within the trained length")
    assert ((y - y_dec)[:, L0:].flatten(2).norm(dim=-1) > 1e-6).all(), "past L0 decode differs"
    assert_close(dynamic_decode_reference(m, x), y_dec, 1e-9, "decode vs per-arrival rotation")
    assert_close(y, m(x, m.init_state(B))[0], 1e-9, "one-piece prefill")
    # within the trained length the dynamic layer is the plain-RoPE layer
    assert_close(attention_layer(None, backend=backend)(x[:, :L0])[0], m(x[:, :L0])[0], 1e-12, "T <= L0")


def test_layer_forward_tree_with_scaling() -> None:
    """Tree verification passes one RoPE offset per node: each root-to-leaf path of the tree gives
    what decoding that path with the cache would give."""
    m = attention_layer(SAMPLES["yarn"])
    x = torch.randn(B, 5, D_MODEL, dtype=F64)
    _, state = m(x, m.init_state(B))
    nodes = torch.randn(B, 5, D_MODEL, dtype=F64)
    parents = torch.tensor([-1, 0, 1, 0, -1])
    y = m.forward_tree(nodes, parents, state)
    for path in ([0, 1, 2], [0, 3], [4]):
        ref, _ = m(nodes[:, path], state)
        assert_close(ref[:, -1], y[:, path[-1]], 1e-9, f"path {path}")


def test_layer_config_validates_and_normalises() -> None:
    m = attention_layer({"type": "linear", "factor": 2})
    assert m.config.rope_scaling == {"rope_type": "linear", "factor": 2}
    assert attention_layer(None).config.rope_scaling is None
    with pytest.raises(ValueError, match=r"SoftmaxAttentionConfig: rope_scaling: unknown rope_type 'pi'; known"):
        attention_layer({"rope_type": "pi", "factor": 2.0})
    with pytest.raises(ValueError, match=r"SoftmaxAttentionConfig: rope_scaling\['factor'\] must be a number >= 1"):
        attention_layer({"rope_type": "linear", "factor": 0.5})
    with pytest.raises(ValueError, match="rope_scaling is set but position='none'"):
        attention_layer({"rope_type": "linear", "factor": 2.0}, position="none")
