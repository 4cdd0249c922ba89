"""The service call graph that graph-based methods walk: caller → callee, from the topology, else traces (else,
for the methods that walk from the entry, an assumed star: ``walk_graph``).

The topology is the system's own description (mesh or deployment); traces are the fallback because they show
only the calls that happened inside the window. Host placement (``topology.hosts``) adds service → host edges
for methods that reason about shared machines (MicroRCA).
"""

from __future__ import annotations

from typing import Literal

import networkx as nx
import numpy as np
import pandas as pd

from llmrca.case import Observation
from llmrca.errors import MethodError

Source = Literal["topology", "traces"]


def trace_edges(traces: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Caller → callee service pairs from parent/child spans, with call counts; same-service hops dropped."""
    if traces is None or not len(traces):
        return {}
    spans = traces[["trace_id", "span_id", "parent_span_id", "service"]].dropna(subset=["service"])
    child = spans[spans["parent_span_id"].notna() & (spans["parent_span_id"] != "")]
    parent = spans[["trace_id", "span_id", "service"]].rename(
        columns={"span_id": "parent_span_id", "service": "caller"}
    )
    # Span ids are unique only within a trace, so the join is on both ids.
    pairs = child.merge(parent, on=["trace_id", "parent_span_id"], how="inner")
    pairs = pairs[pairs["caller"] != pairs["service"]]
    counts = pairs.groupby(["caller", "service"]).size()
    return {(str(a), str(b)): int(n) for (a, b), n in sorted(counts.items())}


def span_parents(traces: pd.DataFrame) -> np.ndarray:
    """Row position of each span's parent (same trace), -1 for a root span or a parent missing from the frame.

    Span ids are unique only within a trace, so the key is (trace_id, span_id); a duplicated key resolves to
    its first row.
    """
    n = len(traces)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    tid = traces["trace_id"].astype("string").fillna("").to_numpy(dtype=object)
    sid = traces["span_id"].astype("string").fillna("").to_numpy(dtype=object)
    pid = traces["parent_span_id"].astype("string").fillna("").to_numpy(dtype=object)
    sep = np.full(n, "\x1f", dtype=object)
    own = pd.Index(tid + sep + sid)
    first = ~own.duplicated()
    positions = np.flatnonzero(first)
    found = pd.Index(own[first]).get_indexer(pd.Index(tid + sep + pid))
    out = np.where(found >= 0, positions[np.maximum(found, 0)], -1).astype(np.int64)
    out[pid == ""] = -1
    return out


def operation_edges(traces: pd.DataFrame) -> dict[tuple[str, str], int]:
    """Caller → callee operation pairs (``service_operation``) from parent/child spans, with call counts.

    Unlike :func:`trace_edges`, hops inside one service count (a server span and the client span it opens).
    """
    if traces is None or not len(traces):
        return {}
    parent = span_parents(traces)
    op = traces["service"].astype("string") + "_" + traces["operation"].astype("string")
    op = op.to_numpy(dtype=object)
    child = np.flatnonzero(parent >= 0)
    pairs = pd.DataFrame({"caller": op[parent[child]], "callee": op[child]}).dropna()
    counts = pairs.groupby(["caller", "callee"]).size()
    return {(str(a), str(b)): int(n) for (a, b), n in sorted(counts.items())}


def trace_call_graph(traces: pd.DataFrame, level: Literal["service", "operation"] = "service") -> nx.DiGraph:
    """The call graph the traces show, without a topology: services (or ``service_operation``s) as nodes,
    caller → callee edges with ``calls`` (span count). Raises ``MethodError`` when there are no spans."""
    if traces is None or not len(traces):
        raise MethodError("no call graph from traces: there are no spans")
    if level not in ("service", "operation"):
        raise MethodError(f"trace_call_graph: level must be 'service' or 'operation', got {level!r}")
    g = nx.DiGraph()
    if level == "service":
        g.add_nodes_from(sorted(str(s) for s in traces["service"].dropna().unique()))
        edges = trace_edges(traces)
    else:
        ops = (traces["service"].astype("string") + "_" + traces["operation"].astype("string")).dropna()
        g.add_nodes_from(sorted(str(o) for o in ops.unique()))
        edges = operation_edges(traces)
    for (a, b), n in edges.items():
        g.add_edge(a, b, calls=n)
    g.graph["source"] = "traces"
    return g


def call_graph(obs: Observation) -> nx.DiGraph:
    """Services as nodes (every service the observation knows of), caller → callee edges.

    ``graph.graph["source"]`` says where the edges came from. Edges from traces carry ``calls`` (span count).
    Raises ``MethodError`` when the topology has no edges and the traces show no cross-service call.
    """
    g = nx.DiGraph()
    g.add_nodes_from(obs.services)
    if obs.topology.edges:
        g.add_edges_from(obs.topology.edges)
        g.graph["source"] = "topology"
        return g
    edges = trace_edges(obs.traces)
    if not edges:
        raise MethodError(
            "no service call graph: topology.edges is empty and the traces show no call between services "
            "(this method needs one of them)"
        )
    for (a, b), n in edges.items():
        g.add_edge(a, b, calls=n)
    g.graph["source"] = "traces"
    return g


def walk_graph(obs: Observation) -> nx.DiGraph:
    """The call graph a method that walks from the entry service uses (MicroScope, MonitorRank, MicroRCA):
    :func:`call_graph` (the topology's edges, else the traced calls), else — no call known at all, as in an RCAEval
    RE1 folder, which has metrics only — a star: the entry service (``llmrca.methods.sli.find_entry``) calling
    every other service. ``graph.graph["source"]`` is then ``"assumed-star"``.

    The star claims no more than "every service serves the entry's requests": a walk on it reaches every service
    in one hop, so the ranking rests on the method's per-service scores (anomaly, similarity to the SLI) rather
    than on paths. A call graph file (``--call-graph``, ``llmrca.case.system``) gives the real edges.
    """
    try:
        return call_graph(obs)
    except MethodError:
        from llmrca.methods.sli import entry_service

        try:
            entry = entry_service(obs)
        except MethodError as e:
            raise MethodError(f"no service call graph: topology.edges is empty, the traces show no call between "
                              f"services, and no entry service to assume a star from ({e})") from None
    g = nx.DiGraph()
    g.add_nodes_from(obs.services)
    g.add_edges_from((entry, s) for s in obs.services if s != entry)
    g.graph["source"] = "assumed-star"
    return g


def host_edges(obs: Observation) -> list[tuple[str, str]]:
    """(service, host) pairs from ``topology.hosts``, sorted. A host's own series are ``<host>_<metric>``."""
    return sorted((s, h) for s, h in obs.topology.hosts.items() if s != h)


def attributed_graph(obs: Observation, *, assume_star: bool = False) -> nx.DiGraph:
    """The call graph plus host nodes: caller → callee edges (``kind="calls"``) and service → host edges
    (``kind="runs-on"``); nodes carry ``kind`` = "service" or "host". ``assume_star``: without any known call,
    the star of :func:`walk_graph` instead of a ``MethodError``."""
    g = walk_graph(obs) if assume_star else call_graph(obs)
    nx.set_edge_attributes(g, "calls", "kind")
    nx.set_node_attributes(g, "service", "kind")
    for s, h in host_edges(obs):
        g.add_node(h, kind="host")  # a host with its own metric columns is still a host
        g.add_edge(s, h, kind="runs-on")
    return g
