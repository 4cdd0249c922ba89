"""One registry of RCA methods, keyed by the names of METHODS.md. Modules load lazily, so listing is cheap
and an optional dependency (torch) is needed only by the method that uses it."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from llmrca.errors import UnknownNameError
from llmrca.methods.base import BaseMethod, Family


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:Class"
    family: Family
    needs: frozenset[str]
    summary: str


_ENTRIES: dict[str, Entry] = {}


def register(name: str, target: str, family: Family, needs: set[str] | frozenset[str], summary: str) -> None:
    _ENTRIES[name] = Entry(name, target, family, frozenset(needs), summary)


# One line per method. Adding a method = adding its module and one line here.
M, T, L = "metrics", "traces", "logs"
register("dummy", "llmrca.methods.dummy:Dummy", "metric", {M}, "seeded random permutation (chance baseline)")
register("nsigma", "llmrca.methods.nsigma:NSigma", "metric", {M}, "max z-score after injection vs before")
register("baro", "llmrca.methods.baro:Baro", "metric", {M}, "robust (median/IQR) scores; BOCPD onset if no inject_time")
register("e-diagnosis", "llmrca.methods.ediagnosis:EDiagnosis", "metric", {M},
         "two-sample test per column between normal and abnormal windows")


def names() -> list[str]:
    return list(_ENTRIES)


def entries() -> list[Entry]:
    return list(_ENTRIES.values())


def entry(name: str) -> Entry:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise UnknownNameError(f"unknown method {name!r}; known: {', '.join(_ENTRIES)}") from None


def method_class(name: str) -> type[BaseMethod]:
    e = entry(name)
    module, _, cls = e.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def get_method(name: str, **params: object) -> BaseMethod:
    return method_class(name)(**params)


def resolve(spec: str | list[str]) -> list[str]:
    """'all', 'a,b' or a list → method names, each checked; 'metric'/'trace'/'multi-source' select a family."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "all":
            picked = names()
        elif item in ("metric", "trace", "multi-source"):
            picked = [e.name for e in entries() if e.family == item]
        else:
            picked = [entry(item).name]
        out.extend(p for p in picked if p not in out)
    if not out:
        raise UnknownNameError("no method named (use 'all' or a comma-separated list)")
    return out
