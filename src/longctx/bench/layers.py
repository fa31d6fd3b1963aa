"""Time and peak memory of mixer layers, forward and forward+backward (``longctx bench --layers``).

The op bench (``longctx.bench.ops``) times pure functions; some methods exist only as layers
(Block-Recurrent Transformer, RMT, MEGA, S4's DPLR kernel). ``run_layer_bench(...)`` times a
registered mixer built by ``longctx.layers.build(name, d_model=H * D, n_heads=H, **options)`` on
``x [B, T, d_model]``: the training form ``layer(x)`` (no state), forward under ``no_grad`` and
forward+backward (gradients w.r.t. ``x`` and every parameter the output depends on), with the op
bench's timing, peak-memory pass, JSON layout, Markdown and plots (``ops.measure_form``,
``ops.new_results``, ``ops.finish``). A layer's *forms* are configurations of it
(``LAYER_FORMS``: MEGA chunked / full attention, S4 bilinear / ZOH); a mixer not listed there has
one form, ``layer``, with its defaults.

The JSON is ``bench.json`` of the op bench (layers sit under its ``"ops"`` key, so the plots and
``longctx report --bench`` read it unchanged), with ``meta.kind = "layers"`` and ``meta.d_model``;
an entry's ``params`` maps each form to its build options.

The gate (no speed without a passing check): before timing, each form must run in float64 on CPU
at T=67 and give the same output and gradients (x and parameters) in one pass as in two pieces
carrying the decode state (``forward(x[:, :29], s)`` then ``forward(x[:, 29:], s)``), relative
error <= ``CHECK_TOL``. Bidirectional-only mixers have no state: their check is only that the
forward+backward runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from longctx.bench.ops import (
    JSON_NAME,
    _cotangent,
    _fwdbwd,
    _rel_err,
    _validate,
    _write_json,
    finish,
    gate,
    measure_form,
    new_results,
)
from longctx.bench.specs import Form, Inputs
from longctx.layers import Mixer, build, config_class, names

CHECK_T, CHECK_SPLIT = 67, 29     # the gate's length and where it splits the sequence
CHECK_HEADS, CHECK_HEAD_DIM = 2, 16
CHUNK_OPTIONS = ("segment_len", "block_size", "chunk_size")  # the first set: a row's chunk_size


@dataclass(frozen=True)
class LayerForm:
    """One configuration of a layer: build options and a length cap (with the reason)."""

    options: dict[str, Any] = field(default_factory=dict)  # passed to longctx.layers.build
    max_len: int | None = None  # longer T are skipped ...
    cap_reason: str = ""        # ... because of this


LAYER_FORMS: dict[str, dict[str, LayerForm]] = {
    "mega": {
        "chunk": LayerForm({"chunk_size": 128}),
        "full": LayerForm({"chunk_size": 0}, max_len=16384,
                          cap_reason="full attention keeps [T, T] scores for the backward "
                                     "(~0.4 GB at T=4096 on CPU, x16 per 4x T)"),
    },
    "s4": {
        "bilinear": LayerForm({"discretization": "bilinear"}, max_len=4096,
                              cap_reason="the Cauchy kernel materialises [d_model, N, T] complex "
                                         "tensors (3.2 GB fwd+bwd at T=4096, d_model=256, N=64; "
                                         "~13 GB at 16384)"),
        "zoh": LayerForm({"discretization": "zoh"}),
    },
    "h3": {
        "layer": LayerForm(max_len=4096,
                           cap_reason="the SSM runs on d_model * head_dim channels of length 2T "
                                      "(3.4 GB fwd+bwd at T=4096 with head_dim 64; ~13 GB at "
                                      "16384); the heads16 form reaches 16384"),
        "heads16": LayerForm({"n_heads": 16}),
    },
}
LAYERS = tuple(names())


def layer_forms(name: str) -> dict[str, LayerForm]:
    """The forms benchmarked for mixer ``name`` (one, ``layer``, unless ``LAYER_FORMS`` says)."""
    return LAYER_FORMS.get(name, {"layer": LayerForm()})


def build_layer(name: str, form: str, d_model: int, n_heads: int, dtype: torch.dtype,
                device: torch.device, seed: int = 0) -> Mixer:
    """The mixer in ``form``, its parameters from ``seed`` (the global RNG is left as it was);
    bidirectional-only mixers are built with ``causal=False``."""
    opts: dict[str, Any] = {"n_heads": n_heads, **layer_forms(name)[form].options}
    if True not in config_class(name).causal_modes:
        opts["causal"] = False
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = build(name, d_model=d_model, **opts)
    return layer.to(device=device, dtype=dtype)


def _call(layer: Mixer) -> Form:
    """``inputs -> layer(inputs["x"])``: the other inputs are the layer's own parameters, listed
    so that fwd+bwd differentiates w.r.t. them."""
    return lambda i: layer(i["x"])[0]


def _layer_inputs(layer: Mixer, x: Tensor) -> Inputs:
    """``{"x": x, **parameters}``: fwd+bwd differentiates w.r.t. all of them (those a length
    does not reach, e.g. the recurrent state's with one block, get no gradient)."""
    return {"x": x, **dict(layer.named_parameters())}


def check_layer(name: str, form: str) -> dict[str, float]:
    """Relative errors of the two-piece stateful forward against one pass (float64, CPU, B=1,
    T=67, d_model=32): ``{"split": worst of output, dx and the parameter gradients}``; ``{}``
    for a bidirectional-only mixer (which has no state) once its forward+backward has run.

    ``init_state`` need not differentiate the parameters of the initial state (RMT's
    ``memory_init``): gradients the two-piece pass does not define are left out."""
    layer = build_layer(name, form, CHECK_HEADS * CHECK_HEAD_DIM, CHECK_HEADS, torch.float64,
                        torch.device("cpu"), seed=1234)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(1, CHECK_T, CHECK_HEADS * CHECK_HEAD_DIM, generator=gen,
                    dtype=torch.float64).requires_grad_()
    inputs = _layer_inputs(layer, x)
    ref = _fwdbwd(_call(layer), inputs, seed=1234, allow_unused=True)
    if not layer.config.causal:
        return {}
    s = layer.init_state(1, dtype=torch.float64)
    y1, s = layer(x[:, :CHECK_SPLIT], s)
    y2, _ = layer(x[:, CHECK_SPLIT:], s)
    y = torch.cat([y1, y2], dim=1)
    grads = torch.autograd.grad((y * _cotangent(y, 1234)).sum(), list(inputs.values()),
                                allow_unused=True)
    pairs = [(ref[0], y)] + [(torch.zeros_like(g) if r is None else r, g)  # None: zero
                             for r, g in zip(ref[1:], grads) if g is not None]
    return {"split": max(_rel_err(r, o) for r, o in pairs)}



def _check_forms(name: str, forms: dict[str, LayerForm]) -> dict[str, float]:
    """``check_layer`` of every form, keyed ``"<form>/<part>"``."""
    return {f"{f}/{k}": e for f in forms for k, e in check_layer(name, f).items()}


def _chunk_size(layer: Mixer) -> int | None:
    """The layer's segment / block / chunk size (None: none, or MEGA's 0 = full attention)."""
    for opt in CHUNK_OPTIONS:
        if getattr(layer.config, opt, 0):
            return int(getattr(layer.config, opt))
    return None


def run_layer_bench(layers: Sequence[str] | None, lengths: Sequence[int],
                    device: str | torch.device, dtype: str | torch.dtype, batch: int, heads: int,
                    head_dim: int, out_dir: Path, repeats: int = 3, memory: bool = True,
                    progress: bool = True) -> dict[str, Any]:
    """Benchmark mixer ``layers`` (None: every registered mixer) at ``lengths`` with
    ``d_model = heads * head_dim``; write ``bench.json``, ``bench.md`` and the plots into
    ``out_dir``. Returns ``{"json": Path, "markdown": Path, "plots": [Path]}``."""
    from tqdm.auto import tqdm

    names_, lengths, dev, dt = _validate(layers, lengths, device, dtype, batch, heads, head_dim,
                                         repeats, 0, known=LAYERS, kind="mixer")
    d_model = heads * head_dim
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / JSON_NAME
    data = new_results(names_, dev, dt, batch, heads, head_dim, lengths, repeats, memory,
                       grads="x and every parameter", kind="layers", d_model=d_model)
    _write_json(data, json_path)

    ok: list[str] = []
    for name in names_:  # the gate, before any timing
        entry = data["ops"][name]
        forms = layer_forms(name)
        entry["params"] = {f: {"n_heads": heads, **lf.options,
                               **({"max_len": lf.max_len} if lf.max_len else {})}
                           for f, lf in forms.items()}
        if gate(entry, name, partial(_check_forms, name, forms),
                f"one pass != two pieces with state (float64, T={CHECK_T})"):
            ok.append(name)
    _write_json(data, json_path)

    jobs = [(name, form) for name in ok for form in layer_forms(name)]
    bar = tqdm(total=len(jobs) * len(lengths), desc="bench", unit="case", disable=not progress,
               dynamic_ncols=True)
    for name, form in jobs:
        entry, lf = data["ops"][name], layer_forms(name)[form]
        layer = build_layer(name, form, d_model, heads, dt, dev)
        for T in lengths:
            bar.set_postfix_str(f"{name} {form} T={T}")
            reason = (f"{name} {form}: {lf.cap_reason}; capped at T <= {lf.max_len} (T={T})"
                      if lf.max_len is not None and T > lf.max_len else None)
            if reason is None:
                gen = torch.Generator().manual_seed(T)
                x = torch.randn(batch, T, d_model, generator=gen, dtype=torch.float32)
                x = x.to(device=dev, dtype=dt).requires_grad_()
                try:
                    row = measure_form(_call(layer), _layer_inputs(layer, x), batch * T, dev,
                                       repeats, memory, seed=T, allow_unused=True)
                except (torch.OutOfMemoryError, MemoryError) as e:
                    reason = f"out of memory: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                else:
                    entry["results"].append({"form": form, "T": T,
                                             "chunk_size": _chunk_size(layer), **row})
            if reason is not None:
                entry["skipped"].append({"form": form, "T": T, "reason": reason})
            _write_json(data, json_path)
            bar.update()
    bar.close()
    return finish(data, out_dir)


__all__ = ["LAYERS", "LAYER_FORMS", "LayerForm", "build_layer", "check_layer", "layer_forms",
           "run_layer_bench"]
