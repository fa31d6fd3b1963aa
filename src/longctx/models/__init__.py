"""Language models and sequence classifiers built from registered mixers."""

from longctx.models.classifier import ClassifierConfig, LongCtxClassifier
from longctx.models.lm import LMConfig, LMState, LongCtxLM
from longctx.models.rmt import RMTLM, RMTConfig

# a suite's ``[model] kind``: -> (config dataclass, model class)
MODEL_KINDS = {"lm": (LMConfig, LongCtxLM), "classifier": (ClassifierConfig, LongCtxClassifier),
               "rmt": (RMTConfig, RMTLM)}  # rmt: memory tokens through the whole stack

__all__ = [
               "MODEL_KINDS",
               "RMTLM",
               "ClassifierConfig",
               "LMConfig",
               "LMState",
               "LongCtxClassifier",
               "LongCtxLM",
               "RMTConfig",
]
