"""Accuracy by needle depth for passkey and NIAH runs: the data of the report's heat maps.

The held-out sets of ``passkey`` and ``niah`` place the needle at a random depth per example
(``depth=None``). ``depth_breakdown`` reads each test example's depth back from its tokens (where
the key sentence / the queried needle sits in the filler), scores the trained model per example
and returns the accuracy of each depth bin. The runner stores the list under
``metrics["depth_eval"]``; the report draws accuracy by length (the run's ``seq_len``) x depth.

``passkey_depth_grid`` evaluates one model on fixed-depth passkey prompts at any lengths (the
usual heat map of Mohtashami & Jaggi 2023, Fig. 3), in the same record format.

A record: ``{"length": T, "depth": bin centre, "depth_lo": ..., "depth_hi": ..., "accuracy":
scored positions correct / scored, "examples": examples in the bin}``; depths are fractions of
the filler (0 = first, 1 = last), as the tasks' ``depth`` option.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
from torch import nn

from longctx.tasks.base import IGNORE_INDEX, Batch
from longctx.tasks.niah import HAYSTACKS, NEEDLE, QUERY, NIAHConfig
from longctx.tasks.passkey import INSTRUCTION, minimum_length, passkey_grid

DEPTH_TASKS = ("passkey", "niah")
DEFAULT_BINS = 5
_PASSKEY_MARK = b"The pass key is "  # the key sentence comes first, the question last
_NIAH_NEEDLE = re.compile(rb"One of the special magic numbers for ([a-z]+-[a-z]+) is: \d+\. ")
_NIAH_QUERY = re.compile(rb"\nWhat are the special magic numbers for ([a-z]+-[a-z]+)\? Answer: ")


# -- reading the depth back from an example ----------------------------------------------------

def _passkey_depth(ids: np.ndarray, digits: int) -> float:
    """Filler bytes before the key sentence over all filler bytes (``passkey_example``'s cut)."""
    text = ids.astype(np.uint8).tobytes()
    pos = text.find(_PASSKEY_MARK)
    if pos < 0:
        raise ValueError("depth_breakdown: a passkey example has no key sentence")
    fill = len(ids) + 1 - minimum_length(digits)  # the input lacks the answer's last byte
    return 0.0 if fill <= 0 else (pos - len(INSTRUCTION)) / fill


def _niah_synthetic_depth(ids: np.ndarray, n_answers: int) -> float:
    """Haystack tokens before the queried needle over all haystack tokens."""
    q = int(np.flatnonzero(ids == QUERY)[-1])
    key = ids[q + 1]
    needles = np.flatnonzero(ids[:q] == NEEDLE)
    hits = [j for j, p in enumerate(needles) if ids[p + 1] == key]
    if not hits:
        raise ValueError("depth_breakdown: a synthetic NIAH example has no needle for its query")
    room = len(ids) + 1 - (2 + n_answers) - 3 * len(needles)  # _synthetic_example's room
    return (int(needles[hits[0]]) - 3 * hits[0]) / max(room, 1)


def _niah_text_depth(ids: np.ndarray) -> float:
    """Haystack bytes before the queried needle over all haystack bytes (needles excluded)."""
    text = ids.astype(np.uint8).tobytes()
    query = list(_NIAH_QUERY.finditer(text))
    if not query:
        raise ValueError("depth_breakdown: a text NIAH example has no query")
    q = query[-1]
    needles = list(_NIAH_NEEDLE.finditer(text, 0, q.start()))
    before = 0
    for m in needles:
        if m.group(1) == q.group(1):
            hay = q.start() - sum(len(n.group(0)) for n in needles)
            return (m.start() - before) / max(hay, 1)
        before += len(m.group(0))
    raise ValueError("depth_breakdown: a text NIAH example has no needle for its query")


def needle_depths(task: str, batch: Batch, options: dict[str, Any] | None = None) -> np.ndarray:
    """The needle depth of each example of ``batch`` (``[N]`` floats in [0, 1]).

    ``task``: ``"passkey"`` or ``"niah"``; ``options``: the task's options (for NIAH the
    ``haystack``; for a multi-key / multi-value NIAH the depth of the queried key's first needle).
    """
    if task not in DEPTH_TASKS:
        raise ValueError(f"needle_depths: task must be one of {DEPTH_TASKS}, got {task!r}")
    options = options or {}
    inputs = batch.inputs.cpu().numpy()
    scored = (batch.targets != IGNORE_INDEX).sum(dim=1).cpu().numpy()
    if task == "passkey":
        out = [_passkey_depth(x, int(n)) for x, n in zip(inputs, scored)]
    else:
        haystack = options.get("haystack", NIAHConfig.haystack)
        if haystack not in HAYSTACKS:
            raise ValueError(f"needle_depths: options['haystack'] must be one of {HAYSTACKS}, "
                             f"got {haystack!r}")
        out = [_niah_text_depth(x) if haystack == "corpus" else _niah_synthetic_depth(x, int(n))
               for x, n in zip(inputs, scored)]
    return np.clip(np.asarray(out, dtype=np.float64), 0.0, 1.0)


# -- scoring -----------------------------------------------------------------------------------

@torch.no_grad()
def example_scores(model: nn.Module, batch: Batch, batch_size: int = 256) -> tuple[np.ndarray,
                                                                                   np.ndarray]:
    """``(correct, scored)``, each ``[N]`` ints: per example, the scored positions
    (targets != IGNORE_INDEX) whose argmax is the target, and the scored positions.
    ``model(x)`` must return ``(logits [B, T, V], state)``."""
    if batch_size < 1:
        raise ValueError(f"example_scores: batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct, scored = [], []
    for i in range(0, len(batch), batch_size):
        x = batch.inputs[i:i + batch_size].to(device)
        y = batch.targets[i:i + batch_size].to(device)
        logits, _ = model(x)
        mask = y != IGNORE_INDEX
        correct.append(((logits.argmax(-1) == y) & mask).sum(dim=1).cpu())
        scored.append(mask.sum(dim=1).cpu())
    model.train(was_training)
    return torch.cat(correct).numpy(), torch.cat(scored).numpy()


def _records(length: int, depths: np.ndarray, correct: np.ndarray, scored: np.ndarray,
             edges: np.ndarray) -> list[dict[str, Any]]:
    """One record per non-empty bin ``[edges[i], edges[i+1])`` (the last bin includes 1)."""
    idx = np.clip(np.searchsorted(edges, depths, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = idx == b
        if not sel.any() or scored[sel].sum() == 0:
            continue
        lo, hi = float(edges[b]), float(edges[b + 1])
        out.append({"length": int(length), "depth": round((lo + hi) / 2, 6),
                    "depth_lo": round(lo, 6), "depth_hi": round(hi, 6),
                    "accuracy": float(correct[sel].sum() / scored[sel].sum()),
                    "examples": int(sel.sum())})
    return out


def depth_breakdown(model: nn.Module, task: str, test: Batch,
                    options: dict[str, Any] | None = None, bins: int = DEFAULT_BINS,
                    batch_size: int = 256) -> list[dict[str, Any]]:
    """Accuracy of ``model`` on ``test`` in ``bins`` equal depth bins (records as in the module
    docstring, ``length`` = the test set's sequence length). ``task`` is ``"passkey"`` or
    ``"niah"``; ``options`` are the task's options (see :func:`needle_depths`)."""
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"depth_breakdown: bins must be a positive int, got {bins!r}")
    depths = needle_depths(task, test, options)
    correct, scored = example_scores(model, test, batch_size)
    edges = np.linspace(0.0, 1.0, bins + 1)
    return _records(test.inputs.shape[1], depths, correct, scored, edges)


def passkey_depth_grid(model: nn.Module, lengths: list[int], depths: list[float], n: int = 32,
                       digits: int = 5, seed: int = 0,
                       batch_size: int = 256) -> list[dict[str, Any]]:
    """Accuracy of ``model`` on ``n`` passkey prompts per (length, depth) of the grid; one record
    per cell with ``depth_lo == depth_hi == depth`` (a fixed depth, not a bin)."""
    if not lengths or not depths:
        raise ValueError("passkey_depth_grid: lengths and depths must be non-empty")
    out = []
    for (length, depth), batch in passkey_grid(lengths, depths, n, digits, seed).items():
        correct, scored = example_scores(model, batch, batch_size)
        out.append({"length": int(length), "depth": float(depth), "depth_lo": float(depth),
                    "depth_hi": float(depth), "accuracy": float(correct.sum() / scored.sum()),
                    "examples": int(n)})
    return out
