"""Task registry: name -> (config dataclass, generator, one-line description)."""

from __future__ import annotations

from collections.abc import Callable

from longctx.errors import check_options, unknown_name
from longctx.tasks.base import TaskData
from longctx.tasks.mqar import MQARConfig, make_mqar

TASKS: dict[str, tuple[type, Callable[..., TaskData], str]] = {
    "mqar": (MQARConfig, make_mqar, "multi-query associative recall (zoology): recall values of keys"),
}


def task_names() -> list[str]:
    return list(TASKS)


def task_config_class(name: str) -> type:
    if name not in TASKS:
        raise unknown_name("task", name, TASKS)
    return TASKS[name][0]


def build_task(name: str, seed: int = 0, **options) -> TaskData:
    """Generate task ``name`` deterministically for ``seed``; unknown options are named."""
    cls = task_config_class(name)
    check_options("task", name, cls, options)
    return TASKS[name][1](cls(**options), seed=seed)
