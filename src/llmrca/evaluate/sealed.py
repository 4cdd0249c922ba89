"""What runs in the process that calls a method's ``rank()``: an observation and a method, nothing else.

The seal: the process that runs ``rank()`` (a local worker, a Ray actor) never parses a case's ``case.json``, never
holds its ground truth, its id or its folder path (an id such as ``cpu/ray-replicas-1/rep-00`` names the root
cause). The runner's own process loads the case, keeps the truth, and hands the worker only the observation
(pickled, under an opaque token) and a ``SealedTask`` naming the method; the worker answers with the method's
candidates, and the runner scores them against the truth it kept. A method that walks ``gc.get_objects()`` or its
callers' frames finds an observation and a task, and no truth to find.

Per task, around ``method.rank`` only:
- memory cap: ``RLIMIT_AS`` = the process's address space just before ``rank`` + ``memory_limit_mb``, lifted
  again afterwards. Address space, not resident memory: an allocation beyond the cap raises ``MemoryError``
  in the method instead of waking the OOM killer. The cap is relative because pyarrow and BLAS reserve large,
  mostly untouched address ranges at start-up that an absolute cap would have to guess.
- ``runtime_s``: wall time of ``rank`` alone (``time.perf_counter`` just before and after the call, inside the
  memory watch, so that neither the watch nor building the answer is counted).
- ``peak_mem_mb``: peak resident set size during ``rank`` minus the resident size just before it (Linux: the
  kernel's high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``). It counts all the method
  touched, native libraries included; memory the allocator reuses from earlier tasks is not counted again, so
  it is a lower bound of the method's footprint. Elsewhere it is NaN.

An answer is a plain dict of JSON values (``answer_bytes``), so the runner never unpickles what a method's
process sends back.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import pickle
import resource
import signal
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Self

import pandas as pd

from llmrca.case import Observation
from llmrca.errors import NoAnswer
from llmrca.methods.base import Ranking

_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3
_MSG_LIMIT = 500
_TRACE_LIMIT = 20_000
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class SealedTask:
    """One method to run on the observation the worker holds: no case id, no path, no truth."""

    target: str  # "module:Class"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    memory_limit_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    if len(msg) > _MSG_LIMIT:
        msg = msg[: _MSG_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def trace_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))[-_TRACE_LIMIT:]


def seal(obs: Observation) -> bytes:
    """The bytes a worker gets for one case: its observation alone."""
    return pickle.dumps(obs, protocol=pickle.HIGHEST_PROTOCOL)


def unseal(blob: bytes) -> Observation:
    obs = pickle.loads(blob)
    if not isinstance(obs, Observation):
        raise TypeError(f"expected an Observation, got {type(obs).__name__}")
    return obs


def isolated(obs: Observation) -> Observation:
    """A view of ``obs`` the method may modify without touching the copy the next method gets."""
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


class Runner:
    """Runs sealed tasks on the observation it holds; keeps method classes imported between tasks."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._obs: Observation | None = None
        self._classes: dict[str, type] = {}

    def hold(self, token: str, blob: bytes) -> None:
        """Take the observation of the next tasks (the last one is dropped first)."""
        self._token, self._obs = None, None
        self._obs = unseal(blob)
        self._token = token

    def holds(self, token: str) -> bool:
        return self._token == token and self._obs is not None

    def _class(self, target: str) -> type:
        cls = self._classes.get(target)
        if cls is None:
            module, _, name = target.partition(":")
            cls = getattr(importlib.import_module(module), name)
            self._classes[target] = cls
        return cls

    def run(self, task: SealedTask) -> dict[str, Any]:
        """One method on the held observation → an answer (plain JSON values; see ``answer_bytes``).

        Keys: ``status`` ("ok", "no-answer: …", "error: …"), ``runtime_s``, ``peak_mem_mb``, ``candidates``
        and ``top_score`` (when ok; None when the best score is not finite), ``trace`` (a failure's traceback), ``restart`` (the process's state is suspect: replace it).
        """
        if self._obs is None:
            return {"status": "error: RuntimeError: no observation held", "restart": True}
        try:
            method = self._class(task.target)(**task.params)
        except Exception as e:  # noqa: BLE001 - a constructor rejecting its parameters, an import error
            return {"status": f"error: {one_line(e)}", "trace": trace_text(e)}
        view = isolated(self._obs)
        watch = _MemoryWatch(task.memory_limit_mb)
        answer: dict[str, Any] = {}
        # The clock covers rank() alone: the watch's /proc reads and rlimit calls (0.1-0.6 ms in a worker that
        # holds a case, measured) and building the answer are the runner's work, not the method's.
        t0 = t1 = float("nan")
        try:
            with watch:
                t0 = time.perf_counter()
                try:
                    ranking = method.rank(view, seed=task.seed)
                finally:
                    t1 = time.perf_counter()
        except MemoryError as e:
            limit = f" (memory limit {task.memory_limit_mb:g} MB)" if task.memory_limit_mb else ""
            answer.update(status=f"error: MemoryError{limit}: {' '.join(str(e).split())[:_MSG_LIMIT]}".rstrip(": "),
                          trace=trace_text(e), restart=True)
        except NoAnswer as e:
            reason = " ".join(str(e).split())[:_MSG_LIMIT] or "the method found nothing to blame"
            answer.update(status=f"no-answer: {reason}")
        except BaseException as e:  # noqa: BLE001 - SystemExit/KeyboardInterrupt in a method are failures too
            answer.update(status=f"error: {one_line(e)}", trace=trace_text(e))
        else:
            if isinstance(ranking, Ranking):
                answer.update(status="ok", candidates=[str(c) for c in ranking.candidates],
                              top_score=float(ranking.top_score), top_scores=_head_scores(ranking),
                              diagnosis=None if ranking.diagnosis is None else str(ranking.diagnosis),
                              explanation=None if ranking.explanation is None else str(ranking.explanation))
            else:
                answer.update(status=f"error: MethodError: rank() returned {type(ranking).__name__}, "
                                     "not a Ranking")
        answer.update(runtime_s=t1 - t0, peak_mem_mb=watch.peak)
        return answer


def answer_bytes(answer: dict[str, Any]) -> bytes:
    """An answer as strict JSON (NaN → null): what crosses back to the runner, never a pickle."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in answer.items()}
    return json.dumps(clean, allow_nan=False, default=str).encode()


def read_answer(data: bytes) -> dict[str, Any]:
    """Parse an answer, refusing anything that is not the shape ``Runner.run`` makes."""
    answer = json.loads(data)
    if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
        raise ValueError("a worker answer must be a JSON object with a 'status' string")  # noqa: TRY004
    cands = answer.get("candidates")
    if cands is not None and not (isinstance(cands, list) and all(isinstance(c, str) for c in cands)):
        raise ValueError("a worker answer's 'candidates' must be a list of strings")
    top = answer.get("top_score")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, float))):
        raise ValueError("a worker answer's 'top_score' must be a number or null")
    for key in ("diagnosis", "explanation"):
        if answer.get(key) is not None and not isinstance(answer[key], str):
            raise ValueError(f"a worker answer's {key!r} must be a string or null")
    heads = answer.get("top_scores")
    if heads is not None and not (isinstance(heads, list) and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in heads)):
        raise ValueError("a worker answer's 'top_scores' must be a list of numbers or nulls")
    return answer


TOP_SCORES = 10  # scores kept of a ranking's first candidates: what a report's per-case page shows


def _head_scores(ranking: Ranking) -> list[float | None]:
    """The scores of the first ``TOP_SCORES`` candidates, non-finite as None (the answer is strict JSON)."""
    return [float(s) if math.isfinite(s) else None for s in ranking.scores[:TOP_SCORES]]


# --------------------------------------------------------------------------------------------- process care


def become_subreaper() -> None:
    """Make this process adopt its orphaned descendants (Linux), so a method's child that starts its own
    session and whose parent exits stays below this process, where a timeout kill finds it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def kill_tree(pid: int, *, include_root: bool = True, rounds: int = 20) -> None:
    """SIGKILL every descendant of ``pid`` (whatever its session or process group), then ``pid``.

    Descendants are killed while ``pid`` lives: a subreaper ``pid`` adopts the orphans of each round, so the
    next round finds them; killed processes cannot fork again, so the loop ends.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.Error:
        return
    for _ in range(rounds):
        try:
            kids = [k for k in root.children(recursive=True) if _alive(k)]
        except psutil.Error:
            break
        if not kids:
            break
        for k in kids:
            try:
                k.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        # Not psutil.wait_procs: these are not our children, and a killed one stays a zombie (still "running"
        # to psutil) until its parent reaps it; dead or zombie is what we wait for.
        end = time.monotonic() + 2.0
        while any(_alive(k) for k in kids) and time.monotonic() < end:
            time.sleep(0.01)
    if include_root:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _alive(p: object) -> bool:
    import psutil

    try:
        return p.status() != psutil.STATUS_ZOMBIE  # type: ignore[attr-defined]
    except psutil.Error:
        return False
