"""Log lines of the simulated deployment, as nginx, Ray Serve, vLLM, the raylet and the kernel print them.

Sources and formats (one line per row; a multi-line record such as a traceback is split per line, as a
line-based shipper like Fluent Bit does without a multiline parser):

- gateway (nginx): an access line per request (``log_format`` with ``rt=$request_time
  urt="$upstream_response_time"``) and ``[error]`` lines where nginx itself fails a request
  (upstream timed out → 504, connection refused / premature close → 502).
- Serve proxy (on the head pod, also home of the Serve controller): an access line per request, the
  client-disconnect line when nginx gives up, and the controller's replica health / restart lines.
- replicas: vLLM's ``Received request`` / ``Added request`` / ``Finished request`` (``Aborted request`` when the
  caller hung up) lines, its periodic engine stats (V0 format, two lines per interval, quiet when idle), the
  preemption warning (on the 1st and every 50th preemption, as vLLM rate-limits it), engine failure lines, and Ray
  Serve's replica access line (plus ``Request failed.`` on a 5xx).
- nodes (``topology.hosts``): kernel lines for GPU Xid errors and kernel OOM kills.

Faults log only what the real system writes: CPU or memory stress (stress-ng runs outside the target's
logging), a network delay (netem) and a GPU power cap (``nvidia-smi`` prints on the node of the Job that ran it)
leave no line in the deployment's services; their effects show through the request lines above.

``template`` is the line with every value the program fills per line masked as ``<*>`` (times, ids,
addresses, counts, durations, status codes); the fixed text stays, as a Drain-style parser would find it.
"""

from __future__ import annotations

import json
import time as _time
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case.schema import LOG_COLUMNS
from llmrca.errors import CaseError
from llmrca.sim.traces import (
    REPLICA_PORT,
    ROUTE,
    SERVE_APP,
    SERVE_DEPLOYMENT,
    USER_AGENT,
    check_requests,
    hex_ids,
    request_identities,
    serving_path,
    stages,
)

_STREAM_JITTER = 0x7177
_STREAM_NAMES = 0x4A3E5
_STREAM_UNRELATED = 0x0DD5
# noise="realistic": warnings a deployment prints for reasons unrelated to any fault, per source and hour
# (value and source in docs/simulator.md, "Realistic noise").
UNRELATED_WARNINGS_PER_HOUR = 2.0
_JITTER_MEAN_S = 0.0006  # between the event and the line being written
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PREEMPTION_LOG_EVERY = 50  # vLLM's scheduler warns on every 50th preemption only
_NGINX_REQUEST = f"POST {ROUTE} HTTP/1.1"
_SAMPLING = (
    "SamplingParams(n=1, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, temperature=1.0, "
    "top_p=1.0, top_k=-1, min_p=0.0, seed=None, stop=[], stop_token_ids=[], bad_words=[], "
    "include_stop_str_in_output=False, ignore_eos=False, max_tokens={}, min_tokens=0, logprobs=None, "
    "prompt_logprobs=None, skip_special_tokens=True, spaces_between_special_tokens=True, "
    "truncate_prompt_tokens=None, guided_decoding=None, extra_args=None)"
)
# CUDA's error string after a GPU fault, by Xid (NVIDIA's Xid catalogue).
_CUDA_ERROR_BY_XID = {
    13: "an illegal memory access was encountered",
    31: "an illegal memory access was encountered",
    43: "an illegal memory access was encountered",
    48: "uncorrectable ECC error encountered",
    63: "uncorrectable ECC error encountered",
    64: "uncorrectable ECC error encountered",
    94: "uncorrectable ECC error encountered",
    95: "uncorrectable ECC error encountered",
}
_XID_TEXT = {
    13: "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address",
    31: "Ch 00000008, intr 10000000. MMU Fault: ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f3c_4e000000. "
        "Fault is of type FAULT_PDE ACCESS_TYPE_VIRT_READ",
    48: "An uncorrectable double bit error (DBE) has been detected on GPU in the framebuffer at partition 0, "
        "subpartition 0.",
    79: "GPU has fallen off the bus.",
    94: "Contained: SM (0x1). RST: No, D-RST: No",
    95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
}


class _Lines:
    """Collects groups of lines built column-wise; one frame at the end."""

    def __init__(self) -> None:
        self.times: list[np.ndarray] = []
        self.services: list[np.ndarray] = []
        self.levels: list[np.ndarray] = []
        self.messages: list[list[str]] = []
        self.templates: list[np.ndarray] = []

    def add(self, times: np.ndarray, service: Any, level: Any, messages: list[str], template: Any) -> None:
        n = len(messages)
        if n == 0:
            return
        self.times.append(np.asarray(times, dtype=float))
        self.services.append(_column(service, n))
        self.levels.append(_column(level, n))
        self.messages.append(messages)
        self.templates.append(_column(template, n))

    def frame(self) -> pd.DataFrame:
        if not self.times:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in LOG_COLUMNS.items()})
        t = np.concatenate(self.times)
        order = np.argsort(t, kind="stable")
        msgs = np.empty(len(t), dtype=object)
        msgs[:] = [m for group in self.messages for m in group]

        def col(parts: list[np.ndarray]) -> Any:
            return pd.array(np.concatenate(parts)[order], dtype="string")

        return pd.DataFrame({
            "time": t[order],
            "service": col(self.services),
            "level": col(self.levels),
            "message": pd.array(msgs[order], dtype="string"),
            "template": col(self.templates),
        })


def _column(value: Any, n: int) -> np.ndarray:
    if isinstance(value, str):
        out = np.empty(n, dtype=object)
        out[:] = value
        return out
    return np.asarray(value, dtype=object)


class _Clock:
    """Formats unix times the way each program prints them; each distinct second is formatted once per style."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], str] = {}

    def _seconds(self, times: np.ndarray, style: str) -> tuple[list[str], np.ndarray]:
        t = np.asarray(times, dtype=float)
        secs = np.floor(t).astype(np.int64)
        uniq, inv = np.unique(secs, return_inverse=True)
        fmt = getattr(self, "_" + style)
        cache = self._cache
        tab = []
        for s in uniq.tolist():
            key = (style, s)
            if key not in cache:
                cache[key] = fmt(_time.gmtime(s))
            tab.append(cache[key])
        return [tab[i] for i in inv.tolist()], t - secs

    def __call__(self, times: np.ndarray, style: str) -> list[str]:
        return self._seconds(times, style)[0]

    def python(self, times: np.ndarray) -> list[str]:
        """Python logging's asctime (used by Ray): "2025-03-12 10:15:32,173"."""
        text, frac = self._seconds(times, "date_time")
        ms = np.minimum((frac * 1000).astype(np.int64), 999).tolist()
        return [f"{s},{m:03d}" for s, m in zip(text, ms)]

    @staticmethod
    def _vllm(x: _time.struct_time) -> str:  # vLLM's "%m-%d %H:%M:%S"
        return f"{x.tm_mon:02d}-{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"

    @staticmethod
    def _date_time(x: _time.struct_time) -> str:
        return f"{x.tm_year}-{x.tm_mon:02d}-{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"

    @staticmethod
    def _nginx_access(x: _time.struct_time) -> str:  # $time_local in UTC: "12/Mar/2025:10:15:32 +0000"
        return (f"{x.tm_mday:02d}/{_MONTHS[x.tm_mon - 1]}/{x.tm_year}:"
                f"{x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d} +0000")

    @staticmethod
    def _nginx_error(x: _time.struct_time) -> str:  # "2025/03/12 10:15:32"
        return f"{x.tm_year}/{x.tm_mon:02d}/{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"

    @staticmethod
    def _syslog(x: _time.struct_time) -> str:  # "Mar 12 10:15:32"
        return f"{_MONTHS[x.tm_mon - 1]} {x.tm_mday:2d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]))


def _fields(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return json.loads(value) if value else {}
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    return dict(value)


def _replica_tag(rng: np.random.Generator) -> str:
    # Ray Serve replica ids: 8 lower-case letters and digits.
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    return "".join(rng.choice(alphabet, 8).tolist())


def logs_from_record(record: Any) -> pd.DataFrame:
    """Every log line the deployment of ``record`` writes (``llmrca.case.schema.LOG_COLUMNS``), sorted by time."""
    req = record.requests
    check_requests(req)
    ev = record.events
    missing = [c for c in ("time", "service", "kind", "fields") if c not in ev.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="sim record events")
    path = serving_path(record)
    ident = request_identities(record)
    jit = _rng(record.seed, _STREAM_JITTER)
    names = _rng(record.seed, _STREAM_NAMES)
    out = _Lines()

    events = [(float(t), str(s), str(k), _fields(f)) for t, s, k, f in zip(
        ev["time"].tolist(), ev["service"].tolist(), ev["kind"].tolist(), ev["fields"].tolist())]
    replicas = sorted(set(req["replica"].unique().tolist()) | {s for _, s, k, _ in events if k in _REPLICA_KINDS})
    # A replica gets a new Serve id each time it is started again (a healthy report after a failure).
    restarts: dict[str, list[float]] = {r: [] for r in replicas}
    down: set[str] = set()
    for t, s, k, f in events:
        if k == "replica_health":
            if not f.get("ok", True):
                down.add(s)
            elif s in down:
                down.discard(s)
                restarts.setdefault(s, []).append(t)
    tags = {r: [_replica_tag(names) for _ in range(len(restarts.get(r, [])) + 1)] for r in replicas}
    pods = sorted({path.proxy, *replicas})
    node_ids = {r: hex_ids(names, 1, 28)[0] for r in pods}  # Ray node ids (one Ray node per pod)
    pids = {r: int(p) for r, p in zip([*pods, _CONTROLLER], names.integers(200, 4000, len(pods) + 1))}
    ctx = _Context(record, path, ident, tags, restarts, node_ids, pids, jit)

    if (record.config or {}).get("noise") == "realistic":
        # Appended last, so every earlier event keeps its jitter draw: noise="none" has exactly the other lines.
        events += unrelated_warnings(record, path.proxy, replicas)
    _request_lines(ctx, out)
    _event_lines(ctx, events, out)
    return out.frame()


def unrelated_warnings(record: Any, proxy: str, replicas: list[str]) -> list[tuple[float, str, str, dict[str, Any]]]:
    """Background warnings (events of kind ``unrelated_warning``), Poisson in the window for each source: the Serve
    proxy's HTTP server (a malformed request, e.g. a probe), each replica's OpenAI server (a client sending fields
    it ignores), the kernel of each node (perf lowering its sample rate)."""
    rng = _rng(record.seed, _STREAM_UNRELATED)
    hosts = record.topology.hosts
    per_node = {}
    for svc in sorted(hosts):
        per_node.setdefault(hosts[svc], svc)  # one service per node names the node's kernel log
    sources = [(proxy, "invalid_http")] + [(r, "ignored_fields") for r in replicas] + \
        [(svc, "perf_interrupt") for _, svc in sorted(per_node.items())]
    lam = UNRELATED_WARNINGS_PER_HOUR * float(record.duration) / 3600.0
    out: list[tuple[float, str, str, dict[str, Any]]] = []
    for svc, what in sources:
        for t in np.sort(rng.uniform(0.0, float(record.duration), rng.poisson(lam))).tolist():
            out.append((float(record.start) + t, svc, "unrelated_warning",
                        {"what": what, "k": int(rng.integers(0, 3))}))
    return out


_CONTROLLER = "\0controller"  # key of the Serve controller's pid (a process on the proxy's pod)
_REPLICA_KINDS = frozenset({"engine_stats", "preemption", "replica_health", "engine_dead", "oom"})


class _Context:
    def __init__(self, record: Any, path: Any, ident: Any, tags: dict[str, list[str]],
                 restarts: dict[str, list[float]], node_ids: dict[str, str], pids: dict[str, int],
                 jit: np.random.Generator):
        self.record = record
        self.path = path
        self.ident = ident
        self.tags = tags
        self.restarts = restarts
        self.node_ids = node_ids
        self.pids = pids
        self.jit = jit
        self.addr = ident.addresses
        self.clock = _Clock()

    def jitter(self, n: int) -> np.ndarray:
        return self.jit.exponential(_JITTER_MEAN_S, n)

    def ip(self, service: str) -> str:
        return self.addr.get(service, "10.42.0.1")

    def tag_at(self, replica: str, t: float) -> str:
        return self.tags_at(np.array([replica], dtype=object), np.array([t]))[0]

    def tags_at(self, replicas: np.ndarray, times: np.ndarray) -> list[str]:
        """The Serve replica id each replica had at each time (a restart gives a new one)."""
        out = np.empty(len(replicas), dtype=object)
        for r in set(replicas.tolist()):
            sel = replicas == r
            gen = np.searchsorted(np.asarray(self.restarts.get(r, []), dtype=float), times[sel], side="right")
            out[sel] = np.asarray(self.tags[r], dtype=object)[gen]
        return out.tolist()


def _vllm_head(level: str, clock: list[str], where: str) -> list[str]:
    return [f"{level} {c} [{where}] " for c in clock]


def _request_lines(ctx: _Context, out: _Lines) -> None:
    req = ctx.record.requests
    n = len(req)
    if n == 0:
        return
    gw, proxy = ctx.path.gateway, ctx.path.proxy
    f = {c: req[c].to_numpy(dtype=float) for c in req.columns if str(c).startswith("t_")}
    http = req["http_status"].to_numpy(dtype=np.int64)
    out_tok = req["output_tokens"].to_numpy(dtype=np.int64)
    replica = req["replica"].to_numpy(dtype=object)
    vids = ctx.ident.vllm_ids
    sids = ctx.ident.serve_ids
    client = ctx.ip("client")
    # Line times follow the span intervals, so a line and its span agree.
    st = stages(req)
    ok = ~st.failed
    (g0, g1), (p0, p1), (e0, e1) = st.gateway, st.proxy, st.engine
    has_p = st.has_proxy
    has_e = st.has_client & np.isfinite(f["t_engine_arrival"])  # the replica saw the request
    e0 = np.where(has_e, f["t_engine_arrival"], np.nan)
    e1 = np.where(st.has_engine, e1, st.client[1])  # an abandoned request ends when its caller hangs up
    # vLLM logs the request once its prompt is tokenized, just before handing it to the engine.
    ready = f.get("t_ready", e0)
    ready = np.where(np.isfinite(ready), ready, e0)

    # nginx access line, written when the response is complete.
    t = g1 + ctx.jitter(n)
    clock = ctx.clock(t, "nginx_access")
    rt = (g1 - g0).tolist()
    urt = (np.where(has_p, p1, g1) - np.where(has_p, p0, g0)).clip(0).tolist()
    msgs = [
        f'{client} - - [{c}] "{_NGINX_REQUEST}" {s} {b} "-" "{USER_AGENT}" rt={r:.3f} urt="{u:.3f}"'
        for c, s, b, r, u in zip(clock, http.tolist(), ctx.ident.response_bytes.tolist(), rt, urt)
    ]
    out.add(t, gw, "INFO", msgs,
            f'<*> - - [<*>] "{_NGINX_REQUEST}" <*> <*> "-" "{USER_AGENT}" rt=<*> urt="<*>"')

    # nginx error lines where nginx itself failed the request.
    upstream = f"http://{ctx.ip(proxy)}:{REPLICA_PORT}{ROUTE}"
    tail = f', client: {client}, server: _, request: "{_NGINX_REQUEST}", upstream: "{upstream}", host: "{gw}"'
    tail_t = f', client: <*>, server: _, request: "{_NGINX_REQUEST}", upstream: "<*>", host: "{gw}"'
    worker = 29 + (np.arange(n) % 2)  # two worker processes; connections alternate between them
    streaming = out_tok > 0
    cases = [
        (http == 504, "upstream timed out (110: Connection timed out) while reading {}"),
        ((http == 502) & ~has_p, "connect() failed (111: Connection refused) while connecting to upstream"),
        ((http == 502) & has_p, "upstream prematurely closed connection while reading {}"),
    ]
    for sel, text in cases:
        for in_stream in (False, True):
            # nginx names the phase it was in: before the response header, or while relaying the stream.
            idx = np.nonzero(sel & (streaming == in_stream))[0]
            if not len(idx):
                continue
            body = text.format("upstream" if in_stream else "response header from upstream")
            t = g1[idx] + ctx.jitter(len(idx))
            msgs = [f"{c} [error] {w}#{w}: *{1000 + 3 * i} {body}{tail}"
                    for c, w, i in zip(ctx.clock(t, "nginx_error"), worker[idx].tolist(), idx.tolist())]
            out.add(t, gw, "ERROR", msgs, f"<*> <*> [error] <*>#<*>: *<*> {body}{tail_t}")

    # Serve proxy: client-disconnect line (nginx gave up) and the access line.
    idx = np.nonzero(has_p & (http != 502))[0]
    proxy_ip = ctx.ip(proxy)
    gone = idx[http[idx] == 504]
    t_gone = g1 + ctx.jitter(n)
    if len(gone):
        t = t_gone[gone]
        clock = ctx.clock.python(t)
        msgs = [f"INFO {c} proxy {proxy_ip} {sids[i]} -- Client for request {sids[i]} disconnected, "
                "cancelling request." for c, i in zip(clock, gone.tolist())]
        out.add(t, proxy, "INFO", msgs,
                "INFO <*> <*> proxy <*> <*> -- Client for request <*> disconnected, cancelling request.")
    if len(idx):
        # After a disconnect the access line follows the disconnect line.
        t = np.where(http[idx] == 504, t_gone[idx] + 0.0002, p1[idx]) + ctx.jitter(len(idx))
        clock = ctx.clock.python(t)
        code = np.where(http[idx] == 504, 499, http[idx]).tolist()
        lat = ((p1[idx] - p0[idx]) * 1000).tolist()
        msgs = [f"INFO {c} proxy {proxy_ip} {sids[i]} -- POST / {s} {m:.1f}ms"
                for c, i, s, m in zip(clock, idx.tolist(), code, lat)]
        out.add(t, proxy, "INFO", msgs, "INFO <*> <*> proxy <*> <*> -- POST / <*> <*>ms")

    # vLLM on the replica: request received and added to the engine.
    idx = np.nonzero(has_e)[0]
    if len(idx):
        t_recv = ready[idx] + ctx.jitter(len(idx))
        t_add = t_recv + 0.0002 + ctx.jitter(len(idx))
        mx = req["max_tokens"].to_numpy(dtype=np.int64)[idx].tolist()
        params = {m: _SAMPLING.format(m) for m in set(mx)}
        msgs = [
            f"{h}Received request {vids[i]}: prompt: '', params: {params[m]}, prompt_token_ids: [], "
            "lora_request: None, prompt_adapter_request: None."
            for h, i, m in zip(_vllm_head("INFO", ctx.clock(t_recv, "vllm"), "logger.py:39"), idx.tolist(), mx)
        ]
        out.add(t_recv, replica[idx], "INFO", msgs,
                "INFO <*> <*> [logger.py:39] Received request <*>: prompt: '', params: "
                f"{_SAMPLING.format('<*>')}, prompt_token_ids: [], lora_request: None, "
                "prompt_adapter_request: None.")
        msgs = [f"{h}Added request {vids[i]}."
                for h, i in zip(_vllm_head("INFO", ctx.clock(t_add, "vllm"), "async_llm_engine.py:211"), idx.tolist())]
        out.add(t_add, replica[idx], "INFO", msgs, "INFO <*> <*> [async_llm_engine.py:211] Added request <*>.")

        # Finished (engine completed it) or aborted (the caller hung up); a failed engine logs no per-request line.
        done = idx[ok[idx] & np.isfinite(f["t_engine_end"][idx])]
        aborted = idx[~ok[idx] & np.isin(http[idx], (502, 504))]
        for sel, word, where in ((done, "Finished", "async_llm_engine.py:183"),
                                 (aborted, "Aborted", "async_llm_engine.py:197")):
            if not len(sel):
                continue
            t = e1[sel] + ctx.jitter(len(sel))
            msgs = [f"{h}{word} request {vids[i]}."
                    for h, i in zip(_vllm_head("INFO", ctx.clock(t, "vllm"), where), sel.tolist())]
            out.add(t, replica[sel], "INFO", msgs, f"INFO <*> <*> [{where}] {word} request <*>.")

        # Ray Serve's replica: "Request failed." on an exception, then its access line.
        t_acc = e1[idx] + 0.0005 + ctx.jitter(len(idx))
        tags = ctx.tags_at(replica[idx], e0[idx])
        code = np.where(ok[idx], "200", np.where(np.isin(http[idx], (502, 504)),
                                                 np.where(streaming[idx], "200", "CANCELLED"),
                                                 http[idx].astype(str))).tolist()
        lat = ((e1[idx] - e0[idx]) * 1000).tolist()
        comp = f"{SERVE_APP}_{SERVE_DEPLOYMENT}"
        clock = ctx.clock.python(t_acc)
        msgs = [f"INFO {c} {comp} {g} {sids[i]} -- POST {ROUTE} {s} {m:.1f}ms"
                for c, g, i, s, m in zip(clock, tags, idx.tolist(), code, lat)]
        out.add(t_acc, replica[idx], "INFO", msgs, f"INFO <*> <*> {comp} <*> <*> -- POST {ROUTE} <*> <*>ms")
        failed = np.nonzero(~ok[idx] & ~np.isin(http[idx], (502, 504)))[0]
        if len(failed):
            t = t_acc[failed] - 0.0001
            clock = ctx.clock.python(t)
            msgs = [f"ERROR {c} {comp} {tags[j]} {sids[idx[j]]} -- Request failed."
                    for c, j in zip(clock, failed.tolist())]
            out.add(t, replica[idx[failed]], "ERROR", msgs, f"ERROR <*> <*> {comp} <*> <*> -- Request failed.")


def _event_lines(ctx: _Context, events: list[tuple[float, str, str, dict[str, Any]]], out: _Lines) -> None:
    """Lines from the record's events; kinds not listed here are things the real system does not log."""
    vid = ctx.ident.vllm_ids
    proxy = ctx.path.proxy
    hosts = ctx.record.topology.hosts
    preempted: dict[str, int] = {}
    idle: dict[str, bool] = {}
    crashed: set[str] = set()
    # time, service, level, clock style, text before the clock, text after it, template; clocks are formatted
    # in bulk at the end (one call per style, not per line).
    rows: list[tuple[float, str, str, str, str, str, str]] = []

    def vllm(t: float, svc: str, level: str, where: str, msg: str, tmpl: str) -> None:
        rows.append((t, svc, level, "vllm", f"{level} ", f" [{where}] {msg}", f"{level} <*> <*> [{where}] {tmpl}"))

    def ray(t: float, svc: str, level: str, comp: str, cid: str, msg: str, tmpl: str) -> None:
        rows.append((t, svc, level, "python", f"{level} ", f" {comp} {cid} -- {msg}",
                     f"{level} <*> <*> {comp} <*> -- {tmpl}"))

    def controller(t: float, level: str, msg: str, tmpl: str) -> None:
        ray(t, proxy, level, "controller", str(ctx.pids[_CONTROLLER]), msg, tmpl)

    def kernel(t: float, svc: str, level: str, msg: str, tmpl: str) -> None:
        host = hosts.get(svc)
        if not host:  # no node named for the service: its kernel log is not collected
            return
        rows.append((t, host, level, "syslog", "", f" {host} kernel: {msg}", f"<*> {host} kernel: {tmpl}"))

    def plain(t: float, svc: str, level: str, msg: str) -> None:  # a traceback line: no header of its own
        rows.append((t, svc, level, "", msg, "", msg))

    replica_id = "Replica(id='{}', deployment='" + SERVE_DEPLOYMENT + "', app='" + SERVE_APP + "')"
    replica_id_t = replica_id.format("<*>")
    deployment = f"Deployment(name='{SERVE_DEPLOYMENT}', app='{SERVE_APP}')"

    jitter = ctx.jitter(len(events)).tolist()
    for (t0, svc, kind, f), dt in zip(events, jitter):
        t = t0 + dt
        if kind == "engine_stats":
            p, g = float(f.get("prompt_tps", 0.0)), float(f.get("gen_tps", 0.0))
            quiet = p == 0.0 and g == 0.0
            was_quiet = idle.get(svc, False)
            idle[svc] = quiet
            if quiet and was_quiet:  # vLLM drops to DEBUG on an idle engine
                continue
            kv = 100.0 * float(f.get("kv_usage_perc", 0.0))
            vllm(t, svc, "INFO", "metrics.py:486",
                 f"Avg prompt throughput: {p:.1f} tokens/s, Avg generation throughput: {g:.1f} tokens/s, "
                 f"Running: {int(f.get('running', 0))} reqs, Swapped: {int(f.get('swapped', 0))} reqs, "
                 f"Pending: {int(f.get('waiting', 0))} reqs, GPU KV cache usage: {kv:.1f}%, "
                 "CPU KV cache usage: 0.0%.",
                 "Avg prompt throughput: <*> tokens/s, Avg generation throughput: <*> tokens/s, Running: <*> reqs, "
                 "Swapped: <*> reqs, Pending: <*> reqs, GPU KV cache usage: <*>%, CPU KV cache usage: <*>%.")
            hit = 100.0 * float(f.get("prefix_cache_hit_rate", -1.0))
            if hit >= 0.0:  # vLLM prints it only with prefix caching on (the rate is -1 otherwise)
                vllm(t + 1e-5, svc, "INFO", "metrics.py:502", f"Prefix cache hit rate: GPU: {hit:.2f}%, CPU: 0.00%",
                     "Prefix cache hit rate: GPU: <*>%, CPU: <*>%")
        elif kind == "preemption":
            before = preempted.get(svc, 0)
            k = max(int(f.get("num_preempted", 1)), 1)
            preempted[svc] = before + k
            rid = int(f.get("request_id", -1))
            name = vid[rid] if 0 <= rid < len(vid) else str(rid)
            for c in range(before, before + k):
                if c % _PREEMPTION_LOG_EVERY == 0:
                    vllm(t, svc, "WARNING", "scheduler.py:1560",
                         f"Sequence group {name} is preempted by PreemptionMode.RECOMPUTE mode because there is "
                         "not enough KV cache space. This can affect the end-to-end performance. Increase "
                         "gpu_memory_utilization or tensor_parallel_size to provide more KV cache memory. "
                         f"total_num_cumulative_preemption={c + 1}",
                         "Sequence group <*> is preempted by PreemptionMode.RECOMPUTE mode because there is not "
                         "enough KV cache space. This can affect the end-to-end performance. Increase "
                         "gpu_memory_utilization or tensor_parallel_size to provide more KV cache memory. "
                         "total_num_cumulative_preemption=<*>")
        elif kind == "fault_start" and f.get("type") == "gpu-xid":
            xid = int((f.get("params") or {}).get("xid", f.get("xid", 79)))
            text = _XID_TEXT.get(xid)
            tail = f", {text}" if text else ""
            kernel(t, svc, "ERROR", f"NVRM: Xid (PCI:0000:{_pci_bus(svc, hosts)}:00): {xid}, pid='<unknown>', "
                           f"name=<unknown>{tail}",
                   f"NVRM: Xid (PCI:<*>): <*>, pid='<unknown>', name=<unknown>{tail}")
        elif kind == "unrelated_warning":
            k = int(f.get("k", 0)) % 3
            what = f.get("what")
            if what == "invalid_http":  # uvicorn's own format: level prefix, no clock
                plain(t, svc, "WARNING", "WARNING:  Invalid HTTP request received.")
            elif what == "ignored_fields":
                field = ("store", "metadata", "service_tier")[k]
                vllm(t, svc, "WARNING", "protocol.py:72",
                     f"The following fields were present in the request but ignored: {{'{field}'}}",
                     "The following fields were present in the request but ignored: <*>")
            elif what == "perf_interrupt":
                limit, rate = ((2500, 79750), (3127, 63750), (3910, 51000))[k]
                kernel(t, svc, "WARNING", f"perf: interrupt took too long ({limit + 9 + 7 * k} > {limit}), lowering "
                       f"kernel.perf_event_max_sample_rate to {rate}",
                       "perf: interrupt took too long (<*> > <*>), lowering kernel.perf_event_max_sample_rate to <*>")
        elif kind == "engine_dead":
            crashed.add(svc)
            xid = _xid_of(f)
            cuda = f.get("cuda_error") or _CUDA_ERROR_BY_XID.get(xid, "unspecified launch failure")
            vllm(t, svc, "ERROR", "async_llm_engine.py:68", "Engine background task failed",
                 "Engine background task failed")
            plain(t + 1e-4, svc, "ERROR", f"RuntimeError: CUDA error: {cuda}")
            plain(t + 2e-4, svc, "ERROR",
                  "vllm.engine.async_llm_engine.AsyncEngineDeadError: Task finished unexpectedly. This should never "
                  "happen! Please open an issue on GitHub. See stack trace above for the actual cause.")
        elif kind == "oom":
            if f.get("by", "kernel") == "kernel":
                # The cgroup's OOM killer picks the largest process (the hog, or the engine itself) and the kernel
                # of the target's node logs it; the process name is the kernel's 15-character comm.
                proc = str(f.get("process", "python3"))[:15]
                pid = int(f.get("pid", ctx.pids.get(svc, 1000) + 211))
                rss_kb = int(float(f.get("bytes", 0.0)) // 1024)
                adj = int(f.get("oom_score_adj", 0))
                kernel(t - 0.002, svc, "WARNING",
                       f"{proc} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj={adj}",
                       "<*> invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=<*>")
                kernel(t, svc, "ERROR",
                       f"Memory cgroup out of memory: Killed process {pid} ({proc}) total-vm:{rss_kb + 5632}kB, "
                       f"anon-rss:{rss_kb}kB, file-rss:1280kB, shmem-rss:0kB, UID:0 pgtables:{rss_kb // 512 + 64}kB "
                       f"oom_score_adj:{adj}",
                       "Memory cgroup out of memory: Killed process <*> (<*>) total-vm:<*>kB, anon-rss:<*>kB, "
                       "file-rss:<*>kB, shmem-rss:<*>kB, UID:<*> pgtables:<*>kB oom_score_adj:<*>")
            else:
                ip, node, pid = ctx.ip(svc), ctx.node_ids.get(svc, ""), ctx.pids.get(svc, 1000)
                msg = (f"1 Workers (tasks / actors) killed due to memory pressure (OOM), 0 Workers crashed due to "
                       f"other reasons at node (ID: {node}, IP: {ip}) over the last time period. To see more "
                       f"information about the Workers killed on this node, use `ray logs raylet.out -ip {ip}`")
                tmpl = ("1 Workers (tasks / actors) killed due to memory pressure (OOM), 0 Workers crashed due to "
                        "other reasons at node (ID: <*>, IP: <*>) over the last time period. To see more "
                        "information about the Workers killed on this node, use `ray logs raylet.out -ip <*>`")
                rows.append((t, svc, "ERROR", "python", "[", f" E {pid} {pid}] (raylet) node_manager.cc:3193: {msg}",
                             f"[<*> <*> E <*> <*>] (raylet) node_manager.cc:3193: {tmpl}"))
        elif kind == "replica_health":
            tag = ctx.tag_at(svc, float(np.nextafter(t0, -np.inf)))  # just before any restart at t0
            if not f.get("ok", True):
                if svc in crashed:  # the process lives on; its own health check raises
                    ray(t - 0.001, svc, "WARNING", f"{SERVE_APP}_{SERVE_DEPLOYMENT}", tag,
                        "Replica health check failed.", "Replica health check failed.")
                controller(t, "WARNING", f"{replica_id.format(tag)} failed health check, stopping it.",
                           f"{replica_id_t} failed health check, stopping it.")
                controller(t + 0.05, "INFO", f"Adding 1 replica to {deployment}.", f"Adding 1 replica to {deployment}.")
            else:
                new = ctx.tag_at(svc, t0)
                if new == tag:
                    continue  # a routine healthy report, not a restart
                crashed.discard(svc)
                took = float(f.get("load_s", 0.0))
                node = ctx.node_ids.get(svc, "")
                controller(t, "INFO",
                           f"{replica_id.format(new)} started successfully on node '{node}' after {took:.1f}s "
                           f"(PID: {ctx.pids.get(svc, 1000) + 1}). Replica constructor, reconfigure method, and "
                           f"initial health check took {max(took - 0.3, 0.0):.1f}s.",
                           f"{replica_id_t} started successfully on node '<*>' after <*>s (PID: <*>). Replica "
                           "constructor, reconfigure method, and initial health check took <*>s.")
                if "num_gpu_blocks" in f and "num_cpu_blocks" in f:
                    vllm(t - 1.0, svc, "INFO", "executor_base.py:111",
                         f"# cuda blocks: {int(f['num_gpu_blocks'])}, # CPU blocks: {int(f['num_cpu_blocks'])}",
                         "# cuda blocks: <*>, # CPU blocks: <*>")
    for style in sorted({r[3] for r in rows}):
        mine = [r for r in rows if r[3] == style]
        t = np.array([r[0] for r in mine])
        if style == "python":
            clock = ctx.clock.python(t)
        elif style:
            clock = ctx.clock(t, style)
        else:
            clock = [""] * len(mine)
        out.add(t, np.array([r[1] for r in mine], dtype=object), np.array([r[2] for r in mine], dtype=object),
                [r[4] + c + r[5] for r, c in zip(mine, clock)], np.array([r[6] for r in mine], dtype=object))


def _xid_of(f: dict[str, Any]) -> int:
    if "xid" in f:
        return int(f["xid"])
    digits = "".join(ch if ch.isdigit() else " " for ch in str(f.get("reason", ""))).split()
    return int(digits[0]) if digits else 0


def _pci_bus(service: str, hosts: dict[str, str]) -> str:
    # One GPU per pod; bus ids as on a typical 8-GPU board, picked by the service's place in the host map.
    buses = ("18", "3b", "86", "af", "1b", "3e", "88", "b1")
    order = sorted(hosts)
    return buses[order.index(service) % len(buses)] if service in order else buses[0]
