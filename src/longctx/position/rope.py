"""Rotary position embedding (Su et al. 2021, RoFormer eq. 34) and its context-extension scalings.

The rotate-half layout pairs dimension i with i + R/2 (R = rotary dim), as Llama / HF
transformers do, so checkpoints and inverse frequencies line up with transformers.

A scaling is a plain dict named and parametrised like transformers' ``rope_parameters``
(``AttentionConfig.rope_scaling``); :func:`check_rope_scaling` validates it. ``rope_type``:

=========== ================================================ =====================================
rope_type   required keys (optional keys)                    what changes
=========== ================================================ =====================================
default     —                                                theta_i = base^(-2i/R)
linear      factor                                           theta_i / factor (position interp.)
ntk         factor                                           base * factor^(R/(R-2)) (not in HF)
dynamic     factor, original_max_position_embeddings         ntk with s = factor*L/L0 - (factor-1)
yarn        factor, original_max_position_embeddings         ramp between theta_i and theta_i/factor,
            (attention_factor, beta_fast=32, beta_slow=1,    cos/sin times attention_factor
            mscale, mscale_all_dim, truncate=True)
llama3      factor, low_freq_factor, high_freq_factor,       low bands / factor, high bands kept,
            original_max_position_embeddings                 smooth in between
=========== ================================================ =====================================

Every type also takes ``partial_rotary_factor`` (rotate only the first
``R = int(head_dim * partial_rotary_factor)`` dims; the rest pass through) and ``rope_theta``
(must equal ``base`` if given). transformers' legacy key ``type`` is read as ``rope_type``.
Formulas and citations: ``position/README.md``.

Mapping to transformers (``transformers/modeling_rope_utils.py``; what HF reads from the model
config comes from the constructor or the dict here):

- ``rope_theta``              -> ``base`` (``RotaryEmbedding(head_dim, base)``, ``rope_base``)
- ``head_dim``                -> ``head_dim`` (``AttentionConfig.head_dim = d_model // n_heads``)
- ``partial_rotary_factor``   -> the dict key of the same name
- ``max_position_embeddings`` -> for ``dynamic`` only (the length beyond which it scales): the
  dict key ``original_max_position_embeddings``. yarn and llama3 read
  ``original_max_position_embeddings`` from the dict as HF does (HF's fallback to
  ``max_position_embeddings`` when it is missing, and yarn's ``factor=None`` meaning
  ``max_position_embeddings / original_max_position_embeddings``, are not supported: give both).
- ``ntk`` is static NTK-aware scaling (bloc97 2023; YaRN paper, "NTK-aware interpolation"); HF has
  no such type: it equals HF ``dynamic`` with ``factor=1`` at ``seq_len = factor * L0``.

Differences from transformers: bad parameters raise ``ValueError`` (HF logs a warning); the dynamic
frequencies are a pure function of the current length ``L = max position + 1`` (HF caches the
largest length seen and keeps its frequencies until a call shorter than L0 resets them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import torch
from torch import Tensor, nn

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3")

# rope_type -> (required keys, optional keys); every type also takes _COMMON_KEYS
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "linear": (("factor",), ()),
    "ntk": (("factor",), ()),
    "dynamic": (("factor", "original_max_position_embeddings"), ()),
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),
    "llama3": (("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings"), ()),
}
_COMMON_KEYS = ("rope_type", "rope_theta", "partial_rotary_factor")
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}  # YaRN paper: alpha=1, beta=32
_HINTS = {("dynamic", "original_max_position_embeddings"):
          " (the trained length; transformers reads it from config.max_position_embeddings)"}


def _is_number(x: object) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool)


def _is_positive_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool) and x > 0


def _check_value(key: str, value: object) -> None:
    """Type and range of one parameter (None = not given, for the optional ones)."""
    where = f"rope_scaling[{key!r}]"
    if key == "factor":
        if not _is_number(value) or not value >= 1:
            raise ValueError(f"{where} must be a number >= 1 (the context extension ratio), "
                             f"got {value!r}")
    elif key == "original_max_position_embeddings":
        if not _is_positive_int(value):
            raise ValueError(f"{where} must be a positive integer, got {value!r}")
    elif key in ("low_freq_factor", "high_freq_factor", "rope_theta"):
        if not _is_number(value) or not value > 0:
            raise ValueError(f"{where} must be a positive number, got {value!r}")
    elif key in ("attention_factor", "beta_fast", "beta_slow"):
        if value is not None and (not _is_number(value) or not value > 0):
            raise ValueError(f"{where} must be a positive number or None, got {value!r}")
    elif key in ("mscale", "mscale_all_dim"):
        if value is not None and (not _is_number(value) or not value >= 0):
            raise ValueError(f"{where} must be a number >= 0 or None, got {value!r}")
    elif key == "truncate":
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be True or False, got {value!r}")
    elif key == "partial_rotary_factor":
        if not _is_number(value) or not 0 < value <= 1:
            raise ValueError(f"{where} must be a number in (0, 1], got {value!r}")
    elif key == "rope_type" and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, one of {list(ROPE_TYPES)}, got {value!r}")


def check_rope_scaling(scaling: Mapping | None) -> dict:
    """Validate a RoPE scaling dict; return a normalised copy.

    ``None`` means plain RoPE: ``{"rope_type": "default"}``. The copy has ``rope_type`` set (a
    legacy ``type`` key is renamed) and, for yarn, ``beta_fast``/``beta_slow``/``truncate`` filled
    with their defaults. Raises ``ValueError`` naming an unknown ``rope_type`` (with the known
    ones), a missing or unexpected key, a value of the wrong type, or ``factor < 1``.
    """
    if scaling is None:
        return {"rope_type": "default"}
    if not isinstance(scaling, Mapping):
        raise ValueError(  # noqa: TRY004 (bad input is a ValueError throughout the package)
            f"rope_scaling must be a dict of rope parameters or None, got {type(scaling).__name__}")
    params = dict(scaling)
    if "type" in params:  # transformers' legacy spelling of rope_type
        legacy = params.pop("type")
        if params.setdefault("rope_type", legacy) != legacy:
            raise ValueError(f"rope_scaling: 'type'={legacy!r} and "
                             f"'rope_type'={params['rope_type']!r} disagree")
    rope_type = params.setdefault("rope_type", "default")
    _check_value("rope_type", rope_type)
    if rope_type not in _KEYS:
        raise ValueError(f"rope_scaling: unknown rope_type {rope_type!r}; known: {list(ROPE_TYPES)}")
    required, optional = _KEYS[rope_type]
    for key in required:
        if params.get(key) is None:
            raise ValueError(f"rope_scaling: rope_type {rope_type!r} needs the parameter {key!r}"
                             f"{_HINTS.get((rope_type, key), '')}; got keys {sorted(params)}")
    allowed = (*_COMMON_KEYS, *required, *optional)
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(f"rope_scaling: unexpected key {key!r} for rope_type {rope_type!r}; "
                             f"it takes {list(allowed)}")
        _check_value(key, value)
    if rope_type == "yarn":
        for key, default in _YARN_DEFAULTS.items():
            if params.get(key) is None:
                params[key] = default
        if params["beta_fast"] < params["beta_slow"]:
            raise ValueError(f"rope_scaling: beta_fast={params['beta_fast']} must be >= "
                             f"beta_slow={params['beta_slow']}")
    if rope_type == "llama3" and params["high_freq_factor"] <= params["low_freq_factor"]:
        raise ValueError(f"rope_scaling: high_freq_factor={params['high_freq_factor']} must be > "
                         f"low_freq_factor={params['low_freq_factor']}")
    return params


# -- inverse frequencies (float64 internally, float32 out, as transformers returns) ---------------

def _default_inv_freq(dim: int, base: float) -> Tensor:
    """theta_i = base^(-2i/R), i = 0 .. R/2-1 (RoFormer eq. 15). ``[R/2]`` float64."""
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def _ntk_inv_freq(dim: int, base: float, scale: float) -> Tensor:
    # NTK-aware base change b' = b * s^(R/(R-2)) (YaRN paper, "NTK-aware interpolation"): the lowest
    # frequency is divided by s, the highest kept
    return _default_inv_freq(dim, base * scale ** (dim / (dim - 2)))


def _dynamic_scale(params: dict, seq_len: int | None) -> float:
    """Dynamic NTK (emozilla 2023; YaRN paper, "Dynamic Scaling"): s = factor*L/L0 - (factor-1),
    L = max(seq_len, L0), so s = 1 (plain RoPE) up to the trained length L0."""
    factor, L0 = params["factor"], params["original_max_position_embeddings"]
    L = L0 if seq_len is None else max(seq_len, L0)
    return factor * L / L0 - (factor - 1)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    # YaRN's attention temperature sqrt(1/t) = 0.1 ln(s) + 1 (YaRN paper, "YaRN" section)
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, base: float, params: dict) -> tuple[Tensor, float]:
    """NTK-by-parts (YaRN paper, "NTK-by-parts interpolation") plus the attention temperature.

    Pair i makes r_i = L0 / lambda_i rotations over the trained length (lambda_i = 2 pi / theta_i).
    Pairs with r_i > beta_fast keep theta_i, pairs with r_i < beta_slow get theta_i / factor, a
    linear ramp in i between. r_i = beta at i = R ln(L0 / (2 pi beta)) / (2 ln base).
    """
    factor, L0 = params["factor"], params["original_max_position_embeddings"]

    def pair_index(rotations: float) -> float:
        return dim * math.log(L0 / (2 * math.pi * rotations)) / (2 * math.log(base))

    low, high = pair_index(params["beta_fast"]), pair_index(params["beta_slow"])
    if params["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if high == low:
        high += 0.001  # as transformers: avoid 0/0 in the ramp
    i = torch.arange(dim // 2, dtype=torch.float64)
    ramp = ((i - low) / (high - low)).clamp(0, 1)  # 0: keep theta_i, 1: theta_i / factor
    inv_freq = _default_inv_freq(dim, base) * (1 - ramp + ramp / factor)

    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:  # DeepSeek's variant: a ratio of two temperatures
            attention = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention = _yarn_mscale(factor)
    return inv_freq, float(attention)


def _llama3(dim: int, base: float, params: dict) -> Tensor:
    """Llama 3.1 (Meta's reference code): wavelengths lambda > L0 / low_freq_factor are divided by
    factor, lambda < L0 / high_freq_factor are kept, and between the two the inverse frequency is
    (1 - a) theta / factor + a theta with a = (L0 / lambda - low_freq_factor) /
    (high_freq_factor - low_freq_factor)."""
    factor, L0 = params["factor"], params["original_max_position_embeddings"]
    low_ff, high_ff = params["low_freq_factor"], params["high_freq_factor"]
    theta = _default_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    smooth = ((L0 / wavelen - low_ff) / (high_ff - low_ff))
    mid = (1 - smooth) * theta / factor + smooth * theta
    out = torch.where(wavelen > L0 / low_ff, theta / factor, mid)
    return torch.where(wavelen < L0 / high_ff, theta, out)


def _rotary_dim(head_dim: object, params: dict) -> int:
    if not _is_positive_int(head_dim) or head_dim % 2:
        raise ValueError(f"RoPE needs a positive even head_dim, got {head_dim!r}")
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    if dim < 2 or dim % 2:
        raise ValueError(f"rotary dim int(head_dim * partial_rotary_factor) = int({head_dim} * "
                         f"{params['partial_rotary_factor']}) = {dim} must be even and >= 2")
    if params["rope_type"] in ("ntk", "dynamic") and dim == 2:
        raise ValueError(f"rope_type {params['rope_type']!r} scales the base by s^(R/(R-2)): "
                         "the rotary dim R must be > 2, got 2")
    return dim


def _check_base(base: object, params: dict) -> float:
    if not _is_number(base) or not base > 1:
        raise ValueError(f"RoPE base must be a number > 1, got {base!r}")
    theta = params.get("rope_theta")
    if theta is not None and theta != base:
        raise ValueError(f"rope_scaling['rope_theta']={theta} differs from the RoPE base {base}; "
                         "set the base (AttentionConfig.rope_base) to it, or drop rope_theta")
    return float(base)


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: Mapping | None = None,
                     seq_len: int | None = None) -> tuple[Tensor, float]:
    """Inverse frequencies ``[R/2]`` float32 and the attention scaling of a RoPE scaling.

    ``R = int(head_dim * partial_rotary_factor)`` (``head_dim`` by default). ``seq_len`` (the
    current length, max position + 1) matters for ``dynamic`` only; None = the trained length.
    The attention scaling multiplies cos and sin (so q.k by its square); it is 1 except for yarn.
    Equal to transformers' ``ROPE_INIT_FUNCTIONS[rope_type]`` (and the default init).
    """
    params = check_rope_scaling(scaling)
    dim = _rotary_dim(head_dim, params)
    base = _check_base(base, params)
    if seq_len is not None and not _is_positive_int(seq_len):
        raise ValueError(f"seq_len must be a positive integer or None, got {seq_len!r}")
    rope_type, attention = params["rope_type"], 1.0
    if rope_type == "default":
        inv_freq = _default_inv_freq(dim, base)
    elif rope_type == "linear":  # position interpolation (Chen et al. 2023): m -> m / factor
        inv_freq = _default_inv_freq(dim, base) / params["factor"]
    elif rope_type == "ntk":
        inv_freq = _ntk_inv_freq(dim, base, params["factor"])
    elif rope_type == "dynamic":
        inv_freq = _ntk_inv_freq(dim, base, _dynamic_scale(params, seq_len))
    elif rope_type == "yarn":
        inv_freq, attention = _yarn(dim, base, params)
    else:
        inv_freq = _llama3(dim, base, params)
    return inv_freq.float(), attention


def rope_inv_freq(head_dim: int, base: float = 10000.0, device=None) -> Tensor:
    """theta_i = base^(-2i/D), i = 0 .. D/2-1 (RoFormer eq. 15). Shape ``[D/2]``, float32."""
    return rope_frequencies(head_dim, base)[0].to(device)


# -- rotation -------------------------------------------------------------------------------------

def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [B, T, H, D]`` by angles given as ``cos, sin [T, R]``, ``R <= D`` even.

    The first ``R`` dims are rotated (pairs ``i, i + R/2``), the remaining ``D - R`` pass through
    (partial rotary, as GPT-NeoX / transformers).
    """
    R = cos.shape[-1]
    if cos.dim() != 2 or sin.shape != cos.shape or cos.shape[0] != x.shape[1] or R % 2 \
            or R > x.shape[-1]:
        raise ValueError(f"apply_rotary: cos and sin must be [T={x.shape[1]}, R] with R even and <= "
                         f"D={x.shape[-1]}; got cos {list(cos.shape)}, sin {list(sin.shape)}")
    cos = cos[None, :, None, :].to(x.dtype)  # [1, T, 1, R]
    sin = sin[None, :, None, :].to(x.dtype)
    if R == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :R], x[..., R:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


def _positions(seqlen: int, offset: int | Tensor, device) -> Tensor:
    """Absolute positions ``offset + [0 .. T-1]``, int64 ``[T]``; ``offset`` an int or an integer
    tensor ``[]`` or ``[T]`` (one offset per position, as tree decoding passes)."""
    if isinstance(offset, Tensor):
        if offset.is_floating_point() or offset.is_complex() or offset.dtype == torch.bool or not (
                offset.dim() == 0 or tuple(offset.shape) == (seqlen,)):
            raise ValueError(f"RoPE offset must be an int or an integer tensor of shape [] or "
                             f"[T={seqlen}], got a {offset.dtype} tensor of shape {list(offset.shape)}")
        offset = offset.to(device)
    elif isinstance(offset, bool) or not isinstance(offset, Integral) or offset < 0:
        raise ValueError(f"RoPE offset must be a non-negative int or an integer tensor, got {offset!r}")
    return torch.arange(seqlen, device=device) + offset


class RotaryEmbedding(nn.Module):
    """cos/sin for absolute positions ``offset .. offset + T - 1``, with a RoPE scaling.

    ``scaling`` is a rope-parameters dict (see the module docstring); cos and sin carry the
    attention scaling (``cos * s, sin * s``), as transformers does. For ``dynamic`` the inverse
    frequencies are recomputed from the current length ``L = max position + 1`` (``offset + T``)
    on every call. With a KV cache the cached keys keep the rotation they were cached with (the
    frequencies of the length at which they arrived), and only the new tokens get those of the
    new length — as in transformers; so decoding past the trained length differs from one forward
    over the whole sequence (in which every key uses the frequencies of the full length).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: Mapping | None = None) -> None:
        super().__init__()
        self.scaling = check_rope_scaling(scaling)
        inv_freq, self.attention_scaling = rope_frequencies(head_dim, base, self.scaling)
        self.head_dim = head_dim
        self.base = float(base)
        self.rotary_dim = 2 * inv_freq.numel()
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [R/2]

    @property
    def rope_type(self) -> str:
        return self.scaling["rope_type"]

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, scaling={self.scaling}"

    def frequencies(self, seq_len: int) -> tuple[Tensor, float]:
        """Inverse frequencies ``[R/2]`` and attention scaling for a sequence of length ``seq_len``."""
        if self.rope_type != "dynamic" or seq_len <= self.scaling["original_max_position_embeddings"]:
            return self.inv_freq, self.attention_scaling
        inv_freq, attention = rope_frequencies(self.head_dim, self.base, self.scaling, seq_len)
        return inv_freq.to(self.inv_freq), attention

    def cos_sin(self, seqlen: int, offset: int | Tensor = 0, device=None) -> tuple[Tensor, Tensor]:
        """``cos, sin [T, R]`` (times the attention scaling) for positions ``offset + [0 .. T-1]``."""
        device = device or self.inv_freq.device
        pos = _positions(seqlen, offset, device)  # [T] int64
        inv_freq, scale = self.inv_freq, self.attention_scaling
        if self.rope_type == "dynamic" and seqlen > 0:
            # current length = max position + 1 (a host sync for tensor offsets, as HF's torch.max)
            length = int(pos.max()) + 1 if isinstance(offset, Tensor) else int(offset) + seqlen
            inv_freq, scale = self.frequencies(length)
        angles = torch.outer(pos.float(), inv_freq.to(device))  # [T, R/2]
        emb = torch.cat((angles, angles), dim=-1)  # [T, R]
        if scale == 1.0:
            return emb.cos(), emb.sin()
        return emb.cos() * scale, emb.sin() * scale

    def forward(self, q: Tensor, k: Tensor, offset: int | Tensor = 0) -> tuple[Tensor, Tensor]:
        """Rotate ``q [B, T, H, D]`` and ``k [B, T, Hk, D]`` for positions starting at ``offset``."""
        cos, sin = self.cos_sin(q.shape[1], offset, q.device)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
