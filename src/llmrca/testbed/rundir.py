"""The run folder: everything one live testbed owns on disk (state with pids and ports, logs, spans, Prometheus'
data, generated configs), so that ``status``, ``inject``, ``collect`` and ``down`` work from any later command."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from llmrca.errors import LlmrcaError

ENV_VAR = "LLMRCA_TESTBED_DIR"
LOOPBACK = "127.0.0.1"


class TestbedError(LlmrcaError):
    """The live testbed cannot do what was asked (not running, already running, a process failed to start...)."""

    __test__ = False  # not a pytest test class, whatever its name


def default_run_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"llmrca-testbed-{uid}"


class RunDir:
    def __init__(self, path: str | Path | None = None):
        # absolute: nginx and the servers resolve a relative path against their own prefix or working folder
        self.path = (Path(path) if path is not None else default_run_dir()).absolute()

    # Layout
    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def spans(self) -> Path:
        return self.path / "spans.jsonl"

    @property
    def injections(self) -> Path:
        return self.path / "injections.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.path / "testbed.lock"

    @property
    def prometheus(self) -> Path:
        return self.path / "prometheus"

    @property
    def nginx(self) -> Path:
        return self.path / "nginx"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.jsonl"

    def out(self, name: str) -> Path:
        return self.logs / f"{name}.out"

    def create(self) -> None:
        for p in (self.path, self.logs, self.prometheus, self.nginx):
            p.mkdir(parents=True, exist_ok=True)

    # State
    def exists(self) -> bool:
        return self.state_file.is_file()

    def read_state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            raise TestbedError(f"no testbed at {self.path} (no state.json): start one with `llmrca testbed up`")
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise TestbedError(f"{self.state_file}: unreadable testbed state ({e})") from None

    def write_state(self, state: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_file)

    def append_injection(self, record: dict[str, Any]) -> None:
        """One line per record, written in one ``write`` on an ``O_APPEND`` descriptor: the supervisor, the
        engines and the mesh all record their changes here, and their lines must not interleave."""
        data = (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
        fd = os.open(self.injections, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def record_change(self, service: str, change: dict[str, Any], *, injection: str | None, reason: str) -> None:
        """A change a control endpoint accepted (an engine's power limit, the mesh's delay), in the injection log
        next to the injections, so that a collected window can tell whether every change in it belongs to its
        ground truth (``injection``: the id of the injection that asked for it; None: someone else)."""
        import time

        self.append_injection({"kind": "control", "time": time.time(), "service": service, "change": change,
                               "injection": injection, "reason": reason})

    def read_injections(self) -> list[dict[str, Any]]:
        if not self.injections.is_file():
            return []
        out = []
        for i, line in enumerate(self.injections.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TestbedError(f"{self.injections}:{i}: not JSON ({e})") from None
        return out


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on the loopback address (held open together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
