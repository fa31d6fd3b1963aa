"""Task registry: name -> (config dataclass, generator, one-line description)."""

from __future__ import annotations

from collections.abc import Callable

from longctx.errors import check_options, unknown_name
from longctx.tasks.base import TaskData
from longctx.tasks.corpus_lm import CorpusLMConfig, make_corpus_lm
from longctx.tasks.images import ImageConfig, make_images
from longctx.tasks.listops import ListOpsConfig, make_listops
from longctx.tasks.mqar import MQARConfig, make_mqar
from longctx.tasks.niah import NIAHConfig, make_niah
from longctx.tasks.passkey import PasskeyConfig, make_passkey
from longctx.tasks.pathfinder import PathfinderConfig, make_pathfinder
from longctx.tasks.retrieval import RetrievalConfig, make_retrieval
from longctx.tasks.text_classification import TextClassificationConfig, make_text_classification

TASKS: dict[str, tuple[type, Callable[..., TaskData], str]] = {
    "mqar": (MQARConfig, make_mqar, "multi-query associative recall (zoology): recall values of keys"),
    "passkey": (PasskeyConfig, make_passkey,
                "passkey retrieval (Mohtashami & Jaggi 2023): a 5-digit key hidden in filler, bytes"),
    "niah": (NIAHConfig, make_niah,
             "needle in a haystack (single / multi-key / multi-value) in corpus text or random tokens"),
    "listops": (ListOpsConfig, make_listops,
                "ListOps (LRA settings): nested MIN/MAX/MED/SM over digits, 10-way answer"),
    "text_classification": (TextClassificationConfig, make_text_classification,
                            "byte-level text classification (LRA Text): which work a passage is from"),
    "retrieval": (RetrievalConfig, make_retrieval,
                  "byte-level document matching (LRA Retrieval): are two passages from one work"),
    "corpus_lm": (CorpusLMConfig, make_corpus_lm,
                  "byte-level language modelling on a shipped corpus (perplexity; held-out documents)"),
    "pathfinder": (PathfinderConfig, make_pathfinder,
                   "Pathfinder (LRA): are two markers joined by one dashed contour, pixels in a row"),
    "images": (ImageConfig, make_images,
               "sequential image classification on generated shapes (sCIFAR-like; not CIFAR-10)"),
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
