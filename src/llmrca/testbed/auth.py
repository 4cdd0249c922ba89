"""The testbed's control secret: every endpoint that changes the live system (the supervisor's ``/inject``,
``/undo``, ``/shutdown``, an engine's ``/control/power-limit``, the mesh's ``/delay``) answers only a request that
carries the run's token, so no other local process can inject, undo or stop anything behind the ground truth's
back. The token is a random file in the run folder, created with mode 0600 (only its owner can read it), new for
each ``up``; every llmrca client (CLI, injectors, campaign) reads it from there and sends it as a header.

Read-only endpoints (``/metrics``, ``/health``, ``/status``, the engines' chat API) stay open, as they are on a
real deployment: Prometheus and the load need them, and they change nothing.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from llmrca.testbed.rundir import TestbedError

HEADER = "X-Llmrca-Token"
INJECTION_HEADER = "X-Llmrca-Injection"  # the injection a control change belongs to (recorded with it)
TOKEN_FILE = "control.token"


def create_token(run_dir: str | Path) -> str:
    """A fresh token in ``run_dir/control.token`` (mode 0600; an old file is replaced, never followed)."""
    path = Path(run_dir) / TOKEN_FILE
    path.unlink(missing_ok=True)
    token = secrets.token_hex(32)
    # O_EXCL | O_NOFOLLOW: a file or link someone planted between the unlink and here is an error, not a target.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, token.encode("ascii"))
    finally:
        os.close(fd)
    return token


def read_token(run_dir: str | Path) -> str:
    """The run's token; an error naming the file if it is missing or readable by others."""
    path = Path(run_dir) / TOKEN_FILE
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode):
            raise TestbedError(f"{path}: the control token is not a regular file")
        if st.st_mode & 0o077:
            raise TestbedError(f"{path}: the control token is readable by others (mode {stat.S_IMODE(st.st_mode):o});"
                               " restart the testbed with `llmrca testbed up` to make a new one")
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise TestbedError(f"{path}: no control token (the testbed was not started by `llmrca testbed up`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TestbedError(f"{path}: cannot read the control token ({e})") from None
    if not token:
        raise TestbedError(f"{path}: the control token is empty")
    return token


def headers(run_dir: str | Path) -> dict[str, str]:
    """The header every control request of this run carries."""
    return {HEADER: read_token(run_dir)}


def check(token: str, given: str | None) -> int | None:
    """None when ``given`` is the token; else the HTTP status to answer: 401 without one, 403 for a wrong one."""
    if not given:
        return 401
    return None if hmac.compare_digest(given.encode(), token.encode()) else 403


def middleware(token: str, protected: Callable[[str, str], bool]) -> Any:
    """An aiohttp middleware refusing a request to a ``protected(method, path)`` route without the token."""
    from aiohttp import web

    @web.middleware
    async def guard(request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        if protected(request.method, request.path):
            code = check(token, request.headers.get(HEADER))
            if code is not None:
                why = "missing" if code == 401 else "wrong"
                return web.json_response({"error": f"{why} control token: send the run folder's {TOKEN_FILE} "
                                                   f"as the {HEADER} header"}, status=code)
        return await handler(request)

    return guard


def mutating(method: str, path: str) -> bool:
    """Every request that is not a read."""
    return method not in ("GET", "HEAD", "OPTIONS")
