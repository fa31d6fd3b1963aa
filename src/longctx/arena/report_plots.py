"""The report's plots (PNG, Agg canvas, reproducible bytes): accuracy vs sequence length, accuracy
vs decode state size, training throughput (one panel per task each), and one plot per task
(accuracy of every mixer at every length, as grouped bars).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

from longctx.arena.report_data import PASS, Cell, compact, human_bytes, sort_key

PLOTS = {"acc_vs_seqlen": "Accuracy vs sequence length",
         "acc_vs_state_size": "Accuracy vs decode state size",
         "throughput": "Training throughput"}
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_HATCHES = ("", "//", "..", "xx", "\\\\", "--")
RC = {"font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
      "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#999999",
      "axes.grid": True, "grid.color": "#dddddd", "grid.linewidth": 0.8,
      "legend.frameon": False, "figure.facecolor": "white"}


def panels(tasks: list[str], title: str, width: float = 6.4,
           height: float = 4.2) -> tuple[Figure, list]:
    """A titled figure with one axes per task (Agg canvas, constrained layout)."""
    ncols = min(len(tasks), 2)
    nrows = math.ceil(len(tasks) / ncols)
    fig = Figure(figsize=(width * ncols + 2.2, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    if len(tasks) == 1:
        title = f"{title} — {tasks[0]}"
    else:
        for ax, task in zip(axes, tasks):
            ax.set_title(task)
    fig.suptitle(title, fontweight="bold", fontsize=13)
    return fig, axes[:len(tasks)]


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a 150 dpi PNG without the software/version metadata."""
    fig.savefig(path, dpi=150, metadata={"Software": None})   # no URL, no version: reproducible


def _series_styles(cells: list[Cell]) -> dict[tuple, int]:
    """Index of each series within its mixer (0, 1, ...), for line styles and hatches."""
    idx: dict[tuple, int] = {}
    for mixer in sorted({c.mixer for c in cells}):
        variants = sorted({c.series for c in cells if c.mixer == mixer},
                          key=lambda s: [sort_key(v) for _, v in s])
        idx.update({(mixer, s): i for i, s in enumerate(variants)})
    return idx


def accuracy_axis(ax: Any) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.axhline(PASS, color="#999999", lw=0.8, ls=(0, (4, 3)), zorder=0)
    ax.annotate(f"{PASS:.0%}", (1.0, PASS), xycoords=("axes fraction", "data"),
                xytext=(-2, -3), textcoords="offset points", ha="right", va="top",
                fontsize=8, color="#888888")
    ax.set_ylabel("accuracy (best lr, mean over seeds)")


def length_axis(ax: Any, lengths: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:,}" for t in lengths])
    ax.set_xlabel("sequence length T")


def _bytes_axis(ax: Any, sizes: list[int]) -> None:
    """Log-2 x axis with ticks at powers of two (at most ~8), labelled ``8 KiB``, ``1 MiB``."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("decode state size (log scale)")
    if not sizes:
        return
    lo, hi = math.floor(math.log2(min(sizes))), math.ceil(math.log2(max(sizes)))
    lo, hi = (lo - 1, hi + 1) if lo == hi else (lo, hi)
    step = max(1, math.ceil((hi - lo) / 7))
    ax.xaxis.set_major_locator(FixedLocator([2.0 ** k for k in range(lo, hi + 1, step)]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(lambda x, _pos: human_bytes(x).replace(".0 ", " "))
    ax.set_xlim(2.0 ** (lo - 0.3), 2.0 ** (hi + 0.3))


def plot_acc_vs_seqlen(cells: list[Cell], colours: dict, path: Path) -> None:
    """One line per series (best lr, mean over seeds; band: ± std over seeds), a panel per task."""
    tasks = sorted({c.task for c in cells})
    styles = _series_styles(cells)
    fig, axes = panels(tasks, PLOTS["acc_vs_seqlen"])
    for ax, task in zip(axes, tasks):
        tc = [c for c in cells if c.task == task and not math.isnan(c.acc_mean)]
        for (mixer, series), i in styles.items():
            pts = sorted((c for c in tc if c.mixer == mixer and c.series == series),
                         key=lambda c: c.seq_len)
            if not pts:
                continue
            x = [c.seq_len for c in pts]
            y = [c.acc_mean for c in pts]
            err = [c.acc_std for c in pts]
            ax.plot(x, y, color=colours[mixer], ls=_LINESTYLES[i % 4], marker="o", ms=5, lw=2,
                    label=pts[0].label)
            ax.fill_between(x, [a - e for a, e in zip(y, err)], [a + e for a, e in zip(y, err)],
                            color=colours[mixer], alpha=0.12, lw=0)
        accuracy_axis(ax)
        length_axis(ax, sorted({c.seq_len for c in tc}) or [1])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="mixer")
    save(fig, path)


def _dodged_sizes(cells: list[Cell], step: float = 0.06) -> dict[int, float]:
    """x positions on the log state-size axis: cells with the same state size are spread by
    ``2^(+-step)`` factors so none hides another (the exact sizes are in the table)."""
    groups: dict[int, list[Cell]] = defaultdict(list)
    for c in cells:
        groups[c.state_bytes].append(c)
    x = {}
    for size, group in groups.items():
        for i, c in enumerate(sorted(group, key=lambda c: (c.mixer, c.seq_len))):
            x[id(c)] = size * 2 ** ((i - (len(group) - 1) / 2) * step)
    return x


def plot_acc_vs_state(cells: list[Cell], colours: dict, path: Path) -> None:
    """Accuracy against decode-state bytes (zoology's recall vs memory), a panel per task."""
    tasks = sorted({c.task for c in cells})
    lengths = sorted({c.seq_len for c in cells})
    marker = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(lengths)}
    fig, axes = panels(tasks, PLOTS["acc_vs_state_size"])
    for ax, task in zip(axes, tasks):
        tc = [c for c in cells if c.task == task and c.state_bytes > 0
              and not math.isnan(c.acc_mean)]
        x = _dodged_sizes(tc)
        for c in tc:
            ax.scatter(x[id(c)], c.acc_mean, s=60, marker=marker[c.seq_len],
                       color=colours[c.mixer], edgecolor="white", linewidth=0.8, zorder=3)
        for key in {(c.mixer, c.seq_len) for c in tc}:       # a width sweep: join its points
            pts = sorted((c for c in tc if (c.mixer, c.seq_len) == key),
                         key=lambda c: c.state_bytes)
            if len(pts) > 1:
                ax.plot([c.state_bytes for c in pts], [c.acc_mean for c in pts],
                        color=colours[key[0]], lw=1, alpha=0.5, zorder=2)
        _bytes_axis(ax, [c.state_bytes for c in tc])
        accuracy_axis(ax)
    mixers = sorted({c.mixer for c in cells})
    handles = [Line2D([], [], ls="", marker="o", ms=8, color=colours[m], label=m) for m in mixers]
    handles += [Line2D([], [], ls="", marker=marker[t], ms=7, color="#555555", label=f"T = {t:,}")
                for t in lengths]
    fig.legend(handles=handles, loc="outside right upper", title="mixer / length")
    save(fig, path)


def plot_throughput(cells: list[Cell], colours: dict, path: Path) -> None:
    """Training tokens/s per series, bars grouped by length, a panel per task."""
    tasks = sorted({c.task for c in cells})
    styles = _series_styles(cells)
    fig, axes = panels(tasks, PLOTS["throughput"])
    for ax, task in zip(axes, tasks):
        tc = [c for c in cells if c.task == task]
        lengths = sorted({c.seq_len for c in tc})
        series = [s for s in styles if any((c.mixer, c.series) == s for c in tc)]
        width = 0.8 / max(len(series), 1)
        for j, (mixer, var) in enumerate(series):
            pts = {c.seq_len: c for c in tc if (c.mixer, c.series) == (mixer, var)}
            xs = [i + (j - (len(series) - 1) / 2) * width
                  for i, t in enumerate(lengths) if t in pts]
            ys = [pts[t].tokens_per_s for t in lengths if t in pts]
            bars = ax.bar(xs, ys, width=width * 0.92, color=colours[mixer], edgecolor="white",
                   hatch=_HATCHES[styles[(mixer, var)] % len(_HATCHES)],
                   label=next(iter(pts.values())).label)
            if len(series) * len(lengths) <= 12:
                ax.bar_label(bars, labels=[compact(y) for y in ys], padding=2, fontsize=7,
                             color="#555555")
        positive = [c.tokens_per_s for c in tc if c.tokens_per_s > 0]
        if positive and max(positive) / min(positive) > 30:
            ax.set_yscale("log")
        ax.set_xticks(range(len(lengths)), [f"{t:,}" for t in lengths])
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("training tokens / s")
        ax.grid(axis="x", visible=False)
        ax.yaxis.set_major_formatter(lambda y, _pos: f"{y:,.0f}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="mixer")
    save(fig, path)




def plot_task(cells: list[Cell], colours: dict, path: Path) -> None:
    """One task's accuracy: bars grouped by length, one bar per series (error bar: std over
    seeds), its value written above; the 95% line dashed. ``cells`` are the task's cells."""
    lengths = sorted({c.seq_len for c in cells})
    styles = _series_styles(cells)
    series = [s for s in styles if any((c.mixer, c.series) == s for c in cells)]
    fig = Figure(figsize=(max(6.4, 1.2 + 0.55 * len(series) * len(lengths)) + 2.2, 4.2),
                 layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = min(0.8 / max(len(series), 1), 0.3)  # a lone bar stays a bar, not a wall
    for j, (mixer, var) in enumerate(series):
        pts = {c.seq_len: c for c in cells if (c.mixer, c.series) == (mixer, var)
               and not math.isnan(c.acc_mean)}
        ts = [t for t in lengths if t in pts]
        if not ts:
            continue
        xs = [lengths.index(t) + (j - (len(series) - 1) / 2) * width for t in ts]
        ys = [pts[t].acc_mean for t in ts]
        bars = ax.bar(xs, ys, width=width * 0.92, color=colours[mixer], edgecolor="white",
                      hatch=_HATCHES[styles[(mixer, var)] % len(_HATCHES)],
                      yerr=[pts[t].acc_std for t in ts], ecolor="#444444", capsize=2,
                      label=pts[ts[0]].label)
        if len(series) * len(lengths) <= 16:
            ax.bar_label(bars, labels=[f"{100 * y:.0f}" for y in ys], padding=2, fontsize=7,
                         color="#555555")
    accuracy_axis(ax)
    ax.set_xticks(range(len(lengths)), [f"{t:,}" for t in lengths])
    ax.set_xlabel("sequence length T")
    ax.grid(axis="x", visible=False)
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside right upper", title="mixer")
    fig.suptitle(f"Accuracy — {cells[0].task}", fontweight="bold", fontsize=13)
    save(fig, path)
