"""Log lines of the simulated deployment, as nginx, Ray Serve, vLLM, the raylet and the kernel print them.

Every line is one kind of the log catalogue (``llmrca.deploy.telemetry``), which the live testbed renders too, so
an event has one template in a simulated and a live case. Sources (one line per row; a multi-line record such as
a traceback is split per line, as a line-based shipper like Fluent Bit does without a multiline parser):

- gateway (nginx): an access line per request (the catalogue's ``NGINX_LOG_FORMAT``) and ``[error]`` lines where
  nginx itself fails a request (connection refused / premature close → 502; upstream timed out → 504 before
  the response header, or a 200 access line with the bytes sent so far when it cuts a stream whose header went out).
- Serve proxy (on the head pod, also home of the Serve controller): an access line per request, the
  client-disconnect line when nginx gives up, and the controller's replica health / restart lines.
- replicas: vLLM V1's ``Received request`` / ``Added request`` / ``Generated response`` (``Aborted request`` when
  the caller hung up) lines, its periodic ``Engine 000: Avg prompt throughput: …`` line (every 10 s, at DEBUG
  only while idle; with ``Preemptions: N`` when the interval had any: V1 logs no line per preemption), engine
  failure lines, and Ray
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
import string
import time as _time
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case.schema import LOG_COLUMNS
from llmrca.deploy.telemetry import CLOCKS, NGINX_PHASES, ROUTE, VLLM_ENGINE_INDEX, LineKind, line
from llmrca.errors import CaseError
from llmrca.sim.strings import bake, compiled, const, string_take, value
from llmrca.sim.traces import (
    REPLICA_PORT,
    USER_AGENT,
    RecordView,
    hex_ids,
    view,
)

_STREAM_JITTER = 0x7177
_STREAM_NAMES = 0x4A3E5
_STREAM_UNRELATED = 0x0DD5
# noise="realistic": warnings a deployment prints for reasons unrelated to any fault, per source and hour
# (value and source in docs/simulator.md, "Realistic noise").
UNRELATED_WARNINGS_PER_HOUR = 2.0
_JITTER_MEAN_S = 0.0006  # between the event and the line being written
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
    """Collects groups of lines built column-wise; one frame at the end. The text columns are kept as codes into
    one table of distinct texts per column (a group's service, level and template are mostly one text), and the
    messages in the order they were made; ``frame`` sorts them by time in Arrow (``string_take``)."""

    def __init__(self) -> None:
        self.times: list[np.ndarray] = []
        self.messages: list[str] = []
        self._texts: dict[str, tuple[dict[Any, int], list[np.ndarray]]] = {c: ({}, []) for c in _CODED}

    def add(self, times: np.ndarray, service: Any, level: Any, messages: list[str], template: Any) -> None:
        n = len(messages)
        if n == 0:
            return
        self.times.append(np.asarray(times, dtype=float))
        for c, v in zip(_CODED, (service, level, template)):
            self._code(c, v, n)
        self.messages.extend(messages)

    def _code(self, column: str, value: Any, n: int) -> None:
        table, codes = self._texts[column]
        if isinstance(value, str):
            codes.append(np.full(n, table.setdefault(value, len(table)), dtype=np.int64))
            return
        local, uniq = pd.factorize(np.asarray(value, dtype=object), use_na_sentinel=False)
        glob = np.array([table.setdefault(u, len(table)) for u in uniq.tolist()], dtype=np.int64)
        codes.append(glob[local])

    def _column(self, column: str, order: np.ndarray) -> Any:
        table, codes = self._texts[column]
        return string_take(list(table), np.concatenate(codes)[order])

    def frame(self) -> pd.DataFrame:
        if not self.times:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in LOG_COLUMNS.items()})
        t = np.concatenate(self.times)
        order = np.argsort(t, kind="stable")
        return pd.DataFrame({
            "time": t[order],
            "service": self._column("service", order),
            "level": self._column("level", order),
            "message": string_take(self.messages, order),
            "template": self._column("template", order),
        })


_CODED = ("service", "level", "template")


class _Clock:
    """Formats unix times the way each program prints them. Times within two hours of each other (a case's) are
    looked up in a table of every second of the minutes they span, made once per minute and style from the
    minute's text (``_minute``); others are printed once per distinct second."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[int, str]] = {}
        self._minutes: dict[tuple[str, int], tuple[str, str] | None] = {}
        self._tables: dict[tuple[str, int], np.ndarray] = {}

    def _seconds(self, times: np.ndarray, style: str) -> tuple[list[str], np.ndarray]:
        t = np.asarray(times, dtype=float)
        secs = np.floor(t).astype(np.int64)
        if not len(secs):
            return [], t - secs
        m0, m1 = int(secs.min()) // 60, int(secs.max()) // 60
        if m1 - m0 < 120:
            table = np.concatenate([self._minute_table(style, m) for m in range(m0, m1 + 1)])
            return table[secs - 60 * m0].tolist(), t - secs
        uniq, inv = np.unique(secs, return_inverse=True)
        cache = self._cache.setdefault(style, {})
        tab = np.empty(len(uniq), dtype=object)
        for j, sec in enumerate(uniq.tolist()):
            text = cache.get(sec)
            if text is None:
                text = cache[sec] = self._text(style, sec)
            tab[j] = text
        return tab[inv].tolist(), t - secs

    def _minute_table(self, style: str, minute: int) -> np.ndarray:
        """The texts of the 60 seconds of ``minute`` (an object array), made once per style and minute."""
        key = (style, minute)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = np.array([self._text(style, 60 * minute + k) for k in range(60)],
                                                 dtype=object)
        return table

    def _text(self, style: str, sec: int) -> str:
        minute, k = divmod(sec, 60)
        key = (style, minute)
        parts = self._minutes.get(key, False)
        if parts is False:
            parts = self._minutes[key] = self._minute(style, minute)
        if parts is None:
            return getattr(self, "_" + style)(_time.gmtime(sec))
        return parts[0] + _TWO_DIGITS[k] + parts[1]

    def _minute(self, style: str, minute: int) -> tuple[str, str] | None:
        """The text of ``minute``'s seconds as (before, after) the two-digit seconds field: every field of the time
        but ``tm_sec`` is the same within a minute (UTC has no leap seconds in ``gmtime``), so the texts of its
        second 0 and second 59 differ exactly there when the style prints ``tm_sec`` as ``%02d`` once; None
        where they do not (then each second is printed on its own)."""
        fmt = getattr(self, "_" + style)
        a, b = fmt(_time.gmtime(60 * minute)), fmt(_time.gmtime(60 * minute + 59))
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        if len(a) != len(b) or len(diff) != 2 or diff[1] != diff[0] + 1:
            return None
        i = diff[0]
        if a[i:i + 2] != "00" or b[i:i + 2] != "59":
            return None
        return a[:i], a[i + 2:]

    def __call__(self, times: np.ndarray, style: str) -> list[str]:
        return self._seconds(times, style)[0]

    def python(self, times: np.ndarray) -> list[str]:
        """Python logging's asctime (used by Ray): "2025-03-12 10:15:32,173"."""
        text, frac = self._seconds(times, "date_time")
        ms = np.minimum((frac * 1000).astype(np.int64), 999).tolist()
        return list(map(str.__add__, text, map(_MILLIS.__getitem__, ms)))

    @staticmethod
    def _vllm(x: _time.struct_time) -> str:
        return CLOCKS["vllm"][0](x)

    @staticmethod
    def _date_time(x: _time.struct_time) -> str:
        return CLOCKS["python"][0](x)

    @staticmethod
    def _nginx_access(x: _time.struct_time) -> str:
        return CLOCKS["nginx_access"][0](x)

    @staticmethod
    def _nginx_error(x: _time.struct_time) -> str:
        return CLOCKS["nginx_error"][0](x)

    @staticmethod
    def _syslog(x: _time.struct_time) -> str:
        return CLOCKS["syslog"][0](x)


_TWO_DIGITS = tuple(f"{k:02d}" for k in range(60))
_MILLIS = tuple(f",{m:03d}" for m in range(1000))  # asctime's ",mmm" (f"{s},{m:03d}" as text + _MILLIS[m])


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


def logs_from_record(record: Any, shared: RecordView | None = None) -> pd.DataFrame:
    """Every log line the deployment of ``record`` writes (``llmrca.case.schema.LOG_COLUMNS``), sorted by time;
    ``shared``: the record's ``llmrca.sim.traces.view`` where the caller has it."""
    req = record.requests
    shared = shared or view(record)
    ev = record.events
    missing = [c for c in ("time", "service", "kind", "fields") if c not in ev.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="sim record events")
    path = shared.path
    ident = shared.ident
    jit = _rng(record.seed, _STREAM_JITTER)
    names = _rng(record.seed, _STREAM_NAMES)
    out = _Lines()

    events = [(float(t), str(s), str(k), _fields(f)) for t, s, k, f in zip(
        ev["time"].tolist(), ev["service"].tolist(), ev["kind"].tolist(), ev["fields"].tolist())]
    # ("" is a request the proxy never dispatched: its client left while it queued there, proxy-overload)
    replicas = sorted((set(req["replica"].unique().tolist()) - {""})
                      | {s for _, s, k, _ in events if k in _REPLICA_KINDS})
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
    ctx = _Context(record, path, ident, tags, restarts, node_ids, pids, jit, shared)

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


K8S_NAMESPACE = "llm"  # the deployment's namespace (the collector's queries select it)
_CONTROLLER = "\0controller"  # key of the Serve controller's pid (a process on the proxy's pod)
_REPLICA_KINDS = frozenset({"engine_stats", "preemption", "replica_health", "engine_dead", "oom", "gpu_xid"})


class _Context:
    def __init__(self, record: Any, path: Any, ident: Any, tags: dict[str, list[str]],
                 restarts: dict[str, list[float]], node_ids: dict[str, str], pids: dict[str, int],
                 jit: np.random.Generator, shared: RecordView):
        self.shared = shared
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


def _emit(out: _Lines, ctx: _Context, kind: LineKind, times: np.ndarray, services: Any,
          columns: list[Any], **fixed: Any) -> None:
    """Lines of one catalogue kind (``llmrca.deploy.telemetry``), one at each of ``times``; ``columns``: the
    values column by column, one sequence per field of the line in order (``repeat(v)``: ``v`` on every line).
    The lines are made by ``map`` over the columns: no row tuple per line."""
    if not len(times):
        return
    clocks = ctx.clock.python(times) if kind.clock == "python" else ctx.clock(times, kind.clock)
    fmt = _clock_first(kind, tuple(sorted(fixed.items())))
    msgs = list(map(fmt, clocks, *columns))
    out.add(times, services, kind.level, msgs, _template(kind, tuple(sorted(fixed.items()))))


def _pick(texts: np.ndarray, idx: np.ndarray) -> list[Any]:
    """``[texts[i] for i in idx]`` (``texts`` an object array)."""
    return texts[idx].tolist()


def _tenths(values: np.ndarray) -> Any:
    """``f"{v:.1f}"`` of each value, lazily (an argument column of ``_emit``)."""
    return map(format, values.tolist(), repeat(".1f"))


_CLOCK_FIRST: dict[tuple[str, str, tuple], Any] = {}
_TEMPLATES: dict[tuple[str, str, tuple], str] = {}


def _template(kind: LineKind, fixed: tuple[tuple[str, Any], ...]) -> str:
    """``kind.template(**dict(fixed))``, made once per kind and variant (it parses the line's pattern)."""
    key = (kind.name, kind.fmt, fixed)
    text = _TEMPLATES.get(key)
    if text is None:
        text = _TEMPLATES[key] = kind.template(**dict(fixed))
    return text


def _clock_first(kind: LineKind, fixed: tuple[tuple[str, Any], ...]) -> Any:
    """``kind.render`` as one bound ``str.format`` taking the clock text first, then the values: the named
    variants (``fixed`` over the kind's defaults) are written into the pattern, the values numbered in order."""
    key = (kind.name, kind.fmt, fixed)
    fmt = _CLOCK_FIRST.get(key)
    if fmt is None:
        named = {**dict(kind.variants), **dict(fixed)}
        out, i = [], 1
        for literal, field, spec, conv in string.Formatter().parse(kind.fmt):
            out.append(literal.replace("{", "{{").replace("}", "}}"))
            if field is None:
                continue
            tail = ("!" + conv if conv else "") + (":" + spec if spec else "")
            if field == "":
                out.append(f"{{{i}{tail}}}")
                i += 1
            elif field == "time":
                out.append(f"{{0{tail}}}")
            else:
                value = named[field]
                value = {"r": repr, "s": str, "a": ascii}[conv](value) if conv else value
                out.append(format(value, spec).replace("{", "{{").replace("}", "}}"))
        fmt = _CLOCK_FIRST[key] = compiled("".join(out))
    return fmt


def _baked(kind: LineKind, fields: list[tuple[bool, str]]) -> Any:
    """``str.format`` of a positional line kind (the clock one of its fields, in its place) with the constant
    fields written into the pattern: ``fields`` gives each field in order as (True, text) for a constant or
    (False, format spec) for a value; the bound ``format`` takes the values only. Its lines are the same text as
    ``_emit``'s (a value printed with a spec here is the f-string ``f"{v:spec}"`` there)."""
    head, tail = kind.fmt.partition("{time}")[::2]
    return bake(head + "{}" + tail, [const(text) if c else value(text) for c, text in fields])


def _add(out: _Lines, kind: LineKind, times: np.ndarray, services: Any, msgs: list[str], **fixed: Any) -> None:
    """Lines of one catalogue kind already printed (as ``_emit`` adds them)."""
    out.add(times, services, kind.level, msgs, _template(kind, tuple(sorted(fixed.items()))))


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
    vids = np.asarray(ctx.ident.vllm_ids, dtype=object)
    sids = np.asarray(ctx.ident.serve_ids, dtype=object)
    client = ctx.ip("client")
    timeout, cut = ctx.shared.timeouts  # nginx's read timeout fired; cut: after the header (nginx logs 200)
    # Line times follow the span intervals, so a line and its span agree.
    st = ctx.shared.stages
    ok = ~st.failed
    (g0, g1), (p0, p1), (e0, e1) = st.gateway, st.proxy, st.engine
    has_p = st.has_proxy
    has_e = st.has_client & np.isfinite(f["t_engine_arrival"])  # the replica saw the request
    e0 = np.where(has_e, f["t_engine_arrival"], np.nan)
    e1 = np.where(st.has_engine, e1, st.client[1])  # an abandoned request ends when its caller hangs up
    # vLLM logs the request once its prompt is tokenized, just before handing it to the engine.
    ready = f.get("t_ready", e0)
    ready = np.where(np.isfinite(ready), ready, e0)

    # nginx access line (NGINX_LOG_FORMAT), written when the response is complete; sid/tid are the gateway span's.
    t = g1 + ctx.jitter(n)
    rt = g1 - g0
    urt = (np.where(has_p, p1, g1) - np.where(has_p, p0, g0)).clip(0)
    upstream_addr = f"{ctx.ip(proxy)}:{REPLICA_PORT}"
    span_ids = np.asarray(ctx.shared.span_ids.texts(0, 4), dtype=object)  # the gateway span's
    traces = np.asarray(req["trace_id"].astype(str).tolist(), dtype=object)
    # (client, "-", clock, status, bytes, "-", user agent, rt, uct, urt, upstream, upstream status, msec, "-", sid,
    # tid); without a proxy span nginx had no upstream answer: uct and urt "-", upstream status 502.
    access = line("nginx.access")
    c, v = True, False
    with_p = _baked(access, [(c, client), (c, "-"), (v, ""), (v, ""), (v, ""), (c, "-"), (c, USER_AGENT), (v, ".3f"),
                             (c, "0.000"), (v, ".3f"), (c, upstream_addr), (v, ""), (v, ".3f"), (c, "-"), (v, ""),
                             (v, "")])
    no_p = _baked(access, [(c, client), (c, "-"), (v, ""), (v, ""), (v, ""), (c, "-"), (c, USER_AGENT), (v, ".3f"),
                           (c, "-"), (c, "-"), (c, upstream_addr), (c, "502"), (v, ".3f"), (c, "-"), (v, ""), (v, "")])
    # Each of the two patterns mapped over its requests' columns, the lines put back in request order.
    clock = np.asarray(ctx.clock(t, access.clock), dtype=object)
    nbytes = ctx.ident.response_bytes
    msgs = np.empty(n, dtype=object)
    for pattern, sel in ((with_p, np.flatnonzero(has_p)), (no_p, np.flatnonzero(~has_p))):
        if not len(sel):
            continue
        code = http[sel].tolist()
        cols = [_pick(clock, sel), code, nbytes[sel].tolist(), rt[sel].tolist()]
        if pattern is with_p:
            cols += [urt[sel].tolist(), code]
        cols += [t[sel].tolist(), _pick(span_ids, sel), _pick(traces, sel)]
        msgs[sel] = list(map(pattern, *cols))
    _add(out, access, t, gw, msgs.tolist())

    # nginx error lines where nginx itself failed the request.
    upstream = f"http://{upstream_addr}{ROUTE}"
    worker = 29 + (np.arange(n) % 2)  # two worker processes; connections alternate between them
    streaming = out_tok > 0
    cases = [
        (timeout, cut, "nginx.upstream_timeout"),
        ((http == 502) & ~has_p, streaming, "nginx.upstream_refused"),
        ((http == 502) & has_p, streaming, "nginx.upstream_closed"),
    ]
    for sel, relaying, name in cases:
        kind = line(name)
        for in_stream in (False, True):
            # nginx names the phase it was in: before the response header, or while relaying the stream (a
            # streamed response's header goes out before its first token, so a timeout after it says "upstream").
            idx = np.nonzero(sel & (relaying == in_stream))[0]
            if not len(idx):
                continue
            fixed = {"phase": NGINX_PHASES[int(in_stream)]} if "{phase}" in kind.fmt else {}
            t = g1[idx] + ctx.jitter(len(idx))
            w = worker[idx].tolist()
            _emit(out, ctx, kind, t, gw, [w, w, (1000 + 3 * idx).tolist(), repeat(client), repeat(gw),
                                          repeat(upstream), repeat(gw)], **fixed)

    # Serve proxy: client-disconnect line (nginx gave up) and the access line.
    idx = np.nonzero(has_p & (http != 502))[0]
    proxy_ip = ctx.ip(proxy)
    gone = idx[timeout[idx]]
    t_gone = g1 + ctx.jitter(n)
    if len(gone):
        gone_ids = _pick(sids, gone)
        _emit(out, ctx, line("serve.proxy_disconnect"), t_gone[gone], proxy, [repeat(proxy_ip), gone_ids, gone_ids])
    if len(idx):
        # After a disconnect the access line follows the disconnect line.
        t = np.where(timeout[idx], t_gone[idx] + 0.0002, p1[idx]) + ctx.jitter(len(idx))
        code = np.where(timeout[idx], 499, http[idx]).tolist()
        _emit(out, ctx, line("serve.proxy_access"), t, proxy,
              [repeat(proxy_ip), _pick(sids, idx), code, _tenths((p1[idx] - p0[idx]) * 1000)])

    # vLLM on the replica: request received and added to the engine.
    idx = np.nonzero(has_e)[0]
    if len(idx):
        t_recv = ready[idx] + ctx.jitter(len(idx))
        t_add = t_recv + 0.0002 + ctx.jitter(len(idx))
        mx = req["max_tokens"].to_numpy(dtype=np.int64)[idx].tolist()
        vid = _pick(vids, idx)
        _emit(out, ctx, line("vllm.request_received"), t_recv, replica[idx],
              [vid, repeat(1), repeat(1.0), repeat(1.0), mx])
        _emit(out, ctx, line("vllm.request_added"), t_add, replica[idx], [vid])

        # Finished (the response went out, with its finish reason) or aborted (the caller hung up); a failed
        # engine logs no per-request line.
        done = idx[ok[idx] & np.isfinite(f["t_engine_end"][idx])]
        aborted = idx[~ok[idx] & (timeout[idx] | (http[idx] == 502))]
        if len(done):
            reasons = _finish_reasons(req, done)
            _emit(out, ctx, line("vllm.request_finished"), e1[done] + ctx.jitter(len(done)), replica[done],
                  [_pick(vids, done), reasons])
        if len(aborted):
            _emit(out, ctx, line("vllm.request_aborted"), e1[aborted] + ctx.jitter(len(aborted)), replica[aborted],
                  [_pick(vids, aborted)])

        # Ray Serve's replica: "Request failed." on an exception, then its access line.
        t_acc = e1[idx] + 0.0005 + ctx.jitter(len(idx))
        tags = ctx.tags_at(replica[idx], e0[idx])
        code = np.where(ok[idx], "200", np.where(timeout[idx] | (http[idx] == 502),
                                                 np.where(streaming[idx], "200", "CANCELLED"),
                                                 http[idx].astype(str))).tolist()
        _emit(out, ctx, line("serve.replica_access"), t_acc, replica[idx],
              [tags, _pick(sids, idx), code, _tenths((e1[idx] - e0[idx]) * 1000)])
        failed = np.nonzero(~ok[idx] & ~timeout[idx] & (http[idx] != 502))[0]
        if len(failed):
            _emit(out, ctx, line("serve.replica_failed"), t_acc[failed] - 0.0001, replica[idx[failed]],
                  [_pick(np.asarray(tags, dtype=object), failed), _pick(sids, idx[failed])])


def _finish_reasons(req: pd.DataFrame, rows: np.ndarray) -> list[str]:
    """vLLM's finish reason per request: the record's, else ``length`` when it hit ``max_tokens``, else ``stop``."""
    if "finished_reason" in req.columns:
        given = req["finished_reason"].to_numpy(dtype=object)[rows].tolist()
    else:
        given = [""] * len(rows)
    hit = (req["output_tokens"].to_numpy(dtype=np.int64)[rows] >= req["max_tokens"].to_numpy(dtype=np.int64)[rows])
    return [g if isinstance(g, str) and g else ("length" if h else "stop") for g, h in zip(given, hit.tolist())]


def _event_lines(ctx: _Context, events: list[tuple[float, str, str, dict[str, Any]]], out: _Lines) -> None:
    """Lines from the record's events; kinds not listed here are things the real system does not log."""
    proxy = ctx.path.proxy
    hosts = ctx.record.topology.hosts
    block_size = int((ctx.record.config or {}).get("block_size", 16))
    idle: dict[str, bool] = {}
    crashed: set[str] = set()
    # time, service, level, clock style, the line's pattern taking the clock first (``_clock_first``), its values,
    # template; clocks are formatted in bulk at the end (one call per style, not per line), then the lines.
    rows: list[tuple[float, str, str, str, Any, tuple, str]] = []

    def add(t: float, svc: str, kind: LineKind, values: tuple, fixed: dict[str, Any]) -> None:
        key = tuple(sorted(fixed.items()))
        rows.append((t, svc, kind.level, kind.clock, _clock_first(kind, key), values, _template(kind, key)))

    def emit(t: float, svc: str, name: str, *values: Any, **fixed: Any) -> None:
        add(t, svc, line(name), values, fixed)

    def controller(t: float, name: str, *values: Any) -> None:  # the Serve controller runs on the proxy's pod
        emit(t, proxy, name, ctx.pids[_CONTROLLER], *values)

    def kernel(t: float, svc: str, name: str, *values: Any, **fixed: Any) -> None:
        host = hosts.get(svc)
        if not host:  # no node named for the service: its kernel log is not collected
            return
        add(t, host, line(name), (host, *values), fixed)

    # The driver's own Xid events (gpu_xid); a record without them may still name an Xid fault (its start).
    xid_logged = {s for _, s, k, _ in events if k == "gpu_xid"}
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
            hit = 100.0 * max(float(f.get("prefix_cache_hit_rate", 0.0)), 0.0)
            head = (f"{VLLM_ENGINE_INDEX:03d}", f"{p:.1f}", f"{g:.1f}", int(f.get("running", 0)),
                    int(f.get("waiting", 0)))
            npre = int(f.get("preemptions", 0))
            if npre > 0:  # vLLM V1 logs no line per preemption; its stats line counts them
                emit(t, svc, "vllm.engine_stats_preempted", *head, npre, f"{kv:.1f}", f"{hit:.1f}")
            else:
                emit(t, svc, "vllm.engine_stats", *head, f"{kv:.1f}", f"{hit:.1f}")
        elif kind == "gpu_xid":
            xid = int(f.get("xid", 0))
            text = _XID_TEXT.get(xid)
            kernel(t, svc, "kernel.xid", _pci_bus(svc, hosts), xid, detail=f", {text}" if text else "")
        elif kind == "fault_start" and f.get("type") == "gpu-xid" and svc not in xid_logged:
            xid = int((f.get("params") or {}).get("xid", f.get("xid", 79)))
            text = _XID_TEXT.get(xid)
            kernel(t, svc, "kernel.xid", _pci_bus(svc, hosts), xid, detail=f", {text}" if text else "")
        elif kind == "unrelated_warning":
            k = int(f.get("k", 0)) % 3
            what = f.get("what")
            if what == "invalid_http":
                emit(t, svc, "uvicorn.invalid_http")
            elif what == "ignored_fields":
                emit(t, svc, "vllm.ignored_fields", ("store", "metadata", "service_tier")[k])
            elif what == "perf_interrupt":
                limit, rate = ((2500, 79750), (3127, 63750), (3910, 51000))[k]
                kernel(t, svc, "kernel.perf_interrupt", limit + 9 + 7 * k, limit, rate)
        elif kind == "restart_backoff":
            # the kubelet on the target's node: klog's own header inside the journal's line
            host = hosts.get(svc)
            if host:
                kpid = 1800 + ctx.pids.get(svc, 1000) % 997
                x = _time.gmtime(int(t))
                usec = f"{x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}.{int((t % 1) * 1e6):06d}"
                uid = ctx.node_ids.get(svc, "0" * 28)
                uid = f"{uid[:8]}-{uid[8:12]}-{uid[12:16]}-{uid[16:20]}-{uid[20:28]}0000"
                container = "ray-head" if svc == proxy else "ray-worker"
                add(t, host, line("kubelet.crashloop_backoff"),
                    (host, kpid, f"{x.tm_mon:02d}{x.tm_mday:02d}", usec, f"{kpid:>7}", container,
                     f"{float(f.get('backoff_s', 0.0)):g}", container, svc, K8S_NAMESPACE, uid, K8S_NAMESPACE, svc,
                     uid), {})
        elif kind == "engine_dead":
            crashed.add(svc)
            xid = _xid_of(f)
            cuda = f.get("cuda_error") or _CUDA_ERROR_BY_XID.get(xid, "unspecified launch failure")
            emit(t, svc, "vllm.engine_fatal")
            emit(t + 1e-4, svc, "vllm.cuda_error", detail=cuda)
            emit(t + 2e-4, svc, "vllm.engine_dead")
        elif kind == "oom":
            if f.get("by", "kernel") == "kernel":
                # The cgroup's OOM killer picks the largest process (the hog, or the engine itself) and the kernel
                # of the target's node logs it; the process name is the kernel's 15-character comm.
                proc = str(f.get("process", "python3"))[:15]
                pid = int(f.get("pid", ctx.pids.get(svc, 1000) + 211))
                rss_kb = int(float(f.get("bytes", 0.0)) // 1024)
                adj = int(f.get("oom_score_adj", 0))
                kernel(t - 0.002, svc, "kernel.oom_invoked", proc, adj)
                kernel(t, svc, "kernel.oom_killed", pid, proc, rss_kb + 5632, rss_kb, 1280, 0, 0,
                       rss_kb // 512 + 64, adj)
            else:
                ip, node, pid = ctx.ip(svc), ctx.node_ids.get(svc, ""), ctx.pids.get(svc, 1000)
                emit(t, svc, "ray.raylet_oom", pid, pid, node, ip, ip)
        elif kind == "replica_health":
            tag = ctx.tag_at(svc, float(np.nextafter(t0, -np.inf)))  # just before any restart at t0
            if not f.get("ok", True):
                if svc in crashed:  # the process lives on; its own health check raises
                    emit(t - 0.001, svc, "serve.replica_health_failed", tag)
                controller(t, "serve.controller_health_failed", tag)
                controller(t + 0.05, "serve.controller_adding")
            else:
                new = ctx.tag_at(svc, t0)
                if new == tag:
                    continue  # a routine healthy report, not a restart
                crashed.discard(svc)
                took = float(f.get("load_s", 0.0))
                node = ctx.node_ids.get(svc, "")
                controller(t, "serve.controller_started", new, node, f"{took:.1f}", ctx.pids.get(svc, 1000) + 1,
                           f"{max(took - 0.3, 0.0):.1f}")
                if "num_gpu_blocks" in f:
                    emit(t - 1.0, svc, "vllm.kv_cache_size", f"{int(f['num_gpu_blocks']) * block_size:,}")
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
                [r[4](c, *r[5]) for r, c in zip(mine, clock)], np.array([r[6] for r in mine], dtype=object))


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
