"""``longctx stream-ppl`` and ``longctx stream-bench``: the StreamingLLM evaluation of one model
under several cache policies, with results saved after each policy (an interrupted run resumes)
and a loss-vs-position / latency-vs-position plot.

Methods (Xiao et al. 2024, §4.1 and Figure 3): ``full`` (dense attention, the cache grows),
``window`` (the last ``window`` tokens), ``sinks`` (``n_sink`` first tokens + the last
``window``: StreamingLLM), ``recompute`` (sliding window with re-computation: a fresh forward over
the last ``n_sink + window`` tokens for every token).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from longctx.cache.policy import CachePolicy, LandmarkPolicy
from longctx.generate.streaming import (
    Streamer,
    decode_latency,
    loss_by_position,
    open_streamer,
    recompute_latency,
    recompute_nll,
    stream_nll,
)

METHODS = ("full", "window", "sinks", "landmark", "recompute")


@dataclass
class StreamEvalConfig:
    model: str  # checkpoint directory
    methods: list[str] = field(default_factory=lambda: ["window", "sinks", "recompute"])
    n_sink: int = 4  # attention sinks kept by ``sinks``
    window: int | None = None  # recent tokens kept (None: trained length - n_sink)
    tokens: int = 4096  # stream length
    chunk: int = 1  # tokens per feed for the cache policies (1 = token by token, as the paper)
    bucket: int = 64  # positions per point of the loss-vs-position curve
    full_max_tokens: int | None = None  # dense attention only up to here (None: whole stream)
    rope_scaling: dict | None = None  # RoPE scaling for every method
    landmark_top_k: int | None = None  # ``landmark``: blocks retrieved per head
    device: str = "cpu"

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"stream methods must be among {', '.join(METHODS)}; got {self.methods}")
        if "landmark" in self.methods and not self.landmark_top_k:
            raise ValueError("stream method 'landmark' needs --landmark-top-k")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def policy_of(method: str, cfg: StreamEvalConfig, window: int) -> CachePolicy | LandmarkPolicy | None:
    if method == "landmark":
        return LandmarkPolicy(cfg.landmark_top_k)
    return {"full": None, "window": CachePolicy(0, window), "sinks": CachePolicy(cfg.n_sink, window),
            "recompute": None}[method]


def _write_json(data: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_results(path: Path, key: str) -> dict:
    """The results saved so far for this configuration (a clear error if the file is corrupt)."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); move it away to start over") from None
    if not isinstance(data, dict) or "config_key" not in data or "methods" not in data:
        raise ValueError(f"{path} is not a stream-ppl result file; move it away to start over")
    if data["config_key"] != key:
        raise ValueError(f"{path} holds results of another configuration ({data.get('config')}); "
                         "use another --out directory, or remove it to start over")
    return data["methods"]


def _meta(cfg: StreamEvalConfig, streamer: Streamer, window: int, text: str) -> dict:
    return {"config": asdict(cfg), "config_key": cfg.key(), "window": window, "text": text,
            "trained_len": streamer.trained_len, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def run_stream_ppl(cfg: StreamEvalConfig, ids: list[int], out_dir: Path, text: str = "",
                   progress: bool = True) -> dict:
    """Loss at every position of ``ids`` under each method; ``out_dir/stream_ppl.json`` is
    rewritten after each method and methods already there are not recomputed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "stream_ppl.json"
    done = load_results(path, cfg.key())
    streamer = open_streamer(cfg.model, None, cfg.rope_scaling, cfg.device)
    window = cfg.window or max(1, (streamer.trained_len or 1024) - cfg.n_sink)
    stream = streamer.bos + list(ids[:cfg.tokens])
    meta = _meta(cfg, streamer, window, text)
    for method in cfg.methods:
        if method in done:
            continue
        if method == "recompute":
            res = recompute_nll(streamer.forward, stream[len(streamer.bos):], cfg.n_sink + window,
                                prefix=streamer.bos, progress=progress)
            nll = res.nll
        else:
            streamer.policy = policy_of(method, cfg, window)
            n = len(stream) if method != "full" or not cfg.full_max_tokens else cfg.full_max_tokens
            chunk = 512 if method == "full" else cfg.chunk
            res = stream_nll(streamer, stream[:n], chunk=chunk, progress=progress, desc=method)
            nll = res.nll[len(streamer.bos):]  # the loss of predicting the text, not after BOS
        done[method] = summarize(method, nll, res.seconds, cfg.bucket, res.cache_bytes)
        _write_json({**meta, "methods": done}, path)
    data = {**meta, "methods": done}
    write_csv(data, out_dir / "stream_ppl.csv")
    plot_stream_ppl(data, out_dir / "stream_ppl.png")
    write_stream_report(out_dir)
    return data


def summarize(method: str, nll: torch.Tensor, seconds: float, bucket: int,
              cache_bytes: list[tuple[int, int]] | None = None) -> dict:
    finite = torch.isfinite(nll)
    mean = float(nll[finite].mean()) if finite.any() else float("nan")
    return {"tokens": int(nll.numel()), "mean_nll": mean, "ppl": math.exp(min(mean, 50.0)),
            "seconds": seconds, "ms_per_token": 1e3 * seconds / max(1, nll.numel()),
            "by_position": loss_by_position(nll, bucket),
            "max_cache_bytes": max((b for _, b in cache_bytes or []), default=None),
            "nll": [round(float(x), 5) for x in nll]}


def write_csv(data: dict, path: Path) -> None:
    lines = ["method,position,nll"]
    for method, r in data["methods"].items():
        lines += [f"{method},{t + 1},{x}" for t, x in enumerate(r["nll"])]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


STYLE = {"full": ("#888888", "--"), "window": ("#d62728", "-"), "sinks": ("#1f77b4", "-"),
         "recompute": ("#2ca02c", ":")}


def plot_stream_ppl(data: dict, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    trained = data.get("trained_len")
    for method, r in data["methods"].items():
        pts = r["by_position"]
        colour, ls = STYLE.get(method, ("k", "-"))
        label = f"{method} (mean {r['mean_nll']:.3f} nats)"
        ax.plot([p for p, _ in pts], [v for _, v in pts], ls, color=colour, label=label)
    if trained:
        ax.axvline(trained, color="#bbbbbb", lw=0.8)
        ax.text(trained, ax.get_ylim()[1], " trained length", va="top", fontsize=8, color="#777777")
    ax.set_xlabel("position in the stream (tokens)")
    ax.set_ylabel(f"loss (nats/token, mean over {data['config']['bucket']} positions)")
    cfg = data["config"]
    ax.set_title(f"Streaming {Path(cfg['model']).name}: cache = {cfg['n_sink']} sinks + "
                 f"{data['window']} window", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(True, color="#dddddd")
    fig.savefig(path, dpi=110)
    return path


def run_stream_bench(cfg: StreamEvalConfig, ids: list[int], out_dir: Path, every: int = 128,
                     progress: bool = True) -> dict:
    """Per-token decode latency and cache memory vs stream position for each method."""
    out_dir.mkdir(parents=True, exist_ok=True)
    streamer = open_streamer(cfg.model, None, cfg.rope_scaling, cfg.device)
    window = cfg.window or max(1, (streamer.trained_len or 1024) - cfg.n_sink)
    stream = streamer.bos + list(ids[:cfg.tokens])
    rows: dict[str, list[dict]] = {}
    for method in cfg.methods:
        if method == "recompute":
            positions = list(range(every, len(stream) + 1, every))
            rows[method] = recompute_latency(streamer.forward, stream, cfg.n_sink + window, positions)
        else:
            streamer.policy = policy_of(method, cfg, window)
            n = len(stream) if method != "full" or not cfg.full_max_tokens else cfg.full_max_tokens
            rows[method] = decode_latency(streamer, stream[:n], every=every, progress=progress)
    data = {**_meta(cfg, streamer, window, ""), "device": cfg.device, "rows": rows}
    if cfg.device.startswith("cuda"):
        data["device_name"] = torch.cuda.get_device_name()
    _write_json(data, out_dir / "stream_bench.json")
    plot_stream_bench(data, out_dir / "stream_bench.png")
    write_stream_report(out_dir)
    return data


def plot_stream_bench(data: dict, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for method, rows in data["rows"].items():
        colour, ls = STYLE.get(method, ("k", "-"))
        pos = [r["position"] for r in rows]
        ax1.plot(pos, [r["ms_per_token"] for r in rows], ls, color=colour, label=method)
        if rows and "cache_bytes" in rows[0]:
            ax2.plot(pos, [r["cache_bytes"] / 2**20 for r in rows], ls, color=colour, label=method)
    ax1.set(xlabel="stream position", ylabel="ms per token", title="decode latency")
    ax2.set(xlabel="stream position", ylabel="KV cache (MiB)", title="cache memory")
    for ax in (ax1, ax2):
        ax.grid(True, color="#dddddd")
        ax.legend(frameon=False, fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def write_stream_report(out_dir: Path) -> Path:
    """``report.md`` of a stream directory: the loss table and plot (``stream_ppl.json``) and the
    latency / memory table and plot (``stream_bench.json``), whichever are there."""
    lines = ["# Streaming evaluation", ""]
    ppl_path, bench_path = out_dir / "stream_ppl.json", out_dir / "stream_bench.json"
    if ppl_path.exists():
        d = json.loads(ppl_path.read_text(encoding="utf-8"))
        cfg = d["config"]
        trained = d.get("trained_len") or 0
        lines += [(f"Model `{Path(cfg['model']).name}` (trained length {trained or '?'}), text "
                   f"`{d['text']}`, cache = {cfg['n_sink']} sinks + {d['window']} window."), "",
                  ("| method | mean loss (nats/token) | loss within the trained length | loss past it | "
                   "eval ms/token | max cache |"), "|---|---:|---:|---:|---:|---:|"]
        for method, r in d["methods"].items():
            nll = r["nll"]
            inside = sum(nll[:trained]) / max(1, len(nll[:trained])) if trained else float("nan")
            past = sum(nll[trained:]) / max(1, len(nll[trained:])) if trained and nll[trained:] else float("nan")
            mem = f"{r['max_cache_bytes'] / 2**20:.2f} MiB" if r.get("max_cache_bytes") else "-"
            lines.append(f"| {method} | {r['mean_nll']:.4f} | {inside:.4f} | {past:.4f} | "
                         f"{r['ms_per_token']:.2f} | {mem} |")
        lines += ["", ("eval ms/token: wall time of this evaluation per token (full runs in chunks of "
                       "512, recompute in batches of 32 windows; `stream-bench` measures decode latency)."),
                  "", "![loss vs position](stream_ppl.png)", ""]
    if bench_path.exists():
        d = json.loads(bench_path.read_text(encoding="utf-8"))
        lines += [(f"Decode latency on `{d.get('device_name') or d.get('device')}` "
                   f"({d['threads']} threads, torch {d['torch']}):"), "",
                  "| method | position | ms/token | cache |", "|---|---:|---:|---:|"]
        for method, rows in d["rows"].items():
            for r in rows[:1] + rows[-1:] if len(rows) > 1 else rows:
                mem = f"{r['cache_bytes'] / 2**20:.2f} MiB" if r.get("cache_bytes") else "-"
                lines.append(f"| {method} | {r['position']} | {r['ms_per_token']:.2f} | {mem} |")
        lines += ["", "![latency and memory vs position](stream_bench.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@torch.no_grad()
def perplexity_vs_length(streamer: Streamer, ids: list[int], lengths: list[int], max_windows: int = 16,
                         progress: bool = True) -> list[dict]:
    """Mean next-token loss of fresh forwards over non-overlapping windows of each length (no
    cache; the model sees the window from position 0), on at most ``max_windows`` windows."""
    from tqdm.auto import tqdm

    rows = []
    data = torch.as_tensor(ids, dtype=torch.int64)
    for L in tqdm(lengths, desc="lengths", disable=not progress, leave=False):
        n = min(max_windows, len(data) // (L + 1))
        if n == 0:
            rows.append({"length": L, "windows": 0, "loss": None})
            continue
        total = 0.0
        for i in range(n):
            w = data[i * (L + 1):(i + 1) * (L + 1)]
            x = torch.tensor(streamer.bos + w[:-1].tolist())[None]
            logits = streamer.forward(x)[0, len(streamer.bos):].float().cpu()
            total += float(torch.nn.functional.cross_entropy(logits, w[1:]))
        rows.append({"length": L, "windows": n, "loss": total / n})
    return rows


def plot_ppl_length(results: dict[str, list[dict]], trained: int | None, path: Path, title: str) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, rows in results.items():
        pts = [(r["length"], r["loss"]) for r in rows if r["loss"] is not None]
        ax.plot([p for p, _ in pts], [v for _, v in pts], "o-", label=name)
    if trained:
        ax.axvline(trained, color="#bbbbbb", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="evaluation length (tokens)", ylabel="loss (nats/token)", title=title)
    ax.grid(True, color="#dddddd")
    ax.legend(frameon=False, fontsize=8)
    fig.savefig(path, dpi=110)
    return path
