"""``longctx train-lm``: a byte-level LM on a shipped corpus, resumable, saved as a checkpoint that
``longctx generate`` / ``stream-ppl`` read."""

from __future__ import annotations

import argparse
import json


def _options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values parsed as JSON where they parse (numbers, true, lists)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--mixer-option expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _cmd_train_lm(args: argparse.Namespace) -> int:
    from longctx.train.lm import LMTrainConfig, lm_config_for, train_lm

    cfg = LMTrainConfig(corpus=args.corpus, seq_len=args.seq_len, steps=args.steps,
                        batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                        checkpoint_every=args.checkpoint_every, seed=args.seed,
                        sink_token=args.sink_token, device=args.device)
    lm_config = lm_config_for(args.mixer, args.d_model, args.n_layers, args.n_heads, args.sink_token,
                              _options(args.mixer_option))
    summary = train_lm(lm_config, cfg, args.out, progress=not args.quiet)
    print(f"train-lm: val loss {summary['val_loss']:.4f} nats/byte ({summary['val_bits_per_byte']:.3f} "
          f"bits/byte) after {summary['steps']} steps, {summary['tokens_per_s']:.0f} tokens/s; "
          f"model: {args.out}")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train-lm", help="train a byte-level LM on a shipped corpus (resumable)")
    t.add_argument("--corpus", default="shakespeare", help="shakespeare or kjv")
    t.add_argument("--mixer", default="softmax_attention")
    t.add_argument("--mixer-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a mixer config option, e.g. --mixer-option n_kv_heads=2")
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--n-layers", type=int, default=4)
    t.add_argument("--n-heads", type=int, default=4)
    t.add_argument("--seq-len", type=int, default=256, help="training window (the trained length)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--checkpoint-every", type=int, default=200)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--sink-token", action="store_true", help="prepend a learnable SINK token to every window")
    t.add_argument("--out", required=True, help="output directory (rerun to resume)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(fn=_cmd_train_lm)
