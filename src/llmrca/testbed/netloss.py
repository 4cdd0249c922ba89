"""Packet loss on a mesh link, emulated at the proxy level: loopback drops nothing without ``tc netem`` and
privileges, so the link draws, for each chunk it forwards, which of the chunk's TCP segments netem would drop and
holds the chunk for the retransmissions that would recover them (``llmrca.sim.tcploss``: the simulator's model).
The bytes all arrive, in order, as TCP delivers them; only their timing follows the loss."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrca.sim.tcploss import Loss, segments


@dataclass
class LinkLoss:
    loss: float  # fraction of segments dropped (0..1)
    correlation: float = 0.0
    expires_at: float | None = None  # unix s after which the loss no longer applies (a dead-man's switch)
    seed: int = 0
    model: Loss = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.model = Loss(self.loss, self.correlation, np.random.default_rng(self.seed))

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def hold_s(self, nbytes: int) -> float:
        """How long a chunk of ``nbytes`` waits for the recovery of its dropped segments (0 if none dropped)."""
        return self.model.write_delay(segments(nbytes))

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {"loss": self.loss, "correlation": self.correlation, "expires_at": self.expires_at, "seed": self.seed,
                "segments_sent": m.sent, "segments_dropped": m.dropped, "connections_given_up": m.broken}


MAX_EXPIRY_S = 86400.0 + 600.0  # a loss expires within a day (the longest fault) and a margin


def checked_loss(b: Any, now: float) -> LinkLoss:
    """The loss a ``POST /loss`` body asks for: ``loss`` and ``correlation`` fractions in [0, 1], a required
    ``expires_at`` within a day, an integer ``seed``; a ``ValueError``/``TypeError`` naming the field otherwise."""
    if not isinstance(b, dict):
        raise TypeError("the body must be a JSON object")

    def number(name: str, lo: float, hi: float, default: float | None = None) -> float:
        v = b.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not (lo <= v <= hi):
            raise ValueError(f"{name} must be a finite number in [{lo:g}, {hi:g}], is {v!r}")
        return float(v)

    seed = b.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, is {seed!r}")
    return LinkLoss(number("loss", 0.0, 1.0), number("correlation", 0.0, 1.0, 0.0),
                    number("expires_at", now, now + MAX_EXPIRY_S), seed)
