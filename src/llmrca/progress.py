"""Progress off a terminal: plain lines on stderr, one every ``every_s`` seconds (and the last one).

A rich progress bar draws nothing until it stops when stderr is not a terminal (a CI log, ``nohup``, a pipe),
and a ``\\r``-rewritten line is one endless line there: a long bench looked dead for minutes. Where stderr is a
terminal the commands keep their bars; elsewhere they use this.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

EVERY_S = 10.0


def is_terminal(stream: TextIO | None = None) -> bool:
    s = sys.stderr if stream is None else stream
    try:
        return bool(s.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


class PlainProgress:
    """``label: done/total (note) elapsed`` lines, at most one per ``every_s`` seconds, the first and the last
    always."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream
        self.every_s = every_s
        self.clock = clock
        self.t0 = clock() if started is None else started  # ``started``: when the work began, on ``clock``
        self._last: float | None = None

    def update(self, done: int, note: str = "") -> None:
        now = self.clock()
        final = done >= self.total
        if not final and self._last is not None and now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self.t0
        rate = f", ~{(self.total - done) * elapsed / done:.0f} s left" if 0 < done < self.total else ""
        text = f"{self.label}: {done}/{self.total}" + (f" ({note})" if note else "") + f", {elapsed:.0f} s{rate}"
        stream = sys.stderr if self.stream is None else self.stream
        print(text, file=stream, flush=True)
