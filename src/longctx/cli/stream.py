"""``longctx generate``, ``longctx stream-ppl`` and ``longctx stream-bench``: streaming a local model
(a longctx checkpoint or a transformers model directory) under a KV-cache policy."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from longctx.cache.policy import POLICIES, make_policy

ROPE_TYPES = ("linear", "ntk", "dynamic", "yarn", "llama3")


def _rope(args: argparse.Namespace) -> dict | None:
    if not args.rope:
        return None
    if args.rope_factor is None or args.rope_factor <= 0:
        raise ValueError(f"--rope {args.rope} needs --rope-factor > 0")
    scaling = {"rope_type": args.rope, "factor": float(args.rope_factor)}
    if args.rope == "llama3":
        scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
    return scaling


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a longctx checkpoint (train-lm) or a local transformers model directory")
    p.add_argument("--sinks", type=int, default=4, help="attention-sink tokens kept (StreamingLLM)")
    p.add_argument("--window", type=int, default=None, help="recent tokens kept (default: trained length - sinks)")
    p.add_argument("--rope", choices=ROPE_TYPES, default=None, help="RoPE scaling")
    p.add_argument("--rope-factor", type=float, default=None, help="RoPE scaling factor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads")


def _text(args: argparse.Namespace) -> tuple[str, str]:
    if args.text_file:
        path = Path(args.text_file)
        if not path.is_file():
            raise ValueError(f"--text-file {path} does not exist")
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
    from longctx.tasks.corpus import load_text

    return load_text(args.corpus, args.split), f"{args.corpus}:{args.split}"


def _cmd_generate(args: argparse.Namespace) -> int:
    from longctx.generate.streaming import generate_tokens, open_streamer

    if args.prompt_file:
        if not Path(args.prompt_file).is_file():
            raise ValueError(f"--prompt-file {args.prompt_file} does not exist")
        prompt = Path(args.prompt_file).read_text(encoding="utf-8", errors="replace")
    else:
        prompt = args.prompt
    window, policy = args.window, None
    streamer = open_streamer(args.model, None, _rope(args), args.device)
    if args.cache == "landmark":
        policy = make_policy("landmark", top_k=args.landmark_top_k)
    elif args.cache != "full":
        window = window or max(1, (streamer.trained_len or 1024) - args.sinks)
        policy = make_policy(args.cache, args.sinks, window)
        from longctx.cache.policy import check_fits_training

        check_fits_training(policy, streamer.trained_len, _rope(args), what=Path(args.model).name)
    streamer.policy = policy
    if str(args.device).startswith("cuda") and args.cuda_graph:
        from longctx.generate.cuda_graph import graph_streamer

        streamer, why_not = graph_streamer(streamer)
        if why_not is not None:
            print(f"longctx generate: eager decoding (no CUDA graph: {why_not})", file=sys.stderr)
    ids = streamer.bos + streamer.encode(prompt)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    pending: list[int] = []
    for tok in generate_tokens(streamer, ids, args.max_new_tokens, args.temperature, args.top_k, args.seed):
        pending.append(tok)
        text = streamer.decode(pending)
        if "\ufffd" not in text or len(pending) > 4:  # wait for a whole UTF-8 character
            sys.stdout.write(text if streamer.tokenizer is not None else text + " ")
            sys.stdout.flush()
            pending = []
    sys.stdout.write("\n")
    return 0


def _eval_config(args: argparse.Namespace):
    from longctx.generate.stream_eval import StreamEvalConfig

    return StreamEvalConfig(model=str(args.model), methods=list(args.cache), n_sink=args.sinks,
                            window=args.window, tokens=args.tokens, chunk=args.chunk,
                            bucket=args.bucket, full_max_tokens=args.full_max_tokens,
                            landmark_top_k=args.landmark_top_k,
                            rope_scaling=_rope(args), device=args.device)


def _cmd_stream_ppl(args: argparse.Namespace) -> int:
    from longctx.generate.stream_eval import run_stream_ppl
    from longctx.generate.streaming import open_streamer

    cfg = _eval_config(args)
    text, source = _text(args)
    ids = open_streamer(args.model, None, None, "cpu").encode(text)
    if len(ids) < cfg.tokens:
        print(f"stream-ppl: the text has {len(ids)} tokens, fewer than --tokens {cfg.tokens}; using all",
              file=sys.stderr)
    data = run_stream_ppl(cfg, ids, Path(args.out), text=source, progress=not args.quiet)
    for method, r in data["methods"].items():
        print(f"{method:<10} mean loss {r['mean_nll']:.4f} nats  ppl {r['ppl']:.2f}  "
              f"{r['ms_per_token']:.2f} ms/token")
    print(f"stream-ppl: {Path(args.out) / 'stream_ppl.json'} (.csv, .png)")
    return 0


def _cmd_stream_bench(args: argparse.Namespace) -> int:
    from longctx.generate.stream_eval import run_stream_bench
    from longctx.generate.streaming import open_streamer

    cfg = _eval_config(args)
    text, _ = _text(args)
    ids = open_streamer(args.model, None, None, "cpu").encode(text)
    data = run_stream_bench(cfg, ids, Path(args.out), every=args.every, progress=not args.quiet)
    for method, rows in data["rows"].items():
        if rows:
            print(f"{method:<10} ms/token at {rows[0]['position']}: {rows[0]['ms_per_token']:.3f}, "
                  f"at {rows[-1]['position']}: {rows[-1]['ms_per_token']:.3f}")
    print(f"stream-bench: {Path(args.out) / 'stream_bench.json'} (.png)")
    return 0


def _cmd_ppl_length(args: argparse.Namespace) -> int:
    import json

    from longctx.generate.stream_eval import perplexity_vs_length, plot_ppl_length
    from longctx.generate.streaming import open_streamer

    text, source = _text(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, trained = {}, None
    for rope in args.rope_types:
        factor = max(args.multiples)
        scaling = None if rope == "none" else {"rope_type": rope, "factor": float(factor)}
        if rope == "llama3":
            scaling.update(low_freq_factor=1.0, high_freq_factor=4.0)
        streamer = open_streamer(args.model, None, scaling, args.device)
        trained = streamer.trained_len
        if not trained:
            raise ValueError(f"{args.model}: its trained length is unknown (not a train-lm checkpoint?)")
        lengths = sorted({max(2, int(m * trained)) for m in args.multiples})
        results[rope] = perplexity_vs_length(streamer, streamer.encode(text), lengths,
                                             args.max_windows, progress=not args.quiet)
        for r in results[rope]:
            if r["loss"] is not None:
                print(f"{rope:<8} length {r['length']:>6}: loss {r['loss']:.4f} ({r['windows']} windows)")
    data = {"model": str(args.model), "text": source, "trained_len": trained, "results": results,
            "note": "RoPE scalings use factor = the largest multiple, zero-shot (no fine-tuning)"}
    (out / "ppl_length.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    plot_ppl_length(results, trained, out / "ppl_length.png", f"{Path(args.model).name}: loss vs length")
    print(f"ppl-length: {out / 'ppl_length.json'} (.png)")
    return 0


def _text_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-file", default=None, help="a text file to stream (default: a shipped corpus)")
    p.add_argument("--corpus", default="shakespeare", help="shipped corpus, used when no --text-file")
    p.add_argument("--split", default="test", help="corpus split (train/val/test)")
    p.add_argument("--tokens", type=int, default=4096, help="stream length in tokens")
    p.add_argument("--cache", nargs="+", default=["window", "sinks", "recompute"],
                   choices=[*POLICIES, "recompute"], help="methods to compare")
    p.add_argument("--full-max-tokens", type=int, default=None, help="dense attention only up to here")
    p.add_argument("--chunk", type=int, default=1, help="tokens per feed for cache policies")
    p.add_argument("--landmark-top-k", type=int, default=None,
                   help="--cache landmark: blocks retrieved per head (landmark_attention models)")
    p.add_argument("--bucket", type=int, default=64, help="positions per point of the curve")
    p.add_argument("--out", default="runs/stream", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="stream tokens from a local model under a KV-cache policy")
    _common(g)
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-file", default=None)
    src.add_argument("--prompt", default=None)
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--cache", choices=POLICIES, default="sinks")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    g.add_argument("--landmark-top-k", type=int, default=None,
                   help="--cache landmark: blocks retrieved per head (landmark_attention models)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cuda-graph", action="store_true",
                   help="on CUDA, replay a captured decode step when every layer has a fixed-size state "
                        "(experimental: its gpu tests have not run on a GPU yet)")
    g.set_defaults(fn=_cmd_generate)

    s = sub.add_parser("stream-ppl", help="loss vs position of a long text streamed under cache policies (StreamingLLM)")
    _common(s)
    _text_args(s)
    s.set_defaults(fn=_cmd_stream_ppl)

    b = sub.add_parser("stream-bench", help="per-token decode latency and cache memory vs stream position")
    _common(b)
    _text_args(b)
    b.add_argument("--every", type=int, default=128, help="sample the latency every N positions")
    b.set_defaults(fn=_cmd_stream_bench)

    q = sub.add_parser("ppl-length", help="perplexity vs evaluation length (L/4 .. 8L) under RoPE scalings")
    q.add_argument("--model", required=True)
    q.add_argument("--text-file", default=None)
    q.add_argument("--corpus", default="shakespeare")
    q.add_argument("--split", default="test")
    q.add_argument("--multiples", nargs="+", type=float, default=[0.25, 0.5, 1, 2, 4, 8],
                   help="evaluation lengths as multiples of the trained length")
    q.add_argument("--rope-types", nargs="+", default=["none"], choices=["none", *ROPE_TYPES],
                   help="RoPE scalings to compare (factor = the largest multiple)")
    q.add_argument("--max-windows", type=int, default=16)
    q.add_argument("--out", default="runs/ppl-length")
    q.add_argument("--device", default="cpu")
    q.add_argument("--threads", type=int, default=None)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=_cmd_ppl_length)
