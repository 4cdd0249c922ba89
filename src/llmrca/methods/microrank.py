"""MicroRank (Yu et al., WWW'21, "MicroRank: End-to-End Latency Issue Localization with Extended Spectrum
Analysis in Microservice Environments"): personalized PageRank over operation–trace graphs weights a spectrum
analysis of which operations the anomalous traces cover.

1. **Anomaly detector.** Per operation (``<service>_<operation>``), the SLO is the mean μ and standard
   deviation σ of its durations in the history traces (those that ended before ``inject_time``;
   ``llmrca.methods.spans``). A detection trace (ended at or after the injection) is anomalous when one of its
   spans takes longer than μ + ``k``·σ of its operation, or failed (status ERROR); the others are normal. The
   paper compares a trace's end-to-end latency with the sum of its operations' expected latencies; on nested
   synchronous spans that sum counts the same wait once per nesting level and would hardly ever fire, so the
   SLO is applied per span, as RCAEval's re-implementation does (k = 3).
2. **Graphs.** For the anomalous and for the normal traces separately: operation and trace nodes; trace → each
   operation it covers (weight 1 / its number of operations), operation → each trace covering it (1 / number
   of such traces), operation → each operation it calls (``call_weight`` / number of callees). Traces with the
   same set of operations (a *kind*) are one node carrying their count, which gives the same operation scores
   as one node per trace (all of a kind are interchangeable) at a fraction of the size.
3. **Personalized PageRank** (networkx, damping ``damping``), teleporting to traces only: in the normal graph
   each trace with weight ∝ 1 / (size of its kind), so rare paths count as much as common ones; in the
   anomalous graph a mix (``phi``) of that and ∝ 1 / (its number of operations), so short anomalous traces,
   which pin the fault down more tightly, count more.
4. **Spectrum.** With w the PageRank score of an operation divided by the mean over that graph's operations,
   A/N the anomalous/normal traces and A(o)/N(o) those covering o: ef = w_A·|A(o)|, nf = w_A·(|A| − |A(o)|),
   ep = w_N·|N(o)|, np = w_N·(|N| − |N(o)|). ``spectrum``: ``dstar2`` ef² / (ep + nf) (default), ``ochiai``
   ef / √((ef + ep)(ef + nf)), ``tarantula`` (ef/(ef+nf)) / (ef/(ef+nf) + ep/(ep+np)). A zero denominator is
   replaced by 1e-9, so an operation covered by exactly the anomalous traces ranks first.

Candidates are operations (``service_operation``); services without any operation come last with score 0, by
name. With no anomalous trace the method abstains (``NoAnswer``: a ranking of zeros would only be the name
order); without traces before and after the injection it cannot run (``MethodError``). Deterministic (``seed`` unused).
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from llmrca.case import Observation
from llmrca.errors import MethodError, NoAnswer
from llmrca.methods.base import BaseMethod, Ranking
from llmrca.methods.params import check_float
from llmrca.methods.spans import (
    Spans,
    case_services,
    check_window_s,
    full_ranking,
    group_slo,
    load_spans,
    require_inject_time,
    trace_any,
)

SPECTRA = ("dstar2", "ochiai", "tarantula")
_EPS = 1e-9


class MicroRank(BaseMethod):
    """Parameters: ``window_s`` (seconds of traces each side of the injection; None: all), ``k`` (SLO = μ +
    kσ), ``spectrum`` (dstar2, ochiai, tarantula), ``damping``, ``phi`` (anomalous personalization mix),
    ``call_weight`` (operation → callee edges relative to operation → trace edges)."""

    name = "microrank"
    family = "trace"
    needs = frozenset({"traces"})

    @classmethod
    def default_params(cls) -> dict[str, object]:
        return {"window_s": None, "k": 3.0, "spectrum": "dstar2", "damping": 0.85, "phi": 0.5,
                "call_weight": 0.01}

    def rank(self, obs: Observation, *, seed: int = 0) -> Ranking:
        p = self.params
        window_s = check_window_s(self.name, p["window_s"])
        k = check_float(self.name, "k", p["k"], low=0.0, high=float("inf"), low_open=False)
        damping = check_float(self.name, "damping", p["damping"], low=0.0, high=1.0)
        phi = check_float(self.name, "phi", p["phi"], low=0.0, high=1.0, low_open=False)
        w_call = check_float(self.name, "call_weight", p["call_weight"], low=0.0, high=float("inf"),
                             low_open=False)
        spectrum = p["spectrum"]
        if spectrum not in SPECTRA:
            raise MethodError(f"method {self.name!r}: parameter spectrum must be one of "
                              f"{', '.join(SPECTRA)}, got {spectrum!r}")
        inject = require_inject_time(self.name, obs)
        sp = load_spans(obs, self.name)
        hist_t, det_t = sp.split(inject, window_s)
        if not hist_t.any():
            raise MethodError(f"{self.name}: no trace ended before inject_time, so there are no SLOs to "
                              "learn")
        if not det_t.any():
            raise MethodError(f"{self.name}: no trace after inject_time to diagnose")
        # the operations in name order, a code per distinct name (``pd.factorize(sp.operation, sort=True)``)
        ops, by_name = np.unique(sp.operations, return_inverse=True)
        codes = by_name.ravel()[sp.op_code]
        _, mu, sd = group_slo(codes, sp.duration, hist_t[sp.trace], len(ops))
        with np.errstate(invalid="ignore"):
            slow = sp.duration > mu[codes] + k * sd[codes]
        bad_t = trace_any(sp, slow | sp.error) & det_t
        good_t = det_t & ~bad_t
        if not bad_t.any():
            raise NoAnswer(f"{self.name}: no anomalous trace after inject_time (no span above its "
                              f"operation's mean + {k:g}σ, none failed), so there is nothing to localize")
        pr = {"damping": damping, "phi": phi, "w_call": w_call}
        w_bad, cov_bad = operation_weights(sp, codes, len(ops), bad_t, anomalous=True, **pr)
        w_good, cov_good = operation_weights(sp, codes, len(ops), good_t, anomalous=False, **pr)
        n_bad, n_good = float(bad_t.sum()), float(good_t.sum())
        ef, nf = w_bad * cov_bad, w_bad * (n_bad - cov_bad)
        ep, np_ = w_good * cov_good, w_good * (n_good - cov_good)
        score = spectrum_score(spectrum, ef, nf, ep, np_)
        seen = (cov_bad + cov_good) > 0
        return full_ranking({str(o): float(s) for o, s, ok in zip(ops, score, seen) if ok}, case_services(obs, sp))


def operation_weights(sp: Spans, codes: np.ndarray, n_ops: int, traces: np.ndarray, *, anomalous: bool,
                      damping: float, phi: float, w_call: float) -> tuple[np.ndarray, np.ndarray]:
    """(PageRank weight relative to the mean over the graph's operations, number of ``traces`` covering) per
    operation code; both 0 for operations outside these traces."""
    weight = np.zeros(n_ops)
    cover = np.zeros(n_ops)
    if not traces.any():
        return weight, cover
    in_set = traces[sp.trace]
    rows = np.flatnonzero(traces)
    row_of = np.full(len(traces), -1, dtype=np.int64)
    row_of[rows] = np.arange(len(rows))
    covers = np.zeros((len(rows), n_ops), dtype=bool)  # trace × operation it covers
    covers[row_of[sp.trace[in_set]], codes[in_set]] = True
    # Unique rows in lexicographic order: the kind order, hence the graph, does not depend on the frame order.
    kinds, sizes = np.unique(covers, axis=0, return_counts=True)
    cover = covers.sum(axis=0).astype(float)
    ops_in = [int(o) for o in np.flatnonzero(cover > 0)]
    g = nx.DiGraph()
    g.add_nodes_from(("o", o) for o in ops_in)
    # A kind node stands for `size` traces and receives the teleport share of all of them: with each trace
    # weighted 1/size of its kind every kind gets the same share; with 1/#operations, size/#operations.
    n_len = kinds.sum(axis=1).astype(float)
    u_kind = np.full(len(sizes), 1.0 / len(sizes))
    u_len = (sizes / n_len) / np.sum(sizes / n_len)
    u = phi * u_len + (1.0 - phi) * u_kind if anomalous else u_kind
    personal: dict[tuple[str, int], float] = {}
    for kid, (kind, n) in enumerate(zip(kinds, sizes)):
        node = ("t", kid)
        members = np.flatnonzero(kind)
        for o in members.tolist():
            g.add_edge(node, ("o", o), weight=1.0 / len(members))
            g.add_edge(("o", o), node, weight=float(n) / cover[o])
        personal[node] = float(u[kid])
    calls = _call_pairs(sp, codes, in_set)
    for a, callees in calls.items():
        for b in callees:
            g.add_edge(("o", a), ("o", b), weight=w_call / len(callees))
    pr = nx.pagerank(g, alpha=damping, personalization=personal, weight="weight", tol=1e-10, max_iter=1000)
    vals = np.array([pr[("o", o)] for o in ops_in])
    weight[ops_in] = vals / vals.mean()
    return weight, cover


def _call_pairs(sp: Spans, codes: np.ndarray, in_set: np.ndarray) -> dict[int, list[int]]:
    child = np.flatnonzero(in_set & (sp.parent >= 0))
    pairs = np.unique(np.stack([codes[sp.parent[child]], codes[child]], axis=1), axis=0) if len(child) else []
    out: dict[int, list[int]] = {}
    for a, b in (pairs.tolist() if len(pairs) else []):
        if a != b:
            out.setdefault(int(a), []).append(int(b))
    return out


def spectrum_score(kind: str, ef: np.ndarray, nf: np.ndarray, ep: np.ndarray, np_: np.ndarray) -> np.ndarray:
    """Spectrum-based suspiciousness of each operation (formulas in the module docs)."""
    if kind == "dstar2":
        return ef**2 / np.maximum(ep + nf, _EPS)
    if kind == "ochiai":
        return ef / np.maximum(np.sqrt((ef + ep) * (ef + nf)), _EPS)
    if kind == "tarantula":
        fail = ef / np.maximum(ef + nf, _EPS)
        ok = ep / np.maximum(ep + np_, _EPS)
        return fail / np.maximum(fail + ok, _EPS)
    raise MethodError(f"unknown spectrum {kind!r}; known: {', '.join(SPECTRA)}")
