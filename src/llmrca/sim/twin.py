"""The fault-free twin of a fault case (same configuration, same seed, no fault), and the check that the fault moved
something an RCA method can observe.

Both runs draw the same random numbers until the fault changes a decision, so before the fault they are identical
and the difference after it is the fault's doing plus, once routing or batching diverge, noise of the column's own
size. A column has *moved* when, over the window from the injection to the fault's end plus one rate window, the
mean of (fault run − twin) exceeds both

* ``NOISE_SIGMAS`` times the column's standard deviation in the twin before the injection (its own variability:
  a diverged run shifts a window mean by about ``sqrt(2 / n)`` of that, far below three), and
* the column's resolution (the smallest step between its distinct values in the twin, e.g. a histogram quantile
  that only takes bucket bounds; for a constant column, float noise of 1e-9 relative).

The metric columns come first. When none moved (a delay that bucketed mesh quantiles hide, say), the traces are
series too: per step, for every caller and callee, the mean of how much longer the caller's span lasted than the
callee's (the proxy's ``process_request`` around a replica's ``llm_request``: the wire time a network fault towards
that replica grows), and the count of error spans per service and operation; they are judged by the same rule. A fault case with no moved series
carries a label its telemetry does not support: generation stops with :class:`NoObservableEffectError`, naming
fault, target and parameters.

The twin is cached per (configuration, seed): the power cap relative to the draw (``depth``) reads the target's
draw from the same twin that the check compares against.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case import TIME, Case
from llmrca.errors import LlmrcaError
from llmrca.faults import Injection
from llmrca.sim.config import SimConfig

NOISE_SIGMAS = 3.0
DRAW_WINDOW_S = 60.0  # the stretch before the injection whose mean GPU power is the target's operating draw
FLOAT_REL = 1e-9
_CACHE: OrderedDict[tuple[str, int], Any] = OrderedDict()
_CACHE_SIZE = 2


class NoObservableEffectError(LlmrcaError):
    """A fault case whose metrics do not differ from its fault-free twin beyond noise."""


@dataclass(frozen=True)
class Move:
    column: str
    delta: float  # mean of (fault − twin) over the window after the injection
    noise: float  # the column's standard deviation in the twin before the injection
    resolution: float

    @property
    def ratio(self) -> float:
        return abs(self.delta) / max(self.noise, self.resolution, 1e-300)


def fault_free(config: SimConfig, seed: int) -> Any:
    """The twin run (a ``SimRun``) of ``config`` and ``seed`` without a fault, cached."""
    from llmrca.sim.run import run

    key = (json.dumps(config.to_dict(), sort_keys=True, default=str), int(seed))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    sim = run(config, None, seed)
    _CACHE[key] = sim
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return sim


def power_draw(config: SimConfig, seed: int, target: str, start: float) -> float:
    """Mean power of ``target``'s GPU over the ``DRAW_WINDOW_S`` before ``start`` (run clock) in the twin: the
    operating point a relative power cap is placed under."""
    sim = fault_free(config, seed)
    log = sim.engines[target].log.arrays()
    t, p = log["t"], log["power"]
    sel = (t > start - DRAW_WINDOW_S) & (t <= start)
    if not sel.any():
        sel = t <= start
    return float(np.mean(p[sel]))


def _resolution(x: np.ndarray) -> float:
    v = np.unique(x[np.isfinite(x)])
    tol = FLOAT_REL * max(1.0, float(np.max(np.abs(v)))) if len(v) else FLOAT_REL
    if len(v) < 2:
        return tol
    gaps = np.diff(v)
    gaps = gaps[gaps > tol]
    return float(gaps.min()) if len(gaps) else tol


def moves(fault: pd.DataFrame, twin: pd.DataFrame, inject_time: float, end: float) -> list[Move]:
    """Every metric column, with how far the fault run's mean after ``inject_time`` (to ``end``, unix s) left the
    twin's, its noise and resolution; sorted by that distance in units of noise, largest first."""
    if list(fault.columns) != list(twin.columns) or len(fault) != len(twin):
        raise LlmrcaError("fault run and twin have different metric tables (columns or rows differ)")
    t = fault[TIME].to_numpy(dtype=float)
    pre = t < inject_time
    post = (t >= inject_time) & (t <= end)
    out = []
    for c in fault.columns:
        if c == TIME:
            continue
        a = fault[c].to_numpy(dtype=float)
        b = twin[c].to_numpy(dtype=float)
        d = (a - b)[post]
        d = d[np.isfinite(d)]
        base = b[pre]
        base = base[np.isfinite(base)]
        delta = float(d.mean()) if len(d) else 0.0
        noise = float(base.std()) if len(base) > 1 else 0.0
        out.append(Move(c, delta, noise, _resolution(b)))
    return sorted(out, key=lambda m: -m.ratio)


def moved(m: Move) -> bool:
    return abs(m.delta) > NOISE_SIGMAS * m.noise and abs(m.delta) > m.resolution


def span_series(traces: pd.DataFrame, times: np.ndarray, step: float) -> pd.DataFrame:
    """Trace-derived series on the metrics' time grid: ``call:<caller>-><callee>:<operation>`` (per step, by the
    caller span's start, the mean in ms of how much longer the caller's span lasted than its child's span in the
    callee: the time spent on the wire and in the caller around the call, which a delay towards the callee grows
    while the callee's own work hides nothing of it) and ``errors:<service>:<operation>`` (error spans per step)."""
    out: dict[str, np.ndarray] = {TIME: np.asarray(times, dtype=float)}
    n = len(times)
    if traces is None or not len(traces) or n == 0:
        return pd.DataFrame(out)
    t0 = float(times[0])
    start = traces["start_time_us"].to_numpy(dtype=float) / 1e6
    dur = traces["duration_us"].to_numpy(dtype=float) / 1e3
    svc = traces["service"].astype(str).to_numpy()
    op = traces["operation"].astype(str).to_numpy()
    sid = traces["span_id"].astype(str).to_numpy()
    pos = {k: i for i, k in enumerate(sid)}
    parent = traces["parent_span_id"].astype(object).where(traces["parent_span_id"].notna(), "").astype(str)
    pidx = np.array([pos.get(p, -1) if p else -1 for p in parent.tolist()], dtype=np.int64)
    cross = (pidx >= 0)
    cross[cross] = svc[pidx[cross]] != svc[cross]
    b = np.floor((start - t0) / step).astype(np.int64)
    keys: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ci = np.nonzero(cross)[0]
    pi = pidx[ci]
    pb = np.floor((start[pi] - t0) / step).astype(np.int64)
    for k in sorted({f"call:{svc[p]}->{svc[c]}:{op[p]}" for p, c in zip(pi.tolist(), ci.tolist())}):
        keys[k] = (np.zeros(n), np.zeros(n))
    for p, c, bb in zip(pi.tolist(), ci.tolist(), pb.tolist()):
        if 0 <= bb < n:
            acc = keys[f"call:{svc[p]}->{svc[c]}:{op[p]}"]
            acc[0][bb] += dur[p] - dur[c]
            acc[1][bb] += 1.0
    for k, (tot, cnt) in keys.items():
        out[k] = np.where(cnt > 0, tot / np.maximum(cnt, 1.0), np.nan)
    err = (traces["status"].astype(str).to_numpy() == "ERROR")
    for k in sorted({f"errors:{a}:{o}" for a, o in zip(svc.tolist(), op.tolist())}):
        out[k] = np.zeros(n)
    for a, o, bb, e in zip(svc.tolist(), op.tolist(), b.tolist(), err.tolist()):
        if e and 0 <= bb < n:
            out[f"errors:{a}:{o}"][bb] += 1.0
    return pd.DataFrame(out)


def _aligned(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cols = [TIME, *sorted((set(a.columns) | set(b.columns)) - {TIME})]
    a, b = a.reindex(columns=cols), b.reindex(columns=cols)
    counts = [c for c in cols if c.startswith("errors:")]  # no error span of a kind is a count of zero
    a[counts] = a[counts].fillna(0.0)
    b[counts] = b[counts].fillna(0.0)
    return a, b


def check(case: Case, config: SimConfig, seed: int, injections: Any = None) -> list[Move]:
    """The columns of ``case`` (a simulated fault case) that moved beyond noise against its twin; raises
    :class:`NoObservableEffectError` when none did. Fault-free cases pass unchecked (an empty list).

    A multi-fault case (``injections``: the list it was simulated with) is checked once per fault, each against
    the run with the *other* faults only (same seed), over that fault's own window: a fault whose removal changes
    nothing beyond noise is not shown by the case's telemetry, however loud the other fault is."""
    truth = case.truth
    if truth.service is None:
        return []
    faults = list(truth.faults) if len(truth.faults) > 1 else []
    if not faults or injections is None or isinstance(injections, Injection) or len(injections) < 2:
        return _hits(case, fault_free(config, seed), float(case.observation.inject_time),
                     float(truth.end) + config.rate_window, config, seed,
                     f"fault {truth.fault_type!r} on {truth.service!r} with {_params_text(truth.params)}",
                     "its fault-free twin")
    from llmrca.sim.run import run

    out: list[Move] = []
    injections = list(injections)
    for i, f in enumerate(faults):
        others = injections[:i] + injections[i + 1:]
        twin = run(config, others if len(others) > 1 else others[0], seed)
        out += _hits(case, twin, float(f.start), float(f.end) + config.rate_window, config, seed,
                     f"fault {f.fault_type!r} on {f.service!r} (fault {i + 1} of {len(faults)}) with "
                     f"{_params_text(dict(f.params))}", "the same run without it")
    return out


def _hits(case: Case, twin: Any, start: float, end: float, config: SimConfig, seed: int, what: str,
          against: str) -> list[Move]:
    obs = case.observation
    got = moves(obs.metrics, twin.metrics, start, end)
    hits = [m for m in got if moved(m)]
    if not hits and obs.traces is not None and len(obs.traces):
        from llmrca.sim.traces import spans_from_record

        times = obs.metrics[TIME].to_numpy(dtype=float)
        mine = span_series(obs.traces, times, config.step)
        theirs = span_series(spans_from_record(twin.record), times, config.step)
        got = moves(*_aligned(mine, theirs), start, end) + got
        got.sort(key=lambda m: -m.ratio)
        hits = [m for m in got if moved(m)]
    if not hits:
        best = got[0] if got else None
        near = (f"; the largest change is {best.column} by {best.delta:.4g} (noise {best.noise:.3g}, resolution "
                f"{best.resolution:.3g})" if best else "")
        raise NoObservableEffectError(
            f"{what} changes no metric or trace series beyond noise against {against} (seed {seed}){near}: the "
            "case would carry a label its telemetry does not show; choose a stronger fault")
    return hits


def _params_text(params: dict[str, Any]) -> str:
    parts = []
    for k, v in params.items():
        if isinstance(v, float):
            parts.append(f"{k}={v:.6g}")
        elif isinstance(v, dict):
            parts.append(f"{k}=({_params_text(v)})")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "its defaults"


def ratio_text(m: Move) -> str:
    return "inf" if not math.isfinite(m.ratio) else f"{m.ratio:.1f}"
