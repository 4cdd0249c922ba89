"""Structured logs of the live services (one JSON object per line), and the masking that turns a raw line into its
template for lines that come without one (nginx's access log).

Our own services log through :class:`JsonLog`. Lines that the real programs print (vLLM, Ray Serve) are kinds of
the log catalogue (``llmrca.deploy.telemetry``), written with :meth:`JsonLog.line` exactly as the simulator writes
them, header included, with the catalogue's template; the testbed's own lines (start-up, control) name their fixed
text with ``{}`` holes, so every line carries its template exactly instead of a guess.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from llmrca.deploy.telemetry import LineKind

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class JsonLog:
    """Append-only JSON-lines log of one process: ``{"time", "service", "logger", "level", "message",
    "template", ...extra}``. Thread-safe; every line is flushed (a crash loses nothing)."""

    def __init__(self, path: str | Path | None, service: str, logger: str, *, echo: TextIO | None = None):
        self.service = service
        self.logger = logger
        self._f = open(path, "a", encoding="utf-8", buffering=1) if path else None  # noqa: SIM115
        self._echo = echo
        self._lock = threading.Lock()

    def write(self, level: str, template: str, *args: Any, **extra: Any) -> None:
        """One line: ``template`` with its ``{}`` holes filled by ``args`` (the template keeps ``<*>``)."""
        message = template.format(*args) if args else template
        rec = {"time": time.time(), "service": self.service, "logger": self.logger, "level": level,
               "message": message, "template": template.replace("{}", "<*>")}
        rec.update(extra)
        line = json.dumps(rec, separators=(",", ":"))
        with self._lock:
            if self._f is not None:
                self._f.write(line + "\n")
            if self._echo is not None:
                self._echo.write(f"{level} {self.logger}: {message}\n")

    def line(self, kind: LineKind, *values: Any, **fixed: Any) -> str:
        """One line of a catalogue kind, printed now as its program prints it; returns the message."""
        t = time.time()
        message = kind.at(t, *values, **fixed)
        rec = {"time": t, "service": self.service, "logger": self.logger, "level": kind.level, "message": message,
               "template": kind.template(**fixed), "kind": kind.name}
        text = json.dumps(rec, separators=(",", ":"))
        with self._lock:
            if self._f is not None:
                self._f.write(text + "\n")
            if self._echo is not None:
                self._echo.write(message + "\n")
        return message

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def stderr_log(service: str, logger: str) -> JsonLog:
    return JsonLog(None, service, logger, echo=sys.stderr)


# Values a program fills in per line, most specific first (a Drain-style pre-processing).
_MASKS = [
    re.compile(r"\[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\]"),  # nginx $time_local
    re.compile(r"\b\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b"),
    re.compile(r"\b00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\b"),  # W3C traceparent
    re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"),  # IPv4 (and port)
    re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"),  # UUID
    re.compile(r"\b(?:chatcmpl-|cmpl-)?[0-9a-f]{16,}\b"),  # ids
    re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])"),  # numbers
]


def mask(line: str) -> str:
    """The line with every variable value replaced by ``<*>``."""
    out = line
    for rx in _MASKS:
        out = rx.sub("<*>", out)
    return out
