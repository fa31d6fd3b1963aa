"""The report's view of a results store: runs grouped into cells, and the number formats.

Runs whose configs differ only in ``lr`` and ``seed`` form one *cell*: its accuracy is the best,
over learning rates, of the mean over seeds. A config key other than task / mixer / seq_len that
takes several values for one (task, mixer, seq_len) — ``d_model`` in a width sweep — splits a
mixer into several *series* (one line each); keys that only vary with the length (e.g.
``num_kv_pairs``) are shown as table columns.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import matplotlib

from longctx.arena.store import RunRecord

PASS = 0.95                                    # "solved" threshold used in the findings
SWEPT = ("lr", "seed")                         # averaged / maximised over inside a cell
AXES = ("task", "mixer", "seq_len")            # never a series key


@dataclass
class Cell:
    """One table row: the runs of one config that differ only in ``lr`` and ``seed``."""

    task: str
    mixer: str
    d_model: Any
    seq_len: int
    series: tuple[tuple[str, Any], ...]   # keys that split a mixer into lines, e.g. d_model
    columns: dict[str, Any]               # every store-varying key, for the table
    acc_mean: float                       # best over lr of the mean over seeds (NaN if none)
    acc_std: float                        # over seeds at the best lr (0 with one seed)
    n_seeds: int                          # seeds at the best lr
    best_lr: Any
    loss: float                           # mean loss at the best lr
    state_bytes: int
    tokens_per_s: float                   # mean over all the cell's runs
    wall_s: float                         # mean wall time per run
    n_runs: int

    @property
    def label(self) -> str:
        """Series label: the mixer, plus the series keys if any (``gla d_model=64``)."""
        return series_label(self.mixer, self.series)


def series_label(mixer: str, series: Iterable[tuple[str, Any]]) -> str:
    """``"gla"`` or ``"gla d_model=64"``: the mixer and the keys that split it into lines."""
    return " ".join([mixer] + [f"{k}={v}" for k, v in series])


# -- grouping ----------------------------------------------------------------------------------

def freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a config value (dicts and lists as JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def sort_key(value: Any) -> tuple:
    """Numbers first (by value), then everything else by its text."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def metric(row: RunRecord, name: str) -> float:
    """A numeric metric of a run, NaN when absent or not a number."""
    value = row.metrics.get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


def series_keys(rows: list[RunRecord]) -> tuple[list[str], list[str]]:
    """``(series, varying)``: the config keys that split a mixer into several lines, and every
    key (lr and seed excluded) that takes more than one value in ``rows``."""
    keys = sorted({k for r in rows for k in r.config} - set(SWEPT))
    varying = [k for k in keys if len({freeze(r.config.get(k)) for r in rows}) > 1]
    by_axes: dict[tuple, set] = defaultdict(set)
    for r in rows:
        for k in varying:
            by_axes[(k,) + tuple(freeze(r.config.get(a)) for a in AXES)].add(
                freeze(r.config.get(k)))
    series = [k for k in varying if k not in AXES
              and any(len(v) > 1 for (key, *_), v in by_axes.items() if key == k)]
    return series, varying


def group_runs(rows: list[RunRecord]) -> list[list[RunRecord]]:
    """The runs of each config minus lr and seed (one list per cell, in store order)."""
    keys = sorted({k for r in rows for k in r.config} - set(SWEPT))
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in rows:
        groups[tuple(freeze(r.config.get(k)) for k in keys)].append(r)
    return list(groups.values())


def best_lr_runs(runs: list[RunRecord]) -> tuple[Any, list[RunRecord]]:
    """``(lr, runs at that lr)``: the lr whose mean accuracy over seeds is best (ties: the
    smallest lr); runs without accuracy count as worst."""
    by_lr: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_lr[freeze(r.config.get("lr"))].append(r)

    def mean_acc(lr: Any) -> float:
        accs = [a for a in (metric(r, "accuracy") for r in by_lr[lr]) if not math.isnan(a)]
        return statistics.fmean(accs) if accs else -math.inf

    best = max(sorted(by_lr, key=sort_key), key=mean_acc)
    return by_lr[best][0].config.get("lr"), by_lr[best]


def summarize(rows: list[RunRecord]) -> list[Cell]:
    """Group runs into cells (config minus lr and seed), sorted by task, mixer, series, length."""
    series, varying = series_keys(rows)
    cells = [_cell(runs, series, varying) for runs in group_runs(rows)]
    return sorted(cells, key=lambda c: (c.task, c.mixer, [sort_key(v) for _, v in c.series],
                                        sort_key(c.seq_len)))


def _cell(runs: list[RunRecord], series: list[str], varying: list[str]) -> Cell:
    """Summarise one cell: best lr by mean accuracy over seeds."""
    cfg = runs[0].config
    best_lr, best = best_lr_runs(runs)
    accs = [a for a in (metric(r, "accuracy") for r in best) if not math.isnan(a)]
    losses = [x for x in (metric(r, "loss") for r in best) if not math.isnan(x)]
    return Cell(
        task=str(cfg.get("task", "?")), mixer=str(cfg.get("mixer", "?")),
        d_model=cfg.get("d_model"), seq_len=int(cfg.get("seq_len") or 0),
        series=tuple((k, cfg.get(k)) for k in series),
        columns={k: cfg.get(k) for k in varying},
        acc_mean=statistics.fmean(accs) if accs else math.nan,
        acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0, n_seeds=len(accs),
        best_lr=best_lr, loss=statistics.fmean(losses) if losses else math.nan,
        state_bytes=max(int(r.state_size_bytes) for r in runs),
        tokens_per_s=statistics.fmean(float(r.tokens_per_s) for r in runs),
        wall_s=statistics.fmean(float(r.wall_time_s) for r in runs), n_runs=len(runs))


def mixer_colours(mixers: Iterable[str]) -> dict[str, Any]:
    """One colour per mixer (sorted by name), the same in every plot."""
    names = sorted(set(mixers))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(names)}


# -- formatting --------------------------------------------------------------------------------

def human_bytes(n: float) -> str:
    """``16384`` -> ``"16.0 KiB"`` (binary units)."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(s: float) -> str:
    """Seconds as ``"12.3 s"``, ``"4.5 min"`` or ``"1.25 h"``."""
    if s < 120:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def format_accuracy(cell: Cell) -> str:
    """``"97.5%"``, or ``"97.5 ± 1.2%"`` with several seeds; ``"—"`` without accuracy."""
    if math.isnan(cell.acc_mean):
        return "—"
    if cell.n_seeds > 1:
        return f"{100 * cell.acc_mean:.1f} ± {100 * cell.acc_std:.1f}%"
    return f"{100 * cell.acc_mean:.1f}%"


def compact(x: float) -> str:
    """``123456`` -> ``"123k"``, ``2.5e6`` -> ``"2.5M"``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def pct(x: float) -> str:
    """``0.975`` -> ``"97.5%"``."""
    return f"{100 * x:.1f}%"


def format_value(value: Any) -> str:
    """A config value for a table or a settings line: ``—`` for None, dicts as ``a=1, b=2``."""
    if value is None or value == {}:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
