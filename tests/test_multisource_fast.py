"""The array paths of mm-baro (llmrca.methods.multisource_fast) and of span loading (llmrca.methods.spans)
against the frame-based computations they replace."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from _trace_cases import T0, chain_observation, chain_traces

from llmrca.errors import CaseError
from llmrca.methods import multisource as ms
from llmrca.methods import multisource_fast as mf
from llmrca.methods.baro import Baro
from llmrca.methods.call_graph import span_parents
from llmrca.methods.registry import get_method
from llmrca.methods.spans import load_spans

INJECT = T0 + 200.0


def _logs(stated: bool) -> pd.DataFrame:
    rows = []
    for i in range(300):
        for s in ("gw", "api", "db"):
            tpl = "served request <*> in <*> ms" if stated or i % 3 else ""  # "" -> mined by Drain3
            rows.append((T0 + i + 0.1, s, "INFO", f"served request {i} in {i % 7} ms", tpl))
    for j in range(30):
        rows.append((INJECT + 1.5 * j, "db", "ERROR", f"pool exhausted ({j} waiting)", "pool exhausted (<*> waiting)"))
    rows.append((T0 + 5, None, "INFO", "no service", "x"))  # a line without a service is dropped
    return pd.DataFrame(rows, columns=["time", "service", "level", "message", "template"]).sort_values("time")


def _observation(arrow: bool, stated: bool, unnamed: bool = False):
    tr = chain_traces(slow_from=INJECT, peer=True, error_from=INJECT + 100)
    if unnamed:
        tr.loc[tr.index[::37], "operation"] = None  # operations without a name
    obs = replace(chain_observation(tr, INJECT), logs=_logs(stated).reset_index(drop=True))
    if arrow:
        text = pd.StringDtype("pyarrow")
        obs = replace(obs, traces=obs.traces.astype({c: text for c in ("trace_id", "span_id", "parent_span_id",
                                                                       "service", "operation", "status",
                                                                       "attributes")}),
                      logs=obs.logs.astype({c: text for c in ("service", "level", "message", "template")}))
    return obs


@pytest.mark.parametrize(("arrow", "stated"), [(False, True), (True, True), (True, False)])
def test_series_equal_the_frame_based_grids(arrow, stated):
    obs = _observation(arrow, stated)
    ref = ms.append_columns(obs.metrics, [ms.template_grid(obs, "m"), ms.trace_grid(obs, "m")])
    ours = mf.with_series(obs.metrics, [mf.template_series(obs, "m"), mf.trace_series(obs, "m")])
    assert list(ours.columns) == list(ref.columns)
    assert np.array_equal(ours.to_numpy(dtype=float), ref.to_numpy(dtype=float), equal_nan=True)
    assert any("_log-template-" in c for c in ours.columns) and "api_call_latency" in ours.columns
    merged = replace(obs, metrics=ref)
    assert get_method("mm-baro").rank(obs) == Baro().rank(merged)
    unnamed = _observation(arrow, stated, unnamed=True)
    for f in (ms.trace_grid, mf.trace_series):
        with pytest.raises(CaseError, match="missing service or operation"):
            f(unnamed, "m")


@pytest.mark.parametrize("arrow", [False, True])
def test_loaded_spans_equal_the_string_computations(arrow):
    obs = _observation(arrow, True, unnamed=True)
    tr = obs.traces.copy()
    tr.loc[tr.index[5], "span_id"] = tr.loc[tr.index[4], "span_id"]  # a duplicated (trace, span id)
    tr.loc[tr.index[9], "parent_span_id"] = "missing"
    tr.loc[tr.index[13], "attributes"] = "not json, peer.service"
    obs = replace(obs, traces=tr)
    sp = load_spans(obs, "m")
    assert sp.parent.tolist() == span_parents(tr).tolist()
    svc = tr["service"].astype(str).to_numpy(dtype=object)
    op = (tr["service"].astype("string") + "_" + tr["operation"].astype("string").fillna("unnamed"))
    assert sp.operation.tolist() == op.tolist() and sp.service.tolist() == svc.tolist()
    client = tr["attributes"].astype("string").str.contains('"CLIENT"', regex=False).fillna(False).to_numpy()
    assert (sp.callee[client] != sp.service[client]).all() and (sp.caller[client] == sp.service[client]).all()
    assert set(sp.callee[client]) == {"db", "cache"}
    # the invocation codes group spans exactly as their (caller, callee, operation) strings do
    key = pd.Series([f"{a}\x1f{b}\x1f{c}" for a, b, c in zip(sp.caller, sp.callee, sp.operation, strict=True)])
    by_text = pd.factorize(key)[0]
    assert len(set(zip(by_text.tolist(), sp.invocation.tolist(), strict=True))) == len(set(by_text.tolist())) \
        == len(set(sp.invocation.tolist()))


@pytest.mark.parametrize("dtype", [object, pd.StringDtype("pyarrow")])
def test_parent_rows_where_span_ids_repeat_across_traces(dtype):
    from llmrca.methods.spans import span_parent_rows

    tr = pd.DataFrame([("t1", "a", None), ("t1", "b", "a"), ("t2", "a", None), ("t2", "b", "a"),
                       ("t2", "c", "zz"), ("t1", "c", "b"), ("t2", "a", None), ("t2", "d", "a")],
                      columns=["trace_id", "span_id", "parent_span_id"]).astype(dtype)
    codes = pd.factorize(tr["trace_id"])[0]
    assert span_parent_rows(tr, codes).tolist() == span_parents(tr).tolist() == [-1, 0, -1, 2, -1, 1, -1, 2]
