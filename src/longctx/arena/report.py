"""The arena report, written from a suite's results store alone.

``write_report(store_dir)`` reads ``store_dir/results.sqlite`` and writes, into ``store_dir``:
``report.md``, a self-contained ``report.html`` (plots embedded as data URIs, inline CSS) and the
plots ``acc_vs_seqlen.png``, ``acc_vs_state_size.png``, ``throughput.png``.

Runs whose configs differ only in ``lr`` and ``seed`` form one *cell*: its accuracy is the best,
over learning rates, of the mean over seeds. A config key other than task / mixer / seq_len that
takes several values for one (task, mixer, seq_len) — ``d_model`` in a width sweep — splits a
mixer into several *series* (one line each); keys that only vary with the length (e.g.
``num_kv_pairs``) are shown as table columns.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

import longctx
from longctx.arena import report_extrapolation
from longctx.arena.store import ResultsStore, RunRecord, StoreError

STORE_NAME = "results.sqlite"
PASS = 0.95                                    # "solved" threshold used in the findings
PLOTS = {"acc_vs_seqlen": "Accuracy vs sequence length",
         "acc_vs_state_size": "Accuracy vs decode state size",
         "throughput": "Training throughput"}
_SWEPT = ("lr", "seed")                        # averaged / maximised over inside a cell
_AXES = ("task", "mixer", "seq_len")           # never a series key
_LINESTYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
_HATCHES = ("", "//", "..", "xx", "\\\\", "--")
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.titleweight": "bold",
       "axes.spines.top": False, "axes.spines.right": False, "axes.edgecolor": "#999999",
       "axes.grid": True, "grid.color": "#dddddd", "grid.linewidth": 0.8,
       "legend.frameon": False, "figure.facecolor": "white"}


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
        return " ".join([self.mixer] + [f"{k}={v}" for k, v in self.series])


# -- entry point -------------------------------------------------------------------------------

def write_report(store_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``store_dir``; return their paths.

    Keys of the result: ``markdown``, ``html``, and the plot names in :data:`PLOTS`.
    Raises :class:`StoreError` if there is no store or it holds no finished run.
    """
    store_dir = Path(store_dir)
    path = store_dir / STORE_NAME
    if not path.is_file():                     # ResultsStore would create an empty one
        raise StoreError(f"no results store at {path}")
    with ResultsStore(path) as store:
        rows = store.rows()
    if not rows:
        raise StoreError(f"no finished runs in {path}")
    cells = summarize(rows)
    title = title or _default_title(rows, store_dir)
    colours = mixer_colours(c.mixer for c in cells)
    out = {name: store_dir / f"{name}.png" for name in PLOTS}
    with matplotlib.rc_context(_RC):
        _plot_acc_vs_seqlen(cells, colours, out["acc_vs_seqlen"])
        _plot_acc_vs_state(cells, colours, out["acc_vs_state_size"])
        _plot_throughput(cells, colours, out["throughput"])
        extra = report_extrapolation.write_section(rows, store_dir)
    if extra is not None:
        out[report_extrapolation.PLOT] = extra.png
    header, notes = _header(rows), findings(cells)
    out["markdown"] = store_dir / "report.md"
    out["markdown"].write_text(_markdown(title, header, notes, cells, extra), encoding="utf-8")
    out["html"] = store_dir / "report.html"
    out["html"].write_text(_html(title, header, notes, cells, out, extra), encoding="utf-8")
    return out


def _default_title(rows: list[RunRecord], store_dir: Path) -> str:
    suites = sorted({r.suite for r in rows})
    return f"longctx arena — {suites[0] if len(suites) == 1 else store_dir.name}"


# -- aggregation -------------------------------------------------------------------------------

def _freeze(value: Any) -> Any:
    """A hashable, comparable stand-in for a config value (dicts and lists as JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _metric(row: RunRecord, name: str) -> float:
    value = row.metrics.get(name)
    return float(value) if isinstance(value, (int, float)) else math.nan


def summarize(rows: list[RunRecord]) -> list[Cell]:
    """Group runs into cells (config minus lr and seed), sorted by task, mixer, series, length."""
    keys = sorted({k for r in rows for k in r.config} - set(_SWEPT))
    varying = [k for k in keys if len({_freeze(r.config.get(k)) for r in rows}) > 1]
    by_axes: dict[tuple, set] = defaultdict(set)
    for r in rows:
        for k in varying:
            by_axes[(k,) + tuple(_freeze(r.config.get(a)) for a in _AXES)].add(
                _freeze(r.config.get(k)))
    series_keys = [k for k in varying if k not in _AXES
                   and any(len(v) > 1 for (key, *_), v in by_axes.items() if key == k)]
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in rows:
        groups[tuple(_freeze(r.config.get(k)) for k in keys)].append(r)
    cells = [_cell(runs, series_keys, varying) for runs in groups.values()]
    return sorted(cells, key=lambda c: (c.task, c.mixer, [_sort_key(v) for _, v in c.series],
                                        _sort_key(c.seq_len)))


def _cell(runs: list[RunRecord], series_keys: list[str], varying: list[str]) -> Cell:
    """Summarise one cell: best lr by mean accuracy over seeds."""
    cfg = runs[0].config
    by_lr: dict[Any, list[RunRecord]] = defaultdict(list)
    for r in runs:
        by_lr[_freeze(r.config.get("lr"))].append(r)

    def mean_acc(lr: Any) -> float:
        accs = [a for a in (_metric(r, "accuracy") for r in by_lr[lr]) if not math.isnan(a)]
        return statistics.fmean(accs) if accs else -math.inf

    best_lr = max(sorted(by_lr, key=_sort_key), key=mean_acc)
    best = by_lr[best_lr]
    accs = [a for a in (_metric(r, "accuracy") for r in best) if not math.isnan(a)]
    losses = [x for x in (_metric(r, "loss") for r in best) if not math.isnan(x)]
    return Cell(
        task=str(cfg.get("task", "?")), mixer=str(cfg.get("mixer", "?")),
        d_model=cfg.get("d_model"), seq_len=int(cfg.get("seq_len") or 0),
        series=tuple((k, cfg.get(k)) for k in series_keys),
        columns={k: cfg.get(k) for k in varying},
        acc_mean=statistics.fmean(accs) if accs else math.nan,
        acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0, n_seeds=len(accs),
        best_lr=best[0].config.get("lr"), loss=statistics.fmean(losses) if losses else math.nan,
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


def _compact(x: float) -> str:
    """``123456`` -> ``"123k"``, ``2.5e6`` -> ``"2.5M"``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _table(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """Column names and the formatted rows of the results table."""
    extra = [k for k in cells[0].columns if k not in ("task", "mixer", "d_model", "seq_len")]
    head = (["Task", "Mixer", "d_model", "T"] + extra
            + ["Accuracy", "Best lr", "Loss", "State", "Tokens/s", "Wall / run", "Runs"])
    body = [[c.task, c.mixer, str(c.d_model), f"{c.seq_len:,}"]
            + ["—" if c.columns[k] is None else str(c.columns[k]) for k in extra]
            + [format_accuracy(c), f"{c.best_lr:g}" if isinstance(c.best_lr, float)
               else str(c.best_lr), "—" if math.isnan(c.loss) else f"{c.loss:.3f}",
               human_bytes(c.state_bytes), f"{c.tokens_per_s:,.0f}", human_duration(c.wall_s),
               str(c.n_runs)] for c in cells]
    return head, body


def _header(rows: list[RunRecord]) -> dict[str, str]:
    """The facts above the table: runs, total wall time, hosts, torch versions, suites."""
    finished = sorted(r.finished_at for r in rows)
    return {"Runs": f"{len(rows):,}",
            "Compute time (sum over runs)": human_duration(sum(r.wall_time_s for r in rows)),
            "Host": ", ".join(sorted({r.host or "?" for r in rows})),
            "torch": ", ".join(sorted({r.torch_version or "?" for r in rows})),
            "Suite": ", ".join(sorted({r.suite for r in rows})),
            "Finished": finished[0] if finished[0] == finished[-1]
            else f"{finished[0]} – {finished[-1]}"}


# -- findings ----------------------------------------------------------------------------------

def _names(cells: list[Cell]) -> str:
    """``"a (99.0%), b (97.0%) and c (95.5%)"``."""
    parts = [f"{c.label} ({_pct(c.acc_mean)})" for c in cells]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _best_per_mixer(cells: list[Cell]) -> dict[str, Cell]:
    best: dict[str, Cell] = {}
    for c in cells:
        if c.mixer not in best or c.acc_mean > best[c.mixer].acc_mean:
            best[c.mixer] = c
    return best


def findings(cells: list[Cell]) -> list[str]:
    """One paragraph per task, read off the cells: who solves the longest length, who
    degrades with length, the smallest state that solves it, the fastest mixer."""
    out = []
    for task in sorted({c.task for c in cells}):
        tc = [c for c in cells if c.task == task and not math.isnan(c.acc_mean)]
        if tc:
            out.append(" ".join(_task_findings(task, tc)))
    return out


def _task_findings(task: str, cells: list[Cell]) -> list[str]:
    longest, shortest = max(c.seq_len for c in cells), min(c.seq_len for c in cells)
    at_long = [c for c in cells if c.seq_len == longest]
    best = sorted(_best_per_mixer(at_long).values(), key=lambda c: -c.acc_mean)
    passed = [c for c in best if c.acc_mean >= PASS]
    failed = [c for c in best if c.acc_mean < PASS]
    where = f"On {task} at the longest length (T = {longest:,})"
    if passed and failed:
        verb = "reaches" if len(passed) == 1 else "reach"
        fall = "falls" if len(failed) == 1 else "fall"
        out = [f"{where}, {_names(passed)} {verb} ≥ {PASS:.0%} accuracy; "
               + f"{_names(failed)} {fall} below."]
    elif passed:
        out = [f"{where}, every mixer reaches ≥ {PASS:.0%} accuracy: {_names(passed)}."]
    else:
        out = [f"{where}, no mixer reaches {PASS:.0%} accuracy; the best is {_names(best[:1])}."]
    if shortest < longest:
        out.append(_length_trend(cells, shortest, longest))
    state = _state_finding(at_long, longest)
    out += [state] if state else []
    fast = sorted(at_long, key=lambda c: -c.tokens_per_s)
    if len(fast) > 1 and fast[-1].tokens_per_s > 0:
        ratio = fast[0].tokens_per_s / fast[-1].tokens_per_s
        out.append(f"Fastest to train at T = {longest:,}: {fast[0].label} "
                   f"({fast[0].tokens_per_s:,.0f} tokens/s), {ratio:.1f}× the slowest, "
                   f"{fast[-1].label} ({fast[-1].tokens_per_s:,.0f} tokens/s)." if ratio >= 1.1
                   else f"All mixers train at about the same speed at T = {longest:,}.")
    return out


def _state_finding(at_long: list[Cell], longest: int) -> str | None:
    """The smallest decode state that solves the longest length, against smaller/larger ones."""
    sized = [c for c in at_long if c.state_bytes > 0]
    solved = [c for c in sized if c.acc_mean >= PASS]
    if not solved or len(sized) < 2:
        return None
    small = min(solved, key=lambda c: c.state_bytes)
    tiny = min(sized, key=lambda c: c.state_bytes)
    big = max(sized, key=lambda c: c.state_bytes)
    text = (f"The smallest decode state that reaches {PASS:.0%} at T = {longest:,} is "
            f"{human_bytes(small.state_bytes)} ({small.label})")
    if tiny.state_bytes < small.state_bytes:
        text += (f"; smaller states fall short ({tiny.label}: {human_bytes(tiny.state_bytes)}, "
                 f"{_pct(tiny.acc_mean)})")
    elif big.state_bytes > small.state_bytes:
        text += f", against {human_bytes(big.state_bytes)} for {big.label}"
    return text + "."


def _length_trend(cells: list[Cell], shortest: int, longest: int) -> str:
    """Which mixers lose ≥ 10 points of accuracy from the shortest to the longest length."""
    short = _best_per_mixer([c for c in cells if c.seq_len == shortest])
    long = _best_per_mixer([c for c in cells if c.seq_len == longest])
    drops = [(m, short[m].acc_mean, long[m].acc_mean) for m in sorted(short.keys() & long.keys())
             if short[m].acc_mean - long[m].acc_mean >= 0.10]
    span = f"from T = {shortest:,} to T = {longest:,}"
    if not drops:
        return f"No mixer loses 10 points of accuracy or more {span}."
    parts = [f"{m} ({_pct(a)} → {_pct(b)})" for m, a, b in drops]
    return f"Accuracy falls with length {span} for {', '.join(parts)}."


# -- plots -------------------------------------------------------------------------------------

def _panels(tasks: list[str], title: str, width: float = 6.4,
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


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=150, metadata={"Software": None})   # no URL, no version: reproducible


def _series_styles(cells: list[Cell]) -> dict[tuple, int]:
    """Index of each series within its mixer (0, 1, ...), for line styles and hatches."""
    idx: dict[tuple, int] = {}
    for mixer in sorted({c.mixer for c in cells}):
        variants = sorted({c.series for c in cells if c.mixer == mixer},
                          key=lambda s: [_sort_key(v) for _, v in s])
        idx.update({(mixer, s): i for i, s in enumerate(variants)})
    return idx


def _accuracy_axis(ax: Any) -> None:
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.axhline(PASS, color="#999999", lw=0.8, ls=(0, (4, 3)), zorder=0)
    ax.annotate(f"{PASS:.0%}", (1.0, PASS), xycoords=("axes fraction", "data"),
                xytext=(-2, -3), textcoords="offset points", ha="right", va="top",
                fontsize=8, color="#888888")
    ax.set_ylabel("accuracy (best lr, mean over seeds)")


def _length_axis(ax: Any, lengths: list[int]) -> None:
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


def _plot_acc_vs_seqlen(cells: list[Cell], colours: dict, path: Path) -> None:
    tasks = sorted({c.task for c in cells})
    styles = _series_styles(cells)
    fig, axes = _panels(tasks, PLOTS["acc_vs_seqlen"])
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
        _accuracy_axis(ax)
        _length_axis(ax, sorted({c.seq_len for c in tc}) or [1])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="mixer")
    _save(fig, path)


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


def _plot_acc_vs_state(cells: list[Cell], colours: dict, path: Path) -> None:
    tasks = sorted({c.task for c in cells})
    lengths = sorted({c.seq_len for c in cells})
    marker = {t: _MARKERS[i % len(_MARKERS)] for i, t in enumerate(lengths)}
    fig, axes = _panels(tasks, PLOTS["acc_vs_state_size"])
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
        _accuracy_axis(ax)
    mixers = sorted({c.mixer for c in cells})
    handles = [Line2D([], [], ls="", marker="o", ms=8, color=colours[m], label=m) for m in mixers]
    handles += [Line2D([], [], ls="", marker=marker[t], ms=7, color="#555555", label=f"T = {t:,}")
                for t in lengths]
    fig.legend(handles=handles, loc="outside right upper", title="mixer / length")
    _save(fig, path)


def _plot_throughput(cells: list[Cell], colours: dict, path: Path) -> None:
    tasks = sorted({c.task for c in cells})
    styles = _series_styles(cells)
    fig, axes = _panels(tasks, PLOTS["throughput"])
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
                ax.bar_label(bars, labels=[_compact(y) for y in ys], padding=2, fontsize=7,
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
    _save(fig, path)


# -- documents ---------------------------------------------------------------------------------

def _markdown(title: str, header: dict[str, str], notes: list[str], cells: list[Cell],
              extra: report_extrapolation.Section | None = None) -> str:
    head, body = _table(cells)

    def row(values: list[str]) -> str:
        return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"

    align = ["---" if i < 2 else "---:" for i in range(len(head))]
    lines = [f"# {title}", ""]
    lines += [f"- **{k}:** {v}" for k, v in header.items()]
    legend = ("Accuracy: best learning rate, mean ± std over seeds. State: decode-state memory "
              "of one sequence. Wall / run: mean wall time of one run.")
    lines += ["", "## What this shows", ""]
    lines += [line for note in notes for line in (note, "")]
    lines += ["## Results", "", legend, "",
              row(head), row(align), *map(row, body), "", "## Plots", ""]
    lines += [f"![{label}]({name}.png)\n" for name, label in PLOTS.items()]
    if extra is not None:
        lines += [f"## {report_extrapolation.TITLE}", ""]
        lines += [line for note in extra.notes for line in (note, "")]
        lines += [row(extra.head), row(["---"] * 3 + ["---:"] * (len(extra.head) - 3)),
                  *map(row, extra.body), "",
                  f"![{report_extrapolation.TITLE}]({report_extrapolation.PLOT}.png)", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
:root{--ink:#1f2430;--muted:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--accent:#3b5bdb;
--good:#2f9e44;--mid:#f08c00;--bad:#e03131}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);line-height:1.55;
font:15px/1.55 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{background:linear-gradient(120deg,#243b6b,#3b5bdb);color:#fff;padding:40px 24px 72px}
header .wrap,main{max-width:1120px;margin:0 auto}
header h1{margin:0 0 6px;font-size:30px;letter-spacing:-.01em}
header p{margin:0;opacity:.85}
main{padding:0 24px 48px;margin-top:-48px}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.stat,.card{background:var(--card);border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.stat{padding:14px 18px}
.stat b{display:block;font-size:20px;overflow-wrap:anywhere}
.stat span{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.06em}
.card{padding:22px 26px;margin-top:20px}
h2{margin:0 0 12px;font-size:19px}
.findings{border-left:4px solid var(--accent)}
.findings p{margin:6px 0;max-width:78ch}
figure{margin:0}figure img{width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:13px;margin-top:6px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:7px 12px;border-bottom:1px solid var(--line);white-space:nowrap}
th{text-align:left;color:var(--muted);font-weight:600;font-size:12px;text-transform:uppercase;
letter-spacing:.04em;border-bottom:2px solid var(--line)}
td.num,th.num{text-align:right}
tbody tr:hover{background:#f1f3f9}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:8px}
td.acc{background:linear-gradient(90deg,var(--c) var(--w),transparent var(--w));
background-size:100% 4px;background-repeat:no-repeat;background-position:bottom}
td.good{--c:var(--good)}td.mid{--c:var(--mid)}td.bad{--c:var(--bad)}
footer{color:var(--muted);font-size:13px;text-align:center;margin-top:28px}
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(cells: list[Cell]) -> str:
    head, body = _table(cells)
    colours = mixer_colours(c.mixer for c in cells)
    numeric = {i for i, h in enumerate(head) if h not in ("Task", "Mixer")}
    acc_col = head.index("Accuracy")
    ths = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric
                  else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
    trs = []
    for cell, values in zip(cells, body):
        tds = []
        for i, v in enumerate(values):
            text = html.escape(v)
            if i == 1:
                text = f'<span class="dot" style="background:{to_hex(colours[cell.mixer])}">' \
                       f"</span>{text}"
            if i == acc_col and not math.isnan(cell.acc_mean):
                grade = "good" if cell.acc_mean >= PASS else "mid" if cell.acc_mean >= 0.5 \
                    else "bad"
                tds.append(f'<td class="num acc {grade}" style="--w:{100 * cell.acc_mean:.1f}%">'
                           f"{text}</td>")
            else:
                tds.append(f'<td class="num">{text}</td>' if i in numeric else f"<td>{text}</td>")
        trs.append("<tr>" + "".join(tds) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{ths}</tr></thead>' \
           f'<tbody>{"".join(trs)}</tbody></table></div>'


def _html_extra(extra: report_extrapolation.Section | None) -> str:
    if extra is None:
        return ""
    esc = html.escape
    ths = "".join(f'<th class="num">{esc(h)}</th>' if i >= 3 else f"<th>{esc(h)}</th>"
                  for i, h in enumerate(extra.head))
    trs = "".join("<tr>" + "".join(f'<td class="num">{esc(v)}</td>' if i >= 3 else f"<td>{esc(v)}</td>"
                                   for i, v in enumerate(r)) + "</tr>" for r in extra.body)
    notes = "".join(f"<p>{esc(n)}</p>" for n in extra.notes)
    title = esc(report_extrapolation.TITLE)
    return (f'<div class="card"><h2>{title}</h2>{notes}<figure><img alt="{title}" '
            f'src="{_data_uri(extra.png)}"><figcaption>{report_extrapolation.PLOT}.png'
            f'</figcaption></figure><div class="scroll"><table><thead><tr>{ths}</tr></thead>'
            f"<tbody>{trs}</tbody></table></div></div>")


def _html(title: str, header: dict[str, str], notes: list[str], cells: list[Cell],
          paths: dict[str, Path], extra: report_extrapolation.Section | None = None) -> str:
    esc = html.escape
    subtitle = f"Suite {header['Suite']} · finished {header['Finished']}"
    stats = "".join(f'<div class="stat"><span>{esc(k)}</span><b>{esc(header[k])}</b></div>'
                    for k in ("Runs", "Compute time (sum over runs)", "Host", "torch"))
    items = "".join(f"<p>{esc(n)}</p>" for n in notes) or "<p>No accuracy recorded.</p>"
    figures = "".join(
        f'<div class="card"><h2>{esc(label)}</h2><figure><img alt="{esc(label)}" '
        f'src="{_data_uri(paths[name])}"><figcaption>{esc(name)}.png</figcaption></figure></div>'
        for name, label in PLOTS.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body><header><div class="wrap"><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></div></header>
<main><div class="stats">{stats}</div>
<div class="card findings"><h2>What this shows</h2>{items}</div>
{figures}
<div class="card"><h2>Results</h2>
<p>Accuracy: best learning rate, mean ± std over seeds (bar: accuracy; green ≥ {PASS:.0%}).
State: decode-state memory of one sequence. Wall / run: mean wall time of one run.</p>
{_html_table(cells)}</div>
{_html_extra(extra)}
<footer>Written by longctx {esc(longctx.__version__)} from {STORE_NAME} alone.</footer>
</main></body></html>
"""
