"""The grid on Ray: each slot of the scheduler (``llmrca.evaluate.pool``) is a Ray actor instead of a local process.

Same rows, same store, same resume as the local pool: the scheduler, the seal and the scoring are shared; only
how a slot starts, is fed, is waited on and is killed differs.

- Seal: an actor gets a case's sealed observation (``ray.put`` once per case, an object ref to the actor) and a
  ``SealedTask``; it never gets the case id, path or truth, which stay in the driver (this process).
- Per-task timeout: the driver's clock starts when the actor holds the observation; at the deadline the driver
  asks the actor (through a separate concurrency group) to kill its process tree, then ``ray.kill``s it and
  starts a fresh actor. A method that holds the GIL in native code may keep the tree kill from running; the
  actor process itself dies by ``ray.kill`` regardless.
- Memory: each actor asks Ray for ``memory_limit_mb`` of the ``memory`` resource (so Ray places no more actors on
  a node than fit) and enforces it inside, as a local worker does, with an address-space cap around ``rank``.
  The default shares the cluster's ``memory`` resource among the actors.
- Answers come back as JSON bytes, as from a local worker.

``address=None`` starts a local Ray for the run (``jobs`` CPUs) and stops it afterwards; an address (``auto``,
``ray://host:10001``, ``host:6379``) joins a running cluster, where every node needs llmrca (and any plug-in
method's module) importable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from llmrca.errors import LlmrcaError
from llmrca.evaluate.pool import Event, Slot
from llmrca.evaluate.sealed import SealedTask, read_answer

_LOCAL_OBJECT_STORE = 512 * 2**20  # blobs are a few MB each and released once their case is done
_REAP_WAIT_S = 2.0


class _Actor:
    """The remote side: a ``llmrca.evaluate.sealed.Runner`` in a Ray worker process."""

    def __init__(self) -> None:
        from llmrca.evaluate.sealed import Runner, become_subreaper

        become_subreaper()
        self.runner = Runner()

    def ping(self) -> int:
        return os.getpid()

    def hold(self, token: str, blob: bytes) -> bool:
        self.runner.hold(token, blob)
        return True

    def run(self, fields: dict[str, Any]) -> bytes:
        from llmrca.evaluate.sealed import SealedTask, answer_bytes

        return answer_bytes(self.runner.run(SealedTask(**fields)))

    def reap(self) -> None:
        """Kill this process's descendants (whatever session they started); the driver then ``ray.kill``s the
        actor, so Ray records an intended exit rather than a crash."""
        from llmrca.evaluate.sealed import kill_tree

        kill_tree(os.getpid(), include_root=False)


def _actor_class(ray: Any) -> Any:
    """``_Actor`` as a Ray actor whose ``reap`` runs in its own concurrency group, beside a busy ``run``."""

    class SealedActor(_Actor):
        @ray.method(concurrency_group="control")
        def reap(self) -> None:
            _Actor.reap(self)

    return ray.remote(concurrency_groups={"control": 1})(SealedActor)


class _RaySlot:
    def __init__(self, ex: RayExecutor) -> None:
        self._ray = ex.ray
        self.actor = ex.actor_cls.options(**ex.actor_options()).remote()
        self.ready = False
        self.ref: Any = self.actor.ping.remote()
        self.kind: tuple[str, int] = ("ping", 0)
        self.queued: list[Event] = []
        self._next: tuple[int, SealedTask] | None = None
        self.dead = False

    def submit(self, task_id: int, token: str, blob: Any, task: SealedTask) -> None:
        if blob is not None:  # hold first; rank() starts only once the actor holds the observation
            self.ref, self.kind, self._next = self.actor.hold.remote(token, blob), ("hold", task_id), (task_id, task)
        else:
            self._run(task_id, task)

    def _run(self, task_id: int, task: SealedTask) -> None:
        self.ref, self.kind = self.actor.run.remote(task.to_dict()), ("run", task_id)
        self.queued.append((self, "started", task_id))

    def on_ready_ref(self) -> list[Event]:
        ray = self._ray
        kind, task_id = self.kind
        ref, self.ref = self.ref, None
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as e:  # the actor died, or our wrapper failed (Runner catches the method's)
            return [(self, "died", self._died(e))]
        if kind == "ping":
            return [(self, "ready", None)]
        if kind == "hold":
            assert self._next is not None
            self._run(*self._next)
            self._next = None
            return self.queued_events()
        try:
            answer = read_answer(value)
        except ValueError as e:
            answer = {"status": f"error: worker sent a malformed answer ({e})", "restart": True}
        return [(self, "done", (task_id, answer))]

    def queued_events(self) -> list[Event]:
        out, self.queued = self.queued, []
        return out

    def _died(self, e: BaseException) -> str:
        self.kill()
        detail = " ".join(str(e).split())
        for marker in ("exit detail: ", "Error: "):
            if marker in detail:
                detail = detail.split(marker, 1)[1]
                break
        return f"worker died (Ray actor: {detail[:200]})"

    def kill(self) -> str | None:
        if self.dead:
            return "worker died (Ray actor killed)"
        self.dead = True
        ray = self._ray
        if self.ref is not None:  # busy: let it take its descendants down first (best effort)
            try:
                ray.wait([self.actor.reap.remote()], timeout=_REAP_WAIT_S)
            except ray.exceptions.RayError:
                pass
        try:
            ray.kill(self.actor, no_restart=True)
        except ray.exceptions.RayError:
            pass
        self.ref = None
        return "worker died (Ray actor killed)"


class RayExecutor:
    """Slots as Ray actors (``llmrca.evaluate.pool.Executor``)."""

    name = "ray"

    def __init__(self, jobs: int, *, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise LlmrcaError("executor 'ray' needs Ray: pip install 'llmrca[ray]'") from None
        self.ray = ray
        self.jobs = jobs
        self._started = False
        self.memory_mb: float | None = None
        if not ray.is_initialized():
            # The actors import what this process can import (a user's plug-in folder, tests/).
            path = [os.path.abspath(p or os.curdir) for p in sys.path]
            env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(p for p in path if os.path.exists(p)))}
            kw: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.ERROR, "runtime_env": {"env_vars": env}}
            if address is None:
                kw.update(num_cpus=jobs, object_store_memory=_LOCAL_OBJECT_STORE)
            try:
                ray.init(**kw)
            except Exception as e:  # noqa: BLE001 - ConnectionError, a bad address, a version mismatch
                where = f"at {address}" if address else "locally"
                raise LlmrcaError(f"Ray does not start {where}: {' '.join(str(e).split())[:300]}") from None
            self._started = True
        self.actor_cls = _actor_class(ray)

    def default_memory_limit_mb(self, jobs: int) -> float:
        """The cluster's ``memory`` resource shared among the actors (Ray's own reservable memory)."""
        total = float(self.ray.cluster_resources().get("memory", 0.0)) / 2**20
        return max(256.0, 0.9 * total / max(1, jobs)) if total else 1024.0

    def reserve_memory(self, memory_limit_mb: float) -> None:
        self.memory_mb = memory_limit_mb or None

    def actor_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": 1, "max_restarts": 0, "max_task_retries": 0}
        if self.memory_mb:
            opts["memory"] = int(self.memory_mb * 2**20)
        return opts

    def start_slot(self) -> _RaySlot:
        return _RaySlot(self)

    def handle(self, blob: bytes) -> Any:
        return self.ray.put(blob)

    def wait(self, slots: list[Slot], timeout: float | None) -> list[Event]:
        events: list[Event] = []
        for s in slots:
            events.extend(s.queued_events())  # type: ignore[attr-defined]
        if events:
            return events
        by_ref = {s.ref: s for s in slots if getattr(s, "ref", None) is not None}  # type: ignore[attr-defined]
        if not by_ref:
            time.sleep(min(timeout, 0.05) if timeout is not None else 0.05)
            return []
        done, _ = self.ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        for ref in done:
            events.extend(by_ref[ref].on_ready_ref())
        return events

    def startup_hint(self) -> str:
        mem = f" and {self.memory_mb:.0f} MB of memory" if self.memory_mb else ""
        return f"check that the Ray cluster has {self.jobs} free CPU(s){mem} for the actors (`ray status`)"

    def close(self) -> None:
        if self._started:
            self._started = False
            self.ray.shutdown()
