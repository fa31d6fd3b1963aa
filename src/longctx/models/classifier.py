"""``LongCtxClassifier``: embedding -> N bidirectional pre-norm blocks -> pooling -> class head.

The Long Range Arena layout (Tay et al. 2021, §2: an encoder, a pooling of its outputs and a
classifier head). Each block is ``x + BiMixer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``, the
``LongCtxLM`` block without its short conv.

Bidirectional, generically (the "two directions" construction): every registered causal mixer
becomes bidirectional by running one instance on ``x`` and a second instance, with its own
weights, on ``x`` reversed along time, flipping that output back and **summing** the two. This
is the bidirectional option of S4 (Gu et al. 2022, whose LRA runs sum a causal and a flipped
anti-causal convolution kernel) and of MEGA's EMA (Ma et al. 2023), written for any mixer as in
Caduceus' BiMamba (Schiff et al. 2024, strategy "add", here without weight tying). Position t
then sees ``x[:t+1]`` through the forward mixer and ``x[t:]`` through the backward one. A mixer
already configured bidirectional (``causal = false`` in its options, or a bidirectional-only
method: Linformer, Nystromformer) sees both sides itself and runs as one instance.
``bidirectional = False`` keeps the forward instance only: a causal encoder, which with
``pooling = "last"`` is ``LongCtxLM`` (untied head) read at its last position.

The output is the **class logits of one position**, ``[B, 1, vocab]``. The tasks keep the causal-LM
form (ListOps: the label is the target of the last position, every other target is
IGNORE_INDEX), and ``train.loop`` scores a model returning ``L < T`` positions against the last
``L`` targets (and refuses if an earlier position is scored). Returning ``[B, T, vocab]`` with
filler logits elsewhere would be padding the shape to look like an LM: T times the head's work,
and a wrong task (one scoring several positions) would train silently on the filler.
The label ids are the task's own tokens inside ``vocab_size``, so the head is
``Linear(d_model, vocab_size)`` (untied: a class head is not the embedding).

Padding: ``pooling = "mean"`` averages over all T positions, left padding included (ListOps
pads with PAD = 0 on the left). This is the simple choice, and the model learns the PAD tokens
like any other; ``forward(idx, mask=...)`` averages over the ``mask`` positions only for a
caller that has a mask (the train loop does not pass one).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NoReturn

import torch
from torch import Tensor, nn

from longctx.layers import Mixer, build, make_config
from longctx.layers.base import dtype_bytes
from longctx.models.lm import LongCtxLM, SwiGLU, chunked_feed_forward, layer_mixers

POOLINGS = ("mean", "last")


@dataclass
class ClassifierConfig:
    vocab_size: int = 256  # tokens; the class labels are token ids inside it (head outputs vocab_size)
    d_model: int = 128  # residual width
    n_layers: int = 2  # blocks
    n_heads: int = 4  # heads of every mixer
    mixer: str | list[str] = "softmax_attention"  # one name, or one per layer (hybrid)
    mixer_options: dict[str, dict] = field(default_factory=dict)  # per mixer name: extra config
    mlp_ratio: float = 4.0  # SwiGLU hidden = mlp_ratio * d_model * 2/3, rounded to 8 (Llama)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    ff_chunk_size: int = 0  # > 0: the MLP runs over sequence chunks of this size (O(chunk) memory)
    pooling: str = "mean"  # "mean" over positions (LRA) or the "last" position's features
    bidirectional: bool = True  # causal mixers get a second, time-reversed instance (see module doc)

    def __post_init__(self) -> None:
        name = type(self).__name__
        self.mixer = layer_mixers(name, self.mixer, self.n_layers, self.mixer_options)
        if self.pooling not in POOLINGS:
            raise ValueError(f"{name}.pooling must be one of {', '.join(map(repr, POOLINGS))}, "
                             f"got {self.pooling!r}")
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"{name}.bidirectional must be true or false, got {self.bidirectional!r}")  # noqa: TRY004
        if not isinstance(self.ff_chunk_size, int) or self.ff_chunk_size < 0:
            raise ValueError(f"{name}.ff_chunk_size must be 0 (off) or a positive int, got {self.ff_chunk_size!r}")
        if not self.bidirectional:
            for m in dict.fromkeys(self.mixer):
                if not make_config(m, **self.mixer_kwargs(m)).causal:
                    raise ValueError(
                        f"{name}: bidirectional=False, but mixer {m!r} is configured bidirectional "
                        "(causal=False) and sees the whole sequence anyway; set bidirectional=true, "
                        "or build the mixer causal"
                    )

    def mixer_kwargs(self, name: str) -> dict:
        return {"d_model": self.d_model, "n_heads": self.n_heads, **self.mixer_options.get(name, {})}

    def to_dict(self) -> dict:
        return asdict(self)


class BidirectionalMixer(nn.Module):
    """``forward(x) + flip(backward(flip(x)))``: two causal mixers, one per direction.

    ``x [B, T, d_model] -> [B, T, d_model]``. ``bwd = None`` runs ``fwd`` alone (a causal
    encoder, or a mixer that is bidirectional itself).
    """

    def __init__(self, fwd: Mixer, bwd: Mixer | None) -> None:
        super().__init__()
        self.forward_mixer = fwd
        self.backward_mixer = bwd

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.forward_mixer(x)  # [B, T, d]: position t sees x[:, :t+1]
        if self.backward_mixer is not None:
            y_rev, _ = self.backward_mixer(x.flip(1))  # [B, T, d] in reversed time
            y = y + y_rev.flip(1)  # position t sees x[:, t:]
        return y

    @property
    def mixers(self) -> list[Mixer]:
        return [m for m in (self.forward_mixer, self.backward_mixer) if m is not None]


class EncoderBlock(nn.Module):
    def __init__(self, mixer: BidirectionalMixer, config: ClassifierConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mixer = mixer
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_ratio)
        self.ff_chunk_size = config.ff_chunk_size

    def _norm_mlp(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, T, d_model] -> [B, T, d_model]``."""
        x = x + self.mixer(self.norm1(x))
        return x + chunked_feed_forward(self._norm_mlp, x, self.ff_chunk_size)


class LongCtxClassifier(nn.Module):
    """A sequence classifier: ``idx [B, T] -> (logits [B, 1, vocab], None)``."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        blocks = []
        for name in config.mixer:
            fwd = build(name, **config.mixer_kwargs(name))
            two_way = config.bidirectional and fwd.config.causal  # else one instance suffices
            bwd = build(name, **config.mixer_kwargs(name)) if two_way else None
            blocks.append(EncoderBlock(BidirectionalMixer(fwd, bwd), config))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(LongCtxLM._init_weights)

    @property
    def mixers(self) -> list[Mixer]:
        """Every mixer instance, both directions."""
        return [m for b in self.blocks for m in b.mixer.mixers]

    def encode(self, idx: Tensor) -> Tensor:
        """``idx [B, T]`` token ids -> normalised features ``[B, T, d_model]`` before pooling."""
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            got = f"{idx.dtype} {list(idx.shape)}" if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"LongCtxClassifier: idx must be integer token ids [B, T], got {got}")
        x = self.embed(idx)  # [B, T, d_model]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def pool(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """``h [B, T, d]`` -> ``[B, d]``: mean over positions (over ``mask [B, T]`` ones if
        given) or the last position."""
        if self.config.pooling == "last":
            return h[:, -1]
        if mask is None:
            return h.mean(dim=1)
        if mask.shape != h.shape[:2]:
            raise ValueError(f"LongCtxClassifier: mask must be [B, T] = {list(h.shape[:2])}, "
                             f"got {list(mask.shape)}")
        w = mask.to(h.dtype).unsqueeze(-1)  # [B, T, 1]
        return (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def forward(self, idx: Tensor, state: object | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, None]:
        """``idx [B, T]`` -> ``(logits [B, 1, vocab], None)``: one prediction per sequence, aligned
        with the last target position (``train.loop`` scores it against ``targets[:, -1:]``).

        ``mask [B, T]`` (optional, True = a real token): mean pooling over those positions only.
        A ``state`` is refused: a classifier reads whole sequences; it has no decode step.
        """
        if state is not None:
            self._no_decode()
        h = self.encode(idx)  # [B, T, d_model]
        return self.head(self.pool(h, mask)).unsqueeze(1), None  # [B, 1, vocab]

    def init_state(self, *args, **kwargs) -> NoReturn:
        self._no_decode()

    def _no_decode(self) -> NoReturn:
        if self.config.bidirectional:
            raise ValueError(
                "LongCtxClassifier: a decode step on a model configured bidirectional: the "
                "backward direction reads the sequence from its end, so there is no state to "
                "continue; call model(idx) on whole sequences"
            )
        raise ValueError("LongCtxClassifier: a classifier has no decode state (it pools whole "
                         "sequences); call model(idx) on whole sequences")

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the memory the encoder carries along ``seqlen`` tokens, summed over every
        mixer instance of both directions (each mixer's ``state_size``; the arena plots accuracy
        against it). Not a decode state: a bidirectional model has none. A mixer without a
        recurrent form (Linformer, Nystromformer: their ``state_size`` raises) counts as keys and
        values of the whole sequence, ``2 * B * T * d_model`` numbers, like full attention."""
        total = 0
        for m in self.mixers:
            try:
                total += m.state_size(batch_size, seqlen, dtype)
            except ValueError:
                total += 2 * batch_size * seqlen * self.config.d_model * dtype_bytes(dtype)
        return total
