"""Shared telemetry plumbing of the live services: OpenTelemetry tracing towards llmrca's OTLP receiver, W3C trace
context, and Prometheus histograms that take weighted observations (vLLM's step-level histograms count one
observation per token of a step)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

GEN_AI_SYSTEM = "vllm"


def tracer(service: str, component: str, otlp_endpoint: str | None):
    """A tracer whose spans go to ``otlp_endpoint`` (OTLP/HTTP, e.g. ``http://127.0.0.1:4318/v1/traces``);
    without one, spans are made (ids propagate) but not exported."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": service, "service.instance.id": component,
                                                        "llmrca.component": component}))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, timeout=5),
                                                       schedule_delay_millis=500, max_export_batch_size=256))
    return provider, provider.get_tracer(f"llmrca.testbed.{component}")


def extract(headers: Mapping[str, str]):
    """The parent context carried by a request's ``traceparent`` header (an empty context without one)."""
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(carrier={k.lower(): v for k, v in headers.items()})


def inject(span, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the ``traceparent`` of ``span`` (its children continue the trace)."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    TraceContextTextMapPropagator().inject(headers, context=trace.set_span_in_context(span))
    return headers


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a W3C ``traceparent`` value, or None when it is malformed."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        int(parts[1], 16)
        int(parts[2], 16)
    except ValueError:
        return None
    if set(parts[1]) == {"0"} or set(parts[2]) == {"0"}:
        return None
    return parts[1], parts[2]


class WeightedHistograms:
    """Classic Prometheus histograms (cumulative ``_bucket{le}``, ``_sum``, ``_count``) filled with weighted
    observations; register once with a prometheus-client registry."""

    def __init__(self) -> None:
        self._h: dict[str, dict] = {}
        self._lock = threading.Lock()

    def define(self, name: str, doc: str, bounds: Sequence[float], labels: Mapping[str, str]) -> None:
        self._h[name] = {"doc": doc, "bounds": np.asarray(bounds, dtype=float), "labels": dict(labels),
                         "counts": np.zeros(len(bounds) + 1), "sum": 0.0}

    def observe(self, name: str, values: Iterable[float] | float, weights: Iterable[float] | float = 1.0) -> None:
        h = self._h[name]
        v = np.atleast_1d(np.asarray(values, dtype=float))
        if not len(v):
            return
        w = np.broadcast_to(np.asarray(weights, dtype=float), v.shape)
        ok = np.isfinite(v) & np.isfinite(w)
        v, w = v[ok], w[ok]
        idx = np.searchsorted(h["bounds"], v, side="left")
        with self._lock:
            np.add.at(h["counts"], idx, w)
            h["sum"] += float(np.dot(v, w))

    def collect(self):
        from prometheus_client.core import HistogramMetricFamily

        with self._lock:
            snap = {k: (h["doc"], h["bounds"], h["labels"], h["counts"].cumsum(), h["sum"]) for k, h in self._h.items()}
        for name, (doc, bounds, labels, cum, total) in snap.items():
            fam = HistogramMetricFamily(name, doc, labels=list(labels))
            buckets = [(_le(b), float(c)) for b, c in zip(bounds, cum[:-1])] + [("+Inf", float(cum[-1]))]
            fam.add_metric(list(labels.values()), buckets, sum_value=total)
            yield fam


def _le(b: float) -> str:
    return repr(float(b))


# Mesh latency buckets (ms): Istio's names, finer bounds than its defaults (whose 2.5 s -> 5 s bucket would flatten
# the p90 of a 3-4 s stream), about 12 % apart from 1 ms to 10 min.
MESH_BUCKETS_MS = tuple(float(f"{b:.4g}") for b in np.geomspace(1.0, 600_000.0, 118))
