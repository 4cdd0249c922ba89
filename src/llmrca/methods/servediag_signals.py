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

Nothing here knows the ground truth; everything is a function of the observation and the onset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

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
        j = 0
        for i, c in enumerate(cols):
            svc, _, metric = c.partition("_")
            self.columns.add(c)
            if not ok[i]:
                self._by[(svc, metric)] = Change(c, vanished=float(post_nan[i]))
                continue
            self._by[(svc, metric)] = Change(
                c, up=float(up[j]), down=float(down[j]), peak=float(peak[j]), rel=float(rel[j]),
                vanished=float(post_nan[i]) if pre_nan[i] < 0.5 else 0.0,
                pre_max=float(pre[:, j].max()), post_max=float(post[:, j].max()), center=float(center[j]),
                post_median=float(med[j]), pre_min=float(pre[:, j].min()), post_min=float(post[:, j].min()))
            j += 1
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
    logs = logs.iloc[keep]
    after = t[keep] >= onset
    svc = logs["service"].astype(object).fillna("").to_numpy(dtype=object) if "service" in logs else \
        np.full(len(logs), "", dtype=object)
    # Patterns are tested once per distinct template where the logs carry one (a few dozen), not once per line.
    key = logs["template"] if "template" in logs.columns else logs["message"]
    codes, uniques = pd.factorize(key.astype(object).fillna(""))
    msg = logs["message"].astype(object).fillna("").to_numpy(dtype=object)
    hosts = obs.topology.hosts
    for kind, pat in LOG_PATTERNS.items():
        literal = MESSAGE_ONLY.get(kind)
        hit_codes = [i for i, u in enumerate(uniques) if (literal in str(u) if literal else pat.search(str(u)))]
        if not hit_codes:
            continue
        rows = np.flatnonzero(np.isin(codes, hit_codes))
        if literal:
            rows = np.asarray([i for i in rows if pat.search(str(msg[i]))], dtype=np.int64)
        for i in rows:
            owner = _owner(str(svc[i]), str(msg[i]), replicas)
            book = ev.post if after[i] else ev.pre
            d = book.setdefault(owner, {})
            d[kind] = d.get(kind, 0) + 1
    xid_codes = [i for i, u in enumerate(uniques) if "Xid" in str(u)]
    for i in np.flatnonzero(np.isin(codes, xid_codes) & after):
        mt = XID_CODE.search(str(msg[i]))
        if not mt:
            continue
        node = str(svc[i])
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
