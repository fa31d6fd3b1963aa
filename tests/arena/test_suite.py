"""Suite TOML files: every key checked, errors name the file and the key; the grid expands."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import pytest

from longctx.arena.store import config_hash
from longctx.arena.suite import (
    SuiteError,
    builtin_suites,
    load_suite,
    mixer_base,
    model_kind,
    parse_suite,
)
from longctx.errors import UnknownNameError
from longctx.layers import make_config, names
from longctx.models import MODEL_KINDS
from longctx.tasks.registry import task_config_class
from longctx.train import TrainConfig

# section -> key -> raw TOML value
BASE: dict[str, dict[str, str]] = {
    "suite": {"name": '"tiny"', "description": '"a test suite"', "tasks": '["mqar"]',
              "mixers": '["softmax_attention", "gla"]', "d_model": "[16, 32]",
              "seq_len": "[32, 64]", "lr": "[1e-3, 3e-3]", "seeds": "[0, 1, 2]"},
    "model": {"n_layers": "1", "n_heads": "2", "short_conv": "4"},
    "train": {"steps": "3", "batch_size": "{ 32 = 8, 64 = 4 }", "warmup_frac": "0"},
    "task.mqar": {"vocab_size": "32", "num_kv_pairs": "{ 32 = 4, 64 = 8 }", "num_train": "64",
                  "num_test": "16"},
    "mixer.gla": {"chunk_size": "16", "expand_k": "1"},
}


def suite_text(set_: dict[str, dict[str, str | None]] | None = None) -> str:
    """The BASE suite as TOML, with ``set_[section][key] = raw value`` (None deletes the key)."""
    sections = {s: dict(kv) for s, kv in BASE.items()}
    for section, kv in (set_ or {}).items():
        table = sections.setdefault(section, {})
        for key, value in kv.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return "\n".join(f"[{s}]\n" + "".join(f"{k} = {v}\n" for k, v in kv.items())
                     for s, kv in sections.items())


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parse(set_=None, path: str = "/somewhere/tiny.toml"):
    return parse_suite(tomllib.loads(suite_text(set_)), path)


# -- built-in suites -----------------------------------------------------------------------------

def test_quick_suite_loads() -> None:
    assert "quick" in builtin_suites()
    s = load_suite("quick")
    assert s.name == "quick"
    assert s.description
    assert len(set(s.grid["mixers"])) >= 5
    assert set(s.grid["mixers"]) <= set(names())
    assert len(s.grid["seq_len"]) >= 2
    assert all("extrapolation" not in r for r in s.runs())  # no [extrapolation]: ids unchanged
    assert "mqar" in s.grid["tasks"]
    assert len(s.runs()) >= 10


@pytest.mark.parametrize("suite_name", sorted(builtin_suites()))
def test_every_builtin_run_makes_valid_configs(suite_name: str) -> None:
    """Each run of a shipped suite gives valid task / model / mixer / train configs."""
    s = load_suite(suite_name)
    runs = s.runs()
    assert len({config_hash(r) for r in runs}) == len(runs)
    for run in runs:
        json.dumps(run)  # JSON-able
        cls = task_config_class(run["task"])
        task_opts = {k: v for k, v in run.items() if k in cls.__dataclass_fields__}
        assert cls(**task_opts).seq_len == run["seq_len"]
        TrainConfig(lr=run["lr"], seed=run["seed"], **run["train"])
        mixer = mixer_base(run["mixer"])
        kind, model = model_kind(run["model"])
        MODEL_KINDS[kind][0](vocab_size=300, d_model=run["d_model"], mixer=mixer,
                             mixer_options={mixer: run["mixer_options"]} if run["mixer_options"] else {},
                             **model)
        make_config(mixer, d_model=run["d_model"],
                    n_heads=run["model"].get("n_heads", 4), **run["mixer_options"])


# -- a valid suite -------------------------------------------------------------------------------

def test_load_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, suite_text())
    s = load_suite(str(path))
    assert s.name == "tiny" and s.description == "a test suite"
    assert s.path == str(path)
    assert s.grid["seq_len"] == [32, 64]
    assert s.grid["lr"] == [1e-3, 3e-3]


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path, suite_text({"suite": {"name": None}}), name="my_suite.toml")
    assert load_suite(str(path)).name == "my_suite"


def test_runs_expand_the_grid() -> None:
    s = parse()
    runs = s.runs()
    g = s.grid
    expected = math.prod(len(g[k]) for k in ("tasks", "mixers", "d_model", "seq_len", "lr", "seeds"))
    assert len(runs) == expected == 1 * 2 * 2 * 2 * 2 * 3
    assert len({config_hash(r) for r in runs}) == len(runs), "run ids are unique"
    combos = {(r["task"], r["mixer"], r["d_model"], r["seq_len"], r["lr"], r["seed"]) for r in runs}
    assert len(combos) == len(runs)
    assert {r["mixer"] for r in runs} == {"softmax_attention", "gla"}
    assert {r["seed"] for r in runs} == {0, 1, 2}


def test_per_length_tables_resolve() -> None:
    runs = parse().runs()
    for r in runs:
        want_bs = {32: 8, 64: 4}[r["seq_len"]]
        want_kv = {32: 4, 64: 8}[r["seq_len"]]
        assert r["train"]["batch_size"] == want_bs
        assert r["num_kv_pairs"] == want_kv
        assert r["train"]["steps"] == 3
        assert r["vocab_size"] == 32 and r["num_train"] == 64
        assert r["model"] == {"n_layers": 1, "n_heads": 2, "short_conv": 4}
        if r["mixer"] == "gla":
            assert r["mixer_options"] == {"chunk_size": 16, "expand_k": 1}
        else:
            assert r["mixer_options"] == {}


def test_runs_are_stable() -> None:
    a = [config_hash(r) for r in parse().runs()]
    b = [config_hash(r) for r in parse().runs()]
    assert a == b


def test_per_mixer_lr_table() -> None:
    s = parse({"suite": {"lr": "{ default = [1e-2], gla = [1e-3, 3e-3] }"}})
    runs = s.runs()
    per_mixer = {"softmax_attention": 1, "gla": 2}
    assert len(runs) == 1 * 2 * 2 * 3 * sum(per_mixer.values())
    assert {r["lr"] for r in runs if r["mixer"] == "gla"} == {1e-3, 3e-3}
    assert {r["lr"] for r in runs if r["mixer"] == "softmax_attention"} == {1e-2}


# -- errors name the file and the key ------------------------------------------------------------

def check_error(tmp_path: Path, set_: dict, *needles: str, text: str | None = None) -> str:
    path = write(tmp_path, text if text is not None else suite_text(set_))
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    msg = str(info.value)
    assert str(path) in msg, f"message does not name the file: {msg}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in: {msg}"
    return msg


def test_unknown_top_level_section(tmp_path: Path) -> None:
    check_error(tmp_path, {"optimizer": {"beta": "1"}}, "optimizer")


@pytest.mark.parametrize("section,key,hint", [
    ("suite", "seq_lens", "seq_len"),
    ("model", "n_layer", "n_layers"),
    ("train", "stpes", "steps"),
    ("task.mqar", "num_kv_pair", "num_kv_pairs"),
    ("mixer.gla", "gate_rnk", "gate_rank"),
])
def test_unknown_key_in_section(tmp_path: Path, section: str, key: str, hint: str) -> None:
    msg = check_error(tmp_path, {section: {key: "3"}}, f"[{section}]", repr(key))
    assert repr(hint) in msg, f"no closest-key hint {hint!r}: {msg}"


@pytest.mark.parametrize("section,key", [
    ("model", "d_model"), ("model", "vocab_size"), ("model", "mixer"),
    ("train", "lr"), ("train", "seed"), ("task.mqar", "seq_len"), ("mixer.gla", "n_heads"),
])
def test_keys_set_by_the_grid_are_refused(tmp_path: Path, section: str, key: str) -> None:
    check_error(tmp_path, {section: {key: "16"}}, repr(key))


@pytest.mark.parametrize("section,key,value", [
    ("train", "steps", '"ten"'),
    ("train", "steps", "3.5"),
    ("train", "steps", "true"),
    ("train", "warmup_frac", '"0.1"'),
    ("model", "n_layers", '"2"'),
    ("model", "tie_embeddings", "1"),
    ("task.mqar", "vocab_size", "[32]"),
    ("task.mqar", "num_kv_pairs", '{ 32 = "four", 64 = 8 }'),
    ("mixer.gla", "chunk_size", '"16"'),
    ("mixer.gla", "chunk_size", "{ 32 = 8, 64 = 16 }"),  # no per-length tables for mixers
])
def test_mistyped_value(tmp_path: Path, section: str, key: str, value: str) -> None:
    check_error(tmp_path, {section: {key: value}}, key)


def test_float_field_accepts_int(tmp_path: Path) -> None:
    s = load_suite(str(write(tmp_path, suite_text({"train": {"warmup_frac": "0"}}))))
    assert s.train["warmup_frac"] == 0


@pytest.mark.parametrize("section,key,value", [
    ("train", "target_accuracy", '"high"'),
    ("train", "threads", '"four"'),
])
def test_mistyped_optional_value(tmp_path: Path, section: str, key: str, value: str) -> None:
    """Fields whose default is None (``float | None``) are type-checked too."""
    check_error(tmp_path, {section: {key: value}}, key)


@pytest.mark.parametrize("key", ["tasks", "mixers", "d_model", "seq_len", "lr", "seeds"])
def test_empty_grid_list(tmp_path: Path, key: str) -> None:
    check_error(tmp_path, {"suite": {key: "[]"}}, key)


@pytest.mark.parametrize("key", ["tasks", "mixers", "d_model", "seq_len", "lr", "seeds"])
def test_missing_grid_key(tmp_path: Path, key: str) -> None:
    check_error(tmp_path, {"suite": {key: None}}, key)


@pytest.mark.parametrize("key,value", [
    ("d_model", "[0]"), ("d_model", "[16.0]"), ("seq_len", "[-32]"), ("seq_len", '["32"]'),
    ("seeds", "[-1]"), ("lr", "[0]"), ("lr", '["1e-3"]'), ("mixers", '"gla"'),
])
def test_bad_grid_values(tmp_path: Path, key: str, value: str) -> None:
    check_error(tmp_path, {"suite": {key: value}}, key)


def test_unknown_mixer_in_grid(tmp_path: Path) -> None:
    msg = check_error(tmp_path, {"suite": {"mixers": '["softmax_attention", "gla2"]'},
                                 "mixer.gla": {"chunk_size": None, "expand_k": None}}, "'gla2'")
    assert "'gla'" in msg  # closest match


def test_unknown_task_in_grid(tmp_path: Path) -> None:
    check_error(tmp_path, {"suite": {"tasks": '["mqar", "passkey_x"]'}}, "'passkey_x'", "mqar")


def test_mixer_table_for_mixer_not_in_grid(tmp_path: Path) -> None:
    check_error(tmp_path, {"mixer.retention": {"chunk_size": "8"}}, "retention")


def test_task_table_for_task_not_in_grid(tmp_path: Path) -> None:
    check_error(tmp_path, {"task.niah": {"seq_len": "8"}}, "niah")


@pytest.mark.parametrize("section,key,value", [
    ("train", "batch_size", "{ 32 = 8 }"),                     # a length missing
    ("train", "batch_size", "{ 32 = 8, 64 = 4, 128 = 2 }"),    # an extra length
    ("task.mqar", "num_kv_pairs", "{ 32 = 4, 65 = 8 }"),        # a wrong length
])
def test_per_length_table_with_wrong_lengths(tmp_path: Path, section: str, key: str,
                                             value: str) -> None:
    check_error(tmp_path, {section: {key: value}}, key, "32", "64")


def test_bad_lr_table(tmp_path: Path) -> None:
    check_error(tmp_path, {"suite": {"lr": "{ gla = [1e-3] }"}}, "lr", "default")
    check_error(tmp_path, {"suite": {"lr": "{ default = [1e-3], gla2 = [1e-3] }"}}, "gla2")
    check_error(tmp_path, {"suite": {"lr": "{ default = [] }"}}, "lr")


def test_invalid_toml(tmp_path: Path) -> None:
    check_error(tmp_path, {}, "TOML", text=suite_text() + "\nsteps = = 3\n[train\n")


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    text = suite_text().replace("[model]\nn_layers = 1\nn_heads = 2\nshort_conv = 4\n", "")
    assert "[model]" not in text
    check_error(tmp_path, {}, "model", text="model = 3\n" + text)


@pytest.mark.parametrize("key,value", [("seq_len", "[32, 64, 32]"), ("lr", "[1e-3, 0.001]"),
                                       ("mixers", '["gla", "softmax_attention", "gla"]')])
def test_duplicate_grid_values_give_unique_runs(key: str, value: str) -> None:
    """A repeated grid value must not make two runs with one id (the store would refuse the
    second): either the suite is refused, naming the key, or the runs are distinct."""
    set_ = {"suite": {key: value}}
    if key == "seq_len":
        set_["train"] = {"batch_size": "8"}
        set_["task.mqar"] = {"num_kv_pairs": "4"}
    try:
        s = parse(set_)
    except SuiteError as e:
        assert key in str(e)
        return
    ids = [config_hash(r) for r in s.runs()]
    assert len(ids) == len(set(ids)), f"duplicate run ids from {key} = {value}"


def test_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite(str(tmp_path / "absent.toml"))
    with pytest.raises(UnknownNameError) as info:
        load_suite("quik")
    assert "quick" in str(info.value)


# -- bad grids: wrong element types, names, and values the configs refuse ----------------------

@pytest.mark.parametrize("key,value", [
    ("mixers", "[1]"), ("mixers", '[["gla"]]'), ("tasks", "[1]"), ("tasks", '"mqar"'),
    ("seq_len", "[[32]]"), ("seeds", "[0.5]"), ("lr", "3"), ("lr", "{ default = 1e-3 }"),
])
def test_grid_values_of_the_wrong_type(tmp_path: Path, key: str, value: str) -> None:
    """A non-string mixer / task, a nested list, a scalar for a list: a SuiteError, no crash."""
    check_error(tmp_path, {"suite": {key: value}}, "[suite]", key)


@pytest.mark.parametrize("key", ["mixers", "tasks"])
def test_unknown_name_message_names_the_key(tmp_path: Path, key: str) -> None:
    value = '["softmax_attention", "gla2"]' if key == "mixers" else '["mqar", "passkey_x"]'
    msg = check_error(tmp_path, {"suite": {key: value}}, f"[suite] {key}:")
    assert "valid" in msg  # the known names are listed


@pytest.mark.parametrize("value", ["3", '""', '"a/b"', '".."'])
def test_bad_suite_name(tmp_path: Path, value: str) -> None:
    check_error(tmp_path, {"suite": {"name": value}}, "name")


def test_description_must_be_a_string(tmp_path: Path) -> None:
    check_error(tmp_path, {"suite": {"description": "[1]"}}, "description")


@pytest.mark.parametrize("section,key,value,needle", [
    ("train", "steps", "-3", "[train] (seq_len = 32)"),
    ("task.mqar", "num_kv_pairs", "1000", "[task.mqar] (seq_len = 32)"),
    ("task.mqar", "num_kv_pairs", "{ 32 = 4, 64 = 1000 }", "[task.mqar] (seq_len = 64)"),
    ("mixer.gla", "chunk_size", "-1", "[mixer.gla]"),
    ("model", "n_heads", "3", "n_heads"),  # 3 heads do not divide d_model = 16
    ("model", "short_conv", "1", "[model]"),
])
def test_values_the_configs_refuse_are_caught_at_load(tmp_path: Path, section: str, key: str,
                                                      value: str, needle: str) -> None:
    """Well-typed values a config refuses fail when the file is loaded (not mid-suite), with the
    file, the section and the config's own message naming the key."""
    check_error(tmp_path, {section: {key: value}}, needle, key)


# -- per-task grids, per-mixer model tables, extrapolation of some tasks ----------------------------

def test_task_grid_replaces_the_suite_grid_for_that_task() -> None:
    s = parse({"suite": {"tasks": '["mqar", "passkey"]'},
               "grid.passkey": {"mixers": '["gla"]', "seq_len": "[256]", "d_model": "[16]",
                                "seeds": "[0]"},
               "train": {"batch_size": "{ 32 = 8, 64 = 4, 256 = 2 }"}})
    runs = s.runs()
    passkey = [r for r in runs if r["task"] == "passkey"]
    assert {(r["mixer"], r["seq_len"], r["d_model"], r["seed"]) for r in passkey} == {
        ("gla", 256, 16, 0)}
    assert len(passkey) == 2  # the suite's two learning rates
    assert passkey[0]["train"]["batch_size"] == 2
    mqar = [r for r in runs if r["task"] == "mqar"]
    assert len(mqar) == 2 * 2 * 2 * 2 * 3  # the suite's grid, unchanged
    assert s.values("seq_len") == [32, 64, 256]


def test_without_overrides_run_ids_are_unchanged() -> None:
    """A suite with no [grid.*] / [model."m"] keeps its runs' configs (so stored runs resume)."""
    from longctx.arena.store import config_hash

    plain = parse()
    with_empty_task_grid = parse({"grid.mqar": {"seeds": "[0, 1, 2]"}})
    assert [config_hash(r) for r in plain.runs()] == [config_hash(r) for r in with_empty_task_grid.runs()]


def test_model_table_of_one_mixer() -> None:
    s = parse({"suite": {"mixers": '["softmax_attention", "softmax_attention@rmt", "gla"]'},
               'model."softmax_attention@rmt"': {"kind": '"rmt"', "segment_len": "8",
                                                 "n_mem": "2"}})
    kinds = {r["mixer"]: r["model"].get("kind", "lm") for r in s.runs()}
    assert kinds == {"softmax_attention": "lm", "softmax_attention@rmt": "rmt", "gla": "lm"}
    rmt = next(r for r in s.runs() if r["mixer"] == "softmax_attention@rmt")
    assert rmt["model"]["n_layers"] == 1 and rmt["model"]["segment_len"] == 8  # merged


def test_extrapolation_of_some_tasks() -> None:
    s = parse({"suite": {"tasks": '["mqar", "corpus_lm"]'},
               "extrapolation": {"lengths": "[1, 2]", "scalings": '["none"]',
                                 "tasks": '["corpus_lm"]'}})
    assert all(("extrapolation" in r) == (r["task"] == "corpus_lm") for r in s.runs())


@pytest.mark.parametrize("set_,needles", [
    ({"grid.passkey": {"seq_len": "[256]"}}, ("[grid]", "passkey")),  # not a task of the suite
    ({"grid.mqar": {"tasks": '["mqar"]'}}, ("[grid.mqar]", "tasks")),
    ({"grid.mqar": {"seq_len": "[0]"}}, ("[grid.mqar]", "seq_len")),
    ({"grid.mqar": {"mixers": '["gla2"]'}}, ("[grid.mqar] mixers", "gla2")),
    ({"grid.mqar": {"seq_len": "[128]"}}, ("[train]", "batch_size", "'128'")),  # per-length keys
    ({'model."gla"': {"kind": '"rmt"', "segment_len": "0"}}, ('[model."gla"]', "segment_len")),
    ({'model."gla"': {"pooling": '"mean"'}}, ('[model."gla"]', "pooling", "classifier")),
    ({"extrapolation": {"tasks": '["passkey"]'}}, ("[extrapolation] tasks", "passkey")),
])
def test_bad_overrides_are_named(tmp_path: Path, set_: dict, needles: tuple[str, ...]) -> None:
    check_error(tmp_path, set_, *needles)


def test_task_model_table() -> None:
    """``[grid.<task>] model = {...}``: that task's runs use these model values (a classifier
    on listops next to LMs on MQAR); a mixer's own table still wins."""
    s = parse({"suite": {"tasks": '["mqar", "listops"]'},
               "grid.listops": {"model": '{ kind = "classifier", pooling = "last" }',
                                "seq_len": "[64]", "seeds": "[0]"},
               "model": {"short_conv": None},  # an LM field the classifier does not have
               "task.listops": {"min_len": "10", "max_len": "60"},
               "train": {"batch_size": "8"}})
    models = {(r["task"], r["mixer"]): r["model"] for r in s.runs()}
    assert models[("listops", "gla")]["kind"] == "classifier"
    assert models[("listops", "gla")]["pooling"] == "last" and models[("listops", "gla")]["n_layers"] == 1
    assert "kind" not in models[("mqar", "gla")]


def test_bad_task_model_table_is_named(tmp_path: Path) -> None:
    check_error(tmp_path, {"suite": {"tasks": '["mqar", "listops"]'},
                           "grid.listops": {"model": '{ pooling = "mean" }'},
                           "model": {"short_conv": None}},
                "[grid.listops.model]", "pooling", "classifier")
