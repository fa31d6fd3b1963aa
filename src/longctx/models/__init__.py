"""Language models built from registered mixers."""

from longctx.models.lm import LMConfig, LMState, LongCtxLM

__all__ = ["LMConfig", "LMState", "LongCtxLM"]
