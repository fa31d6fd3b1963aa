"""The report's leaderboard: the published Long Range Arena table beside our runs of its tasks.

Published accuracies (%, Path-X omitted; the average is over these five tasks):
Transformer from Tay et al. 2021 ("Long Range Arena", ICLR 2021), S4 from Gu, Goel & Ré 2022
("Efficiently Modeling Long Sequences with Structured State Spaces", ICLR 2022), MEGA from Ma et
al. 2023 ("Mega: Moving Average Equipped Gated Attention", ICLR 2023). Ours: per series, the
accuracy (best lr, mean over seeds) at the longest length the series ran on each task.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Sequence

from matplotlib.colors import to_hex

from longctx.arena.report_data import Cell
from longctx.arena.report_doc import Block, Table
from longctx.arena.store import RunRecord

TITLE = "Leaderboard: Long Range Arena"
# our task name -> LRA column ("—" until a store has runs of it)
TASKS = {"listops": "ListOps", "text_classification": "Text", "retrieval": "Retrieval",
         "images": "Image", "pathfinder": "Pathfinder"}
# published sequence lengths of the five tasks (Tay et al. 2021, §3)
PUBLISHED_LENGTHS = ("2K", "4K", "2 × 4K", "1K", "1K")
# accuracy (%) on ListOps, Text, Retrieval, Image, Pathfinder; each paper's LRA results table
PUBLISHED = {
    "Transformer (Tay et al. 2021)": (36.37, 64.27, 57.46, 42.44, 71.40),
    "S4 (Gu et al. 2022)": (59.60, 86.82, 90.90, 88.65, 94.20),
    "MEGA (Ma et al. 2023)": (63.14, 90.43, 91.25, 90.44, 96.01),
}


def average(scores: Sequence[float | None]) -> float | None:
    """Mean over the five tasks, or None when one is missing (LRA's average needs all five)."""
    if len(scores) != len(TASKS) or any(s is None or math.isnan(s) for s in scores):
        return None
    return statistics.fmean(scores)


def our_scores(cells: list[Cell]) -> dict[str, list[float | None]]:
    """Per series label, the accuracy (%) on each LRA task at the longest length it ran;
    None where the series did not run the task. Series without any LRA task are left out."""
    out: dict[str, list[float | None]] = {}
    for c in cells:
        if c.task not in TASKS or math.isnan(c.acc_mean):
            continue
        out.setdefault(c.label, [None] * len(TASKS))
    for label, scores in out.items():
        for i, task in enumerate(TASKS):
            mine = [c for c in cells if c.label == label and c.task == task
                    and not math.isnan(c.acc_mean)]
            if mine:
                scores[i] = 100 * max(mine, key=lambda c: c.seq_len).acc_mean
    return dict(sorted(out.items()))


def _fmt(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(ours: dict[str, list[float | None]]) -> tuple[list[str], list[list[str]]]:
    """Head and rows: the published models, then ours (``ours: <series>``)."""
    head = ["Model", *TASKS.values(), "Avg"]
    body = [[name, *(f"{s:.2f}" for s in scores), _fmt(average(scores), 2)]
            for name, scores in PUBLISHED.items()]
    body += [[f"ours: {label}", *(_fmt(s, 1) for s in scores), _fmt(average(scores), 1)]
             for label, scores in ours.items()]
    return head, body


def _html(head: list[str], body: list[list[str]], n_published: int,
          colours: dict[str, object], mixers: list[str]) -> str:
    """Published rows muted, a rule before ours, our rows with the mixer's colour dot."""
    esc = html.escape
    ths = "<th>Model</th>" + "".join(f'<th class="num">{esc(h)}</th>' for h in head[1:])
    lengths = "<td>published length</td>" + "".join(
        f'<td class="num">{esc(t)}</td>' for t in PUBLISHED_LENGTHS) + "<td></td>"
    trs = [f'<tr class="pub">{lengths}</tr>']
    for i, row in enumerate(body):
        css = "pub" if i < n_published else "sep" if i == n_published else ""
        name = esc(row[0])
        if i >= n_published and mixers[i - n_published] in colours:
            dot = to_hex(colours[mixers[i - n_published]])
            name = f'<span class="dot" style="background:{dot}"></span>{name}'
        tds = f"<td>{name}</td>" + "".join(f'<td class="num">{esc(v)}</td>' for v in row[1:])
        trs.append(f'<tr class="{css}">{tds}</tr>')
    return (f'<div class="scroll"><table><thead><tr>{ths}</tr></thead>'
            f'<tbody>{"".join(trs)}</tbody></table></div>')


def _scale(rows: list[RunRecord]) -> str:
    """``"d_model 64, 2 layers, up to 0.1M parameters, 300 training steps"`` from the configs."""
    def values(get) -> str:
        vals = sorted({v for v in map(get, rows) if v is not None}, key=str)
        return "/".join(map(str, vals)) or "?"

    params = max((r.metrics.get("params") or 0 for r in rows), default=0)
    parts = [f"d_model {values(lambda r: r.config.get('d_model'))}",
             f"{values(lambda r: (r.config.get('model') or {}).get('n_layers'))} layers"]
    if params:
        parts.append(f"up to {params / 1e6:.2g}M parameters")
    parts.append(f"{values(lambda r: (r.config.get('train') or {}).get('steps'))} training steps")
    return ", ".join(parts)


def section_blocks(cells: list[Cell], rows: list[RunRecord],
                   colours: dict[str, object]) -> list[Block] | None:
    """The leaderboard's paragraphs and table, or None when the store has no LRA task."""
    ours = our_scores(cells)
    if not ours:
        return None
    lra_rows = [r for r in rows if r.config.get("task") in TASKS]
    lengths = ", ".join(f"{task} T = {max(c.seq_len for c in cells if c.task == task):,}"
                        for task in TASKS if any(c.task == task for c in cells))
    head, body = table(ours)
    mixers = [next(c.mixer for c in cells if c.label == label) for label in ours]
    notes = [
        ("Published: accuracy (%) of models trained on the LRA data — ListOps expressions of up "
         "to 2K tokens, byte-level IMDb reviews (Text, 4K), pairs of ACL Anthology papers "
         "(Retrieval, 4K each), CIFAR-10 as 1,024 grey-scale pixels (Image) and Pathfinder-32 "
         "— with the papers' model sizes and training budgets; Path-X omitted, the average is "
         "over these five tasks."),
        (f"Ours: small models ({_scale(lra_rows)}) trained on our own generated data at this "
         f"store's lengths ({lengths}); the text and retrieval tasks are not IMDb or the ACL "
         "Anthology, and the images task classifies generated images, not CIFAR-10. The numbers are "
         "therefore not comparable: the published rows only give the scale of each task. A "
         "dash: not run; the average needs all five tasks."),
    ]
    return [*notes, Table(head, body, left=1,
                          html=_html(head, body, len(PUBLISHED), colours, mixers))]
