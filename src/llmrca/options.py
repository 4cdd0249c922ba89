"""Checks of command-line values that the option's type alone lets through (``--jobs 0``, ``--timeout -1``,
``--duration inf``): each raises ``LlmrcaError`` naming the option, which the CLI prints as one line."""

from __future__ import annotations

import math

from llmrca.errors import LlmrcaError


def jobs(value: int, option: str = "--jobs") -> int:
    """A number of worker processes: a whole number, at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LlmrcaError(f"{option}: must be a whole number of worker processes, at least 1, is {value!r}")
    return value


def seconds(value: float | None, option: str, *, allow_none: bool = False, allow_zero: bool = False) -> float | None:
    """A duration in seconds: finite and positive (or zero / None where the option says so). ``inf`` is refused:
    a time limit of "forever" is spelt by leaving the limit out, not by a number that overflows later."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LlmrcaError(f"{option}: must be a number of seconds, is {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        least = "0 or more" if allow_zero else "more than 0"
        raise LlmrcaError(f"{option}: must be a finite number of seconds, {least}, is {value!r}")
    return v


EXECUTORS = ("local", "ray")


def executor(name: str, address: str | None = None, option: str = "--executor") -> str:
    """Where the grid's tasks run: 'local' or 'ray'; an address only with 'ray'."""
    if name not in EXECUTORS:
        raise LlmrcaError(f"{option}: unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if address is not None and name != "ray":
        raise LlmrcaError(f"--address: only with {option} ray (it names a Ray cluster)")
    return name


def memory_mb(value: float | None, option: str = "--memory-limit") -> float | None:
    """A memory cap in MB: finite and ≥ 0 (0 = no cap), or None for the default."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value < 0):
        raise LlmrcaError(f"{option}: must be a finite number of MB, 0 for no cap, is {value!r}")
    return value


# --- The metric view (issue 16: one --view, one default, on every command that reads metrics) ----------------
# The study's feature set: what the reference study fed its methods, so a table made with the defaults compares
# with the study's; the full telemetry (``full``, ``all``) repeats those series under their sources' names, which
# lists one signal twice (``…_cpu_usage_seconds`` beside ``…_ctn_cpu``). Cases of foreign data (RCAEval) have no
# views and are given whole whatever the option says (``llmrca.case.views.effective_view``).
DEFAULT_VIEW = "study"


def view(value: str, option: str = "--view") -> str:
    """One metric view name: study, full or all."""
    from llmrca.case.views import VIEWS

    if value not in VIEWS:
        raise LlmrcaError(f"{option}: unknown view {value!r}; known: {', '.join(VIEWS)}")
    return value


def views(value: str, option: str = "--view") -> list[str]:
    """A comma list of metric views (``study,full``), each checked, duplicates dropped."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise LlmrcaError(f"{option}: no view given; use study, full or all (comma-separated)")
    return list(dict.fromkeys(view(v, option) for v in names))
