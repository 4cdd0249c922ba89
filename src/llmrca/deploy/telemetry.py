"""The catalogue of log lines and spans a deployment writes, as its programs write them; the simulator
(``llmrca.sim.logs``, ``llmrca.sim.traces``) and the live testbed (``llmrca.testbed.engine_server``,
``proxy_server``, ``nginx``) both render from it, so one event gets one template in a simulated and a live case.

A :class:`LineKind` is one line a program prints: its full format (the program's own header with ``{time}``, the
fixed text, ``{}`` for every value filled per line, ``{name}`` for a fixed variant such as nginx's phase), and its
template: the format with the clock and every value masked as ``<*>`` (what a Drain-style parser finds).

Programs and versions: vLLM V1 (0.9-0.10) with ``--enable-log-requests --enable-log-outputs --max-log-len 0``
(so prompts and outputs print empty), Ray Serve's proxy, replica and controller loggers, nginx's access log in
:data:`NGINX_LOG_FORMAT` and its error log, the kernel's NVRM and OOM lines. A :class:`SpanKind` is one span of the
request chain: its operation name, OpenTelemetry kind and attribute keys (vLLM's ``llm_request`` with its
``gen_ai.*`` attributes).
"""

from __future__ import annotations

import re
import string
import time as _time
from dataclasses import dataclass
from typing import Any

ROUTE = "/v1/chat/completions"
COMPLETIONS_ROUTE = "/v1/completions"
MODELS_ROUTE = "/v1/models"
REQUEST_LINE = f"POST {ROUTE} HTTP/1.1"
SERVE_APP = "default"
SERVE_DEPLOYMENT = "VLLMDeployment"
SERVE_REPLICA = f"{SERVE_APP}_{SERVE_DEPLOYMENT}"  # the logger name of a Serve replica's lines
VLLM_ENGINE_INDEX = 0  # one engine core per replica (no data parallelism)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MASK = "<*>"


# -- clocks: how each program prints a time ------------------------------------------------------------------
def _vllm(x: _time.struct_time) -> str:  # vLLM's datefmt "%m-%d %H:%M:%S"
    return f"{x.tm_mon:02d}-{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"


def _date_time(x: _time.struct_time) -> str:  # Python logging's asctime without the milliseconds
    return f"{x.tm_year}-{x.tm_mon:02d}-{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"


def _nginx_access(x: _time.struct_time) -> str:  # $time_local in UTC: "12/Mar/2025:10:15:32 +0000"
    return f"{x.tm_mday:02d}/{_MONTHS[x.tm_mon - 1]}/{x.tm_year}:{x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d} +0000"


def _nginx_error(x: _time.struct_time) -> str:  # "2025/03/12 10:15:32"
    return f"{x.tm_year}/{x.tm_mon:02d}/{x.tm_mday:02d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"


def _syslog(x: _time.struct_time) -> str:  # "Mar 12 10:15:32"
    return f"{_MONTHS[x.tm_mon - 1]} {x.tm_mday:2d} {x.tm_hour:02d}:{x.tm_min:02d}:{x.tm_sec:02d}"


# style → (formatter of the whole second, the clock's masked form in a template); "python" adds ",mmm"
CLOCKS = {
    "vllm": (_vllm, "<*> <*>"),
    "python": (_date_time, "<*> <*>"),
    "nginx_access": (_nginx_access, "<*>"),
    "nginx_error": (_nginx_error, "<*> <*>"),
    "syslog": (_syslog, "<*>"),
}


def clock_text(t: float, style: str) -> str:
    """``t`` (unix s, UTC) as the program of ``style`` prints it."""
    s = int(t // 1)
    text = CLOCKS[style][0](_time.gmtime(s))
    if style == "python":
        text += f",{min(int((t - s) * 1000), 999):03d}"
    return text


@dataclass(frozen=True)
class LineKind:
    """One log line of one program (see the module docs)."""

    name: str
    program: str
    level: str
    clock: str  # a key of CLOCKS, or "" for a line without a header (a traceback line)
    fmt: str
    variants: tuple[tuple[str, str], ...] = ()  # named variants with their default (the deployment's own)

    def _fixed(self, fixed: dict[str, Any]) -> dict[str, Any]:
        return {**dict(self.variants), **fixed} if self.variants else fixed

    def template(self, **fixed: str) -> str:
        """The masked form: clock and values as ``<*>``, named variants filled from ``fixed``."""
        fixed = self._fixed(fixed)
        out = []
        for literal, field, _, _ in string.Formatter().parse(self.fmt):
            out.append(literal)
            if field is None:
                continue
            if field == "":
                out.append(MASK)
            elif field == "time":
                out.append(CLOCKS[self.clock][1])
            else:
                out.append(str(fixed[field]))
        return "".join(out)

    def render(self, time_text: str, *values: Any, **fixed: Any) -> str:
        """The line, with the clock already printed (``clock_text``) and the values in order."""
        return self.fmt.format(*values, time=time_text, **self._fixed(fixed))

    def split(self, *values: Any, **fixed: Any) -> tuple[str, str]:
        """The line as (text before the clock, text after it), for callers that print clocks in bulk."""
        fixed = self._fixed(fixed)
        head, sep, tail = self.fmt.partition("{time}")
        if not sep:
            return "", self.fmt.format(*values, **fixed)
        k = sum(1 for _, f, _, _ in string.Formatter().parse(head) if f == "")  # values printed before the clock
        return head.format(*values[:k], **fixed), tail.format(*values[k:], **fixed)

    def at(self, t: float, *values: Any, **fixed: Any) -> str:
        """The line printed at unix time ``t``."""
        return self.render(clock_text(t, self.clock) if self.clock else "", *values, **fixed)

    def match(self, line: str) -> str | None:
        """The template of ``line`` if it is a line of this kind, else None."""
        m = self._regex().fullmatch(line)
        if m is None:
            return None
        return self.template(**{k: v for k, v in m.groupdict().items()})

    def _regex(self) -> re.Pattern:
        cached = _REGEX.get(self.name)
        if cached is None:
            parts = []
            for literal, field, _, _ in string.Formatter().parse(self.fmt):
                parts.append(re.escape(literal))
                if field is None:
                    continue
                parts.append(f"(?P<{field}>.*?)" if field not in ("", "time") else ".*?")
            cached = _REGEX[self.name] = re.compile("".join(parts))
        return cached


_REGEX: dict[str, re.Pattern] = {}
_SAMPLING = ("SamplingParams(n={}, presence_penalty=0.0, frequency_penalty=0.0, repetition_penalty=1.0, "
             "temperature={}, top_p={}, top_k=-1, min_p=0.0, seed=None, stop=[], stop_token_ids=[], bad_words=[], "
             "include_stop_str_in_output=False, ignore_eos=False, max_tokens={}, min_tokens=0, logprobs=None, "
             "prompt_logprobs=None, skip_special_tokens=True, spaces_between_special_tokens=True, "
             "truncate_prompt_tokens=None, guided_decoding=None, extra_args=None)")
_REPLICA_ID = "Replica(id='{}', deployment='" + SERVE_DEPLOYMENT + "', app='" + SERVE_APP + "')"
_DEPLOYMENT = f"Deployment(name='{SERVE_DEPLOYMENT}', app='{SERVE_APP}')"
_NGINX_ERROR_TAIL = ', client: {}, server: {}, request: "' + REQUEST_LINE + '", upstream: "{}", host: "{}"'


def _vllm_line(name: str, level: str, where: str, text: str, variants: tuple[tuple[str, str], ...] = ()
               ) -> LineKind:
    # vLLM's logging format: "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
    return LineKind(name, "vllm", level, "vllm", f"{level} {{time}} [{where}] {text}", variants)


def _serve_line(name: str, level: str, logger: str, text: str, request: bool = True,
                variants: tuple[tuple[str, str], ...] = ()) -> LineKind:
    # Ray Serve's format: "LEVEL asctime <component> <component id> [<request id>] -- message"
    rid = " {}" if request else ""
    return LineKind(name, "ray-serve", level, "python", f"{level} {{time}} {logger} {{}}{rid} -- {text}", variants)


def _nginx_error(name: str, text: str) -> LineKind:
    return LineKind(name, "nginx", "ERROR", "nginx_error", "{time} [error] {}#{}: *{} " + text + _NGINX_ERROR_TAIL)


def _kernel(name: str, level: str, text: str) -> LineKind:
    return LineKind(name, "kernel", level, "syslog", "{time} {} kernel: " + text)


# nginx's access log format (log_format of the gateway); the collector parses it back (llmrca.testbed.nginx)
NGINX_LOG_FORMAT = ('$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" '
                    '"$http_user_agent" rt=$request_time uct="$upstream_connect_time" urt="$upstream_response_time" '
                    'ua="$upstream_addr" us="$upstream_status" msec=$msec tp="$http_traceparent" sid=$span_id '
                    'tid=$trace_id')

LINES: dict[str, LineKind] = {k.name: k for k in (
    # -- vLLM V1 -----------------------------------------------------------------------------------------------
    _vllm_line("vllm.request_received", "INFO", "logger.py:43",
               "Received request {}: prompt: '', params: " + _SAMPLING + ", prompt_token_ids: [], "
               "prompt_embeds shape: None, lora_request: None."),
    _vllm_line("vllm.request_added", "INFO", "async_llm.py:270", "Added request {}."),
    _vllm_line("vllm.request_finished", "INFO", "logger.py:71",
               "Generated response {} (streaming complete): output: '', output_token_ids: [], finish_reason: {}"),
    _vllm_line("vllm.request_aborted", "INFO", "async_llm.py:420", "Aborted request {}."),
    # vLLM 0.32.0's line, as recorded (tests/fixtures/vllm_0.32.0/engine_stats.log; a bare `vllm serve` prints it
    # behind "(APIServer pid=N) ", see strip_process_prefix); its device is "CPU" on vLLM's CPU build
    _vllm_line("vllm.engine_stats", "INFO", "loggers.py:335",
               "Engine {}: Avg prompt throughput: {} tokens/s, Avg generation throughput: {} tokens/s, Running: {} "
               "reqs, Waiting: {} reqs, {device} KV cache usage: {}%, Prefix cache hit rate: {}%",
               (("device", "GPU"),)),
    # V1 logs no line per preemption (V0's scheduler warning is gone); its stats line counts those of the interval.
    _vllm_line("vllm.engine_stats_preempted", "INFO", "loggers.py:335",
               "Engine {}: Avg prompt throughput: {} tokens/s, Avg generation throughput: {} tokens/s, Running: {} "
               "reqs, Waiting: {} reqs, Preemptions: {}, {device} KV cache usage: {}%, Prefix cache hit rate: {}%",
               (("device", "GPU"),)),
    # a warning unrelated to any fault: a client sent fields the OpenAI server does not use
    _vllm_line("vllm.ignored_fields", "WARNING", "protocol.py:72",
               "The following fields were present in the request but ignored: {{'{}'}}"),
    _vllm_line("vllm.kv_cache_size", "INFO", "kv_cache_utils.py:716", "GPU KV cache size: {} tokens"),
    _vllm_line("vllm.engine_fatal", "ERROR", "core.py:700", "EngineCore encountered a fatal error."),
    LineKind("vllm.cuda_error", "vllm", "ERROR", "", "RuntimeError: CUDA error: {detail}"),
    _vllm_line("vllm.engine_dead", "ERROR", "async_llm.py:704",
               "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) "
               "for the root cause."),
    # -- Ray Serve -----------------------------------------------------------------------------------------------
    # the method and the route of the request (the generation routes' POST by default)
    _serve_line("serve.proxy_access", "INFO", "proxy", "{method} / {} {}ms", variants=(("method", "POST"),)),
    _serve_line("serve.proxy_disconnect", "INFO", "proxy",
                "Client for request {} disconnected, cancelling request."),
    _serve_line("serve.proxy_call_failed", "ERROR", "proxy", "Request to replica {} failed: {}."),
    _serve_line("serve.replica_access", "INFO", SERVE_REPLICA, "POST {route} {} {}ms", variants=(("route", ROUTE),)),
    _serve_line("serve.replica_failed", "ERROR", SERVE_REPLICA, "Request failed."),
    _serve_line("serve.replica_health_failed", "WARNING", SERVE_REPLICA, "Replica health check failed.",
                request=False),
    _serve_line("serve.controller_health_failed", "WARNING", "controller",
                _REPLICA_ID + " failed health check, stopping it.", request=False),
    # The live testbed's proxy routes around a replica that fails its health check (it restarts nothing); these
    # two lines are its own, in the controller's format.
    _serve_line("serve.controller_routing_around", "WARNING", "controller",
                _REPLICA_ID + " failed health check, routing around it.", request=False),
    _serve_line("serve.controller_healthy_again", "INFO", "controller", _REPLICA_ID + " is healthy again.",
                request=False),
    _serve_line("serve.controller_adding", "INFO", "controller", f"Adding 1 replica to {_DEPLOYMENT}.",
                request=False),
    _serve_line("serve.controller_started", "INFO", "controller",
                _REPLICA_ID + " started successfully on node '{}' after {}s (PID: {}). Replica constructor, "
                "reconfigure method, and initial health check took {}s.", request=False),
    # uvicorn's own warning (level prefix, no clock) for a malformed request from a client or a port scanner
    LineKind("uvicorn.invalid_http", "uvicorn", "WARNING", "", "WARNING:  Invalid HTTP request received."),
    _serve_line("serve.proxy_started", "INFO", "proxy", "Proxy starting on node {} (HTTP port: {}).",
                request=False),
    LineKind("ray.raylet_oom", "raylet", "ERROR", "python",
             "[{time} E {} {}] (raylet) node_manager.cc:3193: 1 Workers (tasks / actors) killed due to memory "
             "pressure (OOM), 0 Workers crashed due to other reasons at node (ID: {}, IP: {}) over the last time "
             "period. To see more information about the Workers killed on this node, use `ray logs raylet.out "
             "-ip {}`"),
    # -- nginx -------------------------------------------------------------------------------------------------
    LineKind("nginx.access", "nginx", "INFO", "nginx_access",
             '{} - {} [{time}] "' + REQUEST_LINE + '" {} {} "{}" "{}" rt={} uct="{}" urt="{}" ua="{}" us="{}" '
             'msec={} tp="{}" sid={} tid={}'),
    _nginx_error("nginx.upstream_timeout", "upstream timed out (110: Connection timed out) while reading {phase}"),
    _nginx_error("nginx.upstream_refused", "connect() failed (111: Connection refused) while connecting to upstream"),
    _nginx_error("nginx.upstream_closed", "upstream prematurely closed connection while reading {phase}"),
    # -- the kernel of a node ----------------------------------------------------------------------------------
    _kernel("kernel.xid", "ERROR", "NVRM: Xid (PCI:0000:{}:00): {}, pid='<unknown>', name=<unknown>{detail}"),
    # the perf subsystem throttling itself: a kernel warning that has nothing to do with the serving stack
    _kernel("kernel.perf_interrupt", "WARNING",
            "perf: interrupt took too long ({} > {}), lowering kernel.perf_event_max_sample_rate to {}"),
    _kernel("kernel.oom_invoked", "WARNING",
            "{} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj={}"),
    # -- the kubelet of a node (its journal, beside the kernel's): a container in CrashLoopBackOff (klog's header:
    # severity and month-day, time with microseconds, thread id, file:line; pod_workers.go's sync error) --------
    LineKind("kubelet.crashloop_backoff", "kubelet", "ERROR", "syslog",
             '{time} {} kubelet[{}]: E{} {} {} pod_workers.go:1301] "Error syncing pod, skipping" '
             'err="failed to \\"StartContainer\\" for \\"{}\\" with CrashLoopBackOff: \\"back-off {}s '
             'restarting failed container={} pod={}_{}({})\\"" pod="{}/{}" podUID="{}"'),
    _kernel("kernel.oom_killed", "ERROR",
            "Memory cgroup out of memory: Killed process {} ({}) total-vm:{}kB, anon-rss:{}kB, file-rss:{}kB, "
            "shmem-rss:{}kB, UID:{} pgtables:{}kB oom_score_adj:{}"),
)}
# nginx's phase while it failed a request: before the response header, or while relaying the stream
NGINX_PHASES = ("response header from upstream", "upstream")


_PROCESS_PREFIX = re.compile(r"^\((?:APIServer|EngineCore[\w]*|VllmWorker[\w-]*) pid=\d+\) ")


def strip_process_prefix(text: str) -> str:
    """A line of a bare vLLM server's stdout without the process tag vLLM puts before it (``(APIServer
    pid=15347) INFO ...``); a vLLM engine inside a Serve replica logs the line without it."""
    return _PROCESS_PREFIX.sub("", text, count=1)


def line(name: str) -> LineKind:
    """The catalogue's line kind ``name`` (a KeyError lists the known ones)."""
    try:
        return LINES[name]
    except KeyError:
        raise KeyError(f"log catalogue: no line kind {name!r}; known: {', '.join(LINES)}") from None


def template_of(text: str, program: str | None = None) -> str | None:
    """The template of a raw line of a catalogued kind (of ``program`` only, when given), else None."""
    for k in LINES.values():
        if program is not None and k.program != program:
            continue
        t = k.match(text)
        if t is not None:
            return t
    return None


# -- spans ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpanKind:
    """One span of a request's chain: operation, OpenTelemetry kind, attribute keys (always set, in order) and
    the status key set when the layer knows an HTTP status."""

    role: str
    operation: str
    kind: str
    keys: tuple[str, ...]
    status_key: str | None = "http.status_code"

    def attributes(self, values: dict[str, Any], status: int | None = None) -> dict[str, Any]:
        """``values`` checked against the catalogue (every key, no other) and in its order, plus the status."""
        missing = [k for k in self.keys if k not in values]
        extra = [k for k in values if k not in self.keys]
        if missing or extra:
            raise KeyError(f"span {self.operation!r}: missing attribute(s) {missing}, unknown {extra}")
        out = {k: values[k] for k in self.keys}
        if status is not None and self.status_key:
            out[self.status_key] = int(status)
        return out

    def json_format(self, with_status: bool) -> str:
        """The attributes column's JSON (``span.kind`` first) as a ``str.format`` pattern: one ``{}`` per key, to
        be filled with JSON-encoded values (and the status last when ``with_status``)."""
        keys = [*self.keys, *([self.status_key] if with_status and self.status_key else [])]
        body = ",".join(f'"{k}":{{}}' for k in keys)
        return '{{"span.kind":"' + self.kind + '"' + ("," + body if body else "") + "}}"


GATEWAY_SPAN = SpanKind("gateway", f"POST {ROUTE}", "SERVER", (
    "http.method", "http.target", "http.scheme", "http.flavor", "http.user_agent", "net.host.name",
    "net.sock.peer.addr", "upstream.address"))
PROXY_SPAN = SpanKind("proxy", "proxy_http_request", "SERVER", (  # Ray Serve's own name for the proxy's span
    "request_id", "deployment", "app", "request_type", "request_method", "request_route_path"))
CLIENT_SPAN = SpanKind("proxy_client", "process_request", "CLIENT", ("vllm.backend_url", "peer.service"))
ENGINE_SPAN = SpanKind("engine", "llm_request", "SERVER", (  # vLLM's span; it sets no HTTP status
    "gen_ai.response.model", "gen_ai.request.id", "gen_ai.request.temperature", "gen_ai.request.top_p",
    "gen_ai.request.n", "gen_ai.request.max_tokens", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens",
    "gen_ai.latency.time_in_queue", "gen_ai.latency.time_to_first_token", "gen_ai.latency.e2e",
    "gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode",
    "gen_ai.latency.time_in_model_inference"), status_key=None)
SPANS: dict[str, SpanKind] = {s.role: s for s in (GATEWAY_SPAN, PROXY_SPAN, CLIENT_SPAN, ENGINE_SPAN)}
