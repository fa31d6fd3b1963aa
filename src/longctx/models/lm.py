"""``LongCtxLM``: embedding -> N pre-norm blocks -> tied head (the nanoGPT / Llama layout).

Each block is ``x + mixer(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))`` (Shazeer 2020 for SwiGLU).
``mixer`` may be one name for every layer or a list with one name per layer (hybrids).
Position information lives in the mixers (RoPE inside the softmax mixers), so the model itself
only threads each layer's decode state.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from longctx.cache.attention import PolicyKVState
from longctx.cache.policy import CachePolicy, LandmarkPolicy
from longctx.layers import Mixer, State, build, config_class
from longctx.layers.landmark_attention import LandmarkAttention
from longctx.layers.short_conv import ConvState, ShortConv
from longctx.layers.softmax_attention import SoftmaxAttention
from longctx.layers.tree import check_parents, tree_depths


def layer_mixers(owner: str, mixer: str | list[str], n_layers: int, mixer_options: dict) -> list[str]:
    """A model config's ``mixer`` as one registered name per layer (a single name repeats);
    ``mixer_options`` may only name mixers some layer uses. Errors name ``owner``'s field."""
    mixers = [mixer] * n_layers if isinstance(mixer, str) else list(mixer)
    if len(mixers) != n_layers:
        raise ValueError(f"{owner}.mixer lists {len(mixers)} mixers but n_layers={n_layers}")
    for name in mixer_options:
        if name not in mixers:
            raise ValueError(f"{owner}.mixer_options has options for {name!r}, which no layer uses")
    for name in mixers:
        config_class(name)  # unknown name -> error listing the known ones
    return mixers


@dataclass
class LMConfig:
    vocab_size: int = 256  # tokens
    d_model: int = 128  # residual width
    n_layers: int = 2  # blocks
    n_heads: int = 4  # heads of every mixer
    mixer: str | list[str] = "softmax_attention"  # one name, or one per layer (hybrid)
    mixer_options: dict[str, dict] = field(default_factory=dict)  # per mixer name: extra config
    mlp_ratio: float = 4.0  # SwiGLU hidden = mlp_ratio * d_model * 2/3, rounded to 8 (Llama)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    tie_embeddings: bool = True  # output head shares the embedding matrix
    short_conv: int = 0  # kernel of a causal depthwise conv + residual before each mixer (0 = off)
    ff_chunk_size: int = 0  # > 0: the MLP runs over sequence chunks of this size (O(chunk) memory)

    def __post_init__(self) -> None:
        self.mixer = layer_mixers("LMConfig", self.mixer, self.n_layers, self.mixer_options)
        if not isinstance(self.ff_chunk_size, int) or self.ff_chunk_size < 0:
            raise ValueError(f"LMConfig.ff_chunk_size must be 0 (off) or a positive int, got {self.ff_chunk_size!r}")
        if self.short_conv == 1 or self.short_conv < 0:
            raise ValueError(f"LMConfig.short_conv must be 0 (off) or a kernel size >= 2, got {self.short_conv}")

    def mixer_kwargs(self, name: str) -> dict:
        return {"d_model": self.d_model, "n_heads": self.n_heads, **self.mixer_options.get(name, {})}

    def to_dict(self) -> dict:
        return asdict(self)


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(mlp_ratio * d_model * 2 / 3)
        hidden = 8 * math.ceil(hidden / 8)
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


@dataclass
class LMState:
    """Decode state of a whole LM: one mixer state per layer (+ short-conv buffers if used)."""

    mixers: list[State]
    convs: list[ConvState | None]

    def to(self, device=None, dtype=None) -> LMState:
        return LMState([s.to(device, dtype) for s in self.mixers],
                       [c.to(device, dtype) if c is not None else None for c in self.convs])

    def select(self, index) -> LMState:
        return LMState([s.select(index) for s in self.mixers],
                       [c.select(index) if c is not None else None for c in self.convs])

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.mixers) + sum(c.nbytes() for c in self.convs if c is not None)


def chunked_feed_forward(fn, x: Tensor, chunk_size: int) -> Tensor:
    """``fn`` applied position-wise to ``x [B, T, d]`` in sequence chunks of ``chunk_size``.

    A position-wise function commutes with slicing the sequence, so the result equals ``fn(x)``;
    only one chunk's hidden activations ``[B, chunk, hidden]`` exist at a time (Kitaev et al. 2020,
    Reformer §3 "Chunking"). With autograd on, each chunk is checkpointed, so the backward keeps
    just the chunk inputs and recomputes the hidden layer one chunk at a time: activation memory
    O(chunk * hidden) instead of O(T * hidden), for one extra forward of the MLP.
    """
    if chunk_size <= 0 or x.shape[1] <= chunk_size:
        return fn(x)
    grad = torch.is_grad_enabled()
    outs = [checkpoint(fn, xc, use_reentrant=False) if grad else fn(xc)
            for xc in x.split(chunk_size, dim=1)]
    return torch.cat(outs, dim=1)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, config: LMConfig) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.conv = ShortConv(config.d_model, config.short_conv) if config.short_conv else None
        self.mixer = mixer
        self.norm2 = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config.d_model, config.mlp_ratio)
        self.ff_chunk_size = config.ff_chunk_size

    def feed_forward(self, x: Tensor) -> Tensor:
        """``x + MLP(RMSNorm(x))``, in sequence chunks when ``ff_chunk_size > 0``."""
        return x + chunked_feed_forward(self._norm_mlp, x, self.ff_chunk_size)

    def _norm_mlp(self, x: Tensor) -> Tensor:
        return self.mlp(self.norm2(x))

    def forward(self, x: Tensor, state: State | None, conv_state: ConvState | None):
        h = self.norm1(x)
        if self.conv is not None:
            h, conv_state = self.conv(h, conv_state)
        h, state = self.mixer(h, state)
        x = x + h
        return self.feed_forward(x), state, conv_state

    def forward_states(self, x: Tensor, state: State, conv_state: ConvState | None):
        """As ``forward`` with a state, but returns the states after each of the T positions."""
        h = self.norm1(x)
        conv_states: list[ConvState | None] = [None] * x.shape[1]
        if self.conv is not None:
            h, conv_states = self.conv.forward_states(h, conv_state)
        h, states = _mixer_states(self.mixer, h, state)
        x = x + h
        return self.feed_forward(x), states, conv_states

    def forward_tree(self, x: Tensor, parents: Tensor, state: State, conv_state: ConvState | None):
        """``x [B, N, d]`` tree nodes -> ``[B, N, d]``; every node sees the state + its ancestors."""
        h = self.norm1(x)
        if self.conv is not None:
            h = self.conv.forward_tree(h, parents, conv_state)
        if hasattr(self.mixer, "forward_tree"):
            h = self.mixer.forward_tree(h, parents, state)
        else:
            h = _tree_by_depth(self.mixer, h, parents, state)
        x = x + h
        return self.feed_forward(x)


def _mixer_states(mixer: Mixer, h: Tensor, state: State) -> tuple[Tensor, list[State]]:
    """The mixer's output and its state after each position: natively where the mixer has
    ``forward_states`` (a KV cache is sliced), else exactly by T decode steps of one token."""
    if hasattr(mixer, "forward_states"):
        return mixer.forward_states(h, state)
    ys, states = [], []
    for t in range(h.shape[1]):
        y, state = mixer(h[:, t:t + 1], state)
        ys.append(y)
        states.append(state)
    return (torch.cat(ys, dim=1) if ys else h.clone()), states


def _tree_by_depth(mixer: Mixer, h: Tensor, parents: Tensor, state: State) -> Tensor:
    """Exact tree pass for any mixer: depth by depth, each node continues its parent's state.

    The nodes of one depth run as one batch of ``B * n_d`` single-token decode steps; a node's
    state is its parent's (``State.select``), so siblings never see each other. A loop over the
    tree depth, not over the tokens.
    """
    B, N, d = h.shape
    depth = tree_depths(parents)  # [N]
    local = torch.zeros(N, dtype=torch.int64, device=h.device)  # index of a node in its depth
    y = h.new_zeros(B, N, d)
    rows = torch.arange(B, device=h.device)[:, None]  # [B, 1]
    n_prev = 1
    for level in range(int(depth.max()) + 1 if N else 0):
        nodes = (depth == level).nonzero().squeeze(1)  # [n]
        n = nodes.numel()
        src = torch.zeros(n, dtype=torch.int64, device=h.device) if level == 0 else local[parents[nodes]]
        s = state.select((rows * n_prev + src[None, :]).reshape(-1))  # batch (b, node) -> B * n
        y_d, state = mixer(h[:, nodes].reshape(B * n, 1, d), s)
        y[:, nodes] = y_d.reshape(B, n, d)
        local[nodes] = torch.arange(n, device=h.device)
        n_prev = n
    return y


class LongCtxLM(nn.Module):
    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            Block(build(name, **config.mixer_kwargs(name)), config) for name in config.mixer
        )
        for name, m in zip(config.mixer, self.mixers):
            if not m.config.causal:
                raise ValueError(
                    f"LongCtxLM is a causal language model, but mixer {name!r} is configured "
                    "bidirectional (causal=False): next-token prediction would see the token it "
                    "predicts; use a causal mixer (or causal=True where the method has one)"
                )
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    @property
    def mixers(self) -> list[Mixer]:
        return [b.mixer for b in self.blocks]

    def init_state(self, batch_size: int, device=None, dtype=None,
                   cache: CachePolicy | LandmarkPolicy | None = None) -> LMState:
        """The empty decode state of every layer.

        ``cache``: a policy (``longctx.cache``: ``window(w)``, ``sinks(n_sink, w)``, ``full()``)
        for the softmax-attention layers, or ``landmark(top_k)`` for the landmark-attention
        layers; other layers keep their own state (already bounded for recurrent and
        sliding-window mixers). Policy buffers are updated in place.
        """
        device = device or self.embed.weight.device
        target = LandmarkAttention if isinstance(cache, LandmarkPolicy) else SoftmaxAttention
        if cache is not None and not any(isinstance(m, target) for m in self.mixers):
            raise ValueError(f"cache policy {cache.describe()}: the model has no {target.name} "
                             f"layer to apply it to (mixers: {sorted(set(self.config.mixer))})")

        def layer_state(m: Mixer) -> State:
            if isinstance(cache, LandmarkPolicy) and isinstance(m, LandmarkAttention):
                return dataclasses.replace(m.init_state(batch_size, device, dtype), top_k=cache.top_k)
            if isinstance(cache, CachePolicy) and isinstance(m, SoftmaxAttention):
                return PolicyKVState.empty(m, batch_size, cache, device, dtype)
            return m.init_state(batch_size, device, dtype)

        return LMState(
            [layer_state(m) for m in self.mixers],
            [b.conv.init_state(batch_size, device, dtype) if b.conv is not None else None for b in self.blocks],
        )

    def state_size(self, batch_size: int, seqlen: int, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of decode state of all layers after ``seqlen`` tokens."""
        convs = sum(b.conv.state_size(batch_size, dtype) for b in self.blocks if b.conv is not None)
        return convs + sum(m.state_size(batch_size, seqlen, dtype) for m in self.mixers)

    def forward(self, idx: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState | None]:
        """``idx [B, T]`` token ids -> ``logits [B, T, vocab]``; with ``state``, continue it."""
        self._check(idx, state)
        x, state = self.run_blocks(self.embed(idx), state)  # [B, T, d_model]
        return self.head(self.norm(x)), state  # [B, T, vocab]

    def run_blocks(self, x: Tensor, state: LMState | None = None) -> tuple[Tensor, LMState | None]:
        """The block stack alone: ``x [B, T, d_model]`` (embeddings) -> ``[B, T, d_model]``, the
        last block's output before the final norm; with ``state``, continue it (else ``None``).

        Models that feed the stack more than token embeddings (RMT's memory tokens) call this.
        """
        mixers, convs = [], []
        for i, block in enumerate(self.blocks):
            s = None if state is None else state.mixers[i]
            c = None if state is None else state.convs[i]
            x, s, c = block(x, s, c)
            mixers.append(s)
            convs.append(c)
        return x, (LMState(mixers, convs) if state is not None else None)

    def forward_states(self, idx: Tensor, state: LMState) -> tuple[Tensor, list[LMState]]:
        """``idx [B, T]`` continuing ``state`` -> ``(logits [B, T, vocab], states)``.

        ``states[t]`` is the decode state after ``idx[:, :t + 1]``: a speculative decoder keeps
        the one of the last accepted token instead of re-running the accepted prefix. KV caches
        and conv buffers are sliced (views); mixers without ``forward_states`` take T decode steps.
        """
        self._check(idx, state, required=True)
        x = self.embed(idx)  # [B, T, d_model]
        per_layer = []
        for i, block in enumerate(self.blocks):
            x, s, c = block.forward_states(x, state.mixers[i], state.convs[i])
            per_layer.append((s, c))
        states = [LMState([s[t] for s, _ in per_layer], [c[t] for _, c in per_layer])
                  for t in range(idx.shape[1])]
        return self.head(self.norm(x)), states

    def forward_tree(self, idx: Tensor, parents: Tensor, state: LMState) -> Tensor:
        """Verify a token tree in one call: ``idx [B, N]`` node tokens, ``parents [N]`` int64
        (``parents[i] < i``; -1 = child of the last token in ``state``) -> ``logits [B, N, vocab]``.

        Node i's logits are those the chain ``state + ancestors(i) + i`` would give. ``state`` is
        not changed. Mixers with ``forward_tree`` do it natively (tree attention mask, unfolded
        conv; You et al. 2024, §4.2), others depth by depth from their parent's state.
        """
        self._check(idx, state, required=True)
        if check_parents(parents) != idx.shape[1]:
            raise ValueError(f"LongCtxLM.forward_tree: parents has {parents.shape[0]} nodes, idx "
                             f"{idx.shape[1]}")
        parents = parents.to(idx.device)
        x = self.embed(idx)  # [B, N, d_model]
        for i, block in enumerate(self.blocks):
            x = block.forward_tree(x, parents, state.mixers[i], state.convs[i])
        return self.head(self.norm(x))  # [B, N, vocab]

    def _check(self, idx: Tensor, state: LMState | None, required: bool = False) -> None:
        if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            got = f"{idx.dtype} {list(idx.shape)}" if isinstance(idx, Tensor) else type(idx).__name__
            raise ValueError(f"LongCtxLM: idx must be integer token ids [B, T], got {got}")
        if state is None and required:
            raise ValueError("LongCtxLM: a state is required (model.init_state(batch_size))")
        if state is not None and not isinstance(state, LMState):
            raise ValueError(f"LongCtxLM: state must be an LMState from init_state(), got {type(state).__name__}")
        if state is not None and len(state.mixers) != len(self.blocks):
            raise ValueError(f"LongCtxLM: state has {len(state.mixers)} layers, the model {len(self.blocks)}")

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 cache: CachePolicy | None = None) -> Tensor:
        """Prefill ``idx [B, T]`` in one forward, then decode token by token from the states.

        ``temperature == 0`` is greedy. ``cache``: a KV-cache policy for the softmax-attention
        layers (see ``init_state``). Returns ``[B, T + max_new_tokens]``.
        """
        state = self.init_state(idx.shape[0], cache=cache)
        logits, state = self(idx, state)
        out = [idx]
        for i in range(max_new_tokens):
            nxt = _sample(logits[:, -1], temperature, top_k, generator)  # [B, 1]
            out.append(nxt)
            if i + 1 < max_new_tokens:
                logits, state = self(nxt, state)
        return torch.cat(out, dim=1)


def _sample(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)
