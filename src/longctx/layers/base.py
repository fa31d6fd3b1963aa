"""The layer contract: every mixer maps ``(B, T, d_model) -> (B, T, d_model)`` and carries a State.

``forward(x, state=None)``: without a state it is the training form and returns ``(y, None)``;
with a state (from ``init_state`` or a previous call) it continues that sequence — a prefill in
chunks, or decode with ``T == 1`` — and returns ``(y, new_state)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from longctx.ops.common import check_positive_int, trusted_values


@dataclass
class State:
    """A mixer's decode state: a small dataclass of tensors (batch first).

    Subclasses declare tensor fields; ``mixer`` names the registry entry that made the state, so
    a state handed to another mixer is refused with a clear message.
    """

    mixer: str

    def tensors(self) -> dict[str, Tensor]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }

    def _replace(self, fn) -> Self:
        return dataclasses.replace(self, **{k: fn(k, t) for k, t in self.tensors().items()})

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Self:
        """Move to ``device``; floating tensors are cast to ``dtype`` if given.

        Like ``Tensor.to``, a dtype may be passed alone: ``state.to(torch.float32)``.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device

        def move(_name: str, t: Tensor) -> Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return self._replace(move)

    def select(self, index: Tensor | slice | list[int]) -> Self:
        """Slice by batch: the rows ``index`` of every batched tensor (0-dim counters are kept)."""
        return self._replace(lambda _n, t: t[index] if t.dim() > 0 else t)

    def detach(self) -> Self:
        return self._replace(lambda _n, t: t.detach())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def batch_size(self) -> int:
        for t in self.tensors().values():
            if t.dim() > 0:
                return t.shape[0]
        raise ValueError("state has no batched tensor")

    def state_dict(self) -> dict[str, object]:
        """A dict that ``torch.save`` can write and ``from_state_dict`` reads back."""
        return {"class": type(self).__name__, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_state_dict(cls, d: dict[str, object]) -> Self:
        if d.get("class") != cls.__name__:
            raise ValueError(f"state_dict is a {d.get('class')!r}, expected {cls.__name__!r}")
        return cls(**{k: v for k, v in d.items() if k != "class"})


@dataclass
class CacheState(State):
    """A state that runs the attention itself over a mixer's projections.

    The cache policies (``longctx.cache``: window, StreamingLLM sinks) decide which keys a
    softmax-attention layer keeps and where they sit; the layer hands such a state its input
    (``mixer.forward(x, state)`` calls ``state.attend(mixer, x)``), so layers need not know the
    policies.
    """

    def attend(self, mixer: Mixer, x: Tensor) -> tuple[Tensor, CacheState]:
        raise NotImplementedError


@dataclass
class MixerConfig:
    """Fields every mixer takes. Subclasses add the method's own fields, each with a comment."""

    d_model: int = 128  # model width
    n_heads: int = 4  # number of (query) heads; must divide d_model
    causal: bool = True  # False: bidirectional (classification); only where the method has that form

    # the values of ``causal`` the method is defined for: (True,) causal only, (False,)
    # bidirectional only (Linformer, Nystromformer), (True, False) both
    causal_modes: ClassVar[tuple[bool, ...]] = (True,)
    # why a method lacks the other form, named in the errors (e.g. Linformer's E K sums over T)
    one_form_reason: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for name in ("d_model", "n_heads"):
            check_positive_int(f"{type(self).__name__}.{name}", getattr(self, name))
        if not isinstance(self.causal, bool):
            # ValueError like every other config error (suites and CLIs catch ValueError)
            raise ValueError(  # noqa: TRY004
                f"{type(self).__name__}.causal must be true or false, got {self.causal!r}")
        if self.causal not in self.causal_modes:
            form = "causal" if self.causal else "bidirectional"
            only = "bidirectional" if self.causal else "causal"
            why = f": {self.one_form_reason}" if self.one_form_reason else ""
            raise ValueError(
                f"{type(self).__name__}: causal={self.causal} is not supported: this method has no "
                f"{form} form (it is defined {only} only){why}; use causal={not self.causal}"
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"{type(self).__name__}: n_heads={self.n_heads} must divide d_model={self.d_model}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class Mixer(nn.Module):
    """Base class of every sequence mixer. Subclasses set ``name`` and ``state_class``."""

    name: ClassVar[str]
    state_class: ClassVar[type[State]]

    def __init__(self, config: MixerConfig) -> None:
        super().__init__()
        self.config = config

    def __call__(self, *args: object, **kwargs: object) -> tuple[Tensor, State | None]:
        # the ops skip their checks of input values here (each a device synchronisation on a
        # GPU): a mixer's gates, betas and keys are valid by construction
        with trusted_values():
            return super().__call__(*args, **kwargs)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State | None]:
        raise NotImplementedError

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> State:
        """The empty state a fresh sequence starts from."""
        raise NotImplementedError

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of decode memory after ``seqlen`` tokens (zoology's ``state_size``)."""
        raise NotImplementedError

    # -- checks shared by every mixer ---------------------------------------------------------
    def check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.config.d_model:
            shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: x must be [B, T, d_model={self.config.d_model}], got {shape}"
            )

    def check_causal_for_state(self) -> None:
        """A state continues a sequence left to right: bidirectional mixers have no decode form."""
        c = self.config
        if c.causal:
            return
        if True not in c.causal_modes:
            raise ValueError(f"{self.name}: this mixer is bidirectional only (causal=False) and has "
                             f"no decode state: {c.one_form_reason or 'it has no causal form'}; "
                             "call forward(x) on whole sequences")
        raise ValueError(
            f"{self.name}: this mixer is configured bidirectional (causal=False), so it has no "
            "decode state; call forward(x) on whole sequences, or build it with causal=True"
        )

    def check_state(self, state: State, batch_size: int) -> None:
        self.check_causal_for_state()
        if not isinstance(state, self.state_class) or state.mixer != self.name:
            got = f"{type(state).__name__} from mixer {getattr(state, 'mixer', '?')!r}"
            raise ValueError(
                f"{self.name}: state is a {got}; expected a {self.state_class.__name__} made by "
                f"{self.name}.init_state() or a previous forward of this mixer"
            )
        if state.batch_size != batch_size:
            raise ValueError(
                f"{self.name}: state has batch size {state.batch_size} but x has {batch_size}; "
                "use state.select(...) to slice a state by batch"
            )

    def param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
