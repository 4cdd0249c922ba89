"""The grid's scheduler: hands sealed tasks to slots (local worker processes or Ray actors) and turns every
outcome into a row.

A slot is a long-lived process that holds one observation at a time. Tasks come grouped by case, so a slot runs
all methods on one case in a row and the observation crosses over once; an idle slot takes single tasks from the
tail of another slot's queue when no case is left. The scheduler enforces the per-task timeout (from the moment
the slot says ``rank`` starts), replaces a slot that died or was killed, and gives up when slots keep failing to
start. The executor (``LocalExecutor`` here, ``llmrca.evaluate.ray_pool.RayExecutor``) only starts, feeds,
waits on and kills slots.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from llmrca.errors import LlmrcaError
from llmrca.evaluate.desk import CaseDesk, GridTask, Prepared, answered_row, base_row
from llmrca.evaluate.sealed import SealedTask, kill_tree, read_answer

STARTUP_TIMEOUT_S = 120.0
TRANSFER_TIMEOUT_S = 120.0  # for a slot to take a case's observation before rank() starts
_STARTUP_FAILURES = 3
# Not `-m llmrca.evaluate.worker`: runpy would warn that the package already imported the module.
_WORKER_MAIN = "import sys; from llmrca.evaluate.worker import main; sys.exit(main(sys.argv[1:]))"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")

Event = tuple[Any, str, Any]  # (slot, "ready" | "started" | "done" | "died", payload)
OnRow = Callable[[dict[str, Any], str | None], None]


class Slot(Protocol):
    ready: bool

    def submit(self, task_id: int, token: str, blob: Any, task: SealedTask) -> None: ...

    def kill(self) -> str | None:
        """Kill the slot's process (and its descendants); a note on how it ended, for a row."""


class Executor(Protocol):
    name: str

    def start_slot(self) -> Slot: ...

    def wait(self, slots: list[Slot], timeout: float | None) -> list[Event]: ...

    def handle(self, blob: bytes) -> Any:
        """The form in which a case's blob is submitted (bytes locally; a Ray object ref)."""

    def startup_hint(self) -> str: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------------------------- local executor


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


def death_note(rc: int | None) -> str:
    if rc is None:
        return "worker died"
    if rc < 0:
        try:
            return f"worker died (signal {signal.Signals(-rc).name})"
        except ValueError:
            return f"worker died (signal {-rc})"
    return f"worker died (exit code {rc})"


class _LocalSlot:
    """One worker process on this machine."""

    def __init__(self, env: dict[str, str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_MAIN, str(to_child_r), str(from_child_w), str(os.getpid())],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL, stdout=2,
                cwd=os.path.abspath(os.sep),  # nothing of the run folder or the suite in its working directory
                start_new_session=True,  # its own process group: a kill takes the method's children too
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.tx = Connection(to_child_w, readable=False)
        self.rx = Connection(from_child_r, writable=False)
        self.ready = False

    def submit(self, task_id: int, token: str, blob: Any, task: SealedTask) -> None:
        self.tx.send(("task", task_id, token, blob, task.to_dict()))

    def kill(self) -> str | None:
        kill_tree(self.proc.pid)  # descendants first, whatever session they started (the worker is a subreaper)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        for c in (self.tx, self.rx):
            try:
                c.close()
            except OSError:
                pass
        return death_note(rc)


class LocalExecutor:
    """Worker processes on this machine (``llmrca.evaluate.worker``)."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self._env = _worker_env(jobs)

    def start_slot(self) -> _LocalSlot:
        return _LocalSlot(self._env)

    def handle(self, blob: bytes) -> bytes:
        return blob

    def wait(self, slots: list[Slot], timeout: float | None) -> list[Event]:
        by_rx = {s.rx: s for s in slots}  # type: ignore[attr-defined]
        events: list[Event] = []
        for rx in wait(list(by_rx), timeout=timeout):
            slot = by_rx[rx]  # type: ignore[index]
            try:
                msg = json.loads(rx.recv_bytes())  # type: ignore[union-attr]
            except (EOFError, OSError):
                events.append((slot, "died", slot.kill()))
                continue
            except ValueError:
                events.append((slot, "died", slot.kill() + " after sending a message that is not JSON"))
                continue
            if msg[0] == "ready":
                events.append((slot, "ready", None))
            elif msg[0] == "started":
                events.append((slot, "started", int(msg[1])))
            elif msg[0] == "done":
                try:
                    answer = read_answer(json.dumps(msg[2]).encode())
                except ValueError as e:
                    answer = {"status": f"error: worker sent a malformed answer ({e})", "restart": True}
                events.append((slot, "done", (int(msg[1]), answer)))
        return events

    def startup_hint(self) -> str:
        return f"try `{sys.executable} -c 'import llmrca.evaluate.worker'` to see why"

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- the scheduler


class _State:
    """What the scheduler knows of one slot."""

    def __init__(self, slot: Slot) -> None:
        self.slot = slot
        self.born = time.monotonic()
        self.deadline: float | None = self.born + STARTUP_TIMEOUT_S
        self.batch: deque[GridTask] = deque()
        self.task: GridTask | None = None
        self.task_id = 0
        self.token: str | None = None  # the observation the slot holds
        self.rank_started: float | None = None


def run_grid(batches: list[list[GridTask]], executor: Executor, *, jobs: int, timeout: float | None,
             desk: CaseDesk, on_row: OnRow) -> None:
    """Run every task of ``batches`` (one batch per case) on ``jobs`` slots; each outcome → ``on_row``."""
    pending: deque[deque[GridTask]] = deque(deque(b) for b in batches if b)
    n_tasks = sum(len(b) for b in pending)
    if not n_tasks:
        return
    states = [_State(executor.start_slot()) for _ in range(min(jobs, n_tasks))]
    startup_failures = 0
    next_id = 0

    def next_task(st: _State) -> GridTask | None:
        if st.batch:
            return st.batch.popleft()
        if pending:
            st.batch = pending.popleft()
            return st.batch.popleft()
        donor = max(states, key=lambda o: len(o.batch))
        return donor.batch.pop() if donor.batch else None  # steal from the tail: the donor keeps its order

    def replace(st: _State) -> None:
        fresh = _State(executor.start_slot())
        fresh.batch = st.batch
        states[states.index(st)] = fresh

    def failed_row(st: _State, status: str) -> dict[str, Any]:
        assert st.task is not None
        row = base_row(st.task, desk.known(st.task.case_path))
        row["status"] = status
        if st.rank_started is not None:
            row["runtime_s"] = time.monotonic() - st.rank_started
        return row

    def dispatch(st: _State) -> None:
        nonlocal next_id
        while (t := next_task(st)) is not None:
            prepared = desk.get(t.case_path)
            if prepared.error is not None:  # the case does not load: its rows say why, nothing is sent
                on_row({**base_row(t, prepared), "status": prepared.error}, prepared.trace)
                continue
            blob = None
            if st.token != prepared.token:
                blob = _handle(prepared, t.case_path)
                st.token = prepared.token
            next_id += 1
            st.task, st.task_id, st.rank_started = t, next_id, None
            st.deadline = time.monotonic() + TRANSFER_TIMEOUT_S
            st.slot.submit(next_id, prepared.token, blob, t.sealed)
            return
        st.task = None

    def _handle(prepared: Prepared, path: str) -> Any:
        if prepared.handle is None:
            prepared.handle = executor.handle(desk.blob(path))
        return prepared.handle

    def startup_failed(note: str) -> None:
        nonlocal startup_failures
        startup_failures += 1
        if startup_failures >= _STARTUP_FAILURES:
            raise LlmrcaError(f"evaluation workers fail to start ({note}); {executor.startup_hint()}")

    def release() -> None:
        keep = {st.task.case_path for st in states if st.task is not None}
        keep |= {t.case_path for st in states for t in st.batch}
        if pending:
            keep.add(pending[0][0].case_path)
        desk.release(keep)

    try:
        while True:
            for st in list(states):
                if st.slot.ready and st.task is None:
                    dispatch(st)
            release()
            busy = [st for st in states if st.task is not None]
            if not busy and not pending and not any(st.batch for st in states):
                return
            deadlines = [st.deadline for st in states if st.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            for slot, kind, payload in executor.wait([st.slot for st in states], wait_s):
                st = next(s for s in states if s.slot is slot)
                if kind == "died":
                    if not st.slot.ready:
                        startup_failed(payload or "worker died")
                    elif st.task is not None:
                        on_row(failed_row(st, f"error: {payload or 'worker died'}"), None)
                    replace(st)
                elif kind == "ready":
                    st.slot.ready, st.deadline = True, None
                    startup_failures = 0
                elif kind == "started" and payload == st.task_id and st.task is not None:
                    st.rank_started = time.monotonic()
                    st.deadline = st.rank_started + timeout if timeout is not None else None
                elif kind == "done" and payload[0] == st.task_id and st.task is not None:
                    answer = payload[1]
                    prepared = desk.get(st.task.case_path)
                    row = answered_row(st.task, prepared, answer)
                    st.task, st.deadline = None, None
                    on_row(row, answer.get("trace"))
                    if answer.get("restart"):
                        st.slot.kill()
                        replace(st)
            now = time.monotonic()
            for st in list(states):
                if st.deadline is None or now < st.deadline:
                    continue
                note = st.slot.kill()
                if not st.slot.ready:
                    startup_failed(f"not ready within {STARTUP_TIMEOUT_S:g} s")
                elif st.task is not None:
                    if st.rank_started is not None:
                        on_row(failed_row(st, "timeout"), None)
                    else:
                        on_row(failed_row(st, f"error: the worker did not take the case within "
                                              f"{TRANSFER_TIMEOUT_S:g} s ({note})"), None)
                replace(st)
    finally:
        for st in states:
            st.slot.kill()
        executor.close()
