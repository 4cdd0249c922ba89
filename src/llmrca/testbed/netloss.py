"""Packet loss on a mesh link, emulated at the proxy level: loopback drops nothing without ``tc netem`` and
privileges, so the link draws, for each chunk it forwards, which of the chunk's TCP segments netem would drop and
holds the chunk for the retransmissions that would recover them (``llmrca.sim.tcploss``: the simulator's model).
The bytes all arrive, in order, as TCP delivers them; only their timing follows the loss. A dropped segment at a
chunk's tail is recovered by fast retransmit when three more segments follow on the connection (a token stream's
next chunks), by the retransmission timer otherwise, as in the simulator's stream model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrca.sim.tcploss import DUPTHRESH, Loss, segments


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

    def to_dict(self) -> dict[str, Any]:
        m = self.model
        return {"loss": self.loss, "correlation": self.correlation, "expires_at": self.expires_at, "seed": self.seed,
                "segments_sent": m.sent, "segments_dropped": m.dropped, "connections_given_up": m.broken}

    def hold_s(self, nbytes: int) -> float:
        """How long a chunk of ``nbytes`` on its own waits for the recovery of its dropped segments (0 if none)."""
        return self.model.write_delay(segments(nbytes))

    def admit(self, entry: list, nbytes: int, now: float) -> Held | None:
        """A chunk of ``nbytes`` arrives at ``now``; ``entry`` is its ``[due, data]`` in the link's queue. Draws
        which of its segments netem drops and sets its due time for their recovery: a segment with three more of
        the chunk behind it is fast-retransmitted, one at the chunk's tail waits for the timer unless later chunks
        bring the three duplicate ACKs first (``Held.more``). None when nothing was dropped."""
        m = self.model
        n = segments(nbytes)
        inner = 0.0
        tails: list[list] = []
        for i in range(n):
            if not m.drop():
                continue
            k = m.retransmissions_lost()
            after = n - 1 - i
            if after >= DUPTHRESH:
                inner = max(inner, m.by_fast_retransmit(k, 0.0))
            else:
                tails.append([k, after, now + m.by_timer(k)])
        if not inner and not tails:
            entry[0] = now
            return None
        held = Held(self, entry, now + inner, tails)
        held.settle()
        return held


@dataclass
class Held:
    """A chunk waiting for the recovery of its dropped segments; its tail's may come sooner by fast retransmit."""

    loss: LinkLoss
    entry: list  # [due, data] in the link's queue
    inner_due: float  # when its segments with three behind them in the chunk are recovered
    tails: list[list]  # per dropped tail segment: [retransmissions lost, segments seen after it, due]

    def settle(self) -> None:
        self.entry[0] = max([self.inner_due, *(t[2] for t in self.tails)])

    def more(self, nbytes: int, now: float) -> bool:
        """A later chunk of ``nbytes`` arrived at ``now``: its segments are duplicate ACKs for the dropped tail;
        at the third, a segment is fast-retransmitted (a round trip, and the timer's steps for any lost
        retransmission). True while some tail segment still waits for its duplicate ACKs."""
        m = self.loss.model
        waiting = False
        for t in self.tails:
            if t[1] >= DUPTHRESH:
                continue
            t[1] += segments(nbytes)
            if t[1] >= DUPTHRESH and t[0] is not None:
                t[2] = min(t[2], now + m.rtt_s + (m.by_timer(t[0] - 1) if t[0] > 0 else 0.0))
            waiting |= t[1] < DUPTHRESH
        self.settle()
        return waiting


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
