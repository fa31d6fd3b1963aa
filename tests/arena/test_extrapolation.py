"""Length extrapolation in the arena: mixer variants, the [extrapolation] section, evaluation
at longer lengths under each RoPE scaling, and its report section."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from longctx.arena.extrapolation import (
    SCALINGS,
    ExtrapolationConfig,
    evaluate_lengths,
    rope_mixers,
    rope_scaling,
)
from longctx.arena.runner import run_suite
from longctx.arena.suite import SuiteError, load_suite, parse_suite
from longctx.layers import build
from longctx.models import LMConfig, LongCtxLM
from longctx.tasks.registry import build_task

SUITE = """
[suite]
name = "extrap"
tasks = ["mqar"]
mixers = ["softmax_attention", "softmax_attention@alibi"]
d_model = [16]
seq_len = [16]
lr = [1e-2]
seeds = [0]

[model]
n_layers = 1
n_heads = 2

[train]
steps = 3
batch_size = 8
eval_batch_size = 16
threads = 1

[task.mqar]
vocab_size = 32
num_kv_pairs = 2
num_train = 64
num_test = 16

[mixer."softmax_attention@alibi"]
position = "alibi"

[extrapolation]
lengths = [1, 2, 4]
scalings = ["none", "linear", "yarn"]
finetune_steps = 2
finetune_batch_size = 4
num_test = 8
"""


def parse(text: str = SUITE):
    return parse_suite(tomllib.loads(text), "/x/extrap.toml")


def test_variants_and_extrapolation_reach_the_runs() -> None:
    s = parse()
    runs = s.runs()
    assert [r["mixer"] for r in runs] == ["softmax_attention", "softmax_attention@alibi"]
    assert runs[1]["mixer_options"] == {"position": "alibi"} and runs[0]["mixer_options"] == {}
    assert all(r["extrapolation"]["lengths"] == [1, 2, 4] for r in runs)


@pytest.mark.parametrize("old,new,match", [
    ('"softmax_attention@alibi"]', '"nope@alibi"]', "unknown mixer 'nope'"),
    ('"softmax_attention@alibi"]', '"softmax_attention@"]', "empty variant name"),
    ('position = "alibi"', 'position = 3', "position must be str"),
    ("lengths = [1, 2, 4]", "lengths = []", "lengths must be a non-empty list"),
    ("lengths = [1, 2, 4]", "lengths = [1, 0]", "positive numbers"),
    ('scalings = ["none", "linear", "yarn"]', 'scalings = ["pi"]', "unknown scaling 'pi'"),
    ("finetune_steps = 2", "finetune_steps = -1", "finetune_steps must be a non-negative"),
    ("finetune_steps = 2", "finetune_step = 2", "unknown key 'finetune_step'"),
])
def test_bad_suite_names_section_and_key(old: str, new: str, match: str) -> None:
    text = SUITE.replace(old, new)
    if "softmax_attention@\"]" in new:  # the variant table must follow the renamed mixer
        text = text.replace('[mixer."softmax_attention@alibi"]\nposition = "alibi"\n', "")
    with pytest.raises(SuiteError, match=match) as info:
        parse(text)
    assert "/x/extrap.toml" in str(info.value)


@pytest.mark.parametrize("name", SCALINGS)
def test_every_scaling_is_a_valid_rope_config(name: str) -> None:
    scaling = rope_scaling(name, 4, 64)
    m = build("softmax_attention", d_model=16, n_heads=2, rope_scaling=scaling)
    y, _ = m(torch.randn(1, 300, 16))
    assert torch.isfinite(y).all()
    assert rope_scaling(name, 1, 64) is None  # at the trained length every scaling is plain RoPE


def test_bad_extrapolation_config() -> None:
    with pytest.raises(ValueError, match="lists a multiple twice"):
        ExtrapolationConfig(lengths=[2, 2])


def _tiny_lm(position: str = "rope") -> LongCtxLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=32, d_model=16, n_layers=1, n_heads=2,
                   mixer_options={"softmax_attention": {"position": position}})
    return LongCtxLM(cfg)


def _make_data(seq_len: int, num_train: int, num_test: int):
    return build_task("mqar", seed=0, vocab_size=32, num_kv_pairs=2, seq_len=seq_len,
                      num_train=num_train, num_test=num_test)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_evaluate_lengths_records_and_leaves_the_model_as_it_was(position: str) -> None:
    model = _tiny_lm(position)
    idx = torch.randint(0, 32, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)[0]
    cfg = ExtrapolationConfig(lengths=[1, 2, 4], scalings=["none", "linear", "dynamic"],
                              finetune_steps=2, finetune_batch_size=4, num_test=4)
    records = evaluate_lengths(model, _make_data, cfg, trained_len=16, lr=1e-3, seed=0)
    got = {(r["length"], r["scaling"], r["finetuned"]) for r in records}
    if position == "rope":  # 1x: plain only; 2x and 4x: 3 scalings, zero-shot and fine-tuned
        assert len(records) == 1 + 2 * 3 * 2
        assert (64, "dynamic", True) in got
    else:  # no RoPE: one evaluation per length (+ a fine-tune at the longer ones)
        assert got == {(16, "none", False), (32, "none", False), (32, "none", True),
                       (64, "none", False), (64, "none", True)}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    with torch.no_grad():
        assert torch.equal(before, model(idx)[0])
    assert all(m.config.rope_scaling is None for m in rope_mixers(model))


def test_suite_run_writes_the_extrapolation_report(tmp_path: Path) -> None:
    path = tmp_path / "extrap.toml"
    path.write_text(SUITE)
    out = run_suite(load_suite(str(path)), tmp_path / "runs", progress=False)
    md = (out / "report.md").read_text()
    assert "Accuracy vs evaluation length" in md
    assert "softmax_attention@alibi" in md and "| softmax_attention | yarn | yes |" in md
    assert (out / "length_extrapolation.png").stat().st_size > 10_000
    assert "length_extrapolation.png" in (out / "report.html").read_text()


def test_bad_lengths_are_named() -> None:
    for bad in ([0], [-0.5], ["2"], [True]):
        with pytest.raises(ValueError, match="lengths must hold positive numbers"):
            ExtrapolationConfig(lengths=bad)


LM_SUITE = """
[suite]
name = "lm"
tasks = ["corpus_lm"]
mixers = ["softmax_attention", "gla"]
d_model = [16]
seq_len = [32]
lr = [3e-3]
seeds = [0]

[model]
n_layers = 1
n_heads = 2

[train]
steps = 4
batch_size = 8
threads = 1

[task.corpus_lm]
num_train = 32
num_test = 4

[extrapolation]
lengths = [0.25, 0.5, 1, 2]
scalings = ["none", "yarn"]
"""


def test_language_model_runs_report_perplexity_from_quarter_to_twice_the_length(
        tmp_path: Path) -> None:
    """Fractional multiples evaluate shorter windows (plain RoPE only: no scaling below 1x);
    corpus_lm runs get a perplexity section (exp of the stored loss), not an accuracy one."""
    path = tmp_path / "lm.toml"
    path.write_text(LM_SUITE)
    n_threads = torch.get_num_threads()
    out = run_suite(load_suite(str(path)), tmp_path / "runs", progress=False)
    torch.set_num_threads(n_threads)
    md = (out / "report.md").read_text()
    assert "Perplexity vs evaluation length" in md and "Accuracy vs evaluation length" not in md
    from longctx.arena.store import ResultsStore

    with ResultsStore(out / "results.sqlite") as store:
        rows = {r.config["mixer"]: r for r in store.rows()}
    evals = rows["softmax_attention"].metrics["length_eval"]
    assert {(e["length"], e["scaling"]) for e in evals} == {
        (8, "none"), (16, "none"), (32, "none"), (64, "none"), (64, "yarn")}
    quarter = next(e for e in evals if e["length"] == 8)
    row = next(line for line in md.splitlines() if line.startswith("| softmax_attention | none |"))
    assert f"| {math.exp(quarter['loss']):.2f} |" in row  # the table shows exp(loss)
    assert (out / "perplexity_vs_length.png").stat().st_size > 10_000
