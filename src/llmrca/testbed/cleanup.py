"""A cleanup registry: undo actions that run exactly once, last registered first, on normal exit, on an exception,
on SIGTERM/SIGINT/SIGHUP, or when asked. Every fault injector registers its undo here, so a fault never outlives
the process that owns it (a SIGKILL, which no process can catch, is covered by the injectors' own expiry and by
children dying with their parent)."""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None),
                             getattr(signal, "SIGHUP", None)) if s is not None)


class CleanupRegistry:
    def __init__(self) -> None:
        self._actions: list[tuple[int, str, Callable[[], Any]]] = []
        self._next = 0
        self._lock = threading.RLock()
        self._installed = False
        self._previous: dict[int, Any] = {}
        self.errors: list[str] = []

    def register(self, action: Callable[[], Any], name: str = "") -> int:
        with self._lock:
            self._next += 1
            self._actions.append((self._next, name or getattr(action, "__name__", "action"), action))
            return self._next

    def run(self, handle: int) -> None:
        """Run one action now (and never again)."""
        with self._lock:
            found = [a for a in self._actions if a[0] == handle]
            self._actions = [a for a in self._actions if a[0] != handle]
        for _, name, action in found:
            self._call(name, action)

    def discard(self, handle: int) -> None:
        with self._lock:
            self._actions = [a for a in self._actions if a[0] != handle]

    def run_all(self) -> None:
        """Run every pending action, last registered first; an action that fails does not stop the others."""
        while True:
            with self._lock:
                if not self._actions:
                    return
                _, name, action = self._actions.pop()
            self._call(name, action)

    def _call(self, name: str, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as e:  # noqa: BLE001 - cleanup must go on; the error is kept and reported
            self.errors.append(f"{name}: {type(e).__name__}: {e}")
            sys.stderr.write(f"llmrca testbed cleanup: {name} failed: {e}\n")

    def pending(self) -> list[str]:
        with self._lock:
            return [n for _, n, _ in self._actions]

    def install(self, signals: bool = True) -> None:
        """Run every action at interpreter exit and, with ``signals``, on SIGTERM/SIGINT/SIGHUP (main thread only);
        the signal then ends the process as before (SIGINT raises KeyboardInterrupt)."""
        if self._installed:
            return
        self._installed = True
        atexit.register(self.run_all)
        if not signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        atexit.unregister(self.run_all)
        for sig, prev in self._previous.items():
            try:
                signal.signal(sig, prev)
            except (ValueError, TypeError):
                pass
        self._previous.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.run_all()
        if signum == getattr(signal, "SIGINT", None):
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
