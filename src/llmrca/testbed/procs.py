"""Starting and stopping the testbed's processes, and keeping a stress run inside its target's "container".

Every child is started with ``PR_SET_PDEATHSIG`` (Linux), so it dies with the process that started it, even when
that one is killed with SIGKILL; stopping is by process id (the tree below it), never by name.

Containment: where a cgroup CPU controller is writable (cgroup v1 ``cpu`` or v2 ``cpu.max``), each service gets a
cgroup with the pod's CPU limit and a stressor is started inside its target's cgroup, so it competes with the
target's processes for the target's quota, as Chaos Mesh's StressChaos does in a pod. Elsewhere the target's
processes and the stressor are pinned to one CPU together (``affinity``): the stress then also takes that CPU from
everyone else, which the case records.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


def spawn(argv: Sequence[str], *, out: Path | None = None, env: dict[str, str] | None = None,
          cgroup_procs: Sequence[Path] = (), die_with_parent: bool = True, new_session: bool = False,
          cwd: str | Path | None = None, cpus: Sequence[int] | None = None,
          pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start ``argv`` with its output appended to ``out``; it joins the cgroups (``cgroup.procs`` files) before it
    runs, gets SIGTERM when the thread that started it ends (``die_with_parent``), and ``cpus`` pins it and what
    it forks; ``pass_fds`` stay open in it (the run folder's lock). The set-up happens in ``llmrca.testbed.launch``,
    which then execs ``argv``."""
    pre = [sys.executable, "-m", "llmrca.testbed.launch"]
    if die_with_parent:
        pre.append("--pdeathsig")
    for f in cgroup_procs:
        pre += ["--cgroup", str(f)]
    if cpus:
        pre += ["--cpus", ",".join(str(c) for c in cpus)]
    stdout = open(out, "ab") if out is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        return subprocess.Popen([*pre, "--", *argv], stdout=stdout, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=new_session, cwd=cwd,
                                close_fds=True, pass_fds=tuple(pass_fds))
    finally:
        if out is not None:
            stdout.close()


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def kill_tree(pid: int | None, timeout: float = 5.0, sig: int = signal.SIGTERM) -> list[int]:
    """Stop ``pid`` and every process below it (``sig`` first, SIGKILL after ``timeout``); returns the pids that
    were running."""
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    for p in procs:
        try:
            p.send_signal(sig)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    _gone, left = psutil.wait_procs(procs, timeout=timeout)
    for p in left:
        try:
            p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    psutil.wait_procs(left, timeout=2.0)
    return [p.pid for p in procs]


def wait_until(cond, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


class Containment:
    """Per-service CPU containers: ``mode`` is ``cgroup-v1``, ``cgroup-v2``, ``affinity`` or ``none``."""

    def __init__(self, mode: str, base: Path | None = None, services: Sequence[str] = ()):
        self.mode = mode
        self.base = base
        self.services = list(services)

    @classmethod
    def create(cls, run_id: str, services: Sequence[str], pod_cpu: float, *, allow_cgroups: bool = True
               ) -> Containment:
        if allow_cgroups:
            for mode, make in (("cgroup-v1", _make_v1), ("cgroup-v2", _make_v2)):
                try:
                    base = make(run_id, services, pod_cpu)
                except OSError:
                    continue
                if base is not None:
                    return cls(mode, base, services)
        cores = _cores()
        return cls("affinity" if len(cores) > 1 else "none", None, services)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "base": str(self.base) if self.base else None, "services": self.services}

    @classmethod
    def from_dict(cls, d: dict | None) -> Containment:
        d = d or {"mode": "none"}
        return cls(d["mode"], Path(d["base"]) if d.get("base") else None, d.get("services", ()))

    def procs_files(self, service: str) -> list[Path]:
        if self.mode in ("cgroup-v1", "cgroup-v2") and self.base is not None:
            return [self.base / service / "cgroup.procs"]
        return []

    def pin(self, pids: Sequence[int]) -> dict[int, list[int]]:
        """``affinity`` mode: pin ``pids`` (and their children) to the last CPU; returns the old affinities."""
        if self.mode != "affinity":
            return {}
        cpu = _cores()[-1]
        old: dict[int, list[int]] = {}
        for pid in pids:
            try:
                root = psutil.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    old[p.pid] = p.cpu_affinity()
                    p.cpu_affinity([cpu])
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue
        return old

    @staticmethod
    def unpin(old: dict[int, list[int]]) -> None:
        for pid, cpus in old.items():
            try:
                psutil.Process(pid).cpu_affinity(cpus)
            except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
                continue

    def teardown(self) -> None:
        """Remove the cgroups (their processes must have exited)."""
        if self.base is None or not self.base.exists():
            return
        for svc in self.services:
            d = self.base / svc
            if d.exists():
                _rmdir(d)
        _rmdir(self.base)


def _rmdir(d: Path) -> None:
    for _ in range(20):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _make_v1(run_id: str, services: Sequence[str], pod_cpu: float) -> Path | None:
    root = CGROUP_ROOT / "cpu"
    if not (root / "cpu.cfs_quota_us").exists() or not os.access(root, os.W_OK):
        return None
    base = root / f"llmrca-{run_id}"
    base.mkdir(exist_ok=True)
    for svc in services:
        d = base / svc
        d.mkdir(exist_ok=True)
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text(str(max(1000, int(pod_cpu * 100000))))
    return base


def _make_v2(run_id: str, services: Sequence[str], pod_cpu: float) -> Path | None:
    root = CGROUP_ROOT
    ctl = root / "cgroup.controllers"
    if not ctl.exists() or "cpu" not in ctl.read_text().split() or not os.access(root, os.W_OK):
        return None
    # Our own cgroup is where new cgroups may go (the root of a container's namespace, usually).
    with open("/proc/self/cgroup") as f:
        own = Path(f.read().strip().split("::", 1)[-1].strip() or "/")
    parent = root / own.relative_to("/")
    base = parent.parent / f"llmrca-{run_id}" if parent != root else root / f"llmrca-{run_id}"
    if "cpu" not in (base.parent / "cgroup.subtree_control").read_text().split():
        (base.parent / "cgroup.subtree_control").write_text("+cpu")
    base.mkdir(exist_ok=True)
    (base / "cgroup.subtree_control").write_text("+cpu")
    for svc in services:
        d = base / svc
        d.mkdir(exist_ok=True)
        (d / "cpu.max").write_text(f"{max(1000, int(pod_cpu * 100000))} 100000")
    return base
