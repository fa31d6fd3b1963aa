"""The report's needle-depth heat maps: accuracy by context length x needle depth.

Drawn from the ``depth_eval`` records that ``arena/depth.py`` adds to passkey / NIAH runs (one
record per length x depth bin). A panel is one series (mixer, plus the keys that split it); runs
that differ only in seed are averaged, over learning rates the best one by accuracy is kept (as
in the main table). Depth 0 (needle first) is the top row, as in the usual NIAH heat map.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longctx.arena.report_data import best_lr_runs, group_runs, series_label
from longctx.arena.report_doc import Block, Plot, Table
from longctx.arena.report_plots import save
from longctx.arena.store import RunRecord

KEY = "depth_eval"          # the metric the runner records
PREFIX = "depth_"           # plot file: depth_<task>.png
TITLE = "Accuracy by context length × needle depth"

Bin = tuple[float, float]   # (depth_lo, depth_hi); equal for a fixed-depth grid


@dataclass
class HeatMap:
    """One panel: mean accuracy (over seeds, best lr) per (length, depth bin)."""

    task: str
    label: str
    grid: dict[tuple[int, Bin], float]

    @property
    def lengths(self) -> list[int]:
        return sorted({t for t, _ in self.grid})

    @property
    def bins(self) -> list[Bin]:
        return sorted({b for _, b in self.grid})


def bin_label(b: Bin) -> str:
    """``(0.2, 0.4)`` -> ``"20–40%"``; a fixed depth ``(0.5, 0.5)`` -> ``"50%"``."""
    lo, hi = 100 * b[0], 100 * b[1]
    return f"{lo:g}%" if lo == hi else f"{lo:g}–{hi:g}%"


def heat_maps(rows: list[RunRecord], series: list[str]) -> list[HeatMap]:
    """Every panel, sorted by task and label, from the runs that carry ``depth_eval``."""
    rows = [r for r in rows if r.metrics.get(KEY)]
    acc: dict[tuple[str, str], dict[tuple[int, Bin], list[float]]] = defaultdict(
        lambda: defaultdict(list))
    for runs in group_runs(rows):
        _, best = best_lr_runs(runs)
        cfg = best[0].config
        key = (str(cfg.get("task", "?")),
               series_label(str(cfg.get("mixer", "?")), ((k, cfg.get(k)) for k in series)))
        for r in best:
            for e in r.metrics[KEY]:
                lo, hi = e.get("depth_lo", e["depth"]), e.get("depth_hi", e["depth"])
                b = (round(float(lo), 6), round(float(hi), 6))
                acc[key][(int(e["length"]), b)].append(float(e["accuracy"]))
    return [HeatMap(task, label, {k: statistics.fmean(v) for k, v in grid.items()})
            for (task, label), grid in sorted(acc.items())]


def _matrix(hm: HeatMap) -> np.ndarray:
    """``[bins, lengths]`` accuracies, NaN where a cell was not measured."""
    m = np.full((len(hm.bins), len(hm.lengths)), np.nan)
    for (t, b), a in hm.grid.items():
        m[hm.bins.index(b), hm.lengths.index(t)] = a
    return m


def plot(maps: list[HeatMap], path: Path) -> None:
    """One heat map per series (the maps of one task), a shared colour bar."""
    ncols = min(len(maps), 3)
    nrows = math.ceil(len(maps) / ncols)
    n_len = max(len(hm.lengths) for hm in maps)
    n_bin = max(len(hm.bins) for hm in maps)
    fig = Figure(figsize=(ncols * max(3.4, 1.6 + 0.9 * n_len) + 1.0,
                          nrows * (1.4 + 0.42 * n_bin) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[len(maps):]:
        ax.set_visible(False)
    image = None
    for i, (ax, hm) in enumerate(zip(axes, maps)):
        m = _matrix(hm)
        image = ax.imshow(m, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        for (i, j), a in np.ndenumerate(m):
            if not np.isnan(a):
                ax.text(j, i, f"{100 * a:.0f}", ha="center", va="center", fontsize=8,
                        color="black" if 0.25 < a < 0.8 else "white")
        ax.set_xticks(range(len(hm.lengths)), [f"{t:,}" for t in hm.lengths])
        ax.set_yticks(range(len(hm.bins)), [bin_label(b) for b in hm.bins])
        ax.set_xlabel("context length T")
        if i % ncols == 0:
            ax.set_ylabel("needle depth")
        ax.set_title(hm.label, fontsize=10)
        ax.grid(False)
    fig.colorbar(image, ax=axes[:len(maps)], label="accuracy", shrink=0.9,
                 format=lambda x, _pos: f"{100 * x:.0f}%")
    fig.suptitle(f"{maps[0].task}: {TITLE.lower()}", fontweight="bold", fontsize=12)
    save(fig, path)


def _note(hm: HeatMap) -> str:
    """Mean over the grid, and where the lowest / highest cell is."""
    (lo_t, lo_b), lo = min(hm.grid.items(), key=lambda kv: (kv[1], kv[0]))
    (hi_t, hi_b), hi = max(hm.grid.items(), key=lambda kv: (kv[1], kv[0]))
    mean = statistics.fmean(hm.grid.values())
    if hi - lo < 0.05:
        spread = f"{100 * lo:.1f}%" if hi == lo else f"{100 * lo:.1f}–{100 * hi:.1f}%"
        return (f"{hm.label}: {100 * mean:.1f}% on average, flat across depths and lengths "
                f"({spread}).")
    return (f"{hm.label}: {100 * mean:.1f}% on average; lowest {100 * lo:.1f}% at depth "
            f"{bin_label(lo_b)} (T = {lo_t:,}), highest {100 * hi:.1f}% at depth "
            f"{bin_label(hi_b)} (T = {hi_t:,}).")


def table(maps: list[HeatMap]) -> Table:
    """One row per (series, depth bin), one column per length."""
    lengths = sorted({t for hm in maps for t in hm.lengths})
    body = [[hm.label, bin_label(b)]
            + [f"{100 * hm.grid[(t, b)]:.1f}%" if (t, b) in hm.grid else "—" for t in lengths]
            for hm in maps for b in hm.bins]
    return Table(["Mixer", "Depth"] + [f"T = {t:,}" for t in lengths], body, left=2)


def blocks(rows: list[RunRecord], series: list[str], store_dir: Path) -> dict[str, list[Block]]:
    """Per task with depth data: a lead paragraph, the heat-map plot (written into
    ``store_dir``), one note per series and the table. Empty when no run has ``depth_eval``."""
    by_task: dict[str, list[HeatMap]] = defaultdict(list)
    for hm in heat_maps(rows, series):
        by_task[hm.task].append(hm)
    out: dict[str, list[Block]] = {}
    for task, maps in by_task.items():
        png = store_dir / f"{PREFIX}{task}.png"
        plot(maps, png)
        fixed = all(lo == hi for hm in maps for lo, hi in hm.bins)
        how = ("prompts with the needle at fixed depths" if fixed
               else "the test set's needles at random depths, binned by depth")
        lead = (f"{TITLE} on {task}: {how} (0% = first in the filler, 100% = last); accuracy "
                "over the answer's tokens, best lr, mean over seeds.")
        out[task] = [lead, Plot(png, f"{task}: {TITLE}"), *map(_note, maps), table(maps)]
    return out
