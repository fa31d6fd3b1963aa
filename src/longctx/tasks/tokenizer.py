"""Byte-level tokenizer: UTF-8 bytes are the tokens (ids 0..255), optionally a sink token.

``sink_token=True`` adds id 256, ``SINK``: StreamingLLM's dedicated attention sink, "a learnable
placeholder token prepended to all training samples" (Xiao et al. 2024, §3.3), so a model can put
its excess attention there instead of on whatever text happens to come first.
"""

from __future__ import annotations

import torch
from torch import Tensor

SINK_ID = 256


class ByteTokenizer:
    def __init__(self, sink_token: bool = False) -> None:
        if not isinstance(sink_token, bool):
            raise ValueError(  # noqa: TRY004
                f"ByteTokenizer: sink_token must be true or false, got {sink_token!r}")
        self.sink_token = sink_token

    @property
    def vocab_size(self) -> int:
        return 257 if self.sink_token else 256

    @property
    def sink_id(self) -> int | None:
        return SINK_ID if self.sink_token else None

    def encode(self, text: str) -> Tensor:
        """``text`` -> int64 ids ``[len(text.encode("utf-8"))]``."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)

    def decode(self, ids) -> str:
        """Ids (a tensor or a list) -> text; the sink token is skipped, broken UTF-8 replaced."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ByteTokenizer.decode: ids must be in [0, {self.vocab_size}), got {bad[:5]}")
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "bytes", "sink_token": self.sink_token}

    @classmethod
    def from_dict(cls, d: dict) -> ByteTokenizer:
        if not isinstance(d, dict) or d.get("type") != "bytes":
            raise ValueError(f"not a byte tokenizer description: {d!r}")
        return cls(bool(d.get("sink_token", False)))

    def __repr__(self) -> str:
        return f"ByteTokenizer(sink_token={self.sink_token})"
