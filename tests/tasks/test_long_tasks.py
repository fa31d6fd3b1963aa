"""Passkey, needle-in-a-haystack and ListOps generators: exact layout, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longctx.tasks import build_task
from longctx.tasks.base import IGNORE_INDEX
from longctx.tasks.listops import (
    CLOSE,
    DIGIT0,
    EQUALS,
    OP_ID,
    ListOpsConfig,
    evaluate,
    expression,
    to_text,
)
from longctx.tasks.niah import NEEDLE, QUERY, NIAHConfig
from longctx.tasks.passkey import (
    FILLER,
    INSTRUCTION,
    QUESTION,
    PasskeyConfig,
    passkey_example,
    passkey_grid,
)


def answer(batch, i: int = 0) -> list[int]:
    y = batch.targets[i]
    return y[y != IGNORE_INDEX].tolist()


def text(ids: torch.Tensor) -> str:
    return bytes(ids.tolist()).decode("utf-8", errors="replace")


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt(depth: float) -> None:
    t, start = passkey_example(600, "40713", depth)
    assert len(t) == 600 and t.startswith(INSTRUCTION + (FILLER[:20] if depth else "The pass key is 40713."))
    assert t.endswith(QUESTION + "40713") and t[start:] == "40713"
    assert t.count("The pass key is 40713. Remember it. 40713 is the pass key.") == 1
    filler = 600 - len(INSTRUCTION) - len(QUESTION) - len("The pass key is 40713. Remember it. 40713 is the pass key. ") - 5
    assert (t.index("The pass key is 40713. Remember") - len(INSTRUCTION)) / filler == pytest.approx(depth, abs=0.01)


def test_passkey_task_scores_the_digits_only() -> None:
    d = build_task("passkey", seed=3, seq_len=300, num_train=5, num_test=3)
    assert d.train.inputs.shape == (5, 300) and d.vocab_size == 256
    for b in (d.train, d.test):
        for i in range(len(b)):
            prompt, digits = text(b.inputs[i]), bytes(answer(b, i)).decode()
            assert len(digits) == 5 and digits.isdigit()
            assert prompt.endswith(QUESTION + digits[:4]) and f"The pass key is {digits}. Remember" in prompt
    again = build_task("passkey", seed=3, seq_len=300, num_train=5, num_test=3)
    assert torch.equal(again.train.inputs, d.train.inputs)
    grid = passkey_grid([300, 400], [0.0, 1.0], n=2)
    assert set(grid) == {(300, 0.0), (300, 1.0), (400, 0.0), (400, 1.0)} and grid[(400, 1.0)].inputs.shape == (2, 400)
    with pytest.raises(ValueError, match="too short for the prompt"):
        PasskeyConfig(seq_len=100)
    with pytest.raises(ValueError, match=r"depth must be in \[0, 1\]"):
        PasskeyConfig(depth=1.5)


@pytest.mark.parametrize("kind, n_needles, n_values", [("single", 1, 1), ("multikey", 4, 1), ("multivalue", 3, 3)])
def test_niah_text(kind: str, n_needles: int, n_values: int) -> None:
    d = build_task("niah", seq_len=500, kind=kind, num_train=4, num_test=3)
    for b in (d.train, d.test):
        assert b.inputs.shape[1] == 500
        for i in range(len(b)):
            t = text(b.inputs[i])
            assert t.count("One of the special magic numbers for ") == n_needles
            key = t.rsplit("What are the special magic numbers for ", 1)[1].split("?")[0]
            values = bytes(answer(b, i)).decode().rstrip(".").split(", ")
            assert len(values) == n_values
            for v in values:  # every answered value is stated in a needle for the queried key
                assert f"special magic numbers for {key} is: {v}." in t


@pytest.mark.parametrize("kind", ["single", "multikey", "multivalue"])
def test_niah_synthetic(kind: str) -> None:
    d = build_task("niah", seq_len=80, kind=kind, haystack="synthetic", vocab_size=64, num_train=6, num_test=2)
    for i in range(6):
        x = d.train.inputs[i].tolist()
        ans = answer(d.train, i)
        q = len(x) - 1 - x[::-1].index(QUERY)
        key = x[q + 1]
        needles = [(x[j + 1], x[j + 2]) for j in range(len(x) - 2) if x[j] == NEEDLE]
        assert [v for k, v in needles if k == key][:len(ans)] == ans
        assert x[q + 2:] == ans[:-1]  # the values follow the query (the last one is predicted)
    with pytest.raises(ValueError, match="kind must be one of"):
        NIAHConfig(kind="double")
    with pytest.raises(ValueError, match="the corpus haystack is bytes"):
        NIAHConfig(vocab_size=100)


def test_listops_values_and_layout() -> None:
    assert evaluate("MED", [1, 2, 9, 4]) == 3 and evaluate("SM", [7, 8]) == 5
    cfg = ListOpsConfig(seq_len=128, min_len=20, max_len=100, num_train=8, num_test=2)
    rng = np.random.default_rng(0)
    for _ in range(20):
        tokens, value = expression(cfg, rng)
        assert 20 <= len(tokens) <= 100 and tokens[0] in OP_ID.values() and tokens[-1] == CLOSE
        assert _eval_text(to_text(tokens)) == value
    d = build_task("listops", seq_len=128, min_len=20, max_len=100, num_train=8, num_test=2)
    assert d.vocab_size == 17 and (d.train.inputs[:, -1] == EQUALS).all()
    assert all(len(answer(d.train, i)) == 1 and DIGIT0 <= answer(d.train, i)[0] < DIGIT0 + 10 for i in range(8))
    with pytest.raises(ValueError, match="min_len <= max_len <= seq_len - 1"):
        ListOpsConfig(seq_len=100, max_len=200)


def _eval_text(s: str) -> int:
    """An independent evaluator of the printed expression (a stack machine)."""
    stack: list = []
    for tok in s.split():
        if tok.startswith("["):
            stack.append([tok[1:]])
        elif tok == "]":
            op, *args = stack.pop()
            v = evaluate(op, args)
            if not stack:
                return v
            stack[-1].append(v)
        else:
            stack[-1].append(int(tok))
    raise AssertionError("unbalanced")
