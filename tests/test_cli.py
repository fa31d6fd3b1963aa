"""The ``longctx`` command line: list, and clear errors (exit status 2) for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from longctx.arena.suite import builtin_suites
from longctx.cli.main import build_parser, main
from longctx.layers import names
from longctx.tasks import task_names


def test_list(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for section in ("mixers:", "tasks:", "suites:"):
        assert section in out
    mixers_part = out.split("mixers:")[1].split("tasks:")[0]
    for name in names():
        assert name in mixers_part, name
    tasks_part = out.split("tasks:")[1].split("suites:")[0]
    for name in task_names():
        assert name in tasks_part
    assert "mqar" in tasks_part
    suites_part = out.split("suites:")[1]
    assert "quick" in suites_part
    assert "runs)" in suites_part  # the number of runs is shown


def test_arena_unknown_suite(capsys) -> None:
    assert main(["arena", "--suite", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'nope'" in err
    for name in builtin_suites():
        assert name in err
    assert "quick" in err


def test_arena_close_suite_name_suggested(capsys) -> None:
    assert main(["arena", "--suite", "quik", "--quiet"]) == 2
    assert "Did you mean 'quick'?" in capsys.readouterr().err


def test_arena_missing_toml_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "absent.toml"
    assert main(["arena", "--suite", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "does not exist" in err


def test_arena_bad_suite_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[suite]\ntasks = ["mqar"]\nmixers = ["gla"]\nd_model = [16]\n'
                    'seq_len = [16]\nlr = [1e-3]\nseeds = [0]\n[train]\nstpes = 3\n')
    assert main(["arena", "--suite", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'stpes'" in err and "'steps'" in err
    assert not (tmp_path / "runs").exists()


def test_report_on_empty_dir(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "results store" in err and str(empty) in err
    assert list(empty.iterdir()) == [], "report must not create a store in an empty folder"


def test_report_on_missing_dir(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing"
    assert main(["report", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not missing.exists()


def test_report_on_store_without_runs(tmp_path: Path, capsys) -> None:
    from longctx.arena.store import ResultsStore

    with ResultsStore(tmp_path / "results.sqlite"):
        pass
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_unknown_command_exits_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


def test_arena_defaults() -> None:
    args = build_parser().parse_args(["arena"])
    assert args.suite == "quick"
    assert args.jobs >= 1
