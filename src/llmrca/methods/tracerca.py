"""TraceRCA (Li et al., IWQoS'21, "Practical Root Cause Localization for Microservice Systems via Trace
Analysis"): a microservice that more abnormal and fewer normal traces pass through is more likely the root
cause.

1. **Invocation anomaly detection with feature selection.** Invocations are the calls spans measure, typed by
   (caller, callee, operation) (``llmrca.methods.spans``). Per type and feature, the history (traces that
   ended before ``inject_time``) gives mean μ and standard deviation σ, and a value's anomaly severity is
   α = |v − μ| / σ. A feature is *useful* for a type when its mean severity over the detection traces exceeds
   the history's by more than ``feature_threshold`` times the history's (ᾱ_det − ᾱ_hist > δ_fs · ᾱ_hist); only
   useful features can make an invocation abnormal, which keeps the ordinary spread of unaffected calls out.
   Features: latency (the span's duration; abnormal when α > ``anomaly_threshold``) and error (status ERROR;
   useful when the type's error rate rises by more than δ_fs times its history rate, abnormal when the span
   failed).
2. **Trace anomaly**: a detection trace is abnormal when one of its invocations is.
3. **Suspicious microservice sets**: each detection trace is the set of services taking part in its
   invocations (callers and callees; the outside client is no service). Frequent sets of the abnormal traces
   (Apriori, support ≥ ``min_support``, at most ``max_set_size`` services) are scored by the Jaccard index of
   "contains the set" and "is abnormal" over the detection traces, JI = 1 / (1/support + 1/confidence − 1),
   with support = share of abnormal traces containing the set and confidence = share of the traces containing
   the set that are abnormal. JI orders sets exactly as the harmonic mean of support and confidence does (H =
   2·JI / (1 + JI)), the score RCAEval's re-implementation ranks operations by.
4. **Ranking**: among the ``top_k`` sets, a service's score is max over sets S containing it of
   JI(S) · IS(m, S), the in-set score IS = |in − out|: in (out) counts the abnormal traces containing S in
   which the service is the callee (caller) of an abnormal invocation with another service. Anomalies
   propagate from callee to caller, so the service where they start is called abnormally without calling
   abnormally itself, while the services above it do both. ``in_set_score=False`` drops IS (score = best JI),
   as RCAEval does.

Candidates are services. Services without a score (not in the traces, or in no frequent set) come last with
score 0, by name. When nothing is abnormal after the injection (or no service scores above 0) the method
abstains (``NoAnswer``) instead of returning a ranking that would only be the services' name order; without
a normal history or traces after the injection it cannot run (``MethodError``).
Deterministic, no randomness (``seed`` unused).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.params import check_bool, check_float, check_int
from llmrca.methods.spans import (
    Spans,
    case_services,
    check_window_s,
    full_ranking,
    group_slo,
    load_spans,
    require_inject_time,
)


class TraceRCA(BaseMethod):
    """Parameters: ``window_s`` (seconds of traces each side of the injection; None: all),
    ``anomaly_threshold`` (δ_ad, severity above which a useful feature is abnormal), ``feature_threshold``
    (δ_fs), ``min_support``, ``max_set_size``, ``top_k`` (sets kept for the ranking), ``in_set_score``."""

    name = "tracerca"
    family = "trace"
    needs = frozenset({"traces"})

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window_s": None, "anomaly_threshold": 3.0, "feature_threshold": 1.0, "min_support": 0.1,
                "max_set_size": 1, "top_k": 100, "in_set_score": True}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        window_s = check_window_s(self.name, p["window_s"])
        d_ad = check_float(self.name, "anomaly_threshold", p["anomaly_threshold"], low=0.0, high=float("inf"))
        d_fs = check_float(self.name, "feature_threshold", p["feature_threshold"], low=0.0, high=float("inf"),
                           low_open=False)
        min_support = check_float(self.name, "min_support", p["min_support"], low=0.0, high=1.0)
        max_size = check_int(self.name, "max_set_size", p["max_set_size"], minimum=1)
        top_k = check_int(self.name, "top_k", p["top_k"], minimum=1)
        use_is = check_bool(self.name, "in_set_score", p["in_set_score"])
        inject = require_inject_time(self.name, obs)
        sp = load_spans(obs, self.name)
        hist_t, det_t = sp.split(inject, window_s)
        if not hist_t.any():
            raise MethodError(f"{self.name}: no trace ended before inject_time, so there is no normal "
                              "history")
        if not det_t.any():
            raise MethodError(f"{self.name}: no trace after inject_time to diagnose")
        abnormal = abnormal_invocations(sp, hist_t, det_t, d_ad, d_fs)
        if not abnormal.any():
            raise NoAnswer(f"{self.name}: no abnormal invocation after inject_time (no useful feature "
                              f"moved beyond {d_ad:g}σ), so there is nothing to localize")
        scores = microservice_scores(sp, det_t, abnormal, min_support, max_size, top_k, use_is)
        if not any(v > 0 for v in scores.values()):
            raise NoAnswer(f"{self.name}: abnormal traces found, but no service scored above 0 (no "
                              "frequent set, or callers and callees of the abnormal calls balance out)")
        return full_ranking(scores, case_services(obs, sp))


def abnormal_invocations(sp: Spans, hist_t: np.ndarray, det_t: np.ndarray, d_ad: float,
                         d_fs: float) -> np.ndarray:
    """Per span: an abnormal invocation of a detection trace (step 1 of the module docs)."""
    hist, det = hist_t[sp.trace], det_t[sp.trace]
    codes = sp.invocation  # the invocation type: (caller, callee, operation)
    n = int(codes.max()) + 1
    _, mu, sd = group_slo(codes, sp.duration, hist, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.abs(sp.duration - mu[codes]) / sd[codes]
        has_slo = np.isfinite(alpha)
        a_hist = _mean_by(codes, alpha, hist & has_slo, n)
        a_det = _mean_by(codes, alpha, det & has_slo, n)
        # comparisons with NaN (a type without history or detection spans) are False: not useful
        lat_useful = a_det - a_hist > d_fs * a_hist
        error = sp.error.astype(float)
        r_hist = np.nan_to_num(_mean_by(codes, error, hist, n), nan=0.0)
        r_det = _mean_by(codes, error, det, n)
        err_useful = (r_det > 0) & (r_det - r_hist > d_fs * r_hist)
    lat_bad = lat_useful[codes] & has_slo & (alpha > d_ad)  # has_slo: alpha finite
    return det & (lat_bad | (err_useful[codes] & sp.error))


def microservice_scores(sp: Spans, det_t: np.ndarray, abnormal: np.ndarray, min_support: float, max_size: int,
                        top_k: int, use_is: bool) -> dict[str, float]:
    """Steps 2-4 of the module docs: service → score."""
    det_rows = np.flatnonzero(det_t)
    row_of = np.full(sp.n_traces, -1, dtype=np.int64)
    row_of[det_rows] = np.arange(len(det_rows))
    span_det = row_of[sp.trace] >= 0
    # Services by their codes in sp.names (a code per distinct name, the client's left out): the candidates'
    # positions in name order, without a Python string per span.
    caller, callee, client = sp.caller_code, sp.callee_code, sp.is_client
    seen = np.zeros(len(sp.names), dtype=bool)
    seen[caller[span_det]] = True
    seen[callee[span_det]] = True
    present = np.flatnonzero(seen & ~client)
    if not present.size:
        return {}
    by_name = sorted(range(len(present)), key=sp.names[present].__getitem__)
    names = sp.names[present[by_name]].tolist()
    pos = np.full(len(sp.names), -1, dtype=np.int64)
    pos[present[by_name]] = np.arange(len(present))
    n_t, n_i = len(det_rows), len(names)
    member = np.zeros((n_t, n_i), dtype=bool)
    into = np.zeros((n_t, n_i), dtype=bool)
    out_of = np.zeros((n_t, n_i), dtype=bool)
    r = row_of[sp.trace]
    for who in (caller, callee):
        ok = span_det & ~client[who]
        member[r[ok], pos[who[ok]]] = True
    cross = abnormal & (caller != callee)
    ok = cross & ~client[callee]
    into[r[ok], pos[callee[ok]]] = True
    ok = cross & ~client[caller]
    out_of[r[ok], pos[caller[ok]]] = True
    bad = np.zeros(n_t, dtype=bool)
    bad[r[abnormal & span_det]] = True
    n_bad = int(bad.sum())
    if n_bad == 0:
        return {}
    sets = frequent_sets(member[bad], min_support, max_size)
    scored = []
    for s in sets:
        has = member[:, list(s)].all(axis=1)
        n_s = int(has.sum())
        n_bs = int((has & bad).sum())
        ji = n_bs / (n_bad + n_s - n_bs) if n_bs else 0.0
        scored.append((ji, s, has & bad))
    scored.sort(key=lambda x: (-x[0], len(x[1]), [names[i] for i in x[1]]))
    out = {s: 0.0 for s in names}
    for ji, s, rows in scored[:top_k]:
        for i in s:
            if use_is:
                score = ji * abs(int(into[rows, i].sum()) - int(out_of[rows, i].sum()))
            else:
                score = ji
            if score > out[names[i]]:
                out[names[i]] = float(score)
    return out


def frequent_sets(transactions: np.ndarray, min_support: float, max_size: int) -> list[tuple[int, ...]]:
    """Apriori: column-index tuples (sorted) present together in at least ``min_support`` of the rows."""
    n = len(transactions)
    need = min_support * n - 1e-9
    level = [(i,) for i in range(transactions.shape[1]) if transactions[:, i].sum() >= need]
    out = list(level)
    frequent = set(level)
    for size in range(2, max_size + 1):
        items = sorted({i for s in level for i in s})
        nxt = []
        for s in level:
            for i in items:
                if i <= s[-1]:
                    continue
                cand = s + (i,)
                if all(sub in frequent for sub in combinations(cand, size - 1)) and \
                        transactions[:, list(cand)].all(axis=1).sum() >= need:
                    nxt.append(cand)
        if not nxt:
            break
        out.extend(nxt)
        frequent.update(nxt)
        level = nxt
    return out


def _mean_by(codes: np.ndarray, values: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Per code 0..n-1: the mean of ``values`` where ``mask`` (NaN where none); the caller silences 0/0."""
    k = codes[mask]
    return np.bincount(k, weights=values[mask], minlength=n) / np.bincount(k, minlength=n).astype(float)
