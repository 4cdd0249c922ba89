"""Stressors for machines without stress-ng: ``python -m llmrca.testbed.hog cpu WORKERS LOAD TIMEOUT`` (busy
workers at LOAD percent) or ``memory WORKERS BYTES TIMEOUT`` (each worker allocates BYTES, touches every page and
holds them). Every worker ends by itself after TIMEOUT seconds."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import sys
import time

PAGE = 4096


def _cpu(load: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    period = 0.1
    busy = period * min(max(load, 1), 100) / 100.0
    while time.monotonic() < end:
        t = time.monotonic()
        while time.monotonic() - t < busy:
            pass
        if busy < period:
            time.sleep(period - busy)


def _memory(size: int, timeout: float) -> None:
    m = mmap.mmap(-1, size)
    for i in range(0, size, PAGE):
        m[i] = 1
    time.sleep(timeout)


def main(argv: list[str] | None = None) -> None:
    a = sys.argv[1:] if argv is None else argv
    if len(a) != 4 or a[0] not in ("cpu", "memory"):
        sys.exit("usage: python -m llmrca.testbed.hog cpu|memory WORKERS LOAD|BYTES TIMEOUT_S")
    kind, workers, amount, timeout = a[0], int(a[1]), int(a[2]), float(a[3])
    target = _cpu if kind == "cpu" else _memory
    procs = [mp.Process(target=target, args=(amount, timeout), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


if __name__ == "__main__":
    main()
