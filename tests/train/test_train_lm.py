"""train-lm: loss falls, an interrupted run resumes to the same model, the sink token, errors;
generate / stream-ppl on the checkpoint it writes."""

from __future__ import annotations

import json

import pytest
import torch

import longctx.train.lm as mod
from longctx.cli.main import main
from longctx.models.io import load_lm
from longctx.train.lm import LMTrainConfig, lm_config_for, train_lm, windows

SMALL = {"seq_len": 32, "batch_size": 8, "eval_every": 10, "eval_batches": 2, "lr": 3e-3}


def config(**kw) -> LMTrainConfig:
    return LMTrainConfig(**{**SMALL, **kw})


def lm(sink: bool = False):
    return lm_config_for("softmax_attention", 32, 2, 2, sink)


def test_loss_falls_and_the_model_is_saved(tmp_path) -> None:
    out = train_lm(lm(), config(steps=40, checkpoint_every=20), tmp_path, progress=False)
    h = out["history"]
    assert h[-1]["val_loss"] < h[0]["val_loss"] < 5.6 and out["steps"] == 40
    _, meta = load_lm(tmp_path)
    assert meta["seq_len"] == 32 and meta["tokenizer"] == {"type": "bytes", "sink_token": False}


def test_interrupted_run_resumes_to_the_same_model(tmp_path, monkeypatch) -> None:
    cfg = config(steps=20, checkpoint_every=10)
    train_lm(lm(), cfg, tmp_path / "whole", progress=False)
    real_lr_at, steps = mod.lr_at, []

    def interrupt_at_15(step, sched):  # Ctrl-C during step 15: the checkpoint of step 10 remains
        steps.append(step)
        if step == 15:
            raise KeyboardInterrupt
        return real_lr_at(step, sched)

    monkeypatch.setattr(mod, "lr_at", interrupt_at_15)
    with pytest.raises(KeyboardInterrupt):
        train_lm(lm(), cfg, tmp_path / "parts", progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "parts" / "train_state.pt", weights_only=False)["step"] == 10
    train_lm(lm(), cfg, tmp_path / "parts", progress=False)  # resumes at step 10
    whole, _ = load_lm(tmp_path / "whole")
    parts, _ = load_lm(tmp_path / "parts")
    for (k, a), (_, b) in zip(whole.state_dict().items(), parts.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), k


def test_other_config_in_the_same_directory_is_refused(tmp_path) -> None:
    train_lm(lm(), config(steps=10), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(differs in \['lr'\]\)"):
        train_lm(lm(), config(steps=10, lr=1e-2), tmp_path, progress=False)


def test_sink_token_windows() -> None:
    data = torch.arange(100)
    x, y = windows(data, torch.tensor([5]), 6, sink=True)
    assert x.tolist() == [[256, 5, 6, 7, 8, 9]] and y.tolist() == [[5, 6, 7, 8, 9, 10]]
    x, y = windows(data, torch.tensor([5]), 6, sink=False)
    assert x.tolist() == [[5, 6, 7, 8, 9, 10]] and y.tolist() == [[6, 7, 8, 9, 10, 11]]


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="vocab_size must be 257"):
        train_lm(lm(False), config(steps=1, sink_token=True), "/tmp/never", progress=False)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        config(seq_len=1)


def test_cli_train_generate_stream(tmp_path, capsys) -> None:
    ck = tmp_path / "lm"
    assert main(["train-lm", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--seq-len", "32",
                 "--steps", "20", "--batch-size", "8", "--sink-token", "--out", str(ck), "--quiet",
                 "--mixer-option", "n_kv_heads=1"]) == 0
    assert "val loss" in capsys.readouterr().out
    assert json.loads((ck / "config.json").read_text())["lm_config"]["vocab_size"] == 257
    assert main(["generate", "--model", str(ck), "--prompt", "ROMEO:\n", "--max-new-tokens", "50",
                 "--cache", "sinks", "--sinks", "1", "--window", "15"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:\n")
    out = tmp_path / "stream"
    assert main(["stream-ppl", "--model", str(ck), "--tokens", "120", "--sinks", "1", "--window", "15",
                 "--cache", "window", "sinks", "recompute", "full", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "stream_ppl.json").read_text())
    assert data["trained_len"] == 32 and data["text"] == "shakespeare:test"
    assert all(r["tokens"] == 119 for r in data["methods"].values())
    assert main(["ppl-length", "--model", str(ck), "--multiples", "0.5", "1", "2", "--rope-types", "none",
                 "yarn", "--max-windows", "2", "--out", str(tmp_path / "pl"), "--quiet"]) == 0
    pl = json.loads((tmp_path / "pl" / "ppl_length.json").read_text())
    assert [r["length"] for r in pl["results"]["yarn"]] == [16, 32, 64] and pl["trained_len"] == 32
    assert all(r["loss"] > 0 for rows in pl["results"].values() for r in rows)
    capsys.readouterr()
    assert main(["train-lm", "--out", str(ck), "--corpus", "nope"]) == 2
    assert "unknown corpus 'nope'" in capsys.readouterr().err
