"""The deployment's shape: services, who calls whom, where they run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Topology:
    """Services and call edges of one deployment.

    ``edges`` point from caller to callee. ``entry`` is the service users talk to (its latency is the SLI).
    ``hosts`` maps a service to the node it runs on, ``gpus`` a service to the GPU ids it holds.
    ``replicas`` groups interchangeable services under a logical name (e.g. ``vllm`` → the 4 replica pods).
    ``sli`` names the SLI column itself (``frontend_latency-50``) where the user chose it (``--sli``); its service
    is the entry. None: the SLI is the entry's latency series (``llmrca.methods.sli``).
    """

    services: tuple[str, ...] = ()
    edges: tuple[tuple[str, str], ...] = ()
    entry: str | None = None
    hosts: dict[str, str] = field(default_factory=dict)
    gpus: dict[str, list[str]] = field(default_factory=dict)
    replicas: dict[str, list[str]] = field(default_factory=dict)
    sli: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(self.services))
        object.__setattr__(self, "edges", tuple((str(a), str(b)) for a, b in self.edges))

    @property
    def is_empty(self) -> bool:
        return not self.services and not self.edges

    def callees(self, service: str) -> list[str]:
        return [b for a, b in self.edges if a == service]

    def callers(self, service: str) -> list[str]:
        return [a for a, b in self.edges if b == service]

    def entry_service(self) -> str | None:
        """The entry service: the declared one, else the single service nobody calls."""
        if self.entry:
            return self.entry
        if self.sli:
            return self.sli.split("_", 1)[0]
        called = {b for _, b in self.edges}
        roots = [s for s in self.services if s not in called and self.callees(s)]
        return roots[0] if len(roots) == 1 else None

    def problems(self) -> list[str]:
        out = []
        names = set(self.services)
        for s in self.services:
            if "_" in s:
                out.append(f"topology.services: service name {s!r} contains '_' (use '-')")
        if len(names) != len(self.services):
            out.append("topology.services: duplicated service names")
        for a, b in self.edges:
            for end in (a, b):
                if names and end not in names:
                    out.append(f"topology.edges: {a!r}->{b!r} names unknown service {end!r}")
        if self.entry is not None and names and self.entry not in names:
            out.append(f"topology.entry: unknown service {self.entry!r}")
        if self.sli is not None and "_" not in self.sli:
            out.append(f"topology.sli: {self.sli!r} is not a '<service>_<metric>' column name")
        elif self.sli is not None and self.entry is not None and self.sli.split("_", 1)[0] != self.entry:
            out.append(f"topology.sli: {self.sli!r} is not a series of the entry service {self.entry!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "services": list(self.services),
            "edges": [list(e) for e in self.edges],
            "entry": self.entry,
            "hosts": dict(self.hosts),
            "gpus": {k: list(v) for k, v in self.gpus.items()},
            "replicas": {k: list(v) for k, v in self.replicas.items()},
            **({"sli": self.sli} if self.sli is not None else {}),  # only when set: older files stay byte-equal
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Topology:
        d = d or {}
        return cls(
            services=tuple(d.get("services", ())),
            edges=tuple(tuple(e) for e in d.get("edges", ())),
            entry=d.get("entry"),
            hosts=dict(d.get("hosts", {})),
            gpus={k: list(v) for k, v in d.get("gpus", {}).items()},
            replicas={k: list(v) for k, v in d.get("replicas", {}).items()},
            sli=d.get("sli"),
        )
