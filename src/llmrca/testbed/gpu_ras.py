"""The emulated GPU's error state (gpu-xid, gpu-ecc), which outlives its engine process: the last Xid the driver
reported, the uncorrectable ECC errors since the last reset, the rows remapped and a pending remap. A GPU's errors
belong to the GPU, not to the process that was using it, so the state lives in the run directory
(``gpu-ras-<service>.json``) and a restarted engine exports it again under DCGM's names. The node's kernel log
(``node.jsonl``, collected as the node's service) gets the driver's Xid line.

The injector's undo clears the state (the GPU reset or replaced between cases), so that the next case of a
campaign starts from a healthy GPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmrca.deploy.telemetry import line
from llmrca.testbed.logs import JsonLog

XID_TEXT = {
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, "
        "subpartition 0.",
    79: "GPU has fallen off the bus.",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
}
CUDA_ERROR = {48: "uncorrectable ECC error encountered", 94: "uncorrectable ECC error encountered",
              79: "unspecified launch failure"}
PCI_BUS = "3b"  # the emulated GPU's bus id in the Xid line (one GPU per replica)
HEALTHY: dict[str, Any] = {"xid": 0, "dbe": 0, "remapped_rows": 0, "remap_pending": 0}


def path(run_dir: str | Path, service: str) -> Path:
    return Path(run_dir) / f"gpu-ras-{service}.json"


def read(run_dir: str | Path, service: str) -> dict[str, Any]:
    """The GPU's error state (healthy when none was recorded)."""
    try:
        got = json.loads(path(run_dir, service).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return dict(HEALTHY)
    return {k: int(got.get(k, v)) for k, v in HEALTHY.items()}


def write(run_dir: str | Path, service: str, state: dict[str, Any]) -> None:
    p = path(run_dir, service)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, p)  # atomic: a reader sees the old state or the new one


def clear(run_dir: str | Path, service: str) -> None:
    try:
        path(run_dir, service).unlink()
    except FileNotFoundError:
        pass


def record_xid(run_dir: str | Path, service: str, xid: int) -> dict[str, Any]:
    """The driver reports ``xid`` on the GPU: DCGM's last Xid moves; an uncorrectable ECC error (48, 94) counts a
    double-bit error and leaves a row remap pending until the next reset."""
    st = read(run_dir, service)
    st["xid"] = int(xid)
    if xid in (48, 94):
        st["dbe"] += 1
        st["remap_pending"] = 1
    write(run_dir, service, st)
    return st


def reset(run_dir: str | Path, service: str) -> dict[str, Any]:
    """A GPU reset: the volatile ECC count clears and a pending remap is performed (DCGM keeps the last Xid)."""
    st = read(run_dir, service)
    if st["remap_pending"]:
        st["remapped_rows"] += 1
    st["dbe"] = 0
    st["remap_pending"] = 0
    write(run_dir, service, st)
    return st


def log_xid(run_dir: str | Path, node: str, xid: int) -> str:
    """The kernel's Xid line in the node's log (what the node's syslog / journald would hold)."""
    log = JsonLog(Path(run_dir) / "logs" / "node.jsonl", node, "kernel")
    try:
        text = XID_TEXT.get(int(xid))
        return log.line(line("kernel.xid"), node, PCI_BUS, int(xid), detail=f", {text}" if text else "")
    finally:
        log.close()
