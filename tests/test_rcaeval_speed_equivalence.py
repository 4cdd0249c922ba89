"""The shortcuts taken to keep the methods shared with RCAEval fast (issue 17) give what the plain code gave:
the metric window without a pandas column selection, the services of a trace method's ranking from the
factorised spans, the random walk's clamp-free table, LiNGAM's edges read off B at once."""

import bisect

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from _trace_cases import T0, chain_observation, chain_traces

from llmrca.case import Observation
from llmrca.methods import causal_graphs as cg
from llmrca.methods import lingam_fast as lf
from llmrca.methods.graph_heads import abs_correlation_with, random_walk_head
from llmrca.methods.spans import case_services, load_spans
from llmrca.methods.window import metric_window


def _frame(int_column: bool) -> pd.DataFrame:
    r = np.random.default_rng(0)
    m = pd.DataFrame({"time": 100.0 + 5.0 * np.arange(40), "b_cpu": r.standard_normal(40),
                      "a_mem": r.standard_normal(40), "c_lat": r.standard_normal(40)})
    m.loc[[0, 7, 8, 39], "a_mem"] = np.nan  # gaps, at both edges too
    if int_column:
        m["d_count"] = r.integers(0, 9, 40)  # not float: the plain path
    return m


@pytest.mark.parametrize("int_column", [False, True])
@pytest.mark.parametrize("window", [None, 5, "auto"])
def test_metric_window_equals_the_column_selection(int_column, window):
    m = _frame(int_column)
    obs = Observation(metrics=m, inject_time=100.0 + 5.0 * 20)
    w = metric_window(obs, window=window)
    lo, hi = (0, 40) if window is None else (20 - (60 if window == "auto" else window),
                                             20 + (60 if window == "auto" else window))
    lo, hi = max(lo, 0), min(hi, 40)
    plain = m[obs.metric_columns].to_numpy(dtype=float, copy=True)[lo:hi]
    # the gap filling of metric_window: nearest values at the edges, linear inside
    for j in range(plain.shape[1]):
        ok = ~np.isnan(plain[:, j])
        plain[:, j] = np.interp(np.arange(len(plain)), np.flatnonzero(ok), plain[ok, j])
    assert w.columns == obs.metric_columns
    assert np.array_equal(w.values, plain)
    w.values[:] = 0.0  # the window is a copy: the frame is untouched
    assert np.isnan(m["a_mem"].iloc[0]) and m["b_cpu"].abs().sum() > 0


def test_case_services_is_the_set_of_the_observations_services():
    obs = chain_observation(chain_traces(120, slow_from=T0 + 60), T0 + 60)
    obs.metrics["extra-svc_cpu"] = 1.0
    assert case_services(obs, load_spans(obs, "tracerca")) == set(obs.services)


def _walk_as_before(G, X, names, sli, steps, rho, seed):
    """The walk as random_walk_head wrote it before the table (clamping bisect's index at every step)."""
    sim = abs_correlation_with(X, names, sli)
    nodes = list(G.nodes)
    index = {n: i for i, n in enumerate(nodes)}
    targets, cumprob = [], []
    for n in nodes:
        causes = [c for c in G.predecessors(n) if c != n]
        effects = [e for e in G.successors(n) if e != n]
        nbr = [sim.get(c, 0.0) for c in causes] + [sim.get(e, 0.0) for e in effects]
        w = [sim.get(c, 0.0) for c in causes] + [rho * sim.get(e, 0.0) for e in effects]
        to = [index[c] for c in causes] + [index[e] for e in effects]
        w.append(max(0.0, sim.get(n, 0.0) - max(nbr, default=0.0)))
        to.append(index[n])
        wa = np.asarray(w, dtype=float)
        if not wa.sum() > 0:
            wa, to = np.array([1.0]), [index[n]]
        targets.append(to)
        cumprob.append(np.cumsum(wa / wa.sum()).tolist())
    visits, cur = [0] * len(nodes), index[sli]
    for u in np.random.default_rng(seed).random(steps).tolist():
        cp = cumprob[cur]
        cur = targets[cur][min(bisect.bisect_right(cp, u * cp[-1]), len(cp) - 1)]
        visits[cur] += 1
    return {n: v / steps for n, v in zip(nodes, visits, strict=True)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_walk_visits_equal_the_clamped_walk(seed):
    r = np.random.default_rng(seed)
    names = [f"s{i}_m" for i in range(9)]
    X = r.standard_normal((60, 9)) + r.standard_normal((60, 1))
    G = nx.gnp_random_graph(9, 0.3, seed=seed, directed=True)
    G = nx.relabel_nodes(G, dict(enumerate(names)))
    got = random_walk_head(G, X, names, names[0], steps=3000, rho=0.2, seed=seed)
    assert got == _walk_as_before(G, X, names, names[0], 3000, 0.2, seed)


def test_lingam_graph_edges_are_those_of_the_double_loop():
    r = np.random.default_rng(4)
    X = r.uniform(-1, 1, (150, 6)) ** 3
    X[:, 3] += 0.8 * X[:, 0]
    X[:, 5] += 0.6 * X[:, 3] - 0.5 * X[:, 1]
    names = [f"v{i}_m" for i in range(6)]
    G = cg.lingam_graph(X, names)
    _, B = lf.direct_lingam(X)
    expected = [(names[j], names[i], float(abs(B[i, j]))) for i in range(6) for j in range(6)
                if abs(B[i, j]) > 0.01]
    assert expected and sorted((a, b, d["weight"]) for a, b, d in G.edges(data=True)) == sorted(expected)


def test_client_peers_by_distinct_text_equal_the_row_by_row_parse():
    from llmrca.methods.spans import _client_peers

    texts = ['{"span.kind":"CLIENT","peer.service":"db"}', None, '{"span.kind":"SERVER","peer.service":"db"}',
             '{"span.kind":"client","peer.service":"cache"}', 'peer.service not json',
             '{"span.kind":"CLIENT","peer.service":"db"}', '{"span.kind":"CLIENT","peer.service":"a_b"}',
             '{"span.kind":"CLIENT"}', '{"span.kind":"CLIENT","peer.service":"cache"}',
             # no literal peer.service (an escaped key, a key with "vice" only): not screened in, as before
             '{"span.kind":"CLIENT","peer\\u002eservice":"db"}', '{"span.kind":"CLIENT","service":"db"}']
    arrow = pd.Series(texts, dtype="string[pyarrow]")
    rows, code, names = _client_peers(arrow)
    assert rows.tolist() == [0, 3, 5, 8] and [names[c] for c in code] == ["db", "cache", "db", "cache"]
    assert names == ["db", "cache"]  # first seen first
    rows2, code2, names2 = _client_peers(pd.Series(texts, dtype=object))  # not Arrow-backed: the plain path
    assert rows2.tolist() == rows.tolist() and code2.tolist() == code.tolist() and names2 == names
    none = _client_peers(pd.Series(['{"span.kind":"SERVER"}', None], dtype="string[pyarrow]"))
    assert none[0].size == 0 and none[1].size == 0 and none[2] == []


# --- tracerca / microrank on integer codes (issue 17, third pass) -------------------------------------------


def _caller_callee_as_before(tr: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Caller and callee per span the way load_spans built them before the codes: Python strings, the parent's
    service (or "") as caller, a CLIENT span's peer (parsed row by row) as callee."""
    import json

    from llmrca.methods.call_graph import span_parents

    svc = tr["service"].astype(str).tolist()
    parent = span_parents(tr).tolist()
    caller = [svc[p] if p >= 0 else "" for p in parent]
    callee = list(svc)
    for i, text in enumerate(tr["attributes"].tolist()):
        try:
            a = json.loads(str(text)) if isinstance(text, str) and "peer.service" in text else None
        except ValueError:
            a = None
        if isinstance(a, dict) and str(a.get("span.kind", "")).upper() == "CLIENT":
            peer = a.get("peer.service")
            if isinstance(peer, str) and peer and "_" not in peer:
                caller[i], callee[i] = svc[i], peer
    return caller, callee


def _scores_as_before(sp, det_t, abnormal, min_support, max_size, top_k, use_is):
    """tracerca.microservice_scores as it was on object arrays of names (commit 198caaa)."""
    from llmrca.methods.tracerca import frequent_sets

    caller, callee = sp.caller, sp.callee
    det_rows = np.flatnonzero(det_t)
    row_of = np.full(sp.n_traces, -1, dtype=np.int64)
    row_of[det_rows] = np.arange(len(det_rows))
    span_det = row_of[sp.trace] >= 0
    names = sorted({s for s in np.concatenate([caller[span_det], callee[span_det]]) if s != ""})
    if not names:
        return {}
    index = pd.Index(names)
    n_t, n_i = len(det_rows), len(names)
    member, into, out_of = (np.zeros((n_t, n_i), dtype=bool) for _ in range(3))
    r = row_of[sp.trace]
    for who in (caller, callee):
        ok = span_det & (who != "")
        member[r[ok], index.get_indexer(who[ok])] = True
    cross = abnormal & (caller != callee)
    ok = cross & (callee != "")
    into[r[ok], index.get_indexer(callee[ok])] = True
    ok = cross & (caller != "")
    out_of[r[ok], index.get_indexer(caller[ok])] = True
    bad = np.zeros(n_t, dtype=bool)
    bad[r[abnormal & span_det]] = True
    n_bad = int(bad.sum())
    if n_bad == 0:
        return {}
    scored = []
    for s in frequent_sets(member[bad], min_support, max_size):
        has = member[:, list(s)].all(axis=1)
        n_s, n_bs = int(has.sum()), int((has & bad).sum())
        scored.append((n_bs / (n_bad + n_s - n_bs) if n_bs else 0.0, s, has & bad))
    scored.sort(key=lambda x: (-x[0], len(x[1]), [names[i] for i in x[1]]))
    out = {s: 0.0 for s in names}
    for ji, s, rows in scored[:top_k]:
        for i in s:
            score = ji * abs(int(into[rows, i].sum()) - int(out_of[rows, i].sum())) if use_is else ji
            out[names[i]] = max(out[names[i]], float(score))
    return out


def _chain_with_oddities(arrow: bool):
    """Chain traces with peers, errors, a peer that is no service, spans whose caller is their callee, rows in
    shuffled order and (optionally) Arrow-backed text."""
    tr = chain_traces(300, slow_from=T0 + 150, peer=True, error_from=T0 + 250)
    client = tr["attributes"].astype("string").str.contains("CLIENT", regex=False).fillna(False).to_numpy()
    odd = np.flatnonzero(client)[::7]
    tr.loc[tr.index[odd], "attributes"] = '{"span.kind":"CLIENT","peer.service":"ext-store"}'
    tr.loc[tr.index[np.flatnonzero(client)[3::5]], "attributes"] = None  # api's own call: caller == callee
    tr = tr.sample(frac=1.0, random_state=3).reset_index(drop=True)
    if arrow:
        text = pd.StringDtype("pyarrow")
        tr = tr.astype({c: text for c in ("trace_id", "span_id", "parent_span_id", "service", "operation",
                                          "status", "attributes")})
    return chain_observation(tr, T0 + 150)


@pytest.mark.parametrize("arrow", [False, True])
def test_span_codes_decode_to_the_string_computations(arrow):
    obs = _chain_with_oddities(arrow)
    sp = load_spans(obs, "tracerca")
    caller, callee = _caller_callee_as_before(obs.traces)
    assert sp.caller.tolist() == caller and sp.callee.tolist() == callee
    assert "ext-store" in callee and any(a == b for a, b in zip(caller, callee, strict=True))
    # codes compare as the names do, and the client is the one name ""
    assert np.array_equal(sp.caller_code == sp.callee_code, np.array(caller, dtype=object) == np.array(callee))
    assert sp.is_client[sp.caller_code].tolist() == [c == "" for c in caller]
    assert len(set(sp.names[sp.caller_code].tolist() + sp.names[sp.callee_code].tolist())) == \
        len(set(sp.caller_code.tolist() + sp.callee_code.tolist()))
    assert sp.services == list(dict.fromkeys(obs.traces["service"].astype(str)))
    # traces numbered as first seen; each trace's spans share one code
    first = pd.factorize(obs.traces["trace_id"].astype(str))[0]
    assert sp.trace.tolist() == first.tolist() and sp.n_traces == first.max() + 1
    assert sp.trace_ids.tolist() == list(dict.fromkeys(obs.traces["trace_id"].astype(str)))


@pytest.mark.parametrize("arrow", [False, True])
@pytest.mark.parametrize(("max_size", "use_is"), [(1, True), (2, True), (2, False)])
def test_tracerca_scores_on_codes_equal_the_scores_on_names(arrow, max_size, use_is):
    from llmrca.methods.tracerca import abnormal_invocations, microservice_scores

    obs = _chain_with_oddities(arrow)
    sp = load_spans(obs, "tracerca")
    hist, det = sp.split(obs.inject_time)
    abnormal = abnormal_invocations(sp, hist, det, 3.0, 1.0)
    assert abnormal.any()
    got = microservice_scores(sp, det, abnormal, 0.1, max_size, 100, use_is)
    want = _scores_as_before(sp, det, abnormal, 0.1, max_size, 100, use_is)
    assert got == want and list(got) == list(want) and any(v > 0 for v in got.values())


def test_microrank_operation_codes_equal_the_sorted_factorisation():
    # two (service, operation) pairs that read as the same name: one code, as factorising the names gives
    tr = chain_traces(40, slow_from=T0 + 20)
    tr.loc[tr.index[::4], "service"] = "api_x"
    tr.loc[tr.index[::4], "operation"] = "y"
    tr.loc[tr.index[1::4], "service"] = "api"
    tr.loc[tr.index[1::4], "operation"] = "x_y"
    sp = load_spans(chain_observation(tr, T0 + 20), "microrank")
    ops, by_name = np.unique(sp.operations, return_inverse=True)
    want_codes, want_ops = pd.factorize(pd.Series(sp.operation), sort=True)
    assert by_name.ravel()[sp.op_code].tolist() == want_codes.tolist()
    assert ops.tolist() == list(want_ops) and "api_x_y" in ops.tolist()


@pytest.mark.parametrize("window", [None, 3, "auto"])
def test_block_window_equals_the_frames_window(window):
    from llmrca.methods.window import block_window

    m = _frame(False)
    names, values = list(m.columns), m.to_numpy(dtype=float)
    obs = Observation(metrics=m, inject_time=100.0 + 5.0 * 20)
    for it in (None, 100.0 + 5.0 * 3):
        a = metric_window(obs, inject_time=it, window=window)
        b = block_window(obs, columns=names, values=values, inject_time=it, window=window)
        assert a.columns == b.columns and a.split == b.split
        assert np.array_equal(a.times, b.times) and np.array_equal(a.values, b.values)
    assert np.isnan(values[0, names.index("a_mem")])  # the block is not filled in place
    with pytest.raises(Exception, match="sample"):
        block_window(obs, columns=names, values=values, inject_time=100.0, window=window)
    with pytest.raises(Exception, match="sample"):
        metric_window(obs, inject_time=100.0, window=window)


@pytest.mark.parametrize("params", [{}, {"window": 4}, {"two_sided": False}, {"detect_onset": True}])
def test_mmbaro_on_the_merged_array_equals_baro_on_the_merged_frame(params):
    from dataclasses import replace

    from llmrca.methods import multisource_fast as mf
    from llmrca.methods.baro import Baro
    from llmrca.methods.registry import get_method

    obs = _chain_with_oddities(True)
    obs = replace(obs, logs=pd.DataFrame({"time": T0 + np.arange(300.0), "service": "api", "level": "INFO",
                                          "message": "ok", "template": np.where(np.arange(300) > 150, "a", "b")}))
    merged = replace(obs, metrics=mf.with_series(obs.metrics, [mf.template_series(obs, "m"),
                                                                mf.trace_series(obs, "m")]))
    try:
        want = Baro(**params).rank(merged)
    except Exception as e:  # noqa: BLE001 - BOCPD may abstain: then mm-baro must too
        with pytest.raises(type(e)):
            get_method("mm-baro", **params).rank(obs)
        return
    got = get_method("mm-baro", **params).rank(obs)
    assert got.candidates == want.candidates and got.scores == want.scores


def _hex_ids(rng, n: int, width: int = 16) -> list[str]:
    return ["".join(rng.choice(list("0123456789abcdef"), width)) for _ in range(n)]


def _parent_frame(rng, *, n_traces: int = 40, width: int = 16) -> pd.DataFrame:
    """Spans of random trees with OpenTelemetry-like hex ids: roots with a null or an empty parent, parents
    missing from the frame, span ids repeated in another trace, and a duplicated (trace, span id)."""
    rows = []
    for t, tid in enumerate(_hex_ids(rng, n_traces, 32)):
        ids = _hex_ids(rng, int(rng.integers(1, 8)), width)
        for k, sid in enumerate(ids):
            parent = (None if t % 2 else "") if k == 0 else ids[int(rng.integers(0, k))]
            if k and rng.random() < 0.1:
                parent = _hex_ids(rng, 1, width)[0]  # not in the frame
            rows.append((tid, sid, parent))
        if t % 7 == 3:  # this trace's ids again, in another trace
            again = _hex_ids(rng, 1, 32)[0]
            rows += [(again, sid, par) for _, sid, par in rows[-len(ids):]]
    rows.append(rows[2])  # a duplicated (trace, span id): its first row answers
    rows.insert(5, (rows[5][0], rows[5][1], rows[0][1]))
    return pd.DataFrame(rows, columns=["trace_id", "span_id", "parent_span_id"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parent_rows_by_id_keys_equal_the_text_lookup(seed, monkeypatch):
    """The fixed-width path (64-bit keys of the ids' bytes) gives the rows the text path and call_graph's
    span_parents give; with every key colliding it falls back to the texts and still does."""
    from llmrca.methods import spans as sp_mod
    from llmrca.methods.call_graph import span_parents

    tr = _parent_frame(np.random.default_rng(seed))
    arrow = tr.astype(pd.StringDtype("pyarrow"))
    codes = pd.factorize(tr["trace_id"])[0]
    want = span_parents(tr).tolist()
    first = {}
    for i, sid in enumerate(tr["span_id"]):
        first.setdefault(sid, i)
    assert any(tr["trace_id"][first[p]] != t for t, p in zip(tr["trace_id"], tr["parent_span_id"], strict=True)
               if p in first)  # some parent ids' first rows lie in another trace
    assert sp_mod._fixed_width_parents(sp_mod._arrow(arrow["span_id"]), sp_mod._arrow(arrow["parent_span_id"])) \
        is not None  # the fast path is the one tested
    assert sp_mod.span_parent_rows(arrow, codes).tolist() == sp_mod.span_parent_rows(tr, codes).tolist() == want
    monkeypatch.setattr(sp_mod, "_keys", lambda words: np.zeros(len(words), dtype=np.uint64))
    assert sp_mod.span_parent_rows(arrow, codes).tolist() == want


@pytest.mark.parametrize("ids", [["a1", "b22", "c333", "d"],  # no width a multiple of 8
                                 ["a" * 16, "b" * 8, "c" * 24, "d" * 16]])  # 64 bytes = 4 x 16, in mixed widths
def test_parent_rows_of_mixed_width_ids_take_the_text_path(ids):
    from llmrca.methods import spans as sp_mod
    from llmrca.methods.call_graph import span_parents

    tr = pd.DataFrame([("t", ids[0], None), ("t", ids[1], ids[0]), ("t", ids[2], ids[1]), ("t", ids[3], "zz")],
                      columns=["trace_id", "span_id", "parent_span_id"])
    arrow = tr.astype(pd.StringDtype("pyarrow"))
    assert sp_mod._packed_ids(sp_mod._arrow(arrow["span_id"])) is None
    codes = pd.factorize(tr["trace_id"])[0]
    assert sp_mod.span_parent_rows(arrow, codes).tolist() == span_parents(tr).tolist() == [-1, 0, 1, -1]
