"""The metric catalogue: every metric column a case of an LLM serving deployment can hold, described once.

One :class:`Metric` per column family (``<service>_<metric>``): the column's metric part, the exporter that serves
the series (:data:`SOURCES`), the series' own name, its unit, how a query turns it into a column (a gauge as
scraped, a counter as ``rate()``, a histogram as ``histogram_quantile()`` at one quantile), the view it belongs to
(``study``: the reference study's feature set; ``full``: the sources' own names), which services export it
(:data:`SCOPES`), and the PromQL the live collector runs for it.

It lives with the case contract because the views (``llmrca.case.views``) are defined by it and ``llmrca.case``
imports no other llmrca package; the simulator (``llmrca.sim.metrics``) names its columns from it and the live
collector (``llmrca.testbed.collector``) builds its queries from it, so a simulated and a live case of one
deployment have the same columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

QUANTILES = (0.5, 0.9, 0.95, 0.99)  # the quantiles of vLLM's latency histograms that become columns
MESH_QUANTILES = (0.5, 0.9)  # the mesh latency quantiles (Istio dashboards' p50 / p90)

# Source group → the exporter that serves it.
SOURCES = {
    "container": "cAdvisor (kubelet)",
    "vllm": "vLLM /metrics",
    "dcgm": "NVIDIA DCGM exporter",
    "ray": "Ray metrics agent",
    "node": "node-exporter",
    "mesh": "Istio (ztunnel / waypoint)",
    "loadgen": "the load generator's /metrics (a Locust-like client; only where the deployment has a workload "
               "node)",
}
# Which services of a deployment export a metric: every pod (its container), every vLLM replica (engine, GPU),
# every mesh destination (services called over the mesh), every node, the workload's client (where modelled).
SCOPES = ("pod", "replica", "mesh", "node", "client")
KINDS = ("gauge", "counter", "histogram")
VIEW_NAMES = ("study", "full")


def quantile_name(q: float) -> str:
    """The column suffix of a quantile: 0.95 → ``p95``."""
    return f"p{round(q * 100)}"


@dataclass(frozen=True)
class Metric:
    """One column family. ``promql`` is the collector's query with ``$by`` (the service label), ``$w`` (the rate
    window), ``$sel`` (the source's selector) and ``$selm`` (the selector plus ``matchers``)."""

    metric: str
    source: str
    series: str
    unit: str
    kind: str
    view: str
    scope: str
    promql: str
    quantile: float | None = None
    matchers: str = ""

    def query(self, by: str, window: str, selector: str = "") -> str:
        """The PromQL for this column family, grouped by the label ``by`` over ``window`` (``"5s"``);
        ``selector``: extra matchers of the source (``namespace="llm"``)."""

        def braces(*parts: str) -> str:
            kept = [p for p in parts if p]
            return "{" + ",".join(kept) + "}" if kept else ""

        # $selm before $sel: one is a prefix of the other
        return (self.promql.replace("$selm", braces(selector, self.matchers)).replace("$sel", braces(selector))
                .replace("$by", by).replace("$w", window))


def _gauge(metric: str, source: str, series: str, unit: str, scope: str, agg: str = "sum",
           view: str = "full") -> Metric:
    return Metric(metric, source, series, unit, "gauge", view, scope, f"{agg} by ($by) ({series}$sel)")


def _counter(metric: str, source: str, series: str, unit: str, scope: str, matchers: str = "",
             view: str = "full") -> Metric:
    return Metric(metric, source, series, unit, "counter", view, scope,
                  f"sum by ($by) (rate({series}$selm[$w]))", matchers=matchers)


def _histogram(metric: str, source: str, series: str, unit: str, scope: str, qs: Iterable[float],
               view: str = "full") -> list[Metric]:
    return [Metric(f"{metric}_{quantile_name(q)}", source, series, unit, "histogram", view, scope,
                   f"histogram_quantile({q:g}, sum by ($by, le) (rate({series}_bucket$sel[$w])))", quantile=q)
            for q in qs]


def _build() -> tuple[Metric, ...]:
    C, V, D, R, N, M = "container", "vllm", "dcgm", "ray", "node", "mesh"
    out: list[Metric] = []
    # -- the study view: the reference study's feature set, under its names ---------------------------------
    out += [
        _counter("ctn_cpu", C, "container_cpu_usage_seconds_total", "cores", "pod", view="study"),
        _gauge("ctn_memory", C, "container_memory_working_set_bytes", "bytes", "pod", view="study"),
        _counter("ctn_network", C, "container_network_transmit_packets_total", "packets/s", "pod", view="study"),
        _gauge("ctn_gpu", R, "ray_node_gpus_utilization", "percent", "replica", "avg", view="study"),
        Metric("latency", M, "istio_request_duration_milliseconds", "ms", "histogram", "study", "mesh",
               "histogram_quantile(0.9, sum by ($by, le) (rate(istio_request_duration_milliseconds_bucket$sel[$w])))",
               quantile=0.9),
        _counter("node_cpu", N, "node_cpu_seconds_total", "cores", "node", 'mode!~"idle|iowait|steal"', view="study"),
        Metric("node_memory", N, "node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes", "bytes", "gauge",
               "study", "node", "sum by ($by) (node_memory_MemTotal_bytes$sel - node_memory_MemAvailable_bytes$sel)"),
        _counter("node_network", N, "node_network_transmit_packets_total", "packets/s", "node", view="study"),
    ]
    # -- the full view: the sources' own names ---------------------------------------------------------------
    out += [
        _counter("cpu_usage_seconds", C, "container_cpu_usage_seconds_total", "cores", "pod"),
        _gauge("memory_working_set_bytes", C, "container_memory_working_set_bytes", "bytes", "pod"),
        _counter("network_transmit_packets", C, "container_network_transmit_packets_total", "packets/s", "pod"),
        _counter("network_receive_packets", C, "container_network_receive_packets_total", "packets/s", "pod"),
        _gauge("num_requests_running", V, "vllm:num_requests_running", "requests", "replica"),
        _gauge("num_requests_waiting", V, "vllm:num_requests_waiting", "requests", "replica"),
        _gauge("kv_cache_usage_perc", V, "vllm:kv_cache_usage_perc", "fraction", "replica", "avg"),
    ]
    for name, unit in (("prompt_tokens", "tokens/s"), ("generation_tokens", "tokens/s"),
                       ("num_preemptions", "preemptions/s"), ("request_success", "requests/s"),
                       ("prefix_cache_queries", "tokens/s"), ("prefix_cache_hits", "tokens/s")):
        out.append(_counter(name, V, f"vllm:{name}_total", unit, "replica"))
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds", "request_prefill_time_seconds", "request_decode_time_seconds"):
        out += _histogram(name, V, f"vllm:{name}", "s", "replica", QUANTILES)
    for name in ("request_prompt_tokens", "request_generation_tokens", "iteration_tokens_total"):
        out += _histogram(name, V, f"vllm:{name}", "tokens", "replica", (0.5,))
    dcgm = "DCGM_FI_DEV_"
    for field, unit in (("GPU_UTIL", "percent"), ("MEM_COPY_UTIL", "percent"), ("FB_USED", "MiB"),
                        ("FB_FREE", "MiB"), ("GPU_TEMP", "C"), ("MEMORY_TEMP", "C"), ("POWER_USAGE", "W")):
        out.append(_gauge(field.lower(), D, dcgm + field, unit, "replica", "avg"))
    out.append(_counter("total_energy_consumption", D, dcgm + "TOTAL_ENERGY_CONSUMPTION", "mJ/s", "replica"))
    for field in ("SM_CLOCK", "MEM_CLOCK"):
        out.append(_gauge(field.lower(), D, dcgm + field, "MHz", "replica", "avg"))
    out.append(_gauge("xid_errors", D, dcgm + "XID_ERRORS", "xid", "replica", "max"))
    # Memory RAS (GPUs with ECC memory): uncorrectable (double-bit) errors since the last reset, rows remapped for
    # uncorrectable errors, and a remap waiting for the next GPU reset (DCGM fields 311, 393, 396).
    for field, unit in (("ECC_DBE_VOL_TOTAL", "errors"), ("UNCORRECTABLE_REMAPPED_ROWS", "rows"),
                        ("ROW_REMAP_PENDING", "flag")):
        out.append(_gauge(field.lower(), D, dcgm + field, unit, "replica", "max"))
    for field in ("PCIE_TX_THROUGHPUT", "PCIE_RX_THROUGHPUT"):
        out.append(_gauge(field.lower(), D, dcgm + field, "KB/s", "replica"))
    for field in ("GR_ENGINE_ACTIVE", "PIPE_TENSOR_ACTIVE", "DRAM_ACTIVE"):
        out.append(_gauge(f"prof_{field.lower()}", D, f"DCGM_FI_PROF_{field}", "fraction", "replica", "avg"))
    out.append(_gauge("clocks_event_reasons", D, dcgm + "CLOCKS_EVENT_REASONS", "bitmask", "replica", "max"))
    for field in ("POWER_VIOLATION", "THERMAL_VIOLATION"):
        out.append(_counter(field.lower(), D, dcgm + field, "us/s", "replica"))
    out += _histogram("request_duration_milliseconds", M, "istio_request_duration_milliseconds", "ms", "mesh",
                      MESH_QUANTILES)
    out.append(_counter("requests", M, "istio_requests_total", "requests/s", "mesh"))
    # 0 rather than no series while a destination answers without errors
    out.append(Metric("requests_5xx", M, "istio_requests_total", "requests/s", "counter", "full", "mesh",
                      "(sum by ($by) (rate(istio_requests_total$selm[$w]))) or "
                      "(0 * sum by ($by) (rate(istio_requests_total$sel[$w])))", matchers='response_code=~"5.."'))
    out += [
        _counter("cpu_seconds", N, "node_cpu_seconds_total", "cores", "node", 'mode!~"idle|iowait|steal"'),
        _gauge("memory_memavailable_bytes", N, "node_memory_MemAvailable_bytes", "bytes", "node"),
        _counter("network_transmit_packets", N, "node_network_transmit_packets_total", "packets/s", "node"),
        _counter("network_receive_packets", N, "node_network_receive_packets_total", "packets/s", "node"),
    ]
    # -- the workload's client (workload.workload_node): what it sent and what it got back, client-side ----------
    L = "loadgen"
    out += [
        _counter("requests_sent", L, "loadgen_requests_total", "requests/s", "client"),
        _counter("prompt_tokens_sent", L, "loadgen_prompt_tokens_total", "tokens/s", "client"),
        _counter("request_failures", L, "loadgen_request_failures_total", "requests/s", "client"),
        _gauge("requests_in_flight", L, "loadgen_requests_in_flight", "requests", "client"),
    ]
    out += _histogram("response_time_seconds", L, "loadgen_response_time_seconds", "s", "client", MESH_QUANTILES)
    out += _histogram("prompt_length", L, "loadgen_prompt_length_tokens", "tokens", "client", (0.5,))
    return tuple(out)


CATALOG: tuple[Metric, ...] = _build()
STUDY_METRICS: tuple[str, ...] = tuple(m.metric for m in CATALOG if m.view == "study")


def metrics(*, scope: str | None = None, source: str | None = None, view: str | None = None) -> list[Metric]:
    """The catalogue's entries, optionally only those of one scope / source / view."""
    return [m for m in CATALOG if (scope is None or m.scope == scope) and (source is None or m.source == source)
            and (view is None or m.view == view)]


def entry(metric: str, scope: str) -> Metric:
    """The entry of the column metric ``metric`` exported by services of ``scope`` (a KeyError names both)."""
    for m in CATALOG:
        if m.metric == metric and m.scope == scope:
            return m
    raise KeyError(f"metric catalogue: no column {metric!r} for scope {scope!r}")


def histogram_columns(series: str, scope: str) -> list[Metric]:
    """The quantile columns of one histogram series (``vllm:time_to_first_token_seconds``), in quantile order."""
    return sorted((m for m in CATALOG if m.series == series and m.kind == "histogram" and m.scope == scope),
                  key=lambda m: m.quantile or 0.0)


def expected_columns(scopes: dict[str, Iterable[str]]) -> list[str]:
    """Every ``<service>_<metric>`` column a deployment has: ``scopes`` maps each scope to its services (``{"pod":
    [...], "replica": [...], "mesh": [...], "node": [...]}``; a scope left out has none)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise KeyError(f"metric catalogue: unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    out: list[str] = []
    for scope, services in scopes.items():
        for s in services:
            out += [f"{s}_{m.metric}" for m in CATALOG if m.scope == scope]
    return list(dict.fromkeys(out))
