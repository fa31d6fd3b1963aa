"""Plots and Markdown table of a bench result (the dict written to ``bench.json``).

``write_plots(data, out_dir)`` writes ``bench_fwd.png`` (forward time vs T), ``bench_fwdbwd.png``
(forward+backward time vs T) and, when memory was measured, ``bench_memory.png`` (forward+backward
peak memory vs T), all log-log with one line per (op, form): colour = op, line style = form.
``write_markdown(data, path)`` writes every number as a table (ms, MiB), the measured growth
exponents between consecutive lengths (``growth_exponents``) and refused / skipped cases. Both use
only the data, so they can be rerun from a saved ``bench.json`` (of ops or of layers).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

PLOTS = {  # file stem: (result key, y label, title, scale of the value)
    "bench_fwd": ("fwd_ms", "time (ms)", "Forward time", 1.0),
    "bench_fwdbwd": ("fwdbwd_ms", "time (ms)", "Forward + backward time", 1.0),
    "bench_memory": ("fwdbwd_peak_bytes", "peak memory (MiB)", "Forward + backward peak memory",
                     1 / 2**20),
}
# forms of ops, then of layers (longctx.bench.layers); others: "--" and "x"
# and of libraries (longctx.bench.kernels: ours / fla / sdpa)
_STYLES = {"chunk": "-", "sdpa": "-.", "naive": ":", "layer": "-", "full": "-.", "bilinear": "-",
           "zoh": "--", "ours": "-", "fla": "--"}
_MARKERS = {"chunk": "o", "sdpa": "^", "naive": "s", "layer": "o", "full": "^", "bilinear": "o",
            "zoh": "D", "ours": "o", "fla": "s"}
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
       "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
       "grid.color": "#dddddd", "legend.frameon": False, "figure.facecolor": "white"}
_MIB = 2**20


def _series(data: dict[str, Any], key: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for op, entry in data["ops"].items():
        if entry["status"] != "ok":
            continue
        for row in entry["results"]:
            if row.get(key) is not None and row[key] > 0:
                out.setdefault((op, row["form"]), []).append((row["T"], row[key]))
    return {s: sorted(pts) for s, pts in out.items()}


def _subtitle(meta: dict[str, Any]) -> str:
    d_model = f" d_model={meta['d_model']}" if meta.get("d_model") else ""
    return (f"{meta['device_name']} ({meta['device']}, {meta['threads']} threads), {meta['dtype']}, "
            f"B={meta['B']} H={meta['H']} D={meta['D']}{d_model}, torch {meta['torch']}")


def _plot(data: dict[str, Any], key: str, ylabel: str, title: str, scale: float,
          path: Path) -> Path:
    series = _series(data, key)
    ops = list(dict.fromkeys(op for op, _ in series))
    cmap = matplotlib.colormaps["tab10" if len(ops) <= 10 else "tab20"]
    colour = {op: cmap(i % cmap.N) for i, op in enumerate(ops)}
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(8.5, 5.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for (op, form), pts in series.items():
            ax.plot([t for t, _ in pts], [y * scale for _, y in pts], color=colour[op],
                    linestyle=_STYLES.get(form, "--"), marker=_MARKERS.get(form, "x"),
                    markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        lengths = sorted({t for pts in series.values() for t, _ in pts})
        if lengths:  # one tick per measured length, written as a plain number
            ax.xaxis.set_major_locator(FixedLocator(lengths))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.suptitle(_subtitle(data["meta"]), fontsize=8)
        if series:
            handles = [Line2D([], [], color=colour[op], label=op) for op in ops]
            forms = list(dict.fromkeys(form for _, form in series))
            handles += [Line2D([], [], color="black", linestyle=_STYLES.get(f, "--"),
                               marker=_MARKERS.get(f, "x"), markersize=4, label=f) for f in forms]
            ax.legend(handles=handles, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
        fig.savefig(path, dpi=120)
    return path


def write_plots(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the PNGs into ``out_dir``; the memory plot only when memory was measured."""
    out_dir = Path(out_dir)
    paths = []
    for stem, (key, ylabel, title, scale) in PLOTS.items():
        if key.endswith("peak_bytes") and data["meta"].get("memory") == "not measured":
            continue
        paths.append(_plot(data, key, ylabel, title, scale, out_dir / f"{stem}.png"))
    return paths


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "–" if value is None else f"{value * scale:,.{digits}f}"


def growth_exponents(data: dict[str, Any], key: str) -> dict[tuple[str, str], list[
        tuple[int, int, float]]]:
    """Per (op, form): ``(T1, T2, log(v2 / v1) / log(T2 / T1))`` for consecutive measured lengths
    of the result ``key`` (1: linear in T, 2: quadratic; T log T from 1k to 4k gives ~1.1)."""
    out: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
    for series, pts in _series(data, key).items():
        out[series] = [(t1, t2, math.log(v2 / v1) / math.log(t2 / t1))
                       for (t1, v1), (t2, v2) in itertools.pairwise(pts)]
    return {s: e for s, e in out.items() if e}


def write_markdown(data: dict[str, Any], path: Path) -> Path:
    """All numbers as a Markdown table, then refused ops and skipped cases."""
    meta = data["meta"]
    lines = ["# longctx bench", "",
             f"{_subtitle(meta)}; {meta['date']}.", "",
             f"Timing: {meta['timing']}.  ",
             f"Memory: {meta['memory']}.  ",
             (f"Load average (1/5/15 min) at start: {meta.get('loadavg_start')}, "
              f"at end: {meta.get('loadavg_end')}."), ""]
    if not meta.get("complete", True):
        lines += ["**Incomplete run** (interrupted): only the rows below were measured.", ""]
    lines += [("| op | form | T | chunk | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB "
               "| fwd tok/s | check rel err |"),
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for op, entry in data["ops"].items():
        if entry["status"] != "ok":
            continue
        err = entry["check_rel_err"]  # None: no check applies (a bidirectional-only layer)
        check = "–" if err is None else f"{err:.1e}"
        for r in sorted(entry["results"], key=lambda r: (r["T"], r["form"])):
            lines.append(
                f"| {op} | {r['form']} | {r['T']} | {r.get('chunk_size') or '–'} "
                f"| {_fmt(r['fwd_ms'])} | {_fmt(r['fwdbwd_ms'])} "
                f"| {_fmt(r['fwd_peak_bytes'], 1 / _MIB, 1)} "
                f"| {_fmt(r['fwdbwd_peak_bytes'], 1 / _MIB, 1)} "
                f"| {_fmt(r['tokens_per_s'], 1.0, 0)} | {check} |")
    fwd, fwdbwd = growth_exponents(data, "fwd_ms"), growth_exponents(data, "fwdbwd_ms")
    if fwd or fwdbwd:
        lines += ["", "## Growth exponents", "",
                  ("log(t2 / t1) / log(T2 / T1) of the times between consecutive lengths "
                   "(1: linear, 2: quadratic)."), "",
                  "| op | form | T1 -> T2 | fwd | fwd+bwd |", "|---|---|---|---:|---:|"]
        for (op, form), exps in fwd.items():
            other = {(t1, t2): e for t1, t2, e in fwdbwd.get((op, form), [])}
            for t1, t2, e in exps:
                lines.append(f"| {op} | {form} | {t1} -> {t2} | {e:.2f} "
                             f"| {_fmt(other.get((t1, t2)))} |")
    refused = [(op, e) for op, e in data["ops"].items() if e["status"] not in ("ok", "pending")]
    if refused:
        lines += ["", "## Refused (not reported)", ""]
        lines += [f"- **{op}** ({e['status']}): {e['error']}" for op, e in refused]
    skipped = [(op, s) for op, e in data["ops"].items() for s in e["skipped"]]
    if skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- {op} {s['form']} T={s['T']}: {s['reason']}" for op, s in skipped]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["PLOTS", "growth_exponents", "write_markdown", "write_plots"]
