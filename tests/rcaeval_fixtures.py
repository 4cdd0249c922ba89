"""RCAEval-layout case folders written by hand (CSV text, not through llmrca's writer), with a planted root cause.

The values come from ``llmrca.synthetic.planted_case`` (non-linear propagation, so the planted service moves most
and a metric method such as BARO or n-sigma should rank it first). Names follow Online Boutique. Layouts follow
RCAEval's published cases:

- RE1 (``write_re1_suite``): ``<root>/<system>/<service>_<fault>/<rep>/data.csv`` (``time`` in unix s, then
  ``<svc>_cpu, <svc>_mem, <svc>_latency-50, <svc>_latency-90``) and ``inject_time.txt``.
- RE2 (``write_re2_suite``): ``metrics.csv`` and ``simple_metrics.csv`` (plus ``<svc>_diskio``; metrics.csv also
  carries one all-empty column, as real RE2 files do), ``logs.csv`` (``timestamp`` in ns), ``traces.csv``
  (``startTime``/``duration`` in µs, gRPC ``statusCode`` 0.0/2.0 on inner spans, HTTP 200/500 on the frontend),
  ``logts.csv``, ``tracets_err.csv``, ``tracets_lat.csv`` (15 s windows) and ``inject_time.txt``.

Both return one ``FixtureCase`` per case (its id relative to ``root``, folder, planted service and fault), sorted
by id, which is the order ``llmrca.io.load_suite(root)`` yields the cases in.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrca.synthetic import planted_case

SERVICES = (
    "frontend", "cartservice", "checkoutservice", "currencyservice", "emailservice", "paymentservice",
    "productcatalogservice", "recommendationservice", "shippingservice", "adservice",
)
FAULTS = ("cpu", "mem", "disk", "delay", "loss")
RE1_METRICS = ("cpu", "mem", "latency-50", "latency-90")
RE2_METRICS = ("cpu", "mem", "diskio", "latency-50", "latency-90")
# The series a fault moves first; the others of the service follow it in planted_case.
FAULT_METRIC = {"cpu": "cpu", "mem": "mem", "disk": "diskio", "delay": "latency-90", "loss": "latency-90"}
WINDOW_S = 15
START = 1_700_000_000


@dataclass(frozen=True)
class FixtureCase:
    case_id: str  # relative to the suite root, e.g. "RE2-OB/checkoutservice_cpu/1"
    path: Path
    service: str
    fault_type: str
    inject_time: int


def write_re1_suite(
    root: str | Path, n_cases: int = 4, seed: int = 0, *, system: str = "RE1-OB", n_services: int = 6,
    n_rows: int = 240, shift: float = 6.0,
) -> list[FixtureCase]:
    """``n_cases`` RE1 cases under ``root/system``; same arguments, same bytes."""
    out = []
    for svc, fault, rep, values in _plants(n_cases, seed, n_services, n_rows, shift, RE1_METRICS):
        case_dir = Path(root) / system / f"{svc}_{fault}" / str(rep)
        case_dir.mkdir(parents=True, exist_ok=False)
        times, columns, inject = values
        _write(case_dir / "data.csv", _metrics_text(times, columns))
        _write(case_dir / "inject_time.txt", f"{inject}\n")
        out.append(FixtureCase(f"{system}/{svc}_{fault}/{rep}", case_dir, svc, fault, inject))
    return sorted(out, key=lambda c: c.case_id.split("/"))


def write_re2_suite(
    root: str | Path, n_cases: int = 4, seed: int = 0, *, system: str = "RE2-OB", n_services: int = 6,
    n_rows: int = 240, shift: float = 6.0, metrics_files: Sequence[str] = ("metrics.csv", "simple_metrics.csv"),
    trace_every_s: int = 2, log_every_s: int = 3,
) -> list[FixtureCase]:
    """``n_cases`` RE2 cases (metrics, logs, traces and the derived series) under ``root/system``."""
    out = []
    for i, (svc, fault, rep, values) in enumerate(_plants(n_cases, seed, n_services, n_rows, shift, RE2_METRICS)):
        case_dir = Path(root) / system / f"{svc}_{fault}" / str(rep)
        case_dir.mkdir(parents=True, exist_ok=False)
        times, columns, inject = values
        rng = np.random.default_rng([seed, i, 2])
        services = list(dict.fromkeys(c.split("_", 1)[0] for c in columns))
        for name in metrics_files:
            extra = {"frontend_container-network-drop": [None] * len(times)} if name == "metrics.csv" else {}
            _write(case_dir / name, _metrics_text(times, {**columns, **extra}))
        spans = _spans(times, columns, services, svc, inject, trace_every_s, rng)
        lines = _log_lines(times, services, svc, inject, log_every_s, rng)
        _write(case_dir / "traces.csv", _table(
            ["time", "traceID", "spanID", "serviceName", "methodName", "operationName", "startTimeMillis",
             "startTime", "duration", "statusCode", "parentSpanID"], spans))
        _write(case_dir / "logs.csv", _table(
            ["time", "timestamp", "container_name", "message", "level", "cluster_id", "log_template"], lines))
        _write_derived(case_dir, times, spans, lines)
        _write(case_dir / "inject_time.txt", f"{inject}\n")
        out.append(FixtureCase(f"{system}/{svc}_{fault}/{rep}", case_dir, svc, fault, inject))
    return sorted(out, key=lambda c: c.case_id.split("/"))


def _plants(n_cases: int, seed: int, n_services: int, n_rows: int, shift: float, metric_set: tuple[str, ...]):
    """(service, fault, repetition, (times, {column: values}, inject_time)) per case."""
    if not 2 <= n_services <= len(SERVICES):
        raise ValueError(f"n_services must be in 2..{len(SERVICES)}")
    reps: dict[tuple[str, str], int] = {}
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        root = int(rng.integers(1, n_services))  # the frontend is the entry (SLI), never the planted root
        fault = FAULTS[int(rng.integers(len(FAULTS)))]
        first = FAULT_METRIC[fault] if FAULT_METRIC[fault] in metric_set else metric_set[0]
        order = (first, *(m for m in metric_set if m != first))
        start = START + 100_000 * i
        case = planted_case(
            n_services=n_services, metrics=order, n_rows=n_rows, inject_row=n_rows // 2, root=root, shift=shift,
            nonlinear=True, interval=1.0, start=float(start), fault_type=fault, seed=seed * 1000 + i,
        )
        m = case.observation.metrics
        names = {f"svc-{j}": SERVICES[j] for j in range(n_services)}
        columns = {f"{names[f'svc-{j}']}_{metric}": m[f"svc-{j}_{metric}"].to_numpy()
                   for j in range(n_services) for metric in metric_set}
        svc = names[case.truth.service]
        reps[(svc, fault)] = reps.get((svc, fault), 0) + 1
        times = m["time"].to_numpy().astype(np.int64)
        yield svc, fault, reps[(svc, fault)], (times, columns, int(case.observation.inject_time))


def _spans(times, columns, services, root, inject, every, rng) -> list[list]:
    """One trace every ``every`` s: a frontend HTTP span calling each other service over gRPC. Span durations
    follow the services' latency-90 series; the planted root fails 20% of its calls after the injection."""
    rows = []
    for k, t in enumerate(times[::every]):
        row = k * every
        trace_id = f"{int(rng.integers(2**63)):016x}{int(rng.integers(2**63)):016x}"
        start_us = int(t) * 1_000_000 + int(rng.integers(0, 500_000))
        children = []
        for s in services[1:]:
            dur = int(max(columns[f"{s}_latency-90"][row], 0.1) * 1000)
            fails = s == root and t >= inject and rng.random() < 0.2
            method = f"Get{s[:1].upper()}{s[1:-7] or s[1:]}"
            children.append((s, method, dur, "2.0" if fails else "0.0"))
        root_id = f"{int(rng.integers(2**63)):016x}"
        total = sum(c[2] for c in children) + 200
        failed = any(c[3] == "2.0" for c in children)
        rows.append([_clock(t, times[0]), trace_id, root_id, services[0], "", "HTTP GET /cart",
                     start_us // 1000, start_us, total, "500" if failed else "200", ""])
        offset = 100
        for s, method, dur, code in children:
            span_start = start_us + offset
            rows.append([_clock(t, times[0]), trace_id, f"{int(rng.integers(2**63)):016x}", s, method,
                         f"hipstershop.{s}/{method}", span_start // 1000, span_start, dur, code, root_id])
            offset += dur
    return rows


def _log_lines(times, services, root, inject, every, rng) -> list[list]:
    templates = {"info": "request served in <*> ms", "error": "rpc error: deadline exceeded after <*> ms"}
    rows = []
    for t in times[::every]:
        for j, s in enumerate(services):
            ns = int(t) * 1_000_000_000 + int(rng.integers(0, 999_999_999))
            ms = int(rng.integers(1, 400))
            if s == root and t >= inject and rng.random() < 0.5:
                level, cluster, kind = "error", 2 * j + 2, "error"
            else:
                level, cluster, kind = "info", 2 * j + 1, "info"
            rows.append([_clock(t, times[0]), ns, s, templates[kind].replace("<*>", str(ms)), level, cluster,
                         templates[kind]])
    rows.sort(key=lambda r: r[1])
    return rows


def _write_derived(case_dir: Path, times, spans, lines) -> None:
    windows = list(range(int(times[0]) // WINDOW_S * WINDOW_S, int(times[-1]) + 1, WINDOW_S))
    index = {w: i for i, w in enumerate(windows)}

    def window(seconds: float) -> int:
        return index[int(seconds // WINDOW_S * WINDOW_S)]

    logts: dict[str, list] = {}
    for _, ns, s, _, _, cluster, _ in lines:
        logts.setdefault(f"{s}_{cluster}", [0] * len(windows))[window(ns / 1e9)] += 1
    err: dict[str, list] = {}
    lat_sum: dict[str, list] = {}
    lat_n: dict[str, list] = {}
    for row in spans:
        s, method, op, start_us, dur, code = row[3], row[4], row[5], row[7], row[8], row[9]
        key = f"{s}_{method or op}"
        w = window(start_us / 1e6)
        err.setdefault(key, [0] * len(windows))[w] += code in ("2.0", "500")
        lat_sum.setdefault(key, [0.0] * len(windows))[w] += dur
        lat_n.setdefault(key, [0] * len(windows))[w] += 1
    lat = {k: [lat_sum[k][i] / n if n else None for i, n in enumerate(lat_n[k])] for k in lat_sum}
    for name, series in (("logts.csv", logts), ("tracets_err.csv", err), ("tracets_lat.csv", lat)):
        keys = sorted(series)
        rows = [[w, *(series[k][i] for k in keys)] for i, w in enumerate(windows)]
        _write(case_dir / name, _table(["time", *keys], rows))


def _clock(t, t0) -> str:
    """RCAEval's display column: minutes:seconds since the start of the recording."""
    d = int(t - t0)
    return f"{d // 60:02d}:{d % 60:02d}"


def _metrics_text(times, columns: dict) -> str:
    names = list(columns)
    rows = [[int(t), *(_num(columns[c][i]) for c in names)] for i, t in enumerate(times)]
    return _table(["time", *names], rows)


def _num(v) -> str:
    return "" if v is None else repr(float(v))


def _table(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(["" if v is None else v for v in r] for r in rows)
    return buf.getvalue()


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
