"""The testbed's client side: ``up``, ``status``, ``inject``, ``undo``, ``down`` (what ``llmrca testbed`` calls).

``up`` starts a supervisor (``llmrca.testbed.supervisor``) and waits until the deployment serves; detached, it
outlives the command (``status``/``inject``/``collect``/``down`` find it through the run folder), attached it dies
with the calling process. ``down`` stops it and then checks, by process id and start time, that nothing it started
is left, and that none of its ports is still open.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from llmrca.testbed import auth
from llmrca.testbed.config import TestbedConfig, live_config
from llmrca.testbed.procs import Containment, kill_tree, spawn
from llmrca.testbed.rundir import LOOPBACK, RunDir, TestbedError, port_open
from llmrca.testbed.supervisor import CONFIG_FILE

_CLEAR = ("logs", "prometheus", "nginx")
_CLEAR_FILES = ("spans.jsonl", "injections.jsonl", "prometheus.yml", "state.json", "supervisor.out",
                auth.TOKEN_FILE)


def _same_process(pid: int | None, create_time: float | None) -> bool:
    """``pid`` is still the process we started (not a later one that reused the id)."""
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(p.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def supervisor_alive(state: dict[str, Any]) -> bool:
    s = state.get("supervisor") or {}
    return _same_process(s.get("pid"), s.get("create_time"))


def _check_binaries() -> None:
    from llmrca.testbed.nginx import nginx_binary
    from llmrca.testbed.prometheus import prometheus_binary

    missing = [n for n, b in (("prometheus", prometheus_binary()), ("nginx", nginx_binary())) if b is None]
    if missing:
        raise TestbedError(f"{' and '.join(missing)} not found on PATH: install the Debian package(s) "
                           f"(apt-get install -y {' '.join(missing)}); stress-ng is optional")


def up(config: TestbedConfig | None = None, run_dir: str | Path | None = None, *, detach: bool = True,
       timeout: float | None = None, real_gpus: dict[str, str] | None = None,
       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start a testbed in ``run_dir`` and return its state once it serves (raises ``TestbedError`` otherwise);
    ``timeout`` defaults to 120 s for emulated engines, 960 s for real ones (their models load for minutes on a
    busy machine)."""
    cfg = config or live_config()
    if timeout is None:
        timeout = 960.0 if cfg.deploy.engine == "vllm" else 120.0
    rd = RunDir(run_dir)
    _check_binaries()
    rd.path.mkdir(parents=True, exist_ok=True)
    lock = take_lock(rd)  # held from here by this call, then by the supervisor it starts, until it exits
    try:
        return _up_locked(rd, cfg, lock, detach=detach, timeout=timeout, real_gpus=real_gpus, progress=progress)
    finally:
        os.close(lock)  # the supervisor keeps its own copy of the descriptor, hence the lock


def take_lock(rd: RunDir) -> int:
    """An exclusive ``flock`` on the run folder's lock file, or a one-line error naming who holds it. The lock
    belongs to the open descriptor: the kernel drops it when the last process holding that descriptor ends, however
    it ends (a crash or SIGKILL included), so a stale lock cannot outlive its testbed."""
    fd = os.open(rd.lock_file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
        except OSError:
            pass
        os.close(fd)
        raise TestbedError(f"another testbed holds the run folder {rd.path}"
                           f"{f' (pid {holder})' if holder else ''}: `llmrca testbed down --run-dir {rd.path}` "
                           "first, or give another --run-dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _up_locked(rd: RunDir, cfg: TestbedConfig, lock: int, *, detach: bool, timeout: float,
               real_gpus: dict[str, str] | None, progress: Callable[[str], None] | None) -> dict[str, Any]:
    if rd.exists():
        old = rd.read_state()
        if supervisor_alive(old) and old.get("status") not in ("down", "failed"):
            raise TestbedError(f"a testbed is already running in {rd.path} (status {old.get('status')}); "
                               "`llmrca testbed down` first, or give another --run-dir")
        _reap(old)
    rd.path.mkdir(parents=True, exist_ok=True)
    for name in _CLEAR:
        _rmtree(rd.path / name)
    for name in _CLEAR_FILES:
        (rd.path / name).unlink(missing_ok=True)
    rd.create()
    auth.create_token(rd.path)
    (rd.path / CONFIG_FILE).write_text(json.dumps({"config": cfg.to_dict(), "attached": not detach,
                                                   "real_gpus": real_gpus or {}}, indent=2), encoding="utf-8")
    p = spawn([sys.executable, "-m", "llmrca.testbed.supervisor", str(rd.path)], out=rd.path / "supervisor.out",
              die_with_parent=not detach, new_session=detach, pass_fds=(lock,))
    os.pwrite(lock, f"{p.pid}".ljust(16).encode(), 0)  # the holder to name, once this call has returned
    end = time.monotonic() + timeout
    last = ""
    while True:
        if p.poll() is not None:
            raise TestbedError(f"the testbed supervisor exited ({p.returncode}) while starting: "
                               f"{_state_error(rd)}\n{_tail(rd.path / 'supervisor.out')}")
        if rd.exists():
            try:
                st = rd.read_state()
            except TestbedError:
                st = {}
            status = st.get("status", "")
            if progress and status != last:
                progress(status)
                last = status
            if status == "up":
                return st
            if status == "failed":
                raise TestbedError(f"the testbed failed to start: {st.get('error')}")
        if time.monotonic() > end:
            p.send_signal(signal.SIGTERM)
            raise TestbedError(f"the testbed did not come up within {timeout:g} s; see {rd.path / 'supervisor.out'}")
        time.sleep(0.2)


def _state_error(rd: RunDir) -> str:
    try:
        return str(rd.read_state().get("error") or "")
    except TestbedError:
        return ""


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _rmtree(p: Path) -> None:
    import shutil

    if p.exists():
        shutil.rmtree(p, ignore_errors=True)


def _control(state: dict[str, Any], path: str, body: dict | None = None, timeout: float = 30.0) -> Any:
    url = f"http://{LOOPBACK}:{state['ports']['control']}{path}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET",
                                 headers={"Content-Type": "application/json", **auth.headers(state["run_dir"])})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", "")
        except (ValueError, OSError):
            msg = ""
        raise TestbedError(msg or f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TestbedError(f"the testbed's supervisor does not answer at {url} ({e})") from None


def running_state(run_dir: str | Path | None = None) -> dict[str, Any]:
    rd = RunDir(run_dir)
    st = rd.read_state()
    if not supervisor_alive(st) or st.get("status") != "up":
        raise TestbedError(f"the testbed in {rd.path} is not running (status {st.get('status')!r}); "
                           "start it with `llmrca testbed up`")
    st["run_dir"] = str(rd.path)  # where this caller finds the token (the recorded path may be relative elsewhere)
    return st


def status(run_dir: str | Path | None = None) -> dict[str, Any]:
    """The supervisor's view (processes, ports, active faults), or what the run folder says when it is gone."""
    rd = RunDir(run_dir)
    st = rd.read_state()
    if not supervisor_alive(st):
        return {"status": "down" if st.get("status") in ("down", "stopping") else f"dead ({st.get('status')})",
                "run_dir": str(rd.path), "error": st.get("error")}
    return _control(dict(st, run_dir=str(rd.path)), "/status")


def inject(fault: str, target: str, duration: float, params: dict[str, Any] | None = None,
           run_dir: str | Path | None = None, *, wait: bool = True,
           on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Inject a fault through the supervisor. With ``wait`` this call holds the fault: it returns the final record
    when the fault has been undone at its end, and if this process stops (Ctrl-C, a kill) the supervisor undoes it
    at once. Without ``wait`` the supervisor undoes it at its end on its own."""
    from llmrca.testbed.supervisor import check_duration

    st = running_state(run_dir)
    check_duration(float(duration))
    body = {"fault": fault, "target": target, "duration": float(duration), "params": params or {}, "lease": wait}
    url = f"http://{LOOPBACK}:{st['ports']['control']}/inject"
    req = urllib.request.Request(url, data=json.dumps(body, allow_nan=False).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **auth.headers(st["run_dir"])})
    rec: dict[str, Any] = {}
    try:
        with urllib.request.urlopen(req, timeout=max(60.0, duration + 60.0)) as r:
            for line in r:
                if not line.strip():
                    continue
                ev = json.loads(line)
                if "record" in ev:
                    rec = ev["record"]
                if on_event:
                    on_event(ev)
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error", "")
        except (ValueError, OSError):
            msg = ""
        raise TestbedError(msg or f"{url}: HTTP {e.code}") from None
    except (urllib.error.URLError, OSError) as e:
        raise TestbedError(f"injection through {url} failed: {e}") from None
    except BaseException:
        if rec.get("id"):  # interrupted while holding the fault: make sure it is undone now
            try:
                _control(st, "/undo", {"id": rec["id"], "reason": "the client was interrupted"}, timeout=10.0)
            except TestbedError:
                pass
        raise
    return rec


def undo(run_dir: str | Path | None = None, injection_id: str | None = None) -> list[dict[str, Any]]:
    st = running_state(run_dir)
    body = {"all": True, "reason": "requested"} if injection_id is None else {"id": injection_id}
    return _control(st, "/undo", body)


def _reap(state: dict[str, Any]) -> list[int]:
    """Stop whatever the run folder records as started and still running (same pid *and* start time)."""
    from llmrca.testbed.supervisor import sweep_group

    left = []
    for name, p in sorted((state.get("processes") or {}).items()):
        if _same_process(p.get("pid"), p.get("create_time")):
            left += kill_tree(p["pid"], timeout=5.0)
        if p.get("pgid") and p.get("create_time"):  # a real engine's EngineCore/workers, orphaned or not
            left += sweep_group(int(p["pgid"]), float(p["create_time"]))
    c = state.get("containment")
    if c:
        Containment.from_dict(c).teardown()
    return left


def down(run_dir: str | Path | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Stop the testbed (faults undone first) and check that no process it started and none of its ports is left.
    Raises ``TestbedError`` if something survived (after killing it)."""
    rd = RunDir(run_dir)
    st = rd.read_state()
    sup = st.get("supervisor") or {}
    stopped = False
    if supervisor_alive(st):
        os.kill(sup["pid"], signal.SIGTERM)
        end = time.monotonic() + timeout
        while supervisor_alive(st) and time.monotonic() < end:
            time.sleep(0.1)
        stopped = not supervisor_alive(st)
        if not stopped:
            kill_tree(sup["pid"], timeout=5.0)
    st = rd.read_state()
    leftovers = _reap(st)
    time.sleep(0.2)
    open_ports = [f"{k}:{v}" for k, v in (st.get("ports") or {}).items() if port_open(v)]
    st["status"] = "down"
    rd.write_state(st)
    report = {"run_dir": str(rd.path), "supervisor_stopped_cleanly": stopped, "killed_leftovers": leftovers,
              "open_ports": open_ports}
    if leftovers or open_ports:
        raise TestbedError(f"testbed down: had to kill leftover processes {leftovers}; ports still open: "
                           f"{open_ports}")
    return report


@contextmanager
def running(config: TestbedConfig | None = None, run_dir: str | Path | None = None,
            **kw: Any) -> Iterator[dict[str, Any]]:
    """A testbed for the duration of a ``with`` block, attached to this process (it dies with it) and brought
    down on exit, whatever the exit."""
    st = up(config, run_dir, detach=False, **kw)
    try:
        yield st
    finally:
        down(run_dir)
