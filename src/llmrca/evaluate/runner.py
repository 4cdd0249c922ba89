"""The grid runner: every method on every case, each task in a worker process, each result stored at once.

Isolation: a task runs in a long-lived worker process (``llmrca.evaluate.worker``). The parent enforces the
per-task timeout (it kills the worker's process group and starts a fresh worker), and turns every failure
into a row: an exception → ``error: <Type>: <message>``; a ``MemoryError`` under the worker's memory cap →
``error: MemoryError …``; a worker killed by a signal (segfault, OOM killer) →
``error: worker died (signal …)``; no answer in time → ``timeout``. The grid always goes on.

Speed: workers stay alive between tasks, load cases themselves from paths (keeping the last one), and get
tasks grouped by case, so a worker runs all methods on one case in a row; only paths and one small row per
task cross the pipes. An idle worker takes single tasks from another worker's queue when no case is left.

Resume: rows are journaled as they arrive (see ``llmrca.evaluate.store``). Running the same grid into the
same folder again skips every (method, case_id, seed) already stored — ``ok``, ``error`` and ``timeout``
rows alike, since a failure is a result and a method that timed out once will time out again;
``retry_failed=True`` runs the failed ones again and the new row replaces the old.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Self

import pandas as pd

import llmrca
from llmrca import options
from llmrca.errors import CaseError, FormatError, LlmrcaError, UnknownNameError
from llmrca.evaluate.store import KEY, RUN_JSON, ResultStore, rows_to_frame, write_atomic
from llmrca.evaluate.worker import Task
from llmrca.methods.registry import entry, resolve

CHECKPOINT_EVERY_S = 30.0
STARTUP_TIMEOUT_S = 120.0
_STARTUP_FAILURES = 3
# Not `-m llmrca.evaluate.worker`: runpy would warn that the package already imported the module.
_WORKER_MAIN = "import sys; from llmrca.evaluate.worker import main; sys.exit(main(sys.argv[1:]))"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def default_memory_limit_mb(jobs: int) -> float:
    """Three quarters of the machine's RAM shared among the workers, at least 1 GiB each."""
    import psutil

    total_mb = psutil.virtual_memory().total / 2**20
    return max(1024.0, 0.75 * total_mb / max(1, jobs))


def evaluate(
    cases: Sequence[str | Path],
    methods: Sequence[str] | str,
    out_dir: str | Path,
    *,
    jobs: int = 1,
    timeout: float | None = 600.0,
    memory_limit_mb: float | None = None,
    seed: int = 0,
    progress: bool = True,
    method_params: dict[str, dict[str, Any]] | None = None,
    retry_failed: bool = False,
    root: str | Path | None = None,
    view: str = "all",
) -> pd.DataFrame:
    """Run ``methods`` × ``cases`` into ``out_dir`` and return the grid's rows (one per method and case).

    ``cases``: case folders (any format ``llmrca.io.load_case`` reads; ``root`` names RCAEval cases).
    ``methods``: registry names, or a spec ``resolve`` accepts ('all', 'metric', 'a,b').
    ``jobs``: worker processes. With more than one, BLAS/OpenMP threads per worker are set to
    ``cpu_count // jobs`` unless the environment already sets them.
    ``timeout``: seconds per task for ``rank`` (and, separately, for loading the case); None = no limit.
    ``memory_limit_mb``: address space a method may add during ``rank`` (see ``llmrca.evaluate.worker``);
    None = ``default_memory_limit_mb(jobs)``, 0 = no cap.
    ``method_params``: method name → keyword parameters for its constructor.
    ``retry_failed``: on resume, run again the tasks whose stored status is not ``ok``.
    ``view``: which metric columns methods see ('all', 'study' or 'full'; see ``llmrca.case.views``). A result
    folder holds one view: resuming it with another is refused.
    Rows already in ``out_dir`` for the same (method, case_id, seed) are not recomputed.
    """
    names = resolve(list(methods) if not isinstance(methods, str) else methods)
    params = dict(method_params or {})
    unknown = sorted(set(params) - set(names))
    if unknown:
        raise UnknownNameError(f"method_params names method(s) not in the run: {', '.join(unknown)}")
    options.jobs(jobs, "jobs")
    options.seconds(timeout, "timeout", allow_none=True)
    if memory_limit_mb is not None and not (math.isfinite(memory_limit_mb) and memory_limit_mb >= 0):
        raise LlmrcaError(f"memory_limit_mb: must be > 0, 0 (no cap) or None (default), is {memory_limit_mb!r}")
    seed = int(seed)
    if memory_limit_mb is None:
        memory_limit_mb = default_memory_limit_mb(jobs)
    from llmrca.case.views import VIEWS

    if view not in VIEWS:
        raise UnknownNameError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    paths = _case_paths(cases)
    entries = {n: entry(n) for n in names}
    out = Path(out_dir)
    _check_same_view(out, view)

    with ResultStore(out) as store:
        ids = _case_ids(paths, store.case_ids_by_path(), root)
        grid: list[Task] = []
        resumed = 0
        for p in paths:
            for n in names:
                e = entries[n]
                cid = ids.get(p)
                old = store.get((n, cid, seed)) if cid is not None else None
                if old is not None and (old["status"] == "ok" or not retry_failed):
                    resumed += 1
                    continue
                grid.append(Task(method=n, target=e.target, family=e.family, case_path=p,
                                 case_id=cid or Path(p).name, seed=seed, params=dict(params.get(n, {})),
                                 memory_limit_mb=memory_limit_mb or None,
                                 root=str(root) if root is not None else None, view=view))
        settings = {"jobs": jobs, "timeout": timeout, "memory_limit_mb": memory_limit_mb, "seed": seed,
                    "method_params": params, "retry_failed": retry_failed, "view": view,
                    "root": str(root) if root is not None else None}
        run_info = _run_info(out, names, paths, settings)
        run_info["tasks"] = {"grid": len(paths) * len(names), "resumed": resumed, "to_run": len(grid)}
        write_atomic(out / RUN_JSON, _json_bytes(run_info))

        counts = {"ok": 0, "error": 0, "timeout": 0}
        bar = _Progress(len(grid), resumed, enabled=progress)
        last_checkpoint = time.monotonic()

        def on_row(row: dict[str, Any], trace: str | None) -> None:
            nonlocal last_checkpoint
            row = store.append(row)
            kind = "ok" if row["status"] == "ok" else ("timeout" if row["status"] == "timeout" else "error")
            counts[kind] += 1
            if trace:
                store.log_error(tuple(row[k] for k in KEY), trace)  # type: ignore[arg-type]
            bar.advance(counts)
            if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                store.checkpoint()
                last_checkpoint = time.monotonic()

        status, reason = "failed", None
        try:
            with bar:
                _run_pool(_by_case(grid), jobs=jobs, timeout=timeout, on_row=on_row)
            status = "finished"
        except KeyboardInterrupt:
            status, reason = "interrupted", "KeyboardInterrupt"
            raise
        except BaseException as e:
            reason = f"{type(e).__name__}: {e}"
            raise
        finally:
            run_info.update(finished=_now(), status=status, counts=counts)
            if reason:
                run_info["error"] = reason
            _write_run_json(out / RUN_JSON, run_info, failing=status != "finished")
        stored_ids = store.case_ids_by_path()  # ids of cases first loaded in this run come from their rows
        rows = [store.get((n, ids.get(p) or stored_ids.get(p, ""), seed)) for p in paths for n in names]
        return rows_to_frame(r for r in rows if r is not None)


# --------------------------------------------------------------------------------------------- grid set-up


def _check_same_view(out: Path, view: str) -> None:
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8")).get("params", {}).get("view", "all")
    except (OSError, ValueError, AttributeError):
        return
    if old != view:
        raise LlmrcaError(f"{out}: holds results for view {old!r}; use another --out for view {view!r}")


def _case_paths(cases: Sequence[str | Path]) -> list[str]:
    if isinstance(cases, (str, Path)):
        raise TypeError("cases must be a list of case folders (use llmrca.io.find_cases on a suite folder)")
    out: dict[str, None] = {}
    for c in cases:
        p = os.path.abspath(c)
        if not os.path.isdir(p):
            raise FormatError(f"{c}: no such case folder")
        out[p] = None
    return list(out)


def _peek_id(path: str, root: str | Path | None = None) -> str | None:
    """A case's id without loading it: native from case.json alone, RCAEval from its path; None otherwise."""
    from llmrca.io import native, rcaeval

    meta_path = Path(path) / native.CASE_JSON
    if not meta_path.is_file():
        return rcaeval.case_id(path, root) if rcaeval.is_rcaeval_dir(Path(path)) else None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the worker will report the broken file in the task's row
    return str((meta.get("id") if isinstance(meta, dict) else None) or Path(path).name)


def _case_ids(paths: list[str], known: dict[str, str], root: str | Path | None) -> dict[str, str | None]:
    # case.json first (it may have been regenerated since); stored rows name the cases of other formats
    ids = {p: _peek_id(p, root) or known.get(p) for p in paths}
    seen: dict[str, str] = {}
    for p, cid in ids.items():
        if cid is None:
            continue
        if cid in seen:
            raise CaseError([f"case id {cid!r} is used by two case folders: {seen[cid]} and {p}"])
        seen[cid] = p
    return ids


def _by_case(tasks: list[Task]) -> list[list[Task]]:
    groups: dict[str, list[Task]] = {}
    for t in tasks:
        groups.setdefault(t.case_path, []).append(t)
    return list(groups.values())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_run_json(path: Path, info: dict[str, Any], *, failing: bool) -> None:
    """Record the run's end. On a full disk the atomic rewrite fails (it needs a new file), so the old file is
    overwritten in place with the compact form, which fits in the bytes the "running" version already holds:
    a run that stopped never stays marked "running". Only when even that fails does the error go up (and not
    while another error is already on its way up)."""
    try:
        write_atomic(path, _json_bytes(info))
        return
    except OSError:
        if not failing:
            raise
    compact = {k: v for k, v in info.items() if k != "previous"}
    for data in (json.dumps(compact, separators=(",", ":"), default=str).encode(),
                 json.dumps({**compact, "cases": len(info.get("cases", []))}, separators=(",", ":"),
                            default=str).encode()):
        try:
            with open(path, "r+b") as f:
                if len(data) > os.fstat(f.fileno()).st_size:
                    continue
                f.write(data)
                f.truncate()
            return
        except OSError:
            return


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, default=str) + "\n").encode()


def _run_info(out: Path, names: list[str], paths: list[str], params: dict[str, Any]) -> dict[str, Any]:
    previous: list[dict[str, Any]] = []
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
        previous = list(old.get("previous", [])) + [
            {k: old.get(k) for k in ("started", "finished", "status", "methods", "tasks", "counts")}
        ]
    except (OSError, ValueError, AttributeError):
        pass
    return {
        "llmrca_version": llmrca.__version__,
        "started": _now(),
        "finished": None,
        "status": "running",
        "methods": names,
        "cases": paths,
        "params": params,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "previous": previous,
    }


# --------------------------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar on stderr, or nothing."""

    def __init__(self, total: int, resumed: int, *, enabled: bool) -> None:
        self.enabled = enabled and total > 0
        self.total = total
        self.resumed = resumed
        self._bar = None

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )
            self._bar.start()
            note = f"{self.resumed} already done · " if self.resumed else ""
            self._task = self._bar.add_task("evaluate", total=self.total, counts=note + "starting workers")
            self._note = note
        return self

    def advance(self, counts: dict[str, int]) -> None:
        if self._bar is not None:
            text = self._note + " · ".join(f"{k} {v}" for k, v in counts.items())
            self._bar.update(self._task, advance=1, counts=text)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --------------------------------------------------------------------------------------------- worker pool


def _worker_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    # The workers import what this process can import (tests/ or a user's plugin folder included).
    path = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in path if os.path.exists(p)))
    if jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        for var in _THREAD_VARS:
            env.setdefault(var, threads)
    return env


class _WorkerProc:
    """One worker process and the task it is running."""

    def __init__(self, env: dict[str, str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(to_child_r), str(from_child_w), str(os.getpid())],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL, stdout=2,
                start_new_session=True,  # its own process group: a kill takes the method's children too
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.tx = Connection(to_child_w, readable=False)
        self.rx = Connection(from_child_r, writable=False)
        self.ready = False
        self.started_at = time.monotonic()
        self.batch: deque[Task] = deque()
        self.task: Task | None = None
        self.task_id = 0
        self.rank_started: float | None = None
        self.deadline: float | None = self.started_at + STARTUP_TIMEOUT_S
        self.case_info: dict[str, Any] = {}

    def send(self, task: Task, task_id: int, timeout: float | None) -> None:
        self.task, self.task_id, self.rank_started, self.case_info = task, task_id, None, {}
        self.deadline = time.monotonic() + timeout if timeout is not None else None
        self.tx.send(("task", task_id, asdict(task)))

    def kill(self) -> int | None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.exit_code()

    def exit_code(self) -> int | None:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        for c in (self.tx, self.rx):
            try:
                c.close()
            except OSError:
                pass
        return rc


def _death_note(rc: int | None) -> str:
    if rc is None:
        return "worker died"
    if rc < 0:
        try:
            return f"worker died (signal {signal.Signals(-rc).name})"
        except ValueError:
            return f"worker died (signal {-rc})"
    return f"worker died (exit code {rc})"


def _run_pool(batches: list[list[Task]], *, jobs: int, timeout: float | None,
              on_row: Callable[[dict[str, Any], str | None], None]) -> None:
    pending: deque[deque[Task]] = deque(deque(b) for b in batches)
    n_tasks = sum(len(b) for b in batches)
    if not n_tasks:
        return
    env = _worker_env(jobs)
    workers = [_WorkerProc(env) for _ in range(min(jobs, n_tasks))]
    startup_failures = 0
    next_id = 0

    def next_task(w: _WorkerProc) -> Task | None:
        if w.batch:
            return w.batch.popleft()
        if pending:
            w.batch = pending.popleft()
            return w.batch.popleft()
        donor = max(workers, key=lambda o: len(o.batch))
        return donor.batch.pop() if donor.batch else None  # steal from the tail: the donor keeps its order

    def failed_row(w: _WorkerProc, status: str) -> dict[str, Any]:
        t = w.task
        assert t is not None
        row = {"method": t.method, "family": t.family, "case_id": t.case_id, "seed": t.seed,
               "case_path": t.case_path, "status": status}
        row.update(w.case_info)
        if w.rank_started is not None:
            row["runtime_s"] = time.monotonic() - w.rank_started
        return row

    def replace(w: _WorkerProc) -> _WorkerProc:
        fresh = _WorkerProc(env)
        fresh.batch = w.batch
        workers[workers.index(w)] = fresh
        return fresh

    try:
        while True:
            for w in list(workers):
                if w.ready and w.task is None:
                    t = next_task(w)
                    if t is not None:
                        next_id += 1
                        w.send(t, next_id, timeout)
            busy = [w for w in workers if w.task is not None]
            if not busy and not pending and not any(w.batch for w in workers):
                return
            deadlines = [w.deadline for w in workers if w.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            by_rx = {w.rx: w for w in workers}
            for rx in wait(list(by_rx), timeout=wait_s):
                w = by_rx[rx]  # type: ignore[index]
                try:
                    msg = rx.recv()  # type: ignore[union-attr]
                except (EOFError, OSError):
                    rc = w.kill()
                    if not w.ready:
                        startup_failures += 1
                        if startup_failures >= _STARTUP_FAILURES:
                            raise LlmrcaError(
                                f"evaluation workers fail to start ({_death_note(rc)}); "
                                f"try `{sys.executable} -c 'import llmrca.evaluate.worker'` to see why"
                            ) from None
                    elif w.task is not None:
                        on_row(failed_row(w, f"error: {_death_note(rc)}"), None)
                    replace(w)
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready, w.deadline = True, None
                    startup_failures = 0
                elif kind == "started" and msg[1] == w.task_id:
                    w.case_info = msg[2]
                    w.rank_started = time.monotonic()
                    w.deadline = w.rank_started + timeout if timeout is not None else None
                elif kind == "done" and msg[1] == w.task_id:
                    _, _, row, trace, restart = msg
                    w.task, w.deadline = None, None
                    on_row(row, trace)
                    if restart:
                        w.kill()
                        replace(w)
            now = time.monotonic()
            for w in list(workers):
                if w.deadline is not None and now >= w.deadline:
                    w.kill()
                    if w.task is None:  # never became ready
                        startup_failures += 1
                        if startup_failures >= _STARTUP_FAILURES:
                            raise LlmrcaError(
                                f"evaluation workers do not start within {STARTUP_TIMEOUT_S:g} s")
                    else:
                        on_row(failed_row(w, "timeout"), None)
                    replace(w)
    finally:
        for w in workers:
            w.kill()
