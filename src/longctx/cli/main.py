"""``longctx``: thin argument parsing over the package's API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_arena(args: argparse.Namespace) -> int:
    from longctx.arena.runner import RunsFailed, check_device, run_suite
    from longctx.arena.suite import load_suite

    try:  # checked before anything runs; a ValueError from a run itself keeps its traceback
        check_device(args.device)
        if args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    except ValueError as e:
        print(f"longctx arena: error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    suite = load_suite(args.suite)
    try:
        suite_dir = run_suite(suite, out_dir=args.out, jobs=args.jobs, threads=args.threads,
                              device=args.device, progress=not args.quiet, report=not args.no_report)
    except RunsFailed as e:  # the other runs are stored (and reported)
        print(f"longctx arena: {e}", file=sys.stderr)
        return 1
    if not args.no_report:
        print(f"report: {suite_dir / 'report.html'}  (and report.md)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from longctx.arena.report import write_report

    paths = write_report(Path(args.store_dir), bench=args.bench or None)
    print(f"report: {paths['html']}  (and {paths['markdown'].name})")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from longctx.arena.suite import builtin_suites, load_suite
    from longctx.layers import describe, names
    from longctx.tasks.registry import TASKS

    print("mixers:")
    for name in names():
        print(f"  {name:<28} {describe(name)}")
    print("tasks:")
    for name, (_cls, _fn, text) in TASKS.items():
        print(f"  {name:<28} {text}")
    print("suites:")
    for name, path in sorted(builtin_suites().items()):
        s = load_suite(str(path))
        print(f"  {name:<28} {s.description} ({len(s.runs())} runs)")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from longctx.arena.merge import merge_stores

    c = merge_stores(args.out, args.inputs)
    print(f"merge: {c.added} runs added, {c.duplicates} duplicates skipped; {args.out} holds {c.total}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from longctx.bench.ops import BenchError, run_bench

    if args.layers is not None and (args.ops or args.compare):
        raise BenchError("--layers times mixer layers; it does not combine with --ops / --compare")
    if args.compare:
        return _bench_kernels(args)
    if args.layers is not None:
        from longctx.bench.layers import run_layer_bench

        out = run_layer_bench(
            layers=args.layers, lengths=args.lengths, device=args.device, dtype=args.dtype,
            batch=args.batch, heads=args.heads, head_dim=args.head_dim, out_dir=Path(args.out),
            repeats=args.repeats, memory=not args.no_memory)
    else:
        out = run_bench(
            ops=args.ops, lengths=args.lengths, device=args.device, dtype=args.dtype,
            batch=args.batch, heads=args.heads, head_dim=args.head_dim, out_dir=Path(args.out),
            repeats=args.repeats, memory=not args.no_memory, naive_max_len=args.naive_max_len,
        )
    print(f"bench: {out['json']}  (plots: {', '.join(str(p) for p in out['plots'])})")
    return 0


def _bench_kernels(args: argparse.Namespace) -> int:
    """``--compare fla,sdpa``: our Triton kernels vs those libraries on CUDA, in one run."""
    from longctx.bench.kernels import KERNEL_OPS, run_kernel_bench, summary_table, target_table

    if args.device != "cuda":
        raise SystemExit("longctx bench: --compare times GPU kernels; add --device cuda")
    compare = [c for c in args.compare.split(",") if c]
    import torch

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(args.dtype)
    if dtype is None:
        raise SystemExit(f"longctx bench: --compare runs bfloat16 / float16 / float32, not {args.dtype}")
    if not torch.cuda.is_available():
        raise SystemExit("longctx bench: --compare times GPU kernels, and this machine has no CUDA device")
    unknown = sorted(set(args.ops or ()) - set(KERNEL_OPS))
    if unknown:
        raise SystemExit(f"longctx bench: --compare has no kernel {', '.join(unknown)}; "
                         f"choose from {', '.join(KERNEL_OPS)}")
    res = run_kernel_bench(args.ops or KERNEL_OPS, args.lengths, compare, B=args.batch, H=args.heads,
                           D=args.head_dim, dtype=dtype, out=args.out)
    print(summary_table(res))
    if targets := target_table(res):
        print(targets)
    print(f"bench: {Path(args.out) / 'kernels.json'}")
    return 0


# commands whose ValueErrors are messages about the user's input (paths, models, options)
USER_INPUT_COMMANDS = ("merge", "report", "generate", "stream-ppl", "stream-bench", "train-lm", "ppl-length")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("arena", help="run a suite (default: the quick CPU suite) and write its report")
    a.add_argument("--suite", default="quick", help="built-in suite name or path to a TOML file")
    a.add_argument("--out", default="runs", help="runs directory; the store is <out>/<suite>/results.sqlite")
    a.add_argument("--jobs", type=int, default=2, help="runs in parallel (processes)")
    a.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    a.add_argument("--device", default="cpu",
                   help="cpu, cuda (several GPUs: the --jobs workers spread over them) or cuda:<index>")
    a.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(fn=_cmd_arena)

    r = sub.add_parser("report", help="write report.md / report.html from a suite's results store")
    r.add_argument("store_dir", help="a suite directory, e.g. runs/quick")
    r.add_argument("--bench", nargs="*", default=None, metavar="JSON",
                   help="longctx bench JSON file(s) for the throughput / memory section "
                        "(default: every bench*.json in store_dir)")
    r.set_defaults(fn=_cmd_report)

    m = sub.add_parser("merge", help="merge results stores of several machines into one (dedup by config)")
    m.add_argument("out", help="the merged store (created, or merged into)")
    m.add_argument("inputs", nargs="+", help="stores to merge, e.g. runs-gpu/quick/results.sqlite")
    m.set_defaults(fn=_cmd_merge)

    ls = sub.add_parser("list", help="list mixers, tasks and suites")
    ls.set_defaults(fn=_cmd_list)

    b = sub.add_parser("bench", help="time and peak memory of ops (or --layers), forward and "
                                         "forward+backward")
    b.add_argument("--ops", "--mixers", nargs="+", default=None, dest="ops",
                   help="ops to measure (default: all); e.g. softmax_attention gla")
    b.add_argument("--layers", nargs="*", default=None, metavar="MIXER",
                   help="time mixer layers (longctx.layers.build, d_model = heads * head-dim) "
                        "instead of ops, e.g. block_recurrent rmt mega s4 (no names: all)")
    b.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384])
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--head-dim", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    b.add_argument("--naive-max-len", type=int, default=8192,
                   help="skip naive forms above this length (they are O(T^2) in memory or a token loop)")
    b.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    b.add_argument("--compare", default="", metavar="LIBS",
                   help="GPU kernels vs other libraries in one run, e.g. fla,sdpa (with --device cuda; "
                        "--ops from linear_attention simple_gla retention ssd)")
    b.add_argument("--out", default="benchmarks/results/latest", help="output directory")
    b.set_defaults(fn=_cmd_bench)

    from longctx.cli import stream, train_lm

    stream.add_parsers(sub)
    train_lm.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from longctx.arena.store import StoreError
    from longctx.arena.suite import SuiteError
    from longctx.bench.ops import BenchError
    from longctx.errors import UnknownNameError

    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None) and args.command not in ("arena",):
        import torch

        torch.set_num_threads(args.threads)
    try:
        return args.fn(args)
    except (SuiteError, StoreError, UnknownNameError, BenchError) as e:
        print(f"longctx {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:  # bad input named by our checks
        if args.command in USER_INPUT_COMMANDS:
            print(f"longctx {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"\nlongctx {args.command}: interrupted; finished runs are saved, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
