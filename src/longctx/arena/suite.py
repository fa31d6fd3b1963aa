"""Suites: a TOML file describing tasks x mixers x d_model x seq_len x lr x seeds.

```toml
[suite]
name = "quick"
tasks = ["mqar"]
mixers = ["softmax_attention", "gla"]
d_model = [64]
seq_len = [64, 256]
lr = [1e-3, 3e-3]          # a sweep: the report keeps the best per cell; or per mixer:
                           # lr = { default = [1e-2], gla = [1e-3] }
seeds = [0]

[model]                    # LMConfig fields (not vocab_size / d_model / mixer); or
n_layers = 2               # kind = "classifier" / "rmt" and that config's fields (pooling, ...)

[model."softmax_attention@rmt"]    # one grid entry's model: these values in place
kind = "rmt"               # (the whole-stack Recurrent Memory Transformer around the mixer)
segment_len = 16

[train]                    # TrainConfig fields (not lr / seed); per-length tables allowed
steps = 400
batch_size = { 64 = 64, 256 = 16 }

[task.mqar]                # task config fields; a table keyed by seq_len gives per-length values
vocab_size = 128
num_kv_pairs = { 64 = 8, 256 = 32 }

[mixer.sliding_window_attention]   # mixer config fields (not d_model / n_heads)
window = 32

[mixer."softmax_attention@alibi"]  # a named variant: mixers = [..., "softmax_attention@alibi"]
position = "alibi"

[grid.passkey]             # a task's own grid: these keys in place of [suite]'s (any of
mixers = ["softmax_attention", "gla"]   # mixers, d_model, seq_len, lr, seeds), and model
seq_len = [512]                         # values for this task's runs:
model = { n_layers = 4 }                # [grid.listops] model = { kind = "classifier" }

[extrapolation]            # optional: after training, evaluate at longer lengths (see
lengths = [1, 2, 4, 8]     # arena/extrapolation.py): multiples of seq_len, under each RoPE
scalings = ["none", "linear", "yarn"]   # scaling, without and (finetune_steps > 0) with
finetune_steps = 100                    # a short fine-tune at the longer length
tasks = ["mqar"]                        # optional: only these tasks' runs (default: all)
```
Every key is checked: an unknown or mistyped key is an error naming the file, the section and
the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from longctx.layers import config_class
from longctx.layers import names as mixer_names
from longctx.models import MODEL_KINDS
from longctx.tasks.registry import task_config_class, task_names
from longctx.train import TrainConfig

GRID_KEYS = ("tasks", "mixers", "d_model", "seq_len", "lr", "seeds")
SUITE_KEYS = ("name", "description", *GRID_KEYS)
SECTIONS = ("suite", "model", "train", "task", "mixer", "extrapolation", "grid")
TASK_GRID_KEYS = ("mixers", "d_model", "seq_len", "lr", "seeds", "model")  # [grid.<task>] keys
# keys a section may not set because the grid (or the suite) sets them
_MODEL_RESERVED = ("vocab_size", "d_model", "mixer", "mixer_options")
_TRAIN_RESERVED = ("lr", "seed")
_TASK_RESERVED = ("seq_len",)
_MIXER_RESERVED = ("d_model", "n_heads")


class SuiteError(ValueError):
    """A suite file that cannot be used; the message names the file and the key."""


@dataclass
class Suite:
    name: str
    path: str
    description: str
    grid: dict[str, list]  # GRID_KEYS -> values
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    task: dict[str, dict[str, Any]] = field(default_factory=dict)
    mixer: dict[str, dict[str, Any]] = field(default_factory=dict)
    extrapolation: dict[str, Any] | None = None  # the [extrapolation] section, if any
    task_grid: dict[str, dict[str, list]] = field(default_factory=dict)  # [grid.<task>], merged
    model_override: dict[str, dict[str, Any]] = field(default_factory=dict)  # [model."<mixer>"]
    extrapolation_tasks: list[str] | None = None  # [extrapolation] tasks; None: every task
    task_model: dict[str, dict[str, Any]] = field(default_factory=dict)  # [grid.<task>.model]

    def runs(self) -> list[dict[str, Any]]:
        """Every run's config (a JSON-able dict; its hash is the run id), in grid order."""
        out = []
        for task in self.grid["tasks"]:
            g = self.grid_for(task)
            for seq_len, mixer, d_model in itertools.product(g["seq_len"], g["mixers"], g["d_model"]):
                for lr, seed in itertools.product(self.lrs(mixer, task), g["seeds"]):
                    out.append(self._run(task, seq_len, mixer, d_model, lr, seed))
        return out

    def grid_for(self, task: str) -> dict[str, list]:
        """The grid of ``task``: the suite's, with its ``[grid.<task>]`` values in place."""
        return self.task_grid.get(task, self.grid)

    def values(self, key: str) -> list:
        """Every value of grid key ``key`` over all tasks' grids, in first-seen order."""
        out: list = []
        for task in self.grid["tasks"]:
            out += [v for v in self.grid_for(task)[key] if v not in out]
        return out

    def model_for(self, mixer: str, task: str | None = None) -> dict[str, Any]:
        """The ``[model]`` table of runs of ``mixer`` on ``task``: with the task's
        ``[grid.<task>.model]`` and then the mixer's ``[model."<mixer>"]`` values in place."""
        return {**self.model, **self.task_model.get(task, {}), **self.model_override.get(mixer, {})}

    def lrs(self, mixer: str, task: str | None = None) -> list[float]:
        """The learning rates swept for ``mixer`` (on ``task``: its grid's)."""
        lr = (self.grid_for(task) if task else self.grid)["lr"]
        return lr.get(mixer, lr["default"]) if isinstance(lr, dict) else lr

    def _run(self, task: str, seq_len: int, mixer: str, d_model: int, lr: float, seed: int) -> dict:
        task_opts = {k: _at_length(v, seq_len) for k, v in self.task.get(task, {}).items()}
        run = {
            "task": task, "mixer": mixer, "d_model": d_model, "seq_len": seq_len,
            "lr": lr, "seed": seed, **task_opts,
            "model": self.model_for(mixer, task), "mixer_options": dict(self.mixer.get(mixer, {})),
            "train": {k: _at_length(v, seq_len) for k, v in self.train.items()},
        }
        if self.extrapolation is not None and (self.extrapolation_tasks is None
                                               or task in self.extrapolation_tasks):
            run["extrapolation"] = dict(self.extrapolation)  # only then: run ids stay as they were
        return run


def mixer_base(name: str) -> str:
    """The registered mixer of a suite's mixer entry: ``"softmax_attention@alibi"`` -> its base."""
    return name.split("@", 1)[0]


def _at_length(value: Any, seq_len: int) -> Any:
    return value[str(seq_len)] if isinstance(value, dict) else value


def builtin_suites() -> dict[str, Path]:
    """Suites that ship inside the package: name -> path."""
    folder = resources.files("longctx.arena") / "suites"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")}


def resolve_suite(name_or_path: str) -> Path:
    """A path to a TOML file, or the name of a built-in suite."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SuiteError(f"suite file {p} does not exist")
        return p
    suites = builtin_suites()
    if name_or_path not in suites:
        from longctx.errors import unknown_name

        raise unknown_name("suite", name_or_path, sorted(suites))
    return suites[name_or_path]


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise SuiteError(f"{path}: not valid TOML: {e}") from None
    return parse_suite(data, str(path))


def _unknown(where: str, key: str, known, kind: str = "key") -> SuiteError:
    known = sorted(known)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SuiteError(f"{where}: unknown {kind} {key!r}{hint}; valid {kind}s: {', '.join(known)}")


def _check_keys(where: str, table: Any, valid) -> dict:
    if not isinstance(table, dict):
        raise SuiteError(f"{where}: expected a table, got {type(table).__name__}")
    for key in table:
        if key not in valid:
            raise _unknown(where, key, valid)
    return table


def _fields(cls: type, reserved: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """name -> (default, resolved type annotation) of the fields a suite may set."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f.default, hints[f.name]) for f in dataclasses.fields(cls)
            if f.name not in reserved and f.name != "mixer"}


def _expected_types(default: Any, hint: Any) -> tuple[type, ...]:
    """The default's type; for a None default (``float | None``), the annotation's types."""
    if default is not None and default is not dataclasses.MISSING:
        return (type(default),)
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    members = [typing.get_origin(t) or t for t in (typing.get_args(hint) if union else (hint,))]
    return tuple(t for t in members if isinstance(t, type) and t is not type(None))


def _matches(value: Any, t: type) -> bool:
    if t is float:  # ints are accepted for floats
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is tuple:  # TOML has arrays only
        return isinstance(value, (list, tuple))
    return isinstance(value, t)


def _check_type(where: str, key: str, value: Any, default: Any, hint: Any = None) -> None:
    """Values must have the type of the field's default, or of its annotation if that is None."""
    expected = _expected_types(default, hint)
    if expected and not any(_matches(value, t) for t in expected):
        names = " or ".join(t.__name__ for t in expected)
        raise SuiteError(f"{where}: {key} must be {names}, got {value!r}")


def _check_values(where: str, table: dict, fields: dict[str, tuple[Any, Any]], lengths=None) -> None:
    for key, value in table.items():
        default, hint = fields[key]
        if isinstance(value, dict) and lengths is not None:
            want = {str(n) for n in lengths}
            if set(value) != want:
                raise SuiteError(
                    f"{where}: {key} is a per-length table, so it needs exactly the keys "
                    f"{sorted(want, key=int)} (the seq_len values it applies to), got {sorted(value)}"
                )
            for v in value.values():
                _check_type(where, key, v, default, hint)
        else:
            _check_type(where, key, value, default, hint)


def _grid(path: str, suite: dict, section: str = "suite") -> dict[str, list]:
    grid = {}
    for key in GRID_KEYS:
        if key not in suite:
            raise SuiteError(f"{path} [{section}]: missing key {key!r} (a list)")
        values = suite[key]
        if key == "lr" and isinstance(values, dict):
            grid[key] = _lr_table(path, values, suite.get("mixers", []), section)
            continue
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{path} [{section}]: {key} must be a non-empty list, got {values!r}")
        grid[key] = values
    for key in ("d_model", "seq_len", "seeds"):
        for v in grid[key]:
            if isinstance(v, bool) or not isinstance(v, int) or (v <= 0 and key != "seeds") or v < 0:
                raise SuiteError(f"{path} [{section}]: {key} values must be positive integers, got {v!r}")
    if isinstance(grid["lr"], list):
        grid["lr"] = _lr_list(path, "lr", grid["lr"], section)
    for key, values in grid.items():
        for vs in values.values() if isinstance(values, dict) else [values]:
            repeated = sorted({repr(v) for v in vs if vs.count(v) > 1})
            if repeated:
                raise SuiteError(f"{path} [{section}]: {key} lists {', '.join(repeated)} more than "
                                 "once; each value gives one run, list it once")
    _check_names(path, grid, section)
    return grid


def _check_names(path: str, grid: dict[str, list], section: str = "suite") -> None:
    """``tasks`` and ``mixers`` hold registered names (strings); the error names the key."""
    for key, kind, known in (("tasks", "task", task_names()), ("mixers", "mixer", mixer_names())):
        for name in grid[key]:
            if not isinstance(name, str):
                raise SuiteError(f"{path} [{section}]: {key} values must be {kind} names (strings), "
                                 f"got {name!r}")
            base = mixer_base(name) if key == "mixers" else name
            if base not in known:
                raise _unknown(f"{path} [{section}] {key}", base, known, kind=kind)
            if key == "mixers" and "@" in name and not name.split("@", 1)[1]:
                raise SuiteError(f"{path} [{section}] mixers: mixer {name!r} has an empty variant "
                                 "name after '@'")


def _lr_list(path: str, where: str, values: Any, section: str = "suite") -> list[float]:
    if not isinstance(values, list) or not values:
        raise SuiteError(f"{path} [{section}]: {where} must be a non-empty list, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise SuiteError(f"{path} [{section}]: {where} values must be positive numbers, got {v!r}")
    return [float(v) for v in values]


def _lr_table(path: str, table: dict, mixers: list, section: str = "suite") -> dict[str, list[float]]:
    """``lr = { default = [...], <mixer> = [...] }``: per-mixer learning-rate sweeps."""
    if "default" not in table:
        raise SuiteError(f"{path} [{section}]: lr table needs a 'default' list (used by mixers not named)")
    for key in table:
        if key != "default" and key not in mixers:
            raise _unknown(f"{path} [{section}] lr", key, ["default", *mixers])
    return {key: _lr_list(path, f"lr.{key}", values, section) for key, values in table.items()}


def parse_suite(data: dict, path: str = "<suite>") -> Suite:
    """Validate a parsed TOML document and build the Suite."""
    _check_keys(path, data, SECTIONS)
    suite = _check_keys(f"{path} [suite]", data.get("suite", {}), SUITE_KEYS)
    grid = _grid(path, suite)
    task_grid, task_model = _task_grids(path, suite, grid, data.get("grid", {}))
    every = [grid, *task_grid.values()]
    all_mixers = list(dict.fromkeys(m for g in every for m in g["mixers"]))
    all_lengths = sorted({n for g in every for n in g["seq_len"]})
    model, model_override = _model_tables(f"{path} [model]", data.get("model", {}), all_mixers,
                                          task_model)
    train = _check_keys(f"{path} [train]", data.get("train", {}), _fields(TrainConfig, _TRAIN_RESERVED))
    _check_values(f"{path} [train]", train, _fields(TrainConfig, _TRAIN_RESERVED), lengths=all_lengths)
    tasks = _check_keys(f"{path} [task]", data.get("task", {}), grid["tasks"])
    for t, opts in tasks.items():
        fields = _fields(task_config_class(t), _TASK_RESERVED)
        _check_keys(f"{path} [task.{t}]", opts, fields)
        _check_values(f"{path} [task.{t}]", opts, fields,
                      lengths=task_grid.get(t, grid)["seq_len"])
    mixers = _check_keys(f"{path} [mixer]", data.get("mixer", {}), all_mixers)
    for m, opts in mixers.items():
        fields = _fields(config_class(mixer_base(m)), _MIXER_RESERVED)
        _check_keys(f"{path} [mixer.{m}]", opts, fields)
        _check_values(f"{path} [mixer.{m}]", opts, fields)
    extrapolation, extrapolation_tasks = None, None
    if "extrapolation" in data:
        extrapolation, extrapolation_tasks = _extrapolation(f"{path} [extrapolation]",
                                                            data["extrapolation"], grid["tasks"])
    if "name" in suite and not (isinstance(suite["name"], str) and suite["name"].strip()):
        raise SuiteError(f"{path} [suite]: name must be a non-empty string, got {suite['name']!r}")
    if any(c in suite.get("name", "") for c in "/\\") or suite.get("name") in (".", ".."):
        raise SuiteError(f"{path} [suite]: name {suite['name']!r} names the results folder "
                         "(runs/<name>/), so it may not contain '/' or '\\' or be '.' / '..'")
    if not isinstance(suite.get("description", ""), str):
        raise SuiteError(f"{path} [suite]: description must be a string, got {suite['description']!r}")
    name = suite.get("name", Path(path).stem)
    out = Suite(name=name, path=path, description=suite.get("description", ""), grid=grid,
                model=model, train=train, task=tasks, mixer=mixers, extrapolation=extrapolation,
                task_grid=task_grid, model_override=model_override,
                extrapolation_tasks=extrapolation_tasks, task_model=task_model)
    _check_configs(out)
    return out


def _task_grids(path: str, suite: dict, grid: dict[str, list],
                table: Any) -> tuple[dict[str, dict], dict[str, dict]]:
    """``[grid.<task>]``: the task's own ``mixers`` / ``d_model`` / ``seq_len`` / ``lr`` /
    ``seeds`` in place of the suite's (e.g. every mixer on MQAR, a few on passkey), each task
    grid checked as a whole like ``[suite]``; and its ``model`` table (checked with the whole
    model table by ``_model_tables``). Returns (task -> grid, task -> model table)."""
    tables = _check_keys(f"{path} [grid]", table, grid["tasks"])
    grids, models = {}, {}
    for task, over in tables.items():
        _check_keys(f"{path} [grid.{task}]", over, TASK_GRID_KEYS)
        if "model" in over:
            if not isinstance(over["model"], dict):
                raise SuiteError(f"{path} [grid.{task}]: model must be a table, got {over['model']!r}")
            models[task] = over["model"]
        raw = {k: suite[k] for k in GRID_KEYS} | {k: v for k, v in over.items() if k != "model"}
        if isinstance(raw["lr"], dict) and "lr" not in over and isinstance(over.get("mixers"), list):
            raw["lr"] = {m: v for m, v in raw["lr"].items() if m == "default" or m in over["mixers"]}
        grids[task] = _grid(path, raw, f"grid.{task}")
    return grids, models


def _model_tables(where: str, table: Any, mixers: list[str],
                  task_model: dict[str, dict]) -> tuple[dict, dict[str, dict]]:
    """``[model]`` and its ``[model."<mixer>"]`` sub-tables (that mixer's runs use the model
    table with these values in place: ``kind = "rmt"`` for one entry of the grid, say); each
    combination with a task's ``[grid.<task>.model]`` is checked too."""
    if not isinstance(table, dict):
        raise SuiteError(f"{where}: expected a table, got {type(table).__name__}")
    overrides = {k: v for k, v in table.items() if isinstance(v, dict) and k in mixers}
    base = _check_model(where, {k: v for k, v in table.items() if k not in overrides})
    for task, over in task_model.items():
        _check_model(f"{where[:-len('[model]')]}[grid.{task}.model]", base | over)
    for m, over in overrides.items():
        _check_model(f'{where[:-1]}."{m}"]', base | over)
    return base, overrides


def _check_configs(suite: Suite) -> None:
    """Build every distinct task / train / model / mixer config of the grid (no data, no
    weights), so a value the config refuses (``steps = -3``, ``n_heads`` not dividing
    ``d_model``) is a SuiteError naming the file and section now, not a crash mid-suite."""
    path = suite.path
    built: set[tuple[str, str, int]] = set()
    for t in suite.grid["tasks"]:
        g = suite.grid_for(t)
        for seq_len in g["seq_len"]:
            train = {k: _at_length(v, seq_len) for k, v in suite.train.items()}
            _build(f"{path} [train] (seq_len = {seq_len})", TrainConfig, lr=1e-3, seed=0, **train)
            opts = {k: _at_length(v, seq_len) for k, v in suite.task.get(t, {}).items()}
            _build(f"{path} [task.{t}] (seq_len = {seq_len})", task_config_class(t),
                   seq_len=seq_len, **opts)
        for m, d_model in itertools.product(g["mixers"], g["d_model"]):
            if (repr(suite.model_for(m, t)), m, d_model) not in built:
                built.add((repr(suite.model_for(m, t)), m, d_model))
                _check_model_config(suite, m, t, d_model)


def _check_model_config(suite: Suite, m: str, task: str, d_model: int) -> None:
    """Build the mixer and model configs of runs of mixer entry ``m`` on ``task``."""
    kind, model = model_kind(suite.model_for(m, task))
    model_cls = MODEL_KINDS[kind][0]
    n_heads = model.get("n_heads", model_cls.n_heads)
    base, opts = mixer_base(m), suite.mixer.get(m, {})
    where = f"{suite.path} [mixer.{m}] (d_model = {d_model}, n_heads = {n_heads})"
    _build(where, config_class(base), d_model=d_model, n_heads=n_heads, **opts)
    section = (f'[model."{m}"]' if m in suite.model_override
               else f"[grid.{task}.model]" if task in suite.task_model else "[model]")
    _build(f"{suite.path} {section} (mixer {m!r}, d_model = {d_model})", model_cls,
           d_model=d_model, mixer=base, mixer_options={base: opts} if opts else {}, **model)


def model_kind(model: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A run's or suite's ``[model]`` table -> (its ``kind``, a key of ``MODEL_KINDS``; the table
    less ``kind``, the config fields)."""
    return model.get("kind", "lm"), {k: v for k, v in model.items() if k != "kind"}


def _check_model(where: str, table: Any) -> dict:
    """``[model]``: ``kind`` (``"lm"``, the default, ``"classifier"`` or ``"rmt"``) and that
    kind's config fields; a field of another kind is named as such."""
    if not isinstance(table, dict):
        raise SuiteError(f"{where}: expected a table, got {type(table).__name__}")
    kind = table.get("kind", "lm")
    if not isinstance(kind, str) or kind not in MODEL_KINDS:
        raise SuiteError(f"{where}: kind must be one of {', '.join(map(repr, MODEL_KINDS))}, got {kind!r}")
    fields = _fields(MODEL_KINDS[kind][0], _MODEL_RESERVED)
    for key in table:
        if key == "kind" or key in fields:
            continue
        other = [k for k, (cls, _) in MODEL_KINDS.items() if key in _fields(cls, _MODEL_RESERVED)]
        if other:
            raise SuiteError(f"{where}: {key!r} is a field of kind = {other[0]!r}, but this model has "
                             f"kind = {kind!r}; set kind = {other[0]!r} or remove {key!r}")
        raise _unknown(where, key, [*fields, "kind"])
    _check_values(where, model_kind(table)[1], fields)
    return table


def _build(where: str, cls: type, **kwargs: Any) -> None:
    try:
        cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise SuiteError(f"{where}: {e}") from None


def _extrapolation(where: str, table: Any, tasks: list[str]) -> tuple[dict[str, Any], list | None]:
    """The ``[extrapolation]`` table (ExtrapolationConfig fields) and its optional ``tasks``
    list: the tasks whose runs are evaluated at other lengths (default: all)."""
    from longctx.arena.extrapolation import ExtrapolationConfig

    fields = _fields(ExtrapolationConfig, ())
    _check_keys(where, table, [*fields, "tasks"])
    only = table.get("tasks")
    if only is not None:
        if not isinstance(only, list) or not only:
            raise SuiteError(f"{where}: tasks must be a non-empty list of the suite's tasks, got {only!r}")
        for t in only:
            if t not in tasks:
                raise _unknown(f"{where} tasks", t, tasks, kind="task")
    table = {k: v for k, v in table.items() if k != "tasks"}
    _check_values(where, table, fields)
    try:
        ExtrapolationConfig(**table)
    except ValueError as e:
        raise SuiteError(f"{where}: {e}") from None
    return dict(table), only
