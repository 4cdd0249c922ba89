"""PDiagnose (Hou et al., ISPA 2021, "Diagnosing Performance Issues in Microservices with Heterogeneous Data
Source"): a light anomaly detector per data source, each voting for the services it finds anomalous; the
votes, weighted per source, rank the services.

The normal period is the metrics window before ``inject_time`` and the abnormal one the window from it on
(``window`` samples each side, as every metric method here); logs and spans are counted on the same rows
(``llmrca.methods.multisource``), so the three detectors compare the same two periods.

- **Metrics (KDE).** Per series, standardised by the mean/std of the normal window (constant baselines as in
  ``llmrca.methods.scoring``), a Gaussian kernel density of the normal values (bandwidth 1.06·n^(-1/5),
  Silverman's rule on unit-variance data) defines the normal range: a value is outside it when its log density
  is below the lowest leave-one-out log density of a normal value. A series is anomalous when at least
  ``kde_fraction`` of the abnormal window lies outside; its severity is the mean shortfall (in nats) of the
  abnormal values' log density below that bound. A service gets the metric vote when one of its series is
  anomalous.
- **Logs.** Per service, lines that are errors by level or by a failure word (``multisource.ERROR_KEYWORDS``)
  and lines per template (given, else Drain3) are counted in both windows. A count is anomalous when the
  abnormal window's total departs from the normal rate (Poisson: z = (observed − expected) / √max(expected,
  1), expected = normal total × abnormal rows / normal rows) by more than ``log_z``: upwards for errors,
  either way for a template (a template that vanishes or floods). A service gets the log vote when one of its
  counts is anomalous.
- **Traces.** Per invocation type (caller, callee, operation: ``llmrca.methods.spans``) the SLO is the mean +
  ``trace_k``·σ of the normal spans' durations; a span above it, or failed, is abnormal. An abnormal span none
  of whose children is abnormal is where the slowness starts, and it points at its callee (for a client span
  that names its peer, the peer). A service gets the trace vote when the number of such origins on calls to it
  in the abnormal window exceeds the normal rate (the same Poisson test, ``trace_z``, upwards).

**Voting.** score = Σ over sources of weight × vote (``weight_metrics``, ``weight_logs``, ``weight_traces``).
Ties, frequent with three binary votes, are broken by a secondary score: the sum over sources of each
service's severity divided by the largest severity of that source over all services (a source's severity: the
largest metric severity, the largest |z| of its log counts, the trace z), then by name. The ranking lists
every service of the observation; its scores are the vote totals (the secondary score orders services with
equal totals).

Sources: metrics, logs and traces by default (``MethodError`` naming what a case lacks); ``require_all=False``
votes with the metrics and whichever of logs and traces a case has. Deterministic (``seed`` unused).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from llmrca.case import Observation, service_of
from llmrca.case.templates import MODES
from llmrca.errors import MethodError
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.by_service import finite_window
from llmrca.methods.multisource import error_grid, grid, template_grid
from llmrca.methods.params import check_bool, check_float
from llmrca.methods.scoring import baseline
from llmrca.methods.spans import group_slo, load_spans, require_sources
from llmrca.methods.window import DEFAULT_WINDOW, MetricWindow, check_window, metric_window

SOURCES = ("metrics", "logs", "traces")
Votes = tuple[dict[str, bool], dict[str, float]]  # per service: (vote?, severity)


class PDiagnose(BaseMethod):
    """Parameters: ``window`` (samples each side), ``kde_fraction``, ``log_z``, ``trace_k``, ``trace_z``,
    ``weight_metrics``, ``weight_logs``, ``weight_traces``, ``require_all``, ``templates`` (as in mm-baro)."""

    name = "pdiagnose"
    family = "multi-source"
    needs = frozenset(SOURCES)

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window": DEFAULT_WINDOW, "kde_fraction": 0.3, "log_z": 3.0, "trace_k": 3.0, "trace_z": 3.0,
                "weight_metrics": 1.0, "weight_logs": 1.0, "weight_traces": 1.0, "require_all": True,
                "templates": "auto"}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        inf = float("inf")
        window = check_window(self.name, p["window"], minimum=3)
        kde_fraction = check_float(self.name, "kde_fraction", p["kde_fraction"], low=0.0, high=1.0)
        log_z = check_float(self.name, "log_z", p["log_z"], low=0.0, high=inf)
        trace_k = check_float(self.name, "trace_k", p["trace_k"], low=0.0, high=inf, low_open=False)
        trace_z = check_float(self.name, "trace_z", p["trace_z"], low=0.0, high=inf)
        weights = {s: check_float(self.name, f"weight_{s}", p[f"weight_{s}"], low=0.0, high=inf,
                                  low_open=False) for s in SOURCES}
        require_all = check_bool(self.name, "require_all", p["require_all"])
        mode = p["templates"]
        if mode not in MODES:
            raise MethodError(f"method {self.name!r}: parameter templates must be one of {', '.join(MODES)}, "
                              f"got {mode!r}")
        require_sources(self.name, obs, SOURCES if require_all else ("metrics",))
        if obs.inject_time is None:
            raise MethodError(f"{self.name} needs inject_time: it compares the windows before and after it")
        w = finite_window(metric_window(obs, window=window, min_pre=3, min_post=1))
        votes: dict[str, Votes] = {"metrics": metric_votes(w, kde_fraction)}
        if obs.has("logs"):
            votes["logs"] = log_votes(obs, w, self.name, mode, log_z)
        if obs.has("traces"):
            votes["traces"] = trace_votes(obs, w, self.name, trace_k, trace_z)
        return vote_ranking(obs.services, votes, weights)


def metric_votes(w: MetricWindow, fraction: float) -> Votes:
    """Per service: (anomalous series?, largest series severity) by the KDE detector of the module docs."""
    pre, post = w.pre, w.post
    center, scale = baseline(pre, post, "standard")
    varies = scale > 0
    flags: dict[str, bool] = {}
    sev: dict[str, float] = {}
    for c in w.columns:
        flags.setdefault(service_of(c), False)
        sev.setdefault(service_of(c), 0.0)
    if not varies.any():
        return flags, sev
    zp = (pre[:, varies] - center[varies]) / scale[varies]
    zq = (post[:, varies] - center[varies]) / scale[varies]
    n = zp.shape[0]
    h = 1.06 * n ** (-0.2)
    norm = np.log(h * np.sqrt(2.0 * np.pi))
    # Log density of each abnormal value, and leave-one-out log density of each normal value (rows, columns).
    dq = -0.5 * ((zq[:, None, :] - zp[None, :, :]) / h) ** 2
    log_q = logsumexp(dq, axis=1) - np.log(n) - norm
    dp = -0.5 * ((zp[:, None, :] - zp[None, :, :]) / h) ** 2
    dp[np.arange(n), np.arange(n), :] = -np.inf
    log_p = logsumexp(dp, axis=1) - np.log(n - 1) - norm
    bound = log_p.min(axis=0)
    outside = log_q < bound
    anomalous = outside.mean(axis=0) >= fraction
    severity = np.maximum(bound - log_q, 0.0).mean(axis=0)
    for c, a, s in zip(np.asarray(w.columns, dtype=object)[varies], anomalous, severity):
        svc = service_of(c)
        flags[svc] = flags[svc] or bool(a)
        sev[svc] = max(sev[svc], float(s))
    return flags, sev


def poisson_z(before: np.ndarray, after: np.ndarray, n_before: float, n_after: float) -> np.ndarray:
    """(after − expected) / √max(expected, 1), expected = before × n_after / n_before."""
    expected = np.asarray(before, dtype=float) * (n_after / n_before)
    return (np.asarray(after, dtype=float) - expected) / np.sqrt(np.maximum(expected, 1.0))


def _window_rows(frame: pd.DataFrame, w: MetricWindow) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = frame["time"].to_numpy(dtype=float)
    lo = int(np.searchsorted(t, w.times[0], side="left"))
    rows = frame.iloc[lo: lo + len(w.times)].drop(columns=["time"])
    return rows.iloc[: w.split], rows.iloc[w.split:]


def log_votes(obs: Observation, w: MetricWindow, method: str, mode: str, z_max: float
              ) -> Votes:
    """Per service: (anomalous error or template count?, largest |z|) by the log detector of the module
    docs."""
    flags: dict[str, bool] = {}
    sev: dict[str, float] = {}
    for frame, two_sided in ((error_grid(obs, method), False), (template_grid(obs, method, mode), True)):
        pre, post = _window_rows(frame, w)
        if not len(pre) or not len(post) or not pre.shape[1]:
            continue
        z = poisson_z(pre.sum().to_numpy(), post.sum().to_numpy(), len(pre), len(post))
        z = np.abs(z) if two_sided else np.maximum(z, 0.0)
        for c, v in zip(pre.columns, z):
            svc = service_of(c)
            flags[svc] = flags.get(svc, False) or bool(v > z_max)
            sev[svc] = max(sev.get(svc, 0.0), float(v))
    return flags, sev


def trace_votes(obs: Observation, w: MetricWindow, method: str, k: float, z_max: float
                ) -> Votes:
    """Per service: (more anomaly origins on calls to it than normal?, z) by the trace detector of the
    docs."""
    _, dt = grid(obs, method)
    sp = load_spans(obs, method)
    inject = float(obs.inject_time)
    span_s = max(inject - float(w.times[0]), float(w.times[-1]) + dt - inject)
    hist_t, det_t = sp.split(inject, span_s)
    if not hist_t.any() or not det_t.any():
        raise MethodError(f"{method}: the traces need spans both before and after inject_time")
    hist, det = hist_t[sp.trace], det_t[sp.trace]
    sep = np.full(len(sp), "\x1f", dtype=object)
    codes, kinds = pd.factorize(pd.Series(sp.caller + sep + sp.callee + sep + sp.operation), sort=True)
    _, mu, sd = group_slo(codes, sp.duration, hist, len(kinds))
    with np.errstate(invalid="ignore"):
        abnormal = (sp.duration > mu[codes] + k * sd[codes]) | sp.error
    origin = abnormal & ~sp.has_child(abnormal)
    callee_codes, callees = pd.factorize(pd.Series(sp.callee), sort=True)
    m = len(callees)
    n_hist = np.bincount(callee_codes[hist], minlength=m).astype(float)
    n_det = np.bincount(callee_codes[det], minlength=m).astype(float)
    o_hist = np.bincount(callee_codes[hist & origin], minlength=m).astype(float)
    o_det = np.bincount(callee_codes[det & origin], minlength=m).astype(float)
    rate = np.divide(o_hist, n_hist, out=np.zeros(m), where=n_hist > 0)
    z = (o_det - rate * n_det) / np.sqrt(np.maximum(rate * n_det, 1.0))
    flags = {str(s): bool(v > z_max) for s, v in zip(callees, z)}
    sev = {str(s): float(max(v, 0.0)) for s, v in zip(callees, z)}
    return flags, sev


def vote_ranking(services: list[str], votes: dict[str, Votes], weights: dict[str, float]) -> Ranking:
    """Services by (weighted votes, secondary score, name), descending; scores are the vote totals."""
    every = sorted({*services, *(s for f, _ in votes.values() for s in f)})
    total = {s: 0.0 for s in every}
    second = {s: 0.0 for s in every}
    for src, (flags, sev) in votes.items():
        top = max((v for v in sev.values() if np.isfinite(v)), default=0.0)
        for s in every:
            if flags.get(s, False):
                total[s] += weights[src]
            v = sev.get(s, 0.0)
            if top > 0 and np.isfinite(v):
                second[s] += v / top
    order = sorted(every, key=lambda s: (-total[s], -second[s], s))
    return Ranking(tuple(order), tuple(total[s] for s in order))
