"""Mixers: nn.Modules around one op each, all with the same contract (see ``base.Mixer``)."""

from longctx.layers.base import Mixer, MixerConfig, State
from longctx.layers.registry import REGISTRY, build, config_class, describe, make_config, names

__all__ = ["REGISTRY", "Mixer", "MixerConfig", "State", "build", "config_class", "describe",
           "make_config", "names"]
