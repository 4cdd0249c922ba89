"""Process-level telemetry of the live services, in cAdvisor's and node-exporter's terms.

A service's "container" is the process trees of its processes plus those an injector attached to it (a stress
run inside the target's container, as Chaos Mesh does it). CPU seconds and resident memory come from ``/proc``
(psutil); transmitted and received packets are the kernel's per-socket TCP segment counters (``ss -tinpe``:
``segs_out``/``segs_in``), summed over the sockets the container's processes hold. Counters are kept monotonic
across processes that exit (their last values are banked), as a container's cgroup counters are.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass

import psutil

_PID = re.compile(r"pid=(\d+)")
_INO = re.compile(r"\bino:(\d+)")
_SEGS_OUT = re.compile(r"\bsegs_out:(\d+)")
_SEGS_IN = re.compile(r"\bsegs_in:(\d+)")


@dataclass(frozen=True)
class SocketCounters:
    inode: int
    pid: int
    segs_out: int
    segs_in: int


def parse_ss(text: str) -> list[SocketCounters]:
    """Sockets of ``ss -tinpe -H`` output that belong to a process and report segment counters."""
    out = []
    head: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            head = line
            continue
        if head is None:
            continue
        pid = _PID.search(head)
        ino = _INO.search(head)
        so, si = _SEGS_OUT.search(line), _SEGS_IN.search(line)
        if pid and ino and so and int(ino.group(1)):
            out.append(SocketCounters(int(ino.group(1)), int(pid.group(1)), int(so.group(1)),
                                      int(si.group(1)) if si else 0))
        head = None
    return out


def read_sockets() -> list[SocketCounters]:
    exe = shutil.which("ss")
    if exe is None:
        return []
    try:
        r = subprocess.run([exe, "-tinpeH"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_ss(r.stdout)


class ContainerAccounting:
    """Monotonic CPU seconds and packet counters, and current resident bytes, per service."""

    def __init__(self) -> None:
        self._cpu_bank: dict[str, float] = defaultdict(float)
        self._cpu_last: dict[tuple[int, float], tuple[str, float]] = {}
        self._pk_bank: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._pk_last: dict[int, tuple[str, int, int]] = {}

    @staticmethod
    def _tree(pid: int) -> list[psutil.Process]:
        try:
            p = psutil.Process(pid)
            return [p, *p.children(recursive=True)]
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return []

    def sample(self, members: dict[str, list[int]], sockets: list[SocketCounters] | None = None
               ) -> dict[str, dict[str, float]]:
        """``{service: {cpu_seconds, rss_bytes, packets_out, packets_in}}`` for root pids ``members``."""
        seen: dict[tuple[int, float], tuple[str, float]] = {}
        rss: dict[str, float] = defaultdict(float)
        owner: dict[int, str] = {}
        for svc, pids in members.items():
            for root in pids:
                for p in self._tree(root):
                    try:
                        with p.oneshot():
                            key = (p.pid, p.create_time())
                            if key in seen:
                                continue
                            t = p.cpu_times()
                            seen[key] = (svc, t.user + t.system)
                            rss[svc] += p.memory_info().rss
                            owner[p.pid] = svc
                    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                        continue
        for key, (svc, cpu) in self._cpu_last.items():
            if key not in seen:  # exited since the last sample: its CPU time stays in the container's total
                self._cpu_bank[svc] += cpu
        self._cpu_last = seen
        cpu_now: dict[str, float] = defaultdict(float)
        for svc, cpu in seen.values():
            cpu_now[svc] += cpu
        socks = read_sockets() if sockets is None else sockets
        pk_seen: dict[int, tuple[str, int, int]] = {}
        for s in socks:
            svc = owner.get(s.pid)
            if svc is not None:
                pk_seen[s.inode] = (svc, s.segs_out, s.segs_in)
        for ino, (svc, so, si) in self._pk_last.items():
            if ino not in pk_seen:
                self._pk_bank[svc][0] += so
                self._pk_bank[svc][1] += si
        self._pk_last = pk_seen
        pk_now: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for svc, so, si in pk_seen.values():
            pk_now[svc][0] += so
            pk_now[svc][1] += si
        out = {}
        for svc in members:
            out[svc] = {"cpu_seconds": self._cpu_bank[svc] + cpu_now[svc], "rss_bytes": rss[svc],
                        "packets_out": self._pk_bank[svc][0] + pk_now[svc][0],
                        "packets_in": self._pk_bank[svc][1] + pk_now[svc][1]}
        return out


def node_sample() -> dict[str, float]:
    """The machine's CPU seconds by mode (summed over CPUs), memory and packet counters (node-exporter's)."""
    t = psutil.cpu_times()
    vm = psutil.virtual_memory()
    net = psutil.net_io_counters()
    out = {f"cpu_{k}": float(v) for k, v in t._asdict().items()}
    out.update({"mem_total": float(vm.total), "mem_available": float(vm.available),
                "packets_out": float(net.packets_sent), "packets_in": float(net.packets_recv)})
    return out
