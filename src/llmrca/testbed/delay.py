"""A netem-like delay on a byte stream: each chunk gets ``latency ± jitter`` (uniform), successive jitters
correlated as netem does it (each draw mixes a fresh uniform with the previous one), and the stream keeps its
order (TCP hands bytes over in order, so a late segment holds back the ones after it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from llmrca.faults import FaultParamError


@dataclass
class Delay:
    latency_s: float
    jitter_s: float = 0.0
    correlation: float = 0.0
    expires_at: float | None = None  # unix s after which the delay no longer applies (a dead-man's switch)
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _last: float = field(init=False, default=0.5)
    _release: float = field(init=False, default=-math.inf)

    def __post_init__(self) -> None:
        for name in ("latency_s", "jitter_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise FaultParamError(f"delay {name} must be a finite number >= 0, is {v!r}")
        if not (0.0 <= self.correlation <= 1.0):
            raise FaultParamError(f"delay correlation must be in [0, 1], is {self.correlation!r}")
        self._rng = np.random.default_rng(self.seed)

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    def draw(self) -> float:
        u = (1.0 - self.correlation) * float(self._rng.random()) + self.correlation * self._last
        self._last = u
        return max(0.0, self.latency_s + self.jitter_s * (2.0 * u - 1.0))

    def release_time(self, arrival: float) -> float:
        """When a chunk that arrived at ``arrival`` may be passed on: after its own delay, and not before the
        chunk ahead of it."""
        t = max(self._release, arrival + self.draw())
        self._release = t
        return t

    def to_dict(self) -> dict:
        return {"latency_s": self.latency_s, "jitter_s": self.jitter_s, "correlation": self.correlation,
                "expires_at": self.expires_at, "seed": self.seed}
