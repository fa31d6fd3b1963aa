"""The arena report, written from a suite's results store alone.

``write_report(store_dir)`` reads ``store_dir/results.sqlite`` and writes, into ``store_dir``:
``report.md``, a self-contained ``report.html`` (plots inlined as base64 data URIs, inline CSS,
no script) and its PNG plots:

- ``acc_vs_seqlen.png``, ``acc_vs_state_size.png``, ``throughput.png``: a panel per task;
- ``task_<task>.png``: per task, every series' accuracy at every length, beside the task's table;
- ``depth_<task>.png``: accuracy by context length x needle depth (passkey / NIAH runs that
  carry ``depth_eval``, see ``arena/depth.py``);
- ``length_extrapolation.png`` / ``perplexity_vs_length.png``: runs evaluated at other lengths
  (``report_extrapolation``; perplexity for language-modelling tasks);
- ``bench_vs_length.png``: throughput and memory vs length from ``longctx bench`` JSON.

A leaderboard puts our runs of the Long Range Arena tasks beside the published table
(``report_lra``). How runs are grouped into cells and series: ``report_data``.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
from matplotlib.colors import to_hex

from longctx.arena import report_bench, report_depth, report_extrapolation, report_lra
from longctx.arena import report_plots as plots
from longctx.arena.report_data import (
    PASS,
    Cell,
    format_accuracy,
    format_value,
    human_bytes,
    human_duration,
    mixer_colours,
    pct,
    series_keys,
    summarize,
)
from longctx.arena.report_doc import Block, Plot, Section, Table, html_page, markdown
from longctx.arena.report_plots import PLOTS, RC
from longctx.arena.store import ResultsStore, RunRecord, StoreError

__all__ = ["PASS", "PLOTS", "STORE_NAME", "Cell", "findings", "format_accuracy", "human_bytes",
           "human_duration", "mixer_colours", "summarize", "write_report"]

STORE_NAME = "results.sqlite"
_LEGEND = ("Accuracy: best learning rate, mean ± std over seeds. State: decode-state memory of "
           "one sequence. Wall / run: mean wall time of one run.")
_FIXED = ("task", "mixer", "d_model", "seq_len")  # always table columns


# -- entry point -------------------------------------------------------------------------------

def write_report(store_dir: str | Path, title: str | None = None,
                 bench: str | Path | Sequence[str | Path] | None = None) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``store_dir``; return their paths.

    Keys of the result: ``markdown``, ``html``, and each plot's file stem (``acc_vs_seqlen``,
    ``task_mqar``, ...). ``bench``: ``longctx bench`` JSON file(s) for the throughput / memory
    section; None: every ``bench*.json`` in ``store_dir`` (files that are not bench results are
    skipped there, but raise ValueError when given). Raises :class:`StoreError` if there is no
    store or it holds no finished run.
    """
    store_dir = Path(store_dir)
    path = store_dir / STORE_NAME
    if not path.is_file():                     # ResultsStore would create an empty one
        raise StoreError(f"no results store at {path}")
    bench_paths, strict = _bench_paths(bench, store_dir)
    with ResultsStore(path) as store:
        rows = store.rows()
    if not rows:
        raise StoreError(f"no finished runs in {path}")
    cells = summarize(rows)
    title = title or _default_title(rows, store_dir)
    colours = mixer_colours(c.mixer for c in cells)
    with matplotlib.rc_context(RC):
        sections = _sections(rows, cells, colours, store_dir, bench_paths, strict)
    header = _header(rows)
    out = {b.path.stem: b.path for s in sections for b in s.blocks if isinstance(b, Plot)}
    out["markdown"] = store_dir / "report.md"
    out["markdown"].write_text(markdown(title, header, sections), encoding="utf-8")
    out["html"] = store_dir / "report.html"
    subtitle = f"Suite {header['Suite']} · finished {header['Finished']}"
    stats = {k: header[k] for k in ("Runs", "Compute time (sum over runs)", "Device", "Host", "torch")}
    page = html_page(title, subtitle, stats, sections, f"Written from {STORE_NAME} alone")
    out["html"].write_text(page, encoding="utf-8")
    return out


def _bench_paths(bench: str | Path | Sequence[str | Path] | None,
                 store_dir: Path) -> tuple[list[Path], bool]:
    """``(files, strict)``: the given bench files (which must exist), or those found."""
    if bench is None:
        return report_bench.find_files(store_dir), False
    paths = [Path(bench)] if isinstance(bench, (str, Path)) else [Path(p) for p in bench]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"bench: no bench JSON file at {p}")
        report_bench.load(p)  # fail before any plot is drawn
    return paths, True


def _default_title(rows: list[RunRecord], store_dir: Path) -> str:
    suites = sorted({r.suite for r in rows})
    return f"longctx arena — {suites[0] if len(suites) == 1 else store_dir.name}"


def _header(rows: list[RunRecord]) -> dict[str, str]:
    """The facts above the table: runs, total wall time, devices, hosts, torch versions, source
    commits, suites."""
    finished = sorted(r.finished_at for r in rows)
    return {"Runs": f"{len(rows):,}",
            "Compute time (sum over runs)": human_duration(sum(r.wall_time_s for r in rows)),
            "Host": ", ".join(sorted({r.host or "?" for r in rows})),
            "Device": _counted(r.device for r in rows),
            "torch": ", ".join(sorted({r.torch_version or "?" for r in rows})),
            "Commit": _counted(r.git_commit for r in rows),
            "Suite": ", ".join(sorted({r.suite for r in rows})),
            "Finished": finished[0] if finished[0] == finished[-1]
            else f"{finished[0]} – {finished[-1]}"}


def _counted(values: Iterable[str], most: int = 4) -> str:
    """Distinct values ('?' for unrecorded), most frequent first, with their run counts when
    there are several: ``"cuda:H100 (90 runs), cpu (6 runs)"``; past ``most``, "+ N more"."""
    counts = Counter(v or "?" for v in values)
    if len(counts) == 1:
        return next(iter(counts))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{v} ({n} run{'s' if n > 1 else ''})" for v, n in ranked[:most])
    return shown + (f", + {len(ranked) - most} more" if len(ranked) > most else "")


# -- sections ----------------------------------------------------------------------------------

def _sections(rows: list[RunRecord], cells: list[Cell], colours: dict, store_dir: Path,
              bench_paths: list[Path], strict: bool) -> list[Section]:
    """Every section in page order, their plots written into ``store_dir``."""
    notes = findings(cells) or ["No accuracy recorded."]
    sections = [Section("What this shows", list(notes), css="findings")]
    paths = {name: store_dir / f"{name}.png" for name in PLOTS}
    plots.plot_acc_vs_seqlen(cells, colours, paths["acc_vs_seqlen"])
    plots.plot_acc_vs_state(cells, colours, paths["acc_vs_state_size"])
    plots.plot_throughput(cells, colours, paths["throughput"])
    sections += [Section(label, [Plot(paths[name], label)]) for name, label in PLOTS.items()]
    lra = report_lra.section_blocks(cells, rows, colours)
    if lra is not None:
        sections.append(Section(report_lra.TITLE, lra))
    depth = report_depth.blocks(rows, series_keys(rows)[0], store_dir)
    for task in sorted({c.task for c in cells}):
        task_rows = [r for r in rows if str(r.config.get("task", "?")) == task]
        sections.append(_task_section(task, [c for c in cells if c.task == task], task_rows,
                                      colours, store_dir, depth.get(task, [])))
    for metric in ("accuracy", "perplexity"):
        extra = report_extrapolation.write_section(rows, store_dir, metric)
        if extra is not None:
            sections.append(_extrapolation_section(extra, metric))
    blocks = report_bench.section_blocks(bench_paths, store_dir, colours, strict)
    if blocks is not None:
        sections.append(Section(report_bench.TITLE, blocks))
    return sections


def _task_section(task: str, cells: list[Cell], rows: list[RunRecord], colours: dict,
                  store_dir: Path, depth: list[Block]) -> Section:
    """A task's description and settings, its plot, its results table, its depth heat map."""
    blocks: list[Block] = []
    about = _task_description(task)
    blocks += [about] if about else []
    settings = task_settings(rows)
    blocks += [f"Settings shared by every run: {settings}."] if settings else []
    png = store_dir / f"task_{re.sub(r'[^A-Za-z0-9_.-]+', '_', task)}.png"
    plots.plot_task(cells, colours, png)
    head, body = _table(cells)
    blocks += [Plot(png, f"Accuracy — {task}"), _LEGEND,
               Table(head, body, left=1, html=_html_table(cells, colours))]
    return Section(f"Task: {task}", blocks + depth)


def _task_description(task: str) -> str | None:
    """The registry's one-line description of ``task`` (None for a task it does not know)."""
    from longctx.tasks.registry import TASKS

    entry = TASKS.get(task)
    return f"{task}: {entry[2]}." if entry else None


def task_settings(rows: list[RunRecord]) -> str:
    """The config keys every run of ``rows`` shares (lr, seed, mixer, length excluded), as
    ``"k=v; model: n_layers=2, n_heads=2; ..."``; nested dicts are written ``key: a=1, b=2``."""
    keys = sorted({k for r in rows for k in r.config} - {"task", "mixer", "seq_len", "lr", "seed"})
    parts = []
    for k in keys:
        values = {repr(r.config.get(k)) for r in rows}
        if len(values) == 1 and rows[0].config.get(k) not in (None, {}, []):
            value = rows[0].config[k]
            parts.append(f"{k}: {format_value(value)}" if isinstance(value, dict)
                         else f"{k}={format_value(value)}")
    return "; ".join(parts)


def _extrapolation_section(extra: report_extrapolation.Section, metric: str) -> Section:
    table = Table(extra.head, extra.body, left=3)
    title = report_extrapolation.PPL_TITLE if metric == "perplexity" else report_extrapolation.TITLE
    return Section(title, [*extra.notes, Plot(extra.png, title), table])


# -- tables ------------------------------------------------------------------------------------

def _table(cells: list[Cell]) -> tuple[list[str], list[list[str]]]:
    """Column names and formatted rows of one task's results table: the config keys that vary
    among these cells are extra columns."""
    extra = [k for k in cells[0].columns if k not in _FIXED
             and len({repr(c.columns[k]) for c in cells}) > 1]
    head = (["Mixer", "d_model", "T"] + extra
            + ["Accuracy", "Best lr", "Loss", "State", "Tokens/s", "Wall / run", "Runs"])
    body = [[c.mixer, str(c.d_model), f"{c.seq_len:,}"]
            + [format_value(c.columns[k]) for k in extra]
            + [format_accuracy(c), format_value(c.best_lr),
               "—" if math.isnan(c.loss) else f"{c.loss:.3f}",
               human_bytes(c.state_bytes), f"{c.tokens_per_s:,.0f}", human_duration(c.wall_s),
               str(c.n_runs)] for c in cells]
    return head, body


def _html_table(cells: list[Cell], colours: dict) -> str:
    """The results table with a colour dot per mixer and an accuracy bar under each value."""
    head, body = _table(cells)
    numeric = set(range(1, len(head)))
    acc_col = head.index("Accuracy")
    ths = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric
                  else f"<th>{html.escape(h)}</th>" for i, h in enumerate(head))
    trs = []
    for cell, values in zip(cells, body):
        tds = []
        for i, v in enumerate(values):
            text = html.escape(v)
            if i == 0:
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


# -- findings ----------------------------------------------------------------------------------

def _names(cells: list[Cell]) -> str:
    """``"a (99.0%), b (97.0%) and c (95.5%)"``."""
    parts = [f"{c.label} ({pct(c.acc_mean)})" for c in cells]
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
                 f"{pct(tiny.acc_mean)})")
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
    parts = [f"{m} ({pct(a)} → {pct(b)})" for m, a, b in drops]
    return f"Accuracy falls with length {span} for {', '.join(parts)}."

