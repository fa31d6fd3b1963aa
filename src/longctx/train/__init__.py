"""Training loop used by the arena (and by ``longctx train``)."""

from longctx.train.loop import TrainConfig, TrainResult, evaluate, lr_at, train

__all__ = ["TrainConfig", "TrainResult", "evaluate", "lr_at", "train"]
