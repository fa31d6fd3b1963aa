"""Exceptions shared across the package."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable


class UnknownNameError(KeyError):
    """An unknown registry name (mixer, task, suite); the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


def check_options(kind: str, name: str, config_cls: type, options: dict) -> None:
    """Raise ``TypeError`` naming every key of ``options`` that ``config_cls`` has no field for."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise TypeError(f"{kind} {name!r} has no option(s) {unknown}; its options are {sorted(fields)}")


def unknown_name(kind: str, name: object, known: Iterable[str]) -> UnknownNameError:
    known = list(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    plural = {"corpus": "corpora"}.get(kind, f"{kind}s")
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {plural}: {', '.join(known)}")
