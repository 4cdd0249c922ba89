"""A minimal OTLP/HTTP trace receiver: ``POST /v1/traces`` with an ``ExportTraceServiceRequest`` (protobuf, as the
OpenTelemetry SDK's exporter sends it, or OTLP's JSON encoding), written as one JSON object per span to a file
that the collector reads. It is llmrca's own stand-in for an OpenTelemetry Collector with a file exporter."""

from __future__ import annotations

import base64
import gzip
import json
import threading
from pathlib import Path
from typing import Any

from llmrca.errors import FormatError

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _any_value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    x = getattr(v, kind)
    if kind == "array_value":
        return [_any_value(e) for e in x.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in x.values}
    if kind == "bytes_value":
        return base64.b64encode(x).decode()
    return x


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


def decode(body: bytes, content_type: str = "application/x-protobuf", encoding: str = "") -> list[dict[str, Any]]:
    """Spans of one export request, flattened: ids as hex, times in unix nanoseconds, the resource's
    ``service.name`` as ``service``. Raises ``FormatError`` for a body that is not a trace export request."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if encoding.lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except OSError as e:
            raise FormatError(f"OTLP request: bad gzip body ({e})") from None
    req = ExportTraceServiceRequest()
    try:
        if "json" in content_type:
            json_format.Parse(body.decode("utf-8"), req)
        else:
            req.ParseFromString(body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as e:
        raise FormatError(f"OTLP request: not an ExportTraceServiceRequest ({e})") from None
    out = []
    for rs in req.resource_spans:
        res = _attrs(rs.resource.attributes)
        service = str(res.get("service.name", "unknown"))
        component = res.get("llmrca.component")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex() or None, "service": service, "component": component,
                    "name": s.name, "kind": _KINDS.get(s.kind, str(s.kind)), "start_ns": int(s.start_time_unix_nano),
                    "end_ns": int(s.end_time_unix_nano), "status": _STATUS.get(s.status.code, "UNSET"),
                    "attributes": _attrs(s.attributes),
                })
    return out


class SpanSink:
    """Appends decoded spans to a JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.count = 0

    def write(self, spans: list[dict[str, Any]]) -> None:
        if not spans:
            return
        text = "".join(json.dumps(s, separators=(",", ":")) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            self.count += len(spans)

    async def handle(self, request: Any) -> Any:
        from aiohttp import web
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        body = await request.read()
        try:
            spans = decode(body, request.headers.get("Content-Type", ""), request.headers.get("Content-Encoding", ""))
        except FormatError as e:
            return web.Response(status=400, text=str(e))
        self.write(spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            headers={"Content-Type": "application/x-protobuf"})
