"""The best MQAR accuracy per (mixer, d_model, T) cell of a zoology-mqar store, over the learning
rates run so far, as the Markdown table of its README (zoology keeps the best rate per cell):

    python benchmarks/scripts/zoology_table.py benchmarks/results/<dir>/results.sqlite

A cell with fewer than all of the suite's rates says how many ran, e.g. "73.5 (2/4)"."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import defaultdict

MIXERS = ("softmax_attention", "deltanet", "h3", "linear_attention", "gla", "retention",
          "gated_deltanet", "mamba2")


def table(path: str, n_rates: int = 4) -> str:
    cells: dict[tuple, list[float]] = defaultdict(list)
    with sqlite3.connect(path) as con:
        for cfg, metrics in con.execute("SELECT config, metrics FROM runs"):
            c = json.loads(cfg)
            cells[(c["mixer"], c["d_model"], c["seq_len"])].append(json.loads(metrics)["accuracy"])
    cols = [(d, t) for d in (64, 128) for t in (64, 128, 256)]
    lines = ["| mixer | " + " | ".join(f"d{d} T{t}" for d, t in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for m in MIXERS:
        row = []
        for d, t in cols:
            acc = cells.get((m, d, t), [])
            cell = f"{100 * max(acc):.1f}" if acc else "—"
            row.append(cell + (f" ({len(acc)}/{n_rates})" if 0 < len(acc) < n_rates else ""))
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    total = sum(len(v) for v in cells.values())
    return "\n".join(lines) + f"\n\n{total} runs in the store."


if __name__ == "__main__":
    print(table(sys.argv[1]))
