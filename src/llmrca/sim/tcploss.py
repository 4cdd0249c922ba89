"""What packet loss on a TCP connection costs the bytes it carries: one model of Linux's loss recovery, used by the
simulator (a request's wire time towards a lossy pod) and by the live mesh (which holds each chunk for it, since
loopback drops nothing without privileges).

The loss is netem's (Chaos Mesh NetworkChaos ``action: loss``): every segment sent towards the target is dropped
with probability ``loss``; successive drops are correlated the way netem correlates its draws (each uniform mixes
a fresh one with the previous one, weight ``correlation``). A dropped segment is recovered by the sender:

* by fast retransmit (RFC 5681: three duplicate ACKs) when at least ``DUPTHRESH`` segments of the same write follow
  it: about one round trip later;
* otherwise (a small request, the tail of a write) by the retransmission timer: RTO = SRTT + max(4·RTTVAR,
  TCP_RTO_MIN) as Linux computes it, so ``TCP_RTO_MIN`` (200 ms) plus the round trip on a sub-millisecond cluster
  network (RFC 6298 asks for a 1 s floor; Linux uses 200 ms; its tail-loss probe waits as long with one segment in
  flight);
* a lost retransmission waits again, the timer doubled each time (RFC 6298 §5.5, exponential back-off), up to
  ``TCP_RTO_MAX``; after ``TCP_RETRIES2`` retransmissions Linux gives the connection up (ETIMEDOUT), some 15 min
  later, long after any gateway's timeout.

Segments lost in one write are recovered in parallel (SACK), so a write is late by its slowest segment's recovery.
Not modelled: connection set-up (the gateway's and the proxy's connections are pooled and kept alive), lost ACKs
(the next cumulative ACK covers them), congestion-window growth after a loss (small writes never fill a window).
"""

from __future__ import annotations

import math

import numpy as np

TCP_RTO_MIN_S = 0.2  # Linux's TCP_RTO_MIN (HZ/5)
TCP_RTO_MAX_S = 120.0  # Linux's TCP_RTO_MAX
TCP_RETRIES2 = 15  # net.ipv4.tcp_retries2: retransmissions of a segment before the connection is given up
DUPTHRESH = 3  # duplicate ACKs that trigger a fast retransmit (RFC 5681)
MSS = 1448  # payload bytes per segment: a 1500-byte MTU less IP and TCP headers with timestamps
REQUEST_BASE_BYTES = 420  # HTTP request line, headers and the JSON around the prompt (our estimate)
BYTES_PER_TOKEN = 6  # prompt text per token in the request's JSON (a word and a space, on average)


def segments(nbytes: float) -> int:
    """TCP segments that carry ``nbytes`` of payload."""
    return max(1, math.ceil(float(nbytes) / MSS))


def request_segments(prompt_tokens: int) -> int:
    """Segments of a chat-completion request with a prompt of ``prompt_tokens``."""
    return segments(REQUEST_BASE_BYTES + BYTES_PER_TOKEN * int(prompt_tokens))


class Loss:
    """netem loss towards one pod, and what each write towards it waits for its lost segments."""

    def __init__(self, loss: float, correlation: float, rng: np.random.Generator, rtt_s: float = 0.001):
        if not (0.0 <= loss <= 1.0 and math.isfinite(loss)):
            raise ValueError(f"loss must be a fraction in [0, 1], is {loss!r}")
        if not (0.0 <= correlation <= 1.0 and math.isfinite(correlation)):
            raise ValueError(f"correlation must be in [0, 1], is {correlation!r}")
        self.loss = float(loss)
        self.correlation = float(correlation)
        self.rng = rng
        self.rtt_s = float(rtt_s)
        self._last = 0.5
        self.dropped = 0  # segments dropped (first transmissions and retransmissions)
        self.sent = 0
        self.broken = 0  # writes whose connection gave up (TCP_RETRIES2 exhausted)

    def drop(self) -> bool:
        """One segment through the lossy link: True when netem drops it."""
        c = self.correlation
        u = (1.0 - c) * float(self.rng.random()) + c * self._last
        self._last = u
        self.sent += 1
        lost = u < self.loss
        self.dropped += lost
        return lost

    @property
    def rto_s(self) -> float:
        """The first retransmission timeout on an established connection: Linux's SRTT + max(4·RTTVAR, RTO_MIN)."""
        return TCP_RTO_MIN_S + self.rtt_s

    def retransmissions_lost(self) -> int | None:
        """How many retransmissions of a dropped segment are dropped too (each one a fresh draw); None when
        ``TCP_RETRIES2`` run out and the connection is given up (``broken`` counts it)."""
        k = 0
        while self.drop():
            k += 1
            if k >= TCP_RETRIES2:
                self.broken += 1
                return None
        return k

    def by_timer(self, k: int | None) -> float:
        """Delay of a dropped segment recovered by the retransmission timer, ``k`` retransmissions lost as well:
        RTO, then the doubled RTO for each of them (RFC 6298 §5.5); the time until the connection is given up when
        ``k`` is None."""
        n = TCP_RETRIES2 if k is None else k
        out, step = 0.0, self.rto_s
        for _ in range(n + 1):
            out += step
            step = min(2.0 * step, TCP_RTO_MAX_S)
        return out

    def by_fast_retransmit(self, k: int | None, dupacks_after_s: float) -> float:
        """Delay of a dropped segment recovered by fast retransmit once the third segment after it has arrived
        (``dupacks_after_s`` later): a round trip more, then the timer's steps for each lost retransmission;
        never later than the timer alone would have been."""
        if k is None:
            return self.by_timer(None)
        fast = dupacks_after_s + self.rtt_s + (self.by_timer(k - 1) if k > 0 else 0.0)
        return min(fast, self.by_timer(k))

    def write_delay(self, n_segments: int) -> float:
        """Extra time until a write of ``n_segments`` sent back to back is all delivered (0 when nothing was lost):
        a dropped segment with ``DUPTHRESH`` segments after it is fast-retransmitted, one at the write's tail waits
        for the timer. When a segment's retransmissions run out the connection is given up: the time until then;
        every caller's timeout has fired long before."""
        if self.loss <= 0.0:
            self.sent += n_segments
            return 0.0
        worst = 0.0
        for i in range(int(n_segments)):
            if not self.drop():
                continue
            k = self.retransmissions_lost()
            fast = n_segments - 1 - i >= DUPTHRESH
            worst = max(worst, self.by_fast_retransmit(k, 0.0) if fast else self.by_timer(k))
        return worst

    def stream_delay(self, n_chunks: int, gap_s: float) -> float:
        """How much later the end of a stream of ``n_chunks`` one-segment chunks, ``gap_s`` apart, is delivered:
        a dropped chunk is fast-retransmitted once three later chunks have arrived (3·gap later), or recovered by
        the timer if that comes first or fewer than three follow; TCP delivers in order, so the end waits for the
        slowest recovery less the time its chunk was sent before the end."""
        late = 0.0
        for j in range(int(n_chunks)):
            if not self.drop():
                continue
            k = self.retransmissions_lost()
            after = n_chunks - 1 - j
            d = self.by_fast_retransmit(k, DUPTHRESH * gap_s) if after >= DUPTHRESH else self.by_timer(k)
            late = max(late, d - after * gap_s)
        return late
