"""The fields of ``case.json`` (and of the RCAEval sidecar ``llmrca.json``), read one by one with their types checked.

JSON from disk can hold anything: a list where an object belongs, a number where a name belongs. Every field is
checked here before a ``Case`` is built, and each bad one becomes a ``Problem`` naming it, so a malformed file gives
one clear error (``<file>: fault.service: must be a string, is 5``) instead of a traceback deep in a method.

The fault rule (docs/case-format.md): ``fault`` is required and so is ``fault.type``. ``type: "normal"`` marks a
fault-free case, whose ``service`` must be null; ``type: "unknown"`` (ground truth not known, as for an RCAEval
folder off its naming pattern) may leave ``service`` null; every other type needs a ``service``. A file without a fault
section is an error, never a quiet "normal" case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrca.case import NORMAL, GroundTruth, Topology
from llmrca.case.model import UNKNOWN, FaultRecord
from llmrca.case.validation import Problem
from llmrca.errors import CaseError


@dataclass
class CaseFields:
    """What ``case.json`` says, typed. ``None`` where the file leaves a field out (or sets it to null)."""

    id: str | None = None
    system: str = ""
    interval: float | None = None
    inject_time: float | None = None
    truth: GroundTruth | None = None
    topology: Topology = field(default_factory=Topology)
    source: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)


def _kind(v: Any) -> str:
    """What a JSON value is, for a message: ``null``, ``a list``, ``an object``, or its type and value."""
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return f"{type(v).__name__} {v!r}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class _Reader:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def bad(self, name: str, msg: str) -> None:
        self.problems.append(Problem("error", name, msg))

    def number(self, d: dict[str, Any], key: str, name: str) -> float | None:
        v = d.get(key)
        if v is None:
            return None
        if not _is_number(v):
            self.bad(name, f"must be a number or null, is {_kind(v)}")
            return None
        f = float(v)
        if not math.isfinite(f):
            self.bad(name, f"must be finite, is {v!r}")
            return None
        return f

    def text(self, d: dict[str, Any], key: str, name: str) -> str | None:
        v = d.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            self.bad(name, f"must be a string or null, is {_kind(v)}")
            return None
        return v

    def obj(self, d: dict[str, Any], key: str, name: str) -> dict[str, Any]:
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.bad(name, f"must be an object or null, is {_kind(v)}")
            return {}
        return v


def read_fields(meta: Any, where: str | Path, *, fault_required: bool = True) -> CaseFields:
    """Check and convert the fields of a parsed ``case.json``; raise ``CaseError`` (at ``where``) listing every bad
    field. ``fault_required=False`` (the sidecar, whose folder names carry the fault) leaves ``truth`` None when
    the file has no fault section."""
    if not isinstance(meta, dict):
        raise CaseError([Problem("error", "case.json", f"must be a JSON object, is {_kind(meta)}")],
                        where=str(where))
    r = _Reader()
    out = CaseFields()
    out.id = r.text(meta, "id", "id")
    out.system = r.text(meta, "system", "system") or ""
    out.interval = r.number(meta, "interval", "interval")
    out.inject_time = r.number(meta, "inject_time", "inject_time")
    out.source = r.text(meta, "source", "source")
    out.provenance = dict(r.obj(meta, "provenance", "provenance"))
    out.topology = _topology(r, meta.get("topology"))
    if "fault" in meta or fault_required:
        out.truth = _truth(r, meta.get("fault"))
    if r.problems:
        raise CaseError(r.problems, where=str(where))
    return out


def _truth(r: _Reader, d: Any) -> GroundTruth | None:
    if d is None:
        r.bad("fault", "missing; every case.json has a fault section (a fault-free case says "
                       f"{{\"type\": \"{NORMAL}\", \"service\": null}})")
        return None
    if not isinstance(d, dict):
        r.bad("fault", f"must be an object, is {_kind(d)}")
        return None
    n = len(r.problems)
    ftype = d.get("type")
    if ftype is None or ftype == "":
        r.bad("fault.type", f"missing; give the fault type, or \"{NORMAL}\" for a fault-free case")
    elif not isinstance(ftype, str):
        r.bad("fault.type", f"must be a string, is {_kind(ftype)}")
    service = d.get("service")
    if service is not None and not isinstance(service, str):
        r.bad("fault.service", f"must be a string or null, is {_kind(service)}")
    elif isinstance(ftype, str) and ftype:
        if ftype == NORMAL and service is not None:
            r.bad("fault.service", f"is {service!r} but fault.type is \"{NORMAL}\" (a fault-free case names no "
                                   "service)")
        elif ftype not in (NORMAL, UNKNOWN) and not service:
            r.bad("fault.service", f"missing; fault.type {ftype!r} needs the service it was injected into")
    indicator = r.text(d, "indicator", "fault.indicator")
    start = r.number(d, "start", "fault.start")
    end = r.number(d, "end", "fault.end")
    params = r.obj(d, "params", "fault.params")
    kind = r.text(d, "kind", "fault.kind")
    faults = _faults(r, d.get("faults"))
    if len(r.problems) > n:
        return None
    return GroundTruth(service=service, fault_type=ftype, indicator=indicator, start=start, end=end,
                       params=dict(params), kind=kind or None, faults=faults)


def _faults(r: _Reader, items: Any) -> tuple[FaultRecord, ...]:
    """``fault.faults`` of a multi-fault case: a list of objects each with a type and a service (optional)."""
    if items is None:
        return ()
    if not isinstance(items, list):
        r.bad("fault.faults", f"must be a list, is {_kind(items)}")
        return ()
    out = []
    for i, f in enumerate(items):
        where = f"fault.faults[{i}]"
        if not isinstance(f, dict):
            r.bad(where, f"must be an object, is {_kind(f)}")
            continue
        ftype, service = r.text(f, "type", f"{where}.type"), r.text(f, "service", f"{where}.service")
        if not ftype:
            r.bad(f"{where}.type", "missing; every fault of a multi-fault case names its type")
        if not service:
            r.bad(f"{where}.service", "missing; every fault of a multi-fault case names its service")
        n = len(r.problems)
        rec = FaultRecord(fault_type=ftype or "", service=service or "", start=r.number(f, "start", f"{where}.start"),
                          end=r.number(f, "end", f"{where}.end"), params=dict(r.obj(f, "params", f"{where}.params")),
                          indicator=r.text(f, "indicator", f"{where}.indicator"),
                          kind=r.text(f, "kind", f"{where}.kind") or None)
        if len(r.problems) == n and ftype and service:
            out.append(rec)
    return tuple(out)


def _topology(r: _Reader, d: Any) -> Topology:
    if d is None:
        return Topology()
    if not isinstance(d, dict):
        r.bad("topology", f"must be an object or null, is {_kind(d)}")
        return Topology()
    n = len(r.problems)
    services = d.get("services") or []
    if not (isinstance(services, list) and all(isinstance(s, str) for s in services)):
        r.bad("topology.services", "must be a list of service names")
    edges = d.get("edges") or []
    if not (isinstance(edges, list) and all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e)
                                            for e in edges)):
        r.bad("topology.edges", "must be a list of [caller, callee] name pairs")
    entry = r.text(d, "entry", "topology.entry")
    sli = r.text(d, "sli", "topology.sli")
    hosts = r.obj(d, "hosts", "topology.hosts")
    if not all(isinstance(v, str) for v in hosts.values()):
        r.bad("topology.hosts", "must map each service to a host name")
    groups: dict[str, dict[str, Any]] = {}
    for key in ("gpus", "replicas"):
        g = r.obj(d, key, f"topology.{key}")
        if not all(isinstance(v, list) for v in g.values()):
            r.bad(f"topology.{key}", "must map each name to a list")
        groups[key] = g
    if len(r.problems) > n:
        return Topology()
    return Topology(services=tuple(services), edges=tuple(tuple(e) for e in edges), entry=entry, hosts=dict(hosts),
                    gpus={k: list(v) for k, v in groups["gpus"].items()},
                    replicas={k: list(v) for k, v in groups["replicas"].items()}, sli=sli)
