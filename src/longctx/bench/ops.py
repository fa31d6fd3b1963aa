"""Time and peak memory of every op's forms, forward and forward+backward (``longctx bench``).

``run_bench(...)`` measures, for each op and each length T, the op's forms: ``chunk`` (the
training form), ``naive`` (the reference; skipped above ``naive_max_len``) and, for softmax
attention, ``sdpa``. Per (op, form, T) it records the median forward time (under ``no_grad``) and
forward+backward time (the gradient of ``(o * cotangent).sum()`` w.r.t. q, k, v [, g]) over
``repeats`` runs after one warm-up, the peak memory of each (``longctx.bench.memory``) and tokens/s.

An op is only reported when it is correct (the flash-linear-attention rule: no speed without a
passing test): before timing it, its module must import and its chunk (and sdpa) form must match
the naive form in float64 on CPU at T=67 — output and every input gradient, relative error
<= ``CHECK_TOL``. Otherwise it is recorded as ``import_error`` / ``check_failed`` and not timed.

The results JSON is rewritten atomically after every measurement, so an interrupted bench keeps
what it measured. Layout of ``bench.json``::

    {"meta": {"date", "device", "device_name", "torch", "threads", "dtype", "B", "H", "D",
              "lengths", "repeats", "naive_max_len", "timing", "memory", "loadavg_start",
              "loadavg_end", "complete"},
     "ops": {op: {"status": "ok" | "import_error" | "check_failed" | "pending",
                  "error": str | None, "check_rel_err": float | None,
                  "check_detail": {check: rel_err}, "params": {...},
                  "results": [{"form", "T", "chunk_size", "fwd_ms", "fwdbwd_ms",
                               "fwd_peak_bytes", "fwdbwd_peak_bytes", "tokens_per_s",
                               "fwdbwd_tokens_per_s"}],
                  "skipped": [{"form", "T", "reason"}]}}}
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from longctx.bench.memory import peak_memory_bytes
from longctx.bench.specs import SPECS, WINDOW, Form, Inputs, softmax_chunk_size
from longctx.errors import unknown_name
from longctx.ops.common import check_positive_int

OPS = tuple(SPECS)
FORMS = {name: spec.forms for name, spec in SPECS.items()}
CHECK_B, CHECK_T, CHECK_H, CHECK_D = 1, 67, 2, 16
CHECK_TOL = 1e-8
CHECK_SMALL = {"chunk_size": 16, "window": 24}  # second check: several chunks, window < T
JSON_NAME = "bench.json"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}
_MEMORY_TEXT = {"cpu": "torch.profiler allocation events; see longctx/bench/memory.py",
                "cuda": "torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
                        "memory allocated before the call; see longctx/bench/memory.py"}


class BenchError(ValueError):
    """Invalid bench arguments (lengths, sizes, device, dtype)."""


def _load_op_module(name: str) -> ModuleType:
    """Import the op's module ``longctx.ops.<module>`` (a seam for the tests to make an import
    fail)."""
    return importlib.import_module(f"longctx.ops.{SPECS[name].module}")


def _forms(name: str, mod: ModuleType, T: int, *, window: int = WINDOW,
           chunk_size: int | None = None) -> tuple[dict[str, Form], int]:
    """The op's forms as ``inputs -> o`` and the chunk size its chunk form uses.

    ``chunk_size=None``: the bench's choice for ``T`` (softmax attention: ``softmax_chunk_size``)."""
    if name not in SPECS:
        raise unknown_name("op", name, OPS)
    spec = SPECS[name]
    cs = chunk_size or spec.chunk_size(T)
    return spec.calls(mod, T, cs, window), cs


def _params(name: str) -> dict[str, Any]:
    """What the bench fixes for ``name`` (recorded in the JSON)."""
    spec = SPECS[name]
    cs: Any = spec.chunk_size(1)
    if spec.chunk_size(4096) != spec.chunk_size(4097):
        cs = {"T<=4096": spec.chunk_size(4096), "T>4096": spec.chunk_size(4097)}
    extra = {"naive_max_len": spec.naive_max_len} if spec.naive_max_len else {}
    return {"chunk_size": cs, **spec.params, **extra}


def _inputs(name: str, B: int, T: int, H: int, D: int, dtype: torch.dtype, device: torch.device,
            seed: int) -> Inputs:
    """The op's random inputs at ``(B, T, H, D)``, as leaves requiring grad (made in float32 on
    the CPU from ``seed``, then cast and moved, so every dtype and device sees the same values)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float32)

    made = SPECS[name].inputs(rand, B, T, H, D)
    return {k: t.to(device=device, dtype=dtype).requires_grad_() for k, t in made.items()}


def _cotangent(o: Tensor, seed: int) -> Tensor:
    """A fixed random cotangent shaped like ``o`` (so the backward is not the all-ones direction)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randn(o.shape, generator=gen, dtype=torch.float32).to(o.device, o.dtype)


def _fwdbwd(fn: Form, inputs: Inputs, cot: Tensor | None = None, seed: int = 0,
            allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    """Output and gradients of ``(o * cot).sum()`` w.r.t. every input (in the inputs' order).
    ``cot=None``: a fixed random one from ``seed``. ``allow_unused``: None for an input ``o`` does
    not depend on (a layer's parameter that a length does not reach) instead of an error."""
    o = fn(inputs)
    cot = _cotangent(o, seed) if cot is None else cot
    return (o.detach(), *torch.autograd.grad((o * cot).sum(), list(inputs.values()),
                                             allow_unused=allow_unused))


def _rel_err(ref: Tensor, out: Tensor) -> float:
    ref, out = ref.detach().double(), out.detach().double()
    if ref.shape != out.shape:
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def check_op(name: str, mod: ModuleType) -> dict[str, float]:
    """Relative errors (output and every gradient, the worst of them) of the op's fast forms
    against its naive form: float64, CPU, B=1, T=67, H=2, D=16, with the bench's settings and with
    ``CHECK_SMALL`` (several chunks and a tail; a window shorter than T)."""
    inputs = _inputs(name, CHECK_B, CHECK_T, CHECK_H, CHECK_D, torch.float64,
                     torch.device("cpu"), seed=1234)
    errs: dict[str, float] = {}
    for label, kw in (("", {}), ("[small]", CHECK_SMALL)):
        fns, _ = _forms(name, mod, CHECK_T, **kw)
        ref = _fwdbwd(fns["naive"], inputs, seed=1234)
        for form, fn in fns.items():
            if form == "naive" or (label and form == "sdpa"):
                continue
            out = _fwdbwd(fn, inputs, seed=1234)
            errs[form + label] = max(_rel_err(r, o) for r, o in zip(ref, out))
    return errs


def _time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _measure(fn: Form, name: str, B: int, T: int, H: int, D: int, dtype: torch.dtype,
             device: torch.device, repeats: int, memory: bool) -> dict[str, Any]:
    inputs = _inputs(name, B, T, H, D, dtype, device, seed=T)
    return measure_form(fn, inputs, B * T, device, repeats, memory, seed=T)


def measure_form(fn: Form, inputs: Inputs, tokens: int, device: torch.device, repeats: int,
                 memory: bool, seed: int, allow_unused: bool = False) -> dict[str, Any]:
    """Times and peak memory of ``fn(inputs)``: forward (under ``no_grad``) and forward+backward
    (gradients of ``(o * cot).sum()`` w.r.t. every input, ``cot`` fixed from ``seed``; with
    ``allow_unused``, inputs ``o`` does not depend on are skipped); a row of ``bench.json``
    without its ``form``, ``T`` and ``chunk_size``. ``tokens``: B * T."""
    with torch.no_grad():
        cot = _cotangent(fn(inputs), seed=seed)

    def fwd() -> None:
        with torch.no_grad():
            fn(inputs)

    def fwdbwd() -> None:
        _fwdbwd(fn, inputs, cot, allow_unused=allow_unused)

    row: dict[str, Any] = {"fwd_ms": _time_ms(fwd, repeats, device),
                           "fwdbwd_ms": _time_ms(fwdbwd, repeats, device)}
    row["fwd_peak_bytes"] = peak_memory_bytes(fwd, device) if memory else None
    row["fwdbwd_peak_bytes"] = peak_memory_bytes(fwdbwd, device) if memory else None
    row["tokens_per_s"] = tokens / (row["fwd_ms"] / 1e3)
    row["fwdbwd_tokens_per_s"] = tokens / (row["fwdbwd_ms"] / 1e3)
    return row


def _skip_reason(name: str, form: str, T: int, naive_max_len: int) -> str | None:
    if form != "naive":
        return None
    if T > naive_max_len:
        return (f"naive form is O(T^2) in memory or a token loop; T={T} > naive_max_len="
                f"{naive_max_len}")
    spec = SPECS[name]
    if spec.naive_max_len is not None and T > spec.naive_max_len:
        return (f"naive {name} is {spec.naive_cap_reason}; capped at T <= {spec.naive_max_len} "
                f"(T={T})")
    return None


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages (None where the OS has none): a busy machine skews timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def gate(entry: dict, name: str, check: Callable[[], dict[str, float]], what: str,
         **recorded: Callable[[], object]) -> bool:
    """The correctness gate before timing: run ``check`` (relative error per form / part), record
    it (and ``recorded``'s values) in ``entry`` and pass (status "ok") when every error is <=
    CHECK_TOL; else the entry says why (``what`` names the comparison) and the refusal is printed.
    A check that raises refuses too (nothing of ``recorded`` is kept)."""
    try:
        detail = check()
    except Exception as e:  # noqa: BLE001 - an op that raises on the check is not reported
        entry.update(status="check_failed", error=f"check raised {type(e).__name__}: {e}")
        print(f"bench: refusing to report {name}: correctness check failed: {entry['error']}")
        return False
    worst = max(detail.values(), default=None)
    entry.update(check_detail=detail, check_rel_err=worst, **{k: f() for k, f in recorded.items()})
    if worst is not None and not worst <= CHECK_TOL:  # also catches NaN
        bad = ", ".join(f"{f} {e:.2e}" for f, e in detail.items() if not e <= CHECK_TOL)
        entry.update(status="check_failed", error=f"{what}: relative error {bad} > {CHECK_TOL:.0e}")
        print(f"bench: refusing to report {name}: correctness check failed: {entry['error']}")
        return False
    entry["status"] = "ok"
    return True


def _write_json(data: dict, path: Path) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _positive(name: str, value: object) -> int:
    try:
        return check_positive_int(name, value)
    except ValueError as e:
        raise BenchError(str(e)) from None


def _validate(ops: Sequence[str] | None, lengths: Sequence[int], device: str | torch.device,
              dtype: str | torch.dtype, batch: int, heads: int, head_dim: int, repeats: int,
              naive_max_len: int, known: Sequence[str] = OPS,
              kind: str = "op") -> tuple[list[str], list[int], torch.device, torch.dtype]:
    """Checked arguments: ``ops`` (None: all of ``known``, names of ``kind``), the sorted
    distinct lengths, the device and the dtype; BenchError (UnknownNameError for a name) if not."""
    if isinstance(ops, str):
        ops = [ops]
    names = list(known) if not ops else list(dict.fromkeys(ops))
    for name in names:
        if name not in known:
            raise unknown_name(kind, name, known)
    if not lengths:
        raise BenchError("lengths must not be empty")
    lengths = [_positive("every length", T) for T in lengths]
    for what, value in (("batch", batch), ("heads", heads), ("head_dim", head_dim),
                        ("repeats", repeats)):
        _positive(what, value)
    if isinstance(naive_max_len, bool) or not isinstance(naive_max_len, int) or naive_max_len < 0:
        raise BenchError(f"naive_max_len must be an integer >= 0, got {naive_max_len!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise BenchError(f"unknown device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {device} but torch.cuda.is_available() is False")
    if isinstance(dtype, torch.dtype):
        dt = dtype
    elif dtype in _DTYPES:
        dt = _DTYPES[dtype]
    else:
        raise BenchError(f"unknown dtype {dtype!r}; known: {', '.join(_DTYPES)}")
    return names, sorted(dict.fromkeys(lengths)), dev, dt


def run_bench(ops: Sequence[str] | None, lengths: Sequence[int], device: str | torch.device,
              dtype: str | torch.dtype, batch: int, heads: int, head_dim: int, out_dir: Path,
              repeats: int = 3, memory: bool = True, naive_max_len: int = 8192,
              progress: bool = True) -> dict[str, Any]:
    """Benchmark ``ops`` (None: all of ``OPS``) at ``lengths``; write ``bench.json``, ``bench.md``
    and the plots into ``out_dir``. Returns ``{"json": Path, "markdown": Path, "plots": [Path]}``.
    """
    from tqdm.auto import tqdm

    names, lengths, dev, dt = _validate(ops, lengths, device, dtype, batch, heads, head_dim,
                                        repeats, naive_max_len)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / JSON_NAME
    data = new_results(names, dev, dt, batch, heads, head_dim, lengths, repeats, memory,
                       grads="every input", naive_max_len=naive_max_len)
    _write_json(data, json_path)

    # the gate: import and check every op first, so refusals are known before any timing
    modules: dict[str, ModuleType] = {}
    for name in names:
        entry = data["ops"][name]
        try:
            mod = _load_op_module(name)
        except Exception as e:  # noqa: BLE001 - any failure to import means: do not report
            entry.update(status="import_error", error=f"{type(e).__name__}: {e}")
            print(f"bench: refusing to report {name}: import failed: {entry['error']}")
            continue
        if gate(entry, name, partial(check_op, name, mod), f"fast form != naive (float64, T={CHECK_T})",
                params=partial(_params, name)):
            modules[name] = mod
    _write_json(data, json_path)

    jobs = [(name, T, form) for name in modules for T in lengths for form in FORMS[name]]
    bar = tqdm(jobs, desc="bench", unit="case", disable=not progress, dynamic_ncols=True)
    for name, T, form in bar:
        bar.set_postfix_str(f"{name} {form} T={T}")
        entry = data["ops"][name]
        reason = _skip_reason(name, form, T, naive_max_len)
        if reason is None:
            fns, cs = _forms(name, modules[name], T)
            try:
                row = _measure(fns[form], name, batch, T, heads, head_dim, dt, dev, repeats,
                               memory)
            except (torch.OutOfMemoryError, MemoryError) as e:
                reason = f"out of memory: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                entry["results"].append({"form": form, "T": T,
                                         "chunk_size": cs if form == "chunk" else None, **row})
        if reason is not None:
            entry["skipped"].append({"form": form, "T": T, "reason": reason})
        _write_json(data, json_path)
    bar.close()

    return finish(data, out_dir)


def new_results(names: Sequence[str], dev: torch.device, dt: torch.dtype, batch: int, heads: int,
                head_dim: int, lengths: list[int], repeats: int, memory: bool, grads: str,
                **extra: Any) -> dict[str, Any]:
    """The ``bench.json`` dict before any measurement: ``meta`` (``extra`` added to it) and a
    pending entry per name. ``grads``: what fwd+bwd differentiates w.r.t. (in ``meta.timing``)."""
    timing = ("torch.cuda.Event" if dev.type == "cuda" else "time.perf_counter") + (
        f"; median of {repeats} after 1 warm-up; fwd under torch.no_grad; fwd+bwd = autograd.grad"
        f" of (o * fixed random cotangent).sum() w.r.t. {grads}")
    return {
        "meta": {
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "device": str(dev), "device_name": _device_name(dev), "torch": torch.__version__,
            "python": platform.python_version(), "threads": torch.get_num_threads(),
            "dtype": str(dt).removeprefix("torch."), "B": batch, "H": heads, "D": head_dim,
            "lengths": lengths, "repeats": repeats, **extra,
            "timing": timing,
            "memory": _MEMORY_TEXT.get(dev.type, "see longctx/bench/memory.py") if memory
            else "not measured",
            "loadavg_start": _loadavg(), "loadavg_end": None,  # others' load skews timings
            "complete": False,
        },
        "ops": {name: {"status": "pending", "error": None, "check_rel_err": None,
                       "check_detail": {}, "params": {}, "results": [], "skipped": []}
                for name in names},
    }


def finish(data: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Mark the run complete, rewrite ``bench.json``, write ``bench.md`` and the plots."""
    from longctx.bench.plots import write_markdown, write_plots

    data["meta"].update(complete=True, loadavg_end=_loadavg())
    json_path = out_dir / JSON_NAME
    _write_json(data, json_path)
    md = write_markdown(data, out_dir / "bench.md")
    plots = write_plots(data, out_dir)
    return {"json": json_path, "markdown": md, "plots": plots}


__all__ = ["FORMS", "OPS", "BenchError", "check_op", "finish", "gate", "measure_form", "new_results", "run_bench",
           "softmax_chunk_size"]
