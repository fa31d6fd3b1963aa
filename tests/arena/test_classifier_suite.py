"""Suites with ``[model] kind = "classifier"``: validated at load, run end to end on ListOps."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from longctx.arena.runner import execute_run, run_suite
from longctx.arena.store import ResultsStore
from longctx.arena.suite import SuiteError, load_suite, parse_suite

SUITE = """
[suite]
name = "lra-tiny"
tasks = ["listops"]
mixers = ["gla", "softmax_attention"]
d_model = [16]
seq_len = [64]
lr = [3e-3]
seeds = [0]

[model]
kind = "classifier"
n_layers = 1
n_heads = 2
{model}

[train]
steps = 4
batch_size = 8
eval_batch_size = 32
threads = 1

[task.listops]
min_len = 8
max_len = 40
num_train = 32
num_test = 16

[mixer.gla]
chunk_size = 16
"""


def parse(model: str = "", kind: str | None = None):
    text = SUITE.format(model=model)
    if kind is not None:
        text = text.replace('kind = "classifier"', kind)
    return parse_suite(tomllib.loads(text), "/x/lra.toml")


def test_classifier_suite_runs_and_records_accuracy(tmp_path: Path) -> None:
    n_threads = torch.get_num_threads()
    path = tmp_path / "lra.toml"
    path.write_text(SUITE.format(model='pooling = "mean"'))
    suite_dir = run_suite(load_suite(str(path)), out_dir=tmp_path / "runs", threads=1,
                          progress=False, report=False)
    torch.set_num_threads(n_threads)
    with ResultsStore(suite_dir / "results.sqlite") as store:
        rows = store.rows()
    assert sorted(r.config["mixer"] for r in rows) == ["gla", "softmax_attention"]
    for r in rows:
        assert r.config["model"]["kind"] == "classifier"
        assert 0.0 <= r.metrics["accuracy"] <= 1.0 and r.metrics["steps"] == 4
        assert r.state_size_bytes > 0  # both directions' mixers


def test_model_kind_and_fields_are_validated() -> None:
    assert parse('pooling = "last"\nbidirectional = false').model["pooling"] == "last"
    with pytest.raises(SuiteError, match=r"\[model\]: kind must be one of 'lm', 'classifier', 'rmt', got 'cnn'"):
        parse(kind='kind = "cnn"')
    with pytest.raises(SuiteError, match=r"'pooling' is a field of kind = 'classifier'.*kind = 'lm'"):
        parse('pooling = "mean"', kind="")  # kind left out: an LM
    with pytest.raises(SuiteError, match=r"'tie_embeddings' is a field of kind = 'lm'"):
        parse("tie_embeddings = false")
    with pytest.raises(SuiteError, match=r"\[model\]: unknown key 'poling' \(did you mean 'pooling'\?\)"):
        parse('poling = "mean"')
    with pytest.raises(SuiteError, match=r"\[model\]: bidirectional must be bool"):
        parse("bidirectional = 1")
    with pytest.raises(SuiteError, match=r"\[model\] \(mixer 'gla'.*pooling must be one of"):
        parse('pooling = "max"')
    with pytest.raises(SuiteError, match=r"bidirectional=False, but mixer 'softmax_attention' is "
                                         r"configured bidirectional"):
        parse("bidirectional = false\n[mixer.softmax_attention]\ncausal = false")


def test_classifier_on_a_task_scored_at_many_positions_is_refused() -> None:
    n_threads = torch.get_num_threads()
    run = {**parse().runs()[0], "task": "mqar", "vocab_size": 32, "num_kv_pairs": 2,
           "num_train": 16, "num_test": 8}  # the listops keys are not MQAR fields: left out
    with pytest.raises(ValueError, match="scores positions before those"):
        execute_run(run, "lra-tiny", threads=1)
    torch.set_num_threads(n_threads)
