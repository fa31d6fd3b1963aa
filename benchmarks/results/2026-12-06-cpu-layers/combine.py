"""Combine the runs in raw/ into bench.json (+ bench.md and the plots): per (layer, form, T) the
smallest of the runs' medians, forward and forward+backward separately (the machine was shared:
other sessions' test runs overlapped parts of every run, see raw/load-*.log), the largest peak
memory (it does not vary between runs). Rerun: ``.venv/bin/python <this file>``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from longctx.bench.plots import write_markdown, write_plots

HERE = Path(__file__).resolve().parent
RUNS = ["run1.json", "run2.json", "run3.json"]  # run2: block_recurrent, rmt, mega only


def main() -> None:
    runs = {name: json.loads((HERE / "raw" / name).read_text()) for name in RUNS}
    out = copy.deepcopy(runs[RUNS[0]])
    for layer, entry in out["ops"].items():
        for row in entry["results"]:
            same = [r for run in runs.values() for r in run["ops"].get(layer, {}).get("results", [])
                    if (r["form"], r["T"]) == (row["form"], row["T"])]
            tokens = row["tokens_per_s"] * row["fwd_ms"] / 1e3  # B * T
            row["fwd_ms"] = min(r["fwd_ms"] for r in same)
            row["fwdbwd_ms"] = min(r["fwdbwd_ms"] for r in same)
            for key in ("fwd_peak_bytes", "fwdbwd_peak_bytes"):
                row[key] = max(r[key] for r in same)
            row["tokens_per_s"] = tokens / (row["fwd_ms"] / 1e3)
            row["fwdbwd_tokens_per_s"] = tokens / (row["fwdbwd_ms"] / 1e3)
            row["runs"] = len(same)
    meta = out["meta"]
    meta["timing"] += ("; combined over raw/" + ", raw/".join(RUNS) + ": per row the smallest "
                       "median over the runs (fwd and fwd+bwd separately)")
    meta["loadavg_start"] = [runs[r]["meta"]["loadavg_start"] for r in RUNS]
    meta["loadavg_end"] = [runs[r]["meta"]["loadavg_end"] for r in RUNS]
    meta["date"] = ", ".join(runs[r]["meta"]["date"] for r in RUNS)
    (HERE / "bench.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    write_markdown(out, HERE / "bench.md")
    write_plots(out, HERE)


if __name__ == "__main__":
    main()
