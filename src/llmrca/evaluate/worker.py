"""The local worker process of the grid: holds one sealed observation, runs one method on it per task.

Started by the runner as a fresh interpreter calling ``main([<fd-in>, <fd-out>, <parent-pid>])``. It talks to the
runner over two pipes. In: pickled messages from the runner (``("task", task_id, token, blob | None, task)``,
``("stop",)``); the blob is a sealed observation (``llmrca.evaluate.sealed``), sent only when the worker does not
hold that token yet. Out: JSON only (``ready``, ``started``, ``done`` with the answer), so the runner never
unpickles bytes a method could have written.

It never sees a case path, id or ground truth (see ``llmrca.evaluate.sealed``). It is a subreaper, so a method's
child that escapes into a new session stays its descendant, and the runner's timeout kill takes it too.
"""

from __future__ import annotations

import json
import os
import signal
from multiprocessing.connection import Connection
from typing import Any

from llmrca.evaluate.sealed import Runner, SealedTask, answer_bytes, become_subreaper, one_line


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


def _send(outbox: Connection, *msg: Any) -> None:
    outbox.send_bytes(json.dumps(msg, allow_nan=False).encode())


def main(argv: list[str]) -> int:
    fd_in, fd_out, parent_pid = (int(a) for a in argv)
    _die_with_parent(parent_pid)
    become_subreaper()
    inbox = Connection(fd_in, writable=False)
    outbox = Connection(fd_out, readable=False)
    runner = Runner()
    _send(outbox, "ready", os.getpid())
    while True:
        try:
            msg = inbox.recv()
        except (EOFError, OSError):
            return 0
        if msg[0] == "stop":
            return 0
        _, task_id, token, blob, fields = msg
        del msg
        if blob is not None:
            try:
                runner.hold(token, blob)
            except Exception as e:  # noqa: BLE001 - a blob that does not unpickle is this task's failure
                outbox.send_bytes(json.dumps(["done", task_id, {
                    "status": f"error: observation not received: {one_line(e)}", "restart": True}]).encode())
                return 0
            del blob
        elif not runner.holds(token):  # the runner tracks what each worker holds; a mismatch is a bug there
            outbox.send_bytes(json.dumps(["done", task_id, {
                "status": "error: RuntimeError: worker does not hold the task's observation", "restart": True}]
            ).encode())
            return 0
        _send(outbox, "started", task_id)
        answer = runner.run(SealedTask(**fields))
        outbox.send_bytes(b'["done",%d,' % task_id + answer_bytes(answer) + b"]")
        if answer.get("restart"):
            return 0
