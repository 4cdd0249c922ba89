"""The case: one fault injection (or one normal period) with everything observed around it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case.schema import TIME, empty_logs, empty_traces
from llmrca.case.topology import Topology

NORMAL = "normal"
UNKNOWN = "unknown"  # fault type of a case whose ground truth is not known (e.g. an RCAEval folder off-pattern)


def services_seen(metric_columns: Iterable[str], traced: Iterable[object], topology: Iterable[str]) -> list[str]:
    """The services of a case, in first-seen order: the metric columns' ``<service>_`` prefixes, then the traces'
    services, then the topology's (``Observation.services``; a method that has decoded the spans already passes
    their services instead of a second pass over the frame)."""
    seen: dict[str, None] = {}
    for c in metric_columns:
        seen.setdefault(c.split("_", 1)[0], None)
    for s in traced:
        seen.setdefault(str(s), None)
    for s in topology:
        seen.setdefault(s, None)
    return list(seen)

@dataclass
class Observation:
    """What an RCA method may see: telemetry, the injection time and the topology. No ground truth.

    ``metrics`` is wide: a float64 ``time`` column (unix s) and one float column per series named
    ``<service>_<metric>``. ``traces`` and ``logs`` follow ``llmrca.case.schema``; either may be empty.
    """

    metrics: pd.DataFrame
    traces: pd.DataFrame = field(default_factory=empty_traces)
    logs: pd.DataFrame = field(default_factory=empty_logs)
    inject_time: float | None = None
    topology: Topology = field(default_factory=Topology)
    interval: float | None = None  # sampling interval of `metrics`, seconds
    # Where the data comes from, when that changes a method's defaults: "rcaeval" for a folder in RCAEval's layout
    # that llmrca did not write (``llmrca.io.rcaeval``); None for llmrca's own cases (simulated, live, synthetic).
    # ``llmrca.methods.window`` picks the metric window from it.
    source: str | None = None

    def __post_init__(self) -> None:
        if self.traces is None:
            self.traces = empty_traces()
        if self.logs is None:
            self.logs = empty_logs()
        if self.interval is None and self.metrics is not None and TIME in self.metrics and len(self.metrics) > 1:
            t = pd.to_numeric(self.metrics[TIME], errors="coerce").to_numpy(dtype=float)
            d = np.diff(t)
            d = d[np.isfinite(d) & (d > 0)]
            if len(d):
                self.interval = float(np.median(d))

    @property
    def metric_columns(self) -> list[str]:
        return [c for c in self.metrics.columns if c != TIME]

    @property
    def services(self) -> list[str]:
        """Services seen in the metrics, traces and topology, in first-seen order."""
        traced = self.traces["service"].dropna().unique() if len(self.traces) else ()
        return services_seen(self.metric_columns, traced, self.topology.services)

    def has(self, source: str) -> bool:
        frame = {"metrics": self.metrics, "traces": self.traces, "logs": self.logs}[source]
        return frame is not None and len(frame) > 0 and (source != "metrics" or bool(self.metric_columns))


@dataclass(frozen=True)
class FaultRecord:
    """One fault of a case that holds several (a multi-fault case): what, where and when."""

    fault_type: str
    service: str
    start: float | None = None
    end: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    indicator: str | None = None
    kind: str | None = None

    @property
    def fault_kind(self) -> str:
        if self.kind:
            return self.kind
        from llmrca.faults import kind_of

        return kind_of(self.fault_type)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.fault_type, "kind": self.fault_kind, "service": self.service,
                "indicator": self.indicator, "start": self.start, "end": self.end, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaultRecord:
        return cls(fault_type=d.get("type") or UNKNOWN, service=d.get("service"), start=_opt_float(d.get("start")),
                   end=_opt_float(d.get("end")), params=dict(d.get("params") or {}), indicator=d.get("indicator"),
                   kind=d.get("kind") or None)


@dataclass(frozen=True)
class GroundTruth:
    """What was really done. Lives only in ``case.json``; methods never receive it."""

    service: str | None  # None for a normal (fault-free) case
    fault_type: str = NORMAL
    indicator: str | None = None  # e.g. "ray-replicas-1_ctn_cpu" when one series should move first
    start: float | None = None  # unix s
    end: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None  # the fault's kind where it differs from its type's registered kind; see fault_kind
    # A multi-fault case: every fault, the first being the one the fields above describe (kept for readers that
    # know one root). Empty for a single-fault or normal case.
    faults: tuple[FaultRecord, ...] = ()

    @property
    def roots(self) -> tuple[str, ...]:
        """The root-cause services: every fault's, in order (one for a single-fault case, none when normal)."""
        if self.faults:
            return tuple(dict.fromkeys(f.service for f in self.faults))
        return () if self.service is None else (self.service,)

    @property
    def is_multi(self) -> bool:
        return len(self.faults) > 1

    @property
    def is_normal(self) -> bool:
        return self.service is None

    @property
    def fault_kind(self) -> str:
        """What a diagnosis should name: ``normal`` for a fault-free case, ``unknown`` where the truth is not
        known, else the recorded kind or, when none is recorded, the registered kind of ``fault_type``."""
        if self.fault_type in (NORMAL, UNKNOWN):
            return self.fault_type
        if self.kind:
            return self.kind
        from llmrca.faults import kind_of

        return kind_of(self.fault_type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.fault_type,
            "service": self.service,
            "indicator": self.indicator,
            "start": self.start,
            "end": self.end,
            "params": dict(self.params),
            # Written only when it says more than the type does, so a case whose kind is its type's keeps its
            # bytes (every case before kinds existed, and every fault whose kind is its id).
            **({"kind": self.kind} if self.kind and self.kind != self.fault_type else {}),
            # Only a multi-fault case writes the list: a single-fault case.json keeps its bytes.
            **({"faults": [f.to_dict() for f in self.faults]} if self.is_multi else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GroundTruth:
        d = d or {}
        return cls(
            service=d.get("service"),
            fault_type=d.get("type") or NORMAL,
            indicator=d.get("indicator"),
            start=_opt_float(d.get("start")),
            end=_opt_float(d.get("end")),
            params=dict(d.get("params") or {}),
            kind=d.get("kind") or None,
            faults=tuple(FaultRecord.from_dict(f) for f in d.get("faults") or ()),
        )


@dataclass
class Case:
    id: str
    observation: Observation
    truth: GroundTruth
    system: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def inject_time(self) -> float | None:
        return self.observation.inject_time

    def problems(self) -> list[Problem]:  # noqa: F821
        from llmrca.case.validation import validate_case

        return validate_case(self)

    def validate(self) -> Case:
        """Raise ``CaseError`` listing every error-level problem; returns self so calls chain."""
        from llmrca.case.validation import check_case

        check_case(self)
        return self

    def with_observation(self, **changes: Any) -> Case:
        return replace(self, observation=replace(self.observation, **changes))


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if math.isnan(f) else f
