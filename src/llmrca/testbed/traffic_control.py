"""The live controls of the traffic faults (``llmrca.faults.traffic_faults``): a setting of the proxy (its dispatch
capacity, a pinned replica) or of the load generator (a prompt surge) that a token-protected endpoint sets, that
ends by itself at its ``expires_at`` (should every undo path fail, e.g. the CLI was SIGKILLed and the supervisor
too), and whose every change goes to the run's injection log.

Bodies are checked here, once, for both services; a bad one is a ``ValueError`` naming the field (answered 400).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

MAX_EXPIRY_S = 86400.0 + 600.0  # a setting expires within a day (the longest fault) and a margin


def _number(name: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, is {v!r}")
    if not (lo <= v <= hi):
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], is {v!r}")
    return float(v)


def checked_expiry(expires_at: Any, now: float) -> float:
    """``expires_at`` of a setting that is switched on: required, finite, within a day."""
    if expires_at is None:
        raise ValueError("expires_at is required: every setting carries its own end, should the undo fail")
    e = _number("expires_at", expires_at, -math.inf, math.inf)
    if not (now < e <= now + MAX_EXPIRY_S):
        raise ValueError(f"expires_at must lie in the next {MAX_EXPIRY_S:g} s, is {expires_at!r}")
    return e


def checked_capacity(body: dict[str, Any], now: float) -> tuple[dict[str, Any] | None, float | None]:
    """``{"dispatch_s": s | null, "expires_at": t}``: the proxy's seconds per dispatched request (None: no cap)."""
    if body.get("dispatch_s") is None:
        return None, None
    return ({"dispatch_s": _number("dispatch_s", body["dispatch_s"], 1e-4, 100.0)},
            checked_expiry(body.get("expires_at"), now))


def checked_routing(body: dict[str, Any], replicas: list[str], now: float
                    ) -> tuple[dict[str, Any] | None, float | None]:
    """``{"replica": name | null, "share": 0..1, "expires_at": t}``: pin a share of requests to one replica."""
    name = body.get("replica")
    if name is None:
        return None, None
    if name not in replicas:
        raise ValueError(f"replica must be one of {', '.join(replicas)}, is {name!r}")
    return ({"replica": name, "share": _number("share", body.get("share"), 0.0, 1.0)},
            checked_expiry(body.get("expires_at"), now))


def checked_surge(body: dict[str, Any], now: float) -> tuple[dict[str, Any] | None, float | None]:
    """``{"factor": x | null, "share": 0..1, "expires_at": t}``: a share of prompts ``factor`` times as long."""
    if body.get("factor") is None:
        return None, None
    return ({"factor": _number("factor", body["factor"], 1.0, 64.0),
             "share": _number("share", body.get("share"), 0.0, 1.0)},
            checked_expiry(body.get("expires_at"), now))


@dataclass
class Timed:
    """One self-expiring setting: ``value`` while it holds (None: off), recorded in the injection log on every
    change, an expiry included. ``service``: whose setting it is; ``name``: the change's key."""

    rd: Any
    service: str
    name: str
    value: dict[str, Any] | None = None
    expires_at: float | None = None
    injection: str | None = None

    def set(self, value: dict[str, Any] | None, expires_at: float | None, *, reason: str,
            injection: str | None) -> None:
        self.value, self.expires_at = value, (expires_at if value is not None else None)
        self.injection = injection if value is not None else None
        self.rd.record_change(self.service, {self.name: value, "expires_at": self.expires_at}, injection=injection,
                              reason=reason)

    def current(self, now: float | None = None) -> dict[str, Any] | None:
        """The setting now; once past its expiry it switches itself off (and records that)."""
        if self.value is not None and self.expires_at is not None and (now or time.time()) >= self.expires_at:
            self.set(None, None, reason="expired", injection=self.injection)
        return self.value

    def state(self) -> dict[str, Any]:
        return {self.name: self.current(), f"{self.name}_expires_at": self.expires_at}
