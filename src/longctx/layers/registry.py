"""One explicit registry: mixer name -> (layer class, config dataclass).

Adding a method = one ops folder, one layer file, one line here, one test file.
"""

from __future__ import annotations

from longctx.errors import check_options, unknown_name
from longctx.layers.base import Mixer, MixerConfig
from longctx.layers.block_recurrent import BlockRecurrent, BlockRecurrentConfig
from longctx.layers.deltanet import DeltaNet, DeltaNetConfig
from longctx.layers.dilated_attention import DilatedAttention, DilatedAttentionConfig
from longctx.layers.gated_deltanet import GatedDeltaNet, GatedDeltaNetConfig
from longctx.layers.gla import GatedLinearAttention, GLAConfig
from longctx.layers.h3 import H3, H3Config
from longctx.layers.landmark_attention import LandmarkAttention, LandmarkAttentionConfig
from longctx.layers.linear_attention import LinearAttention, LinearAttentionConfig
from longctx.layers.linearized import (
    AugmentedLinearAttention,
    AugmentedLinearAttentionConfig,
    GroupedLinearAttention,
    GroupedLinearAttentionConfig,
)
from longctx.layers.linformer import Linformer, LinformerConfig
from longctx.layers.log_linear import (
    LogLinearAttention,
    LogLinearAttentionConfig,
    LogLinearGatedDeltaNet,
    LogLinearGatedDeltaNetConfig,
    LogLinearGLA,
    LogLinearGLAConfig,
    LogLinearMamba2,
    LogLinearMamba2Config,
)
from longctx.layers.longformer_attention import LongformerAttention, LongformerAttentionConfig
from longctx.layers.mamba import Mamba, MambaConfig
from longctx.layers.mamba2 import Mamba2, Mamba2Config
from longctx.layers.mega import Mega, MegaConfig
from longctx.layers.multi_token_attention import MultiTokenAttention, MultiTokenAttentionConfig
from longctx.layers.nystromformer import Nystromformer, NystromformerConfig
from longctx.layers.retention import Retention, RetentionConfig
from longctx.layers.rmt import RMT, RMTConfig
from longctx.layers.rwkv import RWKV4, RWKV6, RWKV4Config, RWKV6Config
from longctx.layers.s4d import S4, S4D, S4Config, S4DConfig
from longctx.layers.s5 import S5, S5Config
from longctx.layers.sliding_window_attention import (
    SlidingWindowAttention,
    SlidingWindowAttentionConfig,
)
from longctx.layers.softmax_attention import SoftmaxAttention, SoftmaxAttentionConfig

REGISTRY: dict[str, tuple[type[Mixer], type[MixerConfig], str]] = {
    "softmax_attention": (SoftmaxAttention, SoftmaxAttentionConfig,
                          "softmax attention, RoPE (+ scalings) / ALiBi, GQA, bidirectional option; KV-cache decode"),
    "sliding_window_attention": (SlidingWindowAttention, SlidingWindowAttentionConfig,
                                 "softmax attention over the last `window` tokens; ring-buffer decode"),
    "landmark_attention": (LandmarkAttention, LandmarkAttentionConfig,
                           ("landmark attention (Mohtashami & Jaggi 2023): grouped softmax over "
                            "blocks; top-k block retrieval decode")),
    "dilated_attention": (DilatedAttention, DilatedAttentionConfig,
                          ("LongNet dilated attention (Ding 2023): segments x dilations mixed by "
                           "softmax denominators; ring-buffer decode")),
    "longformer_attention": (LongformerAttention, LongformerAttentionConfig,
                             ("Longformer (Beltagy 2020): sliding window + global positions with "
                              "separate Q_g/K_g/V_g; bounded decode")),
    "multi_token_attention": (MultiTokenAttention, MultiTokenAttentionConfig,
                              "Multi-Token Attention (Golovneva 2025): key-query conv + head mixing"),
    "linformer": (Linformer, LinformerConfig,
                  "bidirectional only: Linformer (Wang 2020), keys/values projected to k rows by E, F"),
    "nystromformer": (Nystromformer, NystromformerConfig,
                      "bidirectional only: Nystromformer (Xiong 2021), landmarks + iterative pinv"),
    "linear_attention": (LinearAttention, LinearAttentionConfig,
                         "linear attention (Katharopoulos 2020) with elu+1/relu/identity/Based-Taylor maps"),
    "retention": (Retention, RetentionConfig, "RetNet multi-scale retention, fixed per-head decay"),
    "gla": (GatedLinearAttention, GLAConfig, "gated linear attention (Yang 2024), data-dependent gate"),
    "deltanet": (DeltaNet, DeltaNetConfig,
                 "DeltaNet: delta-rule linear attention (Schlag 2021; chunked, Yang 2024)"),
    "gated_deltanet": (GatedDeltaNet, GatedDeltaNetConfig,
                       "Gated DeltaNet (Yang, Kautz, Hatamizadeh 2025): delta rule + Mamba-2 decay"),
    "mamba": (Mamba, MambaConfig, "Mamba-1 selective scan S6 (Gu & Dao 2023): per-channel dt, conv + SiLU gate"),
    "mamba2": (Mamba2, Mamba2Config, "Mamba-2 SSD (Dao & Gu 2024): scalar-decay selective SSM, chunked"),
    "aug_linear_attention": (AugmentedLinearAttention, AugmentedLinearAttentionConfig,
                             "linear attention + causal masked DWConv on V (You 2024, ICML)"),
    "grouped_linear_attention": (GroupedLinearAttention, GroupedLinearAttentionConfig,
                                 "per-group KV cumsum + local relu^2 attention (You 2024; FLASH)"),
    "log_linear_attention": (LogLinearAttention, LogLinearAttentionConfig,
                             "log-linear (Guo 2025) unnormalised linear attention: O(log T) Fenwick states"),
    "log_linear_gla": (LogLinearGLA, LogLinearGLAConfig,
                       "log-linear (Guo 2025) GLA: O(log T) Fenwick level states, softplus level weights"),
    "log_linear_mamba2": (LogLinearMamba2, LogLinearMamba2Config,
                          "log-linear Mamba-2 (Guo 2025, §4.1): SSD with O(log T) Fenwick states"),
    "log_linear_gated_deltanet": (LogLinearGatedDeltaNet, LogLinearGatedDeltaNetConfig,
                                  "log-linear Gated DeltaNet (Guo 2025, §4.2): O(log T) Fenwick states"),
    "s4d": (S4D, S4DConfig,
            "S4D (Gu 2022): diagonal SSM per channel, ZOH/bilinear; FFT conv, recurrent decode, bidirectional"),
    "rwkv4": (RWKV4, RWKV4Config,
              "RWKV-4 time mixing (Peng 2023): token shift + per-channel WKV, stable chunked form"),
    "s5": (S5, S5Config, "S5 (Smith 2023): MIMO diagonal SSM by parallel associative scan, HiPPO-N init"),
    "h3": (H3, H3Config, "H3 (Fu 2023): Q * diagSSM(shiftSSM(K) V^T), multi-head; FFT conv, recurrent decode"),
    "mega": (Mega, MegaConfig,
             "MEGA (Ma 2023): damped multi-dim EMA + single-head gated attention; full or Mega-chunk"),
    "rwkv6": (RWKV6, RWKV6Config,
              "RWKV-6/Finch time mixing (Peng 2024): ddlerp token shift, matrix state, data-dependent decay"),
    "s4": (S4, S4Config, "S4 (Gu 2022): NPLR HiPPO-LegS; bilinear (kernel by Cauchy + Woodbury + iFFT) or ZOH (dense powers), recurrent decode"),
    "block_recurrent": (BlockRecurrent, BlockRecurrentConfig,
                        "Block-Recurrent Transformer (Hutchins 2022): window attention + gated recurrent state vectors"),
    "rmt": (RMT, RMTConfig, "Recurrent Memory Transformer (Bulatov 2022), layer-local: read/write memory tokens per segment"),
}


def names() -> list[str]:
    """The registered mixer names, in registry order."""
    return list(REGISTRY)


def describe(name: str) -> str:
    return REGISTRY[_lookup(name)][2]


def _lookup(name: str) -> str:
    if name in REGISTRY:
        return name
    raise unknown_name("mixer", name, REGISTRY)


def config_class(name: str) -> type[MixerConfig]:
    return REGISTRY[_lookup(name)][1]


def make_config(name: str, **kwargs) -> MixerConfig:
    """The mixer's config dataclass from keyword arguments; unknown keys are named in the error."""
    cls = config_class(name)
    check_options("mixer", name, cls, kwargs)
    return cls(**kwargs)


def build(name: str, **kwargs) -> Mixer:
    """Build a registered mixer: ``build("gla", d_model=256, n_heads=4)``."""
    layer_cls = REGISTRY[_lookup(name)][0]
    return layer_cls(make_config(name, **kwargs))
