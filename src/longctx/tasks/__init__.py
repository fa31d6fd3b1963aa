"""Tasks: deterministic data generators, registered by name."""

from longctx.tasks.base import IGNORE_INDEX, Batch, TaskData
from longctx.tasks.mqar import MQARConfig, make_mqar
from longctx.tasks.registry import TASKS, build_task, task_names

__all__ = ["IGNORE_INDEX", "TASKS", "Batch", "MQARConfig", "TaskData", "build_task", "make_mqar",
           "task_names"]
