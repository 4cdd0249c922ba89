"""Test helpers of the live end-to-end tests: waiting on an event, a process tree, scrapes Prometheus holds."""

from __future__ import annotations

import os
import time

import psutil


def wait(cond, timeout: float, every: float = 0.2) -> bool:
    """Poll ``cond`` until it holds or ``timeout`` seconds pass; its last answer."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every)
    return bool(cond())


def tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (empty when it is gone)."""
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def rows(run_dir, start: float, columns: list[str]) -> int:
    """How many scrape steps since ``start`` Prometheus holds a value for every one of ``columns`` (0 while the
    series do not exist yet)."""
    from llmrca.errors import CaseError
    from llmrca.testbed.collector import collect_case

    try:
        m = collect_case(run_dir, start, time.time(), traces=False, logs=False).observation.metrics
    except CaseError:
        return 0
    if not set(columns) <= set(m.columns):
        return 0
    return int(m[columns].notna().all(axis=1).sum())


def src_env() -> dict[str, str]:
    """The environment for a subprocess of a test: this checkout's ``src`` first on PYTHONPATH."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
