"""GPU kernels side by side: ours (Triton), flash-linear-attention's and SDPA (FlashAttention) on
the same inputs in one run (``longctx bench --device cuda --compare fla,sdpa``).

For each op and length: forward and forward+backward time (median of ``triton.testing.do_bench``),
the relative error of our output against fla's where fla runs, and the HBM floor of the forward
(q, k, v read once, o written once, at the copy bandwidth measured in the same run). An op a
library refuses or fails on is recorded with its error, not dropped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

KERNEL_OPS = ("linear_attention", "simple_gla", "retention", "ssd", "gla", "deltanet",
              "gated_deltanet", "log_linear", "log_linear_gdn")
# log_linear: log-linear attention over a scalar decay (the log-linear Mamba-2 core; Guo et al.
# 2025) and log_linear_gdn over Gated DeltaNet (the public op, input checks included), with
# L = log2(T) + 1 levels; the delta-rule ops take unit-norm keys and beta in (0, 1).


def _ours(op: str) -> Callable[..., Tensor]:
    from longctx.ops.common.triton_delta import delta_rule_chunk
    from longctx.ops.common.triton_gla import gla_chunk
    from longctx.ops.common.triton_log_linear import log_linear_scalar_decay_chunk
    from longctx.ops.common.triton_scalar_decay import scalar_decay_chunk
    from longctx.ops.log_linear import chunk_log_linear_gated_deltanet
    from longctx.ops.mamba2 import chunk_ssd

    scale = lambda q: q.shape[-1] ** -0.5
    ops: dict[str, Callable[..., Tensor]] = {
        "linear_attention": lambda q, k, v, g: scalar_decay_chunk(q, k, v, None, scale=scale(q))[0],
        "simple_gla": lambda q, k, v, g: scalar_decay_chunk(q, k, v, g, scale=scale(q))[0],
        "retention": lambda q, k, v, g: scalar_decay_chunk(q, k, v, g, scale=scale(q))[0],
        "ssd": lambda x, dt, A, B, C: chunk_ssd(x, dt, A, B, C, backend="triton")[0],
        "gla": lambda q, k, v, g: gla_chunk(q, k, v, g, scale=scale(q))[0],
        "deltanet": lambda q, k, v, beta: delta_rule_chunk(q, k, v, beta, scale=scale(q))[0],
        "gated_deltanet": lambda q, k, v, g, beta: delta_rule_chunk(q, k, v, beta, g, scale=scale(q))[0],
        "log_linear": lambda q, k, v, g, lam: log_linear_scalar_decay_chunk(q * scale(q), k, v, g, lam),
        "log_linear_gdn": lambda q, k, v, g, beta, lam: chunk_log_linear_gated_deltanet(
            q, k, v, g, beta, lam, backend="triton")[0],
    }
    if op not in ops:
        raise ValueError(f"unknown kernel op {op!r}; choose from {', '.join(KERNEL_OPS)}")
    return ops[op]


# fla backward passes not timed, and why (a hang cannot be timed out inside the process)
FLA_SKIP_BACKWARD = {"gla": "skipped: fla 0.6.0's chunk_gla backward did not finish in 7 minutes on "
                            "H100 / Triton 3.6 (issue 9)"}


def _fla(op: str) -> Callable[..., Tensor] | None:
    """fla's function for ``op`` (same layout [B, T, H, D]), or None where fla has none."""
    if op == "linear_attention":
        from fla.ops.linear_attn import chunk_linear_attn

        return lambda q, k, v, g: chunk_linear_attn(q, k, v, normalize=False)[0]
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        return lambda q, k, v, g: chunk_simple_gla(q, k, v, g)[0]
    if op == "gla":
        from fla.ops.gla import chunk_gla

        return lambda q, k, v, g: chunk_gla(q, k, v, g)[0]
    if op == "deltanet":
        from fla.ops.delta_rule import chunk_delta_rule

        return lambda q, k, v, beta: chunk_delta_rule(q, k, v, beta)[0]
    if op == "gated_deltanet":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        return lambda q, k, v, g, beta: chunk_gated_delta_rule(q, k, v, g, beta)[0]
    if op == "log_linear":
        from fla.ops.log_linear_attn import chunk_log_linear_attn

        return lambda q, k, v, g, lam: chunk_log_linear_attn(q, k, v, g, lam, scale=None)[0]
    return None  # retention: fla's g_gamma path autotunes anew (minutes); simple_gla covers it


def _inputs(op: str, B: int, T: int, H: int, D: int, dtype: torch.dtype, seed: int,
            device: str = "cuda") -> list[Tensor]:
    """``op``'s inputs (the order its functions take them), gates in float32 (float64 for float64)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    f32 = torch.float64 if dtype == torch.float64 else torch.float32

    def rand(*shape: int, dt: torch.dtype = dtype) -> Tensor:
        return torch.randn(*shape, device=device, dtype=dt, generator=gen)

    if op == "ssd":  # Mamba-2 with P = N = D, one group
        x = rand(B, T, H, D)
        dt = torch.nn.functional.softplus(rand(B, T, H, dt=f32) - 2)
        A = -torch.rand(H, device=device, dtype=f32, generator=gen) - 0.5
        return [x, dt, A, rand(B, T, 1, D) * D ** -0.5, rand(B, T, 1, D) * D ** -0.5]
    q, k, v = rand(B, T, H, D), rand(B, T, H, D) * D ** -0.5, rand(B, T, H, D)
    gate = lambda *s: torch.nn.functional.logsigmoid(rand(*s, dt=f32) + 4) / 16
    L = max(T - 1, 1).bit_length() + 1
    lam = lambda: torch.nn.functional.softplus(rand(B, T, H, L, dt=f32)).to(dtype)
    if op in ("deltanet", "gated_deltanet", "log_linear_gdn"):
        k = torch.nn.functional.normalize(k.to(f32), dim=-1).to(dtype)
        beta = torch.sigmoid(rand(B, T, H, dt=f32)).to(dtype)
        if op == "log_linear_gdn":
            return [q, k, v, gate(B, T, H), beta, lam()]
        return [q, k, v, beta] if op == "deltanet" else [q, k, v, gate(B, T, H), beta]
    if op == "gla":
        return [q, k, v, gate(B, T, H, D)]
    if op == "log_linear":
        return [q, k, v, gate(B, T, H), lam()]
    if op == "retention":  # RetNet's fixed decays, one per head, given per token
        gamma = 1 - 2.0 ** (-5 - torch.arange(H, device=device, dtype=f32))
        g = gamma.log().view(1, 1, H).expand(B, T, H).contiguous()
    else:
        g = gate(B, T, H)
    return [q, k, v, g]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, g: Tensor) -> Tensor:
    o = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)


def _timed(fn: Callable[..., Tensor], inputs: list[Tensor], backward: bool) -> float:
    import triton.testing

    diff = [t.requires_grad_() for t in inputs if t.is_floating_point() and t.dim() >= 3]
    if not backward:
        def run() -> None:
            with torch.no_grad():
                fn(*inputs)
    else:
        o = fn(*inputs)
        do = torch.randn_like(o)

        def run() -> None:
            torch.autograd.grad(fn(*inputs), diff, do, allow_unused=True)
    return float(triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median"))


def _copy_bandwidth() -> float:
    """Device-to-device copy bandwidth (bytes read + written per second), measured now."""
    import triton.testing

    x = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=25, rep=100, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _entry(fn: Callable[..., Tensor] | None, inputs: list[Tensor], backward: bool) -> dict[str, Any]:
    if fn is None:
        return {"ms": None, "error": "not available"}
    try:
        return {"ms": _timed(fn, inputs, backward)}
    except Exception as e:  # noqa: BLE001 - a library refusing this stack is a result, not a crash
        torch.cuda.synchronize()
        return {"ms": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}


def run_kernel_bench(
    ops: Sequence[str] = KERNEL_OPS,
    lengths: Sequence[int] = (4096, 16384, 65536),
    compare: Sequence[str] = ("fla", "sdpa"),
    *,
    B: int = 1,
    H: int = 16,
    D: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    out: str | Path | None = None,
    progress: bool = True,
    isolate: bool = True,
) -> dict[str, Any]:
    """Time our kernels against ``compare`` libraries on CUDA; returns (and writes) the JSON.
    ``isolate``: each (op, length) in its own process (``_isolated``), so a faulting kernel costs
    one row, not the run."""
    if not torch.cuda.is_available():
        raise RuntimeError("longctx bench --compare needs a CUDA device")
    for op in ops:
        _ours(op)  # unknown names fail before any timing
    bad = set(compare) - {"fla", "sdpa"}
    if bad:
        raise ValueError(f"--compare takes fla and / or sdpa, got {sorted(bad)}")
    bw = _copy_bandwidth()
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "triton": __import__("triton").__version__, "B": B, "H": H, "D": D, "dtype": str(dtype),
        "copy_bandwidth_GBps": bw / 1e9, "date": time.strftime("%Y-%m-%d"), "rows": [],
    }
    try:
        import fla

        results["fla"] = fla.__version__
    except ImportError:
        results["fla"] = None
    run = _isolated if isolate else (lambda fn, *a: fn(*a))
    for T in lengths:
        for op in ops:
            if progress:
                print(f"  [{time.strftime('%H:%M:%S')}] {op} T={T}", flush=True)
            row = {"op": op, "T": T, **run(_op_row, op, T, B, H, D, dtype, "fla" in compare, bw)}
            _add_row(results, row, out, progress)
        if "sdpa" in compare:
            _add_row(results, {"op": "sdpa_causal", "T": T, **run(_sdpa_row, T, B, H, D, dtype)}, out, progress)
    if out is not None:
        _save(results, out)
        write_kernel_plots(results, Path(out))
    return results


def _op_row(op: str, T: int, B: int, H: int, D: int, dtype: torch.dtype, with_fla: bool,
            bw: float) -> dict[str, Any]:
    """One op at one length: ours (and fla's) fwd / fwd+bwd, their relative difference, the HBM
    floor of the forward. Returns the row's fields (no tensors: it may run in a child process)."""
    inputs = _inputs(op, B, T, H, D, dtype, seed=T)
    libs = {"ours": _ours, **({"fla": _fla} if with_fla else {})}
    row: dict[str, Any] = {}
    outs = {}
    for lib, get in libs.items():
        try:
            fn = get(op)
        except ImportError as e:
            fn, row[f"{lib}_error"] = None, str(e)
        row[f"{lib}_fwd"] = _entry(fn, inputs, backward=False)
        skip = FLA_SKIP_BACKWARD.get(op) if lib == "fla" else None
        row[f"{lib}_fwdbwd"] = {"ms": None, "error": skip} if skip else _entry(fn, inputs, backward=True)
        if fn is not None and row[f"{lib}_fwd"]["ms"] is not None:
            with torch.no_grad():
                outs[lib] = fn(*inputs)
    if "fla" in outs:
        row["rel_err_vs_fla"] = _rel(outs["ours"], outs["fla"])
    if op != "ssd":
        nbytes = sum(t.numel() * t.element_size() for t in inputs[:3]) + inputs[2].numel() * 2
        row["hbm_floor_ms"] = nbytes / bw * 1e3
    del inputs, outs
    torch.cuda.empty_cache()
    return row


def _sdpa_row(T: int, B: int, H: int, D: int, dtype: torch.dtype) -> dict[str, Any]:
    inputs = _inputs("linear_attention", B, T, H, D, dtype, seed=T)
    row = {"sdpa_fwd": _entry(_sdpa, inputs, False), "sdpa_fwdbwd": _entry(_sdpa, inputs, True)}
    del inputs
    torch.cuda.empty_cache()
    return row


def _isolated(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn(*args)`` in a fresh (spawned) process: a kernel that faults poisons only that
    process's CUDA context, and the row records the error instead of ending the bench."""
    import concurrent.futures as cf
    import multiprocessing as mp

    try:
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            return pool.submit(fn, *args).result()
    except cf.process.BrokenProcessPool:
        return {"error": "the process running it died (a crash, not an exception)"}
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA fault: recorded, the bench goes on
        return {"error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"}


def _add_row(results: dict[str, Any], row: dict[str, Any], out: str | Path | None, progress: bool) -> None:
    results["rows"].append(row)
    if out is not None:
        _save(results, out)
    if progress:
        print(_line(row), flush=True)


def _save(results: dict[str, Any], out: str | Path) -> None:
    """Write ``kernels.json`` atomically (after every row: a run stopped midway keeps its rows)."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "kernels.json.tmp"
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path / "kernels.json")


def plot_data(results: dict[str, Any]) -> dict[str, Any]:
    """The kernel bench's rows in ``bench.plots``' layout (also read by the arena report): one op
    per kernel, one form per library (ours / fla / sdpa), ms and tokens/s per length."""
    ops: dict[str, Any] = {}
    for r in results["rows"]:
        for lib in ("ours", "fla", "sdpa"):
            fwd, fwdbwd = (r.get(f"{lib}_{k}", {}).get("ms") for k in ("fwd", "fwdbwd"))
            if fwd is None and fwdbwd is None:
                continue
            tokens = results["B"] * r["T"]
            op = ops.setdefault(r["op"], {"status": "ok", "results": []})
            op["results"].append({"T": r["T"], "form": lib, "fwd_ms": fwd, "fwdbwd_ms": fwdbwd,
                                  "tokens_per_s": tokens / (fwd * 1e-3) if fwd else None,
                                  "fwdbwd_tokens_per_s": tokens / (fwdbwd * 1e-3) if fwdbwd else None})
    meta = {"device_name": results["device"], "device": "cuda", "threads": "-", "dtype": results["dtype"],
            "B": results["B"], "H": results["H"], "D": results["D"], "date": results.get("date", ""),
            "torch": f"{results['torch']}, triton {results['triton']}, fla {results.get('fla')}",
            "memory": "not measured"}
    return {"ops": ops, "meta": meta}


def write_kernel_plots(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``bench_fwd.png`` / ``bench_fwdbwd.png`` (time vs T, log-log; colour = kernel, line style =
    library) from a kernel bench result (rerunnable from a saved ``kernels.json``)."""
    from longctx.bench.plots import write_plots

    return write_plots(plot_data(results), Path(out_dir))


def _ms(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{entry['ms']:.3f}" if entry.get("ms") is not None else "err"


def _line(row: dict[str, Any]) -> str:
    parts = [f"{row['op']:>16} T={row['T']:>6}"]
    for key in ("ours_fwd", "ours_fwdbwd", "fla_fwd", "fla_fwdbwd", "sdpa_fwd", "sdpa_fwdbwd"):
        if key in row:
            parts.append(f"{key}={_ms(row[key])}")
    if "rel_err_vs_fla" in row:
        parts.append(f"err={row['rel_err_vs_fla']:.1e}")
    if "hbm_floor_ms" in row:
        parts.append(f"floor={row['hbm_floor_ms']:.3f}")
    if "error" in row:
        parts.append(f"error: {row['error']}")
    return " ".join(parts)


def summary_table(results: dict[str, Any]) -> str:
    """Markdown: per op and length, ours vs fla (time and ratio) and the SDPA anchors."""
    lines = ["| op | T | ours fwd | fla fwd | fla/ours | ours fwd+bwd | fla fwd+bwd | fla/ours | fwd / HBM floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if r["op"] == "sdpa_causal" and "error" not in r:
            lines.append(f"| SDPA causal | {r['T']} | {_ms(r['sdpa_fwd'])} | | | {_ms(r['sdpa_fwdbwd'])} | | | |")
            continue

        def ratio(a: str, b: str, r: dict = r) -> str:
            x, y = r.get(a, {}).get("ms"), r.get(b, {}).get("ms")
            return f"{x / y:.2f}x" if x and y else "-"

        if "error" in r:
            lines.append(f"| {r['op']} | {r['T']} | {r['error']} | | | | | | |")
            continue
        floor = r.get("hbm_floor_ms")
        of = r["ours_fwd"].get("ms")
        lines.append(
            f"| {r['op']} | {r['T']} | {_ms(r['ours_fwd'])} | {_ms(r.get('fla_fwd'))} | "
            f"{ratio('fla_fwd', 'ours_fwd')} | {_ms(r['ours_fwdbwd'])} | {_ms(r.get('fla_fwdbwd'))} | "
            f"{ratio('fla_fwdbwd', 'ours_fwdbwd')} | "
            f"{f'{of / floor:.2f}' if of and floor and not math.isnan(floor) else '-'} |")
    return "\n".join(lines)


# log-linear op -> its base op (the same kernel family without the Fenwick levels)
LOG_LINEAR_BASE = {"log_linear": "simple_gla", "log_linear_gdn": "gated_deltanet"}


def target_table(results: dict[str, Any]) -> str:
    """Markdown: issue 9's log-linear targets from one run, per log-linear op and length: its time
    over its base's (target <= 1.5x at 64k) and its fwd+bwd over SDPA's (target < 1 from 8k).
    Empty when the run has no log-linear row."""
    ms = {(r["op"], r["T"]): r for r in results["rows"] if "error" not in r}

    def time(op: str, T: int, key: str) -> float | None:
        lib = "sdpa" if op == "sdpa_causal" else "ours"
        return ms.get((op, T), {}).get(f"{lib}_{key}", {}).get("ms")

    def over(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}x" if a and b else "-"

    lines = []
    for op, T in sorted(k for k in ms if k[0] in LOG_LINEAR_BASE):
        base = LOG_LINEAR_BASE[op]
        lines.append(f"| {op} | {T} | {over(time(op, T, 'fwd'), time(base, T, 'fwd'))} | "
                     f"{over(time(op, T, 'fwdbwd'), time(base, T, 'fwdbwd'))} | "
                     f"{over(time(op, T, 'fwdbwd'), time('sdpa_causal', T, 'fwdbwd'))} |")
    if not lines:
        return ""
    return "\n".join(["| log-linear op | T | fwd / base fwd | fwd+bwd / base fwd+bwd | fwd+bwd / SDPA fwd+bwd |",
                      "|---|---|---|---|---|", *lines])

