"""The collector: a native case from a live deployment's telemetry.

Metrics come from Prometheus' HTTP API (range queries at the scrape interval), one query per entry of the metric
catalogue (``llmrca.case.catalog``, which also names the simulator's columns: the study view ``<svc>_ctn_cpu`` …
and the full view with the sources' names),
so every method and report works on live cases exactly as on simulated ones. Spans come from the OTLP receiver's
file plus the gateway's access log, log lines from the services' JSON logs and nginx's logs, and the ground truth
and ``inject_time`` from the injector's record.

It also serves a real cluster: :func:`collect_metrics` runs against any Prometheus URL, and a :class:`LabelMap`
says which label names the service of each source's series (``pod``, ``instance``, ``destination_workload`` …)
and how label values become service names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmrca import __version__
from llmrca.case import LOG_COLUMNS, TIME, TRACE_COLUMNS, Case, GroundTruth, Observation, Topology
from llmrca.case.catalog import CATALOG, SOURCES, Metric
from llmrca.case.views import column_order
from llmrca.errors import CaseError, LlmrcaError
from llmrca.testbed.prometheus import PromClient

GROUPS = tuple(SOURCES)  # the source groups a label map names a label for


def catalog() -> list[Metric]:
    """Every column family the collector queries: the metric catalogue (``llmrca.case.catalog``), study view
    first."""
    return list(CATALOG)


@dataclass(frozen=True)
class LabelMap:
    """Which label holds the service of each source's series, and how its values become service names.

    ``labels``: per source group (container, vllm, dcgm, ray, node, mesh) the label name. ``rename``: label value →
    service. ``pattern``: a regex whose group ``service`` (or whole match) picks the service out of a value (e.g.
    ``"(?P<service>vllm-[0-9]+)-[a-z0-9]+$"`` for pod names). ``selectors``: extra PromQL matchers per group (e.g.
    ``{"container": 'namespace="llm"'}``). Values that map to nothing are dropped when ``only`` lists services.
    """

    labels: dict[str, str] = field(default_factory=lambda: {"container": "service", "vllm": "service",
                                                            "dcgm": "service", "ray": "service", "node": "instance",
                                                            "mesh": "destination_workload", "loadgen": "service"})
    rename: dict[str, str] = field(default_factory=dict)
    pattern: str | None = None
    selectors: dict[str, str] = field(default_factory=dict)
    only: tuple[str, ...] | None = None

    def service(self, value: str) -> str | None:
        v = self.rename.get(value, value)
        if self.pattern and value not in self.rename:
            m = re.search(self.pattern, value)
            if not m:
                return None
            v = m.groupdict().get("service") or m.group(0)
        v = v.replace("_", "-")
        if self.only is not None and v not in self.only:
            return None
        return v or None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LabelMap:
        d = dict(d or {})
        base = cls()
        unknown = sorted(set(d) - {"labels", "rename", "pattern", "selectors", "only"})
        if unknown:
            raise LlmrcaError(f"label map: unknown key(s) {', '.join(unknown)}; known: labels, rename, pattern, "
                              "selectors, only")
        labels = {**base.labels, **(d.get("labels") or {})}
        bad = sorted(set(labels) - set(GROUPS))
        if bad:
            raise LlmrcaError(f"label map: unknown source group(s) {', '.join(bad)}; known: {', '.join(GROUPS)}")
        only = d.get("only")
        return cls(labels=labels, rename=dict(d.get("rename") or {}), pattern=d.get("pattern"),
                   selectors=dict(d.get("selectors") or {}), only=tuple(only) if only else None)


def prom_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def collect_metrics(client: PromClient, start: float, end: float, step: float, *, rate_window: float,
                    labels: LabelMap | None = None, queries: Iterable[Metric] | None = None,
                    services: list[str] | None = None) -> pd.DataFrame:
    """The wide metrics table over [start, end] at ``step``: ``time`` plus ``<service>_<metric>`` columns.
    Series that are empty over the whole range are left out (Prometheus returns none for them)."""
    if not (end > start) or not (step > 0):
        raise LlmrcaError(f"collect: need start < end and step > 0 (start={start}, end={end}, step={step})")
    lm = labels or LabelMap()
    n = math.floor((end - start) / step + 1e-9) + 1
    times = start + step * np.arange(n)
    W = prom_duration(rate_window)
    cols: dict[str, np.ndarray] = {}
    for q in (queries if queries is not None else catalog()):
        label = lm.labels[q.source]
        promql = q.query(label, W, lm.selectors.get(q.source, ""))
        for series in _range(client, promql, start, end, step):
            value = series["metric"].get(label)
            svc = lm.service(value) if value else None
            if svc is None:
                continue
            col = np.full(n, np.nan)
            for t, v in series["values"]:
                i = round((float(t) - start) / step)
                if 0 <= i < n:
                    x = float(v)
                    col[i] = x if math.isfinite(x) else np.nan
            name = f"{svc}_{q.metric}"
            if name in cols:  # two label values mapped to one service: add them up (sums) where both exist
                cols[name] = np.where(np.isnan(cols[name]), col, np.where(np.isnan(col), cols[name], cols[name] + col))
            else:
                cols[name] = col
    order = column_order(list(cols), services or sorted({c.split("_", 1)[0] for c in cols}))
    data = {TIME: times.astype(float)}
    for c in order:
        if not np.isnan(cols[c]).all():
            data[c] = cols[c]
    return pd.DataFrame(data)


def _range(client: PromClient, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    """A range query, split where Prometheus' 11,000-points-per-series limit would refuse it."""
    span = 10_000 * step
    out: dict[tuple, dict[str, Any]] = {}
    t = start
    while t <= end + 1e-9:
        t1 = min(end, t + span - step)
        for s in client.query_range(promql, t, t1, step):
            key = tuple(sorted(s["metric"].items()))
            out.setdefault(key, {"metric": s["metric"], "values": []})["values"].extend(s["values"])
        t = t1 + step
    return list(out.values())


# -- traces -------------------------------------------------------------------------------------------------
def read_spans(path: str | Path, start: float, end: float, services: Iterable[str] | None = None
               ) -> list[dict[str, Any]]:
    """Spans written by the OTLP receiver that start within [start, end], as trace-table rows."""
    p = Path(path)
    if not p.is_file():
        return []
    keep = set(services) if services is not None else None
    lo, hi = int(start * 1e9), int(end * 1e9)
    rows = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                s = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if not (lo <= s["start_ns"] <= hi) or (keep is not None and s["service"] not in keep):
                continue
            attrs = dict(s.get("attributes") or {})
            http = attrs.get("http.status_code", attrs.get("http.response.status_code"))
            attrs = {"span.kind": s.get("kind", ""), **attrs}
            rows.append({
                "trace_id": s["trace_id"], "span_id": s["span_id"], "parent_span_id": s.get("parent_span_id"),
                "service": s["service"], "operation": s["name"], "start_time_us": s["start_ns"] // 1000,
                "duration_us": max(0, (s["end_ns"] - s["start_ns"]) // 1000),
                "status": "ERROR" if s.get("status") == "ERROR" else "OK",
                "http_status": int(http) if isinstance(http, (int, float)) else None,
                "attributes": json.dumps(attrs, separators=(",", ":"), sort_keys=True),
            })
    return rows


def traces_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The trace table; a parent outside the collected spans (the load generator's client span) becomes null,
    so each request's gateway span is its trace's root."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in TRACE_COLUMNS.items()})
    df = pd.DataFrame(rows)
    ids = set(df["span_id"])
    df["parent_span_id"] = [p if p in ids else None for p in df["parent_span_id"]]
    df = df.sort_values(["start_time_us", "trace_id", "span_id"], kind="stable").reset_index(drop=True)
    http = pd.array([None if (v is None or (isinstance(v, float) and math.isnan(v))) else int(v)
                     for v in df["http_status"]], dtype="Int64")
    out = {c: df[c] for c in TRACE_COLUMNS if c != "http_status"}
    out["http_status"] = http
    return pd.DataFrame(out)[list(TRACE_COLUMNS)].astype({c: t for c, t in TRACE_COLUMNS.items()})


# -- logs ---------------------------------------------------------------------------------------------------
_NGINX_ERR = re.compile(r"^(\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}) \[(\w+)\]")


def read_json_logs(paths: Iterable[Path], start: float, end: float, services: Iterable[str] | None = None
                   ) -> list[dict[str, Any]]:
    keep = set(services) if services is not None else None
    rows = []
    for p in paths:
        if not p.is_file():
            continue
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                t = float(r.get("time", math.nan))
                if not (start <= t <= end) or (keep is not None and r.get("service") not in keep):
                    continue
                rows.append({"time": t, "service": r["service"], "level": r.get("level", "INFO"),
                             "message": r.get("message", ""), "template": r.get("template") or r.get("message", "")})
    return rows


def read_nginx_logs(access: Path, error: Path | None, service: str, start: float, end: float
                    ) -> list[dict[str, Any]]:
    from llmrca.deploy.telemetry import template_of
    from llmrca.testbed.logs import mask
    from llmrca.testbed.nginx import parse_access_line

    def template(text: str) -> str:  # the catalogue's template for nginx's own lines, as the simulator writes it
        return template_of(text, "nginx") or mask(text)

    rows = []
    if access.is_file():
        with open(access, encoding="utf-8", errors="replace") as f:
            for line in f:
                rec = parse_access_line(line)
                if rec is None or not (start <= rec["end"] <= end):
                    continue
                level = "ERROR" if rec["status"] >= 500 else "INFO"
                rows.append({"time": rec["end"], "service": service, "level": level, "message": line.rstrip("\n"),
                             "template": template(line.rstrip("\n"))})
    if error is not None and error.is_file():
        import datetime as dt

        with open(error, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _NGINX_ERR.match(line)
                if not m:
                    continue
                t = dt.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S").astimezone().timestamp()
                if not (start <= t <= end):
                    continue
                lvl = {"emerg": "CRITICAL", "alert": "CRITICAL", "crit": "CRITICAL", "error": "ERROR",
                       "warn": "WARNING", "notice": "INFO", "info": "INFO"}.get(m.group(2), "INFO")
                rows.append({"time": t, "service": service, "level": lvl, "message": line.rstrip("\n"),
                             "template": template(line.rstrip("\n"))})
    return rows


def logs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in LOG_COLUMNS.items()})
    df = pd.DataFrame(rows).sort_values(["time", "service"], kind="stable").reset_index(drop=True)
    return df[list(LOG_COLUMNS)].astype(LOG_COLUMNS)


# -- ground truth -------------------------------------------------------------------------------------------
def injection_in(records: list[dict[str, Any]], start: float, end: float, injection_id: str | None = None
                 ) -> dict[str, Any] | None:
    """The (last) record of the injection made within [start, end] (or the one named); None for none. An error
    when the window holds more than one and none is named, when another injection was still active in it, or when
    a control endpoint accepted a change in it that the chosen injection did not ask for (the injection log holds
    every change, ``RunDir.record_change``): a case's ground truth never silently misses a change."""
    last: dict[str, dict[str, Any]] = {}
    changes = []
    for r in records:
        if r.get("kind") == "control":
            changes.append(r)
        else:
            last[r["id"]] = r
    for r in last.values():
        for key in ("inject_time", "end"):
            if not math.isfinite(float(r.get(key, math.nan))):
                raise LlmrcaError(f"injection {r.get('id')!r}: {key} is {r.get(key)!r}, not a finite time")
    if injection_id is not None:
        if injection_id not in last:
            raise LlmrcaError(f"no injection {injection_id!r} in the run folder (known: {', '.join(last) or 'none'})")
        chosen: dict[str, Any] | None = last[injection_id]
    else:
        inside = [r for r in last.values() if start <= r["inject_time"] <= end]
        if len(inside) > 1:
            raise LlmrcaError(f"{len(inside)} injections within the window ({', '.join(r['id'] for r in inside)}); "
                              "name one with --injection or narrow the window")
        chosen = inside[0] if inside else None
        for r in last.values():
            until = r.get("undone_at") or r["end"]
            if r is not chosen and r["inject_time"] < start < until:
                raise LlmrcaError(f"injection {r['id']} was still active at the window's start (it ended at "
                                  f"{until:.0f}): start the window after it, or name it with --injection")
    own = chosen["id"] if chosen else None
    foreign = [c for c in changes if start <= float(c.get("time", math.nan)) <= end
               and (c.get("injection") is None or c.get("injection") != own)]
    if foreign:
        c = foreign[0]
        raise LlmrcaError(f"{len(foreign)} control change(s) in the window not made by "
                          f"{'injection ' + own if own else 'an injection'}, first: {c.get('service')} "
                          f"{json.dumps(c.get('change'))} at {float(c['time']):.0f} ({c.get('reason')}, injection "
                          f"{c.get('injection')}); a case of this window would miss it in its ground truth")
    return chosen


def truth_of(rec: dict[str, Any] | None) -> GroundTruth:
    if rec is None:
        return GroundTruth(service=None)
    end = rec.get("undone_at") or rec["end"]
    ind = rec.get("indicator")
    params = dict(rec["params"])
    params["method"] = rec.get("method")
    params["containment"] = rec.get("containment")
    return GroundTruth(service=rec["target"], fault_type=rec["fault"],
                       indicator=f"{rec['target']}_{ind}" if ind else None, start=float(rec["inject_time"]),
                       end=float(end), params=params)


def topology_of(state: dict[str, Any]) -> Topology:
    """The live deployment's topology: the simulator's, with the workload node (``state["client"]``) where the
    deployment has one (a caller of the gateway, hosted nowhere in it, as in the simulator)."""
    node = state["node"]
    replicas = list(state["replicas"])
    edges = [(state["gateway"], state["proxy"])] + [(state["proxy"], r) for r in replicas if r != state["proxy"]]
    client = (state["client"],) if state.get("client") else ()
    if client:
        edges.insert(0, (client[0], state["gateway"]))
    return Topology(services=(*state["services"], node, *client), edges=tuple(edges), entry=state["gateway"],
                    hosts={s: node for s in state["services"]},
                    gpus={r: [f"{node}/gpu{i}"] for i, r in enumerate(replicas)}, replicas={"vllm": replicas})


# -- the testbed's cases ------------------------------------------------------------------------------------
def collect_case(run_dir: str | Path | None, start: float, end: float, *, case_id: str | None = None,
                 injection_id: str | None = None, traces: bool = True, logs: bool = True,
                 step: float | None = None) -> Case:
    """The native case of the live testbed in ``run_dir`` over [start, end] (unix s): its metrics from its
    Prometheus, spans, logs, and the injection made in the window as ground truth (none: a normal case)."""
    from llmrca.testbed.config import TestbedConfig
    from llmrca.testbed.rundir import LOOPBACK, RunDir

    rd = RunDir(run_dir)
    st = rd.read_state()
    cfg = TestbedConfig.from_dict(st["config"])
    step = step or cfg.deploy.step
    asked_start, start = start, window_start(st, start)  # no rows from before the testbed existed
    if not end > start:
        raise LlmrcaError(f"collect: the window ends at {end:.0f}, before the testbed came up at {start:.0f} "
                          f"({rd.path / 'state.json'}: up_since); collect a later window")
    client = PromClient(f"http://{LOOPBACK}:{st['ports']['prometheus']}")
    services = [*st["services"], st["node"], *([st["client"]] if st.get("client") else [])]
    metrics = collect_metrics(client, start, end, step, rate_window=cfg.deploy.rate_window,
                              labels=LabelMap(only=tuple(services)), services=services)
    if len(metrics.columns) <= 1:
        raise CaseError([("metrics: Prometheus returned no series in the window (is the testbed up, and the window "
                         "after its start?)")], where=str(rd.path))
    rec = injection_in(rd.read_injections(), start, end, injection_id)
    truth = truth_of(rec)
    tr = None
    lg = None
    if traces:
        from llmrca.testbed.nginx import gateway_span, parse_access_line

        rows = read_spans(rd.spans, start, end, st["services"])
        access = rd.logs / "nginx-access.log"
        if access.is_file():
            with open(access, encoding="utf-8", errors="replace") as f:
                for line in f:
                    r = parse_access_line(line)
                    if r is not None and start <= r["start"] <= end:
                        rows.append(gateway_span(r, st["gateway"]))
        tr = traces_frame(rows)
    if logs:
        paths = sorted(rd.logs.glob("engine-*.jsonl")) + [rd.log("proxy"), rd.log("controller")]
        # the node's kernel log (the driver's Xid lines) is the node's service
        rows = read_json_logs([*paths, rd.log("node")], start, end, [*st["services"], st["node"]])
        rows += read_nginx_logs(rd.logs / "nginx-access.log", rd.logs / "nginx-error.log", st["gateway"], start, end)
        lg = logs_frame(rows)
    obs = Observation(metrics=metrics, traces=tr, logs=lg,
                      inject_time=float(rec["inject_time"]) if rec else None, topology=topology_of(st),
                      interval=step)
    if case_id is None:
        case_id = f"{rec['fault']}/{rec['target']}/{int(start)}" if rec else f"normal/{int(start)}"
    prov = {"generator": "llmrca.testbed", "version": __version__, "seed": cfg.seed, "config": cfg.to_dict(),
            "scaling": st.get("scaling"), "run_id": st.get("run_id"), "window": [start, end], "step": step,
            "rate_window": cfg.deploy.rate_window, "containment": (st.get("containment") or {}).get("mode")}
    if rec:
        prov["injection"] = rec
    if start > asked_start:
        prov["trimmed"] = {"asked_start": asked_start, "up_since": start}
    return Case(id=case_id, observation=obs, truth=truth, system="llmrca-testbed", provenance=prov)


def window_start(state: dict[str, Any], start: float) -> float:
    """``start``, or the time the testbed came up (``state["up_since"]``) where the window begins earlier:
    Prometheus holds nothing from before, and rows of nothing are NaN padding, not a normal period."""
    up = state.get("up_since")
    if isinstance(up, (int, float)) and math.isfinite(up) and up > start:
        return float(up)
    return start


def collect_prometheus_case(url: str, start: float, end: float, *, step: float = 5.0, rate_window: float = 15.0,
                            labels: LabelMap | None = None, case_id: str | None = None,
                            topology: Topology | None = None, truth: GroundTruth | None = None,
                            inject_time: float | None = None) -> Case:
    """A metrics-only native case from any Prometheus (a real vLLM cluster's, say), with the services the label
    map finds; ``truth``/``inject_time`` when the user knows them (else a case without ground truth)."""
    metrics = collect_metrics(PromClient(url), start, end, step, rate_window=rate_window, labels=labels)
    if len(metrics.columns) <= 1:
        raise CaseError([(f"metrics: no series in [{start:.0f}, {end:.0f}] matched the label map (labels "
                         f"{(labels or LabelMap()).labels})")], where=url)
    # Leading rows in which no series has a value are from before the deployment (or its exporters) existed:
    # NaN padding, not a normal period; the case starts at the first row with data.
    has_data = metrics.drop(columns=[TIME]).notna().any(axis=1).to_numpy()
    first = int(np.argmax(has_data))
    trimmed = None
    if first > 0:
        trimmed = {"asked_start": start, "first_data": float(metrics[TIME].iloc[first])}
        metrics = metrics.iloc[first:].reset_index(drop=True)
    services = tuple(dict.fromkeys(c.split("_", 1)[0] for c in metrics.columns if c != TIME))
    topo = topology or Topology(services=services)
    it = inject_time if inject_time is not None else (truth.start if truth is not None else None)
    if it is not None and trimmed and not it > trimmed["first_data"]:
        raise LlmrcaError(f"inject_time {it:.0f} is not after the first row with data ({trimmed['first_data']:.0f}; "
                          "no series had a value before): the case needs normal rows before the onset")
    obs = Observation(metrics=metrics, inject_time=it, topology=topo, interval=step)
    prov = {"generator": "llmrca.testbed.collector", "version": __version__, "prometheus": url,
            "window": [start, end], "step": step, "rate_window": rate_window}
    if trimmed:
        prov["trimmed"] = trimmed
    return Case(id=case_id or f"prometheus/{int(start)}", observation=obs, truth=truth or GroundTruth(service=None),
                system="prometheus", provenance=prov)
