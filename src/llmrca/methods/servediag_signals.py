"""The evidence servediag reads from a case: per service and per signal of LLM serving, how the window after the
onset differs from the window before it, from metrics, logs and spans alike.

Three readers, one per source, each returning plain numbers keyed by ``(service, signal)``:

* :class:`MetricChanges` — per metric column, robust change statistics against the pre-onset baseline (centre
  and scale of ``llmrca.methods.scoring.baseline``, i.e. median/IQR with its resolution and ties floors): the
  sustained rise and fall in scale units (the 70th / 30th percentile of the post window, so a change must hold
  for about a third of it, not one scrape), the relative change of the post median, the raw extremes, and
  whether it vanished (NaN after, values before: a GPU off the bus). A signal is
  looked up by meaning (``"cpu"``, ``"itl"``…) and resolved to the column the case has, full-view name first,
  study-view name second (:data:`SIGNALS`).
* :class:`LogEvidence` — per service, counts after the onset of the log lines that say something about a cause
  (engine death, CUDA errors, Xid codes, health-check failures, CrashLoopBackOff, KV-cache resizing,
  preemptions, nginx upstream errors), attributed to the replica the line names where the line is another
  service's (a kernel Xid line is the node's; a kubelet back-off line names the pod).
* :class:`SpanEvidence` — from the request chains: per replica the calls the proxy sent it before and after
  (traffic share), how much longer the proxy's CLIENT call to it took than the engine's own span (the network
  between them), the engine span's ``gen_ai.latency.*`` decomposition (queue, prefill, decode) and prompt
  lengths, and how long a request waited inside the proxy before it was sent on (proxy span minus its CLIENT
  child).

Cost. A 20 req/s case has ~30,000 spans and ~45,000 log lines in its window, so no reader takes a Python step per
span or line: the span attributes are searched as one block of bytes in arrow's layout (:class:`_TextColumn`, which
reads exactly what the regexes :data:`GEN_AI` and :data:`PEER` read, and hands them the few texts it cannot settle),
services and peers become integer codes, parents are found by a hash join, log templates are coded in arrow and
only the lines a pattern hits become Python strings.

Nothing here knows the ground truth; everything is a function of the observation and the onset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from llmrca.case import TIME, Observation
from llmrca.case.clean import fill_gaps_array
from llmrca.methods.scoring import baseline, tolerance

# Signal → column metric names that carry it, preferred first (full view, then the study view's name).
SIGNALS: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu_usage_seconds", "ctn_cpu"),
    "memory": ("memory_working_set_bytes", "ctn_memory"),
    "net_packets": ("network_transmit_packets", "ctn_network"),
    "gpu_util": ("gpu_util", "ctn_gpu"),
    "mesh_p90": ("request_duration_milliseconds_p90", "latency"),
    "mesh_p50": ("request_duration_milliseconds_p50",),
    "mesh_requests": ("requests",),
    "mesh_5xx": ("requests_5xx",),
    "power": ("power_usage",),
    "sm_clock": ("sm_clock",),
    "gpu_temp": ("gpu_temp",),
    "power_violation": ("power_violation",),
    "thermal_violation": ("thermal_violation",),
    "clock_reasons": ("clocks_event_reasons",),
    "xid": ("xid_errors",),
    "ecc_dbe": ("ecc_dbe_vol_total",),
    "remap_pending": ("row_remap_pending",),
    "remapped": ("uncorrectable_remapped_rows",),
    "fb_used": ("fb_used",),
    "running": ("num_requests_running",),
    "waiting": ("num_requests_waiting",),
    "kv_usage": ("kv_cache_usage_perc",),
    "preemptions": ("num_preemptions",),
    "success": ("request_success",),
    "prompt_rate": ("prompt_tokens",),
    "gen_rate": ("generation_tokens",),
    "itl": ("inter_token_latency_seconds_p50",),
    "ttft": ("time_to_first_token_seconds_p50",),
    "queue_time": ("request_queue_time_seconds_p50",),
    "prefill_time": ("request_prefill_time_seconds_p50",),
    "decode_time": ("request_decode_time_seconds_p50",),
    "e2e": ("e2e_request_latency_seconds_p50",),
    "prompt_len": ("request_prompt_tokens_p50",),
    # the workload's client (loadgen)
    "client_prompt_rate": ("prompt_tokens_sent",),
    "client_prompt_len": ("prompt_length_p50",),
    "client_requests": ("requests_sent",),
    "client_failures": ("request_failures",),
    # nodes
    "node_cpu": ("cpu_seconds", "node_cpu"),
    "node_memory": ("node_memory",),
    "node_mem_available": ("memory_memavailable_bytes",),
}
GPU_SAMPLED = ("power", "sm_clock", "gpu_temp", "gpu_util")
HIGH_Q, LOW_Q = 70.0, 30.0  # percentiles of the post window a sustained change is read at (see the module docs)


@dataclass(frozen=True)
class Change:
    """How one column moved: ``up``/``down`` sustained change in baseline scales (>= 0), ``peak`` the largest
    absolute one, ``rel`` the post median relative to the baseline centre minus 1, ``vanished`` the share of post
    rows without a value where the pre window had values, ``pre_max``/``post_max`` (``pre_min``/``post_min``) the
    raw extremes."""

    column: str
    up: float = 0.0
    down: float = 0.0
    peak: float = 0.0
    rel: float = 0.0
    vanished: float = 0.0
    pre_max: float = 0.0
    post_max: float = 0.0
    center: float = 0.0
    post_median: float = 0.0
    pre_min: float = 0.0
    post_min: float = 0.0


NONE = Change(column="")


class MetricChanges:
    """Robust change statistics of every metric column around ``onset`` (see the module docs)."""

    def __init__(self, obs: Observation, onset: float, window: int) -> None:
        self.present = False
        self._by: dict[tuple[str, str], Change] = {}
        self.columns: set[str] = set()
        m = obs.metrics
        if m is None or TIME not in m.columns or not obs.metric_columns:
            return
        t = m[TIME].to_numpy(dtype=float)
        split = int(np.searchsorted(t, onset, side="left"))
        lo, hi = max(0, split - window), min(len(t), split + window)
        if split - lo < 2 or hi - split < 1:
            return
        cols = obs.metric_columns
        raw = m[cols].to_numpy(dtype=float, copy=True)[lo:hi]
        s = split - lo
        pre_nan = np.isnan(raw[:s]).mean(axis=0)
        post_nan = np.isnan(raw[s:]).mean(axis=0)
        vals = fill_gaps_array(raw.copy())
        ok = ~np.isnan(vals).any(axis=0)
        pre, post = vals[:s][:, ok], vals[s:][:, ok]
        center, scale = baseline(pre, post, "robust")
        tol = tolerance(np.concatenate([pre, post], axis=0))
        hi_q, med, lo_q = np.percentile(post, [HIGH_Q, 50.0, LOW_Q], axis=0)
        safe = np.where(scale > 0, scale, 1.0)
        up = np.where(scale > 0, np.maximum(hi_q - center, 0.0) / safe, 0.0)
        down = np.where(scale > 0, np.maximum(center - lo_q, 0.0) / safe, 0.0)
        dev = np.abs(post - center)
        dev = np.where(dev <= tol, 0.0, dev)
        peak = np.where(scale > 0, dev.max(axis=0) / safe, 0.0)
        denom = np.maximum(np.abs(center), tol + 1e-12)
        rel = (med - center) / denom
        # one reduction per statistic over all columns, then plain floats per column (a full-view case has ~700)
        stats = zip(up.tolist(), down.tolist(), peak.tolist(), rel.tolist(), pre.max(axis=0).tolist(),
                    post.max(axis=0).tolist(), center.tolist(), med.tolist(), pre.min(axis=0).tolist(),
                    post.min(axis=0).tolist(), strict=True)
        for c, good, pn, qn in zip(cols, ok.tolist(), pre_nan.tolist(), post_nan.tolist(), strict=True):
            svc, _, metric = c.partition("_")
            self.columns.add(c)
            if not good:
                self._by[(svc, metric)] = Change(c, vanished=qn)
                continue
            u, d, pk, r, pre_max, post_max, ctr, md, pre_min, post_min = next(stats)
            self._by[(svc, metric)] = Change(c, up=u, down=d, peak=pk, rel=r, vanished=qn if pn < 0.5 else 0.0,
                                             pre_max=pre_max, post_max=post_max, center=ctr, post_median=md,
                                             pre_min=pre_min, post_min=post_min)
        self.present = True

    def has(self, service: str, signal: str) -> bool:
        return any((service, name) in self._by for name in SIGNALS[signal])

    def get(self, service: str, signal: str) -> Change:
        """The change of ``signal`` at ``service``, from the first column the case has; an all-zero change when
        it has none."""
        for name in SIGNALS[signal]:
            ch = self._by.get((service, name))
            if ch is not None:
                return ch
        return NONE

    def services(self) -> list[str]:
        return list(dict.fromkeys(s for s, _ in self._by))

    def service_changes(self, service: str) -> list[Change]:
        return [c for (s, _), c in self._by.items() if s == service]


# -- logs -----------------------------------------------------------------------------------------------------
# What a line says, by its message (patterns of the lines vLLM, Ray Serve, nginx, the kernel and the kubelet print).
LOG_PATTERNS: dict[str, re.Pattern[str]] = {
    "engine_dead": re.compile(r"EngineDeadError|EngineCore encountered a fatal error"),
    "cuda_ecc": re.compile(r"CUDA error: uncorrectable ECC", re.IGNORECASE),
    "cuda_error": re.compile(r"CUDA error"),
    "health_failed": re.compile(r"health check failed|failed health check"),
    "crashloop": re.compile(r"CrashLoopBackOff"),
    "kv_cache_size": re.compile(r"GPU KV cache size"),
    "preempted": re.compile(r"Preemptions: [1-9]"),  # read from the message (a template has <*> for the count)
    "upstream_timeout": re.compile(r"upstream timed out"),
    "upstream_closed": re.compile(r"upstream prematurely closed|Connection refused"),
    "replica_started": re.compile(r"started successfully"),
    "aborted": re.compile(r"Aborted request"),
    "oom": re.compile(r"out of memory|oom-killer|OOM", re.IGNORECASE),
}
# kinds whose pattern needs the line's values: the templates are narrowed by a literal, the lines by the pattern
MESSAGE_ONLY = {"preempted": "Preemptions:"}
XID_CODE = re.compile(r"Xid \(PCI:[^)]*\): (\d+)")


@dataclass
class LogEvidence:
    """Per service, counts of each :data:`LOG_PATTERNS` kind after (``post``) and before (``pre``) the onset,
    and the Xid codes seen after it per replica."""

    present: bool = False
    post: dict[str, dict[str, int]] = field(default_factory=dict)
    pre: dict[str, dict[str, int]] = field(default_factory=dict)
    xids: dict[str, set[int]] = field(default_factory=dict)

    def count(self, service: str, kind: str, *, after: bool = True) -> int:
        return (self.post if after else self.pre).get(service, {}).get(kind, 0)


def read_logs(obs: Observation, onset: float, replicas: list[str], window_s: float) -> LogEvidence:
    logs = obs.logs
    ev = LogEvidence()
    if logs is None or not len(logs) or "message" not in logs.columns or "time" not in logs.columns:
        return ev
    ev.present = True
    t = pd.to_numeric(logs["time"], errors="coerce").to_numpy(dtype=float)
    keep = np.flatnonzero((t >= onset - window_s) & (t < onset + window_s))
    after = t[keep] >= onset
    # Patterns are tested once per distinct template where the logs carry one (a few dozen), not once per line;
    # the codes come from the window's rows as arrow stores them (hashed in C, not turned into Python strings), and
    # only the lines a pattern hits are: a few hundred of tens of thousands.
    key = logs["template"] if "template" in logs.columns else logs["message"]
    codes, texts = _codes(_arrow_text(key, keep))

    def line(col: str, rows: np.ndarray) -> list[str]:
        if col not in logs.columns:
            return [""] * len(rows)
        return logs[col].iloc[keep[rows]].astype(object).fillna("").map(str).tolist()

    hosts = obs.topology.hosts
    for kind, pat in LOG_PATTERNS.items():
        literal = MESSAGE_ONLY.get(kind)
        hit_codes = [i for i, u in enumerate(texts) if (literal in u if literal else pat.search(u))]
        if not hit_codes:
            continue
        rows = np.flatnonzero(np.isin(codes, hit_codes))
        msg = line("message", rows)
        svc = line("service", rows)
        for i, m, s in zip(rows, msg, svc, strict=True):
            if literal and not pat.search(m):
                continue
            owner = _owner(s, m, replicas)
            book = ev.post if after[i] else ev.pre
            d = book.setdefault(owner, {})
            d[kind] = d.get(kind, 0) + 1
    xid_codes = [i for i, u in enumerate(texts) if "Xid" in u]
    rows = np.flatnonzero(np.isin(codes, xid_codes) & after)
    for m, node in zip(line("message", rows), line("service", rows), strict=True):
        mt = XID_CODE.search(m)
        if not mt:
            continue
        # the kernel line is the node's: it concerns the replica on that node whose engine died with it
        on_node = [r for r in replicas if hosts.get(r) == node] or [node]
        for r in on_node:
            ev.xids.setdefault(r, set()).add(int(mt.group(1)))
    return ev


def _owner(service: str, message: str, replicas: list[str]) -> str:
    """The service a line is about: a replica the line of another service names (the kubelet's back-off line names
    its pod), else the service that printed it."""
    if service in replicas:
        return service
    named = [r for r in replicas if r in message]
    if named:
        return max(named, key=len)  # "ray-replicas-10" over "ray-replicas-1"
    return service


# -- spans ----------------------------------------------------------------------------------------------------
_NUM = r"(-?[\d.eE+-]+)"
GEN_AI = {
    "queue": re.compile(r'"gen_ai\.latency\.time_in_queue":' + _NUM),
    "ttft": re.compile(r'"gen_ai\.latency\.time_to_first_token":' + _NUM),
    "prefill": re.compile(r'"gen_ai\.latency\.time_in_model_prefill":' + _NUM),
    "decode": re.compile(r'"gen_ai\.latency\.time_in_model_decode":' + _NUM),
    "prompt": re.compile(r'"gen_ai\.usage\.prompt_tokens":' + _NUM),
    "completion": re.compile(r'"gen_ai\.usage\.completion_tokens":' + _NUM),
}
PEER = re.compile(r'"peer\.service":"([^"]+)"')
# The same patterns as literals (each regex above is its literal followed by _NUM, or PEER's by a quoted text), for
# the byte scan of :class:`_TextColumn`, which reads them without a Python step per span.
GEN_AI_KEY = {"queue": b'"gen_ai.latency.time_in_queue":', "ttft": b'"gen_ai.latency.time_to_first_token":',
              "prefill": b'"gen_ai.latency.time_in_model_prefill":',
              "decode": b'"gen_ai.latency.time_in_model_decode":', "prompt": b'"gen_ai.usage.prompt_tokens":',
              "completion": b'"gen_ai.usage.completion_tokens":'}
PEER_KEY = b'"peer.service":"'
# A lost segment costs the call that carried it a retransmission timeout: Linux's floor is 200 ms (TCP_RTO_MIN), so a
# call the network delayed by 150 ms or more beyond the engine's own span almost surely waited for a retransmission.
RETRANSMIT_S = 0.15


@dataclass
class SpanEvidence:
    """Per replica: proxy calls to it before/after (``calls_pre``/``calls_post``, per second), their error share
    after, the median extra time of the proxy's call over the engine's span before/after (``net_pre``/``net_post``,
    s, and the 25th percentile after: a delay shifts every call, loss only some), how many of those calls waited a
    retransmission timeout or more (``retx_pre``/``retx_post``: (calls over :data:`RETRANSMIT_S`, calls)), the
    median engine-span stages
    before/after (``stages``: queue, ttft, prefill, decode, per output token decode) and prompt tokens; for the
    proxy the median time a request waited in it before/after."""

    present: bool = False
    calls_pre: dict[str, float] = field(default_factory=dict)
    calls_post: dict[str, float] = field(default_factory=dict)
    count_pre: int = 0  # the proxy's calls to any replica before / after the onset (counts, for tests of shares)
    count_post: int = 0
    errors_post: dict[str, float] = field(default_factory=dict)
    net_pre: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    net_post: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    retx_pre: dict[str, tuple[int, int]] = field(default_factory=dict)
    retx_post: dict[str, tuple[int, int]] = field(default_factory=dict)
    stages_pre: dict[str, dict[str, float]] = field(default_factory=dict)
    stages_post: dict[str, dict[str, float]] = field(default_factory=dict)
    proxy_wait: tuple[float, float] = (float("nan"), float("nan"))
    prompt: tuple[float, float] = (float("nan"), float("nan"))
    proxy: str | None = None


def read_spans(obs: Observation, onset: float, replicas: list[str], window_s: float, post_s: float
               ) -> SpanEvidence:
    tr = obs.traces
    ev = SpanEvidence()
    need = ("trace_id", "span_id", "parent_span_id", "service", "operation", "start_time_us", "duration_us")
    if tr is None or not len(tr) or any(c not in tr.columns for c in need):
        return ev
    start = pd.to_numeric(tr["start_time_us"], errors="coerce").to_numpy(dtype=float) / 1e6
    kept = (start >= onset - window_s) & (start < onset + post_s)
    keep = np.flatnonzero(kept)
    if not len(keep):
        return ev
    # Every per-span step below is an array operation (a 20 req/s case has ~30,000 spans in the window): the texts
    # stay in arrow's layout, the services and peers become codes, parents are found by a hash join.
    start = start[keep]
    dur = pd.to_numeric(tr["duration_us"], errors="coerce").to_numpy(dtype=float)[keep] / 1e6
    svc_code, svc_names = _codes(_arrow_text(tr["service"], keep))
    code_of = {name: i for i, name in enumerate(svc_names)}
    status = _arrow_text(tr["status"], keep) if "status" in tr.columns else None
    is_error = np.zeros(len(keep), dtype=bool) if status is None else \
        pc.equal(status, "ERROR").to_numpy(zero_copy_only=False)
    n = len(keep)
    peer = np.full(n, -1, dtype=np.int64)  # the CLIENT call's peer.service, as a code of code_of
    is_client = np.zeros(n, dtype=bool)
    is_engine = np.zeros(n, dtype=bool)
    stage = np.full((n, len(GEN_AI)), np.nan)
    if "attributes" in tr.columns:
        # only the rows from the first kept one to the last are scanned (spans come about in time order, so that is
        # about the window): zero-copy, and a row in that range outside the window is read but not used
        lo, hi = int(keep[0]), int(keep[-1]) + 1
        text = _TextColumn(_arrow_text(tr["attributes"], np.arange(lo, hi)))
        at = keep - lo
        client_any = text.contains(b'"CLIENT"')
        has_peer, peer_values = text.quoted_after(PEER_KEY, client_any, PEER)
        is_client = (client_any & has_peer)[at]
        peer = _map_codes(peer_values, has_peer, code_of)[at]
        engine_any = text.contains(b"gen_ai.latency") & ~client_any
        is_engine = engine_any[at]
        parse = engine_any & kept[lo:hi]
        stage = text.numbers_after([GEN_AI_KEY[k] for k in GEN_AI], parse, list(GEN_AI.values()))[at]
    after = start >= onset
    span_id = _arrow_text(tr["span_id"], keep)
    parent = _arrow_text(tr["parent_span_id"], keep)
    pre_s = max(onset - float(start.min()), 1e-9)
    post_len = max(min(post_s, float(start.max()) - onset), 1e-9)
    ev.present = True
    rep_codes = [code_of[r] for r in replicas if r in code_of]
    client_rows = np.flatnonzero(is_client & np.isin(peer, rep_codes))
    if len(client_rows):
        counts = np.bincount(svc_code[client_rows], minlength=len(svc_names))
        ev.proxy = min(svc_names[i] for i in np.flatnonzero(counts == counts.max()))  # the mode; ties: the first name
    # engine spans: a replica's SERVER span whose parent is the proxy's CLIENT call to it (the last such span, and
    # the last CLIENT call of a repeated span id, as a dict built in row order would keep)
    engine_rows = np.flatnonzero(is_engine)
    child = np.full(n, -1, dtype=np.int64)
    p = _parent_row(parent, engine_rows, span_id, client_rows)
    ok = p >= 0
    p, c = p[ok], engine_rows[ok]
    same = svc_code[c] == peer[p]
    np.maximum.at(child, p[same], c[same])
    stage_vals = {k: stage[:, j] for j, k in enumerate(GEN_AI)}
    timed = engine_rows[np.isfinite(stage_vals["ttft"][engine_rows])]
    for r in replicas:
        rows = client_rows[peer[client_rows] == code_of.get(r, -3)]
        ev.calls_pre[r] = float((~after[rows]).sum()) / pre_s
        ev.calls_post[r] = float(after[rows].sum()) / post_len
        ev.count_pre += int((~after[rows]).sum())
        ev.count_post += int(after[rows].sum())
        post_rows = rows[after[rows]]
        ev.errors_post[r] = float(is_error[post_rows].mean()) if len(post_rows) else 0.0
        for book, retx, side in ((ev.net_pre, ev.retx_pre, ~after[rows]), (ev.net_post, ev.retx_post, after[rows])):
            sel = rows[side]
            sel = sel[(child[sel] >= 0) & ~is_error[sel]]
            e = dur[sel] - dur[child[sel]]
            retx[r] = (int((e >= RETRANSMIT_S).sum()), len(e))
            if len(e) >= 3:
                book[r] = (float(np.median(e)), float(np.percentile(e, 25)), float(np.percentile(e, 90)))
        eng = timed[svc_code[timed] == code_of.get(r, -3)]
        for book, side in ((ev.stages_pre, ~after[eng]), (ev.stages_post, after[eng])):
            sel = eng[side]
            if len(sel) >= 3:
                # every stage's median at once (a stage with a missing value has a NaN median, as one at a time)
                d = dict(zip(GEN_AI, np.median(stage[sel], axis=0).tolist(), strict=True))
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
        q = _parent_row(parent, client_rows, span_id, np.flatnonzero(svc_code == code_of[ev.proxy]))
        ok = (q >= 0) & (q != client_rows)
        cp, q = client_rows[ok], q[ok]
        waits = start[cp] - start[q]
        waits_pre, waits_post = waits[~after[q]], waits[after[q]]
        ev.proxy_wait = (float(np.median(waits_pre)) if len(waits_pre) else float("nan"),
                         float(np.median(waits_post)) if len(waits_post) else float("nan"))
    return ev


# -- text columns, read in arrow's layout ---------------------------------------------------------------------
def _arrow_text(col: pd.Series, rows: np.ndarray) -> pa.Array:
    """The column's texts at ``rows`` (ascending) as one arrow array of large strings, a missing value as the empty
    text (as the readers have always taken it). Arrow-backed texts are not copied where the rows are a range."""
    if isinstance(col.dtype, pd.StringDtype):
        arr = pa.array(col.array)
    else:
        values = col.astype(object).fillna("")
        try:
            arr = pa.array(values.to_numpy(dtype=object), type=pa.large_string())
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # not texts: their printed forms
            arr = pa.array(values.map(str).to_numpy(dtype=object), type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows):
        arr = arr.slice(int(rows[0]), len(rows))
    else:
        arr = arr.take(pa.array(rows, type=pa.int64()))
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr


def _codes(arr: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Each text's code and the distinct texts (in order of first appearance)."""
    enc = pc.dictionary_encode(arr)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary.to_pylist()


def _map_codes(values: pa.Array, has: np.ndarray, code_of: dict[str, int]) -> np.ndarray:
    """Codes of the texts ``values`` holds for the rows where ``has`` (in order), -1 elsewhere; a text ``code_of``
    lacks is added to it with a new code."""
    out = np.full(len(has), -1, dtype=np.int64)
    if len(values):
        codes, names = _codes(values)
        table = np.asarray([code_of.setdefault(v, len(code_of)) for v in names], dtype=np.int64)
        out[has] = table[codes]
    return out


def _parent_row(parent: pa.Array, rows: np.ndarray, span_id: pa.Array, among: np.ndarray) -> np.ndarray:
    """For each of ``rows``, the row of ``among`` whose span id is its parent id (the last of them when an id
    repeats), -1 for none."""
    if not len(rows) or not len(among):
        return np.full(len(rows), -1, dtype=np.int64)
    rev = among[::-1]  # index_in gives the first match: reversed, the last row
    idx = pc.index_in(parent.take(pa.array(rows)), value_set=span_id.take(pa.array(rev)))
    i = pc.fill_null(idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.where(i >= 0, rev[np.maximum(i, 0)], -1)


_NUM_BYTE = np.zeros(256, dtype=bool)
_NUM_BYTE[np.frombuffer(b"0123456789.eE+-", dtype=np.uint8)] = True
_PUNCT = frozenset(b'"{}[]:,. ')
_RARE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZv")
_QUOTED = 64  # bytes looked at for a quoted text's closing quote
_STEPS = np.arange(64, dtype=np.int32)
_SPAN = 16  # bytes looked at after a key; a longer number is read by the regex


class _TextColumn:
    """The bytes (UTF-8) of a column's texts end to end, searched for literals by array operations instead of a
    Python step per text. Each reader gives exactly what the module's regex gives on each text: the first
    occurrence of the key that the value pattern completes; a text the byte scan cannot settle (a value longer
    than :data:`_SPAN`, a non-ASCII byte where a regex's ``\\d`` could continue) is read by the regex itself."""

    def __init__(self, arr: pa.Array) -> None:
        self.arr = arr
        bufs = arr.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
        data = bufs[2]
        # a slice shares its parent's buffer: only its own bytes are kept (a view), its offsets made relative
        self.data = np.frombuffer(data, dtype=np.uint8)[int(offs[0]):int(offs[-1])] if data is not None and \
            data.size else np.zeros(0, dtype=np.uint8)
        self.offs = offs - offs[0]
        self._at: dict[bytes, np.ndarray] = {}

    def _starts(self, sub: bytes) -> np.ndarray:
        """Every position where ``sub`` begins, narrowed from those of ``sub`` less its last byte; each is kept, so
        keys that share a beginning (the six ``gen_ai.`` ones) share its narrowing."""
        got = self._at.get(sub)
        if got is None:
            if len(sub) == 1:
                got = np.flatnonzero(self.data == sub[0])
            else:
                base = self._starts(sub[:-1])
                k = len(sub) - 1
                if len(base) and base[-1] >= len(self.data) - k:
                    base = base[base < len(self.data) - k]
                got = base[self.data[base + k] == sub[k]]
            self._at[sub] = got
        return got

    def find(self, lit: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(text, position) of every occurrence of ``lit`` inside one text, in order."""
        # Narrowing starts at the literal's rarest byte in these texts (an upper-case letter or a "v"), else at its
        # first one that is not JSON punctuation, the commonest bytes here; which byte it starts from changes the
        # work, not the result. The six gen_ai keys all start from "g", and so share "gen_ai.".
        lead = next((j for j, b in enumerate(lit) if b in _RARE), None)
        if lead is None:
            lead = next((j for j, b in enumerate(lit) if b not in _PUNCT), len(lit) - 1)
        pos = self._starts(lit[lead:])
        if lead:
            pos = pos[pos >= lead] - lead
            for j in range(lead):
                pos = pos[self.data[pos + j] == lit[j]]
        row = np.searchsorted(self.offs, pos, side="right") - 1
        inside = pos + len(lit) <= self.offs[row + 1]
        return row[inside], pos[inside]

    def contains(self, lit: bytes) -> np.ndarray:
        out = np.zeros(len(self.arr), dtype=bool)
        out[self.find(lit)[0]] = True
        return out

    def _gather(self, begin: np.ndarray, length: np.ndarray) -> pa.Array:
        """The byte ranges as an arrow string array."""
        offs = np.zeros(len(begin) + 1, dtype=np.int64)
        np.cumsum(length, out=offs[1:])
        idx = np.arange(int(offs[-1]), dtype=np.int64) + np.repeat(begin - offs[:-1], length)
        return pa.LargeStringArray.from_buffers(len(begin), pa.py_buffer(offs), pa.py_buffer(self.data[idx]))

    def _first(self, row: np.ndarray, good: np.ndarray, redo: np.ndarray) -> np.ndarray:
        """Index (into row) of each text's first good occurrence, leaving out the texts to redo."""
        sel = np.flatnonzero(good & ~redo[row])
        r = row[sel]
        if len(r) < 2 or bool((r[1:] > r[:-1]).all()):  # one occurrence a text, the usual case
            return sel
        _, first = np.unique(r, return_index=True)
        return sel[first]

    def _redo(self, rx: re.Pattern[str], rows: np.ndarray) -> list[tuple[int, str]]:
        out = []
        for i in rows:
            mt = rx.search(str(self.arr[int(i)].as_py()))
            if mt:
                out.append((int(i), mt.group(1)))
        return out

    def _run(self, begin: np.ndarray, end: np.ndarray, width: int) -> np.ndarray:
        """How many bytes from each of ``begin`` (up to ``width``, and not past its text's ``end``) are number
        characters."""
        ahead = begin.astype(np.int32 if len(self.data) < 2**31 - 64 else np.int64)[:, None] + _STEPS[:width]
        inside = ahead < end[:, None]
        num = _NUM_BYTE[self.data[np.minimum(ahead, len(self.data) - 1)]] & inside
        return np.where(num.all(axis=1), width, num.argmin(axis=1))

    def numbers_after(self, keys: list[bytes], where: np.ndarray, rxs: list[re.Pattern[str]]) -> np.ndarray:
        """Per text (rows) and key (columns), the number the key's regex (``key`` then ``-?[\\d.eE+-]+``) reads,
        where ``where``; NaN elsewhere. All keys in one pass: one window, one gather, one cast."""
        n = len(self.arr)
        out = np.full((n, len(keys)), np.nan)
        found = [self.find(k) for k in keys]
        kid = np.concatenate([np.full(len(r), j, dtype=np.int64) for j, (r, _) in enumerate(found)])
        row = np.concatenate([r for r, _ in found])
        begin = np.concatenate([p + len(k) for (_, p), k in zip(found, keys, strict=True)])
        sel = where[row]
        kid, row, begin = kid[sel], row[sel], begin[sel]
        if not len(row):
            return out
        end = self.offs[row + 1]
        # Most numbers are shorter than half the window: the first half settles them, the rest look at all of it
        length = self._run(begin, end, _SPAN // 2)
        more = np.flatnonzero(length == _SPAN // 2)
        length[more] = self._run(begin[more], end[more], _SPAN)
        stop = begin + length
        nxt = self.data[np.minimum(stop, len(self.data) - 1)]
        pair = kid * n + row  # ascending: the keys in order, each key's occurrences in text order
        odd = np.zeros(n * len(keys), dtype=bool)
        odd[pair[(length == _SPAN) | ((stop < end) & (nxt >= 0x80))]] = True
        pick = self._first(pair, length > 0, odd)
        texts = self._gather(begin[pick], length[pick])
        try:
            vals = pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # not a number arrow reads: Python's reading, which raises as the regex reader did
            vals = np.asarray([float(v) for v in texts.to_pylist()], dtype=float)
        out[row[pick], kid[pick]] = vals
        for j, rx in enumerate(rxs):
            for i, v in self._redo(rx, np.flatnonzero(odd[j * n:(j + 1) * n])):
                out[i, j] = float(v)
        return out

    def quoted_after(self, key: bytes, where: np.ndarray, rx: re.Pattern[str]) -> tuple[np.ndarray, pa.Array]:
        """Per text where ``where``: whether ``rx`` (``key``, then one or more non-quote characters and a quote)
        matches, and the texts it captures (for those rows, in order)."""
        row, pos = self.find(key)
        sel = where[row]
        row, pos = row[sel], pos[sel]
        has = np.zeros(len(self.arr), dtype=bool)
        if not len(row):
            return has, pa.array([], type=pa.large_string())
        begin = pos + len(key)
        end = self.offs[row + 1]
        ahead = begin[:, None] + np.arange(_QUOTED)
        quote = (self.data[np.minimum(ahead, len(self.data) - 1)] == ord('"')) & (ahead < end[:, None])
        found = quote.any(axis=1)
        length = np.where(found, quote.argmax(axis=1), _QUOTED)
        # no quote within _QUOTED bytes but the text goes on: the regex settles it
        odd = np.zeros(len(self.arr), dtype=bool)
        odd[row[~found & (begin + _QUOTED < end)]] = True
        good = found & (length > 0)
        close = begin + length
        pick = self._first(row, good, odd)
        values = self._gather(begin[pick], close[pick] - begin[pick])
        redo = self._redo(rx, np.flatnonzero(odd))
        if redo:  # merged back in row order
            got = dict(zip(row[pick].tolist(), values.to_pylist(), strict=True)) | dict(redo)
            order = sorted(got)
            has[order] = True
            return has, pa.array([got[i] for i in order], type=pa.large_string())
        has[row[pick]] = True
        return has, values