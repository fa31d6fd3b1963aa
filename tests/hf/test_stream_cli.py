"""``longctx generate`` / ``stream-ppl`` / ``stream-bench`` on a tiny local transformers model."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from longctx.cli.main import main

TEXT = "the quick brown fox jumps over the lazy dog; hello world. " * 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 2-layer random Llama (trained length 32) with a byte-level BPE tokenizer beside it."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, show_progress=False)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    path = tmp_path_factory.mktemp("tiny-llama-tok")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_generate_streams_text(model_dir, capsys) -> None:
    rc = main(["generate", "--model", str(model_dir), "--prompt", "hello world", "--max-new-tokens",
               "40", "--cache", "sinks", "--sinks", "2", "--window", "10"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("hello world") and len(out) > len("hello world") + 5


def test_generate_warns_past_the_trained_length(model_dir, capsys) -> None:
    with pytest.warns(UserWarning, match="trained on 32"):
        assert main(["generate", "--model", str(model_dir), "--prompt", "hello", "--max-new-tokens",
                     "3", "--cache", "sinks", "--sinks", "4", "--window", "60"]) == 0


def test_stream_ppl_writes_results_and_resumes(model_dir, tmp_path, capsys) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "out"
    args = ["stream-ppl", "--model", str(model_dir), "--text-file", str(text), "--tokens", "80",
            "--cache", "window", "sinks", "recompute", "full", "--sinks", "2", "--window", "10",
            "--bucket", "16", "--out", str(out), "--quiet"]
    assert main(args) == 0
    data = json.loads((out / "stream_ppl.json").read_text())
    assert set(data["methods"]) == {"window", "sinks", "recompute", "full"}
    for r in data["methods"].values():
        assert r["tokens"] == 79 and r["mean_nll"] > 0 and len(r["by_position"]) == 5
    assert data["methods"]["sinks"]["max_cache_bytes"] < data["methods"]["full"]["max_cache_bytes"]
    assert (out / "stream_ppl.png").stat().st_size > 0
    assert (out / "stream_ppl.csv").read_text().count("\n") == 1 + 4 * 79
    report = (out / "report.md").read_text()
    assert "| sinks |" in report and "![loss vs position](stream_ppl.png)" in report
    stamp = (out / "stream_ppl.json").stat().st_mtime_ns
    assert main(args) == 0  # everything is done: nothing recomputed, the file is not rewritten
    assert (out / "stream_ppl.json").stat().st_mtime_ns == stamp
    other = [a if a != "10" else "12" for a in args]
    assert main(other) == 2
    assert "holds results of another configuration" in capsys.readouterr().err
    (out / "stream_ppl.json").write_text("{not json")
    assert main(args) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_stream_bench(model_dir, tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "bench"
    assert main(["stream-bench", "--model", str(model_dir), "--text-file", str(text), "--tokens", "64",
                 "--cache", "sinks", "full", "recompute", "--sinks", "2", "--window", "10",
                 "--every", "16", "--out", str(out), "--quiet"]) == 0
    data = json.loads((out / "stream_bench.json").read_text())
    sinks, full = data["rows"]["sinks"], data["rows"]["full"]
    assert len({r["cache_bytes"] for r in sinks}) == 1
    assert full[-1]["cache_bytes"] > full[0]["cache_bytes"]
    assert (out / "stream_bench.png").exists()


def test_bad_input_is_a_message(model_dir, tmp_path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not a local directory" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_dir), "--prompt", "x", "--rope", "yarn"]) == 2
    assert "needs --rope-factor" in capsys.readouterr().err
    assert main(["stream-ppl", "--model", str(model_dir), "--text-file", str(tmp_path / "no.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
