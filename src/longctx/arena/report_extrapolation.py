"""The report's length-extrapolation sections: accuracy vs evaluation length, per RoPE scaling,
and for language-modelling tasks (``LM_TASKS``) perplexity per byte vs evaluation length.

Drawn from the ``length_eval`` records that ``arena/extrapolation.py`` adds to a run's metrics.
A *line* is one (mixer, scaling); panels split zero-shot from fine-tuned evaluation. Runs that
differ only in seed are averaged; over learning rates the run with the best in-length accuracy
is kept (as in the main table).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from longctx.arena.store import RunRecord

PLOT = "length_extrapolation"
TITLE = "Accuracy vs evaluation length (trained at T)"
LM_TASKS = ("corpus_lm",)  # scored by perplexity (exp of the loss in nats per token)
PPL_PLOT = "perplexity_vs_length"
PPL_TITLE = "Perplexity vs evaluation length (trained at T)"
# one colour per scaling; non-RoPE variants (ALiBi, NoPE) draw in grey shades with markers
_SCALING_COLOURS = {"none": "#e03131", "linear": "#1971c2", "ntk": "#2f9e44",
                    "dynamic": "#f08c00", "yarn": "#7048e8", "llama3": "#0c8599"}
_OTHER = ("#495057", "#868e96", "#343a40", "#adb5bd")
_ORDER = ("none", "linear", "ntk", "dynamic", "yarn", "llama3")  # marker per scaling


@dataclass
class Line:
    mixer: str
    scaling: str
    finetuned: bool
    trained_len: int
    points: dict[int, float]  # evaluation length -> accuracy or perplexity (mean over seeds)

    @property
    def label(self) -> str:
        return self.mixer if self.scaling == "none" else f"{self.mixer} + {self.scaling}"


@dataclass
class Section:
    png: Path
    head: list[str]
    body: list[list[str]]
    notes: list[str]


def _best_runs(rows: list[RunRecord]) -> list[list[RunRecord]]:
    """Group runs by config without lr / seed; keep the lr whose mean in-length accuracy is best."""
    groups: dict[tuple, dict[float, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = tuple(sorted((k, repr(v)) for k, v in r.config.items() if k not in ("lr", "seed")))
        groups[key][r.config["lr"]].append(r)
    out = []
    for by_lr in groups.values():
        out.append(max(by_lr.values(),
                       key=lambda rs: statistics.fmean(r.metrics.get("accuracy", 0.0) for r in rs)))
    return out


def _value(e: dict, metric: str) -> float:
    return e["accuracy"] if metric == "accuracy" else math.exp(min(e["loss"], 50.0))


def lines(rows: list[RunRecord], metric: str = "accuracy") -> list[Line]:
    """Every line of the plot, from the runs that have ``length_eval``: ``metric`` is
    ``"accuracy"`` (the runs of tasks outside ``LM_TASKS``) or ``"perplexity"`` (those in it)."""
    lm = metric == "perplexity"
    rows = [r for r in rows if r.metrics.get("length_eval")
            and (str(r.config.get("task")) in LM_TASKS) == lm]
    result = []
    for runs in _best_runs(rows):
        acc: dict[tuple[str, bool, int], list[float]] = defaultdict(list)
        for r in runs:
            for e in r.metrics["length_eval"]:
                acc[(e["scaling"], e["finetuned"], e["length"])].append(_value(e, metric))
        cfg = runs[0].config
        by_line: dict[tuple[str, bool], dict[int, float]] = defaultdict(dict)
        for (scaling, tuned, length), values in acc.items():
            by_line[(scaling, tuned)][length] = statistics.fmean(values)
        base = by_line.get(("none", False), {})
        for (scaling, tuned), pts in by_line.items():
            if tuned or scaling != "none":  # start every line at the trained length's point
                pts = {**{n: a for n, a in base.items() if n == cfg["seq_len"]}, **pts}
            result.append(Line(cfg["mixer"], scaling, tuned, cfg["seq_len"], pts))
    return sorted(result, key=lambda ln: (ln.mixer, ln.finetuned, ln.scaling != "none", ln.scaling))


def write_section(rows: list[RunRecord], store_dir: Path,
                  metric: str = "accuracy") -> Section | None:
    """The plot and table of ``metric`` (see :func:`lines`), or None if no run evaluated other
    lengths."""
    lns = lines(rows, metric)
    if not lns:
        return None
    ppl = metric == "perplexity"
    png = store_dir / f"{PPL_PLOT if ppl else PLOT}.png"
    _plot(lns, png, metric)
    lengths = sorted({n for ln in lns for n in ln.points})
    head = ["Mixer", "Scaling", "Fine-tuned"] + [f"{n:,}" for n in lengths]
    body = [[ln.mixer, ln.scaling, "yes" if ln.finetuned else "no"]
            + [("—" if n not in ln.points else f"{ln.points[n]:.2f}" if ppl
                else f"{100 * ln.points[n]:.1f}%") for n in lengths]
            for ln in lns]
    return Section(png, head, body, _ppl_notes(lns) if ppl else _notes(lns))


def _plot(lns: list[Line], path: Path, metric: str = "accuracy") -> None:
    tuned = [False, True] if any(ln.finetuned for ln in lns) else [False]
    fig = Figure(figsize=(6.4 * len(tuned) + 2.8, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tuned), squeeze=False)[0]
    rope = {ln.mixer for ln in lns if ln.scaling != "none"}  # mixers evaluated under scalings
    others = sorted({ln.mixer for ln in lns} - rope)
    handles: dict[str, object] = {}
    lowest = min(a for ln in lns for a in ln.points.values())
    for ax, ft in zip(axes, tuned):
        for i, ln in enumerate(x for x in lns if x.finetuned == ft):
            xs = sorted(ln.points)
            if ln.mixer in rope:  # unscaled RoPE in red, each scaling in its colour
                colour, style = _SCALING_COLOURS.get(ln.scaling, "#000000"), "-"
                label = f"{ln.mixer} (RoPE, {'unscaled' if ln.scaling == 'none' else ln.scaling})"
            else:  # ALiBi / NoPE / non-attention variants: grey, dashed
                colour, style = _OTHER[others.index(ln.mixer) % len(_OTHER)], "--"
                label = ln.mixer
            marker = "os^Dv*P"[(_ORDER.index(ln.scaling) if ln.scaling in _ORDER else i) % 7]
            (h,) = ax.plot(xs, [ln.points[x] for x in xs], style, marker=marker, color=colour,
                           lw=1.8, ms=5, label=label, alpha=0.9)
            handles.setdefault(label, h)
        for t in sorted({ln.trained_len for ln in lns}):
            ax.axvline(t, color="#999999", lw=0.8, ls=":")
        all_x = sorted({x for ln in lns for x in ln.points})
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_x, [f"{x:,}" for x in all_x])
        ax.minorticks_off()
        if metric == "perplexity":  # lower is better; an unscaled collapse spans decades
            ax.set_yscale("log")
            ax.set_ylabel("perplexity per byte (log scale)")
        else:
            ax.set_ylim(max(0.0, int(lowest * 10) / 10 - 0.05), 1.01)
            ax.set_ylabel("accuracy")
        ax.set_xlabel("evaluation length (dotted: trained length)")
        ax.set_title("with a short fine-tune at each length" if ft else "zero-shot")
    fig.legend(list(handles.values()), list(handles), loc="outside right upper",
               title="mixer (position encoding)")
    fig.suptitle(PPL_TITLE if metric == "perplexity" else TITLE, fontweight="bold", fontsize=13)
    fig.savefig(path, dpi=150, metadata={"Software": None})


def _reach(ln: Line, holds) -> int:
    """The longest length up to which every point from the trained length on satisfies
    ``holds(value)`` (at least the trained length)."""
    reach = ln.trained_len
    for n in sorted(ln.points):
        if n >= ln.trained_len and not holds(ln.points[n]):
            break
        reach = max(reach, n)
    return reach


def _kind(ln: Line) -> str:
    return "fine-tuned" if ln.finetuned else "zero-shot"


def _notes(lns: list[Line]) -> list[str]:
    """One sentence per line: its accuracy at the longest length, and how far it keeps 90% of
    its in-length accuracy."""
    notes = []
    for ln in lns:
        t = ln.trained_len
        if t not in ln.points or ln.points[t] <= 0:
            continue
        base = ln.points[t]
        longest = max(ln.points)
        reach = _reach(ln, lambda a, base=base: a >= 0.9 * base)
        notes.append(
            f"{ln.label} ({_kind(ln)}): {100 * base:.1f}% at the trained length {t:,}, "
            f"{100 * ln.points[longest]:.1f}% at {longest:,}; keeps 90% of it up to "
            f"{reach:,} ({reach / t:g}x)."
        )
    return notes


def _ppl_notes(lns: list[Line]) -> list[str]:
    """One sentence per line: perplexity at the trained length, the shortest and longest
    lengths, and the longest length up to which it stays within 10% of the trained length's."""
    notes = []
    for ln in lns:
        t = ln.trained_len
        if t not in ln.points:
            continue
        base, xs = ln.points[t], sorted(ln.points)
        reach = _reach(ln, lambda p, base=base: p <= 1.1 * base)
        notes.append(f"{ln.label} ({_kind(ln)}): perplexity {base:.2f} at the trained length {t:,}, "
                     f"{ln.points[xs[0]]:.2f} at {xs[0]:,} and {ln.points[xs[-1]]:.2f} at "
                     f"{xs[-1]:,}; within 10% of it up to {reach:,} ({reach / t:g}x).")
    return notes
