"""The worker process of the grid runner: loads cases itself, runs one method on one case per task.

Started by the runner as a fresh interpreter calling ``main([<fd-in>, <fd-out>, <parent-pid>])``; it talks to
the parent over two pipes with small pickled messages (paths in, one result row out: never a frame).

Per task, around ``method.rank`` only:
- memory cap: ``RLIMIT_AS`` = the worker's address space just before ``rank`` + ``memory_limit_mb``, lifted
  again afterwards. Address space, not resident memory: an allocation beyond the cap raises ``MemoryError``
  in the method instead of waking the OOM killer. The cap is relative because pyarrow and BLAS reserve large,
  mostly untouched address ranges at start-up that an absolute cap would have to guess.
- ``runtime_s``: wall time of ``rank`` (``time.perf_counter``).
- ``peak_mem_mb``: peak resident set size during ``rank`` minus the resident size just before it (Linux: the
  kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``). It counts all the method
  touched, native libraries included; memory the allocator reuses from earlier tasks is not counted again, so
  it is a lower bound of the method's footprint. Elsewhere it is NaN.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import resource
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Self

import pandas as pd

from llmrca.case import Case, Observation
from llmrca.methods.base import Ranking

_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3
_MSG_LIMIT = 500
_TRACE_LIMIT = 20_000


@dataclass
class Task:
    """One (method, case) to run; everything a worker needs, as plain values."""

    method: str
    target: str  # "module:Class"
    family: str
    case_path: str
    case_id: str  # the id the parent expects (used only if the case cannot be loaded)
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    memory_limit_mb: float | None = None
    root: str | None = None
    view: str = "all"  # metric view handed to the method (llmrca.case.views)


@dataclass
class Outcome:
    row: dict[str, Any]
    trace: str | None = None  # traceback text of a failure
    restart: bool = False  # the worker's state is suspect (MemoryError): replace it


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > _MSG_LIMIT:
        msg = msg[: _MSG_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _trace(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text[-_TRACE_LIMIT:]


def isolated(obs: Observation) -> Observation:
    """A view of ``obs`` the method may modify without touching the cached case the next method gets."""
    deep = not _COPY_ON_WRITE  # under copy-on-write a shallow copy already protects the original
    return dataclasses.replace(
        obs,
        metrics=obs.metrics.copy(deep=deep),
        traces=obs.traces.copy(deep=deep),
        logs=obs.logs.copy(deep=deep),
    )


def _proc_status(*keys: str) -> dict[str, float]:
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = float(v.split()[0]) / 1024.0  # kB → MB
    except OSError:
        pass
    return out


class _MemoryWatch:
    """Peak RSS growth around a call, and the address-space cap during it."""

    def __init__(self, limit_mb: float | None) -> None:
        self.limit_mb = limit_mb
        self.base = float("nan")
        self.peak = float("nan")
        self._old_limit: tuple[int, int] | None = None

    def __enter__(self) -> Self:
        reset = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            reset = True
        except OSError:
            pass
        st = _proc_status("VmRSS", "VmSize")
        if reset and "VmRSS" in st:
            self.base = st["VmRSS"]
        if self.limit_mb and "VmSize" in st:
            self._old_limit = resource.getrlimit(resource.RLIMIT_AS)
            cap = int((st["VmSize"] + self.limit_mb) * 2**20)
            hard = self._old_limit[1]
            if hard != resource.RLIM_INFINITY:
                cap = min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, self._old_limit)
        if not math.isnan(self.base):
            hwm = _proc_status("VmHWM").get("VmHWM")
            if hwm is not None:
                self.peak = max(0.0, hwm - self.base)


class Worker:
    """Runs tasks; keeps the last case loaded and the method classes imported between tasks."""

    def __init__(self) -> None:
        self._case_path: str | None = None
        self._case: Case | Exception | None = None  # a case that fails to load fails once per worker
        self._load_trace: str | None = None
        self._classes: dict[str, type] = {}

    def _load(self, task: Task) -> Case:
        if self._case_path != task.case_path:
            from llmrca.io import load_case

            self._case_path = task.case_path
            try:
                self._case = load_case(task.case_path, root=task.root)
                if task.view != "all":
                    from llmrca.case.views import select_view

                    self._case = select_view(self._case, task.view, where=task.case_path)
            except Exception as e:  # noqa: BLE001 - kept for the next method on the same case
                self._case, self._load_trace = e, _trace(e)
        if isinstance(self._case, Exception):
            raise self._case.with_traceback(None)
        assert self._case is not None
        return self._case

    def _class(self, target: str) -> type:
        cls = self._classes.get(target)
        if cls is None:
            module, _, name = target.partition(":")
            cls = getattr(importlib.import_module(module), name)
            self._classes[target] = cls
        return cls

    def run(self, task: Task, on_start: Callable[[dict[str, Any]], None] = lambda info: None) -> Outcome:
        """Run one task; ``on_start`` gets the case's fields just before ``rank`` begins."""
        row: dict[str, Any] = {
            "method": task.method, "family": task.family, "case_id": task.case_id, "seed": task.seed,
            "case_path": task.case_path, "status": "ok",
        }
        try:
            case = self._load(task)
        except Exception as e:  # noqa: BLE001 - any failure to load is reported in the row
            row["status"] = f"error: case not loaded: {one_line(e)}"
            return Outcome(row, self._load_trace)
        truth = case.truth
        obs = case.observation
        info = {"case_id": case.id, "fault_type": truth.fault_type, "root_cause": truth.service,
                "indicator": truth.indicator, "n_candidates": len(obs.services)}
        row.update(info)
        try:
            method = self._class(task.target)(**task.params)
        except Exception as e:  # noqa: BLE001 - a constructor rejecting its parameters, an import error
            row["status"] = f"error: {one_line(e)}"
            return Outcome(row, _trace(e))
        view = isolated(obs)  # the method gets the observation only: never the case, never the truth
        on_start(info)
        watch = _MemoryWatch(task.memory_limit_mb)
        t0 = time.perf_counter()
        try:
            with watch:
                ranking = method.rank(view, seed=task.seed)
        except MemoryError as e:
            row.update(runtime_s=time.perf_counter() - t0, peak_mem_mb=watch.peak)
            limit = f" (memory limit {task.memory_limit_mb:g} MB)" if task.memory_limit_mb else ""
            row["status"] = f"error: MemoryError{limit}: {' '.join(str(e).split())[:_MSG_LIMIT]}".rstrip(": ")
            return Outcome(row, _trace(e), restart=True)
        except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a method are failures too
            row.update(runtime_s=time.perf_counter() - t0, peak_mem_mb=watch.peak)
            row["status"] = f"error: {one_line(e)}"
            return Outcome(row, _trace(e))
        row.update(runtime_s=time.perf_counter() - t0, peak_mem_mb=watch.peak)
        if not isinstance(ranking, Ranking):
            row["status"] = f"error: MethodError: rank() returned {type(ranking).__name__}, not a Ranking"
            return Outcome(row)
        from llmrca.evaluate.scores import truth_ranks

        tr = truth_ranks(ranking, truth, obs)
        row.update(rank=tr.rank, rank_fine=tr.rank_fine, fine_level=tr.fine_level,
                   top5=json.dumps(ranking.services()[:5]))
        return Outcome(row)


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to kill this worker when the runner dies (even by SIGKILL), so no orphan runs on."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str]) -> int:
    fd_in, fd_out, parent_pid = (int(a) for a in argv)
    _die_with_parent(parent_pid)
    inbox = Connection(fd_in, writable=False)
    outbox = Connection(fd_out, readable=False)
    worker = Worker()
    outbox.send(("ready", os.getpid()))
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return 0
        if msg[0] == "stop":
            return 0
        _, task_id, fields = msg

        def started(info: dict[str, Any], task_id: int = task_id) -> None:
            outbox.send(("started", task_id, info))

        outcome = worker.run(Task(**fields), on_start=started)
        outbox.send(("done", task_id, outcome.row, outcome.trace, outcome.restart))
        if outcome.restart:
            return 0

