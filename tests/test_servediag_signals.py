"""servediag's evidence readers: the byte scan of span attributes reads exactly what the per-span regexes read
(including the texts it hands back to them), and the array-based span reader agrees with a per-span reading."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from llmrca import simulate
from llmrca.faults import Injection
from llmrca.methods.servediag import _roles
from llmrca.methods.servediag_signals import (
    GEN_AI,
    GEN_AI_KEY,
    PEER,
    PEER_KEY,
    RETRANSMIT_S,
    SpanEvidence,
    _TextColumn,
    read_spans,
)
from llmrca.sim import SimConfig

TRICKY = [
    '{"gen_ai.latency.time_in_queue":,"gen_ai.latency.time_in_queue":0.5}',  # first has no number: the second
    '{"gen_ai.latency.time_in_queue":0.25,"gen_ai.latency.time_in_queue":7}',  # two: the first
    '{"gen_ai.usage.prompt_tokens":12',  # ends in digits; the next text starts with digits
    '34}',
    '"gen_ai.usage.prompt_tokens":' + "1" * 30,  # longer than the scan's window
    '"gen_ai.usage.completion_tokens":12\u0663,"x":1',  # a non-ASCII digit the regex's \\d takes
    '"gen_ai.latency.time_to_first_token":1e5}',
    '"gen_ai.latency.time_to_first_token":-0.0}',
    '"gen_ai.latency.time_in_model_prefill":.5,"gen_ai.latency.time_in_model_decode":5.}',
    '"gen_ai.latency.time_in_model_decode":+5}',
    '"gen_ai.latency.time_in_model_decode":',  # the key at the very end
    '{"span.kind":"CLIENT","peer.service":"","peer.service":"b"}',  # an empty value: the next one
    '{"span.kind":"CLIENT","peer.service":"abc',  # no closing quote
    '{"span.kind":"CLIENT","peer.service":"' + "r" * 100 + '"}',  # longer than the scan's window
    '{"span.kind":"CLIENT","peer.service":"r\u00e9plique"}',
    '"peer.service":"peer.service":"x"',
    '"CLIENT" gen_ai.latency',
    "gen_ai.latency\"CLIENT",
    "",
    None,
]


def _random_texts(n: int, seed: int) -> list[str | None]:
    rng = np.random.default_rng(seed)
    parts = [*(k.decode() for k in GEN_AI_KEY.values()), PEER_KEY.decode(), '"CLIENT"', "gen_ai.latency", '"', ",",
             ":", "}", "{", "0.125,", "-3,", "1e-05}", "42,", "ray-replicas-1", "\u0663,", "\u00e9", " ", "7" * 20 + ","]
    # (every number ends at punctuation, so each text's numbers are ones float() reads, as the simulator's are)
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.05:
            out.append(None)
            continue
        out.append("".join(parts[i] for i in rng.integers(0, len(parts), size=int(rng.integers(0, 12)))))
    return out


def _regex_number(rx, t: str | None) -> float:
    mt = rx.search(t or "")
    return float(mt.group(1)) if mt else float("nan")


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("offset", [0, 3])  # a slice of a longer array: offsets not starting at 0
def test_byte_scan_reads_what_the_regexes_read(seed, offset):
    texts = TRICKY + _random_texts(400, seed)
    arr = pa.array(["ignored"] * offset + texts, type=pa.large_string()).slice(offset)
    arr = pc.fill_null(arr, "")
    col = _TextColumn(arr)
    where = np.ones(len(texts), dtype=bool)
    where[::7] = False  # rows not asked for read as NaN / nothing
    numbers = col.numbers_after([GEN_AI_KEY[k] for k in GEN_AI], where, list(GEN_AI.values()))
    for j, (k, rx) in enumerate(GEN_AI.items()):
        got = numbers[:, j]
        want = np.asarray([_regex_number(rx, t) if w else np.nan for t, w in zip(texts, where, strict=True)])
        assert np.array_equal(got, want, equal_nan=True), k
        assert np.array_equal(np.signbit(got), np.signbit(want)), k
    has, values = col.quoted_after(PEER_KEY, where, PEER)
    want_has = [bool(w and PEER.search(t or "")) for t, w in zip(texts, where, strict=True)]
    assert has.tolist() == want_has
    assert values.to_pylist() == [PEER.search(t or "").group(1) for t, h in zip(texts, want_has, strict=True) if h]
    for lit in (b'"CLIENT"', b"gen_ai.latency"):
        assert col.contains(lit).tolist() == [lit.decode() in (t or "") for t in texts]


def _per_span(obs, onset, replicas, window_s, post_s):
    """The reading the array version replaced (servediag before 2026-12-08): one Python step per span."""
    tr = obs.traces
    ev = SpanEvidence()
    need = ("trace_id", "span_id", "parent_span_id", "service", "operation", "start_time_us", "duration_us")
    if tr is None or not len(tr) or any(c not in tr.columns for c in need):
        return ev
    start = pd.to_numeric(tr["start_time_us"], errors="coerce").to_numpy(dtype=float) / 1e6
    keep = np.flatnonzero((start >= onset - window_s) & (start < onset + post_s))
    if not len(keep):
        return ev
    tr = tr.iloc[keep]
    start = start[keep]
    dur = pd.to_numeric(tr["duration_us"], errors="coerce").to_numpy(dtype=float) / 1e6
    svc = tr["service"].astype(object).fillna("").to_numpy(dtype=object)
    attrs = tr["attributes"].astype(object).fillna("").to_numpy(dtype=object) if "attributes" in tr.columns \
        else np.full(len(tr), "", dtype=object)
    status = tr["status"].astype(object).fillna("").to_numpy(dtype=object) if "status" in tr.columns else \
        np.full(len(tr), "", dtype=object)
    n = len(tr)
    peer = np.full(n, "", dtype=object)
    is_client = np.zeros(n, dtype=bool)
    is_engine = np.zeros(n, dtype=bool)
    for i, a in enumerate(attrs):
        if '"CLIENT"' in a:
            mt = PEER.search(a)
            if mt:
                is_client[i] = True
                peer[i] = mt.group(1)
        elif "gen_ai.latency" in a:
            is_engine[i] = True
    after = start >= onset
    span_id = tr["span_id"].astype(object).fillna("").to_numpy(dtype=object)
    parent = tr["parent_span_id"].astype(object).fillna("").to_numpy(dtype=object)
    pre_s = max(onset - float(start.min()), 1e-9)
    post_len = max(min(post_s, float(start.max()) - onset), 1e-9)
    ev.present = True
    client_rows = np.flatnonzero(is_client & np.isin(peer, replicas))
    if len(client_rows):
        ev.proxy = str(pd.Series(svc[client_rows]).mode().iloc[0])
    client_of = {span_id[p]: p for p in client_rows}
    # engine spans: a replica's SERVER span whose parent is the proxy's CLIENT call to it
    engine_rows = np.flatnonzero(is_engine)
    child_of: dict[int, int] = {}
    for i in engine_rows:
        p = client_of.get(parent[i])
        if p is not None and svc[i] == peer[p]:
            child_of[p] = i
    stage = np.full((n, len(GEN_AI)), np.nan)
    for i in engine_rows:
        a = attrs[i]
        for j, rx in enumerate(GEN_AI.values()):
            mt = rx.search(a)
            if mt:
                stage[i, j] = float(mt.group(1))
    stage_vals = {k: stage[:, j] for j, k in enumerate(GEN_AI)}
    for r in replicas:
        rows = client_rows[peer[client_rows] == r]
        ev.calls_pre[r] = float((~after[rows]).sum()) / pre_s
        ev.calls_post[r] = float(after[rows].sum()) / post_len
        ev.count_pre += int((~after[rows]).sum())
        ev.count_post += int(after[rows].sum())
        post_rows = rows[after[rows]]
        ev.errors_post[r] = float((status[post_rows] == "ERROR").mean()) if len(post_rows) else 0.0
        for book, retx, side in ((ev.net_pre, ev.retx_pre, ~after[rows]), (ev.net_post, ev.retx_post, after[rows])):
            extra = [dur[p] - dur[child_of[p]] for p in rows[side] if p in child_of and status[p] != "ERROR"]
            e = np.asarray(extra, dtype=float)
            retx[r] = (int((e >= RETRANSMIT_S).sum()), len(e))
            if len(extra) >= 3:
                book[r] = (float(np.median(e)), float(np.percentile(e, 25)), float(np.percentile(e, 90)))
        eng = engine_rows[(svc[engine_rows] == r) & np.isfinite(stage_vals["ttft"][engine_rows])]
        for book, side in ((ev.stages_pre, ~after[eng]), (ev.stages_post, after[eng])):
            sel = eng[side]
            if len(sel) >= 3:
                d = {k: float(np.median(v[sel])) if np.isfinite(v[sel]).any() else float("nan")
                     for k, v in stage_vals.items()}
                comp = np.maximum(np.nan_to_num(stage_vals["completion"][sel], nan=1.0), 1.0)
                d["per_token"] = float(np.median(np.nan_to_num(stage_vals["decode"][sel]) / comp))
                book[r] = d
    prompt_rows = engine_rows[np.isfinite(stage_vals["prompt"][engine_rows])]
    if len(prompt_rows):
        pv = stage_vals["prompt"][prompt_rows]
        a = after[prompt_rows]
        ev.prompt = (float(np.median(pv[~a])) if (~a).any() else float("nan"),
                     float(np.median(pv[a])) if a.any() else float("nan"))
    if ev.proxy is not None:
        row_of = {span_id[i]: i for i in np.flatnonzero(svc == ev.proxy)}
        waits_pre, waits_post = [], []
        for p in client_rows:
            q = row_of.get(parent[p])
            if q is None or q == p:
                continue
            (waits_post if after[q] else waits_pre).append(start[p] - start[q])
        ev.proxy_wait = (float(np.median(waits_pre)) if waits_pre else float("nan"),
                         float(np.median(waits_post)) if waits_post else float("nan"))
    return ev


@pytest.mark.parametrize("fault,target", [("network-loss", "ray-replicas-1"), ("replica-kill", "ray-replicas-2"),
                                          ("proxy-overload", "ray-head")])
def test_span_reader_agrees_with_a_per_span_reading(fault, target):
    obs = simulate(SimConfig(duration=240.0, inject_at=165.0), fault=Injection(fault, target), seed=5).observation
    reps = _roles(obs).replicas
    onset = float(obs.inject_time)
    for window_s, post_s in ((120.0, 300.0), (30.0, 20.0)):
        got = read_spans(obs, onset, reps, window_s, post_s)
        assert got.present and got.calls_pre
        assert repr(got) == repr(_per_span(obs, onset, reps, window_s, post_s))
    # rows out of time order (the window is then not one range of rows), and missing attributes
    tr = obs.traces.sample(frac=1.0, random_state=0).reset_index(drop=True)
    tr.loc[::11, "attributes"] = None
    shuffled = replace(obs, traces=tr)
    assert repr(read_spans(shuffled, onset, reps, 30.0, 20.0)) == repr(_per_span(shuffled, onset, reps, 30.0, 20.0))
