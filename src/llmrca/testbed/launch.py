"""Exec a command after setting up its process: die with the parent (``PR_SET_PDEATHSIG``, which survives exec),
join cgroups, pin CPUs. ``python -m llmrca.testbed.launch [--pdeathsig] [--cgroup FILE]... [--cpus 0,1] -- CMD...``

A separate step instead of ``subprocess``'s ``preexec_fn``, which is unsafe in a process with threads (the
supervisor has some). Imports nothing but the standard library, so it costs one short interpreter start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str] | None = None) -> None:
    a = list(sys.argv[1:] if argv is None else argv)
    if "--" not in a:
        sys.exit("usage: python -m llmrca.testbed.launch [--pdeathsig] [--cgroup FILE]... [--cpus LIST] -- CMD...")
    sep = a.index("--")
    opts, cmd = a[:sep], a[sep + 1:]
    if not cmd:
        sys.exit("launch: no command after --")
    ppid = os.getppid()
    i = 0
    while i < len(opts):
        o = opts[i]
        if o == "--pdeathsig":
            try:
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
            except OSError:
                pass
            if os.getppid() != ppid:  # the parent died before the signal was armed
                sys.exit(1)
        elif o == "--cgroup":
            i += 1
            try:
                with open(opts[i], "w") as f:
                    f.write(str(os.getpid()))
            except OSError as e:
                sys.stderr.write(f"launch: cannot join cgroup {opts[i]}: {e}\n")
        elif o == "--cpus":
            i += 1
            os.sched_setaffinity(0, [int(c) for c in opts[i].split(",") if c])
        else:
            sys.exit(f"launch: unknown option {o}")
        i += 1
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
