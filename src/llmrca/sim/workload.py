"""The open-loop load: request arrival times and sizes (a Locust-like client, streaming chat completions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmrca.sim.config import SimConfig

# noise="realistic": the load's rate drifts around its mean (log-rate AR(1): sd, correlation time in s), as other
# clients come and go; value and source in docs/simulator.md ("Realistic noise").
LOAD_DRIFT = (0.1, 60.0)


@dataclass(frozen=True)
class Workload:
    arrivals: np.ndarray  # seconds on the run's clock (t=0 starts the observed window), sorted
    prompt_tokens: np.ndarray  # int64
    max_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # tokens the model would produce (<= max_tokens)

    def __len__(self) -> int:
        return len(self.arrivals)


def arrival_times(config: SimConfig, rate: float, t0: float, t1: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in [t0, t1) at mean ``rate``/s.

    ``constant``: ``users`` clients, each sending one request every ``users / rate`` seconds (a pacing with 5 %
    jitter, as Locust's constant throughput gives when responses take varying time), superposed.
    ``poisson``: exponential gaps. ``bursty``: a two-state modulated Poisson process (bursts of ``burst_factor``
    times the calm rate for ``burst_share`` of the time, mean rate ``rate``).
    """
    span = t1 - t0
    if config.arrival == "poisson":
        n = rng.poisson(rate * span)
        return np.sort(rng.uniform(t0, t1, n))
    if config.arrival == "bursty":
        s, f = config.burst_share, config.burst_factor
        calm = rate / (1.0 - s + s * f)
        peak = calm * f
        # Alternating calm/burst periods with exponential lengths; thinning of a Poisson process at the peak rate.
        mean_burst = config.burst_length_s
        mean_calm = mean_burst * (1.0 - s) / s
        edges, state, t = [t0], [], t0 - rng.uniform(0, mean_calm + mean_burst)
        burst = bool(rng.random() < s)
        while t < t1:
            t += rng.exponential(mean_burst if burst else mean_calm)
            state.append(burst)
            edges.append(min(max(t, t0), t1))
            burst = not burst
        n = rng.poisson(peak * span)
        cand = np.sort(rng.uniform(t0, t1, n))
        idx = np.searchsorted(np.asarray(edges[1:]), cand, side="right").clip(0, len(state) - 1)
        keep = np.where(np.asarray(state)[idx], 1.0, calm / peak) > rng.random(n)
        return cand[keep]
    users = config.users
    period = users / rate
    cycles = int(np.ceil(span / period)) + 2
    phase = rng.uniform(0.0, period, users)
    gaps = period * (1.0 + 0.05 * rng.standard_normal((users, cycles)))
    gaps[:, 0] = 0.0
    times = t0 + phase[:, None] + np.cumsum(gaps, axis=1)
    times = times[(times >= t0) & (times < t1)]
    return np.sort(times)


def drift(times: np.ndarray, t0: float, t1: float, rng: np.random.Generator,
          sd: float = LOAD_DRIFT[0], tau: float = LOAD_DRIFT[1]) -> np.ndarray:
    """Arrival times re-timed so the rate follows ``exp(AR(1))`` around its mean over ``[t0, t1)``.

    The times are read as operational time and mapped through the inverse of the cumulative intensity, so the
    count is unchanged and the local rate is multiplied by the drift (normalised to mean 1 over the span).
    """
    if len(times) == 0 or sd <= 0:
        return times
    cells = max(1, int(np.ceil(t1 - t0)))  # about 1 s each
    grid = t0 + (t1 - t0) * np.arange(cells + 1) / cells
    rho = float(np.exp(-(t1 - t0) / cells / tau))
    x = np.empty(len(grid))
    x[0] = rng.normal(0.0, sd)
    e = rng.normal(0.0, sd * np.sqrt(1.0 - rho * rho), len(grid))
    for i in range(1, len(grid)):
        x[i] = rho * x[i - 1] + e[i]
    m = np.exp(x[:-1])
    cum = np.concatenate([[0.0], np.cumsum(m)])
    cum = t0 + cum * (t1 - t0) / cum[-1]  # the operational clock at each grid time
    return np.interp(times, cum, grid)


def generate(config: SimConfig, rate: float, t0: float, t1: float, rng: np.random.Generator) -> Workload:
    t = arrival_times(config, rate, t0, t1, rng)
    if config.noise == "realistic":  # its own stream: noise="none" keeps every other draw
        t = drift(t, t0, t1, np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0]))
    n = len(t)
    sp = config.token_spread
    prompt = np.rint(config.prompt_tokens * (1.0 + sp * rng.standard_normal(n)))
    prompt = np.clip(prompt, 8, 4 * config.prompt_tokens).astype(np.int64)
    max_tok = np.full(n, config.output_tokens, dtype=np.int64)
    # Most answers run to max_tokens; `eos_share` of them end earlier, at a length spread below it.
    stops = rng.random(n) < config.eos_share
    want = np.rint(config.output_tokens * rng.uniform(0.35, 1.0, n) * (1.0 + sp * rng.standard_normal(n)))
    out = np.where(stops, np.clip(want, 1, config.output_tokens - 1), max_tok).astype(np.int64)
    return Workload(t, prompt, max_tok, out)


def surge(wl: Workload, start: float, end: float, factor: float, share: float, limit: int,
          rng: np.random.Generator) -> Workload:
    """The workload with a prompt surge (``prompt-surge``): of the requests sent in ``[start, end)``, a ``share``
    (drawn per request) carry prompts ``factor`` times as long, held to ``limit`` tokens (the model's context less
    the answer: a client truncates what the server would refuse). Arrival times and answers are unchanged."""
    sent = (wl.arrivals >= start) & (wl.arrivals < end)
    hit = sent & (rng.random(len(wl)) < share)
    longer = np.minimum(np.rint(wl.prompt_tokens * factor), max(int(limit), 8)).astype(np.int64)
    prompt = np.where(hit, np.maximum(longer, wl.prompt_tokens), wl.prompt_tokens).astype(np.int64)
    return Workload(wl.arrivals, prompt, wl.max_tokens, wl.output_tokens)
