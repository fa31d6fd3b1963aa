"""The report's throughput and memory vs length, from ``longctx bench`` results (``bench.json``,
and ``kernels.json`` of ``longctx bench --compare``: ours / fla / sdpa as forms).

The report takes bench files given to ``write_report(..., bench=...)`` or, by default, every
``bench*.json`` and ``kernels*.json`` in the suite directory. Files measured with the same settings (device, dtype,
B, H, D) are merged, an op measured in several of them taken from the file with the most results
(ties: the latest); each setting gets one plot — forward tokens/s, forward+backward tokens/s and
forward+backward peak memory against T — and one table. The reference ``naive`` form is drawn
only for an op that has no other form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from longctx.arena.report_data import compact, human_bytes
from longctx.arena.report_doc import Block, Plot, Table
from longctx.arena.report_plots import save

PLOT = "bench_vs_length"
TITLE = "Throughput and memory vs length (longctx bench)"
PATTERNS = ("bench*.json", "kernels*.json")  # longctx bench: ops / layers, and --compare
_SETTING = ("device", "device_name", "dtype", "B", "H", "D")
# panel: (result key, y label, scale)
_PANELS = (("tokens_per_s", "forward tokens / s", 1.0),
           ("fwdbwd_tokens_per_s", "forward + backward tokens / s", 1.0),
           ("fwdbwd_peak_bytes", "forward + backward peak memory (MiB)", 1 / 2**20))
_STYLES = {"chunk": "-", "sdpa": "-.", "naive": ":", "ours": "-", "fla": "--"}
_MARKERS = {"chunk": "o", "sdpa": "^", "naive": "s", "ours": "o", "fla": "s"}


@dataclass
class Bench:
    """The ops of one setting, merged over files: ``rows[(op, form)] = [result, ...]``."""

    meta: dict[str, Any]
    files: list[str]
    rows: dict[tuple[str, str], list[dict[str, Any]]]
    refused: dict[str, str]  # op -> status, for ops measured in no file


def load(path: Path) -> dict[str, Any]:
    """A ``longctx bench`` JSON; ValueError naming the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"bench: cannot read {path} as JSON ({e})") from e
    if isinstance(data, dict) and isinstance(data.get("rows"), list) and "copy_bandwidth_GBps" in data:
        from longctx.bench.kernels import (
            plot_data,  # a kernel bench (``--compare``): ours / fla / sdpa
        )

        try:
            return plot_data(data)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"bench: {path} is a damaged kernel bench result ({type(e).__name__}: {e})") from e
    if not (isinstance(data, dict) and isinstance(data.get("meta"), dict)
            and isinstance(data.get("ops"), dict)):
        raise ValueError(f"bench: {path} is not a `longctx bench` result "  # noqa: TRY004
                         "(expected a JSON object with 'meta' and 'ops')")
    return data


def _forms(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The results to draw: every form but ``naive``, unless ``naive`` is all there is."""
    fast = [r for r in entry["results"] if r.get("form") != "naive"]
    return fast or list(entry["results"])


def merge(datas: list[tuple[str, dict[str, Any]]]) -> list[Bench]:
    """Group ``(file name, bench dict)`` pairs by setting and merge their ops."""
    groups: dict[tuple, list[tuple[str, dict[str, Any]]]] = {}
    for name, data in datas:
        groups.setdefault(tuple(data["meta"].get(k) for k in _SETTING), []).append((name, data))
    out = []
    for members in groups.values():
        chosen: dict[str, tuple[int, str, dict]] = {}
        status: dict[str, str] = {}
        for _name, data in members:
            for op, entry in data["ops"].items():
                if entry.get("status") != "ok" or not entry.get("results"):
                    status.setdefault(op, str(entry.get("status")))
                    continue
                rank = (len(entry["results"]), str(data["meta"].get("date", "")), entry)
                if op not in chosen or rank[:2] > chosen[op][:2]:
                    chosen[op] = rank
        rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for op, (_, _, entry) in sorted(chosen.items()):
            for r in _forms(entry):
                rows.setdefault((op, r["form"]), []).append(r)
        rows = {k: sorted(v, key=lambda r: r["T"]) for k, v in rows.items()}
        latest = max(members, key=lambda m: str(m[1]["meta"].get("date", "")))[1]["meta"]
        out.append(Bench(latest, [n for n, _ in members], rows,
                         {op: s for op, s in status.items() if op not in chosen}))
    return out


def _colours(ops: list[str], known: dict[str, Any]) -> dict[str, Any]:
    """The arena's mixer colour where an op has the name of a mixer, tab20 for the others."""
    cmap = matplotlib.colormaps["tab20"]
    others = [op for op in ops if op not in known]
    return {**{op: cmap((2 * i + 1) % cmap.N) for i, op in enumerate(others)},
            **{op: known[op] for op in ops if op in known}}


def plot(bench: Bench, colours: dict[str, Any], path: Path) -> None:
    """Three log-log panels against T; colour = op, line style = form."""
    panels = [p for p in _PANELS if any(r.get(p[0]) for rs in bench.rows.values() for r in rs)]
    ops = list(dict.fromkeys(op for op, _ in bench.rows))
    colour = _colours(ops, colours)
    fig = Figure(figsize=(3.9 * max(len(panels), 1) + 2.4, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    lengths = sorted({r["T"] for rs in bench.rows.values() for r in rs})
    for ax, (key, ylabel, scale) in zip(axes, panels):
        for (op, form), rs in bench.rows.items():
            pts = [(r["T"], r[key] * scale) for r in rs if r.get(key)]
            if pts:
                ax.plot(*zip(*pts), color=colour[op], ls=_STYLES.get(form, "--"),
                        marker=_MARKERS.get(form, "x"), ms=4, lw=1.6)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(lengths or [1]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: compact(y)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
    handles = [Line2D([], [], color=colour[op], lw=2, label=op) for op in ops]
    handles += [Line2D([], [], color="#333333", ls=_STYLES.get(f, "--"),
                       marker=_MARKERS.get(f, "x"), ms=4, label=f)
                for f in dict.fromkeys(form for _, form in bench.rows)]
    fig.legend(handles=handles, loc="outside right upper", title="op / form", fontsize=8)
    fig.suptitle(f"{TITLE} — {subtitle(bench.meta)}", fontweight="bold", fontsize=11)
    save(fig, path)


def subtitle(meta: dict[str, Any]) -> str:
    """``"AMD EPYC (cpu, 2 threads), float32, B=1 H=4 D=64"``."""
    return (f"{meta.get('device_name', '?')} ({meta.get('device', '?')}, "
            f"{meta.get('threads', '?')} threads), {meta.get('dtype', '?')}, "
            f"B={meta.get('B', '?')} H={meta.get('H', '?')} D={meta.get('D', '?')}")


def table(bench: Bench) -> Table:
    """One row per (op, form); per length ``forward tokens/s · fwd+bwd peak memory``."""
    lengths = sorted({r["T"] for rs in bench.rows.values() for r in rs})

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "—"
        tok = f"{compact(r['tokens_per_s'])}/s" if r.get("tokens_per_s") else "—"
        mem = r.get("fwdbwd_peak_bytes")
        return f"{tok} · {human_bytes(mem)}" if mem else tok

    body = [[op, form] + [cell(next((r for r in rs if r["T"] == t), None)) for t in lengths]
            for (op, form), rs in bench.rows.items()]
    return Table(["Op", "Form"] + [f"T = {t:,}" for t in lengths], body, left=2)


def _finding(bench: Bench) -> str | None:
    """The fastest and the leanest (op, form) at the longest length every op reached."""
    longest = max((r["T"] for rs in bench.rows.values() for r in rs), default=0)
    at = {k: r for k, rs in bench.rows.items() for r in rs if r["T"] == longest}
    fast = [(r["tokens_per_s"], k) for k, r in at.items() if r.get("tokens_per_s")]
    lean = [(r["fwdbwd_peak_bytes"], k) for k, r in at.items() if r.get("fwdbwd_peak_bytes")]
    if len(fast) < 2:
        return None
    (top, k_top), (low, k_low) = max(fast), min(fast)
    text = (f"At T = {longest:,}, the fastest forward is {k_top[0]} ({k_top[1]}, "
            f"{compact(top)} tokens/s), {top / low:.1f}× the slowest, {k_low[0]} ({k_low[1]})")
    if len(lean) >= 2:
        (small, k_small), (big, k_big) = min(lean), max(lean)
        text += (f"; forward+backward memory ranges from {human_bytes(small)} ({k_small[0]}) "
                 f"to {human_bytes(big)} ({k_big[0]})")
    return text + "."


def find_files(store_dir: Path) -> list[Path]:
    """The ``bench*.json`` and ``kernels*.json`` files of a suite directory, sorted by name."""
    return sorted({p for pat in PATTERNS for p in Path(store_dir).glob(pat) if p.is_file()})


def section_blocks(paths: list[Path], store_dir: Path, colours: dict[str, Any],
                   strict: bool) -> list[Block] | None:
    """Paragraphs, plot(s) and table(s) for the bench files, or None if none holds a result.
    ``strict``: a file that is not a bench result raises ValueError (else it is noted, skipped)."""
    datas, skipped = [], []
    for p in paths:
        try:
            datas.append((p.name, load(p)))
        except ValueError:
            if strict:
                raise
            skipped.append(p.name)
    benches = [b for b in merge(datas) if b.rows]
    if not benches:
        return None
    out: list[Block] = []
    for i, bench in enumerate(benches):
        png = store_dir / f"{PLOT}{'' if i == 0 else f'_{i + 1}'}.png"
        plot(bench, colours, png)
        meta = bench.meta
        out.append(f"{subtitle(meta)}, torch {meta.get('torch', '?')}, measured "
                   f"{meta.get('date', '?')} ({', '.join(bench.files)}). Timing: "
                   f"{meta.get('timing', '?')}. Memory: {meta.get('memory', '?')}. Each cell of "
                   "the table: forward tokens/s · forward+backward peak memory.")
        note = _finding(bench)
        out += [note] if note else []
        if bench.refused:
            out.append("Not measured (failed its correctness check or import): "
                       + ", ".join(f"{op} ({s})" for op, s in sorted(bench.refused.items()))
                       + ".")
        out += [Plot(png, f"{TITLE} — {subtitle(meta)}"), table(bench)]
    if skipped:
        out.append(f"Skipped (not a bench result): {', '.join(skipped)}.")
    return out

