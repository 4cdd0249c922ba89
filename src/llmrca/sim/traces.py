"""Spans of the simulated serving path: one trace per request, in the shape OpenTelemetry exporters give it.

Chain per request (as the deployment's OpenTelemetry exporters emit it): the gateway's SERVER span (nginx-otel) → the Serve HTTP proxy's SERVER span →
the proxy's CLIENT span ``process_request`` towards the chosen replica → the engine's ``llm_request`` SERVER span
with vLLM's ``gen_ai.*`` attributes. Each span covers the stage timestamps of the request record, so a delay on the
wire towards a replica lengthens ``process_request`` and everything above it, never ``llm_request``.

Failed requests keep the spans of the stages they reached. How the layers see a failure follows the real software:
nginx's read timeout is a client disconnect for the Serve proxy (status 499, as Ray Serve logs it); a 504 from
nginx (no response header yet) is a cancelled call without a status for ``process_request``, while a stream cut
after its header (nginx's status 200, an OK gateway span, as llmrca.testbed's nginx log gives it) keeps the
replica's 200 on ``process_request``; a 502 means the proxy answered nothing; other 5xx pass up unchanged. A callee's span of a failed request is cut at its caller's end (the caller hung up).

Everything is built column-wise with numpy; ids come from a generator seeded by the record's seed, so the same
record gives the same bytes.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from llmrca.case.schema import TRACE_COLUMNS
from llmrca.case.topology import Topology
from llmrca.deploy.telemetry import (
    CLIENT_SPAN,
    ENGINE_SPAN,
    GATEWAY_SPAN,
    PROXY_SPAN,
    ROUTE,
    SERVE_APP,
    SERVE_DEPLOYMENT,
)
from llmrca.errors import CaseError
from llmrca.sim.record import UPSTREAM_TIMEOUT
from llmrca.sim.strings import Pieces, bake, const, string_take, value

GATEWAY_OPERATION = GATEWAY_SPAN.operation
PROXY_OPERATION = PROXY_SPAN.operation
CLIENT_OPERATION = CLIENT_SPAN.operation
ENGINE_OPERATION = ENGINE_SPAN.operation
USER_AGENT = "python-requests/2.32.3"  # Locust's HttpUser session is a requests.Session
REPLICA_PORT = 8000

REQUEST_COLUMNS = (
    "request_id", "trace_id", "replica", "prompt_tokens", "output_tokens", "max_tokens",
    "t_gateway_start", "t_proxy_start", "t_send", "t_engine_arrival", "t_scheduled", "t_first_token",
    "t_engine_end", "t_proxy_end", "t_gateway_end", "prefill_s", "decode_s", "queue_s",
    "num_preemptions", "status", "http_status", "error",
)
# Added by the sim core after the first contract; used where present.
OPTIONAL_COLUMNS = ("t_ready", "t_proxy_server_end", "finished_reason", "streamed_tokens")

# Independent random streams per use, so adding one never shifts another's ids.
_STREAM_SPAN_IDS = 0x5A11
_STREAM_REQUEST_IDS = 0x1D5
_STREAM_BYTES = 0xB17E
_STREAM_ADDRESSES = 0xADD2

_TOL = 1e-6  # seconds of slack when checking the record's stage order


@dataclass(frozen=True)
class ServingPath:
    """Service names along a request's path."""

    gateway: str
    proxy: str


@dataclass(frozen=True)
class RequestIdentities:
    """Per-request names the real software would print, shared by spans and log lines.

    ``vllm_ids``: the engine's request id (``chatcmpl-`` + 32 hex, as vLLM's OpenAI server makes it).
    ``serve_ids``: Ray Serve's request id (a UUID4 text). ``response_bytes``: body bytes nginx sent back.
    ``addresses``: pod IP per service (and ``"client"`` for the load generator).
    """

    vllm_ids: list[str]
    serve_ids: list[str]
    response_bytes: np.ndarray
    addresses: dict[str, str]


def serving_path(record: Any) -> ServingPath:
    """The gateway and the Serve proxy's service: the record's ``gateway``/``proxy`` where it names them, else the
    topology's entry and the one service the entry calls."""
    topology: Topology = record.topology
    gateway = getattr(record, "gateway", None) or topology.entry_service()
    if not gateway:
        raise CaseError(["topology.entry: the simulated topology names no entry service"], where="sim record")
    proxy = getattr(record, "proxy", None)
    if not proxy:
        callees = sorted(set(topology.callees(gateway)))
        if len(callees) != 1:
            raise CaseError(
                [f"topology.edges: the gateway {gateway!r} must call exactly one proxy service, calls {callees}"],
                where="sim record",
            )
        proxy = callees[0]
    return ServingPath(gateway=str(gateway), proxy=str(proxy))


def model_name(record: Any) -> str:
    """The served model's name: ``record.model_name``, else ``config["model"]`` (text, or a dict with ``name``)."""
    m = getattr(record, "model_name", "") or (record.config or {}).get("model")
    if isinstance(m, dict):
        m = m.get("name") or m.get("hf_name") or m.get("id")
    if not m:
        raise CaseError(["config.model: the simulation config names no model"], where="sim record")
    return str(m)


def check_requests(requests: pd.DataFrame) -> None:
    """Raise ``CaseError`` naming missing columns or a request whose stages run backwards.

    Starts must be ordered for every request; ends only for successful ones (a failed request's callee may
    outlive its caller's hang-up, and is cut at the caller's end).
    """
    missing = [c for c in REQUEST_COLUMNS if c not in requests.columns]
    if missing:
        raise CaseError([f"missing column(s) {', '.join(missing)}"], where="sim record requests")
    if not len(requests):
        return
    cols = [c for c in (*REQUEST_COLUMNS, *OPTIONAL_COLUMNS) if c.startswith("t_") and c in requests.columns]
    t = {c: requests[c].to_numpy(dtype=float) for c in cols}
    if not np.isfinite(t["t_gateway_start"]).all() or not np.isfinite(t["t_gateway_end"]).all():
        raise CaseError(["t_gateway_start/t_gateway_end: every request needs both"], where="sim record requests")
    ok = requests["status"].to_numpy() == "OK"
    starts = [c for c in ("t_gateway_start", "t_proxy_start", "t_send", "t_engine_arrival", "t_ready") if c in t]
    ends = [c for c in ("t_engine_arrival", "t_engine_end", "t_proxy_end", "t_proxy_server_end", "t_gateway_end")
            if c in t]
    pairs = [(a, b, None) for a, b in itertools.pairwise(starts)] + [(a, b, ok) for a, b in itertools.pairwise(ends)]
    pairs += [("t_proxy_start", "t_proxy_end", None), ("t_gateway_start", "t_gateway_end", None)]
    ids = requests["request_id"].to_numpy()
    for a, b, only in pairs:
        bad = np.isfinite(t[a]) & np.isfinite(t[b]) & (t[b] < t[a] - _TOL)
        if only is not None:
            bad &= only
        if bad.any():
            i = int(np.argmax(bad))
            raise CaseError(
                [f"request {ids[i]}: {b} ({t[b][i]:.6f}) is before {a} ({t[a][i]:.6f}); {int(bad.sum())} such"],
                where="sim record requests",
            )


@dataclass(frozen=True)
class Stages:
    """Per-request intervals (unix s) of the four spans, nested: a failed request's callee is cut at its caller's
    end. ``has_*``: the stage was reached (the proxy, the proxy's call, the engine's span)."""

    gateway: tuple[np.ndarray, np.ndarray]
    proxy: tuple[np.ndarray, np.ndarray]
    client: tuple[np.ndarray, np.ndarray]
    engine: tuple[np.ndarray, np.ndarray]
    has_proxy: np.ndarray
    has_client: np.ndarray
    has_engine: np.ndarray
    failed: np.ndarray


def stages(requests: pd.DataFrame) -> Stages:
    """The span intervals of every request (see ``Stages``); call ``check_requests`` first."""
    col = {c: requests[c].to_numpy(dtype=float) for c in requests.columns if str(c).startswith("t_")}
    nan = np.full(len(requests), np.nan)
    failed = requests["status"].to_numpy() != "OK"
    g0, g1 = col["t_gateway_start"], col["t_gateway_end"]
    p0, c0, e0 = col["t_proxy_start"], col["t_send"], col["t_engine_arrival"]
    c1, e1 = col["t_proxy_end"], col["t_engine_end"]
    # The proxy's SERVER span lasts until it has forwarded the last chunk (after its CLIENT call returned).
    p1 = col.get("t_proxy_server_end", nan)
    p1 = np.where(np.isfinite(p1), p1, c1)
    has_p = np.isfinite(p0)
    has_c = has_p & np.isfinite(c0)
    has_e = has_c & np.isfinite(e0) & np.isfinite(e1)  # vLLM emits its span only for requests it ended
    p1 = np.where(np.isfinite(p1), p1, g1)
    c1 = np.where(np.isfinite(c1), c1, p1)

    def nest(start: np.ndarray, end: np.ndarray, ps: np.ndarray, pe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):
            s = np.where(failed, np.clip(start, ps, pe), start)
            e = np.where(failed, np.clip(end, s, pe), end)
        return s, e

    p0, p1 = nest(p0, p1, g0, g1)
    c0, c1 = nest(c0, c1, p0, p1)
    e0, e1 = nest(e0, e1, c0, c1)
    return Stages((g0, g1), (p0, p1), (c0, c1), (e0, e1), has_p, has_c, has_e, failed)


def read_timeouts(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(timed_out, cut)`` per request: nginx's read timeout fired on it; ``cut``: after the response header had
    gone out, so nginx logs 200 and the client gets a stream cut short (else nginx answered 504 itself)."""
    http = requests["http_status"].to_numpy(dtype=np.int64)
    failed = requests["status"].to_numpy() != "OK"
    timed_out = failed & ((requests["error"].to_numpy(dtype=object) == UPSTREAM_TIMEOUT) | (http == 504))
    return timed_out, timed_out & (http == 200)


def streamed_tokens(requests: pd.DataFrame) -> np.ndarray:
    """Tokens the client received: the record's ``streamed_tokens``, else a successful request's output."""
    if "streamed_tokens" in requests.columns:
        return requests["streamed_tokens"].to_numpy(dtype=np.int64)
    ok = requests["status"].to_numpy() == "OK"
    return np.where(ok, requests["output_tokens"].to_numpy(dtype=np.int64), 0)


def hex_ids(rng: np.random.Generator, n: int, nbytes: int) -> list[str]:
    """``n`` random lower-case hex strings of ``2 * nbytes`` characters, in one draw."""
    return _split(rng.bytes(n * nbytes).hex(), 2 * nbytes)


def _span_ids(seed: int, n: int) -> Pieces:
    """The span ids of ``n`` requests' four candidate spans (gateway, proxy, call, engine), 16 hex digits each,
    request-major: span ``k`` of request ``j`` is piece ``4 j + k`` (the same ids as ``hex_ids(rng, 4 n, 8)``)."""
    return Pieces(_rng(seed, _STREAM_SPAN_IDS).bytes(4 * n * 8).hex(), 16)


def gateway_span_ids(seed: int, n: int) -> list[str]:
    """The gateway span's id of each request (nginx logs it in its access line)."""
    return _span_ids(seed, n).texts(0, 4) if n else []


def _split(text: str, width: int) -> list[str]:
    return [text[i : i + width] for i in range(0, len(text), width)]


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream]))


_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_digits(raw: np.ndarray) -> np.ndarray:
    """The ASCII hex digits of each row of bytes, shape (n, 2 k), as ``bytes.hex()`` prints them."""
    out = np.empty((raw.shape[0], 2 * raw.shape[1]), dtype=np.uint8)
    out[:, 0::2] = _HEX_DIGITS[raw >> 4]
    out[:, 1::2] = _HEX_DIGITS[raw & 0x0F]
    return out


def _row_texts(chars: np.ndarray) -> list[str]:
    """Each row of an (n, w) array of ASCII codes as a string (laid out in numpy, one slice per text)."""
    text, w = chars.tobytes().decode("ascii"), chars.shape[1]
    return [text[i: i + w] for i in range(0, len(text), w)]


def _uuid4_texts(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` random UUID4s as ``str(uuid.uuid4())`` prints them (version nibble 4, RFC 4122 variant)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    # 8-4-4-4-12 hex digits with dashes between, the characters placed column-wise
    digits = _hex_digits(raw)
    chars = np.full((n, 36), ord("-"), dtype=np.uint8)
    for a, b, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        chars[:, at: at + b - a] = digits[:, a:b]
    return _row_texts(chars)


def _pod_addresses(services: list[str], seed: int) -> dict[str, str]:
    """Stable, distinct pod IPs in k3s's default pod CIDR (10.42.0.0/16)."""
    rng = _rng(seed, _STREAM_ADDRESSES)
    n = len(services) + 1
    picks = rng.choice(np.arange(2, 250 * 4), size=n, replace=False)
    names = list(services) + ["client"]
    return {s: f"10.42.{int(p) // 250}.{int(p) % 250 + 2}" for s, p in zip(names, picks)}


def request_identities(record: Any) -> RequestIdentities:
    """Request ids, response sizes and addresses of a record; deterministic in ``record.seed``."""
    req = record.requests
    n = len(req)
    rng = _rng(record.seed, _STREAM_REQUEST_IDS)
    # "chatcmpl-" and 32 hex digits (hex_ids(rng, n, 16) after the prefix), laid out column-wise
    chars = np.empty((n, 41), dtype=np.uint8)
    chars[:, :9] = np.frombuffer(b"chatcmpl-", dtype=np.uint8)
    chars[:, 9:] = _hex_digits(np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16))
    vllm_ids = _row_texts(chars)
    serve_ids = _uuid4_texts(rng, n)
    out_tok = req["output_tokens"].to_numpy(dtype=np.int64)
    status = req["http_status"].to_numpy(dtype=np.int64)
    # A streamed chat completion is one SSE chunk per token plus role and stop chunks and "data: [DONE]";
    # each chunk repeats the id, model and envelope, and carries the token's text (~4 characters).
    model = model_name(record)
    envelope = len(
        f'data: {{"id":"{vllm_ids[0] if n else "chatcmpl-"}","object":"chat.completion.chunk",'
        f'"created":1700000000,"model":"{model}","choices":[{{"index":0,"delta":{{"content":""}},'
        f'"logprobs":null,"finish_reason":null}}]}}\n\n'
    ) + 7  # chunked transfer framing: size line and CRLFs
    # A stream nginx cut (its read timeout, after the header) has the role chunk and the tokens before the cut,
    # without the stop chunk, "data: [DONE]" and the chunked terminator; none at all before a first token.
    _, cut = read_timeouts(req)
    got = np.where(cut, streamed_tokens(req), out_tok)
    brng = _rng(record.seed, _STREAM_BYTES)
    text = brng.poisson(4.2 * np.maximum(got, 0)) if n else np.zeros(0, dtype=np.int64)
    body = np.where(out_tok > 0, (out_tok + 2) * envelope + text + 14 + 5, 0).astype(np.int64)
    body = np.where(cut, np.where(got > 0, (got + 1) * envelope + text, 0), body).astype(np.int64)
    # Before the first byte of a stream, an error is nginx's own error page (or the upstream's JSON error).
    page = {502: _nginx_error_page_len(502), 504: _nginx_error_page_len(504)}
    for code, size in page.items():
        body = np.where((out_tok <= 0) & ~cut & (status == code), size, body)
    body = np.where((out_tok <= 0) & ~cut & (status >= 400) & ~np.isin(status, list(page)), 145, body)
    services = list(record.topology.services) or sorted(set(req["replica"].unique().tolist()))
    return RequestIdentities(vllm_ids, serve_ids, body, _pod_addresses(services, record.seed))


def _nginx_error_page_len(code: int) -> int:
    reason = {502: "Bad Gateway", 504: "Gateway Time-out"}[code]
    page = (
        f"<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return len(page)


def _seconds(values: np.ndarray) -> list[str]:
    out = [f"{v:.6f}" for v in values.tolist()]
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = "null"
    return out


@dataclass
class RecordView:
    """What spans and logs of one record both derive from it (checked once): serving path, request identities,
    span intervals, read timeouts and the span ids. ``view(record)``; the same for the same record."""

    path: ServingPath
    ident: RequestIdentities
    stages: Stages
    timeouts: tuple[np.ndarray, np.ndarray]
    span_ids: Pieces  # 4 per request, request-major: gateway, proxy, call, engine (``_span_ids``)


def view(record: Any) -> RecordView:
    """The ``RecordView`` of ``record`` (raises ``CaseError`` where its requests are malformed)."""
    req = record.requests
    check_requests(req)
    return RecordView(serving_path(record), request_identities(record), stages(req), read_timeouts(req),
                      _span_ids(record.seed, len(req)))


def spans_from_record(record: Any, shared: RecordView | None = None) -> pd.DataFrame:
    """One row per span of every request in ``record`` (``llmrca.case.schema.TRACE_COLUMNS``); ``shared``: its
    ``view`` where the caller has it (``simulate`` makes spans and logs from one)."""
    req = record.requests
    n = len(req)
    if n == 0:
        check_requests(req)
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TRACE_COLUMNS.items()})
    shared = shared or view(record)
    path = shared.path
    ident = shared.ident
    model = model_name(record)

    col = {c: req[c].to_numpy(dtype=float) for c in REQUEST_COLUMNS if c.startswith("t_") or c.endswith("_s")}
    st = shared.stages
    failed = st.failed
    http = req["http_status"].to_numpy(dtype=float)
    replica = req["replica"].to_numpy(dtype=object)
    (g0, g1), (p0, p1), (c0, c1), (e0, e1) = st.gateway, st.proxy, st.client, st.engine
    has_p, has_c, has_e = st.has_proxy, st.has_client, st.has_engine

    # HTTP status per layer (see module docstring).
    timeout, cut = shared.timeouts
    bad_gw = http == 502
    http_p = np.where(timeout, 499.0, np.where(bad_gw, np.nan, http))
    http_c = np.where((timeout & ~cut) | bad_gw, np.nan, http)

    addr = ident.addresses
    client = addr.get("client", "10.42.0.2")
    upstream = json.dumps(f"{addr.get(path.proxy, '10.42.0.1')}:{REPLICA_PORT}")

    def attrs(kind: Any, values: list[tuple], statuses: np.ndarray) -> list[str]:
        # One JSON pattern per layer from the span catalogue; the status goes last where the layer knows it.
        with_s, without = kind.json_format(True).format, kind.json_format(False).format
        return [without(*v) if math.isnan(h) else with_s(*v, int(h)) for v, h in zip(values, statuses.tolist())]

    def memo(kind: Any, keys: np.ndarray, values: dict[Any, tuple],
             statuses: np.ndarray) -> tuple[list[str], np.ndarray]:
        # ``attrs`` for spans whose values are one of a few tuples (by key; ``keys`` an object array): each
        # distinct (key, status) text is made once; the texts and each span's code into them.
        key_of, kinds = pd.factorize(keys, use_na_sentinel=False)
        nan = np.isnan(statuses)
        code = np.where(nan, -1, np.where(nan, 0, statuses).astype(np.int64))  # int(h) of a status; -1: none
        pairs, which = np.unique(key_of.astype(np.int64) * 1_000_000 + (code + 1), return_inverse=True)
        texts = []
        for pc in pairs.tolist():
            st = pc % 1_000_000 - 1
            texts.append(attrs(kind, [values[kinds[pc // 1_000_000]]], np.array([np.nan if st < 0 else float(st)]))[0])
        return texts, which

    gateway_values = ('"POST"', json.dumps(ROUTE), '"http"', '"1.1"', json.dumps(USER_AGENT), json.dumps(path.gateway),
                      json.dumps(client), upstream)
    attrs_g = memo(GATEWAY_SPAN, np.zeros(n, dtype=np.int64), {0: gateway_values}, http)
    proxy_fixed = (json.dumps(SERVE_DEPLOYMENT), json.dumps(SERVE_APP), '"http"', '"POST"', '"/"')
    # (the request id is a UUID text: JSON-quoted as it is)
    proxy_fields = [value(before='"', after='"'), *(const(v) for v in proxy_fixed)]
    proxy_with = bake(PROXY_SPAN.json_format(True), [*proxy_fields, value()])
    proxy_without = bake(PROXY_SPAN.json_format(False), proxy_fields)
    # Each pattern mapped over its spans' columns (int(h) of a status is its int64), put back in request order.
    attrs_p = np.empty(n, dtype=object)
    serve_ids = np.asarray(ident.serve_ids, dtype=object)
    known = np.flatnonzero(~np.isnan(http_p))
    unknown = np.flatnonzero(np.isnan(http_p))
    attrs_p[known] = list(map(proxy_with, serve_ids[known].tolist(), http_p[known].astype(np.int64).tolist()))
    attrs_p[unknown] = list(map(proxy_without, serve_ids[unknown].tolist()))
    backend = {r: (json.dumps(f"http://{r}:{REPLICA_PORT}"), json.dumps(r)) for r in set(replica.tolist())}
    attrs_c = memo(CLIENT_SPAN, replica, backend, http_c)
    model_json = json.dumps(model)
    secs = np.vstack([col["queue_s"], col["t_first_token"] - col["t_engine_arrival"],
                      col["t_engine_end"] - col["t_engine_arrival"], col["prefill_s"], col["decode_s"],
                      col["prefill_s"] + col["decode_s"]])
    ints = np.vstack([req["max_tokens"].to_numpy(dtype=np.int64), req["prompt_tokens"].to_numpy(dtype=np.int64),
                      req["output_tokens"].to_numpy(dtype=np.int64)])
    # The load generator sends temperature 1.0, top_p 1.0, n 1 (the OpenAI defaults). A span whose latencies are
    # all known prints them straight from a pattern with {:.6f} fields; one with a missing one (JSON null) as
    # ``_seconds`` prints them.
    engine_fields = [const(model_json), value(before='"', after='"'), const("1.0"), const("1.0"), const("1"),
                     value(), value(), value(), *(value(".6f") for _ in range(6))]
    engine_fast = bake(ENGINE_SPAN.json_format(False), engine_fields)
    attrs_e = list(map(engine_fast, ident.vllm_ids, *ints.tolist(), *secs.tolist()))  # column by column
    gaps = np.flatnonzero(np.isnan(secs).any(axis=0))
    if len(gaps):
        slow = attrs(ENGINE_SPAN, [
            (model_json, f'"{ident.vllm_ids[j]}"', "1.0", "1.0", "1", *ints[:, j].tolist(), *_seconds(secs[:, j]))
            for j in gaps.tolist()], np.full(len(gaps), np.nan))
        for j, text in zip(gaps.tolist(), slow):
            attrs_e[j] = text

    # Four candidate spans per request, laid out request-major so a trace's spans stay together. The text columns
    # are codes into their distinct texts (``string_take``): a span's service, operation and status are one of a
    # few, its trace id its request's, its parent another span's id.
    ids = shared.span_ids
    present = np.vstack([np.ones(n, bool), has_p, has_c, has_e])
    slot = np.arange(4 * n).reshape(n, 4).T  # a span's piece in ids
    parent = np.empty((4, n), dtype=np.int64)
    parent[0] = -1  # none: the root
    nearest = slot[0]
    for k in (1, 2, 3):
        parent[k] = nearest
        nearest = np.where(present[k], slot[k], nearest)
    starts = np.vstack([g0, p0, c0, e0])
    ends = np.vstack([g1, p1, c1, e1])
    rep_code, rep_names = pd.factorize(replica, use_na_sentinel=False)
    services = np.empty((4, n), dtype=np.int64)
    services[0], services[1], services[2], services[3] = 0, 1, 1, rep_code + 2
    ops = np.empty((4, n), dtype=np.int64)
    ops[0], ops[1], ops[2], ops[3] = 0, 1, 2, 3
    https = np.vstack([http, http_p, http_c, np.full(n, np.nan)])
    (texts_g, which_g), (texts_c, which_c) = attrs_g, attrs_c
    attr_texts = [*texts_g, *attrs_p.tolist(), *texts_c, *attrs_e]
    a1 = len(texts_g)
    a2 = a1 + n
    a3 = a2 + len(texts_c)
    attr_code = np.vstack([which_g, a1 + np.arange(n), a2 + which_c, a3 + np.arange(n)])
    status = np.broadcast_to(failed, (4, n)).astype(np.int64)  # 0: OK, 1: ERROR
    status[0] = failed & ~cut  # nginx's span follows its status: a cut stream is a 200
    trace = np.broadcast_to(np.arange(n), (4, n))

    keep = present.T.ravel()

    def flat(a: np.ndarray) -> np.ndarray:
        return a.T.ravel()[keep]

    start_us = np.round(flat(starts) * 1e6).astype(np.int64)
    end_us = np.round(flat(ends) * 1e6).astype(np.int64)
    http_flat = flat(https)
    parents = flat(parent)
    out = pd.DataFrame(
        {
            "trace_id": string_take(req["trace_id"].to_numpy(dtype=object), flat(trace)),
            "span_id": string_take(ids, flat(slot)),
            "parent_span_id": string_take(ids, np.maximum(parents, 0), null=parents < 0),
            "service": string_take([path.gateway, path.proxy, *rep_names.tolist()], flat(services)),
            "operation": string_take([GATEWAY_OPERATION, PROXY_OPERATION, CLIENT_OPERATION, ENGINE_OPERATION],
                                     flat(ops)),
            "start_time_us": start_us,
            "duration_us": end_us - start_us,
            "status": string_take(["OK", "ERROR"], flat(status)),
            "http_status": pd.arrays.IntegerArray(
                np.where(np.isfinite(http_flat), http_flat, 0).astype(np.int64), ~np.isfinite(http_flat)
            ),
            "attributes": string_take(attr_texts, flat(attr_code)),
        }
    )
    return out
